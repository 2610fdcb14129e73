// W4A16 GEMV on tensor cores over the layout of awq_repack.cu.
//
// Exactness: the weights enter the mma as (q - z) in bf16, exact for 4-bit values. x enters as two
// bf16 columns, hi = bf16(x) and lo = bf16(x - hi), so the product carries ~16 bits of x and bf16's
// 8-bit exponent means no overflow at any activation size; the mma accumulates in fp32 and group
// scales are applied in fp32. The other 6 columns of the n8 mma are zero: the tensor cores have
// throughput to spare, the bottleneck is streaming the weights.
//
// A block owns TPB consecutive 16-row tiles; its KSPLIT warps split K. x (optionally RMS-normalized,
// fusing the preceding RMSNorm) is staged once per block in shared memory as ready-made B
// fragments. Weights stream through registers in chunks of CH 64-input blocks, double-buffered.
// Defines: K, N, GROUP (multiple of 64), MODE, NORM, KSPLIT, TPB, CH.
//   MODE 0: y[n] = W[n] . x      MODE 1: y[n] += W[n] . x (residual add)
//   MODE 2: y[n] = silu(W[gate n] . x) * (W[up n] . x), tiles interleaved gate, up (TPB == 2)
// NORM 1: x is replaced by x * rsqrt(mean(x^2) + eps) * norm_weight.

#define KW (K / KSPLIT)
#define NKB (KW / 64)
#define NCH (NKB / CH)
#define NG (KW / GROUP)
#define KB_PER_G (GROUP / 64)
#define STEPS (K / 16)

__device__ __forceinline__ unsigned bf16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// The two B registers of an mma step for a lane: inputs 4t..4t+3 (see the column permutation in
// awq_repack.cu), as their bf16 hi parts or as the lo remainders.
__device__ __forceinline__ uint2 b_fragment(float4 v, bool lo) {
    unsigned a = bf16x2(v.x, v.y), b = bf16x2(v.z, v.w);
    if (lo) {
        a = bf16x2(v.x - __uint_as_float(a << 16), v.y - __uint_as_float(a & 0xffff0000u));
        b = bf16x2(v.z - __uint_as_float(b << 16), v.w - __uint_as_float(b & 0xffff0000u));
    }
    return make_uint2(a, b);
}

// B fragments of the 4 mma steps of 64-input block kb of this warp's slice; only lanes 0-7 carry
// data (columns 0 and 1 of the n8 tile), the rest feed zeros.
__device__ __forceinline__ void load_b(uint2* b, const uint2* xb, int kb, int lane) {
#pragma unroll
    for (int j = 0; j < 4; j++) b[j] = lane < 8 ? xb[(kb * 4 + j) * 8] : make_uint2(0u, 0u);
}

__device__ __forceinline__ uint4 load_stream(const uint4* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// Fragment register i of one mma step: values 128 + q (bf16 magic) minus (128 + z): exact q - z.
__device__ __forceinline__ unsigned dequant(unsigned word, int i, unsigned neg_z) {
    unsigned v;
    asm("lop3.b32 %0, %1, 0x000F000F, 0x43004300, 0xEA;" : "=r"(v) : "r"(word >> (4 * i)));
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(v) : "r"(v), "r"(0x3F803F80u), "r"(neg_z));
    return v;
}

__device__ __forceinline__ void mma(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, uint2 b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b.x), "r"(b.y));
}

extern "C" __global__ void __launch_bounds__(KSPLIT * 32) awq_gemv(const float* __restrict__ x,
                                                                   const f16_t* __restrict__ norm_weight,
                                                                   float eps,
                                                                   const uint4* __restrict__ w,
                                                                   const f16_t* __restrict__ s,
                                                                   const unsigned long long* __restrict__ z,
                                                                   float* __restrict__ y) {
    extern __shared__ uint2 xs[];  // [STEPS][8]: B fragments of lanes 0-3 (hi) and 4-7 (lo)
    __shared__ float red[KSPLIT][TPB][16];
    __shared__ float scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2;
    const long long tile0 = (long long)blockIdx.x * TPB;

    // Group metadata of this warp's K slice: -(128 + z) as bf16x2 and the fp32 scale, rows g, g+8.
    unsigned neg_z[TPB][NG][2];
    float scale[TPB][NG][2];
#pragma unroll
    for (int tp = 0; tp < TPB; tp++) {
#pragma unroll
        for (int gi = 0; gi < NG; gi++) {
            const long long at = (tile0 + tp) * (K / GROUP) + warp * NG + gi;
            const unsigned long long zw = z[at];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                neg_z[tp][gi][h] = (0xC300u | (unsigned)((zw >> (4 * (g + 8 * h))) & 15u)) * 0x10001u;
                scale[tp][gi][h] = f16_to_f32(s[at * 16 + g + 8 * h]);
            }
        }
    }

    const uint4* wp = w + (tile0 * (K / 64) + warp * NKB) * 32 + lane;
    uint4 cur[TPB][CH], nxt[TPB][CH];
#pragma unroll
    for (int tp = 0; tp < TPB; tp++)
#pragma unroll
        for (int kb = 0; kb < CH; kb++) cur[tp][kb] = load_stream(wp + (tp * (K / 64) + kb) * 32);

    // Stage x as B fragments while the first weights are in flight; x comes from the previous
    // kernel, everything above only read weights.
    pdl_wait();
    const float4* x4 = reinterpret_cast<const float4*>(x);
#if NORM
    float ss = 0.0f;
    for (int i = threadIdx.x; i < K / 4; i += blockDim.x) {
        const float4 v = x4[i];
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / K + eps);
#endif
    for (int i = threadIdx.x; i < STEPS * 8; i += blockDim.x) {
        const int k4 = 4 * (i >> 3) + (i & 3);  // x[4 k4 .. 4 k4 + 3]
        float4 v = x4[k4];
#if NORM
        const uint2 nw = reinterpret_cast<const uint2*>(norm_weight)[k4];
        v.x *= inv * f16_to_f32(nw.x & 0xffff);
        v.y *= inv * f16_to_f32(nw.x >> 16);
        v.z *= inv * f16_to_f32(nw.y & 0xffff);
        v.w *= inv * f16_to_f32(nw.y >> 16);
#endif
        xs[i] = b_fragment(v, (i & 4) != 0);
    }
    __syncthreads();

    float acc[TPB][2];
    float c[TPB][4];
#pragma unroll
    for (int tp = 0; tp < TPB; tp++) acc[tp][0] = acc[tp][1] = 0.0f;
    const uint2* xb = xs + warp * NKB * 4 * 8 + (lane & 7);
    uint2 b[4];
    load_b(b, xb, 0, lane);

#pragma unroll
    for (int ch = 0; ch < NCH; ch++) {
        if (ch + 1 < NCH) {
#pragma unroll
            for (int tp = 0; tp < TPB; tp++)
#pragma unroll
                for (int kb = 0; kb < CH; kb++)
                    nxt[tp][kb] = load_stream(wp + (tp * (K / 64) + (ch + 1) * CH + kb) * 32);
        }
#pragma unroll
        for (int kb = 0; kb < CH; kb++) {
            const int gkb = ch * CH + kb, gi = gkb / KB_PER_G;
            uint2 b_next[4];  // shared-memory loads one 64-input block ahead
            if (gkb + 1 < NKB) load_b(b_next, xb, gkb + 1, lane);
#pragma unroll
            for (int tp = 0; tp < TPB; tp++) {
                if (gkb % KB_PER_G == 0) c[tp][0] = c[tp][1] = c[tp][2] = c[tp][3] = 0.0f;
                const unsigned words[4] = {cur[tp][kb].x, cur[tp][kb].y, cur[tp][kb].z, cur[tp][kb].w};
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const unsigned* nz = neg_z[tp][gi];
                    mma(c[tp], dequant(words[j], 0, nz[0]), dequant(words[j], 1, nz[1]),
                        dequant(words[j], 2, nz[0]), dequant(words[j], 3, nz[1]), b[j]);
                }
                if (gkb % KB_PER_G == KB_PER_G - 1) {
                    acc[tp][0] += scale[tp][gi][0] * (c[tp][0] + c[tp][1]);
                    acc[tp][1] += scale[tp][gi][1] * (c[tp][2] + c[tp][3]);
                }
            }
            if (gkb + 1 < NKB) {
#pragma unroll
                for (int j = 0; j < 4; j++) b[j] = b_next[j];
            }
        }
        if (ch + 1 < NCH) {
#pragma unroll
            for (int tp = 0; tp < TPB; tp++)
#pragma unroll
                for (int kb = 0; kb < CH; kb++) cur[tp][kb] = nxt[tp][kb];
        }
    }

    pdl_trigger();
    // Columns 0 (hi) and 1 (lo) of the mma output live in lanes with t == 0.
    if ((lane & 3) == 0) {
#pragma unroll
        for (int tp = 0; tp < TPB; tp++) {
            red[warp][tp][g] = acc[tp][0];
            red[warp][tp][g + 8] = acc[tp][1];
        }
    }
    __syncthreads();
#if MODE == 2
    if (threadIdx.x < 16) {
        const int r = threadIdx.x;
        float gate = 0.0f, up = 0.0f;
#pragma unroll
        for (int k = 0; k < KSPLIT; k++) {
            gate += red[k][0][r];
            up += red[k][1][r];
        }
        y[blockIdx.x * 16 + r] = gate / (1.0f + expf(-gate)) * up;
    }
#else
    if (threadIdx.x < TPB * 16) {
        const int tp = threadIdx.x >> 4, r = threadIdx.x & 15;
        float v = 0.0f;
#pragma unroll
        for (int k = 0; k < KSPLIT; k++) v += red[k][tp][r];
        const long long row = (tile0 + tp) * 16 + r;
#if MODE == 1
        y[row] += v;
#else
        y[row] = v;
#endif
    }
#endif
}
