// Batch norm followed by ReLU in training mode, fused into one autograd function, for dense 4-d
// CPU tensors (NCHW or channels-last) of float or bfloat16 (weight, bias and running statistics
// in float): `y = max(0, (x - mean) / sqrt(var + eps) * weight + bias)` with the batch's biased
// variance, the running statistics updated as `nn.BatchNorm2d` does (momentum, unbiased
// variance). The same arithmetic as ATen's `batch_norm` then `relu`, in fewer passes over memory:
// libtorch runs them as separate kernels (statistics, normalisation, ReLU, ReLU's backward, the
// norm's two backward passes), each reading and writing the whole activation; here the forward
// reads `x` twice and writes `y` once, the backward reads `dy`, `x` and `y` twice and writes
// `dx` once, and no ReLU input is materialised beside `y`.
//
// The work is cut into pieces that do not depend on the thread count (blocks of `kRows` pixels
// of a channels-last tensor, or the `H·W` plane of one image and channel of an NCHW tensor);
// each piece's per-channel sums are computed by one thread and the pieces are added in order,
// so the result is the same whatever the thread count. The loops are compiled for AVX-512, AVX2
// and baseline x86-64, picked at load time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "selfsup/guard.h"

namespace {

// Rows of one block: blocks, not threads, fix the order of every sum.
constexpr int64_t kRows = 256;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SELFSUP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SELFSUP_CLONES
#endif
#define SELFSUP_INLINE __attribute__((always_inline)) inline

SELFSUP_INLINE float load(const float* p) { return *p; }
SELFSUP_INLINE float load(const uint16_t* p) {
  uint32_t u = uint32_t(*p) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
SELFSUP_INLINE void store(float* p, float v) { *p = v; }
// Round to nearest even, as c10::BFloat16; NaN stays a (quiet) NaN.
SELFSUP_INLINE void store(uint16_t* p, float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  *p = uint16_t(nan ? 0x7fc0u : rounded);
}

// ReLU's backward: `dy` where the output `y` is positive, else 0 (NaN passes, as ATen's).
template <typename T>
SELFSUP_INLINE float relu_grad(const T* dy, const T* y) {
  const float d = load(dy);
  return load(y) <= 0.f ? 0.f : d;
}

// Per-channel sums of `x - shift` and of its square over `rows` rows.
template <typename T>
SELFSUP_INLINE void stats(const T* __restrict__ x, int64_t rows, int64_t C,
                          const float* __restrict__ shift, float* __restrict__ s,
                          float* __restrict__ q) {
  for (int64_t c = 0; c < C; ++c) s[c] = q[c] = 0.f;
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict__ row = x + r * C;
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c) {
      float d = load(row + c) - shift[c];
      s[c] += d;
      q[c] += d * d;
    }
  }
}

// `y = max(0, x · a + b)` per channel (NaN passes, as ReLU's).
template <typename T>
SELFSUP_INLINE void forward(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t C,
                            const float* __restrict__ a, const float* __restrict__ b) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict__ xr = x + r * C;
    T* __restrict__ yr = y + r * C;
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c) {
      float v = load(xr + c) * a[c] + b[c];
      store(yr + c, v < 0.f ? 0.f : v);
    }
  }
}

// Per-channel sums of `g` and of `g · (x - mean)`, with `g = dy` where `y > 0`, else 0.
template <typename T>
SELFSUP_INLINE void grad_sums(const T* __restrict__ dy, const T* __restrict__ x,
                              const T* __restrict__ y, int64_t rows, int64_t C,
                              const float* __restrict__ mean, float* __restrict__ sg,
                              float* __restrict__ sgx) {
  for (int64_t c = 0; c < C; ++c) sg[c] = sgx[c] = 0.f;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * C;
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c) {
      const float g = relu_grad(dy + o + c, y + o + c);
      sg[c] += g;
      sgx[c] += g * (load(x + o + c) - mean[c]);
    }
  }
}

// `dx = g · A + x · B + D` per channel, `g` as in `grad_sums`.
template <typename T>
SELFSUP_INLINE void grad_input(const T* __restrict__ dy, const T* __restrict__ x,
                               const T* __restrict__ y, T* __restrict__ dx, int64_t rows,
                               int64_t C, const float* __restrict__ A,
                               const float* __restrict__ B, const float* __restrict__ D) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * C;
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c) {
      const float g = relu_grad(dy + o + c, y + o + c);
      store(dx + o + c, g * A[c] + load(x + o + c) * B[c] + D[c]);
    }
  }
}

// Sums of `x - shift` and of its square over the `n` contiguous values of one plane, in vector
// lanes added at the end (an order fixed by the instruction set, not by the threads).
template <typename T>
SELFSUP_INLINE void plane_stats(const T* __restrict__ x, int64_t n, float shift, float* s,
                                float* q) {
  float ts = 0.f, tq = 0.f;
#pragma omp simd reduction(+ : ts, tq)
  for (int64_t i = 0; i < n; ++i) {
    const float d = load(x + i) - shift;
    ts += d;
    tq += d * d;
  }
  *s = ts;
  *q = tq;
}

// `y = max(0, x · a + b)` over one plane.
template <typename T>
SELFSUP_INLINE void plane_forward(const T* __restrict__ x, T* __restrict__ y, int64_t n, float a,
                                  float b) {
  for (int64_t i = 0; i < n; ++i) {
    float v = load(x + i) * a + b;
    store(y + i, v < 0.f ? 0.f : v);
  }
}

// Sums of `g` and of `g · (x - mean)` over one plane, `g` as in `grad_sums`, in vector lanes.
template <typename T>
SELFSUP_INLINE void plane_grad_sums(const T* __restrict__ dy, const T* __restrict__ x,
                                    const T* __restrict__ y, int64_t n, float mean, float* sg,
                                    float* sgx) {
  float tg = 0.f, tgx = 0.f;
#pragma omp simd reduction(+ : tg, tgx)
  for (int64_t i = 0; i < n; ++i) {
    const float g = relu_grad(dy + i, y + i);
    tg += g;
    tgx += g * (load(x + i) - mean);
  }
  *sg = tg;
  *sgx = tgx;
}

// `dx = g · A + x · B + D` over one plane.
template <typename T>
SELFSUP_INLINE void plane_grad_input(const T* __restrict__ dy, const T* __restrict__ x,
                                     const T* __restrict__ y, T* __restrict__ dx, int64_t n,
                                     float A, float B, float D) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = relu_grad(dy + i, y + i);
    store(dx + i, g * A + load(x + i) * B + D);
  }
}

// The loops above for each element type (bfloat16 as its bits), each compiled once per
// instruction set.
#define SELFSUP_LOOPS(T)                                                                        \
  SELFSUP_CLONES void stats_of(const T* x, int64_t rows, int64_t C, const float* shift,         \
                               float* s, float* q) {                                            \
    stats(x, rows, C, shift, s, q);                                                             \
  }                                                                                             \
  SELFSUP_CLONES void forward_of(const T* x, T* y, int64_t rows, int64_t C, const float* a,     \
                                 const float* b) {                                              \
    forward(x, y, rows, C, a, b);                                                               \
  }                                                                                             \
  SELFSUP_CLONES void grad_sums_of(const T* dy, const T* x, const T* y, int64_t rows,           \
                                   int64_t C, const float* mean, float* sg, float* sgx) {       \
    grad_sums(dy, x, y, rows, C, mean, sg, sgx);                                                \
  }                                                                                             \
  SELFSUP_CLONES void grad_input_of(const T* dy, const T* x, const T* y, T* dx, int64_t rows,   \
                                    int64_t C, const float* A, const float* B,                  \
                                    const float* D) {                                           \
    grad_input(dy, x, y, dx, rows, C, A, B, D);                                                 \
  }                                                                                             \
  SELFSUP_CLONES void plane_stats_of(const T* x, int64_t n, float shift, float* s, float* q) {  \
    plane_stats(x, n, shift, s, q);                                                             \
  }                                                                                             \
  SELFSUP_CLONES void plane_forward_of(const T* x, T* y, int64_t n, float a, float b) {         \
    plane_forward(x, y, n, a, b);                                                               \
  }                                                                                             \
  SELFSUP_CLONES void plane_grad_sums_of(const T* dy, const T* x, const T* y, int64_t n,        \
                                         float mean, float* sg, float* sgx) {                   \
    plane_grad_sums(dy, x, y, n, mean, sg, sgx);                                                \
  }                                                                                             \
  SELFSUP_CLONES void plane_grad_input_of(const T* dy, const T* x, const T* y, T* dx,           \
                                          int64_t n, float A, float B, float D) {               \
    plane_grad_input(dy, x, y, dx, n, A, B, D);                                                 \
  }

SELFSUP_LOOPS(float)
SELFSUP_LOOPS(uint16_t)
#undef SELFSUP_LOOPS

// The element pointer of `t` as the loops take it.
template <typename T>
T* elements(const at::Tensor& t);
template <>
float* elements<float>(const at::Tensor& t) {
  return t.data_ptr<float>();
}
template <>
uint16_t* elements<uint16_t>(const at::Tensor& t) {
  return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>());
}

// How a `(N, C, H, W)` activation lies in memory: channels-last (`M = N·H·W` rows of `C`
// channels, cut into blocks of `kRows` rows) or NCHW (`N·C` planes of `H·W` values). Either way
// the work is cut into `units` pieces whose per-channel partial sums fill a `units × C` table
// (a block's row of the table, or a plane's one cell), added in order by `total`.
struct Layout {
  explicit Layout(const at::Tensor& x)
      : channels_last(x.is_contiguous(at::MemoryFormat::ChannelsLast)),
        N(x.size(0)),
        C(x.size(1)),
        HW(x.size(2) * x.size(3)),
        M(N * HW),
        units(channels_last ? (M + kRows - 1) / kRows : N) {}

  at::MemoryFormat format() const {
    return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  }

  bool channels_last;
  int64_t N, C, HW, M, units;
};

// Runs `block(k, first_row, rows)` for every block of rows (channels-last) or `plane(p)` for
// every plane `p = n·C + c` (NCHW), in parallel over them.
template <typename B, typename P>
void for_units(const Layout& L, B block, P plane) {
  if (L.channels_last) {
    at::parallel_for(0, L.units, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) block(k, k * kRows, std::min(kRows, L.M - k * kRows));
    });
  } else {
    at::parallel_for(0, L.N * L.C, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) plane(p);
    });
  }
}

// Adds the `K` units' per-channel partial sums `parts` (`K × C`) in unit order, in double.
std::vector<double> total(const std::vector<float>& parts, int64_t K, int64_t C) {
  std::vector<double> t(C, 0.0);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c) t[c] += parts[k * C + c];
  return t;
}

template <typename T>
at::Tensor forward_typed(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         const at::Tensor& running_mean, const at::Tensor& running_var,
                         double momentum, double eps, at::Tensor& mean_out,
                         at::Tensor& invstd_out) {
  const Layout L(x);
  const int64_t C = L.C, M = L.M, HW = L.HW;
  const T* xp = elements<T>(x);
  // Sums shifted by the first pixel's values, for a variance without cancellation.
  std::vector<float> shift(C), ps(L.units * C), pq(L.units * C);
  for (int64_t c = 0; c < C; ++c) shift[c] = load(xp + (L.channels_last ? c : c * HW));
  for_units(
      L,
      [&](int64_t k, int64_t row, int64_t rows) {
        stats_of(xp + row * C, rows, C, shift.data(), &ps[k * C], &pq[k * C]);
      },
      [&](int64_t p) { plane_stats_of(xp + p * HW, HW, shift[p % C], &ps[p], &pq[p]); });
  const std::vector<double> S = total(ps, L.units, C), Q = total(pq, L.units, C);
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
  for_units(
      L,
      [&](int64_t, int64_t row, int64_t rows) {
        forward_of(xp + row * C, yp + row * C, rows, C, a.data(), shiftb.data());
      },
      [&](int64_t p) {
        plane_forward_of(xp + p * HW, yp + p * HW, HW, a[p % C], shiftb[p % C]);
      });
  // Through `variable_data()` (`.data` semantics), as ATen's kernel writes the buffers: graphs
  // that saved them are not invalidated.
  running_mean.variable_data().mul_(1.0 - momentum).add_(mean_out, momentum);
  running_var.variable_data().mul_(1.0 - momentum).add_(unbiased, momentum);
  return y;
}

template <typename T>
std::vector<at::Tensor> backward_typed(const at::Tensor& dy, const at::Tensor& x,
                                       const at::Tensor& y, const at::Tensor& weight,
                                       const at::Tensor& mean_t, const at::Tensor& invstd_t) {
  const Layout L(x);
  const int64_t C = L.C, M = L.M, HW = L.HW;
  const T* dyp = elements<T>(dy);
  const T* xp = elements<T>(x);
  const T* yp = elements<T>(y);
  const float* mean = mean_t.data_ptr<float>();
  const float* invstd = invstd_t.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  std::vector<float> psg(L.units * C), psgx(L.units * C);
  for_units(
      L,
      [&](int64_t k, int64_t row, int64_t rows) {
        const int64_t o = row * C;
        grad_sums_of(dyp + o, xp + o, yp + o, rows, C, mean, &psg[k * C], &psgx[k * C]);
      },
      [&](int64_t p) {
        const int64_t o = p * HW;
        plane_grad_sums_of(dyp + o, xp + o, yp + o, HW, mean[p % C], &psg[p], &psgx[p]);
      });
  const std::vector<double> SG = total(psg, L.units, C), SGX = total(psgx, L.units, C);
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
  for_units(
      L,
      [&](int64_t, int64_t row, int64_t rows) {
        const int64_t o = row * C;
        grad_input_of(dyp + o, xp + o, yp + o, dxp + o, rows, C, A.data(), B.data(), D.data());
      },
      [&](int64_t p) {
        const int64_t o = p * HW, c = p % C;
        plane_grad_input_of(dyp + o, xp + o, yp + o, dxp + o, HW, A[c], B[c], D[c]);
      });
  return {dx, dw, db};
}

struct BatchNormRelu : public torch::autograd::Function<BatchNormRelu> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& running_mean, const at::Tensor& running_var,
                            double momentum, double eps) {
    at::Tensor mean, invstd;
    at::Tensor y = x.scalar_type() == at::kFloat
                       ? forward_typed<float>(x, weight, bias, running_mean, running_var,
                                              momentum, eps, mean, invstd)
                       : forward_typed<uint16_t>(x, weight, bias, running_mean, running_var,
                                                 momentum, eps, mean, invstd);
    ctx->save_for_backward({x, y, weight, mean, invstd});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    // The backward is not itself recorded: a gradient of the gradient (`create_graph`) would
    // come out silently wrong, so it is refused (nothing in selfsup asks for one).
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "fused batch norm + ReLU has no double backward (create_graph)");
    auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &y = s[1], &weight = s[2], &mean = s[3], &invstd = s[4];
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
                                     at::Tensor(), at::Tensor(), at::Tensor()};
    at::Tensor dy = grads[0].to(x.scalar_type()).contiguous(Layout(x).format());
    auto g = x.scalar_type() == at::kFloat
                 ? backward_typed<float>(dy, x, y, weight, mean, invstd)
                 : backward_typed<uint16_t>(dy, x, y, weight, mean, invstd);
    return {g[0], g[1], g[2], at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

void check(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& rm,
           const at::Tensor& rv) {
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
}

}  // namespace

extern "C" {

// `*out` = a new handle to `relu(batch_norm(x))` in training mode (see the file header), with
// the running statistics `rm` and `rv` updated; differentiable in `x`, `w` and `b`. Returns 0,
// or -1 with libtorch's message in `err`.
int selfsup_batch_norm_relu(const at::Tensor* x, const at::Tensor* w, const at::Tensor* b,
                            const at::Tensor* rm, const at::Tensor* rv, double momentum,
                            double eps, at::Tensor** out, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    check(*x, *w, *b, *rm, *rv);
    *out = new at::Tensor(BatchNormRelu::apply(*x, *w, *b, *rm, *rv, momentum, eps));
  });
}

}  // extern "C"
