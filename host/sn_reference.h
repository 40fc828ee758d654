/* The CPU reference of specnorm: plain C in double precision, the oracle of every test and the
 * arithmetic of the CPU backend. Internal (not installed); the tests include it directly.
 *
 * The weight is float32, contiguous, seen as the matrix M (h × w) of SPEC.md through the view
 * [A][h][B]: M[i, a·B + b] = W[(a·h + i)·B + b], w = A·B. */
#ifndef SN_REFERENCE_H
#define SN_REFERENCE_H

#include <stdint.h>

#include "specnorm.h"
#include "sn_cuda.h" /* sn_view_t */

#ifdef __cplusplus
extern "C" {
#endif

/* The view of a weight of `ndim` dimensions `shape` for output axis `dim` (already in [0, ndim)). */
sn_view_t sn_ref_view(int ndim, const int64_t *shape, int dim);

/* t = M x  (t: h, x: w). */
void sn_ref_matvec(const float *W, sn_view_t vw, const double *x, double *t);
/* s = Mᵀ y (s: w, y: h). */
void sn_ref_matvec_t(const float *W, sn_view_t vw, const double *y, double *s);
/* ‖x‖₂ and xᵀy. */
double sn_ref_norm(const double *x, int64_t n);
double sn_ref_dot(const double *x, const double *y, int64_t n);

/* One power iteration in `order` with eps clamping (SPEC.md), updating u (h) and v (w) in place.
 * Returns σ of this iteration without an extra product:
 * u-first: ‖Mᵀu‖² / max(‖Mᵀu‖, eps); v-first: ‖Mv‖² / max(‖Mv‖, eps). */
double sn_ref_iterate(const float *W, sn_view_t vw, double *u, double *v, double eps,
                      sn_order_t order);

/* σ = uᵀ M v with the given vectors (the eval forward). `scratch` holds h doubles. */
double sn_ref_sigma(const float *W, sn_view_t vw, const double *u, const double *v, double *scratch);

/* W_sn = W / sigma in float32 arithmetic, as every backend writes it; sigma <= 0 gives W · 0. */
void sn_ref_divide(const float *W, float *W_sn, int64_t n, float sigma);

#ifdef __cplusplus
}
#endif

#endif
