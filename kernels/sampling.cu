// Token sampling on the GPU with transformers' logits processors, one block of 1024 threads.
//
// Order (as transformers applies them): repetition penalty (tokens flagged in `presence`: a
// positive logit is divided by the penalty, a negative one multiplied), then, when sampling,
// temperature, top_k, top_p, min_p, and a draw from the softmax of what is left. Greedy mode
// (do_sample == 0) takes the argmax after the penalty, lowest index on ties. NaN logits never win.
//
// Every truncation keeps the tokens whose (penalized) logit is at least a threshold, so the kept
// set is "key >= threshold" for a monotone integer key of the float. Thresholds come from a radix
// select over the keys (three histogram passes of 11, 11 and 10 bits): top_k by count, top_p by
// probability mass. Masses are exp((x - max) / temperature) in fixed point (2^40 = the largest), so
// every sum is an exact integer: results do not depend on the order of atomics, and the same seed
// always gives the same token. min_p keeps exp((x - max) / temperature) >= min_p.
//
// The draw is one 64-bit counter-based random number, a hash of (seed, position): u in [0, Z) where
// Z is the kept mass; the token is where the running mass (in a fixed order) passes u. Nothing
// depends on how often the kernel ran before, so CUDA-graph replays reproduce exactly.
//
// Parameters live in device memory (written before generation), so one captured launch serves
// every step. Like argmax, the kernel writes the token into step[0] and advances step[1]; it also
// flags the token in `presence` for the repetition penalty of later steps. Defines: N.

#define SAMPLE_THREADS 1024
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
#define ROUNDS ((N + SAMPLE_THREADS - 1) / SAMPLE_THREADS)
#define RADIX_BINS 2048
#define NEG_INF (-__int_as_float(0x7f800000))
#define MASS_ONE 1099511627776.0f  // 2^40
#define FULL_MASK 0xffffffffu

static_assert(ROUNDS <= SAMPLE_THREADS, "the final gather gives each round one thread");
static_assert(RADIX_BINS == 2 * SAMPLE_THREADS, "each thread owns two histogram bins");

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
__device__ __forceinline__ unsigned key_of(float x) {
    const unsigned b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// What the processors see of the logits.
struct View {
    const float* logits;
    const unsigned* presence;
    float penalty;
    float max;
    float temperature;

    // The logit after the repetition penalty; NaN becomes -inf.
    __device__ __forceinline__ float value(int i) const {
        float x = logits[i];
        if (x != x) return NEG_INF;
        if (penalty != 1.0f && ((presence[i >> 5] >> (i & 31)) & 1u)) x = x > 0.0f ? x / penalty : x * penalty;
        return x;
    }

    // exp((x - max) / temperature): the probability relative to the most likely token.
    __device__ __forceinline__ float relative(float x) const { return expf((x - max) / temperature); }

    __device__ __forceinline__ u64 mass(float x) const { return __float2ull_rn(relative(x) * MASS_ONE); }
};

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
// 1 <= target <= total weight of the tokens >= lower.
template <bool BY_MASS>
__device__ unsigned radix_select(const View& v, u64 target, unsigned lower, u64* hist, u64* scratch,
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
            if (BY_MASS) {
                const u64 w = in ? v.mass(x) : 0;
                if (w) atomicAdd(&hist[bin], w);
            } else {
                // One atomic per distinct bin in the warp.
                const unsigned peers = __match_any_sync(FULL_MASK, bin);
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

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample(const float* __restrict__ logits, const SampleParams* __restrict__ params, unsigned* presence,
           int* __restrict__ step) {
    __shared__ u64 hist[RADIX_BINS];
    __shared__ u64 scratch[SAMPLE_WARPS];
    __shared__ float best_v[SAMPLE_WARPS];
    __shared__ int best_i[SAMPLE_WARPS];
    __shared__ unsigned sel_bin;
    __shared__ u64 sel_u64;
    __shared__ int sel_int;
    __shared__ int result;

    pdl_wait();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const SampleParams p = *params;
    const int pos = step[STEP_POS];
    View v{logits, presence, p.repetition_penalty, 0.0f, p.temperature};

    // Max of the penalized logits, and its lowest index (the greedy answer).
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = tid; i < N; i += SAMPLE_THREADS) {
        const float x = v.value(i);
        if (x > bv || (x == bv && i < bi)) {
            bv = x;
            bi = i;
        }
    }
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
        unsigned lower = 0;
        if (p.top_k > 0 && p.top_k < N) {
            lower = radix_select<false>(v, (u64)p.top_k, 0, hist, scratch, &sel_bin, &sel_u64);
        }
        if (p.top_p < 1.0f) {
            u64 z = 0;
            for (int i = tid; i < N; i += SAMPLE_THREADS) {
                const float x = v.value(i);
                if (key_of(x) >= lower) z += v.mass(x);
            }
            u64 total;
            block_exclusive_scan(z, scratch, total);
            // Kept: tokens whose more likely tokens hold less than top_p of the mass (the max always).
            u64 target = (u64)ceil((double)p.top_p * (double)total);
            if (target < 1) target = 1;
            if (target > total) target = total;
            const unsigned t = radix_select<true>(v, target, lower, hist, scratch, &sel_bin, &sel_u64);
            lower = t > lower ? t : lower;
        }
        // This thread's kept mass, over its tokens tid, tid + 1024, ... (the order of the draw).
        const bool min_p = p.min_p > 0.0f;
        u64 mine = 0;
        for (int i = tid; i < N; i += SAMPLE_THREADS) {
            const float x = v.value(i);
            if (key_of(x) >= lower && (!min_p || v.relative(x) >= p.min_p)) mine += v.mass(x);
        }
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
