// RMSNorm in fp32: out = x * rsqrt(mean(x^2) + eps) * weight. One block; input and output fp32 so
// activations beyond the fp16 range survive. Defines: HIDDEN.

extern "C" __global__ void rms_norm(const float* __restrict__ x,
                                    const f16_t* __restrict__ weight,
                                    float* __restrict__ out,
                                    float eps) {
    __shared__ float scratch[32];
    pdl_wait();
    pdl_trigger();
    float ss = 0.0f;
    for (int i = threadIdx.x; i < HIDDEN; i += blockDim.x) ss += x[i] * x[i];
    const float inv = rsqrtf(block_sum(ss, scratch) / HIDDEN + eps);
    for (int i = threadIdx.x; i < HIDDEN; i += blockDim.x)
        out[i] = x[i] * inv * f16_to_f32(weight[i]);
}
