//! Patch grids on image tensors, shared by the patch-based pretext methods (relative patch
//! position, Doersch et al. 2015; jigsaw puzzles, Noroozi & Favaro 2016): cutting patches at
//! the positions a [`PatchGrid`](crate::pretext::PatchGrid) draws (grid, gap, jitter), and
//! per-patch normalisation against the low-level shortcuts those papers guard against.
use tch::{Kind, Tensor};

/// The `side × side` patches of `image` at the top-left corners `positions`.
///
/// # Shapes
/// `image`: `(C, H, W)`; returns one `(C, side, side)` view per position. Positions must fit
/// (the grid's `positions` checks that the grid fits the image).
pub fn cut(image: &Tensor, positions: &[(usize, usize)], side: usize) -> Vec<Tensor> {
    let s = side as i64;
    positions.iter().map(|&(y, x)| image.narrow(1, y as i64, s).narrow(2, x as i64, s)).collect()
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
        let grid = PatchGrid { grid: 3, patch: 6, gap: 3, jitter: 2 };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let pos = grid.positions(30, 30, &mut rng).unwrap();
        let patches = cut(&img, &pos, 6);
        assert_eq!(patches.len(), 9);
        for (p, &(y, x)) in patches.iter().zip(&pos) {
            assert_eq!(p.size(), [2, 6, 6]);
            assert_eq!(p.double_value(&[0, 0, 0]) as usize, y);
            assert_eq!(p.double_value(&[1, 0, 0]) as usize, x);
        }
        let n = normalize_each(&Tensor::stack(&patches, 0));
        let mean = n.mean_dim([-2i64, -1].as_slice(), false, Kind::Float);
        let std = n.std_dim([-2i64, -1].as_slice(), true, false);
        assert!(mean.abs().max().double_value(&[]) < 1e-5);
        assert!((std - 1.0).abs().max().double_value(&[]) < 1e-4);
        // A flat patch is centred, not divided by zero.
        let flat = normalize_each(&Tensor::full([1, 3, 4, 4], 0.5, (Kind::Float, Device::Cpu)));
        assert_eq!(flat.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }
}
