// Activation rows to fp16 for the tensor-core GEMM (awq_gemm.cu), one block per row: optionally
// RMS-normalized first (x * rsqrt(mean(x^2) + eps) * weight, fusing the layer's norm), then scaled
// by a power of two so the row's largest magnitude is below 2^15. fp16 keeps 11 significant bits
// where bf16 keeps 8, and the per-row factor keeps Qwen's activations (beyond 65504) in range; the
// GEMM multiplies its fp32 results by row_scale, exactly undoing the power of two.
// Within each run of 16 inputs the row is stored in the order of the GEMM's weight fragments
// (awq_repack.cu): inputs 0, 1, 4, 5, 8, 9, 12, 13, then 2, 3, 6, 7, 10, 11, 14, 15.
// Defines: K, NORM.

__device__ __forceinline__ int gemm_order(int i) {
    const int r = i & 15, t = r >> 2, e = r & 3;
    return (i & ~15) + (e < 2 ? 2 * t + e : 8 + 2 * t + e - 2);
}

extern "C" __global__ void rows_f16(const float* __restrict__ x,  // [rows][K]
                                    const f16_t* __restrict__ norm_weight,
                                    float eps,
                                    f16_t* __restrict__ out,  // [rows][K]
                                    float* __restrict__ row_scale) {
    __shared__ float scratch[32];
    pdl_wait();
    pdl_trigger();
    const float* xr = x + (long long)blockIdx.x * K;
    f16_t* orow = out + (long long)blockIdx.x * K;
#if NORM
    float ss = 0.0f;
    for (int i = threadIdx.x; i < K; i += blockDim.x) ss += xr[i] * xr[i];
    const float inv = rsqrtf(block_sum(ss, scratch) / K + eps);
#define VALUE(i) (xr[i] * inv * f16_to_f32(norm_weight[i]))
#else
#define VALUE(i) (xr[i])
#endif
    float amax = 0.0f;
    for (int i = threadIdx.x; i < K; i += blockDim.x) amax = fmaxf(amax, fabsf(VALUE(i)));
    amax = warp_max(amax);
    __syncthreads();  // scratch is still being read by block_sum
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = (threadIdx.x & 31) < (blockDim.x >> 5) ? scratch[threadIdx.x & 31] : 0.0f;
    amax = warp_max(amax);
    // amax < 2^e with e from its exponent field; multiply by 2^(15 - e), clamped to normal floats.
    const int e = ((__float_as_int(amax) >> 23) & 0xff) - 126;
    const int up = min(max(15 - e, -126), 127);
    const float factor = amax > 0.0f && amax <= 3.0e38f ? __int_as_float((up + 127) << 23) : 1.0f;
    if (threadIdx.x == 0) row_scale[blockIdx.x] = 1.0f / factor;
    for (int i = threadIdx.x; i < K; i += blockDim.x) orow[gemm_order(i)] = f32_to_f16(VALUE(i) * factor);
#undef VALUE
}
