// Convolutions as matrix products over im2col columns (Chellapilla, Puri & Simard, "High
// Performance Convolutional Neural Networks for Document Processing", 2006; Caffe's im2col),
// for the channels-last CPU layers whose output maps are small. There oneDNN's direct kernels
// run far from the machine: in bf16 on AMX (`brgconv`) the forward pass at 4 x 4 maps and 512
// channels ran at 0.9 TFLOP/s against 3.1 at 8 x 8 and 256, its backward pass to the weights
// at a third of that. Our reading: they go image by image, so the filter bank (4.7 MB in bf16,
// beyond the core's L2) is read from memory again for every image. As one product with all
// the batch's output positions as rows, the filters are read once (measured in
// `examples/conv_gemm_probe.rs`; the choice of layers is `plan_gemm` in `encoders/conv.rs`).
//
// For x (N, C, H, W) channels-last, w (K, C, r, r), stride s and padding p, output (N, K, Ho,
// Wo): the columns X̂ (N Ho Wo, r r C), row (n, oh, ow), column (kh, kw, c) = x[n, c, oh s + kh
// - p, ow s + kw - p] (0 outside the map), and W̃ (K, r r C) the filters in (kh, kw, c) order (a
// view of a channels-last w):
// - forward: Y (N Ho Wo, K) = X̂ W̃ᵀ, written into the channels-last output;
// - backward to the weights: dW̃ (K, r r C) = dYᵀ X̂, the channels-last gradient;
// - backward to the input, stride 1 only: the forward pass of dY with the filters flipped and
//   transposed (w'[c, k, i, j] = w[k, c, r - 1 - i, r - 1 - j]) and padding r - 1 - p.
// Every output value is one product's sum over all of its terms (the product's own
// accumulator: fp32 for bf16 operands, rounded once), as in the direct kernels, only in
// another order. The columns are built in pieces within `piece_bytes()` (`conv_passes.h`): of
// images for the forward passes (rows of the product), of filter rows for the weights (columns
// of the product), so no sum is split. The other passes, and deterministic runs (oneDNN off),
// are libtorch's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstring>

#include "conv_passes.h"
#include "selfsup/guard.h"

namespace {

// The shape of a convolution: input (N, C, H, W), K filters r x r, stride s, padding p, output
// (N, K, Ho, Wo).
struct Geometry {
  int64_t N, C, H, W, K, r, s, p, Ho, Wo;
  Geometry(const at::Tensor& x, int64_t K, int64_t r, int64_t s, int64_t p)
      : N(x.size(0)),
        C(x.size(1)),
        H(x.size(2)),
        W(x.size(3)),
        K(K),
        r(r),
        s(s),
        p(p),
        Ho((H + 2 * p - r) / s + 1),
        Wo((W + 2 * p - r) / s + 1) {}
};

// The columns of images [n0, n0 + n) and filter rows [kh0, kh1) of the channels-last `x`:
// (n Ho Wo, (kh1 - kh0) r C), row (n, oh, ow), column (kh, kw, c) (see the file's header). One
// copy of C values per tap, or zeros outside the map; the rows split over libtorch's threads.
at::Tensor columns(const at::Tensor& x, const Geometry& g, int64_t n0, int64_t n, int64_t kh0,
                   int64_t kh1) {
  const int64_t taps = (kh1 - kh0) * g.r;
  at::Tensor cols = at::empty({n * g.Ho * g.Wo, taps * g.C}, x.options());
  const size_t pixel = static_cast<size_t>(g.C * x.element_size());
  const char* src = static_cast<const char*>(x.data_ptr());
  char* dst = static_cast<char*>(cols.data_ptr());
  at::parallel_for(0, n * g.Ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t img = n0 + i / g.Ho, oh = i % g.Ho;
      char* out = dst + i * g.Wo * taps * pixel;
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        for (int64_t kh = kh0; kh < kh1; ++kh) {
          const int64_t ih = oh * g.s + kh - g.p;
          const bool row_in = ih >= 0 && ih < g.H;
          for (int64_t kw = 0; kw < g.r; ++kw, out += pixel) {
            const int64_t iw = ow * g.s + kw - g.p;
            if (row_in && iw >= 0 && iw < g.W) {
              std::memcpy(out, src + ((img * g.H + ih) * g.W + iw) * pixel, pixel);
            } else {
              std::memset(out, 0, pixel);
            }
          }
        }
      }
    }
  });
  return cols;
}

// W̃ᵀ (r r C, K): the filters `w` (K, C, r, r) in (kh, kw, c) order, transposed (a view when
// `w` is channels-last).
at::Tensor filter_columns(const at::Tensor& w) {
  return w.permute({0, 2, 3, 1}).reshape({w.size(0), -1}).t();
}

// The filters of the backward pass to the input at stride 1 as the right factor of the product
// (r r K, C): row (i, j, k) = w[k, :, r - 1 - i, r - 1 - j], the flipped, transposed filters'
// `filter_columns`. Copied by C values at a time (libtorch's transposing copy of the whole
// (K, r r C) matrix is 8 ms at 512 channels, as long as the pass).
at::Tensor flipped_filter_columns(const at::Tensor& w) {
  const int64_t K = w.size(0), C = w.size(1), taps = w.size(2) * w.size(3);
  const at::Tensor wl = w.permute({0, 2, 3, 1}).contiguous();  // (K, r, r, C)
  at::Tensor out = at::empty({taps * K, C}, w.options());
  const size_t pixel = static_cast<size_t>(C * w.element_size());
  const char* src = static_cast<const char*>(wl.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, taps * K, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t t = row / K, k = row % K;
      std::memcpy(dst + row * pixel, src + (k * taps + taps - 1 - t) * pixel, pixel);
    }
  });
  return out;
}

// The convolution of the channels-last `x` with the filters `wt` (r r C, K) as
// `filter_columns` gives them, of geometry `g`: Y = X̂ W̃ᵀ in pieces of images; returns (N, K,
// Ho, Wo) channels-last.
at::Tensor forward_gemm(const at::Tensor& x, const at::Tensor& wt, const Geometry& g) {
  at::Tensor y = at::empty({g.N, g.Ho, g.Wo, g.K}, x.options());
  const at::Tensor ym = y.view({g.N * g.Ho * g.Wo, g.K});
  const int64_t per_image = std::max<int64_t>(g.Ho * g.Wo * g.r * g.r * g.C * x.element_size(), 1);
  const int64_t step = std::max<int64_t>(1, selfsup::piece_bytes().load() / per_image);
  for (int64_t n0 = 0; n0 < g.N; n0 += step) {
    const int64_t n = std::min(step, g.N - n0);
    at::Tensor out = ym.narrow(0, n0 * g.Ho * g.Wo, n * g.Ho * g.Wo);
    at::mm_out(out, columns(x, g, n0, n, 0, g.r), wt);
  }
  return y.permute({0, 3, 1, 2});
}

// The gradient (K, C, r, r), channels-last, to the filters of the convolution of the
// channels-last `x` of geometry `g`, given the channels-last `dy`: dW̃ = dYᵀ X̂ in pieces of
// filter rows (each product sums over the whole batch).
at::Tensor weight_grad_gemm(const at::Tensor& x, const at::Tensor& dy, const Geometry& g) {
  at::Tensor dw = at::empty({g.K, g.r, g.r, g.C}, dy.options());
  const at::Tensor dwm = dw.view({g.K, g.r * g.r * g.C});
  const at::Tensor dyt = dy.permute({0, 2, 3, 1}).reshape({g.N * g.Ho * g.Wo, g.K}).t();
  const int64_t per_row = std::max<int64_t>(g.N * g.Ho * g.Wo * g.r * g.C * x.element_size(), 1);
  const int64_t rows = std::clamp<int64_t>(selfsup::piece_bytes().load() / per_row, 1, g.r);
  for (int64_t kh0 = 0; kh0 < g.r; kh0 += rows) {
    const int64_t kh1 = std::min(g.r, kh0 + rows);
    at::Tensor out = dwm.narrow(1, kh0 * g.r * g.C, (kh1 - kh0) * g.r * g.C);
    at::mm_out(out, dyt, columns(x, g, 0, g.N, kh0, kh1));
  }
  return dw.permute({0, 3, 1, 2});
}

// Which passes run as products; the others call libtorch's convolution.
using Plan = selfsup::ConvPlan;

struct GemmConv : public torch::autograd::Function<GemmConv> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w, int64_t bits, int64_t stride, int64_t padding) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["bits"] = bits;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    if (Plan(bits).forward) {
      return forward_gemm(x, filter_columns(w),
                          Geometry(x, w.size(0), w.size(2), stride, padding));
    }
    return selfsup::libtorch_conv(x, w, stride, padding);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "convolution by matrix products has no double backward (create_graph)");
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1];
    const Plan plan(ctx->saved_data["bits"].toInt());
    const int64_t s = ctx->saved_data["stride"].toInt(), p = ctx->saved_data["padding"].toInt();
    const at::Tensor none;
    if (!grads[0].defined()) return {none, none, none, none, none};
    const at::Tensor dy = grads[0].contiguous(at::MemoryFormat::ChannelsLast);
    const bool want_x = ctx->needs_input_grad(0), want_w = ctx->needs_input_grad(1);
    const int64_t r = w.size(2);
    at::Tensor dx, dw;
    if (want_x && plan.input) {
      // Stride 1: the forward pass of dy with the flipped, transposed filters.
      dx = forward_gemm(dy, flipped_filter_columns(w), Geometry(dy, w.size(1), r, 1, r - 1 - p));
    }
    if (want_w && plan.weight) {
      dw = weight_grad_gemm(x, dy, Geometry(x, w.size(0), r, s, p))
               .contiguous(w.suggest_memory_format());
    }
    selfsup::libtorch_backward_rest(dy, x, w, s, p, plan, want_x, want_w, dx, dw);
    return {dx, dw, none, none, none};
  }
};

}  // namespace

extern "C" {

// `*out` = a new handle to the convolution (no bias, one group, no dilation) of `x` (N, C, H,
// W) with `w` (K, C, r, r), stride `stride` and padding `padding`, the passes in `bits` (1
// forward, 2 backward to the input: stride 1 only, 4 backward to the weights) as matrix
// products over im2col columns and the others by libtorch; differentiable in both. Under the
// CPU's bfloat16 autocast both are cast as autocast's convolution casts them (the weights
// through its cache). Returns 1 when it took the convolution, 0 when it left it to the caller
// (nothing in `bits` it can take; `x` not a channels-last CPU tensor; not float or bfloat16
// after autocast; another autocast dtype; oneDNN off: deterministic runs), or -1 with
// libtorch's message in `err`.
int selfsup_conv_gemm(const at::Tensor* x, const at::Tensor* w, int64_t stride, int64_t padding,
                      int bits, at::Tensor** out, char* err, size_t err_len) {
  int took = 0;
  const int rc = selfsup::guarded(err, err_len, [&] {
    const int passes = bits & (stride == 1 ? 7 : 5);
    if (passes == 0 || x->dim() != 4 || !x->device().is_cpu() || !w->device().is_cpu() ||
        !x->is_contiguous(at::MemoryFormat::ChannelsLast) ||
        !at::globalContext().userEnabledMkldnn()) {
      return;
    }
    TORCH_CHECK(w->dim() == 4 && w->size(1) == x->size(1) && w->size(2) == w->size(3) &&
                    stride >= 1 && padding >= 0 && padding < w->size(2) &&
                    x->size(2) + 2 * padding >= w->size(2) &&
                    x->size(3) + 2 * padding >= w->size(2),
                "convolution by matrix products: input ", x->sizes(), ", weight ", w->sizes(),
                ", stride ", stride, ", padding ", padding,
                " (expected (N, C, H, W), (K, C, r, r), stride >= 1, 0 <= padding < r, and r <= H + ",
                "2 padding, W + 2 padding)");
    at::Tensor xs = *x, ws = *w;
    if (!selfsup::autocast_operands(xs, ws)) return;
    const auto kind = xs.scalar_type();
    if (kind != ws.scalar_type() || (kind != at::kFloat && kind != at::kBFloat16)) return;
    RECORD_FUNCTION("selfsup::conv_gemm", c10::ArrayRef<const c10::IValue>{});
    *out = new at::Tensor(GemmConv::apply(xs, ws, static_cast<int64_t>(passes), stride, padding));
    took = 1;
  });
  return rc != 0 ? rc : took;
}

}  // extern "C"
