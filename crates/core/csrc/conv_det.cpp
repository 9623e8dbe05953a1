// The convolution of a deterministic CPU run (`train.deterministic = true`): oneDNN's kernels,
// on pieces of the batch whose sums do not depend on the thread count.
//
// A deterministic run turns oneDNN off, because its backward pass to the weights splits the sum
// over the batch's positions across the threads (so the bits depend on their number), and libtorch
// then falls back to its reference convolution (`slow_conv2d`: an im2col and a small matrix product
// an image), 8.6x slower over a RotNet step on 2 cores. Here the batch is cut into pieces of
// `kPiece` images (the last one taking the remainder; a batch of fewer than `2 * kPiece` is two
// halves), fixed by the batch size alone. Every pass runs oneDNN's kernel on each piece inside one
// `at::parallel_for` over the pieces, each task holding OpenMP's and MKL's thread counts to 1
// (`OneThread`), so oneDNN builds and runs a single-threaded kernel and a piece's result is the
// same bits at any thread count. The forward pass and the backward pass to the input write each
// piece's rows; the gradients to the weights and the bias are one partial sum a piece, added in the
// pieces' order (in float). Which kernel libtorch picks for a piece depends on its shape, its dtype
// and whether oneDNN is on, and on the thread count only for a 1 x 1 layer of a piece under 16
// images (`ConvParams::use_mkldnn`), which inside a task always sees one thread. Where libtorch
// picks its reference kernel for a piece (that 1 x 1 layer; a transposed convolution whose output
// padding is not below its stride, which oneDNN refuses), the kernel's matrix products are MKL's,
// which keeps a thread count of its own (`at::set_num_threads` sets the calling thread's): in a
// task run inline on the calling thread (a batch of one piece) they ran on every thread and gave
// other bits at other thread counts, hence MKL's count held to 1 too. Transposed convolutions (a
// decoder's up-convolutions) take the same pieces, on oneDNN's transposed kernels.
//
// oneDNN is turned on for the duration of each pass (libtorch's process-wide switch, restored
// on every exit); a pass runs on the thread that called it, the autograd engine's on the CPU,
// while the loader's threads run no convolution.
//
// The matrix products of the smallest maps' dense convolutions (`conv_dense`) and of the layers
// outside the convolutions (fully connected layers, a head's scores, the context encoder's
// channel-wise layer) take a path of their own here (`DetProduct`): fixed blocks of the output's
// columns (or one entry of a batched product), one single-threaded product each, over the same
// tasks: MKL's in float (whose own product depends on the thread count), oneDNN's in bfloat16
// (libtorch's bfloat16 product with oneDNN off is its reference loop: 142.7 of a 214 ms
// relative-patch step).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/ConvUtils.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "conv_passes.h"
#include "selfsup/guard.h"

namespace {

// Images a piece (the last piece takes up to twice as many: the remainder). A batch of fewer
// than twice as many is two halves (one image: one piece), so that two cores share it.
constexpr int64_t kPiece = 16;

// The pieces of a batch of `n` images (n >= 1): (first image, images).
std::vector<std::pair<int64_t, int64_t>> pieces(int64_t n) {
  if (n < 2 * kPiece) {
    if (n < 2) return {{0, n}};
    return {{0, n / 2}, {n / 2, n - n / 2}};
  }
  std::vector<std::pair<int64_t, int64_t>> out;
  const int64_t count = n / kPiece;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t first = i * kPiece;
    out.emplace_back(first, i + 1 == count ? n - first : kPiece);
  }
  return out;
}

// oneDNN on while it lives, the previous setting back after.
struct MkldnnOn {
  bool prev;
  MkldnnOn() : prev(at::globalContext().userEnabledMkldnn()) {
    at::globalContext().setUserEnabledMkldnn(true);
  }
  ~MkldnnOn() { at::globalContext().setUserEnabledMkldnn(prev); }
  MkldnnOn(const MkldnnOn&) = delete;
  MkldnnOn& operator=(const MkldnnOn&) = delete;
};

struct Geometry {
  int64_t stride, padding, dilation, groups;
  bool transposed;
  int64_t output_padding;  // of a transposed convolution (0 otherwise)

  // The output's channels for the weight `w`: (K, C / groups, r, s), or a transposed
  // convolution's (C, K / groups, r, s).
  int64_t out_channels(const at::Tensor& w) const {
    return transposed ? w.size(1) * groups : w.size(0);
  }
};

// OpenMP's `omp_get_max_threads` and `omp_set_num_threads`, from the OpenMP runtime libtorch
// loaded (looked up at run time: the shim is not built with OpenMP), and MKL's
// `mkl_set_num_threads_local` (exported by libtorch_cpu, into which the wheels link MKL, as
// `MKL_Set_Num_Threads_Local`: the lower-case symbol is the Fortran binding, which takes a
// pointer); null without them.
struct OmpThreads {
  int (*get)();
  void (*set)(int);
  int (*mkl_local)(int);
  OmpThreads()
      : get(reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "omp_get_max_threads"))),
        set(reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"))),
        mkl_local(
            reinterpret_cast<int (*)(int)>(dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local"))) {}
};

const OmpThreads& omp_threads() {
  static const OmpThreads t;
  return t;
}

// OpenMP's and MKL's thread counts of the calling task held to 1 while it lives, then
// restored. oneDNN sizes a kernel's work split by `omp_get_max_threads()` when it builds the
// kernel (inside a parallel region too) and then runs the split's parts in one thread: its
// backward pass to the weights of 1 x 1 layers waits at a barrier for the parts' other threads
// and hangs. Held to 1, each piece gets a single-threaded kernel (the same one at any thread
// count). MKL keeps a thread count of its own (`at::set_num_threads` sets the calling thread's),
// which a piece's matrix products (libtorch's reference kernels, where a piece takes them) would
// use in a task run inline on the calling thread: its thread-local count is held to 1 too.
struct OneThread {
  int prev = 0;
  int prev_mkl = -1;
  OneThread() {
    const auto& t = omp_threads();
    if (t.get != nullptr && t.set != nullptr) {
      prev = t.get();
      t.set(1);
    }
    if (t.mkl_local != nullptr) prev_mkl = t.mkl_local(1);
  }
  ~OneThread() {
    if (prev > 0) omp_threads().set(prev);
    // 0: back to MKL's global count.
    if (prev_mkl >= 0) omp_threads().mkl_local(prev_mkl);
  }
  OneThread(const OneThread&) = delete;
  OneThread& operator=(const OneThread&) = delete;
};

// `f(i, first, images)` for every piece, over libtorch's threads, one piece a task, each task
// held to one thread (`OneThread`) and with autograd's recording off: grad mode is a setting of
// each thread, on in libtorch's worker threads whatever the calling thread's, so a piece's ops
// there would record a graph of their own (and an out= product refuses operands that require
// gradients).
template <typename F>
void each_piece(const std::vector<std::pair<int64_t, int64_t>>& ps, const F& f) {
  at::parallel_for(0, static_cast<int64_t>(ps.size()), 1, [&](int64_t begin, int64_t end) {
    OneThread one;
    at::NoGradGuard no_grad;
    for (int64_t i = begin; i < end; ++i) f(i, ps[i].first, ps[i].second);
  });
}

// The memory format of the output and of the gradients, as libtorch's oneDNN convolution picks
// it: channels-last when the input or the weight is (`mkldnn_conv_use_channels_last`), else
// contiguous. (The input's own format, as until 2026-12-07, turned a channels-last network NCHW
// after its first layer, whose input, the batch of images, is NCHW: every piece's input and
// output were then copied between the formats, and the layers after ran NCHW.)
at::MemoryFormat memory_format(const at::Tensor& x, const at::Tensor& w) {
  return at::native::mkldnn_conv_use_channels_last(x, w) ? at::MemoryFormat::ChannelsLast
                                                          : at::MemoryFormat::Contiguous;
}

at::Tensor forward_pieces(const at::Tensor& x, const at::Tensor& w,
                          const std::optional<at::Tensor>& b, const Geometry& g) {
  // The output's side from the input's `in` and the filter's `r`.
  const auto side = [&](int64_t in, int64_t r) {
    return g.transposed ? (in - 1) * g.stride - 2 * g.padding + g.dilation * (r - 1) +
                              g.output_padding + 1
                        : (in + 2 * g.padding - g.dilation * (r - 1) - 1) / g.stride + 1;
  };
  const int64_t ho = side(x.size(2), w.size(2)), wo = side(x.size(3), w.size(3));
  TORCH_CHECK(ho > 0 && wo > 0, g.transposed ? "transposed convolution" : "convolution",
              ": input ", x.sizes(), ", weight ", w.sizes(), ", stride ", g.stride, ", padding ",
              g.padding, ", dilation ", g.dilation, ": the output would be empty");
  at::Tensor y = at::empty({x.size(0), g.out_channels(w), ho, wo},
                           x.options().memory_format(memory_format(x, w)));
  MkldnnOn on;
  // Each piece's output copied into its rows by the task that made it (still in its cache).
  each_piece(pieces(x.size(0)), [&](int64_t, int64_t first, int64_t n) {
    y.narrow(0, first, n)
        .copy_(at::convolution(x.narrow(0, first, n), w, b, {g.stride, g.stride},
                               {g.padding, g.padding}, {g.dilation, g.dilation}, g.transposed,
                               {g.output_padding, g.output_padding}, g.groups));
  });
  return y;
}

// The autograd function, `Bias` when the layer has one (an undefined tensor cannot be an
// input of a C++ autograd function, so the bias-free layer is a function of two tensors).
template <bool Bias>
struct DetConv : public torch::autograd::Function<DetConv<Bias>> {
  using Ctx = torch::autograd::AutogradContext;

  // `output_padding` is -1 for a convolution, the output padding of a transposed one.
  static at::Tensor run(Ctx* ctx, const at::Tensor& x, const at::Tensor& w,
                        const std::optional<at::Tensor>& b, int64_t stride, int64_t padding,
                        int64_t dilation, int64_t groups, int64_t output_padding) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["output_padding"] = output_padding;
    return forward_pieces(x, w, b, geometry(ctx));
  }

  static at::Tensor forward(Ctx* ctx, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b, int64_t stride, int64_t padding,
                            int64_t dilation, int64_t groups, int64_t output_padding) {
    return run(ctx, x, w, b, stride, padding, dilation, groups, output_padding);
  }

  static at::Tensor forward(Ctx* ctx, const at::Tensor& x, const at::Tensor& w, int64_t stride,
                            int64_t padding, int64_t dilation, int64_t groups,
                            int64_t output_padding) {
    return run(ctx, x, w, std::nullopt, stride, padding, dilation, groups, output_padding);
  }

  static Geometry geometry(Ctx* ctx) {
    const int64_t output_padding = ctx->saved_data["output_padding"].toInt();
    return Geometry{ctx->saved_data["stride"].toInt(),   ctx->saved_data["padding"].toInt(),
                    ctx->saved_data["dilation"].toInt(), ctx->saved_data["groups"].toInt(),
                    output_padding >= 0,                 std::max<int64_t>(output_padding, 0)};
  }

  static torch::autograd::variable_list backward(Ctx* ctx, torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "the deterministic convolution has no double backward (create_graph)");
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1];
    const at::Tensor none;
    // One gradient an input: x, w, (b,) stride, padding, dilation, groups, output padding.
    torch::autograd::variable_list out(Bias ? 8 : 7);
    if (!grads[0].defined()) return out;
    const Geometry g = geometry(ctx);
    const bool want_x = ctx->needs_input_grad(0), want_w = ctx->needs_input_grad(1),
               want_b = Bias && ctx->needs_input_grad(2);
    const at::MemoryFormat format = memory_format(x, w);
    const at::Tensor dy = grads[0].contiguous(format);
    const auto ps = pieces(x.size(0));
    std::vector<at::Tensor> dws(ps.size()), dbs(ps.size());
    const std::array<int64_t, 1> bias_size{g.out_channels(w)};
    at::Tensor dx = want_x ? at::empty(x.sizes(), x.options().memory_format(format)) : none;
    {
      MkldnnOn on;
      each_piece(ps, [&](int64_t i, int64_t first, int64_t n) {
        auto r = at::convolution_backward(
            dy.narrow(0, first, n), x.narrow(0, first, n), w,
            Bias ? at::OptionalIntArrayRef(bias_size) : at::OptionalIntArrayRef(),
            {g.stride, g.stride}, {g.padding, g.padding}, {g.dilation, g.dilation}, g.transposed,
            {g.output_padding, g.output_padding}, g.groups, {want_x, want_w, want_b});
        if (want_x) dx.narrow(0, first, n).copy_(std::get<0>(r));
        dws[i] = std::get<1>(r);
        dbs[i] = std::get<2>(r);
      });
    }
    // The partial sums in the pieces' order (elementwise additions: the same bits at any
    // thread count), in float and rounded once to the parameter's dtype at the end, as
    // oneDNN's bf16 kernels accumulate a gradient over the whole batch.
    const auto in_order = [](std::vector<at::Tensor>& parts) {
      at::Tensor sum = parts[0].to(at::kFloat);
      for (size_t i = 1; i < parts.size(); ++i) sum.add_(parts[i]);
      return sum.to(parts[0].scalar_type());
    };
    if (want_x) out[0] = dx;
    if (want_w) out[1] = in_order(dws);
    if (want_b) out[2] = in_order(dbs);
    return out;
  }
};

// Columns a block of a deterministic product's output.
constexpr int64_t kColumns = 64;

// `out = a b` (a: (M, K), b: (K, N), out: (M, N)) in fixed blocks of `kColumns` of the
// output's columns, one product a block over libtorch's threads (`each_piece`: OpenMP and MKL
// held to one thread in a task). Every output is one single-threaded sum over all of `K`, in a
// block fixed by the shapes alone: the same bits at any thread count. Float blocks are MKL's
// products. Bfloat16 blocks are oneDNN's (libtorch's bfloat16 product takes oneDNN's kernel when
// oneDNN is on, as it is for the pass, and the product is over 16³; below, its reference loop),
// summing in float and rounding each output once.
void blocked_mm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  std::vector<std::pair<int64_t, int64_t>> blocks;
  for (int64_t first = 0; first < out.size(1); first += kColumns) {
    blocks.emplace_back(first, std::min(kColumns, out.size(1) - first));
  }
  std::optional<MkldnnOn> on;
  if (out.scalar_type() == at::kBFloat16) on.emplace();
  each_piece(blocks, [&](int64_t, int64_t first, int64_t n) {
    at::Tensor cols = out.narrow(1, first, n);
    at::mm_out(cols, a, b.narrow(1, first, n));
  });
}

// `out[g] = a[g] b[g]` for every entry `g` of the batched product (a: (G, M, K), b: (G, K, N),
// out: (G, M, N)), one single-threaded product an entry over libtorch's threads (`each_piece`),
// MKL's in float and oneDNN's in bfloat16 as in `blocked_mm`: each entry's sums in an order
// fixed by its shapes.
void batched_mm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  std::vector<std::pair<int64_t, int64_t>> entries;
  for (int64_t g = 0; g < out.size(0); ++g) entries.emplace_back(g, 1);
  std::optional<MkldnnOn> on;
  if (out.scalar_type() == at::kBFloat16) on.emplace();
  each_piece(entries, [&](int64_t, int64_t g, int64_t) {
    at::Tensor o = out.select(0, g);
    at::mm_out(o, a.select(0, g), b.select(0, g));
  });
}

// The product `x w` of a deterministic run, every pass one `blocked_mm` (x: (N, A), w: (A, B))
// or, `Batched`, one `batched_mm` (x: (G, N, A), w: (G, A, B), entry by entry): `y = x w`,
// `dx = dy wᵀ`, `dw = xᵀ dy`. The plain product is the dense form of the convolutions at the
// smallest maps (`conv_dense`), whose whole-batch product `dW = Xᵀ dY` MKL splits over the
// threads along the batch (partial sums over pieces of the batch, as the convolutions' weight
// gradients, cost a whole `(A, B)` matrix a piece here: a relative-patch step took longer than
// with the convolutions' pieces), and the fully connected layers; the batched one the context
// encoder's channel-wise layer (one entry a channel), whose bfloat16 `bmm` libtorch runs with its
// reference loop when oneDNN is off.
template <bool Batched>
struct DetProduct : public torch::autograd::Function<DetProduct<Batched>> {
  using Ctx = torch::autograd::AutogradContext;

  static void mm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
    if constexpr (Batched) {
      batched_mm(out, a, b);
    } else {
      blocked_mm(out, a, b);
    }
  }

  static at::Tensor forward(Ctx* ctx, const at::Tensor& x, const at::Tensor& w) {
    ctx->save_for_backward({x, w});
    std::vector<int64_t> size = x.sizes().vec();
    size.back() = w.size(-1);
    at::Tensor y = at::empty(size, x.options());
    mm(y, x, w);
    return y;
  }

  static torch::autograd::variable_list backward(Ctx* ctx, torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "the deterministic product has no double backward (create_graph)");
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1];
    torch::autograd::variable_list out(2);
    if (!grads[0].defined()) return out;
    const at::Tensor dy = grads[0].contiguous();
    if (ctx->needs_input_grad(0)) {
      out[0] = at::empty(x.sizes(), x.options());
      mm(out[0], dy, w.mT());
    }
    if (ctx->needs_input_grad(1)) {
      out[1] = at::empty(w.sizes(), w.options());
      mm(out[1], x.mT(), dy);
    }
    return out;
  }
};

// The operands of a deterministic product after autocast's cast (`autocast_operands`): false
// when the product is left to the caller (not `dim`-d CPU tensors both float or both bfloat16,
// another autocast dtype, an empty `x`, no `MKL_Set_Num_Threads_Local`, bfloat16 without
// oneDNN).
bool det_operands(at::Tensor& x, at::Tensor& w, int64_t dim) {
  const auto cpu = [dim](const at::Tensor& t) { return t.dim() == dim && t.device().is_cpu(); };
  if (!cpu(x) || !cpu(w) || x.numel() == 0 || omp_threads().mkl_local == nullptr) return false;
  if (!selfsup::autocast_operands(x, w)) return false;
  const auto kind = x.scalar_type();
  return kind == w.scalar_type() && (kind == at::kFloat || kind == at::kBFloat16) &&
         (kind == at::kFloat || at::hasMKLDNN());
}

// `*out` = `DetProduct<Batched>` of `x` and `w` when `det_operands` takes them (1), else 0; -1
// with libtorch's message in `err` when their sizes do not match.
template <bool Batched>
int det_product(const at::Tensor* x, const at::Tensor* w, at::Tensor** out, char* err,
                size_t err_len) {
  int took = 0;
  const int rc = selfsup::guarded(err, err_len, [&] {
    at::Tensor xs = *x, ws = *w;
    if (!det_operands(xs, ws, Batched ? 3 : 2)) return;
    const bool fit = xs.size(-1) == ws.size(-2) && (!Batched || xs.size(0) == ws.size(0));
    TORCH_CHECK(fit, Batched ? "deterministic batched product: " : "deterministic product: ",
                xs.sizes(), " by ", ws.sizes());
    RECORD_FUNCTION(Batched ? "selfsup::bmm_det" : "selfsup::mm_det",
                    c10::ArrayRef<const c10::IValue>{});
    *out = new at::Tensor(DetProduct<Batched>::apply(xs, ws));
    took = 1;
  });
  return rc != 0 ? rc : took;
}

}  // namespace

extern "C" {

// `*out` = a new handle to the convolution of `x` (N, C, H, W) with `w` (K, C / groups, r, s)
// and the bias `b` (K) when not null, square stride, padding and dilation, as one autograd
// function whose passes run oneDNN's kernels a piece of the batch at a time (see the file's
// header): for deterministic CPU runs, where oneDNN is off. With `output_padding` >= 0 it is
// the transposed convolution with that output padding (`w`: (C, K / groups, r, s)); negative
// (-1) for a convolution. Under the CPU's bfloat16 autocast the operands are cast as autocast's
// convolution casts them. Returns 1 when it took the convolution, 0 when it left it to the
// caller (an empty batch; not a 4-d CPU tensor; not float or bfloat16 after autocast; another
// autocast dtype; libtorch built without oneDNN), or -1 with libtorch's message in `err`.
int selfsup_conv_det(const at::Tensor* x, const at::Tensor* w, const at::Tensor* b,
                     int64_t stride, int64_t padding, int64_t dilation, int64_t groups,
                     int64_t output_padding, at::Tensor** out, char* err, size_t err_len) {
  int took = 0;
  const int rc = selfsup::guarded(err, err_len, [&] {
    if (x->dim() != 4 || x->size(0) == 0 || !x->device().is_cpu() || !w->device().is_cpu() ||
        !at::hasMKLDNN()) {
      return;
    }
    at::Tensor xs = *x, ws = *w, bs = b != nullptr ? *b : at::Tensor();
    if (!selfsup::autocast_operands(xs, ws, &bs)) return;
    const auto kind = xs.scalar_type();
    if (kind != ws.scalar_type() || (kind != at::kFloat && kind != at::kBFloat16) ||
        (bs.defined() && bs.scalar_type() != kind)) {
      return;
    }
    RECORD_FUNCTION("selfsup::conv_det", c10::ArrayRef<const c10::IValue>{});
    *out = new at::Tensor(bs.defined() ? DetConv<true>::apply(xs, ws, bs, stride, padding,
                                                            dilation, groups, output_padding)
                                       : DetConv<false>::apply(xs, ws, stride, padding, dilation,
                                                               groups, output_padding));
    took = 1;
  });
  return rc != 0 ? rc : took;
}

// `*out` = a new handle to the product `x w` of the matrices `x` (N, A) and `w` (A, B) on the CPU,
// both float or both bfloat16 (under the CPU's bfloat16 autocast both are cast to bfloat16 first,
// as autocast's `mm` casts them), as one autograd function whose passes run MKL's (float) or
// oneDNN's (bfloat16) products on fixed blocks of their outputs' columns (`DetProduct`): the same
// bits at any thread count. Returns 1 when it took the product, 0 when it left it to the caller (an
// empty `x`; not 2-d CPU tensors of one of those dtypes; another autocast dtype; no
// `MKL_Set_Num_Threads_Local` to hold MKL to one thread in a block, as in a libtorch without MKL;
// bfloat16 in a libtorch without oneDNN), or -1 with libtorch's message in `err` (mismatched inner
// sizes).
int selfsup_mm_det(const at::Tensor* x, const at::Tensor* w, at::Tensor** out, char* err,
                   size_t err_len) {
  return det_product<false>(x, w, out, err, err_len);
}

// `*out` = a new handle to the batched product `x w` of `x` (G, N, A) and `w` (G, A, B) on the
// CPU, as `selfsup_mm_det` (the same operands, casts and cases left to the caller), one
// single-threaded product an entry (`DetProduct<true>`). Returns 1 when it took it, 0 when it
// left it to the caller, or -1 with libtorch's message in `err` (mismatched sizes).
int selfsup_bmm_det(const at::Tensor* x, const at::Tensor* w, at::Tensor** out, char* err,
                    size_t err_len) {
  return det_product<true>(x, w, out, err, err_len);
}

}  // extern "C"
