// Checkpoints (sn_layer_checkpoint_size / sn_layer_save / sn_layer_load) on the CPU backend:
// the documented byte layout, bitwise round trips, and every kind of damaged or foreign blob,
// each with its specific status and the layer left untouched. Also the recipe for loading
// PyTorch's spectral-norm buffers (LoadsPyTorchBuffers).
#include <cuda_runtime_api.h>
#if defined(__SSE2__)
#include <xmmintrin.h>  // _mm_getcsr, _mm_setcsr
#endif

#include <map>
#include <sstream>

#include "test_util.h"

using namespace sntest;

namespace {

using Blob = std::vector<unsigned char>;

// CRC-32C written independently of host/checkpoint.c (table-driven, there it is bitwise), so the
// tests pin down the documented checksum rather than the implementation's.
uint32_t crc32c(const unsigned char *p, size_t n) {
  static const std::vector<uint32_t> table = [] {
    std::vector<uint32_t> t(256);
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = ~0u;
  for (size_t k = 0; k < n; ++k) c = table[(c ^ p[k]) & 0xFF] ^ (c >> 8);
  return ~c;
}

uint64_t get_le(const Blob &b, size_t at, int bytes) {
  uint64_t x = 0;
  for (int k = 0; k < bytes; ++k) x |= uint64_t(b.at(at + k)) << (8 * k);
  return x;
}
void put_le(Blob &b, size_t at, uint64_t x, int bytes) {
  for (int k = 0; k < bytes; ++k) b.at(at + k) = static_cast<unsigned char>(x >> (8 * k));
}
uint32_t bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

// Re-seal a modified blob: the last 4 bytes are the CRC-32C of everything before them.
void reseal(Blob &b) { put_le(b, b.size() - 4, crc32c(b.data(), b.size() - 4), 4); }

// The version-1 blob of the same state: version 2 without the health word before the checksum.
Blob as_version1(Blob b) {
  b.erase(b.end() - 8, b.end() - 4);
  put_le(b, 8, 1, 4);
  reseal(b);
  return b;
}

// Byte offsets of the header fields (versions 1 and 2) for a weight of `ndim` dimensions (README,
// "Reliability").
struct Layout {
  size_t ndim_at = 16, shape_at = 20, dim, dtype, npi, eps, warmup, order, bound, seed, warmed,
         forwards, h, w, header;
  explicit Layout(int ndim) {
    dim = 20 + 8 * size_t(ndim);
    dtype = dim + 4;
    npi = dtype + 4;
    eps = npi + 4;
    warmup = eps + 4;
    order = warmup + 4;
    bound = order + 4;
    seed = bound + 4;
    warmed = seed + 8;
    forwards = warmed + 4;
    h = forwards + 8;
    w = h + 8;
    header = w + 8;
  }
};

Blob save(sn_layer_t *l) {
  size_t n = 0;
  EXPECT_EQ(sn_layer_checkpoint_size(l, &n), SN_SUCCESS) << sn_last_error_message();
  Blob b(n, 0xAB);
  size_t written = 0;
  EXPECT_EQ(sn_layer_save(l, b.data(), b.size(), &written, nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_EQ(written, n);
  return b;
}

// Everything a load may change, as one comparable value: the blob of a save (u, v, σ, 1/σ, scale,
// warm-up flag, forward count, settings) plus get_state for good measure.
struct Snapshot {
  Blob blob;
  State state;
  bool operator==(const Snapshot &o) const { return blob == o.blob && same_state(state, o.state); }
};
Snapshot snapshot(sn_layer_t *l) { return {save(l), get_state(l)}; }

// A CPU layer with some history: `steps` training forwards on a gapped matrix.
struct Trained {
  sn_layer_desc_t desc;
  LayerPtr layer;
  std::vector<float> W;  // float32 values; converted to the dtype by weights()
  Trained(const sn_layer_desc_t &d, Rng &rng, int steps) : desc(d), layer(d) {
    int64_t h = 0, w = 0;
    sn_layer_get_dims(layer, &h, &w);
    W = gapped_matrix(rng, h, w);
    std::vector<unsigned char> Wd = weights(), out(Wd.size());
    for (int s = 0; s < steps; ++s)
      EXPECT_EQ(sn_forward(layer, Wd.data(), out.data(), 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  }
  std::vector<unsigned char> weights() const {
    std::vector<unsigned char> out(W.size() * sn_dtype_size(desc.dtype));
    for (size_t k = 0; k < W.size(); ++k) sn_store(out.data(), desc.dtype, int64_t(k), W[k]);
    return out;
  }
};

sn_layer_desc_t cpu_desc(std::vector<int64_t> shape, int dim = 0, sn_dtype_t dt = SN_DTYPE_FLOAT32) {
  sn_layer_desc_t d = make_desc(shape, SN_BACKEND_CPU, dim);
  d.dtype = dt;
  return d;
}

class Checkpoint : public SeededTest {};

// Loading `blob` into `l` must fail with `want`, leave `l` exactly as it was, and say why.
void expect_rejected(sn_layer_t *l, const Blob &blob, sn_status_t want, const std::string &why,
                     size_t size = SIZE_MAX) {
  const Snapshot before = snapshot(l);
  const size_t n = size == SIZE_MAX ? blob.size() : size;
  static const unsigned char none = 0;  // an empty blob still has an address (NULL is NULL_POINTER)
  const sn_status_t st = sn_layer_load(l, blob.empty() ? &none : blob.data(), n, nullptr);
  EXPECT_EQ(st, want) << why << ": got " << sn_status_name(st) << " (" << sn_last_error_message() << ")";
  if (st != SN_SUCCESS) {
    EXPECT_EQ(std::string(sn_last_error_message()).rfind(sn_status_name(st), 0), 0u) << why;
  }
  EXPECT_TRUE(snapshot(l) == before) << why << ": the layer changed";
}

}  // namespace

TEST(CheckpointFormat, Crc32cCheckValue) {
  const char *s = "123456789";  // the standard check input of CRC-32C
  EXPECT_EQ(crc32c(reinterpret_cast<const unsigned char *>(s), 9), 0xE3069283u);
}

TEST_F(Checkpoint, SizeAndLayout) {
  SCOPED_TRACE("SN_TEST_SEED=" + std::to_string(seed));
  struct Case {
    std::vector<int64_t> shape;
    int dim;
  };
  for (const Case &c : {Case{{8, 6}, 0}, Case{{4, 3, 2, 2}, 1}, Case{{5}, 0}, Case{{2, 3, 4}, -1}}) {
    sn_layer_desc_t d = cpu_desc(c.shape, c.dim);
    d.n_power_iterations = 3;
    d.eps = 1e-6f;
    d.warmup_iterations = 7;
    d.order = SN_ORDER_V_FIRST;
    d.norm_bound = 2.5f;
    d.seed = 0x0123456789ABCDEFull;
    Trained t(d, rng, 5);
    int64_t h = 0, w = 0;
    ASSERT_EQ(sn_layer_get_dims(t.layer, &h, &w), SN_SUCCESS);
    const int nd = int(c.shape.size());
    size_t n = 0;
    ASSERT_EQ(sn_layer_checkpoint_size(t.layer, &n), SN_SUCCESS);
    EXPECT_EQ(n, size_t(104 + 8 * nd + 4 * (h + w))) << shape_str(c.shape);
    const Blob b = save(t.layer);
    const Layout L(nd);
    EXPECT_EQ(std::memcmp(b.data(), "SPECNRM\0", 8), 0);
    EXPECT_EQ(get_le(b, 8, 4), 2u);
    EXPECT_EQ(get_le(b, 12, 4), L.header);
    EXPECT_EQ(get_le(b, L.ndim_at, 4), uint64_t(nd));
    for (int k = 0; k < nd; ++k) EXPECT_EQ(int64_t(get_le(b, L.shape_at + 8 * k, 8)), c.shape[k]);
    EXPECT_EQ(get_le(b, L.dim, 4), uint64_t(c.dim < 0 ? c.dim + nd : c.dim)) << "dim is stored normalized";
    EXPECT_EQ(get_le(b, L.dtype, 4), uint64_t(SN_DTYPE_FLOAT32));
    EXPECT_EQ(get_le(b, L.npi, 4), 3u);
    EXPECT_EQ(get_le(b, L.eps, 4), bits(1e-6f));
    EXPECT_EQ(get_le(b, L.warmup, 4), 7u);
    EXPECT_EQ(get_le(b, L.order, 4), uint64_t(SN_ORDER_V_FIRST));
    EXPECT_EQ(get_le(b, L.bound, 4), bits(2.5f));
    EXPECT_EQ(get_le(b, L.seed, 8), 0x0123456789ABCDEFull);
    EXPECT_EQ(get_le(b, L.warmed, 4), 1u);
    EXPECT_EQ(get_le(b, L.forwards, 8), 5u);
    EXPECT_EQ(int64_t(get_le(b, L.h, 8)), h);
    EXPECT_EQ(int64_t(get_le(b, L.w, 8)), w);
    const State s = get_state(t.layer);
    for (int64_t i = 0; i < h; ++i) EXPECT_EQ(get_le(b, L.header + 4 * i, 4), bits(s.u[i]));
    for (int64_t j = 0; j < w; ++j) EXPECT_EQ(get_le(b, L.header + 4 * (h + j), 4), bits(s.v[j]));
    float sig[2] = {0, 0}, scale = 0;
    ASSERT_EQ(sn_layer_get_sigma(t.layer, &sig[0], &sig[1], nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_layer_get_scale(t.layer, &scale, nullptr), SN_SUCCESS);
    const size_t s_at = L.header + 4 * size_t(h + w);
    EXPECT_EQ(get_le(b, s_at, 4), bits(sig[0]));
    EXPECT_EQ(get_le(b, s_at + 4, 4), bits(sig[1]));
    EXPECT_EQ(get_le(b, s_at + 8, 4), bits(scale));
    uint32_t health = 0;
    ASSERT_EQ(sn_layer_get_health(t.layer, &health, 0, nullptr), SN_SUCCESS);
    EXPECT_EQ(get_le(b, s_at + 12, 4), health);
    EXPECT_EQ(s_at + 16, b.size() - 4);
    EXPECT_EQ(get_le(b, b.size() - 4, 4), crc32c(b.data(), b.size() - 4));
  }
}

TEST_F(Checkpoint, SaveArguments) {
  Trained t(cpu_desc({8, 6}), rng, 2);
  size_t n = 0;
  ASSERT_EQ(sn_layer_checkpoint_size(t.layer, &n), SN_SUCCESS);
  EXPECT_EQ(sn_layer_checkpoint_size(nullptr, &n), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_layer_checkpoint_size(t.layer, nullptr), SN_ERROR_NULL_POINTER);
  Blob b(n + 10, 0x5A);
  EXPECT_EQ(sn_layer_save(nullptr, b.data(), b.size(), nullptr, nullptr), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_layer_save(t.layer, nullptr, b.size(), nullptr, nullptr), SN_ERROR_NULL_POINTER);
  EXPECT_NE(std::string(sn_last_error_message()).find("buf"), std::string::npos);
  size_t written = 12345;
  EXPECT_EQ(sn_layer_save(t.layer, b.data(), n - 1, &written, nullptr), SN_ERROR_INVALID_VALUE);
  EXPECT_NE(std::string(sn_last_error_message()).find("size"), std::string::npos);
  EXPECT_EQ(written, 12345u) << "a failed save reports nothing";
  EXPECT_TRUE(std::all_of(b.begin(), b.end(), [](unsigned char c) { return c == 0x5A; }))
      << "a failed save writes nothing";
  // A larger buffer is fine; only the checkpoint's bytes are written.
  ASSERT_EQ(sn_layer_save(t.layer, b.data(), b.size(), &written, nullptr), SN_SUCCESS);
  EXPECT_EQ(written, n);
  EXPECT_TRUE(std::all_of(b.begin() + long(n), b.end(), [](unsigned char c) { return c == 0x5A; }));
  ASSERT_EQ(sn_layer_save(t.layer, b.data(), n, nullptr, nullptr), SN_SUCCESS);  // written may be NULL
  EXPECT_EQ(sn_layer_load(nullptr, b.data(), n, nullptr), SN_ERROR_NULL_POINTER);
  EXPECT_EQ(sn_layer_load(t.layer, nullptr, n, nullptr), SN_ERROR_NULL_POINTER);
}

// Save A, load into B (same weight, another history): B is bitwise A, now and for every later
// forward and backward.
TEST_F(Checkpoint, RoundTripIsBitwise) {
  SCOPED_TRACE("SN_TEST_SEED=" + std::to_string(seed));
  struct Case {
    std::vector<int64_t> shape;
    int dim;
    sn_dtype_t dt;
    sn_order_t order;
    float bound;
  };
  const Case cases[] = {
      {{8, 6}, 0, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, 0.f},
      {{4, 3, 2, 2}, 1, SN_DTYPE_FLOAT16, SN_ORDER_V_FIRST, 0.f},
      {{5, 7, 3}, 2, SN_DTYPE_BFLOAT16, SN_ORDER_U_FIRST, 0.5f},
      {{9}, 0, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, 0.f},
      {{1, 1}, 0, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, 0.f},
  };
  for (const Case &c : cases) {
    SCOPED_TRACE(shape_str(c.shape) + " dim " + std::to_string(c.dim) + " dtype " + std::to_string(c.dt));
    sn_layer_desc_t d = cpu_desc(c.shape, c.dim, c.dt);
    d.order = c.order;
    d.norm_bound = c.bound;
    d.n_power_iterations = 2;
    Trained a(d, rng, 4);
    Trained b(d, rng, 9);  // same settings, different weight and history
    const Blob blob = save(a.layer);
    ASSERT_EQ(sn_layer_load(b.layer, blob.data(), blob.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
    EXPECT_EQ(save(b.layer), blob) << "the loaded layer saves the same bytes";
    EXPECT_TRUE(same_state(get_state(a.layer), get_state(b.layer)));

    // Identical futures: training and eval forwards, backward, from the same weights.
    std::vector<unsigned char> W = a.weights(), oa(W.size()), ob(W.size()), G(W.size()), da(W.size()),
                               db(W.size());
    const size_t n = W.size() / sn_dtype_size(c.dt);
    for (int step = 0; step < 6; ++step) {
      for (size_t k = 0; k < n; ++k) {
        sn_store(W.data(), c.dt, int64_t(k), sn_load(W.data(), c.dt, int64_t(k)) + 0.01f * rng.normal());
        sn_store(G.data(), c.dt, int64_t(k), rng.normal());
      }
      const int training = step % 3 != 2;
      ASSERT_EQ(sn_forward(a.layer, W.data(), oa.data(), training, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_forward(b.layer, W.data(), ob.data(), training, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_backward(a.layer, W.data(), G.data(), da.data(), 0, nullptr, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_backward(b.layer, W.data(), G.data(), db.data(), 0, nullptr, nullptr), SN_SUCCESS);
      EXPECT_EQ(oa, ob) << "W_sn, step " << step;
      EXPECT_EQ(da, db) << "dW, step " << step;
      EXPECT_EQ(save(a.layer), save(b.layer)) << "state, step " << step;
    }
  }
}

// A checkpoint of a layer that never ran keeps warmed_up = 0: the next forward warms up, exactly
// as the first forward of a fresh layer.
TEST_F(Checkpoint, UnwarmedLayerWarmsUpAfterLoad) {
  const sn_layer_desc_t d = cpu_desc({7, 5});
  LayerPtr fresh(d), reference(d);
  Trained busy(d, rng, 3);
  const Blob blob = save(fresh);
  EXPECT_EQ(get_le(blob, Layout(2).warmed, 4), 0u);
  ASSERT_EQ(sn_layer_load(busy.layer, blob.data(), blob.size(), nullptr), SN_SUCCESS);
  EXPECT_EQ(get_state(busy.layer).warmed, 0);
  std::vector<float> o1(busy.W.size()), o2(busy.W.size());
  ASSERT_EQ(sn_forward(busy.layer, busy.W.data(), o1.data(), 1, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_forward(reference, busy.W.data(), o2.data(), 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(o1, o2);
  EXPECT_EQ(save(busy.layer), save(reference));
}

TEST_F(Checkpoint, TruncatedAtEveryLength) {
  for (const auto &shape : {std::vector<int64_t>{8, 6}, std::vector<int64_t>{3, 2, 2, 2, 1}}) {
    Trained src(cpu_desc(shape), rng, 2), dst(cpu_desc(shape), rng, 5);
    Blob blob = save(src.layer);
    for (size_t n = 0; n < blob.size(); ++n) {
      // An exact-size copy, so that AddressSanitizer sees any read past the end.
      Blob cut(blob.begin(), blob.begin() + long(n));
      expect_rejected(dst.layer, cut, SN_ERROR_BAD_CHECKPOINT, "truncated to " + std::to_string(n) + " bytes",
                      n);
    }
    Blob longer = blob;
    longer.push_back(0);
    expect_rejected(dst.layer, longer, SN_ERROR_BAD_CHECKPOINT, "one trailing byte");
    EXPECT_NE(std::string(sn_last_error_message()).find("trailing"), std::string::npos);
  }
}

// Every byte inverted, and every single bit flipped: the checksum (or the magic, or the version
// check) catches each one.
TEST_F(Checkpoint, FlippedBytesAndBits) {
  Trained src(cpu_desc({8, 6}), rng, 2), dst(cpu_desc({8, 6}), rng, 5);
  const Blob blob = save(src.layer);
  auto expected = [&](const Blob &b, size_t at) {
    if (at >= 8 && at < 12) {  // the version field: a larger number reads as a newer format
      const uint64_t v = get_le(b, 8, 4);
      return v > 2 ? SN_ERROR_CHECKPOINT_VERSION : SN_ERROR_BAD_CHECKPOINT;
    }
    return SN_ERROR_BAD_CHECKPOINT;
  };
  for (size_t at = 0; at < blob.size(); ++at) {
    Blob b = blob;
    b[at] ^= 0xFF;
    expect_rejected(dst.layer, b, expected(b, at), "byte " + std::to_string(at) + " inverted");
    for (int bit = 0; bit < 8; ++bit) {
      Blob c = blob;
      c[at] ^= static_cast<unsigned char>(1u << bit);
      expect_rejected(dst.layer, c, expected(c, at),
                      "bit " + std::to_string(bit) + " of byte " + std::to_string(at) + " flipped");
    }
  }
  // A flip in the payload is reported as a checksum mismatch.
  Blob b = blob;
  b[Layout(2).header + 3] ^= 1;
  expect_rejected(dst.layer, b, SN_ERROR_BAD_CHECKPOINT, "u[0] changed");
  EXPECT_NE(std::string(sn_last_error_message()).find("checksum"), std::string::npos) << sn_last_error_message();
}

TEST_F(Checkpoint, WrongMagic) {
  Trained src(cpu_desc({8, 6}), rng, 2), dst(cpu_desc({8, 6}), rng, 5);
  for (const char *magic : {"SPECNRM1", "specnrm\0", "PK\3\4\0\0\0\0", "\0\0\0\0\0\0\0\0"}) {
    Blob b = save(src.layer);
    std::memcpy(b.data(), magic, 8);
    reseal(b);
    expect_rejected(dst.layer, b, SN_ERROR_BAD_CHECKPOINT, std::string("magic ") + magic);
    EXPECT_NE(std::string(sn_last_error_message()).find("magic"), std::string::npos);
  }
  // Random bytes of the right length, and of other lengths.
  for (size_t n : {size_t(0), size_t(16), size_t(64), save(src.layer).size()}) {
    Blob junk(n);
    for (auto &c : junk) c = static_cast<unsigned char>(rng.gen());
    expect_rejected(dst.layer, junk, SN_ERROR_BAD_CHECKPOINT, "random bytes");
  }
}

TEST_F(Checkpoint, FutureAndInvalidVersion) {
  Trained src(cpu_desc({8, 6}), rng, 2), dst(cpu_desc({8, 6}), rng, 5);
  for (uint32_t v : {3u, 4u, 0xFFFFFFFFu}) {
    Blob b = save(src.layer);
    put_le(b, 8, v, 4);
    reseal(b);
    expect_rejected(dst.layer, b, SN_ERROR_CHECKPOINT_VERSION, "version " + std::to_string(v));
    EXPECT_NE(std::string(sn_last_error_message()).find(std::to_string(v)), std::string::npos);
    // A newer format may be laid out differently: the version is judged before anything else.
    Blob head(b.begin(), b.begin() + 16);
    expect_rejected(dst.layer, head, SN_ERROR_CHECKPOINT_VERSION, "newer version, header only");
  }
  Blob b = save(src.layer);
  put_le(b, 8, 0, 4);
  reseal(b);
  expect_rejected(dst.layer, b, SN_ERROR_BAD_CHECKPOINT, "version 0");
  EXPECT_NE(std::string(sn_last_error_message()).find("version 0"), std::string::npos) << sn_last_error_message();
}

// A valid checkpoint of another weight: CHECKPOINT_MISMATCH, even when the byte count agrees.
TEST_F(Checkpoint, OtherShapeDimOrDtype) {
  struct Case {
    sn_layer_desc_t from, into;
    const char *word;
  };
  const Case cases[] = {
      {cpu_desc({8, 6}), cpu_desc({6, 8}), "shape"},
      {cpu_desc({8, 6}), cpu_desc({8, 6, 1}), "shape"},
      {cpu_desc({8, 6}), cpu_desc({48}), "shape"},
      {cpu_desc({8, 6}), cpu_desc({8, 3, 2}), "shape"},      // same h and w
      {cpu_desc({4, 6}), cpu_desc({4, 6}, 1), "dim"},       // same size, h and w swapped
      {cpu_desc({4, 3, 4}), cpu_desc({4, 3, 4}, 2), "dim"}, // same h and w
      {cpu_desc({8, 6}), cpu_desc({8, 6}, 0, SN_DTYPE_FLOAT16), "dtype"},
      {cpu_desc({8, 6}, 0, SN_DTYPE_BFLOAT16), cpu_desc({8, 6}, 0, SN_DTYPE_FLOAT16), "dtype"},
  };
  for (const Case &c : cases) {
    Trained src(c.from, rng, 2), dst(c.into, rng, 3);
    const Blob b = save(src.layer);
    expect_rejected(dst.layer, b, SN_ERROR_CHECKPOINT_MISMATCH, std::string("mismatched ") + c.word);
    EXPECT_NE(std::string(sn_last_error_message()).find(c.word), std::string::npos) << sn_last_error_message();
  }
}

// Each field out of its range, with a valid checksum (as a buggy writer would produce):
// BAD_CHECKPOINT, never a layer with a broken state.
TEST_F(Checkpoint, FieldsOutOfRange) {
  const std::vector<int64_t> shape{8, 6};
  Trained src(cpu_desc(shape), rng, 2), dst(cpu_desc(shape), rng, 5);
  const Layout L(2);
  const size_t u0 = L.header, vlast = L.header + 4 * (8 + 5), sig = L.header + 4 * (8 + 6);
  const float nan = std::nanf(""), inf = INFINITY;
  struct Edit {
    const char *what;
    size_t at;
    uint64_t value;
    int bytes;
  };
  const Edit edits[] = {
      {"header bytes", 12, L.header + 8, 4},
      {"ndim 0", L.ndim_at, 0, 4},
      {"ndim 9", L.ndim_at, 9, 4},
      {"ndim 3", L.ndim_at, 3, 4},
      {"shape[0] = 0", L.shape_at, 0, 8},
      {"shape[0] < 0", L.shape_at, uint64_t(-8), 8},
      {"shape[0] huge", L.shape_at, uint64_t(1) << 62, 8},
      {"dim 2", L.dim, 2, 4},
      {"dim -1", L.dim, uint64_t(0xFFFFFFFF), 4},
      {"dtype 3", L.dtype, 3, 4},
      {"n_power_iterations 0", L.npi, 0, 4},
      {"n_power_iterations < 0", L.npi, 0xFFFFFFFF, 4},
      {"eps NaN", L.eps, bits(nan), 4},
      {"eps 0", L.eps, 0, 4},
      {"eps -1", L.eps, bits(-1.f), 4},
      {"eps inf", L.eps, bits(inf), 4},
      {"warmup -1", L.warmup, 0xFFFFFFFF, 4},
      {"order 2", L.order, 2, 4},
      {"norm bound -1", L.bound, bits(-1.f), 4},
      {"norm bound inf", L.bound, bits(inf), 4},
      {"warmed_up 2", L.warmed, 2, 4},
      {"h wrong", L.h, 6, 8},
      {"w wrong", L.w, 8, 8},
      {"shape[1] 5: h right, w = 6 not 8·5 / 8", L.shape_at + 8, 5, 8},
      {"u[0] NaN", u0, bits(nan), 4},
      {"u[0] inf", u0, bits(-inf), 4},
      {"v[5] inf", vlast, bits(inf), 4},
      {"sigma < 0", sig, bits(-1.f), 4},
      {"sigma NaN", sig, bits(nan), 4},
      {"1/sigma NaN", sig + 4, bits(nan), 4},
      {"1/sigma < 0", sig + 4, bits(-2.f), 4},
      {"1/sigma not that of sigma", sig + 4, bits(1e30f), 4},
      {"health bit 5", sig + 12, 0x20, 4},
      {"health bit 30", sig + 12, 0x40000000u | SN_HEALTH_ZERO, 4},
  };
  for (const Edit &e : edits) {
    Blob b = save(src.layer);
    put_le(b, e.at, e.value, e.bytes);
    reseal(b);
    expect_rejected(dst.layer, b, SN_ERROR_BAD_CHECKPOINT, e.what);
  }
  // A header 4 bytes longer than ndim makes it, the blob's length and its u, v and σ agreeing:
  // still not this format.
  {
    Blob b = save(src.layer);
    b.insert(b.begin() + long(L.header), 4, 0);
    put_le(b, 12, L.header + 4, 4);
    reseal(b);
    expect_rejected(dst.layer, b, SN_ERROR_BAD_CHECKPOINT, "header bytes + 4, with 4 bytes more");
    EXPECT_NE(std::string(sn_last_error_message()).find("header bytes"), std::string::npos) << sn_last_error_message();
  }
  // A zero state is in range (a layer with no estimate yet saves exactly that).
  Blob b = save(src.layer);
  for (int k = 0; k < 3; ++k) put_le(b, sig + 4 * k, 0, 4);
  reseal(b);
  EXPECT_EQ(sn_layer_load(dst.layer, b.data(), b.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_EQ(get_state(dst.layer).sigma, 0.f);
  // A subnormal σ (whose 1/σ and scale would be infinite) is out of range: no forward commits one.
  const Blob before = save(dst.layer);
  b = save(src.layer);
  put_le(b, sig, bits(1e-40f), 4);
  put_le(b, sig + 4, bits(inf), 4);
  put_le(b, sig + 8, bits(inf), 4);
  reseal(b);
  EXPECT_EQ(sn_layer_load(dst.layer, b.data(), b.size(), nullptr), SN_ERROR_BAD_CHECKPOINT);
  EXPECT_EQ(save(dst.layer), before) << "the layer is untouched";
  // σ = 2^126: 1/σ = FLT_MIN is a normal float and must be exact; a 0 there is out of range.
  b = save(src.layer);
  put_le(b, sig, bits(std::ldexp(1.f, 126)), 4);
  put_le(b, sig + 4, 0, 4);
  reseal(b);
  expect_rejected(dst.layer, b, SN_ERROR_BAD_CHECKPOINT, "sigma 2^126 with 1/sigma 0");
  const auto hex = [](float x) {
    std::ostringstream o;
    o << std::hexfloat << x;
    return o.str();
  };
  // σ = 2^127: 1/σ = 2^-127 is subnormal, and a process that flushes subnormals to zero writes 0:
  // both load; FLT_MIN there is neither, nor another subnormal (2^-149, 2^-126 - 2^-149).
  for (const float inv : {std::ldexp(1.f, -127), 0.f, FLT_MIN, std::ldexp(1.f, -149),
                          FLT_MIN - std::ldexp(1.f, -149)}) {
    b = save(src.layer);
    put_le(b, sig, bits(std::ldexp(1.f, 127)), 4);
    put_le(b, sig + 4, bits(inv), 4);
    reseal(b);
    if (inv == std::ldexp(1.f, -127) || inv == 0.f) {
      EXPECT_EQ(sn_layer_load(dst.layer, b.data(), b.size(), nullptr), SN_SUCCESS) << inv << ": " << sn_last_error_message();
    } else {
      expect_rejected(dst.layer, b, SN_ERROR_BAD_CHECKPOINT, "sigma 2^127 with 1/sigma " + hex(inv));
    }
  }
  // σ = 3·2^125 (not a power of two): 1/σ is subnormal and not exact, its rounded value loads.
  b = save(src.layer);
  const float odd = 3.f * std::ldexp(1.f, 125);
  put_le(b, sig, bits(odd), 4);
  put_le(b, sig + 4, bits(1.f / odd), 4);
  reseal(b);
  EXPECT_EQ(sn_layer_load(dst.layer, b.data(), b.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
#if defined(__SSE2__)
  // Both subnormal inverses also load where the reader flushes subnormals to zero (its own 1/σ
  // is then 0, not the blob's), and the others still do not.
  for (const float s : {std::ldexp(1.f, 127), odd}) {
    for (const float inv : {1.f / s, std::ldexp(1.f, -149), FLT_MIN}) {
      b = save(src.layer);
      put_le(b, sig, bits(s), 4);
      put_le(b, sig + 4, bits(inv), 4);
      reseal(b);
      const unsigned csr = _mm_getcsr();
      _mm_setcsr(csr | 0x8040u);  // FTZ and DAZ
      const sn_status_t st = sn_layer_load(dst.layer, b.data(), b.size(), nullptr);
      _mm_setcsr(csr);
      EXPECT_EQ(st, inv == 1.f / s ? SN_SUCCESS : SN_ERROR_BAD_CHECKPOINT)
          << "flushing: sigma " << hex(s) << ", 1/sigma " << hex(inv) << ": " << sn_last_error_message();
    }
  }
#endif
  // σ = 0 (no estimate) has 1/σ = 0 exactly: a subnormal there is no commit's.
  for (const float inv : {std::ldexp(1.f, -149), std::ldexp(1.f, -133), -0.f}) {
    b = save(src.layer);
    put_le(b, sig, 0, 4);
    put_le(b, sig + 4, bits(inv), 4);
    put_le(b, sig + 8, 0, 4);
    reseal(b);
    expect_rejected(dst.layer, b, SN_ERROR_BAD_CHECKPOINT, "sigma 0 with 1/sigma " + hex(inv));
  }
}

// Fields at the ends of their ranges load: 8 dimensions, n_power_iterations and warmup_iterations
// at 1,000,000 (sn_layer_create's limit), warmup_iterations 0.
TEST_F(Checkpoint, FieldsAtTheirLimitsLoad) {
  const std::vector<int64_t> shape8{2, 1, 3, 1, 1, 2, 1, 2};
  Trained a(cpu_desc(shape8, 2), rng, 2), b(cpu_desc(shape8, 2), rng, 3);
  const Blob blob = save(a.layer);
  ASSERT_EQ(sn_layer_load(b.layer, blob.data(), blob.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_EQ(save(b.layer), blob) << "8 dimensions";
  const std::vector<int64_t> shape{8, 6};
  Trained src(cpu_desc(shape), rng, 2), dst(cpu_desc(shape), rng, 5);
  const Layout L(2);
  const struct {
    const char *what;
    size_t at;
    uint32_t value;
  } edits[] = {{"n_power_iterations 1000000", L.npi, 1000000u},
               {"warmup_iterations 1000000", L.warmup, 1000000u},
               {"warmup_iterations 0", L.warmup, 0u}};
  for (const auto &e : edits) {
    Blob c = save(src.layer);
    put_le(c, e.at, e.value, 4);
    reseal(c);
    EXPECT_EQ(sn_layer_load(dst.layer, c.data(), c.size(), nullptr), SN_SUCCESS) << e.what << ": " << sn_last_error_message();
  }
}

// A blob loaded into a layer with another norm bound: the scale is recomputed as
// sn_layer_set_state computes it: 0 for σ = 0 (no σ yet), not 1 / max(1, 0 / c); else 1 / max(1, σ / c).
TEST_F(Checkpoint, ScaleUnderAnotherNormBoundIsRecomputed) {
  const sn_layer_desc_t plain = cpu_desc({8, 6});
  sn_layer_desc_t bounded = plain;
  bounded.norm_bound = 0.5f;
  LayerPtr fresh(plain);
  Trained dst(bounded, rng, 3);
  float scale = -1.f;
  ASSERT_EQ(sn_layer_get_scale(dst.layer, &scale, nullptr), SN_SUCCESS);
  ASSERT_GT(scale, 0.f);
  const Blob blob = save(fresh);
  ASSERT_EQ(sn_layer_load(dst.layer, blob.data(), blob.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_layer_get_scale(dst.layer, &scale, nullptr), SN_SUCCESS);
  EXPECT_EQ(scale, 0.f);
  EXPECT_EQ(get_state(dst.layer).sigma, 0.f);
  // And a σ below 1 (0.75, above the bound 0.5): 1 / max(1, σ / c).
  const State s = get_state(fresh);
  ASSERT_EQ(sn_layer_set_state(fresh, s.u.data(), s.v.data(), 0.75f, 1, nullptr), SN_SUCCESS);
  const Blob b2 = save(fresh);
  ASSERT_EQ(sn_layer_load(dst.layer, b2.data(), b2.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_layer_get_scale(dst.layer, &scale, nullptr), SN_SUCCESS);
  EXPECT_EQ(scale, 1.f / (0.75f / 0.5f));
}

// A norm bound of -0 is no bound, as 0 is (sn_layer_create takes either): a blob of one loads
// into a layer of the other with its scale (here γ / σ) kept, not recomputed as 1/σ.
TEST_F(Checkpoint, NormBoundsOfZeroAndMinusZeroAreTheSame) {
  const float gamma = 3.f;
  for (const float saved : {-0.f, 0.f}) {
    sn_layer_desc_t ds = cpu_desc({8, 6}), dl = ds;
    ds.norm_bound = saved;
    dl.norm_bound = -saved;
    Trained a(ds, rng, 0), b(dl, rng, 1);
    ASSERT_EQ(sn_layer_set_gamma(a.layer, &gamma), SN_SUCCESS);
    ASSERT_EQ(sn_layer_set_gamma(b.layer, &gamma), SN_SUCCESS);
    std::vector<float> out(a.W.size());
    ASSERT_EQ(sn_forward(a.layer, a.W.data(), out.data(), 1, nullptr), SN_SUCCESS);
    float sa = 0.f, sb = 0.f;
    ASSERT_EQ(sn_layer_get_scale(a.layer, &sa, nullptr), SN_SUCCESS);
    ASSERT_EQ(sa, gamma / get_state(a.layer).sigma);
    const Blob blob = save(a.layer);
    ASSERT_EQ(sn_layer_load(b.layer, blob.data(), blob.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_layer_get_scale(b.layer, &sb, nullptr), SN_SUCCESS);
    EXPECT_EQ(sb, sa) << "saved with bound " << saved;
  }
}

// A γ bound (σReparam's learnable scalar) may be negative, and so the scale γ / σ: such a layer's
// checkpoint loads back, bitwise, and its futures agree.
TEST_F(Checkpoint, NegativeGammaScaleRoundTrips) {
  const float gamma = -0.5f;
  Trained a(cpu_desc({8, 6}), rng, 0), b(cpu_desc({8, 6}), rng, 2);
  ASSERT_EQ(sn_layer_set_gamma(a.layer, &gamma), SN_SUCCESS);
  ASSERT_EQ(sn_layer_set_gamma(b.layer, &gamma), SN_SUCCESS);
  std::vector<float> out(a.W.size()), ob(a.W.size());
  for (int s = 0; s < 3; ++s) ASSERT_EQ(sn_forward(a.layer, a.W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  float scale = 0.f;
  ASSERT_EQ(sn_layer_get_scale(a.layer, &scale, nullptr), SN_SUCCESS);
  ASSERT_LT(scale, 0.f);
  const Blob blob = save(a.layer);
  ASSERT_EQ(sn_layer_load(b.layer, blob.data(), blob.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_EQ(save(b.layer), blob);
  ASSERT_EQ(sn_forward(a.layer, a.W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_forward(b.layer, a.W.data(), ob.data(), 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(out, ob);
  EXPECT_EQ(save(a.layer), save(b.layer));
  // An infinite γ: the scale is infinite and the health word says so (SN_HEALTH_SCALE), and the
  // checkpoint loads back; so does one saved after the bit was read and cleared
  // (sn_layer_get_health), the scale still infinite: the installed health word records it again.
  const float inf = INFINITY;
  ASSERT_EQ(sn_layer_set_gamma(a.layer, &inf), SN_SUCCESS);
  ASSERT_EQ(sn_forward(a.layer, a.W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  const Blob with_inf = save(a.layer);
  EXPECT_EQ(get_le(with_inf, with_inf.size() - 8, 4), uint64_t(SN_HEALTH_SCALE));
  ASSERT_EQ(sn_layer_load(b.layer, with_inf.data(), with_inf.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_EQ(save(b.layer), with_inf);
  uint32_t health = 0;
  ASSERT_EQ(sn_layer_get_health(a.layer, &health, 1, nullptr), SN_SUCCESS);
  EXPECT_EQ(health, uint32_t(SN_HEALTH_SCALE));
  const Blob cleared = save(a.layer);
  EXPECT_EQ(get_le(cleared, cleared.size() - 8, 4), 0u);
  ASSERT_EQ(sn_layer_load(b.layer, cleared.data(), cleared.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_EQ(save(b.layer), with_inf) << "the scale as saved, SN_HEALTH_SCALE recorded";
}

// The layer keeps its own settings; the blob's are recorded for inspection. A different norm
// bound gets a recomputed scale (as sn_layer_set_state computes it), not the saved one.
TEST_F(Checkpoint, LayerKeepsItsSettings) {
  sn_layer_desc_t da = cpu_desc({8, 6}), db = da;
  da.norm_bound = 0.25f;  // active: σ > 0.25
  da.eps = 1e-4f;
  db.n_power_iterations = 4;
  db.seed = 77;
  Trained a(da, rng, 3), b(db, rng, 1);
  const Blob blob = save(a.layer);
  ASSERT_EQ(sn_layer_load(b.layer, blob.data(), blob.size(), nullptr), SN_SUCCESS);
  const Blob after = save(b.layer);
  const Layout L(2);
  EXPECT_EQ(get_le(after, L.npi, 4), 4u);
  EXPECT_EQ(get_le(after, L.eps, 4), bits(db.eps));
  EXPECT_EQ(get_le(after, L.bound, 4), bits(0.f));
  EXPECT_EQ(get_le(after, L.seed, 8), 77u);
  EXPECT_EQ(get_le(after, L.forwards, 8), 3u) << "the forward count is restored";
  EXPECT_TRUE(same_state(get_state(a.layer), get_state(b.layer)));
  float sa = 0, sb = 0, sigma = 0;
  ASSERT_EQ(sn_layer_get_scale(a.layer, &sa, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_get_scale(b.layer, &sb, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_get_sigma(b.layer, &sigma, nullptr, nullptr), SN_SUCCESS);
  EXPECT_EQ(sa, 1.f / (sigma / 0.25f));
  EXPECT_EQ(sb, 1.f / sigma);
}

// sn_layer_reset(seed) makes `seed` the layer's seed: the checkpoint records the seed its u and v
// were drawn from, and a layer created with that seed has the same state.
TEST_F(Checkpoint, ResetRecordsItsSeed) {
  sn_layer_desc_t d = cpu_desc({8, 6});
  d.seed = 5;
  Trained a(d, rng, 2);
  ASSERT_EQ(sn_layer_reset(a.layer, 91, nullptr), SN_SUCCESS);
  EXPECT_EQ(get_le(save(a.layer), Layout(2).seed, 8), 91u);
  d.seed = 91;
  LayerPtr fresh(d);
  EXPECT_TRUE(same_state(get_state(a.layer), get_state(fresh)));
}

// Checkpoints are backend-independent: CPU → CUDA → CPU is bitwise. Needs a GPU.
TEST_F(Checkpoint, CrossBackendIsBitwise) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    GTEST_SKIP() << "no CUDA device: the CPU <-> CUDA checkpoint exchange is not tested here";
  }
  for (const auto &shape : {std::vector<int64_t>{8, 6}, std::vector<int64_t>{33, 5, 3}, std::vector<int64_t>{17}}) {
    Trained cpu(cpu_desc(shape), rng, 4);
    sn_layer_desc_t dg = cpu_desc(shape);
    dg.backend = SN_BACKEND_CUDA;
    LayerPtr gpu(dg);
    ASSERT_TRUE(gpu.p);
    const Blob blob = save(cpu.layer);
    ASSERT_EQ(sn_layer_load(gpu, blob.data(), blob.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
    EXPECT_EQ(save(gpu), blob) << shape_str(shape);
    EXPECT_TRUE(same_state(get_state(gpu), get_state(cpu.layer)));
    LayerPtr back(cpu_desc(shape));
    const Blob from_gpu = save(gpu);
    ASSERT_EQ(sn_layer_load(back, from_gpu.data(), from_gpu.size(), nullptr), SN_SUCCESS);
    EXPECT_EQ(save(back), blob);
    // A rejected blob leaves the CUDA layer untouched too.
    Blob bad = blob;
    bad[40] ^= 1;
    expect_rejected(gpu, bad, SN_ERROR_BAD_CHECKPOINT, "corrupted, CUDA layer");
  }
}

// The health word and a pending restart go through a CUDA layer's checkpoint too (its state word
// is copied from the device): into another CUDA layer, whose next forwards are then bitwise those
// of the original, and into a CPU layer.
TEST_F(Checkpoint, CudaLayerCarriesTheHealthWord) {
  REQUIRE_GPU();
  struct Dev {
    void *p = nullptr;
    explicit Dev(size_t bytes) {
      if (cudaMalloc(&p, bytes) != cudaSuccess) p = nullptr;
    }
    ~Dev() { cudaFree(p); }
  };
  const std::vector<int64_t> shape{33, 20};
  Trained host(cpu_desc(shape), rng, 0);  // its W: a gapped matrix
  const size_t n = host.W.size();
  Dev W(n * 4), Z(n * 4), O1(n * 4), O2(n * 4);
  ASSERT_TRUE(W.p && Z.p && O1.p && O2.p);
  CUDA_OK(cudaMemcpy(W.p, host.W.data(), n * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemset(Z.p, 0, n * 4));
  sn_layer_desc_t dg = cpu_desc(shape);
  dg.backend = SN_BACKEND_CUDA;
  LayerPtr a(dg), b(dg), c(cpu_desc(shape));
  ASSERT_TRUE(a.p && b.p && c.p);
  ASSERT_EQ(sn_forward(a, W.p, O1.p, 1, nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_forward(a, Z.p, O1.p, 1, nullptr), SN_SUCCESS);  // σ = 0: the restart requested
  uint32_t ha = 0, hb = 0, hc = 0;
  ASSERT_EQ(sn_layer_get_health(a, &ha, 0, nullptr), SN_SUCCESS);
  ASSERT_EQ(ha, uint32_t(SN_HEALTH_ZERO));
  const Blob blob = save(a);
  EXPECT_EQ(get_le(blob, blob.size() - 8, 4), uint64_t(SN_HEALTH_ZERO) | 0x80000000u);
  ASSERT_EQ(sn_layer_load(b, blob.data(), blob.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
  ASSERT_EQ(sn_layer_load(c, blob.data(), blob.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_EQ(save(b), blob);
  EXPECT_EQ(save(c), blob);
  ASSERT_EQ(sn_forward(a, W.p, O1.p, 1, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_forward(b, W.p, O2.p, 1, nullptr), SN_SUCCESS);
  std::vector<float> out(n);
  ASSERT_EQ(sn_forward(c, host.W.data(), out.data(), 1, nullptr), SN_SUCCESS);
  std::vector<unsigned char> o1(n * 4), o2(n * 4);
  CUDA_OK(cudaMemcpy(o1.data(), O1.p, n * 4, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(o2.data(), O2.p, n * 4, cudaMemcpyDeviceToHost));
  EXPECT_EQ(o1, o2);
  EXPECT_EQ(save(a), save(b));
  ASSERT_EQ(sn_layer_get_health(a, &ha, 0, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_get_health(b, &hb, 0, nullptr), SN_SUCCESS);
  ASSERT_EQ(sn_layer_get_health(c, &hc, 0, nullptr), SN_SUCCESS);
  EXPECT_EQ(ha, uint32_t(SN_HEALTH_ZERO | SN_HEALTH_RECOVERED));
  EXPECT_EQ(hb, ha);
  EXPECT_EQ(hc, ha) << "the CPU layer restarted from ones as well";
}

// The recipe for PyTorch checkpoints. PyTorch's state_dict has no σ and no warm-up flag, only the
// raw weight and the two vectors, in exactly specnorm's layout:
//
//   torch.nn.utils.parametrizations.spectral_norm(module, name="weight", dim=0):
//     "parametrizations.weight.original"  W, the raw weight (shape as the module's weight)
//     "parametrizations.weight.0._u"      u, h = W.shape[dim] floats
//     "parametrizations.weight.0._v"      v, w = W.numel() / h floats
//     order u first (SN_ORDER_U_FIRST, the default)
//
//   legacy torch.nn.utils.spectral_norm(module, name="weight", dim=0):
//     "weight_orig"  W, the raw weight
//     "weight_u"     u, h floats        (same layout as ours)
//     "weight_v"     v, w floats        (same layout as ours; very old state dicts lack it:
//                                        load those into PyTorch once, whose load hook recreates it)
//     "weight"       W_sn of the last forward: not needed
//     order v first: SN_ORDER_V_FIRST
//
// dim is 0 except ConvTranspose (dim = 1); the matrix view moves `dim` to the front, so for a
// ConvTranspose2d weight (in, out, kh, kw) h = out and w = in·kh·kw, exactly what PyTorch
// flattens. Both implementations have already warmed u and v up (PyTorch: 15 iterations at
// construction; legacy: every training forward), so pass warmed_up = 1. σ is not stored by
// PyTorch: pass 0 ("no estimate yet"); the next forward computes it: an eval forward as
// σ = uᵀ M v from the loaded vectors (what PyTorch's eval forward gives), a training forward after
// n_power_iterations iterations from them (what PyTorch's next training step gives).
// After that, sn_layer_save gives a specnorm checkpoint with everything in one blob.
TEST_F(Checkpoint, LoadsPyTorchBuffers) {
  SCOPED_TRACE("SN_TEST_SEED=" + std::to_string(seed));
  // Stand-ins for torch.load(...)["state_dict"] of nn.ConvTranspose2d(4, 3, 2) with each
  // implementation: weight (in=4, out=3, 2, 2), dim = 1, so h = 3 and w = 4·2·2 = 16.
  const std::vector<int64_t> shape{4, 3, 2, 2};
  const int dim = 1;
  const int64_t h = 3, w = 16;
  // What PyTorch keeps: u, v from randn, normalized, then 15 power iterations with the weight at
  // construction (legacy: the iterations of its training forwards), in the implementation's order.
  const sn_view_t view = sn_ref_view(int(shape.size()), shape.data(), dim);
  auto warm_buffers = [&](const std::vector<float> &W, sn_order_t order) {
    std::vector<double> u = to_double(rng.normals(h)), v = to_double(rng.normals(w));
    const double nu = sn_ref_norm(u.data(), h), nv = sn_ref_norm(v.data(), w);
    for (auto &x : u) x /= nu;
    for (auto &x : v) x /= nv;
    for (int k = 0; k < 15; ++k) sn_ref_iterate(W.data(), SN_DTYPE_FLOAT32, view, u.data(), v.data(), 1e-12, order);
    return std::make_pair(std::vector<float>(u.begin(), u.end()), std::vector<float>(v.begin(), v.end()));
  };
  const std::vector<float> W_modern = rng.normals(4 * 3 * 2 * 2), W_legacy = rng.normals(4 * 3 * 2 * 2);
  const auto uv_modern = warm_buffers(W_modern, SN_ORDER_U_FIRST), uv_legacy = warm_buffers(W_legacy, SN_ORDER_V_FIRST);
  std::map<std::string, std::vector<float>> modern = {{"parametrizations.weight.original", W_modern},
                                                      {"parametrizations.weight.0._u", uv_modern.first},
                                                      {"parametrizations.weight.0._v", uv_modern.second}};
  std::map<std::string, std::vector<float>> legacy = {
      {"weight_orig", W_legacy}, {"weight_u", uv_legacy.first}, {"weight_v", uv_legacy.second}};

  struct Recipe {
    const std::map<std::string, std::vector<float>> *sd;
    const char *W, *u, *v;
    sn_order_t order;
  };
  for (const Recipe &r : {Recipe{&modern, "parametrizations.weight.original", "parametrizations.weight.0._u",
                                 "parametrizations.weight.0._v", SN_ORDER_U_FIRST},
                          Recipe{&legacy, "weight_orig", "weight_u", "weight_v", SN_ORDER_V_FIRST}}) {
    SCOPED_TRACE(r.u);
    const std::vector<float> &W = r.sd->at(r.W), &u = r.sd->at(r.u), &v = r.sd->at(r.v);
    ASSERT_EQ(int64_t(u.size()), h);
    ASSERT_EQ(int64_t(v.size()), w);

    // The recipe.
    sn_layer_desc_t d;
    ASSERT_EQ(sn_layer_desc_init(&d, int(shape.size()), shape.data()), SN_SUCCESS);
    d.dim = dim;
    d.order = r.order;
    d.backend = SN_BACKEND_CPU;  // SN_BACKEND_CUDA in training; W would then be device memory
    LayerPtr layer(d);
    ASSERT_EQ(sn_layer_set_state(layer, u.data(), v.data(), /*sigma=*/0.f, /*warmed_up=*/1, nullptr),
              SN_SUCCESS)
        << sn_last_error_message();

    // What PyTorch computes from the same buffers, in double (eval: σ = uᵀ M v; train: one
    // iteration in the implementation's order, then σ).
    const sn_view_t vw = view;
    std::vector<double> ud(u.begin(), u.end()), vd(v.begin(), v.end()), t(h);
    const double sigma_eval = sn_ref_sigma(W.data(), SN_DTYPE_FLOAT32, vw, ud.data(), vd.data(), t.data());
    std::vector<float> out(W.size());
    ASSERT_EQ(sn_forward(layer, W.data(), out.data(), /*training=*/0, nullptr), SN_SUCCESS);
    State s = get_state(layer);
    EXPECT_NEAR(s.sigma, sigma_eval, 1e-6 * std::fabs(sigma_eval));
    EXPECT_TRUE(bitwise_equal(s.u, u) && bitwise_equal(s.v, v)) << "eval keeps PyTorch's vectors";
    for (size_t k = 0; k < W.size(); ++k) EXPECT_NEAR(out[k], W[k] / sigma_eval, 1e-6 * (1 + std::fabs(out[k])));

    const double sigma_train = sn_ref_iterate(W.data(), SN_DTYPE_FLOAT32, vw, ud.data(), vd.data(), 1e-12, r.order);
    ASSERT_EQ(sn_forward(layer, W.data(), out.data(), /*training=*/1, nullptr), SN_SUCCESS);
    s = get_state(layer);
    EXPECT_NEAR(s.sigma, sigma_train, 1e-6 * sigma_train) << "no warm-up ran: one iteration only";
    for (int64_t i = 0; i < h; ++i) EXPECT_NEAR(s.u[i], ud[i], 1e-6);
    for (int64_t j = 0; j < w; ++j) EXPECT_NEAR(s.v[j], vd[j], 1e-6);

    // From here on a specnorm checkpoint holds it all.
    const Blob blob = save(layer);
    LayerPtr restored(d);
    ASSERT_EQ(sn_layer_load(restored, blob.data(), blob.size(), nullptr), SN_SUCCESS);
    EXPECT_TRUE(same_state(get_state(restored), s));
  }
}

// The health word travels with the state (version 2): its flags, and the request to restart from
// ones that a zero σ leaves for the next training forward, so that a run resumed from a
// checkpoint continues bitwise as the uninterrupted one (the restart, SN_HEALTH_RECOVERED).
TEST_F(Checkpoint, HealthWordAndRestartSurviveALoad) {
  for (const sn_order_t order : {SN_ORDER_U_FIRST, SN_ORDER_V_FIRST}) {
    SCOPED_TRACE(order == SN_ORDER_U_FIRST ? "u-first" : "v-first");
    sn_layer_desc_t d = cpu_desc({8, 6});
    d.order = order;
    Trained a(d, rng, 3), b(d, rng, 5);
    std::vector<float> W = a.W, bad(W.size(), 0.f), out(W.size());
    // A NaN step (SN_HEALTH_NONFINITE), then a zero step: σ = 0, the restart requested.
    bad[7] = NAN;
    ASSERT_EQ(sn_forward(a.layer, bad.data(), out.data(), 1, nullptr), SN_SUCCESS);
    std::fill(bad.begin(), bad.end(), 0.f);
    ASSERT_EQ(sn_forward(a.layer, bad.data(), out.data(), 1, nullptr), SN_SUCCESS);
    const Blob blob = save(a.layer);
    uint32_t ha = 0, hb = 0;
    ASSERT_EQ(sn_layer_get_health(a.layer, &ha, 0, nullptr), SN_SUCCESS);
    ASSERT_EQ(ha, uint32_t(SN_HEALTH_NONFINITE | SN_HEALTH_ZERO));
    EXPECT_EQ(get_le(blob, blob.size() - 8, 4), uint64_t(ha | 0x80000000u)) << "flags and restart request";
    ASSERT_EQ(sn_layer_load(b.layer, blob.data(), blob.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
    ASSERT_EQ(sn_layer_get_health(b.layer, &hb, 0, nullptr), SN_SUCCESS);
    EXPECT_EQ(hb, ha);
    EXPECT_EQ(save(b.layer), blob);
    // The next training forwards: both restart from ones, bitwise alike.
    std::vector<float> ob(W.size());
    for (int step = 0; step < 3; ++step) {
      ASSERT_EQ(sn_forward(a.layer, W.data(), out.data(), 1, nullptr), SN_SUCCESS);
      ASSERT_EQ(sn_forward(b.layer, W.data(), ob.data(), 1, nullptr), SN_SUCCESS);
      EXPECT_EQ(out, ob) << "step " << step;
      EXPECT_EQ(save(a.layer), save(b.layer)) << "step " << step;
    }
    ASSERT_EQ(sn_layer_get_health(b.layer, &hb, 0, nullptr), SN_SUCCESS);
    EXPECT_EQ(hb, uint32_t(SN_HEALTH_NONFINITE | SN_HEALTH_ZERO | SN_HEALTH_RECOVERED));
    // A cleared health word saves as 0 and loads as 0 over a layer whose word is not.
    ASSERT_EQ(sn_layer_get_health(a.layer, &ha, 1, nullptr), SN_SUCCESS);
    const Blob clean = save(a.layer);
    EXPECT_EQ(get_le(clean, clean.size() - 8, 4), 0u);
    ASSERT_EQ(sn_layer_load(b.layer, clean.data(), clean.size(), nullptr), SN_SUCCESS);
    ASSERT_EQ(sn_layer_get_health(b.layer, &hb, 0, nullptr), SN_SUCCESS);
    EXPECT_EQ(hb, 0u);
  }
  // A 1-D weight of zeros leaves u = 0 with no restart request (σ = eps is usable): it
  // round-trips as it is.
  Trained a(cpu_desc({7}), rng, 2), b(cpu_desc({7}), rng, 4);
  std::vector<float> zero(7, 0.f), out(7);
  ASSERT_EQ(sn_forward(a.layer, zero.data(), out.data(), 1, nullptr), SN_SUCCESS);
  const State sa = get_state(a.layer);
  EXPECT_TRUE(std::all_of(sa.u.begin(), sa.u.end(), [](float x) { return x == 0.f; }));
  const Blob blob = save(a.layer);
  EXPECT_EQ(get_le(blob, blob.size() - 8, 4), 0u);
  ASSERT_EQ(sn_layer_load(b.layer, blob.data(), blob.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
  EXPECT_EQ(save(b.layer), blob);
}

// Version-1 blobs (no health word) still load, with the state bitwise and the health word as
// sn_layer_set_state leaves it: cleared, the restart requested only for a zero-norm u or v. Each
// is checked as strictly as version 2: truncated or with a byte changed, it is rejected.
TEST_F(Checkpoint, ReadsVersion1) {
  for (const auto &shape : {std::vector<int64_t>{8, 6}, std::vector<int64_t>{3, 2, 2, 2, 1}, std::vector<int64_t>{5}}) {
    SCOPED_TRACE(shape_str(shape));
    Trained a(cpu_desc(shape), rng, 3), b(cpu_desc(shape), rng, 5);
    std::vector<float> zero(a.W.size(), 0.f), out(a.W.size());
    ASSERT_EQ(sn_forward(a.layer, zero.data(), out.data(), 1, nullptr), SN_SUCCESS);  // health: zero, restart
    const Blob v2 = save(a.layer);
    const Blob v1 = as_version1(v2);
    ASSERT_EQ(v1.size() + 4, v2.size());
    ASSERT_EQ(sn_layer_load(b.layer, v1.data(), v1.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
    EXPECT_TRUE(same_state(get_state(b.layer), get_state(a.layer)));
    uint32_t hb = 1;
    ASSERT_EQ(sn_layer_get_health(b.layer, &hb, 0, nullptr), SN_SUCCESS);
    EXPECT_EQ(hb, 0u);
    // Saved again as version 2: the health word cleared (a 1-D layer's zero weight gives u = 0
    // with σ = eps: no degenerate step, and a 1-D weight has no restart to request).
    Blob expect = v2;
    put_le(expect, expect.size() - 8, 0u, 4);
    reseal(expect);
    {
      const Blob got = save(b.layer);
      size_t at = 0;
      while (at < got.size() && at < expect.size() && got[at] == expect[at]) ++at;
      EXPECT_EQ(got, expect) << "saved again as version 2; first difference at byte " << at << " of " << got.size();
    }
    // Damaged version-1 blobs.
    Trained c(cpu_desc(shape), rng, 2);
    for (size_t n : {v1.size() - 1, v1.size() - 4, v1.size() + 4}) {
      Blob cut = v1;
      cut.resize(n, 0);
      expect_rejected(c.layer, cut, SN_ERROR_BAD_CHECKPOINT, "version 1, " + std::to_string(n) + " bytes");
    }
    Blob flipped = v1;
    flipped[v1.size() - 6] ^= 4;  // the scale
    expect_rejected(c.layer, flipped, SN_ERROR_BAD_CHECKPOINT, "version 1, scale changed");
    // A zero u in a version-1 blob asks for the restart, as sn_layer_set_state does (not for a 1-D
    // weight, whose forward computes u afresh).
    Blob zu = v1;
    int64_t h = 0, w = 0;
    ASSERT_EQ(sn_layer_get_dims(a.layer, &h, &w), SN_SUCCESS);
    const size_t u_at = Layout(int(shape.size())).header;
    for (int64_t i = 0; i < h; ++i) put_le(zu, u_at + 4 * size_t(i), 0, 4);
    reseal(zu);
    ASSERT_EQ(sn_layer_load(c.layer, zu.data(), zu.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
    const Blob saved = save(c.layer);
    EXPECT_EQ(get_le(saved, saved.size() - 8, 4), shape.size() > 1 ? 0x80000000u : 0u) << "the restart request only";
    // So does a zero v; a v whose only non-zero is v[0] (or v[w − 1]) is not zero.
    const size_t v_at = u_at + 4 * size_t(h);
    for (const int64_t keep : {int64_t(-1), int64_t(0), w - 1}) {
      SCOPED_TRACE("v zero but for element " + std::to_string(keep));
      Blob zv = v1;
      for (int64_t j = 0; j < w; ++j)
        if (j != keep) put_le(zv, v_at + 4 * size_t(j), 0, 4);
      reseal(zv);
      ASSERT_EQ(sn_layer_load(c.layer, zv.data(), zv.size(), nullptr), SN_SUCCESS) << sn_last_error_message();
      const Blob sv = save(c.layer);
      EXPECT_EQ(get_le(sv, sv.size() - 8, 4), keep < 0 && shape.size() > 1 ? 0x80000000u : 0u);
    }
  }
}
