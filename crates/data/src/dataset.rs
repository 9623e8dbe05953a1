//! In-memory (or memory-mapped) image datasets: `N` images of `H×W×C` uint8 stored contiguously
//! in HWC order, with optional integer labels, plus seeded labeled subsets for few-label work
//! (a fraction of each class as in SimCLR's 1%/10% ImageNet subsets, or K images per class).
use std::sync::{Arc, OnceLock};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};

/// Pixel storage: owned bytes or a read-only memory map of a cache file.
pub(crate) enum Storage {
    /// Bytes in memory.
    Owned(Vec<u8>),
    /// A memory-mapped cache file; the pixels start at `offset` and span `len` bytes.
    Mapped {
        /// The map.
        map: memmap2::Mmap,
        /// First pixel byte.
        offset: usize,
        /// Number of pixel bytes.
        len: usize,
    },
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Owned(v) => v,
            Storage::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }
}

struct Inner {
    name: String,
    channels: usize,
    height: usize,
    width: usize,
    len: usize,
    pixels: Storage,
    /// One label per image; `-1` marks an unlabeled image. `None` when the whole set is unlabeled.
    labels: Option<Vec<i64>>,
    num_classes: Option<usize>,
    checksum: OnceLock<String>,
}

/// `N` images of `H×W×C` uint8 (HWC order), with optional labels in `0..num_classes`.
///
/// Cloning is cheap (the data sits behind an `Arc`); the type is `Send + Sync`.
///
/// # Shapes
/// `image(i)` is a slice of `height * width * channels` bytes, row-major HWC.
#[derive(Clone)]
pub struct ImageDataset {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ImageDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageDataset")
            .field("name", &self.inner.name)
            .field("len", &self.inner.len)
            .field("chw", &(self.inner.channels, self.inner.height, self.inner.width))
            .field("num_classes", &self.inner.num_classes)
            .finish()
    }
}

impl ImageDataset {
    /// Builds a dataset from raw HWC pixels (`pixels.len()` must be a multiple of
    /// `channels * height * width`). Labels, when given, must number one per image and lie in
    /// `0..num_classes` (or be `-1` for an unlabeled image).
    pub fn from_raw(
        name: &str,
        channels: usize,
        height: usize,
        width: usize,
        pixels: Vec<u8>,
        labels: Option<Vec<i64>>,
        num_classes: Option<usize>,
    ) -> Result<Self> {
        Self::from_storage(
            name,
            channels,
            height,
            width,
            Storage::Owned(pixels),
            labels,
            num_classes,
        )
    }

    pub(crate) fn from_storage(
        name: &str,
        channels: usize,
        height: usize,
        width: usize,
        pixels: Storage,
        labels: Option<Vec<i64>>,
        num_classes: Option<usize>,
    ) -> Result<Self> {
        let per = channels * height * width;
        if per == 0 {
            return Err(DataError::config(format!(
                "dataset {name}: empty image shape {channels}x{height}x{width}"
            )));
        }
        let bytes = pixels.bytes().len();
        if !bytes.is_multiple_of(per) {
            return Err(DataError::config(format!(
                "dataset {name}: {bytes} pixel bytes is not a multiple of {channels}x{height}x{width}"
            )));
        }
        let len = bytes / per;
        if let Some(l) = &labels {
            if l.len() != len {
                return Err(DataError::config(format!(
                    "dataset {name}: {} labels for {len} images",
                    l.len()
                )));
            }
            if let Some(k) = num_classes {
                if let Some((i, &bad)) =
                    l.iter().enumerate().find(|(_, &y)| y < -1 || y >= k as i64)
                {
                    return Err(DataError::config(format!(
                        "dataset {name}: label {bad} of image {i} outside 0..{k}"
                    )));
                }
            }
        }
        Ok(ImageDataset {
            inner: Arc::new(Inner {
                name: name.to_string(),
                channels,
                height,
                width,
                len,
                pixels,
                labels,
                num_classes,
                checksum: OnceLock::new(),
            }),
        })
    }

    /// The dataset's name (e.g. `cifar10/train`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// Number of images.
    pub fn len(&self) -> usize {
        self.inner.len
    }
    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }
    /// Channels per image (3 for RGB, 1 for grayscale).
    pub fn channels(&self) -> usize {
        self.inner.channels
    }
    /// Image height in pixels.
    pub fn height(&self) -> usize {
        self.inner.height
    }
    /// Image width in pixels.
    pub fn width(&self) -> usize {
        self.inner.width
    }
    /// Bytes per image (`height * width * channels`).
    pub fn image_bytes(&self) -> usize {
        self.inner.channels * self.inner.height * self.inner.width
    }
    /// All pixels, `N×H×W×C` uint8.
    pub fn pixels(&self) -> &[u8] {
        self.inner.pixels.bytes()
    }

    /// Image `i` as HWC bytes. Panics when `i >= len()` (an index bug, not bad input).
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.image_bytes();
        &self.pixels()[i * per..(i + 1) * per]
    }

    /// Label of image `i`, `None` when unlabeled.
    pub fn label(&self, i: usize) -> Option<i64> {
        self.inner.labels.as_ref().and_then(|l| (l[i] >= 0).then_some(l[i]))
    }

    /// All labels (`-1` marks unlabeled images), `None` when the whole dataset is unlabeled.
    pub fn labels(&self) -> Option<&[i64]> {
        self.inner.labels.as_deref()
    }

    /// Number of classes, `None` when unlabeled.
    pub fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes
    }

    /// Hex SHA-256 of the shape, pixels and labels (computed once, then cached).
    pub fn checksum(&self) -> String {
        self.inner
            .checksum
            .get_or_init(|| {
                let mut h = Sha256::new();
                for d in [self.inner.channels, self.inner.height, self.inner.width, self.inner.len]
                {
                    h.update((d as u64).to_le_bytes());
                }
                h.update(self.pixels());
                if let Some(l) = &self.inner.labels {
                    for y in l {
                        h.update(y.to_le_bytes());
                    }
                }
                to_hex(&h.finalize())
            })
            .clone()
    }

    /// A new dataset holding the images at `indices` (in that order; repeats allowed).
    /// Panics when an index is out of range (an index bug, not bad input).
    pub fn subset(&self, indices: &[usize]) -> ImageDataset {
        let per = self.image_bytes();
        let mut pixels = Vec::with_capacity(indices.len() * per);
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        let labels = self.inner.labels.as_ref().map(|l| indices.iter().map(|&i| l[i]).collect());
        let inner = Inner {
            name: format!("{}[subset {}]", self.inner.name, indices.len()),
            channels: self.inner.channels,
            height: self.inner.height,
            width: self.inner.width,
            len: indices.len(),
            pixels: Storage::Owned(pixels),
            labels,
            num_classes: self.inner.num_classes,
            checksum: OnceLock::new(),
        };
        ImageDataset { inner: Arc::new(inner) }
    }

    /// Number of images per class (`num_classes` entries); unlabeled images are not counted.
    pub fn class_counts(&self) -> Option<Vec<usize>> {
        let k = self.inner.num_classes?;
        let labels = self.inner.labels.as_ref()?;
        let mut counts = vec![0usize; k];
        for &y in labels {
            if y >= 0 {
                counts[y as usize] += 1;
            }
        }
        Some(counts)
    }

    /// Indices of a seeded labeled subset, sorted ascending. See [`LabeledSubset`].
    pub fn labeled_subset_indices(&self, spec: LabeledSubset, seed: u64) -> Result<Vec<usize>> {
        let (Some(k), Some(labels)) = (self.inner.num_classes, self.inner.labels.as_ref()) else {
            return Err(DataError::config(format!(
                "dataset {}: a labeled subset needs labels",
                self.inner.name
            )));
        };
        let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); k];
        for (i, &y) in labels.iter().enumerate() {
            if y >= 0 {
                per_class[y as usize].push(i);
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(crate::rng::mix(&[seed, 0x005a_b5e7]));
        let mut out = Vec::new();
        for (c, idx) in per_class.iter_mut().enumerate() {
            let take = match spec {
                LabeledSubset::Fraction(f) => {
                    if !(f > 0.0 && f <= 1.0) {
                        return Err(DataError::config(format!(
                            "labeled subset fraction {f} outside (0, 1]"
                        )));
                    }
                    ((idx.len() as f64 * f).round() as usize).max(1).min(idx.len())
                }
                LabeledSubset::PerClass(n) => {
                    if n > idx.len() {
                        return Err(DataError::config(format!(
                            "dataset {}: {n} images asked of class {c}, which has {}",
                            self.inner.name,
                            idx.len()
                        )));
                    }
                    n
                }
            };
            idx.shuffle(&mut rng);
            out.extend_from_slice(&idx[..take]);
        }
        out.sort_unstable();
        Ok(out)
    }

    /// A seeded labeled subset (see [`LabeledSubset`]) as a new dataset.
    pub fn labeled_subset(&self, spec: LabeledSubset, seed: u64) -> Result<ImageDataset> {
        Ok(self.subset(&self.labeled_subset_indices(spec, seed)?))
    }
}

/// How to choose a labeled subset: stratified by class, chosen by seed.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabeledSubset {
    /// This fraction of each class (rounded, at least one image per class), e.g. 0.01 or 0.1.
    Fraction(f64),
    /// Exactly this many images of each class.
    PerClass(usize),
}

/// Lower-case hex of a digest.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
