// What the convolution shims share, `winograd.cpp` (Winograd's minimal filtering),
// `conv_gemm.cpp` (matrix products over im2col columns) and `conv_det.cpp` (deterministic runs):
// which passes a shim takes, libtorch's convolution for the passes it leaves, the bound on one
// piece of a pass's temporaries, and the operands' casts under autocast.
#pragma once

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <atomic>
#include <cstdint>

namespace selfsup {

// Bytes one piece of a pass may hold (Winograd's transformed tiles, the im2col columns): a
// pass runs over the batch (or the filter's rows) in pieces that stay within it, so its memory
// does not grow with the batch. The pieces depend on the shapes and this setting only, never
// on timing: a run's sums keep their order from run to run. 64 MiB; tests set less through
// `selfsup_winograd_piece_bytes`. One counter for the whole library (an inline function's
// static).
inline std::atomic<int64_t>& piece_bytes() {
  static std::atomic<int64_t> bytes{int64_t{64} << 20};
  return bytes;
}

// Under the CPU's bfloat16 autocast, casts the operands `x`, `w` and `b` (when not null and
// defined) as autocast's convolution casts them (the weights through its cache); false under
// another autocast dtype, where the shim leaves the convolution to libtorch. Without autocast,
// true and nothing cast.
inline bool autocast_operands(at::Tensor& x, at::Tensor& w, at::Tensor* b = nullptr) {
  if (!at::autocast::is_autocast_enabled(at::kCPU)) return true;
  if (at::autocast::get_autocast_dtype(at::kCPU) != at::kBFloat16) return false;
  x = at::autocast::cached_cast(at::kBFloat16, x, c10::DeviceType::CPU);
  w = at::autocast::cached_cast(at::kBFloat16, w, c10::DeviceType::CPU);
  if (b != nullptr && b->defined()) {
    *b = at::autocast::cached_cast(at::kBFloat16, *b, c10::DeviceType::CPU);
  }
  return true;
}

// Which passes a shim takes (bit 0 forward, 1 backward to the input, 2 backward to the
// weights); libtorch's convolution runs the others. Bit 3: Winograd's output tiles of 4 x 4
// instead of 2 x 2 (`winograd.cpp`; the matrix products ignore it).
struct ConvPlan {
  bool forward, input, weight, tile4;
  explicit ConvPlan(int64_t bits)
      : forward(bits & 1), input(bits & 2), weight(bits & 4), tile4(bits & 8) {}
  int64_t tile() const { return tile4 ? 4 : 2; }
};

// libtorch's convolution of `x` with `w`: no bias, one group, no dilation, stride `s`, padding
// `p`.
inline at::Tensor libtorch_conv(const at::Tensor& x, const at::Tensor& w, int64_t s, int64_t p) {
  return at::convolution(x, w, {}, {s, s}, {p, p}, {1, 1}, false, {0, 0}, 1);
}

// The backward passes of that convolution which are wanted (`want_x`, `want_w`) and not in
// `plan`, by libtorch in one call, into `dx` and `dw`.
inline void libtorch_backward_rest(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                                   int64_t s, int64_t p, const ConvPlan& plan, bool want_x,
                                   bool want_w, at::Tensor& dx, at::Tensor& dw) {
  const bool rest_x = want_x && !plan.input, rest_w = want_w && !plan.weight;
  if (!rest_x && !rest_w) return;
  auto g = at::convolution_backward(dy, x, w, std::nullopt, {s, s}, {p, p}, {1, 1}, false, {0, 0},
                                    1, {rest_x, rest_w, false});
  if (rest_x) dx = std::get<0>(g);
  if (rest_w) dw = std::get<1>(g);
}

}  // namespace selfsup
