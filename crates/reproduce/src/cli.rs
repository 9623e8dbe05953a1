//! The command line of `selfsup reproduce <plan>`: its options, the profile it picks, where the
//! data is, and the refusal of the `paper` profile on a CPU.
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Parsed command line of `selfsup reproduce <method>`.
#[derive(Debug, Clone)]
pub struct Args {
    /// `--profile`; `None` picks `paper` with CUDA, else `cpu`.
    pub profile: Option<String>,
    /// `--dataset` (default `cifar10`).
    pub dataset: String,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--device` (default `auto`).
    pub device: String,
    /// `--runs-dir` (default `runs`).
    pub runs_dir: PathBuf,
    /// `--results-dir` (default `results`).
    pub results_dir: PathBuf,
    /// `--force`: redo every stage.
    pub force: bool,
    /// `--set PROFILE_KEY=VALUE`, in order.
    pub sets: Vec<String>,
    /// `--train-set train.KEY=VALUE`, in order: overrides of every training's run config
    /// (e.g. the GPU's fast path), after the plan is built.
    pub train_sets: Vec<String>,
    /// `--configs-only`: write the plan and its trainings' run configs, train nothing.
    pub configs_only: bool,
}

/// Parses the options after the method name; `Ok(None)` after printing `usage` for `--help`.
pub fn parse_args(args: &[String], usage: &str) -> Result<Option<Args>> {
    let mut a = Args {
        profile: None,
        dataset: "cifar10".into(),
        data_dir: None,
        device: "auto".into(),
        runs_dir: PathBuf::from("runs"),
        results_dir: PathBuf::from("results"),
        force: false,
        sets: Vec::new(),
        train_sets: Vec::new(),
        configs_only: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) => Ok(v),
                None => bail!("{name} needs a value\n{usage}"),
            }
        };
        match key {
            "--profile" => a.profile = Some(value("--profile")?),
            "--dataset" => a.dataset = value("--dataset")?,
            "--data-dir" => a.data_dir = Some(PathBuf::from(value("--data-dir")?)),
            "--device" => a.device = value("--device")?,
            "--runs-dir" => a.runs_dir = PathBuf::from(value("--runs-dir")?),
            "--results-dir" => a.results_dir = PathBuf::from(value("--results-dir")?),
            "--force" => a.force = true,
            "--configs-only" => a.configs_only = true,
            "--set" => a.sets.push(value("--set")?),
            "--train-set" => {
                let kv = value("--train-set")?;
                if !kv.starts_with("train.") || !kv.contains('=') {
                    bail!(
                        "--train-set {kv}: takes train.KEY=VALUE (the run config's `train` \
                         settings; the plan fixes the method, encoder and data)\n{usage}"
                    );
                }
                a.train_sets.push(kv);
            }
            // The zoo's choice of methods, as the profile key it sets.
            "--methods" => {
                let list: Vec<String> = value("--methods")?
                    .split(',')
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .collect();
                if list.is_empty() {
                    bail!("--methods needs at least one method name\n{usage}");
                }
                a.sets.push(format!("methods={}", serde_json::to_string(&list)?));
            }
            "-h" | "--help" => {
                println!("{usage}");
                return Ok(None);
            }
            other => bail!("unknown argument `{other}`\n{usage}"),
        }
    }
    Ok(Some(a))
}

/// Where the data is: `--data-dir`, `$SELFSUP_DATA`, `datasets/` when it holds CIFAR-10, else
/// `../shared/datasets` when that does, else `datasets/`. Returns the folder and how it was
/// chosen.
pub fn data_dir(explicit: Option<&Path>) -> (PathBuf, String) {
    if let Some(p) = explicit {
        return (p.to_path_buf(), "from --data-dir".into());
    }
    if let Some(p) = std::env::var_os("SELFSUP_DATA") {
        // Recorded in the run configs and results: relative, so they read the same on every
        // machine (CI exports an absolute `$SELFSUP_DATA`).
        return (relative_to_cwd(Path::new(&p)), "from $SELFSUP_DATA".into());
    }
    let local = PathBuf::from("datasets");
    let shared = PathBuf::from("../shared/datasets");
    if !local.join("cifar-10-batches-bin").exists() && shared.join("cifar-10-batches-bin").exists()
    {
        return (shared, "default: ../shared/datasets holds CIFAR-10".into());
    }
    (selfsup_data::resolve_data_dir(None), "default".into())
}

/// `path` relative to the working directory when it is absolute (`/srv/shared/datasets` seen
/// from `/srv/selfsup` is `../shared/datasets`); as given otherwise, or when there is no
/// working directory.
pub fn relative_to_cwd(path: &Path) -> PathBuf {
    let Ok(cwd) = std::env::current_dir() else {
        return path.to_path_buf();
    };
    if !path.is_absolute() {
        return path.to_path_buf();
    }
    let (from, to): (Vec<_>, Vec<_>) = (cwd.components().collect(), path.components().collect());
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return path.to_path_buf();
    }
    let mut out: PathBuf = from[common..].iter().map(|_| "..").collect();
    out.extend(&to[common..]);
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Refuses the `paper` profile on the CPU unless `--device cpu` was given: it is the published
/// protocol, a GPU job, and with `--device auto` on a machine without CUDA it would quietly run
/// for days.
pub fn refuse_paper_on_cpu(profile: &str, device_arg: &str, device: tch::Device) -> Result<()> {
    if profile == "paper" && device == tch::Device::Cpu && device_arg.trim() != "cpu" {
        bail!(
            "profile `paper` is the published protocol, a GPU job (days on a CPU), and `--device \
             {device_arg}` found no CUDA device: pass --device cpu to run it on the CPU anyway, \
             or choose --profile cpu"
        );
    }
    Ok(())
}

/// The profile to run: `--profile`, else `paper` with CUDA and `cpu` without; and why.
pub fn choose_profile(args: &Args) -> (String, String) {
    match &args.profile {
        Some(p) => (p.clone(), "from --profile".into()),
        None if tch::Cuda::is_available() => {
            ("paper".into(), "no --profile given and CUDA is present".into())
        }
        None => ("cpu".into(), "no --profile given and no CUDA device".into()),
    }
}

/// The usage line of `selfsup reproduce <plan>`.
pub fn usage(plan: &str) -> String {
    format!(
        "usage: selfsup reproduce {plan} [--profile smoke|cpu|paper] [--dataset cifar10] \
         [--data-dir DIR] [--device auto|cpu|cuda:N] [--runs-dir DIR] [--results-dir DIR] \
         [--set PROFILE_KEY=VALUE]... [--train-set train.KEY=VALUE]... [--methods a,b,... (zoo)] \
         [--force] [--configs-only]"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_flags_in_both_forms() {
        let usage = usage("rotnet");
        let a =
            parse_args(&s(&["--profile", "smoke", "--force", "--dataset=synthetic:64:32"]), &usage)
                .unwrap()
                .unwrap();
        assert_eq!(a.profile.as_deref(), Some("smoke"));
        assert!(a.force);
        assert_eq!(a.dataset, "synthetic:64:32");
        assert_eq!(a.runs_dir, PathBuf::from("runs"));
        assert!(!a.configs_only);
        assert!(parse_args(&s(&["--configs-only"]), &usage).unwrap().unwrap().configs_only);
        let err = parse_args(&s(&["--profil", "cpu"]), &usage).unwrap_err().to_string();
        assert!(err.contains("unknown argument `--profil`"), "{err}");
        assert!(parse_args(&s(&["--profile"]), &usage)
            .unwrap_err()
            .to_string()
            .contains("needs a value"));
        assert!(parse_args(&s(&["--help"]), &usage).unwrap().is_none());
    }

    #[test]
    fn train_sets_take_train_keys_only() {
        let usage = usage("rotnet");
        let a = parse_args(&s(&["--train-set", "train.precision=bf16"]), &usage).unwrap().unwrap();
        assert_eq!(a.train_sets, ["train.precision=bf16"]);
        for bad in ["encoder.width=96", "train.precision"] {
            let e = parse_args(&s(&["--train-set", bad]), &usage).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--train-set {bad}: takes train.KEY=VALUE")), "{e}");
        }
    }

    #[test]
    fn absolute_data_folders_are_recorded_relative_to_the_working_directory() {
        let cwd = std::env::current_dir().unwrap();
        let sibling = cwd.parent().unwrap().join("shared").join("datasets");
        let name = cwd.file_name().unwrap();
        assert_eq!(relative_to_cwd(&sibling), PathBuf::from("../shared/datasets"), "{name:?}");
        assert_eq!(relative_to_cwd(&cwd.join("datasets")), PathBuf::from("datasets"));
        assert_eq!(relative_to_cwd(&cwd), PathBuf::from("."));
        assert_eq!(relative_to_cwd(Path::new("rel/dir")), PathBuf::from("rel/dir"));
        // The relative form names the same folder.
        assert!(selfsup_core::config::same_data_folder(
            Some(&relative_to_cwd(&sibling)),
            Some(&sibling)
        ));
        assert!(!selfsup_core::config::same_data_folder(
            Some(Path::new("a")),
            Some(Path::new("b"))
        ));
    }

    #[test]
    fn the_paper_profile_needs_a_gpu_or_an_explicit_cpu() {
        let e = refuse_paper_on_cpu("paper", "auto", tch::Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("--device cpu") && e.contains("--profile cpu"), "{e}");
        assert!(!e.contains('\n'));
        assert!(refuse_paper_on_cpu("paper", "cpu", tch::Device::Cpu).is_ok());
        assert!(refuse_paper_on_cpu("paper", "auto", tch::Device::Cuda(0)).is_ok());
        assert!(refuse_paper_on_cpu("cpu", "auto", tch::Device::Cpu).is_ok());
    }
}
