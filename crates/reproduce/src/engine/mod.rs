//! The reproduction engine: runs any [`Plan`] and writes `results/<plan>/<profile>/`.
//!
//! 1. Trainings, under `runs/<plan>/<profile>/<training>/`: skipped when `done.json` exists
//!    and the saved `config.json` is the one the plan gives now, resumed from the checkpoint
//!    of an interrupted run, else trained.
//! 2. Probes, under `runs/<plan>/<profile>/probes/<encoder>/<probe>[_seed<s>]/eval/`: a
//!    finished report is reused when its protocol settings, encoder, seed and labeled and test
//!    sets are the ones the plan gives now; a report made under other settings stops the run,
//!    naming the file and asking for `--force`.
//! 3. The report: `table.md` (printed), `results.json` (plan settings, machine, every score,
//!    the tables and findings, stage timings), `plan.json`, `configs/`, `commands.md`,
//!    `curves.png` (training curves), the plan's charts, and `run.log` (every invocation
//!    appends; `--force` starts it afresh and redoes every stage).
//!
//! The engine knows nothing of any method: what to train, probe and print is the plan's.
pub mod files;
pub mod plan;
pub mod plots;
pub mod report;
pub mod scores;
mod stages;

pub use plan::{
    Artifact, Chart, EncoderSpec, Labeled, Plan, ProbeSpec, Protocol, Scatter, Source, Training,
};
pub use report::{Cell, Column, Finding, Report, Section, Table, Test};
pub use scores::{Row, ScoreRef, Scores, Stat};

use anyhow::{bail, Context, Result};
use files::{write_file, write_json, Log};
use selfsup_core::Registry;
use selfsup_data::{ImageDataset, Split};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

/// Where and how a plan runs (from the command line).
#[derive(Debug, Clone)]
pub struct Env {
    /// The dataset spec (`cifar10`, `synthetic:320:32`).
    pub dataset: String,
    /// Its folder.
    pub data_dir: PathBuf,
    /// How the folder was chosen (for the log).
    pub data_why: String,
    /// The device of trainings and probes.
    pub device: Device,
    /// Why this profile (for the log).
    pub profile_why: String,
    /// Root of the run folders (`runs`).
    pub runs_dir: PathBuf,
    /// Root of the result folders (`results`).
    pub results_dir: PathBuf,
    /// Redo every stage.
    pub force: bool,
    /// The command line of this invocation (recorded in the results).
    pub command: String,
}

/// A seeded subset of `n` images, drawn as the trainer's `data.max_images` (stream `stream`).
pub fn subset(ds: &ImageDataset, n: Option<usize>, seed: u64, stream: &str) -> ImageDataset {
    selfsup_core::trainer::seeded_subset(ds, n, seed, stream)
}

/// The CPU this runs on, as `/proc/cpuinfo` names it, with its family, model and the vector
/// extensions that change CPU speed (AVX2, AVX-512, AVX512-BF16, AMX); `unknown` elsewhere.
pub fn cpu_model() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return "unknown".into();
    };
    let field = |k: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|n| n.trim() == k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let name = field("model name").unwrap_or_else(|| "unknown".into());
    let flags = field("flags").unwrap_or_default();
    let have: Vec<&str> = ["avx2", "avx512f", "avx512_bf16", "amx_tile"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    format!(
        "{name} (family {}, model {}; {})",
        field("cpu family").unwrap_or_else(|| "?".into()),
        field("model").unwrap_or_else(|| "?".into()),
        if have.is_empty() { "no AVX2".to_string() } else { have.join(", ") }
    )
}

/// Writes `plan.json` and each training's run config (`configs/<training>.json`) into
/// `<results_dir>/<plan>/<profile>/`, trains nothing; returns the configs' paths in plan order.
pub fn write_configs(plan: &Plan, results_dir: &Path) -> Result<Vec<PathBuf>> {
    plan.validate().map_err(anyhow::Error::msg)?;
    let res_root = results_dir.join(&plan.name).join(&plan.profile);
    write_json(&res_root.join("configs").join("profile.json"), &plan.settings)?;
    write_json(&res_root.join("plan.json"), plan)?;
    let mut paths = Vec::new();
    for t in &plan.trainings {
        let path = res_root.join("configs").join(format!("{}.json", t.name));
        write_json(&path, &t.config)?;
        paths.push(path);
    }
    Ok(paths)
}

/// Runs `plan` with the methods of `registry`.
pub fn run(plan: &Plan, env: &Env, registry: &Registry) -> Result<()> {
    plan.validate().map_err(anyhow::Error::msg)?;
    for t in &plan.trainings {
        if registry.get(&t.config.method).is_err() {
            bail!(
                "plan `{}` trains `{}` with method `{}`, which this build does not register \
                 (known: {})",
                plan.name,
                t.name,
                t.config.method,
                registry.names().join(", ")
            );
        }
    }
    let wall = Instant::now();
    let device_name = selfsup_core::device::device_name(env.device);
    let run_root = env.runs_dir.join(&plan.name).join(&plan.profile);
    let res_root = env.results_dir.join(&plan.name).join(&plan.profile);
    if env.force {
        // Everything is redone; configs of trainings an older plan had must not linger.
        for dir in [run_root.clone(), res_root.join("configs")] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("--force: cannot remove {}", dir.display()))?;
            }
        }
    }
    for dir in [&res_root, &run_root] {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    let mut log = Log::open(&res_root.join("run.log"), env.force)?;
    log.line(&format!(
        "== selfsup reproduce {}, profile `{}` ({}): {}",
        plan.name, plan.profile, env.profile_why, plan.summary
    ));
    log.line(&format!("   command: {}", env.command));
    let cpu = cpu_model();
    log.line(&format!(
        "   device: {device_name} ({cpu}, {} threads); data: {} ({}); runs: {}; results: {}",
        tch::get_num_threads(),
        env.data_dir.display(),
        env.data_why,
        run_root.display(),
        res_root.display()
    ));
    selfsup_core::determinism::set_mkldnn_enabled(!plan.deterministic);

    let open = |split| {
        selfsup_data::open_dataset(&env.dataset, split, &env.data_dir)
            .with_context(|| format!("opening `{}` in {}", env.dataset, env.data_dir.display()))
    };
    let (full_train, full_test) = (open(Split::Train)?, open(Split::Test)?);
    let test_set = subset(&full_test, plan.test_images, plan.seed, "test_images");
    log.line(&format!(
        "   {} training images; probes score {} of {} test images",
        full_train.len(),
        test_set.len(),
        full_test.len()
    ));
    write_configs(plan, &env.results_dir)?;

    let mut st = stages::Stages {
        plan,
        env,
        registry,
        run_root: run_root.clone(),
        log,
        records: Vec::new(),
        full_train,
        test_set,
    };
    // 1. Trainings.
    let mut trainings = BTreeMap::new();
    for t in &plan.trainings {
        trainings.insert(t.name.clone(), st.train(t)?);
    }
    // Their files the results keep (sample grids).
    for a in &plan.artifacts {
        copy_artifact(a, &run_root, &res_root, &mut st.log)?;
    }
    // A training may have switched oneDNN per its config; the probes follow the plan.
    selfsup_core::determinism::set_mkldnn_enabled(!plan.deterministic);

    // 2. Probes.
    let mut scores = Scores::default();
    let mut cache = stages::EncoderCache::default();
    // Trainings whose method could not use the plan's trunk: no encoder to probe, no curve.
    let unusable: std::collections::HashSet<&str> = trainings
        .iter()
        .filter(|(_, done)| done.get("unusable").is_some())
        .map(|(name, _)| name.as_str())
        .collect();
    let reads_unusable = |p: &ProbeSpec| {
        let spec = plan.encoders.iter().find(|e| e.name == p.encoder);
        spec.and_then(|e| e.source.run()).is_some_and(|run| unusable.contains(run))
    };
    for p in &plan.probes {
        if reads_unusable(p) {
            st.log.line(&format!(
                "[unusable] probe {} of {}: its training could not use the trunk",
                p.name, p.encoder
            ));
            continue;
        }
        for &seed in &p.seeds {
            let report = st.probe(p, seed, &mut cache)?;
            scores.add(&p.encoder, &p.name, seed, &report);
        }
    }
    drop(cache);

    // 3. Report.
    let ctx = report::Context { scores: &scores, trainings: &trainings, command: &env.command };
    let md = plan.report.markdown(&ctx);
    write_file(&res_root.join("table.md"), md.as_bytes())?;
    let (tables, findings) = plan.report.json(&ctx);
    let wall_s = wall.elapsed().as_secs_f64();
    write_json(
        &res_root.join("results.json"),
        &json!({
            "plan": plan.name,
            "profile": plan.settings,
            "dataset": env.dataset,
            "data_dir": env.data_dir,
            "device": device_name,
            "machine": {"cpu": cpu, "threads": tch::get_num_threads()},
            "command": env.command,
            "wall_seconds_this_invocation": wall_s,
            "tables": tables,
            "findings": findings,
            "trainings": trainings,
            "scores": scores.probes,
            "stages": st.records,
            "test_images": st.test_set.len(),
        }),
    )?;
    write_commands(plan, &res_root, &env.command)?;
    let curves: Vec<(String, PathBuf)> = plan
        .trainings
        .iter()
        .filter(|t| !unusable.contains(t.name.as_str()))
        .map(|t| (t.name.clone(), run_root.join(&t.name).join("metrics.jsonl")))
        .collect();
    if !curves.is_empty() {
        plots::training_curves(&curves, &res_root.join("curves.png"))?;
    }
    for c in &plan.charts {
        let values: Vec<(String, Vec<Option<f64>>)> = c
            .series
            .iter()
            .map(|(label, cells)| (label.clone(), cells.iter().map(|x| x.value(&ctx)).collect()))
            .collect();
        plots::chart(c, &values, &res_root.join(&c.file))?;
    }
    for sc in &plan.scatters {
        let points: Vec<(String, f64, f64)> = sc
            .points
            .iter()
            .filter_map(|(label, x, y)| Some((label.clone(), x.value(&ctx)?, y.value(&ctx)?)))
            .collect();
        plots::scatter(sc, &points, &res_root.join(&sc.file))?;
    }
    println!();
    print!("{md}");
    st.log.line(&format!(
        "== done in {wall_s:.0} s (this invocation; skipped stages cost nothing); results in {}",
        res_root.display()
    ));
    Ok(())
}

/// Writes `commands.md`: the command that produced the results and the per-stage equivalents.
fn write_commands(plan: &Plan, res_root: &std::path::Path, command: &str) -> Result<()> {
    let (name, profile) = (&plan.name, &plan.profile);
    let mut s = format!(
        "# Commands\n\nThis folder was produced by:\n\n```\n{command}\n```\n\n(`cargo xtask \
         reproduce {name} --profile {profile}` builds the release binary and runs the same.)\n\n"
    );
    if !plan.trainings.is_empty() {
        s += "Each training is the run config in `configs/`, i.e. the equivalent of\n\n```\n";
        for t in &plan.trainings {
            s += &format!(
                "selfsup train --config results/{name}/{profile}/configs/{0}.json --out \
                 runs/{name}/{profile}/{0}\n",
                t.name
            );
        }
        s += "```\n\n";
    }
    s += &plan.probe_commands;
    s.push('\n');
    write_file(&res_root.join("commands.md"), s.as_bytes())
}

/// Copies the last file (by name) of `a.folder` in its training's run folder to `a.file` in
/// the results folder; a training that wrote none is logged, not an error (a config may turn
/// its samples off).
fn copy_artifact(a: &Artifact, run_root: &Path, res_root: &Path, log: &mut Log) -> Result<()> {
    let dir = run_root.join(&a.training).join(&a.folder);
    let last = match std::fs::read_dir(&dir) {
        Ok(entries) => {
            entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).max()
        }
        Err(_) => None,
    };
    let Some(src) = last else {
        log.line(&format!("[artifact] {}: {} holds no file", a.file, dir.display()));
        return Ok(());
    };
    let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
    write_file(&res_root.join(&a.file), &bytes)?;
    log.line(&format!("[artifact] {} from {}", a.file, src.display()));
    Ok(())
}
