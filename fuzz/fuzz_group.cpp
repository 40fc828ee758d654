// libFuzzer harness: groups of CPU layers (sn_group_create, sn_group_forward,
// sn_group_set_gradients, sn_group_backward) over buffers that the bytes place in one arena, so
// that they coincide, overlap or stand apart. Invariants:
// - a group is created exactly when its members and buffers follow the documented rules (the
//   harness checks them itself, byte by byte), and a binding succeeds exactly when the gradient
//   buffers do; a failure has a defined status and message, and a failed create leaves NULL;
// - a grouped forward or backward leaves the arena and the states bitwise as each layer's own
//   calls in order leave a copy of the arena with twin layers (the CPU group's definition);
// - a refused binding keeps the one before it;
// - nothing reads or writes outside its buffers (ASan), however they overlap.
//
// Input: u8 head (bits 0-1: layers - 1; bit 2: no W_sn array; bit 3: a dgamma array; bit 4: eval
// forward; bits 5-6: backward flags), then per layer u8 kind (bits 0-1: 2-D, 4-D dim 0, 4-D dim 1,
// 1-D; bit 2: v-first), u8 h, u8 w, u8 dtype, then per layer the places of W, W_sn, G, dW, dgamma
// (u8 each, two rounds: a binding, then a second one), then per layer the place of its γ
// (sn_layer_set_gamma; 128 and up: none; no γ may lie in a W_sn, a dW or a dgamma), then the
// arena's bytes.
#include <algorithm>
#include <memory>
#include <vector>

#include "fuzz_common.h"

using namespace snfuzz;

namespace {

constexpr size_t kSlot = 512;       // bytes: the largest buffer (8 × 16 fp32) fits a slot
constexpr size_t kSlots = 24;
constexpr size_t kArena = kSlot * kSlots + kSlot;  // a slot's worth of slack past the last

struct Layer {
  sn_layer_desc_t desc;
  size_t bytes;  // of W (and W_sn, G, dW)
  size_t es;     // bytes per element
};

size_t dtype_size(sn_dtype_t t) { return t == SN_DTYPE_FLOAT32 ? 4 : 2; }

bool overlap(const void *a, size_t an, const void *b, size_t bn) {
  const uint8_t *x = static_cast<const uint8_t *>(a), *y = static_cast<const uint8_t *>(b);
  return a && b && x < y + bn && y < x + an;
}

// A buffer's place from one byte: slot (b % kSlots) and a shift of (b / kSlots) % 4 elements, so
// that neighbours may overlap by a few elements; or, for the values listed by `special`, that
// buffer (in place) or NULL. Always aligned to its element size.
uint8_t *place(uint8_t *arena, uint8_t b, size_t es) {
  const size_t slot = b % kSlots, shift = (b / kSlots) % 4;
  return arena + slot * kSlot + shift * es;
}

struct Binding {
  std::vector<const void *> G;
  std::vector<void *> dW;
  std::vector<float *> dgamma;
};

// Whether the group's rules admit these members and buffers (include/specnorm.h); gam: each
// layer's γ binding (NULL: none).
bool group_ok(const std::vector<Layer> &ls, const std::vector<const void *> &W,
              const std::vector<void *> &Wsn, const std::vector<float *> &gam) {
  const size_t n = ls.size();
  for (size_t k = 0; k < n; ++k) {
    const sn_layer_desc_t &d = ls[k].desc;
    if (d.ndim < 2) return false;
    // v-first: the weight's dim must be its first or last axis (the widths here are < 16384).
    int64_t A = 1, B = 1;
    for (int q = 0; q < d.dim; ++q) A *= d.shape[q];
    for (int q = d.dim + 1; q < d.ndim; ++q) B *= d.shape[q];
    if (d.order == SN_ORDER_V_FIRST && A > 1 && B > 1) return false;
    if (Wsn[k] && Wsn[k] != W[k] && overlap(Wsn[k], ls[k].bytes, W[k], ls[k].bytes)) return false;
    for (size_t j = 0; Wsn[k] && j < n; ++j)
      if ((j != k && (overlap(Wsn[k], ls[k].bytes, W[j], ls[j].bytes) ||
                      overlap(Wsn[k], ls[k].bytes, Wsn[j], ls[j].bytes))) ||
          overlap(Wsn[k], ls[k].bytes, gam[j], 4))  // every γ outside every W_sn, its own too
        return false;
  }
  return true;
}

// Whether a binding is admitted (sn_group_set_gradients).
bool binding_ok(const std::vector<Layer> &ls, const std::vector<const void *> &W, const Binding &b,
                bool with_dgamma, const std::vector<float *> &gam) {
  const size_t n = ls.size();
  for (size_t k = 0; k < n; ++k) {
    const size_t nk = ls[k].bytes;
    if (b.dW[k] != b.G[k] && overlap(b.dW[k], nk, b.G[k], nk)) return false;
    if (b.dW[k] != W[k] && overlap(b.dW[k], nk, W[k], nk)) return false;
    const float *dg = with_dgamma ? b.dgamma[k] : nullptr;
    for (size_t j = 0; j < n; ++j) {
      const size_t nj = ls[j].bytes;
      if (j != k && (overlap(b.dW[k], nk, W[j], nj) || overlap(b.dW[k], nk, b.G[j], nj) ||
                     overlap(b.dW[k], nk, b.dW[j], nj)))
        return false;
      if (dg && (overlap(dg, 4, W[j], nj) || overlap(dg, 4, b.G[j], nj) || overlap(dg, 4, b.dW[j], nj)))
        return false;
      if (dg && j < k && overlap(dg, 4, b.dgamma[j], 4)) return false;
      if (overlap(gam[j], 4, b.dW[k], nk) || overlap(gam[j], 4, dg, 4)) return false;  // its own too
    }
  }
  return true;
}

// The same pointer into another arena.
template <class P>
P moved(P p, const uint8_t *from, uint8_t *to) {
  if (!p) return p;
  return reinterpret_cast<P>(to + (reinterpret_cast<const uint8_t *>(p) - from));
}

void expect_same_states(const std::vector<sn_layer_t *> &a, const std::vector<sn_layer_t *> &b) {
  for (size_t k = 0; k < a.size(); ++k) {
    int64_t h = 0, w = 0;
    SN_FUZZ_CHECK(sn_layer_get_dims(a[k], &h, &w) == SN_SUCCESS);
    const size_t nh = static_cast<size_t>(h), nw = static_cast<size_t>(w);
    std::vector<float> ua(nh), va(nw), ub(nh), vb(nw);
    float sa = 0, sb = 0, ca = 0, cb = 0;
    SN_FUZZ_CHECK(sn_layer_get_state(a[k], ua.data(), va.data(), &sa, nullptr, nullptr) == SN_SUCCESS);
    SN_FUZZ_CHECK(sn_layer_get_state(b[k], ub.data(), vb.data(), &sb, nullptr, nullptr) == SN_SUCCESS);
    SN_FUZZ_CHECK(sn_layer_get_scale(a[k], &ca, nullptr) == SN_SUCCESS);
    SN_FUZZ_CHECK(sn_layer_get_scale(b[k], &cb, nullptr) == SN_SUCCESS);
    SN_FUZZ_CHECK(std::memcmp(ua.data(), ub.data(), ua.size() * 4) == 0);
    SN_FUZZ_CHECK(std::memcmp(va.data(), vb.data(), va.size() * 4) == 0);
    SN_FUZZ_CHECK(std::memcmp(&sa, &sb, 4) == 0 && std::memcmp(&ca, &cb, 4) == 0);
  }
}

struct Destroy {
  void operator()(sn_layer_t *l) const { sn_layer_destroy(l); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Reader r(data, size);
  const uint8_t head = r.u8();
  const size_t n = size_t(head & 3) + 1;
  const bool with_wsn = !(head & 4), with_dgamma = (head & 8) != 0, training = !(head & 16);
  const unsigned flags = (head >> 5) & 3u;

  // Twin layers: the group's (a) and the reference's (b), from the same descriptors.
  std::vector<Layer> ls(n);
  std::vector<std::unique_ptr<sn_layer_t, Destroy>> own;
  std::vector<sn_layer_t *> la(n), lb(n);
  for (size_t k = 0; k < n; ++k) {
    const uint8_t kind = r.u8();
    const int64_t h = 1 + r.u8() % 8, w = 1 + r.u8() % 16;
    const sn_dtype_t dt = sn_dtype_t(r.u8() % 3);
    int64_t shape[4] = {h, w, 1, 1};
    int ndim = 2, dim = 0;
    switch (kind & 3) {
      case 1: shape[1] = (w + 3) / 4, shape[2] = 2, shape[3] = 2, ndim = 4; break;
      case 2: shape[1] = (w + 3) / 4, shape[2] = 2, shape[3] = 2, ndim = 4, dim = 1; break;
      case 3: ndim = 1; break;
      default: break;
    }
    Layer &L = ls[k];
    SN_FUZZ_CHECK(sn_layer_desc_init(&L.desc, ndim, shape) == SN_SUCCESS);
    L.desc.backend = SN_BACKEND_CPU;
    L.desc.dim = dim;
    L.desc.dtype = dt;
    L.desc.order = (kind & 4) ? SN_ORDER_V_FIRST : SN_ORDER_U_FIRST;
    L.desc.warmup_iterations = 2;
    L.desc.seed = k + 1;
    int64_t numel = 1;
    for (int q = 0; q < ndim; ++q) numel *= shape[q];
    L.es = dtype_size(dt);
    L.bytes = size_t(numel) * L.es;
    SN_FUZZ_CHECK(L.bytes <= kSlot);
    SN_FUZZ_CHECK(sn_layer_create(&la[k], &L.desc) == SN_SUCCESS);
    own.emplace_back(la[k]);
    SN_FUZZ_CHECK(sn_layer_create(&lb[k], &L.desc) == SN_SUCCESS);
    own.emplace_back(lb[k]);
  }

  // The places: W, W_sn (a special value: W itself or none), then two bindings of G, dW, dgamma.
  std::vector<uint8_t> A(kArena), B(kArena);
  std::vector<const void *> W(n);
  std::vector<void *> Wsn(n);
  for (size_t k = 0; k < n; ++k) {
    W[k] = place(A.data(), r.u8(), ls[k].es);
    const uint8_t b = r.u8();
    Wsn[k] = b >= 240 ? nullptr : b >= 224 ? const_cast<void *>(W[k]) : place(A.data(), b, ls[k].es);
  }
  Binding bind[2];
  for (Binding &bd : bind) {
    for (size_t k = 0; k < n; ++k) {
      bd.G.push_back(place(A.data(), r.u8(), ls[k].es));
      const uint8_t b = r.u8();
      bd.dW.push_back(b >= 240 ? const_cast<void *>(bd.G[k]) : b >= 224 ? const_cast<void *>(W[k])
                                                                        : place(A.data(), b, ls[k].es));
      const uint8_t g = r.u8();
      bd.dgamma.push_back(g >= 240 ? nullptr : reinterpret_cast<float *>(place(A.data(), g, 4)));
    }
  }
  // Each layer's γ (both twins: the reference's in the copy of the arena), bound before the group
  // is created, which takes the bindings.
  std::vector<float *> gam(n);
  for (size_t k = 0; k < n; ++k) {
    const uint8_t b = r.u8();
    gam[k] = b >= 128 ? nullptr : reinterpret_cast<float *>(place(A.data(), b, 4));
    SN_FUZZ_CHECK(sn_layer_set_gamma(la[k], gam[k]) == SN_SUCCESS);
    SN_FUZZ_CHECK(sn_layer_set_gamma(lb[k], moved(gam[k], A.data(), B.data())) == SN_SUCCESS);
  }
  // The arena's contents: the rest of the input, repeated, as raw bits of every dtype.
  const size_t left = r.left();
  const uint8_t *src = r.rest();
  for (size_t q = 0; q < kArena; ++q) A[q] = left ? src[q % left] : uint8_t(q * 37 + 11);

  sn_group_t *g = reinterpret_cast<sn_group_t *>(uintptr_t(0x1));
  sn_status_t st = sn_group_create(&g, la.data(), W.data(), with_wsn ? Wsn.data() : nullptr, int(n));
  if (!with_wsn)
    for (auto &p : Wsn) p = nullptr;
  SN_FUZZ_CHECK((st == SN_SUCCESS) == group_ok(ls, W, Wsn, gam));
  if (st != SN_SUCCESS) {
    check_failure(st);
    SN_FUZZ_CHECK(g == nullptr);
    return 0;
  }
  std::unique_ptr<sn_group_t, void (*)(sn_group_t *)> group(g, sn_group_destroy);

  st = sn_group_backward(g, flags, nullptr);  // nothing bound yet
  SN_FUZZ_CHECK(st == SN_ERROR_INVALID_STATE);
  check_failure(st);

  // The forward against each layer's own, in order, on a copy of the arena.
  B = A;
  SN_FUZZ_CHECK(sn_group_forward(g, training, nullptr) == SN_SUCCESS);
  for (size_t k = 0; k < n; ++k) {
    const void *w = moved(W[k], A.data(), B.data());
    void *o = moved(Wsn[k], A.data(), B.data());
    st = o ? sn_forward(lb[k], w, o, training, nullptr) : sn_forward_scale_only(lb[k], w, training, nullptr);
    SN_FUZZ_CHECK(st == SN_SUCCESS);
  }
  SN_FUZZ_CHECK(A == B);
  expect_same_states(la, lb);

  // Two bindings in turn, each followed by a backward against the layers' own: after a refused
  // binding, the one before (if any) is the one that runs.
  const Binding *in_force = nullptr;
  for (const Binding &bd : bind) {
    std::vector<float *> dg = bd.dgamma;
    st = sn_group_set_gradients(g, bd.G.data(), bd.dW.data(), with_dgamma ? dg.data() : nullptr);
    SN_FUZZ_CHECK((st == SN_SUCCESS) == binding_ok(ls, W, bd, with_dgamma, gam));
    if (st != SN_SUCCESS) check_failure(st);
    else in_force = &bd;
    if (!in_force) {
      st = sn_group_backward(g, flags, nullptr);
      SN_FUZZ_CHECK(st == SN_ERROR_INVALID_STATE);
      continue;
    }
    B = A;
    SN_FUZZ_CHECK(sn_group_backward(g, flags, nullptr) == SN_SUCCESS);
    for (size_t k = 0; k < n; ++k) {
      float *d = with_dgamma ? in_force->dgamma[k] : nullptr;
      SN_FUZZ_CHECK(sn_backward(lb[k], moved(W[k], A.data(), B.data()), moved(in_force->G[k], A.data(), B.data()),
                                moved(in_force->dW[k], A.data(), B.data()), flags, moved(d, A.data(), B.data()),
                                nullptr) == SN_SUCCESS);
    }
    SN_FUZZ_CHECK(A == B);
  }
  return 0;
}
