// Tiny CUDA kernels of sn_bench's cuBLAS baseline. See sn_bench_kernels.h.
#include "sn_bench_kernels.h"

#include <stdint.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

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

static unsigned grid_for(size_t n, unsigned block) {
  static int max_blocks = 0;
  if (max_blocks == 0) {
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0)
      sms = 80;
    max_blocks = sms * 8;  // grid-stride loop: a few waves of resident blocks is enough
  }
  size_t g = (n + block - 1) / block;
  if (g < 1) g = 1;
  if (g > (size_t)max_blocks) g = (size_t)max_blocks;
  return (unsigned)g;
}

extern "C" cudaError_t snb_launch_inv_clamp(const float *norm, float *inv, float eps,
                                            cudaStream_t stream) {
  inv_clamp_kernel<<<1, 1, 0, stream>>>(norm, inv, eps);
  return cudaGetLastError();
}

extern "C" cudaError_t snb_launch_div(const float *in, float *out, const float *sigma, size_t n,
                                      cudaStream_t stream) {
  const unsigned block = 256;
  size_t done = 0;
  if ((((uintptr_t)in | (uintptr_t)out) & 15u) == 0 && n >= 4) {
    const size_t n4 = n / 4;
    div4_kernel<<<grid_for(n4, block), block, 0, stream>>>((const float4 *)in, (float4 *)out,
                                                           sigma, n4);
    done = n4 * 4;
  }
  if (done < n) div_kernel<<<grid_for(n - done, block), block, 0, stream>>>(in, out, sigma, done, n);
  return cudaGetLastError();
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
  __shared__ float part[32];
  float acc = 0.f;
  for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n;
       k += (size_t)gridDim.x * blockDim.x)
    acc += ld(a, k) * ld(b, k);
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x < 32) {
    acc = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
    if (threadIdx.x == 0) atomicAdd(out, acc);
  }
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
      dot_kernel<<<grid, block, 0, stream>>>((const __half *)a, (const __half *)b, n, out);
      break;
    case SNB_BF16:
      dot_kernel<<<grid, block, 0, stream>>>((const __nv_bfloat16 *)a, (const __nv_bfloat16 *)b, n,
                                             out);
      break;
    default:
      dot_kernel<<<grid, block, 0, stream>>>((const float *)a, (const float *)b, n, out);
      break;
  }
  return cudaGetLastError();
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
      sn_backward_kernel<<<grid, block, 0, stream>>>((const __half *)G, (__half *)dW, h, w, u, v,
                                                     sigma, gw, accumulate);
      break;
    case SNB_BF16:
      sn_backward_kernel<<<grid, block, 0, stream>>>((const __nv_bfloat16 *)G, (__nv_bfloat16 *)dW,
                                                     h, w, u, v, sigma, gw, accumulate);
      break;
    default:
      sn_backward_kernel<<<grid, block, 0, stream>>>((const float *)G, (float *)dW, h, w, u, v,
                                                     sigma, gw, accumulate);
      break;
  }
  return cudaGetLastError();
}
