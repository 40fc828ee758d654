// Degenerate and non-finite inputs on both backends (README, "Degenerate steps"): the state keeps
// its last good values, the health word records what happened, and a zero step recovers on the
// next training forward from the all-ones vector, without a host round trip.
#include <cuda_runtime.h>

#include <cstring>
#include <memory>

#include "test_util.h"

using namespace sntest;

namespace {

// A weight buffer in the backend's memory, set from the host.
struct Buf {
  sn_backend_t backend;
  std::vector<float> host;
  float *dev = nullptr;
  Buf(sn_backend_t b, size_t n) : backend(b), host(n) {
    if (b == SN_BACKEND_CUDA) {
      EXPECT_EQ(cudaMalloc(&dev, n * 4), cudaSuccess);
    }
  }
  ~Buf() { cudaFree(dev); }
  float *ptr() { return backend == SN_BACKEND_CUDA ? dev : host.data(); }
  void set(const std::vector<float> &x) {
    host = x;
    if (dev) {
      EXPECT_EQ(cudaMemcpy(dev, x.data(), x.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  std::vector<float> get() {
    if (dev) {
      EXPECT_EQ(cudaMemcpy(host.data(), dev, host.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return host;
  }
};

uint32_t health(sn_layer_t *l, int clear = 0) {
  uint32_t h = 0;
  EXPECT_EQ(sn_layer_get_health(l, &h, clear, nullptr), SN_SUCCESS) << sn_last_error_message();
  return h;
}

// (backend, algorithm, SPECNORM_TUNE knobs the test's layers are created under: "" for none)
class Health : public ::testing::TestWithParam<std::tuple<sn_backend_t, sn_algo_t, const char *>> {
 protected:
  void SetUp() override {
    if (std::get<0>(GetParam()) == SN_BACKEND_CUDA) REQUIRE_GPU();
    if (std::strstr(std::get<2>(GetParam()), "op_onchip_grid=") && !cooperative_launch_here())
      GTEST_SKIP() << "no cooperative launch on this device: no layer on chip over the grid";
    if (*std::get<2>(GetParam()))
      tune_ = std::make_unique<ScopedEnv>("SPECNORM_TUNE", (tune_prefix() + std::get<2>(GetParam())).c_str());
  }
  std::unique_ptr<ScopedEnv> tune_;
  // Under op_onchip=1 (op_onchip_grid=2), that a warmed-up training forward of l, and an eval one,
  // is the on-chip kernel of a cluster (of the grid) (a layer this small fits any device), so that
  // these cases test it and not a copy of the default.
  void expect_on_chip_if_tuned(sn_layer_t *l, const void *W, void *out) {
    const char *tune = std::get<2>(GetParam());
    const char *kernel = std::strstr(tune, "op_onchip=1")        ? "group_on_chip_kernel"
                         : std::strstr(tune, "op_onchip_grid=2") ? "on_chip_grid_kernel"
                                                                 : nullptr;
    if (!kernel) return;
    for (int training : {1, 0}) {
      const std::vector<std::string> names =
          captured_kernels([&](cudaStream_t s) { return sn_forward(l, W, out, training, s); });
      EXPECT_EQ(names.size(), 1u) << (training ? "training" : "eval");
      EXPECT_TRUE(any_matches(names, kernel)) << (names.empty() ? "?" : names[0]);
    }
  }
  sn_layer_desc_t desc(int64_t h, int64_t w) {
    sn_layer_desc_t d = make_desc({h, w}, std::get<0>(GetParam()));
    d.algo = std::get<1>(GetParam());
    return d;
  }
};

}  // namespace

TEST_P(Health, NonFiniteWeightKeepsTheState) {
  SN_SEEDED_RNG();
  const int64_t h = 64, w = 48;
  LayerPtr l(desc(h, w));
  Buf W(std::get<0>(GetParam()), static_cast<size_t>(h * w)), out(std::get<0>(GetParam()), static_cast<size_t>(h * w));
  std::vector<float> good = gapped_matrix(rng, h, w);
  W.set(good);
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  const State before = get_state(l);
  EXPECT_EQ(health(l), 0u);
  for (float bad : {NAN, INFINITY}) {
    std::vector<float> x = good;
    x[77] = bad;
    W.set(x);
    for (int training : {1, 0}) {
      ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), training, nullptr), SN_SUCCESS);
      EXPECT_TRUE(same_state(get_state(l), before)) << "a non-finite σ never reaches the state";
      EXPECT_EQ(health(l, 1), uint32_t(SN_HEALTH_NONFINITE));
      // W_sn = W / (last good σ): finite where W is, non-finite only where W is.
      const std::vector<float> o = out.get();
      for (size_t k = 0; k < o.size(); ++k) {
        if (k == 77) {
          EXPECT_FALSE(std::isfinite(o[k]));
        } else {
          ASSERT_EQ(o[k], good[k] / before.sigma) << k;
        }
      }
    }
  }
  EXPECT_EQ(health(l), 0u) << "cleared";
  expect_on_chip_if_tuned(l.p, W.ptr(), out.ptr());
}

TEST_P(Health, ZeroStepRecoversFromOnes) {
  SN_SEEDED_RNG();
  const int64_t h = 40, w = 24;
  LayerPtr l(desc(h, w));
  const sn_backend_t be = std::get<0>(GetParam());
  Buf W(be, static_cast<size_t>(h * w)), out(be, static_cast<size_t>(h * w));
  // v in the null space of a rank-1 W = a bᵀ, exactly (no rounding): v = e_0 and b_0 = 0, so
  // M v = 0 and σ = 0.
  State s0 = get_state(l);
  std::vector<float> v;
  double sigma_M = 0;
  const std::vector<float> M = rank1_nulling_e0(rng, h, w, &v, &sigma_M);
  ASSERT_EQ(sn_layer_set_state(l, s0.u.data(), v.data(), 0.f, 1, nullptr), SN_SUCCESS);
  W.set(M);
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  State s1 = get_state(l);
  EXPECT_TRUE(bitwise_equal(s1.v, v)) << "zero step: state kept";
  EXPECT_EQ(s1.sigma, 0.f);
  // Read and cleared: clearing the bits keeps the internal restart request (a mutation that
  // dropped it went unseen: the next forward iterated from the v that nulls M again).
  EXPECT_EQ(health(l, 1), uint32_t(SN_HEALTH_ZERO));
  for (float x : out.get()) ASSERT_EQ(x, 0.f) << "no σ yet: W · 0";
  // Next training forward restarts from ones and recovers: σ of the rank-1 M.
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  State s2 = get_state(l);
  EXPECT_NEAR(s2.sigma / sigma_M, 1.0, 1e-5);
  EXPECT_EQ(health(l, 1), uint32_t(SN_HEALTH_RECOVERED));
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(health(l), 0u) << "a normal step after recovery";
}

// A γ bound that is NaN or infinite is recorded (SN_HEALTH_SCALE), not silent: u, v and σ go on
// as for a layer without γ (bit for bit), the scale and W_sn are not finite; the bit stays until
// cleared, and a finite γ again gives finite results. Eval and scale-only forwards record it too,
// and so does a finite γ whose γ / σ passes float's range.
TEST_P(Health, NonFiniteScaleIsRecorded) {
  SN_SEEDED_RNG();
  const int64_t h = 36, w = 20;
  const sn_backend_t be = std::get<0>(GetParam());
  LayerPtr l(desc(h, w)), plain(desc(h, w));
  Buf W(be, static_cast<size_t>(h * w)), out(be, static_cast<size_t>(h * w)),
      o2(be, static_cast<size_t>(h * w)), gamma(be, 1);
  W.set(gapped_matrix(rng, h, w));
  ASSERT_EQ(sn_layer_set_gamma(l, gamma.ptr()), SN_SUCCESS) << sn_last_error_message();
  for (const float g : {NAN, INFINITY, -INFINITY}) {
    SCOPED_TRACE("gamma " + std::to_string(g));
    gamma.set({g});
    ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_forward(plain, W.ptr(), o2.ptr(), 1, nullptr), SN_SUCCESS);
    EXPECT_TRUE(same_state(get_state(l), get_state(plain)));
    EXPECT_EQ(health(l), uint32_t(SN_HEALTH_SCALE));
    EXPECT_EQ(health(plain), 0u);
    float scale = 0.f;
    ASSERT_EQ(sn_layer_get_scale(l, &scale, nullptr), SN_SUCCESS);
    EXPECT_FALSE(std::isfinite(scale));
    const std::vector<float> o = out.get();
    EXPECT_TRUE(std::none_of(o.begin(), o.end(), [](float x) { return std::isfinite(x); }));
    health(l, 1);  // cleared for the next value
  }
  gamma.set({NAN});
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 0, nullptr), SN_SUCCESS);
  EXPECT_EQ(health(l, 1), uint32_t(SN_HEALTH_SCALE)) << "eval";
  ASSERT_EQ(sn_forward_scale_only(l, W.ptr(), 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(health(l), uint32_t(SN_HEALTH_SCALE)) << "scale only";
  gamma.set({0.5f});
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(health(l), uint32_t(SN_HEALTH_SCALE)) << "sticky until cleared";
  const std::vector<float> o = out.get();
  EXPECT_TRUE(std::all_of(o.begin(), o.end(), [](float x) { return std::isfinite(x); }));
  EXPECT_EQ(health(l, 1), uint32_t(SN_HEALTH_SCALE));
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(health(l), 0u);
  // γ = 1e38 over a σ of about 1e-3: the scale overflows.
  std::vector<float> small = gapped_matrix(rng, h, w);
  for (float &x : small) x *= 1e-4f;
  W.set(small);
  gamma.set({1e38f});
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  ASSERT_LT(get_state(l).sigma, 1.f);
  float scale = 0.f;
  ASSERT_EQ(sn_layer_get_scale(l, &scale, nullptr), SN_SUCCESS);
  EXPECT_FALSE(std::isfinite(scale));
  EXPECT_EQ(health(l), uint32_t(SN_HEALTH_SCALE)) << "overflow";
}

TEST_P(Health, ZeroVectorFromSetStateRecoversImmediately) {
  SN_SEEDED_RNG();
  const int64_t h = 33, w = 20;
  LayerPtr l(desc(h, w));
  const sn_backend_t be = std::get<0>(GetParam());
  Buf W(be, static_cast<size_t>(h * w)), out(be, static_cast<size_t>(h * w));
  const std::vector<float> M = gapped_matrix(rng, h, w);
  W.set(M);
  const std::vector<float> u = rng.normals(h), zero(static_cast<size_t>(w), 0.f);
  ASSERT_EQ(sn_layer_set_state(l, u.data(), zero.data(), 0.f, 1, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  // The reference: one iteration from v = ones.
  std::vector<double> ud(static_cast<size_t>(h)), vd(static_cast<size_t>(w), 1.0);
  const double sigma = sn_ref_iterate(M.data(), SN_DTYPE_FLOAT32, sn_view_t{1, h, w}, ud.data(), vd.data(),
                                      1e-12, SN_ORDER_U_FIRST);
  const State s = get_state(l);
  EXPECT_NEAR(s.sigma / sigma, 1.0, 1e-5);
  EXPECT_EQ(health(l), uint32_t(SN_HEALTH_RECOVERED));
}

// A 1-D weight is normalized exactly (u = W / ‖W‖ afresh each forward): a zero u given to
// set_state asks for no restart, and the forward after it reports no recovery.
TEST_P(Health, OneDimensionalZeroStateIsNoRestart) {
  SN_SEEDED_RNG();
  const sn_backend_t be = std::get<0>(GetParam());
  LayerPtr l(make_desc({7}, be));
  Buf W(be, 7), out(be, 7);
  W.set(rng.normals(7));
  const std::vector<float> zero(7, 0.f), one(1, 1.f);
  ASSERT_EQ(sn_layer_set_state(l, zero.data(), one.data(), 0.f, 1, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(health(l), 0u);
  EXPECT_GT(get_state(l).sigma, 0.f);
}

// A zero 1-D weight with an eps so small that σ = eps is subnormal (not usable): a zero step, and
// no restart requested, so the next good weight reports no recovery (a 1-D weight has no
// iteration to restart).
TEST_P(Health, OneDimensionalZeroStepIsNoRestart) {
  SN_SEEDED_RNG();
  const sn_backend_t be = std::get<0>(GetParam());
  sn_layer_desc_t d = make_desc({7}, be);
  d.eps = 1e-45f;
  LayerPtr l(d);
  Buf W(be, 7), out(be, 7);
  W.set(std::vector<float>(7, 0.f));
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(health(l), uint32_t(SN_HEALTH_ZERO));
  W.set(rng.normals(7));
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(health(l), uint32_t(SN_HEALTH_ZERO)) << "the zero step recorded, no SN_HEALTH_RECOVERED";
  EXPECT_GT(get_state(l).sigma, 0.f);
}

TEST_P(Health, AllZeroWeightThenRecovery) {
  SN_SEEDED_RNG();
  const int64_t h = 16, w = 12;
  LayerPtr l(desc(h, w));
  const sn_backend_t be = std::get<0>(GetParam());
  Buf W(be, static_cast<size_t>(h * w)), out(be, static_cast<size_t>(h * w));
  W.set(gapped_matrix(rng, h, w));
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  const State good = get_state(l);
  W.set(std::vector<float>(static_cast<size_t>(h * w), 0.f));
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  EXPECT_TRUE(same_state(get_state(l), good));
  for (float x : out.get()) ASSERT_EQ(x, 0.f);
  EXPECT_EQ(health(l), uint32_t(SN_HEALTH_ZERO));
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);  // still zero: no harm
  EXPECT_TRUE(same_state(get_state(l), good));
  const std::vector<float> M = gapped_matrix(rng, h, w);
  W.set(M);
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  EXPECT_GT(get_state(l).sigma, 0.f);
  EXPECT_EQ(health(l), uint32_t(SN_HEALTH_ZERO | SN_HEALTH_RECOVERED));
}

INSTANTIATE_TEST_SUITE_P(Backends, Health,
                         ::testing::Values(std::make_tuple(SN_BACKEND_CPU, SN_ALGO_DEFAULT, ""),
                                           std::make_tuple(SN_BACKEND_CUDA, SN_ALGO_TWO_PASS, ""),
                                           // the one-pass rows kernel (small layers' training
                                           // forwards are on chip by default on sm_90)
                                           std::make_tuple(SN_BACKEND_CUDA, SN_ALGO_ONE_PASS, "op_onchip=0"),
                                           // every warmed-up forward one launch, the layer on chip
                                           std::make_tuple(SN_BACKEND_CUDA, SN_ALGO_DEFAULT, "op_onchip=1"),
                                           // every warmed-up forward one launch, the layer spread
                                           // over a cooperative grid
                                           std::make_tuple(SN_BACKEND_CUDA, SN_ALGO_DEFAULT,
                                                           "op_onchip=0,op_onchip_grid=2")),
                         [](const auto &info) {
                           if (std::strstr(std::get<2>(info.param), "op_onchip=1")) return std::string("cuda_on_chip");
                           if (std::strstr(std::get<2>(info.param), "op_onchip_grid=2"))
                             return std::string("cuda_on_chip_grid");
                           return std::string(std::get<0>(info.param) == SN_BACKEND_CPU ? "cpu" : "cuda") +
                                  (std::get<1>(info.param) == SN_ALGO_ONE_PASS ? "_one_pass" : "_two_pass");
                         });

// Found by fuzzing: a NaN in a 1-D weight must not become σ = max(NaN, eps) = eps.
TEST_P(Health, NanInOneDimensionalWeightKeepsTheState) {
  const sn_backend_t be = std::get<0>(GetParam());
  if (std::get<1>(GetParam()) == SN_ALGO_ONE_PASS) GTEST_SKIP() << "1-D weights run no iteration";
  SN_SEEDED_RNG();
  const int64_t n = 300;
  LayerPtr l(make_desc({n}, be));
  Buf W(be, static_cast<size_t>(n)), out(be, static_cast<size_t>(n));
  std::vector<float> x = rng.normals(n);
  W.set(x);
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  const State good = get_state(l);
  x[123] = NAN;
  W.set(x);
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  EXPECT_TRUE(same_state(get_state(l), good));
  EXPECT_EQ(health(l), uint32_t(SN_HEALTH_NONFINITE));
}

// Found by fuzzing: a subnormal σ must not be committed (its 1/σ overflows to +inf).
TEST_P(Health, SubnormalSigmaIsAZeroStep) {
  const sn_backend_t be = std::get<0>(GetParam());
  SN_SEEDED_RNG();
  const int64_t h = 16, w = 12;
  LayerPtr l(desc(h, w));
  Buf W(be, static_cast<size_t>(h * w)), out(be, static_cast<size_t>(h * w));
  std::vector<float> x = gapped_matrix(rng, h, w);
  W.set(x);
  ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
  const State good = get_state(l);
  for (auto &e : x) e *= 1e-40f;  // subnormal weights: σ about 4e-40 < FLT_MIN
  W.set(x);
  for (int training : {0, 1}) {
    ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), training, nullptr), SN_SUCCESS);
    EXPECT_TRUE(same_state(get_state(l), good)) << training;
    float inv = 0, scale = 0;
    ASSERT_EQ(sn_layer_get_sigma(l, nullptr, &inv, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_layer_get_scale(l, &scale, nullptr), SN_SUCCESS);
    EXPECT_TRUE(std::isfinite(inv) && std::isfinite(scale));
    EXPECT_EQ(health(l, 1), uint32_t(SN_HEALTH_ZERO));
  }
  // set_state refuses such a σ too.
  EXPECT_EQ(sn_layer_set_state(l, good.u.data(), good.v.data(), 1e-40f, 1, nullptr), SN_ERROR_INVALID_VALUE);
}

// An eval forward iterates nothing, so it neither takes a pending restart from ones nor asks for
// one: its σ = uᵀ M v is of the stored u and v, a usable one clears a pending request (the
// stored vectors are fine for this W), and a zero one records SN_HEALTH_ZERO without a request.
TEST_P(Health, EvalForwardNeitherTakesNorAsksARestart) {
  SN_SEEDED_RNG();
  const int64_t h = 40, w = 24;
  const sn_backend_t be = std::get<0>(GetParam());
  Buf W(be, static_cast<size_t>(h * w)), out(be, static_cast<size_t>(h * w));
  std::vector<float> e0;
  double sigma_M = 0;
  const std::vector<float> M = rank1_nulling_e0(rng, h, w, &e0, &sigma_M);  // M e_0 = 0
  // G: a generic weight with uᵀ G e_0 > 0 for the u below, so the eval σ is usable.
  const std::vector<float> u0 = rng.normals(h);
  std::vector<float> G = gapped_matrix(rng, h, w);
  double dot = 0, terms = 0;  // terms: Σ |u_i G_i0|, the size of the float sum's rounding
  for (int64_t i = 0; i < h; ++i) {
    dot += double(u0[static_cast<size_t>(i)]) * G[static_cast<size_t>(i * w)];
    terms += std::fabs(double(u0[static_cast<size_t>(i)]) * G[static_cast<size_t>(i * w)]);
  }
  if (dot < 0)
    for (float &x : G) x = -x;
  const double eval_sigma = std::fabs(dot);

  // 1. A zero training step asks for a restart; the eval after it uses the stored u and v.
  {
    LayerPtr l(desc(h, w));
    ASSERT_EQ(sn_layer_set_state(l, u0.data(), e0.data(), 0.f, 1, nullptr), SN_SUCCESS);
    W.set(M);
    ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
    ASSERT_EQ(health(l, 1), uint32_t(SN_HEALTH_ZERO));
    W.set(G);
    ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 0, nullptr), SN_SUCCESS);
    const State s = get_state(l);
    EXPECT_NEAR(s.sigma, eval_sigma, 1e-5 * terms) << "σ = uᵀ G v of the stored u0 and e_0, not of ones";
    EXPECT_TRUE(bitwise_equal(s.u, u0));
    EXPECT_TRUE(bitwise_equal(s.v, e0));
    EXPECT_EQ(health(l), 0u);
    // The usable eval σ cleared the request: the next zero step is a plain zero step again.
    W.set(M);
    ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
    EXPECT_EQ(health(l, 1), uint32_t(SN_HEALTH_ZERO)) << "no restart was pending: no recovery";
    EXPECT_TRUE(bitwise_equal(get_state(l).v, e0));
  }
  // 2. A zero eval σ records the zero step and asks for no restart.
  {
    LayerPtr l(desc(h, w));
    ASSERT_EQ(sn_layer_set_state(l, u0.data(), e0.data(), 1.f, 1, nullptr), SN_SUCCESS);
    W.set(M);
    expect_on_chip_if_tuned(l.p, W.ptr(), out.ptr());
    ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 0, nullptr), SN_SUCCESS);
    EXPECT_EQ(health(l, 1), uint32_t(SN_HEALTH_ZERO));
    EXPECT_EQ(get_state(l).sigma, 1.f) << "a zero σ is not committed";
    ASSERT_EQ(sn_forward(l, W.ptr(), out.ptr(), 1, nullptr), SN_SUCCESS);
    EXPECT_EQ(health(l), uint32_t(SN_HEALTH_ZERO)) << "the training step from e_0 is zero, not a restart";
    EXPECT_TRUE(bitwise_equal(get_state(l).v, e0));
  }
}

// With no σ yet (σ = 0) the scale is 0 and the backward is the derivative of W_sn = W · 0:
// dW = 0·G (+ dW), i.e. zeros where G is finite and NaN where it is not (the NaN is the caller's,
// carried as through every backward), ∂L/∂γ = 0; both backends give the reference's bits.
TEST_P(Health, BackwardWithNoSigmaIsZeroTimesG) {
  SN_SEEDED_RNG();
  const int64_t h = 16, w = 12, n = h * w;
  const sn_backend_t be = std::get<0>(GetParam());
  LayerPtr l(desc(h, w));
  const State s0 = get_state(l);
  ASSERT_EQ(sn_layer_set_state(l, s0.u.data(), s0.v.data(), 0.f, 1, nullptr), SN_SUCCESS);
  Buf W(be, static_cast<size_t>(n)), G(be, static_cast<size_t>(n)), dW(be, static_cast<size_t>(n)),
      dgamma(be, 1);
  const std::vector<float> Wh = gapped_matrix(rng, h, w), D0 = rng.normals(n);
  std::vector<float> Gh = rng.normals(n);
  Gh[3] = INFINITY;
  Gh[5] = NAN;
  Gh[7] = -INFINITY;
  W.set(Wh);
  G.set(Gh);
  for (unsigned flags : {0u, unsigned(SN_BACKWARD_DETACH_SIGMA), unsigned(SN_BACKWARD_ACCUMULATE),
                         unsigned(SN_BACKWARD_ACCUMULATE | SN_BACKWARD_DETACH_SIGMA)}) {
    SCOPED_TRACE("flags " + std::to_string(flags));
    const bool acc = flags & SN_BACKWARD_ACCUMULATE;
    dW.set(D0);
    dgamma.set({7.f});
    ASSERT_EQ(sn_backward(l, W.ptr(), G.ptr(), dW.ptr(), flags, dgamma.ptr(), nullptr), SN_SUCCESS)
        << sn_last_error_message();
    const std::vector<float> got = dW.get();
    for (int64_t k = 0; k < n; ++k) {
      const size_t i = static_cast<size_t>(k);
      if (!std::isfinite(Gh[i]))
        ASSERT_TRUE(std::isnan(got[i])) << k;
      else
        ASSERT_EQ(got[i], acc ? D0[i] : 0.f) << k;
    }
    EXPECT_EQ(dgamma.get()[0], 0.f);
    std::vector<float> expect = D0;
    sn_ref_backward(Wh.data(), Gh.data(), expect.data(), SN_DTYPE_FLOAT32, sn_view_t{1, h, w},
                    s0.u.data(), s0.v.data(), 0.f, 0.f, 1.f, 0.f, (flags & SN_BACKWARD_DETACH_SIGMA) != 0, acc);
    // The reference's bits, signs of zero included (a NaN's payload is the hardware's: any NaN).
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_TRUE(std::isnan(got[i]) ? std::isnan(expect[i]) : std::memcmp(&got[i], &expect[i], 4) == 0)
          << i << ": " << got[i] << " against " << expect[i];
  }
}
