/* The layer API: argument validation, lifetime, state transfer, and dispatch of the forward to
 * the CUDA or CPU backend. Every check happens before anything is changed, so a failed call
 * leaves the layer as it was. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "sn_internal.h"
#include "sn_reference.h"

#define SN_MAX_ITERATIONS 1000000

/* ---- small helpers -------------------------------------------------------------------------- */

#define CUDA_TRY(call, what)                               \
  do {                                                     \
    cudaError_t sn_e_ = (call);                            \
    if (sn_e_ != cudaSuccess) {                            \
      return sn__cuda_fail((int)sn_e_, what);              \
    }                                                      \
  } while (0)

static int64_t width_of(const sn_layer_t *l) { return l->view.A * l->view.B; }

/* The state is one array: u (h floats, padded to a multiple of 4 so v is 16-byte aligned), v (w),
 * then σ, 1/σ and the scale. */
static int64_t state_floats(const sn_layer_t *l) { return (l->view.h + 3) / 4 * 4 + width_of(l) + 4; }

static void bind_state(sn_layer_t *l, float *state) {
  l->u = state;
  l->v = state + (l->view.h + 3) / 4 * 4;
  l->sigma = l->v + width_of(l);
}

/* Make the layer's device current; *prev receives the caller's device to restore. */
sn_status_t sn__enter_device(int device, int *prev) {
  CUDA_TRY(cudaGetDevice(prev), "cudaGetDevice");
  if (*prev != device) CUDA_TRY(cudaSetDevice(device), "cudaSetDevice");
  return SN_SUCCESS;
}

/* A failure to switch back is this call's own error: not left pending (the caller's device then
 * stays the layer's; the call's work is done). */
void sn__leave_device(int device, int prev) {
  if (prev != device && cudaSetDevice(prev) != cudaSuccess) (void)cudaGetLastError();
}

void sn__free_on_device(int device, void *p) {
  if (!p) return;
  int prev = 0, switched = 0, failed = cudaGetDevice(&prev) != cudaSuccess;
  if (!failed && prev != device) {
    switched = cudaSetDevice(device) == cudaSuccess;
    failed = !switched;
  }
  failed |= cudaFree(p) != cudaSuccess;
  if (switched) failed |= cudaSetDevice(prev) != cudaSuccess;
  if (failed) (void)cudaGetLastError(); /* this call's own error, not one the caller had pending */
}

int sn__may_retry_on(sn_stream_t stream) {
  enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  const int ok = cudaStreamIsCapturing((cudaStream_t)stream, &cs) == cudaSuccess &&
                 cs == cudaStreamCaptureStatusNone;
  (void)cudaGetLastError(); /* cudaStreamIsCapturing's own error, if any */
  return ok;
}

/* After launch error e of a CUDA layer's forward or backward (*on_chip: that call was the layer's
 * on-chip launch; forward: it is a forward, the only call with a cooperative launch): if e is the
 * refusal of the call's single launch, the on-chip one (its cluster cannot be scheduled now: the
 * GPU shared under MPS, an SM limit) or the cooperative one-pass one (plan.op_coop: by default
 * the scale-only forwards on sm_90; fewer blocks can be resident than at creation), the refused
 * launch did not run (earlier iterations of the forward may have, but nothing is committed before
 * its last launch), and the layer runs the usual kernels from now on. Returns 1 when the caller
 * runs them at once; 0 otherwise, with *refused naming the launch when the refusal came during a
 * capture (which it may have invalidated: the caller reports it, and the user captures again).
 * The usual kernels' errors are theirs, whatever the plan holds. */
static int drop_refused_launch(sn_layer_t *l, int e, int *on_chip, int forward, sn_stream_t stream,
                               const char **refused) {
  if (e == 0) return 0;
  const char *what = NULL;
  if (*on_chip && sn_cuda_on_chip_refused(e)) {
    memset(&l->plan.onchip, 0, sizeof l->plan.onchip);
    *on_chip = 0;
    l->paths.dropped |= SN_DROPPED_ON_CHIP;
    what = "on-chip";
  } else if (forward && sn_cuda_one_pass_coop_refused(&l->plan, e)) {
    l->plan.op_coop = 0;
    l->paths.dropped |= SN_DROPPED_COOP;
    what = "cooperative one-pass";
  } else {
    return 0;
  }
  (void)cudaGetLastError();
  if (sn__may_retry_on(stream)) return 1;
  *refused = what;
  return 0;
}

static sn_status_t refused_in_capture(const char *what, const char *call) {
  return sn__fail(SN_ERROR_CUDA,
                  "the layer's %s %s launch was refused (fewer blocks or clusters can be resident "
                  "now than when the layer was created) while a stream capture is active; the layer "
                  "runs the usual kernels from now on: end this capture and capture it again",
                  what, call);
}

/* cudaPointerGetAttributes in the relaxed capture mode: allowed while a stream (this thread's or
 * another's) is being captured in any mode, since the query enqueues nothing. The thread's mode is
 * put back only if it was exchanged (else the exchange back would leave it relaxed); an error of
 * these calls is not left pending, and one the caller had is kept. */
static cudaError_t pointer_attributes(const void *p, struct cudaPointerAttributes *attr) {
  enum cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  const int exchanged = cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess;
  cudaError_t e = cudaPointerGetAttributes(attr, p);
  const int restored = !exchanged || cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess;
  if (!exchanged || e != cudaSuccess || !restored) (void)cudaGetLastError(); /* ours only */
  return e;
}

/* A CUDA layer's W and W_sn must be device (or managed) memory of the layer's device. */
sn_status_t sn__check_device_pointer(int device, const void *p, const char *name) {
  struct cudaPointerAttributes attr;
  const cudaError_t e = pointer_attributes(p, &attr);
  /* The runtime answers an unknown pointer with cudaMemoryTypeUnregistered (before CUDA 11, with
   * cudaErrorInvalidValue); any other error is the runtime's own (a context a kernel fault
   * ended, ...), not the pointer's. */
  if (e == cudaErrorInvalidValue)
    return sn__fail(SN_ERROR_INVALID_POINTER, "%s (%p) is not memory known to CUDA (%s)", name, p,
                    cudaGetErrorString(e));
  if (e != cudaSuccess) {
    char what[96];
    snprintf(what, sizeof what, "cudaPointerGetAttributes of %s (%p)", name, p);
    return sn__cuda_fail((int)e, what);
  }
  if (attr.type == cudaMemoryTypeManaged) return SN_SUCCESS;
  if (attr.type == cudaMemoryTypeUnregistered)
    return sn__fail(SN_ERROR_INVALID_POINTER,
                    "%s (%p) is not memory CUDA knows (plain host memory, or device memory already "
                    "freed); a CUDA layer needs device memory of device %d",
                    name, p, device);
  if (attr.type != cudaMemoryTypeDevice)
    return sn__fail(SN_ERROR_INVALID_POINTER,
                    "%s (%p) is host memory; a CUDA layer needs device memory of device %d", name,
                    p, device);
  if (attr.device != device)
    return sn__fail(SN_ERROR_INVALID_POINTER, "%s (%p) is memory of device %d; the layer is on device %d",
                    name, p, attr.device, device);
  return SN_SUCCESS;
}

/* A CPU layer's W and W_sn must not be device memory (that would crash on dereference). Only asked
 * when a CUDA device exists; without one every pointer is host memory. */
static int cuda_devices_present(void) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    return 0;
  }
  return 1;
}

/* p is not device memory, once a device is known to exist (l: the CPU layer, for the message). */
static sn_status_t refuse_device_memory(const sn_layer_t *l, const void *p, const char *name) {
  struct cudaPointerAttributes attr;
  if (pointer_attributes(p, &attr) != cudaSuccess) return SN_SUCCESS; /* cannot tell: taken as host */
  if (attr.type == cudaMemoryTypeDevice)
    return sn__fail(SN_ERROR_INVALID_POINTER, "%s (%p) is device memory of device %d; %s needs host memory",
                    name, p, attr.device, l ? "a CPU layer" : "the call");
  return SN_SUCCESS;
}

sn_status_t sn__check_host_pointer(const sn_layer_t *l, const void *p, const char *name) {
  return cuda_devices_present() ? refuse_device_memory(l, p, name) : SN_SUCCESS;
}

/* The device count asked once for all the arrays. */
sn_status_t sn__check_host_arrays(int n, const void *const *p, const char *const *names) {
  if (!cuda_devices_present()) return SN_SUCCESS;
  for (int k = 0; k < n; ++k) {
    const sn_status_t st = p[k] ? refuse_device_memory(NULL, p[k], names[k]) : SN_SUCCESS;
    if (st != SN_SUCCESS) return st;
  }
  return SN_SUCCESS;
}

/* Aligned to `align` bytes (a misaligned access faults on the GPU, a sticky error that ends the
 * CUDA context, and is undefined behaviour in C), then memory of the layer's backend. */
static sn_status_t check_backend_pointer(const sn_layer_t *l, const void *p, const char *name, size_t align) {
  if ((uintptr_t)p % align != 0)
    return sn__fail(SN_ERROR_INVALID_POINTER, "%s (%p) is not aligned to its %zu-byte elements", name, p,
                    align);
  return l->desc.backend == SN_BACKEND_CPU ? sn__check_host_pointer(l, p, name)
                                           : sn__check_device_pointer(l->desc.device, p, name);
}

sn_status_t sn__check_weight_pointer(const sn_layer_t *l, const void *p, const char *name) {
  return check_backend_pointer(l, p, name, sn_dtype_size(l->desc.dtype));
}

sn_status_t sn__check_float_pointer(const sn_layer_t *l, const float *p, const char *name) {
  return check_backend_pointer(l, p, name, sizeof(float));
}

/* ---- description ---------------------------------------------------------------------------- */

SN_API sn_status_t sn_layer_desc_init(sn_layer_desc_t *desc, int ndim, const int64_t *shape) {
  if (!desc) return sn__fail(SN_ERROR_NULL_POINTER, "desc is NULL");
  if (!shape) return sn__fail(SN_ERROR_NULL_POINTER, "shape is NULL");
  if (ndim < 1 || ndim > SN_MAX_DIMS)
    return sn__fail(SN_ERROR_INVALID_SHAPE, "ndim = %d must be in 1..%d", ndim, SN_MAX_DIMS);
  memset(desc, 0, sizeof *desc);
  desc->ndim = ndim;
  for (int k = 0; k < ndim; ++k) desc->shape[k] = shape[k];
  desc->dim = 0;
  desc->dtype = SN_DTYPE_FLOAT32;
  desc->n_power_iterations = 1;
  desc->eps = 1e-12f;
  desc->warmup_iterations = 15;
  desc->order = SN_ORDER_U_FIRST;
  desc->seed = 0;
  desc->backend = SN_BACKEND_CUDA;
  desc->device = 0;
  desc->algo = SN_ALGO_DEFAULT;
  desc->eps_mode = SN_EPS_CLAMP_NORM;
  return SN_SUCCESS;
}

/* Check everything in `desc`; on success fill the view, element count and normalized dim. */
static sn_status_t validate_desc(const sn_layer_desc_t *d, sn_view_t *view, int64_t *numel,
                                 int *dim) {
  if (d->ndim < 1 || d->ndim > SN_MAX_DIMS)
    return sn__fail(SN_ERROR_INVALID_SHAPE, "desc->ndim = %d must be in 1..%d", d->ndim, SN_MAX_DIMS);
  int64_t n = 1;
  for (int k = 0; k < d->ndim; ++k) {
    if (d->shape[k] <= 0)
      return sn__fail(SN_ERROR_INVALID_SHAPE, "desc->shape[%d] = %lld must be > 0", k,
                      (long long)d->shape[k]);
    /* Bytes must fit too: numel * sizeof(float) <= INT64_MAX (u, v and scratch are float). */
    if (n > (INT64_MAX / 4) / d->shape[k])
      return sn__fail(SN_ERROR_SIZE_OVERFLOW,
                      "desc->shape: the element count overflows 64-bit byte sizes at shape[%d] = %lld",
                      k, (long long)d->shape[k]);
    n *= d->shape[k];
  }
  if (d->dim < -d->ndim || d->dim >= d->ndim)
    return sn__fail(SN_ERROR_INVALID_DIM, "desc->dim = %d must be in [%d, %d) for a %d-D weight",
                    d->dim, -d->ndim, d->ndim, d->ndim);
  if (d->dtype != SN_DTYPE_FLOAT32 && d->dtype != SN_DTYPE_FLOAT16 && d->dtype != SN_DTYPE_BFLOAT16)
    return sn__fail(SN_ERROR_INVALID_VALUE, "desc->dtype = %d is not a sn_dtype_t", (int)d->dtype);
  if (d->n_power_iterations < 1 || d->n_power_iterations > SN_MAX_ITERATIONS)
    return sn__fail(SN_ERROR_INVALID_VALUE, "desc->n_power_iterations = %d must be in 1..%d",
                    d->n_power_iterations, SN_MAX_ITERATIONS);
  if (d->warmup_iterations < 0 || d->warmup_iterations > SN_MAX_ITERATIONS)
    return sn__fail(SN_ERROR_INVALID_VALUE, "desc->warmup_iterations = %d must be in 0..%d",
                    d->warmup_iterations, SN_MAX_ITERATIONS);
  if (!(d->eps > 0.0f) || !isfinite(d->eps))
    return sn__fail(SN_ERROR_INVALID_VALUE, "desc->eps = %g must be finite and > 0", (double)d->eps);
  if (d->eps_mode != SN_EPS_CLAMP_NORM && d->eps_mode != SN_EPS_ADD_SQUARED)
    return sn__fail(SN_ERROR_INVALID_VALUE, "desc->eps_mode = %d is not a sn_eps_mode_t", (int)d->eps_mode);
  if (!(d->norm_bound >= 0.0f) || !isfinite(d->norm_bound))
    return sn__fail(SN_ERROR_INVALID_VALUE,
                    "desc->norm_bound = %g must be finite and >= 0 (0: no bound)",
                    (double)d->norm_bound);
  if (d->order != SN_ORDER_U_FIRST && d->order != SN_ORDER_V_FIRST)
    return sn__fail(SN_ERROR_INVALID_VALUE, "desc->order = %d is not a sn_order_t", (int)d->order);
  if ((int)d->algo < 0 || d->algo >= SN_ALGO_COUNT)
    return sn__fail(SN_ERROR_INVALID_VALUE, "desc->algo = %d is not a sn_algo_t", (int)d->algo);
  if (d->backend != SN_BACKEND_CUDA && d->backend != SN_BACKEND_CPU)
    return sn__fail(SN_ERROR_INVALID_BACKEND, "desc->backend = %d is not a sn_backend_t",
                    (int)d->backend);
  *dim = d->dim < 0 ? d->dim + d->ndim : d->dim;
  *view = sn_ref_view(d->ndim, d->shape, *dim);
  if (d->algo == SN_ALGO_ONE_PASS && !sn_cuda_one_pass_supported(*view, d->order, d->dtype))
    return sn__fail(SN_ERROR_NOT_SUPPORTED,
                    "desc->algo = SN_ALGO_ONE_PASS needs, in the u-first order, contiguous rows "
                    "(every axis before dim of size 1) and w <= 16384 a multiple of 4, and in the "
                    "v-first order h <= 768 (fp32) or 1536 (fp16, bf16); this weight has "
                    "%lld elements in the axes before dim (1: contiguous rows), h = %lld, w = %lld",
                    (long long)view->A, (long long)view->h, (long long)(view->A * view->B));
  if (d->backend == SN_BACKEND_CUDA) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
      (void)cudaGetLastError();
      return sn__fail(SN_ERROR_NO_DEVICE,
                      "desc->backend = SN_BACKEND_CUDA but no usable GPU is present "
                      "(cudaGetDeviceCount: error %d, %s)",
                      (int)e, e == cudaSuccess ? "0 devices" : cudaGetErrorString(e));
    }
    if (d->device < 0 || d->device >= count)
      return sn__fail(SN_ERROR_INVALID_DEVICE, "desc->device = %d but %d CUDA device(s) exist",
                      d->device, count);
  }
  *numel = n;
  return SN_SUCCESS;
}

/* ---- lifetime ------------------------------------------------------------------------------- */

static void free_layer(sn_layer_t *l) {
  if (l->desc.backend == SN_BACKEND_CUDA) {
    sn__free_on_device(l->desc.device, l->u); /* u, v and sigma share one allocation */
    sn__free_on_device(l->desc.device, l->workspace);
  } else {
    free(l->u);
    free(l->ref_u);
  }
  free(l);
}

/* Draw u and v from `seed` into the state; σ = 1/σ = scale = 0. */
static sn_status_t init_state(sn_layer_t *l, uint64_t seed, sn_stream_t stream) {
  const int64_t h = l->view.h, w = width_of(l);
  const size_t bytes = (size_t)state_floats(l) * sizeof(float);
  float *host = l->desc.backend == SN_BACKEND_CPU ? l->u : calloc(1, bytes);
  if (!host) return sn__fail(SN_ERROR_ALLOCATION, "host staging buffer of %zu bytes", bytes);
  const int64_t v_at = l->v - l->u;
  sn__init_vector(host, h, seed, 0);
  sn__init_vector(host + v_at, w, seed, 1);
  for (int k = 0; k < 4; ++k) host[v_at + w + k] = 0.0f; /* σ, 1/σ, scale, health */
  if (l->desc.backend == SN_BACKEND_CPU) return SN_SUCCESS;
  cudaError_t e = cudaMemcpyAsync(l->u, host, bytes, cudaMemcpyHostToDevice, (cudaStream_t)stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize((cudaStream_t)stream);
  free(host);
  if (e != cudaSuccess) {
    return sn__cuda_fail((int)e, "copying the initial u and v to the device");
  }
  return SN_SUCCESS;
}

static sn_status_t create_cuda(sn_layer_t *l) {
  (void)sn_cuda_setup_failures_take(); /* this creation's alone, below */
  int sm_count = 0;
  CUDA_TRY(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, l->desc.device),
           "cudaDeviceGetAttribute(multiprocessor count)");
  size_t ws_bytes = 0;
  l->plan.norm_bound = l->desc.norm_bound;
  /* DEFAULT: by rows (u-first) when there are enough rows to fill the chip; by columns
   * (v-first) from 1M elements and up to 8192 columns. Measured against two passes: 768 × 4096
   * 10-21% faster (H100) and 9-13% (H200), 1536 × 4608 bf16 10% faster (both); 512 × 16384 within
   * 4% (H100) but 8% (train) and 17% (scale) slower on an H200; SN-GAN's 128 × 1152 layers 24%
   * slower on an H100 (36 panels: too few blocks). */
  const int enough = l->desc.order == SN_ORDER_V_FIRST
                         ? l->numel >= (1LL << 20) && l->view.A * l->view.B <= 8192
                         : l->view.h >= 4LL * sm_count;
  const int one_pass = sn_cuda_one_pass_supported(l->view, l->desc.order, l->desc.dtype) &&
                       (l->desc.algo == SN_ALGO_ONE_PASS ||
                        (l->desc.algo == SN_ALGO_DEFAULT && enough));
  /* The on-chip forward (small layers' training forwards on sm_90, SPECNORM_TUNE=op_onchip=1, or
   * the layer on chip over the grid, op_onchip_grid) reads W once: a one-pass algorithm, not for a
   * layer that asks for two passes. Nor for a 1-D weight (normalized exactly, no iteration): its
   * backward keeps the two kernels, spread over the device, rather than one cluster. */
  const int on_chip = !(l->desc.algo == SN_ALGO_TWO_PASS || l->is_1d);
  const float eps = sn__eps_param(&l->desc);
  int pe = sn_cuda_plan_init(&l->plan, l->view, l->desc.dtype, l->desc.order, eps, sm_count, one_pass,
                             on_chip, &ws_bytes);
  /* The one-pass kernels could not be set up: their shared memory does not fit the device (the
   * plan's own verdict, cudaErrorLaunchOutOfResources, which no runtime call raised), or a setup
   * query of theirs failed (their shared memory, their occupancy: a runtime error, cleared if it
   * is the last one, and said as SN_DROPPED_SETUP). A layer that did not ask for them by name does
   * without them, on the two-pass kernels; one that did (SN_ALGO_ONE_PASS) fails its creation. An
   * error the caller left pending is kept either way. */
  const int does_not_fit = pe == (int)cudaErrorLaunchOutOfResources;
  int dropped = 0;
  if (pe != 0 && one_pass && l->desc.algo == SN_ALGO_DEFAULT) {
    if (!does_not_fit) {
      if (cudaPeekAtLastError() == (cudaError_t)pe) (void)cudaGetLastError();
      dropped = 1;
    }
    pe = sn_cuda_plan_init(&l->plan, l->view, l->desc.dtype, l->desc.order, eps, sm_count, 0, on_chip,
                           &ws_bytes);
  } else if (pe != 0 && one_pass && does_not_fit) {
    return sn__fail(SN_ERROR_NOT_SUPPORTED,
                    "desc->algo = SN_ALGO_ONE_PASS: the one-pass kernels' shared memory for this "
                    "shape (h = %lld, w = %lld) does not fit device %d",
                    (long long)l->view.h, (long long)width_of(l), l->desc.device);
  }
  if (pe != 0) return sn__cuda_fail(pe, "preparing the kernels' launch plan");
  l->plan.norm_bound = l->desc.norm_bound;
  if (sn_cuda_setup_failures_take() > 0 || dropped) l->paths.dropped |= SN_DROPPED_SETUP;
  if (ws_bytes == 0)
    return sn__fail(SN_ERROR_SIZE_OVERFLOW,
                    "this shape (%lld x %lld) needs more blocks than a CUDA grid takes, or scratch "
                    "space beyond size_t",
                    (long long)l->view.h, (long long)width_of(l));
  const size_t state_bytes = (size_t)state_floats(l) * sizeof(float);
  void *state = NULL;
  cudaError_t e = cudaMalloc(&state, state_bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return sn__fail(SN_ERROR_ALLOCATION, "cudaMalloc of %zu bytes for u, v and sigma on device %d: %s",
                    state_bytes, l->desc.device, cudaGetErrorString(e));
  }
  bind_state(l, state);
  e = cudaMalloc(&l->workspace, ws_bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return sn__fail(SN_ERROR_ALLOCATION, "cudaMalloc of %zu bytes of scratch space on device %d: %s",
                    ws_bytes, l->desc.device, cudaGetErrorString(e));
  }
  CUDA_TRY(cudaMemset(l->workspace, 0, ws_bytes), "cudaMemset of the scratch space");
  sn_cuda_plan_bind(&l->plan, l->workspace);
  return init_state(l, l->desc.seed, NULL);
}

static sn_status_t create_cpu(sn_layer_t *l) {
  const int64_t h = l->view.h, w = width_of(l);
  /* h, w <= numel <= INT64_MAX / 4 (validate_desc): 2h + w fits int64_t, its doubles maybe not. */
  if ((uint64_t)(2 * h + w) > SIZE_MAX / sizeof(double))
    return sn__fail(SN_ERROR_SIZE_OVERFLOW, "the CPU reference's scratch for a %lld x %lld layer does not fit in size_t",
                    (long long)h, (long long)w);
  float *state = malloc((size_t)state_floats(l) * sizeof(float));
  l->ref_u = malloc((size_t)(2 * h + w) * sizeof(double));
  if (!state || !l->ref_u) {
    free(state);
    return sn__fail(SN_ERROR_ALLOCATION, "host memory for a %lld x %lld layer", (long long)h,
                    (long long)w);
  }
  bind_state(l, state);
  l->plan.norm_bound = l->desc.norm_bound;
  l->ref_v = l->ref_u + h;
  l->ref_t = l->ref_v + w;
  l->cpu_threads = sn__cpu_threads();
  return init_state(l, l->desc.seed, NULL);
}

SN_API sn_status_t sn_layer_create(sn_layer_t **layer, const sn_layer_desc_t *desc) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer (the output pointer) is NULL");
  *layer = NULL;
  if (!desc) return sn__fail(SN_ERROR_NULL_POINTER, "desc is NULL");
  sn_view_t view = {1, 1, 1};
  int64_t numel = 0;
  int dim = 0;
  sn_status_t st = validate_desc(desc, &view, &numel, &dim);
  if (st != SN_SUCCESS) return st;

  sn_layer_t *l = calloc(1, sizeof *l);
  if (!l) return sn__fail(SN_ERROR_ALLOCATION, "host memory for the layer object");
  l->desc = *desc;
  l->desc.dim = dim;
  l->view = view;
  l->numel = numel;
  l->is_1d = desc->ndim == 1;

  if (desc->backend == SN_BACKEND_CUDA) {
    int prev = 0;
    st = sn__enter_device(desc->device, &prev);
    if (st == SN_SUCCESS) {
      st = create_cuda(l);
      sn__leave_device(desc->device, prev);
    }
  } else {
    st = create_cpu(l);
  }
  if (st != SN_SUCCESS) {
    free_layer(l);
    return st;
  }
  *layer = l;
  return SN_SUCCESS;
}

SN_API void sn_layer_destroy(sn_layer_t *layer) {
  if (layer) free_layer(layer);
}

SN_API sn_status_t sn_layer_get_dims(const sn_layer_t *layer, int64_t *h, int64_t *w) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (h) *h = layer->view.h;
  if (w) *w = width_of(layer);
  return SN_SUCCESS;
}

/* ---- forward -------------------------------------------------------------------------------- */

/* The kernels' (and the CPU reference's) arguments of one forward of `l`. */
static sn_cuda_forward_args_t forward_args(const sn_layer_t *l, const void *W, void *W_sn,
                                           int training, int warmup_only) {
  sn_cuda_forward_args_t a;
  memset(&a, 0, sizeof a);
  a.W = W;
  a.W_sn = W_sn;
  a.numel = l->numel;
  a.u = l->u;
  a.v = l->v;
  a.sigma = l->sigma;
  a.training = warmup_only ? 1 : (training != 0);
  a.warmup_iters = (l->warmed_up || l->is_1d) ? 0 : l->desc.warmup_iterations;
  a.n_iters = warmup_only ? 0 : l->desc.n_power_iterations;
  a.order = l->desc.order;
  a.is_1d = l->is_1d;
  return a;
}

void sn__cpu_run_forward(sn_layer_t *l, const void *W, void *W_sn, int training, int warmup_only) {
  sn_cuda_forward_args_t a = forward_args(l, W, W_sn, training, warmup_only);
  if (!(warmup_only && a.warmup_iters == 0)) sn__cpu_forward(l, &a);
  l->warmed_up = 1;
  l->forwards += !warmup_only;
}

sn_status_t sn__run_forward(sn_layer_t *l, const void *W, void *W_sn, int training,
                               int warmup_only, sn_stream_t stream) {
  /* The pointers' kind of memory first, also for a warm-up with nothing to do. */
  const int cpu = l->desc.backend == SN_BACKEND_CPU, dev = l->desc.device;
  sn_status_t st = sn__check_weight_pointer(l, W, "W");
  if (st == SN_SUCCESS && W_sn) st = sn__check_weight_pointer(l, W_sn, "W_sn");
  if (st != SN_SUCCESS) return st;
  if (cpu) {
    sn__cpu_run_forward(l, W, W_sn, training, warmup_only);
    if (!warmup_only) sn__record_forward_path(&l->paths, training, W_sn != NULL, SN_PATH_CPU);
    return SN_SUCCESS;
  }
  sn_cuda_forward_args_t a = forward_args(l, W, W_sn, training, warmup_only);
  if (warmup_only && a.warmup_iters == 0) {
    l->warmed_up = 1;
    return SN_SUCCESS;
  }

  int prev = 0;
  st = sn__enter_device(dev, &prev);
  if (st != SN_SUCCESS) return st;
  /* Asked on the layer's device: a per-thread default stream is the current device's. */
  if (a.warmup_iters > 0) {
    enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    const cudaError_t ce = cudaStreamIsCapturing((cudaStream_t)stream, &cap);
    if (ce != cudaSuccess) {
      st = sn__cuda_fail((int)ce, "cudaStreamIsCapturing");
    } else if (cap != cudaStreamCaptureStatusNone) {
      st = sn__fail(SN_ERROR_INVALID_STATE,
                    "the layer has not warmed up: its first forward runs %d warm-up iterations "
                    "once and must not be captured in a CUDA graph; call sn_layer_warmup (or one "
                    "forward) before the capture",
                    a.warmup_iters);
    }
    if (st != SN_SUCCESS) {
      sn__leave_device(dev, prev);
      return st;
    }
  }
  int on_chip = sn_cuda_forward_on_chip(&l->plan, &a);
  int e = sn_cuda_forward(&l->plan, &a, stream);
  const char *refused = NULL;
  /* At most twice: an on-chip layer refused, whose usual kernels' cooperative launch is too. */
  while (drop_refused_launch(l, e, &on_chip, 1, stream, &refused)) e = sn_cuda_forward(&l->plan, &a, stream);
  /* The kernels the successful call ran: decided by the plan as it is after any refusal. */
  const sn_path_t path = sn_cuda_forward_path(&l->plan, &a);
  sn__leave_device(dev, prev);
  if (refused) return refused_in_capture(refused, "forward");
  if (e != 0) {
    return sn__cuda_fail(e, "launching the forward kernels");
  }
  l->warmed_up = 1;
  l->forwards += !warmup_only;
  if (!warmup_only) sn__record_forward_path(&l->paths, training, W_sn != NULL, path);
  return SN_SUCCESS;
}

void sn__record_forward_path(sn_paths_t *paths, int training, int with_out, sn_path_t path) {
  if (!training)
    paths->eval = path;
  else if (with_out)
    paths->train = path;
  else
    paths->scale_only = path;
}

SN_API sn_status_t sn_layer_get_paths(const sn_layer_t *layer, sn_paths_t *paths) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (!paths) return sn__fail(SN_ERROR_NULL_POINTER, "paths is NULL");
  *paths = layer->paths;
  return SN_SUCCESS;
}

SN_API const char *sn_path_name(sn_path_t path) {
  static const char *const names[SN_PATH_COUNT] = {
      "none",          "cpu",     "one-d",        "matvec",           "one-pass-rows", "one-pass-coop",
      "one-pass-cols", "on-chip", "on-chip-grid", "backward-kernels", "backward-coop"};
  return (int)path < 0 || path >= SN_PATH_COUNT ? "unknown" : names[path];
}

size_t sn__weight_bytes(const sn_layer_t *l) { return (size_t)l->numel * sn_dtype_size(l->desc.dtype); }

sn_status_t sn__check_overlap(const sn_layer_t *l, const void *a, const char *an, const void *b,
                              const char *bn) {
  const size_t bytes = sn__weight_bytes(l);
  if (a != b && sn__overlap(a, bytes, b, bytes))
    return sn__fail(SN_ERROR_INVALID_VALUE, "%s (%p) and %s (%p) overlap without being the same buffer",
                    an, a, bn, b);
  return SN_SUCCESS;
}

SN_API sn_status_t sn_forward(sn_layer_t *layer, const void *W, void *W_sn, int training,
                              sn_stream_t stream) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (!W) return sn__fail(SN_ERROR_NULL_POINTER, "W is NULL");
  if (!W_sn) return sn__fail(SN_ERROR_NULL_POINTER, "W_sn is NULL (use sn_forward_scale_only)");
  sn_status_t st = sn__check_overlap(layer, W, "W", W_sn, "W_sn");
  if (st == SN_SUCCESS) st = sn__check_gamma_outside_output(layer, W_sn, "W_sn");
  if (st != SN_SUCCESS) return st;
  return sn__run_forward(layer, W, W_sn, training, 0, stream);
}

SN_API sn_status_t sn_forward_scale_only(sn_layer_t *layer, const void *W, int training,
                                         sn_stream_t stream) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (!W) return sn__fail(SN_ERROR_NULL_POINTER, "W is NULL");
  return sn__run_forward(layer, W, NULL, training, 0, stream);
}

SN_API sn_status_t sn_layer_warmup(sn_layer_t *layer, const void *W, sn_stream_t stream) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (!W) return sn__fail(SN_ERROR_NULL_POINTER, "W is NULL");
  return sn__run_forward(layer, W, NULL, 1, 1, stream);
}

/* ---- backward ------------------------------------------------------------------------------ */

sn_status_t sn__check_backward_flags(unsigned flags) {
  if (flags & ~(unsigned)(SN_BACKWARD_ACCUMULATE | SN_BACKWARD_DETACH_SIGMA))
    return sn__fail(SN_ERROR_INVALID_VALUE, "flags = 0x%x has bits that are not sn_backward_flag_t",
                    flags);
  return SN_SUCCESS;
}

sn_status_t sn__check_gamma_outside_output(const sn_layer_t *l, const void *W_sn, const char *name) {
  const float *g = l->plan.gamma;
  if (g && W_sn && sn__overlap(g, sizeof(float), W_sn, sn__weight_bytes(l)))
    return sn__fail(SN_ERROR_INVALID_VALUE,
                    "the layer's gamma (%p) lies inside %s (%p), which the division writes while "
                    "it reads gamma",
                    (const void *)g, name, W_sn);
  return SN_SUCCESS;
}

sn_status_t sn__check_backward_buffers(const sn_layer_t *l, const void *W, const void *G,
                                       const void *dW, const float *dgamma,
                                       const char *const names[4]) {
  sn_status_t st = sn__check_overlap(l, dW, names[2], G, names[1]);
  if (st == SN_SUCCESS) st = sn__check_overlap(l, dW, names[2], W, names[0]);
  const size_t bytes = sn__weight_bytes(l);
  const float *g = l->plan.gamma;
  if (st == SN_SUCCESS && g && sn__overlap(g, sizeof(float), dW, bytes))
    st = sn__fail(SN_ERROR_INVALID_VALUE, "the layer's gamma (%p) lies inside %s (%p)", (const void *)g,
                  names[2], dW);
  const void *wgd[3] = {W, G, dW};
  for (int k = 0; k < 3 && st == SN_SUCCESS && dgamma; ++k)
    if (sn__overlap(dgamma, sizeof(float), wgd[k], bytes))
      st = sn__fail(SN_ERROR_INVALID_VALUE, "%s (%p) lies inside %s (%p)", names[3], (const void *)dgamma,
                    names[k], wgd[k]);
  if (st == SN_SUCCESS && dgamma && g && sn__overlap(dgamma, sizeof(float), g, sizeof(float)))
    st = sn__fail(SN_ERROR_INVALID_VALUE, "%s (%p) is the layer's gamma", names[3], (const void *)dgamma);
  const void *bufs[3] = {W, G, dW};
  for (int k = 0; k < 3 && st == SN_SUCCESS; ++k) st = sn__check_weight_pointer(l, bufs[k], names[k]);
  if (st == SN_SUCCESS && dgamma) st = sn__check_float_pointer(l, dgamma, names[3]);
  return st;
}

SN_API sn_status_t sn_backward(sn_layer_t *layer, const void *W, const void *G, void *dW,
                               unsigned flags, float *dgamma, sn_stream_t stream) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (!W) return sn__fail(SN_ERROR_NULL_POINTER, "W is NULL");
  if (!G) return sn__fail(SN_ERROR_NULL_POINTER, "G is NULL");
  if (!dW) return sn__fail(SN_ERROR_NULL_POINTER, "dW is NULL");
  if (sn__check_backward_flags(flags) != SN_SUCCESS) return SN_ERROR_INVALID_VALUE;
  if (!layer->warmed_up)
    return sn__fail(SN_ERROR_INVALID_STATE,
                    "the layer is not warmed up (no forward or sn_layer_warmup since its creation, "
                    "sn_layer_reset, or a state or checkpoint with warmed_up = 0): the backward "
                    "needs the u, v and sigma of a forward");
  static const char *const names[4] = {"W", "G", "dW", "dgamma"};
  sn_status_t st = sn__check_backward_buffers(layer, W, G, dW, dgamma, names);
  if (st != SN_SUCCESS) return st;
  if (layer->desc.backend == SN_BACKEND_CPU) {
    sn__cpu_backward(layer, W, G, dW, flags, dgamma);
    layer->paths.backward = SN_PATH_CPU;
    return SN_SUCCESS;
  }
  const int dev = layer->desc.device;
  int prev = 0;
  st = sn__enter_device(dev, &prev);
  if (st != SN_SUCCESS) return st;
  sn_cuda_backward_args_t a = {W, G, dW, layer->numel, layer->u, layer->v, layer->sigma,
                               (flags & SN_BACKWARD_ACCUMULATE) != 0,
                               (flags & SN_BACKWARD_DETACH_SIGMA) != 0, dgamma,
                               sn__backward_clamp_eps(layer)};
  int on_chip = sn_cuda_backward_on_chip(&layer->plan, &a);
  int e = sn_cuda_backward(&layer->plan, &a, stream);
  const char *refused = NULL;
  if (drop_refused_launch(layer, e, &on_chip, 0, stream, &refused))
    e = sn_cuda_backward(&layer->plan, &a, stream);
  const sn_path_t path = sn_cuda_backward_path(&layer->plan, &a);
  sn__leave_device(dev, prev);
  if (refused) return refused_in_capture(refused, "backward");
  if (e != 0) {
    return sn__cuda_fail(e, "launching the backward kernels");
  }
  layer->paths.backward = path;
  return SN_SUCCESS;
}

/* ---- σ and state ---------------------------------------------------------------------------- */

SN_API sn_status_t sn_layer_scale_ptr(const sn_layer_t *layer, const float **scale) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (!scale) return sn__fail(SN_ERROR_NULL_POINTER, "scale (the output pointer) is NULL");
  *scale = layer->sigma + 2;
  return SN_SUCCESS;
}

SN_API sn_status_t sn_layer_set_gamma(sn_layer_t *layer, const float *gamma) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (gamma) {
    sn_status_t st = sn__check_float_pointer(layer, gamma, "gamma");
    if (st != SN_SUCCESS) return st;
  }
  layer->plan.gamma = gamma;
  return SN_SUCCESS;
}

SN_API sn_status_t sn_layer_sigma_ptr(const sn_layer_t *layer, const float **sigma,
                                      const float **inv_sigma) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (sigma) *sigma = layer->sigma;
  if (inv_sigma) *inv_sigma = layer->sigma + 1;
  return SN_SUCCESS;
}

/* Copy `count` floats from the layer's memory at `src` to the host, in order after `stream`. */
static sn_status_t copy_out(const sn_layer_t *l, float *dst, const float *src, int64_t count,
                            sn_stream_t stream) {
  if (l->desc.backend == SN_BACKEND_CPU) {
    memcpy(dst, src, (size_t)count * sizeof(float));
    return SN_SUCCESS;
  }
  int prev = 0;
  sn_status_t st = sn__enter_device(l->desc.device, &prev);
  if (st != SN_SUCCESS) return st;
  cudaError_t e = cudaMemcpyAsync(dst, src, (size_t)count * sizeof(float), cudaMemcpyDeviceToHost,
                                  (cudaStream_t)stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize((cudaStream_t)stream);
  sn__leave_device(l->desc.device, prev);
  if (e != cudaSuccess) {
    return sn__cuda_fail((int)e, "copying the layer state to the host");
  }
  return SN_SUCCESS;
}

SN_API sn_status_t sn_layer_get_sigma(const sn_layer_t *layer, float *sigma, float *inv_sigma,
                                      sn_stream_t stream) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  const void *out[2] = {sigma, inv_sigma};
  static const char *const names[2] = {"sigma", "inv_sigma"};
  sn_status_t st = sn__check_host_arrays(2, out, names);
  if (st != SN_SUCCESS) return st;
  float both[2];
  st = copy_out(layer, both, layer->sigma, 2, stream);
  if (st != SN_SUCCESS) return st;
  if (sigma) *sigma = both[0];
  if (inv_sigma) *inv_sigma = both[1];
  return SN_SUCCESS;
}

SN_API sn_status_t sn_layer_health_ptr(const sn_layer_t *layer, const uint32_t **health) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (!health) return sn__fail(SN_ERROR_NULL_POINTER, "health (the output pointer) is NULL");
  *health = (const uint32_t *)(layer->sigma + 3);
  return SN_SUCCESS;
}

SN_API sn_status_t sn_layer_get_health(sn_layer_t *layer, uint32_t *health, int clear,
                                       sn_stream_t stream) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (!health) return sn__fail(SN_ERROR_NULL_POINTER, "health is NULL");
  const void *out[1] = {health};
  static const char *const names[1] = {"health"};
  sn_status_t st = sn__check_host_arrays(1, out, names);
  if (st != SN_SUCCESS) return st;
  float word;
  st = copy_out(layer, &word, layer->sigma + 3, 1, stream);
  if (st != SN_SUCCESS) return st;
  uint32_t bits;
  memcpy(&bits, &word, sizeof bits);
  *health = bits & SN_HEALTH_PUBLIC;
  if (!clear) return SN_SUCCESS;
  const uint32_t kept = bits & ~(uint32_t)SN_HEALTH_PUBLIC; /* the internal restart request stays */
  if (layer->desc.backend == SN_BACKEND_CPU) {
    memcpy(layer->sigma + 3, &kept, sizeof kept);
    return SN_SUCCESS;
  }
  int prev = 0;
  st = sn__enter_device(layer->desc.device, &prev);
  if (st != SN_SUCCESS) return st;
  cudaError_t e = cudaMemcpyAsync(layer->sigma + 3, &kept, sizeof kept, cudaMemcpyHostToDevice,
                                  (cudaStream_t)stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize((cudaStream_t)stream);
  sn__leave_device(layer->desc.device, prev);
  if (e != cudaSuccess) {
    return sn__cuda_fail((int)e, "clearing the health word");
  }
  return SN_SUCCESS;
}

SN_API sn_status_t sn_layer_get_scale(const sn_layer_t *layer, float *scale, sn_stream_t stream) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (!scale) return sn__fail(SN_ERROR_NULL_POINTER, "scale is NULL");
  const void *out[1] = {scale};
  static const char *const names[1] = {"scale"};
  const sn_status_t st = sn__check_host_arrays(1, out, names);
  return st != SN_SUCCESS ? st : copy_out(layer, scale, layer->sigma + 2, 1, stream);
}

SN_API sn_status_t sn_layer_get_state(const sn_layer_t *layer, float *u, float *v, float *sigma,
                                      int *warmed_up, sn_stream_t stream) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  const void *out[4] = {u, v, sigma, warmed_up};
  static const char *const names[4] = {"u", "v", "sigma", "warmed_up"};
  sn_status_t st = sn__check_host_arrays(4, out, names);
  if (u && st == SN_SUCCESS) st = copy_out(layer, u, layer->u, layer->view.h, stream);
  if (st == SN_SUCCESS && v) st = copy_out(layer, v, layer->v, width_of(layer), stream);
  if (st == SN_SUCCESS && sigma) st = copy_out(layer, sigma, layer->sigma, 1, stream);
  if (st != SN_SUCCESS) return st;
  if (warmed_up) *warmed_up = layer->warmed_up;
  return SN_SUCCESS;
}

static sn_status_t check_finite(const float *x, int64_t n, const char *name) {
  for (int64_t k = 0; k < n; ++k)
    if (!isfinite(x[k]))
      return sn__fail(SN_ERROR_INVALID_VALUE, "%s[%lld] = %g is not finite", name, (long long)k,
                      (double)x[k]);
  return SN_SUCCESS;
}

SN_API sn_status_t sn_layer_set_state(sn_layer_t *layer, const float *u, const float *v,
                                      float sigma, int warmed_up, sn_stream_t stream) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  if (!u) return sn__fail(SN_ERROR_NULL_POINTER, "u is NULL");
  if (!v) return sn__fail(SN_ERROR_NULL_POINTER, "v is NULL");
  const void *in[2] = {u, v};
  static const char *const names[2] = {"u", "v"};
  sn_status_t st = sn__check_host_arrays(2, in, names); /* read below on the host */
  if (st != SN_SUCCESS) return st;
  const int64_t h = layer->view.h, w = width_of(layer);
  st = check_finite(u, h, "u");
  if (st == SN_SUCCESS) st = check_finite(v, w, "v");
  if (st != SN_SUCCESS) return st;
  if (sigma != 0.0f && !sn_sigma_usable(sigma))
    return sn__fail(SN_ERROR_INVALID_VALUE,
                    "sigma = %g must be 0 (no estimate) or finite and >= FLT_MIN (1/sigma finite)",
                    (double)sigma);
  const float d = sn_ref_divisor(sigma, layer->desc.norm_bound);
  float sig[4] = {sigma, sigma > 0.0f ? 1.0f / sigma : 0.0f, sigma > 0.0f ? 1.0f / d : 0.0f, 0.0f};
  int zero_u = 1, zero_v = 1;
  for (int64_t i = 0; i < h && zero_u; ++i) zero_u = u[i] == 0.0f;
  for (int64_t j = 0; j < w && zero_v; ++j) zero_v = v[j] == 0.0f;
  const uint32_t health = sn__health_after_set_state(layer->is_1d, zero_u, zero_v);
  memcpy(&sig[3], &health, sizeof health);

  st = sn__put_state(layer, u, v, sig, stream, "copying the new state to the device");
  if (st != SN_SUCCESS) return st;
  layer->warmed_up = warmed_up != 0;
  return SN_SUCCESS;
}

sn_status_t sn__put_state(sn_layer_t *l, const float *u, const float *v, const float sig[4],
                          sn_stream_t stream, const char *what) {
  const int64_t h = l->view.h, w = width_of(l);
  if (l->desc.backend == SN_BACKEND_CPU) {
    memcpy(l->u, u, (size_t)h * sizeof(float));
    memcpy(l->v, v, (size_t)w * sizeof(float));
    memcpy(l->sigma, sig, 4 * sizeof(float));
    return SN_SUCCESS;
  }
  /* The whole state block in its device layout (u's padding zero, as at creation), in one copy:
   * the old state or the new one, not a mix of both where a copy fails. */
  const size_t bytes = (size_t)state_floats(l) * sizeof(float);
  float *img = calloc(1, bytes);
  if (!img) return sn__fail(SN_ERROR_ALLOCATION, "host staging buffer of %zu bytes", bytes);
  memcpy(img, u, (size_t)h * sizeof(float));
  memcpy(img + (l->v - l->u), v, (size_t)w * sizeof(float));
  memcpy(img + (l->sigma - l->u), sig, 4 * sizeof(float));
  int prev = 0;
  sn_status_t st = sn__enter_device(l->desc.device, &prev);
  if (st == SN_SUCCESS) {
    cudaStream_t s = (cudaStream_t)stream;
    cudaError_t e = cudaMemcpyAsync(l->u, img, bytes, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    sn__leave_device(l->desc.device, prev);
    if (e != cudaSuccess) {
      st = sn__cuda_fail((int)e, what);
    }
  }
  free(img);
  return st;
}

SN_API sn_status_t sn_layer_reset(sn_layer_t *layer, uint64_t seed, sn_stream_t stream) {
  if (!layer) return sn__fail(SN_ERROR_NULL_POINTER, "layer is NULL");
  int prev = 0;
  sn_status_t st = SN_SUCCESS;
  if (layer->desc.backend == SN_BACKEND_CUDA) st = sn__enter_device(layer->desc.device, &prev);
  if (st != SN_SUCCESS) return st;
  st = init_state(layer, seed, stream);
  if (layer->desc.backend == SN_BACKEND_CUDA) sn__leave_device(layer->desc.device, prev);
  if (st != SN_SUCCESS) return st;
  layer->desc.seed = seed;
  layer->warmed_up = 0;
  return SN_SUCCESS;
}
