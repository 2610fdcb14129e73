// Shared helpers for every kernel. Kernels are self-contained (no CUDA headers) so NVRTC needs no
// include path: fp16 values travel as raw 16-bit patterns and convert through PTX cvt instructions.
// Shape constants arrive as #defines prepended by the Rust KernelType.

typedef unsigned short f16_t;

__device__ __forceinline__ float f16_to_f32(f16_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ f16_t f32_to_f16(float f) {
    f16_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block; every thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// Two floats as an fp16 pair (round to nearest), `lo` in the low half.
__device__ __forceinline__ unsigned pack_f16x2(float lo, float hi) {
    return (unsigned)f32_to_f16(lo) | (unsigned)f32_to_f16(hi) << 16;
}

// The shared-memory address of a generic pointer into shared memory (cp.async, ldmatrix, wgmma).
__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned a;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(a) : "l"(p));
    return a;
}

// 16 bytes from global to shared memory without passing through registers (L2 only); with
// `valid` false the destination is zero-filled and nothing is read.
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid) {
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until at most N_PENDING of this thread's committed groups are still in flight.
template <int N_PENDING>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N_PENDING) : "memory");
}

// Release / acquire at GPU scope: writes before it are visible to a block that observes a later
// atomic of this thread and then runs its own fence_gpu. Lighter than __threadfence(), which is
// sequentially consistent.
__device__ __forceinline__ void fence_gpu() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }

// Programmatic dependent launch (sm_90+): a kernel may start while the previous kernel on the
// stream is still running. pdl_wait() blocks until that kernel has finished and its writes are
// visible: everything before it may only read data no earlier kernel writes (weights).
// pdl_trigger() lets the next kernel start launching early.
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Each decode step reads its token and position from device memory, so one captured launch
// sequence serves every step: step[0] = token id, step[1] = position.
#define STEP_TOKEN 0
#define STEP_POS 1
