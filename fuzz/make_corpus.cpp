// Writes the seed corpora of the fuzz harnesses: `sn_fuzz_make_corpus DIR` fills DIR/desc,
// DIR/checkpoint and DIR/group (fuzz/corpus/ in the repository was made this way: a few KB).
//   desc/        valid descriptors of several shapes, dtypes and settings with weights holding
//                NaN, infinities, zeros and subnormals; and invalid descriptors of every kind
//   checkpoint/  valid checkpoints of each fixed layer (warmed and not; one in format version 1),
//                checkpoints of other weights (mismatch), and edge cases: empty, magic only, a
//                newer version, truncated, a resealed blob with a NaN
//   group/       groups of layers apart, in place, rebound, with a v-first member; refused groups
//                (1-D, overlapping W_sn) and refused bindings (a shared ∂L/∂γ)
#include <string>

#include "fuzz_common.h"

using namespace snfuzz;

namespace {

std::string dir;
int files = 0;

void write(const std::string &sub, const std::string &name, const std::vector<uint8_t> &bytes) {
  const std::string path = dir + "/" + sub + "/" + name;
  FILE *f = std::fopen(path.c_str(), "wb");
  if (!f) fail("cannot write", path.c_str());
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) fail("write", path.c_str());
  std::fclose(f);
  ++files;
}

std::vector<uint8_t> f32_bytes(const std::vector<float> &x) {
  std::vector<uint8_t> b(x.size() * 4);
  std::memcpy(b.data(), x.data(), b.size());
  return b;
}

std::vector<uint8_t> checkpoint(const sn_layer_desc_t &d, int forwards) {
  sn_layer_t *l = nullptr;
  if (sn_layer_create(&l, &d) != SN_SUCCESS) fail("create", sn_last_error_message());
  int64_t h = 0, w = 0;
  sn_layer_get_dims(l, &h, &w);
  std::vector<float> W(size_t(h * w));
  for (size_t i = 0; i < W.size(); ++i) W[i] = std::sin(float(i) * 1.3f + 0.2f);
  std::vector<uint8_t> Wd(W.size() * 4), out(Wd.size());
  if (d.dtype == SN_DTYPE_FLOAT32) {
    std::memcpy(Wd.data(), W.data(), Wd.size());
  } else {
    for (size_t i = 0; i < W.size(); ++i) {  // ~ ±1 in both 16-bit formats' upper byte patterns
      const uint16_t x = d.dtype == SN_DTYPE_FLOAT16 ? uint16_t(0x3800 + (i * 97) % 0x800) : uint16_t(0x3F00 + (i * 13) % 0x80);
      std::memcpy(Wd.data() + 2 * i, &x, 2);
    }
  }
  for (int k = 0; k < forwards; ++k)
    if (sn_forward(l, Wd.data(), out.data(), k % 3 != 2, nullptr) != SN_SUCCESS) fail("forward", sn_last_error_message());
  size_t n = 0;
  sn_layer_checkpoint_size(l, &n);
  std::vector<uint8_t> b(n);
  if (sn_layer_save(l, b.data(), n, nullptr, nullptr) != SN_SUCCESS) fail("save", sn_last_error_message());
  sn_layer_destroy(l);
  return b;
}

std::vector<uint8_t> with_selector(uint8_t sel, std::vector<uint8_t> b) {
  b.insert(b.begin(), sel);
  return b;
}

void desc_corpus() {
  struct Case {
    const char *name;
    std::vector<int64_t> shape;
    int dim;
    int dt;  // raw ints: some are out of range on purpose (see set_raw)
    int iters, warmup;
    int order;
    float eps, bound;
    unsigned bflags;
  };
  const float nan = std::nanf(""), inf = INFINITY;
  const Case cases[] = {
      {"linear_8x6", {8, 6}, 0, SN_DTYPE_FLOAT32, 1, 15, SN_ORDER_U_FIRST, 1e-12f, 0.f, 0},
      {"conv_dim1_f16", {4, 3, 2, 2}, 1, SN_DTYPE_FLOAT16, 2, 3, SN_ORDER_V_FIRST, 1e-12f, 0.f, 1},
      {"bf16_bound", {3, 4, 5}, -1, SN_DTYPE_BFLOAT16, 1, 5, SN_ORDER_U_FIRST, 1e-6f, 0.5f, 2},
      {"vector", {7}, 0, SN_DTYPE_FLOAT32, 1, 0, SN_ORDER_U_FIRST, 1e-12f, 0.f, 3},
      {"one_by_one", {1, 1}, 0, SN_DTYPE_FLOAT32, 1, 1, SN_ORDER_U_FIRST, 1e-12f, 0.f, 0},
      {"eight_dims", {2, 1, 2, 1, 2, 1, 2, 1}, 3, SN_DTYPE_FLOAT32, 1, 2, SN_ORDER_U_FIRST, 1e-12f, 0.f, 0},
      {"big_eps", {5, 5}, 0, SN_DTYPE_FLOAT32, 3, 2, SN_ORDER_V_FIRST, 1e30f, 0.f, 0},
      // Invalid descriptors, one field each.
      {"bad_ndim0", {}, 0, SN_DTYPE_FLOAT32, 1, 1, SN_ORDER_U_FIRST, 1e-12f, 0.f, 0},
      {"bad_shape0", {3, 0}, 0, SN_DTYPE_FLOAT32, 1, 1, SN_ORDER_U_FIRST, 1e-12f, 0.f, 0},
      {"bad_shape_neg", {3, -5}, 0, SN_DTYPE_FLOAT32, 1, 1, SN_ORDER_U_FIRST, 1e-12f, 0.f, 0},
      {"bad_overflow", {int64_t(1) << 40, int64_t(1) << 30}, 0, SN_DTYPE_FLOAT32, 1, 1, SN_ORDER_U_FIRST, 1e-12f, 0.f, 0},
      {"bad_dim", {3, 4}, 2, SN_DTYPE_FLOAT32, 1, 1, SN_ORDER_U_FIRST, 1e-12f, 0.f, 0},
      {"bad_dtype", {3, 4}, 0, 3, 1, 1, SN_ORDER_U_FIRST, 1e-12f, 0.f, 0},
      {"bad_iters", {3, 4}, 0, SN_DTYPE_FLOAT32, 0, 1, SN_ORDER_U_FIRST, 1e-12f, 0.f, 0},
      {"bad_warmup", {3, 4}, 0, SN_DTYPE_FLOAT32, 1, -1, SN_ORDER_U_FIRST, 1e-12f, 0.f, 0},
      {"bad_eps_nan", {3, 4}, 0, SN_DTYPE_FLOAT32, 1, 1, SN_ORDER_U_FIRST, nan, 0.f, 0},
      {"bad_bound_inf", {3, 4}, 0, SN_DTYPE_FLOAT32, 1, 1, SN_ORDER_U_FIRST, 1e-12f, inf, 0},
      {"bad_order", {3, 4}, 0, SN_DTYPE_FLOAT32, 1, 1, 2, 1e-12f, 0.f, 0},
      {"bad_bflags", {3, 4}, 0, SN_DTYPE_FLOAT32, 1, 1, SN_ORDER_U_FIRST, 1e-12f, 0.f, 0x10},
  };
  for (const Case &c : cases) {
    sn_layer_desc_t d;
    std::memset(&d, 0, sizeof d);
    d.ndim = int(c.shape.size());
    for (size_t k = 0; k < c.shape.size(); ++k) d.shape[k] = c.shape[k];
    d.dim = c.dim;
    set_raw(d.dtype, c.dt);
    d.n_power_iterations = c.iters;
    d.warmup_iterations = c.warmup;
    set_raw(d.order, c.order);
    d.eps = c.eps;
    d.norm_bound = c.bound;
    d.seed = 42;
    d.backend = SN_BACKEND_CPU;
    std::vector<float> w = {0.5f, -1.25f, 3.f, 0.f, 1e-3f, -2.f, 7.5f, 0.25f};
    write("desc", c.name, encode_desc(d, c.bflags, f32_bytes(w)));
  }
  // Weights with non-finite and extreme values, on the 8x6 layer.
  sn_layer_desc_t d;
  const int64_t shape[2] = {8, 6};
  sn_layer_desc_init(&d, 2, shape);
  d.backend = SN_BACKEND_CPU;
  write("desc", "w_nan", encode_desc(d, 0, f32_bytes({1.f, nan, 2.f})));
  write("desc", "w_inf", encode_desc(d, 0, f32_bytes({1.f, -inf, 2.f, inf})));
  write("desc", "w_zero", encode_desc(d, 0, f32_bytes({0.f})));
  write("desc", "w_subnormal", encode_desc(d, 0, f32_bytes({1e-42f, -3e-40f})));
  write("desc", "w_huge", encode_desc(d, 0, f32_bytes({3e38f, -3e38f, 1e38f})));
  d.dtype = SN_DTYPE_FLOAT16;
  write("desc", "w_f16_specials", encode_desc(d, 0, {0x00, 0x7C, 0x01, 0x7E, 0x01, 0x00, 0xFF, 0x7B}));
  // Backend and algorithm values outside the CPU path.
  d.dtype = SN_DTYPE_FLOAT32;
  d.backend = SN_BACKEND_CUDA;
  write("desc", "cuda_backend", encode_desc(d, 0, {}));
  set_raw(d.backend, 5);
  write("desc", "bad_backend", encode_desc(d, 0, {}));
  d.backend = SN_BACKEND_CPU;
  d.algo = SN_ALGO_ONE_PASS;
  write("desc", "algo_one_pass", encode_desc(d, 0, {}));
  set_raw(d.algo, 9);
  write("desc", "bad_algo", encode_desc(d, 0, {}));
  // N(x) = x / sqrt(‖x‖² + eps) (Flax, Haiku), with a large eps; and a mode out of range.
  d.algo = SN_ALGO_DEFAULT;
  d.eps_mode = SN_EPS_ADD_SQUARED;
  d.eps = 0.5f;
  write("desc", "eps_add_squared", encode_desc(d, 1, f32_bytes({0.5f, -1.25f, 3.f, 0.f, 1e-3f})));
  set_raw(d.eps_mode, 2);
  write("desc", "bad_eps_mode", encode_desc(d, 0, {}));
}

void checkpoint_corpus() {
  for (int k = 0; k < 4; ++k) {
    const sn_layer_desc_t d = fixed_desc(kFixedLayers[k], 7 + uint64_t(k));
    write("checkpoint", "layer" + std::to_string(k) + "_trained", with_selector(uint8_t(k), checkpoint(d, 5)));
    write("checkpoint", "layer" + std::to_string(k) + "_fresh", with_selector(uint8_t(k), checkpoint(d, 0)));
  }
  // All four layers at once, given layer 0's checkpoint: one success, three mismatches.
  const std::vector<uint8_t> c0 = checkpoint(fixed_desc(kFixedLayers[0], 1), 3);
  write("checkpoint", "all_layers", with_selector(4, c0));
  // A weight none of the layers has.
  sn_layer_desc_t other = fixed_desc(kFixedLayers[0], 3);
  other.shape[0] = 6;
  other.shape[1] = 8;
  write("checkpoint", "other_shape", with_selector(0, checkpoint(other, 2)));
  // Edge cases.
  write("checkpoint", "empty", {0});
  write("checkpoint", "magic_only", with_selector(0, {'S', 'P', 'E', 'C', 'N', 'R', 'M', 0}));
  std::vector<uint8_t> v3(c0.begin(), c0.begin() + 16);
  v3[8] = 3;
  write("checkpoint", "version3_header", with_selector(0, v3));
  // Format version 1: version 2 without the health word before the checksum (resealed).
  std::vector<uint8_t> v1 = c0;
  v1.erase(v1.end() - 8, v1.end() - 4);
  v1[8] = 1;
  write("checkpoint", "version1_layer0", with_selector(0x80, v1));
  // Format version 1 of the 1-D layer with u = 0: no restart is derived for a 1-D weight.
  std::vector<uint8_t> v1_1d = checkpoint(fixed_desc(kFixedLayers[2], 2), 2);
  v1_1d.erase(v1_1d.end() - 8, v1_1d.end() - 4);
  v1_1d[8] = 1;
  const size_t header_1d = 84 + 8 * 1;
  for (size_t i = 0; i < 4 * size_t(kFixedLayers[2].shape[0]); ++i) v1_1d[header_1d + i] = 0;
  write("checkpoint", "version1_1d_zero_u", with_selector(0x80 | 2, v1_1d));
  write("checkpoint", "truncated", with_selector(0, std::vector<uint8_t>(c0.begin(), c0.end() - 5)));
  std::vector<uint8_t> nan_u = c0;
  const size_t header = 84 + 8 * 2;
  nan_u[header + 2] = 0xC0;
  nan_u[header + 3] = 0x7F;
  write("checkpoint", "resealed_nan_u", with_selector(0x80, nan_u));
  std::vector<uint8_t> big_h = c0;
  big_h[header - 16 + 7] = 0x7F;  // h = huge
  write("checkpoint", "resealed_huge_h", with_selector(0x80, big_h));
}

// fuzz_group's encoding (fuzz/fuzz_group.cpp): head; per layer kind, h, w, dtype; per layer the
// places of W and W_sn; twice (two bindings) per layer those of G, dW and dgamma; the arena.
// A place below 224 is slot (b % 24) shifted by (b / 24) % 4 elements; W_sn 224-239 is W and
// 240+ none; dW 224-239 is W and 240+ G; dgamma 240+ none.
struct GroupSeed {
  uint8_t head;                                 // layers - 1 | 4 no W_sn | 8 dgamma | 16 eval | flags << 5
  std::vector<std::vector<uint8_t>> layers;     // {kind, h, w, dtype}
  std::vector<std::vector<uint8_t>> w_places;   // {W, W_sn}
  std::vector<std::vector<uint8_t>> bindings[2];  // {G, dW, dgamma} per layer
};

std::vector<uint8_t> group_bytes(const GroupSeed &g) {
  std::vector<uint8_t> b{g.head};
  for (const auto &l : g.layers) b.insert(b.end(), l.begin(), l.end());
  for (const auto &p : g.w_places) b.insert(b.end(), p.begin(), p.end());
  for (const auto &bd : g.bindings)
    for (const auto &p : bd) b.insert(b.end(), p.begin(), p.end());
  std::vector<float> arena(64);  // repeated over the arena by the harness
  for (size_t i = 0; i < arena.size(); ++i) arena[i] = std::sin(float(i) * 0.7f + 0.3f);
  const std::vector<uint8_t> a = f32_bytes(arena);
  b.insert(b.end(), a.begin(), a.end());
  return b;
}

void group_corpus() {
  // Three layers (2-D fp32, 4-D dim 0 bf16, 4-D dim 1 fp16) apart, ∂L/∂γ bound; the second
  // binding puts layer 0's dW on layer 1's G (refused: the first stays).
  const std::vector<std::vector<uint8_t>> three = {{0, 7, 15, 0}, {1, 3, 8, 2}, {2, 5, 11, 1}};
  write("group", "three_apart", group_bytes({0x0A, three, {{0, 3}, {1, 4}, {2, 5}},
                                             {{{6, 9, 20}, {7, 10, 21}, {8, 11, 22}},
                                              {{6, 7, 240}, {7, 10, 240}, {8, 11, 240}}}}));
  // The same, backward flags accumulate | detach, eval forward, the second binding valid.
  write("group", "three_rebound", group_bytes({0x0A | 0x10 | 0x60, three, {{0, 3}, {1, 4}, {2, 5}},
                                               {{{6, 9, 20}, {7, 10, 21}, {8, 11, 22}},
                                                {{12, 13, 23}, {14, 15, 240}, {16, 17, 240}}}}));
  // In place: scale only (no W_sn), dW = G and dW = W; a 1 × 1 bf16 layer.
  const std::vector<std::vector<uint8_t>> two = {{0, 3, 6, 0}, {0, 0, 0, 2}};
  write("group", "in_place", group_bytes({0x01 | 0x04 | 0x60, two, {{0, 250}, {1, 250}},
                                          {{{2, 240, 240}, {3, 230, 240}}, {{2, 240, 240}, {3, 230, 240}}}}));
  // W_sn = W for one layer, separate for the other.
  write("group", "w_sn_in_place", group_bytes({0x01, two, {{0, 230}, {1, 5}},
                                               {{{2, 3 + 24, 240}, {4, 6, 240}}, {{2, 7, 240}, {4, 6, 240}}}}));
  // A v-first member beside a u-first one.
  write("group", "v_first", group_bytes({0x01, {{0, 4, 4, 0}, {4, 2, 2, 0}}, {{0, 1}, {2, 3}}, {{}, {}}}));
  // Refused groups: a 1-D member, a W_sn on the other layer's W, a W_sn that overlaps its own W by
  // all but one element.
  write("group", "one_d", group_bytes({0x01, {{3, 4, 0, 0}, {0, 2, 2, 0}}, {{0, 1}, {2, 3}}, {{}, {}}}));
  write("group", "w_sn_on_other_w", group_bytes({0x01, two, {{0, 1}, {1, 2}}, {{}, {}}}));
  write("group", "w_sn_shifted", group_bytes({0x00, {{0, 7, 15, 0}}, {{3, 3 + 24}}, {{}, {}}}));
  // Refused bindings: two layers' ∂L/∂γ on one float, then layer 1's inside layer 0's G.
  write("group", "dgamma_shared", group_bytes({0x09, two, {{0, 1}, {2, 3}},
                                               {{{4, 5, 20}, {6, 7, 20}}, {{4, 5, 21}, {6, 7, 4 + 24}}}}));
}

}  // namespace

int main(int argc, char **argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR   (writes DIR/desc/*, DIR/checkpoint/* and DIR/group/*; the folders must exist)\n", argv[0]);
    return 2;
  }
  dir = argv[1];
  desc_corpus();
  checkpoint_corpus();
  group_corpus();
  std::printf("%d files written under %s\n", files, dir.c_str());
  return 0;
}
