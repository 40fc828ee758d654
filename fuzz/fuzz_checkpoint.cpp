// libFuzzer harness: bytes -> sn_layer_load into fixed CPU layers (fuzz_common.h, kFixedLayers).
// Input byte 0 selects the layer(s) and whether to reseal the blob's CRC-32C; the rest is the blob.
// Invariants: no read outside the blob (AddressSanitizer: the blob is copied into an allocation
// of exactly its size), a failure is BAD_CHECKPOINT / CHECKPOINT_MISMATCH / CHECKPOINT_VERSION
// and leaves the layer bitwise untouched, a success stores exactly the blob's u, v, σ, 1/σ, flag
// and counter (and, from version 2, its health word, with SN_HEALTH_SCALE added where the scale is
// not finite; version 1 blobs save back as version 2,
// 4 bytes longer), and a forward after it keeps the state finite.
#include <cfloat>
#include <vector>

#include "fuzz_common.h"

using namespace snfuzz;

namespace {

struct Target {
  sn_layer_t *layer = nullptr;
  std::vector<uint8_t> pristine;  // its checkpoint, restored after every successful load
  std::vector<float> W;
};

std::vector<uint8_t> save(sn_layer_t *l) {
  size_t n = 0;
  SN_FUZZ_CHECK(sn_layer_checkpoint_size(l, &n) == SN_SUCCESS);
  std::vector<uint8_t> b(n);
  SN_FUZZ_CHECK(sn_layer_save(l, b.data(), n, nullptr, nullptr) == SN_SUCCESS);
  return b;
}

Target *targets() {
  static Target t[4];
  static bool ready = false;
  if (ready) return t;
  for (int k = 0; k < 4; ++k) {
    const sn_layer_desc_t d = fixed_desc(kFixedLayers[k], 1000 + uint64_t(k));
    SN_FUZZ_CHECK(sn_layer_create(&t[k].layer, &d) == SN_SUCCESS);
    int64_t h = 0, w = 0;
    sn_layer_get_dims(t[k].layer, &h, &w);
    // A warmed-up state with one forward, stored as the pristine checkpoint. W: float bits read
    // by dtype below; fill with a fixed pattern of small values.
    t[k].W.resize(size_t(h * w));
    for (size_t i = 0; i < t[k].W.size(); ++i) t[k].W[i] = float((i * 7919) % 23) / 23.0f - 0.4f;
    std::vector<uint16_t> half(t[k].W.size());
    std::vector<uint8_t> out(t[k].W.size() * 4);
    const void *Wp = t[k].W.data();
    if (d.dtype != SN_DTYPE_FLOAT32) {
      for (size_t i = 0; i < half.size(); ++i) half[i] = uint16_t(0x3C00 + (i % 7) * 0x40);  // ~1..1.4
      Wp = half.data();
    }
    SN_FUZZ_CHECK(sn_forward(t[k].layer, Wp, out.data(), 1, nullptr) == SN_SUCCESS);
    t[k].pristine = save(t[k].layer);
  }
  ready = true;
  return t;
}

uint32_t le32(const uint8_t *p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }

void check_finite_state(sn_layer_t *l) {
  int64_t h = 0, w = 0;
  sn_layer_get_dims(l, &h, &w);
  std::vector<float> u(static_cast<size_t>(h)), v(static_cast<size_t>(w));
  float s = 0, inv = 0;
  SN_FUZZ_CHECK(sn_layer_get_state(l, u.data(), v.data(), &s, nullptr, nullptr) == SN_SUCCESS);
  SN_FUZZ_CHECK(sn_layer_get_sigma(l, nullptr, &inv, nullptr) == SN_SUCCESS);
  for (float x : u) SN_FUZZ_CHECK(std::isfinite(x));
  for (float x : v) SN_FUZZ_CHECK(std::isfinite(x));
  SN_FUZZ_CHECK(std::isfinite(s) && s >= 0);
  SN_FUZZ_CHECK(std::isfinite(inv) && inv >= 0);
  // 1/σ as every commit writes it (below FLT_MIN, 1/σ of σ > 2^126, the loader also takes 0, which
  // a process that flushes subnormals writes, or a value within one subnormal step of 1/σ).
  const float expect = s > 0 ? 1.0f / s : 0.0f;
  const bool tiny = s > 0 && 1.0 / s < FLT_MIN && (inv == 0 || std::fabs(inv - 1.0 / s) <= std::ldexp(1.0, -149));
  SN_FUZZ_CHECK(inv == expect || tiny);
}

void load_into(Target &t, const std::vector<uint8_t> &blob) {
  static const uint8_t none = 0;  // an empty blob still has an address (NULL is NULL_POINTER)
  const sn_status_t st = sn_layer_load(t.layer, blob.empty() ? &none : blob.data(), blob.size(), nullptr);
  if (st != SN_SUCCESS) {
    SN_FUZZ_CHECK(st == SN_ERROR_BAD_CHECKPOINT || st == SN_ERROR_CHECKPOINT_MISMATCH ||
                  st == SN_ERROR_CHECKPOINT_VERSION);
    check_failure(st);
    SN_FUZZ_CHECK(save(t.layer) == t.pristine);  // untouched
    return;
  }
  // Accepted: exactly a checkpoint of this layer's size (version 1: without the health word), and
  // the state is the blob's.
  const std::vector<uint8_t> now = save(t.layer);
  const uint32_t version = le32(blob.data() + 8);
  SN_FUZZ_CHECK(version == 1 || version == 2);
  const size_t health = version == 2 ? 4 : 0;  // bytes of the health word in the blob
  SN_FUZZ_CHECK(now.size() == blob.size() + 4 - health);
  const size_t header = le32(blob.data() + 12);
  // u, v, σ, 1/σ (the scale may be recomputed), then the scale, the health word and the CRC.
  const size_t payload_end = blob.size() - 4 - health - 4;
  SN_FUZZ_CHECK(std::memcmp(now.data(), blob.data(), 8) == 0 && le32(now.data() + 8) == 2);
  SN_FUZZ_CHECK(std::memcmp(now.data() + 12, blob.data() + 12, 4) == 0);
  SN_FUZZ_CHECK(std::memcmp(now.data() + header, blob.data() + header, payload_end - header) == 0);
  // The health word installed records a non-finite scale (SN_HEALTH_SCALE) whatever the blob's says.
  float now_scale = 0.f;
  std::memcpy(&now_scale, now.data() + now.size() - 12, 4);
  const uint32_t scale_bit = std::isfinite(now_scale) ? 0u : uint32_t(SN_HEALTH_SCALE);
  if (version == 2) {
    SN_FUZZ_CHECK(le32(now.data() + now.size() - 8) == (le32(blob.data() + blob.size() - 8) | scale_bit));
  } else {  // version 1: the health word sn_layer_set_state leaves (the restart for a zero u or v,
            // except for a 1-D weight)
    const int64_t h = int64_t(le32(blob.data() + header - 16)), w = int64_t(le32(blob.data() + header - 8));
    bool zero_u = true, zero_v = true;
    for (int64_t i = 0; i < h; ++i) zero_u = zero_u && (le32(blob.data() + header + 4 * i) & 0x7FFFFFFFu) == 0;
    for (int64_t j = 0; j < w; ++j) zero_v = zero_v && (le32(blob.data() + header + 4 * (h + j)) & 0x7FFFFFFFu) == 0;
    const bool one_d = le32(blob.data() + 16) == 1;  // ndim
    SN_FUZZ_CHECK(le32(now.data() + now.size() - 8) == ((!one_d && (zero_u || zero_v) ? 0x80000000u : 0u) | scale_bit));
  }
  const size_t warmed_at = header - 8 - 8 - 8 - 4;  // warmed_up, forwards precede h and w
  SN_FUZZ_CHECK(std::memcmp(now.data() + warmed_at, blob.data() + warmed_at, 12) == 0);
  check_finite_state(t.layer);
  // Training from any accepted state keeps it finite.
  std::vector<uint8_t> W(t.W.size() * 4, 0), out(W.size());
  std::memcpy(W.data(), t.W.data(), W.size());  // float bits; for 16-bit dtypes half of it
  SN_FUZZ_CHECK(sn_forward(t.layer, W.data(), out.data(), 1, nullptr) == SN_SUCCESS);
  SN_FUZZ_CHECK(sn_forward(t.layer, W.data(), out.data(), 0, nullptr) == SN_SUCCESS);
  check_finite_state(t.layer);
  // Back to the pristine state for the next input.
  SN_FUZZ_CHECK(sn_layer_load(t.layer, t.pristine.data(), t.pristine.size(), nullptr) == SN_SUCCESS);
  SN_FUZZ_CHECK(save(t.layer) == t.pristine);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  Target *t = targets();
  const uint8_t sel = data[0];
  std::vector<uint8_t> blob(data + 1, data + size);  // exact size: ASan sees any over-read
  if ((sel & 0x80) && blob.size() >= 4) {
    const uint32_t c = crc32c(blob.data(), blob.size() - 4);
    for (int k = 0; k < 4; ++k) blob[blob.size() - 4 + k] = uint8_t(c >> (8 * k));
  }
  if (sel & 4) {
    for (int k = 0; k < 4; ++k) load_into(t[k], blob);
  } else {
    load_into(t[sel & 3], blob);
  }
  return 0;
}
