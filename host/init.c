/* The initial u and v: N(randn(n)) from a seed, computed on the host so that every backend starts
 * from bitwise the same vectors. splitmix64 feeds a Box-Muller transform. */
#include <math.h>

#include "sn_internal.h"

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Uniform in (0, 1]: never 0, so log() is finite. */
static double uniform(uint64_t *state) {
  return ((double)(splitmix64(state) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

void sn__init_vector(float *out, int64_t n, uint64_t seed, uint64_t stream_id) {
  uint64_t state = seed ^ (0xD1B54A32D192ED03ull * (stream_id + 1));
  const double two_pi = 6.283185307179586476925286766559;
  double sq = 0.0;
  for (int64_t k = 0; k < n; ++k) {
    double r = sqrt(-2.0 * log(uniform(&state)));
    double g = r * cos(two_pi * uniform(&state));
    out[k] = (float)g;
    sq += (double)out[k] * (double)out[k];
  }
  double norm = sqrt(sq);
  /* A draw of all zeros is impossible in practice; keep it finite anyway. */
  if (!(norm > 0.0)) {
    for (int64_t k = 0; k < n; ++k) out[k] = k == 0 ? 1.0f : 0.0f;
    return;
  }
  for (int64_t k = 0; k < n; ++k) out[k] = (float)((double)out[k] / norm);
}
