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
// Kernel 2, reduce: 16 columns per block, 64 lanes along the partials; combines the partials in
//   block order, scales by 1 / max(‖t‖, eps) (so s = Mᵀ u), writes s and Σ s² per block; the last
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
  int slots;        // the bulk kernel's ring: rows of W in shared memory (op_bulk)
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

// Row i, on chip in b (this thread's VPT packs of it): t_i = M_i · v (a block sum; its barriers
// also mean that every thread of the block has read b's source), then (training) t_i into p.t,
// t_i² into tsq and t_i M_i into acc; (eval) (u_i / *u_div) t_i into tsq.
template <int NT, int VPT, class T, int E, bool EVAL>
__device__ __forceinline__ void row_step(const OnePassParams &p, const typename VecN<T, E>::raw (&b)[VPT],
                                         int64_t i, const float4 *v_sm, float ru, float (&acc)[VPT][E],
                                         float &tsq) {
  using V = VecN<T, E>;
  constexpr int F4 = E / 4;  // float4 of v per pack
  // Eval: thread 0's u_i is loaded before the row's dot, not after its block sum, where the
  // load's round trip would hold up the block at the next barrier on every row.
  const float ui = EVAL && threadIdx.x == 0 ? p.u[i] : 0.f;
  float x[VPT][E];
  float d = 0.f;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    V::cvt(b[k], x[k]);
    const int j = threadIdx.x + k * NT;
    if (j < p.wp) {
#pragma unroll
      for (int q = 0; q < F4; ++q) {
        const float4 v = v_sm[F4 * j + q];
        d = fmaf(x[k][4 * q + 0], v.x, d);
        d = fmaf(x[k][4 * q + 1], v.y, d);
        d = fmaf(x[k][4 * q + 2], v.z, d);
        d = fmaf(x[k][4 * q + 3], v.w, d);
      }
    }
  }
  const float t = block_sum<NT>(d);
  if (EVAL) {
    if (threadIdx.x == 0) tsq = fmaf(ui * ru, t, tsq);
  } else {
    if (threadIdx.x == 0) p.t[i] = t;
    tsq = fmaf(t, t, tsq);
#pragma unroll
    for (int k = 0; k < VPT; ++k)
#pragma unroll
      for (int e = 0; e < E; ++e) acc[k][e] = fmaf(t, x[k][e], acc[k][e]);
  }
}

// The end of both rows kernels: the block's partial s to global memory, or (cluster > 1) to its
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

// NT threads, VPT packs of E elements per thread and row: thread k holds packs k, k + NT, ...
// The next row's packs are loaded into registers (buf[1]) while the current one (buf[0]) is
// reduced: one row in flight per block beyond the one being reduced. The bf16 rows of
// 4096 × 16384 (1 block of 512 threads per SM, 109 registers) have 32 KB ahead per SM where fp32
// has 64 KB, and ran at 53% of the copy bandwidth against fp32's ~80% (H200, e56c4b8); yet two
// rows ahead, for 4·VPT more registers, measured 0-3% slower on an H100 (6626f15) and was
// removed, as was a cp.async variant that streamed the rows into shared memory 1-3 rows ahead
// (2-21% slower on the H200): bench/NOTES.md. (The sm_90 SASS says why two rows ahead could not
// help: the rotation buf[0] = buf[1] waits for the loads issued during the same row, so one row
// is in flight whatever the depth. one_pass_rows_bulk_kernel below keeps more.)
template <int NT, int VPT, class T, int E, bool EVAL>
__global__ void __launch_bounds__(NT) one_pass_rows_kernel(OnePassParams p) {
  pdl_enter();
  using V = VecN<T, E>;
  using R = typename V::raw;
  const T *W = static_cast<const T *>(p.W);
  const int64_t w = (int64_t)E * p.wp;
  extern __shared__ float4 v_sm[];
  const float ru = EVAL ? reciprocal_of(p.u_div) : 0.f;

  float acc[VPT][E];
  R buf[2][VPT];  // buf[0]: the row being reduced; buf[1], the block's next row
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
#pragma unroll
    for (int e = 0; e < E; ++e) acc[k][e] = 0.f;
#pragma unroll
    for (int d = 0; d < 2; ++d) buf[d][k] = {};
  }
  const int64_t G = gridDim.x;
  int64_t i = blockIdx.x;
  if (i < p.h) {
    const T *row = W + i * w;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int j = threadIdx.x + k * NT;
      if (j < p.wp) buf[0][k] = V::load_raw(row + E * j);
    }
  }
  // v into shared memory while the first row's loads are in flight. v may start at any float
  // boundary (the state's v follows u): load it by floats.
  const float rx = reciprocal_of(p.x_div);
  const bool ones = p.health && (*p.health & SN_HEALTH_RESTART);
  stage_scaled<NT>(reinterpret_cast<float *>(v_sm), p.x, w, rx, ones);
  __syncthreads();
  float tsq = 0.f;
  for (; i < p.h; i += G) {
    if (i + G < p.h) {
      const T *row = W + (i + G) * w;
#pragma unroll
      for (int k = 0; k < VPT; ++k) {
        const int j = threadIdx.x + k * NT;
        if (j < p.wp) buf[1][k] = V::load_raw(row + E * j);
      }
    }
    row_step<NT, VPT, T, E, EVAL>(p, buf[0], i, v_sm, ru, acc, tsq);
#pragma unroll
    for (int k = 0; k < VPT; ++k) buf[0][k] = buf[1][k];
  }
  rows_finish<NT, VPT, E, EVAL>(p, acc, tsq, v_sm, w);
}

// ---- rows through a shared-memory ring filled by the bulk copy engine (sm_90; op_bulk=1) -------
// Thread 0 issues each row of W as one cp.async.bulk (global -> shared, completing on the slot's
// mbarrier) `slots` - 1 rows before its turn; every thread waits on the slot's barrier, loads its
// packs from there (the same packs the register kernel loads from global memory) and runs the same
// row_step: the same sums in the same order, so on the same grid the same bits. Shared memory: v
// (w floats), then `slots` rows of W (row_bytes each), then one 8-byte mbarrier per slot. A slot
// is refilled at the top of the row after its own: every thread read it before that row's block
// sum, whose barriers thread 0 has passed. Rows need 16-byte packs (fp32, or w % 8 == 0 for the
// 2-byte types) and W 16-byte aligned (the rows path's condition). Not yet run on a GPU.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t smem_addr(const void *p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void bulk_row(void *dst, const void *src, uint32_t bytes, uint64_t *bar) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}
__device__ __forceinline__ void wait_parity(uint64_t *bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done)
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
}
#endif

template <int NT, int VPT, class T, bool EVAL>
__global__ void __launch_bounds__(NT) one_pass_rows_bulk_kernel(OnePassParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  pdl_enter();
  constexpr int E = 16 / sizeof(T);  // 16-byte packs only
  using R = typename VecN<T, E>::raw;
  const T *W = static_cast<const T *>(p.W);
  const int64_t w = (int64_t)E * p.wp;
  const uint32_t row_bytes = (uint32_t)(w * (int64_t)sizeof(T));
  const int S = p.slots;
  extern __shared__ float4 v_sm[];
  char *ring = reinterpret_cast<char *>(v_sm) + 4 * w;  // w % 4 == 0: 16-byte aligned
  uint64_t *bars = reinterpret_cast<uint64_t *>(ring + (size_t)S * row_bytes);
  const float ru = EVAL ? reciprocal_of(p.u_div) : 0.f;
  const int64_t G = gridDim.x;
  if (threadIdx.x == 0) {
    for (int q = 0; q < S; ++q)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&bars[q])) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  // The block's first S - 1 rows, in flight while v is staged.
  if (threadIdx.x == 0)
    for (int q = 0; q < S - 1 && blockIdx.x + q * G < p.h; ++q)
      bulk_row(ring + (size_t)q * row_bytes, W + (blockIdx.x + q * G) * w, row_bytes, &bars[q]);
  const float rx = reciprocal_of(p.x_div);
  const bool ones = p.health && (*p.health & SN_HEALTH_RESTART);
  stage_scaled<NT>(reinterpret_cast<float *>(v_sm), p.x, w, rx, ones);
  __syncthreads();

  float acc[VPT][E];
#pragma unroll
  for (int k = 0; k < VPT; ++k)
#pragma unroll
    for (int e = 0; e < E; ++e) acc[k][e] = 0.f;
  float tsq = 0.f;
  uint32_t parity = 0;  // bit q: the phase slot q completes next
  int slot = 0;
  for (int64_t i = blockIdx.x; i < p.h; i += G) {
    const int64_t ahead = i + (int64_t)(S - 1) * G;
    if (threadIdx.x == 0 && ahead < p.h) {
      const int q = (slot + S - 1) % S;  // the previous row's slot, read by every thread already
      // Those reads (generic proxy), ordered by the block sum's barriers, before the copy engine's
      // writes (async proxy): a fence costs little next to a row.
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      bulk_row(ring + (size_t)q * row_bytes, W + ahead * w, row_bytes, &bars[q]);
    }
    wait_parity(&bars[slot], (parity >> slot) & 1u);
    parity ^= 1u << slot;
    const R *row = reinterpret_cast<const R *>(ring + (size_t)slot * row_bytes);
    R b[VPT];
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int j = threadIdx.x + k * NT;
      b[k] = j < p.wp ? row[j] : R{};
    }
    row_step<NT, VPT, T, E, EVAL>(p, b, i, v_sm, ru, acc, tsq);
    slot = slot + 1 == S ? 0 : slot + 1;
  }
  rows_finish<NT, VPT, E, EVAL>(p, acc, tsq, v_sm, w);
#else
  __trap();  // the host selects it only for sm_90 code (device_is_sm90_or_later, cuda/forward.cu)
#endif
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

// 4 float4 columns per block and 64 lanes along the partials: w / 16 blocks, so that the partials
// (hundreds of rows of them at 4096 columns) are read by many blocks at once; 16 columns per block
// took 8.6 µs for 4096 × 4096 on an H100 (64 blocks, 33 dependent loads per thread).
constexpr int kColLanes = 4, kPartLanes = kBlock / kColLanes;

__global__ void __launch_bounds__(kBlock) one_pass_reduce_kernel(ReduceParams p) {
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

// One instance per (threads, packs per thread, element type, elements per pack): launch it, or
// prepare it.
// What one_pass_prepare asks and learns.
struct Prep {
  int cluster;         // in: blocks per cluster (1: none)
  int blocks_per_sm;   // out: training instance, without clusters
  int max_clusters;    // out: clusters of `cluster` blocks that fit at once (cluster > 1)
  int slots;           // out: the bulk kernel's ring, where the params ask for it (slots > 0)
};

// The bulk kernel's shared memory beyond v: `slots` rows of wp packs of pack_bytes, and a barrier
// per slot.
size_t bulk_ring_bytes(int64_t wp, size_t pack_bytes, int slots) {
  return (size_t)slots * ((size_t)wp * pack_bytes + sizeof(uint64_t));
}

// Ring slots next to v (w floats) in `avail` bytes of dynamic shared memory, for rows of w columns
// in packs of `elems` elements of pack_bytes: at most 4, 0 below 3 or for packs other than 16
// bytes (cp.async.bulk copies multiples of 16 bytes).
int bulk_slots(int64_t w, int elems, size_t pack_bytes, size_t avail) {
  if (pack_bytes != 16) return 0;
  const size_t v = (size_t)w * sizeof(float), per = bulk_ring_bytes(w / elems, pack_bytes, 1);
  if (avail <= v) return 0;
  const size_t fit = (avail - v) / per;
  return fit < 3 ? 0 : (int)(fit < 4 ? fit : 4);
}

// One instance per (threads, packs per thread, element type, elements per pack): launch it
// (prep NULL), or prepare it: raise the shared-memory limit of its training and eval kernels and
// report the training kernel's occupancy. The plan's block count comes from the training
// instance (the eval one keeps no partial s and needs fewer registers).
template <int NT, int VPT, class T, int E>
cudaError_t rows(const OnePassParams *p, int blocks, cudaStream_t stream, Prep *prep) {
  // v in shared memory, w floats (the cluster's partial s lands there too); the bulk kernel's
  // ring of p->slots rows and their barriers after it.
  size_t smem = (size_t)p->wp * E * sizeof(float);
  auto *train = one_pass_rows_kernel<NT, VPT, T, E, false>;
  auto *eval = one_pass_rows_kernel<NT, VPT, T, E, true>;
  int slots = p->slots;
  if constexpr (E * sizeof(T) == 16) {
    auto *bulk_train = one_pass_rows_bulk_kernel<NT, VPT, T, false>;
    auto *bulk_eval = one_pass_rows_bulk_kernel<NT, VPT, T, true>;
    if (prep && slots > 0) {  // asked for: as many as both bulk kernels' shared memory holds
      size_t a = 0, b = 0;
      cudaError_t e = dynamic_shared_limit(bulk_train, &a);
      if (e == cudaSuccess) e = dynamic_shared_limit(bulk_eval, &b);
      if (e != cudaSuccess) return e;
      slots = bulk_slots((int64_t)p->wp * E, E, sizeof(T) * E, a < b ? a : b);
    }
    if (slots > 0) {
      smem += bulk_ring_bytes(p->wp, sizeof(T) * E, slots);
      train = bulk_train;
      eval = bulk_eval;
    }
  } else {
    if (!prep && slots > 0) return cudaErrorInvalidConfiguration;
    slots = 0;  // rows of 8-byte packs: the register kernel
  }
  if (prep) {
    prep->slots = slots;
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

template <class T, int E>
cudaError_t rows_shape(const sn_cuda_plan_t &plan, const OnePassParams *p, cudaStream_t stream,
                       Prep *blocks_per_sm) {
  const int b = plan.op_blocks;
  switch (plan.op_threads * 16 + plan.op_vpt) {
    case 256 * 16 + 1: return rows<256, 1, T, E>(p, b, stream, blocks_per_sm);
    case 256 * 16 + 2: return rows<256, 2, T, E>(p, b, stream, blocks_per_sm);
    case 256 * 16 + 4: return rows<256, 4, T, E>(p, b, stream, blocks_per_sm);
    case 512 * 16 + 1: return rows<512, 1, T, E>(p, b, stream, blocks_per_sm);
    case 512 * 16 + 2: return rows<512, 2, T, E>(p, b, stream, blocks_per_sm);
    case 512 * 16 + 4: return rows<512, 4, T, E>(p, b, stream, blocks_per_sm);
    case 512 * 16 + 8:  // 4096 packs: only 4-element packs (w <= 16384)
      if constexpr (E == 4) return rows<512, 8, T, E>(p, b, stream, blocks_per_sm);
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

int64_t one_pass_reduce_blocks(int64_t w4) { return (w4 + kColLanes - 1) / kColLanes; }

int one_pass_bulk_slots(sn_dtype_t dtype, int64_t w, int elems, size_t smem) {
  return bulk_slots(w, elems, (size_t)elems * sn_dtype_size(dtype), smem);
}

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
                             int *max_clusters, int *slots_out) {
  OnePassParams p{};
  p.wp = (int)(plan.view.B / plan.op_elems);
  p.slots = plan.op_bulk;
  Prep prep{cluster, 0, 0, 0};
  const cudaError_t e = rows_dispatch(plan, &p, nullptr, &prep);
  *blocks_per_sm = prep.blocks_per_sm;
  *max_clusters = prep.max_clusters;
  if (slots_out) *slots_out = prep.slots;
  return e;
}

cudaError_t launch_one_pass(const sn_cuda_plan_t &plan, const void *W, const float *x,
                            const float *x_div, const unsigned *health, cudaStream_t stream) {
  const int w4 = (int)(plan.view.B / 4);
  OnePassParams p{W, plan.view.h, (int)(plan.view.B / plan.op_elems), x, x_div, health, plan.t,
                  plan.op_part, plan.op_cluster, plan.op_tsq, nullptr, nullptr, nullptr, nullptr,
                  plan.op_bulk};
  cudaError_t e = rows_dispatch(plan, &p, stream, nullptr);
  if (e != cudaSuccess) return e;
  ReduceParams r{reinterpret_cast<const float4 *>(plan.op_part), plan.op_tsq,
                 plan.op_blocks / plan.op_cluster, plan.op_blocks, w4,
                 reinterpret_cast<float4 *>(plan.s), plan.op_sq, plan.scal,
                 one_pass_counter(plan), plan.eps};
  return launch(plan.pdl, one_pass_reduce_kernel, (int)one_pass_reduce_blocks(w4), kBlock, 0,
                stream, r);
}

cudaError_t launch_one_pass_eval(const sn_cuda_plan_t &plan, const void *W, const float *x,
                                 const float *x_div, const float *u, const float *u_div,
                                 cudaStream_t stream) {
  OnePassParams p{W, plan.view.h, (int)(plan.view.B / plan.op_elems), x, x_div, nullptr, nullptr,
                  nullptr, 1, plan.op_tsq, u, u_div, plan.scal, one_pass_counter(plan), plan.op_bulk};
  return rows_dispatch(plan, &p, stream, nullptr);
}

}  // namespace sn
