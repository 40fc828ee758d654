/* Tiny CUDA kernels of sn_bench: the pieces of the cuBLAS baseline that cuBLAS has no call for,
 * and the memory-floor probe. */
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

/* ---- Memory-floor probe: what the fewest dependent steps cost on this card ----
 * The "probe" rows of sn_bench: not spectral normalization, but the least any call of a mode can
 * be, structurally: a streaming reduction over W (scale), then a streaming map (train and eval:
 * W -> W_sn; backward: a reduction over G and W, then G -> dW). The ratio of a specnorm row to its
 * probe row is what is left to gain without removing a pass or a grid-wide step.
 *
 * *out = sum_k a[k] * b[k] (b == NULL: sum_k a[k]^2) in float, deterministic: per-block sums into
 * part[] (snb_probe_max_blocks() floats), the last block to arrive adds them in block order and
 * sets *counter (zero before the first call) back to 0. a and b 16-byte aligned
 * (cudaErrorMisalignedAddress otherwise). */
int snb_probe_max_blocks(void);
cudaError_t snb_probe_reduce(const void *a, const void *b, int dtype, size_t n, float *part,
                             unsigned *counter, float *out, cudaStream_t stream);

/* out[k] = in[k] * c (accumulate != 0: out[k] = fma(in[k], c, out[k])) in float, c = 1 / (1 +
 * |*scalar|), rounded once to `dtype`. in and out 16-byte aligned (cudaErrorMisalignedAddress otherwise). */
cudaError_t snb_probe_map(const void *in, void *out, int dtype, size_t n, const float *scalar,
                          int accumulate, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
