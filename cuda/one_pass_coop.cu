// The one-pass iteration by rows as one cooperative launch: the rows kernel's work, a grid-wide
// barrier, the reduce kernel's work (cuda/one_pass.cu), in one grid, and, for a training forward
// without W_sn (scale only, the last iteration), the commit of u, v and σ after a second barrier:
// one launch for the whole scale-only forward where the kernels take three (rows, reduce, commit)
// (and two for a training forward with W_sn, where SPECNORM_TUNE=op_coop asks).
//
// Where (plan.op_coop, cuda/forward.cu): by default on sm_90 and up, for rows instances of 256
// threads (rows of at most 1024 packs: 4096 fp32 or 8192 bf16 columns) whose whole grid fits at
// once, in the forwards without W_sn (scale only, warm-up). H100 at ab6e27f: 4096² scale-only
// fp32 42.1 → 40.4 µs, bf16 30.7 → 29.7; at 61eb446 the training forwards with W_sn (2 launches
// instead of 3) were 2-5% slower with it at 2048² fp32, 768 × 3072 and 4096² bf16, so they keep
// the kernels (SPECNORM_TUNE=op_coop=1 asks for it in every forward). The 512-thread instances
// (wider rows) are not built: at 4096 × 16384 the reduction on the rows grid (one block of 512 per
// multiprocessor, 120 registers) made scale-only 2% (fp32) and 20% (bf16) slower than the reduce
// kernel's full occupancy (bench/NOTES.md).
//
// Same results, bit for bit, as the two kernels (and the commit kernel) on the same grid: the rows
// are rows_body; the reduction's blocks are reduce_columns' blocks, run by the grid's blocks in
// turn (block b of the reduction by block b mod grid); the norms and σ are the same sums in the
// same order. Where the cooperative launch is refused (fewer blocks can be resident than the
// plan's occupancy query said: the GPU shared under MPS), the layer drops it for good and runs
// the kernels (host/layer.c), at once when no stream capture is active.
//
// PDL: by default the launch has no programmatic-serialization attribute, so it starts once the
// kernel before it has ended (its griddepcontrol.wait returns at once). SPECNORM_TUNE=op_coop=3
// gives it the attribute (as the reduce and commit kernels have with pdl): its blocks may then be
// scheduled while the kernel before still runs, and wait in griddepcontrol.wait; those that do not
// fit yet start as that kernel's blocks leave, which they all do, since it waits for nothing of
// this grid (H100 at ab6e27f: accepted by the driver, no faster than 1). Either way it lets the
// kernel after it (the commit, a programmatic dependent launch) be scheduled from its first grid
// barrier on, when every one of its blocks has started (the trigger takes effect once every block
// has issued it or exited).
#include <cooperative_groups.h>

#include "one_pass.cuh"

namespace sn {
namespace {

// The commit of the state by the cooperative kernel (on = 0: none; the commit kernel follows).
struct CoopCommit {
  float *u, *v, *sigma;  // the layer's state: h, w, {σ, 1/σ, scale, health}
  const float *gamma;
  float norm_bound;
  int64_t h, w;
  int on;
};

// Blocks per multiprocessor the instance is held to: the plan takes the launch only where it fits
// the rows kernel's grid, so it needs the rows instance's occupancy. With one pack per thread the
// rows kernel takes 40 registers (6 blocks of 256 per SM) and this one took 48 (5), so the plan
// kept the kernels at 1024² fp32, 2048² bf16, 3072 × 768 (H100 at 61eb446: 3 launches for
// scale-only); held to 6 it takes 40, with one 4-byte value spilled before the rows and read back
// after them (8 bytes for fp16 of 8 per pack; ptxas and SASS sm_90). The fp32 and bf16 instances
// of 2 and 4 packs already have the rows kernel's blocks per SM (ptxas sm_90). fp16 rows of up to
// 2048 columns (one pack of 8, or two of 4) do not: their rows kernel takes 32 registers (8
// blocks per SM) against 40 and 48 here, so the plan keeps the kernels for them.
// RING = 2: the rows through the ring of two (rows_body; where the plan's rows kernel takes it,
// plan.op_pp = 2, in the kCoopRing instances), held to 4 blocks, 64 registers as the ring-of-two
// rows kernel (unbound, 72: a block fewer; ptxas sm_90, no spill).
template <int VPT, int RING>
constexpr int kCoopMinBlocks = VPT == 1 ? 6 : RING ? 4 : 0;

template <int NT, int VPT, class T, int E, int RING>
__global__ void __launch_bounds__(NT, (kCoopMinBlocks<VPT, RING>)) one_pass_coop_kernel(OnePassParams p,
                                                                                     ReduceParams r,
                                                                                     CoopCommit c) {
  namespace cg = cooperative_groups;
  static_assert(NT == kBlock, "the reduction's blocks: kBlock threads");
  pdl_wait();
  rows_body<NT, VPT, 1, T, E, false, RING>(p);
  cg::grid_group grid = cg::this_grid();
  grid.sync();  // every partial s and Σ t² written
  pdl_trigger();

  __shared__ float4 red[NT];
  for (int b = blockIdx.x; b < r.blocks; b += gridDim.x) {
    reduce_columns(r, r.cols, b, red);
  }

  if (!c.on) {  // the last block to arrive: the norms and σ, as the reduce kernel's last block
    if (!last_block_to_arrive(r.counter, gridDim.x)) return;
    const float m_t = norm_divisor(block_sum_of(r.tsq, r.tsq_parts), r.eps);
    finish_s_norm(r.sq, r.blocks, r.eps, r.scal);
    if (threadIdx.x == 0) r.scal[SN_SCAL_M_T] = m_t;
    return;
  }

  grid.sync();  // every Σ s² partial written
  // Every block: the norms and σ from the partials (the reduce kernel's sums, in its order), then
  // its share of u = t / max(‖t‖, eps) and v = s / max(‖s‖, eps) when σ is usable, as the commit
  // kernel writes them; block 0 the state word. No block writes what another reads: σ[0] is read
  // (for the old σ) only where the new one is not usable, and then nothing writes it.
  const float tt = block_sum_of(r.tsq, r.tsq_parts);
  const float ss = block_sum_of(r.sq, r.blocks);
  const float m_t = norm_divisor(tt, r.eps), m_s = norm_divisor(ss, r.eps), sig = ss / m_s;
  const CommitScale cs = commit_scale(sig, c.sigma, c.norm_bound, c.gamma);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    r.scal[SN_SCAL_M_T] = m_t;
    r.scal[SN_SCAL_M_S] = m_s;
    r.scal[SN_SCAL_SIG_S] = sig;
    commit_state_word(c.sigma, cs, true);
  }
  if (!cs.good) return;
  const float *s = reinterpret_cast<const float *>(r.s);
  const int64_t first = (int64_t)blockIdx.x * NT + threadIdx.x, stride = (int64_t)gridDim.x * NT;
  for (int64_t i = first; i < c.h; i += stride) c.u[i] = __ldcg(&p.t[i]) / m_t;
  for (int64_t j = first; j < c.w; j += stride) c.v[j] = __ldcg(&s[j]) / m_s;
}

// The launch of instance I's kernel on `blocks` blocks in the plan's clusters (no attribute
// without them): cooperative when `cooperative` (not for the occupancy query), and with op_coop = 3
// also a programmatic dependent launch. blocks > the plan's grid only for SPECNORM_TUNE=op_coop=2
// (tests: a launch the device refuses). v in shared memory, as the rows kernel.
template <class I>
struct CoopLaunch : ClusterLaunch {
  CoopLaunch(const sn_cuda_plan_t &plan, int blocks, cudaStream_t stream, bool cooperative)
      : ClusterLaunch(blocks, I::NT, (size_t)plan.view.B * sizeof(float),
                      plan.op_cluster > 1 ? plan.op_cluster : 0, stream,
                      cooperative && plan.op_coop == 3, cooperative) {}
};

template <class I, int RING>
constexpr auto coop_kernel = one_pass_coop_kernel<I::NT, I::VPT, typename I::T, I::E, RING>;

// The instances built: one row a step, blocks of 256 threads (above).
template <class I>
constexpr bool kCoopBuilt = I::RS == 1 && I::NT == kBlock;

// The instances with the ring of two: 4096²'s 2-byte rows, two packs of 8 per thread, whose
// ring-of-two rows kernel keeps the plain one's 4 blocks per SM (ptxas sm_90). Taken by default
// since session 30 (kRowsPingPongDefault; SPECNORM_TUNE=op_pp=0 turns it off): H200 at 771ed7c,
// op_pp=2, 4096² bf16 scale-only 27.7 -> 26.3 µs (−5%). Held to 4 blocks, the fp32 <256, 4>
// spills 28 bytes and the 2-byte <256, 4, *, 8> 700-900: not built.
template <class I>
constexpr bool kCoopRing = kCoopBuilt<I> && I::VPT == 2 && I::E == 8 && sizeof(typename I::T) == 2;

// The plan's cooperative kernel for instance I: the ring of two where its rows kernel takes it.
template <class I>
auto coop_kernel_of(const sn_cuda_plan_t &plan) {
  if constexpr (kCoopRing<I>)
    if (plan.op_pp == 2) return coop_kernel<I, 2>;
  return coop_kernel<I, 0>;
}

}  // namespace

cudaError_t one_pass_coop_prepare(const sn_cuda_plan_t &plan, bool *fits) {
  *fits = false;
  int dev = 0, coop = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
  if (e != cudaSuccess || !coop) return e;
  return with_rows_instance(plan, [&](auto inst) -> cudaError_t {
    using I = decltype(inst);
    if constexpr (!kCoopBuilt<I>) {
      return cudaSuccess;  // no instance: *fits stays false
    } else {
      auto *kernel = coop_kernel_of<I>(plan);
      const size_t smem = (size_t)plan.view.B * sizeof(float);
      cudaError_t e2 = allow_shared_memory(kernel, smem);
      if (e2 != cudaSuccess) return e2;
      // Every block of the plan's grid resident at once, in its clusters.
      int64_t resident = 0;
      if (plan.op_cluster > 1) {
        CoopLaunch<I> L(plan, plan.op_cluster, nullptr, false);
        int clusters = 0;
        e2 = cudaOccupancyMaxActiveClusters(&clusters, kernel, &L.cfg);
        resident = (int64_t)clusters * plan.op_cluster;
      } else {
        int per_sm = 0;
        e2 = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, I::NT, smem);
        resident = (int64_t)per_sm * plan.sm_count;
      }
      *fits = e2 == cudaSuccess && resident >= plan.op_blocks;
      return e2;
    }
  });
}

cudaError_t launch_one_pass_coop(const sn_cuda_plan_t &plan, const void *W, const float *x,
                                 const float *x_div, const unsigned *health,
                                 const sn_cuda_forward_args_t *commit, cudaStream_t stream) {
  const OnePassParams p = rows_params(plan, W, x, x_div, health);
  const ReduceParams r = reduce_params(plan);
  CoopCommit c{};
  if (commit) {
    c = CoopCommit{commit->u, commit->v, commit->sigma, plan.gamma, plan.norm_bound,
                   plan.view.h, plan.view.A * plan.view.B, 1};
  }
  // op_coop = 2 (tests): more blocks than can ever be resident, which the device refuses.
  const int blocks = plan.op_coop == 2 ? plan.op_blocks * 1024 : plan.op_blocks;
  return with_rows_instance(plan, [&](auto inst) -> cudaError_t {
    using I = decltype(inst);
    if constexpr (!kCoopBuilt<I>) {
      return cudaErrorInvalidConfiguration;  // the plan never asks for it (one_pass_coop_prepare)
    } else {
      CoopLaunch<I> L(plan, blocks, stream, true);
      return cudaLaunchKernelEx(&L.cfg, coop_kernel_of<I>(plan), p, r, c);
    }
  });
}

bool one_pass_coop_refused(cudaError_t e) {
  return e == cudaErrorCooperativeLaunchTooLarge || e == cudaErrorInvalidClusterSize ||
         e == cudaErrorLaunchOutOfResources;
}

}  // namespace sn

// launch_one_pass returns every refusal of this launch as cudaErrorCooperativeLaunchTooLarge, which
// no other launch of a forward returns (none is cooperative): a cluster or resource error of
// another kernel is that kernel's.
extern "C" int sn_cuda_one_pass_coop_refused(const sn_cuda_plan_t *plan, int e) {
  return plan->op_coop && e == (int)cudaErrorCooperativeLaunchTooLarge;
}
