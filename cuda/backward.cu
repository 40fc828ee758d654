// The backward of W_sn = (W / d) · γ (SPEC.md, "Backward"), with the u, v, σ and scale of the last
// forward: ∂L/∂W = a·G − b·P⁻¹(u vᵀ), a = scale, b = a·⟨G, W⟩ / σ when σ is not detached and d
// depends on σ (no norm bound, or σ above it), else 0; ∂L/∂γ = ⟨G, W⟩ / d.
//
// Kernel 1, inner: ⟨G, W⟩ with a grid-stride loop and one partial per block; the last block to
//   finish adds the partials in block order. Bytes: 2·numel·sizeof(T). W's 16-byte packs are
//   loaded evict-first (ld.global.cs; SPECNORM_TUNE=bw_stream=0 loads them plainly): W is not
//   read again, so that L2 keeps more of G for kernel 2, as div_stream does for the forward's
//   division. H100 at d5e109c: 4096² backward bf16 58.2 → 56.2 µs, fp32 −1%, 4096 × 16384 ±0.
// Kernel 2, apply: dW = a·G − b·u_i·v_col (+ dW when accumulating). Rows of W's view layout
//   ([A][h][B], row r = a·h + i, B contiguous elements) are spread over the blocks when B >= 32, so
//   u_i is one load per row and v is read contiguously; narrower rows use an element loop with
//   integer division. Rows go last first, so the end of G, just read by kernel 1, comes from L2.
//   Bytes: numel·sizeof(T) read of G, written of dW (+ read when accumulating).
// Both kernels access 16 bytes at a time (4 floats, 8 of the 2-byte types) when aligned for it.
// Launches: 2, or 1 when σ is detached and ∂L/∂γ is not asked for; 1 with SPECNORM_TUNE=op_onchip=1
// for a layer held on chip (cuda/on_chip.cu, on_chip_backward_kernel), and with op_onchip_grid for a
// layer held on chip over the grid (cuda/on_chip_grid.cu, on_chip_grid_backward_kernel).
// The kernels' bodies are in cuda/backward.cuh, shared with the grouped backward
// (cuda/group_backward.cu), whose blocks run them as these kernels' blocks.
#include "backward.cuh"
#include "kernels.h"

namespace sn {
namespace {

template <bool WIDE, bool STREAM_W, class T>
__global__ void __launch_bounds__(kBlock) inner_kernel(InnerParams p) {
  pdl_enter();
  inner_body<WIDE, STREAM_W, T>(p, blockIdx.x, gridDim.x);
}

template <bool WIDE, class T>
__global__ void __launch_bounds__(kBlock) apply_rows_kernel(ApplyParams p) {
  pdl_enter();
  apply_rows_body<WIDE, T>(p, blockIdx.x, gridDim.x);
}

template <class T>
__global__ void __launch_bounds__(kBlock) apply_elements_kernel(ApplyParams p) {
  pdl_enter();
  apply_elements_body<T>(p, blockIdx.x, gridDim.x);
}

}  // namespace
}  // namespace sn

extern "C" int sn_cuda_backward_on_chip(const sn_cuda_plan_t *plan, const sn_cuda_backward_args_t *a) {
  const bool need_gw = !a->detach_sigma || a->dgamma;
  const sn_on_chip_t &oc = plan->onchip;
  if (!(need_gw && oc.cluster > 0 && oc.backward && (oc.grid > 0 || plan->view.A == 1))) return 0;
  return oc.grid == 0 || sn::grid_backward_instance(*plan, a->W, a->G, a->dW) >= 0;
}

extern "C" sn_path_t sn_cuda_backward_path(const sn_cuda_plan_t *plan, const sn_cuda_backward_args_t *a) {
  if (!sn_cuda_backward_on_chip(plan, a)) return SN_PATH_BACKWARD_KERNELS;
  return plan->onchip.grid > 0 ? SN_PATH_ON_CHIP_GRID : SN_PATH_ON_CHIP;
}

extern "C" sn_cuda_backward_shape_t sn_cuda_backward_shape(const sn_cuda_plan_t *plan, const void *W,
                                                          const void *G, const void *dW) {
  using namespace sn;
  const sn_cuda_plan_t &P = *plan;
  const int E = P.dtype == SN_DTYPE_FLOAT32 ? 4 : 8;  // kWide: elements of a 16-byte pack
  sn_cuda_backward_shape_t s{};
  s.inner_blocks = P.div_blocks;
  s.inner_kind = !(aligned16(G) && aligned16(W)) ? 0 : P.bw_stream ? 2 : 1;
  const int64_t rows = P.view.A * P.view.h;
  if (P.view.B >= 32) {
    // A block per row, up to 16 × 8 per SM; SPECNORM_TUNE=bw_grid=N: at most N blocks, each
    // taking rows N apart (its prologue, the coefficients from ⟨G, W⟩, once for them all).
    int64_t cap = 16LL * P.sm_count * 8;
    if (P.bw_grid > 0 && P.bw_grid < cap) cap = P.bw_grid;
    s.apply_blocks = (int)(rows < cap ? rows : cap);
    s.apply_kind = P.view.B % E == 0 && aligned16(G) && aligned16(dW) ? 2 : 1;
  } else {
    s.apply_blocks = P.div_blocks;
    s.apply_kind = 0;
  }
  return s;
}

extern "C" int sn_cuda_backward(const sn_cuda_plan_t *plan, const sn_cuda_backward_args_t *a,
                                sn_stream_t stream_handle) {
  using namespace sn;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const sn_cuda_plan_t &P = *plan;
  const bool need_gw = !a->detach_sigma || a->dgamma;
  // On chip (op_onchip=1 or op_onchip_grid, where the layer fits): one launch instead of two.
  const sn_path_t path = sn_cuda_backward_path(plan, a);
  if (path == SN_PATH_ON_CHIP_GRID) return (int)launch_on_chip_grid_backward(P, *a, stream);
  if (path == SN_PATH_ON_CHIP) return (int)launch_on_chip_backward(P, *a, stream);
  const sn_cuda_backward_shape_t sh = sn_cuda_backward_shape(plan, a->W, a->G, a->dW);
  auto run = [&](auto zero) -> cudaError_t {
    using T = decltype(zero);
    if (need_gw) {
      InnerParams ip{a->G, a->W, a->numel, P.bw_part, sn_cuda_backward_counter(plan), P.scal};
      auto *k = sh.inner_kind == 0   ? inner_kernel<false, false, T>
                : sh.inner_kind == 2 ? inner_kernel<true, true, T>
                                     : inner_kernel<true, false, T>;
      cudaError_t e = launch(P.pdl, k, sh.inner_blocks, kBlock, 0, stream, ip);
      if (e != cudaSuccess) return e;
    }
    ApplyParams ap{a->G, a->dW, P.view.A, P.view.h, P.view.B, a->u, a->v, a->sigma, P.scal,
                   P.gamma, P.norm_bound, a->accumulate != 0, a->detach_sigma != 0, need_gw,
                   a->dgamma, a->clamp_eps};
    auto *k = sh.apply_kind == 0   ? apply_elements_kernel<T>
              : sh.apply_kind == 2 ? apply_rows_kernel<true, T>
                                   : apply_rows_kernel<false, T>;
    return launch(P.pdl, k, sh.apply_blocks, kBlock, 0, stream, ap);
  };
  return (int)SN_DISPATCH_DTYPE(P.dtype, run);
}
