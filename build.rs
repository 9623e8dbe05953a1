//! Build script of the `selfsup` binary: bakes the libtorch library folder into the binary's
//! rpath (so `target/release/selfsup` runs without `LD_LIBRARY_PATH`) and keeps
//! `libtorch_cuda.so` linked although no symbol of it is referenced directly (the linker's
//! `--as-needed` would drop it, and CUDA would then be silently unavailable).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return;
    };
    let lib = PathBuf::from(libtorch).join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg-bins=-ltorch_cuda");
        println!("cargo:rustc-link-arg-bins=-Wl,--as-needed");
    }
}
