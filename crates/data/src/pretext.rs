//! Pretext-task building blocks as pure functions on uint8 HWC images:
//! - the four 90° rotations (RotNet, Gidaris et al. 2018) and rotation by any angle;
//! - patch grids with gap and jitter (relative patch location, Doersch et al. 2015; jigsaw,
//!   Noroozi & Favaro 2016) and tile shuffling by a permutation;
//! - inpainting masks (context encoders, Pathak et al. 2016: central region, random blocks);
//! - sRGB ↔ CIE Lab under D65 (colorization, Zhang et al. 2016; split-brain, 2017), with the
//!   same constants as scikit-image's `rgb2lab`.
use rand::Rng;

use crate::error::{DataError, Result};

/// An HWC uint8 image with its shape.
///
/// # Shapes
/// `data.len() == height * width * channels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Channels.
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// Pixels, HWC.
    pub data: Vec<u8>,
}

impl Image {
    /// Wraps HWC bytes, checking the length.
    pub fn new(channels: usize, height: usize, width: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != channels * height * width {
            return Err(DataError::config(format!(
                "image of {channels}x{height}x{width} needs {} bytes, got {}",
                channels * height * width,
                data.len()
            )));
        }
        Ok(Image { channels, height, width, data })
    }

    #[inline]
    fn at(&self, y: usize, x: usize) -> &[u8] {
        let o = (y * self.width + x) * self.channels;
        &self.data[o..o + self.channels]
    }
}

/// Rotates by `k` quarter turns counter-clockwise (`k` taken mod 4), like `numpy.rot90(img, k)`.
/// Odd `k` swaps height and width.
pub fn rotate90(img: &Image, k: u32) -> Image {
    let (h, w, c) = (img.height, img.width, img.channels);
    let k = k % 4;
    let (oh, ow) = if k % 2 == 1 { (w, h) } else { (h, w) };
    let mut data = Vec::with_capacity(img.data.len());
    for i in 0..oh {
        for j in 0..ow {
            let (sy, sx) = match k {
                0 => (i, j),
                1 => (j, w - 1 - i),
                2 => (h - 1 - i, w - 1 - j),
                _ => (h - 1 - j, i),
            };
            data.extend_from_slice(img.at(sy, sx));
        }
    }
    Image { channels: c, height: oh, width: ow, data }
}

/// Rotates by `degrees` counter-clockwise about the image centre, keeping the size, with
/// bilinear sampling. Corners: output pixels whose source falls outside the image take `fill`;
/// near the border, neighbours outside the image count as `fill` in the bilinear blend (as
/// torchvision's `rotate` with `grid_sample` zero padding does for `fill = 0`).
pub fn rotate(img: &Image, degrees: f32, fill: u8) -> Image {
    let (h, w, c) = (img.height, img.width, img.channels);
    let (s, co) = degrees.to_radians().sin_cos();
    let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    let mut data = vec![fill; img.data.len()];
    for y in 0..h {
        for x in 0..w {
            // Inverse map: rotate the output position clockwise back into the source. The
            // image y axis points down, so a counter-clockwise turn on screen is
            // (dx, dy) -> (dx cos + dy sin, -dx sin + dy cos).
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let sx = co * dx - s * dy + cx;
            let sy = s * dx + co * dy + cy;
            if sx <= -1.0 || sy <= -1.0 || sx >= w as f32 || sy >= h as f32 {
                continue;
            }
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            let out = &mut data[(y * w + x) * c..(y * w + x + 1) * c];
            for (ch, o) in out.iter_mut().enumerate() {
                let get = |yy: isize, xx: isize| -> f32 {
                    if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                        fill as f32
                    } else {
                        img.data[(yy as usize * w + xx as usize) * c + ch] as f32
                    }
                };
                let v = (1.0 - fy) * ((1.0 - fx) * get(y0, x0) + fx * get(y0, x0 + 1))
                    + fy * ((1.0 - fx) * get(y0 + 1, x0) + fx * get(y0 + 1, x0 + 1));
                *o = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Image { channels: c, height: h, width: w, data }
}

/// A grid of square patches: `grid × grid` patches of side `patch`, `gap` pixels apart,
/// centred in the image, each moved by up to `jitter` pixels along each axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PatchGrid {
    /// Patches per side.
    pub grid: usize,
    /// Patch side in pixels.
    pub patch: usize,
    /// Pixels between neighbouring patches.
    pub gap: usize,
    /// Maximum random displacement of each patch, per axis.
    pub jitter: usize,
}

impl PatchGrid {
    /// Side of the square the grid (with jitter room) needs.
    pub fn extent(&self) -> usize {
        self.grid * self.patch + self.grid.saturating_sub(1) * self.gap + 2 * self.jitter
    }

    /// Top-left corners of the patches in row-major grid order, with jitter drawn from `rng`.
    pub fn positions<R: Rng>(
        &self,
        height: usize,
        width: usize,
        rng: &mut R,
    ) -> Result<Vec<(usize, usize)>> {
        let ext = self.extent();
        if self.grid == 0 || self.patch == 0 || ext > height || ext > width {
            return Err(DataError::config(format!(
                "patch grid {self:?} needs {ext}x{ext} pixels, image is {height}x{width}"
            )));
        }
        let (top0, left0) = ((height - ext) / 2 + self.jitter, (width - ext) / 2 + self.jitter);
        let step = self.patch + self.gap;
        let j = self.jitter as i64;
        let mut out = Vec::with_capacity(self.grid * self.grid);
        for gy in 0..self.grid {
            for gx in 0..self.grid {
                let (dy, dx) = if j > 0 {
                    (rng.random_range(-j..=j) as isize, rng.random_range(-j..=j) as isize)
                } else {
                    (0, 0)
                };
                // top0 and left0 include `jitter`, so the sums stay non-negative.
                out.push((
                    ((top0 + gy * step) as isize + dy) as usize,
                    ((left0 + gx * step) as isize + dx) as usize,
                ));
            }
        }
        Ok(out)
    }

    /// Cuts the patches (row-major grid order), each `patch × patch × C` HWC.
    pub fn extract<R: Rng>(&self, img: &Image, rng: &mut R) -> Result<Vec<Image>> {
        let pos = self.positions(img.height, img.width, rng)?;
        Ok(pos.into_iter().map(|(t, l)| crop(img, t, l, self.patch, self.patch)).collect())
    }
}

/// The `height × width` window of `img` at (`top`, `left`); panics when it does not fit (an
/// index bug).
pub fn crop(img: &Image, top: usize, left: usize, height: usize, width: usize) -> Image {
    let c = img.channels;
    let mut data = Vec::with_capacity(height * width * c);
    for y in top..top + height {
        let o = (y * img.width + left) * c;
        data.extend_from_slice(&img.data[o..o + width * c]);
    }
    Image { channels: c, height, width, data }
}

/// Reorders tiles: output `i` is `tiles[perm[i]]`. `perm` must be a permutation of
/// `0..tiles.len()`.
pub fn shuffle_tiles<T: Clone>(tiles: &[T], perm: &[usize]) -> Result<Vec<T>> {
    let mut seen = vec![false; tiles.len()];
    if perm.len() != tiles.len()
        || perm.iter().any(|&p| p >= tiles.len() || std::mem::replace(&mut seen[p], true))
    {
        return Err(DataError::config(format!(
            "{perm:?} is not a permutation of 0..{}",
            tiles.len()
        )));
    }
    Ok(perm.iter().map(|&p| tiles[p].clone()).collect())
}

/// Lays `grid × grid` equal tiles (row-major) side by side into one image.
pub fn assemble_tiles(tiles: &[Image], grid: usize) -> Result<Image> {
    let first = tiles.first().ok_or_else(|| DataError::config("no tiles to assemble"))?;
    let (c, th, tw) = (first.channels, first.height, first.width);
    if tiles.len() != grid * grid
        || tiles.iter().any(|t| (t.channels, t.height, t.width) != (c, th, tw))
    {
        return Err(DataError::config(format!(
            "{} tiles do not make a {grid}x{grid} grid of equal tiles",
            tiles.len()
        )));
    }
    let (h, w) = (grid * th, grid * tw);
    let mut data = vec![0u8; h * w * c];
    for (i, t) in tiles.iter().enumerate() {
        let (gy, gx) = (i / grid, i % grid);
        for y in 0..th {
            let d = ((gy * th + y) * w + gx * tw) * c;
            data[d..d + tw * c].copy_from_slice(&t.data[y * tw * c..(y + 1) * tw * c]);
        }
    }
    Ok(Image { channels: c, height: h, width: w, data })
}

/// A mask of `height × width` bytes, 1 where the image is hidden.
pub type Mask = Vec<u8>;

/// The central square of side `round(fraction · min(height, width))` (context encoders hide
/// the central 64×64 of a 128×128 image: `fraction = 0.5`).
pub fn central_mask(height: usize, width: usize, fraction: f64) -> Mask {
    let side = ((height.min(width) as f64 * fraction).round() as usize).min(height.min(width));
    let (top, left) = ((height - side) / 2, (width - side) / 2);
    let mut m = vec![0u8; height * width];
    for y in top..top + side {
        m[y * width + left..y * width + left + side].fill(1);
    }
    m
}

/// Random square blocks of side `block` until at least `coverage` of the pixels are hidden
/// (context encoders' random-block masks cover about a quarter of the image).
pub fn random_block_mask<R: Rng>(
    height: usize,
    width: usize,
    block: usize,
    coverage: f64,
    rng: &mut R,
) -> Result<Mask> {
    if block == 0 || block > height || block > width || !(0.0..=1.0).contains(&coverage) {
        return Err(DataError::config(format!(
            "random block mask: block {block} and coverage {coverage} do not fit {height}x{width}"
        )));
    }
    let mut m = vec![0u8; height * width];
    let target = (coverage * (height * width) as f64).ceil() as usize;
    let mut hidden = 0;
    while hidden < target {
        let top = rng.random_range(0..=height - block);
        let left = rng.random_range(0..=width - block);
        for y in top..top + block {
            for v in &mut m[y * width + left..y * width + left + block] {
                hidden += (*v == 0) as usize;
                *v = 1;
            }
        }
    }
    Ok(m)
}

/// Replaces the masked pixels of `img` with `fill` (one value per channel, e.g. the dataset
/// mean as context encoders do).
pub fn apply_mask(img: &mut Image, mask: &[u8], fill: &[u8]) -> Result<()> {
    if mask.len() != img.height * img.width || fill.len() != img.channels {
        return Err(DataError::config(format!(
            "mask of {} and fill of {} do not fit a {}x{}x{} image",
            mask.len(),
            fill.len(),
            img.channels,
            img.height,
            img.width
        )));
    }
    for (px, &m) in img.data.chunks_exact_mut(img.channels).zip(mask) {
        if m != 0 {
            px.copy_from_slice(fill);
        }
    }
    Ok(())
}

/// D65 reference white (scikit-image `illuminants["D65"]["2"]`).
const WHITE: [f32; 3] = [0.95047, 1.0, 1.08883];
/// Linear sRGB → XYZ (scikit-image `xyz_from_rgb`).
const RGB_TO_XYZ: [[f32; 3]; 3] = [
    [0.412453, 0.357580, 0.180423],
    [0.212671, 0.715160, 0.072169],
    [0.019334, 0.119193, 0.950227],
];
/// XYZ → linear sRGB (the inverse matrix, scikit-image `rgb_from_xyz`).
const XYZ_TO_RGB: [[f32; 3]; 3] = [
    [3.240_481_3, -1.537_150_9, -0.498_536_5],
    [-0.969_254_9, 1.875_990_1, 0.041_555_9],
    [0.055_646_4, -0.204_041_3, 1.057_311],
];

fn srgb_to_linear(c: f32) -> f32 {
    if c > 0.04045 {
        ((c + 0.055) / 1.055).powf(2.4)
    } else {
        c / 12.92
    }
}

fn linear_to_srgb(c: f32) -> f32 {
    if c > 0.003_130_8 {
        1.055 * c.powf(1.0 / 2.4) - 0.055
    } else {
        12.92 * c
    }
}

/// sRGB in `[0, 1]` → CIE Lab (L in `[0, 100]`, a and b roughly `[-128, 127]`).
pub fn rgb_to_lab_pixel(rgb: [f32; 3]) -> [f32; 3] {
    let lin = rgb.map(srgb_to_linear);
    let mut xyz = [0f32; 3];
    for (i, row) in RGB_TO_XYZ.iter().enumerate() {
        xyz[i] = (row[0] * lin[0] + row[1] * lin[1] + row[2] * lin[2]) / WHITE[i];
    }
    let f = |t: f32| if t > 0.008856 { t.cbrt() } else { 7.787 * t + 16.0 / 116.0 };
    let (fx, fy, fz) = (f(xyz[0]), f(xyz[1]), f(xyz[2]));
    let l = if xyz[1] > 0.008856 { 116.0 * fy - 16.0 } else { 903.3 * xyz[1] };
    [l, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// CIE Lab → sRGB in `[0, 1]` (clipped).
pub fn lab_to_rgb_pixel(lab: [f32; 3]) -> [f32; 3] {
    let fy = (lab[0] + 16.0) / 116.0;
    let fx = fy + lab[1] / 500.0;
    let fz = (fy - lab[2] / 200.0).max(0.0);
    let finv = |t: f32| if t > 0.206_893_03 { t * t * t } else { (t - 16.0 / 116.0) / 7.787 };
    let xyz = [finv(fx) * WHITE[0], finv(fy) * WHITE[1], finv(fz) * WHITE[2]];
    let mut rgb = [0f32; 3];
    for (i, row) in XYZ_TO_RGB.iter().enumerate() {
        let lin = row[0] * xyz[0] + row[1] * xyz[1] + row[2] * xyz[2];
        rgb[i] = linear_to_srgb(lin.max(0.0)).clamp(0.0, 1.0);
    }
    rgb
}

/// A uint8 RGB HWC image → Lab floats, 3 per pixel (HWC).
pub fn rgb_to_lab(rgb: &[u8]) -> Vec<f32> {
    rgb.chunks_exact(3)
        .flat_map(|p| {
            rgb_to_lab_pixel([p[0] as f32 / 255.0, p[1] as f32 / 255.0, p[2] as f32 / 255.0])
        })
        .collect()
}

/// Lab floats (HWC) → uint8 RGB HWC (rounded, clipped).
pub fn lab_to_rgb(lab: &[f32]) -> Vec<u8> {
    lab.chunks_exact(3)
        .flat_map(|p| lab_to_rgb_pixel([p[0], p[1], p[2]]).map(|v| (v * 255.0).round() as u8))
        .collect()
}
