// Load-time repack of one AutoAWQ GEMM linear (N outputs, K inputs) into the tensor-core GEMV
// layout of awq_gemv.cu. Outputs are grouped in tiles of 16 rows; local tile i goes to physical
// tile tile_offset + i * tile_stride of the destination, so several linears can be stacked
// (q|k|v) or interleaved (gate tile, up tile, gate tile, ...).
//   weights: per tile, per 64 inputs, per lane of a warp, 4 words (one per 16-input mma step).
//            Each word holds lane's 8 A-fragment values of an m16n8k16 mma (g = lane/4, t = lane%4):
//            nibble i is row g + 8*(i&1) and fragment column 2t + 8*((i>>1)&1) + (i>>2), so that
//            (word >> 4i) & 0x000F000F yields fragment register i as two values. Columns are
//            permuted within a step, column 2t+e <- input 4t+e and 2t+8+e <- input 4t+2+e, so the
//            matching B fragment of a lane is 4 consecutive inputs (one 16-byte load of x).
//   scales:  f16 [tile][K/GROUP][16]
//   zeros:   u64 [tile][K/GROUP], nibble r = zero point of row r.
// AutoAWQ packs 8 output columns per int32, nibble i holding column 8c + [0,2,4,6,1,3,5,7][i]:
// column 8c+j is at nibble AWQ_NIBBLE[j]. Defines: K, N, GROUP.

__device__ __constant__ int AWQ_NIBBLE[8] = {0, 4, 1, 5, 2, 6, 3, 7};

__device__ __forceinline__ unsigned awq_value(const unsigned* packed, int row_stride, int k, int n) {
    return (packed[(long long)k * row_stride + (n >> 3)] >> (4 * AWQ_NIBBLE[n & 7])) & 15u;
}

extern "C" __global__ void awq_repack(const unsigned* __restrict__ qweight,  // [K][N/8]
                                      const unsigned* __restrict__ qzeros,   // [K/GROUP][N/8]
                                      const f16_t* __restrict__ scales,      // [K/GROUP][N]
                                      unsigned* __restrict__ w_out,
                                      f16_t* __restrict__ s_out,
                                      unsigned long long* __restrict__ z_out,
                                      int tile_offset,
                                      int tile_stride) {
    pdl_wait();
    const int i = blockIdx.y;  // local tile
    const long long pt = tile_offset + (long long)i * tile_stride;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < (K / 16) * 32) {
        const int step = idx >> 5, lane = idx & 31;
        const int row0 = 16 * i + (lane >> 2), k0 = 16 * step + 4 * (lane & 3);
        unsigned word = 0;
#pragma unroll
        for (int nib = 0; nib < 8; nib++) {
            const int row = row0 + 8 * (nib & 1);
            const int k = k0 + 2 * ((nib >> 1) & 1) + (nib >> 2);
            word |= awq_value(qweight, N / 8, k, row) << (4 * nib);
        }
        w_out[((pt * (K / 64) + step / 4) * 32 + lane) * 4 + step % 4] = word;
    }
    if (idx < (K / GROUP) * 16) {
        const int grp = idx >> 4, r = idx & 15;
        s_out[(pt * (K / GROUP) + grp) * 16 + r] = scales[(long long)grp * N + 16 * i + r];
    }
    if (idx < K / GROUP) {
        unsigned long long zw = 0;
        for (int r = 0; r < 16; r++) zw |= (unsigned long long)awq_value(qzeros, N / 8, idx, 16 * i + r) << (4 * r);
        z_out[pt * (K / GROUP) + idx] = zw;
    }
}
