//! Puzzles from a batch of images, on tensors (CPU or CUDA), as the official loader makes them
//! (`JigsawImageLoader.__getitem__`): the crop is cut into 3×3 cells, one tile is taken from
//! each cell (at a random position when `random_position`), resized, colour-jittered and
//! normalised on its own, and the nine tiles are put in the slots of one permutation of the
//! set: slot `t` holds tile `perm[t]`. The label is the permutation's index.
use crate::config::JigsawConfig;
use crate::permutations::{Perm, TILES};
use crate::JigsawError;
use rand::Rng;
use tch::{Kind, Tensor};

/// A batch of puzzles.
#[derive(Debug)]
pub struct Puzzles {
    /// Tiles in slot order, image-major.
    ///
    /// # Shapes
    /// `(B·9, C, T, T)` with `T` the tile side after resizing.
    pub tiles: Tensor,
    /// The permutation index of each puzzle, `(B,)` i64.
    pub labels: Tensor,
    /// The top-left corner `(y, x)` in the crop of every tile, in cell order (before
    /// shuffling), `B × 9`.
    pub corners: Vec<[(usize, usize); TILES]>,
}

/// The puzzles of `images` (`(B, C, S, S)`, values in `[0, 1]`), random choices from `rng`.
pub fn make_puzzles<R: Rng>(
    images: &Tensor,
    perms: &[Perm],
    cfg: &JigsawConfig,
    rng: &mut R,
) -> Result<Puzzles, JigsawError> {
    let size = images.size();
    let &[b, c, h, w] = size.as_slice() else {
        return Err(JigsawError::Batch(format!("expected a (B, C, H, W) batch, got {size:?}")));
    };
    let cell = (h / 3) as usize;
    if h != w || cell < cfg.tile {
        return Err(JigsawError::Batch(format!(
            "images of {h}x{w} do not hold 3x3 cells of at least tile = {} pixels (the view \
             gives crop = {})",
            cfg.tile, cfg.crop
        )));
    }
    let slack = cell - cfg.tile;
    let t = cfg.tile as i64;
    let mut tiles = Vec::with_capacity(b as usize * TILES);
    let mut labels = Vec::with_capacity(b as usize);
    let mut corners = Vec::with_capacity(b as usize);
    for i in 0..b {
        let img = images.get(i);
        let mut cells: Vec<Tensor> = Vec::with_capacity(TILES);
        let mut at = [(0usize, 0usize); TILES];
        for (n, corner) in at.iter_mut().enumerate() {
            let (oy, ox) = if cfg.random_position && slack > 0 {
                (rng.random_range(0..=slack), rng.random_range(0..=slack))
            } else {
                (slack / 2, slack / 2)
            };
            let (y, x) = ((n / 3) * cell + oy, (n % 3) * cell + ox);
            *corner = (y, x);
            let mut tile = img.narrow(1, y as i64, t).narrow(2, x as i64, t);
            if let Some(side) = cfg.tile_resize.filter(|&s| s != cfg.tile) {
                let side = side as i64;
                tile = tile
                    .unsqueeze(0)
                    .f_upsample_bilinear2d([side, side], false, None, None)?
                    .squeeze_dim(0);
            }
            if cfg.rgb_jitter > 0 {
                let j = i32::from(cfg.rgb_jitter);
                let shift: Vec<f32> =
                    (0..c).map(|_| rng.random_range(-j..j) as f32 / 255.0).collect();
                let shift = Tensor::from_slice(&shift).to_device(tile.device()).view([c, 1, 1]);
                tile = (tile + shift).clamp(0.0, 1.0);
            }
            if cfg.normalize_tiles {
                let mean = tile.mean_dim([1i64, 2].as_slice(), true, Kind::Float);
                let std = tile.std_dim([1i64, 2].as_slice(), true, true);
                // A flat channel keeps its values (the official code sets std 0 to 1).
                let std = std.where_self(&std.ne(0.0), &std.ones_like());
                tile = (tile - mean) / std;
            }
            cells.push(tile);
        }
        let k = rng.random_range(0..perms.len());
        for &tile in &perms[k] {
            tiles.push(cells[tile as usize].shallow_clone());
        }
        labels.push(k as i64);
        corners.push(at);
    }
    Ok(Puzzles {
        tiles: Tensor::f_stack(&tiles, 0)?,
        labels: Tensor::from_slice(&labels).to_device(images.device()),
        corners,
    })
}
