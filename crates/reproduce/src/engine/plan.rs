//! What a reproduction is, as data: named trainings, the encoders probed, the probes over them
//! and the report to print. A plan is built by a small function from a profile (see
//! `crate::plans`), serialised into `results/<plan>/<profile>/plan.json`, and run by
//! [`crate::engine::run`], which holds all the control flow.
use super::report::Report;
use selfsup_core::config::RunConfig;
use selfsup_core::EncoderConfig;
use selfsup_eval::NonLinearProbeConfig;
use selfsup_eval::{EndToEndConfig, FewShotConfig, KnnConfig, LinearProbeConfig};
use serde::Serialize;
use serde_json::Value;

/// One reproduction under one profile.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The reproduction's name: `selfsup reproduce <name>`, `runs/<name>/<profile>/`,
    /// `results/<name>/<profile>/`.
    pub name: String,
    /// The profile (`smoke`, `cpu`, `paper`).
    pub profile: String,
    /// One line on what the profile is for (the log's first line).
    pub summary: String,
    /// The resolved profile settings (`results.json`'s `profile`, `configs/profile.json`).
    pub settings: Value,
    /// Bit-for-bit CPU determinism of the probes (oneDNN off but for the
    /// convolutions, on fixed pieces of the batch); each training follows its own config.
    pub deterministic: bool,
    /// Test images scored by every probe: a seeded subset (stream `test_images`, seed
    /// `seed`); `None` is the whole test split.
    pub test_images: Option<usize>,
    /// Seed of the test subset and of the random-init encoders' default.
    pub seed: u64,
    /// The trainings, in order. A training's images are the seeded subset its config's
    /// `data.max_images` and `seed` give (the trainer's own draw).
    pub trainings: Vec<Training>,
    /// The encoders the probes read, by name.
    pub encoders: Vec<EncoderSpec>,
    /// The probes, in order (the engine keeps one encoder loaded at a time, so probes of one
    /// encoder belong together).
    pub probes: Vec<ProbeSpec>,
    /// `table.md` and the tables of `results.json`.
    pub report: Report,
    /// Charts of probe scores (PNG files in the results folder).
    pub charts: Vec<Chart>,
    /// The closing paragraph of `commands.md`: how the probes map to `selfsup eval`.
    pub probe_commands: String,
    /// Scatter plots of cells (PNG files in the results folder).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scatters: Vec<Scatter>,
    /// Files of the trainings copied into the results folder (sample grids).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
}

/// A file a training writes, copied into the results folder after the trainings: the last
/// (by name) of the files in `runs/<plan>/<profile>/<training>/<folder>/`, as `file`.
#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    /// The training.
    pub training: String,
    /// Its folder inside the run folder (`samples`).
    pub folder: String,
    /// The copy's path inside the results folder (`samples/pretrain.png`).
    pub file: String,
}

/// A training: `selfsup train --config configs/<name>.json --out runs/.../<name>`.
#[derive(Debug, Clone, Serialize)]
pub struct Training {
    /// Folder and config name.
    pub name: String,
    /// The run config.
    pub config: RunConfig,
    /// The last-epoch metric shown for this training in the log and `results.json` (e.g.
    /// `rotation_acc`); `None` shows the loss.
    pub headline_metric: Option<String>,
    /// Whether its method may refuse the plan's trunk (the zoo's methods, on one trunk for
    /// all): when building the method on this config fails, the engine records why
    /// (`{"unusable": reason}` in `results.json`'s `trainings`), skips the probes of the
    /// encoders read from it, and a [`super::report::Cell::RunName`] says so in its row,
    /// instead of failing the run. Other trainings fail the run on any error.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// An encoder the probes read.
#[derive(Debug, Clone, Serialize)]
pub struct EncoderSpec {
    /// The name probes and score references use (`probes/<name>/...`).
    pub name: String,
    /// Its architecture (recorded in every probe report and checked when a report is reused).
    pub config: EncoderConfig,
    /// Where its weights come from.
    pub source: Source,
}

/// Where an encoder's weights come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// The encoder of a training's final checkpoint.
    Encoder {
        /// The training.
        run: String,
    },
    /// A training's whole method (encoder and heads: what the embedding and end-to-end probes
    /// need): from its final checkpoint when `trained`, else freshly initialised under the
    /// training's seed (the random-init baseline of the same architecture).
    Method {
        /// The training.
        run: String,
        /// Load the checkpoint's weights.
        trained: bool,
        /// Keys merged over the training's `method_config` before the method is built: an
        /// evaluation-time view of the same weights (split-brain's `features: "l_to_ab"`
        /// probes one half). Must not change the method's variables. `null`: none.
        #[serde(default, skip_serializing_if = "Value::is_null")]
        view: Value,
    },
    /// A freshly initialised encoder: this project's init (He-normal convs, BN weight 1) or,
    /// with `pytorch_legacy`, PyTorch 0.3's (see `selfsup_eval::baselines`).
    Random {
        /// The seed of its weights.
        seed: u64,
        /// PyTorch 0.3's default initialisation.
        pytorch_legacy: bool,
    },
}

/// A probe of one encoder at one or more probe seeds. Its report is
/// `runs/<plan>/<profile>/probes/<encoder>/<name>[_seed<s>]/eval/<protocol>.json` (no suffix
/// for seed 0).
#[derive(Debug, Clone, Serialize)]
pub struct ProbeSpec {
    /// The encoder probed.
    pub encoder: String,
    /// The probe's name: its folder and the name score references use.
    pub name: String,
    /// The protocol and its settings.
    pub protocol: Protocol,
    /// Probe seeds: each draws its own labeled subset and the protocol's random choices.
    pub seeds: Vec<u64>,
    /// The labeled images.
    pub labeled: Labeled,
}

/// The labeled training images of a probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Labeled {
    /// A seeded subset of this many training images, drawn with the probe seed (stream
    /// `max_images`, the trainer's); `None` is all.
    Subset {
        /// Images.
        images: Option<usize>,
    },
    /// The whole training split (the few-label protocol draws its own budgets from it).
    Full,
}

/// A protocol of `selfsup_eval` with its settings.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", content = "settings", rename_all = "snake_case")]
pub enum Protocol {
    /// Logistic regression on frozen features.
    Linear(LinearProbeConfig),
    /// RotNet's non-linear (MLP or conv-block) probe on frozen features.
    Nonlinear(NonLinearProbeConfig),
    /// Weighted kNN on the encoder's pooled taps.
    Knn(KnnConfig),
    /// Weighted kNN on the method's embedding (`PretextMethod::embedding_t`; needs a
    /// [`Source::Method`] encoder).
    KnnEmbedding(KnnConfig),
    /// Few labels per class: frozen probes and fine-tuning.
    Fewshot(Box<FewShotConfig>),
    /// The method's own class scores (`PretextMethod::class_logits_t`; needs a
    /// [`Source::Method`] encoder).
    EndToEnd(EndToEndConfig),
}

impl Source {
    /// The training whose run folder this encoder is read from, if any.
    pub fn run(&self) -> Option<&str> {
        match self {
            Source::Encoder { run } | Source::Method { run, .. } => Some(run),
            Source::Random { .. } => None,
        }
    }
}

impl Protocol {
    /// The report's protocol name (its file name under `eval/`).
    pub fn file_name(&self) -> &'static str {
        match self {
            Protocol::Linear(_) => "linear",
            Protocol::Nonlinear(_) => "nonlinear",
            Protocol::Knn(_) | Protocol::KnnEmbedding(_) => "knn",
            Protocol::Fewshot(_) => "fewshot",
            Protocol::EndToEnd(_) => "end_to_end",
        }
    }

    /// The settings a report made by this protocol records (checked when it is reused).
    pub fn settings(&self) -> serde_json::Result<Value> {
        match self {
            Protocol::Linear(c) => serde_json::to_value(c),
            Protocol::Nonlinear(c) => serde_json::to_value(c),
            Protocol::Knn(c) => serde_json::to_value(c),
            Protocol::KnnEmbedding(c) => {
                let mut v = serde_json::to_value(c)?;
                v["taps"] = serde_json::json!(["embedding"]);
                Ok(v)
            }
            Protocol::Fewshot(c) => serde_json::to_value(c),
            Protocol::EndToEnd(c) => serde_json::to_value(c),
        }
    }

    /// Whether it needs the whole method rather than its encoder.
    pub fn needs_method(&self) -> bool {
        matches!(self, Protocol::KnnEmbedding(_) | Protocol::EndToEnd(_))
    }
}

/// A line chart of probe scores: one line per series over the x positions.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    /// PNG file name in the results folder.
    pub file: String,
    /// Caption.
    pub title: String,
    /// Labels of the x positions (`block 1`, ...).
    pub x_labels: Vec<String>,
    /// The series: a label and one cell per x position (its mean is plotted).
    pub series: Vec<(String, Vec<super::report::Cell>)>,
}

/// A scatter plot: one labelled point per entry, at the values of its two cells (best-layer
/// accuracy against pretraining seconds, say); a point missing either value is left out.
#[derive(Debug, Clone, Serialize)]
pub struct Scatter {
    /// PNG file name in the results folder.
    pub file: String,
    /// Caption.
    pub title: String,
    /// The x axis's description.
    pub x_desc: String,
    /// The y axis's description.
    pub y_desc: String,
    /// `(label, x, y)` of each point.
    pub points: Vec<(String, super::report::Cell, super::report::Cell)>,
}

impl Plan {
    /// Applies `selfsup reproduce --train-set train.KEY=VALUE` to every training's run config
    /// in order (e.g. the GPU's fast path: `train.deterministic=false`, `train.precision=bf16`,
    /// `train.channels_last=true`). An unknown key or a bad value fails with the override named.
    pub fn apply_train_sets(&mut self, sets: &[String]) -> anyhow::Result<()> {
        if sets.is_empty() {
            return Ok(());
        }
        for t in &mut self.trainings {
            let mut v = serde_json::to_value(&t.config)?;
            for kv in sets {
                selfsup_core::config::apply_override(&mut v, kv)
                    .map_err(|e| anyhow::anyhow!("--train-set {kv}: {e}"))?;
            }
            let config: RunConfig = serde_json::from_value(v)
                .map_err(|e| anyhow::anyhow!("--train-set {}: {e}", sets.join(" ")))?;
            config
                .validate()
                .map_err(|e| anyhow::anyhow!("--train-set {}: {e}", sets.join(" ")))?;
            t.config = config;
        }
        Ok(())
    }

    /// The training called `name`.
    pub fn training(&self, name: &str) -> Option<&Training> {
        self.trainings.iter().find(|t| t.name == name)
    }

    /// The encoder called `name`.
    pub fn encoder(&self, name: &str) -> Option<&EncoderSpec> {
        self.encoders.iter().find(|e| e.name == name)
    }

    /// Checks that every name the plan uses is defined once: trainings, encoders, the runs
    /// they load, the encoders probes read, probe seeds, and the scores the report cites.
    pub fn validate(&self) -> Result<(), String> {
        let dup = |names: Vec<&str>, what: &str| -> Result<(), String> {
            let mut seen = std::collections::HashSet::new();
            match names.into_iter().find(|n| !seen.insert(*n)) {
                Some(n) => Err(format!("plan `{}` defines {what} `{n}` twice", self.name)),
                None => Ok(()),
            }
        };
        dup(self.trainings.iter().map(|t| t.name.as_str()).collect(), "training")?;
        dup(self.encoders.iter().map(|e| e.name.as_str()).collect(), "encoder")?;
        dup(self.artifacts.iter().map(|a| a.file.as_str()).collect(), "artifact file")?;
        for a in &self.artifacts {
            if self.training(&a.training).is_none() {
                return Err(format!(
                    "plan `{}`: artifact `{}` comes from training `{}`, which the plan lacks",
                    self.name, a.file, a.training
                ));
            }
        }
        for e in &self.encoders {
            if let Source::Encoder { run } | Source::Method { run, .. } = &e.source {
                if self.training(run).is_none() {
                    return Err(format!(
                        "plan `{}`: encoder `{}` loads training `{run}`, which the plan lacks",
                        self.name, e.name
                    ));
                }
            }
        }
        let mut probes = std::collections::HashSet::new();
        for p in &self.probes {
            let Some(e) = self.encoder(&p.encoder) else {
                return Err(format!(
                    "plan `{}`: probe `{}` reads encoder `{}`, which the plan lacks",
                    self.name, p.name, p.encoder
                ));
            };
            if p.protocol.needs_method() && !matches!(e.source, Source::Method { .. }) {
                return Err(format!(
                    "plan `{}`: probe `{}` needs the whole method, but encoder `{}` is not a \
                     method source",
                    self.name, p.name, p.encoder
                ));
            }
            if p.seeds.is_empty() {
                return Err(format!(
                    "plan `{}`: probe `{}` of `{}` has no probe seed: give at least one",
                    self.name, p.name, p.encoder
                ));
            }
            if !probes.insert((p.encoder.as_str(), p.name.as_str())) {
                return Err(format!(
                    "plan `{}` defines probe `{}` of `{}` twice",
                    self.name, p.name, p.encoder
                ));
            }
        }
        let known =
            |r: &super::scores::ScoreRef| probes.contains(&(r.encoder.as_str(), r.probe.as_str()));
        let runs = |r: &str| self.training(r).is_some();
        self.report.check_refs(&known, &runs).map_err(|e| format!("plan `{}`: {e}", self.name))?;
        for c in &self.charts {
            for (_, cells) in &c.series {
                for cell in cells {
                    cell.check_refs(&known, &runs)
                        .map_err(|e| format!("plan `{}`, chart {}: {e}", self.name, c.file))?;
                }
            }
        }
        for sc in &self.scatters {
            for (_, x, y) in &sc.points {
                for cell in [x, y] {
                    cell.check_refs(&known, &runs)
                        .map_err(|e| format!("plan `{}`, chart {}: {e}", self.name, sc.file))?;
                }
            }
        }
        Ok(())
    }
}
