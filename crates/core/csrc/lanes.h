// What the pooling kernels (`max_pool.cpp`, `avg_pool.cpp`) share: eight float lanes as GCC's
// vector types, their loads and stores from float and bfloat16 (as its bits), the rounding
// of a sum as a float or bfloat16 tensor stores it, and which windows cover an input row or
// column (their backward passes).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "elementwise.h"

namespace selfsup::vec8 {

// Eight lanes as GCC's vector types, which each instruction set's clone compiles to its own
// registers (one AVX2 or AVX-512 register, two SSE ones): the channels-last loops run over
// blocks of eight channels, the rest of the channels one at a time.
typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef uint32_t u8 __attribute__((vector_size(32)));
typedef uint16_t h8 __attribute__((vector_size(16)));

SELFSUP_INLINE f8 load8(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
SELFSUP_INLINE f8 load8(const uint16_t* p) {
  h8 h;
  std::memcpy(&h, p, sizeof h);
  const u8 u = __builtin_convertvector(h, u8) << 16;
  f8 v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
SELFSUP_INLINE i8 load8(const int32_t* p) {
  i8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
SELFSUP_INLINE void store8(float* p, f8 v) { std::memcpy(p, &v, sizeof v); }
SELFSUP_INLINE void store8(int32_t* p, i8 v) { std::memcpy(p, &v, sizeof v); }
// The bits of `v` rounded to bfloat16 as `store` rounds them (to nearest even, NaN to 0x7fc0),
// in the high half of each lane.
SELFSUP_INLINE u8 bf16_bits(f8 v) {
  u8 u;
  std::memcpy(&u, &v, sizeof u);
  const u8 r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  const i8 nan = (u & 0x7fffffffu) > 0x7f800000u;
  return nan ? u8{} + 0x7fc00000u : r;
}
SELFSUP_INLINE void store8(uint16_t* p, f8 v) {
  const h8 h = __builtin_convertvector(bf16_bits(v) >> 16, h8);
  std::memcpy(p, &h, sizeof h);
}
// `v` rounded as a `T` stores it, read back as floats.
template <typename T>
SELFSUP_INLINE f8 rounded8(f8 v) {
  if constexpr (std::is_same<T, float>::value) {
    return v;
  } else {
    const u8 u = bf16_bits(v);
    f8 f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
}
// `v` rounded as a `T` stores it (bfloat16: to nearest even) and read back as a float.
template <typename T>
SELFSUP_INLINE float rounded(float v) {
  if constexpr (std::is_same<T, float>::value) {
    return v;
  } else {
    uint16_t b;
    store(&b, v);
    return load(&b);
  }
}

// The windows (`m` of them along an axis, `k` wide, stride `s`, padding `p`) that hold input
// position `i`: `[*o0, *o1]`, where `o · s - p ≤ i < o · s - p + k`.
SELFSUP_INLINE void covering(int64_t i, int64_t k, int64_t s, int64_t p, int64_t m, int64_t* o0,
                             int64_t* o1) {
  *o0 = i + p - k < 0 ? 0 : (i + p - k) / s + 1;
  *o1 = std::min(m - 1, (i + p) / s);
}

// The windows (`m` along an axis of `n` positions, stride `s`, padding `p`) whose tap `j` is a
// position of the axis, `o · s + j - p ∈ [0, n)`: `[*o0, *o1]`, empty (`*o1 < *o0`) where the
// tap lies past the axis's end for every window.
SELFSUP_INLINE void tap_windows(int64_t j, int64_t n, int64_t s, int64_t p, int64_t m,
                                int64_t* o0, int64_t* o1) {
  const int64_t shift = j - p;
  *o0 = shift >= 0 ? 0 : (-shift + s - 1) / s;
  *o1 = n - 1 - shift < 0 ? -1 : std::min(m - 1, (n - 1 - shift) / s);
}

}  // namespace selfsup::vec8
