//! Build script of `selfsup-dist`: compiles the C++ shims over c10d's `TCPStore`
//! (`csrc/store.cpp`), the differentiable all-reduce (`csrc/autograd.cpp`) and the
//! gradient-ready hooks of the bucketed reducer (`csrc/hooks.cpp`) against
//! libtorch's headers (see `selfsup-shim-build`). Linking against libtorch itself is done by
//! `torch-sys`; the store's code is in `libtorch_cpu`.
//!
//! With the `nccl` feature it also compiles `csrc/nccl.cpp` (ProcessGroupNCCL, in
//! `libtorch_cuda`), whose headers need NCCL's and CUDA's: it looks for them in the pip
//! packages beside torch (`<site-packages>/nvidia/nccl/include` and `nvidia/cu13/include`, the
//! latter holding `crt/` and `nv/` once `nvidia-cuda-crt` and `nvidia-cuda-cccl` are installed,
//! as xtask's torch install does), or in `SELFSUP_CUDA_INCLUDE` (folders separated by `:`), and
//! links `torch_cuda` and `c10_cuda`.
use std::path::PathBuf;

fn main() {
    selfsup_shim_build::compile(
        "selfsup-dist",
        "torch/csrc/distributed/c10d/TCPStore.hpp",
        &["csrc/store.cpp", "csrc/autograd.cpp", "csrc/hooks.cpp", "csrc/store.h"],
        "selfsup_store",
    );
    if std::env::var_os("CARGO_FEATURE_NCCL").is_some() {
        println!("cargo:rerun-if-env-changed=SELFSUP_CUDA_INCLUDE");
        let root = selfsup_shim_build::libtorch_root("selfsup-dist");
        let includes: Vec<PathBuf> = match std::env::var("SELFSUP_CUDA_INCLUDE") {
            Ok(dirs) => std::env::split_paths(&dirs).collect(),
            Err(_) => {
                let nvidia = root.parent().map(|p| p.join("nvidia")).unwrap_or_default();
                vec![nvidia.join("nccl/include"), nvidia.join("cu13/include")]
            }
        };
        if !includes.iter().any(|d| d.join("crt/host_config.h").exists()) {
            panic!(
                "selfsup-dist (feature nccl): no crt/host_config.h in {includes:?}; install \
                 CUDA's headers beside torch (pip install nvidia-cuda-crt==13.0.* \
                 nvidia-cuda-cccl==13.0.* into torch's environment) or set SELFSUP_CUDA_INCLUDE"
            );
        }
        selfsup_shim_build::compile_with(
            "selfsup-dist",
            "torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp",
            &["csrc/nccl.cpp"],
            "selfsup_nccl",
            &includes,
            &["USE_C10D_NCCL"],
        );
        println!("cargo:rustc-link-search=native={}", root.join("lib").display());
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
}
