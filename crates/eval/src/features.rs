//! Frozen features: images of an [`ImageDataset`] normalised and run through an encoder once,
//! under `tch::no_grad`, in eval mode (batch norm uses its running statistics), batched, on the
//! encoder's device; each tap optionally average-pooled and flattened.
//!
//! Pooling follows Zhang et al. (Split-Brain / Colorization, CVPR 2017) and the RotNet linear
//! tables: each conv tap is adaptive-average-pooled to `s × s` with
//! `s = round(sqrt(9000 / C))`, clamped to the map size, so that every layer gives about 9,000
//! dimensions: AlexNet conv1 96·10·10 = 9,600, conv2/conv5 256·6·6 = 9,216, conv3/conv4
//! 384·5·5 = 9,600, a 192-channel NIN block 192·7·7 = 9,408. See [`pooled_side`].
//!
//! Augmentation for probes that train on augmented images (the RotNet non-linear probe and
//! fine-tuning) is the official CIFAR training transform of gidariss/FeatureLearningRotNet
//! (`dataloader.py`): `RandomCrop(32, padding=4)` with zero (black) padding, then
//! `RandomHorizontalFlip()`; each sample's draw comes from `(seed, epoch, index)`.
use crate::probe::rng;
use crate::{EvalError, Result};
use rand::Rng;
use selfsup_core::{host, Encoder};
use selfsup_data::ImageDataset;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Per-channel normalisation `(x / 255 - mean) / std` applied to the stored `u8` pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    /// Per-channel mean of pixels scaled to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of pixels scaled to [0, 1].
    pub std: Vec<f32>,
}

impl From<selfsup_core::InputNormalization> for Normalization {
    fn from(n: selfsup_core::InputNormalization) -> Self {
        Normalization { mean: n.mean, std: n.std }
    }
}

impl Normalization {
    /// The CIFAR-10 statistics of the official RotNet code: mean `[125.3, 123.0, 113.9] / 255`,
    /// std `[63.0, 62.1, 66.7] / 255`.
    pub fn cifar10() -> Self {
        Normalization {
            mean: [125.3f32, 123.0, 113.9].iter().map(|v| v / 255.0).collect(),
            std: [63.0f32, 62.1, 66.7].iter().map(|v| v / 255.0).collect(),
        }
    }

    /// The ImageNet statistics of torchvision: mean `[0.485, 0.456, 0.406]`,
    /// std `[0.229, 0.224, 0.225]`.
    pub fn imagenet() -> Self {
        Normalization { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] }
    }

    /// No normalisation beyond scaling to [0, 1].
    pub fn unit(channels: usize) -> Self {
        Normalization { mean: vec![0.0; channels], std: vec![1.0; channels] }
    }

    /// Per-channel mean and standard deviation of the first `max_images` images of `ds`
    /// (all when 0).
    pub fn from_dataset(ds: &ImageDataset, max_images: usize) -> Self {
        let c = ds.channels();
        let n = if max_images == 0 { ds.len() } else { ds.len().min(max_images) };
        let (mut s, mut s2, mut count) = (vec![0f64; c], vec![0f64; c], 0f64);
        for i in 0..n {
            for px in ds.image(i).chunks_exact(c) {
                for (ch, &v) in px.iter().enumerate() {
                    let v = v as f64 / 255.0;
                    s[ch] += v;
                    s2[ch] += v * v;
                }
                count += 1.0;
            }
        }
        let count = count.max(1.0);
        let mean: Vec<f32> = s.iter().map(|v| (v / count) as f32).collect();
        let std = s2
            .iter()
            .zip(&mean)
            .map(|(v, &m)| ((v / count - (m as f64).powi(2)).max(0.0).sqrt().max(1e-3)) as f32)
            .collect();
        Normalization { mean, std }
    }

    /// Checks that there is one positive std per channel.
    pub fn check(&self, channels: usize) -> Result<()> {
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(EvalError::Config(format!(
                "normalization has {} means and {} stds for {channels}-channel images",
                self.mean.len(),
                self.std.len()
            )));
        }
        if let Some(s) = self.std.iter().find(|s| s.is_nan() || **s <= 0.0) {
            return Err(EvalError::Config(format!("normalization std {s} is not positive")));
        }
        Ok(())
    }
}

/// Random crop after zero padding, then horizontal flip (RotNet's CIFAR training transform);
/// or, with `resized_crop`, a random-resized crop back to the image size, then horizontal flip
/// (the linear evaluation of SimCLR, MoCo and solo-learn).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Seed of the augmentation stream.
    pub seed: u64,
    /// Epoch (each epoch draws new crops and flips).
    pub epoch: u64,
    /// Zero padding on every side before cropping back to the image size (4 for CIFAR).
    /// Unused with `resized_crop`.
    pub padding: usize,
    /// Area range of a random-resized crop (torchvision `RandomResizedCrop(size, scale,
    /// ratio=(3/4, 4/3))`, Pillow's antialiased bilinear resize) instead of the padded crop.
    pub resized_crop: Option<[f64; 2]>,
}

/// One augmented image as floats in [0, 1], HWC (the resized-crop branch of [`Augment`]).
fn resized_crop_flip(src: &[u8], c: usize, h: usize, w: usize, a: &Augment, i: u64) -> Vec<f32> {
    use selfsup_data::augment::{hflip, random_resized_crop_box, resample, Source};
    let mut r = rng(a.seed, "eval-augment-resized", &[a.epoch, i]);
    let scale = a.resized_crop.unwrap_or([1.0, 1.0]);
    let crop = random_resized_crop_box(&mut r, h, w, scale, [3.0 / 4.0, 4.0 / 3.0]);
    let mut img = resample(Source::U8(src), c, w, crop, h, w);
    if r.random::<bool>() {
        hflip(&mut img);
    }
    img.data
}

/// Normalised images of `ds` at `indices`, on the CPU: [`images_on`] with the CPU.
///
/// # Shapes
/// Returns `(B, C, H, W)` float on the CPU, `B = indices.len()`.
pub fn images_tensor(
    ds: &ImageDataset,
    indices: &[i64],
    norm: &Normalization,
    augment: Option<&Augment>,
) -> Result<Tensor> {
    images_on(ds, indices, norm, augment, Device::Cpu)
}

/// Normalised images of `ds` at `indices` on `device`. The host crops and flips the images in
/// parallel (each image's draws keyed by its index, so the thread count changes nothing) into
/// bytes (floats after a resized crop), which go to the device in one non-blocking copy from
/// pinned memory (see [`selfsup_core::host::upload`]); the conversion to floats and the
/// normalisation run on the device. On a GPU the host thus prepares the next batch while the
/// device still works on this one.
///
/// # Shapes
/// Returns `(B, C, H, W)` float on `device`, `B = indices.len()`.
pub fn images_on(
    ds: &ImageDataset,
    indices: &[i64],
    norm: &Normalization,
    augment: Option<&Augment>,
    device: Device,
) -> Result<Tensor> {
    use rayon::prelude::*;
    let (c, h, w) = (ds.channels(), ds.height(), ds.width());
    norm.check(c)?;
    if let Some(&i) = indices.iter().find(|&&i| i < 0 || i as usize >= ds.len()) {
        return Err(EvalError::dataset(
            ds.name(),
            format!("index {i} out of range for {} images", ds.len()),
        ));
    }
    let size = c * h * w;
    let shape = [indices.len() as i64, h as i64, w as i64, c as i64];
    let x = if let Some(a) = augment.filter(|a| a.resized_crop.is_some()) {
        let mut buf = vec![0f32; indices.len() * size];
        buf.par_chunks_mut(size.max(1)).zip(indices.par_iter()).for_each(|(dst, &i)| {
            dst.copy_from_slice(&resized_crop_flip(ds.image(i as usize), c, h, w, a, i as u64));
        });
        host::upload(&Tensor::from_slice(&buf), device).reshape(shape).permute([0, 3, 1, 2])
    } else {
        let mut buf = vec![0u8; indices.len() * size];
        buf.par_chunks_mut(size.max(1)).zip(indices.par_iter()).for_each(|(dst, &i)| {
            let src = ds.image(i as usize);
            match augment {
                None => dst.copy_from_slice(src),
                Some(a) => padded_crop_flip(src, dst, c, h, w, a, i as u64),
            }
        });
        host::upload(&Tensor::from_slice(&buf), device)
            .reshape(shape)
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float)
            / 255.0
    };
    let mean = host::upload(&Tensor::from_slice(&norm.mean), device).reshape([1, c as i64, 1, 1]);
    let std = host::upload(&Tensor::from_slice(&norm.std), device).reshape([1, c as i64, 1, 1]);
    Ok((x - mean) / std)
}

/// One image shifted by a random offset within `padding` (zeros where it leaves the frame)
/// and flipped horizontally half the time, HWC bytes (the padded-crop branch of [`Augment`]).
fn padded_crop_flip(src: &[u8], dst: &mut [u8], c: usize, h: usize, w: usize, a: &Augment, i: u64) {
    let mut r = rng(a.seed, "eval-augment", &[a.epoch, i]);
    let p = a.padding as i64;
    let dy = r.random_range(0..=2 * p) - p;
    let dx = r.random_range(0..=2 * p) - p;
    let flip = r.random::<bool>();
    for y in 0..h as i64 {
        let sy = y + dy;
        for x in 0..w as i64 {
            let xf = if flip { w as i64 - 1 - x } else { x };
            let sx = xf + dx;
            let o = ((y * w as i64 + x) as usize) * c;
            if sy >= 0 && sy < h as i64 && sx >= 0 && sx < w as i64 {
                let s = ((sy * w as i64 + sx) as usize) * c;
                dst[o..o + c].copy_from_slice(&src[s..s + c]);
            } else {
                dst[o..o + c].fill(0);
            }
        }
    }
}

/// Labels of every image of `ds`, `(N,)` i64 on `device`; an error when `ds` is unlabeled.
pub fn labels_tensor(ds: &ImageDataset, device: Device) -> Result<Tensor> {
    let labels = (0..ds.len())
        .map(|i| {
            ds.label(i)
                .ok_or_else(|| EvalError::dataset(ds.name(), format!("image {i} has no label")))
        })
        .collect::<Result<Vec<i64>>>()?;
    Ok(Tensor::from_slice(&labels).to_device(device))
}

/// Number of classes of a labeled dataset (its declared count, else max label + 1).
pub fn num_classes(ds: &ImageDataset) -> Result<i64> {
    if let Some(k) = ds.num_classes() {
        return Ok(k as i64);
    }
    let mut max = -1i64;
    for i in 0..ds.len() {
        let l = ds
            .label(i)
            .ok_or_else(|| EvalError::dataset(ds.name(), format!("image {i} has no label")))?;
        max = max.max(l);
    }
    if max < 0 {
        return Err(EvalError::dataset(ds.name(), "no labels"));
    }
    Ok(max + 1)
}

/// Checks that `train` and `test` are labeled, non-empty, share the image shape and the label
/// range, and returns the number of classes.
pub fn check_pair(train: &ImageDataset, test: &ImageDataset) -> Result<i64> {
    for ds in [train, test] {
        if ds.is_empty() {
            return Err(EvalError::dataset(ds.name(), "is empty"));
        }
    }
    let shape = |d: &ImageDataset| (d.channels(), d.height(), d.width());
    if shape(train) != shape(test) {
        return Err(EvalError::dataset(
            test.name(),
            format!(
                "image shape {:?} differs from the training set's {:?}",
                shape(test),
                shape(train)
            ),
        ));
    }
    let k = num_classes(train)?.max(num_classes(test)?);
    for ds in [train, test] {
        for i in 0..ds.len() {
            match ds.label(i) {
                Some(l) if (0..k).contains(&l) => {}
                other => {
                    return Err(EvalError::dataset(
                        ds.name(),
                        format!("image {i} has label {other:?}, expected 0..{k}"),
                    ))
                }
            }
        }
    }
    Ok(k)
}

/// Resolves a tap list: empty or `["all"]` means every tap of the encoder, `"last"` the last tap
/// (the encoder output); other names must be taps of the encoder. Returned in the encoder's
/// forward order, without repeats.
pub fn resolve_taps(encoder: &dyn Encoder, taps: &[String]) -> Result<Vec<String>> {
    let known = encoder.tap_names();
    if taps.is_empty() || (taps.len() == 1 && taps[0] == "all") {
        return Ok(known);
    }
    let last = known.last().cloned().unwrap_or_default();
    let taps: Vec<String> =
        taps.iter().map(|t| if t == "last" { last.clone() } else { t.clone() }).collect();
    for t in &taps {
        if !known.contains(t) {
            return Err(EvalError::UnknownTap { tap: t.clone(), known: known.join(", ") });
        }
    }
    Ok(known.into_iter().filter(|k| taps.contains(k)).collect())
}

/// How a tap map `(N, C, H, W)` becomes a feature vector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Pooling {
    /// Flatten the map as is: `C·H·W` dimensions.
    None,
    /// Global average pool: `C` dimensions.
    Global,
    /// Adaptive average pool to `s × s` with `s = round(sqrt(dims / C))` (see [`pooled_side`]),
    /// then flatten: about `dims` dimensions. `{"target": 9000}` is the Zhang et al. rule.
    Target(usize),
}

impl Default for Pooling {
    /// `Target(9000)`.
    fn default() -> Self {
        Pooling::Target(9000)
    }
}

/// Spatial output size of [`Pooling::Target`] for a `C × H × W` map:
/// `s = max(1, round(sqrt(target / C)))`, clamped to `(min(s, H), min(s, W))` (maps are never
/// upsampled).
pub fn pooled_side(c: i64, h: i64, w: i64, target: usize) -> (i64, i64) {
    let s = ((target as f64 / c.max(1) as f64).sqrt().round() as i64).max(1);
    (s.min(h), s.min(w))
}

/// Pools and flattens a tap map.
///
/// # Shapes
/// `x`: `(N, C, H, W)` → `(N, D)` with `D` = `C·H·W` (`None`), `C` (`Global`) or `C·s·s`
/// (`Target`).
pub fn pool(x: &Tensor, pooling: Pooling) -> Result<Tensor> {
    let (n, c, h, w) = x.size4().map_err(|_| {
        EvalError::Config(format!("tap map has shape {:?}, expected (N, C, H, W)", x.size()))
    })?;
    Ok(match pooling {
        Pooling::None => x.reshape([n, c * h * w]),
        Pooling::Global => x.mean_dim([2i64, 3].as_slice(), false, Kind::Float),
        Pooling::Target(t) => {
            let (ph, pw) = pooled_side(c, h, w, t);
            let y = if (ph, pw) == (h, w) {
                x.shallow_clone()
            } else {
                x.adaptive_avg_pool2d([ph, pw])
            };
            y.reshape([n, c * ph * pw])
        }
    })
}

/// Features of one tap over a dataset.
#[derive(Debug)]
pub struct TapFeatures {
    /// Tap name.
    pub tap: String,
    /// Shape of one raw tap map, `[C, H, W]`.
    pub map_shape: [i64; 3],
    /// The features, `(N, D)` float (or `(N, C, H, W)` when extracted with `flatten = false`).
    pub features: Tensor,
}

impl TapFeatures {
    /// Feature dimension `D` (product of the per-sample shape).
    pub fn dim(&self) -> i64 {
        self.features.size()[1..].iter().product()
    }
}

/// Settings of a feature extraction pass.
#[derive(Debug, Clone)]
pub struct Extraction<'a> {
    /// Device the encoder's variables live on (inputs are moved there).
    pub device: Device,
    /// Normalisation of the pixels.
    pub norm: &'a Normalization,
    /// Pooling of each tap; `None` keeps the raw maps `(N, C, H, W)`.
    pub pooling: Option<Pooling>,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Augmentation, for per-epoch extraction of augmented copies.
    pub augment: Option<Augment>,
}

/// Runs `encoder` (eval mode, no grad) over the images `indices` of `ds` (all when `None`) and
/// returns the requested taps, in the encoder's order, on `ex.device`.
///
/// # Shapes
/// Each entry's `features` is `(N, D)` when pooled, `(N, C, H, W)` when `ex.pooling` is `None`.
pub fn extract(
    encoder: &dyn Encoder,
    ds: &ImageDataset,
    indices: Option<&[i64]>,
    taps: &[String],
    ex: &Extraction<'_>,
) -> Result<Vec<TapFeatures>> {
    let taps = resolve_taps(encoder, taps)?;
    let last =
        taps.last().cloned().ok_or_else(|| EvalError::Config("no taps to extract".into()))?;
    let all: Vec<i64>;
    let indices = match indices {
        Some(i) => i,
        None => {
            all = (0..ds.len() as i64).collect();
            &all
        }
    };
    if indices.is_empty() {
        return Err(EvalError::dataset(ds.name(), "no images to extract features from"));
    }
    let mut parts: Vec<Vec<Tensor>> = taps.iter().map(|_| Vec::new()).collect();
    let mut shapes = vec![[0i64; 3]; taps.len()];
    tch::no_grad(|| -> Result<()> {
        for idx in indices.chunks(ex.batch_size.max(1)) {
            let x = images_on(ds, idx, ex.norm, ex.augment.as_ref(), ex.device)?;
            let feats = encoder.features_upto_t(&x, &last, false);
            for (j, tap) in taps.iter().enumerate() {
                let map = &feats
                    .iter()
                    .find(|(n, _)| n == tap)
                    .ok_or_else(|| EvalError::UnknownTap { tap: tap.clone(), known: last.clone() })?
                    .1;
                let s = map.size();
                if s.len() != 4 {
                    return Err(EvalError::Config(format!(
                        "tap `{tap}` has shape {s:?}, expected (N, C, H, W)"
                    )));
                }
                shapes[j] = [s[1], s[2], s[3]];
                parts[j].push(match ex.pooling {
                    Some(p) => pool(map, p)?,
                    None => map.shallow_clone(),
                });
            }
        }
        Ok(())
    })?;
    Ok(taps
        .into_iter()
        .zip(parts)
        .zip(shapes)
        .map(|((tap, p), map_shape)| TapFeatures { tap, map_shape, features: Tensor::cat(&p, 0) })
        .collect())
}

/// Per-dimension standardisation with statistics of the training features.
#[derive(Debug)]
pub struct Standardizer {
    mean: Tensor,
    std: Tensor,
}

impl Standardizer {
    /// Fits mean and standard deviation (floored at 1e-6) of `x` `(N, D)` over `N`.
    pub fn fit(x: &Tensor) -> Self {
        let mean = x.mean_dim(0, true, Kind::Float);
        let std = x.std_dim(0, false, true).clamp_min(1e-6);
        Standardizer { mean, std }
    }

    /// `(x - mean) / std`, `(N, D)` → `(N, D)`.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        (x - &self.mean) / &self.std
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zhang_pooling_rule() {
        // AlexNet conv1..conv5 (Zhang et al. Table: 9600, 9216, 9600, 9600, 9216 dims).
        for (c, h, want) in [(96, 27, 10), (256, 13, 6), (384, 13, 5), (256, 13, 6)] {
            assert_eq!(pooled_side(c, h, h, 9000), (want, want), "{c} channels");
        }
        // A RotNet NIN block at 32 px: 192 × 16 × 16 (block1) and 192 × 8 × 8 (block2) → 7 × 7.
        let x = Tensor::ones([2, 192, 8, 8], (Kind::Float, Device::Cpu));
        let p = pool(&x, Pooling::Target(9000)).unwrap();
        assert_eq!(p.size(), [2, 192 * 7 * 7]);
        assert_eq!(192 * 7 * 7, 9408);
        // Small maps are kept, never upsampled.
        assert_eq!(pooled_side(16, 4, 4, 9000), (4, 4));
        assert_eq!(pool(&x, Pooling::Global).unwrap().size(), [2, 192]);
        assert_eq!(pool(&x, Pooling::None).unwrap().size(), [2, 192 * 64]);
        assert!(pool(&Tensor::ones([2, 3], (Kind::Float, Device::Cpu)), Pooling::Global).is_err());
    }

    #[test]
    fn augment_is_crop_and_flip() {
        // A 1-channel 2×2 image [[1, 2], [3, 4]] with padding 0: either itself or mirrored.
        let ds =
            ImageDataset::from_raw("t", 1, 2, 2, vec![1, 2, 3, 4], Some(vec![0]), Some(1)).unwrap();
        let norm = Normalization { mean: vec![0.0], std: vec![1.0 / 255.0] };
        let mut seen = std::collections::BTreeSet::new();
        for epoch in 0..16 {
            let a = Augment { seed: 3, epoch, padding: 0, resized_crop: None };
            let x = images_tensor(&ds, &[0], &norm, Some(&a)).unwrap();
            let v: Vec<f32> = x.flatten(0, -1).try_into().unwrap();
            let v: Vec<i64> = v.iter().map(|f| f.round() as i64).collect();
            assert!(v == [1, 2, 3, 4] || v == [2, 1, 4, 3], "{v:?}");
            seen.insert(v);
            let again = images_tensor(&ds, &[0], &norm, Some(&a)).unwrap();
            assert!(again.equal(&x));
        }
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn resized_crop_keeps_the_size_and_repeats_under_a_seed() {
        // A 3-channel 8x8 gradient; a full-area crop (scale 1, ratio 1 fits) is the image or
        // its mirror, smaller crops are zoomed in.
        let px: Vec<u8> = (0..8 * 8 * 3).map(|i| (i % 251) as u8).collect();
        let ds = ImageDataset::from_raw("t", 3, 8, 8, px, Some(vec![0]), Some(1)).unwrap();
        let norm = Normalization::unit(3);
        let a = Augment { seed: 1, epoch: 0, padding: 0, resized_crop: Some([0.08, 1.0]) };
        let x = images_tensor(&ds, &[0], &norm, Some(&a)).unwrap();
        assert_eq!(x.size(), [1, 3, 8, 8]);
        assert!(images_tensor(&ds, &[0], &norm, Some(&a)).unwrap().equal(&x));
        let other = Augment { epoch: 1, ..a };
        let mut differ = false;
        for e in 1..8 {
            let y = images_tensor(&ds, &[0], &norm, Some(&Augment { epoch: e, ..other })).unwrap();
            differ |= !y.equal(&x);
        }
        assert!(differ, "crops must change with the epoch");
        let full = Augment { resized_crop: Some([1.0, 1.0]), ..a };
        let plain = images_tensor(&ds, &[0], &norm, None).unwrap();
        let y = images_tensor(&ds, &[0], &norm, Some(&full)).unwrap();
        assert!(
            y.allclose(&plain, 1e-5, 1e-5, false)
                || y.allclose(&plain.flip([3]), 1e-5, 1e-5, false)
        );
    }
}
