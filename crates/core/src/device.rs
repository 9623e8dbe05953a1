//! Device selection: `auto` (the first CUDA device when there is one, else the CPU), `cpu`, or
//! `cuda:N`; and the CUDA back end's presence.
//!
//! libtorch's CUDA back end lives in `libtorch_cuda.so`, which registers itself when it is
//! loaded; no symbol of it is referenced directly, so the linker's `--as-needed` drops it from
//! every binary that is not linked with `-Wl,--no-as-needed -ltorch_cuda` (the `selfsup` binary
//! is; tests and examples are not), and CUDA then reads as absent even on a GPU. Parsing a device
//! therefore first loads it ([`load_cuda_backend`]: `dlopen` of the `libtorch_cuda.so` beside
//! the `libtorch_cpu.so` this process runs, once per process), so every binary of the workspace
//! sees the GPUs. When CUDA is still unavailable, [`why_no_cuda`] says why: no CUDA back end in
//! this libtorch, no NVIDIA driver, or a driver older than this libtorch's CUDA needs.
use crate::{CoreError, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::Device;

/// The `libtorch_cpu.so` this process has loaded, from `/proc/self/maps`.
fn loaded_libtorch_cpu() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .map(PathBuf::from)
}

/// Loads libtorch's CUDA back end (`libtorch_cuda.so` beside the loaded `libtorch_cpu.so`)
/// once per process; returns its path when it is loaded, `None` when this libtorch has none
/// (a CPU build) or it fails to load (the reason is logged).
pub fn load_cuda_backend() -> Option<&'static Path> {
    static LOADED: OnceLock<Option<PathBuf>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let cuda = loaded_libtorch_cpu()?.with_file_name("libtorch_cuda.so");
            if !cuda.exists() {
                return None;
            }
            let c = std::ffi::CString::new(cuda.as_os_str().as_encoded_bytes()).ok()?;
            // SAFETY: a NUL-terminated path; loading runs the library's static registration,
            // which is what linking it would have run at start-up.
            let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if handle.is_null() {
                // SAFETY: dlerror returns a NUL-terminated message or null.
                let msg = unsafe {
                    let e = libc::dlerror();
                    if e.is_null() {
                        String::new()
                    } else {
                        std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                    }
                };
                tracing::warn!("cannot load {}: {msg}", cuda.display());
                return None;
            }
            Some(cuda)
        })
        .as_deref()
}

/// The CUDA version this libtorch was built for (`cuda = '13.0'` in the `version.py` beside its
/// `lib/`), if it says.
fn torch_cuda_version(libtorch_cpu: &Path) -> Option<String> {
    let torch = libtorch_cpu.parent()?.parent()?;
    let text = std::fs::read_to_string(torch.join("version.py")).ok()?;
    text.lines()
        .find(|l| l.trim_start().starts_with("cuda"))
        .and_then(|l| l.split(['\'', '"']).nth(1))
        .map(str::to_string)
}

/// The oldest NVIDIA driver (major version) that runs CUDA `cuda` (`13.0`), by NVIDIA's
/// compatibility table (minor-version compatibility within a major release).
pub fn min_driver_major(cuda: &str) -> Option<u32> {
    match cuda.split('.').next()?.parse::<u32>().ok()? {
        13 => Some(580),
        12 => Some(525),
        11 => Some(450),
        _ => None,
    }
}

/// Why CUDA is unavailable, from what is known: the CUDA back end's path (`None`: this
/// libtorch has none), the CUDA version it was built for, the loaded driver's version line
/// (`/proc/driver/nvidia/version`; `None`: no driver) and `CUDA_VISIBLE_DEVICES`.
pub fn explain_no_cuda(
    backend: Option<&Path>,
    torch_cuda: Option<&str>,
    driver: Option<&str>,
    visible: Option<&str>,
) -> String {
    let Some(_) = backend else {
        return "this libtorch has no CUDA back end (no libtorch_cuda.so beside libtorch_cpu.so): \
                point SELFSUP_LIBTORCH at a CUDA build of torch 2.11.0"
            .into();
    };
    let Some(line) = driver else {
        return "no NVIDIA driver is loaded (/proc/driver/nvidia/version does not exist)".into();
    };
    // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 ..."
    let version = line
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'));
    let major = version.and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    if let (Some(v), Some(major), Some(cuda)) = (version, major, torch_cuda) {
        if let Some(need) = min_driver_major(cuda).filter(|need| major < *need) {
            return format!(
                "the NVIDIA driver is {v}, but this libtorch is built for CUDA {cuda}, which \
                 needs driver {need} or newer: update the driver, or point SELFSUP_LIBTORCH at a \
                 torch 2.11.0 built for an older CUDA (cu126 runs on drivers from 525)"
            );
        }
    }
    match visible {
        Some(v) => format!(
            "the NVIDIA driver {} is loaded but CUDA sees no device (CUDA_VISIBLE_DEVICES={v:?})",
            version.unwrap_or("?")
        ),
        None => format!(
            "the NVIDIA driver {} is loaded but CUDA sees no device",
            version.unwrap_or("?")
        ),
    }
}

/// [`explain_no_cuda`] for this process and machine.
pub fn why_no_cuda() -> String {
    let backend = load_cuda_backend();
    let torch_cuda = loaded_libtorch_cpu().and_then(|p| torch_cuda_version(&p));
    let driver = std::fs::read_to_string("/proc/driver/nvidia/version").ok();
    let driver = driver.as_deref().and_then(|d| d.lines().next());
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    explain_no_cuda(backend, torch_cuda.as_deref(), driver, visible.as_deref())
}

/// The compute capability `(major, minor)` of CUDA device `index` as the driver API reports it
/// (`libcuda.so.1`, loaded on demand; the ordinal follows `CUDA_VISIBLE_DEVICES` as libtorch's
/// does); `None` without a driver or on any error.
pub fn cuda_capability(index: usize) -> Option<(i32, i32)> {
    type Init = unsafe extern "C" fn(u32) -> i32;
    type Get = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type Attr = unsafe extern "C" fn(*mut i32, i32, i32) -> i32;
    // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR and _MINOR.
    const MAJOR: i32 = 75;
    const MINOR: i32 = 76;
    let name = c"libcuda.so.1";
    // SAFETY: dlopen/dlsym with NUL-terminated names; each symbol is the driver API function of
    // the signature it is cast to (cuda.h), called with valid out-pointers.
    unsafe {
        let lib = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if lib.is_null() {
            return None;
        }
        let sym = |n: &std::ffi::CStr| {
            let p = libc::dlsym(lib, n.as_ptr());
            (!p.is_null()).then_some(p)
        };
        let init: Init = std::mem::transmute::<*mut libc::c_void, Init>(sym(c"cuInit")?);
        let get: Get = std::mem::transmute::<*mut libc::c_void, Get>(sym(c"cuDeviceGet")?);
        let attr: Attr =
            std::mem::transmute::<*mut libc::c_void, Attr>(sym(c"cuDeviceGetAttribute")?);
        if init(0) != 0 {
            return None;
        }
        let mut dev = 0;
        if get(&mut dev, i32::try_from(index).ok()?) != 0 {
            return None;
        }
        let (mut major, mut minor) = (0, 0);
        if attr(&mut major, MAJOR, dev) != 0 || attr(&mut minor, MINOR, dev) != 0 {
            return None;
        }
        Some((major, minor))
    }
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N` into a [`tch::Device`], checking that a CUDA device
/// exists (and saying why not when none does).
pub fn parse_device(s: &str) -> Result<Device> {
    load_cuda_backend();
    match s.trim() {
        "auto" => {
            let d = Device::cuda_if_available();
            if d == Device::Cpu && std::path::Path::new("/proc/driver/nvidia/version").exists() {
                // A GPU machine running on the CPU is worth a line.
                tracing::warn!("device auto: running on the CPU: {}", why_no_cuda());
            }
            Ok(d)
        }
        "cpu" => Ok(Device::Cpu),
        "cuda" => parse_device("cuda:0"),
        other => {
            let idx =
                other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()).ok_or_else(
                    || CoreError::Device(format!("`{other}` is not one of auto, cpu, cuda:N")),
                )?;
            let count = tch::Cuda::device_count() as usize;
            if count == 0 {
                return Err(CoreError::Device(format!(
                    "`{other}` asked for, but CUDA is unavailable: {}",
                    why_no_cuda()
                )));
            }
            if idx >= count {
                return Err(CoreError::Device(format!(
                    "`{other}` asked for, but {count} CUDA device(s) are visible"
                )));
            }
            Ok(Device::Cuda(idx))
        }
    }
}

/// The canonical string of a device: `cpu` or `cuda:N`.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cuda_backend_is_loaded_into_every_binary() {
        // This test binary is not linked with libtorch_cuda; parsing a device loads it when
        // this libtorch has one (the PyPI wheel does), and a CPU-only machine still runs.
        parse_device("cpu").unwrap();
        let cpu = loaded_libtorch_cpu().expect("libtorch_cpu.so is loaded");
        let has_cuda = cpu.with_file_name("libtorch_cuda.so").exists();
        assert_eq!(load_cuda_backend().is_some(), has_cuda);
        if has_cuda {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            assert!(maps.contains("libtorch_cuda.so"));
            assert!(torch_cuda_version(&cpu).is_some(), "version.py names the CUDA version");
        }
        if !tch::Cuda::is_available() {
            let err = parse_device("cuda:0").unwrap_err().to_string();
            assert!(err.contains("CUDA is unavailable: "), "{err}");
        }
    }

    #[test]
    fn the_reasons_cuda_is_missing_are_told_apart() {
        let lib = Path::new("/t/lib/libtorch_cuda.so");
        let old = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 2023";
        let new = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 2025";
        assert!(explain_no_cuda(None, None, None, None).contains("no CUDA back end"));
        assert!(explain_no_cuda(Some(lib), Some("13.0"), None, None).contains("no NVIDIA driver"));
        let e = explain_no_cuda(Some(lib), Some("13.0"), Some(old), None);
        assert!(e.contains("driver is 535.104.05") && e.contains("580 or newer"), "{e}");
        assert!(e.contains("SELFSUP_LIBTORCH"), "{e}");
        // CUDA 12 runs on 535.
        let e = explain_no_cuda(Some(lib), Some("12.6"), Some(old), Some(""));
        assert!(e.contains("sees no device") && e.contains("CUDA_VISIBLE_DEVICES=\"\""), "{e}");
        let e = explain_no_cuda(Some(lib), Some("13.0"), Some(new), None);
        assert!(e.contains("580.65.06 is loaded"), "{e}");
        assert_eq!(min_driver_major("13.0"), Some(580));
        assert_eq!(min_driver_major("12.8"), Some(525));
        // No driver here: no capability either.
        if !Path::new("/proc/driver/nvidia/version").exists() {
            assert_eq!(cuda_capability(0), None);
        }
    }

    #[test]
    fn parses_cpu_and_rejects_garbage() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        let err = parse_device("gpu0").unwrap_err().to_string();
        assert!(err.contains("gpu0"), "{err}");
        if !tch::Cuda::is_available() {
            assert!(parse_device("cuda:0").unwrap_err().to_string().contains("cuda:0"));
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
        }
    }
}
