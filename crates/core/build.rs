//! Build script of `selfsup-core`: compiles the C++ shims over autocast (`csrc/autocast.cpp`), the
//! determinism switches (`csrc/determinism.cpp`), the fused optimizer steps
//! (`csrc/fused_optim.cpp`), the fused batch norm + ReLU (`csrc/bn_relu.cpp`) and ReLU + dropout
//! (`csrc/relu_dropout.cpp`, both over `csrc/elementwise.h`), the max and average pools
//! (`csrc/max_pool.cpp`, `csrc/avg_pool.cpp`, over `csrc/lanes.h`), the Winograd 3×3 convolution
//! (`csrc/winograd.cpp`, its fused passes `csrc/winograd_fused.cpp`) and the convolution as
//! matrix products over im2col columns (`csrc/conv_gemm.cpp`, both over `csrc/conv_passes.h`),
//! the convolution of deterministic runs (`csrc/conv_det.cpp`), the ops tch binds only with default
//! arguments (`csrc/ops.cpp`), the operator counts (`csrc/op_counts.cpp`) and the device-side
//! prefetch of batches (`csrc/stream.cpp`) against libtorch's headers (see
//! `selfsup-shim-build`). Linking against libtorch itself is done by
//! `torch-sys`. The crate's own test binaries keep `libtorch_cuda.so` linked (the linker's
//! `--as-needed` drops it, leaving CUDA unavailable), so that its CUDA tests (`--ignored`) can run
//! on a GPU machine.
fn main() {
    selfsup_shim_build::compile(
        "selfsup-core",
        "ATen/autocast_mode.h",
        &[
            "csrc/autocast.cpp",
            "csrc/determinism.cpp",
            "csrc/fused_optim.cpp",
            "csrc/bn_relu.cpp",
            "csrc/ops.cpp",
            "csrc/op_counts.cpp",
            "csrc/stream.cpp",
            "csrc/relu_dropout.cpp",
            "csrc/max_pool.cpp",
            "csrc/avg_pool.cpp",
            "csrc/lanes.h",
            "csrc/winograd.cpp",
            "csrc/winograd_fused.cpp",
            "csrc/winograd_fused.h",
            "csrc/winograd_points.h",
            "csrc/conv_gemm.cpp",
            "csrc/conv_det.cpp",
            "csrc/elementwise.h",
            "csrc/conv_passes.h",
        ],
        "selfsup_autocast",
    );
    let lib = selfsup_shim_build::libtorch_root("selfsup-core").join("lib");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
