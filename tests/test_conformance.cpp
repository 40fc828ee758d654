// specnorm against what other frameworks' own spectral-normalization code computes: the fixtures
// in tests/conformance/ (FRAMEWORK.txt) were written by tests/conformance/make_fixtures.py, which
// runs Keras 3's SpectralNormalization, flax.linen.SpectralNorm, haiku.SpectralNorm and PyTorch's
// two spectral norms (with an eval step) on seeded weights for a few training steps,
// the weight moving between steps. Each case is replayed here through the layer API with the
// settings README's "Against Keras, Flax and Haiku" gives for that framework, on the CPU backend
// and (with a GPU) the CUDA backend, and every step's W_sn, u, v and σ compared with the
// framework's, to the precision contract's 1e-5.
#include <fstream>
#include <sstream>

#include "test_util.h"

using namespace sntest;

namespace {

struct Step {
  bool training = true;
  std::vector<float> W, u, v, sigma, W_sn;  // v, sigma: only where the framework keeps them
};

struct FxCase {
  std::string name;
  std::vector<int64_t> shape;
  int dim = 0, iters = 1;
  bool in_place = false;
  sn_order_t order = SN_ORDER_U_FIRST;
  sn_eps_mode_t eps_mode = SN_EPS_CLAMP_NORM;
  float eps = 1e-12f;
  std::vector<float> u0, v0;
  std::vector<Step> steps;
};

std::vector<float> read_vec(std::istream &in) {
  size_t n = 0;
  in >> n;
  std::vector<float> x(n);
  for (float &e : x) in >> e;
  return x;
}

// The fixture file's cases; *made_by gets its "made-by" line (the framework's version). An empty
// list with *error set when the file is missing or malformed.
std::vector<FxCase> read_fixture(const std::string &path, std::string *made_by, std::string *error) {
  std::ifstream in(path);
  std::vector<FxCase> cases;
  if (!in) {
    *error = "cannot open " + path;
    return cases;
  }
  std::string key;
  in >> key;
  int version = 0;
  in >> version;
  if (key != "specnorm-conformance" || version != 1) {
    *error = path + ": not a version-1 conformance fixture";
    return cases;
  }
  while (in >> key) {
    if (key == "made-by") {
      std::getline(in, *made_by);
    } else if (key == "case") {
      cases.emplace_back();
      in >> cases.back().name;
    } else if (key == "end") {
      return cases;
    } else if (cases.empty()) {
      break;
    } else if (key == "end-case") {
      continue;
    } else if (FxCase &c = cases.back(); key == "shape") {
      int nd = 0;
      in >> nd;
      c.shape.resize(size_t(std::max(0, nd)));
      for (int64_t &d : c.shape) in >> d;
    } else if (key == "dim") {
      in >> c.dim;
    } else if (key == "iters") {
      in >> c.iters;
    } else if (key == "in_place") {
      int b = 0;
      in >> b;
      c.in_place = b != 0;
    } else if (key == "order") {
      std::string o;
      in >> o;
      c.order = o == "v_first" ? SN_ORDER_V_FIRST : SN_ORDER_U_FIRST;
    } else if (key == "eps_mode") {
      std::string m;
      in >> m;
      c.eps_mode = m == "add_squared" ? SN_EPS_ADD_SQUARED : SN_EPS_CLAMP_NORM;
    } else if (key == "eps") {
      in >> c.eps;
    } else if (key == "u0") {
      c.u0 = read_vec(in);
    } else if (key == "v0") {
      c.v0 = read_vec(in);
    } else if (key == "step") {
      std::string mode;
      in >> mode;
      c.steps.emplace_back();
      c.steps.back().training = mode == "train";
    } else if (c.steps.empty()) {
      break;
    } else if (key == "W") {
      c.steps.back().W = read_vec(in);
    } else if (key == "u") {
      c.steps.back().u = read_vec(in);
    } else if (key == "v") {
      c.steps.back().v = read_vec(in);
    } else if (key == "sigma") {
      c.steps.back().sigma = read_vec(in);
    } else if (key == "W_sn") {
      c.steps.back().W_sn = read_vec(in);
    } else {
      break;
    }
  }
  *error = path + ": malformed near \"" + key + "\"";
  cases.clear();
  return cases;
}

// W_sn, u, v and σ of a layer, after a forward (host copies, whatever the backend).
struct Outcome {
  std::vector<float> W_sn;
  State state;
};

// Case c's layer on `backend`, made as the framework's settings map onto specnorm's, with u0 (and
// v0) loaded as a warmed-up state.
void make_layer(const FxCase &c, sn_backend_t backend, LayerPtr *l) {
  sn_layer_desc_t d = make_desc(c.shape, backend, c.dim);
  d.order = c.order;
  d.eps = c.eps;
  d.eps_mode = c.eps_mode;
  d.n_power_iterations = c.iters;
  d.warmup_iterations = 0;
  ASSERT_EQ(sn_layer_create(&l->p, &d), SN_SUCCESS) << sn_last_error_message();
  int64_t h = 0, w = 0;
  ASSERT_EQ(sn_layer_get_dims(l->p, &h, &w), SN_SUCCESS);
  ASSERT_EQ(int64_t(c.u0.size()), h) << "u0 of the fixture";
  // The frameworks of the v-first order keep no v: its first product needs none. Ones then.
  const std::vector<float> v0 = c.v0.empty() ? std::vector<float>(size_t(w), 1.f) : c.v0;
  ASSERT_EQ(int64_t(v0.size()), w) << "v0 of the fixture";
  ASSERT_EQ(sn_layer_set_state(l->p, c.u0.data(), v0.data(), 0.f, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
}

// The layer's W_sn (`out`) and state after step s, against the framework's.
void expect_step(const std::vector<float> &out, sn_layer_t *l, const Step &s) {
  const State st = get_state(l);
  EXPECT_LE(max_abs_diff(out, s.W_sn), 1e-5 * max_abs(s.W_sn)) << "W_sn";
  EXPECT_LE(max_abs_diff(st.u, s.u), 1e-5) << "u";
  if (!s.v.empty()) {
    EXPECT_LE(max_abs_diff(st.v, s.v), 1e-5) << "v";
  }
  if (!s.sigma.empty()) {
    EXPECT_NEAR(st.sigma / s.sigma[0], 1.0, 1e-5) << "sigma " << st.sigma << " against " << s.sigma[0];
  }
}

// A step's weight where the backend reads it, and its W_sn where the backend writes it (W itself
// for an in-place case): host vectors for the CPU, device tensors for CUDA.
struct StepBuffers {
  std::vector<float> hW, hO;
  std::unique_ptr<Tensor> dW, dO;
  void *W = nullptr, *out = nullptr;
  StepBuffers(const FxCase &c, const Step &s, sn_backend_t backend) {
    const int64_t n = numel_of(c.shape);
    if (backend == SN_BACKEND_CPU) {
      hW = s.W;
      hO.assign(size_t(n), NAN);
      W = hW.data();
      out = c.in_place ? W : hO.data();
    } else {
      dW = std::make_unique<Tensor>(SN_DTYPE_FLOAT32, n);
      dO = std::make_unique<Tensor>(SN_DTYPE_FLOAT32, n);
      dW->set(s.W);
      dO->poison();
      W = dW->dev;
      out = c.in_place ? W : dO->dev;
    }
  }
  std::vector<float> result(bool in_place) const {
    if (dW) return in_place ? dW->download_floats() : dO->download_floats();
    return in_place ? hW : hO;
  }
};

// Replays case c on `backend`: each step's forward on the step's W. With on_grid (CUDA), then
// counts the layer there if a training forward of it is a launch of the layer on chip over the
// grid (cuda/on_chip_grid.cu), read from a graph capture.
void replay(const FxCase &c, sn_backend_t backend, int *on_grid = nullptr) {
  LayerPtr l;
  make_layer(c, backend, &l);
  if (!l.p) return;
  const int64_t n = numel_of(c.shape);
  for (size_t k = 0; k < c.steps.size(); ++k) {
    SCOPED_TRACE("step " + std::to_string(k) + (c.steps[k].training ? " (training)" : " (eval)"));
    const Step &s = c.steps[k];
    ASSERT_EQ(int64_t(s.W.size()), n);
    ASSERT_EQ(int64_t(s.W_sn.size()), n);
    StepBuffers b(c, s, backend);
    ASSERT_EQ(sn_forward(l, b.W, b.out, s.training, nullptr), SN_SUCCESS) << sn_last_error_message();
    expect_step(b.result(c.in_place), l.p, s);
  }
  if (!on_grid) return;
  const StepBuffers b(c, c.steps.back(), backend);
  const std::vector<std::string> names =
      captured_kernels([&](cudaStream_t st) { return sn_forward(l, b.W, b.out, 1, st); });
  *on_grid += any_matches(names, "on_chip_grid_kernel") ? 1 : 0;
}

// Replays every case of a framework at once, as one group (sn_group_create over their layers, in
// either order: PyTorch's fixture mixes its two spectral norms), one sn_group_forward a step. The
// group is made anew each step over that step's buffers (a group binds its W and W_sn).
void replay_grouped(const std::vector<FxCase> &cases, sn_backend_t backend) {
  std::vector<LayerPtr> ls(cases.size());
  for (size_t q = 0; q < cases.size(); ++q) {
    SCOPED_TRACE(cases[q].name);
    make_layer(cases[q], backend, &ls[q]);
    if (!ls[q].p) return;
    ASSERT_EQ(cases[q].steps.size(), cases[0].steps.size());
  }
  std::vector<sn_layer_t *> layers;
  for (const LayerPtr &l : ls) layers.push_back(l.p);
  for (size_t k = 0; k < cases[0].steps.size(); ++k) {
    const bool training = cases[0].steps[k].training;
    SCOPED_TRACE("step " + std::to_string(k) + (training ? " (training)" : " (eval)"));
    std::vector<std::unique_ptr<StepBuffers>> bufs;
    std::vector<const void *> W;
    std::vector<void *> out;
    for (const FxCase &c : cases) {
      ASSERT_EQ(c.steps[k].training, training) << c.name;
      bufs.push_back(std::make_unique<StepBuffers>(c, c.steps[k], backend));
      W.push_back(bufs.back()->W);
      out.push_back(bufs.back()->out);
    }
    sn_group_t *g = nullptr;
    ASSERT_EQ(sn_group_create(&g, layers.data(), W.data(), out.data(), int(layers.size())), SN_SUCCESS)
        << sn_last_error_message();
    const sn_status_t st = sn_group_forward(g, training, nullptr);
    sn_group_destroy(g);
    ASSERT_EQ(st, SN_SUCCESS) << sn_last_error_message();
    for (size_t q = 0; q < cases.size(); ++q) {
      SCOPED_TRACE(cases[q].name);
      expect_step(bufs[q]->result(cases[q].in_place), layers[q], cases[q].steps[k]);
    }
  }
}

using Param = std::tuple<sn_backend_t, const char *>;

// The test's backend and its framework's fixture (cases and "made-by" line), whole; skips the
// CUDA cases without a GPU.
class Conformance : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    backend = std::get<0>(GetParam());
    framework = std::get<1>(GetParam());
    if (backend == SN_BACKEND_CUDA) REQUIRE_GPU();
    const std::string path = std::string(SN_CONFORMANCE_DIR) + "/" + framework + ".txt";
    std::string error;
    cases = read_fixture(path, &made_by, &error);
    ASSERT_TRUE(error.empty()) << error;
    ASSERT_GE(cases.size(), 6u) << path;
    for (const FxCase &c : cases) ASSERT_GE(c.steps.size(), 3u) << c.name;
  }
  sn_backend_t backend = SN_BACKEND_CPU;
  std::string framework, made_by;
  std::vector<FxCase> cases;
};

}  // namespace

TEST_P(Conformance, EveryStepMatchesTheFramework) {
  SCOPED_TRACE(framework + ", made by" + made_by);
  for (const FxCase &c : cases) {
    SCOPED_TRACE(c.name);
    replay(c, backend);
  }
}

// The same fixtures through one grouped call a step (v-first members for Keras, Flax and Haiku;
// both orders in PyTorch's).
TEST_P(Conformance, EveryStepMatchesTheFrameworkGrouped) {
  SCOPED_TRACE(framework + ", made by" + made_by);
  replay_grouped(cases, backend);
}

INSTANTIATE_TEST_SUITE_P(Frameworks, Conformance,
                         ::testing::Combine(::testing::Values(SN_BACKEND_CPU, SN_BACKEND_CUDA),
                                            ::testing::Values("keras", "flax", "haiku", "torch")),
                         [](const ::testing::TestParamInfo<Param> &info) {
                           return std::string(std::get<0>(info.param) == SN_BACKEND_CPU ? "cpu_" : "cuda_") +
                                  std::get<1>(info.param);
                         });

// Every framework's fixture with the layers that can be held on chip over the whole grid held there
// (SPECNORM_TUNE=op_onchip_grid=2, off by default; op_onchip=0 keeps PyTorch's small u-first layers
// off the cluster path): Keras', Flax's and Haiku's v-first layers with dim −1 as the u-first
// iteration on their Mᵀ, PyTorch's u-first ones as they are; PyTorch's legacy v-first layers
// (dim 0, M's columns strided) keep their kernels, but for those of a single row or column, whose
// Mᵀ is contiguous. At least one layer of each framework on the grid.
TEST(FrameworksOnTheGrid, EveryStepMatchesTheFramework) {
  REQUIRE_GPU();
  if (!cooperative_launch_here()) GTEST_SKIP() << "no cooperative launch on this device: no layer on the grid";
  ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + "op_onchip=0,op_onchip_grid=2").c_str());
  for (const char *framework : {"keras", "flax", "haiku", "torch"}) {
    SCOPED_TRACE(framework);
    std::string made_by, error;
    const std::vector<FxCase> cases =
        read_fixture(std::string(SN_CONFORMANCE_DIR) + "/" + framework + ".txt", &made_by, &error);
    ASSERT_TRUE(error.empty()) << error;
    int on_grid = 0;
    for (const FxCase &c : cases) {
      SCOPED_TRACE(c.name);
      replay(c, SN_BACKEND_CUDA, &on_grid);
    }
    EXPECT_GT(on_grid, 0) << "no layer of the fixture on the grid";
  }
}
