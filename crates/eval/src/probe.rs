//! Shared pieces of every probe: `torch.optim.SGD` over a list of tensors, seeded shuffling and
//! initialisation, the generic mini-batch training and evaluation loops, top-k accuracy.
//!
//! All randomness here comes from our own ChaCha streams derived from `(seed, stream, epoch)` by
//! [`selfsup_core::seed::derive_seed`], never from libtorch's global generator, so a probe gives
//! bit-identical numbers under a seed on the CPU even when other code draws from libtorch.
use crate::{EvalError, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use selfsup_core::host;
use selfsup_core::schedule::ScheduleConfig;
use selfsup_core::seed::{derive_seed, name_hash};
use tch::{Device, Kind, Tensor};

/// A ChaCha stream for `(seed, stream name, words...)`.
pub fn rng(seed: u64, stream: &str, words: &[u64]) -> ChaCha8Rng {
    let mut all = vec![name_hash(stream)];
    all.extend_from_slice(words);
    ChaCha8Rng::seed_from_u64(derive_seed(seed, &all))
}

/// A tensor of i.i.d. normal values with standard deviation `std` from a seeded stream
/// (Box–Muller), on `device`.
pub fn seeded_normal(shape: &[i64], std: f64, seed: u64, stream: &str, device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    let mut r = rng(seed, stream, &[]);
    let mut v = Vec::with_capacity(n as usize);
    while (v.len() as i64) < n {
        let u1: f64 = 1.0 - r.random::<f64>(); // (0, 1]
        let u2: f64 = r.random::<f64>();
        let rad = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        v.push((std * rad * th.cos()) as f32);
        v.push((std * rad * th.sin()) as f32);
    }
    v.truncate(n as usize);
    Tensor::from_slice(&v).reshape(shape).to_device(device)
}

/// Plain `torch.optim.SGD` (dampening 0) over a list of parameters: `d = g + wd·p`,
/// `b = m·b + d` (b = d at the first step), `d = d + m·b` with Nesterov else `d = b`,
/// `p -= lr·d`. Parameters without a gradient are skipped.
#[derive(Debug)]
pub struct Sgd {
    params: Vec<Tensor>,
    buffers: Vec<Option<Tensor>>,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
}

impl Sgd {
    /// SGD over `params` (shallow clones of the variables to update).
    pub fn new(params: Vec<Tensor>, momentum: f64, nesterov: bool, weight_decay: f64) -> Self {
        let buffers = params.iter().map(|_| None).collect();
        Sgd { params, buffers, momentum, nesterov, weight_decay }
    }

    /// Clears the gradients of all parameters.
    pub fn zero_grad(&mut self) {
        for p in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    /// One update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for (p, buf) in self.params.iter_mut().zip(self.buffers.iter_mut()) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut d = if self.weight_decay != 0.0 { &g + &*p * self.weight_decay } else { g };
                if self.momentum != 0.0 {
                    let b = match buf {
                        Some(b) => {
                            let _ = b.g_mul_scalar_(self.momentum).g_add_(&d);
                            b
                        }
                        None => buf.insert(d.detach().copy()),
                    };
                    d = if self.nesterov { d + &*b * self.momentum } else { b.shallow_clone() };
                }
                let _ = p.g_sub_(&(d * lr));
            }
        });
    }
}

/// How a training loop visits the training set.
#[derive(Debug, Clone)]
pub struct LoopSpec<'a> {
    /// Number of epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Samples per epoch: `None` is one pass over the data; a larger number cycles through
    /// fresh permutations (RotNet's few-label runs use 50,000 samples per epoch).
    pub epoch_size: Option<usize>,
    /// Base learning rate.
    pub lr: f64,
    /// Schedule of the rate over epochs.
    pub schedule: &'a ScheduleConfig,
    /// Seed of the shuffling stream.
    pub seed: u64,
    /// Name of the shuffling stream (distinct per protocol).
    pub stream: &'a str,
}

/// The sample order of one epoch: seeded permutations of `0..n`, concatenated until
/// `epoch_size` samples (one permutation when `None`).
pub fn epoch_order(
    n: usize,
    epoch_size: Option<usize>,
    seed: u64,
    stream: &str,
    epoch: u64,
) -> Vec<i64> {
    let want = epoch_size.unwrap_or(n);
    let mut out = Vec::with_capacity(want);
    let mut cycle = 0u64;
    while out.len() < want && n > 0 {
        let mut perm: Vec<i64> = (0..n as i64).collect();
        perm.shuffle(&mut rng(seed, stream, &[epoch, cycle]));
        let take = (want - out.len()).min(n);
        out.extend_from_slice(&perm[..take]);
        cycle += 1;
    }
    out
}

/// The samples of one batch of a probe loop: their indices on the host (to gather host-side
/// images) and the same indices on the labels' device (to gather features already there),
/// cut from one upload of the epoch's order rather than uploaded batch by batch.
#[derive(Debug)]
pub struct Rows<'a> {
    /// The indices, on the host.
    pub host: &'a [i64],
    /// The indices `(B,)` i64 on the labels' device.
    pub device: Tensor,
}

impl Rows<'_> {
    /// The rows `self` of `x` (`(N, ..)`, best on the labels' device, where the indices are
    /// already): `(B, ..)`.
    pub fn of(&self, x: &Tensor) -> Tensor {
        x.index_select(0, &self.device.to_device(x.device()))
    }
}

/// Trains by mini-batch SGD with cross-entropy. `forward(rows, epoch)` returns the logits
/// `(B, K)` of the samples `rows` (with grad through the trainable parts); `labels` is `(N,)`
/// i64 on the logits' device. A final batch of one sample is skipped (batch norm cannot train
/// on it). Returns the mean loss of the last epoch.
///
/// The host reads nothing back inside an epoch: the epoch's order goes to the device once,
/// the loss is summed there and read (and checked for NaN) once an epoch.
pub fn train_loop(
    labels: &Tensor,
    spec: &LoopSpec<'_>,
    opt: &mut Sgd,
    forward: impl FnMut(&Rows<'_>, u64) -> Result<Tensor>,
) -> Result<f64> {
    train_loop_with(labels, spec, opt, forward, |_| Ok(()))
}

/// [`train_loop`] with `after_epoch(epoch)` (0-based) called at the end of every epoch (to
/// score the test set per epoch, say).
pub fn train_loop_with(
    labels: &Tensor,
    spec: &LoopSpec<'_>,
    opt: &mut Sgd,
    mut forward: impl FnMut(&Rows<'_>, u64) -> Result<Tensor>,
    mut after_epoch: impl FnMut(u64) -> Result<()>,
) -> Result<f64> {
    let n = labels.size()[0] as usize;
    if spec.epochs == 0 {
        return Err(EvalError::Config("probe epochs must be at least 1, got 0".into()));
    }
    if spec.batch_size < 2 {
        return Err(EvalError::Config(format!(
            "probe batch_size must be at least 2, got {} (a batch of one is skipped: batch norm \
             cannot train on it, so nothing would be trained)",
            spec.batch_size
        )));
    }
    let mut last = f64::NAN;
    for epoch in 0..spec.epochs as u64 {
        let lr = spec.schedule.lr_at(spec.lr, epoch as f64, spec.epochs as f64);
        let order = epoch_order(n, spec.epoch_size, spec.seed, spec.stream, epoch);
        let order_t = host::upload(&Tensor::from_slice(&order), labels.device());
        let mut sum = Tensor::zeros([], (Kind::Double, labels.device()));
        let mut count = 0usize;
        for (b, idx) in order.chunks(spec.batch_size).enumerate() {
            if idx.len() < 2 {
                continue;
            }
            let rows = Rows {
                host: idx,
                device: order_t.narrow(0, (b * spec.batch_size) as i64, idx.len() as i64),
            };
            let logits = forward(&rows, epoch)?;
            let y = rows.of(labels);
            let loss = logits.cross_entropy_for_logits(&y);
            opt.zero_grad();
            loss.backward();
            opt.step(lr);
            sum += loss.detach().to_kind(Kind::Double) * idx.len() as f64;
            count += idx.len();
        }
        let total = host::read(&sum)?;
        if !total.is_finite() {
            return Err(EvalError::Training(format!(
                "non-finite loss {total} in epoch {epoch} (lr {lr})"
            )));
        }
        last = total / count.max(1) as f64;
        tracing::debug!(stream = spec.stream, epoch, lr, loss = last, "probe epoch");
        after_epoch(epoch)?;
    }
    Ok(last)
}

/// Top-1 and top-5 accuracy in percent over `0..n` in batches, under `no_grad`.
/// `forward(rows)` returns logits `(B, K)`; `labels` is `(N,)` i64. Top-5 is top-K when there
/// are fewer than 5 classes. The counts are summed on the device and read back once, at the
/// end.
pub fn eval_loop(
    labels: &Tensor,
    batch_size: usize,
    mut forward: impl FnMut(&Rows<'_>) -> Result<Tensor>,
) -> Result<(f64, f64)> {
    let n = labels.size()[0];
    if n == 0 {
        return Err(EvalError::Config("evaluation set is empty".into()));
    }
    let all: Vec<i64> = (0..n).collect();
    let all_t = Tensor::arange(n, (Kind::Int64, labels.device()));
    let bs = batch_size.max(1);
    let mut counts: Option<(Tensor, Tensor)> = None;
    tch::no_grad(|| -> Result<()> {
        for (b, idx) in all.chunks(bs).enumerate() {
            let rows =
                Rows { host: idx, device: all_t.narrow(0, (b * bs) as i64, idx.len() as i64) };
            let logits = forward(&rows)?;
            let y = rows.of(labels).to_device(logits.device());
            let (t1, t5) = (topk_correct(&logits, &y, 1), topk_correct(&logits, &y, 5));
            counts = Some(match counts.take() {
                None => (t1, t5),
                Some((c1, c5)) => (c1 + t1, c5 + t5),
            });
        }
        Ok(())
    })?;
    let (c1, c5) = counts.expect("n > 0 gives one batch at least");
    let (c1, c5) = (host::read(&c1)?, host::read(&c5)?);
    Ok((100.0 * c1 / n as f64, 100.0 * c5 / n as f64))
}

/// Number of rows of `scores` `(B, K)` whose label `(B,)` is among the `k` highest scores
/// (`k` clamped to `K`), as an i64 `()` tensor on the scores' device.
pub fn topk_correct(scores: &Tensor, labels: &Tensor, k: i64) -> Tensor {
    let k = k.min(scores.size()[1]);
    let (_, idx) = scores.topk(k, 1, true, true);
    idx.eq_tensor(&labels.unsqueeze(1)).any_dim(1, false).sum(Kind::Int64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_matches_torch_formula() {
        // One parameter, loss = 0.5 * p^2 so grad = p. Two steps of Nesterov SGD by hand.
        let p = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let mut opt = Sgd::new(vec![p.shallow_clone()], 0.9, true, 0.1);
        let (lr, mut pv, mut b) = (0.5f64, 1.0f64, 0.0f64);
        for step in 0..2 {
            opt.zero_grad();
            (&p * &p * 0.5).sum(Kind::Float).backward();
            opt.step(lr);
            let d = pv + 0.1 * pv;
            b = if step == 0 { d } else { 0.9 * b + d };
            pv -= lr * (d + 0.9 * b);
            assert!((p.double_value(&[0]) - pv).abs() < 1e-6, "step {step}");
        }
    }

    #[test]
    fn epoch_order_cycles_permutations() {
        let o = epoch_order(4, Some(10), 1, "t", 0);
        assert_eq!(o.len(), 10);
        let mut first: Vec<i64> = o[..4].to_vec();
        first.sort();
        assert_eq!(first, vec![0, 1, 2, 3]);
        assert_eq!(o, epoch_order(4, Some(10), 1, "t", 0));
        assert_ne!(epoch_order(50, None, 1, "t", 0), epoch_order(50, None, 1, "t", 1));
    }

    #[test]
    fn degenerate_loops_are_refused_by_name() {
        let labels = Tensor::from_slice(&[0i64, 1, 0, 1]);
        let schedule = ScheduleConfig::default();
        let spec = LoopSpec {
            epochs: 1,
            batch_size: 1,
            epoch_size: None,
            lr: 0.1,
            schedule: &schedule,
            seed: 0,
            stream: "t",
        };
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = Sgd::new(vec![p.shallow_clone()], 0.9, false, 0.0);
        let forward = |r: &Rows<'_>, _| Ok(p.unsqueeze(0).repeat([r.host.len() as i64, 1]));
        let e = train_loop(&labels, &spec, &mut opt, forward).unwrap_err().to_string();
        assert!(e.contains("batch_size") && e.contains("got 1"), "{e}");
        let e =
            train_loop(&labels, &LoopSpec { epochs: 0, batch_size: 2, ..spec }, &mut opt, forward)
                .unwrap_err()
                .to_string();
        assert!(e.contains("epochs"), "{e}");
    }

    #[test]
    fn topk_counts() {
        let s = Tensor::from_slice(&[0.1f32, 0.5, 0.4, 0.9, 0.05, 0.05]).reshape([2, 3]);
        let y = Tensor::from_slice(&[2i64, 0]);
        assert_eq!(topk_correct(&s, &y, 1).int64_value(&[]), 1);
        assert_eq!(topk_correct(&s, &y, 2).int64_value(&[]), 2);
    }

    /// The loops hand `forward` the same indices on the host and on the device, and read back
    /// once an epoch (training) and once per count (evaluation), not once a batch.
    #[test]
    fn loops_read_back_per_epoch_not_per_batch() {
        let labels = Tensor::from_slice(&[0i64, 1, 0, 1, 1, 0, 0, 1, 1, 0]);
        let schedule = ScheduleConfig::default();
        let spec = LoopSpec {
            epochs: 3,
            batch_size: 4,
            epoch_size: None,
            lr: 0.1,
            schedule: &schedule,
            seed: 5,
            stream: "t",
        };
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = Sgd::new(vec![p.shallow_clone()], 0.9, false, 0.0);
        let mut batches = 0;
        let forward = |r: &Rows<'_>, epoch: u64| {
            assert_eq!(Vec::<i64>::try_from(&r.device).unwrap(), r.host);
            assert_eq!(r.of(&labels), labels.index_select(0, &Tensor::from_slice(r.host)));
            if batches == 0 {
                assert_eq!(r.host, &epoch_order(10, None, 5, "t", epoch)[..4]);
            }
            batches += 1;
            Ok(p.unsqueeze(0).repeat([r.host.len() as i64, 1]))
        };
        let before = host::reads();
        let loss = train_loop(&labels, &spec, &mut opt, forward).unwrap();
        assert_eq!(batches, 9, "3 epochs of batches of 4, 4 and 2");
        assert_eq!(host::reads() - before, 3, "one read an epoch");
        assert!(loss.is_finite() && loss > 0.0);

        let before = host::reads();
        let mut seen = Vec::new();
        let (top1, _) = eval_loop(&labels, 4, |r| {
            assert_eq!(Vec::<i64>::try_from(&r.device).unwrap(), r.host);
            seen.extend_from_slice(r.host);
            // Always class 0: right on the five zeros.
            Ok(Tensor::from_slice(&[1.0f32, 0.0]).repeat([r.host.len() as i64, 1]))
        })
        .unwrap();
        assert_eq!(seen, (0..10).collect::<Vec<i64>>());
        assert_eq!(top1, 50.0);
        assert_eq!(host::reads() - before, 2, "top-1 and top-5, once each");

        // A loss that turns NaN is caught at the epoch's end, by name.
        let _ = tch::no_grad(|| p.shallow_clone().fill_(f64::NAN));
        let e = train_loop(&labels, &spec, &mut opt, |r, _| {
            Ok(p.unsqueeze(0).repeat([r.host.len() as i64, 1]))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("non-finite loss NaN in epoch 0"), "{e}");
    }
}
