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
//! The sub-batches go through the network in separate forward passes, but the BN running
//! statistics are updated once per batch, as the CIFAR demo's `SplitBatchNorm` does it: every
//! sub-batch starts from the same running statistics `r0` (restored before each pass), and
//! after the last one each running buffer is set to the mean over the sub-batches of what its
//! pass left there, `mean_k((1 − m)·r0 + m·stat_k) = (1 − m)·r0 + m·mean_k(stat_k)` (for
//! `running_var`, `stat_k` is sub-batch k's unbiased variance, as in the demo). The outputs are
//! those of the separate passes. One difference remains: the demo's sub-batch k holds the
//! samples `i ≡ k (mod bn_splits)` (it views `N×C×H×W` as `(N/s)×(C·s)×H×W`), ours are
//! contiguous chunks; the two are the same in distribution, batches (and the shuffled key
//! batch) being in random order. In evaluation BN uses the running statistics, so the batch
//! goes through in one pass.
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
use selfsup_core::encoders::{build_encoder, is_running_stat, linear, Encoder, LinearBias};
use selfsup_core::seed::{derive_seed, name_hash};
use selfsup_core::{BuildContext, PretextMethod, StepOutput};
use selfsup_data::{Batch, Pipeline};
use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

/// The head on the pooled features: one linear layer (v1) or an MLP (v2).
#[derive(Debug)]
enum Head {
    Linear(nn::Linear),
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
    /// fixed order: the buffers that split BN updates once per batch (see the module docs).
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

    /// `(N, C, H, W)` → normalised `(N, dim)`. In training with `splits` > 1, the batch is run
    /// in `splits` contiguous sub-batches (own BN statistics each) and the running statistics
    /// are set to the mean of the sub-batches' updates from the same start (the demo's
    /// `SplitBatchNorm`).
    fn embed_t(&self, xs: &Tensor, train: bool, splits: i64) -> Tensor {
        let run = |x: &Tensor| {
            l2_normalize(&self.head.forward_t(&pooled(&self.encoder.forward_t(x, train)), train))
        };
        if !train || splits <= 1 {
            return run(xs);
        }
        // The buffers are written through `data()` (PyTorch's `.data`, as the demo does), which
        // leaves their version counters alone: the graphs of the earlier passes saved them, and
        // a training-mode BN backward does not read them.
        let r0: Vec<Tensor> = self.running.iter().map(Tensor::copy).collect();
        let mut sums: Vec<Tensor> = r0.iter().map(Tensor::zeros_like).collect();
        let chunks = xs.chunk(splits, 0);
        let mut parts = Vec::with_capacity(chunks.len());
        for x in &chunks {
            tch::no_grad(|| {
                for (buf, r) in self.running.iter().zip(&r0) {
                    buf.data().copy_(r);
                }
            });
            parts.push(run(x));
            tch::no_grad(|| {
                for (sum, buf) in sums.iter_mut().zip(&self.running) {
                    let _ = sum.g_add_(buf);
                }
            });
        }
        let count = chunks.len() as f64;
        tch::no_grad(|| {
            for (buf, sum) in self.running.iter().zip(&sums) {
                buf.data().copy_(&(sum / count));
            }
        });
        Tensor::cat(&parts, 0)
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
    /// Keys of the last training step, enqueued after the optimizer step.
    pending: Vec<Tensor>,
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

    fn splits(&self, n: i64) -> i64 {
        (self.cfg.bn_splits as i64).min(n / 2).max(1)
    }

    /// Normalised queries.
    ///
    /// # Shapes
    /// `xs`: `(N, C, H, W)`; returns `(N, dim)`.
    pub fn queries_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.query.embed_t(xs, train, self.splits(xs.size()[0]))
    }

    /// Normalised keys from the key network, without autograd; in training the batch is
    /// shuffled before the split forward and unshuffled after (Shuffling BN, see the module
    /// docs), with a permutation drawn from `(seed, step)`.
    ///
    /// # Shapes
    /// `xs`: `(N, C, H, W)`; returns `(N, dim)`.
    pub fn keys_t(&self, xs: &Tensor, train: bool, stream: u64) -> Tensor {
        let n = xs.size()[0];
        let splits = self.splits(n);
        tch::no_grad(|| {
            if !train || splits <= 1 {
                return self.key.embed_t(xs, train, splits);
            }
            let mut perm: Vec<i64> = (0..n).collect();
            let s =
                derive_seed(self.seed, &[name_hash("moco-shuffle-bn"), self.steps as u64, stream]);
            perm.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(s));
            // Drawn on the host (the same on every device) and copied without blocking.
            let perm = selfsup_core::host::upload(&Tensor::from_slice(&perm), xs.device());
            let k = self.key.embed_t(&xs.index_select(0, &perm), train, splits);
            let inverse = perm.argsort(0, false);
            k.index_select(0, &inverse)
        })
    }

    /// The loss of one (query view, key view) pair, its logits and the keys.
    fn contrast(
        &self,
        xq: &Tensor,
        xk: &Tensor,
        train: bool,
        stream: u64,
    ) -> Result<(Tensor, Tensor, Tensor), ContrastiveError> {
        let q = self.queries_t(xq, train);
        let k = self.keys_t(xk, train, stream);
        let logits = info_nce_logits(&q, &k, self.queue.keys(), self.cfg.tau())?;
        let targets = Tensor::zeros([logits.size()[0]], (Kind::Int64, logits.device()));
        let loss = logits.cross_entropy_for_logits(&targets);
        Ok((loss, logits, k))
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
        Some(self.queries_t(xs, false))
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
