// CUDA layers against the CPU backend (the double-precision reference), step by step, on every
// kind of shape and layout; determinism; CUDA graph capture; GPU-side bad input.
// Every test skips with a message when no CUDA device is present.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <utility>

#include "fake_cuda/fatbin.h"
#include "fake_cuda/probe_kernels.h"
#include "sn_internal.h"
#include "test_util.h"

using namespace sntest;

namespace {


// A device buffer of `count` floats, starting `offset` floats into its allocation (so that an
// offset of 1..3 gives a pointer that is not 16-byte aligned).
struct DevBuf {
  float *base = nullptr, *p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count, size_t offset = 0) : n(count) {
    EXPECT_EQ(cudaMalloc(&base, std::max<size_t>(count + offset, 1) * sizeof(float)), cudaSuccess);
    p = base + offset;
  }
  ~DevBuf() { cudaFree(base); }
  DevBuf(const DevBuf &) = delete;
  DevBuf &operator=(const DevBuf &) = delete;
  void upload(const std::vector<float> &h) {
    EXPECT_EQ(cudaMemcpy(p, h.data(), h.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<float> download() const {
    std::vector<float> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), p, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
  void poison() { EXPECT_EQ(cudaMemset(p, 0xFF, n * 4), cudaSuccess); }  // NaN pattern
};

struct Case {
  std::vector<int64_t> shape;
  int dim;
  sn_order_t order;
  int iters;
  sn_algo_t algo = SN_ALGO_DEFAULT;
  float add_eps = 0.f;  // > 0: SN_EPS_ADD_SQUARED with this eps
};

std::string case_name(const Case &c) {
  static const char *algo[] = {"default", "two-pass", "one-pass"};
  return shape_str(c.shape) + " dim=" + std::to_string(c.dim) +
         (c.order == SN_ORDER_U_FIRST ? " u-first" : " v-first") + " iters=" + std::to_string(c.iters) +
         " algo=" + algo[c.algo] + (c.add_eps > 0.f ? " add-squared eps=" + std::to_string(c.add_eps) : "");
}

// gtest prints parameters with this (instead of raw bytes).
void PrintTo(const Case &c, std::ostream *os) { *os << case_name(c); }


// A weight of `shape` whose matrix view along `dim` has a clear spectral gap.
std::vector<float> gapped_weight(Rng &rng, const std::vector<int64_t> &shape, int dim) {
  const int nd = int(shape.size());
  const int d = dim < 0 ? dim + nd : dim;
  const sn_view_t vw = sn_ref_view(nd, shape.data(), d);
  const int64_t w = vw.A * vw.B;
  const std::vector<float> M = gapped_matrix(rng, vw.h, w);
  std::vector<float> W(M.size());
  for (int64_t a = 0; a < vw.A; ++a)
    for (int64_t i = 0; i < vw.h; ++i)
      for (int64_t b = 0; b < vw.B; ++b)
        W[static_cast<size_t>((a * vw.h + i) * vw.B + b)] = M[static_cast<size_t>(i * w + a * vw.B + b)];
  return W;
}

// A CPU layer like `cpu` (not yet run) whose start is the same but moved by 1e-6 of its norm
// along W's top singular vectors (from a CPU layer desc warmed up over 20 iterations on W): how
// far it ends from `cpu` measures how much the iteration amplifies a rounding at that step, along
// the direction it amplifies most. From a start nearly orthogonal to the top singular vector,
// that vector's share grows some tenfold an iteration from almost nothing, and float and double
// iterations part by up to 1e-3 of σ there, both correct to their precision (gapped_matrix of
// 777 × 8192, random starts: about 1 in 100 leaves σ below 2 after three iterations, 1 in 1000
// after four). A GPU σ 1.8e-5 below the CPU's at a CPU σ of 1.32 (H200, session 30; the matrix's
// σ is 4.1) was such a start. (A probe moved by a random 1e-6 in each element, session 31's
// first, fell short on a start of share 1e-5: its move happened to have little of the top vector.)
// W's top singular vectors (u and v of a CPU layer of `desc` warmed up over 20 iterations on W:
// the gapped matrices' gap makes that converged to float precision) into *t.
static void top_singular_vectors(sn_layer_desc_t desc, const std::vector<float> &W, State *t) {
  desc.backend = SN_BACKEND_CPU;
  desc.warmup_iterations = 20;
  LayerPtr top(desc);
  ASSERT_TRUE(top.p) << sn_last_error_message();
  ASSERT_EQ(sn_layer_warmup(top, W.data(), nullptr), SN_SUCCESS) << sn_last_error_message();
  *t = get_state(top);
}

static void start_probe(const LayerPtr &cpu, const LayerPtr &probe, const sn_layer_desc_t &desc,
                        const std::vector<float> &W) {
  State s = get_state(cpu), t;
  ASSERT_NO_FATAL_FAILURE(top_singular_vectors(desc, W, &t));
  auto move = [](std::vector<float> &x, const std::vector<float> &dir) {
    double n = 0;
    for (float e : x) n += double(e) * e;
    const double step = 1e-6 * std::sqrt(n);
    for (size_t k = 0; k < x.size(); ++k) x[k] = float(x[k] + step * dir[k]);
  };
  move(s.u, t.u);
  move(s.v, t.v);
  ASSERT_EQ(sn_layer_set_state(probe, s.u.data(), s.v.data(), s.sigma, s.warmed, nullptr), SN_SUCCESS)
      << sn_last_error_message();
}

// Run `steps` forwards on a CUDA layer and a CPU layer created alike, W changing between steps,
// the last an eval forward and, from 5 steps, the one before it scale-only (its scale compared in
// place of W_sn), and compare state and output after each step: σ to 1e-5 relative and u, v to 2e-5, or to what a
// CPU probe started 1e-6 away along W's top singular vectors (start_probe) drifts, where the
// iteration is that ill-conditioned.
// W_offset shifts W and W_sn by that many floats inside their buffers (alignment tests). start, if
// given, sets the layers' first state from W (warm-up still to run); *widest receives the largest
// σ tolerance used.
using StartFn = std::function<void(const std::vector<float> &W, State &s)>;
void compare_backends(const Case &c, Rng &rng, int steps, int warmup = 15, int W_offset = 0,
                      const StartFn &start = nullptr, double *widest = nullptr) {
  SCOPED_TRACE(case_name(c));
  sn_layer_desc_t dg = make_desc(c.shape, SN_BACKEND_CUDA, c.dim);
  dg.algo = c.algo;
  dg.order = c.order;
  dg.n_power_iterations = c.iters;
  dg.warmup_iterations = warmup;
  dg.seed = rng.gen();
  if (c.add_eps > 0.f) {
    dg.eps_mode = SN_EPS_ADD_SQUARED;
    dg.eps = c.add_eps;
  }
  sn_layer_desc_t dc = dg;
  dc.backend = SN_BACKEND_CPU;
  LayerPtr g(dg), cpu(dc), probe(dc);
  ASSERT_TRUE(g.p && cpu.p && probe.p);
  const int64_t n = numel_of(c.shape);
  std::vector<float> W = gapped_weight(rng, c.shape, c.dim), out_cpu(static_cast<size_t>(n));
  if (start) {
    State s = get_state(cpu);
    start(W, s);
    for (sn_layer_t *l : {g.p, cpu.p})
      ASSERT_EQ(sn_layer_set_state(l, s.u.data(), s.v.data(), 0.f, 0, nullptr), SN_SUCCESS) << sn_last_error_message();
  }
  ASSERT_NO_FATAL_FAILURE(start_probe(cpu, probe, dc, W));
  DevBuf dW(static_cast<size_t>(n), static_cast<size_t>(W_offset)),
      dOut(static_cast<size_t>(n), static_cast<size_t>(W_offset));
  double sigma_tol = 1e-5, vec_tol = 2e-5;
  for (int step = 0; step < steps; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const int training = step + 1 < steps ? 1 : 0;  // the last step is an eval step
    const bool scale_only = steps >= 5 && step == steps - 2;
    if (step > 0)
      for (auto &x : W) x += 0.01f * rng.normal() / std::sqrt(float(n));
    dW.upload(W);
    dOut.poison();
    if (scale_only) {
      ASSERT_EQ(sn_forward_scale_only(g, dW.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
      ASSERT_EQ(sn_forward_scale_only(cpu, W.data(), 1, nullptr), SN_SUCCESS);
    } else {
      ASSERT_EQ(sn_forward(g, dW.p, dOut.p, training, nullptr), SN_SUCCESS) << sn_last_error_message();
      ASSERT_EQ(sn_forward(cpu, W.data(), out_cpu.data(), training, nullptr), SN_SUCCESS);
    }
    sn_paths_t paths;
    ASSERT_EQ(sn_layer_get_paths(g, &paths), SN_SUCCESS);
    SCOPED_TRACE(std::string(scale_only ? "scale-only, " : "") + "CUDA path " +
                 sn_path_name(scale_only ? paths.scale_only : training ? paths.train : paths.eval));
    const State sg = get_state(g), sc = get_state(cpu);
    if (training) {  // an eval step keeps the state, and the last training step's tolerances
      std::vector<float> out_probe(static_cast<size_t>(n));
      ASSERT_EQ(sn_forward(probe, W.data(), out_probe.data(), training, nullptr), SN_SUCCESS);
      const State sp = get_state(probe);
      sigma_tol = std::max(1e-5, std::fabs(double(sp.sigma) / sc.sigma - 1.0));
      vec_tol = std::max({2e-5, max_abs_diff(sp.u, sc.u), max_abs_diff(sp.v, sc.v)});
      if (widest) *widest = std::max(*widest, sigma_tol);
    }
    SCOPED_TRACE("tolerances: sigma " + std::to_string(sigma_tol) + " relative, u and v " + std::to_string(vec_tol));
    EXPECT_NEAR(sg.sigma / sc.sigma, 1.0, sigma_tol) << "sigma gpu " << sg.sigma << " cpu " << sc.sigma;
    EXPECT_LT(max_abs_diff(sg.u, sc.u), vec_tol);
    EXPECT_LT(max_abs_diff(sg.v, sc.v), vec_tol);
    EXPECT_EQ(sg.warmed, 1);
    if (scale_only) {
      expect_scale_near(g, cpu, sigma_tol);
      continue;
    }
    const std::vector<float> out = dOut.download();
    // W_sn = W / σ: each element off by its own size times σ's relative difference and a float
    // rounding, so within that of the largest element (W_sn's elements are far below 1 on large
    // layers: a bound of max(1, max|W_sn|) let them be off by 1e-3 of themselves).
    EXPECT_LT(max_abs_diff(out, out_cpu), (sigma_tol + 1e-6) * max_abs(out_cpu) + 1e-30);
  }
}

class GpuShapes : public ::testing::TestWithParam<Case> {};

}  // namespace

TEST_P(GpuShapes, MatchesCpuBackendStepByStep) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  compare_backends(GetParam(), rng, 5);
  // Small u-first layers' training forwards run on chip by default (sm_90): their usual kernels too.
  const Case &c = GetParam();
  if (c.order == SN_ORDER_U_FIRST && numel_of(c.shape) <= 160 * 1024 && sn_cuda_clusters_usable()) {
    SCOPED_TRACE("SPECNORM_TUNE=op_onchip=0");
    ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + "op_onchip=0").c_str());
    compare_backends(c, rng, 5);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GpuShapes,
    ::testing::Values(
        Case{{1, 1}, 0, SN_ORDER_U_FIRST, 1}, Case{{1, 1000}, 0, SN_ORDER_U_FIRST, 1},
        Case{{1000, 1}, 0, SN_ORDER_U_FIRST, 1}, Case{{7, 13}, 0, SN_ORDER_U_FIRST, 1},
        Case{{33, 65}, 0, SN_ORDER_V_FIRST, 1}, Case{{257, 1023}, 0, SN_ORDER_U_FIRST, 2},
        Case{{1000, 4099}, 0, SN_ORDER_U_FIRST, 1}, Case{{4099, 1000}, 0, SN_ORDER_V_FIRST, 1},
        Case{{128, 128, 3, 3}, 0, SN_ORDER_U_FIRST, 1}, Case{{64, 3, 3, 3}, 0, SN_ORDER_U_FIRST, 1},
        Case{{1, 128}, 0, SN_ORDER_U_FIRST, 1},     // SN-GAN's final linear layer
        Case{{4, 6, 3, 3}, 1, SN_ORDER_U_FIRST, 1}, // ConvTranspose2d weight, dim = 1
        Case{{96, 48, 4, 4}, 1, SN_ORDER_V_FIRST, 1},
        Case{{5, 7, 2}, -1, SN_ORDER_U_FIRST, 1},   // last axis: B = 1
        Case{{300, 517}, 1, SN_ORDER_U_FIRST, 1},   // a transposed view
        Case{{3, 1000, 5}, 1, SN_ORDER_V_FIRST, 3}, Case{{2, 3, 4, 5, 6}, 2, SN_ORDER_U_FIRST, 1},
        Case{{4096, 4096}, 0, SN_ORDER_U_FIRST, 1},
        // Keras' layout from 2^21 elements: on chip over the grid by default on sm_90 (training
        // forwards; the last step, an eval, on the usual kernels).
        Case{{2048, 1024}, -1, SN_ORDER_V_FIRST, 1}, Case{{3, 3, 256, 1000}, -1, SN_ORDER_V_FIRST, 2},
        // The one-pass kernels, forced, on every row width they have a variant for.
        Case{{4096, 4096}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_TWO_PASS},
        Case{{1, 4}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS},
        Case{{2000, 12}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS},
        Case{{600, 1152}, 0, SN_ORDER_U_FIRST, 2, SN_ALGO_ONE_PASS},
        Case{{128, 128, 3, 3}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS},
        Case{{1000, 4100}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS},
        Case{{777, 8192}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS},
        Case{{8, 16384}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS},
        Case{{3000, 16384}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS},
        Case{{1, 5, 64}, 1, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS},  // A = 1 with dim = 1
        // The v-first (legacy) one-pass kernels by column panels: widths not a multiple of 32,
        // A > 1 views, the largest h that fits (768 in fp32), several iterations.
        Case{{1, 1}, 0, SN_ORDER_V_FIRST, 1, SN_ALGO_ONE_PASS},
        Case{{1, 5000}, 0, SN_ORDER_V_FIRST, 1, SN_ALGO_ONE_PASS},
        Case{{768, 1}, 0, SN_ORDER_V_FIRST, 1, SN_ALGO_ONE_PASS},
        Case{{128, 128, 3, 3}, 0, SN_ORDER_V_FIRST, 1, SN_ALGO_ONE_PASS},
        Case{{96, 48, 4, 4}, 1, SN_ORDER_V_FIRST, 2, SN_ALGO_ONE_PASS},
        Case{{3, 700, 5}, 1, SN_ORDER_V_FIRST, 3, SN_ALGO_ONE_PASS},
        Case{{768, 4099}, 0, SN_ORDER_V_FIRST, 1, SN_ALGO_ONE_PASS},
        Case{{500, 16384}, 0, SN_ORDER_V_FIRST, 1, SN_ALGO_ONE_PASS}),
    [](const ::testing::TestParamInfo<Case> &info) {
      std::string s = shape_str(info.param.shape) + "_dim" + std::to_string(info.param.dim + 8) +
                      (info.param.order == SN_ORDER_U_FIRST ? "_u" : "_v") + std::to_string(info.param.iters) +
                      "_algo" + std::to_string(int(info.param.algo));
      return s;
    });

// N(x) = x / sqrt(‖x‖² + eps) (Flax, Haiku) in every kernel family: the default plans (on chip,
// the one-pass rows and their cooperative launch, two passes), the forced one-pass kernels of
// either order, a 1-D weight, the last axis. eps = 1e-2 moves σ of these weights (σ ≈ 4) by
// ~3e-4, 30 times the tolerance: a kernel that clamped instead would fail.
class GpuAddSquaredEps : public ::testing::TestWithParam<Case> {};

TEST_P(GpuAddSquaredEps, MatchesCpuBackendStepByStep) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  compare_backends(GetParam(), rng, 5);
}

INSTANTIATE_TEST_SUITE_P(
    EpsModes, GpuAddSquaredEps,
    ::testing::Values(Case{{7, 13}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_DEFAULT, 1e-2f},
                      Case{{33, 65}, 0, SN_ORDER_V_FIRST, 1, SN_ALGO_DEFAULT, 1e-2f},
                      Case{{1000, 4099}, 0, SN_ORDER_U_FIRST, 2, SN_ALGO_DEFAULT, 1e-2f},
                      Case{{4099, 1000}, 0, SN_ORDER_V_FIRST, 1, SN_ALGO_DEFAULT, 1e-2f},
                      Case{{4096, 4096}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_DEFAULT, 1e-2f},
                      Case{{600, 1152}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS, 1e-2f},
                      Case{{600, 1152}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_TWO_PASS, 1e-2f},
                      Case{{128, 128, 3, 3}, 0, SN_ORDER_V_FIRST, 1, SN_ALGO_ONE_PASS, 1e-2f},
                      Case{{1, 5000}, 0, SN_ORDER_V_FIRST, 1, SN_ALGO_ONE_PASS, 1e-2f},
                      Case{{3, 3, 4, 6}, -1, SN_ORDER_V_FIRST, 1, SN_ALGO_DEFAULT, 1e-2f},
                      Case{{1000}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_DEFAULT, 1e-2f}),
    [](const ::testing::TestParamInfo<Case> &info) {
      return shape_str(info.param.shape) + "_dim" + std::to_string(info.param.dim + 8) +
             (info.param.order == SN_ORDER_U_FIRST ? "_u" : "_v") + std::to_string(info.param.iters) +
             "_algo" + std::to_string(int(info.param.algo));
    });

// 16384 × 16384: 64-bit byte offsets, one training step and one eval step (no warm-up, to keep the
// CPU reference's time reasonable).
TEST(GpuLarge, Large16384Square) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  compare_backends(Case{{16384, 16384}, 0, SN_ORDER_U_FIRST, 1}, rng, 2, 0);
}

#ifndef SPECNORM_EMULATED  // the plans an H100 gives (the emulated device is smaller)
// sn_layer_get_paths and sn_group_get_paths on a real device: after each kind of call the recorded
// path is the one its kernels say (path_of_kernels), read from a graph capture of that call
// (nothing runs), over layers that take each path by default or by SPECNORM_TUNE, W aligned or
// one element off. (The fake-runtime tests check the same on every shape and setting; here the
// device's own occupancy and refusals decide.)
TEST(Gpu, RecordedPathsAreTheCapturedKernels) {
  REQUIRE_GPU();
  struct PathCase {
    const char *tune;
    std::vector<int64_t> shape;
    int dim;
    sn_order_t order;
    sn_dtype_t dtype;
    sn_algo_t algo;
    int offset;             // elements W, W_sn, G and dW sit past 16-byte alignment
    sn_path_t want_train;   // NONE: whatever the device's plan is
    // On sm_90 (H100, H200), the paths the fake runtime's plan takes there (specnorm_launch_report
    // on its H100-like device) of the training forward, the scale-only forward and the backward:
    // a case whose knob did not take its path (a layer that did not fit after all) fails here
    // rather than passing on the fallback. NONE: not checked.
    sn_path_t sm90[3];
    const char *sm90_describe;  // a part of sn_layer_describe's text on sm_90, or nullptr
  };
  constexpr sn_path_t kAny = SN_PATH_NONE;
  const PathCase cases[] = {
      {"", {4096, 4096}, 0, SN_ORDER_U_FIRST, SN_DTYPE_FLOAT32, SN_ALGO_DEFAULT, 0, kAny,
       {SN_PATH_ONE_PASS_ROWS, SN_PATH_ONE_PASS_COOP, SN_PATH_BACKWARD_KERNELS}, nullptr},
      {"", {4096, 16384}, 0, SN_ORDER_U_FIRST, SN_DTYPE_BFLOAT16, SN_ALGO_DEFAULT, 0, SN_PATH_ONE_PASS_ROWS,
       {kAny, SN_PATH_ONE_PASS_ROWS, SN_PATH_BACKWARD_KERNELS}, nullptr},
      {"", {4096, 4096}, 0, SN_ORDER_U_FIRST, SN_DTYPE_BFLOAT16, SN_ALGO_ONE_PASS, 1, SN_PATH_MATVEC,
       {kAny, kAny, kAny}, nullptr},
      {"", {1000, 1001}, 0, SN_ORDER_U_FIRST, SN_DTYPE_FLOAT32, SN_ALGO_TWO_PASS, 0, SN_PATH_MATVEC,
       {kAny, SN_PATH_MATVEC, SN_PATH_BACKWARD_KERNELS}, nullptr},
      {"", {64, 576}, 0, SN_ORDER_U_FIRST, SN_DTYPE_FLOAT32, SN_ALGO_DEFAULT, 0, kAny,
       {SN_PATH_ON_CHIP, SN_PATH_ON_CHIP, SN_PATH_BACKWARD_KERNELS}, nullptr},
      {"op_onchip=1", {64, 576}, 0, SN_ORDER_U_FIRST, SN_DTYPE_FLOAT16, SN_ALGO_DEFAULT, 0, kAny,
       {SN_PATH_ON_CHIP, SN_PATH_ON_CHIP, SN_PATH_ON_CHIP}, nullptr},
      // Clusters whose blocks come close to the shared memory's limit, and the largest clusters
      // of the one-pass rows (80 x 4096 fp32 on chip: 231,552 bytes a block of a cluster of 8 on an
      // H100, the fake predicts): their probes must not fail (no SN_DROPPED_SETUP) on a real driver,
      // and the layer must fit (if it does not, the driver counts more static shared memory than
      // the fake: see Gpu.KernelResourcesAreWhatTheFakeRuntimeReads and kReservedSmem).
      {"op_onchip=1", {80, 4096}, 0, SN_ORDER_U_FIRST, SN_DTYPE_FLOAT32, SN_ALGO_DEFAULT, 0, kAny,
       {SN_PATH_ON_CHIP, SN_PATH_ON_CHIP, SN_PATH_ON_CHIP}, "on chip in a cluster of 8 blocks of 512 threads"},
      {"op_cluster=8", {4096, 4096}, 0, SN_ORDER_U_FIRST, SN_DTYPE_FLOAT32, SN_ALGO_ONE_PASS, 0, SN_PATH_ONE_PASS_ROWS,
       {SN_PATH_ONE_PASS_ROWS, SN_PATH_ONE_PASS_COOP, SN_PATH_BACKWARD_KERNELS}, ", clusters of 8"},
      {"op_onchip_grid=2", {2048, 2048}, 0, SN_ORDER_U_FIRST, SN_DTYPE_BFLOAT16, SN_ALGO_DEFAULT, 0, kAny,
       {SN_PATH_ON_CHIP_GRID, SN_PATH_ON_CHIP_GRID, SN_PATH_ON_CHIP_GRID}, nullptr},
      {"op_coop=0", {3072, 768}, 0, SN_ORDER_U_FIRST, SN_DTYPE_FLOAT32, SN_ALGO_DEFAULT, 0, SN_PATH_ONE_PASS_ROWS,
       {SN_PATH_ONE_PASS_ROWS, SN_PATH_ONE_PASS_ROWS, SN_PATH_BACKWARD_KERNELS}, nullptr},
      {"", {3, 3, 64, 128}, -1, SN_ORDER_V_FIRST, SN_DTYPE_FLOAT32, SN_ALGO_ONE_PASS, 0, SN_PATH_ONE_PASS_COLS,
       {kAny, kAny, kAny}, nullptr},
      // A v-first layer of dim −1 from 2^21 elements: on the grid by default on sm_90.
      {"", {3, 3, 256, 1024}, -1, SN_ORDER_V_FIRST, SN_DTYPE_FLOAT32, SN_ALGO_DEFAULT, 0, kAny,
       {SN_PATH_ON_CHIP_GRID, SN_PATH_ON_CHIP_GRID, SN_PATH_ON_CHIP_GRID}, nullptr},
      {"", {4097}, 0, SN_ORDER_U_FIRST, SN_DTYPE_FLOAT32, SN_ALGO_DEFAULT, 0, SN_PATH_ONE_D, {kAny, kAny, kAny}, nullptr},
  };
  int major = 0;
  CUDA_OK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  for (const PathCase &c : cases) {
    SCOPED_TRACE(std::string("SPECNORM_TUNE=") + c.tune + ", " + shape_str(c.shape) + ", dtype " +
                 std::to_string(c.dtype) + ", offset " + std::to_string(c.offset));
    ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + c.tune).c_str());
    sn_layer_desc_t d = make_desc(c.shape, SN_BACKEND_CUDA, c.dim);
    d.order = c.order;
    d.dtype = c.dtype;
    d.algo = c.algo;
    LayerPtr l(d);
    ASSERT_TRUE(l.p);
    int64_t n = 1;
    for (int64_t x : c.shape) n *= x;
    Tensor W(c.dtype, n, c.offset), W_sn(c.dtype, n, c.offset), G(c.dtype, n, c.offset), dW(c.dtype, n, c.offset);
    W.poison();  // (the values do not matter: after the warm-up the calls are only captured)
    ASSERT_EQ(sn_layer_warmup(l, W.dev, nullptr), SN_SUCCESS) << sn_last_error_message();
    CUDA_OK(cudaDeviceSynchronize());
    const bool one_d = c.shape.size() == 1;
    const auto check = [&](const char *what, sn_path_t sn_paths_t::*kind,
                           const std::function<sn_status_t(cudaStream_t)> &call) {
      SCOPED_TRACE(what);  // (the call is captured in a graph: nothing runs)
      expect_recorded_path(l.p, sn_layer_get_paths, kind, captured_kernels(call), one_d);
    };
    check("train", &sn_paths_t::train, [&](cudaStream_t s) { return sn_forward(l, W.dev, W_sn.dev, 1, (sn_stream_t)s); });
    check("scale", &sn_paths_t::scale_only, [&](cudaStream_t s) { return sn_forward_scale_only(l, W.dev, 1, (sn_stream_t)s); });
    check("eval", &sn_paths_t::eval, [&](cudaStream_t s) { return sn_forward(l, W.dev, W_sn.dev, 0, (sn_stream_t)s); });
    check("backward", &sn_paths_t::backward,
          [&](cudaStream_t s) { return sn_backward(l, W.dev, G.dev, dW.dev, 0, nullptr, (sn_stream_t)s); });
    sn_paths_t p;
    ASSERT_EQ(sn_layer_get_paths(l, &p), SN_SUCCESS);
    char text[1024];
    ASSERT_EQ(sn_layer_describe(l, text, sizeof text, nullptr), SN_SUCCESS);
    SCOPED_TRACE(text);
    if (c.want_train != SN_PATH_NONE) {
      EXPECT_EQ(p.train, c.want_train) << sn_path_name(p.train);
    }
    if (major == 9) {
      const sn_path_t got[3] = {p.train, p.scale_only, p.backward};
      const char *const kinds[3] = {"train", "scale-only", "backward"};
      for (int k = 0; k < 3; ++k) {
        if (c.sm90[k] == SN_PATH_NONE) continue;
        EXPECT_EQ(got[k], c.sm90[k]) << kinds[k] << ": " << sn_path_name(got[k])
                                     << " where the plan on sm_90 takes " << sn_path_name(c.sm90[k]);
      }
      if (c.sm90_describe) {
        EXPECT_NE(std::strstr(text, c.sm90_describe), nullptr) << c.sm90_describe;
      }
    }
  }

  // A group (SN-GAN's first layers, u-first): its forward and backward, on chip, cooperative or
  // in kernels as the device's plan says.
  const std::vector<std::vector<int64_t>> shapes = {{128, 3, 3, 3}, {128, 128, 3, 3}, {128, 3, 1, 1}, {1, 128}};
  std::vector<std::unique_ptr<LayerPtr>> layers;
  std::vector<std::unique_ptr<Tensor>> bufs;
  std::vector<sn_layer_t *> raw;
  std::vector<const void *> W, G;
  std::vector<void *> W_sn, dW;
  for (const std::vector<int64_t> &shape : shapes) {
    layers.push_back(std::make_unique<LayerPtr>(make_desc(shape, SN_BACKEND_CUDA)));
    raw.push_back(layers.back()->p);
    int64_t n = 1;
    for (int64_t x : shape) n *= x;
    for (int k = 0; k < 4; ++k) bufs.push_back(std::make_unique<Tensor>(SN_DTYPE_FLOAT32, n));
    W.push_back(bufs[bufs.size() - 4]->dev);
    W_sn.push_back(bufs[bufs.size() - 3]->dev);
    G.push_back(bufs[bufs.size() - 2]->dev);
    dW.push_back(bufs[bufs.size() - 1]->dev);
  }
  sn_group_t *g = nullptr;
  ASSERT_EQ(sn_group_create(&g, raw.data(), W.data(), W_sn.data(), int(raw.size())), SN_SUCCESS)
      << sn_last_error_message();
  std::unique_ptr<sn_group_t, void (*)(sn_group_t *)> owner(g, sn_group_destroy);
  ASSERT_EQ(sn_group_forward(g, 1, nullptr), SN_SUCCESS) << sn_last_error_message();  // the warm-ups
  ASSERT_EQ(sn_group_set_gradients(g, G.data(), dW.data(), nullptr), SN_SUCCESS) << sn_last_error_message();
  CUDA_OK(cudaDeviceSynchronize());
  const auto check_group = [&](const char *what, sn_path_t sn_paths_t::*kind,
                               const std::function<sn_status_t(cudaStream_t)> &call) {
    SCOPED_TRACE(what);
    expect_recorded_path(g, sn_group_get_paths, kind, captured_kernels(call), false);
  };
  check_group("group train", &sn_paths_t::train, [&](cudaStream_t s) { return sn_group_forward(g, 1, (sn_stream_t)s); });
  check_group("group eval", &sn_paths_t::eval, [&](cudaStream_t s) { return sn_group_forward(g, 0, (sn_stream_t)s); });
  check_group("group backward", &sn_paths_t::backward, [&](cudaStream_t s) { return sn_group_backward(g, 0, (sn_stream_t)s); });
}
#endif  // SPECNORM_EMULATED

#ifndef SPECNORM_EMULATED  // the kernels' machine code, as a driver reads it
// The fake CUDA runtime of the CPU tests reads each kernel's resources from its cubin
// (tests/fake_cuda/fatbin.h); here the driver reports them for the kernels of probe_kernels.cu,
// whose resources are known by construction: the static shared memory (an sm_90 cubin's section
// holds the driver's 1 KB as well, which the fake takes off) and the launch bounds.
// (Not under compute-sanitizer, whose instrumented code may take other registers: gpu_check.sh
// sets SN_UNDER_SANITIZER there.)
static bool under_sanitizer() { return std::getenv("SN_UNDER_SANITIZER") != nullptr; }
TEST(Gpu, KernelResourcesAreWhatTheFakeRuntimeReads) {
  REQUIRE_GPU();
  if (under_sanitizer()) GTEST_SKIP() << "under compute-sanitizer: kernels' resources may differ";
  cudaFuncAttributes a{};
  ASSERT_EQ(cudaFuncGetAttributes(&a, probe_bounded()), cudaSuccess);
  // What the driver says, whatever the checks below find (the fake's kReservedSmem rests on it:
  // static 4000 bytes, and 48 KB less that as the default dynamic limit, or 5024 with the 1 KB of
  // an sm_90 cubin's section).
  int cc_major = 0, cc_minor = 0;
  (void)cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, 0);
  (void)cudaDeviceGetAttribute(&cc_minor, cudaDevAttrComputeCapabilityMinor, 0);
  std::printf("[ probe    ] sm_%d%d probe_bounded: static smem %zu, max dynamic smem %d, registers %d, "
              "max threads %d\n", cc_major, cc_minor, a.sharedSizeBytes, a.maxDynamicSharedSizeBytes,
              a.numRegs, a.maxThreadsPerBlock);
  EXPECT_EQ(a.sharedSizeBytes, kProbeStaticFloats * sizeof(float));
  EXPECT_EQ(a.maxThreadsPerBlock, kProbeBound);
  EXPECT_EQ(a.maxDynamicSharedSizeBytes, (int)(48 * 1024 - kProbeStaticFloats * sizeof(float)));
  ASSERT_EQ(cudaFuncGetAttributes(&a, probe_plain()), cudaSuccess);
  EXPECT_EQ(a.sharedSizeBytes, 0u);
  EXPECT_EQ(a.maxThreadsPerBlock, 1024);
  ASSERT_EQ(cudaFuncGetAttributes(&a, probe_registers()), cudaSuccess);
  EXPECT_GT(a.numRegs, 64);
  EXPECT_LT(a.maxThreadsPerBlock, 1024);
  ASSERT_EQ(cudaFuncGetAttributes(&a, probe_local()), cudaSuccess);
  EXPECT_EQ(a.localSizeBytes, kProbeLocalFloats * sizeof(float));
}

// The same for every kernel of this executable (the library's and the probes'): each fat binary
// of its .nv_fatbin section loaded as a library, and each kernel of the device's architecture
// asked for its registers, static shared memory and largest block.
TEST(Gpu, EveryKernelsResourcesAreWhatTheFakeRuntimeReads) {
  REQUIRE_GPU();
  if (under_sanitizer()) GTEST_SKIP() << "under compute-sanitizer: kernels' resources may differ";
  int major = 0, minor = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0), cudaSuccess);
  fake_cuda::FatbinImages fatbins;
  std::string why;
  ASSERT_TRUE(fake_cuda::executable_fatbins("/proc/self/exe", &fatbins, &why)) << why;
  int checked = 0;
  for (size_t i = 0; i < fatbins.images.size(); ++i) {
    fake_cuda::FatbinCode code;
    ASSERT_GT(fake_cuda::read_fatbin_image(fatbins.image(i), fatbins.images[i].second, &code), 0u);
    EXPECT_TRUE(code.problems.empty()) << code.problems.front();
    const std::map<std::string, fake_cuda::KernelCode> *kernels = fake_cuda::cubin_for(code, major, minor);
    if (!kernels) continue;  // the build has no machine code for this device (PTX only)
    cudaLibrary_t lib = nullptr;
    const cudaError_t loaded = cudaLibraryLoadData(&lib, fatbins.image(i), nullptr, nullptr, 0, nullptr, nullptr, 0);
    EXPECT_EQ(loaded, cudaSuccess) << "fat binary " << i << ": " << cudaGetErrorString(loaded);
    (void)cudaGetLastError();
    if (loaded != cudaSuccess) continue;
    for (const auto &k : *kernels) {
      SCOPED_TRACE(k.first);
      cudaKernel_t kernel = nullptr;
      cudaFuncAttributes a{};
      const cudaError_t got = cudaLibraryGetKernel(&kernel, lib, k.first.c_str());
      EXPECT_EQ(got, cudaSuccess);
      const cudaError_t asked = got == cudaSuccess ? cudaFuncGetAttributes(&a, reinterpret_cast<const void *>(kernel)) : got;
      EXPECT_EQ(asked, cudaSuccess);
      if (asked != cudaSuccess) {
        (void)cudaGetLastError();
        continue;
      }
      EXPECT_EQ(a.numRegs, k.second.regs);
      EXPECT_EQ(a.sharedSizeBytes, k.second.static_smem);
      EXPECT_EQ(a.localSizeBytes, (size_t)k.second.frame);
      EXPECT_EQ(a.maxThreadsPerBlock, fake_cuda::max_threads(k.second));
      ++checked;
    }
    EXPECT_EQ(cudaLibraryUnload(lib), cudaSuccess);
  }
  EXPECT_GT(checked, 100) << "kernels checked";
}
#endif  // SPECNORM_EMULATED

// A W that is not 16-byte aligned runs the scalar paths (and the two-pass kernels instead of the
// one-pass ones): still the same results.
TEST(Gpu, UnalignedWeight) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + "op_onchip=0").c_str());  // the usual kernels
  compare_backends(Case{{513, 1024}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS}, rng, 3, 15, 1);
  compare_backends(Case{{64, 40}, 0, SN_ORDER_V_FIRST, 1}, rng, 3, 15, 3);
}

// compare_backends' probe where the iteration is ill-conditioned: W's top right singular vector
// (top_singular_vectors) makes up only c0 of the start v (u = N(W v)), so that its share is still
// small after the warm-up's two iterations and grows tenfold a step. There float and double part by
// more than the usual 1e-5 of σ; the probe must see the transient (its tolerance widens for at
// least one c0) and the GPU must stay within it.
TEST(Gpu, NearlyOrthogonalStartsStayWithinTheProbe) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const int64_t h = 200, w = 2048;
  double widest = 0;
  for (double c0 : {1e-5, 1e-6}) {
    SCOPED_TRACE("share of the top singular vector " + std::to_string(c0));
    const Case c{{h, w}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS};
    const StartFn start = [&](const std::vector<float> &W, State &s) {
      State top;
      ASSERT_NO_FATAL_FAILURE(top_singular_vectors(make_desc(c.shape, SN_BACKEND_CPU, c.dim), W, &top));
      const std::vector<double> x(top.v.begin(), top.v.end());
      auto normalize = [](std::vector<double> &v) {
        double q = 0;
        for (double e : v) q += e * e;
        for (double &e : v) e /= std::sqrt(q);
      };
      std::vector<double> r(static_cast<size_t>(w)), t(static_cast<size_t>(h));
      double rx = 0;
      for (int64_t j = 0; j < w; ++j) rx += (r[static_cast<size_t>(j)] = rng.normal()) * x[static_cast<size_t>(j)];
      for (int64_t j = 0; j < w; ++j) r[static_cast<size_t>(j)] -= rx * x[static_cast<size_t>(j)];
      normalize(r);
      for (int64_t j = 0; j < w; ++j)
        r[static_cast<size_t>(j)] = c0 * x[static_cast<size_t>(j)] + std::sqrt(1 - c0 * c0) * r[static_cast<size_t>(j)];
      for (int64_t i = 0; i < h; ++i) {  // t = W r
        double a = 0;
        for (int64_t j = 0; j < w; ++j) a += double(W[static_cast<size_t>(i * w + j)]) * r[static_cast<size_t>(j)];
        t[static_cast<size_t>(i)] = a;
      }
      normalize(t);
      for (int64_t j = 0; j < w; ++j) s.v[static_cast<size_t>(j)] = float(r[static_cast<size_t>(j)]);
      for (int64_t i = 0; i < h; ++i) s.u[static_cast<size_t>(i)] = float(t[static_cast<size_t>(i)]);
    };
    compare_backends(c, rng, 5, 2, 0, start, &widest);
  }
  EXPECT_GT(widest, 1e-5) << "no start was ill-conditioned enough to widen the probe's tolerance";
}

// A kernel's shared-memory limit is process-wide: a layer created later with a smaller need (the
// same one-pass instance, 512 threads × 8 packs, for w = 16384 and w = 9000) must not break an
// earlier layer's launches.
TEST(Gpu, LaterSmallerLayerKeepsEarlierLaunchesWorking) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  sn_layer_desc_t big = make_desc({64, 16384}, SN_BACKEND_CUDA), small = make_desc({64, 9000}, SN_BACKEND_CUDA);
  big.algo = small.algo = SN_ALGO_ONE_PASS;
  big.order = small.order = SN_ORDER_U_FIRST;
  LayerPtr a(big);
  ASSERT_TRUE(a.p);
  LayerPtr b(small);
  ASSERT_TRUE(b.p);
  DevBuf W(64 * 16384), out(64 * 16384);
  W.upload(rng.normals(64 * 16384));
  ASSERT_EQ(sn_forward(a, W.p, out.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_forward(b, W.p, out.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_forward(a, W.p, out.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  CUDA_OK(cudaDeviceSynchronize());
}

TEST(Gpu, OneDimensionalWeight) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  for (int64_t n : {1, 37, 100000}) {
    Case c{{n}, 0, SN_ORDER_U_FIRST, 1};
    compare_backends(c, rng, 2);
  }
}

TEST(Gpu, RunsAreBitwiseIdentical) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  for (const Case &c : {Case{{1000, 4099}, 0, SN_ORDER_U_FIRST, 1}, Case{{3, 1000, 5}, 1, SN_ORDER_V_FIRST, 2},
                        Case{{513, 300}, 1, SN_ORDER_U_FIRST, 1}}) {
    SCOPED_TRACE(case_name(c));
    sn_layer_desc_t d = make_desc(c.shape, SN_BACKEND_CUDA, c.dim);
    d.order = c.order;
    d.n_power_iterations = c.iters;
    const int64_t n = numel_of(c.shape);
    std::vector<float> W = rng.normals(n);
    DevBuf dW(static_cast<size_t>(n)), o1(static_cast<size_t>(n)), o2(static_cast<size_t>(n));
    dW.upload(W);
    LayerPtr a(d), b(d);
    for (int step = 0; step < 3; ++step) {
      ASSERT_EQ(sn_forward(a, dW.p, o1.p, step < 2, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_forward(b, dW.p, o2.p, step < 2, nullptr), SN_SUCCESS);
      EXPECT_TRUE(same_state(get_state(a), get_state(b)));
      EXPECT_TRUE(bitwise_equal(o1.download(), o2.download()));
    }
  }
}

// The variants that SPECNORM_TUNE selects (cuda/forward.cu; sn_bench times them): thread-block
// clusters adding the one-pass partial s on chip and programmatic dependent launch (sm_90;
// elsewhere plain launches), fewer one-pass blocks per multiprocessor, reduce blocks of 4, 8 or
// 16 float4 columns (op_reduce_cols), the eval kernel on the training grid (op_eval_own=0) and the
// kernels rather than the cooperative launch (op_coop=0). Each must match the CPU backend (its
// last step is an eval step) and repeat bitwise.
TEST(Gpu, OnePassVariantsMatchTheCpuBackend) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  ScopedEnv env("SPECNORM_TUNE", nullptr);
  for (const char *tune : {"op_cluster=2", "op_cluster=4", "op_cluster=8", "op_bps=1",
                           "op_bps=1,op_cluster=4", "op_bps=2,op_cluster=2", "pdl=1",
                           "pdl=1,op_cluster=4", "op_reduce_cols=4", "op_reduce_cols=8",
                           "op_reduce_cols=16,op_cluster=4", "op_eval_own=0", "op_eval_own=0,op_rows=2",
                           "op_coop=0"}) {
    SCOPED_TRACE(std::string("SPECNORM_TUNE=") + tune);
    // op_onchip=0: the 9 × 64 case's training forwards would be on chip by default (sm_90).
    env.set((std::string("op_onchip=0,") + tune).c_str());
    for (const Case &c : {Case{{2000, 1152}, 0, SN_ORDER_U_FIRST, 2, SN_ALGO_ONE_PASS},
                          Case{{777, 8192}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS},
                          Case{{300, 16384}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS},
                          Case{{9, 64}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS}}) {
      compare_backends(c, rng, 3, 2);
      sn_layer_desc_t d = make_desc(c.shape, SN_BACKEND_CUDA, c.dim);
      d.algo = c.algo;
      const int64_t n = numel_of(c.shape);
      DevBuf dW(static_cast<size_t>(n)), o1(static_cast<size_t>(n)), o2(static_cast<size_t>(n));
      dW.upload(rng.normals(n));
      LayerPtr a(d), b(d);
      ASSERT_TRUE(a.p && b.p);
      for (int step = 0; step < 2; ++step) {
        ASSERT_EQ(sn_forward(a, dW.p, o1.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
        ASSERT_EQ(sn_forward(b, dW.p, o2.p, 1, nullptr), SN_SUCCESS);
        EXPECT_TRUE(same_state(get_state(a), get_state(b))) << case_name(c);
        EXPECT_TRUE(bitwise_equal(o1.download(), o2.download())) << case_name(c);
      }
    }
  }
}

// The one-pass training rows kernel (one row ahead in registers) in every element type and pack
// width, on grids of 64 and 7 blocks (blocks with one row and with two; op_grid pins the grid),
// with and without clusters: two layers with the same plan give the same states and W_sn, bit for
// bit, training and eval, and the rows kernel is the one launched (captured kernel names). The
// knobs go after whatever SPECNORM_TUNE already says.
struct RowsCase {
  std::vector<int64_t> shape;
  sn_dtype_t dt;
};

// The training rows kernel (the ping-pong loop's own kernel where the instance has it).
static const char kRegisterRows[] = "one_pass_rows_kernel<[^>]*, false>|one_pass_rows_pp_kernel<";

// For each case and grid (op_grid, op_cluster; the rows and reduce kernels: op_onchip=0,
// op_coop=0, unless the knobs say otherwise), one-pass layers a
// and b created under SPECNORM_TUNE's knobs tune_a and tune_b; check(a, b, c, W) reads their plans
// and captured kernels once both warmed up; then four forwards (one eval) give both the same
// state and output, bit for bit.
// One forward of a on Wa into oa and of b on Wb into ob (W_sn may be W: in place), then the same
// state and output bytes, bit for bit. Callers wrap it in ASSERT_NO_FATAL_FAILURE.
static void expect_forward_pair_bitwise(sn_layer_t *a, const void *Wa, const Tensor &oa, sn_layer_t *b,
                                        const void *Wb, const Tensor &ob, int training) {
  ASSERT_EQ(sn_forward(a, Wa, oa.dev, training, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_forward(b, Wb, ob.dev, training, nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_TRUE(same_state(get_state(a), get_state(b)));
  EXPECT_TRUE(oa.download_bytes() == ob.download_bytes());
}

using RowsCheck = std::function<void(sn_layer_t *, sn_layer_t *, const RowsCase &, const Tensor &)>;
static const std::vector<const char *> kRowsGrids{"op_grid=64,op_cluster=1", "op_grid=7,op_cluster=1",
                                                  "op_grid=64,op_cluster=4"};
static void expect_rows_pairs_bitwise(const std::vector<RowsCase> &cases, const std::string &tune_a,
                                      const std::string &tune_b, const RowsCheck &check,
                                      const std::vector<const char *> &grids = kRowsGrids) {
  SN_SEEDED_RNG();
  const std::string base = tune_prefix() + "op_onchip=0,op_onchip_grid=0,op_coop=0,";
  ScopedEnv env("SPECNORM_TUNE", nullptr);
  for (const RowsCase &c : cases) {
    for (const char *grid : grids) {
      SCOPED_TRACE(shape_str(c.shape) + " dtype " + std::to_string(int(c.dt)) + " " + grid);
      sn_layer_desc_t d = make_desc(c.shape, SN_BACKEND_CUDA);
      d.algo = SN_ALGO_ONE_PASS;
      d.dtype = c.dt;
      env.set((base + tune_a + grid).c_str());
      LayerPtr a(d);
      env.set((base + tune_b + grid).c_str());
      LayerPtr b(d);
      ASSERT_TRUE(a.p && b.p) << sn_last_error_message();
      ASSERT_EQ(a.p->plan.op_blocks, b.p->plan.op_blocks);
      ASSERT_EQ(a.p->plan.op_eval_blocks, b.p->plan.op_eval_blocks);
      ASSERT_EQ(a.p->plan.op_cluster, b.p->plan.op_cluster);
      const int64_t n = numel_of(c.shape);
      Tensor W(c.dt, n), o1(c.dt, n), o2(c.dt, n);
      W.set(rng.normals(n));
      // A capture needs the warm-up done.
      ASSERT_EQ(sn_layer_warmup(a, W.dev, nullptr), SN_SUCCESS) << sn_last_error_message();
      ASSERT_EQ(sn_layer_warmup(b, W.dev, nullptr), SN_SUCCESS) << sn_last_error_message();
      EXPECT_TRUE(same_state(get_state(a), get_state(b)));
      check(a, b, c, W);
      for (int step = 0; step < 4; ++step) {
        SCOPED_TRACE("step " + std::to_string(step));
        ASSERT_NO_FATAL_FAILURE(expect_forward_pair_bitwise(a, W.dev, o1, b, W.dev, o2, step != 2));
      }
    }
  }
}

// Two layers of the same knobs run the register rows kernel and repeat bitwise.
static void expect_rows_runs_bitwise(const std::vector<RowsCase> &cases) {
  expect_rows_pairs_bitwise(cases, "", "", [](sn_layer_t *a, sn_layer_t *, const RowsCase &, const Tensor &W) {
    Tensor o(W.dt, W.n);
    const std::vector<std::string> ka =
        captured_kernels([&](cudaStream_t s) { return sn_forward(a, W.dev, o.dev, 1, (sn_stream_t)s); });
    EXPECT_TRUE(any_matches(ka, kRegisterRows)) << ::testing::PrintToString(ka);
  });
}

// Rows up to 8 KB, small enough for the sanitizers (gpu_check.sh): 16- and 8-byte packs, 1 and 2
// packs per thread, and 9 rows (on 7 blocks: blocks with one row and with two).
TEST(Gpu, OnePassRowsRunsAreBitwiseIdentical) {
  REQUIRE_GPU();
  expect_rows_runs_bitwise({{{700, 1152}, SN_DTYPE_FLOAT32},
                            {{300, 4096}, SN_DTYPE_BFLOAT16},
                            {{513, 1028}, SN_DTYPE_FLOAT16},
                            {{9, 64}, SN_DTYPE_FLOAT32}});
}

// Rows of 32 KB, 4 packs per thread.
TEST(Gpu, OnePassWideRowsRunsAreBitwiseIdentical) {
  REQUIRE_GPU();
  expect_rows_runs_bitwise({{{777, 8192}, SN_DTYPE_FLOAT32}, {{300, 16384}, SN_DTYPE_BFLOAT16}});
}

// The one-pass rows two a step (SPECNORM_TUNE=op_rows=2, cuda/one_pass.cu): on the same grid, bit
// for bit what one row a step computes (training and eval, with and without clusters), in fp32,
// bf16 and fp16, with blocks whose last step has one row; rows of more than 16 elements per
// thread keep one a step. Read from graph captures; against the CPU backend too.
TEST(Gpu, OnePassRowPairsAreBitwiseSingleRows) {
  REQUIRE_GPU();
  expect_rows_pairs_bitwise(
      {{{700, 1152}, SN_DTYPE_FLOAT32},
       {{300, 4096}, SN_DTYPE_BFLOAT16},    // 256 threads × 2 packs (4096² bf16's instance)
       {{513, 1024}, SN_DTYPE_FLOAT16},
       {{9, 64}, SN_DTYPE_FLOAT32},
       {{200, 4100}, SN_DTYPE_BFLOAT16},    // 8-byte packs
       {{300, 4096}, SN_DTYPE_FLOAT32},     // 256 × 4 (4096² fp32's instance)
       {{300, 16384}, SN_DTYPE_BFLOAT16},   // 512 × 4 packs of 8: one a step
       {{200, 12288}, SN_DTYPE_FLOAT32}},   // 512 × 8: one a step
      "op_rows=1,", "op_rows=2,", [&](sn_layer_t *a, sn_layer_t *b, const RowsCase &c, const Tensor &W) {
        const int64_t w = c.shape[1];
        const int want = sn_cuda_one_pass_rows_per_step(c.dt, w, 2);
        EXPECT_EQ(a->plan.op_rows, 1);
        EXPECT_EQ(b->plan.op_rows, want);
        EXPECT_EQ(want, w >= 12288 ? 1 : 2);  // of the cases above, the two widest keep one a step
        Tensor o(W.dt, W.n);
        for (int training : {1, 0}) {
          const std::vector<std::string> kb = captured_kernels(
              [&](cudaStream_t s) { return sn_forward(b, W.dev, o.dev, training, (sn_stream_t)s); });
          // One a step where the instance has the ping-pong loop (by default) is that loop's kernel.
          EXPECT_TRUE(any_matches(kb, std::string("one_pass_rows_kernel<[0-9]+, [0-9]+, ") + std::to_string(want) + ",") ||
                      (want == 1 && b->plan.op_pp && training && any_matches(kb, "one_pass_rows_pp_kernel<")))
              << ::testing::PrintToString(kb);
        }
      });
  SN_SEEDED_RNG();
  ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + "op_onchip=0,op_rows=2").c_str());
  compare_backends(Case{{2000, 1152}, 0, SN_ORDER_U_FIRST, 2, SN_ALGO_ONE_PASS}, rng, 3, 2);
  compare_backends(Case{{600, 4096}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS}, rng, 3, 2);
}

// The ring tests' conditions: a suite-wide op_rows=2 leaves no ring instance (two rows a step);
// which instances take a ring follows ptxas's registers, known for sm_90 (device_major).
static bool suite_takes_two_rows_a_step() { return tune_prefix().find("op_rows=2") != std::string::npos; }

// The training rows' ping-pong loop, the ring of two (cuda/one_pass.cuh; SPECNORM_TUNE=op_pp=2 asks
// for it in every instance of one row a step, the default only in the 2-byte rows of 512 threads ×
// 4 packs of 8 and of 256 × 2 packs of 8 (4096²'s), op_pp=0 in none): on the same grid, bit for bit
// one row a step (training and eval, with and without clusters; eval never takes it) in fp32, bf16
// and fp16, with blocks of an odd number of rows (the loop's early exit) and rows of partial packs,
// in the instances of 4096² fp32 and bf16 (held to 64 registers), 4096 × 16384 fp32 and bf16. An
// instance takes it only where its blocks per multiprocessor equal the plain kernel's (by
// occupancy, on this device): the default class always does (one block of 512 either way), and on
// sm_90 the 4096² instances (64 registers each, ptxas). Its block sums take one barrier
// (block_sums_alternating) where the plain loop's take three (block_sums): this is also their
// bitwise test. Read from graph captures.
TEST(Gpu, OnePassPingPongRowsAreBitwiseOneRowAStep) {
  REQUIRE_GPU();
  if (suite_takes_two_rows_a_step()) GTEST_SKIP() << "SPECNORM_TUNE has op_rows=2: two rows a step, no ring instance";
  const int major = device_major();
  auto default_class = [](const RowsCase &c) { return c.dt != SN_DTYPE_FLOAT32 && c.shape[1] > 8192 && c.shape[1] % 8 == 0; };
  auto must_take = [&](const RowsCase &c) { return default_class(c) || (major == 9 && c.shape[1] == 4096); };
  expect_rows_pairs_bitwise(
      {{{300, 16384}, SN_DTYPE_BFLOAT16},   // 512 threads × 4 packs of 8 (4096 × 16384 bf16's)
       {{301, 16384}, SN_DTYPE_FLOAT16},
       {{9, 16384}, SN_DTYPE_BFLOAT16},     // on 7 blocks: blocks of 1 and 2 rows
       {{200, 12296}, SN_DTYPE_BFLOAT16},   // 1537 packs: threads with 3 of their 4
       {{300, 4096}, SN_DTYPE_BFLOAT16},    // 256 × 2 packs of 8 (4096² bf16's)
       {{300, 4096}, SN_DTYPE_FLOAT32},     // 256 × 4 (4096² fp32's)
       {{100, 16384}, SN_DTYPE_FLOAT32},    // 512 × 8 (4096 × 16384 fp32's)
       {{513, 1028}, SN_DTYPE_FLOAT16},     // 8-byte packs
       {{9, 64}, SN_DTYPE_FLOAT32}},
      "op_pp=0,", "op_pp=2,", [&](sn_layer_t *a, sn_layer_t *b, const RowsCase &c, const Tensor &W) {
        EXPECT_EQ(a->plan.op_pp, 0);
        EXPECT_TRUE(b->plan.op_pp == 0 || b->plan.op_pp == 2) << b->plan.op_pp;
        if (must_take(c)) {
          EXPECT_EQ(b->plan.op_pp, 2);
        }
        Tensor o(W.dt, W.n);
        const std::vector<std::string> kb = captured_kernels(
            [&](cudaStream_t s) { return sn_forward(b, W.dev, o.dev, 1, (sn_stream_t)s); });
        EXPECT_EQ(any_matches(kb, "one_pass_rows_pp_kernel<"), b->plan.op_pp != 0) << ::testing::PrintToString(kb);
      });
  // Unset, the default classes only (unless the suite runs under an op_pp of its own): the 512 × 4
  // rows always, the 256 × 2 rows of 2056-4096 columns where the ring keeps the plain kernel's
  // blocks (sm_90: 64 registers each; sm_80: 63 against 47, not taken).
  if (tune_prefix().find("op_pp=") != std::string::npos) return;
  ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + "op_onchip=0,op_coop=0").c_str());
  for (const RowsCase &c : std::vector<RowsCase>{{{64, 16384}, SN_DTYPE_BFLOAT16}, {{64, 16384}, SN_DTYPE_FLOAT32},
                                                 {{64, 4096}, SN_DTYPE_BFLOAT16}, {{64, 3000}, SN_DTYPE_FLOAT16},
                                                 {{64, 4096}, SN_DTYPE_FLOAT32}, {{64, 2048}, SN_DTYPE_BFLOAT16}}) {
    SCOPED_TRACE(shape_str(c.shape) + " dtype " + std::to_string(int(c.dt)));
    sn_layer_desc_t d = make_desc(c.shape, SN_BACKEND_CUDA);
    d.algo = SN_ALGO_ONE_PASS;
    d.dtype = c.dt;
    LayerPtr l(d);
    ASSERT_TRUE(l.p) << sn_last_error_message();
    const bool small_class = c.dt != SN_DTYPE_FLOAT32 && c.shape[1] > 2048 && c.shape[1] <= 4096 && c.shape[1] % 8 == 0;
    if (default_class(c) || (small_class && major == 9)) {
      EXPECT_EQ(l.p->plan.op_pp, 2);
    } else if (small_class) {
      EXPECT_TRUE(l.p->plan.op_pp == 0 || l.p->plan.op_pp == 2) << l.p->plan.op_pp;
    } else {
      EXPECT_EQ(l.p->plan.op_pp, 0);
    }
  }
}

// The ring of three (SPECNORM_TUNE=op_pp=3: the bf16 instances of one row a step, elsewhere as the
// default): bit for bit one row a step on the same grid, with blocks of 1 to 5 rows (each of the
// ring's three steps is a block's last: 9 and 23 rows on 7 blocks, 300 on 64) and partial packs.
// The bf16 rows of 512 threads × 4 packs of 8 take it (one block either way: 128 registers
// against 120, ptxas sm_90), and on sm_90 4096²'s 256 × 2 (held to 64 registers); fp16 and fp32
// keep the default (the ring of two in fp16's default class). Read from graph captures.
TEST(Gpu, OnePassRingOfThreeRowsIsBitwiseOneRowAStep) {
  REQUIRE_GPU();
  if (suite_takes_two_rows_a_step()) GTEST_SKIP() << "SPECNORM_TUNE has op_rows=2: two rows a step, no ring instance";
  const int major = device_major();
  expect_rows_pairs_bitwise(
      {{{300, 16384}, SN_DTYPE_BFLOAT16},   // 512 threads × 4 packs of 8 (4096 × 16384 bf16's)
       {{9, 16384}, SN_DTYPE_BFLOAT16},     // on 7 blocks: blocks of 1 and 2 rows
       {{23, 16384}, SN_DTYPE_BFLOAT16},    // on 7 blocks: blocks of 3 and 4 rows
       {{200, 12296}, SN_DTYPE_BFLOAT16},   // 1537 packs: threads with 3 of their 4
       {{300, 4096}, SN_DTYPE_BFLOAT16},    // 256 × 2 packs of 8 (4096² bf16's)
       {{301, 16384}, SN_DTYPE_FLOAT16},    // the default's ring of two
       {{100, 16384}, SN_DTYPE_FLOAT32}},   // none
      "op_pp=0,", "op_pp=3,", [&](sn_layer_t *a, sn_layer_t *b, const RowsCase &c, const Tensor &W) {
        EXPECT_EQ(a->plan.op_pp, 0);
        const bool bf16_class = c.dt == SN_DTYPE_BFLOAT16 && (c.shape[1] > 8192 || major == 9);
        if (bf16_class) {
          EXPECT_EQ(b->plan.op_pp, 3);
        } else if (c.dt == SN_DTYPE_BFLOAT16) {
          EXPECT_TRUE(b->plan.op_pp == 0 || b->plan.op_pp == 3) << b->plan.op_pp;
        } else if (c.dt == SN_DTYPE_FLOAT16) {
          EXPECT_EQ(b->plan.op_pp, 2);
        } else if (c.dt == SN_DTYPE_FLOAT32) {
          EXPECT_EQ(b->plan.op_pp, 0);
        }
        Tensor o(W.dt, W.n);
        const std::vector<std::string> kb = captured_kernels(
            [&](cudaStream_t s) { return sn_forward(b, W.dev, o.dev, 1, (sn_stream_t)s); });
        if (b->plan.op_pp == 0) {
          EXPECT_FALSE(any_matches(kb, "one_pass_rows_pp_kernel<")) << ::testing::PrintToString(kb);
        } else {
          EXPECT_TRUE(any_matches(kb, "one_pass_rows_pp_kernel<[^>]*, " + std::to_string(b->plan.op_pp) + ">"))
              << ::testing::PrintToString(kb);
        }
      });
}

// The one-pass eval kernel's grid: by default (and with SPECNORM_TUNE=op_eval_own=1) its own
// instance's occupancy without clusters, which is at least the training grid's, and more
// where the eval instance takes fewer registers (ptxas sm_90: the bf16 rows of 4096 and 16384
// columns, 32 against 64 and 56 against 120); with op_eval_own=0 the training grid; op_grid caps
// both. The eval σ against the CPU.
TEST(Gpu, OnePassEvalGridOfItsOwn) {
  REQUIRE_GPU();
#ifdef SPECNORM_EMULATED
  GTEST_SKIP() << "emulated device: its occupancy does not count registers, which this test's grids follow";
#endif
  const std::string prefix = tune_prefix() + "op_onchip=0,";
  ScopedEnv env("SPECNORM_TUNE", nullptr);
  // 4096 rows: more than any of these grids (at most 8 blocks per SM), so that none is cut to h.
  for (const RowsCase &c : std::vector<RowsCase>{{{4096, 4096}, SN_DTYPE_FLOAT32}, {{4096, 4096}, SN_DTYPE_BFLOAT16},
                                                 {{4096, 16384}, SN_DTYPE_FLOAT32}, {{4096, 16384}, SN_DTYPE_BFLOAT16}}) {
    SCOPED_TRACE(shape_str(c.shape) + " dtype " + std::to_string(int(c.dt)));
    sn_layer_desc_t d = make_desc(c.shape, SN_BACKEND_CUDA);
    d.algo = SN_ALGO_ONE_PASS;
    d.dtype = c.dt;
    env.set((prefix + "op_eval_own=0").c_str());
    LayerPtr shared(d);
    env.set((prefix + "op_eval_own=1").c_str());
    LayerPtr own(d);
    env.set((prefix + "op_eval_own=1,op_grid=37").c_str());
    LayerPtr capped(d);
    env.set(prefix.c_str());
    LayerPtr by_default(d);
    ASSERT_TRUE(shared.p && own.p && capped.p && by_default.p) << sn_last_error_message();
    EXPECT_EQ(by_default.p->plan.op_eval_blocks, own.p->plan.op_eval_blocks);
    EXPECT_EQ(shared.p->plan.op_eval_blocks, shared.p->plan.op_blocks);
    EXPECT_EQ(own.p->plan.op_blocks, shared.p->plan.op_blocks);
    EXPECT_GE(own.p->plan.op_eval_blocks, own.p->plan.op_blocks);
    EXPECT_LT(own.p->plan.op_eval_blocks, 4096);
    EXPECT_EQ(own.p->plan.op_eval_blocks % own.p->plan.sm_count, 0) << own.p->plan.op_eval_blocks;
    if (c.dt == SN_DTYPE_BFLOAT16) {
      EXPECT_GT(own.p->plan.op_eval_blocks, own.p->plan.op_blocks) << "the eval instance should fit more blocks";
    }
    EXPECT_EQ(capped.p->plan.op_eval_blocks, 37);
  }
  SN_SEEDED_RNG();
  env.set((prefix + "op_eval_own=0").c_str());
  compare_backends(Case{{600, 4096}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS}, rng, 4, 2);
}

// Two layers' σ, scale and health words, bit for bit (u and v: same_state).
static void expect_same_scale_and_health(sn_layer_t *a, sn_layer_t *b) {
  float sa = 0.f, sb = 0.f;
  uint32_t ha = 0, hb = 0;
  ASSERT_EQ(sn_layer_get_scale(a, &sa, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_layer_get_scale(b, &sb, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_layer_get_health(a, &ha, 0, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_layer_get_health(b, &hb, 0, nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_EQ(std::memcmp(&sa, &sb, 4), 0) << sa << " " << sb;
  EXPECT_EQ(ha, hb);
}

// Scale-only forwards of a and b leave both in the same state, bit for bit: training, training,
// eval; two training forwards of an all-zero W (a σ that is not usable: no commit of u and v, the
// restart asked, then a restart from ones that fails again); two of W again (the restart from
// ones, recovered; then a usual one). W holds W again when this returns.
static void expect_scale_only_bitwise(sn_layer_t *a, sn_layer_t *b, const Tensor &W) {
  struct Restore {  // W's bytes back, whatever an ASSERT below does
    const Tensor &W;
    ~Restore() { EXPECT_EQ(cudaMemcpy(W.dev, W.host.data(), W.host.size(), cudaMemcpyHostToDevice), cudaSuccess); }
  } restore{W};
  for (int step = 0; step < 7; ++step) {
    SCOPED_TRACE("scale-only step " + std::to_string(step));
    if (step == 3) {
      CUDA_OK(cudaMemset(W.dev, 0, W.host.size()));
    } else if (step == 5) {
      CUDA_OK(cudaMemcpy(W.dev, W.host.data(), W.host.size(), cudaMemcpyHostToDevice));
    }
    const int training = step != 2;
    ASSERT_EQ(sn_forward_scale_only(a, W.dev, training, nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_forward_scale_only(b, W.dev, training, nullptr), SN_SUCCESS) << sn_last_error_message();
    EXPECT_TRUE(same_state(get_state(a), get_state(b)));
    expect_same_scale_and_health(a, b);
  }
}

// The kernels of a training forward with W_sn and of a scale-only forward of l (warmed up), read
// from graph captures: the scale-only forward is the cooperative one-pass launch alone; the
// training forward that launch and the commit kernel when in_training, else the rows, reduce and
// commit kernels. Callers wrap it in ASSERT_NO_FATAL_FAILURE.
static void expect_coop_kernels(sn_layer_t *l, const Tensor &W, bool in_training) {
  Tensor o(W.dt, W.n);
  const std::vector<std::string> kt =
      captured_kernels([&](cudaStream_t s) { return sn_forward(l, W.dev, o.dev, 1, (sn_stream_t)s); });
  EXPECT_EQ(any_matches(kt, "one_pass_coop_kernel<"), in_training) << ::testing::PrintToString(kt);
  EXPECT_EQ(any_matches(kt, "one_pass_(rows|reduce)_kernel<"), !in_training) << ::testing::PrintToString(kt);
  EXPECT_TRUE(any_matches(kt, "commit_divide_kernel<")) << ::testing::PrintToString(kt);
  const std::vector<std::string> ks =
      captured_kernels([&](cudaStream_t s) { return sn_forward_scale_only(l, W.dev, 1, (sn_stream_t)s); });
  ASSERT_EQ(ks.size(), 1u) << ::testing::PrintToString(ks);
  EXPECT_TRUE(any_matches(ks, "one_pass_coop_kernel<")) << ks[0];
}

// The one-pass iteration as one cooperative launch (SPECNORM_TUNE=op_coop=1, cuda/one_pass_coop.cu)
// on each case and grid of expect_rows_pairs_bitwise: bit for bit what the rows and reduce
// kernels (and the commit kernel, for scale only) compute, training, eval and scale only, a σ that
// is not usable and the restarts after it. The training forward is that launch and the commit
// kernel; the scale-only forward that launch alone (graph captures). knobs: SPECNORM_TUNE keys for
// both layers; coop: the value of op_coop (1, or 3: also a programmatic dependent launch).
static void expect_coop_bitwise(const std::vector<RowsCase> &cases, const std::string &knobs = "", int coop = 1,
                                const std::vector<const char *> &grids = kRowsGrids) {
  expect_rows_pairs_bitwise(
      cases, knobs + "op_coop=0,", knobs + "op_coop=" + std::to_string(coop) + ",",
      [&](sn_layer_t *a, sn_layer_t *b, const RowsCase &, const Tensor &W) {
        EXPECT_EQ(a->plan.op_coop, 0);
        const int want = coop == 3 && !b->plan.pdl ? 1 : coop;  // 3 needs pdl
        ASSERT_EQ(b->plan.op_coop, want) << "the cooperative grid should fit at these grids";
        ASSERT_NO_FATAL_FAILURE(expect_coop_kernels(b, W, true));
        expect_scale_only_bitwise(a, b, W);
      },
      grids);
}

// On the plan's own grid (as many blocks as fit at once, in its clusters; h = shape[0] at least
// that), op_coop=1 and op_coop=3 against the kernels, bit for bit: training and eval with W_sn,
// then scale only (expect_scale_only_bitwise).
static void expect_coop_full_grid_bitwise(const std::vector<int64_t> &shape, sn_dtype_t dt) {
  SN_SEEDED_RNG();
  const std::string prefix = tune_prefix() + "op_onchip=0,";
  ScopedEnv env("SPECNORM_TUNE", nullptr);
  const int64_t n = numel_of(shape);
  Tensor W(dt, n), o1(dt, n), o2(dt, n);
  W.set(rng.normals(n));
  for (int coop : {1, 3}) {
    SCOPED_TRACE(shape_str(shape) + " dtype " + std::to_string(int(dt)) + " op_coop=" + std::to_string(coop));
    sn_layer_desc_t d = make_desc(shape, SN_BACKEND_CUDA);
    d.algo = SN_ALGO_ONE_PASS;
    d.dtype = dt;
    env.set((prefix + "op_coop=0").c_str());
    LayerPtr a(d);
    env.set((prefix + "op_coop=" + std::to_string(coop)).c_str());
    LayerPtr b(d);
    ASSERT_TRUE(a.p && b.p) << sn_last_error_message();
    ASSERT_EQ(b.p->plan.op_coop, coop == 3 && !b.p->plan.pdl ? 1 : coop);
    ASSERT_EQ(a.p->plan.op_blocks, b.p->plan.op_blocks);
    ASSERT_LT(b.p->plan.op_blocks, shape[0]) << "not the full grid: more rows wanted";
    for (int step = 0; step < 3; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      ASSERT_NO_FATAL_FAILURE(expect_forward_pair_bitwise(a, W.dev, o1, b, W.dev, o2, step != 1));
    }
    expect_scale_only_bitwise(a, b, W);
  }
}

// Small cases: 1 and 4 packs per thread, 16- and 8-byte packs, fewer reduction blocks than blocks.
static const std::vector<RowsCase> kCoopSmallCases{
    {{9, 64}, SN_DTYPE_FLOAT32}, {{20, 4092}, SN_DTYPE_FLOAT32}, {{33, 2052}, SN_DTYPE_BFLOAT16}};

TEST(Gpu, OnePassCooperativeSmallIsBitwiseTheKernels) {
  REQUIRE_GPU();
  expect_coop_bitwise(kCoopSmallCases);
}

// The same on grids of 7 blocks and of 2 clusters of 4 only, for racecheck (gpu_check.sh): the
// test above on its grids of 64 blocks, with the two after it, ran past 75 s under racecheck on the
// H100 at 61eb446 and was cut.
TEST(Gpu, OnePassCooperativeRacecheckSizedIsBitwiseTheKernels) {
  REQUIRE_GPU();
  expect_coop_bitwise(kCoopSmallCases, "", 1, {"op_grid=7,op_cluster=1", "op_grid=8,op_cluster=4"});
}

// The same with reduction blocks of 16 float4 columns (op_reduce_cols, a runtime count in the
// cooperative kernel, a template one in the reduce kernel), and as a programmatic dependent launch
// too (op_coop=3).
TEST(Gpu, OnePassCooperativeSmallVariantsAreBitwiseTheKernels) {
  REQUIRE_GPU();
  expect_coop_bitwise(kCoopSmallCases, "op_reduce_cols=16,");
  expect_coop_bitwise(kCoopSmallCases, "", 3);
}

// One layer on the plan's full grid (every block that fits at once, where a grid the driver took
// but could not hold would hang in its grid barrier), op_coop=1 and 3; apart from the small cases,
// whose racecheck this would slow down.
TEST(Gpu, OnePassCooperativeFullGridIsBitwiseTheKernels) {
  REQUIRE_GPU();
  expect_coop_full_grid_bitwise({1100, 1152}, SN_DTYPE_FLOAT32);
  expect_coop_full_grid_bitwise({1000, 1024}, SN_DTYPE_FLOAT32);  // one pack per thread: 6 blocks per SM
}

// The same in fp32, bf16 and fp16 at the instances of the benchmark's shapes; then two iterations
// and the warm-up (the commit in the last launch only) against the usual kernels, and the CPU
// backend.
TEST(Gpu, OnePassCooperativeLaunchIsBitwiseTheKernels) {
  REQUIRE_GPU();
  expect_coop_bitwise({{{700, 1152}, SN_DTYPE_FLOAT32},
                       {{300, 4096}, SN_DTYPE_BFLOAT16},    // 256 threads × 2 packs of 8 (4096² bf16's)
                       {{513, 1028}, SN_DTYPE_FLOAT16},     // 8-byte packs
                       {{300, 4096}, SN_DTYPE_FLOAT32}});   // 256 × 4 (4096² fp32's)
  SN_SEEDED_RNG();
  const std::string prefix = tune_prefix() + "op_onchip=0,";  // before the ScopedEnv unsets it
  ScopedEnv env("SPECNORM_TUNE", nullptr);
  for (int iters : {1, 2}) {
    SCOPED_TRACE("iterations " + std::to_string(iters));
    sn_layer_desc_t d = make_desc({600, 4096}, SN_BACKEND_CUDA);
    d.algo = SN_ALGO_ONE_PASS;
    d.n_power_iterations = iters;
    d.warmup_iterations = 3;
    const int64_t n = 600 * 4096;
    Tensor W(SN_DTYPE_FLOAT32, n);
    W.set(rng.normals(n));
    env.set((prefix + "op_grid=64,op_coop=0").c_str());
    LayerPtr a(d);
    env.set((prefix + "op_grid=64,op_coop=1").c_str());
    LayerPtr b(d);
    ASSERT_TRUE(a.p && b.p) << sn_last_error_message();
    ASSERT_EQ(b.p->plan.op_coop, 1);
    expect_scale_only_bitwise(a, b, W);  // the first one runs the warm-up
  }
  env.set((prefix + "op_coop=3").c_str());  // also as a programmatic dependent launch, full grids
  compare_backends(Case{{2000, 1152}, 0, SN_ORDER_U_FIRST, 2, SN_ALGO_ONE_PASS}, rng, 3, 2);
  // By default (no op_coop key), on sm_90 and up, the benchmark's 256-thread instances take it on
  // their full grids (the cooperative kernel fits as many blocks per multiprocessor as the rows
  // kernel: ptxas sm_90, the same registers or fewer; rows of one pack per thread, 1024 fp32 and
  // 2048 bf16 columns, by kCoopMinBlocks), for the forwards without W_sn only: a
  // scale-only forward is that one launch, a training forward with W_sn the rows, reduce and
  // commit kernels. Rows of 16384 columns (512 threads) never take it, not even when asked.
  // The caller's SPECNORM_TUNE left out here: this is about the defaults (gpu_check's tune_tests
  // sets op_coop=0 for every test).
  const std::string bare = "op_onchip=0,";
  // (sn_cuda_clusters_usable: the library's own sm_90 test, device and built code alike.)
  const int by_default = sn_cuda_clusters_usable() ? 1 : 0;
  for (const RowsCase &c : std::vector<RowsCase>{{{1000, 4096}, SN_DTYPE_FLOAT32}, {{1000, 4096}, SN_DTYPE_BFLOAT16},
                                                 {{1000, 1024}, SN_DTYPE_FLOAT32}, {{1000, 2048}, SN_DTYPE_BFLOAT16},
                                                 {{1000, 16384}, SN_DTYPE_FLOAT32}, {{1000, 16384}, SN_DTYPE_BFLOAT16}}) {
    SCOPED_TRACE(shape_str(c.shape) + " dtype " + std::to_string(int(c.dt)));
    sn_layer_desc_t d = make_desc(c.shape, SN_BACKEND_CUDA);
    d.algo = SN_ALGO_ONE_PASS;
    d.dtype = c.dt;
    env.set(bare.c_str());
    LayerPtr l(d);
    env.set((bare + "op_coop=1").c_str());
    LayerPtr asked(d);
    ASSERT_TRUE(l.p && asked.p) << sn_last_error_message();
    const int want = c.shape[1] <= 4096 ? 1 : 0;
    EXPECT_EQ(l.p->plan.op_coop, want * by_default)
        << l.p->plan.op_threads << " threads, " << l.p->plan.op_blocks << " blocks in clusters of " << l.p->plan.op_cluster;
    EXPECT_EQ(asked.p->plan.op_coop, want);
    EXPECT_EQ(asked.p->plan.op_coop_all, want);
    if (!l.p->plan.op_coop) continue;
    EXPECT_EQ(l.p->plan.op_coop_all, 0);
    const int64_t n = numel_of(c.shape);
    Tensor W(c.dt, n);
    W.set(rng.normals(n));
    ASSERT_EQ(sn_layer_warmup(l, W.dev, nullptr), SN_SUCCESS) << sn_last_error_message();  // before a capture
    ASSERT_NO_FATAL_FAILURE(expect_coop_kernels(l, W, false));
  }
  env.set(prefix.c_str());
  compare_backends(Case{{2000, 1152}, 0, SN_ORDER_U_FIRST, 2, SN_ALGO_ONE_PASS}, rng, 3, 2);
  compare_backends(Case{{600, 4096}, 0, SN_ORDER_U_FIRST, 1, SN_ALGO_ONE_PASS}, rng, 3, 2);
}

// The cooperative launch through the ring of two (cuda/one_pass_coop.cu, kCoopRing: 4096²'s
// 2-byte rows, two packs of 8 per thread, where SPECNORM_TUNE=op_pp=2 gives the rows kernel the
// ring): bit for bit the kernels (the ring-of-two rows kernel and the reduce kernel), and the
// plain loop's kernels (no ring, old sums, each element converted twice), on each case and grid,
// blocks of 1 to 5 rows; the scale-only forward is that instance's launch (graph capture). On
// sm_90 the plan takes the ring and the launch there (64 registers, the plain kernel's 4 blocks).
TEST(Gpu, OnePassCooperativeRingOfTwoIsBitwiseTheKernels) {
  REQUIRE_GPU();
  if (suite_takes_two_rows_a_step()) GTEST_SKIP() << "SPECNORM_TUNE has op_rows=2: two rows a step, no ring instance";
  const int major = device_major();
  const std::vector<RowsCase> cases{{{300, 4096}, SN_DTYPE_BFLOAT16},   // 256 threads × 2 packs of 8
                                    {{23, 4096}, SN_DTYPE_BFLOAT16},    // on 7 blocks: 3 and 4 rows
                                    {{9, 4096}, SN_DTYPE_FLOAT16}};     // on 7 blocks: 1 and 2 rows
  expect_coop_bitwise(cases, "op_pp=2,");
  expect_rows_pairs_bitwise(cases, "op_pp=0,op_coop=0,", "op_pp=2,op_coop=1,",
                            [&](sn_layer_t *a, sn_layer_t *b, const RowsCase &, const Tensor &W) {
                              EXPECT_EQ(a->plan.op_pp, 0);
                              EXPECT_EQ(a->plan.op_coop, 0);
                              ASSERT_EQ(b->plan.op_coop, 1) << "the cooperative grid should fit at these grids";
                              expect_scale_only_bitwise(a, b, W);
                            });
  SN_SEEDED_RNG();
  const std::string prefix = tune_prefix() + "op_onchip=0,";
  ScopedEnv env("SPECNORM_TUNE", (prefix + "op_pp=2,op_coop=1").c_str());
  for (const RowsCase &c : cases) {
    SCOPED_TRACE(shape_str(c.shape) + " dtype " + std::to_string(int(c.dt)));
    sn_layer_desc_t d = make_desc(c.shape, SN_BACKEND_CUDA);
    d.algo = SN_ALGO_ONE_PASS;
    d.dtype = c.dt;
    LayerPtr l(d);
    ASSERT_TRUE(l.p) << sn_last_error_message();
    if (major == 9) {
      EXPECT_EQ(l.p->plan.op_pp, 2);
      ASSERT_EQ(l.p->plan.op_coop, 1);
    }
    if (l.p->plan.op_coop != 1) continue;  // elsewhere the full grid may not fit at once
    const int64_t n = numel_of(c.shape);
    Tensor W(c.dt, n);
    W.set(rng.normals(n));
    ASSERT_EQ(sn_layer_warmup(l, W.dev, nullptr), SN_SUCCESS) << sn_last_error_message();
    const std::vector<std::string> ks =
        captured_kernels([&](cudaStream_t s) { return sn_forward_scale_only(l, W.dev, 1, (sn_stream_t)s); });
    ASSERT_EQ(ks.size(), 1u) << ::testing::PrintToString(ks);
    EXPECT_EQ(any_matches(ks, "one_pass_coop_kernel<[^>]*, 2>"), l.p->plan.op_pp == 2) << ks[0];
  }
}

// The cooperative launch refused (SPECNORM_TUNE=op_coop=2 launches it with more blocks than can be
// resident): the layer drops it for good (host/layer.c). Eagerly at once, bit for bit what a layer
// without the knob computes (training, eval and scale only; the first forward, with the warm-up,
// is the one refused); during a capture of a layer without warm-up, SN_ERROR_CUDA saying to
// capture again, and the next capture takes the rows and reduce kernels.
TEST(Gpu, OnePassCooperativeLaunchRefusedFallsBack) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const std::string prefix = tune_prefix() + "op_onchip=0,op_grid=64,";
  ScopedEnv env("SPECNORM_TUNE", nullptr);
  for (const RowsCase &c : std::vector<RowsCase>{{{700, 1152}, SN_DTYPE_FLOAT32}, {{300, 4096}, SN_DTYPE_BFLOAT16}}) {
    SCOPED_TRACE(shape_str(c.shape) + " dtype " + std::to_string(int(c.dt)));
    sn_layer_desc_t d = make_desc(c.shape, SN_BACKEND_CUDA);
    d.algo = SN_ALGO_ONE_PASS;
    d.dtype = c.dt;
    sn_layer_desc_t cold = d;
    cold.warmup_iterations = 0;  // its first forward may be captured
    env.set((prefix + "op_coop=0").c_str());
    LayerPtr plain(d);
    env.set((prefix + "op_coop=2").c_str());
    LayerPtr refused(d), captured(cold);
    ASSERT_TRUE(plain.p && refused.p && captured.p) << sn_last_error_message();
    ASSERT_EQ(refused.p->plan.op_coop, 2);
    ASSERT_EQ(captured.p->plan.op_coop, 2);
    const int64_t n = numel_of(c.shape);
    Tensor W(c.dt, n), o1(c.dt, n), o2(c.dt, n);
    W.set(rng.normals(n));
    for (int step = 0; step < 3; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      ASSERT_NO_FATAL_FAILURE(expect_forward_pair_bitwise(plain, W.dev, o1, refused, W.dev, o2, step != 2));
      EXPECT_EQ(refused.p->plan.op_coop, 0);
    }
    expect_scale_only_bitwise(plain, refused, W);
    const CaptureOutcome out =
        capture_outcome([&](cudaStream_t s) { return sn_forward_scale_only(captured, W.dev, 1, (sn_stream_t)s); });
    EXPECT_EQ(out.status, SN_ERROR_CUDA) << "the refused launch was not reported during the capture";
    EXPECT_NE(out.message.find("cooperative"), std::string::npos) << out.message;
    EXPECT_NE(out.message.find("capture"), std::string::npos) << out.message;
    EXPECT_EQ(captured.p->plan.op_coop, 0);
    const std::vector<std::string> names =
        captured_kernels([&](cudaStream_t s) { return sn_forward_scale_only(captured, W.dev, 1, (sn_stream_t)s); });
    EXPECT_TRUE(any_matches(names, kRegisterRows)) << ::testing::PrintToString(names);
    EXPECT_FALSE(any_matches(names, "one_pass_coop_kernel<")) << ::testing::PrintToString(names);
  }
}

// Cooperative launches of four layers on four streams at once, each grid as large as the device
// holds (scale-only forwards of 4096-column rows; op_coop=1, so on any device with cooperative
// launches): the device runs them without a deadlock, and every layer ends in the state the same forwards give one
// layer after another, bit for bit (σ, scale and health too).
TEST(Gpu, OnePassCooperativeConcurrentStreamsEqualSerial) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + "op_onchip=0,op_coop=1").c_str());
  constexpr int kLayers = 4, kSteps = 20;
  const int64_t h = 600, w = 4096, n = h * w;
  Tensor W(SN_DTYPE_FLOAT32, n);
  W.set(rng.normals(n));
  sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CUDA);
  d.algo = SN_ALGO_ONE_PASS;
  LayerPtr serial[kLayers], parallel[kLayers];
  cudaStream_t streams[kLayers];
  for (int k = 0; k < kLayers; ++k) {
    d.seed = 100 + k;
    ASSERT_EQ(sn_layer_create(&serial[k].p, &d), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_layer_create(&parallel[k].p, &d), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(parallel[k].p->plan.op_coop, 1) << "the cooperative grid should fit";
    CUDA_OK(cudaStreamCreateWithFlags(&streams[k], cudaStreamNonBlocking));
  }
  for (int k = 0; k < kLayers; ++k)
    for (int step = 0; step < kSteps; ++step)
      ASSERT_EQ(sn_forward_scale_only(serial[k], W.dev, step % 5 != 4, nullptr), SN_SUCCESS) << sn_last_error_message();
  CUDA_OK(cudaDeviceSynchronize());
  for (int step = 0; step < kSteps; ++step)
    for (int k = 0; k < kLayers; ++k)
      ASSERT_EQ(sn_forward_scale_only(parallel[k], W.dev, step % 5 != 4, (sn_stream_t)streams[k]), SN_SUCCESS)
          << sn_last_error_message();
  for (cudaStream_t s : streams) CUDA_OK(cudaStreamSynchronize(s));
  for (int k = 0; k < kLayers; ++k) {
    SCOPED_TRACE("layer " + std::to_string(k));
    EXPECT_EQ(parallel[k].p->plan.op_coop, 1) << "a launch was refused";
    EXPECT_TRUE(same_state(get_state(serial[k]), get_state(parallel[k])));
    expect_same_scale_and_health(serial[k], parallel[k]);
  }
  for (cudaStream_t s : streams) CUDA_OK(cudaStreamDestroy(s));
}

// Without SPECNORM_TUNE's div_stream, the division is evict-first where W takes more than a quarter
// of the L2 and at most twice it (cuda/forward.cu, div_stream_default), counted in W's dtype.
TEST(Gpu, StreamingDivisionByDefaultFollowsTheL2) {
  REQUIRE_GPU();
  const char *tune = std::getenv("SPECNORM_TUNE");
  if (tune && std::strstr(tune, "div_stream=")) GTEST_SKIP() << "SPECNORM_TUNE sets div_stream: " << tune;
  int dev = 0, l2 = 0;
  CUDA_OK(cudaGetDevice(&dev));
  CUDA_OK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
  ASSERT_GT(l2, 4096 * 64);
  const int64_t row = 4096;  // columns; fp32 rows of 16 KB
  const struct {
    int64_t rows;
    sn_dtype_t dt;
    int streaming;
  } cases[] = {
      {l2 / 4 / (row * 4), SN_DTYPE_FLOAT32, 0},           // a quarter of the L2: not above it
      {l2 / 4 / (row * 4) + 1, SN_DTYPE_FLOAT32, 1},       // a row more
      {l2 / 4 / (row * 4) + 1, SN_DTYPE_BFLOAT16, 0},      // the same shape in 2 bytes: half
      {2 * l2 / (row * 4), SN_DTYPE_FLOAT32, 1},           // twice the L2
      {2 * l2 / (row * 4) + 1, SN_DTYPE_FLOAT32, 0},       // a row more
      {2 * l2 / (row * 4) + 1, SN_DTYPE_BFLOAT16, 1},
      {64, SN_DTYPE_FLOAT32, 64 * row * 4 > l2 / 4 ? 1 : 0},  // 1 MiB: below a quarter of a 4+ MiB L2
  };
  for (const auto &c : cases) {
    SCOPED_TRACE(std::to_string(c.rows) + " x " + std::to_string(row) + " dtype " + std::to_string(int(c.dt)));
    sn_layer_desc_t d = make_desc({c.rows, row}, SN_BACKEND_CUDA);
    d.dtype = c.dt;
    LayerPtr l(d);
    ASSERT_TRUE(l.p) << sn_last_error_message();
    EXPECT_EQ(l.p->plan.div_stream, c.streaming);
  }
}

// A setting of the division (SPECNORM_TUNE=div_stream=1, evict-first loads of W and stores of
// W_sn; div_prefetch=1, each thread's first pack of W loaded before the PDL wait) writes what the
// division without it writes: the same W_sn and state, bit for bit, out of place and in place
// (W_sn = W), training and eval; and each layer launches its instance (captured kernel names).
struct DivCase {
  std::vector<int64_t> shape;
  sn_dtype_t dt;
  int offset;  // elements W starts after a 256-byte boundary (not 0: no 16-byte packs)
};

// The knob, its plan field, and the instances of the 16-byte packs without and with it
// (commit_divide_kernel<WIDE, T, STREAM, PRE>, cuda/commit_divide.cu).
struct DivKnob {
  const char *key;
  int sn_cuda_plan_t::*field;
  const char *off, *on;
};
const DivKnob kDivStream{"div_stream", &sn_cuda_plan_t::div_stream,
                         "commit_divide_kernel<true, [^,]*, false, [^>]*>",
                         "commit_divide_kernel<true, [^,]*, true, [^>]*>"};
const DivKnob kDivPrefetch{"div_prefetch", &sn_cuda_plan_t::div_prefetch,
                           "commit_divide_kernel<true, [^,]*, [^,]*, false>",
                           "commit_divide_kernel<true, [^,]*, [^,]*, true>"};

// Each case's weights are drawn once; step k uses them rotated by k · 1009 elements (8 M normals
// per step made the large test slow on the host).
static void expect_division_knob_bitwise(const DivKnob &knob, const std::vector<DivCase> &cases) {
  SN_SEEDED_RNG();
  const std::string base = tune_prefix();
  ScopedEnv env("SPECNORM_TUNE", nullptr);
  const std::string key = std::string(",") + knob.key;
  for (const DivCase &c : cases) {
    const std::vector<float> drawn = rng.normals(numel_of(c.shape));
    SCOPED_TRACE(std::string(knob.key) + " " + shape_str(c.shape) + " dtype " +
                 std::to_string(int(c.dt)) + " offset " + std::to_string(c.offset));
    sn_layer_desc_t d = make_desc(c.shape, SN_BACKEND_CUDA);
    d.dtype = c.dt;
    env.set((base + "op_onchip=0" + key + "=0").c_str());  // the division kernels, not a layer on chip
    LayerPtr a(d);
    env.set((base + "op_onchip=0" + key + "=1").c_str());
    LayerPtr b(d);
    ASSERT_TRUE(a.p && b.p);
    ASSERT_EQ(a.p->plan.*knob.field, 0);
    ASSERT_EQ(b.p->plan.*knob.field, 1);
    const int64_t n = numel_of(c.shape);
    Tensor W(c.dt, n, c.offset), o1(c.dt, n, c.offset), o2(c.dt, n, c.offset);
    Tensor i1(c.dt, n, c.offset), i2(c.dt, n, c.offset);
    // The division each layer launches: the element loop without 16-byte packs, else the plain
    // instance (a) and the streaming one (b). A capture needs the warm-up done.
    W.set(drawn);
    ASSERT_EQ(sn_layer_warmup(a, W.dev, nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_layer_warmup(b, W.dev, nullptr), SN_SUCCESS) << sn_last_error_message();
    const std::vector<std::string> ka = captured_kernels(
        [&](cudaStream_t s) { return sn_forward(a, W.dev, o1.dev, 1, (sn_stream_t)s); });
    const std::vector<std::string> kb = captured_kernels(
        [&](cudaStream_t s) { return sn_forward(b, W.dev, o2.dev, 1, (sn_stream_t)s); });
    const std::string want_a = c.offset ? "commit_divide_kernel<false, [^>]*>" : knob.off;
    const std::string want_b = c.offset ? want_a : knob.on;
    EXPECT_TRUE(any_matches(ka, want_a)) << want_a << " in " << ::testing::PrintToString(ka);
    EXPECT_TRUE(any_matches(kb, want_b)) << want_b << " in " << ::testing::PrintToString(kb);
    for (int step = 0; step < 4; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      const int training = step != 2;
      std::vector<float> x = drawn;
      std::rotate(x.begin(), x.begin() + (step * 1009) % n, x.end());
      W.set(x);
      ASSERT_NO_FATAL_FAILURE(expect_forward_pair_bitwise(a, W.dev, o1, b, W.dev, o2, training));
      i1.set(x);
      i2.set(x);
      ASSERT_NO_FATAL_FAILURE(expect_forward_pair_bitwise(a, i1.dev, i1, b, i2.dev, i2, training));
      EXPECT_TRUE(i1.download_bytes() != W.download_bytes()) << "the in-place forward changed nothing";
    }
  }
}

// Small enough for the sanitizers: a tail after the last whole 16-byte pack (333 × 1027), none,
// 1 × 1, and a misaligned W (the element loop only).
static const std::vector<DivCase> kDivSmall = {{{333, 1027}, SN_DTYPE_FLOAT32, 0},
                                               {{512, 1024}, SN_DTYPE_BFLOAT16, 0},
                                               {{333, 1027}, SN_DTYPE_FLOAT16, 0},
                                               {{64, 3, 3, 3}, SN_DTYPE_FLOAT32, 0},
                                               {{300, 700}, SN_DTYPE_BFLOAT16, 1},
                                               {{1, 1}, SN_DTYPE_FLOAT32, 0}};

// Layers large enough that the division's threads take several 16-byte packs each (over 2 million
// packs in fp32, 1 million in the 2-byte types; its grid is at most 16 blocks of 256 per SM), with
// and without a tail.
static const std::vector<DivCase> kDivLarge = {{{2001, 4099}, SN_DTYPE_FLOAT32, 0},
                                               {{2001, 4099}, SN_DTYPE_FLOAT16, 0},
                                               {{2000, 4104}, SN_DTYPE_BFLOAT16, 0}};

TEST(Gpu, StreamingDivisionIsBitwiseThePlainOne) {
  REQUIRE_GPU();
  expect_division_knob_bitwise(kDivStream, kDivSmall);
}

TEST(GpuLarge, StreamingDivisionOnLargeLayersIsBitwiseThePlainOne) {
  REQUIRE_GPU();
  expect_division_knob_bitwise(kDivStream, kDivLarge);
}

TEST(Gpu, PrefetchingDivisionIsBitwiseThePlainOne) {
  REQUIRE_GPU();
  expect_division_knob_bitwise(kDivPrefetch, kDivSmall);
}

TEST(GpuLarge, PrefetchingDivisionOnLargeLayersIsBitwiseThePlainOne) {
  REQUIRE_GPU();
  expect_division_knob_bitwise(kDivPrefetch, kDivLarge);
}

// Also under the SPECNORM_TUNE variants that change how kernels are launched: programmatic
// dependent launch and thread-block clusters are captured into the graph too.
TEST(Gpu, GraphReplayEqualsPlainCallsAndUsesFewLaunches) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  ScopedEnv env("SPECNORM_TUNE", nullptr);
  const int64_t h = 512, w = 1152;
  std::vector<float> W = gapped_matrix(rng, h, w);
  DevBuf dW(static_cast<size_t>(h * w)), o1(static_cast<size_t>(h * w)), o2(static_cast<size_t>(h * w));
  dW.upload(W);
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const std::pair<const char *, sn_algo_t> variants[] = {
      {nullptr, SN_ALGO_DEFAULT}, {nullptr, SN_ALGO_ONE_PASS}, {"pdl=1", SN_ALGO_DEFAULT},
      {"pdl=1", SN_ALGO_ONE_PASS}, {"pdl=1,op_cluster=4", SN_ALGO_ONE_PASS}};
  for (const auto &[tune, algo] : variants) {
    SCOPED_TRACE(std::string("SPECNORM_TUNE=") + (tune ? tune : "") + " algo " + std::to_string(int(algo)));
    // op_onchip=0: the usual kernels' launches, whatever the on-chip rule's limit (cuda/forward.cu).
    env.set((std::string("op_onchip=0,") + (tune ? tune : "")).c_str());
    sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CUDA);
    d.algo = algo;
    LayerPtr plain(d), graphed(d);
    ASSERT_TRUE(plain.p && graphed.p);
    ASSERT_EQ(sn_layer_warmup(graphed, dW.p, s), SN_SUCCESS);
    ASSERT_EQ(sn_layer_warmup(plain, dW.p, s), SN_SUCCESS);
    for (int training : {1, 0}) {
      SCOPED_TRACE(training ? "training" : "eval");
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
      ASSERT_EQ(sn_forward(graphed, dW.p, o2.p, training, s), SN_SUCCESS) << sn_last_error_message();
      CUDA_OK(cudaStreamEndCapture(s, &graph));
      size_t nodes = 0;
      CUDA_OK(cudaGraphGetNodes(graph, nullptr, &nodes));
      EXPECT_EQ(nodes, training ? 3u : 2u) << "kernel launches per forward";
      CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
      for (int k = 0; k < 3; ++k) {
        CUDA_OK(cudaGraphLaunch(exec, s));
        ASSERT_EQ(sn_forward(plain, dW.p, o1.p, training, s), SN_SUCCESS);
        CUDA_OK(cudaStreamSynchronize(s));
        EXPECT_TRUE(same_state(get_state(plain, s), get_state(graphed, s)));
        EXPECT_TRUE(bitwise_equal(o1.download(), o2.download()));
      }
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
    }
  }
  cudaStreamDestroy(s);
}

// A warmed-up layer on chip (SPECNORM_TUNE=op_onchip=1, cuda/on_chip.cu): each forward after the
// warm-up is one launch of the on-chip kernel. Against the CPU backend step by step, with W and
// W_sn aligned and 4 bytes past 16; bitwise reproducible; the launch read from a graph capture.
// Where a layer does not fit this device it keeps the other paths (not tested here).
// `threads`: the forward's blocks (256, or 512 with onchip_threads=512), read from the kernel's name.
static void expect_on_chip_layers_match_cpu(int threads) {
  SN_SEEDED_RNG();
  ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + "op_onchip=1,onchip_threads=" + std::to_string(threads)).c_str());
  const std::string kernel = "group_on_chip_kernel<" + std::to_string(threads) + ">";
  const Case cases[] = {Case{{1, 1}, 0, SN_ORDER_U_FIRST, 1},      Case{{1, 1000}, 0, SN_ORDER_U_FIRST, 1},
                        Case{{1000, 1}, 0, SN_ORDER_U_FIRST, 1},   Case{{7, 13}, 0, SN_ORDER_U_FIRST, 1},
                        Case{{257, 1023}, 0, SN_ORDER_U_FIRST, 2}, Case{{128, 128, 3, 3}, 0, SN_ORDER_U_FIRST, 1},
                        Case{{64, 3, 3, 3}, 0, SN_ORDER_U_FIRST, 1}, Case{{1, 128}, 0, SN_ORDER_U_FIRST, 1},
                        Case{{300, 517}, 0, SN_ORDER_U_FIRST, 3},  Case{{1, 4096}, 0, SN_ORDER_U_FIRST, 1},
                        Case{{1, 5, 64}, 1, SN_ORDER_U_FIRST, 1},  Case{{200, 32}, 0, SN_ORDER_U_FIRST, 1},
                        Case{{90, 16}, 0, SN_ORDER_U_FIRST, 2},    Case{{33, 4, 2}, 0, SN_ORDER_U_FIRST, 1}};
  int ran = 0;
  for (const Case &c : cases) {
    SCOPED_TRACE(case_name(c));
    const sn_on_chip_t oc = on_chip_plan_of({{c.shape, c.dim, SN_DTYPE_FLOAT32}}, 0, 1);
    const int64_t n = numel_of(c.shape);
    if (n * 4 <= 32768) {
      EXPECT_GT(oc.cluster, 0) << "32 KB and 4096 columns fit any device's shared memory";
    }
    if (oc.cluster == 0) continue;
    ran += 1;
    compare_backends(c, rng, 4, 2);
    compare_backends(c, rng, 4, 2, 1);
    sn_layer_desc_t d = make_desc(c.shape, SN_BACKEND_CUDA, c.dim);
    d.n_power_iterations = c.iters;
    LayerPtr a(d), b(d);
    ASSERT_TRUE(a.p && b.p);
    DevBuf dW(static_cast<size_t>(n)), o1(static_cast<size_t>(n)), o2(static_cast<size_t>(n));
    dW.upload(gapped_weight(rng, c.shape, c.dim));
    ASSERT_EQ(sn_layer_warmup(a, dW.p, nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_layer_warmup(b, dW.p, nullptr), SN_SUCCESS) << sn_last_error_message();
    for (int training : {1, 0}) {
      const std::vector<std::string> names =
          captured_kernels([&](cudaStream_t s) { return sn_forward(a, dW.p, o1.p, training, s); });
      EXPECT_EQ(names.size(), 1u) << (training ? "training" : "eval");
      EXPECT_TRUE(any_matches(names, kernel)) << (names.empty() ? "?" : names[0]);
    }
    for (int step = 0; step < 3; ++step) {
      const int training = step < 2;
      ASSERT_EQ(sn_forward(a, dW.p, o1.p, training, nullptr), SN_SUCCESS) << sn_last_error_message();
      ASSERT_EQ(sn_forward(b, dW.p, o2.p, training, nullptr), SN_SUCCESS) << sn_last_error_message();
      EXPECT_TRUE(same_state(get_state(a), get_state(b)));
      EXPECT_TRUE(bitwise_equal(o1.download(), o2.download()));
    }
  }
  EXPECT_GT(ran, 0);
}

TEST(Gpu, OnChipLayerMatchesTheCpuBackend) {
  REQUIRE_GPU();
  expect_on_chip_layers_match_cpu(256);
}

// The same with blocks of 512 threads (SPECNORM_TUNE=onchip_threads=512; other reduction trees).
TEST(Gpu, OnChipLayerOf512ThreadsMatchesTheCpuBackend) {
  REQUIRE_GPU();
  expect_on_chip_layers_match_cpu(512);
}

// Under `tune`, layers no on-chip path takes keep their kernels (a warmed-up training forward has
// no launch of `kernel`): the v-first order, a layer that asks for two passes, a view with A > 1
// (dim 1), and `other`.
static void expect_not_on_chip(Rng &rng, const std::string &tune, const sn_layer_desc_t &other,
                               const std::string &kernel) {
  ScopedEnv env("SPECNORM_TUNE", tune.c_str());
  sn_layer_desc_t vfirst = make_desc({64, 100}, SN_BACKEND_CUDA);
  vfirst.order = SN_ORDER_V_FIRST;
  sn_layer_desc_t two_pass = make_desc({64, 100}, SN_BACKEND_CUDA);
  two_pass.algo = SN_ALGO_TWO_PASS;
  for (const sn_layer_desc_t &d : {vfirst, two_pass, make_desc({40, 24, 5}, SN_BACKEND_CUDA, 1), other}) {
    LayerPtr l(d);
    ASSERT_TRUE(l.p);
    int64_t h = 0, w = 0;
    ASSERT_EQ(sn_layer_get_dims(l, &h, &w), SN_SUCCESS);
    SCOPED_TRACE(std::to_string(h) + " x " + std::to_string(w));
    EXPECT_EQ(l.p->plan.onchip.cluster, 0);
    EXPECT_EQ(l.p->plan.onchip.grid, 0);
    DevBuf dW(static_cast<size_t>(h * w)), o(static_cast<size_t>(h * w));
    dW.upload(rng.normals(h * w));
    ASSERT_EQ(sn_layer_warmup(l, dW.p, nullptr), SN_SUCCESS) << sn_last_error_message();
    const std::vector<std::string> names =
        captured_kernels([&](cudaStream_t s) { return sn_forward(l, dW.p, o.p, 1, s); });
    EXPECT_FALSE(names.empty());
    EXPECT_FALSE(any_matches(names, kernel));
  }
}

// Layers of d created under `refuse_tune`, whose on-chip launch (`kernel`) the device refuses,
// against a layer created under `plain_tune`: eager forwards (the first the warm-up, then steps
// training or eval as `training` says) fall back at once, bit for bit, and for good; a forward
// refused during a capture returns SN_ERROR_CUDA saying to capture again, and the next capture has
// the usual kernels.
static void expect_refused_launch_falls_back(Rng &rng, const sn_layer_desc_t &d, const std::string &plain_tune,
                                             const std::string &refuse_tune, const std::string &kernel,
                                             std::vector<int> training = {1, 1, 0}) {
  const int64_t h = d.shape[0], w = d.shape[1];
  DevBuf dW(static_cast<size_t>(h * w)), o1(static_cast<size_t>(h * w)), o2(static_cast<size_t>(h * w));
  dW.upload(gapped_matrix(rng, h, w));
  ScopedEnv env("SPECNORM_TUNE", plain_tune.c_str());
  LayerPtr plain(d);
  env.set(refuse_tune.c_str());
  LayerPtr refused(d), captured(d);
  ASSERT_TRUE(plain.p && refused.p && captured.p);
  ASSERT_GT(refused.p->plan.onchip.cluster, 0) << "the layer is on chip";
  ASSERT_TRUE(refused.p->plan.onchip.refuse);
  for (size_t step = 0; step < training.size(); ++step) {
    ASSERT_EQ(sn_forward(plain, dW.p, o1.p, training[step], nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_forward(refused, dW.p, o2.p, training[step], nullptr), SN_SUCCESS) << sn_last_error_message();
    EXPECT_TRUE(same_state(get_state(plain), get_state(refused))) << "step " << step;
    EXPECT_TRUE(bitwise_equal(o1.download(), o2.download())) << "step " << step;
  }
  EXPECT_EQ(refused.p->plan.onchip.cluster, 0) << "dropped for good";
  sn_paths_t paths;
  ASSERT_EQ(sn_layer_get_paths(refused, &paths), SN_SUCCESS);
  EXPECT_NE(paths.dropped & SN_DROPPED_ON_CHIP, 0u) << "the refusal is not said (sn_layer_get_paths)";
  std::vector<std::string> names = captured_kernels([&](cudaStream_t s) { return sn_forward(refused, dW.p, o2.p, 1, s); });
  EXPECT_FALSE(any_matches(names, kernel));
  // Refused during a capture (the layer warmed up first, so that its forward is the on-chip one).
  ASSERT_EQ(sn_layer_warmup(captured, dW.p, nullptr), SN_SUCCESS);
  const CaptureOutcome c = capture_outcome([&](cudaStream_t s) { return sn_forward(captured, dW.p, o2.p, 1, s); });
  EXPECT_EQ(c.status, SN_ERROR_CUDA) << "the refused launch was not reported during the capture";
  EXPECT_NE(c.message.find("capture"), std::string::npos) << c.message;
  names = captured_kernels([&](cudaStream_t q) { return sn_forward(captured, dW.p, o2.p, 1, q); });
  EXPECT_FALSE(names.empty());
  EXPECT_FALSE(any_matches(names, kernel));
}

// A layer of d created under `refuse_tune`, whose on-chip backward the device refuses, its backward
// refused first (its first forward is the warm-up, which runs the usual kernels): bit for bit the
// backward of a layer created under `plain_tune`, and the usual kernels from then on.
static void expect_refused_backward_falls_back(Rng &rng, const sn_layer_desc_t &d, const std::string &plain_tune,
                                               const std::string &refuse_tune) {
  const size_t n = static_cast<size_t>(d.shape[0] * d.shape[1]);
  DevBuf dW(n), o1(n), o2(n), G(n), g1(n), g2(n);
  dW.upload(gapped_matrix(rng, d.shape[0], d.shape[1]));
  G.upload(rng.normals(static_cast<int64_t>(n)));
  ScopedEnv env("SPECNORM_TUNE", refuse_tune.c_str());
  LayerPtr bw_first(d);
  env.set(plain_tune.c_str());
  LayerPtr reference(d);
  ASSERT_TRUE(bw_first.p && reference.p);
  ASSERT_GT(bw_first.p->plan.onchip.backward, 0) << "the backward is on chip";
  ASSERT_EQ(sn_forward(reference, dW.p, o1.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_forward(bw_first, dW.p, o2.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_backward(reference, dW.p, G.p, g1.p, 0, nullptr, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_backward(bw_first, dW.p, G.p, g2.p, 0, nullptr, nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_TRUE(bitwise_equal(g1.download(), g2.download())) << "the refused backward's fallback";
  EXPECT_EQ(bw_first.p->plan.onchip.cluster, 0) << "dropped for good";
  sn_paths_t paths;
  ASSERT_EQ(sn_layer_get_paths(bw_first, &paths), SN_SUCCESS);
  EXPECT_NE(paths.dropped & SN_DROPPED_ON_CHIP, 0u) << "the refusal is not said (sn_layer_get_paths)";
  EXPECT_EQ(paths.backward, SN_PATH_BACKWARD_KERNELS) << sn_path_name(paths.backward);
  const std::vector<std::string> bw =
      captured_kernels([&](cudaStream_t s) { return sn_backward(bw_first, dW.p, G.p, g2.p, 0, nullptr, s); });
  EXPECT_FALSE(bw.empty());
  EXPECT_FALSE(any_matches(bw, "on_chip"));
}

// Under op_onchip=1, layers it does not take keep their kernels: the v-first order, a layer that
// asks for two passes, a view with A > 1 (dim 1), w > 4096. And a refused on-chip launch
// (onchip_refuse=1: clusters of 16, not allowed; assumed refused with cudaErrorInvalidClusterSize)
// drops the layer to its usual kernels for good: eagerly at once, bit for bit what a layer created
// without the knob computes (a forward refused, and a backward refused first); during a capture
// with SN_ERROR_CUDA, saying to capture again.
TEST(Gpu, OnChipLayerLeavesOthersAndFallsBack) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const std::string base = tune_prefix();
  ASSERT_NO_FATAL_FAILURE(
      expect_not_on_chip(rng, base + "op_onchip=1", make_desc({8, 5000}, SN_BACKEND_CUDA), "group_on_chip_kernel"));
  if (!sn_cuda_clusters_usable()) GTEST_SKIP() << "no thread-block clusters here: no launch to refuse";
  sn_layer_desc_t d = make_desc({128, 1152}, SN_BACKEND_CUDA);
  d.seed = 7;
  ASSERT_NO_FATAL_FAILURE(expect_refused_launch_falls_back(rng, d, base + "op_onchip=0",
                                                           base + "op_onchip=1,onchip_refuse=1", "group_on_chip_kernel"));
  ASSERT_NO_FATAL_FAILURE(
      expect_refused_backward_falls_back(rng, d, base + "op_onchip=0", base + "op_onchip=1,onchip_refuse=1"));
}

// The matrix a layer on the grid iterates on (sn_on_grid_view), no device needed: its own view, or
// with onchip.transposed (a v-first layer with dim −1) its Mᵀ's: a (kh, kw, in, out) kernel's view
// 576 × 96 × 1 becomes 1 × 576 × 96, rows contiguous, u and v exchanged by the callers.
TEST(OnChipGrid, ViewOfATransposedLayer) {
  sn_cuda_plan_t plan{};
  plan.view.A = 576;
  plan.view.h = 96;
  plan.view.B = 1;
  sn_view_t v = sn_on_grid_view(&plan);
  EXPECT_EQ(v.A, 576);
  EXPECT_EQ(v.h, 96);
  EXPECT_EQ(v.B, 1);
  plan.onchip.transposed = 1;
  v = sn_on_grid_view(&plan);
  EXPECT_EQ(v.A, 1);
  EXPECT_EQ(v.h, 576);
  EXPECT_EQ(v.B, 96);
  // A single row (PyTorch's legacy dim 0 with h = 1): 1 × 1 × 17 becomes 1 × 17 × 1.
  plan.view.A = 1;
  plan.view.h = 1;
  plan.view.B = 17;
  v = sn_on_grid_view(&plan);
  EXPECT_EQ(v.A, 1);
  EXPECT_EQ(v.h, 17);
  EXPECT_EQ(v.B, 1);
}

// The layout of the layer on chip over a grid (cuda/on_chip_grid.cu), no device needed: with A
// bytes of dynamic shared memory per block (227 KB here, an H100's or H200's opt-in limit), each of
// G blocks holds as many of its at most ⌈h / G⌉ rows as fit in shared memory beside v, t, u and a
// float per thread of 512 (placed at W's address mod 16: 16 bytes more, rounded up to 16), at most
// rows_cap, and the rest, at most 7, in registers, which takes rows of whole 16-byte packs, one per
// thread; no layout otherwise, nor without rows, without blocks, or with more blocks than rows.
TEST(OnChipGrid, Layout) {
  const size_t A = 227 * 1024;
  sn_on_chip_t oc{};
  // The rows of a block's share: in shared memory, in registers, streamed; and the packed instance.
  auto rows_are = [&](int smem, int reg, int stream, int packed) {
    EXPECT_EQ(oc.smem_rows, smem);
    EXPECT_EQ(oc.reg_rows, reg);
    EXPECT_EQ(oc.stream_rows, stream);
    EXPECT_EQ(oc.packed, packed);
  };
  // 2048² fp32 over 132 blocks: 16 rows of 8 KB, all in shared memory (512 packs of 4 floats a
  // row: packed).
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(2048, 2048, SN_DTYPE_FLOAT32, 132, A, 0, &oc),
            size_t(131088 + 4 * (2048 + 2 * 16 + 512)));
  EXPECT_EQ(oc.w_bytes, 131088);
  EXPECT_EQ(oc.w4, 2048);
  EXPECT_EQ(oc.rows4, 16);
  rows_are(16, 0, 0, 1);
  // 4096² bf16 over 132 blocks: 32 rows of 8 KB, 26 in shared memory and 6 in registers.
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(4096, 4096, SN_DTYPE_BFLOAT16, 132, A, 0, &oc),
            size_t(213008 + 4 * (4096 + 2 * 32 + 512)));
  rows_are(26, 6, 0, 1);
  // 4096² fp32: 13 rows of 16 KB fit, the other 19 are too many (and too wide: 1024 packs) for the
  // registers: streamed (the streaming instance: 13 × 3 >= 32 rows). 4096 × 16384 bf16 (5 rows of
  // 32 KB a block on chip, rows of 2048 packs) and fp32 (2 of 64 KB) do not fit: less than a third
  // of their rows, and rows too wide to stream.
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(4096, 4096, SN_DTYPE_FLOAT32, 132, A, 0, &oc),
            size_t(213008 + 4 * (4096 + 2 * 32 + 512)));
  rows_are(13, 0, 19, 0);
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(4096, 16384, SN_DTYPE_BFLOAT16, 132, A, 0, &oc), 0u);
  EXPECT_EQ(oc.smem_rows + oc.reg_rows + oc.stream_rows + oc.w_bytes, 0);
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(4096, 16384, SN_DTYPE_FLOAT32, 132, A, 0, &oc), 0u);
  // Streamed rows of at most 1024 packs: 4100 fp32 columns (1025) are not, nor rows of no whole pack.
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(4096, 4100, SN_DTYPE_FLOAT32, 132, A, 0, &oc), 0u);
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(4096, 4095, SN_DTYPE_FLOAT32, 132, A, 0, &oc), 0u);
  // rows_cap (tests): 1000 × 1024 fp32, 8 rows a block, 2 in shared memory and 6 in registers; with
  // w = 1023 (no whole packs), or 14 rows to put in registers (2 × 3 < 16 to stream), none; 1024
  // packs of bf16 a row, 4 rows in shared memory of 5: the fifth streamed.
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(1000, 1024, SN_DTYPE_FLOAT32, 132, A, 2, &oc), size_t(8208 + 4 * (1024 + 2 * 8 + 512)));
  EXPECT_EQ(oc.smem_rows, 2);
  EXPECT_EQ(oc.reg_rows, 6);
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(1000, 1023, SN_DTYPE_FLOAT32, 132, A, 2, &oc), 0u);
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(2000, 1024, SN_DTYPE_FLOAT32, 132, A, 2, &oc), 0u);
  EXPECT_GT(sn_cuda_on_chip_grid_layout(600, 8192, SN_DTYPE_BFLOAT16, 132, A, 4, &oc), 0u);
  rows_are(4, 0, 1, 0);
  EXPECT_GT(sn_cuda_on_chip_grid_layout(600, 4096, SN_DTYPE_BFLOAT16, 132, A, 4, &oc), 0u);
  EXPECT_EQ(oc.reg_rows, 1);
  EXPECT_EQ(oc.stream_rows, 0);
  // A third of the rows in shared memory at least: 700 × 4096 fp32 (6 rows a block) streams 4 with
  // 2 in shared memory, not 5 with 1.
  EXPECT_GT(sn_cuda_on_chip_grid_layout(700, 4096, SN_DTYPE_FLOAT32, 132, A, 2, &oc), 0u);
  EXPECT_EQ(oc.stream_rows, 4);
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(700, 4096, SN_DTYPE_FLOAT32, 132, A, 1, &oc), 0u);
  // At most 7 rows in registers: 9 rows a block with 2 in shared memory; with 1, none (8 rows too
  // many for the registers, and 1 × 3 < 9 to stream them).
  EXPECT_GT(sn_cuda_on_chip_grid_layout(1188, 1024, SN_DTYPE_FLOAT32, 132, A, 2, &oc), 0u);
  EXPECT_EQ(oc.reg_rows, 7);
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(1188, 1024, SN_DTYPE_FLOAT32, 132, A, 1, &oc), 0u);
  // Narrow and odd: 1000 × 1 over 132 blocks (8 rows of 4 bytes); 7 × 13 fp16 over 7 (a row of 26).
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(1000, 1, SN_DTYPE_FLOAT32, 132, A, 0, &oc), size_t(48 + 4 * (4 + 2 * 8 + 512)));
  EXPECT_EQ(oc.rows4, 8);
  EXPECT_EQ(oc.packed, 0) << "no whole pack";
  // Whole packs but narrow rows (below 256 elements) without rows in registers: generic; with: packed.
  EXPECT_GT(sn_cuda_on_chip_grid_layout(1000, 64, SN_DTYPE_FLOAT32, 132, A, 0, &oc), 0u);
  EXPECT_EQ(oc.packed, 0);
  EXPECT_GT(sn_cuda_on_chip_grid_layout(1000, 64, SN_DTYPE_FLOAT32, 132, A, 2, &oc), 0u);
  EXPECT_EQ(oc.reg_rows, 6);
  EXPECT_EQ(oc.packed, 1);
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(7, 13, SN_DTYPE_FLOAT16, 7, A, 0, &oc), size_t(48 + 4 * (16 + 2 * 4 + 512)));
  EXPECT_EQ(oc.smem_rows, 1);
  // 1024 packs of bf16 a row, all in shared memory: not packed (more packs than threads).
  EXPECT_GT(sn_cuda_on_chip_grid_layout(132, 8192, SN_DTYPE_BFLOAT16, 132, A, 0, &oc), 0u);
  EXPECT_EQ(oc.packed, 0);
  for (const auto &bad : {std::vector<int64_t>{0, 5, 1}, std::vector<int64_t>{5, 0, 1}, std::vector<int64_t>{5, 5, 0},
                          std::vector<int64_t>{5, 5, 6}, std::vector<int64_t>{1 << 20, 1 << 20, 132}}) {
    oc.w_bytes = oc.w4 = oc.rows4 = oc.smem_rows = oc.reg_rows = oc.stream_rows = oc.packed = 7;
    EXPECT_EQ(sn_cuda_on_chip_grid_layout(bad[0], bad[1], SN_DTYPE_FLOAT32, int(bad[2]), A, 0, &oc), 0u)
        << bad[0] << " x " << bad[1] << " over " << bad[2];
    EXPECT_EQ(oc.w_bytes + oc.w4 + oc.rows4 + oc.smem_rows + oc.reg_rows + oc.stream_rows + oc.packed, 0);
  }
  EXPECT_EQ(sn_cuda_on_chip_grid_layout(100, 100, SN_DTYPE_FLOAT32, 10, 100, 0, &oc), 0u) << "100 bytes";
  // What the kernel relies on: its split h·r/G .. h·(r+1)/G gives no block more rows than shared
  // memory, registers and streaming take together, t and u hold them all, the rows region holds the
  // shared-memory rows' bytes from any offset below 16, and never both rows in registers and
  // streamed ones.
  for (int64_t h : {1, 7, 131, 132, 133, 1000, 4097})
    for (int G : {1, 7, 132}) {
      if (G > h) continue;
      int64_t most = 0;
      for (int64_t r = 0; r < G; ++r) most = std::max(most, h * (r + 1) / G - h * r / G);
      for (sn_dtype_t dt : {SN_DTYPE_FLOAT32, SN_DTYPE_BFLOAT16}) {
        for (int cap : {0, 3}) {
          const int64_t w = 64;
          if (sn_cuda_on_chip_grid_layout(h, w, dt, G, A, cap, &oc) == 0) {
            EXPECT_GT(most - cap, 7) << h << " rows over " << G << ": only where registers cannot take the rest";
            continue;
          }
          EXPECT_GE(oc.smem_rows + oc.reg_rows + oc.stream_rows, most) << h << " rows over " << G;
          EXPECT_TRUE(oc.reg_rows == 0 || oc.stream_rows == 0);
          EXPECT_GE(oc.smem_rows * 3, oc.smem_rows + oc.stream_rows) << "a third on chip at least";
          EXPECT_GE(oc.rows4, most);
          EXPECT_GE(int64_t(oc.w_bytes), 15 + oc.smem_rows * w * int64_t(sn_dtype_size(dt)));
          EXPECT_GE(oc.w4, w);
        }
      }
    }
}

// The backward of layers a and b, which hold the same state (fp32, no norm bound, no γ), on the
// weight W with a fresh G: one launch of the grid's backward kernel (op_onchip_grid); dW against
// G / σ − (⟨G, W⟩ / σ²) u vᵀ computed in double from the state (M[i, a·B + b] at W[(a·h + i)·B + b]
// for the layer's view A × h × B), to fp32 rounding (relative to dW's largest entry), and ∂L/∂γ
// against ⟨G, W⟩ / σ; bitwise against b's, and in place (dW = G) the same bits.
static void expect_grid_backward_matches_state(Rng &rng, sn_layer_t *a, sn_layer_t *b, const DevBuf &W) {
  const State s = get_state(a);
  ASSERT_TRUE(same_state(s, get_state(b)));
  const sn_view_t vw = a->view;
  const size_t h = s.u.size(), n = h * s.v.size();
  DevBuf G(n), d1(n), d2(n);
  const std::vector<float> g = rng.normals(static_cast<int64_t>(n)), wv = W.download();
  G.upload(g);
  const std::vector<std::string> names =
      captured_kernels([&](cudaStream_t st) { return sn_backward(a, W.p, G.p, d1.p, 0, nullptr, st); });
  EXPECT_EQ(names.size(), 1u);
  EXPECT_TRUE(any_matches(names, "on_chip_grid_backward_kernel")) << ::testing::PrintToString(names);
  DevBuf dgamma(2);
  ASSERT_EQ(sn_backward(a, W.p, G.p, d1.p, 0, dgamma.p, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_backward(b, W.p, G.p, d2.p, 0, dgamma.p + 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  const std::vector<float> got = d1.download(), dg = dgamma.download();
  EXPECT_TRUE(bitwise_equal(got, d2.download())) << "bitwise against a second layer";
  EXPECT_EQ(std::memcmp(&dg[0], &dg[1], 4), 0) << dg[0] << " against " << dg[1];
  double gw = 0, mag = 0;
  for (size_t k = 0; k < n; ++k) {
    gw += double(g[k]) * double(wv[k]);
    mag += std::fabs(double(g[k]) * double(wv[k]));
  }
  const double sig = s.sigma, coef = gw / (sig * sig);
  // ∂L/∂γ = ⟨G, W⟩ / σ: the grid's sum of ⟨G, W⟩, to rounding relative to Σ |G W| (dW's σ term
  // alone is too small a part of dW on large layers to check it).
  EXPECT_NEAR(dg[0], gw / sig, 1e-5 * mag / sig);
  double worst = 0, largest = 0;
  for (int64_t q = 0; q < vw.A; ++q) {
    for (int64_t i = 0; i < vw.h; ++i) {
      for (int64_t r = 0; r < vw.B; ++r) {
        const size_t k = static_cast<size_t>((q * vw.h + i) * vw.B + r), j = static_cast<size_t>(q * vw.B + r);
        const double ref = double(g[k]) / sig - coef * double(s.u[size_t(i)]) * double(s.v[j]);
        worst = std::max(worst, std::fabs(double(got[k]) - ref));
        largest = std::max(largest, std::fabs(ref));
      }
    }
  }
  EXPECT_LE(worst, 1e-5 * largest) << "sigma " << sig << ", <G, W> " << gw;
  ASSERT_EQ(sn_backward(a, W.p, G.p, G.p, 0, nullptr, nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_TRUE(bitwise_equal(G.download(), got)) << "in place (dW = G)";
}

// A layer on chip over the grid (SPECNORM_TUNE=op_onchip_grid=knob; op_onchip=0 keeps the small
// ones off the cluster path) against the CPU backend step by step on odd shapes: h below, at and
// above the multiprocessor count, w = 1, rows narrower than 32, widths not multiples of 4 or 32, W
// off 16-byte alignment, 1-3 iterations, v-first layers with dim −1 (as their Mᵀ); a training
// forward and a scale-only one are one launch of its kernel, an eval forward too with knob 2 (not
// with 1); bitwise reproducible, in place too; and its backward (expect_grid_backward_matches_state).
static void expect_on_chip_grid_layers_match_cpu(int knob) {
  SN_SEEDED_RNG();
  ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + "op_onchip=0,op_onchip_grid=" + std::to_string(knob)).c_str());
  const Case cases[] = {Case{{1, 1}, 0, SN_ORDER_U_FIRST, 1},       Case{{1, 1000}, 0, SN_ORDER_U_FIRST, 1},
                        Case{{1000, 1}, 0, SN_ORDER_U_FIRST, 1},    Case{{7, 13}, 0, SN_ORDER_U_FIRST, 1},
                        Case{{257, 1023}, 0, SN_ORDER_U_FIRST, 2},  Case{{128, 128, 3, 3}, 0, SN_ORDER_U_FIRST, 1},
                        Case{{300, 517}, 0, SN_ORDER_U_FIRST, 3},   Case{{20000, 27}, 0, SN_ORDER_U_FIRST, 1},
                        Case{{90, 16}, 0, SN_ORDER_U_FIRST, 2},     Case{{1, 5, 64}, 1, SN_ORDER_U_FIRST, 1},
                        Case{{1000, 4099}, 0, SN_ORDER_U_FIRST, 1}, Case{{2048, 2048}, 0, SN_ORDER_U_FIRST, 1},
                        // more rows than multiprocessors, fewer columns (most blocks without a
                        // column slice), 3 iterations; Flax's and Haiku's eps (SN_EPS_ADD_SQUARED)
                        Case{{1000, 5}, 0, SN_ORDER_U_FIRST, 3},
                        Case{{300, 517}, 0, SN_ORDER_U_FIRST, 2, SN_ALGO_DEFAULT, 1e-2f},
                        // v-first with dim −1 (Keras', Flax's and Haiku's kernels: M's columns
                        // contiguous), run as the u-first iteration on Mᵀ: a dense kernel, a
                        // convolution's (kh, kw, in, out), 1 × N and N × 1, 12 rows a block (not
                        // 2048² again: the sanitizers run these), Flax's eps
                        Case{{300, 517}, -1, SN_ORDER_V_FIRST, 2},  Case{{3, 3, 64, 96}, -1, SN_ORDER_V_FIRST, 1},
                        Case{{1, 1000}, -1, SN_ORDER_V_FIRST, 1},   Case{{1000, 1}, -1, SN_ORDER_V_FIRST, 1},
                        Case{{1536, 1024}, -1, SN_ORDER_V_FIRST, 1},
                        Case{{517, 300}, -1, SN_ORDER_V_FIRST, 3, SN_ALGO_DEFAULT, 1e-2f}};
  int ran = 0;
  for (const Case &c : cases) {
    SCOPED_TRACE(case_name(c));
    const int64_t n = numel_of(c.shape);
    sn_layer_desc_t d = make_desc(c.shape, SN_BACKEND_CUDA, c.dim);
    d.order = c.order;
    d.n_power_iterations = c.iters;
    if (c.add_eps > 0.f) {
      d.eps_mode = SN_EPS_ADD_SQUARED;
      d.eps = c.add_eps;
    }
    LayerPtr a(d), b(d);
    ASSERT_TRUE(a.p && b.p) << sn_last_error_message();
    const sn_on_chip_t oc = a.p->plan.onchip;
    if (n * 4 <= 32768) {
      EXPECT_GT(oc.grid, 0) << "32 KB fit any device's shared memory";
    }
    if (oc.grid == 0) continue;
    EXPECT_EQ(oc.transposed, c.order == SN_ORDER_V_FIRST ? 1 : 0);
    EXPECT_EQ(oc.grid, std::min<int64_t>(a.p->plan.sm_count, sn_on_grid_view(&a.p->plan).h));
    EXPECT_EQ(oc.backward, 1);
    ran += 1;
    compare_backends(c, rng, 4, 2);
    compare_backends(c, rng, 4, 2, 1);
    DevBuf dW(static_cast<size_t>(n)), o1(static_cast<size_t>(n)), o2(static_cast<size_t>(n));
    dW.upload(gapped_weight(rng, c.shape, c.dim));
    ASSERT_EQ(sn_layer_warmup(a, dW.p, nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_layer_warmup(b, dW.p, nullptr), SN_SUCCESS) << sn_last_error_message();
    const std::vector<std::string> kt =
        captured_kernels([&](cudaStream_t s) { return sn_forward(a, dW.p, o1.p, 1, s); });
    const std::vector<std::string> ks =
        captured_kernels([&](cudaStream_t s) { return sn_forward_scale_only(a, dW.p, 1, s); });
    const std::vector<std::string> ke =
        captured_kernels([&](cudaStream_t s) { return sn_forward(a, dW.p, o1.p, 0, s); });
    EXPECT_EQ(kt.size(), 1u);
    EXPECT_TRUE(any_matches(kt, "on_chip_grid_kernel")) << ::testing::PrintToString(kt);
    EXPECT_EQ(ks.size(), 1u);
    EXPECT_TRUE(any_matches(ks, "on_chip_grid_kernel")) << ::testing::PrintToString(ks);
    if (knob == 2) {
      EXPECT_EQ(ke.size(), 1u);
      EXPECT_TRUE(any_matches(ke, "on_chip_grid_kernel")) << ::testing::PrintToString(ke);
    } else {
      EXPECT_FALSE(any_matches(ke, "on_chip")) << ::testing::PrintToString(ke);
    }
    for (int step = 0; step < 3; ++step) {
      const int training = step < 2;
      ASSERT_EQ(sn_forward(a, dW.p, o1.p, training, nullptr), SN_SUCCESS) << sn_last_error_message();
      ASSERT_EQ(sn_forward(b, dW.p, o2.p, training, nullptr), SN_SUCCESS) << sn_last_error_message();
      EXPECT_TRUE(same_state(get_state(a), get_state(b))) << "step " << step;
      EXPECT_TRUE(bitwise_equal(o1.download(), o2.download())) << "step " << step;
    }
    // In place (W_sn = W): the bits of the forward into another buffer.
    const std::vector<float> w0 = dW.download();
    ASSERT_EQ(sn_forward(b, dW.p, o2.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_forward(a, dW.p, dW.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
    EXPECT_TRUE(same_state(get_state(a), get_state(b)));
    EXPECT_TRUE(bitwise_equal(dW.download(), o2.download())) << "in place";
    EXPECT_FALSE(bitwise_equal(dW.download(), w0));
    ASSERT_NO_FATAL_FAILURE(expect_grid_backward_matches_state(rng, a, b, dW));
  }
  EXPECT_GT(ran, 0);
}

TEST(Gpu, OnChipGridLayerMatchesTheCpuBackend) {
  REQUIRE_GPU();
  if (!cooperative_launch_here()) GTEST_SKIP() << "no cooperative launch on this device";
  expect_on_chip_grid_layers_match_cpu(1);
}

// With op_onchip_grid=2 the eval forward on the grid too (σ = uᵀ M v in one launch).
TEST(Gpu, OnChipGridLayerWithEvalMatchesTheCpuBackend) {
  REQUIRE_GPU();
  if (!cooperative_launch_here()) GTEST_SKIP() << "no cooperative launch on this device";
  expect_on_chip_grid_layers_match_cpu(2);
}

// Under op_onchip_grid=1, layers it does not take keep their kernels: the v-first order, a layer
// that asks for two passes, a view with A > 1 (dim 1), a 1-D weight, and a layer the cluster path
// takes (op_onchip=1). A refused grid launch (onchip_refuse=1: 1024 times the blocks that can be
// resident, refused with cudaErrorCooperativeLaunchTooLarge) drops the layer to its usual kernels
// for good: eagerly at once, bit for bit what a layer created without the knob computes (a forward
// refused, and a backward refused first); during a capture with SN_ERROR_CUDA, saying to capture
// again.
TEST(Gpu, OnChipGridLayerLeavesOthersAndFallsBack) {
  REQUIRE_GPU();
  if (!cooperative_launch_here()) GTEST_SKIP() << "no cooperative launch on this device";
  SN_SEEDED_RNG();
  const std::string base = tune_prefix();
  ASSERT_NO_FATAL_FAILURE(expect_not_on_chip(rng, base + "op_onchip=0,op_onchip_grid=1", make_desc({300}, SN_BACKEND_CUDA),
                                             "on_chip_grid_kernel"));
  if (sn_cuda_clusters_usable()) {
    ScopedEnv env("SPECNORM_TUNE", (base + "op_onchip=1,op_onchip_grid=1").c_str());
    LayerPtr l(make_desc({64, 100}, SN_BACKEND_CUDA));
    ASSERT_TRUE(l.p);
    EXPECT_GT(l.p->plan.onchip.cluster, 0);
    EXPECT_EQ(l.p->plan.onchip.grid, 0) << "the cluster path first";
  }
  sn_layer_desc_t d = make_desc({128, 1152}, SN_BACKEND_CUDA);  // 590 KB: fits any device's grid
  d.seed = 7;
  ASSERT_NO_FATAL_FAILURE(expect_refused_launch_falls_back(
      rng, d, base + "op_onchip=0", base + "op_onchip=0,op_onchip_grid=1,onchip_refuse=1", "on_chip_grid_kernel"));
  // With the eval forward on the grid too (op_onchip_grid=2), an eval refused first.
  ASSERT_NO_FATAL_FAILURE(expect_refused_launch_falls_back(rng, d, base + "op_onchip=0",
                                                           base + "op_onchip=0,op_onchip_grid=2,onchip_refuse=1",
                                                           "on_chip_grid_kernel", {1, 0, 1}));
  // A backward on the grid refused first.
  ASSERT_NO_FATAL_FAILURE(expect_refused_backward_falls_back(rng, d, base + "op_onchip=0",
                                                             base + "op_onchip=0,op_onchip_grid=1,onchip_refuse=1"));
  // A v-first layer with dim −1 (the grid runs its Mᵀ), its forward and its backward refused.
  sn_layer_desc_t dv = make_desc({128, 1152}, SN_BACKEND_CUDA, -1);
  dv.order = SN_ORDER_V_FIRST;
  dv.seed = 7;
  ASSERT_NO_FATAL_FAILURE(expect_refused_launch_falls_back(
      rng, dv, base + "op_onchip=0", base + "op_onchip=0,op_onchip_grid=1,onchip_refuse=1", "on_chip_grid_kernel"));
  ASSERT_NO_FATAL_FAILURE(expect_refused_backward_falls_back(rng, dv, base + "op_onchip=0",
                                                             base + "op_onchip=0,op_onchip_grid=1,onchip_refuse=1"));
}

// Without SPECNORM_TUNE's op_onchip, on a device with clusters, a small warmed-up layer's training
// forwards (with W_sn and scale only) run on chip (cuda/forward.cu, sn_cuda_layer_on_chip_modes)
// up to 160K elements, in blocks of 256 threads below 64K elements and 512 from there; its eval
// forward and its backward keep the usual kernels. Read from graph captures in fp32 and bf16; the
// results against the CPU backend step by step (training and eval; scale only).
TEST(Gpu, SmallLayersTrainOnChipByDefault) {
  REQUIRE_GPU();
  const char *tune = std::getenv("SPECNORM_TUNE");
  if (tune && (std::strstr(tune, "op_onchip") || std::strstr(tune, "onchip_threads=") || std::strstr(tune, "onchip_refuse=")))
    GTEST_SKIP() << "SPECNORM_TUNE sets op_onchip, onchip_threads or onchip_refuse: " << tune;
  SN_SEEDED_RNG();
  const bool clusters = sn_cuda_clusters_usable() != 0;
  const std::vector<std::vector<int64_t>> shapes = {{1, 1},     {1000, 1},          {7, 13},    {64, 3, 3, 3},
                                                    {64, 1000}, {128, 128, 3, 3},   {160, 1024}, {161, 1024},
                                                    {128, 2048}, {320, 1024},       {321, 1024}, {256, 2304}};
  int on_chip = 0;
  for (const auto &shape : shapes) {
    const int64_t n = numel_of(shape);
    for (sn_dtype_t dt : {SN_DTYPE_FLOAT32, SN_DTYPE_BFLOAT16}) {
      SCOPED_TRACE(shape_str(shape) + " dtype " + std::to_string(int(dt)));
      sn_layer_desc_t d = make_desc(shape, SN_BACKEND_CUDA);
      d.dtype = dt;
      LayerPtr l(d);
      ASSERT_TRUE(l.p) << sn_last_error_message();
      const bool fits = l.p->plan.onchip.cluster > 0;
      const bool train = clusters && fits && n <= 160 * 1024, scale = train;
      if (fits) {  // the preferred count, which SN-GAN's and these sizes get on an H100 or H200
        EXPECT_EQ(l.p->plan.onchip.threads, n < 64 * 1024 ? 256 : 512);
      }
      if (clusters && n * 4 <= 32768) {
        EXPECT_TRUE(fits) << "32 KB and 4096 columns fit any device's shared memory";
      }
      Tensor W(dt, n), O(dt, n), G(dt, n), dWt(dt, n);
      W.set(rng.normals(n));
      G.set(rng.normals(n));
      ASSERT_EQ(sn_layer_warmup(l, W.dev, nullptr), SN_SUCCESS) << sn_last_error_message();
      const std::string kernel = "group_on_chip_kernel<" + std::to_string(l.p->plan.onchip.threads) + ">";
      const std::vector<std::string> kt =
          captured_kernels([&](cudaStream_t s) { return sn_forward(l, W.dev, O.dev, 1, (sn_stream_t)s); });
      const std::vector<std::string> ks =
          captured_kernels([&](cudaStream_t s) { return sn_forward_scale_only(l, W.dev, 1, (sn_stream_t)s); });
      const std::vector<std::string> ke =
          captured_kernels([&](cudaStream_t s) { return sn_forward(l, W.dev, O.dev, 0, (sn_stream_t)s); });
      const std::vector<std::string> kb = captured_kernels(
          [&](cudaStream_t s) { return sn_backward(l, W.dev, G.dev, dWt.dev, 0, nullptr, (sn_stream_t)s); });
      for (const auto *k : {&kt, &ks, &ke, &kb}) EXPECT_FALSE(k->empty());
      EXPECT_EQ(any_matches(kt, kernel), train) << ::testing::PrintToString(kt);
      EXPECT_EQ(any_matches(kt, "on_chip"), train) << ::testing::PrintToString(kt);
      EXPECT_EQ(any_matches(ks, kernel), scale) << ::testing::PrintToString(ks);
      EXPECT_EQ(any_matches(ks, "on_chip"), scale) << ::testing::PrintToString(ks);
      EXPECT_FALSE(any_matches(ke, "on_chip")) << ::testing::PrintToString(ke);
      EXPECT_FALSE(any_matches(kb, "on_chip")) << ::testing::PrintToString(kb);
      if (train) {
        EXPECT_EQ(kt.size(), 1u);
      }
      on_chip += scale ? 1 : 0;
      if (dt != SN_DTYPE_FLOAT32) continue;
      // fp32: training and eval steps against the CPU backend, then scale-only steps.
      compare_backends(Case{shape, 0, SN_ORDER_U_FIRST, 1}, rng, 4, 2);
      sn_layer_desc_t dc = d;
      dc.backend = SN_BACKEND_CPU;
      d.seed = dc.seed = rng.gen();
      LayerPtr g(d), cpu(dc);
      ASSERT_TRUE(g.p && cpu.p);
      std::vector<float> Wh = gapped_weight(rng, shape, 0);
      DevBuf dW(static_cast<size_t>(n));
      for (int step = 0; step < 3; ++step) {
        SCOPED_TRACE("scale only, step " + std::to_string(step));
        if (step > 0)
          for (auto &x : Wh) x += 0.01f * rng.normal() / std::sqrt(float(n));
        dW.upload(Wh);
        ASSERT_EQ(sn_forward_scale_only(g, dW.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
        ASSERT_EQ(sn_forward_scale_only(cpu, Wh.data(), 1, nullptr), SN_SUCCESS) << sn_last_error_message();
        expect_state_and_scale_near(g, cpu, 2e-5);
      }
    }
  }
  if (clusters) {
    EXPECT_GT(on_chip, 0);
  }
}

TEST(Gpu, CapturingTheFirstForwardIsRefused) {
  REQUIRE_GPU();
  const int64_t h = 16, w = 8;
  LayerPtr l(make_desc({h, w}, SN_BACKEND_CUDA));
  DevBuf dW(static_cast<size_t>(h * w)), o(static_cast<size_t>(h * w));
  SN_SEEDED_RNG();
  dW.upload(rng.normals(h * w));
  const State before = get_state(l);
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  EXPECT_EQ(sn_forward(l, dW.p, o.p, 1, s), SN_ERROR_INVALID_STATE);
  EXPECT_NE(std::string(sn_last_error_message()).find("sn_layer_warmup"), std::string::npos);
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  if (graph) cudaGraphDestroy(graph);
  EXPECT_TRUE(same_state(get_state(l, s), before));
  cudaStreamDestroy(s);
}

TEST(Gpu, WrongKindOfMemoryIsRejected) {
  REQUIRE_GPU();
  const int64_t h = 6, w = 5;
  LayerPtr g(make_desc({h, w}, SN_BACKEND_CUDA)), c(make_desc({h, w}, SN_BACKEND_CPU));
  std::vector<float> host(static_cast<size_t>(h * w), 1.f), host_out(static_cast<size_t>(h * w));
  DevBuf dW(static_cast<size_t>(h * w)), o(static_cast<size_t>(h * w));
  dW.upload(host);
  const State before = get_state(g);
  EXPECT_EQ(sn_forward(g, host.data(), o.p, 1, nullptr), SN_ERROR_INVALID_POINTER);
  EXPECT_NE(std::string(sn_last_error_message()).find("W "), std::string::npos) << sn_last_error_message();
  EXPECT_EQ(sn_forward(g, dW.p, host_out.data(), 1, nullptr), SN_ERROR_INVALID_POINTER);
  EXPECT_NE(std::string(sn_last_error_message()).find("W_sn"), std::string::npos);
  EXPECT_EQ(sn_forward(c, dW.p, host_out.data(), 1, nullptr), SN_ERROR_INVALID_POINTER);
  EXPECT_TRUE(same_state(get_state(g), before));
  // A warm-up with nothing to do (a 1-D weight; no warm-up iterations) checks W all the same.
  LayerPtr g1(make_desc({h}, SN_BACKEND_CUDA));
  sn_layer_desc_t d0 = make_desc({h, w}, SN_BACKEND_CUDA);
  d0.warmup_iterations = 0;
  LayerPtr g0(d0);
  EXPECT_EQ(sn_layer_warmup(g1, host.data(), nullptr), SN_ERROR_INVALID_POINTER);
  EXPECT_EQ(sn_layer_warmup(g0, host.data(), nullptr), SN_ERROR_INVALID_POINTER);
  EXPECT_EQ(sn_layer_warmup(c, dW.p, nullptr), SN_ERROR_INVALID_POINTER);
  EXPECT_EQ(sn_layer_warmup(g0, dW.p, nullptr), SN_SUCCESS) << sn_last_error_message();
}

// An error the caller's own code left pending (a failed runtime call it did not check) is neither
// taken for a failed launch of ours nor cleared: every launch reports its own status. Both for the
// defaults and for the launches without PDL (pdl=0, as on an A100).
TEST(Gpu, CallersPendingErrorIsNotOurs) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  for (const char *tune : {"", "pdl=0"}) {
    SCOPED_TRACE(std::string("SPECNORM_TUNE ") + tune);
    ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + tune).c_str());
    for (const std::vector<int64_t> &shape : {std::vector<int64_t>{4096, 1024}, std::vector<int64_t>{33, 65}}) {
      sn_layer_desc_t d = make_desc(shape, SN_BACKEND_CUDA);
      LayerPtr l(d);
      const int64_t n = numel_of(shape);
      DevBuf W(static_cast<size_t>(n)), out(static_cast<size_t>(n));
      W.upload(rng.normals(n, 0.02f));
      ASSERT_EQ(sn_layer_warmup(l, W.p, nullptr), SN_SUCCESS) << sn_last_error_message();
      for (int training : {1, 0}) {
        float dummy = 0.f;
        ASSERT_EQ(cudaMemcpy(&dummy, &dummy, 4, cudaMemcpyKind(99)), cudaErrorInvalidMemcpyDirection);
        EXPECT_EQ(sn_forward(l, W.p, out.p, training, nullptr), SN_SUCCESS) << sn_last_error_message();
        EXPECT_EQ(sn_forward_scale_only(l, W.p, training, nullptr), SN_SUCCESS) << sn_last_error_message();
        EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidMemcpyDirection) << "the caller's error, still pending";
        EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      }
    }
  }
}

TEST(Gpu, InPlaceAndZeroWeight) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const int64_t h = 37, w = 129;
  sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CUDA);
  LayerPtr a(d), b(d);
  std::vector<float> W = gapped_matrix(rng, h, w);
  DevBuf dW(static_cast<size_t>(h * w)), inplace(static_cast<size_t>(h * w)), o(static_cast<size_t>(h * w));
  dW.upload(W);
  inplace.upload(W);
  ASSERT_EQ(sn_forward(a, dW.p, o.p, 1, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_forward(b, inplace.p, inplace.p, 1, nullptr), SN_SUCCESS);
  EXPECT_TRUE(bitwise_equal(o.download(), inplace.download()));

  // A zero W after a good step: W_sn = 0, state kept.
  const State good = get_state(a);
  DevBuf Z(static_cast<size_t>(h * w));
  CUDA_OK(cudaMemset(Z.p, 0, static_cast<size_t>(h * w) * 4));
  for (int training : {1, 0}) {
    o.poison();
    ASSERT_EQ(sn_forward(a, Z.p, o.p, training, nullptr), SN_SUCCESS);
    for (float x : o.download()) ASSERT_EQ(x, 0.f);
    EXPECT_TRUE(same_state(get_state(a), good));
  }
  // A zero W on a fresh layer: W_sn = 0, σ = 0, u and v as drawn.
  LayerPtr f(d);
  const State drawn = get_state(f);
  o.poison();
  ASSERT_EQ(sn_forward(f, Z.p, o.p, 1, nullptr), SN_SUCCESS);
  for (float x : o.download()) ASSERT_EQ(x, 0.f);
  State after = get_state(f);
  EXPECT_TRUE(bitwise_equal(after.u, drawn.u));
  EXPECT_TRUE(bitwise_equal(after.v, drawn.v));
  EXPECT_EQ(after.sigma, 0.f);
  // ... and it counts as warmed up: an eval forward takes uᵀ M v from the drawn vectors (README,
  // "Degenerate steps"); after sn_layer_reset, a warm-up on the real W and an eval forward give a
  // fresh layer's bits. (Not those of a fresh layer's eval-first forward, which takes σ with the
  // warm-up's last divisor of u: an ulp apart at times.)
  EXPECT_EQ(after.warmed, 1);
  uint32_t health = 0;
  ASSERT_EQ(sn_layer_get_health(f, &health, 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(health, uint32_t(SN_HEALTH_ZERO));
  ASSERT_EQ(sn_forward(f, dW.p, o.p, 0, nullptr), SN_SUCCESS);
  // uᵀ M v of random vectors is a sum of terms of both signs: held to 1e-5 of the sum of their
  // sizes, and its sign only where it is beyond that.
  double size = 0;
  const double uMv = u_M_v(drawn.u, W, drawn.v, &size);
  const double tol = 1e-5 * size;
  ASSERT_EQ(sn_layer_get_health(f, &health, 1, nullptr), SN_SUCCESS);
  if (uMv > tol) {
    EXPECT_NEAR(get_state(f).sigma, uMv, tol);
    EXPECT_EQ(health, 0u);
  } else if (uMv < -tol) {
    EXPECT_EQ(get_state(f).sigma, 0.f);
    EXPECT_EQ(health, uint32_t(SN_HEALTH_NEGATIVE));
  }
  ASSERT_EQ(sn_layer_reset(f, d.seed, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_warmup(f, dW.p, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_forward(f, dW.p, o.p, 0, nullptr), SN_SUCCESS);
  LayerPtr g(d);  // a fresh layer, warmed up and run alike
  DevBuf o2(static_cast<size_t>(h * w));
  ASSERT_EQ(sn_layer_warmup(g, dW.p, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_forward(g, dW.p, o2.p, 0, nullptr), SN_SUCCESS);
  EXPECT_TRUE(same_state(get_state(f), get_state(g)));
  EXPECT_TRUE(bitwise_equal(o.download(), o2.download()));
}

// An eval forward as a layer's first call runs the warm-up and then takes σ = uᵀ M v with u's
// divisor of the warm-up's last product (an eval forward of a warmed-up layer has none), on each
// path that has its own eval σ: held to the CPU backend. (compare_backends trains first; a
// mutation that dropped that divisor in the one-pass and in the two-pass eval went unseen.)
TEST(Gpu, EvalFirstForwardMatchesTheCpuBackend) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  struct EvalFirst {
    sn_algo_t algo;
    sn_order_t order;
    const char *tune;
  };
  for (const EvalFirst &e : {EvalFirst{SN_ALGO_TWO_PASS, SN_ORDER_U_FIRST, ""},
                             EvalFirst{SN_ALGO_ONE_PASS, SN_ORDER_U_FIRST, "op_onchip=0"},
                             EvalFirst{SN_ALGO_DEFAULT, SN_ORDER_U_FIRST, ""},
                             EvalFirst{SN_ALGO_TWO_PASS, SN_ORDER_V_FIRST, ""},
                             EvalFirst{SN_ALGO_ONE_PASS, SN_ORDER_V_FIRST, "op_onchip=0"},
                             EvalFirst{SN_ALGO_DEFAULT, SN_ORDER_V_FIRST, ""}}) {
    ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + e.tune).c_str());
    for (const std::vector<int64_t> &shape : {std::vector<int64_t>{64, 48}, std::vector<int64_t>{300, 516}}) {
      SCOPED_TRACE(std::string("algo ") + std::to_string(int(e.algo)) + (e.order == SN_ORDER_V_FIRST ? " v-first " : " u-first ") +
                   e.tune + " " + shape_str(shape));
      sn_layer_desc_t dg = make_desc(shape, SN_BACKEND_CUDA);
      dg.algo = e.algo;
      dg.order = e.order;
      dg.seed = rng.gen();
      sn_layer_desc_t dc = dg;
      dc.backend = SN_BACKEND_CPU;
      LayerPtr g(dg), cpu(dc);
      ASSERT_TRUE(g.p && cpu.p) << sn_last_error_message();
      const int64_t n = numel_of(shape);
      const std::vector<float> W = gapped_matrix(rng, shape[0], shape[1]);
      std::vector<float> out_cpu(static_cast<size_t>(n));
      DevBuf dW(static_cast<size_t>(n)), dOut(static_cast<size_t>(n));
      dW.upload(W);
      dOut.poison();
      ASSERT_EQ(sn_forward(g, dW.p, dOut.p, 0, nullptr), SN_SUCCESS) << sn_last_error_message();
      ASSERT_EQ(sn_forward(cpu, W.data(), out_cpu.data(), 0, nullptr), SN_SUCCESS);
      sn_paths_t paths;
      ASSERT_EQ(sn_layer_get_paths(g, &paths), SN_SUCCESS);
      SCOPED_TRACE(std::string("eval path ") + sn_path_name(paths.eval));
      const State sg = get_state(g), sc = get_state(cpu);
      EXPECT_EQ(sg.warmed, 1);
      EXPECT_NEAR(sg.sigma / sc.sigma, 1.0, 1e-5) << "sigma gpu " << sg.sigma << " cpu " << sc.sigma;
      EXPECT_LT(max_abs_diff(sg.u, sc.u), 2e-5);
      EXPECT_LT(max_abs_diff(sg.v, sc.v), 2e-5);
      EXPECT_LT(max_abs_diff(dOut.download(), out_cpu), (1e-5 + 1e-6) * max_abs(out_cpu));  // as compare_backends
    }
  }
}

// A v-first layer's restart from the all-ones vector (its iteration starts from u): after a zero
// step (u = e₀ with M's row 0 zero, so Mᵀ u = 0), and after a zero u given to set_state, the next
// training forward starts from u = ones and records SN_HEALTH_RECOVERED, as the CPU backend does,
// on each v-first path. (The Health suite's layers are u-first; a mutation that ignored the
// restart in the v-first one-pass and two-pass kernels went unseen.)
TEST(Gpu, VFirstLayersRestartFromOnesAsTheCpuBackend) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  struct Path {
    sn_algo_t algo;
    const char *tune;
  };
  const int64_t h = 40, w = 24;
  for (const Path &p : {Path{SN_ALGO_TWO_PASS, ""}, Path{SN_ALGO_ONE_PASS, "op_onchip=0"}, Path{SN_ALGO_DEFAULT, ""}}) {
    ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + p.tune).c_str());
    SCOPED_TRACE(std::string("algo ") + std::to_string(int(p.algo)) + " " + p.tune);
    sn_layer_desc_t dg = make_desc({h, w}, SN_BACKEND_CUDA);
    dg.algo = p.algo;
    dg.order = SN_ORDER_V_FIRST;
    dg.seed = rng.gen();
    sn_layer_desc_t dc = dg;
    dc.backend = SN_BACKEND_CPU;
    // Rank 1 with Mᵀ e₀ = 0: the transpose of rank1_nulling_e0's w × h matrix N (N e₀ = 0).
    std::vector<float> e0;
    double sigma_M = 0;
    const std::vector<float> N = rank1_nulling_e0(rng, w, h, &e0, &sigma_M);
    std::vector<float> M(N.size()), zero(static_cast<size_t>(h), 0.f), out_cpu(M.size());
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j) M[size_t(i * w + j)] = N[size_t(j * h + i)];
    const std::vector<float> v = rng.normals(w);
    DevBuf dW(M.size()), dOut(M.size());
    dW.upload(M);
    for (const std::vector<float> *u0 : {&e0, &zero}) {
      const bool zero_step = u0 == &e0;
      SCOPED_TRACE(zero_step ? "a zero step (Mᵀ u = 0)" : "a zero u from set_state");
      LayerPtr g(dg), cpu(dc);
      ASSERT_TRUE(g.p && cpu.p) << sn_last_error_message();
      for (sn_layer_t *l : {g.p, cpu.p})
        ASSERT_EQ(sn_layer_set_state(l, u0->data(), v.data(), 0.f, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
      // A training forward of both, and their health bits (read and cleared): the CPU's `want`.
      auto step = [&](uint32_t want) {
        ASSERT_EQ(sn_forward(g, dW.p, dOut.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
        ASSERT_EQ(sn_forward(cpu, M.data(), out_cpu.data(), 1, nullptr), SN_SUCCESS);
        uint32_t hg = 0, hc = 0;
        ASSERT_EQ(sn_layer_get_health(g, &hg, 1, nullptr), SN_SUCCESS);
        ASSERT_EQ(sn_layer_get_health(cpu, &hc, 1, nullptr), SN_SUCCESS);
        EXPECT_EQ(hc, want);
        EXPECT_EQ(hg, hc);
      };
      if (zero_step) {
        ASSERT_NO_FATAL_FAILURE(step(SN_HEALTH_ZERO));
        EXPECT_EQ(get_state(g).sigma, 0.f);
        EXPECT_TRUE(bitwise_equal(get_state(g).u, e0)) << "zero step: state kept";
      }
      ASSERT_NO_FATAL_FAILURE(step(SN_HEALTH_RECOVERED));
      const State sg = get_state(g), sc = get_state(cpu);
      EXPECT_NEAR(sc.sigma / sigma_M, 1.0, 1e-6);
      EXPECT_NEAR(sg.sigma / sc.sigma, 1.0, 1e-5);
      EXPECT_LT(max_abs_diff(sg.u, sc.u), 2e-5);
      EXPECT_LT(max_abs_diff(sg.v, sc.v), 2e-5);
    }
  }
}

TEST(Gpu, SigmaPointersAndStateTransfer) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const int64_t h = 64, w = 48;
  sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CUDA);
  LayerPtr a(d);
  DevBuf dW(static_cast<size_t>(h * w)), o(static_cast<size_t>(h * w));
  dW.upload(gapped_matrix(rng, h, w));
  ASSERT_EQ(sn_forward(a, dW.p, o.p, 1, nullptr), SN_SUCCESS);
  const float *sp = nullptr, *ip = nullptr;
  ASSERT_EQ(sn_layer_sigma_ptr(a, &sp, &ip), SN_SUCCESS);
  cudaPointerAttributes attr;
  CUDA_OK(cudaPointerGetAttributes(&attr, sp));
  EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
  float dev[2], sig = 0, inv = 0;
  CUDA_OK(cudaMemcpy(dev, sp, 8, cudaMemcpyDeviceToHost));
  ASSERT_EQ(sn_layer_get_sigma(a, &sig, &inv, nullptr), SN_SUCCESS);
  EXPECT_EQ(dev[0], sig);
  EXPECT_EQ(dev[1], inv);
  EXPECT_EQ(inv, 1.0f / sig);
  // A CPU checkpoint loaded into a CUDA layer (and back) is bitwise the same state.
  const State s = get_state(a);
  sn_layer_desc_t dc = d;
  dc.backend = SN_BACKEND_CPU;
  LayerPtr c(dc), b(d);
  ASSERT_EQ(sn_layer_set_state(c, s.u.data(), s.v.data(), s.sigma, 1, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_set_state(b, s.u.data(), s.v.data(), s.sigma, 1, nullptr), SN_SUCCESS);
  EXPECT_TRUE(same_state(get_state(b), s));
  EXPECT_TRUE(same_state(get_state(c), s));
  ASSERT_EQ(sn_layer_reset(b, 99, nullptr), SN_SUCCESS);
  dc.seed = 99;
  LayerPtr c99(dc);
  EXPECT_TRUE(same_state(get_state(b), get_state(c99))) << "both backends draw the same vectors";
}
