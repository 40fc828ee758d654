/* quickstart: specnorm from plain C on the CPU backend (no GPU, no CUDA code).
 *
 * A spectrally normalized linear map W_sn (8 x 16, as nn.Linear(16, 8).weight) learns a teacher
 * matrix T of spectral norm 1 from examples (x, T x) by gradient descent on the raw weight W:
 *   forward   W_sn = W / sigma          sn_forward (training: one power iteration a step)
 *   loss      L = 1/(2n) sum ||W_sn x - T x||^2, G = dL/dW_sn = 1/n sum (W_sn x - T x) x^T
 *   backward  dW = dL/dW               sn_backward (the sigma term included)
 *   update    W -= 2 dW
 * Then it checks what specnorm promises: ||W_sn||_2 = 1 (computed here independently, by 500
 * power iterations in double), the loss down by 10^4 at least (T is reachable: its norm is 1),
 * and a checkpoint that restores the layer's state bit for bit. Exit status 0 when all hold.
 * A CUDA layer takes the same specnorm calls (d.backend = SN_BACKEND_CUDA) on device buffers and a
 * stream; the loss, its gradient and the update would then be kernels of the caller's. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <specnorm.h>

enum { H = 8, W_COLS = 16, N = 64, STEPS = 300 };

#define CHECK(call)                                                                     \
  do {                                                                                  \
    sn_status_t st_ = (call);                                                           \
    if (st_ != SN_SUCCESS) {                                                            \
      fprintf(stderr, "%s failed: %s: %s\n", #call, sn_status_name(st_), sn_last_error_message()); \
      return 1;                                                                         \
    }                                                                                   \
  } while (0)

/* A small deterministic generator: uniform in [-1, 1). */
static double uniform(uint64_t *s) {
  *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
  return (double)(*s >> 11) / 4503599627370496.0 - 1.0;
}

/* ||M||_2 of an h x w row-major matrix, by power iteration in double. */
static double spectral_norm(const float *M, int h, int w) {
  double v[W_COLS], t[H], s = 0;
  for (int j = 0; j < w; ++j) v[j] = 1.0;
  for (int it = 0; it < 500; ++it) {
    double nv = 0;
    for (int i = 0; i < h; ++i) {
      t[i] = 0;
      for (int j = 0; j < w; ++j) t[i] += M[i * w + j] * v[j];
    }
    for (int j = 0; j < w; ++j) {
      v[j] = 0;
      for (int i = 0; i < h; ++i) v[j] += M[i * w + j] * t[i];
      nv += v[j] * v[j];
    }
    nv = sqrt(nv);
    for (int j = 0; j < w; ++j) v[j] /= nv;
    s = sqrt(nv); /* ||M^T M v_old|| -> sigma^2 */
  }
  return s;
}

int main(void) {
  static float T[H * W_COLS], W[H * W_COLS], W_sn[H * W_COLS], G[H * W_COLS], dW[H * W_COLS];
  static float X[N * W_COLS], Y[N * H];
  uint64_t seed = 7;
  for (int k = 0; k < H * W_COLS; ++k) T[k] = (float)uniform(&seed);
  const double t_norm = spectral_norm(T, H, W_COLS);
  for (int k = 0; k < H * W_COLS; ++k) T[k] = (float)(T[k] / t_norm); /* ||T||_2 = 1 */
  for (int k = 0; k < H * W_COLS; ++k) W[k] = (float)uniform(&seed);
  for (int k = 0; k < N * W_COLS; ++k) X[k] = (float)uniform(&seed);
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < H; ++i) {
      double y = 0;
      for (int j = 0; j < W_COLS; ++j) y += T[i * W_COLS + j] * X[n * W_COLS + j];
      Y[n * H + i] = (float)y;
    }

  sn_layer_desc_t d;
  const int64_t shape[2] = {H, W_COLS};
  CHECK(sn_layer_desc_init(&d, 2, shape)); /* PyTorch's defaults: dim 0, 1 iteration, eps 1e-12 */
  d.backend = SN_BACKEND_CPU;              /* host buffers, no stream */
  sn_layer_t *layer = NULL;
  CHECK(sn_layer_create(&layer, &d));

  double first_loss = -1, loss = 0;
  for (int step = 0; step < STEPS; ++step) {
    CHECK(sn_forward(layer, W, W_sn, /*training=*/1, NULL));
    memset(G, 0, sizeof G);
    loss = 0;
    for (int n = 0; n < N; ++n)
      for (int i = 0; i < H; ++i) {
        double r = -Y[n * H + i];
        for (int j = 0; j < W_COLS; ++j) r += W_sn[i * W_COLS + j] * X[n * W_COLS + j];
        loss += 0.5 * r * r / N;
        for (int j = 0; j < W_COLS; ++j) G[i * W_COLS + j] += (float)(r * X[n * W_COLS + j] / N);
      }
    if (first_loss < 0) first_loss = loss;
    CHECK(sn_backward(layer, W, G, dW, 0, NULL, NULL));
    for (int k = 0; k < H * W_COLS; ++k) W[k] -= 2.0f * dW[k];
    if (step % 50 == 0 || step == STEPS - 1) {
      float sigma = 0;
      CHECK(sn_layer_get_sigma(layer, &sigma, NULL, NULL));
      printf("step %3d  loss %.3e  sigma %.5f  ||W_sn||_2 %.6f\n", step, loss, sigma,
             spectral_norm(W_sn, H, W_COLS));
    }
  }

  /* The state through a checkpoint: a second layer continues exactly where the first one is. */
  size_t bytes = 0, written = 0;
  CHECK(sn_layer_checkpoint_size(layer, &bytes));
  unsigned char *blob = malloc(bytes);
  sn_layer_t *restored = NULL;
  if (!blob) return 1;
  CHECK(sn_layer_save(layer, blob, bytes, &written, NULL));
  CHECK(sn_layer_create(&restored, &d));
  CHECK(sn_layer_load(restored, blob, written, NULL));
  free(blob);
  float a[H * W_COLS], b[H * W_COLS];
  CHECK(sn_forward(layer, W, a, 1, NULL));
  CHECK(sn_forward(restored, W, b, 1, NULL));
  const int same = memcmp(a, b, sizeof a) == 0;

  const double norm = spectral_norm(a, H, W_COLS);
  printf("final: loss %.2e (from %.2e), ||W_sn||_2 %.6f, checkpoint %s\n", loss, first_loss, norm,
         same ? "continues bitwise" : "DIFFERS");
  sn_layer_destroy(restored);
  sn_layer_destroy(layer);
  const int ok = same && fabs(norm - 1.0) < 1e-3 && loss < 1e-4 * first_loss;
  if (!ok) fprintf(stderr, "quickstart: a check failed\n");
  return ok ? 0 : 1;
}
