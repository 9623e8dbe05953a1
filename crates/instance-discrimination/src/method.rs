//! The instance discrimination method: encoder, a linear layer to `dim`, L2 normalisation
//! (official `models/resnet.py` with `low_dim` and `Normalize`; with `head_bn`, a batch norm
//! before the normalisation), and the non-parametric softmax over the memory bank, trained with
//! NCE or the full softmax.
//!
//! NCE (official `NCEAverage`): for each image, K noise indices are drawn uniformly from the
//! training set (libtorch's generator, which the trainer reseeds every step) and the image's own
//! index is put in column 0; the scores `exp(m_j·v/τ)` are divided by Z, estimated once as
//! `N × mean(scores)` on the first training batch and then fixed (the paper's Monte-Carlo
//! estimate, section 3.2), and the loss is [`nce_loss`]. The bank rows of the batch are updated
//! after the optimizer step with the features of the step (detached), momentum 0.5.
//!
//! In a data-parallel job every rank keeps the whole bank and writes every rank's features to
//! it (gathered after the optimizer step), so the banks stay the same on all ranks; Z is
//! estimated from the global first batch (the mean of the ranks' means).
use crate::config::{InstDiscConfig, Objective};
use crate::memory::{nce_loss, MemoryBank};
use selfsup_contrastive::loss::{l2_normalize, top1_accuracy};
use selfsup_contrastive::{pooled, views, ContrastiveError};
use selfsup_core::encoders::{
    batch_norm1d, build_encoder, linear, BatchNorm, Encoder, Linear, LinearBias,
};
use selfsup_core::method::classification_loss;
use selfsup_core::{BuildContext, PretextMethod, StepOutput};
use selfsup_data::{Batch, Pipeline};
use selfsup_dist::Collectives;
use std::sync::Arc;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Instance discrimination: encoder (`encoder.*`), linear head (`head.*`), memory bank (in
/// [`PretextMethod::state_tensors`] as `memory_bank`, with `nce_z`).
#[derive(Debug)]
pub struct InstanceDiscrimination {
    encoder: Box<dyn Encoder>,
    head: Linear,
    head_bn: Option<BatchNorm>,
    bank: MemoryBank,
    cfg: InstDiscConfig,
    view: Pipeline,
    /// NCE normalisation constant; negative until estimated.
    z: f64,
    /// (indices, features) of the last training step, written to the bank after the
    /// optimizer step.
    pending: Option<(Tensor, Tensor)>,
    /// The data-parallel job (world size > 1), if any: the bank is written with every rank's
    /// features, so that it is the same on every rank.
    group: Option<Arc<dyn Collectives>>,
}

impl InstanceDiscrimination {
    /// Builds the encoder on `root / "encoder"`, the linear head on `root / "head"` and a bank
    /// of `ctx.num_train_images` rows.
    pub fn new(
        root: &nn::Path,
        cfg: InstDiscConfig,
        ctx: &BuildContext,
    ) -> Result<Self, ContrastiveError> {
        if !(cfg.temperature > 0.0 && cfg.temperature.is_finite()) {
            return Err(ContrastiveError::Config(format!(
                "instance-discrimination temperature must be positive, got {}",
                cfg.temperature
            )));
        }
        if cfg.objective == Objective::Nce && cfg.nce_k < 1 {
            return Err(ContrastiveError::Config(format!(
                "nce_k must be at least 1, got {}",
                cfg.nce_k
            )));
        }
        let encoder = build_encoder(&(root / "encoder"), &ctx.encoder, ctx.image_channels);
        // PyTorch's initialisation (lemniscate builds its head with `nn.Linear` defaults).
        let head = linear(root / "head", encoder.out_channels(), cfg.dim, LinearBias::Default);
        let head_bn = cfg.head_bn.then(|| batch_norm1d(root / "head_bn", cfg.dim));
        let bank = MemoryBank::new(ctx.num_train_images, cfg.dim, cfg.bank_momentum, ctx.device)?;
        let view = cfg
            .view
            .clone()
            .unwrap_or_else(|| views::mocov1_view(ctx.image_channels, ctx.image_size));
        Ok(InstanceDiscrimination {
            encoder,
            head,
            head_bn,
            bank,
            cfg,
            view,
            z: -1.0,
            pending: None,
            group: ctx.job(),
        })
    }

    /// The memory bank.
    pub fn bank(&self) -> &MemoryBank {
        &self.bank
    }

    /// The NCE normalisation constant Z (negative until the first training batch).
    pub fn nce_z(&self) -> f64 {
        self.z
    }

    /// L2-normalised features.
    ///
    /// # Shapes
    /// `xs`: `(B, C, H, W)`; returns `(B, dim)`.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = self.head.forward(&pooled(&self.encoder.forward_t(xs, train)));
        match &self.head_bn {
            Some(bn) => l2_normalize(&h.apply_t(bn, train)),
            None => l2_normalize(&h),
        }
    }

    /// Ranks in the job (1 for a single process).
    fn world(&self) -> i64 {
        self.group.as_ref().map_or(1, |g| g.world_size() as i64)
    }

    /// Loss and accuracy (the own index scoring highest among the candidates) for normalised
    /// features `v` of the images `indices`.
    ///
    /// # Shapes
    /// `v`: `(B, dim)`; `indices`: `(B,)` i64.
    pub fn loss(
        &mut self,
        v: &Tensor,
        indices: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor), ContrastiveError> {
        let tau = self.cfg.temperature;
        let idx = indices.to_device(v.device());
        // Similarities, scores and losses in fp32, outside the bf16 autocast of the step (as
        // PyTorch code computes them outside its `torch.autocast` block).
        let v = v.to_kind(Kind::Float);
        selfsup_core::precision::without_autocast(v.device(), || match self.cfg.objective {
            Objective::Softmax => {
                let logits = self.bank.similarities(&v) / tau;
                Ok(classification_loss(&logits, &idx)
                    .unwrap_or_else(|e| panic!("softmax loss of logits {:?}: {e}", logits.size())))
            }
            Objective::Nce => {
                let (b, k, n) = (v.size()[0], self.cfg.nce_k, self.bank.len());
                let noise = Tensor::randint_low(0, n, [b, k], (Kind::Int64, v.device()));
                let candidates = Tensor::cat(&[idx.unsqueeze(1), noise], 1);
                let dots = self.bank.candidate_similarities(&v, &candidates);
                let scores = (&dots / tau).exp();
                if self.z < 0.0 && train {
                    // In a job, the mean over the global batch (the ranks' shards are equal).
                    let mean = scores.mean(Kind::Float);
                    if let Some(g) = &self.group {
                        g.all_reduce_sum(&mean)?;
                    }
                    self.z = mean.double_value(&[]) / self.world() as f64 * n as f64;
                }
                let z = if self.z > 0.0 {
                    self.z
                } else {
                    scores.mean(Kind::Float).double_value(&[]) * n as f64
                };
                let loss = nce_loss(&(scores / z), n)?;
                let targets = Tensor::zeros([b], (Kind::Int64, v.device()));
                Ok((loss, top1_accuracy(&dots, &targets)))
            }
        })
    }
}

impl PretextMethod for InstanceDiscrimination {
    fn name(&self) -> &str {
        "instance-discrimination"
    }

    fn views(&self) -> Vec<Pipeline> {
        vec![self.view.clone()]
    }

    fn encoder(&self) -> &dyn Encoder {
        &*self.encoder
    }

    /// The L2-normalised 128-d feature lemniscate's kNN reads (eval mode).
    fn embedding_t(&self, xs: &Tensor) -> Option<Tensor> {
        Some(self.features_t(xs, false))
    }

    /// The indices' range, on the host before the trainer uploads the batch.
    fn check_batch(&self, batch: &Batch) -> selfsup_core::Result<()> {
        Ok(self.bank.check_indices(&batch.indices)?)
    }

    fn step(&mut self, batch: &Batch, train: bool) -> selfsup_core::Result<StepOutput> {
        let x = match batch.views.as_slice() {
            [x] => x,
            other => return Err(ContrastiveError::Views { expected: 1, got: other.len() }.into()),
        };
        self.bank.check_indices(&batch.indices)?;
        if batch.indices.size()[0] != x.size()[0] {
            return Err(ContrastiveError::Shape(format!(
                "batch has {} images but {} indices",
                x.size()[0],
                batch.indices.size()[0]
            ))
            .into());
        }
        let v = self.features_t(x, train);
        let (loss, acc) = self.loss(&v, &batch.indices, train)?;
        if train {
            self.pending = Some((batch.indices.shallow_clone(), v.detach()));
        }
        let metrics =
            vec![("instance_acc".to_string(), acc), ("nce_z".to_string(), Tensor::from(self.z))];
        Ok(StepOutput { loss, metrics, inputs: x.size()[0] })
    }

    fn after_optimizer_step(&mut self, _step: u64) -> selfsup_core::Result<()> {
        if let Some((idx, v)) = self.pending.take() {
            match &self.group {
                // Every rank's images, in rank order: the bank stays the same on every rank.
                Some(g) => {
                    let idx = g.all_gather(&idx.to_device(v.device()))?;
                    let v = g.all_gather(&v)?;
                    self.bank.update(&idx, &v)?;
                }
                None => self.bank.update(&idx, &v)?,
            }
        }
        Ok(())
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = self.bank.state();
        v.push(("nce_z".to_string(), Tensor::from(self.z)));
        v
    }

    fn load_state_tensors(&mut self, tensors: &[(String, Tensor)]) -> selfsup_core::Result<()> {
        self.bank.load_state(tensors)?;
        self.z = tensors
            .iter()
            .find(|(n, _)| n == "nce_z")
            .map(|(_, t)| t.double_value(&[]))
            .ok_or_else(|| ContrastiveError::State("`nce_z` missing".into()))?;
        self.pending = None;
        Ok(())
    }
}
