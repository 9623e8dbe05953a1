//! Dataset readers, deterministic augmentations and a prefetching batch loader for selfsup.
//!
//! - [`open_dataset`] reads CIFAR-10/100, STL-10, MNIST, Fashion-MNIST, image folders and a
//!   synthetic set into an [`ImageDataset`] (uint8 HWC, in memory or memory-mapped).
//! - [`Pipeline`] is a serde list of torchvision-equivalent augmentation [`Op`]s that turns an
//!   image into a float CHW view.
//! - [`Loader`] serves shuffled [`Batch`]es of one or more views, built in parallel with rayon
//!   on a background thread; every sample's randomness derives from (seed, epoch, index, view),
//!   so the output does not depend on the thread count.
//! - [`pretext`] holds pure functions on uint8 images for pretext tasks (rotations, patch
//!   grids, tile shuffling, inpainting masks, RGB↔Lab); [`patches`] cuts patch grids out of
//!   image tensors and normalises each patch.
//! - [`fetch`] downloads and verifies the datasets of `datasets/manifest.json`.
//!
//! ```
//! use selfsup_data::{open_dataset, Loader, LoaderConfig, Pipeline, Split};
//! # fn main() -> Result<(), selfsup_data::DataError> {
//! let data_dir = selfsup_data::resolve_data_dir(None);
//! let ds = open_dataset("synthetic:64:32", Split::Train, &data_dir)?;
//! let views = vec![Pipeline::simclr_cifar(), Pipeline::simclr_cifar()];
//! let cfg = LoaderConfig { batch_size: 16, drop_last: true, ..Default::default() };
//! let loader = Loader::new(ds, views, cfg)?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?;
//!     assert_eq!(batch.views[0].size(), [16, 3, 32, 32]);
//!     assert_eq!(batch.labels.size(), [16]);
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod augment;
mod cache;
pub mod dataset;
pub mod error;
pub mod fetch;
pub mod loader;
pub mod masks;
pub mod patches;
pub mod pipeline;
pub mod pretext;
pub mod readers;
pub mod rng;

use std::path::{Path, PathBuf};

pub use dataset::{ImageDataset, LabeledSubset};
pub use error::DataError;
pub use loader::{Batch, HostAlloc, Loader, LoaderConfig};
pub use pipeline::{Op, Pipeline};

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The labeled training split.
    Train,
    /// The test split.
    Test,
    /// The unlabeled split (STL-10's 100k images; image folders without class subfolders).
    Unlabeled,
    /// Everything usable for pretraining: train plus unlabeled where a dataset has both
    /// (STL-10), else train.
    TrainUnlabeled,
}

impl Split {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
            Split::Unlabeled => "unlabeled",
            Split::TrainUnlabeled => "train_unlabeled",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        Ok(match s {
            "train" => Split::Train,
            "test" => Split::Test,
            "unlabeled" => Split::Unlabeled,
            "train_unlabeled" | "train+unlabeled" => Split::TrainUnlabeled,
            _ => {
                return Err(DataError::config(format!(
                    "unknown split `{s}` (train, test, unlabeled, train_unlabeled)"
                )))
            }
        })
    }
}

/// Environment variable naming the data folder.
pub const DATA_ENV: &str = "SELFSUP_DATA";

/// The data folder: `explicit` (a `--data-dir` flag) if given, else `$SELFSUP_DATA`, else
/// `./datasets`.
pub fn resolve_data_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os(DATA_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from("datasets"),
    }
}

/// Opens a dataset by spec:
/// - `cifar10` (`data_dir/cifar-10-batches-bin/`), `cifar100` (`data_dir/cifar-100-binary/`)
/// - `stl10` (`data_dir/stl10_binary/`; the unlabeled split is cached under `data_dir/.cache/`)
/// - `mnist` (`data_dir/mnist/`), `fashion-mnist` (`data_dir/fashion-mnist/`, else
///   `/usr/share/datasets/fashion-mnist/` from the Debian package `dataset-fashion-mnist`)
/// - `folder:PATH` or `folder:PATH:SIZE` (see [`readers::folder`]; cached under
///   `data_dir/.cache/`)
/// - `synthetic:N:SIZE` (seeded random images, 10 classes)
pub fn open_dataset(spec: &str, split: Split, data_dir: &Path) -> Result<ImageDataset, DataError> {
    use readers::cifar::{self, Variant};
    let cache_dir = data_dir.join(".cache");
    if let Some(args) = spec.strip_prefix("synthetic:") {
        return readers::synthetic::open(args, split);
    }
    if let Some(path) = spec.strip_prefix("folder:") {
        return readers::folder::read(path, split, &cache_dir);
    }
    match spec {
        "cifar10" => cifar::read(&data_dir.join(Variant::Cifar10.folder()), Variant::Cifar10, split),
        "cifar100" => {
            cifar::read(&data_dir.join(Variant::Cifar100.folder()), Variant::Cifar100, split)
        }
        "stl10" => readers::stl10::read(&data_dir.join(readers::stl10::FOLDER), split, &cache_dir),
        "mnist" => readers::idx::read(&data_dir.join("mnist"), "mnist", split),
        "fashion-mnist" => {
            let local = data_dir.join("fashion-mnist");
            let system = Path::new(readers::idx::FASHION_SYSTEM_DIR);
            let dir = if !local.is_dir() && system.is_dir() { system.to_path_buf() } else { local };
            readers::idx::read(&dir, "fashion-mnist", split)
        }
        _ => Err(DataError::config(format!(
            "unknown dataset `{spec}` (cifar10, cifar100, stl10, mnist, fashion-mnist, folder:PATH, synthetic:N:SIZE)"
        ))),
    }
}
