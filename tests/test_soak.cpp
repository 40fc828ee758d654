// Soak tests on the CPU backend (label "soak", built with -DSPECNORM_SOAK_TESTS=ON; CI runs them
// in the AddressSanitizer build, whose LeakSanitizer checks every allocation at exit):
//   - a long training run: u and v stay unit vectors, σ finite and stable, for SN_SOAK_STEPS
//     (default 100000) steps of a real loop (forward, backward, SGD step on W);
//   - SN_SOAK_LAYERS (default 100000) layers created, used and destroyed: nothing leaks.
#include <cmath>

#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
#endif

#include "test_util.h"

using namespace sntest;

namespace {

int64_t env_count(const char *name, int64_t fallback) {
  const char *s = std::getenv(name);
  return s && *s ? std::strtoll(s, nullptr, 10) : fallback;
}

double norm(const std::vector<float> &x) {
  double s = 0;
  for (float e : x) s += double(e) * e;
  return std::sqrt(s);
}

// The largest singular value of the h × w matrix W, by 2000 double-precision power iterations.
double true_sigma(const std::vector<float> &W, int64_t h, int64_t w) {
  const int64_t shape[2] = {h, w};
  const sn_view_t vw = sn_ref_view(2, shape, 0);
  std::vector<double> u(size_t(h), 1.0), v(size_t(w), 1.0);
  double s = 0;
  for (int k = 0; k < 2000; ++k) s = sn_ref_iterate(W.data(), SN_DTYPE_FLOAT32, vw, u.data(), v.data(), 1e-12, SN_ORDER_U_FIRST);
  return s;
}

// Bytes in use by malloc (glibc). Under AddressSanitizer this reports nothing useful (its
// allocator replaces glibc's), and LeakSanitizer does the check instead.
size_t heap_in_use() {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  return mallinfo2().uordblks;
#else
  return 0;
#endif
}

}  // namespace

TEST(Soak, TrainingStaysUnitNormAndStable) {
  const int64_t steps = env_count("SN_SOAK_STEPS", 100000);
  const int64_t h = 8, w = 6;
  Rng rng(20240601);
  LayerPtr layer(make_desc({h, w}, SN_BACKEND_CPU));
  ASSERT_TRUE(layer.p);
  // Train W_sn towards a fixed target T with loss ½‖W_sn − T‖²: G = W_sn − T, W -= lr · dW, plus a
  // slow random drift, so W keeps changing slowly for the whole run.
  std::vector<float> W = gapped_matrix(rng, h, w), T = rng.normals(h * w, 0.3f);
  std::vector<float> Wsn(W.size()), G(W.size()), dW(W.size());
  const float lr = 1e-3f, drift = 1e-4f;
  State s;
  s.u.resize(size_t(h));
  s.v.resize(size_t(w));
  double prev_sigma = -1, worst_u = 0, worst_v = 0, worst_jump = 0, sigma_min = INFINITY, sigma_max = 0;
  for (int64_t step = 0; step < steps; ++step) {
    ASSERT_EQ(sn_forward(layer, W.data(), Wsn.data(), 1, nullptr), SN_SUCCESS) << sn_last_error_message();
    for (size_t k = 0; k < W.size(); ++k) G[k] = Wsn[k] - T[k];
    ASSERT_EQ(sn_backward(layer, W.data(), G.data(), dW.data(), 0, nullptr, nullptr), SN_SUCCESS);
    for (size_t k = 0; k < W.size(); ++k) W[k] -= lr * dW[k] + drift * rng.normal();
    ASSERT_EQ(sn_layer_get_state(layer, s.u.data(), s.v.data(), &s.sigma, nullptr, nullptr), SN_SUCCESS);
    const double eu = std::fabs(norm(s.u) - 1), ev = std::fabs(norm(s.v) - 1);
    worst_u = std::max(worst_u, eu);
    worst_v = std::max(worst_v, ev);
    ASSERT_LE(eu, 1e-6) << "step " << step;
    ASSERT_LE(ev, 1e-6) << "step " << step;
    ASSERT_TRUE(std::isfinite(s.sigma) && s.sigma > 0) << "step " << step << ": sigma " << s.sigma;
    if (prev_sigma > 0) {
      // W moves by about lr·‖dW‖ + drift per step; σ may move by no more than a few percent.
      const double jump = std::fabs(s.sigma - prev_sigma) / prev_sigma;
      worst_jump = std::max(worst_jump, jump);
      ASSERT_LE(jump, 0.02) << "step " << step << ": sigma " << prev_sigma << " -> " << s.sigma;
    }
    prev_sigma = s.sigma;
    sigma_min = std::min(sigma_min, double(s.sigma));
    sigma_max = std::max(sigma_max, double(s.sigma));
  }
  // After the whole run the carried estimate still tracks the true σ of the current W.
  const double exact = true_sigma(W, h, w);
  EXPECT_NEAR(prev_sigma, exact, 1e-3 * exact);
  RecordProperty("steps", std::to_string(steps));
  std::printf("soak: %lld steps, max | ||u|| - 1 | = %.3g, max | ||v|| - 1 | = %.3g, max relative sigma step = "
              "%.3g, sigma in [%.6g, %.6g], final %.7g vs exact %.7g\n",
              (long long)steps, worst_u, worst_v, worst_jump, sigma_min, sigma_max, prev_sigma, exact);
}

TEST(Soak, CreateDestroyLeaksNothing) {
  const int64_t count = env_count("SN_SOAK_LAYERS", 100000);
  Rng rng(7);
  std::vector<float> W(64 * 3), out(W.size()), G(W.size());
  for (auto &x : W) x = rng.normal();
  for (auto &x : G) x = rng.normal();
  std::vector<unsigned char> blob(4096);
  // One round of every kind of use: valid layers of several shapes, used or not, checkpointed,
  // and invalid descriptors that fail inside create.
  auto round = [&](int64_t i) {
    const int64_t shapes[4][3] = {{8, 6, 1}, {3, 4, 2}, {64, 1, 1}, {5, 7, 1}};
    const int64_t *sh = shapes[i % 4];
    sn_layer_desc_t d;
    ASSERT_EQ(sn_layer_desc_init(&d, i % 8 == 2 ? 1 : 3, sh), SN_SUCCESS);
    d.backend = SN_BACKEND_CPU;
    d.dtype = sn_dtype_t(i % 3);
    d.seed = uint64_t(i);
    d.warmup_iterations = int(i % 4);
    if (i % 16 == 5) d.eps = -1.f;  // invalid: fails after nothing was allocated
    if (i % 16 == 9) d.dim = 7;     // invalid
    sn_layer_t *l = nullptr;
    const sn_status_t st = sn_layer_create(&l, &d);
    if (i % 16 == 5 || i % 16 == 9) {
      ASSERT_NE(st, SN_SUCCESS);
      ASSERT_EQ(l, nullptr);
      return;
    }
    ASSERT_EQ(st, SN_SUCCESS) << sn_last_error_message();
    if (i % 3 != 0) {
      ASSERT_EQ(sn_forward(l, W.data(), out.data(), int(i % 2), nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_backward(l, W.data(), G.data(), out.data(), 0, nullptr, nullptr), SN_SUCCESS);
    }
    if (i % 5 == 0) {
      size_t n = 0;
      ASSERT_EQ(sn_layer_save(l, blob.data(), blob.size(), &n, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_layer_load(l, blob.data(), n, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_layer_load(l, blob.data(), n - 1, nullptr), SN_ERROR_BAD_CHECKPOINT);
    }
    if (i % 7 == 0) {
      ASSERT_EQ(sn_layer_reset(l, uint64_t(i) + 1, nullptr), SN_SUCCESS);
    }
    sn_layer_destroy(l);
  };
  for (int64_t i = 0; i < 1000; ++i) round(i);  // first-use allocations (CUDA runtime, stdio) out of the way
  const size_t before = heap_in_use();
  for (int64_t i = 0; i < count; ++i) {
    round(i);
    if (HasFatalFailure()) return;
  }
  const size_t after = heap_in_use();
  // Exact under glibc's allocator: every layer's memory went back. (0 == 0 under sanitizers,
  // where LeakSanitizer checks at exit instead.)
  EXPECT_EQ(after, before) << "heap in use grew by " << (long long)(after - before) << " bytes over "
                           << count << " layers";
  std::printf("soak: %lld layers created and destroyed, heap in use %zu -> %zu bytes\n", (long long)count,
              before, after);
}
