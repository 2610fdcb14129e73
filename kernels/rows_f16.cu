// Activation rows to fp16 for the tensor-core GEMM (awq_gemm.cu), one block per row: optionally
// RMS-normalized first (x * rsqrt(mean(x^2) + eps) * weight, fusing the layer's norm), then scaled
// by a power of two so the row's largest magnitude is below 2^15. fp16 keeps 11 significant bits
// where bf16 keeps 8, and the per-row factor keeps Qwen's activations (beyond 65504) in range; the
// GEMM multiplies its fp32 results by row_scale, exactly undoing the power of two.
// Within each run of 16 inputs the row is stored in the order of the GEMM's weight fragments
// (awq_repack.cu): inputs 0, 1, 4, 5, 8, 9, 12, 13, then 2, 3, 6, 7, 10, 11, 14, 15.
// A thread holds whole runs of 16 in registers, so the row is read from memory once.
// Defines: K (a multiple of 16), NORM.

#define THREADS 256
#define RUNS (K / 16)
#define PER ((RUNS + THREADS - 1) / THREADS)  // runs per thread
static_assert(K % 16 == 0, "rows of whole 16-input runs");

extern "C" __global__ void __launch_bounds__(THREADS) rows_f16(const float* __restrict__ x,  // [rows][K]
                                                              const f16_t* __restrict__ norm_weight,
                                                              float eps,
                                                              f16_t* __restrict__ out,  // [rows][K]
                                                              float* __restrict__ row_scale) {
    __shared__ float scratch[32];
    pdl_wait();
    pdl_trigger();
    const float4* xr = reinterpret_cast<const float4*>(x + (long long)blockIdx.x * K);
    uint4* orow = reinterpret_cast<uint4*>(out + (long long)blockIdx.x * K);
    float v[PER][16];
#pragma unroll
    for (int p = 0; p < PER; p++) {
        const int run = threadIdx.x + THREADS * p;
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const float4 f = run < RUNS ? xr[4 * run + c] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            v[p][4 * c] = f.x, v[p][4 * c + 1] = f.y, v[p][4 * c + 2] = f.z, v[p][4 * c + 3] = f.w;
        }
    }
#if NORM
    float ss = 0.0f;
#pragma unroll
    for (int p = 0; p < PER; p++)
#pragma unroll
        for (int e = 0; e < 16; e++) ss += v[p][e] * v[p][e];
    const float inv = rsqrtf(block_sum(ss, scratch) / K + eps);
#pragma unroll
    for (int p = 0; p < PER; p++) {
        const int run = min((int)threadIdx.x + THREADS * p, RUNS - 1);
#pragma unroll
        for (int e = 0; e < 16; e++) v[p][e] *= inv * f16_to_f32(norm_weight[16 * run + e]);
    }
#endif
    float amax = 0.0f;
#pragma unroll
    for (int p = 0; p < PER; p++)
#pragma unroll
        for (int e = 0; e < 16; e++) amax = fmaxf(amax, fabsf(v[p][e]));
    amax = warp_max(amax);
    __syncthreads();  // scratch may still be read by block_sum
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = (threadIdx.x & 31) < (THREADS >> 5) ? scratch[threadIdx.x & 31] : 0.0f;
    amax = warp_max(amax);
    // amax < 2^e with e from its exponent field; multiply by 2^(15 - e), clamped to normal floats.
    const int e = ((__float_as_int(amax) >> 23) & 0xff) - 126;
    const int up = min(max(15 - e, -126), 127);
    const float factor = amax > 0.0f && amax <= 3.0e38f ? __int_as_float((up + 127) << 23) : 1.0f;
    if (threadIdx.x == 0) row_scale[blockIdx.x] = 1.0f / factor;
#pragma unroll
    for (int p = 0; p < PER; p++) {
        const int run = threadIdx.x + THREADS * p;
        if (run >= RUNS) continue;
        float* r = v[p];
#pragma unroll
        for (int i = 0; i < 16; i++) r[i] *= factor;
        orow[2 * run] = make_uint4(pack_f16x2(r[0], r[1]), pack_f16x2(r[4], r[5]), pack_f16x2(r[8], r[9]),
                                   pack_f16x2(r[12], r[13]));
        orow[2 * run + 1] = make_uint4(pack_f16x2(r[2], r[3]), pack_f16x2(r[6], r[7]), pack_f16x2(r[10], r[11]),
                                       pack_f16x2(r[14], r[15]));
    }
}
