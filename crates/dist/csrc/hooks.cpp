// Gradient-ready hooks for the bucketed reducer (`src/reducer.rs`): a post-accumulate-grad hook
// on each parameter (the hook autograd's `AccumulateGrad` runs once the parameter's `.grad`
// holds this backward's gradient, as `Tensor.register_post_accumulate_grad_hook` in Python and
// DDP's `Reducer` use), which calls back into Rust with the parameter's index. The hook runs on
// the thread that runs that part of backward (the caller's on the CPU, the device's autograd
// thread on CUDA). Every function returns 0, or -1 with libtorch's message in `err`.
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <cstddef>
#include <memory>

#include "selfsup/guard.h"

namespace {

using Callback = void (*)(void* ctx, size_t index);

struct ReadyHook final : torch::autograd::PostAccumulateGradHook {
  ReadyHook(Callback cb, void* ctx, size_t index) : cb(cb), ctx(ctx), index(index) {}
  void operator()(const torch::autograd::Variable& /*tensor*/) override { cb(ctx, index); }
  Callback cb;
  void* ctx;
  size_t index;
};

}  // namespace

extern "C" {

// Sets on each of the `n` leaf tensors `params` a hook calling `cb(ctx, i)` (i its index) after
// each accumulation of its gradient. Refuses a tensor that is not a leaf requiring a gradient,
// or that has such a hook already (only one per tensor; Python's hooks use the same slot).
int selfsup_set_grad_ready_hooks(const at::Tensor* const* params, size_t n, Callback cb,
                                 void* ctx, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    for (size_t i = 0; i < n; ++i) {
      const at::Tensor& p = *params[i];
      TORCH_CHECK(p.is_leaf() && p.requires_grad(), "parameter ", i,
                  " is not a leaf tensor that requires a gradient");
      TORCH_CHECK(torch::autograd::impl::post_acc_grad_hooks(p) == nullptr, "parameter ", i,
                  " already has a post-accumulate-grad hook");
    }
    for (size_t i = 0; i < n; ++i) {
      torch::autograd::impl::set_post_acc_grad_hooks(*params[i],
                                                     std::make_unique<ReadyHook>(cb, ctx, i));
    }
  });
}

// Removes the hooks of `selfsup_set_grad_ready_hooks` from the `n` tensors `params`.
void selfsup_clear_grad_ready_hooks(const at::Tensor* const* params, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    torch::autograd::impl::set_post_acc_grad_hooks(*params[i], nullptr);
  }
}

}  // extern "C"
