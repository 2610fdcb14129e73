// Incremental (decode) attention of one query position over an fp16 KV cache, split over the
// sequence (flash-decoding): attention_partial handles CHUNK positions of one KV head for all the
// query heads that share it (GQA loads each K/V row once), writing an unnormalized output plus its
// softmax max and sum; attention_combine merges the chunks. Sequence length comes from device
// memory (step), so one launch configuration serves every step and no length triggers a compile.
// Defines: HEAD_DIM (multiple of 32), N_HEADS, N_KV_HEADS, CHUNK, THREADS.

#define GQA (N_HEADS / N_KV_HEADS)
#define NEG_INF (-__int_as_float(0x7f800000))

extern "C" __global__ void attention_partial(const float* __restrict__ q,        // [N_HEADS][HEAD_DIM]
                                             const f16_t* __restrict__ k_cache,  // [N_KV_HEADS][max_seq][HEAD_DIM]
                                             const f16_t* __restrict__ v_cache,
                                             const int* __restrict__ step,
                                             float* __restrict__ part_o,   // [N_HEADS][max_chunks][HEAD_DIM]
                                             float* __restrict__ part_ml,  // [N_HEADS][max_chunks][2]
                                             int max_seq,
                                             float scale) {
    __shared__ float qs[GQA][HEAD_DIM];
    __shared__ float p[GQA][CHUNK];
    __shared__ float m_s[GQA], l_s[GQA];
    const int kv = blockIdx.x, chunk = blockIdx.y, max_chunks = gridDim.y;
    const int seq = min(step[STEP_POS] + 1, max_seq);
    const int start = chunk * CHUNK;
    if (start >= seq) return;
    const int len = min(CHUNK, seq - start);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    constexpr int n_warps = THREADS / 32;

    for (int i = threadIdx.x; i < GQA * HEAD_DIM; i += THREADS)
        qs[i / HEAD_DIM][i % HEAD_DIM] = q[(kv * GQA) * HEAD_DIM + i] * scale;
    __syncthreads();

    const f16_t* k_base = k_cache + ((long long)kv * max_seq + start) * HEAD_DIM;
    for (int t = warp; t < len; t += n_warps) {
        float kr[HEAD_DIM / 32];
#pragma unroll
        for (int e = 0; e < HEAD_DIM / 32; e++) kr[e] = f16_to_f32(k_base[t * HEAD_DIM + lane + 32 * e]);
#pragma unroll
        for (int g = 0; g < GQA; g++) {
            float d = 0.0f;
#pragma unroll
            for (int e = 0; e < HEAD_DIM / 32; e++) d += qs[g][lane + 32 * e] * kr[e];
            d = warp_sum(d);
            if (lane == 0) p[g][t] = d;
        }
    }
    __syncthreads();

    for (int g = warp; g < GQA; g += n_warps) {
        float m = NEG_INF;
        for (int t = lane; t < len; t += 32) m = fmaxf(m, p[g][t]);
        m = warp_max(m);
        float l = 0.0f;
        for (int t = lane; t < len; t += 32) {
            const float e = expf(p[g][t] - m);
            p[g][t] = e;
            l += e;
        }
        l = warp_sum(l);
        if (lane == 0) {
            m_s[g] = m;
            l_s[g] = l;
        }
    }
    __syncthreads();

    const f16_t* v_base = v_cache + ((long long)kv * max_seq + start) * HEAD_DIM;
    for (int i = threadIdx.x; i < GQA * HEAD_DIM; i += THREADS) {
        const int g = i / HEAD_DIM, d = i % HEAD_DIM;
        float acc = 0.0f;
        for (int t = 0; t < len; t++) acc += p[g][t] * f16_to_f32(v_base[t * HEAD_DIM + d]);
        part_o[((long long)(kv * GQA + g) * max_chunks + chunk) * HEAD_DIM + d] = acc;
    }
    if (threadIdx.x < GQA) {
        const long long at = ((long long)(kv * GQA + threadIdx.x) * max_chunks + chunk) * 2;
        part_ml[at] = m_s[threadIdx.x];
        part_ml[at + 1] = l_s[threadIdx.x];
    }
}

// One block per query head, HEAD_DIM threads.
extern "C" __global__ void attention_combine(const float* __restrict__ part_o,
                                             const float* __restrict__ part_ml,
                                             const int* __restrict__ step,
                                             float* __restrict__ out,
                                             int max_seq,
                                             int max_chunks) {
    const int h = blockIdx.x, d = threadIdx.x;
    const int seq = min(step[STEP_POS] + 1, max_seq);
    const int n_chunks = (seq + CHUNK - 1) / CHUNK;
    const float* ml = part_ml + (long long)h * max_chunks * 2;
    float m = NEG_INF;
    for (int c = 0; c < n_chunks; c++) m = fmaxf(m, ml[2 * c]);
    float l = 0.0f, acc = 0.0f;
    for (int c = 0; c < n_chunks; c++) {
        const float w = expf(ml[2 * c] - m);
        l += ml[2 * c + 1] * w;
        acc += part_o[((long long)h * max_chunks + c) * HEAD_DIM + d] * w;
    }
    out[h * HEAD_DIM + d] = acc / l;
}
