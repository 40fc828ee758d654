/* The CPU backend: the layer API's forward and backward computed with the double-precision
 * reference. It follows sn_cuda_forward step for step (cuda/forward.cu), so both backends share
 * one definition of warm-up, the eval σ, the commit rule and the scaled variants. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sn_internal.h"
#include "sn_reference.h"

static unsigned health_of(const sn_cuda_forward_args_t *args) {
  unsigned h;
  memcpy(&h, args->sigma + 3, sizeof h);
  return h;
}

int sn__cpu_threads(void) {
  const char *env = getenv("SPECNORM_CPU_THREADS");
  if (env && *env) {
    char *stop = NULL;
    const long n = strtol(env, &stop, 10);
    if (*stop == '\0' && n >= 1 && n <= SN_REF_MAX_THREADS) return (int)n;
  }
  long procs = 0;
#ifdef CPU_COUNT
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) procs = CPU_COUNT(&set);
#endif
  if (procs < 1) procs = sysconf(_SC_NPROCESSORS_ONLN);
  return procs < 1 ? 1 : procs > 8 ? 8 : (int)procs;
}

static void cpu_forward(sn_layer_t *layer, const sn_cuda_forward_args_t *args);

/* The reference's threads for this layer's call (sn_ref_set_threads is per calling thread), then
 * the calling thread's own count again. */
void sn__cpu_forward(sn_layer_t *layer, const sn_cuda_forward_args_t *args) {
  const int prev = sn_ref_set_threads(layer->cpu_threads);
  cpu_forward(layer, args);
  sn_ref_set_threads(prev);
}

static void cpu_forward(sn_layer_t *layer, const sn_cuda_forward_args_t *args) {
  const sn_view_t vw = layer->view;
  const sn_dtype_t dt = layer->desc.dtype;
  const int64_t h = vw.h, w = vw.A * vw.B;
  const double eps = (double)sn__eps_param(&layer->desc); /* signed by the mode */
  double *u = layer->ref_u, *v = layer->ref_v;
  double sigma;
  int iters = 0;

  if (args->is_1d) {
    const double ssq = sn_ref_inner(args->W, args->W, dt, args->numel); /* ‖W‖² */
    /* σ = max(‖W‖, eps) (or sqrt(‖W‖² + eps)); a NaN must not become σ = eps */
    sigma = isnan(ssq) ? ssq : sn_ref_norm_divisor(ssq, eps);
  } else {
    iters = args->warmup_iters + (args->training ? args->n_iters : 0);
    /* The deterministic restart after a zero σ: the first product starts from ones. */
    const int ones = iters > 0 && (health_of(args) & SN_HEALTH_RESTART);
    const int ones_u = ones && layer->desc.order == SN_ORDER_V_FIRST, ones_v = ones && !ones_u;
    for (int64_t i = 0; i < h; ++i) u[i] = ones_u ? 1.0 : (double)args->u[i];
    for (int64_t j = 0; j < w; ++j) v[j] = ones_v ? 1.0 : (double)args->v[j];
    sigma = NAN;
    for (int k = 0; k < iters; ++k) sigma = sn_ref_iterate(args->W, dt, vw, u, v, eps, layer->desc.order);
    if (!args->training) sigma = sn_ref_sigma(args->W, dt, vw, u, v, layer->ref_t);
    if (iters == 0 && args->training) return; /* nothing was asked for */
  }

  /* Commit rule (README, "Degenerate steps"): a σ that is not usable changes nothing. */
  const float sig_new = (float)sigma;
  const int good = sn_sigma_usable(sig_new);
  if (good) {
    if (args->is_1d) { /* u = W / σ and v = 1: what the backward of N(W) needs */
      for (int64_t i = 0; i < h; ++i) args->u[i] = (float)((double)sn_load(args->W, dt, i) / (double)sig_new);
      args->v[0] = 1.0f;
    } else if (iters > 0) {
      for (int64_t i = 0; i < h; ++i) args->u[i] = (float)u[i];
      for (int64_t j = 0; j < w; ++j) args->v[j] = (float)v[j];
    }
    args->sigma[0] = sig_new;
    args->sigma[1] = 1.0f / sig_new;
  }
  const float g = layer->plan.gamma ? *layer->plan.gamma : 1.0f;
  const float sig = args->sigma[0];
  const float bound = layer->desc.norm_bound;
  args->sigma[2] = sig > 0.0f ? g / sn_ref_divisor(sig, bound) : 0.0f;
  /* Only an iterated forward asks for (or reports) a restart from ones: a 1-D weight has none. */
  const unsigned health =
      sn_health_after(health_of(args), sig_new, !args->is_1d && iters > 0, g, args->sigma[2]);
  memcpy(args->sigma + 3, &health, sizeof health);
  if (args->W_sn) sn_ref_divide(args->W, args->W_sn, dt, args->numel, sig, bound, g);
}

void sn__cpu_backward(sn_layer_t *layer, const void *W, const void *G, void *dW, unsigned flags,
                      float *dgamma) {
  const float g = layer->plan.gamma ? *layer->plan.gamma : 1.0f;
  const int prev = sn_ref_set_threads(layer->cpu_threads);
  const double dg = sn_ref_backward(W, G, dW, layer->desc.dtype, layer->view, layer->u, layer->v,
                                    layer->sigma[0], layer->desc.norm_bound, g,
                                    sn__backward_clamp_eps(layer),
                                    (flags & SN_BACKWARD_DETACH_SIGMA) != 0,
                                    (flags & SN_BACKWARD_ACCUMULATE) != 0);
  sn_ref_set_threads(prev);
  if (dgamma) *dgamma = (float)dg;
}

/* ---- groups: the members as tasks ---------------------------------------------------------- */

typedef struct {
  sn_layer_t *const *layers;
  const void *const *W;
  void *const *W_sn;    /* forward */
  const void *const *G; /* backward (NULL: a forward) */
  void *const *dW;
  float *const *dgamma; /* NULL, or one pointer per layer (each may be NULL) */
  int training;
  unsigned flags;
  const int *member; /* task k is layers[member[k]] */
} group_run_t;

static void run_member(const group_run_t *r, int k) {
  sn_layer_t *l = r->layers[k];
  if (r->G)
    sn__cpu_backward(l, r->W[k], r->G[k], r->dW[k], r->flags, r->dgamma ? r->dgamma[k] : NULL);
  else
    sn__cpu_run_forward(l, r->W[k], r->W_sn[k], r->training, 0);
}

static void run_task(void *ctx, int k) {
  const group_run_t *r = (const group_run_t *)ctx;
  run_member(r, r->member[k]);
}

/* The elements of W a member's call reads (its products and its division or its backward's passes,
 * roughly): what balances the tasks. */
static int64_t member_work(const group_run_t *r, const sn_layer_t *l) {
  if (r->G) return l->numel;
  const int64_t iters = (l->warmed_up ? 0 : l->desc.warmup_iterations) +
                        (r->training ? l->desc.n_power_iterations : 1);
  return l->numel * (2 * iters + 1);
}

/* Members that split over their own threads (as large as two grains, with a cpu_threads > 1) run
 * one after another on the calling thread, as sn_forward would run them; the others are tasks
 * over the most threads any of them has (sn_ref_run_tasks), one member wholly on one thread. The
 * members share no buffer they write (sn_group_create, sn_group_set_gradients), and each one's
 * results do not depend on the threads, so they are the bits of the members' own calls in order. */
static void run_group(const group_run_t *proto, int count) {
  int *member = malloc((size_t)count * sizeof *member);
  int64_t *work = malloc((size_t)count * sizeof *work);
  group_run_t r = *proto;
  r.member = member;
  const int64_t grain = sn_ref_grain();
  int tasks = 0, threads = 1;
  for (int k = 0; k < count; ++k) {
    const sn_layer_t *l = r.layers[k];
    const int splits = l->cpu_threads > 1 && l->numel >= 2 * grain;
    if (splits || !member || !work) {
      run_member(&r, k);
      continue;
    }
    member[tasks] = k;
    work[tasks++] = member_work(&r, l);
    if (l->cpu_threads > threads) threads = l->cpu_threads;
  }
  if (tasks > 0) {
    const int prev = sn_ref_set_threads(threads);
    sn_ref_run_tasks(tasks, work, run_task, &r);
    sn_ref_set_threads(prev);
  }
  free(member);
  free(work);
}

void sn__cpu_group_forward(sn_layer_t *const *layers, const void *const *W, void *const *W_sn,
                           int count, int training) {
  const group_run_t r = {layers, W, W_sn, NULL, NULL, NULL, training, 0, NULL};
  run_group(&r, count);
}

void sn__cpu_group_backward(sn_layer_t *const *layers, const void *const *W, const void *const *G,
                            void *const *dW, float *const *dgamma, int count, unsigned flags) {
  const group_run_t r = {layers, W, NULL, G, dW, dgamma, 0, flags, NULL};
  run_group(&r, count);
}
