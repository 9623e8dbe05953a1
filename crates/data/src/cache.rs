//! Compact uint8 dataset caches, memory-mapped on open, so image folders are decoded (and
//! STL-10's column-major files transposed) once. Layout, little-endian:
//!
//! ```text
//! 0   b"SSDCACHE"  magic
//! 8   u64 version (1), n, channels, height, width, num_classes (0: none), has_labels (0/1)
//! 64  n × height × width × channels pixel bytes, HWC
//! ..  n × i64 labels (when has_labels; -1 marks an unlabeled image)
//! ```
//! A cache is written to a temporary name and renamed into place, so a crash never leaves a
//! half-written cache under the final name.
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::dataset::{ImageDataset, Storage};
use crate::error::{DataError, Result};

const MAGIC: &[u8; 8] = b"SSDCACHE";
const HEADER: usize = 64;
const VERSION: u64 = 1;

/// Streams images into a new cache file.
pub(crate) struct CacheWriter {
    final_path: PathBuf,
    tmp_path: PathBuf,
    out: BufWriter<File>,
    shape: (usize, usize, usize),
    n: usize,
    labels: Vec<i64>,
}

impl CacheWriter {
    /// Starts a cache at `path` for images of `channels × height × width`.
    pub fn create(path: &Path, channels: usize, height: usize, width: usize) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        }
        let tmp_path = path.with_extension(format!("tmp{}", std::process::id()));
        let file = File::create(&tmp_path).map_err(|e| DataError::io(&tmp_path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER]).map_err(|e| DataError::io(&tmp_path, e))?;
        Ok(CacheWriter {
            final_path: path.to_path_buf(),
            tmp_path,
            out,
            shape: (channels, height, width),
            n: 0,
            labels: Vec::new(),
        })
    }

    /// Appends one HWC image and its label (`-1`: unlabeled).
    pub fn push(&mut self, pixels: &[u8], label: i64) -> Result<()> {
        let (c, h, w) = self.shape;
        debug_assert_eq!(pixels.len(), c * h * w);
        self.out.write_all(pixels).map_err(|e| DataError::io(&self.tmp_path, e))?;
        self.labels.push(label);
        self.n += 1;
        Ok(())
    }

    /// Writes labels and header, renames the file into place and returns its path.
    pub fn finish(mut self, num_classes: Option<usize>, has_labels: bool) -> Result<PathBuf> {
        let io = |e| DataError::io(&self.tmp_path, e);
        if has_labels {
            for y in &self.labels {
                self.out.write_all(&y.to_le_bytes()).map_err(io)?;
            }
        }
        let (c, h, w) = self.shape;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        for v in [VERSION, self.n as u64, c as u64, h as u64, w as u64] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        header.extend_from_slice(&(num_classes.unwrap_or(0) as u64).to_le_bytes());
        header.extend_from_slice(&(has_labels as u64).to_le_bytes());
        header.resize(HEADER, 0);
        self.out.seek(SeekFrom::Start(0)).map_err(io)?;
        self.out.write_all(&header).map_err(io)?;
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_all().map_err(io)?;
        std::fs::rename(&self.tmp_path, &self.final_path)
            .map_err(|e| DataError::io(&self.final_path, e))?;
        Ok(self.final_path.clone())
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        // Removes the temporary file when `finish` was not reached (it is gone after a rename).
        let _ = std::fs::remove_file(&self.tmp_path);
    }
}

fn word(bytes: &[u8], i: usize) -> u64 {
    let o = 8 + 8 * i;
    u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"))
}

/// Opens a cache file as a memory-mapped dataset named `name`.
pub(crate) fn open(path: &Path, name: &str) -> Result<ImageDataset> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    // SAFETY: the cache is only ever written under a temporary name and renamed into place;
    // nothing writes to it once it has its final name, so the mapping does not change under us.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
    if map.len() < HEADER || &map[..8] != MAGIC {
        return Err(DataError::file(path, "not a selfsup cache (bad magic at byte 0)"));
    }
    if word(&map, 0) != VERSION {
        return Err(DataError::file(
            path,
            format!("cache version {} (expected {VERSION})", word(&map, 0)),
        ));
    }
    let (n, c, h, w, k, has) =
        (word(&map, 1), word(&map, 2), word(&map, 3), word(&map, 4), word(&map, 5), word(&map, 6));
    let pixel_bytes =
        n.checked_mul(c).and_then(|v| v.checked_mul(h)).and_then(|v| v.checked_mul(w));
    let label_bytes = if has == 1 { n.checked_mul(8) } else { Some(0) };
    let expected = pixel_bytes
        .zip(label_bytes)
        .and_then(|(p, l)| p.checked_add(l))
        .and_then(|v| v.checked_add(HEADER as u64));
    if expected != Some(map.len() as u64) || c == 0 || h == 0 || w == 0 {
        return Err(DataError::file(
            path,
            format!(
                "cache header says {n} images of {c}x{h}x{w} but the file has {} bytes",
                map.len()
            ),
        ));
    }
    let pixel_bytes = pixel_bytes.unwrap_or(0) as usize;
    let labels = (has == 1).then(|| {
        map[HEADER + pixel_bytes..]
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect::<Vec<_>>()
    });
    let num_classes = (k > 0).then_some(k as usize);
    let storage = Storage::Mapped { map, offset: HEADER, len: pixel_bytes };
    ImageDataset::from_storage(
        name,
        c as usize,
        h as usize,
        w as usize,
        storage,
        labels,
        num_classes,
    )
    .map_err(|e| DataError::file(path, e))
}
