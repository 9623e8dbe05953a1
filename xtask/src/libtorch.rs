//! Locating or installing libtorch: torch 2.11.0 from PyPI in a virtual environment under the
//! cache folder (`$SELFSUP_CACHE`, else `~/.cache/selfsup`), outside the checkout so fresh
//! clones reuse it. `SELFSUP_LIBTORCH` points at an existing install instead.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The torch version `tch` 0.24 is built against.
pub const TORCH_VERSION: &str = "2.11.0";
/// The torchvision release that pairs with it (for reference scripts and export checks).
pub const TORCHVISION_VERSION: &str = "0.26.0";

/// A usable libtorch.
#[derive(Debug, Clone)]
pub struct Torch {
    /// The `torch/` folder holding `include/` and `lib/` (the value of `LIBTORCH`).
    pub libtorch: PathBuf,
    /// The Python interpreter that imports this torch.
    pub python: PathBuf,
}

impl Torch {
    /// The environment cargo and the binaries need.
    pub fn envs(&self) -> Vec<(String, String)> {
        let lib = self.libtorch.join("lib");
        // Keep the caller's entries, minus those `cargo run` adds for xtask itself (its target
        // folder and the toolchain's libraries).
        let old = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
        let lib = lib.display().to_string();
        let ld = std::iter::once(lib.as_str())
            .chain(old.split(':').filter(|p| {
                !p.is_empty() && *p != lib && !p.contains("/.rustup/") && !p.contains("/target/")
            }))
            .collect::<Vec<_>>()
            .join(":");
        vec![
            ("LIBTORCH".into(), self.libtorch.display().to_string()),
            ("LIBTORCH_CXX11_ABI".into(), "1".into()),
            ("LD_LIBRARY_PATH".into(), ld),
            ("SELFSUP_PYTHON".into(), self.python.display().to_string()),
        ]
    }

    /// Applies [`Torch::envs`] to a command.
    pub fn apply(&self, cmd: &mut Command) {
        for (k, v) in self.envs() {
            cmd.env(k, v);
        }
    }
}

/// The version string in `torch/version.py` (`2.11.0+cu130` → `2.11.0`).
fn torch_version(torch_dir: &Path) -> Result<String> {
    let p = torch_dir.join("version.py");
    let text = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("__version__"))
        .with_context(|| format!("{}: no __version__ line", p.display()))?;
    let v = line.split(['\'', '"']).nth(1).unwrap_or_default();
    Ok(v.split('+').next().unwrap_or_default().to_string())
}

fn check_libtorch(dir: &Path) -> Result<()> {
    if !dir.join("include").is_dir() || !dir.join("lib").join("libtorch.so").exists() {
        bail!("{} is not a libtorch folder (it needs include/ and lib/libtorch.so)", dir.display());
    }
    if dir.join("version.py").exists() {
        let v = torch_version(dir)?;
        if v != TORCH_VERSION {
            bail!(
                "{} holds torch {v}, but tch 0.24 needs exactly torch {TORCH_VERSION}: \
                 point SELFSUP_LIBTORCH elsewhere or unset it to let xtask install {TORCH_VERSION}",
                dir.display()
            );
        }
    }
    Ok(())
}

fn cache_dir() -> Result<PathBuf> {
    if let Ok(c) = std::env::var("SELFSUP_CACHE") {
        return Ok(PathBuf::from(c));
    }
    if let Ok(c) = std::env::var("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(c).join("selfsup"));
    }
    let home = std::env::var("HOME").context("neither SELFSUP_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("selfsup"))
}

fn find_torch_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    std::fs::read_dir(&lib).ok()?.flatten().find_map(|e| {
        let t = e.path().join("site-packages").join("torch");
        t.join("lib").join("libtorch.so").exists().then_some(t)
    })
}

/// The libtorch a binary built elsewhere runs against: `SELFSUP_LIBTORCH`, else the `torch`
/// package that `python3` imports (as on the device machines), else [`ensure`]'s; each checked
/// to hold libtorch at the version tch needs.
pub fn installed() -> Result<Torch> {
    if std::env::var_os("SELFSUP_LIBTORCH").is_none() {
        let out = Command::new("python3")
            .args(["-c", "import os, torch; print(os.path.dirname(torch.__file__))"])
            .output();
        if let Some(out) = out.ok().filter(|o| o.status.success()) {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            check_libtorch(&dir).context("python3's torch")?;
            return Ok(Torch { libtorch: dir, python: "python3".into() });
        }
    }
    ensure()
}

/// Finds or installs libtorch.
pub fn ensure() -> Result<Torch> {
    if let Ok(dir) = std::env::var("SELFSUP_LIBTORCH") {
        let dir = PathBuf::from(dir);
        check_libtorch(&dir).context("SELFSUP_LIBTORCH")?;
        let python =
            std::env::var("SELFSUP_PYTHON").map(PathBuf::from).unwrap_or_else(|_| "python3".into());
        return Ok(Torch { libtorch: dir, python });
    }
    let venv = cache_dir()?.join(format!("torch-{TORCH_VERSION}"));
    let marker = venv.join(".selfsup-complete");
    if marker.exists() {
        if let Some(t) = find_torch_in_venv(&venv) {
            check_libtorch(&t)?;
            if cuda_headers(&t).is_none() && !venv.join(HEADERS_TRIED).exists() {
                install_cuda_headers(&venv);
            }
            return Ok(Torch { libtorch: t, python: venv.join("bin").join("python") });
        }
    }
    install(&venv)?;
    let t = find_torch_in_venv(&venv).with_context(|| {
        format!("pip finished but {} holds no torch/lib/libtorch.so", venv.display())
    })?;
    check_libtorch(&t)?;
    std::fs::write(&marker, TORCH_VERSION).with_context(|| marker.display().to_string())?;
    Ok(Torch { libtorch: t, python: venv.join("bin").join("python") })
}

/// CUDA's headers beside `libtorch` (`<site-packages>/nvidia/cu13/include` with `crt/`), which
/// the `nccl` feature of selfsup-dist compiles against; `None` when absent.
pub fn cuda_headers(libtorch: &Path) -> Option<PathBuf> {
    let dir = libtorch.parent()?.join("nvidia/cu13/include");
    dir.join("crt/host_config.h").exists().then_some(dir)
}

/// The pip packages of [`cuda_headers`]: CUDA's headers that ProcessGroupNCCL's include; the
/// torch wheel ships the CUDA 13.0 runtime's and NCCL's, not these.
const CUDA_HEADER_PACKAGES: [&str; 2] = ["nvidia-cuda-crt==13.0.*", "nvidia-cuda-cccl==13.0.*"];

/// Marks an install where [`install_cuda_headers`] ran (whatever its outcome).
const HEADERS_TRIED: &str = ".selfsup-cuda-headers";

/// Installs [`CUDA_HEADER_PACKAGES`] into `venv` (after torch, and once into installs made
/// before they were part of it); a failure is only a warning (nothing but the `nccl` feature
/// needs them; `pip install` them by hand later).
fn install_cuda_headers(venv: &Path) {
    // Tried once per install: an offline machine should not wait for pip at every command.
    let _ = std::fs::write(venv.join(HEADERS_TRIED), CUDA_HEADER_PACKAGES.join(" "));
    let pip = venv.join("bin").join("pip");
    let ok = Command::new(&pip)
        .args(["install", "--disable-pip-version-check", "-q", "--no-deps", "--retries", "1"])
        .args(CUDA_HEADER_PACKAGES)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "xtask: could not install {} (CUDA headers for the `nccl` feature); the default build \
             does not need them",
            CUDA_HEADER_PACKAGES.join(" ")
        );
    }
}

fn install(venv: &Path) -> Result<()> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python).arg("--version").output().map(|o| o.status.success());
    if !matches!(ok, Ok(true)) {
        bail!(
            "`{python}` not found: install Python 3 with pip (or set SELFSUP_LIBTORCH to an existing \
             libtorch {TORCH_VERSION})"
        );
    }
    eprintln!(
        "xtask: installing torch=={TORCH_VERSION} (about 4.7 GB with its CUDA libraries) into {}",
        venv.display()
    );
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    if !venv.join("bin").join("python").exists() {
        let st = Command::new(&python).args(["-m", "venv"]).arg(venv).status()?;
        if !st.success() {
            bail!(
                "`{python} -m venv {}` failed: install the venv module (Debian: apt-get install python3-venv)",
                venv.display()
            );
        }
    }
    let pip = venv.join("bin").join("pip");
    let st = Command::new(&pip)
        .args(["install", "--disable-pip-version-check", "-q"])
        .arg(format!("torch=={TORCH_VERSION}"))
        .arg(format!("torchvision=={TORCHVISION_VERSION}"))
        .args(["numpy", "safetensors"])
        .status()
        .with_context(|| format!("cannot run {}", pip.display()))?;
    if !st.success() {
        bail!(
            "pip could not install torch=={TORCH_VERSION} (no network access to PyPI?): connect, or set \
             SELFSUP_LIBTORCH to an existing libtorch {TORCH_VERSION} folder"
        );
    }
    // Apart from torch: only the `nccl` feature needs them, so their failure is a warning.
    install_cuda_headers(venv);
    Ok(())
}
