/* The CPU reference: every quantity of SPEC.md in double precision, written for clarity.
 * Loops run over W in memory order ([A][h][B]) so the reference stays usable on large weights. */
#include "sn_reference.h"

#include <math.h>

sn_view_t sn_ref_view(int ndim, const int64_t *shape, int dim) {
  sn_view_t v = {1, shape[dim], 1};
  for (int k = 0; k < dim; ++k) v.A *= shape[k];
  for (int k = dim + 1; k < ndim; ++k) v.B *= shape[k];
  return v;
}

void sn_ref_matvec(const void *W, sn_dtype_t dt, sn_view_t vw, const double *x, double *t) {
  for (int64_t i = 0; i < vw.h; ++i) t[i] = 0.0;
  for (int64_t a = 0; a < vw.A; ++a) {
    for (int64_t i = 0; i < vw.h; ++i) {
      const int64_t row = (a * vw.h + i) * vw.B;
      const double *xa = x + a * vw.B;
      double acc = 0.0;
      if (dt == SN_DTYPE_FLOAT32) {
        const float *r = (const float *)W + row;
        for (int64_t b = 0; b < vw.B; ++b) acc += (double)r[b] * xa[b];
      } else {
        for (int64_t b = 0; b < vw.B; ++b) acc += (double)sn_load(W, dt, row + b) * xa[b];
      }
      t[i] += acc;
    }
  }
}

void sn_ref_matvec_t(const void *W, sn_dtype_t dt, sn_view_t vw, const double *y, double *s) {
  for (int64_t j = 0; j < vw.A * vw.B; ++j) s[j] = 0.0;
  for (int64_t a = 0; a < vw.A; ++a) {
    double *sa = s + a * vw.B;
    for (int64_t i = 0; i < vw.h; ++i) {
      const int64_t row = (a * vw.h + i) * vw.B;
      if (dt == SN_DTYPE_FLOAT32) {
        const float *r = (const float *)W + row;
        for (int64_t b = 0; b < vw.B; ++b) sa[b] += (double)r[b] * y[i];
      } else {
        for (int64_t b = 0; b < vw.B; ++b) sa[b] += (double)sn_load(W, dt, row + b) * y[i];
      }
    }
  }
}

double sn_ref_dot(const double *x, const double *y, int64_t n) {
  double acc = 0.0;
  for (int64_t k = 0; k < n; ++k) acc += x[k] * y[k];
  return acc;
}

double sn_ref_norm(const double *x, int64_t n) { return sqrt(sn_ref_dot(x, x, n)); }

double sn_ref_norm_divisor(double ssq, double eps) {
  if (eps < 0.0) return sqrt(ssq - eps); /* SN_EPS_ADD_SQUARED */
  const double norm = sqrt(ssq);
  return norm > eps ? norm : eps;
}

/* x ← N(x) = x / sn_ref_norm_divisor(‖x‖², eps); returns ‖x‖² before scaling. */
static double normalize(double *x, int64_t n, double eps) {
  const double ssq = sn_ref_dot(x, x, n), m = sn_ref_norm_divisor(ssq, eps);
  for (int64_t k = 0; k < n; ++k) x[k] /= m;
  return ssq;
}

double sn_ref_iterate(const void *W, sn_dtype_t dt, sn_view_t vw, double *u, double *v, double eps,
                      sn_order_t order) {
  int64_t h = vw.h, w = vw.A * vw.B;
  double last;
  if (order == SN_ORDER_U_FIRST) {
    sn_ref_matvec(W, dt, vw, v, u);   /* u = M v */
    normalize(u, h, eps);             /* u = N(M v) */
    sn_ref_matvec_t(W, dt, vw, u, v); /* v = Mᵀ u */
    last = normalize(v, w, eps);      /* v = N(Mᵀ u) */
  } else {
    sn_ref_matvec_t(W, dt, vw, u, v);
    normalize(v, w, eps);
    sn_ref_matvec(W, dt, vw, v, u);
    last = normalize(u, h, eps);
  }
  /* σ = uᵀ M v = ‖p‖² / max(‖p‖, eps) with p the last product (SPEC.md); with the squared eps,
   * ‖p‖² / sqrt(‖p‖² + eps), what uᵀ M v is there too. */
  return last / sn_ref_norm_divisor(last, eps);
}

double sn_ref_sigma(const void *W, sn_dtype_t dt, sn_view_t vw, const double *u, const double *v,
                    double *scratch) {
  sn_ref_matvec(W, dt, vw, v, scratch);
  return sn_ref_dot(u, scratch, vw.h);
}

float sn_ref_divisor(float sigma, float norm_bound) {
  if (norm_bound > 0.0f) {
    const float r = sigma / norm_bound;
    return r > 1.0f ? r : 1.0f;
  }
  return sigma;
}

void sn_ref_divide(const void *W, void *W_sn, sn_dtype_t dt, int64_t n, float sigma,
                   float norm_bound, float g) {
  const float d = sn_ref_divisor(sigma, norm_bound);
  for (int64_t k = 0; k < n; ++k) {
    const float x = sn_load(W, dt, k);
    sn_store(W_sn, dt, k, sigma > 0.0f ? (x / d) * g : x * 0.0f);
  }
}

double sn_ref_inner(const void *G, const void *W, sn_dtype_t dt, int64_t n) {
  double acc = 0.0;
  for (int64_t k = 0; k < n; ++k) acc += (double)sn_load(G, dt, k) * (double)sn_load(W, dt, k);
  return acc;
}

double sn_ref_backward(const void *W, const void *G, void *dW, sn_dtype_t dt, sn_view_t vw,
                       const float *u, const float *v, float sigma, float norm_bound, float g,
                       float clamp_eps, int detach_sigma, int accumulate) {
  const int64_t n = vw.A * vw.h * vw.B;
  if (!(sigma > 0.0f)) {
    for (int64_t k = 0; k < n; ++k) sn_store(dW, dt, k, accumulate ? sn_load(dW, dt, k) : 0.0f);
    return 0.0;
  }
  const double d = sn_ref_divisor(sigma, norm_bound);
  const double gw = sn_ref_inner(G, W, dt, n);
  const double a = (double)g / d;
  const int depends = !detach_sigma && !(norm_bound > 0.0f && sigma <= norm_bound) && !(sigma <= clamp_eps);
  const double b = depends ? a * gw / (double)sigma : 0.0;
  for (int64_t A = 0; A < vw.A; ++A)
    for (int64_t i = 0; i < vw.h; ++i)
      for (int64_t bb = 0; bb < vw.B; ++bb) {
        const int64_t k = (A * vw.h + i) * vw.B + bb;
        double x = a * sn_load(G, dt, k) - b * (double)u[i] * (double)v[A * vw.B + bb];
        if (accumulate) x += sn_load(dW, dt, k);
        sn_store(dW, dt, k, (float)x);
      }
  return gw / d;
}
