//! The [`PretextMethod`] trait: how a batch of images becomes a loss.
//!
//! Modelled on burn's `TrainStep`: the trainer owns the loop, optimizers, checkpoints and
//! logging; a method builds its encoder and heads on the [`nn::Path`] it is given, says which
//! augmented views it needs from the data pipeline, and turns a batch into a loss and metrics.
use crate::encoders::Encoder;
use crate::Result;
use selfsup_data::{Batch, Op, Pipeline};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

/// Per-channel pixel normalisation of a method's input, `(x / 255 − mean) / std`: what the
/// encoder saw in pretraining. Recorded in every checkpoint so that evaluation feeds the frozen
/// encoder the same input statistics (`selfsup eval`, the kNN monitor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputNormalization {
    /// Per-channel mean of pixels scaled to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of pixels scaled to [0, 1].
    pub std: Vec<f32>,
}

impl InputNormalization {
    /// The final `Normalize` op of `view`, if the pipeline ends with one.
    pub fn of_pipeline(view: &Pipeline) -> Option<Self> {
        match view.ops.last() {
            Some(Op::Normalize { mean, std }) => {
                Some(InputNormalization { mean: mean.clone(), std: std.clone() })
            }
            _ => None,
        }
    }
}

/// What a method may need to know when it is built.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The device the variables live on.
    pub device: Device,
    /// The run seed (methods derive their own RNG streams from it).
    pub seed: u64,
    /// Number of images in the training set (instance discrimination sizes its memory bank).
    pub num_train_images: usize,
    /// Channels of the stored images (1 for MNIST-like data, 3 for colour).
    pub image_channels: i64,
    /// Side of the stored images in pixels (32 for CIFAR, 96 for STL-10).
    pub image_size: i64,
    /// The encoder to build under `root / "encoder"` (the run config's `encoder`).
    pub encoder: crate::encoders::EncoderConfig,
    /// The data-parallel job this process is a rank of, if any: the trainer shards each global
    /// batch over its ranks and averages the gradients; methods whose loss or state looks
    /// across the batch use it to see the whole global batch (SimCLR's negatives, MoCo's
    /// shuffled keys and queue, a memory bank's updates). `None` for a single process.
    pub group: Option<std::sync::Arc<dyn selfsup_dist::Collectives>>,
}

impl BuildContext {
    /// This process's rank in its job (0 for a single process).
    pub fn rank(&self) -> usize {
        self.group.as_ref().map_or(0, |g| g.rank())
    }

    /// The job when it has more than one rank: what a method keeps to look across ranks (a job
    /// of one rank needs nothing of it).
    pub fn job(&self) -> Option<std::sync::Arc<dyn selfsup_dist::Collectives>> {
        self.group.clone().filter(|g| g.world_size() > 1)
    }
}

/// A loss and the metrics to log with it, returned by [`PretextMethod::step`].
#[derive(Debug)]
pub struct StepOutput {
    /// Scalar loss to minimise with the main optimizer.
    pub loss: Tensor,
    /// Scalar metrics (name, value), e.g. the pretext accuracy, computed on the batch: each a
    /// one-element tensor without grad, left on the step's device. The trainer sums them on the
    /// device and reads them back every `log_every` steps and at the epoch's end, so a step
    /// does not wait for the device (see [`crate::host`]).
    pub metrics: Vec<(String, Tensor)>,
    /// Number of encoder inputs in this step (e.g. 4 × batch for RotNet), for images/s.
    pub inputs: i64,
}

/// An extra optimizer a method asks for, over the trainable variables whose names start with
/// `prefix` (the context encoder's discriminator, say). Those variables are then left out of
/// the main optimizer.
#[derive(Debug, Clone)]
pub struct ExtraOptimizer {
    /// Name of the optimizer in logs and checkpoints.
    pub name: String,
    /// Variable-name prefix (`"discriminator."`) selecting its parameters.
    pub prefix: String,
    /// Its optimizer settings.
    pub optimizer: crate::optim::OptimizerConfig,
}

/// A self-supervised pretext task.
///
/// Implementations put the encoder under `root / "encoder"` (so checkpoints and exports find it)
/// and their heads elsewhere (`root / "head"`).
pub trait PretextMethod {
    /// The registry name (`rotnet`, `simclr`, ...).
    fn name(&self) -> &str;

    /// The views of each image the method needs from the data pipeline, one pipeline per view.
    /// Each view arrives as `batch.views[i]` with shape `(B, C, H, W)`.
    fn views(&self) -> Vec<Pipeline>;

    /// The encoder being trained (the part that is evaluated and exported).
    fn encoder(&self) -> &dyn Encoder;

    /// The pixel normalisation of the encoder's input, for evaluation. Default: the final
    /// `Normalize` op of the first view; `None` when the views end otherwise (a method that
    /// normalises per patch, say), and evaluation then uses the evaluation images' statistics.
    fn input_normalization(&self) -> Option<InputNormalization> {
        self.views().first().and_then(InputNormalization::of_pipeline)
    }

    /// The method's embedding of images for evaluation, where it has one: the L2-normalised
    /// head output of the contrastive methods (MoCo's CIFAR demo and lemniscate run their kNN
    /// monitor on it), computed in eval mode. `None` (default) for methods without one.
    ///
    /// # Shapes
    /// `xs`: `(N, C, H, W)` normalised images; returns `(N, D)`.
    fn embedding_t(&self, _xs: &Tensor) -> Option<Tensor> {
        None
    }

    /// The method's own class scores, where it is a classifier (the supervised baseline):
    /// evaluation then counts its predictions end to end. `None` (default) for pretext methods.
    ///
    /// # Shapes
    /// `xs`: `(N, C, H, W)` normalised images; returns `(N, K)` for `K` classes.
    fn class_logits_t(&self, _xs: &Tensor) -> Option<Tensor> {
        None
    }

    /// Checks a batch while it is still on the host, before the trainer uploads it: label
    /// ranges, index ranges (reading those values from a device tensor inside the step would
    /// make the host wait for the device at every step). Default: nothing to check.
    fn check_batch(&self, _batch: &Batch) -> Result<()> {
        Ok(())
    }

    /// Turns a batch (already on the training device) into a loss. `train` is false for
    /// validation passes.
    fn step(&mut self, batch: &Batch, train: bool) -> Result<StepOutput>;

    /// Called after each step of the main optimizer (MoCo's momentum update and queue).
    fn after_optimizer_step(&mut self, _step: u64) -> Result<()> {
        Ok(())
    }

    /// Losses for the extra optimizers of [`PretextMethod::extra_optimizers`], by name;
    /// called after the main step and [`PretextMethod::after_optimizer_step`], under the same
    /// autocast as [`PretextMethod::step`] (a GAN's discriminator loss, on the generator output
    /// the step kept, detached). An optimizer whose name is missing skips this step. The
    /// trainer clears the optimizer's gradients, back-propagates its loss, steps it at its own
    /// rate (under the run's schedule) and logs the loss as `<name>_loss`.
    fn extra_losses(&mut self, _batch: &Batch) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    /// Extra optimizers, each over a prefix of the variable names; they take their variables
    /// out of the main optimizer, and their buffers are checkpointed as `extra.<name>.*`. Names
    /// must be distinct and every prefix must select at least one trainable variable.
    fn extra_optimizers(&self) -> Vec<ExtraOptimizer> {
        Vec::new()
    }

    /// Writes the method's own files for the epoch that just ended into the run folder (the
    /// context encoder's grid of inpainted samples): called by the trainer after each completed
    /// epoch, once its checkpoint is written. `epoch` counts the completed epochs (1-based);
    /// `last` is true for the run's final epoch. Default: nothing.
    fn write_epoch_artifacts(
        &mut self,
        _epoch: u64,
        _last: bool,
        _run_dir: &std::path::Path,
    ) -> Result<()> {
        Ok(())
    }

    /// State that is not a trainable variable of the var store but must survive a checkpoint
    /// (MoCo's key encoder and queue, a memory bank), by name.
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Restores what [`PretextMethod::state_tensors`] returned.
    fn load_state_tensors(&mut self, _tensors: &[(String, Tensor)]) -> Result<()> {
        Ok(())
    }
}

/// Builds a method on `root` from its JSON config.
pub type BuildFn = fn(
    root: &nn::Path,
    config: &serde_json::Value,
    ctx: &BuildContext,
) -> Result<Box<dyn PretextMethod>>;

/// The one view of a single-view method's batch; a batch with another number of views is a
/// config error naming `method`.
pub fn single_view<'a>(batch: &'a Batch, method: &str) -> Result<&'a Tensor> {
    match batch.views.as_slice() {
        [x] => Ok(x),
        other => Err(crate::CoreError::Config(format!(
            "{method}: batch has {} views, expected 1",
            other.len()
        ))),
    }
}

/// The cross-entropy of `logits` against `labels` (in f32 whatever the logits' kind) and the
/// accuracy of their argmax: the loss and metric of every classification pretext task.
///
/// # Shapes
/// `logits`: `(N, K)`; `labels`: `(N,)` i64; returns the loss and the accuracy (a fraction),
/// both `()` on the logits' device.
pub fn classification_loss(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    let loss = logits.f_log_softmax(-1, tch::Kind::Float)?.f_nll_loss::<Tensor>(
        labels,
        None,
        tch::Reduction::Mean,
        -100,
    )?;
    Ok((loss, top1_accuracy(logits, labels)?))
}

/// `t.argmax(dim)`: the index of the largest value along `dim` (a tie goes to the first
/// largest, NaN is the largest), taken from `max_dim`'s indices, which are `argmax`'s and
/// which ATen's CPU kernels reduce in a third to a half of `argmax`'s time (2 threads: 1.3
/// against 2.4 ms in float, 1.1 against 4.5 in bfloat16 at `(1280, 1600)` along the rows; 2.3
/// against 5.3 ms at `(128, 313, 8, 8)` along dim 1). Not differentiated.
///
/// # Shapes
/// `t`: any; returns `t`'s shape without `dim`, i64.
pub fn first_largest(t: &Tensor, dim: i64) -> std::result::Result<Tensor, tch::TchError> {
    Ok(tch::no_grad(|| t.f_max_dim(dim, false))?.1)
}

/// The fraction of rows of `logits` whose largest value is at the row's target: `argmax`'s
/// top-1 accuracy, through [`first_largest`]. Not differentiated.
///
/// # Shapes
/// `logits`: `(N, K)`; `targets`: `(N,)` i64; returns `()` (a fraction) on the logits' device.
pub fn top1_accuracy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let correct = first_largest(logits, -1)?.f_eq_tensor(targets)?;
    Ok(correct.f_to_kind(tch::Kind::Float)?.f_mean(tch::Kind::Float)?)
}

/// The random choices a method makes inside its steps (puzzles, patch positions, per-patch
/// augmentation): step `n` draws from a ChaCha stream of `(seed, n, salt)`, and the step
/// count travels with the checkpoint (as the state tensor `name`), so a resumed run draws
/// what an uninterrupted one would. In a data-parallel job each rank other than 0 draws from a
/// stream of its own ([`StepRng::for_rank`]), so that the ranks' shards do not get the same
/// choices position by position; rank 0 draws the single-process stream.
#[derive(Debug, Clone)]
pub struct StepRng {
    seed: u64,
    salt: u64,
    rank: u64,
    /// Steps drawn so far.
    pub draws: u64,
    name: &'static str,
}

impl StepRng {
    /// The stream of run seed `seed`, checkpointed as `name`; `salt` keeps methods apart.
    pub fn new(seed: u64, salt: u64, name: &'static str) -> Self {
        StepRng { seed, salt, rank: 0, draws: 0, name }
    }

    /// The stream of rank `rank` of a job (rank 0's is the single-process stream).
    pub fn for_rank(mut self, rank: usize) -> Self {
        self.rank = rank as u64;
        self
    }

    /// The generator of the next step.
    pub fn next_step(&mut self) -> rand_chacha::ChaCha8Rng {
        use rand::SeedableRng;
        let mut seed = selfsup_data::rng::mix(&[self.seed, self.draws, self.salt]);
        if self.rank > 0 {
            seed = selfsup_data::rng::mix(&[seed, self.rank]);
        }
        let rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        self.draws += 1;
        rng
    }

    /// The step count as a state tensor (for [`PretextMethod::state_tensors`]).
    pub fn state(&self) -> (String, Tensor) {
        (self.name.to_string(), Tensor::from_slice(&[self.draws as i64]))
    }

    /// Restores the step count from `tensors` (for [`PretextMethod::load_state_tensors`]).
    pub fn load(&mut self, tensors: &[(String, Tensor)]) {
        if let Some((_, t)) = tensors.iter().find(|(n, _)| n == self.name) {
            self.draws = t.int64_value(&[0]) as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn step_rng_resumes_where_it_left_off_and_helpers_name_the_fault() {
        let mut a = StepRng::new(7, 1, "m.draws");
        let first: u64 = a.next_step().random();
        let saved = a.state();
        let second: u64 = a.next_step().random();
        let mut b = StepRng::new(7, 1, "m.draws");
        b.load(std::slice::from_ref(&saved));
        assert_eq!(b.next_step().random::<u64>(), second, "resumed at step 1");
        assert_ne!(first, second);
        let mut other = StepRng::new(7, 2, "m.draws");
        assert_ne!(other.next_step().random::<u64>(), first, "the salt keeps methods apart");
        let mut rank0 = StepRng::new(7, 1, "m.draws").for_rank(0);
        assert_eq!(rank0.next_step().random::<u64>(), first, "rank 0 draws the single stream");
        let mut rank1 = StepRng::new(7, 1, "m.draws").for_rank(1);
        assert_ne!(rank1.next_step().random::<u64>(), first, "rank 1 draws its own");
        let batch = Batch {
            views: vec![],
            labels: Tensor::zeros([0], (tch::Kind::Int64, Device::Cpu)),
            indices: Tensor::zeros([0], (tch::Kind::Int64, Device::Cpu)),
        };
        let e = single_view(&batch, "jigsaw").unwrap_err().to_string();
        assert!(e.contains("jigsaw: batch has 0 views, expected 1"), "{e}");
        let logits = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 2.0]).view([2, 2]);
        let (loss, acc) = classification_loss(&logits, &Tensor::from_slice(&[0i64, 0])).unwrap();
        let expected =
            (-(2f64.exp() / (2f64.exp() + 1.0)).ln() - (1.0 / (2f64.exp() + 1.0)).ln()) / 2.0;
        assert!((loss.double_value(&[]) - expected).abs() < 1e-6);
        assert_eq!(acc.double_value(&[]), 0.5);
    }

    /// `top1_accuracy` counts what `argmax` counts: a tie goes to the first largest, a NaN is
    /// the largest, in float and bfloat16 (whose few bits make ties common), row by row.
    #[test]
    fn top1_accuracy_is_argmax_s_including_ties_and_nan() {
        let argmax_hits = |l: &Tensor, t: &Tensor| -> Vec<bool> {
            Vec::<bool>::try_from(l.argmax(-1, false).eq_tensor(t)).unwrap()
        };
        let hits = |l: &Tensor, t: &Tensor| -> Vec<bool> {
            let acc = top1_accuracy(l, t).unwrap().double_value(&[]);
            // Row by row: each row alone.
            let rows: Vec<bool> = (0..l.size()[0])
                .map(|i| top1_accuracy(&l.narrow(0, i, 1), &t.narrow(0, i, 1)).unwrap())
                .map(|a| a.double_value(&[]) == 1.0)
                .collect();
            let n = rows.iter().filter(|&&r| r).count() as f64;
            assert!((acc - n / rows.len() as f64).abs() < 1e-6);
            rows
        };
        // Rows: a tie at 0 and 2 (argmax 0), the target at the later tie; the target at the
        // earlier tie; a NaN at 1; a plain hit; a plain miss.
        let nan = f32::NAN;
        let l = Tensor::from_slice(&[
            3.0f32, 1.0, 3.0, 0.0, 3.0, 1.0, 3.0, 0.0, 0.0, nan, 5.0, 0.0, 0.0, 1.0, 0.0, 0.5, 0.0,
            1.0, 0.0, 0.5,
        ])
        .view([5, 4]);
        let t = Tensor::from_slice(&[2i64, 0, 1, 1, 3]);
        assert_eq!(hits(&l, &t), [false, true, true, true, false]);
        assert_eq!(hits(&l, &t), argmax_hits(&l, &t));
        tch::manual_seed(3);
        for kind in [tch::Kind::Float, tch::Kind::BFloat16] {
            // Small integers: most rows' largest value comes twice or more.
            let l = (Tensor::randn([64, 300], (tch::Kind::Float, Device::Cpu)) * 2.0).round();
            let l = l.to_kind(kind);
            // The target: the last largest in even rows, the first in odd ones.
            let last = (l.flip([1]).argmax(-1, false) * -1) + 299;
            let odd = Tensor::arange(64, (tch::Kind::Int64, Device::Cpu)).remainder(2).eq(1);
            let t = l.argmax(-1, false).where_self(&odd, &last);
            let tied = Vec::<bool>::try_from(last.ne_tensor(&l.argmax(-1, false))).unwrap();
            assert!(tied.iter().filter(|&&x| x).count() > 16, "{kind:?}: ties at the top");
            assert_eq!(hits(&l, &t), argmax_hits(&l, &t), "{kind:?}");
            // Along dim 1 of an image-shaped tensor (a class a pixel), NCHW and channels-last.
            let x = (Tensor::randn([8, 31, 4, 4], (tch::Kind::Float, Device::Cpu)) * 1.5).round();
            let _ = x.get(0).get(5).get(0).get(0).fill_(f64::NAN);
            let x = x.to_kind(kind);
            for x in [x.shallow_clone(), crate::precision::to_channels_last(&x).unwrap()] {
                assert!(first_largest(&x, 1).unwrap().equal(&x.argmax(1, false)), "{kind:?}");
            }
        }
    }
}
