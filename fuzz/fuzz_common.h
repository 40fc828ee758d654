// Shared by the fuzz harnesses and the corpus generator: the byte encoding of a descriptor, the
// fixed layers the checkpoint loader is fuzzed against, and the invariants every call must keep.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "specnorm.h"

namespace snfuzz {

// Stop the fuzzer with a message: libFuzzer reports abort() as a crash and saves the input.
[[noreturn]] inline void fail(const char *what, const char *detail = "") {
  std::fprintf(stderr, "specnorm fuzz invariant violated: %s %s\n", what, detail);
  std::abort();
}
#define SN_FUZZ_CHECK(cond) \
  do {                      \
    if (!(cond)) ::snfuzz::fail(#cond, sn_last_error_message()); \
  } while (0)

// Enum fields hold arbitrary ints here (the C library must reject them), but in C++ loading an
// out-of-range enum value is undefined (UBSan: -fsanitize=enum), so they are moved as raw ints.
template <typename E>
inline void set_raw(E &field, int value) {
  static_assert(sizeof(E) == sizeof(int), "enum fields are int-sized");
  std::memcpy(&field, &value, sizeof value);
}
template <typename E>
inline int get_raw(const E &field) {
  int value;
  std::memcpy(&value, &field, sizeof value);
  return value;
}

// A failed call returns a defined status and leaves a message that starts with its name.
inline void check_failure(sn_status_t st) {
  SN_FUZZ_CHECK(st > SN_SUCCESS && st < SN_STATUS_COUNT);
  const char *msg = sn_last_error_message();
  const char *name = sn_status_name(st);
  SN_FUZZ_CHECK(std::strncmp(msg, name, std::strlen(name)) == 0);
}

// Sequential reader: past the end it reads zeros, so every input decodes.
struct Reader {
  const uint8_t *p;
  size_t n, at = 0;
  Reader(const uint8_t *data, size_t size) : p(data), n(size) {}
  uint8_t u8() { return at < n ? p[at++] : 0; }
  int8_t i8() { return static_cast<int8_t>(u8()); }
  uint32_t u32() {
    uint32_t x = 0;
    for (int k = 0; k < 4; ++k) x |= uint32_t(u8()) << (8 * k);
    return x;
  }
  uint64_t u64() {
    uint64_t x = 0;
    for (int k = 0; k < 8; ++k) x |= uint64_t(u8()) << (8 * k);
    return x;
  }
  float f32() {
    const uint32_t b = u32();
    float f;
    std::memcpy(&f, &b, 4);
    return f;
  }
  size_t left() const { return at < n ? n - at : 0; }
  const uint8_t *rest() const { return p + (at < n ? at : n); }
};

// The descriptor encoding of fuzz_desc (all little-endian):
//   u8 flags: bit 0 shapes as raw i64 (else one byte each, value % 17: 0..16, 0 is invalid),
//             bit 1 eps as raw f32 bits (else the default), bit 2 norm_bound as raw f32 bits
//             (else 0), bit 3 raw backend i8 (else CPU), bit 4 raw algo i8 (else DEFAULT)
//   i8 ndim, then min(max(ndim, 0), 8) shapes, i8 dim, i8 dtype, i8 n_power_iterations,
//   i8 warmup_iterations, i8 order, u64 seed, [f32 eps], [f32 norm_bound], [i8 backend],
//   i8 device, [i8 algo], u8 backward flags, then the weight's bytes (repeated to fill W).
struct DescBytes {
  sn_layer_desc_t desc;
  unsigned backward_flags;
};

inline DescBytes decode_desc(Reader &r) {
  DescBytes out;
  std::memset(&out, 0, sizeof out);
  sn_layer_desc_t &d = out.desc;
  const uint8_t flags = r.u8();
  d.ndim = r.i8();
  const int nshape = d.ndim < 0 ? 0 : (d.ndim > SN_MAX_DIMS ? SN_MAX_DIMS : d.ndim);
  for (int k = 0; k < nshape; ++k)
    d.shape[k] = (flags & 1) ? static_cast<int64_t>(r.u64()) : int64_t(r.u8() % 17);
  d.dim = r.i8();
  set_raw(d.dtype, r.i8());
  d.n_power_iterations = r.i8();
  d.warmup_iterations = r.i8();
  set_raw(d.order, r.i8());
  d.seed = r.u64();
  d.eps = (flags & 2) ? r.f32() : 1e-12f;
  d.norm_bound = (flags & 4) ? r.f32() : 0.0f;
  set_raw(d.backend, (flags & 8) ? r.i8() : int(SN_BACKEND_CPU));
  d.device = r.i8();
  set_raw(d.algo, (flags & 16) ? r.i8() : int(SN_ALGO_DEFAULT));
  set_raw(d.eps_mode, (flags & 32) ? r.i8() : int(SN_EPS_CLAMP_NORM));
  out.backward_flags = r.u8();
  return out;
}

// The encoder, for the corpus generator: the inverse of decode_desc for in-range fields.
inline std::vector<uint8_t> encode_desc(const sn_layer_desc_t &d, unsigned backward_flags,
                                        const std::vector<uint8_t> &weights) {
  std::vector<uint8_t> b;
  auto u8 = [&](uint64_t x) { b.push_back(uint8_t(x)); };
  auto le = [&](uint64_t x, int n) {
    for (int k = 0; k < n; ++k) u8(x >> (8 * k));
  };
  uint32_t eps_bits, bound_bits;
  std::memcpy(&eps_bits, &d.eps, 4);
  std::memcpy(&bound_bits, &d.norm_bound, 4);
  bool small = true;
  for (int k = 0; k < d.ndim; ++k) small = small && d.shape[k] >= 0 && d.shape[k] <= 16;
  const bool eps_mode = get_raw(d.eps_mode) != int(SN_EPS_CLAMP_NORM);
  const uint8_t flags = uint8_t((small ? 0 : 1) | 2 | 4 | 8 | 16 | (eps_mode ? 32 : 0));
  u8(flags);
  u8(uint8_t(d.ndim));
  for (int k = 0; k < d.ndim && k < SN_MAX_DIMS; ++k) {
    if (small)
      u8(uint8_t(d.shape[k]));
    else
      le(uint64_t(d.shape[k]), 8);
  }
  u8(uint8_t(d.dim));
  u8(uint8_t(get_raw(d.dtype)));
  u8(uint8_t(d.n_power_iterations));
  u8(uint8_t(d.warmup_iterations));
  u8(uint8_t(get_raw(d.order)));
  le(d.seed, 8);
  le(eps_bits, 4);
  le(bound_bits, 4);
  u8(uint8_t(get_raw(d.backend)));
  u8(uint8_t(d.device));
  u8(uint8_t(get_raw(d.algo)));
  if (eps_mode) u8(uint8_t(get_raw(d.eps_mode)));
  u8(uint8_t(backward_flags));
  b.insert(b.end(), weights.begin(), weights.end());
  return b;
}

// The layers fuzz_checkpoint loads into. Input byte 0 picks them: bits 0-1 one of these four
// (with bit 2: all four in turn); bit 7 reseals the blob (rewrites its CRC-32C) so that mutations
// reach the checks behind the checksum. The blob is the rest of the input.
struct FixedLayer {
  int ndim;
  int64_t shape[4];
  int dim;
  sn_dtype_t dtype;
  sn_order_t order;
  float norm_bound;
};
constexpr FixedLayer kFixedLayers[4] = {
    {2, {8, 6}, 0, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, 0.0f},
    {4, {4, 3, 2, 2}, 1, SN_DTYPE_FLOAT16, SN_ORDER_V_FIRST, 0.0f},
    {1, {5}, 0, SN_DTYPE_FLOAT32, SN_ORDER_U_FIRST, 0.0f},
    {3, {3, 4, 5}, 2, SN_DTYPE_BFLOAT16, SN_ORDER_U_FIRST, 0.5f},
};

inline sn_layer_desc_t fixed_desc(const FixedLayer &f, uint64_t seed) {
  sn_layer_desc_t d;
  sn_layer_desc_init(&d, f.ndim, f.shape);
  d.dim = f.dim;
  d.dtype = f.dtype;
  d.order = f.order;
  d.norm_bound = f.norm_bound;
  d.backend = SN_BACKEND_CPU;
  d.seed = seed;
  d.warmup_iterations = 4;
  return d;
}

inline uint32_t crc32c(const uint8_t *p, size_t n) {
  uint32_t c = ~0u;
  for (size_t k = 0; k < n; ++k) {
    c ^= p[k];
    for (int b = 0; b < 8; ++b) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return ~c;
}

}  // namespace snfuzz
