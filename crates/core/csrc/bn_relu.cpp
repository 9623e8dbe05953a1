// Batch norm followed by ReLU in training mode, fused into one autograd function, for dense 4-d
// CPU tensors (NCHW or channels-last) of float or bfloat16 (weight, bias and running statistics
// in float): `y = max(0, (x - mean) / sqrt(var + eps) * weight + bias)` with the batch's biased
// variance, the running statistics updated as `nn.BatchNorm2d` does (momentum, unbiased
// variance). The same arithmetic as ATen's `batch_norm` then `relu`, in fewer passes over memory:
// libtorch runs them as separate kernels (statistics, normalisation, ReLU, ReLU's backward, the
// norm's two backward passes), each reading and writing the whole activation; here the forward
// reads `x` twice and writes `y` once, the backward reads `dy`, `x` and `y` twice and writes
// `dx` once, and no ReLU input is materialised beside `y`. Where bfloat16 goes through the
// CPU's own conversion, the forward also writes ReLU's mask (a bit a value), which the
// backward reads instead of `y`.
//
// With a residual `r` of the same shape and type (the end of a ResNet block, He et al. 2016:
// `relu(bn2(conv2(h)) + shortcut)`), `y = max(0, bn(x) + r)`: the forward reads `r` once more,
// the backward writes `r`'s gradient (`dy` where `y > 0`) in the pass that writes `dx`; ATen's
// separate add and its bfloat16 rounding of `bn(x)` before it are gone. An output with two
// consumers (a ResNet block's, taken by the next block's convolution and its shortcut) can be
// returned twice, as two outputs of the autograd function (see `fused_forward`): the backward
// then reads the two gradients and adds them in float, where autograd would have added them in
// a pass of its own.
//
// The work is cut into pieces that do not depend on the thread count (blocks of `kRows` pixels
// of a channels-last tensor; whole images of an NCHW tensor with small maps, else the `H·W`
// plane of one image and channel), each a run of contiguous values whose per-channel
// coefficients repeat with a fixed period (see `Layout`); each piece's per-channel sums are
// computed by one thread and the pieces are added in order, so the result is the same whatever
// the thread count. The loops are compiled for AVX-512, AVX2 and baseline x86-64, picked at
// load time, and the sums are taken in the same order by each; the two that write bfloat16 use
// the CPU's own rounding where it has one.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "elementwise.h"
#include "selfsup/guard.h"

namespace {

// Rows of one block: blocks, not threads, fix the order of every sum.
constexpr int64_t kRows = 256;

using selfsup::elements;
using selfsup::load;
using selfsup::store;

// ReLU's backward: `dy` where the output `y` is positive, else 0 (NaN passes, as ATen's); with
// two gradients of the output (`kTwo`: its two consumers', see `fused_forward`), of their sum.
template <bool kTwo, typename T>
SELFSUP_INLINE float relu_grad(const T* dy, const T* dy2, const T* y) {
  float d = load(dy);
  if constexpr (kTwo) d += load(dy2);
  return load(y) <= 0.f ? 0.f : d;
}

// The loops run over `n` contiguous values whose per-channel coefficients repeat with period
// `P` (see `Layout`): coefficient `j` of a period applies to the values at
// `j, j + P, j + 2P, ...`. Sums are kept per position of the period, each added in memory
// order, and folded into channels by `fold`: the same order on every instruction set.

// Sums of `x - shift` and of its square per position of the period.
template <typename T>
SELFSUP_INLINE void stats(const T* __restrict__ x, int64_t n, int64_t P,
                          const float* __restrict__ shift, float* __restrict__ s,
                          float* __restrict__ q) {
  for (int64_t j = 0; j < P; ++j) s[j] = q[j] = 0.f;
  for (int64_t i = 0; i < n; i += P) {
    const T* __restrict__ xi = x + i;
    const int64_t len = std::min(P, n - i);
#pragma GCC ivdep
    for (int64_t j = 0; j < len; ++j) {
      const float d = load(xi + j) - shift[j];
      s[j] += d;
      q[j] += d * d;
    }
  }
}

// `y = max(0, x · a + b)`, or `max(0, x · a + b + r)` with a residual (`kRes`); NaN passes, as
// ReLU's.
template <bool kRes, typename T>
SELFSUP_INLINE void forward(const T* __restrict__ x, const T* __restrict__ r, T* __restrict__ y,
                            int64_t n, int64_t P, const float* __restrict__ a,
                            const float* __restrict__ b) {
  for (int64_t i = 0; i < n; i += P) {
    const T* __restrict__ xi = x + i;
    T* __restrict__ yi = y + i;
    const int64_t len = std::min(P, n - i);
#pragma GCC ivdep
    for (int64_t j = 0; j < len; ++j) {
      float v = load(xi + j) * a[j] + b[j];
      if constexpr (kRes) v += load(r + i + j);
      store(yi + j, v < 0.f ? 0.f : v);
    }
  }
}

// Sums of `g` and of `g · (x - mean)` per position of the period, `g = dy` (`dy + dy2` with
// `kTwo`) where `y > 0`, else 0.
template <bool kTwo, typename T>
SELFSUP_INLINE void grad_sums(const T* __restrict__ dy, const T* __restrict__ dy2,
                              const T* __restrict__ x, const T* __restrict__ y, int64_t n,
                              int64_t P, const float* __restrict__ mean, float* __restrict__ sg,
                              float* __restrict__ sgx) {
  for (int64_t j = 0; j < P; ++j) sg[j] = sgx[j] = 0.f;
  for (int64_t i = 0; i < n; i += P) {
    const int64_t len = std::min(P, n - i);
#pragma GCC ivdep
    for (int64_t j = 0; j < len; ++j) {
      const float g = relu_grad<kTwo>(dy + i + j, dy2 + i + j, y + i + j);
      sg[j] += g;
      sgx[j] += g * (load(x + i + j) - mean[j]);
    }
  }
}

// `dx = g · A + x · B + D`, `g` as in `grad_sums`; with a residual (`kRes`), also `dr = g`.
template <bool kRes, bool kTwo, typename T>
SELFSUP_INLINE void grad_input(const T* __restrict__ dy, const T* __restrict__ dy2,
                               const T* __restrict__ x, const T* __restrict__ y,
                               T* __restrict__ dx, T* __restrict__ dr, int64_t n, int64_t P,
                               const float* __restrict__ A, const float* __restrict__ B,
                               const float* __restrict__ D) {
  for (int64_t i = 0; i < n; i += P) {
    const int64_t len = std::min(P, n - i);
#pragma GCC ivdep
    for (int64_t j = 0; j < len; ++j) {
      const float g = relu_grad<kTwo>(dy + i + j, dy2 + i + j, y + i + j);
      if constexpr (kRes) store(dr + i + j, g);
      store(dx + i + j, g * A[j] + load(x + i + j) * B[j] + D[j]);
    }
  }
}

// The loops above for each element type (bfloat16 as its bits), each compiled once per
// instruction set.
#define SELFSUP_LOOPS(T)                                                                        \
  SELFSUP_CLONES void stats_of(const T* x, int64_t n, int64_t P, const float* shift, float* s, \
                               float* q) {                                                      \
    stats(x, n, P, shift, s, q);                                                                \
  }                                                                                             \
  SELFSUP_CLONES void forward_of(const T* x, const T* r, T* y, int64_t n, int64_t P,           \
                                 const float* a, const float* b) {                              \
    if (r)                                                                                      \
      forward<true>(x, r, y, n, P, a, b);                                                       \
    else                                                                                        \
      forward<false>(x, r, y, n, P, a, b);                                                      \
  }                                                                                             \
  SELFSUP_CLONES void grad_sums_of(const T* dy, const T* dy2, const T* x, const T* y,           \
                                   int64_t n, int64_t P, const float* mean, float* sg,          \
                                   float* sgx) {                                                \
    if (dy2)                                                                                    \
      grad_sums<true>(dy, dy2, x, y, n, P, mean, sg, sgx);                                      \
    else                                                                                        \
      grad_sums<false>(dy, dy2, x, y, n, P, mean, sg, sgx);                                     \
  }                                                                                             \
  SELFSUP_CLONES void grad_input_of(const T* dy, const T* dy2, const T* x, const T* y, T* dx,  \
                                    T* dr, int64_t n, int64_t P, const float* A,                \
                                    const float* B, const float* D) {                           \
    if (dr && dy2)                                                                              \
      grad_input<true, true>(dy, dy2, x, y, dx, dr, n, P, A, B, D);                             \
    else if (dr)                                                                                \
      grad_input<true, false>(dy, dy2, x, y, dx, dr, n, P, A, B, D);                            \
    else if (dy2)                                                                               \
      grad_input<false, true>(dy, dy2, x, y, dx, dr, n, P, A, B, D);                            \
    else                                                                                        \
      grad_input<false, false>(dy, dy2, x, y, dx, dr, n, P, A, B, D);                           \
  }

SELFSUP_LOOPS(float)
SELFSUP_LOOPS(uint16_t)
#undef SELFSUP_LOOPS

// The two loops that write bfloat16, with the CPU's own conversion (see `elementwise.h`)
// instead of the rounding in integer arithmetic above, which costs several instructions a
// vector.
#ifdef SELFSUP_NATIVE_BF16
using selfsup::lanes;
using selfsup::load16;
using selfsup::store16;

// Values are loaded and stored under a mask of the period's remaining lanes; the coefficients
// are read 16 at a time, padded to whole vectors by `Spread`. `kRes` as in `forward`.
//
// With `kMask`, the loop also writes ReLU's mask for the backward to `mw`, one 16-bit word per
// vector in loop order (the lanes where not `y <= 0`, NaN included, `y` as stored in
// bfloat16): the backward's loops then read 2 bytes per 16 values instead of `y`'s 32, twice.
template <bool kRes, bool kMask>
SELFSUP_NATIVE_BF16 void forward_native(const uint16_t* x, const uint16_t* r, uint16_t* y,
                                        uint16_t* mw, int64_t n, int64_t P, const float* a,
                                        const float* b) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += P) {
    const int64_t len = std::min(P, n - i);
    for (int64_t j = 0; j < len; j += 16) {
      const __mmask16 m = lanes(len - j);
      __m512 v = _mm512_add_ps(_mm512_mul_ps(load16(x + i + j, m), _mm512_loadu_ps(a + j)),
                               _mm512_loadu_ps(b + j));
      if constexpr (kRes) v = _mm512_add_ps(v, load16(r + i + j, m));
      // MAXPS returns its second operand for a NaN or two zeros: NaN and -0 pass, as above.
      const __m256i bits = (__m256i)_mm512_cvtneps_pbh(_mm512_max_ps(zero, v));
      _mm256_mask_storeu_epi16(y + i + j, m, bits);
      if constexpr (kMask) {
        const __m512 stored =
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
        *mw++ = _mm512_mask_cmp_ps_mask(m, stored, zero, _CMP_NLE_UQ);
      }
    }
  }
}

// ReLU's backward on 16 lanes: `g = dy` (`dy + dy2` with `kTwo`) where not `y <= 0` (NaN
// included), else +0; with `kMask`, where the forward's mask word `pass` says so (`y` unread).
template <bool kTwo, bool kMask>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE __m512 relu_grad16(const uint16_t* dy, const uint16_t* dy2,
                                                      const uint16_t* y, __mmask16 pass,
                                                      __mmask16 m) {
  if constexpr (!kMask) pass = _mm512_cmp_ps_mask(load16(y, m), _mm512_setzero_ps(), _CMP_NLE_UQ);
  __m512 d = load16(dy, m);
  if constexpr (kTwo) d = _mm512_add_ps(d, load16(dy2, m));
  return _mm512_maskz_mov_ps(pass, d);
}

// `grad_sums` on the forward's mask words `mw` (see `forward_native`). The sums are taken in
// the order and arithmetic of `grad_sums` (a product, then a sum: no fused multiply-add), so
// they are the same bits.
template <bool kTwo>
SELFSUP_NATIVE_BF16 void grad_sums_native(const uint16_t* dy, const uint16_t* dy2,
                                          const uint16_t* x, const uint16_t* mw, int64_t n,
                                          int64_t P, const float* mean, float* sg, float* sgx) {
  for (int64_t j = 0; j < P; ++j) sg[j] = sgx[j] = 0.f;
  for (int64_t i = 0; i < n; i += P) {
    const int64_t len = std::min(P, n - i);
    for (int64_t j = 0; j < len; j += 16) {
      const int64_t o = i + j;
      const __mmask16 m = lanes(len - j);
      const __m512 g = relu_grad16<kTwo, true>(dy + o, dy2 + o, nullptr, *mw++, m);
      const __m512 xm = _mm512_sub_ps(load16(x + o, m), _mm512_loadu_ps(mean + j));
      _mm512_mask_storeu_ps(sg + j, m, _mm512_add_ps(_mm512_loadu_ps(sg + j), g));
      _mm512_mask_storeu_ps(sgx + j, m,
                            _mm512_add_ps(_mm512_loadu_ps(sgx + j), _mm512_mul_ps(g, xm)));
    }
  }
}

// `kRes` and `kTwo` as in `grad_input`, `kMask` as in `relu_grad16` (`mw`: the mask words).
template <bool kRes, bool kTwo, bool kMask>
SELFSUP_NATIVE_BF16 void grad_input_native(const uint16_t* dy, const uint16_t* dy2,
                                           const uint16_t* x, const uint16_t* y,
                                           const uint16_t* mw, uint16_t* dx, uint16_t* dr,
                                           int64_t n, int64_t P, const float* A, const float* B,
                                           const float* D) {
  for (int64_t i = 0; i < n; i += P) {
    const int64_t len = std::min(P, n - i);
    for (int64_t j = 0; j < len; j += 16) {
      const int64_t o = i + j;
      const __mmask16 m = lanes(len - j);
      const __m512 g = relu_grad16<kTwo, kMask>(dy + o, dy2 + o, y + o, kMask ? *mw++ : 0, m);
      if constexpr (kRes) store16(dr + o, g, m);
      const __m512 gx = _mm512_add_ps(_mm512_mul_ps(g, _mm512_loadu_ps(A + j)),
                                      _mm512_mul_ps(load16(x + o, m), _mm512_loadu_ps(B + j)));
      store16(dx + o, _mm512_add_ps(gx, _mm512_loadu_ps(D + j)), m);
    }
  }
}

#endif
using selfsup::native_bf16;

// The loops by element type, bfloat16 through the native conversion where there is one; a
// null `r` or `dr`: no residual; a null `dy2`: one gradient of the output; `mw`: ReLU's mask
// words (see `forward_native`), written and read only by the native bfloat16 loops, else null.
void forward_loop(const float* x, const float* r, float* y, uint16_t*, int64_t n, int64_t P,
                  const float* a, const float* b) {
  forward_of(x, r, y, n, P, a, b);
}
void forward_loop(const uint16_t* x, const uint16_t* r, uint16_t* y, uint16_t* mw, int64_t n,
                  int64_t P, const float* a, const float* b) {
#ifdef SELFSUP_NATIVE_BF16
  if (mw) {
    return r ? forward_native<true, true>(x, r, y, mw, n, P, a, b)
             : forward_native<false, true>(x, r, y, mw, n, P, a, b);
  }
  if (native_bf16()) {
    return r ? forward_native<true, false>(x, r, y, mw, n, P, a, b)
             : forward_native<false, false>(x, r, y, mw, n, P, a, b);
  }
#endif
  forward_of(x, r, y, n, P, a, b);
}
void grad_sums_loop(const float* dy, const float* dy2, const float* x, const float* y,
                    const uint16_t*, int64_t n, int64_t P, const float* mean, float* sg,
                    float* sgx) {
  grad_sums_of(dy, dy2, x, y, n, P, mean, sg, sgx);
}
void grad_sums_loop(const uint16_t* dy, const uint16_t* dy2, const uint16_t* x,
                    const uint16_t* y, const uint16_t* mw, int64_t n, int64_t P,
                    const float* mean, float* sg, float* sgx) {
#ifdef SELFSUP_NATIVE_BF16
  if (mw) {
    return dy2 ? grad_sums_native<true>(dy, dy2, x, mw, n, P, mean, sg, sgx)
               : grad_sums_native<false>(dy, dy2, x, mw, n, P, mean, sg, sgx);
  }
#endif
  grad_sums_of(dy, dy2, x, y, n, P, mean, sg, sgx);
}
void grad_input_loop(const float* dy, const float* dy2, const float* x, const float* y,
                     const uint16_t*, float* dx, float* dr, int64_t n, int64_t P,
                     const float* A, const float* B, const float* D) {
  grad_input_of(dy, dy2, x, y, dx, dr, n, P, A, B, D);
}
#ifdef SELFSUP_NATIVE_BF16
template <bool kMask>
void grad_input_native_of(const uint16_t* dy, const uint16_t* dy2, const uint16_t* x,
                          const uint16_t* y, const uint16_t* mw, uint16_t* dx, uint16_t* dr,
                          int64_t n, int64_t P, const float* A, const float* B,
                          const float* D) {
  const auto run = dr ? (dy2 ? grad_input_native<true, true, kMask>
                             : grad_input_native<true, false, kMask>)
                      : (dy2 ? grad_input_native<false, true, kMask>
                             : grad_input_native<false, false, kMask>);
  run(dy, dy2, x, y, mw, dx, dr, n, P, A, B, D);
}
#endif
void grad_input_loop(const uint16_t* dy, const uint16_t* dy2, const uint16_t* x,
                     const uint16_t* y, const uint16_t* mw, uint16_t* dx, uint16_t* dr,
                     int64_t n, int64_t P, const float* A, const float* B, const float* D) {
#ifdef SELFSUP_NATIVE_BF16
  if (mw) return grad_input_native_of<true>(dy, dy2, x, y, mw, dx, dr, n, P, A, B, D);
  if (native_bf16())
    return grad_input_native_of<false>(dy, dy2, x, y, mw, dx, dr, n, P, A, B, D);
#endif
  grad_input_of(dy, dy2, x, y, dx, dr, n, P, A, B, D);
}

// How a `(N, C, H, W)` activation lies in memory, and how the work is cut into `units` pieces
// of `n` contiguous values each (the last may be shorter), whose coefficients repeat with a
// period of `P` values starting at the piece's first:
// - `Rows` (channels-last): `M = N·H·W` rows of `C` channels, blocks of `kRows` rows; a block's
//   values cycle through the channels, so its loops take the per-channel coefficients repeated
//   over a period of `P = lcm(C, 16)` values (a whole number of vectors, also for the narrow
//   layers, where a loop over one row's `C` channels would run mostly in scalar tails);
// - `Images` (NCHW with small maps, as the 2×2 to 8×8 maps of the patch methods): a period is
//   one image's `C·H·W` values, each channel's coefficient `H·W` times; pieces of whole images
//   (about `kImageValues` values), so that no piece is a handful of values;
// - `Planes` (NCHW otherwise): the `N·C` planes of `H·W` values, each of one channel; period 16
//   (its channel's coefficient 16 times).
// Each piece keeps one sum per position of its period, folded (in position order) into its
// `width` cells of a `units·width = rows × C` table (`Rows`, `Images`: one per channel;
// `Planes`: its channel's), which `total` adds in order.
enum class Mode { Rows, Images, Planes };

// About how many values a piece of whole images holds, and the largest image that is cut that
// way (its coefficients, three periods of them, stay in the L1/L2 cache).
constexpr int64_t kImageValues = 8192;
constexpr int64_t kSmallImage = 16384;

struct Layout {
  explicit Layout(const at::Tensor& x)
      : N(x.size(0)),
        C(x.size(1)),
        HW(x.size(2) * x.size(3)),
        M(N * HW) {
    if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      mode = Mode::Rows;
      P = std::lcm(C, int64_t(16));
      n = kRows * C;
      width = C;
    } else if (HW < 256 && C * HW <= kSmallImage) {
      mode = Mode::Images;
      P = C * HW;
      n = std::max<int64_t>(1, kImageValues / P) * P;
      width = C;
    } else {
      mode = Mode::Planes;
      P = 16;
      n = HW;
      width = 1;
    }
    units = (M * C + n - 1) / n;
  }

  bool channels_last() const { return mode == Mode::Rows; }

  // The most vectors the native loops take in one piece (periods of whole vectors, the last
  // one masked): its number of ReLU mask words (see `forward_native`).
  int64_t vectors() const { return (n + P - 1) / P * ((P + 15) / 16); }

  at::MemoryFormat format() const {
    return channels_last() ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  }

  // `out[c]` (`width` cells) = the sum of the period's sums `sums` of channel `c`, in position
  // order.
  void fold(const float* sums, float* out) const {
    switch (mode) {
      case Mode::Rows:
        for (int64_t c = 0; c < C; ++c) out[c] = 0.f;
        for (int64_t m = 0; m < P; m += C)
          for (int64_t c = 0; c < C; ++c) out[c] += sums[m + c];
        break;
      case Mode::Images:
        for (int64_t c = 0; c < C; ++c) {
          float t = 0.f;
          for (int64_t i = 0; i < HW; ++i) t += sums[c * HW + i];
          out[c] = t;
        }
        break;
      case Mode::Planes: {
        float t = 0.f;
        for (int64_t j = 0; j < P; ++j) t += sums[j];
        out[0] = t;
      }
    }
  }

  int64_t N, C, HW, M;
  Mode mode;
  int64_t units, n, P, width;
};

// Per-channel values `v` laid out as a piece's loops take them (see `Layout`), padded to whole
// vectors (the native loops read a period's coefficients 16 at a time).
struct Spread {
  Spread(const Layout& L, const std::vector<float>& v) : C(L.C), planes(L.mode == Mode::Planes) {
    switch (L.mode) {
      case Mode::Rows:
        values.resize(L.P);
        for (int64_t j = 0; j < L.P; ++j) values[j] = v[j % C];
        break;
      case Mode::Images:
        values.resize((L.P + 15) / 16 * 16);
        for (int64_t j = 0; j < L.P; ++j) values[j] = v[j / L.HW];
        break;
      case Mode::Planes:
        values.resize(C * 16);
        for (int64_t j = 0; j < C * 16; ++j) values[j] = v[j / 16];
    }
  }
  // The period of piece `u`'s coefficients.
  const float* of(int64_t u) const { return planes ? values.data() + (u % C) * 16 : values.data(); }

  int64_t C;
  bool planes;
  std::vector<float> values;
};

// Runs `unit(u, offset, n)` for every piece `u` (its first value, its length), in parallel.
template <typename F>
void for_units(const Layout& L, F unit) {
  const int64_t total = L.M * L.C;
  at::parallel_for(0, L.units, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) unit(u, u * L.n, std::min(L.n, total - u * L.n));
  });
}

// Two scratch rows of `P` sums each, per thread.
float* scratch(int64_t P) {
  thread_local std::vector<float> s;
  if (int64_t(s.size()) < 2 * P) s.resize(2 * P);
  return s.data();
}

// Adds the units' per-channel sums `parts` (a `rows × C` table) in row order, in double.
std::vector<double> total(const std::vector<float>& parts, int64_t C) {
  std::vector<double> t(C, 0.0);
  const int64_t rows = int64_t(parts.size()) / C;
  for (int64_t k = 0; k < rows; ++k)
    for (int64_t c = 0; c < C; ++c) t[c] += parts[k * C + c];
  return t;
}

// `r`: the residual, or an undefined tensor. `mask_out`: ReLU's mask words for the backward
// where the native bfloat16 loops run (piece `u`'s from word `u · vectors()`), else undefined.
template <typename T>
at::Tensor forward_typed(const at::Tensor& x, const at::Tensor& r, const at::Tensor& weight,
                         const at::Tensor& bias, const at::Tensor& running_mean,
                         const at::Tensor& running_var, double momentum, double eps,
                         at::Tensor& mean_out, at::Tensor& invstd_out, at::Tensor& mask_out) {
  const Layout L(x);
  const int64_t C = L.C, M = L.M, HW = L.HW;
  const T* xp = elements<T>(x);
  // Sums shifted by the first pixel's values, for a variance without cancellation.
  std::vector<float> shift(C), ps(L.units * L.width), pq(L.units * L.width);
  for (int64_t c = 0; c < C; ++c) shift[c] = load(xp + (L.channels_last() ? c : c * HW));
  const Spread shifts(L, shift);
  for_units(L, [&](int64_t u, int64_t o, int64_t n) {
    float* s = scratch(L.P);
    stats_of(xp + o, n, L.P, shifts.of(u), s, s + L.P);
    L.fold(s, &ps[u * L.width]);
    L.fold(s + L.P, &pq[u * L.width]);
  });
  const std::vector<double> S = total(ps, C), Q = total(pq, C);
  auto fopts = x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  mean_out = at::empty({C}, fopts);
  invstd_out = at::empty({C}, fopts);
  at::Tensor unbiased = at::empty({C}, fopts);
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  float* mean = mean_out.data_ptr<float>();
  float* invstd = invstd_out.data_ptr<float>();
  float* uvar = unbiased.data_ptr<float>();
  std::vector<float> a(C), shiftb(C);
  for (int64_t c = 0; c < C; ++c) {
    const double m = S[c] / double(M);
    const double var = std::max(Q[c] / double(M) - m * m, 0.0);
    mean[c] = float(shift[c] + m);
    invstd[c] = float(1.0 / std::sqrt(var + eps));
    uvar[c] = float(var * double(M) / double(M - 1));
    a[c] = w[c] * invstd[c];
    shiftb[c] = b[c] - mean[c] * a[c];
  }
  at::Tensor y = at::empty_like(x, L.format());
  T* yp = elements<T>(y);
  const T* rp = r.defined() ? elements<T>(r) : nullptr;
  uint16_t* mw = nullptr;
  if (std::is_same<T, uint16_t>::value && native_bf16()) {
    mask_out = at::empty({L.units * L.vectors()}, fopts.dtype(at::kShort));
    mw = reinterpret_cast<uint16_t*>(mask_out.data_ptr<int16_t>());
  }
  const Spread as(L, a), bs(L, shiftb);
  for_units(L, [&](int64_t u, int64_t o, int64_t n) {
    forward_loop(xp + o, rp ? rp + o : nullptr, yp + o, mw ? mw + u * L.vectors() : nullptr, n,
                 L.P, as.of(u), bs.of(u));
  });
  // Through `variable_data()` (`.data` semantics), as ATen's kernel writes the buffers: graphs
  // that saved them are not invalidated.
  running_mean.variable_data().mul_(1.0 - momentum).add_(mean_out, momentum);
  running_var.variable_data().mul_(1.0 - momentum).add_(unbiased, momentum);
  return y;
}

// `{dx, dw, db}`, and `dr` after them with `residual_grad`, for the output's gradient `dy`, or
// the sum of `dy` and `dy2` where `dy2` is defined.
// `mask`: the forward's ReLU mask words, or undefined (the loops then read `y`).
template <typename T>
std::vector<at::Tensor> backward_typed(const at::Tensor& dy, const at::Tensor& dy2,
                                       const at::Tensor& x, const at::Tensor& y,
                                       const at::Tensor& mask, const at::Tensor& weight,
                                       const at::Tensor& mean_t, const at::Tensor& invstd_t,
                                       bool residual_grad) {
  const Layout L(x);
  const int64_t C = L.C, M = L.M;
  const T* dyp = elements<T>(dy);
  const T* dy2p = dy2.defined() ? elements<T>(dy2) : nullptr;
  const T* xp = elements<T>(x);
  const T* yp = elements<T>(y);
  const uint16_t* mw =
      mask.defined() ? reinterpret_cast<const uint16_t*>(mask.data_ptr<int16_t>()) : nullptr;
  const auto words = [&](int64_t u) { return mw ? mw + u * L.vectors() : nullptr; };
  const float* mean = mean_t.data_ptr<float>();
  const float* invstd = invstd_t.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  std::vector<float> psg(L.units * L.width), psgx(L.units * L.width);
  const Spread means(L, std::vector<float>(mean, mean + C));
  for_units(L, [&](int64_t u, int64_t o, int64_t n) {
    float* s = scratch(L.P);
    grad_sums_loop(dyp + o, dy2p ? dy2p + o : nullptr, xp + o, yp + o, words(u), n, L.P,
                   means.of(u), s, s + L.P);
    L.fold(s, &psg[u * L.width]);
    L.fold(s + L.P, &psgx[u * L.width]);
  });
  const std::vector<double> SG = total(psg, C), SGX = total(psgx, C);
  auto fopts = x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  at::Tensor dw = at::empty({C}, fopts), db = at::empty({C}, fopts);
  float* dwp = dw.data_ptr<float>();
  float* dbp = db.data_ptr<float>();
  std::vector<float> A(C), B(C), D(C);
  for (int64_t c = 0; c < C; ++c) {
    const double is = invstd[c];
    dwp[c] = float(SGX[c] * is);
    dbp[c] = float(SG[c]);
    // dx = w·is·(g − mean(g) − x̂·mean(g·x̂)), x̂ = (x − mean)·is.
    const double a = double(w[c]) * is;
    const double bcoef = -a * is * is * SGX[c] / double(M);
    A[c] = float(a);
    B[c] = float(bcoef);
    D[c] = float(-a * SG[c] / double(M) - bcoef * double(mean[c]));
  }
  at::Tensor dx = at::empty_like(x, L.format());
  T* dxp = elements<T>(dx);
  at::Tensor dr = residual_grad ? at::empty_like(x, L.format()) : at::Tensor();
  T* drp = residual_grad ? elements<T>(dr) : nullptr;
  const Spread As(L, A), Bs(L, B), Ds(L, D);
  for_units(L, [&](int64_t u, int64_t o, int64_t n) {
    grad_input_loop(dyp + o, dy2p ? dy2p + o : nullptr, xp + o, yp + o, words(u), dxp + o,
                    drp ? drp + o : nullptr, n, L.P, As.of(u), Bs.of(u), Ds.of(u));
  });
  if (residual_grad) return {dx, dw, db, dr};
  return {dx, dw, db};
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The forward of both functions below; `r`: the residual (in `x`'s layout), or an undefined
// tensor (libtorch's autograd functions take no undefined input, hence two of them).
//
// `outputs`: 1, or 2 for an output with two consumers (in a ResNet, a block's output feeds the
// next block's first convolution and its shortcut): the output and a view of it, as two
// outputs of the function, so that the consumers' gradients reach the backward apart and are
// added in its passes, instead of by autograd in a pass of its own before it.
variable_list fused_forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& r,
                            const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& running_mean, const at::Tensor& running_var,
                            double momentum, double eps, int64_t outputs) {
  at::Tensor mean, invstd, mask;
  at::Tensor y = x.scalar_type() == at::kFloat
                     ? forward_typed<float>(x, r, weight, bias, running_mean, running_var,
                                            momentum, eps, mean, invstd, mask)
                     : forward_typed<uint16_t>(x, r, weight, bias, running_mean, running_var,
                                               momentum, eps, mean, invstd, mask);
  ctx->save_for_backward({x, y, weight, mean, invstd, mask});
  if (outputs == 2) return {y, y.alias()};
  return {y};
}

// `{dx, dw, db}`, and `dr` after them with `residual_grad`, for the sum of the outputs'
// gradients `grads`; all undefined without one.
variable_list fused_backward(AutogradContext* ctx, const variable_list& grads,
                             bool residual_grad) {
  // The backward is not itself recorded: a gradient of the gradient (`create_graph`) would
  // come out silently wrong, so it is refused (nothing in selfsup asks for one).
  TORCH_CHECK(!at::GradMode::is_enabled(),
              "fused batch norm + ReLU has no double backward (create_graph)");
  auto s = ctx->get_saved_variables();
  const at::Tensor &x = s[0], &y = s[1], &weight = s[2], &mean = s[3], &invstd = s[4],
                   &mask = s[5];
  at::Tensor dy, dy2;
  for (const at::Tensor& g : grads) {
    if (!g.defined()) continue;
    (dy.defined() ? dy2 : dy) = g.to(x.scalar_type()).contiguous(Layout(x).format());
  }
  if (!dy.defined()) return variable_list(4);
  auto g = x.scalar_type() == at::kFloat
               ? backward_typed<float>(dy, dy2, x, y, mask, weight, mean, invstd, residual_grad)
               : backward_typed<uint16_t>(dy, dy2, x, y, mask, weight, mean, invstd,
                                          residual_grad);
  g.resize(4);
  return g;
}

// `relu(batch_norm(x))`.
struct BatchNormRelu : public torch::autograd::Function<BatchNormRelu> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& running_mean, const at::Tensor& running_var,
                               double momentum, double eps, int64_t outputs) {
    return fused_forward(ctx, x, at::Tensor(), weight, bias, running_mean, running_var,
                         momentum, eps, outputs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto g = fused_backward(ctx, grads, false);
    return {g[0], g[1], g[2], {}, {}, {}, {}, {}};
  }
};

// `relu(batch_norm(x) + r)`.
struct BatchNormAddRelu : public torch::autograd::Function<BatchNormAddRelu> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& r,
                               const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& running_mean, const at::Tensor& running_var,
                               double momentum, double eps, int64_t outputs) {
    return fused_forward(ctx, x, r, weight, bias, running_mean, running_var, momentum, eps,
                         outputs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // The residual's gradient only where it is wanted.
    const auto g = fused_backward(ctx, grads, ctx->needs_input_grad(1));
    return {g[0], g[3], g[1], g[2], {}, {}, {}, {}, {}};
  }
};

void check(const at::Tensor& x, const at::Tensor* r, const at::Tensor& w, const at::Tensor& b,
           const at::Tensor& rm, const at::Tensor& rv) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu(),
              "fused batch norm + ReLU: expected a 4-d CPU input, got ", x.sizes(), " on ",
              x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "fused batch norm + ReLU: input of dtype ", x.scalar_type(),
              " (float or bfloat16 only)");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast) || x.is_contiguous(),
              "fused batch norm + ReLU: the input must be contiguous (NCHW or channels-last)");
  const int64_t C = x.size(1);
  TORCH_CHECK(x.numel() / std::max<int64_t>(C, 1) > 1,
              "fused batch norm + ReLU: expected more than 1 value per channel, got input ",
              x.sizes());
  for (const at::Tensor* t : {&w, &b, &rm, &rv}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == C &&
                    t->device().is_cpu(),
                "fused batch norm + ReLU: weight, bias and running statistics must be ", C,
                " contiguous float32 values on the CPU");
  }
  if (r) {
    TORCH_CHECK(r->sizes() == x.sizes() && r->scalar_type() == x.scalar_type() &&
                    r->device().is_cpu(),
                "fused batch norm + add + ReLU: the residual (", r->sizes(), ", ",
                r->scalar_type(), ") must have the input's shape and dtype (", x.sizes(), ", ",
                x.scalar_type(), ") on the CPU");
  }
}

}  // namespace

extern "C" {

// `*out` = a new handle to `relu(batch_norm(x))` in training mode, or to
// `relu(batch_norm(x) + r)` where the residual `r` is not null (see the file header), with the
// running statistics `rm` and `rv` updated; differentiable in `x`, `r`, `w` and `b`. Where
// `out2` is not null, `*out2` = a new handle to a view of the same output, a second output of
// the function for a second consumer (see `fused_forward`). Returns 0, or -1 with libtorch's
// message in `err`.
int selfsup_batch_norm_relu(const at::Tensor* x, const at::Tensor* r, const at::Tensor* w,
                            const at::Tensor* b, const at::Tensor* rm, const at::Tensor* rv,
                            double momentum, double eps, at::Tensor** out, at::Tensor** out2,
                            char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    check(*x, r, *w, *b, *rm, *rv);
    const int64_t outputs = out2 ? 2 : 1;
    // The residual in `x`'s layout (a recorded copy where it is not).
    const variable_list y =
        r ? BatchNormAddRelu::apply(*x, r->contiguous(Layout(*x).format()), *w, *b, *rm, *rv,
                                    momentum, eps, outputs)
          : BatchNormRelu::apply(*x, *w, *b, *rm, *rv, momentum, eps, outputs);
    *out = new at::Tensor(y[0]);
    if (out2) *out2 = new at::Tensor(y[1]);
  });
}

}  // extern "C"
