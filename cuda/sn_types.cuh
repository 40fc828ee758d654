// Element types of W, W_sn, G and dW: float, __half, __nv_bfloat16. Everything is computed in
// float; these helpers convert on load and round to nearest even on store.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace sn {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Four consecutive elements as one access: 16 bytes for float, 8 for the 2-byte types.
template <class T>
struct Vec4;
// raw: the loaded bits, so a prefetch can hold loads in flight and convert only when used.
template <>
struct Vec4<float> {
  using raw = float4;
  __device__ static raw load_raw(const float *p) { return *reinterpret_cast<const float4 *>(p); }
  __device__ static float4 cvt(raw r) { return r; }
  __device__ static float4 load(const float *p) { return load_raw(p); }
  __device__ static void store(float *p, float4 v) { *reinterpret_cast<float4 *>(p) = v; }
};
template <class H, class H2>
struct Vec4Half {
  using raw = uint2;
  __device__ static raw load_raw(const H *p) { return *reinterpret_cast<const uint2 *>(p); }
  __device__ static float4 cvt(raw r) {
    const H2 a = *reinterpret_cast<const H2 *>(&r.x), b = *reinterpret_cast<const H2 *>(&r.y);
    return make_float4(to_f(a.x), to_f(a.y), to_f(b.x), to_f(b.y));
  }
  __device__ static float4 load(const H *p) { return cvt(load_raw(p)); }
  __device__ static void store(H *p, float4 v) {
    H2 a, b;
    a.x = from_f<H>(v.x);
    a.y = from_f<H>(v.y);
    b.x = from_f<H>(v.z);
    b.y = from_f<H>(v.w);
    uint2 r;
    r.x = *reinterpret_cast<const unsigned *>(&a);
    r.y = *reinterpret_cast<const unsigned *>(&b);
    *reinterpret_cast<uint2 *>(p) = r;
  }
};
template <>
struct Vec4<__half> : Vec4Half<__half, __half2> {};
template <>
struct Vec4<__nv_bfloat16> : Vec4Half<__nv_bfloat16, __nv_bfloat162> {};

// E consecutive elements as one access, converted to and from E floats: VecN<float, 4> and
// VecN<half type, 8> are 16-byte accesses (LDG.E.128 / STG.E.128), VecN<half type, 4> 8-byte.
template <class T, int E>
struct VecN;
template <>
struct VecN<float, 4> {
  using raw = float4;
  __device__ static raw load_raw(const float *p) { return *reinterpret_cast<const float4 *>(p); }
  __device__ static void cvt(raw r, float *x) {
    x[0] = r.x;
    x[1] = r.y;
    x[2] = r.z;
    x[3] = r.w;
  }
  __device__ static raw pack(const float *x) { return make_float4(x[0], x[1], x[2], x[3]); }
  __device__ static void store(float *p, const float *x) { *reinterpret_cast<float4 *>(p) = pack(x); }
};
// The 2-byte types: pairs convert with the paired intrinsics, which round to nearest even as
// from_f does.
__device__ __forceinline__ float2 pair_to_f(unsigned r, __half) {
  return __half22float2(*reinterpret_cast<const __half2 *>(&r));
}
__device__ __forceinline__ float2 pair_to_f(unsigned r, __nv_bfloat16) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&r));
}
__device__ __forceinline__ unsigned pair_from_f(float a, float b, __half) {
  const __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<const unsigned *>(&h);
}
__device__ __forceinline__ unsigned pair_from_f(float a, float b, __nv_bfloat16) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const unsigned *>(&h);
}
template <class H, int E>
struct VecHalfN {
  static_assert(E == 4 || E == 8, "4 or 8 elements");
  struct raw {
    unsigned r[E / 2];
  };
  __device__ static raw load_raw(const H *p) {
    raw x;
    if (E == 8) {
      const uint4 q = *reinterpret_cast<const uint4 *>(p);
      x.r[0] = q.x, x.r[1] = q.y, x.r[E == 8 ? 2 : 0] = q.z, x.r[E == 8 ? 3 : 1] = q.w;
    } else {
      const uint2 q = *reinterpret_cast<const uint2 *>(p);
      x.r[0] = q.x, x.r[1] = q.y;
    }
    return x;
  }
  __device__ static void cvt(raw r, float *x) {
#pragma unroll
    for (int k = 0; k < E / 2; ++k) {
      const float2 f = pair_to_f(r.r[k], H{});
      x[2 * k] = f.x;
      x[2 * k + 1] = f.y;
    }
  }
  __device__ static raw pack(const float *x) {
    raw r;
#pragma unroll
    for (int k = 0; k < E / 2; ++k) r.r[k] = pair_from_f(x[2 * k], x[2 * k + 1], H{});
    return r;
  }
  __device__ static void store(H *p, const float *x) {
    const raw r = pack(x);
    if (E == 8)
      *reinterpret_cast<uint4 *>(p) = make_uint4(r.r[0], r.r[1], r.r[E == 8 ? 2 : 0], r.r[E == 8 ? 3 : 1]);
    else
      *reinterpret_cast<uint2 *>(p) = make_uint2(r.r[0], r.r[1]);
  }
};
template <int E>
struct VecN<__half, E> : VecHalfN<__half, E> {};
template <int E>
struct VecN<__nv_bfloat16, E> : VecHalfN<__nv_bfloat16, E> {};

// A 16-byte pack (VecN's raw) loaded and stored as streaming data: ld.global.cs / st.global.cs,
// whose lines L1 and L2 allocate with the evict-first policy (PTX ISA, cache operators).
template <class R>
__device__ __forceinline__ R load_streaming(const void *p) {
  static_assert(sizeof(R) == 16, "16-byte packs");
  const uint4 q = __ldcs(static_cast<const uint4 *>(p));
  R r;
  memcpy(&r, &q, 16);
  return r;
}
template <class R>
__device__ __forceinline__ void store_streaming(void *p, const R &r) {
  static_assert(sizeof(R) == 16, "16-byte packs");
  uint4 q;
  memcpy(&q, &r, 16);
  __stcs(static_cast<uint4 *>(p), q);
}

// Elements of T in one 16-byte access.
template <class T>
constexpr int kWide = 16 / (int)sizeof(T);

// out[E·p ..] = scale(in[E·p ..]) for the 16-byte packs p < packs, the block's NT threads taking
// packs p, p + NT, ...; each thread loads U of its packs before it stores any (the compiler cannot
// move a load of `in` above a store to `out`, they may alias, and one pack at a time is one round
// trip to memory after another). in and out 16-byte aligned.
template <int NT, int U, class T, class F>
__device__ __forceinline__ void scale_packs(const T *in, T *out, int64_t packs, F scale) {
  constexpr int E = kWide<T>;
  using V = VecN<T, E>;
  for (int64_t p = threadIdx.x; p < packs; p += (int64_t)U * NT) {
    typename V::raw r[U] = {};
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (p + u * NT < packs) r[u] = V::load_raw(in + E * (p + u * NT));
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (p + u * NT >= packs) break;
      float x[E];
      V::cvt(r[u], x);
#pragma unroll
      for (int q = 0; q < E; ++q) x[q] = scale(x[q]);
      V::store(out + E * (p + u * NT), x);
    }
  }
}

// Whether p can be accessed 16 bytes at a time.
__host__ __device__ inline bool aligned16(const void *p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Whether p can be accessed as Vec4<T>.
template <class T>
__host__ __device__ inline bool vec4_aligned(const void *p) {
  return (reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T))) == 0;
}

}  // namespace sn

// Call body(T{}) with T the element type of `dtype` (an sn_dtype_t).
#define SN_DISPATCH_DTYPE(dtype, body)                         \
  [&]() -> cudaError_t {                                       \
    switch (dtype) {                                           \
      case SN_DTYPE_FLOAT16: return body(__half{});            \
      case SN_DTYPE_BFLOAT16: return body(__nv_bfloat16{});    \
      default: return body(float{});                           \
    }                                                          \
  }()
