// Tensor ops that tch 0.24 binds only with PyTorch's default arguments: `leaky_relu` with a
// slope other than 0.01 (DCGAN's discriminators use 0.2). One dispatched ATen op, so autograd,
// autocast and every backend are libtorch's own. Each function returns 0, or -1 with libtorch's
// message in `err`.
#include <ATen/ATen.h>

#include "selfsup/guard.h"

extern "C" {

// `*out` = a new handle to `leaky_relu(*x, slope)`: `x` where positive, `slope · x` elsewhere.
int selfsup_leaky_relu(const at::Tensor* x, double slope, at::Tensor** out, char* err,
                       size_t err_len) {
  return selfsup::guarded(err, err_len, [&] { *out = new at::Tensor(at::leaky_relu(*x, slope)); });
}

}  // extern "C"
