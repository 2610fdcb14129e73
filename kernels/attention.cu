// Incremental (decode) attention of one query position over the KV cache, split over the sequence
// (flash-decoding), in one kernel: block (KV head x head group, split) covers a contiguous chunk
// of positions and writes, per query head, an unnormalized output with its running max and sum;
// the last block of a KV head to finish (a counter per KV head, reset by that block) merges the
// splits into the output. The grid is fixed (SPLITS per KV head) and the length comes from device
// memory, so one launch configuration serves every step and no sequence length triggers a compile;
// a short context uses only the splits it needs (see chunk_len; one split writes the output
// itself), the others exit at once.
//
// Why it is shaped like this: decode attention is a stream over the cache with ~2 flops per byte,
// so the kernel must keep many bytes in flight and spend few instructions per byte.
// - Each warp streams its own tiles of positions (tiles interleaved over the block's warps) with
//   cp.async into a private ring of DEPTH tile slots in shared memory, with no block-wide barrier in
//   the loop: a slot is refilled as soon as the warp has read it, so DEPTH tiles per warp are always
//   in flight. A short context (4096 positions at the Qwen3-8B shape: two fp16 tiles per warp) is
//   thus requested whole at the start, and the warps of a block merge their online-softmax states
//   once, at the end.
// - The fixed cost is kept off the critical path: the warp's first DEPTH tiles are requested before
//   the kernel waits for its predecessor (programmatic dependent launch), except the current
//   position's row, which that predecessor writes: it is zero-filled then, fetched from L2 after
//   the wait and written into its slot once the slot has landed. q goes straight from global
//   memory into the A fragments; the merge of the splits needs no second launch and requests all
//   its inputs at once.
// - Rows live in the slots with their 16-byte chunks XOR-swizzled by the row (see slot_offset), so
//   the fragment loads below read shared memory without bank conflicts.
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
//   output columns: each lane reads 16 contiguous bytes of a K row (one shared-memory vector load)
//   and q is laid out in the matching order; for p.v the B operand needs pairs of positions, which
//   one byte permute per register builds from two V rows.
// - int8 cache: values enter as exact fp16 integers through the magic 1024 + 128 + q (a byte
//   permute, a logic op and an fp16 subtract per pair, no integer-to-float conversion). K scales
//   multiply the per-block partial scores in fp32. A V scale s = m * 2^e (m in [1, 2), 2^e capped
//   at 2^8) is split so q * 2^e is still an exact fp16 in B and m goes into the fp32 weight before
//   its hi/lo split; each mma n-tile lies within one 64-value scale block. Dequantization thus
//   stays exact, like fp32 arithmetic on q * s.
// Defines: HEAD_DIM (32, 64, 128 or 256), N_HEADS, N_KV_HEADS, SPLITS, N_WARPS, DEPTH, SLOT_BYTES,
// KV_Q8, Q8_BLOCK.

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

// A warp's tile slot: K rows, V rows and, int8, the K and V scales of the tile's rows. A tile's
// scales are copied in whole 16-byte chunks from the chunk holding its first row's (a head's
// scales need not start 16-byte aligned), so they sit SCALE_SKEW bytes into their region.
constexpr int RB = HEAD_DIM * KV_BYTES;  // bytes of a cache row
constexpr int RCH = RB / 16;             // its 16-byte chunks (a power of two)
constexpr int SLOT_V = TP * RB;
#if KV_Q8
constexpr int SB = NB * 2;                       // bytes of a row's scales
constexpr int SCALE_CHUNKS = TP * SB / 16 + 1;   // chunks covering a tile's scales, however aligned
constexpr int SLOT_KS = 2 * TP * RB, SLOT_VS = SLOT_KS + 16 * SCALE_CHUNKS;
static_assert(SLOT_BYTES == SLOT_VS + 16 * SCALE_CHUNKS, "slot size");
#else
static_assert(SLOT_BYTES == 2 * TP * RB, "slot size");
#endif
static_assert(N_WARPS * DEPTH * SLOT_BYTES >= N_WARPS * 8 * HEAD_DIM * 4, "the warp merge reuses the ring");

// Byte offset in a K or V region of byte `b` of row `r`: the row's 16-byte chunks are XORed with a
// function of r & 7 so the fragment loads of a quarter warp (rows 2p and 2p + 1, or four rows of
// one parity) hit distinct banks.
__device__ __forceinline__ int slot_offset(int r, int b) {
    const int g = ((r & 6) ^ ((r & 1) << 2)) & (RCH - 1);
    return r * RB + ((((b >> 4) ^ g)) << 4) + (b & 15);
}

// Positions per split: the sequence over the SPLITS blocks of a KV head, in whole rounds of the
// block's warps (one TP-position iteration each) and at least one round, so a short context runs
// on few blocks (fewer partial results to merge) and a long one on all of them. A context that
// one block requests whole before the dependency wait (DEPTH rounds) is one split, which needs no
// merge. Splits past the end have no positions and exit at once.
__device__ __forceinline__ int chunk_len(int seq) {
    constexpr int ROUND = N_WARPS * TP;
    if (seq <= DEPTH * ROUND) return DEPTH * ROUND;
    const int c = (seq + SPLITS - 1) / SPLITS;
    return max((c + ROUND - 1) / ROUND * ROUND, ROUND);
}

// NW 32-bit words from shared memory.
template <int NW>
__device__ __forceinline__ void lds_words(unsigned* w, unsigned addr) {
    if constexpr (NW == 4) {
        asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];"
            : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
            : "r"(addr));
    } else if constexpr (NW == 2) {
        asm volatile("ld.shared.v2.u32 {%0,%1}, [%2];" : "=r"(w[0]), "=r"(w[1]) : "r"(addr));
    } else {
        static_assert(NW == 1, "load width");
        asm volatile("ld.shared.u32 %0, [%1];" : "=r"(w[0]) : "r"(addr));
    }
}

#if KV_Q8
// The NB fp16 scales of a row.
__device__ __forceinline__ void lds_scales(unsigned* w, unsigned addr) {
    if constexpr (NB == 1) {
        unsigned short h;
        asm volatile("ld.shared.u16 %0, [%1];" : "=h"(h) : "r"(addr));
        w[0] = h;
    } else {
        lds_words<SWORDS>(w, addr);
    }
}
#endif

// 16 bytes from global to shared memory, of which the first `bytes` (0-16) are read and the rest
// zero-filled.
__device__ __forceinline__ void cp_async_part(unsigned dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes));
}

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

// Not volatile: a pure function of its operands, so the compiler may interleave independent chains.
__device__ __forceinline__ void mma(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm(
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
    const unsigned char* kh = reinterpret_cast<const unsigned char*>(k_cache) + head_row * RB;
    const unsigned char* vh = reinterpret_cast<const unsigned char*>(v_cache) + head_row * RB;
#if KV_Q8
    // The tiles' scales are copied from 16-byte boundaries of the whole scale arrays.
    const long long scale0 = head_row * SB;  // byte offset of this head's first scale
    const unsigned char* ks8 = reinterpret_cast<const unsigned char*>(k_scale);
    const unsigned char* vs8 = reinterpret_cast<const unsigned char*>(v_scale);
#endif
    // Row slot r (0-3) of a lane in p.v and in the score fragment: positions 2 tig + {0, 1, 8, 9}.
    auto slot_pos = [&](int r) { return 2 * tig + (r & 1) + 8 * (r >> 1); };

    extern __shared__ __align__(128) unsigned char ring[];  // per warp: DEPTH slots
    const unsigned ring0 = smem_u32(ring) + warp * DEPTH * SLOT_BYTES;

    // Copies the tile of TP positions from `base` into the slot at `slot`; rows at or past `lim`
    // are zero-filled (scores past the end are masked and a zero V row adds nothing).
    auto fetch = [&](unsigned slot, int base, int lim) {
#pragma unroll
        for (int i = lane; i < TP * RCH; i += 32) {
            const int r = i / RCH, b = (i % RCH) * 16;
            const bool ok = base + r < lim;
            const long long at = (long long)(ok ? base + r : base) * RB + b;
            cp_async16(slot + slot_offset(r, b), kh + at, ok);
            cp_async16(slot + SLOT_V + slot_offset(r, b), vh + at, ok);
        }
#if KV_Q8
        if (lane < SCALE_CHUNKS) {
            const long long from = (scale0 + (long long)base * SB) & ~15ll, at = from + 16 * lane;
            const int bytes = (int)max(0ll, min(16ll, scale0 + (long long)lim * SB - at));
            cp_async_part(slot + SLOT_KS + 16 * lane, ks8 + (bytes > 0 ? at : from), bytes);
            cp_async_part(slot + SLOT_VS + 16 * lane, vs8 + (bytes > 0 ? at : from), bytes);
        }
#endif
    };

    // The warp's tiles start at `first`, N_WARPS * TP apart. Its first DEPTH are requested before
    // pdl_wait (one commit group each, empty past the last tile, so group j is tile j), so their
    // memory latency overlaps the tail of the previous kernel.
    const int first = start + warp * TP;
    const int tiles = first < end ? (end - first + N_WARPS * TP - 1) / (N_WARPS * TP) : 0;
    const int pre = min(end, last);  // rows before it are written by completed kernels
#pragma unroll
    for (int j = 0; j < DEPTH; j++) {
        if (j < tiles) fetch(ring0 + j * SLOT_BYTES, first + j * N_WARPS * TP, pre);
        cp_async_commit();
    }
    pdl_wait();
    pdl_trigger();

    // The warp whose last tile holds the current position fetches that row from L2 now and writes
    // it into the slot once the slot's copies have landed (they zero-filled it).
    const int last_base = tiles > 0 ? first + (tiles - 1) * N_WARPS * TP : 0;
    const bool fix = tiles > 0 && last < last_base + TP && last >= last_base;
    uint4 fix_k = make_uint4(0, 0, 0, 0), fix_v = make_uint4(0, 0, 0, 0);
#if KV_Q8
    unsigned short fix_ks = 0, fix_vs = 0;
#endif
    if (fix) {
        if (lane < RCH) {
            const long long at = (long long)last * RB + 16 * lane;
            asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];"
                : "=r"(fix_k.x), "=r"(fix_k.y), "=r"(fix_k.z), "=r"(fix_k.w) : "l"(kh + at));
            asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];"
                : "=r"(fix_v.x), "=r"(fix_v.y), "=r"(fix_v.z), "=r"(fix_v.w) : "l"(vh + at));
        }
#if KV_Q8
        if (lane < NB) {
            const f16_t* p = k_scale + (head_row + last) * NB + lane;
            asm volatile("ld.global.cg.u16 %0, [%1];" : "=h"(fix_ks) : "l"(p));
            p = v_scale + (head_row + last) * NB + lane;
            asm volatile("ld.global.cg.u16 %0, [%1];" : "=h"(fix_vs) : "l"(p));
        }
#endif
    }

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

    unsigned slot = ring0;
    for (int it = 0; it < tiles; it++) {
        const int base = first + it * N_WARPS * TP;
        cp_async_wait<DEPTH - 1>();  // group `it`: this tile
        __syncwarp();
#if KV_Q8
        const unsigned skew = (unsigned)((scale0 + (long long)base * SB) & 15);  // of the scales
#endif
        if (fix && it == tiles - 1) {
            const int r = last - base;
            if (lane < RCH) {
                const int o = slot_offset(r, 16 * lane);
                asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};"
                    :: "r"(slot + o), "r"(fix_k.x), "r"(fix_k.y), "r"(fix_k.z), "r"(fix_k.w) : "memory");
                asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};"
                    :: "r"(slot + SLOT_V + o), "r"(fix_v.x), "r"(fix_v.y), "r"(fix_v.z), "r"(fix_v.w) : "memory");
            }
#if KV_Q8
            if (lane < NB) {
                const unsigned o = skew + r * SB + 2 * lane;
                asm volatile("st.shared.u16 [%0], %1;" :: "r"(slot + SLOT_KS + o), "h"(fix_ks) : "memory");
                asm volatile("st.shared.u16 [%0], %1;" :: "r"(slot + SLOT_VS + o), "h"(fix_vs) : "memory");
            }
#endif
            __syncwarp();
        }

        // q.k: scores of head gid at positions 16 u + 8 h + 2 tig + {0, 1}. All K fragments are read
        // first and the k-steps run outermost, so the 2 NSUB accumulation chains interleave.
        constexpr int NR = 2 * NSUB;  // K row groups: 8 rows each (u, h)
        unsigned kw[NR][KWORDS];      // K row 16 u + 8 h + gid, pieces as q_dim orders them
#pragma unroll
        for (int g = 0; g < NR; g++)
#pragma unroll
            for (int i = 0; i < KPIECES; i++)
                lds_words<KPIECE_WORDS>(&kw[g][i * KPIECE_WORDS],
                    slot + slot_offset(8 * g + gid, (tig + 4 * i) * KVAL * KV_BYTES));
#if KV_Q8
        unsigned ksw[NR][2][SWORDS];  // scales of score positions 8 g + 2 tig + {0, 1}
#pragma unroll
        for (int g = 0; g < NR; g++)
#pragma unroll
            for (int j = 0; j < 2; j++) lds_scales(ksw[g][j], slot + SLOT_KS + skew + (8 * g + 2 * tig + j) * SB);
#endif
        float c[NR][NB][4];
#pragma unroll
        for (int g = 0; g < NR; g++)
#pragma unroll
            for (int b = 0; b < NB; b++) c[g][b][0] = c[g][b][1] = c[g][b][2] = c[g][b][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
#pragma unroll
            for (int g = 0; g < NR; g++) {
#if KV_Q8
                const unsigned x = kw[g][kk] ^ 0x80808080u;
                const unsigned b0 = hsub2(__byte_perm(x, 0x64646464u, 0x4140), Q8_MAGIC);
                const unsigned b1 = hsub2(__byte_perm(x, 0x64646464u, 0x4342), Q8_MAGIC);
                mma(c[g][kk / KSPP], qa[kk], b0, b1);
#else
                mma(c[g][0], qa[kk], kw[g][2 * kk], kw[g][2 * kk + 1]);
#endif
            }
        }
        float sc[NSUB][2][2];
#pragma unroll
        for (int g = 0; g < NR; g++) {
#pragma unroll
            for (int j = 0; j < 2; j++) {
#if KV_Q8
                float s = 0.0f;
#pragma unroll
                for (int b = 0; b < NB; b++) s += f16_to_f32(half_of(ksw[g][j], b)) * (c[g][b][j] + c[g][b][2 + j]);
#else
                float s = c[g][0][j] + c[g][0][2 + j];
#endif
                sc[g / 2][g % 2][j] = base + 8 * g + 2 * tig + j < end ? s * q_unscale : NEG_INF;
            }
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
            unsigned vw[4][VWORDS];  // V rows of the 4 slots
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int c = 0; c < VPIECES; c++)
                    lds_words<VPIECE_WORDS>(&vw[r][c * VPIECE_WORDS],
                        slot + SLOT_V + slot_offset(16 * u + slot_pos(r), (gid * VVAL + c * 8 * VVAL) * KV_BYTES));
#if KV_Q8
            unsigned vsw[4][SWORDS];
#pragma unroll
            for (int r = 0; r < 4; r++) lds_scales(vsw[r], slot + SLOT_VS + skew + (16 * u + slot_pos(r)) * SB);
            unsigned pa[NB][4], pw[2][NB];  // per scale block: weights times m; 2^e pairs for B
#pragma unroll
            for (int b = 0; b < NB; b++) {
                float w[4];
                unsigned short e2[4];
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    const float s = f16_to_f32(half_of(vsw[r], b));
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
                unsigned x0 = (__byte_perm(vw[0][wi], vw[1][wi], sel) & 0x00ff00ffu) ^ Q8_MAGIC;
                unsigned x1 = (__byte_perm(vw[2][wi], vw[3][wi], sel) & 0x00ff00ffu) ^ Q8_MAGIC;
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
                mma(acc[nt], pa, __byte_perm(vw[0][wi], vw[1][wi], sel),
                    __byte_perm(vw[2][wi], vw[3][wi], sel));
            }
#endif
        }
        __syncwarp();  // every lane has read the slot: refill it with tile it + DEPTH
        if (it + DEPTH < tiles) fetch(slot, base + DEPTH * N_WARPS * TP, pre);
        cp_async_commit();
        slot = slot + SLOT_BYTES == ring0 + DEPTH * SLOT_BYTES ? ring0 : slot + SLOT_BYTES;
    }

    // Merge the warps: each leaves its output (relative to its own max) in shared memory, in the
    // ring once every warp is done with it.
    __syncthreads();
    auto so = reinterpret_cast<float(*)[HG_HEADS][HEAD_DIM]>(ring);
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
        if (chunk >= seq) {  // the only split: nothing to merge
            out[(long long)(h0 + g) * HEAD_DIM + d] = o / l;
            continue;
        }
        const long long at = (long long)(h0 + g) * SPLITS + split;
        part_o[at * HEAD_DIM + d] = o;
        if (d == 0) {
            part_ml[2 * at] = m;
            part_ml[2 * at + 1] = l;
        }
    }
    if (chunk >= seq) return;

    // The last block of this KV head (and head group) to finish merges the splits, so no second
    // kernel is needed: out = sum_s o_s 2^(m_s - M) / sum_s l_s 2^(m_s - M).
    const int splits = (seq + chunk - 1) / chunk;  // the splits holding positions
    fence_gpu();  // this block's partial result is visible before it is counted
    __syncthreads();
    if (tid == 0) s_last = atomicAdd(&done[blockIdx.x], 1u) == (unsigned)splits - 1;
    __syncthreads();
    if (!s_last) return;
    fence_gpu();  // and the other splits' results to this block
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
