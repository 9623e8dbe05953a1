//! The non-linear probes with which RotNet (Gidaris et al., ICLR 2018) reports its CIFAR-10
//! numbers (Table 1, and 89.06% for block 2 of the 4-block NIN): a small classifier trained on
//! the frozen block features of the encoder, following gidariss/FeatureLearningRotNet,
//! `architectures/NonLinearClassifier.py`:
//!
//! - `NIN_ConvBlock3` ([`HeadKind::ConvBlock3`]): three conv BasicBlocks (conv without bias, BN,
//!   ReLU) of 192 channels with kernels 3×3, 1×1, 1×1, global average pooling, a linear layer.
//!   Config `CIFAR10_ConvClassifier_on_RotNet_NIN4blocks_Conv2_feats.py`: 100 epochs, batch 128,
//!   SGD lr 0.1, Nesterov momentum 0.9, weight decay 5e-4, rate ×0.2 at epochs 35, 70, 85.
//! - `MultLayer` ([`HeadKind::Mlp`]): flatten the raw map (192·8·8 for block 2), linear to
//!   `min(20·classes, 2048)` without bias, BN, ReLU, linear to the same width without bias, BN,
//!   ReLU, linear to the classes. Config `CIFAR10_MultLayerClassifier_on_..._Conv2_feats.py`:
//!   the same optimiser, rate ×0.2 at epochs 20, 40, 45, 100 epochs
//!   ([`NonLinearProbeConfig::mlp_official`]).
//!
//! Initialisation as the official `initilize()`: conv weights `N(0, 2 / (k·k·out))`, linear
//! weights `N(0, 2 / out)`, biases 0, BN weight 1 and bias 0; drawn from our own seeded stream.
//!
//! The encoder stays frozen: it runs under `no_grad` in eval mode (its BN uses running
//! statistics) exactly as the official `FeatureClassificationModel`. The official training
//! images are augmented with `RandomCrop(32, padding=4)` + `RandomHorizontalFlip()`, so with
//! `augment: true` (default) features are recomputed from freshly augmented images for every
//! batch of every epoch; with `augment: false` the training and test maps are extracted once
//! and cached on the device (memory `N·C·H·W·4` bytes per split). Test images are never
//! augmented.
use crate::features::{self, Augment, Extraction, Normalization};
use crate::linear::{
    all_taps, default_lr, default_momentum, default_schedule, default_wd, yes, ProbeScore,
};
use crate::probe::{eval_loop, seeded_normal, train_loop_with, LoopSpec, Sgd};
use crate::report::{open_report, BestEpoch, EvalReport, ResultRow};
use crate::{EvalError, Result};
use selfsup_core::encoders::conv::Conv2d;
use selfsup_core::encoders::{batch_norm1d, batch_norm2d, linear, BatchNorm, Linear, LinearBias};
use selfsup_core::schedule::ScheduleConfig;
use selfsup_core::Encoder;
use selfsup_data::ImageDataset;
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// Which classifier sits on the frozen features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// RotNet's `NIN_ConvBlock3`: conv 3×3, 1×1, 1×1 (BN, ReLU), global average pool, linear.
    ConvBlock3,
    /// RotNet's `MultLayer`: flatten, two hidden linear layers with BN and ReLU, linear.
    Mlp,
}

/// Settings of the non-linear probe. Defaults are the official conv-block protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonLinearProbeConfig {
    /// The classifier. Default `conv_block3`.
    #[serde(default = "default_head")]
    pub head: HeadKind,
    /// Taps to probe. Default `["all"]`.
    #[serde(default = "all_taps")]
    pub taps: Vec<String>,
    /// Channels of the conv-block classifier. Default 192.
    #[serde(default = "default_width")]
    pub width: i64,
    /// Hidden width of the MLP; `null` (default) is the official `min(20·classes, 2048)`.
    #[serde(default)]
    pub hidden: Option<i64>,
    /// Training epochs. Default 100.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Mini-batch size. Default 128.
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
    /// Learning-rate schedule. Default steps ×0.2 at 35, 70, 85.
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleConfig,
    /// Train on random-crop + flip augmented images, recomputing features per batch.
    /// Default true (as the official code).
    #[serde(default = "yes")]
    pub augment: bool,
    /// Zero padding of the random crop. Default 4.
    #[serde(default = "default_padding")]
    pub padding: usize,
    /// Pixel normalisation; `null` (default) uses the training images' statistics.
    #[serde(default)]
    pub normalization: Option<Normalization>,
    /// Images per forward pass at evaluation and extraction. Default 256.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Score the test set after every epoch (its tap maps extracted once and kept) and report
    /// the best epoch beside the last, as the official RotNet code reports the best test
    /// epoch. The last epoch stays the headline `top1`. Default false.
    #[serde(default)]
    pub eval_every_epoch: bool,
}

fn default_head() -> HeadKind {
    HeadKind::ConvBlock3
}
fn default_width() -> i64 {
    192
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

impl Default for NonLinearProbeConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}

impl NonLinearProbeConfig {
    /// The official MLP (`MultLayer`) protocol: rate ×0.2 at epochs 20, 40, 45; 100 epochs.
    pub fn mlp_official() -> Self {
        NonLinearProbeConfig {
            head: HeadKind::Mlp,
            schedule: ScheduleConfig::Steps { milestones: vec![20, 40, 45], gamma: 0.2 },
            ..Default::default()
        }
    }
}

/// A classifier on frozen tap maps.
#[derive(Debug)]
pub struct NonLinearHead {
    kind: HeadKind,
    convs: Vec<(Conv2d, BatchNorm)>,
    hidden: Vec<(Linear, BatchNorm)>,
    out: Linear,
}

impl NonLinearHead {
    /// Builds the head on `p` for tap maps `[C, H, W]` and `classes` outputs, then initialises
    /// it as the official code from the stream `seed`.
    pub fn new(
        p: &nn::Path,
        kind: HeadKind,
        map: [i64; 3],
        classes: i64,
        width: i64,
        hidden: Option<i64>,
        seed: u64,
    ) -> Result<Self> {
        // Layer constructors draw their default init from libtorch's generator; we overwrite
        // it below, but hold the lock so concurrent seeded builds elsewhere stay reproducible.
        let _guard = crate::baselines::TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let head = match kind {
            HeadKind::ConvBlock3 => {
                if width <= 0 {
                    return Err(EvalError::Config(format!(
                        "conv-block width {width} must be positive"
                    )));
                }
                let mut convs = Vec::new();
                for (i, (cin, ks)) in [(map[0], 3), (width, 1), (width, 1)].into_iter().enumerate()
                {
                    let cfg =
                        nn::ConvConfig { padding: (ks - 1) / 2, bias: false, ..Default::default() };
                    convs.push((
                        Conv2d::head(p / format!("block{}", i + 1) / "conv", cin, width, ks, cfg),
                        batch_norm2d(p / format!("block{}", i + 1) / "bn", width),
                    ));
                }
                let out = linear(p / "fc", width, classes, LinearBias::Default);
                NonLinearHead { kind, convs, hidden: Vec::new(), out }
            }
            HeadKind::Mlp => {
                let h = hidden.unwrap_or_else(|| (20 * classes).min(2048));
                if h <= 0 {
                    return Err(EvalError::Config(format!(
                        "MLP hidden width {h} must be positive"
                    )));
                }
                let d = map.iter().product();
                let hidden = vec![
                    (linear(p / "fc1", d, h, LinearBias::None), batch_norm1d(p / "bn1", h)),
                    (linear(p / "fc2", h, h, LinearBias::None), batch_norm1d(p / "bn2", h)),
                ];
                let out = linear(p / "fc3", h, classes, LinearBias::Default);
                NonLinearHead { kind, convs: Vec::new(), hidden, out }
            }
        };
        head.init(p.device(), seed);
        Ok(head)
    }

    /// Official initialisation from our own stream (see the module docs).
    fn init(&self, device: Device, seed: u64) {
        tch::no_grad(|| {
            // One stream per tensor, numbered in construction order.
            let mut i = 0u64;
            let mut normal = |t: &Tensor, std: f64| {
                let s = selfsup_core::seed::derive_seed(seed, &[i]);
                t.shallow_clone().copy_(&seeded_normal(
                    &t.size(),
                    std,
                    s,
                    "nonlinear-head-init",
                    device,
                ));
                i += 1;
            };
            for (conv, _) in &self.convs {
                let s = conv.inner.ws.size();
                normal(&conv.inner.ws, (2.0 / (s[2] * s[3] * s[0]) as f64).sqrt());
            }
            for (lin, _) in &self.hidden {
                normal(&lin.ws, (2.0 / lin.ws.size()[0] as f64).sqrt());
            }
            normal(&self.out.ws, (2.0 / self.out.ws.size()[0] as f64).sqrt());
            if let Some(b) = &self.out.bs {
                let _ = b.shallow_clone().zero_();
            }
        });
    }
}

impl ModuleT for NonLinearHead {
    /// # Shapes
    /// `(N, C, H, W)` tap maps → `(N, classes)` logits.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self.kind {
            HeadKind::ConvBlock3 => {
                let mut x = xs.shallow_clone();
                for (conv, bn) in &self.convs {
                    x = bn.forward_relu_t(&x.apply(conv), train);
                }
                x.mean_dim([2i64, 3].as_slice(), false, Kind::Float).apply(&self.out)
            }
            HeadKind::Mlp => {
                let mut x = xs.flatten(1, -1);
                for (lin, bn) in &self.hidden {
                    x = bn.forward_relu_t(&x.apply(lin), train);
                }
                x.apply(&self.out)
            }
        }
    }
}

/// Trains a non-linear head on tap `tap` of the frozen encoder with the labeled images
/// `train_idx` of `train` and scores it on all of `test`. Returns the score and the tap's map
/// shape `[C, H, W]`.
#[allow(clippy::too_many_arguments)]
pub fn train_nonlinear(
    encoder: &dyn Encoder,
    device: Device,
    train: &ImageDataset,
    train_idx: &[i64],
    test: &ImageDataset,
    tap: &str,
    classes: i64,
    norm: &Normalization,
    cfg: &NonLinearProbeConfig,
    seed: u64,
) -> Result<(ProbeScore, [i64; 3])> {
    let one = [tap.to_string()];
    let ex = |augment: Option<Augment>| Extraction {
        device,
        norm,
        pooling: None,
        batch_size: cfg.eval_batch_size,
        augment,
    };
    let maps = |ds: &ImageDataset,
                idx: &[i64],
                augment: Option<Augment>|
     -> Result<features::TapFeatures> {
        Ok(features::extract(encoder, ds, Some(idx), &one, &ex(augment))?.remove(0))
    };
    // Shape of the tap from one image.
    let map_shape = maps(train, &train_idx[..1.min(train_idx.len())], None)?.map_shape;
    let vs = nn::VarStore::new(device);
    let head =
        NonLinearHead::new(&vs.root(), cfg.head, map_shape, classes, cfg.width, cfg.hidden, seed)?;
    let mut opt = Sgd::new(vs.trainable_variables(), cfg.momentum, cfg.nesterov, cfg.weight_decay);
    let all_y = features::labels_tensor(train, device)?;
    let ytr = all_y.index_select(0, &Tensor::from_slice(train_idx).to_device(device));
    let yte = features::labels_tensor(test, device)?;
    let spec = LoopSpec {
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        epoch_size: cfg.epoch_size,
        lr: cfg.lr,
        schedule: &cfg.schedule,
        seed,
        stream: "nonlinear-probe",
    };
    let sel = |idx: &[i64]| -> Vec<i64> { idx.iter().map(|&i| train_idx[i as usize]).collect() };
    let bs = cfg.eval_batch_size;
    // With a score per epoch, the test maps are extracted once and kept.
    let test_maps = if cfg.eval_every_epoch {
        let all: Vec<i64> = (0..test.len() as i64).collect();
        Some(maps(test, &all, None)?.features)
    } else {
        None
    };
    let score_test = |head: &NonLinearHead| match &test_maps {
        Some(fte) => eval_loop(&yte, bs, |r| Ok(r.of(fte).apply_t(head, false))),
        None => {
            eval_loop(&yte, bs, |r| Ok(maps(test, r.host, None)?.features.apply_t(head, false)))
        }
    };
    let mut best: Option<BestEpoch> = None;
    let mut after_epoch = |epoch: u64| -> Result<()> {
        if cfg.eval_every_epoch {
            let (top1, _) = score_test(&head)?;
            if best.is_none_or(|b| top1 > b.top1) {
                best = Some(BestEpoch { top1, epoch: epoch as usize + 1 });
            }
        }
        Ok(())
    };
    let (final_loss, cached) = if cfg.augment {
        let loss = train_loop_with(
            &ytr,
            &spec,
            &mut opt,
            |r, epoch| {
                let a = Augment { seed, epoch, padding: cfg.padding, resized_crop: None };
                Ok(maps(train, &sel(r.host), Some(a))?.features.apply_t(&head, true))
            },
            &mut after_epoch,
        )?;
        (loss, None)
    } else {
        let ftr = maps(train, train_idx, None)?.features;
        let loss = train_loop_with(
            &ytr,
            &spec,
            &mut opt,
            |r, _| Ok(r.of(&ftr).apply_t(&head, true)),
            &mut after_epoch,
        )?;
        (loss, Some(ftr))
    };
    let (top1, top5) = score_test(&head)?;
    let (train_top1, _) = match &cached {
        Some(ftr) => eval_loop(&ytr, bs, |r| Ok(r.of(ftr).apply_t(&head, false)))?,
        None => eval_loop(&ytr, bs, |r| {
            Ok(maps(train, &sel(r.host), None)?.features.apply_t(&head, false))
        })?,
    };
    Ok((ProbeScore { top1, top5, train_top1, final_loss, best }, map_shape))
}

/// The non-linear protocol over every tap of `cfg.taps`. `device` is where the encoder's
/// variables live.
pub fn nonlinear_probe(
    encoder: &dyn Encoder,
    device: Device,
    train: &ImageDataset,
    test: &ImageDataset,
    cfg: &NonLinearProbeConfig,
    seed: u64,
) -> Result<EvalReport> {
    let start = std::time::Instant::now();
    let (mut report, norm, classes) =
        open_report("nonlinear", cfg, cfg.normalization.as_ref(), device, train, test, seed)?;
    let idx: Vec<i64> = (0..train.len() as i64).collect();
    for tap in features::resolve_taps(encoder, &cfg.taps)? {
        let _span = tracing::info_span!("nonlinear_probe", tap = tap.as_str()).entered();
        let (s, map) =
            train_nonlinear(encoder, device, train, &idx, test, &tap, classes, &norm, cfg, seed)?;
        tracing::info!(tap = tap.as_str(), top1 = s.top1, top5 = s.top5, "non-linear probe");
        report.rows.push(ResultRow {
            tap,
            variant: head_name(cfg.head).into(),
            map_shape: map.to_vec(),
            dim: map.iter().product(),
            train_images: train.len(),
            top1: s.top1,
            top5: s.top5,
            train_top1: Some(s.train_top1),
            best_epoch: s.best,
        });
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The head's name in reports: `conv_block3` or `mlp`.
pub fn head_name(kind: HeadKind) -> &'static str {
    match kind {
        HeadKind::ConvBlock3 => "conv_block3",
        HeadKind::Mlp => "mlp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variable of a head built under `seed`, by name, as bits.
    fn head_bits(kind: HeadKind, seed: u64) -> Vec<(String, Vec<u32>)> {
        let vs = nn::VarStore::new(Device::Cpu);
        NonLinearHead::new(&vs.root(), kind, [4, 8, 8], 10, 8, Some(16), seed).unwrap();
        let mut out: Vec<(String, Vec<u32>)> = vs
            .variables()
            .into_iter()
            .map(|(k, t)| {
                let v = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
                (k, v.into_iter().map(f32::to_bits).collect())
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn head_init_is_the_official_one_and_needs_no_libtorch_seed() {
        for kind in [HeadKind::Mlp, HeadKind::ConvBlock3] {
            // libtorch's global generator moves between the two builds; the heads must not.
            let a = head_bits(kind, 5);
            let _ = Tensor::rand([100], (Kind::Float, Device::Cpu));
            let b = head_bits(kind, 5);
            assert_eq!(a, b, "{kind:?}");
            assert_ne!(a, head_bits(kind, 6), "{kind:?}: the seed must matter");
            for (name, bits) in &a {
                let want = if name.ends_with("bn.weight")
                    || name.ends_with("bn1.weight")
                    || name.ends_with("bn2.weight")
                    || name.ends_with("running_var")
                {
                    Some(1f32)
                } else if name.contains("bn") || name.ends_with("bias") {
                    Some(0f32)
                } else {
                    None
                };
                if let Some(w) = want {
                    assert!(bits.iter().all(|&b| b == w.to_bits()), "{kind:?} {name}");
                }
            }
        }
    }

    #[test]
    fn official_head_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = NonLinearHead::new(
            &(vs.root() / "c"),
            HeadKind::ConvBlock3,
            [192, 8, 8],
            10,
            192,
            None,
            0,
        )
        .unwrap();
        let mlp =
            NonLinearHead::new(&(vs.root() / "m"), HeadKind::Mlp, [192, 8, 8], 10, 192, None, 0)
                .unwrap();
        let x = Tensor::ones([3, 192, 8, 8], (Kind::Float, Device::Cpu));
        assert_eq!(conv.forward_t(&x, false).size(), [3, 10]);
        assert_eq!(mlp.forward_t(&x, false).size(), [3, 10]);
        let vars = vs.variables();
        assert_eq!(vars["c.block1.conv.weight"].size(), [192, 192, 3, 3]);
        assert_eq!(vars["c.block2.conv.weight"].size(), [192, 192, 1, 1]);
        assert_eq!(vars["c.fc.weight"].size(), [10, 192]);
        // MultLayer: 12288 → min(20·10, 2048) = 200 → 200 → 10, no bias before BN.
        assert_eq!(vars["m.fc1.weight"].size(), [200, 192 * 64]);
        assert!(!vars.contains_key("m.fc1.bias"));
        assert_eq!(vars["m.fc3.weight"].size(), [10, 200]);
        // Official init: conv std sqrt(2 / (3·3·192)).
        let std = vars["c.block1.conv.weight"].std(false).double_value(&[]);
        assert!((std - (2.0f64 / (9.0 * 192.0)).sqrt()).abs() < 2e-3, "{std}");
    }
}
