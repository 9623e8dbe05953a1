//! Split-brain autoencoders as a pretext task (Zhang, Isola, Efros, CVPR 2017): on Lab
//! images, the `l_to_ab` half predicts ab from L and the `ab_to_l` half predicts L from ab, each
//! at every location of a `1 / target_downsample` grid, as classes over quantised values
//! (default: ab over the in-gamut ab bins with soft targets, L over 100 bins) or by L2
//! regression; the loss is the sum of both. The two halves ([`SplitEncoder`]) are the encoder.
use crate::config::{SplitBrainConfig, SplitLoss};
use crate::encoder::SplitEncoder;
use selfsup_colorization::net::{pixel_accuracy, soft_cross_entropy, DenseHead};
use selfsup_colorization::pictures::write_grid;
use selfsup_colorization::{observe_prior, ColorizationError};
use selfsup_core::encoders::Encoder;
use selfsup_core::method::{first_largest, single_view};
use selfsup_core::reduce::mean_all;
use selfsup_core::{BuildContext, InputNormalization, PretextMethod, StepOutput};
use selfsup_data::{Batch, Op, Pipeline};
use selfsup_dist::Collectives;
use selfsup_lab::{lab_to_rgb, rgb_to_lab, AbBins, LBins, Prior};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// The name of the prior's state tensors (`split_brain.prior.counts`, `.images`).
const PRIOR: &str = "split_brain.prior";

/// The split-brain method: the two halves and a dense head on each.
#[derive(Debug)]
pub struct SplitBrain {
    encoder: SplitEncoder,
    /// On `l_to_ab`: ab bins (or 2 values).
    head_ab: DenseHead,
    /// On `ab_to_l`: L bins (or 1 value).
    head_l: DenseHead,
    ab_bins: AbBins,
    l_bins: LBins,
    prior: Prior,
    cfg: SplitBrainConfig,
    image_channels: i64,
    device: tch::Device,
    /// The first training images seen, drawn in the sample grid after each epoch.
    samples: Option<Tensor>,
    /// The data-parallel job (world size > 1), whose ranks' classes all feed the prior.
    group: Option<Arc<dyn Collectives>>,
}

/// What both halves predict for a batch.
#[derive(Debug)]
pub struct Predictions {
    /// From L: `(N, Q, h, w)` ab-bin scores, or `(N, 2, h, w)` ab / 110 in regression.
    pub ab: Tensor,
    /// From ab: `(N, l_bins, h, w)` L-bin scores, or `(N, 1, h, w)` L / 50 − 1 in regression.
    pub l: Tensor,
}

/// The ab loss, the L loss and the metrics of a step.
type Losses = (Tensor, Tensor, Vec<(String, Tensor)>);

fn config_error(msg: String) -> ColorizationError {
    ColorizationError::Config { method: "split-brain", msg }
}

impl SplitBrain {
    /// Builds the halves on `root / "encoder"` and the heads on `root / "head_ab"` and
    /// `root / "head_l"`; refuses images that are not RGB.
    pub fn new(
        root: &tch::nn::Path,
        cfg: SplitBrainConfig,
        ctx: &BuildContext,
    ) -> Result<Self, ColorizationError> {
        cfg.check().map_err(config_error)?;
        if ctx.image_channels != 3 {
            return Err(config_error(format!(
                "the images have {} channel(s); split-brain predicts L from ab and needs RGB",
                ctx.image_channels
            )));
        }
        let ab_bins = match &cfg.ab_bins {
            Some(file) => AbBins::from_npy(file, cfg.grid)?,
            None => AbBins::in_gamut(cfg.grid)?,
        };
        if cfg.neighbours > ab_bins.len() {
            return Err(config_error(format!(
                "neighbours = {} exceeds the {} ab bins",
                cfg.neighbours,
                ab_bins.len()
            )));
        }
        let l_bins = LBins::new(cfg.l_bins)?;
        let encoder = SplitEncoder::new(&(root / "encoder"), &ctx.encoder)
            .map_err(|e| ColorizationError::Encoder(Box::new(e)))?
            .with_features(cfg.features);
        let (ab_out, l_out) = match cfg.loss {
            SplitLoss::Classification => (ab_bins.len() as i64, l_bins.len()),
            SplitLoss::Regression => (2, 1),
        };
        let head_ab = DenseHead::new(
            &(root / "head_ab"),
            encoder.l_to_ab().out_channels(),
            cfg.head_width,
            ab_out,
        );
        let head_l = DenseHead::new(
            &(root / "head_l"),
            encoder.ab_to_l().out_channels(),
            cfg.head_width,
            l_out,
        );
        let prior = Prior::new(ab_bins.len(), cfg.prior_images);
        Ok(SplitBrain {
            encoder,
            head_ab,
            head_l,
            ab_bins,
            l_bins,
            prior,
            cfg,
            image_channels: ctx.image_channels,
            device: ctx.device,
            samples: None,
            group: ctx.job(),
        })
    }

    /// The config it was built with.
    pub fn config(&self) -> &SplitBrainConfig {
        &self.cfg
    }

    /// The two halves.
    pub fn split_encoder(&self) -> &SplitEncoder {
        &self.encoder
    }

    /// The running prior of the (optional) ab rebalancing.
    pub fn prior(&self) -> &Prior {
        &self.prior
    }

    fn target_size(&self, h: i64, w: i64) -> [i64; 2] {
        let d = self.cfg.target_downsample;
        [(h / d).max(1), (w / d).max(1)]
    }

    /// Both halves' predictions on Lab images: ab from L alone, L from ab alone.
    ///
    /// # Shapes
    /// `lab`: `(N, 3, H, W)`; see [`Predictions`] (`h = H / target_downsample`).
    pub fn predict_t(&self, lab: &Tensor, train: bool) -> Predictions {
        let s = lab.size();
        let size = self.target_size(s[2], s[3]);
        let (l_in, ab_in) = SplitEncoder::inputs(lab);
        let from_l = self.encoder.l_to_ab().forward_t(&l_in, train);
        let from_ab = self.encoder.ab_to_l().forward_t(&ab_in, train);
        Predictions {
            ab: self.head_ab.forward_t(&from_l, size, train),
            l: self.head_l.forward_t(&from_ab, size, train),
        }
    }

    /// The sample pictures of images: each direction's prediction (decoded by annealed mean
    /// in classification, upsampled bilinearly) put together with the true other channels,
    /// back to sRGB and clipped; computed in eval mode.
    ///
    /// # Shapes
    /// `rgb`: `(N, 3, H, W)` in `[0, 1]`; returns two `(N, 3, H, W)` in `[0, 1]`: the true L
    /// with the ab predicted from it, and the L predicted from the true ab with that ab.
    pub fn pictures(&self, rgb: &Tensor) -> Result<(Tensor, Tensor), ColorizationError> {
        tch::no_grad(|| {
            let lab = rgb_to_lab(&rgb.to_kind(Kind::Float))?;
            let s = lab.size();
            let p = self.predict_t(&lab, false);
            let (ab, l) = match self.cfg.loss {
                SplitLoss::Classification => {
                    let t = self.cfg.temperature;
                    let l_values = self.l_bins.centres_t(p.l.device());
                    (
                        self.ab_bins.decode(&p.ab, t)?,
                        selfsup_lab::annealed_mean(&p.l, &l_values, t)?,
                    )
                }
                SplitLoss::Regression => {
                    (p.ab.to_kind(Kind::Float) * 110.0, (p.l.to_kind(Kind::Float) + 1.0) * 50.0)
                }
            };
            let up = |x: Tensor| x.upsample_bilinear2d([s[2], s[3]], false, None, None);
            let (ab, l) = (up(ab), up(l).clamp(0.0, 100.0));
            let from_l = lab_to_rgb(&Tensor::cat(&[lab.narrow(1, 0, 1), ab], 1))?;
            let from_ab = lab_to_rgb(&Tensor::cat(&[l, lab.narrow(1, 1, 2)], 1))?;
            Ok((from_l.clamp(0.0, 1.0), from_ab.clamp(0.0, 1.0)))
        })
    }

    /// The data pipeline of the single view: optional random crop, optional horizontal flip;
    /// values in `[0, 1]`.
    pub fn view_pipeline(&self) -> Pipeline {
        let mut ops = Vec::new();
        if let Some(size) = self.cfg.crop {
            ops.push(Op::RandomCrop { size, padding: 0 });
        }
        if self.cfg.flip {
            ops.push(Op::HorizontalFlip { p: 0.5 });
        }
        Pipeline { ops }
    }

    /// The classification losses: soft-encoded (and optionally rebalanced) ab, hard L classes.
    fn classification(
        &mut self,
        p: &Predictions,
        ab_t: &Tensor,
        l_t: &Tensor,
        n: i64,
        train: bool,
    ) -> Result<Losses, ColorizationError> {
        let (targets, classes) = tch::no_grad(|| -> Result<_, ColorizationError> {
            let t = self.ab_bins.soft_encode(ab_t, self.cfg.neighbours, self.cfg.sigma)?;
            let c = first_largest(&t, 1)?;
            Ok((t, c))
        })?;
        let weights = if self.cfg.rebalance {
            if train {
                observe_prior(&mut self.prior, &classes, n as u64, self.group.as_ref())?;
            }
            let w = self.prior.weights(
                self.ab_bins.centres(),
                self.cfg.prior_sigma,
                self.cfg.lambda,
            )?;
            let w = Tensor::from_slice(&w).to_kind(Kind::Float).to_device(classes.device());
            Some(w.index_select(0, &classes.flatten(0, -1)).view_as(&classes))
        } else {
            None
        };
        let ab_loss = soft_cross_entropy(&p.ab, &targets, weights.as_ref());
        let l_classes = self.l_bins.classes(l_t);
        let one_hot =
            l_classes.one_hot(self.l_bins.len()).to_kind(Kind::Float).permute([0, 3, 1, 2]);
        let l_loss = soft_cross_entropy(&p.l, &one_hot, None);
        let metrics = vec![
            ("ab_acc".to_string(), pixel_accuracy(&p.ab, &classes)),
            ("l_acc".to_string(), pixel_accuracy(&p.l, &l_classes)),
        ];
        Ok((ab_loss, l_loss, metrics))
    }
}

impl PretextMethod for SplitBrain {
    fn name(&self) -> &str {
        "split-brain"
    }

    fn views(&self) -> Vec<Pipeline> {
        vec![self.view_pipeline()]
    }

    fn encoder(&self) -> &dyn Encoder {
        &self.encoder
    }

    /// Pixels in `[0, 1]` (mean 0, std 1): the encoder converts them to Lab itself.
    fn input_normalization(&self) -> Option<InputNormalization> {
        let c = self.image_channels as usize;
        Some(InputNormalization { mean: vec![0.0; c], std: vec![1.0; c] })
    }

    fn step(&mut self, batch: &Batch, train: bool) -> selfsup_core::Result<StepOutput> {
        let images = single_view(batch, "split-brain")?;
        let n = images.size()[0];
        if train && self.samples.is_none() && self.cfg.samples > 0 {
            let k = (self.cfg.samples as i64).min(n);
            self.samples = Some(images.narrow(0, 0, k).to_device(tch::Device::Cpu).copy());
        }
        let lab = tch::no_grad(|| rgb_to_lab(&images.to_kind(Kind::Float)))
            .map_err(ColorizationError::from)?;
        let s = lab.size();
        let size = self.target_size(s[2], s[3]);
        let (ab_t, l_t) = tch::no_grad(|| {
            (
                lab.narrow(1, 1, 2).adaptive_avg_pool2d(size),
                lab.narrow(1, 0, 1).adaptive_avg_pool2d(size),
            )
        });
        let p = self.predict_t(&lab, train);
        let (ab_loss, l_loss, mut metrics) = match self.cfg.loss {
            SplitLoss::Classification => self.classification(&p, &ab_t, &l_t, n, train)?,
            SplitLoss::Regression => {
                let (l_in, ab_in) = SplitEncoder::inputs(&Tensor::cat(&[&l_t, &ab_t], 1));
                let ab_loss = mean_all(&(p.ab.to_kind(Kind::Float) - ab_in).square());
                let l_loss = mean_all(&(p.l.to_kind(Kind::Float) - l_in).square());
                (ab_loss, l_loss, Vec::new())
            }
        };
        metrics.push(("ab_loss".to_string(), ab_loss.detach()));
        metrics.push(("l_loss".to_string(), l_loss.detach()));
        Ok(StepOutput { loss: ab_loss + l_loss, metrics, inputs: n })
    }

    fn write_epoch_artifacts(
        &mut self,
        epoch: u64,
        _last: bool,
        run_dir: &std::path::Path,
    ) -> selfsup_core::Result<()> {
        let Some(samples) = &self.samples else { return Ok(()) };
        let rgb = samples.to_device(self.device).to_kind(Kind::Float);
        let (from_l, from_ab) = self.pictures(&rgb)?;
        let path = run_dir.join("samples").join(format!("epoch_{epoch:04}.png"));
        write_grid(&path, &[&rgb, &from_l, &from_ab])?;
        Ok(())
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.prior.state(PRIOR)
    }

    fn load_state_tensors(&mut self, tensors: &[(String, Tensor)]) -> selfsup_core::Result<()> {
        self.prior.load(PRIOR, tensors).map_err(ColorizationError::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfsup_core::encoders::AlexnetVariant;
    use selfsup_core::EncoderConfig;
    use tch::nn::{self, OptimizerConfig};
    use tch::Device;

    fn ctx() -> BuildContext {
        BuildContext {
            device: Device::Cpu,
            seed: 0,
            num_train_images: 8,
            image_channels: 3,
            image_size: 32,
            // Width 6: halves of width 3, whose scaled widths add up exactly.
            encoder: EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 6 },
            group: None,
        }
    }

    fn small() -> SplitBrainConfig {
        SplitBrainConfig { head_width: 16, l_bins: 20, ..SplitBrainConfig::default() }
    }

    /// Smooth colour images in [0, 1], the same for the same `seed` whatever other tests do
    /// meanwhile (no draw from libtorch's global generator, which parallel tests share).
    fn images(n: i64, seed: i64) -> Tensor {
        let x = (Tensor::arange(n * 3 * 8 * 8, (Kind::Float, Device::Cpu)) * (0.61 + seed as f64))
            .sin()
            .view([n, 3, 8, 8])
            * 0.5
            + 0.5;
        x.upsample_bilinear2d([32, 32], false, None, None).clamp(0.0, 1.0)
    }

    fn batch(x: Tensor) -> Batch {
        Batch::unlabeled(x)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn halves_concatenate_to_the_unsplit_widths_and_bad_encoders_are_named() {
        let mut r = selfsup_core::Registry::new();
        crate::register(&mut r);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = r
            .build("split-brain", &vs.root(), &serde_json::to_value(small()).unwrap(), &ctx())
            .unwrap();
        let vars = vs.variables();
        assert_eq!(vars["encoder.l_to_ab.conv1.weight"].size(), [3, 1, 5, 5]);
        assert_eq!(vars["encoder.ab_to_l.conv1.weight"].size(), [3, 2, 5, 5]);
        assert_eq!(vars["head_l.out.weight"].size(), [20, 16, 1, 1]);
        let x = images(2, 0);
        let taps = tch::no_grad(|| m.encoder().features_t(&x, false));
        let widths: Vec<i64> = taps.iter().map(|(_, t)| t.size()[1]).collect();
        let unsplit = selfsup_core::encoders::alexnet::channels(6);
        assert_eq!(widths, unsplit);
        assert_eq!(m.encoder().out_channels(), unsplit[4]);
        let upto = tch::no_grad(|| m.encoder().features_upto_t(&x, "conv2", false));
        assert_eq!(upto.len(), 2);
        assert!(max_diff(&upto[1].1, &taps[1].1) < 1e-6);
        for (encoder, want) in [
            (EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 5 }, "width = 5"),
            (
                EncoderConfig::Resnet18 { stem: selfsup_core::encoders::ResnetStem::Cifar },
                "encoder `resnet18` has no width",
            ),
        ] {
            let c = BuildContext { encoder, ..ctx() };
            let err = r.build("split-brain", &vs.root(), &serde_json::json!({}), &c);
            let err = err.err().unwrap().to_string();
            assert!(err.contains(want), "{err}");
        }
        let err = r.build("split-brain", &vs.root(), &serde_json::json!({"loss": "l1"}), &ctx());
        assert!(err.err().unwrap().to_string().contains("unknown variant `l1`"));
    }

    #[test]
    fn a_half_alone_is_its_slice_of_the_concatenation_over_the_same_weights() {
        use crate::config::SplitFeatures;
        let x = images(2, 3);
        let build = |features| {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let m = SplitBrain::new(&vs.root(), SplitBrainConfig { features, ..small() }, &ctx())
                .unwrap();
            // The same weights whatever the view: the view adds no variable.
            vs.set_kind(Kind::Float);
            tch::no_grad(|| {
                // Seeded by name, not drawn: the same weights in each build (running
                // statistics keep their initial mean 0 and variance 1).
                for (name, mut v) in vs.variables() {
                    if name.contains("running") {
                        continue;
                    }
                    let k = name.len() as f64;
                    let s = v.size();
                    let n = s.iter().product::<i64>();
                    let w = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * (0.37 + k)).sin();
                    v.copy_(&(w.view(s.as_slice()) * 0.1));
                }
            });
            let taps = tch::no_grad(|| m.encoder().features_t(&x, false));
            let out = m.encoder().out_channels();
            (vs.variables().len(), taps, out)
        };
        let (n_both, both, out_both) = build(SplitFeatures::Both);
        let (n_l, l, out_l) = build(SplitFeatures::LToAb);
        let (n_ab, ab, out_ab) = build(SplitFeatures::AbToL);
        assert_eq!((n_both, n_l), (n_ab, n_ab));
        assert_eq!(out_l + out_ab, out_both);
        for ((b, l), ab) in both.iter().zip(&l).zip(&ab) {
            assert_eq!(b.0, l.0);
            let cl = l.1.size()[1];
            assert_eq!(cl + ab.1.size()[1], b.1.size()[1], "{}", b.0);
            assert!(max_diff(&b.1.narrow(1, 0, cl), &l.1) < 1e-6, "{}", b.0);
            assert!(max_diff(&b.1.narrow(1, cl, ab.1.size()[1]), &ab.1) < 1e-6, "{}", b.0);
        }
        let c: SplitBrainConfig = serde_json::from_str(r#"{"features": "ab_to_l"}"#).unwrap();
        assert_eq!(c.features, SplitFeatures::AbToL);
    }

    #[test]
    fn each_half_sees_only_its_own_channels() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = SplitBrain::new(&vs.root(), small(), &ctx()).unwrap();
        let lab = rgb_to_lab(&images(3, 1)).unwrap();
        tch::manual_seed(9);
        let noise = Tensor::randn([3, 3, 32, 32], (Kind::Float, Device::Cpu)) * 20.0;
        let mask_l = Tensor::from_slice(&[1f32, 0.0, 0.0]).view([1, 3, 1, 1]);
        let new_l = &lab + &noise * &mask_l;
        let new_ab = &lab + &noise * (1.0 - &mask_l);
        // Train mode too: batch statistics stay within each half.
        for train in [false, true] {
            let p = tch::no_grad(|| m.predict_t(&lab, train));
            let q = tch::no_grad(|| m.predict_t(&new_ab, train));
            assert!(max_diff(&p.ab, &q.ab) == 0.0, "ab from L moved when ab changed");
            assert!(max_diff(&p.l, &q.l) > 1e-3, "L from ab did not see ab");
            let q = tch::no_grad(|| m.predict_t(&new_l, train));
            assert!(max_diff(&p.l, &q.l) == 0.0, "L from ab moved when L changed");
            assert!(max_diff(&p.ab, &q.ab) > 1e-3, "ab from L did not see L");
        }
        // The encoder's features split the same way: the first half of each tap's channels
        // is the L half.
        let rgb = images(3, 1);
        let f = tch::no_grad(|| m.encoder().forward_t(&rgb, false));
        let (l_in, _) = SplitEncoder::inputs(&lab);
        let l_only = tch::no_grad(|| m.split_encoder().l_to_ab().forward_t(&l_in, false));
        let d = max_diff(&f.narrow(1, 0, l_only.size()[1]), &l_only);
        let scale = l_only.abs().max().double_value(&[]);
        assert!(d <= 1e-5 * scale.max(1.0), "{d} at scale {scale}");
    }

    fn losses(cfg: SplitBrainConfig) -> Vec<f64> {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = SplitBrain::new(&vs.root(), cfg, &ctx()).unwrap();
        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        let b = batch(images(4, 2));
        let mut out = Vec::new();
        for _ in 0..25 {
            let o = m.step(&b, true).unwrap();
            assert_eq!(o.inputs, 4);
            out.push(o.loss.double_value(&[]));
            opt.backward_step(&o.loss);
        }
        out
    }

    #[test]
    fn loss_falls_on_a_fixed_batch_for_classification_and_regression() {
        let c = losses(small());
        assert!(*c.last().unwrap() < 0.6 * c[0], "classification losses {c:?}");
        let r = losses(SplitBrainConfig { loss: SplitLoss::Regression, ..small() });
        assert!(*r.last().unwrap() < 0.5 * r[0], "regression losses {r:?}");
        let w = losses(SplitBrainConfig { rebalance: true, ..small() });
        assert!(*w.last().unwrap() < 0.6 * w[0], "rebalanced losses {w:?}");
    }

    #[test]
    fn sample_grids_show_both_directions_for_both_losses() {
        for loss in [SplitLoss::Classification, SplitLoss::Regression] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = SplitBrainConfig { loss, samples: 2, ..small() };
            let mut m = SplitBrain::new(&vs.root(), cfg, &ctx()).unwrap();
            m.step(&batch(images(3, 5)), true).unwrap();
            let (from_l, from_ab) = m.pictures(&images(2, 5)).unwrap();
            for p in [&from_l, &from_ab] {
                assert_eq!(p.size(), [2, 3, 32, 32]);
                let (lo, hi) = (p.min().double_value(&[]), p.max().double_value(&[]));
                assert!((0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi), "{lo} {hi}");
            }
            // The L of the colourised column is the original's, up to the sRGB clipping.
            let l = |x: &Tensor| rgb_to_lab(x).unwrap().narrow(1, 0, 1);
            let gap = (l(&from_l) - l(&images(2, 5))).abs().mean(Kind::Float).double_value(&[]);
            assert!(gap < 5.0, "{loss:?}: mean L gap {gap}");
            let dir = tempfile::tempdir().unwrap();
            m.write_epoch_artifacts(2, false, dir.path()).unwrap();
            let png = image::open(dir.path().join("samples/epoch_0002.png")).unwrap().to_rgb8();
            // Two images, three columns: original, from L, from ab.
            assert_eq!(png.dimensions(), (3 * 32, 2 * 32), "{loss:?}");
        }
        // No samples asked for: nothing written.
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = SplitBrain::new(&vs.root(), SplitBrainConfig { samples: 0, ..small() }, &ctx())
            .unwrap();
        m.step(&batch(images(2, 5)), true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        m.write_epoch_artifacts(1, true, dir.path()).unwrap();
        assert!(!dir.path().join("samples").exists());
    }

    #[test]
    fn the_prior_travels_with_the_checkpoint() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SplitBrainConfig { rebalance: true, ..small() };
        let mut m = SplitBrain::new(&vs.root(), cfg.clone(), &ctx()).unwrap();
        m.step(&batch(images(3, 4)), true).unwrap();
        let saved = m.state_tensors();
        let mut n = SplitBrain::new(&vs.root(), cfg, &ctx()).unwrap();
        assert_eq!(n.prior().images, 0);
        n.load_state_tensors(&saved).unwrap();
        assert_eq!(n.prior(), m.prior());
        assert_eq!(n.prior().images, 3);
    }
}
