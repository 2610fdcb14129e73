// Load-time repack of one AutoAWQ GEMM linear into the GEMV layout, rows [row_offset, row_offset+N)
// of a (possibly fused) output matrix:
//   weights: u32 [rows][K/8], word j of row n holds k = 8j..8j+7, nibble i = k 8j+i (K-contiguous,
//            so a warp reading one output row issues coalesced 16-byte loads);
//   scales:  f16 [rows][K/GROUP];  zeros: u8 [rows][K/GROUP].
// AutoAWQ packs 8 output columns per int32 with nibble i holding column 8c + [0,2,4,6,1,3,5,7][i];
// column 8c+j is therefore at nibble AWQ_NIBBLE[j]. Defines: K, N, GROUP.

__device__ __constant__ int AWQ_NIBBLE[8] = {0, 4, 1, 5, 2, 6, 3, 7};

extern "C" __global__ void awq_repack(const unsigned* __restrict__ qweight,   // [K][N/8]
                                      const unsigned* __restrict__ qzeros,    // [K/GROUP][N/8]
                                      const f16_t* __restrict__ scales,       // [K/GROUP][N]
                                      unsigned* __restrict__ w_out,
                                      f16_t* __restrict__ s_out,
                                      unsigned char* __restrict__ z_out,
                                      int row_offset) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;  // word along K
    const int n = blockIdx.y;                              // output column
    const int shift = 4 * AWQ_NIBBLE[n & 7];
    const int col = n >> 3;
    const long long row = row_offset + n;
    if (j < K / 8) {
        unsigned word = 0;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const unsigned q = (qweight[(long long)(8 * j + i) * (N / 8) + col] >> shift) & 15u;
            word |= q << (4 * i);
        }
        w_out[row * (K / 8) + j] = word;
    }
    if (j < K / GROUP) {
        s_out[row * (K / GROUP) + j] = scales[(long long)j * N + n];
        z_out[row * (K / GROUP) + j] = (qzeros[(long long)j * (N / 8) + col] >> shift) & 15u;
    }
}
