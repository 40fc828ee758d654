/* Downstream consumer of an installed specnorm: checks that the installed header and library
 * agree on the version and that a CPU-backend layer works end to end (no GPU needed).
 * Exit status 0 on success, 1 on any failure, with a message on stderr. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <specnorm.h>

#define CHECK_SN(call)                                                                  \
  do {                                                                                  \
    sn_status_t st_ = (call);                                                           \
    if (st_ != SN_SUCCESS) {                                                            \
      fprintf(stderr, "consumer: %s failed: %s (%s)\n", #call, sn_status_name(st_),     \
              sn_last_error_message());                                                 \
      return 1;                                                                         \
    }                                                                                   \
  } while (0)

enum { H = 4, W = 6 };

int main(void) {
  if (sn_version_number() != SN_VERSION_NUMBER) {
    fprintf(stderr, "consumer: sn_version_number() = %d but the header says %d\n",
            sn_version_number(), SN_VERSION_NUMBER);
    return 1;
  }
  if (strcmp(sn_version_string(), SN_VERSION_STRING) != 0) {
    fprintf(stderr, "consumer: sn_version_string() = \"%s\" but the header says \"%s\"\n",
            sn_version_string(), SN_VERSION_STRING);
    return 1;
  }

  /* A rank-one weight W = a bᵀ: its only nonzero singular value is |a|·|b|, which power
   * iteration finds exactly after one step from any start not orthogonal to a and b. */
  const float a[H] = {1.0f, -2.0f, 0.5f, 3.0f};
  const float b[W] = {0.25f, 1.0f, -1.5f, 2.0f, 0.0f, -0.75f};
  float weight[H * W], weight_sn[H * W];
  double na = 0.0, nb = 0.0;
  for (int i = 0; i < H; ++i) na += (double)a[i] * a[i];
  for (int j = 0; j < W; ++j) nb += (double)b[j] * b[j];
  for (int i = 0; i < H; ++i)
    for (int j = 0; j < W; ++j) weight[i * W + j] = a[i] * b[j];
  const double sigma_exact = sqrt(na) * sqrt(nb);

  const int64_t shape[2] = {H, W};
  sn_layer_desc_t desc;
  CHECK_SN(sn_layer_desc_init(&desc, 2, shape));
  desc.backend = SN_BACKEND_CPU;

  sn_layer_t *layer = NULL;
  CHECK_SN(sn_layer_create(&layer, &desc));

  int64_t h = 0, w = 0;
  sn_status_t st = sn_layer_get_dims(layer, &h, &w);
  if (st != SN_SUCCESS || h != H || w != W) {
    fprintf(stderr, "consumer: sn_layer_get_dims gave %s, h=%lld w=%lld\n", sn_status_name(st),
            (long long)h, (long long)w);
    sn_layer_destroy(layer);
    return 1;
  }

  st = sn_forward(layer, weight, weight_sn, 1, NULL);
  if (st != SN_SUCCESS) {
    fprintf(stderr, "consumer: sn_forward failed: %s (%s)\n", sn_status_name(st),
            sn_last_error_message());
    sn_layer_destroy(layer);
    return 1;
  }

  /* The kernels the call ran, as the installed library records them (C linkage of the enum API). */
  sn_paths_t paths;
  memset(&paths, 0, sizeof paths);
  st = sn_layer_get_paths(layer, &paths);
  if (st == SN_SUCCESS && strcmp(sn_path_name((sn_path_t)-1), "unknown") != 0) {
    fprintf(stderr, "consumer: sn_path_name(-1) is not \"unknown\"\n");
    sn_layer_destroy(layer);
    return 1;
  }
  if (st != SN_SUCCESS || paths.train != SN_PATH_CPU || strcmp(sn_path_name(paths.train), "cpu") != 0) {
    fprintf(stderr, "consumer: sn_layer_get_paths gave %s, train path %s\n", sn_status_name(st),
            sn_path_name(paths.train));
    sn_layer_destroy(layer);
    return 1;
  }

  float sigma = 0.0f, inv_sigma = 0.0f;
  st = sn_layer_get_sigma(layer, &sigma, &inv_sigma, NULL);
  sn_layer_destroy(layer);
  if (st != SN_SUCCESS) {
    fprintf(stderr, "consumer: sn_layer_get_sigma failed: %s\n", sn_status_name(st));
    return 1;
  }

  int ok = isfinite(sigma) && fabs(sigma - sigma_exact) <= 1e-4 * sigma_exact;
  for (int k = 0; ok && k < H * W; ++k)
    ok = fabs(weight_sn[k] - weight[k] / sigma_exact) <= 1e-5 + 1e-4 * fabs(weight[k] / sigma_exact);
  if (!ok) {
    fprintf(stderr, "consumer: wrong result: sigma = %.9g (expected %.9g), W_sn[0] = %.9g "
                    "(expected %.9g)\n",
            (double)sigma, sigma_exact, (double)weight_sn[0], weight[0] / sigma_exact);
    return 1;
  }

  printf("consumer: specnorm %s OK (CPU backend, sigma = %.6f)\n", sn_version_string(),
         (double)sigma);
  return 0;
}
