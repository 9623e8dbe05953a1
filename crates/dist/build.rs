//! Build script of `selfsup-dist`: compiles the C++ shims over c10d's `TCPStore`
//! (`csrc/store.cpp`) and the differentiable all-reduce (`csrc/autograd.cpp`) against
//! libtorch's headers. Linking against libtorch itself is done by `torch-sys`; the store's code
//! is in `libtorch_cpu`.
//!
//! Reads `LIBTORCH` (the torch install, as for `torch-sys`; `cargo xtask env` prints it),
//! optionally `LIBTORCH_INCLUDE` (a different header root) and `LIBTORCH_CXX11_ABI` (default 1).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=csrc/store.cpp");
    println!("cargo:rerun-if-changed=csrc/autograd.cpp");

    let root = std::env::var("LIBTORCH_INCLUDE").or_else(|_| std::env::var("LIBTORCH"));
    let Ok(root) = root else {
        panic!(
            "selfsup-dist: LIBTORCH is not set; build through `cargo xtask` or set the exports \
             that `cargo xtask env` prints"
        );
    };
    let include = PathBuf::from(root).join("include");
    let header = include.join("torch/csrc/distributed/c10d/TCPStore.hpp");
    if !header.exists() {
        panic!(
            "selfsup-dist: {} is missing; LIBTORCH must point at a torch install with its \
             distributed headers (the folder holding include/ and lib/)",
            header.display()
        );
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());

    cc::Build::new()
        .cpp(true)
        .file("csrc/store.cpp")
        .file("csrc/autograd.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("selfsup_store");
}
