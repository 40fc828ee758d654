// Training-loop entry points on the CPU backend: the backward against finite differences,
// fp16 / bf16 weights, the scale-only forward, σReparam's γ and the norm bound.
#include <cfenv>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <functional>

#include "test_util.h"

using namespace sntest;

namespace {

// f(W) = Σ C ∘ Ŵ(W) in double, Ŵ = (W / d(σ)) · g with σ = uᵀ M v for fixed u, v (no gradient
// flows through the power iteration, as in PyTorch).
double loss(const std::vector<double> &W, const std::vector<double> &C, sn_view_t vw,
            const std::vector<double> &u, const std::vector<double> &v, double g, double bound,
            bool detach, double sigma_fixed) {
  double sigma = 0;
  for (int64_t a = 0; a < vw.A; ++a)
    for (int64_t i = 0; i < vw.h; ++i)
      for (int64_t b = 0; b < vw.B; ++b)
        sigma += u[static_cast<size_t>(i)] * W[static_cast<size_t>((a * vw.h + i) * vw.B + b)] *
                 v[static_cast<size_t>(a * vw.B + b)];
  if (detach) sigma = sigma_fixed;
  const double d = bound > 0 ? std::max(1.0, sigma / bound) : sigma;
  double f = 0;
  for (size_t k = 0; k < W.size(); ++k) f += C[k] * W[k] * g / d;
  return f;
}

struct BwCase {
  std::vector<int64_t> shape;
  int dim;
  float gamma;       // 1: none
  float bound_rel;   // norm bound as a multiple of σ (0: none)
  bool detach;
};

}  // namespace

TEST(Backward, ReferenceMatchesCentralFiniteDifferences) {
  SN_SEEDED_RNG();
  for (const BwCase &c : {BwCase{{5, 7}, 0, 1.f, 0.f, false}, BwCase{{3, 4, 2}, 1, 1.f, 0.f, false},
                          BwCase{{4, 3, 2, 2}, -1, 1.f, 0.f, false}, BwCase{{6, 5}, 0, 1.7f, 0.f, false},
                          BwCase{{6, 5}, 0, 1.f, 0.5f, false}, BwCase{{6, 5}, 0, 1.f, 2.f, false},
                          BwCase{{5, 7}, 0, 1.f, 0.f, true}}) {
    SCOPED_TRACE(shape_str(c.shape) + " dim " + std::to_string(c.dim) + " gamma " +
                 std::to_string(c.gamma) + " bound " + std::to_string(c.bound_rel) +
                 (c.detach ? " detached" : ""));
    const int nd = int(c.shape.size());
    const sn_view_t vw = sn_ref_view(nd, c.shape.data(), c.dim < 0 ? c.dim + nd : c.dim);
    const int64_t n = vw.A * vw.h * vw.B;
    std::vector<float> W = rng.normals(n), C = rng.normals(n), u = rng.normals(vw.h),
                       v = rng.normals(vw.A * vw.B);
    // u and v as a forward leaves them (one power iteration from random vectors: unit, σ = uᵀ M v
    // = ‖Mᵀu‖ > 0). With u and v random instead, σ could come arbitrarily close to 0, where the
    // loss (∝ 1/σ) bends so fast that the central differences' step of 1e-6 no longer resolves it:
    // about 1 run in 500 failed so.
    std::vector<double> ud = to_double(u), vd = to_double(v), Wd = to_double(W), Cd = to_double(C);
    (void)sn_ref_iterate(W.data(), SN_DTYPE_FLOAT32, vw, ud.data(), vd.data(), 1e-12, SN_ORDER_U_FIRST);
    for (size_t i = 0; i < u.size(); ++i) u[i] = float(ud[i]);
    for (size_t j = 0; j < v.size(); ++j) v[j] = float(vd[j]);
    ud = to_double(u);
    vd = to_double(v);
    std::vector<double> t(static_cast<size_t>(vw.h));
    const double sigma = sn_ref_sigma(W.data(), SN_DTYPE_FLOAT32, vw, ud.data(), vd.data(), t.data());
    ASSERT_GT(sigma, 0.0);
    const float sigma_f = float(sigma);
    const double bound = c.bound_rel * sigma_f;
    std::vector<float> dW(static_cast<size_t>(n));
    const double dgamma = sn_ref_backward(W.data(), C.data(), dW.data(), SN_DTYPE_FLOAT32, vw, u.data(),
                                          v.data(), sigma_f, float(bound), c.gamma, 0.f, c.detach, 0);
    ud = to_double(u);
    auto f = [&](const std::vector<double> &w, double g) {
      return loss(w, Cd, vw, ud, vd, g, bound, c.detach, sigma_f);
    };
    double max_g = 0, max_err = 0;
    for (size_t k = 0; k < Wd.size(); ++k) {
      const double hstep = 1e-6 * std::max(1.0, std::fabs(Wd[k]));
      std::vector<double> wp = Wd, wm = Wd;
      wp[k] += hstep;
      wm[k] -= hstep;
      const double fd = (f(wp, c.gamma) - f(wm, c.gamma)) / (2 * hstep);
      max_g = std::max(max_g, std::fabs(fd));
      max_err = std::max(max_err, std::fabs(fd - double(dW[k])));
    }
    EXPECT_LT(max_err, 2e-6 * std::max(1.0, max_g)) << "max |dL/dW| " << max_g;
    const double fdg = (f(Wd, c.gamma + 1e-6) - f(Wd, c.gamma - 1e-6)) / 2e-6;
    EXPECT_NEAR(dgamma, fdg, 1e-6 * std::max(1.0, std::fabs(fdg)));
  }
}

TEST(Dtype, HostConversionsMatchCuda) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const uint16_t h = uint16_t(b);
    __half_raw hr;
    hr.x = h;
    const __half hh = hr;
    const float ref = __half2float(hh), mine = sn_half_to_float(h);
    ASSERT_TRUE((std::isnan(ref) && std::isnan(mine)) || std::memcmp(&ref, &mine, 4) == 0) << b;
    __nv_bfloat16_raw br;
    br.x = h;
    const __nv_bfloat16 bb = br;
    const float refb = __bfloat162float(bb), mineb = sn_bf16_to_float(h);
    ASSERT_TRUE((std::isnan(refb) && std::isnan(mineb)) || std::memcmp(&refb, &mineb, 4) == 0) << b;
  }
  SN_SEEDED_RNG();
  std::vector<float> xs = {0.f, -0.f, 1.f, 65504.f, 65519.f, 65520.f, 1e-8f, 2.9802322e-8f,
                           2.98023259e-8f, 5.96046448e-8f, 6.1035156e-5f, 6.1e-5f, 3.0e38f,
                           INFINITY, -INFINITY, 1.00048828125f, 1.001953125f};
  for (int k = 0; k < 200000; ++k) {
    uint32_t bits = uint32_t(rng.gen());
    float x;
    std::memcpy(&x, &bits, 4);
    xs.push_back(x);
  }
  for (int k = -30; k < 20; ++k) xs.push_back(std::ldexp(rng.uniform(1.f, 2.f), k));
  // Every rounding boundary of the narrowing to half: the midpoint between each pair of
  // neighbouring finite positive halves, subnormal and normal, and the floats either side of it,
  // with both signs (65504's boundary with inf, 65520, is among the values above).
  for (uint32_t b = 0; b < 0x7BFFu; ++b) {
    __half_raw lo, hi;
    lo.x = uint16_t(b), hi.x = uint16_t(b + 1);
    const float mid = (__half2float(__half(lo)) + __half2float(__half(hi))) / 2.f;
    for (float x : {mid, std::nextafter(mid, 0.f), std::nextafter(mid, INFINITY)}) {
      xs.push_back(x);
      xs.push_back(-x);
    }
  }
  for (float x : xs) {
    const uint16_t rb = __half_raw(__float2half_rn(x)).x, mb = sn_float_to_half(x);
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(sn_half_to_float(mb)));
    } else {
      ASSERT_EQ(rb, mb) << "half of " << x;
    }
    const uint16_t rbb = __nv_bfloat16_raw(__float2bfloat16_rn(x)).x, mbb = sn_float_to_bf16(x);
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(sn_bf16_to_float(mbb)));
    } else {
      ASSERT_EQ(rbb, mbb) << "bf16 of " << x;
    }
  }
}

// sn_store_n's narrowing to half (8 floats at a time with the F16C instruction where the CPU has
// it, host/dtype.c; else one at a time) and to bfloat16 (the loop built for AVX2 where the CPU has
// it): sn_float_to_half's and sn_float_to_bf16's bits (above: __float2half_rn's and
// __float2bfloat16_rn's) for every input, NaN payloads included, at any offset and length, nothing
// outside written, and under every rounding mode (the instruction carries its own; the scalar
// functions use integers only).
TEST(Dtype, TwoByteNarrowingOfWholeChunks) {
  SN_SEEDED_RNG();
  std::vector<float> xs = {0.f, -0.f, INFINITY, -INFINITY, NAN, -NAN, 65504.f, 65519.f, 65520.f, 1e-30f};
  for (int k = 0; k < (1 << 20); ++k) {
    const uint32_t bits = uint32_t(rng.gen());
    float x;
    std::memcpy(&x, &bits, 4);
    xs.push_back(x);
  }
  for (uint32_t b = 0; b < 0x7BFFu; ++b) {  // each rounding boundary of half and its neighbours
    const float mid = (sn_half_to_float(uint16_t(b)) + sn_half_to_float(uint16_t(b + 1))) / 2.f;
    for (float x : {mid, std::nextafter(mid, 0.f), std::nextafter(mid, INFINITY)}) {
      xs.push_back(x);
      xs.push_back(-x);
    }
  }
  for (uint32_t b = 0; b < 0x7F7Fu; b += 7) {  // a seventh of bfloat16's, the same way
    const float mid = (sn_bf16_to_float(uint16_t(b)) + sn_bf16_to_float(uint16_t(b + 1))) / 2.f;
    for (float x : {mid, std::nextafter(mid, 0.f), std::nextafter(mid, INFINITY)}) {
      xs.push_back(x);
      xs.push_back(-x);
    }
  }
  for (int cpu : {-1, 0})  // the loops built for the CPU's extensions, then the baseline ones
  for (sn_dtype_t dt : {SN_DTYPE_FLOAT16, SN_DTYPE_BFLOAT16}) {
    const ScopedCpuFeatures features(cpu);
    std::vector<uint16_t> want(xs.size());
    for (size_t e = 0; e < xs.size(); ++e)
      want[e] = dt == SN_DTYPE_FLOAT16 ? sn_float_to_half(xs[e]) : sn_float_to_bf16(xs[e]);
    const uint16_t guard = 0xABCD;
    for (int mode : {FE_TONEAREST, FE_UPWARD, FE_DOWNWARD, FE_TOWARDZERO}) {
      for (int trial = 0; trial < 4; ++trial) {
        const int64_t k = int64_t(rng.gen() % 9), skip = int64_t(rng.gen() % 9);
        const int64_t n = trial == 3 ? int64_t(rng.gen() % 20) : int64_t(xs.size()) - skip;
        std::vector<uint16_t> got(size_t(k + n + 1), guard);
        ASSERT_EQ(std::fesetround(mode), 0);
        sn_store_n(got.data(), dt, k, n, xs.data() + skip);
        std::fesetround(FE_TONEAREST);
        SCOPED_TRACE("cpu " + std::to_string(cpu) + ", dtype " + std::to_string(int(dt)) + ", rounding mode " +
                     std::to_string(mode) + ", " + std::to_string(n) + " elements at " + std::to_string(k));
        for (int64_t e = 0; e < k; ++e) ASSERT_EQ(got[size_t(e)], guard) << "before the chunk";
        ASSERT_EQ(got[size_t(k + n)], guard) << "after the chunk";
        for (int64_t e = 0; e < n; ++e)
          ASSERT_EQ(got[size_t(k + e)], want[size_t(skip + e)]) << "of " << xs[size_t(skip + e)];
      }
    }
  }
}

// sn_load_n's widening of halves (8 at a time with the F16C instruction where the CPU has it, but
// for a group of 8 with a signaling NaN, whose payload the instruction would change): the bits of
// sn_half_to_float (above: __half2float's) for all 65536 halves, in order and shuffled (so that
// groups mix signaling NaNs with other values), at any offset, and nothing outside written.
TEST(Dtype, HalfWideningOfWholeChunks) {
  SN_SEEDED_RNG();
  std::vector<uint16_t> in(65536);
  for (uint32_t b = 0; b < 65536; ++b) in[b] = uint16_t(b);
  for (int round = 0; round < 4; ++round) {
    const ScopedCpuFeatures features(round == 3 ? 0 : -1);  // round 3: the baseline loop
    if (round > 0)
      for (size_t k = in.size() - 1; k > 0; --k) std::swap(in[k], in[size_t(rng.gen() % (k + 1))]);
    const int64_t k = int64_t(rng.gen() % 9), n = int64_t(in.size()) - k - int64_t(rng.gen() % 9);
    std::vector<float> got(size_t(n) + 1, -7.f);
    sn_load_n(in.data(), SN_DTYPE_FLOAT16, k, n, got.data());
    ASSERT_EQ(got[size_t(n)], -7.f) << "after the chunk";
    for (int64_t e = 0; e < n; ++e) {
      const float want = sn_half_to_float(in[size_t(k + e)]);
      ASSERT_EQ(std::memcmp(&got[size_t(e)], &want, 4), 0)
          << "half " << std::hex << in[size_t(k + e)] << " at " << std::dec << e << ", round " << round;
    }
  }
}

// sn_cpu_features (CPUID and XGETBV, host/dtype.c) against the compiler's own view of this CPU, so
// that the vectorized loops and the tests of both their builds do run where the CPU has them; and
// sn_cpu_allow_features masks it.
TEST(Dtype, CpuFeaturesAreDetected) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  __builtin_cpu_init();
  EXPECT_EQ((sn_cpu_features() & SN_CPU_AVX2) != 0, __builtin_cpu_supports("avx2") != 0);
#if !defined(__clang__)  // clang 14 does not know "f16c"
  EXPECT_EQ((sn_cpu_features() & SN_CPU_F16C) != 0,
            __builtin_cpu_supports("f16c") != 0 && __builtin_cpu_supports("avx") != 0);
#endif
#else
  EXPECT_EQ(sn_cpu_features(), 0);
#endif
  const int all = sn_cpu_features();
  {
    const ScopedCpuFeatures none(0);
    EXPECT_EQ(sn_cpu_features(), 0);
    const ScopedCpuFeatures avx2_only(SN_CPU_AVX2);
    EXPECT_EQ(sn_cpu_features(), all & SN_CPU_AVX2);
  }
  EXPECT_EQ(sn_cpu_features(), all);
}

namespace {

// A weight in `dt` (as raw bytes) from float values, rounded to nearest even.
std::vector<uint8_t> to_dtype(const std::vector<float> &x, sn_dtype_t dt) {
  std::vector<uint8_t> out(x.size() * sn_dtype_size(dt));
  for (size_t k = 0; k < x.size(); ++k) sn_store(out.data(), dt, int64_t(k), x[k]);
  return out;
}

}  // namespace

TEST(Dtype, HalfWeightsOnTheCpuBackend) {
  SN_SEEDED_RNG();
  const int64_t h = 24, w = 40;
  const std::vector<float> W32 = gapped_matrix(rng, h, w);
  sn_layer_desc_t d32 = make_desc({h, w}, SN_BACKEND_CPU);
  d32.warmup_iterations = 100;
  LayerPtr l32(d32);
  std::vector<float> out32(W32.size());
  ASSERT_EQ(sn_forward(l32, W32.data(), out32.data(), 1, nullptr), SN_SUCCESS);
  const float sigma32 = get_state(l32).sigma;
  for (sn_dtype_t dt : {SN_DTYPE_FLOAT16, SN_DTYPE_BFLOAT16}) {
    SCOPED_TRACE(dt == SN_DTYPE_FLOAT16 ? "fp16" : "bf16");
    sn_layer_desc_t d = d32;
    d.dtype = dt;
    LayerPtr l(d);
    std::vector<uint8_t> W = to_dtype(W32, dt), out(W.size());
    ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
    const State s = get_state(l);
    // σ of the rounded weight: within the type's rounding of the fp32 σ (SPEC: about 1e-3).
    EXPECT_NEAR(s.sigma / sigma32, 1.0, dt == SN_DTYPE_FLOAT16 ? 2e-3 : 1e-2);
    // W_sn is W / σ rounded once to the type.
    std::vector<uint8_t> expect(W.size());
    sn_ref_divide(W.data(), expect.data(), dt, h * w, s.sigma, 0.f, 1.f);
    EXPECT_EQ(out, expect);
    // ... and so within one unit in the last place of the fp32 result.
    const std::vector<float> o = from_dtype(out, dt);
    for (size_t k = 0; k < o.size(); ++k)
      ASSERT_NEAR(o[k], out32[k], std::fabs(out32[k]) * (dt == SN_DTYPE_FLOAT16 ? 2e-3 : 1.6e-2) + 1e-6);
  }
}

TEST(Scaled, ScaleOnlyForwardNormBoundAndGamma) {
  SN_SEEDED_RNG();
  const int64_t h = 10, w = 12;
  std::vector<float> W = gapped_matrix(rng, h, w), out(W.size()), expect(W.size());
  sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
  LayerPtr full(d), only(d);
  for (int step = 0; step < 3; ++step) {
    ASSERT_EQ(sn_forward(full, W.data(), out.data(), step < 2, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_forward_scale_only(only, W.data(), step < 2, nullptr), SN_SUCCESS);
    EXPECT_TRUE(same_state(get_state(full), get_state(only)));
    float scale = 0, inv = 0;
    ASSERT_EQ(sn_layer_get_scale(only, &scale, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_layer_get_sigma(only, nullptr, &inv, nullptr), SN_SUCCESS);
    EXPECT_EQ(scale, inv);
  }
  const float sigma = get_state(full).sigma;

  // Norm bound above σ: nothing changes (W_sn = W); below σ: W / (σ / c).
  for (float rel : {2.f, 0.5f}) {
    sn_layer_desc_t db = d;
    db.norm_bound = rel * sigma;
    LayerPtr l(db);
    ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
    const float s = get_state(l).sigma;
    sn_ref_divide(W.data(), expect.data(), SN_DTYPE_FLOAT32, h * w, s, db.norm_bound, 1.f);
    EXPECT_TRUE(bitwise_equal(out, expect)) << rel;
    if (rel > 1.f) {
      EXPECT_TRUE(bitwise_equal(out, W)) << "a bound above σ leaves W unchanged";
    }
    float scale = 0;
    ASSERT_EQ(sn_layer_get_scale(l, &scale, nullptr), SN_SUCCESS);
    EXPECT_FLOAT_EQ(scale, 1.f / std::max(1.f, s / db.norm_bound));
  }

  // σReparam: W_sn = (W / σ) · γ, γ read at each forward.
  float gamma = 2.5f;
  LayerPtr g(d);
  ASSERT_EQ(sn_layer_set_gamma(g, &gamma), SN_SUCCESS);
  for (float gv : {2.5f, 0.75f}) {
    gamma = gv;
    ASSERT_EQ(sn_forward(g, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
    const float s = get_state(g).sigma;
    sn_ref_divide(W.data(), expect.data(), SN_DTYPE_FLOAT32, h * w, s, 0.f, gv);
    EXPECT_TRUE(bitwise_equal(out, expect));
    float scale = 0;
    ASSERT_EQ(sn_layer_get_scale(g, &scale, nullptr), SN_SUCCESS);
    EXPECT_EQ(scale, gv / s);
  }
  ASSERT_EQ(sn_layer_set_gamma(g, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_forward(g, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  sn_ref_divide(W.data(), expect.data(), SN_DTYPE_FLOAT32, h * w, get_state(g).sigma, 0.f, 1.f);
  EXPECT_TRUE(bitwise_equal(out, expect)) << "unbound γ is 1";
}

TEST(Backward, ApiFlagsAndErrors) {
  SN_SEEDED_RNG();
  const int64_t h = 9, w = 6;
  const sn_view_t vw{1, h, w};
  std::vector<float> W = gapped_matrix(rng, h, w), G = rng.normals(h * w), out(W.size());
  LayerPtr l(make_desc({h, w}, SN_BACKEND_CPU));
  std::vector<float> dW(W.size(), 0.f);
  EXPECT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), 0, nullptr, nullptr), SN_ERROR_INVALID_STATE)
      << "no forward yet";
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  const State s = get_state(l);

  std::vector<float> expect(W.size(), 0.f);
  sn_ref_backward(W.data(), G.data(), expect.data(), SN_DTYPE_FLOAT32, vw, s.u.data(), s.v.data(),
                  s.sigma, 0.f, 1.f, 0.f, 0, 0);
  ASSERT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), 0, nullptr, nullptr), SN_SUCCESS);
  EXPECT_TRUE(bitwise_equal(dW, expect));
  // Accumulate: dW += the same gradient.
  ASSERT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), SN_BACKWARD_ACCUMULATE, nullptr, nullptr),
            SN_SUCCESS);
  sn_ref_backward(W.data(), G.data(), expect.data(), SN_DTYPE_FLOAT32, vw, s.u.data(), s.v.data(),
                  s.sigma, 0.f, 1.f, 0.f, 0, 1);
  EXPECT_TRUE(bitwise_equal(dW, expect));
  // Detached: G / σ (times the scale 1/σ).
  ASSERT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), SN_BACKWARD_DETACH_SIGMA, nullptr, nullptr),
            SN_SUCCESS);
  for (size_t k = 0; k < G.size(); ++k) ASSERT_FLOAT_EQ(dW[k], G[k] * (1.0f / s.sigma));
  // In place: dW = G.
  std::vector<float> inplace = G;
  ASSERT_EQ(sn_backward(l, W.data(), inplace.data(), inplace.data(), 0, nullptr, nullptr), SN_SUCCESS);
  sn_ref_backward(W.data(), G.data(), expect.data(), SN_DTYPE_FLOAT32, vw, s.u.data(), s.v.data(),
                  s.sigma, 0.f, 1.f, 0.f, 0, 0);
  EXPECT_TRUE(bitwise_equal(inplace, expect));
  // ∂L/∂γ with γ bound.
  float gamma = 1.5f, dgamma = 0;
  ASSERT_EQ(sn_layer_set_gamma(l, &gamma), SN_SUCCESS);
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 0, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), 0, &dgamma, nullptr), SN_SUCCESS);
  const State s2 = get_state(l);
  EXPECT_NEAR(dgamma, sn_ref_inner(G.data(), W.data(), SN_DTYPE_FLOAT32, h * w) / s2.sigma, 1e-5);
  // ... and dW of W_sn = γ · W / σ: the reference's with γ = 1.5, not 1.
  sn_ref_backward(W.data(), G.data(), expect.data(), SN_DTYPE_FLOAT32, vw, s2.u.data(), s2.v.data(),
                  s2.sigma, 0.f, gamma, 0.f, 0, 0);
  EXPECT_TRUE(bitwise_equal(dW, expect)) << "dW with gamma bound";

  EXPECT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), 4u, nullptr, nullptr), SN_ERROR_INVALID_VALUE);
  EXPECT_EQ(sn_backward(l, nullptr, G.data(), dW.data(), 0, nullptr, nullptr), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_backward(l, W.data(), nullptr, dW.data(), 0, nullptr, nullptr), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_backward(l, W.data(), G.data(), nullptr, 0, nullptr, nullptr), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_backward(l, W.data(), G.data(), G.data() + 1, 0, nullptr, nullptr), SN_ERROR_INVALID_VALUE);
  EXPECT_EQ(sn_forward_scale_only(l, nullptr, 1, nullptr), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_layer_scale_ptr(l, nullptr), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_layer_set_gamma(nullptr, &gamma), SN_ERROR_NULL_POINTER);
}

// Where γ and ∂L/∂γ may lie: the kernels read γ while other blocks write W_sn or dW and ∂L/∂γ, so
// (on either backend, for one rule) γ inside W_sn fails sn_forward, γ inside dW, dgamma inside W,
// G or dW, or dgamma as γ itself fail sn_backward, each with SN_ERROR_INVALID_VALUE, naming the
// buffer, and changing nothing: not the state, W_sn, dW, γ nor dgamma.
TEST(Backward, GammaAndItsGradientLieOutsideWhatTheCallsWrite) {
  SN_SEEDED_RNG();
  const int64_t h = 7, w = 5, n = h * w;
  std::vector<float> W = rng.normals(n), G = rng.normals(n), out(n + 2, 0.f), dW(n + 2, 0.f);
  LayerPtr l(make_desc({h, w}, SN_BACKEND_CPU));
  ASSERT_TRUE(l.p);
  float gamma = 1.5f, dgamma = -3.f;
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  const State before = get_state(l);
  const std::vector<float> out0 = out, dW0 = dW, W0 = W, G0 = G;
  auto expect_refused = [&](sn_status_t st, const char *names) {
    EXPECT_EQ(st, SN_ERROR_INVALID_VALUE);
    EXPECT_NE(std::string(sn_last_error_message()).find(names), std::string::npos) << sn_last_error_message();
    EXPECT_TRUE(same_state(get_state(l), before));
    EXPECT_TRUE(bitwise_equal(out, out0) && bitwise_equal(dW, dW0) && bitwise_equal(W, W0) && bitwise_equal(G, G0));
  };
  // γ inside W_sn (its last element), then the forward; scale only has no W_sn and runs.
  out[size_t(n - 1)] = 1.25f;
  std::vector<float> out1 = out;
  ASSERT_EQ(sn_layer_set_gamma(l, &out[size_t(n - 1)]), SN_SUCCESS);
  EXPECT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_ERROR_INVALID_VALUE);
  EXPECT_NE(std::string(sn_last_error_message()).find("inside W_sn"), std::string::npos) << sn_last_error_message();
  EXPECT_TRUE(same_state(get_state(l), before));
  EXPECT_TRUE(bitwise_equal(out, out1));
  out = out0;
  // γ inside dW.
  ASSERT_EQ(sn_layer_set_gamma(l, &dW[3]), SN_SUCCESS);
  expect_refused(sn_backward(l, W.data(), G.data(), dW.data(), 0, nullptr, nullptr), "gamma");
  // γ just past dW is not in it.
  ASSERT_EQ(sn_layer_set_gamma(l, &dW[size_t(n)]), SN_SUCCESS);
  EXPECT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), 0, nullptr, nullptr), SN_SUCCESS) << sn_last_error_message();
  std::fill(dW.begin(), dW.end(), 0.f);
  // dgamma inside W, G or dW, or γ itself.
  ASSERT_EQ(sn_layer_set_gamma(l, &gamma), SN_SUCCESS);
  expect_refused(sn_backward(l, W.data(), G.data(), dW.data(), 0, &W[2], nullptr), "inside W");
  expect_refused(sn_backward(l, W.data(), G.data(), dW.data(), 0, &G[n - 1], nullptr), "inside G");
  expect_refused(sn_backward(l, W.data(), G.data(), dW.data(), 0, &dW[0], nullptr), "inside dW");
  expect_refused(sn_backward(l, W.data(), G.data(), dW.data(), 0, &gamma, nullptr), "is the layer's gamma");
  EXPECT_EQ(gamma, 1.5f);
  // Elsewhere, both run.
  ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), 0, &dgamma, nullptr), SN_SUCCESS);
  EXPECT_NE(dgamma, -3.f);
}

// Forward + backward over several steps with W moving as SGD moves it: the state stays that of
// the reference, and the loss of a Lipschitz-constrained quadratic goes down.
TEST(Backward, TrainingStepsFollowTheReference) {
  SN_SEEDED_RNG();
  const int64_t h = 8, w = 5;
  const sn_view_t vw{1, h, w};
  std::vector<float> W = gapped_matrix(rng, h, w), T = rng.normals(h * w, 0.1f), Wsn(W.size()),
                     G(W.size()), dW(W.size());
  LayerPtr l(make_desc({h, w}, SN_BACKEND_CPU));
  State ref = get_state(l);
  double first = -1, last = 0;
  for (int step = 0; step < 20; ++step) {
    ASSERT_EQ(sn_forward(l, W.data(), Wsn.data(), 1, nullptr), SN_SUCCESS);
    // Reference state: warm-up + 1 iteration first, 1 iteration afterwards.
    std::vector<double> u = to_double(ref.u), v = to_double(ref.v);
    double sigma = 0;
    for (int k = 0; k < (step == 0 ? 16 : 1); ++k)
      sigma = sn_ref_iterate(W.data(), SN_DTYPE_FLOAT32, vw, u.data(), v.data(), 1e-12, SN_ORDER_U_FIRST);
    ref.u.assign(u.begin(), u.end());
    ref.v.assign(v.begin(), v.end());
    ref.sigma = float(sigma);
    const State s = get_state(l);
    ASSERT_TRUE(bitwise_equal(s.u, ref.u));
    ASSERT_TRUE(bitwise_equal(s.v, ref.v));
    ASSERT_EQ(s.sigma, ref.sigma);
    // L = ½‖W_sn − T‖², G = W_sn − T.
    double L = 0;
    for (size_t k = 0; k < W.size(); ++k) {
      G[k] = Wsn[k] - T[k];
      L += 0.5 * double(G[k]) * G[k];
    }
    if (first < 0) first = L;
    last = L;
    ASSERT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), 0, nullptr, nullptr), SN_SUCCESS);
    for (size_t k = 0; k < W.size(); ++k) W[k] -= 0.5f * dW[k];
  }
  EXPECT_LT(last, first);
}

// The largest |dW_k − ∂f/∂W_k| over a 1-D weight W, by central differences of
// f(w) = C · w / divisor(‖w‖²): the loss whose gradient its backward gives for G = C.
static double one_d_backward_error(const std::vector<float> &W, const std::vector<float> &C,
                                   const std::vector<float> &dW, double (*divisor)(double)) {
  auto f = [&](const std::vector<double> &w) {
    double nn = 0, dot = 0;
    for (size_t k = 0; k < w.size(); ++k) {
      nn += w[k] * w[k];
      dot += C[k] * w[k];
    }
    return dot / divisor(nn);
  };
  const std::vector<double> Wd = to_double(W);
  double worst = 0;
  for (size_t k = 0; k < Wd.size(); ++k) {
    std::vector<double> wp = Wd, wm = Wd;
    wp[k] += 1e-6;
    wm[k] -= 1e-6;
    worst = std::max(worst, std::fabs(dW[k] - (f(wp) - f(wm)) / 2e-6));
  }
  return worst;
}

// A 1-D weight: W_sn = W / ‖W‖, and the backward is the full gradient of that normalization
// (what autograd gives for PyTorch's F.normalize), checked by central differences.
TEST(Backward, OneDimensionalWeightMatchesFiniteDifferences) {
  SN_SEEDED_RNG();
  const int64_t n = 17;
  std::vector<float> W = rng.normals(n), C = rng.normals(n), out(W.size()), dW(W.size());
  LayerPtr l(make_desc({n}, SN_BACKEND_CPU));
  for (int training : {1, 0}) {
    ASSERT_EQ(sn_forward(l, W.data(), out.data(), training, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_backward(l, W.data(), C.data(), dW.data(), 0, nullptr, nullptr), SN_SUCCESS);
    EXPECT_LT(one_d_backward_error(W, C, dW, [](double nn) { return std::sqrt(nn); }), 2e-6);
    for (auto &x : W) x += 0.1f * rng.normal();
  }
}

// A 1-D weight with ‖W‖ below eps: W_sn = W / eps, whose derivative is G / eps alone (as PyTorch's
// F.normalize, whose clamp passes no gradient to the norm); and N(W) = W / sqrt(‖W‖² + eps)
// (SN_EPS_ADD_SQUARED), whose σ term stays. Both against central differences.
TEST(Backward, OneDimensionalWeightAtItsEpsMatchesFiniteDifferences) {
  SN_SEEDED_RNG();
  const int64_t n = 9;
  for (const sn_eps_mode_t mode : {SN_EPS_CLAMP_NORM, SN_EPS_ADD_SQUARED}) {
    SCOPED_TRACE(mode == SN_EPS_CLAMP_NORM ? "clamped" : "added to ‖W‖²");
    sn_layer_desc_t d = make_desc({n}, SN_BACKEND_CPU);
    d.eps = 1.f;
    d.eps_mode = mode;
    LayerPtr l(d);
    std::vector<float> W = rng.normals(n, 0.05f), C = rng.normals(n), out(W.size()), dW(W.size());
    ASSERT_EQ(sn_forward(l, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_backward(l, W.data(), C.data(), dW.data(), 0, nullptr, nullptr), SN_SUCCESS);
    auto clamped = [](double nn) { return std::max(std::sqrt(nn), 1.0); };
    auto added = [](double nn) { return std::sqrt(nn + 1.0); };
    EXPECT_LT(one_d_backward_error(W, C, dW, mode == SN_EPS_CLAMP_NORM ? +clamped : +added), 1e-6);
    if (mode == SN_EPS_CLAMP_NORM) {
      EXPECT_TRUE(bitwise_equal(dW, C)) << "dW = G / eps, eps = 1";
    }
  }
}

// A norm bound c leaves W alone while σ <= c (SPEC.md: Ŵ = W / max(1, σ / c)), so at σ = c exactly
// the backward has no σ term: dW = γ·G bit for bit. One float above c, the term is there.
TEST(Backward, NormBoundIsInactiveAtSigmaEqualToIt) {
  SN_SEEDED_RNG();
  const int64_t h = 6, w = 5;
  const float c = 1.5f;
  sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CPU);
  d.norm_bound = c;
  LayerPtr l(d);
  const std::vector<float> W = gapped_matrix(rng, h, w), u = rng.normals(h), v = rng.normals(w);
  std::vector<float> G = rng.normals(h * w, 0.1f);  // G = W + noise: ⟨G, W⟩ ≈ ‖W‖², far from 0
  for (size_t k = 0; k < G.size(); ++k) G[k] += W[k];
  std::vector<float> dW(W.size()), expect(W.size());
  for (const float sigma : {c, std::nextafter(c, 2.f)}) {
    SCOPED_TRACE("σ = " + std::to_string(double(sigma)));
    ASSERT_EQ(sn_layer_set_state(l, u.data(), v.data(), sigma, 1, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_backward(l, W.data(), G.data(), dW.data(), 0, nullptr, nullptr), SN_SUCCESS);
    sn_ref_backward(W.data(), G.data(), expect.data(), SN_DTYPE_FLOAT32, sn_view_t{1, h, w}, u.data(),
                    v.data(), sigma, c, 1.f, 0.f, 0, 0);
    EXPECT_TRUE(bitwise_equal(dW, expect));
    if (sigma == c)
      EXPECT_TRUE(bitwise_equal(dW, G)) << "σ = c: d = 1 and no σ term";
    else
      EXPECT_GT(max_abs_diff(dW, G), 1e-3) << "σ > c: the σ term";
  }
}
