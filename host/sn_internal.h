/* Internal interfaces of specnorm: where host/ (API, validation, CPU reference) meets cuda/
 * (kernels and their launchers). Not installed. */
#ifndef SN_INTERNAL_H
#define SN_INTERNAL_H

#include "specnorm.h"
#include "sn_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Record a detailed message for this thread and return `status`. */
sn_status_t sn__fail(sn_status_t status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Map a CUDA error to SN_ERROR_CUDA (or SN_ERROR_ALLOCATION / SN_ERROR_NO_DEVICE) with a message
 * naming `what`, and clear the runtime's last error (the failure reported is not left pending). */
sn_status_t sn__cuda_fail(int cuda_error, const char *what);

struct sn_layer {
  sn_layer_desc_t desc;
  sn_view_t view;      /* [A][h][B] view of W */
  int64_t numel;
  int is_1d;
  int warmed_up;       /* host-side: the warm-up has been enqueued / run */
  uint64_t forwards;   /* successful forwards enqueued (training and eval), for checkpoints */

  /* State, in the backend's memory: u[h], v[w] (16-byte aligned), sigma[3] = {σ, 1/σ, scale}. */
  float *u;
  float *v;
  float *sigma;

  /* Launch plan (CUDA); its gamma pointer and norm bound serve the CPU backend too. */
  sn_cuda_plan_t plan;
  void *workspace;     /* one device allocation holding every scratch buffer */

  /* CPU backend only: double-precision working vectors. */
  double *ref_u;       /* h */
  double *ref_v;       /* w */
  double *ref_t;       /* h */
  int cpu_threads;     /* threads of its calls (sn__cpu_threads, at creation) */

  sn_paths_t paths;    /* the kernels of its latest calls (sn_layer_get_paths) */
};

/* A group (host/group.c; described by host/describe.c). */
struct sn_group {
  int count;
  sn_layer_t **layers;
  const void **W;
  void **W_sn;
  const float **gamma;   /* each layer's γ binding at creation (sn_layer_set_gamma) */
  sn_backend_t backend;
  int device;
  sn_cuda_group_t cuda;  /* CUDA: the kernels' view, pointing into `workspace` */
  void *workspace;
  /* The backward's buffers (sn_group_set_gradients; G NULL until then). */
  const void **G;
  void **dW;
  float **dgamma;        /* NULL, or one pointer per layer (each may be NULL) */
  sn_cuda_group_bw_t cuda_bw; /* CUDA: the backward kernels' view, pointing into `bw_workspace` */
  void *bw_workspace;
  sn_paths_t paths;      /* the kernels of its latest calls (sn_group_get_paths) */
  int setup_failed;      /* a probe failed at creation: SN_DROPPED_SETUP whatever the binding */
};

/* Record a successful call's path among `paths` (sn_layer_get_paths, sn_group_get_paths): a
 * forward of training and with or without W_sn, or the backward. */
void sn__record_forward_path(sn_paths_t *paths, int training, int with_out, sn_path_t path);

/* Portable generator for the initial u and v: N(randn(n)) from (seed, stream_id), in double,
 * rounded to float. Identical on every backend. */
void sn__init_vector(float *out, int64_t n, uint64_t seed, uint64_t stream_id);

/* host/layer.c, shared with host/group.c. */
/* One forward of a layer through its backend (warmup_only: only the warm-up, if not yet run). */
sn_status_t sn__run_forward(sn_layer_t *l, const void *W, void *W_sn, int training, int warmup_only,
                            sn_stream_t stream);
/* sn__run_forward's CPU branch, for a CPU layer whose W and W_sn are checked: cannot fail. */
void sn__cpu_run_forward(sn_layer_t *l, const void *W, void *W_sn, int training, int warmup_only);
/* Bytes of the layer's weight: numel × the size of its dtype. */
size_t sn__weight_bytes(const sn_layer_t *l);
/* The eps of the kernels and the CPU reference: signed by the mode (sn_cuda_plan_t.eps). */
static inline float sn__eps_param(const sn_layer_desc_t *d) {
  return d->eps_mode == SN_EPS_ADD_SQUARED ? -d->eps : d->eps;
}

/* A 1-D weight's σ = max(‖W‖, eps) is eps alone when ‖W‖ <= eps (SN_EPS_CLAMP_NORM), where W_sn =
 * W / eps has no σ term in its derivative: the backward's clamp_eps (0: no such clamp). */
static inline float sn__backward_clamp_eps(const sn_layer_t *l) {
  return l->is_1d && l->desc.eps_mode == SN_EPS_CLAMP_NORM ? l->desc.eps : 0.0f;
}

/* Whether [a, a + an) and [b, b + bn) share a byte. */
static inline int sn__overlap(const void *a, size_t an, const void *b, size_t bn) {
  const char *x = (const char *)a, *y = (const char *)b;
  return x < y + bn && y < x + an;
}
/* Two buffers of the layer's weight size must coincide or be disjoint: SN_ERROR_INVALID_VALUE,
 * naming them `an` and `bn`, otherwise. */
sn_status_t sn__check_overlap(const sn_layer_t *l, const void *a, const char *an, const void *b,
                              const char *bn);
/* The health word sn_layer_set_state leaves (and a version-1 checkpoint loads): cleared, with the
 * request that the next training forward restart from ones when u or v has zero norm, except for
 * a 1-D weight, whose forward computes u afresh from W and has nothing to restart. */
static inline uint32_t sn__health_after_set_state(int is_1d, int zero_u, int zero_v) {
  return (!is_1d && (zero_u || zero_v)) ? SN_HEALTH_RESTART : 0u;
}
/* The forward's rule for γ (sn_forward; sn_group_create checks every member's against every W_sn):
 * the layer's γ, if bound, lies outside W_sn (named `name`), which the division writes while its
 * blocks read γ. */
sn_status_t sn__check_gamma_outside_output(const sn_layer_t *l, const void *W_sn, const char *name);
/* SN_ERROR_INVALID_VALUE (with its message) for flags outside sn_backward_flag_t. */
sn_status_t sn__check_backward_flags(unsigned flags);
/* The backward's buffer rules (sn_backward, sn_group_set_gradients): dW coincides with G or W or
 * overlaps neither; dgamma (when not NULL) lies outside W, G and dW and is not the layer's γ; the
 * γ lies outside dW (the kernels' blocks read γ while others write dW and ∂L/∂γ); W, G, dW and
 * dgamma are in the backend's memory. names: those of W, G, dW and dgamma in the messages. */
sn_status_t sn__check_backward_buffers(const sn_layer_t *l, const void *W, const void *G,
                                       const void *dW, const float *dgamma,
                                       const char *const names[4]);
/* Pointer checks of the forward: device memory of `device`, or host memory for a CPU layer. */
sn_status_t sn__check_device_pointer(int device, const void *p, const char *name);
sn_status_t sn__check_host_pointer(const sn_layer_t *l, const void *p, const char *name);
/* The host arrays (or scalars) a call reads or writes on the host, named: none of the non-NULL ones
 * device memory (a host access would crash), as sn__check_host_pointer checks a CPU layer's. */
sn_status_t sn__check_host_arrays(int n, const void *const *p, const char *const *names);
/* The one of the two for the layer's backend, after a check of the alignment: to the layer's
 * element size for a weight-shaped buffer (W, W_sn, G, dW), to 4 bytes for a float (γ, ∂L/∂γ);
 * SN_ERROR_INVALID_POINTER either way. */
sn_status_t sn__check_weight_pointer(const sn_layer_t *l, const void *p, const char *name);
sn_status_t sn__check_float_pointer(const sn_layer_t *l, const float *p, const char *name);
/* Write u (h floats), v (w) and {σ, 1/σ, scale, health} into the layer's state: on CUDA as one
 * host-to-device copy of the whole state block after the work on `stream`, then a wait (`what`
 * names the copy in the error message). */
sn_status_t sn__put_state(sn_layer_t *l, const float *u, const float *v, const float sig[4],
                          sn_stream_t stream, const char *what);

/* Make `device` current; sn__leave_device restores the caller's. */
sn_status_t sn__enter_device(int device, int *prev);
void sn__leave_device(int device, int prev);
/* cudaFree(p) (NULL: nothing) on `device`, made current for it when the caller's device can be
 * read and put back after; freed even when the device cannot be selected (cudaFree finds a
 * pointer's device under unified addressing). Leaves no error pending. */
void sn__free_on_device(int device, void *p);
/* Whether work may be issued again on `stream` after a refused launch: it is not being captured
 * (a capture may have been invalidated by the refusal; when the status cannot be read, e.g. the
 * legacy stream while another thread captures, a retry would fail too: no). */
int sn__may_retry_on(sn_stream_t stream);

/* The threads a CPU layer's calls may use, read when it is created (host/cpu_backend.c):
 * SPECNORM_CPU_THREADS when it is an integer from 1 to SN_REF_MAX_THREADS (other values are
 * ignored), else the processors this thread may run on, at most 8. */
int sn__cpu_threads(void);
/* CPU backend forward (host/cpu_backend.c): the same arguments and semantics as
 * sn_cuda_forward, computed with the double-precision reference, on the layer's threads. Blocks. */
void sn__cpu_forward(sn_layer_t *layer, const sn_cuda_forward_args_t *args);
void sn__cpu_backward(sn_layer_t *layer, const void *W, const void *G, void *dW, unsigned flags,
                      float *dgamma);
/* A CPU group's forward and backward (host/cpu_backend.c): every member's sn__cpu_run_forward
 * (or sn__cpu_backward), the small members spread over threads; the buffers are checked, the
 * members share none they write. The results are those of the members' calls one by one. */
void sn__cpu_group_forward(sn_layer_t *const *layers, const void *const *W, void *const *W_sn,
                           int count, int training);
void sn__cpu_group_backward(sn_layer_t *const *layers, const void *const *W, const void *const *G,
                            void *const *dW, float *const *dgamma, int count, unsigned flags);

#ifdef __cplusplus
}
#endif

#endif
