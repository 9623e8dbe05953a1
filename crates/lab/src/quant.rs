//! The quantised colour spaces of colorization (Zhang et al., ECCV 2016, Section 2.1) and
//! split-brain autoencoders (Zhang et al., CVPR 2017, Section 3.2): ab predicted as a
//! distribution over the bins of a grid of 10 that sRGB colours reach, L over equal bins.
//!
//! - [`AbBins::in_gamut`]: the bin centres `(a, b)` on the grid of multiples of `grid` in
//!   `[-110, 110]` that are the nearest centre of some 8-bit sRGB colour. Computed from every
//!   one of the 256³ colours (in chunks, on the CPU, once per process and grid), not typed in.
//!   The official `pts_in_hull.npy` of richzhang/colorization holds 313 centres; see
//!   [`AbBins::in_gamut`] for how this set compares.
//! - [`AbBins::soft_encode`]: each target ab spread over its `k` nearest centres with Gaussian
//!   weights (`k = 5`, `σ = 5` in the paper), summing to 1.
//! - [`annealed_mean`]: the paper's decoding `H(Z) = E[f_T(Z)]`, `f_T(z) ∝ exp(log z / T)`:
//!   the mean at `T = 1`, the mode as `T → 0`; `T = 0.38` for pictures.
//! - [`LBins`]: L in `[0, 100]` cut into `n` equal bins (split-brain: 100), for the reverse
//!   direction.
use crate::color::rgb_to_lab;
use crate::{LabError, Result};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use tch::{Device, Kind, Tensor};

/// The largest |a| and |b| of the grid: centres are multiples of the grid in `[-110, 110]`.
pub const AB_RANGE: i64 = 110;

/// Bin centres of the quantised ab plane, in the official order (a ascending, then b).
#[derive(Debug, Clone, PartialEq)]
pub struct AbBins {
    grid: i64,
    centres: Vec<[i64; 2]>,
}

/// The in-gamut centres of each grid computed in this process.
fn gamut_cache() -> &'static Mutex<HashMap<i64, Vec<[i64; 2]>>> {
    static CACHE: OnceLock<Mutex<HashMap<i64, Vec<[i64; 2]>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

impl AbBins {
    /// The bins of spacing `grid` (10 in the papers) that sRGB reaches: every 8-bit sRGB colour
    /// is converted to Lab ([`rgb_to_lab`]) and its ab rounded to the nearest multiple of
    /// `grid`; the centres hit, a ascending then b, are the bins. Centres beyond ±110 are
    /// never hit (sRGB's ab lies in about `[-86, 98] × [-108, 95]`).
    ///
    /// On how this compares with the official set: `pts_in_hull.npy` (313 centres, a from −90
    /// to 100) contains every centre computed here and about fifty more around the rim, up to
    /// 13 ab units beyond the sRGB gamut (for instance (100, 0) and (−50, 100)); the repository
    /// does not say how it was made, and no rule of distance to the sRGB gamut reproduces it.
    /// This set is the rule itself: the bins an sRGB image can hit.
    ///
    /// # Errors
    /// A `grid` outside `1..=110`.
    pub fn in_gamut(grid: i64) -> Result<Self> {
        if !(1..=AB_RANGE).contains(&grid) {
            return Err(LabError::Value(format!("ab grid = {grid} is not in 1..=110")));
        }
        let mut cache = gamut_cache().lock().expect("the gamut cache is never poisoned");
        let centres = cache.entry(grid).or_insert_with(|| compute_in_gamut(grid)).clone();
        Ok(AbBins { grid, centres })
    }

    /// Bins at the given centres (each a multiple of `grid`), in the given order.
    pub fn from_centres(grid: i64, centres: Vec<[i64; 2]>) -> Result<Self> {
        if grid < 1 {
            return Err(LabError::Value(format!("ab grid = {grid} must be positive")));
        }
        if centres.is_empty() {
            return Err(LabError::Value("no ab bin centres".into()));
        }
        if let Some(c) = centres.iter().find(|c| c[0] % grid != 0 || c[1] % grid != 0) {
            return Err(LabError::Value(format!("ab centre {c:?} is not on the grid of {grid}")));
        }
        Ok(AbBins { grid, centres })
    }

    /// Number of bins Q.
    pub fn len(&self) -> usize {
        self.centres.len()
    }

    /// Whether there are no bins (never true for a constructed set).
    pub fn is_empty(&self) -> bool {
        self.centres.is_empty()
    }

    /// The grid spacing.
    pub fn grid(&self) -> i64 {
        self.grid
    }

    /// The centres `(a, b)`, index = class.
    pub fn centres(&self) -> &[[i64; 2]] {
        &self.centres
    }

    /// The centres as a tensor.
    ///
    /// # Shapes
    /// Returns `(Q, 2)` f32 on `device`.
    pub fn centres_t(&self, device: Device) -> Tensor {
        let flat: Vec<f32> = self.centres.iter().flat_map(|c| [c[0] as f32, c[1] as f32]).collect();
        Tensor::from_slice(&flat).view([self.len() as i64, 2]).to_device(device)
    }

    /// Squared distances of every ab value to every centre.
    ///
    /// # Shapes
    /// `ab`: `(N, 2, H, W)`; returns `(N·H·W, Q)` f32, pixels in `(n, h, w)` order.
    fn sq_distances(&self, ab: &Tensor) -> Result<Tensor> {
        let s = ab.size();
        if s.len() != 4 || s[1] != 2 {
            return Err(LabError::Shape(format!("ab has shape {s:?}, expected (N, 2, H, W)")));
        }
        let pts = ab.to_kind(Kind::Float).permute([0, 2, 3, 1]).reshape([-1, 1, 2]);
        let c = self.centres_t(ab.device()).unsqueeze(0);
        Ok((pts - c).square().sum_dim_intlist([2i64].as_slice(), false, Kind::Float))
    }

    /// The index of each ab value's nearest centre (the hard class).
    ///
    /// # Shapes
    /// `ab`: `(N, 2, H, W)`; returns `(N, H, W)` i64.
    pub fn nearest(&self, ab: &Tensor) -> Result<Tensor> {
        let s = ab.size();
        let d = self.sq_distances(ab)?;
        Ok(d.argmin(1, false).view([s[0], s[2], s[3]]))
    }

    /// The soft encoding of each target ab: weights `exp(-d² / 2σ²)` on its `k` nearest
    /// centres, normalised to sum to 1, zero elsewhere (the paper's `H⁻¹_gt`, `k = 5`, `σ = 5`).
    ///
    /// # Shapes
    /// `ab`: `(N, 2, H, W)`; returns `(N, Q, H, W)` f32.
    pub fn soft_encode(&self, ab: &Tensor, k: usize, sigma: f64) -> Result<Tensor> {
        if k == 0 || k > self.len() {
            return Err(LabError::Value(format!(
                "neighbours = {k} is not in 1..={} (the number of ab bins)",
                self.len()
            )));
        }
        if sigma.is_nan() || sigma <= 0.0 {
            return Err(LabError::Value(format!("sigma = {sigma} must be positive")));
        }
        let s = ab.size();
        let d = self.sq_distances(ab)?;
        let (near, idx) = d.topk(k as i64, 1, false, true);
        // Subtract the nearest distance before exponentiating: the same weights, no underflow
        // for values far outside the grid.
        let w = (-(&near - near.narrow(1, 0, 1)) / (2.0 * sigma * sigma)).exp();
        let w = &w / w.sum_dim_intlist([1i64].as_slice(), true, Kind::Float);
        let enc = Tensor::zeros([d.size()[0], self.len() as i64], (Kind::Float, ab.device()))
            .scatter(1, &idx, &w);
        Ok(enc.view([s[0], s[2], s[3], self.len() as i64]).permute([0, 3, 1, 2]).contiguous())
    }

    /// Decodes per-bin scores into ab by [`annealed_mean`] at temperature `t`.
    ///
    /// # Shapes
    /// `logits`: `(N, Q, H, W)`; returns `(N, 2, H, W)` f32.
    pub fn decode(&self, logits: &Tensor, t: f64) -> Result<Tensor> {
        annealed_mean(logits, &self.centres_t(logits.device()), t)
    }
}

/// The centres hit by the 256³ 8-bit sRGB colours, a ascending then b.
fn compute_in_gamut(grid: i64) -> Vec<[i64; 2]> {
    let side = 2 * (AB_RANGE / grid) + 1;
    let levels = Tensor::arange(256, (Kind::Float, Device::Cpu)) / 255.0;
    let g = levels.view([1, 1, 256, 1]).expand([1, 1, 256, 256], true);
    let b = levels.view([1, 1, 1, 256]).expand([1, 1, 256, 256], true);
    let mut hits = Tensor::zeros([side * side], (Kind::Int64, Device::Cpu));
    tch::no_grad(|| {
        // Sixteen red levels at a time: 16 · 65,536 colours per chunk.
        for r0 in (0..256i64).step_by(16) {
            let r = (Tensor::arange_start(r0, r0 + 16, (Kind::Float, Device::Cpu)) / 255.0)
                .view([16, 1, 1, 1])
                .expand([16, 1, 256, 256], true);
            let rgb = Tensor::cat(
                &[r, g.expand([16, 1, 256, 256], true), b.expand([16, 1, 256, 256], true)],
                1,
            );
            let lab = rgb_to_lab(&rgb).expect("(16, 3, 256, 256) colours");
            let q =
                (lab.narrow(1, 1, 2) / grid as f64).round().to_kind(Kind::Int64) + AB_RANGE / grid;
            let q = q.clamp(0, side - 1);
            let key = q.narrow(1, 0, 1) * side + q.narrow(1, 1, 1);
            hits += key.flatten(0, -1).bincount::<Tensor>(None, side * side);
        }
    });
    let hits = Vec::<i64>::try_from(&hits).expect("i64 counts");
    let half = AB_RANGE / grid;
    hits.iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(k, _)| {
            let (ia, ib) = (k as i64 / side, k as i64 % side);
            [(ia - half) * grid, (ib - half) * grid]
        })
        .collect()
}

/// Annealed-mean decoding (Zhang et al. 2016, Eq. 5): `f_T(z) = exp(log z / T) / Σ exp(log z /
/// T)` of the predicted distribution `z = softmax(logits)`, then its mean over `values`. At
/// `T = 1` the mean of `z`; as `T → 0` the value of its mode; the paper uses `T = 0.38`.
///
/// # Shapes
/// `logits`: `(N, Q, H, W)`; `values`: `(Q, D)` (the bin centres, `D = 2` for ab, 1 for L);
/// returns `(N, D, H, W)` f32.
pub fn annealed_mean(logits: &Tensor, values: &Tensor, t: f64) -> Result<Tensor> {
    if t.is_nan() || t <= 0.0 {
        return Err(LabError::Value(format!("temperature = {t} must be positive")));
    }
    let s = logits.size();
    let v = values.size();
    if s.len() != 4 || v.len() != 2 || s[1] != v[0] {
        return Err(LabError::Shape(format!(
            "logits {s:?} and values {v:?} do not fit (N, Q, H, W) and (Q, D)"
        )));
    }
    let log_z = logits.to_kind(Kind::Float).log_softmax(1, Kind::Float);
    let f = (log_z / t).softmax(1, Kind::Float);
    // Σ_q f_q · values_q, as a weighted sum (no matmul, so autocast keeps f32).
    let vals = values.to_kind(Kind::Float).to_device(logits.device());
    let out: Vec<Tensor> = (0..v[1])
        .map(|d| {
            let w = vals.select(1, d).view([1, v[0], 1, 1]);
            (&f * w).sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
        })
        .collect();
    Ok(Tensor::cat(&out, 1))
}

/// L in `[0, 100]` cut into `n` equal bins (split-brain predicts L from ab over 100 of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LBins {
    n: i64,
}

impl LBins {
    /// `n` equal bins of `[0, 100]`.
    pub fn new(n: i64) -> Result<Self> {
        if n < 2 {
            return Err(LabError::Value(format!("L bins = {n} must be at least 2")));
        }
        Ok(LBins { n })
    }

    /// Number of bins.
    pub fn len(&self) -> i64 {
        self.n
    }

    /// Whether there are no bins (never true).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The class of each L: `floor(L · n / 100)`, clamped to `0..n` (L = 100 falls in the top
    /// bin).
    ///
    /// # Shapes
    /// `l`: `(N, 1, H, W)`; returns `(N, H, W)` i64.
    pub fn classes(&self, l: &Tensor) -> Tensor {
        (l.squeeze_dim(1).to_kind(Kind::Float) * (self.n as f64 / 100.0))
            .floor()
            .clamp(0.0, (self.n - 1) as f64)
            .to_kind(Kind::Int64)
    }

    /// The bin centres `(i + 0.5) · 100 / n`.
    ///
    /// # Shapes
    /// Returns `(n, 1)` f32 on `device`.
    pub fn centres_t(&self, device: Device) -> Tensor {
        ((Tensor::arange(self.n, (Kind::Float, device)) + 0.5) * (100.0 / self.n as f64))
            .unsqueeze(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_gamut_bins_are_those_srgb_reaches() {
        let bins = AbBins::in_gamut(10).unwrap();
        let c = bins.centres();
        assert_eq!(bins.len(), 261, "{} bins", bins.len());
        // The primaries and secondaries sit in their nearest bins.
        for want in [[80, 70], [80, -110], [-90, 80], [0, 0], [100, -60], [-20, 90], [-50, -10]] {
            assert!(c.contains(&want), "{want:?} missing");
        }
        // Nothing beyond the extremes of sRGB's ab (a in [-86, 98], b in [-108, 95]).
        assert!(c.iter().all(|&[a, b]| (-90..=100).contains(&a) && (-110..=90).contains(&b)));
        let mut sorted = c.to_vec();
        sorted.sort();
        assert_eq!(sorted, c, "a ascending, then b");
        assert_eq!(AbBins::in_gamut(10).unwrap(), bins, "cached");
        assert!(AbBins::in_gamut(0).unwrap_err().to_string().contains("ab grid = 0"));
    }

    #[test]
    fn soft_encoding_sums_to_one_with_most_weight_on_the_nearest_bin() {
        let bins = AbBins::in_gamut(10).unwrap();
        tch::manual_seed(3);
        let ab = (Tensor::rand([2, 2, 4, 4], (Kind::Float, Device::Cpu)) - 0.5) * 120.0;
        let enc = bins.soft_encode(&ab, 5, 5.0).unwrap();
        assert_eq!(enc.size(), [2, bins.len() as i64, 4, 4]);
        let sums = enc.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-5);
        let nonzero = enc.gt(0.0).sum_dim_intlist([1i64].as_slice(), false, Kind::Int64);
        assert!(nonzero.max().int64_value(&[]) <= 5);
        assert!(enc.argmax(1, false).equal(&bins.nearest(&ab).unwrap()));
        // A value on a centre: weight exp(0) against exp(-100/50) on its four grid neighbours.
        let on = Tensor::from_slice(&[0f32, 0.0]).view([1, 2, 1, 1]);
        let e = bins.soft_encode(&on, 5, 5.0).unwrap().flatten(0, -1);
        let centre = bins.centres().iter().position(|c| *c == [0, 0]).unwrap() as i64;
        let w0 = 1.0 / (1.0 + 4.0 * (-2f64).exp());
        assert!((e.double_value(&[centre]) - w0).abs() < 1e-5);
        assert!(bins.soft_encode(&on, 0, 5.0).unwrap_err().to_string().contains("neighbours = 0"));
    }

    #[test]
    fn annealed_mean_is_the_mean_at_one_and_the_mode_near_zero() {
        let values =
            Tensor::from_slice(&[0f32, 10.0, 20.0, 30.0, 40.0, 0.0, 0.0, 10.0]).view([4, 2]);
        let logits = Tensor::from_slice(&[0.1f32, 1.5, 0.3, 1.0]).view([1, 4, 1, 1]);
        let p = logits.softmax(1, Kind::Float).flatten(0, -1);
        let mean = annealed_mean(&logits, &values, 1.0).unwrap().flatten(0, -1);
        let pa: f64 = (0..4).map(|q| p.double_value(&[q]) * values.double_value(&[q, 0])).sum();
        let pb: f64 = (0..4).map(|q| p.double_value(&[q]) * values.double_value(&[q, 1])).sum();
        assert!(
            (mean.double_value(&[0]) - pa).abs() < 1e-5
                && (mean.double_value(&[1]) - pb).abs() < 1e-5
        );
        let mode = annealed_mean(&logits, &values, 1e-3).unwrap().flatten(0, -1);
        assert!((mode.double_value(&[0]) - 20.0).abs() < 1e-4, "{mode:?}");
        assert!((mode.double_value(&[1]) - 30.0).abs() < 1e-4);
        // T = 0.38 lies in between.
        let mid = annealed_mean(&logits, &values, 0.38).unwrap().double_value(&[0, 0, 0, 0]);
        assert!(mid > pa && mid < 20.0);
        assert!(annealed_mean(&logits, &values, 0.0).is_err());
    }

    #[test]
    fn l_bins_cover_zero_to_hundred() {
        let bins = LBins::new(100).unwrap();
        let l = Tensor::from_slice(&[0f32, 0.99, 1.0, 50.5, 99.99, 100.0]).view([1, 1, 1, 6]);
        let c = Vec::<i64>::try_from(bins.classes(&l).flatten(0, -1)).unwrap();
        assert_eq!(c, [0, 0, 1, 50, 99, 99]);
        let centres = bins.centres_t(Device::Cpu);
        assert_eq!(centres.size(), [100, 1]);
        assert!((centres.double_value(&[0, 0]) - 0.5).abs() < 1e-6);
        assert!(LBins::new(1).is_err());
    }
}
