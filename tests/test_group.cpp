// Groups: many layers normalized by one call. On the CPU backend the group is the layers' own
// forwards in order (the grouped call's reference); on the GPU it is 3 launches per iteration for
// any number of layers, compared with CPU layers step by step.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include <memory>
#include <tuple>

#include "sn_cuda.h"
#include "test_util.h"

using namespace sntest;

namespace {


struct GroupPtr {
  sn_group_t *p = nullptr;
  ~GroupPtr() { sn_group_destroy(p); }
};


// One member of a test group: its description and host weights.
struct Member {
  std::vector<int64_t> shape;
  int dim = 0;
  sn_dtype_t dt = SN_DTYPE_FLOAT32;
  int iters = 1;
  bool scale_only = false;
  float bound = 0.f;
  bool gamma = false;
  bool in_place = false;  // W_sn is W
  int w_off = 0, o_off = 0;  // W and W_sn this many elements into their buffers (alignment)
  float add_eps = 0.f;       // > 0: SN_EPS_ADD_SQUARED with this eps (Flax's and Haiku's N(x))
  sn_order_t order = SN_ORDER_U_FIRST;
};

// m in the v-first (legacy) order: Keras', Flax's and Haiku's with dim −1.
Member v_first(Member m) {
  m.order = SN_ORDER_V_FIRST;
  return m;
}

// m with N(x) = x / sqrt(‖x‖² + eps) (large enough an eps to move σ by ~1e-3 on these weights).
Member with_add_eps(Member m, float eps = 1e-2f) {
  m.add_eps = eps;
  return m;
}

sn_layer_desc_t member_desc(const Member &m, sn_backend_t backend, uint64_t seed) {
  sn_layer_desc_t d = make_desc(m.shape, backend, m.dim);
  d.dtype = m.dt;
  d.n_power_iterations = m.iters;
  d.norm_bound = m.bound;
  d.seed = seed;
  d.order = m.order;
  if (m.add_eps > 0.f) {
    d.eps_mode = SN_EPS_ADD_SQUARED;
    d.eps = m.add_eps;
  }
  return d;
}

// Member m's layer on `backend` (seed s), reading γ from `gamma` (device memory for CUDA, host for
// the CPU backend) when m.gamma.
std::unique_ptr<LayerPtr> member_layer(const Member &m, sn_backend_t backend, uint64_t seed,
                                       const float *gamma) {
  auto l = std::make_unique<LayerPtr>(member_desc(m, backend, seed));
  if (l->p && m.gamma) {
    EXPECT_EQ(sn_layer_set_gamma(l->p, gamma), SN_SUCCESS);
  }
  return l;
}

// γ = 0.8 in device memory (for member_layer), and on the host.
struct Gamma {
  float host = 0.8f, *dev = nullptr;
  Gamma() {
    EXPECT_EQ(cudaMalloc(&dev, 4), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(dev, &host, 4, cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~Gamma() { cudaFree(dev); }
  Gamma(const Gamma &) = delete;
  Gamma &operator=(const Gamma &) = delete;
};

// W_sn tolerance per type: one unit in the last place of the 2-byte types; for fp32, σ's own
// float-vs-double difference (about 1e-6) dominates.
double ulp(sn_dtype_t t) { return t == SN_DTYPE_FLOAT16 ? 1.0 / 1024 : t == SN_DTYPE_BFLOAT16 ? 1.0 / 128 : 1e-6; }

// The SN-GAN CIFAR-10 discriminator's shapes, plus every kind of member a group takes. Both bodies
// of the rows kernel: a block per row (w > 1280: {96, 48, 4, 4} dim 1, {256, 2048}, {2048, 16384})
// and a warp per row (the rest), with each of its K (w <= 64, 256, 768, 1280), views with B = 1
// and B > 1, and several rows per warp ({3000, 600}: 3000 > 2·SMs·8); 1 × 1 and N × 1; fp16 and
// bf16, 2 power iterations, scale only, a norm bound (1.2, below every σ of the 200 × 64 member's
// N(0, 1/200) weights, ~1.41-1.6: active), γ.
std::vector<Member> every_kind_of_member() {
  return {
      {{128, 3, 3, 3}},          {{128, 128, 3, 3}},         {{128, 3, 1, 1}},
      {{128, 128, 3, 3}},        {{128, 128, 1, 1}},         {{1, 128}},
      {{1, 1}},                  {{97, 1}},
      {{96, 48, 4, 4}, 1},       {{300, 517}, 1},            {{256, 2048}, 0, SN_DTYPE_BFLOAT16},
      {{130, 1000}, 0, SN_DTYPE_FLOAT16, 2},                 {{64, 100}, 0, SN_DTYPE_FLOAT32, 1, true},
      {{200, 64}, 0, SN_DTYPE_FLOAT32, 1, false, 1.2f},      {{77, 99}, 0, SN_DTYPE_FLOAT32, 1, false, 0.f, true},
      {{2048, 16384}, 0, SN_DTYPE_BFLOAT16},                 {{3000, 600}},
      {{40, 24, 5}, 1, SN_DTYPE_BFLOAT16},
      with_add_eps({{50, 70}}),                              with_add_eps({{20, 30}, 0, SN_DTYPE_BFLOAT16, 2}),
  };
}


// sn_group_create over these layers and buffers with SPECNORM_TUNE set to `tune` while the group
// is created (a group reads its knobs then).
sn_status_t create_group_tuned(GroupPtr &g, const std::vector<sn_layer_t *> &layers,
                               const std::vector<void *> &W, const std::vector<void *> &W_sn,
                               const std::string &tune) {
  ScopedEnv env("SPECNORM_TUNE", tune.c_str());
  return sn_group_create(&g.p, layers.data(), const_cast<const void *const *>(W.data()), W_sn.data(),
                         int(layers.size()));
}

// Nodes of one grouped forward captured on a new stream (its layers warmed up already); 0 when
// the capture fails, which the failed expectations report.
size_t captured_nodes(sn_group_t *g, int training) {
  cudaStream_t s = nullptr;
  EXPECT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  EXPECT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  EXPECT_EQ(sn_group_forward(g, training, s), SN_SUCCESS) << sn_last_error_message();
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  size_t nodes = 0;
  if (graph) {
    EXPECT_EQ(cudaGraphGetNodes(graph, nullptr, &nodes), cudaSuccess);
    cudaGraphDestroy(graph);
  }
  cudaStreamDestroy(s);
  return nodes;
}

// Whether a group whose weights take w_bytes runs as one cooperative launch on this device (the
// policy of sn_cuda_tune_group_coop, where the device has cooperative launches).
bool group_is_cooperative(double w_bytes) {
  return cooperative_launch_here() && sn_cuda_tune_group_coop(w_bytes) > 0;
}

}  // namespace

TEST(GroupCpu, EqualsTheLayersOneByOne) {
  SN_SEEDED_RNG();
  const std::vector<std::vector<int64_t>> shapes = {{16, 3, 3, 3}, {8, 16, 3, 3}, {1, 8}, {3, 3, 8, 5}};
  std::vector<std::unique_ptr<LayerPtr>> grouped, alone;
  std::vector<std::vector<float>> W, out_g, out_a;
  std::vector<sn_layer_t *> layers;
  std::vector<const void *> wp;
  std::vector<void *> op;
  for (size_t k = 0; k < shapes.size(); ++k) {
    sn_layer_desc_t d = make_desc(shapes[k], SN_BACKEND_CPU, k == 3 ? -1 : 0);
    d.seed = k;
    if (k == 3) d.order = SN_ORDER_V_FIRST;  // a Keras kernel
    grouped.push_back(std::make_unique<LayerPtr>(d));
    alone.push_back(std::make_unique<LayerPtr>(d));
    W.push_back(rng.normals(numel_of(shapes[k])));
    out_g.emplace_back(W.back().size());
    out_a.emplace_back(W.back().size());
  }
  for (size_t k = 0; k < shapes.size(); ++k) {
    layers.push_back(grouped[k]->p);
    wp.push_back(W[k].data());
    op.push_back(out_g[k].data());
  }
  GroupPtr g;
  ASSERT_EQ(sn_group_create(&g.p, layers.data(), wp.data(), op.data(), int(layers.size())), SN_SUCCESS)
      << sn_last_error_message();
  for (int step = 0; step < 3; ++step) {
    ASSERT_EQ(sn_group_forward(g.p, step < 2, nullptr), SN_SUCCESS);
    for (size_t k = 0; k < shapes.size(); ++k) {
      ASSERT_EQ(sn_forward(alone[k]->p, W[k].data(), out_a[k].data(), step < 2, nullptr), SN_SUCCESS);
      EXPECT_TRUE(same_state(get_state(grouped[k]->p), get_state(alone[k]->p)));
      EXPECT_TRUE(bitwise_equal(out_g[k], out_a[k]));
    }
  }
}

// The view a group iterates on (sn_group_view): for a u-first layer its own; for a v-first one a
// view of the same W whose matrix is the layer's Mᵀ, where the weight's dim is its first or last
// axis, and none otherwise (refused). Checked element by element against M built from the
// definition (axis `dim` is the row, the other axes in order the column), through the view's
// own rule M[i, a·B + b] = W[(a·h + i)·B + b] (sn_view_t), which the grouped kernels follow.
TEST(GroupCpu, GroupViewIsTheLayersMatrixOrItsTranspose) {
  struct Case {
    std::vector<int64_t> shape;
    int dim;
  };
  for (const Case &c : {Case{{5, 7}, 0}, Case{{5, 7}, 1}, Case{{4, 6, 3}, 1}, Case{{3, 3, 4, 5}, 3},
                        Case{{6, 2, 5}, 0}, Case{{2, 3, 4, 5}, 2}, Case{{1, 9}, 1}, Case{{9, 1}, 0}}) {
    const int nd = int(c.shape.size());
    const sn_view_t vw = sn_ref_view(nd, c.shape.data(), c.dim);
    const int64_t h = vw.h, w = vw.A * vw.B, n = h * w;
    std::vector<int64_t> elem(static_cast<size_t>(n), -1);  // elem[r·w + col]: the element of M[r, col]
    for (int64_t k = 0; k < n; ++k) {
      int64_t rest = k, r = 0, col = 0, mul = 1;
      for (int d = nd - 1; d >= 0; --d) {  // the multi-index of element k, last axis fastest
        const int64_t x = rest % c.shape[size_t(d)];
        rest /= c.shape[size_t(d)];
        if (d == c.dim) {
          r = x;
        } else {
          col += x * mul;
          mul *= c.shape[size_t(d)];
        }
      }
      elem[size_t(r * w + col)] = k;
    }
    for (sn_order_t order : {SN_ORDER_U_FIRST, SN_ORDER_V_FIRST}) {
      const bool tr = order == SN_ORDER_V_FIRST;
      SCOPED_TRACE(shape_str(c.shape) + " dim " + std::to_string(c.dim) + (tr ? " v-first" : " u-first"));
      sn_view_t ev{};
      const int ok = sn_group_view(vw, order, &ev);
      if (tr && vw.A > 1 && vw.B > 1) {
        EXPECT_EQ(ok, 0);
        continue;
      }
      ASSERT_EQ(ok, 1);
      ASSERT_EQ(ev.h, tr ? w : h);
      ASSERT_EQ(ev.A * ev.B, tr ? h : w);
      for (int64_t i = 0; i < ev.h; ++i)
        for (int64_t j = 0; j < ev.A * ev.B; ++j) {
          const int64_t a = j / ev.B, b = j % ev.B;
          const int64_t want = tr ? elem[size_t(j * w + i)] : elem[size_t(i * w + j)];
          ASSERT_EQ((a * ev.h + i) * ev.B + b, want) << "M_e[" << i << ", " << j << "]";
        }
    }
  }
}

// SPECNORM_TUNE's parser (cuda/forward.cu), through the one knob that needs no device: good
// values, bad values and unknown keys (ignored), the last of a key winning; and the default
// without the knob, by the group's bytes (cooperative up to 8 MiB of weights).
TEST(GroupCpu, TuneKnobsParse) {
  ScopedEnv env("SPECNORM_TUNE", nullptr);
  const double small = 4.2e6, limit = 8.0 * 1024 * 1024, big = 343e6;
  const struct {
    const char *tune;
    double bytes;
    int want;
  } cases[] = {
      {nullptr, small, INT_MAX},
      {nullptr, limit, INT_MAX},
      {nullptr, limit + 1, 0},
      {nullptr, big, 0},
      {"group_grid=7", small, 7},
      {"group_grid=7", big, 0},
      {"group_coop=1", big, INT_MAX},
      {"group_coop=0", small, 0},
      {"group_coop=1,group_grid=7", big, 7},
      {"group_grid=7,group_coop=1", big, 7},
      {"group_coop=0,group_grid=7", small, 0},
      {"group_coop=2", small, INT_MAX},
      {"group_coop=2", big, 0},
      {"group_coop=1x", big, 0},
      {"group_coop=", big, 0},
      {"op_cluster=3,group_coop=1,bogus=5", big, INT_MAX},
      {"group_coop=1,group_grid=0", big, INT_MAX},
      {"group_coop=1,group_grid=9,group_coop=0", small, 0},
  };
  for (const auto &c : cases) {
    env.set(c.tune);
    EXPECT_EQ(sn_cuda_tune_group_coop(c.bytes), c.want)
        << (c.tune ? c.tune : "(unset)") << ", " << c.bytes << " bytes";
  }
  // The grouped backward's launch: its own key where set, else group_coop's, else two kernels
  // whatever the bytes (kGroupBackwardCoop); group_grid caps it as it caps the forward's.
  const std::pair<const char *, int> backward[] = {{nullptr, 0},
                                                   {"group_grid=7", 0},
                                                   {"group_bw_coop=1", INT_MAX},
                                                   {"group_bw_coop=1,group_grid=7", 7},
                                                   {"group_bw_coop=0", 0},
                                                   {"group_coop=1", INT_MAX},
                                                   {"group_coop=1,group_grid=7", 7},
                                                   {"group_coop=0", 0},
                                                   {"group_coop=1,group_bw_coop=0", 0},
                                                   {"group_coop=0,group_bw_coop=1", INT_MAX},
                                                   {"group_bw_coop=2", 0},
                                                   {"group_bw_coop=2,group_coop=1", INT_MAX}};
  for (const auto &[t, want] : backward) {
    env.set(t);
    EXPECT_EQ(sn_cuda_tune_group_backward_coop(), want) << (t ? t : "(unset)");
  }
  // group_grid_force is its own key, not group_grid's.
  const std::pair<const char *, int> force[] = {{nullptr, 0},
                                                {"group_grid_force=300", 300},
                                                {"group_grid=7", 0},
                                                {"group_grid_force=0", 0},
                                                {"group_grid_force=300,group_grid=7", 300}};
  for (const auto &[t, want] : force) {
    env.set(t);
    EXPECT_EQ(sn_cuda_tune_group_grid_force(), want) << (t ? t : "(unset)");
  }
  env.set("group_grid_force=300");
  EXPECT_EQ(sn_cuda_tune_group_coop(4.2e6), INT_MAX) << "group_grid_force does not cap like group_grid";
  // group_onchip and its cluster size (1, 2, 4, 8), each its own key. Unset, it is on where the
  // device has clusters (here: auto), unless a key forces another group path.
  const int autom = sn_cuda_clusters_usable();
  const struct {
    const char *tune;
    int onchip, cluster;
  } onchip[] = {{nullptr, autom, 0},
                {"group_coop=1", 0, 0},
                {"group_coop=0", 0, 0},
                {"group_grid=7", 0, 0},
                {"group_grid_force=9", 0, 0},
                {"pdl=0,op_cluster=1", autom, 0},
                {"group_coop=0,group_onchip=1", 1, 0},
                {"group_onchip=1", 1, 0},
                {"group_onchip=0", 0, 0},
                {"group_onchip=2", autom, 0},  // a bad value is ignored: unset
                {"group_onchip=1,group_onchip_cluster=8", 1, 8},
                {"group_onchip_cluster=2,group_onchip=1", 1, 2},
                {"group_onchip=1,group_onchip_cluster=3", 1, 0},
                {"group_onchip=1,group_onchip_cluster=16", 1, 0},
                {"group_onchip_cluster=4", autom, 4}};
  for (const auto &c : onchip) {
    env.set(c.tune);
    int cluster = -1, refuse = -1;
    EXPECT_EQ(sn_cuda_tune_group_onchip(&cluster, &refuse), c.onchip) << (c.tune ? c.tune : "(unset)");
    EXPECT_EQ(cluster, c.cluster) << (c.tune ? c.tune : "(unset)");
    EXPECT_EQ(refuse, 0) << (c.tune ? c.tune : "(unset)");
  }
  for (const auto &[t, want] : std::vector<std::pair<const char *, int>>{
           {"group_onchip=1,onchip_refuse=1", 1}, {"onchip_refuse=1", 1}, {"onchip_refuse=2", 0}, {"group_onchip_refuse=1", 0}}) {
    env.set(t);
    int cluster = -1, refuse = -1;
    (void)sn_cuda_tune_group_onchip(&cluster, &refuse);
    EXPECT_EQ(refuse, want) << t;
  }
  // The on-chip forward's threads per block: 256, or 512 (0: unset, by size).
  for (const auto &[t, want] : std::vector<std::pair<const char *, int>>{
           {nullptr, 0}, {"onchip_threads=512", 512}, {"onchip_threads=256", 256}, {"onchip_threads=384", 0},
           {"onchip_threads=1024", 0}, {"onchip_threads=128", 0}, {"group_onchip=1,onchip_threads=512", 512},
           {"onchip_threads=512,onchip_threads=256", 256}}) {
    env.set(t);
    EXPECT_EQ(sn_cuda_tune_onchip_threads(), want) << (t ? t : "(unset)");
  }
  // A single layer on chip: op_onchip=0|1 (-1: unset, the default rule).
  for (const auto &[t, want] : std::vector<std::pair<const char *, int>>{
           {nullptr, -1}, {"op_onchip=1", 1}, {"op_onchip=0", 0}, {"op_onchip=2", -1}, {"op_onchip=", -1},
           {"group_onchip=1", -1}, {"op_onchip=1,op_onchip=0", 0}}) {
    env.set(t);
    EXPECT_EQ(sn_cuda_tune_op_onchip(), want) << (t ? t : "(unset)");
  }
}

// The on-chip defaults by size (cuda/forward.cu), which need no device: a single layer's training
// forwards (W_sn written and scale only alike) on chip up to 160K elements, only with clusters and
// only when op_onchip is unset; blocks of 256 threads below 64K elements, else and for groups 512.
TEST(GroupCpu, OnChipDefaultsBySize) {
  const int T = SN_ON_CHIP_TRAIN, S = SN_ON_CHIP_SCALE;
  const struct {
    int64_t numel;
    int op_onchip, clusters, want;
  } cases[] = {{1, -1, 1, T | S},
               {128 * 1152, -1, 1, T | S},
               {160 * 1024, -1, 1, T | S},
               {160 * 1024 + 1, -1, 1, 0},
               {320 * 1024, -1, 1, 0},
               {4096LL * 4096, -1, 1, 0},
               {1, -1, 0, 0},
               {128 * 1152, -1, 0, 0},
               {1, 0, 1, 0},
               {128 * 1152, 0, 1, 0},
               {1, 1, 1, SN_ON_CHIP_ALL},
               {4096LL * 4096, 1, 1, SN_ON_CHIP_ALL},
               {1, 1, 0, SN_ON_CHIP_ALL}};
  for (const auto &c : cases) {
    EXPECT_EQ(sn_cuda_layer_on_chip_modes(c.numel, c.op_onchip, c.clusters), c.want)
        << c.numel << " elements, op_onchip " << c.op_onchip << ", clusters " << c.clusters;
  }
  EXPECT_EQ(SN_ON_CHIP_ALL, SN_ON_CHIP_TRAIN | SN_ON_CHIP_SCALE | SN_ON_CHIP_EVAL);
  // Rows per step of the one-pass rows kernel (op_rows=2 asks for two): two where a row is at
  // most 16 elements per thread (threads and packs per thread by one_pass_shape, packs of 8
  // elements for the 2-byte types when w % 8 = 0).
  for (const auto &[dt, w, want] : std::vector<std::tuple<sn_dtype_t, int64_t, int>>{
           {SN_DTYPE_FLOAT32, 4096, 2},     // 256 threads × 4 packs of 4
           {SN_DTYPE_FLOAT32, 8192, 2},     // 512 × 4 × 4
           {SN_DTYPE_FLOAT32, 16384, 1},    // 512 × 8 × 4
           {SN_DTYPE_BFLOAT16, 4096, 2},    // 256 × 2 × 8
           {SN_DTYPE_BFLOAT16, 8192, 1},    // 256 × 4 × 8
           {SN_DTYPE_BFLOAT16, 16384, 1},   // 512 × 4 × 8
           {SN_DTYPE_FLOAT16, 4100, 2},     // w % 8 = 4: 1025 packs of 4, 512 × 4 × 4
           {SN_DTYPE_FLOAT32, 64, 2}}) {
    EXPECT_EQ(sn_cuda_one_pass_rows_per_step(dt, w, 2), want) << "dtype " << int(dt) << ", w " << w;
    EXPECT_EQ(sn_cuda_one_pass_rows_per_step(dt, w, 1), 1) << "dtype " << int(dt) << ", w " << w;
  }
  for (const auto &[numel, group, want] : std::vector<std::tuple<int64_t, int, int>>{
           {1, 0, 256}, {64 * 27, 0, 256}, {64 * 1024 - 1, 0, 256}, {64 * 1024, 0, 512}, {128 * 1152, 0, 512},
           {1, 1, 512}, {0, 1, 512}, {128 * 1152, 1, 512}}) {
    EXPECT_EQ(sn_cuda_on_chip_threads(numel, group), want) << numel << " elements, group " << group;
  }
}

TEST(GroupCpu, BadArguments) {
  LayerPtr a(make_desc({4, 5}, SN_BACKEND_CPU)), b(make_desc({3, 3}, SN_BACKEND_CPU));
  std::vector<float> wa(20), wb(9);
  sn_layer_t *layers[2] = {a.p, b.p};
  const void *W[2] = {wa.data(), wb.data()};
  sn_group_t *g = reinterpret_cast<sn_group_t *>(0x1);
  EXPECT_EQ(sn_group_create(nullptr, layers, W, nullptr, 2), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_group_create(&g, nullptr, W, nullptr, 2), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(g, nullptr);
  EXPECT_EQ(sn_group_create(&g, layers, nullptr, nullptr, 2), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_group_create(&g, layers, W, nullptr, 0), SN_ERROR_INVALID_VALUE);
  sn_layer_t *twice[2] = {a.p, a.p};
  EXPECT_EQ(sn_group_create(&g, twice, W, nullptr, 2), SN_ERROR_INVALID_VALUE);
  EXPECT_NE(std::string(sn_last_error_message()).find("same layer"), std::string::npos);
  sn_layer_t *with_null[2] = {a.p, nullptr};
  EXPECT_EQ(sn_group_create(&g, with_null, W, nullptr, 2), SN_ERROR_NULL_POINTER);
  const void *W_null[2] = {wa.data(), nullptr};
  EXPECT_EQ(sn_group_create(&g, layers, W_null, nullptr, 2), SN_ERROR_NULL_POINTER);
  EXPECT_NE(std::string(sn_last_error_message()).find("W[1]"), std::string::npos);
  EXPECT_EQ(sn_group_forward(nullptr, 1, nullptr), SN_ERROR_NULL_POINTER);
  sn_group_destroy(nullptr);
  // A group of one layer is a group: its forward is the layer's own, bit for bit (on the CPU).
  LayerPtr c(make_desc({4, 5}, SN_BACKEND_CPU));
  SN_SEEDED_RNG();
  const std::vector<float> Wc = gapped_matrix(rng, 4, 5);
  std::vector<float> out(20), own(20);
  const void *Wone[1] = {Wc.data()};
  void *Oone[1] = {out.data()};
  sn_layer_t *one[1] = {a.p};
  ASSERT_EQ(sn_group_create(&g, one, Wone, Oone, 1), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_group_forward(g, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_forward(c, Wc.data(), own.data(), 1, nullptr), SN_SUCCESS);
  EXPECT_TRUE(bitwise_equal(out, own));
  EXPECT_TRUE(same_state(get_state(a), get_state(c)));
  sn_group_destroy(g);
}

// sn_group_get_paths: the group's own calls, by kind (a training forward with some W_sn is a
// "train" one, with none a "scale_only" one); its members record none of them, and a failed call
// records nothing.
TEST(GroupCpu, PathsRecordTheGroupsOwnCalls) {
  LayerPtr a(make_desc({4, 5}, SN_BACKEND_CPU)), b(make_desc({3, 3}, SN_BACKEND_CPU));
  std::vector<float> wa(20, 0.5f), wb(9, 0.25f), oa(20), ob(9), ga(20, 1.f), gb(9, 1.f), da(20), db(9);
  wa[3] = wb[2] = 2.f;
  sn_layer_t *layers[2] = {a.p, b.p};
  const void *W[2] = {wa.data(), wb.data()};
  void *out[2] = {oa.data(), nullptr};
  const auto paths_of = [](const sn_group_t *g) {
    sn_paths_t p;
    std::memset(&p, 0xff, sizeof p);
    EXPECT_EQ(sn_group_get_paths(g, &p), SN_SUCCESS);
    return p;
  };
  GroupPtr with, without;
  ASSERT_EQ(sn_group_create(&with.p, layers, W, out, 2), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_group_create(&without.p, layers, W, nullptr, 2), SN_SUCCESS) << sn_last_error_message();
  sn_paths_t p = paths_of(with.p);
  EXPECT_EQ(p.train, SN_PATH_NONE);
  EXPECT_EQ(p.scale_only, SN_PATH_NONE);
  EXPECT_EQ(p.eval, SN_PATH_NONE);
  EXPECT_EQ(p.backward, SN_PATH_NONE);
  EXPECT_EQ(p.dropped, 0u);
  EXPECT_EQ(sn_group_backward(with.p, 0, nullptr), SN_ERROR_INVALID_STATE);  // no gradients bound
  ASSERT_EQ(sn_group_forward(with.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_group_forward(without.p, 0, nullptr), SN_SUCCESS) << sn_last_error_message();
  p = paths_of(with.p);
  EXPECT_EQ(p.train, SN_PATH_CPU);
  EXPECT_EQ(p.scale_only, SN_PATH_NONE);
  EXPECT_EQ(p.eval, SN_PATH_NONE);
  EXPECT_EQ(p.backward, SN_PATH_NONE);
  p = paths_of(without.p);
  EXPECT_EQ(p.train, SN_PATH_NONE);
  EXPECT_EQ(p.eval, SN_PATH_CPU);
  ASSERT_EQ(sn_group_forward(without.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_EQ(paths_of(without.p).scale_only, SN_PATH_CPU);
  const void *G[2] = {ga.data(), gb.data()};
  void *dW[2] = {da.data(), db.data()};
  ASSERT_EQ(sn_group_set_gradients(with.p, G, dW, nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_EQ(sn_group_backward(with.p, 0x80u, nullptr), SN_ERROR_INVALID_VALUE);
  EXPECT_EQ(paths_of(with.p).backward, SN_PATH_NONE);
  ASSERT_EQ(sn_group_backward(with.p, 0, nullptr), SN_SUCCESS) << sn_last_error_message();
  p = paths_of(with.p);
  EXPECT_EQ(p.backward, SN_PATH_CPU);
  EXPECT_EQ(p.dropped, 0u);
  for (sn_layer_t *l : layers) {  // the members' own records: none of the group's calls
    sn_paths_t q;
    ASSERT_EQ(sn_layer_get_paths(l, &q), SN_SUCCESS);
    EXPECT_EQ(q.train, SN_PATH_NONE);
    EXPECT_EQ(q.scale_only, SN_PATH_NONE);
    EXPECT_EQ(q.eval, SN_PATH_NONE);
    EXPECT_EQ(q.backward, SN_PATH_NONE);
  }
  // sn_group_describe: the backend, the layers and the paths, as sn_layer_describe does a layer's.
  size_t len = 0;
  ASSERT_EQ(sn_group_describe(with.p, nullptr, 0, &len), SN_SUCCESS);
  std::string text(len + 1, '\x7f');
  ASSERT_EQ(sn_group_describe(with.p, &text[0], text.size(), nullptr), SN_SUCCESS);
  text.resize(len);
  for (const char *part : {"cpu (", "2 layers of 29 elements in all", "paths: train cpu, scale-only none, eval none, backward cpu"})
    EXPECT_NE(text.find(part), std::string::npos) << "no \"" << part << "\" in: " << text;
  char cut[8];
  ASSERT_EQ(sn_group_describe(with.p, cut, sizeof cut, &len), SN_SUCCESS);
  EXPECT_EQ(std::string(cut), text.substr(0, sizeof cut - 1));
  EXPECT_EQ(sn_group_describe(nullptr, cut, sizeof cut, &len), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_group_describe(with.p, nullptr, 8, &len), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_group_get_paths(nullptr, &p), SN_ERROR_NULL_POINTER);
  EXPECT_NE(std::string(sn_last_error_message()).find("group"), std::string::npos);
  EXPECT_EQ(sn_group_get_paths(with.p, nullptr), SN_ERROR_NULL_POINTER);
  EXPECT_NE(std::string(sn_last_error_message()).find("paths"), std::string::npos);
}

// A group takes its layers' γ bindings at creation: after one changes, a forward is refused
// (INVALID_STATE, naming the layer, nothing computed) until the binding is back or the group is
// created again.
TEST(GroupCpu, ChangedGammaBindingIsRefused) {
  SN_SEEDED_RNG();
  LayerPtr a(make_desc({8, 8}, SN_BACKEND_CPU)), b(make_desc({4, 8}, SN_BACKEND_CPU));
  const float g1 = 0.5f, g2 = 2.f;
  ASSERT_EQ(sn_layer_set_gamma(b, &g1), SN_SUCCESS);
  std::vector<float> wa = rng.normals(64), wb = rng.normals(32);
  sn_layer_t *layers[2] = {a.p, b.p};
  const void *W[2] = {wa.data(), wb.data()};
  sn_group_t *g = nullptr;
  ASSERT_EQ(sn_group_create(&g, layers, W, nullptr, 2), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_group_forward(g, 1, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_set_gamma(b, &g2), SN_SUCCESS);
  const State sa = get_state(a), sb = get_state(b);
  EXPECT_EQ(sn_group_forward(g, 1, nullptr), SN_ERROR_INVALID_STATE);
  EXPECT_NE(std::string(sn_last_error_message()).find("layers[1]"), std::string::npos) << sn_last_error_message();
  EXPECT_TRUE(same_state(get_state(a), sa));
  EXPECT_TRUE(same_state(get_state(b), sb));
  ASSERT_EQ(sn_layer_set_gamma(b, &g1), SN_SUCCESS);
  EXPECT_EQ(sn_group_forward(g, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  sn_group_destroy(g);
  ASSERT_EQ(sn_layer_set_gamma(b, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_group_create(&g, layers, W, nullptr, 2), SN_SUCCESS);
  EXPECT_EQ(sn_group_forward(g, 1, nullptr), SN_SUCCESS);
  sn_group_destroy(g);
}

// A CPU group refuses what a CUDA group refuses (1-D members, u-first ones of w > 16384, v-first
// ones of h > 16384, a group reading a v-first layer's columns as rows, and v-first ones whose dim
// is inside the weight: sn_group_view) and takes what it
// takes (a v-first 2 × 20000, a u-first 20000 × 2), so that a group built on the CPU also builds
// on a GPU; and on both backends, W_sn[k] must be W[k] or apart from it, and apart from every other
// member's W and W_sn.
TEST(GroupCpu, MembersFollowTheCudaRulesAndBuffersDoNotOverlap) {
  sn_layer_desc_t tall_v = make_desc({20000, 2}, SN_BACKEND_CPU), wide_v = make_desc({2, 20000}, SN_BACKEND_CPU),
                  inner_v = make_desc({4, 6, 3, 3}, SN_BACKEND_CPU, 1);  // ConvTranspose's dim 1
  tall_v.order = wide_v.order = inner_v.order = SN_ORDER_V_FIRST;
  LayerPtr vtall(tall_v), oned(make_desc({8}, SN_BACKEND_CPU)), wide(make_desc({2, 20000}, SN_BACKEND_CPU)),
      a(make_desc({8, 8}, SN_BACKEND_CPU)), b(make_desc({4, 8}, SN_BACKEND_CPU)), vwide(wide_v),
      tall(make_desc({20000, 2}, SN_BACKEND_CPU)), vinner(inner_v);
  std::vector<float> buf(200000);
  sn_group_t *g = nullptr;
  const void *W2[2] = {buf.data(), buf.data() + 64};
  for (sn_layer_t *bad : {vtall.p, oned.p, wide.p, vinner.p}) {
    sn_layer_t *layers[2] = {a.p, bad};
    EXPECT_EQ(sn_group_create(&g, layers, W2, nullptr, 2), SN_ERROR_NOT_SUPPORTED) << sn_last_error_message();
    EXPECT_NE(std::string(sn_last_error_message()).find("layers[1]"), std::string::npos);
    EXPECT_EQ(g, nullptr);
  }
  // At most 16384 columns of the matrix the group iterates on: a u-first layer's w, a v-first
  // layer's h; one more is refused.
  sn_layer_desc_t edge_v = make_desc({16384, 2}, SN_BACKEND_CPU), over_v = make_desc({16385, 2}, SN_BACKEND_CPU);
  edge_v.order = over_v.order = SN_ORDER_V_FIRST;
  LayerPtr edge(make_desc({2, 16384}, SN_BACKEND_CPU)), vedge(edge_v), over(make_desc({2, 16385}, SN_BACKEND_CPU)),
      vover(over_v);
  for (sn_layer_t *bad : {over.p, vover.p}) {
    sn_layer_t *layers[2] = {a.p, bad};
    EXPECT_EQ(sn_group_create(&g, layers, W2, nullptr, 2), SN_ERROR_NOT_SUPPORTED) << sn_last_error_message();
    EXPECT_NE(std::string(sn_last_error_message()).find("16385 > 16384"), std::string::npos) << sn_last_error_message();
  }
  for (sn_layer_t *fine : {vwide.p, tall.p, edge.p, vedge.p}) {
    sn_layer_t *layers[2] = {a.p, fine};
    EXPECT_EQ(sn_group_create(&g, layers, W2, nullptr, 2), SN_SUCCESS) << sn_last_error_message();
    sn_group_destroy(g);
    g = nullptr;
  }
  sn_layer_t *layers[2] = {a.p, b.p};
  float *W0 = buf.data(), *W1 = buf.data() + 64;  // a: 64 floats, b: 32
  struct Case {
    void *out0, *out1;
    sn_status_t want;
    const char *word;
  };
  const Case cases[] = {
      {W0, W1, SN_SUCCESS, ""},                           // in place
      {buf.data() + 1000, buf.data() + 2000, SN_SUCCESS, ""},  // apart
      {nullptr, buf.data() + 2000, SN_SUCCESS, ""},       // no W_sn for layer 0
      {W0 + 1, nullptr, SN_ERROR_INVALID_VALUE, "and W[0]"},  // overlaps its own W (and W[1])
      {W1 + 8, nullptr, SN_ERROR_INVALID_VALUE, "layers[1]"},  // overlaps the other's W
      {buf.data() + 1000, buf.data() + 1010, SN_ERROR_INVALID_VALUE, "layers[1]"},  // each other's
      {nullptr, W0 + 10, SN_ERROR_INVALID_VALUE, "layers[0]"},
  };
  for (const Case &c : cases) {
    void *out[2] = {c.out0, c.out1};
    const void *W[2] = {W0, W1};
    const sn_status_t st = sn_group_create(&g, layers, W, out, 2);
    EXPECT_EQ(st, c.want) << sn_last_error_message();
    if (st == SN_SUCCESS) {
      sn_group_destroy(g);
      g = nullptr;
    } else {
      EXPECT_NE(std::string(sn_last_error_message()).find(c.word), std::string::npos) << sn_last_error_message();
      EXPECT_EQ(g, nullptr);
    }
  }
}

// A group of `ms` created under SPECNORM_TUNE `tune` (after whatever it already says) against
// CPU layers fed the same weights, step by step: 3 training steps and an eval step, each with a
// fresh or moved weight. Returns the kernels of a captured training and eval forward (after the
// steps).
struct Captured {
  std::vector<std::string> training, eval;
};
static Captured expect_group_matches_cpu(const std::vector<Member> &ms, const std::string &tune,
                                                         Rng &rng) {
  SCOPED_TRACE("SPECNORM_TUNE " + tune);
  const size_t n_members = ms.size();
  std::vector<std::unique_ptr<LayerPtr>> gl, cl;
  std::vector<std::vector<uint8_t>> Wh, outc;
  std::vector<std::unique_ptr<Tensor>> tensors;  // every W and W_sn
  std::vector<void *> Wd, Od;
  std::vector<sn_layer_t *> layers;
  const Gamma gamma;
  Captured kernels;
  for (size_t k = 0; k < n_members; ++k) {
    const Member &m = ms[k];
    const uint64_t s = rng.gen();
    gl.push_back(member_layer(m, SN_BACKEND_CUDA, s, gamma.dev));
    cl.push_back(member_layer(m, SN_BACKEND_CPU, s, &gamma.host));
    if (!gl.back()->p || !cl.back()->p) {
      ADD_FAILURE() << "member " << k;
      return kernels;
    }
    const int64_t n = numel_of(m.shape);
    Wh.emplace_back(size_t(n) * sn_dtype_size(m.dt));
    outc.emplace_back(Wh.back().size());
    tensors.push_back(std::make_unique<Tensor>(m.dt, n, m.w_off));
    Wd.push_back(tensors.back()->dev);
    if (m.scale_only) {
      Od.push_back(nullptr);
    } else if (m.in_place) {
      Od.push_back(Wd.back());
    } else {
      tensors.push_back(std::make_unique<Tensor>(m.dt, n, m.o_off));
      Od.push_back(tensors.back()->dev);
    }
    layers.push_back(gl.back()->p);
  }
  GroupPtr g;
  const sn_status_t created = create_group_tuned(g, layers, Wd, Od, tune_prefix() + tune);
  EXPECT_EQ(created, SN_SUCCESS) << sn_last_error_message();
  std::vector<std::vector<float>> w32(n_members);
  for (int step = 0; created == SN_SUCCESS && step < 4; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const int training = step < 3;
    bool ok = true;
    for (size_t k = 0; k < n_members; ++k) {
      // A fresh weight, then small steps, as training moves it.
      const int64_t n = numel_of(ms[k].shape);
      if (step == 0) w32[k] = rng.normals(n, 1.f / std::sqrt(float(ms[k].shape[0])));
      for (auto &x : w32[k]) x += 0.01f * rng.normal() / std::sqrt(float(ms[k].shape[0]));
      for (int64_t q = 0; q < n; ++q) sn_store(Wh[k].data(), ms[k].dt, q, w32[k][static_cast<size_t>(q)]);
      ok = ok && cudaMemcpy(Wd[k], Wh[k].data(), Wh[k].size(), cudaMemcpyHostToDevice) == cudaSuccess;
      if (Od[k] && Od[k] != Wd[k]) ok = ok && cudaMemset(Od[k], 0xFF, Wh[k].size()) == cudaSuccess;
    }
    EXPECT_TRUE(ok) << "uploading the weights";
    const sn_status_t st = sn_group_forward(g.p, training, nullptr);
    EXPECT_EQ(st, SN_SUCCESS) << sn_last_error_message();
    if (!ok || st != SN_SUCCESS) break;
    for (size_t k = 0; k < n_members; ++k) {
      SCOPED_TRACE("member " + std::to_string(k) + " " + shape_str(ms[k].shape) +
                   (ms[k].in_place ? ", in place" : ""));
      const sn_status_t cs = ms[k].scale_only
                                 ? sn_forward_scale_only(cl[k]->p, Wh[k].data(), training, nullptr)
                                 : sn_forward(cl[k]->p, Wh[k].data(), outc[k].data(), training, nullptr);
      EXPECT_EQ(cs, SN_SUCCESS);
      const State sg = get_state(gl[k]->p), sc = get_state(cl[k]->p);
      EXPECT_NEAR(sg.sigma / sc.sigma, 1.0, 1e-5);
      // Random (ungapped) weights: vectors agree to the conditioning of the top singular pair.
      EXPECT_LT(max_abs_diff(sg.u, sc.u), 1e-3);
      EXPECT_LT(max_abs_diff(sg.v, sc.v), 1e-3);
      expect_scale_near(gl[k]->p, cl[k]->p, 1e-5);
      if (!Od[k]) continue;
      std::vector<uint8_t> og(Wh[k].size());
      EXPECT_EQ(cudaMemcpy(og.data(), Od[k], og.size(), cudaMemcpyDeviceToHost), cudaSuccess);
      int64_t bad = 0, first = -1;
      for (int64_t q = 0; q < numel_of(ms[k].shape); ++q) {
        const float a = sn_load(og.data(), ms[k].dt, q), b = sn_load(outc[k].data(), ms[k].dt, q);
        // (plus one step of fp16's subnormals, 2^-24, where 2 ulp of |b| is less than one)
        const double floor_step = ms[k].dt == SN_DTYPE_FLOAT16 ? 0x1p-24 : 1e-30;
        if (!(std::fabs(a - b) <= 2 * ulp(ms[k].dt) * std::fabs(b) + floor_step)) bad += 1, first = first < 0 ? q : first;
      }
      EXPECT_EQ(bad, 0) << "elements of W_sn off the CPU's, the first at " << first;
    }
  }
  if (created == SN_SUCCESS) {
    kernels.training = captured_kernels([&](cudaStream_t s) { return sn_group_forward(g.p, 1, s); });
    kernels.eval = captured_kernels([&](cudaStream_t s) { return sn_group_forward(g.p, 0, s); });
  }
  return kernels;
}

TEST(GroupGpu, MatchesCpuLayersStepByStep) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const std::vector<Member> ms = every_kind_of_member();
  const Captured kernels = expect_group_matches_cpu(ms, "", rng);
  // Launches per grouped call, whatever the number of layers: one cooperative launch, or the
  // three kernels, with 2 more in training for the member of 2 iterations.
  double w_bytes = 0;
  for (const Member &m : ms) w_bytes += double(numel_of(m.shape)) * double(sn_dtype_size(m.dt));
  const bool coop = group_is_cooperative(w_bytes);
  EXPECT_EQ(kernels.training.size(), coop ? 1u : 5u);
  EXPECT_EQ(kernels.eval.size(), coop ? 1u : 3u);
}

// Launches (graph nodes) of a grouped forward, training or eval.
struct Nodes {
  size_t training, eval;
};

// A group of `ms` created under SPECNORM_TUNE tune_a and the same group under tune_b (each after
// whatever SPECNORM_TUNE already says): the same states, scales and W_sn, bit for bit, eager and
// replayed from a CUDA graph, whose node counts are checked.
static void expect_groups_bitwise(const std::vector<Member> &ms, const std::string &tune_a, Nodes nodes_a,
                                  const std::string &tune_b, Nodes nodes_b, Rng &rng) {
  SCOPED_TRACE(tune_a + " against " + tune_b);
  const size_t n_members = ms.size();
  const Gamma gamma;
  std::vector<std::unique_ptr<LayerPtr>> la, lb;
  std::vector<sn_layer_t *> pa, pb;
  std::vector<std::unique_ptr<Tensor>> tensors;  // every W and W_sn
  std::vector<void *> Wd, Oa, Ob;                 // their device pointers (NULL: scale only)
  auto tensor = [&](sn_dtype_t dt, int64_t n) {
    tensors.push_back(std::make_unique<Tensor>(dt, n));
    return tensors.back().get();
  };
  std::vector<Tensor *> ta, tb;
  for (size_t k = 0; k < n_members; ++k) {
    const Member &m = ms[k];
    const uint64_t s = rng.gen();
    la.push_back(member_layer(m, SN_BACKEND_CUDA, s, gamma.dev));
    lb.push_back(member_layer(m, SN_BACKEND_CUDA, s, gamma.dev));
    ASSERT_TRUE(la.back()->p && lb.back()->p) << k;
    pa.push_back(la.back()->p);
    pb.push_back(lb.back()->p);
    const int64_t n = numel_of(m.shape);
    Tensor *w = tensor(m.dt, n);
    w->set(rng.normals(n, 1.f / std::sqrt(float(m.shape[0]))));
    Wd.push_back(w->dev);
    ta.push_back(m.scale_only ? nullptr : tensor(m.dt, n));
    tb.push_back(m.scale_only ? nullptr : tensor(m.dt, n));
    Oa.push_back(ta.back() ? ta.back()->dev : nullptr);
    Ob.push_back(tb.back() ? tb.back()->dev : nullptr);
  }
  GroupPtr ga, gb;
  const std::string base = tune_prefix();
  ASSERT_EQ(create_group_tuned(ga, pa, Wd, Oa, base + tune_a), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(create_group_tuned(gb, pb, Wd, Ob, base + tune_b), SN_SUCCESS) << sn_last_error_message();
  auto expect_same = [&](const std::string &when) {
    SCOPED_TRACE(when);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    for (size_t k = 0; k < n_members; ++k) {
      SCOPED_TRACE("member " + std::to_string(k) + " " + shape_str(ms[k].shape));
      EXPECT_TRUE(same_state(get_state(pa[k]), get_state(pb[k])));
      float sa = 0, sb = 0;
      ASSERT_EQ(sn_layer_get_scale(pa[k], &sa, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_layer_get_scale(pb[k], &sb, nullptr), SN_SUCCESS);
      EXPECT_EQ(std::memcmp(&sa, &sb, 4), 0);
      if (ta[k]) {
        EXPECT_TRUE(ta[k]->download_bytes() == tb[k]->download_bytes());
      }
    }
  };
  for (int step = 0; step < 4; ++step) {
    const int training = step < 3;
    ASSERT_EQ(sn_group_forward(ga.p, training, nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_group_forward(gb.p, training, nullptr), SN_SUCCESS) << sn_last_error_message();
    expect_same("eager step " + std::to_string(step));
  }
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  for (int training : {1, 0}) {
    cudaGraph_t graph[2];
    cudaGraphExec_t exec[2];
    sn_group_t *gs[2] = {ga.p, gb.p};
    for (int q = 0; q < 2; ++q) {
      ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
      ASSERT_EQ(sn_group_forward(gs[q], training, s), SN_SUCCESS) << sn_last_error_message();
      ASSERT_EQ(cudaStreamEndCapture(s, &graph[q]), cudaSuccess);
      size_t nodes = 0;
      ASSERT_EQ(cudaGraphGetNodes(graph[q], nullptr, &nodes), cudaSuccess);
      const Nodes &want = q == 0 ? nodes_a : nodes_b;
      EXPECT_EQ(nodes, training ? want.training : want.eval) << (q == 0 ? tune_a : tune_b);
      ASSERT_EQ(cudaGraphInstantiate(&exec[q], graph[q], 0), cudaSuccess);
    }
    for (int rep = 0; rep < 2; ++rep)
      for (int q = 0; q < 2; ++q) ASSERT_EQ(cudaGraphLaunch(exec[q], s), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    expect_same(training ? "graph replays, training" : "graph replays, eval");
    for (int q = 0; q < 2; ++q) {
      cudaGraphExecDestroy(exec[q]);
      cudaGraphDestroy(graph[q]);
    }
  }
  cudaStreamDestroy(s);
}

// The members of every_kind_of_member up to 2M elements (3000 × 600 stays: several rows per warp).
static std::vector<Member> members_up_to(int64_t numel) {
  std::vector<Member> ms = every_kind_of_member();
  ms.erase(std::remove_if(ms.begin(), ms.end(), [&](const Member &m) { return numel_of(m.shape) > numel; }),
           ms.end());
  return ms;
}

// A group of `ms` in one cooperative launch of at most `grid` blocks (nullptr: as many as fit)
// against the same group in three kernels (3 launches, 2 more in training for the members of 2
// iterations).
static void expect_coop_equals_three_kernels(const std::vector<Member> &ms, const char *grid, Rng &rng) {
  expect_groups_bitwise(ms, "group_coop=0", {5, 3},
                        std::string("group_coop=1") + (grid ? std::string(",group_grid=") + grid : ""),
                        {1, 1}, rng);
}

// The cooperative grouped forward (one launch, grid-wide barriers between the steps) runs the
// very blocks of the three kernels. With as many blocks as fit, a block takes several rows blocks
// but at most one reduce block (the 2048 × 16384 member's shared memory allows one block per
// multiprocessor).
TEST(GroupGpu, CooperativeLaunchIsBitwiseTheThreeKernels) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  expect_coop_equals_three_kernels(every_kind_of_member(), nullptr, rng);
}

// The same on 1 and 7 blocks: every block takes several blocks of every step (reduce, counters and
// shared memory reused).
static void expect_coop_on_few_blocks_equals_three_kernels(const std::vector<Member> &ms) {
  SN_SEEDED_RNG();
  for (const char *grid : {"1", "7"}) expect_coop_equals_three_kernels(ms, grid, rng);
}

// Members up to 2M elements (3000 × 600 stays: several rows per warp).
TEST(GroupGpu, CooperativeLaunchOnFewBlocksIsBitwiseTheThreeKernels) {
  REQUIRE_GPU();
  expect_coop_on_few_blocks_equals_three_kernels(members_up_to(1 << 21));
}

// The same with every kind of member at a small size (121K elements in all, against 700K for the
// members up to 160K of every_kind_of_member), for racecheck (gpu_check.sh): the test above ran
// past 100 s under it alone, and one with those members past 27 s (H100, d5e109c and 4884391).
// Block per row (w > 1280: {96, 8, 4, 4} dim 1, {8, 2048}), warp per row for each K, several rows
// per warp ({3000, 8}), both orders, the 2-byte types, 2 iterations, scale only, a bound, γ;
// v-first members (the group iterates on Mᵀ) of dim −1 (its rows contiguous) and dim 0 (strided).
static std::vector<Member> small_members_of_every_kind() {
  return {
      {{128, 3, 3, 3}},       {{16, 32, 3, 3}},      {{128, 3, 1, 1}},
      {{1, 128}},             {{96, 8, 4, 4}, 1},    {{30, 517}, 1},
      {{8, 2048}, 0, SN_DTYPE_BFLOAT16},             {{13, 1000}, 0, SN_DTYPE_FLOAT16, 2},
      {{64, 100}, 0, SN_DTYPE_FLOAT32, 1, true},     {{200, 64}, 0, SN_DTYPE_FLOAT32, 1, false, 1.2f},
      {{77, 99}, 0, SN_DTYPE_FLOAT32, 1, false, 0.f, true},
      {{3000, 8}},            {{40, 24, 5}, 1, SN_DTYPE_BFLOAT16},
      v_first({{3, 3, 8, 32}, 3}), v_first({{20, 60}}),
  };
}

TEST(GroupGpu, CooperativeSmallGroupOnFewBlocksIsBitwiseTheThreeKernels) {
  REQUIRE_GPU();
  const std::vector<Member> ms = small_members_of_every_kind();
  int64_t numel = 0;
  for (const Member &m : ms) numel += numel_of(m.shape);
  ASSERT_LT(numel, 130000);
  expect_coop_on_few_blocks_equals_three_kernels(ms);
}

// A group of `shapes` (fp32) created under SPECNORM_TUNE `refused`, whose single launch the device
// refuses, against the same layers grouped under `plain`: eagerly the fallback runs at once, bit
// for bit, and stays; refused during a capture (a group whose layers warmed up on their own, so
// that the captured forward is its first), the forward fails with SN_ERROR_CUDA, naming `what`
// and saying to capture again. *eager, *captured: the kernels of a captured training forward of
// either group afterwards.
static void expect_refusal_falls_back(const std::vector<std::vector<int64_t>> &shapes, const std::string &plain,
                                      const std::string &refused, const char *what,
                                      std::vector<std::string> *eager, std::vector<std::string> *captured) {
  SCOPED_TRACE(refused + " against " + plain);
  SN_SEEDED_RNG();
  const std::string base = tune_prefix();
  std::vector<std::unique_ptr<LayerPtr>> la, lb;
  std::vector<std::unique_ptr<Tensor>> ts;
  std::vector<sn_layer_t *> pa, pb;
  std::vector<void *> W, Oa, Ob;
  for (size_t k = 0; k < shapes.size(); ++k) {
    sn_layer_desc_t d = make_desc(shapes[k], SN_BACKEND_CUDA);
    d.seed = k;
    la.push_back(std::make_unique<LayerPtr>(d));
    lb.push_back(std::make_unique<LayerPtr>(d));
    ASSERT_TRUE(la.back()->p && lb.back()->p);
    pa.push_back(la.back()->p);
    pb.push_back(lb.back()->p);
    const int64_t n = numel_of(shapes[k]);
    for (int q = 0; q < 3; ++q) ts.push_back(std::make_unique<Tensor>(SN_DTYPE_FLOAT32, n));
    ts[ts.size() - 3]->set(rng.normals(n));
    W.push_back(ts[ts.size() - 3]->dev);
    Oa.push_back(ts[ts.size() - 2]->dev);
    Ob.push_back(ts[ts.size() - 1]->dev);
  }
  GroupPtr ga, gb;
  ASSERT_EQ(create_group_tuned(ga, pa, W, Oa, base + plain), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(create_group_tuned(gb, pb, W, Ob, base + refused), SN_SUCCESS) << sn_last_error_message();
  for (int step = 0; step < 3; ++step) {
    const int training = step < 2;
    ASSERT_EQ(sn_group_forward(ga.p, training, nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_group_forward(gb.p, training, nullptr), SN_SUCCESS) << sn_last_error_message();
    CUDA_OK(cudaDeviceSynchronize());
    for (size_t k = 0; k < shapes.size(); ++k) {
      SCOPED_TRACE("step " + std::to_string(step) + ", layer " + shape_str(shapes[k]));
      EXPECT_TRUE(same_state(get_state(pa[k]), get_state(pb[k])));
      EXPECT_TRUE(ts[3 * k + 1]->download_bytes() == ts[3 * k + 2]->download_bytes());
    }
  }
  *eager = captured_kernels([&](cudaStream_t s) { return sn_group_forward(gb.p, 1, s); });

  std::vector<std::unique_ptr<LayerPtr>> lc;
  std::vector<sn_layer_t *> pc;
  for (size_t k = 0; k < shapes.size(); ++k) {
    lc.push_back(std::make_unique<LayerPtr>(make_desc(shapes[k], SN_BACKEND_CUDA)));
    ASSERT_TRUE(lc.back()->p);
    pc.push_back(lc.back()->p);
    ASSERT_EQ(sn_forward(pc.back(), W[k], Oa[k], 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  }
  GroupPtr gc;
  ASSERT_EQ(create_group_tuned(gc, pc, W, Oa, base + refused), SN_SUCCESS) << sn_last_error_message();
  const CaptureOutcome c = capture_outcome([&](cudaStream_t s) { return sn_group_forward(gc.p, 1, s); });
  EXPECT_EQ(c.status, SN_ERROR_CUDA) << "the refused launch was not reported during the capture";
  EXPECT_NE(c.message.find(what), std::string::npos) << c.message;
  EXPECT_NE(c.message.find("capture"), std::string::npos) << c.message;
  *captured = captured_kernels([&](cudaStream_t s) { return sn_group_forward(gc.p, 1, s); });
}

// A cooperative launch that the device refuses (group_grid_force: more blocks than can be
// resident) runs as the three kernels instead. The refusal is assumed to be
// cudaErrorCooperativeLaunchTooLarge: if it is not, the eager forward fails with the error CUDA
// returned.
TEST(GroupGpu, RefusedCooperativeLaunchFallsBackToThreeKernels) {
  REQUIRE_GPU();
  if (!cooperative_launch_here()) GTEST_SKIP() << "no cooperative launch on this device";
  std::vector<std::string> eager, captured;
  expect_refusal_falls_back({{64, 3, 3, 3}, {128, 64, 3, 3}, {300, 517}, {1, 128}}, "group_coop=0",
                            "group_coop=1,group_grid_force=1000000", "cooperative", &eager, &captured);
  EXPECT_EQ(eager.size(), 3u);
  EXPECT_EQ(captured.size(), 3u);
}

// Without SPECNORM_TUNE's group_coop, a group runs as one cooperative launch when its weights
// take at most 8 MiB, counted in bytes of each member's dtype: at the limit and one row above it,
// in bf16 (elements would count twice as many) and fp32 with a small bf16 member.
TEST(GroupGpu, DefaultLaunchFollowsTheWeightsBytes) {
  REQUIRE_GPU();
  const char *tune = std::getenv("SPECNORM_TUNE");
  if (tune && std::strstr(tune, "group_coop=")) GTEST_SKIP() << "SPECNORM_TUNE sets group_coop: " << tune;
  int dev = 0, coop = 0;
  CUDA_OK(cudaGetDevice(&dev));
  CUDA_OK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  struct M {
    std::vector<int64_t> shape;
    sn_dtype_t dt;
  };
  const struct {
    std::vector<M> ms;
    bool cooperative;
  } cases[] = {
      {{{{1024, 4096}, SN_DTYPE_BFLOAT16}}, true},                                  // 8 MiB
      {{{{1025, 4096}, SN_DTYPE_BFLOAT16}}, false},                                 // + 8 KiB
      {{{{512, 4096}, SN_DTYPE_FLOAT32}}, true},                                    // 8 MiB
      {{{{512, 4096}, SN_DTYPE_FLOAT32}, {{4, 4}, SN_DTYPE_BFLOAT16}}, false},      // + 32 bytes
  };
  SN_SEEDED_RNG();
  for (const auto &c : cases) {
    std::vector<std::unique_ptr<LayerPtr>> ls;
    std::vector<std::unique_ptr<Tensor>> ts;
    std::vector<sn_layer_t *> lp;
    std::vector<void *> W, O;
    for (const M &m : c.ms) {
      sn_layer_desc_t d = make_desc(m.shape, SN_BACKEND_CUDA);
      d.dtype = m.dt;
      ls.push_back(std::make_unique<LayerPtr>(d));
      ASSERT_TRUE(ls.back()->p) << sn_last_error_message();
      lp.push_back(ls.back()->p);
      const int64_t n = numel_of(m.shape);
      ts.push_back(std::make_unique<Tensor>(m.dt, n));
      ts.back()->set(rng.normals(n));
      W.push_back(ts.back()->dev);
      ts.push_back(std::make_unique<Tensor>(m.dt, n));
      O.push_back(ts.back()->dev);
    }
    SCOPED_TRACE(shape_str(c.ms[0].shape) + " dtype " + std::to_string(int(c.ms[0].dt)) + ", " +
                 std::to_string(c.ms.size()) + " member(s)");
    GroupPtr g;
    ASSERT_EQ(sn_group_create(&g.p, lp.data(), const_cast<const void *const *>(W.data()), O.data(),
                              int(lp.size())),
              SN_SUCCESS)
        << sn_last_error_message();
    ASSERT_EQ(sn_group_forward(g.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();  // the warm-up
    EXPECT_EQ(captured_nodes(g.p, 1), c.cooperative && coop ? 1u : 3u);
    CUDA_OK(cudaDeviceSynchronize());
  }
}

TEST(GroupGpu, DeterministicInOneOrThreeLaunches) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const std::vector<std::vector<int64_t>> shapes = {{64, 3, 3, 3}, {128, 64, 3, 3}, {256, 128, 3, 3},
                                                    {512, 256, 3, 3}, {1, 512}};
  std::vector<std::unique_ptr<LayerPtr>> a, b;
  std::vector<void *> W, Oa, Ob;
  std::vector<sn_layer_t *> la, lb;
  for (size_t k = 0; k < shapes.size(); ++k) {
    sn_layer_desc_t d = make_desc(shapes[k], SN_BACKEND_CUDA);
    d.seed = k;
    a.push_back(std::make_unique<LayerPtr>(d));
    b.push_back(std::make_unique<LayerPtr>(d));
    la.push_back(a.back()->p);
    lb.push_back(b.back()->p);
    const int64_t n = numel_of(shapes[k]);
    void *w, *x, *y;
    ASSERT_EQ(cudaMalloc(&w, n * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&x, n * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&y, n * 4), cudaSuccess);
    const std::vector<float> h = rng.normals(n);
    ASSERT_EQ(cudaMemcpy(w, h.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
    W.push_back(w);
    Oa.push_back(x);
    Ob.push_back(y);
  }
  GroupPtr ga, gb;
  ASSERT_EQ(sn_group_create(&ga.p, la.data(), const_cast<const void *const *>(W.data()), Oa.data(), 5), SN_SUCCESS);
  ASSERT_EQ(sn_group_create(&gb.p, lb.data(), const_cast<const void *const *>(W.data()), Ob.data(), 5), SN_SUCCESS);
  for (int step = 0; step < 3; ++step) {
    ASSERT_EQ(sn_group_forward(ga.p, 1, nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_group_forward(gb.p, 1, nullptr), SN_SUCCESS);
    for (size_t k = 0; k < shapes.size(); ++k) {
      EXPECT_TRUE(same_state(get_state(a[k]->p), get_state(b[k]->p)));
      const int64_t n = numel_of(shapes[k]);
      std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
      ASSERT_EQ(cudaMemcpy(x.data(), Oa[k], n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(y.data(), Ob[k], n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
      EXPECT_TRUE(bitwise_equal(x, y));
    }
  }
  double w_bytes = 0;
  for (const auto &sh : shapes) w_bytes += 4.0 * double(numel_of(sh));
  EXPECT_EQ(captured_nodes(ga.p, 1), group_is_cooperative(w_bytes) ? 1u : 3u);
  for (size_t k = 0; k < shapes.size(); ++k) {
    cudaFree(W[k]);
    cudaFree(Oa[k]);
    cudaFree(Ob[k]);
  }
}

// The restart from ones after a zero step (test_health.cpp, ZeroStepRecoversFromOnes), for a
// group created under SPECNORM_TUNE `tune`; *kernels: those of its captured training forward.
// The layers of the degenerate-step checks: M of 40 × w for w = 24 and 1300 (both bodies of the
// rows kernel: a warp per row and a block per row), fp32, with device W and W_sn. v-first: W in
// Keras' layout, (w, 40) with dim −1, so that W holds Mᵀ row-major (the group's M_e = Mᵀ, its rows
// contiguous: 24 and 1300 rows of 40, a warp per row, on chip where it fits).
struct StepLayers {
  const int64_t h = 40;
  const std::vector<int64_t> widths = {24, 1300};
  sn_order_t order = SN_ORDER_U_FIRST;
  std::vector<std::unique_ptr<LayerPtr>> ls;
  std::vector<std::unique_ptr<Tensor>> W, O;
  std::vector<sn_layer_t *> layers;
  std::vector<void *> Wd, Od;
  // A layer with weight W as stored: M (40 × w) row-major, or Mᵀ row-major for v-first.
  void add(const std::vector<float> &Wh, int64_t w) {
    const bool v = order == SN_ORDER_V_FIRST;
    sn_layer_desc_t d = v ? make_desc({w, h}, SN_BACKEND_CUDA, 1) : make_desc({h, w}, SN_BACKEND_CUDA);
    d.order = order;
    ls.push_back(std::make_unique<LayerPtr>(d));
    layers.push_back(ls.back()->p);
    W.push_back(std::make_unique<Tensor>(SN_DTYPE_FLOAT32, h * w));
    O.push_back(std::make_unique<Tensor>(SN_DTYPE_FLOAT32, h * w));
    W.back()->set(Wh);
    Wd.push_back(W.back()->dev);
    Od.push_back(O.back()->dev);
  }
};

// v-first: the first product is Mᵀ u, so u = e_0 with Mᵀ e_0 = 0 gives σ = 0, and the restart's
// ones go to u (a group running Mᵀ must put them in its M_e's v, the layer's u).
static void zero_step_restarts(const std::string &tune, sn_order_t order, Rng &rng,
                               std::vector<std::string> *kernels) {
  SCOPED_TRACE("SPECNORM_TUNE " + tune + (order == SN_ORDER_V_FIRST ? ", v-first" : ""));
  StepLayers set;
  set.order = order;
  const int64_t h = set.h;
  const std::vector<int64_t> &widths = set.widths;
  const std::vector<sn_layer_t *> &layers = set.layers;
  std::vector<double> sigma;
  for (int64_t w : widths) {
    std::vector<float> e0;
    double sig = 0;
    // W as stored: v-first's is Mᵀ (w × 40) with Mᵀ e_0 = 0, u-first's M with M e_0 = 0: σ = 0.
    set.add(order == SN_ORDER_V_FIRST ? rank1_nulling_e0(rng, w, h, &e0, &sig)
                                      : rank1_nulling_e0(rng, h, w, &e0, &sig),
            w);
    ASSERT_TRUE(layers.back());
    const std::vector<float> u = order == SN_ORDER_V_FIRST ? e0 : rng.normals(h);
    const std::vector<float> v = order == SN_ORDER_V_FIRST ? rng.normals(w) : e0;
    ASSERT_EQ(sn_layer_set_state(layers.back(), u.data(), v.data(), 0.f, 1, nullptr), SN_SUCCESS);
    sigma.push_back(sig);
  }
  const std::vector<std::unique_ptr<Tensor>> &O = set.O;
  GroupPtr g;
  ASSERT_EQ(create_group_tuned(g, layers, set.Wd, set.Od, tune_prefix() + tune), SN_SUCCESS) << sn_last_error_message();
  std::vector<State> before;
  for (sn_layer_t *l : layers) before.push_back(get_state(l));
  ASSERT_EQ(sn_group_forward(g.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  for (size_t k = 0; k < layers.size(); ++k) {
    SCOPED_TRACE("w = " + std::to_string(widths[k]));
    const State after = get_state(layers[k]);
    EXPECT_EQ(after.sigma, 0.f);
    EXPECT_TRUE(bitwise_equal(after.u, before[k].u) && bitwise_equal(after.v, before[k].v))
        << "u and v are committed only with a usable σ";
    uint32_t health = 0;
    ASSERT_EQ(sn_layer_get_health(layers[k], &health, 0, nullptr), SN_SUCCESS);
    EXPECT_EQ(health, uint32_t(SN_HEALTH_ZERO));
    for (float x : O[k]->download_floats()) ASSERT_EQ(x, 0.f) << "no σ yet: W · 0";
  }
  // The next training forward starts from ones: σ of the rank-1 M in one iteration.
  ASSERT_EQ(sn_group_forward(g.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  for (size_t k = 0; k < layers.size(); ++k) {
    SCOPED_TRACE("w = " + std::to_string(widths[k]));
    EXPECT_NEAR(get_state(layers[k]).sigma / sigma[k], 1.0, 1e-5);
    uint32_t health = 0;
    ASSERT_EQ(sn_layer_get_health(layers[k], &health, 0, nullptr), SN_SUCCESS);
    EXPECT_EQ(health, uint32_t(SN_HEALTH_ZERO | SN_HEALTH_RECOVERED));
  }
  *kernels = captured_kernels([&](cudaStream_t s) { return sn_group_forward(g.p, 1, s); });
}

static void expect_zero_step_restarts(const std::string &tune, Rng &rng, std::vector<std::string> *kernels) {
  zero_step_restarts(tune, SN_ORDER_U_FIRST, rng, kernels);
}

static void expect_zero_step_restarts_v_first(const std::string &tune, Rng &rng, std::vector<std::string> *kernels) {
  zero_step_restarts(tune, SN_ORDER_V_FIRST, rng, kernels);
}

// A non-finite weight after a good step (test_health.cpp's rule): the state is kept bit for bit,
// the health word says SN_HEALTH_NONFINITE, W_sn = W / the last good σ (NaN where W is); the other
// layer of the group goes on. Training, then eval. For a group created under SPECNORM_TUNE `tune`;
// *kernels: those of its captured training forward.
static void expect_nonfinite_step_keeps_state(const std::string &tune, Rng &rng, std::vector<std::string> *kernels) {
  SCOPED_TRACE("SPECNORM_TUNE " + tune);
  StepLayers set;
  for (int64_t w : set.widths) {
    set.add(rng.normals(set.h * w, 1.f / std::sqrt(float(set.h))), w);
    ASSERT_TRUE(set.layers.back());
  }
  const std::vector<sn_layer_t *> &layers = set.layers;
  const std::vector<std::unique_ptr<Tensor>> &W = set.W, &O = set.O;
  GroupPtr g;
  ASSERT_EQ(create_group_tuned(g, layers, set.Wd, set.Od, tune_prefix() + tune), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_group_forward(g.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  const State good = get_state(layers[0]);
  ASSERT_TRUE(good.sigma > 0.f && std::isfinite(good.sigma));
  std::vector<float> w0 = W[0]->host_floats();
  w0[5] = std::nanf("");
  W[0]->set(w0);
  for (int training : {1, 0}) {
    SCOPED_TRACE(training ? "training" : "eval");
    O[0]->poison();
    ASSERT_EQ(sn_group_forward(g.p, training, nullptr), SN_SUCCESS) << sn_last_error_message();
    EXPECT_TRUE(same_state(get_state(layers[0]), good));
    uint32_t health = 0;
    ASSERT_EQ(sn_layer_get_health(layers[0], &health, 0, nullptr), SN_SUCCESS);
    EXPECT_TRUE(health & SN_HEALTH_NONFINITE) << health;
    const std::vector<float> out = O[0]->download_floats();
    for (size_t q = 0; q < out.size(); ++q) {
      if (q == 5) {
        EXPECT_TRUE(std::isnan(out[q]));
      } else {
        const float want = w0[q] / good.sigma;
        ASSERT_EQ(std::memcmp(&out[q], &want, 4), 0) << q << ": " << out[q] << " against " << want;
      }
    }
    const State other = get_state(layers[1]);
    EXPECT_TRUE(other.sigma > 0.f && std::isfinite(other.sigma));
    ASSERT_EQ(sn_layer_get_health(layers[1], &health, 0, nullptr), SN_SUCCESS);
    EXPECT_EQ(health, 0u);
  }
  *kernels = captured_kernels([&](cudaStream_t s) { return sn_group_forward(g.p, 1, s); });
}

// An eval forward neither takes a pending restart from ones nor asks for one (test_health.cpp,
// EvalForwardNeitherTakesNorAsksARestart), in a group: each member held to a CPU layer given the
// same states and weights. (A mutation of either rule in the group kernels went unseen.)
static void expect_eval_neither_takes_nor_asks_restart(const std::string &tune, Rng &rng,
                                                       std::vector<std::string> *kernels) {
  SCOPED_TRACE("SPECNORM_TUNE " + tune + ", eval forwards and the restart");
  StepLayers set;
  const int64_t h = set.h;
  std::vector<std::vector<float>> M, G, u0, e0;
  std::vector<std::unique_ptr<LayerPtr>> cpu;
  for (int64_t w : set.widths) {
    std::vector<float> e;
    double sig = 0;
    M.push_back(rank1_nulling_e0(rng, h, w, &e, &sig));  // M e₀ = 0
    set.add(M.back(), w);
    ASSERT_TRUE(set.layers.back());
    e0.push_back(e);
    // u₀ and G's column 0 positive: the eval σ uᵀ G e₀ is a sum of positive terms, so float and
    // double agree to a few roundings (a sum near 0 would part them by far more than 1e-5).
    std::vector<float> u = rng.normals(h), Gk = gapped_matrix(rng, h, w);
    for (int64_t i = 0; i < h; ++i) {
      u[size_t(i)] = std::fabs(u[size_t(i)]) + 0.5f;
      Gk[size_t(i * w)] = std::fabs(Gk[size_t(i * w)]) + 0.1f;
    }
    u0.push_back(u);
    G.push_back(Gk);
    cpu.push_back(std::make_unique<LayerPtr>(make_desc({h, w}, SN_BACKEND_CPU)));
  }
  const std::vector<sn_layer_t *> &layers = set.layers;
  GroupPtr g;
  ASSERT_EQ(create_group_tuned(g, layers, set.Wd, set.Od, tune_prefix() + tune), SN_SUCCESS) << sn_last_error_message();
  auto set_states = [&](float sigma) {
    for (size_t k = 0; k < layers.size(); ++k)
      for (sn_layer_t *l : {layers[k], cpu[k]->p})
        ASSERT_EQ(sn_layer_set_state(l, u0[k].data(), e0[k].data(), sigma, 1, nullptr), SN_SUCCESS);
  };
  // A group forward, and each CPU layer's on the same W: state and health bits (read, cleared)
  // alike; the CPU's bits are `want`.
  auto step = [&](int training, uint32_t want, const char *what) {
    SCOPED_TRACE(what);
    ASSERT_EQ(sn_group_forward(g.p, training, nullptr), SN_SUCCESS) << sn_last_error_message();
    for (size_t k = 0; k < layers.size(); ++k) {
      SCOPED_TRACE("w = " + std::to_string(set.widths[k]));
      const std::vector<float> W = set.W[k]->host_floats();
      std::vector<float> out(W.size());
      ASSERT_EQ(sn_forward(cpu[k]->p, W.data(), out.data(), training, nullptr), SN_SUCCESS);
      uint32_t hg = 0, hc = 0;
      ASSERT_EQ(sn_layer_get_health(layers[k], &hg, 1, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_layer_get_health(cpu[k]->p, &hc, 1, nullptr), SN_SUCCESS);
      EXPECT_EQ(hc, want);
      EXPECT_EQ(hg, hc);
      const State sg = get_state(layers[k]), sc = get_state(cpu[k]->p);
      EXPECT_NEAR(sg.sigma, sc.sigma, 1e-5 * std::fabs(sc.sigma));
      EXPECT_LT(max_abs_diff(sg.u, sc.u), 2e-5);
      EXPECT_LT(max_abs_diff(sg.v, sc.v), 2e-5);
    }
  };
  // A zero training step leaves a restart pending; an eval forward on another W then takes
  // σ = uᵀ M v from the stored v = e₀ (usable: positive terms), not from ones.
  ASSERT_NO_FATAL_FAILURE(set_states(0.f));
  ASSERT_NO_FATAL_FAILURE(step(1, SN_HEALTH_ZERO, "a zero training step"));
  for (size_t k = 0; k < layers.size(); ++k) set.W[k]->set(G[k]);
  ASSERT_NO_FATAL_FAILURE(step(0, 0u, "an eval forward with a restart pending"));
  // An eval σ of 0 asks for no restart: the training forward after it is a zero step again, from
  // the stored v, with no SN_HEALTH_RECOVERED.
  for (size_t k = 0; k < layers.size(); ++k) set.W[k]->set(M[k]);
  ASSERT_NO_FATAL_FAILURE(set_states(1.f));
  ASSERT_NO_FATAL_FAILURE(step(0, SN_HEALTH_ZERO, "an eval σ of 0"));
  ASSERT_NO_FATAL_FAILURE(step(1, SN_HEALTH_ZERO, "the training forward after it"));
  for (size_t k = 0; k < layers.size(); ++k) EXPECT_TRUE(bitwise_equal(get_state(layers[k]).v, e0[k]));
  *kernels = captured_kernels([&](cudaStream_t s) { return sn_group_forward(g.p, 1, s); });
}

// In both bodies of the rows kernel: a warp per row (w = 24) and a block per row (w = 1300).
TEST(GroupGpu, DegenerateStepsKeepTheRules) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  for (auto *check : {expect_zero_step_restarts, expect_zero_step_restarts_v_first, expect_nonfinite_step_keeps_state,
                      expect_eval_neither_takes_nor_asks_restart}) {
    std::vector<std::string> kernels;
    check("group_onchip=0", rng, &kernels);  // not on chip, which has its own test below
    EXPECT_FALSE(any_matches(kernels, "group_on_chip_kernel")) << (kernels.empty() ? "?" : kernels[0]);
  }
}

TEST(GroupGpu, UnsupportedMembersAreRefused) {
  REQUIRE_GPU();
  sn_layer_desc_t dv = make_desc({20000, 2}, SN_BACKEND_CUDA);
  dv.order = SN_ORDER_V_FIRST;  // h > 16384: a group reads its columns as rows
  LayerPtr vfirst(dv), oned(make_desc({8}, SN_BACKEND_CUDA)), wide(make_desc({2, 20000}, SN_BACKEND_CUDA)),
      cpu(make_desc({8, 8}, SN_BACKEND_CPU)), ok(make_desc({8, 8}, SN_BACKEND_CUDA));
  void *w = nullptr;
  ASSERT_EQ(cudaMalloc(&w, 40000 * 4), cudaSuccess);
  const void *W[2] = {w, w};
  sn_group_t *g = nullptr;
  for (sn_layer_t *bad : {vfirst.p, oned.p, wide.p}) {
    sn_layer_t *layers[2] = {ok.p, bad};
    EXPECT_EQ(sn_group_create(&g, layers, W, nullptr, 2), SN_ERROR_NOT_SUPPORTED);
    EXPECT_EQ(g, nullptr);
  }
  sn_layer_t *mixed[2] = {ok.p, cpu.p};
  EXPECT_EQ(sn_group_create(&g, mixed, W, nullptr, 2), SN_ERROR_INVALID_BACKEND);
  cudaFree(w);
}

// A grouped forward whose later member's buffers are no longer device memory (freed after
// sn_group_create) fails before any member's warm-up runs: the earlier member, not yet warmed
// up, keeps its state (u, v, σ and the warm-up flag), and nothing is launched. Both when the later
// member still has its own warm-up to run (its W freed) and when it is warmed up already (its
// W_sn freed: only the grouped kernels would have touched it).
TEST(GroupGpu, BadLaterBuffersFailBeforeAnyWarmUp) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  for (int later_warm : {0, 1}) {
    SCOPED_TRACE(later_warm ? "later member warmed up, its W_sn freed" : "later member cold, its W freed");
    sn_layer_desc_t da = make_desc({48, 40}, SN_BACKEND_CUDA);
    da.warmup_iterations = 15;  // a warm-up to run (the default's too)
    LayerPtr a(da), b(make_desc({30, 20}, SN_BACKEND_CUDA));
    ASSERT_TRUE(a.p && b.p) << sn_last_error_message();
    Tensor Wa(SN_DTYPE_FLOAT32, 48 * 40), Sa(SN_DTYPE_FLOAT32, 48 * 40);
    Wa.set(rng.normals(48 * 40));
    // 2 MiB each (the layer uses the first 2,400 bytes), so that each is its own mapping and
    // cudaFree unmaps it: a small allocation freed may sit in a block the driver keeps, where the
    // pointer check could still find device memory.
    constexpr size_t kOwnMapping = size_t{2} << 20;
    void *wb = nullptr, *sb = nullptr;
    ASSERT_EQ(cudaMalloc(&wb, kOwnMapping), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&sb, kOwnMapping), cudaSuccess);
    const std::vector<float> wb_host = rng.normals(30 * 20);
    ASSERT_EQ(cudaMemcpy(wb, wb_host.data(), 30 * 20 * 4, cudaMemcpyHostToDevice), cudaSuccess);
    if (later_warm) {
      ASSERT_EQ(sn_layer_warmup(b, wb, nullptr), SN_SUCCESS) << sn_last_error_message();
    }
    sn_layer_t *layers[2] = {a.p, b.p};
    const void *W[2] = {Wa.dev, wb};
    void *W_sn[2] = {Sa.dev, sb};
    sn_group_t *g = nullptr;
    ASSERT_EQ(sn_group_create(&g, layers, W, W_sn, 2), SN_SUCCESS) << sn_last_error_message();
    const State before = get_state(a);
    ASSERT_EQ(before.warmed, 0);
    ASSERT_EQ(cudaFree(later_warm ? sb : wb), cudaSuccess);
    EXPECT_EQ(sn_group_forward(g, 1, nullptr), SN_ERROR_INVALID_POINTER);
    const std::string msg = sn_last_error_message();
    EXPECT_NE(msg.find(later_warm ? "W_sn[1]" : "W[1]"), std::string::npos) << msg;
    EXPECT_TRUE(same_state(get_state(a), before));
    sn_paths_t p;
    EXPECT_EQ(sn_group_get_paths(g, &p), SN_SUCCESS);
    EXPECT_EQ(p.train, SN_PATH_NONE) << "a failed grouped forward recorded " << sn_path_name(p.train);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    sn_group_destroy(g);
    cudaFree(later_warm ? wb : sb);
  }
}

// ---- every layer on chip, one launch (cuda/on_chip.cu; SPECNORM_TUNE=group_onchip=1) ----

static const char *const kOnChipKernel = "group_on_chip_kernel";

// Members of a group held on chip (rows contiguous, w <= 4096): SN-GAN's shapes and odd ones
// (1 × 1, 1 × 4096, N × 1, w not a multiple of 4 or 32, so that the 2-byte types' rows start off
// 16 bytes; rows of 2 to 32 elements, which take 1 to 32 lanes per row in t = M v), every dtype,
// 1 to 3 iterations, scale only, in place, a norm bound, γ, W off 16 bytes
// (with W_sn at another alignment: the division by elements; at the same: 16 bytes between the
// ends). The largest (128 × 1152 fp32, 590 KB) needs clusters.
static std::vector<Member> on_chip_members() {
  std::vector<Member> ms = {
      {{128, 3, 3, 3}},
      {{128, 128, 3, 3}},
      {{128, 3, 1, 1}},
      {{128, 128, 1, 1}},
      {{1, 128}},
      {{1, 1}},
      {{1, 4096}},
      {{97, 1}},
      {{3, 5}, 0, SN_DTYPE_FLOAT16},
      {{33, 65}, 0, SN_DTYPE_BFLOAT16, 3},
      {{37, 61}, 0, SN_DTYPE_FLOAT16, 2, false, 0.f, false, true},
      {{130, 1000}, 0, SN_DTYPE_BFLOAT16, 2},
      {{64, 100}, 0, SN_DTYPE_FLOAT32, 1, true},
      {{200, 64}, 0, SN_DTYPE_FLOAT32, 1, false, 1.2f},
      {{77, 99}, 0, SN_DTYPE_FLOAT32, 1, false, 0.f, true},
      {{1000, 3}},
      {{100, 300}, 0, SN_DTYPE_FLOAT32, 1, false, 0.f, false, true},
      {{40, 32}},
      {{70, 16}, 0, SN_DTYPE_BFLOAT16},
      {{9, 8}, 0, SN_DTYPE_FLOAT16, 2},
      {{300, 2}},
      {{33, 17}, 0, SN_DTYPE_FLOAT32, 1, false, 0.f, true},
  };
  Member off32{{50, 77}}, off16{{45, 70}, 0, SN_DTYPE_BFLOAT16, 2};
  off32.w_off = 1;  // W at 4 bytes past 16, W_sn aligned: W_sn by elements
  off16.w_off = 3;  // W and W_sn both at 6 bytes past 16: 16-byte accesses between the ends
  off16.o_off = 3;
  ms.push_back(off32);
  ms.push_back(off16);
  ms.push_back(with_add_eps({{60, 90}}));
  ms.push_back(with_add_eps({{30, 17}, 0, SN_DTYPE_FLOAT16, 2}));
  return ms;
}

// The members of at most 64 KB each (on chip with any cluster size on an H100 or A100).
static std::vector<Member> small_on_chip_members() {
  std::vector<Member> ms = on_chip_members();
  ms.erase(std::remove_if(ms.begin(), ms.end(),
                          [](const Member &m) { return numel_of(m.shape) * sn_dtype_size(m.dt) > 65536; }),
           ms.end());
  return ms;
}

// How a group of `ms` is put on chip on this device (cluster 0: it is not), clusters of
// `cluster` blocks only if > 0: what sn_group_create decides under group_onchip=1.
static sn_on_chip_t on_chip_plan(const std::vector<Member> &ms, int cluster) {
  std::vector<OnChipLayer> ls;
  for (const Member &m : ms) ls.push_back({m.shape, m.dim, m.dt, m.order});
  return on_chip_plan_of(ls, cluster, 0);
}

// Members in the v-first order (a group runs each as the u-first iteration on its Mᵀ, M_e, a view
// of the same W: sn_group_view): Keras', Flax's and Haiku's kernels with dim −1, whose columns,
// M_e's rows, are contiguous (a view with A = 1: a warp per row and, at 1500 columns of M_e, a
// block per row; on chip where it fits); PyTorch's legacy layout, dim 0, whose M_e is a view with
// B = 1 and A > 1, read with a stride (a warp and a block per row; never on chip); 2 iterations,
// fp16 and bf16, scale only, a norm bound, γ, Flax's and Haiku's eps, in place, misaligned; beside
// two u-first members.
static std::vector<Member> v_first_members() {
  return {
      v_first({{3, 3, 3, 128}, 3}),                     // a Keras conv kernel: M_e 27 × 128
      v_first({{3, 3, 128, 128}, 3}),                   // M_e 1152 × 128
      v_first({{128, 1}, 1}),                           // a Keras dense kernel (in, out): M_e 128 × 1
      v_first({{2000, 24}, 1, SN_DTYPE_BFLOAT16}),      // M_e 2000 × 24
      v_first({{24, 1500}, 1}),                         // M_e 24 × 1500: a block per row
      v_first({{64, 100}}),                             // legacy: M_e 100 × 64, strided
      v_first({{1500, 40}}),                            // legacy: M_e 40 × 1500, a block per row
      v_first({{130, 200}, 1, SN_DTYPE_FLOAT16, 2}),    // 2 iterations
      v_first({{64, 100}, 1, SN_DTYPE_FLOAT32, 1, true}),               // scale only
      v_first({{200, 64}, 1, SN_DTYPE_FLOAT32, 1, false, 1.2f}),        // a norm bound
      v_first({{77, 99}, 1, SN_DTYPE_FLOAT32, 1, false, 0.f, true}),    // γ
      v_first(with_add_eps({{50, 70}, 1})),                              // N(x) = x / sqrt(‖x‖² + eps)
      v_first({{3, 3, 16, 24}, 3, SN_DTYPE_FLOAT32, 1, false, 0.f, false, true}),  // W_sn = W
      v_first({{40, 36}, 1, SN_DTYPE_FLOAT32, 1, false, 0.f, false, false, 1, 3}),  // misaligned
      {{128, 128, 3, 3}},
      {{300, 517}, 1},
  };
}

// Whether the group's kernels read member m's M_e by contiguous rows (its view has A = 1).
static bool rows_contiguous(const Member &m) {
  const int nd = int(m.shape.size());
  sn_view_t vw = sn_ref_view(nd, m.shape.data(), m.dim < 0 ? m.dim + nd : m.dim);
  EXPECT_EQ(sn_group_view(vw, m.order, &vw), 1);
  return vw.A == 1;
}

// The forward is one launch of the on-chip kernel, in training and eval.
static void expect_on_chip(const Captured &k) {
  EXPECT_EQ(k.training.size(), 1u);
  EXPECT_EQ(k.eval.size(), 1u);
  EXPECT_TRUE(any_matches(k.training, kOnChipKernel)) << (k.training.empty() ? "?" : k.training[0]);
  EXPECT_TRUE(any_matches(k.eval, kOnChipKernel)) << (k.eval.empty() ? "?" : k.eval[0]);
}

// On a device with clusters and 227 KB of shared memory per block (an H100 or H200), SN-GAN's
// layers fit clusters of 8: the path must not be declined there.
static bool expect_sngan_on_chip_here() {
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
    return false;
  return sn_cuda_clusters_usable() && optin >= 227 * 1024;
}

TEST(GroupGpu, OnChipMatchesCpuLayersStepByStep) {
  REQUIRE_GPU();
  const std::vector<Member> ms = on_chip_members();
  const sn_on_chip_t oc = on_chip_plan(ms, 0);
  if (expect_sngan_on_chip_here()) {
    EXPECT_EQ(oc.cluster, 8) << "SN-GAN's 590 KB layer takes clusters of 8 (74 KB of rows per block)";
  }
  if (oc.cluster == 0) GTEST_SKIP() << "this device's shared memory does not hold these layers on chip";
  SN_SEEDED_RNG();
  expect_on_chip(expect_group_matches_cpu(ms, "group_onchip=1", rng));
}

// A group with v-first members equals CPU layers step by step, as three kernels, one cooperative
// launch and by default; not on chip while a member's M_e rows are strided; on chip, where the
// device has it, once they are all contiguous (Keras', Flax's and Haiku's layout).
TEST(GroupGpu, VFirstMembersMatchCpuLayersStepByStep) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const std::vector<Member> ms = v_first_members();
  for (const char *tune : {"", "group_coop=0", "group_coop=1", "group_onchip=1"}) {
    const Captured k = expect_group_matches_cpu(ms, tune, rng);
    EXPECT_FALSE(any_matches(k.training, kOnChipKernel)) << "on chip with strided members";
    // The kernels each setting names (the default and group_onchip=1: the device's choice).
    const sn_path_t took = sntest::path_of_kernels(k.training, false);
    if (std::string(tune) == "group_coop=0") {
      EXPECT_EQ(took, SN_PATH_ONE_PASS_ROWS) << sn_path_name(took);
    } else if (std::string(tune) == "group_coop=1") {
      EXPECT_EQ(took, SN_PATH_ONE_PASS_COOP) << sn_path_name(took);
    } else {
      EXPECT_TRUE(took == SN_PATH_ONE_PASS_ROWS || took == SN_PATH_ONE_PASS_COOP) << sn_path_name(took);
    }
  }
  std::vector<Member> contiguous;
  for (const Member &m : ms)
    if (rows_contiguous(m)) contiguous.push_back(m);
  ASSERT_GE(contiguous.size(), 8u);
  if (on_chip_plan(contiguous, 0).cluster == 0) {
    if (expect_sngan_on_chip_here()) ADD_FAILURE() << "these layers fit on chip on an H100 or H200";
    return;  // not on chip on this device: the part above ran
  }
  expect_on_chip(expect_group_matches_cpu(contiguous, "group_onchip=1", rng));
  // One strided member (PyTorch's legacy layout: a v-first layer with dim 0, whose Mᵀ's rows, the
  // rows the group takes, are W's columns) keeps the group off chip.
  std::vector<Member> one_strided = contiguous;
  one_strided.push_back(v_first({{64, 100}}));
  EXPECT_EQ(on_chip_plan(one_strided, 0).cluster, 0);
  const Captured k = expect_group_matches_cpu(one_strided, "group_onchip=1", rng);
  EXPECT_FALSE(any_matches(k.training, kOnChipKernel)) << "on chip with a strided member";
}

// Without SPECNORM_TUNE, a group whose layers all fit on chip runs there on a device with clusters
// (an H100 or H200), in one launch, with the CPU's results; elsewhere (an A100) it does not.
TEST(GroupGpu, DefaultRunsGroupsThatFitOnChip) {
  REQUIRE_GPU();
  const char *tune = std::getenv("SPECNORM_TUNE");
  if (tune && std::strstr(tune, "group_")) GTEST_SKIP() << "SPECNORM_TUNE sets a group_ key: " << tune;
  std::vector<Member> ms = on_chip_members();
  if (on_chip_plan(ms, 0).cluster == 0) ms = small_on_chip_members();
  SN_SEEDED_RNG();
  const Captured k = expect_group_matches_cpu(ms, "", rng);
  if (sn_cuda_clusters_usable() && on_chip_plan(ms, 0).cluster > 0) {
    expect_on_chip(k);
  } else {
    EXPECT_FALSE(any_matches(k.training, kOnChipKernel)) << (k.training.empty() ? "?" : k.training[0]);
  }
  if (expect_sngan_on_chip_here()) {
    EXPECT_TRUE(any_matches(k.training, kOnChipKernel)) << "SN-GAN's layers fit on chip on this device";
  }
}

// Blocks of 512 threads (SPECNORM_TUNE=onchip_threads=512): the CPU's results, one launch of that
// instance, and the degenerate steps' rules (a narrow layer of 24 columns takes 16 row groups).
TEST(GroupGpu, OnChipWith512ThreadsMatchesCpu) {
  REQUIRE_GPU();
  std::vector<Member> ms = on_chip_members();
  bool degenerate_fit = false;
  {  // the plans of 512-thread blocks (their shared memory holds a float more per thread)
    ScopedEnv env("SPECNORM_TUNE", (tune_prefix() + "onchip_threads=512").c_str());
    if (on_chip_plan(ms, 0).cluster == 0) ms = small_on_chip_members();
    if (on_chip_plan(ms, 0).cluster == 0) GTEST_SKIP() << "this device's shared memory does not hold these layers on chip";
    degenerate_fit = on_chip_plan({{{40, 24}}, {{40, 1300}}}, 0).cluster > 0;
  }
  SN_SEEDED_RNG();
  const std::string tune = "group_onchip=1,onchip_threads=512";
  const Captured k = expect_group_matches_cpu(ms, tune, rng);
  expect_on_chip(k);
  EXPECT_TRUE(any_matches(k.training, "group_on_chip_kernel<512>")) << (k.training.empty() ? "?" : k.training[0]);
  EXPECT_TRUE(any_matches(k.eval, "group_on_chip_kernel<512>")) << (k.eval.empty() ? "?" : k.eval[0]);
  if (!degenerate_fit) return;
  for (auto *check : {expect_zero_step_restarts, expect_nonfinite_step_keeps_state, expect_eval_neither_takes_nor_asks_restart}) {
    std::vector<std::string> kernels;
    check(tune, rng, &kernels);
    EXPECT_TRUE(any_matches(kernels, "group_on_chip_kernel<512>")) << (kernels.empty() ? "?" : kernels[0]);
  }
}

// Every cluster size the device runs, on layers that fit one block: the same results as the CPU,
// one launch each.
TEST(GroupGpu, OnChipAnyClusterSizeMatchesCpu) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  const std::vector<Member> ms = small_on_chip_members();
  int ran = 0;
  for (int c : {1, 2, 4, 8}) {
    SCOPED_TRACE("clusters of " + std::to_string(c));
    const sn_on_chip_t oc = on_chip_plan(ms, c);
    if (expect_sngan_on_chip_here()) {
      EXPECT_EQ(oc.cluster, c);
    }
    if (oc.cluster != c) continue;  // no clusters (c > 1), or too little shared memory
    expect_on_chip(expect_group_matches_cpu(ms, "group_onchip=1,group_onchip_cluster=" + std::to_string(c), rng));
    ran += 1;
  }
  if (ran == 0) GTEST_SKIP() << "this device's shared memory does not hold these layers on chip";
}

// Bitwise reproducible: two groups of the same layers and weights, eager and replayed from graphs
// (group_coop=0: had the on-chip launch been declined, the three kernels' launches would show).
TEST(GroupGpu, OnChipIsDeterministic) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  std::vector<Member> ms = on_chip_members();
  if (on_chip_plan(ms, 0).cluster == 0) ms = small_on_chip_members();
  if (on_chip_plan(ms, 0).cluster == 0) GTEST_SKIP() << "this device's shared memory does not hold these layers on chip";
  const std::string tune = "group_onchip=1,group_coop=0";
  expect_groups_bitwise(ms, tune, {1, 1}, tune, {1, 1}, rng);
}

// The degenerate steps on chip: the zero step and the restart from ones, a non-finite weight (the
// 40 × 1300 layer takes 230 KB on one block: clusters only).
TEST(GroupGpu, OnChipDegenerateStepsKeepTheRules) {
  REQUIRE_GPU();
  if (on_chip_plan({{{40, 24}}, {{40, 1300}}}, 0).cluster == 0 ||
      on_chip_plan({v_first({{24, 40}, 1}), v_first({{1300, 40}, 1})}, 0).cluster == 0)
    GTEST_SKIP() << "this device's shared memory does not hold these layers on chip";
  SN_SEEDED_RNG();
  for (auto *check : {expect_zero_step_restarts, expect_zero_step_restarts_v_first, expect_nonfinite_step_keeps_state,
                      expect_eval_neither_takes_nor_asks_restart}) {
    std::vector<std::string> kernels;
    check("group_onchip=1", rng, &kernels);
    EXPECT_TRUE(any_matches(kernels, kOnChipKernel)) << (kernels.empty() ? "?" : kernels[0]);
  }
}

// Groups with a layer that cannot be on chip keep the other paths, whole: a view with A > 1
// (dim 1), w > 4096, a layer larger than a cluster's shared memory (16 MB).
TEST(GroupGpu, OnChipLeavesGroupsThatDoNotFit) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  for (const Member &odd : {Member{{40, 24, 5}, 1}, Member{{8, 5000}}, Member{{2048, 2048}}}) {
    SCOPED_TRACE("with " + shape_str(odd.shape));
    std::vector<Member> ms = {{{128, 3, 3, 3}}, {{1, 128}}};
    ms.push_back(odd);
    EXPECT_EQ(on_chip_plan(ms, 0).cluster, 0);
    const Captured k = expect_group_matches_cpu(ms, "group_onchip=1", rng);
    EXPECT_FALSE(k.training.empty());
    EXPECT_FALSE(any_matches(k.training, kOnChipKernel)) << k.training[0];
    EXPECT_FALSE(any_matches(k.eval, kOnChipKernel));
  }
}

// A refused on-chip launch (onchip_refuse=1: clusters of 16, not allowed; assumed refused with
// cudaErrorInvalidClusterSize, as the CUDA documentation says of an invalid cluster size) drops
// to the default path for good: bit for bit a group created without the on-chip launch.
TEST(GroupGpu, RefusedOnChipLaunchFallsBack) {
  REQUIRE_GPU();
  if (!sn_cuda_clusters_usable()) GTEST_SKIP() << "no thread-block clusters here: nothing to refuse";
  const std::vector<Member> ms = {{{128, 3, 3, 3}}, {{128, 128, 3, 3}}, {{300, 517}}, {{1, 128}}};
  if (on_chip_plan(ms, 0).cluster == 0) GTEST_SKIP() << "this device's shared memory does not hold these layers on chip";
  std::vector<std::vector<int64_t>> shapes;
  for (const Member &m : ms) shapes.push_back(m.shape);
  std::vector<std::string> eager, captured;
  expect_refusal_falls_back(shapes, "group_onchip=0", "group_onchip=1,onchip_refuse=1", "on-chip", &eager, &captured);
  for (const auto *k : {&eager, &captured}) {
    EXPECT_FALSE(k->empty());
    EXPECT_FALSE(any_matches(*k, kOnChipKernel)) << (*k)[0];
  }
}

// ---- The grouped backward (sn_group_set_gradients, sn_group_backward) -----------------------

namespace {

// n random elements of dt (normals of standard deviation sd), as the type's bytes.
std::vector<uint8_t> random_typed(Rng &rng, sn_dtype_t dt, int64_t n, float sd = 1.f) {
  std::vector<uint8_t> out(size_t(n) * sn_dtype_size(dt));
  const std::vector<float> x = rng.normals(n, sd);
  for (int64_t k = 0; k < n; ++k) sn_store(out.data(), dt, k, x[size_t(k)]);
  return out;
}

const unsigned kBackwardFlags[] = {0u, SN_BACKWARD_ACCUMULATE, SN_BACKWARD_DETACH_SIGMA,
                                   SN_BACKWARD_ACCUMULATE | SN_BACKWARD_DETACH_SIGMA};

}  // namespace

// On the CPU backend the grouped backward is each layer's sn_backward, its reference: the same
// bits for every flag, with ∂L/∂γ where bound, mixed dtypes and views, γ, a norm bound and a
// member whose dW is its G.
TEST(GroupCpu, BackwardEqualsTheLayersOneByOne) {
  SN_SEEDED_RNG();
  const std::vector<Member> ms = {
      {{16, 3, 3, 3}},
      {{8, 16, 3, 3}, 1},
      {{1, 8}},
      {{5, 7}, 0, SN_DTYPE_BFLOAT16, 1, false, 0.f, true},
      {{6, 4}, 0, SN_DTYPE_FLOAT16, 1, false, 1.5f},
      {{9, 10}},  // dW is G
      v_first({{3, 3, 4, 6}, 3}),
  };
  const size_t n_members = ms.size(), in_place = 5;
  const float gamma = 0.8f;
  std::vector<std::unique_ptr<LayerPtr>> grouped, alone;
  std::vector<std::vector<uint8_t>> W, Wsn_g, Wsn_a, G_g, G_a, dW_g, dW_a;
  std::vector<float> dgam_g(n_members, -1.f), dgam_a(n_members, -1.f);
  std::vector<sn_layer_t *> layers;
  std::vector<const void *> wp, gp;
  std::vector<void *> op, dp;
  std::vector<float *> dgp;
  for (size_t k = 0; k < n_members; ++k) {
    const uint64_t s = rng.gen();
    grouped.push_back(member_layer(ms[k], SN_BACKEND_CPU, s, &gamma));
    alone.push_back(member_layer(ms[k], SN_BACKEND_CPU, s, &gamma));
    ASSERT_TRUE(grouped.back()->p && alone.back()->p) << k;
    const int64_t n = numel_of(ms[k].shape);
    W.push_back(random_typed(rng, ms[k].dt, n, 1.f / std::sqrt(float(ms[k].shape[0]))));
    for (auto *v : {&Wsn_g, &Wsn_a, &G_g, &G_a, &dW_g, &dW_a}) v->emplace_back(W.back().size());
  }
  for (size_t k = 0; k < n_members; ++k) {
    layers.push_back(grouped[k]->p);
    wp.push_back(W[k].data());
    op.push_back(Wsn_g[k].data());
    gp.push_back(G_g[k].data());
    dp.push_back(k == in_place ? G_g[k].data() : dW_g[k].data());
    dgp.push_back(k % 3 == 0 || ms[k].gamma ? &dgam_g[k] : nullptr);
  }
  GroupPtr g;
  ASSERT_EQ(sn_group_create(&g.p, layers.data(), wp.data(), op.data(), int(n_members)), SN_SUCCESS)
      << sn_last_error_message();
  ASSERT_EQ(sn_group_set_gradients(g.p, gp.data(), dp.data(), dgp.data()), SN_SUCCESS) << sn_last_error_message();
  for (unsigned flags : kBackwardFlags) {
    SCOPED_TRACE("flags " + std::to_string(flags));
    ASSERT_EQ(sn_group_forward(g.p, 1, nullptr), SN_SUCCESS);
    for (size_t k = 0; k < n_members; ++k) {
      ASSERT_EQ(sn_forward(alone[k]->p, W[k].data(), Wsn_a[k].data(), 1, nullptr), SN_SUCCESS);
      // Into the bound buffers (their addresses stay).
      const std::vector<uint8_t> g0 = random_typed(rng, ms[k].dt, numel_of(ms[k].shape));
      const std::vector<uint8_t> d0 = random_typed(rng, ms[k].dt, numel_of(ms[k].shape));
      for (auto *v : {&G_g[k], &G_a[k]}) std::copy(g0.begin(), g0.end(), v->begin());
      for (auto *v : {&dW_g[k], &dW_a[k]}) std::copy(d0.begin(), d0.end(), v->begin());
    }
    ASSERT_EQ(sn_group_backward(g.p, flags, nullptr), SN_SUCCESS) << sn_last_error_message();
    for (size_t k = 0; k < n_members; ++k) {
      SCOPED_TRACE("member " + std::to_string(k) + " " + shape_str(ms[k].shape));
      void *out = k == in_place ? G_a[k].data() : dW_a[k].data();
      ASSERT_EQ(sn_backward(alone[k]->p, W[k].data(), G_a[k].data(), out, flags, dgp[k] ? &dgam_a[k] : nullptr,
                            nullptr),
                SN_SUCCESS);
      EXPECT_TRUE((k == in_place ? G_g[k] == G_a[k] : dW_g[k] == dW_a[k]));
      EXPECT_EQ(std::memcmp(&dgam_g[k], &dgam_a[k], 4), 0) << dgam_g[k] << " against " << dgam_a[k];
    }
  }
}

// A member's γ binding is read while the other members' W_sn, dW and ∂L/∂γ are written (at once,
// on either backend): a γ inside another member's W_sn fails sn_group_create, inside its dW or
// as its dgamma fails sn_group_set_gradients (nothing is bound); with each γ elsewhere the group
// is made, bound and run.
TEST(GroupCpu, GammaLiesOutsideWhatOtherMembersWrite) {
  SN_SEEDED_RNG();
  const std::vector<int64_t> shape = {6, 5};
  const size_t n = size_t(numel_of(shape));
  std::vector<float> W0 = rng.normals(n), W1 = rng.normals(n), out0(n), out1(n), G0 = rng.normals(n),
                     G1 = rng.normals(n), dW0(n), dW1(n);
  float gamma0 = 0.8f, gamma1 = 1.25f, dg0 = 0.f, dg1 = 0.f;
  LayerPtr l0(make_desc(shape, SN_BACKEND_CPU)), l1(make_desc(shape, SN_BACKEND_CPU));
  ASSERT_TRUE(l0.p && l1.p);
  ASSERT_EQ(sn_layer_set_gamma(l0, &gamma0), SN_SUCCESS);
  std::vector<sn_layer_t *> layers = {l0.p, l1.p};
  std::vector<const void *> wp = {W0.data(), W1.data()};
  std::vector<void *> op = {out0.data(), out1.data()};
  // Layer 1's γ inside layer 0's W_sn.
  ASSERT_EQ(sn_layer_set_gamma(l1, &out0[3]), SN_SUCCESS);
  GroupPtr g;
  EXPECT_EQ(sn_group_create(&g.p, layers.data(), wp.data(), op.data(), 2), SN_ERROR_INVALID_VALUE);
  EXPECT_EQ(g.p, nullptr);
  EXPECT_NE(std::string(sn_last_error_message()).find("layers[1]'s gamma"), std::string::npos)
      << sn_last_error_message();
  // Elsewhere: the group is made; then γ₁ inside dW[0], or γ₁ as dgamma[0], fail the binding.
  ASSERT_EQ(sn_layer_set_gamma(l1, &gamma1), SN_SUCCESS);
  ASSERT_EQ(sn_group_create(&g.p, layers.data(), wp.data(), op.data(), 2), SN_SUCCESS) << sn_last_error_message();
  std::vector<const void *> gp = {G0.data(), G1.data()};
  std::vector<void *> bad_dW = {dW0.data(), dW1.data()};
  std::vector<float> big(n + 1);
  GroupPtr g2;
  {  // a group whose γ₁ is inside a buffer then bound as dW[0]
    ASSERT_EQ(sn_layer_set_gamma(l1, &big[2]), SN_SUCCESS);
    ASSERT_EQ(sn_group_create(&g2.p, layers.data(), wp.data(), op.data(), 2), SN_SUCCESS) << sn_last_error_message();
    std::vector<void *> dp = {big.data(), dW1.data()};
    EXPECT_EQ(sn_group_set_gradients(g2.p, gp.data(), dp.data(), nullptr), SN_ERROR_INVALID_VALUE);
    EXPECT_NE(std::string(sn_last_error_message()).find("lies inside dW[0]"), std::string::npos)
        << sn_last_error_message();
    ASSERT_EQ(sn_layer_set_gamma(l1, &gamma1), SN_SUCCESS);
  }
  std::vector<float *> dgp = {&gamma1, &dg1};  // dgamma[0] is layers[1]'s γ
  EXPECT_EQ(sn_group_set_gradients(g.p, gp.data(), bad_dW.data(), dgp.data()), SN_ERROR_INVALID_VALUE);
  EXPECT_NE(std::string(sn_last_error_message()).find("is layers[1]'s gamma"), std::string::npos)
      << sn_last_error_message();
  EXPECT_EQ(sn_group_backward(g.p, 0, nullptr), SN_ERROR_INVALID_STATE) << "a failed binding bound";
  dgp = {&dg0, &dg1};
  ASSERT_EQ(sn_group_set_gradients(g.p, gp.data(), bad_dW.data(), dgp.data()), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_group_forward(g.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_group_backward(g.p, 0, nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_NE(dg0, 0.f);
  EXPECT_NE(dg1, 0.f);
}

// A CPU group spreads its small members over threads (each member wholly on one, tasks of
// sn_ref_run_tasks) and runs a member as large as two grains on its own threads: the group's
// layers, made with 4 threads (SPECNORM_CPU_THREADS), give the bits of the same layers made with
// 1 and called one by one: states and W_sn through warm-up, training and eval forwards, dW and
// ∂L/∂γ through every backward flag. The grouped calls must start threads, the lone ones none.
TEST(GroupCpu, ThreadedGroupIsBitwiseTheLayersOneByOne) {
  SN_SEEDED_RNG();
  const ScopedGrain grain;  // kTestGrain, 2^17: the member of 300000 elements splits
  const std::vector<Member> ms = {
      {{128, 128, 3, 3}},
      {{128, 3, 3, 3}},
      {{600, 500}},  // 300000 elements: splits over its own threads
      {{128, 128, 3, 3}, 0, SN_DTYPE_BFLOAT16, 2},
      {{1, 128}},
      {{96, 48, 4, 4}, 1},
      v_first({{3, 3, 64, 96}, 3}),
      {{128, 128, 3, 3}, 0, SN_DTYPE_FLOAT16, 1, false, 1.5f, true},
      with_add_eps({{50, 70}}),
      {{128, 128, 3, 3}},
  };
  const size_t n_members = ms.size();
  const float gamma = 0.8f;
  std::vector<std::unique_ptr<LayerPtr>> grouped, alone;
  std::vector<std::vector<uint8_t>> W, Wsn_g, Wsn_a, G, dW_g, dW_a;
  std::vector<float> dgam_g(n_members, -1.f), dgam_a(n_members, -1.f);
  std::vector<sn_layer_t *> layers;
  std::vector<const void *> wp, gp;
  std::vector<void *> op, dp;
  std::vector<float *> dgp;
  for (size_t k = 0; k < n_members; ++k) {
    const uint64_t s = rng.gen();
    {
      ScopedEnv env("SPECNORM_CPU_THREADS", "4");
      grouped.push_back(member_layer(ms[k], SN_BACKEND_CPU, s, &gamma));
    }
    {
      ScopedEnv env("SPECNORM_CPU_THREADS", "1");
      alone.push_back(member_layer(ms[k], SN_BACKEND_CPU, s, &gamma));
    }
    ASSERT_TRUE(grouped.back()->p && alone.back()->p) << k;
    const int64_t n = numel_of(ms[k].shape);
    W.push_back(random_typed(rng, ms[k].dt, n, 1.f / std::sqrt(float(ms[k].shape[0]))));
    G.push_back(random_typed(rng, ms[k].dt, n));
    for (auto *v : {&Wsn_g, &Wsn_a, &dW_g, &dW_a}) v->emplace_back(W.back().size());
  }
  for (size_t k = 0; k < n_members; ++k) {
    layers.push_back(grouped[k]->p);
    wp.push_back(W[k].data());
    op.push_back(Wsn_g[k].data());
    gp.push_back(G[k].data());
    dp.push_back(dW_g[k].data());
    dgp.push_back(k % 2 == 0 ? &dgam_g[k] : nullptr);
  }
  GroupPtr g;
  ASSERT_EQ(sn_group_create(&g.p, layers.data(), wp.data(), op.data(), int(n_members)), SN_SUCCESS)
      << sn_last_error_message();
  ASSERT_EQ(sn_group_set_gradients(g.p, gp.data(), dp.data(), dgp.data()), SN_SUCCESS) << sn_last_error_message();
  int64_t started_grouped = 0, started_alone = 0;
  auto forward_both = [&](int training) {
    int64_t t0 = sn_ref_threads_started();
    ASSERT_EQ(sn_group_forward(g.p, training, nullptr), SN_SUCCESS) << sn_last_error_message();
    started_grouped += sn_ref_threads_started() - t0;
    t0 = sn_ref_threads_started();
    for (size_t k = 0; k < n_members; ++k)
      ASSERT_EQ(sn_forward(alone[k]->p, W[k].data(), Wsn_a[k].data(), training, nullptr), SN_SUCCESS);
    started_alone += sn_ref_threads_started() - t0;
    for (size_t k = 0; k < n_members; ++k) {
      SCOPED_TRACE("member " + std::to_string(k) + " " + shape_str(ms[k].shape));
      EXPECT_TRUE(same_state(get_state(grouped[k]->p), get_state(alone[k]->p)));
      EXPECT_TRUE(Wsn_g[k] == Wsn_a[k]);
    }
  };
  for (int training : {1, 1, 0}) {
    SCOPED_TRACE("training " + std::to_string(training));
    forward_both(training);
  }
  for (unsigned flags : kBackwardFlags) {
    SCOPED_TRACE("flags " + std::to_string(flags));
    forward_both(1);
    for (size_t k = 0; k < n_members; ++k) {
      const std::vector<uint8_t> d0 = random_typed(rng, ms[k].dt, numel_of(ms[k].shape));
      for (auto *v : {&dW_g[k], &dW_a[k]}) std::copy(d0.begin(), d0.end(), v->begin());
    }
    int64_t t0 = sn_ref_threads_started();
    ASSERT_EQ(sn_group_backward(g.p, flags, nullptr), SN_SUCCESS) << sn_last_error_message();
    started_grouped += sn_ref_threads_started() - t0;
    t0 = sn_ref_threads_started();
    for (size_t k = 0; k < n_members; ++k)
      ASSERT_EQ(sn_backward(alone[k]->p, W[k].data(), G[k].data(), dW_a[k].data(), flags,
                            dgp[k] ? &dgam_a[k] : nullptr, nullptr),
                SN_SUCCESS);
    started_alone += sn_ref_threads_started() - t0;
    for (size_t k = 0; k < n_members; ++k) {
      SCOPED_TRACE("member " + std::to_string(k) + " " + shape_str(ms[k].shape));
      EXPECT_TRUE(dW_g[k] == dW_a[k]);
      EXPECT_EQ(std::memcmp(&dgam_g[k], &dgam_a[k], 4), 0) << dgam_g[k] << " against " << dgam_a[k];
    }
  }
  // 8 calls, each with tasks to split (several members below two grains) and a member above.
  EXPECT_GE(started_grouped, 8) << "the grouped calls did not split";
  EXPECT_EQ(started_alone, 0) << "layers of one thread started others";
  EXPECT_FALSE(Wsn_g[0] == std::vector<uint8_t>(Wsn_g[0].size())) << "nothing was written";
}

// Every argument error of the grouped backward, with the buffer it names; a binding that fails
// leaves the one before in place, and a refused backward writes nothing.
TEST(GroupCpu, BackwardBadArguments) {
  LayerPtr a(make_desc({4, 5}, SN_BACKEND_CPU)), b(make_desc({3, 3}, SN_BACKEND_CPU));
  std::vector<float> buf(1000, 1.f);
  float *W0 = buf.data(), *W1 = W0 + 20, *G0 = W0 + 100, *G1 = W0 + 200, *D0 = W0 + 300, *D1 = W0 + 400;
  sn_layer_t *layers[2] = {a.p, b.p};
  const void *W[2] = {W0, W1};
  GroupPtr g;
  ASSERT_EQ(sn_group_create(&g.p, layers, W, nullptr, 2), SN_SUCCESS);
  const void *G[2] = {G0, G1};
  void *dW[2] = {D0, D1};
  auto expect_refused = [&](sn_status_t got, sn_status_t want, const char *word) {
    EXPECT_EQ(got, want) << sn_last_error_message();
    EXPECT_NE(std::string(sn_last_error_message()).find(word), std::string::npos) << sn_last_error_message();
  };
  expect_refused(sn_group_backward(g.p, 0, nullptr), SN_ERROR_INVALID_STATE, "sn_group_set_gradients");
  EXPECT_EQ(sn_group_set_gradients(nullptr, G, dW, nullptr), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_group_set_gradients(g.p, nullptr, dW, nullptr), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_group_set_gradients(g.p, G, nullptr, nullptr), SN_ERROR_NULL_POINTER);
  const void *G_null[2] = {G0, nullptr};
  expect_refused(sn_group_set_gradients(g.p, G_null, dW, nullptr), SN_ERROR_NULL_POINTER, "G[1]");
  void *dW_null[2] = {nullptr, D1};
  expect_refused(sn_group_set_gradients(g.p, G, dW_null, nullptr), SN_ERROR_NULL_POINTER, "dW[0]");
  const struct {
    void *d0, *d1;
    const char *word;
  } overlaps[] = {
      {G0 + 1, D1, "dW[0]"},   // its own G, shifted
      {W0 + 2, D1, "dW[0]"},   // its own W, shifted
      {D0, W0 + 5, "W[0]"},    // layer 1's dW over layer 0's W
      {D0, G0 + 19, "G[0]"},   // ... over layer 0's G (its last element)
      {D0, D0 + 10, "dW[0]"},  // each other
      {W1, D1, "W[1]"},        // layer 0's dW is layer 1's W
  };
  for (const auto &c : overlaps) {
    void *d[2] = {c.d0, c.d1};
    expect_refused(sn_group_set_gradients(g.p, G, d, nullptr), SN_ERROR_INVALID_VALUE, c.word);
  }
  float slots[2];
  const struct {
    float *g0, *g1;
    const char *word;
  } dgammas[] = {
      {slots, slots, "dgamma[0] and dgamma[1]"},  // one float for both
      {nullptr, G1 + 3, "G[1]"},                  // inside a G (its own layer's)
      {D0 + 19, slots, "dW[0]"},                  // inside its own layer's dW
      {W1, nullptr, "W[1]"},
  };
  for (const auto &c : dgammas) {
    float *dg[2] = {c.g0, c.g1};
    expect_refused(sn_group_set_gradients(g.p, G, dW, dg), SN_ERROR_INVALID_VALUE, c.word);
  }
  // A γ binding changed since the group's creation is refused at binding time too.
  const float g_other = 3.f;
  ASSERT_EQ(sn_layer_set_gamma(a, &g_other), SN_SUCCESS);
  expect_refused(sn_group_set_gradients(g.p, G, dW, nullptr), SN_ERROR_INVALID_STATE, "layers[0]");
  ASSERT_EQ(sn_layer_set_gamma(a, nullptr), SN_SUCCESS);
  // In place (dW is G, or W) is allowed; then a failed binding keeps it.
  void *in_place[2] = {G0, W1};
  ASSERT_EQ(sn_group_set_gradients(g.p, G, in_place, nullptr), SN_SUCCESS) << sn_last_error_message();
  void *bad[2] = {G0 + 1, D1};
  EXPECT_EQ(sn_group_set_gradients(g.p, G, bad, nullptr), SN_ERROR_INVALID_VALUE);
  expect_refused(sn_group_backward(g.p, 0, nullptr), SN_ERROR_INVALID_STATE, "layers[0]");  // no forward yet
  ASSERT_EQ(sn_forward_scale_only(a, W0, 1, nullptr), SN_SUCCESS);
  expect_refused(sn_group_backward(g.p, 0, nullptr), SN_ERROR_INVALID_STATE, "layers[1]");
  ASSERT_EQ(sn_group_forward(g.p, 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(sn_group_backward(g.p, 4u, nullptr), SN_ERROR_INVALID_VALUE);
  EXPECT_EQ(sn_group_backward(nullptr, 0, nullptr), SN_ERROR_NULL_POINTER);
  const std::vector<float> before = buf;
  const float g2 = 2.f;
  ASSERT_EQ(sn_layer_set_gamma(b, &g2), SN_SUCCESS);
  expect_refused(sn_group_backward(g.p, 0, nullptr), SN_ERROR_INVALID_STATE, "layers[1]");
  EXPECT_TRUE(bitwise_equal(buf, before)) << "a refused backward wrote";
  ASSERT_EQ(sn_layer_set_gamma(b, nullptr), SN_SUCCESS);
  // The binding in place is the in-place one: G0 and W1 are written, D0 and D1 are not.
  ASSERT_EQ(sn_group_backward(g.p, 0, nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_NE(std::memcmp(G0, before.data() + 100, 20 * 4), 0);
  EXPECT_NE(std::memcmp(W1, before.data() + 20, 9 * 4), 0);
  EXPECT_EQ(std::memcmp(D0, before.data() + 300, 200 * 4), 0);
}

// A grouped backward's test bench on the GPU: CUDA layers of `ms` (and CPU twins), warmed up by
// two grouped training forwards; for each layer a G, an accumulation target and, for some, a
// ∂L/∂γ slot, in the group's own buffers and in a second set for the layer's own sn_backward.
// Members k % 4 == 1 have G and dW misaligned (the element loops), k % 4 == 3 have dW = G, and
// k % 3 == 0 or with γ get a ∂L/∂γ.
struct BackwardRig {
  std::vector<Member> ms;
  Gamma gamma;
  std::vector<std::unique_ptr<LayerPtr>> gl, cl;
  std::vector<std::unique_ptr<Tensor>> tensors;
  std::vector<Tensor *> Wt, Gg, Ga, Dg, Da;  // Dg, Da: nullptr where dW is G
  std::vector<void *> Wd, Od, gdw;
  std::vector<const void *> gG;
  std::vector<sn_layer_t *> layers;
  std::vector<std::vector<uint8_t>> Gh, D0;
  float *dgam = nullptr;  // [0, n): the group's ∂L/∂γ, [n, 2n): each layer's own
  std::vector<float *> gdg;
  GroupPtr g;
  bool ok = false;

  // The layers are created with SPECNORM_TUNE `layer_tune` appended: by default their own backward
  // as two kernels (a suite-wide op_onchip=1 would put some on chip, and op_onchip_grid=1|2 or the
  // default for large v-first layers on the grid, where the group's bits are not theirs).
  BackwardRig(const std::vector<Member> &members, Rng &rng,
              const std::string &layer_tune = "op_onchip=0,op_onchip_grid=0")
      : ms(members) {
    const size_t n_members = ms.size();
    if (cudaMalloc(&dgam, 2 * n_members * sizeof(float)) != cudaSuccess) return;
    const std::string knobs = tune_prefix() + layer_tune;
    ScopedEnv env("SPECNORM_TUNE", knobs.empty() ? nullptr : knobs.c_str());
    for (size_t k = 0; k < n_members; ++k) {
      const Member &m = ms[k];
      const uint64_t s = rng.gen();
      gl.push_back(member_layer(m, SN_BACKEND_CUDA, s, gamma.dev));
      cl.push_back(member_layer(m, SN_BACKEND_CPU, s, &gamma.host));
      if (!gl.back()->p || !cl.back()->p) return;
      layers.push_back(gl.back()->p);
      const int64_t n = numel_of(m.shape);
      Wt.push_back(tensor(m.dt, n));
      Wt.back()->set(rng.normals(n, 1.f / std::sqrt(float(m.shape[0]))));
      Wd.push_back(Wt.back()->dev);
      Od.push_back(m.scale_only ? nullptr : m.in_place ? Wd.back() : tensor(m.dt, n)->dev);
      const int off = k % 4 == 1 ? 1 : 0;
      const bool dw_is_g = k % 4 == 3;
      Gg.push_back(tensor(m.dt, n, off));
      Ga.push_back(tensor(m.dt, n, off));
      Dg.push_back(dw_is_g ? nullptr : tensor(m.dt, n, off));
      Da.push_back(dw_is_g ? nullptr : tensor(m.dt, n, off));
      gG.push_back(Gg.back()->dev);
      gdw.push_back(dw_is_g ? Gg.back()->dev : Dg.back()->dev);
      gdg.push_back(k % 3 == 0 || m.gamma ? dgam + k : nullptr);
      Gh.push_back(random_typed(rng, m.dt, n));
      D0.push_back(random_typed(rng, m.dt, n));
    }
    if (sn_group_create(&g.p, layers.data(), const_cast<const void *const *>(Wd.data()), Od.data(),
                        int(n_members)) != SN_SUCCESS)
      return;
    ok = sn_group_forward(g.p, 1, nullptr) == SN_SUCCESS && sn_group_forward(g.p, 1, nullptr) == SN_SUCCESS;
  }
  ~BackwardRig() { cudaFree(dgam); }
  BackwardRig(const BackwardRig &) = delete;
  BackwardRig &operator=(const BackwardRig &) = delete;

  Tensor *tensor(sn_dtype_t dt, int64_t n, int off = 0) {
    tensors.push_back(std::make_unique<Tensor>(dt, n, off));
    return tensors.back().get();
  }
  // Bind the gradients with SPECNORM_TUNE `tune` appended (the binding reads group_coop then).
  sn_status_t bind(const std::string &tune, bool with_dgamma = true) {
    const std::string knobs = tune_prefix() + tune;
    ScopedEnv env("SPECNORM_TUNE", knobs.empty() ? nullptr : knobs.c_str());
    return sn_group_set_gradients(g.p, gG.data(), gdw.data(), with_dgamma ? gdg.data() : nullptr);
  }
  // G and the accumulation targets as drawn, in both sets; every ∂L/∂γ slot NaN.
  void reset() {
    for (size_t k = 0; k < ms.size(); ++k) {
      for (Tensor *t : {Gg[k], Ga[k]}) EXPECT_EQ(cudaMemcpy(t->dev, Gh[k].data(), Gh[k].size(), cudaMemcpyHostToDevice), cudaSuccess);
      for (Tensor *t : {Dg[k], Da[k]}) {
        if (t) {
          EXPECT_EQ(cudaMemcpy(t->dev, D0[k].data(), D0[k].size(), cudaMemcpyHostToDevice), cudaSuccess);
        }
      }
    }
    EXPECT_EQ(cudaMemset(dgam, 0xFF, 2 * ms.size() * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // before work on other streams (graphs)
  }
  // Member k's dW as the group (group = true) or its own backward left it.
  std::vector<uint8_t> dW(size_t k, bool group) const {
    return (group ? (Dg[k] ? Dg[k] : Gg[k]) : (Da[k] ? Da[k] : Ga[k]))->download_bytes();
  }
  std::vector<float> dgammas() const {
    std::vector<float> out(2 * ms.size());
    EXPECT_EQ(cudaMemcpy(out.data(), dgam, out.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }
  // Member k's dW `got` (from flags 0) and ∂L/∂γ `dg` (where bound) against the CPU backend's, from
  // the GPU layer's state and the weight as the device holds it.
  void expect_near_cpu(size_t k, const std::vector<uint8_t> &got, float dg) {
    const State st = get_state(layers[k]);
    ASSERT_EQ(sn_layer_set_state(cl[k]->p, st.u.data(), st.v.data(), st.sigma, 1, nullptr), SN_SUCCESS);
    const std::vector<uint8_t> Wh = Wt[k]->download_bytes();
    std::vector<uint8_t> want = Gh[k];
    float dgc = 0.f;
    ASSERT_EQ(sn_backward(cl[k]->p, Wh.data(), Gh[k].data(), want.data(), 0, gdg[k] ? &dgc : nullptr,
                          nullptr),
              SN_SUCCESS);
    // To the rounding of the terms a·G and b·u vᵀ, not of their difference: a 1 × 1 weight is
    // its own rank-1 part, so its dW is ~0 (exactly 0 in the CPU's double, a few float ulps of
    // a·G on the GPU).
    const sn_dtype_t dt = ms[k].dt;
    const double d = ms[k].bound > 0 ? std::max(1.0, double(st.sigma) / ms[k].bound) : st.sigma;
    const double a = (ms[k].gamma ? gamma.host : 1.0) / d;
    double worst = 0, top = 0;
    for (int64_t q = 0; q < numel_of(ms[k].shape); ++q) {
      const double b = sn_load(want.data(), dt, q);
      worst = std::max(worst, std::fabs(sn_load(got.data(), dt, q) - b));
      top = std::max({top, std::fabs(b), a * std::fabs(sn_load(Gh[k].data(), dt, q))});
    }
    EXPECT_LE(worst, (dt == SN_DTYPE_FLOAT32 ? 1e-5 : 2 * ulp(dt)) * top) << "dW against the CPU";
    if (gdg[k]) {
      // ∂L/∂γ = ⟨G, W⟩ / d to the rounding of the sum: relative to Σ |G W| / d (⟨G, W⟩ itself
      // may cancel to near 0).
      double mag = 0;
      for (int64_t q = 0; q < numel_of(ms[k].shape); ++q)
        mag += std::fabs(double(sn_load(Gh[k].data(), dt, q)) * double(sn_load(Wh.data(), dt, q)));
      EXPECT_NEAR(dg, dgc, 1e-5 * mag / d);
    }
  }
  // Each layer's own sn_backward with `flags` into the second set of buffers (∂L/∂γ into the slots
  // [n, 2n) where `with_dgamma` and the member has one), then synchronized.
  void own_backward(unsigned flags, bool with_dgamma) {
    const size_t n = ms.size();
    for (size_t k = 0; k < n; ++k)
      ASSERT_EQ(sn_backward(layers[k], Wd[k], Ga[k]->dev, Da[k] ? Da[k]->dev : Ga[k]->dev, flags,
                            with_dgamma && gdg[k] ? dgam + n + k : nullptr, nullptr),
                SN_SUCCESS)
          << sn_last_error_message();
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  // The grouped backward with `flags` from reset buffers: every member's dW, then the ∂L/∂γ slots.
  std::vector<std::vector<uint8_t>> group_backward(unsigned flags) {
    reset();
    EXPECT_EQ(sn_group_backward(g.p, flags, nullptr), SN_SUCCESS) << sn_last_error_message();
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<std::vector<uint8_t>> out;
    for (size_t k = 0; k < ms.size(); ++k) out.push_back(dW(k, true));
    const std::vector<float> d = dgammas();
    out.emplace_back(reinterpret_cast<const uint8_t *>(d.data()),
                     reinterpret_cast<const uint8_t *>(d.data() + ms.size()));
    return out;
  }
};

// The grouped backward on the GPU gives each layer's sn_backward bit for bit (the same blocks and
// sums), for every flag, with ∂L/∂γ bound for some members and for none, G and dW misaligned for
// others (the element loops), and dW = G for others, as two kernels (the default) and, where the
// device has it, as one cooperative launch (group_coop=1);
// it equals the CPU backend within float rounding; and it is 2 launches (1 with σ detached and no
// ∂L/∂γ bound); replayed from a CUDA graph bit for bit.
// (Members up to 2M elements, and 1 × 1, N × 1, 1 × N, rows of a view with A > 1: views by rows and
// by elements, every dtype, several layers' blocks per kernel. Racecheck takes the small-member
// tests below.)
TEST(GroupGpu, BackwardIsBitwiseEachLayersBackward) {
  REQUIRE_GPU();
  SN_SEEDED_RNG();
  std::vector<Member> ms = members_up_to(2000000);
  for (const Member &odd : {Member{{1, 1}}, Member{{97, 1}}, Member{{1, 5000}, 0, SN_DTYPE_BFLOAT16},
                            Member{{6, 40, 33}, 1}, v_first(Member{{3, 3, 64, 32}, 3})})
    ms.push_back(odd);  // 1 × 1, N × 1, 1 × N, rows of 33 elements in a view of A = 6, v-first
  BackwardRig r(ms, rng);
  ASSERT_TRUE(r.ok) << sn_last_error_message();
  const size_t n_members = r.ms.size();
  struct Binding {
    const char *tune;
    bool dgamma;
  };
  std::vector<Binding> bindings = {{"", true}, {"", false}};
  if (cooperative_launch_here()) {
    bindings.push_back({"group_coop=1", true});
    bindings.push_back({"group_coop=1", false});
  }
  for (const Binding &bd : bindings) {
    SCOPED_TRACE(std::string("binding '") + bd.tune + (bd.dgamma ? "', with" : "', without") + " dgamma");
    ASSERT_EQ(r.bind(bd.tune, bd.dgamma), SN_SUCCESS) << sn_last_error_message();
    for (unsigned flags : kBackwardFlags) {
      SCOPED_TRACE("flags " + std::to_string(flags));
      const std::vector<std::vector<uint8_t>> got = r.group_backward(flags);
      ASSERT_NO_FATAL_FAILURE(r.own_backward(flags, bd.dgamma));
      const std::vector<float> dg = r.dgammas();
      for (size_t k = 0; k < n_members; ++k) {
        SCOPED_TRACE("member " + std::to_string(k) + " " + shape_str(r.ms[k].shape));
        EXPECT_TRUE(got[k] == r.dW(k, false)) << "dW differs from the layer's own backward";
        if (bd.dgamma && r.gdg[k]) {
          EXPECT_EQ(std::memcmp(&dg[k], &dg[n_members + k], 4), 0) << dg[k] << " against " << dg[n_members + k];
        }
        if (flags != 0 || &bd != &bindings[0]) continue;
        r.expect_near_cpu(k, got[k], dg[k]);
      }
    }
  }
  ASSERT_EQ(r.bind(""), SN_SUCCESS) << sn_last_error_message();
  const std::vector<std::vector<uint8_t>> eager0 = r.group_backward(0);  // for the graph replays
  double w_bytes = 0;
  for (const Member &m : r.ms) w_bytes += double(numel_of(m.shape)) * double(sn_dtype_size(m.dt));
  const size_t two = group_is_cooperative(w_bytes) ? 1u : 2u;
  EXPECT_EQ(captured_kernels([&](cudaStream_t s) { return sn_group_backward(r.g.p, 0, s); }).size(), two);
  EXPECT_EQ(captured_kernels([&](cudaStream_t s) { return sn_group_backward(r.g.p, SN_BACKWARD_DETACH_SIGMA, s); }).size(),
            two)
      << "∂L/∂γ bound: ⟨G, W⟩ still needed";
  // Graph replays of flags 0 give the eager bits.
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  ASSERT_EQ(sn_group_backward(r.g.p, 0, s), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int rep = 0; rep < 2; ++rep) {
    r.reset();
    ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    for (size_t k = 0; k < n_members; ++k) EXPECT_TRUE(r.dW(k, true) == eager0[k]) << "replay " << rep << ", member " << k;
    const std::vector<float> dg = r.dgammas();
    EXPECT_EQ(std::memcmp(dg.data(), eager0[n_members].data(), n_members * 4), 0) << "replay " << rep << ": dgamma";
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
  // A new binding without ∂L/∂γ: detached, no ⟨G, W⟩ at all, one launch.
  ASSERT_EQ(r.bind("", false), SN_SUCCESS) << sn_last_error_message();
  EXPECT_EQ(captured_kernels([&](cudaStream_t st) { return sn_group_backward(r.g.p, SN_BACKWARD_DETACH_SIGMA, st); }).size(),
            1u);
}

// A v-first member with dim −1 of 2²¹ elements and more, whose own calls run on the grid (the
// default on sm_90, kGridVFirstMinElems, cuda/forward.cu; on the emulator with
// SPECNORM_EMU_SMS=132): the group's backward runs it in its two kernels, with the sums of the
// two-kernel backward, and its own sn_backward runs it in one cooperative launch, with the grid's.
// Not the same bits (sn_group_backward says so), so the group's dW and ∂L/∂γ of that member, and
// its own, are each held to the CPU backend; the members beside it (not on the grid) keep their own
// backward's bits. The group is the two kernels even so.
TEST(GroupGpu, BackwardOfAMemberOnTheGridMatchesTheCpu) {
  REQUIRE_GPU();
  if (!cooperative_launch_here()) GTEST_SKIP() << "no cooperative launch on this device";
  SKIP_UNLESS_132_SMS();
  if (device_major() < 9) GTEST_SKIP() << "sm_" << device_major() << "x: the grid is the default on sm_90 and up only";
  const std::string suite_tune = tune_prefix();
  if (suite_tune.find("op_onchip_grid") != std::string::npos || suite_tune.find("onchip_refuse") != std::string::npos)
    GTEST_SKIP() << "SPECNORM_TUNE='" << suite_tune << "' sets the grid's path: this test is of the default";
  SN_SEEDED_RNG();
  // The layers with their default paths, but none on chip in a cluster (a suite-wide op_onchip=1
  // would put the small u-first member there, where the group's bits are not its own).
  BackwardRig r({v_first(Member{{2048, 1024}, 1}), Member{{64, 3, 3, 3}},
                 v_first(Member{{3, 3, 32, 64}, 3, SN_DTYPE_BFLOAT16})},
                rng, "op_onchip=0");
  ASSERT_TRUE(r.ok) << sn_last_error_message();
  ASSERT_EQ(r.bind("group_bw_coop=0"), SN_SUCCESS) << sn_last_error_message();  // the default's two kernels
  const size_t n = r.ms.size();
  const std::vector<std::vector<uint8_t>> got = r.group_backward(0);
  sn_paths_t p;
  ASSERT_EQ(sn_group_get_paths(r.g.p, &p), SN_SUCCESS);
  EXPECT_EQ(p.backward, SN_PATH_BACKWARD_KERNELS) << sn_path_name(p.backward);
  ASSERT_NO_FATAL_FAILURE(r.own_backward(0, true));
  ASSERT_EQ(sn_layer_get_paths(r.layers[0], &p), SN_SUCCESS);
  ASSERT_EQ(p.backward, SN_PATH_ON_CHIP_GRID) << sn_path_name(p.backward) << ": the member's own backward";
  const std::vector<float> dg = r.dgammas();
  ASSERT_NE(r.gdg[0], nullptr);
  for (size_t k = 0; k < n; ++k) {
    SCOPED_TRACE("member " + std::to_string(k) + " " + shape_str(r.ms[k].shape));
    {
      SCOPED_TRACE("the group's backward");
      r.expect_near_cpu(k, got[k], dg[k]);
    }
    if (k > 0) {
      EXPECT_TRUE(got[k] == r.dW(k, false)) << "dW differs from the layer's own backward";
      if (r.gdg[k]) {
        EXPECT_EQ(std::memcmp(&dg[k], &dg[n + k], 4), 0) << dg[k] << " against " << dg[n + k];
      }
      continue;
    }
    SCOPED_TRACE("the member's own backward, on the grid");
    r.expect_near_cpu(k, r.dW(k, false), dg[n + k]);
  }
}

// The cooperative grouped backward (group_coop=1: one launch, a grid-wide barrier between the
// steps; on as many blocks as fit, and on 7, where every block takes several of each step's) runs
// the very blocks of the two kernels (group_coop=0): the same bits, for every flag, with ∂L/∂γ
// bound for some members and for none (then σ detached is the apply step alone). Small members
// of every kind and a view of A = 6 by rows, so that racecheck runs it (gpu_check.sh): both
// paths' kernels are there.
TEST(GroupGpu, BackwardCooperativeIsBitwiseTheTwoKernels) {
  REQUIRE_GPU();
  if (!cooperative_launch_here()) GTEST_SKIP() << "no cooperative launch on this device";
  SN_SEEDED_RNG();
  std::vector<Member> ms = small_members_of_every_kind();
  ms.push_back(Member{{6, 40, 33}, 1});
  BackwardRig r(ms, rng);
  ASSERT_TRUE(r.ok) << sn_last_error_message();
  for (bool with_dgamma : {true, false}) {
    SCOPED_TRACE(with_dgamma ? "with dgamma" : "without dgamma");
    std::vector<std::vector<std::vector<uint8_t>>> plain;
    ASSERT_EQ(r.bind("group_coop=0", with_dgamma), SN_SUCCESS) << sn_last_error_message();
    EXPECT_EQ(captured_kernels([&](cudaStream_t s) { return sn_group_backward(r.g.p, 0, s); }).size(), 2u);
    for (unsigned flags : kBackwardFlags) plain.push_back(r.group_backward(flags));
    for (const char *tune : {"group_coop=1", "group_coop=1,group_grid=7"}) {
      SCOPED_TRACE(tune);
      ASSERT_EQ(r.bind(tune, with_dgamma), SN_SUCCESS) << sn_last_error_message();
      EXPECT_EQ(captured_kernels([&](cudaStream_t s) { return sn_group_backward(r.g.p, 0, s); }).size(), 1u);
      for (size_t q = 0; q < std::size(kBackwardFlags); ++q) {
        SCOPED_TRACE("flags " + std::to_string(kBackwardFlags[q]));
        const std::vector<std::vector<uint8_t>> got = r.group_backward(kBackwardFlags[q]);
        for (size_t k = 0; k < got.size(); ++k)
          EXPECT_TRUE(got[k] == plain[q][k]) << "member " << k << " (last: ∂L/∂γ)";
      }
    }
  }
}

// A cooperative backward launch that the device refuses (group_grid_force: more blocks than can be
// resident) runs as the two kernels instead, eagerly, with their bits; during a capture it fails
// with SN_ERROR_CUDA saying to capture again, and the next capture has the two kernels.
TEST(GroupGpu, RefusedCooperativeBackwardFallsBackToTwoKernels) {
  REQUIRE_GPU();
  if (!cooperative_launch_here()) GTEST_SKIP() << "no cooperative launch on this device";
  SN_SEEDED_RNG();
  BackwardRig r({{{64, 3, 3, 3}}, {{128, 64, 3, 3}}, {{300, 517}, 0, SN_DTYPE_BFLOAT16}, {{1, 128}}}, rng);
  ASSERT_TRUE(r.ok) << sn_last_error_message();
  ASSERT_EQ(r.bind("group_coop=0"), SN_SUCCESS) << sn_last_error_message();
  const std::vector<std::vector<uint8_t>> plain = r.group_backward(0);
  ASSERT_EQ(r.bind("group_coop=1,group_grid_force=1000000"), SN_SUCCESS) << sn_last_error_message();
  sn_paths_t p;
  ASSERT_EQ(sn_group_get_paths(r.g.p, &p), SN_SUCCESS);
  EXPECT_EQ(p.dropped & SN_DROPPED_BACKWARD_COOP, 0u) << "dropped before any backward";
  EXPECT_TRUE(r.group_backward(0) == plain);
  // The eager call was refused (not merely never tried) and ran the two kernels.
  ASSERT_EQ(sn_group_get_paths(r.g.p, &p), SN_SUCCESS);
  EXPECT_NE(p.dropped & SN_DROPPED_BACKWARD_COOP, 0u) << "no refusal recorded";
  EXPECT_EQ(p.backward, SN_PATH_BACKWARD_KERNELS) << sn_path_name(p.backward);
  EXPECT_EQ(captured_kernels([&](cudaStream_t s) { return sn_group_backward(r.g.p, 0, s); }).size(), 2u);
  ASSERT_EQ(r.bind("group_coop=1,group_grid_force=1000000"), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_group_get_paths(r.g.p, &p), SN_SUCCESS);
  EXPECT_EQ(p.dropped & SN_DROPPED_BACKWARD_COOP, 0u) << "a new binding tries the cooperative launch again";
  const CaptureOutcome c = capture_outcome([&](cudaStream_t s) { return sn_group_backward(r.g.p, 0, s); });
  EXPECT_EQ(c.status, SN_ERROR_CUDA) << "the refused launch was not reported during the capture";
  EXPECT_NE(c.message.find("capture"), std::string::npos) << c.message;
  EXPECT_EQ(captured_kernels([&](cudaStream_t s) { return sn_group_backward(r.g.p, 0, s); }).size(), 2u);
}
