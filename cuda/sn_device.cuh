// Device helpers shared by specnorm's kernels: fixed-order (deterministic) reductions and the
// "last block to arrive" pattern that lets one launch both produce partial results and combine
// them, without floating-point atomics.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "kernels.h" /* kDoesNotFit */
#include "sn_cuda.h"

// A kernel's dynamic shared memory as an array of T named `name` (every such array of a kernel is
// the same memory). The emulated build (tests/emu_cuda/) defines it before this header.
#ifndef SN_EXTERN_SHARED
#define SN_EXTERN_SHARED(T, name) extern __shared__ T name[]
#endif

namespace sn {

constexpr int kBlock = 256;  // threads per block of every kernel
constexpr int kWarps = kBlock / 32;

// Sum over the 32 lanes of a warp; the result is valid in lane 0. Fixed tree.
__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
  return x;
}

// N sums over a block of NT threads at once (x[r]: this thread's term of sum r; every thread gets
// the sums back in x): one set of barriers for all N, and each sum has block_sum's tree, so the
// same bits as N calls of it. At most one sum per warp.
template <int NT, int N>
__device__ __forceinline__ void block_sums(float (&x)[N]) {
  static_assert(NT % 32 == 0 && NT / 32 <= 32, "whole warps, at most 32 of them");
  static_assert(N >= 1 && N <= NT / 32, "at most one sum per warp");
  __shared__ float warp_part[N][NT / 32];
  __shared__ float total[N];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < N; ++r) x[r] = warp_sum(x[r]);
  __syncthreads();  // warp_part may still be read by a previous call
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < N; ++r) warp_part[r][warp] = x[r];
  __syncthreads();
  if (warp < N) {  // warp r adds the warps' parts of sum r
    float y = lane < NT / 32 ? warp_part[warp][lane] : 0.0f;
    y = warp_sum(y);
    if (lane == 0) total[warp] = y;
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < N; ++r) x[r] = total[r];
}

// Sum over the 32 lanes of a warp, in every lane (butterfly shuffles). Each lane gets the bits
// that warp_sum gives lane 0: after the step of offset o, lanes l and l ^ o hold the same partial
// (the same two partials added, in swapped order, and float addition commutes), and for l < o that
// partial is warp_sum's own.
__device__ __forceinline__ float warp_allsum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// block_sums with one barrier, for a loop that makes one such call a step (the one-pass rows' ring
// loops, the grouped rows): each warp's sums go to slot `slot` of SLOTS (2 or more), one barrier,
// then every warp adds the NT / 32 parts of each sum (warp_allsum, zeros in the lanes past them),
// where block_sums has warp r add them and hand the sum on through shared memory after two more
// barriers. The same bits as block_sums. Consecutive calls must pass different slots: a call's
// slot is written again at the earliest by the call after next, which no thread enters before
// every thread has passed the barrier of the call between them, i.e. has read this call's parts.
template <int NT, int N, int SLOTS = 2>
__device__ __forceinline__ void block_sums_alternating(float (&x)[N], int slot) {
  static_assert(NT % 32 == 0 && NT / 32 <= 32, "whole warps, at most 32 of them");
  static_assert(N >= 1 && N <= 8, "a few sums at once");
  __shared__ float part[SLOTS][N][NT / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < N; ++r) x[r] = warp_sum(x[r]);
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < N; ++r) part[slot][r][warp] = x[r];
  __syncthreads();
#pragma unroll
  for (int r = 0; r < N; ++r) x[r] = warp_allsum(lane < NT / 32 ? part[slot][r][lane] : 0.0f);
}

// Sum over a block of NT threads (kBlock unless said); every thread gets the result. Fixed tree.
template <int NT = kBlock>
__device__ __forceinline__ float block_sum(float x) {
  float s[1] = {x};
  block_sums<NT, 1>(s);
  return s[0];
}

// Every block calls this after writing its partial results; it returns true in exactly one block,
// the last to arrive, once all partials are visible to it. The counter is reset for the next
// launch, so it stays zero between launches (and across CUDA graph replays).
__device__ __forceinline__ bool last_block_to_arrive(unsigned *counter, unsigned expected) {
  __shared__ bool is_last;
  __threadfence();  // publish this thread's partial results device-wide
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned arrived = atomicAdd(counter, 1u);
    is_last = arrived == expected - 1;
    if (is_last) *counter = 0u;
  }
  __syncthreads();
  if (is_last) __threadfence();
  return is_last;
}

// This thread's share of Σ parts[0..n) over a block of kBlock threads: parts k, k + kBlock, ...
// in order. The parts may have been written by other blocks of this launch: read past L1.
__device__ __forceinline__ float thread_sum_of(const float *parts, int64_t n) {
  float tot = 0.f;
  for (int64_t k = threadIdx.x; k < n; k += kBlock) tot += __ldcg(&parts[k]);
  return tot;
}

// Σ parts[0..n) over a block of kBlock threads, in a fixed order (thread_sum_of, then block_sum's
// tree); every thread gets it.
__device__ __forceinline__ float block_sum_of(const float *parts, int64_t n) {
  return block_sum(thread_sum_of(parts, n));
}

// Σ_{k < n} part[k·stride + idx], in k order: one column of the partial products of n blocks.
__device__ __forceinline__ float sum_partials(const float *part, int n, int64_t stride, int64_t idx) {
  float x = 0.f;
  for (int k = 0; k < n; ++k) x += part[(int64_t)k * stride + idx];
  return x;
}

// out[idx] = x / m; returns its square (for the norm). A reduce kernel loads its column with
// sum_partials and its share of the norm's partials with thread_sum_of before it waits on either,
// so that the two reads are in flight together, then scales the column with this.
__device__ __forceinline__ float store_scaled(float x, float m, float *out, int64_t idx) {
  x *= 1.f / m;
  out[idx] = x;
  return __fmul_rn(x, x);  // rounded here: never fused into the add that takes it (same bits in
                           // every kernel that inlines this, whatever ptxas decides there)
}

// The divisor of the iteration's normalization N(x) = x / norm_divisor(‖x‖², eps): max(‖x‖, eps)
// for eps > 0 (SN_EPS_CLAMP_NORM: PyTorch, Keras), sqrt(‖x‖² + |eps|) for eps < 0 (the plan's
// sign for SN_EPS_ADD_SQUARED: Flax, Haiku). σ = ‖x‖² / norm_divisor(‖x‖², eps) either way.
__device__ __forceinline__ float norm_divisor(float ssq, float eps) {
  return eps > 0.f ? fmaxf(sqrtf(ssq), eps) : sqrtf(ssq - eps);
}

// The last step of every s = Mᵀ y kernel, in its last block (all threads call it): Σ s² from n
// partials in order, then scal[M_S] = N's divisor of s (max(‖s‖, eps)) and scal[SIG_S] = ‖s‖² /
// that, the u-first σ (SPEC.md). The partials were written by other blocks of the launch: read
// past L1.
__device__ __forceinline__ void finish_s_norm(const float *sq_parts, int64_t n, float eps,
                                              float *scal) {
  const float tot = block_sum_of(sq_parts, n);
  if (threadIdx.x == 0) {
    const float m = norm_divisor(tot, eps);
    scal[SN_SCAL_M_S] = m;
    scal[SN_SCAL_SIG_S] = tot / m;
  }
}

// dst[k] = ones ? 1 : src[k] · r for k < n (dst in shared memory), by a block of NT threads. Each
// thread issues K loads before it stores any of them, so that they are in flight together: the
// plain loop (load, multiply, store, next) was compiled with one load in flight per thread, 16
// L2 round trips in series to stage a v of 4096 floats on 256 threads (read in the sm_90 SASS of
// the one-pass rows kernel, whose every block does this before its first row). src may start at
// any float boundary.
template <int NT, int K = 8>
__device__ __forceinline__ void stage_scaled(float *dst, const float *src, int64_t n, float r,
                                             bool ones) {
  for (int64_t b = threadIdx.x; b < n; b += (int64_t)K * NT) {
    float x[K];
#pragma unroll
    for (int q = 0; q < K; ++q) {
      const int64_t k = b + (int64_t)q * NT;
      x[q] = !ones && k < n ? src[k] : 0.f;
    }
#pragma unroll
    for (int q = 0; q < K; ++q) {
      const int64_t k = b + (int64_t)q * NT;
      if (k < n) dst[k] = ones ? 1.f : x[q] * r;
    }
  }
}

// out[k] = in[k] / m for k < n, by one block. Each thread loads K float4 before it stores any
// result, so that K loads are in flight at once: with loads and stores interleaved, the compiler
// (which cannot tell out from in) would wait on each load in turn, one L2 round trip per 256
// values. `in` is 16-byte aligned and readable up to n rounded up to 4 (the plan's scratch).
template <int K>
__device__ __forceinline__ void divide_into(float *out, const float *in, int64_t n, float m) {
  const float4 *in4 = reinterpret_cast<const float4 *>(in);
  const int64_t n4 = (n + 3) / 4;
  for (int64_t b = threadIdx.x; b < n4; b += (int64_t)K * kBlock) {
    float4 x[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t q = b + (int64_t)k * kBlock;
      x[k] = q < n4 ? __ldcg(&in4[q]) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t q = 4 * (b + (int64_t)k * kBlock);
      if (q < n) out[q] = x[k].x / m;
      if (q + 1 < n) out[q + 1] = x[k].y / m;
      if (q + 2 < n) out[q + 2] = x[k].z / m;
      if (q + 3 < n) out[q + 3] = x[k].w / m;
    }
  }
}

// The divisor of W_sn = (W / d) · γ for a σ: d = σ, or max(1, σ / c) under a norm bound c > 0.
__device__ __forceinline__ float sn_divisor(float sig, float norm_bound) {
  return norm_bound > 0.f ? fmaxf(1.f, sig / norm_bound) : sig;
}

// What a commit (the last kernel of a forward) decides from the new σ: whether it is usable, the
// σ W_sn uses (the new one, or the layer's last good one: then nothing writes sigma[0], so every
// block reads the same old value), d and γ.
struct CommitScale {
  float sig_new, sig, d, g;
  bool good;
  // x / d first (W / σ exactly as PyTorch divides), then γ; no σ yet: x · 0.
  __device__ float apply(float x) const { return sig > 0.f ? (x / d) * g : x * 0.f; }
};

// From values already loaded: sig_old, the layer's last good σ (sigma[0]), and γ.
__device__ __forceinline__ CommitScale commit_scale_of(float sig_new, float sig_old, float norm_bound,
                                                       float gamma) {
  CommitScale c;
  c.sig_new = sig_new;
  c.good = sn_sigma_usable(sig_new);
  c.sig = c.good ? sig_new : sig_old;
  c.d = sn_divisor(c.sig, norm_bound);
  c.g = gamma;
  return c;
}

__device__ __forceinline__ CommitScale commit_scale(float sig_new, const float *sigma,
                                                    float norm_bound, const float *gamma) {
  const bool good = sn_sigma_usable(sig_new);
  return commit_scale_of(sig_new, good ? sig_new : sigma[0], norm_bound, gamma ? *gamma : 1.f);
}

// The layer's state word {σ, 1/σ, scale, health} after a commit (one thread): σ and 1/σ only when
// the new σ is usable; the scale W_sn = scale · W (up to rounding); the health bits.
// health_before: the health word as the forward found it.
__device__ __forceinline__ void commit_state_word_of(float *sigma, const CommitScale &c, bool training,
                                                     unsigned health_before) {
  if (c.good) {
    sigma[0] = c.sig_new;
    sigma[1] = 1.0f / c.sig_new;
  }
  const float scale = c.sig > 0.f ? c.g / c.d : 0.f;
  sigma[2] = scale;
  reinterpret_cast<unsigned *>(sigma)[3] =
      sn_health_after(health_before, c.sig_new, training ? 1 : 0, c.g, scale);
}

__device__ __forceinline__ void commit_state_word(float *sigma, const CommitScale &c, bool training) {
  commit_state_word_of(sigma, c, training, reinterpret_cast<const unsigned *>(sigma)[3]);
}

// The backward's dW = a·G − b·(u_i v_j) (SPEC.md, "Backward"), from the last forward's σ and
// ⟨G, W⟩ (*gw, read only where the σ term applies): a = γ / d with γ read now
// (sn_layer_set_gamma: every forward and backward reads it; with the γ of the forward, the
// forward's scale bit for bit, commit_state_word_of's c.g / c.d), b = a·⟨G, W⟩ / σ unless σ is
// detached, a norm bound is not active (σ <= c), or σ is a 1-D weight's eps clamp (σ <= clamp_eps;
// 0 elsewhere). No σ yet (σ <= 0): a = b = 0. The backward kernels' one definition (the CPU
// backend's: sn_ref_backward).
struct Coefs {
  float a, b;
};

__device__ __forceinline__ Coefs backward_coefs(float sig, const float *gw, float norm_bound,
                                                const float *gamma, bool detach, float clamp_eps) {
  if (!(sig > 0.f)) return {0.f, 0.f};
  const float a = (gamma ? *gamma : 1.f) / sn_divisor(sig, norm_bound);
  const bool depends = !detach && !(norm_bound > 0.f && sig <= norm_bound) && !(sig <= clamp_eps);
  return {a, depends ? a * *gw / sig : 0.f};
}

// ∂L/∂γ = ⟨G, W⟩ / d (d = σ, or max(1, σ / c) with a norm bound); 0 with no σ yet (σ <= 0).
__device__ __forceinline__ float backward_dgamma(float sig, float gw, float norm_bound) {
  return sig > 0.f ? gw / sn_divisor(sig, norm_bound) : 0.f;
}

// Reciprocal of an optional device divisor (NULL means 1).
__device__ __forceinline__ float reciprocal_of(const float *div) {
  return div ? 1.0f / *div : 1.0f;
}

// Programmatic dependent launch (sm_90): every kernel starts with this. It waits until the
// kernel before it in the stream has completed and its writes are visible (a no-op when the
// launch did not ask for the overlap), then lets the next kernel's blocks be scheduled early, so
// that a kernel boundary costs less than a full drain and launch. Nothing is read or written
// before the wait, so the results are those of plain stream order.
// The two halves, for a kernel that must trigger later (the cooperative one-pass kernel: only once
// all of its blocks are resident, cuda/one_pass_coop.cu).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(SN_EMULATION)
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(SN_EMULATION)
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

__device__ __forceinline__ void pdl_enter() {
  pdl_wait();
  pdl_trigger();
}

// Let `kernel` use as much dynamic shared memory as the current device gives a block (its opt-in
// limit less the kernel's static shared memory), and check that `need` bytes fit. The limit is a
// property of the kernel for the whole process: setting it to each layer's own need would let a
// later, smaller layer lower it under an earlier layer's launches, so it is only ever set to the
// device's maximum.
template <class K>
cudaError_t allow_shared_memory(K *kernel, size_t need) {
  int dev = 0, optin = 0;
  cudaFuncAttributes fa{};
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e == cudaSuccess) e = cudaFuncGetAttributes(&fa, kernel);
  if (e != cudaSuccess) return e;
  const size_t avail = (size_t)optin > fa.sharedSizeBytes ? (size_t)optin - fa.sharedSizeBytes : 0;
  if (need > avail) return kDoesNotFit;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)avail);
}

// The launch configuration of `blocks` blocks in thread-block clusters of `cluster` blocks (0: no
// cluster attribute) (cudaLaunchKernelEx(&cfg, ...), or an occupancy query on cfg), as a
// programmatic dependent launch when pdl, cooperative (grid barriers) when cooperative. Not
// copyable: cfg points into it.
struct ClusterLaunch {
  cudaLaunchConfig_t cfg{};
  cudaLaunchAttribute attr[3]{};
  ClusterLaunch(int blocks, int threads, size_t smem, int cluster, cudaStream_t stream,
                bool pdl = false, bool cooperative = false) {
    cfg.gridDim = dim3((unsigned)blocks);
    cfg.blockDim = dim3((unsigned)threads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    unsigned n = 0;
    if (cluster > 0) {
      attr[n].id = cudaLaunchAttributeClusterDimension;
      attr[n].val.clusterDim.x = (unsigned)cluster;
      attr[n].val.clusterDim.y = 1;
      attr[n].val.clusterDim.z = 1;
      ++n;
    }
    if (pdl) {
      attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr[n].val.programmaticStreamSerializationAllowed = 1;
      ++n;
    }
    if (cooperative) {
      attr[n].id = cudaLaunchAttributeCooperative;
      attr[n].val.cooperative = 1;
      ++n;
    }
    cfg.attrs = attr;
    cfg.numAttrs = n;
  }
  ClusterLaunch(const ClusterLaunch &) = delete;
  ClusterLaunch &operator=(const ClusterLaunch &) = delete;
};

// kernel<<<grid, block, smem, stream>>>(args...) with one launch attribute, or none (attr NULL),
// through cudaLaunchKernelEx, which returns this launch's own error: `<<<>>>` then
// cudaGetLastError() would also return (and clear) an error the caller's code left pending.
template <class... P, class... A>
cudaError_t launch_with(const cudaLaunchAttribute *attr, void (*kernel)(P...), dim3 grid, dim3 block,
                        size_t smem, cudaStream_t stream, A &&...args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute a{};
  if (attr) a = *attr;
  cfg.attrs = attr ? &a : nullptr;
  cfg.numAttrs = attr ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
}

// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch when pdl
// (only set on devices of compute capability 9.0 and up). Returns the launch's error.
template <class... P, class... A>
cudaError_t launch(bool pdl, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, A &&...args) {
  if (!pdl) return launch_with(nullptr, kernel, grid, block, smem, stream, std::forward<A>(args)...);
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  return launch_with(&attr, kernel, grid, block, smem, stream, std::forward<A>(args)...);
}

}  // namespace sn
