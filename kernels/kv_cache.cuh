// KV-cache storage, shared by the kernels that write and read it. Rows are head vectors of
// HEAD_DIM values. Defines: KV_Q8 (0: fp16 values; 1: int8 values with one fp16 scale, absmax/127,
// per Q8_BLOCK consecutive values of a row), Q8_BLOCK.

#if KV_Q8
typedef signed char kv_t;
#else
typedef f16_t kv_t;
#endif
#define Q8_PER_ROW (HEAD_DIM / Q8_BLOCK)

// Stores element i of a head vector at `row`. Called by all HEAD_DIM threads of the block
// together (it synchronizes); `wmax` is shared scratch of HEAD_DIM / 32 floats.
__device__ __forceinline__ void kv_store(kv_t* cache, f16_t* scales, long long row, int i, float x, float* wmax) {
#if KV_Q8
    const float m = warp_max(fabsf(x));
    if ((i & 31) == 0) wmax[i >> 5] = m;
    __syncthreads();
    float amax = 0.0f;
    const int w0 = (i / Q8_BLOCK) * (Q8_BLOCK / 32);
#pragma unroll
    for (int w = 0; w < Q8_BLOCK / 32; w++) amax = fmaxf(amax, wmax[w0 + w]);
    const f16_t scale_h = f32_to_f16(fminf(amax / 127.0f, 65504.0f));
    const float scale = f16_to_f32(scale_h);
    const int q = scale > 0.0f ? max(-127, min(127, __float2int_rn(x / scale))) : 0;
    cache[row * HEAD_DIM + i] = (signed char)q;
    if (i % Q8_BLOCK == 0) scales[row * Q8_PER_ROW + i / Q8_BLOCK] = scale_h;
#else
    cache[row * HEAD_DIM + i] = f32_to_f16(x);
#endif
}

// N consecutive values of a row from dim d0 (d0 and N within one Q8 block), in two phases so a
// kernel can issue many loads before it needs any of them: kv_fetch issues the loads,
// kv_decode_unscaled and kv_scale turn the words into floats.
template <int N>
struct KvRun {
    static constexpr int BYTES = N * (int)sizeof(kv_t);
    unsigned w[BYTES >= 4 ? BYTES / 4 : 1];
    f16_t scale;
};

template <int N>
__device__ __forceinline__ KvRun<N> kv_fetch(const kv_t* cache, const f16_t* scales, long long row, int d0) {
    KvRun<N> r;
    const kv_t* p = cache + row * HEAD_DIM + d0;
    if (KvRun<N>::BYTES % 16 == 0) {
#pragma unroll
        for (int e = 0; e < KvRun<N>::BYTES / 16; e++) {
            const uint4 v = reinterpret_cast<const uint4*>(p)[e];
            r.w[4 * e] = v.x, r.w[4 * e + 1] = v.y, r.w[4 * e + 2] = v.z, r.w[4 * e + 3] = v.w;
        }
    } else if (KvRun<N>::BYTES >= 4) {
#pragma unroll
        for (int e = 0; e < KvRun<N>::BYTES / 4; e++) r.w[e] = reinterpret_cast<const unsigned*>(p)[e];
    } else {
        r.w[0] = *reinterpret_cast<const unsigned short*>(p);
    }
#if KV_Q8
    r.scale = scales[row * Q8_PER_ROW + d0 / Q8_BLOCK];
#endif
    return r;
}

// The values of a run without the int8 scale (apply kv_scale to the results): int8 converts
// through the float magic 2^23 + 128 + q (one byte permute and one add, full rate) instead of the
// quarter-rate integer-to-float conversion.
template <int N>
__device__ __forceinline__ void kv_decode_unscaled(const KvRun<N>& r, float* out) {
#if KV_Q8
#pragma unroll
    for (int e = 0; e < N; e++) {
        const unsigned biased = r.w[e / 4] ^ 0x80808080u;  // signed byte -> 128 + q
        out[e] = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7540 + (e % 4))) - 8388736.0f;
    }
#else
#pragma unroll
    for (int e = 0; e < N; e++) out[e] = f16_to_f32((f16_t)(r.w[e / 2] >> (16 * (e % 2))));
#endif
}

template <int N>
__device__ __forceinline__ float kv_scale(const KvRun<N>& r) {
#if KV_Q8
    return f16_to_f32(r.scale);
#else
    return 1.0f;
#endif
}
