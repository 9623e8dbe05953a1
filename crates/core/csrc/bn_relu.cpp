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
// a pass of its own. A downsampling block's shortcut has a batch norm of its own, `relu(bn(x) +
// bn_r(r))`: its statistics are taken beside `bn`'s, `r · ra + rb` is added in float without
// being written, its sums are taken in the backward's first pass beside `bn`'s (the same
// masked gradient) and `r`'s gradient is written in the pass that writes `dx`.
//
// The work is cut into pieces that do not depend on the thread count (blocks of `kRows` pixels
// of a channels-last tensor; whole images of an NCHW tensor with small maps, else the `H·W`
// plane of one image and channel), each a run of contiguous values whose per-channel
// coefficients repeat with a fixed period (see `Layout`); each piece's per-channel sums are
// computed by one thread and the pieces are added in order, so the result is the same whatever
// the thread count. The loops are compiled for AVX-512, AVX2 and baseline x86-64, picked at
// load time, and the sums are taken in the same order by each; in bfloat16 the loops take the
// CPU's own rounding where it has one (and ReLU's mask with it, see `forward_native`).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <optional>
#include <utility>
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

// The residual a loop adds before the ReLU (a template argument): none; `r` as it is (a ResNet
// block's identity shortcut); or `r · ra + rb`, `r` through a batch norm of its own (the 1×1
// convolution's output of a downsampling shortcut), whose coefficients repeat as the main
// ones do.
enum Res : int { kNone, kPlain, kNormed };

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

// `y = max(0, x · a + b [+ residual])`, the residual as `R` says; NaN passes, as ReLU's.
template <Res R, typename T>
SELFSUP_INLINE void forward(const T* __restrict__ x, const T* __restrict__ r, T* __restrict__ y,
                            int64_t n, int64_t P, const float* __restrict__ a,
                            const float* __restrict__ b, const float* __restrict__ ra,
                            const float* __restrict__ rb) {
  for (int64_t i = 0; i < n; i += P) {
    const T* __restrict__ xi = x + i;
    T* __restrict__ yi = y + i;
    const int64_t len = std::min(P, n - i);
#pragma GCC ivdep
    for (int64_t j = 0; j < len; ++j) {
      float v = load(xi + j) * a[j] + b[j];
      if constexpr (R == kPlain) v += load(r + i + j);
      if constexpr (R == kNormed) v += load(r + i + j) * ra[j] + rb[j];
      store(yi + j, v < 0.f ? 0.f : v);
    }
  }
}

// Sums of `g` and of `g · (x - mean)` per position of the period, `g = dy` (`dy + dy2` with
// `kTwo`) where `y > 0`, else 0; with a normed residual (`kNormed`), also of
// `g · (r - rmean)`.
template <bool kTwo, bool kNormed, typename T>
SELFSUP_INLINE void grad_sums(const T* __restrict__ dy, const T* __restrict__ dy2,
                              const T* __restrict__ x, const T* __restrict__ y,
                              const T* __restrict__ r, int64_t n, int64_t P,
                              const float* __restrict__ mean, const float* __restrict__ rmean,
                              float* __restrict__ sg, float* __restrict__ sgx,
                              float* __restrict__ sgr) {
  for (int64_t j = 0; j < P; ++j) sg[j] = sgx[j] = 0.f;
  if constexpr (kNormed)
    for (int64_t j = 0; j < P; ++j) sgr[j] = 0.f;
  for (int64_t i = 0; i < n; i += P) {
    const int64_t len = std::min(P, n - i);
#pragma GCC ivdep
    for (int64_t j = 0; j < len; ++j) {
      const float g = relu_grad<kTwo>(dy + i + j, dy2 + i + j, y + i + j);
      sg[j] += g;
      sgx[j] += g * (load(x + i + j) - mean[j]);
      if constexpr (kNormed) sgr[j] += g * (load(r + i + j) - rmean[j]);
    }
  }
}

// `dx = g · A + x · B + D`, `g` as in `grad_sums`; with a residual, also its gradient `dr`:
// `g` (`kPlain`), or `g · RA + r · RB + RD` through its norm (`kNormed`).
template <Res R, bool kTwo, typename T>
SELFSUP_INLINE void grad_input(const T* __restrict__ dy, const T* __restrict__ dy2,
                               const T* __restrict__ x, const T* __restrict__ y,
                               const T* __restrict__ r, T* __restrict__ dx, T* __restrict__ dr,
                               int64_t n, int64_t P, const float* __restrict__ A,
                               const float* __restrict__ B, const float* __restrict__ D,
                               const float* __restrict__ RA, const float* __restrict__ RB,
                               const float* __restrict__ RD) {
  for (int64_t i = 0; i < n; i += P) {
    const int64_t len = std::min(P, n - i);
#pragma GCC ivdep
    for (int64_t j = 0; j < len; ++j) {
      const float g = relu_grad<kTwo>(dy + i + j, dy2 + i + j, y + i + j);
      if constexpr (R == kPlain) store(dr + i + j, g);
      if constexpr (R == kNormed)
        store(dr + i + j, g * RA[j] + load(r + i + j) * RB[j] + RD[j]);
      store(dx + i + j, g * A[j] + load(x + i + j) * B[j] + D[j]);
    }
  }
}

// What the loops of a piece take beyond its streams: its periods of coefficients (see
// `Spread`), null where the loop has no use for them. The residual's kind follows from which
// are set: `ra` (forward) and `RA` (backward) for a normed one, `rmean` for its sums.
struct Coefs {
  const float *a = nullptr, *b = nullptr, *ra = nullptr, *rb = nullptr;
  const float *mean = nullptr, *rmean = nullptr;
  const float *A = nullptr, *B = nullptr, *D = nullptr, *RA = nullptr, *RB = nullptr,
              *RD = nullptr;
};

// The loops above for each element type (bfloat16 as its bits), each compiled once per
// instruction set; a null `r`: no residual; a null `dy2`: one gradient of the output.
#define SELFSUP_LOOPS(T)                                                                        \
  SELFSUP_CLONES void stats_of(const T* x, int64_t n, int64_t P, const float* shift, float* s, \
                               float* q) {                                                      \
    stats(x, n, P, shift, s, q);                                                                \
  }                                                                                             \
  SELFSUP_CLONES void forward_of(const T* x, const T* r, T* y, int64_t n, int64_t P,           \
                                 const Coefs& c) {                                              \
    if (c.ra)                                                                                   \
      forward<kNormed>(x, r, y, n, P, c.a, c.b, c.ra, c.rb);                                    \
    else if (r)                                                                                 \
      forward<kPlain>(x, r, y, n, P, c.a, c.b, c.ra, c.rb);                                     \
    else                                                                                        \
      forward<kNone>(x, r, y, n, P, c.a, c.b, c.ra, c.rb);                                      \
  }                                                                                             \
  SELFSUP_CLONES void grad_sums_of(const T* dy, const T* dy2, const T* x, const T* y,           \
                                   const T* r, int64_t n, int64_t P, const Coefs& c, float* sg, \
                                   float* sgx, float* sgr) {                                    \
    if (c.rmean && dy2)                                                                         \
      grad_sums<true, true>(dy, dy2, x, y, r, n, P, c.mean, c.rmean, sg, sgx, sgr);             \
    else if (c.rmean)                                                                           \
      grad_sums<false, true>(dy, dy2, x, y, r, n, P, c.mean, c.rmean, sg, sgx, sgr);            \
    else if (dy2)                                                                               \
      grad_sums<true, false>(dy, dy2, x, y, r, n, P, c.mean, c.rmean, sg, sgx, sgr);            \
    else                                                                                        \
      grad_sums<false, false>(dy, dy2, x, y, r, n, P, c.mean, c.rmean, sg, sgx, sgr);           \
  }                                                                                             \
  template <bool kTwo>                                                                          \
  SELFSUP_INLINE void grad_input_two(const T* dy, const T* dy2, const T* x, const T* y,        \
                                     const T* r, T* dx, T* dr, int64_t n, int64_t P,            \
                                     const Coefs& c) {                                          \
    if (c.RA)                                                                                   \
      grad_input<kNormed, kTwo>(dy, dy2, x, y, r, dx, dr, n, P, c.A, c.B, c.D, c.RA, c.RB,      \
                                c.RD);                                                          \
    else if (dr)                                                                                \
      grad_input<kPlain, kTwo>(dy, dy2, x, y, r, dx, dr, n, P, c.A, c.B, c.D, c.RA, c.RB,       \
                               c.RD);                                                           \
    else                                                                                        \
      grad_input<kNone, kTwo>(dy, dy2, x, y, r, dx, dr, n, P, c.A, c.B, c.D, c.RA, c.RB, c.RD); \
  }                                                                                             \
  SELFSUP_CLONES void grad_input_of(const T* dy, const T* dy2, const T* x, const T* y,          \
                                    const T* r, T* dx, T* dr, int64_t n, int64_t P,             \
                                    const Coefs& c) {                                           \
    if (dy2)                                                                                    \
      grad_input_two<true>(dy, dy2, x, y, r, dx, dr, n, P, c);                                  \
    else                                                                                        \
      grad_input_two<false>(dy, dy2, x, y, r, dx, dr, n, P, c);                                 \
  }

SELFSUP_LOOPS(float)
SELFSUP_LOOPS(uint16_t)
#undef SELFSUP_LOOPS

// The loops with bfloat16 through the CPU's own conversion (see `elementwise.h`) instead of the
// rounding in integer arithmetic above, which costs several instructions a vector.
#ifdef SELFSUP_NATIVE_BF16
using selfsup::lanes;
using selfsup::load16;
using selfsup::store16;

// Values are loaded and stored under a mask of the period's remaining lanes; the coefficients
// are read 16 at a time, padded to whole vectors by `Spread`. `R` as in `forward`.
//
// The loop also writes ReLU's mask for the backward to `mw`, one 16-bit word per vector in loop
// order (the lanes where not `y <= 0`, NaN included, `y` as stored in bfloat16): the backward's
// native loops then read 2 bytes per 16 values instead of `y`'s 32, twice.
template <Res R>
SELFSUP_NATIVE_BF16 void forward_native(const uint16_t* x, const uint16_t* r, uint16_t* y,
                                        uint16_t* mw, int64_t n, int64_t P, const Coefs& c) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += P) {
    const int64_t len = std::min(P, n - i);
    for (int64_t j = 0; j < len; j += 16) {
      const __mmask16 m = lanes(len - j);
      __m512 v = _mm512_add_ps(_mm512_mul_ps(load16(x + i + j, m), _mm512_loadu_ps(c.a + j)),
                               _mm512_loadu_ps(c.b + j));
      if constexpr (R == kPlain) v = _mm512_add_ps(v, load16(r + i + j, m));
      if constexpr (R == kNormed) {
        const __m512 rn = _mm512_add_ps(
            _mm512_mul_ps(load16(r + i + j, m), _mm512_loadu_ps(c.ra + j)),
            _mm512_loadu_ps(c.rb + j));
        v = _mm512_add_ps(v, rn);
      }
      // MAXPS returns its second operand for a NaN or two zeros: NaN and -0 pass, as above.
      const __m256i bits = (__m256i)_mm512_cvtneps_pbh(_mm512_max_ps(zero, v));
      _mm256_mask_storeu_epi16(y + i + j, m, bits);
      const __m512 stored =
          _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
      *mw++ = _mm512_mask_cmp_ps_mask(m, stored, zero, _CMP_NLE_UQ);
    }
  }
}

// ReLU's backward on 16 lanes: `g = dy` (`dy + dy2` with `kTwo`) where the forward's mask word
// `pass` says the output was not `<= 0` (NaN included), else +0.
template <bool kTwo>
SELFSUP_NATIVE_BF16 SELFSUP_INLINE __m512 relu_grad16(const uint16_t* dy, const uint16_t* dy2,
                                                      __mmask16 pass, __mmask16 m) {
  __m512 d = load16(dy, m);
  if constexpr (kTwo) d = _mm512_add_ps(d, load16(dy2, m));
  return _mm512_maskz_mov_ps(pass, d);
}

// `sums[j..j+16] += g · (v - mean[j..j+16])` under the lanes `m`, a product then a sum.
SELFSUP_NATIVE_BF16 SELFSUP_INLINE void add_moment(float* sums, __m512 g, const uint16_t* v,
                                                   const float* mean, __mmask16 m) {
  const __m512 d = _mm512_sub_ps(load16(v, m), _mm512_loadu_ps(mean));
  _mm512_mask_storeu_ps(sums, m, _mm512_add_ps(_mm512_loadu_ps(sums), _mm512_mul_ps(g, d)));
}

// `grad_sums` on the forward's mask words `mw` (see `forward_native`). The sums are taken in
// the order and arithmetic of `grad_sums` (a product, then a sum: no fused multiply-add), so
// they are the same bits.
template <bool kTwo, bool kNormed>
SELFSUP_NATIVE_BF16 void grad_sums_native(const uint16_t* dy, const uint16_t* dy2,
                                          const uint16_t* x, const uint16_t* r,
                                          const uint16_t* mw, int64_t n, int64_t P,
                                          const Coefs& c, float* sg, float* sgx, float* sgr) {
  for (int64_t j = 0; j < P; ++j) sg[j] = sgx[j] = 0.f;
  if constexpr (kNormed)
    for (int64_t j = 0; j < P; ++j) sgr[j] = 0.f;
  for (int64_t i = 0; i < n; i += P) {
    const int64_t len = std::min(P, n - i);
    for (int64_t j = 0; j < len; j += 16) {
      const int64_t o = i + j;
      const __mmask16 m = lanes(len - j);
      const __m512 g = relu_grad16<kTwo>(dy + o, dy2 + o, *mw++, m);
      _mm512_mask_storeu_ps(sg + j, m, _mm512_add_ps(_mm512_loadu_ps(sg + j), g));
      add_moment(sgx + j, g, x + o, c.mean + j, m);
      if constexpr (kNormed) add_moment(sgr + j, g, r + o, c.rmean + j, m);
    }
  }
}

// `g · A + v · B + D` on 16 lanes, as `grad_input` takes it.
SELFSUP_NATIVE_BF16 SELFSUP_INLINE __m512 input_grad16(__m512 g, const uint16_t* v,
                                                       const float* A, const float* B,
                                                       const float* D, __mmask16 m) {
  const __m512 gv = _mm512_add_ps(_mm512_mul_ps(g, _mm512_loadu_ps(A)),
                                  _mm512_mul_ps(load16(v, m), _mm512_loadu_ps(B)));
  return _mm512_add_ps(gv, _mm512_loadu_ps(D));
}

// `grad_input` on the forward's mask words `mw`; `R` and `kTwo` as there.
template <Res R, bool kTwo>
SELFSUP_NATIVE_BF16 void grad_input_native(const uint16_t* dy, const uint16_t* dy2,
                                           const uint16_t* x, const uint16_t* r,
                                           const uint16_t* mw, uint16_t* dx, uint16_t* dr,
                                           int64_t n, int64_t P, const Coefs& c) {
  for (int64_t i = 0; i < n; i += P) {
    const int64_t len = std::min(P, n - i);
    for (int64_t j = 0; j < len; j += 16) {
      const int64_t o = i + j;
      const __mmask16 m = lanes(len - j);
      const __m512 g = relu_grad16<kTwo>(dy + o, dy2 + o, *mw++, m);
      if constexpr (R == kPlain) store16(dr + o, g, m);
      if constexpr (R == kNormed)
        store16(dr + o, input_grad16(g, r + o, c.RA + j, c.RB + j, c.RD + j, m), m);
      store16(dx + o, input_grad16(g, x + o, c.A + j, c.B + j, c.D + j, m), m);
    }
  }
}

#endif
using selfsup::native_bf16;

// The loops by element type; a null `r` (`dr`): no residual (gradient); a null `dy2`: one
// gradient of the output; the residual's norm where `c` has its coefficients (see `Coefs`).
// `mw`: ReLU's mask words (see `forward_native`), which the forward allocates exactly where
// bfloat16 goes through the CPU's conversion; with them the native loops run, without them
// the generic ones (reading `y` in the backward).
void forward_loop(const float* x, const float* r, float* y, uint16_t*, int64_t n, int64_t P,
                  const Coefs& c) {
  forward_of(x, r, y, n, P, c);
}
void forward_loop(const uint16_t* x, const uint16_t* r, uint16_t* y, uint16_t* mw, int64_t n,
                  int64_t P, const Coefs& c) {
#ifdef SELFSUP_NATIVE_BF16
  if (mw) {
    if (c.ra) return forward_native<kNormed>(x, r, y, mw, n, P, c);
    if (r) return forward_native<kPlain>(x, r, y, mw, n, P, c);
    return forward_native<kNone>(x, r, y, mw, n, P, c);
  }
#endif
  forward_of(x, r, y, n, P, c);
}
void grad_sums_loop(const float* dy, const float* dy2, const float* x, const float* y,
                    const float* r, const uint16_t*, int64_t n, int64_t P, const Coefs& c,
                    float* sg, float* sgx, float* sgr) {
  grad_sums_of(dy, dy2, x, y, r, n, P, c, sg, sgx, sgr);
}
void grad_sums_loop(const uint16_t* dy, const uint16_t* dy2, const uint16_t* x,
                    const uint16_t* y, const uint16_t* r, const uint16_t* mw, int64_t n,
                    int64_t P, const Coefs& c, float* sg, float* sgx, float* sgr) {
#ifdef SELFSUP_NATIVE_BF16
  if (mw) {
    const auto run = c.rmean
                         ? (dy2 ? grad_sums_native<true, true> : grad_sums_native<false, true>)
                         : (dy2 ? grad_sums_native<true, false> : grad_sums_native<false, false>);
    return run(dy, dy2, x, r, mw, n, P, c, sg, sgx, sgr);
  }
#endif
  grad_sums_of(dy, dy2, x, y, r, n, P, c, sg, sgx, sgr);
}
void grad_input_loop(const float* dy, const float* dy2, const float* x, const float* y,
                     const float* r, const uint16_t*, float* dx, float* dr, int64_t n, int64_t P,
                     const Coefs& c) {
  grad_input_of(dy, dy2, x, y, r, dx, dr, n, P, c);
}
#ifdef SELFSUP_NATIVE_BF16
template <bool kTwo>
void grad_input_native_of(const uint16_t* dy, const uint16_t* dy2, const uint16_t* x,
                          const uint16_t* r, const uint16_t* mw, uint16_t* dx, uint16_t* dr,
                          int64_t n, int64_t P, const Coefs& c) {
  const auto run = c.RA ? grad_input_native<kNormed, kTwo>
                        : (dr ? grad_input_native<kPlain, kTwo> : grad_input_native<kNone, kTwo>);
  run(dy, dy2, x, r, mw, dx, dr, n, P, c);
}
#endif
void grad_input_loop(const uint16_t* dy, const uint16_t* dy2, const uint16_t* x,
                     const uint16_t* y, const uint16_t* r, const uint16_t* mw, uint16_t* dx,
                     uint16_t* dr, int64_t n, int64_t P, const Coefs& c) {
#ifdef SELFSUP_NATIVE_BF16
  if (mw) {
    const auto run = dy2 ? grad_input_native_of<true> : grad_input_native_of<false>;
    return run(dy, dy2, x, r, mw, dx, dr, n, P, c);
  }
#endif
  grad_input_of(dy, dy2, x, y, r, dx, dr, n, P, c);
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

  // The mask words of the whole activation (`vectors()` a piece).
  int64_t mask_words() const { return units * vectors(); }

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

// Three scratch rows of `P` sums each, per thread, and 15 floats past the last: the native
// loops read a row's last vector whole (and store it under a mask), which past a period that
// is not a whole number of vectors reaches into the next row, or past the third row's end
// (found by `cargo xtask sanitize`).
float* scratch(int64_t P) {
  thread_local std::vector<float> s;
  if (int64_t(s.size()) < 3 * P + 15) s.resize(3 * P + 15);
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

// A batch norm's parameters and running statistics (`C` float values each) and settings.
struct NormArgs {
  at::Tensor weight, bias, running_mean, running_var;
  double momentum, eps;
};

// A batch norm in training applied to an activation: its batch statistics, and the
// coefficients of `x · a + b` it computes.
struct Normed {
  at::Tensor mean, invstd;
  std::vector<float> a, b;
};

// The batch statistics of `x` (laid out as `L`) under the norm `p`, whose running statistics
// are updated.
template <typename T>
Normed normalise(const Layout& L, const at::Tensor& x, const NormArgs& p) {
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
  Normed out{at::empty({C}, fopts), at::empty({C}, fopts), std::vector<float>(C),
             std::vector<float>(C)};
  at::Tensor unbiased = at::empty({C}, fopts);
  const float* w = p.weight.data_ptr<float>();
  const float* b = p.bias.data_ptr<float>();
  float* mean = out.mean.data_ptr<float>();
  float* invstd = out.invstd.data_ptr<float>();
  float* uvar = unbiased.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    const double m = S[c] / double(M);
    const double var = std::max(Q[c] / double(M) - m * m, 0.0);
    mean[c] = float(shift[c] + m);
    invstd[c] = float(1.0 / std::sqrt(var + p.eps));
    uvar[c] = float(var * double(M) / double(M - 1));
    out.a[c] = w[c] * invstd[c];
    out.b[c] = b[c] - mean[c] * out.a[c];
  }
  // Through `variable_data()` (`.data` semantics), as ATen's kernel writes the buffers: graphs
  // that saved them are not invalidated.
  p.running_mean.variable_data().mul_(1.0 - p.momentum).add_(out.mean, p.momentum);
  p.running_var.variable_data().mul_(1.0 - p.momentum).add_(unbiased, p.momentum);
  return out;
}

// `r`: the residual, or an undefined tensor; `rp`: the residual's own norm, or null. `xn`,
// `rn`: the norms' statistics (`rn` only with `rp`). `mask_out`: ReLU's mask words for the
// backward where the native bfloat16 loops run (piece `u`'s from word `u · vectors()`), else
// untouched; written where it comes defined (`Layout(x).mask_words()` of them), else made.
// `y`: where the output goes (dense in `x`'s layout), or undefined for a new tensor.
template <typename T>
at::Tensor forward_typed(const at::Tensor& x, const NormArgs& p, const at::Tensor& r,
                         const NormArgs* rp, Normed& xn, Normed& rn, at::Tensor& mask_out,
                         at::Tensor y = at::Tensor()) {
  const Layout L(x);
  xn = normalise<T>(L, x, p);
  if (rp) rn = normalise<T>(L, r, *rp);
  if (!y.defined()) y = at::empty_like(x, L.format());
  const T* xp = elements<T>(x);
  T* yp = elements<T>(y);
  const T* resp = r.defined() ? elements<T>(r) : nullptr;
  uint16_t* mw = nullptr;
  if (std::is_same<T, uint16_t>::value && native_bf16()) {
    if (!mask_out.defined())
      mask_out = at::empty({L.mask_words()}, x.options().dtype(at::kShort));
    mw = reinterpret_cast<uint16_t*>(mask_out.data_ptr<int16_t>());
  }
  const Spread as(L, xn.a), bs(L, xn.b);
  std::optional<Spread> ras, rbs;
  if (rp) ras.emplace(L, rn.a), rbs.emplace(L, rn.b);
  for_units(L, [&](int64_t u, int64_t o, int64_t n) {
    Coefs c;
    c.a = as.of(u);
    c.b = bs.of(u);
    if (rp) {
      c.ra = ras->of(u);
      c.rb = rbs->of(u);
    }
    forward_loop(xp + o, resp ? resp + o : nullptr, yp + o, mw ? mw + u * L.vectors() : nullptr,
                 n, L.P, c);
  });
  return y;
}

// A batch norm's backward from the sums of its input's gradient `g` and of
// `g · (x - mean)`: the gradients of its weight and bias, and the coefficients of
// `dx = g · A + x · B + D`.
struct NormGrads {
  at::Tensor dw, db;
  std::vector<float> A, B, D;
};

NormGrads norm_grads(const std::vector<double>& SG, const std::vector<double>& SGX,
                     const at::Tensor& weight, const at::Tensor& mean_t,
                     const at::Tensor& invstd_t, int64_t M) {
  const int64_t C = int64_t(SG.size());
  auto fopts = weight.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  NormGrads out{at::empty({C}, fopts), at::empty({C}, fopts), std::vector<float>(C),
                std::vector<float>(C), std::vector<float>(C)};
  const float* w = weight.data_ptr<float>();
  const float* mean = mean_t.data_ptr<float>();
  const float* invstd = invstd_t.data_ptr<float>();
  float* dwp = out.dw.data_ptr<float>();
  float* dbp = out.db.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    const double is = invstd[c];
    dwp[c] = float(SGX[c] * is);
    dbp[c] = float(SG[c]);
    // dx = w·is·(g − mean(g) − x̂·mean(g·x̂)), x̂ = (x − mean)·is.
    const double a = double(w[c]) * is;
    const double bcoef = -a * is * is * SGX[c] / double(M);
    out.A[c] = float(a);
    out.B[c] = float(bcoef);
    out.D[c] = float(-a * SG[c] / double(M) - bcoef * double(mean[c]));
  }
  return out;
}

// What the forward saved for the backward (see `fused_forward`).
struct Saved {
  at::Tensor x, y, weight, mean, invstd, mask;
  // The normed residual, its norm's weight and statistics: undefined without one.
  at::Tensor r, rweight, rmean, rinvstd;
};

// `{dx, dw, db, dr, dwr, dbr}` for the output's gradient `dy`, or the sum of `dy` and `dy2`
// where `dy2` is defined: `dr` with `residual_grad` or a normed residual, `dwr` and `dbr` (its
// norm's) with a normed residual, else undefined.
// `dx`: where the input's gradient goes (dense in `x`'s layout), or undefined for a new tensor.
template <typename T>
std::vector<at::Tensor> backward_typed(const at::Tensor& dy, const at::Tensor& dy2,
                                       const Saved& s, bool residual_grad,
                                       at::Tensor dx = at::Tensor()) {
  const Layout L(s.x);
  const int64_t C = L.C, M = L.M;
  const bool normed = s.r.defined();
  const T* dyp = elements<T>(dy);
  const T* dy2p = dy2.defined() ? elements<T>(dy2) : nullptr;
  const T* xp = elements<T>(s.x);
  const T* yp = elements<T>(s.y);
  const T* rp = normed ? elements<T>(s.r) : nullptr;
  const uint16_t* mw =
      s.mask.defined() ? reinterpret_cast<const uint16_t*>(s.mask.data_ptr<int16_t>()) : nullptr;
  const auto words = [&](int64_t u) { return mw ? mw + u * L.vectors() : nullptr; };
  const float* mean = s.mean.data_ptr<float>();
  const float* rmean = normed ? s.rmean.data_ptr<float>() : nullptr;
  const int64_t cells = L.units * L.width;
  std::vector<float> psg(cells), psgx(cells), psgr(normed ? cells : 0);
  const Spread means(L, std::vector<float>(mean, mean + C));
  std::optional<Spread> rmeans;
  if (normed) rmeans.emplace(L, std::vector<float>(rmean, rmean + C));
  for_units(L, [&](int64_t u, int64_t o, int64_t n) {
    float* sums = scratch(L.P);
    Coefs c;
    c.mean = means.of(u);
    if (normed) c.rmean = rmeans->of(u);
    grad_sums_loop(dyp + o, dy2p ? dy2p + o : nullptr, xp + o, yp + o, rp ? rp + o : nullptr,
                   words(u), n, L.P, c, sums, sums + L.P, sums + 2 * L.P);
    L.fold(sums, &psg[u * L.width]);
    L.fold(sums + L.P, &psgx[u * L.width]);
    if (normed) L.fold(sums + 2 * L.P, &psgr[u * L.width]);
  });
  const std::vector<double> SG = total(psg, C);
  const NormGrads xg = norm_grads(SG, total(psgx, C), s.weight, s.mean, s.invstd, M);
  NormGrads rg;
  if (normed) rg = norm_grads(SG, total(psgr, C), s.rweight, s.rmean, s.rinvstd, M);
  if (!dx.defined()) dx = at::empty_like(s.x, L.format());
  T* dxp = elements<T>(dx);
  at::Tensor dr = residual_grad || normed ? at::empty_like(s.x, L.format()) : at::Tensor();
  T* drp = dr.defined() ? elements<T>(dr) : nullptr;
  const Spread As(L, xg.A), Bs(L, xg.B), Ds(L, xg.D);
  std::optional<Spread> RAs, RBs, RDs;
  if (normed) RAs.emplace(L, rg.A), RBs.emplace(L, rg.B), RDs.emplace(L, rg.D);
  for_units(L, [&](int64_t u, int64_t o, int64_t n) {
    Coefs c;
    c.A = As.of(u);
    c.B = Bs.of(u);
    c.D = Ds.of(u);
    if (normed) {
      c.RA = RAs->of(u);
      c.RB = RBs->of(u);
      c.RD = RDs->of(u);
    }
    grad_input_loop(dyp + o, dy2p ? dy2p + o : nullptr, xp + o, yp + o, rp ? rp + o : nullptr,
                    words(u), dxp + o, drp ? drp + o : nullptr, n, L.P, c);
  });
  return {dx, xg.dw, xg.db, dr, rg.dw, rg.db};
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The forward of the functions below; `r`: the residual (in `x`'s layout), or an undefined
// tensor; `rp`: the residual's own norm (a downsampling shortcut's), or null (libtorch's
// autograd functions take no undefined input, hence three of them).
//
// `outputs`: 1, or 2 for an output with two consumers (in a ResNet, a block's output feeds the
// next block's first convolution and its shortcut): the output and a view of it, as two
// outputs of the function, so that the consumers' gradients reach the backward apart and are
// added in its passes, instead of by autograd in a pass of its own before it.
variable_list fused_forward(AutogradContext* ctx, const at::Tensor& x, const NormArgs& p,
                            const at::Tensor& r, const NormArgs* rp, int64_t outputs) {
  Normed xn, rn;
  at::Tensor mask;
  at::Tensor y = x.scalar_type() == at::kFloat
                     ? forward_typed<float>(x, p, r, rp, xn, rn, mask)
                     : forward_typed<uint16_t>(x, p, r, rp, xn, rn, mask);
  if (rp)
    ctx->save_for_backward(
        {x, y, p.weight, xn.mean, xn.invstd, mask, r, rp->weight, rn.mean, rn.invstd});
  else
    ctx->save_for_backward({x, y, p.weight, xn.mean, xn.invstd, mask});
  if (outputs == 2) return {y, y.alias()};
  return {y};
}

// `{dx, dw, db, dr, dwr, dbr}` (see `backward_typed`) for the sum of the outputs' gradients
// `grads`; all undefined without one.
variable_list fused_backward(AutogradContext* ctx, const variable_list& grads,
                             bool residual_grad) {
  // The backward is not itself recorded: a gradient of the gradient (`create_graph`) would
  // come out silently wrong, so it is refused (nothing in selfsup asks for one).
  TORCH_CHECK(!at::GradMode::is_enabled(),
              "fused batch norm + ReLU has no double backward (create_graph)");
  auto v = ctx->get_saved_variables();
  Saved s{v[0], v[1], v[2], v[3], v[4], v[5]};
  if (v.size() > 6) {
    s.r = v[6];
    s.rweight = v[7];
    s.rmean = v[8];
    s.rinvstd = v[9];
  }
  at::Tensor dy, dy2;
  for (const at::Tensor& g : grads) {
    if (!g.defined()) continue;
    (dy.defined() ? dy2 : dy) = g.to(s.x.scalar_type()).contiguous(Layout(s.x).format());
  }
  if (!dy.defined()) return variable_list(6);
  return s.x.scalar_type() == at::kFloat ? backward_typed<float>(dy, dy2, s, residual_grad)
                                         : backward_typed<uint16_t>(dy, dy2, s, residual_grad);
}

// `relu(batch_norm(x))`.
struct BatchNormRelu : public torch::autograd::Function<BatchNormRelu> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& running_mean, const at::Tensor& running_var,
                               double momentum, double eps, int64_t outputs) {
    return fused_forward(ctx, x, {weight, bias, running_mean, running_var, momentum, eps},
                         at::Tensor(), nullptr, outputs);
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
    return fused_forward(ctx, x, {weight, bias, running_mean, running_var, momentum, eps}, r,
                         nullptr, outputs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // The residual's gradient only where it is wanted.
    const auto g = fused_backward(ctx, grads, ctx->needs_input_grad(1));
    return {g[0], g[3], g[1], g[2], {}, {}, {}, {}, {}};
  }
};

// `relu(batch_norm(x) + batch_norm_r(r))`: a downsampling block's end, the shortcut's norm
// (weight `wr`, bias `br`, running statistics `rmr`, `rvr`) in the same passes.
struct BatchNormAddNormRelu : public torch::autograd::Function<BatchNormAddNormRelu> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& r,
                               const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& running_mean, const at::Tensor& running_var,
                               const at::Tensor& wr, const at::Tensor& br, const at::Tensor& rmr,
                               const at::Tensor& rvr, double momentum, double eps,
                               double momentum_r, double eps_r, int64_t outputs) {
    const NormArgs rp{wr, br, rmr, rvr, momentum_r, eps_r};
    return fused_forward(ctx, x, {weight, bias, running_mean, running_var, momentum, eps}, r,
                         &rp, outputs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto g = fused_backward(ctx, grads, true);
    return {g[0], g[3], g[1], g[2], {}, {}, g[4], g[5], {}, {}, {}, {}, {}, {}, {}};
  }
};

// The sub-batches `torch.chunk(x, s, 0)` cuts a batch of `N` into: `{first sample, samples}`
// of each, all of `ceil(N/s)` samples but the last.
using SubBatches = std::vector<std::pair<int64_t, int64_t>>;
SubBatches sub_batches(int64_t N, int64_t s) {
  const int64_t size = (N + s - 1) / s;
  SubBatches out;
  for (int64_t first = 0; first < N; first += size)
    out.emplace_back(first, std::min(size, N - first));
  return out;
}

// Each sub-batch's ReLU mask words (see `forward_typed`): its piece of `masks`, which holds
// them all one after another (`words` of them in all, where `masks` is undefined), or an
// undefined tensor each where the native bfloat16 loops do not run (`native` false).
std::vector<at::Tensor> mask_pieces(const at::Tensor& x, const SubBatches& parts, bool native,
                                    at::Tensor& masks) {
  std::vector<int64_t> words;
  for (const auto& [first, n] : parts) words.push_back(Layout(x.narrow(0, first, n)).mask_words());
  std::vector<at::Tensor> out(parts.size());
  if (!native) return out;
  if (!masks.defined())
    masks = at::empty({std::accumulate(words.begin(), words.end(), int64_t(0))},
                      x.options().dtype(at::kShort));
  int64_t word = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    out[i] = masks.narrow(0, word, words[i]);
    word += words[i];
  }
  return out;
}

// `relu(batch_norm(x))` with each of `splits` contiguous sub-batches (`sub_batches`) normalised
// with its own statistics: MoCo's split batch norm (see `batch_norm.rs`). The sub-batches go
// through the loops above one after another, each read and written where it lies in `x` and
// in one output (a sub-batch of a dense NCHW or channels-last batch is itself dense), so no
// output is concatenated forward and no gradient sliced backward. Each sub-batch updates the
// running statistics from the same start, and they become the mean of those updates.
struct SplitBatchNormRelu : public torch::autograd::Function<SplitBatchNormRelu> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& running_mean, const at::Tensor& running_var,
                               double momentum, double eps, int64_t splits) {
    const auto parts = sub_batches(x.size(0), splits);
    const int64_t k = int64_t(parts.size()), C = x.size(1);
    at::Tensor y = at::empty_like(x, Layout(x).format());
    // Row `i`: the running statistics as sub-batch `i` leaves them.
    const at::Tensor rm = running_mean.detach().repeat({k}).view({k, C});
    const at::Tensor rv = running_var.detach().repeat({k}).view({k, C});
    at::Tensor masks;
    std::vector<at::Tensor> mask =
        mask_pieces(x, parts, x.scalar_type() == at::kBFloat16 && native_bf16(), masks);
    std::vector<at::Tensor> means, invstds;
    for (int64_t i = 0; i < k; ++i) {
      const auto [first, n] = parts[i];
      const at::Tensor xi = x.narrow(0, first, n);
      const NormArgs p{weight, bias, rm.select(0, i), rv.select(0, i), momentum, eps};
      Normed xn, unused;
      if (x.scalar_type() == at::kFloat)
        forward_typed<float>(xi, p, {}, nullptr, xn, unused, mask[i], y.narrow(0, first, n));
      else
        forward_typed<uint16_t>(xi, p, {}, nullptr, xn, unused, mask[i], y.narrow(0, first, n));
      means.push_back(xn.mean);
      invstds.push_back(xn.invstd);
    }
    // As ATen's kernel writes them (see `normalise`).
    running_mean.variable_data().copy_(at::mean(rm, {0}, false, at::kFloat));
    running_var.variable_data().copy_(at::mean(rv, {0}, false, at::kFloat));
    ctx->save_for_backward({x, y, weight, at::stack(means), at::stack(invstds), masks});
    ctx->saved_data["splits"] = splits;
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "fused batch norm + ReLU has no double backward (create_graph)");
    const auto v = ctx->get_saved_variables();
    const at::Tensor &x = v[0], &y = v[1], &weight = v[2];
    at::Tensor masks = v[5];
    if (!grads[0].defined()) return variable_list(8);
    const at::MemoryFormat format = Layout(x).format();
    const at::Tensor dy = grads[0].to(x.scalar_type()).contiguous(format);
    at::Tensor dx = at::empty_like(x, format), dw, db;
    const auto parts = sub_batches(x.size(0), ctx->saved_data["splits"].toInt());
    const std::vector<at::Tensor> mask = mask_pieces(x, parts, masks.defined(), masks);
    // From the last sub-batch to the first: the parameters' gradients are added in the order
    // in which autograd adds those of one function a sub-batch.
    for (size_t i = parts.size(); i-- > 0;) {
      const auto [first, n] = parts[i];
      const Saved s{x.narrow(0, first, n), y.narrow(0, first, n), weight, v[3][i], v[4][i],
                    mask[i]};
      const at::Tensor dyi = dy.narrow(0, first, n), dxi = dx.narrow(0, first, n);
      const auto g = x.scalar_type() == at::kFloat
                         ? backward_typed<float>(dyi, {}, s, false, dxi)
                         : backward_typed<uint16_t>(dyi, {}, s, false, dxi);
      dw = dw.defined() ? dw + g[1] : g[1];
      db = db.defined() ? db + g[2] : g[2];
    }
    return {dx, dw, db, {}, {}, {}, {}, {}};
  }
};

void check_norm(const at::Tensor& w, const at::Tensor& b, const at::Tensor& rm,
                const at::Tensor& rv, int64_t C) {
  for (const at::Tensor* t : {&w, &b, &rm, &rv}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == C &&
                    t->device().is_cpu(),
                "fused batch norm + ReLU: weight, bias and running statistics must be ", C,
                " contiguous float32 values on the CPU");
  }
}

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
  check_norm(w, b, rm, rv, C);
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
// `wr` is not null (with `r`), the residual goes through a batch norm of its own first
// (weight `wr`, bias `br`, running statistics `rmr` and `rvr`, updated; `momentum_r`, `eps_r`),
// differentiable in `wr` and `br` too. Where `out2` is not null, `*out2` = a new handle to a
// view of the same output, a second output of the function for a second consumer (see
// `fused_forward`). With `splits` > 1 (no residual, no second handle), each of that many
// contiguous sub-batches of `x` (`torch.chunk`'s) is normalised with its own statistics and
// the running statistics become the mean of the sub-batches' updates (see
// `SplitBatchNormRelu`). Returns 0, or -1 with libtorch's message in `err`.
int selfsup_batch_norm_relu(const at::Tensor* x, const at::Tensor* r, const at::Tensor* w,
                            const at::Tensor* b, const at::Tensor* rm, const at::Tensor* rv,
                            double momentum, double eps, const at::Tensor* wr,
                            const at::Tensor* br, const at::Tensor* rmr, const at::Tensor* rvr,
                            double momentum_r, double eps_r, int64_t splits, at::Tensor** out,
                            at::Tensor** out2, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    check(*x, r, *w, *b, *rm, *rv);
    TORCH_CHECK(!wr || r, "fused batch norm + ReLU: the residual's norm without a residual");
    if (wr) check_norm(*wr, *br, *rmr, *rvr, x->size(1));
    const int64_t outputs = out2 ? 2 : 1;
    RECORD_FUNCTION("selfsup::batch_norm_relu", c10::ArrayRef<const c10::IValue>{});
    if (splits != 1) {
      TORCH_CHECK(!r && !out2, "split batch norm + ReLU: no residual, one output");
      TORCH_CHECK(splits > 1 && splits <= x->size(0), "split batch norm + ReLU: ", splits,
                  " sub-batches of a batch of ", x->size(0));
      for (const auto& [first, n] : sub_batches(x->size(0), splits))
        TORCH_CHECK(n * x->size(2) * x->size(3) > 1,
                    "split batch norm + ReLU: expected more than 1 value per channel in each "
                    "sub-batch, got one of ",
                    n, " of input ", x->sizes());
      *out = new at::Tensor(
          SplitBatchNormRelu::apply(*x, *w, *b, *rm, *rv, momentum, eps, splits)[0]);
      return;
    }
    // The residual in `x`'s layout (a recorded copy where it is not).
    const at::Tensor res = r ? r->contiguous(Layout(*x).format()) : at::Tensor();
    const variable_list y =
        wr  ? BatchNormAddNormRelu::apply(*x, res, *w, *b, *rm, *rv, *wr, *br, *rmr, *rvr,
                                          momentum, eps, momentum_r, eps_r, outputs)
        : r ? BatchNormAddRelu::apply(*x, res, *w, *b, *rm, *rv, momentum, eps, outputs)
            : BatchNormRelu::apply(*x, *w, *b, *rm, *rv, momentum, eps, outputs);
    *out = new at::Tensor(y[0]);
    if (out2) *out2 = new at::Tensor(y[1]);
  });
}

}  // extern "C"
