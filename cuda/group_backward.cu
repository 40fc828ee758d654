// Grouped backward: sn_backward on every layer of a group in 2 launches whatever the number of
// layers (1 when σ is detached and no layer wants ∂L/∂γ).
//   inner  ⟨G, W⟩ of each layer that needs it, into the layer's own scratch;
//   apply  dW = a·G − b·u vᵀ (+ dW), and ∂L/∂γ where bound.
// Each kernel's grid is the concatenation of the grids that the layers' own backward kernels
// would have (sn_cuda_backward_shape); a block finds its layer in a block -> layer table (one
// load) and runs the body of that kernel (cuda/backward.cuh) as the block of that index in the
// layer's grid. So every layer's sums have sn_backward's order and its dW and ∂L/∂γ are
// sn_backward's bits; the bytes moved are the same. What the group saves is launches: a model of
// L layers takes 2 instead of 2·L, and the small layers of a model like SN-GAN's discriminator
// (most under 1 MB) are launch-bound on their own.
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

__global__ void __launch_bounds__(kBlock) group_inner_kernel(sn_cuda_group_bw_t G, bool detach) {
  pdl_enter();
  const sn_group_bw_entry_t e = G.entries[G.inner_layer[blockIdx.x]];
  if (detach && !e.dgamma) return;  // this layer needs no ⟨G, W⟩: none of its blocks arrives
  const int64_t g = (int64_t)blockIdx.x - e.inner_block0;
  switch (e.dtype) {
    case SN_DTYPE_FLOAT16: inner_as<__half>(e, g); break;
    case SN_DTYPE_BFLOAT16: inner_as<__nv_bfloat16>(e, g); break;
    default: inner_as<float>(e, g); break;
  }
}

__global__ void __launch_bounds__(kBlock) group_apply_kernel(sn_cuda_group_bw_t G, bool accumulate,
                                                             bool detach) {
  pdl_enter();
  const sn_group_bw_entry_t e = G.entries[G.apply_layer[blockIdx.x]];
  // clamp_eps 0: a group holds no 1-D weight (host/group.c), the only kind with that clamp.
  const ApplyParams p{e.G,     e.dW,    e.A,          e.h,        e.B,
                      e.u,     e.v,     e.sigma,      e.scal,     e.gamma,
                      e.norm_bound,     accumulate,   detach,     !detach || e.dgamma != nullptr,
                      e.dgamma, 0.f};
  const int64_t g = (int64_t)blockIdx.x - e.apply_block0;
  switch (e.dtype) {
    case SN_DTYPE_FLOAT16: apply_as<__half>(e, p, g); break;
    case SN_DTYPE_BFLOAT16: apply_as<__nv_bfloat16>(e, p, g); break;
    default: apply_as<float>(e, p, g); break;
  }
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

extern "C" int sn_cuda_group_backward(const sn_cuda_group_bw_t *G, int accumulate, int detach,
                                      int need_inner, sn_stream_t stream_handle) {
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (need_inner) {
    const cudaError_t e = sn::launch(G->pdl != 0, sn::group_inner_kernel, G->inner_total,
                                     sn::kBlock, 0, stream, *G, detach != 0);
    if (e != cudaSuccess) return (int)e;
  }
  return (int)sn::launch(G->pdl != 0, sn::group_apply_kernel, G->apply_total, sn::kBlock, 0, stream,
                         *G, accumulate != 0, detach != 0);
}
