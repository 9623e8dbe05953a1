//! Inpainting masks and input corruptions on image tensors, for the reconstruction pretext
//! tasks:
//! - the masks of context encoders (Pathak, Krähenbühl, Donahue, Darrell & Efros, "Context
//!   Encoders: Feature Learning by Inpainting", CVPR 2016, section 3.3): the central region,
//!   random blocks and random regions, drawn per image from a seeded generator; the hidden
//!   pixels are filled with the dataset mean ([`fill_masked`]) and the overlap border the paper
//!   weights ×10 is a dilation of the hole ([`dilate`]);
//! - the corruptions of the denoising autoencoder (Vincent, Larochelle, Bengio & Manzagol,
//!   "Extracting and Composing Robust Features with Denoising Autoencoders", ICML 2008: masking
//!   noise; with the additive Gaussian and salt-and-pepper noise of Vincent et al., "Stacked
//!   Denoising Autoencoders", JMLR 2010, section 4.3).
//!
//! Every random choice comes from the generator passed in (a method's per-step ChaCha stream),
//! never from libtorch's global generator, so masks and noise repeat with the run seed on any
//! device. The uint8 single-image masks of [`crate::pretext`] are reused for the central region.
//!
//! # Shapes
//! Masks are `(B, 1, H, W)` f32 tensors on the CPU, 1 where a pixel is hidden and 0 where it is
//! seen; images are `(B, C, H, W)`.
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{DataError, Result};

fn half() -> f64 {
    0.5
}
fn quarter() -> f64 {
    0.25
}
fn eighth() -> f64 {
    0.125
}
fn default_cells() -> usize {
    8
}
fn default_std() -> f64 {
    0.1
}

/// Which pixels a context encoder hides (Pathak et al. 2016, section 3.3), as it appears in a
/// method config (`{"kind": "central", "fraction": 0.5}`). Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MaskConfig {
    /// The centred square of side `round(fraction · min(H, W))`, the same for every image.
    /// The paper hides the centre of a 128-pixel image: a 64-pixel square, 56 pixels of which
    /// are hidden from the input once its 4-pixel overlap is left visible.
    Central {
        /// Side of the square as a fraction of the shorter image side, in `(0, 1]`. Default
        /// 0.5 (a quarter of the image).
        #[serde(default = "half")]
        fraction: f64,
    },
    /// Random, possibly overlapping rectangles at uniform positions, drawn until at least
    /// `coverage` of the image is hidden ("a number of smaller possibly overlapping masks,
    /// covering up to 1/4 of the image"); the last one may overshoot by one rectangle.
    RandomBlocks {
        /// Fraction of the pixels to hide, in `(0, 1)`. Default 0.25.
        #[serde(default = "quarter")]
        coverage: f64,
        /// Shortest rectangle side, as a fraction of the shorter image side. Default 0.125.
        #[serde(default = "eighth")]
        min_side: f64,
        /// Longest rectangle side, as a fraction of the shorter image side. Default 0.25.
        #[serde(default = "quarter")]
        max_side: f64,
    },
    /// Arbitrary shapes: uniform noise on a `cells × cells` grid, upsampled bicubically to the
    /// image and thresholded, as the official code does (`train_random.lua`: noise at 6% of
    /// the resolution, bicubic upsampling, threshold 0.25). Here the threshold is the noise's
    /// `coverage` quantile, so exactly `round(coverage · H · W)` pixels are hidden (the official
    /// code instead redraws until 20–30% are). The paper's text pastes deformed PASCAL VOC
    /// segments instead; those are not available here.
    RandomRegions {
        /// Fraction of the pixels to hide, in `(0, 1)`. Default 0.25.
        #[serde(default = "quarter")]
        coverage: f64,
        /// Noise cells across the shorter image side: the shapes are about `side / cells`
        /// pixels across. Default 8 (the official 6% of a 128-pixel image is 7.7).
        #[serde(default = "default_cells")]
        cells: usize,
    },
}

impl Default for MaskConfig {
    fn default() -> Self {
        MaskConfig::Central { fraction: half() }
    }
}

impl MaskConfig {
    /// Checks the values; the error names the field (`mask.fraction = 1.5 ...`).
    pub fn check(&self) -> std::result::Result<(), String> {
        match *self {
            MaskConfig::Central { fraction } => {
                if !(fraction > 0.0 && fraction <= 1.0) {
                    return Err(format!("mask.fraction = {fraction} is not in (0, 1]"));
                }
            }
            MaskConfig::RandomBlocks { coverage, min_side, max_side } => {
                if !(coverage > 0.0 && coverage < 1.0) {
                    return Err(format!("mask.coverage = {coverage} is not in (0, 1)"));
                }
                if !(min_side > 0.0 && min_side <= max_side && max_side <= 1.0) {
                    return Err(format!(
                        "mask.min_side = {min_side} and mask.max_side = {max_side} must satisfy \
                         0 < min_side <= max_side <= 1"
                    ));
                }
            }
            MaskConfig::RandomRegions { coverage, cells } => {
                if !(coverage > 0.0 && coverage < 1.0) {
                    return Err(format!("mask.coverage = {coverage} is not in (0, 1)"));
                }
                if cells == 0 {
                    return Err("mask.cells = 0: give at least 1".into());
                }
            }
        }
        Ok(())
    }
}

/// A rectangle of hidden pixels: top-left corner and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Top row.
    pub top: usize,
    /// Left column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// The rectangles of one random-block mask of an `height × width` image (see
/// [`MaskConfig::RandomBlocks`]): each side uniform in `[round(min_side · s), round(max_side ·
/// s)]` pixels (at least 1) with `s` the shorter image side, the corner uniform where the
/// rectangle fits, drawn until at least `coverage` of the pixels are covered.
pub fn random_blocks<R: Rng + ?Sized>(
    height: usize,
    width: usize,
    coverage: f64,
    min_side: f64,
    max_side: f64,
    rng: &mut R,
) -> Vec<Rect> {
    let s = height.min(width) as f64;
    let lo = ((min_side * s).round() as usize).clamp(1, height.min(width));
    let hi = ((max_side * s).round() as usize).clamp(lo, height.min(width));
    let target = (coverage * (height * width) as f64).ceil() as usize;
    let mut covered = vec![false; height * width];
    let mut hidden = 0;
    let mut rects = Vec::new();
    while hidden < target {
        let h = rng.random_range(lo..=hi);
        let w = rng.random_range(lo..=hi);
        let top = rng.random_range(0..=height - h);
        let left = rng.random_range(0..=width - w);
        for y in top..top + h {
            for c in &mut covered[y * width + left..y * width + left + w] {
                hidden += usize::from(!*c);
                *c = true;
            }
        }
        rects.push(Rect { top, left, height: h, width: w });
    }
    rects
}

/// The noise grid of a random-region mask (see [`MaskConfig::RandomRegions`]): its rows and
/// columns, `cells` along the shorter image side.
fn region_grid(height: usize, width: usize, cells: usize) -> (usize, usize) {
    let short = height.min(width) as f64;
    let gh = ((cells as f64 * height as f64 / short).round() as usize).max(1);
    let gw = ((cells as f64 * width as f64 / short).round() as usize).max(1);
    (gh, gw)
}

/// The bicubic upsampling of `n` noise grids `(n, 1, gh, gw)` (row-major, one after another)
/// to `height × width` fields, row-major, one after another: one libtorch call for all of them
/// (each output is computed from its own grid alone, so a batch gives each grid's field).
fn region_fields(
    noise: &[f32],
    n: usize,
    gh: usize,
    gw: usize,
    height: usize,
    width: usize,
) -> Vec<f32> {
    let grids = Tensor::from_slice(noise).view([n as i64, 1, gh as i64, gw as i64]);
    let fields = grids.upsample_bicubic2d([height as i64, width as i64], false, None, None);
    Vec::<f32>::try_from(fields.flatten(0, -1)).expect("a float field")
}

/// The mask of one field: its `round(coverage · n)` lowest values hidden (1), row-major.
fn region_of_field(values: &[f32], coverage: f64) -> Vec<u8> {
    let n = values.len();
    let k = ((coverage * n as f64).round() as usize).clamp(1, n - 1);
    // The k lowest values (ties broken by position, so the mask is a function of the draws).
    let mut order: Vec<usize> = (0..n).collect();
    order.select_nth_unstable_by(k - 1, |&a, &b| values[a].total_cmp(&values[b]).then(a.cmp(&b)));
    let mut mask = vec![0u8; n];
    for &i in &order[..k] {
        mask[i] = 1;
    }
    mask
}

/// One random-region mask (see [`MaskConfig::RandomRegions`]), 1 where hidden, row-major.
fn random_region<R: Rng + ?Sized>(
    height: usize,
    width: usize,
    coverage: f64,
    cells: usize,
    rng: &mut R,
) -> Vec<u8> {
    let (gh, gw) = region_grid(height, width, cells);
    let noise: Vec<f32> = (0..gh * gw).map(|_| rng.random::<f32>()).collect();
    region_of_field(&region_fields(&noise, 1, gh, gw, height, width), coverage)
}

/// `cfg` checked, for an `height × width` image: not empty, and for random regions (whose
/// coverage hides at least one pixel and keeps one) at least two pixels.
fn check_mask(cfg: &MaskConfig, height: usize, width: usize) -> Result<()> {
    cfg.check().map_err(DataError::config)?;
    if height == 0 || width == 0 {
        return Err(DataError::config(format!("mask of an empty {height}x{width} image")));
    }
    if matches!(cfg, MaskConfig::RandomRegions { .. }) && height * width < 2 {
        return Err(DataError::config(format!(
            "random-region mask of a {height}x{width} image: it needs 2 pixels or more"
        )));
    }
    Ok(())
}

/// One mask of `cfg` for an `height × width` image, 1 where hidden, row-major.
pub fn draw_mask<R: Rng + ?Sized>(
    cfg: &MaskConfig,
    height: usize,
    width: usize,
    rng: &mut R,
) -> Result<Vec<u8>> {
    check_mask(cfg, height, width)?;
    Ok(match *cfg {
        MaskConfig::Central { fraction } => crate::pretext::central_mask(height, width, fraction),
        MaskConfig::RandomBlocks { coverage, min_side, max_side } => {
            let mut m = vec![0u8; height * width];
            for r in random_blocks(height, width, coverage, min_side, max_side, rng) {
                for y in r.top..r.top + r.height {
                    m[y * width + r.left..y * width + r.left + r.width].fill(1);
                }
            }
            m
        }
        MaskConfig::RandomRegions { coverage, cells } => {
            random_region(height, width, coverage, cells, rng)
        }
    })
}

/// `n` masks of `cfg`, one per image (the random kinds draw each image's own): the masks
/// [`draw_mask`] draws image after image from `rng`, random regions with one upsampling of the
/// batch's noise.
///
/// # Shapes
/// Returns `(n, 1, height, width)` f32 on the CPU, 1 where hidden.
pub fn draw_masks<R: Rng + ?Sized>(
    cfg: &MaskConfig,
    n: usize,
    height: usize,
    width: usize,
    rng: &mut R,
) -> Result<Tensor> {
    let mut all = Vec::with_capacity(n * height * width);
    match *cfg {
        // The images' noise drawn in order (as `draw_mask` would draw it, image after image),
        // then upsampled in one call rather than one an image.
        MaskConfig::RandomRegions { coverage, cells } if n > 0 => {
            check_mask(cfg, height, width)?;
            let (gh, gw) = region_grid(height, width, cells);
            let noise: Vec<f32> = (0..n * gh * gw).map(|_| rng.random::<f32>()).collect();
            let fields = region_fields(&noise, n, gh, gw, height, width);
            for field in fields.chunks_exact(height * width) {
                all.extend(region_of_field(field, coverage).into_iter().map(f32::from));
            }
        }
        _ => {
            for _ in 0..n {
                all.extend(draw_mask(cfg, height, width, rng)?.into_iter().map(f32::from));
            }
        }
    }
    Ok(Tensor::from_slice(&all).view([n as i64, 1, height as i64, width as i64]))
}

/// `images` with every hidden pixel replaced by `fill` (one value per channel: the dataset
/// mean, as context encoders do; 0 for images already normalised by that mean). The hidden
/// pixels of the result are `fill` whatever the image held there (a selection, not an
/// arithmetic blend, so not even a NaN gets through), and no gradient reaches the image there.
///
/// # Shapes
/// `images`: `(B, C, H, W)`; `masks`: `(B, 1, H, W)` (1 = hidden) on the images' device;
/// `fill`: `(C,)`; returns `(B, C, H, W)`.
pub fn fill_masked(images: &Tensor, masks: &Tensor, fill: &Tensor) -> Tensor {
    let hidden = masks.gt(0.5).expand_as(images);
    let fill = fill.to_kind(images.kind()).to_device(images.device()).view([1, -1, 1, 1]);
    fill.expand_as(images).where_self(&hidden, images)
}

/// The masks grown by `radius` pixels in every direction (a square structuring element): with
/// the mask subtracted, the overlap border around the hole that context encoders also predict
/// and weight ×10 (Pathak et al. 2016, section 4: "overlaps with the context region by 4px").
///
/// # Shapes
/// `masks`: `(B, 1, H, W)` of 0 and 1; returns the same shape.
pub fn dilate(masks: &Tensor, radius: usize) -> Tensor {
    if radius == 0 {
        return masks.copy();
    }
    let r = radius as i64;
    masks.max_pool2d([2 * r + 1, 2 * r + 1], [1, 1], [r, r], [1, 1], false)
}

/// How a denoising autoencoder corrupts its input (Vincent et al. 2008; 2010, section 4.3),
/// applied to pixel values in `[0, 1]` before normalisation. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Corruption {
    /// Masking noise: "a fraction ν of the elements of x (chosen at random for each example) is
    /// forced to 0" — exactly `round(ν · C·H·W)` values of each image, each pixel channel an
    /// element.
    MaskingNoise {
        /// ν, in `[0, 1]`. Default 0.25 (the 2008 paper reports 0.1, 0.25 and 0.4).
        #[serde(default = "quarter")]
        fraction: f64,
    },
    /// Additive isotropic Gaussian noise, `x̃ = x + N(0, σ² I)`, not clipped.
    Gaussian {
        /// σ, in pixel units of `[0, 1]`. Default 0.1.
        #[serde(default = "default_std")]
        std: f64,
    },
    /// Salt and pepper: "a fraction ν of the elements of x (chosen at random for each example)
    /// is set to their minimum or maximum possible value (0 or 1) according to a fair coin
    /// flip" — exactly `round(ν · C·H·W)` values of each image.
    SaltAndPepper {
        /// ν, in `[0, 1]`. Default 0.25.
        #[serde(default = "quarter")]
        fraction: f64,
    },
}

impl Default for Corruption {
    fn default() -> Self {
        Corruption::MaskingNoise { fraction: quarter() }
    }
}

impl Corruption {
    /// Checks the level; the error names the field (`corruption.fraction = 2 ...`).
    pub fn check(&self) -> std::result::Result<(), String> {
        match *self {
            Corruption::MaskingNoise { fraction } | Corruption::SaltAndPepper { fraction } => {
                if !(0.0..=1.0).contains(&fraction) {
                    return Err(format!("corruption.fraction = {fraction} is not in [0, 1]"));
                }
            }
            Corruption::Gaussian { std } => {
                if !(std >= 0.0 && std.is_finite()) {
                    return Err(format!("corruption.std = {std} must be finite and >= 0"));
                }
            }
        }
        Ok(())
    }
}

/// A standard normal draw (Box–Muller on two uniforms of `rng`).
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // in (0, 1]
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// `images` corrupted by `c` (see [`Corruption`]), each image with its own draws from `rng`.
///
/// # Shapes
/// `images`: `(B, C, H, W)` pixel values in `[0, 1]`, on any device; returns the same shape,
/// kind and device.
pub fn corrupt<R: Rng + ?Sized>(images: &Tensor, c: &Corruption, rng: &mut R) -> Result<Tensor> {
    c.check().map_err(DataError::config)?;
    let size = images.size();
    if size.len() != 4 {
        return Err(DataError::config(format!(
            "corrupt: images of shape {size:?}, not (B, C, H, W)"
        )));
    }
    let b = size[0] as usize;
    let d = (size[1] * size[2] * size[3]) as usize;
    let on_images = |v: Vec<f32>| -> Tensor {
        Tensor::from_slice(&v)
            .view(size.as_slice())
            .to_device(images.device())
            .to_kind(images.kind())
    };
    Ok(match *c {
        Corruption::MaskingNoise { fraction } => {
            let k = (fraction * d as f64).round() as usize;
            let mut keep = vec![1f32; b * d];
            for i in 0..b {
                for j in rand::seq::index::sample(rng, d, k) {
                    keep[i * d + j] = 0.0;
                }
            }
            let drop = on_images(keep).eq(0.0);
            images.zeros_like().where_self(&drop, images)
        }
        Corruption::Gaussian { std } => {
            let noise: Vec<f32> = (0..b * d).map(|_| standard_normal(rng)).collect();
            images + on_images(noise) * std
        }
        Corruption::SaltAndPepper { fraction } => {
            // -1: untouched; 0 or 1: the value the element is set to.
            let k = (fraction * d as f64).round() as usize;
            let mut set = vec![-1f32; b * d];
            for i in 0..b {
                for j in rand::seq::index::sample(rng, d, k) {
                    set[i * d + j] = if rng.random_bool(0.5) { 1.0 } else { 0.0 };
                }
            }
            let set = on_images(set);
            set.where_self(&set.ge(0.0), images)
        }
    })
}

/// Pixels hidden by each mask of a batch.
///
/// # Shapes
/// `masks`: `(B, 1, H, W)`; returns `B` counts.
pub fn hidden_counts(masks: &Tensor) -> Vec<i64> {
    let counts = masks.gt(0.5).sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Int64);
    Vec::<i64>::try_from(counts.to_device(Device::Cpu)).expect("int64 counts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    /// The mask of image `i` as rows of bytes.
    fn rows(masks: &Tensor, i: i64) -> Vec<Vec<u8>> {
        let m = masks.get(i).get(0);
        let (h, w) = (m.size()[0], m.size()[1]);
        let flat = Vec::<f32>::try_from(m.flatten(0, -1)).unwrap();
        (0..h as usize)
            .map(|y| (0..w as usize).map(|x| flat[y * w as usize + x] as u8).collect())
            .collect()
    }

    #[test]
    fn central_masks_hide_the_centred_square_of_every_image() {
        let cfg = MaskConfig::default();
        let m = draw_masks(&cfg, 3, 32, 32, &mut rng(0)).unwrap();
        assert_eq!(m.size(), [3, 1, 32, 32]);
        assert_eq!(hidden_counts(&m), [256, 256, 256], "16x16 of 32x32: a quarter");
        let r = rows(&m, 1);
        for (y, row) in r.iter().enumerate() {
            for (x, &v) in row.iter().enumerate() {
                let inside = (8..24).contains(&y) && (8..24).contains(&x);
                assert_eq!(v, u8::from(inside), "({y}, {x})");
            }
        }
        assert!(m.get(0).equal(&m.get(2)), "the same region for every image");
        let small = MaskConfig::Central { fraction: 0.4375 };
        assert_eq!(hidden_counts(&draw_masks(&small, 1, 128, 128, &mut rng(0)).unwrap()), [3136]);
    }

    #[test]
    fn random_blocks_are_rectangles_covering_about_a_quarter() {
        let (coverage, min_side, max_side) = (0.25, 0.125, 0.25);
        for seed in 0..20 {
            let rects = random_blocks(32, 32, coverage, min_side, max_side, &mut rng(seed));
            let mut union = vec![vec![0u8; 32]; 32];
            for r in &rects {
                assert!((4..=8).contains(&r.height) && (4..=8).contains(&r.width), "{r:?}");
                assert!(r.top + r.height <= 32 && r.left + r.width <= 32, "{r:?}");
                for row in union.iter_mut().skip(r.top).take(r.height) {
                    row[r.left..r.left + r.width].fill(1);
                }
            }
            // The mask is exactly the union of its rectangles, drawn from the same stream.
            let cfg = MaskConfig::RandomBlocks { coverage, min_side, max_side };
            let m = draw_masks(&cfg, 1, 32, 32, &mut rng(seed)).unwrap();
            assert_eq!(rows(&m, 0), union);
            // At least a quarter, overshooting by less than one (at most 8x8) block.
            let n = hidden_counts(&m)[0];
            assert!((256..256 + 64).contains(&n), "{n} hidden");
        }
        let cfg = MaskConfig::RandomBlocks { coverage, min_side, max_side };
        let m = draw_masks(&cfg, 2, 32, 32, &mut rng(1)).unwrap();
        assert!(!m.get(0).equal(&m.get(1)), "each image draws its own blocks");
    }

    #[test]
    fn random_regions_are_blobs_of_exactly_the_coverage() {
        let cfg = MaskConfig::RandomRegions { coverage: 0.25, cells: 4 };
        let m = draw_masks(&cfg, 4, 32, 32, &mut rng(3)).unwrap();
        assert_eq!(hidden_counts(&m), [256, 256, 256, 256]);
        assert!(!m.get(0).equal(&m.get(1)), "each image draws its own region");
        // Smooth shapes, not scattered pixels: most hidden pixels have all four neighbours
        // hidden too (for a quarter of independent pixels that would be 0.25^4 = 0.4%).
        for i in 0..4 {
            let r = rows(&m, i);
            let (mut hidden, mut interior) = (0, 0);
            for y in 1..31 {
                for x in 1..31 {
                    if r[y][x] == 1 {
                        hidden += 1;
                        let n = r[y - 1][x] + r[y + 1][x] + r[y][x - 1] + r[y][x + 1];
                        interior += usize::from(n == 4);
                    }
                }
            }
            assert!(interior * 2 > hidden, "image {i}: {interior} of {hidden} interior");
        }
        // The same stream draws the same masks.
        assert!(m.equal(&draw_masks(&cfg, 4, 32, 32, &mut rng(3)).unwrap()));
    }

    #[test]
    fn random_regions_of_a_batch_are_the_masks_drawn_image_by_image() {
        // The batch's noise is upsampled in one call: each mask is still the one `draw_mask`
        // draws from the same stream, image after image (square and oblong images, grids of
        // one and several cells).
        for (h, w, cells, n) in [(32, 32, 8, 16), (24, 40, 5, 7), (32, 32, 1, 3)] {
            let cfg = MaskConfig::RandomRegions { coverage: 0.3, cells };
            let batch = draw_masks(&cfg, n, h, w, &mut rng(11)).unwrap();
            let mut r = rng(11);
            for i in 0..n {
                let one = draw_mask(&cfg, h, w, &mut r).unwrap();
                let got: Vec<u8> = Vec::<f32>::try_from(batch.get(i as i64).flatten(0, -1))
                    .unwrap()
                    .into_iter()
                    .map(|v| v as u8)
                    .collect();
                assert_eq!(got, one, "{h}x{w}, {cells} cells, image {i}");
            }
        }
        // Too small an image is an error naming it, not a panic.
        let cfg = MaskConfig::RandomRegions { coverage: 0.3, cells: 1 };
        for (h, w) in [(1, 1), (0, 5)] {
            let e = draw_masks(&cfg, 2, h, w, &mut rng(0)).unwrap_err().to_string();
            assert!(e.contains(&format!("{h}x{w} image")), "{e}");
            assert!(draw_mask(&cfg, h, w, &mut rng(0)).is_err());
        }
    }

    #[test]
    fn configs_name_the_bad_field_and_read_with_defaults() {
        let c: MaskConfig = serde_json::from_str(r#"{"kind": "random_regions"}"#).unwrap();
        assert_eq!(c, MaskConfig::RandomRegions { coverage: 0.25, cells: 8 });
        let e = serde_json::from_str::<MaskConfig>(r#"{"kind": "central", "side": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("side"), "{e}");
        let e = MaskConfig::Central { fraction: 1.5 }.check().unwrap_err();
        assert!(e.contains("mask.fraction = 1.5"), "{e}");
        let e = draw_masks(
            &MaskConfig::RandomBlocks { coverage: 0.2, min_side: 0.5, max_side: 0.25 },
            1,
            8,
            8,
            &mut rng(0),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mask.min_side = 0.5"), "{e}");
        let e = Corruption::Gaussian { std: -1.0 }.check().unwrap_err();
        assert!(e.contains("corruption.std = -1"), "{e}");
        let c: Corruption = serde_json::from_str(r#"{"kind": "salt_and_pepper"}"#).unwrap();
        assert_eq!(c, Corruption::SaltAndPepper { fraction: 0.25 });
    }

    #[test]
    fn filled_holes_carry_no_information_about_the_image() {
        let masks = draw_masks(&MaskConfig::default(), 2, 16, 16, &mut rng(0)).unwrap();
        let fill = Tensor::from_slice(&[0.1f32, 0.2, 0.3]);
        tch::manual_seed(0);
        let a = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu)).fill_(f64::NAN);
        let fa = fill_masked(&a, &masks, &fill);
        let fb = fill_masked(&b, &masks, &fill);
        let hole = masks.gt(0.5).expand_as(&fa);
        // Inside the hole: the fill, whatever the image (even NaN); outside: the image.
        assert!(fa.masked_select(&hole).equal(&fb.masked_select(&hole)));
        let want = fill.view([1, 3, 1, 1]).expand_as(&fa).masked_select(&hole);
        assert!(fa.masked_select(&hole).equal(&want));
        let seen = hole.logical_not();
        assert!(fa.masked_select(&seen).equal(&a.masked_select(&seen)));
        // No gradient flows from the hole back to the image.
        fa.sum(Kind::Float).backward();
        let g = a.grad();
        assert_eq!(g.masked_select(&hole).abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert!(g.masked_select(&seen).eq(1.0).all().int64_value(&[]) == 1);
    }

    #[test]
    fn dilation_adds_a_border_of_the_radius() {
        let masks = draw_masks(&MaskConfig::default(), 1, 32, 32, &mut rng(0)).unwrap();
        let grown = dilate(&masks, 2);
        assert_eq!(hidden_counts(&grown), [20 * 20]);
        let border = &grown - &masks;
        assert_eq!(border.min().double_value(&[]), 0.0, "the hole stays inside");
        assert!(dilate(&masks, 0).equal(&masks));
    }

    /// Images with values in [0.2, 0.8], so a 0 or a 1 can only come from the corruption.
    fn images() -> Tensor {
        tch::manual_seed(4);
        Tensor::rand([3, 3, 16, 16], (Kind::Float, Device::Cpu)) * 0.6 + 0.2
    }

    #[test]
    fn masking_noise_zeroes_exactly_the_fraction_of_each_image() {
        let x = images();
        let c = Corruption::MaskingNoise { fraction: 0.25 };
        let y = corrupt(&x, &c, &mut rng(1)).unwrap();
        let zeroed = y.eq(0.0).sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Int64);
        assert_eq!(Vec::<i64>::try_from(zeroed).unwrap(), [192, 192, 192], "0.25 of 768");
        let kept = y.ne(0.0);
        assert!(y.masked_select(&kept).equal(&x.masked_select(&kept)), "the rest unchanged");
        assert!(!y.get(0).eq(0.0).equal(&y.get(1).eq(0.0)), "each image its own elements");
        assert!(y.equal(&corrupt(&x, &c, &mut rng(1)).unwrap()), "seeded");
        assert!(corrupt(&x, &Corruption::MaskingNoise { fraction: 0.0 }, &mut rng(1))
            .unwrap()
            .equal(&x));
    }

    #[test]
    fn gaussian_noise_is_additive_with_the_given_std() {
        tch::manual_seed(0);
        let x = Tensor::rand([8, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = corrupt(&x, &Corruption::Gaussian { std: 0.2 }, &mut rng(2)).unwrap();
        let n = &y - &x;
        let (mean, std) = (n.mean(Kind::Float).double_value(&[]), n.std(true).double_value(&[]));
        // 24,576 draws: the standard error of the mean is 0.2 / 157 = 0.0013.
        assert!(mean.abs() < 0.006, "mean {mean}");
        assert!((std - 0.2).abs() < 0.004, "std {std}");
        let frac_beyond_2sd = n.abs().gt(0.4).to_kind(Kind::Float).mean(Kind::Float);
        assert!((frac_beyond_2sd.double_value(&[]) - 0.0455).abs() < 0.006, "normal tails");
    }

    #[test]
    fn salt_and_pepper_sets_the_fraction_to_zero_or_one() {
        let x = images();
        let y = corrupt(&x, &Corruption::SaltAndPepper { fraction: 0.5 }, &mut rng(5)).unwrap();
        let changed = y.ne_tensor(&x);
        let per_image = changed.sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Int64);
        assert_eq!(Vec::<i64>::try_from(per_image).unwrap(), [384, 384, 384]);
        let v = y.masked_select(&changed);
        assert!(v.eq(0.0).logical_or(&v.eq(1.0)).all().int64_value(&[]) == 1);
        let salt = v.eq(1.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        assert!((salt - 0.5).abs() < 0.05, "a fair coin: {salt}");
    }
}
