//! Few-label evaluation, as RotNet's semi-supervised CIFAR-10 table (Gidaris et al., ICLR 2018,
//! Table 4 / Figure 4): train with `K` labeled images per class (20, 100, 400, 1000, all) or a
//! fraction of the labels (1%, 10%), either on frozen features (the linear or the non-linear
//! probe on the subset) or by fine-tuning the whole encoder plus a linear head (batch norm in
//! train mode), and test on the full test split.
//!
//! Subsets are chosen by [`ImageDataset::labeled_subset_indices`]: stratified by class, seeded.
//! (The official code keeps the first `K` images of each class; with a seed of our choosing
//! the selection is equally reproducible and not tied to file order.) RotNet's few-label
//! configs visit 50,000 samples per epoch whatever `K`: set `epoch_size` in the sub-configs to
//! reproduce that.
//!
//! Fine-tuning changes the encoder's variables (and batch-norm statistics) while it runs; they
//! are saved before each fine-tuning run and restored after it, so every budget starts from the
//! same weights and the encoder is unchanged when [`fewshot`] returns.
use crate::features::{self, Augment, Extraction, Normalization};
use crate::linear::{
    default_lr, default_momentum, default_schedule, default_wd, train_linear, yes,
    LinearProbeConfig, ProbeScore,
};
use crate::nonlinear::{train_nonlinear, NonLinearProbeConfig};
use crate::probe::{eval_loop, train_loop, LoopSpec, Sgd};
use crate::report::{open_report, EvalReport, ResultRow};
use crate::{EvalError, Result};
use selfsup_core::encoders::affine;
use selfsup_core::schedule::ScheduleConfig;
use selfsup_core::Encoder;
use selfsup_data::{ImageDataset, LabeledSubset};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

/// How many labels to train with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelBudget {
    /// `K` images of each class (`{"per_class": 100}`).
    PerClass(usize),
    /// This fraction of each class, in `(0, 1]` (`{"fraction": 0.01}`).
    Fraction(f64),
    /// Every labeled training image (`"all"`).
    All,
}

impl std::fmt::Display for LabelBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabelBudget::PerClass(k) => write!(f, "{k}/class"),
            LabelBudget::Fraction(p) => write!(f, "{}%", p * 100.0),
            LabelBudget::All => write!(f, "all"),
        }
    }
}

impl std::str::FromStr for LabelBudget {
    type Err = EvalError;

    /// `20` (per class), `1%` (fraction) or `all`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || EvalError::Config(format!("label budget `{s}` is not K, P% or all"));
        let s = s.trim();
        if s == "all" {
            return Ok(LabelBudget::All);
        }
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            return Ok(LabelBudget::Fraction(p / 100.0));
        }
        Ok(LabelBudget::PerClass(s.parse().map_err(|_| bad())?))
    }
}

impl LabelBudget {
    /// Indices (ascending) of the training images in the budget, chosen by `seed`.
    pub fn select(&self, ds: &ImageDataset, seed: u64) -> Result<Vec<i64>> {
        let idx = match *self {
            LabelBudget::All => (0..ds.len()).collect(),
            LabelBudget::PerClass(k) => {
                ds.labeled_subset_indices(LabeledSubset::PerClass(k), seed)?
            }
            LabelBudget::Fraction(p) => {
                ds.labeled_subset_indices(LabeledSubset::Fraction(p), seed)?
            }
        };
        Ok(idx.into_iter().map(|i| i as i64).collect())
    }
}

/// How the labeled subset is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FewShotMode {
    /// Linear probe on frozen pooled features of the tap.
    Linear,
    /// Non-linear probe (conv block or MLP) on the frozen tap maps.
    Nonlinear,
    /// Fine-tune the whole encoder plus a linear head on its pooled output.
    Finetune,
}

/// Settings of fine-tuning the encoder with a linear head on its globally pooled output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FineTuneConfig {
    /// Training epochs. Default 100.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Mini-batch size. Default 128.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Samples per epoch; `null` (default) is one pass over the subset.
    #[serde(default)]
    pub epoch_size: Option<usize>,
    /// Base learning rate. Default 0.1.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Momentum. Default 0.9.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Nesterov momentum. Default true.
    #[serde(default = "yes")]
    pub nesterov: bool,
    /// L2 weight decay. Default 5e-4.
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Learning-rate schedule. Default steps ×0.2 at 35, 70, 85.
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleConfig,
    /// Random crop (zero padding 4) and flip of training images. Default true.
    #[serde(default = "yes")]
    pub augment: bool,
    /// Zero padding of the random crop. Default 4.
    #[serde(default = "default_padding")]
    pub padding: usize,
    /// Images per forward pass at evaluation. Default 256.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
}

fn default_epochs() -> usize {
    100
}
fn default_batch() -> usize {
    128
}
fn default_padding() -> usize {
    4
}
fn default_eval_batch() -> usize {
    256
}

impl Default for FineTuneConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}

/// Settings of the few-label protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FewShotConfig {
    /// Label budgets. Default 20, 100, 400, 1000 per class and all.
    #[serde(default = "default_budgets")]
    pub budgets: Vec<LabelBudget>,
    /// Ways of using them. Default `["nonlinear", "finetune"]` (RotNet's table compares the
    /// conv-block classifier on frozen features with training the whole network).
    #[serde(default = "default_modes")]
    pub modes: Vec<FewShotMode>,
    /// The tap for the frozen modes. Default `"last"`; RotNet's table uses `"block2"` of the
    /// 4-block NIN.
    #[serde(default = "default_tap")]
    pub tap: String,
    /// Settings of the `linear` mode (its `taps` field is ignored).
    #[serde(default)]
    pub linear: LinearProbeConfig,
    /// Settings of the `nonlinear` mode (its `taps` field is ignored).
    #[serde(default)]
    pub nonlinear: NonLinearProbeConfig,
    /// Settings of the `finetune` mode.
    #[serde(default)]
    pub finetune: FineTuneConfig,
    /// Pixel normalisation; `null` (default) uses the training images' statistics.
    #[serde(default)]
    pub normalization: Option<Normalization>,
}

fn default_budgets() -> Vec<LabelBudget> {
    let mut b: Vec<LabelBudget> =
        [20, 100, 400, 1000].into_iter().map(LabelBudget::PerClass).collect();
    b.push(LabelBudget::All);
    b
}
fn default_modes() -> Vec<FewShotMode> {
    vec![FewShotMode::Nonlinear, FewShotMode::Finetune]
}
fn default_tap() -> String {
    "last".into()
}

impl Default for FewShotConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}

/// Saved values of every variable of a var store (trainable or not: batch-norm statistics too)
/// and their `requires_grad` flags.
struct Snapshot {
    saved: Vec<(Tensor, Tensor, bool)>,
}

impl Snapshot {
    fn take(vs: &nn::VarStore) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let saved = tch::no_grad(|| {
            vars.into_iter()
                .map(|(_, t)| {
                    let copy = t.detach().copy();
                    let rg = t.requires_grad();
                    (t, copy, rg)
                })
                .collect()
        });
        Snapshot { saved }
    }

    fn restore(self) {
        tch::no_grad(|| {
            for (mut t, copy, rg) in self.saved {
                t.copy_(&copy);
                t.zero_grad();
                let _ = t.set_requires_grad(rg);
            }
        });
    }
}

/// Fine-tunes `encoder` (its variables are the trainable variables of `vs`) plus a zero-initialised
/// linear head on its globally pooled output, with the images `train_idx`; scores on `test`.
/// The encoder is left fine-tuned (see [`fewshot`] for the version that restores it).
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    encoder: &dyn Encoder,
    vs: &nn::VarStore,
    train: &ImageDataset,
    train_idx: &[i64],
    test: &ImageDataset,
    classes: i64,
    norm: &Normalization,
    cfg: &FineTuneConfig,
    seed: u64,
) -> Result<ProbeScore> {
    let device = vs.device();
    let mut params = vs.trainable_variables();
    for p in &params {
        let _ = p.set_requires_grad(true);
    }
    let dim = encoder.out_channels();
    let w = Tensor::zeros([classes, dim], (Kind::Float, device)).set_requires_grad(true);
    let b = Tensor::zeros([classes], (Kind::Float, device)).set_requires_grad(true);
    params.push(w.shallow_clone());
    params.push(b.shallow_clone());
    let mut opt = Sgd::new(params, cfg.momentum, cfg.nesterov, cfg.weight_decay);
    let ytr = features::labels_tensor(train, device)?
        .index_select(0, &Tensor::from_slice(train_idx).to_device(device));
    let yte = features::labels_tensor(test, device)?;
    let spec = LoopSpec {
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        epoch_size: cfg.epoch_size,
        lr: cfg.lr,
        schedule: &cfg.schedule,
        seed,
        stream: "finetune",
    };
    let sel = |idx: &[i64]| -> Vec<i64> { idx.iter().map(|&i| train_idx[i as usize]).collect() };
    let logits = |ds: &ImageDataset,
                  idx: &[i64],
                  aug: Option<Augment>,
                  train_mode: bool|
     -> Result<Tensor> {
        let x = features::images_on(ds, idx, norm, aug.as_ref(), device)?;
        let f =
            encoder.forward_t(&x, train_mode).mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        Ok(affine(&f, &w, Some(&b)))
    };
    let final_loss = train_loop(&ytr, &spec, &mut opt, |r, epoch| {
        let aug = cfg.augment.then_some(Augment {
            seed,
            epoch,
            padding: cfg.padding,
            resized_crop: None,
        });
        logits(train, &sel(r.host), aug, true)
    })?;
    let bs = cfg.eval_batch_size;
    let (top1, top5) = eval_loop(&yte, bs, |r| logits(test, r.host, None, false))?;
    let (train_top1, _) = eval_loop(&ytr, bs, |r| logits(train, &sel(r.host), None, false))?;
    Ok(ProbeScore { top1, top5, train_top1, final_loss, best: None })
}

/// The few-label protocol: for each budget and mode of `cfg`, train on the labeled subset of
/// `train` and test on `test`. `vs` holds the encoder's variables (for fine-tuning; they are
/// restored afterwards).
pub fn fewshot(
    encoder: &dyn Encoder,
    vs: &nn::VarStore,
    train: &ImageDataset,
    test: &ImageDataset,
    cfg: &FewShotConfig,
    seed: u64,
) -> Result<EvalReport> {
    let start = std::time::Instant::now();
    let device: Device = vs.device();
    let (mut report, norm, classes) =
        open_report("fewshot", cfg, cfg.normalization.as_ref(), device, train, test, seed)?;
    let tap = features::resolve_taps(encoder, std::slice::from_ref(&cfg.tap))?.remove(0);
    let one = std::slice::from_ref(&tap);
    let lin_ex = Extraction {
        device,
        norm: &norm,
        pooling: Some(cfg.linear.pooling),
        batch_size: cfg.linear.extract_batch_size,
        augment: None,
    };
    let mut lin_cache: Option<(features::TapFeatures, features::TapFeatures)> = None;
    let ytr_all = features::labels_tensor(train, device)?;
    let yte = features::labels_tensor(test, device)?;
    for budget in &cfg.budgets {
        let idx = budget.select(train, seed)?;
        for mode in &cfg.modes {
            let _span = tracing::info_span!("fewshot", budget = %budget, mode = ?mode).entered();
            let (score, map_shape, dim, t) = match mode {
                FewShotMode::Linear => {
                    if lin_cache.is_none() {
                        let tr = features::extract(encoder, train, None, one, &lin_ex)?.remove(0);
                        let te = features::extract(encoder, test, None, one, &lin_ex)?.remove(0);
                        lin_cache = Some((tr, te));
                    }
                    let (tr, te) = lin_cache.as_ref().expect("filled above");
                    let sel = Tensor::from_slice(&idx).to_device(device);
                    let x = tr.features.index_select(0, &sel);
                    let y = ytr_all.index_select(0, &sel);
                    let s = train_linear(&x, &y, &te.features, &yte, classes, &cfg.linear, seed)?;
                    (s, tr.map_shape.to_vec(), tr.dim(), tap.clone())
                }
                FewShotMode::Nonlinear => {
                    let (s, map) = train_nonlinear(
                        encoder,
                        device,
                        train,
                        &idx,
                        test,
                        &tap,
                        classes,
                        &norm,
                        &cfg.nonlinear,
                        seed,
                    )?;
                    (s, map.to_vec(), map.iter().product(), tap.clone())
                }
                FewShotMode::Finetune => {
                    let snap = Snapshot::take(vs);
                    let s = finetune(
                        encoder,
                        vs,
                        train,
                        &idx,
                        test,
                        classes,
                        &norm,
                        &cfg.finetune,
                        seed,
                    );
                    snap.restore();
                    let last = encoder.tap_names().pop().unwrap_or_default();
                    (s?, Vec::new(), encoder.out_channels(), last)
                }
            };
            let variant = format!(
                "{budget} {}",
                match mode {
                    FewShotMode::Linear => "frozen linear".to_string(),
                    FewShotMode::Nonlinear =>
                        format!("frozen {}", crate::nonlinear::head_name(cfg.nonlinear.head)),
                    FewShotMode::Finetune => "fine-tuned".to_string(),
                }
            );
            tracing::info!(variant = variant.as_str(), top1 = score.top1, "few-label");
            report.rows.push(ResultRow {
                tap: t,
                variant,
                map_shape,
                dim,
                train_images: idx.len(),
                top1: score.top1,
                top5: score.top5,
                train_top1: Some(score.train_top1),
                best_epoch: score.best,
            });
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_and_print() {
        assert_eq!("20".parse::<LabelBudget>().unwrap(), LabelBudget::PerClass(20));
        assert_eq!("10%".parse::<LabelBudget>().unwrap(), LabelBudget::Fraction(0.1));
        assert_eq!("all".parse::<LabelBudget>().unwrap(), LabelBudget::All);
        assert!("x".parse::<LabelBudget>().is_err());
        assert_eq!(LabelBudget::PerClass(400).to_string(), "400/class");
        assert_eq!(LabelBudget::Fraction(0.01).to_string(), "1%");
        let c: FewShotConfig = serde_json::from_value(
            serde_json::json!({"budgets": [{"per_class": 2}, {"fraction": 0.5}, "all"]}),
        )
        .unwrap();
        assert_eq!(c.budgets[1], LabelBudget::Fraction(0.5));
        assert_eq!(FewShotConfig::default().budgets.len(), 5);
    }
}
