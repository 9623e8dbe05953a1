//! The quantised colour spaces of colorization (Zhang et al., ECCV 2016, Section 2.1) and
//! split-brain autoencoders (Zhang et al., CVPR 2017, Section 3.2): ab predicted as a
//! distribution over the bins of a grid of 10 that sRGB colours reach, L over equal bins.
//!
//! - [`AbBins::in_gamut`]: the bin centres `(a, b)` on the grid of multiples of `grid` in
//!   `[-110, 110]` that are the nearest centre of some 8-bit sRGB colour. Computed from every
//!   one of the 256³ colours (in chunks, on the CPU, once per process and grid), not typed in.
//!   The official `pts_in_hull.npy` of richzhang/colorization holds 313 centres; see
//!   [`AbBins::in_gamut`] for how this set compares; [`AbBins::from_npy`] loads that file
//!   (or any `(Q, 2)` set) instead.
//! - [`AbBins::soft_encode`]: each target ab spread over its `k` nearest centres with Gaussian
//!   weights (`k = 5`, `σ = 5` in the paper), summing to 1 (the official `NNEncode`'s nearest
//!   neighbours; on the CPU one pass over the pixels, each scanning the centres its cell of the
//!   grid can reach, with ties to the lower class).
//! - [`annealed_mean`]: the paper's decoding `H(Z) = E[f_T(Z)]`, `f_T(z) ∝ exp(log z / T)`:
//!   the mean at `T = 1`, the mode as `T → 0`; `T = 0.38` for pictures.
//! - [`LBins`]: L in `[0, 100]` cut into `n` equal bins (split-brain: 100), for the reverse
//!   direction.
use crate::color::rgb_to_lab;
use crate::{LabError, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
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
    /// This set is the rule itself: the bins an sRGB image can hit. A run that must use the
    /// published bins loads the official file with [`AbBins::from_npy`] (`method_config.ab_bins`
    /// of colorization and split-brain).
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

    /// The bins of a `.npy` file of ab centres, `(Q, 2)` integers or floats holding whole
    /// multiples of `grid`, in the file's order: the official `pts_in_hull.npy` of
    /// richzhang/colorization (313 centres, `<i8`) for a run that must use exactly the
    /// published bins. Reads NumPy format 1.0–3.0, little-endian `i4`/`i8`/`f4`/`f8`, C order.
    ///
    /// # Errors
    /// A file that cannot be read or is not such an array, named with what is wrong; centres
    /// off the grid.
    pub fn from_npy(path: &std::path::Path, grid: i64) -> Result<Self> {
        let bad = |what: String| LabError::Value(format!("{}: {what}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let values = read_npy_pairs(&bytes).map_err(bad)?;
        let mut centres = Vec::with_capacity(values.len());
        for (i, [a, b]) in values.into_iter().enumerate() {
            if a.fract() != 0.0 || b.fract() != 0.0 {
                return Err(bad(format!("centre {i} ({a}, {b}) is not whole")));
            }
            centres.push([a as i64, b as i64]);
        }
        Self::from_centres(grid, centres).map_err(|e| bad(e.to_string()))
    }

    /// Writes the centres as a `(Q, 2)` `<i8` `.npy` file, the layout of the official
    /// `pts_in_hull.npy` (so `np.load` reads it, and [`AbBins::from_npy`] reads it back).
    ///
    /// # Errors
    /// The file cannot be written, named.
    pub fn to_npy(&self, path: &std::path::Path) -> Result<()> {
        let data: Vec<u8> = self.centres.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = npy_bytes("<i8", &format!("({}, 2)", self.centres.len()), &data);
        std::fs::write(path, bytes).map_err(|e| LabError::Value(format!("{}: {e}", path.display())))
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

    /// Squared distances of every ab value to every centre, `(a − ca)² + (b − cb)²`: the
    /// two `(N·H·W, Q)` terms squared in place and added (the bits of squaring the
    /// `(N·H·W, Q, 2)` differences and summing the last dim, in a quarter of the time: 2.1
    /// against 9.1 ms at 8,192 pixels and 261 centres, 2 threads).
    ///
    /// # Shapes
    /// `ab`: `(N, 2, H, W)`; returns `(N·H·W, Q)` f32, pixels in `(n, h, w)` order.
    fn sq_distances(&self, ab: &Tensor) -> Result<Tensor> {
        ab_shape(ab)?;
        let pts = ab.to_kind(Kind::Float).permute([0, 2, 3, 1]).reshape([-1, 2]);
        let c = self.centres_t(ab.device()).tr();
        let term = |i: i64| (pts.narrow(1, i, 1) - c.narrow(0, i, 1)).square_();
        let mut d = term(0);
        d += term(1);
        Ok(d)
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
    /// Of centres at equal distances for the last places, the CPU (one pass over the pixels)
    /// takes the lower classes; on other devices libtorch's `topk` chooses.
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
        if ab.device() == Device::Cpu {
            self.soft_encode_cpu(ab, k, sigma)
        } else {
            self.soft_encode_torch(ab, k, sigma)
        }
    }

    /// [`AbBins::soft_encode`] by libtorch's ops, on any device: the `(N·H·W, Q)` distances, the
    /// `k` smallest by `topk`, their weights scattered into zeros.
    fn soft_encode_torch(&self, ab: &Tensor, k: usize, sigma: f64) -> Result<Tensor> {
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

    /// [`AbBins::soft_encode`] on the CPU, in one pass over the pixels: each pixel's squared
    /// distances (the bits of [`AbBins::sq_distances`]) to the centres that its cell of the grid
    /// can have among its `k` nearest ([`Cells`]), the `k` nearest kept as they come (of equal
    /// distances, the lower class first), their weights, written into the `(N, Q, H, W)`
    /// encoding. At the cpu profiles' 8,192 pixels and 261 centres on 2 threads: 2.4-3.2 ms
    /// against 9.3-10.7 ms by libtorch's route ([`AbBins::soft_encode_torch`]; `topk` alone
    /// 6 ms of it; 2 cores of an Intel Xeon, family 6, model 167, 2026-12-07). The images are
    /// cut into one contiguous range a libtorch thread, each pixel's result its own, so the
    /// bits do not depend on the thread count.
    ///
    /// # Errors
    /// `ab` not `(N, 2, H, W)`; an ab value with no finite distance to any centre (NaN or
    /// infinite), named with its pixel.
    fn soft_encode_cpu(&self, ab: &Tensor, k: usize, sigma: f64) -> Result<Tensor> {
        let s = ab_shape(ab)?;
        let (n, hw, q) = (s[0] as usize, (s[2] * s[3]) as usize, self.len());
        let out = Tensor::zeros([s[0], q as i64, s[2], s[3]], (Kind::Float, Device::Cpu));
        if n * hw == 0 {
            return Ok(out);
        }
        let pts = ab.to_kind(Kind::Float).permute([0, 2, 3, 1]).contiguous().view([-1]);
        let pts = Vec::<f32>::try_from(&pts)?;
        let cells = Cells::cached(&self.centres, self.grid, k);
        let scale = (2.0 * sigma * sigma) as f32;
        // SAFETY: `out` is a new contiguous f32 CPU tensor of `n·q·hw` values that nothing
        // else refers to until this function returns it; the slice ends before then.
        let enc =
            unsafe { std::slice::from_raw_parts_mut(out.data_ptr().cast::<f32>(), n * q * hw) };
        // One image's block of the encoding, `(Q, H, W)`, is written by the thread that has
        // its pixels; images split over at most libtorch's thread count.
        let threads = (tch::get_num_threads().max(1) as usize).min(n.max(1));
        let per = n.div_ceil(threads.max(1)).max(1);
        let bad = std::thread::scope(|scope| {
            let work: Vec<_> = enc
                .chunks_mut(per * q * hw)
                .enumerate()
                .map(|(t, block)| {
                    let (pts, cells) = (&pts, &cells);
                    scope.spawn(move || {
                        let mut near = vec![(f32::INFINITY, usize::MAX); k];
                        for (i, image) in block.chunks_mut(q * hw).enumerate() {
                            let img = t * per + i;
                            for p in 0..hw {
                                let at = img * hw + p;
                                let (a, b) = (pts[2 * at], pts[2 * at + 1]);
                                nearest_k(a, b, &cells.centres, cells.of(a, b), &mut near);
                                if near[k - 1].1 == usize::MAX {
                                    return Some((at, a, b));
                                }
                                let d0 = near[0].0;
                                let mut sum = 0f32;
                                for slot in near.iter_mut() {
                                    slot.0 = (-(slot.0 - d0) / scale).exp();
                                    sum += slot.0;
                                }
                                for &(w, c) in near.iter() {
                                    image[c * hw + p] = w / sum;
                                }
                            }
                        }
                        None
                    })
                })
                .collect();
            work.into_iter().find_map(|h| h.join().expect("soft encoding thread"))
        });
        if let Some((at, a, b)) = bad {
            return Err(LabError::Value(format!(
                "ab value ({a}, {b}) at pixel {at} (of {}) has no finite distance to the bins",
                n * hw
            )));
        }
        Ok(out)
    }

    /// Decodes per-bin scores into ab by [`annealed_mean`] at temperature `t`.
    ///
    /// # Shapes
    /// `logits`: `(N, Q, H, W)`; returns `(N, 2, H, W)` f32.
    pub fn decode(&self, logits: &Tensor, t: f64) -> Result<Tensor> {
        annealed_mean(logits, &self.centres_t(logits.device()), t)
    }
}

/// For each cell of the grid over `[-110, 110]²`, the classes that can be among the `k` centres
/// nearest a point in it, ascending: every centre whose least distance to the cell is within
/// the `k`-th smallest of the centres' greatest distances to it (`k` centres are at most that far
/// from any point of the cell, so no centre farther from all of it can be among the `k`). A
/// point outside the range, or of a NaN, takes every class. The cells are widened by a margin
/// of 10⁻³ for the rounding of the cell a point falls in, so the lists keep every centre the
/// scan of all of them would pick, equal distances included.
struct Cells {
    /// The centres in f32, index = class.
    centres: Vec<[f32; 2]>,
    grid: f32,
    side: usize,
    lists: Vec<Vec<usize>>,
    all: Vec<usize>,
}

impl Cells {
    /// The cells of `centres` on `grid` for `k`, built once per process and kept.
    fn cached(centres: &[[i64; 2]], grid: i64, k: usize) -> Arc<Cells> {
        type Key = (i64, usize, Vec<[i64; 2]>);
        static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Cells>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        let key = (grid, k, centres.to_vec());
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        let cells = cache.entry(key).or_insert_with(|| Arc::new(Cells::new(centres, grid, k)));
        Arc::clone(cells)
    }

    fn new(centres: &[[i64; 2]], grid: i64, k: usize) -> Cells {
        let side = (2 * AB_RANGE / grid) as usize;
        let (g, margin) = (grid as f64, 1e-3f64);
        let mut lists = Vec::with_capacity(side * side);
        // Each centre's greatest squared distance to the cell, reordered by the selection.
        let mut far = vec![0f64; centres.len()];
        for cell in 0..side * side {
            let lo = |i: usize| -(AB_RANGE as f64) + i as f64 * g - margin;
            let (a0, b0) = (lo(cell / side), lo(cell % side));
            let (a1, b1) = (a0 + g + 2.0 * margin, b0 + g + 2.0 * margin);
            let near = |c: i64, lo: f64, hi: f64| (lo - c as f64).max(c as f64 - hi).max(0.0);
            let away = |c: i64, lo: f64, hi: f64| (c as f64 - lo).abs().max((hi - c as f64).abs());
            for (f, &[ca, cb]) in far.iter_mut().zip(centres) {
                *f = away(ca, a0, a1).powi(2) + away(cb, b0, b1).powi(2);
            }
            let reach = *far.select_nth_unstable_by(k - 1, f64::total_cmp).1;
            lists.push(
                (0..centres.len())
                    .filter(|&c| {
                        let [ca, cb] = centres[c];
                        near(ca, a0, a1).powi(2) + near(cb, b0, b1).powi(2) <= reach
                    })
                    .collect(),
            );
        }
        Cells {
            centres: centres.iter().map(|c| [c[0] as f32, c[1] as f32]).collect(),
            grid: grid as f32,
            side,
            lists,
            all: (0..centres.len()).collect(),
        }
    }

    /// The classes to scan for a point `(a, b)`.
    fn of(&self, a: f32, b: f32) -> &[usize] {
        let index = |v: f32| ((v + AB_RANGE as f32) / self.grid).floor();
        let (i, j) = (index(a), index(b));
        let inside = |x: f32| x >= 0.0 && x < self.side as f32;
        if inside(i) && inside(j) {
            &self.lists[i as usize * self.side + j as usize]
        } else {
            &self.all
        }
    }
}

/// The size of `ab`, which must be `(N, 2, H, W)`.
fn ab_shape(ab: &Tensor) -> Result<Vec<i64>> {
    let s = ab.size();
    if s.len() != 4 || s[1] != 2 {
        return Err(LabError::Shape(format!("ab has shape {s:?}, expected (N, 2, H, W)")));
    }
    Ok(s)
}

/// The `near.len()` centres nearest `(a, b)` among the classes `scan` (ascending) into `near` as
/// `(squared distance, class)`, nearest first; of equal distances the lower class comes first.
/// Slots no finite distance reached keep `(∞, usize::MAX)`.
fn nearest_k(a: f32, b: f32, centres: &[[f32; 2]], scan: &[usize], near: &mut [(f32, usize)]) {
    near.fill((f32::INFINITY, usize::MAX));
    let last = near.len() - 1;
    for &c in scan {
        let [ca, cb] = centres[c];
        // As `sq_distances`: each difference squared, then the two added.
        let (da, db) = (a - ca, b - cb);
        let d = da * da + db * db;
        if d.is_nan() || d >= near[last].0 {
            continue;
        }
        let mut i = last;
        while i > 0 && d < near[i - 1].0 {
            near[i] = near[i - 1];
            i -= 1;
        }
        near[i] = (d, c);
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

/// A `.npy` file (NumPy format 1.0, header padded to 64 bytes, C order) of `data` with dtype
/// `descr` and `shape` (as NumPy writes it: `(313, 2)`).
fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// The rows of a `(Q, 2)` `.npy` array as `f64` pairs; the error says what is wrong.
fn read_npy_pairs(bytes: &[u8]) -> std::result::Result<Vec<[f64; 2]>, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!(".npy format version {v} is not supported (1, 2, 3)")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-text .npy header")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = header.find(&format!("'{key}':")).ok_or(format!("header has no '{key}'"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    let descr = descr.get(1..).and_then(|d| d.split('\'').next()).unwrap_or("");
    let width = match descr {
        "<i4" | "<f4" => 4,
        "<i8" | "<f8" => 8,
        other => return Err(format!("dtype '{other}' is not <i4, <i8, <f4 or <f8")),
    };
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let shape = field("shape")?;
    let shape = shape.strip_prefix('(').and_then(|s| s.split(')').next()).unwrap_or("");
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().map_err(|_| format!("shape ({shape}) is not a tuple of sizes")))
        .collect::<std::result::Result<_, _>>()?;
    let [q, 2] = dims[..] else {
        return Err(format!("shape ({shape}) is not (Q, 2)"));
    };
    let data = &bytes[start + header_len..];
    if data.len() != q * 2 * width {
        return Err(format!("{} data bytes for shape ({q}, 2) of '{descr}'", data.len()));
    }
    let value = |c: &[u8]| -> f64 {
        match descr {
            "<i4" => i32::from_le_bytes(c.try_into().expect("4 bytes")) as f64,
            "<f4" => f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64,
            "<i8" => i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64,
            _ => f64::from_le_bytes(c.try_into().expect("8 bytes")),
        }
    };
    Ok(data.chunks_exact(2 * width).map(|r| [value(&r[..width]), value(&r[width..])]).collect())
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
    fn the_cpu_pass_is_libtorchs_soft_encoding_at_any_thread_count() {
        let bins = AbBins::in_gamut(10).unwrap();
        tch::manual_seed(5);
        // Random ab (no two distances equal), values off the grid's range, and 3 images so that
        // 2 threads split them unevenly.
        let ab = (Tensor::rand([3, 2, 9, 11], (Kind::Float, Device::Cpu)) - 0.5) * 260.0;
        let threads = tch::get_num_threads();
        for k in [1, 5, 12] {
            let want = bins.soft_encode_torch(&ab, k, 5.0).unwrap();
            let got: Vec<Tensor> = [1, 2, 3]
                .iter()
                .map(|&t| {
                    tch::set_num_threads(t);
                    bins.soft_encode(&ab, k, 5.0).unwrap()
                })
                .collect();
            tch::set_num_threads(threads);
            assert_eq!(got[0].size(), want.size(), "k = {k}");
            assert!(got[0].gt(0.0).equal(&want.gt(0.0)), "k = {k}: the same nearest bins");
            let e = (&got[0] - &want).abs().max().double_value(&[]);
            assert!(e < 1e-6, "k = {k}: off libtorch's weights by {e:e}");
            for (t, g) in got.iter().enumerate().skip(1) {
                assert!(g.equal(&got[0]), "k = {k}: {} threads against 1", t + 1);
            }
        }
        // Of equal distances the lower class first: (5, 0) lies between (0, 0) and (10, 0), and
        // four centres at 125 compete for the last three of five places.
        let tie = Tensor::from_slice(&[5f32, 0.0]).view([1, 2, 1, 1]);
        let e = bins.soft_encode(&tie, 5, 5.0).unwrap().flatten(0, -1);
        let class = |a, b| bins.centres().iter().position(|c| *c == [a, b]).unwrap() as i64;
        let picked: Vec<i64> = Vec::try_from(e.nonzero().flatten(0, -1)).unwrap();
        let mut want = vec![class(0, 0), class(10, 0), class(0, -10), class(0, 10), class(10, -10)];
        want.sort();
        assert_eq!(picked, want);
        // A value with no finite distance: one line naming it and its pixel (a = 1, 2; b = NaN, 4).
        let nan = Tensor::from_slice(&[1f32, 2.0, f32::NAN, 4.0]).view([1, 2, 1, 2]);
        let err = bins.soft_encode(&nan, 5, 5.0).unwrap_err().to_string();
        assert!(err.contains("ab value (1, NaN) at pixel 0 (of 2)"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn each_cells_list_holds_what_the_scan_of_every_centre_picks() {
        // Points on a lattice of 2.5 over the whole range (the cells' edges and corners, many
        // equal distances) and off it: the k nearest from the cell's list are those from every
        // centre, the same classes in the same order.
        let bins = AbBins::in_gamut(10).unwrap();
        for k in [1, 5, 12] {
            let cells = Cells::cached(bins.centres(), 10, k);
            let centres = &cells.centres;
            let (mut near, mut want) = (vec![(0f32, 0); k], vec![(0f32, 0); k]);
            let lattice = (0..=88).map(|i| -110.0 + 2.5 * i as f32);
            let odd = [-110.0, -109.99, -0.001, 0.001, 3.3, 47.7, 109.99, 110.0, 120.0];
            for a in lattice.clone().chain(odd) {
                for b in lattice.clone().chain(odd) {
                    nearest_k(a, b, centres, cells.of(a, b), &mut near);
                    nearest_k(a, b, centres, &cells.all, &mut want);
                    assert_eq!(near, want, "k = {k}, ab ({a}, {b})");
                }
            }
            assert!(cells.lists.iter().all(|l| l.len() < centres.len() / 4), "k = {k}: short");
        }
    }

    /// The distances are the bits of the `(P, Q, 2)` differences squared and summed over the
    /// last dim, in the `(n, h, w)` order of the pixels.
    #[test]
    fn squared_distances_are_the_summed_squares_bit_for_bit() {
        let bins = AbBins::in_gamut(10).unwrap();
        tch::manual_seed(4);
        let ab = (Tensor::rand([3, 2, 5, 4], (Kind::Float, Device::Cpu)) - 0.5) * 230.0;
        let pts = ab.permute([0, 2, 3, 1]).reshape([-1, 1, 2]);
        let c = bins.centres_t(Device::Cpu).unsqueeze(0);
        let want = (pts - c).square().sum_dim_intlist([2i64].as_slice(), false, Kind::Float);
        let got = bins.sq_distances(&ab).unwrap();
        assert_eq!(got.size(), [60, bins.len() as i64]);
        assert!(got.equal(&want));
        let e = bins.sq_distances(&ab.narrow(1, 0, 1)).unwrap_err().to_string();
        assert!(e.contains("expected (N, 2, H, W)"), "{e}");
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

    #[test]
    fn bins_load_from_an_npy_file_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("selfsup-lab-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ints: Vec<u8> =
            [-90i64, 50, -90, 60, 100, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = dir.join("pts.npy");
        std::fs::write(&p, npy_bytes("<i8", "(3, 2)", &ints)).unwrap();
        let bins = AbBins::from_npy(&p, 10).unwrap();
        assert_eq!(bins.len(), 3);
        assert_eq!(bins.centres()[2], [100, 0]);
        let all = AbBins::in_gamut(10).unwrap();
        all.to_npy(&p).unwrap();
        assert_eq!(AbBins::from_npy(&p, 10).unwrap(), all);
        let floats: Vec<u8> = [10.0f64, -20.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&p, npy_bytes("<f8", "(1, 2)", &floats)).unwrap();
        assert_eq!(AbBins::from_npy(&p, 10).unwrap().centres(), &[[10, -20]]);
        let err = |bytes: Vec<u8>| {
            std::fs::write(&p, bytes).unwrap();
            AbBins::from_npy(&p, 10).unwrap_err().to_string()
        };
        let e = err(npy_bytes("<i8", "(3,)", &ints));
        assert!(e.contains("pts.npy") && e.contains("is not (Q, 2)"), "{e}");
        assert!(err(npy_bytes("<i8", "(4, 2)", &ints)).contains("data bytes"));
        assert!(err(npy_bytes(">i8", "(3, 2)", &ints)).contains("dtype '>i8'"));
        assert!(err(b"PK\x03\x04 not numpy".to_vec()).contains("not a .npy file"));
        let off: Vec<u8> = [15i64, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(err(npy_bytes("<i8", "(1, 2)", &off)).contains("not on the grid"));
        let missing = AbBins::from_npy(&dir.join("absent.npy"), 10).unwrap_err().to_string();
        assert!(missing.contains("absent.npy"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
