// The two matrix-vector products of power iteration over W's matrix view [A][h][B]
// (M[i, a·B + b] = W[(a·h + i)·B + b]), each with its normalization fused into the same launch:
// the last block to finish combines the partial results in a fixed order and writes the norm
// (and σ) to the plan's scalar slots. Every byte of W is read once per product.
#include "kernels.h"
#include "sn_device.cuh"
#include "sn_types.cuh"

namespace sn {
namespace {

// ---------------------------------------------------------------------------------------------
// t = M x. Work mapping: TB consecutive threads (a power of two <= 256, the smallest >= B) own
// one row i; a block owns kBlock / TB consecutive rows, so for every a it reads the contiguous run
// W[a, i0 : i0 + R, :], coalesced whatever B is. gridDim.y splits the A range: each slice writes
// a partial t to part[y][i], combined by the last block.
// Bytes: numel·4 of W, plus w·4 of x per row-block (L2-resident).
// ---------------------------------------------------------------------------------------------
struct MatvecParams {
  const void *W;  // element type T of the kernel
  int64_t A, h, B;
  const float *x, *x_div;  // x NULL: ones
  const unsigned *health;  // restart bit set: x = ones
  float *part;
  unsigned *counter;
  TMode mode;
  float *t;
  const float *u, *u_div;
  float *scal;
  float eps;
};

template <int TB, bool V4, class T>
__device__ __forceinline__ float row_dot(const T *row, const float *x, int64_t B, int lane) {
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
  if (V4) {
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    const int64_t n4 = B / 4;
    for (int64_t b = lane; b < n4; b += TB) {
      const float4 w = Vec4<T>::load(row + 4 * b);
      const float4 v = x ? x4[b] : make_float4(1.f, 1.f, 1.f, 1.f);
      a0 = fmaf(w.x, v.x, a0);
      a1 = fmaf(w.y, v.y, a1);
      a2 = fmaf(w.z, v.z, a2);
      a3 = fmaf(w.w, v.w, a3);
    }
  } else {
    int64_t b = lane;
    for (; b + 3 * TB < B; b += 4 * TB) {
      const float w0 = to_f(row[b]), w1 = to_f(row[b + TB]), w2 = to_f(row[b + 2 * TB]),
                  w3 = to_f(row[b + 3 * TB]);
      a0 = fmaf(w0, x ? x[b] : 1.f, a0);
      a1 = fmaf(w1, x ? x[b + TB] : 1.f, a1);
      a2 = fmaf(w2, x ? x[b + 2 * TB] : 1.f, a2);
      a3 = fmaf(w3, x ? x[b + 3 * TB] : 1.f, a3);
    }
    for (; b < B; b += TB) a0 = fmaf(to_f(row[b]), x ? x[b] : 1.f, a0);
  }
  return (a0 + a1) + (a2 + a3);
}

// Sum over the TB threads of a row group; valid in the group's first thread.
template <int TB>
__device__ __forceinline__ float group_sum(float x) {
  if constexpr (TB <= 32) {
    for (int o = TB / 2; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o, TB);
    return x;
  } else {
    __shared__ float warp_part[kWarps];
    x = warp_sum(x);
    const int warp = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0) warp_part[warp] = x;
    __syncthreads();
    float y = 0.f;
    if (threadIdx.x % TB == 0)
      for (int k = 0; k < TB / 32; ++k) y += warp_part[warp + k];
    return y;
  }
}

// Last block of t = M x: combine the partials in slice order, then the norm (or the eval dot).
__device__ void finish_matvec(const MatvecParams &p, int slices) {
  const float rx = reciprocal_of(p.x_div);
  const float ru = reciprocal_of(p.u_div);
  float sq = 0.f, dot = 0.f;
  for (int64_t i = threadIdx.x; i < p.h; i += kBlock) {
    float t = 0.f;
    for (int y = 0; y < slices; ++y) t += __ldcg(&p.part[(int64_t)y * p.h + i]);
    t *= rx;
    if (p.mode != TMode::kDot) p.t[i] = t;
    if (p.mode == TMode::kDot) dot = fmaf(p.u[i] * ru, t, dot);
    sq = fmaf(t, t, sq);
  }
  sq = block_sum(sq);
  if (p.mode == TMode::kDot) dot = block_sum(dot);
  if (threadIdx.x == 0) {
    const float norm = sqrtf(sq), m = norm_divisor(sq, p.eps);
    if (p.mode == TMode::kNormalize) {
      p.scal[SN_SCAL_M_T] = m;
      p.scal[SN_SCAL_SIG_T] = sq / m;
    } else if (p.mode == TMode::kDot) {
      p.scal[SN_SCAL_SIG_DOT] = dot;
    } else {
      p.scal[SN_SCAL_SIG_1D] = isnan(norm) ? norm : m;  // a NaN in W must not become σ = eps
    }
  }
}

template <int TB, bool V4, class T>
__global__ void __launch_bounds__(kBlock) matvec_kernel(MatvecParams p) {
  pdl_enter();
  const T *W = static_cast<const T *>(p.W);
  constexpr int R = kBlock / TB;
  const float *x = p.health && (*p.health & SN_HEALTH_RESTART) ? nullptr : p.x;
  const int lane = threadIdx.x % TB;
  const int64_t i = (int64_t)blockIdx.x * R + threadIdx.x / TB;
  const int64_t per = (p.A + gridDim.y - 1) / gridDim.y;
  const int64_t a0 = (int64_t)blockIdx.y * per, a1 = min(p.A, a0 + per);
  float acc = 0.f;
  if (i < p.h) {
    for (int64_t a = a0; a < a1; ++a)
      acc += row_dot<TB, V4>(W + (a * p.h + i) * p.B, x ? x + a * p.B : nullptr, p.B, lane);
  }
  acc = group_sum<TB>(acc);
  if (lane == 0 && i < p.h) p.part[(int64_t)blockIdx.y * p.h + i] = acc;
  if (!last_block_to_arrive(p.counter, gridDim.x * gridDim.y)) return;
  finish_matvec(p, (int)gridDim.y);
}

// ---------------------------------------------------------------------------------------------
// s = Mᵀ y. Work mapping: a block owns a tile of TB consecutive columns b of one a (TB a power of
// two <= 32, the smallest >= B) and kBlock / TB lanes along i; each thread walks its column down
// the rows, so a warp reads TB-wide contiguous runs of every row. gridDim.y splits the rows: each
// slice writes a partial s, the last slice of a tile combines the tile and its Σ s², and the last
// tile combines those into ‖s‖ and σ.
// Bytes: numel·4 of W, plus h·4 of y per tile (L2-resident).
// ---------------------------------------------------------------------------------------------
struct MatvecTParams {
  const void *W;  // element type T of the kernel
  int64_t A, h, B;
  const float *y, *y_div;
  const unsigned *health;  // restart bit set: y = ones
  float *part, *s, *tile_sq, *scal;
  unsigned *counters;  // [tiles] per tile, then one for all tiles
  int64_t tiles;
  float eps;
};

template <int TB, class T>
__global__ void __launch_bounds__(kBlock) matvec_t_kernel(MatvecTParams p) {
  pdl_enter();
  const T *W = static_cast<const T *>(p.W);
  constexpr int IL = kBlock / TB;
  const int c = threadIdx.x % TB, il = threadIdx.x / TB;
  const int64_t tiles_per_a = (p.B + TB - 1) / TB;
  const int64_t tile = blockIdx.x;
  const int64_t a = tile / tiles_per_a, b = (tile % tiles_per_a) * TB + c;
  const int64_t w = p.A * p.B;
  const int64_t per = (p.h + gridDim.y - 1) / gridDim.y;
  const int64_t i0 = (int64_t)blockIdx.y * per, i1 = min(p.h, i0 + per);
  const bool ones = p.health && (*p.health & SN_HEALTH_RESTART);

  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
  if (b < p.B && ones) {
    for (int64_t i = i0 + il; i < i1; i += IL) a0 += to_f(W[a * p.h * p.B + i * p.B + b]);
  } else if (b < p.B) {
    const T *col = W + a * p.h * p.B + b;
    const int64_t B = p.B;
    int64_t i = i0 + il;
    for (; i + 3 * IL < i1; i += 4 * IL) {
      const float w0 = to_f(col[i * B]), w1 = to_f(col[(i + IL) * B]),
                  w2 = to_f(col[(i + 2 * IL) * B]), w3 = to_f(col[(i + 3 * IL) * B]);
      a0 = fmaf(w0, p.y[i], a0);
      a1 = fmaf(w1, p.y[i + IL], a1);
      a2 = fmaf(w2, p.y[i + 2 * IL], a2);
      a3 = fmaf(w3, p.y[i + 3 * IL], a3);
    }
    for (; i < i1; i += IL) a0 = fmaf(to_f(col[i * B]), p.y[i], a0);
  }
  __shared__ float red[kBlock];
  red[threadIdx.x] = (a0 + a1) + (a2 + a3);
  for (int st = IL / 2; st > 0; st >>= 1) {
    __syncthreads();
    if (il < st) red[il * TB + c] += red[(il + st) * TB + c];
  }
  __syncthreads();
  if (il == 0 && b < p.B) p.part[(int64_t)blockIdx.y * w + a * p.B + b] = red[c];

  if (!last_block_to_arrive(&p.counters[tile], gridDim.y)) return;
  const float ry = reciprocal_of(p.y_div);
  float sq = 0.f;
  if (il == 0 && b < p.B) {
    float s = 0.f;
    for (int y = 0; y < (int)gridDim.y; ++y) s += __ldcg(&p.part[(int64_t)y * w + a * p.B + b]);
    s *= ry;
    p.s[a * p.B + b] = s;
    sq = s * s;
  }
  sq = block_sum(sq);
  if (threadIdx.x == 0) p.tile_sq[tile] = sq;

  if (!last_block_to_arrive(&p.counters[p.tiles], (unsigned)p.tiles)) return;
  finish_s_norm(p.tile_sq, p.tiles, p.eps, p.scal);
}


template <int TB, class T>
cudaError_t launch_matvec_tb(bool pdl, const MatvecParams &p, dim3 grid, bool v4,
                             cudaStream_t stream) {
  if constexpr (TB >= 4) {
    if (v4) return launch(pdl, matvec_kernel<TB, true, T>, grid, kBlock, 0, stream, p);
  }
  return launch(pdl, matvec_kernel<TB, false, T>, grid, kBlock, 0, stream, p);
}

template <class T>
cudaError_t launch_matvec_t_tb(bool pdl, int tb, const MatvecTParams &p, dim3 grid,
                               cudaStream_t stream) {
  switch (tb) {
    case 1: return launch(pdl, matvec_t_kernel<1, T>, grid, kBlock, 0, stream, p);
    case 2: return launch(pdl, matvec_t_kernel<2, T>, grid, kBlock, 0, stream, p);
    case 4: return launch(pdl, matvec_t_kernel<4, T>, grid, kBlock, 0, stream, p);
    case 8: return launch(pdl, matvec_t_kernel<8, T>, grid, kBlock, 0, stream, p);
    case 16: return launch(pdl, matvec_t_kernel<16, T>, grid, kBlock, 0, stream, p);
    default: return launch(pdl, matvec_t_kernel<32, T>, grid, kBlock, 0, stream, p);
  }
}

}  // namespace

cudaError_t launch_matvec(const sn_cuda_plan_t &plan, const void *W, const float *x,
                          const float *x_div, TMode mode, const float *u, const float *u_div,
                          const unsigned *health, cudaStream_t stream) {
  const sn_view_t &vw = plan.view;
  MatvecParams p{W, vw.A, vw.h, vw.B, x, x_div, health, plan.part1, &plan.counters[0], mode, plan.t,
                 u, u_div, plan.scal, plan.eps};
  const int R = kBlock / plan.p1_tb;
  const dim3 grid((unsigned)((vw.h + R - 1) / R), (unsigned)plan.p1_asplit);
  auto run = [&](auto zero) -> cudaError_t {
    using T = decltype(zero);
    const bool v4 = vw.B % 4 == 0 && vec4_aligned<T>(W) && (!x || aligned16(x));
    switch (plan.p1_tb) {
      case 1: return launch_matvec_tb<1, T>(plan.pdl, p, grid, false, stream);
      case 2: return launch_matvec_tb<2, T>(plan.pdl, p, grid, false, stream);
      case 4: return launch_matvec_tb<4, T>(plan.pdl, p, grid, v4, stream);
      case 8: return launch_matvec_tb<8, T>(plan.pdl, p, grid, v4, stream);
      case 16: return launch_matvec_tb<16, T>(plan.pdl, p, grid, v4, stream);
      case 32: return launch_matvec_tb<32, T>(plan.pdl, p, grid, v4, stream);
      case 64: return launch_matvec_tb<64, T>(plan.pdl, p, grid, v4, stream);
      case 128: return launch_matvec_tb<128, T>(plan.pdl, p, grid, v4, stream);
      default: return launch_matvec_tb<256, T>(plan.pdl, p, grid, v4, stream);
    }
  };
  return SN_DISPATCH_DTYPE(plan.dtype, run);
}

cudaError_t launch_matvec_t(const sn_cuda_plan_t &plan, const void *W, const float *y,
                            const float *y_div, const unsigned *health, cudaStream_t stream) {
  const sn_view_t &vw = plan.view;
  MatvecTParams p{W, vw.A, vw.h, vw.B, y, y_div, health, plan.part2, plan.s, plan.tile_sq, plan.scal,
                  plan.counters + 1, plan.p2_tiles, plan.eps};
  const dim3 grid((unsigned)plan.p2_tiles, (unsigned)plan.p2_isplit);
  auto run = [&](auto zero) -> cudaError_t {
    return launch_matvec_t_tb<decltype(zero)>(plan.pdl, plan.p2_tb, p, grid, stream);
  };
  return SN_DISPATCH_DTYPE(plan.dtype, run);
}

}  // namespace sn
