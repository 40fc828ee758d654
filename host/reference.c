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

void sn_ref_matvec(const float *W, sn_view_t vw, const double *x, double *t) {
  for (int64_t i = 0; i < vw.h; ++i) t[i] = 0.0;
  for (int64_t a = 0; a < vw.A; ++a) {
    for (int64_t i = 0; i < vw.h; ++i) {
      const float *row = W + (a * vw.h + i) * vw.B;
      const double *xa = x + a * vw.B;
      double acc = 0.0;
      for (int64_t b = 0; b < vw.B; ++b) acc += (double)row[b] * xa[b];
      t[i] += acc;
    }
  }
}

void sn_ref_matvec_t(const float *W, sn_view_t vw, const double *y, double *s) {
  for (int64_t j = 0; j < vw.A * vw.B; ++j) s[j] = 0.0;
  for (int64_t a = 0; a < vw.A; ++a) {
    double *sa = s + a * vw.B;
    for (int64_t i = 0; i < vw.h; ++i) {
      const float *row = W + (a * vw.h + i) * vw.B;
      for (int64_t b = 0; b < vw.B; ++b) sa[b] += (double)row[b] * y[i];
    }
  }
}

double sn_ref_dot(const double *x, const double *y, int64_t n) {
  double acc = 0.0;
  for (int64_t k = 0; k < n; ++k) acc += x[k] * y[k];
  return acc;
}

double sn_ref_norm(const double *x, int64_t n) { return sqrt(sn_ref_dot(x, x, n)); }

/* x ← x / max(‖x‖, eps); returns ‖x‖ before scaling. */
static double normalize(double *x, int64_t n, double eps) {
  double norm = sn_ref_norm(x, n);
  double m = norm > eps ? norm : eps;
  for (int64_t k = 0; k < n; ++k) x[k] /= m;
  return norm;
}

double sn_ref_iterate(const float *W, sn_view_t vw, double *u, double *v, double eps,
                      sn_order_t order) {
  int64_t h = vw.h, w = vw.A * vw.B;
  double last;
  if (order == SN_ORDER_U_FIRST) {
    sn_ref_matvec(W, vw, v, u);     /* u = M v */
    normalize(u, h, eps);           /* u = N(M v) */
    sn_ref_matvec_t(W, vw, u, v);   /* v = Mᵀ u */
    last = normalize(v, w, eps);    /* v = N(Mᵀ u) */
  } else {
    sn_ref_matvec_t(W, vw, u, v);
    normalize(v, w, eps);
    sn_ref_matvec(W, vw, v, u);
    last = normalize(u, h, eps);
  }
  /* σ = uᵀ M v = ‖p‖² / max(‖p‖, eps) with p the last product (SPEC.md). */
  return last * last / (last > eps ? last : eps);
}

double sn_ref_sigma(const float *W, sn_view_t vw, const double *u, const double *v,
                    double *scratch) {
  sn_ref_matvec(W, vw, v, scratch);
  return sn_ref_dot(u, scratch, vw.h);
}

void sn_ref_divide(const float *W, float *W_sn, int64_t n, float sigma) {
  if (sigma > 0.0f) {
    for (int64_t k = 0; k < n; ++k) W_sn[k] = W[k] / sigma;
  } else {
    for (int64_t k = 0; k < n; ++k) W_sn[k] = W[k] * 0.0f;
  }
}
