// Forward with every layer held on chip, for a group (by default on sm_90 where every layer fits)
// or a single warmed-up layer (by default the training forwards of small layers on sm_90; every
// forward with SPECNORM_TUNE=op_onchip=1, which also runs the layer's backward on chip: below;
// cuda/forward.cu has the rules and what was measured; tested on an H100 and an H200,
// bench/results/2026-11-26-*): a layer's rows are split over the blocks
// of one thread-block cluster,
// each block copies its rows of W into its shared memory once, runs every power iteration and the
// division from there, and the cluster's blocks add up their partial products through distributed
// shared memory (sm_90). One launch per forward whatever the number of layers and iterations, and
// no grid-wide dependency: each cluster is one layer, so clusters need not be resident together
// (a plain launch, not a cooperative one). W is read from global memory once and W_sn written
// once: 2 · bytes(W) where the three kernels move 3 (the issue's "keep W on chip where it fits").
//
// Per block (rank r of C, layer L = blockIdx.x / C), rows i0 = h·r/C to i1 = h·(r+1)/C:
//   load   the rows (cp.async, 16 bytes where W's addresses allow, placed in shared memory at W's
//          alignment mod 16) and v (iteration 0; ones when the health word asks for a restart),
//          eval: the rows' u_i; the state scalars the commit needs (last good σ, health, γ).
//   t      a warp per row: t_i = M_i · v (lane-strided columns, a shuffle butterfly); for w < 32,
//          L lanes per row (the power of two from w up), one element each.
//   s      a thread per column: the block's partial s_j = Σ_i t_i M_ij over its rows in order
//          (w < NT / 2: over groups of rows, then the groups in order), and its Σ t_i² (eval:
//          Σ u_i t_i), into its shared memory.
//   reduce after a cluster barrier, every block adds the C partials in rank order (the same bits
//          in every block): m_t = max(‖t‖, eps), s = Σ partials / m_t, m_s = max(‖s‖, eps),
//          σ = ‖s‖² / m_s (eval: σ = Σ u_i t_i); the next iteration's v = s / m_s stays in shared
//          memory. Partials are double-buffered, so one cluster barrier per iteration suffices.
//   commit u_i = t_i / m_t for its rows, v_j = s_j / m_s for its slice of columns, the state
//          word (rank 0), then W_sn = (W / d) · γ from shared memory (in place is safe: a block
//          writes only the rows it alone read).
// The arithmetic is that of the three kernels (cuda/group.cu) in another order, so the results
// match them to rounding, not bit for bit; every reduction has a fixed order, so they are
// bitwise reproducible.
// Which layers: rows contiguous (A = 1) and w <= kOnChipMaxW, with a cluster size C (1, 2, 4, 8;
// 1 only without clusters: sm_80, or code not built for sm_90) whose blocks' shared memory holds
// the largest layer's share (sn_cuda_on_chip_prepare): for a group, the smallest C that brings
// every block's rows under kOnChipTargetBytes, else the largest that fits; for a single layer,
// whose launch is its one cluster, the largest that fits. SN-GAN CIFAR-10 (128 × 1152 fp32 at
// most, 590 KB) takes clusters of 8 either way: 74 KB of rows per block, 88 blocks as a group.
// A single layer passes its entry by value (the kernel's parameter), a group its device table.
#include <cooperative_groups.h>

#include "kernels.h"
#include "on_chip.cuh"
#include "sn_reference.h" /* sn_dtype_size */

namespace sn {
namespace {

// Widest layer: every block adds all C partials of every column (C·w loads of distributed shared
// memory per block), which stays small up to here.
constexpr int64_t kOnChipMaxW = 4096;
constexpr int kOnChipMaxCluster = 8;  // the portable cluster size
// Above 8 the cluster queries answer "no" with an error (cudaErrorInvalidClusterSize without the
// non-portable attribute), which sn::forget would count as a failed probe (SN_DROPPED_SETUP) on
// every creation: such sizes need the attribute, and their "no" kept apart from failures.
static_assert(kOnChipMaxCluster <= 8, "clusters above the portable size: see sn::forget");
// Rows per block the cluster size aims at: a block's load, products and division scale with it.
constexpr size_t kOnChipTargetBytes = 64 * 1024;

// Shared memory of every block of the launch, at the same offsets in all of them (a block finds
// its peers' buffers at its own offsets): the rows of W (placed at W's address mod 16, so 16 +
// the largest share, rounded up to 16 bytes), then floats: v, two partial s, s (w4 each), t and
// u (rows4 each), 4 for the partial Σ t² (one per parity of the iteration), one per thread of the
// block for the row groups' partial s.
struct OnChipParams {
  const sn_group_entry_t *entries;  // the group's table (device), or NULL: the one layer below
  sn_group_entry_t one;
  int cluster;
  int w_bytes, w4, rows4;
  bool training;
};

size_t on_chip_smem(int w_bytes, int w4, int rows4, int threads) {
  return (size_t)w_bytes + sizeof(float) * (4 * (size_t)w4 + 2 * (size_t)rows4 + 4 + (size_t)threads);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ unsigned cluster_rank() { return cooperative_groups::this_cluster().block_rank(); }
__device__ __forceinline__ void cluster_sync() { cooperative_groups::this_cluster().sync(); }
__device__ __forceinline__ void cluster_arrive() { cooperative_groups::this_cluster().barrier_arrive(); }
__device__ __forceinline__ void cluster_wait() { cooperative_groups::this_cluster().barrier_wait(); }
template <class P>
__device__ __forceinline__ P *peer(P *p, unsigned rank) {
  return cooperative_groups::this_cluster().map_shared_rank(p, (int)rank);
}
#else
// Without clusters (code for sm_80) the host launches C = 1: the block is its own cluster.
__device__ __forceinline__ unsigned cluster_rank() { return 0; }
__device__ __forceinline__ void cluster_sync() { __syncthreads(); }
__device__ __forceinline__ void cluster_arrive() {}
__device__ __forceinline__ void cluster_wait() {}
template <class P>
__device__ __forceinline__ P *peer(P *p, unsigned) { return p; }
#endif

template <class T, int NT>
__device__ void layer_on_chip(const OnChipParams &p, const sn_group_entry_t &e, unsigned r, char *sm) {
  const unsigned C = (unsigned)p.cluster;
  const bool training = p.training;
  const int w = (int)e.w;
  const int64_t i0 = e.h * r / C, i1 = e.h * (r + 1) / C;
  const int rows = (int)(i1 - i0);
  const int64_t n = (int64_t)rows * w;
  const T *Wg = static_cast<const T *>(e.W) + i0 * w;
  T *Ws = reinterpret_cast<T *>(sm + (reinterpret_cast<uintptr_t>(Wg) & 15));
  float *v_sm = reinterpret_cast<float *>(sm + p.w_bytes);
  float *s_sm = v_sm + 3 * p.w4;  // s of the current iteration (partials at v_sm + w4, + 2·w4)
  float *t_sm = v_sm + 4 * p.w4, *u_sm = t_sm + p.rows4, *tsq_sm = u_sm + p.rows4, *grp_sm = tsq_sm + 4;

  // Load: W's rows, v (iteration 0) and, eval, u_i: all in flight together; the state as this
  // forward found it.
  copy_in<NT>(Ws, Wg, n);
  const StartState st = load_v_and_state<NT>(e, v_sm, u_sm, i0, rows, w, training);

  const int iters = training ? e.n_iters : 1;
  const int groups = row_groups<NT>(w);  // of rows, for s
  float m_t = 1.f, m_s = 1.f, sig = 0.f;
  for (int it = 0; it < iters; ++it) {
    const int par = it & 1;
    float *part = v_sm + (1 + par) * p.w4;
    const float q = block_products<T, NT>(Ws, rows, w, v_sm, u_sm, t_sm, part, grp_sm, training, groups);
    if (threadIdx.x == 0) tsq_sm[par] = q;
    cluster_sync();  // every block's partials are in its shared memory
    // The cluster's sums, in rank order: the same bits in every block.
    float tot = 0.f;
#pragma unroll
    for (unsigned c = 0; c < (unsigned)kOnChipMaxCluster; ++c)
      if (c < C) tot += *peer(&tsq_sm[par], c);
    if (!training) {
      sig = tot;
      break;
    }
    m_t = norm_divisor(tot, e.eps);
    const float rt = 1.f / m_t;
    float sq = 0.f;
#pragma unroll 2
    for (int j = threadIdx.x; j < w; j += NT) {
      float x = 0.f;
#pragma unroll
      for (unsigned c = 0; c < (unsigned)kOnChipMaxCluster; ++c)
        if (c < C) x += peer(part, c)[j];
      x *= rt;
      s_sm[j] = x;
      sq += __fmul_rn(x, x);
    }
    const float ssq = block_sum<NT>(sq);
    m_s = norm_divisor(ssq, e.eps);
    sig = ssq / m_s;
    if (it + 1 < iters) {
      const float rs = 1.f / m_s;
      for (int j = threadIdx.x; j < w; j += NT) v_sm[j] = s_sm[j] * rs;  // the thread's own s_j
      __syncthreads();
    }
  }
  // No block leaves while a peer may still read its shared memory: the arrival here (this block
  // reads no peer from now on), the wait at the end.
  cluster_arrive();

  const CommitScale cs = commit_scale_of(sig, st.sig_old, e.norm_bound, st.gamma);
  if (training && cs.good) {
    for (int k = threadIdx.x; k < rows; k += NT) e.u[i0 + k] = t_sm[k] / m_t;
    const int j0 = (int)((int64_t)w * r / C), j1 = (int)((int64_t)w * (r + 1) / C);
    for (int j = j0 + threadIdx.x; j < j1; j += NT) e.v[j] = s_sm[j] / m_s;
  }
  if (r == 0 && threadIdx.x == 0) commit_state_word_of(e.sigma, cs, training, st.health);
  if (e.W_sn) divide_out<NT>(static_cast<T *>(e.W_sn) + i0 * w, Ws, Wg, n, cs);
  cluster_wait();
}

// (2 blocks per SM, said explicitly: unbounded, ptxas took sm_90 code to 133 registers, 1 block
// per SM, and held sm_80 code to 64 with 104 bytes of spills; bounded, 128 and 99, no spill.
// SN-GAN's clusters of 8 take ~92 KB of shared memory per block: 2 per SM.) NT = 512
// (the default for groups and for layers of 64K elements and more: cuda/forward.cu): one block per
// SM of twice the warps, the same registers per thread. On the H200 at 89aa697 the 256-thread
// kernel ran SN-GAN with one block on each of 88 SMs, 2 warps per scheduler, 0.22 of them
// eligible: latency-bound; twice the warps per block halve each thread's share of every step
// (H100, bdc3f72: SN-GAN grouped train 16.5 -> 14.8 µs fp32).
template <int NT>
__global__ void __launch_bounds__(NT, 512 / NT) group_on_chip_kernel(OnChipParams p) {
  SN_EXTERN_SHARED(float4, on_chip_sm);
  // A group's table is written once, at its creation: read before waiting on the previous kernel.
  const sn_group_entry_t e = p.entries ? p.entries[blockIdx.x / (unsigned)p.cluster] : p.one;
  pdl_enter();
  const unsigned r = cluster_rank();
  char *sm = reinterpret_cast<char *>(on_chip_sm);
  switch (e.dtype) {
    case SN_DTYPE_FLOAT16: layer_on_chip<__half, NT>(p, e, r, sm); break;
    case SN_DTYPE_BFLOAT16: layer_on_chip<__nv_bfloat16, NT>(p, e, r, sm); break;
    default: layer_on_chip<float, NT>(p, e, r, sm); break;
  }
}

// ---- the backward of a layer on chip (op_onchip=1; cuda/backward.cu has the formula) ---------
// ∂L/∂W = a·G − b·u vᵀ with b = a·⟨G, W⟩ / σ, in one launch where the two kernels of
// cuda/backward.cu need a grid-wide sum between them: each block of the layer's cluster copies its
// rows of G into shared memory (the forward's layout: G has W's shape and type), adds up its share
// of ⟨G, W⟩ (W read once from global memory), the cluster adds the shares in rank order, and each
// block writes its rows of dW from the G it holds. Bytes: G and W read once, dW written (and read
// when accumulating): 3 · bytes(W) where the two kernels move 4. Only with ⟨G, W⟩ to compute (σ
// not detached, or ∂L/∂γ asked for): otherwise the apply kernel alone is one launch already.
struct OnChipBwParams {
  const void *W, *G;
  void *dW;
  int64_t h, w;
  int dtype;
  const float *u, *v, *sigma, *gamma;
  float norm_bound;
  bool accumulate, detach;
  float *dgamma;
  int cluster, w_bytes;
  float clamp_eps;  // as the backward's (sn_cuda_backward_args_t)
};

template <class T>
__device__ void backward_on_chip(const OnChipBwParams &p, unsigned r, char *sm) {
  const unsigned C = (unsigned)p.cluster;
  const int w = (int)p.w;
  const int64_t i0 = p.h * r / C, i1 = p.h * (r + 1) / C;
  const int rows = (int)(i1 - i0);
  const int64_t n = (int64_t)rows * w;
  const T *Gg = static_cast<const T *>(p.G) + i0 * w;
  const T *Wg = static_cast<const T *>(p.W) + i0 * w;
  T *dWg = static_cast<T *>(p.dW) + i0 * w;
  T *Gs = reinterpret_cast<T *>(sm + (reinterpret_cast<uintptr_t>(Gg) & 15));
  float *gw_sm = reinterpret_cast<float *>(sm + p.w_bytes);
  copy_in<kBlock>(Gs, Gg, n);
  __pipeline_commit();
  const float sig = p.sigma[0];  // the last forward's σ
  __pipeline_wait_prior(0);
  __syncthreads();
  // The block's share of ⟨G, W⟩ (dW may be W: every block reads its rows of W before the cluster
  // barrier and writes them after it).
  float acc = block_sum(gw_thread_share<kBlock>(Gs, Wg, (int)n));
  if (threadIdx.x == 0) gw_sm[0] = acc;
  cluster_sync();
  float gw = 0.f;
#pragma unroll
  for (unsigned c = 0; c < (unsigned)kOnChipMaxCluster; ++c)
    if (c < C) gw += *peer(gw_sm, c);
  cluster_arrive();
  // a, b and ∂L/∂γ as cuda/backward.cuh's apply bodies.
  const Coefs c = backward_coefs(sig, &gw, p.norm_bound, p.gamma, p.detach, p.clamp_eps);
  if (r == 0 && threadIdx.x == 0 && p.dgamma) *p.dgamma = backward_dgamma(sig, gw, p.norm_bound);
  // dW as cuda/backward.cuh's apply, from the G this block holds.
  apply_from_chip<kBlock>(Gs, dWg, (int)n, w, p.u + i0, p.v, c, p.accumulate);
  cluster_wait();
}

__global__ void __launch_bounds__(kBlock, 2) on_chip_backward_kernel(OnChipBwParams p) {
  SN_EXTERN_SHARED(float4, on_chip_bw_sm);
  pdl_enter();
  const unsigned r = cluster_rank();
  char *sm = reinterpret_cast<char *>(on_chip_bw_sm);
  switch (p.dtype) {
    case SN_DTYPE_FLOAT16: backward_on_chip<__half>(p, r, sm); break;
    case SN_DTYPE_BFLOAT16: backward_on_chip<__nv_bfloat16>(p, r, sm); break;
    default: backward_on_chip<float>(p, r, sm); break;
  }
}

// Shared memory of the backward: the forward's W region (G has W's shape and type), then ⟨G, W⟩'s
// share, rounded up to 16 bytes.
size_t on_chip_bw_smem(int w_bytes) { return (size_t)w_bytes + 16; }

// The layout for clusters of C: 0 bytes when a layer cannot be on chip at all.
struct Layout {
  int w_bytes = 0, w4 = 0, rows4 = 0;
  size_t bytes = 0;     // dynamic shared memory per block
  size_t share = 0;     // the largest share of W's bytes a block holds
};

Layout layout_for(const sn_group_entry_t *ent, int count, int C, int threads) {
  Layout L;
  int64_t w = 1, rows = 1;
  for (int k = 0; k < count; ++k) {
    if (ent[k].A != 1 || ent[k].w > kOnChipMaxW) return Layout{};
    const int64_t share = (ent[k].h + C - 1) / C;
    const size_t bytes = (size_t)share * (size_t)ent[k].w * sn_dtype_size((sn_dtype_t)ent[k].dtype);
    if (bytes > L.share) L.share = bytes;
    if (ent[k].w > w) w = ent[k].w;
    if (share > rows) rows = share;
  }
  if (L.share > ((size_t)1 << 30) || rows > (1 << 28)) return Layout{};  // nothing fits that
  L.w_bytes = (int)((16 + L.share + 15) / 16 * 16);
  L.w4 = (int)((w + 3) / 4 * 4);
  L.rows4 = (int)((rows + 3) / 4 * 4);
  L.bytes = on_chip_smem(L.w_bytes, L.w4, L.rows4, threads);
  return L;
}

// The forward kernel's instance for `threads` per block (512, else 256): the one choice of
// instance, for the layout's check below and for the launch.
using OnChipKernel = void (*)(OnChipParams);
OnChipKernel on_chip_kernel_for(int threads) {
  return threads == 512 ? group_on_chip_kernel<512> : group_on_chip_kernel<256>;
}

// Whether clusters of C blocks of `threads` threads with `bytes` of shared memory each can run on
// the current device (C = 1 without clusters: a block): the kernel may use that much
// (allow_shared_memory checks it against the device, less the static shared memory), and the
// occupancy query finds room.
bool schedulable(int C, size_t bytes, bool clusters, int threads) {
  const OnChipKernel kernel = on_chip_kernel_for(threads);
  cudaError_t e = allow_shared_memory(kernel, bytes);
  if (e != cudaSuccess) {
    forget(e);
    return false;
  }
  int fit = 0;
  if (clusters) {
    ClusterLaunch L(C, threads, bytes, C, nullptr);
    e = cudaOccupancyMaxActiveClusters(&fit, kernel, &L.cfg);
  } else {
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kernel, threads, bytes);
  }
  forget(e);
  return e == cudaSuccess && fit >= 1;
}

}  // namespace

// kernel<<<blocks, threads, smem, stream>>>(p) in clusters of oc.cluster blocks (plain blocks
// without clusters), as a programmatic dependent launch when pdl. (oc.refuse, tests only:
// clusters of 16, which need cudaFuncAttributeNonPortableClusterSizeAllowed, not set: the launch
// is refused, cudaErrorInvalidClusterSize by the CUDA documentation. SPECNORM_TUNE=onchip_refuse=1.)
template <class P>
cudaError_t launch_clusters(const sn_on_chip_t &oc, void (*kernel)(P), int blocks, int threads,
                            size_t smem, bool pdl, cudaStream_t stream, const P &p) {
  if (!oc.clusters) return launch(pdl, kernel, blocks, threads, smem, stream, p);
  ClusterLaunch L(blocks, threads, smem, oc.refuse ? 16 : oc.cluster, stream, pdl);
  return cudaLaunchKernelEx(&L.cfg, kernel, p);
}

cudaError_t launch_on_chip_backward(const sn_cuda_plan_t &plan, const sn_cuda_backward_args_t &a,
                                    cudaStream_t stream) {
  const sn_on_chip_t &oc = plan.onchip;
  const OnChipBwParams p{a.W, a.G, a.dW, plan.view.h, plan.view.A * plan.view.B, (int)plan.dtype,
                         a.u, a.v, a.sigma, plan.gamma, plan.norm_bound, a.accumulate != 0, a.detach_sigma != 0,
                         a.dgamma, oc.cluster, oc.w_bytes, a.clamp_eps};
  return launch_clusters(oc, on_chip_backward_kernel, oc.cluster, kBlock, on_chip_bw_smem(oc.w_bytes),
                         plan.pdl != 0, stream, p);
}

cudaError_t launch_on_chip(const sn_on_chip_t &oc, const sn_group_entry_t *entries,
                           const sn_group_entry_t *one, int count, bool pdl, bool training,
                           cudaStream_t stream) {
  OnChipParams p{};
  p.entries = entries;
  if (!entries) p.one = *one;
  p.cluster = oc.cluster;
  p.w_bytes = oc.w_bytes;
  p.w4 = oc.w4;
  p.rows4 = oc.rows4;
  p.training = training;
  const int nt = oc.threads == 512 ? 512 : 256;  // the instance and its shared memory agree
  const size_t smem = on_chip_smem(p.w_bytes, p.w4, p.rows4, nt);
  return launch_clusters(oc, on_chip_kernel_for(nt), count * oc.cluster, nt, smem, pdl, stream, p);
}

}  // namespace sn

extern "C" void sn_cuda_on_chip_prepare(const sn_group_entry_t *ent, int count, int force_cluster,
                                        int prefer_large, sn_on_chip_t *oc) {
  *oc = sn_on_chip_t{};
  const bool clusters = sn::clusters_usable();
  // Groups: the smallest cluster that brings every block's share under the target, else the
  // largest that fits. A single layer (prefer_large): the largest that fits. Only the forced size
  // with group_onchip_cluster.
  // (A size whose blocks' shared memory does not fit the device, or whose clusters cannot be
  // scheduled, e.g. under an SM limit, is passed over: schedulable.)
  // Threads per block: SPECNORM_TUNE's onchip_threads, else by size (sn_cuda_on_chip_threads), and
  // where no cluster size fits that, the other count (512-thread blocks hold a float more per
  // thread and take twice the registers).
  int best = 0, threads = 0;
  sn::Layout chosen;
  const int forced_threads = sn_cuda_tune_onchip_threads();
  const int first = forced_threads ? forced_threads
                                   : sn_cuda_on_chip_threads(count == 1 ? ent[0].h * ent[0].w : 0, !prefer_large);
  for (int nt : {first, first == 512 ? 256 : 512}) {
    if (best > 0 || (forced_threads && nt != forced_threads)) break;
    for (int C = 1; C <= (clusters ? sn::kOnChipMaxCluster : 1); C *= 2) {
      if (force_cluster > 0 && C != force_cluster) continue;
      const sn::Layout L = sn::layout_for(ent, count, C, nt);
      if (L.bytes == 0) return;  // a layer that cannot be on chip: not this path
      if (!sn::schedulable(C, L.bytes, clusters, nt)) continue;
      best = C;
      threads = nt;
      chosen = L;
      if (!prefer_large && L.share <= sn::kOnChipTargetBytes) break;
    }
  }
  if (best == 0) return;
  oc->cluster = best;
  oc->threads = threads;
  oc->modes = SN_ON_CHIP_ALL;
  oc->clusters = clusters ? 1 : 0;
  oc->w_bytes = chosen.w_bytes;
  oc->w4 = chosen.w4;
  oc->rows4 = chosen.rows4;
}

extern "C" void sn_cuda_on_chip_allow_backward(sn_on_chip_t *oc) {
  if (oc->cluster == 0) return;
  const cudaError_t e = sn::allow_shared_memory(sn::on_chip_backward_kernel, sn::on_chip_bw_smem(oc->w_bytes));
  if (e == cudaSuccess)
    oc->backward = 1;
  else
    sn::forget(e);
}

extern "C" int sn_cuda_on_chip_refused(int e) {
  // (The grid's cooperative launch, cuda/on_chip_grid.cu: cudaErrorCooperativeLaunchTooLarge, which
  // no cluster launch returns.)
  return e == (int)cudaErrorInvalidClusterSize || e == (int)cudaErrorLaunchOutOfResources ||
         e == (int)cudaErrorCooperativeLaunchTooLarge;
}
