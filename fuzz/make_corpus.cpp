// Writes the seed corpora of the fuzz harnesses: `sn_fuzz_make_corpus DIR` fills DIR/desc and
// DIR/checkpoint (fuzz/corpus/ in the repository was made this way, and is small: < 200 KB).
//   desc/        valid descriptors of several shapes, dtypes and settings with weights holding
//                NaN, infinities, zeros and subnormals; and invalid descriptors of every kind
//   checkpoint/  valid checkpoints of each fixed layer (warmed and not; one in format version 1),
//                checkpoints of other weights (mismatch), and edge cases: empty, magic only, a
//                newer version, truncated, a resealed blob with a NaN
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

}  // namespace

int main(int argc, char **argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR   (writes DIR/desc/* and DIR/checkpoint/*; the folders must exist)\n", argv[0]);
    return 2;
  }
  dir = argv[1];
  desc_corpus();
  checkpoint_corpus();
  std::printf("%d files written under %s\n", files, dir.c_str());
  return 0;
}
