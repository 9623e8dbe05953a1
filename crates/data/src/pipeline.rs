//! Declarative augmentation pipelines: a serde list of ops (tagged `"op"`) that turns one uint8
//! HWC image into one float CHW view. Each op draws its randomness from the RNG it is given, so
//! the loader can seed every (sample, view) independently of thread scheduling.
//!
//! Presets follow SimCLR (Chen et al. 2020, appendix A and B.9; `google-research/simclr`
//! `data_util.py`): random resized crop, horizontal flip, colour jitter with strength 0.5 on
//! CIFAR (0.4, 0.4, 0.4, 0.1, p=0.8), random grayscale (p=0.2), and Gaussian blur (kernel 10%
//! of the image side, sigma in [0.1, 2], p=0.5) at 96 px and above.
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::augment::{self, CropBox, FloatImage, JitterParams, Source};
use crate::error::{DataError, Result};

/// CIFAR-10 per-channel mean (training set).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 per-channel standard deviation (training set).
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// ImageNet per-channel mean.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet per-channel standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

fn one() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}
fn default_scale() -> [f64; 2] {
    [0.08, 1.0]
}
fn default_ratio() -> [f64; 2] {
    [3.0 / 4.0, 4.0 / 3.0]
}
fn default_sigma() -> [f64; 2] {
    [0.1, 2.0]
}
fn yes() -> bool {
    true
}

/// One augmentation step. Serialized as `{"op": "random_resized_crop", "size": 32, ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// torchvision `RandomResizedCrop(size, scale, ratio)` with antialiased bilinear resampling.
    RandomResizedCrop {
        /// Output side.
        size: usize,
        /// Area fraction range (default `[0.08, 1.0]`).
        #[serde(default = "default_scale")]
        scale: [f64; 2],
        /// Aspect ratio range (default `[3/4, 4/3]`).
        #[serde(default = "default_ratio")]
        ratio: [f64; 2],
    },
    /// torchvision `RandomCrop(size, padding)` with zero fill (the CIFAR standard is
    /// `size: 32, padding: 4`).
    RandomCrop {
        /// Output side.
        size: usize,
        /// Zero padding on every side (default 0).
        #[serde(default)]
        padding: usize,
    },
    /// torchvision `CenterCrop(size)` (zero-padded when the image is smaller).
    CenterCrop {
        /// Output side.
        size: usize,
    },
    /// torchvision `Resize(size)`: the shorter side becomes `size`, aspect ratio kept
    /// (antialiased bilinear).
    Resize {
        /// Shorter side after resizing.
        size: usize,
    },
    /// torchvision `RandomHorizontalFlip(p)`.
    HorizontalFlip {
        /// Probability (default 0.5).
        #[serde(default = "half")]
        p: f64,
    },
    /// `RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`.
    ColorJitter {
        /// Brightness strength (factor in `[max(0, 1-b), 1+b]`).
        brightness: f64,
        /// Contrast strength.
        contrast: f64,
        /// Saturation strength.
        saturation: f64,
        /// Hue strength (shift in `[-h, h]`, at most 0.5).
        hue: f64,
        /// Probability of applying the jitter (default 1).
        #[serde(default = "one")]
        p: f64,
    },
    /// `RandomGrayscale(p)` (three equal channels) or, with `keep_channels: false` and `p: 1`,
    /// a conversion to one channel.
    Grayscale {
        /// Probability (default 1).
        #[serde(default = "one")]
        p: f64,
        /// Keep three channels (default true).
        #[serde(default = "yes")]
        keep_channels: bool,
    },
    /// `RandomApply([GaussianBlur(kernel_size, sigma)], p)`, sigma uniform in the range.
    GaussianBlur {
        /// Odd kernel size.
        kernel_size: usize,
        /// Sigma range (default `[0.1, 2.0]`).
        #[serde(default = "default_sigma")]
        sigma: [f64; 2],
        /// Probability (default 0.5).
        #[serde(default = "half")]
        p: f64,
    },
    /// `RandomSolarize(threshold, p)` on `[0, 1]` values.
    Solarize {
        /// Threshold (default 0.5).
        #[serde(default = "half")]
        threshold: f64,
        /// Probability (default 1).
        #[serde(default = "one")]
        p: f64,
    },
    /// `Normalize(mean, std)`, one entry per channel.
    Normalize {
        /// Per-channel means.
        mean: Vec<f32>,
        /// Per-channel standard deviations.
        std: Vec<f32>,
    },
}

/// A list of ops that turns a uint8 HWC image into a float CHW view (values in `[0, 1]` before
/// any normalization).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// The ops, applied in order.
    pub ops: Vec<Op>,
}

/// The image being transformed: still the borrowed uint8 source, or a float image.
enum Cur<'a> {
    U8(&'a [u8]),
    F32(FloatImage),
}

impl Pipeline {
    /// No augmentation: the image as floats in `[0, 1]`.
    pub fn identity() -> Self {
        Pipeline { ops: Vec::new() }
    }

    /// Only `Normalize(mean, std)`.
    pub fn normalize(mean: &[f32], std: &[f32]) -> Self {
        Pipeline { ops: vec![Op::Normalize { mean: mean.to_vec(), std: std.to_vec() }] }
    }

    /// SimCLR view at `size` px: random resized crop (0.08–1), flip, colour jitter
    /// (0.4, 0.4, 0.4, 0.1; p=0.8), grayscale (p=0.2), Gaussian blur (kernel 10% of `size`,
    /// odd; p=0.5) when `size >= 64`, then normalization.
    pub fn simclr(size: usize, mean: &[f32], std: &[f32]) -> Self {
        let mut ops = vec![
            Op::RandomResizedCrop { size, scale: default_scale(), ratio: default_ratio() },
            Op::HorizontalFlip { p: 0.5 },
            Op::ColorJitter { brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1, p: 0.8 },
            Op::Grayscale { p: 0.2, keep_channels: true },
        ];
        if size >= 64 {
            let k = size / 10;
            ops.push(Op::GaussianBlur { kernel_size: k | 1, sigma: default_sigma(), p: 0.5 });
        }
        ops.push(Op::Normalize { mean: mean.to_vec(), std: std.to_vec() });
        Pipeline { ops }
    }

    /// SimCLR view for CIFAR at 32 px with CIFAR-10 statistics.
    pub fn simclr_cifar() -> Self {
        Self::simclr(32, &CIFAR10_MEAN, &CIFAR10_STD)
    }

    /// SimCLR view at 96 px (STL-10) with ImageNet statistics.
    pub fn simclr_96() -> Self {
        Self::simclr(96, &IMAGENET_MEAN, &IMAGENET_STD)
    }

    /// The standard CIFAR supervised augmentation: random crop 32 with padding 4, flip,
    /// normalization (linear-probe training).
    pub fn cifar_train(mean: &[f32], std: &[f32]) -> Self {
        Pipeline {
            ops: vec![
                Op::RandomCrop { size: 32, padding: 4 },
                Op::HorizontalFlip { p: 0.5 },
                Op::Normalize { mean: mean.to_vec(), std: std.to_vec() },
            ],
        }
    }

    /// Output shape `(C, H, W)` for an input of `c × h × w`.
    pub fn output_shape(&self, c: usize, h: usize, w: usize) -> (usize, usize, usize) {
        self.ops.iter().fold((c, h, w), |(c, h, w), op| step_shape(op, c, h, w))
    }

    /// Checks the ops against an input of `c × h × w` and returns the output shape.
    pub fn check(&self, c: usize, h: usize, w: usize) -> Result<(usize, usize, usize)> {
        let mut shape = (c, h, w);
        for (i, op) in self.ops.iter().enumerate() {
            let (c, h, w) = shape;
            let bad = |msg: String| DataError::config(format!("pipeline op {i} ({op:?}): {msg}"));
            let prob = |p: f64| {
                if (0.0..=1.0).contains(&p) {
                    Ok(())
                } else {
                    Err(bad(format!("probability {p} outside [0, 1]")))
                }
            };
            match op {
                Op::RandomResizedCrop { size, scale, ratio } => {
                    if *size == 0 {
                        return Err(bad("size 0".into()));
                    }
                    if !(scale[0] > 0.0 && scale[0] <= scale[1] && scale[1] <= 1.0) {
                        return Err(bad(format!("scale {scale:?} not within (0, 1]")));
                    }
                    if !(ratio[0] > 0.0 && ratio[0] <= ratio[1]) {
                        return Err(bad(format!("ratio {ratio:?} not increasing and positive")));
                    }
                }
                Op::RandomCrop { size, padding }
                    if *size == 0 || *size > h + 2 * padding || *size > w + 2 * padding =>
                {
                    return Err(bad(format!(
                        "crop {size} does not fit a {h}x{w} image padded by {padding}"
                    )));
                }
                Op::CenterCrop { size } | Op::Resize { size } if *size == 0 => {
                    return Err(bad("size 0".into()));
                }
                Op::HorizontalFlip { p } | Op::Solarize { p, .. } => prob(*p)?,
                Op::ColorJitter { brightness, contrast, saturation, hue, p } => {
                    prob(*p)?;
                    if [brightness, contrast, saturation].iter().any(|v| v.is_nan() || **v < 0.0)
                        || !(0.0..=0.5).contains(hue)
                    {
                        return Err(bad("strengths must be >= 0 and hue in [0, 0.5]".into()));
                    }
                }
                Op::Grayscale { p, keep_channels } => {
                    prob(*p)?;
                    if !keep_channels && *p != 1.0 {
                        return Err(bad("keep_channels: false needs p: 1".into()));
                    }
                }
                Op::GaussianBlur { kernel_size, sigma, p } => {
                    prob(*p)?;
                    if kernel_size % 2 == 0 {
                        return Err(bad(format!("kernel size {kernel_size} is not odd")));
                    }
                    if !(sigma[0] > 0.0 && sigma[0] <= sigma[1]) {
                        return Err(bad(format!("sigma {sigma:?} not increasing and positive")));
                    }
                }
                Op::Normalize { mean, std } => {
                    if mean.len() != c || std.len() != c {
                        return Err(bad(format!(
                            "{} means and {} stds for {c} channels",
                            mean.len(),
                            std.len()
                        )));
                    }
                    if std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
                        return Err(bad("std must be positive".into()));
                    }
                }
                _ => {}
            }
            shape = step_shape(op, c, h, w);
        }
        Ok(shape)
    }

    /// Applies the pipeline to one uint8 HWC image of `c × h × w` and writes the CHW float view
    /// into `out` (length `C·H·W` of [`Pipeline::output_shape`]). Call [`Pipeline::check`]
    /// first; this function assumes a valid pipeline.
    ///
    /// # Shapes
    /// - `image`: `h × w × c` uint8, HWC
    /// - `out`: `C × H × W` f32, CHW, with `(C, H, W) = self.output_shape(c, h, w)`
    pub fn apply<R: Rng>(
        &self,
        image: &[u8],
        c: usize,
        h: usize,
        w: usize,
        rng: &mut R,
        out: &mut [f32],
    ) {
        // A final normalization is fused into the CHW write.
        let (ops, norm) = match self.ops.split_last() {
            Some((Op::Normalize { mean, std }, rest)) => (rest, Some((mean, std))),
            _ => (&self.ops[..], None),
        };
        let mut cur = Cur::U8(image);
        let (mut c, mut h, mut w) = (c, h, w);
        for op in ops {
            cur = apply_op(op, cur, c, h, w, rng);
            (c, h, w) = step_shape(op, c, h, w);
        }
        let img = to_float(cur, c, h, w);
        match norm {
            Some((mean, std)) => img.write_chw_normalized(out, mean, std),
            None => img.write_chw(out),
        }
    }

    /// Convenience: applies the pipeline and returns the CHW view as a new vector.
    pub fn apply_to_vec<R: Rng>(
        &self,
        image: &[u8],
        c: usize,
        h: usize,
        w: usize,
        rng: &mut R,
    ) -> Vec<f32> {
        let (oc, oh, ow) = self.output_shape(c, h, w);
        let mut out = vec![0f32; oc * oh * ow];
        self.apply(image, c, h, w, rng, &mut out);
        out
    }
}

fn step_shape(op: &Op, c: usize, h: usize, w: usize) -> (usize, usize, usize) {
    match op {
        Op::RandomResizedCrop { size, .. }
        | Op::RandomCrop { size, .. }
        | Op::CenterCrop { size } => (c, *size, *size),
        Op::Resize { size } => resize_shape(*size, h, w).map_or((c, h, w), |(nh, nw)| (c, nh, nw)),
        Op::Grayscale { keep_channels: false, .. } => (1, h, w),
        _ => (c, h, w),
    }
}

/// torchvision `Resize(size)` output: the shorter side becomes `size`.
fn resize_shape(size: usize, h: usize, w: usize) -> Option<(usize, usize)> {
    if h == 0 || w == 0 {
        return None;
    }
    Some(if h <= w {
        (size, ((size * w) as f64 / h as f64) as usize)
    } else {
        (((size * h) as f64 / w as f64) as usize, size)
    })
}

fn source<'b>(cur: &'b Cur<'_>) -> Source<'b> {
    match cur {
        Cur::U8(px) => Source::U8(px),
        Cur::F32(img) => Source::F32(&img.data),
    }
}

fn to_float(cur: Cur<'_>, c: usize, h: usize, w: usize) -> FloatImage {
    match cur {
        Cur::U8(px) => FloatImage::from_u8(px, c, h, w),
        Cur::F32(img) => img,
    }
}

fn apply_op<'a, R: Rng>(
    op: &Op,
    cur: Cur<'a>,
    c: usize,
    h: usize,
    w: usize,
    rng: &mut R,
) -> Cur<'a> {
    match op {
        Op::RandomResizedCrop { size, scale, ratio } => {
            let b = augment::random_resized_crop_box(rng, h, w, *scale, *ratio);
            let s = source(&cur);
            Cur::F32(augment::resample(s, c, w, b, *size, *size))
        }
        Op::RandomCrop { size, padding } => {
            let top = rng.random_range(0..=h + 2 * padding - size);
            let left = rng.random_range(0..=w + 2 * padding - size);
            let s = source(&cur);
            let b = CropBox { top, left, height: *size, width: *size };
            Cur::F32(augment::padded_crop(s, c, h, w, *padding, b))
        }
        Op::CenterCrop { size } => {
            // torchvision `center_crop`: zero padding of (size - dim) / 2 (floor) before the
            // image on an axis that is too small, else an offset of Python's
            // round((dim - size) / 2) (half to even). `pad` = `size` covers every case.
            let start = |dim: usize| -> isize {
                if *size > dim {
                    -(((*size - dim) / 2) as isize)
                } else {
                    let d = dim - size;
                    let k = d / 2;
                    (if d % 2 == 1 && k % 2 == 1 { k + 1 } else { k }) as isize
                }
            };
            let top = (start(h) + *size as isize) as usize;
            let left = (start(w) + *size as isize) as usize;
            let s = source(&cur);
            let b = CropBox { top, left, height: *size, width: *size };
            Cur::F32(augment::padded_crop(s, c, h, w, *size, b))
        }
        Op::Resize { size } => {
            let Some((nh, nw)) = resize_shape(*size, h, w) else { return cur };
            let b = CropBox { top: 0, left: 0, height: h, width: w };
            let s = source(&cur);
            Cur::F32(augment::resample(s, c, w, b, nh, nw))
        }
        Op::HorizontalFlip { p } => {
            if rng.random::<f64>() < *p {
                let mut img = to_float(cur, c, h, w);
                augment::hflip(&mut img);
                Cur::F32(img)
            } else {
                cur
            }
        }
        Op::ColorJitter { brightness, contrast, saturation, hue, p } => {
            if rng.random::<f64>() < *p {
                let params = JitterParams::sample(rng, *brightness, *contrast, *saturation, *hue);
                let mut img = to_float(cur, c, h, w);
                params.apply(&mut img);
                Cur::F32(img)
            } else {
                cur
            }
        }
        Op::Grayscale { p, keep_channels } => {
            if *p >= 1.0 || rng.random::<f64>() < *p {
                let mut img = to_float(cur, c, h, w);
                augment::grayscale(&mut img, *keep_channels);
                Cur::F32(img)
            } else {
                cur
            }
        }
        Op::GaussianBlur { kernel_size, sigma, p } => {
            if rng.random::<f64>() < *p {
                let s = augment::uniform(rng, sigma[0], sigma[1]) as f32;
                let mut img = to_float(cur, c, h, w);
                augment::gaussian_blur(&mut img, *kernel_size, s);
                Cur::F32(img)
            } else {
                cur
            }
        }
        Op::Solarize { threshold, p } => {
            if *p >= 1.0 || rng.random::<f64>() < *p {
                let mut img = to_float(cur, c, h, w);
                augment::solarize(&mut img, *threshold as f32);
                Cur::F32(img)
            } else {
                cur
            }
        }
        Op::Normalize { mean, std } => {
            let mut img = to_float(cur, c, h, w);
            augment::normalize(&mut img, mean, std);
            Cur::F32(img)
        }
    }
}
