//! Layer-wise linear probe (Zhang et al. CVPR 2017 conv1..conv5 tables; RotNet, Gidaris et al.
//! ICLR 2018, Tables 1–2 and 5–7): frozen features of each tap, average-pooled to about 9,000
//! dimensions and standardised with training statistics, then a multinomial logistic
//! regression trained by SGD with momentum and weight decay; top-1 and top-5 on the test split.
//!
//! Features are extracted once per tap (one tap at a time, so memory holds one tap's features)
//! without augmentation, on the encoder's device. The regression starts from zero weights (the
//! problem is convex) and visits the data in seeded order, so results are deterministic under a
//! seed on the CPU.
use crate::features::{self, Augment, Extraction, Normalization, Pooling, Standardizer};
use crate::probe::{eval_loop, train_loop, LoopSpec, Sgd};
use crate::report::{open_report, EvalReport, ResultRow};
use crate::{EvalError, Result};
use selfsup_core::encoders::affine;
use selfsup_core::schedule::ScheduleConfig;
use selfsup_core::Encoder;
use selfsup_data::ImageDataset;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Settings of the linear probe. Defaults follow RotNet's CIFAR classifier schedule
/// (SGD 0.1, Nesterov momentum 0.9, weight decay 5e-4, rate ×0.2 at epochs 35, 70, 85 of 100).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearProbeConfig {
    /// Taps to probe; `["all"]` (default) is every tap of the encoder.
    #[serde(default = "all_taps")]
    pub taps: Vec<String>,
    /// Pooling of each tap. Default `{"target": 9000}` (Zhang et al.'s ~9k rule).
    #[serde(default)]
    pub pooling: Pooling,
    /// Standardise each dimension with the training features' mean and std. Default true.
    #[serde(default = "yes")]
    pub standardize: bool,
    /// Pixel normalisation; `null` (default) uses the training images' per-channel statistics.
    #[serde(default)]
    pub normalization: Option<Normalization>,
    /// Training epochs. Default 100.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Mini-batch size. Default 256.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Samples per epoch; `null` (default) is one pass. RotNet's few-label runs use 50,000.
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
    /// Learning-rate schedule over epochs. Default steps ×0.2 at 35, 70, 85.
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleConfig,
    /// Images per forward pass when extracting features. Default 256.
    #[serde(default = "default_batch")]
    pub extract_batch_size: usize,
    /// Memory budget of cached features in MiB: consecutive taps whose train and test features
    /// fit together are extracted in one encoder pass; a tap over the budget gets a pass of its
    /// own. Default 4096.
    #[serde(default = "default_feature_memory")]
    pub feature_memory_mib: usize,
    /// Train on augmented training images, their features recomputed through the frozen
    /// encoder every batch; `null` (default) trains on cached features of the unaugmented
    /// images. `{"scale": [0.08, 1.0]}` is the random-resized crop and flip of the linear
    /// evaluations of SimCLR, MoCo and solo-learn. Needs `standardize = false`.
    #[serde(default)]
    pub augment: Option<ResizedCrop>,
}

/// A random-resized crop back to the image size (aspect ratio 3/4 to 4/3), then a horizontal
/// flip with probability 1/2.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizedCrop {
    /// Range of the crop's area as a fraction of the image.
    pub scale: [f64; 2],
}

impl LinearProbeConfig {
    /// The linear evaluation of the contrastive papers and solo-learn: the globally pooled
    /// last feature map (512-d for a ResNet-18), no standardisation, trained on random-resized
    /// crops (scale 0.08 to 1) and flips. Other fields keep their defaults.
    pub fn reference_contrastive() -> Self {
        LinearProbeConfig {
            taps: vec!["last".into()],
            pooling: Pooling::Global,
            standardize: false,
            augment: Some(ResizedCrop { scale: [0.08, 1.0] }),
            ..Default::default()
        }
    }
}

fn default_feature_memory() -> usize {
    4096
}

pub(crate) fn all_taps() -> Vec<String> {
    vec!["all".into()]
}
pub(crate) fn yes() -> bool {
    true
}
fn default_epochs() -> usize {
    100
}
fn default_batch() -> usize {
    256
}
pub(crate) fn default_lr() -> f64 {
    0.1
}
pub(crate) fn default_momentum() -> f64 {
    0.9
}
pub(crate) fn default_wd() -> f64 {
    5e-4
}
/// RotNet's CIFAR classifier schedule: ×0.2 at epochs 35, 70 and 85.
pub fn default_schedule() -> ScheduleConfig {
    ScheduleConfig::Steps { milestones: vec![35, 70, 85], gamma: 0.2 }
}

impl Default for LinearProbeConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}

/// Accuracies of one trained classifier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeScore {
    /// Test top-1, percent.
    pub top1: f64,
    /// Test top-5, percent.
    pub top5: f64,
    /// Training top-1, percent.
    pub train_top1: f64,
    /// Mean training loss of the last epoch.
    pub final_loss: f64,
    /// The best epoch, where the test set was scored after every epoch.
    pub best: Option<crate::report::BestEpoch>,
}

/// Trains a multinomial logistic regression on cached features and scores it.
///
/// # Shapes
/// `train_x`: `(N, D)` float, `train_y`: `(N,)` i64, `test_x`: `(M, D)`, `test_y`: `(M,)`, all on
/// one device. Standardisation (when `cfg.standardize`) is fitted on `train_x`.
pub fn train_linear(
    train_x: &Tensor,
    train_y: &Tensor,
    test_x: &Tensor,
    test_y: &Tensor,
    num_classes: i64,
    cfg: &LinearProbeConfig,
    seed: u64,
) -> Result<ProbeScore> {
    let (n, d) = train_x.size2().map_err(EvalError::Torch)?;
    if train_y.size() != [n]
        || test_x.size().get(1) != Some(&d)
        || test_y.size()[0] != test_x.size()[0]
    {
        return Err(EvalError::Config(format!(
            "features/labels disagree: train {:?} / {:?}, test {:?} / {:?}",
            train_x.size(),
            train_y.size(),
            test_x.size(),
            test_y.size()
        )));
    }
    let device = train_x.device();
    let (train_x, test_x) = if cfg.standardize {
        let s = Standardizer::fit(train_x);
        (s.apply(train_x), s.apply(test_x))
    } else {
        (train_x.shallow_clone(), test_x.shallow_clone())
    };
    let (w, b, mut opt, spec) = classifier(num_classes, d, device, cfg, seed);
    let final_loss =
        train_loop(train_y, &spec, &mut opt, |r, _| Ok(affine(&r.of(&train_x), &w, Some(&b))))?;
    let eval_bs = cfg.batch_size.max(256);
    let (top1, top5) = eval_loop(test_y, eval_bs, |r| Ok(affine(&r.of(&test_x), &w, Some(&b))))?;
    let (train_top1, _) =
        eval_loop(train_y, eval_bs, |r| Ok(affine(&r.of(&train_x), &w, Some(&b))))?;
    Ok(ProbeScore { top1, top5, train_top1, final_loss, best: None })
}

/// The linear protocol: for each tap of `cfg.taps`, extract pooled frozen features of `train`
/// and `test`, train [`train_linear`], report top-1/top-5. `device` is where the encoder's
/// variables live.
pub fn linear_probe(
    encoder: &dyn Encoder,
    device: Device,
    train: &ImageDataset,
    test: &ImageDataset,
    cfg: &LinearProbeConfig,
    seed: u64,
) -> Result<EvalReport> {
    let start = std::time::Instant::now();
    let (mut report, norm, k) =
        open_report("linear", cfg, cfg.normalization.as_ref(), device, train, test, seed)?;
    let ytr = features::labels_tensor(train, device)?;
    let yte = features::labels_tensor(test, device)?;
    let ex = Extraction {
        device,
        norm: &norm,
        pooling: Some(cfg.pooling),
        batch_size: cfg.extract_batch_size,
        augment: None,
    };
    let taps = features::resolve_taps(encoder, &cfg.taps)?;
    if let Some(crop) = cfg.augment {
        if cfg.standardize {
            return Err(EvalError::Config(
                "linear probe: augment needs standardize = false (the statistics of augmented \
                 features change every epoch)"
                    .into(),
            ));
        }
        for tap in &taps {
            let _span = tracing::info_span!("linear_probe", tap = tap.as_str()).entered();
            let (score, map_shape, dim) =
                train_linear_augmented(encoder, train, test, tap, &ex, crop, k, cfg, seed)?;
            tracing::info!(tap = tap.as_str(), top1 = score.top1, "linear probe (augmented)");
            report.rows.push(ResultRow {
                tap: tap.clone(),
                variant: "linear, augmented".into(),
                map_shape: map_shape.to_vec(),
                dim,
                train_images: train.len(),
                top1: score.top1,
                top5: score.top5,
                train_top1: Some(score.train_top1),
                best_epoch: None,
            });
        }
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(report);
    }
    for group in tap_groups(encoder, train, test, &taps, &ex, cfg.feature_memory_mib)? {
        let _span = tracing::info_span!("linear_probe", taps = group.join(",")).entered();
        let ftr = features::extract(encoder, train, None, &group, &ex)?;
        let fte = features::extract(encoder, test, None, &group, &ex)?;
        for (a, b) in ftr.iter().zip(&fte) {
            let score = train_linear(&a.features, &ytr, &b.features, &yte, k, cfg, seed)?;
            tracing::info!(
                tap = a.tap.as_str(),
                top1 = score.top1,
                top5 = score.top5,
                "linear probe"
            );
            report.rows.push(ResultRow {
                tap: a.tap.clone(),
                variant: "linear".into(),
                map_shape: a.map_shape.to_vec(),
                dim: a.dim(),
                train_images: train.len(),
                top1: score.top1,
                top5: score.top5,
                train_top1: Some(score.train_top1),
                best_epoch: None,
            });
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// A zero-initialised logistic regression `(D → K)`: weight `(K, D)`, bias `(K,)`, its SGD and
/// its training loop under `cfg` and `seed`.
fn classifier(
    num_classes: i64,
    d: i64,
    device: Device,
    cfg: &LinearProbeConfig,
    seed: u64,
) -> (Tensor, Tensor, Sgd, LoopSpec<'_>) {
    let w = Tensor::zeros([num_classes, d], (Kind::Float, device)).set_requires_grad(true);
    let b = Tensor::zeros([num_classes], (Kind::Float, device)).set_requires_grad(true);
    let opt = Sgd::new(
        vec![w.shallow_clone(), b.shallow_clone()],
        cfg.momentum,
        cfg.nesterov,
        cfg.weight_decay,
    );
    let spec = LoopSpec {
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        epoch_size: cfg.epoch_size,
        lr: cfg.lr,
        schedule: &cfg.schedule,
        seed,
        stream: "linear-probe",
    };
    (w, b, opt, spec)
}

/// The augmented protocol on one tap: a logistic regression (zero init, as [`train_linear`])
/// trained on pooled features of random-resized crops and flips of `train`, recomputed
/// through the frozen encoder every batch; scored on the unaugmented `test` (and `train`)
/// features. Returns the score, the tap's map shape and the feature dimension.
#[allow(clippy::too_many_arguments)]
fn train_linear_augmented(
    encoder: &dyn Encoder,
    train: &ImageDataset,
    test: &ImageDataset,
    tap: &str,
    ex: &Extraction<'_>,
    crop: ResizedCrop,
    num_classes: i64,
    cfg: &LinearProbeConfig,
    seed: u64,
) -> Result<(ProbeScore, [i64; 3], i64)> {
    let device = ex.device;
    let one = [tap.to_string()];
    let fte = features::extract(encoder, test, None, &one, ex)?.remove(0);
    let (map_shape, d) = (fte.map_shape, fte.dim());
    let (w, b, mut opt, spec) = classifier(num_classes, d, device, cfg, seed);
    let ytr = features::labels_tensor(train, device)?;
    let yte = features::labels_tensor(test, device)?;
    let final_loss = train_loop(&ytr, &spec, &mut opt, |r, epoch| {
        let augment = Some(Augment { seed, epoch, padding: 0, resized_crop: Some(crop.scale) });
        let aug = Extraction { augment, ..ex.clone() };
        let x = features::extract(encoder, train, Some(r.host), &one, &aug)?.remove(0).features;
        Ok(affine(&x, &w, Some(&b)))
    })?;
    let eval_bs = cfg.batch_size.max(256);
    let (top1, top5) =
        eval_loop(&yte, eval_bs, |r| Ok(affine(&r.of(&fte.features), &w, Some(&b))))?;
    let ftr = features::extract(encoder, train, None, &one, ex)?.remove(0).features;
    let (train_top1, _) = eval_loop(&ytr, eval_bs, |r| Ok(affine(&r.of(&ftr), &w, Some(&b))))?;
    Ok((ProbeScore { top1, top5, train_top1, final_loss, best: None }, map_shape, d))
}

/// Splits `taps` (forward order) into consecutive groups whose pooled train + test features
/// fit in `budget_mib` together (each group at least one tap), from the tap dimensions of one
/// image.
fn tap_groups(
    encoder: &dyn Encoder,
    train: &ImageDataset,
    test: &ImageDataset,
    taps: &[String],
    ex: &Extraction<'_>,
    budget_mib: usize,
) -> Result<Vec<Vec<String>>> {
    let probe = features::extract(encoder, train, Some(&[0]), taps, ex)?;
    let rows = (train.len() + test.len()) as f64;
    let budget = budget_mib as f64 * 1024.0 * 1024.0;
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut used = f64::INFINITY;
    for f in probe {
        let bytes = rows * f.dim() as f64 * 4.0;
        if used + bytes > budget {
            groups.push(Vec::new());
            used = 0.0;
        }
        used += bytes;
        groups.last_mut().expect("pushed above").push(f.tap);
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> LinearProbeConfig {
        LinearProbeConfig {
            epochs: 20,
            batch_size: 32,
            schedule: ScheduleConfig::Cosine { warmup_epochs: 0.0, final_fraction: 0.0 },
            ..Default::default()
        }
    }

    /// Gaussian clusters around `classes` random centres in `d` dimensions (well separated).
    fn clusters(n: i64, d: i64, classes: i64, noise_seed: u64, spread: f64) -> (Tensor, Tensor) {
        let centres = crate::probe::seeded_normal(&[classes, d], 3.0, 1, "centres", Device::Cpu);
        let y = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(classes);
        let noise = crate::probe::seeded_normal(&[n, d], spread, noise_seed, "noise", Device::Cpu);
        (centres.index_select(0, &y) + noise, y)
    }

    #[test]
    fn separable_features_are_learned() {
        let (x, y) = clusters(400, 32, 10, 1, 0.5);
        let (xt, yt) = clusters(200, 32, 10, 2, 0.5); // same centres, fresh noise
        let s = train_linear(&x, &y, &xt, &yt, 10, &quick(), 0).unwrap();
        assert!(s.top1 > 99.0, "{s:?}");
        assert!(s.train_top1 > 99.0, "{s:?}");
        assert!((s.top5 - 100.0).abs() < 1e-9);
    }

    #[test]
    fn noise_gives_chance() {
        let x = crate::probe::seeded_normal(&[500, 32], 1.0, 2, "x", Device::Cpu);
        let xt = crate::probe::seeded_normal(&[2000, 32], 1.0, 3, "x", Device::Cpu);
        let y = Tensor::arange(500, (Kind::Int64, Device::Cpu)).remainder(10);
        let yt = Tensor::arange(2000, (Kind::Int64, Device::Cpu)).remainder(10);
        let s = train_linear(&x, &y, &xt, &yt, 10, &quick(), 0).unwrap();
        // Chance is 10% top-1 and 50% top-5; 2000 test points give a std of ~0.7 points.
        assert!((s.top1 - 10.0).abs() < 4.0, "{s:?}");
        assert!((s.top5 - 50.0).abs() < 6.0, "{s:?}");
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c = LinearProbeConfig::default();
        assert_eq!(c.epochs, 100);
        assert_eq!(c.pooling, Pooling::Target(9000));
        assert_eq!(c.schedule, default_schedule());
        let bad = serde_json::from_value::<LinearProbeConfig>(serde_json::json!({"epoch": 3}));
        assert!(bad.unwrap_err().to_string().contains("unknown field `epoch`"));
    }
}
