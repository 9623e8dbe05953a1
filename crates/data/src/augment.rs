//! Augmentation kernels on float HWC images in `[0, 1]`, following torchvision's definitions
//! (`torchvision/transforms/_functional_tensor.py` and `transforms.py`, v0.26):
//! random resized crop parameters (`RandomResizedCrop.get_params`), Pillow's antialiased
//! bilinear resampling (`ImagingResample`, which torchvision v1 uses on PIL images), colour
//! jitter (`adjust_brightness/contrast/saturation/hue`, `_rgb2hsv`, `_hsv2rgb`), grayscale
//! (ITU-R 601-2 luma: 0.2989, 0.587, 0.114), Gaussian blur (`_get_gaussian_kernel1d`, reflect
//! padding) and solarization. Pipelines ([`crate::Pipeline`]) chain these kernels.
use rand::Rng;

/// A float image, HWC, values nominally in `[0, 1]`.
///
/// # Shapes
/// `data.len() == height * width * channels`, row-major HWC.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatImage {
    /// Channels (1 or 3).
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// Pixels, HWC.
    pub data: Vec<f32>,
}

impl FloatImage {
    /// Converts uint8 HWC pixels to `[0, 1]` floats.
    pub fn from_u8(pixels: &[u8], channels: usize, height: usize, width: usize) -> Self {
        debug_assert_eq!(pixels.len(), channels * height * width);
        let data = pixels.iter().map(|&v| v as f32 / 255.0).collect();
        FloatImage { channels, height, width, data }
    }

    /// Writes `(x - mean[c]) / std[c]` in CHW order into `out` (fused normalization).
    pub fn write_chw_normalized(&self, out: &mut [f32], mean: &[f32], std: &[f32]) {
        let (c, hw) = (self.channels, self.height * self.width);
        debug_assert_eq!(out.len(), c * hw);
        for ch in 0..c {
            let (m, inv) = (mean[ch], 1.0 / std[ch]);
            let plane = &mut out[ch * hw..(ch + 1) * hw];
            for (o, px) in plane.iter_mut().zip(self.data.chunks_exact(c)) {
                *o = (px[ch] - m) * inv;
            }
        }
    }

    /// Writes the image in CHW order into `out` (`out.len() == c * h * w`).
    pub fn write_chw(&self, out: &mut [f32]) {
        let (c, hw) = (self.channels, self.height * self.width);
        debug_assert_eq!(out.len(), c * hw);
        if c == 1 {
            out.copy_from_slice(&self.data);
            return;
        }
        for (p, px) in self.data.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                out[ch * hw + p] = v;
            }
        }
    }
}

/// A crop box: top row `top`, left column `left`, `height × width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at a box of area
/// `scale × H × W` (uniform) and aspect ratio `ratio` (log-uniform), else a centre crop clamped
/// to the ratio range.
pub fn random_resized_crop_box<R: Rng>(
    rng: &mut R,
    height: usize,
    width: usize,
    scale: [f64; 2],
    ratio: [f64; 2],
) -> CropBox {
    let area = (height * width) as f64;
    let (lr0, lr1) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale[0], scale[1]);
        let aspect = uniform(rng, lr0, lr1).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return CropBox { top, left, height: h, width: w };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio[0].min(ratio[1]) {
        (width, ((width as f64 / ratio[0].min(ratio[1])).round() as usize).clamp(1, height))
    } else if in_ratio > ratio[0].max(ratio[1]) {
        (((height as f64 * ratio[0].max(ratio[1])).round() as usize).clamp(1, width), height)
    } else {
        (width, height)
    };
    CropBox { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
}

/// Uniform sample in `[lo, hi)` (returns `lo` when the range is empty).
pub fn uniform<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// Pillow's resampling coefficients for one axis (`precompute_coeffs` with the bilinear
/// triangle filter, support widened by the downscale factor so downscaling is antialiased):
/// output `o` reads `taps[o]` inputs from `start[o]` with weights `weights[o * stride..]`.
struct Coeffs {
    start: Vec<usize>,
    taps: Vec<usize>,
    stride: usize,
    weights: Vec<f32>,
}

fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let stride = (support.ceil() as usize) * 2 + 1;
    let mut c = Coeffs {
        start: Vec::with_capacity(out_size),
        taps: Vec::with_capacity(out_size),
        stride,
        weights: vec![0.0; out_size * stride],
    };
    let mut w: Vec<f64> = Vec::new();
    for o in 0..out_size {
        let center = (o as f64 + 0.5) * scale;
        // Pillow truncates toward zero; both bounds are non-negative here or clamped.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).max(0) as usize;
        let xmax = xmax.min(in_size);
        let n = xmax.saturating_sub(xmin);
        w.clear();
        w.resize(n, 0.0);
        let wv = &mut w[..];
        let mut sum = 0.0;
        for (k, v) in wv.iter_mut().enumerate() {
            let t = (((xmin + k) as f64 - center + 0.5) / filterscale).abs();
            *v = (1.0 - t).max(0.0);
            sum += *v;
        }
        // Drop zero-weight tails so the inner loops stay short.
        let first = wv.iter().position(|&v| v != 0.0).unwrap_or(0);
        let last = wv.iter().rposition(|&v| v != 0.0).map_or(first, |p| p + 1);
        let taps = (last - first).min(stride);
        c.start.push(xmin + first);
        c.taps.push(taps);
        for k in 0..taps {
            c.weights[o * stride + k] = if sum > 0.0 { (wv[first + k] / sum) as f32 } else { 0.0 };
        }
    }
    c
}

/// Pixel source for [`resample`]: uint8 or float HWC.
pub enum Source<'a> {
    /// uint8 pixels (scaled by 1/255).
    U8(&'a [u8]),
    /// Float pixels.
    F32(&'a [f32]),
}

/// A pixel value type that resampling reads.
trait Px: Copy {
    fn get(self) -> f32;
}
impl Px for u8 {
    #[inline(always)]
    fn get(self) -> f32 {
        self as f32
    }
}
impl Px for f32 {
    #[inline(always)]
    fn get(self) -> f32 {
        self
    }
}

/// Horizontal pass: the crop rows resampled to `out_w` columns, times `gain`.
fn resample_rows<P: Px, const C: usize>(
    src: &[P],
    width: usize,
    crop: CropBox,
    cx: &Coeffs,
    out_w: usize,
    gain: f32,
) -> Vec<f32> {
    let mut tmp = vec![0f32; crop.height * out_w * C];
    for y in 0..crop.height {
        let row = &src[((crop.top + y) * width + crop.left) * C..];
        let dst = &mut tmp[y * out_w * C..(y + 1) * out_w * C];
        for (ox, d) in dst.chunks_exact_mut(C).enumerate() {
            let x0 = cx.start[ox];
            let w = &cx.weights[ox * cx.stride..ox * cx.stride + cx.taps[ox]];
            let mut acc = [0f32; C];
            for (k, &wk) in w.iter().enumerate() {
                let p = &row[(x0 + k) * C..(x0 + k + 1) * C];
                for ch in 0..C {
                    acc[ch] += wk * p[ch].get();
                }
            }
            for ch in 0..C {
                d[ch] = acc[ch] * gain;
            }
        }
    }
    tmp
}

fn resample_rows_dyn<P: Px>(
    src: &[P],
    c: usize,
    width: usize,
    crop: CropBox,
    cx: &Coeffs,
    out_w: usize,
    gain: f32,
) -> Vec<f32> {
    match c {
        1 => resample_rows::<P, 1>(src, width, crop, cx, out_w, gain),
        3 => resample_rows::<P, 3>(src, width, crop, cx, out_w, gain),
        _ => {
            let mut tmp = vec![0f32; crop.height * out_w * c];
            for y in 0..crop.height {
                let row = (crop.top + y) * width + crop.left;
                for ox in 0..out_w {
                    let w = &cx.weights[ox * cx.stride..ox * cx.stride + cx.taps[ox]];
                    for ch in 0..c {
                        let mut acc = 0f32;
                        for (k, &wk) in w.iter().enumerate() {
                            acc += wk * src[(row + cx.start[ox] + k) * c + ch].get();
                        }
                        tmp[(y * out_w + ox) * c + ch] = acc * gain;
                    }
                }
            }
            tmp
        }
    }
}

/// Crops `crop` out of an HWC image of width `width` and `channels` channels and resizes it to
/// `out_h × out_w` with Pillow's antialiased bilinear filter (separable: rows, then columns).
pub fn resample(
    src: Source<'_>,
    channels: usize,
    width: usize,
    crop: CropBox,
    out_h: usize,
    out_w: usize,
) -> FloatImage {
    let c = channels;
    let cx = coeffs(crop.width, out_w);
    let cy = coeffs(crop.height, out_h);
    let tmp = match src {
        Source::U8(p) => resample_rows_dyn(p, c, width, crop, &cx, out_w, 1.0 / 255.0),
        Source::F32(p) => resample_rows_dyn(p, c, width, crop, &cx, out_w, 1.0),
    };
    // Vertical pass.
    let stride = out_w * c;
    let mut data = vec![0f32; out_h * stride];
    for (oy, dst) in data.chunks_exact_mut(stride).enumerate() {
        let y0 = cy.start[oy];
        let w = &cy.weights[oy * cy.stride..oy * cy.stride + cy.taps[oy]];
        for (k, &wk) in w.iter().enumerate() {
            let srow = &tmp[(y0 + k) * stride..(y0 + k + 1) * stride];
            for (d, &s) in dst.iter_mut().zip(srow) {
                *d += wk * s;
            }
        }
    }
    FloatImage { channels: c, height: out_h, width: out_w, data }
}

impl Source<'_> {
    #[inline(always)]
    fn get(&self, i: usize) -> f32 {
        match self {
            Source::U8(p) => p[i] as f32 / 255.0,
            Source::F32(p) => p[i],
        }
    }
}

/// Cuts `crop` out of the `height × width` image zero-padded by `pad` on every side (the crop's
/// `top` and `left` are in padded coordinates).
pub fn padded_crop(
    src: Source<'_>,
    channels: usize,
    height: usize,
    width: usize,
    pad: usize,
    crop: CropBox,
) -> FloatImage {
    let c = channels;
    let CropBox { top, left, height: size_h, width: size_w } = crop;
    let mut data = vec![0f32; size_h * size_w * c];
    for y in 0..size_h {
        let sy = (top + y) as isize - pad as isize;
        if sy < 0 || sy >= height as isize {
            continue;
        }
        for x in 0..size_w {
            let sx = (left + x) as isize - pad as isize;
            if sx < 0 || sx >= width as isize {
                continue;
            }
            let s = (sy as usize * width + sx as usize) * c;
            let d = (y * size_w + x) * c;
            for ch in 0..c {
                data[d + ch] = src.get(s + ch);
            }
        }
    }
    FloatImage { channels: c, height: size_h, width: size_w, data }
}

/// Mirrors the image left to right.
pub fn hflip(img: &mut FloatImage) {
    let (w, c) = (img.width, img.channels);
    for row in img.data.chunks_exact_mut(w * c) {
        // Reversing the whole row reverses the pixels and, within each pixel, the channels;
        // reversing each pixel back restores the channel order.
        row.reverse();
        if c > 1 {
            row.chunks_exact_mut(c).for_each(|p| p.reverse());
        }
    }
}

/// Luma of an RGB pixel (torchvision `_rgb2gray`).
#[inline(always)]
pub fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.2989 * r + 0.587 * g + 0.114 * b
}

/// `clamp(ratio * img + (1 - ratio) * other, 0, 1)` (torchvision `_blend`).
#[inline(always)]
fn blend(a: f32, b: f32, ratio: f32) -> f32 {
    (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)
}

/// torchvision `adjust_brightness`: `clamp(img * factor)`.
pub fn adjust_brightness(img: &mut FloatImage, factor: f32) {
    img.data.iter_mut().for_each(|v| *v = (*v * factor).clamp(0.0, 1.0));
}

/// torchvision `adjust_contrast`: blend with the mean luma of the whole image.
pub fn adjust_contrast(img: &mut FloatImage, factor: f32) {
    let mean = if img.channels == 3 {
        let s: f64 = img.data.chunks_exact(3).map(|p| luma(p[0], p[1], p[2]) as f64).sum();
        (s / (img.height * img.width) as f64) as f32
    } else {
        (img.data.iter().map(|&v| v as f64).sum::<f64>() / img.data.len() as f64) as f32
    };
    img.data.iter_mut().for_each(|v| *v = blend(*v, mean, factor));
}

/// torchvision `adjust_saturation`: blend each pixel with its luma (no-op on one channel).
pub fn adjust_saturation(img: &mut FloatImage, factor: f32) {
    if img.channels != 3 {
        return;
    }
    for p in img.data.chunks_exact_mut(3) {
        let l = luma(p[0], p[1], p[2]);
        for v in p.iter_mut() {
            *v = blend(*v, l, factor);
        }
    }
}

/// torchvision `adjust_hue`: shift the HSV hue by `factor` (in `[-0.5, 0.5]`), per pixel
/// (no-op on one channel). Computes the same function as `_rgb2hsv`, the shift and `_hsv2rgb`
/// (see [`rgb_to_hsv`], [`hsv_to_rgb`]) in a fused form with one division per pixel and no
/// branches in the HSV→RGB step: with `V = max`, `V·S = max − min` and
/// `channel = V − V·S·clamp(min(k, 4 − k), 0, 1)`, `k = (n + 6h) mod 6`, `n = 5, 3, 1` for
/// R, G, B.
pub fn adjust_hue(img: &mut FloatImage, factor: f32) {
    if img.channels != 3 {
        return;
    }
    for p in img.data.chunks_exact_mut(3) {
        let (r, g, b) = (p[0], p[1], p[2]);
        let maxc = r.max(g).max(b);
        let cr = maxc - r.min(g).min(b);
        let inv = if cr == 0.0 { 1.0 } else { 1.0 / cr };
        let h6 = if maxc == r {
            (g - b) * inv
        } else if maxc == g {
            2.0 + (b - r) * inv
        } else {
            4.0 + (r - g) * inv
        };
        // h = fmod(h6 / 6 + 1, 1), then Python's (h + factor) % 1, as a multiple of 6.
        let h = h6 / 6.0 + 1.0;
        let h = if h >= 1.0 { h - 1.0 } else { h } + factor;
        let h = if h < 0.0 {
            h + 1.0
        } else if h >= 1.0 {
            h - 1.0
        } else {
            h
        };
        let h6 = h * 6.0;
        let channel = |n: f32| {
            let k = n + h6;
            let k = if k >= 6.0 { k - 6.0 } else { k };
            maxc - cr * k.min(4.0 - k).clamp(0.0, 1.0)
        };
        p[0] = channel(5.0);
        p[1] = channel(3.0);
        p[2] = channel(1.0);
    }
}

/// torchvision `_rgb2hsv` on one pixel: `(h, s, v)` with `h` in `[0, 1)`.
#[inline]
pub fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let cr = maxc - minc;
    let s = cr / if eqc { 1.0 } else { maxc };
    let crd = if eqc { 1.0 } else { cr };
    let rc = (maxc - r) / crd;
    let gc = (maxc - g) / crd;
    let bc = (maxc - b) / crd;
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    // `fmod(h / 6 + 1, 1)`; the argument lies in (5/6, 2), where this is exact and avoids a
    // libm call.
    let h = h / 6.0 + 1.0;
    let h = if h >= 1.0 { h - 1.0 } else { h };
    (h, s, maxc)
}

/// torchvision `_hsv2rgb` on one pixel.
#[inline]
pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    // h is in [0, 1), so truncation is floor (and avoids a libm call without SSE4.1).
    let i = (h * 6.0) as i32;
    let f = h * 6.0 - i as f32;
    let i = i.rem_euclid(6);
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match i {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Colour-jitter parameters drawn as torchvision's `ColorJitter.get_params` does: a random
/// order of the four adjustments and a factor for each enabled one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterParams {
    /// Order of application: 0 brightness, 1 contrast, 2 saturation, 3 hue.
    pub order: [u8; 4],
    /// Brightness factor (`None`: skipped).
    pub brightness: Option<f32>,
    /// Contrast factor.
    pub contrast: Option<f32>,
    /// Saturation factor.
    pub saturation: Option<f32>,
    /// Hue shift.
    pub hue: Option<f32>,
}

impl JitterParams {
    /// Draws parameters for jitter strengths `b, c, s` (factor uniform in
    /// `[max(0, 1 - x), 1 + x]`) and `h` (shift uniform in `[-h, h]`); a zero strength skips
    /// that adjustment.
    pub fn sample<R: Rng>(rng: &mut R, b: f64, c: f64, s: f64, h: f64) -> Self {
        let mut order = [0u8, 1, 2, 3];
        for i in (1..4).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        let f = |rng: &mut R, x: f64| {
            (x > 0.0).then(|| uniform(rng, (1.0 - x).max(0.0), 1.0 + x) as f32)
        };
        let brightness = f(rng, b);
        let contrast = f(rng, c);
        let saturation = f(rng, s);
        let hue = (h > 0.0).then(|| uniform(rng, -h, h) as f32);
        JitterParams { order, brightness, contrast, saturation, hue }
    }

    /// Applies the adjustments in `order`.
    pub fn apply(&self, img: &mut FloatImage) {
        for &o in &self.order {
            match o {
                0 => self.brightness.map(|f| adjust_brightness(img, f)),
                1 => self.contrast.map(|f| adjust_contrast(img, f)),
                2 => self.saturation.map(|f| adjust_saturation(img, f)),
                _ => self.hue.map(|f| adjust_hue(img, f)),
            };
        }
    }
}

/// Converts to grayscale; keeps three (equal) channels when `keep_channels`, else one.
pub fn grayscale(img: &mut FloatImage, keep_channels: bool) {
    if img.channels != 3 {
        return;
    }
    if keep_channels {
        for p in img.data.chunks_exact_mut(3) {
            let l = luma(p[0], p[1], p[2]);
            p.fill(l);
        }
    } else {
        img.data = img.data.chunks_exact(3).map(|p| luma(p[0], p[1], p[2])).collect();
        img.channels = 1;
    }
}

/// torchvision `_get_gaussian_kernel1d`: `kernel_size` taps of a Gaussian of `sigma`, summing to 1.
pub fn gaussian_kernel(kernel_size: usize, sigma: f32) -> Vec<f32> {
    let half = (kernel_size as f32 - 1.0) * 0.5;
    let pdf: Vec<f32> = (0..kernel_size)
        .map(|i| {
            let x = if kernel_size > 1 {
                -half + i as f32 * (2.0 * half / (kernel_size as f32 - 1.0))
            } else {
                0.0
            };
            (-0.5 * (x / sigma).powi(2)).exp()
        })
        .collect();
    let sum: f32 = pdf.iter().sum();
    pdf.iter().map(|v| v / sum).collect()
}

/// [`reflect`] for indices less than `n` outside `0..n` (no division).
#[inline(always)]
fn reflect_near(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        0
    } else if i < 0 && i > -n {
        (-i) as usize
    } else if i >= n && i < 2 * n - 1 {
        (2 * (n - 1) - i) as usize
    } else if (0..n).contains(&i) {
        i as usize
    } else {
        reflect(i, n as usize)
    }
}

/// Reflect index (`torch.nn.functional.pad(mode="reflect")`: the edge is not repeated).
#[inline(always)]
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - m;
    }
    m as usize
}

/// Horizontal blur of one HWC row of `w` pixels with `c` channels: the interior as one
/// shifted multiply-add per tap over the whole row (vectorizes), the `r` border pixels on each
/// side with reflected indices.
fn blur_row(row: &[f32], out: &mut [f32], k: &[f32], w: usize, c: usize) {
    let r = k.len() / 2;
    let border = |x: usize, out: &mut [f32]| {
        for ch in 0..c {
            let mut acc = 0f32;
            for (t, &kt) in k.iter().enumerate() {
                acc += kt * row[reflect_near(x as isize + t as isize - r as isize, w) * c + ch];
            }
            out[x * c + ch] = acc;
        }
    };
    if w <= 2 * r {
        for x in 0..w {
            border(x, out);
        }
        return;
    }
    let inner = &mut out[r * c..(w - r) * c];
    inner.fill(0.0);
    for (t, &kt) in k.iter().enumerate() {
        let src = &row[t * c..(w - 2 * r + t) * c];
        for (d, &s) in inner.iter_mut().zip(src) {
            *d += kt * s;
        }
    }
    for x in (0..r).chain(w - r..w) {
        border(x, out);
    }
}

/// torchvision `gaussian_blur` with an odd `kernel_size` and one `sigma` for both axes,
/// reflect-padded, separable.
pub fn gaussian_blur(img: &mut FloatImage, kernel_size: usize, sigma: f32) {
    let k = gaussian_kernel(kernel_size, sigma);
    let r = (kernel_size / 2) as isize;
    let (h, w, c) = (img.height, img.width, img.channels);
    let stride = w * c;
    let mut tmp = vec![0f32; img.data.len()];
    for (row, out) in img.data.chunks_exact(stride).zip(tmp.chunks_exact_mut(stride)) {
        blur_row(row, out, &k, w, c);
    }
    for y in 0..h {
        let out = &mut img.data[y * stride..(y + 1) * stride];
        out.fill(0.0);
        for (t, &kt) in k.iter().enumerate() {
            let sy = reflect_near(y as isize + t as isize - r, h);
            let src = &tmp[sy * stride..(sy + 1) * stride];
            for (d, &s) in out.iter_mut().zip(src) {
                *d += kt * s;
            }
        }
    }
}

/// torchvision `solarize`: values `>= threshold` become `1 - value`.
pub fn solarize(img: &mut FloatImage, threshold: f32) {
    img.data.iter_mut().for_each(|v| {
        if *v >= threshold {
            *v = 1.0 - *v
        }
    });
}

/// `(x - mean[c]) / std[c]` per channel.
pub fn normalize(img: &mut FloatImage, mean: &[f32], std: &[f32]) {
    let c = img.channels;
    let inv: Vec<f32> = std.iter().map(|s| 1.0 / s).collect();
    for p in img.data.chunks_exact_mut(c) {
        for ch in 0..c {
            p[ch] = (p[ch] - mean[ch]) * inv[ch];
        }
    }
}
