// The int8 KV cache back to fp32, for inspection and export: out[r][i] = q[r][i] * scale[r][i / Q8_BLOCK].
// Defines: HEAD_DIM, KV_Q8 (1), Q8_BLOCK.

extern "C" __global__ void kv_dequant(const kv_t* __restrict__ cache,
                                      const f16_t* __restrict__ scales,
                                      float* __restrict__ out,
                                      int rows) {
    pdl_wait();
    const long long n = (long long)rows * HEAD_DIM;
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < n; j += (long long)gridDim.x * blockDim.x)
        out[j] = (float)cache[j] * f16_to_f32(scales[j / Q8_BLOCK]);
}
