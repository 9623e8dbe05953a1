// Max pooling of contiguous (NCHW) float CPU maps: `k × k` windows, stride `s`, padding `p`
// that no value comes from (windows clipped to the map), no dilation, floor mode: the pools of
// the Network-In-Network (Lin et al. 2014, RotNet's trunk), AlexNet (Krizhevsky et al. 2012)
// and ResNet's stem (He et al. 2016). libtorch's NCHW kernel took 7.9 ms for
// `(256, 8, 32, 32)`, 3×3/2, on 2 cores of an AMX Xeon, against 1.4 ms for the same map
// channels-last (the RotNet cpu profile's fp32 step spent 7% of its time there). Here each
// map is one piece of work, on one thread: each input row's maxima over the windows' columns
// first, then those row maxima down the windows' rows, with branch-free selects, tap by tap
// over all the windows so that the loops over them vectorize; where the width is `Wo · s`, all
// rows of a map as one loop (`pool_map`).
//
// Values and indices are libtorch's bit for bit: the index (flat in the map, as
// `max_pool2d_with_indices` writes it) of the first maximum in row-major order, or of the last
// NaN where the window holds one (libtorch's `val > max || isnan(val)` update); a window of
// `-inf` alone points at its first position. The backward pass is libtorch's
// `max_pool2d_with_indices_backward` on these indices, so gradients are its own too.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "elementwise.h"
#include "selfsup/guard.h"

namespace {

struct Pool {
  int64_t H, W, k, s, p, Ho, Wo;
};

// Where `v` replaces the running maximum `m`: greater, or NaN (libtorch's rule).
SELFSUP_INLINE bool takes(float v, float m) { return (v > m) | (v != v); }

// The maxima over the windows' columns of input rows, for windows `[ow0, ow1)` all inside
// their row: `rm[ow]` and its position in the map, `rc[ow]`, where window `ow` starts at
// `base + ow · S - p`. One row (`base` its start), or, where the map's width is `Wo · S`, all
// rows as one (`base` 0, `ow` running over `H · Wo`). Tap by tap over all the windows, so that
// the loop over `ow` (stride `S` through the values) is branch-free and vectorizes.
template <int S>
SELFSUP_INLINE void rows_inside(const float* __restrict__ x, int64_t base,
                                float* __restrict__ rm, int32_t* __restrict__ rc, int64_t ow0,
                                int64_t ow1, int64_t k, int64_t p) {
  const float* first = x + base - p;
  for (int64_t ow = ow0; ow < ow1; ++ow) {
    rm[ow] = first[ow * S];
    rc[ow] = int32_t(base - p + ow * S);
  }
  for (int64_t j = 1; j < k; ++j) {
    const float* tap = first + j;
    for (int64_t ow = ow0; ow < ow1; ++ow) {
      const float v = tap[ow * S];
      const bool t = takes(v, rm[ow]);
      rm[ow] = t ? v : rm[ow];
      rc[ow] = t ? int32_t(base - p + j + ow * S) : rc[ow];
    }
  }
}

// The same for window `ow` of row `ih`, reaching past the row's ends (clipped to it).
SELFSUP_INLINE void row_edge(const float* __restrict__ x, int64_t ih, int64_t ow,
                             float* __restrict__ rows, int32_t* __restrict__ cols,
                             const Pool& g) {
  const int64_t start = ow * g.s - g.p;
  const int64_t iw0 = std::max<int64_t>(start, 0), iw1 = std::min(start + g.k, g.W);
  const float* row = x + ih * g.W;
  float m = row[iw0];
  int64_t a = iw0;
  for (int64_t iw = iw0 + 1; iw < iw1; ++iw) {
    const bool t = takes(row[iw], m);
    m = t ? row[iw] : m;
    a = t ? iw : a;
  }
  rows[ih * g.Wo + ow] = m;
  cols[ih * g.Wo + ow] = int32_t(ih * g.W + a);
}

// One map: `x` (H, W) to `y` (Ho, Wo) and, where `idx` is not null, its indices. `rows` and
// `cols` are scratch of `H · Wo` values (and `cols` `Wo` more): each input row's maxima over
// every window's columns and where they are in the map. Starting each maximum at the
// window's first value is libtorch's start at `-inf` with the first position: a first value
// of `-inf` is kept only by a window of `-inf` alone, which points at its first position
// either way.
SELFSUP_CLONES void pool_map(const float* __restrict__ x, float* __restrict__ y,
                             int64_t* __restrict__ idx, const Pool g, float* __restrict__ rows,
                             int32_t* __restrict__ cols) {
  // The windows wholly inside a row: `ow` in `[inner0, inner1)`.
  const int64_t inner0 = std::min(g.Wo, (g.p + g.s - 1) / g.s);
  const int64_t inner1 =
      std::max(inner0, std::min(g.Wo, g.W - g.k + g.p >= 0 ? (g.W - g.k + g.p) / g.s + 1 : 0));
  const bool vector = g.s == 1 || g.s == 2;
  if (vector && g.W == g.Wo * g.s) {
    // All rows as one: every window from the first that starts in the map to the last that
    // ends in it, then the windows at the rows' ends again, clipped.
    const int64_t n = g.H * g.Wo;
    const int64_t last = g.H * g.W - g.k + g.p;
    const int64_t t1 = last >= 0 ? std::min(n, last / g.s + 1) : 0;
    if (g.s == 2) {
      rows_inside<2>(x, 0, rows, cols, inner0, t1, g.k, g.p);
    } else {
      rows_inside<1>(x, 0, rows, cols, inner0, t1, g.k, g.p);
    }
    for (int64_t ih = 0; ih < g.H; ++ih) {
      for (int64_t ow = 0; ow < inner0; ++ow) row_edge(x, ih, ow, rows, cols, g);
      for (int64_t ow = inner1; ow < g.Wo; ++ow) row_edge(x, ih, ow, rows, cols, g);
    }
  } else {
    for (int64_t ih = 0; ih < g.H; ++ih) {
      float* rm = rows + ih * g.Wo;
      int32_t* rc = cols + ih * g.Wo;
      for (int64_t ow = 0; ow < inner0; ++ow) row_edge(x, ih, ow, rows, cols, g);
      if (g.s == 2) {
        rows_inside<2>(x, ih * g.W, rm, rc, inner0, inner1, g.k, g.p);
      } else if (g.s == 1) {
        rows_inside<1>(x, ih * g.W, rm, rc, inner0, inner1, g.k, g.p);
      } else {
        for (int64_t ow = inner0; ow < inner1; ++ow) row_edge(x, ih, ow, rows, cols, g);
      }
      for (int64_t ow = inner1; ow < g.Wo; ++ow) row_edge(x, ih, ow, rows, cols, g);
    }
  }
  // Down each window's rows (clipped to the map), row by row across the output row.
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const int64_t start = oh * g.s - g.p;
    const int64_t ih0 = std::max<int64_t>(start, 0), ih1 = std::min(start + g.k, g.H);
    float* __restrict__ out = y + oh * g.Wo;
    std::copy(rows + ih0 * g.Wo, rows + (ih0 + 1) * g.Wo, out);
    if (!idx) {
      for (int64_t ih = ih0 + 1; ih < ih1; ++ih) {
        const float* r = rows + ih * g.Wo;
        for (int64_t ow = 0; ow < g.Wo; ++ow) out[ow] = takes(r[ow], out[ow]) ? r[ow] : out[ow];
      }
      continue;
    }
    // With the indices: the row each output kept (scratch past the row maxima), then its
    // column there.
    int32_t* __restrict__ best = cols + g.H * g.Wo;
    for (int64_t ow = 0; ow < g.Wo; ++ow) best[ow] = int32_t(ih0);
    for (int64_t ih = ih0 + 1; ih < ih1; ++ih) {
      const float* r = rows + ih * g.Wo;
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        const bool t = takes(r[ow], out[ow]);
        out[ow] = t ? r[ow] : out[ow];
        best[ow] = t ? int32_t(ih) : best[ow];
      }
    }
    int64_t* __restrict__ at = idx + oh * g.Wo;
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      at[ow] = cols[int64_t(best[ow]) * g.Wo + ow];
    }
  }
}

// `x` (N, C, H, W) contiguous float: the pooled maps and, when `indices`, their indices.
std::pair<at::Tensor, at::Tensor> pool(const at::Tensor& x, const Pool& g, bool indices) {
  const int64_t planes = x.size(0) * x.size(1);
  at::Tensor y = at::empty({x.size(0), x.size(1), g.Ho, g.Wo}, x.options());
  at::Tensor idx = indices ? at::empty(y.sizes(), x.options().dtype(at::kLong)) : at::Tensor();
  const float* xp = x.const_data_ptr<float>();
  float* yp = y.data_ptr<float>();
  int64_t* ip = indices ? idx.data_ptr<int64_t>() : nullptr;
  at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> rows(g.H * g.Wo);
    std::vector<int32_t> cols((g.H + 1) * g.Wo);
    for (int64_t q = p0; q < p1; ++q) {
      pool_map(xp + q * g.H * g.W, yp + q * g.Ho * g.Wo, ip ? ip + q * g.Ho * g.Wo : nullptr, g,
               rows.data(), cols.data());
    }
  });
  return {y, idx};
}

struct MaxPool : public torch::autograd::Function<MaxPool> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t k, int64_t s, int64_t p) {
    const int64_t H = x.size(2), W = x.size(3);
    const Pool g{H, W, k, s, p, (H + 2 * p - k) / s + 1, (W + 2 * p - k) / s + 1};
    auto [y, idx] = pool(x, g, x.requires_grad());
    if (x.requires_grad()) {
      ctx->save_for_backward({x, idx});
      ctx->saved_data["k"] = k;
      ctx->saved_data["s"] = s;
      ctx->saved_data["p"] = p;
    }
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), "selfsup's max pool has no double backward");
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const int64_t k = ctx->saved_data["k"].toInt(), s = ctx->saved_data["s"].toInt(),
                  p = ctx->saved_data["p"].toInt();
    at::Tensor dx = at::max_pool2d_with_indices_backward(grads[0].contiguous(), saved[0], {k, k},
                                                         {s, s}, {p, p}, {1, 1}, false,
                                                         saved[1]);
    return {dx, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// `*out` = a new handle to `max_pool2d(*x, k, stride s, padding p)` (see the file header),
// differentiable in `x`. Returns 0, or -1 with libtorch's message in `err`.
int selfsup_max_pool2d(const at::Tensor* x, int64_t k, int64_t s, int64_t p, at::Tensor** out,
                       char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    TORCH_CHECK(x->device().is_cpu() && x->dim() == 4 && x->is_contiguous() &&
                    x->scalar_type() == at::kFloat,
                "selfsup's max pool: expected a contiguous 4-d float CPU tensor, got ",
                x->scalar_type(), " ", x->sizes(), " on ", x->device());
    TORCH_CHECK(k >= 1 && s >= 1 && p >= 0 && 2 * p <= k, "selfsup's max pool: kernel ", k,
                ", stride ", s, ", padding ", p, " (padding at most half the kernel)");
    TORCH_CHECK(x->size(2) + 2 * p >= k && x->size(3) + 2 * p >= k,
                "selfsup's max pool: map ", x->size(2), "x", x->size(3),
                " smaller than the kernel ", k, " with padding ", p);
    TORCH_CHECK(x->size(2) * x->size(3) <= std::numeric_limits<int32_t>::max(),
                "selfsup's max pool: map ", x->size(2), "x", x->size(3), " too large");
    RECORD_FUNCTION("selfsup::max_pool2d", c10::ArrayRef<const c10::IValue>{});
    *out = new at::Tensor(MaxPool::apply(*x, k, s, p));
  });
}

}  // extern "C"
