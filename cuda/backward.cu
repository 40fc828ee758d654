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
// for a layer held on chip (cuda/on_chip.cu, on_chip_backward_kernel).
#include "kernels.h"
#include "sn_device.cuh"
#include "sn_types.cuh"

namespace sn {
namespace {

struct InnerParams {
  const void *G, *W;
  int64_t n;
  float *part;
  unsigned *counter;
  float *scal;
};

template <bool WIDE, bool STREAM_W, class T>
__global__ void __launch_bounds__(kBlock) inner_kernel(InnerParams p) {
  pdl_enter();
  const T *G = static_cast<const T *>(p.G), *W = static_cast<const T *>(p.W);
  const int64_t tid = (int64_t)blockIdx.x * kBlock + threadIdx.x;
  const int64_t stride = (int64_t)gridDim.x * kBlock;
  constexpr int E = kWide<T>;
  using V = VecN<T, E>;
  float acc = 0.f;
  int64_t k0 = 0;
  if (WIDE) {
    const int64_t nq = p.n / E;
    for (int64_t k = tid; k < nq; k += stride) {
      float g[E], w[E];
      V::cvt(V::load_raw(G + E * k), g);
      V::cvt(STREAM_W ? load_streaming<typename V::raw>(W + E * k) : V::load_raw(W + E * k), w);
#pragma unroll
      for (int e = 0; e < E; ++e) acc = fmaf(g[e], w[e], acc);
    }
    k0 = nq * E;
  }
  for (int64_t k = k0 + tid; k < p.n; k += stride) acc = fmaf(to_f(G[k]), to_f(W[k]), acc);
  acc = block_sum(acc);
  if (threadIdx.x == 0) p.part[blockIdx.x] = acc;
  if (!last_block_to_arrive(p.counter, gridDim.x)) return;
  const float tot = block_sum_of(p.part, gridDim.x);
  if (threadIdx.x == 0) p.scal[SN_SCAL_GW] = tot;
}

struct ApplyParams {
  const void *G;
  void *dW;
  int64_t A, h, B;
  const float *u, *v, *sigma, *scal, *gamma;
  float norm_bound;
  bool accumulate, detach, have_gw;
  float *dgamma;
  float clamp_eps;  // > 0: σ <= clamp_eps is a 1-D weight's eps clamp (no σ term)
};

// a and b of the formula above, from the state and ⟨G, W⟩.
__device__ __forceinline__ Coefs coefs(const ApplyParams &p) {
  return backward_coefs(p.sigma[0], p.scal + SN_SCAL_GW, p.norm_bound, p.gamma, p.detach, p.clamp_eps);
}

// ∂L/∂γ = ⟨G, W⟩ / d, written once (block 0, thread 0) when asked for.
__device__ __forceinline__ void write_dgamma(const ApplyParams &p) {
  if (blockIdx.x != 0 || threadIdx.x != 0 || !p.dgamma) return;
  const float sig = p.sigma[0];
  const float d = sn_divisor(sig, p.norm_bound);
  *p.dgamma = sig > 0.f && p.have_gw ? p.scal[SN_SCAL_GW] / d : 0.f;
}

template <class T>
__device__ __forceinline__ float apply1(const ApplyParams &p, const T *G, T *dW, int64_t k, Coefs c,
                                        float uv) {
  float x = c.a * to_f(G[k]) - c.b * uv;
  if (p.accumulate) x += to_f(dW[k]);
  return x;
}

// Rows are taken last first: the inner kernel just read G front to back, so G's last rows are
// the ones still in L2 (as in cuda/commit_divide.cu).
// dW may be G: each load waits for the previous pack's store, so a thread has one pack in flight;
// a 4096-column row is 2 packs per thread in bf16 (4 in fp32), loaded and stored in turn. (H200,
// e56c4b8: the 4096² backward at 79.7% of the copy bandwidth in fp32, 68.8% in bf16, where
// 4096 × 16384 ran at 94.7% and 89.0%.) Loading 2 or 4 packs per thread before storing any made
// no difference on an H100 (6626f15: within ±1% at 4096² and 4096 × 16384, 3% slower at 4096²
// bf16 with 4) and was removed (bench/NOTES.md).
template <bool WIDE, class T>
__global__ void __launch_bounds__(kBlock) apply_rows_kernel(ApplyParams p) {
  pdl_enter();
  const T *G = static_cast<const T *>(p.G);
  T *dW = static_cast<T *>(p.dW);
  const Coefs c = coefs(p);
  write_dgamma(p);
  constexpr int E = kWide<T>;
  using V = VecN<T, E>;
  const int64_t rows = p.A * p.h;
  for (int64_t rr = blockIdx.x; rr < rows; rr += gridDim.x) {
    const int64_t r = rows - 1 - rr;
    const int64_t a = r / p.h, i = r - a * p.h;
    const float ui = p.u[i];
    const float *v = p.v + a * p.B;
    T *drow = dW + r * p.B;
    const T *grow = G + r * p.B;
    int64_t b0 = 0;
    if (WIDE) {
      const int64_t nq = p.B / E;
      for (int64_t q = threadIdx.x; q < nq; q += kBlock) {
        // The pack's loads of G (and dW) first, then its arithmetic and store. (v, shared by
        // every row, is read where it is used: from L1.)
        const typename V::raw g = V::load_raw(grow + E * q);
        typename V::raw o = {};
        if (p.accumulate) o = V::load_raw(drow + E * q);
        float x[E];
        V::cvt(g, x);
#pragma unroll
        for (int f = 0; f < E / 4; ++f) {
          const float4 vv = *reinterpret_cast<const float4 *>(v + E * q + 4 * f);
          x[4 * f + 0] = c.a * x[4 * f + 0] - c.b * (ui * vv.x);
          x[4 * f + 1] = c.a * x[4 * f + 1] - c.b * (ui * vv.y);
          x[4 * f + 2] = c.a * x[4 * f + 2] - c.b * (ui * vv.z);
          x[4 * f + 3] = c.a * x[4 * f + 3] - c.b * (ui * vv.w);
        }
        if (p.accumulate) {
          float d[E];
          V::cvt(o, d);
#pragma unroll
          for (int e = 0; e < E; ++e) x[e] += d[e];
        }
        V::store(drow + E * q, x);
      }
      b0 = nq * E;
    }
    for (int64_t b = b0 + threadIdx.x; b < p.B; b += kBlock)
      drow[b] = from_f<T>(apply1(p, grow, drow, b, c, ui * v[b]));
  }
}

template <class T>
__global__ void __launch_bounds__(kBlock) apply_elements_kernel(ApplyParams p) {
  pdl_enter();
  const T *G = static_cast<const T *>(p.G);
  T *dW = static_cast<T *>(p.dW);
  const Coefs c = coefs(p);
  write_dgamma(p);
  const int64_t n = p.A * p.h * p.B;
  for (int64_t k = (int64_t)blockIdx.x * kBlock + threadIdx.x; k < n; k += (int64_t)gridDim.x * kBlock) {
    const int64_t r = k / p.B, b = k - r * p.B;
    const int64_t a = r / p.h, i = r - a * p.h;
    dW[k] = from_f<T>(apply1(p, G, dW, k, c, p.u[i] * p.v[a * p.B + b]));
  }
}

}  // namespace
}  // namespace sn

extern "C" int sn_cuda_backward_on_chip(const sn_cuda_plan_t *plan, const sn_cuda_backward_args_t *a) {
  const bool need_gw = !a->detach_sigma || a->dgamma;
  return need_gw && plan->onchip.cluster > 0 && plan->onchip.backward && plan->view.A == 1;
}

extern "C" int sn_cuda_backward(const sn_cuda_plan_t *plan, const sn_cuda_backward_args_t *a,
                                sn_stream_t stream_handle) {
  using namespace sn;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const sn_cuda_plan_t &P = *plan;
  const bool need_gw = !a->detach_sigma || a->dgamma;
  // On chip (op_onchip=1, where the layer fits): one launch instead of two.
  if (sn_cuda_backward_on_chip(plan, a)) return (int)launch_on_chip_backward(P, *a, stream);
  auto run = [&](auto zero) -> cudaError_t {
    using T = decltype(zero);
    if (need_gw) {
      InnerParams ip{a->G, a->W, a->numel, P.bw_part, P.counters + P.p2_tiles + 3, P.scal};
      const bool wide = aligned16(a->G) && aligned16(a->W);
      auto *k = !wide ? inner_kernel<false, false, T>
                      : P.bw_stream ? inner_kernel<true, true, T> : inner_kernel<true, false, T>;
      cudaError_t e = launch(P.pdl, k, P.div_blocks, kBlock, 0, stream, ip);
      if (e != cudaSuccess) return e;
    }
    ApplyParams ap{a->G, a->dW, P.view.A, P.view.h, P.view.B, a->u, a->v, a->sigma, P.scal,
                   P.gamma, P.norm_bound, a->accumulate != 0, a->detach_sigma != 0, need_gw,
                   a->dgamma, a->clamp_eps};
    const int64_t rows = P.view.A * P.view.h;
    if (P.view.B >= 32) {
      // A block per row, up to 16 × 8 per SM; SPECNORM_TUNE=bw_grid=N: at most N blocks, each
      // taking rows N apart (its prologue, the coefficients from ⟨G, W⟩, once for them all).
      int64_t cap = 16LL * P.sm_count * 8;
      if (P.bw_grid > 0 && P.bw_grid < cap) cap = P.bw_grid;
      const unsigned blocks = (unsigned)(rows < cap ? rows : cap);
      const bool wide = P.view.B % kWide<T> == 0 && aligned16(a->G) && aligned16(a->dW);
      return launch(P.pdl, wide ? apply_rows_kernel<true, T> : apply_rows_kernel<false, T>, blocks,
                    kBlock, 0, stream, ap);
    }
    return launch(P.pdl, apply_elements_kernel<T>, P.div_blocks, kBlock, 0, stream, ap);
  };
  return (int)SN_DISPATCH_DTYPE(P.dtype, run);
}
