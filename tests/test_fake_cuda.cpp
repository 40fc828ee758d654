// The library's CUDA host code on a machine without a GPU: linked against the fake runtime of
// tests/fake_cuda (no kernel runs). These tests hold the host side to what specnorm.h promises of
// a CUDA layer or group: every launch within the device's limits and what the runtime reported,
// on every path the knobs reach; the per-step calls allocate nothing and never synchronize, also
// during a stream capture, in the documented number of launches; a failure of any runtime call is
// reported with a message, leaks nothing, leaves no CUDA error pending and leaves the layer as it
// was; the caller's current device is kept; the refusals of a launch that needs resident blocks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "fake_cuda.h"
#include "fatbin.h"
#include "probe_kernels.h"
#include "specnorm.h"
#include "test_util.h"

namespace {

using fake_cuda::Api;

// Every call that takes a stream gets this one, and the fake runtime holds the library to it
// (fake_cuda::expect_stream, set by the fixtures).
const sn_stream_t kS = fake_cuda::test_stream();

// sn_layer_create, sn_group_create and sn_group_set_gradients take no stream: they block, and
// their copies go on the legacy stream.
template <class F>
sn_status_t without_stream(F call) {
  fake_cuda::expect_any_stream();
  const sn_status_t st = call();
  fake_cuda::expect_stream(kS);
  return st;
}
sn_status_t create_layer(sn_layer_t **l, const sn_layer_desc_t *d) {
  return without_stream([&] { return sn_layer_create(l, d); });
}
sn_status_t set_gradients(sn_group_t *g, const void *const *G, void *const *dW, float *const *dgamma) {
  return without_stream([&] { return sn_group_set_gradients(g, G, dW, dgamma); });
}

// Device memory of the fake runtime (host memory; kernels do not run, so untouched pages of
// large weights cost nothing).
struct Dev {
  void *p = nullptr;
  explicit Dev(size_t bytes) { EXPECT_EQ(cudaMalloc(&p, bytes), cudaSuccess); }
  ~Dev() { (void)cudaFree(p); }
  Dev(const Dev &) = delete;
  Dev &operator=(const Dev &) = delete;
  template <class T = void>
  T *get() const {
    return static_cast<T *>(p);
  }
};

struct LayerDeleter {
  void operator()(sn_layer_t *l) const { sn_layer_destroy(l); }
};
using Layer = std::unique_ptr<sn_layer_t, LayerDeleter>;
struct GroupDeleter {
  void operator()(sn_group_t *g) const { sn_group_destroy(g); }
};
using Group = std::unique_ptr<sn_group_t, GroupDeleter>;

// SPECNORM_TUNE for the scope (the library reads it at each call that plans).
struct ScopedTune : sntest::ScopedEnv {
  explicit ScopedTune(const std::string &s)
      : sntest::ScopedEnv("SPECNORM_TUNE", s.empty() ? nullptr : s.c_str()) {}
};

struct Shape {
  std::vector<int64_t> dims;
  int dim;
};

sn_layer_desc_t make_desc(const Shape &s, sn_dtype_t dtype, sn_order_t order, sn_algo_t algo) {
  sn_layer_desc_t d;
  EXPECT_EQ(sn_layer_desc_init(&d, (int)s.dims.size(), s.dims.data()), SN_SUCCESS);
  d.dim = s.dim;
  d.dtype = dtype;
  d.order = order;
  d.algo = algo;
  return d;
}

// The status a CPU layer of this description gets at creation: a CUDA layer must get the same
// (specnorm.h: a descriptor that works on the CPU works on a GPU, and is refused alike).
sn_status_t cpu_status(sn_layer_desc_t d) {
  d.backend = SN_BACKEND_CPU;
  sn_layer_t *l = nullptr;
  const sn_status_t st = create_layer(&l, &d);
  sn_layer_destroy(l);
  return st;
}

std::string joined(const std::vector<std::string> &v) {
  std::string s;
  for (const std::string &x : v) s += "\n  " + x;
  return s;
}

// What a per-step call may do: launches only (no allocation, free, host synchronization or copy
// to or from the host), at most `most` of them, none left as a pending CUDA error, the caller's
// device kept.
struct StepWatch {
  fake_cuda::Counters before = fake_cuda::counters();
  int device = -1;
  StepWatch() { EXPECT_EQ(cudaGetDevice(&device), cudaSuccess); }
  void check(const char *what, long least, long most) const {
    SCOPED_TRACE(what);
    const fake_cuda::Counters now = fake_cuda::counters();
    EXPECT_EQ(now.mallocs, before.mallocs);
    EXPECT_EQ(now.frees, before.frees);
    EXPECT_EQ(now.syncs, before.syncs);
    EXPECT_EQ(now.memcpys, before.memcpys);
    EXPECT_EQ(now.memsets, before.memsets);
    EXPECT_GE(now.launches - before.launches, least);
    EXPECT_LE(now.launches - before.launches, most);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    int d = -1;
    EXPECT_EQ(cudaGetDevice(&d), cudaSuccess);
    EXPECT_EQ(d, device);
  }
};

#define STEP_N(call, least, most)                                              \
  do {                                                                         \
    StepWatch w_;                                                              \
    ASSERT_EQ((call), SN_SUCCESS) << #call << ": " << sn_last_error_message(); \
    w_.check(#call, least, most);                                              \
  } while (0)
#define STEP(call, most) STEP_N(call, 1, most)

#define OK(call) ASSERT_EQ((call), SN_SUCCESS) << #call << ": " << sn_last_error_message()

// A CUDA layer of `d` with W, W_sn, G and dW of its size and 16 bytes for scalars (γ, ∂L/∂γ).
struct LayerBufs {
  Layer layer;
  std::unique_ptr<Dev> W, W_sn, G, dW, scalars;
  int64_t h = 0, w = 0;
  explicit LayerBufs(const sn_layer_desc_t &d) {
    sn_layer_t *l = nullptr;
    EXPECT_EQ(create_layer(&l, &d), SN_SUCCESS) << sn_last_error_message();
    layer.reset(l);
    EXPECT_EQ(sn_layer_get_dims(l, &h, &w), SN_SUCCESS);
    const size_t bytes = (size_t)(h * w) * sn_dtype_size(d.dtype);
    W = std::make_unique<Dev>(bytes);
    W_sn = std::make_unique<Dev>(bytes);
    G = std::make_unique<Dev>(bytes);
    dW = std::make_unique<Dev>(bytes);
    scalars = std::make_unique<Dev>(16);
  }
};

// The kernels of the launches of one call (fake_cuda::launches() from `from` on), less those the
// fake refused (they did not run).
std::vector<std::string> launched_kernels(size_t from) {
  const std::vector<fake_cuda::Launch> all = fake_cuda::launches();
  std::vector<std::string> ran;
  for (size_t k = from; k < all.size(); ++k)
    if (all[k].error == cudaSuccess) ran.push_back(all[k].kernel);
  return ran;
}

// The path (sn_path_t) those launches took (sntest::path_of_kernels).
sn_path_t launched_path(size_t from, bool one_d) { return sntest::path_of_kernels(launched_kernels(from), one_d); }

// One CUDA layer through every call of the API: warm-up, training and eval forwards (with W_sn,
// in place, scale only), the backward under every flag with and without ∂L/∂γ, with γ bound, σ,
// health, state, checkpoints and reset. Per-step calls are held to StepWatch.
// `want`: the CPU layer's status at creation; `host_calls`: also the calls that only move the state
// between host and device (the same whatever SPECNORM_TUNE says).
void exercise_layer(const sn_layer_desc_t &d, sn_status_t want, bool host_calls) {
  SCOPED_TRACE("h = shape[" + std::to_string(d.dim) + "], dtype " + std::to_string(d.dtype) +
               ", order " + std::to_string(d.order) + ", algo " + std::to_string(d.algo));
  sn_layer_t *raw = nullptr;
  const sn_status_t got = create_layer(&raw, &d);
  Layer layer(raw);
  ASSERT_EQ(got, want) << sn_last_error_message();
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  if (got != SN_SUCCESS) {
    EXPECT_EQ(raw, nullptr);
    return;
  }
  int64_t h = 0, w = 0;
  OK(sn_layer_get_dims(raw, &h, &w));
  const size_t bytes = (size_t)(h * w) * sn_dtype_size(d.dtype);
  Dev W(bytes), W_sn(bytes), G(bytes), dW(bytes), scalars(16);
  float *gamma = scalars.get<float>(), *dgamma = gamma + 1;

  // Each call's recorded path (sn_layer_get_paths) against the kernels it launched.
  size_t from = 0;
  const auto mark = [&] { from = fake_cuda::launches().size(); };
  const auto took = [&](sn_path_t sn_paths_t::*kind) {
    sntest::expect_recorded_path(raw, sn_layer_get_paths, kind, launched_kernels(from), d.ndim == 1);
  };
  OK(sn_layer_warmup(raw, W.p, kS));
  mark();
  STEP(sn_forward(raw, W.p, W_sn.p, 1, kS), 8);
  took(&sn_paths_t::train);
  mark();
  STEP(sn_forward(raw, W.p, W_sn.p, 0, kS), 8);
  took(&sn_paths_t::eval);
  mark();
  STEP(sn_forward(raw, W.p, W.p, 1, kS), 8);
  took(&sn_paths_t::train);
  mark();
  STEP(sn_forward_scale_only(raw, W.p, 1, kS), 8);
  took(&sn_paths_t::scale_only);
  mark();
  STEP(sn_forward_scale_only(raw, W.p, 0, kS), 8);
  took(&sn_paths_t::eval);
  for (unsigned flags = 0; flags < 4; ++flags) {
    // specnorm.h: 2 launches, 1 when neither the σ term nor ∂L/∂γ is needed (the paths that
    // run on chip take 1 either way).
    const long most = flags & SN_BACKWARD_DETACH_SIGMA ? 1 : 2;
    mark();
    STEP_N(sn_backward(raw, W.p, G.p, dW.p, flags, nullptr, kS), 1, most);
    took(&sn_paths_t::backward);
    mark();
    STEP_N(sn_backward(raw, W.p, G.p, dW.p, flags, dgamma, kS), 1, 2);
    took(&sn_paths_t::backward);
    mark();
    STEP_N(sn_backward(raw, W.p, G.p, G.p, flags, nullptr, kS), 1, most);
    took(&sn_paths_t::backward);
  }
  // A backward through its kernels (σ's term wanted: both run), whose grids the description
  // below must give.
  mark();
  OK(sn_backward(raw, W.p, G.p, dW.p, 0, nullptr, kS));
  const std::vector<fake_cuda::Launch> all = fake_cuda::launches();
  unsigned inner_grid = 0, apply_grid = 0;
  for (size_t k = from; k < all.size(); ++k) {
    const std::string &name = all[k].kernel;
    if (name.find("group_") != std::string::npos) continue;
    if (name.find("inner_kernel<") != std::string::npos) inner_grid = all[k].grid.x;
    if (name.find("apply_elements_kernel<") != std::string::npos ||
        name.find("apply_rows_kernel<") != std::string::npos)
      apply_grid = all[k].grid.x;
  }
  // The description names the backend and the recorded paths (and makes no CUDA call).
  {
    StepWatch w;
    char text[1024];
    size_t len = 0;
    OK(sn_layer_describe(raw, text, sizeof text, &len));
    EXPECT_LT(len, sizeof text);
    sn_paths_t p;
    OK(sn_layer_get_paths(raw, &p));
    const std::string want = std::string("; paths: train ") + sn_path_name(p.train) + ", scale-only " +
                             sn_path_name(p.scale_only) + ", eval " + sn_path_name(p.eval) + ", backward " +
                             sn_path_name(p.backward);
    const std::string s = text;
    EXPECT_NE(s.find(want), std::string::npos) << s;
    EXPECT_EQ(s.rfind("cuda device 0, shape ", 0), 0u) << s;
    // ... and the plan behind them: the division, and the kernels the paths name.
    EXPECT_NE(s.find("; division "), std::string::npos) << s;
    const auto has = [&](const char *part) { return s.find(part) != std::string::npos; };
    const std::pair<sn_path_t, const char *> said[] = {
        {SN_PATH_ONE_PASS_ROWS, "; one pass by rows: "}, {SN_PATH_ONE_PASS_COOP, ", cooperative in "},
        {SN_PATH_ONE_PASS_COLS, "; one pass by columns"}, {SN_PATH_ON_CHIP, "; on chip in "},
        {SN_PATH_ON_CHIP_GRID, "; on chip over a grid of "}, {SN_PATH_ONE_D, "; 1-D: "}};
    for (sn_path_t x : {p.train, p.scale_only, p.eval})
      for (const auto &[path, part] : said)
        EXPECT_TRUE(x != path || has(part)) << "path " << sn_path_name(x) << ", no \"" << part << "\" in: " << s;
    // The backward's kernels: those the backward above launched, with their grids.
    if (p.backward == SN_PATH_BACKWARD_KERNELS && d.ndim > 1) {
      ASSERT_GT(inner_grid, 0u) << "no inner kernel in the backward";
      ASSERT_GT(apply_grid, 0u) << "no apply kernel in the backward";
      const std::string want_bw = "; backward <G, W> " + std::to_string(inner_grid) + " blocks";
      EXPECT_TRUE(has(want_bw.c_str())) << want_bw << " not in: " << s;
      EXPECT_TRUE(has((" in " + std::to_string(apply_grid) + " blocks").c_str())) << apply_grid << ": " << s;
    }
    if (p.backward == SN_PATH_BACKWARD_KERNELS && d.ndim == 1) {
      EXPECT_FALSE(has("; backward <G, W>")) << s;
    }
    // A backward on chip: in the on-chip plan's own words.
    if (p.backward == SN_PATH_ON_CHIP) {
      EXPECT_TRUE(has(", backward)")) << s;
    }
    if (p.backward == SN_PATH_ON_CHIP_GRID) {
      EXPECT_TRUE(has(", backward too)")) << s;
    }
    w.check("sn_layer_describe", 0, 0);
  }
  OK(sn_layer_set_gamma(raw, gamma));
  mark();
  STEP(sn_forward(raw, W.p, W_sn.p, 1, kS), 8);
  took(&sn_paths_t::train);
  mark();
  STEP(sn_backward(raw, W.p, G.p, dW.p, 0, dgamma, kS), 2);
  took(&sn_paths_t::backward);
  OK(sn_layer_set_gamma(raw, nullptr));
  if (!host_calls) return;

  float sigma = 0, inv = 0, scale = 0;
  uint32_t health = 0;
  OK(sn_layer_get_sigma(raw, &sigma, &inv, kS));
  OK(sn_layer_get_scale(raw, &scale, kS));
  OK(sn_layer_get_health(raw, &health, 1, kS));
  std::vector<float> u((size_t)h, 0.5f), v((size_t)w, 0.25f);
  int warm = 0;
  OK(sn_layer_get_state(raw, u.data(), v.data(), &sigma, &warm, kS));
  EXPECT_EQ(warm, 1);
  OK(sn_layer_set_state(raw, u.data(), v.data(), 2.0f, 1, kS));
  size_t size = 0, written = 0;
  OK(sn_layer_checkpoint_size(raw, &size));
  std::vector<unsigned char> blob(size);
  OK(sn_layer_save(raw, blob.data(), size, &written, kS));
  OK(sn_layer_load(raw, blob.data(), written, kS));
  OK(sn_layer_reset(raw, 7, kS));
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

const std::vector<Shape> &shapes() {
  static const std::vector<Shape> s = {
      {{1}, 0},           {{7}, 0},           {{1, 1}, 0},         {{1, 9}, 0},
      {{9, 1}, 0},        {{3, 5}, 0},        {{64, 3, 3, 3}, 0},  {{3, 3, 64, 128}, -1},
      {{64, 128, 4, 4}, 1}, {{128, 1152}, 0}, {{1, 128}, 0},       {{256, 4608}, 0},
      {{512, 512}, 0},    {{1000, 1001}, 0},  {{3072, 768}, 0},    {{768, 3072}, 0},
      {{2048, 2048}, 0},  {{4096, 4096}, 0},  {{4096, 16384}, 0},  {{16384, 4096}, 0},
      {{12288, 12288}, 0}, {{4096, 3, 3, 64}, -1}, {{33, 17000}, 0}, {{17000, 33}, 0},
  };
  return s;
}

// The knobs of SPECNORM_TUNE that choose kernels, one at a time and in the pairs the GPU runs of
// bench/NOTES.md use ("" is the default). (A review compared each one's launches with the
// default's: on the A100-like device the sm_90 ones (op_coop=0, op_onchip, onchip_threads, pdl,
// op_cluster) change nothing, and op_eval_own=0 changes nothing on either under the fake's
// occupancy, where every kernel fits the same blocks; they stay, as the defaults may change.)
const std::vector<std::string> &tunes() {
  static const std::vector<std::string> t = {
      "",
      "op_onchip_grid=1",
      "op_onchip_grid=2",
      "op_onchip_grid=2,onchip_grid_rows=3",
      "op_onchip_grid=2,onchip_grid_rows=1",
      "op_pp=0",
      "op_pp=2",
      "op_pp=3",
      "op_coop=0",
      "op_coop=1",
      "op_coop=3",
      "op_onchip=0",
      "op_onchip=1",
      "onchip_threads=256",
      "onchip_threads=512",
      "pdl=0",
      "op_rows=2",
      "op_cluster=8",
      "op_bps=3",
      "op_grid=7",
      "op_reduce_cols=16",
      "op_eval_own=0",
      "div_stream=1",
      "div_prefetch=1",
      "bw_stream=0",
      "bw_grid=64",
  };
  return t;
}

// A machine of `props` for a test, or a skip when the build has no machine code for one of them
// (the fake does not compile PTX: CMAKE_CUDA_ARCHITECTURES without 80-real or 90-real).
#define FAKE_MACHINE(...)                                                                     \
  do {                                                                                        \
    const std::vector<fake_cuda::DeviceProps> machine_{__VA_ARGS__};                          \
    for (const fake_cuda::DeviceProps &d_ : machine_)                                         \
      if (!fake_cuda::has_code_for(d_))                                                       \
        GTEST_SKIP() << "the build has no sm_" << d_.major << d_.minor << " machine code";    \
    fake_cuda::reset(machine_);                                                               \
  } while (0)

class FakeCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    FAKE_MACHINE(fake_cuda::h100());
    fake_cuda::expect_stream(kS);
    live_ = fake_cuda::live_allocations();
  }
  void TearDown() override {
    fake_cuda::fail_nth(Api::kAny, 0, cudaSuccess);
    fake_cuda::set_capturing(false);
    EXPECT_TRUE(fake_cuda::violations().empty()) << joined(fake_cuda::violations());
    EXPECT_EQ(fake_cuda::live_allocations(), live_) << "device memory leaked";
  }
  long live_ = 0;
};

struct Machine {
  const char *name;
  fake_cuda::DeviceProps props;
};
void PrintTo(const Machine &m, std::ostream *os) { *os << m.name; }

class FakeCudaMachines : public FakeCuda, public ::testing::WithParamInterface<Machine> {
 protected:
  void SetUp() override {
    FAKE_MACHINE(GetParam().props);
    fake_cuda::expect_stream(kS);
    live_ = fake_cuda::live_allocations();
  }
};

INSTANTIATE_TEST_SUITE_P(Cards, FakeCudaMachines,
                         ::testing::Values(Machine{"h100", fake_cuda::h100()},
                                           Machine{"a100", fake_cuda::a100()},
                                           Machine{"a40", fake_cuda::a40()}),
                         [](const ::testing::TestParamInfo<Machine> &i) { return i.param.name; });

TEST_P(FakeCudaMachines, EveryLayerPathLaunchesWithinTheDevicesLimits) {
  std::set<std::string> kernels;
  std::vector<sn_status_t> want;  // the CPU layers' statuses, in the loops' order
  for (const std::string &t : tunes()) {
    SCOPED_TRACE("SPECNORM_TUNE=" + t);
    ScopedTune tune(t);
    size_t next = 0;
    for (const Shape &s : shapes())
      for (sn_dtype_t dtype : {SN_DTYPE_FLOAT32, SN_DTYPE_FLOAT16, SN_DTYPE_BFLOAT16})
        for (sn_order_t order : {SN_ORDER_U_FIRST, SN_ORDER_V_FIRST})
          for (sn_algo_t algo : {SN_ALGO_DEFAULT, SN_ALGO_TWO_PASS, SN_ALGO_ONE_PASS}) {
            std::string dims;
            for (int64_t x : s.dims) dims += std::to_string(x) + " ";
            SCOPED_TRACE("shape " + dims);
            const sn_layer_desc_t d = make_desc(s, dtype, order, algo);
            if (next == want.size()) want.push_back(cpu_status(d));
            exercise_layer(d, want[next++], t.empty());
            if (HasFatalFailure()) return;
            for (const fake_cuda::Launch &l : fake_cuda::launches()) kernels.insert(l.kernel);
            ASSERT_TRUE(fake_cuda::violations().empty()) << joined(fake_cuda::violations());
            fake_cuda::clear_log();
          }
  }
  // Every kernel family, every dtype: the sweep reaches them all (161 instances on sm_90 and 147 on
  // sm_80 at 2026-11-27's kernels; 163 and 160 when every kernel counted 64 registers: the rings
  // of one pack a thread and some cooperative ones on sm_80 need more registers than their plain
  // kernels, and are refused).
  EXPECT_GE(kernels.size(), GetParam().props.major >= 9 ? 150u : 100u);
}


// ---- groups ------------------------------------------------------------------------------------

struct Member {
  Shape shape;
  sn_dtype_t dtype;
  sn_order_t order;
  bool with_w_sn;
};

// SN-GAN's CIFAR-10 discriminator (bench/presets.json) in PyTorch's layout, u-first, and in Keras'
// (dim -1, v-first), and a mixed group: dtypes, orders, scale-only members, a wide layer.
std::vector<std::vector<Member>> groups() {
  const std::vector<std::vector<int64_t>> torch = {
      {128, 3, 3, 3},     {128, 128, 3, 3}, {128, 3, 1, 1},   {128, 128, 3, 3},
      {128, 128, 3, 3},   {128, 128, 1, 1}, {128, 128, 3, 3}, {128, 128, 3, 3},
      {128, 128, 3, 3},   {128, 128, 3, 3}, {1, 128}};
  std::vector<Member> a, b;
  for (const auto &d : torch) {
    a.push_back({{d, 0}, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, true});
    std::vector<int64_t> k(d.rbegin(), d.rend());  // (kw, kh, in, out): Keras' axes, reversed
    b.push_back({{k, -1}, SN_DTYPE_BFLOAT16, SN_ORDER_V_FIRST, true});
  }
  std::vector<Member> mixed = {
      {{{64, 27}, 0}, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, true},
      {{{3, 3, 64, 96}, -1}, SN_DTYPE_FLOAT16, SN_ORDER_V_FIRST, false},
      {{{1000, 4096}, 0}, SN_DTYPE_BFLOAT16, SN_ORDER_U_FIRST, true},
      {{{96, 64, 1, 1}, 0}, SN_DTYPE_FLOAT16, SN_ORDER_V_FIRST, true},
      {{{1, 5}, 0}, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, false},
      {{{7, 9}, 0}, SN_DTYPE_BFLOAT16, SN_ORDER_U_FIRST, true},
  };
  std::vector<Member> big = {
      {{{4096, 4096}, 0}, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, true},
      {{{768, 3072}, 0}, SN_DTYPE_BFLOAT16, SN_ORDER_U_FIRST, true},
  };
  return {a, b, mixed, big};
}

// A group's layers and buffers.
struct GroupRig {
  std::vector<Layer> layers;
  std::vector<sn_layer_t *> raw;
  std::vector<std::unique_ptr<Dev>> bufs;
  std::vector<const void *> W, G;
  std::vector<void *> W_sn, dW;
  std::vector<float *> dgamma;
  Group group;

  explicit GroupRig(const std::vector<Member> &ms) {
    for (const Member &m : ms) {
      sn_layer_desc_t d = make_desc(m.shape, m.dtype, m.order, SN_ALGO_DEFAULT);
      sn_layer_t *l = nullptr;
      EXPECT_EQ(create_layer(&l, &d), SN_SUCCESS) << sn_last_error_message();
      layers.emplace_back(l);
      raw.push_back(l);
      int64_t h = 0, w = 0;
      EXPECT_EQ(sn_layer_get_dims(l, &h, &w), SN_SUCCESS);
      const size_t bytes = (size_t)(h * w) * sn_dtype_size(m.dtype);
      for (int k = 0; k < 4; ++k) bufs.push_back(std::make_unique<Dev>(bytes));
      bufs.push_back(std::make_unique<Dev>(4));
      const size_t n = bufs.size();
      W.push_back(bufs[n - 5]->p);
      W_sn.push_back(m.with_w_sn ? bufs[n - 4]->p : nullptr);
      G.push_back(bufs[n - 3]->p);
      dW.push_back(bufs[n - 2]->p);
      dgamma.push_back(bufs[n - 1]->get<float>());
    }
  }
  sn_status_t create() {
    sn_group_t *g = nullptr;
    const sn_status_t st = without_stream(
        [&] { return sn_group_create(&g, raw.data(), W.data(), W_sn.data(), (int)raw.size()); });
    group.reset(g);
    return st;
  }
  sn_status_t warm() {
    for (size_t k = 0; k < raw.size(); ++k)
      if (sn_status_t st = sn_layer_warmup(raw[k], W[k], kS)) return st;
    return SN_SUCCESS;
  }
  // Warmed up, the group created, G and dW bound (no ∂L/∂γ): ready for a forward and a backward.
  sn_status_t ready() {
    sn_status_t st = warm();
    if (st == SN_SUCCESS) st = create();
    if (st == SN_SUCCESS) st = set_gradients(group.get(), G.data(), dW.data(), nullptr);
    return st;
  }
};

// (group_onchip=1 is the default spelled out; on the A100-like device the on-chip, PDL and
// onchip_threads settings change nothing.)
const std::vector<std::string> &group_tunes() {
  static const std::vector<std::string> t = {
      "",          "group_coop=0",          "group_coop=1",           "group_onchip=0",
      "group_onchip=1", "group_onchip_cluster=2", "group_onchip_cluster=8", "group_grid=7",
      "group_coop=1,group_grid_force=3", "onchip_threads=256", "pdl=0", "bw_grid=64",
  };
  return t;
}

TEST_P(FakeCudaMachines, EveryGroupPathLaunchesWithinTheDevicesLimitsAndCountsItsLaunches) {
  for (const std::string &t : group_tunes()) {
    SCOPED_TRACE("SPECNORM_TUNE=" + t);
    ScopedTune tune(t);
    int which = 0;
    for (const std::vector<Member> &ms : groups()) {
      SCOPED_TRACE("group " + std::to_string(which++));
      GroupRig r(ms);
      OK(r.warm());
      OK(r.create());
      sn_group_t *g = r.group.get();
      // Each call's recorded path (sn_group_get_paths) against the kernels it launched.
      size_t from = 0;
      const auto mark = [&] { from = fake_cuda::launches().size(); };
      const auto took = [&](sn_path_t sn_paths_t::*kind) {
        sntest::expect_recorded_path(g, sn_group_get_paths, kind, launched_kernels(from), false);
      };
      // specnorm.h: 3 launches at most for one power iteration, whatever the count of layers;
      // the backward 1 or 2. (Every group here has a member that writes a W_sn: "train".)
      mark();
      STEP(sn_group_forward(g, 1, kS), 3);
      took(&sn_paths_t::train);
      mark();
      STEP(sn_group_forward(g, 0, kS), 3);
      took(&sn_paths_t::eval);
      OK(set_gradients(g, r.G.data(), r.dW.data(), nullptr));
      for (unsigned flags = 0; flags < 4; ++flags) {
        mark();
        STEP(sn_group_backward(g, flags, kS), flags & SN_BACKWARD_DETACH_SIGMA ? 1 : 2);
        took(&sn_paths_t::backward);
      }
      OK(set_gradients(g, r.G.data(), r.dW.data(), r.dgamma.data()));
      STEP(sn_group_backward(g, 0, kS), 2);
      mark();
      STEP(sn_group_backward(g, SN_BACKWARD_DETACH_SIGMA, kS), 2);
      took(&sn_paths_t::backward);
      // In place: dW = G.
      std::vector<void *> in_place(r.G.size());
      for (size_t k = 0; k < in_place.size(); ++k) in_place[k] = const_cast<void *>(r.G[k]);
      OK(set_gradients(g, r.G.data(), in_place.data(), nullptr));
      STEP(sn_group_backward(g, SN_BACKWARD_ACCUMULATE, kS), 2);
      // The description says how the forward and backward launch, as their recorded paths do.
      {
        char text[1024];
        OK(sn_group_describe(g, text, sizeof text, nullptr));
        sn_paths_t p;
        OK(sn_group_get_paths(g, &p));
        const std::string s = text;
        EXPECT_EQ(s.find("; forward on chip") != std::string::npos, p.train == SN_PATH_ON_CHIP) << s;
        EXPECT_EQ(s.find("; forward one cooperative") != std::string::npos, p.train == SN_PATH_ONE_PASS_COOP) << s;
        EXPECT_EQ(s.find("; forward in kernels") != std::string::npos, p.train == SN_PATH_ONE_PASS_ROWS) << s;
        EXPECT_EQ(s.find("; backward one cooperative") != std::string::npos, p.backward == SN_PATH_BACKWARD_COOP) << s;
        EXPECT_EQ(s.find("; backward in kernels") != std::string::npos, p.backward == SN_PATH_BACKWARD_KERNELS) << s;
      }
      // The members record none of the group's calls (nor their own warm-ups).
      for (sn_layer_t *l : r.raw) {
        sn_paths_t p;
        OK(sn_layer_get_paths(l, &p));
        EXPECT_EQ(p.train, SN_PATH_NONE);
        EXPECT_EQ(p.eval, SN_PATH_NONE);
        EXPECT_EQ(p.backward, SN_PATH_NONE);
      }
      ASSERT_TRUE(fake_cuda::violations().empty()) << joined(fake_cuda::violations());
      fake_cuda::clear_log();
    }
  }
}

// ---- fresh random layers and groups ------------------------------------------------------------

// A dimension from 1 to about `most`, small ones as likely as large ones.
int64_t random_dim(sntest::Rng &rng, int64_t most) {
  const double x = std::uniform_real_distribution<double>(0.0, std::log((double)most))(rng.gen);
  return std::max<int64_t>(1, (int64_t)std::exp(x));
}

// Every kernel of the library has its path in the tests' table (sntest::path_of_kernel), so that
// the path checks know every kernel a call may launch: a new kernel fails here until it is added.
TEST_F(FakeCuda, EveryKernelBelongsToAPath) {
  size_t library = 0;
  for (const fake_cuda::KernelInfo &k : fake_cuda::kernel_codes()) {
    if (k.name.find("probe_") != std::string::npos) continue;  // probe_kernels.cu, arch_probe_kernel
    ++library;
    EXPECT_GE(sntest::path_of_kernel(k.name, false), 0) << k.name;
  }
  EXPECT_GT(library, 200u);
}

// The first call of each kind on a fresh layer, which runs the warm-up iterations first (so no
// on-chip launch, whose plan waits for the warm-up): a training or scale-only forward records the
// one path all its kernels took; an eval forward the path of its σ, the last kernel of a path it
// ran (its warm-up iterations may have taken another: the cooperative launch without W_sn).
TEST_P(FakeCudaMachines, FirstCallsRecordThePathOfTheirKernels) {
  for (const char *t : {"", "op_coop=1", "op_onchip=1", "op_onchip_grid=2"}) {
    SCOPED_TRACE(std::string("SPECNORM_TUNE=") + t);
    ScopedTune tune(t);
    for (const Shape &s : shapes())
      for (sn_dtype_t dtype : {SN_DTYPE_FLOAT32, SN_DTYPE_BFLOAT16})
        for (sn_order_t order : {SN_ORDER_U_FIRST, SN_ORDER_V_FIRST})
          for (sn_algo_t algo : {SN_ALGO_DEFAULT, SN_ALGO_ONE_PASS}) {
            const sn_layer_desc_t d = make_desc(s, dtype, order, algo);
            if (cpu_status(d) != SN_SUCCESS) continue;
            for (int kind = 0; kind < 4; ++kind) {  // train, scale, eval with W_sn, eval without
              SCOPED_TRACE("shape of " + std::to_string(s.dims.size()) + " dims, first " + std::to_string(s.dims[0]) +
                           ", dtype " + std::to_string(dtype) + ", order " + std::to_string(order) +
                           ", algo " + std::to_string(algo) + ", call " + std::to_string(kind));
              LayerBufs b(d);
              sn_layer_t *l = b.layer.get();
              ASSERT_NE(l, nullptr);
              fake_cuda::clear_log();
              OK(kind == 0   ? sn_forward(l, b.W->p, b.W_sn->p, 1, kS)
                 : kind == 1 ? sn_forward_scale_only(l, b.W->p, 1, kS)
                 : kind == 2 ? sn_forward(l, b.W->p, b.W_sn->p, 0, kS)
                             : sn_forward_scale_only(l, b.W->p, 0, kS));
              const std::vector<std::string> ran = launched_kernels(0);
              const std::vector<int> paths = sntest::paths_of_kernels(ran, d.ndim == 1);
              ASSERT_FALSE(paths.empty()) << joined(ran);
              for (int p : paths) ASSERT_GE(p, 0) << "a kernel the tests do not know:" << joined(ran);
              sn_paths_t rec;
              OK(sn_layer_get_paths(l, &rec));
              if (kind < 2) {
                EXPECT_EQ(kind == 0 ? rec.train : rec.scale_only, sntest::path_of_kernels(ran, d.ndim == 1))
                    << joined(ran);
              } else {
                EXPECT_EQ(rec.eval, paths.back()) << joined(ran);
              }
            }
          }
  }
}

TEST_P(FakeCudaMachines, RandomLayersTakeTheirPathsWithinTheDevicesLimits) {
  SN_SEEDED_RNG();
  for (int n = 0; n < 300; ++n) {
    std::vector<int64_t> dims;
    do {
      dims.assign((size_t)(1 + rng.gen() % 4), 0);
      for (int64_t &x : dims) x = random_dim(rng, dims.size() > 2 ? 300 : 20000);
    } while (sntest::numel_of(dims) > (int64_t{1} << 28));
    const int ndim = (int)dims.size();
    const Shape shape{dims, (int)(rng.gen() % (2 * ndim)) - ndim};
    sn_layer_desc_t d = make_desc(shape, (sn_dtype_t)(rng.gen() % 3), (sn_order_t)(rng.gen() % 2),
                                  (sn_algo_t)(rng.gen() % 3));
    d.n_power_iterations = 1 + (int)(rng.gen() % 3);
    d.warmup_iterations = (int)(rng.gen() % 4);
    if (rng.gen() % 4 == 0) d.norm_bound = 1.5f;
    if (rng.gen() % 4 == 0) d.eps_mode = SN_EPS_ADD_SQUARED;
    const std::string &t = tunes()[rng.gen() % tunes().size()];
    SCOPED_TRACE("layer " + std::to_string(n) + ": " + sntest::shape_str(dims) + " dim " +
                 std::to_string(shape.dim) + ", SPECNORM_TUNE=" + t);
    ScopedTune tune(t);
    exercise_layer(d, cpu_status(d), rng.gen() % 8 == 0);
    if (HasFatalFailure()) return;
    ASSERT_TRUE(fake_cuda::violations().empty()) << joined(fake_cuda::violations());
    fake_cuda::clear_log();
  }
}

// A random group is created on a GPU exactly when it is on the CPU (specnorm.h: the same rules),
// and then launches within the limits and the documented counts.
TEST_P(FakeCudaMachines, RandomGroupsBuildAsOnTheCpuAndLaunchWithinTheDevicesLimits) {
  SN_SEEDED_RNG();
  int built = 0, refused = 0;
  for (int n = 0; n < 60; ++n) {
    const int count = 1 + (int)(rng.gen() % 12);
    std::vector<Member> ms;
    for (int k = 0; k < count; ++k) {
      std::vector<int64_t> dims;
      int dim = 0;
      switch (rng.gen() % 4) {
        case 0: dims = {random_dim(rng, 1024), random_dim(rng, 20000)}; break;
        case 1: dims = {random_dim(rng, 256), random_dim(rng, 256), 3, 3}; dim = (int)(rng.gen() % 2); break;
        case 2: dims = {3, 3, random_dim(rng, 256), random_dim(rng, 256)}; dim = -1; break;
        default: dims = {random_dim(rng, 20000), random_dim(rng, 64)}; dim = (int)(rng.gen() % 2); break;
      }
      if (sntest::numel_of(dims) > (int64_t{1} << 22)) dims[0] = 1;
      ms.push_back({{dims, dim}, (sn_dtype_t)(rng.gen() % 3), (sn_order_t)(rng.gen() % 2),
                    rng.gen() % 5 != 0});
    }
    SCOPED_TRACE("group " + std::to_string(n) + " of " + std::to_string(count));
    // The CPU group's status, on host buffers.
    std::vector<Layer> cpu;
    std::vector<sn_layer_t *> cpu_raw;
    std::vector<std::vector<unsigned char>> host;
    std::vector<const void *> hW;
    std::vector<void *> hW_sn;
    for (const Member &m : ms) {
      sn_layer_desc_t d = make_desc(m.shape, m.dtype, m.order, SN_ALGO_DEFAULT);
      d.backend = SN_BACKEND_CPU;
      sn_layer_t *l = nullptr;
      OK(create_layer(&l, &d));
      cpu.emplace_back(l);
      cpu_raw.push_back(l);
      const size_t bytes = (size_t)sntest::numel_of(m.shape.dims) * sn_dtype_size(m.dtype);
      host.emplace_back(bytes);
      hW.push_back(host.back().data());
      host.emplace_back(m.with_w_sn ? bytes : 0);
      hW_sn.push_back(m.with_w_sn ? host.back().data() : nullptr);
    }
    sn_group_t *cg = nullptr;
    const sn_status_t want = sn_group_create(&cg, cpu_raw.data(), hW.data(), hW_sn.data(), count);
    Group cpu_group(cg);
    const std::string want_msg = sn_last_error_message();

    const std::string &t = group_tunes()[rng.gen() % group_tunes().size()];
    SCOPED_TRACE("SPECNORM_TUNE=" + t);
    ScopedTune tune(t);
    GroupRig r(ms);
    // A device whose block cannot hold v and s of the widest member (2 · 4 bytes a column of the
    // group's view: M's rows for a v-first layer), as sm_86's 99 KB, refuses a group the CPU
    // builds; within 1 KB of the limit (the kernel's static shared memory) it may.
    int64_t widest = 0;
    for (size_t k = 0; k < cpu_raw.size(); ++k) {
      int64_t h = 0, w = 0;
      OK(sn_layer_get_dims(cpu_raw[k], &h, &w));
      widest = std::max(widest, ms[k].order == SN_ORDER_U_FIRST ? w : h);
    }
    const int64_t smem = 8 * ((widest + 3) / 4 * 4), optin = GetParam().props.optin_smem;
    const sn_status_t got = r.create();
    if (want == SN_SUCCESS && smem > optin - 1024 && got == SN_ERROR_NOT_SUPPORTED) {
      EXPECT_NE(std::string(sn_last_error_message()).find("shared memory"), std::string::npos)
          << sn_last_error_message();
      ++refused;
      continue;
    }
    ASSERT_EQ(want == SN_SUCCESS && smem > optin ? SN_ERROR_NOT_SUPPORTED : want, got)
        << sn_last_error_message() << "\n(CPU: " << want_msg << ")";
    if (want != SN_SUCCESS) continue;
    ++built;
    sn_group_t *g = r.group.get();
    OK(r.warm());
    STEP(sn_group_forward(g, 1, kS), 3);
    STEP(sn_group_forward(g, 0, kS), 3);
    OK(set_gradients(g, r.G.data(), r.dW.data(), r.dgamma.data()));
    STEP(sn_group_backward(g, rng.gen() % 2, kS), 2);
    ASSERT_TRUE(fake_cuda::violations().empty()) << joined(fake_cuda::violations());
    fake_cuda::clear_log();
  }
  EXPECT_GT(built, 10);
  if (GetParam().props.optin_smem >= 8 * 16384) {
    EXPECT_EQ(refused, 0);
  }
}

// A group of a CUDA layer and a CPU layer, in either order: SN_ERROR_INVALID_BACKEND naming the
// second, no group (GroupGpu.UnsupportedMembersAreRefused checks it on a GPU; here without one, where
// a mutation that dropped the check passed every test).
TEST_F(FakeCuda, AGroupOfACudaAndACpuLayerIsRefused) {
  const sn_layer_desc_t dc = make_desc(Shape{{64, 576}, 0}, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, SN_ALGO_DEFAULT);
  LayerBufs gpu(dc);
  sn_layer_desc_t dh = dc;
  dh.backend = SN_BACKEND_CPU;
  sn_layer_t *c = nullptr;
  ASSERT_EQ(sn_layer_create(&c, &dh), SN_SUCCESS) << sn_last_error_message();
  Layer cpu(c);
  const std::vector<float> hW(static_cast<size_t>(gpu.h * gpu.w), 1.f);  // the CPU member's W, host memory
  for (const bool cpu_first : {false, true}) {
    SCOPED_TRACE(cpu_first ? "CPU layer first" : "CUDA layer first");
    sn_layer_t *members[2] = {gpu.layer.get(), c};
    const void *Ws[2] = {gpu.W->p, hW.data()};
    if (cpu_first) {
      std::swap(members[0], members[1]);
      std::swap(Ws[0], Ws[1]);
    }
    sn_group_t *g = nullptr;
    EXPECT_EQ(without_stream([&] { return sn_group_create(&g, members, Ws, nullptr, 2); }),
              SN_ERROR_INVALID_BACKEND);
    EXPECT_NE(std::string(sn_last_error_message()).find("layers[1] has another backend"), std::string::npos)
        << sn_last_error_message();
    EXPECT_EQ(g, nullptr);
  }
}

// sm_86 and sm_89 (A40, L4, RTX 30 and 40) run the sm_80 code with 99 KB of shared memory a block:
// a group whose widest member's v and s (2 · 4 bytes a column) do not fit is refused as
// NOT_SUPPORTED, naming the member, not as a CUDA failure; one that fits builds and runs, and the
// member refused builds and runs on its own.
TEST_F(FakeCuda, AGroupTooWideForTheDevicesSharedMemoryIsNotSupported) {
  FAKE_MACHINE(fake_cuda::a40());
  fake_cuda::expect_stream(kS);
  const Member small{{{64, 576}, 0}, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, true};
  for (const Member &wide : {Member{{{64, 16384}, 0}, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, true},
                             Member{{{16384, 64}, 0}, SN_DTYPE_BFLOAT16, SN_ORDER_V_FIRST, false},
                             Member{{{3, 3, 64, 13000}, -1}, SN_DTYPE_FLOAT16, SN_ORDER_V_FIRST, true}}) {
    SCOPED_TRACE(std::to_string(wide.shape.dims[0]) + " x ... x " + std::to_string(wide.shape.dims.back()));
    GroupRig r({small, wide});
    EXPECT_EQ(r.create(), SN_ERROR_NOT_SUPPORTED);
    const std::string msg = sn_last_error_message();
    EXPECT_NE(msg.find("layers[1]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("shared memory"), std::string::npos) << msg;
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    sn_layer_t *l = r.raw[1];
    STEP(sn_layer_warmup(l, r.W[1], kS), 64);
    if (r.W_sn[1]) {
      STEP(sn_forward(l, r.W[1], r.W_sn[1], 1, kS), 8);
    } else {
      STEP(sn_forward_scale_only(l, r.W[1], 1, kS), 8);
    }
    STEP(sn_backward(l, r.W[1], r.G[1], r.dW[1], 0, nullptr, kS), 4);
  }
  GroupRig fits({small, Member{{{64, 12288}, 0}, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, true}});
  OK(fits.ready());
  STEP(sn_group_forward(fits.group.get(), 1, kS), 3);
  OK(set_gradients(fits.group.get(), fits.G.data(), fits.dW.data(), fits.dgamma.data()));
  STEP(sn_group_backward(fits.group.get(), 0, kS), 2);
}

// specnorm.h, SN_ALGO_ONE_PASS: "a W not 16-byte aligned runs TWO_PASS" (its rows kernels load
// 16 bytes at a time). A W one element off alignment (a view into a larger buffer) takes no
// one-pass kernel, in any forward; aligned, the same layer does.
TEST_P(FakeCudaMachines, AWeightOffSixteenBytesTakesNoOnePassKernel) {
  for (sn_dtype_t dtype : {SN_DTYPE_FLOAT32, SN_DTYPE_BFLOAT16}) {
    for (const Shape &s : {Shape{{4096, 4096}, 0}, Shape{{1024, 1024}, 0}, Shape{{512, 3072}, 0}}) {
      LayerBufs b(make_desc(s, dtype, SN_ORDER_U_FIRST, SN_ALGO_ONE_PASS));
      sn_layer_t *l = b.layer.get();
      ASSERT_NE(l, nullptr);
      const size_t es = sn_dtype_size(dtype), bytes = (size_t)(b.h * b.w) * es;
      Dev big(bytes + 16), big_sn(bytes + 16);
      char *W = big.get<char>() + es, *W_sn = big_sn.get<char>() + es;  // one element off
      for (bool aligned : {true, false}) {
        SCOPED_TRACE(std::string(aligned ? "aligned" : "one element off") + ", dtype " +
                     std::to_string(dtype) + ", h " + std::to_string(b.h));
        void *w = aligned ? b.W->p : W, *w_sn = aligned ? b.W_sn->p : W_sn;
        OK(sn_layer_reset(l, 1, kS));
        fake_cuda::clear_log();
        OK(sn_forward(l, w, w_sn, 1, kS));  // the warm-up's iterations too
        OK(sn_forward(l, w, w_sn, 0, kS));
        OK(sn_forward_scale_only(l, w, 1, kS));
        long one_pass = 0;
        for (const fake_cuda::Launch &x : fake_cuda::launches())
          one_pass += x.kernel.find("one_pass") != std::string::npos;
        sn_paths_t p;
        OK(sn_layer_get_paths(l, &p));
        if (aligned) {
          EXPECT_GT(one_pass, 0) << "an aligned one-pass layer ran no one-pass kernel";
          EXPECT_NE(p.train, SN_PATH_MATVEC);
        } else {
          EXPECT_EQ(one_pass, 0) << "a W off 16-byte alignment ran a one-pass kernel";
          // ... and says so: the user can see the slower kernels it took.
          EXPECT_EQ(p.train, SN_PATH_MATVEC);
          EXPECT_EQ(p.eval, SN_PATH_MATVEC);
          EXPECT_EQ(p.scale_only, SN_PATH_MATVEC);
        }
      }
    }
  }
}

// The rows' ring of two by default (kRowsPingPongDefault, cuda/one_pass.cuh) where it keeps the
// plain kernel's blocks per multiprocessor, read from the cubins: the 2-byte rows of 512 threads ×
// 4 packs of 8 (4096 × 16384's) on both cards; those of 256 × 2 packs of 8 (4096²'s, whose
// cooperative scale-only launch then takes the ring too, kCoopRing) on the H100-like device only
// (sm_80: 63 registers against 47, a block fewer); none in fp32 or in one pack of 8 (2048²).
TEST_P(FakeCudaMachines, TheRingOfTwoIsTheDefaultWhereItKeepsTheBlocks) {
  const bool sm90 = std::string(GetParam().name) == "h100";
  struct Case {
    Shape s;
    sn_dtype_t dtype;
    bool ring;
  };
  for (const Case &c : {Case{{{4096, 16384}, 0}, SN_DTYPE_BFLOAT16, true},
                        Case{{{4096, 4096}, 0}, SN_DTYPE_BFLOAT16, sm90},
                        Case{{{1024, 3000}, 0}, SN_DTYPE_FLOAT16, sm90},
                        Case{{{4096, 4096}, 0}, SN_DTYPE_FLOAT32, false},
                        Case{{{2048, 2048}, 0}, SN_DTYPE_BFLOAT16, false}}) {
    SCOPED_TRACE(std::to_string(c.s.dims[0]) + "x" + std::to_string(c.s.dims[1]) + " dtype " + std::to_string(c.dtype));
    LayerBufs b(make_desc(c.s, c.dtype, SN_ORDER_U_FIRST, SN_ALGO_DEFAULT));
    sn_layer_t *l = b.layer.get();
    ASSERT_NE(l, nullptr);
    OK(sn_layer_warmup(l, b.W->p, kS));
    size_t from = fake_cuda::launches().size();
    OK(sn_forward(l, b.W->p, b.W_sn->p, 1, kS));
    const std::vector<std::string> train = launched_kernels(from);
    bool ring = false;
    for (const std::string &k : train) ring |= k.find("one_pass_rows_pp_kernel<") != std::string::npos;
    EXPECT_EQ(ring, c.ring) << ::testing::PrintToString(train);
    from = fake_cuda::launches().size();
    OK(sn_forward_scale_only(l, b.W->p, 1, kS));
    for (const std::string &k : launched_kernels(from)) {
      if (k.find("one_pass_coop_kernel<") != std::string::npos) {
        EXPECT_EQ(k.find(", 2>") != std::string::npos, c.ring) << k;
      }
      if (k.find("one_pass_rows") != std::string::npos) {
        EXPECT_EQ(k.find("one_pass_rows_pp_kernel<") != std::string::npos, c.ring) << k;
      }
    }
  }
}

// A v-first layer of dim −1 (Keras', Flax's, Haiku's kernels) on chip over the grid by default
// (kGridVFirstMinElems, cuda/forward.cu): its training and scale-only forwards and its backward,
// on sm_90 (the H100-like device), from 2^21 elements, where every row fits shared memory; its
// eval forward keeps the usual kernels. Not on the A100-like device, not below 2^21 elements, not
// u-first, not a layer whose rows would sit in registers or be streamed (4096² fp32), not one whose
// Mᵀ has fewer than 8 rows a multiprocessor (128 × 16384) or rows of fewer than 256 elements
// (2²¹ × 1: a Dense layer of one output), and not with SPECNORM_TUNE=op_onchip_grid=0.
TEST_P(FakeCudaMachines, LargeVFirstLayersRunOnTheGridByDefault) {
  const bool sm90 = std::string(GetParam().name) == "h100";
  struct Case {
    Shape s;
    sn_dtype_t dtype;
    sn_order_t order;
    const char *tune;
    bool grid;
  };
  for (const Case &c : {Case{{{2048, 2048}, -1}, SN_DTYPE_FLOAT32, SN_ORDER_V_FIRST, "", sm90},
                        Case{{{3072, 768}, -1}, SN_DTYPE_BFLOAT16, SN_ORDER_V_FIRST, "", sm90},
                        Case{{{3, 3, 256, 1024}, -1}, SN_DTYPE_FLOAT32, SN_ORDER_V_FIRST, "", sm90},
                        Case{{{2048, 2048}, -1}, SN_DTYPE_FLOAT32, SN_ORDER_V_FIRST, "op_onchip_grid=0", false},
                        Case{{{1024, 1024}, -1}, SN_DTYPE_FLOAT32, SN_ORDER_V_FIRST, "", false},
                        Case{{{4096, 4096}, -1}, SN_DTYPE_FLOAT32, SN_ORDER_V_FIRST, "", false},
                        Case{{{128, 16384}, -1}, SN_DTYPE_FLOAT32, SN_ORDER_V_FIRST, "", false},
                        Case{{{1056, 2048}, -1}, SN_DTYPE_FLOAT32, SN_ORDER_V_FIRST, "", sm90},
                        Case{{{1055, 2048}, -1}, SN_DTYPE_FLOAT32, SN_ORDER_V_FIRST, "", false},
                        Case{{{int64_t(1) << 21, 1}, -1}, SN_DTYPE_FLOAT32, SN_ORDER_V_FIRST, "", false},
                        Case{{{32768, 64}, -1}, SN_DTYPE_FLOAT32, SN_ORDER_V_FIRST, "", false},
                        Case{{{8192, 256}, -1}, SN_DTYPE_BFLOAT16, SN_ORDER_V_FIRST, "", sm90},
                        Case{{{8256, 255}, -1}, SN_DTYPE_BFLOAT16, SN_ORDER_V_FIRST, "", false},
                        Case{{{2048, 2048}, 0}, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, "", false},
                        Case{{{2048, 2048}, 0}, SN_DTYPE_FLOAT32, SN_ORDER_V_FIRST, "", false}}) {
    SCOPED_TRACE(::testing::PrintToString(c.s.dims) + " dim " + std::to_string(c.s.dim) + " dtype " +
                 std::to_string(c.dtype) + " order " + std::to_string(c.order) + " SPECNORM_TUNE=" + c.tune);
    ScopedTune tune(c.tune);
    LayerBufs b(make_desc(c.s, c.dtype, c.order, SN_ALGO_DEFAULT));
    sn_layer_t *l = b.layer.get();
    ASSERT_NE(l, nullptr);
    OK(sn_layer_warmup(l, b.W->p, kS));
    OK(sn_forward(l, b.W->p, b.W_sn->p, 1, kS));
    OK(sn_forward(l, b.W->p, b.W_sn->p, 0, kS));
    OK(sn_forward_scale_only(l, b.W->p, 1, kS));
    OK(sn_backward(l, b.W->p, b.G->p, b.dW->p, 0, nullptr, kS));
    sn_paths_t p;
    OK(sn_layer_get_paths(l, &p));
    const sn_path_t grid = SN_PATH_ON_CHIP_GRID;
    EXPECT_EQ(p.train == grid, c.grid) << sn_path_name(p.train);
    EXPECT_EQ(p.scale_only == grid, c.grid) << sn_path_name(p.scale_only);
    EXPECT_EQ(p.backward == grid, c.grid) << sn_path_name(p.backward);
    EXPECT_NE(p.eval, grid);
    EXPECT_EQ(p.dropped, 0u);
  }
}

// ---- the per-step path under a stream capture ---------------------------------------------------

// The fake runtime flags an allocation, free, host synchronization or copy to or from the host
// during a capture (as the driver refuses them in the global capture mode).
TEST_F(FakeCuda, StepsAreCapturableOnceWarmAndTheWarmUpIsNot) {
  for (const std::string &t : {std::string(""), std::string("op_coop=1"),
                               std::string("op_onchip_grid=2"), std::string("group_coop=1")}) {
    SCOPED_TRACE("SPECNORM_TUNE=" + t);
    ScopedTune tune(t);
    for (const Shape &s : {Shape{{64, 576}, 0}, Shape{{4096, 4096}, 0}, Shape{{3, 3, 128, 256}, -1}}) {
      LayerBufs b(make_desc(s, SN_DTYPE_BFLOAT16, SN_ORDER_U_FIRST, SN_ALGO_DEFAULT));
      sn_layer_t *l = b.layer.get();
      ASSERT_NE(l, nullptr);
      Dev &W = *b.W, &W_sn = *b.W_sn;
      fake_cuda::set_capturing(true);
      const long before = fake_cuda::counters().launches;
      EXPECT_EQ(sn_forward(l, W.p, W_sn.p, 1, kS), SN_ERROR_INVALID_STATE);
      EXPECT_EQ(fake_cuda::counters().launches, before) << "a refused warm-up launched";
      EXPECT_EQ(cudaGetLastError(), cudaSuccess);
      fake_cuda::set_capturing(false);
      int warm = 1;
      OK(sn_layer_get_state(l, nullptr, nullptr, nullptr, &warm, kS));
      EXPECT_EQ(warm, 0);
      OK(sn_layer_warmup(l, W.p, kS));
      fake_cuda::set_capturing(true);
      STEP(sn_forward(l, W.p, W_sn.p, 1, kS), 8);
      STEP(sn_forward(l, W.p, W_sn.p, 0, kS), 8);
      STEP(sn_forward_scale_only(l, W.p, 1, kS), 8);
      STEP(sn_backward(l, W.p, W_sn.p, W_sn.p, 0, nullptr, kS), 2);
      fake_cuda::set_capturing(false);
    }
    GroupRig r(groups()[0]);
    OK(r.create());
    fake_cuda::set_capturing(true);
    EXPECT_EQ(sn_group_forward(r.group.get(), 1, kS), SN_ERROR_INVALID_STATE);
    fake_cuda::set_capturing(false);
    OK(r.warm());
    OK(set_gradients(r.group.get(), r.G.data(), r.dW.data(), r.dgamma.data()));
    fake_cuda::set_capturing(true);
    STEP(sn_group_forward(r.group.get(), 1, kS), 3);
    STEP(sn_group_backward(r.group.get(), 0, kS), 2);
    fake_cuda::set_capturing(false);
  }
}

// ---- a launch that needs resident blocks, refused ("MPS") ---------------------------------------

// specnorm.h: a forward (or backward) that is one launch needing all its blocks resident, refused
// because fewer blocks can be resident than at creation, runs the usual kernels from then on, at
// once when no capture is active, else returns SN_ERROR_CUDA asking to capture again.
TEST_F(FakeCuda, RefusedResidentLaunchesFallBackOrAskForANewCapture) {
  enum Call { kTrain, kScale, kBackward };
  struct Case {
    const char *tune;
    Shape shape;
    sn_algo_t algo;
    Call call;
  };
  const Case cases[] = {
      {"", {{64, 576}, 0}, SN_ALGO_DEFAULT, kTrain},  // on chip, clusters
      // On chip, then the cooperative one-pass launch, both refused: the usual kernels.
      {"", {{64, 576}, 0}, SN_ALGO_ONE_PASS, kScale},
      {"op_coop=1", {{4096, 4096}, 0}, SN_ALGO_DEFAULT, kScale},  // the cooperative one-pass iteration
      {"op_onchip_grid=2", {{2048, 2048}, 0}, SN_ALGO_DEFAULT, kTrain},  // on chip over the grid
      {"op_onchip_grid=2", {{2048, 2048}, 0}, SN_ALGO_DEFAULT, kBackward},  // its backward
      {"op_onchip=1", {{64, 576}, 0}, SN_ALGO_DEFAULT, kBackward},  // the on-chip backward
  };
  for (const Case &c : cases) {
    for (bool capture : {false, true}) {
      SCOPED_TRACE(std::string("SPECNORM_TUNE=") + c.tune + (capture ? ", captured" : ""));
      ScopedTune tune(c.tune);
      fake_cuda::set_active_sms(0);
      LayerBufs b(make_desc(c.shape, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, c.algo));
      sn_layer_t *l = b.layer.get();
      ASSERT_NE(l, nullptr);
      Dev &W = *b.W, &W_sn = *b.W_sn;
      auto step = [&] {
        return c.call == kScale      ? sn_forward_scale_only(l, W.p, 1, kS)
               : c.call == kTrain    ? sn_forward(l, W.p, W_sn.p, 1, kS)
                                     : sn_backward(l, W.p, b.G->p, b.dW->p, 0, nullptr, kS);
      };
      OK(sn_layer_warmup(l, W.p, kS));
      OK(sn_forward(l, W.p, W_sn.p, 1, kS));
      fake_cuda::clear_log();
      OK(step());
      std::vector<fake_cuda::Launch> first = fake_cuda::launches();
      ASSERT_EQ(first.size(), 1u) << "expected one launch on chip / cooperative";
      sn_path_t sn_paths_t::*kind = c.call == kScale   ? &sn_paths_t::scale_only
                                    : c.call == kTrain ? &sn_paths_t::train
                                                       : &sn_paths_t::backward;
      sntest::expect_recorded_path(l, sn_layer_get_paths, kind, launched_kernels(0), false);
      const sn_path_t first_path = launched_path(0, false);
      fake_cuda::set_active_sms(1);
      fake_cuda::set_capturing(capture);
      fake_cuda::clear_log();
      const sn_status_t st = step();
      if (fake_cuda::capture_invalidated()) {
        EXPECT_NE(st, SN_SUCCESS) << "the capture was invalidated, and the call succeeded";
      }
      fake_cuda::set_capturing(false);
      EXPECT_EQ(cudaGetLastError(), cudaSuccess);
      const bool coop = first[0].kernel.find("one_pass_coop") != std::string::npos;
      const unsigned bit = coop ? SN_DROPPED_COOP : SN_DROPPED_ON_CHIP;
      sn_paths_t p;
      OK(sn_layer_get_paths(l, &p));
      EXPECT_EQ(p.dropped & bit, bit) << "the refused launch is not said to be dropped";
      if (capture) {
        EXPECT_EQ(st, SN_ERROR_CUDA);
        EXPECT_NE(std::string(sn_last_error_message()).find("captur"), std::string::npos)
            << sn_last_error_message();
        EXPECT_EQ(p.*kind, first_path) << "the failed call recorded " << sn_path_name(p.*kind);
      } else {
        EXPECT_EQ(st, SN_SUCCESS) << sn_last_error_message();
        EXPECT_EQ(p.*kind, launched_path(0, false)) << sn_path_name(p.*kind);
      }
      // From then on the usual kernels: more than one launch, none of them refused; the layer
      // says which launch it dropped, and records the kernels it runs instead.
      fake_cuda::clear_log();
      OK(step());
      EXPECT_GT(fake_cuda::launches().size(), 1u);
      for (const fake_cuda::Launch &x : fake_cuda::launches())
        EXPECT_NE(x.kernel, first[0].kernel);
      OK(sn_layer_get_paths(l, &p));
      EXPECT_EQ(p.dropped & bit, bit);
      EXPECT_EQ(p.*kind, launched_path(0, false));
      EXPECT_NE(p.*kind, first_path);
      char text[1024];
      OK(sn_layer_describe(l, text, sizeof text, nullptr));
      char said[32];
      snprintf(said, sizeof said, ", dropped 0x%x", p.dropped);
      EXPECT_NE(std::string(text).find(said), std::string::npos) << said << " not in: " << text;
      fake_cuda::set_active_sms(0);
    }
  }
}


// sn_group_backward's launch under each SPECNORM_TUNE: two kernels by default, whatever the
// group's size (kGroupBackwardCoop, cuda/forward.cu: they measured faster than the cooperative
// launch on SN-GAN), one cooperative launch where group_bw_coop=1 asks, or group_coop=1 with
// group_bw_coop unset; group_bw_coop=0 wins over group_coop=1. The forward keeps its own rule.
TEST_F(FakeCuda, GroupedBackwardIsTwoKernelsUnlessAskedForTheCooperativeLaunch) {
  struct Want {
    const char *tune;
    bool coop;
  };
  for (const Want &c : {Want{"", false}, Want{"group_bw_coop=0", false}, Want{"group_bw_coop=1", true},
                        Want{"group_coop=1", true}, Want{"group_coop=0,group_bw_coop=1", true},
                        Want{"group_coop=1,group_bw_coop=0", false}, Want{"group_onchip=0", false}}) {
    SCOPED_TRACE(std::string("SPECNORM_TUNE=") + c.tune);
    ScopedTune tune(c.tune);
    GroupRig r(groups()[0]);
    OK(r.ready());
    sn_group_t *g = r.group.get();
    fake_cuda::clear_log();
    OK(sn_group_backward(g, 0, kS));
    const std::vector<fake_cuda::Launch> got = fake_cuda::launches();
    ASSERT_EQ(got.size(), c.coop ? 1u : 2u);
    for (const fake_cuda::Launch &x : got) EXPECT_EQ(x.cooperative, c.coop) << x.kernel;
    sn_paths_t p;
    OK(sn_group_get_paths(g, &p));
    EXPECT_EQ(p.backward, c.coop ? SN_PATH_BACKWARD_COOP : SN_PATH_BACKWARD_KERNELS) << sn_path_name(p.backward);
    EXPECT_EQ(p.dropped, 0u);
    // The forward's rule is the forward's own: on chip unless a group_ knob of the forward is set.
    fake_cuda::clear_log();
    OK(sn_group_forward(g, 1, kS));
    ASSERT_FALSE(fake_cuda::launches().empty());
    const std::string t = c.tune;
    const bool forward_knob = t.find("group_coop") != std::string::npos || t.find("group_onchip") != std::string::npos;
    EXPECT_EQ(fake_cuda::launches()[0].cluster > 0, !forward_knob) << fake_cuda::launches()[0].kernel;
  }
}

// sn_group_forward: a refused on-chip launch drops to the cooperative one, a refused cooperative
// one to the three kernels; sn_group_backward's cooperative launch (group_bw_coop=1; the default
// is its two kernels) to its two kernels until the next binding. During a capture the call fails,
// asking for a new capture.
TEST_F(FakeCuda, RefusedGroupLaunchesFallBackOrAskForANewCapture) {
  for (const std::string &t : {std::string(""), std::string("group_onchip=0")}) {
    for (bool capture : {false, true}) {
      SCOPED_TRACE("SPECNORM_TUNE=" + t + (capture ? ", captured" : ""));
      ScopedTune tune(t.empty() ? "group_bw_coop=1" : t + ",group_bw_coop=1");
      fake_cuda::set_active_sms(0);
      GroupRig r(groups()[0]);
      OK(r.ready());
      sn_group_t *g = r.group.get();
      fake_cuda::clear_log();
      OK(sn_group_forward(g, 1, kS));
      OK(sn_group_backward(g, 0, kS));
      const std::vector<fake_cuda::Launch> one_each = fake_cuda::launches();
      ASSERT_EQ(one_each.size(), 2u);
      EXPECT_TRUE(t.empty() ? one_each[0].cluster > 0 : one_each[0].cooperative);
      EXPECT_TRUE(one_each[1].cooperative);
      fake_cuda::set_active_sms(1);
      // A call refused (and failed, in a capture) records no path; one that succeeds records its
      // kernels'. Either way the refusal is in `dropped`.
      const auto recorded = [&](sn_path_t sn_paths_t::*kind, sn_status_t st, sn_path_t before, size_t from,
                                unsigned bit) {
        sn_paths_t p;
        OK(sn_group_get_paths(g, &p));
        EXPECT_EQ(p.*kind, st == SN_SUCCESS ? launched_path(from, false) : before) << sn_path_name(p.*kind);
        EXPECT_EQ(p.dropped & bit, bit);
      };
      for (int attempt = 0; attempt < 3; ++attempt) {
        sn_paths_t before;
        OK(sn_group_get_paths(g, &before));
        size_t from = fake_cuda::launches().size();
        fake_cuda::set_capturing(capture);
        const sn_status_t fw = sn_group_forward(g, 1, kS);
        const bool fw_invalidated = fake_cuda::capture_invalidated();
        fake_cuda::set_capturing(false);
        recorded(&sn_paths_t::train, fw, before.train, from, t.empty() ? SN_DROPPED_ON_CHIP : SN_DROPPED_COOP);
        from = fake_cuda::launches().size();
        fake_cuda::set_capturing(capture);
        const sn_status_t bw = sn_group_backward(g, 0, kS);
        const bool bw_invalidated = fake_cuda::capture_invalidated();
        fake_cuda::set_capturing(false);
        recorded(&sn_paths_t::backward, bw, before.backward, from, SN_DROPPED_BACKWARD_COOP);
        EXPECT_TRUE(!fw_invalidated || fw != SN_SUCCESS) << "an invalidated capture, and success";
        EXPECT_TRUE(!bw_invalidated || bw != SN_SUCCESS) << "an invalidated capture, and success";
        EXPECT_EQ(cudaGetLastError(), cudaSuccess);
        if (!capture) {
          EXPECT_EQ(fw, SN_SUCCESS) << sn_last_error_message();
          EXPECT_EQ(bw, SN_SUCCESS) << sn_last_error_message();
        } else if (attempt == 0) {  // the refusals, one a call; then the next launch's
          EXPECT_EQ(fw, SN_ERROR_CUDA);
          EXPECT_EQ(bw, SN_ERROR_CUDA);
        } else {
          EXPECT_TRUE(fw == SN_SUCCESS || fw == SN_ERROR_CUDA) << sn_last_error_message();
          EXPECT_EQ(bw, SN_SUCCESS) << sn_last_error_message();
        }
      }
      if (capture) {
        EXPECT_NE(std::string(sn_last_error_message()).find("captur"), std::string::npos)
            << sn_last_error_message();
      }
      // Eagerly, with no capture: the usual kernels, none refused.
      OK(sn_group_forward(g, 1, kS));
      OK(sn_group_backward(g, 0, kS));
      fake_cuda::clear_log();
      OK(sn_group_forward(g, 1, kS));
      OK(sn_group_backward(g, 0, kS));
      const std::vector<fake_cuda::Launch> after = fake_cuda::launches();
      EXPECT_EQ(after.size(), 5u);  // rows, reduce, commit; inner, apply
      for (const fake_cuda::Launch &x : after) EXPECT_FALSE(x.cooperative || x.cluster) << x.kernel;
      // ... as the group says, with the launches it dropped.
      sn_paths_t p;
      OK(sn_group_get_paths(g, &p));
      EXPECT_EQ(p.train, SN_PATH_ONE_PASS_ROWS);
      EXPECT_EQ(p.backward, SN_PATH_BACKWARD_KERNELS);
      EXPECT_EQ(p.dropped, (t.empty() ? (unsigned)SN_DROPPED_ON_CHIP : 0u) | SN_DROPPED_COOP | SN_DROPPED_BACKWARD_COOP);
      // A new binding tries the cooperative backward again.
      fake_cuda::set_active_sms(0);
      OK(set_gradients(g, r.G.data(), r.dW.data(), nullptr));
      fake_cuda::clear_log();
      OK(sn_group_backward(g, 0, kS));
      ASSERT_EQ(fake_cuda::launches().size(), 1u);
      EXPECT_TRUE(fake_cuda::launches()[0].cooperative);
      OK(sn_group_get_paths(g, &p));
      EXPECT_EQ(p.backward, SN_PATH_BACKWARD_COOP);
      EXPECT_EQ(p.dropped & SN_DROPPED_BACKWARD_COOP, 0u);
    }
  }
}

// ---- failures of the runtime ---------------------------------------------------------------------

// The layer's whole state as a checkpoint holds it (u, v, σ, the warm-up flag, the counts of
// forwards, the health word), read with no failure armed.
std::vector<unsigned char> snapshot(const sn_layer_t *l) {
  size_t size = 0, written = 0;
  EXPECT_EQ(sn_layer_checkpoint_size(l, &size), SN_SUCCESS);
  std::vector<unsigned char> blob(size);
  EXPECT_EQ(sn_layer_save(l, blob.data(), size, &written, kS), SN_SUCCESS) << sn_last_error_message();
  blob.resize(written);
  return blob;
}

// After a successful creation (or group binding) with a runtime failure armed: a failure of a call
// only the plan's probes make (device attributes, kernels' attributes, occupancy) was absorbed
// by one, and the layer or group must say so (SN_DROPPED_SETUP); with no failure it must not. (A
// failed cudaGetDevice may be a probe's or the free of a replaced binding's tables, and the
// capture-mode exchange around a pointer check decides nothing of the plan: either way.)
void expect_setup_bit(unsigned dropped) {
  const bool said = (dropped & SN_DROPPED_SETUP) != 0;
  const std::string f = fake_cuda::failure_fired() ? fake_cuda::failed_call() : "";
  const bool probe = f == "cudaDeviceGetAttribute" || f == "cudaFuncGetAttributes" ||
                     f == "cudaFuncSetAttribute" || f.rfind("cudaOccupancy", 0) == 0;
  if (probe) {
    EXPECT_TRUE(said) << "a failed " << f << " was absorbed and not said";
  }
  if (f.empty()) {
    EXPECT_FALSE(said) << "SN_DROPPED_SETUP with no runtime failure";
  }
}

// The paths of the latest calls (sn_layer_get_paths) of each watched layer, then of the watched
// group if any (sn_group_get_paths), less the dropped launches (which a failed call may add: the
// refusal stays a fact of the device).
template <class Ctx>
std::vector<int> recorded_paths(const Ctx &ctx) {
  std::vector<int> out;
  sn_paths_t p;
  for (const sn_layer_t *l : ctx.watched()) {
    EXPECT_EQ(sn_layer_get_paths(l, &p), SN_SUCCESS);
    out.insert(out.end(), {p.train, p.scale_only, p.eval, p.backward});
  }
  if (const sn_group_t *g = ctx.watched_group()) {
    EXPECT_EQ(sn_group_get_paths(g, &p), SN_SUCCESS);
    out.insert(out.end(), {p.train, p.scale_only, p.eval, p.backward});
  }
  return out;
}

// Runs `call` once with the k-th runtime call from its start failing with `error`, for k = 1, 2,
// ... until a run makes fewer than k calls; `prepare` builds what the call needs first, with no
// failure armed. Whatever the call returns, it must leave no CUDA error pending, keep the
// caller's device and leak nothing; a failure must come with a message and leave the layers of
// `watched` exactly as they were. Returns the failed runs.
template <class Prepare, class Call>
int fail_each_call(const char *what, cudaError_t error, Prepare prepare, Call call) {
  SCOPED_TRACE(what);
  int failed = 0;
  for (long k = 1; k < 100000; ++k) {
    SCOPED_TRACE("runtime call " + std::to_string(k) + " failing");
    auto ctx = prepare();
    std::vector<std::vector<unsigned char>> before;
    for (const sn_layer_t *l : ctx->watched()) before.push_back(snapshot(l));
    const std::vector<int> paths_before = recorded_paths(*ctx);
    const long live = fake_cuda::live_allocations();
    int device = -1;
    EXPECT_EQ(cudaGetDevice(&device), cudaSuccess);
    fake_cuda::fail_nth(Api::kAny, k, error);
    const sn_status_t st = call(*ctx);
    const bool fired = fake_cuda::failure_fired();
    const std::string failed_fn = fake_cuda::failed_call();
    SCOPED_TRACE("the call failed: " + failed_fn);
    fake_cuda::fail_nth(Api::kAny, 0, cudaSuccess);
    EXPECT_EQ(fake_cuda::pending_to_host(), 0) << "returned with copies into host memory queued";
    fake_cuda::drop_pending();
    EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "a CUDA error left pending (status " << st << ")";
    int now = -1;
    EXPECT_EQ(cudaGetDevice(&now), cudaSuccess);
    EXPECT_EQ(now, device) << "the caller's device changed";
    if (st == SN_SUCCESS && fired) {
      // A failure the call may absorb: a probe of what the device offers (the plan falls back
      // to kernels that need less), a capture-mode exchange around the pointer check, the free of
      // a replaced binding's tables (the runtime keeps that memory), a launch refused for
      // resources that it retries with its usual kernels, the queries of the check that a host
      // array is not device memory (which takes a pointer it cannot classify as host memory).
      static const char *const absorbed[] = {
          "cudaDeviceGetAttribute", "cudaFuncGetAttributes", "cudaFuncSetAttribute",
          "cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags",
          "cudaOccupancyMaxActiveClusters", "cudaThreadExchangeStreamCaptureMode", "cudaGetDevice",
          "cudaFree"};
      const std::string call_name = what;
      const bool host_arrays = call_name == "set_state" || call_name == "load" || call_name == "save" ||
                               call_name == "reads" || call_name.rfind("health", 0) == 0;
      bool ok = failed_fn == "a launch" && error == cudaErrorLaunchOutOfResources;
      ok = ok || (host_arrays && (failed_fn == "cudaGetDeviceCount" || failed_fn == "cudaPointerGetAttributes"));
      for (const char *a : absorbed) ok = ok || failed_fn == a;
      EXPECT_TRUE(ok) << "a failed " << failed_fn << " was absorbed: the call returned SN_SUCCESS";
    }
    if (st != SN_SUCCESS) {
      ++failed;
      EXPECT_TRUE(fired) << "failed with no runtime failure: " << sn_last_error_message();
      EXPECT_GT(std::strlen(sn_last_error_message()), 0u);
      EXPECT_EQ(fake_cuda::live_allocations(), live) << "a failed call leaked device memory";
      // (Not after a failed synchronization: after a successful enqueue, that is the report of
      // an asynchronous error, which leaves the CUDA context unusable, the layer with it.)
      const std::vector<const sn_layer_t *> after = ctx->watched();
      for (size_t i = 0; i < after.size() && failed_fn != "cudaStreamSynchronize"; ++i)
        EXPECT_TRUE(snapshot(after[i]) == before[i]) << "layer " << i << " changed by a failed call";
      EXPECT_EQ(recorded_paths(*ctx), paths_before) << "a failed call recorded a path";
    }
    ctx.reset();
    if (::testing::Test::HasFailure() || !fired) break;
  }
  return failed;
}

// A layer, warmed up or not, with its buffers; what a failure-injection run needs.
struct LayerCtx : LayerBufs {
  std::vector<unsigned char> blob;  // a checkpoint of another state of this layer
  LayerCtx(const sn_layer_desc_t &d, bool warm) : LayerBufs(d) {
    sn_layer_t *l = layer.get();
    if (warm) {
      EXPECT_EQ(sn_layer_warmup(l, W->p, kS), SN_SUCCESS);
    }
    std::vector<float> u((size_t)h, 1.f), v((size_t)w, 2.f);  // another state, as a checkpoint
    EXPECT_EQ(sn_layer_set_state(l, u.data(), v.data(), 3.f, warm, kS), SN_SUCCESS);
    blob = snapshot(l);
    EXPECT_EQ(sn_layer_reset(l, d.seed, kS), SN_SUCCESS);
    if (warm) {
      EXPECT_EQ(sn_layer_warmup(l, W->p, kS), SN_SUCCESS);
    }
  }
  std::vector<const sn_layer_t *> watched() const { return {layer.get()}; }
  const sn_group_t *watched_group() const { return nullptr; }
};

// A creation: the layer made, destroyed after the run (with no failure armed).
struct Made {
  Layer made;
  std::vector<const sn_layer_t *> watched() const { return {}; }
  const sn_group_t *watched_group() const { return nullptr; }
};

struct GroupCtx {
  GroupRig rig;
  explicit GroupCtx(const std::vector<Member> &ms, bool with_group) : rig(ms) {
    EXPECT_EQ(rig.warm(), SN_SUCCESS);
    if (with_group) {
      EXPECT_EQ(rig.create(), SN_SUCCESS) << sn_last_error_message();
      EXPECT_EQ(set_gradients(rig.group.get(), rig.G.data(), rig.dW.data(), nullptr),
                SN_SUCCESS);
      // One backward, so that the one a test runs after a failed binding records no new path.
      EXPECT_EQ(sn_group_backward(rig.group.get(), 0, kS), SN_SUCCESS) << sn_last_error_message();
    }
  }
  std::vector<const sn_layer_t *> watched() const {
    return std::vector<const sn_layer_t *>(rig.raw.begin(), rig.raw.end());
  }
  const sn_group_t *watched_group() const { return rig.group.get(); }
};

TEST_P(FakeCudaMachines, AFailedRuntimeCallIsReportedAndChangesNothing) {
  const cudaError_t errors[] = {cudaErrorMemoryAllocation, cudaErrorLaunchOutOfResources};
  // Every kind of path: on chip in clusters (64 × 576 on sm_90), the one-pass kernels (4096²), a
  // 1-D weight, Keras' layout, the two-pass kernels (dim 1); the cooperative one-pass iteration
  // and the grid (its forward and backward).
  const std::vector<Shape> all = {{{64, 576}, 0}, {{4096, 4096}, 0}, {{7}, 0},
                                  {{3, 3, 128, 256}, -1}, {{300, 17}, 1}};
  const std::vector<std::pair<std::string, std::vector<Shape>>> cases = {
      {"", all},
      {"op_coop=1", {{{4096, 4096}, 0}}},
      {"op_onchip_grid=2", {{{4096, 4096}, 0}, {{1024, 1024}, 0}}},
  };
  for (const auto &[t, shapes_of_t] : cases) {
    SCOPED_TRACE("SPECNORM_TUNE=" + t);
    ScopedTune tune(t);
    for (const Shape &s : shapes_of_t) {
      for (sn_order_t order : {SN_ORDER_U_FIRST, SN_ORDER_V_FIRST}) {
        const sn_layer_desc_t d = make_desc(s, SN_DTYPE_BFLOAT16, order, SN_ALGO_DEFAULT);
        SCOPED_TRACE("h = " + std::to_string(s.dims[0]) + "..., order " + std::to_string(order));
        for (cudaError_t e : errors) {
          // Creation: nothing created, nothing leaked.
          fail_each_call("create", e, [] { return std::make_unique<Made>(); }, [&](Made &c) {
            sn_layer_t *l = reinterpret_cast<sn_layer_t *>(uintptr_t{64});
            const sn_status_t st = create_layer(&l, &d);
            if (st != SN_SUCCESS) {
              EXPECT_EQ(l, nullptr);
            } else {
              c.made.reset(l);
              // A runtime failure the creation absorbed (a probe: the plan does without what it
              // was for) is said (SN_DROPPED_SETUP); with none, nothing is.
              sn_paths_t p;
              EXPECT_EQ(sn_layer_get_paths(l, &p), SN_SUCCESS);
              expect_setup_bit(p.dropped);
            }
            return st;
          });
          auto fresh = [&] { return std::make_unique<LayerCtx>(d, false); };
          auto warm = [&] { return std::make_unique<LayerCtx>(d, true); };
          fail_each_call("first forward", e, fresh, [](LayerCtx &c) {
            return sn_forward(c.layer.get(), c.W->p, c.W_sn->p, 1, kS);
          });
          fail_each_call("warm-up", e, fresh,
                         [](LayerCtx &c) { return sn_layer_warmup(c.layer.get(), c.W->p, kS); });
          fail_each_call("training forward", e, warm, [](LayerCtx &c) {
            return sn_forward(c.layer.get(), c.W->p, c.W_sn->p, 1, kS);
          });
          fail_each_call("eval forward", e, warm, [](LayerCtx &c) {
            return sn_forward(c.layer.get(), c.W->p, c.W_sn->p, 0, kS);
          });
          fail_each_call("scale only", e, warm, [](LayerCtx &c) {
            return sn_forward_scale_only(c.layer.get(), c.W->p, 1, kS);
          });
          fail_each_call("backward", e, warm, [](LayerCtx &c) {
            return sn_backward(c.layer.get(), c.W->p, c.G->p, c.dW->p, 0, c.scalars->get<float>(), kS);
          });
          fail_each_call("set_state", e, warm, [](LayerCtx &c) {
            std::vector<float> u((size_t)c.h, 1.f), v((size_t)c.w, 2.f);
            return sn_layer_set_state(c.layer.get(), u.data(), v.data(), 3.f, 1, kS);
          });
          fail_each_call("load", e, warm, [](LayerCtx &c) {
            return sn_layer_load(c.layer.get(), c.blob.data(), c.blob.size(), kS);
          });
          fail_each_call("save", e, warm, [](LayerCtx &c) {
            std::vector<unsigned char> blob(c.blob.size());
            size_t written = 0;
            return sn_layer_save(c.layer.get(), blob.data(), blob.size(), &written, kS);
          });
          fail_each_call("reset", e, warm, [](LayerCtx &c) { return sn_layer_reset(c.layer.get(), 9, kS); });
          fail_each_call("health, cleared", e, warm, [](LayerCtx &c) {
            uint32_t health = 0;
            return sn_layer_get_health(c.layer.get(), &health, 1, kS);
          });
          fail_each_call("reads", e, warm, [](LayerCtx &c) {
            std::vector<float> u((size_t)c.h), v((size_t)c.w);
            float sigma = 0, inv = 0;
            int warmed = 0;
            sn_status_t st = sn_layer_get_state(c.layer.get(), u.data(), v.data(), &sigma, &warmed, kS);
            if (st == SN_SUCCESS) st = sn_layer_get_sigma(c.layer.get(), &sigma, &inv, kS);
            if (st == SN_SUCCESS) st = sn_layer_get_scale(c.layer.get(), &sigma, kS);
            return st;
          });
        }
      }
    }
    for (const std::vector<Member> &ms : groups()) {
      if (!t.empty()) break;
      for (cudaError_t e : errors) {
        fail_each_call("group create", e, [&] { return std::make_unique<GroupCtx>(ms, false); },
                       [](GroupCtx &c) {
                         const sn_status_t st = c.rig.create();
                         if (st != SN_SUCCESS) {
                           EXPECT_EQ(c.rig.group, nullptr);
                         } else {  // as a layer's creation
                           sn_paths_t p;
                           EXPECT_EQ(sn_group_get_paths(c.rig.group.get(), &p), SN_SUCCESS);
                           expect_setup_bit(p.dropped);
                         }
                         return st;
                       });
        auto made = [&] { return std::make_unique<GroupCtx>(ms, true); };
        fail_each_call("group forward", e, made,
                       [](GroupCtx &c) { return sn_group_forward(c.rig.group.get(), 1, kS); });
        fail_each_call("group set_gradients", e, made, [](GroupCtx &c) {
          const sn_status_t st = set_gradients(c.rig.group.get(), c.rig.G.data(),
                                                        c.rig.dW.data(), c.rig.dgamma.data());
          if (st == SN_SUCCESS) {  // the binding's own probes, as a creation's
            sn_paths_t p;
            EXPECT_EQ(sn_group_get_paths(c.rig.group.get(), &p), SN_SUCCESS);
            expect_setup_bit(p.dropped);
          }
          // A failed binding keeps the one before: the backward still runs.
          if (st != SN_SUCCESS) {
            EXPECT_EQ(sn_group_backward(c.rig.group.get(), 0, kS), SN_SUCCESS);
          }
          return st;
        });
        fail_each_call("group backward", e, made,
                       [](GroupCtx &c) { return sn_group_backward(c.rig.group.get(), 0, kS); });
      }
    }
  }
}


// A group's SN_DROPPED_SETUP is its creation's and its latest binding's (specnorm.h): a probe
// failing in a binding sets it, the next binding whose probes succeed clears it, and one failing
// at creation keeps it through any binding. A binding probes the cooperative backward only, which
// runs where group_bw_coop=1 asks (the default is its two kernels, which need no probe).
TEST_P(FakeCudaMachines, AGroupsSetupBitIsItsCreationsAndLatestBindings) {
  ScopedTune tune("group_bw_coop=1");
  const Api probes[] = {Api::kDeviceGetAttribute, Api::kFuncGetAttributes, Api::kFuncSetAttribute,
                        Api::kOccupancy};
  auto setup_bit = [](const sn_group_t *g) {
    sn_paths_t p;
    EXPECT_EQ(sn_group_get_paths(g, &p), SN_SUCCESS);
    return (p.dropped & SN_DROPPED_SETUP) != 0;
  };
  int said[2] = {0, 0};  // [at creation]
  for (const std::vector<Member> &ms : groups()) {
    for (const Api api : probes) {
      for (const bool at_creation : {false, true}) {
        for (long k = 1; k < 1000; ++k) {
          SCOPED_TRACE("probe call " + std::to_string(k) + " of its kind failing " +
                       (at_creation ? "at creation" : "in a binding"));
          GroupRig r(ms);
          OK(r.warm());
          if (!at_creation) {
            OK(r.create());
            EXPECT_FALSE(setup_bit(r.group.get()));
          }
          fake_cuda::fail_nth(api, k, cudaErrorMemoryAllocation);
          const sn_status_t st =
              at_creation ? r.create() : set_gradients(r.group.get(), r.G.data(), r.dW.data(), r.dgamma.data());
          const bool fired = fake_cuda::failure_fired();
          fake_cuda::fail_nth(Api::kAny, 0, cudaSuccess);
          (void)cudaGetLastError();
          if (!fired) break;
          if (st != SN_SUCCESS || !setup_bit(r.group.get())) continue;
          ++said[at_creation];
          // A binding with nothing failing: the creation's bit stays, a binding's goes.
          OK(set_gradients(r.group.get(), r.G.data(), r.dW.data(), r.dgamma.data()));
          EXPECT_EQ(setup_bit(r.group.get()), at_creation)
              << (at_creation ? "a binding cleared the creation's failure" : "kept from the binding before");
          EXPECT_EQ(sn_group_backward(r.group.get(), 0, kS), SN_SUCCESS);
        }
      }
      if (::testing::Test::HasFailure()) return;
    }
  }
  // Both kinds of failure were reached: the test is no tautology on this machine.
  EXPECT_GT(said[0], 0);
  EXPECT_GT(said[1], 0);
}

// A failed setup query of the one-pass kernels (their shared memory, their occupancy): a layer
// whose algorithm is DEFAULT does without them, on the two-pass kernels, and says so
// (SN_DROPPED_SETUP); one that asked for SN_ALGO_ONE_PASS by name fails its creation.
TEST_P(FakeCudaMachines, AFailedOnePassSetupFallsBackUnlessAskedFor) {
  const Shape s{{4096, 4096}, 0};  // one pass by rows by default, on either card
  int fell_back = 0, refused = 0;
  for (const Api api : {Api::kFuncSetAttribute, Api::kOccupancy}) {
    bool any_fired = true;
    for (long k = 1; any_fired; ++k) {
      SCOPED_TRACE("call " + std::to_string(k) + " of its kind failing");
      any_fired = false;
      for (const sn_algo_t algo : {SN_ALGO_DEFAULT, SN_ALGO_ONE_PASS}) {
        const sn_layer_desc_t d = make_desc(s, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, algo);
        sn_layer_t *l = nullptr;
        fake_cuda::fail_nth(api, k, cudaErrorInvalidValue);
        const sn_status_t st = create_layer(&l, &d);
        const bool fired = fake_cuda::failure_fired();
        fake_cuda::fail_nth(Api::kAny, 0, cudaSuccess);
        any_fired = any_fired || fired;
        Layer layer(l);
        if (!fired) {
          EXPECT_EQ(st, SN_SUCCESS) << sn_last_error_message();
          continue;
        }
        EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "a failure the creation handled left pending";
        if (algo == SN_ALGO_ONE_PASS && st != SN_SUCCESS) {
          EXPECT_EQ(st, SN_ERROR_CUDA) << sn_last_error_message();
          EXPECT_EQ(l, nullptr);
          ++refused;
          continue;
        }
        ASSERT_EQ(st, SN_SUCCESS) << "a DEFAULT layer failed on a setup query: " << sn_last_error_message();
        sn_paths_t p;
        ASSERT_EQ(sn_layer_get_paths(l, &p), SN_SUCCESS);
        EXPECT_NE(p.dropped & SN_DROPPED_SETUP, 0u);
        Dev W(size_t{4096} * 4096 * 4), W_sn(size_t{4096} * 4096 * 4);
        OK(sn_forward(l, W.p, W_sn.p, 1, kS));
        OK(sn_forward(l, W.p, W_sn.p, 1, kS));
        ASSERT_EQ(sn_layer_get_paths(l, &p), SN_SUCCESS);
        if (algo == SN_ALGO_DEFAULT && p.train == SN_PATH_MATVEC) ++fell_back;
      }
      if (::testing::Test::HasFailure()) return;
    }
  }
  EXPECT_GT(fell_back, 0) << "no failure reached the one-pass kernels' own setup";
  EXPECT_GT(refused, 0);
}

// On a device whose opt-in shared memory is too small for the one-pass kernels (64 KB: 16384
// fp32 columns by rows, 2048 columns' panels of 768 rows by columns), no runtime call fails: a
// DEFAULT layer takes the two-pass kernels without SN_DROPPED_SETUP, SN_ALGO_ONE_PASS is not
// supported there; an error the caller left pending is kept either way.
TEST_F(FakeCuda, OnePassKernelsThatDoNotFitFallBackUnlessAskedFor) {
  fake_cuda::DeviceProps small = fake_cuda::h100();
  small.optin_smem = 65536;
  FAKE_MACHINE(small);
  fake_cuda::expect_stream(kS);
  for (const sn_order_t order : {SN_ORDER_U_FIRST, SN_ORDER_V_FIRST}) {
    const Shape s = order == SN_ORDER_U_FIRST ? Shape{{4096, 16384}, 0} : Shape{{768, 2048}, 0};
    SCOPED_TRACE("order " + std::to_string(order));
    for (const sn_algo_t algo : {SN_ALGO_DEFAULT, SN_ALGO_ONE_PASS}) {
      const sn_layer_desc_t d = make_desc(s, SN_DTYPE_FLOAT32, order, algo);
      fake_cuda::raise(cudaErrorInvalidDevice);  // the caller's own, pending
      sn_layer_t *l = nullptr;
      const sn_status_t st = create_layer(&l, &d);
      Layer layer(l);
      EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidDevice) << "the caller's pending error was not kept";
      if (algo == SN_ALGO_ONE_PASS) {
        EXPECT_EQ(st, SN_ERROR_NOT_SUPPORTED) << sn_last_error_message();
        EXPECT_NE(std::string(sn_last_error_message()).find("does not fit"), std::string::npos);
        continue;
      }
      ASSERT_EQ(st, SN_SUCCESS) << sn_last_error_message();
      sn_paths_t p;
      ASSERT_EQ(sn_layer_get_paths(l, &p), SN_SUCCESS);
      EXPECT_EQ(p.dropped & SN_DROPPED_SETUP, 0u) << "a \"does not fit\" said as a failed query";
      Dev W(size_t(s.dims[0] * s.dims[1]) * 4), W_sn(size_t(s.dims[0] * s.dims[1]) * 4);
      OK(sn_forward(l, W.p, W_sn.p, 1, kS));
      OK(sn_forward(l, W.p, W_sn.p, 1, kS));
      ASSERT_EQ(sn_layer_get_paths(l, &p), SN_SUCCESS);
      EXPECT_EQ(p.train, SN_PATH_MATVEC) << sn_path_name(p.train);
    }
  }
  EXPECT_TRUE(fake_cuda::violations().empty()) << fake_cuda::violations().front();
}

// Destroying a layer or a group frees everything it owns whichever runtime call fails (but a
// failed cudaFree, whose memory the runtime keeps) and keeps the caller's device.
TEST_F(FakeCuda, DestroyFreesWhateverFails) {
  for (long k = 1;; ++k) {
    SCOPED_TRACE("runtime call " + std::to_string(k) + " failing");
    GroupCtx c(groups()[2], false);
    const long base = fake_cuda::live_allocations();
    OK(c.rig.create());
    OK(set_gradients(c.rig.group.get(), c.rig.G.data(), c.rig.dW.data(), nullptr));
    sn_layer_t *l = nullptr;
    const sn_layer_desc_t d = make_desc({{64, 576}, 0}, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST,
                                        SN_ALGO_DEFAULT);
    OK(create_layer(&l, &d));
    fake_cuda::fail_nth(Api::kAny, k, cudaErrorLaunchOutOfResources);
    sn_layer_destroy(l);
    sn_group_destroy(c.rig.group.release());
    const bool fired = fake_cuda::failure_fired();
    fake_cuda::fail_nth(Api::kAny, 0, cudaSuccess);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    int dev = -1;
    EXPECT_EQ(cudaGetDevice(&dev), cudaSuccess);
    EXPECT_EQ(dev, 0);
    EXPECT_EQ(fake_cuda::live_allocations(), base) << "device memory left behind";
    if (!fired || HasFailure()) break;
  }
}

// The library clears only the errors of its own failed calls: an error the caller's code left
// pending before a successful call is still there after it (cudaGetLastError returns the last
// error of any runtime call and resets it; a successful call does not).
TEST_P(FakeCudaMachines, ACallersPendingErrorSurvivesSuccessfulCalls) {
  // Two errors: cudaErrorInvalidValue is also the answer of some of the library's own probes.
  for (cudaError_t pending_error : {cudaErrorInvalidDevice, cudaErrorInvalidValue}) {
    SCOPED_TRACE(cudaGetErrorName(pending_error));
    // The error still there after the call `what`, and pending again for the next one.
    auto pending = [&](const std::string &what) {
      EXPECT_EQ(cudaPeekAtLastError(), pending_error) << what << " cleared it";
      fake_cuda::raise(pending_error);
    };
    for (const std::string &t :
         {std::string(""), std::string("op_coop=1"), std::string("op_onchip_grid=2")}) {
      SCOPED_TRACE("SPECNORM_TUNE=" + t);
      ScopedTune tune(t);
      for (const Shape &s : {Shape{{64, 576}, 0}, Shape{{4096, 4096}, 0}, Shape{{3, 3, 128, 256}, -1}}) {
        const sn_layer_desc_t d = make_desc(s, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, SN_ALGO_DEFAULT);
        fake_cuda::raise(pending_error);
        sn_layer_t *l = nullptr;
        OK(create_layer(&l, &d));
        Layer layer(l);
        pending("sn_layer_create");
        int64_t h = 0, w = 0;
        OK(sn_layer_get_dims(l, &h, &w));
        Dev W((size_t)(h * w) * 4), W_sn((size_t)(h * w) * 4);
        OK(sn_forward(l, W.p, W_sn.p, 1, kS));
        pending("the first sn_forward");
        OK(sn_forward(l, W.p, W_sn.p, 1, kS));
        pending("sn_forward");
        OK(sn_forward(l, W.p, W_sn.p, 0, kS));
        pending("sn_forward, eval");
        OK(sn_forward_scale_only(l, W.p, 1, kS));
        pending("sn_forward_scale_only");
        OK(sn_backward(l, W.p, W_sn.p, W_sn.p, 0, nullptr, kS));
        pending("sn_backward");
        std::vector<float> u((size_t)h), v((size_t)w);
        float sigma = 0;
        int warm = 0;
        OK(sn_layer_get_state(l, u.data(), v.data(), &sigma, &warm, kS));
        pending("sn_layer_get_state");
        OK(sn_layer_set_state(l, u.data(), v.data(), 1.f, 1, kS));
        pending("sn_layer_set_state");
        std::vector<unsigned char> blob = snapshot(l);
        pending("sn_layer_save");
        OK(sn_layer_load(l, blob.data(), blob.size(), kS));
        pending("sn_layer_load");
        uint32_t health = 0;
        OK(sn_layer_get_health(l, &health, 1, kS));
        pending("sn_layer_get_health");
        OK(sn_layer_reset(l, 3, kS));
        pending("sn_layer_reset");
        layer.reset();
        pending("sn_layer_destroy");
      }
      fake_cuda::raise(pending_error);
      GroupRig r(groups()[0]);
      pending("sn_layer_create");
      for (size_t k = 0; k < r.raw.size(); ++k) {
        OK(sn_layer_warmup(r.raw[k], r.W[k], kS));
        pending("sn_layer_warmup of member " + std::to_string(k));
      }
      OK(r.create());
      pending("sn_group_create");
      OK(sn_group_forward(r.group.get(), 1, kS));
      pending("sn_group_forward");
      OK(set_gradients(r.group.get(), r.G.data(), r.dW.data(), nullptr));
      pending("sn_group_set_gradients");
      OK(sn_group_backward(r.group.get(), 0, kS));
      pending("sn_group_backward");
      r.group.reset();
      pending("sn_group_destroy");
      (void)cudaGetLastError();
    }
  }
}

// What the host gets back is what went to the device, also into and out of pinned host memory,
// whose copies the fake runtime does only when the stream is synchronized: a call that returned
// host results without synchronizing would show the values from before.
TEST_P(FakeCudaMachines, StateRoundTripsThroughTheDeviceBitwise) {
  for (const Shape &s : {Shape{{64, 576}, 0}, Shape{{7}, 0}, Shape{{3, 3, 128, 256}, -1}}) {
    for (bool pinned : {false, true}) {
      SCOPED_TRACE(pinned ? "pinned host arrays" : "pageable host arrays");
      LayerBufs b(make_desc(s, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, SN_ALGO_DEFAULT));
      sn_layer_t *l = b.layer.get();
      ASSERT_NE(l, nullptr);
      const size_t h = (size_t)b.h, w = (size_t)b.w;
      // The host arrays: u, v, then u, v read back, then a checkpoint.
      size_t size = 0;
      OK(sn_layer_checkpoint_size(l, &size));
      const size_t bytes = 2 * (h + w) * sizeof(float) + size;
      std::vector<unsigned char> pageable(pinned ? 0 : bytes);
      void *mem = pageable.data();
      if (pinned) {
        ASSERT_EQ(cudaMallocHost(&mem, bytes), cudaSuccess);
      }
      float *u = static_cast<float *>(mem), *v = u + h, *u2 = v + w, *v2 = u2 + h;
      unsigned char *blob = reinterpret_cast<unsigned char *>(v2 + w);
      for (size_t i = 0; i < h; ++i) u[i] = 1.f / float(i + 3);
      for (size_t j = 0; j < w; ++j) v[j] = -2.f / float(j + 5);
      OK(sn_layer_set_state(l, u, v, 4.f, 1, kS));
      float sigma = 0, inv = 0, scale = 0;
      int warm = 0;
      OK(sn_layer_get_state(l, u2, v2, nullptr, nullptr, kS));  // the last copy into u2, v2
      EXPECT_EQ(std::memcmp(u, u2, h * 4), 0);
      EXPECT_EQ(std::memcmp(v, v2, w * 4), 0);
      std::fill(u2, u2 + h + w, 0.f);
      OK(sn_layer_get_state(l, u2, v2, &sigma, &warm, kS));
      EXPECT_EQ(std::memcmp(u, u2, h * 4), 0);
      EXPECT_EQ(std::memcmp(v, v2, w * 4), 0);
      EXPECT_EQ(sigma, 4.f);
      EXPECT_EQ(warm, 1);
      OK(sn_layer_get_sigma(l, &sigma, &inv, kS));
      EXPECT_EQ(sigma, 4.f);
      EXPECT_EQ(inv, 0.25f);
      OK(sn_layer_get_scale(l, &scale, kS));
      EXPECT_EQ(scale, 0.25f);
      size_t written = 0;
      OK(sn_layer_save(l, blob, size, &written, kS));
      EXPECT_EQ(written, size);
      // Into a second layer, through the checkpoint.
      LayerBufs c(make_desc(s, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, SN_ALGO_DEFAULT));
      OK(sn_layer_load(c.layer.get(), blob, written, kS));
      std::fill(u2, u2 + h + w, 0.f);
      OK(sn_layer_get_state(c.layer.get(), u2, v2, &sigma, &warm, kS));
      EXPECT_EQ(std::memcmp(u, u2, h * 4), 0);
      EXPECT_EQ(std::memcmp(v, v2, w * 4), 0);
      EXPECT_EQ(sigma, 4.f);
      // reset draws what a fresh layer of that seed has: a CPU layer's, bitwise.
      OK(sn_layer_reset(l, 77, kS));
      sn_layer_desc_t cd = make_desc(s, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, SN_ALGO_DEFAULT);
      cd.backend = SN_BACKEND_CPU;
      cd.seed = 77;
      sn_layer_t *cpu = nullptr;
      OK(create_layer(&cpu, &cd));
      Layer cpu_layer(cpu);
      std::vector<float> cu(h), cv(w);
      OK(sn_layer_get_state(cpu, cu.data(), cv.data(), nullptr, nullptr, nullptr));
      OK(sn_layer_get_state(l, u2, v2, &sigma, &warm, kS));
      EXPECT_EQ(std::memcmp(cu.data(), u2, h * 4), 0);
      EXPECT_EQ(std::memcmp(cv.data(), v2, w * 4), 0);
      EXPECT_EQ(sigma, 0.f);
      EXPECT_EQ(warm, 0);
      uint32_t health = 1;
      OK(sn_layer_get_health(l, &health, 0, kS));
      EXPECT_EQ(health, 0u);
      if (pinned) {
        ASSERT_EQ(cudaFreeHost(mem), cudaSuccess);
      }
    }
  }
}

// The fake's device memory is not host memory: a host access faults, as on a GPU, so a library
// that read or wrote it from the host would crash these tests.
TEST_F(FakeCuda, DeviceMemoryFaultsOnAHostAccess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Dev d(64);
  volatile char *p = d.get<volatile char>();
  EXPECT_DEATH((void)p[0], "");
  EXPECT_DEATH(p[1] = 1, "");
}

// ---- the kernels' machine code ---------------------------------------------------------------------

// The fake's reading of the cubins (fatbin.h) on kernels whose resources are known by construction
// (probe_kernels.cu), and the checks that use it: cudaFuncGetAttributes, the opt-in limit less the
// static shared memory, the launch bounds, the occupancy with static shared memory counted. Then
// every library kernel: machine code for the device, within what ptxas may produce.
TEST_P(FakeCudaMachines, KernelResourcesAreTheMachineCodes) {
  const fake_cuda::DeviceProps &d = GetParam().props;
  const int arch = d.major * 10 + (d.major == 8 ? 0 : d.minor);  // sm_86 runs the sm_80 code
  EXPECT_TRUE(fake_cuda::fatbin_problems().empty()) << joined(fake_cuda::fatbin_problems());
  const size_t stat = kProbeStaticFloats * sizeof(float);

  cudaFuncAttributes a{};
  ASSERT_EQ(cudaFuncGetAttributes(&a, probe_bounded()), cudaSuccess);
  EXPECT_EQ(a.sharedSizeBytes, stat);
  EXPECT_EQ(a.maxThreadsPerBlock, kProbeBound);
  EXPECT_GE(a.numRegs, 1);
  EXPECT_LE(a.numRegs, 65536 / kProbeBound);
  EXPECT_EQ(a.binaryVersion, arch);
  EXPECT_EQ(a.maxDynamicSharedSizeBytes, (int)(48 * 1024 - stat));
  ASSERT_EQ(cudaFuncGetAttributes(&a, probe_plain()), cudaSuccess);
  EXPECT_EQ(a.sharedSizeBytes, 0u);
  EXPECT_EQ(a.maxThreadsPerBlock, 1024);
  EXPECT_GE(a.numRegs, 1);
  EXPECT_LE(a.numRegs, 32);
  EXPECT_EQ(a.localSizeBytes, 0u);
  ASSERT_EQ(cudaFuncGetAttributes(&a, probe_local()), cudaSuccess);
  EXPECT_EQ(a.localSizeBytes, kProbeLocalFloats * sizeof(float));
  // Without launch bounds, the registers alone limit the block: over 64 a thread, not 1024 threads.
  cudaFuncAttributes r{};
  ASSERT_EQ(cudaFuncGetAttributes(&r, probe_registers()), cudaSuccess);
  ASSERT_GT(r.numRegs, 64) << "the probe should need more than 64 registers a thread";
  EXPECT_LT(r.maxThreadsPerBlock, 1024);
  EXPECT_GE(r.maxThreadsPerBlock, 256);
  EXPECT_EQ(r.maxThreadsPerBlock % 32, 0);

  // The opt-in limit less the static bytes, and not one byte more.
  const int most = d.optin_smem - (int)stat;
  EXPECT_EQ(cudaFuncSetAttribute(probe_bounded(), cudaFuncAttributeMaxDynamicSharedMemorySize, most + 1),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  ASSERT_EQ(fake_cuda::violations().size(), 1u);
  ASSERT_EQ(cudaFuncSetAttribute(probe_bounded(), cudaFuncAttributeMaxDynamicSharedMemorySize, most),
            cudaSuccess);
  // Blocks resident per SM: each takes its dynamic bytes, the static ones and the driver's 1 KB out
  // of the SM's shared memory. Two blocks of exactly half an SM fit; 128 bytes more, one (without
  // the static bytes or the 1 KB counted, still two).
  for (int extra : {0, 128}) {
    int per_sm = 0;
    const size_t dyn = (size_t)(d.smem_per_sm / 2 - (int)stat - 1024 + extra);
    ASSERT_EQ(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, probe_bounded(), kProbeBound, dyn),
              cudaSuccess);
    EXPECT_EQ(per_sm, extra ? 1 : 2) << dyn << " dynamic bytes";
  }

  // Launches: the bound, then one thread more; the register-bound probe's largest block, then one
  // warp more.
  float *x = nullptr;
  ASSERT_EQ(cudaMalloc(&x, kProbeLive * 1024 * sizeof(float)), cudaSuccess);
  void *args[] = {&x};
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(1);
  cfg.stream = kS;
  cfg.dynamicSmemBytes = (size_t)most;
  for (unsigned threads : {(unsigned)kProbeBound, (unsigned)kProbeBound + 1}) {
    cfg.blockDim = dim3(threads);
    EXPECT_EQ(cudaLaunchKernelExC(&cfg, probe_bounded(), args),
              threads > (unsigned)kProbeBound ? cudaErrorLaunchOutOfResources : cudaSuccess)
        << threads;
  }
  cfg.dynamicSmemBytes = 0;
  for (unsigned threads : {(unsigned)r.maxThreadsPerBlock, (unsigned)r.maxThreadsPerBlock + 32}) {
    cfg.blockDim = dim3(threads);
    EXPECT_EQ(cudaLaunchKernelExC(&cfg, probe_registers(), args),
              threads > (unsigned)r.maxThreadsPerBlock ? cudaErrorLaunchOutOfResources : cudaSuccess)
        << threads;
  }
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchOutOfResources);
  EXPECT_EQ(fake_cuda::violations().size(), 3u) << joined(fake_cuda::violations());
  EXPECT_EQ(cudaFree(x), cudaSuccess);

  // Every library kernel has code for the device, and ptxas's limits hold.
  size_t ours = 0;
  std::set<std::string> with_code;
  for (const fake_cuda::KernelInfo &k : fake_cuda::kernel_codes()) {
    if (k.code.arch != arch) continue;
    with_code.insert(k.mangled);
    if (k.name.find("probe_") != std::string::npos) continue;
    ++ours;
    SCOPED_TRACE(k.name);
    EXPECT_GE(k.code.regs, 1);
    EXPECT_LE(k.code.regs, 255);
    EXPECT_LE(k.code.static_smem, 48u * 1024);
    if (k.code.max_threads > 0) {  // ptxas fits the registers to the bounds
      EXPECT_EQ(fake_cuda::max_threads(k.code), k.code.max_threads) << k.code.regs << " registers";
    }
  }
  EXPECT_GT(ours, 100u);
  for (const fake_cuda::KernelInfo &k : fake_cuda::kernel_codes())
    EXPECT_EQ(with_code.count(k.mangled), 1u) << k.name << ": no sm_" << arch << " code";
  fake_cuda::reset({d});  // the violations above were the test's
}

// The fat binaries of this executable's file read as the GPU test of the fake's reading reads them
// (fatbin.h, executable_fatbins; Gpu.EveryKernelsResourcesAreWhatTheFakeRuntimeReads): the same
// kernels and resources as the images the host stubs registered.
TEST_F(FakeCuda, TheExecutablesFatBinariesAreTheRegisteredOnes) {
  fake_cuda::FatbinImages fatbins;
  std::string why;
  ASSERT_TRUE(fake_cuda::executable_fatbins("/proc/self/exe", &fatbins, &why)) << why;
  fake_cuda::FatbinCode code;
  for (size_t i = 0; i < fatbins.images.size(); ++i)
    EXPECT_EQ(fake_cuda::read_fatbin_image(fatbins.image(i), fatbins.images[i].second, &code),
              fatbins.images[i].second);
  EXPECT_TRUE(code.problems.empty()) << joined(code.problems);
  const std::vector<fake_cuda::KernelInfo> registered = fake_cuda::kernel_codes();
  size_t in_file = 0;
  for (const auto &arch : code.by_arch) in_file += arch.second.size();
  EXPECT_EQ(in_file, registered.size());
  EXPECT_GT(registered.size(), 200u);
  for (const fake_cuda::KernelInfo &k : registered) {
    SCOPED_TRACE(k.name + " sm_" + std::to_string(k.code.arch));
    auto arch = code.by_arch.find(k.code.arch);
    ASSERT_NE(arch, code.by_arch.end());
    auto it = arch->second.find(k.mangled);
    ASSERT_NE(it, arch->second.end());
    EXPECT_EQ(it->second.regs, k.code.regs);
    EXPECT_EQ(it->second.static_smem, k.code.static_smem);
    EXPECT_EQ(it->second.max_threads, k.code.max_threads);
    EXPECT_EQ(it->second.frame, k.code.frame);
  }
}

// A minimal 64-bit ELF file whose only section besides its names is a .nv_fatbin of `bytes`.
std::string elf_with_fatbin_section(const std::string &bytes) {
  const std::string names = std::string("\0.shstrtab\0.nv_fatbin\0", 23);
  std::string f(64, '\0');
  f[0] = 0x7f, f[1] = 'E', f[2] = 'L', f[3] = 'F', f[4] = 2, f[5] = 1, f[6] = 1;
  const uint64_t names_at = 64, data_at = names_at + names.size(), sh_at = (data_at + bytes.size() + 7) / 8 * 8;
  auto put = [&](std::string &s, size_t at, const void *v, size_t n) { std::memcpy(&s[at], v, n); };
  const uint16_t shentsize = 64, shnum = 3, shstrndx = 1;
  put(f, 0x28, &sh_at, 8);
  put(f, 0x3a, &shentsize, 2);
  put(f, 0x3c, &shnum, 2);
  put(f, 0x3e, &shstrndx, 2);
  f += names + bytes;
  f.resize(sh_at + 3 * 64, '\0');
  auto section = [&](int i, uint32_t name, uint32_t type, uint64_t at, uint64_t size) {
    const size_t h = sh_at + 64 * (size_t)i;
    put(f, h, &name, 4);
    put(f, h + 4, &type, 4);
    put(f, h + 0x18, &at, 8);
    put(f, h + 0x20, &size, 8);
  };
  section(1, 1, 3, names_at, names.size());
  section(2, 11, 1, data_at, bytes.size());
  return f;
}

// Damaged fat binaries give problems, not a crash or a loop (fatbin.cpp reads with bounds checks;
// CI runs this under ASan and UBSan): every prefix of a real image, bytes of one changed in turn,
// and sections whose image headers claim more than they hold or no size at all.
TEST_F(FakeCuda, DamagedFatBinariesAreProblemsNotCrashes) {
  fake_cuda::FatbinImages fatbins;
  std::string why;
  ASSERT_TRUE(fake_cuda::executable_fatbins("/proc/self/exe", &fatbins, &why)) << why;
  ASSERT_FALSE(fatbins.images.empty());
  // The smallest image (the probes'), copied to a buffer of its exact size.
  size_t pick = 0;
  for (size_t i = 1; i < fatbins.images.size(); ++i)
    if (fatbins.images[i].second < fatbins.images[pick].second) pick = i;
  const size_t n = fatbins.images[pick].second;
  const unsigned char *image = static_cast<const unsigned char *>(fatbins.image(pick));
  std::vector<unsigned long long> buf((n + 7) / 8);
  unsigned char *b = reinterpret_cast<unsigned char *>(buf.data());
  for (size_t len = 0; len < n; len += 1 + len / 16) {
    fake_cuda::FatbinCode code;
    std::memcpy(b, image, len);
    EXPECT_EQ(fake_cuda::read_fatbin_image(b, len, &code), 0u) << len;
  }
  uint64_t x = 0x9e3779b97f4a7c15ull;
  size_t clean = 0;
  for (int round = 0; round < 400; ++round) {
    std::memcpy(b, image, n);
    for (int k = 0; k < 4; ++k) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      b[(x >> 8) % n] = (unsigned char)x;
    }
    fake_cuda::FatbinCode code;
    fake_cuda::read_fatbin_image(b, n, &code);
    clean += code.problems.empty();
  }
  EXPECT_LT(clean, 400u) << "some damage should be reported";
  // Sections: an image header of 0xffff bytes, one of no size, nothing.
  const std::string dir = ::testing::TempDir();
  std::string head(16, '\0');
  const uint32_t magic = 0xba55ed50u;
  std::memcpy(&head[0], &magic, 4);
  for (uint16_t h : {(uint16_t)0xffff, (uint16_t)0}) {
    std::string bytes = head;
    std::memcpy(&bytes[6], &h, 2);
    bytes += std::string(64, '\0');
    for (const std::string &section : {bytes, std::string()}) {
      const std::string path = dir + "/fake_fatbin.elf";
      FILE *f = std::fopen(path.c_str(), "wb");
      ASSERT_NE(f, nullptr);
      const std::string elf = elf_with_fatbin_section(section);
      ASSERT_EQ(std::fwrite(elf.data(), 1, elf.size(), f), elf.size());
      std::fclose(f);
      fake_cuda::FatbinImages out;
      EXPECT_TRUE(fake_cuda::executable_fatbins(path.c_str(), &out, &why)) << why;
      EXPECT_TRUE(out.images.empty()) << "header " << h << ", " << section.size() << " bytes";
      std::remove(path.c_str());
    }
  }
}

// ---- devices and pointers ------------------------------------------------------------------------

TEST_F(FakeCuda, CallsRunOnTheLayersDeviceAndKeepTheCallers) {
  FAKE_MACHINE(fake_cuda::h100(), fake_cuda::a100());
  fake_cuda::expect_stream(kS);
  for (int device : {0, 1}) {
    SCOPED_TRACE("layer on device " + std::to_string(device));
    const int other = 1 - device;
    ASSERT_EQ(cudaSetDevice(device), cudaSuccess);
    Dev W(64 * 576 * 4), W_sn(64 * 576 * 4), managed_probe(4);
    void *managed = nullptr;
    ASSERT_EQ(cudaMallocManaged(&managed, 64 * 576 * 4, cudaMemAttachGlobal), cudaSuccess);
    ASSERT_EQ(cudaSetDevice(other), cudaSuccess);
    Dev elsewhere(64 * 576 * 4);
    sn_layer_desc_t d = make_desc({{64, 576}, 0}, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, SN_ALGO_DEFAULT);
    d.device = device;
    sn_layer_t *l = nullptr;
    OK(create_layer(&l, &d));
    Layer layer(l);
    int now = -1;
    ASSERT_EQ(cudaGetDevice(&now), cudaSuccess);
    EXPECT_EQ(now, other);
    fake_cuda::clear_log();
    STEP(sn_forward(l, W.p, W_sn.p, 1, kS), 40);  // the warm-up's launches included
    STEP(sn_forward(l, W.p, W_sn.p, 0, kS), 8);
    STEP(sn_backward(l, W.p, W_sn.p, W_sn.p, 0, nullptr, kS), 2);
    STEP(sn_forward(l, managed, managed, 1, kS), 8);
    for (const fake_cuda::Launch &x : fake_cuda::launches()) EXPECT_EQ(x.device, device) << x.kernel;
    // The blocking calls, and a group of the layer's device, from the other device too.
    auto kept = [&](const char *what) {
      int d = -1;
      EXPECT_EQ(cudaGetDevice(&d), cudaSuccess);
      EXPECT_EQ(d, other) << what << " changed the caller's device";
    };
    std::vector<float> hu(64), hv(576);
    float sg = 0, inv = 0;
    int wu = 0;
    uint32_t hl = 0;
    OK(sn_layer_get_state(l, hu.data(), hv.data(), &sg, &wu, kS));
    kept("sn_layer_get_state");
    OK(sn_layer_set_state(l, hu.data(), hv.data(), sg, wu, kS));
    kept("sn_layer_set_state");
    OK(sn_layer_get_sigma(l, &sg, &inv, kS));
    kept("sn_layer_get_sigma");
    OK(sn_layer_get_health(l, &hl, 1, kS));
    kept("sn_layer_get_health");
    const std::vector<unsigned char> blob = snapshot(l);
    kept("sn_layer_save");
    OK(sn_layer_load(l, blob.data(), blob.size(), kS));
    kept("sn_layer_load");
    {
      sn_layer_t *second = nullptr;
      OK(create_layer(&second, &d));
      Layer second_layer(second);
      sn_layer_t *members[2] = {l, second};
      const void *Ws[2] = {W.p, W_sn.p};
      void *none[2] = {nullptr, nullptr};
      sn_group_t *g = nullptr;
      OK(without_stream([&] { return sn_group_create(&g, members, Ws, none, 2); }));
      Group group(g);
      kept("sn_group_create");
      OK(sn_layer_warmup(second, W_sn.p, kS));
      OK(sn_group_forward(g, 1, kS));
      kept("sn_group_forward");
      ASSERT_EQ(cudaSetDevice(device), cudaSuccess);
      Dev G2(64 * 576 * 4), dW2(64 * 576 * 4), dW3(64 * 576 * 4);
      ASSERT_EQ(cudaSetDevice(other), cudaSuccess);
      const void *Gs[2] = {G2.p, G2.p};
      void *dWs[2] = {dW2.p, dW3.p};
      OK(set_gradients(g, Gs, dWs, nullptr));
      kept("sn_group_set_gradients");
      OK(sn_group_backward(g, 0, kS));
      kept("sn_group_backward");
      group.reset();
      kept("sn_group_destroy");
    }
    OK(sn_layer_reset(l, 5, kS));
    kept("sn_layer_reset");
    OK(sn_forward(l, W.p, W_sn.p, 1, kS));
    // Memory of the other device, host memory, memory already freed: refused, by name.
    std::vector<float> host(64 * 576);
    void *freed = nullptr;
    ASSERT_EQ(cudaMalloc(&freed, 64 * 576 * 4), cudaSuccess);  // (W's size: overlaps no buffer)
    ASSERT_EQ(cudaFree(freed), cudaSuccess);
    for (const void *bad : {elsewhere.p, static_cast<void *>(host.data()), freed}) {
      EXPECT_EQ(sn_forward(l, bad, W_sn.p, 1, kS), SN_ERROR_INVALID_POINTER);
      EXPECT_NE(std::string(sn_last_error_message()).find("W"), std::string::npos);
      EXPECT_EQ(sn_forward(l, W.p, const_cast<void *>(bad), 1, kS), SN_ERROR_INVALID_POINTER);
      EXPECT_EQ(sn_backward(l, W.p, bad, W_sn.p, 0, nullptr, kS), SN_ERROR_INVALID_POINTER);
    }
    EXPECT_NE(std::string(sn_last_error_message()).find("freed"), std::string::npos)
        << sn_last_error_message();
    // Device memory of the layer's device, but not on the floats' 4 bytes: refused before any
    // launch (a misaligned access faults, which ends the CUDA context).
    const long launches = fake_cuda::counters().launches;
    const void *odd = static_cast<const char *>(W.p) + 2;
    EXPECT_EQ(sn_forward(l, odd, W_sn.p, 1, kS), SN_ERROR_INVALID_POINTER);
    EXPECT_NE(std::string(sn_last_error_message()).find("aligned"), std::string::npos)
        << sn_last_error_message();
    EXPECT_EQ(sn_backward(l, W.p, odd, W_sn.p, 0, nullptr, kS), SN_ERROR_INVALID_POINTER);
    EXPECT_EQ(fake_cuda::counters().launches, launches);
    // The host arrays of the state, scalar and checkpoint calls: device memory there would crash
    // the host's access, so it is refused by name (W_sn's memory stands for a user's device buffer).
    {
      float *dev = W_sn.get<float>();
      auto refused = [](sn_status_t st, const char *name) {
        EXPECT_EQ(st, SN_ERROR_INVALID_POINTER) << name;
        EXPECT_NE(std::string(sn_last_error_message()).find(std::string(name) + " ("), std::string::npos)
            << sn_last_error_message();
      };
      std::vector<float> hu(64, 0.125f), hv(576, 0.0416f);
      refused(sn_layer_set_state(l, dev, hv.data(), 0.0f, 1, kS), "u");
      refused(sn_layer_set_state(l, hu.data(), dev, 0.0f, 1, kS), "v");
      refused(sn_layer_get_state(l, nullptr, dev, nullptr, nullptr, kS), "v");
      refused(sn_layer_get_sigma(l, nullptr, dev, kS), "inv_sigma");
      refused(sn_layer_get_scale(l, dev, kS), "scale");
      uint32_t *dh = reinterpret_cast<uint32_t *>(dev);
      refused(sn_layer_get_health(l, dh, 0, kS), "health");
      size_t size = 0;
      OK(sn_layer_checkpoint_size(l, &size));
      refused(sn_layer_save(l, dev, size, nullptr, kS), "buf");
      refused(sn_layer_load(l, dev, size, kS), "buf");
    }
    void *pinned = nullptr;
    ASSERT_EQ(cudaMallocHost(&pinned, 64 * 576 * 4), cudaSuccess);
    EXPECT_EQ(sn_forward(l, pinned, W_sn.p, 1, kS), SN_ERROR_INVALID_POINTER);
    EXPECT_NE(std::string(sn_last_error_message()).find("host memory"), std::string::npos);
    // A CPU layer refuses device memory, and takes pinned host memory.
    sn_layer_desc_t c = d;
    c.backend = SN_BACKEND_CPU;
    sn_layer_t *cpu = nullptr;
    OK(create_layer(&cpu, &c));
    Layer cpu_layer(cpu);
    EXPECT_EQ(sn_forward(cpu, W.p, host.data(), 1, kS), SN_ERROR_INVALID_POINTER);
    EXPECT_NE(std::string(sn_last_error_message()).find("device memory"), std::string::npos);
    std::fill(host.begin(), host.end(), 0.5f);
    std::memcpy(pinned, host.data(), host.size() * 4);
    OK(sn_forward(cpu, pinned, host.data(), 1, kS));
    ASSERT_EQ(cudaFreeHost(pinned), cudaSuccess);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    ASSERT_EQ(cudaGetDevice(&now), cudaSuccess);
    EXPECT_EQ(now, other);
    cpu_layer.reset();
    layer.reset();  // destroyed from the other device
    ASSERT_EQ(cudaGetDevice(&now), cudaSuccess);
    EXPECT_EQ(now, other) << "sn_layer_destroy changed the caller's device";
    ASSERT_EQ(cudaFree(managed), cudaSuccess);
  }
  // A group's layers on one device.
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  GroupRig r(groups()[2]);
  sn_layer_desc_t d = make_desc({{64, 27}, 0}, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, SN_ALGO_DEFAULT);
  d.device = 1;
  sn_layer_t *l = nullptr;
  OK(create_layer(&l, &d));
  r.layers.emplace_back(l);
  r.raw.push_back(l);
  r.W.push_back(r.W[0]);
  r.W_sn.push_back(nullptr);
  EXPECT_EQ(r.create(), SN_ERROR_INVALID_DEVICE);
  EXPECT_EQ(r.group, nullptr);
  // A device that does not exist; no device at all (a machine without a GPU or its driver).
  d.device = 2;
  EXPECT_EQ(create_layer(&l, &d), SN_ERROR_INVALID_DEVICE);
  EXPECT_EQ(l, nullptr);
  d.device = 0;
  fake_cuda::set_device_count_error(cudaErrorInsufficientDriver);
  EXPECT_EQ(create_layer(&l, &d), SN_ERROR_NO_DEVICE);
  EXPECT_NE(std::string(sn_last_error_message()).find("no usable GPU"), std::string::npos);
  EXPECT_NE(std::string(sn_last_error_message()).find(cudaGetErrorString(cudaErrorInsufficientDriver)),
            std::string::npos)
      << sn_last_error_message();
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  fake_cuda::set_device_count_error(cudaSuccess);
}

// Where the runtime cannot say where a buffer is (its pointer query fails: a context a kernel
// fault ended, ...), the call says so as the runtime's failure, not as a bad pointer of the
// caller's; an unknown pointer (the runtime's old answer, cudaErrorInvalidValue) stays one.
TEST_F(FakeCuda, AFailedPointerQueryIsTheRuntimesErrorNotTheCallersPointer) {
  LayerBufs b(make_desc({{64, 576}, 0}, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, SN_ALGO_DEFAULT));
  sn_layer_t *l = b.layer.get();
  OK(sn_forward(l, b.W->p, b.W_sn->p, 1, kS));
  const std::vector<unsigned char> before = snapshot(l);
  struct Case {
    cudaError_t e;
    sn_status_t want;
  };
  for (const Case c : {Case{cudaErrorIllegalAddress, SN_ERROR_CUDA}, Case{cudaErrorInvalidValue, SN_ERROR_INVALID_POINTER}}) {
    SCOPED_TRACE(cudaGetErrorName(c.e));
    for (int call = 0; call < 3; ++call) {
      fake_cuda::fail_nth(Api::kPointerAttributes, 1, c.e);
      const sn_status_t st = call == 0   ? sn_forward(l, b.W->p, b.W_sn->p, 1, kS)
                             : call == 1 ? sn_forward_scale_only(l, b.W->p, 1, kS)
                                         : sn_backward(l, b.W->p, b.G->p, b.dW->p, 0, nullptr, kS);
      EXPECT_TRUE(fake_cuda::failure_fired()) << call;
      fake_cuda::fail_nth(Api::kAny, 0, cudaSuccess);
      EXPECT_EQ(st, c.want) << call << ": " << sn_last_error_message();
      const std::string msg = sn_last_error_message();
      EXPECT_NE(msg.find("W ("), std::string::npos) << msg;
      if (c.want == SN_ERROR_CUDA) {
        EXPECT_NE(msg.find("CUDA error 700"), std::string::npos) << msg;
      }
      EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    }
  }
  EXPECT_EQ(snapshot(l), before) << "the failed calls changed the layer";
}

// A call on a layer of another device switches to it and back. When the switch back fails, the
// call's work is done and it succeeds, with the caller left on the layer's device (the header:
// such an error is the call's own, not left pending for the caller's next cudaGetLastError).
TEST_F(FakeCuda, AFailedSwitchBackToTheCallersDeviceLeavesNoErrorPending) {
  FAKE_MACHINE(fake_cuda::h100(), fake_cuda::h100());
  fake_cuda::expect_stream(kS);
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  Dev W(64 * 576 * 4), W_sn(64 * 576 * 4);
  sn_layer_desc_t d = make_desc({{64, 576}, 0}, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, SN_ALGO_DEFAULT);
  d.device = 1;
  sn_layer_t *l = nullptr;
  OK(create_layer(&l, &d));
  Layer layer(l);
  OK(sn_forward(l, W.p, W_sn.p, 1, kS));
  const std::vector<unsigned char> blob = snapshot(l);
  std::vector<unsigned char> out(blob.size());
  std::vector<float> hu(64), hv(576);
  float sg = 0, inv = 0;
  uint32_t hl = 0;
  const std::vector<std::pair<const char *, std::function<sn_status_t()>>> calls = {
      {"sn_forward", [&] { return sn_forward(l, W.p, W_sn.p, 1, kS); }},
      {"sn_forward_scale_only", [&] { return sn_forward_scale_only(l, W.p, 1, kS); }},
      {"sn_backward", [&] { return sn_backward(l, W.p, W_sn.p, W_sn.p, 0, nullptr, kS); }},
      {"sn_layer_get_state", [&] { return sn_layer_get_state(l, hu.data(), hv.data(), &sg, nullptr, kS); }},
      {"sn_layer_set_state", [&] { return sn_layer_set_state(l, hu.data(), hv.data(), sg, 1, kS); }},
      {"sn_layer_get_sigma", [&] { return sn_layer_get_sigma(l, &sg, &inv, kS); }},
      {"sn_layer_get_scale", [&] { return sn_layer_get_scale(l, &sg, kS); }},
      {"sn_layer_get_health", [&] { return sn_layer_get_health(l, &hl, 1, kS); }},
      {"sn_layer_save", [&] { return sn_layer_save(l, out.data(), out.size(), nullptr, kS); }},
      {"sn_layer_load", [&] { return sn_layer_load(l, blob.data(), blob.size(), kS); }},
      {"sn_layer_reset", [&] { return sn_layer_reset(l, 3, kS); }},
  };
  for (const auto &c : calls) {
    SCOPED_TRACE(c.first);
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    fake_cuda::fail_nth(Api::kSetDevice, 2, cudaErrorInvalidValue);  // the first switches to 1
    const sn_status_t st = c.second();
    EXPECT_TRUE(fake_cuda::failure_fired()) << "no switch back to the caller's device";
    fake_cuda::fail_nth(Api::kSetDevice, 0, cudaSuccess);
    EXPECT_EQ(st, SN_SUCCESS) << sn_last_error_message();
    EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "an error left pending";
    EXPECT_EQ(fake_cuda::pending_to_host(), 0);
  }
}

}  // namespace
