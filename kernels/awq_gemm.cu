// W4A16 GEMM for prompt processing: Y[m][n] (op)= sum_k X[m][k] W[n][k] for M tokens at once, over
// the awq_repack.cu weight layout that the decode GEMV also reads (weight rows are the mma's A rows,
// tokens its B columns).
//
// Precision: X arrives as fp16 rows scaled by a power of two each (rows_f16.cu), so no activation
// overflows fp16 and the row factor is re-applied exactly to the fp32 result. Weights dequantize in
// registers to fp16 as (q - z) (exact) times the group's fp16 scale (one rounding, 2^-11 relative);
// the mma accumulates in fp32. (Keeping (q - z) exact and scaling each group's fp32 sums instead
// doubles the accumulator registers and measured 28% slower on an H100, mma.sync design.)
//
// A block computes 256 weight rows (16 tiles) x BT = 128 tokens with 8 warps; each warp owns 2
// tiles x all 128 tokens (2 x 16 m16n8 accumulators), so a token tile in shared memory serves 256
// weight rows and each dequantized weight 128 tokens. Weight fragments (8 KiB per 64 inputs) and the
// fp16 token tile (16 KiB per 64 inputs) stream into shared memory through a STAGES-deep cp.async
// pipeline; one block per SM (its registers), one barrier per 64 inputs.
// Token rows sit in shared memory as 128-byte rows whose 16-byte chunks are XOR-swizzled by the
// row (chunk c of row r at c ^ (r % 8)): the layout Hopper's wgmma reads, and conflict-free for the
// fragment loads of the mma.sync path.
// - sm_90a (Hopper): each group of 4 warps (a warpgroup) issues wgmma m64n128k16 with the weight
//   fragments it dequantized in registers as A (warp w supplies rows 16w..16w+15: one of its tiles)
//   and the token tile read by the tensor cores straight from shared memory as B. One instruction
//   replaces 16 mma.sync and all fragment loads of x, which left the older design issue-bound.
// - Other GPUs: mma.sync m16n8k16 with x fragments loaded from shared memory.
// The weight layout permutes the 16 inputs of each mma step (awq_repack.cu); rows_f16.cu writes x in
// the same order, so the B operand of either path is a plain run of 16 halves.
// Few tokens leave few blocks, so the host may also split K over gridDim.z (whole groups per split):
// each split then writes its raw sums to `partial` [splits][M][ROWS] and awq_gemm_reduce adds them
// in a fixed order and applies the epilogue (deterministic, unlike atomics).
// Defines: K, N (outputs; MODE 2 reads 2N weight rows), GROUP (multiple of 64), MODE.
//   MODE 0: y[m][n] = ...   MODE 1: y[m][n] += ... (residual add)
//   MODE 2: y[m][n] = silu(gate) * up, weight tiles interleaved gate, up (awq_linear.rs Interleave)

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WGMMA 1
#else
#define WGMMA 0
#endif

#define ROWS (MODE == 2 ? 2 * N : N)
#define TILES (ROWS / 16)
#define NKB (K / 64)
#define KB_PER_G (GROUP / 64)
#define BTILES 16   // weight tiles per block
#define BT 128      // tokens per block (and per warp)
#define NT (BT / 8)  // n8 tiles per warp
// Stages in the ring, and how many ahead of the one being computed are loading. wgmma runs
// asynchronously: the group of the previous 16-input step may still read its stage, so the
// refill skips one more stage.
#define STAGES (WGMMA ? 6 : 3)
#define AHEAD (WGMMA ? STAGES - 2 : STAGES - 1)
// A stage: the token tile (128 rows of 64 fp16 inputs), the weight fragments (16 tiles x 32 lanes
// x 16 bytes), and at a group's first stage the group's scales (16 tiles x 16 fp16) and zero points
// (16 tiles x 8 bytes); padded so every stage starts on a 1024-byte boundary.
#define X_BYTES (BT * 128)
#define W_OFF X_BYTES
#define S_OFF (W_OFF + BTILES * 512)
#define Z_OFF (S_OFF + BTILES * 32)
#define STAGE_BYTES (25 * 1024)

__device__ __forceinline__ void cp_async8(unsigned dst, const void* gmem, bool valid) {
    const int bytes = valid ? 8 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(dst), "l"(gmem), "r"(bytes));
}

// Byte offset of 16-byte chunk c of token row r in a stage's token tile.
__device__ __forceinline__ unsigned x_chunk(int r, int c) { return r * 128 + ((c ^ (r & 7)) << 4); }

// The 4 fragment registers of one mma step (fp16x2 each) from the step's weight word: register i
// holds nibbles i and i + 4, rows g (i even) and g + 8 (i odd). fp16 magic: OR-ing nibble q into
// 1024 (0x6400) gives 1024 + q, from which adding -(1024 + z) leaves q - z exactly; a nibble in bits
// 4-7 gives 1024 + 16 q, and times 1/16 plus -(64 + z) (one fma) also leaves q - z exactly. Then
// times the group's scale (one rounding).
__device__ __forceinline__ void dequant_step(unsigned word, const unsigned* neg_z, const unsigned* s2, unsigned* a) {
    unsigned v[4];
    const unsigned w8 = word >> 8;
    asm("lop3.b32 %0, %1, 0x000F000F, 0x64006400, 0xEA;" : "=r"(v[0]) : "r"(word));
    asm("lop3.b32 %0, %1, 0x00F000F0, 0x64006400, 0xEA;" : "=r"(v[1]) : "r"(word));
    asm("lop3.b32 %0, %1, 0x000F000F, 0x64006400, 0xEA;" : "=r"(v[2]) : "r"(w8));
    asm("lop3.b32 %0, %1, 0x00F000F0, 0x64006400, 0xEA;" : "=r"(v[3]) : "r"(w8));
#pragma unroll
    for (int i = 0; i < 4; i += 2) {
        asm("add.rn.f16x2 %0, %1, %2;" : "=r"(v[i]) : "r"(v[i]), "r"(neg_z[0]));
        asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(v[i + 1]) : "r"(v[i + 1]), "r"(0x2C002C00u), "r"(neg_z[1]));
        asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(a[i]) : "r"(v[i]), "r"(s2[0]));
        asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(a[i + 1]) : "r"(v[i + 1]), "r"(s2[1]));
    }
}

#if WGMMA
// Shared-memory matrix descriptor of a K-major operand in 128-byte swizzled rows: start address,
// 1024 bytes between groups of 8 rows, swizzle mode 1 (128 B). The start may move by 32 bytes per
// 16-input step inside the row: the swizzle applies to absolute address bits (tiles are 1024-aligned).
__device__ __forceinline__ unsigned long long smem_desc(unsigned addr) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | (1ull << 16) | ((unsigned long long)(1024 >> 4) << 32) |
           (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N_PENDING>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N_PENDING) : "memory");
}

// d (64 rows x 128 tokens of the warpgroup, m16n8 fragment order per n8 tile) += A (registers) x B.
__device__ __forceinline__ void wgmma_m64n128k16(float* d, const unsigned* a, unsigned long long b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
        "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
        "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
        "{%64,%65,%66,%67}, %68, 1, 1, 1, 0;"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),
          "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
          "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),
          "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),
          "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]),
          "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]),
          "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
#else
__device__ __forceinline__ void mma_f16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

extern "C" __global__ void __launch_bounds__(256, 1) awq_gemm(const f16_t* __restrict__ x,     // [M][K]
                                                          const float* __restrict__ x_scale,  // [M]
                                                          const uint4* __restrict__ w,
                                                          const f16_t* __restrict__ s,
                                                          const unsigned long long* __restrict__ z,
                                                          float* __restrict__ y,  // [M][N]
                                                          float* __restrict__ partial,
                                                          int m_rows) {
    extern __shared__ uint4 smem_raw[];  // 1 KiB of alignment slack + STAGES x STAGE_BYTES
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    // Token blocks vary fastest over the grid: the blocks running together share weight tiles, so
    // each weight byte comes from DRAM about once while the (smaller) activations stay in L2.
    const int tile0 = blockIdx.y * BTILES, tok0 = blockIdx.x * BT;
    const int lt0 = 8 * (warp >> 2) + 2 * (warp & 3);  // this warp's tiles: tile0 + lt0 + {0, 1}
    const int nkb = NKB / gridDim.z, kb0 = blockIdx.z * nkb;  // this split's 64-input blocks
    // Stages start on 1024-byte boundaries, where the swizzle pattern starts.
    const unsigned raw = smem_u32(smem_raw);
    const unsigned base = (raw + 1023) & ~1023u;
    const char* smem = reinterpret_cast<const char*>(smem_raw) + (base - raw);

    pdl_wait();
    // The block's row factors (read in the epilogue; the main loop's first barrier publishes them).
    __shared__ float s_x_scale[BT];
    if (tid < BT) s_x_scale[tid] = tok0 + tid < m_rows ? x_scale[tok0 + tid] : 0.0f;
    // Stage kb of the pipeline: this thread's 2 weight fragments and 4 chunks of the token tile.
    auto load_stage = [&](int i) {
        const int kb = kb0 + i;
        const unsigned st = base + (i % STAGES) * STAGE_BYTES;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int lt = (tid >> 5) + 8 * h, tile = tile0 + lt;
            const bool ok = tile < TILES;
            cp_async16(st + W_OFF + (lt * 32 + lane) * 16, w + ((long long)(ok ? tile : 0) * NKB + kb) * 32 + lane, ok);
        }
        if (kb % KB_PER_G == 0 && tid < 48) {  // the group's scales (2 chunks a tile) and zero points
            const int lt = tid < 32 ? tid >> 1 : tid - 32, tile = min(tile0 + lt, TILES - 1);
            const long long at = (long long)tile * (K / GROUP) + kb / KB_PER_G;
            if (tid < 32)
                cp_async16(st + S_OFF + tid * 16, s + at * 16 + 8 * (tid & 1), true);
            else
                cp_async8(st + Z_OFF + lt * 8, z + at, true);
        }
#pragma unroll
        for (int j = 0; j < BT / 32; j++) {
            const int c = tid + 256 * j, r = c >> 3, col = c & 7;  // token row, 16-byte column
            const int m = tok0 + r;
            const bool ok = m < m_rows;
            cp_async16(st + x_chunk(r, col), x + (long long)(ok ? m : 0) * K + kb * 64 + col * 8, ok);
        }
    };
#pragma unroll
    for (int st = 0; st < AHEAD; st++) {
        if (st < nkb) load_stage(st);
        cp_async_commit();
    }

    float acc[2][4 * NT];  // per tile: n8 tile nt holds rows g, g (tokens 2t, 2t + 1), g + 8, g + 8
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int i = 0; i < 4 * NT; i++) acc[mt][i] = 0.0f;
    unsigned neg_z[2][2], s2[2][2];  // per tile, per row half (g, g + 8)

    for (int i = 0; i < nkb; i++) {
        const int kb = kb0 + i;
        cp_async_wait<AHEAD - 1>();
#if WGMMA
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // cp.async data -> wgmma reads
#endif
        // Stage i landed for every thread, and every warp is done with the stage refilled next
        // (i - 1; with wgmma, i - 2: each warpgroup retired all but its last step's group).
        __syncthreads();
        if (i + AHEAD < nkb) load_stage(i + AHEAD);
        cp_async_commit();

        const int stage = (i % STAGES) * STAGE_BYTES;
        if (kb % KB_PER_G == 0) {
            const f16_t* ss = reinterpret_cast<const f16_t*>(smem + stage + S_OFF);
            const unsigned long long* zs = reinterpret_cast<const unsigned long long*>(smem + stage + Z_OFF);
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const int lt = lt0 + mt;
                const unsigned long long zw = zs[lt];
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const unsigned zr = (unsigned)((zw >> (4 * (g + 8 * h))) & 15u);
                    // -(1024 + z) for row g (low nibbles), -(64 + z) for row g + 8 (high nibbles).
                    neg_z[mt][h] = (h == 0 ? 0xE400u | zr : 0xD400u | zr << 4) * 0x10001u;
                    s2[mt][h] = (unsigned)ss[lt * 16 + g + 8 * h] * 0x10001u;
                }
            }
        }
        const uint4* ws = reinterpret_cast<const uint4*>(smem + stage + W_OFF);
        const uint4 wf[2] = {ws[lt0 * 32 + lane], ws[(lt0 + 1) * 32 + lane]};
#pragma unroll
        for (int j = 0; j < 4; j++) {  // 16-input mma steps
            unsigned a[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const unsigned word = j == 0 ? wf[mt].x : j == 1 ? wf[mt].y : j == 2 ? wf[mt].z : wf[mt].w;
                dequant_step(word, neg_z[mt], s2[mt], a[mt]);
            }
#if WGMMA
            // The 128 tokens, inputs 16 j .. 16 j + 15: 32 bytes into each swizzled row.
            const unsigned long long b = smem_desc(base + stage + 32 * j);
            wgmma_fence();  // a was written by ordinary instructions
            wgmma_m64n128k16(acc[0], a[0], b);
            wgmma_m64n128k16(acc[1], a[1], b);
            wgmma_commit();
            wgmma_wait<1>();  // the previous step's group is done: its a registers are free
#else
            const char* xs = smem + stage;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                // Token 8 nt + g, inputs 16 j + 2t, + 1 (chunk 2j) and 16 j + 8 + 2t, + 1 (chunk 2j + 1).
                const int r = 8 * nt + g;
                const unsigned b0 = *reinterpret_cast<const unsigned*>(xs + x_chunk(r, 2 * j) + 4 * t);
                const unsigned b1 = *reinterpret_cast<const unsigned*>(xs + x_chunk(r, 2 * j + 1) + 4 * t);
                mma_f16(&acc[0][4 * nt], a[0], b0, b1);
                mma_f16(&acc[1][4 * nt], a[1], b0, b1);
            }
#endif
        }
    }
#if WGMMA
    wgmma_wait<0>();
#endif
    cp_async_wait<0>();
    pdl_trigger();

    // acc[mt]: rows g (0, 1) and g + 8 (2, 3) of tile lt0 + mt; tokens 2t and 2t + 1 of n-tile nt.
    // EPI n-tiles at a time, so the residual loads of a round are all in flight together.
    constexpr int EPI = 4;
#pragma unroll
    for (int nt0 = 0; nt0 < NT; nt0 += EPI) {
#if MODE == 1
        float old[EPI][2][2][2];  // [n-tile][token e][tile mt][row half h]
        if (gridDim.z == 1) {
#pragma unroll
            for (int i = 0; i < EPI; i++)
#pragma unroll
                for (int e = 0; e < 2; e++)
#pragma unroll
                    for (int mt = 0; mt < 2; mt++)
#pragma unroll
                        for (int h = 0; h < 2; h++) {
                            const int m = tok0 + 8 * (nt0 + i) + 2 * t + e, tile = tile0 + lt0 + mt;
                            old[i][e][mt][h] = m < m_rows && tile < TILES ? y[(long long)m * N + 16 * tile + g + 8 * h] : 0.0f;
                        }
        }
#endif
#pragma unroll
        for (int i = 0; i < EPI; i++) {
            const int nt = nt0 + i;
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int m = tok0 + 8 * nt + 2 * t + e;
                if (m >= m_rows) continue;
                const float f = s_x_scale[m - tok0];
                if (gridDim.z > 1) {  // raw sums of this split, for awq_gemm_reduce
#pragma unroll
                    for (int mt = 0; mt < 2; mt++) {
                        const int tile = tile0 + lt0 + mt;
                        if (tile >= TILES) continue;
#pragma unroll
                        for (int h = 0; h < 2; h++)
                            partial[((long long)blockIdx.z * m_rows + m) * ROWS + 16 * tile + g + 8 * h] =
                                acc[mt][4 * nt + 2 * h + e] * f;
                    }
                    continue;
                }
#if MODE == 2
                const int pair = (tile0 + lt0) >> 1;  // gate tile 2 pair, up tile 2 pair + 1
                if (2 * pair < TILES) {
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const float gate = acc[0][4 * nt + 2 * h + e] * f, up = acc[1][4 * nt + 2 * h + e] * f;
                        y[(long long)m * N + 16 * pair + g + 8 * h] = gate / (1.0f + expf(-gate)) * up;
                    }
                }
#else
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    const int tile = tile0 + lt0 + mt;
                    if (tile >= TILES) continue;
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const float v = acc[mt][4 * nt + 2 * h + e] * f;
#if MODE == 1
                        y[(long long)m * N + 16 * tile + g + 8 * h] = old[i][e][mt][h] + v;
#else
                        y[(long long)m * N + 16 * tile + g + 8 * h] = v;
#endif
                    }
                }
#endif
            }
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
