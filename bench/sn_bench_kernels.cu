// Tiny CUDA kernels of sn_bench: the cuBLAS baseline's missing pieces and the memory-floor
// probe. See sn_bench_kernels.h.
#include "sn_bench_kernels.h"

#include <stdint.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "sn_device.cuh" /* the library's fixed-order block sums and last-block arrival */
#include "sn_types.cuh"  /* its 16-byte packs and conversions */

static __global__ void inv_clamp_kernel(const float *norm, float *inv, float eps) {
  inv[0] = 1.0f / fmaxf(norm[0], eps);
}

static __global__ void div4_kernel(const float4 *in, float4 *out, const float *sigma, size_t n4) {
  const float s = *sigma;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4;
       i += (size_t)gridDim.x * blockDim.x) {
    float4 x = in[i];
    x.x /= s;
    x.y /= s;
    x.z /= s;
    x.w /= s;
    out[i] = x;
  }
}

static __global__ void div_kernel(const float *in, float *out, const float *sigma, size_t begin,
                                  size_t n) {
  const float s = *sigma;
  for (size_t i = begin + blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    out[i] = in[i] / s;
}

// Multiprocessors of the current device (asked once; 80 if the query fails).
static int sm_count() {
  static int sms = 0;
  if (sms == 0) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0)
      sms = 80;
  }
  return sms;
}

// Blocks of a grid-stride loop over n items: a few waves of resident blocks is enough.
static unsigned grid_for(size_t n, unsigned block) {
  const size_t max_blocks = (size_t)sm_count() * 8;
  size_t g = (n + block - 1) / block;
  if (g < 1) g = 1;
  if (g > max_blocks) g = max_blocks;
  return (unsigned)g;
}

extern "C" cudaError_t snb_launch_inv_clamp(const float *norm, float *inv, float eps,
                                            cudaStream_t stream) {
  return sn::launch(false, inv_clamp_kernel, 1, 1, 0, stream, norm, inv, eps);
}

extern "C" cudaError_t snb_launch_div(const float *in, float *out, const float *sigma, size_t n,
                                      cudaStream_t stream) {
  const unsigned block = 256;
  size_t done = 0;
  if ((((uintptr_t)in | (uintptr_t)out) & 15u) == 0 && n >= 4) {
    const size_t n4 = n / 4;
    const cudaError_t e = sn::launch(false, div4_kernel, grid_for(n4, block), block, 0, stream,
                                     (const float4 *)in, (float4 *)out, sigma, n4);
    if (e != cudaSuccess) return e;
    done = n4 * 4;
  }
  if (done == n) return cudaSuccess;
  return sn::launch(false, div_kernel, grid_for(n - done, block), block, 0, stream, in, out, sigma, done, n);
}

// ---- Backward baseline ---------------------------------------------------------------------

static __device__ __forceinline__ float ld(const float *p, size_t k) { return p[k]; }
static __device__ __forceinline__ float ld(const __half *p, size_t k) { return __half2float(p[k]); }
static __device__ __forceinline__ float ld(const __nv_bfloat16 *p, size_t k) {
  return __bfloat162float(p[k]);
}
static __device__ __forceinline__ void st(float *p, size_t k, float x) { p[k] = x; }
static __device__ __forceinline__ void st(__half *p, size_t k, float x) { p[k] = __float2half_rn(x); }
static __device__ __forceinline__ void st(__nv_bfloat16 *p, size_t k, float x) {
  p[k] = __float2bfloat16_rn(x);
}

template <class T>
static __global__ void dot_kernel(const T *a, const T *b, size_t n, float *out) {
  float acc = 0.f;
  for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n;
       k += (size_t)gridDim.x * blockDim.x)
    acc += ld(a, k) * ld(b, k);
  acc = sn::block_sum(acc);
  if (threadIdx.x == 0) atomicAdd(out, acc);
}

template <class T>
static __global__ void sn_backward_kernel(const T *G, T *dW, int64_t h, int64_t w, const float *u,
                                          const float *v, const float *sigma, const float *gw,
                                          int accumulate) {
  const float s = *sigma;
  const float c = *gw / s;
  for (int64_t i = blockIdx.y; i < h; i += gridDim.y) {
    const float ci = c * u[i];
    const size_t row = (size_t)i * (size_t)w;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < w;
         j += (int64_t)gridDim.x * blockDim.x) {
      float x = (ld(G, row + (size_t)j) - ci * v[j]) / s;
      if (accumulate) x += ld(dW, row + (size_t)j);
      st(dW, row + (size_t)j, x);
    }
  }
}

extern "C" cudaError_t snb_launch_dot(const void *a, const void *b, int dtype, size_t n, float *out,
                                      cudaStream_t stream) {
  cudaError_t e = cudaMemsetAsync(out, 0, sizeof(float), stream);
  if (e != cudaSuccess) return e;
  const unsigned block = 256, grid = grid_for(n, block);
  switch (dtype) {
    case SNB_F16:
      return sn::launch(false, dot_kernel<__half>, grid, block, 0, stream, (const __half *)a,
                        (const __half *)b, n, out);
    case SNB_BF16:
      return sn::launch(false, dot_kernel<__nv_bfloat16>, grid, block, 0, stream,
                        (const __nv_bfloat16 *)a, (const __nv_bfloat16 *)b, n, out);
    default:
      return sn::launch(false, dot_kernel<float>, grid, block, 0, stream, (const float *)a,
                        (const float *)b, n, out);
  }
}

extern "C" cudaError_t snb_launch_sn_backward(const void *G, void *dW, int dtype, int64_t h,
                                              int64_t w, const float *u, const float *v,
                                              const float *sigma, const float *gw, int accumulate,
                                              cudaStream_t stream) {
  const unsigned block = 256;
  // x: column blocks of one row; y: rows (grid-stride in both). About grid_for's total of blocks.
  unsigned gx = (unsigned)((w + block - 1) / block);
  const unsigned total = grid_for((size_t)h * (size_t)w, block);
  if (gx > total) gx = total;
  if (gx < 1) gx = 1;
  int64_t gy = total / gx;
  if (gy < 1) gy = 1;
  if (gy > h) gy = h;
  if (gy > 65535) gy = 65535;
  const dim3 grid(gx, (unsigned)gy);
  switch (dtype) {
    case SNB_F16:
      return sn::launch(false, sn_backward_kernel<__half>, grid, block, 0, stream, (const __half *)G,
                        (__half *)dW, h, w, u, v, sigma, gw, accumulate);
    case SNB_BF16:
      return sn::launch(false, sn_backward_kernel<__nv_bfloat16>, grid, block, 0, stream,
                        (const __nv_bfloat16 *)G, (__nv_bfloat16 *)dW, h, w, u, v, sigma, gw, accumulate);
    default:
      return sn::launch(false, sn_backward_kernel<float>, grid, block, 0, stream, (const float *)G,
                        (float *)dW, h, w, u, v, sigma, gw, accumulate);
  }
}

// ---- Memory-floor probe ----------------------------------------------------------------------
// What a call with the fewest dependent steps takes on this card: one streaming pass over the
// input with one grid-wide reduction at its end (scale), then one streaming map (train, eval,
// backward). Plain 16-byte loads, one resident wave of 256-thread blocks striding over the input,
// four loads in flight per thread.

static constexpr int kProbeThreads = sn::kBlock;  // the library's block sums take kBlock threads
static constexpr int kProbeUnroll = 4;

// A 16-byte pack of T, converted to and from floats (the library's VecN).
template <class T>
using Pack = sn::VecN<T, sn::kWide<T>>;

// *out = sum_k a[k] * b[k] (b == NULL: a[k]²) in float. Each block adds its share in a fixed
// order and writes part[blockIdx.x]; the last block to arrive adds part[] in block order, writes
// *out, and leaves *counter at 0 for the next call. Same grid, same bits. a, b 16-byte aligned.
template <class T, bool TWO>
static __global__ void __launch_bounds__(kProbeThreads)
    probe_reduce_kernel(const T *a, const T *b, size_t n, float *part, unsigned *counter,
                        float *out) {
  constexpr int E = sn::kWide<T>;
  using R = typename Pack<T>::raw;
  const T *bb = TWO ? b : a;
  const size_t nq = n / E, stride = (size_t)gridDim.x * blockDim.x;
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  float acc = 0.f;
  auto add = [&](const R &x, const R &y) {
    float fx[E], fy[E];
    Pack<T>::cvt(x, fx);
    Pack<T>::cvt(y, fy);
#pragma unroll
    for (int e = 0; e < E; ++e) acc += fx[e] * fy[e];
  };
  for (; i + (kProbeUnroll - 1) * stride < nq; i += kProbeUnroll * stride) {
    R x[kProbeUnroll], y[kProbeUnroll];
#pragma unroll
    for (int u = 0; u < kProbeUnroll; ++u) {
      x[u] = Pack<T>::load_raw(a + E * (i + u * stride));
      if (TWO) y[u] = Pack<T>::load_raw(bb + E * (i + u * stride));
    }
#pragma unroll
    for (int u = 0; u < kProbeUnroll; ++u) add(x[u], TWO ? y[u] : x[u]);
  }
  for (; i < nq; i += stride) {
    const R x = Pack<T>::load_raw(a + E * i);
    add(x, TWO ? Pack<T>::load_raw(bb + E * i) : x);
  }
  const size_t k = nq * E + blockIdx.x * (size_t)blockDim.x + threadIdx.x;  // the tail
  if (k < n) acc += sn::to_f(a[k]) * sn::to_f(bb[k]);
  acc = sn::block_sum(acc);
  if (threadIdx.x == 0) part[blockIdx.x] = acc;
  if (!sn::last_block_to_arrive(counter, gridDim.x)) return;
  const float s = sn::block_sum_of(part, gridDim.x);
  if (threadIdx.x == 0) *out = s;
}

// out[k] = in[k] * c, or fma(in[k], c, out[k]) (ACC), c = 1 / (1 + |*scalar|): a scale that
// depends on the reduction before.
template <class T, bool ACC>
static __global__ void __launch_bounds__(kProbeThreads)
    probe_map_kernel(const T *in, T *out, size_t n, const float *scalar) {
  constexpr int E = sn::kWide<T>;
  using R = typename Pack<T>::raw;
  const float c = 1.f / (1.f + fabsf(*scalar));
  const size_t nq = n / E, stride = (size_t)gridDim.x * blockDim.x;
  auto map = [&](size_t q, const R &x, const R &old) {
    float f[E], g[E];
    Pack<T>::cvt(x, f);
    if (ACC) Pack<T>::cvt(old, g);
#pragma unroll
    for (int e = 0; e < E; ++e) f[e] = ACC ? __fmaf_rn(f[e], c, g[e]) : f[e] * c;
    Pack<T>::store(out + E * q, f);
  };
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  for (; i + (kProbeUnroll - 1) * stride < nq; i += kProbeUnroll * stride) {
    R x[kProbeUnroll], o[kProbeUnroll];
#pragma unroll
    for (int u = 0; u < kProbeUnroll; ++u) {
      x[u] = Pack<T>::load_raw(in + E * (i + u * stride));
      o[u] = ACC ? Pack<T>::load_raw(out + E * (i + u * stride)) : x[u];
    }
#pragma unroll
    for (int u = 0; u < kProbeUnroll; ++u) map(i + u * stride, x[u], o[u]);
  }
  for (; i < nq; i += stride) {
    const R x = Pack<T>::load_raw(in + E * i);
    map(i, x, ACC ? Pack<T>::load_raw(out + E * i) : x);
  }
  const size_t k = nq * E + blockIdx.x * (size_t)blockDim.x + threadIdx.x;  // the tail
  if (k < n)
    out[k] = sn::from_f<T>(ACC ? __fmaf_rn(sn::to_f(in[k]), c, sn::to_f(out[k])) : sn::to_f(in[k]) * c);
}

extern "C" int snb_probe_max_blocks(void) { return sm_count() * 2048 / kProbeThreads; }

// Blocks of `kernel` resident per multiprocessor (asked once per kernel; at least 1).
static int probe_per_sm(const void *kernel) {
  enum { kSlots = 12 };  // the probe's kernels: 2 kinds x 2 variants x 3 types
  static const void *keys[kSlots];
  static int vals[kSlots];
  int k = 0;
  for (; k < kSlots && keys[k]; ++k)
    if (keys[k] == kernel) return vals[k];
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kProbeThreads, 0) !=
          cudaSuccess || per_sm <= 0)
    per_sm = 1;
  if (k < kSlots) keys[k] = kernel, vals[k] = per_sm;  // (a full table: asked every time)
  return per_sm;
}

// One resident wave of `kernel` (its occupancy on every multiprocessor), no more blocks than
// packs of E elements in n / kProbeThreads, at least 1.
static unsigned probe_grid(const void *kernel, size_t n, int E) {
  size_t g = (size_t)probe_per_sm(kernel) * (size_t)sm_count();
  const size_t max_g = (size_t)snb_probe_max_blocks();
  const size_t need = (n / (size_t)E + kProbeThreads - 1) / kProbeThreads;
  if (g > max_g) g = max_g;
  if (g > need) g = need;
  return g < 1 ? 1u : (unsigned)g;
}

// `kernel` over n elements of T on probe_grid's blocks, through the library's launch (its own
// status, not an error left pending before it).
template <class T, class... P, class... A>
static cudaError_t launch_probe(void (*kernel)(P...), size_t n, cudaStream_t stream, A... args) {
  return sn::launch(false, kernel, probe_grid((const void *)kernel, n, sn::kWide<T>), kProbeThreads, 0,
                    stream, args...);
}

template <class T>
static cudaError_t probe_reduce(const T *a, const T *b, size_t n, float *part, unsigned *counter,
                                float *out, cudaStream_t stream) {
  return b ? launch_probe<T>(probe_reduce_kernel<T, true>, n, stream, a, b, n, part, counter, out)
           : launch_probe<T>(probe_reduce_kernel<T, false>, n, stream, a, b, n, part, counter, out);
}

template <class T>
static cudaError_t probe_map(const T *in, T *out, size_t n, const float *scalar, int accumulate,
                             cudaStream_t stream) {
  return accumulate ? launch_probe<T>(probe_map_kernel<T, true>, n, stream, in, out, n, scalar)
                    : launch_probe<T>(probe_map_kernel<T, false>, n, stream, in, out, n, scalar);
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

extern "C" cudaError_t snb_probe_reduce(const void *a, const void *b, int dtype, size_t n,
                                        float *part, unsigned *counter, float *out,
                                        cudaStream_t stream) {
  if (!aligned16(a) || !aligned16(b)) return cudaErrorMisalignedAddress;
  switch (dtype) {
    case SNB_F16:
      return probe_reduce((const __half *)a, (const __half *)b, n, part, counter, out, stream);
    case SNB_BF16:
      return probe_reduce((const __nv_bfloat16 *)a, (const __nv_bfloat16 *)b, n, part, counter,
                          out, stream);
    default:
      return probe_reduce((const float *)a, (const float *)b, n, part, counter, out, stream);
  }
}

extern "C" cudaError_t snb_probe_map(const void *in, void *out, int dtype, size_t n,
                                     const float *scalar, int accumulate, cudaStream_t stream) {
  if (!aligned16(in) || !aligned16(out)) return cudaErrorMisalignedAddress;
  switch (dtype) {
    case SNB_F16:
      return probe_map((const __half *)in, (__half *)out, n, scalar, accumulate, stream);
    case SNB_BF16:
      return probe_map((const __nv_bfloat16 *)in, (__nv_bfloat16 *)out, n, scalar, accumulate,
                       stream);
    default:
      return probe_map((const float *)in, (float *)out, n, scalar, accumulate, stream);
  }
}
