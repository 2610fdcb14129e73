// Greedy sampling on the GPU: out[0] = index of the largest logit (lowest index on ties, NaN
// ignored); with `advance`, out[1] += 1. One block. Pointed at the step state, this feeds the next
// step's token and position without a host round trip. Defines: N.

__device__ __forceinline__ void better(float& v, int& i, float v2, int i2) {
    if (v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

extern "C" __global__ void argmax(const float* __restrict__ x, int* __restrict__ out, int advance) {
    __shared__ float vs[32];
    __shared__ int is[32];
    pdl_wait();
    float v = -__int_as_float(0x7f800000);
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < N; i += blockDim.x) better(v, idx, x[i], i);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        better(v, idx, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, idx, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        vs[warp] = v;
        is[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        const int n_warps = (blockDim.x + 31) >> 5;
        v = lane < n_warps ? vs[lane] : -__int_as_float(0x7f800000);
        idx = lane < n_warps ? is[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            better(v, idx, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, idx, o));
        if (lane == 0) {
            out[0] = idx == 0x7fffffff ? 0 : idx;
            if (advance) out[STEP_POS] += 1;
        }
    }
}
