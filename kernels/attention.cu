// Incremental (decode) attention of one query position over an fp16 KV cache, split over the
// sequence (flash-decoding). attention_partial: block (kv head, split) walks its share of the
// positions in sub-chunks of SUB with an online softmax, for all GQA query heads that share the KV
// head (each K/V row is loaded once for all of them), and writes an unnormalized output with its
// running max and sum; attention_combine merges the splits per query head. The grid is fixed
// (SPLITS per KV head) and the length comes from device memory, so one launch configuration serves
// every step and no sequence length triggers a compile. Sub-chunks have a compile-time size (rows
// past the end are clamped to the last valid row and masked), so every load is issued up front.
// The cache is fp16 or int8 with scales (kv_cache.cuh); int8 is dequantized in registers.
// Defines: HEAD_DIM (32, 64, 128 or 256), N_HEADS, N_KV_HEADS, SPLITS, SUB, KV_Q8, Q8_BLOCK.

#define GQA (N_HEADS / N_KV_HEADS)
#define NEG_INF (-__int_as_float(0x7f800000))
#define THREADS 128
#define N_WARPS (THREADS / 32)
#define LPP 4                   // lanes per position for q.k
#define DPL (HEAD_DIM / LPP)    // head dims per lane, within one Q8 block
#define QPAD (DPL + 4)          // padded q segment: the 4 lanes of a position hit different banks
#define PPP (THREADS / LPP)     // positions per q.k pass
#define PAIRS (HEAD_DIM / 2)    // p.v: each thread owns a pair of dims...
#define PGROUPS (THREADS / PAIRS)  // ...for every PGROUPS-th position
#define GQP ((GQA + 3) / 4 * 4)   // p rows padded so the heads of a position load as float4

__device__ __forceinline__ int chunk_len(int seq) {
    return (((seq + SPLITS - 1) / SPLITS) + SUB - 1) / SUB * SUB;
}

extern "C" __global__ void __launch_bounds__(THREADS) attention_partial(
    const float* __restrict__ q,        // [N_HEADS][HEAD_DIM]
    const kv_t* __restrict__ k_cache,  // [N_KV_HEADS][max_seq][HEAD_DIM]
    const kv_t* __restrict__ v_cache,
    const f16_t* __restrict__ k_scale,  // [N_KV_HEADS][max_seq][HEAD_DIM / Q8_BLOCK] (int8 cache)
    const f16_t* __restrict__ v_scale,
    const int* __restrict__ step,
    float* __restrict__ part_o,   // [N_HEADS][SPLITS][HEAD_DIM]
    float* __restrict__ part_ml,  // [N_HEADS][SPLITS][2]
    int max_seq,
    float scale) {
    __shared__ __align__(16) float qs[GQA][LPP][QPAD];
    __shared__ __align__(16) float p[SUB][GQP];  // scores, then softmax weights
    __shared__ float m_s[GQA], l_s[GQA], rescale[GQA];
    __shared__ float red[PGROUPS][HEAD_DIM];
    pdl_wait();
    pdl_trigger();
    const int kv = blockIdx.x, split = blockIdx.y, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int seq = min(step[STEP_POS] + 1, max_seq);
    const int chunk = chunk_len(seq);
    const int start = split * chunk, end = min(seq, start + chunk);
    if (start >= end) return;  // attention_combine reads only the splits that hold positions

    for (int i = tid; i < GQA * HEAD_DIM; i += THREADS) {
        const int g = i / HEAD_DIM, dd = i % HEAD_DIM;
        qs[g][dd / DPL][dd % DPL] = q[(kv * GQA + g) * HEAD_DIM + dd] * scale;
    }
    if (tid < GQA) {
        m_s[tid] = NEG_INF;
        l_s[tid] = 0.0f;
    }
    const int pr = tid % PAIRS, pg = tid / PAIRS;  // p.v role
    const int qj = tid % LPP, qt = tid / LPP;      // q.k role
    float acc[GQA][2];
#pragma unroll
    for (int g = 0; g < GQA; g++) acc[g][0] = acc[g][1] = 0.0f;
    __syncthreads();

    const long long head_row = (long long)kv * max_seq;
    for (int t0 = start; t0 < end; t0 += SUB) {
        const int last = end - 1 - t0;  // last valid offset in this sub-chunk
        // Issue every load of the sub-chunk before using any: K runs for q.k, V pairs for p.v.
        KvRun<DPL> kr[SUB / PPP];
#pragma unroll
        for (int pass = 0; pass < SUB / PPP; pass++)
            kr[pass] = kv_fetch<DPL>(k_cache, k_scale, head_row + t0 + min(pass * PPP + qt, last), qj * DPL);
        KvRun<2> vr[SUB / PGROUPS];
#pragma unroll
        for (int j = 0; j < SUB / PGROUPS; j++)
            vr[j] = kv_fetch<2>(v_cache, v_scale, head_row + t0 + min(pg + j * PGROUPS, last), 2 * pr);
        // q.k: LPP lanes per position, DPL dims each.
#pragma unroll
        for (int pass = 0; pass < SUB / PPP; pass++) {
            const int t = pass * PPP + qt;
            float kf[DPL];
            kv_decode_unscaled(kr[pass], kf);
            const float k_scale_run = kv_scale(kr[pass]);  // the lane's DPL values share one scale
#pragma unroll
            for (int g = 0; g < GQA; g++) {
                float s = 0.0f;
#pragma unroll
                for (int e = 0; e < DPL; e += 4) {
                    const float4 qv = *reinterpret_cast<const float4*>(&qs[g][qj][e]);
                    s += qv.x * kf[e] + qv.y * kf[e + 1] + qv.z * kf[e + 2] + qv.w * kf[e + 3];
                }
                s *= k_scale_run;
                s += __shfl_xor_sync(0xffffffffu, s, 1);
                s += __shfl_xor_sync(0xffffffffu, s, 2);
                if (qj == 0) p[t][g] = t <= last ? s : NEG_INF;
            }
        }
        __syncthreads();
        // Online softmax: new running max, and the factor rescaling what was accumulated so far.
        for (int g = warp; g < GQA; g += N_WARPS) {
            float m = NEG_INF;
            for (int t = lane; t < SUB; t += 32) m = fmaxf(m, p[t][g]);
            m = fmaxf(warp_max(m), m_s[g]);
            float l = 0.0f;
            for (int t = lane; t < SUB; t += 32) {
                const float e = expf(p[t][g] - m);  // 0 for masked positions
                p[t][g] = e;
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
        // p.v: a pair of dims per thread over every PGROUPS-th position.
#pragma unroll
        for (int g = 0; g < GQA; g++) {
            acc[g][0] *= rescale[g];
            acc[g][1] *= rescale[g];
        }
#pragma unroll
        for (int j = 0; j < SUB / PGROUPS; j++) {
            const int t = pg + j * PGROUPS;
            float v[2];
            kv_decode_unscaled(vr[j], v);
            v[0] *= kv_scale(vr[j]);
            v[1] *= kv_scale(vr[j]);
#pragma unroll
            for (int g4 = 0; g4 < GQP; g4 += 4) {
                const float4 pv = *reinterpret_cast<const float4*>(&p[t][g4]);
                const float pw[4] = {pv.x, pv.y, pv.z, pv.w};
#pragma unroll
                for (int e = 0; e < 4 && g4 + e < GQA; e++) {
                    acc[g4 + e][0] += pw[e] * v[0];
                    acc[g4 + e][1] += pw[e] * v[1];
                }
            }
        }
        __syncthreads();  // p is rewritten by the next sub-chunk
    }

    for (int g = 0; g < GQA; g++) {
        red[pg][2 * pr] = acc[g][0];
        red[pg][2 * pr + 1] = acc[g][1];
        __syncthreads();
        const long long at = (long long)(kv * GQA + g) * SPLITS + split;
        for (int dd = tid; dd < HEAD_DIM; dd += THREADS) {
            float o = 0.0f;
#pragma unroll
            for (int k = 0; k < PGROUPS; k++) o += red[k][dd];
            part_o[at * HEAD_DIM + dd] = o;
        }
        if (tid == 0) {
            part_ml[2 * at] = m_s[g];
            part_ml[2 * at + 1] = l_s[g];
        }
        __syncthreads();
    }
}

// One block per query head, HEAD_DIM threads: out = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M).
extern "C" __global__ void attention_combine(const float* __restrict__ part_o,
                                             const float* __restrict__ part_ml,
                                             const int* __restrict__ step,
                                             float* __restrict__ out,
                                             int max_seq) {
    pdl_wait();
    pdl_trigger();
    const int h = blockIdx.x, d = threadIdx.x;
    const int seq = min(step[STEP_POS] + 1, max_seq);
    const int splits = (seq + chunk_len(seq) - 1) / chunk_len(seq);
    const float* ml = part_ml + (long long)h * SPLITS * 2;
    float m = NEG_INF;
    for (int s = 0; s < splits; s++) m = fmaxf(m, ml[2 * s]);
    float l = 0.0f, acc = 0.0f;
    for (int s = 0; s < splits; s++) {
        const float w = expf(ml[2 * s] - m);
        l += ml[2 * s + 1] * w;
        acc += part_o[((long long)h * SPLITS + s) * HEAD_DIM + d] * w;
    }
    out[h * HEAD_DIM + d] = acc / l;
}
