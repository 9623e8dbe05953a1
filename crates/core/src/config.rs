//! Run configuration: one JSON document (serde) with documented defaults, `--set key=value`
//! overrides, and unknown keys rejected by name. The resolved config is saved as `config.json`
//! in every run folder, and `selfsup train --config` accepts that file back.
use crate::determinism::Tf32;
use crate::encoders::EncoderConfig;
use crate::optim::OptimizerConfig;
use crate::precision::Precision;
use crate::registry::Registry;
use crate::schedule::ScheduleConfig;
use crate::{CoreError, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Everything that defines a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Registry name of the pretext method. Default `""` (must be given).
    #[serde(default)]
    pub method: String,
    /// The one seed of the run: weight init, data order, augmentations. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// `auto`, `cpu` or `cuda:N`. Default `auto`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Training data.
    #[serde(default)]
    pub data: DataConfig,
    /// The encoder the method trains. Default: the tiny test net.
    #[serde(default)]
    pub encoder: EncoderConfig,
    /// Optimisation settings.
    #[serde(default)]
    pub train: TrainConfig,
    /// The method's own settings; missing keys take the method's defaults
    /// (`selfsup methods` prints them).
    #[serde(default)]
    pub method_config: Value,
}

fn default_device() -> String {
    "auto".into()
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            method: String::new(),
            seed: 0,
            device: default_device(),
            data: DataConfig::default(),
            encoder: EncoderConfig::default(),
            train: TrainConfig::default(),
            method_config: Value::Object(Default::default()),
        }
    }
}

/// Where the training images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset spec as `selfsup_data::open_dataset` takes it (`cifar10`, `stl10`,
    /// `folder:PATH`, `synthetic:N:SIZE`, ...). Default `cifar10`.
    #[serde(default = "default_dataset")]
    pub dataset: String,
    /// Split to train on. Default `train`.
    #[serde(default = "default_split")]
    pub split: selfsup_data::Split,
    /// Data folder; when absent: `$SELFSUP_DATA`, then `datasets/`. Default none.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Train on the first `max_images` images of a seeded permutation. Default: all.
    #[serde(default)]
    pub max_images: Option<usize>,
}

fn default_dataset() -> String {
    "cifar10".into()
}

fn default_split() -> selfsup_data::Split {
    selfsup_data::Split::Train
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: default_dataset(),
            split: default_split(),
            data_dir: None,
            max_images: None,
        }
    }
}

/// Optimisation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Epochs. Default 1.
    #[serde(default = "default_epochs")]
    pub epochs: u64,
    /// Source images per step (a method may turn each into several inputs). Default 128.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The optimizer. Default SGD lr 0.1, momentum 0.9.
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule. Default constant.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Clip the global gradient norm to this value. Default none.
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// `fp32` or `bf16` (autocast on CUDA, and on CPUs with AMX/AVX512-BF16). Default `fp32`.
    #[serde(default)]
    pub precision: Precision,
    /// Channels-last memory format for weights and inputs. Default false.
    #[serde(default)]
    pub channels_last: bool,
    /// In a data-parallel job, synchronise batch norm across the ranks (`nn.SyncBatchNorm`):
    /// in training every BN layer normalises with the statistics of the whole global batch,
    /// so N ranks at `batch_size / N` each compute what one process computes at `batch_size`.
    /// Costs a small differentiable all-gather per BN layer in forward and one in backward.
    /// Ignored outside a job. Default false: each rank normalises its own shard, as DDP without
    /// SyncBN (MoCo's shuffling BN relies on that). Written to saved configs only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync_batch_norm: bool,
    /// In a data-parallel job, the gradients travel in buckets of about this many MiB, each
    /// bucket's all-reduce started from backward's gradient hooks as soon as its gradients are
    /// there, so that communication overlaps the rest of backward (DDP's `bucket_cap_mb`; see
    /// `selfsup_dist::GradReducer`); 0 sends every gradient in one message after backward. The
    /// averaged gradients are the same either way, bit for bit. Ignored outside a job.
    /// Default 25 (DDP's). Written to saved configs only when not the default.
    #[serde(default = "default_bucket_mb", skip_serializing_if = "is_default_bucket_mb")]
    pub bucket_mb: f64,
    /// Allow `--resume` of a checkpoint written by a job of another world size (one process
    /// included). `batch_size` stays the global batch and the learning rate stays as
    /// configured, each rank now training on `batch_size / N`: nothing needs rescaling. What
    /// changes is which rank draws which in-step random choices and, without
    /// `sync_batch_norm`, how many images each batch norm normalises over. May be set for the
    /// resume alone. Default false: such a resume is refused. Written only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_world_size_change: bool,
    /// Save a checkpoint every this many epochs (and always at the end). Default 1.
    #[serde(default = "default_one")]
    pub checkpoint_every: u64,
    /// Also save a checkpoint mid-epoch whenever this many minutes (wall clock) have passed
    /// since the last one, so that a pre-emption loses at most that much of a long epoch; the
    /// run resumes exactly there (the position in the epoch's order, the epoch's running
    /// metric means). 0 turns them off. Default 10.
    #[serde(default = "default_checkpoint_minutes")]
    pub checkpoint_minutes: f64,
    /// Keep this many epoch-end checkpoints, the newest, as `epochs/epoch-NNNN/` in the run
    /// folder for later evaluation (`selfsup eval --checkpoint RUN/epochs/epoch-0005`). They are
    /// hard links to the checkpoint's files, which are never rewritten in place, so they cost
    /// no space until the run moves on. 0 keeps none (the run's `checkpoint/` is always kept).
    /// Default 1: the last epoch.
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
    /// Write a `metrics.jsonl` line every this many steps. Default 50. Also how often the host
    /// reads the loss and metrics back from the device (and checks the loss for NaN): a value
    /// of 1 makes the host wait for a GPU at every step.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Threads for libtorch and augmentation; 0 = all cores. Default 0.
    #[serde(default)]
    pub threads: usize,
    /// Batches prepared ahead by the loader. Default 2.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Stop (with a checkpoint) after this many steps in total; for tests. Default none.
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Bit-for-bit identical results on the CPU whatever the thread count, at some cost in
    /// speed (see [`crate::determinism`]). Default true.
    #[serde(default = "default_true")]
    pub deterministic: bool,
    /// Where CUDA multiplies fp32 tensors as TF32: `"convolutions"` (cuDNN's, not cuBLAS's
    /// matmuls: PyTorch's default), `"off"` (fp32 everywhere) or `"all"` (see
    /// [`crate::determinism`]). No effect on the CPU. Default `"convolutions"`; written only
    /// when not the default.
    #[serde(default, skip_serializing_if = "Tf32::is_default")]
    pub tf32: Tf32,
}

fn default_true() -> bool {
    true
}

fn default_epochs() -> u64 {
    1
}
fn default_batch_size() -> usize {
    128
}
fn default_optimizer() -> OptimizerConfig {
    OptimizerConfig::Sgd {
        lr: 0.1,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
        exclude_bias_and_norm: false,
    }
}
fn default_one() -> u64 {
    1
}
fn default_checkpoint_minutes() -> f64 {
    10.0
}

fn default_keep_checkpoints() -> usize {
    1
}

fn default_log_every() -> u64 {
    50
}
fn default_bucket_mb() -> f64 {
    25.0
}

fn is_default_bucket_mb(v: &f64) -> bool {
    *v == default_bucket_mb()
}

fn default_prefetch() -> usize {
    2
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: default_epochs(),
            batch_size: default_batch_size(),
            optimizer: default_optimizer(),
            schedule: ScheduleConfig::default(),
            grad_clip: None,
            precision: Precision::default(),
            channels_last: false,
            sync_batch_norm: false,
            bucket_mb: default_bucket_mb(),
            allow_world_size_change: false,
            checkpoint_every: 1,
            checkpoint_minutes: default_checkpoint_minutes(),
            keep_checkpoints: default_keep_checkpoints(),
            log_every: default_log_every(),
            threads: 0,
            prefetch: default_prefetch(),
            max_steps: None,
            deterministic: true,
            tf32: Tf32::default(),
        }
    }
}

/// Merges `over` into `base`: objects key by key (recursively), anything else replaced. An
/// object naming another `kind` than `base`'s (an encoder, optimizer or schedule of another
/// type) replaces it whole: the old kind's fields would not belong to the new one.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o))
            if o.get("kind").is_none_or(|k| b.get("kind").is_none_or(|bk| bk == k)) =>
        {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Applies one `key.path=value` override. The value is parsed as JSON when it is valid JSON
/// (`0.1`, `true`, `[60,120]`, `{"kind":"cosine"}`), else taken as a string.
pub fn apply_override(root: &mut Value, assignment: &str) -> Result<()> {
    let (key, raw) = assignment.split_once('=').ok_or_else(|| {
        CoreError::Config(format!("override `{assignment}` is not of the form key=value"))
    })?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(CoreError::Config(format!("override `{assignment}` has an empty key")));
    }
    let value: Value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
    let mut slot = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let obj = match slot {
            Value::Object(m) => m,
            Value::Null => {
                *slot = Value::Object(Default::default());
                slot.as_object_mut().expect("just set")
            }
            _ => {
                return Err(CoreError::Config(format!(
                    "override `{key}`: `{}` is not an object",
                    parts[..i].join(".")
                )))
            }
        };
        if i + 1 == parts.len() {
            obj.insert(part.to_string(), value);
            return Ok(());
        }
        slot = obj.entry(part.to_string()).or_insert(Value::Null);
    }
    unreachable!("loop returns at the last part")
}

/// Whether two `data.data_dir` values name the same folder, each resolved as the trainer
/// resolves it (`None`: `$SELFSUP_DATA`, else `datasets/`) and compared after resolving links
/// and relative paths. Where the data lives is not part of a run: `/srv/shared/datasets`
/// and `../shared/datasets` seen from `/srv/selfsup` are the same folder, so the same run.
pub fn same_data_folder(a: Option<&Path>, b: Option<&Path>) -> bool {
    let resolve = |p: Option<&Path>| {
        let dir = selfsup_data::resolve_data_dir(p);
        dir.canonicalize().unwrap_or_else(|_| {
            // A folder that is not there (yet): absolute and `..`-free by the letter.
            let abs = std::env::current_dir().map(|c| c.join(&dir)).unwrap_or(dir);
            let mut out = PathBuf::new();
            for c in abs.components() {
                match c {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => out.push(other),
                }
            }
            out
        })
    };
    resolve(a) == resolve(b)
}

/// Reads a JSON config file.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| CoreError::Config(format!("{}: invalid JSON: {e}", path.display())))
}

/// Deserializes `T` from a JSON value, naming the path of the offending key in errors
/// (`train.optimizer.lr: invalid type ...`, `unknown field `lrr``), prefixed by `what` unless
/// it is empty.
pub fn from_value<T: serde::de::DeserializeOwned>(value: &Value, what: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match (what.is_empty(), path == "." || path.is_empty()) {
            (true, true) => CoreError::Config(inner.to_string()),
            (true, false) => CoreError::Config(format!("{path}: {inner}")),
            (false, true) => CoreError::Config(format!("{what}: {inner}")),
            (false, false) => CoreError::Config(format!("{what}.{path}: {inner}")),
        }
    })
}

impl RunConfig {
    /// Resolves a run config: the defaults, then `file` (a JSON object, e.g. an earlier run's
    /// `config.json`), then each `key=value` of `sets`, then `method` if given; the method's
    /// default `method_config` fills the keys not given. Unknown keys anywhere are errors that
    /// name the key.
    pub fn resolve(
        registry: &Registry,
        file: Option<&Value>,
        sets: &[String],
        method: Option<&str>,
    ) -> Result<RunConfig> {
        let mut v = serde_json::to_value(RunConfig::default()).expect("config serializes");
        if let Some(f) = file {
            if !f.is_object() {
                return Err(CoreError::Config("config file must hold a JSON object".into()));
            }
            merge(&mut v, f);
        }
        for s in sets {
            apply_override(&mut v, s)?;
        }
        if let Some(m) = method {
            v["method"] = Value::String(m.to_string());
        }
        let name = v["method"].as_str().unwrap_or_default().to_string();
        if name.is_empty() {
            return Err(CoreError::Config("no method given (--method NAME)".into()));
        }
        let entry = registry.get(&name)?;
        let mut mc = (entry.default_config)();
        merge(&mut mc, &v["method_config"]);
        v["method_config"] = mc;
        let cfg: RunConfig = from_value(&v, "")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that types cannot.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        if t.batch_size == 0 {
            return Err(CoreError::Config("train.batch_size must be at least 1".into()));
        }
        if t.epochs == 0 {
            return Err(CoreError::Config("train.epochs must be at least 1".into()));
        }
        if !(t.checkpoint_minutes.is_finite() && t.checkpoint_minutes >= 0.0) {
            return Err(CoreError::Config(format!(
                "train.checkpoint_minutes = {} must be a finite number >= 0 (0: off)",
                t.checkpoint_minutes
            )));
        }
        if !(t.bucket_mb.is_finite() && t.bucket_mb >= 0.0) {
            return Err(CoreError::Config(format!(
                "train.bucket_mb = {} must be a finite number >= 0 (0: one message after \
                 backward)",
                t.bucket_mb
            )));
        }
        if t.checkpoint_every == 0 || t.log_every == 0 {
            return Err(CoreError::Config(
                "train.checkpoint_every and train.log_every must be at least 1".into(),
            ));
        }
        let lr = t.optimizer.lr();
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(CoreError::Config(format!("train.optimizer.lr = {lr} is not a rate")));
        }
        if let Some(c) = t.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(CoreError::Config(format!("train.grad_clip = {c} must be > 0")));
            }
        }
        crate::device::parse_device(&self.device).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_object_of_another_kind_replaces_the_default_whole() {
        let mut v = serde_json::to_value(RunConfig::default()).unwrap();
        merge(
            &mut v,
            &json!({
                "encoder": {"kind": "resnet18", "stem": "cifar"},
                "train": {"optimizer": {"kind": "adamw", "lr": 0.001}, "batch_size": 32},
            }),
        );
        assert_eq!(v["encoder"], json!({"kind": "resnet18", "stem": "cifar"}));
        assert_eq!(v["train"]["optimizer"]["kind"], "adamw");
        assert!(v["train"]["optimizer"].get("nesterov").is_none());
        assert_eq!(v["train"]["batch_size"], 32);
        // The same kind, or no kind, merges key by key.
        let before = v["encoder"].clone();
        merge(&mut v, &json!({"encoder": {"stem": "imagenet"}}));
        assert_eq!(v["encoder"], json!({"kind": "resnet18", "stem": "imagenet"}));
        merge(&mut v, &json!({"encoder": {"kind": "resnet18", "stem": "cifar"}}));
        assert_eq!(v["encoder"], before);
        let cfg: RunConfig = from_value(&v, "").unwrap();
        assert!(matches!(cfg.encoder, EncoderConfig::Resnet18 { .. }));
    }

    /// A config written to a file and read back is the same config to the last bit: the
    /// reproductions compare saved configs with the ones a profile gives, and `selfsup train
    /// --config` of a saved config must train the same run (serde_json's default float parser
    /// is off by an ulp on some 17-digit numbers, such as the f32 CIFAR std 0.2470588...).
    #[test]
    fn floats_survive_a_text_round_trip_exactly() {
        let cfg = RunConfig {
            method_config: json!({"std": [0.24705882370471954f64, f64::from(0.2470588f32)]}),
            ..RunConfig::default()
        };
        let text = serde_json::to_string(&cfg).unwrap();
        let back: RunConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back.method_config, cfg.method_config);
        let x: f64 = serde_json::from_str("0.24705882370471954").unwrap();
        assert_eq!(x.to_bits(), 0.24705882370471954f64.to_bits());
    }

    #[test]
    fn overrides_set_nested_values() {
        let mut v = json!({"train": {"epochs": 1}});
        apply_override(&mut v, "train.epochs=5").unwrap();
        apply_override(&mut v, "train.schedule={\"kind\":\"steps\",\"milestones\":[2]}").unwrap();
        apply_override(&mut v, "data.dataset=synthetic:64:32").unwrap();
        assert_eq!(v["train"]["epochs"], json!(5));
        assert_eq!(v["train"]["schedule"]["milestones"], json!([2]));
        assert_eq!(v["data"]["dataset"], json!("synthetic:64:32"));
        assert!(apply_override(&mut v, "train.epochs").is_err());
        let err = apply_override(&mut v, "train.epochs.x=1").unwrap_err().to_string();
        assert!(err.contains("train.epochs"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let v = json!({"train": {"epochs": 2, "lerning_rate": 0.1}});
        let err = from_value::<RunConfig>(&v, "config").unwrap_err().to_string();
        assert!(err.contains("lerning_rate"), "{err}");
        assert!(err.contains("train"), "{err}");
        let v = json!({"train": {"optimizer": {"kind": "sgd", "lr": "fast"}}});
        let err = from_value::<RunConfig>(&v, "config").unwrap_err().to_string();
        assert!(err.contains("train.optimizer"), "{err}");
    }

    #[test]
    fn defaults_round_trip() {
        let c = RunConfig::default();
        let v = serde_json::to_value(&c).unwrap();
        let back: RunConfig = from_value(&v, "config").unwrap();
        assert_eq!(back, c);
    }
}
