// Stride-1 3x3 and 5x5 convolutions (padding (r - 1) / 2, no bias, one group) by Winograd's
// minimal filtering F(m x m, r x r) with output tiles of m = 2 or 4 (Lavin & Gray, "Fast
// Algorithms for Convolutional Neural Networks", CVPR 2016), forward and both backward passes,
// for dense 4-d float CPU tensors (NCHW or channels-last), and bfloat16 ones in tiles of 2 x 2.
//
// Each m x m tile t of the output is `Aᵀ [Σ_c (G g_kc Gᵀ) ⊙ (Bᵀ d_tc B)] A`, with d_tc the α x α
// input patch of the tile (α = m + r - 1) and g_kc the r x r filter: the α² positions ξ of the
// transformed tile become α² independent matrix products `U_ξ (T, C) · V_ξ (C, K)` (T tiles),
// with 2.25x (F(2x2, 3x3)), 4x (F(4x4, 3x3)), 2.8x (F(2x2, 5x5)) and 6.25x (F(4x4, 5x5)) fewer
// multiplications than the direct convolution; tiles of 4 x 4 also write (α / m)² = 2.25
// (3x3) and 4 (5x5) transformed values an output against 4 and 9 for tiles of 2 x 2, at a larger
// rounding error (their transforms' entries reach 8 and 21/4, and 1/90 in G). The input and
// output transforms are loops over the tiles (libtorch's threads), each tile's α x α patch read
// once from the NHWC activations and written once to `(α², T, C)` (and back), eight channels at a
// time; the filter transform is a matrix product with a Kronecker matrix, or, for F(2x2, 3x3),
// a loop over the filters as they lie in memory writing the layout the products take
// (`filter_tiles_3`; its inverse for the weight gradient, `filter_grad_3`). Backward:
// - to the input: the same forward with the filters flipped and transposed (a stride-1
//   convolution padded by (r - 1) / 2 has one as its transpose);
// - to the weights: with `Y = Aᵀ (Q ⊙ Z) A`, Q = G g Gᵀ, Z = Bᵀ d B, the gradient is
//   `Gᵀ [Σ_t Z_t ⊙ (A dY_t Aᵀ)] G`: α² products `U_ξᵀ (C, T) · (A dY Aᵀ)_ξ (T, K)`.
// Each pass is taken here, in tiles of 2 x 2 or 4 x 4, or left to libtorch's own convolution
// (`plan`, chosen by the caller from the layer's shape: oneDNN's forward kernels are faster at
// large maps, Winograd's products at small maps with many channels, and oneDNN's backward to the
// weights is slower at every measured 3x3 shape). The sums are libtorch's matrix products (MKL),
// whose reduction order may depend on the thread count, as oneDNN's convolution's does; the
// caller leaves deterministic runs (oneDNN switched off) to libtorch.
//
// bfloat16 (tensors, or the CPU's bfloat16 autocast): F(2x2, 3x3) in bfloat16, for CPUs with
// AVX512-BF16 and no AMX (Zen 4), where oneDNN's direct bfloat16 kernels run at the machine's
// peak and only fewer multiplications are faster (the caller's plan: `plan_bf16`). The
// transforms run in float on values widened from bfloat16 and round once on the way out: the
// transformed input patches and filters, and each product's fp32 sums (libtorch's bfloat16
// matrix product) are rounded to bfloat16, as a direct bfloat16 convolution rounds its inputs
// and its output (the forward pass's relative RMS error against float64 measured at 5e-3,
// oneDNN's bfloat16 kernels' 1.7e-3); the weight gradient's transformed sums are added in float
// over the pieces and rounded once at the end. Larger transforms would carry bfloat16's rounding
// (2^-9) into the outputs many times over (F(2x2, 5x5), entries up to 5: 3.5e-2 measured;
// F(4x4, r x r): up to 8 and 21/4), so tiles of 4x4, and every 5x5 filter, run in float on the
// widened values (bit 8; 4x (3x3) and 6.25x (5x5) fewer multiplications at float's rate, half of
// bfloat16's), the output rounded once. The errors against the float64 convolution are bounded by
// the tests.
//
// On CPUs with AVX512-BF16, bfloat16 F(2x2, 3x3) and float F(4x4, 5x5) on maps of 64 positions
// and more run each pass as one fused loop over small groups of tiles instead
// (`winograd_fused.cpp`: transforms and products in cache, the products by `vdpbf16ps` or FMA),
// which the passes below hand them (`forward_winograd`, `weight_grad_winograd`).
//
// 1x1 convolutions (F(1, 1): no transforms) take the same path as plain matrix products over
// views of the activations, the passes oneDNN's 1x1 kernels run slower than MKL's GEMM
// (`plan`; measured in `bench/README.md`, "The transforms as loops, and 1×1 convolutions as
// matrix products").
//
// The 4x4 convolution with stride 2 and padding 1 (DCGAN's discriminator: the context encoder's
// adversary) takes the same path with r = 4. On the space-to-depth form of its padded input, s[n,
// I, J, (a, b, c)] = x_pad[n, 2I + a, 2J + b, c], it is the valid 2x2 convolution of 4C channels
// with w'[k, (a, b, c), p, q] = w[k, c, 2p + a, 2q + b]: its forward pass and its weight gradient
// are F(2x2, 2x2)'s (α = 3: 9 products a tile against the direct 16), the patches of s read from
// the NHWC input directly (`down_input_tiles`), the rest by the tile loops above with r = 2
// (`forward_down`, `weight_grad_down`). Its backward pass to the input stays libtorch's in float
// (as a full 2x2 correlation its tiles would cover (H/2 + 1)² outputs for (H/2)²); in bfloat16 it
// runs fused as four 2x2 correlations, one a parity of the input's pixels (`input_grad_down`).
// oneDNN's forward kernel runs near the machine's peak at the discriminator's smaller shapes, its
// backward pass to the weights at half of it (`plan_down` on the Rust side). In bfloat16 (CPUs
// with AVX512-BF16) its passes run fused only (`winograd_fused.cpp`: `fused_down`,
// `fused_down_weight`, `fused_up`; `plan_down_bf16`).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "elementwise.h"
#include "conv_passes.h"
#include "winograd_fused.h"
#include "winograd_points.h"
#include "selfsup/guard.h"

namespace {

// The filter transform of F(m, r), m = 2 with r = 2 or 5, m = 4 with r = 3 or 5 (α = m + r - 1
// points: 0, ±1, then ±2, then ±1/2, and ∞; for F(2, 2): 0, 1 and ∞), as a Kronecker product for
// row-major vec: vec(G g Gᵀ) = kG vec(g) (α² x r²); Bᵀ and Aᵀ are `Points` below. F(2x2, 3x3)'s
// G is `Points<2, 3>::G`, which the filter loops take instead (`filter_tiles_3`,
// `filter_grad_3`). F(2x2, 3x3) and F(4x4, 3x3) are Lavin & Gray's; F(2x2, 5x5) and F(4x4, 5x5)
// the Cook-Toom construction over the same points as their F(4x4, 3x3) and as F(6x6, 3x3) (α = 6
// and 8: their Bᵀ are those), derived exactly (rational arithmetic) with Aᵀ[i][j] = p_jⁱ,
// G[j][k] = p_jᵏ / Π_l≠j (p_j - p_l), the first rows of G and Bᵀ of F(4, 5) negated together;
// F(2x2, 2x2) is y0 = (d0 - d1) g0 + d1 (g0 + g1), y1 = d1 (g0 + g1) + (d2 - d1) g1. All checked
// against the direct convolution by the tests.
struct Transforms {
  at::Tensor kG;
  Transforms(int64_t m, int64_t r) {
    auto f = at::TensorOptions().dtype(at::kDouble);
    at::Tensor G;
    if (m == 4 && r == 3) {
      const double s = 1.0 / 6, t = 1.0 / 24, u = 1.0 / 12;
      G = at::tensor({0.25, 0.0, 0.0, -s, -s, -s, -s, s, -s, t, u, s, t, -u, s, 0.0, 0.0, 1.0}, f)
              .view({6, 3});
    } else if (m == 4) {
      TORCH_CHECK(r == 5, "Winograd convolution: F(4x4, ", r, "x", r, ") (3x3 or 5x5 only)");
      const double a = 2.0 / 9, b = 1.0 / 90, c = 1.0 / 45, d = 2.0 / 45, e = 4.0 / 45,
                   f8 = 8.0 / 45, g = 16.0 / 45, h = 32.0 / 45;
      G = at::tensor({1.0, 0.0, 0.0, 0.0, 0.0,  //
                      -a,  -a,  -a,  -a,  -a,   //
                      -a,  a,   -a,  a,   -a,   //
                      b,   c,   d,   e,   f8,   //
                      b,   -c,  d,   -e,  f8,   //
                      h,   g,   f8,  e,   d,    //
                      h,   -g,  f8,  -e,  d,    //
                      0.0, 0.0, 0.0, 0.0, 1.0},
                     f)
              .view({8, 5});
    } else if (r == 2) {
      G = at::tensor({1.0, 0.0, 1.0, 1.0, 0.0, 1.0}, f).view({3, 2});
    } else {
      TORCH_CHECK(r == 5, "Winograd convolution: F(2x2, ", r, "x", r,
                  ") as a product (2x2 or 5x5; 3x3 by the filter loops)");
      const double s = 1.0 / 6, t = 1.0 / 24, u = 1.0 / 12, v = 1.0 / 3;
      G = at::tensor({0.25, 0.0, 0.0, 0.0, 0.0,  //
                      -s,   -s,  -s,  -s,  -s,   //
                      -s,   s,   -s,  s,   -s,   //
                      t,    u,   s,   v,   2 * v,  //
                      t,    -u,  s,   -v,  2 * v,  //
                      0.0,  0.0, 0.0, 0.0, 1.0},
                     f)
              .view({6, 5});
    }
    kG = at::kron(G, G).to(at::kFloat).contiguous();
  }
};

const Transforms& transforms(int64_t m, int64_t r) {
  static const Transforms t2(2, 2), t5(2, 5), t43(4, 3), t45(4, 5);
  TORCH_CHECK(m == 4 || r != 3, "Winograd convolution: F(2x2, 3x3)'s filters by the loops");
  if (m == 4) return r == 3 ? t43 : t45;
  return r == 2 ? t2 : t5;
}

// Tiles of one side: ceil(side / m).
int64_t tiles(int64_t side, int64_t m) { return (side + m - 1) / m; }

using selfsup::Points;
using selfsup::transform;
using selfsup::transform_t;

// Eight channels of one tile entry: the transform loops hold a tile's α x α values of eight
// channels (one AVX2 register each) and unroll the constant matrices, so their zero entries
// drop out and the ±1 ones cost no multiplication.
typedef float v8 __attribute__((vector_size(32), aligned(4)));

// `n` <= 8 channels from `p` (zero past `n`), and back.
SELFSUP_INLINE v8 load8(const float* p, int64_t n) {
  if (n == 8) return *reinterpret_cast<const v8*>(p);
  v8 v = {};
  for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
}
SELFSUP_INLINE void store8(float* p, const v8& v, int64_t n) {
  if (n == 8) {
    *reinterpret_cast<v8*>(p) = v;
  } else {
    for (int64_t i = 0; i < n; ++i) p[i] = v[i];
  }
}

// The same for bfloat16 values (as their bits, `elementwise.h`): widened to float on the way in,
// rounded to nearest even on the way out (NaN stays a quiet NaN), as c10::BFloat16 rounds.
typedef uint16_t h8 __attribute__((vector_size(16), aligned(2)));
typedef uint32_t w8 __attribute__((vector_size(32)));
SELFSUP_INLINE v8 load8(const uint16_t* p, int64_t n) {
  h8 h = {};
  if (n == 8) {
    h = *reinterpret_cast<const h8*>(p);
  } else {
    for (int64_t i = 0; i < n; ++i) h[i] = p[i];
  }
  return reinterpret_cast<v8>(__builtin_convertvector(h, w8) << 16);
}
// The bfloat16 bits of `v`'s values in the low halves of 32-bit lanes.
SELFSUP_INLINE w8 bf16_bits(const v8& v) {
  const w8 u = reinterpret_cast<w8>(v);
  const w8 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const w8 nan = (u & 0x7fffffffu) > 0x7f800000u;  // all ones where NaN
  return (rounded & ~nan) | (nan & 0x7fc0u);
}
SELFSUP_INLINE void store8(uint16_t* p, const v8& v, int64_t n) {
  const h8 h = __builtin_convertvector(bf16_bits(v), h8);
  if (n == 8) {
    *reinterpret_cast<h8*>(p) = h;
  } else {
    for (int64_t i = 0; i < n; ++i) p[i] = h[i];
  }
}

// The layout of a pass's tiles: `n` images of `H x W` in `th x tw` tiles of m x m.
struct Tiling {
  int64_t n, H, W, th, tw;
  int64_t count() const { return n * th * tw; }
};

// Tiles [t0, t1) of `x` (n, H, W, C), NHWC: `u` (α², T, C) gets the transform of each tile's
// S x S patch (rows and columns from M·ty - P and M·tx - P, zero outside the image) for
// F(M x M, R x R), α = M + R - 1: Bᵀ d B of an α x α input patch (S = α), A dY Aᵀ of an M x M
// gradient (S = M).
template <int M, int R, int S, int P, typename E>
SELFSUP_INLINE void patch_tiles(const E* x, int64_t C, Tiling g, E* u, int64_t t0, int64_t t1) {
  constexpr int A = M + R - 1;
  const int64_t T = g.count();
  v8 d[S][S], v[A][A];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t img = t / (g.th * g.tw), ty = t / g.tw % g.th, tx = t % g.tw;
    for (int64_t c0 = 0; c0 < C; c0 += 8) {
      const int64_t cb = std::min<int64_t>(8, C - c0);
#pragma GCC unroll 8
      for (int i = 0; i < S; ++i) {
        const int64_t h = M * ty - P + i;
#pragma GCC unroll 8
        for (int j = 0; j < S; ++j) {
          const int64_t w = M * tx - P + j;
          const bool inside = h >= 0 && h < g.H && w >= 0 && w < g.W;
          d[i][j] = inside ? load8(x + ((img * g.H + h) * g.W + w) * C + c0, cb) : v8{};
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
        for (int j = 0; j < A; ++j) store8(u + ((i * A + j) * T + t) * C + c0, v[i][j], cb);
      }
    }
  }
}

// Tiles [t0, t1) of `m` (α², T, K): `y` (n, M·th, M·tw, K), NHWC, gets Aᵀ m A of each tile.
template <int M, int R, typename E>
SELFSUP_INLINE void output_tiles_body(const E* m, int64_t K, Tiling g, E* y, int64_t t0,
                                      int64_t t1) {
  constexpr int A = M + R - 1;
  const int64_t T = g.count(), Wy = M * g.tw, Hy = M * g.th;
  v8 v[A][A], o[M][M];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t img = t / (g.th * g.tw), ty = t / g.tw % g.th, tx = t % g.tw;
    for (int64_t c0 = 0; c0 < K; c0 += 8) {
      const int64_t cb = std::min<int64_t>(8, K - c0);
#pragma GCC unroll 8
      for (int i = 0; i < A; ++i) {
#pragma GCC unroll 8
        for (int j = 0; j < A; ++j) v[i][j] = load8(m + ((i * A + j) * T + t) * K + c0, cb);
      }
      transform(Points<M, R>::AT, v, o);
      for (int i = 0; i < M; ++i) {
        for (int j = 0; j < M; ++j) {
          store8(y + ((img * Hy + M * ty + i) * Wy + M * tx + j) * K + c0, o[i][j], cb);
        }
      }
    }
  }
}

// The loops of F(M x M, R x R) as plain functions (GCC's `target_clones` takes no templates),
// each compiled per instruction set: `input_tiles_M_R`, Bᵀ d B of each tile's α x α patch of
// `x`, padding (R - 1) / 2; `output_tiles_M_R`, Aᵀ m A into the NHWC output;
// `grad_tiles_M_R`, A dY Aᵀ of each tile's M x M gradient dY of `dy` (n, H, W, K) (zero past
// the image's last row and column). The 2x2 filters (the 4x4 stride-2 convolution's
// space-to-depth form) read their input patches by `down_input_tiles` below.
#define SELFSUP_OUTPUT_AND_GRAD_LOOPS(M, R)                                                        \
  SELFSUP_CLONES void output_tiles_##M##_##R(const float* m, int64_t K, Tiling g, float* y,        \
                                             int64_t t0, int64_t t1) {                             \
    output_tiles_body<M, R>(m, K, g, y, t0, t1);                                                   \
  }                                                                                                \
  SELFSUP_CLONES void grad_tiles_##M##_##R(const float* dy, int64_t K, Tiling g, float* v,         \
                                           int64_t t0, int64_t t1) {                               \
    patch_tiles<M, R, M, 0>(dy, K, g, v, t0, t1);                                                  \
  }
#define SELFSUP_TILE_LOOPS(M, R)                                                                   \
  SELFSUP_CLONES void input_tiles_##M##_##R(const float* x, int64_t C, Tiling g, float* u,         \
                                            int64_t t0, int64_t t1) {                              \
    patch_tiles<M, R, M + R - 1, (R - 1) / 2>(x, C, g, u, t0, t1);                                 \
  }                                                                                                \
  SELFSUP_OUTPUT_AND_GRAD_LOOPS(M, R)
SELFSUP_OUTPUT_AND_GRAD_LOOPS(2, 2)
SELFSUP_TILE_LOOPS(2, 3)
SELFSUP_TILE_LOOPS(2, 5)
SELFSUP_TILE_LOOPS(4, 3)
SELFSUP_TILE_LOOPS(4, 5)

// The three loops of F(2 x 2, 3 x 3) on bfloat16 tensors (`*_bf16_2_3`): each value widened to
// float, transformed in float, rounded once to bfloat16 on the way out.
#define SELFSUP_BF16_LOOPS(M, R)                                                                   \
  SELFSUP_CLONES void input_tiles_bf16_##M##_##R(const uint16_t* x, int64_t C, Tiling g,          \
                                                 uint16_t* u, int64_t t0, int64_t t1) {           \
    patch_tiles<M, R, M + R - 1, (R - 1) / 2>(x, C, g, u, t0, t1);                                 \
  }                                                                                                \
  SELFSUP_CLONES void output_tiles_bf16_##M##_##R(const uint16_t* m, int64_t K, Tiling g,         \
                                                  uint16_t* y, int64_t t0, int64_t t1) {          \
    output_tiles_body<M, R>(m, K, g, y, t0, t1);                                                   \
  }                                                                                                \
  SELFSUP_CLONES void grad_tiles_bf16_##M##_##R(const uint16_t* dy, int64_t K, Tiling g,          \
                                                uint16_t* v, int64_t t0, int64_t t1) {            \
    patch_tiles<M, R, M, 0>(dy, K, g, v, t0, t1);                                                  \
  }
SELFSUP_BF16_LOOPS(2, 3)

// Tiles [t0, t1) of the 4x4 stride-2 convolution (padding 1) of `x` (n, H, W, C), NHWC, `g` its
// output's tiling: `u` (9, T, 4C) gets Bᵀ d B of F(2x2, 2x2) of each tile's 3 x 3 patch of the
// space-to-depth form s[I, J, (a, b, c)] = x[2I + a - 1, 2J + b - 1, c] (zero outside), read
// from `x` directly, eight channels of one (a, b) at a time.
SELFSUP_CLONES void down_input_tiles(const float* x, int64_t C, Tiling g, float* u, int64_t t0,
                                     int64_t t1) {
  const int64_t T = g.count();
  v8 d[3][3], v[3][3];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t img = t / (g.th * g.tw), ty = t / g.tw % g.th, tx = t % g.tw;
    for (int64_t ab = 0; ab < 4; ++ab) {
      for (int64_t c0 = 0; c0 < C; c0 += 8) {
        const int64_t cb = std::min<int64_t>(8, C - c0);
#pragma GCC unroll 8
        for (int i = 0; i < 3; ++i) {
          const int64_t h = 2 * (2 * ty + i) + ab / 2 - 1;
#pragma GCC unroll 8
          for (int j = 0; j < 3; ++j) {
            const int64_t w = 2 * (2 * tx + j) + ab % 2 - 1;
            const bool inside = h >= 0 && h < g.H && w >= 0 && w < g.W;
            d[i][j] = inside ? load8(x + ((img * g.H + h) * g.W + w) * C + c0, cb) : v8{};
          }
        }
        transform(Points<2, 2>::BT, d, v);
#pragma GCC unroll 8
        for (int i = 0; i < 3; ++i) {
#pragma GCC unroll 8
          for (int j = 0; j < 3; ++j) {
            store8(u + ((i * 3 + j) * T + t) * 4 * C + ab * C + c0, v[i][j], cb);
          }
        }
      }
    }
  }
}

// A (K, C, 3, 3) view of 3x3 filters as the filter loops read and write them: element (k, c, i,
// j) at `k sk + c sc + i si + j sj` from the first (strides in elements; negative where the
// view flips the taps).
struct FilterView {
  int64_t K, C, sk, sc, si, sj;
};

// `n` <= 8 values `stride` elements apart from `p`, narrowed and rounded where bfloat16 (the
// filter gradient's writes into NCHW filters).
template <typename E>
SELFSUP_INLINE void store_strided8(E* p, int64_t stride, const v8& v, int64_t n) {
  if (stride == 1) return store8(p, v, n);
  E lanes[8];
  store8(lanes, v, 8);
  for (int64_t l = 0; l < n; ++l) p[l * stride] = lanes[l];
}

// G g Gᵀ of F(2x2, 3x3) for output channels [k0, k0 + n) of the filter view `f` at input channel
// c, its output channels contiguous (`f.sk` = 1: one load a tap).
template <typename E>
SELFSUP_INLINE void filter_tile8(const E* w, FilterView f, int64_t k0, int64_t n, int64_t c,
                                 v8 (&v)[4][4]) {
  v8 g[3][3];
#pragma GCC unroll 3
  for (int i = 0; i < 3; ++i) {
#pragma GCC unroll 3
    for (int j = 0; j < 3; ++j) g[i][j] = load8(w + k0 + c * f.sc + i * f.si + j * f.sj, n);
  }
  transform(Points<2, 3>::G, g, v);
}

// The blocks of the filter loops: input channels and output channels a block, a block's values
// staying in the first-level cache (their taps read, their transformed rows written).
constexpr int64_t kFilterBlockC = 16, kFilterBlockK = 32;

// Runs `block(src, b, k, c)` over the blocks of input channels [c0, c1) (kFilterBlockC apart, so
// pairs of channels stay together) and every kFilterBlockK output channels of the view `f` of
// `w`: `b` the block's view over `src` (its K and C the block's), output channels contiguous, as
// the loops' lanes take them: `w` itself where its output channels are (the backward pass's
// transposed view of a channels-last filter), else a copy of the block's taps transposed into
// a buffer (a filter's output channels are its outermost dimension: read lane by lane, eight
// values each a cache line apart, the loads stalled: at ResNet-18's 512 x 512 filters, 1.07% of
// a bf16 SimCLR run's CPU samples on a Zen 4 against 0.75% through the buffer).
template <typename E, typename Block>
SELFSUP_INLINE void filter_blocks(const E* w, FilterView f, int64_t c0, int64_t c1, Block block) {
  E stage[kFilterBlockC * 9 * kFilterBlockK];
  for (int64_t cb = c0; cb < c1; cb += kFilterBlockC) {
    const int64_t nc = std::min(kFilterBlockC, c1 - cb);
    for (int64_t kb = 0; kb < f.K; kb += kFilterBlockK) {
      const int64_t nk = std::min(kFilterBlockK, f.K - kb);
      if (f.sk == 1) {
        block(w + kb + cb * f.sc, FilterView{nk, nc, 1, f.sc, f.si, f.sj}, kb, cb);
        continue;
      }
      for (int64_t k = 0; k < nk; ++k) {
        for (int t = 0; t < 9; ++t) {
          const E* src = w + (kb + k) * f.sk + cb * f.sc + t / 3 * f.si + t % 3 * f.sj;
          for (int64_t c = 0; c < nc; ++c) stage[(c * 9 + t) * kFilterBlockK + k] = src[c * f.sc];
        }
      }
      block(stage, FilterView{nk, nc, 1, 9 * kFilterBlockK, 3 * kFilterBlockK, kFilterBlockK}, kb,
            cb);
    }
  }
}

// Input channels [c0, c1) of the transformed filters G g Gᵀ of F(2x2, 3x3) of the view `f` of
// `w`, eight output channels at a time, in float on values widened from bfloat16 and rounded
// once on the way out: into `v` (16, C, K), dense.
template <typename E>
SELFSUP_INLINE void filter_tiles_body(const E* w, FilterView f, E* v, int64_t c0, int64_t c1) {
  v8 t[4][4];
  filter_blocks(w, f, c0, c1, [&](const E* src, FilterView b, int64_t kb, int64_t cb) {
    for (int64_t k0 = 0; k0 < b.K; k0 += 8) {
      const int64_t n = std::min<int64_t>(8, b.K - k0);
      for (int64_t c = 0; c < b.C; ++c) {
        filter_tile8(src, b, k0, n, c, t);
        E* out = v + (cb + c) * f.K + kb + k0;
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
#pragma GCC unroll 4
          for (int j = 0; j < 4; ++j) store8(out + (i * 4 + j) * f.C * f.K, t[i][j], n);
        }
      }
    }
  });
}

// The same in bfloat16 for the fused passes (`fused_winograd_filters`' layout, C even): pairs
// [c0, c1) of input channels into `v` (16, C/2, K, 2), each output channel's values at channels
// 2i and 2i + 1 side by side, as `vdpbf16ps` pairs them.
SELFSUP_INLINE void filter_pairs_body(const uint16_t* w, FilterView f, uint16_t* v, int64_t c0,
                                      int64_t c1) {
  typedef uint32_t w8u __attribute__((vector_size(32), aligned(4)));
  v8 lo[4][4], hi[4][4];
  const auto block = [&](const uint16_t* src, FilterView b, int64_t kb, int64_t cb) {
    for (int64_t k0 = 0; k0 < b.K; k0 += 8) {
      const int64_t n = std::min<int64_t>(8, b.K - k0);
      for (int64_t c = 0; c < b.C; c += 2) {
        filter_tile8(src, b, k0, n, c, lo);
        filter_tile8(src, b, k0, n, c + 1, hi);
        uint16_t* out = v + ((cb + c) / 2 * f.K + kb + k0) * 2;
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
#pragma GCC unroll 4
          for (int j = 0; j < 4; ++j) {
            const w8u pair = bf16_bits(lo[i][j]) | (bf16_bits(hi[i][j]) << 16);
            uint16_t* row = out + (i * 4 + j) * f.C * f.K;
            if (n == 8) {
              *reinterpret_cast<w8u*>(row) = pair;
            } else {
              for (int64_t l = 0; l < n; ++l) std::memcpy(row + 2 * l, &pair[l], 4);
            }
          }
        }
      }
    }
  };
  filter_blocks(w, f, 2 * c0, 2 * c1, block);
}

// Output channels [k0, k1) of the gradient Gᵀ p G of F(2x2, 3x3) filters from their transformed
// sums `p` (16, K, C), float, dense, eight input channels at a time: into the view `f` of `dw`
// (rounded once where bfloat16).
template <typename E>
SELFSUP_INLINE void filter_grad_body(const float* p, FilterView f, E* dw, int64_t k0,
                                     int64_t k1) {
  v8 t[4][4], g[3][3];
  for (int64_t k = k0; k < k1; ++k) {
    for (int64_t c0 = 0; c0 < f.C; c0 += 8) {
      const int64_t n = std::min<int64_t>(8, f.C - c0);
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) t[i][j] = load8(p + ((i * 4 + j) * f.K + k) * f.C + c0, n);
      }
      transform_t(Points<2, 3>::G, t, g);
#pragma GCC unroll 3
      for (int i = 0; i < 3; ++i) {
#pragma GCC unroll 3
        for (int j = 0; j < 3; ++j) {
          store_strided8(dw + k * f.sk + c0 * f.sc + i * f.si + j * f.sj, f.sc, g[i][j], n);
        }
      }
    }
  }
}

// The filter loops as plain functions compiled per instruction set (as the tile loops).
SELFSUP_CLONES void filter_tiles_2_3(const float* w, FilterView f, float* v, int64_t c0,
                                     int64_t c1) {
  filter_tiles_body(w, f, v, c0, c1);
}
SELFSUP_CLONES void filter_tiles_bf16_2_3(const uint16_t* w, FilterView f, uint16_t* v,
                                          int64_t c0, int64_t c1) {
  filter_tiles_body(w, f, v, c0, c1);
}
SELFSUP_CLONES void filter_pairs_bf16_2_3(const uint16_t* w, FilterView f, uint16_t* v,
                                          int64_t c0, int64_t c1) {
  filter_pairs_body(w, f, v, c0, c1);
}
SELFSUP_CLONES void filter_grad_2_3(const float* p, FilterView f, float* dw, int64_t k0,
                                    int64_t k1) {
  filter_grad_body(p, f, dw, k0, k1);
}
SELFSUP_CLONES void filter_grad_bf16_2_3(const float* p, FilterView f, uint16_t* dw, int64_t k0,
                                         int64_t k1) {
  filter_grad_body(p, f, dw, k0, k1);
}

// A tile loop on elements `E` (float, or bfloat16 as its bits).
template <typename E>
using TileLoopOf = void (*)(const E*, int64_t, Tiling, E*, int64_t, int64_t);
using TileLoop = TileLoopOf<float>;

// The three loops of F(m x m, r x r): m = 2 with r = 2 (no input loop: `down_input_tiles`), 3 or
// 5; m = 4 with r = 3 or 5.
template <typename E>
struct Loops {
  TileLoopOf<E> input, output, grad;
};
Loops<float> loops(int64_t m, int64_t r) {
  if (m == 4) {
    return r == 3 ? Loops<float>{input_tiles_4_3, output_tiles_4_3, grad_tiles_4_3}
                  : Loops<float>{input_tiles_4_5, output_tiles_4_5, grad_tiles_4_5};
  }
  switch (r) {
    case 2: return Loops<float>{nullptr, output_tiles_2_2, grad_tiles_2_2};
    case 3: return Loops<float>{input_tiles_2_3, output_tiles_2_3, grad_tiles_2_3};
    default: return Loops<float>{input_tiles_2_5, output_tiles_2_5, grad_tiles_2_5};
  }
}
// bfloat16: F(2 x 2, 3 x 3) only (`selfsup_conv_winograd` widens the others to float).
Loops<uint16_t> bf16_loops(int64_t r) {
  TORCH_CHECK(r == 3, "Winograd convolution in bfloat16: ", r, "x", r, " filters (3x3 only)");
  return Loops<uint16_t>{input_tiles_bf16_2_3, output_tiles_bf16_2_3, grad_tiles_bf16_2_3};
}

// Runs `loop` over the tiles of `g` with libtorch's threads, from `src` (its last dimension
// the channels the loop reads) into the dense tensor `dst` of the same element type.
template <typename E>
void for_tiles(TileLoopOf<E> loop, const at::Tensor& src, Tiling g, at::Tensor& dst) {
  TORCH_CHECK(src.scalar_type() == dst.scalar_type() && src.element_size() == sizeof(E),
              "Winograd tiles: ", src.scalar_type(), " into ", dst.scalar_type());
  const E* in = static_cast<const E*>(src.data_ptr());
  E* o = static_cast<E*>(dst.data_ptr());
  const int64_t C = src.size(-1);
  at::parallel_for(0, g.count(), 16, [&](int64_t t0, int64_t t1) { loop(in, C, g, o, t0, t1); });
}

// Which loop of `Loops`: the input patches, the output tiles, or the gradient's patches.
enum class Which { Input, Output, Grad };

// Runs loop `which` of F(m x m, r x r) for the element type of `src` (float; bfloat16: m = 2).
void for_tiles(Which which, int64_t m, int64_t r, const at::Tensor& src, Tiling g,
               at::Tensor& dst) {
  const auto of = [which](const auto& l) {
    return which == Which::Input ? l.input : which == Which::Output ? l.output : l.grad;
  };
  if (src.scalar_type() == at::kBFloat16) {
    TORCH_CHECK(m == 2, "Winograd convolution in bfloat16: tiles of 2x2 only");
    for_tiles<uint16_t>(of(bf16_loops(r)), src, g, dst);
  } else {
    for_tiles<float>(of(loops(m, r)), src, g, dst);
  }
}

// `loop`'s `(rows, T, out_channels)` tiles of `src` (n, H, W, channels) NHWC, `rows` values a
// tile.
at::Tensor run_tiles(TileLoop loop, const at::Tensor& src, Tiling g, int64_t rows,
                     int64_t out_channels) {
  at::Tensor out = at::empty({rows, g.count(), out_channels}, src.options());
  for_tiles<float>(loop, src, g, out);
  return out;
}
// The same for loop `which` of F(m x m, r x r) in the element type of `src`.
at::Tensor run_tiles(Which which, int64_t m, int64_t r, const at::Tensor& src, Tiling g,
                     int64_t rows, int64_t out_channels) {
  at::Tensor out = at::empty({rows, g.count(), out_channels}, src.options());
  for_tiles(which, m, r, src, g, out);
  return out;
}

// `x` (n, C, H, W) as a dense NHWC tensor (n, H, W, C): a view when it is channels-last.
at::Tensor nhwc(const at::Tensor& x) { return x.permute({0, 2, 3, 1}).contiguous(); }

// The m x m tiles of `x` (n, C, H, W).
Tiling tiling(const at::Tensor& x, int64_t m) {
  return Tiling{x.size(0), x.size(2), x.size(3), tiles(x.size(2), m), tiles(x.size(3), m)};
}

// `(α², T, C)`: the transformed α x α input patches Bᵀ d B of every m x m output tile of `x`
// (N, C, H, W) for an r x r filter with padding (r - 1) / 2, α = m + r - 1.
at::Tensor input_tiles(const at::Tensor& x, int64_t m, int64_t r) {
  const int64_t a = m + r - 1;
  return run_tiles(Which::Input, m, r, nhwc(x), tiling(x, m), a * a, x.size(1));
}

// `(α², C, K)`: the transformed filters G g Gᵀ for F(m x m, r x r) of the filters `taps`
// (r², K C), tap by tap (r² rows), each row the K x C filters' values at that tap.
at::Tensor filter_tiles_of(const at::Tensor& taps, int64_t m, int64_t r, int64_t K, int64_t C) {
  const int64_t a = m + r - 1;
  // In float, whatever the filters' type (bfloat16: rounded once after).
  return transforms(m, r)
      .kG.mm(taps.to(at::kFloat))
      .to(taps.scalar_type())
      .view({a * a, K, C})
      .transpose(1, 2);
}

// The filter loops' view of `w` (K, C, 3, 3), any strides, and the offset of its first element:
// as it is, or with `transposed`, the filters of the backward pass to the input, w'[c, k, i, j]
// = w[k, c, 2 - i, 2 - j] (C, K, 3, 3), read in place (no flipped copy).
std::pair<FilterView, int64_t> filter_view(const at::Tensor& w, bool transposed) {
  const int64_t s0 = w.stride(0), s1 = w.stride(1), s2 = w.stride(2), s3 = w.stride(3);
  if (transposed) return {FilterView{w.size(1), w.size(0), s1, s0, -s2, -s3}, 2 * (s2 + s3)};
  return {FilterView{w.size(0), w.size(1), s0, s1, s2, s3}, 0};
}

// Input channels (or pairs of them) a thread's share holds at least: some 32k filter values,
// so that the small networks' filters take one thread.
int64_t filter_grain(int64_t per_item) { return std::max<int64_t>(1, 32768 / per_item); }

// `(16, C', K')` in the type of `w` (K, C, 3, 3), any strides: the transformed filters G g Gᵀ of
// F(2x2, 3x3), by the filter loops (as `filter_tiles_of`'s product did, in float, rounded once to
// bfloat16; the filters and the transforms' layouts in one pass instead of a transposing copy, a
// widening copy, the product, a rounding copy and the fused passes' packing copy: 23 ms a step
// of ResNet-18's at batch 128 for the packing of the 256-channel layers alone on a Zen 4); with
// `transposed` those of the backward pass to the input (C' = K, K' = C); with `pairs`
// (bfloat16, C' even), in the fused passes' layout (16, C'/2, K', 2) (`fused_winograd_filters`).
at::Tensor filter_tiles_3(const at::Tensor& w, bool transposed, bool pairs) {
  const bool bf16 = w.scalar_type() == at::kBFloat16;
  TORCH_CHECK(w.dim() == 4 && w.size(2) == 3 && w.size(3) == 3 &&
                  (bf16 || w.scalar_type() == at::kFloat) &&
                  (!pairs || (bf16 && w.size(transposed ? 0 : 1) % 2 == 0)),
              "Winograd filters F(2x2, 3x3): ", w.sizes(), " ", w.scalar_type(),
              pairs ? " in pairs of channels" : "");
  const auto [f, first] = filter_view(w, transposed);
  at::Tensor v = pairs ? at::empty({16, f.C / 2, f.K, 2}, w.options())
                       : at::empty({16, f.C, f.K}, w.options());
  const int64_t items = pairs ? f.C / 2 : f.C;
  at::parallel_for(0, items, filter_grain(9 * f.K * (pairs ? 2 : 1)), [&](int64_t c0, int64_t c1) {
    if (!bf16) {
      filter_tiles_2_3(w.data_ptr<float>() + first, f, v.data_ptr<float>(), c0, c1);
    } else if (pairs) {
      filter_pairs_bf16_2_3(selfsup::elements<uint16_t>(w) + first, f,
                            selfsup::elements<uint16_t>(v), c0, c1);
    } else {
      filter_tiles_bf16_2_3(selfsup::elements<uint16_t>(w) + first, f,
                            selfsup::elements<uint16_t>(v), c0, c1);
    }
  });
  return v;
}

// `(α², C, K)`: the transformed filters G g Gᵀ of `w` (K, C, r, r) for F(m x m, r x r); with
// `transposed`, those of the backward pass to the input (`w` flipped and transposed: C and K
// swap).
at::Tensor filter_tiles(const at::Tensor& w, int64_t m, bool transposed = false) {
  if (m == 2 && w.size(2) == 3) return filter_tiles_3(w, transposed, false);
  const at::Tensor wt = transposed ? w.flip({2, 3}).transpose(0, 1) : w;
  const int64_t K = wt.size(0), C = wt.size(1), r = wt.size(2);
  return filter_tiles_of(wt.reshape({K * C, r * r}).t(), m, r, K, C);
}

// The gradient (K, C, 3, 3) of F(2x2, 3x3) filters in `kind` and `format` from their transformed
// sums `p` (16, K, C), float, dense: Gᵀ p G by the filter loops, written in place in the
// filters' layout (rounded once to bfloat16), as `filter_grad_of_tiles`' product, permuting
// copy, rounding copy and layout copy did in four passes.
at::Tensor filter_grad_3(const at::Tensor& p, at::ScalarType kind, at::MemoryFormat format) {
  const int64_t K = p.size(1), C = p.size(2);
  TORCH_CHECK(p.dim() == 3 && p.size(0) == 16 && p.is_contiguous() &&
                  p.scalar_type() == at::kFloat && (kind == at::kFloat || kind == at::kBFloat16),
              "Winograd filter gradient F(2x2, 3x3): sums ", p.sizes(), " ", p.scalar_type(),
              " into ", kind);
  at::Tensor dw = at::empty({K, C, 3, 3}, p.options().dtype(kind).memory_format(format));
  const FilterView f = filter_view(dw, false).first;
  at::parallel_for(0, K, filter_grain(9 * C), [&](int64_t k0, int64_t k1) {
    if (kind == at::kFloat) {
      filter_grad_2_3(p.data_ptr<float>(), f, dw.data_ptr<float>(), k0, k1);
    } else {
      filter_grad_bf16_2_3(p.data_ptr<float>(), f, selfsup::elements<uint16_t>(dw), k0, k1);
    }
  });
  return dw;
}

// Writes into `y` (n, m·th, m·tw, K), NHWC and dense, the output tiles Aᵀ p A of the products
// `p` (α², n·th·tw, K) of n images.
void output_of_tiles(const at::Tensor& p, int64_t m, int64_t r, at::Tensor y) {
  const Tiling g{y.size(0), y.size(1), y.size(2), y.size(1) / m, y.size(2) / m};
  for_tiles(Which::Output, m, r, p, g, y);
}

// `(B, M, N)`: the products `a[i] b[i]` of `a` (B, M, L) and `b` (B, L, N), one matrix product
// each (multithreaded inside; measured faster than one `bmm`, which splits the batch between
// threads: 35 against 49 ms for 16 x 512³ on 2 cores of a Zen 3).
at::Tensor products(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), a.size(1), b.size(2)}, a.options());
  for (int64_t i = 0; i < a.size(0); ++i) {
    at::Tensor o = out[i];
    at::mm_out(o, a[i], b[i]);
  }
  return out;
}

using selfsup::piece_bytes;

// Images per piece of a pass: the transformed tiles of a piece, α² values a tile for each of
// `channels` (the larger side of the products), stay within `piece_bytes()`, so the pass's
// temporaries do not grow with the batch (at the NIN-192's 5x5 layer, batch 512, whole-batch
// tiles took 0.9 GB). The pieces depend on the shapes only, so the sums' order does not change
// from run to run.
int64_t images_per_piece(int64_t m, int64_t r, int64_t H, int64_t W, int64_t channels) {
  const int64_t a = m + r - 1;
  const int64_t per_image = a * a * tiles(H, m) * tiles(W, m) * channels * 4;
  return std::max<int64_t>(1, piece_bytes().load() / std::max<int64_t>(per_image, 1));
}

// The forward pass by F(m x m, r x r) of N images into their output (N, K, Ho, Wo), in
// `format`: `patches(n0, n)` gives the transformed input patches (α², T, C) of images
// [n0, n0 + n) (`input_tiles`, `down_tiles`), `v` the transformed filters (α², C, K); the images
// in pieces. The tiles write NHWC: channels-last outputs whose sides the tiles cover exactly
// take them in place; any other (NCHW, or tiles past the map's edge) takes each piece's tiles
// from a buffer of that piece (at most `piece_bytes()`), not from a whole-batch NHWC output
// copied after (the NIN-192's fp32 NCHW step, batch 128 x 4, on the model-207 Xeon: peak 4,189
// -> 4,148 MiB, the same losses, the step 3.27, 3.16 -> 3.13, 3.14 s).
template <typename Patches>
at::Tensor tiled_forward(int64_t m, int64_t r, int64_t N, int64_t Ho, int64_t Wo,
                         const at::Tensor& v, Patches patches, at::MemoryFormat format) {
  const int64_t th = tiles(Ho, m), tw = tiles(Wo, m), K = v.size(2);
  const int64_t step = images_per_piece(m, r, Ho, Wo, std::max(v.size(1), K));
  const bool in_place = format == at::MemoryFormat::ChannelsLast && m * th == Ho && m * tw == Wo;
  // In place: `y` (N, Ho, Wo, K) NHWC, whose (N, K, Ho, Wo) view is the channels-last output.
  const at::Tensor y = in_place ? at::empty({N, Ho, Wo, K}, v.options()) : at::Tensor();
  at::Tensor out = in_place ? y.permute({0, 3, 1, 2})
                            : at::empty({N, K, Ho, Wo}, v.options().memory_format(format));
  for (int64_t n0 = 0; n0 < N; n0 += step) {
    const int64_t n = std::min(step, N - n0);
    at::Tensor piece =
        in_place ? y.narrow(0, n0, n) : at::empty({n, m * th, m * tw, K}, v.options());
    output_of_tiles(products(patches(n0, n), v), m, r, piece);
    if (!in_place) {
      out.narrow(0, n0, n).copy_(piece.permute({0, 3, 1, 2}).slice(2, 0, Ho).slice(3, 0, Wo));
    }
  }
  return out;
}

// The gradient (r, r, K, C) of an r x r filter from its transformed sums `p` (α², K, C), float:
// Gᵀ p G.
at::Tensor filter_grad_of_tiles(const at::Tensor& p, int64_t m, int64_t r) {
  const int64_t a = m + r - 1, K = p.size(1), C = p.size(2);
  return transforms(m, r).kG.t().mm(p.view({a * a, K * C})).view({r, r, K, C});
}

// The transformed gradient sums (α², K, C), float, of an r x r filter by F(m x m, r x r), given
// `dy` (N, K, Ho, Wo) and the transformed input patches (α², T, C) from `patches` as in
// `tiled_forward`: the sum over the pieces' tiles of (A dY Aᵀ)_ξᵀ (K, T) · U_ξ (T, C), piece
// after piece; the caller takes them back through G (`filter_grad_of_tiles`, `filter_grad_3`).
// Channels last (K, then C innermost, as a channels-last filter holds them), so that the
// filter's gradient is copied out in runs of C values (a (C, K) order took 2.1 ms to copy into
// a 256 x 128 x 4 x 4 channels-last filter on the model-207 Xeon, 0.17 ms from this one).
// bfloat16: each piece's products (fp32 sums, rounded once) added in float.
template <typename Patches>
at::Tensor tiled_weight_sums(int64_t m, int64_t r, int64_t C, const at::Tensor& dy,
                             Patches patches) {
  const int64_t N = dy.size(0), K = dy.size(1), a = m + r - 1;
  const bool bf16 = dy.scalar_type() == at::kBFloat16;
  at::Tensor p = at::zeros({a * a, K, C}, dy.options().dtype(at::kFloat));
  const int64_t step = images_per_piece(m, r, dy.size(2), dy.size(3), std::max(C, K));
  for (int64_t n0 = 0; n0 < N; n0 += step) {
    const int64_t n = std::min(step, N - n0);
    const at::Tensor dyn = dy.narrow(0, n0, n);
    const at::Tensor v = run_tiles(Which::Grad, m, r, nhwc(dyn), tiling(dyn, m), a * a, K);
    const at::Tensor u = patches(n0, n);
    for (int64_t i = 0; i < a * a; ++i) {
      if (bf16) {
        p[i].add_(at::mm(v[i].t(), u[i]));
      } else {
        p[i].addmm_(v[i].t(), u[i]);
      }
    }
  }
  return p;
}

// `patches(n0, n)` for `tiled_forward` and `tiled_weight_sums`: the transformed input patches
// of images [n0, n0 + n) of `x` for F(m x m, r x r) (`x` outlives the pass).
auto input_patches(const at::Tensor& x, int64_t m, int64_t r) {
  return [&x, m, r](int64_t n0, int64_t n) { return input_tiles(x.narrow(0, n0, n), m, r); };
}

// The convolution of `x` (N, C, H, W) with `w` (K, C, r, r), padding (r - 1) / 2, by the fused
// F(m x m, r x r) of `winograd_fused.cpp`, in `format` (channels-last: in place; NCHW: through
// NHWC copies of the input and the output); with `transposed`, with the flipped and transposed
// filters of `w` (C, K, r, r): the backward pass to the input. The whole batch at once: its
// temporaries are a group of tiles a thread.
at::Tensor forward_fused(const at::Tensor& x, const at::Tensor& w, int64_t m,
                         at::MemoryFormat format, bool transposed) {
  const bool pairs = m == 2 && x.scalar_type() == at::kBFloat16;
  const at::Tensor vp = pairs ? filter_tiles_3(w, transposed, true)
                              : selfsup::fused_winograd_filters(filter_tiles(w, m, transposed));
  const int64_t K = w.size(transposed ? 1 : 0);
  at::Tensor y = at::empty({x.size(0), x.size(2), x.size(3), K}, x.options());
  selfsup::fused_winograd(nhwc(x), vp, m, y);
  const at::Tensor out = y.permute({0, 3, 1, 2});
  return format == at::MemoryFormat::ChannelsLast ? out : out.contiguous();
}

// The convolution of `x` (N, C, H, W) with `w` (K, C, r, r), padding (r - 1) / 2, by
// F(m x m, r x r); with `transposed`, with the flipped and transposed filters of `w` (the
// backward pass to the input).
at::Tensor forward_winograd(const at::Tensor& x, const at::Tensor& w, int64_t m,
                            at::MemoryFormat format, bool transposed = false) {
  const int64_t r = w.size(2), K = w.size(transposed ? 1 : 0);
  if (selfsup::fused_winograd_takes(x.scalar_type(), m, r, x.size(1), K, x.size(2), x.size(3))) {
    return forward_fused(x, w, m, format, transposed);
  }
  return tiled_forward(m, r, x.size(0), x.size(2), x.size(3), filter_tiles(w, m, transposed),
                       input_patches(x, m, r), format);
}

// The 1x1 convolution of `x` (N, C, H, W) with `w` (K, C, 1, 1) as matrix products (a 1x1
// filter's Winograd form F(1, 1) has no transforms): channels-last, one `(N H W, C) · (C, K)`
// over views of `x` and of the output; NCHW, `(K, C) · (C, H W)` for each image.
at::Tensor forward_pointwise(const at::Tensor& x, const at::Tensor& w, at::MemoryFormat format) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = w.size(0);
  const at::Tensor wm = w.reshape({K, C});
  if (format == at::MemoryFormat::ChannelsLast) {
    const at::Tensor xm = x.permute({0, 2, 3, 1}).reshape({N * H * W, C});
    return at::mm(xm, wm.t()).view({N, H, W, K}).permute({0, 3, 1, 2});
  }
  return at::matmul(wm, x.reshape({N, C, H * W})).view({N, K, H, W});
}

// The gradient to `w` (K, C, 1, 1) of the 1x1 convolution of `x` given `dy` (N, K, H, W), both
// in `format`: channels-last, one `(K, N H W) · (N H W, C)`; NCHW, the per-image products
// `dY_n (K, H W) · X_nᵀ (H W, C)` summed, in pieces of images (their (n, K, C) products within
// `piece_bytes()`).
at::Tensor weight_grad_pointwise(const at::Tensor& x, const at::Tensor& dy,
                                 at::MemoryFormat format, at::MemoryFormat w_format) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = dy.size(1);
  at::Tensor g;
  if (format == at::MemoryFormat::ChannelsLast) {
    const at::Tensor dym = dy.permute({0, 2, 3, 1}).reshape({N * H * W, K});
    g = at::mm(dym.t(), x.permute({0, 2, 3, 1}).reshape({N * H * W, C}));
  } else {
    g = at::zeros({K, C}, x.options());
    const int64_t per_image = std::max<int64_t>(K * C * 4, 1);
    const int64_t step = std::max<int64_t>(1, piece_bytes().load() / per_image);
    for (int64_t n0 = 0; n0 < N; n0 += step) {
      const int64_t n = std::min(step, N - n0);
      const at::Tensor xs = x.narrow(0, n0, n).reshape({n, C, H * W});
      g += at::bmm(dy.narrow(0, n0, n).reshape({n, K, H * W}), xs.transpose(1, 2)).sum(0);
    }
  }
  return g.view({K, C, 1, 1}).contiguous(w_format);
}

// The gradient to `w` (K, C, r, r) of the convolution of `x` given `dy` (N, K, H, W), by
// F(m x m, r x r).
at::Tensor weight_grad_winograd(const at::Tensor& x, const at::Tensor& dy, int64_t m, int64_t r,
                                at::MemoryFormat format) {
  const bool fused = selfsup::fused_winograd_weight_takes(x.scalar_type(), m, r, x.size(1),
                                                          dy.size(1), x.size(2), x.size(3));
  const at::Tensor sums = fused ? selfsup::fused_winograd_weight(nhwc(x), nhwc(dy), m)
                                : tiled_weight_sums(m, r, x.size(1), dy, input_patches(x, m, r));
  if (m == 2 && r == 3) return filter_grad_3(sums, x.scalar_type(), format);
  return filter_grad_of_tiles(sums, m, r)
      .permute({2, 3, 0, 1})
      .to(x.scalar_type())
      .contiguous(format);
}

// `(9, T, 4C)`: the transformed 3 x 3 patches Bᵀ d B of every 2 x 2 output tile of `x` (n, C,
// H, W), H and W even, in the space-to-depth form of the 4x4 stride-2 convolution.
at::Tensor down_tiles(const at::Tensor& x) {
  const int64_t H = x.size(2), W = x.size(3);
  const Tiling g{x.size(0), H, W, tiles(H / 2, 2), tiles(W / 2, 2)};
  return run_tiles(down_input_tiles, nhwc(x), g, 9, 4 * x.size(1));
}

// The (K, 2, 2, 2, 2, C) view (k, p, a, q, b, c) of a 4x4 filter `w` (K, C, 4, 4) of any
// strides, whose element is w[k, c, 2p + a, 2q + b]: the space-to-depth form's indices, in the
// memory order of a channels-last filter.
at::Tensor phase_view(const at::Tensor& w) {
  const int64_t sk = w.stride(0), sc = w.stride(1), si = w.stride(2), sj = w.stride(3);
  return w.as_strided({w.size(0), 2, 2, 2, 2, w.size(1)}, {sk, 2 * si, si, 2 * sj, sj, sc});
}

// The 4x4 convolution of `x` (N, C, H, W), H and W even, with `w` (K, C, 4, 4), stride 2 and
// padding 1: F(2x2, 2x2) on the space-to-depth form, with w'[k, (a, b, c), p, q] = w[k, c, 2p +
// a, 2q + b], taken from `w` tap by tap: taps[(p, q), (k, a, b, c)], in runs of 2C values from
// a channels-last `w` (w' itself, (k, a, b, c, p, q), took 1.6 ms to copy out of a 256 x 128 x
// 4 x 4 channels-last filter on the model-207 Xeon).
// bfloat16: fused (`winograd_fused.cpp`: `selfsup_conv_winograd` takes no other).
at::Tensor forward_down(const at::Tensor& x, const at::Tensor& w, at::MemoryFormat format) {
  const int64_t C = x.size(1), K = w.size(0);
  const at::Tensor taps = phase_view(w).permute({1, 3, 0, 2, 4, 5}).contiguous();
  const at::Tensor v = filter_tiles_of(taps.view({4, K * 4 * C}), 2, 2, K, 4 * C);
  if (x.scalar_type() == at::kBFloat16) {
    at::Tensor y = at::empty({x.size(0), x.size(2) / 2, x.size(3) / 2, K}, x.options());
    selfsup::fused_down(nhwc(x), selfsup::fused_winograd_filters(v), y);
    const at::Tensor out = y.permute({0, 3, 1, 2});
    return format == at::MemoryFormat::ChannelsLast ? out : out.contiguous();
  }
  const auto patches = [&](int64_t n0, int64_t n) { return down_tiles(x.narrow(0, n0, n)); };
  return tiled_forward(2, 2, x.size(0), x.size(2) / 2, x.size(3) / 2, v, patches, format);
}

// The gradient to `x` (N, C, H, W) of the 4x4 convolution with stride 2 and padding 1 with `w`
// (K, C, 4, 4), bfloat16, given `dy` (N, K, H / 2, W / 2): for each parity (a, b) of the input's
// pixels, dx[2I + a - 1, 2J + b - 1] is the 2x2 correlation of `dy` with the flipped taps
// w[k, c, 2(1 - p) + a, 2(1 - q) + b], by F(2x2, 2x2), fused (`winograd_fused.cpp`: `fused_up`;
// the four parities' tiles cover the input once, where the full correlation on the
// space-to-depth form would cover (H/2 + 1)² outputs for (H/2)²).
at::Tensor input_grad_down(const at::Tensor& dy, const at::Tensor& w, at::MemoryFormat format) {
  const int64_t K = w.size(0), C = w.size(1);
  // (a, b, p, q, c, k) -> w[k, c, 2(1 - p) + a, 2(1 - q) + b]
  const at::Tensor taps =
      phase_view(w).flip({1, 3}).permute({2, 4, 1, 3, 5, 0}).contiguous().view({4, 4, C * K});
  std::vector<at::Tensor> filters;
  for (int64_t ab = 0; ab < 4; ++ab) {
    filters.push_back(selfsup::fused_winograd_filters(filter_tiles_of(taps[ab], 2, 2, C, K)));
  }
  at::Tensor dx = at::empty({dy.size(0), 2 * dy.size(2), 2 * dy.size(3), C}, dy.options());
  selfsup::fused_up(nhwc(dy), at::stack(filters), dx);
  const at::Tensor out = dx.permute({0, 3, 1, 2});
  return format == at::MemoryFormat::ChannelsLast ? out : out.contiguous();
}

// The gradient to `w` (K, C, 4, 4) of the convolution of `x` (N, C, H, W), H and W even, with
// stride 2 and padding 1, given `dy` (N, K, H / 2, W / 2): F(2x2, 2x2) on the space-to-depth
// form of the padded input (see the file's header), in pieces of images as the others
// (bfloat16: fused, the sums in float, rounded once).
at::Tensor weight_grad_down(const at::Tensor& x, const at::Tensor& dy, at::MemoryFormat format) {
  const int64_t C = x.size(1), K = dy.size(1);
  const auto patches = [&](int64_t n0, int64_t n) { return down_tiles(x.narrow(0, n0, n)); };
  // The 2x2 filter's (p, q, k, (a, b, c)) -> w[k, c, 2p + a, 2q + b]: written through the
  // gradient's `phase_view` in `format` (channels-last: its memory order).
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const at::Tensor sums =
      filter_grad_of_tiles(bf16 ? selfsup::fused_down_weight(nhwc(x), nhwc(dy))
                                : tiled_weight_sums(2, 2, 4 * C, dy, patches),
                           2, 2);
  const at::Tensor gw = sums.view({2, 2, K, 2, 2, C});
  at::Tensor out = at::empty({K, C, 4, 4}, dy.options().memory_format(format));
  phase_view(out).copy_(gw.permute({2, 0, 3, 1, 4, 5}));
  return out;
}

// Which passes run by Winograd; the others call libtorch's convolution.
using Plan = selfsup::ConvPlan;

// The convolution of an r x r filter: stride 1 and padding (r - 1) / 2 (r = 1, 3, 5), or stride
// 2 and padding 1 (r = 4).
int64_t stride_of(int64_t r) { return r == 4 ? 2 : 1; }
int64_t padding_of(int64_t r) { return r == 4 ? 1 : (r - 1) / 2; }

// The forward pass by Winograd (3x3, 5x5: output tiles of m x m; 4x4 stride 2 on the
// space-to-depth form) or as matrix products (1x1), in `format`.
at::Tensor fast_forward(const at::Tensor& x, const at::Tensor& w, int64_t m,
                        at::MemoryFormat format) {
  switch (w.size(2)) {
    case 1: return forward_pointwise(x, w, format);
    case 4: return forward_down(x, w, format);
    default: return forward_winograd(x, w, m, format);
  }
}

at::Tensor libtorch_forward(const at::Tensor& x, const at::Tensor& w) {
  const int64_t r = w.size(2);
  return selfsup::libtorch_conv(x, w, stride_of(r), padding_of(r));
}

struct WinogradConv : public torch::autograd::Function<WinogradConv> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w, int64_t bits) {
    const Plan plan(bits);
    ctx->save_for_backward({x, w});
    ctx->saved_data["bits"] = bits;
    return plan.forward ? fast_forward(x, w, plan.tile(), x.suggest_memory_format())
                        : libtorch_forward(x, w);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "Winograd convolution has no double backward (create_graph)");
    // As in the forward pass: the products in the tensors' own types, even where the backward
    // pass runs under autocast.
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
    auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &w = s[1];
    const Plan plan(ctx->saved_data["bits"].toInt());
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const at::MemoryFormat format = x.suggest_memory_format();
    const at::Tensor dy = grads[0].contiguous(format);
    const bool want_x = ctx->needs_input_grad(0), want_w = ctx->needs_input_grad(1);
    at::Tensor dx, dw;
    const int64_t r = w.size(2), st = stride_of(r), p = padding_of(r);
    if (want_x && plan.input) {
      // The flipped and transposed filters read in place (1x1: a view; 3x3, 5x5: the filter
      // transform reads them so, or copies them for the product).
      dx = r == 4   ? input_grad_down(dy, w, format)
           : r == 1 ? forward_pointwise(dy, w.transpose(0, 1), format)
                    : forward_winograd(dy, w, plan.tile(), format, true);
    }
    if (want_w && plan.weight) {
      const at::MemoryFormat w_format = w.suggest_memory_format();
      dw = r == 1   ? weight_grad_pointwise(x, dy, format, w_format)
           : r == 4 ? weight_grad_down(x, dy, w_format)
                    : weight_grad_winograd(x, dy, plan.tile(), r, w_format);
    }
    selfsup::libtorch_backward_rest(dy, x, w, st, p, plan, want_x, want_w, dx, dw);
    return {dx, dw, at::Tensor()};
  }
};

// Whether the shim may take a convolution of `x` with `w` (after autocast's casts): dense CPU
// tensors, both float, or both bfloat16 with a 3x3 or 5x5 filter (`r`), or a 4x4 stride-2 one
// the fused passes take (`fused_down_takes`), oneDNN on (off: a deterministic run, left to
// libtorch).
bool takes(const at::Tensor& x, const at::Tensor& w, int64_t r) {
  const bool dense = x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const auto kind = x.scalar_type();
  const bool down = r == 4 && x.dim() == 4 &&
                    selfsup::fused_down_takes(kind, x.size(1), w.size(0), x.size(2), x.size(3));
  const bool bf16 = kind == at::kBFloat16 && (r == 3 || r == 5 || down);
  const bool typed = kind == w.scalar_type() && (kind == at::kFloat || bf16);
  return x.device().is_cpu() && w.device().is_cpu() && typed && dense &&
         at::globalContext().userEnabledMkldnn();
}

}  // namespace

extern "C" {

// `*out` = a new handle to the convolution (no bias) of `x` (N, C, H, W) with `w` (K, C, r, r): r
// = 1, 3 or 5 with stride 1 and padding (r - 1) / 2, or r = 4 with stride 2 and padding 1; the
// passes in `bits` (1 forward, 2 backward to the input, 4 backward to the weights) by Winograd
// F(2x2, r x r), or F(4x4, r x r) with bit 8 (r = 3, 5; ignored at the others) (r = 1: matrix
// products; r = 4: F(2x2, 2x2) on the space-to-depth form, its backward pass to the input in
// bfloat16 only, where `fused_up_takes`) and the others by libtorch; differentiable in both.
// bfloat16 tensors (or float ones under the CPU's bfloat16 autocast, cast as autocast's
// convolution casts them, the weights through its cache) take r = 3 and 5: r = 3 in tiles of 2x2
// in bfloat16, or with bit 8 (r = 5 always) in tiles of 4x4 on their values widened to float, the
// output rounded once to bfloat16 (the passes cast back and forth through autograd); and r = 4
// where the fused bfloat16 passes take it (`fused_down_takes`: AVX512-BF16, C a multiple of 4, K
// of 16; the backward pass to the input `fused_up_takes`: C a multiple of 16). Returns 1 when it
// took the convolution, 0 when it left it to the caller (nothing in `bits` it can take, not dense
// float or bfloat16 CPU tensors, bfloat16 at r = 1 or at an r = 4 the fused passes do not take,
// another autocast dtype, oneDNN off: deterministic runs, or r = 4 with an odd side), or -1 with
// libtorch's message in `err`.
int selfsup_conv_winograd(const at::Tensor* x, const at::Tensor* w, int bits, at::Tensor** out,
                          char* err, size_t err_len) {
  int took = 0;
  const int rc = selfsup::guarded(err, err_len, [&] {
    const int64_t r = w->dim() == 4 ? w->size(2) : 0;
    int passes = bits & 7;
    if (passes == 0) return;
    at::Tensor xs = *x, ws = *w;
    if (!selfsup::autocast_operands(xs, ws)) return;
    if (!takes(xs, ws, r)) return;
    // Autocast off inside (its casts are done): the transforms' and products' matrix products
    // run in the tensors' own types, not autocast's (the widened passes' would be cast back to
    // bfloat16).
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
    const bool bf16 = xs.scalar_type() == at::kBFloat16;
    // The 4x4 stride-2 convolution's backward pass to the input: bfloat16 where `fused_up`
    // takes it, else libtorch's.
    if (r == 4 && !(xs.dim() == 4 && selfsup::fused_up_takes(xs.scalar_type(), xs.size(1),
                                                             ws.size(0), xs.size(2), xs.size(3)))) {
      passes &= 5;
      if (passes == 0) return;
    }
    // bfloat16: 5x5 filters always in tiles of 4 x 4 (F(2x2, 5x5)'s transforms, entries up to
    // 5, came out at 20x oneDNN's rounding error in bfloat16).
    const int tile4 = (r == 3 || r == 5) ? ((bf16 && r == 5) ? 8 : bits & 8) : 0;
    // bfloat16 in tiles of 4 x 4: on the values widened to float, the output rounded once.
    const bool widen = tile4 != 0 && bf16;
    TORCH_CHECK(x->dim() == 4 && (r == 1 || r == 3 || r == 4 || r == 5) && w->size(3) == r &&
                    w->size(1) == x->size(1),
                "Winograd convolution: input ", x->sizes(), " and weight ", w->sizes(),
                " (expected (N, C, H, W) and (K, C, r, r), r = 1, 3, 5, or 4 with stride 2)");
    if (r == 4 && (x->size(2) % 2 != 0 || x->size(3) % 2 != 0)) return;
    RECORD_FUNCTION("selfsup::winograd_conv", c10::ArrayRef<const c10::IValue>{});
    if (widen) {
      const at::Tensor y = WinogradConv::apply(xs.to(at::kFloat), ws.to(at::kFloat),
                                               static_cast<int64_t>(passes | tile4));
      *out = new at::Tensor(y.to(at::kBFloat16));
    } else {
      *out = new at::Tensor(WinogradConv::apply(xs, ws, static_cast<int64_t>(passes | tile4)));
    }
    took = 1;
  });
  return rc != 0 ? rc : took;
}

// Whether the passes of bfloat16 F(2x2, 3x3) and float F(4x4, 5x5) run fused
// (`winograd_fused.cpp`) where the CPU has AVX512-BF16: `enable` < 0 asks, 0 turns it off, 1 on
// (the default), for the calling thread. Returns the setting now.
int selfsup_winograd_fused(int enable) {
  if (enable >= 0) selfsup::fused_winograd_wanted() = enable != 0;
  return selfsup::fused_winograd_wanted() ? 1 : 0;
}

// Sets the bytes one piece of a pass may hold (Winograd's transformed tiles and
// `conv_gemm.cpp`'s im2col columns: `conv_passes.h`) when `bytes` > 0; returns the setting before.
int64_t selfsup_winograd_piece_bytes(int64_t bytes) {
  return bytes > 0 ? piece_bytes().exchange(bytes) : piece_bytes().load();
}

}  // extern "C"
