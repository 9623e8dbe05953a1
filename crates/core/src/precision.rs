//! Numeric precision and memory format as training settings.
//!
//! - [`Precision::Bf16`] runs the forward pass under autocast with bfloat16, as
//!   `torch.autocast(device_type, dtype=torch.bfloat16)` does: matmuls and convolutions run in
//!   bf16, reductions and losses stay in fp32, parameters and their gradients stay fp32 (no loss
//!   scaling is needed with bf16). tch 0.24's own `tch::autocast` only toggles CUDA autocast with
//!   its default float16, so both devices go through a small C++ shim (`csrc/autocast.cpp`,
//!   compiled by `build.rs`) over `at::autocast`'s per-device API.
//! - Losses and similarity matrices belong in fp32: [`without_autocast`] turns autocast off
//!   for a block inside the autocast region, as `torch.autocast(device_type, enabled=False)`
//!   does (the contrastive logits, the memory-bank similarities).
//! - On the CPU, bf16 only pays off with hardware support (AMX or AVX512-BF16); elsewhere
//!   libtorch emulates it and is slower than fp32, so [`Precision::check`] refuses it.
//! - Channels-last (NHWC strides on NCHW tensors) lets oneDNN and cuDNN pick their fastest
//!   convolution kernels: [`set_channels_last`] converts the 4-d weights of a var store in place
//!   and [`to_channels_last`] converts input batches.
use std::os::raw::c_int;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::{CoreError, Result};

/// Arithmetic precision of the forward pass (`"fp32"` or `"bf16"` in configs). Default fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in float32.
    #[default]
    Fp32,
    /// bfloat16 autocast for the forward pass; float32 parameters, gradients and optimizer.
    Bf16,
}

impl Precision {
    /// Checks that `device` runs this precision at full speed: bf16 needs CUDA, or a CPU with
    /// AMX or AVX512-BF16 (see [`cpu_supports_bf16`]). The error names the setting.
    pub fn check(self, device: Device) -> Result<()> {
        match (self, device) {
            (Precision::Fp32, _) => Ok(()),
            (Precision::Bf16, Device::Cuda(i)) => {
                check_cuda_bf16(i, crate::device::cuda_capability(i))
            }
            (Precision::Bf16, Device::Cpu) if cpu_supports_bf16() => Ok(()),
            (Precision::Bf16, Device::Cpu) => Err(CoreError::Config(
                "train.precision = \"bf16\" needs a CPU with AMX or AVX512-BF16 (this one has \
                 neither, and emulated bf16 is slower than fp32); set train.precision = \"fp32\""
                    .to_owned(),
            )),
            (Precision::Bf16, other) => Err(CoreError::Config(format!(
                "train.precision = \"bf16\" is supported on cpu and cuda, not {other:?}"
            ))),
        }
    }
}

/// bf16 on CUDA device `index` of compute capability `capability`: needs 8.0 (Ampere) or newer;
/// an unknown capability (the driver API unreadable) is let through.
pub fn check_cuda_bf16(index: usize, capability: Option<(i32, i32)>) -> Result<()> {
    match capability {
        Some((major, minor)) if major < 8 => Err(CoreError::Config(format!(
            "train.precision = \"bf16\" needs a GPU of compute capability 8.0 (Ampere) or \
             newer; cuda:{index} is {major}.{minor}: set train.precision = \"fp32\""
        ))),
        _ => Ok(()),
    }
}

/// Whether this CPU computes bfloat16 natively: `/proc/cpuinfo` lists `amx_bf16` or
/// `avx512_bf16` (false where that file does not exist). Read once per process.
pub fn cpu_supports_bf16() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|info| cpuinfo_has_bf16(&info))
            .unwrap_or(false)
    })
}

/// Whether this CPU has AMX for bfloat16: `/proc/cpuinfo` lists `amx_bf16` (false where that
/// file does not exist). Read once per process.
pub fn cpu_has_amx() -> bool {
    static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AMX.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|info| cpuinfo_has_any(&info, &["amx_bf16"]))
            .unwrap_or(false)
    })
}

/// Whether a `/proc/cpuinfo` text lists a bf16 instruction set among its flags.
fn cpuinfo_has_bf16(info: &str) -> bool {
    cpuinfo_has_any(info, &["amx_bf16", "avx512_bf16"])
}

/// Whether a `/proc/cpuinfo` text lists one of `flags` among its flags.
fn cpuinfo_has_any(info: &str, flags: &[&str]) -> bool {
    info.lines()
        .filter(|line| line.starts_with("flags"))
        .flat_map(|line| line.split_whitespace())
        .any(|flag| flags.contains(&flag))
}

extern "C" {
    fn selfsup_autocast_get(device: c_int, enabled: *mut c_int, dtype: *mut c_int) -> c_int;
    fn selfsup_autocast_enter_bf16(
        device: c_int,
        prev_enabled: *mut c_int,
        prev_dtype: *mut c_int,
    ) -> c_int;
    fn selfsup_autocast_enter_disabled(
        device: c_int,
        prev_enabled: *mut c_int,
        prev_dtype: *mut c_int,
    ) -> c_int;
    fn selfsup_autocast_exit(device: c_int, prev_enabled: c_int, prev_dtype: c_int) -> c_int;
}

/// The shim's device code, or `None` for devices without autocast support here.
fn device_code(device: Device) -> Option<c_int> {
    match device {
        Device::Cpu => Some(0),
        Device::Cuda(_) => Some(1),
        _ => None,
    }
}

/// Restores the autocast state saved on entry, also when the closure panics.
struct AutocastGuard {
    device: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: plain integers in; the shim catches every C++ exception.
        let rc = unsafe { selfsup_autocast_exit(self.device, self.prev_enabled, self.prev_dtype) };
        if rc != 0 && !std::thread::panicking() {
            panic!("libtorch failed to leave autocast");
        }
    }
}

/// Runs `f` under autocast for `device` at `precision`: with [`Precision::Bf16`] on the CPU or
/// CUDA, eligible ops (convolutions, matmuls, linear layers) compute in bfloat16 while
/// parameters stay float32; with [`Precision::Fp32`], or on other devices, `f` runs unchanged.
///
/// Autocast is per thread and nests; the previous state (flag and dtype) is restored on exit,
/// and the cast cache is cleared when the outermost level ends, as `torch.autocast` does. Run
/// the backward pass outside, as PyTorch recommends. This does not check hardware support:
/// call [`Precision::check`] once when a run starts.
///
/// # Panics
/// If libtorch throws while toggling the autocast flags (it does not for CPU and CUDA).
pub fn autocast<T>(device: Device, precision: Precision, f: impl FnOnce() -> T) -> T {
    let Some(code) = device_code(device).filter(|_| precision == Precision::Bf16) else {
        return f();
    };
    let (mut prev_enabled, mut prev_dtype) = (0, 0);
    // SAFETY: the out-pointers are valid for writes; the shim catches every C++ exception.
    let rc = unsafe { selfsup_autocast_enter_bf16(code, &mut prev_enabled, &mut prev_dtype) };
    assert_eq!(rc, 0, "libtorch failed to enter autocast");
    let _guard = AutocastGuard { device: code, prev_enabled, prev_dtype };
    f()
}

/// Runs `f` with autocast turned off for `device`, as `torch.autocast(device_type,
/// enabled=False)` does: inside an [`autocast`] region, ops on `device` then compute in their
/// inputs' precision, so a similarity matrix or loss of fp32 inputs is computed in fp32 (cast
/// bf16 inputs with `to_kind(Kind::Float)` first). The previous state is restored on exit, also
/// when `f` panics. Outside autocast (or on devices other than the CPU and CUDA) `f` runs
/// unchanged, without touching libtorch's autocast state.
///
/// # Panics
/// If libtorch throws while toggling the autocast flags (it does not for CPU and CUDA).
pub fn without_autocast<T>(device: Device, f: impl FnOnce() -> T) -> T {
    let Some(code) = device_code(device) else {
        return f();
    };
    let (mut enabled, mut dtype) = (0, 0);
    // SAFETY: the out-pointers are valid for writes; the shim catches every C++ exception.
    let rc = unsafe { selfsup_autocast_get(code, &mut enabled, &mut dtype) };
    assert_eq!(rc, 0, "libtorch failed to report autocast");
    if enabled == 0 {
        return f();
    }
    let (mut prev_enabled, mut prev_dtype) = (0, 0);
    // SAFETY: as above.
    let rc = unsafe { selfsup_autocast_enter_disabled(code, &mut prev_enabled, &mut prev_dtype) };
    assert_eq!(rc, 0, "libtorch failed to leave autocast for an fp32 block");
    let _guard = AutocastGuard { device: code, prev_enabled, prev_dtype };
    f()
}

/// The autocast dtype in force for `device` on this thread, or `None` when autocast is off
/// (always `None` for devices other than the CPU and CUDA).
pub fn autocast_dtype(device: Device) -> Result<Option<Kind>> {
    let Some(code) = device_code(device) else {
        return Ok(None);
    };
    let (mut enabled, mut dtype) = (0, 0);
    // SAFETY: the out-pointers are valid for writes; the shim catches every C++ exception.
    let rc = unsafe { selfsup_autocast_get(code, &mut enabled, &mut dtype) };
    if rc != 0 {
        return Err(CoreError::Config(format!("libtorch failed to report autocast on {device:?}")));
    }
    if enabled == 0 {
        return Ok(None);
    }
    let kind = match dtype {
        5 => Kind::Half,
        6 => Kind::Float,
        7 => Kind::Double,
        15 => Kind::BFloat16,
        other => {
            return Err(CoreError::Config(format!(
                "autocast on {device:?} uses scalar type {other}, which selfsup does not know"
            )))
        }
    };
    Ok(Some(kind))
}

/// A 4-d tensor with channels-last strides, exactly those PyTorch gives
/// ([`has_channels_last_strides`]; the same values and NCHW shape, NHWC layout in memory);
/// tensors of other ranks are returned as they are (a shallow clone). Differentiable.
///
/// # Shapes
/// `(N, C, H, W)` in and out.
pub fn to_channels_last(t: &Tensor) -> Result<Tensor> {
    if t.dim() != 4 {
        return Ok(t.shallow_clone());
    }
    let x = t.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?;
    // `contiguous` leaves a tensor alone whose size-1 dimensions have other strides (a
    // one-channel batch, a 1 × 1 weight): the values already lie in NHWC order, and only those
    // strides, which address nothing, are set to PyTorch's (see `has_channels_last_strides`).
    let size = x.size();
    let strides = channels_last_strides(&size);
    if x.stride() == strides {
        return Ok(x);
    }
    Ok(x.f_as_strided(size.as_slice(), strides.as_slice(), None)?)
}

/// The channels-last strides of a 4-d `(N, C, H, W)` size: `(H*W*C, 1, W*C, C)`.
fn channels_last_strides(size: &[i64]) -> [i64; 4] {
    let (c, h, w) = (size[1], size[2], size[3]);
    [h * w * c, 1, w * c, c]
}

/// The rows `index` of `t` (`index_select` along dim 0), laid out as `t` is: libtorch's
/// `index_select` returns a contiguous (NCHW) tensor whatever its input, which would send
/// everything after it down the NCHW kernels of a channels-last run; a channels-last `t` is
/// gathered in its NHWC view instead (one copy either way).
///
/// # Shapes
/// `t`: `(N, ...)`, `index`: `(K,)` i64 → `(K, ...)`.
pub fn select_rows(t: &Tensor, index: &Tensor) -> Result<Tensor, tch::TchError> {
    if !is_channels_last(t) || t.is_contiguous() {
        return t.f_index_select(0, index);
    }
    t.f_permute([0, 2, 3, 1])?.f_index_select(0, index)?.f_permute([0, 3, 1, 2])
}

/// Whether a 4-d tensor is laid out channels-last (strides `(H*W*C, 1, W*C, C)`, ignoring
/// dimensions of size 1, whose stride does not matter).
pub fn is_channels_last(t: &Tensor) -> bool {
    if t.dim() != 4 {
        return false;
    }
    let size = t.size();
    let expected = channels_last_strides(&size);
    t.stride().iter().zip(expected).zip(&size).all(|((&s, e), &n)| n == 1 || s == e)
}

/// Whether a 4-d tensor has exactly the strides [`to_channels_last`] (and PyTorch's
/// `.to(memory_format=torch.channels_last)`) give it, `(H*W*C, 1, W*C, C)`, size-1 dimensions
/// included. [`is_channels_last`] ignores those, as the layout of the values does; libtorch
/// does not: a weight with one input channel `(O, 1, k, k)` or a 1 × 1 one `(O, I, 1, 1)` left
/// with its contiguous strides is NCHW to `suggest_memory_format`, so a convolution with it
/// and an input of one channel runs and returns NCHW, and the weight's gradient comes back
/// with channels-last strides other than the weight's own (which keeps the parameter off the
/// fused optimizer step).
pub fn has_channels_last_strides(t: &Tensor) -> bool {
    if t.dim() != 4 {
        return false;
    }
    t.stride() == channels_last_strides(&t.size())
}

/// Converts every 4-d variable of `vs` (convolution weights) to channels-last in place, to
/// exactly the strides PyTorch gives them ([`has_channels_last_strides`]), keeping the
/// variables themselves (the optimizer and the modules hold the same tensors). Returns how many
/// were converted. Call it before building the optimizer, so that its buffers (created with
/// the parameters' layout) match.
pub fn set_channels_last(vs: &nn::VarStore) -> Result<usize> {
    let _no_grad = tch::no_grad_guard();
    let mut converted = 0;
    for (_, mut var) in vs.variables() {
        if var.dim() == 4 && !has_channels_last_strides(&var) {
            let nhwc = to_channels_last(&var)?;
            var.f_set_data(&nhwc)?;
            converted += 1;
        }
    }
    Ok(converted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{Module, OptimizerConfig as _};

    #[test]
    fn serde_names_and_default() {
        assert_eq!(Precision::default(), Precision::Fp32);
        assert_eq!(serde_json::to_string(&Precision::Bf16).unwrap(), "\"bf16\"");
        let p: Precision = serde_json::from_str("\"fp32\"").unwrap();
        assert_eq!(p, Precision::Fp32);
        assert!(serde_json::from_str::<Precision>("\"fp16\"").is_err());
    }

    #[test]
    fn cpuinfo_flags_are_parsed() {
        assert!(cpuinfo_has_bf16("processor: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n"));
        assert!(cpuinfo_has_bf16("flags\t\t: fpu avx512f avx512_bf16\n"));
        assert!(!cpuinfo_has_bf16("flags\t\t: fpu avx avx2 fma\nbugs\t\t: amx_bf16\n"));
    }

    #[test]
    fn bf16_on_cuda_needs_ampere() {
        let e = check_cuda_bf16(1, Some((7, 5))).unwrap_err().to_string();
        assert!(e.contains("cuda:1 is 7.5") && e.contains("8.0"), "{e}");
        assert!(check_cuda_bf16(0, Some((8, 0))).is_ok());
        assert!(check_cuda_bf16(0, Some((9, 0))).is_ok());
        assert!(check_cuda_bf16(0, None).is_ok());
    }

    #[test]
    fn bf16_check_follows_the_cpu() {
        assert!(Precision::Fp32.check(Device::Cpu).is_ok());
        let res = Precision::Bf16.check(Device::Cpu);
        if cpu_supports_bf16() {
            assert!(res.is_ok());
        } else {
            let msg = res.unwrap_err().to_string();
            assert!(msg.contains("train.precision"), "{msg}");
            assert!(!msg.contains('\n'));
        }
    }

    #[test]
    fn cpu_autocast_casts_inside_and_restores_after() {
        let a = Tensor::randn([8, 16], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([16, 4], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([5, 3, 3, 3], (Kind::Float, Device::Cpu));
        assert_eq!(autocast_dtype(Device::Cpu).unwrap(), None);
        let (mm, conv, sum, nested) = autocast(Device::Cpu, Precision::Bf16, || {
            assert_eq!(autocast_dtype(Device::Cpu).unwrap(), Some(Kind::BFloat16));
            let mm = a.matmul(&b);
            let conv = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
            // Ops outside autocast's lower-precision list keep fp32 inputs in fp32.
            let sum = a.sum(Kind::Float);
            let nested = autocast(Device::Cpu, Precision::Bf16, || a.matmul(&b).kind());
            assert_eq!(autocast_dtype(Device::Cpu).unwrap(), Some(Kind::BFloat16));
            (mm, conv, sum, nested)
        });
        assert_eq!(mm.kind(), Kind::BFloat16);
        assert_eq!(conv.kind(), Kind::BFloat16);
        assert_eq!(sum.kind(), Kind::Float);
        assert_eq!(nested, Kind::BFloat16);
        assert_eq!(autocast_dtype(Device::Cpu).unwrap(), None);
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        // Fp32 leaves everything alone.
        let k = autocast(Device::Cpu, Precision::Fp32, || a.matmul(&b).kind());
        assert_eq!(k, Kind::Float);
        // bf16 result is close to the fp32 one.
        let rel = (mm.to_kind(Kind::Float) - a.matmul(&b)).norm().double_value(&[])
            / a.matmul(&b).norm().double_value(&[]);
        assert!(rel < 1e-2, "relative error {rel}");
    }

    #[test]
    fn without_autocast_computes_in_fp32_inside_autocast_and_restores_bf16() {
        let a = Tensor::randn([8, 16], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([16, 4], (Kind::Float, Device::Cpu));
        let exact = a.matmul(&b);
        let (inside, before, after) = autocast(Device::Cpu, Precision::Bf16, || {
            let before = a.matmul(&b).kind();
            let inside = without_autocast(Device::Cpu, || {
                assert_eq!(autocast_dtype(Device::Cpu).unwrap(), None);
                // Nested autocast inside the fp32 block turns bf16 back on, and leaves again.
                let nested = autocast(Device::Cpu, Precision::Bf16, || a.matmul(&b).kind());
                assert_eq!(nested, Kind::BFloat16);
                assert_eq!(autocast_dtype(Device::Cpu).unwrap(), None);
                a.matmul(&b)
            });
            assert_eq!(autocast_dtype(Device::Cpu).unwrap(), Some(Kind::BFloat16));
            (inside, before, a.matmul(&b).kind())
        });
        assert_eq!((before, after), (Kind::BFloat16, Kind::BFloat16));
        assert_eq!(inside.kind(), Kind::Float);
        assert!(inside.allclose(&exact, 1e-6, 1e-6, false), "the fp32 block runs in fp32");
        assert_eq!(autocast_dtype(Device::Cpu).unwrap(), None);
        // Harmless outside autocast, and on devices without autocast.
        let k = without_autocast(Device::Cpu, || a.matmul(&b).kind());
        assert_eq!(k, Kind::Float);
        assert_eq!(autocast_dtype(Device::Cpu).unwrap(), None);
        assert_eq!(without_autocast(Device::Mps, || 3), 3);
        // A panic inside the fp32 block restores bf16 autocast.
        autocast(Device::Cpu, Precision::Bf16, || {
            let res = std::panic::catch_unwind(|| {
                without_autocast(Device::Cpu, || panic!("inside"));
            });
            assert!(res.is_err());
            assert_eq!(autocast_dtype(Device::Cpu).unwrap(), Some(Kind::BFloat16));
        });
        assert_eq!(autocast_dtype(Device::Cpu).unwrap(), None);
    }

    #[test]
    fn autocast_state_is_restored_after_a_panic() {
        let res = std::panic::catch_unwind(|| {
            autocast(Device::Cpu, Precision::Bf16, || panic!("inside"));
        });
        assert!(res.is_err());
        assert_eq!(autocast_dtype(Device::Cpu).unwrap(), None);
    }

    /// A tiny conv net: conv 3→8, relu, conv 8→8, mean-pool, linear 8→4.
    fn tiny_net(p: &nn::Path) -> impl Module {
        let c = nn::ConvConfig { padding: 1, ..Default::default() };
        nn::seq()
            .add(nn::conv2d(p / "c1", 3, 8, 3, c))
            .add_fn(|x| x.relu())
            .add(nn::conv2d(p / "c2", 8, 8, 3, c))
            .add_fn(|x| x.relu().mean_dim([2, 3].as_slice(), false, Kind::Float))
            .add(nn::linear(p / "fc", 8, 4, Default::default()))
    }

    #[test]
    fn bf16_loss_is_close_and_gradients_reach_fp32_parameters() {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = tiny_net(&vs.root());
        let x = Tensor::randn([6, 3, 12, 12], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1]);
        let loss_at = |p: Precision| {
            autocast(Device::Cpu, p, || net.forward(&x).cross_entropy_for_logits(&y))
        };
        let fp32 = loss_at(Precision::Fp32);
        let bf16 = loss_at(Precision::Bf16);
        assert_eq!(fp32.kind(), Kind::Float);
        assert_eq!(bf16.kind(), Kind::Float, "cross entropy runs in fp32 under autocast");
        let (l32, l16) = (fp32.double_value(&[]), bf16.double_value(&[]));
        assert!(((l16 - l32) / l32).abs() < 2e-2, "fp32 {l32} vs bf16 {l16}");

        let mut opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
        opt.zero_grad();
        bf16.backward();
        for (name, var) in vs.variables() {
            assert_eq!(var.kind(), Kind::Float, "{name}");
            let g = var.grad();
            assert!(g.defined(), "{name} has no gradient");
            assert_eq!(g.kind(), Kind::Float, "{name}");
            assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name}");
        }
    }

    #[test]
    fn rows_are_selected_in_the_layout_they_came_in() {
        let x = Tensor::arange(5 * 3 * 2 * 4, (Kind::Float, Device::Cpu)).view([5, 3, 2, 4]);
        let index = Tensor::from_slice(&[4i64, 0, 2, 2]);
        let want = x.index_select(0, &index);
        let cl = to_channels_last(&x).unwrap();
        let got = select_rows(&cl, &index).unwrap();
        assert!(got.equal(&want));
        assert!(is_channels_last(&got), "strides {:?}", got.stride());
        let got = select_rows(&x, &index).unwrap();
        assert!(got.equal(&want) && got.is_contiguous());
        let rows = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([3, 2]);
        assert!(select_rows(&rows, &index.narrow(0, 1, 2))
            .unwrap()
            .equal(&rows.index_select(0, &index.narrow(0, 1, 2))));
    }

    #[test]
    fn channels_last_conversion_keeps_values_and_variables() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = tiny_net(&vs.root());
        let x = Tensor::randn([2, 3, 10, 10], (Kind::Float, Device::Cpu));
        let before = net.forward(&x);
        let c1 = vs.variables()["c1.weight"].shallow_clone();
        assert!(!is_channels_last(&c1));
        assert_eq!(set_channels_last(&vs).unwrap(), 2);
        assert!(is_channels_last(&c1), "the var store's own tensor is converted");
        assert!(c1.requires_grad());
        assert!(!is_channels_last(&vs.variables()["fc.weight"]));
        let xl = to_channels_last(&x).unwrap();
        assert!(is_channels_last(&xl));
        assert_eq!(xl.size(), x.size());
        assert!(xl.equal(&x));
        let after = net.forward(&xl);
        assert!(after.allclose(&before, 1e-5, 1e-5, false));
        assert_eq!(set_channels_last(&vs).unwrap(), 0, "already converted");
        // Gradients still reach the converted weights.
        after.sum(Kind::Float).backward();
        assert!(c1.grad().defined());
    }

    /// Weights with a size-1 dimension (one input channel, 1 × 1) lie in memory as
    /// channels-last already, but libtorch reads their contiguous strides as NCHW: converted,
    /// they get PyTorch's channels-last strides, the convolution of a one-channel NCHW input
    /// then runs and returns channels-last, and the gradients come back with the weights'
    /// own strides (what the fused optimizer step needs).
    #[test]
    fn weights_with_a_size_1_dimension_get_pytorchs_channels_last_strides() {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let c = nn::ConvConfig { padding: 2, ..Default::default() };
        let gray = nn::conv2d(&p / "gray", 1, 8, 5, c);
        let point = nn::conv2d(&p / "point", 8, 6, 1, Default::default());
        let wide = nn::conv2d(&p / "wide", 6, 4, 3, Default::default());
        let (g, pt) = (gray.ws.shallow_clone(), point.ws.shallow_clone());
        assert!(is_channels_last(&g) && is_channels_last(&pt), "the values' layout already is");
        assert!(!has_channels_last_strides(&g) && !has_channels_last_strides(&pt));
        let x = Tensor::randn([3, 1, 9, 9], (Kind::Float, Device::Cpu));
        let net = |x: &Tensor| x.apply(&gray).relu().apply(&point).relu().apply(&wide);
        let before = net(&x);
        assert!(!is_channels_last(&x.apply(&gray)), "an NCHW result before");
        assert_eq!(set_channels_last(&vs).unwrap(), 3);
        for w in [&g, &pt, &wide.ws] {
            assert!(has_channels_last_strides(w), "strides {:?}", w.stride());
        }
        assert_eq!(g.stride(), [25, 1, 5, 1]);
        assert_eq!(pt.stride(), [8, 1, 8, 8]);
        assert!(is_channels_last(&x.apply(&gray)), "the one-channel input's conv is NHWC now");
        let after = net(&x);
        assert!(after.allclose(&before, 1e-5, 1e-5, false));
        after.sum(Kind::Float).backward();
        for w in [&g, &pt, &wide.ws] {
            assert_eq!(w.grad().stride(), w.stride(), "gradient strides of {:?}", w.size());
        }
    }
}
