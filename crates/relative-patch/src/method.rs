//! The late-fusion pair network of Doersch et al. (§3): the trunk on each patch (shared
//! weights), its last feature map max-pooled to a small grid (the paper's `pool5`) and
//! flattened through a shared `fc6`, the two `fc6` outputs
//! concatenated, `fc7`, and `fc8` to the 8-way softmax over the neighbour positions.
use crate::config::RelativePatchConfig;
use crate::pairs::make_pairs;
use crate::RelativePatchError;
use selfsup_core::encoders::{linear, try_build_encoder, Encoder, Linear, LinearBias};
use selfsup_core::method::{classification_loss, single_view, StepRng};
use selfsup_core::ops::relu_dropout;
use selfsup_core::{BuildContext, PretextMethod, StepOutput};
use selfsup_data::{Batch, Op, Pipeline};
use tch::nn::{self, Module};
use tch::Tensor;

/// The relative-patch method: the trunk (the encoder that is evaluated) and the pair head.
#[derive(Debug)]
pub struct RelativePatch {
    encoder: Box<dyn Encoder>,
    fc6: Linear,
    fc7: Linear,
    fc8: Linear,
    cfg: RelativePatchConfig,
    /// Seeds each step's pairs; checkpointed, so a resumed run draws the same.
    pub(crate) rng: StepRng,
}

impl RelativePatch {
    /// Builds the trunk on `root / "encoder"` and `fc6`, `fc7`, `fc8` beside it.
    pub fn new(
        root: &nn::Path,
        cfg: RelativePatchConfig,
        ctx: &BuildContext,
    ) -> Result<Self, RelativePatchError> {
        cfg.check().map_err(RelativePatchError::Config)?;
        let encoder = try_build_encoder(&(root / "encoder"), &ctx.encoder, ctx.image_channels)
            .map_err(|e| RelativePatchError::Encoder(Box::new(e)))?;
        let pooled = encoder.out_channels() * cfg.pool5 * cfg.pool5;
        let fc6 = linear(root / "fc6", pooled, cfg.fc6, LinearBias::Default);
        let fc7 = linear(root / "fc7", 2 * cfg.fc6, cfg.fc7, LinearBias::Default);
        let fc8 = linear(root / "fc8", cfg.fc7, 8, LinearBias::Default);
        let rng = StepRng::new(ctx.seed, 0x0d0e_5c4a, "relative_patch.draws").for_rank(ctx.rank());
        Ok(RelativePatch { encoder, fc6, fc7, fc8, cfg, rng })
    }

    /// The config it was built with.
    pub fn config(&self) -> &RelativePatchConfig {
        &self.cfg
    }

    /// `fc6` of each patch.
    ///
    /// # Shapes
    /// `patches`: `(N, C, P, P)`; the trunk's last map `(N, D, h, w)` is max-pooled to
    /// `(N, D, pool5, pool5)` and flattened to `(N, D·pool5²)`; returns `(N, fc6)`.
    fn embed(&self, patches: &Tensor, train: bool) -> Tensor {
        let feats = nn::ModuleT::forward_t(&*self.encoder, patches, train);
        let (pooled, _) = feats.adaptive_max_pool2d([self.cfg.pool5, self.cfg.pool5]);
        relu_dropout(&self.fc6.forward(&pooled.flatten(1, -1)), self.cfg.dropout, train)
    }

    /// Neighbour-position logits of pairs.
    ///
    /// # Shapes
    /// `first`, `second`: `(B, C, P, P)`; returns `(B, 8)`.
    pub fn logits_t(&self, first: &Tensor, second: &Tensor, train: bool) -> Tensor {
        let b = first.size()[0];
        // One trunk pass over both patches (batch norm sees them together, as the paper's
        // shared-weight towers run side by side).
        let both = self.embed(&Tensor::cat(&[first, second], 0), train);
        let h = Tensor::cat(&[both.narrow(0, 0, b), both.narrow(0, b, b)], 1);
        let h = relu_dropout(&self.fc7.forward(&h), self.cfg.dropout, train);
        self.fc8.forward(&h)
    }

    /// The data pipeline of the single view: the shorter side resized to `crop` and the
    /// centre cropped (values in `[0, 1]`; patches are normalised on their own).
    pub fn view_pipeline(&self) -> Pipeline {
        Pipeline {
            ops: vec![Op::Resize { size: self.cfg.crop }, Op::CenterCrop { size: self.cfg.crop }],
        }
    }
}

impl PretextMethod for RelativePatch {
    fn name(&self) -> &str {
        "relative-patch"
    }

    fn views(&self) -> Vec<Pipeline> {
        vec![self.view_pipeline()]
    }

    fn encoder(&self) -> &dyn Encoder {
        &*self.encoder
    }

    /// Patches are normalised one by one, so evaluation uses the evaluation images' statistics.
    fn input_normalization(&self) -> Option<selfsup_core::InputNormalization> {
        None
    }

    fn step(&mut self, batch: &Batch, train: bool) -> selfsup_core::Result<StepOutput> {
        let images = single_view(batch, "relative-patch")?;
        let p = make_pairs(images, &self.cfg, &mut self.rng.next_step())?;
        let logits = self.logits_t(&p.first, &p.second, train);
        let (loss, acc) = classification_loss(&logits, &p.labels)?;
        Ok(StepOutput {
            loss,
            metrics: vec![("position_acc".to_string(), acc)],
            inputs: 2 * p.first.size()[0],
        })
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        vec![self.rng.state()]
    }

    fn load_state_tensors(&mut self, tensors: &[(String, Tensor)]) -> selfsup_core::Result<()> {
        self.rng.load(tensors);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ColorShortcut;
    use crate::pairs::{neighbour_cell, project_green_magenta};
    use rand::SeedableRng;
    use selfsup_core::EncoderConfig;
    use tch::nn::OptimizerConfig;
    use tch::Device;
    use tch::Kind;

    fn ctx() -> BuildContext {
        BuildContext {
            device: Device::Cpu,
            seed: 0,
            num_train_images: 16,
            image_channels: 3,
            image_size: 40,
            encoder: EncoderConfig::Tiny { width: 8, batch_norm: true },
            group: None,
        }
    }

    /// 8-pixel patches, gap 4, jitter 1 (a 34-pixel grid) in 40-pixel crops, no pixelation.
    fn small() -> RelativePatchConfig {
        RelativePatchConfig {
            downsample_p: 0.0,
            crop: 40,
            patch: 8,
            gap: 4,
            jitter: 1,
            fc6: 16,
            fc7: 32,
            dropout: 0.0,
            ..RelativePatchConfig::default()
        }
    }

    /// Channel 0 holds the row, channel 1 the column, channel 2 a constant 0.5.
    fn coordinates(b: i64, s: i64) -> Tensor {
        let f = (Kind::Float, Device::Cpu);
        let rows = Tensor::arange(s, f).view([1, 1, s, 1]).expand([b, 1, s, s], true) / 255.0;
        let cols = Tensor::arange(s, f).view([1, 1, 1, s]).expand([b, 1, s, s], true) / 255.0;
        let half = Tensor::full([b, 1, s, s], 0.5, f);
        Tensor::cat(&[rows, cols, half], 1)
    }

    #[test]
    fn builds_through_the_registry_and_refuses_a_grid_larger_than_the_crop() {
        let mut r = selfsup_core::Registry::new();
        crate::register(&mut r);
        let vs = nn::VarStore::new(Device::Cpu);
        let m =
            r.build("relative-patch", &vs.root(), &serde_json::to_value(small()).unwrap(), &ctx());
        let m = m.unwrap();
        assert_eq!(m.name(), "relative-patch");
        // fc6 sees the trunk's last map max-pooled to 2×2 (pool5) and flattened.
        let d = m.encoder().out_channels();
        assert_eq!(vs.variables()["fc6.weight"].size(), [16, 4 * d]);
        assert_eq!(vs.variables()["fc7.weight"].size(), [32, 32]);
        assert_eq!(vs.variables()["fc8.weight"].size(), [8, 32]);
        let bad = serde_json::json!({"crop": 30, "patch": 8, "gap": 4, "jitter": 1});
        let err = r.build("relative-patch", &vs.root(), &bad, &ctx()).err().unwrap().to_string();
        assert!(err.contains("spans 34 pixels, more than crop = 30"), "{err}");
        let bad = serde_json::to_value(RelativePatchConfig { pool5: 0, ..small() }).unwrap();
        let err = r.build("relative-patch", &vs.root(), &bad, &ctx()).err().unwrap().to_string();
        assert!(err.contains("pool5 = 0"), "{err}");
    }

    #[test]
    fn the_label_names_the_neighbour_s_position_with_gap_and_jitter() {
        let cfg =
            RelativePatchConfig { color: ColorShortcut::None, normalize_patches: false, ..small() };
        let images = coordinates(64, 40);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let p = make_pairs(&images, &cfg, &mut rng).unwrap();
        assert_eq!(p.first.size(), [64, 3, 8, 8]);
        let labels = Vec::<i64>::try_from(&p.labels).unwrap();
        let step = 12i64; // patch + gap
        let mut seen = std::collections::HashSet::new();
        for (i, &label) in labels.iter().enumerate() {
            let [(y1, x1), (y2, x2)] = p.corners[i];
            // The patches hold what the corners say.
            let t = p.second.get(i as i64);
            assert_eq!((t.double_value(&[0, 0, 0]) * 255.0).round() as usize, y2);
            assert_eq!((t.double_value(&[1, 0, 0]) * 255.0).round() as usize, x2);
            assert!(y1.max(y2) + 8 <= 40 && x1.max(x2) + 8 <= 40, "inside the crop");
            let cell = neighbour_cell(label as usize) as i64;
            let (dr, dc) = (cell / 3 - 1, cell % 3 - 1);
            let (dy, dx) = (y2 as i64 - y1 as i64, x2 as i64 - x1 as i64);
            // One grid step in the label's direction, give or take twice the jitter.
            assert!(
                (dy - dr * step).abs() <= 2 && (dx - dc * step).abs() <= 2,
                "{label}: {dy},{dx}"
            );
            // The gap survives the jitter: the patches never touch.
            assert!(dy.abs() >= 8 + 4 - 2 || dx.abs() >= 8 + 4 - 2);
            seen.insert(label);
        }
        assert_eq!(seen.len(), 8, "every neighbour drawn: {seen:?}");
    }

    #[test]
    fn colour_dropping_keeps_one_channel_and_projection_removes_green_magenta() {
        tch::manual_seed(0);
        let images = Tensor::rand([4, 3, 40, 40], (Kind::Float, Device::Cpu));
        let cfg = RelativePatchConfig { normalize_patches: false, random_grid: false, ..small() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let p = make_pairs(&images, &cfg, &mut rng).unwrap();
        for i in 0..4 {
            let k = p.kept[i][0] as i64;
            let dropped = p.first.get(i as i64);
            // The original patch sits at the corner the colour-dropped one recorded.
            let (y, x) = p.corners[i][0];
            let orig = images.get(i as i64).narrow(1, y as i64, 8).narrow(2, x as i64, 8);
            assert!(dropped.get(k).equal(&orig.get(k)), "the kept channel is untouched");
            let kept_std = orig.get(k).std(true).double_value(&[]);
            for ch in (0..3).filter(|&c| c != k) {
                let s = dropped.get(ch).std(true).double_value(&[]);
                assert!((s / kept_std - 0.01).abs() < 0.004, "noise std {s} vs {kept_std}");
            }
        }
        // Normalised as the official code does: channels centred, one scale for the patch, so
        // the dropped channels stay 1/100 of the kept one (per-channel scaling would blow the
        // noise up to the kept channel's size).
        let cfg = RelativePatchConfig { normalize_patches: true, ..cfg };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let p = make_pairs(&images, &cfg, &mut rng).unwrap();
        for i in 0..4 {
            let patch = p.first.get(i as i64);
            let k = p.kept[i][0] as i64;
            let rms = patch.square().mean(Kind::Float).sqrt().double_value(&[]);
            assert!((rms - 1.0).abs() < 1e-4, "rms {rms}");
            let means = patch.mean_dim([1i64, 2].as_slice(), false, Kind::Float);
            assert!(means.abs().max().double_value(&[]) < 1e-5);
            let kept_std = patch.get(k).std(true).double_value(&[]);
            for ch in (0..3).filter(|&c| c != k) {
                let s = patch.get(ch).std(true).double_value(&[]);
                assert!((s / kept_std - 0.01).abs() < 0.004, "noise std {s} vs {kept_std}");
            }
        }
        let projected = project_green_magenta(&images.get(0));
        let a = Tensor::from_slice(&[-1.0f32, 2.0, -1.0]).view([3, 1, 1]);
        let along = (projected * a).sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
        assert!(along.abs().max().double_value(&[]) < 1e-5);
        // Grayscale pixels are left as they are.
        let gray = Tensor::full([3, 2, 2], 0.3, (Kind::Float, Device::Cpu));
        assert!((project_green_magenta(&gray) - &gray).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn pixelation_keeps_a_flat_patch_and_blurs_a_checkerboard() {
        use crate::pairs::{downsample_sides, pixelate};
        assert_eq!(downsample_sides(96), (10, 95), "the official range");
        assert_eq!(downsample_sides(16), (2, 15));
        let f = (Kind::Float, Device::Cpu);
        let flat = Tensor::full([3, 16, 16], 0.25, f);
        assert!((pixelate(&flat, 2) - &flat).abs().max().double_value(&[]) < 1e-6);
        let i = Tensor::arange(16, f);
        let board = ((i.view([16, 1]) + i.view([1, 16])).remainder(2.0)).expand([3, 16, 16], true);
        let out = pixelate(&board, 4);
        assert_eq!(out.size(), [3, 16, 16]);
        // The finest pattern does not survive 4 pixels a side: what is left is near its mean.
        assert!((out - 0.5).abs().max().double_value(&[]) < 0.1);
        // With probability 1 every patch is pixelated: the pairs differ from those without.
        let images = Tensor::rand([4, 3, 40, 40], f);
        let plain = RelativePatchConfig { color: ColorShortcut::None, ..small() };
        let always = RelativePatchConfig { downsample_p: 1.0, ..plain.clone() };
        let mut r1 = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let a = make_pairs(&images, &plain, &mut r1).unwrap();
        let b = make_pairs(&images, &always, &mut r2).unwrap();
        assert_eq!(a.first.size(), b.first.size());
        assert!(!a.first.allclose(&b.first, 1e-3, 1e-3, false));
        let bad = RelativePatchConfig { downsample_p: 1.5, ..small() };
        assert!(bad.check().unwrap_err().contains("downsample_p = 1.5"));
    }

    #[test]
    fn loss_falls_on_a_fixed_batch() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = RelativePatchConfig { color: ColorShortcut::None, ..small() };
        let mut m = RelativePatch::new(&vs.root(), cfg, &ctx()).unwrap();
        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        let batch = Batch {
            views: vec![
                coordinates(16, 40)
                    + Tensor::rand([16, 3, 40, 40], (Kind::Float, Device::Cpu)) * 0.1,
            ],
            labels: Tensor::full([16], -1, (Kind::Int64, Device::Cpu)),
            indices: Tensor::arange(16, (Kind::Int64, Device::Cpu)),
        };
        let mut losses = Vec::new();
        for _ in 0..30 {
            m.rng.draws = 0; // the same pairs every step
            let out = m.step(&batch, true).unwrap();
            assert_eq!(out.inputs, 32);
            losses.push(out.loss.double_value(&[]));
            opt.backward_step(&out.loss);
        }
        // Chance level for eight positions is ln 8 = 2.079.
        assert!((losses[0] - 8f64.ln()).abs() < 0.5, "initial loss {}", losses[0]);
        assert!(*losses.last().unwrap() < 0.5 * losses[0], "losses {losses:?}");
    }
}
