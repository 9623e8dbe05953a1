// The fused Winograd passes of `winograd_fused.cpp`, for `winograd.cpp`.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace selfsup {

// Whether the fused passes are to be used where they run (on by default; off, the same layers
// run unfused: for the tests and probes that compare the two). One flag a thread: the thread
// that runs a convolution (on the CPU, autograd's backward passes run on the thread that asks
// for them) picks its path, so tests running beside each other keep theirs.
inline bool& fused_winograd_wanted() {
  thread_local bool wanted = true;
  return wanted;
}

// Whether `fused_winograd` runs F(m x m, r x r) on `kind` tensors from C to K channels on H x W
// maps: bfloat16 F(2x2, 3x3) with C even, or float F(4x4, 5x5); K a multiple of 16, 64
// positions or more, a CPU with AVX512-BF16, and `fused_winograd_wanted`.
bool fused_winograd_takes(at::ScalarType kind, int64_t m, int64_t r, int64_t C, int64_t K,
                          int64_t H, int64_t W);

// The transformed filters `v` (α², C, K) (G g Gᵀ, in the input's type) as `fused_winograd`
// takes them: float (α², C, K) dense; bfloat16 packed in pairs of channels, (α², C/2, K, 2).
at::Tensor fused_winograd_filters(const at::Tensor& v);

// `y` (n, H, W, K), NHWC, dense: the stride-1 convolution by F(m x m, r x r) (m = 2: r = 3,
// bfloat16; m = 4: r = 5, float), padding (r - 1) / 2, of `x` (n, H, W, C), NHWC, with the
// filters `vp` from `fused_winograd_filters`.
void fused_winograd(const at::Tensor& x, const at::Tensor& vp, int64_t m, at::Tensor& y);

// Whether `fused_winograd_weight` runs: as `fused_winograd_takes`, and C a multiple of 16.
bool fused_winograd_weight_takes(at::ScalarType kind, int64_t m, int64_t r, int64_t C,
                                 int64_t K, int64_t H, int64_t W);

// `(α², K, C)` float: the transformed weight gradient Σ_t (A dY_t Aᵀ) ⊙ (Bᵀ d_t B) of the
// stride-1 convolution by F(m x m, r x r) (as `fused_winograd`) of `x` (n, H, W, C), NHWC, given
// its output's gradient `dy` (n, H, W, K), NHWC, both dense in the same type; the caller takes
// it back through G.
at::Tensor fused_winograd_weight(const at::Tensor& x, const at::Tensor& dy, int64_t m);

// Whether `fused_down` and `fused_down_weight` run the 4x4 stride-2 convolution (padding 1) on
// `kind` tensors from C to K channels at an H x W input: bfloat16, C a multiple of 4, K of 16,
// H and W even, a CPU with AVX512-BF16, and `fused_winograd_wanted`.
bool fused_down_takes(at::ScalarType kind, int64_t C, int64_t K, int64_t H, int64_t W);

// `y` (n, H/2, W/2, K), NHWC, dense: the 4x4 stride-2 convolution (padding 1) of `x` (n, H, W,
// C), NHWC, by F(2x2, 2x2) on its space-to-depth form (`winograd.cpp`'s header), with the
// transformed filters `vp` of the 2x2 filter of 4C channels from `fused_winograd_filters`.
void fused_down(const at::Tensor& x, const at::Tensor& vp, at::Tensor& y);

// `(9, K, 4C)` float: the transformed gradient of that 2x2 filter of 4C channels, given `x` (n,
// H, W, C) and the output's gradient `dy` (n, H/2, W/2, K), both NHWC, dense, bfloat16; the
// caller takes it back through G.
at::Tensor fused_down_weight(const at::Tensor& x, const at::Tensor& dy);

// Whether `fused_up` runs the backward pass to the input of that convolution: as
// `fused_down_takes`, and C a multiple of 16.
bool fused_up_takes(at::ScalarType kind, int64_t C, int64_t K, int64_t H, int64_t W);
// `dx` (n, H, W, C), NHWC, dense, bfloat16: the gradient to the input of the 4x4 stride-2
// convolution (padding 1) from C to K channels, given its output's `dy` (n, H/2, W/2, K), NHWC,
// by F(2x2, 2x2) for each parity (a, b) of the input's pixels, with the four parities'
// transformed filters `vp` (4, 9, K/2, C, 2): `fused_winograd_filters` of the flipped 2x2 filters
// w[k, c, 2(1 - p) + a, 2(1 - q) + b] from K to C channels.
void fused_up(const at::Tensor& dy, const at::Tensor& vp, at::Tensor& dx);
}  // namespace selfsup
