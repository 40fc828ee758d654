// Grouped forward: every layer of a model in 3 launches per power iteration, whatever the number
// of layers. Each kernel's grid is the concatenation of the layers' grids; a block finds its layer
// by binary search over the layers' first blocks, then works like the per-layer kernels:
//   rows    one pass over each row (SPEC.md, "One pass per iteration"): t_i = M_i · v, then
//           s += t_i M_iᵀ with the row re-read from L1/L2; v and the block's partial s live in shared
//           memory (2·w floats). Eval: t_i and Σ u_i t_i only. Bytes: numel·sizeof(T) from DRAM,
//           plus row_blocks·w·4 of partials.
//   reduce  the partials of 256 columns per block, in block order, scaled by 1 / max(‖t‖, eps);
//           the layer's last block writes max(‖t‖, eps), max(‖s‖, eps), σ (eval: σ = Σ u_i t_i).
//   commit  as cuda/commit_divide.cu, over each layer's element range.
// All reductions have a fixed order, so results are bitwise reproducible.
#include "kernels.h"
#include "sn_device.cuh"
#include "sn_types.cuh"

namespace sn {
namespace {

constexpr int kRowsPerBlock = 16;  // rows kernel: about this many rows per block
constexpr int kRedCols = kBlock;   // reduce kernel: columns per block

__device__ int find_layer(const int *starts, int count, int block) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (starts[mid] <= block) lo = mid; else hi = mid - 1;
  }
  return lo;
}

template <class T>
__device__ __forceinline__ float load1(const void *W, int64_t k) {
  return to_f(static_cast<const T *>(W)[k]);
}

// Element k of W holding M[i, j].
__device__ __forceinline__ int64_t index_of(const sn_group_entry_t &e, int64_t i, int64_t j) {
  if (e.A == 1) return i * e.w + j;
  const int64_t a = j / e.B;
  return (a * e.h + i) * e.B + (j - a * e.B);
}

// d = M_i · v (first == true), or s_sm += t · M_i (first == false), for the thread's columns.
template <class T>
__device__ __forceinline__ float row_pass(const sn_group_entry_t &e, int64_t i, const float *v_sm,
                                          float *s_sm, float t, bool first) {
  float d = 0.f;
  const bool vec = e.A == 1 && e.w % 4 == 0 && vec4_aligned<T>(e.W);
  if (vec) {
    const T *row = static_cast<const T *>(e.W) + i * e.w;
    for (int64_t q = threadIdx.x; q < e.w / 4; q += kBlock) {
      const float4 x = Vec4<T>::load(row + 4 * q);
      if (first) {
        const float4 v = reinterpret_cast<const float4 *>(v_sm)[q];
        d = fmaf(x.x, v.x, d);
        d = fmaf(x.y, v.y, d);
        d = fmaf(x.z, v.z, d);
        d = fmaf(x.w, v.w, d);
      } else {
        float4 &s = reinterpret_cast<float4 *>(s_sm)[q];
        s.x = fmaf(t, x.x, s.x);
        s.y = fmaf(t, x.y, s.y);
        s.z = fmaf(t, x.z, s.z);
        s.w = fmaf(t, x.w, s.w);
      }
    }
  } else {
    for (int64_t j = threadIdx.x; j < e.w; j += kBlock) {
      const float x = load1<T>(e.W, index_of(e, i, j));
      if (first) d = fmaf(x, v_sm[j], d);
      else s_sm[j] = fmaf(t, x, s_sm[j]);
    }
  }
  return d;
}

template <class T>
__device__ void rows_body(const sn_group_entry_t &e, int g, int iter, bool training, float *v_sm,
                          float *s_sm) {
  const float *x = iter == 0 ? e.v : e.s;
  const float rx = iter == 0 ? 1.f : 1.f / e.scal[SN_SCAL_M_S];
  const bool ones = training && iter == 0 && (reinterpret_cast<const unsigned *>(e.sigma)[3] & SN_HEALTH_RESTART);
  for (int64_t j = threadIdx.x; j < e.w; j += kBlock) {
    v_sm[j] = ones ? 1.f : x[j] * rx;
    s_sm[j] = 0.f;
  }
  __syncthreads();
  float acc = 0.f;  // Σ t_i² (training) or Σ u_i t_i (eval), in thread 0
  for (int64_t i = g; i < e.h; i += e.row_blocks) {
    const float t = block_sum(row_pass<T>(e, i, v_sm, s_sm, 0.f, true));
    if (threadIdx.x == 0) {
      if (training) {
        e.t[i] = t;
        acc = fmaf(t, t, acc);
      } else {
        acc = fmaf(e.u[i], t, acc);
      }
    }
    if (training) row_pass<T>(e, i, v_sm, s_sm, t, false);
  }
  __syncthreads();  // s_sm columns were accumulated by the threads owning their float4
  if (training)
    for (int64_t j = threadIdx.x; j < e.w; j += kBlock) e.part[(int64_t)g * e.w + j] = s_sm[j];
  if (threadIdx.x == 0) e.tsq[g] = acc;
}

__global__ void __launch_bounds__(kBlock) group_rows_kernel(sn_cuda_group_t G, int iter, bool training) {
  extern __shared__ float4 group_sm[];
  const int L = find_layer(G.row_starts, G.count, blockIdx.x);
  const sn_group_entry_t &e = G.entries[L];
  if (iter >= (training ? e.n_iters : 1)) return;
  float *v_sm = reinterpret_cast<float *>(group_sm);
  float *s_sm = v_sm + (G.max_w + 3) / 4 * 4;
  const int g = blockIdx.x - e.row_block0;
  switch (e.dtype) {
    case SN_DTYPE_FLOAT16: rows_body<__half>(e, g, iter, training, v_sm, s_sm); break;
    case SN_DTYPE_BFLOAT16: rows_body<__nv_bfloat16>(e, g, iter, training, v_sm, s_sm); break;
    default: rows_body<float>(e, g, iter, training, v_sm, s_sm); break;
  }
}

__global__ void __launch_bounds__(kBlock) group_reduce_kernel(sn_cuda_group_t G, int iter, bool training) {
  const int L = find_layer(G.red_starts, G.count, blockIdx.x);
  const sn_group_entry_t &e = G.entries[L];
  if (iter >= (training ? e.n_iters : 1)) return;
  const int c = blockIdx.x - e.red_block0;
  float acc = 0.f;
  for (int g = threadIdx.x; g < e.row_blocks; g += kBlock) acc += e.tsq[g];
  acc = block_sum(acc);
  if (!training) {
    if (c == 0 && threadIdx.x == 0) e.scal[SN_SCAL_SIG_DOT] = acc;
    return;
  }
  const float m_t = fmaxf(sqrtf(acc), e.eps);
  const int64_t j = (int64_t)c * kRedCols + threadIdx.x;
  float sq = 0.f;
  if (j < e.w) {
    float s = 0.f;
    for (int g = 0; g < e.row_blocks; ++g) s += e.part[(int64_t)g * e.w + j];
    s *= 1.f / m_t;
    e.s[j] = s;
    sq = s * s;
  }
  sq = block_sum(sq);
  if (threadIdx.x == 0) e.sq[c] = sq;
  if (!last_block_to_arrive(e.counter, e.red_blocks)) return;
  finish_s_norm(e.sq, e.red_blocks, e.eps, e.scal);
  if (threadIdx.x == 0) e.scal[SN_SCAL_M_T] = m_t;
}

template <class T>
__device__ void divide_range(const sn_group_entry_t &e, int64_t k0, int64_t k1, float sig, float d,
                             float g) {
  auto scale = [&](float x) { return sig > 0.f ? (x / d) * g : x * 0.f; };
  const T *in = static_cast<const T *>(e.W);
  T *out = static_cast<T *>(e.W_sn);
  int64_t k = k0 + 4 * threadIdx.x;
  if (vec4_aligned<T>(e.W) && vec4_aligned<T>(e.W_sn)) {  // k0 is a multiple of 4
    for (; k + 3 < k1; k += 4 * kBlock) {
      float4 x = Vec4<T>::load(in + k);
      x = make_float4(scale(x.x), scale(x.y), scale(x.z), scale(x.w));
      Vec4<T>::store(out + k, x);
    }
    // The tail (< 4 elements at the end of the layer) goes to the thread the loop stopped at.
    for (; k < k1; ++k) out[k] = from_f<T>(scale(to_f(in[k])));
  } else {
    for (k = k0 + threadIdx.x; k < k1; k += kBlock) out[k] = from_f<T>(scale(to_f(in[k])));
  }
}

__global__ void __launch_bounds__(kBlock) group_commit_kernel(sn_cuda_group_t G, bool training) {
  const int L = find_layer(G.div_starts, G.count, blockIdx.x);
  const sn_group_entry_t &e = G.entries[L];
  const int c = blockIdx.x - e.div_block0;
  const float sig_new = e.scal[training ? SN_SCAL_SIG_S : SN_SCAL_SIG_DOT];
  const bool good = sn_sigma_usable(sig_new);
  const float sig = good ? sig_new : e.sigma[0];  // see commit_divide.cu: no write when !good
  const float d = e.norm_bound > 0.f ? fmaxf(1.f, sig / e.norm_bound) : sig;
  const float g = e.gamma ? *e.gamma : 1.f;
  if (c == 0) {
    if (good && training) {
      const float m_t = e.scal[SN_SCAL_M_T], m_s = e.scal[SN_SCAL_M_S];
      for (int64_t i = threadIdx.x; i < e.h; i += kBlock) e.u[i] = e.t[i] / m_t;
      for (int64_t j = threadIdx.x; j < e.w; j += kBlock) e.v[j] = e.s[j] / m_s;
    }
    if (threadIdx.x == 0) {
      if (good) {
        e.sigma[0] = sig_new;
        e.sigma[1] = 1.f / sig_new;
      }
      e.sigma[2] = sig > 0.f ? g / d : 0.f;
      unsigned *health = reinterpret_cast<unsigned *>(e.sigma + 3);
      *health = health_after(*health, sig_new, training);
    }
  }
  if (!e.W_sn) return;
  const int64_t chunk = ((e.numel + e.div_blocks - 1) / e.div_blocks + 3) / 4 * 4;
  const int64_t k0 = (int64_t)c * chunk, k1 = min(e.numel, k0 + chunk);
  if (k0 >= k1) return;
  switch (e.dtype) {
    case SN_DTYPE_FLOAT16: divide_range<__half>(e, k0, k1, sig, d, g); break;
    case SN_DTYPE_BFLOAT16: divide_range<__nv_bfloat16>(e, k0, k1, sig, d, g); break;
    default: divide_range<float>(e, k0, k1, sig, d, g); break;
  }
}

size_t rows_smem(int64_t max_w) { return (size_t)(2 * ((max_w + 3) / 4 * 4)) * sizeof(float); }

}  // namespace
}  // namespace sn

extern "C" int sn_cuda_group_row_blocks(int64_t h, int sm_count) {
  const int64_t b = (h + sn::kRowsPerBlock - 1) / sn::kRowsPerBlock;
  const int64_t cap = 2LL * (sm_count > 0 ? sm_count : 1);
  return (int)(b < 1 ? 1 : (b > cap ? cap : b));
}

extern "C" int sn_cuda_group_prepare(int64_t max_w) {
  return (int)cudaFuncSetAttribute(sn::group_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)sn::rows_smem(max_w));
}

extern "C" int sn_cuda_group_forward(const sn_cuda_group_t *G, int training, sn_stream_t stream_handle) {
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int iters = training ? G->max_iters : 1;
  for (int k = 0; k < iters; ++k) {
    sn::group_rows_kernel<<<G->row_total, sn::kBlock, sn::rows_smem(G->max_w), stream>>>(*G, k, training != 0);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return (int)e;
    sn::group_reduce_kernel<<<G->red_total, sn::kBlock, 0, stream>>>(*G, k, training != 0);
    if ((e = cudaGetLastError()) != cudaSuccess) return (int)e;
  }
  sn::group_commit_kernel<<<G->div_total, sn::kBlock, 0, stream>>>(*G, training != 0);
  return (int)cudaGetLastError();
}
