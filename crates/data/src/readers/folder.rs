//! Image folders (`folder:PATH` or `folder:PATH:SIZE`): one subfolder per class (classes in
//! sorted name order, like torchvision's `ImageFolder`) or, with no subfolders, unlabeled
//! images. JPEG and PNG files are decoded with the `image` crate (as RGB) once into a
//! memory-mapped uint8 cache under `data_dir/.cache/`, keyed by a hash of the files' relative
//! names, sizes and modification times (and SIZE), so later runs and epochs skip decoding.
//!
//! Images must share one size unless SIZE is given; then each image's centred square (side =
//! its shorter side) is resized to SIZE×SIZE with antialiased bilinear filtering.
//!
//! # Splits
//! When PATH has `train/`, `test/` or `unlabeled/` subfolders, the split picks one (`train/`
//! for both `Train` and `TrainUnlabeled`); a split whose subfolder is missing is refused with
//! an error naming that subfolder. A folder without split subfolders is a training set only:
//! `Train`, `TrainUnlabeled` and `Unlabeled` all read PATH, and `Test` is refused, because its
//! test split would be its own training images and `selfsup eval` or the kNN monitor would
//! score an encoder on the images it trained on. Put held-out images in `PATH/test/`.
use std::fs::Metadata;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::augment::{self, CropBox, Source};
use crate::cache::{self, CacheWriter};
use crate::dataset::{to_hex, ImageDataset};
use crate::error::{DataError, Result};
use crate::Split;

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];
/// Images decoded in parallel per chunk (bounds memory while building a cache).
const CHUNK: usize = 256;

/// A 16-hex-digit key of files' names, sizes and modification times plus `extra` words.
pub(crate) fn file_key(files: &[(&Path, &Metadata)], extra: &[u64]) -> String {
    let mut h = Sha256::new();
    for (p, m) in files {
        h.update(p.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(m.len().to_le_bytes());
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        h.update(mtime.to_le_bytes());
    }
    for e in extra {
        h.update(e.to_le_bytes());
    }
    to_hex(&h.finalize()[..8])
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing {
            what: "image folder".into(),
            path: dir.to_path_buf(),
            hint: "give an existing folder of JPEG/PNG images".into(),
        },
        _ => DataError::io(dir, e),
    })?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

/// Parses `PATH` or `PATH:SIZE`.
fn parse_spec(spec: &str) -> (PathBuf, Option<usize>) {
    if let Some((p, s)) = spec.rsplit_once(':') {
        if let Ok(size) = s.parse::<usize>() {
            if size > 0 {
                return (PathBuf::from(p), Some(size));
            }
        }
    }
    (PathBuf::from(spec), None)
}

/// Decodes one image file into RGB HWC bytes, resized to `size` when given.
pub fn decode(path: &Path, size: Option<usize>) -> Result<(usize, usize, Vec<u8>)> {
    let img = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?
        .decode()
        .map_err(|e| DataError::file(path, format!("cannot decode image: {e}")))?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.into_raw();
    match size {
        Some(s) if (h, w) != (s, s) => {
            let side = h.min(w);
            let crop =
                CropBox { top: (h - side) / 2, left: (w - side) / 2, height: side, width: side };
            let f = augment::resample(Source::U8(&raw), 3, w, crop, s, s);
            let bytes =
                f.data.iter().map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8).collect();
            Ok((s, s, bytes))
        }
        _ => Ok((h, w, raw)),
    }
}

/// The folder holding `split`'s images: `root/train`, `root/test` or `root/unlabeled` when
/// `root` has split subfolders, else `root` itself for every split but [`Split::Test`].
fn split_root(root: &Path, split: Split) -> Result<PathBuf> {
    const SPLIT_DIRS: [&str; 3] = ["train", "test", "unlabeled"];
    let sub = match split {
        Split::Train | Split::TrainUnlabeled => "train",
        Split::Test => "test",
        Split::Unlabeled => "unlabeled",
    };
    let present: Vec<&str> = SPLIT_DIRS.into_iter().filter(|d| root.join(d).is_dir()).collect();
    if present.is_empty() {
        if split == Split::Test && root.is_dir() {
            return Err(DataError::config(format!(
                "folder:{} has no test/ subfolder: an image folder without train/ and test/ \
                 splits cannot be evaluated (its test split would be its training images); put \
                 the held-out images in {}/",
                root.display(),
                root.join("test").display()
            )));
        }
        return Ok(root.to_path_buf());
    }
    if !present.contains(&sub) {
        let has = present.iter().map(|d| format!("{d}/")).collect::<Vec<_>>().join(", ");
        return Err(DataError::config(format!(
            "folder:{} has no {sub}/ subfolder for the {} split (it has {has}); put those \
             images in {}/",
            root.display(),
            split.as_str(),
            root.join(sub).display()
        )));
    }
    Ok(root.join(sub))
}

/// Opens `folder:SPEC` for `split`, building the cache in `cache_dir` when needed.
pub fn read(spec: &str, split: Split, cache_dir: &Path) -> Result<ImageDataset> {
    let (spec_root, size) = parse_spec(spec);
    let root = split_root(&spec_root, split)?;
    let entries = list_dir(&root)?;
    let class_dirs: Vec<PathBuf> = entries.iter().filter(|p| p.is_dir()).cloned().collect();
    let mut files: Vec<(PathBuf, i64)> = Vec::new();
    let labeled = !class_dirs.is_empty();
    if labeled {
        for (k, d) in class_dirs.iter().enumerate() {
            let imgs: Vec<PathBuf> = list_dir(d)?.into_iter().filter(|p| is_image(p)).collect();
            if imgs.is_empty() {
                return Err(DataError::file(
                    d,
                    "empty class folder (no .jpg, .jpeg or .png files)",
                ));
            }
            files.extend(imgs.into_iter().map(|p| (p, k as i64)));
        }
    } else {
        files.extend(entries.into_iter().filter(|p| is_image(p)).map(|p| (p, -1)));
    }
    if files.is_empty() {
        return Err(DataError::file(&root, "empty folder (no .jpg, .jpeg or .png files)"));
    }
    let metas = files
        .iter()
        .map(|(p, _)| std::fs::metadata(p).map_err(|e| DataError::io(p, e)))
        .collect::<Result<Vec<_>>>()?;
    let rel: Vec<PathBuf> =
        files.iter().map(|(p, _)| p.strip_prefix(&root).unwrap_or(p).to_path_buf()).collect();
    let keyed: Vec<(&Path, &Metadata)> = rel.iter().map(|p| p.as_path()).zip(&metas).collect();
    let key = file_key(&keyed, &[size.unwrap_or(0) as u64, labeled as u64]);
    let name = format!("folder:{}/{}", root.display(), split.as_str());
    let cache_path = cache_dir.join(format!("folder-{key}.u8"));
    if let Ok(ds) = cache::open(&cache_path, &name) {
        return Ok(ds);
    }
    let num_classes = labeled.then_some(class_dirs.len());
    tracing::info!(
        "decoding {} images of {} into {}",
        files.len(),
        root.display(),
        cache_path.display()
    );
    let mut writer: Option<CacheWriter> = None;
    let mut shape = (0, 0);
    for chunk in files.chunks(CHUNK) {
        let decoded: Vec<Result<(usize, usize, Vec<u8>)>> =
            chunk.par_iter().map(|(p, _)| decode(p, size)).collect();
        for ((path, y), img) in chunk.iter().zip(decoded) {
            let (h, w, px) = img?;
            let wr = match &mut writer {
                Some(wr) => wr,
                None => {
                    shape = (h, w);
                    writer.insert(CacheWriter::create(&cache_path, 3, h, w)?)
                }
            };
            if (h, w) != shape {
                return Err(DataError::file(
                    path,
                    format!(
                        "image is {w}x{h} but the first is {}x{} (use folder:PATH:SIZE to resize)",
                        shape.1, shape.0
                    ),
                ));
            }
            wr.push(&px, *y)?;
        }
    }
    let writer = writer.expect("at least one image was decoded");
    let path = writer.finish(num_classes, labeled)?;
    cache::open(&path, &name)
}
