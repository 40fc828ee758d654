// One power iteration (u-first order) with a single read of W, for views whose rows are
// contiguous (A = 1): row i, once on chip, gives t_i = M_i · v and then adds t_i M_iᵀ to a
// running s, so one pass yields t = M v and s = Mᵀ M v (SPEC.md, "One pass per iteration").
//
// Kernel 1, rows: a persistent grid of op_blocks blocks; block g takes rows g, g + G, ...
//   v (scaled by 1 / *x_div) sits in shared memory; each thread holds op_vpt packs of the current
//   row and loads the next row's before reducing the current one, so a row's load overlaps the
//   previous row's block reduction. A pack is one 16-byte access (4 floats, or 8 of a 2-byte
//   type when w % 8 = 0; else 4 of them, 8 bytes). Each block writes its partial s (w floats)
//   and Σ t². Bytes: numel·sizeof(T) of W once, + op_blocks·w·4 of partials written.
//   The same kernel computes the eval σ = uᵀ M v (u != NULL): no partial s, the blocks' partial
//   dots are added in block order by the last block. Bytes: numel·sizeof(T).
// Kernel 2, reduce: 16 columns per block, 64 lanes along the partials (SPECNORM_TUNE=
//   op_reduce_cols=8|16: 32 or 64 columns, 32 or 16 lanes); combines the partials in block
//   order, scales by 1 / max(‖t‖, eps) (so s = Mᵀ u), writes s and Σ s² per block; the last
//   block writes max(‖t‖, eps), max(‖s‖, eps) and σ = ‖s‖² / max(‖s‖, eps).
//   Bytes: op_blocks·w·4 read + w·4 written.
// Both reductions have a fixed order: results are bitwise reproducible.
#include <cooperative_groups.h>

#include "kernels.h"
#include "sn_reference.h" /* sn_dtype_size */
#include "sn_device.cuh"
#include "sn_types.cuh"

namespace sn {
namespace {

struct OnePassParams {
  const void *W;    // h rows of wp packs of E elements of type T
  int64_t h;
  int wp;
  const float *x;
  const float *x_div;
  const unsigned *health;  // restart bit set: v = ones
  float *t;         // h
  float *part;      // (op_blocks / cluster) × w
  int cluster;      // blocks per thread-block cluster that add their partial s on chip (sm_90)
  float *tsq;       // op_blocks
  // Eval (u != NULL): no t, no partial s; tsq gets the block's Σ (u_i / *u_div) t_i and the last
  // block writes their sum in block order to scal[SIG_DOT] (counter: the one-pass arrivals).
  const float *u, *u_div;
  float *scal;
  unsigned *counter;
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr bool kHaveClusters = false;  // the host asks for clusters only for code built for sm_90
#else
constexpr bool kHaveClusters = true;
#endif

// Thread-block clusters (sm_90): the cluster's blocks have each put their partial s (w4 float4) in
// their shared memory `mine`; block r of the cluster adds slice r of the columns over the cluster's
// blocks in rank order (distributed shared memory) and writes it to the cluster's partial. Cuts the
// partial-s traffic (written here, read by the reduce kernel) by the cluster size.
template <int NT>
__device__ __forceinline__ void cluster_sum_partials(const OnePassParams &p, float4 *mine,
                                                     int64_t w4) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cl = cg::this_cluster();
  cl.sync();  // every block's partial is in its shared memory
  const int C = (int)cl.num_blocks(), r = (int)cl.block_rank();
  const int64_t per = (w4 + C - 1) / C, c0 = r * per, c1 = min(w4, c0 + per);
  float4 *out = reinterpret_cast<float4 *>(p.part + (int64_t)(blockIdx.x / C) * 4 * w4);
  for (int64_t c = c0 + threadIdx.x; c < c1; c += NT) {
    float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int q = 0; q < C; ++q) {
      const float4 x = cl.map_shared_rank(mine, q)[c];
      s.x += x.x;
      s.y += x.y;
      s.z += x.z;
      s.w += x.w;
    }
    out[c] = s;
  }
  cl.sync();  // no block leaves while another may still read its shared memory
#endif
}

// Rows i, i + G, ..., i + (RS - 1)·G, on chip in b (this thread's VPT packs of each; rows at or
// past h are skipped): t_r = M_r · v (one block sum for the RS rows; its barriers also mean that
// every thread of the block has read b's source), then, row after row, (training) t_r into p.t,
// t_r² into tsq and t_r M_r into acc; (eval) (u_r / *u_div) t_r into tsq. Each row's dot, block
// sum and updates are those of a step of one row, in the same order: RS changes no bit.
template <int NT, int VPT, int RS, class T, int E, bool EVAL>
__device__ __forceinline__ void rows_step(const OnePassParams &p,
                                          const typename VecN<T, E>::raw (&b)[RS][VPT], int64_t i,
                                          int64_t G, const float4 *v_sm, float ru,
                                          float (&acc)[VPT][E], float &tsq) {
  using V = VecN<T, E>;
  constexpr int F4 = E / 4;  // float4 of v per pack
  // Eval: thread 0's u_i are loaded before the rows' dots, not after their block sum, where the
  // load's round trip would hold up the block at the next barrier on every step.
  float ui[RS], d[RS];
#pragma unroll
  for (int r = 0; r < RS; ++r) {
    ui[r] = EVAL && threadIdx.x == 0 && i + r * G < p.h ? p.u[i + r * G] : 0.f;
    d[r] = 0.f;
  }
#pragma unroll
  for (int r = 0; r < RS; ++r)
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      float x[E];
      V::cvt(b[r][k], x);
      const int j = threadIdx.x + k * NT;
      if (j < p.wp) {
#pragma unroll
        for (int q = 0; q < F4; ++q) {
          const float4 v = v_sm[F4 * j + q];
          d[r] = fmaf(x[4 * q + 0], v.x, d[r]);
          d[r] = fmaf(x[4 * q + 1], v.y, d[r]);
          d[r] = fmaf(x[4 * q + 2], v.z, d[r]);
          d[r] = fmaf(x[4 * q + 3], v.w, d[r]);
        }
      }
    }
  block_sums<NT, RS>(d);
#pragma unroll
  for (int r = 0; r < RS; ++r) {
    if (i + r * G >= p.h) break;
    const float t = d[r];
    if (EVAL) {
      if (threadIdx.x == 0) tsq = fmaf(ui[r] * ru, t, tsq);
    } else {
      if (threadIdx.x == 0) p.t[i + r * G] = t;
      tsq = fmaf(t, t, tsq);
#pragma unroll
      for (int k = 0; k < VPT; ++k) {
        float x[E];
        V::cvt(b[r][k], x);
#pragma unroll
        for (int e = 0; e < E; ++e) acc[k][e] = fmaf(t, x[e], acc[k][e]);
      }
    }
  }
}

// The end of the rows kernel: the block's partial s to global memory, or (cluster > 1) to its
// own shared memory (v_sm), where the cluster's blocks add it up; its Σ t² (eval: Σ u_i t_i); and
// (eval) the last block's sum of those in block order.
template <int NT, int VPT, int E, bool EVAL>
__device__ __forceinline__ void rows_finish(const OnePassParams &p, const float (&acc)[VPT][E], float tsq,
                                            float4 *v_sm, int64_t w) {
  constexpr int F4 = E / 4;
  if (!EVAL) {
    if (!kHaveClusters && p.cluster > 1) __trap();  // the host checks the code's PTX version
    const bool on_chip = p.cluster > 1;
    if (on_chip) __syncthreads();  // every thread is done reading v_sm
    float4 *out = on_chip ? v_sm : reinterpret_cast<float4 *>(p.part + (int64_t)blockIdx.x * w);
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int j = threadIdx.x + k * NT;
      if (j < p.wp)
#pragma unroll
        for (int q = 0; q < F4; ++q)
          out[F4 * j + q] = make_float4(acc[k][4 * q], acc[k][4 * q + 1], acc[k][4 * q + 2],
                                        acc[k][4 * q + 3]);
    }
    if (on_chip) cluster_sum_partials<NT>(p, v_sm, w / 4);
  }
  if (threadIdx.x == 0) p.tsq[blockIdx.x] = tsq;
  if (!EVAL || !last_block_to_arrive(p.counter, gridDim.x)) return;
  float dot = 0.f;
  for (int g = threadIdx.x; g < (int)gridDim.x; g += NT) dot += __ldcg(&p.tsq[g]);
  dot = block_sum<NT>(dot);
  if (threadIdx.x == 0) p.scal[SN_SCAL_SIG_DOT] = dot;
}

// NT threads, VPT packs of E elements per thread and row, RS rows per step: thread k holds packs
// k, k + NT, ... of each. Block g takes rows g, g + G, ..., RS of them a step. The next step's
// packs are loaded into registers (buf[1]) while the current step's (buf[0]) are reduced: one step
// in flight per block beyond the one being reduced (the sm_90 SASS: the rotation buf[0] = buf[1]
// waits for the loads issued during the same step, so deeper rotations kept no more in flight).
// RS = 2 (SPECNORM_TUNE=op_rows=2, for rows of at most 16 elements per thread) puts two rows in
// flight and one block sum (three barriers) on two rows. What lost and was removed (bench/NOTES.md):
// two rows ahead by rotation (0-3% slower, H100 6626f15), a cp.async ring 1-3 rows ahead (2-21%
// slower, H200 e56c4b8), and rows through a shared-memory ring of 3-4 rows filled by bulk copies
// (cp.async.bulk on an mbarrier: 4096 × 16384 bf16 scale-only 16% slower, the rows 59.6% of DRAM
// peak against 69.4%, H100 d5e109c).
// Two rows a step of two 16-byte packs of a 2-byte type per thread (4096² bf16/fp16) in blocks of
// 256 threads are held to 85 registers, 3 blocks per multiprocessor (without the bound, 100
// registers and 2 blocks; ptxas sm_90): more rows in flight per multiprocessor than one row a step
// has with its 4 blocks of 64 registers. The other instances of two rows a step are left unbound:
// there the bound would raise their registers (43-64 without it, 79 with) and cut their blocks.
template <int NT, int VPT, int RS, int E, int TSIZE>
constexpr int kRowsMinBlocks = RS == 2 && NT == 256 && VPT == 2 && E == 8 && TSIZE == 2 ? 3 : 0;

template <int NT, int VPT, int RS, class T, int E, bool EVAL>
__global__ void __launch_bounds__(NT, (kRowsMinBlocks<NT, VPT, RS, E, (int)sizeof(T)>)) one_pass_rows_kernel(OnePassParams p) {
  pdl_enter();
  using V = VecN<T, E>;
  using R = typename V::raw;
  const T *W = static_cast<const T *>(p.W);
  const int64_t w = (int64_t)E * p.wp;
  extern __shared__ float4 v_sm[];
  const float ru = EVAL ? reciprocal_of(p.u_div) : 0.f;
  const int64_t G = gridDim.x;
  // This thread's packs of rows i0, i0 + G, ... (RS of them; none past h) into dst.
  auto load_rows = [&](R (&dst)[RS][VPT], int64_t i0) {
#pragma unroll
    for (int r = 0; r < RS; ++r) {
      if (i0 + r * G >= p.h) break;
      const T *row = W + (i0 + r * G) * w;
#pragma unroll
      for (int k = 0; k < VPT; ++k) {
        const int j = threadIdx.x + k * NT;
        if (j < p.wp) dst[r][k] = V::load_raw(row + E * j);
      }
    }
  };

  float acc[VPT][E];
  R buf[2][RS][VPT];  // buf[0]: the rows being reduced; buf[1], the block's next ones
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
#pragma unroll
    for (int e = 0; e < E; ++e) acc[k][e] = 0.f;
#pragma unroll
    for (int r = 0; r < RS; ++r) buf[0][r][k] = buf[1][r][k] = {};
  }
  int64_t i = blockIdx.x;
  load_rows(buf[0], i);
  // v into shared memory while the first rows' loads are in flight. v may start at any float
  // boundary (the state's v follows u): load it by floats.
  const float rx = reciprocal_of(p.x_div);
  const bool ones = p.health && (*p.health & SN_HEALTH_RESTART);
  stage_scaled<NT>(reinterpret_cast<float *>(v_sm), p.x, w, rx, ones);
  __syncthreads();
  float tsq = 0.f;
  for (; i < p.h; i += RS * G) {
    load_rows(buf[1], i + RS * G);
    rows_step<NT, VPT, RS, T, E, EVAL>(p, buf[0], i, G, v_sm, ru, acc, tsq);
#pragma unroll
    for (int r = 0; r < RS; ++r)
#pragma unroll
      for (int k = 0; k < VPT; ++k) buf[0][r][k] = buf[1][r][k];
  }
  rows_finish<NT, VPT, E, EVAL>(p, acc, tsq, v_sm, w);
}

struct ReduceParams {
  const float4 *part;
  const float *tsq;
  int parts;        // partial s (one per cluster)
  int tsq_parts;    // partial Σ t² (one per block)
  int w4;
  float4 *s;
  float *sq;  // per reduce block
  float *scal;
  unsigned *counter;
  float eps;
};

// CL float4 columns per block and kBlock / CL lanes along the partials. By default CL = 4: 64
// lanes, w / 16 blocks, so that the partials (hundreds of rows of them at 4096 columns) are read by
// many blocks at once; 16 columns per block took 8.6 µs for 4096 × 4096 on an H100 (64 blocks, 33
// dependent loads per thread). Where the partials are few (4096 × 16384 fp32: 33 clusters, so 31
// of the 64 lanes idle, and 1024 blocks that took 10.5 µs on the H200 at 89aa697 for 2 MB from
// L2, the most of what scale-only spends beyond its read), SPECNORM_TUNE=op_reduce_cols=8 or 16
// takes 8 or 16 float4 columns per block on 32 or 16 lanes: half or a quarter of the blocks. The
// partials are then added in another order (lane sums of every 32nd or 16th partial, then the
// lanes' tree): other bits, as deterministic. Not yet run on a GPU.
template <int CL>
__global__ void __launch_bounds__(kBlock) one_pass_reduce_kernel(ReduceParams p) {
  constexpr int kColLanes = CL, kPartLanes = kBlock / CL;
  pdl_enter();
  // The loads of both inputs first, so that they are in flight together: this thread's share of
  // the row blocks' Σ t² (block_sum_of's order), then its partials. The kernel is a chain of
  // global-memory round trips (6.4 µs on an H200 at 1a8f84c); this takes one off it.
  const float tq = thread_sum_of(p.tsq, p.tsq_parts);
  const int cl = threadIdx.x % kColLanes, pl = threadIdx.x / kColLanes;
  const int j = blockIdx.x * kColLanes + cl;
  float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
  if (j < p.w4) {
    for (int g = pl; g < p.parts; g += kPartLanes) {
      const float4 x = p.part[(int64_t)g * p.w4 + j];
      s.x += x.x;
      s.y += x.y;
      s.z += x.z;
      s.w += x.w;
    }
  }
  __shared__ float4 red[kBlock];
  red[threadIdx.x] = s;
  // max(‖t‖, eps) from the row blocks' partial Σ t², in block order (every block alike).
  const float m_t = fmaxf(sqrtf(block_sum(tq)), p.eps);
  for (int st = kPartLanes / 2; st > 0; st >>= 1) {
    __syncthreads();
    if (pl < st) {
      float4 &a = red[pl * kColLanes + cl];
      const float4 b = red[(pl + st) * kColLanes + cl];
      a.x += b.x;
      a.y += b.y;
      a.z += b.z;
      a.w += b.w;
    }
  }
  __syncthreads();
  float sq = 0.f;
  if (pl == 0 && j < p.w4) {
    const float r = 1.0f / m_t;
    float4 x = red[cl];
    x = make_float4(x.x * r, x.y * r, x.z * r, x.w * r);
    p.s[j] = x;
    sq = ((x.x * x.x + x.y * x.y) + (x.z * x.z + x.w * x.w));
  }
  sq = block_sum(sq);
  if (threadIdx.x == 0) p.sq[blockIdx.x] = sq;

  if (!last_block_to_arrive(p.counter, gridDim.x)) return;
  finish_s_norm(p.sq, gridDim.x, p.eps, p.scal);
  if (threadIdx.x == 0) p.scal[SN_SCAL_M_T] = m_t;
}

// What one_pass_prepare asks and learns.
struct Prep {
  int cluster;         // in: blocks per cluster (1: none)
  int blocks_per_sm;   // out: training instance, without clusters
  int max_clusters;    // out: clusters of `cluster` blocks that fit at once (cluster > 1)
};

// One instance per (threads, packs per thread, rows per step, element type, elements per pack):
// launch it (prep NULL), or prepare it: raise the shared-memory limit of its training and eval
// kernels and report the training kernel's occupancy. The plan's block count comes from the
// training instance (the eval one keeps no partial s and needs fewer registers).
template <int NT, int VPT, int RS, class T, int E>
cudaError_t rows(const OnePassParams *p, int blocks, cudaStream_t stream, Prep *prep) {
  // v in shared memory, w floats (the cluster's partial s lands there too).
  const size_t smem = (size_t)p->wp * E * sizeof(float);
  auto *train = one_pass_rows_kernel<NT, VPT, RS, T, E, false>;
  auto *eval = one_pass_rows_kernel<NT, VPT, RS, T, E, true>;
  if (prep) {
    cudaError_t e = allow_shared_memory(eval, smem);
    if (e == cudaSuccess) e = allow_shared_memory(train, smem);
    if (e == cudaSuccess)
      e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&prep->blocks_per_sm, train, NT, smem);
    if (e == cudaSuccess && prep->cluster > 1) {
      ClusterLaunch L(prep->cluster, NT, smem, prep->cluster, nullptr);
      e = cudaOccupancyMaxActiveClusters(&prep->max_clusters, train, &L.cfg);
    }
    return e;
  }
  if (p->u) {
    eval<<<blocks, NT, smem, stream>>>(*p);
  } else if (p->cluster > 1) {
    ClusterLaunch L(blocks, NT, smem, p->cluster, stream);
    return cudaLaunchKernelEx(&L.cfg, train, *p);
  } else {
    train<<<blocks, NT, smem, stream>>>(*p);
  }
  return cudaGetLastError();
}

// Rows per step: 2 where the plan asks and a row is at most 16 elements per thread (instances
// of two rows are built only for those), else 1.
template <int NT, int VPT, class T, int E>
cudaError_t rows_steps(const sn_cuda_plan_t &plan, const OnePassParams *p, cudaStream_t stream,
                       Prep *prep) {
  if constexpr (VPT * E <= kOnePassPairMaxElems) {
    if (plan.op_rows == 2) return rows<NT, VPT, 2, T, E>(p, plan.op_blocks, stream, prep);
  }
  if (plan.op_rows == 2) return cudaErrorInvalidConfiguration;  // no such instance
  return rows<NT, VPT, 1, T, E>(p, plan.op_blocks, stream, prep);
}

template <class T, int E>
cudaError_t rows_shape(const sn_cuda_plan_t &plan, const OnePassParams *p, cudaStream_t stream,
                       Prep *blocks_per_sm) {
  switch (plan.op_threads * 16 + plan.op_vpt) {
    case 256 * 16 + 1: return rows_steps<256, 1, T, E>(plan, p, stream, blocks_per_sm);
    case 256 * 16 + 2: return rows_steps<256, 2, T, E>(plan, p, stream, blocks_per_sm);
    case 256 * 16 + 4: return rows_steps<256, 4, T, E>(plan, p, stream, blocks_per_sm);
    case 512 * 16 + 1: return rows_steps<512, 1, T, E>(plan, p, stream, blocks_per_sm);
    case 512 * 16 + 2: return rows_steps<512, 2, T, E>(plan, p, stream, blocks_per_sm);
    case 512 * 16 + 4: return rows_steps<512, 4, T, E>(plan, p, stream, blocks_per_sm);
    case 512 * 16 + 8:  // 4096 packs: only 4-element packs (w <= 16384)
      if constexpr (E == 4) return rows_steps<512, 8, T, E>(plan, p, stream, blocks_per_sm);
      return cudaErrorInvalidConfiguration;
    default: return cudaErrorInvalidConfiguration;
  }
}

// Launch (blocks_per_sm NULL) or prepare the rows kernel the plan uses.
cudaError_t rows_dispatch(const sn_cuda_plan_t &plan, const OnePassParams *p, cudaStream_t stream,
                          Prep *blocks_per_sm) {
  auto run = [&](auto zero) -> cudaError_t {
    using T = decltype(zero);
    if (plan.op_elems == 8) {
      if constexpr (sizeof(T) == 2) return rows_shape<T, 8>(plan, p, stream, blocks_per_sm);
      return cudaErrorInvalidConfiguration;
    }
    return rows_shape<T, 4>(plan, p, stream, blocks_per_sm);
  };
  return SN_DISPATCH_DTYPE(plan.dtype, run);
}

unsigned *one_pass_counter(const sn_cuda_plan_t &plan) {
  return plan.counters + 1 + plan.p2_tiles + 1;
}

}  // namespace

int64_t one_pass_reduce_blocks(int64_t w4, int cols) { return (w4 + cols - 1) / cols; }

int one_pass_elems(sn_dtype_t dtype, int64_t w) {
  return dtype != SN_DTYPE_FLOAT32 && w % 8 == 0 ? 8 : 4;
}

// Threads and packs per thread for a row of wp packs (wp <= 4096).
void one_pass_shape(int wp, int *threads, int *vpt) {
  *threads = wp > 1024 ? 512 : 256;
  int v = 1;
  while (v * *threads < wp) v <<= 1;
  *vpt = v;
}

cudaError_t one_pass_prepare(const sn_cuda_plan_t &plan, int cluster, int *blocks_per_sm,
                             int *max_clusters) {
  OnePassParams p{};
  p.wp = (int)(plan.view.B / plan.op_elems);
  Prep prep{cluster, 0, 0};
  const cudaError_t e = rows_dispatch(plan, &p, nullptr, &prep);
  *blocks_per_sm = prep.blocks_per_sm;
  *max_clusters = prep.max_clusters;
  return e;
}

cudaError_t launch_one_pass(const sn_cuda_plan_t &plan, const void *W, const float *x,
                            const float *x_div, const unsigned *health, cudaStream_t stream) {
  const int w4 = (int)(plan.view.B / 4);
  OnePassParams p{W, plan.view.h, (int)(plan.view.B / plan.op_elems), x, x_div, health, plan.t,
                  plan.op_part, plan.op_cluster, plan.op_tsq, nullptr, nullptr, nullptr, nullptr};
  cudaError_t e = rows_dispatch(plan, &p, stream, nullptr);
  if (e != cudaSuccess) return e;
  ReduceParams r{reinterpret_cast<const float4 *>(plan.op_part), plan.op_tsq,
                 plan.op_blocks / plan.op_cluster, plan.op_blocks, w4,
                 reinterpret_cast<float4 *>(plan.s), plan.op_sq, plan.scal,
                 one_pass_counter(plan), plan.eps};
  const int blocks = (int)one_pass_reduce_blocks(w4, plan.op_reduce_cols);
  switch (plan.op_reduce_cols) {
    case 4: return launch(plan.pdl, one_pass_reduce_kernel<4>, blocks, kBlock, 0, stream, r);
    case 8: return launch(plan.pdl, one_pass_reduce_kernel<8>, blocks, kBlock, 0, stream, r);
    case 16: return launch(plan.pdl, one_pass_reduce_kernel<16>, blocks, kBlock, 0, stream, r);
    default: return cudaErrorInvalidConfiguration;
  }
}

cudaError_t launch_one_pass_eval(const sn_cuda_plan_t &plan, const void *W, const float *x,
                                 const float *x_div, const float *u, const float *u_div,
                                 cudaStream_t stream) {
  OnePassParams p{W, plan.view.h, (int)(plan.view.B / plan.op_elems), x, x_div, nullptr, nullptr,
                  nullptr, 1, plan.op_tsq, u, u_div, plan.scal, one_pass_counter(plan)};
  return rows_dispatch(plan, &p, stream, nullptr);
}

}  // namespace sn
