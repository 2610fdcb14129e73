// Incremental (decode) attention of one query position over an fp16 KV cache, split over the
// sequence (flash-decoding). attention_partial: block (kv head, split) walks its share of the
// positions in sub-chunks of SUB with an online softmax, for all GQA query heads sharing the KV
// head (each K/V row is loaded once for all of them), and writes an unnormalized output with its
// running max and sum; attention_combine merges the SPLITS partial results per query head.
// The grid is fixed (SPLITS per KV head) and the length comes from device memory, so one launch
// configuration serves every step and no sequence length triggers a compile.
// Defines: HEAD_DIM (multiple of 32; also the block size), N_HEADS, N_KV_HEADS, SPLITS, SUB.

#define GQA (N_HEADS / N_KV_HEADS)
#define NEG_INF (-__int_as_float(0x7f800000))
#define N_WARPS (HEAD_DIM / 32)

extern "C" __global__ void __launch_bounds__(HEAD_DIM) attention_partial(
    const float* __restrict__ q,        // [N_HEADS][HEAD_DIM]
    const f16_t* __restrict__ k_cache,  // [N_KV_HEADS][max_seq][HEAD_DIM]
    const f16_t* __restrict__ v_cache,
    const int* __restrict__ step,
    float* __restrict__ part_o,   // [N_HEADS][SPLITS][HEAD_DIM]
    float* __restrict__ part_ml,  // [N_HEADS][SPLITS][2]
    int max_seq,
    float scale) {
    __shared__ float qs[GQA][HEAD_DIM];
    __shared__ float p[GQA][SUB];
    __shared__ float m_s[GQA], l_s[GQA], rescale[GQA];
    const int kv = blockIdx.x, split = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, d = threadIdx.x;
    const int seq = min(step[STEP_POS] + 1, max_seq);
    const int chunk = (((seq + SPLITS - 1) / SPLITS) + 31) / 32 * 32;
    const int start = split * chunk, end = min(seq, start + chunk);

#pragma unroll
    for (int g = 0; g < GQA; g++) qs[g][d] = q[(kv * GQA + g) * HEAD_DIM + d] * scale;
    if (d < GQA) {
        m_s[d] = NEG_INF;
        l_s[d] = 0.0f;
    }
    float acc[GQA];
#pragma unroll
    for (int g = 0; g < GQA; g++) acc[g] = 0.0f;
    __syncthreads();

    const f16_t* k_head = k_cache + (long long)kv * max_seq * HEAD_DIM;
    const f16_t* v_head = v_cache + (long long)kv * max_seq * HEAD_DIM;
    for (int t0 = start; t0 < end; t0 += SUB) {
        const int n = min(SUB, end - t0);
        // Scores: one warp per position, lanes across the head dimension.
        for (int t = warp; t < n; t += N_WARPS) {
            float kr[HEAD_DIM / 32];
#pragma unroll
            for (int e = 0; e < HEAD_DIM / 32; e++)
                kr[e] = f16_to_f32(k_head[(long long)(t0 + t) * HEAD_DIM + lane + 32 * e]);
#pragma unroll
            for (int g = 0; g < GQA; g++) {
                float s = 0.0f;
#pragma unroll
                for (int e = 0; e < HEAD_DIM / 32; e++) s += qs[g][lane + 32 * e] * kr[e];
                s = warp_sum(s);
                if (lane == 0) p[g][t] = s;
            }
        }
        __syncthreads();
        // Online softmax: new running max, rescale factor for what was accumulated so far.
        for (int g = warp; g < GQA; g += N_WARPS) {
            float m = NEG_INF;
            for (int t = lane; t < n; t += 32) m = fmaxf(m, p[g][t]);
            m = fmaxf(warp_max(m), m_s[g]);
            float l = 0.0f;
            for (int t = lane; t < n; t += 32) {
                const float e = expf(p[g][t] - m);
                p[g][t] = e;
                l += e;
            }
            l = warp_sum(l);
            if (lane == 0) {
                const float r = expf(m_s[g] - m);  // 0 on the first sub-chunk (m_s = -inf)
                rescale[g] = r;
                l_s[g] = l_s[g] * r + l;
                m_s[g] = m;
            }
        }
        __syncthreads();
        // Values: thread d accumulates dimension d for every query head of the group.
#pragma unroll
        for (int g = 0; g < GQA; g++) acc[g] *= rescale[g];
        for (int t = 0; t < n; t++) {
            const float v = f16_to_f32(v_head[(long long)(t0 + t) * HEAD_DIM + d]);
#pragma unroll
            for (int g = 0; g < GQA; g++) acc[g] += p[g][t] * v;
        }
        __syncthreads();  // p is rewritten by the next sub-chunk
    }

#pragma unroll
    for (int g = 0; g < GQA; g++) {
        const long long at = (long long)(kv * GQA + g) * SPLITS + split;
        part_o[at * HEAD_DIM + d] = acc[g];
        if (d == 0) {
            part_ml[2 * at] = m_s[g];  // -inf with l = 0 for an empty split
            part_ml[2 * at + 1] = l_s[g];
        }
    }
}

// One block per query head, HEAD_DIM threads: out = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M).
extern "C" __global__ void attention_combine(const float* __restrict__ part_o,
                                             const float* __restrict__ part_ml,
                                             float* __restrict__ out) {
    const int h = blockIdx.x, d = threadIdx.x;
    const float* ml = part_ml + (long long)h * SPLITS * 2;
    float m = NEG_INF;
    for (int s = 0; s < SPLITS; s++) m = fmaxf(m, ml[2 * s]);
    float l = 0.0f, acc = 0.0f;
    for (int s = 0; s < SPLITS; s++) {
        if (ml[2 * s + 1] == 0.0f) continue;  // empty split
        const float w = expf(ml[2 * s] - m);
        l += ml[2 * s + 1] * w;
        acc += part_o[((long long)h * SPLITS + s) * HEAD_DIM + d] * w;
    }
    out[h * HEAD_DIM + d] = acc / l;
}
