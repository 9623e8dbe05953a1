// What the CPU kernels of `bn_relu.cpp` and `relu_dropout.cpp` share: per-instruction-set
// clones of their loops, a tensor's elements and bfloat16 loads and stores (bfloat16 as its 16
// bits), and the CPU's own float → bfloat16 conversion where it has one (AVX512-BF16's
// `vcvtneps2bf16`: Sapphire Rapids, Zen 4), picked at run time.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace selfsup {

// A loop compiled for AVX-512, AVX2 and baseline x86-64, the best picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SELFSUP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SELFSUP_CLONES
#endif
#define SELFSUP_INLINE __attribute__((always_inline)) inline

// The element pointer of a float or bfloat16 tensor `t` as the loops take it (bfloat16 as
// its bits).
template <typename T>
T* elements(const at::Tensor& t) {
  if constexpr (std::is_same<T, float>::value) {
    return t.data_ptr<float>();
  } else {
    return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>());
  }
}

SELFSUP_INLINE float load(const float* p) { return *p; }
SELFSUP_INLINE float load(const uint16_t* p) {
  uint32_t u = uint32_t(*p) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
SELFSUP_INLINE void store(float* p, float v) { *p = v; }
// Round to nearest even, as c10::BFloat16; NaN stays a (quiet) NaN.
SELFSUP_INLINE void store(uint16_t* p, float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  *p = uint16_t(nan ? 0x7fc0u : rounded);
}

// The CPU's conversion rounds to nearest even too, so the bits are those of `store` except
// where `store` keeps a subnormal bfloat16 (the instruction flushes it to zero) and in the
// payload of a NaN.
#if defined(__x86_64__) && defined(__GNUC__)
#define SELFSUP_NATIVE_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// The first `left` of 16 lanes (all 16 from 16 on).
SELFSUP_NATIVE_BF16 SELFSUP_INLINE __mmask16 lanes(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
}
SELFSUP_NATIVE_BF16 SELFSUP_INLINE __m512 load16(const uint16_t* p, __mmask16 m) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void store16(uint16_t* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
}
// `n` floats to bfloat16.
SELFSUP_NATIVE_BF16 inline void store_native(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = lanes(n - i);
    store16(dst + i, _mm512_maskz_loadu_ps(m, src + i), m);
  }
}

inline bool cpu_has_native_bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return has;
}
#else
inline bool cpu_has_native_bf16() { return false; }
#endif

// Whether the native conversion is to be used where the CPU has it (a switch for the tests that
// compare the two roundings; one flag for the whole process).
inline std::atomic<bool>& native_bf16_wanted() {
  static std::atomic<bool> wanted{true};
  return wanted;
}
inline bool native_bf16() {
  return cpu_has_native_bf16() && native_bf16_wanted().load(std::memory_order_relaxed);
}

}  // namespace selfsup
