// ReLU then dropout in training (`F.dropout(F.relu(x), p)`, Srivastava et al. 2014: each value
// kept with probability `1 - p` and scaled by `1 / (1 - p)`, else 0), fused into one autograd
// function for contiguous CPU tensors of float or bfloat16. libtorch runs it as four kernels
// forward (ReLU, a Bernoulli mask, two multiplies) and three backward, and its CPU Bernoulli
// kernel draws the mask serially, value by value, from the global generator (about 8 ns a value:
// 4.5% of relative patch's cpu-profile step went to its two dropouts' masks). Here
// the forward reads `x` and writes `y` once, the backward reads `dy` and `y` and writes `dx`
// once, and no mask is kept: value `i` is kept when a hash of `i` and a 64-bit key is at or above
// `p` (24 bits), the key drawn once a call from libtorch's default CPU generator. A seeded run
// therefore draws the same masks, on any number of threads; the masks are not those of
// `torch.bernoulli` (a different stream).
//
// The hash: two rounds of Wellons' `lowbias32` (an invertible 32-bit mixer) over the index's
// low word, the key's two words and the index's high word.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <vector>

#include "elementwise.h"
#include "selfsup/guard.h"

namespace {

using selfsup::elements;
using selfsup::load;
using selfsup::store;

// Values per piece of work: pieces start at multiples of it, so none crosses a 2^32 boundary of
// the index (whose high word is then the piece's).
constexpr int64_t kPiece = 4096;

SELFSUP_INLINE uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// The mask's parameters: the key's words, the index's high word mixed in, and the threshold.
struct Mask {
  uint32_t k0, k1, threshold;
  float scale;
  // What the index's high word adds to the hash of the values of a piece starting at `first`
  // (value `i` of the tensor is kept when `mix(mix(low word ^ k0) ^ high(i)) >> 8` is at or
  // above `threshold`).
  uint32_t high(int64_t first) const { return k1 ^ (uint32_t(uint64_t(first) >> 32) * 0x9e3779b9u); }
};

// `out[i] = relu(x[i]) · (kept ? scale : 0)` (NaN passes, as ReLU's and the product's).
template <typename T>
SELFSUP_INLINE void forward(const T* __restrict__ x, float* __restrict__ out, int64_t n,
                            uint32_t lo, uint32_t hi, const Mask m) {
  const uint32_t k0 = m.k0, threshold = m.threshold;
  const float scale = m.scale;
  // A 32-bit index, as the hash takes it (n <= kPiece).
  const uint32_t count = uint32_t(n);
#pragma GCC ivdep
  for (uint32_t i = 0; i < count; ++i) {
    const float v = load(x + i);
    const float r = v < 0.f ? 0.f : v;
    const uint32_t h = mix(mix((lo + i) ^ k0) ^ hi);
    out[i] = r * ((h >> 8) >= threshold ? scale : 0.f);
  }
}

// `out[i] = dy[i] · (kept ? scale : 0)` where not `y <= 0` (ReLU's backward from its output),
// else 0.
template <typename T>
SELFSUP_INLINE void backward(const T* __restrict__ dy, const T* __restrict__ y,
                             float* __restrict__ out, int64_t n, uint32_t lo, uint32_t hi,
                             const Mask m) {
  const uint32_t k0 = m.k0, threshold = m.threshold;
  const float scale = m.scale;
  const uint32_t count = uint32_t(n);
#pragma GCC ivdep
  for (uint32_t i = 0; i < count; ++i) {
    const uint32_t h = mix(mix((lo + i) ^ k0) ^ hi);
    const float g = load(dy + i) * ((h >> 8) >= threshold ? scale : 0.f);
    out[i] = load(y + i) <= 0.f ? 0.f : g;
  }
}

#define SELFSUP_LOOPS(T)                                                                       \
  SELFSUP_CLONES void forward_of(const T* x, float* out, int64_t n, uint32_t lo, uint32_t hi,  \
                                 const Mask m) {                                               \
    forward(x, out, n, lo, hi, m);                                                             \
  }                                                                                            \
  SELFSUP_CLONES void backward_of(const T* dy, const T* y, float* out, int64_t n, uint32_t lo, \
                                  uint32_t hi, const Mask m) {                                 \
    backward(dy, y, out, n, lo, hi, m);                                                        \
  }
SELFSUP_LOOPS(float)
SELFSUP_LOOPS(uint16_t)
#undef SELFSUP_LOOPS

SELFSUP_CLONES void round_of(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) store(dst + i, src[i]);
}

// Writes a piece's floats: in place for float, rounded for bfloat16.
void write(const float*, float*, int64_t) {}
void write(const float* src, uint16_t* dst, int64_t n) {
#ifdef SELFSUP_NATIVE_BF16
  if (selfsup::native_bf16()) return selfsup::store_native(src, dst, n);
#endif
  round_of(src, dst, n);
}

// Runs `piece(first, n, buffer)` over the `total` values in pieces of `kPiece`, in parallel;
// `buffer` is `out + first` for float, else a piece of float scratch.
template <typename T, typename F>
void for_pieces(int64_t total, T* out, F piece) {
  const int64_t pieces = (total + kPiece - 1) / kPiece;
  at::parallel_for(0, pieces, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> scratch(std::is_same<T, float>::value ? 0 : kPiece);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t first = p * kPiece, n = std::min(kPiece, total - first);
      float* buffer = std::is_same<T, float>::value ? reinterpret_cast<float*>(out + first)
                                                    : scratch.data();
      piece(first, n, buffer);
      write(buffer, out + first, n);
    }
  });
}

Mask mask_of(uint64_t key, double p) {
  Mask m;
  m.k0 = uint32_t(key);
  m.k1 = uint32_t(key >> 32);
  m.threshold = uint32_t(std::llround(p * double(1u << 24)));
  m.scale = float(1.0 / (1.0 - p));
  return m;
}

template <typename T>
at::Tensor forward_typed(const at::Tensor& x, const Mask& m) {
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const T* xp = elements<T>(x);
  for_pieces(x.numel(), elements<T>(y), [&](int64_t first, int64_t n, float* out) {
    forward_of(xp + first, out, n, uint32_t(first), m.high(first), m);
  });
  return y;
}

template <typename T>
at::Tensor backward_typed(const at::Tensor& dy, const at::Tensor& y, const Mask& m) {
  at::Tensor dx = at::empty_like(y, at::MemoryFormat::Contiguous);
  const T* dyp = elements<T>(dy);
  const T* yp = elements<T>(y);
  for_pieces(y.numel(), elements<T>(dx), [&](int64_t first, int64_t n, float* out) {
    backward_of(dyp + first, yp + first, out, n, uint32_t(first), m.high(first), m);
  });
  return dx;
}

struct ReluDropout : public torch::autograd::Function<ReluDropout> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            double p, int64_t key) {
    const Mask m = mask_of(key, p);
    at::Tensor y = x.scalar_type() == at::kFloat ? forward_typed<float>(x, m)
                                                 : forward_typed<uint16_t>(x, m);
    ctx->save_for_backward({y});
    ctx->saved_data["key"] = int64_t(key);
    ctx->saved_data["p"] = p;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    // Not itself recorded: a gradient of the gradient (`create_graph`) is refused, as the
    // fused batch norm's.
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "fused ReLU + dropout has no double backward (create_graph)");
    const at::Tensor y = ctx->get_saved_variables()[0];
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const Mask m = mask_of(uint64_t(ctx->saved_data["key"].toInt()),
                           ctx->saved_data["p"].toDouble());
    at::Tensor dy = grads[0].to(y.scalar_type()).contiguous();
    at::Tensor dx = y.scalar_type() == at::kFloat ? backward_typed<float>(dy, y, m)
                                                  : backward_typed<uint16_t>(dy, y, m);
    return {dx, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// `*out` = a new handle to `dropout(relu(x), p)` in training mode (see the file header),
// differentiable in `x`, with the mask of `key`, or of a key drawn from libtorch's default CPU
// generator when `draw` is not 0. Returns 0, or -1 with libtorch's message in `err`.
int selfsup_relu_dropout(const at::Tensor* x, double p, int draw, uint64_t key,
                         at::Tensor** out, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    TORCH_CHECK(x->device().is_cpu() && x->is_contiguous(),
                "fused ReLU + dropout: expected a contiguous CPU tensor, got one on ",
                x->device());
    TORCH_CHECK(x->scalar_type() == at::kFloat || x->scalar_type() == at::kBFloat16,
                "fused ReLU + dropout: input of dtype ", x->scalar_type(),
                " (float or bfloat16 only)");
    TORCH_CHECK(p > 0.0 && p < 1.0, "fused ReLU + dropout: p must be in (0, 1), got ", p);
    if (draw) {
      at::Generator gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      key = at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
    }
    RECORD_FUNCTION("selfsup::relu_dropout", c10::ArrayRef<const c10::IValue>{});
    *out = new at::Tensor(ReluDropout::apply(*x, p, int64_t(key)));
  });
}

}  // extern "C"
