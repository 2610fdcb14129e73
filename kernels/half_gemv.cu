// fp16 GEMV for lm_head: y[n] = W[n, :] . x with W [N][K] row-major (the checkpoint's layout).
// One warp per row, 16-byte loads of 8 halves; fp32 accumulation. Defines: K, N, WARPS.

extern "C" __global__ void half_gemv(const float* __restrict__ x,
                                     const f16_t* __restrict__ w,
                                     float* __restrict__ y) {
    pdl_wait();
    pdl_trigger();
    const int lane = threadIdx.x & 31;
    const int n = blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (n >= N) return;
    const uint4* wr = reinterpret_cast<const uint4*>(w + (long long)n * K);
    float acc = 0.0f;
    for (int i = lane; i < K / 8; i += 32) {
        const uint4 q = wr[i];
        const float4 a = reinterpret_cast<const float4*>(x)[2 * i];
        const float4 b = reinterpret_cast<const float4*>(x)[2 * i + 1];
        acc += f16_to_f32(q.x & 0xffff) * a.x + f16_to_f32(q.x >> 16) * a.y;
        acc += f16_to_f32(q.y & 0xffff) * a.z + f16_to_f32(q.y >> 16) * a.w;
        acc += f16_to_f32(q.z & 0xffff) * b.x + f16_to_f32(q.z >> 16) * b.y;
        acc += f16_to_f32(q.w & 0xffff) * b.z + f16_to_f32(q.w >> 16) * b.w;
    }
    acc = warp_sum(acc);
    if (lane == 0) y[n] = acc;
}
