//! The plans of `selfsup reproduce relative-patch|jigsaw|cpc [--profile smoke|cpu|paper]`: the
//! patch-grid pretext methods (Doersch et al. 2015, context prediction; Noroozi & Favaro 2016,
//! jigsaw puzzles; van den Oord et al. 2018 and Hénaff et al. 2019, CPC) evaluated as the
//! seed's ImageNet table evaluates them, layer by layer, written to
//! `results/<method>/<profile>/` by the engine ([`crate::engine`]).
//!
//! What a plan declares:
//! 1. three trainings under `runs/<method>/<profile>/`: `pretrain` (the method with its
//!    shortcut countermeasures on), `ablation` (the same budget with the main one off: gap and
//!    jitter for relative patch and jigsaw, per-patch augmentation for CPC) and `supervised`
//!    (the same trunk trained with the labels of the same images);
//! 2. two probes of four encoders (`trained`, `ablation`, `random`: a fresh trunk of this
//!    project's initialisation, `supervised`) at every probe seed, each seed drawing its own
//!    labeled subset: `linear`, logistic regression on every tap `conv1..conv5` average-pooled
//!    to about 9,000 dimensions and standardised (Zhang et al.'s protocol behind the seed's
//!    ImageNet table), and `knn`, weighted kNN (k = 200, T = 0.1) on the globally pooled
//!    `conv5`;
//! 3. the report: the layer-wise table with kNN and the pretext accuracy of both pretrainings,
//!    the paired gains over random init and over the ablation, the seed's ImageNet rows as a
//!    reference (another dataset, marked), the findings (each decided by the margin rule) and
//!    `layers.png`.
//!
//! Patch geometry at CIFAR's 32 pixels (the cpu profile): the methods cut an image into 9
//! (jigsaw, relative patch) or 25 (CPC) pieces, so a 32-pixel image gives pieces of about 8
//! pixels, on which the CIFAR AlexNet's conv5 is 2×2. Relative patch keeps them so: 8-pixel
//! patches, gap 3 and jitter 1 (the papers' 48 and 7 at 96-pixel patches, scaled) at CIFAR's
//! own resolution, so that the trunk sees pixels at the scale the probes show it, as
//! Doersch et al.'s AlexNet saw 96-pixel patches cut from images of the size it was evaluated
//! on; `fc6` reads the 2×2 conv5 map unpooled (`pool5` 2). Measured (linear probe, probe
//! seed 0, conv1..conv5; random init 46.4 / 50.6 / 47.6 / 46.7 / 43.3): four epochs with the
//! image upsampled to 64 and 16-pixel patches, 48.6 / 50.1 / 46.9 / 45.4 / 39.5 (pretext 54%,
//! 167 s); four at 32 with 8-pixel patches, 46.9 / 50.4 / 49.4 / 46.4 / 42.0 (54%, 86 s);
//! twelve at 32 with pixelation, 49.1 / 52.6 / 50.0 / 45.3 / 41.5 (48%, 274 s), the profile;
//! twenty-four, 48.9 / 52.3 / 46.8 / 43.8 / 40.1 (50%): longer runs specialise the deep
//! layers in the puzzle. Jigsaw and CPC upsample the image (to 63 and
//! 48) so that each piece the trunk sees is 16 pixels (conv5 4×4), keeping gaps and jitter in
//! proportion to the papers' (jigsaw: 16-pixel tiles in 21-pixel cells, against 64 in 85).
//! Jigsaw's `fc6` reads each tile's conv5 map through its global mean (`pool5` 1,
//! `pool5_op` mean), not the official network's flattened max-pooled pool5 grid (the default,
//! 3×3 at 75-pixel tiles). Three heads measured end to end at this profile (linear probe minus
//! random init, conv1..conv5, probe seeds 0-2; pretext accuracy of the last epoch): the global
//! mean +3.98 / −1.23 / −2.91 / −5.06 / −6.23 (97.9%; the committed table, and the only one
//! whose gap and jitter pay: +2.38 ± 0.39 over its ablation at conv1); the global maximum
//! +0.05 / −3.94 / −5.31 / −6.71 / −9.72 (61.0%; its ablation probed 2.67 better at conv1);
//! the 4×4 map max-pooled to 2×2 +2.39 / −3.46 / −3.18 / −5.27 / −11.76 (92.8%; with the older
//! ablation, tiles grown to fill their cells).
//! The measurements behind each profile are in [`Profile::cpu`]'s docs and each results
//! folder's `run.log`.
mod profile;

pub use profile::{imagenet_references, Profile, ReferenceRow};

use super::layerwise::{layer_chart, per_tap, probes, reference_sections};
use super::PlanInput;
use crate::engine::report::{num_col, text_col};
use crate::engine::scores::{at, row, Row};
use crate::engine::{
    Cell, EncoderSpec, Finding, Plan, Report, Section, Source, Table, Test, Training,
};
use anyhow::Result;

/// The methods these plans reproduce.
pub const METHODS: [&str; 3] = ["relative-patch", "jigsaw", "cpc"];

pub use super::layerwise::TAPS;

/// The encoders probed, in table order.
const ENCODERS: [&str; 4] = ["trained", "ablation", "random", "supervised"];

/// The last-epoch pretext metric of each method's training log.
pub fn pretext_metric(method: &str) -> &'static str {
    match method {
        "relative-patch" => "position_acc",
        "jigsaw" => "puzzle_acc",
        _ => "cpc_acc",
    }
}

/// The plan of `input.name` (one of [`METHODS`]) under profile `input.profile`.
pub fn plan(input: &PlanInput) -> Result<Plan> {
    let method = input.name.as_str();
    let p = Profile::resolve(method, &input.profile, &input.sets)?;
    let mut ablated = p.method_config.clone();
    selfsup_core::config::merge(&mut ablated, &p.ablation);
    let shared = p.trainings();
    let cfg = |m: &str, c: &serde_json::Value, epochs, opt| {
        shared.config(m, c.clone(), epochs, opt, input)
    };
    let headline = Some(pretext_metric(method).to_string());
    let trainings = vec![
        Training {
            name: "pretrain".into(),
            config: cfg(method, &p.method_config, p.epochs, p.optimizer.clone()),
            headline_metric: headline.clone(),
            optional: false,
        },
        Training {
            name: "ablation".into(),
            config: cfg(method, &ablated, p.epochs, p.optimizer.clone()),
            headline_metric: headline,
            optional: false,
        },
        Training {
            name: "supervised".into(),
            config: cfg(
                "supervised",
                &p.supervised_config,
                p.supervised_epochs,
                p.supervised_optimizer.clone(),
            ),
            headline_metric: Some("train_acc".into()),
            optional: false,
        },
    ];
    let encoders = ENCODERS
        .iter()
        .map(|&name| EncoderSpec {
            name: name.into(),
            config: p.encoder.clone(),
            source: match name {
                "trained" => Source::Encoder { run: "pretrain".into() },
                "random" => Source::Random { seed: p.seed, pytorch_legacy: false },
                run => Source::Encoder { run: run.into() },
            },
        })
        .collect();
    let names: Vec<String> = ENCODERS.iter().map(|e| e.to_string()).collect();
    let probes = probes(&names, &p.linear, &p.knn, &p.probe_seeds, p.probe_train_images);
    Ok(Plan {
        name: method.into(),
        profile: p.name.clone(),
        summary: p.summary.clone(),
        settings: serde_json::to_value(&p)?,
        deterministic: p.deterministic,
        test_images: p.test_images,
        seed: p.seed,
        trainings,
        encoders,
        probes,
        report: report(method, &p, input),
        charts: vec![layer_chart(&names)],
        probe_commands: format!(
            "The probes use the settings in `results.json` (`profile.linear`, `profile.knn`): \
             `selfsup eval --checkpoint runs/{method}/{0}/pretrain --protocol linear|knn \
             --config PROBE.json --seed S{1}` (`runs/{method}/{0}/ablation` and \
             `runs/{method}/{0}/supervised` for those rows, `--random-init` for random init) \
             draws the same labeled images.",
            p.name,
            p.probe_train_images.map_or(String::new(), |n| format!(" --train-images {n}")),
        ),
        scatters: Vec::new(),
        artifacts: Vec::new(),
    })
}

/// The display name of an encoder row.
fn label(method: &str, p: &Profile, enc: &str) -> String {
    match enc {
        "trained" => format!("{method} (countermeasures on)"),
        "ablation" => format!("{method}, {}", p.ablation_label),
        "random" => "random init".into(),
        _ => "supervised (CIFAR-10 labels)".into(),
    }
}

fn report(method: &str, p: &Profile, input: &PlanInput) -> Report {
    let metric = pretext_metric(method);
    let mut columns = vec![text_col("Encoder", "encoder")];
    columns.extend(TAPS.iter().map(|t| num_col(t, t)));
    columns.push(num_col("kNN (conv5)", "knn"));
    columns.push(num_col("Pretext acc. (last epoch)", "pretext_acc"));
    let mut rows: Vec<Vec<Cell>> = ENCODERS
        .iter()
        .map(|&enc| {
            let mut r = vec![Cell::Text(label(method, p, enc))];
            r.extend(TAPS.iter().map(|t| Cell::Spread(vec![at(enc, "linear", t)])));
            r.push(Cell::Spread(vec![row(enc, "knn", Row::Last)]));
            r.push(match enc {
                "trained" | "ablation" => Cell::RunMetric {
                    run: if enc == "trained" { "pretrain" } else { "ablation" }.into(),
                    key: metric.into(),
                    scale: 100.0,
                },
                _ => Cell::Text("–".into()),
            });
            r
        })
        .collect();
    for (a, b) in [("trained", "random"), ("trained", "ablation"), ("supervised", "trained")] {
        let mut r = vec![Cell::Text(format!("{a} − {b}"))];
        r.extend(
            TAPS.iter().map(|t| Cell::PairedDiff(vec![(at(a, "linear", t), at(b, "linear", t))])),
        );
        r.push(Cell::PairedDiff(vec![(row(a, "knn", Row::Last), row(b, "knn", Row::Last))]));
        r.push(Cell::Text(String::new()));
        rows.push(r);
    }
    let enc_name = serde_json::to_string(&p.encoder).unwrap_or_default();
    let mut sections = vec![
        Section::Text(format!(
            "{}. Trunk `{enc_name}`; pretraining {} epochs on {} images at batch {}, method \
             config in `configs/pretrain.json`; the ablation trains the same budget {}; the \
             supervised trunk {} epochs on the labels of the same images. Device {}. Linear \
             probes on every tap average-pooled to about 9,000 dimensions and standardised, {} \
             epochs; kNN (k = {}, T = {}) on globally pooled conv5. Test top-1 (%), mean ± std \
             over probe seeds {:?}, each drawing its own {} labeled images; differences are \
             paired per probe seed.",
            p.summary,
            p.epochs,
            p.train_images.map_or("all".to_string(), |n| n.to_string()),
            p.batch_size,
            p.ablation_label,
            p.supervised_epochs,
            input.device,
            p.linear.epochs,
            p.knn.k,
            p.knn.temperature,
            p.probe_seeds,
            p.probe_train_images.map_or("all".to_string(), |n| n.to_string()),
        )),
        Section::Table(Table { key: "layers".into(), columns, rows }),
    ];
    sections.extend(reference_sections(&p.references));
    sections.push(Section::Text("## Findings".into()));
    sections.push(Section::Findings(vec![
        Finding {
            claim: format!("{method} ahead of random init at its best layer (linear probe)"),
            paper: "yes (ImageNet)".into(),
            test: Test::AtBest(per_tap("trained", "random")),
        },
        Finding {
            claim: format!(
                "the countermeasure pays: {method} ahead of its run {} at its best layer \
                 (linear probe; the pretext accuracies are in the table)",
                p.ablation_label
            ),
            paper: match method {
                "cpc" => "not reported".into(),
                _ => "yes (the paper's motivation)".into(),
            },
            test: Test::AtBest(per_tap("trained", "ablation")),
        },
        Finding {
            claim: "supervised trunk ahead of the method at the supervised trunk's best layer"
                .into(),
            paper: "yes (ImageNet)".into(),
            test: Test::AtBest(per_tap("supervised", "trained")),
        },
    ]));
    sections.push(Section::Command);
    Report { title: format!("{method} on {}, profile `{}`", input.dataset, p.name), sections }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(method: &str, profile: &str) -> PlanInput {
        PlanInput::for_test(method, profile, &[])
    }

    #[test]
    fn plans_validate_for_every_method_and_profile() {
        let registry = selfsup_methods::registry();
        for m in METHODS {
            for profile in ["smoke", "cpu", "paper"] {
                let plan = plan(&input(m, profile)).unwrap();
                plan.validate().unwrap();
                assert_eq!(plan.trainings.len(), 3);
                assert_eq!(plan.probes.len(), 2 * ENCODERS.len());
                // The method accepts both configs, and the ablation differs from the run.
                let entry = registry.get(m).unwrap();
                let (run, abl) = (&plan.trainings[0].config, &plan.trainings[1].config);
                assert_ne!(run.method_config, abl.method_config, "{m}/{profile}");
                for c in [run, abl] {
                    let mut merged = (entry.default_config)();
                    selfsup_core::config::merge(&mut merged, &c.method_config);
                    assert_eq!(merged, c.method_config, "{m}/{profile}: config complete");
                }
                assert_eq!(plan.trainings[2].config.method, "supervised");
            }
        }
    }

    #[test]
    fn ablations_turn_off_the_main_countermeasure() {
        let p = Profile::resolve("relative-patch", "cpu", &[]).unwrap();
        assert_eq!(p.ablation, serde_json::json!({"gap": 0, "jitter": 0}));
        let p = Profile::resolve("jigsaw", "cpu", &[]).unwrap();
        // The same tiles edge to edge: the crop is three tiles, so each fills its cell.
        assert_eq!(p.ablation["tile"], p.method_config["tile"]);
        assert_eq!(p.ablation["crop"], 3 * p.method_config["tile"].as_u64().unwrap());
        assert_eq!(p.ablation["random_position"], false);
        assert_eq!(p.method_config["pool5"], 1);
        assert_eq!(p.method_config["pool5_op"], "mean");
        let p = Profile::resolve("cpc", "cpu", &[]).unwrap();
        assert_eq!(p.ablation["patch_augment"], false);
        // The paper profiles keep the crates' ImageNet geometry and P = 1000.
        let p = Profile::resolve("jigsaw", "paper", &[]).unwrap();
        assert_eq!(p.method_config["permutations"], 1000);
        assert_eq!(p.method_config["crop"], 255);
        assert_eq!(
            (p.ablation["tile"].as_u64(), p.ablation["crop"].as_u64()),
            (Some(64), Some(192))
        );
        assert_eq!(p.method_config["pool5"], 3);
        assert!(Profile::resolve("jigsaw", "huge", &[]).is_err());
        assert!(Profile::resolve("rotnet", "cpu", &[]).is_err());
    }

    #[test]
    fn references_are_the_seed_table() {
        let r = imagenet_references("jigsaw");
        assert_eq!(r[0].top1, [18.2, 28.8, 34.0, 33.9, 27.1]);
        assert!(r.iter().all(|x| x.dataset == "ImageNet"));
        assert_eq!(imagenet_references("relative-patch")[0].top1[3], 31.7);
        // No AlexNet row for CPC in the seed: the labels and random rows only.
        assert_eq!(imagenet_references("cpc").len(), 2);
    }
}
