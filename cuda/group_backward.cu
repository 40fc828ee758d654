// Grouped backward: sn_backward on every layer of a group in 2 launches whatever the number of
// layers (1 when σ is detached and no layer wants ∂L/∂γ), or both steps as one cooperative launch
// (group_backward_coop_kernel: where SPECNORM_TUNE=group_bw_coop=1, or group_coop=1, asks; the
// two kernels are the default since they measured faster, sn_cuda_tune_group_backward_coop).
//   inner  ⟨G, W⟩ of each layer that needs it, into the layer's own scratch;
//   apply  dW = a·G − b·u vᵀ (+ dW), and ∂L/∂γ where bound.
// Each kernel's grid is the concatenation of the grids that the layers' own backward kernels
// would have (sn_cuda_backward_shape); a block finds its layer in a block -> layer table (one
// load) and runs the body of that kernel (cuda/backward.cuh) as the block of that index in the
// layer's grid. So every layer's sums have sn_backward's order and its dW and ∂L/∂γ are
// sn_backward's bits; the bytes moved are the same. What the group saves is launches: a model of
// L layers takes 1 or 2 instead of 2·L, and the small layers of a model like SN-GAN's
// discriminator (most under 1 MB) are launch-bound on their own.
#include <cooperative_groups.h>

#include "backward.cuh"
#include "kernels.h"

namespace sn {
namespace {

template <class T>
__device__ __forceinline__ void inner_as(const sn_group_bw_entry_t &e, int64_t g) {
  const InnerParams p{e.G, e.W, e.numel, e.part, e.counter, e.scal};
  const int64_t nb = e.shape.inner_blocks;
  switch (e.shape.inner_kind) {
    case 0: inner_body<false, false, T>(p, g, nb); break;
    case 2: inner_body<true, true, T>(p, g, nb); break;
    default: inner_body<true, false, T>(p, g, nb); break;
  }
}

template <class T>
__device__ __forceinline__ void apply_as(const sn_group_bw_entry_t &e, const ApplyParams &p, int64_t g) {
  const int64_t nb = e.shape.apply_blocks;
  switch (e.shape.apply_kind) {
    case 0: apply_elements_body<T>(p, g, nb); break;
    case 2: apply_rows_body<true, T>(p, g, nb); break;
    default: apply_rows_body<false, T>(p, g, nb); break;
  }
}

// Block b of the inner kernel's grid: its layer's block b - inner_block0.
__device__ __forceinline__ void inner_step(const sn_cuda_group_bw_t &G, int b, bool detach) {
  const sn_group_bw_entry_t e = G.entries[G.inner_layer[b]];
  if (detach && !e.dgamma) return;  // this layer needs no ⟨G, W⟩: none of its blocks arrives
  const int64_t g = (int64_t)b - e.inner_block0;
  switch (e.dtype) {
    case SN_DTYPE_FLOAT16: inner_as<__half>(e, g); break;
    case SN_DTYPE_BFLOAT16: inner_as<__nv_bfloat16>(e, g); break;
    default: inner_as<float>(e, g); break;
  }
}

// Block b of the apply kernel's grid.
__device__ __forceinline__ void apply_step(const sn_cuda_group_bw_t &G, int b, bool accumulate,
                                           bool detach) {
  const sn_group_bw_entry_t e = G.entries[G.apply_layer[b]];
  // clamp_eps 0: a group holds no 1-D weight (host/group.c), the only kind with that clamp.
  const ApplyParams p{e.G,     e.dW,    e.A,          e.h,        e.B,
                      e.u,     e.v,     e.sigma,      e.scal,     e.gamma,
                      e.norm_bound,     accumulate,   detach,     !detach || e.dgamma != nullptr,
                      e.dgamma, 0.f};
  const int64_t g = (int64_t)b - e.apply_block0;
  switch (e.dtype) {
    case SN_DTYPE_FLOAT16: apply_as<__half>(e, p, g); break;
    case SN_DTYPE_BFLOAT16: apply_as<__nv_bfloat16>(e, p, g); break;
    default: apply_as<float>(e, p, g); break;
  }
}

// 8 blocks of 256 per multiprocessor, as the layers' own inner kernels (ptxas: 32 registers, no
// spill; unbound it took 52, 4 blocks). The apply kernel keeps 64 (4 blocks): bound to 5 or 6
// blocks it spills 16-144 bytes; the layers' own apply kernels take 28-40 (6-8 blocks).
__global__ void __launch_bounds__(kBlock, 8) group_inner_kernel(sn_cuda_group_bw_t G, bool detach) {
  pdl_enter();
  inner_step(G, blockIdx.x, detach);
}

__global__ void __launch_bounds__(kBlock) group_apply_kernel(sn_cuda_group_bw_t G, bool accumulate,
                                                             bool detach) {
  pdl_enter();
  apply_step(G, blockIdx.x, accumulate, detach);
}

// Both steps in one cooperative launch (G.coop_blocks > 0): the resident blocks take the inner
// kernel's blocks in turn (block b in block b mod gridDim.x), then, after a grid-wide barrier, the
// apply kernel's. Each runs exactly what it runs as a kernel, so the bits are the two kernels'.
// What it saves is a kernel boundary (a launch, a drain and a fill: 3.5-6.4 µs for the grouped
// forward's small kernels on an H100, bench/NOTES.md) against one barrier. At least 3 blocks per
// multiprocessor, 80 registers: without the bound, ptxas gave sm_90 64 registers and 60 bytes of
// spills (sm_80: 80, none).
__global__ void __launch_bounds__(kBlock, 3) group_backward_coop_kernel(sn_cuda_group_bw_t G, bool accumulate,
                                                                     bool detach, bool need_inner) {
  pdl_enter();
  namespace cg = cooperative_groups;
  if (need_inner) {
    for (int b = blockIdx.x; b < G.inner_total; b += gridDim.x) {
      inner_step(G, b, detach);
      __syncthreads();  // the block sum's and the arrival's shared memory, for the next block
    }
    cg::this_grid().sync();
  }
  for (int b = blockIdx.x; b < G.apply_total; b += gridDim.x) apply_step(G, b, accumulate, detach);
}

}  // namespace
}  // namespace sn

extern "C" void sn_cuda_group_backward_entry(const sn_cuda_plan_t *plan, const float *u,
                                             const float *v, const float *sigma, const void *W,
                                             const void *G, void *dW, float *dgamma,
                                             sn_group_bw_entry_t *e) {
  *e = sn_group_bw_entry_t{};
  e->W = W;
  e->G = G;
  e->dW = dW;
  e->dgamma = dgamma;
  e->dtype = (int)plan->dtype;
  e->A = plan->view.A;
  e->h = plan->view.h;
  e->B = plan->view.B;
  e->numel = e->A * e->h * e->B;
  e->u = u;
  e->v = v;
  e->sigma = sigma;
  e->gamma = plan->gamma;
  e->norm_bound = plan->norm_bound;
  e->part = plan->bw_part;
  e->scal = plan->scal;
  e->counter = sn_cuda_backward_counter(plan);
  e->shape = sn_cuda_backward_shape(plan, W, G, dW);
}

extern "C" void sn_cuda_group_backward_prepare(int coop_max, int *coop_blocks) {
  *coop_blocks = 0;
  if (coop_max < 1) return;
  int dev = 0, coop = 0, sms = 0, per_sm = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess && coop)
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, sn::group_backward_coop_kernel, sn::kBlock, 0);
  if (e != cudaSuccess) {  // not an error: the two kernels need none of this
    sn::forget(e);
    return;
  }
  if (coop && per_sm > 0) {
    const int64_t fit = (int64_t)per_sm * sms;
    *coop_blocks = (int)(coop_max < fit ? coop_max : fit);
  }
}

extern "C" sn_path_t sn_cuda_group_backward_path(const sn_cuda_group_bw_t *G) {
  return G->coop_blocks > 0 ? SN_PATH_BACKWARD_COOP : SN_PATH_BACKWARD_KERNELS;
}

extern "C" int sn_cuda_group_backward(const sn_cuda_group_bw_t *G, int accumulate, int detach,
                                      int need_inner, sn_stream_t stream_handle) {
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (sn_cuda_group_backward_path(G) == SN_PATH_BACKWARD_COOP) {
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeCooperative;
    attr.val.cooperative = 1;
    return (int)sn::launch_with(&attr, sn::group_backward_coop_kernel, G->coop_blocks, sn::kBlock, 0,
                                stream, *G, accumulate != 0, detach != 0, need_inner != 0);
  }
  if (need_inner) {
    const cudaError_t e = sn::launch(G->pdl != 0, sn::group_inner_kernel, G->inner_total,
                                     sn::kBlock, 0, stream, *G, detach != 0);
    if (e != cudaSuccess) return (int)e;
  }
  return (int)sn::launch(G->pdl != 0, sn::group_apply_kernel, G->apply_total, sn::kBlock, 0, stream,
                         *G, accumulate != 0, detach != 0);
}
