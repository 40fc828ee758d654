// The pieces of the forward with a layer held on chip that its two launches share: the layer in
// the shared memory of one thread-block cluster (cuda/on_chip.cu: groups, and small single
// layers) or spread over a whole cooperative grid (cuda/on_chip_grid.cu: a single larger layer).
// Each block holds a contiguous run of the layer's rows in its shared memory and computes, from
// there, its share of t = M v and its partial s = Mᵀ t (block_products), and the division
// (divide_out); the two launches differ in how the blocks' partials are added up.
#pragma once

#include <cuda_pipeline.h>

#include "sn_cuda.h"
#include "sn_device.cuh"
#include "sn_types.cuh"

namespace sn {
namespace {

// Narrow layers (w < NT / 2, NT the block's threads): the block's partial s of a column is split
// over up to this many groups of rows, added up in group order (a thread per column would go
// through all the block's rows alone: 1000 × 3 on one block, 1000 dependent steps).
constexpr int kMaxRowGroups = 16;

// The 16-byte-aligned middle [lo, hi) of the bytes [b, b + n) (lo = hi when there is none).
struct Middle {
  uintptr_t lo, hi;
};
__device__ __forceinline__ Middle middle_of(const void *p, int64_t n_bytes) {
  const uintptr_t b = reinterpret_cast<uintptr_t>(p), e = b + (uintptr_t)n_bytes;
  const uintptr_t lo = min((b + 15) & ~(uintptr_t)15, e);
  return {lo, max(lo, e & ~(uintptr_t)15)};
}

// dst[0..n) = src[0..n) (dst in shared memory at src's address mod 16), by the block: the aligned
// middle as 16-byte cp.async (in flight together, no registers), the < 16 bytes at either end by
// plain loads. The caller commits and waits.
template <int NT, class T>
__device__ __forceinline__ void copy_in(T *dst, const T *src, int64_t n) {
  const Middle m = middle_of(src, n * (int64_t)sizeof(T));
  const uintptr_t b = reinterpret_cast<uintptr_t>(src);
  char *d = reinterpret_cast<char *>(dst) + (m.lo - b);
  const char *s = reinterpret_cast<const char *>(m.lo);
  const int64_t packs = (int64_t)(m.hi - m.lo) / 16;
  for (int64_t q = threadIdx.x; q < packs; q += NT) __pipeline_memcpy_async(d + 16 * q, s + 16 * q, 16);
  const int64_t head = (int64_t)(m.lo - b) / (int64_t)sizeof(T), tail = (int64_t)(m.hi - b) / (int64_t)sizeof(T);
  for (int64_t k = threadIdx.x; k < head; k += NT) dst[k] = src[k];
  for (int64_t k = tail + threadIdx.x; k < n; k += NT) dst[k] = src[k];
}

// out[k] = cs.apply(src[k]) for k < n, src in shared memory as copy_in placed it: 16 bytes at a
// time where out has src's global address mod 16 (then src's aligned middle is out's), else by
// elements.
template <int NT, class T>
__device__ __forceinline__ void divide_out(T *out, const T *src_sm, const T *src_global, int64_t n,
                                           const CommitScale &cs) {
  const uintptr_t b = reinterpret_cast<uintptr_t>(src_global);
  int64_t head = n, tail = n;  // without a common alignment: all by elements, as the "head"
  if (((reinterpret_cast<uintptr_t>(out) - b) & 15) == 0) {
    const Middle m = middle_of(src_global, n * (int64_t)sizeof(T));
    head = (int64_t)(m.lo - b) / (int64_t)sizeof(T);
    tail = (int64_t)(m.hi - b) / (int64_t)sizeof(T);
    constexpr int E = kWide<T>;
    using V = VecN<T, E>;
    const int64_t packs = (tail - head) / E;
    for (int64_t q = threadIdx.x; q < packs; q += NT) {
      const int64_t k = head + E * q;
      float x[E];
      V::cvt(V::load_raw(src_sm + k), x);
#pragma unroll
      for (int e = 0; e < E; ++e) x[e] = cs.apply(x[e]);
      V::store(out + k, x);
    }
  }
  for (int64_t k = threadIdx.x; k < head; k += NT) out[k] = from_f<T>(cs.apply(to_f(src_sm[k])));
  for (int64_t k = tail + threadIdx.x; k < n; k += NT) out[k] = from_f<T>(cs.apply(to_f(src_sm[k])));
}

// What an on-chip forward reads of the layer's state before it computes: the health word, the last
// good σ and γ. Nothing writes the state before the launch's own commit, which comes after its
// last barrier across blocks.
struct StartState {
  unsigned health;
  float sig_old, gamma;
};

// The rest of an on-chip forward's load, after the caller has issued its rows' copies: v (and, eval,
// the block's rows' u_i, from i0) into shared memory, all in flight together; the state; the wait
// for every copy; v = ones where a training forward restarts (each thread its own copies); a
// barrier.
template <int NT>
__device__ __forceinline__ StartState load_v_and_state(const sn_group_entry_t &e, float *v_sm, float *u_sm,
                                                       int64_t i0, int rows, int w, bool training) {
  for (int j = threadIdx.x; j < w; j += NT) __pipeline_memcpy_async(&v_sm[j], &e.v[j], 4);
  if (!training)
    for (int k = threadIdx.x; k < rows; k += NT) __pipeline_memcpy_async(&u_sm[k], &e.u[i0 + k], 4);
  __pipeline_commit();
  StartState s;
  s.health = reinterpret_cast<const unsigned *>(e.sigma)[3];
  s.sig_old = e.sigma[0];
  s.gamma = e.gamma ? *e.gamma : 1.f;
  __pipeline_wait_prior(0);
  if (training && (s.health & SN_HEALTH_RESTART))
    for (int j = threadIdx.x; j < w; j += NT) v_sm[j] = 1.f;
  __syncthreads();
  return s;
}

// The block's Σ t_k² over t_sm[0..rows) (eval, where t_sm holds u_k t_k: Σ t_sm[k]), in every
// thread: each thread every NT-th, then block_sum's tree.
template <int NT>
__device__ __forceinline__ float block_t_sum(const float *t_sm, int rows, bool training) {
  float q = 0.f;
  for (int k = threadIdx.x; k < rows; k += NT) q = training ? fmaf(t_sm[k], t_sm[k], q) : q + t_sm[k];
  return block_sum<NT>(q);
}

// The block's products over its `rows` rows (Ws: shared memory, row-major, w columns) with v_sm:
// t_sm[k] = M_k · v (eval: u_sm[k] times that) and, training, the block's partial s_j =
// Σ_k t_k M_kj into part[j] (shared or global memory; grp_sm: NT floats of shared memory for the
// row groups of narrow layers, `groups` of them: row_groups). Returns the block's Σ t_k² (eval:
// Σ_k u_k t_k), in every thread. Every sum in a fixed order.
template <class T, int NT>
__device__ __forceinline__ float block_products(const T *Ws, int rows, int w, const float *v_sm,
                                                const float *u_sm, float *t_sm, float *part,
                                                float *grp_sm, bool training, int groups) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // t_i = M_i · v (eval: u_i t_i): a warp per row, or, for rows of fewer than 32 elements, L
  // lanes per row (L the power of two from w up) with one element each, then a butterfly over
  // the L lanes. A warp's lanes then read 32 / L consecutive rows, each element once: 32
  // distinct banks (a thread per row, as before, read addresses w floats apart in step: a
  // 16-way bank conflict at w = 16, and every even w conflicted).
  if (w < 32) {
    int L = 1;
    while (L < w) L <<= 1;
    const int per = 32 / L, g = lane / L, l = lane % L;  // rows per warp, this lane's row and column
    for (int k0 = warp * per; k0 < rows; k0 += (NT / 32) * per) {  // warp-uniform: all lanes shuffle
      const int k = k0 + g;
      float d = k < rows && l < w ? to_f(Ws[(int64_t)k * w + l]) * v_sm[l] : 0.f;
      for (int o = L / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
      if (l == 0 && k < rows) t_sm[k] = training ? d : u_sm[k] * d;
    }
  } else {
    for (int k = warp; k < rows; k += (NT / 32)) {
      const T *row = Ws + (int64_t)k * w;
      float d = 0.f;
      // (Unrolled, so that the shared-memory loads of 8 steps are in flight together: the sum's
      // order is that of j either way.)
#pragma unroll 8
      for (int j = lane; j < w; j += 32) d = fmaf(to_f(row[j]), v_sm[j], d);
      d = warp_allsum(d);
      if (lane == 0) t_sm[k] = training ? d : u_sm[k] * d;
    }
  }
  __syncthreads();
  // The block's partial s (training): a thread per column over the rows in order, or, narrow,
  // over rows g, g + groups, ... and then the groups in order.
  if (training && groups == 1) {
    for (int j = threadIdx.x; j < w; j += NT) {
      float x = 0.f;
#pragma unroll 4
      for (int k = 0; k < rows; ++k) x = fmaf(t_sm[k], to_f(Ws[(int64_t)k * w + j]), x);
      part[j] = x;
    }
  } else if (training) {
    const int j = threadIdx.x % w, g = threadIdx.x / w;
    if (g < groups) {
      float x = 0.f;
#pragma unroll 4
      for (int k = g; k < rows; k += groups) x = fmaf(t_sm[k], to_f(Ws[(int64_t)k * w + j]), x);
      grp_sm[g * w + j] = x;
    }
    __syncthreads();
    if ((int)threadIdx.x < w) {
      float x = 0.f;
      for (int q = 0; q < groups; ++q) x += grp_sm[q * w + threadIdx.x];
      part[threadIdx.x] = x;
    }
  }
  // And its Σ t² (eval: Σ u_i t_i).
  return block_t_sum<NT>(t_sm, rows, training);
}

// The on-chip backward's two loops over a block's rows of G held in shared memory (Gs, placed by
// copy_in) and the same n elements of W and dW in global memory (Wg, dWg): the cluster kernel's
// (cuda/on_chip.cu) and the grid's generic instance (cuda/on_chip_grid.cu). n < 2^31: a block's
// share fits its shared memory.

// This thread's share of ⟨G, W⟩: elements threadIdx.x, + NT, ... in order.
template <int NT, class T>
__device__ __forceinline__ float gw_thread_share(const T *Gs, const T *Wg, int n) {
  float acc = 0.f;
#pragma unroll 8
  for (int k = threadIdx.x; k < n; k += NT) acc = fmaf(to_f(Gs[k]), to_f(Wg[k]), acc);
  return acc;
}

// dW = a·G − b·(u_i v_j) (+ dW when accumulating) for the rows (w elements each) whose u_i start at
// u, as cuda/backward.cuh's apply. u and v are the layer's state, which dW never is: read through
// the read-only path, so that the stores to dW do not make the compiler load them again after each
// one. A thread's K elements of dW (accumulating) are loaded before any of them is stored (dW may
// be G or W, each element read before its own store).
template <int NT, class T>
__device__ __forceinline__ void apply_from_chip(const T *Gs, T *dWg, int n, int w, const float *u_rows,
                                                const float *v_all, Coefs c, bool accumulate) {
  const float *__restrict__ u = u_rows;
  const float *__restrict__ v = v_all;
  constexpr int K = 4;
  for (int k0 = threadIdx.x; k0 < n; k0 += K * NT) {
    float o[K];
#pragma unroll
    for (int q = 0; q < K; ++q) {
      const int k = k0 + q * NT;
      o[q] = accumulate && k < n ? to_f(dWg[k]) : 0.f;
    }
#pragma unroll
    for (int q = 0; q < K; ++q) {
      const int k = k0 + q * NT;
      if (k >= n) break;
      const int il = k / w, j = k - il * w;
      float x = c.a * to_f(Gs[k]) - c.b * (__ldg(&u[il]) * __ldg(&v[j]));
      if (accumulate) x += o[q];
      dWg[k] = from_f<T>(x);
    }
  }
}

// The row groups of block_products for rows of w elements on NT threads.
template <int NT>
__device__ __forceinline__ int row_groups(int w) {
  return w < NT / 2 ? min(kMaxRowGroups, NT / w) : 1;
}

}  // namespace
}  // namespace sn
