//! Patch pairs from a batch of images, on tensors: a 3×3 grid of patches with gap and jitter
//! (at a random place in the crop), the centre patch and one of its eight neighbours; the
//! label is the neighbour's index (0..8, row-major, the centre skipped). Then, on each patch and
//! in the official code's order (`prep_image` of cdoersch/deepcontext): random pixelation, the
//! colour countermeasure, normalisation. The random choices are drawn image by image on the
//! host; the tensor work runs on the whole batch's patches at once.
use crate::config::{ColorShortcut, RelativePatchConfig};
use crate::RelativePatchError;
use rand::Rng;
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

/// Keeps channel `keep[j]` of each patch `j` of `patches` (`(N, C, P, P)`) and replaces the
/// others by Gaussian noise around the kept channel's mean, with `fraction` of its (unbiased)
/// standard deviation; `noise` holds `C − 1` planes of `P × P` standard normal samples a patch,
/// patch by patch, for the dropped channels in increasing order.
fn drop_colors(patches: &Tensor, keep: &[usize], fraction: f64, noise: Vec<f32>) -> Tensor {
    let size = patches.size();
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    let device = patches.device();
    let keep_t =
        Tensor::from_slice(&keep.iter().map(|&k| k as i64).collect::<Vec<_>>()).to_device(device);
    let kept = patches.gather(1, &keep_t.view([n, 1, 1, 1]).expand([n, 1, h, w], false), false);
    let dims = [1i64, 2, 3];
    let mean = kept.mean_dim(dims.as_slice(), true, Kind::Float);
    let std = kept.std_dim(dims.as_slice(), true, true);
    let noise = Tensor::from_slice(&noise).to_device(device).view([n, c - 1, h, w]);
    let filled = noise * (std * fraction) + mean;
    // Output channel `ch` of patch `j` takes noise plane `ch` below the kept channel, `ch − 1`
    // above it; the kept channel is the patch's own.
    let (mut rows, mut is_kept) = (Vec::with_capacity((n * c) as usize), Vec::new());
    for &k in keep {
        for ch in 0..c as usize {
            rows.push(if ch > k { ch as i64 - 1 } else { ch.min(c as usize - 2) as i64 });
            is_kept.push(ch == k);
        }
    }
    let rows = Tensor::from_slice(&rows).to_device(device).view([n, c, 1, 1]);
    let spread = filled.gather(1, &rows.expand([n, c, h, w], false), false);
    let is_kept = Tensor::from_slice(&is_kept).to_device(device).view([n, c, 1, 1]);
    patches.where_self(&is_kept, &spread)
}

/// The range of sides a patch of side `p` is downsampled to: the official `[10, 95]` at 96
/// pixels, scaled (at least 2, at most `p - 1`).
pub fn downsample_sides(p: usize) -> (usize, usize) {
    let lo = ((10 * p + 48) / 96).max(2);
    (lo.min(p.saturating_sub(1)).max(1), p.saturating_sub(1).max(1))
}

/// `patch` (`(C, P, P)`, or a batch `(N, C, P, P)`) downsampled to `side` (antialiased
/// bilinear) and upsampled back (bilinear), as the official code's `caffe.io.resize` down and
/// up.
pub fn pixelate(patch: &Tensor, side: i64) -> Tensor {
    let single = patch.dim() == 3;
    let x = if single { patch.unsqueeze(0) } else { patch.shallow_clone() };
    let p = x.size()[2];
    let down = x.internal_upsample_bilinear2d_aa([side, side], false, None, None);
    let up = down.upsample_bilinear2d([p, p], false, None, None);
    if single {
        up.squeeze_dim(0)
    } else {
        up
    }
}

/// `patch` (`(..., C, P, P)`) with each channel's mean subtracted, divided by its root mean
/// square over all channels together (deepcontext's `prep_image`: "normalize the mean and
/// variance so that gradients are a less useful cue"), patch by patch. One scale for the whole
/// patch keeps the noise of dropped channels at its fraction of the kept channel; a flat patch
/// is only centred.
pub fn normalize_patch(patch: &Tensor) -> Tensor {
    let centred = patch - patch.mean_dim([-2i64, -1].as_slice(), true, Kind::Float);
    let rms = centred.square().mean_dim([-3i64, -2, -1].as_slice(), true, Kind::Float).sqrt();
    let rms = rms.where_self(&rms.gt(0.0), &rms.ones_like());
    centred / rms
}

/// Every pixel of `patch` (`(..., 3, P, P)`) projected onto the plane orthogonal to the
/// green-magenta axis `(-1, 2, -1)/√6`.
pub fn project_green_magenta(patch: &Tensor) -> Tensor {
    let a = Tensor::from_slice(&[-1.0f32, 2.0, -1.0]).to_device(patch.device()) / 6f64.sqrt();
    let a = a.view([3, 1, 1]);
    let along = (patch * &a).sum_dim_intlist([-3i64].as_slice(), true, Kind::Float);
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
    // Every random choice first, on the host and in the order of the official per-image
    // loop (grid offset, positions, label, then per patch: pixelation, kept channel and its
    // noise), then the tensor work once for the whole batch (a per-patch loop costs a dozen
    // small ops a patch, a kernel launch each on a GPU). Patch `2i` is image i's centre, `2i
    // + 1` its neighbour.
    let n = 2 * b as usize;
    let (mut labels, mut corners, mut kept) = (Vec::new(), Vec::new(), Vec::new());
    let mut sides = vec![0i64; n];
    let mut noise = Vec::new();
    let plane = cfg.patch * cfg.patch;
    for i in 0..b as usize {
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
        let mut keep = [0usize; 2];
        for (j, k) in keep.iter_mut().enumerate() {
            if cfg.downsample_p > 0.0 && rng.random::<f64>() < cfg.downsample_p {
                let (lo, hi) = downsample_sides(cfg.patch);
                let u: f64 = rng.random();
                let side = (u * (hi * hi - lo * lo) as f64 + (lo * lo) as f64).sqrt() as i64;
                sides[2 * i + j] = side.clamp(lo as i64, hi as i64);
            }
            if cfg.color == ColorShortcut::Drop {
                *k = rng.random_range(0..3usize);
                noise.extend(normals((c as usize - 1) * plane, rng));
            }
        }
        labels.push(label as i64);
        corners.push(at);
        kept.push(keep);
    }
    let device = images.device();
    let side = cfg.patch as i64;
    let at: Vec<(usize, usize, usize)> = corners
        .iter()
        .enumerate()
        .flat_map(|(i, pair)| pair.iter().map(move |&(y, x)| (i, y, x)))
        .collect();
    let mut patches = selfsup_data::patches::gather(images, &at, cfg.patch)?;
    let mut distinct: Vec<i64> = sides.iter().copied().filter(|&s| s > 0).collect();
    distinct.sort_unstable();
    distinct.dedup();
    for s in distinct {
        let at: Vec<i64> = (0..n as i64).filter(|&j| sides[j as usize] == s).collect();
        let at = Tensor::from_slice(&at).to_device(device);
        let small = pixelate(&patches.f_index_select(0, &at)?, s);
        patches = patches.f_index_copy(0, &at, &small)?;
    }
    match cfg.color {
        ColorShortcut::Drop => {
            let keep: Vec<usize> = kept.iter().flatten().copied().collect();
            patches = drop_colors(&patches, &keep, cfg.noise_fraction, noise);
        }
        ColorShortcut::Project => patches = project_green_magenta(&patches),
        ColorShortcut::None => {}
    }
    if cfg.normalize_patches {
        patches = normalize_patch(&patches);
    }
    let pairs = patches.f_view([b, 2, c, side, side])?;
    Ok(Pairs {
        first: pairs.f_select(1, 0)?.f_contiguous()?,
        second: pairs.f_select(1, 1)?.f_contiguous()?,
        labels: Tensor::from_slice(&labels).to_device(device),
        corners,
        kept,
    })
}
