/* The CPU backend: the layer API's forward computed with the double-precision reference.
 * It follows sn_cuda_forward step for step (cuda/forward.cu), so both backends share one
 * definition of warm-up, the eval σ and the commit rule. */
#include <math.h>

#include "sn_internal.h"
#include "sn_reference.h"

void sn__cpu_forward(sn_layer_t *layer, const sn_cuda_forward_args_t *args) {
  const sn_view_t vw = layer->view;
  const int64_t h = vw.h, w = vw.A * vw.B;
  const double eps = (double)layer->desc.eps;
  double *u = layer->ref_u, *v = layer->ref_v;
  double sigma;
  int iters = 0;

  if (args->is_1d) {
    double norm = 0.0;
    for (int64_t k = 0; k < args->numel; ++k) norm += (double)args->W[k] * (double)args->W[k];
    norm = sqrt(norm);
    sigma = norm > eps ? norm : eps;
  } else {
    for (int64_t i = 0; i < h; ++i) u[i] = (double)args->u[i];
    for (int64_t j = 0; j < w; ++j) v[j] = (double)args->v[j];
    iters = args->warmup_iters + (args->training ? args->n_iters : 0);
    sigma = NAN;
    for (int k = 0; k < iters; ++k) sigma = sn_ref_iterate(args->W, vw, u, v, eps, layer->desc.order);
    if (!args->training) sigma = sn_ref_sigma(args->W, vw, u, v, layer->ref_t);
    if (iters == 0 && args->training) return; /* nothing was asked for */
  }

  /* Commit rule (README, "Degenerate steps"): a zero or non-finite σ changes nothing. */
  const float sig = (float)sigma;
  const int good = isfinite(sig) && sig > 0.0f;
  if (good) {
    if (iters > 0) {
      for (int64_t i = 0; i < h; ++i) args->u[i] = (float)u[i];
      for (int64_t j = 0; j < w; ++j) args->v[j] = (float)v[j];
    }
    args->sigma[0] = sig;
    args->sigma[1] = 1.0f / sig;
  }
  if (args->W_sn) sn_ref_divide(args->W, args->W_sn, args->numel, good ? sig : args->sigma[0]);
}
