// Training-loop entry points on CUDA layers against the CPU backend: fp16 / bf16 weights, the
// backward in every layout and with every flag, the scale-only forward, γ and the norm bound,
// and a whole step captured in a CUDA graph. Every test skips with a message without a GPU.
#include <cuda_runtime.h>

#include "sn_internal.h"
#include "test_util.h"

using namespace sntest;

namespace {


const char *dtype_name(sn_dtype_t t) {
  return t == SN_DTYPE_FLOAT16 ? "fp16" : t == SN_DTYPE_BFLOAT16 ? "bf16" : "fp32";
}

// Relative size of one unit in the last place of the type (for tolerances on rounded outputs).
double ulp(sn_dtype_t t) { return t == SN_DTYPE_FLOAT16 ? 1.0 / 1024 : t == SN_DTYPE_BFLOAT16 ? 1.0 / 128 : 1.2e-7; }

// max |a - b| over max(|b|): a relative error of the whole tensor.
double rel_err(const std::vector<float> &a, const std::vector<float> &b) {
  return max_abs_diff(a, b) / std::max(1e-30, max_abs(b));
}

struct DtCase {
  std::vector<int64_t> shape;
  int dim;
  sn_dtype_t dt;
  sn_algo_t algo;
  sn_order_t order = SN_ORDER_U_FIRST;
};


}  // namespace

TEST(GpuTraining, HalfWeightsMatchTheCpuBackend) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  for (const DtCase &c : {DtCase{{4096, 4096}, 0, SN_DTYPE_BFLOAT16, SN_ALGO_DEFAULT},
                          DtCase{{1000, 4100}, 0, SN_DTYPE_FLOAT16, SN_ALGO_ONE_PASS},
                          DtCase{{700, 16384}, 0, SN_DTYPE_BFLOAT16, SN_ALGO_ONE_PASS},
                          DtCase{{300, 517}, 1, SN_DTYPE_BFLOAT16, SN_ALGO_DEFAULT},
                          DtCase{{5, 7, 2}, -1, SN_DTYPE_FLOAT16, SN_ALGO_DEFAULT},
                          DtCase{{1, 1000}, 0, SN_DTYPE_BFLOAT16, SN_ALGO_DEFAULT},
                          DtCase{{100000}, 0, SN_DTYPE_BFLOAT16, SN_ALGO_DEFAULT},
                          DtCase{{128, 128, 3, 3}, 0, SN_DTYPE_FLOAT16, SN_ALGO_TWO_PASS},
                          // one-pass with 8-element (16-byte) packs: 144 and 1024 packs per row
                          DtCase{{600, 1152}, 0, SN_DTYPE_FLOAT16, SN_ALGO_ONE_PASS},
                          DtCase{{2000, 8192}, 0, SN_DTYPE_BFLOAT16, SN_ALGO_ONE_PASS},
                          // v-first by column panels: 2-byte panels of up to 1536 rows
                          DtCase{{1536, 1000}, 0, SN_DTYPE_BFLOAT16, SN_ALGO_ONE_PASS, SN_ORDER_V_FIRST},
                          DtCase{{300, 517}, 1, SN_DTYPE_FLOAT16, SN_ALGO_ONE_PASS, SN_ORDER_V_FIRST},
                          // 1 × 1, N × 1, 1 × N and 1-D in both 2-byte types
                          DtCase{{1, 1}, 0, SN_DTYPE_BFLOAT16, SN_ALGO_DEFAULT},
                          DtCase{{1, 1}, 0, SN_DTYPE_FLOAT16, SN_ALGO_DEFAULT},
                          DtCase{{1000, 1}, 0, SN_DTYPE_FLOAT16, SN_ALGO_DEFAULT},
                          DtCase{{97, 1}, 0, SN_DTYPE_BFLOAT16, SN_ALGO_DEFAULT, SN_ORDER_V_FIRST},
                          DtCase{{1, 999}, 0, SN_DTYPE_FLOAT16, SN_ALGO_DEFAULT},
                          DtCase{{1001}, 0, SN_DTYPE_FLOAT16, SN_ALGO_DEFAULT}}) {
    SCOPED_TRACE(shape_str(c.shape) + " dim " + std::to_string(c.dim) + " " + dtype_name(c.dt));
    sn_layer_desc_t dg = make_desc(c.shape, SN_BACKEND_CUDA, c.dim);
    dg.dtype = c.dt;
    dg.algo = c.algo;
    dg.order = c.order;
    dg.seed = rng.gen();
    sn_layer_desc_t dc = dg;
    dc.backend = SN_BACKEND_CPU;
    LayerPtr g(dg), cpu(dc);
    ASSERT_TRUE(g.p && cpu.p);
    const int64_t n = numel_of(c.shape);
    Tensor W(c.dt, n), out(c.dt, n);
    std::vector<float> w32 = rng.normals(n, 1.f / std::sqrt(float(n)));
    std::vector<uint8_t> out_cpu(W.host.size());
    // Training, training, eval, then a scale-only (training) forward on its default path.
    for (int step = 0; step < 4; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      for (auto &x : w32) x += 0.01f * rng.normal() / std::sqrt(float(n));
      W.set(w32);
      out.poison();
      const int training = step != 2;
      if (step == 3) {
        ASSERT_EQ(sn_forward_scale_only(g, W.dev, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
        ASSERT_EQ(sn_forward_scale_only(cpu, W.host.data(), 1, nullptr), SN_SUCCESS);
      } else {
        ASSERT_EQ(sn_forward(g, W.dev, out.dev, training, nullptr), SN_SUCCESS) << sn_last_error_message();
        ASSERT_EQ(sn_forward(cpu, W.host.data(), out_cpu.data(), training, nullptr), SN_SUCCESS);
      }
      const State sg = get_state(g), sc = get_state(cpu);
      EXPECT_NEAR(sg.sigma / sc.sigma, 1.0, 1e-5);
      EXPECT_LT(max_abs_diff(sg.u, sc.u), 2e-5);
      EXPECT_LT(max_abs_diff(sg.v, sc.v), 2e-5);
      if (step == 3) {
        expect_scale_near(g, cpu, 1e-5);
        continue;
      }
      // W_sn: both round W / σ once to the type; σ differs by ~1e-6, so at most one unit apart.
      const std::vector<float> og = out.download_floats(), oc = from_dtype(out_cpu, c.dt);
      for (size_t k = 0; k < oc.size(); ++k)
        ASSERT_LE(std::fabs(og[k] - oc[k]), ulp(c.dt) * std::fabs(oc[k]) * 1.01 + 1e-30) << k;
    }
  }
}

struct BwCase {
  std::vector<int64_t> shape;
  int dim;
  sn_dtype_t dt;
  unsigned flags;
  bool gamma;
  float bound_rel;  // norm bound as a multiple of σ, 0: none
  int offset;       // elements by which G and dW are misaligned
  sn_order_t order = SN_ORDER_U_FIRST;
};

TEST(GpuTraining, BackwardMatchesTheCpuBackend) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const BwCase cases[] = {
      {{4096, 4096}, 0, SN_DTYPE_FLOAT32, 0, false, 0.f, 0},
      {{1000, 4099}, 0, SN_DTYPE_FLOAT32, SN_BACKWARD_ACCUMULATE, false, 0.f, 0},
      {{257, 1024}, 0, SN_DTYPE_FLOAT32, 0, false, 0.f, 1},
      {{300, 517}, 1, SN_DTYPE_FLOAT32, 0, false, 0.f, 0},
      {{4, 6, 3, 3}, 1, SN_DTYPE_FLOAT32, SN_BACKWARD_ACCUMULATE, false, 0.f, 0},
      {{5, 7, 2}, -1, SN_DTYPE_FLOAT32, 0, false, 0.f, 0},
      {{64, 48}, 0, SN_DTYPE_FLOAT32, SN_BACKWARD_DETACH_SIGMA, false, 0.f, 0},
      {{64, 48}, 0, SN_DTYPE_FLOAT32, 0, true, 0.f, 0},
      {{64, 48}, 0, SN_DTYPE_FLOAT32, 0, false, 0.5f, 0},
      {{64, 48}, 0, SN_DTYPE_FLOAT32, 0, false, 2.f, 0},
      {{2048, 2048}, 0, SN_DTYPE_BFLOAT16, 0, true, 0.f, 0},
      {{512, 1152}, 0, SN_DTYPE_FLOAT16, SN_BACKWARD_ACCUMULATE, false, 0.f, 0},
      {{96, 48, 4, 4}, 1, SN_DTYPE_BFLOAT16, 0, false, 0.f, 0},
      // 16-byte accesses of 8 elements: rows of 1004 (not a multiple of 8), and G, dW moved by 4
      // elements (8-byte aligned, not 16) so that only the element loops run.
      {{300, 1004}, 0, SN_DTYPE_BFLOAT16, SN_BACKWARD_ACCUMULATE, false, 0.f, 0},
      {{256, 1024}, 0, SN_DTYPE_FLOAT16, 0, false, 0.f, 4},
      {{1000}, 0, SN_DTYPE_FLOAT32, 0, false, 0.f, 0},
      // Accumulations through the wide rows (whole packs, G and dW 16-byte aligned): fp32 with
      // rows of a multiple of 4, bf16 of 8 (a mutation that dropped fp32's sum there went unseen).
      {{257, 1024}, 0, SN_DTYPE_FLOAT32, SN_BACKWARD_ACCUMULATE, true, 0.f, 0},
      {{128, 64, 3, 3}, 0, SN_DTYPE_BFLOAT16, SN_BACKWARD_ACCUMULATE, false, 0.f, 0},
      // 1 × 1, 1 × N, N × 1 with each flag, the 2-byte types, and v-first layers (a 1 × 1
      // layer's dW is 0 but for σ detached or an accumulation: G's part along u vᵀ is all of G)
      {{1, 1}, 0, SN_DTYPE_FLOAT32, SN_BACKWARD_DETACH_SIGMA, true, 0.f, 0},
      {{1, 777}, 0, SN_DTYPE_FLOAT32, SN_BACKWARD_ACCUMULATE, false, 0.f, 0},
      {{97, 1}, 0, SN_DTYPE_FLOAT32, SN_BACKWARD_DETACH_SIGMA, false, 0.f, 0},
      {{1, 1}, 0, SN_DTYPE_BFLOAT16, SN_BACKWARD_ACCUMULATE, false, 0.f, 0},
      {{33, 1}, 0, SN_DTYPE_FLOAT16, 0, false, 0.5f, 0},
      {{1, 130}, 0, SN_DTYPE_FLOAT16, SN_BACKWARD_DETACH_SIGMA, false, 0.f, 0},
      {{300, 517}, 0, SN_DTYPE_FLOAT32, 0, false, 0.f, 0, SN_ORDER_V_FIRST},
      {{96, 48, 4, 4}, 1, SN_DTYPE_BFLOAT16, SN_BACKWARD_ACCUMULATE, true, 0.f, 0, SN_ORDER_V_FIRST},
  };
  for (const BwCase &c : cases) {
    SCOPED_TRACE(shape_str(c.shape) + " dim " + std::to_string(c.dim) + " " + dtype_name(c.dt) +
                 " flags " + std::to_string(c.flags) + (c.gamma ? " gamma" : "") + " bound " +
                 std::to_string(c.bound_rel) + " offset " + std::to_string(c.offset) +
                 (c.order == SN_ORDER_V_FIRST ? " v-first" : ""));
    const int64_t n = numel_of(c.shape);
    sn_layer_desc_t dg = make_desc(c.shape, SN_BACKEND_CUDA, c.dim);
    dg.dtype = c.dt;
    dg.order = c.order;
    LayerPtr probe(dg);  // for σ, to place the norm bound
    Tensor W(c.dt, n), G(c.dt, n, c.offset), dW(c.dt, n, c.offset), Wsn(c.dt, n);
    W.set(rng.normals(n, 1.f / std::sqrt(float(n))));
    ASSERT_EQ(sn_forward(probe, W.dev, Wsn.dev, 1, nullptr), SN_SUCCESS);
    dg.norm_bound = c.bound_rel * get_state(probe).sigma;
    sn_layer_desc_t dc = dg;
    dc.backend = SN_BACKEND_CPU;
    LayerPtr g(dg), cpu(dc);
    float *d_gamma = nullptr, *d_dgamma = nullptr, h_gamma = 1.75f, h_dgamma = 0.f;
    if (c.gamma) {
      ASSERT_EQ(cudaMalloc(&d_gamma, 8), cudaSuccess);
      d_dgamma = d_gamma + 1;
      ASSERT_EQ(cudaMemcpy(d_gamma, &h_gamma, 4, cudaMemcpyHostToDevice), cudaSuccess);
      ASSERT_EQ(sn_layer_set_gamma(g, d_gamma), SN_SUCCESS);
      ASSERT_EQ(sn_layer_set_gamma(cpu, &h_gamma), SN_SUCCESS);
    }
    ASSERT_EQ(sn_forward(g, W.dev, Wsn.dev, 1, nullptr), SN_SUCCESS);
    // The CPU layer gets the GPU's state, so only the backward is compared.
    const State s = get_state(g);
    ASSERT_EQ(sn_layer_set_state(cpu, s.u.data(), s.v.data(), s.sigma, 1, nullptr), SN_SUCCESS);
    std::vector<uint8_t> wsn_cpu(W.host.size());
    ASSERT_EQ(sn_forward(cpu, W.host.data(), wsn_cpu.data(), 0, nullptr), SN_SUCCESS);  // sets its scale
    ASSERT_EQ(sn_layer_set_state(cpu, s.u.data(), s.v.data(), s.sigma, 1, nullptr), SN_SUCCESS);
    float scale_g = 0, scale_c = 0;
    ASSERT_EQ(sn_layer_get_scale(g, &scale_g, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_layer_get_scale(cpu, &scale_c, nullptr), SN_SUCCESS);
    // G with a part along W, so that the σ term ⟨G, W⟩ / σ · u vᵀ is about as large as G's own
    // elements (for a G independent of W it is ~1/√n of them: within the 2-byte types' tolerance,
    // where a mutation that dropped it from half of each 8-element pack went unseen but for the
    // largest layers).
    std::vector<float> gh = rng.normals(n);
    const std::vector<float> wh = W.host_floats();
    const float along = get_state(probe).sigma * std::sqrt(float(n));
    for (size_t q = 0; q < gh.size(); ++q) gh[q] += along * wh[q];
    G.set(gh);
    dW.set(rng.normals(n));  // the accumulation target
    std::vector<uint8_t> dw_cpu = dW.host;
    ASSERT_EQ(sn_backward(g, W.dev, G.dev, dW.dev, c.flags, d_dgamma, nullptr), SN_SUCCESS)
        << sn_last_error_message();
    ASSERT_EQ(sn_backward(cpu, W.host.data(), G.host.data(), dw_cpu.data(), c.flags,
                          c.gamma ? &h_dgamma : nullptr, nullptr),
              SN_SUCCESS);
    EXPECT_LT(rel_err(dW.download_floats(), from_dtype(dw_cpu, c.dt)),
              c.dt == SN_DTYPE_FLOAT32 ? 1e-5 : 2 * ulp(c.dt));
    if (c.gamma) {
      float dgamma = 0;
      ASSERT_EQ(cudaMemcpy(&dgamma, d_dgamma, 4, cudaMemcpyDeviceToHost), cudaSuccess);
      EXPECT_NEAR(dgamma / h_dgamma, 1.0, c.dt == SN_DTYPE_FLOAT32 ? 1e-4 : 1e-3);
      cudaFree(d_gamma);
    }
  }
}

// The two cases where the backward's coefficients are not the last forward's scale and σ term:
// a 1-D weight under its eps clamp (‖W‖ < eps: W_sn = W / eps, dW = G / eps, no σ term), and a γ
// changed between the forward and the backward (γ is read by the backward, on both backends).
// Also with the on-chip backward (op_onchip=1) for the 2-D layer where it fits.
TEST(GpuTraining, BackwardOfClampedWeightAndChangedGammaMatchTheCpuBackend) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  for (const char *tune : {"", "op_onchip=1"}) {
    SCOPED_TRACE(std::string("SPECNORM_TUNE ") + tune);
    ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + tune).c_str());
    for (const bool one_d : {true, false}) {
      SCOPED_TRACE(one_d ? "1-D weight, ‖W‖ < eps = 1" : "64 x 48, γ 2 then 3");
      const std::vector<int64_t> shape = one_d ? std::vector<int64_t>{37} : std::vector<int64_t>{64, 48};
      const int64_t n = numel_of(shape);
      sn_layer_desc_t dg = make_desc(shape, SN_BACKEND_CUDA);
      if (one_d) dg.eps = 1.f;
      sn_layer_desc_t dc = dg;
      dc.backend = SN_BACKEND_CPU;
      LayerPtr g(dg), cpu(dc);
      ASSERT_TRUE(g.p && cpu.p);
      float *d_gamma = nullptr, h_gamma = 2.f;
      ASSERT_EQ(cudaMalloc(&d_gamma, 4), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(d_gamma, &h_gamma, 4, cudaMemcpyHostToDevice), cudaSuccess);
      if (!one_d) {
        ASSERT_EQ(sn_layer_set_gamma(g, d_gamma), SN_SUCCESS);
        ASSERT_EQ(sn_layer_set_gamma(cpu, &h_gamma), SN_SUCCESS);
      }
      Tensor W(SN_DTYPE_FLOAT32, n), Wsn(SN_DTYPE_FLOAT32, n), G(SN_DTYPE_FLOAT32, n), dW(SN_DTYPE_FLOAT32, n);
      W.set(rng.normals(n, one_d ? 0.01f : 1.f / std::sqrt(float(n))));
      std::vector<float> wsn_cpu(static_cast<size_t>(n)), dw_cpu(static_cast<size_t>(n));
      ASSERT_EQ(sn_forward(g, W.dev, Wsn.dev, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
      ASSERT_EQ(sn_forward(cpu, W.host.data(), wsn_cpu.data(), 1, nullptr), SN_SUCCESS);
      h_gamma = 3.f;
      ASSERT_EQ(cudaMemcpy(d_gamma, &h_gamma, 4, cudaMemcpyHostToDevice), cudaSuccess);
      const std::vector<float> Gh = rng.normals(n);
      G.set(Gh);
      ASSERT_EQ(sn_backward(g, W.dev, G.dev, dW.dev, 0, nullptr, nullptr), SN_SUCCESS) << sn_last_error_message();
      ASSERT_EQ(sn_backward(cpu, W.host.data(), Gh.data(), dw_cpu.data(), 0, nullptr, nullptr), SN_SUCCESS);
      const std::vector<float> got = dW.download_floats();
      EXPECT_LT(rel_err(got, dw_cpu), 1e-5);
      if (one_d) {
        EXPECT_EQ(get_state(g).sigma, 1.f) << "σ = eps";
        EXPECT_LT(rel_err(got, Gh), 1e-6) << "dW = G / eps";
      }
      cudaFree(d_gamma);
    }
  }
}

TEST(GpuTraining, ScaleOnlyForwardEqualsForward) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  // On sm_90 the last three take the on-chip forward by default (160K elements and less).
  for (const auto &shape : {std::vector<int64_t>{2048, 1024}, std::vector<int64_t>{161, 1024},
                            std::vector<int64_t>{160, 1024}, std::vector<int64_t>{128, 128, 3, 3},
                            std::vector<int64_t>{64, 3, 3, 3}}) {
    sn_layer_desc_t d = make_desc(shape, SN_BACKEND_CUDA);
    LayerPtr full(d), only(d);
    const int64_t n = numel_of(shape);
    Tensor W(SN_DTYPE_FLOAT32, n), out(SN_DTYPE_FLOAT32, n);
    for (int step = 0; step < 3; ++step) {
      W.set(rng.normals(n));
      ASSERT_EQ(sn_forward(full, W.dev, out.dev, step < 2, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_forward_scale_only(only, W.dev, step < 2, nullptr), SN_SUCCESS);
      EXPECT_TRUE(same_state(get_state(full), get_state(only)));
      float scale = 0, inv = 0;
      ASSERT_EQ(sn_layer_get_scale(only, &scale, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_layer_get_sigma(only, nullptr, &inv, nullptr), SN_SUCCESS);
      EXPECT_EQ(scale, inv);
    }
  }
}

TEST(GpuTraining, GammaAndNormBoundMatchTheCpuBackend) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const int64_t h = 1536, w = 1024;
  std::vector<float> w32 = gapped_matrix(rng, h, w);
  for (int variant = 0; variant < 3; ++variant) {
    SCOPED_TRACE(variant == 0 ? "gamma" : variant == 1 ? "bound below sigma" : "bound above sigma");
    sn_layer_desc_t dg = make_desc({h, w}, SN_BACKEND_CUDA);
    if (variant == 1) dg.norm_bound = 1.5f;  // gapped_matrix has σ ≈ 4
    if (variant == 2) dg.norm_bound = 100.f;
    sn_layer_desc_t dc = dg;
    dc.backend = SN_BACKEND_CPU;
    LayerPtr g(dg), cpu(dc);
    float *d_gamma = nullptr, h_gamma = 0.6f;
    if (variant == 0) {
      ASSERT_EQ(cudaMalloc(&d_gamma, 4), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(d_gamma, &h_gamma, 4, cudaMemcpyHostToDevice), cudaSuccess);
      ASSERT_EQ(sn_layer_set_gamma(g, d_gamma), SN_SUCCESS);
      ASSERT_EQ(sn_layer_set_gamma(cpu, &h_gamma), SN_SUCCESS);
    }
    Tensor W(SN_DTYPE_FLOAT32, h * w), out(SN_DTYPE_FLOAT32, h * w);
    W.set(w32);
    std::vector<float> oc(static_cast<size_t>(h * w));
    ASSERT_EQ(sn_forward(g, W.dev, out.dev, 1, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_forward(cpu, W.host.data(), oc.data(), 1, nullptr), SN_SUCCESS);
    EXPECT_LT(rel_err(out.download_floats(), oc), 2e-6);
    float sg = 0, sc = 0;
    ASSERT_EQ(sn_layer_get_scale(g, &sg, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_layer_get_scale(cpu, &sc, nullptr), SN_SUCCESS);
    EXPECT_NEAR(sg / sc, 1.0, 2e-6);
    if (d_gamma) cudaFree(d_gamma);
  }
}

TEST(GpuTraining, WholeStepInACudaGraph) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const int64_t h = 1024, w = 2048;
  sn_layer_desc_t d = make_desc({h, w}, SN_BACKEND_CUDA);
  d.dtype = SN_DTYPE_BFLOAT16;
  LayerPtr plain(d), graphed(d);
  Tensor W(d.dtype, h * w), G(d.dtype, h * w), o1(d.dtype, h * w), o2(d.dtype, h * w),
      d1(d.dtype, h * w), d2(d.dtype, h * w);
  W.set(gapped_matrix(rng, h, w));
  G.set(rng.normals(h * w));
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(sn_layer_warmup(plain, W.dev, s), SN_SUCCESS);
  ASSERT_EQ(sn_layer_warmup(graphed, W.dev, s), SN_SUCCESS);
  for (unsigned flags : {0u, unsigned(SN_BACKWARD_DETACH_SIGMA)}) {
    cudaGraph_t graph;
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
    ASSERT_EQ(sn_backward(graphed, W.dev, G.dev, d2.dev, flags, nullptr, s), SN_SUCCESS);
    ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
    size_t nodes = 0;
    ASSERT_EQ(cudaGraphGetNodes(graph, nullptr, &nodes), cudaSuccess);
    EXPECT_EQ(nodes, flags ? 1u : 2u) << "backward launches";
    cudaGraphDestroy(graph);
  }
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  ASSERT_EQ(sn_forward(graphed, W.dev, o2.dev, 1, s), SN_SUCCESS);
  ASSERT_EQ(sn_backward(graphed, W.dev, G.dev, d2.dev, SN_BACKWARD_ACCUMULATE, nullptr, s), SN_SUCCESS);
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(d1.dev, 0, d1.host.size(), s), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(d2.dev, 0, d2.host.size(), s), cudaSuccess);
  for (int k = 0; k < 3; ++k) {
    ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
    ASSERT_EQ(sn_forward(plain, W.dev, o1.dev, 1, s), SN_SUCCESS);
    ASSERT_EQ(sn_backward(plain, W.dev, G.dev, d1.dev, SN_BACKWARD_ACCUMULATE, nullptr, s), SN_SUCCESS);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    EXPECT_TRUE(same_state(get_state(plain, s), get_state(graphed, s)));
    EXPECT_TRUE(bitwise_equal(o1.download_floats(), o2.download_floats()));
    EXPECT_TRUE(bitwise_equal(d1.download_floats(), d2.download_floats()));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

// Forward and backward over several steps, W moved by SGD with the GPU's own gradient each step,
// against a CPU layer driven the same way (with the GPU's W): state, W_sn and dW step by step.
TEST(GpuTraining, ForwardBackwardStepsMatchTheCpuBackend) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  for (const auto &shape : {std::vector<int64_t>{600, 1152}, std::vector<int64_t>{8, 6, 3, 3}}) {
    SCOPED_TRACE(shape_str(shape));
    const int64_t n = numel_of(shape);
    sn_layer_desc_t dg = make_desc(shape, SN_BACKEND_CUDA, shape.size() == 4 ? 1 : 0);
    sn_layer_desc_t dc = dg;
    dc.backend = SN_BACKEND_CPU;
    LayerPtr g(dg), cpu(dc);
    Tensor W(SN_DTYPE_FLOAT32, n), Wsn(SN_DTYPE_FLOAT32, n), G(SN_DTYPE_FLOAT32, n), dW(SN_DTYPE_FLOAT32, n);
    std::vector<float> w = rng.normals(n, 1.f / std::sqrt(float(shape[0])));
    const std::vector<float> target = rng.normals(n, 0.01f);
    std::vector<float> wsn_c(static_cast<size_t>(n)), dw_c(static_cast<size_t>(n)), grad(static_cast<size_t>(n));
    for (int step = 0; step < 6; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      W.set(w);
      ASSERT_EQ(sn_forward(g, W.dev, Wsn.dev, 1, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_forward(cpu, w.data(), wsn_c.data(), 1, nullptr), SN_SUCCESS);
      const State sg = get_state(g), sc = get_state(cpu);
      EXPECT_NEAR(sg.sigma / sc.sigma, 1.0, 1e-5);
      EXPECT_LT(max_abs_diff(sg.u, sc.u), 1e-4);
      EXPECT_LT(max_abs_diff(sg.v, sc.v), 1e-4);
      const std::vector<float> wsn_g = Wsn.download_floats();
      EXPECT_LT(rel_err(wsn_g, wsn_c), 2e-5);
      // L = ½‖W_sn − T‖²: G = W_sn − T, from the CPU's W_sn for both.
      for (size_t k = 0; k < grad.size(); ++k) grad[k] = wsn_c[k] - target[k];
      G.set(grad);
      ASSERT_EQ(sn_backward(g, W.dev, G.dev, dW.dev, 0, nullptr, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_backward(cpu, w.data(), grad.data(), dw_c.data(), 0, nullptr, nullptr), SN_SUCCESS);
      const std::vector<float> dw_g = dW.download_floats();
      EXPECT_LT(rel_err(dw_g, dw_c), 1e-4);
      for (size_t k = 0; k < w.size(); ++k) w[k] -= 0.1f * dw_g[k];
    }
  }
}

// A layer on chip under `tune` with the forward's options: an active and an inactive norm bound,
// γ, scale only, in place, bf16 and fp16, several iterations, no warm-up (then its first forward
// runs on chip too). Forward and backward steps against the CPU backend on weights with a spectral
// gap (so that u and v are well defined): the backward with a flag per step and ∂L/∂γ, bitwise
// against itself, then with dW = G and dW = W; where the layer is on chip on this device, its
// training forward is one launch of `forward_kernel`, and its backward one launch of the on-chip
// backward kernel (bw_on_chip) or not on chip; the backward with no usable σ yet. With
// must_fit, every layer must be on chip (the grid path: each of these fits any device).
static void expect_on_chip_options_match_cpu(const std::string &tune, const std::string &forward_kernel,
                                             bool bw_on_chip, bool must_fit) {
  SN_SEEDED_RNG();
  ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + tune).c_str());
  struct Opt {
    std::vector<int64_t> shape;
    sn_dtype_t dt;
    float bound_rel;  // norm bound as a multiple of σ (0: none)
    bool gamma, scale_only, in_place;
    int warmup, iters;
    int w_off = 0, o_off = 0;  // W (and G, dW) and W_sn that many elements into their buffers
  };
  const Opt opts[] = {
      {{128, 128, 3, 3}, SN_DTYPE_FLOAT32, 0.5f, false, false, false, 15, 1},
      {{77, 99}, SN_DTYPE_FLOAT32, 2.f, true, false, false, 15, 1},
      {{64, 100}, SN_DTYPE_FLOAT32, 0.f, false, true, false, 15, 1},
      // several iterations from a start that is not yet converged (with a warm-up of 15 they
      // would land within the tolerances of one: a mutation that ran one went unseen)
      {{100, 300}, SN_DTYPE_FLOAT32, 0.f, false, false, true, 1, 2},
      {{33, 65}, SN_DTYPE_BFLOAT16, 0.f, true, false, false, 0, 3},
      {{37, 61}, SN_DTYPE_FLOAT16, 0.f, false, false, false, 0, 1},
      // bf16 off 16-byte alignment, W_sn at another offset than W (W_sn by elements)
      {{300, 200}, SN_DTYPE_BFLOAT16, 0.f, false, false, false, 15, 1, 3, 1},
  };
  Tensor gam(SN_DTYPE_FLOAT32, 3);  // γ, then ∂L/∂γ of a backward and of its repetition
  gam.set({0.8f, 0.f, 0.f});
  float *d_gamma = static_cast<float *>(gam.dev), *d_dgamma = d_gamma + 1;
  const float h_gamma = 0.8f;
  for (const Opt &o : opts) {
    SCOPED_TRACE(shape_str(o.shape) + " " + dtype_name(o.dt) + " bound " + std::to_string(o.bound_rel) +
                 (o.gamma ? " gamma" : "") + (o.scale_only ? " scale-only" : "") + (o.in_place ? " in place" : "") +
                 " warmup " + std::to_string(o.warmup) + " iters " + std::to_string(o.iters));
    const int64_t n = numel_of(o.shape), h = o.shape[0];
    std::vector<float> w = gapped_matrix(rng, h, n / h);
    Tensor W(o.dt, n, o.w_off), Wsn(o.dt, n, o.o_off), G(o.dt, n, o.w_off), dW(o.dt, n, o.w_off);
    W.set(w);
    sn_layer_desc_t dg = make_desc(o.shape, SN_BACKEND_CUDA);
    dg.dtype = o.dt;
    dg.warmup_iterations = o.warmup;
    dg.n_power_iterations = o.iters;
    dg.seed = rng.gen();
    if (o.bound_rel > 0) {  // placed from the converged σ of a CPU layer
      sn_layer_desc_t dp = dg;
      dp.backend = SN_BACKEND_CPU;
      dp.warmup_iterations = 50;
      LayerPtr probe(dp);
      ASSERT_EQ(sn_forward_scale_only(probe, W.host.data(), 1, nullptr), SN_SUCCESS);
      dg.norm_bound = o.bound_rel * get_state(probe).sigma;
    }
    sn_layer_desc_t dc = dg;
    dc.backend = SN_BACKEND_CPU;
    LayerPtr g(dg), cpu(dc);
    ASSERT_TRUE(g.p && cpu.p);
    if (must_fit) {
      EXPECT_GT(g.p->plan.onchip.cluster, 0) << "a layer this small fits any device";
    }
    if (o.gamma) {
      ASSERT_EQ(sn_layer_set_gamma(g, d_gamma), SN_SUCCESS);
      ASSERT_EQ(sn_layer_set_gamma(cpu, &h_gamma), SN_SUCCESS);
    }
    std::vector<uint8_t> wsn_c(W.host.size()), dw_c(W.host.size());
    for (int step = 0; step < 4; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      const int training = step < 3;
      if (step > 0)
        for (auto &x : w) x += 0.01f * rng.normal() / std::sqrt(float(n));
      W.set(w);
      void *out = o.scale_only ? nullptr : o.in_place ? W.dev : Wsn.dev;
      ASSERT_EQ(o.scale_only ? sn_forward_scale_only(g, W.dev, training, nullptr)
                             : sn_forward(g, W.dev, out, training, nullptr),
                SN_SUCCESS)
          << sn_last_error_message();
      ASSERT_EQ(o.scale_only ? sn_forward_scale_only(cpu, W.host.data(), training, nullptr)
                             : sn_forward(cpu, W.host.data(), wsn_c.data(), training, nullptr),
                SN_SUCCESS);
      expect_state_and_scale_near(g, cpu, 1e-4);
      if (out) {
        EXPECT_LT(rel_err(o.in_place ? W.download_floats() : Wsn.download_floats(), from_dtype(wsn_c, o.dt)),
                  o.dt == SN_DTYPE_FLOAT32 ? 2e-5 : 2 * ulp(o.dt));
      }
      if (!training) continue;
      // The backward after it (W as the forward was given it: in place, W.dev now holds W_sn),
      // with a flag per step and ∂L/∂γ asked for; on chip too where ⟨G, W⟩ is needed.
      W.set(w);
      const unsigned flags = step == 0 ? 0u : step == 1 ? unsigned(SN_BACKWARD_ACCUMULATE) : unsigned(SN_BACKWARD_DETACH_SIGMA);
      G.set(rng.normals(n));
      dW.set(rng.normals(n));  // the accumulation target
      std::vector<uint8_t> dw_c_in = dW.host;
      float dgamma_c = 0.f;
      ASSERT_EQ(sn_backward(g, W.dev, G.dev, dW.dev, flags, d_dgamma, nullptr), SN_SUCCESS) << sn_last_error_message();
      ASSERT_EQ(sn_backward(cpu, W.host.data(), G.host.data(), dw_c_in.data(), flags, &dgamma_c, nullptr), SN_SUCCESS);
      EXPECT_LT(rel_err(dW.download_floats(), from_dtype(dw_c_in, o.dt)),
                o.dt == SN_DTYPE_FLOAT32 ? 1e-4 : 2 * ulp(o.dt)) << "flags " << flags;
      // ∂L/∂γ = ⟨G, W⟩ / d, to rounding of the sum: relative to Σ |G W| / d (⟨G, W⟩ itself may
      // cancel to near 0).
      float dgamma_g = 0.f;
      CUDA_OK(cudaMemcpy(&dgamma_g, d_dgamma, 4, cudaMemcpyDeviceToHost));
      const std::vector<float> gh = G.host_floats(), wh = W.host_floats();
      double mag = 0;
      for (size_t k = 0; k < gh.size(); ++k) mag += std::fabs(double(gh[k]) * double(wh[k]));
      const double sig = get_state(cpu).sigma;
      const double dd = dc.norm_bound > 0 ? std::max(1.0, sig / dc.norm_bound) : sig;
      EXPECT_NEAR(dgamma_g, dgamma_c, 1e-5 * mag / dd);
      // Bitwise reproducible: the same backward again (the same flags, ∂L/∂γ asked for too).
      Tensor again(o.dt, n);
      again.set(dW.host_floats());  // the accumulation target as it was
      ASSERT_EQ(sn_backward(g, W.dev, G.dev, again.dev, flags, d_dgamma + 1, nullptr), SN_SUCCESS);
      EXPECT_TRUE(again.download_bytes() == dW.download_bytes()) << "flags " << flags;
      const std::vector<float> dgs = gam.download_floats();
      EXPECT_EQ(std::memcmp(&dgs[2], &dgamma_g, 4), 0) << dgs[2] << " against " << dgamma_g;
    }
    // The backward with dW = G and dW = W, with and without accumulation (and with both flags),
    // against the CPU backend given the same aliasing.
    W.set(w);
    const unsigned alias_flags[] = {0u, unsigned(SN_BACKWARD_ACCUMULATE),
                                    unsigned(SN_BACKWARD_ACCUMULATE | SN_BACKWARD_DETACH_SIGMA)};
    for (unsigned flags : alias_flags) {
      for (int alias : {1, 2}) {
        SCOPED_TRACE(std::string(alias == 1 ? "dW = G" : "dW = W") + ", flags " + std::to_string(flags));
        G.set(rng.normals(n));
        Tensor buf(o.dt, n);
        buf.set(alias == 1 ? G.host_floats() : w);
        std::vector<uint8_t> bc = buf.host;
        ASSERT_EQ(sn_backward(g, alias == 2 ? buf.dev : W.dev, alias == 1 ? buf.dev : G.dev, buf.dev, flags,
                              nullptr, nullptr),
                  SN_SUCCESS)
            << sn_last_error_message();
        ASSERT_EQ(sn_backward(cpu, alias == 2 ? bc.data() : W.host.data(), alias == 1 ? bc.data() : G.host.data(),
                              bc.data(), flags, nullptr, nullptr),
                  SN_SUCCESS);
        EXPECT_LT(rel_err(buf.download_floats(), from_dtype(bc, o.dt)),
                  o.dt == SN_DTYPE_FLOAT32 ? 1e-4 : 2 * ulp(o.dt));
      }
    }
    if (g.p->plan.onchip.cluster == 0) continue;  // (an A100: 590 KB needs clusters)
    const std::vector<std::string> names = captured_kernels([&](cudaStream_t s) {
      return o.scale_only ? sn_forward_scale_only(g, W.dev, 1, s) : sn_forward(g, W.dev, Wsn.dev, 1, s);
    });
    EXPECT_EQ(names.size(), 1u);
    EXPECT_TRUE(any_matches(names, forward_kernel)) << (names.empty() ? "?" : names[0]);
    const std::vector<std::string> bw =
        captured_kernels([&](cudaStream_t s) { return sn_backward(g, W.dev, G.dev, dW.dev, 0, nullptr, s); });
    EXPECT_EQ(bw.size(), bw_on_chip ? 1u : 2u);
    EXPECT_EQ(any_matches(bw, "on_chip"), bw_on_chip) << (bw.empty() ? "?" : bw[0]);
  }
  // No usable σ yet (a zero W's forward commits none; the state's σ is 0): a = b = 0, so
  // dW = 0 (or dW unchanged when accumulating) and ∂L/∂γ = 0, as the two kernels write.
  const int64_t n = 64 * 100;
  LayerPtr z(make_desc({64, 100}, SN_BACKEND_CUDA));
  ASSERT_TRUE(z.p);
  Tensor W0(SN_DTYPE_FLOAT32, n), Wsn0(SN_DTYPE_FLOAT32, n), G0(SN_DTYPE_FLOAT32, n), dW0(SN_DTYPE_FLOAT32, n);
  W0.set(std::vector<float>(static_cast<size_t>(n), 0.f));
  G0.set(rng.normals(n));
  ASSERT_EQ(sn_forward(z, W0.dev, Wsn0.dev, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(get_state(z).sigma, 0.f);
  const std::vector<float> target = rng.normals(n);
  for (unsigned flags : {0u, unsigned(SN_BACKWARD_ACCUMULATE)}) {
    dW0.set(target);
    ASSERT_EQ(sn_backward(z, W0.dev, G0.dev, dW0.dev, flags, d_dgamma, nullptr), SN_SUCCESS) << sn_last_error_message();
    const std::vector<float> got = dW0.download_floats();
    // (a·G with a = 0 is −0 where G < 0: compared by value)
    EXPECT_EQ(max_abs_diff(got, flags ? dW0.host_floats() : std::vector<float>(got.size(), 0.f)), 0.0) << "flags " << flags;
    EXPECT_EQ(gam.download_floats()[1], 0.f);
  }
}

// The layer in a cluster's shared memory (SPECNORM_TUNE=op_onchip=1, cuda/on_chip.cu): every forward
// and the backward on chip.
TEST(GpuTraining, OnChipLayerOptionsMatchTheCpuBackend) {
  REQUIRE_GPU();
  expect_on_chip_options_match_cpu("op_onchip=1", "group_on_chip_kernel", true, false);
}

// The backward of a layer on the grid (g; b holds the same state, cpu its CPU counterpart) on W
// with a fresh G, without and with accumulation, ∂L/∂γ asked for: one launch of the packed
// instance (on_grid; else the usual kernels: rows streamed), against the CPU backend and bitwise
// against b; then G, or dW, one element off 16-byte alignment: with rows in registers the usual
// kernels (they need the packed instance's 16-byte accesses), else the generic instance; the same
// results. Then dW = G and dW = W, with and without
// accumulation, on the packed instance.
static void expect_grid_backward_rows_match_cpu(Rng &rng, sn_layer_t *g, sn_layer_t *b, sn_layer_t *cpu,
                                                const Tensor &W, sn_dtype_t dt, bool on_grid = true) {
  const int64_t n = W.n;
  const double tol = dt == SN_DTYPE_FLOAT32 ? 1e-4 : 2 * ulp(dt);
  const sn_on_chip_t &oc = g->plan.onchip;
  Tensor dg(SN_DTYPE_FLOAT32, 2);
  float *d_dg = static_cast<float *>(dg.dev);
  for (int off : {0, 1, 2}) {  // 0: aligned; 1: G off; 2: dW off
    for (unsigned flags : {0u, unsigned(SN_BACKWARD_ACCUMULATE)}) {
      SCOPED_TRACE("offset case " + std::to_string(off) + ", flags " + std::to_string(flags));
      Tensor G(dt, n, off == 1 ? 1 : 0), d1(dt, n, off == 2 ? 1 : 0), d2(dt, n);
      G.set(rng.normals(n));
      const std::vector<float> target = rng.normals(n);
      d1.set(target);
      d2.set(target);
      std::vector<uint8_t> dc = d1.host;
      float dgamma_c = 0.f;
      const std::vector<std::string> names = captured_kernels(
          [&](cudaStream_t st) { return sn_backward(g, W.dev, G.dev, d1.dev, flags, d_dg, st); });
      if (!on_grid) {
        EXPECT_FALSE(any_matches(names, "on_chip")) << ::testing::PrintToString(names);
      } else if (off == 0) {
        EXPECT_EQ(names.size(), 1u);
        EXPECT_TRUE(any_matches(names, "on_chip_grid_backward_kernel<[^>]*, [1-9]>")) << ::testing::PrintToString(names);
      } else if (oc.reg_rows > 0) {
        EXPECT_FALSE(any_matches(names, "on_chip")) << ::testing::PrintToString(names);
      } else {
        EXPECT_TRUE(any_matches(names, "on_chip_grid_backward_kernel<[^>]*, 0>")) << ::testing::PrintToString(names);
      }
      ASSERT_EQ(sn_backward(g, W.dev, G.dev, d1.dev, flags, d_dg, nullptr), SN_SUCCESS) << sn_last_error_message();
      ASSERT_EQ(sn_backward(cpu, W.host.data(), G.host.data(), dc.data(), flags, &dgamma_c, nullptr), SN_SUCCESS);
      EXPECT_LT(rel_err(d1.download_floats(), from_dtype(dc, dt)), tol);
      const std::vector<float> gh = G.host_floats(), wh = W.host_floats();
      double mag = 0;
      for (size_t k = 0; k < gh.size(); ++k) mag += std::fabs(double(gh[k]) * double(wh[k]));
      EXPECT_NEAR(dg.download_floats()[0], dgamma_c, 1e-5 * mag / get_state(cpu).sigma);
      if (off != 0) continue;
      ASSERT_EQ(sn_backward(b, W.dev, G.dev, d2.dev, flags, d_dg + 1, nullptr), SN_SUCCESS) << sn_last_error_message();
      EXPECT_TRUE(d1.download_bytes() == d2.download_bytes()) << "bitwise against a second layer";
      const std::vector<float> dgs = dg.download_floats();
      EXPECT_EQ(std::memcmp(&dgs[0], &dgs[1], 4), 0) << dgs[0] << " against " << dgs[1];
    }
  }
  // dW = G and dW = W (in place over the rows in registers too), with and without accumulation,
  // against the CPU backend given the same aliasing.
  for (unsigned flags : {0u, unsigned(SN_BACKWARD_ACCUMULATE)}) {
    for (int alias : {1, 2}) {
      SCOPED_TRACE(std::string(alias == 1 ? "dW = G" : "dW = W") + ", flags " + std::to_string(flags));
      Tensor G(dt, n), buf(dt, n);
      G.set(rng.normals(n));
      buf.set(alias == 1 ? G.host_floats() : W.host_floats());
      std::vector<uint8_t> bc = buf.host;
      const void *Wg = alias == 2 ? buf.dev : W.dev, *Gg = alias == 1 ? buf.dev : G.dev;
      const std::vector<std::string> names =
          captured_kernels([&](cudaStream_t st) { return sn_backward(g, Wg, Gg, buf.dev, flags, nullptr, st); });
      EXPECT_EQ(any_matches(names, "on_chip_grid_backward_kernel<[^>]*, [1-9]>"), on_grid)
          << ::testing::PrintToString(names);
      ASSERT_EQ(sn_backward(g, Wg, Gg, buf.dev, flags, nullptr, nullptr), SN_SUCCESS) << sn_last_error_message();
      ASSERT_EQ(sn_backward(cpu, alias == 2 ? bc.data() : W.host.data(), alias == 1 ? bc.data() : G.host.data(),
                            bc.data(), flags, nullptr, nullptr),
                SN_SUCCESS);
      EXPECT_LT(rel_err(buf.download_floats(), from_dtype(bc, dt)), tol);
    }
  }
}

// The desc of a CUDA layer (shape, dim, order, dtype, iterations, a fresh seed) and of its CPU twin.
static std::pair<sn_layer_desc_t, sn_layer_desc_t> cuda_and_cpu_desc(Rng &rng, const std::vector<int64_t> &shape,
                                                                     int dim, sn_order_t order, sn_dtype_t dt,
                                                                     int iters) {
  sn_layer_desc_t dg = make_desc(shape, SN_BACKEND_CUDA, dim);
  dg.order = order;
  dg.dtype = dt;
  dg.n_power_iterations = iters;
  dg.seed = rng.gen();
  sn_layer_desc_t dc = dg;
  dc.backend = SN_BACKEND_CPU;
  return {dg, dc};
}

// Four forwards of g against the CPU layer on W, which moves between them (wv, n elements): training,
// scale-only, training, eval. W_sn (into Wsn; wsn_c the CPU's) to the dtype's rounding, the state
// and scale to 1e-4; with b (a second layer alike, into O2), bitwise: the same W_sn and state.
static void expect_steps_match_cpu(Rng &rng, sn_layer_t *g, sn_layer_t *b, sn_layer_t *cpu, Tensor &W,
                                   std::vector<float> &wv, const Tensor &Wsn, const Tensor *O2,
                                   std::vector<uint8_t> &wsn_c) {
  const sn_dtype_t dt = W.dt;
  for (int step = 0; step < 4; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const int training = step < 3, scale_only = step == 1;
    if (step > 0)
      for (auto &x : wv) x += 0.01f * rng.normal() / std::sqrt(float(W.n));
    W.set(wv);
    if (scale_only) {
      ASSERT_EQ(sn_forward_scale_only(g, W.dev, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
      if (b) {
        ASSERT_EQ(sn_forward_scale_only(b, W.dev, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
      }
      ASSERT_EQ(sn_forward_scale_only(cpu, W.host.data(), 1, nullptr), SN_SUCCESS);
    } else {
      ASSERT_EQ(sn_forward(g, W.dev, Wsn.dev, training, nullptr), SN_SUCCESS) << sn_last_error_message();
      if (b) {
        ASSERT_EQ(sn_forward(b, W.dev, O2->dev, training, nullptr), SN_SUCCESS) << sn_last_error_message();
      }
      ASSERT_EQ(sn_forward(cpu, W.host.data(), wsn_c.data(), training, nullptr), SN_SUCCESS);
      EXPECT_LT(rel_err(Wsn.download_floats(), from_dtype(wsn_c, dt)), dt == SN_DTYPE_FLOAT32 ? 2e-5 : 2 * ulp(dt));
      if (b) {
        EXPECT_TRUE(Wsn.download_bytes() == O2->download_bytes()) << "bitwise against a second layer";
      }
    }
    expect_state_and_scale_near(g, cpu, 1e-4);
    if (b) {
      EXPECT_TRUE(same_state(get_state(g), get_state(b)));
    }
  }
}

struct GridRowsCase {
  std::vector<int64_t> shape;
  sn_dtype_t dt;
  int iters;
  bool v_first = false;  // v-first with dim −1: the grid runs Mᵀ, shape[0] × shape[1] (W's layout)
  int cap = 2;           // onchip_grid_rows
};

// A layer on the grid whose blocks hold rows beyond their shared memory (SPECNORM_TUNE=
// onchip_grid_rows=cap caps the shared-memory rows, so that these small layers take that path): in
// registers (the packed instance, which 4096² bf16 takes on an H100 or H200) or streamed from
// global memory (`streamed`: the streaming instance, which 4096² fp32 takes). Training, scale-only
// and eval forwards (1-3 iterations) against the CPU backend, one launch of the instance each,
// bitwise against a second layer, in place; W or W_sn off 16-byte alignment: the usual kernels
// where rows sit in registers or are streamed (they are accessed 16 bytes at a time), else the
// generic or packed instance, and the same results. The backward too
// (expect_grid_backward_rows_match_cpu; streamed: the usual kernels).
static void expect_grid_rows_match_cpu(const std::vector<GridRowsCase> &cases, bool streamed) {
  SN_SEEDED_RNG();
  const std::string kernel = streamed ? "on_chip_grid_streamed_kernel" : "on_chip_grid_kernel<[^>]*, [1-9]>";
  int ran = 0;
  for (const GridRowsCase &c : cases) {
    const int64_t h = c.shape[0], w = c.shape[1], n = h * w;  // the grid's rows and columns
    SCOPED_TRACE(shape_str(c.shape) + " " + dtype_name(c.dt) + " iters " + std::to_string(c.iters) +
                 (c.v_first ? " v-first dim -1" : "") + " cap " + std::to_string(c.cap));
    ScopedEnv env("SPECNORM_TUNE",
                  (tune_prefix() + "op_onchip=0,op_onchip_grid=2,onchip_grid_rows=" + std::to_string(c.cap)).c_str());
    const auto d = cuda_and_cpu_desc(rng, c.shape, c.v_first ? -1 : 0, c.v_first ? SN_ORDER_V_FIRST : SN_ORDER_U_FIRST,
                                     c.dt, c.iters);
    LayerPtr g(d.first), b(d.first), cpu(d.second);
    ASSERT_TRUE(g.p && b.p && cpu.p);
    const sn_on_chip_t &oc = g.p->plan.onchip;
    // The rows beyond shared memory this device's grid gives a block: in registers (whole packs, at
    // most one a thread, at most 7 rows), else streamed (at most two packs a thread, and a third of
    // the rows in shared memory at least), else not on the grid.
    const int64_t G = std::min<int64_t>(g.p->plan.sm_count, h), R = (h + G - 1) / G;
    const int64_t E = 16 / int64_t(sn_dtype_size(c.dt)), beyond = std::max<int64_t>(R - c.cap, 0);
    const bool in_registers = beyond <= 7 && (beyond == 0 || (w % E == 0 && w / E <= 512));
    if (!in_registers && (w % E != 0 || w / E > 1024 || c.cap * 3 < R)) {
      EXPECT_EQ(oc.grid, 0);
      continue;
    }
    ASSERT_EQ(oc.grid, G);
    EXPECT_EQ(oc.transposed, c.v_first ? 1 : 0);
    EXPECT_EQ(oc.smem_rows, std::min<int64_t>(R, c.cap));
    EXPECT_EQ(oc.reg_rows, in_registers ? beyond : 0);
    EXPECT_EQ(oc.stream_rows, in_registers ? 0 : beyond);
    if (streamed != !in_registers) continue;  // (a case for the other instance on this device)
    ran += beyond > 0;
    std::vector<float> wv = gapped_matrix(rng, h, w);
    Tensor W(c.dt, n), Wsn(c.dt, n), O2(c.dt, n);
    std::vector<uint8_t> wsn_c(W.host.size());
    ASSERT_NO_FATAL_FAILURE(expect_steps_match_cpu(rng, g, b, cpu, W, wv, Wsn, &O2, wsn_c));
    for (int training : {1, 0}) {
      const std::vector<std::string> names =
          captured_kernels([&](cudaStream_t st) { return sn_forward(g, W.dev, Wsn.dev, training, st); });
      EXPECT_EQ(names.size(), 1u) << (training ? "training" : "eval");
      EXPECT_TRUE(any_matches(names, kernel)) << (names.empty() ? "?" : names[0]);
    }
    ASSERT_NO_FATAL_FAILURE(expect_grid_backward_rows_match_cpu(rng, g, b, cpu, W, c.dt, !streamed));
    // In place (W_sn = W, the rows beyond shared memory stored over their own W): the bits of the
    // second layer's forward into another buffer.
    ASSERT_EQ(sn_forward(b, W.dev, O2.dev, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_forward(g, W.dev, W.dev, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_forward(cpu, W.host.data(), wsn_c.data(), 1, nullptr), SN_SUCCESS);
    EXPECT_TRUE(same_state(get_state(g), get_state(b)));
    EXPECT_TRUE(W.download_bytes() == O2.download_bytes()) << "in place";
    // W, or W_sn alone, one element off 16-byte alignment: with rows in registers or streamed the
    // usual kernels; without, the generic instance (W) or the packed one (W_sn alone); the same
    // results.
    for (int which : {0, 1}) {
      SCOPED_TRACE(which == 0 ? "W and W_sn off alignment" : "W_sn off alignment");
      Tensor Wo(c.dt, n, which == 0 ? 1 : 0), Oo(c.dt, n, 1);
      Wo.set(wv);
      const std::vector<std::string> off =
          captured_kernels([&](cudaStream_t st) { return sn_forward(g, Wo.dev, Oo.dev, 1, st); });
      EXPECT_FALSE(off.empty());
      if (oc.reg_rows > 0 || oc.stream_rows > 0) {
        EXPECT_FALSE(any_matches(off, "on_chip")) << ::testing::PrintToString(off);
      } else {
        EXPECT_TRUE(any_matches(off, which == 0 ? "on_chip_grid_kernel<[^>]*, 0>" : "on_chip_grid_kernel<[^>]*, [1-9]>"))
            << ::testing::PrintToString(off);
      }
      ASSERT_EQ(sn_forward(g, Wo.dev, Oo.dev, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
      ASSERT_EQ(sn_forward(cpu, Wo.host.data(), wsn_c.data(), 1, nullptr), SN_SUCCESS);
      expect_state_and_scale_near(g, cpu, 1e-4);
      EXPECT_LT(rel_err(Oo.download_floats(), from_dtype(wsn_c, c.dt)),
                c.dt == SN_DTYPE_FLOAT32 ? 2e-5 : 2 * ulp(c.dt));
    }
  }
  EXPECT_GT(ran, 0);
}

// The cases below are sized for a grid of 132 blocks (SKIP_UNLESS_132_SMS, tests/test_util.h).

// Rows in registers: layers of up to 9 rows a block (132 blocks) with 2 in shared memory
// (264 × 1024: none in registers, the packed instance all the same; two v-first layers with dim −1,
// whose Mᵀ the grid runs, among them); rows of 4 to 512 packs, fp32, bf16 and fp16.
TEST(GpuTraining, OnChipGridRegisterRowsMatchTheCpuBackend) {
  REQUIRE_GPU();
  if (!cooperative_launch_here()) GTEST_SKIP() << "no cooperative launch on this device";
  SKIP_UNLESS_132_SMS();
  expect_grid_rows_match_cpu({{{1000, 1024}, SN_DTYPE_FLOAT32, 1}, {{1188, 512}, SN_DTYPE_BFLOAT16, 2},
                              {{700, 64}, SN_DTYPE_FLOAT16, 1},    {{300, 2048}, SN_DTYPE_FLOAT32, 3},
                              {{900, 256}, SN_DTYPE_BFLOAT16, 1},  {{500, 16}, SN_DTYPE_FLOAT32, 2},
                              {{264, 1024}, SN_DTYPE_FLOAT32, 2},  {{1024, 1000}, SN_DTYPE_FLOAT32, 2, true},
                              {{900, 512}, SN_DTYPE_BFLOAT16, 1, true}},
                             false);
}

// Rows streamed (the streaming instance): rows too wide for the registers (1024 packs of fp32 or
// bf16, 1000 of fp32 and 750 of fp16: a thread's second pack in part of the block only), and too
// many (2000 × 1024: 10 rows a block beyond 6 in shared memory, chunks of 4, 4 and 2), 1-3
// iterations, a v-first layer with dim −1 (700 × 8192 bf16 as its Mᵀ: 1024 packs a row).
TEST(GpuTraining, OnChipGridStreamedRowsMatchTheCpuBackend) {
  REQUIRE_GPU();
  if (!cooperative_launch_here()) GTEST_SKIP() << "no cooperative launch on this device";
  SKIP_UNLESS_132_SMS();
  expect_grid_rows_match_cpu({{{700, 4096}, SN_DTYPE_FLOAT32, 1, false, 2},
                              {{400, 8192}, SN_DTYPE_BFLOAT16, 2, false, 2},
                              {{300, 6000}, SN_DTYPE_FLOAT16, 1, false, 1},
                              {{2000, 1024}, SN_DTYPE_FLOAT32, 3, false, 6},
                              {{700, 4000}, SN_DTYPE_FLOAT32, 2, false, 2},
                              {{700, 8192}, SN_DTYPE_BFLOAT16, 1, true, 2}},
                             true);
}

// Random layers under op_onchip_grid=2 with a random cap on the shared-memory rows
// (onchip_grid_rows; none a fifth of the time), so that they take every layout the grid has (all
// rows in shared memory, rows in registers, rows streamed) or none: u-first, and v-first with dim −1
// (as their Mᵀ); fp32, bf16, fp16; rows of whole packs, wide ones (513-1024 packs) and any width;
// W, W_sn, G and dW on or off 16-byte alignment. Whatever path each takes, its training, scale-only
// and eval forwards and its backward (flags at random) match the CPU backend. At least one of the
// layers on the grid, and the layouts taken, are reported.
TEST(GpuTraining, RandomLayersOnTheGridMatchTheCpuBackend) {
  REQUIRE_GPU();
  if (!cooperative_launch_here()) GTEST_SKIP() << "no cooperative launch on this device";
  SN_SEEDED_RNG();
  const sn_dtype_t dts[] = {SN_DTYPE_FLOAT32, SN_DTYPE_BFLOAT16, SN_DTYPE_FLOAT16};
  const int caps[] = {0, 1, 2, 3, 6};
  int kinds[4] = {0, 0, 0, 0};  // not on the grid; shared memory only; rows in registers; streamed
  int launched[4] = {0, 0, 0, 0};  // the same, of the layers whose training forward ran on the grid
  for (int k = 0; k < 40; ++k) {
    const sn_dtype_t dt = dts[rng.gen() % 3];
    const bool v_first = rng.gen() % 3 == 0;
    const int64_t E = 16 / int64_t(sn_dtype_size(dt));
    const int pick = int(rng.gen() % 10);
    const int64_t w = pick < 3 ? E * int64_t(513 + rng.gen() % 512)   // wide whole packs
                      : pick < 7 ? E * int64_t(1 + rng.gen() % 512)  // whole packs
                                 : int64_t(1 + rng.gen() % 3000);    // any width
    const int64_t h = std::max<int64_t>(1, std::min<int64_t>(int64_t(1 + rng.gen() % 1500), (int64_t(1) << 22) / w));
    const int64_t n = h * w;
    // Three layers in four with every buffer 16-byte aligned (rows in registers and streamed rows
    // run on the grid only then), the others with each buffer on or off at random.
    const bool aligned = rng.gen() % 4 != 0;
    const auto offset = [&] { return aligned ? 0 : int(rng.gen() % 2); };
    const int cap = caps[rng.gen() % 5], off = offset(), iters = int(1 + rng.gen() % 3);
    SCOPED_TRACE(std::to_string(h) + " x " + std::to_string(w) + " " + dtype_name(dt) + (v_first ? " v-first dim -1" : "") +
                 " cap " + std::to_string(cap) + " offset " + std::to_string(off) + " iters " + std::to_string(iters));
    ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + "op_onchip=0,op_onchip_grid=2" +
                                    (cap ? ",onchip_grid_rows=" + std::to_string(cap) : std::string()))
                                       .c_str());
    const auto d = cuda_and_cpu_desc(rng, {h, w}, v_first ? -1 : 0, v_first ? SN_ORDER_V_FIRST : SN_ORDER_U_FIRST, dt,
                                     iters);
    LayerPtr g(d.first), cpu(d.second);
    ASSERT_TRUE(g.p && cpu.p);
    const sn_on_chip_t &oc = g.p->plan.onchip;
    const int kind = oc.grid == 0 ? 0 : oc.stream_rows > 0 ? 3 : oc.reg_rows > 0 ? 2 : 1;
    kinds[kind] += 1;
    std::vector<float> wv = gapped_matrix(rng, h, w);
    Tensor W(dt, n, off), O(dt, n, offset()), G(dt, n, offset()), dW(dt, n, offset());
    std::vector<uint8_t> o_c(W.host.size());
    ASSERT_NO_FATAL_FAILURE(expect_steps_match_cpu(rng, g, nullptr, cpu, W, wv, O, nullptr, o_c));
    sn_paths_t paths;
    ASSERT_EQ(sn_layer_get_paths(g, &paths), SN_SUCCESS);
    launched[kind] += paths.train == SN_PATH_ON_CHIP_GRID;
    const unsigned flags = unsigned(rng.gen() % 4);  // ACCUMULATE and DETACH_SIGMA at random
    G.set(rng.normals(n));
    dW.set(rng.normals(n));
    std::vector<uint8_t> d_c = dW.host;
    ASSERT_EQ(sn_backward(g, W.dev, G.dev, dW.dev, flags, nullptr, nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_backward(cpu, W.host.data(), G.host.data(), d_c.data(), flags, nullptr, nullptr), SN_SUCCESS);
    EXPECT_LT(rel_err(dW.download_floats(), from_dtype(d_c, dt)), dt == SN_DTYPE_FLOAT32 ? 1e-4 : 2 * ulp(dt))
        << "flags " << flags;
  }
  std::printf("[ layouts ] not on the grid %d, shared memory only %d (%d ran there), rows in registers %d (%d), "
              "streamed %d (%d)\n", kinds[0], kinds[1], launched[1], kinds[2], launched[2], kinds[3], launched[3]);
  EXPECT_GT(launched[1] + launched[2] + launched[3], 0) << "no layer's training forward ran on the grid";
}

// 4096² (issue 5's goal-1 and goal-5 shape) on the grid as laid out for the device, without a cap.
// On a card of 132 SMs (an H100 SXM, an H200), 32 rows a block: in bf16 25-26 in shared memory at
// its limit and the rest in registers, one launch of the packed instance; in fp32 13 in shared
// memory and the rest streamed, one launch of the streaming instance. Training, scale-only and eval
// forwards against the CPU backend (expect_steps_match_cpu), and a backward (bf16: one
// launch on the grid; fp32: the usual kernels). Other cards: whatever the layout gives, checked the
// same way where the layer is on the grid.
static void expect_largest_grid_layer_matches_cpu(sn_dtype_t dt) {
  SN_SEEDED_RNG();
  ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + "op_onchip=0,op_onchip_grid=2").c_str());
  const int64_t h = 4096, w = 4096, n = h * w;
  const auto d = cuda_and_cpu_desc(rng, {h, w}, 0, SN_ORDER_U_FIRST, dt, 1);  // (1: the default)
  LayerPtr g(d.first), cpu(d.second);
  ASSERT_TRUE(g.p && cpu.p);
  const sn_on_chip_t &oc = g.p->plan.onchip;
  const bool bf16 = dt == SN_DTYPE_BFLOAT16;
  if (g.p->plan.sm_count == 132) {
    ASSERT_EQ(oc.grid, 132);
    EXPECT_EQ(oc.smem_rows + oc.reg_rows + oc.stream_rows, 32);
    if (bf16) {
      EXPECT_GE(oc.reg_rows, 6);
      EXPECT_EQ(oc.packed, 1);
    } else {
      EXPECT_GE(oc.smem_rows, 11);
      EXPECT_GE(oc.stream_rows, 19);
    }
  }
  if (oc.grid == 0) GTEST_SKIP() << "4096² " << dtype_name(dt) << " is not on the grid on this device";
  std::vector<float> wv = gapped_matrix(rng, h, w);
  Tensor W(dt, n), Wsn(dt, n);
  std::vector<uint8_t> wsn_c(W.host.size());
  ASSERT_NO_FATAL_FAILURE(expect_steps_match_cpu(rng, g, nullptr, cpu, W, wv, Wsn, nullptr, wsn_c));
  const std::string kernel = oc.stream_rows > 0 ? "on_chip_grid_streamed_kernel"
                             : oc.reg_rows > 0  ? "on_chip_grid_kernel<[^>]*, [1-9]>"
                                                : "on_chip_grid_kernel";
  for (int training : {1, 0}) {
    const std::vector<std::string> names =
        captured_kernels([&](cudaStream_t st) { return sn_forward(g, W.dev, Wsn.dev, training, st); });
    EXPECT_EQ(names.size(), 1u) << (training ? "training" : "eval");
    EXPECT_TRUE(any_matches(names, kernel)) << (names.empty() ? "?" : names[0]);
  }
  // The backward (goal 5's shape): on the grid where no rows are streamed, one launch, against the
  // CPU backend.
  Tensor G(dt, n), dW(dt, n);
  G.set(rng.normals(n));
  std::vector<uint8_t> dw_c(W.host.size());
  const std::vector<std::string> bw =
      captured_kernels([&](cudaStream_t st) { return sn_backward(g, W.dev, G.dev, dW.dev, 0, nullptr, st); });
  if (oc.stream_rows == 0) {
    EXPECT_EQ(bw.size(), 1u);
    EXPECT_TRUE(any_matches(bw, oc.reg_rows > 0 ? "on_chip_grid_backward_kernel<[^>]*, [1-9]>" : "on_chip_grid_backward_kernel"))
        << (bw.empty() ? "?" : bw[0]);
  } else {
    EXPECT_FALSE(any_matches(bw, "on_chip")) << (bw.empty() ? "?" : bw[0]);
  }
  ASSERT_EQ(sn_backward(g, W.dev, G.dev, dW.dev, 0, nullptr, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_backward(cpu, W.host.data(), G.host.data(), dw_c.data(), 0, nullptr, nullptr), SN_SUCCESS);
  EXPECT_LT(rel_err(dW.download_floats(), from_dtype(dw_c, dt)), bf16 ? 2 * ulp(dt) : 1e-4);
}

TEST(GpuTraining, OnChipGridLargestBf16LayerMatchesTheCpuBackend) {
  REQUIRE_GPU();
  if (!cooperative_launch_here()) GTEST_SKIP() << "no cooperative launch on this device";
  expect_largest_grid_layer_matches_cpu(SN_DTYPE_BFLOAT16);
}

TEST(GpuTraining, OnChipGridLargestFp32LayerMatchesTheCpuBackend) {
  REQUIRE_GPU();
  if (!cooperative_launch_here()) GTEST_SKIP() << "no cooperative launch on this device";
  expect_largest_grid_layer_matches_cpu(SN_DTYPE_FLOAT32);
}

// The layer spread over a cooperative grid (SPECNORM_TUNE=op_onchip_grid=2, cuda/on_chip_grid.cu;
// op_onchip=0 keeps these small layers off the cluster path): its forwards and its backward on chip
// (the generic instances where W is off 16-byte alignment).
TEST(GpuTraining, OnChipGridLayerOptionsMatchTheCpuBackend) {
  REQUIRE_GPU();
  if (!cooperative_launch_here()) GTEST_SKIP() << "no cooperative launch on this device";
  expect_on_chip_options_match_cpu("op_onchip=0,op_onchip_grid=2", "on_chip_grid_kernel", true, true);
}

// The backward's apply kernel by rows of 16-byte packs: two layers with the same state write the
// same dW (and ∂L/∂γ) bit for bit, with every combination of flags, dW apart, dW = G and dW = W,
// on rows of 0 to 5 packs per thread, ragged ones, views with A = 1 and A = 4; the launched
// instance read from a graph capture. The first layer's ⟨G, W⟩ loads W plainly
// (SPECNORM_TUNE=bw_stream=0), the second's evict-first (the default), and the first's apply kernel
// runs on 3 blocks, each taking rows 3 apart, across the views' A too (bw_grid=3), the second's on
// a block per row (the default): the same bits.
TEST(GpuTraining, BackwardRowsAreBitwiseReproducible) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  struct Shape {
    std::vector<int64_t> shape;
    sn_dtype_t dt;
    int dim = 0;
  };
  // Packs of 16 bytes per row: 1024 (4 per thread), 512 (2), 250 (0-1), 257 (1-2), 375 (1-2),
  // 288 (1-2), 750 (2-3), 1250 (4-5); A = 4 rows of 4096 bf16 (dim 1).
  const Shape shapes[] = {{{64, 4096}, SN_DTYPE_FLOAT32},     {{33, 4096}, SN_DTYPE_BFLOAT16},
                          {{17, 1000}, SN_DTYPE_FLOAT32},     {{9, 2056}, SN_DTYPE_FLOAT16},
                          {{5, 3000}, SN_DTYPE_BFLOAT16},     {{40, 128, 3, 3}, SN_DTYPE_FLOAT32},
                          {{6, 3000}, SN_DTYPE_FLOAT32},      {{8, 5000}, SN_DTYPE_FLOAT32},
                          {{4, 16, 4096}, SN_DTYPE_BFLOAT16, 1}};
  for (const Shape &sh : shapes) {
    SCOPED_TRACE(shape_str(sh.shape) + " dim " + std::to_string(sh.dim) + " " + dtype_name(sh.dt));
    const int64_t n = numel_of(sh.shape);
    sn_layer_desc_t d = make_desc(sh.shape, SN_BACKEND_CUDA, sh.dim);
    d.dtype = sh.dt;
    d.seed = rng.gen();
    // b loads W evict-first in ⟨G, W⟩ (the default), a plainly and applies on 3 blocks
    // (SPECNORM_TUNE=bw_stream=0,bw_grid=3; a layer reads its knobs when it is created).
    const std::string outer = tune_prefix();
    LayerPtr b(d);
    ScopedEnv env("SPECNORM_TUNE", (outer + "bw_stream=0,bw_grid=3").c_str());
    LayerPtr a(d);
    ASSERT_TRUE(a.p && b.p);
    ASSERT_EQ(a.p->plan.bw_grid, 3);
    Tensor W(sh.dt, n), Wsn(sh.dt, n), G(sh.dt, n), da(sh.dt, n), db(sh.dt, n);
    W.set(rng.normals(n, 1.f / std::sqrt(float(sh.shape[0]))));
    ASSERT_EQ(sn_forward(a, W.dev, Wsn.dev, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_forward(b, W.dev, Wsn.dev, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_TRUE(same_state(get_state(a), get_state(b)));
    Tensor dgam(SN_DTYPE_FLOAT32, 2);
    float *dg = static_cast<float *>(dgam.dev);
    const std::vector<float> w_host = W.host_floats();
    const unsigned every[] = {0u, unsigned(SN_BACKWARD_ACCUMULATE), unsigned(SN_BACKWARD_DETACH_SIGMA),
                              unsigned(SN_BACKWARD_ACCUMULATE | SN_BACKWARD_DETACH_SIGMA)};
    for (unsigned flags : every) {
      // dW apart, dW = G, dW = W (each variant with its own copy of W there)
      for (int alias : {0, 1, 2}) {
        SCOPED_TRACE("flags " + std::to_string(flags) + (alias == 1 ? ", dW = G" : alias == 2 ? ", dW = W" : ""));
        const std::vector<float> g = rng.normals(n), acc = rng.normals(n);
        G.set(g);
        const std::vector<float> &init = alias == 1 ? g : alias == 2 ? w_host : acc;
        da.set(init);
        db.set(init);
        const void *ga = alias == 1 ? da.dev : G.dev, *gb = alias == 1 ? db.dev : G.dev;
        const void *wa = alias == 2 ? da.dev : W.dev, *wb = alias == 2 ? db.dev : W.dev;
        ASSERT_EQ(sn_backward(a, wa, ga, da.dev, flags, dg, nullptr), SN_SUCCESS) << sn_last_error_message();
        ASSERT_EQ(sn_backward(b, wb, gb, db.dev, flags, dg + 1, nullptr), SN_SUCCESS) << sn_last_error_message();
        EXPECT_TRUE(da.download_bytes() == db.download_bytes());
        const std::vector<float> dgs = dgam.download_floats();
        EXPECT_EQ(std::memcmp(&dgs[0], &dgs[1], 4), 0) << dgs[0] << " against " << dgs[1];
      }
    }
    const std::vector<std::string> names =
        captured_kernels([&](cudaStream_t s) { return sn_backward(b, W.dev, G.dev, db.dev, 0, nullptr, s); });
    const std::string want = std::string("apply_rows_kernel<true, ") +
                             (sh.dt == SN_DTYPE_FLOAT32 ? "float" : sh.dt == SN_DTYPE_BFLOAT16 ? "__nv_bfloat16" : "__half") +
                             ">";
    EXPECT_TRUE(std::any_of(names.begin(), names.end(),
                            [&](const std::string &k) { return k.find(want) != std::string::npos; }))
        << "no " << want << " among " << names.size() << " kernels, the first " << (names.empty() ? "?" : names[0]);
    const std::vector<std::string> plain =
        captured_kernels([&](cudaStream_t s) { return sn_backward(a, W.dev, G.dev, da.dev, 0, nullptr, s); });
    EXPECT_TRUE(any_matches(plain, "inner_kernel<true, false,")) << ::testing::PrintToString(plain);
    if (outer.find("bw_stream") == std::string::npos) {  // the default streams W
      EXPECT_TRUE(any_matches(names, "inner_kernel<true, true,")) << ::testing::PrintToString(names);
    }
  }
}

// At σ = c the norm bound is not active (SPEC.md: no change while σ <= c): the backward has no σ
// term on the GPU either, dW = G bit for bit; one float above c, it matches the CPU backend.
TEST(GpuTraining, BackwardAtTheNormBoundMatchesTheCpuBackend) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const int64_t h = 64, w = 48, n = h * w;
  const float c = 1.5f;
  for (const char *tune : {"", "op_onchip=1"}) {
    SCOPED_TRACE(std::string("SPECNORM_TUNE ") + tune);
    ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + tune).c_str());
    sn_layer_desc_t dg = make_desc({h, w}, SN_BACKEND_CUDA);
    dg.norm_bound = c;
    sn_layer_desc_t dc = dg;
    dc.backend = SN_BACKEND_CPU;
    LayerPtr g(dg), cpu(dc);
    ASSERT_TRUE(g.p && cpu.p);
    Tensor W(SN_DTYPE_FLOAT32, n), G(SN_DTYPE_FLOAT32, n), dW(SN_DTYPE_FLOAT32, n);
    W.set(gapped_matrix(rng, h, w));
    const std::vector<float> Gh = rng.normals(n), u = rng.normals(h), v = rng.normals(w);
    G.set(Gh);
    std::vector<float> dw_cpu(static_cast<size_t>(n));
    for (const float sigma : {c, std::nextafter(c, 2.f)}) {
      SCOPED_TRACE("σ = " + std::to_string(double(sigma)));
      ASSERT_EQ(sn_layer_set_state(g, u.data(), v.data(), sigma, 1, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_layer_set_state(cpu, u.data(), v.data(), sigma, 1, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_backward(g, W.dev, G.dev, dW.dev, 0, nullptr, nullptr), SN_SUCCESS) << sn_last_error_message();
      ASSERT_EQ(sn_backward(cpu, W.host_floats().data(), Gh.data(), dw_cpu.data(), 0, nullptr, nullptr), SN_SUCCESS);
      const std::vector<float> got = dW.download_floats();
      EXPECT_LT(rel_err(got, dw_cpu), 1e-5);
      if (sigma == c) {
        EXPECT_TRUE(bitwise_equal(got, Gh)) << "σ = c: d = 1 and no σ term";
      }
    }
  }
}
