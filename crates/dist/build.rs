//! Build script of `selfsup-dist`: compiles the C++ shims over c10d's `TCPStore`
//! (`csrc/store.cpp`) and the differentiable all-reduce (`csrc/autograd.cpp`) against
//! libtorch's headers (see `selfsup-shim-build`). Linking against libtorch itself is done by
//! `torch-sys`; the store's code is in `libtorch_cpu`.
fn main() {
    selfsup_shim_build::compile(
        "selfsup-dist",
        "torch/csrc/distributed/c10d/TCPStore.hpp",
        &["csrc/store.cpp", "csrc/autograd.cpp", "csrc/guard.h"],
        "selfsup_store",
    );
}
