//! `cargo xtask bench ops`: the operators a training step runs, counted by name, selfsup's
//! against PyTorch's on the same step: `selfsup train` with `SELFSUP_OP_COUNTS`
//! (`selfsup_core::op_counts`: a global callback on libtorch's `RecordFunction`, over the steps
//! after the first two, log lines and checkpoints left out) and `bench/train_step.py
//! --op-counts` (PyTorch's profiler, the same events, over its timed steps; `--fused`, its best
//! optimizer). Each config is `cargo xtask bench train`'s for the method, backbone and mode.
//!
//! Every operator is a dispatch on the CPU and, on CUDA, most are a kernel launch, so an
//! operator selfsup runs and PyTorch does not is overhead in a step whatever the device; the
//! table shows the operators a step and the names whose counts differ most. With `--times` it
//! shows instead the milliseconds a step by operator: each name's self time (its wall time less
//! that of the operators it ran on its thread; on either side as PyTorch's profiler counts it),
//! the totals and the names whose times differ most. The times are taken under the counting
//! callbacks, whose cost (PyTorch's profiler's the larger) falls in them; selfsup's totals hold
//! its loader threads' operators too, which run beside the step. With `--shapes` each operator
//! is keyed by its name and arguments (`SELFSUP_OP_SHAPES`, `bench/train_step.py --op-shapes`:
//! `aten::convolution_backward BFloat16[128, 64, 8, 8]cl ... [True, True, False]`), so that the
//! same operator on two layers, two layouts or two dtypes shows apart.
//!
//! selfsup's CPU kernels (the fused batch norm + ReLU, the Winograd, matrix-product and dense
//! convolutions) count as their entry points (`selfsup::batch_norm_relu`,
//! `selfsup::winograd_conv`, `selfsup::conv_gemm`; the dense product has none) and what they
//! call; `--cuda-paths` turns them off (`SELFSUP_FUSED_BN=off`, `SELFSUP_WINOGRAD=off`,
//! `SELFSUP_CONV_GEMM=off`), leaving the operators a CUDA step runs (less the batch's copies to
//! the device; jigsaw's and relative patch's fused ReLU + dropout stay).
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
                     [--top 8] [--times] [--shapes] [--cuda-paths]";

#[derive(Debug, PartialEq)]
struct Opts {
    methods: Vec<String>,
    large: bool,
    mode: &'static str,
    steps: usize,
    top: usize,
    /// Milliseconds a step by operator (self times), not counts.
    times: bool,
    /// Operators keyed by name and arguments, not by name alone.
    shapes: bool,
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
        times: false,
        shapes: false,
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
            "--times" => o.times = true,
            "--shapes" => o.shapes = true,
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

/// What the table shows: operators a step, or their self times in milliseconds a step.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Measure {
    Calls,
    Millis,
}

impl Measure {
    /// The field of a counts file, and its unit to one of the table's.
    fn field(self) -> (&'static str, f64) {
        match self {
            Measure::Calls => ("ops", 1.0),
            Measure::Millis => ("self_us", 1e-3),
        }
    }

    /// The smallest difference a step shown: half an operator, or 0.05 ms.
    fn least(self) -> f64 {
        match self {
            Measure::Calls => 0.5,
            Measure::Millis => 0.05,
        }
    }

    fn show(self, v: f64) -> String {
        match self {
            Measure::Calls => format!("{v:.0}"),
            Measure::Millis => format!("{v:.1}"),
        }
    }
}

/// A counts file of either side (`{"steps": n, "ops": {name: calls}, "self_us": {name:
/// microseconds}}`) as `measure` a step, keyed by [`key`].
fn per_step(v: &Value, measure: Measure, what: &str) -> Result<BTreeMap<String, f64>> {
    let steps = v["steps"].as_u64().filter(|&n| n > 0);
    let steps = steps.with_context(|| format!("{what}: no counted steps"))? as f64;
    let (field, unit) = measure.field();
    let ops = v[field].as_object().with_context(|| format!("{what}: no `{field}` object"))?;
    let mut out = BTreeMap::new();
    for (k, n) in ops {
        let n = n.as_f64().with_context(|| format!("{what}: `{field}.{k}` is not a number"))?;
        *out.entry(key(k).to_string()).or_insert(0.0) += n * unit / steps;
    }
    Ok(out)
}

/// An operator's key without its trailing absent arguments: with `--shapes` the two sides list
/// a factory's optional arguments to different lengths (selfsup's `RecordFunction` inputs
/// `aten::empty [16] None None`, PyTorch's profiler `aten::empty [16] None None None`), which
/// would show one operator as two.
fn key(name: &str) -> &str {
    let mut k = name;
    while let Some(rest) = k.strip_suffix(" None") {
        k = rest;
    }
    k
}

/// The operators whose `measure` a step differs most between `ours` and `theirs` (at least
/// [`Measure::least`]), largest difference first, ties by name: (name, ours, theirs).
fn differences(
    ours: &BTreeMap<String, f64>,
    theirs: &BTreeMap<String, f64>,
    measure: Measure,
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
        .filter(|(_, a, b)| (a - b).abs() >= measure.least())
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
    measure: Measure,
    top: usize,
) -> String {
    let total = |m: &BTreeMap<String, f64>| measure.show(m.values().sum::<f64>());
    let diffs: Vec<String> = differences(ours, theirs, measure, top)
        .into_iter()
        .map(|(k, a, b)| format!("`{k}` {}/{}", measure.show(a), measure.show(b)))
        .collect();
    format!(
        "| {method} | {} | {} | {} |",
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
    let measure = if o.times { Measure::Millis } else { Measure::Calls };
    println!(
        "{}{} ({} steps after {WARMUP}), backbone `{backbone}`, {}{}: selfsup / PyTorch (fused \
         optimizer); the differences as `name` selfsup/PyTorch.\n",
        if o.times {
            "Milliseconds a step by operator, self times under each side's profiler"
        } else {
            "Operators a step"
        },
        if o.shapes { ", keyed by name and arguments" } else { "" },
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
        if o.shapes {
            c.env("SELFSUP_OP_SHAPES", "1");
        }
        if o.cuda_paths {
            c.envs(CUDA_PATHS);
        }
        watch(c, &tmp.join("selfsup.log"), Stdio::null())?;
        let mut c = Command::new(&t.python);
        c.args(&py).arg("--fused").arg(format!("--op-counts={}", theirs_path.display()));
        if o.shapes {
            c.arg("--op-shapes");
        }
        watch(c, &tmp.join("python.log"), Stdio::null())?;
        let ours = per_step(&read_json(&ours_path)?, measure, "selfsup's counts")?;
        let theirs = per_step(&read_json(&theirs_path)?, measure, "PyTorch's counts")?;
        println!("{}", row(method, &ours, &theirs, measure, o.top));
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
    fn keys_drop_trailing_absent_arguments() {
        assert_eq!(key("aten::empty [16] None None None"), "aten::empty [16]");
        assert_eq!(key("aten::to BFloat16[2] None None"), "aten::to BFloat16[2]");
        assert_eq!(key("aten::conv2d None [1, 1]"), "aten::conv2d None [1, 1]");
        assert_eq!(key("aten::relu"), "aten::relu");
        let v = json!({"steps": 2, "ops": {"aten::empty [16] None None": 4,
                                            "aten::empty [16] None None None": 2}});
        let m = per_step(&v, Measure::Calls, "test").unwrap();
        assert_eq!(m.into_iter().collect::<Vec<_>>(), [("aten::empty [16]".to_string(), 3.0)]);
    }

    #[test]
    fn options() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.methods.len(), o.large, o.mode, o.steps, o.top),
            (12, false, "channels-last", 4, 8)
        );
        assert!(!o.cuda_paths && !o.times && !o.shapes);
        let o = parse(&s(&[
            "--backbone",
            "large",
            "--mode",
            "bf16",
            "--steps",
            "3",
            "--cuda-paths",
            "--times",
            "--shapes",
        ]))
        .unwrap();
        assert!(o.shapes);
        assert_eq!(o.methods, s(&["rotnet", "simclr"]));
        assert_eq!(
            (o.mode, o.steps, o.cuda_paths, o.times),
            ("channels-last + bf16", 3, true, true)
        );
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
        let c = Measure::Calls;
        let ours = per_step(
            &json!({"steps": 4, "ops": {"aten::add_": 8, "aten::conv2d": 12, "aten::zero_": 40}}),
            c,
            "ours",
        )
        .unwrap();
        let theirs = per_step(
            &json!({"steps": 2, "ops": {"aten::conv2d": 6, "aten::relu_": 6, "aten::add_": 3}}),
            c,
            "theirs",
        )
        .unwrap();
        assert_eq!(ours["aten::zero_"], 10.0);
        assert_eq!(theirs["aten::relu_"], 3.0);
        // zero_ 10/0, relu_ 0/3, add_ 2/1.5 (a difference of half an operator); conv2d equal.
        assert_eq!(
            differences(&ours, &theirs, c, 8),
            vec![
                ("aten::zero_".to_string(), 10.0, 0.0),
                ("aten::relu_".to_string(), 0.0, 3.0),
                ("aten::add_".to_string(), 2.0, 1.5),
            ]
        );
        assert_eq!(differences(&ours, &theirs, c, 1).len(), 1);
        assert_eq!(
            row("rotnet", &ours, &theirs, c, 2),
            "| rotnet | 15 | 8 | `aten::zero_` 10/0, `aten::relu_` 0/3 |"
        );
        assert!(row("rotnet", &ours, &ours, c, 2).ends_with("| none |"));
        for (bad, want) in [
            (json!({"steps": 0, "ops": {}}), "no counted steps"),
            (json!({"steps": 2}), "no `ops`"),
            (json!({"steps": 2, "ops": {"x": "y"}}), "`ops.x` is not a number"),
        ] {
            let e = per_step(&bad, c, "ours").unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn self_times_a_step_in_milliseconds() {
        let m = Measure::Millis;
        let file = |us: Value| json!({"steps": 2, "ops": {"aten::mm": 1}, "self_us": us});
        let ours = per_step(
            &file(json!({"aten::mm": 9000.0, "aten::copy_": 3000.0, "aten::add_": 60.0})),
            m,
            "ours",
        )
        .unwrap();
        let theirs =
            per_step(&file(json!({"aten::mm": 10000.0, "aten::add_": 100.0})), m, "theirs")
                .unwrap();
        assert_eq!((ours["aten::mm"], ours["aten::copy_"]), (4.5, 1.5));
        // copy_ 1.5/0 ms, mm 4.5/5.0; add_ 0.03/0.05 differs by under 0.05 ms.
        assert_eq!(
            differences(&ours, &theirs, m, 8),
            vec![("aten::copy_".to_string(), 1.5, 0.0), ("aten::mm".to_string(), 4.5, 5.0)]
        );
        assert_eq!(
            row("rotnet", &ours, &theirs, m, 8),
            "| rotnet | 6.0 | 5.0 | `aten::copy_` 1.5/0.0, `aten::mm` 4.5/5.0 |"
        );
        // A counts file from before the self times: a clear error, not an empty row.
        let e = per_step(&json!({"steps": 2, "ops": {}}), m, "PyTorch's counts").unwrap_err();
        assert!(e.to_string().contains("no `self_us` object"), "{e}");
    }
}
