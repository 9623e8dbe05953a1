// Tensor ops that tch 0.24 binds only with PyTorch's default arguments: `leaky_relu` with a
// slope other than 0.01 (DCGAN's discriminators use 0.2). One dispatched ATen op, so autograd,
// autocast and every backend are libtorch's own. Each function returns 0, or -1 with libtorch's
// message in `err`.
#include <ATen/ATen.h>

#include "elementwise.h"
#include "selfsup/guard.h"

extern "C" {

// `*out` = a new handle to `leaky_relu(*x, slope)`: `x` where positive, `slope · x` elsewhere.
int selfsup_leaky_relu(const at::Tensor* x, double slope, at::Tensor** out, char* err,
                       size_t err_len) {
  return selfsup::guarded(err, err_len, [&] { *out = new at::Tensor(at::leaky_relu(*x, slope)); });
}

// `leaky_relu_(*x, slope)`: `x` in place, its backward pass from the result (so for slope > 0
// only, as libtorch requires of the in-place op under autograd).
int selfsup_leaky_relu_(at::Tensor* x, double slope, char* err, size_t err_len) {
  return selfsup::guarded(err, err_len, [&] { at::leaky_relu_(*x, slope); });
}

// Whether the fused kernels (`bn_relu.cpp`, `relu_dropout.cpp`) round their bfloat16 results
// with the CPU's own conversion (`elementwise.h`): `enable` < 0 asks, 0 turns it off, 1 turns it
// on where the CPU has it (the default). Returns whether it is in use now.
int selfsup_native_bf16(int enable) {
  if (enable >= 0) selfsup::native_bf16_wanted().store(enable != 0, std::memory_order_relaxed);
  return selfsup::native_bf16() ? 1 : 0;
}

}  // extern "C"
