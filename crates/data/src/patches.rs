//! Patch grids on image tensors, shared by the patch-based pretext methods (relative patch
//! position, Doersch et al. 2015; jigsaw puzzles, Noroozi & Favaro 2016): cutting patches at
//! the positions a [`PatchGrid`](crate::pretext::PatchGrid) draws (grid, gap, jitter), and
//! per-patch normalisation against the low-level shortcuts those papers guard against.
use tch::{Kind, Tensor};

/// The `side × side` patches of `images` at the corners `(image, y, x)` (image index, top-left
/// row and column), in the order given, gathered by one indexing op on the channels-last view
/// (a patch loop would cost a few ops a patch, a kernel launch each on a GPU).
///
/// # Shapes
/// `images`: `(B, C, H, W)`; returns `(N, C, side, side)`, contiguous, `N = corners.len()`.
/// Corners must fit (the grid's `positions` checks that the grid fits the image); one that
/// does not is an index error.
pub fn gather(
    images: &Tensor,
    corners: &[(usize, usize, usize)],
    side: usize,
) -> Result<Tensor, tch::TchError> {
    let device = images.device();
    let (n, s) = (corners.len() as i64, side as i64);
    let column = |f: fn(&(usize, usize, usize)) -> usize| {
        let v: Vec<i64> = corners.iter().map(|c| f(c) as i64).collect();
        Tensor::from_slice(&v).to_device(device).view([n, 1, 1])
    };
    let offsets = Tensor::f_arange(s, (Kind::Int64, device))?;
    let shape = [n, s, s];
    let ys = (column(|c| c.1) + offsets.view([1, s, 1])).expand(shape, false);
    let xs = (column(|c| c.2) + offsets.view([1, 1, s])).expand(shape, false);
    let which = column(|c| c.0).expand(shape, false);
    // `(N, side, side, C)` gathered, then `(N, C, side, side)`.
    images
        .f_permute([0, 2, 3, 1])?
        .f_index(&[Some(which), Some(ys), Some(xs)])?
        .f_permute([0, 3, 1, 2])?
        .f_contiguous()
}

/// Each patch normalised by its own per-channel mean and (unbiased) standard deviation, as the
/// official jigsaw loader does; a flat channel (standard deviation 0) is only centred.
///
/// # Shapes
/// `patches`: `(..., C, h, w)`; returns the same shape.
pub fn normalize_each(patches: &Tensor) -> Tensor {
    let dims = [-2i64, -1];
    let mean = patches.mean_dim(dims.as_slice(), true, Kind::Float);
    let std = patches.std_dim(dims.as_slice(), true, true);
    let std = std.where_self(&std.ne(0.0), &std.ones_like());
    (patches - mean) / std
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pretext::PatchGrid;
    use rand::SeedableRng;
    use tch::Device;

    #[test]
    fn patches_follow_the_grid_and_normalise_one_by_one() {
        // Channel 0 holds the row, channel 1 the column of each pixel.
        let s = 30i64;
        let rows =
            Tensor::arange(s, (Kind::Float, Device::Cpu)).view([1, s, 1]).expand([1, s, s], true);
        let cols =
            Tensor::arange(s, (Kind::Float, Device::Cpu)).view([1, 1, s]).expand([1, s, s], true);
        let img = Tensor::cat(&[rows, cols], 0);
        // Two images: the second one's coordinates offset by 100.
        let images = Tensor::stack(&[img.shallow_clone(), &img + 100.0], 0);
        let grid = PatchGrid { grid: 3, patch: 6, gap: 3, jitter: 2 };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let pos = grid.positions(30, 30, &mut rng).unwrap();
        let corners: Vec<(usize, usize, usize)> =
            pos.iter().enumerate().map(|(k, &(y, x))| (k % 2, y, x)).collect();
        let patches = gather(&images, &corners, 6).unwrap();
        assert_eq!(patches.size(), [9, 2, 6, 6]);
        for (k, &(i, y, x)) in corners.iter().enumerate() {
            let p = patches.get(k as i64);
            let off = 100 * i;
            assert_eq!(p.double_value(&[0, 0, 0]) as usize, y + off);
            assert_eq!(p.double_value(&[1, 0, 0]) as usize, x + off);
            // Every pixel, not just the corner: row `y + r`, column `x + c`.
            assert_eq!(p.double_value(&[0, 5, 3]) as usize, y + 5 + off);
            assert_eq!(p.double_value(&[1, 5, 3]) as usize, x + 3 + off);
        }
        let n = normalize_each(&patches);
        let mean = n.mean_dim([-2i64, -1].as_slice(), false, Kind::Float);
        let std = n.std_dim([-2i64, -1].as_slice(), true, false);
        assert!(mean.abs().max().double_value(&[]) < 1e-5);
        assert!((std - 1.0).abs().max().double_value(&[]) < 1e-4);
        // A flat patch is centred, not divided by zero.
        let flat = normalize_each(&Tensor::full([1, 3, 4, 4], 0.5, (Kind::Float, Device::Cpu)));
        assert_eq!(flat.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }
}
