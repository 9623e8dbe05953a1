// A differentiable sum across ranks: an autograd function whose forward sums its input over the
// ranks of a job and whose backward sums the output's gradient over them (the adjoint of a sum
// that every rank receives is the same sum of the gradients). tch 0.24 cannot define autograd
// functions, so this one is C++ (torch::autograd::Function) and the collective itself stays in
// Rust: it is called back through `Reduce` with a tensor to sum in place. Gathering with
// gradient (SimCLR's negatives from every rank) and synchronised batch norm are built on it.
#include <torch/csrc/autograd/custom_function.h>

#include "selfsup/guard.h"

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace {

// Sums `*t` over the ranks in place; takes ownership of the handle `t` (a new at::Tensor
// sharing the storage to sum). Returns 0, or -1 with a message in `err`.
using Reduce = int (*)(void* ctx, at::Tensor* t, char* err, size_t err_len);
// Releases `ctx` once no autograd node needs it.
using Drop = void (*)(void* ctx);

// The Rust side of one call (its group), alive as long as the graph node that may call back.
struct Holder : torch::CustomClassHolder {
  Holder(Reduce reduce, void* ctx, Drop drop) : reduce(reduce), ctx(ctx), drop(drop) {}
  ~Holder() override { drop(ctx); }
  Holder(const Holder&) = delete;
  Holder& operator=(const Holder&) = delete;

  at::Tensor sum(const at::Tensor& x) const {
    auto t = x.detach().clone(at::MemoryFormat::Contiguous);
    char err[1024] = {0};
    if (reduce(ctx, new at::Tensor(t), err, sizeof err) != 0) throw std::runtime_error(err);
    return t;
  }

  Reduce reduce;
  void* ctx;
  Drop drop;
};

struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const c10::intrusive_ptr<Holder>& holder) {
    ctx->saved_data["holder"] = c10::IValue::make_capsule(holder);
    return holder->sum(x);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto holder = c10::static_intrusive_pointer_cast<Holder>(ctx->saved_data["holder"].toCapsule());
    return {holder->sum(grads[0]), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// `*out` = a new handle to the sum of `*x` over the ranks, differentiable (see the file header).
// `ctx` is handed to `reduce` at every call and to `drop` once, when the last user is gone
// (also when this function fails). Returns 0, or -1 with a message in `err`.
int selfsup_all_reduce_sum_autograd(const at::Tensor* x, Reduce reduce, void* ctx, Drop drop,
                                    at::Tensor** out, char* err, size_t err_len) {
  c10::intrusive_ptr<Holder> holder;
  try {
    holder = c10::make_intrusive<Holder>(reduce, ctx, drop);
  } catch (...) {
    drop(ctx);
    selfsup::write_err("out of memory", err, err_len);
    return -1;
  }
  return selfsup::guarded(err, err_len,
                          [&] { *out = new at::Tensor(AllReduceSum::apply(*x, holder)); });
}

}  // extern "C"
