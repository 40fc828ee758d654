// Tiny CUDA kernels of sn_bench's cuBLAS baseline. See sn_bench_kernels.h.
#include "sn_bench_kernels.h"

#include <stdint.h>

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
