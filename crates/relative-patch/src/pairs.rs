//! Patch pairs from a batch of images, on tensors: a 3×3 grid of patches with gap and jitter
//! (at a random place in the crop), the centre patch and one of its eight neighbours; the
//! label is the neighbour's index (0..8, row-major, the centre skipped). Then, patch by patch
//! and in the official code's order (`prep_image` of cdoersch/deepcontext): random pixelation,
//! the colour countermeasure, normalisation.
use crate::config::{ColorShortcut, RelativePatchConfig};
use crate::RelativePatchError;
use rand::Rng;
use selfsup_data::patches;
use tch::{Kind, Tensor};

/// The grid index of neighbour label `label` (0..8): the centre (4) is skipped.
pub fn neighbour_cell(label: usize) -> usize {
    if label < 4 {
        label
    } else {
        label + 1
    }
}

/// A batch of patch pairs.
#[derive(Debug)]
pub struct Pairs {
    /// The centre patches.
    ///
    /// # Shapes
    /// `(B, C, P, P)`.
    pub first: Tensor,
    /// The neighbours, `(B, C, P, P)`.
    pub second: Tensor,
    /// The neighbour's label, `(B,)` i64.
    pub labels: Tensor,
    /// Top-left corners `(y, x)` in the crop of the first and the second patch, per image.
    pub corners: Vec<[(usize, usize); 2]>,
    /// The channel each patch kept under colour dropping (first, second), per image.
    pub kept: Vec<[usize; 2]>,
}

/// Standard normal samples (Box–Muller on `rng`, so they follow the method's seed on any
/// device).
fn normals<R: Rng>(n: usize, rng: &mut R) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Keeps channel `keep` of `patch` (`(C, P, P)`) and replaces the others by Gaussian noise
/// around the kept channel's mean, with `fraction` of its standard deviation.
fn drop_colors<R: Rng>(patch: &Tensor, keep: usize, fraction: f64, rng: &mut R) -> Tensor {
    let size = patch.size();
    let (c, n) = (size[0], size[1] * size[2]);
    let kept = patch.get(keep as i64);
    let mean = kept.mean(Kind::Float);
    let std = kept.std(true);
    let noise = Tensor::from_slice(&normals((c as usize - 1) * n as usize, rng))
        .to_device(patch.device())
        .view([c - 1, size[1], size[2]]);
    let filled = noise * (std * fraction) + mean;
    let mut channels = Vec::with_capacity(c as usize);
    let mut rest = filled.split(1, 0).into_iter();
    for ch in 0..c as usize {
        channels.push(if ch == keep { kept.unsqueeze(0) } else { rest.next().expect("C-1 rows") });
    }
    Tensor::cat(&channels, 0)
}

/// The range of sides a patch of side `p` is downsampled to: the official `[10, 95]` at 96
/// pixels, scaled (at least 2, at most `p - 1`).
pub fn downsample_sides(p: usize) -> (usize, usize) {
    let lo = ((10 * p + 48) / 96).max(2);
    (lo.min(p.saturating_sub(1)).max(1), p.saturating_sub(1).max(1))
}

/// `patch` (`(C, P, P)`) downsampled to `side` (antialiased bilinear) and upsampled back
/// (bilinear), as the official code's `caffe.io.resize` down and up.
pub fn pixelate(patch: &Tensor, side: i64) -> Tensor {
    let p = patch.size()[1];
    let x = patch.unsqueeze(0);
    let down = x.internal_upsample_bilinear2d_aa([side, side], false, None, None);
    down.upsample_bilinear2d([p, p], false, None, None).squeeze_dim(0)
}

/// `patch` (`(C, P, P)`) with each channel's mean subtracted, divided by its root mean square
/// over all channels together (deepcontext's `prep_image`: "normalize the mean and variance so
/// that gradients are a less useful cue"). One scale for the whole patch keeps the noise of
/// dropped channels at its fraction of the kept channel; a flat patch is only centred.
pub fn normalize_patch(patch: &Tensor) -> Tensor {
    let centred = patch - patch.mean_dim([-2i64, -1].as_slice(), true, Kind::Float);
    let rms = centred.square().mean(Kind::Float).sqrt();
    let rms = rms.where_self(&rms.gt(0.0), &rms.ones_like());
    centred / rms
}

/// Every pixel of `patch` (`(3, P, P)`) projected onto the plane orthogonal to the
/// green-magenta axis `(-1, 2, -1)/√6`.
pub fn project_green_magenta(patch: &Tensor) -> Tensor {
    let a = Tensor::from_slice(&[-1.0f32, 2.0, -1.0]).to_device(patch.device()) / 6f64.sqrt();
    let a = a.view([3, 1, 1]);
    let along = (patch * &a).sum_dim_intlist([0i64].as_slice(), true, Kind::Float);
    patch - along * a
}

/// The pairs of `images` (`(B, C, S, S)`, values in `[0, 1]`), random choices from `rng`.
pub fn make_pairs<R: Rng>(
    images: &Tensor,
    cfg: &RelativePatchConfig,
    rng: &mut R,
) -> Result<Pairs, RelativePatchError> {
    let size = images.size();
    let &[b, c, h, w] = size.as_slice() else {
        return Err(RelativePatchError::Batch(format!(
            "expected a (B, C, H, W) batch, got {size:?}"
        )));
    };
    let grid = cfg.grid();
    let extent = grid.extent();
    if (h as usize) < extent || (w as usize) < extent {
        return Err(RelativePatchError::Batch(format!(
            "images of {h}x{w} are smaller than the {extent}-pixel patch grid (the view gives \
             crop = {})",
            cfg.crop
        )));
    }
    if cfg.color != ColorShortcut::None && c != 3 {
        return Err(RelativePatchError::Config(format!(
            "color = {:?} needs RGB images, these have {c} channels; set color = \"none\"",
            cfg.color
        )));
    }
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let (mut labels, mut corners, mut kept) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..b {
        let img = images.get(i);
        let (oy, ox) = if cfg.random_grid {
            (rng.random_range(0..=h as usize - extent), rng.random_range(0..=w as usize - extent))
        } else {
            ((h as usize - extent) / 2, (w as usize - extent) / 2)
        };
        let pos = grid
            .positions(extent, extent, rng)
            .map_err(|e| RelativePatchError::Batch(e.to_string()))?;
        let label = rng.random_range(0..8usize);
        let at = [pos[4], pos[neighbour_cell(label)]].map(|(y, x)| (y + oy, x + ox));
        let mut pair = patches::cut(&img, &at, cfg.patch);
        let mut keep = [0usize; 2];
        for (p, k) in pair.iter_mut().zip(keep.iter_mut()) {
            if cfg.downsample_p > 0.0 && rng.random::<f64>() < cfg.downsample_p {
                let (lo, hi) = downsample_sides(cfg.patch);
                let u: f64 = rng.random();
                let side = (u * (hi * hi - lo * lo) as f64 + (lo * lo) as f64).sqrt() as i64;
                *p = pixelate(p, side.clamp(lo as i64, hi as i64));
            }
            match cfg.color {
                ColorShortcut::Drop => {
                    *k = rng.random_range(0..3usize);
                    *p = drop_colors(p, *k, cfg.noise_fraction, rng);
                }
                ColorShortcut::Project => *p = project_green_magenta(p),
                ColorShortcut::None => {}
            }
            if cfg.normalize_patches {
                *p = normalize_patch(p);
            }
        }
        let [a, s] = pair.try_into().expect("two patches");
        first.push(a);
        second.push(s);
        labels.push(label as i64);
        corners.push(at);
        kept.push(keep);
    }
    Ok(Pairs {
        first: Tensor::f_stack(&first, 0)?,
        second: Tensor::f_stack(&second, 0)?,
        labels: Tensor::from_slice(&labels).to_device(images.device()),
        corners,
        kept,
    })
}
