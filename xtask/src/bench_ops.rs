//! `cargo xtask bench ops`: the operators a training step runs, counted by name, selfsup's
//! against PyTorch's on the same step: `selfsup train` with `SELFSUP_OP_COUNTS`
//! (`selfsup_core::op_counts`: a global callback on libtorch's `RecordFunction`, over the steps
//! after the first two, log lines and checkpoints left out) and `bench/train_step.py
//! --op-counts` (PyTorch's profiler, the same events, over its timed steps; `--fused`, its best
//! optimizer). Each config is `cargo xtask bench train`'s for the method, backbone and mode.
//!
//! Every operator is a dispatch on the CPU and, on CUDA, most are a kernel launch, so an
//! operator selfsup runs and PyTorch does not is overhead in a step whatever the device; the
//! table shows the operators a step and the names whose counts differ most. Nothing is timed.
//! selfsup's CPU kernels (the fused batch norm + ReLU, the Winograd, matrix-product and dense
//! convolutions) count as what they call; `--cuda-paths` turns them off
//! (`SELFSUP_FUSED_BN=off`, `SELFSUP_WINOGRAD=off`, `SELFSUP_CONV_GEMM=off`), leaving the
//! operators a CUDA step runs (less the batch's copies to the device; jigsaw's and relative
//! patch's fused ReLU + dropout stay).
use crate::bench_memory::watch;
use crate::bench_train::{
    backbone_arg, bench_images, cpu_profile_config, methods_arg, methods_or_all, python_args,
    step_config, train_command, Mode, MODES, WARMUP,
};
use crate::libtorch::Torch;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

const USAGE: &str = "usage: cargo xtask bench ops [--methods rotnet,simclr,...] \
                     [--backbone cpu|large] [--mode fp32|channels-last|bf16] [--steps 4] \
                     [--top 8] [--cuda-paths]";

#[derive(Debug, PartialEq)]
struct Opts {
    methods: Vec<String>,
    large: bool,
    mode: &'static str,
    steps: usize,
    top: usize,
    /// selfsup's CPU-only kernels off: the operators of a CUDA step.
    cuda_paths: bool,
}

/// The switches that leave selfsup's CPU-only kernels to libtorch (`--cuda-paths`).
const CUDA_PATHS: [(&str, &str); 3] =
    [("SELFSUP_FUSED_BN", "off"), ("SELFSUP_WINOGRAD", "off"), ("SELFSUP_CONV_GEMM", "off")];

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        methods: Vec::new(),
        large: false,
        mode: "channels-last",
        steps: 4,
        top: 8,
        cuda_paths: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--methods" => o.methods = methods_arg(it.next(), USAGE)?,
            "--backbone" => o.large = backbone_arg(it.next())?,
            "--mode" => {
                o.mode = match it.next().map(String::as_str) {
                    Some("fp32") => "fp32",
                    Some("channels-last") => "channels-last",
                    Some("bf16") => "channels-last + bf16",
                    other => bail!(
                        "--mode {}: expected fp32, channels-last or bf16",
                        other.unwrap_or("")
                    ),
                }
            }
            "--steps" => o.steps = crate::bench_data::number(&mut it, a, USAGE)?,
            "--top" => o.top = crate::bench_data::number(&mut it, a, USAGE)?,
            "--cuda-paths" => o.cuda_paths = true,
            other => bail!("unknown option `{other}`; {USAGE}"),
        }
    }
    o.methods = methods_or_all(std::mem::take(&mut o.methods), o.large)?;
    if o.steps == 0 {
        bail!("--steps must be at least 1");
    }
    Ok(o)
}

/// A counts file of either side (`{"steps": n, "ops": {name: count}}`) as counts a step.
fn per_step(v: &Value, what: &str) -> Result<BTreeMap<String, f64>> {
    let steps = v["steps"].as_u64().filter(|&n| n > 0);
    let steps = steps.with_context(|| format!("{what}: no counted steps"))? as f64;
    let ops = v["ops"].as_object().with_context(|| format!("{what}: no `ops` object"))?;
    ops.iter()
        .map(|(k, n)| {
            let n = n.as_f64().with_context(|| format!("{what}: `{k}` is not a count"))?;
            Ok((k.clone(), n / steps))
        })
        .collect()
}

/// The operators whose counts a step differ most between `ours` and `theirs` (at least half an
/// operator a step), largest difference first, ties by name: (name, ours, theirs).
fn differences(
    ours: &BTreeMap<String, f64>,
    theirs: &BTreeMap<String, f64>,
    top: usize,
) -> Vec<(String, f64, f64)> {
    let mut d: Vec<(String, f64, f64)> = ours
        .keys()
        .chain(theirs.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|k| {
            (k.clone(), ours.get(k).copied().unwrap_or(0.0), theirs.get(k).copied().unwrap_or(0.0))
        })
        .filter(|(_, a, b)| (a - b).abs() >= 0.5)
        .collect();
    d.sort_by(|x, y| (y.1 - y.2).abs().total_cmp(&(x.1 - x.2).abs()).then(x.0.cmp(&y.0)));
    d.truncate(top);
    d
}

/// One table row: the method, both totals a step, and the differences as `name ours/theirs`.
fn row(
    method: &str,
    ours: &BTreeMap<String, f64>,
    theirs: &BTreeMap<String, f64>,
    top: usize,
) -> String {
    let total = |m: &BTreeMap<String, f64>| m.values().sum::<f64>();
    let diffs: Vec<String> = differences(ours, theirs, top)
        .into_iter()
        .map(|(k, a, b)| format!("`{k}` {a:.0}/{b:.0}"))
        .collect();
    format!(
        "| {method} | {:.0} | {:.0} | {} |",
        total(ours),
        total(theirs),
        if diffs.is_empty() { "none".to_string() } else { diffs.join(", ") }
    )
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn run(t: &Torch, args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let bin = crate::tasks::build_release()?;
    let mode: Mode = *MODES.iter().find(|m| m.name == o.mode).expect("a mode of MODES");
    let tmp = std::env::temp_dir().join(format!("selfsup-bench-ops-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let backbone = if o.large { "large" } else { "cpu" };
    println!(
        "Operators a step ({} steps after {WARMUP}), backbone `{backbone}`, {}{}: selfsup / \
         PyTorch (fused optimizer); the differences as `name` selfsup/PyTorch.\n",
        o.steps,
        mode.name,
        if o.cuda_paths { ", selfsup's CPU kernels off (`--cuda-paths`)" } else { "" }
    );
    println!("| method | selfsup | PyTorch | largest differences |\n|---|---:|---:|---|");
    for method in &o.methods {
        let base = cpu_profile_config(&bin, t, method, &tmp)?;
        let mut cfg = step_config(&base, method, o.large, 2, mode);
        cfg["data"]["max_images"] = json!(bench_images(&cfg, o.steps)?);
        cfg["train"]["max_steps"] = json!(WARMUP + o.steps);
        let images = cfg["data"]["max_images"].as_u64().context("data.max_images")?;
        let cfg_path = tmp.join("config.json");
        let (ours_path, theirs_path) = (tmp.join("selfsup-ops.json"), tmp.join("pytorch-ops.json"));
        let run_dir = tmp.join("run");
        // Nothing of the method before may be read as this one's.
        for p in [&ours_path, &theirs_path] {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(&run_dir);
        // Writes the config that both sides run.
        let py = python_args(&cfg, o.steps, &cfg_path)?;
        let mut c = train_command(&bin, t, &cfg_path, images, &run_dir);
        c.env("SELFSUP_OP_COUNTS", &ours_path);
        if o.cuda_paths {
            c.envs(CUDA_PATHS);
        }
        watch(c, &tmp.join("selfsup.log"), Stdio::null())?;
        let mut c = Command::new(&t.python);
        c.args(&py).arg("--fused").arg(format!("--op-counts={}", theirs_path.display()));
        watch(c, &tmp.join("python.log"), Stdio::null())?;
        let ours = per_step(&read_json(&ours_path)?, "selfsup's counts")?;
        let theirs = per_step(&read_json(&theirs_path)?, "PyTorch's counts")?;
        println!("{}", row(method, &ours, &theirs, o.top));
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.methods.len(), o.large, o.mode, o.steps, o.top),
            (12, false, "channels-last", 4, 8)
        );
        assert!(!o.cuda_paths);
        let o =
            parse(&s(&["--backbone", "large", "--mode", "bf16", "--steps", "3", "--cuda-paths"]))
                .unwrap();
        assert_eq!(o.methods, s(&["rotnet", "simclr"]));
        assert_eq!((o.mode, o.steps, o.cuda_paths), ("channels-last + bf16", 3, true));
        assert!(MODES.iter().any(|m| m.name == o.mode));
        for bad in [
            &["--methods", "nope"][..],
            &["--backbone", "large", "--methods", "moco"],
            &["--mode", "fp16"],
            &["--steps", "0"],
            &["--frobnicate"],
        ] {
            assert!(parse(&s(bad)).is_err(), "{bad:?}");
        }
        let e = parse(&s(&["--mode", "fp16"])).unwrap_err().to_string();
        assert!(e.contains("fp16"), "{e}");
    }

    #[test]
    fn counts_a_step_and_the_largest_differences() {
        let ours = per_step(
            &json!({"steps": 4, "ops": {"aten::add_": 8, "aten::conv2d": 12, "aten::zero_": 40}}),
            "ours",
        )
        .unwrap();
        let theirs = per_step(
            &json!({"steps": 2, "ops": {"aten::conv2d": 6, "aten::relu_": 6, "aten::add_": 3}}),
            "theirs",
        )
        .unwrap();
        assert_eq!(ours["aten::zero_"], 10.0);
        assert_eq!(theirs["aten::relu_"], 3.0);
        // zero_ 10/0, relu_ 0/3, add_ 2/1.5 (a difference of half an operator); conv2d equal.
        assert_eq!(
            differences(&ours, &theirs, 8),
            vec![
                ("aten::zero_".to_string(), 10.0, 0.0),
                ("aten::relu_".to_string(), 0.0, 3.0),
                ("aten::add_".to_string(), 2.0, 1.5),
            ]
        );
        assert_eq!(differences(&ours, &theirs, 1).len(), 1);
        assert_eq!(
            row("rotnet", &ours, &theirs, 2),
            "| rotnet | 15 | 8 | `aten::zero_` 10/0, `aten::relu_` 0/3 |"
        );
        assert!(row("rotnet", &ours, &ours, 2).ends_with("| none |"));
        for (bad, want) in [
            (json!({"steps": 0, "ops": {}}), "no counted steps"),
            (json!({"steps": 2}), "no `ops`"),
            (json!({"steps": 2, "ops": {"x": "y"}}), "`x` is not a count"),
        ] {
            let e = per_step(&bad, "ours").unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
