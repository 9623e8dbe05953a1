//! The RotNet reproduction's tables: ours beside the paper's figure and the difference, as
//! markdown (`table.md`) and JSON (`results.json`), plus `commands.md`.
use super::profile::{Profile, TABLE1_RUN};
use anyhow::{Context, Result};
use selfsup_eval::EvalReport;
use serde::Serialize;
use std::path::Path;

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

/// One probe score: encoder, probe kind, tap, probe seed, last-epoch top-1 and best-epoch
/// top-1 (where scored every epoch).
#[derive(Debug, Clone)]
struct Score {
    encoder: String,
    kind: String,
    tap: String,
    seed: u64,
    top1: f64,
    best: Option<f64>,
}

/// Mean and sample standard deviation over probe seeds (`std` is `None` for one seed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation; `None` for one value.
    pub std: Option<f64>,
    /// Number of seeds.
    pub n: usize,
}

impl Stat {
    /// The stat of `values`, `None` when empty.
    pub fn of(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        });
        Some(Stat { mean, std, n })
    }
}

/// Every probe score, by encoder, probe, tap and probe seed.
#[derive(Debug, Default)]
pub struct Reports {
    rows: Vec<Score>,
    /// The supervised NIN's own test top-1.
    pub supervised_end_to_end: Option<f64>,
    /// Rotation accuracy of the last pretraining epoch, by rotation set.
    pub pretext_acc: Vec<(String, Option<f64>)>,
    /// The few-label table, one row a budget.
    pub few_labels: Vec<FewLabelRow>,
}

impl Reports {
    /// Records the rows of `rep` at probe seed `seed` (probe names as in `probe_spec`).
    pub fn add(&mut self, encoder: &str, probe: &str, seed: u64, rep: &EvalReport) {
        let kind = probe.split('_').next().unwrap_or(probe);
        for r in &rep.rows {
            self.rows.push(Score {
                encoder: encoder.into(),
                kind: kind.into(),
                tap: r.tap.clone(),
                seed,
                top1: r.top1,
                best: r.best_epoch.map(|b| b.top1),
            });
        }
    }

    fn scores<'a>(
        &'a self,
        encoder: &'a str,
        kind: &'a str,
        tap: &'a str,
    ) -> impl Iterator<Item = &'a Score> + 'a {
        self.rows.iter().filter(move |r| r.encoder == encoder && r.kind == kind && r.tap == tap)
    }

    /// Top-1 of `kind` (`mlp`, `conv`, `linear`) on `tap` of `encoder`: the mean over the
    /// probe seeds it ran with.
    pub fn get(&self, encoder: &str, kind: &str, tap: &str) -> Option<f64> {
        self.stat(encoder, kind, tap).map(|s| s.mean)
    }

    /// Top-1 over the probe seeds.
    pub fn stat(&self, encoder: &str, kind: &str, tap: &str) -> Option<Stat> {
        Stat::of(&self.scores(encoder, kind, tap).map(|r| r.top1).collect::<Vec<_>>())
    }

    /// The best-epoch top-1 over the probe seeds (where the probe scored every epoch).
    pub fn best(&self, encoder: &str, kind: &str, tap: &str) -> Option<Stat> {
        Stat::of(&self.scores(encoder, kind, tap).filter_map(|r| r.best).collect::<Vec<_>>())
    }

    /// `a − b` per probe seed that both ran with (a paired difference), over those seeds.
    pub fn paired_diff(&self, a: (&str, &str, &str), b: (&str, &str, &str)) -> Option<Stat> {
        let diffs: Vec<f64> = self
            .scores(a.0, a.1, a.2)
            .filter_map(|x| {
                self.scores(b.0, b.1, b.2).find(|y| y.seed == x.seed).map(|y| x.top1 - y.top1)
            })
            .collect();
        Stat::of(&diffs)
    }

    /// Records the few-label reports: `rotnet` (frozen conv-block probe) and `scratch` (the NIN
    /// trained from scratch), one row per budget in the order of `per_class`.
    pub fn add_few_labels(
        &mut self,
        per_class: &[usize],
        rotnet: &EvalReport,
        scratch: &EvalReport,
    ) {
        self.few_labels = per_class
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let ours = rotnet.rows.get(i).map(|r| r.top1);
                let sup = scratch.rows.get(i).map(|r| r.top1);
                FewLabelRow {
                    per_class: k,
                    train_images: rotnet.rows.get(i).map(|r| r.train_images),
                    rotnet_conv: ours,
                    scratch: sup,
                    diff: diff(ours, sup),
                }
            })
            .collect();
    }

    /// Taps probed with `kind` on `encoder`, in order.
    fn taps(&self, encoder: &str, kind: &str) -> Vec<String> {
        let mut taps: Vec<String> = Vec::new();
        for r in self.rows.iter().filter(|r| r.encoder == encoder && r.kind == kind) {
            if !taps.contains(&r.tap) {
                taps.push(r.tap.clone());
            }
        }
        taps
    }
}

fn diff(ours: Option<f64>, paper: Option<f64>) -> Option<f64> {
    Some(ours? - paper?)
}

/// One block of Table 1 with our extra columns.
#[derive(Debug, Clone, Serialize)]
pub struct BlockRow {
    /// Tap name (`block1`..).
    pub block: String,
    /// Paper, non-linear probe.
    pub paper: Option<f64>,
    /// RotNet (four rotations), non-linear probe (mean over the probe seeds).
    pub rotnet_nonlinear: Option<f64>,
    /// Its mean and standard deviation over the probe seeds.
    pub rotnet_nonlinear_stat: Option<Stat>,
    /// Its best test epoch (the official code's figure), mean over the probe seeds.
    pub rotnet_nonlinear_best: Option<Stat>,
    /// Ours minus paper.
    pub diff: Option<f64>,
    /// RotNet, linear probe.
    pub rotnet_linear: Option<f64>,
    /// Random-init NIN, non-linear probe.
    pub random_nonlinear: Option<f64>,
    /// Its mean and standard deviation over the probe seeds.
    pub random_nonlinear_stat: Option<Stat>,
    /// Random-init NIN, linear probe.
    pub random_linear: Option<f64>,
    /// Supervised NIN, non-linear probe.
    pub supervised_nonlinear: Option<f64>,
}

/// One rotation set of Table 2.
#[derive(Debug, Clone, Serialize)]
pub struct RotationRow {
    /// Config name of the set.
    pub set: String,
    /// The pretraining run probed (`rotnet_four` when it is the Table 1 run).
    pub run: String,
    /// Its angles.
    pub angles: Vec<u32>,
    /// Paper, block 2 non-linear probe.
    pub paper: f64,
    /// Ours (mean over the probe seeds).
    pub ours: Option<f64>,
    /// Ours over the probe seeds.
    pub ours_stat: Option<Stat>,
    /// Ours minus paper.
    pub diff: Option<f64>,
    /// Rotation-prediction accuracy of the last pretraining epoch (training batches).
    pub pretext_acc: Option<f64>,
}

/// One row of Table 3.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineRow {
    /// What is measured.
    pub row: String,
    /// Paper figure, where the paper has one.
    pub paper: Option<f64>,
    /// Ours (mean over the probe seeds).
    pub ours: Option<f64>,
    /// Ours over the probe seeds.
    pub ours_stat: Option<Stat>,
    /// The best test epoch's top-1 (the official code's figure), where the probe scored every
    /// epoch.
    pub best_epoch: Option<Stat>,
    /// Ours minus paper.
    pub diff: Option<f64>,
}

/// One label budget of the few-label table (RotNet §4.1; the paper plots it, so there is no
/// figure to subtract).
#[derive(Debug, Clone, Serialize)]
pub struct FewLabelRow {
    /// Labeled training images per class.
    pub per_class: usize,
    /// Labeled training images in all.
    pub train_images: Option<usize>,
    /// Frozen RotNet block-2 features with the conv-block probe.
    pub rotnet_conv: Option<f64>,
    /// The NIN trained from scratch on the same images.
    pub scratch: Option<f64>,
    /// RotNet minus from scratch.
    pub diff: Option<f64>,
}

/// The qualitative findings the scaled-down profiles must show.
#[derive(Debug, Clone, Serialize)]
pub struct Checks {
    /// RotNet minus random init, non-linear probe, per block (mean over the probe seeds).
    pub rotnet_minus_random: Vec<Option<f64>>,
    /// The same per probe seed, as mean ± std.
    pub rotnet_minus_random_stat: Vec<Option<Stat>>,
    /// The block with the best RotNet non-linear probe (mean over the probe seeds).
    pub best_block: Option<String>,
    /// Block 2 minus block 1 of the RotNet, non-linear probe, per probe seed.
    pub block2_minus_block1: Option<Stat>,
    /// Four rotations minus the better of the two-rotation sets (block 2).
    pub four_minus_best_two: Option<f64>,
    /// The same per probe seed (the better set chosen by its mean), as mean ± std.
    pub four_minus_best_two_stat: Option<Stat>,
}

/// All three tables.
#[derive(Debug, Clone, Serialize)]
pub struct Tables {
    /// Table 1.
    pub blockwise: Vec<BlockRow>,
    /// Table 2.
    pub rotations: Vec<RotationRow>,
    /// Table 3.
    pub baselines: Vec<BaselineRow>,
    /// The few-label table (empty when the profile skips it).
    pub few_labels: Vec<FewLabelRow>,
    /// The findings.
    pub checks: Checks,
}

/// Builds the tables of profile `p` from the probe scores.
pub fn build(r: &Reports, p: &Profile) -> Tables {
    let taps = r.taps(TABLE1_RUN, "mlp");
    let blockwise: Vec<BlockRow> = taps
        .iter()
        .enumerate()
        .map(|(i, tap)| {
            let ours = r.get(TABLE1_RUN, "mlp", tap);
            let paper = PAPER_BLOCKS.get(i).copied();
            BlockRow {
                block: tap.clone(),
                paper,
                rotnet_nonlinear: ours,
                rotnet_nonlinear_stat: r.stat(TABLE1_RUN, "mlp", tap),
                rotnet_nonlinear_best: r.best(TABLE1_RUN, "mlp", tap),
                diff: diff(ours, paper),
                rotnet_linear: r.get(TABLE1_RUN, "linear", tap),
                random_nonlinear: r.get("random", "mlp", tap),
                random_nonlinear_stat: r.stat("random", "mlp", tap),
                random_linear: r.get("random", "linear", tap),
                supervised_nonlinear: r.get("supervised", "mlp", tap),
            }
        })
        .collect();
    let rotations: Vec<RotationRow> = selfsup_rotnet::RotationSet::ALL
        .iter()
        .zip(PAPER_ROTATIONS)
        .map(|(set, paper)| {
            let run = p.rotation_set_run(*set);
            let ours = r.get(&run, "mlp", "block2");
            let ours_stat = r.stat(&run, "mlp", "block2");
            RotationRow {
                set: set.name().into(),
                run,
                angles: set.angles().to_vec(),
                paper,
                ours,
                ours_stat,
                diff: diff(ours, Some(paper)),
                pretext_acc: r
                    .pretext_acc
                    .iter()
                    .find(|(n, _)| n == set.name())
                    .and_then(|(_, a)| a.map(|a| 100.0 * a)),
            }
        })
        .collect();
    let row = |name: &str, paper: Option<f64>, probe: Option<(&str, &str)>| {
        let (ours_stat, best_epoch) = match probe {
            Some((enc, kind)) => (r.stat(enc, kind, "block2"), r.best(enc, kind, "block2")),
            None => (r.supervised_end_to_end.and_then(|v| Stat::of(&[v])), None),
        };
        let ours = ours_stat.map(|s| s.mean);
        BaselineRow {
            row: name.into(),
            paper,
            ours,
            ours_stat,
            best_epoch,
            diff: diff(ours, paper),
        }
    };
    let baselines = vec![
        row("Supervised NIN, 3 blocks (end to end)", Some(PAPER_SUPERVISED), None),
        row(
            "Random init (ours: He-normal convs, BN weight 1) + conv probe (block 2)",
            Some(PAPER_RANDOM_CONV),
            Some(("random", "conv")),
        ),
        row(
            "Random init (PyTorch 0.3 default: convs U(±1/√fan_in), BN weight U(0, 1)) + conv \
             probe (block 2)",
            Some(PAPER_RANDOM_CONV),
            Some(("random_legacy", "conv")),
        ),
        row(
            "RotNet + non-linear probe (block 2)",
            Some(PAPER_BLOCKS[1]),
            Some((TABLE1_RUN, "mlp")),
        ),
        row("RotNet + conv probe (block 2)", Some(PAPER_ROTNET_CONV), Some((TABLE1_RUN, "conv"))),
        row("Random init + non-linear probe (block 2)", None, Some(("random", "mlp"))),
        row("Supervised NIN + non-linear probe (block 2)", None, Some(("supervised", "mlp"))),
    ];
    let best_block = blockwise
        .iter()
        .filter_map(|b| b.rotnet_nonlinear.map(|v| (b.block.clone(), v)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|b| b.0);
    let two = [&rotations[2], &rotations[3]];
    let best_two = two
        .iter()
        .filter(|x| x.ours.is_some())
        .max_by(|a, b| a.ours.unwrap_or(f64::NAN).total_cmp(&b.ours.unwrap_or(f64::NAN)));
    let mlp2 = |run: &str| (run.to_string(), "mlp", "block2");
    let checks = Checks {
        rotnet_minus_random: blockwise
            .iter()
            .map(|b| diff(b.rotnet_nonlinear, b.random_nonlinear))
            .collect(),
        rotnet_minus_random_stat: blockwise
            .iter()
            .map(|b| r.paired_diff((TABLE1_RUN, "mlp", &b.block), ("random", "mlp", &b.block)))
            .collect(),
        best_block,
        block2_minus_block1: r
            .paired_diff((TABLE1_RUN, "mlp", "block2"), (TABLE1_RUN, "mlp", "block1")),
        four_minus_best_two: diff(rotations[0].ours, best_two.and_then(|x| x.ours)),
        four_minus_best_two_stat: best_two.and_then(|x| {
            let (a, b) = (mlp2(&rotations[0].run), mlp2(&x.run));
            r.paired_diff((&a.0, a.1, a.2), (&b.0, b.1, b.2))
        }),
    };
    Tables { blockwise, rotations, baselines, few_labels: r.few_labels.clone(), checks }
}

fn f(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2}"))
}

fn d(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:+.2}"))
}

/// `mean ± std` (the mean alone for one seed).
fn st(v: Option<Stat>) -> String {
    match v {
        Some(Stat { mean, std: Some(sd), .. }) => format!("{mean:.2} ± {sd:.2}"),
        Some(Stat { mean, .. }) => format!("{mean:.2}"),
        None => "–".into(),
    }
}

/// A difference as `+mean ± std` (the mean alone for one seed).
fn dst(v: Option<Stat>) -> String {
    match v {
        Some(Stat { mean, std: Some(sd), .. }) => format!("{mean:+.2} ± {sd:.2}"),
        Some(Stat { mean, .. }) => format!("{mean:+.2}"),
        None => "–".into(),
    }
}

/// What changed in these tables since the ones committed before the fidelity review.
const CHANGES: &str = "Changed since the tables before the fidelity review: the RotNet and \
supervised heads get PyTorch's `nn.Linear` initialisation (tch's default weight bound was \
2.45× wider); the supervised NIN and the few-label NIN from scratch have 3 blocks, as the \
official `CIFAR10_supervised_NIN`; the headline probes are mean ± std over the probe seeds \
(each draws its own labeled subset); the best test epoch of the non-linear and conv probes is a \
labelled second column beside the last epoch; Table 3 adds the random-init row with PyTorch \
0.3's default initialisation, the one behind the paper's 72.50.";

/// The tables as markdown.
pub fn markdown(p: &Profile, t: &Tables, r: &Reports, device: &str, dataset: &str) -> String {
    let mut s = format!("# RotNet on {dataset}: profile `{}`\n\n", p.name);
    s += &format!(
        "{}. Encoder `{}`, pretraining {} epochs on {} images (batch {}, SGD {} Nesterov, wd \
         5e-4, ×0.2 at {:?}), device `{device}`. Probes: {} epochs (non-linear: official \
         MultLayer, 200-unit hidden layers; conv: `NIN_ConvBlock3` of width {}; linear: \
         features pooled to ~9k dims), augmentation {}. Test top-1 in %, last epoch; Δ = ours \
         − paper. Headline probes: mean ± std over probe seeds {:?}, each drawing its own \
         labeled subset; the others use seed {}. Supervised NIN: `{}`.\n\n{CHANGES}\n\n",
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
    s += "## 1. Block-wise (RotNet Table 1, 4 blocks)\n\n";
    s += "| Block | RotNet non-linear | Paper (best epoch) | Δ | RotNet non-linear, best epoch | RotNet linear | Random non-linear | Random linear |\n";
    s += "|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for b in &t.blockwise {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            b.block,
            st(b.rotnet_nonlinear_stat),
            f(b.paper),
            d(b.diff),
            st(b.rotnet_nonlinear_best),
            f(b.rotnet_linear),
            st(b.random_nonlinear_stat),
            f(b.random_linear),
        );
    }
    s += "\n## 2. Number of rotations (RotNet Table 2, non-linear probe on block 2)\n\n";
    if let Some(b) = &p.rotation_sets_budget {
        s += &format!(
            "Each rotation set is its own pretraining of {} epochs (×0.2 at {:?}; the same \
             images, batch and rate as Table 1), shorter than Table 1's {}-epoch run, so the \
             `four` row is not Table 1's block 2.\n\n",
            b.epochs, b.milestones, p.epochs
        );
    }
    s += "| Rotations | Angles | Run | Ours | Paper | Δ | Pretext acc. (last epoch) |\n";
    s += "|---|---|---|---:|---:|---:|---:|\n";
    for x in &t.rotations {
        let angles: Vec<String> = x.angles.iter().map(|a| format!("{a}°")).collect();
        s += &format!(
            "| {} | {} | `{}` | {} | {:.2} | {} | {} |\n",
            x.set,
            angles.join(", "),
            x.run,
            st(x.ours_stat),
            x.paper,
            d(x.diff),
            f(x.pretext_acc)
        );
    }
    s += "\n## 3. Baselines (RotNet Table 3)\n\n| Row | Ours | Ours, best epoch | Paper | Δ |\n|---|---:|---:|---:|---:|\n";
    for b in &t.baselines {
        s += &format!(
            "| {} | {} | {} | {} | {} |\n",
            b.row,
            st(b.ours_stat),
            st(b.best_epoch),
            f(b.paper),
            d(b.diff)
        );
    }
    if !t.few_labels.is_empty() {
        s += &format!(
            "\n## 4. Few labels (RotNet §4.1, semi-supervised; the paper plots it)\n\n\
             Frozen RotNet block-2 features with the conv-block probe ({} epochs of {} samples) \
             against the same NIN trained from scratch ({} epochs of {} samples, augmentation \
             {}), both on K labeled images per class.\n\n\
             | K per class | Labeled images | RotNet + conv | From scratch | Δ |\n\
             |---:|---:|---:|---:|---:|\n",
            p.few_conv.epochs,
            p.few_conv.epoch_size.map_or("one pass".into(), |n| n.to_string()),
            p.few_supervised.epochs,
            p.few_supervised.epoch_size.map_or("one pass".into(), |n| n.to_string()),
            if p.few_supervised.augment { "on" } else { "off" },
        );
        for x in &t.few_labels {
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                x.per_class,
                x.train_images.map_or("–".into(), |n| n.to_string()),
                f(x.rotnet_conv),
                f(x.scratch),
                d(x.diff)
            );
        }
    }
    s += "\n## Findings\n\n";
    let margins: Vec<String> = t
        .blockwise
        .iter()
        .zip(&t.checks.rotnet_minus_random_stat)
        .map(|(b, m)| format!("{} {}", b.block, dst(*m)))
        .collect();
    let beats = t.checks.rotnet_minus_random.iter().all(|m| m.is_some_and(|m| m > 0.0));
    s += &format!(
        "- RotNet beats random init at every block (non-linear probe): **{}** ({}).\n",
        if beats { "yes" } else { "no" },
        margins.join(", ")
    );
    s += &format!(
        "- Best RotNet block: **{}** (paper: block2); block 2 minus block 1: {} (paper: +3.99).\n",
        t.checks.best_block.as_deref().unwrap_or("–"),
        dst(t.checks.block2_minus_block1)
    );
    s += &format!(
        "- Four rotations minus the better two-rotation set (block 2): **{}** (paper: +1.60).\n",
        dst(t.checks.four_minus_best_two_stat)
    );
    if t.few_labels.is_empty() {
        s += "- Few labels (RotNet §4.1): not run by this profile.\n";
    } else {
        let ahead: Vec<String> =
            t.few_labels.iter().map(|x| format!("{}/class {}", x.per_class, d(x.diff))).collect();
        s += &format!(
            "- Few labels, RotNet + conv probe minus the NIN from scratch: {} (paper, §4.1: \
             RotNet ahead when labels are few, the supervised NIN ahead with all 5,000 per \
             class).\n",
            ahead.join(", ")
        );
    }
    let _ = r;
    s
}

/// Writes `commands.md`: the command that produced the results and the per-stage equivalents.
pub fn write_commands(dir: &Path, p: &Profile, command: &str, dataset: &str) -> Result<()> {
    let mut s = String::from("# Commands\n\nThis folder was produced by:\n\n```\n");
    s += command;
    s += "\n```\n\n(`cargo xtask reproduce rotnet --profile ";
    s += &p.name;
    s += "` builds the release binary and runs the same.)\n\n";
    s += "Each training is the run config in `configs/`, i.e. the equivalent of\n\n```\n";
    for name in p.runs() {
        s += &format!(
            "selfsup train --config results/rotnet/{0}/configs/{name}.json --out runs/rotnet/{0}/{name}\n",
            p.name
        );
    }
    s += "```\n\nThe probes use the settings in `results.json` (`profile.mlp`, `profile.conv`, \
          `profile.linear`; the few-label table `profile.few_labels`, `profile.few_conv`, \
          `profile.few_supervised`, as `selfsup eval --protocol fewshot`)";
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
    s += ".\n";
    let path = dir.join("commands.md");
    std::fs::write(&path, s).with_context(|| format!("{}", path.display()))
}
