// The backward's two steps (SPEC.md, "Backward") as block bodies, so that a layer's own kernels
// (cuda/backward.cu, what each step does and moves is described there) and the grouped backward
// (cuda/group_backward.cu) run the same code: block g of nb blocks of a layer's step does the same
// arithmetic in either, so the grouped backward gives sn_backward's bits.
#pragma once

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

// ⟨G, W⟩: block g of nb strides over the n elements with the others, writes its partial, and the
// last of the nb to arrive adds the partials in block order into scal[SN_SCAL_GW].
template <bool WIDE, bool STREAM_W, class T>
__device__ __forceinline__ void inner_body(const InnerParams &p, int64_t g, int64_t nb) {
  const T *G = static_cast<const T *>(p.G), *W = static_cast<const T *>(p.W);
  const int64_t tid = g * kBlock + threadIdx.x;
  const int64_t stride = nb * kBlock;
  constexpr int E = kWide<T>;
  using V = VecN<T, E>;
  float acc = 0.f;
  int64_t k0 = 0;
  if (WIDE) {
    const int64_t nq = p.n / E;
    for (int64_t k = tid; k < nq; k += stride) {
      float gv[E], wv[E];
      V::cvt(V::load_raw(G + E * k), gv);
      V::cvt(STREAM_W ? load_streaming<typename V::raw>(W + E * k) : V::load_raw(W + E * k), wv);
#pragma unroll
      for (int e = 0; e < E; ++e) acc = fmaf(gv[e], wv[e], acc);
    }
    k0 = nq * E;
  }
  for (int64_t k = k0 + tid; k < p.n; k += stride) acc = fmaf(to_f(G[k]), to_f(W[k]), acc);
  acc = block_sum(acc);
  if (threadIdx.x == 0) p.part[g] = acc;
  if (!last_block_to_arrive(p.counter, (unsigned)nb)) return;
  const float tot = block_sum_of(p.part, nb);
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

// a and b of the formula (cuda/backward.cu) from the state and ⟨G, W⟩.
__device__ __forceinline__ Coefs coefs(const ApplyParams &p) {
  return backward_coefs(p.sigma[0], p.scal + SN_SCAL_GW, p.norm_bound, p.gamma, p.detach, p.clamp_eps);
}

// ∂L/∂γ = ⟨G, W⟩ / d, written once (block 0 of the step, thread 0) when asked for.
__device__ __forceinline__ void write_dgamma(const ApplyParams &p, int64_t g) {
  if (g != 0 || threadIdx.x != 0 || !p.dgamma) return;
  *p.dgamma = p.have_gw ? backward_dgamma(p.sigma[0], p.scal[SN_SCAL_GW], p.norm_bound) : 0.f;
}

template <class T>
__device__ __forceinline__ float apply1(const ApplyParams &p, const T *G, T *dW, int64_t k, Coefs c,
                                        float uv) {
  float x = c.a * to_f(G[k]) - c.b * uv;
  if (p.accumulate) x += to_f(dW[k]);
  return x;
}

// One 16-byte pack of dW from G's pack gr (and dW's old pack o, accumulating), u_i and the pack's
// entries of v (v4, 16-byte aligned; READ_ONLY: loaded through the read-only path, for callers
// whose v the compiler cannot otherwise keep apart from their stores to dW):
// x = a·G − b·(u_i v_j) (+ dW), stored at dst. apply_rows_body's and the grid backward's
// (cuda/on_chip_grid.cu).
template <class T, bool READ_ONLY = false>
__device__ __forceinline__ void apply_pack(const typename VecN<T, kWide<T>>::raw &gr,
                                           const typename VecN<T, kWide<T>>::raw &o, bool accumulate, float ui,
                                           const float4 *v4, Coefs c, T *dst) {
  constexpr int E = kWide<T>;
  using V = VecN<T, E>;
  float x[E];
  V::cvt(gr, x);
#pragma unroll
  for (int f = 0; f < E / 4; ++f) {
    const float4 vv = READ_ONLY ? __ldg(v4 + f) : v4[f];
    x[4 * f + 0] = c.a * x[4 * f + 0] - c.b * (ui * vv.x);
    x[4 * f + 1] = c.a * x[4 * f + 1] - c.b * (ui * vv.y);
    x[4 * f + 2] = c.a * x[4 * f + 2] - c.b * (ui * vv.z);
    x[4 * f + 3] = c.a * x[4 * f + 3] - c.b * (ui * vv.w);
  }
  if (accumulate) {
    float d[E];
    V::cvt(o, d);
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] += d[e];
  }
  V::store(dst, x);
}

// dW = a·G − b·u_i·v_col (+ dW) by rows of the view ([A][h][B], B >= 32), block g of nb taking
// rows g, g + nb, ... counted from the last. Rows are taken last first: the inner step just read G
// front to back, so G's last rows are the ones still in L2 (as in cuda/commit_divide.cu).
// dW may be G: each load waits for the previous pack's store, so a thread has one pack in flight;
// a 4096-column row is 2 packs per thread in bf16 (4 in fp32), loaded and stored in turn. (H200,
// e56c4b8: the 4096² backward at 79.7% of the copy bandwidth in fp32, 68.8% in bf16, where
// 4096 × 16384 ran at 94.7% and 89.0%.) Loading 2 or 4 packs per thread before storing any made
// no difference on an H100 (6626f15: within ±1% at 4096² and 4096 × 16384, 3% slower at 4096²
// bf16 with 4) and was removed (bench/NOTES.md).
template <bool WIDE, class T>
__device__ __forceinline__ void apply_rows_body(const ApplyParams &p, int64_t g, int64_t nb) {
  const T *G = static_cast<const T *>(p.G);
  T *dW = static_cast<T *>(p.dW);
  const Coefs c = coefs(p);
  write_dgamma(p, g);
  constexpr int E = kWide<T>;
  using V = VecN<T, E>;
  const int64_t rows = p.A * p.h;
  for (int64_t rr = g; rr < rows; rr += nb) {
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
        const typename V::raw gr = V::load_raw(grow + E * q);
        typename V::raw o = {};
        if (p.accumulate) o = V::load_raw(drow + E * q);
        apply_pack<T>(gr, o, p.accumulate, ui, reinterpret_cast<const float4 *>(v + E * q), c, drow + E * q);
      }
      b0 = nq * E;
    }
    for (int64_t b = b0 + threadIdx.x; b < p.B; b += kBlock)
      drow[b] = from_f<T>(apply1(p, grow, drow, b, c, ui * v[b]));
  }
}

// The same for any view, element by element (B < 32), block g of nb striding over the elements.
template <class T>
__device__ __forceinline__ void apply_elements_body(const ApplyParams &p, int64_t g, int64_t nb) {
  const T *G = static_cast<const T *>(p.G);
  T *dW = static_cast<T *>(p.dW);
  const Coefs c = coefs(p);
  write_dgamma(p, g);
  const int64_t n = p.A * p.h * p.B;
  for (int64_t k = g * kBlock + threadIdx.x; k < n; k += nb * kBlock) {
    const int64_t r = k / p.B, b = k - r * p.B;
    const int64_t a = r / p.h, i = r - a * p.h;
    dW[k] = from_f<T>(apply1(p, G, dW, k, c, p.u[i] * p.v[a * p.B + b]));
  }
}

}  // namespace
}  // namespace sn
