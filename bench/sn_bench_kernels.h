/* Tiny CUDA kernels of sn_bench's cuBLAS baseline (the pieces cuBLAS has no call for). */
#ifndef SN_BENCH_KERNELS_H
#define SN_BENCH_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types of the baseline kernels: the same numbers as sn_dtype_t. */
enum { SNB_F32 = 0, SNB_F16 = 1, SNB_BF16 = 2 };

/* inv[0] = 1 / max(norm[0], eps): the scale of x / max(||x||, eps), read by cublasSscal as a
 * device-pointer alpha. One thread. (eps = 0: inv = 1 / norm, the scale-only 1/sigma.) */
cudaError_t snb_launch_inv_clamp(const float *norm, float *inv, float eps, cudaStream_t stream);

/* out[i] = in[i] / sigma[0], i < n (PyTorch's `weight / sigma`). Vectorized when aligned. */
cudaError_t snb_launch_div(const float *in, float *out, const float *sigma, size_t n,
                           cudaStream_t stream);

/* out[0] = sum_k a[k] * b[k] in float (a, b of element type `dtype`): a cudaMemsetAsync of out,
 * then one grid-stride kernel with a block reduction and one atomicAdd per block (the order of
 * the atomics is not fixed). The baseline's <G, W> where cublasSdot does not apply. */
cudaError_t snb_launch_dot(const void *a, const void *b, int dtype, size_t n, float *out,
                           cudaStream_t stream);

/* The backward of W_sn = W / sigma for a row-major h x w weight (dim 0), elementwise:
 *   dW[i][j] (+)= (G[i][j] - (gw[0] / sigma[0]) * u[i] * v[j]) / sigma[0]
 * (float arithmetic, one rounding to `dtype` at the store; accumulate != 0 adds to dW). */
cudaError_t snb_launch_sn_backward(const void *G, void *dW, int dtype, int64_t h, int64_t w,
                                   const float *u, const float *v, const float *sigma,
                                   const float *gw, int accumulate, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
