//! CPC on image patches (van den Oord, Li, Vinyals 2018, §3.2; Hénaff et al. 2019, CPC v2): the
//! crop is cut into a grid of overlapping patches, each patch encoded by the trunk and pooled to
//! a vector `z`; a row-causal context network turns the grid of `z` into contexts `c`, and for
//! each row offset `k` a linear map `W_k` predicts `z[i + k, j]` from `c[i, j]`, scored by
//! InfoNCE with every other patch of the batch as a negative. In a data-parallel job the
//! candidates are the patches of the global batch (gathered with gradient from every rank),
//! as in one process at the global batch.
use crate::config::CpcConfig;
use crate::CpcError;
use rand::Rng;
use selfsup_core::encoders::conv::{convolution, Geometry};
use selfsup_core::encoders::{linear, product, try_build_encoder, Encoder, Linear, LinearBias};
use selfsup_core::method::{classification_loss, single_view, StepRng};
use selfsup_core::{BuildContext, PretextMethod, StepOutput};
use selfsup_data::{patches, Batch, Op, Pipeline};
use selfsup_dist::Collectives;
use std::sync::Arc;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// CPC: the trunk (the encoder that is evaluated), the patch projection, the context network
/// and one predictor per row offset.
#[derive(Debug)]
pub struct Cpc {
    encoder: Box<dyn Encoder>,
    project: Linear,
    context: Vec<nn::Conv2D>,
    predict: Vec<Linear>,
    cfg: CpcConfig,
    /// Seeds each step's augmentation; checkpointed, so a resumed run draws the same.
    pub(crate) rng: StepRng,
    /// The data-parallel job (world size > 1), if any.
    group: Option<Arc<dyn Collectives>>,
}

/// InfoNCE: for each prediction (a row of `preds`), the cross-entropy of picking its target
/// among all `candidates` by dot product (`encoders::product`: in a deterministic CPU run, fixed
/// blocks of single-threaded products); returns the mean loss and the accuracy.
///
/// # Shapes
/// `preds`: `(M, D)`; `candidates`: `(N, D)`; `targets`: `(M,)` i64 indices into
/// `candidates`.
pub fn info_nce(preds: &Tensor, candidates: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
    let logits = product(preds, &candidates.tr());
    classification_loss(&logits, targets)
        .unwrap_or_else(|e| panic!("InfoNCE of logits {:?}: {e}", logits.size()))
}

impl Cpc {
    /// Builds the trunk on `root / "encoder"`, the projection, the context network and the
    /// predictors beside it.
    pub fn new(root: &nn::Path, cfg: CpcConfig, ctx: &BuildContext) -> Result<Self, CpcError> {
        cfg.check().map_err(CpcError::Config)?;
        let encoder = try_build_encoder(&(root / "encoder"), &ctx.encoder, ctx.image_channels)
            .map_err(|e| CpcError::Encoder(Box::new(e)))?;
        let w = cfg.context_width;
        let project = linear(root / "project", encoder.out_channels(), w, LinearBias::Default);
        let conv = nn::ConvConfigND::<[i64; 2]>::default();
        let k = cfg.context_kernel as i64;
        let context = (0..cfg.context_layers)
            .map(|l| nn::conv(&(root / "context" / l), w, w, [k, 3], conv))
            .collect();
        let predict =
            (1..=cfg.steps).map(|s| linear(root / "predict" / s, w, w, LinearBias::None)).collect();
        let rng = StepRng::new(ctx.seed, 0x0c9c_0002, "cpc.draws").for_rank(ctx.rank());
        let group = ctx.job();
        Ok(Cpc { encoder, project, context, predict, cfg, rng, group })
    }

    /// The config it was built with.
    pub fn config(&self) -> &CpcConfig {
        &self.cfg
    }

    /// The patches of `images` in row-major grid order, image-major.
    ///
    /// # Shapes
    /// `images`: `(B, C, S, S)`; returns `(B·G·G, C, P, P)`.
    pub fn cut(&self, images: &Tensor) -> Result<Tensor, CpcError> {
        let size = images.size();
        let &[b, c, h, w] = size.as_slice() else {
            return Err(CpcError::Batch(format!("expected a (B, C, H, W) batch, got {size:?}")));
        };
        let (p, s, g) = (self.cfg.patch as i64, self.cfg.stride as i64, self.cfg.grid() as i64);
        if h < (g - 1) * s + p || w < (g - 1) * s + p {
            return Err(CpcError::Batch(format!(
                "images of {h}x{w} do not hold the {g}x{g} grid of {p}-pixel patches (the view \
                 gives crop = {})",
                self.cfg.crop
            )));
        }
        let grid = images.narrow(2, 0, (g - 1) * s + p).narrow(3, 0, (g - 1) * s + p);
        // (B, C, G, G, P, P) -> (B, G, G, C, P, P)
        let patches = grid.unfold(2, p, s).unfold(3, p, s).permute([0, 2, 3, 1, 4, 5]);
        Ok(patches.reshape([b * g * g, c, p, p]))
    }

    /// CPC v2's per-patch augmentation: each patch to grayscale with probability 0.25, its
    /// contrast scaled in `[0.6, 1.4]` and its brightness shifted in `[-0.2, 0.2]`, all drawn
    /// per patch from `rng`.
    pub fn augment<R: Rng>(&self, patches: &Tensor, rng: &mut R) -> Tensor {
        let n = patches.size()[0];
        let c = patches.size()[1];
        let mut gray = Vec::with_capacity(n as usize);
        let mut contrast = Vec::with_capacity(n as usize);
        let mut brightness = Vec::with_capacity(n as usize);
        for _ in 0..n {
            gray.push(if rng.random::<f64>() < 0.25 { 1.0f32 } else { 0.0 });
            contrast.push(rng.random_range(0.6f32..1.4));
            brightness.push(rng.random_range(-0.2f32..0.2));
        }
        let dev = patches.device();
        let col = |v: Vec<f32>| Tensor::from_slice(&v).to_device(dev).view([n, 1, 1, 1]);
        let (gray, contrast, brightness) = (col(gray), col(contrast), col(brightness));
        let x = if c == 3 {
            let weights =
                Tensor::from_slice(&[0.299f32, 0.587, 0.114]).to_device(dev).view([1, 3, 1, 1]);
            let luma = (patches * weights).sum_dim_intlist([1i64].as_slice(), true, Kind::Float);
            patches * (1.0 - &gray) + luma.expand_as(patches) * &gray
        } else {
            patches.shallow_clone()
        };
        let mean = x.mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
        ((x - &mean) * contrast + mean + brightness).clamp(0.0, 1.0)
    }

    /// Patch embeddings `z` as a grid.
    ///
    /// # Shapes
    /// `patches`: `(B·G·G, C, P, P)`; returns `(B, W, G, G)`.
    pub fn embed(&self, patches: &Tensor, train: bool) -> Tensor {
        let g = self.cfg.grid() as i64;
        let feats = nn::ModuleT::forward_t(&*self.encoder, patches, train);
        let pooled = feats.mean_dim([2i64, 3].as_slice(), false, feats.kind());
        let z = self.project.forward(&pooled);
        let b = z.size()[0] / (g * g);
        z.view([b, g, g, self.cfg.context_width]).permute([0, 3, 1, 2]).contiguous()
    }

    /// The row-causal context network: each layer pads `kernel − 1` rows above (none below),
    /// so context row `i` depends on the embeddings of rows `0..=i` only.
    ///
    /// # Shapes
    /// `z`: `(B, W, G, G)`; returns `(B, W, G, G)`.
    pub fn context_t(&self, z: &Tensor) -> Tensor {
        let k = self.cfg.context_kernel as i64;
        let mut x = z.shallow_clone();
        for conv in &self.context {
            // Pad (left, right, top, bottom).
            let padded = x.constant_pad_nd([1, 1, k - 1, 0]);
            // `conv.forward`, on oneDNN's kernels in fixed pieces in deterministic CPU runs.
            let y = convolution(&padded, &conv.ws, conv.bs.as_ref(), Geometry::conv(1, 0));
            x = &x + y.relu();
        }
        x
    }

    /// The InfoNCE loss and accuracy of one batch of patch grids, averaged over the row
    /// offsets. In a job's training steps, every patch of the global batch is a candidate and
    /// the loss is the mean over this rank's predictions.
    pub fn loss(&self, patches: &Tensor, train: bool) -> Result<(Tensor, Tensor), CpcError> {
        let z = self.embed(patches, train);
        let c = self.context_t(&z);
        let size = z.size();
        let (b, w, g) = (size[0], size[1], size[2]);
        // Every patch of the batch is a candidate, in (b, i, j) order; in a job, every
        // patch of the global batch, in rank order, this rank's from row `rank · b·g·g`.
        let candidates = z.permute([0, 2, 3, 1]).reshape([b * g * g, w]);
        let (candidates, first) = match &self.group {
            // Training steps only: every rank takes them together.
            Some(group) if train => {
                (selfsup_dist::all_gather_with_grad(group, &candidates)?, group.rank() as i64 * b)
            }
            _ => (candidates, 0),
        };
        let mut losses = Vec::new();
        let mut accs = Vec::new();
        for (step, predictor) in self.predict.iter().enumerate() {
            let k = step as i64 + 1;
            let rows = g - k;
            // Contexts of rows 0..g-k predict the embeddings k rows below.
            let ctx = c.narrow(2, 0, rows).permute([0, 2, 3, 1]).reshape([b * rows * g, w]);
            let preds = predictor.forward(&ctx);
            let bi = (Tensor::arange(b, (Kind::Int64, z.device())) + first).view([b, 1, 1]);
            let ii = Tensor::arange(rows, (Kind::Int64, z.device())).view([1, rows, 1]) + k;
            let jj = Tensor::arange(g, (Kind::Int64, z.device())).view([1, 1, g]);
            let targets = (bi * (g * g) + ii * g + jj).reshape([-1]);
            let (l, a) = info_nce(&preds, &candidates, &targets);
            losses.push(l);
            accs.push(a);
        }
        let loss = Tensor::stack(&losses, 0).mean(Kind::Float);
        Ok((loss, Tensor::stack(&accs, 0).mean(Kind::Float)))
    }

    /// The data pipeline of the single view: the shorter side resized to `crop` and the
    /// centre cropped (values in `[0, 1]`; patches are augmented and normalised on their own).
    pub fn view_pipeline(&self) -> Pipeline {
        Pipeline {
            ops: vec![Op::Resize { size: self.cfg.crop }, Op::CenterCrop { size: self.cfg.crop }],
        }
    }
}

impl PretextMethod for Cpc {
    fn name(&self) -> &str {
        "cpc"
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
        let images = single_view(batch, "cpc")?;
        let mut rng = self.rng.next_step();
        let mut p = self.cut(images)?;
        if self.cfg.patch_augment {
            p = self.augment(&p, &mut rng);
        }
        if self.cfg.normalize_patches {
            p = patches::normalize_each(&p);
        }
        let (loss, acc) = self.loss(&p, train)?;
        Ok(StepOutput { loss, metrics: vec![("cpc_acc".to_string(), acc)], inputs: p.size()[0] })
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
    use selfsup_core::EncoderConfig;
    use tch::nn::OptimizerConfig;
    use tch::Device;

    fn ctx() -> BuildContext {
        BuildContext {
            device: Device::Cpu,
            seed: 0,
            num_train_images: 16,
            image_channels: 3,
            image_size: 32,
            encoder: EncoderConfig::Tiny { width: 8, batch_norm: true },
            group: None,
        }
    }

    /// A 5×5 grid of 8-pixel patches with stride 4 on 24-pixel crops.
    fn small() -> CpcConfig {
        CpcConfig {
            crop: 24,
            patch: 8,
            stride: 4,
            context_width: 16,
            context_layers: 2,
            context_kernel: 2,
            steps: 2,
            ..CpcConfig::default()
        }
    }

    #[test]
    fn builds_through_the_registry_and_refuses_a_grid_too_small_to_predict() {
        let mut r = selfsup_core::Registry::new();
        crate::register(&mut r);
        let vs = nn::VarStore::new(Device::Cpu);
        let m =
            r.build("cpc", &vs.root(), &serde_json::to_value(small()).unwrap(), &ctx()).unwrap();
        assert_eq!(m.name(), "cpc");
        assert_eq!(vs.variables()["context.0.weight"].size(), [16, 16, 2, 3]);
        assert!(vs.variables().contains_key("predict.2.weight"));
        let bad = serde_json::json!({"crop": 24, "patch": 8, "stride": 4, "steps": 5});
        let err = r.build("cpc", &vs.root(), &bad, &ctx()).err().unwrap().to_string();
        assert!(err.contains("steps = 5 must be in 1..5"), "{err}");
    }

    #[test]
    fn patches_overlap_on_the_grid_in_row_major_order() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Cpc::new(&vs.root(), small(), &ctx()).unwrap();
        let s = 24i64;
        let f = (Kind::Float, Device::Cpu);
        let rows = Tensor::arange(s, f).view([1, 1, s, 1]).expand([2, 1, s, s], true);
        let cols = Tensor::arange(s, f).view([1, 1, 1, s]).expand([2, 1, s, s], true);
        let idx = Tensor::arange(2, f).view([2, 1, 1, 1]).expand([2, 1, s, s], true);
        let p = m.cut(&Tensor::cat(&[rows, cols, idx], 1)).unwrap();
        assert_eq!(p.size(), [2 * 25, 3, 8, 8]);
        for n in 0..50i64 {
            let (img, i, j) = (n / 25, (n % 25) / 5, n % 5);
            assert_eq!(p.double_value(&[n, 0, 0, 0]) as i64, 4 * i, "row of patch {n}");
            assert_eq!(p.double_value(&[n, 1, 0, 0]) as i64, 4 * j, "column of patch {n}");
            assert_eq!(p.double_value(&[n, 2, 0, 0]) as i64, img);
        }
    }

    #[test]
    fn the_context_cannot_see_the_rows_it_predicts() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Cpc::new(&vs.root(), small(), &ctx()).unwrap();
        let z = Tensor::randn([2, 16, 5, 5], (Kind::Float, Device::Cpu));
        let c = m.context_t(&z);
        for row in 0..4i64 {
            // Change every row below `row`: contexts up to `row` do not move.
            let changed = z.copy();
            let _ = changed.narrow(2, row + 1, 4 - row).g_add_scalar_(3.0);
            let c2 = m.context_t(&changed);
            let same = c.narrow(2, 0, row + 1).equal(&c2.narrow(2, 0, row + 1));
            assert!(same, "context of rows 0..={row} saw a later row");
            assert!(!c.equal(&c2), "the later rows themselves do change");
        }
    }

    #[test]
    fn info_nce_matches_a_hand_computation() {
        let preds = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0]).view([2, 2]);
        let cands = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]).view([3, 2]);
        let targets = Tensor::from_slice(&[0i64, 2]);
        let (loss, acc) = info_nce(&preds, &cands, &targets);
        // Row 0: logits (1, 0, 1), target 0: −ln(e/(2e + 1)). Row 1: logits (0, 2, 2), target 2.
        let e = std::f64::consts::E;
        let l0 = -(e / (2.0 * e + 1.0)).ln();
        let l1 = -((e * e) / (1.0 + 2.0 * e * e)).ln();
        assert!((loss.double_value(&[]) - (l0 + l1) / 2.0).abs() < 1e-6);
        // Ties go to the first maximum: row 0 picks 0 (right), row 1 picks 1 (wrong).
        assert!((acc.double_value(&[]) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn loss_falls_on_a_fixed_batch() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = Cpc::new(&vs.root(), small(), &ctx()).unwrap();
        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        tch::manual_seed(2);
        let batch = Batch {
            views: vec![Tensor::rand([4, 3, 24, 24], (Kind::Float, Device::Cpu))],
            labels: Tensor::full([4], -1, (Kind::Int64, Device::Cpu)),
            indices: Tensor::arange(4, (Kind::Int64, Device::Cpu)),
        };
        let mut losses = Vec::new();
        for _ in 0..30 {
            m.rng.draws = 0;
            let out = m.step(&batch, true).unwrap();
            assert_eq!(out.inputs, 100);
            losses.push(out.loss.double_value(&[]));
            opt.backward_step(&out.loss);
        }
        // Chance: ln 100 = 4.6 (every patch of the batch a candidate).
        assert!(losses[0] > 3.0, "initial loss {}", losses[0]);
        assert!(*losses.last().unwrap() < 0.6 * losses[0], "losses {losses:?}");
    }
}
