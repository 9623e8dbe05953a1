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

// Whether oneDNN kernels are enabled (1) or not (0: a deterministic run), or -1 on error.
int selfsup_mkldnn_enabled() {
  try {
    return at::globalContext().userEnabledMkldnn() ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// The CUDA switches of `train.deterministic` and `train.tf32` (they are global flags of ATen's
// context, so they can be set and read back on a CPU-only machine too). `deterministic`: cuDNN
// picks deterministic convolution algorithms and ATen's deterministic implementations are used
// where they exist (warn_only: an op without one warns instead of failing, as
// `torch.use_deterministic_algorithms(True, warn_only=True)`). `benchmark`: cuDNN's autotuner
// (fast, not reproducible). `tf32_cudnn`, `tf32_cublas`: whether cuDNN's convolutions and
// cuBLAS's matmuls may run fp32 tensors as TF32 (PyTorch's defaults: 1 and 0); set either way,
// whatever `deterministic`. `fill_uninitialized`: whether, with the deterministic
// implementations on, every new tensor that an op leaves uninitialized (`empty`) is first
// filled with NaN (PyTorch's default, `torch.utils.deterministic.fill_uninitialized_memory`),
// so that a read of it gives the same bits every time. Returns 0, or -1 when libtorch threw.
int selfsup_set_cuda_determinism(int deterministic, int benchmark, int tf32_cudnn,
                                 int tf32_cublas, int fill_uninitialized) {
  try {
    auto& ctx = at::globalContext();
    ctx.setDeterministicCuDNN(deterministic != 0);
    ctx.setBenchmarkCuDNN(benchmark != 0);
    ctx.setDeterministicAlgorithms(deterministic != 0, /*warn_only=*/true);
    ctx.setDeterministicFillUninitializedMemory(fill_uninitialized != 0);
    ctx.setAllowTF32CuDNN(tf32_cudnn != 0);
    ctx.setAllowTF32CuBLAS(tf32_cublas != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}

// Reads the switches back: cuDNN deterministic, cuDNN benchmark, deterministic algorithms,
// TF32 in cuBLAS, TF32 in cuDNN, uninitialized memory filled (each 0 or 1). Returns 0, or -1
// when libtorch threw.
int selfsup_get_cuda_determinism(int* cudnn_deterministic, int* cudnn_benchmark,
                                 int* algorithms, int* tf32_cublas, int* tf32_cudnn,
                                 int* fill_uninitialized) {
  try {
    auto& ctx = at::globalContext();
    *cudnn_deterministic = ctx.deterministicCuDNN() ? 1 : 0;
    *cudnn_benchmark = ctx.benchmarkCuDNN() ? 1 : 0;
    *algorithms = ctx.deterministicAlgorithms() ? 1 : 0;
    *tf32_cublas = ctx.allowTF32CuBLAS() ? 1 : 0;
    *tf32_cudnn = ctx.allowTF32CuDNN() ? 1 : 0;
    *fill_uninitialized =
        ctx.deterministicAlgorithms() && ctx.deterministicFillUninitializedMemory() ? 1 : 0;
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
