// W4A16 GEMV with fused dequantization over the repacked AWQ layout (awq_repack.cu).
// One warp per output row; each lane reads 16 bytes (32 int4 weights of one group) per step.
// x and y are fp32 and so is every accumulator. Defines: K, N, GROUP, WARPS, MODE:
//   MODE 0: y[n] = x . W[n]
//   MODE 1: y[n] += x . W[n]                  (residual add fused into the epilogue)
//   MODE 2: y[n] = silu(x . W[n]) * (x . W[N + n])   (gate rows then up rows: SwiGLU epilogue)

__device__ __forceinline__ float row_dot(const float* __restrict__ x,
                                         const unsigned* __restrict__ w,
                                         const f16_t* __restrict__ s,
                                         const unsigned char* __restrict__ z,
                                         long long row, int lane) {
    const uint4* wr = reinterpret_cast<const uint4*>(w + row * (K / 8));
    const f16_t* sr = s + row * (K / GROUP);
    const unsigned char* zr = z + row * (K / GROUP);
    float acc = 0.0f;
    for (int i = lane; i < K / 32; i += 32) {
        const uint4 q = wr[i];
        const float4* xv = reinterpret_cast<const float4*>(x + 32 * i);
        const unsigned words[4] = {q.x, q.y, q.z, q.w};
        float dot = 0.0f, xsum = 0.0f;
#pragma unroll
        for (int t = 0; t < 4; t++) {
            const float4 a = xv[2 * t], b = xv[2 * t + 1];
            const float xs[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
            for (int e = 0; e < 8; e++) {
                dot += (float)((words[t] >> (4 * e)) & 15u) * xs[e];
                xsum += xs[e];
            }
        }
        // All 32 values share one group (GROUP % 32 == 0): (q - z) * s factors out.
        const int g = (32 * i) / GROUP;
        acc += f16_to_f32(sr[g]) * (dot - (float)zr[g] * xsum);
    }
    return warp_sum(acc);
}

extern "C" __global__ void awq_gemv(const float* __restrict__ x,
                                    const unsigned* __restrict__ w,
                                    const f16_t* __restrict__ s,
                                    const unsigned char* __restrict__ z,
                                    float* __restrict__ y) {
    const int lane = threadIdx.x & 31;
    const int n = blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (n >= N) return;
    const float a = row_dot(x, w, s, z, n, lane);
#if MODE == 2
    const float b = row_dot(x, w, s, z, (long long)N + n, lane);
#endif
    if (lane == 0) {
#if MODE == 0
        y[n] = a;
#elif MODE == 1
        y[n] += a;
#else
        y[n] = a / (1.0f + expf(-a)) * b;
#endif
    }
}
