// One power iteration of the legacy order (v first: v = N(Mᵀu), then u = N(M v)) with a single
// read of W, by columns: column j of M gives s_j = M_jᵀ · u, and the same column, still on chip,
// adds s_j M_j to t, so one pass yields s = Mᵀ u and t = M s (SPEC.md, "One pass per iteration",
// transposed). Any view (A, h, B); for layers whose column panels fit in shared memory
// (h · kPanelCols · sizeof(T) <= kPanelBytes: h <= 768 in fp32, 1536 in fp16/bf16).
//
// Kernel 1, panels: one block per panel of kPanelCols = 32 columns, a lane per column, the
//   block's 16 warps over the rows. Phase 1 reads the panel (h × 32 elements, 128 bytes of a row
//   per warp load in fp32) into shared memory and forms s_j = Σ_i M_ij u_i per warp; the warps'
//   sums are added in warp order. Phase 2 forms the panel's share of t, Σ_{j in panel} M_ij s_j,
//   for every row i from shared memory (a warp per row, shuffle sum) and writes it as the panel's
//   partial t. Bytes: numel·sizeof(T) of W once, + panels·h·4 of partials (numel/8 bytes).
// Kernel 2, reduce: t_i = Σ over panels in panel order, / max(‖s‖, eps) (so t = M v); Σ t² per
//   block; the last block writes max(‖t‖, eps), σ = ‖t‖² / max(‖t‖, eps) and max(‖s‖, eps).
// All sums have a fixed order: results are bitwise reproducible.
#include "kernels.h"
#include "sn_reference.h" /* sn_dtype_size */
#include "sn_device.cuh"
#include "sn_types.cuh"

namespace sn {
namespace {

constexpr int kPanelCols = 32;       // columns per block: one per lane
constexpr int kPanelThreads = 512;   // 16 warps over the rows
constexpr int kPanelWarps = kPanelThreads / 32;
constexpr size_t kPanelBytes = 96 * 1024;  // shared memory for one panel of h rows

struct PanelParams {
  const void *W;
  int64_t A, h, B;
  const float *x, *x_div;   // u (state or scratch) and its divisor
  const unsigned *health;   // restart bit set: u = ones
  float *s;                 // w: s = Mᵀ u, unnormalized
  float *ssq;               // panels: Σ s_j² of the panel
  float *part;              // panels × h: the panel's share of M s
};

template <class T>
__global__ void __launch_bounds__(kPanelThreads) panel_kernel(PanelParams p) {
  pdl_enter();
  SN_EXTERN_SHARED(float4, panel_sm4);
  T *panel = reinterpret_cast<T *>(panel_sm4);  // h × kPanelCols
  __shared__ float warp_s[kPanelWarps][kPanelCols];
  __shared__ float s_sm[kPanelCols];
  const T *W = static_cast<const T *>(p.W);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t w = p.A * p.B;
  const int64_t j = (int64_t)blockIdx.x * kPanelCols + lane;
  const bool in = j < w;
  const float rx = reciprocal_of(p.x_div);
  const bool ones = p.health && (*p.health & SN_HEALTH_RESTART);

  // Phase 1: the panel into shared memory, s_j over this warp's rows. Column j of M is
  // W[base + i·B] (j = a·B + b: base = a·h·B + b); kUnroll rows' loads are issued together.
  const int64_t a = in ? j / p.B : 0;
  const T *col = W + (in ? a * p.h * p.B + (j - a * p.B) : 0);
  auto u_at = [&](int64_t i) { return ones ? 1.f : p.x[i] * rx; };
  constexpr int kUnroll = 8;
  float acc = 0.f;
  int64_t i = warp;
  for (; i + (kUnroll - 1) * kPanelWarps < p.h; i += kUnroll * kPanelWarps) {
    T x[kUnroll];
    float ui[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      x[k] = in ? col[(i + k * kPanelWarps) * p.B] : from_f<T>(0.f);
      ui[k] = u_at(i + k * kPanelWarps);
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      panel[(i + k * kPanelWarps) * kPanelCols + lane] = x[k];
      acc = fmaf(to_f(x[k]), ui[k], acc);
    }
  }
  for (; i < p.h; i += kPanelWarps) {
    const T x = in ? col[i * p.B] : from_f<T>(0.f);
    panel[i * kPanelCols + lane] = x;
    acc = fmaf(to_f(x), u_at(i), acc);
  }
  warp_s[warp][lane] = acc;
  __syncthreads();
  if (warp == 0) {
    float s = 0.f;
    for (int k = 0; k < kPanelWarps; ++k) s += warp_s[k][lane];
    if (!in) s = 0.f;
    s_sm[lane] = s;
    if (in) p.s[j] = s;
    const float sq = warp_sum(s * s);
    if (lane == 0) p.ssq[blockIdx.x] = sq;
  }
  __syncthreads();

  // Phase 2: the panel's share of t = M s, a warp per row.
  const float sj = s_sm[lane];
  float *part = p.part + (int64_t)blockIdx.x * p.h;
  for (int64_t i = warp; i < p.h; i += kPanelWarps) {
    float d = to_f(panel[i * kPanelCols + lane]) * sj;
    d = warp_sum(d);
    if (lane == 0) part[i] = d;
  }
}

struct ColsReduceParams {
  const float *part, *ssq;
  int panels;
  int64_t h;
  float *t;
  float *tsq;      // per reduce block
  float *scal;
  unsigned *counter;
  float eps;
};

__global__ void __launch_bounds__(kBlock) cols_reduce_kernel(ColsReduceParams p) {
  pdl_enter();
  // Both reads first, so that their loads are in flight together: this thread's share of the
  // panels' Σ s², and its row of the partial t.
  const float sq_share = thread_sum_of(p.ssq, p.panels);
  const int64_t i = (int64_t)blockIdx.x * kBlock + threadIdx.x;
  const float x = i < p.h ? sum_partials(p.part, p.panels, p.h, i) : 0.f;
  // max(‖s‖, eps) from the panels' Σ s², in panel order (every block alike).
  const float m_s = norm_divisor(block_sum(sq_share), p.eps);
  float sq = i < p.h ? store_scaled(x, m_s, p.t, i) : 0.f;
  sq = block_sum(sq);
  if (threadIdx.x == 0) p.tsq[blockIdx.x] = sq;
  if (!last_block_to_arrive(p.counter, gridDim.x)) return;
  const float tot = block_sum_of(p.tsq, gridDim.x);
  if (threadIdx.x == 0) {
    const float m = norm_divisor(tot, p.eps);
    p.scal[SN_SCAL_M_T] = m;
    p.scal[SN_SCAL_SIG_T] = tot / m;
    p.scal[SN_SCAL_M_S] = m_s;
  }
}

size_t panel_smem(int64_t h, sn_dtype_t dtype) {
  return (size_t)h * kPanelCols * sn_dtype_size(dtype);
}

}  // namespace

int one_pass_cols_fits(int64_t h, sn_dtype_t dtype) {
  return h >= 1 && h <= (int64_t)(kPanelBytes / (kPanelCols * sn_dtype_size(dtype)));
}

int64_t one_pass_cols_panels(int64_t w) { return (w + kPanelCols - 1) / kPanelCols; }

int64_t one_pass_cols_reduce_blocks(int64_t h) { return (h + kBlock - 1) / kBlock; }

cudaError_t one_pass_cols_prepare(const sn_cuda_plan_t &plan) {
  const size_t smem = panel_smem(plan.view.h, plan.dtype);
  auto run = [&](auto zero) -> cudaError_t {
    using T = decltype(zero);
    return allow_shared_memory(panel_kernel<T>, smem);
  };
  return SN_DISPATCH_DTYPE(plan.dtype, run);
}

cudaError_t launch_one_pass_cols(const sn_cuda_plan_t &plan, const void *W, const float *x,
                                 const float *x_div, const unsigned *health, cudaStream_t stream) {
  const int64_t w = plan.view.A * plan.view.B, h = plan.view.h;
  const int panels = (int)one_pass_cols_panels(w);
  PanelParams p{W, plan.view.A, h, plan.view.B, x, x_div, health, plan.s, plan.oc_ssq, plan.op_part};
  const size_t smem = panel_smem(h, plan.dtype);
  auto run = [&](auto zero) -> cudaError_t {
    using T = decltype(zero);
    return launch(plan.pdl, panel_kernel<T>, panels, kPanelThreads, smem, stream, p);
  };
  cudaError_t e = SN_DISPATCH_DTYPE(plan.dtype, run);
  if (e != cudaSuccess) return e;
  const int rb = (int)one_pass_cols_reduce_blocks(h);
  ColsReduceParams r{plan.op_part, plan.oc_ssq, panels, h, plan.t, plan.op_tsq, plan.scal,
                     plan.counters + 1 + plan.p2_tiles + 1, plan.eps};
  return launch(plan.pdl, cols_reduce_kernel, rb, kBlock, 0, stream, r);
}

}  // namespace sn
