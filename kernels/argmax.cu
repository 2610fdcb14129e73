// Greedy sampling on the GPU: out[0] = index of the largest logit (lowest index on ties, NaN
// ignored); with `advance`, out[1] += 1. One block. Pointed at the step state, this feeds the next
// step's token and position without a host round trip. Defines: N.
//
// One block reading N floats is latency-bound: each thread keeps ARGMAX_IN_FLIGHT float4 loads in
// flight (`x` must be 16-byte aligned). A thread sees its tokens in increasing order, so a strict
// comparison keeps the first of equal values; NaN never compares greater, and -inf only matters
// when nothing is larger (a rare second pass).

#define ARGMAX_QUADS (N / 4)
#define ARGMAX_IN_FLIGHT 4

__device__ __forceinline__ void better(float& v, int& i, float v2, int i2) {
    if (v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

extern "C" __global__ void argmax(const float* __restrict__ x, int* __restrict__ out, int advance) {
    __shared__ float vs[32];
    __shared__ int is[32];
    __shared__ int first;
    pdl_wait();
    const float neg_inf = -__int_as_float(0x7f800000);
    float v = neg_inf;
    int idx = 0x7fffffff;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const int step = blockDim.x * ARGMAX_IN_FLIGHT;
#pragma unroll 1
    for (int q0 = threadIdx.x; q0 < ARGMAX_QUADS; q0 += step) {
        float4 c[ARGMAX_IN_FLIGHT];
#pragma unroll
        for (int u = 0; u < ARGMAX_IN_FLIGHT; ++u) {
            const int q = q0 + u * blockDim.x;
            c[u] = q < ARGMAX_QUADS ? x4[q] : make_float4(neg_inf, neg_inf, neg_inf, neg_inf);
        }
#pragma unroll
        for (int u = 0; u < ARGMAX_IN_FLIGHT; ++u) {
            const int i = 4 * (q0 + u * blockDim.x);
            if (c[u].x > v) v = c[u].x, idx = i;
            if (c[u].y > v) v = c[u].y, idx = i + 1;
            if (c[u].z > v) v = c[u].z, idx = i + 2;
            if (c[u].w > v) v = c[u].w, idx = i + 3;
        }
    }
    if (N % 4 != 0 && threadIdx.x < N % 4) {
        const int i = ARGMAX_QUADS * 4 + threadIdx.x;
        if (x[i] > v) v = x[i], idx = i;
    }
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
        v = lane < n_warps ? vs[lane] : neg_inf;
        idx = lane < n_warps ? is[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            better(v, idx, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, idx, o));
        if (lane == 0) first = idx;
    }
    __syncthreads();
    const bool none = first == 0x7fffffff;
    if (none) {
        __syncthreads();  // everyone has read `first`
        // Nothing above -inf: the first -inf (NaN never wins), 0 when every logit is NaN.
        for (int i = threadIdx.x; i < N; i += blockDim.x) {
            if (x[i] == neg_inf) {
                atomicMin(&first, i);
                break;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out[0] = first == 0x7fffffff ? 0 : first;
        if (advance) out[STEP_POS] += 1;
    }
}
