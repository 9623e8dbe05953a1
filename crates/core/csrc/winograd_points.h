// The points of Winograd's F(m, r) as the transform loops' constants, shared by
// `winograd.cpp` and `winograd_fused.cpp`.
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

}  // namespace selfsup
