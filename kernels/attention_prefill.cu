// Causal attention for M consecutive prompt positions (flash-attention style, on tensor cores) over
// the KV cache, after qk_norm_rope has appended the same positions: query row m sits at position
// step[STEP_POS] + m and attends to every cached position up to its own, including those of
// earlier chunks, so chunked prompts need nothing else.
//
// A block takes QT query positions of one KV head and all GQA query heads sharing it (8 warps or
// more), so each K/V chunk is loaded once for all of them: warp w holds the 16 rows (query head
// w % GQA, positions (w / GQA) * 16 + 0..15). K/V chunks of KC positions are staged in shared memory
// as fp16 rows: an fp16 cache streams by cp.async into two buffers, the next chunk loading while
// one is computed; an int8 cache streams (cp.async, its scales through registers) into two raw
// buffers and is dequantized into one fp16 buffer at the start of its turn. S = Q K^T and O += P V run as m16n8k16 fp16
// mma with fp32 accumulation, their B fragments fetched by ldmatrix (transposing for V), and the
// softmax is online in registers (base 2: q carries head_dim^-0.5 * log2(e)). Only chunks crossing
// the block's first position need the causal mask. q and the scores stay small (q and k are
// RMS-normalized per head); V is stored as fp16 in the cache already.
// Defines: HEAD_DIM (32, 64 or 128), N_HEADS, N_KV_HEADS, KV_Q8, Q8_BLOCK.

#define GQA (N_HEADS / N_KV_HEADS)
#define QW (GQA >= 8 ? 1 : 8 / GQA)  // 16-position row groups per query head
#define NW (GQA * QW)                // warps per block
#define QT (16 * QW)                 // query positions per block
#define KC 64                        // key positions per chunk
#define KP (HEAD_DIM + 8)            // K and V row pitch (halves): ldmatrix rows hit distinct banks
#define DS (HEAD_DIM / 16)           // mma k-steps of q.k
#define DT (HEAD_DIM / 8)            // output n-tiles
#define CHUNK_HALVES (2 * KC * KP)   // K then V of one chunk
#if KV_Q8
#define RAW_BYTES (2 * KC * HEAD_DIM)                 // int8 K then V of one chunk
#define N_SCALES (2 * KC * Q8_PER_ROW)                // their scales
#define SREG ((N_SCALES + NW * 32 - 1) / (NW * 32))  // scales a thread carries to the next chunk
#endif
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ void mma_f16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 fp16 matrices; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

#if KV_Q8
// Eight int8 values times their scale, as fp16.
__device__ __forceinline__ uint4 dequant8(uint2 raw, float s) {
    unsigned h[4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const unsigned word = e < 2 ? raw.x : raw.y;
        const int b0 = (signed char)(word >> (16 * (e & 1))), b1 = (signed char)(word >> (16 * (e & 1) + 8));
        h[e] = pack_f16x2((float)b0 * s, (float)b1 * s);
    }
    return make_uint4(h[0], h[1], h[2], h[3]);
}
#endif

extern "C" __global__ void __launch_bounds__(NW * 32) attention_prefill(
    const float* __restrict__ q,  // [M][N_HEADS][HEAD_DIM], after norm and RoPE
    const kv_t* __restrict__ k_cache,
    const kv_t* __restrict__ v_cache,
    const f16_t* __restrict__ k_scale,
    const f16_t* __restrict__ v_scale,
    const int* __restrict__ step,
    float* __restrict__ out,  // [M][N_HEADS][HEAD_DIM]
    int m_rows,
    int max_seq,
    float q_scale) {
    // fp16 cache: 2 chunk buffers. int8: 1 chunk buffer, 2 raw chunks, the current chunk's scales.
    extern __shared__ uint4 smem_raw[];
    f16_t* const smem = reinterpret_cast<f16_t*>(smem_raw);
#if KV_Q8
    signed char* const raw = reinterpret_cast<signed char*>(smem + CHUNK_HALVES);
    f16_t* const scales = reinterpret_cast<f16_t*>(raw + 2 * RAW_BYTES);
    f16_t next_scale[SREG];
#endif
    pdl_wait();
    pdl_trigger();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int kv = blockIdx.y;
    const int qblock = gridDim.x - 1 - blockIdx.x;  // the longest rows first
    const int head = kv * GQA + warp % GQA;
    const int m0 = qblock * QT + (warp / GQA) * 16;
    const int pos0 = step[STEP_POS];
    const int first = pos0 + qblock * QT;  // the block's first query position
    // Keys [0, kend): up to the block's last query position.
    const int kend = min(pos0 + min(m_rows, (qblock + 1) * QT), max_seq);
    const long long head_row = (long long)kv * max_seq;

    // Chunk c0 into buffer b: rows of K then V, 16 bytes per thread and step (contiguous, so a
    // warp reads whole rows); positions past kend are zero-filled.
    auto load_chunk = [&](int c0, int b) {
#if KV_Q8
        kv_t* kb = raw + b * RAW_BYTES;
        constexpr int PITCH = HEAD_DIM;  // raw rows, dequantized into the fp16 layout per chunk
#else
        kv_t* kb = smem + b * CHUNK_HALVES;
        constexpr int PITCH = KP;
#endif
        constexpr int E = 16 / sizeof(kv_t);  // values per 16-byte copy
        for (int i = tid; i < KC * (HEAD_DIM / E); i += NW * 32) {
            const int r = i / (HEAD_DIM / E), d0 = (i % (HEAD_DIM / E)) * E;
            const bool ok = c0 + r < kend;
            const long long row = head_row + (ok ? c0 + r : 0);
            cp_async16(smem_u32(kb + r * PITCH + d0), k_cache + row * HEAD_DIM + d0, ok);
            cp_async16(smem_u32(kb + (KC + r) * PITCH + d0), v_cache + row * HEAD_DIM + d0, ok);
        }
#if KV_Q8
        // Scales (too small and unaligned for cp.async) wait in registers for the chunk's turn.
#pragma unroll
        for (int j = 0; j < SREG; j++) {
            const int i = tid + NW * 32 * j, which = i / (KC * Q8_PER_ROW), r = i % (KC * Q8_PER_ROW);
            const bool ok = i < N_SCALES && c0 + r / Q8_PER_ROW < kend;
            const f16_t* src = which ? v_scale : k_scale;
            next_scale[j] = ok ? src[(head_row + c0) * Q8_PER_ROW + r] : (f16_t)0;
        }
#endif
        cp_async_commit();
    };
    load_chunk(0, 0);

    // Q as A fragments: rows g and g + 8, dims 16 ds + 2t (+1) and + 8.
    unsigned qa[DS][4];
#pragma unroll
    for (int ds = 0; ds < DS; ds++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int m = m0 + g + 8 * (i & 1), d = 16 * ds + 2 * t + 8 * (i >> 1);
            float2 v = make_float2(0.0f, 0.0f);
            if (m < m_rows) v = *reinterpret_cast<const float2*>(q + ((long long)m * N_HEADS + head) * HEAD_DIM + d);
            qa[ds][i] = pack_f16x2(v.x * q_scale, v.y * q_scale);
        }
    }
    float o[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    float row_max[2] = {NEG_INF, NEG_INF}, row_sum[2] = {0.0f, 0.0f};
    const int qpos[2] = {pos0 + m0 + g, pos0 + m0 + g + 8};
    // This lane's ldmatrix row: row lane % 8 of matrix lane / 8.
    const int lr = lane & 7, lm = lane >> 3;

    for (int c0 = 0, b = 0; c0 < kend; c0 += KC, b ^= 1) {
#if KV_Q8
#pragma unroll
        for (int j = 0; j < SREG; j++)  // this chunk's scales (the last reader passed the last barrier)
            if (tid + NW * 32 * j < N_SCALES) scales[tid + NW * 32 * j] = next_scale[j];
#endif
        if (c0 + KC < kend) {
            load_chunk(c0 + KC, b ^ 1);  // its buffer was released by the barrier ending the last chunk
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // chunk c0 is in buffer b for every thread
#if KV_Q8
        for (int i = tid; i < 2 * KC * (HEAD_DIM / 8); i += NW * 32) {  // rows of K, then of V
            const int r = i / (HEAD_DIM / 8), d0 = (i % (HEAD_DIM / 8)) * 8;
            const uint2 q8 = *reinterpret_cast<const uint2*>(raw + b * RAW_BYTES + r * HEAD_DIM + d0);
            const float sc = f16_to_f32(scales[r * Q8_PER_ROW + d0 / Q8_BLOCK]);
            *reinterpret_cast<uint4*>(smem + r * KP + d0) = dequant8(q8, sc);
        }
        __syncthreads();
        const unsigned kbase = smem_u32(smem), vbase = kbase + KC * KP * 2;
#else
        const unsigned kbase = smem_u32(smem + b * CHUNK_HALVES), vbase = kbase + KC * KP * 2;
#endif

        // S = Q K^T: per n-tile of 8 keys, two k-steps per ldmatrix (matrices: dims +0, +8, +16, +24).
        float sc[KC / 8][4];
#pragma unroll
        for (int nt = 0; nt < KC / 8; nt++) {
            sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
            for (int ds = 0; ds < DS; ds += 2) {
                unsigned kb[4];
                ldmatrix_x4(kb, kbase + ((8 * nt + lr) * KP + 16 * ds + 8 * lm) * 2);
                mma_f16(sc[nt], qa[ds], kb[0], kb[1]);
                mma_f16(sc[nt], qa[ds + 1], kb[2], kb[3]);
            }
        }
        // Causal mask (which also masks positions past kend) where the chunk passes the block's
        // first position, then the online softmax per row.
        if (c0 + KC - 1 > first) {
#pragma unroll
            for (int nt = 0; nt < KC / 8; nt++) {
#pragma unroll
                for (int i = 0; i < 4; i++)
                    if (c0 + 8 * nt + 2 * t + (i & 1) > qpos[i >> 1]) sc[nt][i] = NEG_INF;
            }
        }
        float cmax[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int nt = 0; nt < KC / 8; nt++) {
            cmax[0] = fmaxf(cmax[0], fmaxf(sc[nt][0], sc[nt][1]));
            cmax[1] = fmaxf(cmax[1], fmaxf(sc[nt][2], sc[nt][3]));
        }
        float alpha[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            cmax[h] = fmaxf(cmax[h], __shfl_xor_sync(0xffffffffu, cmax[h], 1));
            cmax[h] = fmaxf(cmax[h], __shfl_xor_sync(0xffffffffu, cmax[h], 2));
            const float m_new = fmaxf(row_max[h], cmax[h]);
            // A row sees key 0 in the first chunk, so m_new is finite from then on.
            alpha[h] = exp2f(row_max[h] - m_new);
            row_max[h] = m_new;
            row_sum[h] *= alpha[h];
        }
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            o[dt][0] *= alpha[0];
            o[dt][1] *= alpha[0];
            o[dt][2] *= alpha[1];
            o[dt][3] *= alpha[1];
        }
        // O += P V: per 16 keys, two n-tiles of dims per transposing ldmatrix (matrices: keys +0 and
        // +8 of dims 8 dt.., then of dims 8 dt + 8..).
#pragma unroll
        for (int ks2 = 0; ks2 < KC / 16; ks2++) {
            unsigned pa[4];
#pragma unroll
            for (int half = 0; half < 2; half++) {
                float* s0 = sc[2 * ks2 + half];
                const float p0 = exp2f(s0[0] - row_max[0]), p1 = exp2f(s0[1] - row_max[0]);
                const float p2 = exp2f(s0[2] - row_max[1]), p3 = exp2f(s0[3] - row_max[1]);
                row_sum[0] += p0 + p1;
                row_sum[1] += p2 + p3;
                pa[2 * half] = pack_f16x2(p0, p1);
                pa[2 * half + 1] = pack_f16x2(p2, p3);
            }
#pragma unroll
            for (int dt = 0; dt < DT; dt += 2) {
                unsigned vb[4];
                ldmatrix_x4_trans(vb, vbase + ((16 * ks2 + 8 * (lm & 1) + lr) * KP + 8 * (dt + (lm >> 1))) * 2);
                mma_f16(o[dt], pa, vb[0], vb[1]);
                mma_f16(o[dt + 1], pa, vb[2], vb[3]);
            }
        }
        __syncthreads();  // buffer b is no longer read: the next iteration may refill it
    }

#pragma unroll
    for (int h = 0; h < 2; h++) {
        row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 1);
        row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 2);
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int m = m0 + g + 8 * h;
        if (m >= m_rows) continue;
        float* orow = out + ((long long)m * N_HEADS + head) * HEAD_DIM;
        const float inv = 1.0f / row_sum[h];
#pragma unroll
        for (int dt = 0; dt < DT; dt++)
            *reinterpret_cast<float2*>(orow + 8 * dt + 2 * t) = make_float2(o[dt][2 * h] * inv, o[dt][2 * h + 1] * inv);
    }
}
