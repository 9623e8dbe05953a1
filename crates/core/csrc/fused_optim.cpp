// Fused optimizer steps, which tch 0.24 does not bind: `at::_fused_sgd_` and
// `at::_fused_adamw_`, the kernels behind `torch.optim.SGD(fused=True)` and
// `torch.optim.AdamW(fused=True)`. One call updates a whole list of parameters: on the CPU a
// vectorised loop per tensor without a dispatch per arithmetic op, on CUDA a multi-tensor
// kernel (a handful of launches a step instead of several per parameter). And the trainer's
// `zero_grad(set_to_none=True)`, which tch does not bind either.
//
// Tensors arrive as arrays of `at::Tensor*` (tch's `C_tensor` is `at::Tensor`), all of one
// device and dtype, each parameter dense (one run of memory, in any order of dimensions), its
// gradient and state with its strides (the caller checks), called under the caller's no-grad
// guard. Every function returns 0, or -1 with libtorch's message in `err`.
#include <ATen/ATen.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/_fused_sgd.h>
#include <ATen/ops/_foreach_add.h>

#include <vector>

#include "selfsup/guard.h"

namespace {

// A dense CPU tensor that is not contiguous (a channels-last weight, its gradient and state)
// as one flat run of its memory. ATen's CPU kernels (`fused_sgd_kernel`, `fused_adam_kernel`)
// copy each such gradient into a contiguous tensor and then never read the copy: they walk the
// tensors' own memory, which the caller's check that all of a parameter's tensors share its
// strides allows. Seen flat, the gradient is contiguous and the wasted copy (a pass over every
// channels-last weight's gradient a step) is skipped; the update is the same, value for value.
at::Tensor flat(const at::Tensor& t) {
  if (!t.is_cpu() || t.is_contiguous() || !t.is_non_overlapping_and_dense()) return t;
  return t.as_strided({t.numel()}, {1});
}

std::vector<at::Tensor> list(const at::Tensor* const* ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(flat(*ts[i]));
  return out;
}

}  // namespace

extern "C" {

// `torch.optim.SGD(fused=True)`'s update of `n` parameters (dampening 0, not maximising):
// `g = grad + wd * p; buf = momentum * buf + g; g = nesterov ? g + momentum * buf : buf;
// p -= lr * g`. `bufs` is null when `momentum` is 0.
int selfsup_fused_sgd(const at::Tensor* const* params, const at::Tensor* const* grads,
                      const at::Tensor* const* bufs, size_t n, double weight_decay,
                      double momentum, double lr, int nesterov, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    std::vector<at::Tensor> b = bufs == nullptr ? std::vector<at::Tensor>{} : list(bufs, n);
    at::_fused_sgd_(list(params, n), list(grads, n), b, weight_decay, momentum, lr, 0.0,
                    nesterov != 0, /*maximize=*/false, /*is_first_step=*/false);
  });
}

// `torch.optim.AdamW(fused=True)`'s update of `n` parameters (no AMSGrad, not maximising):
// adds 1 to each step count (float32 scalars on the parameters' device, or on the CPU for CPU
// parameters), then the kernel computes the bias corrections from them.
int selfsup_fused_adamw(const at::Tensor* const* params, const at::Tensor* const* grads,
                        const at::Tensor* const* exp_avgs, const at::Tensor* const* exp_avg_sqs,
                        const at::Tensor* const* steps, size_t n, double lr, double beta1,
                        double beta2, double weight_decay, double eps, char* err,
                        size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    std::vector<at::Tensor> s = list(steps, n);
    at::_foreach_add_(s, 1.0);
    at::_fused_adamw_(list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n),
                      {}, s, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                      /*maximize=*/false);
  });
}

// Drops the gradients of `n` parameters (`optimizer.zero_grad(set_to_none=True)`, PyTorch's
// default): the next backward pass hands each parameter its gradient buffer as computed,
// instead of adding it into a zeroed one (on CUDA one fill and one add kernel a parameter).
int selfsup_drop_grads(const at::Tensor* const* params, size_t n, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] {
    for (size_t i = 0; i < n; ++i) params[i]->mutable_grad().reset();
  });
}

}  // extern "C"
