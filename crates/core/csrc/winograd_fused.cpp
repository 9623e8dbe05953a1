// Winograd's minimal filtering (Lavin & Gray, CVPR 2016) as one fused loop over small groups of
// tiles, for CPUs with AVX512-BF16 (Zen 4; `winograd.cpp` holds the method and the unfused
// passes): the forward pass of a stride-1 convolution (and so the backward pass to the input,
// the same convolution with the filters flipped and transposed), two of them:
// - bfloat16 F(2x2, 3x3): the transformed inputs rounded to bfloat16, the products by
//   `vdpbf16ps` (pairs of channels, fp32 sums);
// - float F(4x4, 5x5): the widened path of a bfloat16 5x5 layer (and a float one), the products
//   by float FMA.
// `winograd.cpp` runs the transforms and the products as separate passes over a whole piece of
// the batch, each through memory; at 64 channels on 32x32 maps those passes cost more than the
// 2.25x fewer multiplications save (23.6 against oneDNN's 21.3 ms, 2 cores of a Zen 4). Here
// each group of tiles is transformed, multiplied and transformed back while its values are in
// the core's caches:
// - the input transform Bᵀ d B of each tile's α x α patch (α = m + r - 1; rows and columns from
//   m·ty - (r - 1)/2, zero outside the map), in float, into `u` (α², group, C) (bfloat16:
//   rounded once);
// - the α² products `U_ξ (group, C) · V_ξ (C, K)` by a register-blocked kernel of `kRows`
//   tiles x 64 output channels (24 accumulators of 16 floats); fp32 sums into `m` (α², group,
//   K), not rounded;
// - the output transform Aᵀ m A in float into the NHWC output (bfloat16: rounded once).
// Each tile's sums run over the channels in one fixed order, whatever the thread count or the
// group a tile falls in, so a run is the same from run to run and thread count to thread count.
// The bfloat16 pass rounds less than the unfused one (its products' sums are not rounded to
// bfloat16 before the output transform); the tests bound both against float64.
#include "winograd_fused.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>

#include "elementwise.h"
#include "winograd_points.h"

namespace selfsup {
namespace {

// Rows of the product kernel (tiles) and of its output channels (16 a register).
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

// `Σ_k m[k] v[k]` over the nonzero constants `m` (all known after unrolling; ±1 without a
// multiplication), as `winograd.cpp`'s `combine`.
template <int J>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE v16 combine(const float (&m)[J], const v16 (&v)[J]) {
  v16 s = {};
  bool any = false;
#pragma GCC unroll 8
  for (int k = 0; k < J; ++k) {
    if (m[k] == 0.0f) continue;
    const v16 t = m[k] == 1.0f ? v[k] : m[k] == -1.0f ? -v[k] : m[k] * v[k];
    s = any ? s + t : t;
    any = true;
  }
  return s;
}

// `out = L in Lᵀ` (`in` J x J, `out` I x I): the rows, then the columns.
template <int I, int J>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void transform(const float (&L)[I][J], const v16 (&in)[J][J],
                                                  v16 (&out)[I][I]) {
  v16 mid[I][J];
#pragma GCC unroll 8
  for (int l = 0; l < J; ++l) {
    v16 col[J];
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

// Bᵀ d B of F(M x M, R x R) for the `count` tiles from `t0` of `x` (n, H, W, C) NHWC into `u`
// (α², group, C).
template <int M, int R, typename In, typename U>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void input_transform(const In* x, int64_t C, Tiles g,
                                                        int64_t t0, int64_t count, int64_t group,
                                                        U* u) {
  constexpr int A = M + R - 1, P = (R - 1) / 2;
  for (int64_t l = 0; l < count; ++l) {
    const int64_t t = t0 + l, img = t / (g.th * g.tw), ty = t / g.tw % g.th, tx = t % g.tw;
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      const __mmask16 m = lanes(C - c0);
      v16 d[A][A], v[A][A];
#pragma GCC unroll 8
      for (int i = 0; i < A; ++i) {
        const int64_t h = M * ty - P + i;
#pragma GCC unroll 8
        for (int j = 0; j < A; ++j) {
          const int64_t w = M * tx - P + j;
          const bool inside = h >= 0 && h < g.H && w >= 0 && w < g.W;
          d[i][j] = inside ? load(x + ((img * g.H + h) * g.W + w) * C + c0, m) : v16{};
        }
      }
      transform(Points<M, R>::BT, d, v);
#pragma GCC unroll 8
      for (int i = 0; i < A; ++i) {
#pragma GCC unroll 8
        for (int j = 0; j < A; ++j) store(u + ((i * A + j) * group + l) * C + c0, v[i][j], m);
      }
    }
  }
}

// Aᵀ m A of F(M x M, R x R) for the `count` tiles from `t0`, from `mb` (α², group, K) into `y`
// (n, H, W, K) NHWC (a tile's outputs past the map's last row or column dropped).
template <int M, int R, typename Out>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void output_transform(const float* mb, int64_t K, Tiles g,
                                                         int64_t t0, int64_t count,
                                                         int64_t group, Out* y) {
  constexpr int A = M + R - 1;
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
      for (int i = 0; i < M && M * ty + i < g.H; ++i) {
        for (int j = 0; j < M && M * tx + j < g.W; ++j) {
          store(y + ((img * g.H + M * ty + i) * g.W + M * tx + j) * K + k0, o[i][j], m);
        }
      }
    }
  }
}

// `ROWS` tiles' products with 16 `NV` output channels: `out[r][k]` = Σ_c u[r][c] v[c][k] for
// the rows `u` (ROWS, C) of one position ξ and its filters `v` from output channel 0 of the
// block, `out`'s rows `K` apart. bfloat16 (`U` uint16_t): `v` packed as (C/2, K) pairs of
// channels, one `vdpbf16ps` a pair; float: `v` (C, K), one FMA a channel.
template <int ROWS, int NV, typename U, typename V>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void product_block(const U* u, int64_t C, const V* v,
                                                      int64_t K, float* out) {
  __m512 acc[ROWS][NV];
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) acc[r][q] = _mm512_setzero_ps();
  }
  if constexpr (std::is_same<U, uint16_t>::value) {
    const uint32_t* pairs = reinterpret_cast<const uint32_t*>(u);
    const int64_t half = C / 2;
    for (int64_t cp = 0; cp < half; ++cp) {
      __m512i b[NV];
#pragma GCC unroll 4
      for (int q = 0; q < NV; ++q) b[q] = _mm512_loadu_si512(v + cp * K + 16 * q);
#pragma GCC unroll 8
      for (int r = 0; r < ROWS; ++r) {
        const __m512i a = _mm512_set1_epi32(static_cast<int>(pairs[r * half + cp]));
#pragma GCC unroll 4
        for (int q = 0; q < NV; ++q) {
          acc[r][q] = _mm512_dpbf16_ps(acc[r][q], reinterpret_cast<const __m512bh&>(a),
                                       reinterpret_cast<const __m512bh&>(b[q]));
        }
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      __m512 b[NV];
#pragma GCC unroll 4
      for (int q = 0; q < NV; ++q) b[q] = _mm512_loadu_ps(v + c * K + 16 * q);
#pragma GCC unroll 8
      for (int r = 0; r < ROWS; ++r) {
        const __m512 a = _mm512_set1_ps(u[r * C + c]);
#pragma GCC unroll 4
        for (int q = 0; q < NV; ++q) acc[r][q] = _mm512_fmadd_ps(a, b[q], acc[r][q]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) _mm512_storeu_ps(out + r * K + 16 * q, acc[r][q]);
  }
}

// `rows` (1 to kRows) tiles' products over `NV` x 16 output channels.
template <int NV, typename U, typename V>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void product_rows(int64_t rows, const U* u, int64_t C,
                                                     const V* v, int64_t K, float* out) {
  switch (rows) {
    case 1: return product_block<1, NV>(u, C, v, K, out);
    case 2: return product_block<2, NV>(u, C, v, K, out);
    case 3: return product_block<3, NV>(u, C, v, K, out);
    case 4: return product_block<4, NV>(u, C, v, K, out);
    case 5: return product_block<5, NV>(u, C, v, K, out);
    default: return product_block<kRows, NV>(u, C, v, K, out);
  }
}

// The α² products of a group of `count` tiles: `mb` (α², group, K) from `u` (α², group, C) and
// the filters `vp` (α², C, K) (bfloat16: (α², C/2, K) pairs).
template <typename U, typename V>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void group_products(int64_t points, const U* u, int64_t C,
                                                       const V* vp, int64_t K, int64_t count,
                                                       int64_t group, float* mb) {
  // Values of `V` a channel row of one position's filters.
  constexpr int64_t per = std::is_same<U, uint16_t>::value ? 2 : 1;
  for (int64_t xi = 0; xi < points; ++xi) {
    const V* vx = vp + xi * (C / per) * K;
    for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
      for (int64_t l = 0; l < count; l += kRows) {
        const U* ux = u + (xi * group + l) * C;
        float* out = mb + (xi * group + l) * K + k0;
        const int64_t rows = std::min<int64_t>(kRows, count - l);
        switch (std::min<int64_t>(K - k0, kBlock) / 16) {
          case 1: product_rows<1>(rows, ux, C, vx + k0, K, out); break;
          case 2: product_rows<2>(rows, ux, C, vx + k0, K, out); break;
          case 3: product_rows<3>(rows, ux, C, vx + k0, K, out); break;
          default: product_rows<4>(rows, ux, C, vx + k0, K, out); break;
        }
      }
    }
  }
}

// One group: the three steps above over tiles [t0, t0 + count).
template <int M, int R, typename E, typename U, typename V>
SELFSUP_NATIVE_BF16 void fused_group(const E* x, int64_t C, const V* vp, int64_t K, Tiles g,
                                     int64_t t0, int64_t count, int64_t group, U* u, float* mb,
                                     E* y) {
  constexpr int A = M + R - 1;
  input_transform<M, R>(x, C, g, t0, count, group, u);
  group_products(A * A, u, C, vp, K, count, group, mb);
  output_transform<M, R>(mb, K, g, t0, count, group, y);
}

// The pass over every group of `g`'s tiles of `group` tiles, with libtorch's threads (each
// thread its own `u` and `m`).
template <int M, int R, typename E, typename U, typename V>
void fused_pass(const at::Tensor& x, const at::Tensor& vp, at::Tensor& y, int64_t group) {
  constexpr int A = M + R - 1;
  const int64_t C = x.size(3), K = y.size(3);
  const Tiles g{x.size(0), x.size(1), x.size(2), (x.size(1) + M - 1) / M, (x.size(2) + M - 1) / M};
  const E* in = reinterpret_cast<const E*>(x.data_ptr());
  const V* filters = reinterpret_cast<const V*>(vp.data_ptr());
  E* out = reinterpret_cast<E*>(y.data_ptr());
  const int64_t groups = (g.count() + group - 1) / group;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    const auto u = std::make_unique<U[]>(A * A * group * C);
    const auto mb = std::make_unique<float[]>(A * A * group * K);
    for (int64_t gi = g0; gi < g1; ++gi) {
      const int64_t t0 = gi * group, count = std::min(group, g.count() - t0);
      fused_group<M, R>(in, C, filters, K, g, t0, count, group, u.get(), mb.get(), out);
    }
  });
}

#endif

}  // namespace

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
    fused_pass<2, 3, uint16_t, uint16_t, uint32_t>(x, vp, y, 12);
  } else {
    // Groups of 6 tiles: their 64 positions' values fill the second-level cache.
    fused_pass<4, 5, float, float, float>(x, vp, y, 6);
  }
#else
  TORCH_CHECK(false, "fused Winograd: x86-64 with AVX512-BF16 only");
#endif
}

}  // namespace selfsup
