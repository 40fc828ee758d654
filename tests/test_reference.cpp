// The CPU reference (host/reference.c) against LAPACK's SVD, and on cases with known answers.
#include <lapacke.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "test_util.h"

using namespace sntest;

namespace {

// Singular values of a row-major h×w matrix (double), largest first.
std::vector<double> singular_values(std::vector<double> a, int64_t h, int64_t w) {
  std::vector<double> s(static_cast<size_t>(std::min(h, w))), superb(static_cast<size_t>(std::min(h, w)));
  lapack_int info = LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', 'N', lapack_int(h), lapack_int(w),
                                   a.data(), lapack_int(w), s.data(), nullptr, 1, nullptr, 1,
                                   superb.data());
  EXPECT_EQ(info, 0) << "dgesvd failed";
  return s;
}

std::vector<double> singular_values(const std::vector<float> &W, int64_t h, int64_t w) {
  return singular_values(to_double(W), h, w);
}

// Run `iters` power iterations from fresh random vectors; return σ.
double power_sigma(const std::vector<float> &W, int64_t h, int64_t w, int iters, Rng &rng,
                   sn_order_t order = SN_ORDER_U_FIRST) {
  std::vector<double> u = to_double(rng.normals(h)), v = to_double(rng.normals(w));
  const sn_view_t vw{1, h, w};
  double sigma = 0;
  for (int k = 0; k < iters; ++k) sigma = sn_ref_iterate(W.data(), SN_DTYPE_FLOAT32, vw, u.data(), v.data(), 1e-12, order);
  return sigma;
}

struct Shape {
  int64_t h, w;
};

}  // namespace

// The reference's power iteration converges to LAPACK's largest singular value; and the library's
// CPU forward (its threads from 2^19 elements: 520 × 1100), warmed up to convergence, writes a
// W_sn whose largest singular value is 1 to float rounding (σ and the division, as a user gets
// them).
TEST(Reference, ConvergesToLapackLargestSingularValue) {
  SN_SEEDED_RNG();
  for (Shape s : {Shape{1, 1}, Shape{1, 17}, Shape{23, 1}, Shape{7, 5}, Shape{33, 64},
                  Shape{100, 37}, Shape{129, 255}, Shape{520, 1100}}) {
    SCOPED_TRACE(std::to_string(s.h) + "x" + std::to_string(s.w));
    const std::vector<float> W = gapped_matrix(rng, s.h, s.w);
    const double smax = singular_values(W, s.h, s.w)[0];
    for (sn_order_t order : {SN_ORDER_U_FIRST, SN_ORDER_V_FIRST}) {
      const double sigma = power_sigma(W, s.h, s.w, 200, rng, order);
      EXPECT_NEAR(sigma / smax, 1.0, 1e-9);
      sn_layer_desc_t d = make_desc({s.h, s.w}, SN_BACKEND_CPU);
      d.order = order;
      d.warmup_iterations = 200;
      d.seed = rng.gen();
      LayerPtr l(d);
      ASSERT_TRUE(l.p) << sn_last_error_message();
      std::vector<float> Wsn(W.size());
      ASSERT_EQ(sn_forward(l, W.data(), Wsn.data(), 1, nullptr), SN_SUCCESS) << sn_last_error_message();
      EXPECT_NEAR(get_state(l).sigma / smax, 1.0, 1e-6);  // σ is stored as a float
      EXPECT_NEAR(singular_values(Wsn, s.h, s.w)[0], 1.0, 1e-6);
    }
  }
}

// The "1.3898, not 1" puzzle of the seed article: right after nn.Linear(20, 40) gets spectral
// norm, ‖W_sn‖₂ is not 1, because one power iteration from random vectors only approaches the
// largest singular value from below (at a rate of (σ₂/σ₁)² per iteration); σ is underestimated
// and W / σ has a norm above 1. It becomes 1 only as iterations accumulate across steps.
TEST(Reference, OneIterationFromRandomVectorsIsNotConverged) {
  SN_SEEDED_RNG();
  const int64_t h = 40, w = 20;  // nn.Linear(20, 40): weight 40×20, kaiming-uniform init
  const float bound = 1.f / std::sqrt(float(w));
  std::vector<float> W(static_cast<size_t>(h * w));
  for (auto &x : W) x = rng.uniform(-bound, bound);
  const double smax = singular_values(W, h, w)[0];
  const double sigma1 = power_sigma(W, h, w, 1, rng);
  EXPECT_LT(sigma1, smax) << "power iteration approaches σ_max from below";
  EXPECT_GT(smax / sigma1, 1.0 + 1e-3)
      << "after one iteration ‖W/σ‖₂ = σ_max/σ should visibly exceed 1 (the article saw 1.3898)";
  const double sigma_many = power_sigma(W, h, w, 2000, rng);
  EXPECT_NEAR(smax / sigma_many, 1.0, 1e-6) << "many iterations converge (gap of a random matrix)";
}

// N's divisor from ‖x‖²: clamped for eps > 0 (PyTorch, Keras), sqrt(‖x‖² + |eps|) for eps < 0
// (SN_EPS_ADD_SQUARED: Flax, Haiku).
TEST(Reference, NormDivisorOfEitherMode) {
  EXPECT_EQ(sn_ref_norm_divisor(4.0, 1e-12), 2.0);
  EXPECT_EQ(sn_ref_norm_divisor(1e-30, 0.5), 0.5);
  EXPECT_EQ(sn_ref_norm_divisor(0.0, 0.5), 0.5);
  EXPECT_EQ(sn_ref_norm_divisor(4.0, -0.25), std::sqrt(4.25));
  EXPECT_EQ(sn_ref_norm_divisor(0.0, -0.25), 0.5);
  EXPECT_TRUE(std::isnan(sn_ref_norm_divisor(NAN, -0.25)));
}

TEST(Reference, KnownCases) {
  SN_SEEDED_RNG();
  // Diagonal: σ = max |d_k|.
  {
    const int64_t n = 9;
    std::vector<float> W(static_cast<size_t>(n * n), 0.f);
    float dmax = 0;
    for (int64_t k = 0; k < n; ++k) {
      W[static_cast<size_t>(k * n + k)] = (k == 4 ? 5.f : 1.f) * rng.uniform(-1.f, 1.f);
      dmax = std::max(dmax, std::fabs(W[static_cast<size_t>(k * n + k)]));
    }
    W[static_cast<size_t>(4 * n + 4)] = -3.f;  // clear gap to the rest (|d| <= 1)
    EXPECT_NEAR(power_sigma(W, n, n, 100, rng), 3.0, 1e-12);
  }
  // Rank 1: W = a bᵀ converges in one iteration to ‖a‖‖b‖.
  {
    const int64_t h = 6, w = 11;
    std::vector<float> a = rng.normals(h), b = rng.normals(w), W(static_cast<size_t>(h * w));
    double na = 0, nb = 0, wn = 0;
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j) W[static_cast<size_t>(i * w + j)] = a[static_cast<size_t>(i)] * b[static_cast<size_t>(j)];
    for (float x : a) na += double(x) * x;
    for (float x : b) nb += double(x) * x;
    for (float x : W) wn += double(x) * x;
    // ‖W‖_F = ‖a‖‖b‖ in exact arithmetic; W's float rounding makes it the exact σ of the stored W
    // only to about 1e-7.
    EXPECT_NEAR(power_sigma(W, h, w, 1, rng) / std::sqrt(na * nb), 1.0, 1e-6);
    EXPECT_NEAR(power_sigma(W, h, w, 1, rng) / std::sqrt(wn), 1.0, 1e-6);
  }
  // 1×1: σ = |w|.
  {
    std::vector<float> W{-2.5f};
    EXPECT_DOUBLE_EQ(power_sigma(W, 1, 1, 1, rng), 2.5);
  }
  // Zero: σ = 0, and the vectors stay finite (N(0) = 0 / eps = 0).
  {
    const int64_t h = 4, w = 3;
    std::vector<float> W(static_cast<size_t>(h * w), 0.f);
    std::vector<double> u = to_double(rng.normals(h)), v = to_double(rng.normals(w));
    const double sigma = sn_ref_iterate(W.data(), SN_DTYPE_FLOAT32, sn_view_t{1, h, w}, u.data(), v.data(), 1e-12,
                                        SN_ORDER_U_FIRST);
    EXPECT_EQ(sigma, 0.0);
    for (double x : u) EXPECT_EQ(x, 0.0);
    for (double x : v) EXPECT_EQ(x, 0.0);
  }
}

// The strided view [A][h][B] equals an explicit permutation of the axis to the front.
TEST(Reference, ViewEqualsExplicitPermutation) {
  SN_SEEDED_RNG();
  const int64_t shape[4] = {3, 5, 2, 7};
  const int dim = 1;
  const sn_view_t vw = sn_ref_view(4, shape, dim);
  ASSERT_EQ(vw.A, 3);
  ASSERT_EQ(vw.h, 5);
  ASSERT_EQ(vw.B, 14);
  std::vector<float> W = rng.normals(3 * 5 * 14), P(W.size());
  for (int64_t a = 0; a < 3; ++a)
    for (int64_t i = 0; i < 5; ++i)
      for (int64_t b = 0; b < 14; ++b) P[static_cast<size_t>(i * 42 + a * 14 + b)] = W[static_cast<size_t>((a * 5 + i) * 14 + b)];
  std::vector<double> x = to_double(rng.normals(42)), y = to_double(rng.normals(5));
  std::vector<double> t1(5), t2(5), s1(42), s2(42);
  sn_ref_matvec(W.data(), SN_DTYPE_FLOAT32, vw, x.data(), t1.data());
  sn_ref_matvec(P.data(), SN_DTYPE_FLOAT32, sn_view_t{1, 5, 42}, x.data(), t2.data());
  sn_ref_matvec_t(W.data(), SN_DTYPE_FLOAT32, vw, y.data(), s1.data());
  sn_ref_matvec_t(P.data(), SN_DTYPE_FLOAT32, sn_view_t{1, 5, 42}, y.data(), s2.data());
  for (int k = 0; k < 5; ++k) EXPECT_NEAR(t1[static_cast<size_t>(k)], t2[static_cast<size_t>(k)], 1e-12);
  for (int k = 0; k < 42; ++k) EXPECT_NEAR(s1[static_cast<size_t>(k)], s2[static_cast<size_t>(k)], 1e-12);
}

// Σ term(k) over k < n as sn_ref_inner adds ⟨G, W⟩: each block of SN_REF_INNER_BLOCK terms in
// order, then the blocks' sums in order.
namespace {
template <class F>
double sum_in_blocks(int64_t n, F term) {
  double total = 0.0;
  for (int64_t k0 = 0; k0 < n; k0 += SN_REF_INNER_BLOCK) {
    double block = 0.0;
    for (int64_t k = k0; k < std::min(n, k0 + SN_REF_INNER_BLOCK); ++k) block += term(k);
    total += block;
  }
  return total;
}
}  // namespace

// The reference's loops take W, G and dW in chunks of 512 elements, its M x eight rows at a time
// and its Mᵀ y four (host/reference.c); every sum must still add its terms one at a time in
// element order. Against those sums written out element by element, bit for bit, on rows shorter
// and longer than a chunk, row counts that are and are not multiples of 4 and 8, views with A > 1,
// and every dtype; on the
// calling thread alone, and split over 2 to 13 threads (sn_ref_set_threads) with grains small
// enough that these weights split into ranges of every kind: a few rows, columns that cut an a of
// the view in two, runs of the backward, chunks of the division, blocks of ⟨G, W⟩ (37 × 2051 has
// two: the second sum added to the first).
TEST(Reference, ChunkedLoopsAreBitwiseElementByElement) {
  SN_SEEDED_RNG();
  const sn_view_t views[] = {{1, 1, 1},   {1, 5, 511},  {1, 7, 512},    {3, 6, 513},   {2, 9, 1100},
                             {4, 3, 1},   {300, 7, 1},  {2, 1030, 1},   {5, 1700, 1},  {1, 37, 2051},
                             {7, 11, 53}, {1, 2049, 3},  {2, 16, 600}};
  struct Split {
    int threads;
    int64_t grain;
    int cpu;  // sn_cpu_allow_features: -1 the loops built for the CPU's extensions, 0 the baseline ones
  };
  for (const Split split : {Split{1, SN_REF_GRAIN, -1}, Split{1, SN_REF_GRAIN, 0}, Split{2, 1, -1},
                            Split{3, 700, 0}, Split{8, 1, -1}, Split{13, 1, 0}}) {
    SCOPED_TRACE("threads " + std::to_string(split.threads) + ", grain " + std::to_string(split.grain) +
                 (split.cpu ? ", vector extensions" : ", baseline loops"));
    const int cpu_before = sn_cpu_allow_features(split.cpu);
    const int threads_before = sn_ref_set_threads(split.threads);
    const int64_t grain_before = sn_ref_set_grain(split.grain);
    const int64_t started = sn_ref_threads_started();
    for (sn_dtype_t dt : {SN_DTYPE_FLOAT32, SN_DTYPE_FLOAT16, SN_DTYPE_BFLOAT16}) {
      for (const sn_view_t vw : views) {
        SCOPED_TRACE("dtype " + std::to_string(int(dt)) + ", view " + std::to_string(vw.A) + "x" +
                     std::to_string(vw.h) + "x" + std::to_string(vw.B));
        const int64_t h = vw.h, w = vw.A * vw.B, n = h * w;
        const size_t bytes = size_t(n) * sn_dtype_size(dt);
        std::vector<uint8_t> W(bytes), G(bytes), D(bytes);
        for (int64_t k = 0; k < n; ++k) {
          sn_store(W.data(), dt, k, rng.uniform(-2.f, 2.f));
          sn_store(G.data(), dt, k, rng.uniform(-2.f, 2.f));
          sn_store(D.data(), dt, k, rng.uniform(-2.f, 2.f));
        }
        auto at = [&](const std::vector<uint8_t> &X, int64_t a, int64_t i, int64_t b) {
          return double(sn_load(X.data(), dt, (a * h + i) * vw.B + b));
        };
        const std::vector<double> x = to_double(rng.normals(w)), y = to_double(rng.normals(h));
        std::vector<double> t(static_cast<size_t>(h)), s(static_cast<size_t>(w));
        std::vector<double> t_ref(t.size(), 0.0), s_ref(s.size(), 0.0);
        sn_ref_matvec(W.data(), dt, vw, x.data(), t.data());
        sn_ref_matvec_t(W.data(), dt, vw, y.data(), s.data());
        for (int64_t a = 0; a < vw.A; ++a)
          for (int64_t i = 0; i < h; ++i) {
            double acc = 0.0;
            for (int64_t b = 0; b < vw.B; ++b) acc += at(W, a, i, b) * x[size_t(a * vw.B + b)];
            t_ref[size_t(i)] += acc;
            for (int64_t b = 0; b < vw.B; ++b) s_ref[size_t(a * vw.B + b)] += at(W, a, i, b) * y[size_t(i)];
          }
        EXPECT_EQ(0, std::memcmp(t.data(), t_ref.data(), t.size() * sizeof(double))) << "M x";
        EXPECT_EQ(0, std::memcmp(s.data(), s_ref.data(), s.size() * sizeof(double))) << "M^T y";

        const double gw_ref = sum_in_blocks(
            n, [&](int64_t k) { return double(sn_load(G.data(), dt, k)) * double(sn_load(W.data(), dt, k)); });
        const double gw = sn_ref_inner(G.data(), W.data(), dt, n);
        EXPECT_EQ(0, std::memcmp(&gw, &gw_ref, sizeof gw)) << "<G, W>";

        // The division, in place and not, with σ > 0 and σ = 0.
        for (float sigma : {1.7f, 0.f}) {
          std::vector<uint8_t> out(bytes), in_place = W, expect(bytes);
          sn_ref_divide(W.data(), out.data(), dt, n, sigma, 0.f, 0.75f);
          sn_ref_divide(in_place.data(), in_place.data(), dt, n, sigma, 0.f, 0.75f);
          for (int64_t k = 0; k < n; ++k) {
            const float e = sn_load(W.data(), dt, k);
            sn_store(expect.data(), dt, k, sigma > 0.f ? (e / sigma) * 0.75f : e * 0.f);
          }
          EXPECT_EQ(out, expect) << "W_sn, sigma " << sigma;
          EXPECT_EQ(in_place, expect) << "W_sn in place, sigma " << sigma;
        }

        // The backward with and without the σ term, into dW and in place over G, = and +=.
        std::vector<float> u = rng.normals(h), v = rng.normals(w);
        const float sigma = 1.3f, g = 0.9f;
        for (int detach = 0; detach < 2; ++detach)
          for (int acc = 0; acc < 2; ++acc) {
            const double a = double(g) / double(sigma), bcoef = detach ? 0.0 : a * gw_ref / double(sigma);
            std::vector<uint8_t> expect(bytes);
            for (int64_t A = 0; A < vw.A; ++A)
              for (int64_t i = 0; i < h; ++i)
                for (int64_t b = 0; b < vw.B; ++b) {
                  const int64_t k = (A * h + i) * vw.B + b;
                  double e = a * sn_load(G.data(), dt, k) -
                             bcoef * double(u[size_t(i)]) * double(v[size_t(A * vw.B + b)]);
                  if (acc) e += sn_load(D.data(), dt, k);
                  sn_store(expect.data(), dt, k, float(e));
                }
            std::vector<uint8_t> dW = D;
            const double dg = sn_ref_backward(W.data(), G.data(), dW.data(), dt, vw, u.data(), v.data(), sigma,
                                              0.f, g, 0.f, detach, acc);
            EXPECT_EQ(dW, expect) << "dW, detach " << detach << ", accumulate " << acc;
            EXPECT_EQ(dg, gw_ref / double(sigma));
            if (!acc) {
              std::vector<uint8_t> in_place = G;
              (void)sn_ref_backward(W.data(), in_place.data(), in_place.data(), dt, vw, u.data(), v.data(),
                                    sigma, 0.f, g, 0.f, detach, 0);
              EXPECT_EQ(in_place, expect) << "dW over G, detach " << detach;
            }
          }
      }
    }
    if (split.threads > 1) EXPECT_GT(sn_ref_threads_started(), started) << "no call split";
    else EXPECT_EQ(sn_ref_threads_started(), started) << "a call split on one thread";
    EXPECT_EQ(sn_ref_set_grain(grain_before), split.grain);
    EXPECT_EQ(sn_ref_set_threads(threads_before), split.threads);
    EXPECT_EQ(sn_cpu_allow_features(cpu_before), split.cpu);
  }
}

// ⟨G, W⟩ over more blocks than one round of sn_ref_inner takes (64 of SN_REF_INNER_BLOCK
// elements), the last block short: each block's sum in element order, then the blocks' sums in
// order, bit for bit, on one thread and on five.
TEST(Reference, InnerProductAddsFixedBlocksInOrder) {
  SN_SEEDED_RNG();
  const int64_t n = 65 * SN_REF_INNER_BLOCK + 17;
  const std::vector<float> g = rng.normals(n), w = rng.normals(n);
  for (sn_dtype_t dt : {SN_DTYPE_FLOAT32, SN_DTYPE_FLOAT16, SN_DTYPE_BFLOAT16}) {
    std::vector<uint8_t> G(size_t(n) * sn_dtype_size(dt)), W(G.size());
    sn_store_n(G.data(), dt, 0, n, g.data());
    sn_store_n(W.data(), dt, 0, n, w.data());
    const double expect = sum_in_blocks(
        n, [&](int64_t k) { return double(sn_load(G.data(), dt, k)) * double(sn_load(W.data(), dt, k)); });
    for (int cpu : {-1, 0}) {  // the loops built for the CPU's vector extensions, then the baseline ones
      const ScopedCpuFeatures features(cpu);
      for (int threads : {1, 5}) {
        SCOPED_TRACE("dtype " + std::to_string(int(dt)) + ", cpu " + std::to_string(cpu) + ", " +
                     std::to_string(threads) + " threads");
        const int before = sn_ref_set_threads(threads);
        const int64_t started = sn_ref_threads_started();
        const double got = sn_ref_inner(G.data(), W.data(), dt, n);
        EXPECT_EQ(0, std::memcmp(&got, &expect, sizeof got)) << got << " vs " << expect;
        EXPECT_EQ(sn_ref_threads_started() > started, threads > 1);
        sn_ref_set_threads(before);
      }
    }
  }
}

// The setters clamp: a count below 1 is 1 and above SN_REF_MAX_THREADS is that maximum; a grain
// below 1 element is 1 (a split of a small weight then still gives the single thread's bits).
TEST(Reference, ThreadAndGrainSettersClamp) {
  SN_SEEDED_RNG();
  const int threads_before = sn_ref_set_threads(0);
  EXPECT_EQ(sn_ref_set_threads(-5), 1);
  EXPECT_EQ(sn_ref_set_threads(1000), 1);
  EXPECT_EQ(sn_ref_set_threads(3), SN_REF_MAX_THREADS);
  const int64_t grain_before = sn_ref_set_grain(0);
  EXPECT_EQ(sn_ref_set_grain(-7), 1);
  const sn_view_t vw = {1, 9, 40};
  const std::vector<float> W = rng.normals(9 * 40);
  const std::vector<double> x = to_double(rng.normals(40));
  std::vector<double> split(9), alone(9);
  sn_ref_matvec(W.data(), SN_DTYPE_FLOAT32, vw, x.data(), split.data());
  EXPECT_EQ(sn_ref_set_grain(SN_REF_GRAIN), 1);
  sn_ref_matvec(W.data(), SN_DTYPE_FLOAT32, vw, x.data(), alone.data());
  EXPECT_EQ(0, std::memcmp(split.data(), alone.data(), sizeof(double) * 9));
  sn_ref_set_grain(grain_before);
  EXPECT_EQ(sn_ref_set_threads(threads_before), 3);
}

// sn_ref_run_tasks: every task once, each on one thread with the caller's grain and 1 thread; a
// thread takes a contiguous run of tasks, the first run on the calling thread, and the runs split
// the work evenly (a run ends once it reaches its share, so it exceeds the share by less than one
// task's work); no thread starts where one thread or the total work at the grain allows no split.
TEST(Reference, TasksRunOnceInContiguousBalancedRuns) {
  SN_SEEDED_RNG();
  struct Seen {
    std::vector<std::atomic<int>> runs;
    std::vector<std::thread::id> on;
    std::atomic<int> bad_settings{0};
    int64_t grain = 0;
    explicit Seen(size_t n) : runs(n), on(n) {}
  };
  auto task = [](void *ctx, int k) {
    Seen *s = static_cast<Seen *>(ctx);
    s->runs[size_t(k)].fetch_add(1);
    s->on[size_t(k)] = std::this_thread::get_id();
    if (sn_ref_grain() != s->grain || sn_ref_set_threads(1) != 1) s->bad_settings.fetch_add(1);
  };
  const int threads_before = sn_ref_set_threads(1);
  const int64_t grain_before = sn_ref_grain();
  for (int round = 0; round < 40; ++round) {
    const int n = round == 0 ? 0 : 1 + int(rng.gen() % 60);
    const int threads = 1 + int(rng.gen() % 9);
    std::vector<int64_t> work(static_cast<size_t>(n));
    int64_t total = 0, largest = 0;
    for (auto &w : work) {
      const uint64_t r = rng.gen() % 10;
      w = r == 0 ? 0 : r == 1 ? -5 : int64_t(rng.gen() % 5000);  // some empty, some negative (as 0)
      total += std::max<int64_t>(w, 0);
      largest = std::max(largest, w);
    }
    const int64_t grain = round % 4 == 3 ? std::max<int64_t>(total, 1) : 1 + int64_t(rng.gen() % 300);
    SCOPED_TRACE("round " + std::to_string(round) + ": " + std::to_string(n) + " tasks, " +
                 std::to_string(threads) + " threads, grain " + std::to_string(grain));
    Seen seen(static_cast<size_t>(n));
    seen.grain = grain;
    sn_ref_set_threads(threads);
    sn_ref_set_grain(grain);
    const int64_t started0 = sn_ref_threads_started();
    sn_ref_run_tasks(n, work.data(), task, &seen);
    const int64_t started = sn_ref_threads_started() - started0;
    EXPECT_EQ(sn_ref_set_threads(1), threads) << "the caller's threads changed";
    EXPECT_EQ(sn_ref_grain(), grain) << "the caller's grain changed";
    EXPECT_EQ(seen.bad_settings.load(), 0) << "a task saw another grain or more than 1 thread";
    for (int k = 0; k < n; ++k) ASSERT_EQ(seen.runs[size_t(k)].load(), 1) << "task " << k;
    // The runs: tasks in order, a new run where the thread changes; no thread comes back.
    std::vector<int64_t> run_work;
    std::vector<std::thread::id> run_on;
    for (int k = 0; k < n; ++k) {
      if (k == 0 || seen.on[size_t(k)] != seen.on[size_t(k - 1)]) {
        for (const auto &id : run_on) EXPECT_NE(id, seen.on[size_t(k)]) << "a thread's tasks are not contiguous";
        run_on.push_back(seen.on[size_t(k)]);
        run_work.push_back(0);
      }
      run_work.back() += std::max<int64_t>(work[size_t(k)], 0);
    }
    if (n > 0) {
      EXPECT_EQ(run_on.front(), std::this_thread::get_id()) << "the first run is not the caller's";
    }
    const int64_t parts = std::min<int64_t>({threads, total / grain, n});
    EXPECT_EQ(started, std::max<int64_t>(int64_t(run_on.size()) - 1, 0));
    if (parts <= 1) {
      EXPECT_EQ(started, 0) << "no split is paid for, yet threads started";
      continue;
    }
    EXPECT_LE(int64_t(run_on.size()), parts);
    // A run's end: the first task at which the work so far reaches a multiple of total / parts.
    for (size_t r = 0; r < run_work.size(); ++r)
      EXPECT_LT(double(run_work[r]), double(total) / double(parts) + double(largest) + 1.0) << "run " << r;
    // One run only where every task but the last falls short of the first share.
    if (run_on.size() == 1) {
      EXPECT_LT(double(total - std::max<int64_t>(work.back(), 0)) * double(parts), double(total))
          << "a split paid for did not happen";
    }
  }
  sn_ref_set_grain(grain_before);
  sn_ref_set_threads(threads_before);
}

// sn_load_n / sn_store_n (the chunks the reference reads and writes) give sn_load's and
// sn_store's bits element by element, at any offset, for every dtype, NaN and Inf included.
TEST(Reference, ChunkConversionsAreElementByElement) {
  SN_SEEDED_RNG();
  const int64_t total = 1100;
  for (sn_dtype_t dt : {SN_DTYPE_FLOAT32, SN_DTYPE_FLOAT16, SN_DTYPE_BFLOAT16}) {
    SCOPED_TRACE(int(dt));
    const size_t es = sn_dtype_size(dt);
    std::vector<uint8_t> raw(static_cast<size_t>(total) * es);
    for (uint8_t &b : raw) b = uint8_t(rng.gen());
    std::vector<float> x = rng.normals(total, 1e3f);
    x[1] = NAN, x[2] = INFINITY, x[3] = -0.f, x[4] = 1e-30f, x[5] = 70000.f;
    for (const int64_t k : {int64_t(0), int64_t(1), int64_t(513)})
      for (const int64_t n : {int64_t(1), int64_t(7), int64_t(512)}) {
        std::vector<float> got(static_cast<size_t>(n), -1.f);
        sn_load_n(raw.data(), dt, k, n, got.data());
        for (int64_t e = 0; e < n; ++e) {
          const float want = sn_load(raw.data(), dt, k + e);
          ASSERT_EQ(std::memcmp(&got[static_cast<size_t>(e)], &want, 4), 0) << k << " + " << e;
        }
        std::vector<uint8_t> a = raw, b = raw;
        sn_store_n(a.data(), dt, k, n, x.data());
        for (int64_t e = 0; e < n; ++e) sn_store(b.data(), dt, k + e, x[static_cast<size_t>(e)]);
        ASSERT_EQ(a, b) << "store at " << k << ", " << n << " elements";
      }
  }
}
