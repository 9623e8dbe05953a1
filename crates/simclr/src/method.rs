//! The SimCLR method: two augmented views of every image, the encoder, a projection MLP on the
//! pooled features, and NT-Xent over all 2N views (Chen et al. 2020, Algorithm 1).
//!
//! Large batches: with `micro_batch_size` set, the views are embedded in micro-batches and the
//! loss is still the NT-Xent of the whole batch (every anchor sees all 2N − 2 negatives). With
//! `grad_cache: true` (default) this uses gradient caching
//! ([`selfsup_contrastive::grad_cache`]): micro-batches `1..M−1` are backpropagated inside
//! [`PretextMethod::step`] one at a time and the returned loss is a surrogate whose value is the
//! full-batch loss and whose `backward()` adds the last micro-batch's share, so memory is that
//! of one micro-batch. This needs a trainer that clears gradients before `step` and
//! backpropagates the returned loss unscaled (no fp16 loss scaling); with `grad_cache: false`
//! the micro-batches are kept in one graph (exact under any trainer, memory of the full batch).
//!
//! What micro-batching keeps exact and what it does not:
//! - exact: the loss is the NT-Xent of the whole batch over the embeddings the micro-batches
//!   produce, and its gradient is that loss's gradient;
//! - not exact: batch norm (in the encoder and the projection head) normalises each
//!   micro-batch (and each view) with its own mean and variance, like several GPUs without
//!   SyncBN, so embeddings, loss and gradients differ from those of one batch of the full size;
//!   the paper's global BN over the whole batch is not reproduced on one device;
//! - BN running statistics are updated once per micro-batch: gradient caching embeds every
//!   micro-batch twice (without and with autograd), and the method collects the BN
//!   `running_mean` and `running_var` variables under its root at construction and restores
//!   them after the no-grad pass ([`grad_cached_loss`]'s `running_stats`).
use selfsup_contrastive::grad_cache::{grad_cached_loss, micro_batches};
use selfsup_contrastive::head::{HeadConfig, ProjectionHead};
use selfsup_contrastive::loss::{nt_xent_gathered, nt_xent_joint, nt_xent_logits, top1_accuracy};
use selfsup_contrastive::{pooled, views, ContrastiveError};
use selfsup_core::config::TrainConfig;
use selfsup_core::encoders::{build_encoder, is_running_stat, var_at, Encoder};
use selfsup_core::optim::OptimizerConfig;
use selfsup_core::schedule::ScheduleConfig;
use selfsup_core::{BuildContext, PretextMethod, StepOutput};
use selfsup_data::{Batch, Pipeline};
use selfsup_dist::Collectives;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

/// SimCLR settings. Every field has a default; unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimClrConfig {
    /// NT-Xent temperature τ. Default 0.5 (the paper's CIFAR-10 setting, appendix B.9).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Projection head. Default: hidden = encoder width, output 128, batch norm after both
    /// linear layers (official code, `proj_head_mode=nonlinear`). solo-learn's CIFAR recipe
    /// uses hidden 2048, output 256 and no BN.
    #[serde(default)]
    pub head: HeadConfig,
    /// Embed the views in micro-batches of this many images (per view) and still compute the
    /// full-batch loss; `null` = the whole batch at once. Default null.
    ///
    /// The loss (every anchor against all 2N − 2 negatives) and its gradient are exact; batch
    /// norm is not: each micro-batch is normalised with its own statistics (like several GPUs
    /// without SyncBN), so results differ from one batch of the full size. BN running
    /// statistics are updated once per micro-batch.
    #[serde(default)]
    pub micro_batch_size: Option<usize>,
    /// With micro-batches, use gradient caching (memory of one micro-batch; see the module
    /// docs) rather than one graph over all of them. Both give the same loss, gradients and BN
    /// running statistics (each micro-batch embedded twice, running statistics restored after
    /// the first pass). Default true.
    #[serde(default = "default_true")]
    pub grad_cache: bool,
    /// The augmentation of both views; `null` = SimCLR's for the dataset's image size and
    /// channels ([`views::simclr_view`]). Default null.
    #[serde(default)]
    pub view: Option<Pipeline>,
}

fn default_temperature() -> f64 {
    0.5
}
fn default_true() -> bool {
    true
}

impl Default for SimClrConfig {
    fn default() -> Self {
        SimClrConfig {
            temperature: default_temperature(),
            head: HeadConfig::default(),
            micro_batch_size: None,
            grad_cache: true,
            view: None,
        }
    }
}

/// SimCLR's optimizer for a batch of `batch_size` images: LARS with learning rate
/// `0.3 × batch_size / 256`, momentum 0.9, weight decay 1e-6, trust coefficient 0.001; biases
/// and BN parameters excluded from decay and adaptation (paper section B.1).
pub fn recommended_optimizer(batch_size: usize) -> OptimizerConfig {
    OptimizerConfig::Lars {
        lr: 0.3 * batch_size as f64 / 256.0,
        momentum: 0.9,
        weight_decay: 1e-6,
        eta: 0.001,
    }
}

/// SimCLR's schedule: linear warm-up for 10 epochs (or a tenth of the run if shorter), then
/// cosine decay to 0 (paper section B.1).
pub fn recommended_schedule(epochs: u64) -> ScheduleConfig {
    ScheduleConfig::Cosine { warmup_epochs: (epochs as f64 / 10.0).min(10.0), final_fraction: 0.0 }
}

/// SimCLR's training settings for `batch_size` images per step over `epochs` epochs:
/// [`recommended_optimizer`] and [`recommended_schedule`], other fields at their defaults.
pub fn recommended_train_config(batch_size: usize, epochs: u64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size,
        optimizer: recommended_optimizer(batch_size),
        schedule: recommended_schedule(epochs),
        ..TrainConfig::default()
    }
}

/// SimCLR: encoder (`encoder.*`) and projection head (`head.*`).
#[derive(Debug)]
pub struct SimClr {
    encoder: Box<dyn Encoder>,
    head: ProjectionHead,
    cfg: SimClrConfig,
    view: Pipeline,
    /// The BN running statistics under the method's root (shallow clones), kept for gradient
    /// caching; empty unless micro-batches with gradient caching are configured.
    running_stats: Vec<Tensor>,
    /// The data-parallel job, whose ranks' embeddings are gathered as negatives.
    group: Option<Arc<dyn Collectives>>,
}

/// The BN `running_mean` and `running_var` variables of the encoder and head built on `root`.
///
/// An `nn::Path` cannot list its variables, so the same modules are built once more in a
/// scratch CPU var store to learn the names (as MoCo pairs its key network with the query
/// network by name), then looked up under `root`. The scratch build draws from libtorch's
/// generator after the method's own variables were initialised, so it does not change them (and
/// the trainer reseeds the generator before every step).
fn running_stats_of(
    root: &nn::Path,
    ctx: &BuildContext,
    head: &HeadConfig,
) -> Result<Vec<Tensor>, ContrastiveError> {
    let scratch = nn::VarStore::new(Device::Cpu);
    let names: Vec<String> = tch::no_grad(|| {
        let encoder =
            build_encoder(&(scratch.root() / "encoder"), &ctx.encoder, ctx.image_channels);
        let _ = ProjectionHead::new(&(scratch.root() / "head"), encoder.out_channels(), head);
        let mut names: Vec<String> =
            scratch.variables().into_keys().filter(|n| is_running_stat(n)).collect();
        names.sort();
        names
    });
    names
        .iter()
        .map(|name| {
            var_at(root, name).ok_or_else(|| {
                ContrastiveError::State(format!(
                    "simclr: batch-norm statistic `{name}` not found under the method's root"
                ))
            })
        })
        .collect()
}

impl SimClr {
    /// Builds the encoder on `root / "encoder"` and the projection head on `root / "head"`.
    pub fn new(
        root: &nn::Path,
        cfg: SimClrConfig,
        ctx: &BuildContext,
    ) -> Result<Self, ContrastiveError> {
        if !(cfg.temperature > 0.0 && cfg.temperature.is_finite()) {
            return Err(ContrastiveError::Config(format!(
                "simclr temperature must be positive, got {}",
                cfg.temperature
            )));
        }
        if cfg.micro_batch_size == Some(0) {
            return Err(ContrastiveError::Config(
                "simclr micro_batch_size must be at least 1".into(),
            ));
        }
        let encoder = build_encoder(&(root / "encoder"), &ctx.encoder, ctx.image_channels);
        let head = ProjectionHead::new(&(root / "head"), encoder.out_channels(), &cfg.head);
        let view = cfg
            .view
            .clone()
            .unwrap_or_else(|| views::simclr_view(ctx.image_channels, ctx.image_size));
        let running_stats = if cfg.micro_batch_size.is_some() && cfg.grad_cache {
            running_stats_of(root, ctx, &cfg.head)?
        } else {
            Vec::new()
        };
        let group = ctx.job();
        if group.is_some() && cfg.micro_batch_size.is_some() && cfg.grad_cache {
            return Err(ContrastiveError::Config(
                "simclr: gradient caching (micro_batch_size with grad_cache: true) is not \
                 available in a data-parallel job; set grad_cache: false or drop micro_batch_size"
                    .into(),
            ));
        }
        Ok(SimClr { encoder, head, cfg, view, running_stats, group })
    }

    /// The config it was built with.
    pub fn config(&self) -> &SimClrConfig {
        &self.cfg
    }

    /// Projection of a batch of images: pooled encoder features through the head.
    ///
    /// # Shapes
    /// `xs`: `(N, C, H, W)`; returns `(N, out_dim)`.
    pub fn embed_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = pooled(&self.encoder.forward_t(xs, train));
        self.head.forward_t(&h, train)
    }

    /// The NT-Xent loss of two views (a surrogate with gradient caching, see the module docs)
    /// and the top-1 accuracy of its anchors (the positive ranked first among all views;
    /// without gradient). In a data-parallel job, over the global batch with this rank's
    /// anchors: the ranks' means are the global batch's values.
    ///
    /// # Shapes
    /// `x1`, `x2`: `(N, C, H, W)`, N ≥ 2; returns two scalars.
    pub fn loss(
        &self,
        x1: &Tensor,
        x2: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor), ContrastiveError> {
        if x1.size() != x2.size() || x1.dim() != 4 {
            return Err(ContrastiveError::Shape(format!(
                "the two views must be (N, C, H, W) of the same shape, got {:?} and {:?}",
                x1.size(),
                x2.size()
            )));
        }
        let tau = self.cfg.temperature;
        let n = x1.size()[0] as usize;
        match self.cfg.micro_batch_size {
            Some(m) if m < n => {
                let chunks: Vec<Tensor> =
                    micro_batches(x1, m).into_iter().chain(micro_batches(x2, m)).collect();
                if self.cfg.grad_cache && train {
                    let out = grad_cached_loss(
                        &chunks,
                        |c| self.embed_t(c, train),
                        |z| nt_xent_joint(z, tau),
                        true,
                        &self.running_stats,
                    )?;
                    Ok((out.loss, accuracy(&out.embeddings, tau)?))
                } else {
                    let embs: Vec<Tensor> = chunks.iter().map(|c| self.embed_t(c, train)).collect();
                    self.joint_loss(Tensor::cat(&embs, 0), train)
                }
            }
            // Each view through the network on its own (BN statistics per view, as the
            // reference implementations do).
            _ => {
                let z = Tensor::cat(&[self.embed_t(x1, train), self.embed_t(x2, train)], 0);
                self.joint_loss(z, train)
            }
        }
    }

    /// NT-Xent of the joint embedding `z` (`(2N, D)`: view 1, then view 2) and its accuracy:
    /// over the batch alone, or in a data-parallel job over the global batch with every rank's
    /// embeddings as negatives ([`nt_xent_gathered`], this rank's anchors) in training.
    fn joint_loss(&self, z: Tensor, train: bool) -> Result<(Tensor, Tensor), ContrastiveError> {
        let tau = self.cfg.temperature;
        match &self.group {
            // Training steps only: every rank takes them together (an evaluation pass on one
            // rank must not wait for the others).
            Some(g) if train => {
                let n = z.size()[0] / 2;
                let (loss, logits, targets) =
                    nt_xent_gathered(g, &z.narrow(0, 0, n), &z.narrow(0, n, n), tau)?;
                Ok((loss, top1_accuracy(&logits, &targets)))
            }
            _ => Ok((nt_xent_joint(&z, tau)?, accuracy(&z, tau)?)),
        }
    }
}

/// The top-1 accuracy of NT-Xent's anchors over the joint embedding `z` (`(2N, D)`), without
/// gradient.
fn accuracy(z: &Tensor, tau: f64) -> Result<Tensor, ContrastiveError> {
    tch::no_grad(|| nt_xent_logits(&z.detach(), tau).map(|(l, t)| top1_accuracy(&l, &t)))
}

impl PretextMethod for SimClr {
    fn name(&self) -> &str {
        "simclr"
    }

    fn views(&self) -> Vec<Pipeline> {
        vec![self.view.clone(), self.view.clone()]
    }

    fn encoder(&self) -> &dyn Encoder {
        &*self.encoder
    }

    /// The L2-normalised projection-head output (eval mode).
    fn embedding_t(&self, xs: &Tensor) -> Option<Tensor> {
        Some(selfsup_contrastive::loss::l2_normalize(&self.embed_t(xs, false)))
    }

    fn step(&mut self, batch: &Batch, train: bool) -> selfsup_core::Result<StepOutput> {
        let (x1, x2) = match batch.views.as_slice() {
            [a, b] => (a, b),
            other => return Err(ContrastiveError::Views { expected: 2, got: other.len() }.into()),
        };
        let (loss, acc) = self.loss(x1, x2, train)?;
        Ok(StepOutput {
            loss,
            metrics: vec![("contrastive_acc".to_string(), acc)],
            inputs: 2 * x1.size()[0],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfsup_core::encoders::EncoderConfig;
    use tch::Kind;

    fn ctx() -> BuildContext {
        BuildContext {
            device: Device::Cpu,
            seed: 7,
            num_train_images: 16,
            image_channels: 3,
            image_size: 16,
            encoder: EncoderConfig::Tiny { width: 4, batch_norm: true },
            group: None,
        }
    }

    fn stats(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var"))
            .map(|(n, t)| (n, t.copy()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Gradient caching embeds each micro-batch twice, yet leaves the BN running statistics of
    /// encoder and head as one graph over the same micro-batches does (one update each).
    #[test]
    fn gradient_cache_updates_bn_running_statistics_once_per_micro_batch() {
        tch::manual_seed(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let cached_cfg = SimClrConfig { micro_batch_size: Some(3), ..SimClrConfig::default() };
        let cached = SimClr::new(&vs.root(), cached_cfg, &ctx()).unwrap();
        // Tiny encoder: 2 BN layers; head: bn1, bn2; mean and variance of each.
        assert_eq!(cached.running_stats.len(), 8);
        let plain_cfg = SimClrConfig { grad_cache: false, ..cached.config().clone() };
        let mut vs2 = nn::VarStore::new(Device::Cpu);
        let plain = SimClr::new(&vs2.root(), plain_cfg, &ctx()).unwrap();
        assert!(plain.running_stats.is_empty());
        vs2.copy(&vs).unwrap();
        let initial = stats(&vs);

        let x1 = Tensor::randn([8, 3, 16, 16], (Kind::Float, Device::Cpu));
        let x2 = &x1 + Tensor::randn([8, 3, 16, 16], (Kind::Float, Device::Cpu)) * 0.3;
        let (loss, _) = cached.loss(&x1, &x2, true).unwrap();
        loss.backward();
        let (loss2, _) = plain.loss(&x1, &x2, true).unwrap();
        loss2.backward();
        for (((name, got), (_, want)), (_, init)) in
            stats(&vs).iter().zip(stats(&vs2)).zip(&initial)
        {
            let d = (got - &want).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{name}: gradient caching differs from one graph by {d}");
            let moved = (&want - init).abs().max().double_value(&[]);
            assert!(moved > 1e-4, "{name} was not updated");
        }
    }
}
