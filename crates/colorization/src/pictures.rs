//! Sample pictures: image columns (grayscale input, prediction, original) side by side, one
//! row per image, written as a PNG (the colourised samples of Zhang et al. 2016, Fig. 1).
use crate::ColorizationError;
use tch::{Device, Kind, Tensor};

/// Writes the columns side by side, one row per image, to `path` (folders created).
///
/// # Shapes
/// Each column: `(N, 3, H, W)` in `[0, 1]`, all the same shape.
pub fn write_grid(path: &std::path::Path, columns: &[&Tensor]) -> Result<(), ColorizationError> {
    let err = |msg: String| ColorizationError::Picture { path: path.to_path_buf(), msg };
    let Some(first) = columns.first() else { return Err(err("no columns to draw".into())) };
    let s = first.size();
    if s.len() != 4 || s[1] != 3 || columns.iter().any(|c| c.size() != s) {
        let shapes: Vec<Vec<i64>> = columns.iter().map(|c| c.size()).collect();
        return Err(err(format!("columns of shapes {shapes:?}, expected equal (N, 3, H, W)")));
    }
    let (n, h, w) = (s[0], s[2], s[3]);
    let cols: Vec<Tensor> =
        columns.iter().map(|c| c.to_device(Device::Cpu).to_kind(Kind::Float)).collect();
    // (N, 3, H, k·W) → (3, N·H, k·W) → HWC bytes.
    let row = Tensor::cat(&cols, 3);
    let k = columns.len() as i64;
    let img = row.permute([1, 0, 2, 3]).reshape([3, n * h, k * w]);
    let bytes = (img * 255.0).round().clamp(0.0, 255.0).to_kind(Kind::Uint8);
    let bytes = Vec::<u8>::try_from(bytes.permute([1, 2, 0]).contiguous().flatten(0, -1))?;
    let picture = image::RgbImage::from_raw((k * w) as u32, (n * h) as u32, bytes)
        .ok_or_else(|| err("pixel buffer does not fit the picture".into()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    picture.save(path).map_err(|e| err(e.to_string()))
}
