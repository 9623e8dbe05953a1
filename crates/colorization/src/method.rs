//! Colorization as a pretext task (Zhang, Isola, Efros, ECCV 2016): the trunk sees the
//! lightness L of an image and predicts its ab at every location of a `1 / target_downsample`
//! grid, as a distribution over the in-gamut ab bins, trained with the class-rebalanced
//! cross-entropy against soft-encoded targets. The trunk (one input channel) is the encoder
//! that is evaluated, wrapped in [`LInput`] so that probes feed it RGB images.
use crate::config::ColorizationConfig;
use crate::net::{l_input, pixel_accuracy, soft_cross_entropy, DenseHead, LInput};
use crate::pictures::write_grid;
use crate::ColorizationError;
use selfsup_core::encoders::{try_build_encoder, Encoder};
use selfsup_core::method::{first_largest, single_view};
use selfsup_core::{BuildContext, InputNormalization, PretextMethod, StepOutput};
use selfsup_data::{Batch, Op, Pipeline};
use selfsup_dist::Collectives;
use selfsup_lab::{lab_to_rgb, rgb_to_lab, AbBins, Prior};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// The name of the prior's state tensors (`colorization.prior.counts`, `.images`).
const PRIOR: &str = "colorization.prior";

/// The colorization method: the L → ab trunk, its dense head over the ab bins, and the running
/// prior that weights the loss.
#[derive(Debug)]
pub struct Colorization {
    encoder: LInput,
    head: DenseHead,
    bins: AbBins,
    prior: Prior,
    cfg: ColorizationConfig,
    device: Device,
    image_channels: i64,
    /// The first training images seen in this process, shown in the sample grids.
    samples: Option<Tensor>,
    /// The data-parallel job (world size > 1), whose ranks' classes all feed the prior.
    group: Option<Arc<dyn Collectives>>,
}

/// Adds a training batch's classes (`images` images) to `prior`: in a data-parallel job every
/// rank's, gathered, so that every rank's prior (and so its loss weights) is the one a single
/// process at the global batch would hold. Used by colorization and split-brain.
pub fn observe_prior(
    prior: &mut Prior,
    classes: &Tensor,
    images: u64,
    group: Option<&Arc<dyn Collectives>>,
) -> Result<(), ColorizationError> {
    // Every rank counts the same images, so all take this branch together.
    if !prior.counting() {
        return Ok(());
    }
    match group {
        Some(g) => prior.observe(&g.all_gather(classes)?, images * g.world_size() as u64)?,
        None => prior.observe(classes, images)?,
    }
    Ok(())
}

fn config_error(msg: String) -> ColorizationError {
    ColorizationError::Config { method: "colorization", msg }
}

impl Colorization {
    /// Builds the trunk (one input channel) on `root / "encoder"` and the head on
    /// `root / "head"`; refuses images that are not RGB.
    pub fn new(
        root: &tch::nn::Path,
        cfg: ColorizationConfig,
        ctx: &BuildContext,
    ) -> Result<Self, ColorizationError> {
        cfg.check().map_err(config_error)?;
        if ctx.image_channels != 3 {
            return Err(config_error(format!(
                "the images have {} channel(s); colorization predicts colour and needs RGB",
                ctx.image_channels
            )));
        }
        let bins = match &cfg.ab_bins {
            Some(file) => AbBins::from_npy(file, cfg.grid)?,
            None => AbBins::in_gamut(cfg.grid)?,
        };
        if cfg.neighbours > bins.len() {
            return Err(config_error(format!(
                "neighbours = {} exceeds the {} ab bins",
                cfg.neighbours,
                bins.len()
            )));
        }
        let trunk = try_build_encoder(&(root / "encoder"), &ctx.encoder, 1)
            .map_err(|e| ColorizationError::Encoder(Box::new(e)))?;
        let head = DenseHead::new(
            &(root / "head"),
            trunk.out_channels(),
            cfg.head_width,
            bins.len() as i64,
        );
        let prior = Prior::new(bins.len(), cfg.prior_images);
        Ok(Colorization {
            encoder: LInput::new(trunk),
            head,
            bins,
            prior,
            cfg,
            device: ctx.device,
            image_channels: ctx.image_channels,
            samples: None,
            group: ctx.job(),
        })
    }

    /// The config it was built with.
    pub fn config(&self) -> &ColorizationConfig {
        &self.cfg
    }

    /// The ab bins (index = class).
    pub fn bins(&self) -> &AbBins {
        &self.bins
    }

    /// The running prior of the rebalancing weights.
    pub fn prior(&self) -> &Prior {
        &self.prior
    }

    /// The target resolution for images of `h × w`.
    fn target_size(&self, h: i64, w: i64) -> [i64; 2] {
        let d = self.cfg.target_downsample;
        [(h / d).max(1), (w / d).max(1)]
    }

    /// Per-bin ab scores of images.
    ///
    /// # Shapes
    /// `lab`: `(N, 3, H, W)` Lab; returns `(N, Q, H / d, W / d)` for `d = target_downsample`.
    pub fn logits_t(&self, lab: &Tensor, train: bool) -> Tensor {
        let s = lab.size();
        let feats = self.encoder.trunk().forward_t(&l_input(&lab.narrow(1, 0, 1)), train);
        self.head.forward_t(&feats, self.target_size(s[2], s[3]), train)
    }

    /// Colourised images: L of `rgb` with the annealed-mean ab of the prediction (upsampled
    /// bilinearly), back to sRGB and clipped; computed in eval mode.
    ///
    /// # Shapes
    /// `rgb`: `(N, 3, H, W)` in `[0, 1]`; returns `(N, 3, H, W)` in `[0, 1]`.
    pub fn colourise(&self, rgb: &Tensor) -> Result<Tensor, ColorizationError> {
        tch::no_grad(|| -> Result<Tensor, ColorizationError> {
            let lab = rgb_to_lab(&rgb.to_kind(Kind::Float))?;
            let s = lab.size();
            let ab = self.bins.decode(&self.logits_t(&lab, false), self.cfg.temperature)?;
            let ab = ab.upsample_bilinear2d([s[2], s[3]], false, None, None);
            let out = lab_to_rgb(&Tensor::cat(&[lab.narrow(1, 0, 1), ab], 1))?;
            Ok(out.clamp(0.0, 1.0))
        })
    }

    /// The data pipeline of the single view: optional random crop, optional horizontal flip;
    /// values in `[0, 1]` (no normalisation: the network's input is L).
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
}

impl PretextMethod for Colorization {
    fn name(&self) -> &str {
        "colorization"
    }

    fn views(&self) -> Vec<Pipeline> {
        vec![self.view_pipeline()]
    }

    fn encoder(&self) -> &dyn Encoder {
        &self.encoder
    }

    /// Pixels in `[0, 1]` (mean 0, std 1): the encoder converts them to L itself.
    fn input_normalization(&self) -> Option<InputNormalization> {
        let c = self.image_channels as usize;
        Some(InputNormalization { mean: vec![0.0; c], std: vec![1.0; c] })
    }

    fn step(&mut self, batch: &Batch, train: bool) -> selfsup_core::Result<StepOutput> {
        let images = single_view(batch, "colorization")?;
        if train && self.samples.is_none() && self.cfg.samples > 0 {
            let n = (self.cfg.samples as i64).min(images.size()[0]);
            self.samples = Some(images.narrow(0, 0, n).to_device(Device::Cpu).copy());
        }
        let (lab, targets, classes) = tch::no_grad(|| -> Result<_, ColorizationError> {
            let lab = rgb_to_lab(&images.to_kind(Kind::Float))?;
            let s = lab.size();
            let ab = lab.narrow(1, 1, 2).adaptive_avg_pool2d(self.target_size(s[2], s[3]));
            let targets = self.bins.soft_encode(&ab, self.cfg.neighbours, self.cfg.sigma)?;
            let classes = first_largest(&targets, 1)?;
            Ok((lab, targets, classes))
        })?;
        let n = images.size()[0];
        let weights = if self.cfg.rebalance {
            if train {
                observe_prior(&mut self.prior, &classes, n as u64, self.group.as_ref())?;
            }
            let w = self
                .prior
                .weights(self.bins.centres(), self.cfg.prior_sigma, self.cfg.lambda)
                .map_err(ColorizationError::from)?;
            let w = Tensor::from_slice(&w).to_kind(Kind::Float).to_device(classes.device());
            Some(w.index_select(0, &classes.flatten(0, -1)).view_as(&classes))
        } else {
            None
        };
        let logits = self.logits_t(&lab, train);
        let loss = soft_cross_entropy(&logits, &targets, weights.as_ref());
        let acc = pixel_accuracy(&logits, &classes);
        Ok(StepOutput { loss, metrics: vec![("ab_acc".to_string(), acc)], inputs: n })
    }

    fn write_epoch_artifacts(
        &mut self,
        epoch: u64,
        _last: bool,
        run_dir: &std::path::Path,
    ) -> selfsup_core::Result<()> {
        let Some(samples) = &self.samples else { return Ok(()) };
        let rgb = samples.to_device(self.device).to_kind(Kind::Float);
        let gray = tch::no_grad(|| -> Result<Tensor, ColorizationError> {
            let lab = rgb_to_lab(&rgb)?;
            let zeros = lab.narrow(1, 1, 2).zeros_like();
            Ok(lab_to_rgb(&Tensor::cat(&[lab.narrow(1, 0, 1), zeros], 1))?.clamp(0.0, 1.0))
        })?;
        let pred = self.colourise(&rgb)?;
        let path = run_dir.join("samples").join(format!("epoch_{epoch:04}.png"));
        write_grid(&path, &[&gray, &pred, &rgb])?;
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

    pub(crate) fn ctx() -> BuildContext {
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

    fn small() -> ColorizationConfig {
        ColorizationConfig { head_width: 16, samples: 2, ..ColorizationConfig::default() }
    }

    /// Smooth colourful 32-pixel images in [0, 1], the same for the same `seed` whatever
    /// other tests do meanwhile (no draw from libtorch's global generator, which parallel
    /// tests share).
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

    #[test]
    fn builds_through_the_registry_with_a_one_channel_trunk_and_names_bad_values() {
        let mut r = selfsup_core::Registry::new();
        crate::register(&mut r);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = r
            .build("colorization", &vs.root(), &serde_json::to_value(small()).unwrap(), &ctx())
            .unwrap();
        assert_eq!(m.name(), "colorization");
        let vars = vs.variables();
        assert_eq!(vars["encoder.conv1.weight"].size(), [4, 1, 5, 5]);
        let q = AbBins::in_gamut(10).unwrap().len() as i64;
        assert_eq!(vars["head.out.weight"].size(), [q, 16, 1, 1]);
        let norm = m.input_normalization().unwrap();
        assert_eq!((norm.mean, norm.std), (vec![0.0; 3], vec![1.0; 3]));
        for (bad, want) in [
            (serde_json::json!({"lambda": 0.0}), "lambda = 0"),
            (serde_json::json!({"neighbours": 0}), "neighbours = 0"),
            (serde_json::json!({"neighbours": 100000}), "neighbours = 100000 exceeds"),
            (serde_json::json!({"bins": 313}), "unknown field `bins`"),
        ] {
            let err = r.build("colorization", &vs.root(), &bad, &ctx()).err().unwrap().to_string();
            assert!(err.contains(want), "{err}");
        }
        let gray = BuildContext { image_channels: 1, ..ctx() };
        let err = r.build("colorization", &vs.root(), &serde_json::json!({}), &gray);
        assert!(err.err().unwrap().to_string().contains("1 channel(s)"));
    }

    #[test]
    fn the_encoder_sees_the_lightness_of_rgb_images() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Colorization::new(&vs.root(), small(), &ctx()).unwrap();
        let x = images(2, 1);
        let lab = rgb_to_lab(&x).unwrap();
        let direct = m.encoder.trunk().forward_t(&l_input(&lab.narrow(1, 0, 1)), false);
        let wrapped = m.encoder().forward_t(&x, false);
        assert!((direct - &wrapped).abs().max().double_value(&[]) < 1e-5);
        // Changing the colour at equal lightness leaves the features as they are; a gray
        // one-channel image gives the same features as its three-channel copy.
        let taps = m.encoder().features_t(&x, false);
        assert_eq!(taps.len(), 5);
        let g = Tensor::rand([1, 1, 32, 32], (Kind::Float, Device::Cpu));
        let a = m.encoder().forward_t(&g, false);
        let b = m.encoder().forward_t(&g.expand([1, 3, 32, 32], true), false);
        assert!((a - b).abs().max().double_value(&[]) < 1e-4);
    }

    #[test]
    fn loss_falls_on_a_fixed_batch_and_samples_are_written() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = Colorization::new(&vs.root(), small(), &ctx()).unwrap();
        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        let b = batch(images(4, 2));
        let mut losses = Vec::new();
        for _ in 0..40 {
            let out = m.step(&b, true).unwrap();
            assert_eq!(out.inputs, 4);
            losses.push(out.loss.double_value(&[]));
            opt.backward_step(&out.loss);
        }
        // The soft targets have an entropy floor (about 1.2 nats with five neighbours).
        assert!(*losses.last().unwrap() < 0.7 * losses[0], "losses {losses:?}");
        // The prior counted 4 images per step: 40 · 4 · 8 · 8 target pixels.
        assert_eq!(m.prior().images, 160);
        assert_eq!(m.prior().counts.iter().sum::<f64>(), 160.0 * 64.0);
        let dir = tempfile::tempdir().unwrap();
        m.write_epoch_artifacts(3, false, dir.path()).unwrap();
        let png = image::open(dir.path().join("samples/epoch_0003.png")).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (3 * 32, 2 * 32));
        let pred = m.colourise(&images(4, 2).narrow(0, 0, 2)).unwrap();
        assert_eq!(pred.size(), [2, 3, 32, 32]);
        // The prediction keeps the input's lightness (up to gamut clipping).
        let l_in = rgb_to_lab(&images(4, 2).narrow(0, 0, 2)).unwrap().narrow(1, 0, 1);
        let l_out = rgb_to_lab(&pred).unwrap().narrow(1, 0, 1);
        assert!((l_in - l_out).abs().mean(Kind::Float).double_value(&[]) < 5.0);
    }

    #[test]
    fn the_prior_travels_with_the_checkpoint() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = Colorization::new(&vs.root(), small(), &ctx()).unwrap();
        m.step(&batch(images(3, 4)), true).unwrap();
        // Validation passes do not count.
        m.step(&batch(images(3, 5)), false).unwrap();
        assert_eq!(m.prior().images, 3);
        let saved = m.state_tensors();
        let mut n = Colorization::new(&vs.root(), small(), &ctx()).unwrap();
        n.load_state_tensors(&saved).unwrap();
        assert_eq!(n.prior(), m.prior());
        let coarse = ColorizationConfig { grid: 20, ..small() };
        let mut c = Colorization::new(&vs.root(), coarse, &ctx()).unwrap();
        let err = c.load_state_tensors(&saved).unwrap_err().to_string();
        assert!(err.contains("bins"), "{err}");
    }

    #[test]
    fn bins_can_come_from_an_npy_file() {
        // Every other centre of the computed set, written as `pts_in_hull.npy` is.
        let half: Vec<[i64; 2]> =
            AbBins::in_gamut(10).unwrap().centres().iter().copied().step_by(2).collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pts.npy");
        AbBins::from_centres(10, half.clone()).unwrap().to_npy(&file).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ColorizationConfig { ab_bins: Some(file.clone()), ..small() };
        let m = Colorization::new(&vs.root(), cfg, &ctx()).unwrap();
        assert_eq!(m.bins.centres(), &half[..]);
        let cfg = ColorizationConfig { ab_bins: Some(dir.path().join("none.npy")), ..small() };
        let err = Colorization::new(&vs.root(), cfg, &ctx()).err().unwrap().to_string();
        assert!(err.contains("none.npy"), "{err}");
    }
}
