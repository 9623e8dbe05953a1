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
    // Every random choice first, on the host and in the order of the official per-image loop
    // (tile positions, each tile's colour shift in cell order, the permutation), then the
    // tensor work once for the whole batch: a per-tile loop costs a dozen small ops a tile
    // (576 tiles at batch 64), a kernel launch each on a GPU.
    let n = b as usize * TILES;
    let mut labels = Vec::with_capacity(b as usize);
    let mut corners = Vec::with_capacity(b as usize);
    let mut cell_shifts = Vec::with_capacity(if cfg.rgb_jitter > 0 { n * c as usize } else { 0 });
    for _ in 0..b {
        // The grid is centred in the 3×3 cells (the crop may be a few pixels wider).
        let at_vec = grid
            .positions(3 * cell, 3 * cell, rng)
            .map_err(|e| JigsawError::Batch(e.to_string()))?;
        let mut at = [(0usize, 0usize); TILES];
        at.copy_from_slice(&at_vec);
        if cfg.rgb_jitter > 0 {
            let j = i32::from(cfg.rgb_jitter);
            for _ in 0..TILES as i64 * c {
                cell_shifts.push(rng.random_range(-j..j) as f32 / 255.0);
            }
        }
        labels.push(rng.random_range(0..perms.len()) as i64);
        corners.push(at);
    }
    // Slot `t` of puzzle `i` is the tile of cell `perms[label_i][t]`: its corner and its
    // colour shift.
    let mut at = Vec::with_capacity(n);
    let mut shifts = Vec::new();
    for (i, (cells, &k)) in corners.iter().zip(&labels).enumerate() {
        for &t in &perms[k as usize] {
            let (y, x) = cells[t as usize];
            at.push((i, y, x));
            if cfg.rgb_jitter > 0 {
                let from = (i * TILES + t as usize) * c as usize;
                shifts.extend_from_slice(&cell_shifts[from..from + c as usize]);
            }
        }
    }
    let device = images.device();
    let mut tiles = patches::gather(images, &at, cfg.tile)?;
    if let Some(to) = cfg.tile_resize.filter(|&s| s != cfg.tile) {
        let to = to as i64;
        tiles = tiles.f_upsample_bilinear2d([to, to], false, None, None)?;
    }
    if cfg.rgb_jitter > 0 {
        let shift = Tensor::from_slice(&shifts).to_device(device).view([n as i64, c, 1, 1]);
        tiles = (tiles + shift).clamp(0.0, 1.0);
    }
    if cfg.normalize_tiles {
        tiles = patches::normalize_each(&tiles);
    }
    Ok(Puzzles {
        tiles: tiles.f_contiguous()?,
        labels: Tensor::from_slice(&labels).to_device(device),
        corners,
    })
}
