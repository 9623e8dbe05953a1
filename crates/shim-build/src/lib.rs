//! For build scripts: compiles a crate's C++ shim (the functions tch 0.24 does not bind:
//! autocast, determinism switches and fused optimizer steps in `selfsup-core`, c10d's store and
//! the differentiable collectives in `selfsup-dist`) against the headers of the libtorch that
//! `LIBTORCH` names, as `torch-sys` links it. Every shim also sees this crate's `include/`,
//! where `selfsup/guard.h` keeps C++ exceptions from crossing the C boundary.
//!
//! Reads `LIBTORCH` (the torch install, as for `torch-sys`; `cargo xtask env` prints it),
//! optionally `LIBTORCH_INCLUDE` (a different header root), `LIBTORCH_CXX11_ABI` (default 1) and
//! `SELFSUP_SHIM_SANITIZE` (`address`: the shims under AddressSanitizer, `cargo xtask sanitize`).
use std::path::PathBuf;

/// The libtorch install `LIBTORCH_INCLUDE` or `LIBTORCH` names (the folder holding
/// `include/` and `lib/`).
///
/// # Panics
/// When neither is set.
pub fn libtorch_root(krate: &str) -> PathBuf {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    let root = std::env::var("LIBTORCH_INCLUDE").or_else(|_| std::env::var("LIBTORCH"));
    let Ok(root) = root else {
        panic!(
            "{krate}: LIBTORCH is not set; build through `cargo xtask` or set the exports that \
             `cargo xtask env` prints"
        );
    };
    PathBuf::from(root)
}

/// A C++ shim of crate `krate`: `sources` (paths relative to the crate, `.cpp` compiled, other
/// files only watched for changes) into the static library `lib`; `probe` is a header (relative
/// to libtorch's `include/`) that must exist, so that a wrong `LIBTORCH` fails here with a
/// message naming it rather than deep in the compiler's output.
///
/// # Panics
/// When `LIBTORCH` is not set or lacks `probe` (a build script's way of failing).
pub fn compile(krate: &str, probe: &str, sources: &[&str], lib: &str) {
    compile_with(krate, probe, sources, lib, &[], &[]);
}

/// [`compile`] with more include folders (searched after libtorch's) and preprocessor
/// definitions (`NAME` or `NAME=VALUE`).
///
/// # Panics
/// As [`compile`], and when an include folder is missing (named in the message).
pub fn compile_with(
    krate: &str,
    probe: &str,
    sources: &[&str],
    lib: &str,
    includes: &[PathBuf],
    defines: &[&str],
) {
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let own = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include");
    println!("cargo:rerun-if-changed={}", own.join("selfsup/guard.h").display());
    for s in sources {
        println!("cargo:rerun-if-changed={s}");
    }
    let include = libtorch_root(krate).join("include");
    if !include.join(probe).exists() {
        panic!(
            "{krate}: {} has no {probe}; LIBTORCH must point at a torch install with its \
             headers (the folder holding include/ and lib/)",
            include.display()
        );
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(&own)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // As libtorch's release builds: some of its classes have members only without NDEBUG
        // (`RecordFunction::inputs_valid_`), so a shim compiled without it reads them at other
        // offsets than libtorch writes them, and its debug-only asserts check flags libtorch
        // never sets (the operator counts' `RecordFunction::inputs()` failed for most operators).
        .flag("-DNDEBUG")
        // ATen's `at::parallel_for` is a header template over `#pragma omp parallel`: without
        // OpenMP it compiles to a serial loop. libtorch runs on GNU OpenMP, so the shims use
        // the same runtime (one `libgomp.so.1` in the process, libtorch's own).
        .flag("-fopenmp")
        // No fused multiply-add unless written: GCC contracts `a * b + c` where the target has
        // FMA (the AVX-512 clones of the kernels) and not elsewhere, which would make a
        // kernel's bits depend on the instruction set it was dispatched to.
        .flag("-ffp-contract=off")
        // GCC notes, on every function taking or returning a 32-byte vector type
        // (`csrc/max_pool.cpp`'s eight lanes), how baseline x86-64 would pass one; those
        // functions are always inlined into their per-instruction-set clones, and the pragma
        // that should silence the note does not in GCC 12.
        .flag("-Wno-psabi")
        .warnings(false);
    for dir in includes {
        if !dir.is_dir() {
            panic!("{krate}: include folder {} is missing", dir.display());
        }
        build.include(dir);
    }
    for d in defines {
        build.flag(format!("-D{d}"));
    }
    let sanitize = sanitizer();
    if let Some(flag) = &sanitize {
        build.flag(flag).flag("-fno-omit-frame-pointer");
    }
    for s in sources.iter().filter(|s| s.ends_with(".cpp")) {
        build.file(s);
    }
    build.compile(lib);
    println!("cargo:rustc-link-lib=dylib=gomp");
    if sanitize.is_some() {
        println!("cargo:rustc-link-lib=dylib=asan");
    }
}

/// `-fsanitize=address` where `SELFSUP_SHIM_SANITIZE=address`: the shims' C++ checked by
/// AddressSanitizer (every load and store of the kernels against the bounds of libtorch's
/// allocations, which reach `malloc`), for `cargo xtask sanitize`. libtorch itself is not
/// instrumented; the runtime must come first in the process (`LD_PRELOAD` of GCC's
/// `libasan.so`, which `cargo xtask sanitize` sets).
///
/// # Panics
/// On another value (a build script's way of failing), naming it.
fn sanitizer() -> Option<String> {
    println!("cargo:rerun-if-env-changed=SELFSUP_SHIM_SANITIZE");
    match std::env::var("SELFSUP_SHIM_SANITIZE").ok()?.as_str() {
        "" => None,
        "address" => Some("-fsanitize=address".to_owned()),
        other => panic!("SELFSUP_SHIM_SANITIZE={other}: expected `address` or nothing"),
    }
}
