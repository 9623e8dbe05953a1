// The points of Winograd's F(m, r) as the transform loops' constants, and the transforms over
// them on a vector of channels, shared by `winograd.cpp` (8 lanes, in its instruction-set
// clones) and `winograd_fused.cpp` (16 lanes, AVX512-BF16).
#pragma once

namespace selfsup {

// Bᵀ (α x α) and Aᵀ (m x α) of F(m, r) as constants for the transform loops (`Transforms`
// holds G). F(4, 3) has F(2, 5)'s points, so its Bᵀ; F(4, 5)'s α = 8 points add ±1/2 (the
// points of F(6, 3) in NNPACK and oneDNN).
template <int M, int R>
struct Points;
template <>
struct Points<2, 2> {
  static constexpr float BT[3][3] = {{1, -1, 0}, {0, 1, 0}, {0, -1, 1}};
  static constexpr float AT[2][3] = {{1, 1, 0}, {0, 1, 1}};
};
template <>
struct Points<2, 3> {
  static constexpr float BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr float AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
  // G (α x r), as `winograd.cpp`'s `Transforms` has it: the filter loops' constants (its
  // entries are 0, ±1/2 and 1, so G g Gᵀ and Gᵀ p G in float are sums of exactly scaled terms).
  static constexpr float G[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
};
template <>
struct Points<2, 5> {
  static constexpr float BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0},
                                     {0, 4, -4, -1, 1, 0}, {0, -2, -1, 2, 1, 0},
                                     {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr float AT[2][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 1}};
};
template <>
struct Points<4, 3> {
  static constexpr auto& BT = Points<2, 5>::BT;
  static constexpr float AT[4][6] = {
      {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
};
template <>
struct Points<4, 5> {
  static constexpr float BT[8][8] = {
      {1, 0, -5.25f, 0, 5.25f, 0, -1, 0},        {0, 1, 1, -4.25f, -4.25f, 1, 1, 0},
      {0, -1, 1, 4.25f, -4.25f, -1, 1, 0},       {0, 0.5f, 0.25f, -2.5f, -1.25f, 2, 1, 0},
      {0, -0.5f, 0.25f, 2.5f, -1.25f, -2, 1, 0}, {0, 2, 4, -2.5f, -5, 0.5f, 1, 0},
      {0, -2, 4, 2.5f, -5, -0.5f, 1, 0},         {0, -1, 0, 5.25f, 0, -5.25f, 0, 1}};
  static constexpr float AT[4][8] = {{1, 1, 1, 1, 1, 1, 1, 0},
                                     {0, 1, -1, 2, -2, 0.5f, -0.5f, 0},
                                     {0, 1, 1, 4, 4, 0.25f, 0.25f, 0},
                                     {0, 1, -1, 8, -8, 0.125f, -0.125f, 1}};
};

// The transforms below take `V`, a GCC vector of floats (`vector_size`), one channel a lane.
// They carry no target attribute: always inlined, they compile for their caller's instruction
// set (a callee's target must be a subset of its caller's, and the default is).
#define SELFSUP_TRANSFORM_INLINE __attribute__((always_inline)) inline

// `Σ_k m[k] v[k]` over the nonzero constants `m`, without the zero terms and with no
// multiplication by ±1 (all known after unrolling).
template <int J, typename V>
SELFSUP_TRANSFORM_INLINE V combine(const float (&m)[J], const V (&v)[J]) {
  V s = {};
  bool any = false;
#pragma GCC unroll 8
  for (int k = 0; k < J; ++k) {
    if (m[k] == 0.0f) continue;
    const V t = m[k] == 1.0f ? v[k] : m[k] == -1.0f ? -v[k] : m[k] * v[k];
    s = any ? s + t : t;
    any = true;
  }
  return s;
}

// `out = L in Lᵀ` (`in` J x J, `out` I x I; L is Bᵀ: α x α, or Aᵀ: m x α): the rows, then the
// columns.
template <int I, int J, typename V>
SELFSUP_TRANSFORM_INLINE void transform(const float (&L)[I][J], const V (&in)[J][J],
                                        V (&out)[I][I]) {
  V mid[I][J];
#pragma GCC unroll 8
  for (int l = 0; l < J; ++l) {
    V col[J];
#pragma GCC unroll 8
    for (int k = 0; k < J; ++k) col[k] = in[k][l];
#pragma GCC unroll 8
    for (int i = 0; i < I; ++i) mid[i][l] = combine(L[i], col);
  }
#pragma GCC unroll 8
  for (int i = 0; i < I; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < I; ++j) out[i][j] = combine(L[j], mid[i]);
  }
}

// `out = Lᵀ in L` (`in` I x I, `out` J x J; L is Aᵀ: m x α): `transform` with the transposed
// constants.
template <int I, int J, typename V>
SELFSUP_TRANSFORM_INLINE void transform_t(const float (&L)[I][J], const V (&in)[I][I],
                                          V (&out)[J][J]) {
  float Lt[J][I];
#pragma GCC unroll 8
  for (int i = 0; i < I; ++i) {
#pragma GCC unroll 8
    for (int k = 0; k < J; ++k) Lt[k][i] = L[i][k];
  }
  transform(Lt, in, out);
}

#undef SELFSUP_TRANSFORM_INLINE

}  // namespace selfsup
