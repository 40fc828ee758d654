// libFuzzer harness: bytes -> sn_layer_desc_t -> sn_layer_create (CPU backend, or whatever
// backend value the bytes hold), then, for small valid CPU layers, every per-step call with
// fuzzed weights (finite, NaN, infinite, subnormal: whatever the bytes spell in the layer's dtype).
// Invariants: a defined status and a message naming it on every failure, *layer NULL after a
// failed create, the matrix view consistent with the shape, and u, v, σ, 1/σ always finite
// whatever the weights (README, "Degenerate steps"), checkpoints that round-trip.
#include <algorithm>
#include <vector>

#include "fuzz_common.h"

using namespace snfuzz;

namespace {

constexpr int64_t kMaxNumel = int64_t(1) << 20;  // never ask create for more (memory)
constexpr int64_t kMaxStepNumel = 4096;           // forward/backward only below this (speed)

// The element count if the shape is valid and ndim in range, else -1 (invalid: create rejects it
// before allocating). Saturates at INT64_MAX / 4 like create's own check.
int64_t numel_of(const sn_layer_desc_t &d) {
  if (d.ndim < 1 || d.ndim > SN_MAX_DIMS) return -1;
  int64_t n = 1;
  for (int k = 0; k < d.ndim; ++k) {
    if (d.shape[k] <= 0) return -1;
    if (n > (INT64_MAX / 4) / d.shape[k]) return -1;  // SIZE_OVERFLOW in create
    n *= d.shape[k];
  }
  return n;
}

void check_state(sn_layer_t *l, int64_t h, int64_t w) {
  std::vector<float> u(static_cast<size_t>(h)), v(static_cast<size_t>(w));
  float sigma = -1, inv = -1, scale = 0;
  int warmed = -1;
  SN_FUZZ_CHECK(sn_layer_get_state(l, u.data(), v.data(), &sigma, &warmed, nullptr) == SN_SUCCESS);
  SN_FUZZ_CHECK(sn_layer_get_sigma(l, nullptr, &inv, nullptr) == SN_SUCCESS);
  SN_FUZZ_CHECK(sn_layer_get_scale(l, &scale, nullptr) == SN_SUCCESS);
  for (float x : u) SN_FUZZ_CHECK(std::isfinite(x));
  for (float x : v) SN_FUZZ_CHECK(std::isfinite(x));
  SN_FUZZ_CHECK(std::isfinite(sigma) && sigma >= 0.0f);
  // 1/σ and the scale are finite: a σ below FLT_MIN is never committed (this harness once found
  // a subnormal σ whose 1/σ overflowed to +inf).
  SN_FUZZ_CHECK(std::isfinite(inv) && inv >= 0.0f);
  SN_FUZZ_CHECK(sigma > 0.0f ? inv == 1.0f / sigma : inv == 0.0f);
  SN_FUZZ_CHECK(std::isfinite(scale));
  SN_FUZZ_CHECK(warmed == 0 || warmed == 1);
}

// Whether the weight's bytes hold a NaN in its dtype (exponent all ones, mantissa not zero).

void exercise(sn_layer_t *l, const sn_layer_desc_t &d, int64_t numel, unsigned flags, Reader &r) {
  int64_t h = 0, w = 0;
  SN_FUZZ_CHECK(sn_layer_get_dims(l, &h, &w) == SN_SUCCESS);
  SN_FUZZ_CHECK(h >= 1 && w >= 1 && h * w == numel);
  check_state(l, h, w);
  // The description: any shape, cut at any size, NUL-terminated within it.
  char text[96];
  size_t len = 0, cut = size_t(numel % 97);
  SN_FUZZ_CHECK(sn_layer_describe(l, text, cut, &len) == SN_SUCCESS);
  SN_FUZZ_CHECK(len > 0 && (cut == 0 || std::strlen(text) == std::min(len, cut - 1)));
  if (numel > kMaxStepNumel) return;

  size_t es = 4;
  if (get_raw(d.dtype) != SN_DTYPE_FLOAT32) es = 2;
  const size_t bytes = size_t(numel) * es;
  std::vector<uint8_t> W(bytes), Wsn(bytes), G(bytes), dW(bytes);
  const size_t left = r.left();
  const uint8_t *src = r.rest();
  for (size_t k = 0; k < bytes; ++k) {
    W[k] = left ? src[k % left] : uint8_t(k * 37 + 11);
    G[k] = left ? src[(k * 7 + 3) % left] : uint8_t(k * 13 + 5);
  }
  sn_status_t st = sn_forward(l, W.data(), Wsn.data(), 1, nullptr);
  SN_FUZZ_CHECK(st == SN_SUCCESS);
  // (This harness once found a 1-D weight holding a NaN getting σ = max(NaN, eps) = eps, so that
  // u = W / eps held the NaN; the state checks below cover it.)
  check_state(l, h, w);
  SN_FUZZ_CHECK(sn_forward(l, W.data(), Wsn.data(), 0, nullptr) == SN_SUCCESS);
  check_state(l, h, w);
  SN_FUZZ_CHECK(sn_forward_scale_only(l, W.data(), 1, nullptr) == SN_SUCCESS);
  SN_FUZZ_CHECK(sn_layer_warmup(l, W.data(), nullptr) == SN_SUCCESS);
  check_state(l, h, w);

  float dgamma = 0;
  st = sn_backward(l, W.data(), G.data(), dW.data(), flags, &dgamma, nullptr);
  if (flags & ~3u) {
    SN_FUZZ_CHECK(st == SN_ERROR_INVALID_VALUE);
    check_failure(st);
  } else {
    SN_FUZZ_CHECK(st == SN_SUCCESS);
  }
  // In place: W_sn = W, dW = G.
  std::vector<uint8_t> Wi = W;
  SN_FUZZ_CHECK(sn_forward(l, Wi.data(), Wi.data(), 1, nullptr) == SN_SUCCESS);
  SN_FUZZ_CHECK(sn_backward(l, W.data(), G.data(), G.data(), flags & 3u, nullptr, nullptr) == SN_SUCCESS);
  check_state(l, h, w);
  // Overlapping but distinct buffers are refused, and change nothing.
  if (numel > 1) {  // W_sn one element after W: they overlap
    std::vector<uint8_t> big(bytes + es);
    std::memcpy(big.data(), W.data(), bytes);
    st = sn_forward(l, big.data(), big.data() + es, 1, nullptr);
    SN_FUZZ_CHECK(st == SN_ERROR_INVALID_VALUE);
    check_failure(st);
  }

  // The state round-trips through a checkpoint, bitwise.
  size_t n = 0;
  SN_FUZZ_CHECK(sn_layer_checkpoint_size(l, &n) == SN_SUCCESS);
  std::vector<uint8_t> blob(n), again(n);
  SN_FUZZ_CHECK(sn_layer_save(l, blob.data(), n, nullptr, nullptr) == SN_SUCCESS);
  SN_FUZZ_CHECK(sn_layer_load(l, blob.data(), n, nullptr) == SN_SUCCESS);
  SN_FUZZ_CHECK(sn_layer_save(l, again.data(), n, nullptr, nullptr) == SN_SUCCESS);
  SN_FUZZ_CHECK(blob == again);
  SN_FUZZ_CHECK(sn_layer_reset(l, d.seed + 1, nullptr) == SN_SUCCESS);
  check_state(l, h, w);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Reader r(data, size);
  const DescBytes in = decode_desc(r);
  const sn_layer_desc_t &d = in.desc;
  const int64_t numel = numel_of(d);
  if (numel > kMaxNumel) return -1;  // valid-looking but too big for a fuzzer: not worth memory

  sn_layer_t *l = reinterpret_cast<sn_layer_t *>(uintptr_t(0x1));  // create must overwrite it
  const sn_status_t st = sn_layer_create(&l, &d);
  if (st != SN_SUCCESS) {
    check_failure(st);
    SN_FUZZ_CHECK(l == nullptr);
    return 0;
  }
  SN_FUZZ_CHECK(l != nullptr);
  SN_FUZZ_CHECK(numel > 0);
  if (get_raw(d.backend) == SN_BACKEND_CPU) exercise(l, d, numel, in.backward_flags, r);
  sn_layer_destroy(l);
  return 0;
}
