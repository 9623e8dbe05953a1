//! The context-free network of Noroozi & Favaro (the official `Network.py`): the trunk on each
//! tile separately (shared weights), its last feature map max-pooled to a small grid (the
//! official `pool5`, 3×3 at 75-pixel tiles) and flattened through a shared `fc6`, the
//! nine `fc6` outputs concatenated in slot order, `fc7`, and `fc8` to the P-way softmax over
//! the permutation set.
use crate::config::{JigsawConfig, Pool5Op};
use crate::permutations::{maximal_hamming, Perm, TILES};
use crate::puzzle::make_puzzles;
use crate::JigsawError;
use selfsup_core::encoders::{linear, try_build_encoder, Encoder, Linear, LinearBias};
use selfsup_core::method::{classification_loss, single_view, StepRng};
use selfsup_core::ops::relu_dropout;
use selfsup_core::{BuildContext, PretextMethod, StepOutput};
use selfsup_data::{Batch, Op, Pipeline};
use tch::nn::{self, Module};
use tch::Tensor;

/// The jigsaw method: the trunk (the encoder that is evaluated) and the context-free head.
#[derive(Debug)]
pub struct Jigsaw {
    encoder: Box<dyn Encoder>,
    fc6: Linear,
    fc7: Linear,
    fc8: Linear,
    cfg: JigsawConfig,
    perms: Vec<Perm>,
    /// Seeds each step's puzzles; checkpointed, so a resumed run draws the same.
    rng: StepRng,
}

impl Jigsaw {
    /// Builds the trunk on `root / "encoder"` and `fc6`, `fc7`, `fc8` beside it, and the
    /// permutation set of `cfg.permutation_seed`.
    pub fn new(
        root: &nn::Path,
        cfg: JigsawConfig,
        ctx: &BuildContext,
    ) -> Result<Self, JigsawError> {
        cfg.check().map_err(JigsawError::Config)?;
        let encoder = try_build_encoder(&(root / "encoder"), &ctx.encoder, ctx.image_channels)
            .map_err(|e| JigsawError::Encoder(Box::new(e)))?;
        let pooled = encoder.out_channels() * cfg.pool5 * cfg.pool5;
        let fc6 = linear(root / "fc6", pooled, cfg.fc6, LinearBias::Default);
        let fc7 = linear(root / "fc7", TILES as i64 * cfg.fc6, cfg.fc7, LinearBias::Default);
        let fc8 = linear(root / "fc8", cfg.fc7, cfg.permutations as i64, LinearBias::Default);
        let perms =
            maximal_hamming(cfg.permutations, cfg.permutation_seed, cfg.permutation_selection);
        let rng = StepRng::new(ctx.seed, 0x6a16_5a3e, "jigsaw.draws").for_rank(ctx.rank());
        Ok(Jigsaw { encoder, fc6, fc7, fc8, cfg, perms, rng })
    }

    /// The config it was built with.
    pub fn config(&self) -> &JigsawConfig {
        &self.cfg
    }

    /// The permutation set (index = class).
    pub fn permutations(&self) -> &[Perm] {
        &self.perms
    }

    /// Permutation logits of puzzles.
    ///
    /// # Shapes
    /// `tiles`: `(B·9, C, T, T)` in slot order; the trunk's last map `(B·9, D, h, w)` is
    /// pooled (`pool5_op`: max or mean) to `(B·9, D, pool5, pool5)` and flattened; returns
    /// `(B, P)`.
    pub fn logits_t(&self, tiles: &Tensor, train: bool) -> Tensor {
        let feats = nn::ModuleT::forward_t(&*self.encoder, tiles, train);
        let side = [self.cfg.pool5, self.cfg.pool5];
        let pooled = match self.cfg.pool5_op {
            Pool5Op::Max => feats.adaptive_max_pool2d(side).0,
            Pool5Op::Mean => feats.adaptive_avg_pool2d(side),
        };
        let h = relu_dropout(&self.fc6.forward(&pooled.flatten(1, -1)), self.cfg.dropout, train);
        let b = h.size()[0] / TILES as i64;
        let h = h.reshape([b, TILES as i64 * self.cfg.fc6]);
        let h = relu_dropout(&self.fc7.forward(&h), self.cfg.dropout, train);
        self.fc8.forward(&h)
    }

    /// The data pipeline of the single view: random grayscale, then the shorter side resized
    /// to `crop` and the centre cropped (values in `[0, 1]`; tiles are normalised on their
    /// own).
    pub fn view_pipeline(&self) -> Pipeline {
        let mut ops = Vec::new();
        if self.cfg.grayscale_p > 0.0 {
            ops.push(Op::Grayscale { p: self.cfg.grayscale_p, keep_channels: true });
        }
        ops.push(Op::Resize { size: self.cfg.crop });
        ops.push(Op::CenterCrop { size: self.cfg.crop });
        Pipeline { ops }
    }
}

impl PretextMethod for Jigsaw {
    fn name(&self) -> &str {
        "jigsaw"
    }

    fn views(&self) -> Vec<Pipeline> {
        vec![self.view_pipeline()]
    }

    fn encoder(&self) -> &dyn Encoder {
        &*self.encoder
    }

    /// Tiles are normalised one by one, so evaluation uses the evaluation images' statistics.
    fn input_normalization(&self) -> Option<selfsup_core::InputNormalization> {
        None
    }

    fn step(&mut self, batch: &Batch, train: bool) -> selfsup_core::Result<StepOutput> {
        let images = single_view(batch, "jigsaw")?;
        let p = make_puzzles(images, &self.perms, &self.cfg, &mut self.rng.next_step())?;
        let logits = self.logits_t(&p.tiles, train);
        let (loss, acc) = classification_loss(&logits, &p.labels)?;
        Ok(StepOutput {
            loss,
            metrics: vec![("puzzle_acc".to_string(), acc)],
            inputs: p.tiles.size()[0],
        })
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let flat: Vec<i64> = self.perms.iter().flatten().map(|&t| i64::from(t)).collect();
        vec![
            (
                "jigsaw.permutations".into(),
                Tensor::from_slice(&flat).view([self.perms.len() as i64, TILES as i64]),
            ),
            self.rng.state(),
        ]
    }

    /// Restores the step count and the permutation set stored with the checkpoint (the set is
    /// reused as stored, not regenerated).
    fn load_state_tensors(&mut self, tensors: &[(String, Tensor)]) -> selfsup_core::Result<()> {
        self.rng.load(tensors);
        if let Some((_, t)) = tensors.iter().find(|(n, _)| n == "jigsaw.permutations") {
            if t.size() != [self.perms.len() as i64, TILES as i64] {
                return Err(JigsawError::Config(format!(
                    "the checkpoint's permutation set has shape {:?}, the config asks for {} \
                     permutations",
                    t.size(),
                    self.perms.len()
                ))
                .into());
            }
            let flat: Vec<i64> =
                Vec::<i64>::try_from(t.flatten(0, -1)).map_err(JigsawError::Torch)?;
            for (perm, row) in self.perms.iter_mut().zip(flat.chunks(TILES)) {
                for (slot, &v) in perm.iter_mut().zip(row) {
                    *slot = v as u8;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permutations::inverse;
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
            image_size: 24,
            encoder: EncoderConfig::Tiny { width: 8, batch_norm: true },
            group: None,
        }
    }

    /// A small puzzle config for 24-pixel crops: 8-pixel cells, 6-pixel tiles.
    fn small() -> JigsawConfig {
        JigsawConfig {
            permutations: 4,
            crop: 24,
            tile: 6,
            tile_resize: None,
            fc6: 16,
            fc7: 32,
            dropout: 0.0,
            ..JigsawConfig::default()
        }
    }

    /// Images whose channel 0 is the row and channel 1 the column of each pixel (scaled to
    /// [0, 1]), channel 2 the image index.
    fn coordinates(b: i64, s: i64) -> Tensor {
        let rows = Tensor::arange(s, (Kind::Float, Device::Cpu))
            .view([1, 1, s, 1])
            .expand([b, 1, s, s], true);
        let cols = Tensor::arange(s, (Kind::Float, Device::Cpu))
            .view([1, 1, 1, s])
            .expand([b, 1, s, s], true);
        let idx = Tensor::arange(b, (Kind::Float, Device::Cpu))
            .view([b, 1, 1, 1])
            .expand([b, 1, s, s], true);
        Tensor::cat(&[rows, cols, idx], 1) / 255.0
    }

    #[test]
    fn builds_through_the_registry_and_refuses_bad_geometry() {
        let mut r = selfsup_core::Registry::new();
        crate::register(&mut r);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = serde_json::to_value(small()).unwrap();
        let m = r.build("jigsaw", &vs.root(), &cfg, &ctx()).unwrap();
        assert_eq!(m.name(), "jigsaw");
        let vars = vs.variables();
        // fc6 sees each tile's last map max-pooled to 3×3 (pool5) and flattened.
        let d = m.encoder().out_channels();
        assert_eq!(vars["fc6.weight"].size(), [16, 9 * d]);
        assert_eq!(vars["fc7.weight"].size(), [32, 9 * 16]);
        assert_eq!(vars["fc8.weight"].size(), [4, 32]);
        assert!(
            vars.contains_key("encoder.conv1.weight")
                || vars.keys().any(|k| k.starts_with("encoder."))
        );
        let bad = serde_json::json!({"tile": 9, "crop": 24});
        let err = r.build("jigsaw", &vs.root(), &bad, &ctx()).err().unwrap().to_string();
        assert!(err.contains("tile = 9 must be in 1..=8"), "{err}");
        let bad = serde_json::json!({"permutations": 1});
        let err = r.build("jigsaw", &vs.root(), &bad, &ctx()).err().unwrap().to_string();
        assert!(err.contains("permutations = 1"), "{err}");
        let bad = serde_json::to_value(JigsawConfig { pool5: 0, ..small() }).unwrap();
        let err = r.build("jigsaw", &vs.root(), &bad, &ctx()).err().unwrap().to_string();
        assert!(err.contains("pool5 = 0"), "{err}");
        let bad = serde_json::json!({"tiles": 9});
        let err = r.build("jigsaw", &vs.root(), &bad, &ctx()).err().unwrap().to_string();
        assert!(err.contains("unknown field `tiles`"), "{err}");
    }

    #[test]
    fn tiles_sit_in_their_cells_in_the_slots_of_the_label_s_permutation() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = JigsawConfig { normalize_tiles: false, rgb_jitter: 0, ..small() };
        let m = Jigsaw::new(&vs.root(), cfg.clone(), &ctx()).unwrap();
        let images = coordinates(3, 24);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let p = make_puzzles(&images, m.permutations(), &cfg, &mut rng).unwrap();
        assert_eq!(p.tiles.size(), [27, 3, 6, 6]);
        let labels = Vec::<i64>::try_from(&p.labels).unwrap();
        let mut offsets = std::collections::HashSet::new();
        for (i, &k) in labels.iter().enumerate() {
            let perm = m.permutations()[k as usize];
            for (slot, &cell) in perm.iter().enumerate() {
                let tile = p.tiles.get(i as i64 * 9 + slot as i64);
                // The tile's top-left pixel names its position in the crop.
                let y = (tile.double_value(&[0, 0, 0]) * 255.0).round() as usize;
                let x = (tile.double_value(&[1, 0, 0]) * 255.0).round() as usize;
                let img = (tile.double_value(&[2, 0, 0]) * 255.0).round() as usize;
                assert_eq!(img, i, "tile of another image");
                let cell = cell as usize;
                assert_eq!((y, x), p.corners[i][cell], "slot {slot} holds tile {cell}");
                // Inside its cell (8 pixels), with room for the 6-pixel tile: gap and jitter.
                let (cy, cx) = (cell / 3 * 8, cell % 3 * 8);
                assert!(
                    y >= cy && y + 6 <= cy + 8 && x >= cx && x + 6 <= cx + 8,
                    "{y},{x} in {cell}"
                );
                offsets.insert((y - cy, x - cx));
            }
            // Putting the tiles back with the inverse permutation restores the cell order.
            let inv = inverse(&perm);
            for (cell, &slot) in inv.iter().enumerate() {
                let tile = p.tiles.get(i as i64 * 9 + slot as i64);
                let y = (tile.double_value(&[0, 0, 0]) * 255.0).round() as usize;
                let x = (tile.double_value(&[1, 0, 0]) * 255.0).round() as usize;
                assert_eq!((y, x), p.corners[i][cell]);
            }
        }
        assert!(offsets.len() > 3, "tile positions are jittered: {offsets:?}");
        // Without random positions every tile sits at the centre of its cell.
        let fixed = JigsawConfig { random_position: false, ..cfg };
        let p = make_puzzles(&images, m.permutations(), &fixed, &mut rng).unwrap();
        assert!(p.corners.iter().flatten().all(|&(y, x)| y % 8 == 1 && x % 8 == 1));
    }

    #[test]
    fn tiles_are_normalised_one_by_one_and_puzzles_repeat_with_the_seed() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = small();
        let m = Jigsaw::new(&vs.root(), cfg.clone(), &ctx()).unwrap();
        tch::manual_seed(1);
        let images = Tensor::rand([2, 3, 24, 24], (Kind::Float, Device::Cpu));
        let draw = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            make_puzzles(&images, m.permutations(), &cfg, &mut rng).unwrap()
        };
        let p = draw(9);
        let mean = p.tiles.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        let std = p.tiles.std_dim([2i64, 3].as_slice(), true, false);
        assert!(mean.abs().max().double_value(&[]) < 1e-5);
        assert!((std - 1.0).abs().max().double_value(&[]) < 1e-4);
        let q = draw(9);
        assert!(p.tiles.equal(&q.tiles) && p.labels.equal(&q.labels) && p.corners == q.corners);
        let err = make_puzzles(
            &images.narrow(2, 0, 20),
            m.permutations(),
            &cfg,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(0),
        );
        assert!(err.unwrap_err().to_string().contains("do not hold 3x3 cells"));
    }

    #[test]
    fn the_permutation_set_and_step_count_travel_with_the_checkpoint() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = Jigsaw::new(&vs.root(), small(), &ctx()).unwrap();
        let batch = Batch {
            views: vec![coordinates(2, 24)],
            labels: Tensor::full([2], -1, (Kind::Int64, Device::Cpu)),
            indices: Tensor::arange(2, (Kind::Int64, Device::Cpu)),
        };
        m.step(&batch, false).unwrap();
        let saved = m.state_tensors();
        let other = JigsawConfig { permutation_seed: 3, ..small() };
        let mut n = Jigsaw::new(&vs.root(), other, &ctx()).unwrap();
        assert_ne!(n.permutations(), m.permutations());
        n.load_state_tensors(&saved).unwrap();
        assert_eq!(n.permutations(), m.permutations(), "the stored set is reused");
        assert_eq!(n.rng.draws, 1);
        let bigger = JigsawConfig { permutations: 5, ..small() };
        let mut b = Jigsaw::new(&vs.root(), bigger, &ctx()).unwrap();
        let err = b.load_state_tensors(&saved).unwrap_err().to_string();
        assert!(err.contains("asks for 5 permutations"), "{err}");
    }

    #[test]
    fn pool5_op_mean_feeds_fc6_each_tile_s_mean() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = JigsawConfig { pool5: 1, pool5_op: Pool5Op::Mean, ..small() };
        let m = Jigsaw::new(&vs.root(), cfg, &ctx()).unwrap();
        tch::manual_seed(3);
        let tiles = Tensor::rand([2 * TILES as i64, 3, 6, 6], (Kind::Float, Device::Cpu));
        let feats = nn::ModuleT::forward_t(&*m.encoder, &tiles, false);
        let mean = feats.mean_dim([2i64, 3].as_slice(), false, None);
        let h = m.fc6.forward(&mean).relu().reshape([2, TILES as i64 * 16]);
        let expected = m.fc8.forward(&m.fc7.forward(&h).relu());
        let logits = m.logits_t(&tiles, false);
        assert_eq!(logits.size(), [2, 4]);
        assert!(logits.allclose(&expected, 1e-5, 1e-6, false));
        // Not what the default head reads (each tile's maximum).
        let max = feats.amax([2i64, 3].as_slice(), false);
        assert!(!mean.allclose(&max, 1e-5, 1e-6, false));
    }

    #[test]
    fn loss_falls_on_a_fixed_batch() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = JigsawConfig { rgb_jitter: 0, ..small() };
        let mut m = Jigsaw::new(&vs.root(), cfg, &ctx()).unwrap();
        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        tch::manual_seed(2);
        let batch = Batch {
            views: vec![Tensor::rand([8, 3, 24, 24], (Kind::Float, Device::Cpu))],
            labels: Tensor::full([8], -1, (Kind::Int64, Device::Cpu)),
            indices: Tensor::arange(8, (Kind::Int64, Device::Cpu)),
        };
        let mut losses = Vec::new();
        for _ in 0..30 {
            m.rng.draws = 0; // the same puzzles every step
            let out = m.step(&batch, true).unwrap();
            assert_eq!(out.inputs, 72);
            losses.push(out.loss.double_value(&[]));
            opt.backward_step(&out.loss);
        }
        // Chance level for four permutations is ln 4 = 1.386.
        assert!((losses[0] - 4f64.ln()).abs() < 0.5, "initial loss {}", losses[0]);
        assert!(*losses.last().unwrap() < 0.5 * losses[0], "losses {losses:?}");
    }
}
