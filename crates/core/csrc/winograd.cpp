// 3x3 stride-1 convolutions (padding 1, no bias, one group) by Winograd's minimal filtering
// F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016),
// forward and both backward passes, for dense 4-d float CPU tensors (NCHW or channels-last).
//
// Each 2x2 tile t of the output is `Aᵀ [Σ_c (G g_kc Gᵀ) ⊙ (Bᵀ d_tc B)] A`, with d_tc the 4x4
// input patch of the tile and g_kc the 3x3 filter: the 16 positions ξ of the transformed tile
// become 16 independent matrix products `U_ξ (T, C) · V_ξ (C, K)` (T tiles), 2.25x fewer
// multiplications than the direct convolution. The transforms are matrix products with the
// Kronecker matrices below on tiles gathered into `(16, T, C)`. Backward:
// - to the input: the same forward with the filters flipped and transposed (a stride-1
//   padding-1 3x3 convolution's transpose is one);
// - to the weights: with `Y = Aᵀ (Q ⊙ Z) A`, Q = G g Gᵀ, Z = Bᵀ d B, the gradient is
//   `Gᵀ [Σ_t Z_t ⊙ (A dY_t Aᵀ)] G`: 16 products `U_ξᵀ (C, T) · (A dY Aᵀ)_ξ (T, K)`.
// Each pass is taken here or left to libtorch's own convolution (`plan` below, chosen by the
// caller from the layer's shape: oneDNN's forward kernels are faster at large maps, Winograd's
// products at small maps with many channels, and oneDNN's backward to the weights is slower at
// every measured shape). The sums are libtorch's matrix products (MKL), whose
// reduction order may depend on the thread count, as oneDNN's convolution's does; the caller
// leaves deterministic runs (oneDNN switched off) to libtorch.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "selfsup/guard.h"

namespace {

// vec(Bᵀ d B) = kB vec(d) (16x16), vec(G g Gᵀ) = kG vec(g) (16x9), vec(Aᵀ m A) = kA vec(m)
// (4x16), for row-major vec and the F(2x2, 3x3) matrices
// Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1],
// Aᵀ = [1 1 1 0; 0 1 -1 -1].
struct Transforms {
  at::Tensor kB, kG, kA;
  Transforms() {
    auto f = at::TensorOptions().dtype(at::kFloat);
    at::Tensor BT = at::tensor({1, 0, -1, 0, 0, 1, 1, 0, 0, -1, 1, 0, 0, 1, 0, -1}, f).view({4, 4});
    at::Tensor G = at::tensor({1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0.0, 0.0, 1.0}, f)
                       .view({4, 3});
    at::Tensor AT = at::tensor({1, 1, 1, 0, 0, 1, -1, -1}, f).view({2, 4});
    kB = at::kron(BT, BT).contiguous();
    kG = at::kron(G, G).contiguous();
    kA = at::kron(AT, AT).contiguous();
  }
};

const Transforms& transforms() {
  static const Transforms t;
  return t;
}

// Tiles of one side: ceil(side / 2).
int64_t tiles(int64_t side) { return (side + 1) / 2; }

// `(16, T, C)`: the transformed 4x4 input patches Bᵀ d B of every output tile of `x` (N, C, H, W).
at::Tensor input_tiles(const at::Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t th = tiles(H), tw = tiles(W);
  // NHWC, padded by 1 on the top and left and enough on the bottom and right for whole tiles.
  at::Tensor xp = at::constant_pad_nd(x, {1, 2 * tw - W + 1, 1, 2 * th - H + 1}, 0.0)
                      .permute({0, 2, 3, 1})
                      .contiguous();
  const auto s = xp.strides();
  at::Tensor d = xp.as_strided({4, 4, N, th, tw, C}, {s[1], s[2], s[0], 2 * s[1], 2 * s[2], s[3]})
                     .contiguous();
  return transforms().kB.mm(d.view({16, -1})).view({16, N * th * tw, C});
}

// `(16, C, K)`: the transformed filters G g Gᵀ of `w` (K, C, 3, 3).
at::Tensor filter_tiles(const at::Tensor& w) {
  const int64_t K = w.size(0), C = w.size(1);
  return transforms().kG.mm(w.reshape({K * C, 9}).t()).view({16, K, C}).transpose(1, 2);
}

// `(N, K, H, W)` in `format` from the products `m` (16, T, K) of the tiles of an H x W map.
at::Tensor output_of_tiles(const at::Tensor& m, int64_t N, int64_t H, int64_t W,
                           at::MemoryFormat format) {
  const int64_t th = tiles(H), tw = tiles(W), K = m.size(2);
  at::Tensor t = transforms().kA.mm(m.reshape({16, -1})).view({2, 2, N, th, tw, K});
  at::Tensor y = at::empty({N, th, 2, tw, 2, K}, m.options());
  y.copy_(t.permute({2, 3, 0, 4, 1, 5}));
  at::Tensor out = y.view({N, 2 * th, 2 * tw, K}).permute({0, 3, 1, 2});
  if (2 * th != H || 2 * tw != W) out = out.slice(2, 0, H).slice(3, 0, W);
  return out.contiguous(format);
}

// `(16, M, N)`: the 16 products `a[ξ] b[ξ]` of `a` (16, M, L) and `b` (16, L, N), one matrix
// product each (multithreaded inside; measured faster than one `bmm`, which splits the batch
// between threads: 35 against 49 ms at 16 x 512³ on 2 cores of a Zen 3).
at::Tensor products(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({16, a.size(1), b.size(2)}, a.options());
  for (int64_t i = 0; i < 16; ++i) {
    at::Tensor o = out[i];
    at::mm_out(o, a[i], b[i]);
  }
  return out;
}

// The convolution of `x` (N, C, H, W) with `w` (K, C, 3, 3), padding 1, by Winograd.
at::Tensor forward_winograd(const at::Tensor& x, const at::Tensor& w, at::MemoryFormat format) {
  at::Tensor m = products(input_tiles(x), filter_tiles(w));
  return output_of_tiles(m, x.size(0), x.size(2), x.size(3), format);
}

// The gradient to `w` (K, C, 3, 3) of the convolution of `x` given `dy` (N, K, H, W).
at::Tensor weight_grad_winograd(const at::Tensor& x, const at::Tensor& dy,
                                at::MemoryFormat format) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = dy.size(1);
  const int64_t th = tiles(H), tw = tiles(W);
  at::Tensor g = at::constant_pad_nd(dy, {0, 2 * tw - W, 0, 2 * th - H}, 0.0)
                     .permute({0, 2, 3, 1})
                     .reshape({N, th, 2, tw, 2, K})
                     .permute({2, 4, 0, 1, 3, 5})
                     .contiguous();
  at::Tensor v = transforms().kA.t().mm(g.view({4, -1})).view({16, N * th * tw, K});
  at::Tensor p = products(input_tiles(x).transpose(1, 2), v);  // (16, C, K)
  at::Tensor gw = transforms().kG.t().mm(p.view({16, C * K})).view({3, 3, C, K});
  return gw.permute({3, 2, 0, 1}).contiguous(format);
}

// Which passes run by Winograd (bit 0 forward, 1 to the input, 2 to the weights); the others
// call libtorch's convolution.
struct Plan {
  bool forward, input, weight;
  explicit Plan(int bits) : forward(bits & 1), input(bits & 2), weight(bits & 4) {}
  int bits() const { return (forward ? 1 : 0) | (input ? 2 : 0) | (weight ? 4 : 0); }
};

at::Tensor libtorch_forward(const at::Tensor& x, const at::Tensor& w) {
  return at::convolution(x, w, {}, {1, 1}, {1, 1}, {1, 1}, false, {0, 0}, 1);
}

struct Conv3x3 : public torch::autograd::Function<Conv3x3> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w, int64_t bits) {
    const Plan plan(static_cast<int>(bits));
    ctx->save_for_backward({x, w});
    ctx->saved_data["bits"] = bits;
    return plan.forward ? forward_winograd(x, w, x.suggest_memory_format())
                        : libtorch_forward(x, w);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "Winograd 3x3 convolution has no double backward (create_graph)");
    auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &w = s[1];
    const Plan plan(static_cast<int>(ctx->saved_data["bits"].toInt()));
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const at::MemoryFormat format = x.suggest_memory_format();
    const at::Tensor dy = grads[0].contiguous(format);
    const bool want_x = ctx->needs_input_grad(0), want_w = ctx->needs_input_grad(1);
    at::Tensor dx, dw;
    if (want_x && plan.input) {
      dx = forward_winograd(dy, w.flip({2, 3}).transpose(0, 1), format);
    }
    if (want_w && plan.weight) dw = weight_grad_winograd(x, dy, w.suggest_memory_format());
    const bool rest_x = want_x && !plan.input, rest_w = want_w && !plan.weight;
    if (rest_x || rest_w) {
      auto g = at::convolution_backward(dy, x, w, std::nullopt, {1, 1}, {1, 1}, {1, 1}, false,
                                        {0, 0}, 1, {rest_x, rest_w, false});
      if (rest_x) dx = std::get<0>(g);
      if (rest_w) dw = std::get<1>(g);
    }
    return {dx, dw, at::Tensor()};
  }
};

}  // namespace

extern "C" {

// `*out` = a new handle to the 3x3 convolution (stride 1, padding 1, no bias) of `x` (N, C, H,
// W) with `w` (K, C, 3, 3), with the passes in `bits` (1 forward, 2 backward to the input,
// 4 backward to the weights) by Winograd F(2x2, 3x3) and the others by libtorch; differentiable
// in both. Returns 1 when it took the convolution, 0 when it left it to the caller (nothing in
// `bits`, not dense float CPU tensors, autocast on for the CPU, or oneDNN off: deterministic
// runs), or -1 with libtorch's message in `err`.
int selfsup_conv3x3_winograd(const at::Tensor* x, const at::Tensor* w, int bits, at::Tensor** out,
                             char* err, size_t err_len) {
  int took = 0;
  const int rc = selfsup::guarded(err, err_len, [&] {
    const bool dense = x->is_contiguous() || x->is_contiguous(at::MemoryFormat::ChannelsLast);
    if ((bits & 7) == 0 || !x->device().is_cpu() || x->scalar_type() != at::kFloat ||
        w->scalar_type() != at::kFloat || !w->device().is_cpu() || !dense ||
        at::autocast::is_autocast_enabled(at::kCPU) || !at::globalContext().userEnabledMkldnn()) {
      return;
    }
    TORCH_CHECK(x->dim() == 4 && w->dim() == 4 && w->size(2) == 3 && w->size(3) == 3 &&
                    w->size(1) == x->size(1),
                "Winograd 3x3 convolution: input ", x->sizes(), " and weight ", w->sizes(),
                " (expected (N, C, H, W) and (K, C, 3, 3))");
    *out = new at::Tensor(Conv3x3::apply(*x, *w, static_cast<int64_t>(bits & 7)));
    took = 1;
  });
  return rc != 0 ? rc : took;
}

}  // extern "C"
