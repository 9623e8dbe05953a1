//! The plans of `selfsup reproduce autoencoder|context-encoder|colorization|split-brain
//! [--profile smoke|cpu|paper]`: the methods that reconstruct an image, or some of its
//! channels, from a damaged copy (Vincent et al. 2008, denoising autoencoders; Pathak et al.
//! 2016, context encoders; Zhang et al. 2016, colorization; Zhang et al. 2017, split-brain
//! autoencoders), evaluated as the seed's ImageNet table evaluates them, layer by layer,
//! written to `results/<method>/<profile>/` by the engine ([`crate::engine`]).
//!
//! What a plan declares:
//! 1. the trainings under `runs/<method>/<profile>/`: the method's variants the paper compares
//!    (`pretrain` first: the method as the paper evaluates it; the context encoder's
//!    reconstruction-only and central-region runs; split-brain's regression run) and
//!    `supervised` (the same trunk trained with the labels of the same images);
//! 2. the encoders: each variant's (the whole method rebuilt from its checkpoint, so that the
//!    cross-channel encoders convert RGB to their Lab inputs themselves), views of a variant's
//!    weights (split-brain's halves alone), `random` (a fresh RGB trunk of this project's
//!    initialisation) and `supervised`;
//! 3. two probes of each at every probe seed, each seed drawing its own labeled subset:
//!    `linear` on every tap `conv1..conv5` average-pooled to about 9,000 dimensions and
//!    standardised (Zhang et al.'s protocol), and weighted kNN (k = 200, T = 0.1) on globally
//!    pooled `conv5`;
//! 4. the report: the layer-wise table with kNN and each variant's last-epoch pretext figure,
//!    paired differences, the seed's ImageNet (and, for the reconstruction methods, PASCAL VOC)
//!    figures as references marked with their dataset, findings (each decided by the margin
//!    rule: ahead of random init at each layer, the paper's comparisons, the supervised trunk
//!    ahead), `layers.png`, and the last sample grid of each variant (`samples/<variant>.png`:
//!    input, prediction, original) where the method writes them.
mod profile;

pub use profile::{pascal, references, Comparison, PascalRow, Profile, Variant, View};

use super::layerwise::{layer_chart, per_tap, probes, reference_sections};
use super::PlanInput;
use crate::engine::report::{num_col, text_col};
use crate::engine::scores::{at, row, Row};
use crate::engine::{
    Artifact, Cell, EncoderSpec, Finding, Plan, Report, Section, Source, Table, Test, Training,
};
use anyhow::{bail, Result};
use serde_json::Value;

/// The methods these plans reproduce.
pub const METHODS: [&str; 4] = ["autoencoder", "context-encoder", "colorization", "split-brain"];

pub use super::layerwise::TAPS;

/// The encoders of `p` in table order: the variants, the views, `random`, `supervised`.
fn encoder_names(p: &Profile) -> Vec<String> {
    let mut names: Vec<String> = p.variants.iter().map(|v| v.training.clone()).collect();
    names.extend(p.views.iter().map(|v| v.encoder.clone()));
    names.extend(["random".to_string(), "supervised".to_string()]);
    names
}

/// Whether the method writes sample grids (`samples/epoch*.png` in its run folder).
fn writes_samples(method: &str) -> bool {
    METHODS.contains(&method)
}

/// `config` with each top-level key of `overrides` replaced (not merged: a mask of another
/// kind replaces the whole mask).
pub fn with_overrides(config: &Value, overrides: &Value) -> Value {
    let mut c = config.clone();
    if let (Some(c), Some(o)) = (c.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// The plan of `input.name` (one of [`METHODS`]) under profile `input.profile`.
pub fn plan(input: &PlanInput) -> Result<Plan> {
    let method = input.name.as_str();
    let p = Profile::resolve(method, &input.profile, &input.sets)?;
    if p.variants.is_empty() {
        bail!("profile `{}` of `{method}` has no variants to train", p.name);
    }
    let shared = p.trainings();
    let mut trainings: Vec<Training> = p
        .variants
        .iter()
        .map(|v| {
            let c = with_overrides(&p.method_config, &v.overrides);
            Training {
                name: v.training.clone(),
                config: shared.config(method, c, p.epochs, p.optimizer.clone(), input),
                headline_metric: Some(v.metric.clone()),
                optional: false,
            }
        })
        .collect();
    trainings.push(Training {
        name: "supervised".into(),
        config: shared.config(
            "supervised",
            p.supervised_config.clone(),
            p.supervised_epochs,
            p.supervised_optimizer.clone(),
            input,
        ),
        headline_metric: Some("train_acc".into()),
        optional: false,
    });
    let method_source =
        |run: &str, view: Value| Source::Method { run: run.into(), trained: true, view };
    let mut encoders: Vec<EncoderSpec> = p
        .variants
        .iter()
        .map(|v| EncoderSpec {
            name: v.training.clone(),
            config: p.encoder.clone(),
            source: method_source(&v.training, Value::Null),
        })
        .collect();
    encoders.extend(p.views.iter().map(|v| EncoderSpec {
        name: v.encoder.clone(),
        config: p.encoder.clone(),
        source: method_source(&v.training, v.view.clone()),
    }));
    encoders.push(EncoderSpec {
        name: "random".into(),
        config: p.encoder.clone(),
        source: Source::Random { seed: p.seed, pytorch_legacy: false },
    });
    encoders.push(EncoderSpec {
        name: "supervised".into(),
        config: p.encoder.clone(),
        source: Source::Encoder { run: "supervised".into() },
    });
    let names = encoder_names(&p);
    let probes = probes(&names, &p.linear, &p.knn, &p.probe_seeds, p.probe_train_images);
    let artifacts = if writes_samples(method) {
        p.variants
            .iter()
            .map(|v| Artifact {
                training: v.training.clone(),
                folder: "samples".into(),
                file: format!("samples/{}.png", v.training),
            })
            .collect()
    } else {
        Vec::new()
    };
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
             --config PROBE.json --seed S{1}` (the other variants' run folders for their rows, \
             `runs/{method}/{0}/supervised` for the supervised row, `--random-init` for random \
             init) draws the same labeled images.",
            p.name,
            p.probe_train_images.map_or(String::new(), |n| format!(" --train-images {n}")),
        ),
        scatters: Vec::new(),
        artifacts,
    })
}

/// The display name of an encoder row.
fn label(p: &Profile, enc: &str) -> String {
    if let Some(v) = p.variants.iter().find(|v| v.training == enc) {
        return v.label.clone();
    }
    if let Some(v) = p.views.iter().find(|v| v.encoder == enc) {
        return v.label.clone();
    }
    match enc {
        "random" => "random init".into(),
        _ => "supervised (CIFAR-10 labels)".into(),
    }
}

/// What the encoders of `method` see in the probes.
fn probe_inputs(method: &str) -> &'static str {
    match method {
        "colorization" => {
            "The colorization encoder sees only the lightness L of each probe image (its trunk \
             has one input channel, as the paper's, whose probes feed grayscale images); random \
             init and the supervised trunk see RGB."
        }
        "split-brain" => {
            "The split-brain encoders convert each probe image to Lab themselves: the L → ab \
             half sees L, the ab → L half ab, both halves together the whole image; random init \
             and the supervised trunk see RGB."
        }
        _ => "Every encoder sees the RGB probe image, normalised as in its training.",
    }
}

fn report(method: &str, p: &Profile, input: &PlanInput) -> Report {
    let names = encoder_names(p);
    let main = p.variants[0].training.as_str();
    let mut columns = vec![text_col("Encoder", "encoder")];
    columns.extend(TAPS.iter().map(|t| num_col(t, t)));
    columns.push(num_col("kNN (conv5)", "knn"));
    columns.push(text_col("Pretext metric", "pretext_metric"));
    columns.push(num_col("Pretext (last epoch)", "pretext"));
    let mut rows: Vec<Vec<Cell>> = names
        .iter()
        .map(|enc| {
            let mut r = vec![Cell::Text(label(p, enc))];
            r.extend(TAPS.iter().map(|t| Cell::Spread(vec![at(enc, "linear", t)])));
            r.push(Cell::Spread(vec![row(enc, "knn", Row::Last)]));
            match p.variants.iter().find(|v| &v.training == enc) {
                Some(v) => {
                    let what = if v.scale == 100.0 {
                        format!("{} (%)", v.metric)
                    } else {
                        v.metric.clone()
                    };
                    r.push(Cell::Code(what));
                    r.push(Cell::RunMetric {
                        run: v.training.clone(),
                        key: v.metric.clone(),
                        scale: v.scale,
                    });
                }
                None => {
                    r.push(Cell::Text("–".into()));
                    r.push(Cell::Text("–".into()));
                }
            }
            r
        })
        .collect();
    let mut diffs: Vec<(String, String)> = vec![(main.into(), "random".into())];
    diffs.extend(p.comparisons.iter().map(|c| (c.a.clone(), c.b.clone())));
    diffs.push(("supervised".into(), main.into()));
    for (a, b) in &diffs {
        let mut r = vec![Cell::Text(format!("{a} − {b}"))];
        r.extend(
            TAPS.iter().map(|t| Cell::PairedDiff(vec![(at(a, "linear", t), at(b, "linear", t))])),
        );
        r.push(Cell::PairedDiff(vec![(row(a, "knn", Row::Last), row(b, "knn", Row::Last))]));
        r.push(Cell::Text(String::new()));
        r.push(Cell::Text(String::new()));
        rows.push(r);
    }
    let enc_name = serde_json::to_string(&p.encoder).unwrap_or_default();
    let variants = p
        .variants
        .iter()
        .map(|v| format!("`{}` ({})", v.training, v.label))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sections = vec![
        Section::Text(format!(
            "{}. Trunk `{enc_name}`; each pretraining {} epochs on {} images at batch {}, \
             method configs in `configs/` ({variants}); the supervised trunk {} epochs on the \
             labels of the same images. Device {}. Linear probes on every tap average-pooled to \
             about 9,000 dimensions and standardised, {} epochs; kNN (k = {}, T = {}) on \
             globally pooled conv5. Test top-1 (%), mean ± std over probe seeds {:?}, each \
             drawing its own {} labeled images; differences are paired per probe seed. {}",
            p.summary,
            p.epochs,
            p.train_images.map_or("all".to_string(), |n| n.to_string()),
            p.batch_size,
            p.supervised_epochs,
            input.device,
            p.linear.epochs,
            p.knn.k,
            p.knn.temperature,
            p.probe_seeds,
            p.probe_train_images.map_or("all".to_string(), |n| n.to_string()),
            probe_inputs(method),
        )),
        Section::Table(Table { key: "layers".into(), columns, rows }),
    ];
    if writes_samples(method) {
        sections.push(Section::Text(format!(
            "Sample grids of the last epoch ({}): {}.",
            match method {
                "split-brain" => "original, ab predicted from L, L predicted from ab",
                "colorization" => "grayscale input, prediction, original",
                _ => "input, prediction, original",
            },
            p.variants
                .iter()
                .map(|v| format!("`samples/{}.png`", v.training))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    sections.extend(reference_sections(&p.references));
    if !p.pascal.is_empty() {
        sections.push(Section::Text(
            "Reference: the seed's PASCAL VOC 2007 classification (Pathak et al. 2016, Table 2; \
             AlexNet fine-tuned, mAP %). Another dataset and protocol, not measured here."
                .into(),
        ));
        sections.push(Section::Table(Table {
            key: "pascal".into(),
            columns: vec![
                text_col("Row", "row"),
                text_col("Dataset", "dataset"),
                num_col("Classification mAP", "map"),
            ],
            rows: p
                .pascal
                .iter()
                .map(|r| {
                    vec![
                        Cell::Text(r.label.clone()),
                        Cell::Text("PASCAL VOC 2007".into()),
                        Cell::Figure(Some(r.map)),
                    ]
                })
                .collect(),
        }));
    }
    sections.push(Section::Text("## Findings".into()));
    let mut findings: Vec<Finding> = TAPS
        .iter()
        .map(|t| Finding {
            claim: format!("{main} ahead of random init at {t} (linear probe)"),
            paper: "yes (ImageNet)".into(),
            test: Test::AllAhead(vec![(
                t.to_string(),
                vec![(at(main, "linear", t), at("random", "linear", t))],
            )]),
        })
        .collect();
    findings.extend(p.comparisons.iter().map(|c| Finding {
        claim: format!("{} (linear probe, at `{}`'s best layer)", c.claim, c.a),
        paper: c.paper.clone(),
        test: Test::AtBest(per_tap(&c.a, &c.b)),
    }));
    findings.push(Finding {
        claim: "supervised trunk ahead of the method at the supervised trunk's best layer".into(),
        paper: "yes (ImageNet)".into(),
        test: Test::AtBest(per_tap("supervised", main)),
    });
    sections.push(Section::Findings(findings));
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
            let entry = registry.get(m).unwrap();
            for profile in ["smoke", "cpu", "paper"] {
                let plan = plan(&input(m, profile)).unwrap();
                plan.validate().unwrap();
                let p = Profile::resolve(m, profile, &[]).unwrap();
                assert_eq!(plan.trainings.len(), p.variants.len() + 1);
                assert_eq!(plan.probes.len(), 2 * encoder_names(&p).len());
                assert_eq!(plan.trainings[0].name, "pretrain");
                assert_eq!(plan.trainings.last().unwrap().config.method, "supervised");
                // Every variant's config is complete and accepted, and the variants differ.
                let mut seen = Vec::new();
                for t in &plan.trainings[..p.variants.len()] {
                    // Every key the crate defines, and no other.
                    let defaults = (entry.default_config)();
                    let full = with_overrides(&defaults, &t.config.method_config);
                    assert_eq!(full, t.config.method_config, "{m}/{profile}: complete");
                    assert!(!seen.contains(&t.config.method_config), "{m}/{profile}");
                    seen.push(t.config.method_config.clone());
                }
                // Every comparison and view names an encoder of the plan.
                for c in &p.comparisons {
                    assert!(plan.encoder(&c.a).is_some() && plan.encoder(&c.b).is_some());
                }
                assert_eq!(plan.artifacts.len(), p.variants.len(), "{m}: a sample grid each");
            }
        }
    }

    #[test]
    fn the_paper_s_comparisons_are_planned() {
        let p = Profile::resolve("context-encoder", "cpu", &[]).unwrap();
        let names: Vec<&str> = p.variants.iter().map(|v| v.training.as_str()).collect();
        assert_eq!(names, ["pretrain", "rec_only", "central"]);
        assert_eq!(p.method_config["mask"]["kind"], "random_regions");
        assert_eq!(p.variants[1].overrides["adversarial"], false);
        assert_eq!(p.variants[2].overrides["mask"]["kind"], "central");
        let p = Profile::resolve("split-brain", "cpu", &[]).unwrap();
        assert_eq!(p.variants[1].overrides["loss"], "regression");
        let views: Vec<&str> =
            p.views.iter().map(|v| v.view["features"].as_str().unwrap()).collect();
        assert_eq!(views, ["l_to_ab", "ab_to_l"]);
        let plan = plan(&input("split-brain", "cpu")).unwrap();
        match &plan.encoder("l_to_ab").unwrap().source {
            Source::Method { run, trained, view } => {
                assert_eq!((run.as_str(), *trained), ("pretrain", true));
                assert_eq!(view["features"], "l_to_ab");
            }
            other => panic!("{other:?}"),
        }
        // Each half of an even width: the smoke trunk splits.
        let p = Profile::resolve("split-brain", "smoke", &[]).unwrap();
        assert!(selfsup_split_brain::encoder::half_config(&p.encoder).is_ok());
        assert!(Profile::resolve("colorization", "huge", &[]).is_err());
        assert!(Profile::resolve("rotnet", "cpu", &[]).is_err());
    }

    #[test]
    fn references_are_the_seed_s() {
        assert_eq!(references("context-encoder")[0].top1, [14.1, 20.7, 21.0, 19.8, 15.5]);
        assert_eq!(references("colorization")[0].top1, [12.5, 24.5, 30.4, 31.5, 30.3]);
        assert_eq!(references("split-brain")[0].top1, [17.7, 29.3, 35.4, 35.2, 32.8]);
        // The autoencoder has no ImageNet row in the seed: labels and random only.
        assert_eq!(references("autoencoder").len(), 2);
        assert!(references("split-brain").iter().all(|r| r.dataset == "ImageNet"));
        let voc: Vec<f64> = pascal("autoencoder").iter().map(|r| r.map).collect();
        assert_eq!(voc, [53.3, 53.8, 56.5, 78.2]);
        assert!(pascal("colorization").is_empty());
    }
}
