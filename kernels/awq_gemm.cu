// W4A16 GEMM for prompt processing: Y[m][n] (op)= sum_k X[m][k] W[n][k] for M tokens at once, over
// the awq_repack.cu weight layout that the decode GEMV also reads (weight rows are the mma's A rows,
// tokens its B columns).
//
// Precision: X arrives as fp16 rows scaled by a power of two each (rows_f16.cu), so no activation
// overflows fp16 and the row factor is re-applied exactly to the fp32 result. Weights dequantize in
// registers to fp16 as (q - z) (exact) times the group's fp16 scale (one rounding, 2^-11 relative);
// the mma accumulates in fp32. (Keeping (q - z) exact and scaling each group's fp32 sums instead
// doubles the accumulator registers and measured 28% slower on an H100.)
//
// A block computes BR = 128 weight rows (8 tiles) x BT = 128 tokens with 8 warps, 4 along rows x 2
// along tokens; each warp owns 2 tiles x 64 tokens (2 x 8 m16n8 accumulators). Weight fragments
// (4 KiB per 64 inputs) and the fp16 token tile (16 KiB per 64 inputs) stream into shared memory
// through a STAGES-deep cp.async pipeline; two blocks per SM (<= 128 registers a thread) overlap one
// block's loads and epilogue with the other's mma.
// Few tokens leave few blocks, so the host may also split K over gridDim.z (whole groups per split):
// each split then writes its raw sums to `partial` [splits][M][ROWS] and awq_gemm_reduce adds them
// in a fixed order and applies the epilogue (deterministic, unlike atomics).
// Defines: K, N (outputs; MODE 2 reads 2N weight rows), GROUP (multiple of 64), MODE.
//   MODE 0: y[m][n] = ...   MODE 1: y[m][n] += ... (residual add)
//   MODE 2: y[m][n] = silu(gate) * up, weight tiles interleaved gate, up (awq_linear.rs Interleave)

#define ROWS (MODE == 2 ? 2 * N : N)
#define TILES (ROWS / 16)
#define NKB (K / 64)
#define KB_PER_G (GROUP / 64)
#define BT 128       // tokens per block
#define WT (BT / 2)  // tokens per warp
#define NT (WT / 8)  // n8 tiles per warp
#define STAGES 3
#define XP 80  // token-row pitch in halves: 64 inputs + 16 pad, so the B loads of a warp hit distinct banks
#define W_STAGE (8 * 32)        // uint4 per stage: 8 tiles x 32 lanes
#define X_STAGE (BT * XP / 8)   // uint4 per stage

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    unsigned dst;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(dst) : "l"(smem));
    const int bytes = valid ? 16 : 0;  // 0: zero-fill, nothing read
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }

template <int N_PENDING>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N_PENDING));
}

// Fragment register i of one mma step, dequantized to fp16x2: 1024 + q by the fp16 magic, minus
// (1024 + z) exactly, times the scale.
__device__ __forceinline__ unsigned dequant_f16(unsigned word, int i, unsigned neg_z, unsigned s2) {
    unsigned v;
    asm("lop3.b32 %0, %1, 0x000F000F, 0x64006400, 0xEA;" : "=r"(v) : "r"(word >> (4 * i)));
    asm("add.rn.f16x2 %0, %1, %2;" : "=r"(v) : "r"(v), "r"(neg_z));
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(v) : "r"(v), "r"(s2));
    return v;
}

__device__ __forceinline__ void mma_f16(float* c, const unsigned* a, uint2 b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.x), "r"(b.y));
}

extern "C" __global__ void __launch_bounds__(256, 2) awq_gemm(const f16_t* __restrict__ x,     // [M][K]
                                                          const float* __restrict__ x_scale,  // [M]
                                                          const uint4* __restrict__ w,
                                                          const f16_t* __restrict__ s,
                                                          const unsigned long long* __restrict__ z,
                                                          float* __restrict__ y,  // [M][N]
                                                          float* __restrict__ partial,
                                                          int m_rows) {
    extern __shared__ uint4 smem[];  // STAGES x (W_STAGE + X_STAGE)
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int tile0 = blockIdx.x * 8, tok0 = blockIdx.y * BT;
    const int wr = warp & 3, wt = warp >> 2;  // this warp: tiles tile0 + 2 wr + {0, 1}, tokens tok0 + 64 wt + ...
    const int nkb = NKB / gridDim.z, kb0 = blockIdx.z * nkb;  // this split's 64-input blocks

    pdl_wait();
    // Stage kb of the pipeline: this thread's weight fragment and 4 chunks of the token tile.
    auto load_stage = [&](int i) {
        const int kb = kb0 + i;
        uint4* ws = smem + (i % STAGES) * (W_STAGE + X_STAGE);
        uint4* xs = ws + W_STAGE;
        const int tile = tile0 + (tid >> 5);
        const bool tile_ok = tile < TILES;
        cp_async16(ws + tid, w + ((long long)(tile_ok ? tile : 0) * NKB + kb) * 32 + lane, tile_ok);
#pragma unroll
        for (int j = 0; j < BT / 32; j++) {
            const int c = tid + 256 * j, r = c >> 3, col = c & 7;  // token row, 16-byte column
            const int m = tok0 + r;
            const bool ok = m < m_rows;
            cp_async16(xs + r * (XP / 8) + col, x + (long long)(ok ? m : 0) * K + kb * 64 + col * 8, ok);
        }
    };
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {
        if (st < nkb) load_stage(st);
        cp_async_commit();
    }

    float acc[2][NT][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;
    unsigned neg_z[2][2], s2[2][2];  // per tile, per row half (g, g + 8)


    for (int i = 0; i < nkb; i++) {
        const int kb = kb0 + i;
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // stage i landed for every thread; stage i - 1 is free to refill
        if (i + STAGES - 1 < nkb) load_stage(i + STAGES - 1);
        cp_async_commit();

        if (kb % KB_PER_G == 0) {
            const int gi = kb / KB_PER_G;
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const int tile = min(tile0 + 2 * wr + mt, TILES - 1);
                const long long at = (long long)tile * (K / GROUP) + gi;
                const unsigned long long zw = z[at];
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    neg_z[mt][h] = (0xE400u | (unsigned)((zw >> (4 * (g + 8 * h))) & 15u)) * 0x10001u;
                    s2[mt][h] = (unsigned)s[at * 16 + g + 8 * h] * 0x10001u;
                }
            }
        }
        const uint4* ws = smem + (i % STAGES) * (W_STAGE + X_STAGE);
        const uint2* xs = reinterpret_cast<const uint2*>(ws + W_STAGE);
        const uint4 wf[2] = {ws[(2 * wr) * 32 + lane], ws[(2 * wr + 1) * 32 + lane]};
#pragma unroll
        for (int j = 0; j < 4; j++) {  // 16-input mma steps
            unsigned a[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const unsigned word = j == 0 ? wf[mt].x : j == 1 ? wf[mt].y : j == 2 ? wf[mt].z : wf[mt].w;
#pragma unroll
                for (int i = 0; i < 4; i++) a[mt][i] = dequant_f16(word, i, neg_z[mt][i & 1], s2[mt][i & 1]);
            }
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                // Inputs 16 j + 4 t .. + 3 of token WT wt + 8 nt + g (the repack's column permutation).
                const uint2 b = xs[(WT * wt + 8 * nt + g) * (XP / 4) + 4 * j + t];
                mma_f16(acc[0][nt], a[0], b);
                mma_f16(acc[1][nt], a[1], b);
            }
        }
    }
    cp_async_wait<0>();
    pdl_trigger();

    // acc[mt][nt]: rows g (0, 1) and g + 8 (2, 3) of tile 2 wr + mt; tokens 2t and 2t + 1 of n-tile nt.
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int m = tok0 + WT * wt + 8 * nt + 2 * t + e;
            if (m >= m_rows) continue;
            const float f = x_scale[m];
            if (gridDim.z > 1) {  // raw sums of this split, for awq_gemm_reduce
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    const int tile = tile0 + 2 * wr + mt;
                    if (tile >= TILES) continue;
#pragma unroll
                    for (int h = 0; h < 2; h++)
                        partial[((long long)blockIdx.z * m_rows + m) * ROWS + 16 * tile + g + 8 * h] =
                            acc[mt][nt][2 * h + e] * f;
                }
                continue;
            }
#if MODE == 2
            const int pair = (tile0 >> 1) + wr;  // gate tile 2 pair, up tile 2 pair + 1
            if (2 * pair < TILES) {
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const float gate = acc[0][nt][2 * h + e] * f, up = acc[1][nt][2 * h + e] * f;
                    y[(long long)m * N + 16 * pair + g + 8 * h] = gate / (1.0f + expf(-gate)) * up;
                }
            }
#else
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const int tile = tile0 + 2 * wr + mt;
                if (tile >= TILES) continue;
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    float* out = y + (long long)m * N + 16 * tile + g + 8 * h;
#if MODE == 1
                    *out += acc[mt][nt][2 * h + e] * f;
#else
                    *out = acc[mt][nt][2 * h + e] * f;
#endif
                }
            }
#endif
        }
    }
}

// Adds the splits' partial sums in order and applies the epilogue: one thread per output.
extern "C" __global__ void awq_gemm_reduce(const float* __restrict__ partial,  // [splits][M][ROWS]
                                           float* __restrict__ y,              // [M][N]
                                           int m_rows,
                                           int splits) {
    pdl_wait();
    pdl_trigger();
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)m_rows * N) return;
    const int m = (int)(idx / N), n = (int)(idx % N);
#if MODE == 2
    const int gate_row = 32 * (n / 16) + n % 16;  // tiles interleave gate, up
    float gate = 0.0f, up = 0.0f;
    for (int z = 0; z < splits; z++) {
        const float* p = partial + ((long long)z * m_rows + m) * ROWS;
        gate += p[gate_row];
        up += p[gate_row + 16];
    }
    y[idx] = gate / (1.0f + expf(-gate)) * up;
#else
    float v = 0.0f;
    for (int z = 0; z < splits; z++) v += partial[((long long)z * m_rows + m) * ROWS + n];
#if MODE == 1
    y[idx] += v;
#else
    y[idx] = v;
#endif
#endif
}
