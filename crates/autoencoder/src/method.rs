//! The denoising autoencoder as a pretext method (Vincent et al., ICML 2008): the trunk under
//! `encoder` maps the corrupted, normalised image to its last feature map, the up-convolution
//! decoder under `decoder` ([`UpDecoder`]) maps that back to the image, and the loss is
//! `‖g(f(x̃)) − x‖²` averaged over pixels and channels, with `x` the normalised clean image
//! and `x̃` its corruption. Each step's corruption is drawn from a [`StepRng`] stream of the
//! run seed, whose step count travels with the checkpoint.
use crate::config::AutoencoderConfig;
use crate::AutoencoderError;
use selfsup_core::encoders::{try_build_encoder, Encoder};
use selfsup_core::method::{single_view, StepRng};
use selfsup_core::reduce::mean_all;
use selfsup_core::{BuildContext, InputNormalization, PretextMethod, StepOutput};
use selfsup_data::masks::corrupt;
use selfsup_data::{Batch, Op, Pipeline};
use selfsup_reconstruction::{feature_shape, PixelStats, SampleGrid, UpDecoder};
use tch::nn;
use tch::{Kind, Tensor};

/// The registry name.
pub const NAME: &str = "autoencoder";

/// The denoising autoencoder: the trunk (the encoder that is evaluated) and the decoder.
#[derive(Debug)]
pub struct Autoencoder {
    encoder: Box<dyn Encoder>,
    decoder: UpDecoder,
    stats: PixelStats,
    cfg: AutoencoderConfig,
    /// Side of the (square) images the method is built for.
    side: i64,
    /// Seeds each step's corruption; checkpointed, so a resumed run draws the same.
    rng: StepRng,
    samples: SampleGrid,
}

impl Autoencoder {
    /// Builds the trunk on `root / "encoder"` and the decoder on `root / "decoder"`, sized by
    /// the trunk's feature map for `cfg.size` (else `ctx.image_size`) pixel images.
    pub fn new(
        root: &nn::Path,
        cfg: AutoencoderConfig,
        ctx: &BuildContext,
    ) -> Result<Self, AutoencoderError> {
        cfg.check().map_err(AutoencoderError::Config)?;
        let channels = ctx.image_channels;
        let stats = PixelStats::new(&cfg.mean, &cfg.std, channels, ctx.device)
            .map_err(|e| AutoencoderError::Config(e.to_string()))?;
        let encoder = try_build_encoder(&(root / "encoder"), &ctx.encoder, channels)
            .map_err(|e| AutoencoderError::Encoder(Box::new(e)))?;
        let side = cfg.size.map_or(ctx.image_size, |s| s as i64);
        let [c, h, _] = feature_shape(&*encoder, channels, side, ctx.device)
            .map_err(|e| AutoencoderError::Config(e.to_string()))?;
        let width = cfg.decoder_width.unwrap_or_else(|| UpDecoder::default_width(c));
        let decoder =
            UpDecoder::new(&(root / "decoder"), c, channels, width, UpDecoder::ups_for(h, side));
        let rng = StepRng::new(ctx.seed, 0xaed3_0a15, "autoencoder.draws").for_rank(ctx.rank());
        let samples = SampleGrid::new(cfg.sample_every, cfg.samples);
        Ok(Autoencoder { encoder, decoder, stats, cfg, side, rng, samples })
    }

    /// The config it was built with.
    pub fn config(&self) -> &AutoencoderConfig {
        &self.cfg
    }

    /// The reconstruction of normalised (corrupted) images.
    ///
    /// # Shapes
    /// `xs`: `(B, C, H, W)`; returns `(B, C, H, W)`.
    pub fn reconstruct_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let feats = nn::ModuleT::forward_t(&*self.encoder, xs, train);
        let s = xs.size();
        self.decoder.forward_t(&feats, [s[2], s[3]], train)
    }

    /// The data pipeline of the single view: pixel values in `[0, 1]` (corrupted and normalised
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

/// The mean squared error, in f32 whatever the kind of `a` (`reduce::mean_all`: the same bits
/// at any thread count in a deterministic CPU run).
fn mse(a: &Tensor, b: &Tensor) -> Tensor {
    mean_all(&(a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).square())
}

impl PretextMethod for Autoencoder {
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

    /// Reports the loss and `identity_mse`, the error of handing back the corrupted input
    /// (what the reconstruction has to beat).
    fn step(&mut self, batch: &Batch, train: bool) -> selfsup_core::Result<StepOutput> {
        let images = single_view(batch, NAME)?;
        let s = images.size();
        if s.len() != 4 || s[2] != self.side || s[3] != self.side {
            return Err(AutoencoderError::Batch(format!(
                "images of shape {s:?}, the method is built for {0}x{0} (set method_config.size)",
                self.side
            ))
            .into());
        }
        let corrupted = corrupt(images, &self.cfg.corruption, &mut self.rng.next_step())
            .map_err(AutoencoderError::from)?;
        let x = self.stats.normalize(images);
        let noisy = self.stats.normalize(&corrupted);
        let pred = self.reconstruct_t(&noisy, train);
        let loss = mse(&pred, &x);
        let identity = tch::no_grad(|| mse(&noisy, &x));
        if train && self.samples.enabled() {
            let shown = tch::no_grad(|| self.stats.denormalize(&pred));
            self.samples.keep(&[&corrupted, &shown, images]);
        }
        Ok(StepOutput { loss, metrics: vec![("identity_mse".into(), identity)], inputs: s[0] })
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        vec![self.rng.state()]
    }

    fn load_state_tensors(&mut self, tensors: &[(String, Tensor)]) -> selfsup_core::Result<()> {
        self.rng.load(tensors);
        Ok(())
    }

    /// The grid of corrupted inputs, reconstructions and originals of the epoch's last step,
    /// every `sample_every` epochs and after the last.
    fn write_epoch_artifacts(
        &mut self,
        epoch: u64,
        last: bool,
        run_dir: &std::path::Path,
    ) -> selfsup_core::Result<()> {
        self.samples.write_if_due(epoch, last, run_dir).map_err(AutoencoderError::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfsup_core::encoders::AlexnetVariant;
    use selfsup_core::EncoderConfig;
    use selfsup_data::masks::Corruption;
    use tch::nn::OptimizerConfig;
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

    /// `n` smooth 32-pixel images (uniform noise on a 4x4 grid, upsampled), which an
    /// autoencoder can learn to reconstruct in a few steps.
    fn batch(n: i64) -> Batch {
        tch::manual_seed(2);
        let coarse = Tensor::rand([n, 3, 4, 4], (Kind::Float, Device::Cpu));
        Batch::unlabeled(coarse.upsample_bilinear2d([32, 32], false, None, None))
    }

    #[test]
    fn builds_through_the_registry_and_refuses_bad_values() {
        let mut r = selfsup_core::Registry::new();
        crate::register(&mut r);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = r.build(NAME, &vs.root(), &serde_json::json!({}), &ctx()).unwrap();
        assert_eq!(m.name(), NAME);
        let vars = vs.variables();
        // AlexNet width 4 ends in 11 channels at 8x8: two doublings to 32 pixels, 8 channels.
        assert_eq!(vars["decoder.up1.weight"].size(), [11, 8, 4, 4]);
        assert_eq!(vars["decoder.out.weight"].size(), [3, 8, 3, 3]);
        assert!(!vars.contains_key("decoder.up3.weight"));
        assert!(vars.keys().all(|k| k.starts_with("encoder.") || k.starts_with("decoder.")));
        assert!(m.extra_optimizers().is_empty());
        for (cfg, want) in [
            (serde_json::json!({"corruption": {"kind": "gaussian", "std": -1}}), "corruption.std"),
            (serde_json::json!({"mean": [0.5]}), "mean has 1 and std 3 entries"),
            (serde_json::json!({"corruption": {"kind": "masking"}}), "masking"),
            (serde_json::json!({"decoder": 3}), "unknown field `decoder`"),
        ] {
            let e = r.build(NAME, &vs.root(), &cfg, &ctx()).err().unwrap().to_string();
            assert!(e.contains(want), "{e}");
        }
        let mut m = Autoencoder::new(&vs.root(), AutoencoderConfig::default(), &ctx()).unwrap();
        let mut wrong = batch(2);
        wrong.views[0] = wrong.views[0].narrow(2, 0, 16);
        let e = m.step(&wrong, true).unwrap_err().to_string();
        assert!(e.contains("built for 32x32"), "{e}");
    }

    #[test]
    fn the_encoder_sees_the_corruption_and_the_target_is_clean() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = AutoencoderConfig {
            corruption: Corruption::MaskingNoise { fraction: 0.5 },
            ..AutoencoderConfig::default()
        };
        let mut m = Autoencoder::new(&vs.root(), cfg, &ctx()).unwrap();
        let b = batch(2);
        let out = m.step(&b, false).unwrap();
        // The identity's error is that of zeroing half the pixels: E[(x/std)^2] / 2 over
        // the pixels, far from 0 (the target is the clean image).
        let x = &b.views[0];
        let std = Tensor::from_slice(&m.cfg.std).view([1, 3, 1, 1]);
        let want = (x / std).square().mean(Kind::Float).double_value(&[]) / 2.0;
        let identity = out.metrics[0].1.double_value(&[]);
        assert!((identity - want).abs() < 0.1 * want, "{identity} vs {want}");
        // The same step count draws the same corruption.
        m.rng.draws = 0;
        let again = m.step(&b, false).unwrap();
        assert_eq!(again.metrics[0].1.double_value(&[]), identity);
        assert!(again.loss.equal(&out.loss));
    }

    #[test]
    fn loss_falls_on_a_fixed_batch_and_the_step_count_is_checkpointed() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = Autoencoder::new(&vs.root(), AutoencoderConfig::default(), &ctx()).unwrap();
        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        let b = batch(4);
        let mut losses = Vec::new();
        for _ in 0..30 {
            m.rng.draws = 0; // the same corruption every step
            let out = m.step(&b, true).unwrap();
            assert_eq!(out.inputs, 4);
            losses.push(out.loss.double_value(&[]));
            opt.backward_step(&out.loss);
        }
        let last = *losses.last().unwrap();
        assert!(last < 0.5 * losses[0], "losses {losses:?}");
        let saved = m.state_tensors();
        let mut n = Autoencoder::new(&vs.root(), AutoencoderConfig::default(), &ctx()).unwrap();
        n.load_state_tensors(&saved).unwrap();
        assert_eq!(n.rng.draws, 1);
    }
}
