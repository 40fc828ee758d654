// Grouped forward: every layer of a model in 3 launches per power iteration, whatever the number
// of layers. Each kernel's grid is the concatenation of the layers' grids; a block finds its layer
// in a block -> layer table (one load), then works like the per-layer kernels:
//   rows    one pass over each row (SPEC.md, "One pass per iteration"): t_i = M_i · v, then
//           s += t_i M_iᵀ with the row taken again from registers or L1/L2. Eval: t_i and Σ u_i t_i
//           only. Bytes: numel·sizeof(T) from DRAM, plus row_blocks·w·4 of partials. Two bodies,
//           chosen per layer by the host (sn_group_entry_t.warp_k):
//           - w > 1280: a block per row, about 16 rows per block (row_blocks <= 2·SMs); v and the
//             block's partial s in shared memory (2·w floats). A row is > 1280 elements, several
//             loads per thread, so the block reduction (1 barrier, block_sums_alternating) per
//             row is amortized.
//           - w <= 1280: a warp per row, 8 rows per block at a time (row_blocks = ⌈h/8⌉ <= 2·SMs);
//             each lane loads its <= 40 elements of the row at once, a shuffle butterfly sums them,
//             and no barrier separates rows. v and the 8 warps' partial s in shared memory (9·w
//             floats). With a block per row such a layer is latency-bound: SN-GAN's 128 × 1152
//             layers were 8 blocks of 16 rows in series, each row's loads waiting for the previous
//             row's block reduction (the grouped call took 50 µs on an H200); with a warp per row
//             they are 16 blocks of one row per warp, about one load latency, for twice the
//             partials (74 KB against W's 590 KB).
//   reduce  the partials of 256 columns per block, in block order, scaled by 1 / max(‖t‖, eps);
//           the layer's last block writes max(‖t‖, eps), max(‖s‖, eps), σ (eval: σ = Σ u_i t_i).
//           (Doing that in a layer's last rows block instead, for layers with few partials, so
//           that SN-GAN's group had no reduce step, measured 6-12% slower on an H100 at 6626f15 and
//           was removed: bench/NOTES.md.)
//   commit  as cuda/commit_divide.cu, over each layer's element range.
// Or one cooperative launch that runs the three steps in one grid with grid-wide barriers between
// them (group_coop_kernel): 1 launch per forward whatever the number of iterations. Groups of up
// to 8 MiB of weights take it by default (sn_cuda_tune_group_coop in cuda/forward.cu says why);
// SPECNORM_TUNE=group_coop=0|1 forces either.
// All reductions have a fixed order, so results are bitwise reproducible.
#include <cooperative_groups.h>

#include "kernels.h"
#include "sn_device.cuh"
#include "sn_types.cuh"

namespace sn {
namespace {

constexpr int kRowsPerBlock = 16;  // rows kernel, a block per row: about this many rows per block
constexpr int kWarpMaxK = 40;      // rows kernel, a warp per row: up to 32·40 = 1280 columns
constexpr int kRedCols = kBlock;   // reduce kernel: columns per block


template <class T>
__device__ __forceinline__ float load1(const void *W, int64_t k) {
  return to_f(static_cast<const T *>(W)[k]);
}

// Element k of W holding M[i, j].
__device__ __forceinline__ int64_t index_of(const sn_group_entry_t &e, int64_t i, int64_t j) {
  if (e.A == 1) return i * e.w + j;
  const int64_t a = j / e.B;
  return (a * e.h + i) * e.B + (j - a * e.B);
}

// d = M_i · v (first == true), or s_sm += t · M_i (first == false), for the thread's columns.
template <class T>
__device__ __forceinline__ float row_pass(const sn_group_entry_t &e, int64_t i, const float *v_sm,
                                          float *s_sm, float t, bool first) {
  float d = 0.f;
  const bool vec = e.A == 1 && e.w % 4 == 0 && vec4_aligned<T>(e.W);
  if (vec) {
    const T *row = static_cast<const T *>(e.W) + i * e.w;
    for (int q = threadIdx.x; q < (int)e.w / 4; q += kBlock) {  // w <= 16384 (host/group.c)
      const float4 x = Vec4<T>::load(row + 4 * q);
      if (first) {
        const float4 v = reinterpret_cast<const float4 *>(v_sm)[q];
        d = fmaf(x.x, v.x, d);
        d = fmaf(x.y, v.y, d);
        d = fmaf(x.z, v.z, d);
        d = fmaf(x.w, v.w, d);
      } else {
        float4 &s = reinterpret_cast<float4 *>(s_sm)[q];
        s.x = fmaf(t, x.x, s.x);
        s.y = fmaf(t, x.y, s.y);
        s.z = fmaf(t, x.z, s.z);
        s.w = fmaf(t, x.w, s.w);
      }
    }
  } else {
    for (int64_t j = threadIdx.x; j < e.w; j += kBlock) {
      const float x = load1<T>(e.W, index_of(e, i, j));
      if (first) d = fmaf(x, v_sm[j], d);
      else s_sm[j] = fmaf(t, x, s_sm[j]);
    }
  }
  return d;
}

// Iteration `iter`'s input vector v into shared memory (v_sm[0..w)): the state's v first, then the
// previous iteration's s / max(‖s‖, eps); ones when a training forward restarts after a zero σ.
__device__ __forceinline__ void stage_v(const sn_group_entry_t &e, int iter, bool training,
                                        float *v_sm) {
  const float *x = iter == 0 ? e.v : e.s;
  const float rx = iter == 0 ? 1.f : 1.f / e.scal[SN_SCAL_M_S];
  const bool ones = training && iter == 0 && (reinterpret_cast<const unsigned *>(e.sigma)[3] & SN_HEALTH_RESTART);
  stage_scaled<kBlock>(v_sm, x, e.w, rx, ones);
}

template <class T>
__device__ void rows_body(const sn_group_entry_t &e, int g, int iter, bool training, float *v_sm,
                          float *s_sm) {
  stage_v(e, iter, training, v_sm);
  for (int64_t j = threadIdx.x; j < e.w; j += kBlock) s_sm[j] = 0.f;
  __syncthreads();
  float acc = 0.f;  // Σ t_i² (training) or Σ u_i t_i (eval), in thread 0
  int slot = 0;      // the row sums' parts alternate (block_sums_alternating: one barrier a row)
  for (int64_t i = g; i < e.h; i += e.row_blocks, slot ^= 1) {
    float d[1] = {row_pass<T>(e, i, v_sm, s_sm, 0.f, true)};
    block_sums_alternating<kBlock, 1>(d, slot);
    const float t = d[0];
    if (threadIdx.x == 0) {
      if (training) {
        e.t[i] = t;
        acc = fmaf(t, t, acc);
      } else {
        acc = fmaf(e.u[i], t, acc);
      }
    }
    if (training) row_pass<T>(e, i, v_sm, s_sm, t, false);
  }
  __syncthreads();  // s_sm columns were accumulated by the threads owning their float4
  if (training)
    for (int64_t j = threadIdx.x; j < e.w; j += kBlock) e.part[(int64_t)g * e.w + j] = s_sm[j];
  if (threadIdx.x == 0) e.tsq[g] = acc;
}

// A warp per row, for layers of w <= 32·K columns: lane l owns columns j = l + 32k (k < K). The
// block's 8 warps take rows g·8 + warp, then + row_blocks·8, ...; a warp issues a row's K loads
// before it needs any of them, sums the row with a butterfly of shuffles (every lane gets the same
// bits), and moves on: no block barrier between rows. v (w floats, shared by the 8 warps) and each
// warp's partial s (8·w floats, a row of them per warp) live in shared memory, so that only the K
// loaded elements are held in registers. At the end the 8 partials and the 8 Σ t² (or Σ u_i t_i)
// are added in warp order.
template <class T, int K>
__device__ void warp_rows_body(const sn_group_entry_t &e, int g, int iter, bool training, float *w_sm,
                               float *acc_sm) {
  const int warp = threadIdx.x >> 5;
  const int w = (int)e.w;
  float *v_sm = w_sm + kWarps * w, *s_sm = w_sm + warp * w;
  stage_v(e, iter, training, v_sm);
  if (training)
    for (int j = threadIdx.x & 31; j < w; j += 32) s_sm[j] = 0.f;
  __syncthreads();
  float acc = 0.f;  // Σ t_i² (training) or Σ u_i t_i (eval) of the warp's rows, in lane 0
  const int64_t step = (int64_t)e.row_blocks * kWarps;
#pragma unroll 1
  for (int64_t i = (int64_t)g * kWarps + warp; i < e.h; i += step) {
    // The lane index, read again for each row: otherwise the compiler hoists what it computes from
    // the columns (addresses, view offsets, bounds) out of the loop and holds K of each in
    // registers, which spills.
    unsigned lane_id;
#ifdef SN_EMULATION  // tests/emu_cuda/: blocks of one dimension
    lane_id = threadIdx.x & 31u;
#else
    asm volatile("mov.u32 %0, %%laneid;" : "=r"(lane_id));
#endif
    const int lane = (int)lane_id;
    float xr[K];
    if (e.A == 1) {
      const T *row = static_cast<const T *>(e.W) + i * e.w;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = lane + 32 * k;
        xr[k] = j < w ? to_f(row[j]) : 0.f;
      }
    } else {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = lane + 32 * k;
        xr[k] = j < w ? load1<T>(e.W, index_of(e, i, j)) : 0.f;
      }
    }
    float t = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = lane + 32 * k;
      if (j < w) t = fmaf(xr[k], v_sm[j], t);
    }
    t = warp_allsum(t);
    if (training) {
      if (lane == 0) {
        e.t[i] = t;
        acc = fmaf(t, t, acc);
      }
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = lane + 32 * k;
        if (j < w) s_sm[j] = fmaf(t, xr[k], s_sm[j]);
      }
    } else if (lane == 0) {
      acc = fmaf(e.u[i], t, acc);
    }
  }
  if ((threadIdx.x & 31) == 0) acc_sm[warp] = acc;
  __syncthreads();
  if (training) {
    for (int j = threadIdx.x; j < w; j += kBlock) {
      float p = w_sm[j];
#pragma unroll
      for (int q = 1; q < kWarps; ++q) p += w_sm[q * w + j];
      e.part[(int64_t)g * w + j] = p;
    }
  }
  if (threadIdx.x == 0) {
    float a = acc_sm[0];
#pragma unroll
    for (int q = 1; q < kWarps; ++q) a += acc_sm[q];
    e.tsq[g] = a;
  }
}

template <class T>
__device__ void warp_rows(const sn_group_entry_t &e, int g, int iter, bool training, float *w_sm,
                          float *acc_sm) {
  switch (e.warp_k) {
    case 2: warp_rows_body<T, 2>(e, g, iter, training, w_sm, acc_sm); break;
    case 8: warp_rows_body<T, 8>(e, g, iter, training, w_sm, acc_sm); break;
    case 24: warp_rows_body<T, 24>(e, g, iter, training, w_sm, acc_sm); break;
    default: warp_rows_body<T, kWarpMaxK>(e, g, iter, training, w_sm, acc_sm); break;
  }
}

// Each kernel's work for its block b, as a function, so that the cooperative kernel below can run
// the three steps in one grid. Every block returns from a step at the same point (the step is
// uniform over the block).
__device__ __forceinline__ void rows_step(const sn_cuda_group_t &G, int b, int iter, bool training,
                                          float *sm, float *acc_sm) {
  const int L = G.row_layer[b];
  const sn_group_entry_t e = G.entries[L];  // a copy: its fields stay in registers across stores
  if (iter >= (training ? e.n_iters : 1)) return;
  const int g = b - e.row_block0;
  if (e.warp_k) {
    switch (e.dtype) {
      case SN_DTYPE_FLOAT16: warp_rows<__half>(e, g, iter, training, sm, acc_sm); break;
      case SN_DTYPE_BFLOAT16: warp_rows<__nv_bfloat16>(e, g, iter, training, sm, acc_sm); break;
      default: warp_rows<float>(e, g, iter, training, sm, acc_sm); break;
    }
  } else {
    float *s_sm = sm + (G.max_w + 3) / 4 * 4;
    switch (e.dtype) {
      case SN_DTYPE_FLOAT16: rows_body<__half>(e, g, iter, training, sm, s_sm); break;
      case SN_DTYPE_BFLOAT16: rows_body<__nv_bfloat16>(e, g, iter, training, sm, s_sm); break;
      default: rows_body<float>(e, g, iter, training, sm, s_sm); break;
    }
  }
}

__device__ __forceinline__ void reduce_step(const sn_cuda_group_t &G, int b, int iter, bool training) {
  const int L = G.red_layer[b];
  const sn_group_entry_t e = G.entries[L];
  if (iter >= (training ? e.n_iters : 1)) return;
  const int c = b - e.red_block0;
  // Both reads first, so that their loads are in flight together: this thread's share of the row
  // blocks' Σ t² (or Σ u_i t_i), and its column of the partial s.
  const float tq = thread_sum_of(e.tsq, e.row_blocks);
  const int64_t j = (int64_t)c * kRedCols + threadIdx.x;
  const float x = training && j < e.w ? sum_partials(e.part, e.row_blocks, e.w, j) : 0.f;
  const float acc = block_sum(tq);
  if (!training) {
    if (c == 0 && threadIdx.x == 0) e.scal[SN_SCAL_SIG_DOT] = acc;
    return;
  }
  const float m_t = norm_divisor(acc, e.eps);
  float sq = j < e.w ? store_scaled(x, m_t, e.s, j) : 0.f;
  sq = block_sum(sq);
  if (threadIdx.x == 0) e.sq[c] = sq;
  if (!last_block_to_arrive(e.counter, e.red_blocks)) return;
  finish_s_norm(e.sq, e.red_blocks, e.eps, e.scal);
  if (threadIdx.x == 0) e.scal[SN_SCAL_M_T] = m_t;
}

template <class T>
__device__ void divide_range(const sn_group_entry_t &e, int64_t k0, int64_t k1, const CommitScale &cs) {
  auto scale = [&](float x) { return cs.apply(x); };
  const T *in = static_cast<const T *>(e.W);
  T *out = static_cast<T *>(e.W_sn);
  constexpr int E = kWide<T>;  // 16 bytes
  if (aligned16(e.W) && aligned16(e.W_sn)) {  // k0 is a multiple of 8, so of E
    // Pack p of the range is W[k0 + E·p ..], 4 a thread in flight (scale_packs). (One at a time, a
    // block's 4096 elements were 4 L2 round trips in series for fp32.)
    const int64_t packs = (k1 - k0) / E;
    scale_packs<kBlock, 4>(in + k0, out + k0, packs, scale);
    // The tail (< E elements at the end of the layer) goes to one thread.
    if ((int)threadIdx.x == (int)(packs % kBlock))
      for (int64_t k = k0 + E * packs; k < k1; ++k) out[k] = from_f<T>(scale(to_f(in[k])));
  } else {
    for (int64_t k = k0 + threadIdx.x; k < k1; k += kBlock) out[k] = from_f<T>(scale(to_f(in[k])));
  }
}

__device__ __forceinline__ void commit_step(const sn_cuda_group_t &G, int b, bool training) {
  const int L = G.div_layer[b];
  const sn_group_entry_t e = G.entries[L];
  const int c = b - e.div_block0;
  const CommitScale cs =
      commit_scale(e.scal[training ? SN_SCAL_SIG_S : SN_SCAL_SIG_DOT], e.sigma, e.norm_bound, e.gamma);
  if (c == 0) {
    if (cs.good && training) {  // u = t / max(‖t‖, eps), v = s / max(‖s‖, eps), 4 float4 in flight
      // per thread (8 made ptxas spill around the division's slow path)
      divide_into<4>(e.u, e.t, e.h, e.scal[SN_SCAL_M_T]);
      divide_into<4>(e.v, e.s, e.w, e.scal[SN_SCAL_M_S]);
    }
    if (threadIdx.x == 0) commit_state_word(e.sigma, cs, training);
  }
  if (!e.W_sn) return;
  const int64_t chunk = ((e.numel + e.div_blocks - 1) / e.div_blocks + 7) / 8 * 8;
  const int64_t k0 = (int64_t)c * chunk, k1 = min(e.numel, k0 + chunk);
  if (k0 >= k1) return;
  switch (e.dtype) {
    case SN_DTYPE_FLOAT16: divide_range<__half>(e, k0, k1, cs); break;
    case SN_DTYPE_BFLOAT16: divide_range<__nv_bfloat16>(e, k0, k1, cs); break;
    default: divide_range<float>(e, k0, k1, cs); break;
  }
}

// At most 80 registers, so that 3 blocks of 256 fit on a multiprocessor: enough for the warp path's
// 40 loads in flight without spilling (v and s are in shared memory for that reason), while the
// block path (46 registers on its own) keeps 3 blocks per multiprocessor instead of 5.
__global__ void __launch_bounds__(kBlock, 3) group_rows_kernel(sn_cuda_group_t G, int iter, bool training) {
  pdl_enter();
  SN_EXTERN_SHARED(float4, group_sm);
  __shared__ float acc_sm[kWarps];
  rows_step(G, blockIdx.x, iter, training, reinterpret_cast<float *>(group_sm), acc_sm);
}

__global__ void __launch_bounds__(kBlock) group_reduce_kernel(sn_cuda_group_t G, int iter, bool training) {
  pdl_enter();
  reduce_step(G, blockIdx.x, iter, training);
}

__global__ void __launch_bounds__(kBlock) group_commit_kernel(sn_cuda_group_t G, bool training) {
  pdl_enter();
  commit_step(G, blockIdx.x, training);
}

// The whole grouped forward in one cooperative launch (small groups, or group_coop=1): G.coop_blocks
// blocks, all resident at once, take the blocks of each step in turn (block b of a step runs in
// block b mod gridDim.x), with a grid-wide barrier where the separate kernels have a kernel
// boundary. Each step's blocks do exactly what they do as kernels, so the results are bitwise
// those of the three kernels. What it saves is the boundaries: a launch, the wait for the previous
// grid to drain and the new one to fill (3.5-6.4 µs per kernel for SN-GAN's, which move almost no
// DRAM bytes), against one barrier round trip.
__global__ void __launch_bounds__(kBlock, 2) group_coop_kernel(sn_cuda_group_t G, bool training) {
  pdl_enter();
  SN_EXTERN_SHARED(float4, group_sm);
  __shared__ float acc_sm[kWarps];
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  float *sm = reinterpret_cast<float *>(group_sm);
  const int iters = training ? G.max_iters : 1;
  for (int k = 0; k < iters; ++k) {
    for (int b = blockIdx.x; b < G.row_total; b += gridDim.x) {
      rows_step(G, b, k, training, sm, acc_sm);
      __syncthreads();  // the next block's v and s reuse the shared memory
    }
    grid.sync();
    for (int b = blockIdx.x; b < G.red_total; b += gridDim.x) {
      reduce_step(G, b, k, training);
      __syncthreads();
    }
    grid.sync();
  }
  for (int b = blockIdx.x; b < G.div_total; b += gridDim.x) commit_step(G, b, training);
}

// Dynamic shared memory of the rows kernel: v and s (2·w floats, each rounded up to a float4) for
// a block per row; the 8 warps' partial s and v (9·w floats) for a warp per row.
size_t rows_smem(int64_t max_w, int64_t max_warp_w) {
  const int64_t block = 2 * ((max_w + 3) / 4 * 4), warp = (kWarps + 1) * max_warp_w;
  return (size_t)(block > warp ? block : warp) * sizeof(float);
}

}  // namespace
}  // namespace sn

extern "C" int sn_cuda_group_warp_k(int64_t w) {
  for (int k : {2, 8, 24, sn::kWarpMaxK})
    if (w <= 32LL * k) return k;
  return 0;
}

extern "C" int sn_cuda_group_row_blocks(int64_t h, int warp_k, int sm_count) {
  const int64_t per = warp_k > 0 ? sn::kWarps : sn::kRowsPerBlock;
  const int64_t b = (h + per - 1) / per;
  const int64_t cap = 2LL * (sm_count > 0 ? sm_count : 1);
  return (int)(b < 1 ? 1 : (b > cap ? cap : b));
}

extern "C" int sn_cuda_group_prepare(int64_t max_w, int64_t max_warp_w, int coop_max,
                                     int *coop_blocks) {
  *coop_blocks = 0;
  const size_t smem = sn::rows_smem(max_w, max_warp_w);
  cudaError_t e = sn::allow_shared_memory(sn::group_rows_kernel, smem);
  if (e != cudaSuccess || coop_max < 1) return (int)e;
  // One cooperative launch: as many blocks as the steps have (the most of the three), at most as
  // many as can be resident at once, and only where the device runs cooperative launches. Where
  // any of this fails (the cooperative kernel's shared memory does not fit, ...) the group runs
  // as three kernels, which need none of it.
  int dev = 0, coop = 0, sms = 0, per_sm = 0;
  e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess && coop) e = sn::allow_shared_memory(sn::group_coop_kernel, smem);
  if (e == cudaSuccess && coop)
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, sn::group_coop_kernel, sn::kBlock, smem);
  if (e == cudaSuccess && coop && per_sm > 0) {
    const int64_t fit = (int64_t)per_sm * sms;
    *coop_blocks = (int)(coop_max < fit ? coop_max : fit);
  }
  sn::forget(e);
  return (int)cudaSuccess;
}

extern "C" sn_path_t sn_cuda_group_forward_path(const sn_cuda_group_t *G) {
  return G->onchip.cluster > 0 ? SN_PATH_ON_CHIP
         : G->coop_blocks > 0  ? SN_PATH_ONE_PASS_COOP
                               : SN_PATH_ONE_PASS_ROWS;
}

extern "C" int sn_cuda_group_forward(const sn_cuda_group_t *G, int training, sn_stream_t stream_handle) {
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const sn_path_t path = sn_cuda_group_forward_path(G);
  if (path == SN_PATH_ON_CHIP)
    return (int)sn::launch_on_chip(G->onchip, G->entries, nullptr, G->count, G->pdl != 0, training != 0, stream);
  if (path == SN_PATH_ONE_PASS_COOP) {
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeCooperative;
    attr.val.cooperative = 1;
    return (int)sn::launch_with(&attr, sn::group_coop_kernel, G->coop_blocks, sn::kBlock,
                                sn::rows_smem(G->max_w, G->max_warp_w), stream, *G, training != 0);
  }
  const int iters = training ? G->max_iters : 1;
  for (int k = 0; k < iters; ++k) {
    const bool tr = training != 0;
    cudaError_t e = sn::launch(G->pdl, sn::group_rows_kernel, G->row_total, sn::kBlock,
                               sn::rows_smem(G->max_w, G->max_warp_w), stream, *G, k, tr);
    if (e != cudaSuccess) return (int)e;
    e = sn::launch(G->pdl, sn::group_reduce_kernel, G->red_total, sn::kBlock, 0, stream, *G, k, tr);
    if (e != cudaSuccess) return (int)e;
  }
  return (int)sn::launch(G->pdl, sn::group_commit_kernel, G->div_total, sn::kBlock, 0, stream, *G,
                         training != 0);
}
