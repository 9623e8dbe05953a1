//! STL-10 binary layout (Coates, Lee & Ng 2011, <https://cs.stanford.edu/~acoates/stl10/>):
//! `stl10_binary/{train,test}_X.bin` + `{train,test}_y.bin` and `unlabeled_X.bin`. Each image
//! is 3×96×96 bytes, one channel after another, each channel stored column-major (the files
//! were written from MATLAB), so pixel (row y, column x) of channel c sits at byte
//! `c·9216 + x·96 + y`. Labels are bytes 1–10; we store 0–9.
//!
//! Train and test are read into memory; the 100k unlabeled images (2.7 GB) are transposed once
//! into a memory-mapped cache under `data_dir/.cache/`.
use std::io::{BufReader, Read};
use std::path::Path;

use crate::cache::{self, CacheWriter};
use crate::dataset::ImageDataset;
use crate::error::{DataError, Result};
use crate::Split;

/// Side of an STL-10 image.
pub const SIDE: usize = 96;
/// Bytes per image.
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
/// Number of classes.
pub const NUM_CLASSES: usize = 10;
/// Folder name under the data dir.
pub const FOLDER: &str = "stl10_binary";

const HINT: &str = "run `cargo xtask fetch stl10` or unpack stl10_binary.tar.gz there";

/// Transposes one file image (channel-planar, column-major) into HWC, appending to `out`.
pub fn transpose_image(src: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + IMAGE_BYTES, 0);
    let dst = &mut out[start..];
    for c in 0..3 {
        let plane = &src[c * SIDE * SIDE..(c + 1) * SIDE * SIDE];
        for x in 0..SIDE {
            let col = &plane[x * SIDE..(x + 1) * SIDE];
            for (y, &v) in col.iter().enumerate() {
                dst[(y * SIDE + x) * 3 + c] = v;
            }
        }
    }
}

/// Parses an `*_X.bin` image file into HWC pixels.
pub fn parse_images(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    if bytes.is_empty() {
        return Err(DataError::file(path, "empty file, no images"));
    }
    if !bytes.len().is_multiple_of(IMAGE_BYTES) {
        let whole = bytes.len() / IMAGE_BYTES;
        return Err(DataError::file(
            path,
            format!(
                "truncated image {whole} at byte {} ({} bytes, images are {IMAGE_BYTES} bytes)",
                whole * IMAGE_BYTES,
                bytes.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(bytes.len());
    for img in bytes.chunks_exact(IMAGE_BYTES) {
        transpose_image(img, &mut out);
    }
    Ok(out)
}

/// Parses a `*_y.bin` label file (bytes 1–10) into labels 0–9, expecting `n` of them.
pub fn parse_labels(bytes: &[u8], n: usize, path: &Path) -> Result<Vec<i64>> {
    if bytes.len() != n {
        return Err(DataError::file(
            path,
            format!("{} labels for {n} images (byte {})", bytes.len(), bytes.len().min(n)),
        ));
    }
    bytes
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            if (1..=NUM_CLASSES as u8).contains(&y) {
                Ok(y as i64 - 1)
            } else {
                Err(DataError::file(path, format!("label {y} outside 1..=10 at byte {i}")))
            }
        })
        .collect()
}

fn read_labeled(dir: &Path, prefix: &str) -> Result<(Vec<u8>, Vec<i64>)> {
    let xp = dir.join(format!("{prefix}_X.bin"));
    let yp = dir.join(format!("{prefix}_y.bin"));
    let pixels = parse_images(&super::read_file(&xp, "stl10", HINT)?, &xp)?;
    let labels =
        parse_labels(&super::read_file(&yp, "stl10", HINT)?, pixels.len() / IMAGE_BYTES, &yp)?;
    Ok((pixels, labels))
}

/// Reads a split from `dir` (the `stl10_binary` folder); `cache_dir` holds the unlabeled cache.
pub fn read(dir: &Path, split: Split, cache_dir: &Path) -> Result<ImageDataset> {
    let name = format!("stl10/{}", split.as_str());
    match split {
        Split::Train | Split::Test => {
            let (pixels, labels) =
                read_labeled(dir, if split == Split::Train { "train" } else { "test" })?;
            ImageDataset::from_raw(&name, 3, SIDE, SIDE, pixels, Some(labels), Some(NUM_CLASSES))
        }
        Split::Unlabeled | Split::TrainUnlabeled => {
            let ux = dir.join("unlabeled_X.bin");
            let meta = std::fs::metadata(&ux).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => DataError::Missing {
                    what: "stl10 unlabeled split".into(),
                    path: ux.clone(),
                    hint: HINT.into(),
                },
                _ => DataError::io(&ux, e),
            })?;
            let with_train = split == Split::TrainUnlabeled;
            let key = crate::readers::folder::file_key(&[(&ux, &meta)], &[with_train as u64]);
            let cache_path = cache_dir.join(format!("stl10-{}-{key}.u8", split.as_str()));
            if let Ok(ds) = cache::open(&cache_path, &name) {
                return Ok(ds);
            }
            if !meta.len().is_multiple_of(IMAGE_BYTES as u64) || meta.len() == 0 {
                return Err(DataError::file(
                    &ux,
                    format!(
                        "truncated image {} at byte {} ({} bytes, images are {IMAGE_BYTES} bytes)",
                        meta.len() / IMAGE_BYTES as u64,
                        meta.len() / IMAGE_BYTES as u64 * IMAGE_BYTES as u64,
                        meta.len()
                    ),
                ));
            }
            tracing::info!("transposing {} into {}", ux.display(), cache_path.display());
            let mut w = CacheWriter::create(&cache_path, 3, SIDE, SIDE)?;
            if with_train {
                let (pixels, labels) = read_labeled(dir, "train")?;
                for (img, &y) in pixels.chunks_exact(IMAGE_BYTES).zip(&labels) {
                    w.push(img, y)?;
                }
            }
            let file = std::fs::File::open(&ux).map_err(|e| DataError::io(&ux, e))?;
            let mut reader = BufReader::with_capacity(1 << 22, file);
            let mut raw = vec![0u8; IMAGE_BYTES];
            let mut hwc = Vec::with_capacity(IMAGE_BYTES);
            for i in 0..meta.len() / IMAGE_BYTES as u64 {
                reader.read_exact(&mut raw).map_err(|e| {
                    DataError::file(
                        &ux,
                        format!("image {i} at byte {}: {e}", i * IMAGE_BYTES as u64),
                    )
                })?;
                hwc.clear();
                transpose_image(&raw, &mut hwc);
                w.push(&hwc, -1)?;
            }
            let path = w.finish(Some(NUM_CLASSES), with_train)?;
            cache::open(&path, &name)
        }
    }
}
