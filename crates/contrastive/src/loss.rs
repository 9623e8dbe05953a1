//! Contrastive losses: NT-Xent (SimCLR) and InfoNCE over a queue (MoCo).
//!
//! Both are the loss of the seed paper (van den Oord et al. 2018):
//! `L = −E[log exp(s(x, x⁺)) / (exp(s(x, x⁺)) + Σ_j exp(s(x, x⁻_j)))]`, the cross-entropy of an
//! N-way softmax whose logits are cosine similarities divided by a temperature τ.
//!
//! - [`nt_xent`] follows SimCLR's Algorithm 1 (Chen et al. 2020) exactly: the 2N views of a
//!   batch of N images are each an anchor once; the other view of the same image is its
//!   positive and the remaining 2N − 2 views are its negatives; the 2N losses are averaged.
//! - [`nt_xent_gathered`] is the same loss in a data-parallel job (SimCLR's multi-device
//!   training): every rank's embeddings gathered with gradient, each rank's anchors against
//!   all 2N views of the global batch.
//! - [`info_nce`] follows MoCo's Algorithm 1 (He et al. 2020): query `q`, positive key `k`, the
//!   K keys of the queue as negatives, the positive at logit index 0.
//!
//! Everything is computed in `f32` whatever the input precision, also inside a bf16
//! [`autocast`](selfsup_core::precision::autocast) region: the similarities, logits and
//! cross-entropies run under [`without_autocast`], as PyTorch code computes them outside its
//! `torch.autocast` block (a bf16 similarity matrix has only 8 significant bits, an error of
//! ~1e-2 that the temperature then multiplies).
use crate::{ContrastiveError, Result};
use selfsup_core::encoders::product;
use selfsup_core::precision::without_autocast;
use tch::{Kind, Tensor};

/// Rows divided by their L2 norm (clamped at 1e-12, as `torch.nn.functional.normalize`).
///
/// # Shapes
/// `(N, D)` → `(N, D)`.
pub fn l2_normalize(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    let norm = x.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12);
    x / norm
}

fn check_tau(tau: f64) -> Result<()> {
    if tau.is_finite() && tau > 0.0 {
        Ok(())
    } else {
        Err(ContrastiveError::Config(format!("temperature must be positive, got {tau}")))
    }
}

fn check_2d(name: &str, t: &Tensor) -> Result<(i64, i64)> {
    match t.size().as_slice() {
        &[n, d] if n > 0 && d > 0 => Ok((n, d)),
        s => {
            Err(ContrastiveError::Shape(format!("{name} must be (N, D) with N, D > 0, got {s:?}")))
        }
    }
}

/// The logits and targets of NT-Xent for the joint embedding `z` of both views.
///
/// Row `i` of the logits holds `cos(z_i, z_j) / τ` for every `j`, with the diagonal (the
/// anchor itself) set to −∞ so that it drops out of the softmax; the target of row `i` is the
/// other view of the same image, `(i + N) mod 2N`.
///
/// # Shapes
/// `z`: `(2N, D)`, view 1 of images `0..N` then view 2 of the same images; returns logits
/// `(2N, 2N)` (f32, computed outside autocast) and targets `(2N,)` (i64).
pub fn nt_xent_logits(z: &Tensor, tau: f64) -> Result<(Tensor, Tensor)> {
    check_tau(tau)?;
    let (two_n, _) = check_2d("z", z)?;
    if two_n % 2 != 0 || two_n < 4 {
        return Err(ContrastiveError::Shape(format!(
            "z must stack two views of at least 2 images (2N rows, N >= 2), got {two_n} rows"
        )));
    }
    let n = two_n / 2;
    let device = z.device();
    let logits = without_autocast(device, || {
        let z = l2_normalize(z);
        let sim = product(&z, &z.tr()) / tau;
        let self_mask = Tensor::eye(two_n, (Kind::Bool, device));
        sim.masked_fill(&self_mask, f64::NEG_INFINITY)
    });
    let idx = Tensor::arange(two_n, (Kind::Int64, device));
    let targets = (idx + n).remainder(two_n);
    Ok((logits, targets))
}

/// NT-Xent on the joint embedding of both views, averaged over all 2N anchors.
///
/// # Shapes
/// `z`: `(2N, D)` (view 1 rows first, then view 2 in the same image order); returns a scalar.
pub fn nt_xent_joint(z: &Tensor, tau: f64) -> Result<Tensor> {
    let (logits, targets) = nt_xent_logits(z, tau)?;
    Ok(without_autocast(logits.device(), || logits.cross_entropy_for_logits(&targets)))
}

/// NT-Xent of a data-parallel job's global batch, seen from one rank: the ranks' embeddings
/// of both views are gathered with gradient ([`selfsup_dist::all_gather_with_grad`]) into the
/// single-process joint embedding (view 1 of images `0..N`, then view 2, in rank order), and
/// this rank's 2B views are the anchors, each against all 2N views. Returns the loss (the mean
/// over this rank's anchors) and the anchors' logits and targets. With the trainer averaging
/// the ranks' gradients, the parameters get exactly the gradient of [`nt_xent`] over the
/// global batch, and the mean of the ranks' losses is its value (SimCLR's TPU training, the
/// reference code's `GatherLayer`). At world size 1 it is [`nt_xent`].
///
/// # Shapes
/// `z1`, `z2`: `(B, D)` on every rank (row `i` of both from this rank's image `i`), global
/// batch `N = world · B ≥ 2`; returns a scalar, logits `(2B, 2N)` (f32) and targets `(2B,)`.
pub fn nt_xent_gathered(
    group: &std::sync::Arc<dyn selfsup_dist::Collectives>,
    z1: &Tensor,
    z2: &Tensor,
    tau: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_tau(tau)?;
    let (b, d) = check_2d("z1", z1)?;
    if check_2d("z2", z2)? != (b, d) {
        return Err(ContrastiveError::Shape(format!(
            "z1 and z2 must have the same shape, got {:?} and {:?}",
            z1.size(),
            z2.size()
        )));
    }
    let world = group.world_size() as i64;
    let n = world * b;
    if n < 2 {
        return Err(ContrastiveError::Shape(format!(
            "the global batch must hold at least 2 images, got {n}"
        )));
    }
    let device = z1.device();
    // One gather for both views: (B, 2, D) → (N, 2, D).
    let all = selfsup_dist::all_gather_with_grad(group, &Tensor::f_stack(&[z1, z2], 1)?)?;
    let z = Tensor::f_cat(&[all.f_select(1, 0)?, all.f_select(1, 1)?], 0)?;
    let first = group.rank() as i64 * b;
    let local = Tensor::arange_start(first, first + b, (Kind::Int64, device));
    let rows = Tensor::f_cat(&[&local, &(&local + n)], 0)?;
    let targets = rows.f_add_scalar(n)?.f_remainder(2 * n)?;
    let logits = without_autocast(device, || -> Result<Tensor> {
        let z = l2_normalize(&z);
        let anchors = z.f_index_select(0, &rows)?;
        let sim = product(&anchors, &z.f_tr()?).f_div_scalar(tau)?;
        let cols = Tensor::arange(2 * n, (Kind::Int64, device));
        let self_mask = rows.f_unsqueeze(1)?.f_eq_tensor(&cols.f_unsqueeze(0)?)?;
        Ok(sim.f_masked_fill(&self_mask, f64::NEG_INFINITY)?)
    })?;
    // The cross-entropy of `nt_xent_joint`, over this rank's anchors.
    let loss = without_autocast(device, || logits.cross_entropy_for_logits(&targets));
    Ok((loss, logits, targets))
}

/// NT-Xent of SimCLR's Algorithm 1 for two views of the same N images.
///
/// # Shapes
/// `z1`, `z2`: `(N, D)` with N ≥ 2 (row `i` of both comes from image `i`); returns a scalar.
pub fn nt_xent(z1: &Tensor, z2: &Tensor, tau: f64) -> Result<Tensor> {
    let a = check_2d("z1", z1)?;
    let b = check_2d("z2", z2)?;
    if a != b {
        return Err(ContrastiveError::Shape(format!(
            "z1 and z2 must have the same shape, got {:?} and {:?}",
            z1.size(),
            z2.size()
        )));
    }
    nt_xent_joint(&Tensor::cat(&[z1, z2], 0), tau)
}

/// MoCo's logits: the positive `q·k` at index 0, then `q·queue_j` for the K queued keys, all
/// divided by τ. Inputs are L2-normalised here (MoCo normalises both `q` and `k`; the queue
/// holds normalised keys already, normalising again is a no-op).
///
/// # Shapes
/// `q`, `k`: `(N, D)`; `queue`: `(K, D)`; returns `(N, 1 + K)` (f32, computed outside
/// autocast). The target is 0.
pub fn info_nce_logits(q: &Tensor, k: &Tensor, queue: &Tensor, tau: f64) -> Result<Tensor> {
    check_tau(tau)?;
    let (n, d) = check_2d("q", q)?;
    if k.size() != [n, d] {
        return Err(ContrastiveError::Shape(format!(
            "k must match q {:?}, got {:?}",
            q.size(),
            k.size()
        )));
    }
    let (_, dq) = check_2d("queue", queue)?;
    if dq != d {
        return Err(ContrastiveError::Shape(format!(
            "queue rows must have {d} features like q, got {:?}",
            queue.size()
        )));
    }
    Ok(without_autocast(q.device(), || {
        let q = l2_normalize(q);
        let k = l2_normalize(k);
        let l_pos = (&q * &k).sum_dim_intlist([1i64].as_slice(), true, Kind::Float);
        let l_neg = product(&q, &queue.to_kind(Kind::Float).tr());
        Tensor::cat(&[l_pos, l_neg], 1) / tau
    }))
}

/// InfoNCE of MoCo: cross-entropy of [`info_nce_logits`] with target 0, averaged over the N
/// queries.
///
/// # Shapes
/// `q`, `k`: `(N, D)`; `queue`: `(K, D)`; returns a scalar.
pub fn info_nce(q: &Tensor, k: &Tensor, queue: &Tensor, tau: f64) -> Result<Tensor> {
    let logits = info_nce_logits(q, k, queue, tau)?;
    let targets = Tensor::zeros([logits.size()[0]], (Kind::Int64, logits.device()));
    Ok(without_autocast(logits.device(), || logits.cross_entropy_for_logits(&targets)))
}

/// Fraction of rows whose largest logit is at the target index (the pretext accuracy, see
/// [`selfsup_core::method::top1_accuracy`]).
///
/// # Shapes
/// `logits`: `(M, C)`; `targets`: `(M,)` i64; returns a number in `[0, 1]`.
pub fn top1_accuracy(logits: &Tensor, targets: &Tensor) -> Tensor {
    selfsup_core::method::top1_accuracy(logits, targets)
        .unwrap_or_else(|e| panic!("top-1 accuracy of logits {:?}: {e}", logits.size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], rows: i64) -> Tensor {
        Tensor::from_slice(v).view([rows, -1])
    }

    #[test]
    fn rejects_bad_inputs() {
        let z = t(&[1.0, 0.0, 0.0, 1.0], 2);
        assert!(nt_xent(&z, &z, 0.0).is_err());
        assert!(nt_xent(&z, &z.narrow(0, 0, 1), 0.5).is_err());
        assert!(nt_xent_joint(&z.narrow(0, 0, 1), 0.5).is_err());
        let q = t(&[1.0, 0.0], 1);
        assert!(info_nce(&q, &q, &t(&[1.0, 0.0, 0.0], 1), 0.1).is_err());
        assert!(info_nce(&q, &z, &z, 0.1).is_err());
    }

    #[test]
    fn info_nce_one_negative_by_hand() {
        // q = k = e1, queue = [e2]: logits [1/τ, 0], loss = log(1 + exp(-1/τ)).
        let q = t(&[1.0, 0.0], 1);
        let queue = t(&[0.0, 1.0], 1);
        let tau = 0.5;
        let got = info_nce(&q, &q, &queue, tau).unwrap().double_value(&[]);
        let want = (1.0 + (-1.0f64 / tau).exp()).ln();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        let logits = info_nce_logits(&q, &q, &queue, tau).unwrap();
        assert_eq!(top1_accuracy(&logits, &Tensor::from_slice(&[0i64])).double_value(&[]), 1.0);
    }
}
