// Token sampling on the GPU with transformers' logits processors, one block of 1024 threads.
//
// Order (as transformers applies them): repetition penalty (tokens flagged in `presence`: a
// positive logit is divided by the penalty, a negative one multiplied), then, when sampling,
// temperature, top_k, top_p, min_p, and a draw from the softmax of what is left. Greedy mode
// (do_sample == 0) takes the argmax after the penalty, lowest index on ties. NaN logits never win.
//
// Every truncation keeps the tokens whose (penalized) logit is at least a threshold, so the kept
// set is "key >= threshold" for a monotone integer key of the float: top_k keeps the keys at least
// the k-th largest key; top_p keeps the keys at least the lowest key whose larger keys weigh less
// than ceil(top_p * kept mass). Masses are exp((x - max) / temperature) in fixed point (2^40 = the
// largest), so every sum is an exact integer: results do not depend on the order of additions,
// and the same seed always gives the same token. min_p keeps exp((x - max) / temperature) >= min_p.
//
// The draw is one 64-bit counter-based random number, a hash of (seed, position): u in [0, Z) where
// Z is the kept mass; the token is where the running mass passes u, in a fixed order: thread-major
// (thread t = token % 1024 owns tokens t, t + 1024, ...; threads in order, each its tokens in
// order). Nothing depends on how often the kernel ran before, so CUDA-graph replays reproduce.
//
// How the thresholds are found (any exact search gives the same unique key; these are fast):
//   * Pass 1 reads every logit once (float4 loads, several in flight): the max and its index, and
//     for each thread the key of its own largest token. The keys of 1024 distinct tokens bound
//     order statistics: at least j tokens have keys >= the j-th largest of them.
//   * top_k (k <= 1024): every token with key >= the k-th largest per-thread maximum is gathered
//     into shared memory (usually about k tokens); the candidates are sorted by key, and top_k,
//     top_p (over the candidates' masses), min_p and each thread's kept mass come from them.
//   * top_p without top_k: pass 2 sums the masses of all tokens (Z), and of those with keys >= the
//     256th and 1024th largest per-thread maxima, gathering the former. A bound whose tokens weigh
//     at least ceil(top_p * Z) holds the threshold, so the candidates above it (gathered again for
//     the 1024th) decide it exactly as above.
//   * Otherwise (top_k > 1024, more than CAND candidates, a bound too light): top_k by radix select
//     over all logits (three histogram passes of 11, 11 and 10 key bits); top_p by a histogram of
//     the masses over 2048 bins of the distance below the max (1/64 of the temperature each), then
//     a pass that sums each thread's mass in the bins above the one holding the threshold and
//     gathers that bin's tokens, which decide it exactly (top_p_select); radix select again where
//     the bin holds more than CAND tokens. Then a pass for the kept mass, unless top_p gave it.
//   * Temperature and min_p alone: one pass sums each thread's kept mass.
//
// Parameters live in device memory (written before generation), so one captured launch serves
// every step. Like argmax, the kernel writes the token into step[0] and advances step[1]; it also
// flags the token in `presence` for the repetition penalty of later steps. `logits` must be 16-byte
// aligned (float4 loads). Defines: N.

#define SAMPLE_THREADS 1024
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
#define ROUNDS ((N + SAMPLE_THREADS - 1) / SAMPLE_THREADS)
#define RADIX_BINS 2048
#define NEG_INF (-__int_as_float(0x7f800000))
#define MASS_ONE 1099511627776.0f  // 2^40
#define FULL_MASK 0xffffffffu
#define CAND 4096                                // candidate capacity (shared memory)
#define CAND_PER_THREAD (CAND / SAMPLE_THREADS)  // consecutive sorted candidates per thread
#define QUADS (N / 4)                            // float4 chunks; the N % 4 last tokens apart
#define QUADS_IN_FLIGHT 4                        // per thread, in the vectorized passes
#define QUAD_ROUNDS ((QUADS + SAMPLE_THREADS * QUADS_IN_FLIGHT - 1) / (SAMPLE_THREADS * QUADS_IN_FLIGHT))
#define STRIDED_IN_FLIGHT 8                      // loads per thread in the thread-major mass pass

static_assert(ROUNDS <= SAMPLE_THREADS, "the final gather gives each round one thread");
static_assert(RADIX_BINS == 2 * SAMPLE_THREADS, "each thread owns two histogram bins");
static_assert(CAND >= RADIX_BINS && CAND % SAMPLE_THREADS == 0, "the candidate buffer holds the histogram");

typedef unsigned long long u64;

struct SampleParams {
    float temperature;
    float top_p;
    float min_p;
    float repetition_penalty;
    int top_k;  // 0: off
    int do_sample;
    unsigned seed_lo;
    unsigned seed_hi;
};

__device__ __forceinline__ u64 mix64(u64 z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Order-preserving map of floats onto unsigned ints (-inf lowest; NaN is mapped to -inf earlier).
// Real keys are >= key_of(-inf) = 0x007fffff, so 0 is below every token.
__device__ __forceinline__ unsigned key_of(float x) {
    const unsigned b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float float_of_key(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// What the processors see of the logits.
struct View {
    const float* logits;
    const unsigned* presence;
    float penalty;
    float max;
    float temperature;

    // The logit after the repetition penalty (`flagged`: the token is in `presence`); NaN becomes -inf.
    __device__ __forceinline__ float fix(float x, bool flagged) const {
        if (x != x) return NEG_INF;
        if (penalty != 1.0f && flagged) x = x > 0.0f ? x / penalty : x * penalty;
        return x;
    }

    __device__ __forceinline__ float value(int i) const {
        const float x = logits[i];
        return fix(x, penalty != 1.0f && ((presence[i >> 5] >> (i & 31)) & 1u));
    }

    // exp((x - max) / temperature): the probability relative to the most likely token.
    __device__ __forceinline__ float relative(float x) const { return expf((x - max) / temperature); }

    __device__ __forceinline__ u64 mass(float x) const { return __float2ull_rn(relative(x) * MASS_ONE); }

    // The same, skipping the arithmetic where it is surely 0: (x - max) / temperature < -29.9
    // gives exp < 2^-43 (0 is below 2^-41).
    __device__ __forceinline__ u64 mass_or_zero(float x, float cut) const { return x - max < cut ? 0ull : mass(x); }
};

// Calls f(i, in, x) for every token i (in: i < N; x: its penalized logit, -inf when !in) in float4
// chunks: thread t takes tokens 4q .. 4q + 3 for q = t, t + 1024, ..., in increasing order, with
// QUADS_IN_FLIGHT chunks loaded at a time. Every thread makes the same calls (f may use warp
// collectives); the N % 4 last tokens come last, one per thread of the lowest ids.
template <typename F>
__device__ __forceinline__ void for_each_quad(const View& v, F f) {
    const int tid = threadIdx.x;
    const float4* l4 = reinterpret_cast<const float4*>(v.logits);
    const bool pen = v.penalty != 1.0f;
#pragma unroll 1
    for (int r = 0; r < QUAD_ROUNDS; ++r) {
        float4 c[QUADS_IN_FLIGHT];
        unsigned w[QUADS_IN_FLIGHT];
#pragma unroll
        for (int u = 0; u < QUADS_IN_FLIGHT; ++u) {
            const int q = (r * QUADS_IN_FLIGHT + u) * SAMPLE_THREADS + tid;
            c[u] = q < QUADS ? l4[q] : make_float4(NEG_INF, NEG_INF, NEG_INF, NEG_INF);
            w[u] = pen && q < QUADS ? v.presence[q >> 3] : 0u;
        }
#pragma unroll
        for (int u = 0; u < QUADS_IN_FLIGHT; ++u) {
            const int q = (r * QUADS_IN_FLIGHT + u) * SAMPLE_THREADS + tid;
            const bool in = q < QUADS;
            const unsigned bits = w[u] >> ((4 * q) & 31);
            f(4 * q, in, v.fix(c[u].x, bits & 1u));
            f(4 * q + 1, in, v.fix(c[u].y, bits & 2u));
            f(4 * q + 2, in, v.fix(c[u].z, bits & 4u));
            f(4 * q + 3, in, v.fix(c[u].w, bits & 8u));
        }
    }
    if (N % 4 != 0) {
        const int i = QUADS * 4 + tid;
        const bool in = tid < N % 4;
        f(i, in, in ? v.value(i) : NEG_INF);
    }
}

// Calls f(i, x) for the tokens of this thread in the draw's order (i = tid, tid + 1024, ...; x: the
// penalized logit, -inf for i >= N), with STRIDED_IN_FLIGHT loads issued at a time. Every thread makes
// the same calls (f may use warp collectives).
template <typename F>
__device__ __forceinline__ void for_each_strided(const View& v, F f) {
    const int tid = threadIdx.x;
#pragma unroll 1
    for (int r0 = 0; r0 < ROUNDS; r0 += STRIDED_IN_FLIGHT) {
        float raw[STRIDED_IN_FLIGHT];
        unsigned w[STRIDED_IN_FLIGHT];
#pragma unroll
        for (int u = 0; u < STRIDED_IN_FLIGHT; ++u) {
            const int i = (r0 + u) * SAMPLE_THREADS + tid;
            raw[u] = i < N ? v.logits[i] : NEG_INF;
            w[u] = v.penalty != 1.0f && i < N ? v.presence[i >> 5] : 0u;
        }
#pragma unroll
        for (int u = 0; u < STRIDED_IN_FLIGHT; ++u) {
            const int i = (r0 + u) * SAMPLE_THREADS + tid;
            f(i, v.fix(raw[u], (w[u] >> (i & 31)) & 1u));
        }
    }
}

// Appends (key << 32 | i) to cand[] where `want` (the whole warp calls it together); *count counts
// every append, also those past CAND, which are dropped.
__device__ __forceinline__ void push(bool want, unsigned key, int i, u64* cand, int* count) {
    const unsigned b = __ballot_sync(FULL_MASK, want);
    if (b == 0) return;
    const int lane = threadIdx.x & 31, leader = __ffs(b) - 1;
    int base = 0;
    if (lane == leader) base = atomicAdd(count, __popc(b));
    base = __shfl_sync(FULL_MASK, base, leader);
    const int at = base + __popc(b & ((1u << lane) - 1u));
    if (want && at < CAND) cand[at] = ((u64)key << 32) | (unsigned)i;
}

// Bitonic sort, descending, of one value per thread (thread t gets the t-th largest).
__device__ __forceinline__ u64 sort_1024_desc(u64 a, u64* tmp) {
    const int tid = threadIdx.x;
#pragma unroll 1
    for (int k = 2; k <= SAMPLE_THREADS; k <<= 1) {
#pragma unroll 1
        for (int j = k >> 1; j > 0; j >>= 1) {
            u64 b;
            if (j >= 32) {
                __syncthreads();  // tmp may still be read
                tmp[tid] = a;
                __syncthreads();
                b = tmp[tid ^ j];
            } else {
                b = __shfl_xor_sync(FULL_MASK, a, j);
            }
            const bool take_max = ((tid & k) == 0) == ((tid & j) == 0);
            a = take_max ? (a > b ? a : b) : (a < b ? a : b);
        }
    }
    return a;
}

// Bitonic sort, descending, of a[0 .. s) in shared memory (s a power of two).
__device__ void sort_shared_desc(u64* a, int s) {
    __syncthreads();
#pragma unroll 1
    for (int k = 2; k <= s; k <<= 1) {
#pragma unroll 1
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int pair = threadIdx.x; pair < s / 2; pair += SAMPLE_THREADS) {
                const int lo = 2 * pair - (pair & (j - 1)), hi = lo + j;
                const u64 x = a[lo], y = a[hi];
                if ((x < y) == ((lo & k) == 0)) {
                    a[lo] = y;
                    a[hi] = x;
                }
            }
            __syncthreads();
        }
    }
}

// Sorts the n candidates cand[0 .. n) by key, largest first, in place: in registers for up to
// one per thread, else in shared memory padded with 0 (below every token) to a power of two.
// cand holds room for that padding; tmp is the register sort's exchange buffer.
__device__ __forceinline__ void sort_candidates_desc(u64* cand, int n, u64* tmp) {
    const int tid = threadIdx.x;
    if (n <= SAMPLE_THREADS) {
        const u64 c = sort_1024_desc(tid < n ? cand[tid] : 0ull, tmp);
        __syncthreads();
        cand[tid] = c;
    } else {
        int s = SAMPLE_THREADS;
        while (s < n) s <<= 1;
        for (int j = n + tid; j < s; j += SAMPLE_THREADS) cand[j] = 0;
        sort_shared_desc(cand, s);
    }
}

// ceil(top_p * total), within [1, total] (0 when total is 0).
__device__ __forceinline__ u64 top_p_target(float top_p, u64 total) {
    u64 target = (u64)ceil((double)top_p * (double)total);
    if (target < 1) target = 1;
    if (target > total) target = total;
    return target;
}

// Exclusive prefix sum over the block's threads (in thread order); `total` gets the sum of all.
__device__ __forceinline__ u64 block_exclusive_scan(u64 x, u64* scratch, u64& total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u64 incl = x;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 n = __shfl_up_sync(FULL_MASK, incl, o);
        if (lane >= o) incl += n;
    }
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 31) scratch[warp] = incl;
    __syncthreads();
    u64 before = 0, all = 0;
    for (int w = 0; w < SAMPLE_WARPS; ++w) {
        const u64 s = scratch[w];
        if (w < warp) before += s;
        all += s;
    }
    total = all;
    return before + incl - x;
}

// The lowest key k among tokens with key >= `lower` such that the weight of tokens with larger keys
// is below `target` (weight: 1 per token, or its mass). With target = top_k that is the k-th largest
// value; with target = ceil(top_p * kept mass) it is the smallest value top_p keeps. Needs
// 1 <= target <= total weight of the tokens >= lower. `slots`: one word per thread.
template <bool BY_MASS>
__device__ unsigned radix_select(const View& v, u64 target, unsigned lower, u64* hist, u64* slots, u64* scratch,
                                 unsigned* sel_bin, u64* sel_gt) {
    const int tid = threadIdx.x, lane = tid & 31;
    unsigned prefix = 0, pmask = 0;
#pragma unroll 1
    for (int pass = 0; pass < 3; ++pass) {
        const int shift = pass == 0 ? 21 : (pass == 1 ? 10 : 0);
        const unsigned dmask = pass == 2 ? 0x3ffu : 0x7ffu;
        for (int b = tid; b < RADIX_BINS; b += SAMPLE_THREADS) hist[b] = 0;
        __syncthreads();
        // Uniform trip count: whole warps reach __match_any_sync together.
        for (int r = 0; r < ROUNDS; ++r) {
            const int i = r * SAMPLE_THREADS + tid;
            const float x = i < N ? v.value(i) : NEG_INF;
            const unsigned k = key_of(x);
            const bool in = i < N && k >= lower && (k & pmask) == prefix;
            const unsigned bin = in ? (k >> shift) & dmask : 0xffffffffu;
            // One atomic per distinct bin in the warp (the first lane of the bin adds the group's).
            const unsigned peers = __match_any_sync(FULL_MASK, bin);
            if (BY_MASS) {
                slots[tid] = in ? v.mass(x) : 0;
                __syncwarp();
                if (in && __ffs(peers) - 1 == lane) {
                    u64 w = 0;
                    for (unsigned m = peers; m; m &= m - 1) w += slots[(tid & ~31) + __ffs(m) - 1];
                    if (w) atomicAdd(&hist[bin], w);
                }
                __syncwarp();  // slots are rewritten next round
            } else {
                if (in && __ffs(peers) - 1 == lane) atomicAdd(&hist[bin], (u64)__popc(peers));
            }
        }
        __syncthreads();
        // Bins 2t and 2t+1 belong to thread t. gt(b) = weight in bins above b; the bin sought is
        // the lowest b with gt(b) < target (gt falls as b rises; gt(b - 1) = gt(b) + h(b)).
        const u64 h0 = hist[2 * tid], h1 = hist[2 * tid + 1];
        u64 total;
        const u64 before = block_exclusive_scan(h0 + h1, scratch, total);
        const u64 gt1 = total - before - h0 - h1;
        const u64 gt0 = gt1 + h1;
        if (gt0 < target && (tid == 0 || gt0 + h0 >= target)) {
            *sel_bin = 2 * tid;
            *sel_gt = gt0;
        }
        if (gt1 < target && gt0 >= target) {
            *sel_bin = 2 * tid + 1;
            *sel_gt = gt1;
        }
        __syncthreads();
        const unsigned b = *sel_bin;
        target -= *sel_gt;
        prefix |= b << shift;
        pmask |= dmask << shift;
        __syncthreads();  // everyone has read sel_* and hist before the next pass rewrites them
    }
    return prefix;
}

// The bin of a token for top_p's mass histogram: its distance below the max in 1/64 of the
// temperature (bin 0: the max; the largest values take the lowest bins; 2047 collects the rest).
// Correctly rounded subtraction and multiplication are monotone, so the bin never rises with the
// value: equal values share a bin, and every token of a lower bin has a larger key.
__device__ __forceinline__ unsigned mass_bin(float x, float max, float scale) {
    if (!(x < max)) return 0;
    const float d = __fmul_rn(__fsub_rn(max, x), scale);
    return d < (float)(RADIX_BINS - 1) ? (unsigned)d : (unsigned)(RADIX_BINS - 1);
}

// top_p's threshold among the tokens with key >= lower: the key radix_select<true> finds with
// target ceil(top_p * their mass), in two passes. Pass 1 sums the masses and histograms them by
// mass_bin (tokens of mass 0 left out: they never hold the threshold); the bin where the running
// mass, from bin 0 up, reaches the target holds the threshold. Pass 2 sums each thread's mass in
// the bins below (kept whatever the threshold) and gathers the tokens of that bin, which are
// sorted by key to find the threshold exactly and add their kept masses. Where the bin holds more
// than CAND tokens (or no bin is found: an infinite max), radix_select decides, over the keys
// from the bin's lowest up when known. *filled: mine_s[] holds each thread's kept mass (min_p
// applied; 0: off); otherwise the caller sums it.
__device__ unsigned top_p_select(const View& v, float top_p, unsigned lower, float min_p, u64* cand, u64* mine_s,
                                 u64* scratch, unsigned* sel_bin, u64* sel_u64, unsigned* sel_min, int* cand_n,
                                 bool& filled) {
    const int tid = threadIdx.x, lane = tid & 31;
    u64* hist = cand;                // RADIX_BINS bins
    u64* slots = cand + RADIX_BINS;  // one word per thread
    const float scale = 64.0f / v.temperature;
    filled = false;
    for (int b = tid; b < RADIX_BINS; b += SAMPLE_THREADS) hist[b] = 0;
    __syncthreads();
    u64 z = 0;
    for_each_quad(v, [&](int, bool in, float x) {
        const u64 w = in && key_of(x) >= lower ? v.mass(x) : 0ull;
        z += w;
        const unsigned bin = w ? mass_bin(x, v.max, scale) : 0xffffffffu;
        // One atomic per distinct bin in the warp (the first lane of the bin adds the group's).
        const unsigned peers = __match_any_sync(FULL_MASK, bin);
        slots[tid] = w;
        __syncwarp();
        if (w && __ffs(peers) - 1 == lane) {
            u64 s = 0;
            for (unsigned m = peers; m; m &= m - 1) s += slots[(tid & ~31) + __ffs(m) - 1];
            atomicAdd(&hist[bin], s);
        }
        __syncwarp();  // slots are rewritten next call
    });
    __syncthreads();
    u64 total;
    block_exclusive_scan(z, scratch, total);
    const u64 target = top_p_target(top_p, total);
    // Bins 2t and 2t+1 belong to thread t; above(b) = weight in bins below b (larger values). The
    // bin sought has above(b) < target <= above(b) + h(b) (unique: above rises with b).
    const u64 h0 = hist[2 * tid], h1 = hist[2 * tid + 1];
    u64 all;
    const u64 before = block_exclusive_scan(h0 + h1, scratch, all);
    if (tid == 0) *sel_bin = 0xffffffffu;
    __syncthreads();
    if (before < target && before + h0 >= target) {
        *sel_bin = 2 * tid;
        *sel_u64 = before;
    } else if (before + h0 < target && before + h0 + h1 >= target) {
        *sel_bin = 2 * tid + 1;
        *sel_u64 = before + h0;
    }
    __syncthreads();
    const unsigned bsel = *sel_bin;
    const bool inf_max = __float_as_uint(v.max) == 0x7f800000u;
    if (bsel == 0xffffffffu || inf_max) {
        __syncthreads();  // every thread has read sel_bin and hist
        return radix_select<true>(v, target, lower, cand, mine_s, scratch, sel_bin, sel_u64);
    }
    const u64 rest = target - *sel_u64;  // in [1, h(bsel)]
    __syncthreads();                     // every thread has read hist and sel_*
    if (tid == 0) {
        *cand_n = 0;
        *sel_min = 0xffffffffu;
    }
    __syncthreads();
    // Thread-major pass (thread t: tokens t, t + 1024, ..., the order of the draw).
    u64 mine = 0;
    for_each_strided(v, [&](int i, float x) {
        const unsigned k = key_of(x);
        const unsigned bin = i < N && k >= lower ? mass_bin(x, v.max, scale) : 0xffffffffu;
        const u64 w = bin <= bsel ? v.mass(x) : 0ull;
        if (bin < bsel && (min_p <= 0.0f || v.relative(x) >= min_p)) mine += w;
        const bool want = bin == bsel && w != 0ull;
        if (want) atomicMin(sel_min, k);
        push(want, k, i, cand, cand_n);
    });
    __syncthreads();
    const int n = *cand_n;
    if (n > CAND) {
        // Too many to sort: the threshold is one of the bin's keys, so search from its lowest.
        const unsigned from = *sel_min;
        __syncthreads();  // every thread has read cand_n and sel_min
        return radix_select<true>(v, target, from, cand, mine_s, scratch, sel_bin, sel_u64);
    }
    // Sort the bin's tokens by key, largest first.
    sort_candidates_desc(cand, n, mine_s);
    __syncthreads();
    // The first candidate where the running mass reaches what is left of the target; the tokens
    // of lower bins and larger keys in this bin weigh less than the target, so it is the threshold.
    unsigned ck[CAND_PER_THREAD];
    u64 w[CAND_PER_THREAD], m = 0;
#pragma unroll
    for (int e = 0; e < CAND_PER_THREAD; ++e) {
        const int j = CAND_PER_THREAD * tid + e;
        ck[e] = j < n ? (unsigned)(cand[j] >> 32) : 0u;
        w[e] = j < n ? v.mass(float_of_key(ck[e])) : 0ull;
        m += w[e];
    }
    if (tid == 0) *sel_bin = 0;  // ordered before the writes below by the scan's barriers
    u64 sum;
    u64 run = block_exclusive_scan(m, scratch, sum);
#pragma unroll
    for (int e = 0; e < CAND_PER_THREAD; ++e) {
        if (run < rest && run + w[e] >= rest) *sel_bin = ck[e];
        run += w[e];
    }
    __syncthreads();
    const unsigned t = *sel_bin;
    if (t == 0u) {  // cannot happen: the bin's tokens weigh h(bsel) >= rest
        __syncthreads();
        return radix_select<true>(v, target, lower, cand, mine_s, scratch, sel_bin, sel_u64);
    }
    // Each thread's kept mass: the lower bins' (above), and the bin's tokens with keys >= t, to
    // their owners in the draw order.
    mine_s[tid] = mine;
    __syncthreads();
#pragma unroll
    for (int e = 0; e < CAND_PER_THREAD; ++e) {
        const int j = CAND_PER_THREAD * tid + e;
        if (j < n && ck[e] >= t && w[e] && (min_p <= 0.0f || v.relative(float_of_key(ck[e])) >= min_p))
            atomicAdd(&mine_s[(unsigned)cand[j] % SAMPLE_THREADS], w[e]);
    }
    __syncthreads();
    filled = true;
    return t;
}

// The thread t whose [exclusive prefix, + x) range holds u (x > 0 there); -1 when none (u >= total).
__device__ __forceinline__ int find_range(u64 x, u64 u, u64* scratch, int* sel, u64* sel_before) {
    u64 total;
    const u64 before = block_exclusive_scan(x, scratch, total);
    if (threadIdx.x == 0) *sel = -1;
    __syncthreads();
    if (x > 0 && before <= u && u < before + x) {
        *sel = threadIdx.x;
        *sel_before = before;
    }
    __syncthreads();
    return *sel;
}

// Sum over the block (every thread gets it).
__device__ __forceinline__ u64 block_sum(u64 x, u64* scratch) {
    u64 total;
    block_exclusive_scan(x, scratch, total);
    return total;
}

// Each thread's kept mass over its tokens tid, tid + 1024, ... (key >= lower, and min_p), reading
// STRIDED_IN_FLIGHT logits at a time.
__device__ __forceinline__ u64 kept_mass_strided(const View& v, unsigned lower, float min_p, float cut) {
    u64 mine = 0;
    for_each_strided(v, [&](int, float x) {
        if (key_of(x) >= lower && (min_p <= 0.0f || v.relative(x) >= min_p)) mine += v.mass_or_zero(x, cut);
    });
    return mine;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample(const float* __restrict__ logits, const SampleParams* __restrict__ params, unsigned* presence,
           int* __restrict__ step) {
    __shared__ u64 cand[CAND];  // candidates (key << 32 | index); the radix histogram
    __shared__ u64 mine_s[SAMPLE_THREADS];
    __shared__ u64 scratch[SAMPLE_WARPS];
    __shared__ float best_v[SAMPLE_WARPS];
    __shared__ int best_i[SAMPLE_WARPS];
    __shared__ unsigned sel_bin;
    __shared__ unsigned sel_min;
    __shared__ u64 sel_u64;
    __shared__ int sel_int;
    __shared__ int cand_n;
    __shared__ int result;

    pdl_wait();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const SampleParams p = *params;
    const int pos = step[STEP_POS];
    View v{logits, presence, p.repetition_penalty, 0.0f, p.temperature};

    // Max of the penalized logits, and its lowest index (the greedy answer). A thread sees its
    // tokens in increasing order, so the first of equal values stays; NaN (-inf) never passes.
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for_each_quad(v, [&](int i, bool, float x) {
        if (x > bv) {
            bv = x;
            bi = i;
        }
    });
    const unsigned my_key = key_of(bv);  // a token of this thread (or -inf for a thread with none)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float v2 = __shfl_xor_sync(FULL_MASK, bv, o);
        const int i2 = __shfl_xor_sync(FULL_MASK, bi, o);
        if (v2 > bv || (v2 == bv && i2 < bi)) {
            bv = v2;
            bi = i2;
        }
    }
    if (lane == 0) {
        best_v[warp] = bv;
        best_i[warp] = bi;
    }
    __syncthreads();
    bv = best_v[0];
    bi = best_i[0];
    for (int w = 1; w < SAMPLE_WARPS; ++w) {
        const float v2 = best_v[w];
        const int i2 = best_i[w];
        if (v2 > bv || (v2 == bv && i2 < bi)) {
            bv = v2;
            bi = i2;
        }
    }

    int token;
    if (!p.do_sample || !(bv > NEG_INF)) {
        token = bi == 0x7fffffff ? 0 : bi;
    } else {
        v.max = bv;
        const float cut = -29.9f * p.temperature;
        const bool by_k = p.top_k > 0 && p.top_k < N, by_p = p.top_p < 1.0f, min_p = p.min_p > 0.0f;
        unsigned lower = 0;
        bool done = false;  // mine_s[] holds each thread's kept mass (lower is final)
        if (by_k || by_p) {
            // The per-thread maxima, largest first: at least j tokens have keys >= the j-th.
            const u64 m = sort_1024_desc(((u64)my_key << 32) | (unsigned)tid, mine_s);
            __syncthreads();
            mine_s[tid] = m;
            if (tid == 0) cand_n = 0;
            __syncthreads();
            int n = -1;        // candidates: every token with key >= the bound, when n <= CAND
            u64 target_p = 0;  // top_p's target without top_k (from every token's mass)
            if (by_k && p.top_k <= SAMPLE_THREADS) {
                const unsigned bound = (unsigned)(mine_s[p.top_k - 1] >> 32);
                for_each_quad(v, [&](int i, bool in, float x) {
                    const unsigned k = key_of(x);
                    push(in && k >= bound, k, i, cand, &cand_n);
                });
                __syncthreads();
                n = cand_n;
                if (n < p.top_k) n = -1;  // cannot happen: the bound's own k tokens are in
            } else if (!by_k) {
                const unsigned bound_a = (unsigned)(mine_s[255] >> 32);
                const unsigned bound_b = (unsigned)(mine_s[SAMPLE_THREADS - 1] >> 32);
                u64 z = 0, wa = 0, wb = 0;
                unsigned nb = 0;
                for_each_quad(v, [&](int i, bool in, float x) {
                    const unsigned k = key_of(x);
                    const u64 w = v.mass_or_zero(x, cut);  // 0 for padding (-inf)
                    z += w;
                    if (in && k >= bound_b) {
                        wb += w;
                        ++nb;
                        if (k >= bound_a) wa += w;
                    }
                    push(in && k >= bound_a, k, i, cand, &cand_n);
                });
                z = block_sum(z, scratch);
                wa = block_sum(wa, scratch);
                wb = block_sum(wb, scratch);
                const u64 count_b = block_sum(nb, scratch);
                target_p = top_p_target(p.top_p, z);
                n = cand_n;
                if (wa < target_p || n > CAND) {
                    n = -1;
                    if (wb >= target_p && count_b <= CAND) {
                        __syncthreads();  // every thread has read cand_n
                        if (tid == 0) cand_n = 0;
                        __syncthreads();
                        for_each_quad(v, [&](int i, bool in, float x) {
                            const unsigned k = key_of(x);
                            push(in && k >= bound_b, k, i, cand, &cand_n);
                        });
                        __syncthreads();
                        n = cand_n;
                    }
                }
            }
            if (n >= 1 && n <= CAND) {
                done = true;
                // Sort the candidates by key, largest first.
                sort_candidates_desc(cand, n, mine_s);
                __syncthreads();
                // Thread t looks at sorted candidates CAND_PER_THREAD * t + e.
                unsigned ck[CAND_PER_THREAD];
#pragma unroll
                for (int e = 0; e < CAND_PER_THREAD; ++e) {
                    const int j = CAND_PER_THREAD * tid + e;
                    ck[e] = j < n ? (unsigned)(cand[j] >> 32) : 0u;
                }
                if (by_k) lower = (unsigned)(cand[p.top_k - 1] >> 32);  // the k-th largest key
                if (by_p) {
                    // The first candidate where the running mass (largest keys first) reaches
                    // the target; its larger keys weigh less. Candidates hold every token with a
                    // larger key, so this is top_p's threshold over all tokens.
                    u64 w[CAND_PER_THREAD], mine = 0;
#pragma unroll
                    for (int e = 0; e < CAND_PER_THREAD; ++e) {
                        w[e] = ck[e] >= lower && ck[e] != 0u ? v.mass(float_of_key(ck[e])) : 0ull;
                        mine += w[e];
                    }
                    if (tid == 0) sel_bin = lower;  // ordered before the writes below by the scan's barriers
                    u64 total;
                    u64 run = block_exclusive_scan(mine, scratch, total);
                    const u64 target = by_k ? top_p_target(p.top_p, total) : target_p;
#pragma unroll
                    for (int e = 0; e < CAND_PER_THREAD; ++e) {
                        if (run < target && run + w[e] >= target) sel_bin = ck[e];
                        run += w[e];
                    }
                    __syncthreads();
                    lower = sel_bin > lower ? sel_bin : lower;
                }
                // Each thread's kept mass, to the token's owner in the draw order.
                mine_s[tid] = 0;
                __syncthreads();
#pragma unroll
                for (int e = 0; e < CAND_PER_THREAD; ++e) {
                    const int j = CAND_PER_THREAD * tid + e;
                    if (j < n && ck[e] >= lower) {
                        const float x = float_of_key(ck[e]);
                        if (!min_p || v.relative(x) >= p.min_p) {
                            const u64 w = v.mass(x);
                            if (w) atomicAdd(&mine_s[(unsigned)cand[j] % SAMPLE_THREADS], w);
                        }
                    }
                }
                __syncthreads();
            }
            __syncthreads();  // cand is the radix histogram below
        }
        if (!done) {
            if (by_k) lower = radix_select<false>(v, (u64)p.top_k, 0, cand, mine_s, scratch, &sel_bin, &sel_u64);
            if (by_p) {
                // Kept: tokens whose more likely tokens hold less than top_p of the mass (the max always).
                const unsigned t = top_p_select(v, p.top_p, lower, min_p ? p.min_p : 0.0f, cand, mine_s, scratch,
                                                &sel_bin, &sel_u64, &sel_min, &cand_n, done);
                lower = t > lower ? t : lower;
            }
        }
        // This thread's kept mass, over its tokens tid, tid + 1024, ... (the order of the draw).
        const u64 mine = done ? mine_s[tid] : kept_mass_strided(v, lower, min_p ? p.min_p : 0.0f, cut);
        u64 total;
        block_exclusive_scan(mine, scratch, total);
        const u64 seed = ((u64)p.seed_hi << 32) | p.seed_lo;
        const u64 r = mix64(mix64(seed) ^ (0xd1b54a32d192ed03ull * (u64)(unsigned)pos));
        const u64 u = __umul64hi(r, total);  // uniform in [0, total)
        const int owner = find_range(mine, u, scratch, &sel_int, &sel_u64);
        if (owner < 0) {
            token = bi;  // no mass (cannot happen: the max has mass 2^40); stay greedy
        } else {
            const u64 u2 = u - sel_u64;
            const int i = owner + tid * SAMPLE_THREADS;
            u64 w = 0;
            if (tid < ROUNDS && i < N) {
                const float x = v.value(i);
                if (key_of(x) >= lower && (!min_p || v.relative(x) >= p.min_p)) w = v.mass(x);
            }
            __syncthreads();  // sel_int is rewritten below
            const int round = find_range(w, u2, scratch, &sel_int, &sel_u64);
            token = round < 0 ? bi : owner + round * SAMPLE_THREADS;
        }
    }
    if (tid == 0) result = token;
    __syncthreads();  // every thread has read step[] above
    if (tid == 0) {
        token = result;
        step[STEP_TOKEN] = token;
        step[STEP_POS] += 1;
        presence[token >> 5] |= 1u << (token & 31);
    }
}
