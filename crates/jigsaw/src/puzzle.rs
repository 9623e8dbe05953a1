//! Puzzles from a batch of images, on tensors (CPU or CUDA), as the official loader makes them
//! (`JigsawImageLoader.__getitem__`): the crop is cut into 3×3 cells, one tile is taken from
//! each cell (at a random position when `random_position`), resized, colour-jittered and
//! normalised on its own, and the nine tiles are put in the slots of one permutation of the
//! set: slot `t` holds tile `perm[t]`. The label is the permutation's index.
use crate::config::JigsawConfig;
use crate::permutations::{Perm, TILES};
use crate::JigsawError;
use rand::Rng;
use selfsup_data::patches;
use selfsup_data::pretext::PatchGrid;
use tch::Tensor;

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
    // One tile per cell: a 3×3 grid of tiles with the rest of each cell as the gap, each tile
    // moved by up to half of it (so it stays inside its cell), or centred.
    let slack = cell - cfg.tile;
    let grid = PatchGrid {
        grid: 3,
        patch: cfg.tile,
        gap: slack,
        jitter: if cfg.random_position { slack / 2 } else { 0 },
    };
    let mut tiles = Vec::with_capacity(b as usize * TILES);
    let mut labels = Vec::with_capacity(b as usize);
    let mut corners = Vec::with_capacity(b as usize);
    for i in 0..b {
        let img = images.get(i);
        // The grid is centred in the 3×3 cells (the crop may be a few pixels wider).
        let at_vec = grid
            .positions(3 * cell, 3 * cell, rng)
            .map_err(|e| JigsawError::Batch(e.to_string()))?;
        let mut at = [(0usize, 0usize); TILES];
        at.copy_from_slice(&at_vec);
        let mut cells = Vec::with_capacity(TILES);
        for mut tile in patches::cut(&img, &at, cfg.tile) {
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
                tile = patches::normalize_each(&tile);
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
