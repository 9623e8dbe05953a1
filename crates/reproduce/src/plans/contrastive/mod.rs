//! The plans of `selfsup reproduce simclr|moco|instance-discrimination [--profile
//! smoke|cpu|paper]`: pretrain one contrastive method, probe the trained and a random-init
//! method of the same architecture, written to `results/<method>/<profile>/` by the engine
//! ([`crate::engine`]).
//!
//! What a plan declares:
//! 1. pretraining under `runs/<method>/<profile>/pretrain/`;
//! 2. four probes of the trained and the random-init encoder at every probe seed (each seed
//!    draws its own labeled subset), under
//!    `runs/<method>/<profile>/probes/<encoder>/<probe>[_seed<s>]/`:
//!    - `knn`: weighted kNN (k = 200, T = 0.1) on the globally pooled backbone (solo-learn and
//!      lightly report this one);
//!    - `knn_embedding`: the same on the L2-normalised 128-d head output (MoCo's CIFAR demo
//!      and lemniscate report this one: its 85.3% is on the head embedding);
//!    - `linear`: the papers' and solo-learn's linear evaluation, on the globally pooled
//!      backbone (512-d for a ResNet-18), trained on random-resized crops and flips
//!      ([`LinearProbeConfig::reference_contrastive`]);
//!    - `linear_map`: the classic pretext tasks' probe, the last feature map pooled to about
//!      9,000 dimensions, standardised, without augmentation;
//! 3. the report: one table, mean ± standard deviation over the probe seeds, the gain of
//!    training, and the profile's published references.
//!
//! Profiles:
//! - `paper` (a GPU job): the public CIFAR-10 recipes with a CIFAR-stem ResNet-18, 200 epochs
//!   at batch 512 — lightly's CIFAR-10 kNN benchmark setting for SimCLR (SGD, lr 0.06 × B/128,
//!   momentum 0.9, weight decay 5e-4, cosine; τ = 0.5; reference kNN 84.8%), MoCo's official
//!   CIFAR-10 demo for MoCo (lr 0.06, weight decay 5e-4, cosine, K = 4,096, m = 0.99, τ = 0.1,
//!   symmetric loss, 8 BN splits; reference kNN 85.3% on the head embedding, lightly 84.7%),
//!   lemniscate's current `cifar.py` and README for instance discrimination (`--nce-k 0
//!   --nce-t 0.1 --lr 0.03`: the full softmax, τ = 0.1, lr 0.03 ×0.1 at epochs 120 and 160,
//!   batch 128, bank momentum 0.5, no horizontal flip; no reference figure recorded here).
//!   solo-learn's 1000-epoch linear probes (SimCLR 90.74%, MoCo v2+ 92.94%) are listed for
//!   context only: they use 1000 epochs and other recipes.
//! - `cpu`: trained vs random init on 2 CPU cores, not the paper's numbers: a NIN-4 of width 32
//!   pretrained at batch 128 (SGD 0.06, cosine), oneDNN on; probes with 10,000 labeled images
//!   at probe seeds 0, 1, 2, scored on the whole test set. SimCLR and MoCo train 10 epochs on 25,000
//!   images; instance discrimination 40 epochs on 10,000 with the full softmax, τ = 0.1 and
//!   batch norm on the head output (see `Profile::cpu_method_config`). Measured before the
//!   fidelity review (2 cores of an AMD EPYC, alone, one probe seed): SimCLR 670 s (390
//!   images/s), MoCo (symmetric loss) 1,168 s, instance discrimination 655 s. After it (four
//!   probes at three seeds, the augmented linear probe recomputing features every batch; on
//!   an Intel Xeon with 1 thread, beside other jobs, so slower than alone): SimCLR 1,953 s
//!   (pretraining 1,180 s), MoCo 3,180 s (1,954 s), instance discrimination 1,759 s (963 s);
//!   the tables are in `results/<method>/cpu/`.
//! - `smoke`: seconds; checks the pipeline (numbers mean nothing).
mod profile;

pub use profile::{Profile, Reference};

use super::PlanInput;
use crate::engine::report::{num_col, text_col};
use crate::engine::scores::{row, Row};
use crate::engine::{
    Cell, EncoderSpec, Labeled, Plan, ProbeSpec, Protocol, Report, Section, Source, Table, Training,
};
use anyhow::Result;

/// The methods these plans reproduce.
pub const METHODS: [&str; 3] = ["simclr", "moco", "instance-discrimination"];

/// The probes of every encoder, in table order: (name, column heading).
pub const PROBES: [(&str, &str); 4] = [
    ("knn", "kNN, pooled backbone"),
    ("knn_embedding", "kNN, head embedding"),
    ("linear", "linear, reference (global pool, crop + flip)"),
    ("linear_map", "linear, pooled map (~9k, standardised)"),
];

/// What changed in these tables since the ones committed before the fidelity review, printed
/// under every table.
const CHANGES: &str = "Changed since the tables before the fidelity review: projection and \
linear heads get PyTorch's initialisation (tch's default drew BN weights from U(0, 1) and \
linear weights 2.45× too wide); MoCo's split batch norm makes one running-statistics update \
per step, as the demo's `SplitBatchNorm`; the headline linear probe is the papers' (globally \
pooled output, random-resized crop and flip), the pooled-map probe its own column; kNN also \
on the head embedding; every figure is mean ± std over the probe seeds.";

const ENCODERS: [&str; 2] = ["trained", "random"];

/// The plan of `input.name` (one of [`METHODS`]) under profile `input.profile`.
pub fn plan(input: &PlanInput) -> Result<Plan> {
    let method = input.name.as_str();
    let p = Profile::resolve(method, &input.profile, &input.sets)?;
    let config = p.run_config(method, &input.dataset, &input.data_dir, &input.device);
    let encoders = ENCODERS
        .iter()
        .map(|&name| EncoderSpec {
            name: name.into(),
            config: p.encoder.clone(),
            source: Source::Method {
                run: "pretrain".into(),
                trained: name == "trained",
                view: serde_json::Value::Null,
            },
        })
        .collect();
    let mut probes = Vec::new();
    for enc in ENCODERS {
        for (name, _) in PROBES {
            probes.push(ProbeSpec {
                encoder: enc.into(),
                name: name.into(),
                protocol: match name {
                    "knn" => Protocol::Knn(p.knn.clone()),
                    "knn_embedding" => Protocol::KnnEmbedding(p.knn.clone()),
                    "linear" => Protocol::Linear(p.linear.clone()),
                    _ => Protocol::Linear(p.linear_map.clone()),
                },
                seeds: p.probe_seeds.clone(),
                labeled: Labeled::Subset { images: p.probe_train_images },
            });
        }
    }
    Ok(Plan {
        name: method.into(),
        profile: p.name.clone(),
        summary: p.summary.clone(),
        settings: serde_json::to_value(&p)?,
        deterministic: p.deterministic,
        test_images: p.test_images,
        seed: p.seed,
        trainings: vec![Training {
            name: "pretrain".into(),
            config,
            headline_metric: None,
            optional: false,
        }],
        encoders,
        probes,
        report: report(method, &p, input),
        charts: Vec::new(),
        probe_commands: format!(
            "The probes use the settings in `results.json` (`profile.knn`, `profile.linear`, \
             `profile.linear_map`): `selfsup eval --checkpoint runs/{method}/{0}/pretrain \
             --protocol knn|linear --config PROBE.json --seed S{1}` (add `--random-init` for \
             the random-init rows) draws the same labeled images.",
            p.name,
            p.probe_train_images.map_or(String::new(), |n| format!(" --train-images {n}")),
        ),
        scatters: Vec::new(),
        artifacts: Vec::new(),
    })
}

/// `table.md`: every probe of the trained and the random-init encoder (mean ± std over the
/// probe seeds), the gain of training, and the published references of the profile.
fn report(method: &str, p: &Profile, input: &PlanInput) -> Report {
    let score = |enc: &str, probe: &str| row(enc, probe, Row::Last);
    let mut columns = vec![text_col("encoder", "encoder")];
    columns.extend(PROBES.iter().map(|(name, heading)| num_col(heading, name)));
    let mut rows: Vec<Vec<Cell>> = ENCODERS
        .iter()
        .map(|enc| {
            let mut r = vec![Cell::Text(enc.to_string())];
            r.extend(PROBES.iter().map(|(name, _)| Cell::Spread(vec![score(enc, name)])));
            r
        })
        .collect();
    let mut gain = vec![Cell::Text("trained − random".into())];
    gain.extend(
        PROBES
            .iter()
            .map(|(name, _)| Cell::Gain(vec![score("trained", name)], vec![score("random", name)])),
    );
    rows.push(gain);
    let mut sections = vec![
        Section::Text(format!(
            "{}. Encoder `{}`, {} epochs at batch {}, device {}. Top-1 (%) on the test set, \
             mean ± std over probe seeds {:?} (each seed draws its own {} labeled images).",
            p.summary,
            serde_json::to_string(&p.encoder).unwrap_or_default(),
            p.epochs,
            p.batch_size,
            input.device,
            p.probe_seeds,
            p.probe_train_images.map_or("all".to_string(), |n| n.to_string()),
        )),
        Section::Table(Table { key: "top1".into(), columns, rows }),
    ];
    if !p.references.is_empty() {
        sections.push(Section::Text("Published references:".into()));
        sections.push(Section::Table(Table {
            key: "references".into(),
            columns: vec![
                text_col("source", "source"),
                text_col("protocol", "protocol"),
                text_col("epochs", "epochs"),
                text_col("top-1 (%)", "top1"),
            ],
            rows: p
                .references
                .iter()
                .map(|r| {
                    vec![
                        Cell::Text(r.source.clone()),
                        Cell::Text(r.protocol.clone()),
                        Cell::Text(r.epochs.to_string()),
                        Cell::Figure(Some(r.top1)),
                    ]
                })
                .collect(),
        }));
    }
    sections.push(Section::Text(CHANGES.into()));
    sections.push(Section::Command);
    Report { title: format!("{method} on {}, profile `{}`", input.dataset, p.name), sections }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfsup_core::schedule::ScheduleConfig;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn profiles_resolve_for_every_method() {
        for m in METHODS {
            for name in ["smoke", "cpu", "paper"] {
                let p = Profile::resolve(m, name, &[]).unwrap();
                assert_eq!(p.name, name);
                // The method config must be accepted by the method's own parser.
                let r = selfsup_methods::registry();
                let entry = r.get(m).unwrap();
                let mut merged = (entry.default_config)();
                selfsup_core::config::merge(&mut merged, &p.method_config);
                assert_eq!(merged, p.method_config, "{m}/{name}: profile config is complete");
            }
        }
        // Instance discrimination's paper profile is lemniscate's current `cifar.py`.
        let p = Profile::paper("instance-discrimination").unwrap();
        assert_eq!(p.method_config["objective"], "softmax");
        assert_eq!(p.method_config["temperature"], 0.1);
        assert_eq!(p.optimizer.lr(), 0.03);
        assert_eq!(p.schedule, ScheduleConfig::Steps { milestones: vec![120, 160], gamma: 0.1 });
        let view: selfsup_data::Pipeline =
            serde_json::from_value(p.method_config["view"].clone()).unwrap();
        assert!(!view.ops.iter().any(|op| matches!(op, selfsup_data::Op::HorizontalFlip { .. })));
        let p = Profile::resolve("simclr", "smoke", &s(&["epochs=3"])).unwrap();
        assert_eq!(p.epochs, 3);
        assert!(Profile::resolve("simclr", "huge", &[]).is_err());
        let err = crate::run(&s(&["byol"]), &selfsup_methods::registry()).unwrap_err();
        assert!(err.to_string().contains("no reproduction is registered for `byol`"), "{err}");
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    #[test]
    fn plans_validate_for_every_method_and_profile() {
        for m in METHODS {
            for profile in ["smoke", "cpu", "paper"] {
                let input = PlanInput {
                    name: m.into(),
                    profile: profile.into(),
                    sets: Vec::new(),
                    dataset: "cifar10".into(),
                    data_dir: "datasets".into(),
                    device: "cpu".into(),
                    registered: Vec::new(),
                };
                let plan = plan(&input).unwrap();
                plan.validate().unwrap();
                assert_eq!(plan.probes.len(), 2 * PROBES.len());
                assert_eq!(plan.trainings[0].config.method, m);
            }
        }
    }
}
