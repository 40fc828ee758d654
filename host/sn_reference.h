/* The CPU reference of specnorm: plain C in double precision, the oracle of every test and the
 * arithmetic of the CPU backend. Internal (not installed); the tests include it directly.
 *
 * The weight is contiguous, of element type `dt`, seen as the matrix M (h × w) of SPEC.md through
 * the view [A][h][B]: M[i, a·B + b] = W[(a·h + i)·B + b], w = A·B. */
#ifndef SN_REFERENCE_H
#define SN_REFERENCE_H

#include <stddef.h>
#include <stdint.h>

#include "specnorm.h"
#include "sn_cuda.h" /* sn_view_t */

#ifdef __cplusplus
extern "C" {
#endif

/* ---- element types (host/dtype.c) ---- */
float sn_half_to_float(uint16_t h);
uint16_t sn_float_to_half(float f);     /* round to nearest even, like __float2half_rn */
float sn_bf16_to_float(uint16_t h);
uint16_t sn_float_to_bf16(float f);     /* round to nearest even, like __float2bfloat16_rn */
size_t sn_dtype_size(sn_dtype_t t);
/* "float32", "float16", "bfloat16"; "?" for other values. */
const char *sn_dtype_name(sn_dtype_t t);
float sn_load(const void *p, sn_dtype_t t, int64_t k);
void sn_store(void *p, sn_dtype_t t, int64_t k, float x);
/* Elements [k, k + n) at once: sn_load's and sn_store's values, without a call per element. */
void sn_load_n(const void *p, sn_dtype_t t, int64_t k, int64_t n, float *out);
void sn_store_n(void *p, sn_dtype_t t, int64_t k, int64_t n, const float *x);

/* The vector extensions of this CPU that the host loops may use (host/dtype.c; x86 only, else 0),
 * asked once: SN_CPU_F16C, the conversions to and from half; SN_CPU_AVX2, the reference's loops
 * over W and the narrowing to bfloat16 built for AVX2 (not FMA: the same operations, the same bits). */
enum { SN_CPU_F16C = 1, SN_CPU_AVX2 = 2 };
int sn_cpu_features(void);
/* For the tests, to run the baseline loops on a CPU that has the extensions: sn_cpu_features()
 * reports only those in `mask` (-1, the default: all) from now on, in the whole process; returns
 * the previous mask. */
int sn_cpu_allow_features(int mask);

/* ---- the math (host/reference.c) ---- */

/* The view of a weight of `ndim` dimensions `shape` for output axis `dim` (already in [0, ndim)). */
sn_view_t sn_ref_view(int ndim, const int64_t *shape, int dim);

/* Threads the calling thread's next calls below may use (1, the default: the calling thread
 * alone; at most SN_REF_MAX_THREADS). sn_ref_matvec, sn_ref_matvec_t (and so sn_ref_iterate and
 * sn_ref_sigma), sn_ref_divide and sn_ref_backward's dW split their outputs (M v's rows, Mᵀ y's
 * columns, ranges of elements, rows of dW; so a product with few outputs splits less) among up to
 * that many threads, each taking at least the grain's elements of W (SN_REF_GRAIN: 2¹⁹, some
 * 70 µs of a product on one core of an x86-64 with AVX2, where starting and joining a thread costs
 * 30-40 µs: at 2¹⁷ a layer of 2-5 × 10⁵ elements took twice as long on two threads as on one,
 * bench/NOTES.md, session 27); every output element is still
 * computed by one thread in the order of the elements, so the results are the same bits for any
 * count or grain. ⟨G, W⟩ (sn_ref_inner) splits its blocks (SN_REF_INNER_BLOCK elements), whose
 * sums the calling thread adds in order. Both setters return the previous value and hold for the
 * calling thread only (thread-local); the grain is changed only by the tests, to split small
 * weights. */
#define SN_REF_MAX_THREADS 64
#define SN_REF_GRAIN ((int64_t)1 << 19)
int sn_ref_set_threads(int n);
int64_t sn_ref_set_grain(int64_t elements);
int64_t sn_ref_grain(void); /* the calling thread's */
/* Threads the calls above have started in this process so far (for the tests: whether a call split). */
int64_t sn_ref_threads_started(void);
/* fn(ctx, k) for every k in [0, n), as independent tasks split over the calling thread's threads
 * (sn_ref_set_threads): contiguous runs of tasks of about equal work (work[k], e.g. the elements
 * task k reads; negative counts as 0), as many runs as the threads allow and the total work pays
 * for at a grain a run, the first on the calling thread. Every task starts with the caller's grain
 * and 1 thread (sn_ref_set_threads; a task may set its own). Each task runs
 * once, wholly on one thread, so tasks that share no output give the same results on any split. */
typedef void (*sn_ref_task_fn)(void *ctx, int k);
void sn_ref_run_tasks(int n, const int64_t *work, sn_ref_task_fn fn, void *ctx);

/* t = M x  (t: h, x: w). */
void sn_ref_matvec(const void *W, sn_dtype_t dt, sn_view_t vw, const double *x, double *t);
/* s = Mᵀ y (s: w, y: h). */
void sn_ref_matvec_t(const void *W, sn_dtype_t dt, sn_view_t vw, const double *y, double *s);
/* ‖x‖₂ and xᵀy. */
double sn_ref_norm(const double *x, int64_t n);
double sn_ref_dot(const double *x, const double *y, int64_t n);

/* The divisor of N(x) from ‖x‖²: max(‖x‖, eps) for eps > 0 (SN_EPS_CLAMP_NORM), sqrt(‖x‖² − eps)
 * for eps < 0 (SN_EPS_ADD_SQUARED of |eps|, the sign sn__eps_param gives it). */
double sn_ref_norm_divisor(double ssq, double eps);

/* One power iteration in `order` with eps clamping (SPEC.md), updating u (h) and v (w) in place.
 * eps signed as sn_ref_norm_divisor's.
 * Returns σ of this iteration without an extra product, ‖p‖² / (N's divisor of p) for the last
 * product p: u-first p = Mᵀu, v-first p = Mv (clamped: ‖p‖² / max(‖p‖, eps)). */
double sn_ref_iterate(const void *W, sn_dtype_t dt, sn_view_t vw, double *u, double *v, double eps,
                      sn_order_t order);

/* σ = uᵀ M v with the given vectors (the eval forward). `scratch` holds h doubles. */
double sn_ref_sigma(const void *W, sn_dtype_t dt, sn_view_t vw, const double *u, const double *v,
                    double *scratch);

/* The divisor of W: σ, or max(1, σ / c) under a norm bound c > 0. */
float sn_ref_divisor(float sigma, float norm_bound);

/* W_sn = (W / d) · g in float32 arithmetic, rounded to dt, as every backend writes it, with
 * d = sn_ref_divisor(sigma, norm_bound); sigma <= 0 gives W · 0. */
void sn_ref_divide(const void *W, void *W_sn, sn_dtype_t dt, int64_t n, float sigma,
                   float norm_bound, float g);

/* ⟨G, W⟩ = Σ G ∘ W in double: the sum of each block of SN_REF_INNER_BLOCK elements in element
 * order, then the blocks' sums in block order (fixed blocks: the same bits for any threads). */
#define SN_REF_INNER_BLOCK ((int64_t)1 << 16)
double sn_ref_inner(const void *G, const void *W, sn_dtype_t dt, int64_t n);

/* The backward of W_sn = (W / d) · g (SPEC.md, "Backward" and "Scaled variants"), with u, v, σ of
 * the forward: dW = a·G − b·P⁻¹(u vᵀ), a = g / d, b = a·⟨G, W⟩ / σ when σ is not detached and d
 * depends on σ, else 0. d does not depend on σ under an inactive norm bound
 * (σ <= c), nor where σ is the eps clamp of a 1-D weight's norm (clamp_eps > 0 and σ <= clamp_eps:
 * W_sn = W / eps there, as PyTorch's F.normalize; pass clamp_eps = 0 otherwise).
 * accumulate: dW += instead of dW =. σ <= 0 gives a = b = 0.
 * Returns ∂L/∂g = ⟨G, W⟩ / d (0 when σ <= 0). dW is rounded to dt once, from double. */
double sn_ref_backward(const void *W, const void *G, void *dW, sn_dtype_t dt, sn_view_t vw,
                       const float *u, const float *v, float sigma, float norm_bound, float g,
                       float clamp_eps, int detach_sigma, int accumulate);

#ifdef __cplusplus
}
#endif

#endif
