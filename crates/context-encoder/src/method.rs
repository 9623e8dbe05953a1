//! The context encoder as a pretext method (Pathak et al., CVPR 2016): the generator F is the
//! trunk under `encoder`, the channel-wise fully connected layer under `bottleneck` and the
//! up-convolution decoder under `decoder`; the discriminator D lives under `discriminator.`.
//!
//! Per step, with `x` the normalised image and `M` the step's masks (1 = hidden):
//! - input `(1 − M) ⊙ x` with the hidden pixels at the dataset mean (0 after normalisation);
//! - `L_rec = Σ W ⊙ (x − F(input))² / (C · #{W > 0})`: the weights `W` are 1 in the hole,
//!   `overlap_weight` (10) in the `overlap`-pixel border around it and 0 elsewhere, so only the
//!   masked pixels (and the border the paper also predicts) count;
//! - the fake image is `x` with `F(input)` pasted into the hole and its border;
//!   `L_adv = −log D(fake)` (the non-saturating generator loss of the official code), scored
//!   with D's variables held constant ([`Discriminator::forward_frozen`]: the backward computes
//!   no gradient for D, which its own step would clear);
//! - the step's loss, for the run's optimizer (encoder, bottleneck, decoder), is
//!   `λ_rec · L_rec + λ_adv · L_adv` (0.999 / 0.001), or `L_rec` alone without the adversary.
//!
//! Then the trainer steps the discriminator with its own optimizer on
//! `−log D(x) − log(1 − D(fake))` (the extra loss `discriminator`, logged as
//! `discriminator_loss`), the fake detached from the generator: generator and discriminator
//! are updated alternately, each with its own optimizer, learning rate and checkpointed state.
//! Masks are drawn from a [`StepRng`] stream of the run seed, whose step count travels with the
//! checkpoint.
use crate::bottleneck::ChannelwiseFc;
use crate::config::ContextEncoderConfig;
use crate::discriminator::Discriminator;
use crate::ContextEncoderError;
use selfsup_core::encoders::{try_build_encoder, Encoder};
use selfsup_core::method::{single_view, ExtraOptimizer, StepRng};
use selfsup_core::reduce::sum_all;
use selfsup_core::{BuildContext, InputNormalization, PretextMethod, StepOutput};
use selfsup_data::masks::{dilate, draw_masks, fill_masked};
use selfsup_data::{Batch, Op, Pipeline};
use selfsup_reconstruction::{feature_shape, PixelStats, SampleGrid, UpDecoder};
use tch::nn;
use tch::{Kind, Tensor};

/// The registry name.
pub const NAME: &str = "context-encoder";

/// The discriminator's variable path and the name of its optimizer (and of its loss).
pub const DISCRIMINATOR: &str = "discriminator";

/// What a step feeds the generator and scores it against.
#[derive(Debug)]
pub struct Prepared {
    /// The hidden pixels, 1 where hidden. `(B, 1, H, W)`.
    pub masks: Tensor,
    /// The normalised clean images. `(B, C, H, W)`.
    pub target: Tensor,
    /// The generator's input: `target` with the hidden pixels at 0, the dataset mean.
    /// `(B, C, H, W)`.
    pub input: Tensor,
    /// The weights of `L_rec`: 1 in the hole, `overlap_weight` in the border, 0 elsewhere.
    /// `(B, 1, H, W)`.
    pub weights: Tensor,
}

/// `L_rec`: the weighted squared error over the pixels of positive weight, in f32.
///
/// # Shapes
/// `pred`, `target`: `(B, C, H, W)`; `weights`: `(B, 1, H, W)`; returns a scalar,
/// `Σ weights ⊙ (pred − target)² / (C · #{weights > 0})` (0 when no weight is positive).
pub fn reconstruction_loss(pred: &Tensor, target: &Tensor, weights: &Tensor) -> Tensor {
    let c = pred.size()[1] as f64;
    let err = (pred.to_kind(Kind::Float) - target.to_kind(Kind::Float)).square() * weights;
    let counted = weights.gt(0.0).sum(Kind::Float).clamp_min(1.0) * c;
    sum_all(&err) / counted
}

/// The context encoder: generator (trunk, bottleneck, decoder) and discriminator.
#[derive(Debug)]
pub struct ContextEncoder {
    encoder: Box<dyn Encoder>,
    bottleneck: Option<ChannelwiseFc>,
    decoder: UpDecoder,
    discriminator: Option<Discriminator>,
    stats: PixelStats,
    cfg: ContextEncoderConfig,
    /// Channels and side of the (square) images the method is built for.
    channels: i64,
    side: i64,
    overlap: usize,
    /// Seeds each step's masks; checkpointed, so a resumed run draws the same.
    rng: StepRng,
    /// The real and fake images of the latest training step, detached, for the
    /// discriminator's step.
    pending: Option<(Tensor, Tensor)>,
    samples: SampleGrid,
}

impl ContextEncoder {
    /// Builds the trunk on `root / "encoder"`, the bottleneck on `root / "bottleneck"`, the
    /// decoder on `root / "decoder"` (sized by the trunk's feature map for `cfg.size`, else
    /// `ctx.image_size`, pixel images) and, when adversarial, the discriminator on
    /// `root / "discriminator"`.
    pub fn new(
        root: &nn::Path,
        cfg: ContextEncoderConfig,
        ctx: &BuildContext,
    ) -> Result<Self, ContextEncoderError> {
        cfg.check().map_err(ContextEncoderError::Config)?;
        let channels = ctx.image_channels;
        let stats = PixelStats::new(&cfg.mean, &cfg.std, channels, ctx.device)
            .map_err(|e| ContextEncoderError::Config(e.to_string()))?;
        let encoder = try_build_encoder(&(root / "encoder"), &ctx.encoder, channels)
            .map_err(|e| ContextEncoderError::Encoder(Box::new(e)))?;
        let side = cfg.size.map_or(ctx.image_size, |s| s as i64);
        let shape = feature_shape(&*encoder, channels, side, ctx.device)
            .map_err(|e| ContextEncoderError::Config(e.to_string()))?;
        let bottleneck = cfg.bottleneck.then(|| ChannelwiseFc::new(&(root / "bottleneck"), shape));
        let width = cfg.decoder_width.unwrap_or_else(|| UpDecoder::default_width(shape[0]));
        let ups = UpDecoder::ups_for(shape[1], side);
        let decoder = UpDecoder::new(&(root / "decoder"), shape[0], channels, width, ups);
        let discriminator = cfg.adversarial.then(|| {
            Discriminator::new(&(root / DISCRIMINATOR), channels, side, cfg.discriminator_width)
        });
        let overlap = cfg.overlap_for(side);
        let rng =
            StepRng::new(ctx.seed, 0x00c0_47e7_e4c0, "context_encoder.draws").for_rank(ctx.rank());
        let samples = SampleGrid::new(cfg.sample_every, cfg.samples);
        Ok(ContextEncoder {
            encoder,
            bottleneck,
            decoder,
            discriminator,
            stats,
            cfg,
            channels,
            side,
            overlap,
            rng,
            pending: None,
            samples,
        })
    }

    /// The config it was built with.
    pub fn config(&self) -> &ContextEncoderConfig {
        &self.cfg
    }

    /// The width in pixels of the border around the hole that is predicted and weighted.
    pub fn overlap(&self) -> usize {
        self.overlap
    }

    /// Masks, target, input and loss weights for a batch of images, with the next step's
    /// masks.
    ///
    /// # Shapes
    /// `images`: `(B, C, H, W)` pixel values in `[0, 1]`, `H = W` the side the method is
    /// built for.
    pub fn prepare(&mut self, images: &Tensor) -> Result<Prepared, ContextEncoderError> {
        let s = images.size();
        if s.len() != 4 || s[1] != self.channels || s[2] != self.side || s[3] != self.side {
            return Err(ContextEncoderError::Batch(format!(
                "images of shape {s:?}, the method is built for {}x{1}x{1} (set \
                 method_config.size)",
                self.channels, self.side
            )));
        }
        let (b, side) = (s[0] as usize, self.side as usize);
        let masks = draw_masks(&self.cfg.mask, b, side, side, &mut self.rng.next_step())?
            .to_device(images.device());
        let target = self.stats.normalize(images);
        let mean = Tensor::zeros([self.channels], (Kind::Float, images.device()));
        let input = fill_masked(&target, &masks, &mean);
        let border = dilate(&masks, self.overlap) - &masks;
        let weights = &masks + border * self.cfg.overlap_weight;
        Ok(Prepared { masks, target, input, weights })
    }

    /// The generator F: the inpainted image, all of it (the loss and the fake look at the
    /// hole and its border only).
    ///
    /// # Shapes
    /// `input`: `(B, C, H, W)` normalised; returns `(B, C, H, W)`.
    pub fn inpaint_t(&self, input: &Tensor, train: bool) -> Tensor {
        let mut feats = nn::ModuleT::forward_t(&*self.encoder, input, train);
        if let Some(fc) = &self.bottleneck {
            feats = fc.forward(&feats);
        }
        let s = input.size();
        self.decoder.forward_t(&feats, [s[2], s[3]], train)
    }

    /// The discriminator's loss `−log D(real) − log(1 − D(fake))` (each term a batch mean, in
    /// f32); `None` without the adversary.
    ///
    /// # Shapes
    /// `real`, `fake`: `(B, C, H, W)` normalised.
    pub fn discriminator_loss(&self, real: &Tensor, fake: &Tensor) -> Option<Tensor> {
        let d = self.discriminator.as_ref()?;
        let real = d.forward(real).to_kind(Kind::Float).neg().softplus().mean(Kind::Float);
        let fake = d.forward(fake).to_kind(Kind::Float).softplus().mean(Kind::Float);
        Some(real + fake)
    }

    /// The data pipeline of the single view: pixel values in `[0, 1]` (masked and normalised
    /// in the step), resized and centre-cropped to `size` and flipped where configured.
    pub fn view_pipeline(&self) -> Pipeline {
        let mut ops = Vec::new();
        if let Some(size) = self.cfg.size {
            ops.push(Op::Resize { size });
            ops.push(Op::CenterCrop { size });
        }
        if self.cfg.horizontal_flip {
            ops.push(Op::HorizontalFlip { p: 0.5 });
        }
        Pipeline { ops }
    }
}

impl PretextMethod for ContextEncoder {
    fn name(&self) -> &str {
        NAME
    }

    fn views(&self) -> Vec<Pipeline> {
        vec![self.view_pipeline()]
    }

    fn encoder(&self) -> &dyn Encoder {
        &*self.encoder
    }

    /// The configured pixel statistics (the step normalises; the view does not).
    fn input_normalization(&self) -> Option<InputNormalization> {
        Some(InputNormalization { mean: self.cfg.mean.clone(), std: self.cfg.std.clone() })
    }

    /// The generator's loss; reports `rec_loss` and, with the adversary, `adv_loss`.
    fn step(&mut self, batch: &Batch, train: bool) -> selfsup_core::Result<StepOutput> {
        let images = single_view(batch, NAME)?;
        let p = self.prepare(images)?;
        let pred = self.inpaint_t(&p.input, train);
        let rec = reconstruction_loss(&pred, &p.target, &p.weights);
        let region = p.weights.gt(0.0).expand_as(&p.target);
        let fake = pred.to_kind(p.target.kind()).where_self(&region, &p.target);
        let mut metrics = vec![("rec_loss".to_string(), rec.detach())];
        let loss = match &self.discriminator {
            Some(d) => {
                let adv =
                    d.forward_frozen(&fake).to_kind(Kind::Float).neg().softplus().mean(Kind::Float);
                metrics.push(("adv_loss".to_string(), adv.detach()));
                if train {
                    self.pending = Some((p.target.detach(), fake.detach()));
                }
                rec * self.cfg.lambda_rec + adv * self.cfg.lambda_adv
            }
            None => rec,
        };
        if train && self.samples.enabled() {
            let (input, fake) =
                tch::no_grad(|| (self.stats.denormalize(&p.input), self.stats.denormalize(&fake)));
            self.samples.keep(&[&input, &fake, images]);
        }
        Ok(StepOutput { loss, metrics, inputs: images.size()[0] })
    }

    /// The discriminator's loss on the real and fake images of the step just taken.
    fn extra_losses(&mut self, _batch: &Batch) -> selfsup_core::Result<Vec<(String, Tensor)>> {
        let Some((real, fake)) = self.pending.take() else {
            return Ok(Vec::new());
        };
        Ok(self
            .discriminator_loss(&real, &fake)
            .map(|l| vec![(DISCRIMINATOR.to_string(), l)])
            .unwrap_or_default())
    }

    /// With the adversary: the discriminator's optimizer over `discriminator.*`.
    fn extra_optimizers(&self) -> Vec<ExtraOptimizer> {
        if self.discriminator.is_none() {
            return Vec::new();
        }
        vec![ExtraOptimizer {
            name: DISCRIMINATOR.into(),
            prefix: format!("{DISCRIMINATOR}."),
            optimizer: self.cfg.discriminator_optimizer.clone(),
        }]
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        vec![self.rng.state()]
    }

    fn load_state_tensors(&mut self, tensors: &[(String, Tensor)]) -> selfsup_core::Result<()> {
        self.rng.load(tensors);
        Ok(())
    }

    /// The grid of masked inputs, predictions (pasted into the hole and border) and originals
    /// of the epoch's last step, every `sample_every` epochs and after the last.
    fn write_epoch_artifacts(
        &mut self,
        epoch: u64,
        last: bool,
        run_dir: &std::path::Path,
    ) -> selfsup_core::Result<()> {
        self.samples.write_if_due(epoch, last, run_dir).map_err(ContextEncoderError::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfsup_core::checkpoint::sorted_variables;
    use selfsup_core::encoders::AlexnetVariant;
    use selfsup_core::optim::{Optimizer, OptimizerConfig};
    use selfsup_core::EncoderConfig;
    use selfsup_data::masks::MaskConfig;
    use tch::Device;

    fn ctx() -> BuildContext {
        BuildContext {
            device: Device::Cpu,
            seed: 0,
            num_train_images: 8,
            image_channels: 3,
            image_size: 32,
            encoder: EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 4 },
            group: None,
        }
    }

    fn small() -> ContextEncoderConfig {
        ContextEncoderConfig { discriminator_width: 4, ..ContextEncoderConfig::default() }
    }

    /// Smooth colourful 32-pixel images in [0, 1], the same for the same `seed` whatever
    /// other tests do meanwhile (no draw from libtorch's global generator, which parallel
    /// tests share).
    fn images(n: i64, seed: i64) -> Tensor {
        let x = (Tensor::arange(n * 3 * 4 * 4, (Kind::Float, Device::Cpu)) * (0.61 + seed as f64))
            .sin()
            .view([n, 3, 4, 4])
            * 0.5
            + 0.5;
        x.upsample_bilinear2d([32, 32], false, None, None).clamp(0.0, 1.0)
    }

    fn batch(x: Tensor) -> Batch {
        Batch::unlabeled(x)
    }

    fn copies(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        sorted_variables(vs).into_iter().map(|(n, t)| (n, t.copy())).collect()
    }

    #[test]
    fn builds_through_the_registry_and_refuses_bad_values() {
        let mut r = selfsup_core::Registry::new();
        crate::register(&mut r);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = serde_json::to_value(small()).unwrap();
        let m = r.build(NAME, &vs.root(), &cfg, &ctx()).unwrap();
        assert_eq!(m.name(), NAME);
        let vars = vs.variables();
        // AlexNet width 4 ends in 11 channels at 8x8.
        assert_eq!(vars["bottleneck.weight"].size(), [11, 64, 64]);
        assert_eq!(vars["decoder.up1.weight"].size(), [11, 8, 4, 4]);
        assert_eq!(vars["decoder.out.weight"].size(), [3, 8, 3, 3]);
        assert_eq!(vars["discriminator.conv1.weight"].size(), [4, 3, 4, 4]);
        let extras = m.extra_optimizers();
        assert_eq!(extras.len(), 1);
        assert_eq!(
            (extras[0].name.as_str(), extras[0].prefix.as_str()),
            ("discriminator", "discriminator.")
        );
        // Without the adversary there is no discriminator at all.
        let vs = nn::VarStore::new(Device::Cpu);
        let plain = serde_json::json!({"adversarial": false, "bottleneck": false});
        let m = r.build(NAME, &vs.root(), &plain, &ctx()).unwrap();
        assert!(m.extra_optimizers().is_empty());
        assert!(vs
            .variables()
            .keys()
            .all(|k| k.starts_with("encoder.") || k.starts_with("decoder.")));
        for (cfg, want) in [
            (serde_json::json!({"overlap_weight": -2}), "overlap_weight = -2"),
            (
                serde_json::json!({"mask": {"kind": "random_blocks", "coverage": 1.5}}),
                "mask.coverage = 1.5",
            ),
            (serde_json::json!({"mask": {"kind": "ring"}}), "ring"),
            (serde_json::json!({"std": [0.5, 0.5, 0]}), "std entry 0 is not positive"),
            (serde_json::json!({"lambda": 1}), "unknown field `lambda`"),
        ] {
            let e = r.build(NAME, &vs.root(), &cfg, &ctx()).err().unwrap().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn the_input_carries_nothing_of_the_hole_and_the_weights_mark_hole_and_border() {
        for mask in [
            MaskConfig::default(),
            MaskConfig::RandomBlocks { coverage: 0.25, min_side: 0.125, max_side: 0.25 },
            MaskConfig::RandomRegions { coverage: 0.25, cells: 4 },
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = ContextEncoderConfig { mask: mask.clone(), ..small() };
            let mut m = ContextEncoder::new(&vs.root(), cfg, &ctx()).unwrap();
            let a = images(3, 1);
            let p = m.prepare(&a).unwrap();
            // Images that differ from `a` only inside the hole give the same input.
            let hole = p.masks.gt(0.5).expand_as(&a);
            let b = images(3, 2).where_self(&hole, &a);
            m.rng.draws = 0;
            let q = m.prepare(&b).unwrap();
            assert!(q.masks.equal(&p.masks), "{mask:?}");
            assert!(q.input.equal(&p.input), "{mask:?}: the input shows the hole");
            assert!(!q.target.equal(&p.target));
            // The hole holds the mean (0 once normalised); the rest is the normalised image.
            assert_eq!(p.input.masked_select(&hole).abs().max().double_value(&[]), 0.0);
            let seen = hole.logical_not();
            assert!(p.input.masked_select(&seen).equal(&p.target.masked_select(&seen)));
            // Weights: 1 on the hole, 10 on the one-pixel border, 0 elsewhere.
            assert_eq!(m.overlap(), 1);
            let w = &p.weights;
            let hole1 = p.masks.gt(0.5);
            assert!(w.masked_select(&hole1).eq(1.0).all().int64_value(&[]) == 1);
            let grown = dilate(&p.masks, 1).gt(0.5);
            let border = grown.logical_and(&hole1.logical_not());
            assert!(w.masked_select(&border).eq(10.0).all().int64_value(&[]) == 1);
            assert_eq!(
                w.masked_select(&grown.logical_not()).abs().sum(Kind::Float).double_value(&[]),
                0.0
            );
        }
        // The central hole of 32-pixel images: 16x16, and its one-pixel border 18x18 - 16x16.
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = ContextEncoder::new(&vs.root(), small(), &ctx()).unwrap();
        let p = m.prepare(&images(1, 0)).unwrap();
        assert_eq!(p.weights.eq(1.0).sum(Kind::Int64).int64_value(&[]), 256);
        assert_eq!(p.weights.eq(10.0).sum(Kind::Int64).int64_value(&[]), 18 * 18 - 256);
    }

    #[test]
    fn the_reconstruction_loss_counts_only_hole_and_border_with_the_border_weight() {
        // One 1-channel 6x6 image: a 2x2 hole at rows/columns 2..4, a one-pixel border.
        let masks = Tensor::zeros([1, 1, 6, 6], (Kind::Float, Device::Cpu));
        let _ = masks.narrow(2, 2, 2).narrow(3, 2, 2).fill_(1.0);
        let weights = &masks + (dilate(&masks, 1) - &masks) * 10.0;
        let target = Tensor::zeros([1, 2, 6, 6], (Kind::Float, Device::Cpu));
        let at = |y: i64, x: i64| {
            let pred = target.copy();
            let _ = pred.get(0).get(1).get(y).get(x).fill_(1.0);
            reconstruction_loss(&pred, &target, &weights).double_value(&[])
        };
        // 16 counted pixels (the 4x4 grown hole) of 2 channels.
        assert!((at(2, 3) - 1.0 / 32.0).abs() < 1e-7, "in the hole: {}", at(2, 3));
        assert!((at(1, 1) - 10.0 / 32.0).abs() < 1e-7, "on the border: {}", at(1, 1));
        assert_eq!(at(0, 0), 0.0, "outside");
        assert_eq!(at(5, 2), 0.0, "outside");
    }

    /// The trainer's two updates by hand: the generator's loss through the run's optimizer on
    /// everything but `discriminator.*`, then the discriminator's loss through its own.
    #[test]
    fn each_update_changes_only_its_own_network() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = ContextEncoder::new(&vs.root(), small(), &ctx()).unwrap();
        let trainable: Vec<(String, Tensor)> =
            sorted_variables(&vs).into_iter().filter(|(_, t)| t.requires_grad()).collect();
        let (d_params, g_params): (Vec<_>, Vec<_>) =
            trainable.into_iter().partition(|(n, _)| n.starts_with("discriminator."));
        let adam = OptimizerConfig::Adamw {
            lr: 1e-3,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut g_opt: Box<dyn Optimizer> = adam.build(&g_params).unwrap();
        let mut d_opt: Box<dyn Optimizer> =
            m.extra_optimizers()[0].optimizer.build(&d_params).unwrap();
        let b = batch(images(4, 3));
        let before = copies(&vs);
        let out = m.step(&b, true).unwrap();
        out.loss.backward();
        for (name, t) in &d_params {
            assert!(!t.grad().defined(), "the generator's backward reached {name}");
        }
        g_opt.step(&g_params, 1e-3).unwrap();
        let after_g = copies(&vs);
        for ((name, x), (_, y)) in before.iter().zip(&after_g) {
            let trainable_g = g_params.iter().any(|(n, _)| n == name);
            if name.starts_with("discriminator.") {
                assert!(x.equal(y), "the generator's update moved {name}");
            } else if trainable_g {
                assert!(!x.equal(y), "the generator's update left {name}");
            }
        }
        let losses = m.extra_losses(&b).unwrap();
        assert_eq!(losses.len(), 1);
        assert_eq!(losses[0].0, "discriminator");
        for (_, t) in &d_params {
            let mut t = t.shallow_clone();
            t.zero_grad();
        }
        losses[0].1.backward();
        d_opt.step(&d_params, 2e-4).unwrap();
        let after_d = copies(&vs);
        for ((name, x), (_, y)) in after_g.iter().zip(&after_d) {
            if name.starts_with("discriminator.") {
                assert!(!x.equal(y), "the discriminator's update left {name}");
            } else {
                assert!(x.equal(y), "the discriminator's update moved {name}");
            }
        }
        // The pending images are consumed: no second discriminator step on them.
        assert!(m.extra_losses(&b).unwrap().is_empty());
    }

    #[test]
    fn the_loss_falls_on_a_fixed_batch() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ContextEncoderConfig { adversarial: false, ..small() };
        let mut m = ContextEncoder::new(&vs.root(), cfg, &ctx()).unwrap();
        let mut opt = tch::nn::OptimizerConfig::build(tch::nn::Adam::default(), &vs, 1e-2).unwrap();
        let b = batch(images(4, 5));
        let mut losses = Vec::new();
        for _ in 0..40 {
            m.rng.draws = 0; // the same masks every step
            let out = m.step(&b, true).unwrap();
            losses.push(out.loss.double_value(&[]));
            opt.backward_step(&out.loss);
        }
        let last = *losses.last().unwrap();
        assert!(last < 0.5 * losses[0], "losses {losses:?}");
        // The step count travels with the checkpoint.
        let mut n = ContextEncoder::new(&vs.root(), small(), &ctx()).unwrap();
        n.load_state_tensors(&m.state_tensors()).unwrap();
        assert_eq!(n.rng.draws, 1);
    }
}
