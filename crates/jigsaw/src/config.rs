//! The jigsaw method config (`method_config` of a run), with the defaults of the official
//! PyTorch code (bbrattoli/JigsawPuzzlePytorch, `JigsawImageLoader.py`, `Network.py`) and the
//! paper (Noroozi & Favaro, ECCV 2016).
use serde::{Deserialize, Serialize};

/// How puzzles are made and how big the context-free network's head is.
///
/// The shortcut countermeasures are on by default and each can be switched off: the gap and
/// jitter between tiles (`tile` smaller than a cell, `random_position`), per-tile
/// normalisation (`normalize_tiles`), random grayscale (`grayscale_p`) and per-tile colour
/// jitter (`rgb_jitter`). `tile` equal to the cell side (`crop / 3`) removes gap and jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JigsawConfig {
    /// Size P of the permutation set, the number of classes. Default 1000 (the paper's; it
    /// also reports 100, and 64 in its figure).
    pub permutations: usize,
    /// Seed of the permutation set (Algorithm 1 starts from a random permutation). Default 0.
    pub permutation_seed: u64,
    /// What the greedy selection of the set maximises: `max_mean` (the paper's Algorithm 1,
    /// default) or `max_min`.
    pub permutation_selection: crate::permutations::Selection,
    /// Side of the square the puzzle is cut from: the image's shorter side is resized to it
    /// and the centre cropped. Default 255 (official: resize 256, centre crop 255).
    pub crop: usize,
    /// Side of each tile, cut from its cell (`crop / 3` pixels) at a random position, so
    /// neighbouring tiles have a gap and are jittered. Default 64 (official: a random 64-pixel
    /// crop of each 85-pixel cell).
    pub tile: usize,
    /// Resize each tile to this side; `null` keeps `tile`. Default 75 (official).
    pub tile_resize: Option<usize>,
    /// Place each tile at a random position in its cell (`true`, default) or at its centre
    /// (a fixed gap without jitter).
    pub random_position: bool,
    /// Probability of turning the whole image to grayscale. Default 0.3 (official).
    pub grayscale_p: f64,
    /// Per-tile, per-channel random shift of the pixel levels in `[-j, j)` of 255 (official
    /// `rgb_jittering`: `randint(-2, 2)`). Default 2; 0 turns it off.
    pub rgb_jitter: u8,
    /// Normalise each tile by its own per-channel mean and standard deviation. Default true.
    pub normalize_tiles: bool,
    /// Side of the grid the trunk's last feature map of a tile is max-pooled to before `fc6`
    /// (the official `Network.py` flattens AlexNet's 3×3 `pool5` of a 75-pixel tile, so `fc6`
    /// knows where in the tile a feature sits). Default 3; 1 takes the map's global maximum
    /// (or mean, see `pool5_op`).
    pub pool5: i64,
    /// How each `pool5` cell is reduced: `max` (default, the official max-pooling) or `mean`
    /// (adaptive average pooling; with `pool5 = 1` the global mean the versions before
    /// `pool5` used, which probes best at the small cpu profile).
    pub pool5_op: Pool5Op,
    /// Width of the per-tile fully connected layer `fc6` (shared across tiles). Default 1024.
    pub fc6: i64,
    /// Width of `fc7`, on the nine `fc6` outputs concatenated in slot order. Default 4096.
    pub fc7: i64,
    /// Dropout after `fc6` and `fc7` in training. Default 0.5.
    pub dropout: f64,
}

/// The reduction of each `pool5` cell of a tile's last feature map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool5Op {
    /// The cell's maximum (official `Network.py`: AlexNet's max-pooled `pool5`).
    Max,
    /// The cell's mean.
    Mean,
}

impl Default for JigsawConfig {
    fn default() -> Self {
        JigsawConfig {
            permutations: 1000,
            permutation_seed: 0,
            permutation_selection: crate::permutations::Selection::MaxMean,
            crop: 255,
            tile: 64,
            tile_resize: Some(75),
            random_position: true,
            grayscale_p: 0.3,
            rgb_jitter: 2,
            normalize_tiles: true,
            pool5: 3,
            pool5_op: Pool5Op::Max,
            fc6: 1024,
            fc7: 4096,
            dropout: 0.5,
        }
    }
}

impl JigsawConfig {
    /// Side of one of the 3×3 cells.
    pub fn cell(&self) -> usize {
        self.crop / 3
    }

    /// Side of the tiles the trunk sees.
    pub fn tile_side(&self) -> usize {
        self.tile_resize.unwrap_or(self.tile)
    }

    /// Checks the values, naming the first one at fault.
    pub fn check(&self) -> Result<(), String> {
        let max = 362_880;
        if !(2..=max).contains(&self.permutations) {
            return Err(format!("permutations = {} is not in 2..=9! ({max})", self.permutations));
        }
        if self.crop < 3 {
            return Err(format!("crop = {} leaves no 3x3 cells", self.crop));
        }
        if self.tile == 0 || self.tile > self.cell() {
            return Err(format!(
                "tile = {} must be in 1..={} (the cell side, crop / 3)",
                self.tile,
                self.cell()
            ));
        }
        if self.tile_resize == Some(0) {
            return Err("tile_resize = 0: give a side or null".into());
        }
        if !(0.0..=1.0).contains(&self.grayscale_p) {
            return Err(format!("grayscale_p = {} is not a probability", self.grayscale_p));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout = {} is not in [0, 1)", self.dropout));
        }
        if self.pool5 < 1 {
            return Err(format!("pool5 = {} must be at least 1", self.pool5));
        }
        if self.fc6 < 1 || self.fc7 < 1 {
            return Err(format!("fc6 = {} and fc7 = {} must be positive", self.fc6, self.fc7));
        }
        Ok(())
    }
}
