//! Sample grids: a PNG with one row per image and one column per stage (the context encoder's
//! masked input, prediction and original, as the figures of Pathak et al. 2016; the denoising
//! autoencoder's corrupted input, reconstruction and original), written into the run folder
//! every few epochs so that a run can be looked at while it trains.
use crate::ReconstructionError;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Pixels between the images of a grid (white).
pub const GAP: u32 = 2;

/// Writes `columns` as a PNG grid at `path`: row `i` holds image `i` of every column, left to
/// right, with [`GAP`] white pixels around each image. Values are clamped to `[0, 1]`; a
/// one-channel image is drawn in gray. The file is written to a temporary name and renamed.
///
/// # Shapes
/// Every column `(N, C, H, W)` with the same shape, `C` 1 or 3.
pub fn write_png_grid(path: &Path, columns: &[Tensor]) -> Result<(), ReconstructionError> {
    let size = columns.first().map(Tensor::size).unwrap_or_default();
    let (n, h, w) = match size.as_slice() {
        &[n, c, h, w] if (c == 1 || c == 3) && columns.iter().all(|t| t.size() == size) => {
            (n as u32, h as u32, w as u32)
        }
        _ => {
            return Err(ReconstructionError::Config(format!(
                "sample grid {}: columns must share a (N, 1 or 3, H, W) shape, got {:?}",
                path.display(),
                columns.iter().map(Tensor::size).collect::<Vec<_>>()
            )))
        }
    };
    let cols = columns.len() as u32;
    let mut img = image::RgbImage::from_pixel(
        cols * (w + GAP) + GAP,
        n * (h + GAP) + GAP,
        image::Rgb([255, 255, 255]),
    );
    for (j, col) in columns.iter().enumerate() {
        // (N, H, W, 3) bytes.
        let bytes = (col.to_device(Device::Cpu).to_kind(Kind::Float).clamp(0.0, 1.0) * 255.0)
            .round()
            .to_kind(Kind::Uint8)
            .expand([n as i64, 3, h as i64, w as i64], false)
            .permute([0, 2, 3, 1])
            .contiguous();
        let bytes = Vec::<u8>::try_from(bytes.flatten(0, -1))?;
        for i in 0..n {
            for y in 0..h {
                for x in 0..w {
                    let o = (((i * h + y) * w + x) * 3) as usize;
                    let px = image::Rgb([bytes[o], bytes[o + 1], bytes[o + 2]]);
                    img.put_pixel(GAP + j as u32 * (w + GAP) + x, GAP + i * (h + GAP) + y, px);
                }
            }
        }
    }
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let io = |p: &Path, error| ReconstructionError::Io { path: p.to_path_buf(), error };
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| io(&tmp, std::io::Error::other(e.to_string())))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// The sample images a method keeps from its latest training step and writes as a grid every
/// `every` epochs (and after the last), under `run_dir/samples/epoch-<epoch>.png`.
#[derive(Debug)]
pub struct SampleGrid {
    every: u64,
    count: i64,
    columns: Vec<Tensor>,
}

impl SampleGrid {
    /// Keeps `count` images, written every `every` epochs; `every == 0` or `count == 0` keeps
    /// and writes nothing.
    pub fn new(every: u64, count: usize) -> Self {
        SampleGrid { every, count: count as i64, columns: Vec::new() }
    }

    /// Whether it keeps anything.
    pub fn enabled(&self) -> bool {
        self.every > 0 && self.count > 0
    }

    /// Keeps the first `count` images of each column (pixel values in `[0, 1]`), on the CPU
    /// and detached, replacing what was kept.
    ///
    /// # Shapes
    /// Every column `(B, C, H, W)`.
    pub fn keep(&mut self, columns: &[&Tensor]) {
        if !self.enabled() {
            return;
        }
        self.columns = columns
            .iter()
            .map(|t| {
                let k = self.count.min(t.size()[0]);
                t.narrow(0, 0, k).detach().to_device(Device::Cpu).to_kind(Kind::Float)
            })
            .collect();
    }

    /// The file of epoch `epoch` under `run_dir`.
    pub fn path(run_dir: &Path, epoch: u64) -> PathBuf {
        run_dir.join("samples").join(format!("epoch-{epoch:04}.png"))
    }

    /// Writes the kept images when epoch `epoch` (1-based) is due (a multiple of `every`, or
    /// the `last`); returns the file written.
    pub fn write_if_due(
        &self,
        epoch: u64,
        last: bool,
        run_dir: &Path,
    ) -> Result<Option<PathBuf>, ReconstructionError> {
        if !self.enabled() || self.columns.is_empty() || !(epoch % self.every == 0 || last) {
            return Ok(None);
        }
        let path = Self::path(run_dir, epoch);
        let dir = path.parent().expect("a samples folder");
        std::fs::create_dir_all(dir)
            .map_err(|error| ReconstructionError::Io { path: dir.to_path_buf(), error })?;
        write_png_grid(&path, &self.columns)?;
        Ok(Some(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_hold_every_image_in_its_cell() {
        let dir = tempfile::tempdir().unwrap();
        // Column 0 black, column 1 a gray one-channel image, column 2 red; values beyond
        // [0, 1] are clamped.
        let black = Tensor::zeros([2, 3, 4, 5], (Kind::Float, Device::Cpu)) - 1.0;
        let gray = Tensor::full([2, 1, 4, 5], 0.5, (Kind::Float, Device::Cpu));
        let red = Tensor::cat(
            &[
                Tensor::full([2, 1, 4, 5], 2.0, (Kind::Float, Device::Cpu)),
                Tensor::zeros([2, 2, 4, 5], (Kind::Float, Device::Cpu)),
            ],
            1,
        );
        let path = dir.path().join("g.png");
        let e = write_png_grid(&path, &[black.shallow_clone(), gray]).unwrap_err().to_string();
        assert!(e.contains("share a (N, 1 or 3, H, W) shape"), "{e}");
        let gray3 = Tensor::full([2, 3, 4, 5], 0.5, (Kind::Float, Device::Cpu));
        write_png_grid(&path, &[black, gray3, red]).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (3 * 7 + 2, 2 * 6 + 2));
        assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255], "gap");
        assert_eq!(img.get_pixel(2, 2).0, [0, 0, 0], "row 0, column 0");
        assert_eq!(img.get_pixel(2 + 7 + 4, 2 + 6 + 3).0, [128, 128, 128], "row 1, column 1");
        assert_eq!(img.get_pixel(2 + 14, 2).0, [255, 0, 0], "row 0, column 2");
    }

    #[test]
    fn sample_grids_are_written_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = SampleGrid::new(2, 3);
        let x = Tensor::zeros([8, 3, 4, 4], (Kind::Float, Device::Cpu));
        assert_eq!(g.write_if_due(2, false, dir.path()).unwrap(), None, "nothing kept yet");
        g.keep(&[&x, &x]);
        assert_eq!(g.write_if_due(1, false, dir.path()).unwrap(), None);
        let p = g.write_if_due(2, false, dir.path()).unwrap().unwrap();
        assert_eq!(p, dir.path().join("samples/epoch-0002.png"));
        assert_eq!(image::open(&p).unwrap().to_rgb8().height(), 3 * 6 + 2, "three images kept");
        assert!(g.write_if_due(3, true, dir.path()).unwrap().is_some(), "the last epoch");
        let mut off = SampleGrid::new(0, 3);
        off.keep(&[&x]);
        assert_eq!(off.write_if_due(4, true, dir.path()).unwrap(), None);
    }
}
