// Shared helpers of the specnorm tests: fresh random inputs (the seed is printed on failure),
// weights with a known spectral gap, and small wrappers over the C API.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cxxabi.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <functional>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "sn_cuda.h"
#include "sn_reference.h"
#include "specnorm.h"

namespace sntest {

// Why there is no usable GPU ("" when there is one). Without a GPU, cudaGetDeviceCount fails
// (e.g. error 35, "driver version is insufficient"): that means "no GPU", not a failure.
inline std::string gpu_missing_reason() {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return "no CUDA device (cudaGetDeviceCount: error " + std::to_string(int(e)) + ", " +
           cudaGetErrorString(e) + ")";
  }
  return count == 0 ? "no CUDA device (cudaGetDeviceCount returned 0)" : "";
}

// Skip the current test, with the reason, when there is no GPU.
#define REQUIRE_GPU()                                                               \
  do {                                                                              \
    const std::string why_ = ::sntest::gpu_missing_reason();                        \
    if (!why_.empty()) GTEST_SKIP() << why_ << ": GPU test skipped";                \
  } while (0)

// Skip the current test on an emulated device of fewer than 132 SMs: for cases sized for a grid of
// 132 blocks (an H100's or H200's SMs), which a smaller one would not run as the case intends.
#define SKIP_UNLESS_132_SMS()                                                                      \
  do {                                                                                             \
    const int sms_ = ::sntest::emulated_sms();                                                     \
    if (sms_ > 0 && sms_ < 132)                                                                    \
      GTEST_SKIP() << "emulated device of " << sms_                                                \
                   << " SMs: these cases are sized for 132 (SPECNORM_EMU_SMS=132)";                \
  } while (0)

// Assert that a CUDA runtime call succeeds, naming the call.
#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

// A fresh seed per test run; SCOPED_TRACE it so a failure can be reproduced with SN_TEST_SEED.
inline uint64_t fresh_seed() {
  if (const char *s = std::getenv("SN_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}

// In a test body: `seed`, a fresh seed (SN_TEST_SEED reproduces it), traced in every failure
// message from here on, and `rng`, a generator seeded with it.
#define SN_SEEDED_RNG()                                           \
  const uint64_t seed = ::sntest::fresh_seed();                   \
  SCOPED_TRACE("SN_TEST_SEED=" + std::to_string(seed));           \
  ::sntest::Rng rng(seed)

struct Rng {
  std::mt19937_64 gen;
  // One distribution for the generator's life: it keeps the second normal of each pair it draws,
  // half the cost of a new distribution per draw (most of the large GPU tests' host time).
  std::normal_distribution<float> nd{0.f, 1.f};
  explicit Rng(uint64_t seed) : gen(seed) {}
  void reseed(uint64_t seed) {
    gen.seed(seed);
    nd.reset();
  }
  // Never exactly 0: libstdc++'s float normals are exactly 0 when the canonical draw rounds to
  // 0.5 (about 1 in 2^25), and a 1-element start vector of 0 is the null space of any W: a
  // reference power iteration from it stays at σ = 0 (found with a fresh distribution per draw).
  float normal() {
    float x = 0.f;
    while (x == 0.f) x = nd(gen);
    return x;
  }
  float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(gen); }
  std::vector<float> normals(int64_t n, float scale = 1.f) {
    std::vector<float> x(static_cast<size_t>(n));
    for (auto &e : x) e = scale * normal();
    return x;
  }
};

// An h×w matrix (row-major) with a clear gap between its two largest singular values:
// Gaussian noise of norm about 1 plus a rank-1 term of norm `boost`. Power iteration then
// converges fast and its vectors are well defined, so backends can be compared step by step.
inline std::vector<float> gapped_matrix(Rng &rng, int64_t h, int64_t w, float boost = 4.f) {
  std::vector<float> W = rng.normals(h * w, 1.f / std::sqrt(float(std::max(h, w))));
  std::vector<float> a = rng.normals(h), b = rng.normals(w);
  double na = 0, nb = 0;
  for (float x : a) na += double(x) * x;
  for (float x : b) nb += double(x) * x;
  const float s = float(boost / std::sqrt(na * nb));
  for (int64_t i = 0; i < h; ++i)
    for (int64_t j = 0; j < w; ++j) W[static_cast<size_t>(i * w + j)] += s * a[static_cast<size_t>(i)] * b[static_cast<size_t>(j)];
  return W;
}

// A rank-1 h×w matrix M = a bᵀ (row-major) with b_0 = 0, and v = e_0 (returned in *v): M v = 0
// exactly, with no rounding, so a forward from that v sees σ = 0 (v in the null space of W).
// *sigma receives M's only singular value, ‖a‖ ‖b‖.
inline std::vector<float> rank1_nulling_e0(Rng &rng, int64_t h, int64_t w, std::vector<float> *v,
                                           double *sigma) {
  std::vector<float> a = rng.normals(h), b = rng.normals(w);
  b[0] = 0.f;
  double na = 0, nb = 0;
  for (float x : a) na += double(x) * x;
  for (float x : b) nb += double(x) * x;
  *sigma = std::sqrt(na * nb);
  std::vector<float> M(static_cast<size_t>(h * w));
  for (int64_t i = 0; i < h; ++i)
    for (int64_t j = 0; j < w; ++j) M[static_cast<size_t>(i * w + j)] = a[static_cast<size_t>(i)] * b[static_cast<size_t>(j)];
  v->assign(static_cast<size_t>(w), 0.f);
  (*v)[0] = 1.f;
  return M;
}

inline int64_t numel_of(const std::vector<int64_t> &shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// A test fixture with a fresh seed (SN_TEST_SEED reproduces it) and a generator seeded with it.
class SeededTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed = fresh_seed();
    rng.reseed(seed);
  }
  uint64_t seed = 0;
  Rng rng{0};
};

inline sn_layer_desc_t make_desc(std::vector<int64_t> shape, sn_backend_t backend, int dim = 0) {
  sn_layer_desc_t d;
  EXPECT_EQ(sn_layer_desc_init(&d, int(shape.size()), shape.data()), SN_SUCCESS);
  d.backend = backend;
  d.dim = dim;
  return d;
}

// Sets an environment variable (or unsets it: value NULL) for a scope, then restores what was
// there before, also when an ASSERT leaves the scope early.
struct ScopedEnv {
  std::string name, old;
  bool had;
  ScopedEnv(const char *n, const char *value) : name(n) {
    const char *o = getenv(n);
    had = o != nullptr;
    if (had) old = o;
    set(value);
  }
  void set(const char *value) const {
    if (value) setenv(name.c_str(), value, 1);
    else unsetenv(name.c_str());
  }
  ~ScopedEnv() { set(had ? old.c_str() : nullptr); }
  ScopedEnv(const ScopedEnv &) = delete;
  ScopedEnv &operator=(const ScopedEnv &) = delete;
};

// The host loops' builds for a scope (sn_cpu_allow_features: -1 those for the CPU's vector
// extensions, 0 the baseline ones), then the mask before, also when an ASSERT leaves early.
struct ScopedCpuFeatures {
  int old;
  explicit ScopedCpuFeatures(int mask) : old(sn_cpu_allow_features(mask)) {}
  ~ScopedCpuFeatures() { sn_cpu_allow_features(old); }
  ScopedCpuFeatures(const ScopedCpuFeatures &) = delete;
  ScopedCpuFeatures &operator=(const ScopedCpuFeatures &) = delete;
};

// The CPU reference's grain (sn_ref_set_grain) on the calling thread for a scope: the threading
// tests split layers of a few 10⁵ elements at kTestGrain, below the default SN_REF_GRAIN, so
// that they stay small (and quick under ThreadSanitizer). The same code splits at any grain.
constexpr int64_t kTestGrain = int64_t{1} << 17;
struct ScopedGrain {
  int64_t old;
  explicit ScopedGrain(int64_t grain = kTestGrain) : old(sn_ref_set_grain(grain)) {}
  ~ScopedGrain() { sn_ref_set_grain(old); }
  ScopedGrain(const ScopedGrain &) = delete;
  ScopedGrain &operator=(const ScopedGrain &) = delete;
};

// SPECNORM_TUNE as the test runs under it, followed by a comma (empty when unset), for knobs to
// be appended: the parser takes the last value of a key, so a test's own knobs win while the
// others (gpu_check's tune_tests, say) still apply.
inline std::string tune_prefix() {
  const char *t = getenv("SPECNORM_TUNE");
  return t && *t ? std::string(t) + "," : std::string();
}

// The values of the elements of `dt` in `x` (a CPU layer's W_sn or dW, say), as floats.
inline std::vector<float> from_dtype(const std::vector<uint8_t> &x, sn_dtype_t dt) {
  std::vector<float> out(x.size() / sn_dtype_size(dt));
  for (size_t k = 0; k < out.size(); ++k) out[k] = sn_load(x.data(), dt, int64_t(k));
  return out;
}

// Host and device copies of a tensor of `dt`, offset by `offset` elements inside the device buffer.
struct Tensor {
  sn_dtype_t dt;
  int64_t n;
  std::vector<uint8_t> host;
  uint8_t *base = nullptr;
  void *dev = nullptr;
  Tensor(sn_dtype_t t, int64_t count, int offset = 0) : dt(t), n(count), host(static_cast<size_t>(count) * sn_dtype_size(t)) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void **>(&base), (static_cast<size_t>(count) + static_cast<size_t>(offset) + 1) * sn_dtype_size(t)), cudaSuccess);
    dev = base + static_cast<size_t>(offset) * sn_dtype_size(t);
  }
  ~Tensor() { cudaFree(base); }
  Tensor(const Tensor &) = delete;
  Tensor &operator=(const Tensor &) = delete;
  void set(const std::vector<float> &x) {
    for (size_t k = 0; k < x.size(); ++k) sn_store(host.data(), dt, int64_t(k), x[k]);
    upload();
  }
  void upload() { EXPECT_EQ(cudaMemcpy(dev, host.data(), host.size(), cudaMemcpyHostToDevice), cudaSuccess); }
  std::vector<float> download_floats() const {
    const std::vector<uint8_t> h = download_bytes();
    std::vector<float> out(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) out[static_cast<size_t>(k)] = sn_load(h.data(), dt, k);
    return out;
  }
  std::vector<uint8_t> download_bytes() const {
    std::vector<uint8_t> h(host.size());
    EXPECT_EQ(cudaMemcpy(h.data(), dev, h.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
  std::vector<float> host_floats() const { return from_dtype(host, dt); }
  void poison() { EXPECT_EQ(cudaMemset(dev, 0xFF, host.size()), cudaSuccess); }
};

struct LayerPtr {
  sn_layer_t *p = nullptr;
  LayerPtr() = default;
  explicit LayerPtr(const sn_layer_desc_t &d) {
    sn_status_t st = sn_layer_create(&p, &d);
    EXPECT_EQ(st, SN_SUCCESS) << sn_last_error_message();
  }
  ~LayerPtr() { sn_layer_destroy(p); }
  LayerPtr(const LayerPtr &) = delete;
  LayerPtr &operator=(const LayerPtr &) = delete;
  operator sn_layer_t *() const { return p; }
};

struct State {
  std::vector<float> u, v;
  float sigma = 0.f;
  int warmed = 0;
};

inline State get_state(sn_layer_t *l, sn_stream_t stream = nullptr) {
  int64_t h = 0, w = 0;
  EXPECT_EQ(sn_layer_get_dims(l, &h, &w), SN_SUCCESS);
  State s;
  s.u.resize(static_cast<size_t>(h));
  s.v.resize(static_cast<size_t>(w));
  EXPECT_EQ(sn_layer_get_state(l, s.u.data(), s.v.data(), &s.sigma, &s.warmed, stream), SN_SUCCESS)
      << sn_last_error_message();
  return s;
}

// Layer a's scale (sn_layer_get_scale: W_sn = scale · W) within `tol` of layer b's, relative.
inline void expect_scale_near(sn_layer_t *a, sn_layer_t *b, double tol) {
  float sa = 0.f, sb = 0.f;
  ASSERT_EQ(sn_layer_get_scale(a, &sa, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_layer_get_scale(b, &sb, nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_NEAR(sa / sb, 1.0, tol) << "scale " << sa << " against " << sb;
}

inline bool bitwise_equal(const std::vector<float> &a, const std::vector<float> &b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
}

inline bool same_state(const State &a, const State &b) {
  return bitwise_equal(a.u, b.u) && bitwise_equal(a.v, b.v) &&
         std::memcmp(&a.sigma, &b.sigma, 4) == 0 && a.warmed == b.warmed;
}

// max |a_k − b_k|; infinite where the sizes differ or one side is NaN (or infinite) and the other
// not the same (std::max would drop a NaN difference, so that a NaN output passed any tolerance).
inline double max_abs_diff(const std::vector<float> &a, const std::vector<float> &b) {
  if (a.size() != b.size()) return INFINITY;
  double m = 0;
  for (size_t k = 0; k < a.size(); ++k) {
    const double x = a[k], y = b[k];
    if (x == y || (std::isnan(x) && std::isnan(y))) continue;
    const double d = std::fabs(x - y);
    m = std::isnan(d) ? INFINITY : std::max(m, d);
  }
  return m;
}

// A layer's state and scale against another's (a CUDA layer against the CPU backend): σ and the
// scale to 1e-5 relative, u and v to vec_tol.
inline void expect_state_and_scale_near(sn_layer_t *a, sn_layer_t *b, double vec_tol) {
  const State sa = get_state(a), sb = get_state(b);
  EXPECT_NEAR(sa.sigma / sb.sigma, 1.0, 1e-5);
  EXPECT_LT(max_abs_diff(sa.u, sb.u), vec_tol);
  EXPECT_LT(max_abs_diff(sa.v, sb.v), vec_tol);
  float x = 0, y = 0;
  EXPECT_EQ(sn_layer_get_scale(a, &x, nullptr), SN_SUCCESS);
  EXPECT_EQ(sn_layer_get_scale(b, &y, nullptr), SN_SUCCESS);
  EXPECT_NEAR(x / y, 1.0, 1e-5);
}

inline double max_abs(const std::vector<float> &a) {
  double m = 0;
  for (float x : a) m = std::max(m, std::fabs(double(x)));
  return m;
}

inline std::vector<double> to_double(const std::vector<float> &x) {
  return std::vector<double>(x.begin(), x.end());
}

// uᵀ M v in double for M of u.size() × v.size() row-major; *size (if given) receives the sum of
// its terms' sizes, Σᵢ |uᵢ| Σⱼ |Mᵢⱼ vⱼ|, against which a float evaluation's rounding is measured.
inline double u_M_v(const std::vector<float> &u, const std::vector<float> &M, const std::vector<float> &v,
                    double *size = nullptr) {
  const size_t h = u.size(), w = v.size();
  double s = 0, a = 0;
  for (size_t i = 0; i < h; ++i) {
    double t = 0, ta = 0;
    for (size_t j = 0; j < w; ++j) {
      const double x = double(M[i * w + j]) * v[j];
      t += x;
      ta += std::fabs(x);
    }
    s += double(u[i]) * t;
    a += std::fabs(double(u[i])) * ta;
  }
  if (size) *size = a;
  return s;
}

inline std::string shape_str(const std::vector<int64_t> &s) {
  std::string r;
  for (size_t k = 0; k < s.size(); ++k) r += (k ? "x" : "") + std::to_string(s[k]);
  return r;
}

// The path (sn_path_t) of one kernel of the library, by its demangled name (its first identifier
// that names a kernel): SN_PATH_NONE for the kernels every path shares (reductions, commit and
// division), -1 for a kernel these tests do not know (a new kernel must be added here). A 1-D
// weight's matrix-vector kernel is its norm.
inline int path_of_kernel(const std::string &name, bool one_d) {
  static const std::pair<const char *, int> kernels[] = {
      {"on_chip_grid_kernel", SN_PATH_ON_CHIP_GRID}, {"on_chip_grid_streamed_kernel", SN_PATH_ON_CHIP_GRID},
      {"on_chip_grid_backward_kernel", SN_PATH_ON_CHIP_GRID}, {"group_on_chip_kernel", SN_PATH_ON_CHIP},
      {"on_chip_backward_kernel", SN_PATH_ON_CHIP}, {"group_backward_coop_kernel", SN_PATH_BACKWARD_COOP},
      {"inner_kernel", SN_PATH_BACKWARD_KERNELS}, {"apply_rows_kernel", SN_PATH_BACKWARD_KERNELS},
      {"apply_elements_kernel", SN_PATH_BACKWARD_KERNELS}, {"group_inner_kernel", SN_PATH_BACKWARD_KERNELS},
      {"group_apply_kernel", SN_PATH_BACKWARD_KERNELS}, {"one_pass_coop_kernel", SN_PATH_ONE_PASS_COOP},
      {"group_coop_kernel", SN_PATH_ONE_PASS_COOP}, {"one_pass_rows_kernel", SN_PATH_ONE_PASS_ROWS},
      {"one_pass_rows_pp_kernel", SN_PATH_ONE_PASS_ROWS}, {"group_rows_kernel", SN_PATH_ONE_PASS_ROWS},
      {"panel_kernel", SN_PATH_ONE_PASS_COLS}, {"matvec_kernel", SN_PATH_MATVEC},
      {"matvec_t_kernel", SN_PATH_MATVEC}, {"commit_divide_kernel", SN_PATH_NONE},
      {"one_pass_reduce_kernel", SN_PATH_NONE}, {"cols_reduce_kernel", SN_PATH_NONE},
      {"group_reduce_kernel", SN_PATH_NONE}, {"group_commit_kernel", SN_PATH_NONE},
  };
  for (size_t b = 0; b < name.size();) {  // each identifier in turn
    size_t e = b;
    while (e < name.size() && (std::isalnum((unsigned char)name[e]) || name[e] == '_')) ++e;
    if (e == b) {
      ++b;
      continue;
    }
    const std::string id = name.substr(b, e - b);
    for (const auto &k : kernels)
      if (id == k.first) return k.second == SN_PATH_MATVEC && one_d ? SN_PATH_ONE_D : k.second;
    b = e;
  }
  return -1;
}

// The paths of the kernels of one call, in launch order, less those every path shares; -1 for a
// kernel these tests do not know.
inline std::vector<int> paths_of_kernels(const std::vector<std::string> &kernels, bool one_d) {
  std::vector<int> out;
  for (const std::string &k : kernels) {
    const int p = path_of_kernel(k, one_d);
    if (p != SN_PATH_NONE) out.push_back(p);
  }
  return out;
}

// The path of a call that ran `kernels` (what sn_layer_get_paths and sn_group_get_paths must
// record for it): the one path all its kernels share; SN_PATH_NONE where they share none (two
// paths, or a kernel these tests do not know) or there is none.
inline sn_path_t path_of_kernels(const std::vector<std::string> &kernels, bool one_d) {
  const std::vector<int> p = paths_of_kernels(kernels, one_d);
  for (int x : p)
    if (x != p[0]) return SN_PATH_NONE;
  return p.empty() || p[0] < 0 ? SN_PATH_NONE : sn_path_t(p[0]);
}

// After a call of one kind (`kind`: sn_paths_t::train, ...) whose kernels were `ran` (names): the
// path that `o` (a layer or a group, read with `get`: sn_layer_get_paths, sn_group_get_paths)
// recorded is the one path those kernels took, and nothing was dropped.
template <class Object, class Get>
void expect_recorded_path(const Object *o, Get get, sn_path_t sn_paths_t::*kind,
                          const std::vector<std::string> &ran, bool one_d) {
  sn_paths_t p;
  std::memset(&p, 0xff, sizeof p);
  ASSERT_EQ(get(o, &p), SN_SUCCESS) << sn_last_error_message();
  const sn_path_t want = path_of_kernels(ran, one_d);
  EXPECT_NE(want, SN_PATH_NONE) << "kernels of no one known path: " << ::testing::PrintToString(ran);
  EXPECT_EQ(p.*kind, want) << "recorded " << sn_path_name(p.*kind) << ", ran " << ::testing::PrintToString(ran);
  EXPECT_EQ(p.dropped, 0u);
}

// The kernels that enqueue(stream) launches, demangled (e.g. "sn::(anonymous namespace)::
// commit_divide_kernel<true, float, false, false>(...)"), from a graph capture on a fresh stream:
// nothing runs. Tells which instance of a kernel a setting selected.
inline std::vector<std::string> captured_kernels(const std::function<sn_status_t(cudaStream_t)> &enqueue) {
  std::vector<std::string> names;
  cudaStream_t s = nullptr;
  if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
    ADD_FAILURE() << "cudaStreamCreateWithFlags failed";
    return names;
  }
  EXPECT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  EXPECT_EQ(enqueue(s), SN_SUCCESS) << sn_last_error_message();
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  size_t n = 0;
  if (graph && cudaGraphGetNodes(graph, nullptr, &n) == cudaSuccess) {
    std::vector<cudaGraphNode_t> nodes(n);
    EXPECT_EQ(cudaGraphGetNodes(graph, nodes.data(), &n), cudaSuccess);
    for (cudaGraphNode_t node : nodes) {
      cudaGraphNodeType type;
      if (cudaGraphNodeGetType(node, &type) != cudaSuccess || type != cudaGraphNodeTypeKernel) continue;
      cudaKernelNodeParams kp{};
      const char *name = nullptr;
      EXPECT_EQ(cudaGraphKernelNodeGetParams(node, &kp), cudaSuccess);
      EXPECT_EQ(cudaFuncGetName(&name, kp.func), cudaSuccess);
      int status = 0;
      char *plain = name ? abi::__cxa_demangle(name, nullptr, nullptr, &status) : nullptr;
      names.push_back(plain ? plain : name ? name : "?");
      std::free(plain);
    }
  }
  if (graph) cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
  return names;
}

// What `enqueue` returns when it runs inside a capture on a fresh stream that it may invalidate
// (a refused launch), with sn_last_error_message(); the capture is ended and dropped.
struct CaptureOutcome {
  sn_status_t status;
  std::string message;
};
inline CaptureOutcome capture_outcome(const std::function<sn_status_t(cudaStream_t)> &enqueue) {
  cudaStream_t s = nullptr;
  if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess ||
      cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) != cudaSuccess) {
    ADD_FAILURE() << "could not start a capture";
    if (s) cudaStreamDestroy(s);
    return {SN_ERROR_CUDA, "no capture"};
  }
  CaptureOutcome out{enqueue(s), ""};
  out.message = sn_last_error_message();
  cudaGraph_t graph = nullptr;
  (void)cudaStreamEndCapture(s, &graph);  // may report the capture invalidated
  if (graph) cudaGraphDestroy(graph);
  (void)cudaGetLastError();
  cudaStreamDestroy(s);
  return out;
}

// A layer as the on-chip plan sees it: its shape, the dim of its matrix view (negative from the
// end) and its dtype.
struct OnChipLayer {
  std::vector<int64_t> shape;
  int dim;
  sn_dtype_t dt;
  sn_order_t order = SN_ORDER_U_FIRST;
};

// How sn_cuda_on_chip_prepare holds these layers on chip on the current device (cluster 0: not
// at all): as a group (prefer_large 0), or as a single layer's plan does (1); force_cluster > 0:
// clusters of that size only.
inline sn_on_chip_t on_chip_plan_of(const std::vector<OnChipLayer> &layers, int force_cluster, int prefer_large) {
  std::vector<sn_group_entry_t> ent(layers.size());
  for (size_t k = 0; k < layers.size(); ++k) {
    const int nd = int(layers[k].shape.size());
    const int dim = layers[k].dim < 0 ? layers[k].dim + nd : layers[k].dim;
    sn_view_t v = sn_ref_view(nd, layers[k].shape.data(), dim);
    (void)sn_group_view(v, layers[k].order, &v);  // as host/group.c: Mᵀ's view for v-first
    ent[k].A = v.A;
    ent[k].h = v.h;
    ent[k].B = v.B;
    ent[k].w = v.A * v.B;
    ent[k].dtype = int(layers[k].dt);
  }
  sn_on_chip_t oc{};
  sn_cuda_on_chip_prepare(ent.data(), int(ent.size()), force_cluster, prefer_large, &oc);
  return oc;
}

// Whether the current device has cooperative launches (false where it cannot be asked).
inline bool cooperative_launch_here() {
  int dev = 0, coop = 0;
  return cudaGetDevice(&dev) == cudaSuccess &&
         cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) == cudaSuccess && coop;
}

// Device 0's compute capability major (9: sm_90), 0 where it cannot be asked.
inline int device_major() {
  int major = 0;
  return cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) == cudaSuccess ? major : 0;
}

// The multiprocessors of the emulated device (tests/emu_cuda/: 8 unless SPECNORM_EMU_SMS is set);
// 0 on a real device.
inline int emulated_sms() {
#ifdef SPECNORM_EMULATED
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess)
    return sms;
#endif
  return 0;  // a real device
}

// Whether one of the names matches the regular expression.
inline bool any_matches(const std::vector<std::string> &names, const std::string &re) {
  const std::regex r(re);
  return std::any_of(names.begin(), names.end(), [&](const std::string &n) { return std::regex_search(n, r); });
}

}  // namespace sntest
