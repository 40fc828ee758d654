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
