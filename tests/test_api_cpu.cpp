// The layer API on the CPU backend: every behaviour of the API, tested where CI runs (no GPU).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <iterator>

#include "sn_internal.h"
#include "test_util.h"

using namespace sntest;

namespace {

// The state after `iters` reference iterations from `start` (what the CPU backend must store).
State reference_after(const std::vector<float> &W, sn_view_t vw, const State &start, int iters,
                      sn_order_t order, float eps = 1e-12f) {
  std::vector<double> u = to_double(start.u), v = to_double(start.v);
  double sigma = 0;
  for (int k = 0; k < iters; ++k) sigma = sn_ref_iterate(W.data(), SN_DTYPE_FLOAT32, vw, u.data(), v.data(), eps, order);
  State s;
  s.u.assign(u.begin(), u.end());
  s.v.assign(v.begin(), v.end());
  s.sigma = float(sigma);
  return s;
}

std::vector<float> divided(const std::vector<float> &W, float sigma) {
  std::vector<float> out(W.size());
  sn_ref_divide(W.data(), out.data(), SN_DTYPE_FLOAT32, int64_t(W.size()), sigma, 0.f, 1.f);
  return out;
}

class CpuApi : public SeededTest {};

}  // namespace

TEST(Status, NamesDescriptionsAndVersion) {
  for (int s = 0; s < SN_STATUS_COUNT; ++s) {
    EXPECT_STRNE(sn_status_name(sn_status_t(s)), "SN_STATUS_UNKNOWN") << s;
    EXPECT_GT(std::strlen(sn_status_description(sn_status_t(s))), 5u) << s;
    EXPECT_STRNE(sn_status_description(sn_status_t(s)), "unknown status value") << s;
  }
  EXPECT_STREQ(sn_status_name(SN_ERROR_INVALID_DIM), "SN_ERROR_INVALID_DIM");
  EXPECT_STREQ(sn_status_name(sn_status_t(999)), "SN_STATUS_UNKNOWN");
  EXPECT_STREQ(sn_status_name(sn_status_t(-1)), "SN_STATUS_UNKNOWN");
  EXPECT_STREQ(sn_status_name(SN_STATUS_COUNT), "SN_STATUS_UNKNOWN");
  for (const int s : {-1, int(SN_STATUS_COUNT), 999})
    EXPECT_STREQ(sn_status_description(sn_status_t(s)), "unknown status value") << s;
  EXPECT_EQ(sn_version_number(), SN_VERSION_NUMBER);
  EXPECT_STREQ(sn_version_string(), SN_VERSION_STRING);
}

// The message of a failed call: the status name first; a CUDA error maps to the status that says
// what happened (memory, no usable device, a bad device, anything else), and a message longer than
// the buffer is cut, not overrun.
TEST(Status, FailureMessagesAndCudaErrors) {
  const struct {
    cudaError_t e;
    sn_status_t want;
  } cases[] = {{cudaErrorMemoryAllocation, SN_ERROR_ALLOCATION},
               {cudaErrorNoDevice, SN_ERROR_NO_DEVICE},
               {cudaErrorInsufficientDriver, SN_ERROR_NO_DEVICE},
               {cudaErrorInvalidDevice, SN_ERROR_INVALID_DEVICE},
               {cudaErrorLaunchFailure, SN_ERROR_CUDA},
               {cudaErrorIllegalAddress, SN_ERROR_CUDA}};
  for (const auto &c : cases) {
    EXPECT_EQ(sn__cuda_fail(int(c.e), "the thing"), c.want) << int(c.e);
    const std::string m = sn_last_error_message();
    EXPECT_EQ(m.rfind(std::string(sn_status_name(c.want)) + ": the thing failed: CUDA error " +
                          std::to_string(int(c.e)) + " (" + cudaGetErrorName(c.e) + ")", 0), 0u) << m;
  }
  const std::string big(5000, 'x');
  EXPECT_EQ(sn__fail(SN_ERROR_INVALID_VALUE, "%s", big.c_str()), SN_ERROR_INVALID_VALUE);
  const std::string m = sn_last_error_message();
  EXPECT_EQ(m.rfind("SN_ERROR_INVALID_VALUE: xxx", 0), 0u);
  EXPECT_EQ(m.size(), 511u) << "cut to the 512-byte buffer";
}

TEST(Desc, DefaultsFollowPyTorch) {
  const int64_t shape[2] = {8, 3};
  sn_layer_desc_t d;
  ASSERT_EQ(sn_layer_desc_init(&d, 2, shape), SN_SUCCESS);
  EXPECT_EQ(d.n_power_iterations, 1);
  EXPECT_EQ(d.eps, 1e-12f);
  EXPECT_EQ(d.warmup_iterations, 15);
  EXPECT_EQ(d.order, SN_ORDER_U_FIRST);
  EXPECT_EQ(d.dim, 0);
  EXPECT_EQ(d.dtype, SN_DTYPE_FLOAT32);
  EXPECT_EQ(d.backend, SN_BACKEND_CUDA);
  EXPECT_EQ(d.eps_mode, SN_EPS_CLAMP_NORM);
  EXPECT_EQ(sn_layer_desc_init(nullptr, 2, shape), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_layer_desc_init(&d, 2, nullptr), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_layer_desc_init(&d, 0, shape), SN_ERROR_INVALID_SHAPE);
  EXPECT_EQ(sn_layer_desc_init(&d, 9, shape), SN_ERROR_INVALID_SHAPE);
}

TEST_F(CpuApi, LifecycleAndDims) {
  sn_layer_destroy(nullptr);  // accepted
  LayerPtr l(make_desc({6, 2, 3, 3}, SN_BACKEND_CPU, 1));
  ASSERT_TRUE(l.p);
  int64_t h = 0, w = 0;
  ASSERT_EQ(sn_layer_get_dims(l, &h, &w), SN_SUCCESS);
  EXPECT_EQ(h, 2);
  EXPECT_EQ(w, 54);
  State s = get_state(l);
  EXPECT_EQ(s.sigma, 0.f) << "no estimate before the first forward";
  EXPECT_EQ(s.warmed, 0);
  double nu = 0, nv = 0;
  for (float x : s.u) nu += double(x) * x;
  for (float x : s.v) nv += double(x) * x;
  EXPECT_NEAR(nu, 1.0, 1e-6);
  EXPECT_NEAR(nv, 1.0, 1e-6);
  const float *sp = nullptr, *ip = nullptr;
  ASSERT_EQ(sn_layer_sigma_ptr(l, &sp, &ip), SN_SUCCESS);
  EXPECT_NE(sp, nullptr);
  EXPECT_EQ(ip, sp + 1);
}

TEST_F(CpuApi, WarmupRunsOnceThenOneIterationPerStep) {
  SCOPED_TRACE("SN_TEST_SEED=" + std::to_string(seed));
  const int64_t h = 12, w = 7;
  sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
  LayerPtr l(d);
  const sn_view_t vw{1, h, w};
  std::vector<float> W = gapped_matrix(rng, h, w), out(W.size());
  State s0 = get_state(l);
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  State ref1 = reference_after(W, vw, s0, 16, SN_ORDER_U_FIRST);  // 15 warm-up + 1
  State s1 = get_state(l);
  EXPECT_TRUE(bitwise_equal(s1.u, ref1.u));
  EXPECT_TRUE(bitwise_equal(s1.v, ref1.v));
  EXPECT_EQ(s1.sigma, ref1.sigma);
  EXPECT_EQ(s1.warmed, 1);
  EXPECT_TRUE(bitwise_equal(out, divided(W, ref1.sigma)));
  float sig = 0, inv = 0;
  ASSERT_EQ(sn_layer_get_sigma(l, &sig, &inv, nullptr), SN_SUCCESS);
  EXPECT_EQ(sig, ref1.sigma);
  EXPECT_EQ(inv, 1.0f / ref1.sigma);

  // Second step, with a changed W: exactly one iteration.
  for (auto &x : W) x += 0.01f * rng.normal();
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  State ref2 = reference_after(W, vw, s1, 1, SN_ORDER_U_FIRST);
  State s2 = get_state(l);
  EXPECT_TRUE(bitwise_equal(s2.u, ref2.u));
  EXPECT_TRUE(bitwise_equal(s2.v, ref2.v));
  EXPECT_EQ(s2.sigma, ref2.sigma);
}

TEST_F(CpuApi, EvalFirstWarmsUpThenKeepsVectors) {
  SCOPED_TRACE("SN_TEST_SEED=" + std::to_string(seed));
  const int64_t h = 9, w = 14;
  LayerPtr l(make_desc({h, w}, SN_BACKEND_CPU));
  const sn_view_t vw{1, h, w};
  std::vector<float> W = gapped_matrix(rng, h, w), out(W.size());
  State s0 = get_state(l);
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 0, nullptr), SN_SUCCESS);
  State warm = reference_after(W, vw, s0, 15, SN_ORDER_U_FIRST);
  State s1 = get_state(l);
  EXPECT_TRUE(bitwise_equal(s1.u, warm.u)) << "eval-first runs the warm-up (pytorch #51800)";
  EXPECT_TRUE(bitwise_equal(s1.v, warm.v));
  std::vector<double> t(static_cast<size_t>(h));
  std::vector<double> uw(warm.u.begin(), warm.u.end()), vwv(warm.v.begin(), warm.v.end());
  // σ is computed from the double vectors before rounding; compare at float precision.
  EXPECT_NEAR(s1.sigma, sn_ref_sigma(W.data(), SN_DTYPE_FLOAT32, vw, uw.data(), vwv.data(), t.data()), 1e-6 * s1.sigma);

  // A later eval with a changed W (a training step's update): u, v unchanged bitwise,
  // σ = uᵀ M v recomputed.
  std::vector<float> W2 = W;
  for (auto &x : W2) x += 0.05f * rng.normal();
  ASSERT_EQ(sn_forward(l, W2.data(), out.data(), 0, nullptr), SN_SUCCESS);
  State s2 = get_state(l);
  EXPECT_TRUE(bitwise_equal(s2.u, s1.u));
  EXPECT_TRUE(bitwise_equal(s2.v, s1.v));
  std::vector<double> u1 = to_double(s1.u), v1 = to_double(s1.v);
  const float expect = float(sn_ref_sigma(W2.data(), SN_DTYPE_FLOAT32, vw, u1.data(), v1.data(), t.data()));
  EXPECT_EQ(s2.sigma, expect);
  EXPECT_TRUE(bitwise_equal(out, divided(W2, expect)));
}

TEST_F(CpuApi, BothUpdateOrders) {
  SCOPED_TRACE("SN_TEST_SEED=" + std::to_string(seed));
  const int64_t h = 5, w = 31;
  for (sn_order_t order : {SN_ORDER_U_FIRST, SN_ORDER_V_FIRST}) {
    sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
    d.order = order;
    d.warmup_iterations = 3;
    d.n_power_iterations = 2;
    LayerPtr l(d);
    std::vector<float> W = rng.normals(h * w), out(W.size());
    State s0 = get_state(l);
    ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
    State ref = reference_after(W, sn_view_t{1, h, w}, s0, 5, order);
    State s1 = get_state(l);
    EXPECT_TRUE(bitwise_equal(s1.u, ref.u)) << order;
    EXPECT_TRUE(bitwise_equal(s1.v, ref.v)) << order;
    EXPECT_EQ(s1.sigma, ref.sigma) << order;
  }
}

TEST_F(CpuApi, DimOneEqualsExplicitPermutation) {
  SCOPED_TRACE("SN_TEST_SEED=" + std::to_string(seed));
  // A ConvTranspose2d weight (in=4, out=6, 3, 3) normalized along dim 1, against the same weight
  // permuted to (6, 4, 3, 3) and normalized along dim 0.
  const int64_t I = 4, O = 6, K = 9;
  std::vector<float> W = rng.normals(I * O * K), P(W.size());
  for (int64_t a = 0; a < I; ++a)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t k = 0; k < K; ++k) P[static_cast<size_t>((o * I + a) * K + k)] = W[static_cast<size_t>((a * O + o) * K + k)];
  LayerPtr l1(make_desc({I, O, 3, 3}, SN_BACKEND_CPU, 1));
  LayerPtr l0(make_desc({O, I, 3, 3}, SN_BACKEND_CPU, 0));
  LayerPtr ln(make_desc({I, O, 3, 3}, SN_BACKEND_CPU, -3));  // negative dim, same axis
  std::vector<float> o1(W.size()), o0(W.size()), on(W.size());
  for (int step = 0; step < 3; ++step) {
    ASSERT_EQ(sn_forward(l1, W.data(), o1.data(), 1, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_forward(l0, P.data(), o0.data(), 1, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_forward(ln, W.data(), on.data(), 1, nullptr), SN_SUCCESS);
    State s1 = get_state(l1), s0 = get_state(l0), sn = get_state(ln);
    EXPECT_NEAR(s1.sigma, s0.sigma, 1e-6 * s0.sigma);
    EXPECT_LT(max_abs_diff(s1.u, s0.u), 1e-6);
    EXPECT_LT(max_abs_diff(s1.v, s0.v), 1e-6);
    EXPECT_TRUE(same_state(s1, sn));
    for (int64_t a = 0; a < I; ++a)
      for (int64_t o = 0; o < O; ++o)
        for (int64_t k = 0; k < K; ++k)
          ASSERT_NEAR(o1[static_cast<size_t>((a * O + o) * K + k)], o0[static_cast<size_t>((o * I + a) * K + k)], 1e-6);
  }
}

TEST_F(CpuApi, StateRoundTripIsBitwise) {
  SCOPED_TRACE("SN_TEST_SEED=" + std::to_string(seed));
  const int64_t h = 16, w = 10;
  sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
  LayerPtr a(d);
  std::vector<float> W = rng.normals(h * w), oa(W.size()), ob(W.size());
  ASSERT_EQ(sn_forward(a, W.data(), oa.data(), 1, nullptr), SN_SUCCESS);
  State saved = get_state(a);

  d.seed = 12345;  // a different start, overwritten by the checkpoint
  LayerPtr b(d);
  ASSERT_EQ(sn_layer_set_state(b, saved.u.data(), saved.v.data(), saved.sigma, saved.warmed, nullptr),
            SN_SUCCESS);
  EXPECT_TRUE(same_state(get_state(b), saved));
  float inv = 0;
  ASSERT_EQ(sn_layer_get_sigma(b, nullptr, &inv, nullptr), SN_SUCCESS);
  EXPECT_EQ(inv, 1.0f / saved.sigma);
  for (int step = 0; step < 3; ++step) {
    for (auto &x : W) x += 0.05f * rng.normal();
    ASSERT_EQ(sn_forward(a, W.data(), oa.data(), step % 2, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_forward(b, W.data(), ob.data(), step % 2, nullptr), SN_SUCCESS);
    EXPECT_TRUE(same_state(get_state(a), get_state(b)));
    EXPECT_TRUE(bitwise_equal(oa, ob));
  }
}

TEST_F(CpuApi, LoadsPyTorchBuffersAsTheyAre) {
  // PyTorch's parametrization keeps `_u` (h) and `_v` (w), already warmed up at construction.
  // Loaded with warmed_up = 1, the next training step runs exactly one iteration from them.
  SCOPED_TRACE("SN_TEST_SEED=" + std::to_string(seed));
  const int64_t h = 8, w = 6;
  LayerPtr l(make_desc({h, w}, SN_BACKEND_CPU));
  std::vector<float> W = rng.normals(h * w), out(W.size());
  State torch_state;
  torch_state.u = rng.normals(h, 0.3f);
  torch_state.v = rng.normals(w, 0.3f);
  ASSERT_EQ(sn_layer_set_state(l, torch_state.u.data(), torch_state.v.data(), 0.f, 1, nullptr),
            SN_SUCCESS);
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  State ref = reference_after(W, sn_view_t{1, h, w}, torch_state, 1, SN_ORDER_U_FIRST);
  State s = get_state(l);
  EXPECT_TRUE(bitwise_equal(s.u, ref.u));
  EXPECT_TRUE(bitwise_equal(s.v, ref.v));
}

TEST_F(CpuApi, SameSeedSameResultAndReset) {
  const int64_t h = 11, w = 13;
  sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
  d.seed = 77;
  LayerPtr a(d), b(d);
  EXPECT_TRUE(same_state(get_state(a), get_state(b)));
  d.seed = 78;
  LayerPtr c(d);
  EXPECT_FALSE(bitwise_equal(get_state(a).u, get_state(c).u));

  std::vector<float> W = rng.normals(h * w), out(W.size());
  ASSERT_EQ(sn_forward(a, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_reset(a, 78, nullptr), SN_SUCCESS);
  EXPECT_TRUE(same_state(get_state(a), get_state(c))) << "reset = a fresh layer with that seed";
}

// The initial u and v are N(randn(h)) and N(randn(w)) (sn_layer_create): unit vectors whose
// entries, times √n, look like independent standard normal draws, u's independent of v's and of
// another seed's. Fixed seeds, so the statistics are fixed numbers; each bound is 5 standard
// deviations of its statistic for true normal draws. (Drawing |x| only, or u and v from one
// stream, each passed every other test.)
TEST(CpuInit, InitialVectorsAreIndependentNormalDraws) {
  const int64_t h = 8192, w = 6000;
  const auto moments = [](const std::vector<float> &x, const char *what) {
    SCOPED_TRACE(what);
    const double n = double(x.size());
    double sum = 0, sq = 0, within = 0, negative = 0;
    for (float f : x) {
      const double z = double(f) * std::sqrt(n);
      sum += z;
      sq += z * z;
      within += std::fabs(z) < 1.0;
      negative += z < 0.0;
    }
    EXPECT_NEAR(sq / n, 1.0, 1e-5) << "a unit vector";
    EXPECT_LT(std::fabs(sum / n), 5.0 / std::sqrt(n)) << "mean";
    EXPECT_NEAR(within / n, 0.682689, 5.0 * std::sqrt(0.6827 * 0.3173 / n)) << "P(|z| < 1)";
    EXPECT_NEAR(negative / n, 0.5, 5.0 * 0.5 / std::sqrt(n)) << "P(z < 0)";
  };
  // Σ x_k y_k over the first m entries: variance about m / (|x| · |y|) for independent draws.
  const auto correlation_ok = [](const std::vector<float> &x, const std::vector<float> &y) {
    const size_t m = std::min(x.size(), y.size());
    double c = 0;
    for (size_t k = 0; k < m; ++k) c += double(x[k]) * double(y[k]);
    const double sd = std::sqrt(double(m) / (double(x.size()) * double(y.size())));
    return std::fabs(c) < 5.0 * sd;
  };
  std::vector<State> states;
  for (const uint64_t seed : {uint64_t(0), uint64_t(1), uint64_t(0x9E3779B97F4A7C15ull)}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
    d.seed = seed;
    LayerPtr l(d);
    ASSERT_TRUE(l.p);
    states.push_back(get_state(l));
    moments(states.back().u, "u");
    moments(states.back().v, "v");
    EXPECT_TRUE(correlation_ok(states.back().u, states.back().v)) << "u and v of one seed";
  }
  for (size_t a = 0; a < states.size(); ++a)
    for (size_t b = a + 1; b < states.size(); ++b) {
      EXPECT_TRUE(correlation_ok(states[a].u, states[b].u)) << "u of seeds " << a << " and " << b;
      EXPECT_TRUE(correlation_ok(states[a].v, states[b].v)) << "v of seeds " << a << " and " << b;
    }
}

TEST_F(CpuApi, InPlaceForward) {
  SCOPED_TRACE("SN_TEST_SEED=" + std::to_string(seed));
  const int64_t h = 7, w = 9;
  sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
  LayerPtr a(d), b(d);
  std::vector<float> W = rng.normals(h * w), out(W.size()), inplace = W;
  ASSERT_EQ(sn_forward(a, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_forward(b, inplace.data(), inplace.data(), 1, nullptr), SN_SUCCESS);
  EXPECT_TRUE(bitwise_equal(out, inplace));
}

TEST_F(CpuApi, OneDimensionalWeightIsNormalizedExactly) {
  SCOPED_TRACE("SN_TEST_SEED=" + std::to_string(seed));
  const int64_t n = 37;
  LayerPtr l(make_desc({n}, SN_BACKEND_CPU));
  std::vector<float> W = rng.normals(n), out(W.size());
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  double norm = 0;
  for (float x : W) norm += double(x) * x;
  const float sigma = float(std::sqrt(norm));
  EXPECT_TRUE(bitwise_equal(out, divided(W, sigma))) << "W_sn = W / max(‖W‖, eps)";
  EXPECT_EQ(get_state(l).sigma, sigma);
  // All zeros: σ = eps, W_sn = 0.
  std::vector<float> Z(static_cast<size_t>(n), 0.f);
  ASSERT_EQ(sn_forward(l, Z.data(), out.data(), 1, nullptr), SN_SUCCESS);
  for (float x : out) EXPECT_EQ(x, 0.f);
  EXPECT_EQ(get_state(l).sigma, 1e-12f);
}

// SN_EPS_ADD_SQUARED: N(x) = x / sqrt(‖x‖² + eps) (Flax, Haiku), computed here in double apart
// from the reference, in both orders, on a view along the last axis (as those frameworks take
// it), with an eps large enough that the clamped N gives another σ.
TEST_F(CpuApi, AddSquaredEpsFollowsFlaxAndHaiku) {
  SCOPED_TRACE("SN_TEST_SEED=" + std::to_string(seed));
  const std::vector<int64_t> shape = {3, 4, 6};  // dim -1: h = 6, w = 12
  const int64_t h = 6, w = 12;
  const float eps = 0.25f;
  for (sn_order_t order : {SN_ORDER_U_FIRST, SN_ORDER_V_FIRST}) {
    SCOPED_TRACE(order);
    sn_layer_desc_t d = make_desc(shape, SN_BACKEND_CPU, -1);
    d.order = order;
    d.warmup_iterations = 0;
    d.n_power_iterations = 2;
    d.eps = eps;
    d.eps_mode = SN_EPS_ADD_SQUARED;
    sn_layer_desc_t dc = d;
    dc.eps_mode = SN_EPS_CLAMP_NORM;
    LayerPtr l(d), lc(dc);
    const std::vector<float> W = rng.normals(h * w, 0.3f);
    std::vector<float> out(W.size()), outc(W.size());
    const State s0 = get_state(l);
    ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_forward(lc, W.data(), outc.data(), 1, nullptr), SN_SUCCESS);
    // M[i][a] = W[a][i]: the output axis last.
    auto M = [&](int64_t i, int64_t a) { return double(W[size_t(a * h + i)]); };
    std::vector<double> u(s0.u.begin(), s0.u.end()), v(s0.v.begin(), s0.v.end());
    auto N = [&](std::vector<double> &x) {
      double ssq = 0;
      for (double e : x) ssq += e * e;
      const double m = std::sqrt(ssq + eps);
      for (double &e : x) e /= m;
      return ssq / m;  // ‖x‖² / sqrt(‖x‖² + eps): σ when x is the last product
    };
    double sigma = 0;
    for (int it = 0; it < 2; ++it) {
      std::vector<double> t(h, 0.0), s(w, 0.0);
      if (order == SN_ORDER_U_FIRST) {
        for (int64_t i = 0; i < h; ++i)
          for (int64_t a = 0; a < w; ++a) t[size_t(i)] += M(i, a) * v[size_t(a)];
        N(t);
        u = t;
        for (int64_t a = 0; a < w; ++a)
          for (int64_t i = 0; i < h; ++i) s[size_t(a)] += M(i, a) * u[size_t(i)];
        sigma = N(s);
        v = s;
      } else {
        for (int64_t a = 0; a < w; ++a)
          for (int64_t i = 0; i < h; ++i) s[size_t(a)] += M(i, a) * u[size_t(i)];
        N(s);
        v = s;
        for (int64_t i = 0; i < h; ++i)
          for (int64_t a = 0; a < w; ++a) t[size_t(i)] += M(i, a) * v[size_t(a)];
        sigma = N(t);
        u = t;
      }
    }
    const State s1 = get_state(l);
    EXPECT_NEAR(s1.sigma / sigma, 1.0, 1e-6);
    EXPECT_LT(max_abs_diff(s1.u, std::vector<float>(u.begin(), u.end())), 1e-6);
    EXPECT_LT(max_abs_diff(s1.v, std::vector<float>(v.begin(), v.end())), 1e-6);
    EXPECT_TRUE(bitwise_equal(out, divided(W, s1.sigma)));
    // The mode matters at this eps: the clamped N gives another σ.
    EXPECT_GT(std::fabs(get_state(lc).sigma / s1.sigma - 1.0), 1e-3);
  }
  // A 1-D weight: σ = sqrt(‖W‖² + eps).
  sn_layer_desc_t d1 = make_desc({5}, SN_BACKEND_CPU);
  d1.eps = eps;
  d1.eps_mode = SN_EPS_ADD_SQUARED;
  LayerPtr l1(d1);
  const std::vector<float> W1 = rng.normals(5, 0.2f);
  std::vector<float> o1(5);
  ASSERT_EQ(sn_forward(l1, W1.data(), o1.data(), 1, nullptr), SN_SUCCESS);
  double ssq = 0;
  for (float x : W1) ssq += double(x) * x;
  EXPECT_EQ(get_state(l1).sigma, float(std::sqrt(ssq + eps)));
  EXPECT_TRUE(bitwise_equal(o1, divided(W1, get_state(l1).sigma)));
}

TEST_F(CpuApi, AllZeroWeightGivesZeroAndKeepsState) {
  SCOPED_TRACE("SN_TEST_SEED=" + std::to_string(seed));
  const int64_t h = 6, w = 4;
  LayerPtr l(make_desc({h, w}, SN_BACKEND_CPU));
  std::vector<float> Z(static_cast<size_t>(h * w), 0.f), out(Z.size(), 7.f);
  State s0 = get_state(l);
  // First forward ever: no σ yet, so W_sn = W · 0 = 0 and u, v stay as drawn.
  ASSERT_EQ(sn_forward(l, Z.data(), out.data(), 1, nullptr), SN_SUCCESS);
  for (float x : out) EXPECT_EQ(x, 0.f);
  State s1 = get_state(l);
  EXPECT_TRUE(bitwise_equal(s1.u, s0.u));
  EXPECT_TRUE(bitwise_equal(s1.v, s0.v));
  EXPECT_EQ(s1.sigma, 0.f);
  // After a good step, a zero W keeps the last good state and divides by its σ.
  std::vector<float> W = gapped_matrix(rng, h, w);
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  State good = get_state(l);
  ASSERT_GT(good.sigma, 0.f);
  for (int training : {1, 0}) {
    ASSERT_EQ(sn_forward(l, Z.data(), out.data(), training, nullptr), SN_SUCCESS);
    for (float x : out) EXPECT_EQ(x, 0.f);
    EXPECT_TRUE(same_state(get_state(l), good));
  }
}

// A warm-up on a zero placeholder (before the real weights are loaded, say) iterates to no usable
// σ: the layer counts as warmed up with u and v as drawn, and records SN_HEALTH_ZERO. An eval
// forward then iterates nothing and takes uᵀ M v from those random vectors (README, "Degenerate
// steps"); after sn_layer_reset, a warm-up on the real weights gives what a fresh layer's gives.
TEST_F(CpuApi, AWarmUpOnAZeroWeightLeavesTheStartAndResetUndoesIt) {
  const int64_t h = 48, w = 40;
  sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
  d.seed = 1234;
  LayerPtr l(d), fresh(d);
  const State s0 = get_state(l);
  std::vector<float> Z(static_cast<size_t>(h * w), 0.f), W = gapped_matrix(rng, h, w), out(Z.size()),
      out_fresh(Z.size());
  ASSERT_EQ(sn_layer_warmup(l, Z.data(), nullptr), SN_SUCCESS);
  const State s1 = get_state(l);
  EXPECT_EQ(s1.warmed, 1);
  EXPECT_TRUE(bitwise_equal(s1.u, s0.u));
  EXPECT_TRUE(bitwise_equal(s1.v, s0.v));
  EXPECT_EQ(s1.sigma, 0.f);
  uint32_t health = 0;
  ASSERT_EQ(sn_layer_get_health(l, &health, 0, nullptr), SN_SUCCESS);
  EXPECT_EQ(health, uint32_t(SN_HEALTH_ZERO));
  // The eval forward: σ = uᵀ M v from the drawn vectors, no iteration.
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 0, nullptr), SN_SUCCESS);
  const double uMv = u_M_v(s0.u, W, s0.v);
  if (uMv > 0) {
    EXPECT_NEAR(get_state(l).sigma, uMv, 1e-6 * uMv);
  } else {  // not usable: σ stays 0
    EXPECT_EQ(get_state(l).sigma, 0.f);
    ASSERT_EQ(sn_layer_get_health(l, &health, 0, nullptr), SN_SUCCESS);
    EXPECT_TRUE(health & SN_HEALTH_NEGATIVE);
  }
  // The recipe: reset, then warm up on the real weights.
  ASSERT_EQ(sn_layer_reset(l, d.seed, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_warmup(l, W.data(), nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 0, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_warmup(fresh, W.data(), nullptr), SN_SUCCESS);  // run alike (an eval-first
  // forward takes σ with the warm-up's last divisor of u: an ulp apart at times)
  ASSERT_EQ(sn_forward(fresh, W.data(), out_fresh.data(), 0, nullptr), SN_SUCCESS);
  EXPECT_TRUE(same_state(get_state(l), get_state(fresh)));
  EXPECT_TRUE(bitwise_equal(out, out_fresh));
}

TEST_F(CpuApi, KnownCasesThroughTheApi) {
  // 1×1: σ = |w|, W_sn = sign(w).
  LayerPtr one(make_desc({1, 1}, SN_BACKEND_CPU));
  float w1 = -3.5f, o1 = 0;
  ASSERT_EQ(sn_forward(one, &w1, &o1, 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(get_state(one).sigma, 3.5f);
  EXPECT_EQ(o1, -1.f);
  // Diagonal with a dominant entry.
  const int64_t n = 6;
  std::vector<float> D(static_cast<size_t>(n * n), 0.f), out(D.size());
  for (int64_t k = 0; k < n; ++k) D[static_cast<size_t>(k * n + k)] = 0.5f;
  D[static_cast<size_t>(2 * n + 2)] = -4.f;
  LayerPtr dl(make_desc({n, n}, SN_BACKEND_CPU));
  ASSERT_EQ(sn_forward(dl, D.data(), out.data(), 1, nullptr), SN_SUCCESS);
  EXPECT_NEAR(get_state(dl).sigma, 4.f, 1e-5f);
}

// ---- bad input: a specific status, a message naming the argument, and an untouched layer ----

#define EXPECT_FAILS(call, status, needle)                                          \
  do {                                                                              \
    sn_status_t st_ = (call);                                                       \
    EXPECT_EQ(st_, status) << sn_status_name(st_) << ": " << sn_last_error_message(); \
    EXPECT_NE(std::string(sn_last_error_message()).find(needle), std::string::npos) \
        << "message: " << sn_last_error_message();                                  \
  } while (0)

TEST(BadInput, DescriptorIsRejectedWithTheArgumentNamed) {
  sn_layer_t *l = reinterpret_cast<sn_layer_t *>(0x1);
  auto create = [&](sn_layer_desc_t d) {
    l = reinterpret_cast<sn_layer_t *>(0x1);
    return sn_layer_create(&l, &d);
  };
  sn_layer_desc_t good = make_desc({4, 5}, SN_BACKEND_CPU);
  EXPECT_FAILS(sn_layer_create(nullptr, &good), SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_layer_create(&l, nullptr), SN_ERROR_NULL_POINTER, "desc");
  EXPECT_EQ(l, nullptr) << "*layer is NULL after a failure";

  sn_layer_desc_t d = good;
  d.ndim = 0;
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_SHAPE, "ndim");
  d.ndim = 9;
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_SHAPE, "ndim");
  d = good;
  d.shape[1] = 0;
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_SHAPE, "shape[1]");
  d.shape[1] = -3;
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_SHAPE, "shape[1]");
  d = good;
  d.ndim = 3;
  d.shape[0] = int64_t(1) << 30;
  d.shape[1] = int64_t(1) << 30;
  d.shape[2] = 8;
  EXPECT_FAILS(create(d), SN_ERROR_SIZE_OVERFLOW, "shape");
  d = good;  // 2^60 elements fit the element count's check; the reference's 3 · 2^60 doubles do not
  d.shape[0] = int64_t(1) << 60;
  d.shape[1] = 1;
  EXPECT_FAILS(create(d), SN_ERROR_SIZE_OVERFLOW, "size_t");
  d = good;
  d.dim = 2;
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_DIM, "dim");
  d.dim = -3;
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_DIM, "dim");
  d = good;
  d.n_power_iterations = 0;
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_VALUE, "n_power_iterations");
  d.n_power_iterations = 1000001;
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_VALUE, "n_power_iterations");
  d = good;
  d.warmup_iterations = -1;
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_VALUE, "warmup_iterations");
  d.warmup_iterations = 1000001;
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_VALUE, "warmup_iterations");
  // The ends of every range are accepted: dim −ndim and ndim − 1, 8 dimensions, 10^6 iterations.
  for (const int dim : {-2, 1}) {
    d = good;
    d.dim = dim;
    LayerPtr ok(d);
    EXPECT_NE(ok.p, nullptr) << "dim " << dim << ": " << sn_last_error_message();
  }
  {
    const int64_t eight[8] = {2, 1, 3, 1, 1, 2, 1, 2};
    ASSERT_EQ(sn_layer_desc_init(&d, 8, eight), SN_SUCCESS);
    d.backend = SN_BACKEND_CPU;
    d.dim = -8;
    d.n_power_iterations = 1000000;
    d.warmup_iterations = 1000000;
    LayerPtr ok(d);
    EXPECT_NE(ok.p, nullptr) << sn_last_error_message();
    int64_t h = 0, w = 0;
    ASSERT_EQ(sn_layer_get_dims(ok, &h, &w), SN_SUCCESS);
    EXPECT_EQ(h, 2);
    EXPECT_EQ(w, 12);
  }
  for (float eps : {0.f, -1e-12f, NAN, INFINITY}) {
    d = good;
    d.eps = eps;
    EXPECT_FAILS(create(d), SN_ERROR_INVALID_VALUE, "eps");
  }
  for (float c : {-1.f, NAN, INFINITY}) {
    d = good;
    d.norm_bound = c;
    EXPECT_FAILS(create(d), SN_ERROR_INVALID_VALUE, "norm_bound");
  }
  d = good;
  d.dtype = sn_dtype_t(7);
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_VALUE, "dtype");
  d = good;
  d.order = sn_order_t(2);
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_VALUE, "order");
  d = good;
  d.eps_mode = sn_eps_mode_t(2);
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_VALUE, "eps_mode");
  d.eps_mode = sn_eps_mode_t(-1);
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_VALUE, "eps_mode");
  d = good;
  d.algo = sn_algo_t(SN_ALGO_COUNT);
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_VALUE, "algo");
  d = make_desc({769, 10}, SN_BACKEND_CPU);  // v-first: h > 768 rows of fp32 do not fit a panel
  d.algo = SN_ALGO_ONE_PASS;
  d.order = SN_ORDER_V_FIRST;
  EXPECT_FAILS(create(d), SN_ERROR_NOT_SUPPORTED, "h = 769");
  d.dtype = SN_DTYPE_BFLOAT16;  // 1536 rows of a 2-byte type do
  {
    LayerPtr ok(d);
    EXPECT_NE(ok.p, nullptr) << sn_last_error_message();
  }
  d.dtype = SN_DTYPE_FLOAT32;
  d.shape[0] = 768;
  {
    LayerPtr ok(d);
    EXPECT_NE(ok.p, nullptr) << sn_last_error_message();
  }
  d = make_desc({3, 4, 8}, SN_BACKEND_CPU, 1);  // rows not contiguous (A = 3)
  d.algo = SN_ALGO_ONE_PASS;
  EXPECT_FAILS(create(d), SN_ERROR_NOT_SUPPORTED, "3 elements in the axes before dim");
  d = make_desc({8, 6}, SN_BACKEND_CPU);  // w not a multiple of 4
  d.algo = SN_ALGO_ONE_PASS;
  EXPECT_FAILS(create(d), SN_ERROR_NOT_SUPPORTED, "w = 6");
  // The one pass by rows takes rows of up to 16384 elements, multiples of 4 (either backend).
  for (const int64_t w : {int64_t(4), int64_t(12), int64_t(16384)}) {
    d = make_desc({8, w}, SN_BACKEND_CPU);
    d.algo = SN_ALGO_ONE_PASS;
    LayerPtr ok(d);
    EXPECT_NE(ok.p, nullptr) << "w = " << w << ": " << sn_last_error_message();
  }
  d = make_desc({8, 16388}, SN_BACKEND_CPU);
  d.algo = SN_ALGO_ONE_PASS;
  EXPECT_FAILS(create(d), SN_ERROR_NOT_SUPPORTED, "w = 16388");
  d = good;
  d.backend = sn_backend_t(5);
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_BACKEND, "backend");
  d.algo = SN_ALGO_ONE_PASS;  // the backend is judged first, whatever the algorithm
  d.shape[1] = 6;
  EXPECT_FAILS(create(d), SN_ERROR_INVALID_BACKEND, "backend");
  EXPECT_EQ(l, nullptr);
}

TEST(BadInput, CudaBackendWithoutGpuOrWithABadDevice) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  (void)cudaGetLastError();
  const bool gpu = e == cudaSuccess && count > 0;
  sn_layer_desc_t d = make_desc({4, 5}, SN_BACKEND_CUDA);
  sn_layer_t *l = nullptr;
  if (!gpu) {
    EXPECT_FAILS(sn_layer_create(&l, &d), SN_ERROR_NO_DEVICE, "no usable GPU");
    // ... with what the runtime said (error 35 here: "CUDA driver version is insufficient ...")
    EXPECT_NE(std::string(sn_last_error_message()).find(e == cudaSuccess ? "0 devices" : cudaGetErrorString(e)),
              std::string::npos)
        << sn_last_error_message();
  } else {
    d.device = count;
    EXPECT_FAILS(sn_layer_create(&l, &d), SN_ERROR_INVALID_DEVICE, "desc->device");
    d.device = -1;
    EXPECT_FAILS(sn_layer_create(&l, &d), SN_ERROR_INVALID_DEVICE, "desc->device");
  }
  EXPECT_EQ(l, nullptr);
}

TEST_F(CpuApi, BadCallsLeaveTheLayerAsItWas) {
  const int64_t h = 5, w = 6;
  LayerPtr l(make_desc({h, w}, SN_BACKEND_CPU));
  std::vector<float> W = rng.normals(h * w), out(W.size());
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  const State before = get_state(l);

  EXPECT_FAILS(sn_forward(nullptr, W.data(), out.data(), 1, nullptr), SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_forward(l, nullptr, out.data(), 1, nullptr), SN_ERROR_NULL_POINTER, "W");
  EXPECT_FAILS(sn_forward(l, W.data(), nullptr, 1, nullptr), SN_ERROR_NULL_POINTER, "W_sn");
  EXPECT_FAILS(sn_forward(l, W.data(), W.data() + 1, 1, nullptr), SN_ERROR_INVALID_VALUE, "overlap");
  EXPECT_FAILS(sn_layer_warmup(l, nullptr, nullptr), SN_ERROR_NULL_POINTER, "W");

  std::vector<float> u = before.u, v = before.v;
  EXPECT_FAILS(sn_layer_set_state(l, nullptr, v.data(), 1.f, 1, nullptr), SN_ERROR_NULL_POINTER, "u");
  EXPECT_FAILS(sn_layer_set_state(l, u.data(), nullptr, 1.f, 1, nullptr), SN_ERROR_NULL_POINTER, "v");
  u[2] = NAN;
  EXPECT_FAILS(sn_layer_set_state(l, u.data(), v.data(), 1.f, 1, nullptr), SN_ERROR_INVALID_VALUE, "u[2]");
  u = before.u;
  v[5] = INFINITY;
  EXPECT_FAILS(sn_layer_set_state(l, u.data(), v.data(), 1.f, 1, nullptr), SN_ERROR_INVALID_VALUE, "v[5]");
  v = before.v;
  EXPECT_FAILS(sn_layer_set_state(l, u.data(), v.data(), -1.f, 1, nullptr), SN_ERROR_INVALID_VALUE, "sigma");
  EXPECT_FAILS(sn_layer_set_state(l, u.data(), v.data(), NAN, 1, nullptr), SN_ERROR_INVALID_VALUE, "sigma");

  EXPECT_FAILS(sn_layer_get_state(nullptr, u.data(), v.data(), nullptr, nullptr, nullptr),
               SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_layer_get_sigma(nullptr, nullptr, nullptr, nullptr), SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_layer_sigma_ptr(nullptr, nullptr, nullptr), SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_layer_get_dims(nullptr, nullptr, nullptr), SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_layer_reset(nullptr, 1, nullptr), SN_ERROR_NULL_POINTER, "layer");
  // Every other entry point with a NULL layer or output.
  std::vector<float> G = rng.normals(h * w), dW(W.size());
  float f = 0;
  const float *cf = nullptr;
  uint32_t hw = 0;
  const uint32_t *chw = nullptr;
  EXPECT_FAILS(sn_forward_scale_only(nullptr, W.data(), 1, nullptr), SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_layer_warmup(nullptr, W.data(), nullptr), SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_backward(nullptr, W.data(), G.data(), dW.data(), 0, nullptr, nullptr), SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_layer_scale_ptr(nullptr, &cf), SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_layer_get_scale(nullptr, &f, nullptr), SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_layer_get_scale(l, nullptr, nullptr), SN_ERROR_NULL_POINTER, "scale");
  EXPECT_FAILS(sn_layer_health_ptr(nullptr, &chw), SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_layer_health_ptr(l, nullptr), SN_ERROR_NULL_POINTER, "health");
  EXPECT_FAILS(sn_layer_get_health(nullptr, &hw, 0, nullptr), SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_layer_get_health(l, nullptr, 1, nullptr), SN_ERROR_NULL_POINTER, "health");
  EXPECT_FAILS(sn_layer_set_state(nullptr, u.data(), v.data(), 1.f, 1, nullptr), SN_ERROR_NULL_POINTER, "layer");
  // dW overlapping W (not the same buffer) is refused like an overlap with G.
  std::vector<float> big(W.size() + 1);
  std::copy(W.begin(), W.end(), big.begin());
  EXPECT_FAILS(sn_backward(l, big.data(), G.data(), big.data() + 1, 0, nullptr, nullptr), SN_ERROR_INVALID_VALUE, "overlap");
  EXPECT_NE(std::string(sn_last_error_message()).find(") and W ("), std::string::npos) << sn_last_error_message();
  // ... each message naming the buffer dW overlaps (refused before anything is read).
  EXPECT_FAILS(sn_backward(l, W.data(), big.data(), big.data() + 1, 0, nullptr, nullptr), SN_ERROR_INVALID_VALUE, "overlap");
  EXPECT_NE(std::string(sn_last_error_message()).find(") and G ("), std::string::npos) << sn_last_error_message();

  EXPECT_TRUE(same_state(get_state(l), before));
}

// sn_layer_warmup runs the warm-up iterations alone (bitwise the reference's), once: a second call
// does nothing, and the next forward runs n_power_iterations. With no warm-up iterations it only
// marks the layer warmed up (a backward may follow).
TEST_F(CpuApi, WarmupCallRunsTheWarmUpAlone) {
  const int64_t h = 10, w = 7;
  const sn_view_t vw{1, h, w};
  for (const sn_order_t order : {SN_ORDER_U_FIRST, SN_ORDER_V_FIRST}) {
    SCOPED_TRACE(order == SN_ORDER_U_FIRST ? "u-first" : "v-first");
    sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
    d.order = order;
    d.warmup_iterations = 5;
    d.n_power_iterations = 2;
    LayerPtr l(d);
    std::vector<float> W = gapped_matrix(rng, h, w), out(W.size());
    const State s0 = get_state(l);
    ASSERT_EQ(sn_layer_warmup(l, W.data(), nullptr), SN_SUCCESS);
    const State ref = reference_after(W, vw, s0, 5, order), s1 = get_state(l);
    EXPECT_TRUE(bitwise_equal(s1.u, ref.u));
    EXPECT_TRUE(bitwise_equal(s1.v, ref.v));
    EXPECT_EQ(s1.sigma, ref.sigma);
    EXPECT_EQ(s1.warmed, 1);
    ASSERT_EQ(sn_layer_warmup(l, W.data(), nullptr), SN_SUCCESS);
    EXPECT_TRUE(same_state(get_state(l), s1)) << "warmed up already: nothing to do";
    ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
    const State ref2 = reference_after(W, vw, s1, 2, order), s2 = get_state(l);
    EXPECT_TRUE(bitwise_equal(s2.u, ref2.u));
    EXPECT_EQ(s2.sigma, ref2.sigma);
  }
  sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
  d.warmup_iterations = 0;
  LayerPtr l(d);
  std::vector<float> W = gapped_matrix(rng, h, w), G = rng.normals(h * w), dW(W.size());
  const State s0 = get_state(l);
  ASSERT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), 0, nullptr, nullptr), SN_ERROR_INVALID_STATE);
  ASSERT_EQ(sn_layer_warmup(l, W.data(), nullptr), SN_SUCCESS);
  const State s1 = get_state(l);
  EXPECT_TRUE(bitwise_equal(s1.u, s0.u));
  EXPECT_TRUE(bitwise_equal(s1.v, s0.v));
  EXPECT_EQ(s1.sigma, 0.f);
  EXPECT_EQ(s1.warmed, 1);
  EXPECT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), 0, nullptr, nullptr), SN_SUCCESS) << sn_last_error_message();
}

// The device-pointer getters point at what the copying getters return (on the CPU backend, host
// memory), and sn_layer_get_state skips any NULL output.
TEST_F(CpuApi, PointersAndCopiesAgree) {
  const int64_t h = 6, w = 9;
  sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
  d.norm_bound = 0.5f;
  LayerPtr l(d);
  std::vector<float> W = gapped_matrix(rng, h, w), out(W.size());
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  W.assign(W.size(), 0.f);
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);  // SN_HEALTH_ZERO
  const float *sp = nullptr, *ip = nullptr, *cp = nullptr;
  const uint32_t *hp = nullptr;
  ASSERT_EQ(sn_layer_sigma_ptr(l, &sp, &ip), SN_SUCCESS);
  ASSERT_EQ(sn_layer_scale_ptr(l, &cp), SN_SUCCESS);
  ASSERT_EQ(sn_layer_health_ptr(l, &hp), SN_SUCCESS);
  float sigma = 0, inv = 0, scale = 0;
  uint32_t health = 0;
  ASSERT_EQ(sn_layer_get_sigma(l, &sigma, &inv, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_get_scale(l, &scale, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_get_health(l, &health, 0, nullptr), SN_SUCCESS);
  EXPECT_GT(sigma, 0.5f);
  EXPECT_EQ(*sp, sigma);
  EXPECT_EQ(*ip, inv);
  EXPECT_EQ(*cp, scale);
  EXPECT_EQ(scale, 1.f / (sigma / 0.5f));
  EXPECT_EQ(health, uint32_t(SN_HEALTH_ZERO));
  // The word itself may hold the internal restart request (a zero σ left one): SN_HEALTH_ALL masks it.
  EXPECT_NE(*hp & ~SN_HEALTH_ALL, 0u);
  EXPECT_EQ(*hp & SN_HEALTH_ALL, health);
  static_assert(SN_HEALTH_ALL == (SN_HEALTH_NONFINITE | SN_HEALTH_ZERO | SN_HEALTH_NEGATIVE |
                                  SN_HEALTH_RECOVERED | SN_HEALTH_SCALE),
                "SN_HEALTH_ALL is every sn_health_flag_t bit");
  const State s = get_state(l);
  std::vector<float> u(s.u.size()), v(s.v.size());
  float sg = 0;
  int warmed = 0;
  ASSERT_EQ(sn_layer_get_state(l, u.data(), nullptr, nullptr, nullptr, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_get_state(l, nullptr, v.data(), nullptr, nullptr, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_get_state(l, nullptr, nullptr, &sg, nullptr, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_get_state(l, nullptr, nullptr, nullptr, &warmed, nullptr), SN_SUCCESS);
  EXPECT_TRUE(bitwise_equal(u, s.u));
  EXPECT_TRUE(bitwise_equal(v, s.v));
  EXPECT_EQ(sg, s.sigma);
  EXPECT_EQ(warmed, 1);
}

// sn_layer_set_state with σ = 0 leaves 1/σ = scale = 0 (no estimate), and a zero u, like a zero v,
// makes the next training forward restart from ones (SN_HEALTH_RECOVERED), in either order.
TEST_F(CpuApi, SetStateWithNoSigmaOrAZeroU) {
  const int64_t h = 9, w = 6;
  for (const sn_order_t order : {SN_ORDER_U_FIRST, SN_ORDER_V_FIRST}) {
    SCOPED_TRACE(order == SN_ORDER_U_FIRST ? "u-first" : "v-first");
    sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
    d.order = order;
    d.norm_bound = 2.f;
    LayerPtr l(d);
    const std::vector<float> u = rng.normals(h), v = rng.normals(w), zero(static_cast<size_t>(h), 0.f);
    ASSERT_EQ(sn_layer_set_state(l, u.data(), v.data(), 0.f, 1, nullptr), SN_SUCCESS);
    float sigma = -1, inv = -1, scale = -1;
    ASSERT_EQ(sn_layer_get_sigma(l, &sigma, &inv, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_layer_get_scale(l, &scale, nullptr), SN_SUCCESS);
    EXPECT_EQ(sigma, 0.f);
    EXPECT_EQ(inv, 0.f);
    EXPECT_EQ(scale, 0.f);
    uint32_t health = 1;
    ASSERT_EQ(sn_layer_get_health(l, &health, 0, nullptr), SN_SUCCESS);
    EXPECT_EQ(health, 0u);
    ASSERT_EQ(sn_layer_set_state(l, zero.data(), v.data(), 0.f, 1, nullptr), SN_SUCCESS);
    std::vector<float> W = gapped_matrix(rng, h, w), out(W.size());
    ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_layer_get_health(l, &health, 0, nullptr), SN_SUCCESS);
    EXPECT_EQ(health, uint32_t(SN_HEALTH_RECOVERED)) << "a zero u asks for the restart";
    EXPECT_GT(get_state(l).sigma, 0.f);
  }
}

// sn_layer_set_state's 1/σ is 1 / σ and its scale 1 / d: d = σ, or max(1, σ / c) under a norm
// bound c (active or not), without γ even where one is bound (a mutation that made the scale 1 / σ
// under a bound went unseen).
TEST_F(CpuApi, SetStateSetsTheScaleOfItsSigma) {
  const int64_t h = 9, w = 6;
  const std::vector<float> u = rng.normals(h), v = rng.normals(w);
  const float gamma = 0.5f;
  struct Case {
    float bound, sigma, scale;
  };
  for (const Case &c : {Case{0.f, 6.f, 1.f / 6.f}, Case{2.f, 6.f, 1.f / 3.f}, Case{2.f, 1.f, 1.f},
                        Case{2.f, 2.f, 1.f}, Case{4.f, 6.f, 1.f / 1.5f}}) {
    for (const bool with_gamma : {false, true}) {
      SCOPED_TRACE("bound " + std::to_string(c.bound) + ", sigma " + std::to_string(c.sigma) +
                   (with_gamma ? ", gamma bound" : ""));
      sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
      d.norm_bound = c.bound;
      LayerPtr l(d);
      if (with_gamma) {
        ASSERT_EQ(sn_layer_set_gamma(l, &gamma), SN_SUCCESS);
      }
      ASSERT_EQ(sn_layer_set_state(l, u.data(), v.data(), c.sigma, 1, nullptr), SN_SUCCESS);
      float sigma = 0, inv = 0, scale = 0;
      ASSERT_EQ(sn_layer_get_sigma(l, &sigma, &inv, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_layer_get_scale(l, &scale, nullptr), SN_SUCCESS);
      EXPECT_EQ(sigma, c.sigma);
      EXPECT_EQ(inv, 1.f / c.sigma);
      EXPECT_EQ(scale, c.scale);
    }
  }
}

// sn_layer_set_state's warmed_up: 0 leaves the layer not warmed up (sn_layer_get_state says so,
// the backward refuses it, its next forward runs the warm-up: the forward's σ is then a warm-up's
// and not one iteration's), 1 warmed up (a mutation that ignored 0 went unseen).
TEST_F(CpuApi, SetStateWithWarmedUpZeroRunsTheWarmUpAgain) {
  const int64_t h = 40, w = 24;
  sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
  d.warmup_iterations = 20;
  const std::vector<float> W = gapped_matrix(rng, h, w);
  std::vector<float> out(W.size()), G = rng.normals(h * w), dW(W.size());
  // A random start: one iteration from it falls short of the warmed-up σ on a gapped matrix.
  const std::vector<float> u = rng.normals(h), v = rng.normals(w);
  LayerPtr cold(d), warm(d), ref(d);
  ASSERT_EQ(sn_layer_set_state(cold, u.data(), v.data(), 0.f, 0, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_set_state(warm, u.data(), v.data(), 0.f, 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(get_state(cold).warmed, 0);
  EXPECT_EQ(get_state(warm).warmed, 1);
  EXPECT_FAILS(sn_backward(cold, W.data(), G.data(), dW.data(), 0, nullptr, nullptr), SN_ERROR_INVALID_STATE,
               "not warmed up");
  ASSERT_EQ(sn_forward(cold, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_forward(warm, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(get_state(cold).warmed, 1);
  // The same start, warmed up by hand: the cold layer's forward is its warm-up and then its step.
  ASSERT_EQ(sn_layer_set_state(ref, u.data(), v.data(), 0.f, 1, nullptr), SN_SUCCESS);
  for (int k = 0; k < d.warmup_iterations; ++k)
    ASSERT_EQ(sn_forward_scale_only(ref, W.data(), 1, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_forward(ref, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  EXPECT_NEAR(get_state(cold).sigma / get_state(ref).sigma, 1.0, 1e-6);
  EXPECT_GT(std::fabs(get_state(cold).sigma / get_state(warm).sigma - 1.0), 1e-4)
      << "the warm layer's one iteration from a random start should be short of the warmed-up σ";
}

// ---- The CPU backend's threads (SPECNORM_CPU_THREADS, host/cpu_backend.c) --------------------

// A CPU layer reads SPECNORM_CPU_THREADS when it is created: an integer from 1 to 64 is taken,
// anything else leaves the default, the processors the creating thread may run on, at most 8.
TEST(CpuThreads, TheEnvironmentSetsALayersThreads) {
  const sn_layer_desc_t d = make_desc({8, 6}, SN_BACKEND_CPU);
  int dflt = 0;
  {
    ScopedEnv env("SPECNORM_CPU_THREADS", nullptr);
    LayerPtr l(d);
    ASSERT_TRUE(l.p);
    dflt = l.p->cpu_threads;
  }
  EXPECT_GE(dflt, 1);
  EXPECT_LE(dflt, 8);
  const struct {
    const char *value;
    int threads;
  } cases[] = {{"1", 1}, {"5", 5}, {"64", 64}, {"0", dflt}, {"65", dflt}, {"-2", dflt},
               {"3x", dflt}, {"abc", dflt}, {"", dflt}, {"99999999999999999999", dflt}};
  for (const auto &c : cases) {
    ScopedEnv env("SPECNORM_CPU_THREADS", c.value);
    LayerPtr l(d);
    ASSERT_TRUE(l.p);
    EXPECT_EQ(l.p->cpu_threads, c.threads) << "SPECNORM_CPU_THREADS=\"" << c.value << "\"";
  }
}

// The same CPU layers created with 1 thread and with 7 (SPECNORM_CPU_THREADS) give the same bits:
// states, W_sn, dW (fresh and accumulated, with and without the σ term) and ∂L/∂γ, through
// training, eval and scale-only forwards. The weights are large enough for the tests' grain
// (kTestGrain, 2^17 elements a thread) to split them: rows, a view with A > 1 and B > 1, a dim −1 view (B = 1),
// both orders, fp32 and bf16, and a γ.
TEST(CpuThreads, LayersGiveTheSameBitsOnAnyNumberOfThreads) {
  SN_SEEDED_RNG();
  const ScopedGrain grain;
  struct Case {
    std::vector<int64_t> shape;
    int dim;
    sn_order_t order;
    sn_dtype_t dt;
  } cases[] = {{{600, 1000}, 0, SN_ORDER_U_FIRST, SN_DTYPE_FLOAT32},
               {{40, 300, 5, 5}, 1, SN_ORDER_V_FIRST, SN_DTYPE_FLOAT32},
               {{1000, 401}, -1, SN_ORDER_V_FIRST, SN_DTYPE_BFLOAT16},
               {{517, 999}, 0, SN_ORDER_U_FIRST, SN_DTYPE_BFLOAT16}};
  for (const Case &c : cases) {
    SCOPED_TRACE(shape_str(c.shape) + " dim " + std::to_string(c.dim));
    sn_layer_desc_t d = make_desc(c.shape, SN_BACKEND_CPU, c.dim);
    d.order = c.order;
    d.dtype = c.dt;
    d.n_power_iterations = 2;
    d.warmup_iterations = 3;
    const int64_t n = numel_of(c.shape);
    ASSERT_GE(n, 2 * sn_ref_grain()) << "the case must split at the tests' grain";
    const size_t bytes = static_cast<size_t>(n) * sn_dtype_size(c.dt);
    std::vector<uint8_t> W(bytes), G(bytes), D(bytes);
    const std::vector<float> w = rng.normals(n), g = rng.normals(n), dw = rng.normals(n);
    for (int64_t k = 0; k < n; ++k) {
      sn_store(W.data(), c.dt, k, w[static_cast<size_t>(k)]);
      sn_store(G.data(), c.dt, k, g[static_cast<size_t>(k)]);
      sn_store(D.data(), c.dt, k, dw[static_cast<size_t>(k)]);
    }
    struct Run {
      std::vector<State> states;
      std::vector<std::vector<uint8_t>> outs;
      std::vector<float> dgamma;
    };
    auto run = [&](const char *threads) {
      Run r;
      ScopedEnv env("SPECNORM_CPU_THREADS", threads);
      LayerPtr l(d);
      EXPECT_TRUE(l.p);
      if (!l.p) return r;
      EXPECT_EQ(l.p->cpu_threads, std::atoi(threads));
      const float gamma = 0.8f;
      EXPECT_EQ(sn_layer_set_gamma(l, &gamma), SN_SUCCESS) << sn_last_error_message();
      std::vector<uint8_t> out(bytes);
      for (int step = 0; step < 4; ++step) {
        const int training = step != 2;
        const sn_status_t st = step == 3 ? sn_forward_scale_only(l, W.data(), 1, nullptr)
                                         : sn_forward(l, W.data(), out.data(), training, nullptr);
        EXPECT_EQ(st, SN_SUCCESS) << sn_last_error_message();
        r.states.push_back(get_state(l));
        r.outs.push_back(out);
      }
      // The layer's count holds for its calls alone: the calling thread's own is back after each.
      EXPECT_EQ(sn_ref_set_threads(1), 1) << "after the forwards";
      for (unsigned flags : {0u, unsigned(SN_BACKWARD_ACCUMULATE), unsigned(SN_BACKWARD_DETACH_SIGMA)}) {
        std::vector<uint8_t> dW = D;
        float dg = -1.f;
        EXPECT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), flags, &dg, nullptr), SN_SUCCESS)
            << sn_last_error_message();
        r.outs.push_back(dW);
        r.dgamma.push_back(dg);
        EXPECT_EQ(sn_ref_set_threads(1), 1) << "after a backward";
      }
      return r;
    };
    const int64_t started0 = sn_ref_threads_started();
    const Run one = run("1");
    const int64_t started1 = sn_ref_threads_started();
    const Run seven = run("7");
    EXPECT_EQ(started1, started0) << "one thread started others";
    EXPECT_GT(sn_ref_threads_started(), started1) << "seven threads did not split";
    ASSERT_EQ(one.states.size(), seven.states.size());
    for (size_t k = 0; k < one.states.size(); ++k) EXPECT_TRUE(same_state(one.states[k], seven.states[k])) << "step " << k;
    ASSERT_EQ(one.outs.size(), seven.outs.size());
    for (size_t k = 0; k < one.outs.size(); ++k) EXPECT_TRUE(one.outs[k] == seven.outs[k]) << "output " << k;
    EXPECT_EQ(0, std::memcmp(one.dgamma.data(), seven.dgamma.data(), one.dgamma.size() * sizeof(float)));
    // Not a vacuous comparison: the steps changed the state and wrote W_sn.
    EXPECT_FALSE(same_state(one.states[0], one.states[1]));
    EXPECT_FALSE(one.outs[0] == std::vector<uint8_t>(bytes));
  }
}

// sn_layer_get_paths: NONE for each kind of call until one runs (a warm-up alone is not one), then
// the CPU backend for each; a failed call records nothing; sn_path_name names every path once.
TEST_F(CpuApi, PathsRecordEachKindOfCall) {
  const int64_t h = 6, w = 7;
  LayerPtr l(make_desc({h, w}, SN_BACKEND_CPU));
  std::vector<float> W = rng.normals(h * w), out(W.size()), G = rng.normals(h * w), dW(W.size());
  sn_paths_t p;
  std::memset(&p, 0xff, sizeof p);
  ASSERT_EQ(sn_layer_get_paths(l, &p), SN_SUCCESS);
  const auto expect = [&](sn_path_t train, sn_path_t scale, sn_path_t eval, sn_path_t bw) {
    sn_paths_t q;
    std::memset(&q, 0xff, sizeof q);
    ASSERT_EQ(sn_layer_get_paths(l, &q), SN_SUCCESS);
    EXPECT_EQ(q.train, train);
    EXPECT_EQ(q.scale_only, scale);
    EXPECT_EQ(q.eval, eval);
    EXPECT_EQ(q.backward, bw);
    EXPECT_EQ(q.dropped, 0u);
  };
  expect(SN_PATH_NONE, SN_PATH_NONE, SN_PATH_NONE, SN_PATH_NONE);
  ASSERT_EQ(sn_layer_warmup(l, W.data(), nullptr), SN_SUCCESS);
  expect(SN_PATH_NONE, SN_PATH_NONE, SN_PATH_NONE, SN_PATH_NONE);
  ASSERT_EQ(sn_forward_scale_only(l, W.data(), 0, nullptr), SN_SUCCESS);
  expect(SN_PATH_NONE, SN_PATH_NONE, SN_PATH_CPU, SN_PATH_NONE);
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  expect(SN_PATH_CPU, SN_PATH_NONE, SN_PATH_CPU, SN_PATH_NONE);
  // Failed calls of each kind record nothing.
  EXPECT_EQ(sn_forward_scale_only(l, nullptr, 1, nullptr), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), 0x80u, nullptr, nullptr), SN_ERROR_INVALID_VALUE);
  EXPECT_EQ(sn_backward(l, W.data(), G.data(), W.data() + 1, 0, nullptr, nullptr), SN_ERROR_INVALID_VALUE);
  expect(SN_PATH_CPU, SN_PATH_NONE, SN_PATH_CPU, SN_PATH_NONE);
  ASSERT_EQ(sn_forward_scale_only(l, W.data(), 1, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), 0, nullptr, nullptr), SN_SUCCESS);
  expect(SN_PATH_CPU, SN_PATH_CPU, SN_PATH_CPU, SN_PATH_CPU);

  EXPECT_FAILS(sn_layer_get_paths(nullptr, &p), SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_layer_get_paths(l, nullptr), SN_ERROR_NULL_POINTER, "paths");

  // The names the header lists (sn_bench's `path` column and the scripts read them), one each.
  const std::pair<sn_path_t, const char *> names[] = {
      {SN_PATH_NONE, "none"},
      {SN_PATH_CPU, "cpu"},
      {SN_PATH_ONE_D, "one-d"},
      {SN_PATH_MATVEC, "matvec"},
      {SN_PATH_ONE_PASS_ROWS, "one-pass-rows"},
      {SN_PATH_ONE_PASS_COOP, "one-pass-coop"},
      {SN_PATH_ONE_PASS_COLS, "one-pass-cols"},
      {SN_PATH_ON_CHIP, "on-chip"},
      {SN_PATH_ON_CHIP_GRID, "on-chip-grid"},
      {SN_PATH_BACKWARD_KERNELS, "backward-kernels"},
      {SN_PATH_BACKWARD_COOP, "backward-coop"},
  };
  ASSERT_EQ(std::size(names), size_t(SN_PATH_COUNT));
  for (size_t k = 0; k < std::size(names); ++k) {
    EXPECT_EQ(int(names[k].first), int(k));
    EXPECT_STREQ(sn_path_name(names[k].first), names[k].second);
  }
  // Values past the last path (within the enum's range of values, as C++ requires of a cast).
  for (const int k : {int(SN_PATH_COUNT), 15}) EXPECT_STREQ(sn_path_name(static_cast<sn_path_t>(k)), "unknown") << k;
}

// The threads a CPU layer's description names are those its calls may use: at most one a grain of
// elements, up to its own; the calling thread alone below two grains (host/describe.c). Checked
// against the threads a training forward starts (sn_ref_threads_started): each of its three loops
// over W (M v by rows, Mᵀ u by 16 columns, the division by 512 elements) starts all but the
// calling thread's part, and a loop of fewer rows, column groups or chunks than threads splits less.
TEST_F(CpuApi, DescribeNamesTheThreadsTheCallsUse) {
  auto text = [](const sn_layer_t *l) {
    char buf[512];
    EXPECT_EQ(sn_layer_describe(l, buf, sizeof buf, nullptr), SN_SUCCESS);
    return std::string(buf);
  };
  auto started = [](sn_layer_t *l, int64_t h, int64_t w) {
    std::vector<float> W(size_t(h * w), 0.5f), out(W.size());
    W[0] = 2.0f;
    const int64_t before = sn_ref_threads_started();
    EXPECT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);  // no warm-up: 3 loops
    return sn_ref_threads_started() - before;
  };
  ScopedGrain grain(64);  // splits from 128 elements
  {
    ScopedEnv env("SPECNORM_CPU_THREADS", "3");
    sn_layer_desc_t d[3] = {make_desc({6, 21}, SN_BACKEND_CPU), make_desc({16, 8}, SN_BACKEND_CPU),
                            make_desc({16, 12}, SN_BACKEND_CPU)};
    for (sn_layer_desc_t &x : d) x.warmup_iterations = 0;
    LayerPtr small(d[0]), mid(d[1]), large(d[2]);
    ASSERT_TRUE(small.p && mid.p && large.p);
    EXPECT_EQ(text(small.p).rfind("cpu (1 thread at 126 elements; 3 from 128),", 0), 0u) << text(small.p);
    EXPECT_EQ(text(mid.p).rfind("cpu (up to 2 of 3 threads at 128 elements),", 0), 0u) << text(mid.p);
    EXPECT_EQ(text(large.p).rfind("cpu (up to 3 threads),", 0), 0u) << text(large.p);
    EXPECT_EQ(started(small.p, 6, 21), 0);
    EXPECT_EQ(started(mid.p, 16, 8), 1);    // M v on 2 threads; Mᵀ u and the division: one part
    EXPECT_EQ(started(large.p, 16, 12), 2);  // M v on 3
  }
  {
    ScopedGrain larger(1024);
    ScopedEnv env("SPECNORM_CPU_THREADS", "3");
    sn_layer_desc_t d = make_desc({64, 48}, SN_BACKEND_CPU);  // 3 grains: every loop on 3 threads
    d.warmup_iterations = 0;
    LayerPtr l(d);
    ASSERT_TRUE(l.p);
    EXPECT_EQ(text(l.p).rfind("cpu (up to 3 threads),", 0), 0u) << text(l.p);
    EXPECT_EQ(started(l.p, 64, 48), 3 * 2);
  }
  LayerPtr three;  // on 3 threads, whatever the environment says after
  {
    ScopedEnv env("SPECNORM_CPU_THREADS", "3");
    const sn_layer_desc_t d = make_desc({8, 16}, SN_BACKEND_CPU);
    ASSERT_EQ(sn_layer_create(&three.p, &d), SN_SUCCESS) << sn_last_error_message();
  }
  ScopedEnv env("SPECNORM_CPU_THREADS", "1");
  LayerPtr one(make_desc({8, 16}, SN_BACKEND_CPU));
  ASSERT_TRUE(one.p);
  EXPECT_EQ(text(one.p).rfind("cpu (1 thread),", 0), 0u) << text(one.p);
  // A group: up to the most threads of its members, whichever member has them.
  std::vector<float> W(8 * 16, 0.5f), Wa(W.size()), Wb(W.size());
  const auto group_text = [&](sn_layer_t *a, sn_layer_t *b) {
    sn_layer_t *layers[2] = {a, b};
    const void *Ws[2] = {W.data(), W.data()};
    void *Wsn[2] = {Wa.data(), Wb.data()};
    sn_group_t *g = nullptr;
    EXPECT_EQ(sn_group_create(&g, layers, Ws, Wsn, b ? 2 : 1), SN_SUCCESS) << sn_last_error_message();
    char buf[512] = "";
    EXPECT_EQ(sn_group_describe(g, buf, sizeof buf, nullptr), SN_SUCCESS);
    sn_group_destroy(g);
    return std::string(buf);
  };
  EXPECT_EQ(group_text(one.p, nullptr).rfind("cpu (1 thread), 1 layer of 128 elements", 0), 0u)
      << group_text(one.p, nullptr);
  EXPECT_EQ(group_text(one.p, three.p).rfind("cpu (up to 3 threads), 2 layers", 0), 0u) << group_text(one.p, three.p);
  EXPECT_EQ(group_text(three.p, one.p).rfind("cpu (up to 3 threads), 2 layers", 0), 0u) << group_text(three.p, one.p);
}

// sn_layer_describe: one line with the backend, shape, view, dtype, order, algorithm and the
// recorded paths; the full length whatever the buffer, a truncated copy NUL-terminated, and the
// length alone with no buffer.
TEST_F(CpuApi, DescribeSaysWhatTheLayerIsAndRan) {
  sn_layer_desc_t d = make_desc({6, 2, 3, 3}, SN_BACKEND_CPU, 1);
  d.dtype = SN_DTYPE_BFLOAT16;
  d.order = SN_ORDER_V_FIRST;
  LayerPtr l(d);
  ASSERT_TRUE(l.p);
  std::vector<uint16_t> W(108, 0x3f80), out(108);  // bf16 ones
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  size_t len = 0;
  ASSERT_EQ(sn_layer_describe(l, nullptr, 0, &len), SN_SUCCESS);
  ASSERT_GT(len, 20u);
  std::string full(len + 1, '\x7f');
  size_t len2 = 0;
  ASSERT_EQ(sn_layer_describe(l, &full[0], full.size(), &len2), SN_SUCCESS);
  EXPECT_EQ(len2, len);
  EXPECT_EQ(full[len], '\0');
  full.resize(len);
  EXPECT_EQ(full.find('\n'), std::string::npos) << full;
  for (const char *part : {"cpu (", "shape 6x2x3x3 dim 1 (h 2, w 54)", "bfloat16", "v-first", "algo default",
                           "paths: train cpu, scale-only none, eval none, backward none"})
    EXPECT_NE(full.find(part), std::string::npos) << "no \"" << part << "\" in: " << full;
  EXPECT_EQ(full.find("division"), std::string::npos) << "a CUDA plan for a CPU layer: " << full;
  for (size_t size : {size_t(1), size_t(5), len}) {  // too short: cut, NUL-terminated, full length
    std::string cut(size + 4, '\x7f');
    size_t n = 0;
    ASSERT_EQ(sn_layer_describe(l, &cut[0], size, &n), SN_SUCCESS);
    EXPECT_EQ(n, len);
    EXPECT_EQ(cut[size - 1], '\0');
    EXPECT_EQ(std::string(cut.c_str()), full.substr(0, size - 1));
    EXPECT_EQ(cut[size], '\x7f') << "wrote past size";
  }
  ASSERT_EQ(sn_layer_describe(l, &full[0], 4, nullptr), SN_SUCCESS);  // no length wanted
  EXPECT_FAILS(sn_layer_describe(nullptr, &full[0], 4, &len), SN_ERROR_NULL_POINTER, "layer");
  EXPECT_FAILS(sn_layer_describe(l, nullptr, 4, &len), SN_ERROR_NULL_POINTER, "buf");
}

// Buffers not aligned to their elements (2 bytes for bf16 and fp16, 4 for fp32; 4 for γ and
// ∂L/∂γ) are refused by every call that takes one, by name, before anything runs: on a GPU such a
// pointer faults and ends the CUDA context. The layer's state is left as it was.
TEST_F(CpuApi, MisalignedBuffersAreRefusedByName) {
  for (const sn_dtype_t dt : {SN_DTYPE_FLOAT32, SN_DTYPE_BFLOAT16}) {
    const size_t es = dt == SN_DTYPE_FLOAT32 ? 4 : 2;
    sn_layer_desc_t d = make_desc({4, 6}, SN_BACKEND_CPU);
    d.dtype = dt;
    LayerPtr l(d);
    ASSERT_TRUE(l.p);
    alignas(16) unsigned char buf[4][24 * 4 + 16] = {};
    void *W = buf[0], *W_sn = buf[1], *G = buf[2], *dW = buf[3];
    for (size_t k = 0; k < 24; ++k) {  // ones in the layer's type
      if (dt == SN_DTYPE_FLOAT32)
        reinterpret_cast<float *>(W)[k] = 1.0f + float(k % 5);
      else
        reinterpret_cast<uint16_t *>(W)[k] = uint16_t(0x3f80 + 0x10 * (k % 5));
    }
    ASSERT_EQ(sn_forward(l, W, W_sn, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
    const State before = get_state(l);
    const size_t off = es == 4 ? 2 : 1;  // misaligned for the type
    void *mW = buf[0] + off, *mO = buf[1] + off, *mG = buf[2] + off, *mD = buf[3] + off;
    EXPECT_FAILS(sn_forward(l, mW, W_sn, 1, nullptr), SN_ERROR_INVALID_POINTER, "W (");
    EXPECT_FAILS(sn_forward(l, W, mO, 1, nullptr), SN_ERROR_INVALID_POINTER, "W_sn (");
    EXPECT_FAILS(sn_forward_scale_only(l, mW, 1, nullptr), SN_ERROR_INVALID_POINTER, "aligned");
    EXPECT_FAILS(sn_layer_warmup(l, mW, nullptr), SN_ERROR_INVALID_POINTER, "aligned");
    EXPECT_FAILS(sn_backward(l, mW, G, dW, 0, nullptr, nullptr), SN_ERROR_INVALID_POINTER, "W (");
    EXPECT_FAILS(sn_backward(l, W, mG, dW, 0, nullptr, nullptr), SN_ERROR_INVALID_POINTER, "G (");
    EXPECT_FAILS(sn_backward(l, W, G, mD, 0, nullptr, nullptr), SN_ERROR_INVALID_POINTER, "dW (");
    alignas(8) unsigned char fb[16] = {};
    float *mf = reinterpret_cast<float *>(fb + 2);  // a float not on 4 bytes, whatever the type
    EXPECT_FAILS(sn_backward(l, W, G, dW, 0, mf, nullptr), SN_ERROR_INVALID_POINTER, "dgamma (");
    EXPECT_FAILS(sn_layer_set_gamma(l, mf), SN_ERROR_INVALID_POINTER, "gamma (");
    sn_layer_t *layers[1] = {l.p};
    const void *Ws[1] = {mW};
    void *Wsn[1] = {W_sn};
    sn_group_t *g = reinterpret_cast<sn_group_t *>(0x1);
    EXPECT_FAILS(sn_group_create(&g, layers, Ws, Wsn, 1), SN_ERROR_INVALID_POINTER, "W[0] (");
    EXPECT_EQ(g, nullptr);
    Ws[0] = W;
    Wsn[0] = mO;
    g = reinterpret_cast<sn_group_t *>(0x1);
    EXPECT_FAILS(sn_group_create(&g, layers, Ws, Wsn, 1), SN_ERROR_INVALID_POINTER, "W_sn[0] (");
    EXPECT_EQ(g, nullptr);
    Wsn[0] = W_sn;
    ASSERT_EQ(sn_group_create(&g, layers, Ws, Wsn, 1), SN_SUCCESS) << sn_last_error_message();
    const void *Gs[1] = {mG};
    void *dWs[1] = {dW};
    EXPECT_FAILS(sn_group_set_gradients(g, Gs, dWs, nullptr), SN_ERROR_INVALID_POINTER, "G[0] (");
    sn_group_destroy(g);
    const State after = get_state(l);
    EXPECT_TRUE(bitwise_equal(after.u, before.u));
    EXPECT_TRUE(bitwise_equal(after.v, before.v));
    EXPECT_EQ(after.sigma, before.sigma);
  }
}
