//! sRGB ↔ CIE L\*a\*b\* under the D65 white, on batches of images as tensor ops (so the
//! conversion runs where the batch is, GPU included), as colorization and split-brain
//! (Zhang et al. 2016, 2017) use it: the network sees L, or ab, and predicts the other.
//!
//! Exact definitions, in f64 constants: the sRGB transfer curve of IEC 61966-2-1 (linear below
//! 0.04045, else `((c + 0.055) / 1.055)^2.4`), the linear-sRGB → XYZ matrix of the sRGB primaries
//! and D65 (the matrix whose rows sum to the white (0.95047, 1, 1.08883)), its exact inverse, and
//! CIE's `ε = 216/24389`, `κ = 24389/27` for the cube root's linear toe. Pure red is
//! (53.24, 80.09, 67.20), white (100, 0, 0).
//!
//! The 3 × 3 colour matrices are applied as per-channel weighted sums (element-wise ops), not a
//! matmul, so autocast never lowers their precision.
//!
//! On the CPU a conversion runs on pieces of at most 32,768 values (`by_pieces`), so its bits
//! do not depend on the thread count. libtorch splits an element-wise op on a larger tensor into
//! one range a thread and computes the last values of each range, short of a whole vector, with
//! its scalar `pow` rather than its vectorized one; the two differ in the last bit for some
//! inputs. With 3 threads the ranges end off the vector boundaries that 1, 2 and 4 threads land
//! on, and a deterministic colorization run (cpu profile, batch 128, 32 pixels) trained other
//! weights from its first step at 3 threads than at 1 or 2 (2 cores of a Xeon with AMX, family
//! 6, model 167, 2026-12-07).
use crate::{LabError, Result};
use tch::{Device, Kind, Tensor};

/// The most values libtorch runs an element-wise op on in one thread (`at::internal::GRAIN_SIZE`).
const GRAIN: i64 = 32_768;

/// `f` applied to pieces of `x` (`(N, C, H, W)`) of at most [`GRAIN`] values, whole images or,
/// for an image larger than that, bands of rows, and the results concatenated: on the CPU each
/// piece runs on one thread, its values split between the vector loop and the scalar tail by the
/// piece alone. Elsewhere (and for a small tensor) `f(x)`. `f` must act on each pixel alone.
fn by_pieces(x: &Tensor, f: &dyn Fn(&Tensor) -> Tensor) -> Tensor {
    let s = x.size();
    let numel = x.numel() as i64;
    if x.device() != Device::Cpu || numel <= GRAIN || s.len() != 4 {
        return f(x);
    }
    let per_image = numel / s[0].max(1);
    let (dim, step) = if s[0] > 1 && per_image <= GRAIN {
        (0, GRAIN / per_image)
    } else if s[0] > 1 {
        (0, 1)
    } else {
        (2, (GRAIN / (per_image / s[2].max(1))).max(1))
    };
    let parts: Vec<Tensor> = x.split(step, dim).iter().map(|p| by_pieces(p, f)).collect();
    Tensor::cat(&parts, dim)
}

/// Linear sRGB → XYZ for the sRGB primaries under D65 (rows sum to [`WHITE`]).
pub const RGB_TO_XYZ: [[f64; 3]; 3] = [
    [0.412_456_4, 0.357_576_1, 0.180_437_5],
    [0.212_672_9, 0.715_152_2, 0.072_175_0],
    [0.019_333_9, 0.119_192_0, 0.950_304_1],
];

/// The D65 white point in XYZ (Y = 1).
pub const WHITE: [f64; 3] = [0.95047, 1.0, 1.08883];

/// CIE ε = (6/29)³: below it the cube root is replaced by its linear toe.
pub const EPSILON: f64 = 216.0 / 24389.0;
/// CIE κ = (29/3)³, the slope of the toe in L.
pub const KAPPA: f64 = 24389.0 / 27.0;

/// The inverse of [`RGB_TO_XYZ`] (by cofactors, in f64).
pub fn xyz_to_rgb_matrix() -> [[f64; 3]; 3] {
    let m = RGB_TO_XYZ;
    let c =
        |r0: usize, r1: usize, c0: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    let cof = [
        [c(1, 2, 1, 2), -c(1, 2, 0, 2), c(1, 2, 0, 1)],
        [-c(0, 2, 1, 2), c(0, 2, 0, 2), -c(0, 2, 0, 1)],
        [c(0, 1, 1, 2), -c(0, 1, 0, 2), c(0, 1, 0, 1)],
    ];
    let det = m[0][0] * cof[0][0] + m[0][1] * cof[0][1] + m[0][2] * cof[0][2];
    // The inverse is the transposed cofactor matrix over the determinant.
    let mut inv = [[0.0; 3]; 3];
    for (i, row) in inv.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = cof[j][i] / det;
        }
    }
    inv
}

fn check_three(x: &Tensor, what: &str) -> Result<()> {
    let s = x.size();
    if s.len() != 4 || s[1] != 3 {
        return Err(LabError::Shape(format!("{what} has shape {s:?}, expected (N, 3, H, W)")));
    }
    Ok(())
}

/// `m · x` over the channel axis, as weighted sums of the channels; `x` is `(N, 3, H, W)`.
fn mix(m: &[[f64; 3]; 3], x: &Tensor) -> Tensor {
    let ch: Vec<Tensor> = (0..3).map(|c| x.narrow(1, c, 1)).collect();
    let rows: Vec<Tensor> =
        m.iter().map(|r| &ch[0] * r[0] + &ch[1] * r[1] + &ch[2] * r[2]).collect();
    Tensor::cat(&rows, 1)
}

fn srgb_to_linear(c: &Tensor) -> Tensor {
    let curve = ((c.clamp_min(0.04045) + 0.055) / 1.055).pow_tensor_scalar(2.4);
    curve.where_self(&c.gt(0.04045), &(c / 12.92))
}

fn linear_to_srgb(c: &Tensor) -> Tensor {
    let curve = c.clamp_min(0.003_130_8).pow_tensor_scalar(1.0 / 2.4) * 1.055 - 0.055;
    curve.where_self(&c.gt(0.003_130_8), &(c * 12.92))
}

/// CIE's `f`: the cube root above ε, the linear toe `(κ t + 16) / 116` below.
fn lab_f(t: &Tensor) -> Tensor {
    let root = t.clamp_min(EPSILON).pow_tensor_scalar(1.0 / 3.0);
    root.where_self(&t.gt(EPSILON), &((t * KAPPA + 16.0) / 116.0))
}

/// The inverse of [`lab_f`].
fn lab_f_inv(f: &Tensor) -> Tensor {
    let cube = f.pow_tensor_scalar(3.0);
    cube.where_self(&cube.gt(EPSILON), &((f * 116.0 - 16.0) / KAPPA))
}

/// sRGB in `[0, 1]` → CIE Lab: L in `[0, 100]`, a in about `[-86, 98]`, b in about
/// `[-108, 95]` for in-gamut colours.
///
/// # Shapes
/// `rgb`: `(N, 3, H, W)` float; returns `(N, 3, H, W)` with channels L, a, b, in `rgb`'s kind
/// (computed in at least f32).
pub fn rgb_to_lab(rgb: &Tensor) -> Result<Tensor> {
    check_three(rgb, "rgb")?;
    let kind = rgb.kind();
    let x = rgb.to_kind(if kind == Kind::Double { Kind::Double } else { Kind::Float });
    let lab = by_pieces(&x, &|x| {
        let xyz = mix(&RGB_TO_XYZ, &srgb_to_linear(x));
        let f: Vec<Tensor> =
            (0..3).map(|c| lab_f(&(xyz.narrow(1, c, 1) / WHITE[c as usize]))).collect();
        let l = &f[1] * 116.0 - 16.0;
        let a = (&f[0] - &f[1]) * 500.0;
        let b = (&f[1] - &f[2]) * 200.0;
        Tensor::cat(&[l, a, b], 1)
    });
    Ok(lab.to_kind(kind))
}

/// CIE Lab → sRGB, not clipped: out-of-gamut Lab values give components outside `[0, 1]`
/// (clamp for pictures).
///
/// # Shapes
/// `lab`: `(N, 3, H, W)` float (L, a, b); returns `(N, 3, H, W)` in `lab`'s kind.
pub fn lab_to_rgb(lab: &Tensor) -> Result<Tensor> {
    check_three(lab, "lab")?;
    let kind = lab.kind();
    let x = lab.to_kind(if kind == Kind::Double { Kind::Double } else { Kind::Float });
    let rgb = by_pieces(&x, &|x| {
        let fy = (x.narrow(1, 0, 1) + 16.0) / 116.0;
        let fx = &fy + x.narrow(1, 1, 1) / 500.0;
        let fz = &fy - x.narrow(1, 2, 1) / 200.0;
        let xyz = Tensor::cat(
            &[lab_f_inv(&fx) * WHITE[0], lab_f_inv(&fy) * WHITE[1], lab_f_inv(&fz) * WHITE[2]],
            1,
        );
        linear_to_srgb(&mix(&xyz_to_rgb_matrix(), &xyz))
    });
    Ok(rgb.to_kind(kind))
}

/// The lightness L alone (what the colorization network sees), from sRGB in `[0, 1]`; a
/// one-channel input is taken as gray (R = G = B).
///
/// # Shapes
/// `rgb`: `(N, 3, H, W)` or `(N, 1, H, W)`; returns `(N, 1, H, W)` in `[0, 100]`.
pub fn lightness(rgb: &Tensor) -> Result<Tensor> {
    let s = rgb.size();
    if s.len() != 4 || (s[1] != 3 && s[1] != 1) {
        return Err(LabError::Shape(format!(
            "images have shape {s:?}, expected (N, 3, H, W) or (N, 1, H, W)"
        )));
    }
    let kind = rgb.kind();
    let x = rgb.to_kind(if kind == Kind::Double { Kind::Double } else { Kind::Float });
    let l = by_pieces(&x, &|x| {
        let lin = srgb_to_linear(x);
        let y = if s[1] == 3 {
            let r = &RGB_TO_XYZ[1];
            lin.narrow(1, 0, 1) * r[0] + lin.narrow(1, 1, 1) * r[1] + lin.narrow(1, 2, 1) * r[2]
        } else {
            lin * RGB_TO_XYZ[1].iter().sum::<f64>()
        };
        lab_f(&y) * 116.0 - 16.0
    });
    Ok(l.to_kind(kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn pixel(rgb: [f64; 3]) -> Tensor {
        Tensor::from_slice(&rgb).view([1, 3, 1, 1])
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    fn close(got: &[f64], want: &[f64], tol: f64) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < tol, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn known_colours() {
        close(&values(&rgb_to_lab(&pixel([1.0, 0.0, 0.0])).unwrap()), &[53.24, 80.09, 67.20], 0.01);
        close(&values(&rgb_to_lab(&pixel([1.0, 1.0, 1.0])).unwrap()), &[100.0, 0.0, 0.0], 1e-3);
        close(&values(&rgb_to_lab(&pixel([0.0, 0.0, 0.0])).unwrap()), &[0.0, 0.0, 0.0], 1e-9);
        close(
            &values(&rgb_to_lab(&pixel([0.0, 0.0, 1.0])).unwrap()),
            &[32.30, 79.19, -107.86],
            0.01,
        );
        close(
            &values(&rgb_to_lab(&pixel([0.0, 1.0, 0.0])).unwrap()),
            &[87.74, -86.18, 83.18],
            0.01,
        );
        // Gray: a = b = 0 and L from the lightness helper agrees, for one or three channels.
        let gray = pixel([0.5, 0.5, 0.5]);
        let lab = values(&rgb_to_lab(&gray).unwrap());
        close(&lab[1..], &[0.0, 0.0], 1e-3);
        close(&values(&lightness(&gray).unwrap()), &lab[..1], 1e-9);
        close(
            &values(&lightness(&Tensor::from_slice(&[0.5f64]).view([1, 1, 1, 1])).unwrap()),
            &lab[..1],
            1e-3,
        );
        assert!(rgb_to_lab(&Tensor::zeros([1, 2, 1, 1], (Kind::Float, Device::Cpu)))
            .unwrap_err()
            .to_string()
            .contains("expected (N, 3, H, W)"));
    }

    #[test]
    fn round_trip_over_random_colours() {
        tch::manual_seed(0);
        let rgb = Tensor::rand([4, 3, 16, 16], (Kind::Float, Device::Cpu));
        let back = lab_to_rgb(&rgb_to_lab(&rgb).unwrap()).unwrap();
        let err = (&back - &rgb).abs().max().double_value(&[]);
        assert!(err < 1e-3, "round-trip error {err}");
        // Dark colours (the linear toes) too, in f64 much tighter.
        let dark = Tensor::rand([2, 3, 8, 8], (Kind::Double, Device::Cpu)) * 0.02;
        let back = lab_to_rgb(&rgb_to_lab(&dark).unwrap()).unwrap();
        assert!((&back - &dark).abs().max().double_value(&[]) < 1e-9);
        assert_eq!(back.kind(), Kind::Double);
    }

    #[test]
    fn inverse_matrix_is_exact() {
        let inv = xyz_to_rgb_matrix();
        for (i, row) in inv.iter().enumerate() {
            for j in 0..3 {
                let v: f64 = row.iter().zip(&RGB_TO_XYZ).map(|(r, m)| r * m[j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
    }
}
