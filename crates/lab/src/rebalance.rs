//! Class rebalancing of colorization (Zhang et al., ECCV 2016, Section 2.2, Eq. 3–4): each
//! pixel's loss is weighted by `w ∝ ((1 − λ) p̃ + λ / Q)⁻¹` of its target's nearest bin, where
//! `p̃` is the empirical distribution of the training set's ab bins smoothed with a Gaussian
//! (`σ = 5`) and `λ = 0.5`, normalised so that `E_p̃[w] = Σ_q p̃_q w_q = 1` (the official
//! `PriorFactor`). Rare, saturated colours weigh more, so predictions do not drift to gray.
//!
//! The paper computes `p̃` over ImageNet's training set beforehand; a method here sees only
//! batches, so [`Prior`] counts the bins of the training batches it sees (up to a number of
//! images, then frozen) and the weights follow the counts. Its state is checkpointed by the
//! methods, so a resumed run uses the same weights.
use crate::{LabError, Result};
use tch::{Kind, Tensor};

/// `p` smoothed by a Gaussian of `sigma` over the bin centres (`p̃_q ∝ Σ_r p_r exp(−|c_q −
/// c_r|² / 2σ²)`), normalised to sum to 1.
pub fn smooth(p: &[f64], centres: &[[i64; 2]], sigma: f64) -> Vec<f64> {
    let s2 = 2.0 * sigma * sigma;
    let out: Vec<f64> = centres
        .iter()
        .map(|cq| {
            centres
                .iter()
                .zip(p)
                .map(|(cr, &pr)| {
                    let (da, db) = ((cq[0] - cr[0]) as f64, (cq[1] - cr[1]) as f64);
                    pr * (-(da * da + db * db) / s2).exp()
                })
                .sum()
        })
        .collect();
    let total: f64 = out.iter().sum();
    out.iter().map(|v| v / total.max(f64::MIN_POSITIVE)).collect()
}

/// The rebalancing weights of Eq. 4 from the empirical bin distribution `p` (any non-negative
/// counts): `p̃ = smooth(p, σ)`, `w_q = ((1 − λ) p̃_q + λ / Q)⁻¹`, scaled so that
/// `Σ_q p̃_q w_q = 1`. Returns `(w, p̃)`.
///
/// # Errors
/// `lambda` outside `(0, 1]` (λ = 0 gives infinite weights to bins never seen), a non-positive
/// `sigma`, `p` and `centres` of different lengths, or `p` with no mass.
pub fn rebalance_weights(
    p: &[f64],
    centres: &[[i64; 2]],
    sigma: f64,
    lambda: f64,
) -> Result<(Vec<f64>, Vec<f64>)> {
    if !(lambda > 0.0 && lambda <= 1.0) {
        return Err(LabError::Value(format!("lambda = {lambda} is not in (0, 1]")));
    }
    if sigma.is_nan() || sigma <= 0.0 {
        return Err(LabError::Value(format!("prior sigma = {sigma} must be positive")));
    }
    if p.len() != centres.len() {
        return Err(LabError::Value(format!(
            "{} bin probabilities for {} bins",
            p.len(),
            centres.len()
        )));
    }
    if !(p.iter().all(|v| *v >= 0.0) && p.iter().sum::<f64>() > 0.0) {
        return Err(LabError::Value("the bin distribution has no mass".into()));
    }
    let smoothed = smooth(p, centres, sigma);
    let q = p.len() as f64;
    let raw: Vec<f64> = smoothed.iter().map(|s| 1.0 / ((1.0 - lambda) * s + lambda / q)).collect();
    let expectation: f64 = raw.iter().zip(&smoothed).map(|(w, s)| w * s).sum();
    Ok((raw.iter().map(|w| w / expectation).collect(), smoothed))
}

/// A running histogram of the training targets' nearest bins: the empirical distribution the
/// rebalancing weights come from. It counts until `limit` images have been seen, then stays.
#[derive(Debug, Clone, PartialEq)]
pub struct Prior {
    /// Pixel counts per bin.
    pub counts: Vec<f64>,
    /// Images counted so far.
    pub images: u64,
    /// Images to count before the histogram is frozen.
    pub limit: u64,
}

impl Prior {
    /// An empty histogram over `bins` bins, counting the first `limit` images.
    pub fn new(bins: usize, limit: u64) -> Self {
        Prior { counts: vec![0.0; bins], images: 0, limit }
    }

    /// Whether it still counts.
    pub fn counting(&self) -> bool {
        self.images < self.limit
    }

    /// Adds the classes of a batch of `images` images (while counting).
    ///
    /// # Shapes
    /// `classes`: any shape, i64 bin indices in `0..bins`.
    pub fn observe(&mut self, classes: &Tensor, images: u64) -> Result<()> {
        if !self.counting() {
            return Ok(());
        }
        let q = self.counts.len() as i64;
        let counts = tch::no_grad(|| {
            classes.flatten(0, -1).to_device(tch::Device::Cpu).bincount::<Tensor>(None, q)
        });
        if counts.size() != [q] {
            return Err(LabError::Shape(format!(
                "bin indices reach {} for {q} bins",
                counts.size()[0] - 1
            )));
        }
        let counts = Vec::<f64>::try_from(counts.to_kind(Kind::Double))?;
        for (c, n) in self.counts.iter_mut().zip(counts) {
            *c += n;
        }
        self.images += images;
        Ok(())
    }

    /// The weights of [`rebalance_weights`] for the counts so far; all ones before anything was
    /// counted.
    pub fn weights(&self, centres: &[[i64; 2]], sigma: f64, lambda: f64) -> Result<Vec<f64>> {
        if self.counts.iter().sum::<f64>() <= 0.0 {
            return Ok(vec![1.0; self.counts.len()]);
        }
        Ok(rebalance_weights(&self.counts, centres, sigma, lambda)?.0)
    }

    /// The state as two tensors named `{prefix}.counts` (f64) and `{prefix}.images` (i64), for
    /// a method's checkpointed state.
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        vec![
            (format!("{prefix}.counts"), Tensor::from_slice(&self.counts)),
            (format!("{prefix}.images"), Tensor::from_slice(&[self.images as i64])),
        ]
    }

    /// Restores [`Prior::state`] from `tensors` (entries absent are left as they are).
    pub fn load(&mut self, prefix: &str, tensors: &[(String, Tensor)]) -> Result<()> {
        let find = |n: String| tensors.iter().find(|(k, _)| *k == n).map(|(_, t)| t);
        if let Some(t) = find(format!("{prefix}.counts")) {
            let v = Vec::<f64>::try_from(t.to_kind(Kind::Double))?;
            if v.len() != self.counts.len() {
                return Err(LabError::Shape(format!(
                    "the checkpoint's prior has {} bins, the method {}",
                    v.len(),
                    self.counts.len()
                )));
            }
            self.counts = v;
        }
        if let Some(t) = find(format!("{prefix}.images")) {
            self.images = t.int64_value(&[0]) as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Vec<[i64; 2]> {
        (-2..=2).flat_map(|a| (-2..=2).map(move |b| [a * 10, b * 10])).collect()
    }

    #[test]
    fn weights_have_expectation_one_and_favour_rare_bins() {
        let centres = grid();
        let p: Vec<f64> = (0..25).map(|i| if i == 12 { 100.0 } else { 1.0 + i as f64 }).collect();
        let (w, smoothed) = rebalance_weights(&p, &centres, 5.0, 0.5).unwrap();
        let e: f64 = w.iter().zip(&smoothed).map(|(w, s)| w * s).sum();
        assert!((e - 1.0).abs() < 1e-12, "E[w] = {e}");
        assert!((smoothed.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // The common centre bin weighs least, the rarest most.
        let min = w.iter().cloned().fold(f64::INFINITY, f64::min);
        assert_eq!(w[12], min);
        assert!(w[0] > w[24]);
        // λ = 1: uniform weights (all 1); the bounds of each value are named.
        let (w1, _) = rebalance_weights(&p, &centres, 5.0, 1.0).unwrap();
        assert!(w1.iter().all(|v| (v - 1.0).abs() < 1e-12));
        let e = rebalance_weights(&p, &centres, 5.0, 0.0).unwrap_err().to_string();
        assert!(e.contains("lambda = 0"), "{e}");
        assert!(rebalance_weights(&p[..3], &centres, 5.0, 0.5).is_err());
    }

    #[test]
    fn the_prior_counts_up_to_its_limit_and_round_trips() {
        let centres = grid();
        let mut prior = Prior::new(25, 2);
        assert_eq!(prior.weights(&centres, 5.0, 0.5).unwrap(), vec![1.0; 25]);
        prior.observe(&Tensor::from_slice(&[0i64, 0, 3, 24]).view([1, 2, 2]), 1).unwrap();
        prior.observe(&Tensor::from_slice(&[3i64]), 1).unwrap();
        prior.observe(&Tensor::from_slice(&[5i64]), 1).unwrap();
        assert_eq!((prior.counts[0], prior.counts[3], prior.counts[5]), (2.0, 2.0, 0.0));
        assert!(!prior.counting());
        let mut other = Prior::new(25, 2);
        other.load("p", &prior.state("p")).unwrap();
        assert_eq!(other, prior);
        assert!(Prior::new(3, 2).load("p", &prior.state("p")).is_err());
        assert!(Prior::new(3, 2).observe(&Tensor::from_slice(&[7i64]), 1).is_err());
    }
}
