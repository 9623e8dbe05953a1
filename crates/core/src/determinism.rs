//! Bit-for-bit reproducibility on the CPU whatever the thread count, and the CUDA switches.
//!
//! libtorch's forward passes on the CPU give the same bits at any thread count, but oneDNN's
//! convolution backward splits the weight-gradient sum across threads. With
//! `train.deterministic = true` (the default) the trainer turns oneDNN off, so a seed
//! reproduces a run bit for bit at 1, 2 or 16 threads. The convolutions then run oneDNN's
//! kernels all the same, single-threaded on fixed pieces of 16 images inside one parallel loop,
//! their weight gradients summed in the pieces' order ([`crate::encoders::conv::conv_det`]):
//! the encoders', and the heads', decoders' (transposed too) and discriminator's built with
//! [`crate::encoders::conv::Conv2d::head`], [`crate::encoders::conv::ConvTranspose2d`] or run by
//! [`crate::encoders::conv::convolution`]; a batch under 32 images is two halves. selfsup's own
//! CPU convolutions (Winograd, the matrix products) stay off. Measured on 2 cores
//! of an AMD EPYC (Zen 4), a step deterministic against not: RotNet's cpu profile 93-100 ms
//! against 70-72 in fp32, 76-81 against 32 in channels-last bf16; SimCLR's 204-215 against
//! 163-168, 112 against 69 (with libtorch's reference convolution, as until 2026-12-06:
//! 623, 467, 871-910 and 1,183 ms). Without ATen's NaN fill (below), RotNet's 80.5 against
//! 72.4-74.6 in fp32; in channels-last bf16, with the pieces' outputs channels-last from the
//! first layer on (until 2026-12-07 they followed the NCHW images), 39.8-55.3 against
//! 31.4-40.2. With the heads', decoders' and discriminator's
//! convolutions on the pieces as well (since 2026-12-07), the cpu-profile steps of the context
//! encoder, the denoising autoencoder, split-brain and colorization take 1.06-1.20× their time
//! without determinism, against 4.20, 2.12, 2.24 and 1.49× on the reference kernels (the context
//! encoder's 1,593 ms → 388). The smallest maps' dense products (relative patch's conv2 to
//! conv5), the fully connected layers ([`crate::encoders::Linear`], and
//! [`crate::encoders::affine`] for the evaluation's probes) and the heads' products run
//! on [`crate::encoders::conv::mm_det`]'s fixed blocks (MKL's own product depends on the thread
//! count; libtorch's bf16 product with oneDNN off is its slow reference loop), and the batch
//! norms outside the fused batch norm + ReLU on libtorch's NCHW kernels
//! ([`crate::encoders::batch_norm::deterministic_layout`]: its channels-last kernels sum in
//! per-thread parts), both since 2026-12-07. So do MoCo's, SimCLR's and instance
//! discrimination's similarities ([`crate::encoders::product`],
//! [`crate::encoders::batched_product`]: MKL's gradients of these depended on the thread count on
//! a Xeon with AMX), and losses that
//! sum more than 32,768 values take [`crate::reduce::sum_all`]'s fixed rows (libtorch sums those
//! in per-thread parts). Element-wise ops are the same bits at any thread count only where
//! libtorch's scalar and vector code agree: its last values of each thread's range take the
//! scalar code, and the Lab conversion's `pow` differed at 3 threads (`selfsup_lab` now runs it
//! on pieces one thread takes whole). With `deterministic = false` a run is still
//! bit-for-bit reproducible at the same thread count (which the saved config records).
//!
//! ATen's deterministic implementations (`setDeterministicAlgorithms`, set below on the CPU too;
//! there they change a few index and scatter kernels, such as `index_select`'s backward pass)
//! come with a debugging aid, on by default in PyTorch: every tensor an op creates
//! uninitialized (`empty`) is first filled with NaN, so that a kernel reading memory it never
//! wrote gives the same bits every time. A deterministic CPU run turns that fill off (since
//! 2026-12-07; `fill_uninitialized_memory` in `determinism.json`): it cost a full write of every
//! new activation and gradient, and the tests that compare every weight across thread counts
//! and across a resume pass without it. Measured on 2 cores of an AMD EPYC
//! (Zen 4), the cpu-profile steps deterministic with the fill against without, ms:
//! RotNet 120 → 101, SimCLR 227 → 168, MoCo 392 → 268 (see `bench/README.md`, "Deterministic runs:
//! ATen's NaN fill, and the smallest maps as products"). CUDA runs keep it, as PyTorch does.
//!
//! On CUDA ([`apply`]) `deterministic = true` makes cuDNN pick deterministic algorithms with its
//! autotuner off, switches ATen to its deterministic implementations where it has them (an op
//! without one logs a warning rather than failing) and sets `CUBLAS_WORKSPACE_CONFIG` to
//! `:4096:8` unless it is set. What that promises: the same seed, code, GPU model, driver and
//! libtorch give the same bits; across GPU models, drivers or libtorch versions, no. With
//! `deterministic = false`, cuDNN's autotuner is on (`benchmark`).
//!
//! TF32 (fp32 tensors multiplied on the tensor cores with a 10-bit mantissa, sums in fp32) is a
//! matter of precision, not of reproducibility: a TF32 kernel gives the same bits every time as
//! an fp32 one does. It has its own setting, `train.tf32` ([`Tf32`]): by default in cuDNN's
//! convolutions and not in cuBLAS's matmuls, which is PyTorch's own default (also under
//! `torch.backends.cudnn.deterministic = True`), `"off"` for fp32 everywhere (what
//! `deterministic = true` implied until 2026-12-06: the paper configs were then compute-bound on
//! the FP32 units of an H200, 3.3× slower than the bf16 path), `"all"` for matmuls too. It has no
//! effect on the CPU. The trainer records the switches it set in the run folder's
//! `determinism.json`.
use serde::{Deserialize, Serialize};
use std::os::raw::c_int;

extern "C" {
    fn selfsup_set_mkldnn_enabled(enabled: c_int) -> c_int;
    fn selfsup_mkldnn_enabled() -> c_int;
    fn selfsup_set_cuda_determinism(
        deterministic: c_int,
        benchmark: c_int,
        tf32_cudnn: c_int,
        tf32_cublas: c_int,
        fill_uninitialized: c_int,
    ) -> c_int;
    fn selfsup_get_cuda_determinism(
        cudnn_deterministic: *mut c_int,
        cudnn_benchmark: *mut c_int,
        algorithms: *mut c_int,
        tf32_cublas: *mut c_int,
        tf32_cudnn: *mut c_int,
        fill_uninitialized: *mut c_int,
    ) -> c_int;
}

/// Where CUDA runs fp32 tensors' products as TF32 (`train.tf32`: `"convolutions"`, `"off"`,
/// `"all"`). Default `convolutions`, PyTorch's default. No effect on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tf32 {
    /// fp32 everywhere: cuDNN's convolutions and cuBLAS's matmuls on the FP32 units.
    Off,
    /// TF32 in cuDNN's convolutions, fp32 in cuBLAS's matmuls (PyTorch's default).
    #[default]
    Convolutions,
    /// TF32 in both.
    All,
}

impl Tf32 {
    /// Whether cuDNN's convolutions may run in TF32.
    pub fn cudnn(self) -> bool {
        self != Tf32::Off
    }

    /// Whether cuBLAS's matmuls may run in TF32.
    pub fn cublas(self) -> bool {
        self == Tf32::All
    }

    /// Whether this is the default (configs leave it out then).
    pub fn is_default(&self) -> bool {
        *self == Tf32::default()
    }
}

/// The determinism switches in force, as recorded in a run's `determinism.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switches {
    /// `train.deterministic` as configured.
    pub deterministic: bool,
    /// oneDNN kernels on (CPU; off when deterministic).
    pub mkldnn: bool,
    /// cuDNN restricted to deterministic algorithms.
    pub cudnn_deterministic: bool,
    /// cuDNN's autotuner.
    pub cudnn_benchmark: bool,
    /// ATen's deterministic implementations (warning on ops without one).
    pub deterministic_algorithms: bool,
    /// TF32 allowed in cuBLAS matmuls.
    pub tf32_cublas: bool,
    /// TF32 allowed in cuDNN convolutions.
    pub tf32_cudnn: bool,
    /// `CUBLAS_WORKSPACE_CONFIG` as the process sees it.
    pub cublas_workspace_config: Option<String>,
    /// Whether new tensors an op leaves uninitialized are filled with NaN first (ATen does so
    /// under its deterministic implementations unless told not to): in deterministic CUDA runs,
    /// not in deterministic CPU runs (see the module docs). Absent (false) in records written
    /// before 2026-12-07.
    #[serde(default)]
    pub fill_uninitialized_memory: bool,
}

/// The switches in force now.
///
/// # Errors
/// When libtorch throws reading them (never seen).
pub fn switches(deterministic: bool) -> crate::Result<Switches> {
    let mut v = [0 as c_int; 6];
    let [a, b, c, d, e, f] = &mut v;
    // SAFETY: six valid out-pointers; the shim catches every C++ exception.
    let rc = unsafe { selfsup_get_cuda_determinism(a, b, c, d, e, f) };
    if rc != 0 {
        return Err(crate::CoreError::Config("reading libtorch's determinism switches".into()));
    }
    let mkldnn = mkldnn_enabled();
    Ok(Switches {
        deterministic,
        mkldnn,
        cudnn_deterministic: v[0] == 1,
        cudnn_benchmark: v[1] == 1,
        deterministic_algorithms: v[2] == 1,
        tf32_cublas: v[3] == 1,
        tf32_cudnn: v[4] == 1,
        cublas_workspace_config: std::env::var("CUBLAS_WORKSPACE_CONFIG").ok(),
        fill_uninitialized_memory: v[5] == 1,
    })
}

/// Sets every switch of `train.deterministic` and `train.tf32` for a run on `device` (see the
/// module docs) and returns them as now in force.
///
/// # Errors
/// When libtorch throws setting them.
pub fn apply(deterministic: bool, tf32: Tf32, device: tch::Device) -> crate::Result<Switches> {
    set_mkldnn_enabled(!deterministic);
    if deterministic && std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        // Before cuBLAS's first handle: the trainer calls this before building anything.
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
    }
    let d = c_int::from(deterministic);
    let (cudnn, cublas) = (c_int::from(tf32.cudnn()), c_int::from(tf32.cublas()));
    let fill = c_int::from(deterministic && device.is_cuda());
    // SAFETY: a plain call into the shim, which catches every C++ exception.
    if unsafe { selfsup_set_cuda_determinism(d, 1 - d, cudnn, cublas, fill) } != 0 {
        return Err(crate::CoreError::Config("setting libtorch's determinism switches".into()));
    }
    switches(deterministic)
}

/// Whether `a` and `b` hold the same bits: the same dtype and sizes, and every element's bit
/// pattern equal (so `0.0` and `-0.0` differ and a NaN equals itself, where comparing values
/// would not tell). The tests across thread counts and resumes compare with it.
pub fn same_bits(a: &tch::Tensor, b: &tch::Tensor) -> bool {
    use tch::Kind;
    if a.kind() != b.kind() || a.size() != b.size() {
        return false;
    }
    let bits = match a.kind().elt_size_in_bytes() {
        1 => Kind::Uint8,
        2 => Kind::Int16,
        4 => Kind::Int,
        _ => Kind::Int64,
    };
    a.view_dtype(bits).equal(&b.view_dtype(bits))
}

/// Whether oneDNN (mkldnn) kernels are enabled: off in a deterministic CPU run ([`apply`]).
pub fn mkldnn_enabled() -> bool {
    // SAFETY: a plain call into the shim, which catches every C++ exception.
    unsafe { selfsup_mkldnn_enabled() == 1 }
}

/// Enables or disables oneDNN (mkldnn) kernels process-wide; returns the previous setting.
pub fn set_mkldnn_enabled(enabled: bool) -> bool {
    // SAFETY: a plain call into the shim, which catches every C++ exception.
    let prev = unsafe { selfsup_set_mkldnn_enabled(c_int::from(enabled)) };
    prev == 1
}

#[cfg(test)]
mod tests {
    use super::same_bits;
    use tch::{Kind, Tensor};

    #[test]
    fn same_bits_compares_bit_patterns_of_any_width() {
        let a = Tensor::from_slice(&[0.0f32, f32::NAN, 1.5]);
        assert!(same_bits(&a, &a.copy()), "a NaN is its own bits");
        assert!(!same_bits(&a, &Tensor::from_slice(&[-0.0f32, f32::NAN, 1.5])), "-0.0");
        assert!(!same_bits(&a, &a.to_kind(Kind::Double)), "another dtype");
        assert!(!same_bits(&a, &a.narrow(0, 0, 2)), "other sizes");
        let h = a.to_kind(Kind::BFloat16);
        assert!(same_bits(&h, &h.copy()));
        assert!(!same_bits(&h, &(&h * 1.01).to_kind(Kind::BFloat16)));
        let d = a.to_kind(Kind::Double);
        assert!(same_bits(&d, &d.copy()));
    }
}
