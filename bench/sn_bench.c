/*
 * sn_bench: throughput benchmark of specnorm's forward (training, eval, scale-only) and backward
 * (plain and accumulating), in float32, bfloat16 and float16, on single weights and on whole-model
 * presets, against a plain cuBLAS implementation of PyTorch's sequence measured in the same run,
 * and (joined from bench/torch_baseline.py's result file) against PyTorch itself.
 *
 * Every workload is first checked against specnorm's CPU backend (double precision reference) in
 * the same dtype. Without a CUDA device the CPU backend is timed instead and the run still
 * succeeds (the check then compares a second CPU layer and an independent host formula).
 *
 * Uses the public API only (specnorm.h). `sn_bench --help` documents every option and number.
 */
#define _POSIX_C_SOURCE 200809L

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sn_bench_json.h"
#include "sn_bench_kernels.h"
#include "sn_reference.h" /* sn_load, sn_store: the library's fp16/bf16 conversions */
#include "specnorm.h"

#ifdef SN_BENCH_COMMIT_HEADER
#include "sn_bench_commit.h" /* SN_BENCH_COMMIT, written at build time by bench/commit.cmake */
#endif
#ifndef SN_BENCH_COMMIT
#define SN_BENCH_COMMIT "unknown"
#endif

/* ---- Presets: generated from bench/presets.json by bench/CMakeLists.txt ----------------------- */

typedef struct {
  const char *name;
  int ndim;
  int64_t shape[SN_MAX_DIMS];
  int dim;
} snb_preset_layer_t;

typedef struct {
  const char *name;
  const char *source;
  const snb_preset_layer_t *layers;
  int n_layers;
} snb_preset_t;

#include "sn_bench_presets.h"

/* ---- Constants ------------------------------------------------------------------------------ */

#define CHECK_TOL 1e-5           /* σ, scale: relative error; float32 W_sn and dW: error / max|ref| */
#define CHECK_TOL_DW_BF16 1e-2   /* bfloat16 dW: error / max|dW_ref| (~1 ulp of bfloat16) */
#define CHECK_TOL_DW_F16 2e-3    /* float16 dW: error / max|dW_ref| (~1 ulp of float16) */
#define CHECK_BIG_NUMEL (1 << 20) /* checked layers above this use CHECK_BIG_WARMUP warm-up iterations */
#define CHECK_BIG_WARMUP 2
#define MAX_COPIES 1024          /* cap on rotation copies (and graphs per timed graph row) */
#define ALIGN_FLOATS 64          /* 256-byte alignment of the baseline's device vectors */
#define ALIGN_ELEMS 128          /* every weight in the rotation buffers starts 256-byte aligned */
#define BATCH_TARGET_US 50.0     /* auto batch: calls per sample so that one sample is >= this */
#define BATCH_SMALL_US 20.0      /* auto batch only kicks in below this per-call time */
#define BATCH_MAX 64
#define ROW_BUDGET_US 300000.0   /* default --reps: at most this much timed work per row (>= 20) */
#define REPS_MIN_AUTO 20

/* ---- Small helpers -------------------------------------------------------------------------- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fprintf(stderr, "sn_bench: error: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n");
  exit(1);
}

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void usage_error(const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "sn_bench: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n(see sn_bench --help)\n");
  exit(2);
}

#define CK_CUDA(call)                                                                       \
  do {                                                                                      \
    cudaError_t e_ = (call);                                                                \
    if (e_ != cudaSuccess)                                                                  \
      die("%s:%d: %s failed: %s (%s)", __FILE__, __LINE__, #call, cudaGetErrorName(e_),     \
          cudaGetErrorString(e_));                                                          \
  } while (0)

#define CK_BLAS(call)                                                                     \
  do {                                                                                    \
    cublasStatus_t s_ = (call);                                                           \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                      \
      die("%s:%d: %s failed: cuBLAS status %d", __FILE__, __LINE__, #call, (int)s_);     \
  } while (0)

#define CK_SN(call)                                                                           \
  do {                                                                                        \
    sn_status_t st_ = (call);                                                                 \
    if (st_ != SN_SUCCESS)                                                                    \
      die("%s:%d: %s failed: %s: %s", __FILE__, __LINE__, #call, sn_status_name(st_),        \
          sn_last_error_message());                                                           \
  } while (0)

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) die("out of host memory (%zu bytes)", n);
  return p;
}

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) die("out of host memory (%zu x %zu bytes)", n, size);
  return p;
}

static char *xstrdup(const char *s) {
  char *d = xmalloc(strlen(s) + 1);
  strcpy(d, s);
  return d;
}

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Linear-interpolated quantile of a sorted array. */
static double quantile(const double *sorted, int n, double q) {
  if (n <= 0) return NAN;
  double pos = q * (double)(n - 1);
  int i = (int)floor(pos);
  if (i >= n - 1) return sorted[n - 1];
  double f = pos - (double)i;
  return sorted[i] * (1.0 - f) + sorted[i + 1] * f;
}

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Uniform in [-1, 1). Any scale works: W_sn = W / σ does not depend on it. */
static void fill_random(float *x, int64_t n, uint64_t seed) {
  uint64_t st = seed * 0x2545F4914F6CDD1Dull + 1;
  for (int64_t i = 0; i < n; i++)
    x[i] = (float)((double)(splitmix64(&st) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

static int64_t numel_of(const snb_preset_layer_t *l) {
  int64_t n = 1;
  for (int i = 0; i < l->ndim; i++) n *= l->shape[i];
  return n;
}

static void shape_str(const snb_preset_layer_t *l, char *buf, size_t size) {
  size_t len = 0;
  buf[0] = '\0';
  for (int i = 0; i < l->ndim && len < size; i++)
    len += (size_t)snprintf(buf + len, size - len, "%s%lld", i ? "x" : "", (long long)l->shape[i]);
}

static void human_count(double n, char *buf, size_t size) {
  if (n >= 1e9) snprintf(buf, size, "%.2fG", n / 1e9);
  else if (n >= 1e6) snprintf(buf, size, "%.2fM", n / 1e6);
  else if (n >= 1e3) snprintf(buf, size, "%.1fk", n / 1e3);
  else snprintf(buf, size, "%.0f", n);
}

/* ---- Element types and modes ---------------------------------------------------------------- */

#define N_DTYPES 3
static const sn_dtype_t DTYPES[N_DTYPES] = {SN_DTYPE_FLOAT32, SN_DTYPE_BFLOAT16, SN_DTYPE_FLOAT16};

static const char *dtype_name(sn_dtype_t t) {
  switch (t) {
    case SN_DTYPE_FLOAT32: return "f32";
    case SN_DTYPE_BFLOAT16: return "bf16";
    case SN_DTYPE_FLOAT16: return "f16";
    default: return "?";
  }
}
static int dtype_mant_bits(sn_dtype_t t) {
  return t == SN_DTYPE_FLOAT32 ? 23 : t == SN_DTYPE_BFLOAT16 ? 7 : 10;
}

/* One unit in the last place of the type at magnitude |x| (normal range; float16 subnormals have
 * the fixed ulp 2^-24). */
static double ulp_of(double x, sn_dtype_t t) {
  int e = 0;
  x = fabs(x);
  if (!(x > 0)) x = 1e-30;
  frexp(x, &e); /* x = m * 2^e, m in [0.5, 1): the leading bit is 2^(e-1) */
  int p = e - 1 - dtype_mant_bits(t);
  if (t == SN_DTYPE_FLOAT16 && p < -24) p = -24;
  if (t == SN_DTYPE_FLOAT32 && p < -149) p = -149;
  if (t == SN_DTYPE_BFLOAT16 && p < -133) p = -133;
  return ldexp(1.0, p);
}

typedef enum { M_TRAIN = 0, M_EVAL, M_SCALE, M_BACKWARD, M_BACKWARD_ACC, N_MODES } snb_mode_t;
static const char *const MODE_NAMES[N_MODES] = {"train", "eval", "scale", "backward", "backward-acc"};
/* bytes(W) multiples each mode must move with one power iteration (see --help); each further
 * iteration reads W once more in train and scale (mode_bytes). */
static const double MODE_BYTES[N_MODES] = {3, 3, 1, 4, 5};
static double mode_bytes(int mode, int power_iters) {
  return MODE_BYTES[mode] + ((mode == M_TRAIN || mode == M_SCALE) ? power_iters - 1 : 0);
}
static int is_backward(int m) { return m == M_BACKWARD || m == M_BACKWARD_ACC; }
/* sn_backward's flags in backward mode m. */
static unsigned backward_flags(int m) { return m == M_BACKWARD_ACC ? SN_BACKWARD_ACCUMULATE : 0u; }

/* ---- Workloads and options ------------------------------------------------------------------ */

typedef struct {
  char name[160];       /* join key with torch_baseline.py: "4096x4096", "64x3x3x3@dim1", preset */
  char shape[160];      /* human description */
  const char *kind;     /* "shape" or "preset" */
  int n_layers;
  snb_preset_layer_t *layers; /* owned array; names point to static strings or to `name` */
  int64_t params;       /* Σ numel */
  int all_dim0;         /* every layer has dim 0 and >= 2 dims (the cuBLAS baseline applies) */
} workload_t;

typedef struct {
  char **shape_args;
  int n_shape_args;
  const char **preset_args;
  int n_preset_args;
  int default_dim;
  int modes[N_MODES];     /* selected modes */
  int dtypes[N_DTYPES];   /* selected dtypes, indexed like DTYPES */
  sn_algo_t algos[SN_ALGO_COUNT];
  int n_algos;
  int power_iters;
  int layer_warmup; /* -1: the library's default warmup_iterations */
  sn_order_t order;
  int reps, warmup, batch; /* -1: default */
  int reps_given;
  int rotate, baseline, graph, check, group, probe;
  int force_cpu;
  int device;
  uint64_t seed;
  const char *torch_file, *json_file, *csv_file;
  int list_presets;
} options_t;

static sn_order_t g_order = SN_ORDER_U_FIRST; /* --order, for the rows' algo column */

/* The rows' algo column: the algorithm, with "/v" under --order v-first. */
static const char *algo_name(sn_algo_t a) {
  const int v = g_order == SN_ORDER_V_FIRST;
  switch (a) {
    case SN_ALGO_DEFAULT: return v ? "default/v" : "default";
    case SN_ALGO_TWO_PASS: return v ? "two-pass/v" : "two-pass";
    case SN_ALGO_ONE_PASS: return v ? "one-pass/v" : "one-pass";
    default: return "?";
  }
}

static void print_help(void) {
  printf(
      "sn_bench: throughput of specnorm's spectral-normalization forward and backward, checked\n"
      "against the CPU reference and compared with a plain cuBLAS implementation (and PyTorch,\n"
      "via --torch).\n"
      "\n"
      "Usage: sn_bench [options]\n"
      "\n"
      "Workloads (default: --shape 1024x1024 --shape 4096x4096 --shape 4096x16384\n"
      "           --preset sngan-cifar10; without a GPU: 256x256, 1024x1024, sngan-cifar10):\n"
      "  --shape SHAPE       a weight of shape d0xd1x...(1 to 8 dims), e.g. 4096x4096 or 64x3x3x3;\n"
      "                      an optional ':D' suffix gives its spectral_norm dim (64x3x3x3:1).\n"
      "                      Repeatable. Named \"d0xd1...\" (+\"@dimD\" when D != 0) in the output.\n"
      "  --dim D             dim of every --shape without a ':D' suffix (default 0; negative counts\n"
      "                      from the end, as in PyTorch)\n"
      "  --preset NAME       every spectrally normalized weight of a model, timed as one call\n"
      "                      (the forward of each layer in turn). Repeatable. NAME: all (every\n"
      "                      preset)");
  for (int p = 0; p < SNB_N_PRESETS; p++) printf(", %s", snb_presets[p].name);
  printf(
      "\n"
      "  --list-presets      print every preset's layers (name, shape, dim) and exit\n"
      "\n"
      "What is timed:\n"
      "  --mode M[,M...]     train | eval | scale | backward | backward-acc | all (default all):\n"
      "                      train     sn_forward(training=1): the power iteration updates u, v,\n"
      "                                then W_sn = W / sigma                  bytes = 3 x bytes(W)\n"
      "                      eval      sn_forward(training=0): sigma = u^T M v with the stored u, v,\n"
      "                                then W / sigma                         bytes = 3 x bytes(W)\n"
      "                      scale     sn_forward_scale_only(training=1): the training forward with\n"
      "                                1/sigma left to the consumer, no W_sn  bytes = 1 x bytes(W)\n"
      "                      backward  sn_backward(flags 0) alone, after an untimed training\n"
      "                                forward: dW from G = dL/dW_sn          bytes = 4 x bytes(W)\n"
      "                      backward-acc  the same with SN_BACKWARD_ACCUMULATE (dW += ...)\n"
      "                                                                       bytes = 5 x bytes(W)\n"
      "  --dtype T[,T...]    f32 | bf16 | f16 | all (default f32): sn_layer_desc_t.dtype of every\n"
      "                      layer (W, W_sn, G, dW in that type). The weights are drawn in float32\n"
      "                      and rounded to the type, for specnorm, the baselines and the check.\n"
      "  --algo A            default | two-pass | one-pass | all (default: default):\n"
      "                      sn_layer_desc_t.algo; a workload with a layer one-pass does not\n"
      "                      support skips that algo with a message\n"
      "  --order O           u-first | v-first (default u-first): sn_layer_desc_t.order of specnorm's\n"
      "                      layers (v-first: the legacy torch.nn.utils.spectral_norm order; rows'\n"
      "                      algo gets \"/v\"). The torch rows keep the u-first sequence;\n"
      "                      the cuBLAS baseline, u-first too, is not run.\n"
      "  --power-iters N     n_power_iterations of every layer and of the baselines (default 1)\n"
      "  --layer-warmup N    warmup_iterations of every layer (default: the library's, 15), e.g.\n"
      "                      0 to keep a profiler's kernel list to the timed calls (without it,\n"
      "                      layers of more than 1M elements take 2 when checked: the CPU's time)\n"
      "  --no-baseline       skip the cuBLAS baseline\n"
      "  --no-graph          skip the CUDA-graph replay rows (specnorm-graph, cublas-graph)\n");
  printf(
      "  --no-probe          skip the memory-floor probe rows (probe, probe-graph; single-layer\n"
      "                      workloads on a GPU): not spectral normalization but the fewest\n"
      "                      dependent steps a call of the mode needs, timed like the others: one\n"
      "                      streaming reduction over W (scale), then one streaming map W -> W_sn\n"
      "                      (train, eval); backward: a reduction over G and W, then G -> dW.\n"
      "                      Checked against the host: its scalar, and a sample of its output\n"
      "                      by the W_sn rule of the check below. A specnorm row over its probe\n"
      "                      row is what is left to gain without removing a pass over W or a\n"
      "                      grid-wide step\n"
      "  --no-group          skip the grouped calls (specnorm-group rows, cpu-group without\n"
      "                      a GPU: every layer of a multi-layer workload in one\n"
      "                      sn_group_forward, or in backward modes one sn_group_backward)\n"
      "  --no-check          skip the check against the CPU reference (rows say check=skipped)\n"
      "  --cpu               time the CPU backend even when a GPU is present\n"
      "  --device N          CUDA device ordinal (default 0)\n"
      "  --seed S            seed of the weights and of u, v (default 0)\n"
      "\n"
      "Timing:\n"
      "  --reps N            timed samples per row (default 200, fewer for rows whose 200 samples\n"
      "                      would take more than %.1f s, at least %d; CPU backend: 10)\n"
      "  --warmup N          untimed calls before the samples (default 20; CPU backend: 2)\n"
      "  --batch R           calls per sample; a sample is (CUDA event after R calls - event before)/R.\n"
      "                      Default auto: 1, or for calls under %.0f us as many as make a sample\n"
      "                      >= %.0f us (at most %d). The row's 'batch' column says which.\n"
      "  --no-rotate         always use the same W, W_sn/dW and G buffers. By default every call\n"
      "                      uses the next of C copies of all of them, C = ceil(4 x L2 size /\n"
      "                      bytes of one copy) (at most %d), so W is not served from L2.\n"
      "  Each row reports the median and the p10-p90 range of the samples in microseconds.\n"
      "  CPU backend: host clock around each call, no rotation.\n"
      "\n",
      ROW_BUDGET_US / 1e6, REPS_MIN_AUTO, BATCH_SMALL_US, BATCH_TARGET_US, BATCH_MAX, MAX_COPIES);
  printf(
      "Numbers:\n"
      "  bytes    the bytes a call must move (bench convention), bytes(W) = numel x size of dtype:\n"
      "             train, eval     3 x bytes(W): one read of W for the (one-pass) power iteration\n"
      "                             or the eval sigma, plus one read of W and one write of W_sn\n"
      "             scale           1 x bytes(W): the one read of W of the iteration\n"
      "             backward        4 x bytes(W): read G and W for <G, W>, read G and write dW\n"
      "             backward-acc    5 x bytes(W): backward plus the read of the old dW\n"
      "           With --power-iters N, train and scale add N - 1 reads of W (N + 2, N).\n"
      "           A preset sums this over its layers.\n"
      "  GB/s     bytes / median time (1 GB = 1e9 bytes)\n"
      "  %%copy    GB/s as a percentage of the device-to-device copy bandwidth measured in the same\n"
      "           run (cudaMemcpyAsync of a 1 GiB buffer or as much as memory allows, counting\n"
      "           read + write bytes; CPU backend: memcpy)\n"
      "  floor    bytes / copy bandwidth: the memory floor of the call, in us\n"
      "  launches nodes of one call captured in a CUDA graph (kernels + memsets + memcpys) after the\n"
      "           warm-up forward; 'fail' if the call could not be captured\n"
      "  xcuBLAS  median of the faster cuBLAS baseline row (eager or graph) / this row's median.\n"
      "           The baseline follows PyTorch's u-first sequence: gemv, nrm2, 1/max(norm,eps),\n"
      "           scal, gemv^T, nrm2, 1/max, scal, gemv, dot, W/sigma (eval: gemv, dot, W/sigma;\n"
      "           scale: the train sequence with 1/sigma in place of W/sigma). backward: <G, W> by\n"
      "           cublasSdot (device pointer mode; bf16/f16: a small dot kernel), then one\n"
      "           elementwise kernel dW (+)= (G - (<G,W>/sigma) u v^T) / sigma. cuBLAS has no gemv\n"
      "           with a bf16/f16 matrix and float vectors, so for bf16/f16 only the backward modes\n"
      "           have a baseline. Only for weights with dim 0 (skipped otherwise, and for presets\n"
      "           containing one).\n"
      "  xtorch   median of the faster PyTorch row (torch-eager or torch-graph) of --torch FILE for\n"
      "           the same workload, mode, dtype and --power-iters / this row's median\n"
      "  check    pass: sigma within %.0e relative of the CPU backend layer of the same dtype, and\n"
      "           W_sn (f32: within %.0e x max|W_sn|; bf16/f16: each element within 1 ulp of the\n"
      "           type), the scale (scale mode, %.0e relative) or dW (f32 %.0e, bf16 %.0e, f16\n"
      "           %.0e x max|dW|). sigma_rel_err / wsn_rel_err give the largest errors (wsn_rel_err\n"
      "           holds the scale's error in scale rows and dW's in backward rows).\n"
      "\n",
      CHECK_TOL, CHECK_TOL, CHECK_TOL, CHECK_TOL, CHECK_TOL_DW_BF16, CHECK_TOL_DW_F16);
  printf(
      "Output:\n"
      "  --torch FILE        join with torch_baseline.py's --json output (adds xtorch, lists the\n"
      "                      PyTorch rows in the table)\n"
      "  --json FILE         write device, versions, commit, date, copy bandwidth, settings, all rows\n"
      "  --csv FILE          write the rows as CSV\n"
      "  --version           print versions and exit\n"
      "  -h, --help          this text\n"
      "\n"
      "Full matrix (every mode, dtype and preset; about 2 minutes on an H100):\n"
      "  sn_bench --mode all --dtype all --preset all --json sn.json\n"
      "  (and torch_baseline.py --mode all --dtype all --preset all --json torch.json first, to\n"
      "  add --torch torch.json)\n"
      "\n"
      "Exit status: 0 success (also when no GPU is present: the CPU backend is timed), 1 a check\n"
      "against the CPU reference failed or a CUDA/specnorm call failed, 2 bad command line.\n");
}

static long long parse_int(const char *opt, const char *s, long long lo, long long hi) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end != '\0') usage_error("%s: '%s' is not an integer", opt, s);
  if (v < lo || v > hi) usage_error("%s: %lld is outside [%lld, %lld]", opt, v, lo, hi);
  return v;
}

/* "a,b,c" of `names` (or "all") -> sel[i] = 1. */
static void parse_list(const char *opt, const char *val, const char *const *names, int n, int *sel,
                       const char *expected) {
  const char *p = val;
  if (!*p) usage_error("%s: empty value; expected %s", opt, expected);
  for (;;) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    int found = 0;
    if (len == 3 && !strncmp(p, "all", 3)) {
      for (int i = 0; i < n; i++) sel[i] = 1;
      found = 1;
    }
    for (int i = 0; i < n && !found; i++)
      if (strlen(names[i]) == len && !strncmp(p, names[i], len)) sel[i] = found = 1;
    if (!found) usage_error("%s: '%.*s' is not %s", opt, (int)len, p, expected);
    if (!end) break;
    p = end + 1;
  }
}

static void parse_options(int argc, char **argv, options_t *o) {
  memset(o, 0, sizeof *o);
  for (int m = 0; m < N_MODES; m++) o->modes[m] = 1;
  o->dtypes[0] = 1;
  o->algos[0] = SN_ALGO_DEFAULT;
  o->n_algos = 1;
  o->power_iters = 1;
  o->layer_warmup = -1;
  o->reps = o->warmup = o->batch = -1;
  o->rotate = o->baseline = o->graph = o->check = o->group = o->probe = 1;
  o->shape_args = xcalloc((size_t)argc, sizeof(char *));
  o->preset_args = xcalloc((size_t)argc, sizeof(char *));
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    /* Accept --opt=value too. */
    char optbuf[64];
    const char *val = NULL;
    const char *eq = strchr(a, '=');
    if (a[0] == '-' && a[1] == '-' && eq && (size_t)(eq - a) < sizeof optbuf) {
      memcpy(optbuf, a, (size_t)(eq - a));
      optbuf[eq - a] = '\0';
      val = eq + 1;
      a = optbuf;
    }
#define TAKES_VALUE()                                                   \
  do {                                                                  \
    if (!val) {                                                         \
      if (i + 1 >= argc) usage_error("option %s needs a value", a);     \
      val = argv[++i];                                                  \
    }                                                                   \
  } while (0)
#define NO_VALUE() \
  do {             \
    if (val) usage_error("option %s takes no value", a); \
  } while (0)
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      print_help();
      exit(0);
    } else if (!strcmp(a, "--version")) {
      NO_VALUE();
      int rt = 0, drv = 0;
      cudaRuntimeGetVersion(&rt);
      cudaDriverGetVersion(&drv);
      printf("sn_bench (commit %s), specnorm %s (header %s), CUDA runtime %d, driver %d\n",
             SN_BENCH_COMMIT, sn_version_string(), SN_VERSION_STRING, rt, drv);
      exit(0);
    } else if (!strcmp(a, "--shape")) {
      TAKES_VALUE();
      o->shape_args[o->n_shape_args++] = xstrdup(val);
    } else if (!strcmp(a, "--dim")) {
      TAKES_VALUE();
      o->default_dim = (int)parse_int(a, val, -SN_MAX_DIMS, SN_MAX_DIMS - 1);
    } else if (!strcmp(a, "--preset")) {
      TAKES_VALUE();
      int ok = !strcmp(val, "all");
      for (int p = 0; p < SNB_N_PRESETS && !ok; p++) ok = !strcmp(val, snb_presets[p].name);
      if (!ok) {
        fprintf(stderr, "sn_bench: --preset: unknown preset '%s'; known: all", val);
        for (int p = 0; p < SNB_N_PRESETS; p++) fprintf(stderr, ", %s", snb_presets[p].name);
        fprintf(stderr, "\n");
        exit(2);
      }
      o->preset_args[o->n_preset_args++] = val;
    } else if (!strcmp(a, "--list-presets")) {
      NO_VALUE();
      o->list_presets = 1;
    } else if (!strcmp(a, "--mode")) {
      TAKES_VALUE();
      memset(o->modes, 0, sizeof o->modes);
      parse_list(a, val, MODE_NAMES, N_MODES, o->modes,
                 "train, eval, scale, backward, backward-acc or all");
    } else if (!strcmp(a, "--dtype")) {
      TAKES_VALUE();
      static const char *const names[N_DTYPES] = {"f32", "bf16", "f16"};
      memset(o->dtypes, 0, sizeof o->dtypes);
      parse_list(a, val, names, N_DTYPES, o->dtypes, "f32, bf16, f16 or all");
    } else if (!strcmp(a, "--algo")) {
      TAKES_VALUE();
      if (!strcmp(val, "default")) o->algos[0] = SN_ALGO_DEFAULT, o->n_algos = 1;
      else if (!strcmp(val, "two-pass")) o->algos[0] = SN_ALGO_TWO_PASS, o->n_algos = 1;
      else if (!strcmp(val, "one-pass")) o->algos[0] = SN_ALGO_ONE_PASS, o->n_algos = 1;
      else if (!strcmp(val, "all")) {
        for (int k = 0; k < SN_ALGO_COUNT; k++) o->algos[k] = (sn_algo_t)k;
        o->n_algos = SN_ALGO_COUNT;
      } else usage_error("--algo: '%s' is not default, two-pass, one-pass or all", val);
    } else if (!strcmp(a, "--order")) {
      TAKES_VALUE();
      if (!strcmp(val, "u-first")) o->order = SN_ORDER_U_FIRST;
      else if (!strcmp(val, "v-first")) o->order = SN_ORDER_V_FIRST;
      else usage_error("--order: '%s' is not u-first or v-first", val);
      g_order = o->order;
    } else if (!strcmp(a, "--power-iters")) {
      TAKES_VALUE();
      o->power_iters = (int)parse_int(a, val, 1, 1000);
    } else if (!strcmp(a, "--layer-warmup")) {
      TAKES_VALUE();
      o->layer_warmup = (int)parse_int(a, val, 0, 1000000);
    } else if (!strcmp(a, "--reps")) {
      TAKES_VALUE();
      o->reps = (int)parse_int(a, val, 1, 1000000);
      o->reps_given = 1;
    } else if (!strcmp(a, "--warmup")) {
      TAKES_VALUE();
      o->warmup = (int)parse_int(a, val, 0, 1000000);
    } else if (!strcmp(a, "--batch")) {
      TAKES_VALUE();
      o->batch = (int)parse_int(a, val, 1, 100000);
    } else if (!strcmp(a, "--no-rotate")) {
      NO_VALUE();
      o->rotate = 0;
    } else if (!strcmp(a, "--no-baseline")) {
      NO_VALUE();
      o->baseline = 0;
    } else if (!strcmp(a, "--no-probe")) {
      NO_VALUE();
      o->probe = 0;
    } else if (!strcmp(a, "--no-group")) {
      NO_VALUE();
      o->group = 0;
    } else if (!strcmp(a, "--no-graph")) {
      NO_VALUE();
      o->graph = 0;
    } else if (!strcmp(a, "--no-check")) {
      NO_VALUE();
      o->check = 0;
    } else if (!strcmp(a, "--cpu")) {
      NO_VALUE();
      o->force_cpu = 1;
    } else if (!strcmp(a, "--device")) {
      TAKES_VALUE();
      o->device = (int)parse_int(a, val, 0, 1023);
    } else if (!strcmp(a, "--seed")) {
      TAKES_VALUE();
      o->seed = (uint64_t)parse_int(a, val, 0, LLONG_MAX);
    } else if (!strcmp(a, "--torch")) {
      TAKES_VALUE();
      o->torch_file = val;
    } else if (!strcmp(a, "--json")) {
      TAKES_VALUE();
      o->json_file = val;
    } else if (!strcmp(a, "--csv")) {
      TAKES_VALUE();
      o->csv_file = val;
    } else {
      usage_error("unknown option '%s'", argv[i]);
    }
#undef TAKES_VALUE
#undef NO_VALUE
  }
}

/* "4096x4096", "64x3x3x3:1" -> one-layer workload. */
static void parse_shape(const char *arg, int default_dim, workload_t *w) {
  snb_preset_layer_t *l = xcalloc(1, sizeof *l);
  const char *s = arg;
  int dim = default_dim;
  int nd = 0;
  for (;;) {
    if (*s < '0' || *s > '9')
      usage_error("--shape '%s': expected dimensions like 4096x4096 or 64x3x3x3:1", arg);
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || v <= 0 || v > (1ll << 40))
      usage_error("--shape '%s': dimension must be in 1..2^40", arg);
    if (nd == SN_MAX_DIMS) usage_error("--shape '%s': at most %d dimensions", arg, SN_MAX_DIMS);
    l->shape[nd++] = v;
    s = end;
    if (*s == 'x' || *s == 'X') {
      s++;
      continue;
    }
    if (*s == ':') {
      char *e2 = NULL;
      errno = 0;
      long d = strtol(s + 1, &e2, 10);
      if (errno || e2 == s + 1 || *e2 != '\0' || d < -SN_MAX_DIMS || d >= SN_MAX_DIMS)
        usage_error("--shape '%s': the ':D' suffix must be an integer dim", arg);
      dim = (int)d;
      break;
    }
    if (*s != '\0') usage_error("--shape '%s': unexpected '%c'", arg, *s);
    break;
  }
  l->ndim = nd;
  if (dim < -nd || dim >= nd)
    usage_error("--shape '%s': dim %d is outside [%d, %d) for a %d-d weight", arg, dim, -nd, nd, nd);
  if (dim < 0) dim += nd;
  l->dim = dim;
  double total = 1;
  for (int i = 0; i < nd; i++) total *= (double)l->shape[i];
  if (total > 4e9) usage_error("--shape '%s': more than 4e9 elements", arg);
  memset(w, 0, sizeof *w);
  shape_str(l, w->name, sizeof w->name);
  if (dim != 0) {
    size_t len = strlen(w->name);
    snprintf(w->name + len, sizeof w->name - len, "@dim%d", dim);
  }
  l->name = w->name;
  snprintf(w->shape, sizeof w->shape, "%s%s", w->name, nd == 1 ? " (1-d)" : "");
  w->kind = "shape";
  w->n_layers = 1;
  w->layers = l;
}

static void preset_workload(const snb_preset_t *p, workload_t *w) {
  memset(w, 0, sizeof *w);
  snprintf(w->name, sizeof w->name, "%s", p->name);
  w->kind = "preset";
  w->n_layers = p->n_layers;
  w->layers = xcalloc((size_t)p->n_layers, sizeof *w->layers);
  memcpy(w->layers, p->layers, (size_t)p->n_layers * sizeof *w->layers);
  for (int i = 0; i < w->n_layers; i++)
    if (w->layers[i].dim < 0) w->layers[i].dim += w->layers[i].ndim;
}

static void finish_workload(workload_t *w) {
  w->params = 0;
  w->all_dim0 = 1;
  for (int i = 0; i < w->n_layers; i++) {
    w->params += numel_of(&w->layers[i]);
    if (w->layers[i].dim != 0 || w->layers[i].ndim < 2) w->all_dim0 = 0;
  }
  if (!strcmp(w->kind, "preset")) {
    char c[32];
    human_count((double)w->params, c, sizeof c);
    snprintf(w->shape, sizeof w->shape, "%d layers, %s params", w->n_layers, c);
  }
}

static workload_t *build_workloads(const options_t *o, int cpu_mode, int *n_out) {
  int cap = o->n_shape_args + (o->n_preset_args + 1) * SNB_N_PRESETS + 4;
  workload_t *ws = xcalloc((size_t)cap, sizeof *ws);
  int n = 0;
  if (o->n_shape_args == 0 && o->n_preset_args == 0) {
    static const char *gpu_defaults[] = {"1024x1024", "4096x4096", "4096x16384"};
    static const char *cpu_defaults[] = {"256x256", "1024x1024"};
    const char **d = cpu_mode ? cpu_defaults : gpu_defaults;
    int nd = cpu_mode ? 2 : 3;
    for (int i = 0; i < nd; i++) parse_shape(d[i], 0, &ws[n++]);
    for (int p = 0; p < SNB_N_PRESETS; p++)
      if (!strcmp(snb_presets[p].name, "sngan-cifar10")) preset_workload(&snb_presets[p], &ws[n++]);
  } else {
    for (int i = 0; i < o->n_shape_args; i++) parse_shape(o->shape_args[i], o->default_dim, &ws[n++]);
    for (int i = 0; i < o->n_preset_args; i++) {
      for (int p = 0; p < SNB_N_PRESETS; p++) {
        if (strcmp(o->preset_args[i], "all") && strcmp(o->preset_args[i], snb_presets[p].name))
          continue;
        int dup = 0;
        for (int k = 0; k < n; k++) dup |= !strcmp(ws[k].name, snb_presets[p].name);
        if (!dup) preset_workload(&snb_presets[p], &ws[n++]);
      }
    }
  }
  for (int i = 0; i < n; i++) finish_workload(&ws[i]);
  *n_out = n;
  return ws;
}

/* ---- Result rows ---------------------------------------------------------------------------- */

typedef struct {
  const workload_t *wl;
  char workload[160];
  char mode[16];
  char dtype[8];
  char impl[24];
  char algo[16];
  char path[64];  /* specnorm: the kernels its calls ran (sn_layer_get_paths); "-" otherwise */
  char device[8]; /* "cuda" or "cpu" */
  double median_us, p10_us, p90_us;
  int reps, batch, copies;
  double bytes, gbps, copy_frac, floor_us;
  int launches, kernel_nodes; /* -1: not measured, -2: capture failed */
  double speedup_cublas, speedup_torch;
  char check[12];
  double sigma_err, wsn_err;
  char note[200];
} row_t;

static row_t *g_rows;
static int g_n_rows, g_cap_rows;
static int g_power_iters = 1; /* --power-iters: the rows' bytes (mode_bytes) */
static double g_copy_gbps = NAN;
static double g_copy_bytes = 0;

static row_t *new_row(const workload_t *wl, int mode, sn_dtype_t dtype, const char *impl,
                      const char *algo, const char *device) {
  if (g_n_rows == g_cap_rows) {
    g_cap_rows = g_cap_rows ? 2 * g_cap_rows : 64;
    g_rows = realloc(g_rows, (size_t)g_cap_rows * sizeof *g_rows);
    if (!g_rows) die("out of host memory");
  }
  row_t *r = &g_rows[g_n_rows++];
  memset(r, 0, sizeof *r);
  r->wl = wl;
  snprintf(r->workload, sizeof r->workload, "%s", wl->name);
  snprintf(r->mode, sizeof r->mode, "%s", MODE_NAMES[mode]);
  snprintf(r->dtype, sizeof r->dtype, "%s", dtype_name(dtype));
  snprintf(r->impl, sizeof r->impl, "%s", impl);
  snprintf(r->algo, sizeof r->algo, "%s", algo);
  snprintf(r->path, sizeof r->path, "-");
  snprintf(r->device, sizeof r->device, "%s", device);
  r->median_us = r->p10_us = r->p90_us = NAN;
  r->launches = r->kernel_nodes = -1;
  r->speedup_cublas = r->speedup_torch = NAN;
  r->sigma_err = r->wsn_err = NAN;
  snprintf(r->check, sizeof r->check, "skipped");
  r->bytes = mode_bytes(mode, g_power_iters) * (double)sn_dtype_size(dtype) * (double)wl->params;
  return r;
}

static void finish_row(row_t *r, double *samples, int n) {
  qsort(samples, (size_t)n, sizeof *samples, cmp_double);
  r->reps = n;
  r->median_us = quantile(samples, n, 0.5);
  r->p10_us = quantile(samples, n, 0.1);
  r->p90_us = quantile(samples, n, 0.9);
  r->gbps = r->bytes / (r->median_us * 1e-6) / 1e9;
  r->copy_frac = isfinite(g_copy_gbps) ? r->gbps / g_copy_gbps : NAN;
  r->floor_us = isfinite(g_copy_gbps) ? r->bytes / (g_copy_gbps * 1e9) * 1e6 : NAN;
}

/* ---- Torch results (--torch) ---------------------------------------------------------------- */

typedef struct {
  char workload[160], mode[16], dtype[8], impl[24];
  int power_iters, batch, launches;
  double median_us, p10_us, p90_us;
} torch_row_t;

static torch_row_t *g_torch;
static int g_n_torch;
static char g_torch_device[256];

static void load_torch(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) die("--torch %s: cannot open: %s", path, strerror(errno));
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  if (size < 0 || size > (1L << 30)) die("--torch %s: cannot read (not a JSON file of torch_baseline.py?)", path);
  char *text = xmalloc((size_t)size + 1);
  size_t got = fread(text, 1, (size_t)size, f);
  fclose(f);
  text[got] = '\0';
  char err[160];
  snj_value_t *doc = snj_parse(text, err, sizeof err);
  free(text);
  if (!doc) die("--torch %s: not valid JSON: %s", path, err);
  const snj_value_t *rows = snj_get(doc, "rows");
  if (!rows || rows->kind != SNJ_ARRAY) die("--torch %s: no \"rows\" array (not a torch_baseline.py --json file?)", path);
  const snj_value_t *dev = snj_get(doc, "device");
  const char *dn = snj_get_string(dev, "name");
  snprintf(g_torch_device, sizeof g_torch_device, "%s", dn ? dn : "");
  g_torch = xcalloc(rows->count, sizeof *g_torch);
  for (size_t i = 0; i < rows->count; i++) {
    const snj_value_t *r = rows->items[i];
    const char *wl = snj_get_string(r, "workload"), *mode = snj_get_string(r, "mode"),
               *impl = snj_get_string(r, "impl");
    double med = snj_get_number(r, "median_us", NAN);
    if (!wl || !mode || !impl || !isfinite(med)) continue;
    torch_row_t *t = &g_torch[g_n_torch++];
    snprintf(t->workload, sizeof t->workload, "%s", wl);
    snprintf(t->mode, sizeof t->mode, "%s", mode);
    const char *dt = snj_get_string(r, "dtype"); /* schema 1 files: float32 only */
    snprintf(t->dtype, sizeof t->dtype, "%s", dt ? dt : "f32");
    snprintf(t->impl, sizeof t->impl, "%s", impl);
    t->power_iters = (int)snj_get_number(r, "power_iters", 1);
    t->batch = (int)snj_get_number(r, "batch", 0);
    t->launches = (int)snj_get_number(r, "launches", -1);
    t->median_us = med;
    t->p10_us = snj_get_number(r, "p10_us", NAN);
    t->p90_us = snj_get_number(r, "p90_us", NAN);
  }
  snj_free(doc);
}

/* ---- Buffers of a workload (device memory; host memory for the CPU backend) ------------------ */

static int g_cpu_mode; /* the buffers are host memory and the layers CPU layers */

typedef struct {
  const workload_t *wl;
  sn_dtype_t dtype;
  size_t es;         /* bytes per element */
  int64_t *off;      /* element offset of each layer inside one copy */
  int64_t stride;    /* elements per copy (each layer 256-byte aligned) */
  int copies;
  char *dW, *dOut, *dG; /* copies x stride elements each: W, W_sn or dW, G (NULL without backward) */
  void *hW, *hG;     /* one copy, host, in dtype */
} buffers_t;

static void *W_at(const buffers_t *b, int copy, int layer) {
  return b->dW + ((int64_t)copy * b->stride + b->off[layer]) * (int64_t)b->es;
}
static void *Out_at(const buffers_t *b, int copy, int layer) {
  return b->dOut + ((int64_t)copy * b->stride + b->off[layer]) * (int64_t)b->es;
}
static void *G_at(const buffers_t *b, int copy, int layer) {
  return b->dG + ((int64_t)copy * b->stride + b->off[layer]) * (int64_t)b->es;
}
static const void *hW_at(const buffers_t *b, int layer) {
  return (const char *)b->hW + b->off[layer] * (int64_t)b->es;
}
static const void *hG_at(const buffers_t *b, int layer) {
  return (const char *)b->hG + b->off[layer] * (int64_t)b->es;
}

/* Copy between the buffers and the host (cudaMemcpy, or memcpy for the CPU backend). Callers
 * synchronize the benchmark's (non-blocking) stream before reading device results; the device
 * synchronization here makes a host-to-device copy complete before later work on that stream. */
static void mem_copy(void *dst, const void *src, size_t n) {
  if (g_cpu_mode) {
    memcpy(dst, src, n);
  } else {
    CK_CUDA(cudaMemcpy(dst, src, n, cudaMemcpyDefault));
    CK_CUDA(cudaDeviceSynchronize());
  }
}

static void layout_buffers(buffers_t *b, const workload_t *wl, sn_dtype_t dtype) {
  memset(b, 0, sizeof *b);
  b->wl = wl;
  b->dtype = dtype;
  b->es = sn_dtype_size(dtype);
  b->off = xcalloc((size_t)wl->n_layers, sizeof *b->off);
  int64_t pos = 0;
  for (int l = 0; l < wl->n_layers; l++) {
    b->off[l] = pos;
    pos += (numel_of(&wl->layers[l]) + ALIGN_ELEMS - 1) / ALIGN_ELEMS * ALIGN_ELEMS;
  }
  b->stride = pos;
}

/* n values uniform in [-1, 1), drawn in float32 and rounded to the dtype. */
static void fill_random_typed(void *dst, int64_t n, sn_dtype_t t, uint64_t seed) {
  if (t == SN_DTYPE_FLOAT32) {
    fill_random(dst, n, seed);
    return;
  }
  float *tmp = xmalloc((size_t)n * sizeof(float));
  fill_random(tmp, n, seed);
  for (int64_t k = 0; k < n; k++) sn_store(dst, t, k, tmp[k]);
  free(tmp);
}

/* One copy of all layers, each drawn from its own seed (the weights do not depend on the dtype
 * other than by the rounding). */
static void *random_weights(const buffers_t *b, uint64_t seed) {
  void *x = xcalloc((size_t)b->stride, b->es);
  for (int l = 0; l < b->wl->n_layers; l++)
    fill_random_typed((char *)x + b->off[l] * (int64_t)b->es, numel_of(&b->wl->layers[l]), b->dtype,
                      seed * 1000003ull + (uint64_t)l);
  return x;
}

static void fill_host_weights(buffers_t *b, uint64_t seed, int with_g) {
  b->hW = random_weights(b, seed);
  if (with_g) b->hG = random_weights(b, seed + 0x5EED5EEDull);
}

static void free_buffers(buffers_t *b) {
  if (g_cpu_mode) {
    free(b->dW);
    free(b->dOut);
    free(b->dG);
  } else {
    CK_CUDA(cudaFree(b->dW));
    CK_CUDA(cudaFree(b->dOut));
    if (b->dG) CK_CUDA(cudaFree(b->dG));
  }
  free(b->hW);
  free(b->hG);
  free(b->off);
  memset(b, 0, sizeof *b);
}

/* ---- The cuBLAS baseline -------------------------------------------------------------------- */

typedef struct {
  cublasHandle_t handle;
  void *workspace;
  const buffers_t *buf;
  int n_layers;
  int *h, *w;            /* per layer, as int for cuBLAS */
  float **u, **v, **t;   /* device vectors per layer: u (h), v (w), t (h) */
  float **scal;          /* device scalars per layer: [0] norm, [1] 1/max(norm,eps), [2] sigma,
                            [3] 1/sigma (scale mode), [4] <G, W> (backward) */
  float *d_one, *d_zero;
  float *block;          /* one allocation for everything above */
  float eps;
  int power_iters;
  sn_dtype_t dtype;      /* forward modes: float32 only (no cuBLAS gemv for a 2-byte matrix) */
} baseline_t;

/* Whether the baseline implements `mode` for `dtype`. */
static int baseline_has(int mode, sn_dtype_t dtype) {
  return is_backward(mode) || dtype == SN_DTYPE_FLOAT32;
}

static void baseline_init(baseline_t *bl, const buffers_t *buf, int power_iters, float eps,
                          cudaStream_t stream) {
  memset(bl, 0, sizeof *bl);
  const workload_t *wl = buf->wl;
  bl->buf = buf;
  bl->n_layers = wl->n_layers;
  bl->eps = eps;
  bl->power_iters = power_iters;
  bl->dtype = buf->dtype;
  int n = wl->n_layers;
  bl->h = xcalloc((size_t)n, sizeof(int));
  bl->w = xcalloc((size_t)n, sizeof(int));
  bl->u = xcalloc((size_t)n, sizeof(float *));
  bl->v = xcalloc((size_t)n, sizeof(float *));
  bl->t = xcalloc((size_t)n, sizeof(float *));
  bl->scal = xcalloc((size_t)n, sizeof(float *));
  int64_t total = 2 * ALIGN_FLOATS;
  for (int l = 0; l < n; l++) {
    int64_t h = wl->layers[l].shape[0], w = numel_of(&wl->layers[l]) / h;
    if (h > INT_MAX || w > INT_MAX) die("cuBLAS baseline: %s is too large for 32-bit cuBLAS", wl->name);
    bl->h[l] = (int)h;
    bl->w[l] = (int)w;
    total += 3 * ((2 * h + w + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS + ALIGN_FLOATS);
  }
  CK_CUDA(cudaMalloc((void **)&bl->block, (size_t)total * sizeof(float)));
  CK_CUDA(cudaMemset(bl->block, 0, (size_t)total * sizeof(float)));
  float *p = bl->block;
  bl->d_one = p;
  bl->d_zero = p + 1;
  p += ALIGN_FLOATS;
  for (int l = 0; l < n; l++) {
    bl->scal[l] = p;
    p += ALIGN_FLOATS;
    bl->u[l] = p;
    p += (bl->h[l] + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
    bl->t[l] = p;
    p += (bl->h[l] + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
    bl->v[l] = p;
    p += (bl->w[l] + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
  }
  const float one = 1.0f;
  CK_CUDA(cudaMemcpy(bl->d_one, &one, sizeof one, cudaMemcpyHostToDevice));
  CK_BLAS(cublasCreate(&bl->handle));
  CK_BLAS(cublasSetStream(bl->handle, stream));
  CK_BLAS(cublasSetPointerMode(bl->handle, CUBLAS_POINTER_MODE_DEVICE));
  /* A user workspace keeps cuBLAS from allocating inside a graph capture. */
  const size_t ws = 4u << 20;
  CK_CUDA(cudaMalloc(&bl->workspace, ws));
  CK_BLAS(cublasSetWorkspace(bl->handle, bl->workspace, ws));
}

static void baseline_destroy(baseline_t *bl) {
  if (bl->handle) cublasDestroy(bl->handle);
  cudaFree(bl->workspace);
  cudaFree(bl->block);
  free(bl->h);
  free(bl->w);
  free(bl->u);
  free(bl->v);
  free(bl->t);
  free(bl->scal);
  memset(bl, 0, sizeof *bl);
}

static char g_enqueue_err[512];

#define EQ_BLAS(call)                                                                         \
  do {                                                                                        \
    cublasStatus_t s_ = (call);                                                               \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                        \
      snprintf(g_enqueue_err, sizeof g_enqueue_err, "%s: cuBLAS status %d", #call, (int)s_); \
      return 1;                                                                               \
    }                                                                                         \
  } while (0)
#define EQ_CUDA(call)                                                                          \
  do {                                                                                         \
    cudaError_t e_ = (call);                                                                   \
    if (e_ != cudaSuccess) {                                                                   \
      snprintf(g_enqueue_err, sizeof g_enqueue_err, "%s: %s", #call, cudaGetErrorString(e_)); \
      return 1;                                                                                \
    }                                                                                          \
  } while (0)

/* x <- x / max(||x||, eps), all on the device (no host synchronization). */
static int bl_normalize(baseline_t *bl, int l, float *x, int n, cudaStream_t s) {
  EQ_BLAS(cublasSnrm2(bl->handle, n, x, 1, &bl->scal[l][0]));
  EQ_CUDA(snb_launch_inv_clamp(&bl->scal[l][0], &bl->scal[l][1], bl->eps, s));
  EQ_BLAS(cublasSscal(bl->handle, n, &bl->scal[l][1], x, 1));
  return 0;
}

/* One call of the baseline: every layer of the workload, copy `copy` of the weights.
 * Row-major h x w W is a column-major w x h matrix A (lda = w): M v = A^T v, M^T u = A u. */
static int baseline_enqueue(void *ctx, int copy, int mode, cudaStream_t s) {
  baseline_t *bl = ctx;
  for (int l = 0; l < bl->n_layers; l++) {
    const void *W = W_at(bl->buf, copy, l);
    void *Out = Out_at(bl->buf, copy, l);
    const int h = bl->h[l], w = bl->w[l];
    const size_t n = (size_t)h * (size_t)w;
    if (is_backward(mode)) {
      const void *G = G_at(bl->buf, copy, l);
      if (bl->dtype == SN_DTYPE_FLOAT32 && n <= (size_t)INT_MAX)
        EQ_BLAS(cublasSdot(bl->handle, (int)n, G, 1, W, 1, &bl->scal[l][4])); /* <G, W> */
      else
        EQ_CUDA(snb_launch_dot(G, W, (int)bl->dtype, n, &bl->scal[l][4], s));
      EQ_CUDA(snb_launch_sn_backward(G, Out, (int)bl->dtype, h, w, bl->u[l], bl->v[l],
                                     &bl->scal[l][2], &bl->scal[l][4], mode == M_BACKWARD_ACC, s));
      continue;
    }
    if (mode != M_EVAL) {
      for (int it = 0; it < bl->power_iters; it++) {
        EQ_BLAS(cublasSgemv(bl->handle, CUBLAS_OP_T, w, h, bl->d_one, W, w, bl->v[l], 1,
                            bl->d_zero, bl->u[l], 1)); /* u = M v */
        if (bl_normalize(bl, l, bl->u[l], h, s)) return 1;
        EQ_BLAS(cublasSgemv(bl->handle, CUBLAS_OP_N, w, h, bl->d_one, W, w, bl->u[l], 1,
                            bl->d_zero, bl->v[l], 1)); /* v = M^T u */
        if (bl_normalize(bl, l, bl->v[l], w, s)) return 1;
      }
    }
    EQ_BLAS(cublasSgemv(bl->handle, CUBLAS_OP_T, w, h, bl->d_one, W, w, bl->v[l], 1, bl->d_zero,
                        bl->t[l], 1)); /* t = M v */
    EQ_BLAS(cublasSdot(bl->handle, h, bl->u[l], 1, bl->t[l], 1, &bl->scal[l][2])); /* σ = u·t */
    if (mode == M_SCALE) EQ_CUDA(snb_launch_inv_clamp(&bl->scal[l][2], &bl->scal[l][3], 0.0f, s));
    else EQ_CUDA(snb_launch_div(W, Out, &bl->scal[l][2], n, s));
  }
  return 0;
}

/* ---- specnorm runner ------------------------------------------------------------------------ */

typedef struct {
  const buffers_t *buf;
  sn_layer_t **layers;
  int n_layers;
} sn_runner_t;

/* One call of specnorm in `mode`: every layer of the workload, copy `copy` of the buffers. */
static int specnorm_enqueue(void *ctx, int copy, int mode, cudaStream_t s) {
  sn_runner_t *r = ctx;
  for (int l = 0; l < r->n_layers; l++) {
    const void *W = W_at(r->buf, copy, l);
    sn_status_t st;
    const char *what;
    switch (mode) {
      case M_TRAIN:
      case M_EVAL:
        what = "sn_forward";
        st = sn_forward(r->layers[l], W, Out_at(r->buf, copy, l), mode == M_TRAIN, (sn_stream_t)s);
        break;
      case M_SCALE:
        what = "sn_forward_scale_only";
        st = sn_forward_scale_only(r->layers[l], W, 1, (sn_stream_t)s);
        break;
      default:
        what = "sn_backward";
        st = sn_backward(r->layers[l], W, G_at(r->buf, copy, l), Out_at(r->buf, copy, l),
                         backward_flags(mode), NULL, (sn_stream_t)s);
        break;
    }
    if (st != SN_SUCCESS) {
      snprintf(g_enqueue_err, sizeof g_enqueue_err, "%s (layer %d): %s: %s", what, l,
               sn_status_name(st), sn_last_error_message());
      return 1;
    }
  }
  return 0;
}

/* ---- specnorm grouped runner: every layer of the workload in one sn_group_forward or
 * sn_group_backward ------------------------------------------------------------------------------ */

typedef struct {
  sn_group_t **fwd;   /* per copy: W -> W_sn; its backward: G -> dW (dW in the W_sn buffers) */
  sn_group_t **scale; /* per copy: W only (scale-only forward) */
  int copies;
} sn_group_runner_t;

static int group_enqueue(void *ctx, int copy, int mode, cudaStream_t s) {
  sn_group_runner_t *r = ctx;
  sn_group_t *g = mode == M_SCALE ? r->scale[copy % r->copies] : r->fwd[copy % r->copies];
  const char *what = is_backward(mode) ? "sn_group_backward" : "sn_group_forward";
  sn_status_t st = is_backward(mode)
                       ? sn_group_backward(g, backward_flags(mode), (sn_stream_t)s)
                       : sn_group_forward(g, mode != M_EVAL, (sn_stream_t)s);
  if (st != SN_SUCCESS) {
    snprintf(g_enqueue_err, sizeof g_enqueue_err, "%s: %s: %s", what, sn_status_name(st),
             sn_last_error_message());
    return 1;
  }
  return 0;
}

/* ---- Which kernels specnorm ran (sn_layer_get_paths, sn_group_get_paths) ---------------------- */

/* The path of a call in `mode` among `p`. */
static sn_path_t path_of_mode(const sn_paths_t *p, int mode) {
  switch (mode) {
    case M_TRAIN: return p->train;
    case M_EVAL: return p->eval;
    case M_SCALE: return p->scale_only;
    default: return p->backward;
  }
}

/* Append path `name` to the '+'-joined list in `buf` unless it is there already ("…" ends a list
 * cut short by `size`). */
static void add_path_name(char *buf, size_t size, const char *name) {
  const size_t n = strlen(name);
  for (const char *q = buf; (q = strstr(q, name)) != NULL; q += n)
    if ((q == buf || q[-1] == '+') && (q[n] == '\0' || q[n] == '+')) return;
  const size_t used = strlen(buf);
  if (used >= 3 && strcmp(buf + used - 3, "...") == 0) return; /* cut short already */
  if (used + 1 + n + 1 > size) {
    if (used + 4 <= size) strcat(buf, "...");
    return;
  }
  snprintf(buf + used, size - used, "%s%s", used ? "+" : "", name);
}

/* What was dropped that concerns `mode` (sn_dropped_t): the on-chip launch, the cooperative one of
 * the forward or of the (grouped) backward, and a failed query at creation (any mode). */
static unsigned dropped_in_mode(int mode) {
  return SN_DROPPED_ON_CHIP | SN_DROPPED_SETUP |
         (is_backward(mode) ? SN_DROPPED_BACKWARD_COOP : SN_DROPPED_COOP);
}

/* Fill the path of rows [first, last) (their modes) from the records of `count` layers, or of
 * `count` groups (the copies' groups of one kind) when `groups` is not NULL: the distinct paths
 * of those that ran the mode, joined by '+' ("none" if none did), then " (dropped 0x…)" with the
 * launches of that mode the device refused. */
static void fill_paths(int first, int last, sn_layer_t *const *layers, sn_group_t *const *groups, int count) {
  for (int i = first; i < last; i++) {
    row_t *r = &g_rows[i];
    int mode = 0;
    while (mode < N_MODES && strcmp(MODE_NAMES[mode], r->mode)) mode++;
    char names[sizeof r->path - 24] = ""; /* room left for the suffix */
    unsigned dropped = 0;
    for (int l = 0; l < count; l++) {
      sn_paths_t p;
      const sn_status_t st = groups ? sn_group_get_paths(groups[l], &p) : sn_layer_get_paths(layers[l], &p);
      if (st != SN_SUCCESS) die("sn_*_get_paths: %s", sn_last_error_message());
      const sn_path_t path = path_of_mode(&p, mode);
      if (path != SN_PATH_NONE) add_path_name(names, sizeof names, sn_path_name(path));
      dropped |= p.dropped & dropped_in_mode(mode);
    }
    if (!names[0]) snprintf(names, sizeof names, "%s", sn_path_name(SN_PATH_NONE));
    if (dropped)
      snprintf(r->path, sizeof r->path, "%s (dropped 0x%x)", names, dropped);
    else
      snprintf(r->path, sizeof r->path, "%s", names);
  }
}

/* After a grouped call's rows [first, g_n_rows): their paths, from the forward groups `fwd` (the
 * scale-only rows from the scale-only groups `scale`), `count` of each, and the plan behind them
 * in the log (sn_group_describe). */
static void finish_group_rows(int first, sn_group_t *const *fwd, sn_group_t *const *scale, int count) {
  for (int i = first; i < g_n_rows; i++)
    fill_paths(i, i + 1, NULL, strcmp(g_rows[i].mode, "scale") ? fwd : scale, count);
  char text[1024];
  CK_SN(sn_group_describe(fwd[0], text, sizeof text, NULL));
  fprintf(stderr, "    group: %s\n", text);
}

/* ---- Graphs --------------------------------------------------------------------------------- */

typedef int (*enqueue_fn)(void *ctx, int copy, int mode, cudaStream_t s);

typedef struct {
  cudaGraphExec_t *execs;
  int n;
} graph_set_t;

static int graph_enqueue(void *ctx, int copy, int mode, cudaStream_t s) {
  (void)mode;
  graph_set_t *g = ctx;
  EQ_CUDA(cudaGraphLaunch(g->execs[copy % g->n], s));
  return 0;
}

/* Capture one call of `fn` (copy `copy`); on success returns the graph, and its node counts. */
static int capture_call(enqueue_fn fn, void *ctx, int copy, int mode, cudaStream_t s,
                        cudaGraph_t *graph_out, int *nodes, int *kernels, char *why, size_t why_size) {
  cudaGraph_t graph = NULL;
  cudaError_t e = cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
  if (e != cudaSuccess) {
    snprintf(why, why_size, "cudaStreamBeginCapture: %s", cudaGetErrorString(e));
    return 1;
  }
  int rc = fn(ctx, copy, mode, s);
  e = cudaStreamEndCapture(s, &graph);
  if (rc) {
    snprintf(why, why_size, "%.250s", g_enqueue_err);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    return 1;
  }
  if (e != cudaSuccess || !graph) {
    snprintf(why, why_size, "cudaStreamEndCapture: %s", cudaGetErrorString(e));
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    return 1;
  }
  size_t n = 0;
  CK_CUDA(cudaGraphGetNodes(graph, NULL, &n));
  cudaGraphNode_t *list = xcalloc(n, sizeof *list);
  CK_CUDA(cudaGraphGetNodes(graph, list, &n));
  int k = 0;
  for (size_t i = 0; i < n; i++) {
    enum cudaGraphNodeType t;
    CK_CUDA(cudaGraphNodeGetType(list[i], &t));
    k += t == cudaGraphNodeTypeKernel;
  }
  free(list);
  *nodes = (int)n;
  *kernels = k;
  *graph_out = graph;
  return 0;
}

/* A graph per rotation copy. Returns 0 and fills `set`, or 1 with `why`. */
static int build_graph_set(enqueue_fn fn, void *ctx, int copies, int mode, cudaStream_t s,
                           graph_set_t *set, char *why, size_t why_size) {
  set->execs = xcalloc((size_t)copies, sizeof *set->execs);
  set->n = 0;
  for (int c = 0; c < copies; c++) {
    cudaGraph_t g = NULL;
    int nodes = 0, kernels = 0;
    if (capture_call(fn, ctx, c, mode, s, &g, &nodes, &kernels, why, why_size)) return 1;
    cudaError_t e = cudaGraphInstantiate(&set->execs[c], g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) {
      snprintf(why, why_size, "cudaGraphInstantiate: %s", cudaGetErrorString(e));
      return 1;
    }
    set->n++;
    /* Uploaded now, not at its first launch: time_gpu's untimed calls reach only the first 30
     * of the copies (up to 1024 of them for small layers). */
    e = cudaGraphUpload(set->execs[c], s);
    if (e != cudaSuccess) {
      snprintf(why, why_size, "cudaGraphUpload: %s", cudaGetErrorString(e));
      return 1;
    }
  }
  return 0;
}

static void destroy_graph_set(graph_set_t *set) {
  for (int i = 0; i < set->n; i++) cudaGraphExecDestroy(set->execs[i]);
  free(set->execs);
  memset(set, 0, sizeof *set);
}

/* ---- GPU timing ----------------------------------------------------------------------------- */

static void run_or_die(enqueue_fn fn, void *ctx, int copy, int mode, cudaStream_t s) {
  if (fn(ctx, copy, mode, s)) die("%s", g_enqueue_err);
}

/* Fills r's timing from `reps` samples of `batch` calls each, rotating over `copies`. Without
 * --reps, a row whose 200 samples would take more than ROW_BUDGET_US gets fewer (>= REPS_MIN_AUTO). */
static void time_gpu(row_t *r, enqueue_fn fn, void *ctx, int copies, int mode, cudaStream_t s,
                     const options_t *o) {
  int reps = o->reps > 0 ? o->reps : 200;
  int warmup = o->warmup >= 0 ? o->warmup : 20;
  int k = 0;
  for (int i = 0; i < warmup; i++) run_or_die(fn, ctx, k++ % copies, mode, s);
  int batch = o->batch;
  cudaEvent_t e0, e1;
  CK_CUDA(cudaEventCreate(&e0));
  CK_CUDA(cudaEventCreate(&e1));
  const int probe = 10;
  CK_CUDA(cudaEventRecord(e0, s));
  for (int i = 0; i < probe; i++) run_or_die(fn, ctx, k++ % copies, mode, s);
  CK_CUDA(cudaEventRecord(e1, s));
  CK_CUDA(cudaEventSynchronize(e1));
  float ms = 0;
  CK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
  const double est = (double)ms * 1000.0 / probe;
  if (batch <= 0) {
    batch = 1;
    if (est < BATCH_SMALL_US) {
      batch = (int)ceil(BATCH_TARGET_US / (est > 0.1 ? est : 0.1));
      if (batch > BATCH_MAX) batch = BATCH_MAX;
    }
  }
  if (!o->reps_given && est > 0 && (double)reps * batch * est > ROW_BUDGET_US) {
    reps = (int)(ROW_BUDGET_US / ((double)batch * est));
    if (reps < REPS_MIN_AUTO) reps = REPS_MIN_AUTO;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaEvent_t *ev = xcalloc((size_t)reps + 1, sizeof *ev);
  for (int i = 0; i <= reps; i++) CK_CUDA(cudaEventCreate(&ev[i]));
  CK_CUDA(cudaEventRecord(ev[0], s));
  for (int i = 0; i < reps; i++) {
    for (int b = 0; b < batch; b++) run_or_die(fn, ctx, k++ % copies, mode, s);
    CK_CUDA(cudaEventRecord(ev[i + 1], s));
  }
  CK_CUDA(cudaEventSynchronize(ev[reps]));
  double *samples = xcalloc((size_t)reps, sizeof *samples);
  for (int i = 0; i < reps; i++) {
    ms = 0;
    CK_CUDA(cudaEventElapsedTime(&ms, ev[i], ev[i + 1]));
    samples[i] = (double)ms * 1000.0 / batch;
  }
  for (int i = 0; i <= reps; i++) cudaEventDestroy(ev[i]);
  free(ev);
  r->batch = batch;
  r->copies = copies;
  finish_row(r, samples, reps);
  free(samples);
}

static void measure_copy_bandwidth_gpu(cudaStream_t s) {
  size_t free_b = 0, total_b = 0;
  CK_CUDA(cudaMemGetInfo(&free_b, &total_b));
  size_t bytes = (size_t)1 << 30;
  while (bytes > ((size_t)16 << 20) && 2 * bytes > free_b / 2) bytes /= 2;
  void *a = NULL, *b = NULL;
  CK_CUDA(cudaMalloc(&a, bytes));
  CK_CUDA(cudaMalloc(&b, bytes));
  CK_CUDA(cudaMemsetAsync(a, 1, bytes, s));
  for (int i = 0; i < 3; i++) CK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s));
  const int reps = 20;
  cudaEvent_t ev[21];
  for (int i = 0; i <= reps; i++) CK_CUDA(cudaEventCreate(&ev[i]));
  CK_CUDA(cudaEventRecord(ev[0], s));
  for (int i = 0; i < reps; i++) {
    CK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s));
    CK_CUDA(cudaEventRecord(ev[i + 1], s));
  }
  CK_CUDA(cudaEventSynchronize(ev[reps]));
  double t[20];
  for (int i = 0; i < reps; i++) {
    float ms = 0;
    CK_CUDA(cudaEventElapsedTime(&ms, ev[i], ev[i + 1]));
    t[i] = (double)ms * 1e-3;
  }
  for (int i = 0; i <= reps; i++) cudaEventDestroy(ev[i]);
  qsort(t, reps, sizeof t[0], cmp_double);
  g_copy_bytes = (double)bytes;
  g_copy_gbps = 2.0 * (double)bytes / quantile(t, reps, 0.5) / 1e9;
  CK_CUDA(cudaFree(a));
  CK_CUDA(cudaFree(b));
}

/* ---- Check against the CPU reference -------------------------------------------------------- */

static double max_abs_t(const void *x, sn_dtype_t t, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)sn_load(x, t, i)));
  return m;
}

static double rel_err_scalar(double a, double ref) {
  if (!isfinite(a) || !isfinite(ref)) return INFINITY;
  return ref != 0 ? fabs(a - ref) / fabs(ref) : fabs(a);
}

typedef enum { CMP_WSN, CMP_DW } cmp_kind_t;

typedef struct {
  double err;      /* max|got - ref| / max|ref| (absolute when ref is all zero; inf on NaN) */
  int64_t worst;   /* element of the largest failure (or of the largest error) */
  double got, ref; /* its values */
  int pass;
  char rule[64];
} cmp_result_t;

/* W_sn: float32 within CHECK_TOL x max|ref|; bf16/f16 every element within 1 ulp of the type.
 * dW: within CHECK_TOL (f32), CHECK_TOL_DW_BF16, CHECK_TOL_DW_F16 x max|ref|. */
static cmp_result_t compare_out(cmp_kind_t kind, const void *got, const void *ref, sn_dtype_t t,
                                int64_t n) {
  cmp_result_t c;
  memset(&c, 0, sizeof c);
  const double m = max_abs_t(ref, t, n);
  const int ulp_rule = kind == CMP_WSN && t != SN_DTYPE_FLOAT32;
  const double tol = kind == CMP_DW && t == SN_DTYPE_BFLOAT16 ? CHECK_TOL_DW_BF16
                     : kind == CMP_DW && t == SN_DTYPE_FLOAT16 ? CHECK_TOL_DW_F16
                                                               : CHECK_TOL;
  if (ulp_rule) snprintf(c.rule, sizeof c.rule, "1 ulp of %s per element", dtype_name(t));
  else snprintf(c.rule, sizeof c.rule, "%.0e x max|ref|", tol);
  double d = 0, worst_excess = 0;
  int ulp_ok = 1, nan = 0;
  for (int64_t i = 0; i < n; i++) {
    const double g = sn_load(got, t, i), r = sn_load(ref, t, i);
    const double e = fabs(g - r);
    if (!(e == e) || isinf(e)) {
      nan = 1;
      c.worst = i, c.got = g, c.ref = r;
      break;
    }
    if (e > d) {
      d = e;
      if (ulp_ok) c.worst = i, c.got = g, c.ref = r;
    }
    if (ulp_rule) {
      const double u = ulp_of(fmax(fabs(g), fabs(r)), t);
      if (e > u && e / u > worst_excess) {
        worst_excess = e / u;
        ulp_ok = 0;
        c.worst = i, c.got = g, c.ref = r;
      }
    }
  }
  c.err = nan ? INFINITY : m > 0 ? d / m : d;
  c.pass = !nan && (ulp_rule ? ulp_ok : c.err <= tol);
  return c;
}

static void check_fail(const workload_t *wl, int l, sn_dtype_t t, const char *impl, int mode,
                       const char *what, double got, double ref, double err, const char *rule) {
  char shp[128];
  shape_str(&wl->layers[l], shp, sizeof shp);
  fflush(stdout);
  fprintf(stderr,
          "\nsn_bench: CHECK FAILED: %s, layer %d '%s' (shape %s, dim %d, %s), %s, %s:\n"
          "  %s: got %.9g, CPU reference %.9g, relative error %.3g (rule: %s)\n"
          "  (Array errors are max|got - ref| / max|ref|.) Benchmark stopped.\n",
          wl->name, l, wl->layers[l].name, shp, wl->layers[l].dim, dtype_name(t), impl,
          MODE_NAMES[mode], what, got, ref, err, rule);
  exit(1);
}

static void expect_scalar(const workload_t *wl, int l, sn_dtype_t t, const char *impl, int mode,
                          const char *what, double got, double ref, double *err_max) {
  const double e = rel_err_scalar(got, ref);
  if (!(e <= CHECK_TOL)) check_fail(wl, l, t, impl, mode, what, got, ref, e, "1e-05 relative");
  *err_max = fmax(*err_max, e);
}

static void expect_array(const workload_t *wl, int l, sn_dtype_t t, const char *impl, int mode,
                         cmp_kind_t kind, const void *got, const void *ref, int64_t n,
                         double *err_max) {
  cmp_result_t c = compare_out(kind, got, ref, t, n);
  if (!c.pass) {
    char what[96];
    snprintf(what, sizeof what, "%s[%lld]", kind == CMP_WSN ? "W_sn" : "dW", (long long)c.worst);
    check_fail(wl, l, t, impl, mode, what, c.got, c.ref, c.err, c.rule);
  }
  *err_max = fmax(*err_max, c.err);
}

typedef struct {
  /* specnorm vs CPU, per mode: sigma (train, eval, scale) and W_sn / scale / dW */
  double sigma_err[N_MODES], out_err[N_MODES];
  double bl_sigma_err[N_MODES], bl_out_err[N_MODES]; /* the cuBLAS baseline vs CPU */
  double formula_err[N_MODES]; /* CPU backend only: backward vs the baseline's formula on host */
} check_result_t;

static sn_layer_desc_t make_desc(const snb_preset_layer_t *L, const options_t *o, uint64_t seed,
                                 sn_backend_t backend, sn_algo_t algo, int warmup_iters,
                                 sn_dtype_t dtype) {
  sn_layer_desc_t d;
  CK_SN(sn_layer_desc_init(&d, L->ndim, L->shape));
  d.dim = L->dim;
  d.n_power_iterations = o->power_iters;
  d.order = o->order;
  d.seed = seed;
  d.backend = backend;
  d.device = o->device;
  d.algo = algo;
  d.dtype = dtype;
  if (warmup_iters < 0) warmup_iters = o->layer_warmup;
  if (warmup_iters >= 0) d.warmup_iterations = warmup_iters;
  return d;
}

/* The cuBLAS baseline kernel's backward on the host (float arithmetic as on the device, <G, W>
 * in double): dW (+)= (G - (<G,W>/σ) u vᵀ) / σ for a row-major h x w weight. Validates the
 * baseline's formula and layout against the CPU backend where no GPU is present. */
static void host_backward_formula(const void *W, const void *G, void *dW, sn_dtype_t t, int64_t h,
                                  int64_t w, const float *u, const float *v, float sigma, int acc) {
  double gw = 0;
  for (int64_t k = 0; k < h * w; k++) gw += (double)sn_load(G, t, k) * sn_load(W, t, k);
  const float c = (float)gw / sigma;
  for (int64_t i = 0; i < h; i++)
    for (int64_t j = 0; j < w; j++) {
      const int64_t k = i * w + j;
      float x = (sn_load(G, t, k) - c * u[i] * v[j]) / sigma;
      if (acc) x += sn_load(dW, t, k);
      sn_store(dW, t, k, x);
    }
}

/* Check layer l of the workload: specnorm's layer `gl` (fresh, not yet forwarded; a CUDA layer,
 * or a second CPU layer for the CPU backend) and, when bl != NULL, the cuBLAS baseline (whose u, v
 * start from the CPU layer's warmed-up state), against a CPU layer with the same desc, on copy 0
 * of the buffers. The sequence, identical for all: training forward, eval forward, scale-only
 * training forward, backward (flags 0), backward with SN_BACKWARD_ACCUMULATE onto a random dW. */
static void check_layer(const workload_t *wl, int l, const buffers_t *buf, sn_layer_t *gl,
                        const sn_layer_desc_t *desc, baseline_t *bl, cudaStream_t s,
                        check_result_t *res) {
  const int64_t n = numel_of(&wl->layers[l]);
  const sn_dtype_t t = buf->dtype;
  const size_t bytes = (size_t)n * buf->es;
  sn_layer_desc_t cd = *desc;
  cd.backend = SN_BACKEND_CPU;
  sn_layer_t *cl = NULL;
  CK_SN(sn_layer_create(&cl, &cd));
  int64_t h = 0, w = 0;
  CK_SN(sn_layer_get_dims(cl, &h, &w));
  const void *hW = hW_at(buf, l), *hG = hG_at(buf, l);
  void *ref = xmalloc(bytes), *got = xmalloc(bytes), *d0 = NULL;
  float *u = xmalloc((size_t)h * sizeof(float)), *v = xmalloc((size_t)w * sizeof(float));
  void *W0 = W_at(buf, 0, l), *Out0 = Out_at(buf, 0, l);
  const sn_stream_t ss = (sn_stream_t)s;
  const char *impl = g_cpu_mode ? "specnorm CPU layer" : "specnorm";
  baseline_t one;
  buffers_t b1;
  if (bl) {
    /* Run the CPU layer's warm-up first and start the baseline from that state. */
    CK_SN(sn_layer_warmup(cl, hW, NULL));
    CK_SN(sn_layer_get_state(cl, u, v, NULL, NULL, NULL));
    CK_CUDA(cudaMemcpy(bl->u[l], u, (size_t)h * sizeof(float), cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(bl->v[l], v, (size_t)w * sizeof(float), cudaMemcpyHostToDevice));
    CK_CUDA(cudaDeviceSynchronize()); /* the copies complete before work on the stream */
    /* One layer of the baseline: a temporary single-layer view of it. */
    one = *bl;
    one.n_layers = 1;
    one.h += l, one.w += l, one.u += l, one.v += l, one.t += l, one.scal += l;
    b1 = *buf;
    b1.off = buf->off + l;
    one.buf = &b1;
  }
  for (int m = 0; m < N_MODES; m++) {
    float s_cpu = 0, s_gpu = 0, sc_cpu = 0, sc_gpu = 0;
    const int acc = m == M_BACKWARD_ACC;
    if (acc) {
      /* The dW that both accumulate onto: random, in the dtype. */
      d0 = xmalloc(bytes);
      fill_random_typed(d0, n, t, 0xACC0ull + (uint64_t)l);
      memcpy(ref, d0, bytes);
      mem_copy(Out0, ref, bytes);
    }
    switch (m) {
      case M_TRAIN:
      case M_EVAL:
        CK_SN(sn_forward(cl, hW, ref, m == M_TRAIN, NULL));
        CK_SN(sn_forward(gl, W0, Out0, m == M_TRAIN, ss));
        break;
      case M_SCALE:
        CK_SN(sn_forward_scale_only(cl, hW, 1, NULL));
        CK_SN(sn_forward_scale_only(gl, W0, 1, ss));
        break;
      default:
        CK_SN(sn_backward(cl, hW, hG, ref, backward_flags(m), NULL, NULL));
        CK_SN(sn_backward(gl, W0, G_at(buf, 0, l), Out0, backward_flags(m), NULL, ss));
        break;
    }
    if (!is_backward(m)) {
      CK_SN(sn_layer_get_sigma(cl, &s_cpu, NULL, NULL));
      CK_SN(sn_layer_get_sigma(gl, &s_gpu, NULL, ss));
      expect_scalar(wl, l, t, impl, m, "sigma", s_gpu, s_cpu, &res->sigma_err[m]);
    }
    if (m == M_SCALE) {
      CK_SN(sn_layer_get_scale(cl, &sc_cpu, NULL));
      CK_SN(sn_layer_get_scale(gl, &sc_gpu, ss));
      expect_scalar(wl, l, t, impl, m, "scale", sc_gpu, sc_cpu, &res->out_err[m]);
    } else {
      if (!g_cpu_mode) CK_CUDA(cudaStreamSynchronize(s));
      mem_copy(got, Out0, bytes);
      expect_array(wl, l, t, impl, m, is_backward(m) ? CMP_DW : CMP_WSN, got, ref, n, &res->out_err[m]);
    }
    if (g_cpu_mode && is_backward(m) && wl->layers[l].dim == 0 && wl->layers[l].ndim >= 2) {
      /* The baseline's formula on the host, from the CPU layer's state. */
      float sg = 0;
      CK_SN(sn_layer_get_state(cl, u, v, &sg, NULL, NULL));
      if (acc) memcpy(got, d0, bytes);
      host_backward_formula(hW, hG, got, t, h, w, u, v, sg, acc);
      expect_array(wl, l, t, "backward formula of the cuBLAS baseline (host)", m, CMP_DW, got, ref,
                   n, &res->formula_err[m]);
    }
    if (bl && baseline_has(m, t)) {
      if (is_backward(m)) {
        /* The state of the last forward, as specnorm's backward uses it: the CPU layer's. */
        float sg = 0;
        CK_SN(sn_layer_get_state(cl, u, v, &sg, NULL, NULL));
        CK_CUDA(cudaMemcpy(bl->u[l], u, (size_t)h * sizeof(float), cudaMemcpyHostToDevice));
        CK_CUDA(cudaMemcpy(bl->v[l], v, (size_t)w * sizeof(float), cudaMemcpyHostToDevice));
        CK_CUDA(cudaMemcpy(&bl->scal[l][2], &sg, sizeof sg, cudaMemcpyHostToDevice));
        CK_CUDA(cudaDeviceSynchronize());
        if (acc) mem_copy(Out0, d0, bytes);
      }
      if (baseline_enqueue(&one, 0, m, s)) die("cuBLAS baseline: %s", g_enqueue_err);
      float sb[4] = {0, 0, 0, 0};
      CK_CUDA(cudaMemcpyAsync(sb, bl->scal[l], sizeof sb, cudaMemcpyDeviceToHost, s));
      CK_CUDA(cudaStreamSynchronize(s));
      if (!is_backward(m)) expect_scalar(wl, l, t, "cuBLAS baseline", m, "sigma", sb[2], s_cpu, &res->bl_sigma_err[m]);
      if (m == M_SCALE) {
        expect_scalar(wl, l, t, "cuBLAS baseline", m, "1/sigma", sb[3], sc_cpu, &res->bl_out_err[m]);
      } else {
        mem_copy(got, Out0, bytes);
        expect_array(wl, l, t, "cuBLAS baseline", m, is_backward(m) ? CMP_DW : CMP_WSN, got, ref, n,
                     &res->bl_out_err[m]);
      }
    }
  }
  free(d0);
  free(u);
  free(v);
  free(ref);
  free(got);
  sn_layer_destroy(cl);
}

/* ---- GPU run of one workload ---------------------------------------------------------------- */

typedef struct {
  struct cudaDeviceProp prop;
  int driver, runtime;
  cudaStream_t stream;
} gpu_t;

static void set_check(row_t *r, int checked, int mode, double es, double ew) {
  if (!checked) return;
  snprintf(r->check, sizeof r->check, "pass");
  r->sigma_err = is_backward(mode) ? NAN : es;
  r->wsn_err = ew;
}

static int any_backward(const options_t *o) { return o->modes[M_BACKWARD] || o->modes[M_BACKWARD_ACC]; }

/* Time `fn` in every selected mode: an eager row and (when capturable and not --no-graph) a graph
 * row per mode. The backward modes first run one untimed training forward of copy 0. */
static void time_modes(const workload_t *wl, sn_dtype_t dt, const options_t *o, cudaStream_t s,
                       enqueue_fn fn, void *ctx, const char *impl, const char *impl_graph,
                       const char *algo, int copies, const char *note, int checked,
                       const double *sig_err, const double *out_err, int (*has)(int, sn_dtype_t)) {
  int forwarded = 0;
  for (int m = 0; m < N_MODES; m++) {
    if (!o->modes[m] || (has && !has(m, dt))) continue;
    if (is_backward(m) && !forwarded) {
      /* (The bf16/f16 baseline has no forward: it keeps the u, v, σ the check or init gave it.) */
      if (!has || has(M_TRAIN, dt)) run_or_die(fn, ctx, 0, M_TRAIN, s);
      forwarded = 1;
    }
    row_t *r = new_row(wl, m, dt, impl, algo, "cuda");
    snprintf(r->note, sizeof r->note, "%s", note);
    set_check(r, checked, m, sig_err[m], out_err[m]);
    /* Launches per call: capture one call. */
    cudaGraph_t cg = NULL;
    char why[256] = "";
    int nodes = -1, kernels = -1;
    int capturable = !capture_call(fn, ctx, 0, m, s, &cg, &nodes, &kernels, why, sizeof why);
    if (capturable) {
      cudaGraphDestroy(cg);
      r->launches = nodes;
      r->kernel_nodes = kernels;
    } else {
      r->launches = r->kernel_nodes = -2;
      snprintf(r->note, sizeof r->note, "not capturable: %.180s", why);
      fprintf(stderr, "    warning: %s %s %s %s: one call could not be captured in a CUDA graph: %s\n",
              wl->name, MODE_NAMES[m], dtype_name(dt), impl, why);
    }
    time_gpu(r, fn, ctx, copies, m, s, o);
    if (o->graph && capturable) {
      graph_set_t gs;
      if (build_graph_set(fn, ctx, copies, m, s, &gs, why, sizeof why)) {
        fprintf(stderr, "    warning: %s %s %s %s: graph build failed: %s\n", wl->name,
                MODE_NAMES[m], dtype_name(dt), impl, why);
      } else {
        row_t *rg = new_row(wl, m, dt, impl_graph, algo, "cuda");
        snprintf(rg->note, sizeof rg->note, "%s", note);
        set_check(rg, checked, m, sig_err[m], out_err[m]);
        rg->launches = nodes;
        rg->kernel_nodes = kernels;
        time_gpu(rg, graph_enqueue, &gs, copies, m, s, o);
      }
      destroy_graph_set(&gs);
    }
  }
}

/* ---- The memory-floor probe (bench/sn_bench_kernels.h) --------------------------------------- */

typedef struct {
  const buffers_t *buf;
  float *part;       /* snb_probe_max_blocks() per-block sums */
  unsigned *counter; /* the reduction's arrivals (0 between calls) */
  float *scalar;     /* the reduction's result */
  size_t n;          /* elements of the (single) layer */
} probe_t;

/* One probe call in `mode` on copy `copy`: a reduction over W (backward: over G and W), then,
 * except in scale mode, the map of W (backward: G) into W_sn (dW). */
static int probe_enqueue(void *ctx, int copy, int mode, cudaStream_t s) {
  const probe_t *p = ctx;
  const int dt = (int)p->buf->dtype;
  const void *W = W_at(p->buf, copy, 0);
  const void *in = is_backward(mode) ? G_at(p->buf, copy, 0) : W;
  EQ_CUDA(snb_probe_reduce(in, is_backward(mode) ? W : NULL, dt, p->n, p->part, p->counter,
                           p->scalar, s));
  if (mode != M_SCALE)
    EQ_CUDA(snb_probe_map(in, Out_at(p->buf, copy, 0), dt, p->n, p->scalar,
                          mode == M_BACKWARD_ACC, s));
  return 0;
}

/* The host's sums of copy 0 that the probe's reductions must give: sum W² (forward modes) and
 * sum G W (backward modes), with the scale their rounding errors are measured against. */
typedef struct {
  double ww, gw, gg;
} probe_sums_t;

static probe_sums_t probe_host_sums(const buffers_t *b, size_t n) {
  probe_sums_t r = {0, 0, 0};
  const void *hW = hW_at(b, 0), *hG = hG_at(b, 0);
  for (size_t k = 0; k < n; k++) {
    const double w = sn_load(hW, b->dtype, (int64_t)k), g = sn_load(hG, b->dtype, (int64_t)k);
    r.ww += w * w, r.gw += g * w, r.gg += g * g;
  }
  return r;
}

/* Elements of the output compared with the host: every one up to twice this many, else about
 * this many at an odd stride, and the last. */
#define PROBE_CHECK_ELEMS (1 << 20)

/* The k-th sampled element index of an array of n elements taken `step` apart, and the last:
 * k·step while that is below n, then n - 1. */
static size_t sample_at(size_t k, size_t step, size_t n) { return k * step < n ? k * step : n - 1; }

/* The number of those samples. */
static size_t sample_count(size_t step, size_t n) {
  return (n - 1) / step + 1 + ((n - 1) % step != 0);
}

/* Copy the samples (sample_at) of device array d (n elements of es bytes) to host h, in order. */
static void copy_samples(void *h, const void *d, size_t n, size_t step, size_t es) {
  const size_t strided = (n - 1) / step + 1;
  CK_CUDA(cudaMemcpy2D(h, es, d, step * es, es, strided, cudaMemcpyDeviceToHost));
  if (sample_count(step, n) > strided)
    CK_CUDA(cudaMemcpy((char *)h + strided * es, (const char *)d + (n - 1) * es, es,
                       cudaMemcpyDeviceToHost));
}

/* Runs one probe call in `mode` on copy 0 and checks it against the host: the scalar within
 * CHECK_TOL of its sum (relative to sqrt(sum a² sum b²), as a sum of signed products may cancel);
 * the output (not in scale mode), at about PROBE_CHECK_ELEMS evenly spaced elements and the last,
 * within compare_out's W_sn rule of in[k] * c (backward-acc: fma(in[k], c, old output)), c
 * computed from the device's scalar as the kernel does (the same float roundings). Only the
 * sampled elements are copied from the device. Returns 0 if it holds; otherwise writes why. */
static int probe_check(probe_t *p, const probe_sums_t *sums, int mode, cudaStream_t s,
                       double *scalar_err, double *out_err, char *why, size_t why_size) {
  const buffers_t *b = p->buf;
  const sn_dtype_t t = b->dtype;
  const void *hin = is_backward(mode) ? hG_at(b, 0) : hW_at(b, 0);
  /* odd, so that the sample falls on every lane of the kernel's 16-byte packs */
  const size_t step = p->n > PROBE_CHECK_ELEMS ? (p->n / PROBE_CHECK_ELEMS) | 1 : 1;
  const size_t m = sample_count(step, p->n);
  void *old = NULL;
  if (mode == M_BACKWARD_ACC) {
    old = xmalloc(m * b->es);
    copy_samples(old, Out_at(b, 0, 0), p->n, step, b->es);
  }
  float got = 0;
  CK_CUDA(cudaMemsetAsync(p->scalar, 0xff, sizeof *p->scalar, s)); /* NaN: a call must write it */
  int bad = probe_enqueue(p, 0, mode, s);
  if (bad) snprintf(why, why_size, "%.200s", g_enqueue_err);
  CK_CUDA(cudaMemcpyAsync(&got, p->scalar, sizeof got, cudaMemcpyDeviceToHost, s));
  CK_CUDA(cudaStreamSynchronize(s));
  const double want = is_backward(mode) ? sums->gw : sums->ww;
  const double scale = is_backward(mode) ? sqrt(sums->gg * sums->ww) : sums->ww;
  *scalar_err = !isfinite(got) ? INFINITY : scale > 0 ? fabs(got - want) / scale : fabs(got);
  if (!bad && !(*scalar_err <= CHECK_TOL)) {
    snprintf(why, why_size, "%s: the reduction gave %.9g where the host sums %.9g",
             MODE_NAMES[mode], got, want);
    bad = 1;
  }
  *out_err = 0;
  if (!bad && mode != M_SCALE) {
    void *sg = xmalloc(m * b->es), *sr = xmalloc(m * b->es);
    copy_samples(sg, Out_at(b, 0, 0), p->n, step, b->es);
    const float c = 1.f / (1.f + fabsf(got));
    for (size_t j = 0; j < m; j++) {
      const float add = old ? sn_load(old, t, (int64_t)j) : 0.f;
      const float x = sn_load(hin, t, (int64_t)sample_at(j, step, p->n));
      sn_store(sr, t, (int64_t)j, fmaf(x, c, add));
    }
    const cmp_result_t cmp = compare_out(CMP_WSN, sg, sr, t, (int64_t)m);
    *out_err = cmp.err;
    if (!cmp.pass) {
      snprintf(why, why_size, "%s: output element %zu is %.9g where the host gives %.9g (%s)",
               MODE_NAMES[mode], sample_at((size_t)cmp.worst, step, p->n), cmp.got, cmp.ref,
               cmp.rule);
      bad = 1;
    }
    free(sg);
    free(sr);
  }
  free(old);
  return bad;
}

/* The probe rows of a single-layer workload (see --no-probe), checked first when o->check. A
 * probe that fails its check or a launch is reported and skipped, not fatal: it is a yardstick. */
static void run_gpu_probe(const workload_t *wl, sn_dtype_t dt, const options_t *o, cudaStream_t s,
                          const buffers_t *buf, int copies, const char *note) {
  probe_t p = {buf, NULL, NULL, NULL, (size_t)numel_of(&wl->layers[0])};
  const size_t nb = (size_t)snb_probe_max_blocks();
  char *mem = NULL;
  CK_CUDA(cudaMalloc((void **)&mem, (nb + 2) * sizeof(float)));
  p.part = (float *)mem;
  p.scalar = p.part + nb;
  p.counter = (unsigned *)(p.scalar + 1);
  CK_CUDA(cudaMemsetAsync(p.counter, 0, sizeof *p.counter, s));
  double scalar_err[N_MODES] = {0}, out_err[N_MODES] = {0};
  char why[256] = "";
  int bad = 0;
  probe_sums_t sums = {0, 0, 0};
  if (o->check) sums = probe_host_sums(buf, p.n);
  for (int m = 0; m < N_MODES && !bad; m++) {
    if (!o->modes[m]) continue;
    if (o->check)
      bad = probe_check(&p, &sums, m, s, &scalar_err[m], &out_err[m], why, sizeof why);
    else if (probe_enqueue(&p, 0, m, s))
      bad = 1, snprintf(why, sizeof why, "%.200s", g_enqueue_err);
  }
  CK_CUDA(cudaStreamSynchronize(s));
  if (bad)
    fprintf(stderr, "    warning: %s (%s): probe rows skipped: %s\n", wl->name, dtype_name(dt), why);
  else
    time_modes(wl, dt, o, s, probe_enqueue, &p, "probe", "probe-graph", "floor", copies, note,
               o->check, scalar_err, out_err, NULL);
  CK_CUDA(cudaStreamSynchronize(s));
  CK_CUDA(cudaFree(mem));
}

/* The grouped calls (sn_group_forward, sn_group_backward) on a multi-layer workload: checked layer
 * by layer against CPU layers after one training call, one eval call and a backward with each set
 * of flags, then timed like the other implementations. */
static void run_gpu_group(const workload_t *wl, sn_dtype_t dt, const options_t *o, cudaStream_t s,
                          const buffers_t *buf, int copies, const char *note) {
  const int L = wl->n_layers;
  sn_layer_t **layers = xcalloc((size_t)L, sizeof *layers);
  const void **W = xcalloc((size_t)L, sizeof *W), **G = xcalloc((size_t)L, sizeof *G);
  void **Out = xcalloc((size_t)L, sizeof *Out);
  sn_group_runner_t r = {xcalloc((size_t)copies, sizeof(sn_group_t *)),
                         xcalloc((size_t)copies, sizeof(sn_group_t *)), copies};
  for (int l = 0; l < L; l++) {
    sn_layer_desc_t d = make_desc(&wl->layers[l], o, o->seed + (uint64_t)l, SN_BACKEND_CUDA,
                                  SN_ALGO_DEFAULT, -1, dt);
    CK_SN(sn_layer_create(&layers[l], &d));
  }
  int ok = 1;
  for (int c = 0; c < copies && ok; c++) {
    for (int l = 0; l < L; l++) {
      W[l] = W_at(buf, c, l);
      Out[l] = Out_at(buf, c, l);
    }
    sn_status_t st = sn_group_create(&r.fwd[c], layers, W, Out, L);
    if (st == SN_SUCCESS) st = sn_group_create(&r.scale[c], layers, W, NULL, L);
    if (st != SN_SUCCESS) {
      fprintf(stderr, "    (grouped call skipped for %s: %s)\n", wl->name, sn_last_error_message());
      ok = 0;
    } else if (any_backward(o)) {
      /* The backward's dW goes to the W_sn buffers, as the single layers' does. (G has every copy
       * only when a backward mode runs: run_gpu_workload.) */
      for (int l = 0; l < L; l++) G[l] = G_at(buf, c, l);
      CK_SN(sn_group_set_gradients(r.fwd[c], G, Out, NULL));
    }
  }
  double sig_err[N_MODES] = {0}, out_err[N_MODES] = {0};
  if (ok && o->check) {
    /* One training call (with the warm-up) and one eval call, each against CPU layers. */
    fprintf(stderr, "    checking the grouped call against the CPU reference...\n");
    sn_layer_t **cpu = xcalloc((size_t)L, sizeof *cpu);
    void **out_ref = xcalloc((size_t)L, sizeof *out_ref);
    for (int l = 0; l < L; l++) {
      sn_layer_desc_t d = make_desc(&wl->layers[l], o, o->seed + (uint64_t)l, SN_BACKEND_CPU,
                                    SN_ALGO_DEFAULT, -1, dt);
      CK_SN(sn_layer_create(&cpu[l], &d));
    }
    for (int m = M_TRAIN; m <= M_EVAL; m++) {
      CK_SN(sn_group_forward(r.fwd[0], m == M_TRAIN, (sn_stream_t)s));
      CK_CUDA(cudaStreamSynchronize(s));
      for (int l = 0; l < L; l++) {
        const size_t bytes = (size_t)numel_of(&wl->layers[l]) * buf->es;
        void *ref = xmalloc(bytes), *got = xmalloc(bytes);
        CK_SN(sn_forward(cpu[l], hW_at(buf, l), ref, m == M_TRAIN, NULL));
        CK_CUDA(cudaMemcpy(got, Out_at(buf, 0, l), bytes, cudaMemcpyDeviceToHost));
        float sg = 0, sc = 0;
        CK_SN(sn_layer_get_sigma(layers[l], &sg, NULL, (sn_stream_t)s));
        CK_SN(sn_layer_get_sigma(cpu[l], &sc, NULL, NULL));
        expect_scalar(wl, l, dt, "specnorm-group", m, "sigma", sg, sc, &sig_err[m]);
        expect_array(wl, l, dt, "specnorm-group", m, CMP_WSN, got, ref, numel_of(&wl->layers[l]),
                     &out_err[m]);
        free(ref);
        free(got);
      }
    }
    /* The scale-only group (W_sn NULL: its own launch setup, one commit block a member): a
     * training call, its σ and scale against the CPU layers' scale-only forward. */
    CK_SN(sn_group_forward(r.scale[0], 1, (sn_stream_t)s));
    CK_CUDA(cudaStreamSynchronize(s));
    for (int l = 0; l < L; l++) {
      float sg = 0, sc = 0, kg = 0, kc = 0;
      CK_SN(sn_forward_scale_only(cpu[l], hW_at(buf, l), 1, NULL));
      CK_SN(sn_layer_get_sigma(layers[l], &sg, NULL, (sn_stream_t)s));
      CK_SN(sn_layer_get_sigma(cpu[l], &sc, NULL, NULL));
      CK_SN(sn_layer_get_scale(layers[l], &kg, (sn_stream_t)s));
      CK_SN(sn_layer_get_scale(cpu[l], &kc, NULL));
      expect_scalar(wl, l, dt, "specnorm-group", M_SCALE, "sigma", sg, sc, &sig_err[M_SCALE]);
      expect_scalar(wl, l, dt, "specnorm-group", M_SCALE, "scale", kg, kc, &out_err[M_SCALE]);
    }
    for (int m = M_BACKWARD; any_backward(o) && m <= M_BACKWARD_ACC; m++) {
      /* From the state of the scale-only call above, on both sides (the backward reads σ, u and v,
       * which it committed as a training forward does); backward-acc onto a random dW. */
      const int acc = m == M_BACKWARD_ACC;
      for (int l = 0; l < L; l++) {
        const int64_t n = numel_of(&wl->layers[l]);
        const size_t bytes = (size_t)n * buf->es;
        void *ref = xmalloc(bytes);
        if (acc) {
          fill_random_typed(ref, n, dt, 0xACC0ull + (uint64_t)l);
          mem_copy(Out_at(buf, 0, l), ref, bytes);
        }
        CK_SN(sn_backward(cpu[l], hW_at(buf, l), hG_at(buf, l), ref, backward_flags(m),
                          NULL, NULL));
        out_ref[l] = ref;
      }
      CK_SN(sn_group_backward(r.fwd[0], backward_flags(m), (sn_stream_t)s));
      CK_CUDA(cudaStreamSynchronize(s));
      for (int l = 0; l < L; l++) {
        const int64_t n = numel_of(&wl->layers[l]);
        void *got = xmalloc((size_t)n * buf->es);
        CK_CUDA(cudaMemcpy(got, Out_at(buf, 0, l), (size_t)n * buf->es, cudaMemcpyDeviceToHost));
        expect_array(wl, l, dt, "specnorm-group", m, CMP_DW, got, out_ref[l], n, &out_err[m]);
        free(got);
        free(out_ref[l]);
      }
    }
    for (int l = 0; l < L; l++) sn_layer_destroy(cpu[l]);
    free(cpu);
    free(out_ref);
  } else if (ok) {
    CK_SN(sn_group_forward(r.fwd[0], 1, (sn_stream_t)s)); /* the warm-up, before any capture */
  }
  if (ok) {
    CK_CUDA(cudaStreamSynchronize(s));
    const int first_row = g_n_rows;
    time_modes(wl, dt, o, s, group_enqueue, &r, "specnorm-group", "specnorm-group-graph", "group",
               copies, note, o->check, sig_err, out_err, NULL);
    finish_group_rows(first_row, r.fwd, r.scale, copies);
    CK_CUDA(cudaStreamSynchronize(s));
  }
  for (int c = 0; c < copies; c++) {
    sn_group_destroy(r.fwd[c]);
    sn_group_destroy(r.scale[c]);
  }
  for (int l = 0; l < L; l++) sn_layer_destroy(layers[l]);
  free(r.fwd);
  free(r.scale);
  free(layers);
  free(W);
  free(G);
  free(Out);
}

static void run_gpu_workload(const workload_t *wl, sn_dtype_t dt, const options_t *o, gpu_t *g) {
  cudaStream_t s = g->stream;
  buffers_t buf;
  layout_buffers(&buf, wl, dt);
  const int with_g = any_backward(o);
  const double bytes_per_copy = (with_g ? 3.0 : 2.0) * (double)buf.es * (double)buf.stride;
  int copies = 1;
  char note[200] = "";
  if (o->rotate) {
    double want = ceil(4.0 * (double)g->prop.l2CacheSize / bytes_per_copy);
    copies = want < 1 ? 1 : want > MAX_COPIES ? MAX_COPIES : (int)want;
    if (want > MAX_COPIES)
      snprintf(note, sizeof note, "rotation capped at %d copies (< 4x L2)", MAX_COPIES);
  }
  size_t free_b = 0, total_b = 0;
  CK_CUDA(cudaMemGetInfo(&free_b, &total_b));
  while (copies > 1 && bytes_per_copy * copies > 0.7 * (double)free_b) copies--;
  if (bytes_per_copy * copies > 0.85 * (double)free_b)
    die("%s (%s): needs %.2f GB of device memory for W, W_sn/dW%s, %.2f GB free", wl->name,
        dtype_name(dt), bytes_per_copy * copies / 1e9, with_g ? " and G" : "", (double)free_b / 1e9);
  if (o->rotate && copies > 1 && bytes_per_copy * copies < 4.0 * g->prop.l2CacheSize && !note[0])
    snprintf(note, sizeof note, "rotation limited by memory to %d copies", copies);
  buf.copies = copies;
  const size_t copy_bytes = (size_t)buf.stride * buf.es;
  CK_CUDA(cudaMalloc((void **)&buf.dW, copy_bytes * (size_t)copies));
  CK_CUDA(cudaMalloc((void **)&buf.dOut, copy_bytes * (size_t)copies));
  /* G is needed by the check even when no backward mode is timed: one copy then. */
  CK_CUDA(cudaMalloc((void **)&buf.dG, copy_bytes * (size_t)(with_g ? copies : 1)));
  fill_host_weights(&buf, o->seed, 1);
  CK_CUDA(cudaMemcpy(buf.dW, buf.hW, copy_bytes, cudaMemcpyHostToDevice));
  CK_CUDA(cudaMemcpy(buf.dG, buf.hG, copy_bytes, cudaMemcpyHostToDevice));
  for (int c = 1; c < copies; c++) {
    CK_CUDA(cudaMemcpy(buf.dW + (size_t)c * copy_bytes, buf.dW, copy_bytes, cudaMemcpyDeviceToDevice));
    if (with_g)
      CK_CUDA(cudaMemcpy(buf.dG + (size_t)c * copy_bytes, buf.dG, copy_bytes, cudaMemcpyDeviceToDevice));
  }
  /* dW starts at 0: backward-acc adds to it (its growth over the run does not change the timing). */
  CK_CUDA(cudaMemset(buf.dOut, 0, copy_bytes * (size_t)copies));

  int bl_modes = 0;
  for (int m = 0; m < N_MODES; m++) bl_modes += o->modes[m] && baseline_has(m, dt);
  /* The baseline is the u-first sequence: with --order v-first it would compute another u, v and
   * σ than the rows it is compared with (and its check against the v-first CPU layer fail). */
  const int use_baseline = o->baseline && wl->all_dim0 && o->order == SN_ORDER_U_FIRST && bl_modes > 0;
  baseline_t bl;
  memset(&bl, 0, sizeof bl);
  check_result_t bl_check;
  memset(&bl_check, 0, sizeof bl_check);
  int bl_checked = 0;
  if (use_baseline) {
    sn_layer_desc_t d0;
    CK_SN(sn_layer_desc_init(&d0, wl->layers[0].ndim, wl->layers[0].shape));
    baseline_init(&bl, &buf, o->power_iters, d0.eps, s);
  }

  fprintf(stderr, "  %s (%s): %d layer(s), %.1f MB of weights, %d rotation copies\n", wl->name,
          dtype_name(dt), wl->n_layers, (double)buf.es * (double)wl->params / 1e6, copies);

  for (int a = 0; a < o->n_algos; a++) {
    sn_algo_t algo = o->algos[a];
    sn_layer_t **layers = xcalloc((size_t)wl->n_layers, sizeof *layers);
    check_result_t chk;
    memset(&chk, 0, sizeof chk);
    for (int l = 0; l < wl->n_layers; l++) {
      const int64_t n = numel_of(&wl->layers[l]);
      int wu = o->check && n > CHECK_BIG_NUMEL && o->layer_warmup < 0 ? CHECK_BIG_WARMUP : -1;
      sn_layer_desc_t d = make_desc(&wl->layers[l], o, o->seed + (uint64_t)l, SN_BACKEND_CUDA, algo,
                                    wu, dt);
      sn_status_t cst = sn_layer_create(&layers[l], &d);
      if (cst == SN_ERROR_NOT_SUPPORTED && algo != SN_ALGO_DEFAULT) {
        fprintf(stderr, "    (algo %s skipped for %s %s: layer %d: %s)\n", algo_name(algo),
                wl->name, dtype_name(dt), l, sn_last_error_message());
        for (int k = 0; k < l; k++) sn_layer_destroy(layers[k]);
        free(layers);
        layers = NULL;
        break;
      }
      CK_SN(cst);
      if (o->check) {
        const int with_bl = use_baseline && !bl_checked;
        if (l == 0) fprintf(stderr, "    checking against the CPU reference (%s)...\n", algo_name(algo));
        check_layer(wl, l, &buf, layers[l], &d, with_bl ? &bl : NULL, s, with_bl ? &bl_check : &chk);
        if (with_bl) {
          /* check_layer filled bl_check's specnorm fields too: move them to chk */
          for (int m = 0; m < N_MODES; m++) {
            chk.sigma_err[m] = fmax(chk.sigma_err[m], bl_check.sigma_err[m]);
            chk.out_err[m] = fmax(chk.out_err[m], bl_check.out_err[m]);
          }
        }
      } else {
        CK_SN(sn_layer_warmup(layers[l], W_at(&buf, 0, l), (sn_stream_t)s));
      }
    }
    if (!layers) continue;
    if (use_baseline && o->check) bl_checked = 1;
    CK_CUDA(cudaStreamSynchronize(s));
    sn_runner_t runner = {&buf, layers, wl->n_layers};
    const int first_row = g_n_rows;
    time_modes(wl, dt, o, s, specnorm_enqueue, &runner, "specnorm", "specnorm-graph",
               algo_name(algo), copies, note, o->check, chk.sigma_err, chk.out_err, NULL);
    fill_paths(first_row, g_n_rows, layers, NULL, wl->n_layers);
    if (wl->n_layers == 1) { /* the plan behind these rows, in the log (sn_layer_describe) */
      char text[1024];
      CK_SN(sn_layer_describe(layers[0], text, sizeof text, NULL));
      fprintf(stderr, "    %s\n", text);
    }
    CK_CUDA(cudaStreamSynchronize(s));
    for (int l = 0; l < wl->n_layers; l++) sn_layer_destroy(layers[l]);
    free(layers);
  }

  if (wl->n_layers > 1 && o->group) run_gpu_group(wl, dt, o, s, &buf, copies, note);
  if (wl->n_layers == 1 && o->probe) run_gpu_probe(wl, dt, o, s, &buf, copies, note);

  if (use_baseline) {
    if (!o->check) {
      /* Unchecked: start from random unit-ish vectors and σ = 1 (contents do not change the
       * timing; the backward modes run one baseline training forward first anyway). */
      const float one = 1.0f;
      for (int l = 0; l < wl->n_layers; l++) {
        float *x = xmalloc((size_t)(bl.h[l] > bl.w[l] ? bl.h[l] : bl.w[l]) * sizeof(float));
        fill_random(x, bl.h[l], o->seed + 7 + (uint64_t)l);
        CK_CUDA(cudaMemcpy(bl.u[l], x, (size_t)bl.h[l] * sizeof(float), cudaMemcpyHostToDevice));
        fill_random(x, bl.w[l], o->seed + 11 + (uint64_t)l);
        CK_CUDA(cudaMemcpy(bl.v[l], x, (size_t)bl.w[l] * sizeof(float), cudaMemcpyHostToDevice));
        CK_CUDA(cudaMemcpy(&bl.scal[l][2], &one, sizeof one, cudaMemcpyHostToDevice));
        free(x);
      }
    }
    time_modes(wl, dt, o, s, baseline_enqueue, &bl, "cublas", "cublas-graph", "-", copies, note,
               bl_checked, bl_check.bl_sigma_err, bl_check.bl_out_err, baseline_has);
    CK_CUDA(cudaStreamSynchronize(s));
    baseline_destroy(&bl);
  } else if (o->baseline && !wl->all_dim0) {
    fprintf(stderr, "    (no cuBLAS baseline for %s: it has a weight with dim != 0 or 1-d)\n", wl->name);
  } else if (o->baseline && o->order != SN_ORDER_U_FIRST) {
    fprintf(stderr, "    (no cuBLAS baseline for %s with --order v-first: the baseline is the "
                    "u-first sequence)\n", wl->name);
  }
  if (o->baseline && wl->all_dim0 && o->order == SN_ORDER_U_FIRST && dt != SN_DTYPE_FLOAT32) {
    int fwd = 0;
    for (int m = 0; m < N_MODES; m++) fwd += o->modes[m] && !is_backward(m);
    if (fwd)
      fprintf(stderr, "    (no cuBLAS baseline for the %s forward modes: cuBLAS has no gemv with a "
                      "%s matrix and float vectors)\n", dtype_name(dt), dtype_name(dt));
  }
  free_buffers(&buf);
}

/* ---- CPU backend run ------------------------------------------------------------------------ */

static void measure_copy_bandwidth_cpu(void) {
  size_t bytes = (size_t)64 << 20;
  char *a = xmalloc(bytes), *b = xmalloc(bytes);
  memset(a, 1, bytes);
  memset(b, 2, bytes);
  double t[7];
  for (int i = 0; i < 7; i++) {
    double t0 = now_us();
    memcpy(b, a, bytes);
    t[i] = (now_us() - t0) * 1e-6;
    a[i] = b[bytes - 1 - (size_t)i]; /* keep the copies observable */
  }
  qsort(t, 7, sizeof t[0], cmp_double);
  g_copy_bytes = (double)bytes;
  g_copy_gbps = 2.0 * (double)bytes / t[3] / 1e9;
  free(a);
  free(b);
}

/* The CPU backend: the same check (against a second CPU layer, plus the cuBLAS baseline's
 * backward formula on the host), then host-clock timing of every selected mode. */
/* The CPU group's check: fresh layers through one grouped training forward and one grouped
 * backward against the same layers' own calls, bitwise (W_sn, sigma, dW). 1 if they agree. */
static int cpu_group_is_bitwise_the_layers(const workload_t *wl, sn_dtype_t dt, const options_t *o,
                                           const buffers_t *buf) {
  const int L = wl->n_layers;
  sn_layer_t **grouped = xcalloc((size_t)L, sizeof *grouped), **alone = xcalloc((size_t)L, sizeof *alone);
  const void **W = xcalloc((size_t)L, sizeof *W), **G = xcalloc((size_t)L, sizeof *G);
  void **out_g = xcalloc((size_t)L, sizeof *out_g), **out_a = xcalloc((size_t)L, sizeof *out_a);
  for (int l = 0; l < L; l++) {
    const int64_t n = numel_of(&wl->layers[l]);
    sn_layer_desc_t d = make_desc(&wl->layers[l], o, o->seed + (uint64_t)l, SN_BACKEND_CPU, SN_ALGO_DEFAULT,
                                  n > CHECK_BIG_NUMEL && o->layer_warmup < 0 ? CHECK_BIG_WARMUP : -1, dt);
    CK_SN(sn_layer_create(&grouped[l], &d));
    CK_SN(sn_layer_create(&alone[l], &d));
    W[l] = hW_at(buf, l);
    G[l] = hG_at(buf, l);
    out_g[l] = xcalloc(1, (size_t)n * buf->es);
    out_a[l] = xcalloc(1, (size_t)n * buf->es);
  }
  sn_group_t *g = NULL, *gs = NULL;
  CK_SN(sn_group_create(&g, grouped, W, out_g, L));
  CK_SN(sn_group_create(&gs, grouped, W, NULL, L));
  CK_SN(sn_group_set_gradients(g, G, out_g, NULL));
  int same = 1;
  /* Every mode the rows are labelled for, in turn on the same layers: σ, the scale and W_sn or dW
   * (backward-acc adds onto the backward's dW, equal on both sides by then). */
  for (int m = 0; m < N_MODES && same; m++) {
    if (m == M_TRAIN || m == M_EVAL) CK_SN(sn_group_forward(g, m == M_TRAIN, NULL));
    else if (m == M_SCALE) CK_SN(sn_group_forward(gs, 1, NULL));
    else CK_SN(sn_group_backward(g, backward_flags(m), NULL));
    for (int l = 0; l < L && same; l++) {
      if (m == M_TRAIN || m == M_EVAL) CK_SN(sn_forward(alone[l], W[l], out_a[l], m == M_TRAIN, NULL));
      else if (m == M_SCALE) CK_SN(sn_forward_scale_only(alone[l], W[l], 1, NULL));
      else CK_SN(sn_backward(alone[l], W[l], G[l], out_a[l], backward_flags(m), NULL, NULL));
      float sg = 0, sa = 0, kg = 0, ka = 0;
      CK_SN(sn_layer_get_sigma(grouped[l], &sg, NULL, NULL));
      CK_SN(sn_layer_get_sigma(alone[l], &sa, NULL, NULL));
      CK_SN(sn_layer_get_scale(grouped[l], &kg, NULL));
      CK_SN(sn_layer_get_scale(alone[l], &ka, NULL));
      const size_t bytes = (size_t)numel_of(&wl->layers[l]) * buf->es;
      if (memcmp(&sg, &sa, sizeof sg) || memcmp(&kg, &ka, sizeof kg) || memcmp(out_g[l], out_a[l], bytes)) {
        fprintf(stderr, "%s (%s): the CPU group's %s of layer %d differs from the layer's own call\n",
                wl->name, dtype_name(dt), MODE_NAMES[m], l);
        same = 0;
      }
    }
  }
  sn_group_destroy(g);
  sn_group_destroy(gs);
  for (int l = 0; l < L; l++) {
    sn_layer_destroy(grouped[l]);
    sn_layer_destroy(alone[l]);
    free(out_g[l]);
    free(out_a[l]);
  }
  free(grouped);
  free(alone);
  free(W);
  free(G);
  free(out_g);
  free(out_a);
  return same;
}

/* A row per mode of o for one CPU implementation (enqueue: the per-layer or the grouped calls),
 * host clock; the layers have had their warm-up. */
static void time_cpu_modes(const workload_t *wl, sn_dtype_t dt, const options_t *o,
                           enqueue_fn enqueue, void *ctx, const char *impl, const char *algo,
                           const char *check, const char *note) {
  const int reps = o->reps > 0 ? o->reps : 10;
  const int warmup = o->warmup >= 0 ? o->warmup : 2;
  double *samples = xcalloc((size_t)reps, sizeof *samples);
  for (int m = 0; m < N_MODES; m++) {
    if (!o->modes[m]) continue;
    row_t *r = new_row(wl, m, dt, impl, algo, "cpu");
    snprintf(r->check, sizeof r->check, "%s", check);
    snprintf(r->note, sizeof r->note, "%s", note);
    for (int i = 0; i < warmup + reps; i++) {
      double ts = now_us();
      run_or_die(enqueue, ctx, 0, m, NULL);
      double t = now_us() - ts;
      if (i >= warmup) samples[i - warmup] = t;
    }
    r->batch = 1;
    r->copies = 1;
    finish_row(r, samples, reps);
  }
  free(samples);
}

static void run_cpu_workload(const workload_t *wl, sn_dtype_t dt, const options_t *o) {
  buffers_t buf;
  layout_buffers(&buf, wl, dt);
  fill_host_weights(&buf, o->seed, 1);
  const size_t copy_bytes = (size_t)buf.stride * buf.es;
  buf.copies = 1;
  buf.dW = xmalloc(copy_bytes);
  memcpy(buf.dW, buf.hW, copy_bytes);
  buf.dG = xmalloc(copy_bytes);
  memcpy(buf.dG, buf.hG, copy_bytes);
  buf.dOut = xcalloc(1, copy_bytes);
  sn_layer_t **layers = xcalloc((size_t)wl->n_layers, sizeof *layers);
  check_result_t chk;
  memset(&chk, 0, sizeof chk);
  const double t0 = now_us();
  for (int l = 0; l < wl->n_layers; l++) {
    const int64_t n = numel_of(&wl->layers[l]);
    int wu = o->check && n > CHECK_BIG_NUMEL && o->layer_warmup < 0 ? CHECK_BIG_WARMUP : -1;
    sn_layer_desc_t d = make_desc(&wl->layers[l], o, o->seed + (uint64_t)l, SN_BACKEND_CPU,
                                  SN_ALGO_DEFAULT, wu, dt);
    CK_SN(sn_layer_create(&layers[l], &d));
    if (o->check) check_layer(wl, l, &buf, layers[l], &d, NULL, NULL, &chk);
    else CK_SN(sn_layer_warmup(layers[l], W_at(&buf, 0, l), NULL));
  }
  if (o->check) {
    double f = 0;
    for (int m = 0; m < N_MODES; m++) f = fmax(f, chk.formula_err[m]);
    char fs[96];
    int dim0 = 0; /* layers the host formula is checked on (check_layer) */
    for (int l = 0; l < wl->n_layers; l++) dim0 += wl->layers[l].dim == 0 && wl->layers[l].ndim >= 2;
    if (!any_backward(o)) snprintf(fs, sizeof fs, "not run: no backward mode");
    else if (!dim0) snprintf(fs, sizeof fs, "not run: no layer of dim 0 with 2 or more dimensions");
    else if (wl->all_dim0) snprintf(fs, sizeof fs, "max dW error %.2e of max|dW|", f);
    else snprintf(fs, sizeof fs, "only on its dim-0 layers: max dW error %.2e of max|dW|", f);
    fprintf(stderr,
            "  %s (%s): check passed in %.1f s (a second CPU layer in all modes; the cuBLAS "
            "baseline's backward formula on the host, %s)\n",
            wl->name, dtype_name(dt), (now_us() - t0) * 1e-6, fs);
  }
  sn_runner_t runner = {&buf, layers, wl->n_layers};
  if (!o->check) run_or_die(specnorm_enqueue, &runner, 0, M_TRAIN, NULL);
  int first_row = g_n_rows;
  time_cpu_modes(wl, dt, o, specnorm_enqueue, &runner, "cpu", "-", "reference",
                 "CPU backend (the reference), host clock");
  fill_paths(first_row, g_n_rows, layers, NULL, wl->n_layers);
  /* The grouped calls: the same layers in one sn_group_forward or sn_group_backward (the small
   * ones spread over the threads, host/cpu_backend.c; bitwise the calls above, tests/test_group.cpp). */
  if (wl->n_layers > 1 && o->group) {
    const int L = wl->n_layers;
    const void **W = xcalloc((size_t)L, sizeof *W), **G = xcalloc((size_t)L, sizeof *G);
    void **Out = xcalloc((size_t)L, sizeof *Out);
    for (int l = 0; l < L; l++) {
      W[l] = W_at(&buf, 0, l);
      G[l] = G_at(&buf, 0, l);
      Out[l] = Out_at(&buf, 0, l);
    }
    sn_group_t *fwd = NULL, *scale = NULL;
    sn_status_t st = sn_group_create(&fwd, layers, W, Out, L);
    if (st == SN_SUCCESS) st = sn_group_create(&scale, layers, W, NULL, L);
    if (st == SN_SUCCESS) st = sn_group_set_gradients(fwd, G, Out, NULL);
    if (st != SN_SUCCESS) {
      fprintf(stderr, "    (grouped call skipped for %s: %s)\n", wl->name, sn_last_error_message());
    } else {
      if (o->check && !cpu_group_is_bitwise_the_layers(wl, dt, o, &buf))
        die("%s (%s): the CPU group's check failed", wl->name, dtype_name(dt));
      sn_group_runner_t gr = {&fwd, &scale, 1};
      first_row = g_n_rows;
      time_cpu_modes(wl, dt, o, group_enqueue, &gr, "cpu-group", "group",
                     o->check ? "bitwise" : "skipped",
                     "CPU backend's grouped call (small layers over threads), host clock");
      finish_group_rows(first_row, &fwd, &scale, 1);
    }
    sn_group_destroy(fwd);
    sn_group_destroy(scale);
    free(W);
    free(G);
    free(Out);
  }
  for (int l = 0; l < wl->n_layers; l++) sn_layer_destroy(layers[l]);
  free(layers);
  free_buffers(&buf);
}

/* ---- Speed-ups and output ------------------------------------------------------------------- */

static double best_median(const char *workload, const char *mode, const char *dtype,
                          const char *prefix) {
  double best = NAN;
  for (int i = 0; i < g_n_rows; i++) {
    const row_t *r = &g_rows[i];
    if (strcmp(r->workload, workload) || strcmp(r->mode, mode) || strcmp(r->dtype, dtype) ||
        strncmp(r->impl, prefix, strlen(prefix)))
      continue;
    if (!isnan(r->median_us) && !(r->median_us >= best)) best = r->median_us;
  }
  return best;
}

/* Join key with torch_baseline.py: workload, mode, dtype, power_iters. */
static double best_torch(const char *workload, const char *mode, const char *dtype, int power_iters) {
  double best = NAN;
  for (int i = 0; i < g_n_torch; i++) {
    const torch_row_t *t = &g_torch[i];
    if (strcmp(t->workload, workload) || strcmp(t->mode, mode) || strcmp(t->dtype, dtype) ||
        t->power_iters != power_iters)
      continue;
    if (!(t->median_us >= best)) best = t->median_us;
  }
  return best;
}

static void compute_speedups(const options_t *o) {
  for (int i = 0; i < g_n_rows; i++) {
    row_t *r = &g_rows[i];
    if (!strncmp(r->impl, "probe", 5)) continue; /* not an implementation */
    if (strncmp(r->impl, "cublas", 6) != 0) {
      double b = best_median(r->workload, r->mode, r->dtype, "cublas");
      if (isfinite(b)) r->speedup_cublas = b / r->median_us;
    }
    double t = best_torch(r->workload, r->mode, r->dtype, o->power_iters);
    if (isfinite(t)) r->speedup_torch = t / r->median_us;
  }
}

static void fmt_num(char *buf, size_t size, double v, const char *f) {
  if (isfinite(v)) snprintf(buf, size, f, v);
  else snprintf(buf, size, "-");
}

static void fmt_launches(char *buf, size_t size, int n) {
  if (n == -2) snprintf(buf, size, "fail");
  else if (n < 0) snprintf(buf, size, "-");
  else snprintf(buf, size, "%d", n);
}

static void print_table_row(const char *wl, const char *shape, const char *mode, const char *dtype,
                            const char *impl,
                            const char *algo, double med, double p10, double p90, double gbps,
                            double frac, double floor_us, const char *launch, double x_bl,
                            double x_torch, int batch, const char *check, const char *path) {
  char t[64], g[16], f[16], fl[16], xb[16], xt[16];
  if (isfinite(med)) snprintf(t, sizeof t, "%.2f [%.2f-%.2f]", med, p10, p90);
  else snprintf(t, sizeof t, "-");
  fmt_num(g, sizeof g, gbps, "%.1f");
  fmt_num(f, sizeof f, frac * 100.0, "%.1f");
  fmt_num(fl, sizeof fl, floor_us, "%.2f");
  fmt_num(xb, sizeof xb, x_bl, "%.2fx");
  fmt_num(xt, sizeof xt, x_torch, "%.2fx");
  printf("%-16s %-24s %-12s %-5s %-15s %-8s %30s %8s %6s %9s %5s %8s %7s %5d %-9s %s\n", wl, shape,
         mode, dtype, impl, algo, t, g, f, fl, launch, xb, xt, batch, check, path);
}

static void print_table(void) {
  printf("\n%-16s %-24s %-12s %-5s %-15s %-8s %30s %8s %6s %9s %5s %8s %7s %5s %-9s %s\n", "workload",
         "shape", "mode", "dtype", "impl", "algo", "us median [p10-p90]", "GB/s", "%copy", "floor us",
         "lnch", "xcuBLAS", "xtorch", "batch", "check", "path");
  const workload_t *last = NULL;
  for (int i = 0; i < g_n_rows; i++) {
    const row_t *r = &g_rows[i];
    if (last && last != r->wl) printf("\n");
    last = r->wl;
    char l[16];
    fmt_launches(l, sizeof l, r->launches);
    print_table_row(r->workload, r->wl->shape, r->mode, r->dtype, r->impl, r->algo, r->median_us, r->p10_us,
                    r->p90_us, r->gbps, r->copy_frac, r->floor_us, l, r->speedup_cublas,
                    r->speedup_torch, r->batch, r->check, r->path);
    /* After the last row of this workload+mode+dtype, list the joined torch rows once. */
    int last_of_mode = 1;
    for (int j = i + 1; j < g_n_rows; j++)
      if (g_rows[j].wl == r->wl && !strcmp(g_rows[j].mode, r->mode) &&
          !strcmp(g_rows[j].dtype, r->dtype))
        last_of_mode = 0;
    if (last_of_mode) {
      for (int k = 0; k < g_n_torch; k++) {
        const torch_row_t *t = &g_torch[k];
        if (strcmp(t->workload, r->workload) || strcmp(t->mode, r->mode) ||
            strcmp(t->dtype, r->dtype) || t->power_iters != g_power_iters)
          continue;
        double gb = r->bytes / (t->median_us * 1e-6) / 1e9;
        char tl[16];
        fmt_launches(tl, sizeof tl, t->launches);
        print_table_row(t->workload, r->wl->shape, t->mode, t->dtype, t->impl, "(joined)", t->median_us,
                        t->p10_us, t->p90_us, gb, gb / g_copy_gbps, r->floor_us, tl, NAN, NAN,
                        t->batch, "-", "-");
      }
    }
  }
  int notes = 0;
  for (int i = 0; i < g_n_rows; i++)
    if (g_rows[i].note[0] && strcmp(g_rows[i].device, "cpu")) {
      if (!notes++) printf("\nNotes:\n");
      printf("  %s %s %s %s: %s\n", g_rows[i].workload, g_rows[i].mode, g_rows[i].dtype,
             g_rows[i].impl, g_rows[i].note);
    }
}

#define BYTES_DEFINITION                                                                         \
  "per layer, bytes(W) = numel x size of dtype: train and eval 3 x bytes(W) (one read of W for the " \
  "one-pass iteration or the eval sigma + one read of W and one write of W_sn for the division); "  \
  "scale 1 x bytes(W) (the one read of the iteration); backward 4 x bytes(W) (read G and W for "    \
  "<G, W>, read G and write dW); backward-acc 5 x bytes(W) (backward + read of the old dW)"

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c == '\n') fputs("\\n", f);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

static void json_number(FILE *f, double v, const char *fmt) {
  if (isfinite(v)) fprintf(f, fmt, v);
  else fputs("null", f);
}

static void json_int_or_null(FILE *f, int v) {
  if (v < 0) fputs("null", f);
  else fprintf(f, "%d", v);
}

static void iso_date(char *buf, size_t size) {
  time_t t = time(NULL);
  struct tm tmv;
  gmtime_r(&t, &tmv);
  strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tmv);
}

static void write_json(const char *path, const options_t *o, const gpu_t *g, int cpu_mode,
                       const char *why_cpu) {
  FILE *f = fopen(path, "w");
  if (!f) die("--json %s: cannot open for writing: %s", path, strerror(errno));
  char date[64];
  iso_date(date, sizeof date);
  int rt = 0, drv = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  fprintf(f, "{\n  \"tool\": \"sn_bench\",\n  \"schema\": 2,\n  \"commit\": ");
  json_string(f, SN_BENCH_COMMIT);
  fprintf(f, ",\n  \"date\": \"%s\",\n  \"specnorm_version\": ", date);
  json_string(f, sn_version_string());
  fprintf(f, ",\n  \"device\": {");
  if (cpu_mode) {
    fprintf(f, "\"kind\": \"cpu\", \"name\": \"CPU backend\", \"why\": ");
    json_string(f, why_cpu);
  } else {
    fprintf(f, "\"kind\": \"cuda\", \"name\": ");
    json_string(f, g->prop.name);
    fprintf(f, ", \"cc\": \"%d.%d\", \"sm_count\": %d, \"l2_bytes\": %d, \"memory_bytes\": %.0f",
            g->prop.major, g->prop.minor, g->prop.multiProcessorCount, g->prop.l2CacheSize,
            (double)g->prop.totalGlobalMem);
  }
  fprintf(f, ", \"driver_version\": %d, \"runtime_version\": %d},\n", drv, rt);
  fprintf(f, "  \"copy_bandwidth_gbps\": ");
  json_number(f, g_copy_gbps, "%.3f");
  fprintf(f, ",\n  \"copy_bytes\": %.0f,\n", g_copy_bytes);
  fprintf(f,
          "  \"settings\": {\"reps\": %d, \"reps_auto_capped\": %s, \"warmup\": %d, \"batch\": %d, \"rotate\": %s, "
          "\"power_iters\": %d, \"seed\": %llu, \"check_tol\": %g, \"check_tol_dw_bf16\": %g, "
          "\"check_tol_dw_f16\": %g, \"modes\": [",
          o->reps, o->reps_given || g_cpu_mode ? "false" : "true", o->warmup, o->batch, o->rotate ? "true" : "false",
          o->power_iters, (unsigned long long)o->seed, CHECK_TOL, CHECK_TOL_DW_BF16, CHECK_TOL_DW_F16);
  for (int m = 0, k = 0; m < N_MODES; m++)
    if (o->modes[m]) fprintf(f, "%s\"%s\"", k++ ? ", " : "", MODE_NAMES[m]);
  fprintf(f, "], \"dtypes\": [");
  for (int d = 0, k = 0; d < N_DTYPES; d++)
    if (o->dtypes[d]) fprintf(f, "%s\"%s\"", k++ ? ", " : "", dtype_name(DTYPES[d]));
  fprintf(f, "], \"torch_file\": ");
  if (o->torch_file) json_string(f, o->torch_file);
  else fputs("null", f);
  fprintf(f, "},\n  \"bytes_definition\": \"%s\",\n", BYTES_DEFINITION);
  fprintf(f, "  \"rows\": [");
  for (int i = 0; i < g_n_rows; i++) {
    const row_t *r = &g_rows[i];
    fprintf(f, "%s\n    {\"workload\": ", i ? "," : "");
    json_string(f, r->workload);
    fprintf(f, ", \"kind\": \"%s\", \"shape\": ", r->wl->kind);
    json_string(f, r->wl->shape);
    fprintf(f, ", \"layers\": %d, \"params\": %lld, \"mode\": \"%s\", \"dtype\": \"%s\", \"impl\": ",
            r->wl->n_layers, (long long)r->wl->params, r->mode, r->dtype);
    json_string(f, r->impl);
    fprintf(f, ", \"algo\": \"%s\", \"device\": \"%s\", \"power_iters\": %d", r->algo, r->device,
            o->power_iters);
    fprintf(f, ", \"median_us\": ");
    json_number(f, r->median_us, "%.4f");
    fprintf(f, ", \"p10_us\": ");
    json_number(f, r->p10_us, "%.4f");
    fprintf(f, ", \"p90_us\": ");
    json_number(f, r->p90_us, "%.4f");
    fprintf(f, ", \"reps\": %d, \"batch\": %d, \"copies\": %d, \"bytes\": %.0f, \"gbps\": ", r->reps,
            r->batch, r->copies, r->bytes);
    json_number(f, r->gbps, "%.3f");
    fprintf(f, ", \"copy_fraction\": ");
    json_number(f, r->copy_frac, "%.5f");
    fprintf(f, ", \"floor_us\": ");
    json_number(f, r->floor_us, "%.4f");
    fprintf(f, ", \"launches\": ");
    json_int_or_null(f, r->launches);
    fprintf(f, ", \"kernel_nodes\": ");
    json_int_or_null(f, r->kernel_nodes);
    fprintf(f, ", \"capturable\": %s", r->launches == -2 ? "false" : r->launches >= 0 ? "true" : "null");
    fprintf(f, ", \"speedup_vs_cublas\": ");
    json_number(f, r->speedup_cublas, "%.4f");
    fprintf(f, ", \"speedup_vs_torch\": ");
    json_number(f, r->speedup_torch, "%.4f");
    fprintf(f, ", \"check\": \"%s\", \"sigma_rel_err\": ", r->check);
    json_number(f, r->sigma_err, "%.3e");
    fprintf(f, ", \"wsn_rel_err\": ");
    json_number(f, r->wsn_err, "%.3e");
    fprintf(f, ", \"note\": ");
    json_string(f, r->note);
    fprintf(f, ", \"path\": ");
    json_string(f, r->path);
    fprintf(f, "}");
  }
  fprintf(f, "\n  ]\n}\n");
  if (fclose(f) != 0) die("--json %s: write failed", path);
}

static void csv_field_num(FILE *f, double v, const char *fmt) {
  if (isfinite(v)) fprintf(f, fmt, v);
}

static void csv_quoted(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"') fputc('"', f);
    fputc(*s, f);
  }
  fputc('"', f);
}

/* Same columns as the JSON rows, same order. */
static const char *CSV_HEADER =
    "workload,kind,shape,layers,params,mode,dtype,impl,algo,device,power_iters,median_us,p10_us,p90_us,"
    "reps,batch,copies,bytes,gbps,copy_fraction,floor_us,launches,kernel_nodes,capturable,"
    "speedup_vs_cublas,speedup_vs_torch,check,sigma_rel_err,wsn_rel_err,note,path\n";

static void write_csv(const char *path, const options_t *o) {
  FILE *f = fopen(path, "w");
  if (!f) die("--csv %s: cannot open for writing: %s", path, strerror(errno));
  fputs(CSV_HEADER, f);
  for (int i = 0; i < g_n_rows; i++) {
    const row_t *r = &g_rows[i];
    csv_quoted(f, r->workload);
    fprintf(f, ",%s,", r->wl->kind);
    csv_quoted(f, r->wl->shape);
    fprintf(f, ",%d,%lld,%s,%s,%s,%s,%s,%d,", r->wl->n_layers, (long long)r->wl->params, r->mode,
            r->dtype, r->impl, r->algo, r->device, o->power_iters);
    csv_field_num(f, r->median_us, "%.4f");
    fputc(',', f);
    csv_field_num(f, r->p10_us, "%.4f");
    fputc(',', f);
    csv_field_num(f, r->p90_us, "%.4f");
    fprintf(f, ",%d,%d,%d,%.0f,", r->reps, r->batch, r->copies, r->bytes);
    csv_field_num(f, r->gbps, "%.3f");
    fputc(',', f);
    csv_field_num(f, r->copy_frac, "%.5f");
    fputc(',', f);
    csv_field_num(f, r->floor_us, "%.4f");
    fputc(',', f);
    if (r->launches >= 0) fprintf(f, "%d", r->launches);
    fputc(',', f);
    if (r->kernel_nodes >= 0) fprintf(f, "%d", r->kernel_nodes);
    fprintf(f, ",%s,", r->launches == -2 ? "false" : r->launches >= 0 ? "true" : "");
    csv_field_num(f, r->speedup_cublas, "%.4f");
    fputc(',', f);
    csv_field_num(f, r->speedup_torch, "%.4f");
    fprintf(f, ",%s,", r->check);
    csv_field_num(f, r->sigma_err, "%.3e");
    fputc(',', f);
    csv_field_num(f, r->wsn_err, "%.3e");
    fputc(',', f);
    csv_quoted(f, r->note);
    fputc(',', f);
    csv_quoted(f, r->path);
    fputc('\n', f);
  }
  if (fclose(f) != 0) die("--csv %s: write failed", path);
}

static void list_presets(void) {
  for (int p = 0; p < SNB_N_PRESETS; p++) {
    const snb_preset_t *ps = &snb_presets[p];
    for (int l = 0; l < ps->n_layers; l++) {
      char shp[128];
      shape_str(&ps->layers[l], shp, sizeof shp);
      printf("%s\t%s\t%s\t%d\n", ps->name, ps->layers[l].name, shp, ps->layers[l].dim);
    }
  }
}

/* Die now if `path` (an output file, or NULL for none) cannot be opened for writing. Opens it
 * for appending, which neither truncates an existing file nor leaves a new one behind. */
static void check_writable(const char *option, const char *path) {
  if (!path) return;
  FILE *f = fopen(path, "r");
  const int existed = f != NULL;
  if (f) fclose(f);
  f = fopen(path, "a");
  if (!f) die("%s %s: cannot write: %s", option, path, strerror(errno));
  fclose(f);
  if (!existed) remove(path);
}

/* ---- main ----------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
  options_t o;
  parse_options(argc, argv, &o);
  g_power_iters = o.power_iters;
  if (o.list_presets) {
    list_presets();
    return 0;
  }
  /* A path that cannot be written fails now, not after the run; an existing file is kept as it
   * is until the run's rows replace it. */
  check_writable("--json", o.json_file);
  check_writable("--csv", o.csv_file);

  /* Find out whether there is a GPU before building the default workload list. */
  int n_dev = 0;
  char why_cpu[256] = "";
  cudaError_t de = cudaGetDeviceCount(&n_dev);
  int cpu_mode = 0;
  if (o.force_cpu) {
    cpu_mode = 1;
    snprintf(why_cpu, sizeof why_cpu, "--cpu given");
  } else if (de != cudaSuccess) {
    cpu_mode = 1;
    snprintf(why_cpu, sizeof why_cpu, "no CUDA device (error %d: %s)", (int)de, cudaGetErrorString(de));
    cudaGetLastError();
  } else if (n_dev == 0) {
    cpu_mode = 1;
    snprintf(why_cpu, sizeof why_cpu, "no CUDA device (cudaGetDeviceCount returned 0)");
  } else if (o.device >= n_dev) {
    usage_error("--device %d: only %d CUDA device(s) present", o.device, n_dev);
  }

  g_cpu_mode = cpu_mode;
  if (o.reps < 0) o.reps = cpu_mode ? 10 : 200;
  if (o.warmup < 0) o.warmup = cpu_mode ? 2 : 20;

  int n_wl = 0;
  workload_t *wls = build_workloads(&o, cpu_mode, &n_wl);
  if (o.torch_file) load_torch(o.torch_file);

  gpu_t g;
  memset(&g, 0, sizeof g);
  cudaRuntimeGetVersion(&g.runtime);
  cudaDriverGetVersion(&g.driver);
  printf("sn_bench commit %s, specnorm %s, CUDA runtime %d, driver %d\n", SN_BENCH_COMMIT,
         sn_version_string(), g.runtime, g.driver);

  if (cpu_mode) {
    printf("%s: running the CPU backend (host clock, no rotation, no baselines)\n", why_cpu);
    measure_copy_bandwidth_cpu();
    printf("host memcpy bandwidth: %.1f GB/s (read + write of %.0f MiB)\n", g_copy_gbps,
           g_copy_bytes / 1048576.0);
    if (g_n_torch)
      printf("warning: --torch results are from '%s' (a GPU); this run times the CPU backend\n",
             g_torch_device);
    if (o.n_algos > 1 || o.algos[0] != SN_ALGO_DEFAULT)
      printf("note: --algo is ignored by the CPU backend\n");
  } else {
    CK_CUDA(cudaSetDevice(o.device));
    CK_CUDA(cudaGetDeviceProperties(&g.prop, o.device));
    CK_CUDA(cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking));
    printf("device %d: %s, cc %d.%d, %d SMs, L2 %.1f MiB, %.1f GiB\n", o.device, g.prop.name,
           g.prop.major, g.prop.minor, g.prop.multiProcessorCount, g.prop.l2CacheSize / 1048576.0,
           (double)g.prop.totalGlobalMem / 1073741824.0);
    measure_copy_bandwidth_gpu(g.stream);
    printf("device-to-device copy bandwidth: %.1f GB/s (read + write, %.0f MiB buffer)\n",
           g_copy_gbps, g_copy_bytes / 1048576.0);
    if (g_n_torch && g_torch_device[0] && strcmp(g_torch_device, g.prop.name))
      printf("warning: --torch results are from '%s', this device is '%s'\n", g_torch_device,
             g.prop.name);
  }
  printf("bytes per call: train, eval 3 x bytes(W); scale 1 x; backward 4 x; backward-acc 5 x "
         "(bytes(W) = numel x size of dtype); timings in us per call (median [p10-p90])\n");
  fflush(stdout);

  for (int i = 0; i < n_wl; i++) {
    fprintf(stderr, "[%d/%d] %s\n", i + 1, n_wl, wls[i].name);
    for (int d = 0; d < N_DTYPES; d++) {
      if (!o.dtypes[d]) continue;
      if (cpu_mode) run_cpu_workload(&wls[i], DTYPES[d], &o);
      else run_gpu_workload(&wls[i], DTYPES[d], &o, &g);
    }
  }
  compute_speedups(&o);
  print_table();
  if (o.torch_file && g_n_torch == 0) printf("\nwarning: --torch %s has no usable rows\n", o.torch_file);
  if (o.json_file) write_json(o.json_file, &o, &g, cpu_mode, why_cpu);
  if (o.csv_file) write_csv(o.csv_file, &o);
  if (!cpu_mode) CK_CUDA(cudaStreamDestroy(g.stream));
  return 0;
}
