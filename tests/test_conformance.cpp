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

// Replays case c on `backend`: the layer made as the framework's settings map onto specnorm's,
// u0 (and v0) loaded as a warmed-up state, then each step's forward on the step's W.
void replay(const FxCase &c, sn_backend_t backend) {
  sn_layer_desc_t d = make_desc(c.shape, backend, c.dim);
  d.order = c.order;
  d.eps = c.eps;
  d.eps_mode = c.eps_mode;
  d.n_power_iterations = c.iters;
  d.warmup_iterations = 0;
  LayerPtr l(d);
  ASSERT_NE(l.p, nullptr) << sn_last_error_message();
  int64_t h = 0, w = 0;
  ASSERT_EQ(sn_layer_get_dims(l, &h, &w), SN_SUCCESS);
  ASSERT_EQ(int64_t(c.u0.size()), h) << "u0 of the fixture";
  // The frameworks of the v-first order keep no v: its first product needs none. Ones then.
  const std::vector<float> v0 = c.v0.empty() ? std::vector<float>(size_t(w), 1.f) : c.v0;
  ASSERT_EQ(int64_t(v0.size()), w) << "v0 of the fixture";
  ASSERT_EQ(sn_layer_set_state(l, c.u0.data(), v0.data(), 0.f, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  const int64_t n = numel_of(c.shape);
  for (size_t k = 0; k < c.steps.size(); ++k) {
    SCOPED_TRACE("step " + std::to_string(k) + (c.steps[k].training ? " (training)" : " (eval)"));
    const Step &s = c.steps[k];
    ASSERT_EQ(int64_t(s.W.size()), n);
    ASSERT_EQ(int64_t(s.W_sn.size()), n);
    std::vector<float> out(size_t(n), NAN);
    if (backend == SN_BACKEND_CPU) {
      std::vector<float> W = s.W;
      float *dst = c.in_place ? W.data() : out.data();
      ASSERT_EQ(sn_forward(l, W.data(), dst, s.training, nullptr), SN_SUCCESS) << sn_last_error_message();
      if (c.in_place) out = W;
    } else {
      Tensor W(SN_DTYPE_FLOAT32, n), O(SN_DTYPE_FLOAT32, n);
      W.set(s.W);
      O.poison();
      void *dst = c.in_place ? W.dev : O.dev;
      ASSERT_EQ(sn_forward(l, W.dev, dst, s.training, nullptr), SN_SUCCESS) << sn_last_error_message();
      out = c.in_place ? W.download_floats() : O.download_floats();
    }
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
}

using Param = std::tuple<sn_backend_t, const char *>;

class Conformance : public ::testing::TestWithParam<Param> {};

}  // namespace

TEST_P(Conformance, EveryStepMatchesTheFramework) {
  const sn_backend_t backend = std::get<0>(GetParam());
  const std::string framework = std::get<1>(GetParam());
  if (backend == SN_BACKEND_CUDA) REQUIRE_GPU();
  const std::string path = std::string(SN_CONFORMANCE_DIR) + "/" + framework + ".txt";
  std::string made_by, error;
  const std::vector<FxCase> cases = read_fixture(path, &made_by, &error);
  ASSERT_TRUE(error.empty()) << error;
  ASSERT_GE(cases.size(), 6u) << path;
  SCOPED_TRACE(framework + ", made by" + made_by);
  for (const FxCase &c : cases) {
    SCOPED_TRACE(c.name);
    ASSERT_GE(c.steps.size(), 3u);
    replay(c, backend);
  }
}

INSTANTIATE_TEST_SUITE_P(Frameworks, Conformance,
                         ::testing::Combine(::testing::Values(SN_BACKEND_CPU, SN_BACKEND_CUDA),
                                            ::testing::Values("keras", "flax", "haiku", "torch")),
                         [](const ::testing::TestParamInfo<Param> &info) {
                           return std::string(std::get<0>(info.param) == SN_BACKEND_CPU ? "cpu_" : "cuda_") +
                                  std::get<1>(info.param);
                         });
