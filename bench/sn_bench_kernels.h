/* Tiny CUDA kernels of sn_bench's cuBLAS baseline (the pieces cuBLAS has no call for). */
#ifndef SN_BENCH_KERNELS_H
#define SN_BENCH_KERNELS_H

#include <stddef.h>
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* inv[0] = 1 / max(norm[0], eps): the scale of x / max(||x||, eps), read by cublasSscal as a
 * device-pointer alpha. One thread. */
cudaError_t snb_launch_inv_clamp(const float *norm, float *inv, float eps, cudaStream_t stream);

/* out[i] = in[i] / sigma[0], i < n (PyTorch's `weight / sigma`). Vectorized when aligned. */
cudaError_t snb_launch_div(const float *in, float *out, const float *sigma, size_t n,
                           cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
