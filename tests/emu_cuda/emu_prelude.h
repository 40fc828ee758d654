// Included first into every cuda/*.cu of the emulated build (-include), compiled as C++ by the host
// compiler: the CUDA keywords and intrinsics the library's kernels use, in terms of emu.h. The
// toolkit's headers are included here as a host compiler sees them, then __CUDA_ARCH__ is set to
// 900 for the library's own code (the sm_90 paths: clusters, programmatic dependent launch), whose
// inline PTX is behind SN_EMULATION.
#ifndef SPECNORM_EMU_PRELUDE_H
#define SPECNORM_EMU_PRELUDE_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "emu.h"

#define SN_EMULATION 1

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ thread_local
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)

#define cudaLaunchKernelEx(...) ::emu::launch(__VA_ARGS__)

// The runtime's C++ overloads that take a kernel (the toolkit declares them for nvcc only).
template <class K>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, K *kernel) {
  return cudaFuncGetAttributes(attr, reinterpret_cast<const void *>(kernel));
}
template <class K>
inline cudaError_t cudaFuncSetAttribute(K *kernel, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void *>(kernel), attr, value);
}
template <class K>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *blocks, K *kernel, int threads, size_t smem) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, reinterpret_cast<const void *>(kernel), threads, smem);
}
using std::isfinite;
using std::isinf;
using std::isnan;

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::syncwarp(mask); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap() { emu::trap(); }

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  static_assert(sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  const int lane = (int)(emu::current()->linear & 31u);
  const int base = lane & ~(width - 1);
  bits = emu::exchange(mask, bits, base + (src & (width - 1)));
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = (int)(emu::current()->linear & 31u);
  const int src = lane ^ lane_mask;
  // A source outside the lane's segment of `width` lanes gives the lane its own value.
  return __shfl_sync(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane, 32);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = (int)(emu::current()->linear & 31u);
  const int in_seg = (lane & (width - 1)) + (int)delta;
  return __shfl_sync(mask, v, in_seg < width ? lane + (int)delta : lane, 32);
}

template <class T>
inline T __ldg(const T *p) { return *p; }
template <class T>
inline T __ldcg(const T *p) { return *p; }
template <class T>
inline T __ldcs(const T *p) { return *p; }
template <class T>
inline void __stcs(T *p, T v) { *p = v; }

inline unsigned atomicAdd(unsigned *p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

// CUDA's integer min and max (its math headers give them to device code only).
#define SN_EMU_MINMAX(T)                            \
  inline T min(T a, T b) { return a < b ? a : b; } \
  inline T max(T a, T b) { return a < b ? b : a; }
SN_EMU_MINMAX(int)
SN_EMU_MINMAX(unsigned)
SN_EMU_MINMAX(long)
SN_EMU_MINMAX(unsigned long)
SN_EMU_MINMAX(long long)
SN_EMU_MINMAX(unsigned long long)
SN_EMU_MINMAX(float)
SN_EMU_MINMAX(double)
#undef SN_EMU_MINMAX

// The library's dynamic shared memory (cuda/sn_device.cuh: SN_EXTERN_SHARED).
#define SN_EXTERN_SHARED(T, name) T *name = reinterpret_cast<T *>(::emu::dynamic_shared())

#define __CUDA_ARCH__ 900

#endif
