// Per-head q_norm / k_norm, then NeoX (rotate-half) RoPE, then the KV-cache append, in one launch.
// Input: the fused q|k|v projection, fp32 [rows][(N_HEADS + 2*N_KV_HEADS) * HEAD_DIM]; row r =
// blockIdx.y is the position step[STEP_POS] + r (a decode step has one row, a prompt chunk many).
// Block b < N_HEADS: query head -> q_out (fp32). Next N_KV_HEADS blocks: key heads -> k_cache at
// the step's position; last N_KV_HEADS: value heads (no norm, no RoPE) -> v_cache.
// Cache layout: [N_KV_HEADS][max_seq][HEAD_DIM] in the cache's storage (kv_cache.cuh).
// blockDim.x == HEAD_DIM. Defines: HEAD_DIM, N_HEADS, N_KV_HEADS, KV_Q8, Q8_BLOCK.

extern "C" __global__ void qk_norm_rope(const float* __restrict__ qkv,
                                        const f16_t* __restrict__ q_norm,
                                        const f16_t* __restrict__ k_norm,
                                        const int* __restrict__ step,
                                        float* __restrict__ q_out,
                                        kv_t* __restrict__ k_cache,
                                        kv_t* __restrict__ v_cache,
                                        f16_t* __restrict__ k_scale,
                                        f16_t* __restrict__ v_scale,
                                        int max_seq,
                                        float eps,
                                        float rope_theta) {
    __shared__ float scratch[32];
    __shared__ float normed[HEAD_DIM];
    __shared__ float wmax[HEAD_DIM / 32];
    pdl_wait();
    pdl_trigger();
    const int head = blockIdx.x, i = threadIdx.x;
    const int pos = step[STEP_POS] + blockIdx.y;
    if (pos < 0 || pos >= max_seq) return;  // validated on the host; never write out of bounds
    qkv += (long long)blockIdx.y * (N_HEADS + 2 * N_KV_HEADS) * HEAD_DIM;
    q_out += (long long)blockIdx.y * N_HEADS * HEAD_DIM;
    const float v = qkv[head * HEAD_DIM + i];
    if (head >= N_HEADS + N_KV_HEADS) {
        const int kv = head - N_HEADS - N_KV_HEADS;
        kv_store(v_cache, v_scale, (long long)kv * max_seq + pos, i, v, wmax);
        return;
    }
    const bool is_q = head < N_HEADS;
    const float inv = rsqrtf(block_sum(v * v, scratch) / HEAD_DIM + eps);
    normed[i] = v * inv * f16_to_f32(is_q ? q_norm[i] : k_norm[i]);
    __syncthreads();
    const int half = HEAD_DIM / 2;
    const int f = i % half;
    // inv_freq and angle in fp32, as the reference implementation computes them.
    const float inv_freq = 1.0f / powf(rope_theta, (float)(2 * f) / (float)HEAD_DIM);
    const float angle = (float)pos * inv_freq;
    const float rotated = i < half ? -normed[i + half] : normed[i - half];
    const float out = normed[i] * cosf(angle) + rotated * sinf(angle);
    if (is_q) {
        q_out[head * HEAD_DIM + i] = out;
    } else {
        const int kv = head - N_HEADS;
        kv_store(k_cache, k_scale, (long long)kv * max_seq + pos, i, out, wmax);
    }
}
