// Switches that make CPU training bit-for-bit independent of the thread count, which tch 0.24
// does not expose. oneDNN (mkldnn) splits the weight-gradient reduction of convolutions across
// threads, so its sums depend on the thread count; ATen's native convolution does not (checked
// with torch 2.11: conv weight gradients at 1 and 2 threads differ with mkldnn, match without).
#include <ATen/Context.h>

extern "C" {

// Enables (1) or disables (0) oneDNN kernels; returns the previous setting, or -1 on error.
int selfsup_set_mkldnn_enabled(int enabled) {
  try {
    auto& ctx = at::globalContext();
    const int prev = ctx.userEnabledMkldnn() ? 1 : 0;
    ctx.setUserEnabledMkldnn(enabled != 0);
    return prev;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
