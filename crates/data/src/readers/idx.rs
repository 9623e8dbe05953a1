//! MNIST / Fashion-MNIST IDX files (LeCun et al. 1998, <http://yann.lecun.com/exdb/mnist/>;
//! Xiao, Rasul & Vollgraf 2017), raw or gzip-compressed. An IDX file starts with a big-endian
//! magic `0x00000803` (uint8, 3 dimensions: images) or `0x00000801` (uint8, 1 dimension:
//! labels), then one big-endian u32 per dimension, then the data.
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::dataset::ImageDataset;
use crate::error::{DataError, Result};
use crate::Split;

/// Magic of an IDX uint8 image file.
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of an IDX uint8 label file.
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Number of classes of MNIST and Fashion-MNIST.
pub const NUM_CLASSES: usize = 10;

/// Where the Debian package `dataset-fashion-mnist` installs Fashion-MNIST.
pub const FASHION_SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Decompresses gzip data (magic `1f 8b`); returns other data unchanged.
pub fn maybe_gunzip(bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::file(path, format!("gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// A parsed IDX header: the magic and the dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxHeader {
    /// Magic word.
    pub magic: u32,
    /// Dimensions.
    pub dims: Vec<usize>,
}

/// Parses and checks the header of an IDX file with `expected` magic; returns it and the data.
pub fn parse_header<'a>(
    bytes: &'a [u8],
    expected: u32,
    path: &Path,
) -> Result<(IdxHeader, &'a [u8])> {
    if bytes.len() < 4 {
        return Err(DataError::file(
            path,
            format!("file of {} bytes has no IDX magic", bytes.len()),
        ));
    }
    let magic = be32(bytes, 0);
    if magic != expected {
        return Err(DataError::file(
            path,
            format!("wrong magic 0x{magic:08x} at byte 0 (expected 0x{expected:08x})"),
        ));
    }
    let ndim = (magic & 0xff) as usize;
    let data_at = 4 + 4 * ndim;
    if bytes.len() < data_at {
        return Err(DataError::file(path, format!("truncated IDX header at byte {}", bytes.len())));
    }
    let dims: Vec<usize> = (0..ndim).map(|d| be32(bytes, 4 + 4 * d) as usize).collect();
    let want = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let data = &bytes[data_at..];
    if want != Some(data.len()) {
        return Err(DataError::file(
            path,
            format!(
                "header dims {dims:?} need {} data bytes after byte {data_at}, file has {}",
                want.map_or("too many".to_string(), |w| w.to_string()),
                data.len()
            ),
        ));
    }
    Ok((IdxHeader { magic, dims }, data))
}

/// Parses an image file (`n × rows × cols`) and a label file (`n`, values in 0..10).
pub fn parse(
    images: &[u8],
    images_path: &Path,
    labels: &[u8],
    labels_path: &Path,
) -> Result<(usize, usize, Vec<u8>, Vec<i64>)> {
    let (ih, pixels) = parse_header(images, IMAGES_MAGIC, images_path)?;
    let (lh, ys) = parse_header(labels, LABELS_MAGIC, labels_path)?;
    let (n, rows, cols) = (ih.dims[0], ih.dims[1], ih.dims[2]);
    if n == 0 || rows == 0 || cols == 0 {
        return Err(DataError::file(images_path, format!("no images (dims {:?})", ih.dims)));
    }
    if lh.dims[0] != n {
        return Err(DataError::file(labels_path, format!("{} labels for {n} images", lh.dims[0])));
    }
    let labels = ys
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            if (y as usize) < NUM_CLASSES {
                Ok(y as i64)
            } else {
                Err(DataError::file(
                    labels_path,
                    format!("label {y} outside 0..10 in record {i} at byte {}", 8 + i),
                ))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((rows, cols, pixels.to_vec(), labels))
}

/// Finds `stem` or `stem.gz` (also with `.` for the last `-`, as some mirrors name them).
fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    let alt = stem.replacen("-idx", ".idx", 1);
    [stem.to_string(), format!("{stem}.gz"), alt.clone(), format!("{alt}.gz")]
        .into_iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

/// Reads a split of MNIST (`name` "mnist") or Fashion-MNIST ("fashion-mnist") from `dir`.
pub fn read(dir: &Path, name: &str, split: Split) -> Result<ImageDataset> {
    let prefix = match split {
        Split::Train | Split::TrainUnlabeled => "train",
        Split::Test => "t10k",
        Split::Unlabeled => {
            return Err(DataError::config(format!(
                "{name} has no unlabeled split (use train or train_unlabeled)"
            )))
        }
    };
    let hint = if name == "fashion-mnist" {
        "`apt-get install -y dataset-fashion-mnist` or `cargo xtask fetch fashion-mnist`"
            .to_string()
    } else {
        format!("run `cargo xtask fetch {name}`")
    };
    let load = |kind: &str| -> Result<(PathBuf, Vec<u8>)> {
        let stem = format!("{prefix}-{kind}");
        let path = find(dir, &stem).ok_or_else(|| DataError::Missing {
            what: name.to_string(),
            path: dir.join(format!("{stem}.gz")),
            hint: hint.clone(),
        })?;
        let bytes = super::read_file(&path, name, &hint)?;
        Ok((path.clone(), maybe_gunzip(bytes, &path)?))
    };
    let (ip, ib) = load("images-idx3-ubyte")?;
    let (lp, lb) = load("labels-idx1-ubyte")?;
    let (rows, cols, pixels, labels) = parse(&ib, &ip, &lb, &lp)?;
    ImageDataset::from_raw(
        &format!("{name}/{}", split.as_str()),
        1,
        rows,
        cols,
        pixels,
        Some(labels),
        Some(NUM_CLASSES),
    )
}
