// Winograd's minimal filtering (Lavin & Gray, CVPR 2016) as one fused loop over small groups of
// tiles, for CPUs with AVX512-BF16 (Zen 4; `winograd.cpp` holds the method and the unfused
// passes): the forward pass of a stride-1 convolution (and so the backward pass to the input,
// the same convolution with the filters flipped and transposed) and its backward pass to the
// weights, two of them:
// - bfloat16 F(2x2, 3x3): the transformed tiles rounded to bfloat16, the products by
//   `vdpbf16ps` (pairs of channels, or of tiles in the weight pass; fp32 sums);
// - float F(4x4, 5x5): the widened path of a bfloat16 5x5 layer (and a float one), the products
//   by float FMA;
// - bfloat16 F(2x2, 2x2) of the 4x4 stride-2 convolution (padding 1) on its space-to-depth form
//   (`winograd.cpp`'s header; the context encoder's discriminator), forward and to the weights:
//   the input side reads each tile's 3 x 3 patch of the space-to-depth form from the NHWC input
//   (`down_transform`), 4C channels into the products; the rest is F(2x2, 3x3)'s with α = 3.
// `winograd.cpp` runs the transforms and the products as separate passes over a whole piece of
// the batch, each through memory; at 64 channels on 32x32 maps those passes cost more than the
// 2.25x fewer multiplications save (23.6 against oneDNN's 21.3 ms forward, 2 cores of a Zen 4).
// Here each group of tiles is transformed, multiplied and transformed back while its values are
// in the core's caches. Forward:
// - the input transform Bᵀ d B of each tile's α x α patch (α = m + r - 1; rows and columns from
//   m·ty - (r - 1)/2, zero outside the map), in float, into `u` (α², group, C) (bfloat16:
//   rounded once);
// - the α² products `U_ξ (group, C) · V_ξ (C, K)` by a register-blocked kernel of `kRows`
//   tiles x 64 output channels (24 accumulators of 16 floats); fp32 sums into `m` (α², group,
//   K), not rounded;
// - the output transform Aᵀ m A in float into the NHWC output (bfloat16: rounded once).
// Each tile's sums run over the channels in one fixed order, whatever the thread count or the
// group a tile falls in, so a run is the same from run to run and thread count to thread count.
// To the weights: the group's input tiles Bᵀ d B and gradient tiles A dY Aᵀ transformed, then
// `Σ_t (A dY Aᵀ)_ξ[t]ᵀ (Bᵀ d B)_ξ[t]` added into (α², K, C) float sums by a kernel of `kRows`
// output x 64 input channels, in fixed chunks of the batch added in order at the end (so their
// order depends on the shapes alone); the caller takes the sums back through G.
// The bfloat16 passes round less than the unfused ones (the products' sums are not rounded to
// bfloat16 before the output transform; the weight sums stay float to the end); the tests bound
// both against float64.
#include "winograd_fused.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>

#include "conv_passes.h"
#include "elementwise.h"
#include "winograd_points.h"

namespace selfsup {
namespace {

// Rows of the product kernels (tiles forward, output channels to the weights) and their
// columns (channels, 16 a register).
constexpr int kRows = 6;
constexpr int kBlock = 64;

// The tiling of an (n, H, W) map in m x m output tiles.
struct Tiles {
  int64_t n, H, W, th, tw;
  int64_t count() const { return n * th * tw; }
};

#if defined(__x86_64__) && defined(__GNUC__)

// Sixteen channels of one tile entry (one AVX-512 register).
typedef float v16 __attribute__((vector_size(64), aligned(4)));

SELFSUP_NATIVE_BF16 SELFSUP_INLINE v16 load(const float* p, __mmask16 m) {
  return reinterpret_cast<v16>(_mm512_maskz_loadu_ps(m, p));
}
SELFSUP_NATIVE_BF16 SELFSUP_INLINE v16 load(const uint16_t* p, __mmask16 m) {
  return reinterpret_cast<v16>(load16(p, m));
}
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void store(float* p, const v16& v, __mmask16 m) {
  _mm512_mask_storeu_ps(p, m, reinterpret_cast<__m512>(v));
}
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void store(uint16_t* p, const v16& v, __mmask16 m) {
  store16(p, reinterpret_cast<__m512>(v), m);
}

// The `count` tiles from `t0` of `x` (n, H, W, C), NHWC: `u` (α², group, C) gets the transform
// of each tile's S x S patch (rows from M·ty - P, columns from M·tx - Q, zero outside the map)
// for F(M x M, R x R), α = M + R - 1: Bᵀ d B of an α x α input patch (S = α, P = Q = (R - 1) / 2:
// `input_transform`; the 4x4 stride-2 convolution's backward pass to the input, parity (a, b):
// P = a, Q = b, `up_group`), A dY Aᵀ of an M x M gradient (S = M, P = Q = 0: `grad_transform`).
// As `winograd.cpp`'s `patch_tiles`, on 16 lanes.
template <int M, int R, int S, typename In, typename U>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void patch_tiles(const In* x, int64_t C, Tiles g, int64_t P,
                                                    int64_t Q, int64_t t0, int64_t count,
                                                    int64_t group, U* u) {
  constexpr int A = M + R - 1;
  for (int64_t l = 0; l < count; ++l) {
    const int64_t t = t0 + l, img = t / (g.th * g.tw), ty = t / g.tw % g.th, tx = t % g.tw;
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      const __mmask16 m = lanes(C - c0);
      v16 d[S][S], v[A][A];
#pragma GCC unroll 8
      for (int i = 0; i < S; ++i) {
        const int64_t h = M * ty - P + i;
#pragma GCC unroll 8
        for (int j = 0; j < S; ++j) {
          const int64_t w = M * tx - Q + j;
          const bool inside = h >= 0 && h < g.H && w >= 0 && w < g.W;
          d[i][j] = inside ? load(x + ((img * g.H + h) * g.W + w) * C + c0, m) : v16{};
        }
      }
      if constexpr (S == A) {
        transform(Points<M, R>::BT, d, v);
      } else {
        transform_t(Points<M, R>::AT, d, v);
      }
#pragma GCC unroll 8
      for (int i = 0; i < A; ++i) {
#pragma GCC unroll 8
        for (int j = 0; j < A; ++j) store(u + ((i * A + j) * group + l) * C + c0, v[i][j], m);
      }
    }
  }
}

// Bᵀ d B of F(M x M, R x R) for the `count` tiles from `t0` of `x` (n, H, W, C) NHWC into `u`
// (α², group, C).
template <int M, int R, typename In, typename U>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void input_transform(const In* x, int64_t C, Tiles g,
                                                        int64_t t0, int64_t count, int64_t group,
                                                        U* u) {
  patch_tiles<M, R, M + R - 1>(x, C, g, (R - 1) / 2, (R - 1) / 2, t0, count, group, u);
}

// Bᵀ d B of F(2x2, 2x2) for the `count` tiles from `t0` of the 4x4 stride-2 convolution
// (padding 1) of `x` (n, 2·g.H, 2·g.W, C), NHWC, `g` the tiling of its output: each tile's 3 x 3
// patch of the space-to-depth form s[I, J, (a, b, c)] = x[2I + a - 1, 2J + b - 1, c] (zero
// outside the map) into `u` (9, group, 4C), sixteen channels of one (a, b) at a time. As
// `winograd.cpp`'s `down_input_tiles`, on 16 lanes.
template <typename In, typename U>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void down_transform(const In* x, int64_t C, Tiles g, int64_t t0,
                                                       int64_t count, int64_t group, U* u) {
  const int64_t H = 2 * g.H, W = 2 * g.W, C4 = 4 * C;
  for (int64_t l = 0; l < count; ++l) {
    const int64_t t = t0 + l, img = t / (g.th * g.tw), ty = t / g.tw % g.th, tx = t % g.tw;
    for (int64_t ab = 0; ab < 4; ++ab) {
      for (int64_t c0 = 0; c0 < C; c0 += 16) {
        const __mmask16 m = lanes(C - c0);
        v16 d[3][3], v[3][3];
#pragma GCC unroll 8
        for (int i = 0; i < 3; ++i) {
          const int64_t h = 2 * (2 * ty + i) + ab / 2 - 1;
#pragma GCC unroll 8
          for (int j = 0; j < 3; ++j) {
            const int64_t w = 2 * (2 * tx + j) + ab % 2 - 1;
            const bool inside = h >= 0 && h < H && w >= 0 && w < W;
            d[i][j] = inside ? load(x + ((img * H + h) * W + w) * C + c0, m) : v16{};
          }
        }
        transform(Points<2, 2>::BT, d, v);
#pragma GCC unroll 8
        for (int i = 0; i < 3; ++i) {
#pragma GCC unroll 8
          for (int j = 0; j < 3; ++j) {
            store(u + ((i * 3 + j) * group + l) * C4 + ab * C + c0, v[i][j], m);
          }
        }
      }
    }
  }
}

// The input side of a pass: Bᵀ d B of a stride-1 F(M x M, R x R) (`input_transform`), or of the
// 4x4 stride-2 convolution's F(2x2, 2x2) (`Down`: `down_transform`), into `u` (α², group, C')
// with C' = C (stride 1) or 4C (`Down`).
template <int M, int R, bool Down, typename In, typename U>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void pass_input(const In* x, int64_t C, Tiles g, int64_t t0,
                                                   int64_t count, int64_t group, U* u) {
  if constexpr (Down) {
    down_transform(x, C, g, t0, count, group, u);
  } else {
    input_transform<M, R>(x, C, g, t0, count, group, u);
  }
}

// Aᵀ m A of F(M x M, R x R) for the `count` tiles from `t0`, from `mb` (α², group, K) into `y`
// (n, H, W, K) NHWC (a tile's outputs past the map's last row or column dropped); with `step` 2
// (the 4x4 stride-2 convolution's backward pass to the input, parity (a, b)) into `y` (n, 2H,
// 2W, K): output (i, j) of tile (ty, tx) at (2(M·ty + i) + oi, 2(M·tx + j) + oj).
template <int M, int R, typename Out>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void output_transform(const float* mb, int64_t K, Tiles g,
                                                         int64_t t0, int64_t count,
                                                         int64_t group, Out* y, int64_t step = 1,
                                                         int64_t oi = 0, int64_t oj = 0) {
  constexpr int A = M + R - 1;
  const int64_t H = step * g.H, W = step * g.W;
  for (int64_t l = 0; l < count; ++l) {
    const int64_t t = t0 + l, img = t / (g.th * g.tw), ty = t / g.tw % g.th, tx = t % g.tw;
    for (int64_t k0 = 0; k0 < K; k0 += 16) {
      const __mmask16 m = lanes(K - k0);
      v16 v[A][A], o[M][M];
#pragma GCC unroll 8
      for (int i = 0; i < A; ++i) {
#pragma GCC unroll 8
        for (int j = 0; j < A; ++j) v[i][j] = load(mb + ((i * A + j) * group + l) * K + k0, m);
      }
      transform(Points<M, R>::AT, v, o);
      for (int i = 0; i < M && step * (M * ty + i) + oi < H; ++i) {
        const int64_t h = step * (M * ty + i) + oi;
        for (int j = 0; j < M && step * (M * tx + j) + oj < W; ++j) {
          store(y + ((img * H + h) * W + step * (M * tx + j) + oj) * K + k0, o[i][j], m);
        }
      }
    }
  }
}

// Each step's value as the product kernels take it: a pair of bfloat16 values (`U` uint16_t) as
// 32 bits, or a float.
template <typename U>
using Step = typename std::conditional<std::is_same<U, uint16_t>::value, uint32_t, float>::type;

SELFSUP_NATIVE_BF16 SELFSUP_INLINE __m512i load_steps(const uint32_t* p) {
  return _mm512_loadu_si512(p);
}
SELFSUP_NATIVE_BF16 SELFSUP_INLINE __m512 load_steps(const float* p) { return _mm512_loadu_ps(p); }
// `acc` + x·b: a pair of bfloat16 values `x` against 16 pairs of `b` (`vdpbf16ps`: fp32 sums of
// the two products), or a float against 16 floats (FMA).
SELFSUP_NATIVE_BF16 SELFSUP_INLINE __m512 multiply_add(__m512 acc, uint32_t x, __m512i b) {
  const __m512i a = _mm512_set1_epi32(static_cast<int>(x));
  return _mm512_dpbf16_ps(acc, reinterpret_cast<const __m512bh&>(a),
                          reinterpret_cast<const __m512bh&>(b));
}
SELFSUP_NATIVE_BF16 SELFSUP_INLINE __m512 multiply_add(__m512 acc, float x, __m512 b) {
  return _mm512_fmadd_ps(_mm512_set1_ps(x), b, acc);
}

// The register kernel of both passes' products: `out[r][16 q + i]` (+)= Σ_s a[s·as + r·ar] ·
// b[s·bs + 16 q + i] over `steps` steps, r < ROWS, q < NV, i < 16, in ROWS x NV accumulators
// (`out`'s rows `os` apart; added to with `add`, else written). Forward, the rows are tiles and
// the steps channels; to the weights, the rows are output channels and the steps tiles.
template <int ROWS, int NV, typename T>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void product_block(const T* a, int64_t as, int64_t ar,
                                                      const T* b, int64_t bs, int64_t steps,
                                                      bool add, float* out, int64_t os) {
  using Vec = decltype(load_steps(b));
  __m512 acc[ROWS][NV];
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) {
      acc[r][q] = add ? _mm512_loadu_ps(out + r * os + 16 * q) : _mm512_setzero_ps();
    }
  }
  for (int64_t s = 0; s < steps; ++s) {
    Vec bv[NV];
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) bv[q] = load_steps(b + s * bs + 16 * q);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const T x = a[s * as + r * ar];
#pragma GCC unroll 4
      for (int q = 0; q < NV; ++q) acc[r][q] = multiply_add(acc[r][q], x, bv[q]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) _mm512_storeu_ps(out + r * os + 16 * q, acc[r][q]);
  }
}

// `product_block` for `rows` (1 to kRows) rows and `nv` (1 to 4) registers of columns.
template <int NV, typename T>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void product_rows(int64_t rows, const T* a, int64_t as,
                                                     int64_t ar, const T* b, int64_t bs,
                                                     int64_t steps, bool add, float* out,
                                                     int64_t os) {
  switch (rows) {
    case 1: return product_block<1, NV>(a, as, ar, b, bs, steps, add, out, os);
    case 2: return product_block<2, NV>(a, as, ar, b, bs, steps, add, out, os);
    case 3: return product_block<3, NV>(a, as, ar, b, bs, steps, add, out, os);
    case 4: return product_block<4, NV>(a, as, ar, b, bs, steps, add, out, os);
    case 5: return product_block<5, NV>(a, as, ar, b, bs, steps, add, out, os);
    default: return product_block<kRows, NV>(a, as, ar, b, bs, steps, add, out, os);
  }
}
template <typename T>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void product_kernel(int64_t rows, int64_t nv, const T* a,
                                                       int64_t as, int64_t ar, const T* b,
                                                       int64_t bs, int64_t steps, bool add,
                                                       float* out, int64_t os) {
  switch (nv) {
    case 1: return product_rows<1>(rows, a, as, ar, b, bs, steps, add, out, os);
    case 2: return product_rows<2>(rows, a, as, ar, b, bs, steps, add, out, os);
    case 3: return product_rows<3>(rows, a, as, ar, b, bs, steps, add, out, os);
    default: return product_rows<4>(rows, a, as, ar, b, bs, steps, add, out, os);
  }
}

// The α² products of a group of `count` tiles: `mb` (α², group, K) from `u` (α², group, C) and
// the filters `vp` (α², C, K) (bfloat16: (α², C/2, K) pairs).
template <typename U, typename V>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void group_products(int64_t points, const U* u, int64_t C,
                                                       const V* vp, int64_t K, int64_t count,
                                                       int64_t group, float* mb) {
  // Steps (channels, or pairs of them) a tile's row.
  const int64_t steps = std::is_same<U, uint16_t>::value ? C / 2 : C;
  for (int64_t xi = 0; xi < points; ++xi) {
    const V* vx = vp + xi * steps * K;
    for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
      for (int64_t l = 0; l < count; l += kRows) {
        const auto* ux = reinterpret_cast<const Step<U>*>(u + (xi * group + l) * C);
        product_kernel(std::min<int64_t>(kRows, count - l), std::min<int64_t>(K - k0, kBlock) / 16,
                       ux, 1, steps, vx + k0, K, steps, false, mb + (xi * group + l) * K + k0, K);
      }
    }
  }
}

// One group: the three steps above over tiles [t0, t0 + count) of the output's tiling `g`
// (`Down`: the input side by `down_transform`, 4C channels into the products).
template <int M, int R, bool Down, typename E, typename U, typename V>
SELFSUP_NATIVE_BF16 void fused_group(const E* x, int64_t C, const V* vp, int64_t K, Tiles g,
                                     int64_t t0, int64_t count, int64_t group, U* u, float* mb,
                                     E* y) {
  constexpr int A = M + R - 1;
  pass_input<M, R, Down>(x, C, g, t0, count, group, u);
  group_products(A * A, u, Down ? 4 * C : C, vp, K, count, group, mb);
  output_transform<M, R>(mb, K, g, t0, count, group, y);
}

// The m x m output tiles of `y` (n, H, W, K).
template <int M>
Tiles output_tiles(const at::Tensor& y) {
  return Tiles{y.size(0), y.size(1), y.size(2), (y.size(1) + M - 1) / M, (y.size(2) + M - 1) / M};
}

// The pass over every group of the output `y`'s tiles of `group` tiles, with libtorch's
// threads (each thread its own `u` and `m`).
template <int M, int R, bool Down, typename E, typename U, typename V>
void fused_pass(const at::Tensor& x, const at::Tensor& vp, at::Tensor& y, int64_t group) {
  constexpr int A = M + R - 1;
  const int64_t C = x.size(3), K = y.size(3), Cu = Down ? 4 * C : C;
  const Tiles g = output_tiles<M>(y);
  const E* in = reinterpret_cast<const E*>(x.data_ptr());
  const V* filters = reinterpret_cast<const V*>(vp.data_ptr());
  E* out = reinterpret_cast<E*>(y.data_ptr());
  const int64_t groups = (g.count() + group - 1) / group;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    const auto u = std::make_unique<U[]>(A * A * group * Cu);
    const auto mb = std::make_unique<float[]>(A * A * group * K);
    for (int64_t gi = g0; gi < g1; ++gi) {
      const int64_t t0 = gi * group, count = std::min(group, g.count() - t0);
      fused_group<M, R, Down>(in, C, filters, K, g, t0, count, group, u.get(), mb.get(), out);
    }
  });
}

// The backward pass to the input of the 4x4 stride-2 convolution (padding 1), one parity (a, b)
// of the input's pixels at a time: dx[2I + a - 1, 2J + b - 1] = Σ_{p, q} dy[I - p, J - q] ·
// w[:, :, 2p + a, 2q + b], for each (a, b) a stride-1 2x2 correlation of `dy` with the filters
// flipped, by F(2x2, 2x2). Tile (ty, tx) of `dy`'s tiling in 2 x 2 is the input's 4 x 4 block
// from (4ty, 4tx): parity (a, b) gives its pixels (4ty + 2i + 1 - a, 4tx + 2j + 1 - b), i, j < 2,
// from the 3 x 3 patch of `dy` from (2ty - a, 2tx - b) (zero outside): `patch_tiles` with P = a,
// Q = b, then `output_transform` with step 2 and offsets (1 - a, 1 - b). Here one group: tiles
// [t0, t0 + count) of `dy`'s tiling `g`, the four parities one after another (`vp`: their
// filters, (4, 9, K/2, C) pairs).
SELFSUP_NATIVE_BF16 void up_group(const uint16_t* dy, int64_t K, const uint32_t* vp, int64_t C,
                                  Tiles g, int64_t t0, int64_t count, int64_t group, uint16_t* u,
                                  float* mb, uint16_t* dx) {
  for (int64_t ab = 0; ab < 4; ++ab) {
    const int64_t a = ab / 2, b = ab % 2;
    patch_tiles<2, 2, 3>(dy, K, g, a, b, t0, count, group, u);
    group_products(9, u, K, vp + ab * 9 * (K / 2) * C, C, count, group, mb);
    output_transform<2, 2>(mb, C, g, t0, count, group, dx, 2, 1 - a, 1 - b);
  }
}

// The backward pass to the input of the 4x4 stride-2 convolution over every group of `group`
// tiles of `dy`'s tiling in 2 x 2 (each the input's 4 x 4 block), with libtorch's threads (each
// its own `u` and `m`).
void fused_up_pass(const at::Tensor& dy, const at::Tensor& vp, at::Tensor& dx, int64_t group) {
  const int64_t K = dy.size(3), C = dx.size(3);
  const Tiles g = output_tiles<2>(dy);
  const uint16_t* in = reinterpret_cast<const uint16_t*>(dy.data_ptr());
  const uint32_t* filters = reinterpret_cast<const uint32_t*>(vp.data_ptr());
  uint16_t* out = reinterpret_cast<uint16_t*>(dx.data_ptr());
  const int64_t groups = (g.count() + group - 1) / group;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    const auto u = std::make_unique<uint16_t[]>(9 * group * K);
    const auto mb = std::make_unique<float[]>(9 * group * C);
    for (int64_t gi = g0; gi < g1; ++gi) {
      const int64_t t0 = gi * group, count = std::min(group, g.count() - t0);
      up_group(in, K, filters, C, g, t0, count, group, u.get(), mb.get(), out);
    }
  });
}

// A dY Aᵀ of F(M x M, R x R) for the `count` tiles from `t0` of the gradient `dy` (n, H, W, K)
// NHWC (each tile's M x M outputs, zero past the map's last row and column) into `v` (α², group,
// K).
template <int M, int R, typename In, typename U>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void grad_transform(const In* dy, int64_t K, Tiles g,
                                                       int64_t t0, int64_t count, int64_t group,
                                                       U* v) {
  patch_tiles<M, R, M>(dy, K, g, 0, 0, t0, count, group, v);
}

// The bfloat16 rows `plain` (points, group, n) of `count` tiles as pairs of tiles, `pairs`
// (points, group / 2, n, 2): each value of tile 2p beside that of tile 2p + 1 (zero past
// `count`), as `vdpbf16ps` pairs the terms of a sum over the tiles.
SELFSUP_NATIVE_BF16 void pair_tiles(const uint16_t* plain, int64_t points, int64_t count,
                                    int64_t group, int64_t n, uint16_t* pairs) {
  alignas(64) static const uint16_t kInterleave[32] = {0,  16, 1,  17, 2,  18, 3,  19,
                                                       4,  20, 5,  21, 6,  22, 7,  23,
                                                       8,  24, 9,  25, 10, 26, 11, 27,
                                                       12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i order = _mm512_load_si512(kInterleave);
  for (int64_t xi = 0; xi < points; ++xi) {
    for (int64_t p = 0; 2 * p < count; ++p) {
      const uint16_t* a = plain + (xi * group + 2 * p) * n;
      const bool second = 2 * p + 1 < count;
      uint16_t* out = pairs + ((xi * (group / 2) + p) * n) * 2;
      for (int64_t c0 = 0; c0 < n; c0 += 16) {
        const __mmask16 m = lanes(n - c0);
        const __m256i lo = _mm256_maskz_loadu_epi16(m, a + c0);
        const __m256i hi = second ? _mm256_maskz_loadu_epi16(m, a + n + c0) : __m256i{};
        const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        const __m512i mixed = _mm512_permutexvar_epi16(order, both);
        const __mmask32 m2 = n - c0 >= 16 ? ~__mmask32(0) : (__mmask32(1) << 2 * (n - c0)) - 1;
        _mm512_mask_storeu_epi16(out + 2 * c0, m2, mixed);
      }
    }
  }
}

// One group's terms of the transformed weight gradient: `dw` (α², K, C) += Σ over the group's
// tiles of v_ξ[t]ᵀ u_ξ[t] (`add` false: written over `dw` instead), from `v` (α², group, K) and
// `u` (α², group, C), plain (float: `terms` tiles a position) or as pairs of tiles (bfloat16:
// `terms` pairs).
template <typename U>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void weight_products(int64_t points, const U* v, int64_t K,
                                                        const U* u, int64_t C, int64_t terms,
                                                        int64_t group, bool add, float* dw) {
  for (int64_t xi = 0; xi < points; ++xi) {
    // A position's rows of pairs (bfloat16) or of floats, `K` (`C`) steps a term.
    const auto* vx = reinterpret_cast<const Step<U>*>(v + xi * group * K);
    const auto* ux = reinterpret_cast<const Step<U>*>(u + xi * group * C);
    float* dx = dw + xi * K * C;
    for (int64_t k0 = 0; k0 < K; k0 += kRows) {
      for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
        product_kernel(std::min<int64_t>(kRows, K - k0), std::min<int64_t>(C - c0, kBlock) / 16,
                       vx + k0, K, 1, ux + c0, C, terms, add, dx + k0 * C + c0, C);
      }
    }
  }
}

// One group of the weight pass: the input's and the gradient's transformed tiles
// [t0, t0 + count) of the output's tiling `g`, then their products added into `dw` (α², K, C')
// (C' = C, or 4C with `Down`; `add` false: written over it). bfloat16: transformed into `plain`
// rows, then paired into `u` and `v`.
template <int M, int R, bool Down, typename E, typename U>
SELFSUP_NATIVE_BF16 void weight_group(const E* x, int64_t C, const E* dy, int64_t K, Tiles g,
                                      int64_t t0, int64_t count, int64_t group, U* u, U* v,
                                      U* plain, bool add, float* dw) {
  constexpr int A = M + R - 1;
  const int64_t Cu = Down ? 4 * C : C;
  if constexpr (std::is_same<U, uint16_t>::value) {
    pass_input<M, R, Down>(x, C, g, t0, count, group, plain);
    pair_tiles(plain, A * A, count, group, Cu, u);
    grad_transform<M, R>(dy, K, g, t0, count, group, plain);
    pair_tiles(plain, A * A, count, group, K, v);
    weight_products(A * A, v, K, u, Cu, (count + 1) / 2, group, add, dw);
  } else {
    pass_input<M, R, Down>(x, C, g, t0, count, group, u);
    grad_transform<M, R>(dy, K, g, t0, count, group, v);
    weight_products(A * A, v, K, u, Cu, count, group, add, dw);
  }
}

// The weight pass over every group of `g`'s tiles (`group` of them, even: bfloat16 pairs them),
// in `chunks` fixed runs of groups, each summing into its own `(α², K, C)` slice of `parts`
// (written over by its first group, zeroed where it has none: not zeroed first, 32 MB at
// ResNet-18's 256-channel layers' 8 chunks); libtorch's threads take the chunks.
template <int M, int R, bool Down, typename E, typename U>
void fused_weight_pass(const at::Tensor& x, const at::Tensor& dy, int64_t group, int64_t chunks,
                       at::Tensor& parts) {
  constexpr int A = M + R - 1;
  const int64_t C = x.size(3), K = dy.size(3), Cu = Down ? 4 * C : C;
  const Tiles g = output_tiles<M>(dy);
  const E* in = reinterpret_cast<const E*>(x.data_ptr());
  const E* grad = reinterpret_cast<const E*>(dy.data_ptr());
  float* out = parts.data_ptr<float>();
  const int64_t groups = (g.count() + group - 1) / group;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    const bool paired = std::is_same<U, uint16_t>::value;
    const auto u = std::make_unique<U[]>(A * A * group * Cu);
    const auto v = std::make_unique<U[]>(A * A * group * K);
    const auto plain = std::make_unique<U[]>(paired ? A * A * group * std::max(Cu, K) : 1);
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      float* dw = out + chunk * A * A * K * Cu;
      const int64_t first = groups * chunk / chunks, end = groups * (chunk + 1) / chunks;
      if (first == end) std::fill(dw, dw + A * A * K * Cu, 0.0f);
      for (int64_t gi = first; gi < end; ++gi) {
        const int64_t t0 = gi * group, count = std::min(group, g.count() - t0);
        weight_group<M, R, Down>(in, C, grad, K, g, t0, count, group, u.get(), v.get(),
                                 plain.get(), gi != first, dw);
      }
    }
  });
}

// Whether `big` (n, H, W, C) and `half` (n, H/2, W/2, K), NHWC, dense, bfloat16, and the
// filters `vp` (36·C·K values, bfloat16, dense) have the shapes of the fused 4x4 stride-2
// passes: the input and output of `fused_down`, the input's and output's gradients of `fused_up`
// (the channels and the CPU are the callers' `*_takes`).
bool down_shapes(const at::Tensor& big, const at::Tensor& half, const at::Tensor& vp) {
  return big.dim() == 4 && half.dim() == 4 && big.is_contiguous() && half.is_contiguous() &&
         vp.is_contiguous() && big.scalar_type() == at::kBFloat16 &&
         half.scalar_type() == at::kBFloat16 && vp.scalar_type() == at::kBFloat16 &&
         half.size(0) == big.size(0) && 2 * half.size(1) == big.size(1) &&
         2 * half.size(2) == big.size(2) && vp.numel() == 36 * big.size(3) * half.size(3);
}

#endif

}  // namespace

bool fused_winograd_weight_takes(at::ScalarType kind, int64_t m, int64_t r, int64_t C,
                                 int64_t K, int64_t H, int64_t W) {
  return fused_winograd_takes(kind, m, r, C, K, H, W) && C % 16 == 0;
}

at::Tensor fused_winograd_weight(const at::Tensor& x, const at::Tensor& dy, int64_t m) {
#if defined(__x86_64__) && defined(__GNUC__)
  const auto kind = x.scalar_type();
  const int64_t r = m == 2 ? 3 : 5, a = m + r - 1, C = x.size(3), K = dy.size(3);
  TORCH_CHECK(x.dim() == 4 && dy.dim() == 4 && x.is_contiguous() && dy.is_contiguous() &&
                  dy.scalar_type() == kind &&
                  fused_winograd_weight_takes(kind, m, r, C, K, x.size(1), x.size(2)) &&
                  dy.size(0) == x.size(0) && dy.size(1) == x.size(1) && dy.size(2) == x.size(2),
              "fused Winograd weight gradient F(", m, "x", m, ", ", r, "x", r, "): input ",
              x.sizes(), " ", kind, ", gradient ", dy.sizes(), " ", dy.scalar_type());
  // Chunks of the batch's tiles summed apart, then added in order: as many as 8 whose sums fit
  // `piece_bytes()` together (2 at least), so the sums' order depends on the shapes only, not
  // on the thread count.
  const int64_t part = a * a * K * C * 4;
  const int64_t chunks = std::clamp<int64_t>(piece_bytes().load() / part, 2, 8);
  at::Tensor parts = at::empty({chunks, a * a, K, C}, x.options().dtype(at::kFloat));
  // Tiles a group: each group adds into the whole (α², K, C) sums of its chunk, so the larger
  // the sums, the more tiles a group. bfloat16, batch 128, weight pass ms (2 cores of a Zen 4,
  // `winograd_probe`; groups of 32 / 64 / 128 / 256): 64 -> 64 at 32x32 19.8 / 19.1 / 18.5 /
  // 19.0; 128 -> 128 at 16x16 16.9 / 15.6 / 15.2 / 15.1; 256 -> 256 at 8x8 19.0 / 20.0 / 17.7
  // / 16.8; 192 -> 192 at 8x8 12.0 / 11.3 / 9.6 / 9.0.
  const int64_t group = std::max(C, K) >= 192 ? 256 : 128;
  if (kind == at::kBFloat16) {
    fused_weight_pass<2, 3, false, uint16_t, uint16_t>(x, dy, group, chunks, parts);
  } else {
    fused_weight_pass<4, 5, false, float, float>(x, dy, group, chunks, parts);
  }
  return parts.sum(0);
#else
  TORCH_CHECK(false, "fused Winograd: x86-64 with AVX512-BF16 only");
#endif
}

bool fused_down_takes(at::ScalarType kind, int64_t C, int64_t K, int64_t H, int64_t W) {
  return kind == at::kBFloat16 && C % 4 == 0 && K % 16 == 0 && H % 2 == 0 && W % 2 == 0 &&
         cpu_has_native_bf16() && fused_winograd_wanted();
}

void fused_down(const at::Tensor& x, const at::Tensor& vp, at::Tensor& y) {
#if defined(__x86_64__) && defined(__GNUC__)
  const int64_t C = x.size(3), K = y.size(3);
  TORCH_CHECK(down_shapes(x, y, vp) &&
                  fused_down_takes(x.scalar_type(), C, K, x.size(1), x.size(2)),
              "fused 4x4 stride-2 convolution: input ", x.sizes(), " ", x.scalar_type(),
              ", filters ", vp.sizes(), ", output ", y.sizes());
  // Groups of 6 tiles (one block of the product kernel's rows): 64 -> 128 at 16x16, batch 128,
  // 3.4-4.1 ms (12: 4.5-5.2; 24: 3.7-4.3; 48: 4.6; oneDNN 4.5-4.7), 2 cores of a Zen 4.
  fused_pass<2, 2, true, uint16_t, uint16_t, uint32_t>(x, vp, y, 6);
#else
  TORCH_CHECK(false, "fused Winograd: x86-64 with AVX512-BF16 only");
#endif
}

bool fused_up_takes(at::ScalarType kind, int64_t C, int64_t K, int64_t H, int64_t W) {
  return fused_down_takes(kind, C, K, H, W) && C % 16 == 0;
}

void fused_up(const at::Tensor& dy, const at::Tensor& vp, at::Tensor& dx) {
#if defined(__x86_64__) && defined(__GNUC__)
  const int64_t C = dx.size(3), K = dy.size(3);
  TORCH_CHECK(down_shapes(dx, dy, vp) &&
                  fused_up_takes(dy.scalar_type(), C, K, dx.size(1), dx.size(2)),
              "fused 4x4 stride-2 backward pass to the input: gradient ", dy.sizes(), " ",
              dy.scalar_type(), ", filters ", vp.sizes(), ", input ", dx.sizes());
  // Groups of 6 tiles, as the forward pass's: 12, 24 and 48 no faster at 64 -> 128 on 16x16 or
  // 128 -> 256 on 8x8 (batch 128, 2 cores of a Zen 4).
  fused_up_pass(dy, vp, dx, 6);
#else
  TORCH_CHECK(false, "fused Winograd: x86-64 with AVX512-BF16 only");
#endif
}

at::Tensor fused_down_weight(const at::Tensor& x, const at::Tensor& dy) {
#if defined(__x86_64__) && defined(__GNUC__)
  const int64_t C = x.size(3), K = dy.size(3), C4 = 4 * C;
  TORCH_CHECK(x.dim() == 4 && dy.dim() == 4 && x.is_contiguous() && dy.is_contiguous() &&
                  dy.scalar_type() == at::kBFloat16 &&
                  fused_down_takes(x.scalar_type(), C, K, x.size(1), x.size(2)) &&
                  dy.size(0) == x.size(0) && 2 * dy.size(1) == x.size(1) &&
                  2 * dy.size(2) == x.size(2),
              "fused 4x4 stride-2 weight gradient: input ", x.sizes(), " ", x.scalar_type(),
              ", gradient ", dy.sizes(), " ", dy.scalar_type());
  // Chunks of the batch's tiles summed apart, then added in order, as `fused_winograd_weight`'s,
  // but at least 1024 tiles a chunk (2 to 8 chunks): the (9, K, 4C) sums of a chunk, zeroed,
  // written by each of its groups and added at the end, outweigh fewer tiles' products (batch
  // 128, 2 cores of a Zen 4, groups of 128 / 256 tiles: 64 -> 128 at 16x16, 2048 tiles, 4.0-4.5
  // ms in 2 chunks, 6.1 in 8; 128 -> 256 at 8x8, 512 tiles, 4.7-4.9 in 2, 9.9 in 8). The count
  // depends on the shapes alone, so the sums' order does too.
  const int64_t tiles = dy.size(0) * ((dy.size(1) + 1) / 2) * ((dy.size(2) + 1) / 2);
  const int64_t part = 9 * K * C4 * 4;
  const int64_t chunks =
      std::clamp<int64_t>(std::min(piece_bytes().load() / part, tiles / 1024), 2, 8);
  at::Tensor parts = at::empty({chunks, 9, K, C4}, x.options().dtype(at::kFloat));
  // Groups of 128 tiles: 128 and 256 alike in 2 chunks (above), 512 at 128 -> 256 on 8x8 9.4 ms
  // (one group: one thread of two idle).
  fused_weight_pass<2, 2, true, uint16_t, uint16_t>(x, dy, 128, chunks, parts);
  return parts.sum(0);
#else
  TORCH_CHECK(false, "fused Winograd: x86-64 with AVX512-BF16 only");
#endif
}

bool fused_winograd_takes(at::ScalarType kind, int64_t m, int64_t r, int64_t C, int64_t K,
                          int64_t H, int64_t W) {
  const bool bf16 = kind == at::kBFloat16 && m == 2 && r == 3 && C % 2 == 0;
  const bool wide = kind == at::kFloat && m == 4 && r == 5;
  // Maps of fewer than 64 positions: the filters' values outnumber the tiles', and every group
  // of tiles streams them all (bfloat16 512 -> 512 at 4x4: 26.9 ms fused, 22.2 unfused, 18.5
  // oneDNN).
  return (bf16 || wide) && K % 16 == 0 && H * W >= 64 && cpu_has_native_bf16() &&
         fused_winograd_wanted();
}

at::Tensor fused_winograd_filters(const at::Tensor& v) {
  const int64_t points = v.size(0), C = v.size(1), K = v.size(2);
  if (v.scalar_type() != at::kBFloat16) return v.contiguous();
  // (α², C, K) -> (α², C/2, K, 2): each output channel's values at channels 2i and 2i + 1 side
  // by side, as `vdpbf16ps` pairs them; one copy from the (α², K, C) order `v` is a view of.
  return v.transpose(1, 2).reshape({points, K, C / 2, 2}).permute({0, 2, 1, 3}).contiguous();
}

void fused_winograd(const at::Tensor& x, const at::Tensor& vp, int64_t m, at::Tensor& y) {
#if defined(__x86_64__) && defined(__GNUC__)
  const auto kind = x.scalar_type();
  const int64_t r = m == 2 ? 3 : 5, C = x.size(3), K = y.size(3);
  TORCH_CHECK(x.dim() == 4 && y.dim() == 4 && x.is_contiguous() && vp.is_contiguous() &&
                  y.is_contiguous() && vp.scalar_type() == kind && y.scalar_type() == kind &&
                  fused_winograd_takes(kind, m, r, C, K, x.size(1), x.size(2)) &&
                  y.size(0) == x.size(0) && y.size(1) == x.size(1) && y.size(2) == x.size(2) &&
                  vp.numel() == (m + r - 1) * (m + r - 1) * C * K,
              "fused Winograd F(", m, "x", m, ", ", r, "x", r, "): input ", x.sizes(), " ", kind,
              ", filters ", vp.sizes(), ", output ", y.sizes());
  if (kind == at::kBFloat16) {
    // Groups of 12 tiles: 64 -> 64 at 32x32, batch 128, 13.1 ms (24: 13.2; 48: 15.5; 96: 16.7,
    // the group's values out of the first-level cache).
    fused_pass<2, 3, false, uint16_t, uint16_t, uint32_t>(x, vp, y, 12);
  } else {
    // Groups of 6 tiles: their 64 positions' values fill the second-level cache.
    fused_pass<4, 5, false, float, float, float>(x, vp, y, 6);
  }
#else
  TORCH_CHECK(false, "fused Winograd: x86-64 with AVX512-BF16 only");
#endif
}

}  // namespace selfsup
