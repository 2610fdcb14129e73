// Incremental (decode) attention of one query position over the KV cache, split over the sequence
// (flash-decoding), in one kernel: block (KV head x head group, split) covers a contiguous chunk
// of positions and writes, per query head, an unnormalized output with its running max and sum;
// the last block of a KV head to finish (a counter per KV head, reset by that block) merges the
// splits into the output. The grid is fixed (SPLITS per KV head) and the length comes from device
// memory, so one launch configuration serves every step and no sequence length triggers a compile;
// a short context uses only the splits it needs (see chunk_len), the others exit at once.
//
// Why it is shaped like this: decode attention is a stream over the cache with ~2 flops per byte,
// so the kernel must keep many bytes in flight and spend few instructions per byte.
// - Each warp streams its own tiles of 16 positions (tiles interleaved over the block's warps)
//   straight from global memory into mma fragments, with no block-wide barrier in the loop: the
//   next tile's K is requested as soon as q.k has consumed the current one and its V as soon as
//   p.v has, so about one tile per warp is always in flight. The warps of a block merge their
//   online-softmax states once, at the end.
// - The fixed cost is kept off the critical path: the first tile of every warp is requested before
//   the kernel waits for its predecessor (programmatic dependent launch), except the current
//   position's row, which that predecessor writes and which is fetched after the wait; q goes
//   straight from global memory into the A fragments (no shared memory, no barrier); the merge
//   of the splits needs no second launch and requests all its inputs at once.
// - q.k and p.v run on tensor cores (mma.m16n8k16, fp16 in, fp32 accumulate). The 16 rows of the
//   A operand hold the block's (up to 8) query heads twice: rows 0-7 carry the fp16 "hi" part of q
//   (resp. of the softmax weights p), rows 8-15 the fp16 remainder "lo" = x - hi, and a lane holds
//   rows g and g + 8 of every accumulator, so hi + lo is summed in registers. That keeps ~22 bits
//   of q and p (fp32-level accuracy; rounding either to plain fp16 would cost 2^-11) while the fp16
//   cache enters the mma as stored, with no conversion instruction at all.
// - q is scaled per head by a power of two so its largest entry sits near 2^14 (no fp16 overflow
//   or underflow whatever its size; undone exactly on the scores), and carries log2(e) so the
//   softmax uses exp2. p <= 1 enters scaled by 2^14 (int8: 2^7 times m, below) so tiny weights stay
//   normal in fp16.
// - The reduction dimension of an mma may be permuted freely if A and B agree, and so may the
//   output columns: each lane loads 16 contiguous bytes of a K row (fully used 32-byte sectors
//   across the quad) and q is laid out in the matching order; for p.v the B operand needs pairs of
//   positions, which one byte permute per register builds from two V rows.
// - int8 cache: values enter as exact fp16 integers through the magic 1024 + 128 + q (a byte
//   permute, a logic op and an fp16 subtract per pair, no integer-to-float conversion). K scales
//   multiply the per-block partial scores in fp32. A V scale s = m * 2^e (m in [1, 2), 2^e capped
//   at 2^8) is split so q * 2^e is still an exact fp16 in B and m goes into the fp32 weight before
//   its hi/lo split; each mma n-tile lies within one 64-value scale block. Dequantization thus
//   stays exact, like fp32 arithmetic on q * s.
// Defines: HEAD_DIM (32, 64, 128 or 256), N_HEADS, N_KV_HEADS, SPLITS, N_WARPS, KV_Q8, Q8_BLOCK.

#define GQA (N_HEADS / N_KV_HEADS)
#define NEG_INF (-__int_as_float(0x7f800000))
#define THREADS (N_WARPS * 32)
#define HG_HEADS 8                              // query heads per block: the 8 "hi" rows of an mma
#define HGROUPS ((GQA + HG_HEADS - 1) / HG_HEADS)  // blocks per KV head along the heads
#define LOG2E 1.4426950408889634f

constexpr int KV_BYTES = sizeof(kv_t);
constexpr int KSTEPS = HEAD_DIM / 16;  // mma k-steps of q.k
constexpr int NTILES = HEAD_DIM / 8;   // mma n-tiles of p.v
// K: a lane loads HEAD_DIM / 4 values of a row, in pieces of KVAL (16 bytes where the row allows).
constexpr int KVAL = (16 / KV_BYTES < HEAD_DIM / 4) ? 16 / KV_BYTES : HEAD_DIM / 4;
constexpr int KPIECES = HEAD_DIM / 4 / KVAL;
constexpr int KPIECE_WORDS = KVAL * KV_BYTES / 4;
constexpr int KWORDS = KPIECES * KPIECE_WORDS;
constexpr int KSPP = KVAL / 4;  // k-steps per piece
// V: a lane loads HEAD_DIM / 8 values of each of 4 rows, in pieces of VVAL; 8 lanes side by side
// cover 8 * VVAL <= 64 values, so an n-tile never straddles two scale blocks.
constexpr int VVAL = (HEAD_DIM / 8 < 8) ? HEAD_DIM / 8 : 8;
constexpr int VPIECES = HEAD_DIM / 8 / VVAL;
constexpr int VPIECE_WORDS = VVAL * KV_BYTES / 4;
constexpr int VWORDS = VPIECES * VPIECE_WORDS;
// Positions per warp iteration: int8 takes two 16-position tiles so a warp has as many bytes in
// flight as with fp16 and the softmax bookkeeping is amortized over as many bytes.
constexpr int NSUB = KV_Q8 ? 2 : 1;
constexpr int TP = 16 * NSUB;
constexpr int NB = KV_Q8 ? HEAD_DIM / Q8_BLOCK : 1;  // scale blocks per row (int8)
#if KV_Q8
constexpr int SWORDS = (NB + 1) / 2;                 // 32-bit words holding a row's scales
#endif
constexpr float PSCALE = KV_Q8 ? 128.0f : 16384.0f;  // p (times m < 2^8 for int8) stays < 2^15
static_assert(!KV_Q8 || (KPIECES == NB && VPIECES == NB), "a piece must map to one scale block");

// Positions per split: the sequence over the SPLITS blocks of a KV head, in whole rounds of the
// block's warps (one TP-position iteration each) and at least one round, so a short context runs
// on few blocks (fewer partial results to merge) and a long one on all of them. Splits past the
// end have no positions and exit at once.
__device__ __forceinline__ int chunk_len(int seq) {
    constexpr int ROUND = N_WARPS * TP;
    const int c = (seq + SPLITS - 1) / SPLITS;
    return max((c + ROUND - 1) / ROUND * ROUND, ROUND);
}

// NW 32-bit words from global memory. The default path streams through the non-coherent cache
// without allocating in L1; CG (L2 only) is for data the previous kernel may have written while this
// one was already running (the current position's row, see the kernel).
template <int NW, bool CG = false>
__device__ __forceinline__ void load_words(unsigned* w, const void* p) {
    if constexpr (NW == 4) {
        if constexpr (CG)
            asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];"
                : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
                : "l"(p));
        else
            asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
                : "l"(p));
    } else if constexpr (NW == 2) {
        if constexpr (CG)
            asm volatile("ld.global.cg.v2.u32 {%0,%1}, [%2];" : "=r"(w[0]), "=r"(w[1]) : "l"(p));
        else
            asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(w[0]), "=r"(w[1]) : "l"(p));
    } else {
        static_assert(NW == 1, "load width");
        if constexpr (CG)
            asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(w[0]) : "l"(p));
        else
            asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(w[0]) : "l"(p));
    }
}

#if KV_Q8
// The NB fp16 scales of a row.
template <bool CG = false>
__device__ __forceinline__ void load_scales(unsigned* w, const f16_t* p) {
    if constexpr (NB == 1) {
        unsigned short h;
        if constexpr (CG)
            asm volatile("ld.global.cg.u16 %0, [%1];" : "=h"(h) : "l"(p));
        else
            asm volatile("ld.global.nc.L1::no_allocate.u16 %0, [%1];" : "=h"(h) : "l"(p));
        w[0] = h;
    } else {
        load_words<SWORDS, CG>(w, p);
    }
}
#endif

// Data written by other blocks of this launch or by the previous kernel: read from L2, never from
// a stale L1 line.
__device__ __forceinline__ float2 ld_cg2(const float* p) {
    float2 v;
    asm volatile("ld.global.cg.v2.f32 {%0,%1}, [%2];" : "=f"(v.x), "=f"(v.y) : "l"(p));
    return v;
}

__device__ __forceinline__ float4 ld_cg4(const float* p) {
    float4 v;
    asm volatile("ld.global.cg.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ f16_t half_of(const unsigned* w, int i) {
    return (f16_t)(w[i / 2] >> (16 * (i % 2)));
}

__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ unsigned f16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// x = hi + lo with both fp16 (for a pair): ~22 significant bits of x.
__device__ __forceinline__ void split_f16x2(float x0, float x1, unsigned& hi, unsigned& lo) {
    hi = f16x2(x0, x1);
    lo = f16x2(x0 - f16_to_f32((f16_t)hi), x1 - f16_to_f32((f16_t)(hi >> 16)));
}

__device__ __forceinline__ unsigned hsub2(unsigned a, unsigned b) {
    unsigned r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

__device__ __forceinline__ unsigned hmul2(unsigned a, unsigned b) {
    unsigned r;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

__device__ __forceinline__ void mma(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

#define Q8_MAGIC 0x64806480u  // fp16 pair (1152, 1152): 1024 + the 128 bias of a flipped sign bit

// Dimension of q that lane quad position `tig` feeds as element `s` (0-3) of k-step kk: the order
// in which the lane's K pieces hold the row (piece i of lane tig is values (4i + tig) * KVAL...).
__device__ __forceinline__ int q_dim(int kk, int tig, int s) {
    return (4 * (kk / KSPP) + tig) * KVAL + 4 * (kk % KSPP) + s;
}

// Output dimension of column n (0-7) of p.v n-tile nt (lane gid loaded VVAL values per piece).
__device__ __forceinline__ int v_dim(int nt, int n) {
    return (nt / VVAL) * 8 * VVAL + n * VVAL + nt % VVAL;
}

template <int M>
struct LoadMode {
    static constexpr int value = M;
};
#define LOAD_ALL 0  // every row of the tile
#define LOAD_PRE 1  // every row but the current position's (before pdl_wait)
#define LOAD_FIX 2  // only the current position's row, from L2 (after pdl_wait)

extern "C" __global__ void __launch_bounds__(THREADS) attention(
    const float* __restrict__ q,        // [N_HEADS][HEAD_DIM]
    const kv_t* __restrict__ k_cache,  // [N_KV_HEADS][max_seq][HEAD_DIM]
    const kv_t* __restrict__ v_cache,
    const f16_t* __restrict__ k_scale,  // [N_KV_HEADS][max_seq][HEAD_DIM / Q8_BLOCK] (int8 cache)
    const f16_t* __restrict__ v_scale,
    const int* __restrict__ step,
    float* __restrict__ part_o,    // [N_HEADS][SPLITS][HEAD_DIM]
    float* __restrict__ part_ml,   // [N_HEADS][SPLITS][2]: max (log2 units) and sum
    unsigned* __restrict__ done,   // [gridDim.x]: splits finished; 0 between launches
    float* __restrict__ out,       // [N_HEADS][HEAD_DIM]
    int max_seq,
    float scale) {
    __shared__ float so[N_WARPS][HG_HEADS][HEAD_DIM];  // per-warp unnormalized outputs
    __shared__ float sm[N_WARPS][HG_HEADS], sl[N_WARPS][HG_HEADS];
    __shared__ int s_last;
    const int kv = blockIdx.x / HGROUPS, h0 = kv * GQA + (blockIdx.x % HGROUPS) * HG_HEADS;
    const int gb = min(HG_HEADS, kv * GQA + GQA - h0);  // query heads of this block
    const int split = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int gid = lane >> 2, tig = lane & 3;  // mma fragment coordinates

    // Before pdl_wait this kernel may run alongside the previous one (qk_norm_rope, which writes q
    // and the current position's cache row), so it reads only what kernels that have completed
    // wrote: step (written by the host or by argmax at the end of the previous step, and every
    // kernel waits for its predecessor before it lets the next one start, so all kernels before
    // the previous one have completed) and the cache rows of earlier positions.
    const int seq = min(step[STEP_POS] + 1, max_seq);
    const int last = seq - 1;  // the current position: its row is read after pdl_wait only
    const int chunk = chunk_len(seq);
    const int start = split * chunk, end = min(seq, start + chunk);
    if (start >= end) {  // no positions: not counted in `done`, merged by no one
        pdl_wait();  // like every block of every kernel, so a kernel's end implies its predecessor's
        return;
    }

    const long long head_row = (long long)kv * max_seq;
    const kv_t* kh = k_cache + head_row * HEAD_DIM;
    const kv_t* vh = v_cache + head_row * HEAD_DIM;
#if KV_Q8
    const f16_t* ksh = k_scale + head_row * NB;
    const f16_t* vsh = v_scale + head_row * NB;
#endif
    // Rows past the end are clamped to the last valid one (their scores are masked), so every
    // load of a tile is issued unconditionally.
    auto row = [&](int t) { return (long long)min(t, end - 1); };
    // Row slot r (0-3) of a lane in p.v and in the score fragment: positions 2 tig + {0, 1, 8, 9}.
    auto slot_pos = [&](int r) { return 2 * tig + (r & 1) + 8 * (r >> 1); };
    // Whether a load mode fetches row t.
    auto wanted = [&](long long t, auto mode) {
        constexpr int m = decltype(mode)::value;
        return m == LOAD_ALL || ((t == last) == (m == LOAD_FIX));
    };

    unsigned kw[NSUB][2][KWORDS];    // K rows gid and 8 + gid of each tile
    unsigned vw[NSUB][4][VWORDS];    // V rows of the 4 slots
#if KV_Q8
    unsigned ksw[NSUB][4][SWORDS];   // K scales of the 4 score slots
    unsigned vsw[NSUB][4][SWORDS];   // V scales of the 4 slots
#endif
    // Sub-tile u (16 positions from base + 16 u) of K, with its scales, and of V.
    auto load_k_sub = [&](int base, int u, auto mode) {
        constexpr bool cg = decltype(mode)::value == LOAD_FIX;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const long long t = row(base + 16 * u + 8 * h + gid);
            const kv_t* p = kh + t * HEAD_DIM + tig * KVAL;
            if (wanted(t, mode)) {
#pragma unroll
                for (int i = 0; i < KPIECES; i++)
                    load_words<KPIECE_WORDS, cg>(&kw[u][h][i * KPIECE_WORDS], p + i * 4 * KVAL);
            }
        }
#if KV_Q8
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const long long t = row(base + 16 * u + slot_pos(r));
            if (wanted(t, mode)) load_scales<cg>(ksw[u][r], ksh + t * NB);
        }
#endif
    };
    auto load_v_sub = [&](int base, int u, auto mode) {
        constexpr bool cg = decltype(mode)::value == LOAD_FIX;
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const long long t = row(base + 16 * u + slot_pos(r));
            const kv_t* p = vh + t * HEAD_DIM + gid * VVAL;
            if (wanted(t, mode)) {
#pragma unroll
                for (int c = 0; c < VPIECES; c++)
                    load_words<VPIECE_WORDS, cg>(&vw[u][r][c * VPIECE_WORDS], p + c * 8 * VVAL);
#if KV_Q8
                load_scales<cg>(vsw[u][r], vsh + t * NB);
#endif
            }
        }
    };
    auto load_tile = [&](int base, auto mode) {
#pragma unroll
        for (int u = 0; u < NSUB; u++) load_k_sub(base, u, mode);
#pragma unroll
        for (int u = 0; u < NSUB; u++) load_v_sub(base, u, mode);
    };

    // The warp's first tile is requested before pdl_wait, so its memory latency overlaps the tail
    // of the previous kernel; a lane holding the current position's row fetches it afterwards.
    int base = start + warp * TP;
    bool have = base < end;
    if (have) load_tile(base, LoadMode<LOAD_PRE>{});
    pdl_wait();
    pdl_trigger();
    if (have && base + TP > last) load_tile(base, LoadMode<LOAD_FIX>{});

    // q of head gid straight into the A fragments: the lane quad of a head holds all its HEAD_DIM
    // entries. Times softmax scale and log2(e), then a per-head power of two bringing the largest
    // entry to [2^14, 2^15).
    unsigned qa[KSTEPS][4];  // A fragments: rows gid (hi) and gid + 8 (lo)
    float q_unscale;
    {
        float x[KSTEPS][4];
        float a = 0.0f;
        const float* qh = q + (long long)(h0 + gid) * HEAD_DIM;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (gid < gb) v = ld_cg4(qh + q_dim(kk, tig, 0));  // written by the previous kernel
            x[kk][0] = v.x * (scale * LOG2E);
            x[kk][1] = v.y * (scale * LOG2E);
            x[kk][2] = v.z * (scale * LOG2E);
            x[kk][3] = v.w * (scale * LOG2E);
#pragma unroll
            for (int s = 0; s < 4; s++) a = fmaxf(a, fabsf(x[kk][s]));
        }
        a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, 1));
        a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, 2));
        const int e = (int)((__float_as_uint(a) >> 23) & 0xff) - 127;  // floor(log2 a); a = 0: -127
        const int p = max(-120, min(120, 14 - e));
        const float pw = __uint_as_float((unsigned)(p + 127) << 23);
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
            split_f16x2(x[kk][0] * pw, x[kk][1] * pw, qa[kk][0], qa[kk][1]);
            split_f16x2(x[kk][2] * pw, x[kk][3] * pw, qa[kk][2], qa[kk][3]);
        }
        q_unscale = 1.0f / pw;  // exact: a power of two
    }

    float acc[NTILES][4];  // p.v: rows gid (hi p) and gid + 8 (lo p) of head gid
#pragma unroll
    for (int nt = 0; nt < NTILES; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
    float m_run = NEG_INF, l_run = 0.0f;  // running max (log2 units); this lane's share of the sum

    while (have) {
        const int next = base + N_WARPS * TP;
        const bool more = next < end;

        // q.k: scores of head gid at positions 16 u + 8 h + 2 tig + {0, 1}.
        float sc[NSUB][2][2];
#pragma unroll
        for (int u = 0; u < NSUB; u++) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                float c[NB][4];
#pragma unroll
                for (int b = 0; b < NB; b++) c[b][0] = c[b][1] = c[b][2] = c[b][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < KSTEPS; kk++) {
#if KV_Q8
                    const unsigned x = kw[u][h][kk] ^ 0x80808080u;
                    const unsigned b0 = hsub2(__byte_perm(x, 0x64646464u, 0x4140), Q8_MAGIC);
                    const unsigned b1 = hsub2(__byte_perm(x, 0x64646464u, 0x4342), Q8_MAGIC);
                    mma(c[kk / KSPP], qa[kk], b0, b1);
#else
                    mma(c[0], qa[kk], kw[u][h][2 * kk], kw[u][h][2 * kk + 1]);
#endif
                }
#pragma unroll
                for (int j = 0; j < 2; j++) {
#if KV_Q8
                    float s = 0.0f;
#pragma unroll
                    for (int b = 0; b < NB; b++)
                        s += f16_to_f32(half_of(ksw[u][2 * h + j], b)) * (c[b][j] + c[b][2 + j]);
#else
                    float s = c[0][j] + c[0][2 + j];
#endif
                    sc[u][h][j] = base + 16 * u + 8 * h + 2 * tig + j < end ? s * q_unscale : NEG_INF;
                }
            }
            if (more) load_k_sub(next, u, LoadMode<LOAD_ALL>{});  // this sub-tile's K is consumed
        }

        // Online softmax over this iteration's positions (the quad of lanes shares a head).
        float mx = NEG_INF;
#pragma unroll
        for (int u = 0; u < NSUB; u++)
#pragma unroll
            for (int h = 0; h < 2; h++) mx = fmaxf(mx, fmaxf(sc[u][h][0], sc[u][h][1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m_run, mx);  // finite: every iteration has a valid position
        const float alpha = m_new == m_run ? 1.0f : ex2(m_run - m_new);  // 0 on the first one
        m_run = m_new;
        float p[NSUB][2][2];
        float psum = 0.0f;
#pragma unroll
        for (int u = 0; u < NSUB; u++)
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    p[u][h][j] = ex2(sc[u][h][j] - m_new);  // 0 where masked
                    psum += p[u][h][j];
                }
        l_run = l_run * alpha + psum;
        if (__any_sync(0xffffffffu, alpha != 1.0f)) {
#pragma unroll
            for (int nt = 0; nt < NTILES; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[nt][e] *= alpha;
        }

        // p.v: A = weights (k = positions 2 tig + {0, 1} and + 8, as the scores lie), B = V rows.
#pragma unroll
        for (int u = 0; u < NSUB; u++) {
#if KV_Q8
            unsigned pa[NB][4], pw[2][NB];  // per scale block: weights times m; 2^e pairs for B
#pragma unroll
            for (int b = 0; b < NB; b++) {
                float w[4];
                unsigned short e2[4];
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    const float s = f16_to_f32(half_of(vsw[u][r], b));
                    const unsigned e = min(__float_as_uint(s) & 0x7f800000u, (127u + 8u) << 23);
                    w[r] = p[u][r >> 1][r & 1] * (s * __uint_as_float((254u << 23) - e)) * PSCALE;
                    e2[r] = f32_to_f16(__uint_as_float(e));
                }
                split_f16x2(w[0], w[1], pa[b][0], pa[b][1]);
                split_f16x2(w[2], w[3], pa[b][2], pa[b][3]);
                pw[0][b] = e2[0] | (unsigned)e2[1] << 16;
                pw[1][b] = e2[2] | (unsigned)e2[3] << 16;
            }
#pragma unroll
            for (int nt = 0; nt < NTILES; nt++) {
                const int wi = nt / 4, by = nt % 4, b = nt / VVAL;
                const unsigned sel = by | by << 4 | (4 + by) << 8 | (4 + by) << 12;
                unsigned x0 = (__byte_perm(vw[u][0][wi], vw[u][1][wi], sel) & 0x00ff00ffu) ^ Q8_MAGIC;
                unsigned x1 = (__byte_perm(vw[u][2][wi], vw[u][3][wi], sel) & 0x00ff00ffu) ^ Q8_MAGIC;
                x0 = hmul2(hsub2(x0, Q8_MAGIC), pw[0][b]);
                x1 = hmul2(hsub2(x1, Q8_MAGIC), pw[1][b]);
                mma(acc[nt], pa[b], x0, x1);
            }
#else
            unsigned pa[4];
            split_f16x2(p[u][0][0] * PSCALE, p[u][0][1] * PSCALE, pa[0], pa[1]);
            split_f16x2(p[u][1][0] * PSCALE, p[u][1][1] * PSCALE, pa[2], pa[3]);
#pragma unroll
            for (int nt = 0; nt < NTILES; nt++) {
                const int wi = nt / 2;
                const unsigned sel = nt % 2 ? 0x7632 : 0x5410;
                mma(acc[nt], pa, __byte_perm(vw[u][0][wi], vw[u][1][wi], sel),
                    __byte_perm(vw[u][2][wi], vw[u][3][wi], sel));
            }
#endif
            if (more) load_v_sub(next, u, LoadMode<LOAD_ALL>{});
        }
        base = next;
        have = more;
    }

    // Merge the warps: each leaves its output (relative to its own max) in shared memory.
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
#pragma unroll
    for (int nt = 0; nt < NTILES; nt++) {
        so[warp][gid][v_dim(nt, 2 * tig)] = (acc[nt][0] + acc[nt][2]) * (1.0f / PSCALE);
        so[warp][gid][v_dim(nt, 2 * tig + 1)] = (acc[nt][1] + acc[nt][3]) * (1.0f / PSCALE);
    }
    if (tig == 0) {
        sm[warp][gid] = m_run;  // -inf for a warp without positions: weight 0 below
        sl[warp][gid] = l_run;
    }
    __syncthreads();
    for (int i = tid; i < gb * HEAD_DIM; i += THREADS) {
        const int g = i / HEAD_DIM, d = i % HEAD_DIM;
        float m = NEG_INF;
#pragma unroll
        for (int w = 0; w < N_WARPS; w++) m = fmaxf(m, sm[w][g]);  // finite: warp 0 had positions
        float o = 0.0f, l = 0.0f;
#pragma unroll
        for (int w = 0; w < N_WARPS; w++) {
            const float f = exp2f(sm[w][g] - m);
            o += so[w][g][d] * f;
            l += sl[w][g] * f;
        }
        const long long at = (long long)(h0 + g) * SPLITS + split;
        part_o[at * HEAD_DIM + d] = o;
        if (d == 0) {
            part_ml[2 * at] = m;
            part_ml[2 * at + 1] = l;
        }
    }

    // The last block of this KV head (and head group) to finish merges the splits, so no second
    // kernel is needed: out = sum_s o_s 2^(m_s - M) / sum_s l_s 2^(m_s - M).
    const int splits = (seq + chunk - 1) / chunk;  // the splits holding positions
    __threadfence();  // this block's partial result is visible before it is counted
    __syncthreads();
    if (tid == 0) s_last = atomicAdd(&done[blockIdx.x], 1u) == (unsigned)splits - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    if (tid == 0) done[blockIdx.x] = 0;  // for the next launch (kernels after this one wait for it)

    // A thread per 4 output values; it reads the max and sum of every split of its head itself
    // (the lanes of a warp share a head: one broadcast load), so the splits' outputs and weights
    // are requested together, in batches merged online.
    constexpr int D4 = HEAD_DIM / 4, BATCH = SPLITS < 32 ? SPLITS : 32;
    for (int i = tid; i < gb * D4; i += THREADS) {
        const int g = i / D4, d = (i % D4) * 4;
        const long long at = (long long)(h0 + g) * SPLITS;
        float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        float m = NEG_INF, l = 0.0f;
        for (int s0 = 0; s0 < splits; s0 += BATCH) {
            float2 ml[BATCH];
            float4 v[BATCH];
            float mb = m;
#pragma unroll
            for (int j = 0; j < BATCH; j++) {
                const bool used = s0 + j < splits;
                ml[j] = used ? ld_cg2(part_ml + 2 * (at + s0 + j)) : make_float2(NEG_INF, 0.0f);
                v[j] = used ? ld_cg4(part_o + (at + s0 + j) * HEAD_DIM + d) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                mb = fmaxf(mb, ml[j].x);
            }
            const float alpha = exp2f(m - mb);  // 0 on the first batch (m = -inf, mb finite)
            a.x *= alpha, a.y *= alpha, a.z *= alpha, a.w *= alpha;
            l *= alpha;
#pragma unroll
            for (int j = 0; j < BATCH; j++) {
                const float w = exp2f(ml[j].x - mb);  // 0 past the used splits
                l += ml[j].y * w;
                a.x += v[j].x * w, a.y += v[j].y * w, a.z += v[j].z * w, a.w += v[j].w * w;
            }
            m = mb;
        }
        *reinterpret_cast<float4*>(out + (long long)(h0 + g) * HEAD_DIM + d) =
            make_float4(a.x / l, a.y / l, a.z / l, a.w / l);
    }
}
