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
// Kernel 2, reduce: 4, 8 or 16 float4 columns per block on 64, 32 or 16 lanes along the
//   partials (plan.op_reduce_cols: by width, cuda/forward.cu); combines the partials in block
//   order, scales by 1 / max(‖t‖, eps) (so s = Mᵀ u), writes s and Σ s² per block; the last
//   block writes max(‖t‖, eps), max(‖s‖, eps) and σ = ‖s‖² / max(‖s‖, eps).
//   Bytes: op_blocks·w·4 read + w·4 written.
// Both reductions have a fixed order: results are bitwise reproducible.
// Where the plan takes it (plan.op_coop: by default on sm_90 and up, blocks of 256 threads, in the
// forwards without W_sn), both kernels' work runs as one cooperative launch instead, with the same
// results bit for bit (cuda/one_pass_coop.cu). The pieces both use are in cuda/one_pass.cuh.
#include "one_pass.cuh"
#include "sn_reference.h" /* sn_dtype_size */

namespace sn {
namespace {

template <int NT, int VPT, int RS, class T, int E, bool EVAL>
__global__ void __launch_bounds__(NT, (kRowsMinBlocks<NT, VPT, RS, E, (int)sizeof(T)>)) one_pass_rows_kernel(OnePassParams p) {
  pdl_enter();
  rows_body<NT, VPT, RS, T, E, EVAL>(p);
}

// The training rows with a ring of RING row buffers (rows_body's RING: 2, the ping-pong loop; 3;
// kRowsPingPong*, kRowsRing3 in cuda/one_pass.cuh).
template <int NT, int VPT, class T, int E, int RING>
__global__ void __launch_bounds__(NT, (kRowsPingPongMinBlocks<NT, VPT, E>)) one_pass_rows_pp_kernel(OnePassParams p) {
  pdl_enter();
  rows_body<NT, VPT, 1, T, E, false, RING>(p);
}

// CL float4 columns per block (plan.op_reduce_cols) and kBlock / CL lanes along the partials:
// reduce_columns (cuda/one_pass.cuh), then the last block's norms and σ.
template <int CL>
__global__ void __launch_bounds__(kBlock) one_pass_reduce_kernel(ReduceParams p) {
  pdl_enter();
  __shared__ float4 red[kBlock];
  const float m_t = reduce_columns(p, CL, blockIdx.x, red);
  if (!last_block_to_arrive(p.counter, gridDim.x)) return;
  finish_s_norm(p.sq, gridDim.x, p.eps, p.scal);
  if (threadIdx.x == 0) p.scal[SN_SCAL_M_T] = m_t;
}

// What one_pass_prepare asks and learns.
struct Prep {
  int cluster;         // in: blocks per cluster (1: none)
  int pp_asked;        // in: SPECNORM_TUNE's op_pp: a ring kernel for training, 0 never, 1 the ring
                       // of two where it is the default, 2 the ring of two wherever built, 3 the
                       // ring of three wherever built (bf16) and elsewhere as 1; in each case only
                       // if its blocks per multiprocessor equal the plain kernel's
  int pp;              // out: the training kernel's ring (0: the plain kernel, 2 or 3)
  int blocks_per_sm;   // out: training instance, without clusters
  int max_clusters;    // out: clusters of `cluster` blocks that fit at once (cluster > 1)
  int eval_per_sm;     // out: eval instance (launched without clusters)
};

// One instance per (threads, packs per thread, rows per step, element type, elements per pack):
// launch it (prep NULL), or prepare it: raise the shared-memory limit of its training and eval
// kernels and report their occupancy. The plan's block count comes from the training instance;
// the eval one keeps no partial s and needs fewer registers (ptxas sm_90: 4096² bf16 32 against
// 64, 4096 × 16384 bf16 56 against 120), so that more of its blocks may fit (op_eval_blocks).
// The training kernel is the ring kernel of `ring` buffers (launch; 0: the plain one), or the one
// prep asks for where its blocks per multiprocessor equal the plain kernel's (prepare; prep->pp
// says which). More blocks would be another grid (other bits) and could outgrow the cooperative
// kernel's; a query that fails leaves the plain kernel.
template <int NT, int VPT, int RS, class T, int E>
cudaError_t rows(const OnePassParams *p, int blocks, int ring, cudaStream_t stream, Prep *prep) {
  // v in shared memory, w floats (the cluster's partial s lands there too).
  const size_t smem = (size_t)p->wp * E * sizeof(float);
  auto *train = one_pass_rows_kernel<NT, VPT, RS, T, E, false>;
  auto *eval = one_pass_rows_kernel<NT, VPT, RS, T, E, true>;
  if constexpr (kRowsPingPong<NT, VPT, RS, T, E>) {
    auto *two = one_pass_rows_pp_kernel<NT, VPT, T, E, 2>;
    auto *three = two;
    if constexpr (kRowsRing3<NT, VPT, RS, T, E>) three = one_pass_rows_pp_kernel<NT, VPT, T, E, 3>;
    if (prep) {
      // Whether kernel k has the plain kernel's blocks per multiprocessor.
      auto same_occupancy = [&](decltype(train) k) {
        int plain_per_sm = 0, k_per_sm = 0;
        cudaError_t e = allow_shared_memory(train, smem);
        if (e == cudaSuccess) e = allow_shared_memory(k, smem);
        if (e == cudaSuccess) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&plain_per_sm, train, NT, smem);
        if (e == cudaSuccess) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&k_per_sm, k, NT, smem);
        forget(e);  // the plain kernel's own setup reports its errors below
        return e == cudaSuccess && k_per_sm == plain_per_sm && k_per_sm > 0;
      };
      const int asked = prep->pp_asked;
      ring = 0;
      if (kRowsRing3<NT, VPT, RS, T, E> && asked == 3 && same_occupancy(three)) ring = 3;
      if (ring == 0 && (asked == 2 || (asked != 0 && kRowsPingPongDefault<NT, VPT, RS, T, E>)) &&
          same_occupancy(two))
        ring = 2;
      prep->pp = ring;
    }
    if (ring == 2) train = two;
    else if (ring == 3) train = three;  // (ring 3 only from kRowsRing3 instances: prep, plan.op_pp)
  } else if (prep) {
    prep->pp = 0;
  }
  if (prep) {
    cudaError_t e = allow_shared_memory(eval, smem);
    if (e == cudaSuccess) e = allow_shared_memory(train, smem);
    if (e == cudaSuccess)
      e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&prep->blocks_per_sm, train, NT, smem);
    if (e == cudaSuccess)
      e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&prep->eval_per_sm, eval, NT, smem);
    if (e == cudaSuccess && prep->cluster > 1) {
      ClusterLaunch L(prep->cluster, NT, smem, prep->cluster, nullptr);
      e = cudaOccupancyMaxActiveClusters(&prep->max_clusters, train, &L.cfg);
    }
    return e;
  }
  if (p->u) return launch_with(nullptr, eval, blocks, NT, smem, stream, *p);
  if (p->cluster > 1) {
    ClusterLaunch L(blocks, NT, smem, p->cluster, stream);
    return cudaLaunchKernelEx(&L.cfg, train, *p);
  }
  return launch_with(nullptr, train, blocks, NT, smem, stream, *p);
}

// Launch (prep NULL) on `blocks` blocks, or prepare, the rows kernel the plan uses.
cudaError_t rows_dispatch(const sn_cuda_plan_t &plan, const OnePassParams *p, int blocks,
                          cudaStream_t stream, Prep *prep) {
  return with_rows_instance(plan, [&](auto inst) -> cudaError_t {
    using I = decltype(inst);
    return rows<I::NT, I::VPT, I::RS, typename I::T, I::E>(p, blocks, plan.op_pp, stream, prep);
  });
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

cudaError_t one_pass_prepare(const sn_cuda_plan_t &plan, int cluster, int pp_asked, int *pp,
                             int *blocks_per_sm, int *max_clusters, int *eval_per_sm) {
  OnePassParams p{};
  p.wp = (int)(plan.view.B / plan.op_elems);
  Prep prep{cluster, pp_asked, 0, 0, 0, 0};
  const cudaError_t e = rows_dispatch(plan, &p, 0, nullptr, &prep);
  *pp = prep.pp;
  *blocks_per_sm = prep.blocks_per_sm;
  *max_clusters = prep.max_clusters;
  *eval_per_sm = prep.eval_per_sm;
  return e;
}

cudaError_t launch_one_pass(const sn_cuda_plan_t &plan, const void *W, const float *x,
                            const float *x_div, const unsigned *health,
                            const sn_cuda_forward_args_t *commit, bool coop, bool *committed,
                            cudaStream_t stream) {
  *committed = false;
  if (coop && plan.op_coop) {  // a refusal goes back to the caller (host/layer.c drops op_coop for good)
    const cudaError_t e = launch_one_pass_coop(plan, W, x, x_div, health, commit, stream);
    *committed = e == cudaSuccess && commit != nullptr;
    // Every refusal as the one code no other launch returns, so that the caller tells it apart
    // from the other kernels' errors (sn_cuda_one_pass_coop_refused).
    return one_pass_coop_refused(e) ? cudaErrorCooperativeLaunchTooLarge : e;
  }
  const OnePassParams p = rows_params(plan, W, x, x_div, health);
  const ReduceParams r = reduce_params(plan);
  cudaError_t e = rows_dispatch(plan, &p, plan.op_blocks, stream, nullptr);
  if (e != cudaSuccess) return e;
  switch (plan.op_reduce_cols) {
    case 4: return launch(plan.pdl, one_pass_reduce_kernel<4>, r.blocks, kBlock, 0, stream, r);
    case 8: return launch(plan.pdl, one_pass_reduce_kernel<8>, r.blocks, kBlock, 0, stream, r);
    case 16: return launch(plan.pdl, one_pass_reduce_kernel<16>, r.blocks, kBlock, 0, stream, r);
    default: return cudaErrorInvalidConfiguration;
  }
}

cudaError_t launch_one_pass_eval(const sn_cuda_plan_t &plan, const void *W, const float *x,
                                 const float *x_div, const float *u, const float *u_div,
                                 cudaStream_t stream) {
  OnePassParams p{W, plan.view.h, (int)(plan.view.B / plan.op_elems), x, x_div, nullptr, nullptr,
                  nullptr, 1, plan.op_tsq, u, u_div, plan.scal, one_pass_counter(plan)};
  return rows_dispatch(plan, &p, plan.op_eval_blocks, stream, nullptr);
}

}  // namespace sn
