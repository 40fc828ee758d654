/*
 * train_lipschitz: train a spectrally normalized MLP as a Lipschitz classifier, with specnorm
 * and cuBLAS.
 *
 * The model is 2 -> 64 -> 64 -> 1 with ReLU, on a synthetic "two moons" data set generated here.
 * Every weight W has a specnorm layer, and each linear layer computes
 *
 *     z = W_sn x + b,   W_sn = scale · W   (scale = 1/σ, σ the power-iteration estimate of ‖W‖₂)
 *
 * without ever writing W_sn: sn_forward_scale_only updates u, v, σ and the scale on the device,
 * and the GEMM takes the scale as its alpha, a device pointer (CUBLAS_POINTER_MODE_DEVICE).
 * Backward: the GEMM gives G = ∂L/∂W_sn, sn_backward turns it into ∂L/∂W (the σ term included),
 * and ∂L/∂x = W_snᵀ ∂L/∂z is again a GEMM with alpha = scale. Adam updates W and b.
 *
 * With --grouped, the three layers are one specnorm group: one sn_group_forward before the
 * forward GEMMs and one sn_group_backward after the backward GEMMs, each a single launch for every
 * layer, in place of a call per layer (the same results to float rounding).
 *
 * Each ‖W_sn‖₂ is close to 1 and ReLU is 1-Lipschitz, so the whole network is (close to)
 * 1-Lipschitz: a point classified with margin |f(x)| > r · Lip keeps its class under any
 * perturbation of norm r ("certified" accuracy below). Once per epoch the program checks ‖W_sn‖₂
 * independently: it copies W to the host and runs a long power iteration in double.
 *
 * Usage: train_lipschitz [--epochs N] [--power-iterations K] [--grouped]
 * Exit status: 0 on success, and also without a GPU (it then does nothing); 1 on any error or if
 * training does not reach 95% accuracy.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <specnorm.h>

/* ---- Error checking: print what failed and exit (the process exit frees everything) ---------- */

#define CUDA_CHECK(call)                                                                     \
  do {                                                                                       \
    cudaError_t e_ = (call);                                                                 \
    if (e_ != cudaSuccess) {                                                                 \
      fprintf(stderr, "%s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__, #call,              \
              cudaGetErrorName(e_), cudaGetErrorString(e_));                                 \
      exit(1);                                                                               \
    }                                                                                        \
  } while (0)

#define CUBLAS_CHECK(call)                                                                   \
  do {                                                                                       \
    cublasStatus_t s_ = (call);                                                              \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                       \
      fprintf(stderr, "%s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__, #call,              \
              cublasGetStatusName(s_), cublasGetStatusString(s_));                           \
      exit(1);                                                                               \
    }                                                                                        \
  } while (0)

#define SN_CHECK(call)                                                                       \
  do {                                                                                       \
    sn_status_t s_ = (call);                                                                 \
    if (s_ != SN_SUCCESS) {                                                                  \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call,                   \
              sn_last_error_message());                                                      \
      exit(1);                                                                               \
    }                                                                                        \
  } while (0)

/* After a kernel launch: catches bad launch configurations (errors of the kernel itself show up
 * at the next synchronizing call, which is checked too). */
#define LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

/* ---- Problem and hyperparameters ----------------------------------------------------------- */

enum { N_LAYERS = 3, N_POINTS = 4096, BATCH = 256, THREADS = 256 };
static const int kWidths[N_LAYERS + 1] = {2, 64, 64, 1};
static const float kNoise = 0.1f;          /* standard deviation of the noise on the moons */
static const float kMargin = 0.1f;         /* hinge loss max(0, margin − t·f(x)) */
static const float kLearningRate = 3e-3f;  /* Adam */
static const float kBeta1 = 0.9f, kBeta2 = 0.999f, kAdamEps = 1e-8f;
static const double kRadius = 0.1;         /* certified accuracy: robust to any ‖δ‖₂ <= kRadius */

/* ---- Kernels (one thread per element; small sizes, so no tuning) ---------------------------- */

static unsigned blocks_for(int n) { return (unsigned)((n + THREADS - 1) / THREADS); }

/* z (rows x cols, row-major) += bias per column; a = ReLU(z) if a is not NULL. */
__global__ void add_bias_relu(float *z, float *a, const float *bias, int rows, int cols) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  float v = z[i] + bias[i % cols];
  z[i] = v;
  if (a) a[i] = fmaxf(v, 0.0f);
}

/* d = d · ReLU'(z), in place. */
__global__ void relu_backward(float *d, const float *z, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n && z[i] <= 0.0f) d[i] = 0.0f;
}

/* db[j] = Σ_rows dz[r, j]: one thread per column, in a fixed order (deterministic). */
__global__ void bias_grad(const float *dz, float *db, int rows, int cols) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  float s = 0.0f;
  for (int r = 0; r < rows; ++r) s += dz[r * cols + j];
  db[j] = s;
}

/* Hinge loss on logits f with labels t = ±1: loss[i] = max(0, m − t f) (if loss is not NULL),
 * df[i] = ∂(mean loss)/∂f[i] = −t/n where the margin is violated, else 0. */
__global__ void hinge_loss(const float *f, const float *t, int n, float margin, float *loss,
                           float *df) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float gap = margin - t[i] * f[i];
  if (loss) loss[i] = fmaxf(gap, 0.0f);
  df[i] = gap > 0.0f ? -t[i] / (float)n : 0.0f;
}

/* One Adam step; c1 = 1 − β1^step and c2 = 1 − β2^step are the bias corrections. */
__global__ void adam_step(float *p, const float *g, float *m, float *v, int n, float lr,
                          float c1, float c2) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  m[i] = kBeta1 * m[i] + (1.0f - kBeta1) * g[i];
  v[i] = kBeta2 * v[i] + (1.0f - kBeta2) * g[i] * g[i];
  p[i] -= lr * (m[i] / c1) / (sqrtf(v[i] / c2) + kAdamEps);
}

/* ---- The model ------------------------------------------------------------------------------ */

typedef struct {
  int in, out;
  float *W, *b;              /* parameters; W is row-major out x in, like nn.Linear.weight */
  float *dW, *db;            /* gradients; dW first holds ∂L/∂W_sn, sn_backward makes it ∂L/∂W */
  float *mW, *vW, *mb, *vb;  /* Adam moments */
  float *z;                  /* z = W_sn x + b, batch x out (sized for the whole data set) */
  float *a;                  /* ReLU(z) for hidden layers; the last layer's a is z (logits) */
  float *dz;                 /* ∂L/∂z, batch x out */
  sn_layer_t *sn;            /* u, v, σ and the scale of W */
  const float *scale;        /* device pointer: W_sn = *scale · W */
  float *W_host;             /* host copy of W for the CPU check */
} dense_t;

typedef struct {
  dense_t layer[N_LAYERS];
  cublasHandle_t blas;
  cudaStream_t stream;
  float *zero, *one;  /* device constants: in device pointer mode beta is a device pointer too */
  sn_group_t *group;  /* --grouped: every layer's specnorm calls as one (NULL: a call per layer) */
} model_t;

static float *device_zeros(size_t n) {
  float *p = NULL;
  CUDA_CHECK(cudaMalloc((void **)&p, n * sizeof(float)));
  CUDA_CHECK(cudaMemset(p, 0, n * sizeof(float)));
  return p;
}

/* Layout. Everything is row-major (a batch of activations is batch x features), cuBLAS is
 * column-major: it sees a row-major R x C matrix with leading dimension C as its transpose.
 * So each product below is written for the transposes (B = batch, X = the layer input):
 *   forward  Z  = X W_snᵀ  (B x out):  Zᵀ  = W_sn Xᵀ       gemm(T, N, out, B, in,  scale, W, in, X, in,  0, Z, out)
 *   weight   G  = dZᵀ X    (out x in): Gᵀ  = Xᵀ dZ         gemm(N, T, in, out, B,  1,     X, in, dZ, out, 0, G, in)
 *   input    dX = dZ W_sn  (B x in):   dXᵀ = W_snᵀ dZᵀ     gemm(N, N, in, B, out,  scale, W, in, dZ, out, 0, dX, in)
 * Since W_sn = scale · W, alpha = scale applies the normalization inside the GEMM. */
static void forward(model_t *m, const float *x, int batch, int training) {
  /* Updates u, v, σ and *scale (stream-ordered, no sync); training == 0 keeps u and v. A group
   * does it for every layer at once (its W_sn are NULL: scale only). */
  if (m->group) SN_CHECK(sn_group_forward(m->group, training, m->stream));
  for (int l = 0; l < N_LAYERS; ++l) {
    dense_t *L = &m->layer[l];
    if (!m->group) SN_CHECK(sn_forward_scale_only(L->sn, L->W, training, m->stream));
    CUBLAS_CHECK(cublasSgemm(m->blas, CUBLAS_OP_T, CUBLAS_OP_N, L->out, batch, L->in, L->scale,
                             L->W, L->in, x, L->in, m->zero, L->z, L->out));
    int last = l == N_LAYERS - 1;
    add_bias_relu<<<blocks_for(batch * L->out), THREADS, 0, m->stream>>>(
        L->z, last ? NULL : L->a, L->b, batch, L->out);
    LAUNCH_CHECK();
    x = L->a;
  }
}

/* Backward from ∂L/∂logits in the last layer's dz; x is the batch that went into forward. */
static void backward(model_t *m, const float *x, int batch) {
  for (int l = N_LAYERS - 1; l >= 0; --l) {
    dense_t *L = &m->layer[l];
    const float *input = l > 0 ? m->layer[l - 1].a : x;  /* this layer's X */
    /* G = ∂L/∂W_sn = dZᵀ X: alpha = 1, the gradient with respect to the normalized weight. */
    CUBLAS_CHECK(cublasSgemm(m->blas, CUBLAS_OP_N, CUBLAS_OP_T, L->in, L->out, batch, m->one,
                             input, L->in, L->dz, L->out, m->zero, L->dW, L->in));
    bias_grad<<<blocks_for(L->out), THREADS, 0, m->stream>>>(L->dz, L->db, batch, L->out);
    LAUNCH_CHECK();
    if (l > 0) {
      /* ∂L/∂X = dZ W_sn (alpha = scale), then through the previous layer's ReLU. */
      dense_t *P = &m->layer[l - 1];
      CUBLAS_CHECK(cublasSgemm(m->blas, CUBLAS_OP_N, CUBLAS_OP_N, L->in, batch, L->out, L->scale,
                               L->W, L->in, L->dz, L->out, m->zero, P->dz, L->in));
      relu_backward<<<blocks_for(batch * P->out), THREADS, 0, m->stream>>>(P->dz, P->z,
                                                                           batch * P->out);
      LAUNCH_CHECK();
    }
    /* ∂L/∂W = scale · (G − ⟨G, W_sn⟩ u vᵀ), in place (dW holds G and receives ∂L/∂W). Uses the
     * u, v, σ of this layer's last forward, so it must come before the next forward. */
    if (!m->group) SN_CHECK(sn_backward(L->sn, L->W, L->dW, L->dW, 0, NULL, m->stream));
  }
  /* The same for every layer at once, with the buffers bound by sn_group_set_gradients. */
  if (m->group) SN_CHECK(sn_group_backward(m->group, 0, m->stream));
}

static void adam(model_t *m, int step) {
  float c1 = 1.0f - powf(kBeta1, (float)step), c2 = 1.0f - powf(kBeta2, (float)step);
  for (int l = 0; l < N_LAYERS; ++l) {
    dense_t *L = &m->layer[l];
    int nw = L->out * L->in;
    adam_step<<<blocks_for(nw), THREADS, 0, m->stream>>>(L->W, L->dW, L->mW, L->vW, nw,
                                                         kLearningRate, c1, c2);
    LAUNCH_CHECK();
    adam_step<<<blocks_for(L->out), THREADS, 0, m->stream>>>(L->b, L->db, L->mb, L->vb, L->out,
                                                             kLearningRate, c1, c2);
    LAUNCH_CHECK();
  }
}

/* ---- Host helpers: random numbers, data, the CPU check ------------------------------------- */

static uint64_t g_rng = 20240611u;  /* fixed seed: every run sees the same data and weights */

static double rng_uniform(void) {  /* splitmix64, then 53 bits in [0, 1) */
  uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static double rng_normal(void) {  /* Box–Muller */
  double u1 = 1.0 - rng_uniform(), u2 = rng_uniform();
  return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* Two interleaving half circles, centred near the origin, label t = +1 (upper) or −1 (lower).
 * Labels are drawn per point, so any slice of the data set is a shuffled batch. */
static void make_moons(float *X, float *t, int n) {
  for (int i = 0; i < n; ++i) {
    int upper = rng_uniform() < 0.5;
    double a = M_PI * rng_uniform();
    double x = upper ? cos(a) : 1.0 - cos(a), y = upper ? sin(a) : 0.5 - sin(a);
    X[2 * i + 0] = (float)(x - 0.5 + kNoise * rng_normal());
    X[2 * i + 1] = (float)(y - 0.25 + kNoise * rng_normal());
    t[i] = upper ? 1.0f : -1.0f;
  }
}

/* ‖W‖₂ of a row-major out x in matrix, in double, independently of specnorm: power iteration on
 * WᵀW from a fixed start, long enough to converge; ‖W v‖ approaches σ_max from below. */
static double cpu_spectral_norm(const float *W, int out, int in) {
  double *v = (double *)malloc(sizeof(double) * (size_t)in);
  double *t = (double *)malloc(sizeof(double) * (size_t)out);
  if (!v || !t) {
    fprintf(stderr, "out of host memory\n");
    exit(1);
  }
  for (int j = 0; j < in; ++j) v[j] = 1.0 + 0.01 * j;
  double sigma = 0.0;
  for (int it = 0; it < 2000; ++it) {
    double nv = 0.0, nt = 0.0;
    for (int j = 0; j < in; ++j) nv += v[j] * v[j];
    for (int j = 0; j < in; ++j) v[j] /= sqrt(nv);
    for (int i = 0; i < out; ++i) {  /* t = W v */
      t[i] = 0.0;
      for (int j = 0; j < in; ++j) t[i] += (double)W[i * in + j] * v[j];
      nt += t[i] * t[i];
    }
    sigma = sqrt(nt);
    for (int j = 0; j < in; ++j) {  /* v = Wᵀ t */
      v[j] = 0.0;
      for (int i = 0; i < out; ++i) v[j] += (double)W[i * in + j] * t[i];
    }
  }
  free(v);
  free(t);
  return sigma;
}

/* Forward on the whole data set with training = 0 (u, v kept, σ = uᵀ W v for the current W), then
 * print loss, accuracy, certified accuracy, σ and the CPU-checked ‖W_sn‖₂ of every layer.
 * Returns the accuracy. */
static double evaluate(model_t *m, int epoch, const float *d_X, const float *d_t, float *d_loss,
                       float *d_dlogit, float *h_logit, float *h_loss, const float *h_t) {
  forward(m, d_X, N_POINTS, 0);
  dense_t *last = &m->layer[N_LAYERS - 1];
  hinge_loss<<<blocks_for(N_POINTS), THREADS, 0, m->stream>>>(last->z, d_t, N_POINTS, kMargin,
                                                              d_loss, d_dlogit);
  LAUNCH_CHECK();
  size_t bytes = sizeof(float) * N_POINTS;
  CUDA_CHECK(cudaMemcpyAsync(h_logit, last->z, bytes, cudaMemcpyDeviceToHost, m->stream));
  CUDA_CHECK(cudaMemcpyAsync(h_loss, d_loss, bytes, cudaMemcpyDeviceToHost, m->stream));

  float sigma[N_LAYERS];
  double norm_sn[N_LAYERS], lipschitz = 1.0;
  for (int l = 0; l < N_LAYERS; ++l) {
    dense_t *L = &m->layer[l];
    float scale;
    SN_CHECK(sn_layer_get_sigma(L->sn, &sigma[l], NULL, m->stream));  /* blocks */
    SN_CHECK(sn_layer_get_scale(L->sn, &scale, m->stream));
    CUDA_CHECK(cudaMemcpyAsync(L->W_host, L->W, sizeof(float) * L->out * L->in,
                               cudaMemcpyDeviceToHost, m->stream));
    CUDA_CHECK(cudaStreamSynchronize(m->stream));
    norm_sn[l] = scale * cpu_spectral_norm(L->W_host, L->out, L->in);  /* ‖W_sn‖₂ = scale ‖W‖₂ */
    lipschitz *= norm_sn[l];  /* ReLU is 1-Lipschitz */
  }

  double loss = 0.0;
  int correct = 0, certified = 0;
  for (int i = 0; i < N_POINTS; ++i) {
    double tf = (double)h_t[i] * h_logit[i];
    loss += h_loss[i];
    correct += tf > 0.0;
    certified += tf > kRadius * lipschitz;  /* |f(x + δ) − f(x)| <= Lip ‖δ‖ */
  }
  double acc = (double)correct / N_POINTS;
  printf("%5d  %.4f  %5.1f%%  %5.1f%%  |", epoch, loss / N_POINTS, 100.0 * acc,
         100.0 * certified / N_POINTS);
  for (int l = 0; l < N_LAYERS; ++l) printf(" %7.4f", sigma[l]);
  printf("  |");
  for (int l = 0; l < N_LAYERS; ++l) printf(" %7.4f", norm_sn[l]);
  printf("  | %7.4f\n", lipschitz);
  return acc;
}

/* ---- main ----------------------------------------------------------------------------------- */

static int parse_int(const char *s, int lo, int hi, const char *what) {
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (!s[0] || *end || v < lo || v > hi) {
    fprintf(stderr, "train_lipschitz: %s must be an integer in [%d, %d], got '%s'\n", what, lo,
            hi, s);
    exit(1);
  }
  return (int)v;
}

int main(int argc, char **argv) {
  int epochs = 30, power_iterations = 1, grouped = 0;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--grouped")) {
      grouped = 1;
    } else if (!strcmp(argv[i], "--epochs") && i + 1 < argc) {
      epochs = parse_int(argv[++i], 1, 100000, "--epochs");
    } else if (!strcmp(argv[i], "--power-iterations") && i + 1 < argc) {
      power_iterations = parse_int(argv[++i], 1, 1000, "--power-iterations");
    } else {
      fprintf(stderr, "usage: %s [--epochs N] [--power-iterations K] [--grouped]\n", argv[0]);
      return strcmp(argv[i], "--help") ? 1 : 0;
    }
  }

  int n_devices = 0;
  cudaError_t de = cudaGetDeviceCount(&n_devices);
  if (de != cudaSuccess || n_devices == 0) {
    if (de != cudaSuccess)
      printf("no CUDA device (error %d: %s): this example needs a GPU; nothing to do\n", (int)de,
             cudaGetErrorString(de));
    else
      printf("no CUDA device (cudaGetDeviceCount returned 0): this example needs a GPU; "
             "nothing to do\n");
    return 0;
  }
  cudaDeviceProp prop;
  CUDA_CHECK(cudaSetDevice(0));
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  printf("specnorm %s, device 0: %s\n", sn_version_string(), prop.name);

  /* Data on the host, then on the device. */
  float *h_X = (float *)malloc(sizeof(float) * 2 * N_POINTS);
  float *h_t = (float *)malloc(sizeof(float) * N_POINTS);
  float *h_logit = (float *)malloc(sizeof(float) * N_POINTS);
  float *h_loss = (float *)malloc(sizeof(float) * N_POINTS);
  if (!h_X || !h_t || !h_logit || !h_loss) {
    fprintf(stderr, "out of host memory\n");
    return 1;
  }
  make_moons(h_X, h_t, N_POINTS);
  float *d_X = device_zeros(2 * N_POINTS), *d_t = device_zeros(N_POINTS);
  float *d_loss = device_zeros(N_POINTS), *d_dlogit = device_zeros(N_POINTS);
  CUDA_CHECK(cudaMemcpy(d_X, h_X, sizeof(float) * 2 * N_POINTS, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(d_t, h_t, sizeof(float) * N_POINTS, cudaMemcpyHostToDevice));

  model_t m;
  memset(&m, 0, sizeof m);
  CUDA_CHECK(cudaStreamCreate(&m.stream));
  CUBLAS_CHECK(cublasCreate(&m.blas));
  CUBLAS_CHECK(cublasSetStream(m.blas, m.stream));
  CUBLAS_CHECK(cublasSetPointerMode(m.blas, CUBLAS_POINTER_MODE_DEVICE));
  const float consts[2] = {0.0f, 1.0f};
  m.zero = device_zeros(2);
  m.one = m.zero + 1;
  CUDA_CHECK(cudaMemcpy(m.zero, consts, sizeof consts, cudaMemcpyHostToDevice));

  for (int l = 0; l < N_LAYERS; ++l) {
    dense_t *L = &m.layer[l];
    L->in = kWidths[l];
    L->out = kWidths[l + 1];
    size_t nw = (size_t)L->out * L->in;
    /* nn.Linear's default init: uniform in ±1/sqrt(in) for W, zero bias here. */
    L->W_host = (float *)malloc(sizeof(float) * nw);
    if (!L->W_host) {
      fprintf(stderr, "out of host memory\n");
      return 1;
    }
    for (size_t k = 0; k < nw; ++k)
      L->W_host[k] = (float)((2.0 * rng_uniform() - 1.0) / sqrt((double)L->in));
    L->W = device_zeros(nw);
    CUDA_CHECK(cudaMemcpy(L->W, L->W_host, sizeof(float) * nw, cudaMemcpyHostToDevice));
    L->b = device_zeros(L->out);
    L->dW = device_zeros(nw);
    L->db = device_zeros(L->out);
    L->mW = device_zeros(nw);
    L->vW = device_zeros(nw);
    L->mb = device_zeros(L->out);
    L->vb = device_zeros(L->out);
    L->z = device_zeros((size_t)N_POINTS * L->out);
    L->a = l < N_LAYERS - 1 ? device_zeros((size_t)N_POINTS * L->out) : L->z;
    L->dz = device_zeros((size_t)N_POINTS * L->out);

    /* The specnorm layer of W: shape {out, in}, dim 0 (rows are outputs), like
     * torch.nn.utils.parametrizations.spectral_norm(nn.Linear(in, out)). */
    const int64_t shape[2] = {L->out, L->in};
    sn_layer_desc_t desc;
    SN_CHECK(sn_layer_desc_init(&desc, 2, shape));
    desc.backend = SN_BACKEND_CUDA;
    desc.device = 0;
    desc.n_power_iterations = power_iterations;
    desc.seed = (uint64_t)l + 1;
    SN_CHECK(sn_layer_create(&L->sn, &desc));
    SN_CHECK(sn_layer_scale_ptr(L->sn, &L->scale));
  }
  if (grouped) {
    /* One group of the three layers: W_sn NULL (scale-only forwards); the backward's G and dW are
     * both dW, in place, as in the per-layer calls. */
    sn_layer_t *layers[N_LAYERS];
    const void *W[N_LAYERS], *G[N_LAYERS];
    void *dW[N_LAYERS];
    for (int l = 0; l < N_LAYERS; ++l) {
      layers[l] = m.layer[l].sn;
      W[l] = m.layer[l].W;
      G[l] = dW[l] = m.layer[l].dW;
    }
    SN_CHECK(sn_group_create(&m.group, layers, W, NULL, N_LAYERS));
    SN_CHECK(sn_group_set_gradients(m.group, G, dW, NULL));
  }

  printf("data: two moons, %d points (noise %.2f); model 2 -> 64 -> 64 -> 1, ReLU\n", N_POINTS,
         kNoise);
  printf("spectral norm on every weight, %d power iteration(s) per step%s; Adam lr %g, batch %d, "
         "hinge loss with margin %.2f\n",
         power_iterations, grouped ? ", the layers as one group" : "", kLearningRate, BATCH,
         kMargin);
  printf("cert: correct with margin > %.2f x Lipschitz bound (robust to any perturbation of "
         "norm %.2f)\n\n",
         kRadius, kRadius);
  printf("%5s  %6s  %6s  %6s  |%-26s|%-26s| %s\n", "epoch", "loss", "acc", "cert",
         "  sigma (specnorm)", "  ||W_sn||_2 (CPU check)", "Lipschitz bound");

  cudaEvent_t t0, t1;
  CUDA_CHECK(cudaEventCreate(&t0));
  CUDA_CHECK(cudaEventCreate(&t1));
  CUDA_CHECK(cudaEventRecord(t0, m.stream));
  double acc = 0.0;
  int step = 0;
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    for (int first = 0; first + BATCH <= N_POINTS; first += BATCH) {
      const float *x = d_X + 2 * first;  /* rows first .. first + BATCH − 1 */
      forward(&m, x, BATCH, 1);
      hinge_loss<<<blocks_for(BATCH), THREADS, 0, m.stream>>>(
          m.layer[N_LAYERS - 1].z, d_t + first, BATCH, kMargin, NULL,
          m.layer[N_LAYERS - 1].dz);
      LAUNCH_CHECK();
      backward(&m, x, BATCH);
      adam(&m, ++step);
    }
    acc = evaluate(&m, epoch, d_X, d_t, d_loss, d_dlogit, h_logit, h_loss, h_t);
  }
  CUDA_CHECK(cudaEventRecord(t1, m.stream));
  CUDA_CHECK(cudaEventSynchronize(t1));
  float ms = 0.0f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1));
  printf("\n%d epochs (%d steps) in %.2f s, CPU checks included; final accuracy %.1f%%\n", epochs,
         step, ms / 1000.0f, 100.0 * acc);
  /* Which kernels the spectral norm ran (sn_layer_get_paths: recorded on the host, no sync). */
  for (int l = 0; l < (m.group ? 1 : N_LAYERS); ++l) {
    sn_paths_t p;
    if (m.group)
      SN_CHECK(sn_group_get_paths(m.group, &p));
    else
      SN_CHECK(sn_layer_get_paths(m.layer[l].sn, &p));
    printf("%s %d: scale-only forward %s, eval forward %s, backward %s", m.group ? "group" : "layer", l,
           sn_path_name(p.scale_only), sn_path_name(p.eval), sn_path_name(p.backward));
    if (p.dropped) printf(" (dropped 0x%x: sn_dropped_t)", p.dropped);
    printf("\n");
  }

  sn_group_destroy(m.group); /* before its layers */
  for (int l = 0; l < N_LAYERS; ++l) {
    dense_t *L = &m.layer[l];
    sn_layer_destroy(L->sn);
    float *bufs[] = {L->W, L->b, L->dW, L->db, L->mW, L->vW, L->mb, L->vb, L->z, L->dz};
    for (size_t k = 0; k < sizeof bufs / sizeof bufs[0]; ++k) CUDA_CHECK(cudaFree(bufs[k]));
    if (L->a != L->z) CUDA_CHECK(cudaFree(L->a));
    free(L->W_host);
  }
  CUDA_CHECK(cudaEventDestroy(t0));
  CUDA_CHECK(cudaEventDestroy(t1));
  CUBLAS_CHECK(cublasDestroy(m.blas));
  CUDA_CHECK(cudaStreamDestroy(m.stream));
  CUDA_CHECK(cudaFree(m.zero));
  CUDA_CHECK(cudaFree(d_X));
  CUDA_CHECK(cudaFree(d_t));
  CUDA_CHECK(cudaFree(d_loss));
  CUDA_CHECK(cudaFree(d_dlogit));
  free(h_X);
  free(h_t);
  free(h_logit);
  free(h_loss);

  if (acc < 0.95) {
    fprintf(stderr, "train_lipschitz: final accuracy %.1f%% is below 95%%: training failed\n",
            100.0 * acc);
    return 1;
  }
  return 0;
}
