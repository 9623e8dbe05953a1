//! CIFAR-10 and CIFAR-100 binary layouts (Krizhevsky 2009, <https://www.cs.toronto.edu/~kriz/cifar.html>).
//!
//! CIFAR-10: `cifar-10-batches-bin/data_batch_{1..5}.bin` and `test_batch.bin`, records of
//! 1 label byte + 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major 32×32).
//! CIFAR-100: `cifar-100-binary/train.bin` and `test.bin`, records of a coarse label byte, a
//! fine label byte and the same 3072 pixel bytes; we use the fine (100-class) label.
use std::path::Path;

use crate::dataset::ImageDataset;
use crate::error::{DataError, Result};
use crate::Split;

/// Side of a CIFAR image.
pub const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;

/// Which CIFAR variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// 10 classes, one label byte.
    Cifar10,
    /// 100 fine classes, two label bytes (coarse, fine).
    Cifar100,
}

impl Variant {
    fn label_bytes(self) -> usize {
        match self {
            Variant::Cifar10 => 1,
            Variant::Cifar100 => 2,
        }
    }
    /// Number of classes.
    pub fn num_classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }
    /// Folder name under the data dir.
    pub fn folder(self) -> &'static str {
        match self {
            Variant::Cifar10 => "cifar-10-batches-bin",
            Variant::Cifar100 => "cifar-100-binary",
        }
    }
    fn files(self, split: Split) -> Result<Vec<&'static str>> {
        Ok(match (self, split) {
            (Variant::Cifar10, Split::Train | Split::TrainUnlabeled) => vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            (Variant::Cifar10, Split::Test) => vec!["test_batch.bin"],
            (Variant::Cifar100, Split::Train | Split::TrainUnlabeled) => vec!["train.bin"],
            (Variant::Cifar100, Split::Test) => vec!["test.bin"],
            (_, Split::Unlabeled) => {
                return Err(DataError::config(format!(
                    "{} has no unlabeled split (use train or train_unlabeled)",
                    self.name()
                )))
            }
        })
    }
    fn name(self) -> &'static str {
        match self {
            Variant::Cifar10 => "cifar10",
            Variant::Cifar100 => "cifar100",
        }
    }
}

/// Parses one CIFAR binary file, appending HWC pixels and labels. `path` only names the file in
/// errors.
pub fn parse(
    bytes: &[u8],
    variant: Variant,
    path: &Path,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<i64>,
) -> Result<()> {
    let lb = variant.label_bytes();
    let rec = lb + PIXELS;
    if bytes.is_empty() {
        return Err(DataError::file(path, "empty file, no records"));
    }
    if !bytes.len().is_multiple_of(rec) {
        let whole = bytes.len() / rec;
        return Err(DataError::file(
            path,
            format!(
                "truncated record {whole} at byte {} ({} bytes, records are {rec} bytes)",
                whole * rec,
                bytes.len()
            ),
        ));
    }
    let k = variant.num_classes();
    pixels.reserve(bytes.len() / rec * PIXELS);
    for (r, chunk) in bytes.chunks_exact(rec).enumerate() {
        let y = chunk[lb - 1] as usize;
        if y >= k {
            return Err(DataError::file(
                path,
                format!("label {y} outside 0..{k} in record {r} at byte {}", r * rec + lb - 1),
            ));
        }
        labels.push(y as i64);
        let (red, rest) = chunk[lb..].split_at(SIDE * SIDE);
        let (green, blue) = rest.split_at(SIDE * SIDE);
        for p in 0..SIDE * SIDE {
            pixels.extend_from_slice(&[red[p], green[p], blue[p]]);
        }
    }
    Ok(())
}

/// Reads a split from `dir` (the `cifar-10-batches-bin` or `cifar-100-binary` folder).
pub fn read(dir: &Path, variant: Variant, split: Split) -> Result<ImageDataset> {
    let files = variant.files(split)?;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let hint =
        format!("run `cargo xtask fetch {}` or unpack the binary archive there", variant.name());
    for f in files {
        let path = dir.join(f);
        let bytes = super::read_file(&path, variant.name(), &hint)?;
        parse(&bytes, variant, &path, &mut pixels, &mut labels)?;
    }
    let name = format!("{}/{}", variant.name(), split.as_str());
    ImageDataset::from_raw(&name, 3, SIDE, SIDE, pixels, Some(labels), Some(variant.num_classes()))
}
