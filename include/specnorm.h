/*
 * specnorm: spectral normalization for GPU training loops.
 *
 * Spectral normalization divides a weight W by an estimate of its largest singular value σ,
 * obtained by power iteration with vectors u and v that persist across training steps
 * (Miyato et al., 2018). specnorm matches torch.nn.utils.parametrizations.spectral_norm.
 *
 * The API in one paragraph
 *   - Describe a weight with sn_layer_desc_t (sn_layer_desc_init fills the defaults), create a
 *     layer with sn_layer_create. The layer owns u, v, σ and 1/σ in its backend's memory (a CUDA
 *     device or the CPU); everything it needs is allocated at creation.
 *   - Every training step: sn_forward(layer, W, W_sn, training, stream). On a CUDA layer it only
 *     enqueues work on `stream` and returns: no allocation, no host synchronization, so a step can
 *     be captured in a CUDA graph (after the first forward, which runs the warm-up).
 *   - σ and 1/σ stay on the device (sn_layer_sigma_ptr) so a consumer GEMM can take 1/σ as its
 *     alpha in device pointer mode; sn_layer_get_sigma copies them to the host and blocks.
 *   - sn_layer_get_state / sn_layer_set_state move u, v, σ and the warm-up flag through host arrays
 *     (checkpoints, or PyTorch's `_u` / `_v` buffers loaded as they are).
 *
 * Errors: every function returns an sn_status_t. On failure, sn_last_error_message() gives a
 * readable message naming the offending argument, and the layer is left exactly as it was (one
 * exception: a grouped forward whose launch fails with a CUDA error after it ran the warm-ups of
 * members that had none leaves those warmed up, as their first forward would have). The library
 * never exits, aborts or prints. A CUDA error the caller left pending survives a successful call,
 * unless that call absorbed a runtime failure of its own (a launch the device refused and the
 * library retried on other kernels, a setup query it did without: get_paths' `dropped`; a pointer
 * query that could not tell host from device memory; a failed switch back to the caller's device):
 * the runtime keeps one last error a thread, which that failure overwrote, and the library clears.
 *
 * Devices and streams: a CUDA layer lives on desc.device. Each call makes that device current,
 * enqueues its work, and makes the caller's device current again (if that switch fails, the call
 * still succeeds with the layer's device current), so `stream` must be a stream of the layer's
 * device (0: that device's legacy default stream). Restoring a device the calling thread never
 * used creates its primary context (cudaSetDevice does, since CUDA 12): call
 * cudaSetDevice(desc.device) in a thread before its first specnorm call, as multi-GPU code does.
 *
 * Thread safety: distinct layers may be used concurrently from different threads and streams.
 * One layer must not be used by two calls at the same time (its state and scratch space are
 * shared by its calls), and its forwards, backwards, sn_layer_set_state, sn_layer_load and
 * sn_layer_reset must be ordered (same stream, or events). The same holds for a group and the
 * layers in it. sn_last_error_message() is per thread. Creation, destruction, group creation and
 * binding allocate, free and use the legacy stream (as do the state, σ, health and checkpoint
 * calls given stream 0): CUDA refuses such calls while another thread captures a stream in
 * cudaStreamCaptureModeGlobal, and the refusal invalidates that capture; while a blocking stream
 * (one not created with cudaStreamNonBlocking) is captured, the legacy stream is unusable in every
 * mode. Capture on a non-blocking stream in the relaxed or thread-local mode, or make those calls
 * outside the capture.
 *
 * Determinism: all reductions have a fixed order; the same W and state give bitwise-identical
 * u, v, σ and W_sn on every run with the same launch plan: the same device, algorithm and
 * SPECNORM_TUNE, W and W_sn aligned alike (16 bytes or not picks the kernels), and the same
 * number of blocks resident at the layer's creation (under MPS it may differ), with no launch
 * refused since (get_paths' `dropped`).
 */
#ifndef SPECNORM_H
#define SPECNORM_H

#include <stddef.h>
#include <stdint.h>

#include "specnorm_version.h"

#if defined(_WIN32) && defined(SPECNORM_SHARED_BUILD)
#define SN_API __declspec(dllexport)
#elif defined(__GNUC__)
#define SN_API __attribute__((visibility("default")))
#else
#define SN_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Same type as cudaStream_t, so a cudaStream_t (or 0 for the legacy default stream) can be
 * passed directly, without this header needing the CUDA headers. Ignored by the CPU backend. */
typedef struct CUstream_st *sn_stream_t;

/* ---- Versions ------------------------------------------------------------------------------ */

/* SN_VERSION_NUMBER of the library actually loaded (major*10000 + minor*100 + patch). */
SN_API int sn_version_number(void);
/* "major.minor.patch" of the library actually loaded. */
SN_API const char *sn_version_string(void);

/* ---- Status -------------------------------------------------------------------------------- */

/* Fixed numbers: never renumbered, only appended. */
typedef enum {
  SN_SUCCESS = 0,
  SN_ERROR_NULL_POINTER = 1,     /* a required pointer argument is NULL */
  SN_ERROR_INVALID_SHAPE = 2,    /* ndim outside 1..8, or a dimension <= 0 */
  SN_ERROR_SIZE_OVERFLOW = 3,    /* the element count or byte size does not fit in 64 bits */
  SN_ERROR_INVALID_DIM = 4,      /* dim outside [-ndim, ndim) */
  SN_ERROR_INVALID_VALUE = 5,    /* a numeric or enum argument is out of range */
  SN_ERROR_NOT_SUPPORTED = 6,    /* a valid request this build does not implement */
  SN_ERROR_INVALID_BACKEND = 7,  /* unknown backend */
  SN_ERROR_INVALID_DEVICE = 8,   /* device ordinal does not exist */
  SN_ERROR_INVALID_POINTER = 9,  /* wrong kind of memory (host memory to a CUDA layer, etc.) */
  SN_ERROR_ALLOCATION = 10,      /* host or device memory allocation failed */
  SN_ERROR_CUDA = 11,            /* a CUDA runtime call failed; the message has its text */
  SN_ERROR_NO_DEVICE = 12,       /* a CUDA backend was asked for but no usable GPU is present */
  SN_ERROR_INVALID_STATE = 13,   /* the call is not valid in the layer's current state */
  SN_ERROR_BAD_CHECKPOINT = 14,  /* a checkpoint blob is truncated, corrupted or not one */
  SN_ERROR_CHECKPOINT_MISMATCH = 15, /* a valid checkpoint of another shape, dim or dtype */
  SN_ERROR_CHECKPOINT_VERSION = 16,  /* a checkpoint written by a newer format version */
  SN_STATUS_COUNT = 17
} sn_status_t;

/* "SN_SUCCESS", "SN_ERROR_NULL_POINTER", ...; "SN_STATUS_UNKNOWN" for other values. */
SN_API const char *sn_status_name(sn_status_t status);
/* A one-line description of the status. */
SN_API const char *sn_status_description(sn_status_t status);
/* Detailed message of the last failed call on this thread ("" if none). Not cleared by
 * successful calls. Valid until the next failing call on this thread. */
SN_API const char *sn_last_error_message(void);

/* ---- Layer description --------------------------------------------------------------------- */

#define SN_MAX_DIMS 8

typedef enum { SN_DTYPE_FLOAT32 = 0, SN_DTYPE_FLOAT16 = 1, SN_DTYPE_BFLOAT16 = 2 } sn_dtype_t;

typedef enum {
  SN_ORDER_U_FIRST = 0, /* torch.nn.utils.parametrizations.spectral_norm: u = N(Mv), v = N(Mᵀu) */
  SN_ORDER_V_FIRST = 1  /* legacy torch.nn.utils.spectral_norm:           v = N(Mᵀu), u = N(Mv) */
} sn_order_t;

/* How eps keeps the power iteration's normalization N(x) away from a division by zero. */
typedef enum {
  SN_EPS_CLAMP_NORM = 0, /* N(x) = x / max(‖x‖, eps): PyTorch (eps 1e-12), Keras 3 and tf.keras
                            (keras.layers.SpectralNormalization: eps 1e-7) */
  SN_EPS_ADD_SQUARED = 1 /* N(x) = x / sqrt(‖x‖² + eps): Flax (flax.linen.SpectralNorm: eps 1e-12)
                            and Haiku (haiku.SpectralNorm: eps 1e-4) */
} sn_eps_mode_t;

typedef enum { SN_BACKEND_CUDA = 0, SN_BACKEND_CPU = 1 } sn_backend_t;

/* Kernel algorithm of a CUDA layer. DEFAULT picks by shape. The CPU backend computes its own way
 * whatever the algorithm, but refuses ONE_PASS where a CUDA layer would (SN_ERROR_NOT_SUPPORTED),
 * so that a descriptor that works on the CPU works on a GPU. */
typedef enum {
  SN_ALGO_DEFAULT = 0,  /* ONE_PASS where it applies and pays (enough rows), else TWO_PASS */
  SN_ALGO_TWO_PASS = 1, /* one read of W per matrix-vector product; every layout and order */
  SN_ALGO_ONE_PASS = 2, /* one read of W per iteration (docs/SPEC.md, "One pass per iteration"):
                           u-first order by rows: dim such that rows are contiguous (all axes
                           before dim of size 1), w <= 16384 and a multiple of 4 (a W not 16-byte
                           aligned runs TWO_PASS); v-first (legacy) order by columns: any dim,
                           h <= 768 for fp32, 1536 for fp16/bf16. Otherwise create returns
                           SN_ERROR_NOT_SUPPORTED. */
  SN_ALGO_COUNT = 3
} sn_algo_t;

typedef struct {
  int ndim;                      /* 1..SN_MAX_DIMS */
  int64_t shape[SN_MAX_DIMS];    /* W's shape, row-major contiguous, each > 0 */
  int dim;                       /* output axis, PyTorch semantics: 0 default, 1 for ConvTranspose,
                                    negative counts from the end */
  sn_dtype_t dtype;              /* element type of W, W_sn, G and dW; default SN_DTYPE_FLOAT32.
                                    u, v, σ stay float32; GPU arithmetic is float32 */
  int n_power_iterations;        /* 1..1000000, default 1 */
  float eps;                     /* > 0 and finite, default 1e-12 */
  int warmup_iterations;         /* 0..1000000, default 15; run once, on the first forward */
  sn_order_t order;              /* default SN_ORDER_U_FIRST */
  uint64_t seed;                 /* seed of the initial u and v, default 0 */
  sn_backend_t backend;          /* default SN_BACKEND_CUDA */
  int device;                    /* CUDA device ordinal, default 0 */
  sn_algo_t algo;                /* default SN_ALGO_DEFAULT */
  float norm_bound;              /* c > 0: W_sn = W / max(1, σ / c) (SNGP); 0 (default): W / σ */
  sn_eps_mode_t eps_mode;        /* default SN_EPS_CLAMP_NORM; σ = ‖p‖² / (the divisor of N(p)) for
                                    the last product p either way, as uᵀ M v gives it (README,
                                    "Against Keras, Flax and Haiku") */
} sn_layer_desc_t;

/* Fill `desc` with the defaults above for a weight of `ndim` dimensions `shape`.
 * Only checks the pointers and ndim; sn_layer_create checks everything. */
SN_API sn_status_t sn_layer_desc_init(sn_layer_desc_t *desc, int ndim, const int64_t *shape);

/* ---- Layer lifetime ------------------------------------------------------------------------ */

typedef struct sn_layer sn_layer_t;

/* Create a layer: validates `desc`, allocates u, v, σ, 1/σ and all scratch space on the backend,
 * draws u = N(randn(h)) and v = N(randn(w)) from desc->seed. Blocks. σ and 1/σ start at 0
 * (no estimate yet). On failure *layer is set to NULL and nothing is leaked. */
SN_API sn_status_t sn_layer_create(sn_layer_t **layer, const sn_layer_desc_t *desc);

/* Free everything the layer owns. Accepts NULL. Synchronizes the layer's device first, so any
 * work still queued that uses the layer completes. */
SN_API void sn_layer_destroy(sn_layer_t *layer);

/* The matrix view of the weight: h = shape[dim] rows, w = numel / h columns (u has h elements,
 * v has w). Either output pointer may be NULL. */
SN_API sn_status_t sn_layer_get_dims(const sn_layer_t *layer, int64_t *h, int64_t *w);

/* ---- The per-step call --------------------------------------------------------------------- */

/* W_sn = W / σ.
 *   training != 0: run n_power_iterations updates of u and v in place, then set σ.
 *   training == 0: keep u and v, recompute σ = uᵀ M v from them (W may have changed).
 * The first forward of a layer (either mode) first runs warmup_iterations updates, as PyTorch
 * does at construction. A 1-D weight is normalized exactly: σ = max(‖W‖, eps) (SN_EPS_CLAMP_NORM,
 * PyTorch's F.normalize) or sqrt(‖W‖² + eps) (SN_EPS_ADD_SQUARED), W_sn = W / σ, and, in either
 * mode, u = W / σ and v = 1 (so the backward is that of W / σ); an all-zero 1-D W is not a
 * degenerate step (below) for eps >= FLT_MIN: σ = eps (or sqrt(eps)), W_sn = 0.
 * W and W_sn: W's shape and dtype, contiguous, aligned to the element size, in the backend's
 * memory: for a CUDA layer device memory of the layer's device, or managed memory (not another
 * device's memory, even with peer access, nor pinned host memory); for a CPU layer host memory
 * (pinned or managed too). Else SN_ERROR_INVALID_POINTER, before anything runs; only the start of
 * a buffer is checked, not that it holds the whole weight. They may be the same buffer (in place)
 * but must not otherwise overlap.
 * Scaled variants: with a norm bound c (desc.norm_bound), W_sn = W / max(1, σ / c); with γ bound
 * (sn_layer_set_gamma), W_sn = (W / σ) · γ. Every forward also sets the layer's scale, the factor
 * with W_sn = scale · W (γ / σ, 1 / max(1, σ / c), 1 / σ; 0 before any σ).
 * CUDA layer: enqueues on `stream` and returns; allocates nothing and does not synchronize.
 * Capture in a CUDA graph is allowed once the layer has warmed up (see sn_layer_warmup); a
 * capture of a first forward that has warm-up iterations to run (a weight of 2 dims or more and
 * warmup_iterations > 0) returns SN_ERROR_INVALID_STATE. A captured forward counts once in the
 * checkpoint's count of forwards, however often its graph is replayed. Some forwards are one
 * launch that needs all its blocks resident at once (sm_90 and up: the on-chip forward of a small
 * layer, the cooperative launch of sn_forward_scale_only, the training forwards of a v-first
 * layer with dim −1 of at least 2²¹ elements held on chip over the grid: README, "Against Keras,
 * Flax and Haiku"); if the device refuses it because fewer blocks can be resident than at the
 * layer's creation (the GPU shared under MPS), the layer runs its usual kernels from then on: at
 * once when no capture is active, else the forward returns SN_ERROR_CUDA asking to end the
 * capture and capture again.
 * Degenerate steps: if the new σ is not finite or below FLT_MIN (all-zero W, NaN in W, or an
 * eval σ = uᵀ M v <= 0 after W moved far from u and v), u, v and σ keep their previous values and
 * W_sn = W / (previous σ); with no previous σ, W_sn = W · 0.
 * CPU layer: computes in double precision, stores float32, blocks; `stream` is ignored. Where
 * CUDA sees a GPU, its calls ask the runtime whether their buffers are device memory (refused),
 * which initializes the CUDA runtime in the process. Its calls on a large weight split their work
 * over threads of their own, joined before they return (the environment variable
 * SPECNORM_CPU_THREADS, read when the layer is created: 1 to 64 threads; default the processors
 * the creating thread may run on, at most 8; 1 keeps every call on the calling thread); the
 * results are the same bits for any number of threads. */
SN_API sn_status_t sn_forward(sn_layer_t *layer, const void *W, void *W_sn, int training,
                              sn_stream_t stream);

/* The forward without W_sn: updates u, v, σ, 1/σ and the scale exactly as sn_forward does, and
 * writes nothing else, so the consumer applies the scale itself: for example a cuBLAS GEMM with
 * alpha = sn_layer_scale_ptr's pointer in CUBLAS_POINTER_MODE_DEVICE. Moves W once per iteration
 * instead of also reading W and writing W_sn. Same rules as sn_forward otherwise. */
SN_API sn_status_t sn_forward_scale_only(sn_layer_t *layer, const void *W, int training,
                                         sn_stream_t stream);

/* Run the warm-up iterations now with weight W (no W_sn written), if they have not run yet;
 * a no-op otherwise. Call it before capturing forwards in a CUDA graph (with lazy module loading
 * and a driver older than 12.3, also run each call once before capturing it: README, "Algorithms").
 * Stream-ordered. It commits
 * u, v, σ, 1/σ and the scale as a training forward does and marks the layer warmed up, so
 * sn_backward may follow. With warmup_iterations = 0, or for a 1-D weight (nothing to iterate),
 * it only marks the layer warmed up: σ stays as it was (0 on a fresh layer, so that a backward
 * gives dW = 0 · G) until the next forward. A warm-up that finds no usable σ (a zero placeholder
 * W, say) also marks the layer warmed up, leaving u and v as drawn (SN_HEALTH_ZERO or _NONFINITE):
 * an eval forward would then use them as they are; sn_layer_reset, then warm up on the real W. */
SN_API sn_status_t sn_layer_warmup(sn_layer_t *layer, const void *W, sn_stream_t stream);

/* ---- σ ------------------------------------------------------------------------------------- */

/* Pointers to the layer's σ and 1/σ (one float each) in the backend's memory: device pointers for
 * a CUDA layer, usable as a cuBLAS alpha in CUBLAS_POINTER_MODE_DEVICE. Valid until destroy; the
 * values change with each forward, in stream order. Either output may be NULL. */
SN_API sn_status_t sn_layer_sigma_ptr(const sn_layer_t *layer, const float **sigma,
                                      const float **inv_sigma);

/* Copy σ and 1/σ to the host after the work queued on `stream` completes. Blocks.
 * Either output may be NULL. */
SN_API sn_status_t sn_layer_get_sigma(const sn_layer_t *layer, float *sigma, float *inv_sigma,
                                      sn_stream_t stream);

/* Pointer to the layer's scale (one float in the backend's memory): W_sn = scale · W. Equal to
 * 1/σ unless a norm bound or γ is set. Valid until destroy; updated by each forward. */
SN_API sn_status_t sn_layer_scale_ptr(const sn_layer_t *layer, const float **scale);

/* Copy the scale to the host after the work queued on `stream` completes. Blocks. */
SN_API sn_status_t sn_layer_get_scale(const sn_layer_t *layer, float *scale, sn_stream_t stream);

/* ---- σReparam ------------------------------------------------------------------------------ */

/* Bind a learnable scale γ for σReparam (W_sn = (W / σ) · γ): `gamma` points to one float in the
 * backend's memory (a device pointer for a CUDA layer), 4-byte aligned, owned by the caller's
 * optimizer, and is read by every forward and backward, in stream order, so it may change between
 * steps. NULL unbinds (γ = 1). A captured CUDA graph keeps the pointer it was captured with. The
 * kernels read γ while they write W_sn, dW and ∂L/∂γ: a forward whose W_sn holds γ, or a backward
 * whose dW holds it or whose dgamma is γ, returns SN_ERROR_INVALID_VALUE (groups: any member's γ). */
SN_API sn_status_t sn_layer_set_gamma(sn_layer_t *layer, const float *gamma);

/* ---- Backward ------------------------------------------------------------------------------ */

typedef enum {
  SN_BACKWARD_ACCUMULATE = 1u,   /* dW += ∂L/∂W (gradient accumulation) instead of dW = ∂L/∂W */
  SN_BACKWARD_DETACH_SIGMA = 2u  /* treat σ as a constant: ∂L/∂W = (γ / d) · G */
} sn_backward_flag_t;

/* ∂L/∂W from G = ∂L/∂W_sn, with the u, v and σ of the layer's last forward (docs/SPEC.md, "Backward"):
 *   ∂L/∂W = (γ / d) · (G − (⟨G, W⟩ / σ) · u vᵀ),  u vᵀ mapped back to W's layout,
 * with γ as the backward reads it (1 unbound; with the forward's γ, γ / d is the forward's scale),
 * where the second term is dropped when σ is detached, a norm bound is not active (σ <= c), or a
 * 1-D weight's σ is its eps (SN_EPS_CLAMP_NORM, ‖W‖ <= eps: W_sn = W / eps, as F.normalize).
 * W: the weight given to that forward. W, G, dW: W's shape and dtype, in the backend's memory and
 * aligned as sn_forward's W; dW may be the same buffer as G or W (in place) but must not otherwise
 * overlap them.
 * flags: a combination of sn_backward_flag_t. dgamma: if not NULL, receives ∂L/∂γ = ⟨G, W⟩ / d
 * (d = σ, or max(1, σ / c)), one float in the backend's memory (device pointer for a CUDA layer),
 * written, not accumulated, outside W, G and dW and not γ itself (SN_ERROR_INVALID_VALUE, as for γ
 * inside dW: sn_layer_set_gamma). Stream-ordered, no allocation, no synchronization: 2 launches (1 when
 * neither the σ term nor dgamma is needed), or one launch that needs all its blocks resident for a
 * layer whose forward runs on chip over the grid and whose backward fits there too (sm_90 and up,
 * the v-first layers above; sn_layer_get_paths: SN_PATH_ON_CHIP_GRID), refused and dropped as the
 * forward's (the 2 launches from then on, or SN_ERROR_CUDA during a capture, asking to capture
 * again). SN_ERROR_INVALID_STATE while the layer is not warmed
 * up: before its first forward or sn_layer_warmup, and after sn_layer_reset, a sn_layer_set_state
 * with warmed_up = 0 or a checkpoint saved so (sn_layer_get_state's warmed_up). With no σ yet (σ = 0: every forward so far degenerate, or a state
 * set with σ = 0 and no forward since), the scale is 0 and dW = 0 · G (added to dW with
 * SN_BACKWARD_ACCUMULATE): zeros, NaN where G is not finite, as in any backward; ∂L/∂γ = 0. It is
 * the derivative of W_sn = W · 0, which is what the forward gave. */
SN_API sn_status_t sn_backward(sn_layer_t *layer, const void *W, const void *G, void *dW,
                               unsigned flags, float *dgamma, sn_stream_t stream);

/* ---- Health -------------------------------------------------------------------------------- */

/* Sticky bits recorded on the device by forwards whose new σ was not usable (README, "Degenerate
 * steps"). The state is never changed by such a step; these bits say that it happened. */
typedef enum {
  SN_HEALTH_NONFINITE = 1u, /* a σ was NaN or infinite: W held non-finite values, or σ overflowed
                               float; on a GPU, whose norms sum squares in float, already from
                               σ ~ 1.8e19 (sqrt(FLT_MAX)), which can also show as SN_HEALTH_ZERO */
  SN_HEALTH_ZERO = 2u,      /* a σ was 0 (or below FLT_MIN): all-zero or subnormal W, or v (or u)
                               zero or in W's null space (or the GPU overflow above) */
  SN_HEALTH_NEGATIVE = 4u,  /* an eval σ = uᵀ M v was < 0: W moved far from u and v */
  SN_HEALTH_RECOVERED = 8u, /* after a zero σ (or a zero u or v given to set_state), a training
                               forward restarted the iteration from the all-ones vector and
                               produced a usable σ: recovery without a host round trip */
  SN_HEALTH_SCALE = 16u     /* the scale was not finite: the γ bound (sn_layer_set_gamma) was NaN
                               or infinite, or γ / σ overflowed float; the scale and W_sn are not
                               finite; u, v and σ were updated as usual */
} sn_health_flag_t;

/* Every sn_health_flag_t bit. */
#define SN_HEALTH_ALL 31u

/* Pointer to the layer's health word (one uint32 of sn_health_flag_t bits, in the backend's
 * memory), readable at any time without synchronizing the step; bits outside SN_HEALTH_ALL are
 * internal (bit 31: a restart from ones is pending) and may be set: mask them off. Valid until
 * destroy. */
SN_API sn_status_t sn_layer_health_ptr(const sn_layer_t *layer, const uint32_t **health);

/* Copy the health bits (SN_HEALTH_ALL's, no internal bit) to the host after the work queued on
 * `stream` completes; with clear != 0, also reset them (stream-ordered; a pending restart is kept).
 * Blocks. */
SN_API sn_status_t sn_layer_get_health(sn_layer_t *layer, uint32_t *health, int clear,
                                       sn_stream_t stream);

/* ---- State --------------------------------------------------------------------------------- */

/* Copy the state to host arrays after the work queued on `stream` completes. Blocks.
 * u: h floats, v: w floats (sn_layer_get_dims); any output may be NULL to skip it. */
SN_API sn_status_t sn_layer_get_state(const sn_layer_t *layer, float *u, float *v, float *sigma,
                                      int *warmed_up, sn_stream_t stream);

/* Replace the state from host arrays, in order after the work queued on `stream`. Blocks.
 * u: h floats, v: w floats, all finite; sigma 0, or finite and >= FLT_MIN (1/σ becomes 1/sigma, or
 * 0 for sigma == 0; the scale becomes 1/d, d = σ or max(1, σ / c), without γ even where one is
 * bound, until the next forward sets γ / d). warmed_up != 0 means the warm-up is not run again (set it when loading PyTorch's
 * `_u` and `_v`, which are already warm). The values are stored bitwise as given. The health bits
 * are cleared; a u or v of zero norm makes the next training forward restart from the all-ones
 * vector (SN_HEALTH_RECOVERED). */
SN_API sn_status_t sn_layer_set_state(sn_layer_t *layer, const float *u, const float *v,
                                      float sigma, int warmed_up, sn_stream_t stream);

/* ---- Groups: many layers, one call ----------------------------------------------------------- */

typedef struct sn_group sn_group_t;

/* A fixed list of layers with their weight buffers, normalized together by sn_group_forward in a
 * number of kernel launches that does not depend on the number of layers, e.g. every spectrally
 * normalized weight of a model: on sm_90 and up one launch with every layer on chip when they all
 * fit (rows contiguous: u-first with the rows of M contiguous, or v-first with its columns
 * contiguous, as Keras', Flax's and Haiku's kernels with dim −1; at most 4096 columns, a
 * thread-block cluster's shared memory each);
 * else one cooperative launch when the weights take at most 8 MiB and the device has cooperative
 * launches; else 3 for one power iteration, 2 more per further iteration.
 * layers[k] uses weight W[k] and writes W_sn[k] (W_sn may be NULL, or any W_sn[k] NULL: that
 * layer gets the scale-only forward). The layers keep their own state and may still be used on
 * their own; the group only holds pointers (it does not own the layers or the buffers, which must
 * outlive it). Requirements, on either backend (a group built on the CPU builds on a GPU, but on
 * one whose blocks have under 128 KB of shared memory, as sm_86's and sm_89's 99 KB: there a
 * member of more than ~12,600 columns, rows for v-first, is SN_ERROR_NOT_SUPPORTED): all
 * layers of one backend (and one device); weights of at least 2 dimensions; either order, mixed:
 * u-first with w <= 16384, v-first with h <= 16384 and no axis of size > 1 on one side of dim
 * (dim 0 or the last axis), since a v-first layer runs as the u-first iteration on Mᵀ, which is
 * then a view of the same W: its rows are M's columns, contiguous with dim −1 (Keras', Flax's and
 * Haiku's layout), read with a stride with dim 0 (SN_ERROR_NOT_SUPPORTED otherwise: call those
 * layers on their own); buffers in the backend's memory; each W_sn[k] is W[k] (in place) or
 * overlaps neither it nor any other layer's W or W_sn, and holds no member's γ
 * (SN_ERROR_INVALID_VALUE). Allocates the group's scratch space; blocks. On failure *group is
 * NULL. */
SN_API sn_status_t sn_group_create(sn_group_t **group, sn_layer_t *const *layers,
                                   const void *const *W, void *const *W_sn, int count);

/* Free the group (not its layers). Accepts NULL. */
SN_API void sn_group_destroy(sn_group_t *group);

/* sn_forward (or sn_forward_scale_only) on every layer of the group: the same computation as those
 * calls made one by one (same warm-up rule, training and eval, commit rule, scaled variants), with
 * other reduction trees, so equal to them within float rounding, not bitwise. Stream-ordered, no
 * allocation, no synchronization, deterministic (bitwise run to run), capturable in a CUDA graph
 * once every layer has warmed up (layers not yet warmed up first run their warm-up on their own).
 * γ bindings (sn_layer_set_gamma) are taken when the group is created (the value each points to
 * is read by every forward); after a layer's binding changes, sn_group_forward returns
 * SN_ERROR_INVALID_STATE: create the group again. On the CPU backend the call is the layers' own
 * forwards, bitwise: a layer of at least 2 × 2¹⁹ elements with more than one thread on its own
 * threads, the others spread over the most threads any of them has (SPECNORM_CPU_THREADS,
 * sn_forward), each wholly on one (sn_group_backward alike); every buffer is checked before any
 * layer runs. */
SN_API sn_status_t sn_group_forward(sn_group_t *group, int training, sn_stream_t stream);

/* Bind the buffers of the group's backward (sn_group_backward): G[k] = ∂L/∂W_sn of layers[k] and
 * dW[k], which receives ∂L/∂W[k] (both of W[k]'s shape and dtype, in the backend's memory);
 * dgamma: NULL, or `count` pointers, each NULL or one float (backend memory) that receives that
 * layer's ∂L/∂γ as sn_backward's dgamma. dW[k] may be G[k] or W[k] (in place) but must not
 * otherwise overlap them, nor overlap any other member's W, G or dW; no dgamma lies inside any
 * member's W, G or dW, and no two overlap; no member's γ lies inside a dW or is a dgamma
 * (SN_ERROR_INVALID_VALUE). Like W and W_sn,
 * the group holds only the pointers: the buffers must outlive the binding. A new call replaces
 * the binding and frees the old one's tables: a CUDA graph captured from sn_group_backward
 * before it must be captured again. Allocates the backward's tables and decides its launches (as
 * sn_group_create does the forward's; a cooperative launch dropped by an earlier refusal is
 * tried again); blocks. SN_ERROR_INVALID_STATE after a member's γ binding changed (as
 * sn_group_forward). On failure the binding in place before the call, if any, stays. */
SN_API sn_status_t sn_group_set_gradients(sn_group_t *group, const void *const *G, void *const *dW,
                                          float *const *dgamma);

/* sn_backward on every layer of the group, with its W, its bound G, dW and dgamma and the u, v and
 * σ of its last forward, in a number of launches that does not depend on the number of layers:
 * 2 (1 when flags has SN_BACKWARD_DETACH_SIGMA and no dgamma is bound), or one cooperative launch
 * where SPECNORM_TUNE asks for it (group_bw_coop=1, or group_coop=1; README, "Development knobs")
 * and the device has cooperative launches. Each layer's result is bitwise what sn_backward gives
 * on it (the same blocks and sums), except a layer whose own backward runs on chip: in a
 * cluster (SPECNORM_TUNE=op_onchip=1), or over the grid (sn_layer_get_paths' backward is
 * SN_PATH_ON_CHIP_GRID: on sm_90 and up by default a v-first layer with dim −1 of at least 2²¹
 * elements whose rows fit shared memory, README "Against Keras, Flax and Haiku"); that layer's
 * result is equal within float rounding. A cooperative launch refused because fewer blocks can be
 * resident than at sn_group_set_gradients (the GPU shared under MPS) is dropped until the next
 * binding: the 2 launches run instead, or during a stream capture the call fails with
 * SN_ERROR_CUDA and the caller captures again. Stream-ordered,
 * no allocation, no synchronization, deterministic, capturable in a CUDA graph. Before
 * sn_group_set_gradients, while a member has had no forward (or sn_layer_warmup) yet, or after a
 * member's γ binding changed (as sn_group_forward): SN_ERROR_INVALID_STATE. A group's backward
 * and a member's own forward or backward must not run at the same time (they share the layer's
 * scratch). */
SN_API sn_status_t sn_group_backward(sn_group_t *group, unsigned flags, sn_stream_t stream);

/* ---- Paths: which kernels a call ran --------------------------------------------------------- */

/* The kernels a call ran (fixed numbers, only appended). Each is decided per call, from the
 * layer's plan (fixed at creation, by shape, dtype, algorithm, device and SPECNORM_TUNE), the
 * call's buffers (16-byte alignment) and the launches the device refused before (`dropped`). */
typedef enum {
  SN_PATH_NONE = 0,          /* no such call has run on the layer (or group) yet */
  SN_PATH_CPU = 1,           /* the CPU backend (every call of a CPU layer, a 1-D weight's too) */
  SN_PATH_ONE_D = 2,         /* a CUDA layer's 1-D weight: σ = ‖W‖ (eps applied) and the division,
                                no iteration */
  SN_PATH_MATVEC = 3,        /* matrix-vector kernels, one read of W per product: two an iteration
                                (SN_ALGO_TWO_PASS, or ONE_PASS by rows given a W off 16-byte
                                alignment); an eval forward's σ = uᵀ M v in one read */
  SN_PATH_ONE_PASS_ROWS = 4, /* one read of W an iteration, by rows (u-first; for an eval forward,
                                its σ by the same rows); a group's three kernels */
  SN_PATH_ONE_PASS_COOP = 5, /* the same, each iteration one cooperative launch (by default the
                                scale-only forwards on sm_90); a group's single cooperative launch */
  SN_PATH_ONE_PASS_COLS = 6, /* one read of W an iteration, by columns (v-first) */
  SN_PATH_ON_CHIP = 7,       /* the whole call in one launch, W read once into the shared memory of
                                one thread-block cluster (a group: one cluster per layer) */
  SN_PATH_ON_CHIP_GRID = 8,  /* the whole call in one cooperative launch, W spread over the shared
                                memory (and registers) of a block per SM */
  SN_PATH_BACKWARD_KERNELS = 9, /* the backward's ⟨G, W⟩ and dW kernels (1 or 2 launches) */
  SN_PATH_BACKWARD_COOP = 10,   /* a group's backward as one cooperative launch */
  SN_PATH_COUNT = 11            /* the number of paths of this version (grows as they are added) */
} sn_path_t;

/* Launches the device refused, which the layer (or group) no longer tries (sn_paths_t.dropped). */
typedef enum {
  SN_DROPPED_ON_CHIP = 1u, /* the on-chip launch (SN_PATH_ON_CHIP or SN_PATH_ON_CHIP_GRID) */
  SN_DROPPED_COOP = 2u,    /* the cooperative forward launch (SN_PATH_ONE_PASS_COOP) */
  SN_DROPPED_BACKWARD_COOP = 4u, /* a group's cooperative backward, until its next
                                    sn_group_set_gradients */
  SN_DROPPED_SETUP = 8u /* at creation (or sn_group_set_gradients) a query of the CUDA runtime
                           that the plan makes (the device's attributes, a kernel's shared memory
                           or occupancy) failed, other than by a "does not fit": the layer (group)
                           does without what it was for, maybe a faster path; the calls still run.
                           A group's bit is its creation's and its latest binding's: a later
                           binding whose queries succeed clears what an earlier one set */
} sn_dropped_t;

/* The path of the latest successful call of each kind. A warm-up alone (sn_layer_warmup, or a
 * group's warm-up of its members) is not recorded; a forward that runs warm-up iterations (the
 * first one, or the first after sn_layer_reset, a set_state or a load that left the layer not
 * warmed up) records the path of its own iterations, or for an eval forward the kernel of its σ.
 * A failed call records no path; a refusal sets its `dropped` bit even in a call that then fails
 * (during a capture: the layer runs without that launch from then on). A group records its own
 * calls, not its members' paths; but a member refused during the warm-up a group call runs for it
 * drops that launch and says so in its own `dropped`. A captured call records when it is
 * captured, not when its graph is replayed (a replay runs the captured kernels). Reading it is
 * host-only: no synchronization, no CUDA call. Not while another thread calls the same layer or
 * group, or a group of the layer (README, "Thread safety"). */
typedef struct {
  sn_path_t train;      /* a training forward that wrote W_sn (a group: any member's) */
  sn_path_t scale_only; /* a training forward without W_sn (a group: no member's) */
  sn_path_t eval;       /* an eval forward (training = 0) */
  sn_path_t backward;   /* sn_backward, sn_group_backward */
  unsigned dropped;     /* sn_dropped_t bits (32), since creation (the backward's since the binding) */
  unsigned reserved[3]; /* 0; room for further kinds of call without changing the struct's size */
} sn_paths_t;

/* The paths of the layer's latest calls into *paths. */
SN_API sn_status_t sn_layer_get_paths(const sn_layer_t *layer, sn_paths_t *paths);
/* The paths of the group's latest sn_group_forward and sn_group_backward into *paths. */
SN_API sn_status_t sn_group_get_paths(const sn_group_t *group, sn_paths_t *paths);
/* "none", "cpu", "one-d", "matvec", "one-pass-rows", "one-pass-coop", "one-pass-cols", "on-chip",
 * "on-chip-grid", "backward-kernels", "backward-coop"; "unknown" for other values. */
SN_API const char *sn_path_name(sn_path_t path);

/* A one-line description of the layer for people, logs and bug reports: its backend and device,
 * shape and matrix view, dtype, order and algorithm, the launch plan its creation made (the
 * one-pass kernels' blocks, clusters and cooperative launch, the on-chip layout, the division's
 * blocks, the backward kernels' blocks for 16-byte aligned buffers) and sn_layer_get_paths's
 * record. Its format may change between versions: read the
 * fields from the API, not from this text. Writes at most `size` bytes into `buf`, always
 * NUL-terminated when size > 0 (buf may be NULL when size is 0); *length (may be NULL) receives
 * the full description's length without the NUL, so a longer buffer can be asked for when it is
 * >= size. Host-only, no CUDA call. */
SN_API sn_status_t sn_layer_describe(const sn_layer_t *layer, char *buf, size_t size, size_t *length);
/* The same for a group: backend and device, its layers, how its forward and backward launch (on
 * chip, cooperative, or in kernels, with their blocks) and sn_group_get_paths's record. */
SN_API sn_status_t sn_group_describe(const sn_group_t *group, char *buf, size_t size, size_t *length);

/* ---- Checkpoints --------------------------------------------------------------------------- */

/* Bytes of a checkpoint of this layer (its state: u, v, σ, 1/σ, the scale, the warm-up flag, the
 * count of forwards, the health word; and, checked or for inspection, its shape, dim, dtype, eps,
 * iteration settings, order, norm bound and seed, but not its eps mode, backend, device or
 * algorithm), a versioned little-endian format with a magic number and a checksum (README,
 * "Checkpoints"). */
SN_API sn_status_t sn_layer_checkpoint_size(const sn_layer_t *layer, size_t *bytes);

/* Write the checkpoint into `buf` (`size` bytes, at least sn_layer_checkpoint_size) after the work
 * queued on `stream` completes. Blocks. *written (may be NULL) receives the bytes written. */
SN_API sn_status_t sn_layer_save(const sn_layer_t *layer, void *buf, size_t size, size_t *written,
                                 sn_stream_t stream);

/* Restore a checkpoint written by sn_layer_save into a layer of the same shape, dim and dtype,
 * bitwise (health word included; a version-1 blob, which has none, clears it as
 * sn_layer_set_state does), in order after `stream`. Blocks. `size` is the blob's exact length
 * (sn_layer_save's *written), not the size of a larger buffer holding it. The scale is restored as
 * saved, with the saving layer's γ if it had one bound (under another norm bound than the blob's,
 * it is recomputed as sn_layer_set_state computes it), until the next forward. The layer keeps
 * its own settings. A blob that is truncated or corrupted
 * (SN_ERROR_BAD_CHECKPOINT), of another shape, dim or dtype (SN_ERROR_CHECKPOINT_MISMATCH) or of a
 * newer format (SN_ERROR_CHECKPOINT_VERSION) leaves the layer untouched. */
SN_API sn_status_t sn_layer_load(sn_layer_t *layer, const void *buf, size_t size,
                                 sn_stream_t stream);

/* Draw u and v afresh from `seed` (which becomes the layer's seed, as a checkpoint records it: the
 * state of a fresh layer created with it), set σ = 1/σ = scale = 0, clear the warm-up flag and the
 * health word (a pending restart from ones included). The count of forwards is kept. Blocks. */
SN_API sn_status_t sn_layer_reset(sn_layer_t *layer, uint64_t seed, sn_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* SPECNORM_H */
