/* float16 and bfloat16 on the host: exact widening to float and round-to-nearest-even narrowing,
 * the same results as CUDA's __half2float / __float2half_rn and their bfloat16 twins for every
 * input but NaN, which stays a NaN here with its sign and the top bits of its payload, where
 * CUDA's conversions give their canonical NaN (0x7FFF). */
#include <stdatomic.h>
#include <string.h>

#include "sn_reference.h"

static _Atomic int allowed = -1; /* the extensions sn_cpu_features may report */

int sn_cpu_allow_features(int mask) { return atomic_exchange(&allowed, mask); }

/* x86 with F16C: sn_store_n narrows to half 8 floats at a time with VCVTPS2PH, its rounding given
 * in the instruction (to nearest even, whatever MXCSR says). Its results are sn_float_to_half's
 * for all 2^32 floats, NaN payloads included, also under other rounding modes and with FTZ and DAZ
 * set (checked exhaustively on 2026-11-27; Dtype.TwoByteNarrowingOfWholeChunks tests it). sn_load_n
 * widens 8 halves at a time with VCVTPH2PS, but for signaling NaNs (widen_half_f16c;
 * Dtype.HalfWideningOfWholeChunks). With AVX2, the narrowing to bfloat16 (integer operations only)
 * runs as the same loop built for AVX2: 8 floats a step where the baseline build takes 4. */
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define SN_X86 1

/* SN_CPU_F16C: F16C and AVX, CPUID 1 ECX bits 29 and 28; SN_CPU_AVX2: CPUID 7 EBX bit 5; where
 * the OS keeps the YMM registers (ECX bit 27 OSXSAVE, XCR0 bits 1 and 2). (Not
 * __builtin_cpu_supports: clang 14 does not know "f16c".) */
int sn_cpu_features(void) {
  static _Atomic int known = -1;
  int k = atomic_load_explicit(&known, memory_order_relaxed);
  if (k < 0) {
    unsigned a = 0, b = 0, c = 0, d = 0;
    k = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 27))) {
      unsigned lo = 0, hi = 0;
      __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
      if ((lo & 6u) == 6u) {
        const unsigned f16c = (1u << 28) | (1u << 29);
        if ((c & f16c) == f16c) k |= SN_CPU_F16C;
        if ((c & (1u << 28)) && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 5))) k |= SN_CPU_AVX2;
      }
    }
    atomic_store_explicit(&known, k, memory_order_relaxed);
  }
  return k & atomic_load_explicit(&allowed, memory_order_relaxed);
}
#else
int sn_cpu_features(void) { return 0; }
#endif

static uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static float float_of(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

float sn_bf16_to_float(uint16_t h) { return float_of((uint32_t)h << 16); }

uint16_t sn_float_to_bf16(float f) {
  uint32_t u = bits_of(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
  u += 0x7FFFu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* Without a branch (masks), so that sn_load_n's loop vectorizes. */
float sn_half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, mag = h & 0x7FFFu;
  const uint32_t inf_nan = 0u - (uint32_t)(mag >= 0x7C00u), tiny = 0u - (uint32_t)(mag < 0x0400u);
  /* normal: the exponent rebiased 15 -> 127 and the mantissa moved up; inf and NaN: exponent 255,
   * the payload kept */
  const uint32_t big = (mag << 13) + (112u << 23) + (inf_nan & (112u << 23));
  /* zero and subnormal: mag · 2^-24, exact in float */
  const uint32_t small = bits_of((float)(int32_t)mag * 5.9604644775390625e-8f);
  return float_of(sign | (small & tiny) | (big & ~tiny));
}

uint16_t sn_float_to_half(float f) {
  const uint32_t u = bits_of(f);
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu)); /* NaN */
  if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* rounds to >= 65520: inf */
  if (a >= 0x38800000u) {                                  /* normal half */
    uint32_t r = a - 0x38000000u;                          /* rebias exponent 127 -> 15 */
    r += 0xFFFu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
  }
  if (a < 0x33000000u) return sign; /* below half the smallest subnormal (2^-25): ±0 */
  /* subnormal half: value / 2^-24 rounded to nearest even */
  const uint32_t e = a >> 23, m = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - e; /* m · 2^(e-150) / 2^-24 = m >> (126 - e) */
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return (uint16_t)(sign | q);
}

/* q[0..n) = sn_float_to_half(x[0..n)), 8 at a time where the CPU has F16C. */
#ifdef SN_X86
__attribute__((target("avx,f16c"))) static int64_t narrow_half_f16c(const float *x, uint16_t *q, int64_t n) {
  int64_t e = 0;
  for (; e + 8 <= n; e += 8)
    _mm_storeu_si128((__m128i *)(q + e),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return e;
}
#endif

/* out[0..n) = sn_half_to_float(q[0..n)), 8 at a time where the CPU has F16C. VCVTPH2PS quiets a
 * signaling NaN (sets bit 22), where sn_half_to_float (and __half2float) keeps its payload as it is:
 * a group of 8 with one takes the loop instead. For every other half the two agree (all 65536
 * checked, also under DAZ and FTZ). */
#ifdef SN_X86
__attribute__((target("avx,f16c"))) static int64_t widen_half_f16c(const uint16_t *q, float *out, int64_t n) {
  const __m128i top = _mm_set1_epi16(0x7E00), snan_top = _mm_set1_epi16(0x7C00);
  const __m128i low = _mm_set1_epi16(0x01FF), zero = _mm_setzero_si128();
  int64_t e = 0;
  for (; e + 8 <= n; e += 8) {
    const __m128i h = _mm_loadu_si128((const __m128i *)(q + e));
    /* signaling NaN: exponent all ones, quiet bit clear, the rest of the payload not zero */
    const __m128i nan_top = _mm_cmpeq_epi16(_mm_and_si128(h, top), snan_top);
    const __m128i no_payload = _mm_cmpeq_epi16(_mm_and_si128(h, low), zero);
    if (_mm_movemask_epi8(_mm_andnot_si128(no_payload, nan_top)))
      for (int k = 0; k < 8; ++k) out[e + k] = sn_half_to_float(q[e + k]);
    else
      _mm256_storeu_ps(out + e, _mm256_cvtph_ps(h));
  }
  return e;
}
#endif

static void widen_half(const uint16_t *q, float *out, int64_t n) {
  int64_t e = 0;
#ifdef SN_X86
  if (n >= 8 && (sn_cpu_features() & SN_CPU_F16C)) e = widen_half_f16c(q, out, n);
#endif
  for (; e < n; ++e) out[e] = sn_half_to_float(q[e]);
}

#ifdef SN_X86
__attribute__((target("avx2"))) static void narrow_bf16_avx2(const float *x, uint16_t *q, int64_t n) {
  for (int64_t e = 0; e < n; ++e) q[e] = sn_float_to_bf16(x[e]);
}
#endif

/* q[0..n) = sn_float_to_bf16(x[0..n)): the loop above where the CPU has AVX2, else this one. */
static void narrow_bf16(const float *x, uint16_t *q, int64_t n) {
#ifdef SN_X86
  if (sn_cpu_features() & SN_CPU_AVX2) {
    narrow_bf16_avx2(x, q, n);
    return;
  }
#endif
  for (int64_t e = 0; e < n; ++e) q[e] = sn_float_to_bf16(x[e]);
}

static void narrow_half(const float *x, uint16_t *q, int64_t n) {
  int64_t e = 0;
#ifdef SN_X86
  if (n >= 8 && (sn_cpu_features() & SN_CPU_F16C)) e = narrow_half_f16c(x, q, n);
#endif
  for (; e < n; ++e) q[e] = sn_float_to_half(x[e]);
}

size_t sn_dtype_size(sn_dtype_t t) { return t == SN_DTYPE_FLOAT32 ? 4 : 2; }

const char *sn_dtype_name(sn_dtype_t t) {
  switch (t) {
    case SN_DTYPE_FLOAT32: return "float32";
    case SN_DTYPE_FLOAT16: return "float16";
    case SN_DTYPE_BFLOAT16: return "bfloat16";
    default: return "?";
  }
}

float sn_load(const void *p, sn_dtype_t t, int64_t k) {
  switch (t) {
    case SN_DTYPE_FLOAT16: return sn_half_to_float(((const uint16_t *)p)[k]);
    case SN_DTYPE_BFLOAT16: return sn_bf16_to_float(((const uint16_t *)p)[k]);
    default: return ((const float *)p)[k];
  }
}

void sn_store(void *p, sn_dtype_t t, int64_t k, float x) {
  switch (t) {
    case SN_DTYPE_FLOAT16: ((uint16_t *)p)[k] = sn_float_to_half(x); break;
    case SN_DTYPE_BFLOAT16: ((uint16_t *)p)[k] = sn_float_to_bf16(x); break;
    default: ((float *)p)[k] = x; break;
  }
}

void sn_load_n(const void *p, sn_dtype_t t, int64_t k, int64_t n, float *out) {
  if (t == SN_DTYPE_FLOAT32) {
    memcpy(out, (const float *)p + k, (size_t)n * sizeof(float));
    return;
  }
  const uint16_t *q = (const uint16_t *)p + k;
  if (t == SN_DTYPE_BFLOAT16)
    for (int64_t e = 0; e < n; ++e) out[e] = sn_bf16_to_float(q[e]);
  else
    widen_half(q, out, n);
}

void sn_store_n(void *p, sn_dtype_t t, int64_t k, int64_t n, const float *x) {
  if (t == SN_DTYPE_FLOAT32) {
    memcpy((float *)p + k, x, (size_t)n * sizeof(float));
    return;
  }
  uint16_t *q = (uint16_t *)p + k;
  if (t == SN_DTYPE_BFLOAT16)
    narrow_bf16(x, q, n);
  else
    narrow_half(x, q, n);
}
