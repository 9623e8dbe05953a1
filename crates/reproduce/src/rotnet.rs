//! `selfsup reproduce rotnet [--profile smoke|cpu|paper] [--dataset cifar10] [--force]`: trains
//! and evaluates everything behind the CIFAR-10 tables of Gidaris, Singh, Komodakis,
//! "Unsupervised Representation Learning by Predicting Image Rotations" (ICLR 2018; official
//! code gidariss/FeatureLearningRotNet), and writes `results/rotnet/<profile>/`.
//!
//! Stages, each skipped when its result file exists (unless `--force`), each training resumed
//! from its checkpoint when it was interrupted:
//! 1. RotNet pretraining of the NIN: `rotnet_four` (four rotations; Table 1, Table 3 and
//!    the few-label table), one run per rotation set for Table 2 (`four`, `eight`,
//!    `two_0_180`, `two_90_270`: `rotnet_<set>`, where `rotnet_four` is the Table 1 run, or
//!    `sets_<set>` when the profile gives them a shorter budget of their own, as `cpu` does),
//!    and the supervised NIN baseline, under `runs/rotnet/<profile>/<name>/`;
//! 2. probes on frozen features, under `runs/rotnet/<profile>/probes/<encoder>/<probe>/`:
//!    the non-linear probe (RotNet §3.1: three fully connected layers with two hidden layers
//!    of 200 units, BN and ReLU; the official `MultLayer` classifier) on every block of the
//!    `four` RotNet and of a random-init NIN; the linear probe on every block of both; the
//!    non-linear probe on block 2 of Table 2's other runs and of the supervised NIN; the
//!    conv-block probe (`NIN_ConvBlock3`) on block 2 of the RotNet and the random NIN; the
//!    supervised NIN's own test accuracy; the few-label table (RotNet §4.1, official `*_K*`
//!    configs): for `K` labeled images per class, the conv-block probe on frozen block-2
//!    RotNet features against the NIN trained from scratch on the same images (a random-init
//!    encoder fine-tuned end to end with a linear head on its pooled output);
//! 3. the report: `table.md`, `results.json`, `commands.md`, `configs/`, `curves.png`,
//!    `blocks.png`, `run.log` (every invocation appends to it; `--force` starts it afresh).
//!
//! A finished stage is reused only when it was made under the settings the profile gives now:
//! a training's saved config, a probe's protocol settings, encoder, seed and labeled and test
//! sets must match, or the run stops, naming the file and asking for `--force`.
//!
//! Paper figures (CIFAR-10 test accuracy, %): Table 1 (RotNet, 4 blocks, non-linear probe per
//! block) 85.07, 89.06, 86.21, 61.73; Table 2 (block 2, rotation sets) 89.06 (four),
//! 88.51 (eight), 87.46 (0°/180°), 85.52 (90°/270°); Table 3 supervised NIN 92.80, random
//! init + conv 72.50, RotNet + conv 91.16. The few-label comparison is a plot in the paper, so
//! its rows carry no paper figure.
//!
//! Cpu profile planning (2 shared cores, AMD EPYC without bf16, 32 MiB L3, libtorch 2.11,
//! oneDNN on). A PyTorch loop of the same NIN and schedule reaches the same rotation accuracy
//! as ours (42.4 and 52.3% over two epochs of 10,000 images at rate 0.1; ours 42.3 and 52.1%).
//!
//! *Batch 64, not the paper's 128.* At width 16 one 16-channel 32×32 activation of a
//! 128-image step (512 inputs) is 33.5 MB, more than the L3; at batch 64 it is half that. On
//! these cores PyTorch's own step runs 453 source images/s at batch 64 against 258 at 128
//! (`bench/rotnet_step.py`, width 16), and our pretraining 1,750–1,900 inputs/s against
//! about 1,150. For the same half hour, batch 64 trains 50,000 images for 3 epochs instead of
//! 2 at twice the steps per epoch, and lifts both blocks by about 4 points (table below).
//!
//! *Table 1 gets 6 epochs; Table 2 gets its own 1-epoch runs.* Block 1 against block 2 is
//! what a short run gets wrong: block 1 saturates early and block 2 climbs slowly. Non-linear
//! probe (10,000 labels, 15 epochs), block 1 / block 2, top-1 %, width 16, probe seed 0 unless
//! said (the probe seed also draws the labeled images). The rows up to the last were measured
//! before the probe head's batch norm was given PyTorch's init (weight 1): tch's default drew
//! those weights from libtorch's unseeded generator, so each of these figures is one draw with
//! about ±0.3 of run-to-run spread (block 2 of one encoder gave 55.73, 55.96 and 56.22 in
//! three identical invocations); the probe now repeats bit for bit.
//!
//! | pretraining | block 1 / block 2 |
//! |---|---|
//! | 20,000 images × 5 epochs, batch 128 | 50.66 / 48.73 |
//! | 50,000 × 2, batch 128 (the previous profile) | 51.15 / 50.69; seeds 1–3: 51.63 / 50.07, 51.13 / 50.02, 51.18 / 49.64 |
//! | 50,000 × 4, batch 128 | 51.03 / 50.69 |
//! | 50,000 × 2, batch 128, PyTorch's default conv init | 51.43 / 50.57 |
//! | 50,000 × 2, batch 64 | 53.36 / 52.77 |
//! | 50,000 × 3, batch 64 (×0.2 at 2; 329 s) | 54.95 / 54.26 |
//! | 50,000 × 1, width 32, batch 32 (323 s) | 55.32 / 54.28 |
//! | 50,000 × 6, batch 64, ×0.2 at 3, 5 | 56.02 / 56.44; seeds 1–3: 55.97 / 55.89, 54.88 / 56.69, 55.58 / 55.93 |
//! | 50,000 × 6, batch 64, ×0.2 at 2, 4, 5 | 55.83 / 55.87; seeds 1–3: 55.39 / 55.41, 55.75 / 56.17, 55.26 / 55.47 |
//! | **the same encoder, fixed probe head (the profile)** | **55.37 / 55.95; seeds 1–3: 55.31 / 55.69, 56.02 / 56.20, 55.21 / 56.21** |
//!
//! So six epochs at batch 64 put block 2 ahead at every probe seed, by 0.2 to 1.0 points; the
//! paper's 4-point lead needs far more pretraining than fits here. After the fidelity review
//! (the RotNet head with PyTorch's `nn.Linear` initialisation, among others) the same profile,
//! re-run on 2 cores of an Intel Xeon (model 207), gives block 1 / block 2 54.75 ± 0.10 /
//! 54.60 ± 0.13 over probe seeds 0–2: at this budget the two blocks are within noise. Six epochs of every
//! rotation set would not fit (eight rotations run at about 1,020 inputs/s, 390 s an epoch),
//! so Table 2 trains every set, `four` included, for 1 epoch of all 50,000 images with the
//! same batch and rate. Four rotations against 0°/180° there, block 2, probe seeds 0–3:
//! 49.96 / 49.05, 50.80 / 48.83, 50.46 / 49.19, 50.53 / 49.09. The whole cpu reproduction
//! took 1,963 s of stage time (Table 1's pretraining 720 s, eight rotations 393 s). Wider is
//! not the way: width 32 costs 3× per image and still had block 1 ahead after the one epoch
//! it affords.
//!
//! Not causes of block 1's lead (each measured once): PyTorch's default conv init (row 4
//! above; what the published runs had, since the official `weight_initialization()` is never
//! called); the official probe augmentation (random crop and flip, features recomputed every
//! batch; all 50,000 labels after 20,000 × 5: 57.90 / 54.09 against 59.90 / 57.16 without);
//! a longer probe (30 epochs: 54.81 / 53.90 after 50,000 × 3 at batch 64) and the probe
//! schedule scaled from the 50 epochs the official rate table covers rather than the 100 it
//! runs (55.42 / 54.04, same encoder). More labels favour block 1: with all 50,000, block 1
//! led by about 2.4 points after 50,000 × 2 at batch 128 (three seeds).
mod plots;
mod profile;
mod report;

use crate::common::{
    data_dir, ensure_probe_matches, ensure_trained_with, finished_probe, parse_args, read_json,
    refuse_paper_on_cpu, subset, write_json, Log,
};
use anyhow::{Context, Result};
use profile::{official_sgd, steps, Budget, Profile, TABLE1_RUN};
use selfsup_core::checkpoint;
use selfsup_core::config::{DataConfig, RunConfig, TrainConfig};
use selfsup_core::trainer::{train, TrainOptions};
use selfsup_core::{BuildContext, Encoder, EncoderConfig, Registry};
use selfsup_data::{ImageDataset, Split};
use selfsup_eval::features::Normalization;
use selfsup_eval::fewshot::FewShotMode;
use selfsup_eval::{EvalReport, FewShotConfig, LabelBudget};
use selfsup_rotnet::{RotNetConfig, RotationSet};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

const USAGE: &str = "usage: selfsup reproduce rotnet [--profile smoke|cpu|paper] \
[--dataset cifar10] [--data-dir DIR] [--device auto|cpu|cuda:N] [--runs-dir DIR] \
[--results-dir DIR] [--set PROFILE_KEY=VALUE]... [--force]";

/// Shared state of one reproduction.
struct Repro {
    profile: Profile,
    registry: Registry,
    device: Device,
    device_name: String,
    dataset: String,
    data_dir: PathBuf,
    run_root: PathBuf,
    res_root: PathBuf,
    log: Log,
    stages: Vec<Value>,
    train_set: ImageDataset,
}

impl Repro {
    fn run_config(
        &self,
        method: &str,
        encoder: &EncoderConfig,
        method_config: Value,
        epochs: u64,
        ms: &[u64],
    ) -> RunConfig {
        let p = &self.profile;
        RunConfig {
            method: method.into(),
            seed: p.seed,
            device: self.device_name.clone(),
            data: DataConfig {
                dataset: self.dataset.clone(),
                split: Split::Train,
                data_dir: Some(self.data_dir.clone()),
                max_images: p.train_images,
            },
            encoder: encoder.clone(),
            train: TrainConfig {
                epochs,
                batch_size: p.batch_size,
                optimizer: official_sgd(p.lr),
                schedule: steps(ms),
                channels_last: p.channels_last,
                checkpoint_every: 1,
                log_every: p.log_every,
                deterministic: p.deterministic,
                ..TrainConfig::default()
            },
            method_config,
        }
    }

    /// The run config of the RotNet pretraining with `set` for `budget`.
    fn rotnet_config(&self, set: RotationSet, budget: &Budget) -> Result<RunConfig> {
        let mc = serde_json::to_value(RotNetConfig::with_rotations(set))?;
        let enc = &self.profile.encoder;
        Ok(self.run_config("rotnet", enc, mc, budget.epochs, &budget.milestones))
    }

    /// The run config of the supervised NIN (3 blocks, as the official config).
    fn supervised_config(&self) -> Result<RunConfig> {
        let entry = self.registry.get("supervised")?;
        let p = &self.profile;
        Ok(self.run_config(
            "supervised",
            &p.supervised_encoder,
            (entry.default_config)(),
            p.supervised_epochs,
            &p.supervised_milestones,
        ))
    }

    /// Trains `cfg` into `runs/.../<name>` unless its `done.json` exists; resumes from a
    /// checkpoint left by an interrupted run.
    fn train_stage(&mut self, name: &str, cfg: &RunConfig) -> Result<Value> {
        write_json(&self.res_root.join("configs").join(format!("{name}.json")), cfg)?;
        let dir = self.run_root.join(name);
        let done = dir.join("done.json");
        if done.exists() {
            ensure_trained_with(&dir, cfg, &self.profile.name)?;
            self.log.line(&format!("[skip] train {name}: {} exists", done.display()));
            let v = read_json(&done)?;
            self.stages.push(json!({"stage": format!("train {name}"), "skipped": true,
                "seconds": v["seconds"]}));
            return Ok(v);
        }
        let resume = checkpoint::exists(&dir);
        self.log.line(&format!(
            "[train] {name}: {} epochs on {} images{}",
            cfg.train.epochs,
            self.train_set.len(),
            if resume { " (resuming from its checkpoint)" } else { "" }
        ));
        let start = Instant::now();
        let mut opts = TrainOptions {
            resume,
            progress: true,
            dataset: Some(self.train_set.clone()),
            ..TrainOptions::default()
        };
        let summary = train(cfg, &self.registry, &dir, &mut opts)
            .with_context(|| format!("training {name} in {}", dir.display()))?;
        let seconds = start.elapsed().as_secs_f64();
        let last = last_epoch_line(&dir.join("metrics.jsonl"))?;
        let v = json!({"summary": summary, "seconds": seconds, "last_epoch": last});
        write_json(&done, &v)?;
        self.log.line(&format!(
            "[done] train {name}: {seconds:.0} s, {:.0} inputs/s, last epoch {last}",
            summary.inputs_per_second
        ));
        self.stages.push(json!({"stage": format!("train {name}"), "skipped": false,
            "seconds": seconds}));
        Ok(v)
    }

    /// Runs `probe` on an encoder unless `runs/.../probes/<encoder>/<probe>/eval/*.json`
    /// exists. `load` gives the encoder (only called when the probe runs).
    /// `seed` is the probe seed; `sets.train` must be its labeled subset.
    fn probe_stage(
        &mut self,
        encoder_name: &str,
        probe: &str,
        cache: &mut EncoderCache,
        sets: &ProbeSets,
        seed: u64,
    ) -> Result<EvalReport> {
        let dir = if seed == 0 { probe.to_string() } else { format!("{probe}_seed{seed}") };
        let out = self.run_root.join("probes").join(encoder_name).join(dir);
        let protocol = if probe == "linear" { "linear" } else { "nonlinear" };
        let file = out.join("eval").join(format!("{protocol}.json"));
        let stage = format!("probe {probe} {encoder_name} seed {seed}");
        let (cfg_name, taps) = probe_spec(probe);
        let mut linear = self.profile.linear.clone();
        let mut nonlinear =
            if cfg_name == "mlp" { self.profile.mlp.clone() } else { self.profile.conv.clone() };
        linear.taps = taps.clone();
        nonlinear.taps = taps.clone();
        let settings = if cfg_name == "linear" {
            serde_json::to_value(&linear)?
        } else {
            serde_json::to_value(&nonlinear)?
        };
        let enc_cfg = self.profile.encoder_of(encoder_name).clone();
        let sets_now = (&sets.train, &sets.test);
        if let Some(r) = self.finished_probe(&stage, &file, &settings, &enc_cfg, seed, sets_now)? {
            return Ok(r);
        }
        self.log
            .line(&format!("[probe] {probe} on {encoder_name}, seed {seed} ({})", taps.join(", ")));
        let encoder = cache.get(self, encoder_name)?;
        let dev = self.device;
        let report = if cfg_name == "linear" {
            selfsup_eval::linear_probe(encoder, dev, &sets.train, &sets.test, &linear, seed)?
        } else {
            selfsup_eval::nonlinear_probe(encoder, dev, &sets.train, &sets.test, &nonlinear, seed)?
        };
        self.record_probe(&stage, encoder_name, &out, report, |r| r.tap.clone())
    }

    /// The saved report of a probe stage that already ran (logged and recorded as skipped);
    /// an error when it was made under other `settings` (the protocol config the stage would
    /// run), encoder, seed or `sets` (labeled, test) than the profile gives now.
    fn finished_probe(
        &mut self,
        stage: &str,
        file: &Path,
        settings: &Value,
        encoder: &EncoderConfig,
        seed: u64,
        sets: (&ImageDataset, &ImageDataset),
    ) -> Result<Option<EvalReport>> {
        let name = &self.profile.name;
        finished_probe(&mut self.log, &mut self.stages, stage, file, |r| {
            ensure_probe_matches(file, r, settings, encoder, seed, sets, name)
        })
    }

    /// Writes a fresh probe report under `out`, logs each row (named by `row_name`) and records
    /// the stage.
    fn record_probe(
        &mut self,
        stage: &str,
        encoder_name: &str,
        out: &Path,
        mut report: EvalReport,
        row_name: impl Fn(&selfsup_eval::ResultRow) -> String,
    ) -> Result<EvalReport> {
        report.encoder = Some(serde_json::to_value(self.profile.encoder_of(encoder_name))?);
        report.checkpoint = Some(encoder_name.to_string());
        report.write(out)?;
        for r in &report.rows {
            self.log.line(&format!("        {encoder_name} {}: top-1 {:.2}%", row_name(r), r.top1));
        }
        self.stages.push(json!({"stage": stage, "skipped": false, "seconds": report.seconds}));
        Ok(report)
    }

    /// One side of the few-label table: `mode` (`Nonlinear`: the frozen conv-block probe on
    /// block 2; `Finetune`: training the whole encoder from its current weights) at every
    /// budget of the profile, on `encoder_name`. Skipped when its report exists.
    fn few_label_stage(
        &mut self,
        encoder_name: &str,
        mode: FewShotMode,
        cache: &mut EncoderCache,
        sets: &ProbeSets,
    ) -> Result<EvalReport> {
        let probe = match mode {
            FewShotMode::Finetune => "few_finetune",
            _ => "few_conv_block2",
        };
        let out = self.run_root.join("probes").join(encoder_name).join(probe);
        let file = out.join("eval").join("fewshot.json");
        let stage = format!("probe {probe} {encoder_name}");
        let p = &self.profile;
        let cfg = FewShotConfig {
            budgets: p.few_labels.iter().map(|&k| LabelBudget::PerClass(k)).collect(),
            modes: vec![mode],
            tap: "block2".into(),
            nonlinear: p.few_conv.clone(),
            finetune: p.few_supervised.clone(),
            normalization: Some(Normalization::cifar10()),
            ..FewShotConfig::default()
        };
        let settings = serde_json::to_value(&cfg)?;
        let enc_cfg = p.encoder_of(encoder_name).clone();
        let seed = p.seed;
        let sets_now = (&sets.full_train, &sets.test);
        if let Some(r) = self.finished_probe(&stage, &file, &settings, &enc_cfg, seed, sets_now)? {
            return Ok(r);
        }
        let p = &self.profile;
        self.log.line(&format!(
            "[probe] {probe} on {encoder_name}: {:?} labeled images per class",
            p.few_labels
        ));
        let (vs, encoder) = cache.get_with_vars(self, encoder_name)?;
        let report = selfsup_eval::fewshot(encoder, vs, &sets.full_train, &sets.test, &cfg, seed)?;
        self.record_probe(&stage, encoder_name, &out, report, |r| r.variant.clone())
    }

    /// The supervised NIN's own test accuracy (its encoder and linear head end to end).
    fn supervised_accuracy(&mut self, sets: &ProbeSets) -> Result<f64> {
        let dir = self.run_root.join("supervised");
        let file = self.run_root.join("probes").join("supervised").join("end_to_end.json");
        if file.exists() {
            self.log.line(&format!("[skip] supervised test accuracy: {} exists", file.display()));
            let v = read_json(&file)?;
            self.stages.push(json!({"stage": "supervised test accuracy", "skipped": true,
                "seconds": v["seconds"]}));
            return v["top1"].as_f64().context("end_to_end.json: no top1");
        }
        let start = Instant::now();
        let ck = checkpoint::load(&dir)?;
        let vs = tch::nn::VarStore::new(self.device);
        let ctx = BuildContext {
            device: self.device,
            seed: self.profile.seed,
            num_train_images: self.train_set.len(),
            image_channels: ck.state.image_channels,
            image_size: sets.test.height() as i64,
            encoder: ck.state.config.encoder.clone(),
        };
        let cfg: selfsup_supervised::SupervisedConfig =
            serde_json::from_value(ck.state.config.method_config.clone())?;
        let norm = Normalization { mean: cfg.mean.clone(), std: cfg.std.clone() };
        let model = selfsup_supervised::Supervised::new(&vs.root(), cfg, &ctx)?;
        let path = checkpoint::checkpoint_dir(&dir).join("model.safetensors");
        checkpoint::load_into(&vs, &ck.model, "", &path)?;
        let n = sets.test.len() as i64;
        let labels = selfsup_eval::features::labels_tensor(&sets.test, Device::Cpu)?;
        let mut correct = 0i64;
        for lo in (0..n).step_by(256) {
            let idx: Vec<i64> = (lo..(lo + 256).min(n)).collect();
            let x = selfsup_eval::features::images_tensor(&sets.test, &idx, &norm, None)?;
            let pred = tch::no_grad(|| model.logits_t(&x.to_device(self.device), false))
                .argmax(-1, false)
                .to_device(Device::Cpu);
            let y = labels.narrow(0, lo, idx.len() as i64);
            correct += pred.eq_tensor(&y).sum(tch::Kind::Int64).int64_value(&[]);
        }
        let top1 = 100.0 * correct as f64 / n as f64;
        let seconds = start.elapsed().as_secs_f64();
        write_json(&file, &json!({"top1": top1, "test_images": n, "seconds": seconds}))?;
        self.log.line(&format!("[done] supervised NIN test accuracy {top1:.2}%"));
        self.stages.push(json!({"stage": "supervised test accuracy", "skipped": false,
            "seconds": seconds}));
        Ok(top1)
    }
}

/// Which config and taps a probe name means.
fn probe_spec(probe: &str) -> (&'static str, Vec<String>) {
    match probe {
        "mlp_all" => ("mlp", vec!["all".into()]),
        "mlp_block2" => ("mlp", vec!["block2".into()]),
        "conv_block2" => ("conv", vec!["block2".into()]),
        _ => ("linear", vec!["all".into()]),
    }
}

/// The labeled train and test images of the probes.
#[derive(Clone)]
struct ProbeSets {
    train: ImageDataset,
    test: ImageDataset,
    /// The whole training split: the few-label budgets are drawn from it, as the official
    /// `num_imgs_per_cat` (a probe subset may hold fewer than `K` images of a class).
    full_train: ImageDataset,
}

/// Encoders loaded on demand, kept while the probes of one encoder run.
#[derive(Default)]
struct EncoderCache {
    name: String,
    held: Option<(tch::nn::VarStore, Box<dyn Encoder>)>,
}

impl EncoderCache {
    fn get(&mut self, r: &Repro, name: &str) -> Result<&dyn Encoder> {
        Ok(self.get_with_vars(r, name)?.1)
    }

    /// The encoder `name` and the var store holding its variables.
    fn get_with_vars(
        &mut self,
        r: &Repro,
        name: &str,
    ) -> Result<(&tch::nn::VarStore, &dyn Encoder)> {
        if self.name != name || self.held.is_none() {
            self.held = None;
            let (channels, seed) = (r.train_set.channels() as i64, r.profile.seed);
            let cfg = r.profile.encoder_of(name);
            let loaded = if name == "random" || name == "scratch" {
                let e = selfsup_eval::baselines::random_encoder(cfg, channels, seed, r.device);
                (e.vs, e.encoder)
            } else if name == "random_legacy" {
                let e = selfsup_eval::baselines::random_encoder_pytorch_legacy(
                    cfg, channels, seed, r.device,
                );
                (e.vs, e.encoder)
            } else {
                let e = checkpoint::load_encoder(&r.run_root.join(name), r.device)
                    .with_context(|| format!("loading the encoder of {name}"))?;
                (e.vs, e.encoder)
            };
            self.held = Some(loaded);
            self.name = name.to_string();
        }
        let held = self.held.as_ref().expect("just loaded");
        Ok((&held.0, &*held.1))
    }
}

/// The last `"kind": "epoch"` line of a metrics file, `null` when there is none.
fn last_epoch_line(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["kind"] == "epoch")
        .unwrap_or(Value::Null))
}

/// Entry point: `args` are the arguments after `reproduce rotnet`; `registry` must hold
/// `rotnet` and `supervised`.
pub fn run(args: &[String], registry: &Registry) -> Result<()> {
    let Some(args) = parse_args(args, USAGE)? else {
        return Ok(());
    };
    let wall = Instant::now();
    let cuda = tch::Cuda::is_available();
    let (profile_name, profile_why) = match &args.profile {
        Some(p) => (p.clone(), "from --profile".to_string()),
        None if cuda => ("paper".into(), "no --profile given and CUDA is present".into()),
        None => ("cpu".into(), "no --profile given and no CUDA device".into()),
    };
    let profile = Profile::resolve(&profile_name, &args.sets)?;
    let device = selfsup_core::device::parse_device(&args.device)?;
    let device_name = selfsup_core::device::device_name(device);
    refuse_paper_on_cpu(&profile.name, &args.device, device)?;
    let (data_dir, data_why) = data_dir(args.data_dir.as_deref());
    let run_root = args.runs_dir.join("rotnet").join(&profile.name);
    let res_root = args.results_dir.join("rotnet").join(&profile.name);
    if args.force {
        // Everything is redone; configs of runs an older profile had must not linger.
        for dir in [run_root.clone(), res_root.join("configs")] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("--force: cannot remove {}", dir.display()))?;
            }
        }
    }
    std::fs::create_dir_all(&res_root).with_context(|| format!("{}", res_root.display()))?;
    std::fs::create_dir_all(&run_root).with_context(|| format!("{}", run_root.display()))?;
    let mut log = Log::open(&res_root.join("run.log"), args.force)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    log.line(&format!(
        "== selfsup reproduce rotnet, profile `{}` ({profile_why}): {}",
        profile.name, profile.summary
    ));
    log.line(&format!("   command: {command}"));
    log.line(&format!(
        "   device: {device_name}; data: {} ({data_why}); runs: {}; results: {}",
        data_dir.display(),
        run_root.display(),
        res_root.display()
    ));
    selfsup_core::determinism::set_mkldnn_enabled(!profile.deterministic);

    let full_train = selfsup_data::open_dataset(&args.dataset, Split::Train, &data_dir)
        .with_context(|| format!("opening `{}` in {}", args.dataset, data_dir.display()))?;
    let full_test = selfsup_data::open_dataset(&args.dataset, Split::Test, &data_dir)
        .with_context(|| format!("opening `{}` in {}", args.dataset, data_dir.display()))?;
    // The same seeded subset the trainer draws for `data.max_images`.
    let train_set = subset(&full_train, profile.train_images, profile.seed, "max_images");
    let sets = ProbeSets {
        train: subset(&full_train, profile.probe_train_images, profile.seed, "max_images"),
        test: subset(&full_test, profile.test_images, profile.seed, "test_images"),
        full_train: full_train.clone(),
    };
    log.line(&format!(
        "   pretraining on {} of {} training images; probes: {} training, {} test images",
        train_set.len(),
        full_train.len(),
        sets.train.len(),
        sets.test.len()
    ));

    for method in ["rotnet", "supervised"] {
        registry.get(method)?;
    }
    let mut r = Repro {
        profile,
        registry: registry.clone(),
        device,
        device_name,
        dataset: args.dataset.clone(),
        data_dir: data_dir.clone(),
        run_root,
        res_root: res_root.clone(),
        log,
        stages: Vec::new(),
        train_set,
    };

    // 1. Trainings: the Table 1 RotNet, Table 2's rotation sets (whose `four` is the Table 1
    // run unless the profile gives the sets a budget of their own), the supervised NIN.
    let table1 = r.train_stage(
        TABLE1_RUN,
        &r.rotnet_config(RotationSet::Four, &r.profile.blocks_budget())?,
    )?;
    let sets_budget = r.profile.rotation_sets();
    let mut pretext = Vec::new();
    for set in RotationSet::ALL {
        let name = r.profile.rotation_set_run(set);
        let v = if name == TABLE1_RUN {
            table1.clone()
        } else {
            let cfg = r.rotnet_config(set, &sets_budget)?;
            r.train_stage(&name, &cfg)?
        };
        pretext.push(v["last_epoch"]["rotation_acc"].as_f64());
    }
    let sup_cfg = r.supervised_config()?;
    r.train_stage("supervised", &sup_cfg)?;
    // Training may have switched oneDNN per its config; the probes follow the profile.
    selfsup_core::determinism::set_mkldnn_enabled(!r.profile.deterministic);

    // 2. Probes.
    let mut cache = EncoderCache::default();
    let mut reports = report::Reports::default();
    // (encoder, probe, at every probe seed): the headline probes (Table 1's non-linear, Table 2,
    // Table 3's conv) at every seed, the others at the first.
    let mut plan: Vec<(String, &str, bool)> = vec![
        (TABLE1_RUN.into(), "mlp_all", true),
        (TABLE1_RUN.into(), "linear", false),
        (TABLE1_RUN.into(), "conv_block2", true),
        ("random".into(), "mlp_all", true),
        ("random".into(), "linear", false),
        ("random".into(), "conv_block2", true),
        ("random_legacy".into(), "conv_block2", true),
        ("supervised".into(), "mlp_block2", false),
    ];
    plan.extend(r.profile.other_set_runs().into_iter().map(|n| (n, "mlp_block2", true)));
    let seeds = r.profile.probe_seeds.clone();
    if seeds.is_empty() {
        anyhow::bail!("profile.probe_seeds is empty: give at least one probe seed");
    }
    for (enc, probe, all_seeds) in plan {
        for &seed in if all_seeds { &seeds[..] } else { &seeds[..1] } {
            let seed_sets = ProbeSets {
                train: subset(&full_train, r.profile.probe_train_images, seed, "max_images"),
                ..sets.clone()
            };
            let rep = r.probe_stage(&enc, probe, &mut cache, &seed_sets, seed)?;
            reports.add(&enc, probe, seed, &rep);
        }
    }
    if !r.profile.few_labels.is_empty() {
        let rot = r.few_label_stage(TABLE1_RUN, FewShotMode::Nonlinear, &mut cache, &sets)?;
        let sup = r.few_label_stage("scratch", FewShotMode::Finetune, &mut cache, &sets)?;
        reports.add_few_labels(&r.profile.few_labels, &rot, &sup);
    }
    drop(cache);
    reports.supervised_end_to_end = Some(r.supervised_accuracy(&sets)?);
    reports.pretext_acc =
        RotationSet::ALL.iter().map(|s| s.name().to_string()).zip(pretext).collect();

    // 3. Report.
    let tables = report::build(&reports, &r.profile);
    let md = report::markdown(&r.profile, &tables, &reports, &r.device_name, &args.dataset);
    std::fs::write(res_root.join("table.md"), &md)
        .with_context(|| format!("{}", res_root.join("table.md").display()))?;
    let wall_s = wall.elapsed().as_secs_f64();
    let results = json!({
        "profile": r.profile,
        "dataset": args.dataset,
        "data_dir": data_dir,
        "device": r.device_name,
        "command": command,
        "wall_seconds_this_invocation": wall_s,
        "tables": tables,
        "pretext_rotation_acc_last_epoch": reports.pretext_acc,
        "supervised_end_to_end_top1": reports.supervised_end_to_end,
        "stages": r.stages,
        "train_images": r.train_set.len(),
        "probe_train_images": sets.train.len(),
        "test_images": sets.test.len(),
    });
    write_json(&res_root.join("results.json"), &results)?;
    report::write_commands(&res_root, &r.profile, &command, &args.dataset)?;
    let curves: Vec<(String, PathBuf)> = r
        .profile
        .runs()
        .into_iter()
        .map(|n| (n.clone(), r.run_root.join(&n).join("metrics.jsonl")))
        .collect();
    plots::training_curves(&curves, &res_root.join("curves.png"))?;
    plots::block_chart(&tables, &res_root.join("blocks.png"))?;
    println!();
    print!("{md}");
    r.log.line(&format!(
        "== done in {wall_s:.0} s (this invocation; skipped stages cost nothing); results in {}",
        res_root.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_flags_in_both_forms() {
        let a =
            parse_args(&s(&["--profile", "smoke", "--force", "--dataset=synthetic:64:32"]), USAGE)
                .unwrap()
                .unwrap();
        assert_eq!(a.profile.as_deref(), Some("smoke"));
        assert!(a.force);
        assert_eq!(a.dataset, "synthetic:64:32");
        assert_eq!(a.runs_dir, PathBuf::from("runs"));
        let err = parse_args(&s(&["--profil", "cpu"]), USAGE).unwrap_err().to_string();
        assert!(err.contains("unknown argument `--profil`"), "{err}");
        assert!(parse_args(&s(&["--profile"]), USAGE)
            .unwrap_err()
            .to_string()
            .contains("needs a value"));
        assert!(parse_args(&s(&["--help"]), USAGE).unwrap().is_none());
    }
}
