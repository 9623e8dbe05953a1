// Average pooling of float and bfloat16 channels-last (NHWC) CPU maps, forward and backward: `k × k` windows, stride `s`, padding `p` (at most half the window), floor mode, the
// divisor the window's size with the padding counted (`count_include_pad`, PyTorch's default)
// or without it: the second block's pool of the Network-In-Network (Lin et al. 2014; RotNet's
// trunk, `nn.AvgPool2d(3, 2, 1)`). libtorch's channels-last kernel vectorizes over whole
// vectors of channels only (32 in bfloat16 on AVX-512) and its backward pass adds into a
// gradient zeroed before, one window at a time: 4.0 ms against 0.2 ms forward for a bfloat16
// `(256, 16, 16, 16)` on 2 cores of an AMX Xeon. (NCHW maps stay with libtorch: these loops
// with one channel a map were slower than its one window at a time.)
//
// Over `(H, W, C)` images, in blocks of 8 channels and then one channel at a time.
// Forward, output row by output row: each window's taps added in row-major order into the
// row's sums (over all the row's windows, tap by tap), then divided by the window's divisor.
// Backward, input row by input row, its sums in cache: the windows covering the row in
// row-major order (output rows ascending; in each, taps from the last column to the first, so
// that a column covered by two windows takes the left one's share first), each window's share
// its gradient divided by its divisor.
//
// Values and gradients are libtorch's bit for bit: the sums in float in libtorch's order, the
// divisions in float (forward: by the divisor as a float; backward: each share divided in the
// tensor's type, as c10's `BFloat16 / int64_t`, and in bfloat16 each sum rounded to nearest even
// as `BFloat16`'s `+=` rounds it).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "elementwise.h"
#include "lanes.h"
#include "selfsup/guard.h"

namespace {

using namespace selfsup::vec8;
using selfsup::load;
using selfsup::store;

struct Avg {
  int64_t H, W, k, s, p, Ho, Wo;
  bool include_pad;
};

// The extent of window `o` along an axis of `n` positions that its divisor counts: to the
// padding's end (`count_include_pad`) or clipped to the map.
SELFSUP_INLINE int64_t extent(int64_t o, int64_t n, const Avg& g) {
  const int64_t i0 = o * g.s - g.p, i1 = std::min(i0 + g.k, n + g.p);
  if (g.include_pad) return i1 - i0;
  return std::min(i1, n) - std::max<int64_t>(i0, 0);
}

// `acc[(ow · s + shift) · C + c] (+)= src[ow · C + c]` for `ow ∈ [ow0, ow1]`, each sum rounded
// as a `R` (float: not at all).
template <typename R, typename T>
SELFSUP_INLINE void add_row(const T* __restrict__ src, float* __restrict__ acc, int64_t C,
                            int64_t ow0, int64_t ow1, int64_t s, int64_t shift, bool scatter) {
  for (int64_t ow = ow0; ow <= ow1; ++ow) {
    const T* a = src + (scatter ? ow : ow * s + shift) * C;
    float* b = acc + (scatter ? ow * s + shift : ow) * C;
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) store8(b + c, rounded8<R>(load8(b + c) + load8(a + c)));
    for (; c < C; ++c) b[c] = rounded<R>(b[c] + load(a + c));
  }
}

// One image: `x` (H, W, C) to `y` (Ho, Wo, C); `sum` scratch of `Wo · C`.
template <typename T>
SELFSUP_INLINE void pool_image(const T* __restrict__ x, T* __restrict__ y, const Avg& g,
                               int64_t C, float* __restrict__ sum) {
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    std::fill(sum, sum + g.Wo * C, 0.0f);
    const int64_t start = oh * g.s - g.p;
    const int64_t ih0 = std::max<int64_t>(start, 0), ih1 = std::min(start + g.k, g.H);
    for (int64_t ih = ih0; ih < ih1; ++ih) {
      for (int64_t jw = 0; jw < g.k; ++jw) {
        int64_t ow0, ow1;
        tap_windows(jw, g.W, g.s, g.p, g.Wo, &ow0, &ow1);
        add_row<float>(x + ih * g.W * C, sum, C, ow0, ow1, g.s, jw - g.p, false);
      }
    }
    const int64_t eh = extent(oh, g.H, g);
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      const float d = float(eh * extent(ow, g.W, g));
      const float* a = sum + ow * C;
      T* b = y + (oh * g.Wo + ow) * C;
      int64_t c = 0;
      for (; c + 8 <= C; c += 8) store8(b + c, load8(a + c) / d);
      for (; c < C; ++c) store(b + c, a[c] / d);
    }
  }
}

// One image's gradient: `dx` (H, W, C) from `dy` (Ho, Wo, C). `share` scratch of `Ho · Wo · C`
// (each window's gradient over its divisor, in the tensor's type), `acc` of `W · C`.
template <typename T>
SELFSUP_INLINE void unpool_image(const T* __restrict__ dy, T* __restrict__ dx, const Avg& g,
                                 int64_t C, float* __restrict__ share, float* __restrict__ acc) {
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const int64_t eh = extent(oh, g.H, g);
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      // c10's `BFloat16 / int64_t` divides by the divisor as a bfloat16.
      const float d = rounded<T>(float(eh * extent(ow, g.W, g)));
      const T* a = dy + (oh * g.Wo + ow) * C;
      float* b = share + (oh * g.Wo + ow) * C;
      int64_t c = 0;
      for (; c + 8 <= C; c += 8) store8(b + c, rounded8<T>(load8(a + c) / d));
      for (; c < C; ++c) b[c] = rounded<T>(load(a + c) / d);
    }
  }
  const int64_t row = g.W * C;
  for (int64_t ih = 0; ih < g.H; ++ih) {
    std::fill(acc, acc + row, 0.0f);
    int64_t oh0, oh1;
    covering(ih, g.k, g.s, g.p, g.Ho, &oh0, &oh1);
    for (int64_t oh = oh0; oh <= oh1; ++oh) {
      for (int64_t jw = g.k - 1; jw >= 0; --jw) {
        int64_t ow0, ow1;
        tap_windows(jw, g.W, g.s, g.p, g.Wo, &ow0, &ow1);
        add_row<T>(share + oh * g.Wo * C, acc, C, ow0, ow1, g.s, jw - g.p, true);
      }
    }
    T* out = dx + ih * row;
    int64_t j = 0;
    for (; j + 8 <= row; j += 8) store8(out + j, load8(acc + j));
    for (; j < row; ++j) store(out + j, acc[j]);
  }
}

// The loops for each element type, each compiled for AVX-512, AVX2 and baseline x86-64:
// images `[n0, n1)` of `C` channels.
#define SELFSUP_AVG_LOOPS(T)                                                                  \
  SELFSUP_CLONES void pool_images(const T* x, T* y, const Avg& g, int64_t C, int64_t n0,      \
                                  int64_t n1, float* sum) {                                   \
    for (int64_t n = n0; n < n1; ++n) {                                                       \
      pool_image(x + n * g.H * g.W * C, y + n * g.Ho * g.Wo * C, g, C, sum);                  \
    }                                                                                         \
  }                                                                                           \
  SELFSUP_CLONES void unpool_images(const T* dy, T* dx, const Avg& g, int64_t C, int64_t n0,  \
                                    int64_t n1, float* share, float* acc) {                   \
    for (int64_t n = n0; n < n1; ++n) {                                                       \
      unpool_image(dy + n * g.Ho * g.Wo * C, dx + n * g.H * g.W * C, g, C, share, acc);       \
    }                                                                                         \
  }
SELFSUP_AVG_LOOPS(float)
SELFSUP_AVG_LOOPS(uint16_t)
#undef SELFSUP_AVG_LOOPS

template <typename T>
at::Tensor pool(const at::Tensor& x, const Avg& g) {
  at::Tensor y = at::empty({x.size(0), x.size(1), g.Ho, g.Wo},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t n = x.size(0), C = x.size(1);
  const T* xp = selfsup::elements<T>(x);
  T* yp = selfsup::elements<T>(y);
  at::parallel_for(0, n, 1, [&](int64_t n0, int64_t n1) {
    std::vector<float> sum(g.Wo * C);
    pool_images(xp, yp, g, C, n0, n1, sum.data());
  });
  return y;
}

template <typename T>
at::Tensor unpool(const at::Tensor& dy, const Avg& g) {
  at::Tensor dx = at::empty({dy.size(0), dy.size(1), g.H, g.W},
                            dy.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t n = dy.size(0), C = dy.size(1);
  const T* gp = selfsup::elements<T>(dy);
  T* dp = selfsup::elements<T>(dx);
  at::parallel_for(0, n, 1, [&](int64_t n0, int64_t n1) {
    std::vector<float> share(g.Ho * g.Wo * C), acc(g.W * C);
    unpool_images(gp, dp, g, C, n0, n1, share.data(), acc.data());
  });
  return dx;
}

struct AvgPool : public torch::autograd::Function<AvgPool> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t k, int64_t s, int64_t p, bool include_pad) {
    const int64_t H = x.size(2), W = x.size(3);
    const Avg g{H, W, k, s, p, (H + 2 * p - k) / s + 1, (W + 2 * p - k) / s + 1, include_pad};
    const bool f = x.scalar_type() == at::kFloat;
    ctx->saved_data["g"] = std::vector<int64_t>{H, W, k, s, p, g.Ho, g.Wo};
    ctx->saved_data["include_pad"] = include_pad;
    ctx->saved_data["float"] = f;
    return f ? pool<float>(x, g) : pool<uint16_t>(x, g);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), "selfsup's average pool has no double backward");
    const torch::autograd::variable_list none(5);
    if (!grads[0].defined()) return none;
    const auto v = ctx->saved_data["g"].toIntVector();
    const Avg g{v[0], v[1], v[2], v[3], v[4], v[5], v[6], ctx->saved_data["include_pad"].toBool()};
    const bool f = ctx->saved_data["float"].toBool();
    const at::Tensor dy = grads[0]
                              .to(f ? at::kFloat : at::kBFloat16)
                              .contiguous(at::MemoryFormat::ChannelsLast);
    auto out = none;
    out[0] = f ? unpool<float>(dy, g) : unpool<uint16_t>(dy, g);
    return out;
  }
};

}  // namespace

extern "C" {

// `*out` = a new handle to `avg_pool2d(*x, k, stride s, padding p, ceil_mode false,
// count_include_pad include_pad)` (see the file header), differentiable in `x`; `*out` left
// null where `x` is not a float or bfloat16 CPU tensor of 4 dimensions in NHWC order but not
// also NCHW (the caller then takes libtorch's). Returns 0, or -1 with the message in `err`.
int selfsup_avg_pool2d(const at::Tensor* x, int64_t k, int64_t s, int64_t p, int include_pad,
                       at::Tensor** out, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    const bool kind = x->scalar_type() == at::kFloat || x->scalar_type() == at::kBFloat16;
    if (!x->device().is_cpu() || x->dim() != 4 || !kind) return;
    if (x->is_contiguous() || !x->is_contiguous(at::MemoryFormat::ChannelsLast)) return;
    TORCH_CHECK(k >= 1 && s >= 1 && p >= 0 && 2 * p <= k, "selfsup's average pool: kernel ", k,
                ", stride ", s, ", padding ", p, " (padding at most half the kernel)");
    TORCH_CHECK(x->size(2) + 2 * p >= k && x->size(3) + 2 * p >= k,
                "selfsup's average pool: map ", x->size(2), "x", x->size(3),
                " smaller than the kernel ", k, " with padding ", p);
    RECORD_FUNCTION("selfsup::avg_pool2d", c10::ArrayRef<const c10::IValue>{});
    *out = new at::Tensor(AvgPool::apply(*x, k, s, p, include_pad != 0));
  });
}

}  // extern "C"
