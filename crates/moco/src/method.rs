//! The MoCo method (official `moco/builder.py`, `MoCo.forward`):
//!
//! 1. queries `q = f_q(view 1)` with gradients;
//! 2. keys `k = f_k(view 2)` without gradients from the momentum key network;
//! 3. InfoNCE over the positive `q·k` and the queue, temperature τ;
//! 4. after the optimizer step ([`PretextMethod::after_optimizer_step`]): the momentum update
//!    of the key network, then the keys of the step are enqueued (the oldest dequeued).
//!
//! The official code updates the key network at the start of each forward, with the query
//! weights after the previous optimizer step; doing it right after that optimizer step is the
//! same sequence of weights (the very first update there is a no-op, both copies being equal).
//! Keys are enqueued only for training steps, and only once the step has been taken.
//!
//! **Shuffling BN on one device.** The official code shuffles the key batch across GPUs so that
//! the BN statistics of a query's sub-batch and of its key's sub-batch come from different
//! images (otherwise the model can cheat through the statistics). Here both networks run the
//! batch in `bn_splits` sub-batches, each normalised with its own BN statistics, and the key
//! batch is randomly permuted before splitting and restored after: exactly the multi-GPU
//! Shuffling BN with one sub-batch per simulated device. The permutation is seeded by
//! (run seed, step counter).
//!
//! The batch goes through the network in one pass, every BN normalising each sub-batch on its
//! own, as the CIFAR demo's `SplitBatchNorm` does it (`selfsup_core::encoders::split_batch_norm`):
//! the BN running statistics are updated once per batch, each set to the mean over the
//! sub-batches of what a pass of that sub-batch alone would have left,
//! `mean_k((1 − m)·r0 + m·stat_k) = (1 − m)·r0 + m·mean_k(stat_k)` (for `running_var`,
//! `stat_k` is sub-batch k's unbiased variance, as in the demo). One difference remains: the
//! demo's sub-batch k holds the samples `i ≡ k (mod bn_splits)` (it views `N×C×H×W` as
//! `(N/s)×(C·s)×H×W`), ours are contiguous chunks (so that a job's ranks hold whole
//! sub-batches of the global batch); the two are the same in distribution, batches (and the
//! shuffled key batch) being in random order. In evaluation BN uses the running statistics.
//! Under `train.sync_batch_norm` in a job every BN normalises over the global batch, and
//! `bn_splits` has no effect.
//!
//! **In a data-parallel job** (official `moco/builder.py`, several GPUs): `bn_splits` counts
//! the sub-batches of the global batch, each rank running `bn_splits / world_size` of them on
//! its shard (one each, as the official code's GPUs, when `bn_splits` ≤ the world size). The
//! key images are gathered from every rank, shuffled by the same seeded permutation on every
//! rank, each rank embeds its slice of the shuffled batch, and the keys are gathered and
//! unshuffled (`_batch_shuffle_ddp` / `_batch_unshuffle_ddp`); the queue is fed the keys of all
//! ranks (`concat_all_gather`), so every rank holds the same queue. The BN running statistics
//! are averaged over the ranks after each split forward. Each rank's loss is the mean over its
//! own queries; with the gradients averaged, N ranks at `B / N` compute what one process
//! computes at `B` with the same `bn_splits` (up to float rounding).
//!
//! **Symmetric loss** (official CIFAR-10 demo): `ctr(q1, k2) + ctr(q2, k1)` (a sum, as there),
//! with both key sets enqueued.
use crate::config::{MocoConfig, MocoVersion};
use crate::momentum::{var_at, MomentumEncoder};
use crate::queue::KeyQueue;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use selfsup_contrastive::head::ProjectionHead;
use selfsup_contrastive::loss::{info_nce_logits, l2_normalize, top1_accuracy};
use selfsup_contrastive::{pooled, views, ContrastiveError};
use selfsup_core::encoders::{
    build_encoder, is_running_stat, linear, split_batch_norm, Encoder, Linear, LinearBias,
};
use selfsup_core::seed::{derive_seed, name_hash};
use selfsup_core::{BuildContext, PretextMethod, StepOutput};
use selfsup_data::{Batch, Pipeline};
use selfsup_dist::Collectives;
use std::sync::Arc;
use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

/// The head on the pooled features: one linear layer (v1) or an MLP (v2).
#[derive(Debug)]
enum Head {
    Linear(Linear),
    Mlp(Box<ProjectionHead>),
}

impl Head {
    fn new(p: &nn::Path, in_dim: i64, cfg: &MocoConfig) -> Self {
        match cfg.mlp_head() {
            Some(h) => Head::Mlp(Box::new(ProjectionHead::new(p, in_dim, &h))),
            // `nn.Linear(in_dim, dim)` with PyTorch's initialisation.
            None => Head::Linear(linear(p / "fc", in_dim, cfg.dim, LinearBias::Default)),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            Head::Linear(l) => l.forward(xs),
            Head::Mlp(m) => m.forward_t(xs, train),
        }
    }
}

/// An encoder and its head.
#[derive(Debug)]
struct Network {
    encoder: Box<dyn Encoder>,
    head: Head,
    /// The BN running statistics (`running_mean`, `running_var`) of encoder and head, in a
    /// fixed order: the buffers a job averages over its ranks after each training forward.
    running: Vec<Tensor>,
}

impl Network {
    /// Builds encoder and head on `root`; `running` is filled in by the caller,
    /// which knows the variable names.
    fn new(root: &nn::Path, cfg: &MocoConfig, ctx: &BuildContext) -> Self {
        let encoder = build_encoder(&(root / "encoder"), &ctx.encoder, ctx.image_channels);
        let head = Head::new(&(root / "head"), encoder.out_channels(), cfg);
        Network { encoder, head, running: Vec::new() }
    }

    /// `(N, C, H, W)` → normalised `(N, dim)`. In training with `splits` > 1, every BN
    /// normalises `splits` contiguous sub-batches with their own statistics and sets its running
    /// statistics to the mean of the sub-batches' updates (the demo's `SplitBatchNorm`, see
    /// `selfsup_core::encoders::split_batch_norm`), in one pass over the batch.
    fn embed_t(&self, xs: &Tensor, train: bool, splits: i64) -> Tensor {
        let _split = split_batch_norm(if train { splits } else { 1 });
        l2_normalize(&self.head.forward_t(&pooled(&self.encoder.forward_t(xs, train)), train))
    }

    /// In a job: sets the BN running statistics to their mean over the ranks (after a training
    /// forward, so that every rank holds those of the global batch's sub-batches).
    fn average_running(&self, group: &Arc<dyn Collectives>) -> Result<(), ContrastiveError> {
        Ok(selfsup_dist::average_in_place(group.as_ref(), &self.running, &mut [])?)
    }
}

/// MoCo: query network (`encoder.*`, `head.*` in the trainer's store), key network (its own
/// frozen store, in [`PretextMethod::state_tensors`] as `key.*`), queue (`queue`, `queue_ptr`).
#[derive(Debug)]
pub struct Moco {
    query: Network,
    key: Network,
    key_vars: MomentumEncoder,
    queue: KeyQueue,
    cfg: MocoConfig,
    view: Pipeline,
    seed: u64,
    /// Training steps taken so far (seeds the key shuffle).
    steps: i64,
    /// Keys of the last training step, enqueued after the optimizer step (every rank's, in a
    /// job).
    pending: Vec<Tensor>,
    /// The data-parallel job (world size > 1), if any.
    group: Option<Arc<dyn Collectives>>,
}

impl Moco {
    /// Builds the query network on `root` (`encoder`, `head`), the key network as its frozen
    /// copy in a var store of its own on `ctx.device`, and the queue.
    pub fn new(
        root: &nn::Path,
        cfg: MocoConfig,
        ctx: &BuildContext,
    ) -> Result<Self, ContrastiveError> {
        let tau = cfg.tau();
        if !(tau > 0.0 && tau.is_finite()) {
            return Err(ContrastiveError::Config(format!(
                "moco temperature must be positive, got {tau}"
            )));
        }
        if let Some(h) = cfg.mlp_head() {
            if h.out_dim != cfg.dim {
                return Err(ContrastiveError::Config(format!(
                    "moco head out_dim {} differs from dim {}",
                    h.out_dim, cfg.dim
                )));
            }
        }
        if cfg.bn_splits == 0 {
            return Err(ContrastiveError::Config("moco bn_splits must be at least 1".into()));
        }
        let mut query = Network::new(root, &cfg, ctx);
        let key_vs = nn::VarStore::new(ctx.device);
        let mut key = Network::new(&key_vs.root(), &cfg, ctx);
        // Key and query variables share their names (relative to the two roots).
        let key_store = key_vs.variables();
        let mut names: Vec<&String> = key_store.keys().filter(|n| is_running_stat(n)).collect();
        names.sort();
        for name in names {
            let q = var_at(root, name).ok_or_else(|| {
                ContrastiveError::State(format!("query network has no variable `{name}`"))
            })?;
            query.running.push(q);
            key.running.push(key_store[name].shallow_clone());
        }
        let key_vars = MomentumEncoder::new(key_vs, root, cfg.momentum)?;
        let queue = KeyQueue::new(cfg.queue_size, cfg.dim, ctx.device)?;
        let view = cfg.view.clone().unwrap_or_else(|| match cfg.version {
            MocoVersion::V1 => views::mocov1_view(ctx.image_channels, ctx.image_size),
            MocoVersion::V2 => views::simclr_view(ctx.image_channels, ctx.image_size),
        });
        Ok(Moco {
            query,
            key,
            key_vars,
            queue,
            cfg,
            view,
            seed: ctx.seed,
            steps: 0,
            pending: Vec::new(),
            group: ctx.job(),
        })
    }

    /// The config it was built with.
    pub fn config(&self) -> &MocoConfig {
        &self.cfg
    }

    /// The queue.
    pub fn queue(&self) -> &KeyQueue {
        &self.queue
    }

    /// The key network's variables.
    pub fn key_network(&self) -> &MomentumEncoder {
        &self.key_vars
    }

    /// Ranks in the job (1 for a single process).
    fn world(&self) -> i64 {
        self.group.as_ref().map_or(1, |g| g.world_size() as i64)
    }

    /// Sub-batches of this process's `n` images: `bn_splits` (at most half the global batch)
    /// over the global batch, shared among the ranks.
    fn splits(&self, n: i64) -> Result<i64, ContrastiveError> {
        let world = self.world();
        let global = (self.cfg.bn_splits as i64).min(world * n / 2).max(1);
        if global <= world {
            return Ok(1);
        }
        if global % world != 0 {
            return Err(ContrastiveError::Config(format!(
                "moco bn_splits = {} sub-batches cannot be shared among {world} ranks; use a \
                 multiple of the world size",
                self.cfg.bn_splits
            )));
        }
        Ok(global / world)
    }

    /// Normalised queries.
    ///
    /// # Shapes
    /// `xs`: `(N, C, H, W)`; returns `(N, dim)`.
    pub fn queries_t(&self, xs: &Tensor, train: bool) -> Result<Tensor, ContrastiveError> {
        let q = self.query.embed_t(xs, train, self.splits(xs.size()[0])?);
        if let (Some(g), true) = (&self.group, train) {
            self.query.average_running(g)?;
        }
        Ok(q)
    }

    /// Normalised keys from the key network, without autograd; in training the batch is
    /// shuffled before the split forward and unshuffled after (Shuffling BN, see the module
    /// docs), with a permutation drawn from `(seed, step)`. In a job the shuffle runs over the
    /// global batch, and the keys of every rank come back in rank order.
    ///
    /// # Shapes
    /// `xs`: `(N, C, H, W)`; returns `(world · N, dim)`, this rank's keys at rows
    /// `rank · N ..` (`(N, dim)` outside a job and in evaluation).
    pub fn keys_t(
        &self,
        xs: &Tensor,
        train: bool,
        stream: u64,
    ) -> Result<Tensor, ContrastiveError> {
        let splits = self.splits(xs.size()[0])?;
        let _no_grad = tch::no_grad_guard();
        if !train {
            return Ok(self.key.embed_t(xs, train, splits));
        }
        let group = self.group.as_ref();
        if group.is_none() && splits <= 1 {
            return Ok(self.key.embed_t(xs, train, splits));
        }
        let all = match group {
            Some(g) => g.all_gather(xs)?,
            None => xs.shallow_clone(),
        };
        let n = all.size()[0];
        let (first, local) = (group.map_or(0, |g| g.rank() as i64) * xs.size()[0], xs.size()[0]);
        let mut perm: Vec<i64> = (0..n).collect();
        let s = derive_seed(self.seed, &[name_hash("moco-shuffle-bn"), self.steps as u64, stream]);
        perm.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(s));
        // Drawn on the host (the same on every device and rank) and copied without blocking.
        let perm = selfsup_core::host::upload(&Tensor::from_slice(&perm), xs.device());
        let mine = selfsup_core::precision::select_rows(&all, &perm.narrow(0, first, local))?;
        let k = self.key.embed_t(&mine, train, splits);
        let k = match group {
            Some(g) => {
                self.key.average_running(g)?;
                g.all_gather(&k)?
            }
            None => k,
        };
        Ok(k.index_select(0, &perm.argsort(0, false)))
    }

    /// The loss of one (query view, key view) pair, its logits and the keys (every rank's).
    fn contrast(
        &self,
        xq: &Tensor,
        xk: &Tensor,
        train: bool,
        stream: u64,
    ) -> Result<(Tensor, Tensor, Tensor), ContrastiveError> {
        let q = self.queries_t(xq, train)?;
        let keys = self.keys_t(xk, train, stream)?;
        let k = match (&self.group, train) {
            (Some(g), true) => keys.narrow(0, g.rank() as i64 * q.size()[0], q.size()[0]),
            _ => keys.shallow_clone(),
        };
        let logits = info_nce_logits(&q, &k, self.queue.keys(), self.cfg.tau())?;
        let targets = Tensor::zeros([logits.size()[0]], (Kind::Int64, logits.device()));
        let loss = logits.cross_entropy_for_logits(&targets);
        Ok((loss, logits, keys))
    }
}

impl PretextMethod for Moco {
    fn name(&self) -> &str {
        "moco"
    }

    fn views(&self) -> Vec<Pipeline> {
        vec![self.view.clone(), self.view.clone()]
    }

    fn encoder(&self) -> &dyn Encoder {
        &*self.query.encoder
    }

    /// The L2-normalised query embedding (eval mode), the feature of the official CIFAR demo's
    /// kNN monitor (`net.encoder_q` with its fc, then `F.normalize`).
    fn embedding_t(&self, xs: &Tensor) -> Option<Tensor> {
        Some(self.query.embed_t(xs, false, 1))
    }

    fn step(&mut self, batch: &Batch, train: bool) -> selfsup_core::Result<StepOutput> {
        let (x1, x2) = match batch.views.as_slice() {
            [a, b] => (a, b),
            other => return Err(ContrastiveError::Views { expected: 2, got: other.len() }.into()),
        };
        if x1.size() != x2.size() || x1.dim() != 4 {
            return Err(ContrastiveError::Shape(format!(
                "the two views must be (N, C, H, W) of the same shape, got {:?} and {:?}",
                x1.size(),
                x2.size()
            ))
            .into());
        }
        let n = x1.size()[0];
        let (loss, acc, keys) = if self.cfg.symmetric {
            let (l12, lg12, k2) = self.contrast(x1, x2, train, 0)?;
            let (l21, lg21, k1) = self.contrast(x2, x1, train, 1)?;
            let acc = 0.5 * (accuracy(&lg12) + accuracy(&lg21));
            (l12 + l21, acc, Tensor::cat(&[k1, k2], 0))
        } else {
            let (l, lg, k) = self.contrast(x1, x2, train, 0)?;
            (l, accuracy(&lg), k)
        };
        if train {
            self.pending.push(keys);
            self.steps += 1;
        }
        let inputs = if self.cfg.symmetric { 4 * n } else { 2 * n };
        Ok(StepOutput { loss, metrics: vec![("moco_acc".to_string(), acc)], inputs })
    }

    fn after_optimizer_step(&mut self, _step: u64) -> selfsup_core::Result<()> {
        self.key_vars.update();
        for keys in std::mem::take(&mut self.pending) {
            self.queue.enqueue(&keys)?;
        }
        Ok(())
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = self.key_vars.state();
        v.extend(self.queue.state());
        v.push(("moco_steps".to_string(), Tensor::from(self.steps)));
        v
    }

    fn load_state_tensors(&mut self, tensors: &[(String, Tensor)]) -> selfsup_core::Result<()> {
        self.key_vars.load_state(tensors)?;
        self.queue.load_state(tensors)?;
        self.steps = tensors
            .iter()
            .find(|(n, _)| n == "moco_steps")
            .map(|(_, t)| t.int64_value(&[]))
            .ok_or_else(|| ContrastiveError::State("`moco_steps` missing".into()))?;
        self.pending.clear();
        Ok(())
    }
}

fn accuracy(logits: &Tensor) -> Tensor {
    let targets = Tensor::zeros([logits.size()[0]], (Kind::Int64, logits.device()));
    top1_accuracy(logits, &targets)
}
