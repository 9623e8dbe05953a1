// Max pooling of float and bfloat16 CPU maps, NCHW or channels-last (NHWC), forward and
// backward: `k × k` windows, stride `s`, padding `p` that no value comes from (windows clipped
// to the map), no dilation, floor mode: the pools of the Network-In-Network (Lin et al. 2014,
// RotNet's trunk), AlexNet (Krizhevsky et al. 2012) and ResNet's stem (He et al. 2016).
// libtorch's NCHW kernel, one window at a time, took 7.9 ms for `(256, 8, 32, 32)` float,
// 3×3/2, on 2 cores of an AMX Xeon, against 1.4 ms channels-last; its channels-last kernel
// vectorizes over whole vectors of channels only (32 in bfloat16 on AVX-512), so a map of 8 or
// 16 channels in bfloat16 ran one value at a time (2.1 ms for the same map, the RotNet cpu
// profile's bf16 step spending 7% of its time there), and both backward passes scatter one
// value at a time into a gradient zeroed before.
//
// Forward: each input row's maxima over every window's columns first, then those row maxima
// down the windows' rows, with branch-free selects, so that the loops vectorize: over the
// windows of a row (NCHW; where the width is `Wo · s`, all rows of a map as one loop,
// `pool_map`) or over the channels (NHWC, 8 at a time as GCC's vector types, `pool_image`). A
// map (NCHW) or an image (NHWC) is one piece of work.
//
// Values and indices are libtorch's bit for bit: the first maximum in row-major order, or the
// last NaN where the window holds one (libtorch's `val > max || isnan(val)` update); a window
// of `-inf` alone points at its first position. The indices stay inside the autograd node:
// NCHW each maximum's flat position in its map (as `max_pool2d_with_indices` writes it, here
// as `int32`), NHWC its tap in its window (`jh · k + jw`, one byte, an eighth of libtorch's
// `int64`).
//
// Backward: NCHW as libtorch, each map's gradient zeroed and the output gradients added at
// their indices in row-major order, but while the map is in cache; NHWC row by row of the
// input, the sums of the row in cache: for each window covering the row, in row-major order,
// tap by tap its gradient added (over 8 channels at a time) where its maximum is that tap, a
// zero elsewhere. The sums are libtorch's bit for bit: the same additions in the same order,
// in bfloat16 each rounded to nearest even as `c10::BFloat16`'s `+=` rounds it (adding the zero
// of a window that did not pick the tap leaves a sum unchanged: a sum starting at +0 is never
// -0).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "elementwise.h"
#include "lanes.h"
#include "selfsup/guard.h"

namespace {

using namespace selfsup::vec8;
using selfsup::load;
using selfsup::store;

struct Pool {
  int64_t H, W, k, s, p, Ho, Wo;
};

// Where `v` replaces the running maximum `m`: greater, or NaN (libtorch's rule).
SELFSUP_INLINE bool takes(float v, float m) { return (v > m) | (v != v); }

// ---- NCHW ----

// The maxima over the windows' columns of input rows, for windows `[ow0, ow1)` all inside
// their row: `rm[ow]` and its position in the map, `rc[ow]`, where window `ow` starts at
// `base + ow · S - p`. One row (`base` its start), or, where the map's width is `Wo · S`, all
// rows as one (`base` 0, `ow` running over `H · Wo`). Tap by tap over all the windows, so that
// the loop over `ow` (stride `S` through the values) is branch-free and vectorizes.
template <int S, typename T>
SELFSUP_INLINE void rows_inside(const T* __restrict__ x, int64_t base, float* __restrict__ rm,
                                int32_t* __restrict__ rc, int64_t ow0, int64_t ow1, int64_t k,
                                int64_t p) {
  const T* first = x + base - p;
  for (int64_t ow = ow0; ow < ow1; ++ow) {
    rm[ow] = load(first + ow * S);
    rc[ow] = int32_t(base - p + ow * S);
  }
  for (int64_t j = 1; j < k; ++j) {
    const T* tap = first + j;
    for (int64_t ow = ow0; ow < ow1; ++ow) {
      const float v = load(tap + ow * S);
      const bool t = takes(v, rm[ow]);
      rm[ow] = t ? v : rm[ow];
      rc[ow] = t ? int32_t(base - p + j + ow * S) : rc[ow];
    }
  }
}

// The same for window `ow` of row `ih`, reaching past the row's ends (clipped to it).
template <typename T>
SELFSUP_INLINE void row_edge(const T* __restrict__ x, int64_t ih, int64_t ow,
                             float* __restrict__ rows, int32_t* __restrict__ cols,
                             const Pool& g) {
  const int64_t start = ow * g.s - g.p;
  const int64_t iw0 = std::max<int64_t>(start, 0), iw1 = std::min(start + g.k, g.W);
  const T* row = x + ih * g.W;
  float m = load(row + iw0);
  int64_t a = iw0;
  for (int64_t iw = iw0 + 1; iw < iw1; ++iw) {
    const float v = load(row + iw);
    const bool t = takes(v, m);
    m = t ? v : m;
    a = t ? iw : a;
  }
  rows[ih * g.Wo + ow] = m;
  cols[ih * g.Wo + ow] = int32_t(ih * g.W + a);
}

// Scratch of one piece of work: each input row's maxima over every window's columns and where
// they are (`H · Wo · C` each), an output row's maxima and the rows they came from (`Wo · C`).
struct Scratch {
  std::vector<float> rows, out;
  std::vector<int32_t> cols, best;
  Scratch(const Pool& g, int64_t C)
      : rows(g.H * g.Wo * C), out(g.Wo * C), cols(g.H * g.Wo * C), best(g.Wo * C) {}
};

// Down each window's rows (clipped to the map), `n` values a row: the row maxima `rows` to `y`
// and, where `idx` is not null, where the maxima kept are. `I = int32_t` (NCHW): `cols` holds
// the row maxima's flat positions in the map, and so does `idx`. `I = uint8_t` (NHWC): `cols`
// holds their columns in their windows, `jw`, and `idx` each maximum's tap in its window,
// `jh · k + jw`.
template <typename T, typename I>
SELFSUP_INLINE void down_windows(T* __restrict__ y, I* __restrict__ idx, const Pool& g,
                                 int64_t n, Scratch& w) {
  const float* __restrict__ rows = w.rows.data();
  const int32_t* __restrict__ cols = w.cols.data();
  float* __restrict__ out = w.out.data();
  int32_t* __restrict__ best = w.best.data();
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const int64_t start = oh * g.s - g.p;
    const int64_t ih0 = std::max<int64_t>(start, 0), ih1 = std::min(start + g.k, g.H);
    std::copy(rows + ih0 * n, rows + (ih0 + 1) * n, out);
    if (idx) {
      for (int64_t j = 0; j < n; ++j) best[j] = int32_t(ih0);
    }
    for (int64_t ih = ih0 + 1; ih < ih1; ++ih) {
      const float* r = rows + ih * n;
      if (idx) {
        for (int64_t j = 0; j < n; ++j) {
          const bool t = takes(r[j], out[j]);
          out[j] = t ? r[j] : out[j];
          best[j] = t ? int32_t(ih) : best[j];
        }
      } else {
        for (int64_t j = 0; j < n; ++j) out[j] = takes(r[j], out[j]) ? r[j] : out[j];
      }
    }
    // A maximum is one of the input's values: stored back exactly.
    T* yo = y + oh * n;
    for (int64_t j = 0; j < n; ++j) store(yo + j, out[j]);
    if (idx) {
      I* at = idx + oh * n;
      for (int64_t j = 0; j < n; ++j) {
        const int32_t c = cols[int64_t(best[j]) * n + j];
        if constexpr (std::is_same<I, int32_t>::value) {
          at[j] = c;
        } else {
          at[j] = uint8_t((best[j] - int32_t(start)) * int32_t(g.k) + c);
        }
      }
    }
  }
}

// One map: `x` (H, W) to `y` (Ho, Wo) and, where `idx` is not null, its indices.
template <typename T>
SELFSUP_INLINE void pool_map(const T* __restrict__ x, T* __restrict__ y,
                             int32_t* __restrict__ idx, const Pool& g, Scratch& w) {
  float* rows = w.rows.data();
  int32_t* cols = w.cols.data();
  // The windows wholly inside a row: `ow` in `[inner0, inner1)`.
  const int64_t inner0 = std::min(g.Wo, (g.p + g.s - 1) / g.s);
  const int64_t inner1 =
      std::max(inner0, std::min(g.Wo, g.W - g.k + g.p >= 0 ? (g.W - g.k + g.p) / g.s + 1 : 0));
  const bool vector = g.s == 1 || g.s == 2;
  if (vector && g.W == g.Wo * g.s) {
    // All rows as one: every window from the first that starts in the map to the last that
    // ends in it, then the windows at the rows' ends again, clipped.
    // The first starts at `t0 · s - p ≥ 0`: not `inner0`, which stops at `Wo` and, in a map
    // narrower than the padding, would start before the map (found by `cargo xtask sanitize`).
    const int64_t n = g.H * g.Wo;
    const int64_t t0 = (g.p + g.s - 1) / g.s;
    const int64_t last = g.H * g.W - g.k + g.p;
    const int64_t t1 = last >= 0 ? std::min(n, last / g.s + 1) : 0;
    if (g.s == 2) {
      rows_inside<2>(x, 0, rows, cols, t0, t1, g.k, g.p);
    } else {
      rows_inside<1>(x, 0, rows, cols, t0, t1, g.k, g.p);
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
  down_windows(y, idx, g, g.Wo, w);
}

// One map's gradient: `dx` (H, W) zeroed, then each output's gradient added at its index, in
// row-major order (libtorch's order).
template <typename T>
SELFSUP_INLINE void unpool_map(const T* __restrict__ dy, const int32_t* __restrict__ idx,
                               T* __restrict__ dx, const Pool& g) {
  std::fill(dx, dx + g.H * g.W, T(0));
  for (int64_t o = 0; o < g.Ho * g.Wo; ++o) {
    T* at = dx + idx[o];
    if constexpr (std::is_same<T, float>::value) {
      *at += dy[o];
    } else {
      store(at, load(at) + load(dy + o));
    }
  }
}

// ---- NHWC ----

SELFSUP_INLINE i8 takes8(f8 v, f8 m) { return (v > m) | (v != v); }

// Row `ih` of an image `x` (H, W, C): the maxima over each window's columns of channels
// `[c0, c0 + 8)`, into `rows` (H, Wo, C), with their columns in their windows, `jw`, in
// `cols`.
template <typename T>
SELFSUP_INLINE void row_windows8(const T* __restrict__ x, int64_t ih, int64_t C, int64_t c0,
                                 const Pool& g, float* __restrict__ rows,
                                 int32_t* __restrict__ cols) {
  const T* row = x + ih * g.W * C + c0;
  for (int64_t ow = 0; ow < g.Wo; ++ow) {
    const int64_t start = ow * g.s - g.p;
    const int64_t iw0 = std::max<int64_t>(start, 0), iw1 = std::min(start + g.k, g.W);
    f8 m = load8(row + iw0 * C);
    i8 a = i8{} + int32_t(iw0 - start);
    for (int64_t iw = iw0 + 1; iw < iw1; ++iw) {
      const f8 v = load8(row + iw * C);
      const i8 t = takes8(v, m);
      m = t ? v : m;
      a = t ? i8{} + int32_t(iw - start) : a;
    }
    const int64_t at = (ih * g.Wo + ow) * C + c0;
    store8(rows + at, m);
    store8(cols + at, a);
  }
}

// The same for the one channel `c0`.
template <typename T>
SELFSUP_INLINE void row_windows1(const T* __restrict__ x, int64_t ih, int64_t C, int64_t c0,
                                 const Pool& g, float* __restrict__ rows,
                                 int32_t* __restrict__ cols) {
  const T* row = x + ih * g.W * C + c0;
  for (int64_t ow = 0; ow < g.Wo; ++ow) {
    const int64_t start = ow * g.s - g.p;
    const int64_t iw0 = std::max<int64_t>(start, 0), iw1 = std::min(start + g.k, g.W);
    float m = load(row + iw0 * C);
    int64_t a = iw0;
    for (int64_t iw = iw0 + 1; iw < iw1; ++iw) {
      const float v = load(row + iw * C);
      const bool t = takes(v, m);
      m = t ? v : m;
      a = t ? iw : a;
    }
    const int64_t at = (ih * g.Wo + ow) * C + c0;
    rows[at] = m;
    cols[at] = int32_t(a - start);
  }
}

// One image: `x` (H, W, C) to `y` (Ho, Wo, C) and, where `idx` is not null, each maximum's tap
// in its window.
template <typename T>
SELFSUP_INLINE void pool_image(const T* __restrict__ x, T* __restrict__ y,
                               uint8_t* __restrict__ idx, const Pool& g, int64_t C,
                               Scratch& w) {
  for (int64_t ih = 0; ih < g.H; ++ih) {
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) row_windows8(x, ih, C, c, g, w.rows.data(), w.cols.data());
    for (; c < C; ++c) row_windows1(x, ih, C, c, g, w.rows.data(), w.cols.data());
  }
  down_windows(y, idx, g, g.Wo * C, w);
}

// Channels `[c0, c0 + 8)`: `acc` (a row's sums) at each window's tap `code` of one row of
// windows `ow ∈ [ow0, ow1]`, plus the window's gradient where its maximum is that tap, each
// sum rounded as a `T`; the tap's column is `ow · s + shift`.
template <typename T>
SELFSUP_INLINE void add_tap8(const T* __restrict__ dy, const uint8_t* __restrict__ idx,
                             float* __restrict__ acc, int64_t C, int64_t c0, int32_t code,
                             int64_t ow0, int64_t ow1, int64_t s, int64_t shift) {
  const i8 tap = i8{} + code;
  for (int64_t ow = ow0; ow <= ow1; ++ow) {
    const int64_t o = ow * C + c0;
    uint8_t b[8];
    std::memcpy(b, idx + o, sizeof b);
    i8 is;
    for (int l = 0; l < 8; ++l) is[l] = b[l];
    float* at = acc + (ow * s + shift) * C + c0;
    const f8 v = is == tap ? load8(dy + o) : f8{};
    store8(at, rounded8<T>(load8(at) + v));
  }
}

// The same for the one channel `c0`.
template <typename T>
SELFSUP_INLINE void add_tap1(const T* __restrict__ dy, const uint8_t* __restrict__ idx,
                             float* __restrict__ acc, int64_t C, int64_t c0, int32_t code,
                             int64_t ow0, int64_t ow1, int64_t s, int64_t shift) {
  for (int64_t ow = ow0; ow <= ow1; ++ow) {
    const int64_t o = ow * C + c0;
    float* at = acc + (ow * s + shift) * C + c0;
    *at = rounded<T>(*at + (idx[o] == code ? load(dy + o) : 0.0f));
  }
}

// One image's gradient: `dx` (H, W, C) from `dy` (Ho, Wo, C) and each maximum's tap, `idx`.
// Row by row of `dx`, its sums in `acc` (`W · C`): the windows covering the row in row-major
// order (output rows ascending; in each, taps from the last column to the first, so that a
// column covered by two windows takes the left one's gradient first), libtorch's order.
template <typename T>
SELFSUP_INLINE void unpool_image(const T* __restrict__ dy, const uint8_t* __restrict__ idx,
                                 T* __restrict__ dx, const Pool& g, int64_t C,
                                 float* __restrict__ acc) {
  const int64_t row = g.W * C, orow = g.Wo * C;
  for (int64_t ih = 0; ih < g.H; ++ih) {
    std::fill(acc, acc + row, 0.0f);
    int64_t oh0, oh1;
    covering(ih, g.k, g.s, g.p, g.Ho, &oh0, &oh1);
    for (int64_t oh = oh0; oh <= oh1; ++oh) {
      const int64_t jh = ih - (oh * g.s - g.p);
      for (int64_t jw = g.k - 1; jw >= 0; --jw) {
        const int64_t shift = jw - g.p;
        int64_t ow0, ow1;
        tap_windows(jw, g.W, g.s, g.p, g.Wo, &ow0, &ow1);
        const int32_t code = int32_t(jh * g.k + jw);
        const T* d = dy + oh * orow;
        const uint8_t* i = idx + oh * orow;
        int64_t c = 0;
        for (; c + 8 <= C; c += 8) add_tap8(d, i, acc, C, c, code, ow0, ow1, g.s, shift);
        for (; c < C; ++c) add_tap1(d, i, acc, C, c, code, ow0, ow1, g.s, shift);
      }
    }
    T* out = dx + ih * row;
    int64_t j = 0;
    for (; j + 8 <= row; j += 8) store8(out + j, load8(acc + j));
    for (; j < row; ++j) store(out + j, acc[j]);
  }
}

// The loops for each element type, each compiled for AVX-512, AVX2 and baseline x86-64.
#define SELFSUP_POOL_LOOPS(T)                                                                 \
  SELFSUP_CLONES void pool_maps(const T* x, T* y, int32_t* idx, const Pool& g, int64_t q0,    \
                                int64_t q1, Scratch& w) {                                     \
    for (int64_t q = q0; q < q1; ++q) {                                                       \
      pool_map(x + q * g.H * g.W, y + q * g.Ho * g.Wo, idx ? idx + q * g.Ho * g.Wo : nullptr, \
               g, w);                                                                         \
    }                                                                                         \
  }                                                                                           \
  SELFSUP_CLONES void pool_images(const T* x, T* y, uint8_t* idx, const Pool& g, int64_t C,   \
                                  int64_t n0, int64_t n1, Scratch& w) {                       \
    const int64_t in = g.H * g.W * C, out = g.Ho * g.Wo * C;                                  \
    for (int64_t n = n0; n < n1; ++n) {                                                       \
      pool_image(x + n * in, y + n * out, idx ? idx + n * out : nullptr, g, C, w);            \
    }                                                                                         \
  }                                                                                           \
  SELFSUP_CLONES void unpool_maps(const T* dy, const int32_t* idx, T* dx, const Pool& g,      \
                                  int64_t q0, int64_t q1) {                                   \
    for (int64_t q = q0; q < q1; ++q) {                                                       \
      unpool_map(dy + q * g.Ho * g.Wo, idx + q * g.Ho * g.Wo, dx + q * g.H * g.W, g);         \
    }                                                                                         \
  }                                                                                           \
  SELFSUP_CLONES void unpool_images(const T* dy, const uint8_t* idx, T* dx, const Pool& g,    \
                                    int64_t C, int64_t n0, int64_t n1, float* acc) {          \
    const int64_t in = g.H * g.W * C, out = g.Ho * g.Wo * C;                                  \
    for (int64_t n = n0; n < n1; ++n) {                                                       \
      unpool_image(dy + n * out, idx + n * out, dx + n * in, g, C, acc);                      \
    }                                                                                         \
  }
SELFSUP_POOL_LOOPS(float)
SELFSUP_POOL_LOOPS(uint16_t)
#undef SELFSUP_POOL_LOOPS

// Which layout a 4-d tensor's values lie in: NCHW, NHWC, or neither (`None`: left to libtorch).
enum class Layout { Nchw, Nhwc, None };
Layout layout_of(const at::Tensor& t) {
  // As libtorch's pool chooses the output's layout: a map whose strides fit both orders (one
  // pixel, or one channel) is channels-last where its strides look it.
  if (t.suggest_memory_format() == at::MemoryFormat::ChannelsLast) {
    return t.is_contiguous(at::MemoryFormat::ChannelsLast) ? Layout::Nhwc : Layout::None;
  }
  return t.is_contiguous() ? Layout::Nchw : Layout::None;
}

at::MemoryFormat format_of(Layout l) {
  return l == Layout::Nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// `x` (N, C, H, W) in `l`: the pooled maps (same layout) and, when `indices`, where each maximum
// is: its flat position in its map (NCHW, `int32`), or its tap in its window (NHWC, `uint8`).
template <typename T>
std::pair<at::Tensor, at::Tensor> pool(const at::Tensor& x, const Pool& g, Layout l,
                                       bool indices) {
  const int64_t N = x.size(0), C = x.size(1);
  const auto format = format_of(l);
  at::Tensor y = at::empty({N, C, g.Ho, g.Wo}, x.options().memory_format(format));
  const auto index = l == Layout::Nchw ? at::kInt : at::kByte;
  at::Tensor idx = indices ? at::empty(y.sizes(), x.options().dtype(index).memory_format(format))
                           : at::Tensor();
  const T* xp = selfsup::elements<T>(x);
  T* yp = selfsup::elements<T>(y);
  if (l == Layout::Nchw) {
    int32_t* ip = indices ? idx.data_ptr<int32_t>() : nullptr;
    at::parallel_for(0, N * C, 1, [&](int64_t q0, int64_t q1) {
      Scratch w(g, 1);
      pool_maps(xp, yp, ip, g, q0, q1, w);
    });
  } else {
    uint8_t* ip = indices ? idx.data_ptr<uint8_t>() : nullptr;
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      Scratch w(g, C);
      pool_images(xp, yp, ip, g, C, n0, n1, w);
    });
  }
  return {y, idx};
}

// The gradient of `x` (N, C, H, W) from that of the pooled maps, `dy`, and `pool`'s indices,
// all in `l`.
template <typename T>
at::Tensor unpool(const at::Tensor& dy, const at::Tensor& idx, const Pool& g, Layout l) {
  const int64_t N = dy.size(0), C = dy.size(1);
  at::Tensor dx = at::empty({N, C, g.H, g.W}, dy.options().memory_format(format_of(l)));
  const T* gp = selfsup::elements<T>(dy);
  T* dp = selfsup::elements<T>(dx);
  if (l == Layout::Nchw) {
    const int32_t* ip = idx.const_data_ptr<int32_t>();
    at::parallel_for(0, N * C, 1,
                     [&](int64_t q0, int64_t q1) { unpool_maps(gp, ip, dp, g, q0, q1); });
  } else {
    const uint8_t* ip = idx.const_data_ptr<uint8_t>();
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      std::vector<float> acc(g.W * C);
      unpool_images(gp, ip, dp, g, C, n0, n1, acc.data());
    });
  }
  return dx;
}

bool is_float(const at::Tensor& t) { return t.scalar_type() == at::kFloat; }

struct MaxPool : public torch::autograd::Function<MaxPool> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t k, int64_t s, int64_t p) {
    const int64_t H = x.size(2), W = x.size(3);
    const Pool g{H, W, k, s, p, (H + 2 * p - k) / s + 1, (W + 2 * p - k) / s + 1};
    const Layout l = layout_of(x);
    const bool grad = x.requires_grad();
    auto [y, idx] = is_float(x) ? pool<float>(x, g, l, grad) : pool<uint16_t>(x, g, l, grad);
    if (grad) {
      ctx->save_for_backward({idx});
      ctx->saved_data["g"] = std::vector<int64_t>{H, W, k, s, p, g.Ho, g.Wo};
      ctx->saved_data["nhwc"] = l == Layout::Nhwc;
      ctx->saved_data["float"] = is_float(x);
    }
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), "selfsup's max pool has no double backward");
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const at::Tensor idx = ctx->get_saved_variables()[0];
    const auto v = ctx->saved_data["g"].toIntVector();
    const Pool g{v[0], v[1], v[2], v[3], v[4], v[5], v[6]};
    const Layout l = ctx->saved_data["nhwc"].toBool() ? Layout::Nhwc : Layout::Nchw;
    const bool f = ctx->saved_data["float"].toBool();
    const at::Tensor dy =
        grads[0].to(f ? at::kFloat : at::kBFloat16).contiguous(format_of(l));
    at::Tensor dx = f ? unpool<float>(dy, idx, g, l) : unpool<uint16_t>(dy, idx, g, l);
    return {dx, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// `*out` = a new handle to `max_pool2d(*x, k, stride s, padding p)` (see the file header),
// differentiable in `x`; `*out` left null where `x` is not a float or bfloat16 CPU tensor of 4
// dimensions in NCHW or NHWC order, or the window is wider than 16 (the caller then takes
// libtorch's). Returns 0, or -1 with
// the message in `err`.
int selfsup_max_pool2d(const at::Tensor* x, int64_t k, int64_t s, int64_t p, at::Tensor** out,
                       char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    const bool kind = x->scalar_type() == at::kFloat || x->scalar_type() == at::kBFloat16;
    if (!x->device().is_cpu() || x->dim() != 4 || !kind || layout_of(*x) == Layout::None) return;
    if (k > 16) return;  // A window's taps as one byte (channels-last): libtorch's beyond.
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
