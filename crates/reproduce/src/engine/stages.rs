//! The engine's two kinds of stage, training and probing, each skipped when its result exists
//! and was made under the settings the plan gives now.
use super::files::{
    ensure_probe_matches, ensure_trained_with, finished_probe, read_json, write_json, Log,
};
use super::plan::{EncoderSpec, Labeled, Plan, ProbeSpec, Protocol, Source, Training};
use super::{subset, Env};
use anyhow::{anyhow, Context, Result};
use selfsup_core::trainer::{train, TrainOptions};
use selfsup_core::{checkpoint, Encoder, PretextMethod, Registry};
use selfsup_data::ImageDataset;
use selfsup_eval::EvalReport;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The state of one invocation's stages.
pub(super) struct Stages<'a> {
    pub plan: &'a Plan,
    pub env: &'a Env,
    pub registry: &'a Registry,
    pub run_root: PathBuf,
    pub log: Log,
    /// `{stage, skipped, seconds}` of every stage, in order.
    pub records: Vec<Value>,
    pub full_train: ImageDataset,
    pub test_set: ImageDataset,
}

impl Stages<'_> {
    /// The images a training trains on: the seeded subset its config's `data.max_images`
    /// gives (the trainer's own draw).
    fn training_set(&self, t: &Training) -> ImageDataset {
        subset(&self.full_train, t.config.data.max_images, t.config.seed, "max_images")
    }

    /// Trains `t` unless its `done.json` exists; resumes an interrupted run from its
    /// checkpoint. Returns `done.json`: `{summary, seconds, last_epoch}`.
    pub fn train(&mut self, t: &Training) -> Result<Value> {
        let name = &t.name;
        let dir = self.run_root.join(name);
        let done = dir.join("done.json");
        if done.exists() {
            ensure_trained_with(&dir, &t.config, &self.plan.profile)?;
            self.log.line(&format!("[skip] train {name}: {} exists", done.display()));
            let v = read_json(&done)?;
            self.records.push(json!({"stage": format!("train {name}"), "skipped": true,
                "seconds": v["seconds"]}));
            return Ok(v);
        }
        if t.optional {
            let images = self.training_set(t);
            let cpu = tch::Device::Cpu;
            if let Err(e) =
                selfsup_core::trainer::build_method(&t.config, self.registry, &images, cpu)
            {
                let why = e.to_string();
                self.log.line(&format!(
                    "[unusable] train {name}: `{}` cannot use this trunk: {why}",
                    t.config.method
                ));
                self.records.push(json!({"stage": format!("train {name}"), "skipped": true,
                    "seconds": 0.0, "unusable": why}));
                return Ok(json!({ "unusable": why }));
            }
        }
        // The probes of this training's encoders read the weights it is about to write: a
        // report left from an earlier run of it (a run folder deleted by hand) is stale.
        for e in self.plan.encoders.iter().filter(|e| e.source.run() == Some(name.as_str())) {
            let stale = self.run_root.join("probes").join(&e.name);
            if stale.exists() {
                std::fs::remove_dir_all(&stale)
                    .with_context(|| format!("removing stale probes {}", stale.display()))?;
                self.log.line(&format!(
                    "[stale] removed {}: the probes of `{}` read `{name}`, trained anew",
                    stale.display(),
                    e.name
                ));
            }
        }
        let resume = checkpoint::exists(&dir);
        let images = self.training_set(t);
        self.log.line(&format!(
            "[train] {name}: {} {} epochs on {} images{}",
            t.config.method,
            t.config.train.epochs,
            images.len(),
            if resume { " (resuming from its checkpoint)" } else { "" }
        ));
        let start = Instant::now();
        let mut opts = TrainOptions {
            resume,
            progress: true,
            dataset: Some(images),
            // SIGINT / SIGTERM: the training writes a checkpoint and stops; re-running the
            // reproduction resumes it.
            handle_signals: true,
            ..TrainOptions::default()
        };
        let summary = train(&t.config, self.registry, &dir, &mut opts)
            .with_context(|| format!("training {name} in {}", dir.display()))?;
        let seconds = start.elapsed().as_secs_f64();
        let last = last_epoch_line(&dir.join("metrics.jsonl"))?;
        let v = json!({"summary": summary, "seconds": seconds, "last_epoch": last});
        write_json(&done, &v)?;
        let headline = match &t.headline_metric {
            Some(k) => format!("{k} {}", last[k]),
            None => format!("loss {:.4}", summary.last_epoch_loss),
        };
        self.log.line(&format!(
            "[done] train {name}: {seconds:.0} s, {:.0} inputs/s, last epoch {headline}",
            summary.inputs_per_second
        ));
        self.records.push(json!({"stage": format!("train {name}"), "skipped": false,
            "seconds": seconds}));
        Ok(v)
    }

    /// Runs probe `p` at `seed` unless its report exists (and matches); returns the report.
    pub fn probe(
        &mut self,
        p: &ProbeSpec,
        seed: u64,
        cache: &mut EncoderCache,
    ) -> Result<EvalReport> {
        let dir = if seed == 0 { p.name.clone() } else { format!("{}_seed{seed}", p.name) };
        let out = self.run_root.join("probes").join(&p.encoder).join(dir);
        let file = out.join("eval").join(format!("{}.json", p.protocol.file_name()));
        let stage = format!("probe {} {} seed {seed}", p.name, p.encoder);
        let spec = self.plan.encoder(&p.encoder).expect("validated plan");
        let train = match p.labeled {
            Labeled::Subset { images } => subset(&self.full_train, images, seed, "max_images"),
            Labeled::Full => self.full_train.clone(),
        };
        let settings = p.protocol.settings()?;
        let (profile, sets) = (&self.plan.profile, (&train, &self.test_set));
        let finished = finished_probe(&mut self.log, &mut self.records, &stage, &file, |r| {
            ensure_probe_matches(&file, r, &settings, &spec.config, seed, sets, profile)
        })?;
        if let Some(r) = finished {
            return Ok(r);
        }
        self.log.line(&format!("[probe] {} on {}, seed {seed}", p.name, p.encoder));
        let loaded = cache.get(self, spec)?;
        let device = self.env.device;
        let test = &self.test_set;
        let mut report = match &p.protocol {
            Protocol::Linear(c) => {
                selfsup_eval::linear_probe(loaded.encoder(), device, &train, test, c, seed)?
            }
            Protocol::Nonlinear(c) => {
                selfsup_eval::nonlinear_probe(loaded.encoder(), device, &train, test, c, seed)?
            }
            Protocol::Knn(c) => {
                selfsup_eval::knn_probe(loaded.encoder(), device, &train, test, c, seed)?
            }
            Protocol::KnnEmbedding(c) => {
                let method = loaded.method(&p.encoder)?;
                let mut embed = |x: &tch::Tensor| {
                    method.embedding_t(x).ok_or_else(|| {
                        selfsup_eval::EvalError::Config(format!(
                            "method `{}` has no embedding to probe",
                            method.name()
                        ))
                    })
                };
                selfsup_eval::knn_probe_embedding(
                    &mut embed,
                    "embedding",
                    device,
                    &train,
                    test,
                    c,
                    seed,
                )?
            }
            Protocol::Fewshot(c) => {
                selfsup_eval::fewshot(loaded.encoder(), loaded.vs(), &train, test, c, seed)?
            }
            Protocol::EndToEnd(c) => {
                let method = loaded.method(&p.encoder)?;
                let mut c = c.clone();
                if c.normalization.is_none() {
                    c.normalization = method.input_normalization().map(Into::into);
                }
                let mut logits = |x: &tch::Tensor| {
                    method.class_logits_t(x).ok_or_else(|| {
                        selfsup_eval::EvalError::Config(format!(
                            "method `{}` does not classify: it has no end-to-end accuracy",
                            method.name()
                        ))
                    })
                };
                selfsup_eval::end_to_end(&mut logits, device, &train, test, &c, seed)?
            }
        };
        report.encoder = Some(serde_json::to_value(&spec.config)?);
        report.checkpoint = Some(p.encoder.clone());
        report.write(&out)?;
        for r in &report.rows {
            let row = if matches!(p.protocol, Protocol::Fewshot(_)) { &r.variant } else { &r.tap };
            self.log.line(&format!("        {} {} {row}: top-1 {:.2}%", p.encoder, p.name, r.top1));
        }
        self.records.push(json!({"stage": stage, "skipped": false, "seconds": report.seconds}));
        Ok(report)
    }
}

/// An encoder, or a whole method, with the var store holding its variables.
pub(super) enum Loaded {
    Encoder(tch::nn::VarStore, Box<dyn Encoder>),
    Method(tch::nn::VarStore, Box<dyn PretextMethod>),
}

impl Loaded {
    fn encoder(&self) -> &dyn Encoder {
        match self {
            Loaded::Encoder(_, e) => &**e,
            Loaded::Method(_, m) => m.encoder(),
        }
    }

    fn vs(&self) -> &tch::nn::VarStore {
        match self {
            Loaded::Encoder(vs, _) | Loaded::Method(vs, _) => vs,
        }
    }

    fn method(&self, name: &str) -> Result<&dyn PretextMethod> {
        match self {
            Loaded::Method(_, m) => Ok(&**m),
            Loaded::Encoder(..) => Err(anyhow!("encoder `{name}` is not a whole method")),
        }
    }
}

/// The encoder of the probes that run now, kept while consecutive probes read it.
#[derive(Default)]
pub(super) struct EncoderCache {
    name: String,
    held: Option<Loaded>,
}

impl EncoderCache {
    fn get(&mut self, st: &Stages, spec: &EncoderSpec) -> Result<&Loaded> {
        if self.name != spec.name || self.held.is_none() {
            self.held = None;
            self.held =
                Some(load(st, spec).with_context(|| format!("loading encoder `{}`", spec.name))?);
            self.name = spec.name.clone();
        }
        Ok(self.held.as_ref().expect("just loaded"))
    }
}

fn load(st: &Stages, spec: &EncoderSpec) -> Result<Loaded> {
    let device = st.env.device;
    Ok(match &spec.source {
        Source::Encoder { run } => {
            let e = checkpoint::load_encoder(&st.run_root.join(run), device)?;
            Loaded::Encoder(e.vs, e.encoder)
        }
        Source::Method { run, trained, view } => {
            let t = st.plan.training(run).expect("validated plan");
            let images = st.training_set(t);
            let mut config = t.config.clone();
            if !view.is_null() {
                selfsup_core::config::merge(&mut config.method_config, view);
            }
            let (vs, method, _) =
                selfsup_core::trainer::build_method(&config, st.registry, &images, device)?;
            if *trained {
                let dir = st.run_root.join(run);
                let ck = checkpoint::load(&dir)?;
                let path = checkpoint::checkpoint_dir(&dir).join("model.safetensors");
                checkpoint::load_into(&vs, &ck.model, "", &path)?;
            }
            Loaded::Method(vs, method)
        }
        Source::Random { seed, pytorch_legacy } => {
            let channels = st.full_train.channels() as i64;
            let e = if *pytorch_legacy {
                selfsup_eval::baselines::random_encoder_pytorch_legacy(
                    &spec.config,
                    channels,
                    *seed,
                    device,
                )
            } else {
                selfsup_eval::baselines::random_encoder(&spec.config, channels, *seed, device)
            };
            Loaded::Encoder(e.vs, e.encoder)
        }
    })
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
