//! The plan of `selfsup reproduce zoo [--profile smoke|cpu|paper] [--methods a,b,...]`: the
//! seed's central comparison (Zhang et al. 2017, Table 2 layout) regenerated under one
//! protocol. Every listed method pretrains the same trunk on the same images for the same
//! number of epochs from the same seed, each with its own recipe (its reproduction's method
//! config, optimizer and batch size for that profile; a cosine schedule over the zoo's epochs
//! for all); all are probed alike, beside random init and the supervised trunk.
//!
//! What it writes to `results/zoo/<profile>/`:
//! - `layers`: one row per method (random init and supervised first), linear probes on
//!   `conv1..conv5` average-pooled to about 9,000 dimensions, the best tap's kNN top-1, the
//!   pretext task's last-epoch figure, pretraining seconds and images seen;
//! - `seed`: the seed's ImageNet figures for the methods it lists, in the same shape, and the
//!   rank correlation (Spearman) between our ranking and the seed's at each layer, over the rows
//!   both have;
//! - `layers.png` (accuracy per layer, one line per method) and `time.png` (best-layer accuracy
//!   against pretraining seconds);
//! - findings: each method ahead of random init at its best layer.
//!
//! Re-running skips finished methods (the engine's stage reuse); a method added to the list
//! later is trained and probed alone, and its row joins the table. A method outside the known
//! recipes (one scaffolded with `cargo xtask new-method`) trains with its crate's defaults,
//! SGD 0.05 with momentum 0.9, batch 128, and shows its loss as its pretext figure.
use super::layerwise::{knn, layer_chart, linear, per_tap, probes};
use super::{contrastive, patches, reconstruction, rotnet, sgd, PlanInput, Trainings};
use crate::engine::report::{num_col, text_col};
use crate::engine::scores::at;
use crate::engine::{
    Cell, EncoderSpec, Finding, Plan, Report, Scatter, Section, Source, Table, Test, Training,
};
use anyhow::{bail, Result};
use selfsup_core::encoders::AlexnetVariant;
use selfsup_core::optim::OptimizerConfig;
use selfsup_core::EncoderConfig;
use selfsup_eval::{KnnConfig, LinearProbeConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub use super::layerwise::TAPS;

/// Every method with a recipe, in the seed table's order (classic pretext tasks, then the
/// contrastive ones).
pub const METHODS: [&str; 11] = [
    "autoencoder",
    "context-encoder",
    "relative-patch",
    "jigsaw",
    "rotnet",
    "colorization",
    "split-brain",
    "cpc",
    "instance-discrimination",
    "moco",
    "simclr",
];

/// How one method pretrains in the zoo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The method's config.
    pub method_config: Value,
    /// Its optimizer (the schedule is the zoo's cosine).
    pub optimizer: OptimizerConfig,
    /// Source images per step.
    pub batch_size: usize,
    /// The last-epoch metric shown as its pretext figure.
    pub metric: String,
    /// Factor of that metric in the table (100 for an accuracy).
    pub scale: f64,
}

impl Recipe {
    /// The recipe of a method without one: its crate's defaults, SGD 0.05 with momentum 0.9
    /// and weight decay 5e-4, batch 128, its loss.
    pub fn fallback() -> Recipe {
        Recipe {
            method_config: json!({}),
            optimizer: sgd(0.05, 0.9, 5e-4),
            batch_size: 128,
            metric: "loss".into(),
            scale: 1.0,
        }
    }

    /// The recipe of `method` under `profile`: its reproduction's method config, optimizer
    /// and batch size for that profile.
    pub fn of(method: &str, profile: &str) -> Result<Recipe> {
        let acc = |metric: &str| (metric.to_string(), 100.0);
        Ok(if method == "rotnet" {
            let p = rotnet::Profile::resolve(profile, &[])?;
            let rotations = selfsup_rotnet::RotationSet::Four;
            let (metric, scale) = acc("rotation_acc");
            Recipe {
                method_config: serde_json::to_value(selfsup_rotnet::RotNetConfig::with_rotations(
                    rotations,
                ))?,
                optimizer: rotnet::official_sgd(p.lr),
                batch_size: p.batch_size,
                metric,
                scale,
            }
        } else if contrastive::METHODS.contains(&method) {
            let p = contrastive::Profile::resolve(method, profile, &[])?;
            let (metric, scale) = acc(match method {
                "simclr" => "contrastive_acc",
                "moco" => "moco_acc",
                _ => "instance_acc",
            });
            Recipe {
                method_config: p.method_config,
                optimizer: p.optimizer,
                batch_size: p.batch_size,
                metric,
                scale,
            }
        } else if patches::METHODS.contains(&method) {
            let p = patches::Profile::resolve(method, profile, &[])?;
            let (metric, scale) = acc(patches::pretext_metric(method));
            Recipe {
                method_config: p.method_config,
                optimizer: p.optimizer,
                batch_size: p.batch_size,
                metric,
                scale,
            }
        } else if reconstruction::METHODS.contains(&method) {
            let p = reconstruction::Profile::resolve(method, profile, &[])?;
            let v = &p.variants[0];
            Recipe {
                method_config: reconstruction::with_overrides(&p.method_config, &v.overrides),
                optimizer: p.optimizer.clone(),
                batch_size: p.batch_size,
                metric: v.metric.clone(),
                scale: v.scale,
            }
        } else {
            bail!("no zoo recipe for `{method}`")
        })
    }
}

/// Everything a profile fixes (overridable with `--set key=value`; `--methods a,b` sets
/// `methods`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// `smoke`, `cpu` or `paper`.
    pub name: String,
    /// One line for the log.
    pub summary: String,
    /// The one trunk every method pretrains and every probe reads at `conv1..conv5`.
    pub encoder: EncoderConfig,
    /// The methods, in table order.
    pub methods: Vec<String>,
    /// The recipes of the known methods; a listed method without one uses
    /// [`Recipe::fallback`].
    pub recipes: BTreeMap<String, Recipe>,
    /// Pretraining images of every method (a seeded subset); `null` = all.
    pub train_images: Option<usize>,
    /// Pretraining epochs of every method.
    pub epochs: u64,
    /// Epochs of the supervised trunk (labels of the same images).
    pub supervised_epochs: u64,
    /// The supervised method's config.
    pub supervised_config: Value,
    /// Its optimizer.
    pub supervised_optimizer: OptimizerConfig,
    /// Its batch size.
    pub supervised_batch_size: usize,
    /// Labeled training images of the probes (a seeded subset per probe seed); `null` = all.
    pub probe_train_images: Option<usize>,
    /// Test images scored (a seeded subset); `null` = all.
    pub test_images: Option<usize>,
    /// The layer-wise linear probe (every tap pooled to about 9,000 dimensions).
    pub linear: LinearProbeConfig,
    /// Weighted kNN on every tap, globally pooled (the table shows the best tap's).
    pub knn: KnnConfig,
    /// Probe seeds: each draws its own labeled subset; the table gives mean ± std over them.
    pub probe_seeds: Vec<u64>,
    /// Bit-for-bit CPU determinism across thread counts (oneDNN convolutions off).
    pub deterministic: bool,
    /// Run seed (every method's).
    pub seed: u64,
    /// Metrics line every this many steps.
    pub log_every: u64,
}

fn recipes(profile: &str) -> Result<BTreeMap<String, Recipe>> {
    METHODS.iter().map(|m| Ok((m.to_string(), Recipe::of(m, profile)?))).collect()
}

impl Profile {
    /// The profile `name`, with `--set` overrides applied. Its methods are `registered` (the
    /// registry's, less the supervised baseline, in table order) when that is not empty, else
    /// [`METHODS`].
    pub fn resolve(name: &str, sets: &[String], registered: &[String]) -> Result<Profile> {
        let mut base = match name {
            "paper" => Self::paper()?,
            "cpu" => Self::cpu()?,
            "smoke" => Self::smoke()?,
            other => bail!("unknown profile `{other}` (known: smoke, cpu, paper)"),
        };
        if !registered.is_empty() {
            base.methods = registered.iter().filter(|m| *m != "supervised").cloned().collect();
        }
        let p: Profile = crate::plans::apply_sets(base, sets)?;
        if p.methods.is_empty() {
            bail!("profile `{}` of the zoo lists no methods", p.name);
        }
        Ok(p)
    }

    /// The seed's protocol at full scale, a GPU job on an image folder the user supplies
    /// (`--dataset folder:PATH`): the Caffe AlexNet, every method 30 epochs of all images with
    /// its paper profile's recipe, the supervised trunk 90, linear probes on all labels.
    pub fn paper() -> Result<Profile> {
        Ok(Profile {
            name: "paper".into(),
            summary: "every method on the Caffe AlexNet at full scale (a GPU job)".into(),
            encoder: EncoderConfig::Alexnet { variant: AlexnetVariant::Imagenet, width: 96 },
            methods: METHODS.iter().map(|m| m.to_string()).collect(),
            recipes: recipes("paper")?,
            train_images: None,
            epochs: 30,
            supervised_epochs: 90,
            supervised_config: json!({
                "num_classes": 1000,
                "crop_padding": 0,
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
            }),
            supervised_optimizer: sgd(0.01, 0.9, 5e-4),
            supervised_batch_size: 256,
            probe_train_images: None,
            test_images: None,
            linear: linear(36, 256),
            knn: knn("all"),
            probe_seeds: vec![0],
            deterministic: false,
            seed: 0,
            log_every: 50,
        })
    }

    /// Every method on 2 CPU cores within 3 hours: the quarter-width CIFAR AlexNet of the
    /// patch and reconstruction plans (conv1 24 channels), 3 epochs of CIFAR-10's 50,000
    /// images each with its cpu recipe, the supervised trunk 3 epochs, probes with 10,000
    /// labels at probe seeds 0, 1, 2.
    ///
    /// The budget, from the pretraining throughputs measured for the method plans (2 cores of
    /// an Intel Xeon, family 6, model 207, 2 threads alone, source images per second: relative
    /// patch 1,100, jigsaw 360, CPC 118; 1 thread beside another job: autoencoder 343, context
    /// encoder 100, colorization 320, split-brain 354) and about 30 s per probe of an encoder
    /// and seed: CPC's 150,000 images are about 21 minutes, the context encoder's about 12, the
    /// others' a few each; the 13 encoders' probes about 20 minutes.
    ///
    /// Run as a whole (`results/zoo/cpu`, the release binary alone on 2 cores of that Xeon, 2
    /// threads): 2 h 1 min 41 s wall, peak RSS 6.2 GiB; pretraining 5,921 s (CPC 1,552, RotNet
    /// 769, context encoder 735, MoCo 628, jigsaw 597, SimCLR 360, colorization 281,
    /// instance discrimination 255, split-brain 243, autoencoder 229, supervised 183, relative
    /// patch 87), the 78 probes 1,377 s. The run's `results.json` records each stage's seconds.
    pub fn cpu() -> Result<Profile> {
        Ok(Profile {
            name: "cpu".into(),
            summary: "every method on one CIFAR AlexNet, 2 CPU cores (at most 3 hours)".into(),
            encoder: EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 24 },
            methods: METHODS.iter().map(|m| m.to_string()).collect(),
            recipes: recipes("cpu")?,
            train_images: Some(50_000),
            epochs: 3,
            supervised_epochs: 3,
            supervised_config: serde_json::to_value(
                selfsup_supervised::SupervisedConfig::default(),
            )?,
            supervised_optimizer: sgd(0.05, 0.9, 5e-4),
            supervised_batch_size: 128,
            probe_train_images: Some(10_000),
            test_images: None,
            linear: linear(15, 256),
            knn: knn("all"),
            probe_seeds: vec![0, 1, 2],
            deterministic: false,
            seed: 0,
            log_every: 10,
        })
    }

    /// A pipeline check in seconds: every method's smoke recipe on a width-6 CIFAR AlexNet
    /// (even, for split-brain's halves), 64 images, one epoch.
    pub fn smoke() -> Result<Profile> {
        let mut recipes = recipes("smoke")?;
        for r in recipes.values_mut() {
            r.batch_size = 32;
        }
        Ok(Profile {
            name: "smoke".into(),
            summary: "pipeline check in seconds (numbers mean nothing)".into(),
            encoder: EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 6 },
            recipes,
            train_images: Some(64),
            epochs: 1,
            supervised_epochs: 1,
            supervised_batch_size: 32,
            probe_train_images: Some(64),
            test_images: Some(32),
            linear: linear(1, 64),
            probe_seeds: vec![0, 1],
            deterministic: true,
            log_every: 1,
            ..Self::cpu()?
        })
    }

    /// The recipe of `method`: the profile's, else [`Recipe::fallback`].
    pub fn recipe(&self, method: &str) -> Recipe {
        self.recipes.get(method).cloned().unwrap_or_else(Recipe::fallback)
    }
}

/// The seed's ImageNet row (conv1..conv5) of a zoo row, where it has one.
pub fn seed_row(encoder: &str) -> Option<(&'static str, [f64; 5])> {
    let pick = |rows: Vec<patches::ReferenceRow>, i: usize| rows.get(i).map(|r| r.top1);
    let top1 = match encoder {
        "relative-patch" | "jigsaw" => pick(patches::imagenet_references(encoder), 0),
        "context-encoder" | "colorization" | "split-brain" => {
            pick(reconstruction::references(encoder), 0)
        }
        "supervised" => pick(patches::imagenet_references("cpc"), 0),
        "random" => pick(patches::imagenet_references("cpc"), 1),
        _ => None,
    }?;
    let label = match encoder {
        "relative-patch" => "Context (Doersch et al. 2015)",
        "jigsaw" => "Jigsaw (Noroozi & Favaro 2016)",
        "context-encoder" => "Context encoder (Pathak et al. 2016)",
        "colorization" => "Colorization (Zhang et al. 2016)",
        "split-brain" => "Split-brain auto (Zhang et al. 2017)",
        "supervised" => "ImageNet labels",
        _ => "Random init",
    };
    Some((label, top1))
}

/// The plan of the zoo under profile `input.profile`.
pub fn plan(input: &PlanInput) -> Result<Plan> {
    let p = Profile::resolve(&input.profile, &input.sets, &input.registered)?;
    let mut seen = std::collections::HashSet::new();
    if let Some(m) = p.methods.iter().find(|m| !seen.insert(m.as_str())) {
        bail!("the zoo lists `{m}` twice");
    }
    if let Some(m) = p.methods.iter().find(|m| ["random", "supervised"].contains(&m.as_str())) {
        bail!("`{m}` is one of the zoo's baseline rows, not a method to list");
    }
    let schedule = super::cosine();
    let shared = |batch_size| Trainings {
        encoder: &p.encoder,
        train_images: p.train_images,
        batch_size,
        schedule: &schedule,
        deterministic: p.deterministic,
        seed: p.seed,
        log_every: p.log_every,
    };
    let mut trainings: Vec<Training> = p
        .methods
        .iter()
        .map(|m| {
            let r = p.recipe(m);
            Training {
                name: m.clone(),
                config: shared(r.batch_size).config(
                    m,
                    r.method_config.clone(),
                    p.epochs,
                    r.optimizer.clone(),
                    input,
                ),
                headline_metric: Some(r.metric.clone()),
                // A method that cannot use the zoo's trunk gets a row saying why.
                optional: true,
            }
        })
        .collect();
    trainings.push(Training {
        name: "supervised".into(),
        config: shared(p.supervised_batch_size).config(
            "supervised",
            p.supervised_config.clone(),
            p.supervised_epochs,
            p.supervised_optimizer.clone(),
            input,
        ),
        headline_metric: Some("train_acc".into()),
        optional: false,
    });
    // Every method through its whole method (the cross-channel encoders convert RGB to
    // their Lab inputs themselves); the supervised trunk as an encoder.
    let mut encoders = vec![
        EncoderSpec {
            name: "random".into(),
            config: p.encoder.clone(),
            source: Source::Random { seed: p.seed, pytorch_legacy: false },
        },
        EncoderSpec {
            name: "supervised".into(),
            config: p.encoder.clone(),
            source: Source::Encoder { run: "supervised".into() },
        },
    ];
    encoders.extend(p.methods.iter().map(|m| EncoderSpec {
        name: m.clone(),
        config: p.encoder.clone(),
        source: Source::Method { run: m.clone(), trained: true, view: Value::Null },
    }));
    let names: Vec<String> = encoders.iter().map(|e| e.name.clone()).collect();
    let probes = probes(&names, &p.linear, &p.knn, &p.probe_seeds, p.probe_train_images);
    let best_linear = |enc: &str| {
        Cell::Max(TAPS.iter().map(|t| Cell::Mean(vec![at(enc, "linear", t)])).collect())
    };
    let time =
        |enc: &str| Cell::RunField { run: enc.into(), pointer: "/seconds".into(), scale: 1.0 };
    Ok(Plan {
        name: "zoo".into(),
        profile: p.name.clone(),
        summary: p.summary.clone(),
        settings: serde_json::to_value(&p)?,
        deterministic: p.deterministic,
        test_images: p.test_images,
        seed: p.seed,
        trainings,
        encoders,
        probes,
        report: report(&p, &names, input),
        charts: vec![layer_chart(&names)],
        scatters: vec![Scatter {
            file: "time.png".into(),
            title: "best-layer linear probe against pretraining time".into(),
            x_desc: "pretraining (s)".into(),
            y_desc: "best layer top-1 (%)".into(),
            points: p.methods.iter().map(|m| (m.clone(), time(m), best_linear(m))).collect(),
        }],
        probe_commands: format!(
            "The probes use the settings in `results.json` (`profile.linear`, `profile.knn`): \
             `selfsup eval --checkpoint runs/zoo/{0}/METHOD --protocol linear|knn --config \
             PROBE.json --seed S{1}` (`runs/zoo/{0}/supervised` for the supervised row, \
             `--random-init` for random init) draws the same labeled images.",
            p.name,
            p.probe_train_images.map_or(String::new(), |n| format!(" --train-images {n}")),
        ),
        artifacts: Vec::new(),
    })
}

fn report(p: &Profile, names: &[String], input: &PlanInput) -> Report {
    let mut columns = vec![text_col("Method", "method")];
    columns.extend(TAPS.iter().map(|t| num_col(t, t)));
    columns.extend([
        num_col("kNN (best tap)", "knn_best"),
        text_col("Pretext metric", "pretext_metric"),
        num_col("Pretext (last epoch)", "pretext"),
        num_col("Pretraining (s)", "seconds"),
        num_col("Images seen", "images_seen"),
    ]);
    let rows: Vec<Vec<Cell>> = names
        .iter()
        .map(|enc| {
            let mut r = vec![match enc.as_str() {
                "random" => Cell::Text("random init".into()),
                "supervised" => Cell::Text("supervised (labels of the same images)".into()),
                m => Cell::RunName { run: m.into(), text: m.into() },
            }];
            r.extend(TAPS.iter().map(|t| Cell::Spread(vec![at(enc, "linear", t)])));
            r.push(Cell::Max(TAPS.iter().map(|t| Cell::Mean(vec![at(enc, "knn", t)])).collect()));
            if enc == "random" {
                r.extend((0..4).map(|_| Cell::Text("–".into())));
                return r;
            }
            let (metric, scale, batch) = if enc == "supervised" {
                ("train_acc".to_string(), 100.0, p.supervised_batch_size)
            } else {
                let rc = p.recipe(enc);
                (rc.metric, rc.scale, rc.batch_size)
            };
            r.push(Cell::Code(if scale == 100.0 {
                format!("{metric} (%)")
            } else {
                metric.clone()
            }));
            r.push(Cell::RunMetric { run: enc.clone(), key: metric, scale });
            r.push(Cell::RunField { run: enc.clone(), pointer: "/seconds".into(), scale: 1.0 });
            r.push(Cell::RunField {
                run: enc.clone(),
                pointer: "/summary/global_step".into(),
                scale: batch as f64,
            });
            r
        })
        .collect();
    let enc_name = serde_json::to_string(&p.encoder).unwrap_or_default();
    let mut sections = vec![
        Section::Text(format!(
            "{}. Trunk `{enc_name}` for every method; each pretrains {} epochs on {} images \
             from seed {} with its own recipe (configs in `configs/`; `profile.recipes` in \
             `results.json`) and a cosine schedule; the supervised trunk {} epochs on the \
             labels of the same images. Device {}. Linear probes on every tap average-pooled to \
             about 9,000 dimensions and standardised, {} epochs; kNN (k = {}, T = {}) on every \
             tap globally pooled, the best tap's shown. Test top-1 (%), mean ± std over probe \
             seeds {:?}, each drawing its own {} labeled images. Images seen: optimizer steps \
             × batch.",
            p.summary,
            p.epochs,
            p.train_images.map_or("all".to_string(), |n| n.to_string()),
            p.seed,
            p.supervised_epochs,
            input.device,
            p.linear.epochs,
            p.knn.k,
            p.knn.temperature,
            p.probe_seeds,
            p.probe_train_images.map_or("all".to_string(), |n| n.to_string()),
        )),
        Section::Table(Table { key: "layers".into(), columns, rows }),
        Section::Text(
            "The seed's ImageNet table (Zhang et al. 2017 layout; full-width AlexNet, linear \
             probes, top-1 %) for the rows it has, and the rank correlation (Spearman's ρ) \
             between our column and the seed's over those rows: another dataset and scale, so \
             compare the orderings, not the figures."
                .into(),
        ),
    ];
    let seeded: Vec<(&String, (&str, [f64; 5]))> =
        names.iter().filter_map(|n| seed_row(n).map(|r| (n, r))).collect();
    let mut columns = vec![text_col("Row", "row"), text_col("Dataset", "dataset")];
    columns.extend(TAPS.iter().map(|t| num_col(t, t)));
    let mut rows: Vec<Vec<Cell>> = seeded
        .iter()
        .map(|(_, (label, top1))| {
            let mut r = vec![Cell::Text(label.to_string()), Cell::Text("ImageNet".into())];
            r.extend(top1.iter().map(|&x| Cell::Figure(Some(x))));
            r
        })
        .collect();
    let mut rho = vec![Cell::Text("ρ (ours vs the seed)".into()), Cell::Text(String::new())];
    rho.extend(TAPS.iter().enumerate().map(|(i, t)| {
        Cell::Spearman(
            seeded
                .iter()
                .map(|(enc, (_, top1))| (Cell::Mean(vec![at(enc, "linear", t)]), top1[i]))
                .collect(),
        )
    }));
    rows.push(rho);
    sections.push(Section::Table(Table { key: "seed".into(), columns, rows }));
    sections.push(Section::Text("## Findings".into()));
    sections.push(Section::Findings(
        p.methods
            .iter()
            .map(|m| Finding {
                claim: format!("{m} ahead of random init at its best layer (linear probe)"),
                paper: if seed_row(m).is_some() { "yes (ImageNet)" } else { "–" }.into(),
                test: Test::AtBest(per_tap(m, "random")),
            })
            .collect(),
    ));
    sections.push(Section::Command);
    Report { title: format!("The zoo on {}, profile `{}`", input.dataset, p.name), sections }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(profile: &str, sets: &[&str]) -> PlanInput {
        PlanInput::for_test("zoo", profile, sets)
    }

    #[test]
    fn every_recipe_is_of_a_registered_method_the_registry_accepts() {
        let registry = selfsup_methods::registry();
        let registered = registry.names();
        for m in METHODS {
            assert!(registered.contains(&m), "a zoo recipe for `{m}`, which is not registered");
        }
        for profile in ["smoke", "cpu", "paper"] {
            let plan = plan(&input(profile, &[])).unwrap();
            plan.validate().unwrap();
            assert_eq!(plan.trainings.len(), METHODS.len() + 1);
            assert_eq!(plan.encoders.len(), METHODS.len() + 2);
            for t in &plan.trainings {
                // One trunk, one budget, one seed.
                assert_eq!(t.config.encoder, plan.trainings[0].config.encoder);
                assert_eq!(t.config.data, plan.trainings[0].config.data);
                assert_eq!(t.config.seed, plan.trainings[0].config.seed);
                if t.name != "supervised" {
                    assert_eq!(t.config.train.epochs, plan.trainings[0].config.train.epochs);
                    let entry = registry.get(&t.config.method).unwrap();
                    let mut full = (entry.default_config)();
                    selfsup_core::config::merge(&mut full, &t.config.method_config);
                    let keys =
                        |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
                    assert_eq!(keys(&full), keys(&(entry.default_config)()), "{}", t.name);
                }
            }
        }
    }

    #[test]
    fn methods_can_be_listed_and_unknown_ones_fall_back() {
        let plan = plan(&input("cpu", &[r#"methods=["rotnet","jigsaw"]"#])).unwrap();
        let names: Vec<&str> = plan.trainings.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["rotnet", "jigsaw", "supervised"]);
        let p = Profile::resolve("cpu", &[r#"methods=["my-method"]"#.into()], &[]).unwrap();
        assert_eq!(p.recipe("my-method"), Recipe::fallback());
        assert!(Profile::resolve("cpu", &["methods=[]".into()], &[]).is_err());
        // By default the registry's methods, less the supervised baseline, in its order; a
        // method without a recipe among them trains with the fallback.
        let reg: Vec<String> = ["rotnet", "my-method", "supervised"].map(String::from).to_vec();
        let p = Profile::resolve("cpu", &[], &reg).unwrap();
        assert_eq!(p.methods, ["rotnet", "my-method"]);
        let twice = super::plan(&input("cpu", &[r#"methods=["moco","moco"]"#]));
        assert!(twice.unwrap_err().to_string().contains("`moco` twice"));
        let base = super::plan(&input("cpu", &[r#"methods=["random"]"#]));
        assert!(base.unwrap_err().to_string().contains("baseline"));
    }

    #[test]
    fn the_seed_rows_are_the_seed_table() {
        assert_eq!(seed_row("jigsaw").unwrap().1, [18.2, 28.8, 34.0, 33.9, 27.1]);
        assert_eq!(seed_row("relative-patch").unwrap().1[0], 16.2);
        assert_eq!(seed_row("split-brain").unwrap().1[4], 32.8);
        assert_eq!(seed_row("supervised").unwrap().1, [19.3, 36.3, 44.2, 48.3, 50.5]);
        assert_eq!(seed_row("random").unwrap().1, [11.6, 17.1, 16.9, 16.3, 14.1]);
        assert!(seed_row("simclr").is_none());
    }
}
