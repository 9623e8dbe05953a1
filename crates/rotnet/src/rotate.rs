//! Rotations of `(B, C, H, W)` image batches, computed on the batch's device.
//!
//! Right angles are exact index permutations: `rot90` over the spatial dims, counterclockwise
//! like `np.rot90` in the official `rotate_img` (gidariss/FeatureLearningRotNet,
//! `dataloader.py`: 90° is `flipud(transpose(img))`, 270° is `transpose(flipud(img))`).
//!
//! Other angles (the 8-rotation set's odd multiples of 45°) are bilinear: `affine_grid` and
//! `grid_sample` with `align_corners = false`, rotating about the image centre in the same
//! (counterclockwise) sense. The paper does not say how the corners that come from outside
//! the source image are filled; [`CornerFill`] makes it a choice. The default,
//! [`CornerFill::Zeros`], writes 0 into the *normalised* image, i.e. the dataset's mean colour,
//! so the corners carry no image content (they do tell a 45° from a 90° multiple, which is
//! part of what the 8-way task asks anyway). [`CornerFill::Reflection`] mirrors the image
//! into the corners instead.
use crate::RotNetError;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How a non-right-angle rotation fills the corners that fall outside the source image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CornerFill {
    /// Zero in the normalised image (the dataset mean colour). Default.
    #[default]
    Zeros,
    /// Mirror the image at its border (`grid_sample` padding mode `reflection`).
    Reflection,
}

impl CornerFill {
    /// The `padding_mode` code of `grid_sampler_2d` (0 zeros, 1 border, 2 reflection).
    fn padding_mode(self) -> i64 {
        match self {
            CornerFill::Zeros => 0,
            CornerFill::Reflection => 2,
        }
    }
}

fn check_batch(x: &Tensor) -> Result<(i64, i64, i64, i64), RotNetError> {
    match x.size()[..] {
        [b, c, h, w] => Ok((b, c, h, w)),
        _ => Err(RotNetError::Shape { shape: x.size() }),
    }
}

/// Rotates every image of a batch counterclockwise by `degrees` (`0..360`).
///
/// Multiples of 90° are exact (`rot90`); other angles are bilinear with corners filled as
/// `fill` says. Angles other than 0° and 180° need square images.
///
/// # Shapes
/// `x`: `(B, C, H, W)` any float kind, any device; returns `(B, C, H, W)` on the same device.
pub fn rotate(x: &Tensor, degrees: u32, fill: CornerFill) -> Result<Tensor, RotNetError> {
    let (b, c, h, w) = check_batch(x)?;
    if degrees >= 360 {
        return Err(RotNetError::Angle { degrees });
    }
    if degrees % 180 != 0 && h != w {
        return Err(RotNetError::NonSquare { degrees, height: h, width: w });
    }
    if degrees % 90 == 0 {
        let k = i64::from(degrees / 90);
        return Ok(if k == 0 { x.shallow_clone() } else { x.f_rot90(k, [2, 3])? });
    }
    // Output pixel (x, y) in normalised coordinates (x right, y down) samples the input at
    // theta · (x, y, 1); this theta is the counterclockwise rotation that rot90 also applies.
    let rad = f64::from(degrees).to_radians();
    let (s, co) = rad.sin_cos();
    let kind = match x.kind() {
        Kind::Double => Kind::Double,
        _ => Kind::Float,
    };
    let theta = selfsup_core::host::upload(
        &Tensor::from_slice(&[co, -s, 0.0, s, co, 0.0]).to_kind(kind),
        x.device(),
    )
    .view([1, 2, 3])
    .expand([b, 2, 3], false);
    let grid = Tensor::f_affine_grid_generator(&theta, [b, c, h, w], false)?;
    let src = if x.kind() == kind { x.shallow_clone() } else { x.to_kind(kind) };
    let out = src.f_grid_sampler_2d(&grid, 0, fill.padding_mode(), false)?;
    Ok(if x.kind() == kind { out } else { out.to_kind(x.kind()) })
}

/// Builds RotNet's training input: every image of the batch in every rotation of `angles`,
/// image-major as the official collate function (`view(B * R, C, H, W)` of a `(B, R, ..)`
/// stack): input `i * R + r` is image `i` rotated by `angles[r]`, and its label is `r`.
///
/// # Shapes
/// `x`: `(B, C, H, W)`; returns `(B·R, C, H, W)` inputs and `(B·R,)` i64 labels, both on
/// `x`'s device.
pub fn rotation_batch(
    x: &Tensor,
    angles: &[u32],
    fill: CornerFill,
) -> Result<(Tensor, Tensor), RotNetError> {
    let (b, c, h, w) = check_batch(x)?;
    if angles.is_empty() {
        return Err(RotNetError::Config("the rotation set is empty".into()));
    }
    let rotated = angles.iter().map(|&a| rotate(x, a, fill)).collect::<Result<Vec<_>, _>>()?;
    let r = angles.len() as i64;
    let inputs = Tensor::f_stack(&rotated, 1)?.f_reshape([b * r, c, h, w])?;
    let labels = Tensor::f_arange(r, (Kind::Int64, x.device()))?.f_repeat([b])?;
    Ok((inputs, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn randn(shape: &[i64]) -> Tensor {
        tch::manual_seed(7);
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn rot90_four_times_is_identity() {
        let x = randn(&[2, 3, 8, 8]);
        let mut y = x.shallow_clone();
        for _ in 0..4 {
            y = rotate(&y, 90, CornerFill::Zeros).unwrap();
        }
        assert!(y.equal(&x));
        let y =
            rotate(&rotate(&x, 90, CornerFill::Zeros).unwrap(), 270, CornerFill::Zeros).unwrap();
        assert!(y.equal(&x));
        assert!(!rotate(&x, 90, CornerFill::Zeros).unwrap().equal(&x));
    }

    #[test]
    fn right_angles_match_numpy_rot90_of_the_official_code() {
        // 3x3 image 0..9, row-major; np.rot90 (counterclockwise) gives [[2,5,8],[1,4,7],[0,3,6]].
        let x = Tensor::arange(9, (Kind::Float, Device::Cpu)).view([1, 1, 3, 3]);
        let r90 = rotate(&x, 90, CornerFill::Zeros).unwrap();
        let want = Tensor::from_slice(&[2f32, 5., 8., 1., 4., 7., 0., 3., 6.]).view([1, 1, 3, 3]);
        assert!(r90.equal(&want), "{r90}");
        let r180 = rotate(&x, 180, CornerFill::Zeros).unwrap();
        let want = Tensor::from_slice(&[8f32, 7., 6., 5., 4., 3., 2., 1., 0.]).view([1, 1, 3, 3]);
        assert!(r180.equal(&want));
        let r270 = rotate(&x, 270, CornerFill::Zeros).unwrap();
        let want = Tensor::from_slice(&[6f32, 3., 0., 7., 4., 1., 8., 5., 2.]).view([1, 1, 3, 3]);
        assert!(r270.equal(&want));
    }

    #[test]
    fn bilinear_path_agrees_with_rot90_in_direction() {
        // Rotating by 45° twice lands on 90° up to interpolation: same sense as rot90.
        let n = 33;
        let yy = Tensor::arange(n, (Kind::Float, Device::Cpu)).view([1, 1, n, 1]);
        let xx = Tensor::arange(n, (Kind::Float, Device::Cpu)).view([1, 1, 1, n]);
        let c = (n - 1) as f64 / 2.0;
        // A smooth off-centre blob: its image is determined by where the blob sits.
        let blob = (-(((&xx - (c + 6.0)).square() + (&yy - c).square()) / 8.0)).exp();
        let twice =
            rotate(&rotate(&blob, 45, CornerFill::Zeros).unwrap(), 45, CornerFill::Zeros).unwrap();
        let exact = rotate(&blob, 90, CornerFill::Zeros).unwrap();
        let wrong = rotate(&blob, 270, CornerFill::Zeros).unwrap();
        assert!(max_abs(&twice, &exact) < 0.1, "{}", max_abs(&twice, &exact));
        assert!(max_abs(&twice, &wrong) > 0.8);
    }

    #[test]
    fn rotating_a_centred_disc_by_45_degrees_leaves_it_unchanged() {
        let n = 32;
        let yy = Tensor::arange(n, (Kind::Float, Device::Cpu)).view([1, 1, n, 1]);
        let xx = Tensor::arange(n, (Kind::Float, Device::Cpu)).view([1, 1, 1, n]);
        let c = (n - 1) as f64 / 2.0;
        let r2 = (&xx - c).square() + (&yy - c).square();
        // Smooth radial pattern: interpolation error stays small everywhere.
        let smooth = (-(&r2 / 40.0)).exp().expand([2, 3, n, n], false).contiguous();
        for deg in [45, 135, 225, 315] {
            let rot = rotate(&smooth, deg, CornerFill::Zeros).unwrap();
            assert!(max_abs(&rot, &smooth) < 0.02, "{deg}: {}", max_abs(&rot, &smooth));
        }
        // Hard-edged disc (radius 10): only the pixels on its edge change; the ring r in
        // [8, 12] holds about 24% of the image, so the mean change stays a few percent.
        let disc = r2.le(100.0).to_kind(Kind::Float);
        let rot = rotate(&disc, 45, CornerFill::Zeros).unwrap();
        let mean = (&rot - &disc).abs().mean(Kind::Float).double_value(&[]);
        assert!(mean < 0.04, "mean abs diff {mean}");
        // Outside the ring r in [8, 12] the disc is unchanged.
        let far = r2.lt(64.0).logical_or(&r2.gt(144.0));
        let diff = (&rot - &disc).abs().masked_select(&far).max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn corner_fill_zero_or_reflection() {
        let x = Tensor::ones([1, 1, 16, 16], (Kind::Float, Device::Cpu));
        let z = rotate(&x, 45, CornerFill::Zeros).unwrap();
        let r = rotate(&x, 45, CornerFill::Reflection).unwrap();
        assert_eq!(z.double_value(&[0, 0, 0, 0]), 0.0);
        assert_eq!(z.double_value(&[0, 0, 8, 8]), 1.0);
        assert!((r.double_value(&[0, 0, 0, 0]) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn marked_corner_moves_where_the_label_says() {
        // Each image has one bright pixel in its top-left corner.
        let (b, n) = (3, 8);
        let x = Tensor::zeros([b, 3, n, n], (Kind::Float, Device::Cpu));
        let _ = x.narrow(2, 0, 1).narrow(3, 0, 1).fill_(1.0);
        let angles = [0, 90, 180, 270];
        let (inputs, labels) = rotation_batch(&x, &angles, CornerFill::Zeros).unwrap();
        assert_eq!(inputs.size(), [b * 4, 3, n, n]);
        // Where the mark lands for each angle (counterclockwise rotation).
        let corner = |deg: u32| match deg {
            0 => (0, 0),
            90 => (n - 1, 0),
            180 => (n - 1, n - 1),
            _ => (0, n - 1),
        };
        for k in 0..b * 4 {
            let label = labels.int64_value(&[k]);
            assert_eq!(label, k % 4);
            let (row, col) = corner(angles[label as usize]);
            let img = inputs.get(k).get(0);
            assert_eq!(img.double_value(&[row, col]), 1.0, "input {k}");
            assert_eq!(img.sum(Kind::Float).double_value(&[]), 1.0);
        }
    }

    #[test]
    fn batch_is_image_major_with_one_label_per_rotation() {
        let x = randn(&[3, 2, 6, 6]);
        let angles = [0, 45, 90, 135, 180, 225, 270, 315];
        let (inputs, labels) = rotation_batch(&x, &angles, CornerFill::Zeros).unwrap();
        assert_eq!(inputs.size(), [24, 2, 6, 6]);
        let want: Vec<i64> = (0..3).flat_map(|_| 0..8).collect();
        assert_eq!(Vec::<i64>::try_from(&labels).unwrap(), want);
        for i in 0..3 {
            for (r, &a) in angles.iter().enumerate() {
                let one = rotate(&x.narrow(0, i, 1), a, CornerFill::Zeros).unwrap();
                let got = inputs.narrow(0, i * 8 + r as i64, 1);
                assert!(max_abs(&got, &one) < 1e-6, "image {i} rotation {a}");
            }
        }
    }

    #[test]
    fn rejects_bad_shapes_and_angles() {
        let x = Tensor::zeros([2, 3, 8, 6], (Kind::Float, Device::Cpu));
        assert!(rotate(&x, 180, CornerFill::Zeros).is_ok());
        let err = rotate(&x, 90, CornerFill::Zeros).unwrap_err().to_string();
        assert_eq!(err, "rotnet: rotation by 90 degrees needs square images, got 8x6");
        let err = rotate(&x.get(0), 0, CornerFill::Zeros).unwrap_err().to_string();
        assert!(err.contains("[3, 8, 6]"), "{err}");
        assert!(rotate(&x, 360, CornerFill::Zeros).is_err());
    }
}
