//! The plan of `selfsup reproduce rotnet [--profile smoke|cpu|paper]`: everything behind the
//! CIFAR-10 tables of Gidaris, Singh, Komodakis, "Unsupervised Representation Learning by
//! Predicting Image Rotations" (ICLR 2018; official code gidariss/FeatureLearningRotNet),
//! written to `results/rotnet/<profile>/` by the engine ([`crate::engine`]).
//!
//! What it declares:
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
//! 3. the report: Tables 1–3 and the few-label table beside the paper's figures, the
//!    findings (each decided by the margin rule), and `blocks.png`.
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
//! (`bench/train_step.py --method rotnet`, width 16), and our pretraining 1,750–1,900 inputs/s against
//! about 1,150. For the same half hour, batch 64 trains 50,000 images for 3 epochs instead of
//! 2 at twice the steps per epoch, and lifts both blocks by about 4 points (table below).
//!
//! *Table 1 gets 6 epochs (4 since the 45-minute profile, below); Table 2 gets its own
//! 1-epoch runs.* Block 1 against block 2 is
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
//!
//! *Findings decided beyond noise (issue 20).* A finding holds only when its difference
//! exceeds twice its standard deviation over pretraining seeds × probe seeds (the engine's
//! margin rule), so the cpu profile trains Table 1's RotNet and Table 2's four and
//! two-rotation sets at two pretraining seeds (`pretrain_seeds`), runs the headline probes at
//! three probe seeds, and the few-label table at two. Measured on 2 cores of an Intel Xeon
//! (family 6, model 207), fp32, oneDNN on:
//! - fewer labels do not favour block 2 (the same seed-0 encoder, non-linear probe, probe
//!   seeds 0–2, block 1 / block 2): 2,000 labels 46.25 / 45.63, 45.85 / 46.86, 45.87 / 45.60;
//!   5,000 labels 51.37 / 50.48, 51.14 / 50.71, 51.83 / 51.30; 10,000 (the profile)
//!   54.75 ± 0.10 / 54.60 ± 0.13;
//! - a second pretraining seed reproduces the tie: seed 1 gives 55.03 / 54.64 and
//!   54.64 / 55.14 at probe seeds 0 and 1; seeds 2 and 3 (a complete run,
//!   `results/rotnet/cpu-pretrain-seeds-2-3`) give block 1 − block 2 = +0.18 ± 0.77, seeds 0
//!   and 1 block 2 − block 1 = −0.00 ± 0.36. Block 2's
//!   lead needs far more pretraining than two cores give in an hour (its 4 points in the
//!   paper come from 200 epochs at width 192), so the table says "not resolved";
//! - four rotations against the two-rotation sets, at one epoch per set: decided with seeds 2
//!   and 3 (+2.24 ± 0.60, +1.90 ± 0.61), not with seeds 0 and 1 (+2.04 ± 1.01, +1.33 ±
//!   1.79): one-epoch runs vary between pretraining seeds by about a point;
//! - the few-label table crossed only once the NIN from scratch got the official ratio of
//!   samples (twice the frozen side's; with half of them, RotNet led by 5 to 14 points at
//!   every budget up to 1,000) and the 5,000-per-class budget: RotNet + conv minus from scratch
//!   +7.32 ± 1.66 at 20 per class, −5.96 ± 1.02 at 1,000, −5.45 ± 0.47 at 5,000 (seeds 2, 3,
//!   6-epoch RotNet; the paper's crossing comes later, between 1,000 and 5,000);
//! - that two-seed profile took 4,466 s for the complete run with seeds 2 and 3 (beside light
//!   compiles and tests): Table 1's two pretrainings (6 epochs) 1,848 s, the four and
//!   two-rotation sets 426 s, eight rotations 364 s, the supervised NIN 189 s, the probes
//!   601 s, the few-label table 1,037 s (a third of it the 1,000-per-class column).
//!
//! *The 45-minute profile.* To fit the time aimed at, the profile now trains Table 1's RotNet
//! and the supervised NIN 4 epochs (×0.2 at 1, 2, 3) instead of 6, leaves out the
//! eight-rotation set (in no finding, and at twice the inputs of `four` the dearest run of
//! Table 2) and the few-label column at 1,000 per class (the crossing is decided by the two
//! ends). A complete run with pretraining seeds 0 and 1, alone on the 2 cores (fp32, oneDNN
//! on, 2 threads): 2,562 s (42:44 by `time`; `results/rotnet/cpu`): Table 1's two
//! pretrainings 826 s (about 104 s an epoch), the sets 392 s, the supervised NIN 105 s, the
//! probes 521 s, the few-label table 715 s. Its findings: RotNet ahead of random at every
//! block (+3.15 ± 0.79 to +9.59 ± 0.42), best block not resolved (block 1 − block 2 +1.00 ±
//! 0.80), four rotations ahead of both two-rotation sets not resolved (+2.04 ± 1.01, +1.33 ±
//! 1.79: Table 2's runs are the same as before, bit for bit), the few-label crossing yes
//! (+5.15 ± 1.74 at 20 per class, −6.86 ± 0.47 at 5,000). With 4 epochs instead of 6 the
//! RotNet lost about 2 points at every block (block 2 51.70 ± 0.29 against 53.43 ± 0.36 with
//! seeds 2, 3 at 6 epochs) and block 1's lead by mean grew (+1.00 against −0.00 and +0.18).
//! The run with seeds 2 and 3 (`results/rotnet/cpu-pretrain-seeds-2-3`; it reused the rotation
//! sets of the earlier run with those seeds and the supervised NIN and few-label NIN from
//! scratch of the run above, all of the same configs, and ran with 1 thread beside other jobs,
//! so its 2,698 s are not the profile's): RotNet ahead of random at every block (+5.26 ± 0.59
//! to +9.90 ± 1.05), best block not resolved (block 1 − block 2 +0.19 ± 0.55), four rotations
//! ahead of both two-rotation sets yes (+2.24 ± 0.60, +1.90 ± 0.61), the few-label crossing
//! yes (+5.29 ± 2.03 at 20 per class, −7.13 ± 0.79 at 5,000).
//! Table 2's one-epoch `four` run is Table 1's run after its first epoch, bit for bit (the
//! same seed, data order and rate until the first milestone): reading that checkpoint would
//! save its 92 s a seed, left for later.
mod profile;

pub use profile::{official_sgd, scale_milestones, steps, Budget, Profile, TABLE1_RUN};

use super::PlanInput;
use crate::engine::report::{num_col, text_col, Diffs};
use crate::engine::scores::{at, row, Row, ScoreRef};
use crate::engine::{
    Cell, Chart, EncoderSpec, Finding, Labeled, Plan, ProbeSpec, Protocol, Report, Section, Source,
    Table, Test, Training,
};
use anyhow::{bail, Result};
use selfsup_core::config::{DataConfig, RunConfig, TrainConfig};
use selfsup_core::EncoderConfig;
use selfsup_data::Split;
use selfsup_eval::features::Normalization;
use selfsup_eval::fewshot::FewShotMode;
use selfsup_eval::{EndToEndConfig, FewShotConfig, LabelBudget};
use selfsup_rotnet::{RotNetConfig, RotationSet};

/// RotNet Table 1: non-linear probe on each block of the 4-block RotNet NIN.
pub const PAPER_BLOCKS: [f64; 4] = [85.07, 89.06, 86.21, 61.73];
/// RotNet Table 2: non-linear probe on block 2 for the four rotation sets, in the order of
/// `RotationSet::ALL` (four, eight, 0°/180°, 90°/270°).
pub const PAPER_ROTATIONS: [f64; 4] = [89.06, 88.51, 87.46, 85.52];
/// RotNet Table 3: the supervised NIN.
pub const PAPER_SUPERVISED: f64 = 92.80;
/// RotNet Table 3: random init + conv classifier on block 2.
pub const PAPER_RANDOM_CONV: f64 = 72.50;
/// RotNet Table 3: RotNet + conv classifier on block 2.
pub const PAPER_ROTNET_CONV: f64 = 91.16;

/// What changed in these tables since the ones committed before the fidelity review.
const CHANGES: &str = "Changed since the tables before the fidelity review: the RotNet and \
supervised heads get PyTorch's `nn.Linear` initialisation (tch's default weight bound was \
2.45× wider); the supervised NIN and the few-label NIN from scratch have 3 blocks, as the \
official `CIFAR10_supervised_NIN`; the headline probes are mean ± std over the probe seeds \
(each draws its own labeled subset); the best test epoch of the non-linear and conv probes is a \
labelled second column beside the last epoch; Table 3 adds the random-init row with PyTorch \
0.3's default initialisation, the one behind the paper's 72.50.";

/// The encoders of the supervised NIN and of the few-label NIN from scratch.
const SUPERVISED: &str = "supervised";
const SCRATCH: &str = "scratch";
const RANDOM: &str = "random";
const RANDOM_LEGACY: &str = "random_legacy";

/// The plan of profile `input.profile` (with `input.sets` applied).
pub fn plan(input: &PlanInput) -> Result<Plan> {
    let p = Profile::resolve(&input.profile, &input.sets)?;
    let EncoderConfig::Nin { blocks, .. } = p.encoder else {
        bail!("the RotNet plan probes the blocks of a NIN: `encoder` must be a NIN");
    };
    let taps: Vec<String> = (1..=blocks).map(|b| format!("block{b}")).collect();
    let first = &p.probe_seeds[..p.probe_seeds.len().min(1)];
    let subset = Labeled::Subset { images: p.probe_train_images };

    // Trainings: the Table 1 RotNet at every pretraining seed, Table 2's rotation sets (whose
    // `four` is the Table 1 run unless the profile gives the sets a budget of their own), the
    // supervised NIN.
    let table1 = p.table1_runs();
    let t1: Vec<String> = table1.iter().map(|r| r.0.clone()).collect();
    let mut trainings = Vec::new();
    for (name, seed) in &table1 {
        let budget = p.blocks_budget();
        trainings.push(rotnet_training(&p, input, name, *seed, RotationSet::Four, &budget)?);
    }
    for set in RotationSet::ALL {
        for (name, seed) in p.rotation_set_runs(set) {
            if !t1.contains(&name) {
                let budget = p.rotation_sets();
                trainings.push(rotnet_training(&p, input, &name, seed, set, &budget)?);
            }
        }
    }
    let supervised = selfsup_supervised::SupervisedConfig::default();
    trainings.push(Training {
        name: SUPERVISED.into(),
        config: run_config(
            &p,
            input,
            p.seed,
            "supervised",
            &p.supervised_encoder,
            serde_json::to_value(supervised)?,
            &Budget { epochs: p.supervised_epochs, milestones: p.supervised_milestones.clone() },
        ),
        headline_metric: None,
        optional: false,
    });

    let encoder = |name: &str, config: &EncoderConfig, source: Source| EncoderSpec {
        name: name.into(),
        config: config.clone(),
        source,
    };
    let random = |legacy| Source::Random { seed: p.seed, pytorch_legacy: legacy };
    let mut encoders: Vec<EncoderSpec> = trainings
        .iter()
        .filter(|t| t.name != SUPERVISED)
        .map(|t| encoder(&t.name, &p.encoder, Source::Encoder { run: t.name.clone() }))
        .collect();
    encoders.extend([
        encoder(
            SUPERVISED,
            &p.supervised_encoder,
            Source::Method { run: SUPERVISED.into(), trained: true, view: serde_json::Value::Null },
        ),
        encoder(RANDOM, &p.encoder, random(false)),
        encoder(RANDOM_LEGACY, &p.encoder, random(true)),
        encoder(SCRATCH, &p.supervised_encoder, random(false)),
    ]);

    // Probes: the headline ones (Table 1's non-linear, Table 2, Table 3's conv) at every probe
    // seed, the others at the first.
    let mut probes = Vec::new();
    let mut probe = |enc: &str, name: &str, seeds: &[u64]| {
        probes.push(ProbeSpec {
            encoder: enc.into(),
            name: name.into(),
            protocol: probe_protocol(&p, name),
            seeds: seeds.to_vec(),
            labeled: subset.clone(),
        })
    };
    let all = &p.probe_seeds[..];
    for enc in t1.iter().map(String::as_str).chain([RANDOM]) {
        probe(enc, "mlp_all", all);
        probe(enc, "linear", first);
        probe(enc, "conv_block2", all);
    }
    probe(RANDOM_LEGACY, "conv_block2", all);
    probe(SUPERVISED, "mlp_block2", first);
    for (run, _) in p.other_set_runs() {
        probe(&run, "mlp_block2", all);
    }
    if !p.few_labels.is_empty() {
        let frozen = t1.iter().map(|r| (r.as_str(), "few_conv_block2", FewShotMode::Nonlinear));
        for (enc, name, mode) in frozen.chain([(SCRATCH, "few_finetune", FewShotMode::Finetune)]) {
            probes.push(ProbeSpec {
                encoder: enc.into(),
                name: name.into(),
                protocol: Protocol::Fewshot(Box::new(few_labels(&p, mode))),
                seeds: p.few_label_seeds.clone(),
                labeled: Labeled::Full,
            });
        }
    }
    probes.push(ProbeSpec {
        encoder: SUPERVISED.into(),
        name: "end_to_end".into(),
        protocol: Protocol::EndToEnd(EndToEndConfig::default()),
        seeds: vec![p.seed],
        labeled: Labeled::Subset { images: p.train_images },
    });

    Ok(Plan {
        name: "rotnet".into(),
        profile: p.name.clone(),
        summary: p.summary.clone(),
        settings: serde_json::to_value(&p)?,
        deterministic: p.deterministic,
        test_images: p.test_images,
        seed: p.seed,
        report: report(&p, &taps, &t1, input),
        charts: vec![block_chart(&taps, &t1)],
        probe_commands: probe_commands(&p, &input.dataset),
        trainings,
        encoders,
        probes,
        scatters: Vec::new(),
        artifacts: Vec::new(),
    })
}

/// The run config of a training of `method` under profile `p`.
fn run_config(
    p: &Profile,
    input: &PlanInput,
    seed: u64,
    method: &str,
    encoder: &EncoderConfig,
    method_config: serde_json::Value,
    budget: &Budget,
) -> RunConfig {
    RunConfig {
        method: method.into(),
        seed,
        device: input.device.clone(),
        data: DataConfig {
            dataset: input.dataset.clone(),
            split: Split::Train,
            data_dir: Some(input.data_dir.clone()),
            max_images: p.train_images,
        },
        encoder: encoder.clone(),
        train: TrainConfig {
            epochs: budget.epochs,
            batch_size: p.batch_size,
            optimizer: official_sgd(p.lr),
            schedule: steps(&budget.milestones),
            channels_last: p.channels_last,
            checkpoint_every: 1,
            log_every: p.log_every,
            deterministic: p.deterministic,
            ..TrainConfig::default()
        },
        method_config,
    }
}

/// The RotNet pretraining `name` with rotation set `set` for `budget` at pretraining seed
/// `seed`.
fn rotnet_training(
    p: &Profile,
    input: &PlanInput,
    name: &str,
    seed: u64,
    set: RotationSet,
    budget: &Budget,
) -> Result<Training> {
    let mc = serde_json::to_value(RotNetConfig::with_rotations(set))?;
    Ok(Training {
        name: name.into(),
        config: run_config(p, input, seed, "rotnet", &p.encoder, mc, budget),
        headline_metric: Some("rotation_acc".into()),
        optional: false,
    })
}

/// The protocol behind a probe name: `mlp_all`, `mlp_block2`, `conv_block2`, `linear`.
fn probe_protocol(p: &Profile, name: &str) -> Protocol {
    let (kind, tap) = name.split_once('_').unwrap_or((name, "all"));
    let taps = vec![tap.to_string()];
    match kind {
        "mlp" => Protocol::Nonlinear(selfsup_eval::NonLinearProbeConfig { taps, ..p.mlp.clone() }),
        "conv" => {
            Protocol::Nonlinear(selfsup_eval::NonLinearProbeConfig { taps, ..p.conv.clone() })
        }
        _ => Protocol::Linear(selfsup_eval::LinearProbeConfig { taps, ..p.linear.clone() }),
    }
}

/// One side of the few-label table: `Nonlinear` (the frozen conv-block probe on block 2) or
/// `Finetune` (the whole encoder trained from its current weights), at every budget.
fn few_labels(p: &Profile, mode: FewShotMode) -> FewShotConfig {
    FewShotConfig {
        budgets: p.few_labels.iter().map(|&k| LabelBudget::PerClass(k)).collect(),
        modes: vec![mode],
        tap: "block2".into(),
        nonlinear: p.few_conv.clone(),
        finetune: p.few_supervised.clone(),
        normalization: Some(Normalization::cifar10()),
        ..FewShotConfig::default()
    }
}

/// The probes of block 2 behind Table 2's row for `set`, one per pretraining seed: a Table 1
/// run's all-block probe, or the run's own block-2 probe.
fn set_block2(p: &Profile, t1: &[String], set: RotationSet) -> Vec<ScoreRef> {
    p.rotation_set_runs(set)
        .into_iter()
        .map(|(run, _)| {
            at(&run, if t1.contains(&run) { "mlp_all" } else { "mlp_block2" }, "block2")
        })
        .collect()
}

/// `probe`'s row `row` on every Table 1 run (one per pretraining seed).
fn pool(t1: &[String], probe: &str, r: &Row) -> Vec<ScoreRef> {
    t1.iter().map(|run| crate::engine::scores::row(run, probe, r.clone())).collect()
}

/// The pairs `(a_k, b)` of a paired difference of pooled scores against one score.
fn against(a: &[ScoreRef], b: &ScoreRef) -> Vec<(ScoreRef, ScoreRef)> {
    a.iter().map(|x| (x.clone(), b.clone())).collect()
}

fn mean(r: Vec<ScoreRef>) -> Box<Cell> {
    Box::new(Cell::Mean(r))
}

fn figure(v: Option<f64>) -> Box<Cell> {
    Box::new(Cell::Figure(v))
}

/// `table.md`: Tables 1–3, the few-label table and the findings. `t1`: Table 1's runs, one
/// per pretraining seed; every RotNet figure pools them.
fn report(p: &Profile, taps: &[String], t1: &[String], input: &PlanInput) -> Report {
    let tap = |t: &str| Row::Tap(t.into());
    let mut sections = vec![Section::Text(intro(p, &input.device))];
    sections.push(Section::Text(CHANGES.into()));
    sections.push(Section::Text("## 1. Block-wise (RotNet Table 1, 4 blocks)".into()));
    sections.push(Section::Table(Table {
        key: "blockwise".into(),
        columns: vec![
            text_col("Block", "block"),
            num_col("RotNet non-linear", "rotnet_nonlinear"),
            num_col("Paper (best epoch)", "paper"),
            num_col("Δ", "diff"),
            num_col("RotNet non-linear, best epoch", "rotnet_nonlinear_best"),
            num_col("RotNet linear", "rotnet_linear"),
            num_col("Random non-linear", "random_nonlinear"),
            num_col("Random linear", "random_linear"),
        ],
        rows: taps
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let ours = pool(t1, "mlp_all", &tap(t));
                let paper = PAPER_BLOCKS.get(i).copied();
                vec![
                    Cell::Text(t.clone()),
                    Cell::Spread(ours.clone()),
                    Cell::Figure(paper),
                    Cell::Delta(mean(ours.clone()), figure(paper)),
                    Cell::Best(ours),
                    Cell::Mean(pool(t1, "linear", &tap(t))),
                    Cell::Spread(vec![at(RANDOM, "mlp_all", t)]),
                    Cell::Mean(vec![at(RANDOM, "linear", t)]),
                ]
            })
            .collect(),
    }));
    sections.push(Section::Text(
        "## 2. Number of rotations (RotNet Table 2, non-linear probe on block 2)".into(),
    ));
    if let Some(b) = &p.rotation_sets_budget {
        sections.push(Section::Text(format!(
            "Each rotation set is its own pretraining of {} epochs (×0.2 at {:?}; the same \
             images, batch and rate as Table 1), shorter than Table 1's {}-epoch run, so the \
             `four` row is not Table 1's block 2.",
            b.epochs, b.milestones, p.epochs
        )));
    }
    let left_out: Vec<&str> = RotationSet::ALL
        .iter()
        .filter(|s| !p.rotation_sets.contains(s))
        .map(|s| s.name())
        .collect();
    if !left_out.is_empty() {
        sections.push(Section::Text(format!(
            "Not run by this profile (in no finding): {}; `--set 'rotation_sets=[\"four\", \
             \"eight\", \"two_0_180\", \"two_90_270\"]'` adds them.",
            left_out.join(", ")
        )));
    }
    sections.push(Section::Table(Table {
        key: "rotations".into(),
        columns: vec![
            text_col("Rotations", "set"),
            text_col("Angles", "angles"),
            text_col("Run", "run"),
            num_col("Ours", "ours"),
            num_col("Paper", "paper"),
            num_col("Δ", "diff"),
            num_col("Pretext acc. (last epoch)", "pretext_acc"),
        ],
        rows: RotationSet::ALL
            .iter()
            .zip(PAPER_ROTATIONS)
            .filter(|(set, _)| p.rotation_sets.contains(set))
            .map(|(set, paper)| {
                let runs: Vec<String> =
                    p.rotation_set_runs(*set).into_iter().map(|r| r.0).collect();
                let angles: Vec<String> = set.angles().iter().map(|a| format!("{a}°")).collect();
                let ours = set_block2(p, t1, *set);
                vec![
                    Cell::Text(set.name().into()),
                    Cell::Text(angles.join(", ")),
                    match &runs[..] {
                        [one] => Cell::Code(one.clone()),
                        many => Cell::Text(format!("`{}`", many.join("`, `"))),
                    },
                    Cell::Spread(ours.clone()),
                    Cell::Figure(Some(paper)),
                    Cell::Delta(mean(ours), figure(Some(paper))),
                    Cell::RunMetric {
                        run: runs[0].clone(),
                        key: "rotation_acc".into(),
                        scale: 100.0,
                    },
                ]
            })
            .collect(),
    }));
    sections.push(Section::Text("## 3. Baselines (RotNet Table 3)".into()));
    let baseline = |name: &str, paper: Option<f64>, ours: Vec<ScoreRef>| {
        vec![
            Cell::Text(name.into()),
            Cell::Spread(ours.clone()),
            Cell::Best(ours.clone()),
            Cell::Figure(paper),
            Cell::Delta(mean(ours), figure(paper)),
        ]
    };
    let block2 = tap("block2");
    sections.push(Section::Table(Table {
        key: "baselines".into(),
        columns: vec![
            text_col("Row", "row"),
            num_col("Ours", "ours"),
            num_col("Ours, best epoch", "best_epoch"),
            num_col("Paper", "paper"),
            num_col("Δ", "diff"),
        ],
        rows: vec![
            baseline(
                "Supervised NIN, 3 blocks (end to end)",
                Some(PAPER_SUPERVISED),
                vec![row(SUPERVISED, "end_to_end", Row::Last)],
            ),
            baseline(
                "Random init (ours: He-normal convs, BN weight 1) + conv probe (block 2)",
                Some(PAPER_RANDOM_CONV),
                vec![at(RANDOM, "conv_block2", "block2")],
            ),
            baseline(
                "Random init (PyTorch 0.3 default: convs U(±1/√fan_in), BN weight U(0, 1)) + \
                 conv probe (block 2)",
                Some(PAPER_RANDOM_CONV),
                vec![at(RANDOM_LEGACY, "conv_block2", "block2")],
            ),
            baseline(
                "RotNet + non-linear probe (block 2)",
                Some(PAPER_BLOCKS[1]),
                pool(t1, "mlp_all", &block2),
            ),
            baseline(
                "RotNet + conv probe (block 2)",
                Some(PAPER_ROTNET_CONV),
                pool(t1, "conv_block2", &block2),
            ),
            baseline(
                "Random init + non-linear probe (block 2)",
                None,
                vec![at(RANDOM, "mlp_all", "block2")],
            ),
            baseline(
                "Supervised NIN + non-linear probe (block 2)",
                None,
                vec![at(SUPERVISED, "mlp_block2", "block2")],
            ),
        ],
    }));
    let few = |i: usize| pool(t1, "few_conv_block2", &Row::Index(i));
    let scratch = |i: usize| row(SCRATCH, "few_finetune", Row::Index(i));
    if !p.few_labels.is_empty() {
        sections.push(Section::Text(
            "## 4. Few labels (RotNet §4.1, semi-supervised; the paper plots it)".into(),
        ));
        let mut text = format!(
            "Frozen RotNet block-2 features with the conv-block probe ({} epochs of {} samples) \
             against the same NIN trained from scratch ({} epochs of {} samples, augmentation \
             {}), both on K labeled images per class.",
            p.few_conv.epochs,
            p.few_conv.epoch_size.map_or("one pass".into(), |n| n.to_string()),
            p.few_supervised.epochs,
            p.few_supervised.epoch_size.map_or("one pass".into(), |n| n.to_string()),
            if p.few_supervised.augment { "on" } else { "off" },
        );
        if p.few_label_seeds.len() > 1 || t1.len() > 1 {
            text += &format!(
                " Mean ± std over probe seeds {:?} (each draws its own K per class){}; Δ is \
                 paired per seed.",
                p.few_label_seeds,
                if t1.len() > 1 { " and, on the RotNet side, the pretraining seeds" } else { "" }
            );
        }
        sections.push(Section::Text(text));
        sections.push(Section::Table(Table {
            key: "few_labels".into(),
            columns: vec![
                num_col("K per class", "per_class"),
                num_col("Labeled images", "train_images"),
                num_col("RotNet + conv", "rotnet_conv"),
                num_col("From scratch", "scratch"),
                num_col("Δ", "diff"),
            ],
            rows: p
                .few_labels
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    vec![
                        Cell::Count(*k as u64),
                        Cell::LabeledImages(few(i)[0].clone()),
                        Cell::Spread(few(i)),
                        Cell::Spread(vec![scratch(i)]),
                        Cell::PairedDiff(against(&few(i), &scratch(i))),
                    ]
                })
                .collect(),
        }));
    }
    sections.push(Section::Text("## Findings".into()));
    let mut findings = vec![
        Finding {
            claim: "RotNet ahead of random init at every block (non-linear probe)".into(),
            paper: "yes".into(),
            test: Test::AllAhead(
                taps.iter()
                    .map(|t| {
                        let random = at(RANDOM, "mlp_all", t);
                        (t.clone(), against(&pool(t1, "mlp_all", &tap(t)), &random))
                    })
                    .collect(),
            ),
        },
        Finding {
            claim: "Best RotNet block (non-linear probe)".into(),
            paper: "block2, 3.99 ahead of block1".into(),
            test: Test::Best(
                taps.iter().map(|t| (t.clone(), pool(t1, "mlp_all", &tap(t)))).collect(),
            ),
        },
    ];
    let four = set_block2(p, t1, RotationSet::Four);
    let two: Diffs = [RotationSet::Two0And180, RotationSet::Two90And270]
        .into_iter()
        .map(|set| {
            let pairs = four.iter().cloned().zip(set_block2(p, t1, set)).collect();
            (format!("four − {}", set.name()), pairs)
        })
        .collect();
    findings.push(Finding {
        claim: "Four rotations ahead of both two-rotation sets (block 2)".into(),
        paper: "yes, +1.60 over the better (0°/180°)".into(),
        test: Test::AllAhead(two),
    });
    if !p.few_labels.is_empty() {
        findings.push(Finding {
            claim: "Few labels: the frozen RotNet ahead with the fewest labels, the NIN from \
                    scratch ahead with the most (RotNet + conv minus from scratch, per K)"
                .into(),
            paper: "yes: RotNet ahead up to 1000 per class, the NIN from scratch at 5000".into(),
            test: Test::Crossing(
                p.few_labels
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (format!("{k}/class"), against(&few(i), &scratch(i))))
                    .collect(),
            ),
        });
    }
    sections.push(Section::Findings(findings));
    if p.few_labels.is_empty() {
        sections.push(Section::Text("Few labels (RotNet §4.1): not run by this profile.".into()));
    }
    Report { title: format!("RotNet on {}: profile `{}`", input.dataset, p.name), sections }
}

/// The first paragraph of `table.md`.
fn intro(p: &Profile, device: &str) -> String {
    let mut s = format!(
        "{}. Encoder `{}`, pretraining {} epochs on {} images (batch {}, SGD {} Nesterov, wd \
         5e-4, ×0.2 at {:?}), device `{device}`. Probes: {} epochs (non-linear: official \
         MultLayer, 200-unit hidden layers; conv: `NIN_ConvBlock3` of width {}; linear: \
         features pooled to ~9k dims), augmentation {}. Test top-1 in %, last epoch; Δ = ours \
         − paper. Headline probes: mean ± std over probe seeds {:?}, each drawing its own \
         labeled subset; the others use seed {}. Supervised NIN: `{}`.",
        p.summary,
        serde_json::to_string(&p.encoder).unwrap_or_default(),
        p.epochs,
        p.train_images.map_or("all".to_string(), |n| n.to_string()),
        p.batch_size,
        p.lr,
        p.milestones,
        p.mlp.epochs,
        p.conv.width,
        if p.mlp.augment { "on" } else { "off (features cached)" },
        p.probe_seeds,
        p.probe_seeds.first().copied().unwrap_or(0),
        serde_json::to_string(&p.supervised_encoder).unwrap_or_default(),
    );
    if p.pretrain_seeds.len() > 1 {
        s += &format!(
            " Pretraining seeds {:?}: Table 1, Table 2's four and two-rotation rows, the \
             RotNet rows of Table 3 and the few-label table pool every pretraining seed × probe \
             seed, and each finding pairs its differences per pretraining and probe seed; a \
             finding holds only when its difference exceeds twice its standard deviation.",
            p.pretrain_seeds
        );
    }
    s
}

/// `blocks.png`: test accuracy per block of RotNet (pooled over pretraining seeds) and random
/// init under both probes, the supervised NIN's block 2, and the paper's figures.
fn block_chart(taps: &[String], t1: &[String]) -> Chart {
    let series = |label: &str, cell: &dyn Fn(usize, &String) -> Cell| {
        (label.to_string(), taps.iter().enumerate().map(|(i, t)| cell(i, t)).collect())
    };
    let tap = |t: &String| Row::Tap(t.clone());
    Chart {
        file: "blocks.png".into(),
        title: "CIFAR-10 test accuracy per block".into(),
        x_labels: (1..=taps.len()).map(|b| format!("block {b}")).collect(),
        series: vec![
            series("paper: RotNet non-linear", &|i, _| Cell::Figure(PAPER_BLOCKS.get(i).copied())),
            series("RotNet non-linear", &|_, t| Cell::Mean(pool(t1, "mlp_all", &tap(t)))),
            series("RotNet linear", &|_, t| Cell::Mean(pool(t1, "linear", &tap(t)))),
            series("random non-linear", &|_, t| Cell::Mean(vec![at(RANDOM, "mlp_all", t)])),
            series("random linear", &|_, t| Cell::Mean(vec![at(RANDOM, "linear", t)])),
            series("supervised non-linear", &|_, t| {
                Cell::Mean(vec![at(SUPERVISED, "mlp_block2", t)])
            }),
        ],
    }
}

/// The closing paragraph of `commands.md`.
fn probe_commands(p: &Profile, dataset: &str) -> String {
    let mut s = String::from(
        "The probes use the settings in `results.json` (`profile.mlp`, `profile.conv`, \
         `profile.linear`; the few-label table `profile.few_labels`, `profile.few_conv`, \
         `profile.few_supervised`, as `selfsup eval --protocol fewshot`)",
    );
    if p.probe_train_images.is_some() || p.test_images.is_some() {
        s += &format!(
            " on seeded subsets of {dataset} ({} training, {} test images): `selfsup eval \
             --checkpoint RUN --protocol nonlinear|linear --config PROBE.json{}{} --seed {}` \
             draws the same ones",
            p.probe_train_images.map_or("all".to_string(), |n| n.to_string()),
            p.test_images.map_or("all".to_string(), |n| n.to_string()),
            p.probe_train_images.map_or(String::new(), |n| format!(" --train-images {n}")),
            p.test_images.map_or(String::new(), |n| format!(" --test-images {n}")),
            p.seed
        );
    } else {
        s += ": `selfsup eval --checkpoint RUN --protocol nonlinear|linear --config PROBE.json`";
    }
    s.push('.');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::report::Context;
    use crate::engine::Scores;

    fn input(profile: &str) -> PlanInput {
        PlanInput {
            name: "rotnet".into(),
            profile: profile.into(),
            sets: Vec::new(),
            dataset: "cifar10".into(),
            data_dir: "datasets".into(),
            device: "cpu".into(),
            registered: Vec::new(),
        }
    }

    /// `--train-set`: the GPU's fast path on every training of the paper plan (the RotNets
    /// and the supervised NIN); a misspelt key or a bad value fails naming the override.
    #[test]
    fn train_sets_reach_every_training() {
        let mut p = plan(&input("paper")).unwrap();
        let fast =
            ["train.deterministic=false", "train.precision=bf16", "train.channels_last=true"];
        p.apply_train_sets(&fast.map(String::from)).unwrap();
        assert!(p.trainings.len() > 1);
        for t in &p.trainings {
            let tr = &t.config.train;
            assert_eq!(tr.precision, selfsup_core::precision::Precision::Bf16, "{}", t.name);
            assert!(tr.channels_last && !tr.deterministic, "{}", t.name);
            assert_eq!(tr.epochs, 200, "{}: the rest of the config kept", t.name);
        }
        let mut p = plan(&input("paper")).unwrap();
        let e = p.apply_train_sets(&["train.precison=bf16".into()]).unwrap_err().to_string();
        assert!(
            e.starts_with("--train-set train.precison=bf16: ") && e.contains("precison"),
            "{e}"
        );
        let e = p.apply_train_sets(&["train.batch_size=0".into()]).unwrap_err().to_string();
        assert!(e.starts_with("--train-set train.batch_size=0: "), "{e}");
    }

    fn markdown(profile: &str) -> String {
        let plan = plan(&input(profile)).unwrap();
        plan.validate().unwrap();
        let (scores, trainings) = (Scores::default(), std::collections::BTreeMap::new());
        plan.report.markdown(&Context { scores: &scores, trainings: &trainings, command: "" })
    }

    #[test]
    fn the_table_says_which_rotation_sets_the_profile_leaves_out() {
        let cpu = markdown("cpu");
        assert!(cpu.contains("Not run by this profile (in no finding): eight;"), "{cpu}");
        assert!(!cpu.contains("| eight |"), "{cpu}");
        let paper = markdown("paper");
        assert!(!paper.contains("Not run by this profile"), "{paper}");
        assert!(paper.contains("| eight |"), "{paper}");
    }
}
