//! The batch loader: per-epoch seeded shuffling, rayon-parallel batch assembly (one pipeline
//! per view, every (sample, view) seeded from (seed, epoch, index, view)), and a background
//! producer thread feeding a bounded queue so augmentation overlaps the training step.
//!
//! Memory stays bounded: at most `prefetch` finished batches wait in the queue, plus the one
//! being built.
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::dataset::ImageDataset;
use crate::error::{DataError, Result};
use crate::pipeline::Pipeline;
use crate::rng::{epoch_rng, sample_rng};

/// A batch: one tensor per view, labels and dataset indices, all on the CPU.
///
/// # Shapes
/// - `views[v]`: `(B, C, H, W)` f32, the output of view pipeline `v`
/// - `labels`: `(B,)` i64, `-1` for unlabeled images
/// - `indices`: `(B,)` i64, the images' indices in the dataset
#[derive(Debug)]
pub struct Batch {
    /// One tensor per view.
    pub views: Vec<Tensor>,
    /// Labels (`-1` when unlabeled).
    pub labels: Tensor,
    /// Dataset indices.
    pub indices: Tensor,
}

/// `t` on `device`: a host tensor goes to CUDA from pinned memory with a non-blocking copy, so
/// the host goes on (to the step's kernels, the next batch) while the copy runs (libtorch's
/// pinned-memory allocator keeps the buffer until the copy is done); on the CPU, `t` itself.
/// (`_pin_memory`: tch's only `pin_memory` binding passes a device, which libtorch warns on
/// every call is deprecated.)
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    match device {
        Device::Cpu if t.device() == Device::Cpu => t.shallow_clone(),
        Device::Cuda(_) if t.device() == Device::Cpu => {
            t.internal_pin_memory(device).to_device_(device, t.kind(), true, false)
        }
        _ => t.to_device(device),
    }
}

impl Batch {
    /// One view of unlabeled images (labels `-1`, indices `0..B`), on the images' device: a
    /// batch built by hand, as method tests feed one.
    ///
    /// # Shapes
    /// `images`: `(B, C, H, W)`.
    pub fn unlabeled(images: Tensor) -> Batch {
        let (n, device) = (images.size()[0], images.device());
        Batch {
            views: vec![images],
            labels: Tensor::full([n], -1, (tch::Kind::Int64, device)),
            indices: Tensor::arange(n, (tch::Kind::Int64, device)),
        }
    }

    /// Copies the batch to `device` ([`upload`]: to CUDA without the host waiting).
    pub fn to_device(&self, device: Device) -> Batch {
        let put = |t: &Tensor| upload(t, device);
        Batch {
            views: self.views.iter().map(put).collect(),
            labels: put(&self.labels),
            indices: put(&self.indices),
        }
    }

    /// Number of images in the batch.
    pub fn len(&self) -> usize {
        self.indices.size()[0] as usize
    }

    /// True when the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Loader settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Images per batch (default 256).
    pub batch_size: usize,
    /// Shuffle every epoch (default true).
    pub shuffle: bool,
    /// Drop the last incomplete batch (default false).
    pub drop_last: bool,
    /// Seed of the shuffles and of every augmentation (default 0).
    pub seed: u64,
    /// Batches prepared ahead by the background thread; 0 builds batches on the caller's
    /// thread (default 2).
    pub prefetch: usize,
    /// Worker threads that augment a batch; 0 uses every core (default 0).
    pub threads: usize,
    /// Processes of a data-parallel job sharing each batch (default 1). Each batch of
    /// `batch_size` images (the global batch, drawn from the epoch's order as for one process)
    /// is split into `world_size` consecutive shards of `batch_size / world_size` images, and
    /// this loader serves shard `rank`: the shards of a step together are exactly the
    /// single-process batch, and every image gets the same views whatever the world size
    /// (augmentations are keyed by seed, epoch and image index). Needs `drop_last` and a
    /// `batch_size` divisible by `world_size`.
    pub world_size: usize,
    /// This process's shard, `0..world_size` (default 0).
    pub rank: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 256,
            shuffle: true,
            drop_last: false,
            seed: 0,
            prefetch: 2,
            threads: 0,
            world_size: 1,
            rank: 0,
        }
    }
}

/// Allocates the host tensor of one view of a batch, `(B, C, H, W)` float, whose contents the
/// loader then overwrites: e.g. in page-locked memory, so that the copy to a GPU needs no
/// staging copy on the training thread (`selfsup_core::stage`). It must return a new tensor
/// whose memory nothing else holds (the loader writes it through a raw pointer); the loader
/// checks its shape, kind, device and layout. Called on the producer thread; an error names
/// what failed.
pub type HostAlloc = Arc<dyn Fn(&[i64]) -> std::result::Result<Tensor, String> + Send + Sync>;

/// Everything the producer thread needs, shared by `Arc`.
struct Shared {
    dataset: ImageDataset,
    views: Vec<Pipeline>,
    shapes: Vec<(usize, usize, usize)>,
    cfg: LoaderConfig,
    pool: rayon::ThreadPool,
    /// Where the views' tensors are allocated; `None`: ordinary CPU memory.
    alloc: Option<HostAlloc>,
}

/// Iterates over a dataset in batches of augmented views. See the module docs.
pub struct Loader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("dataset", &self.shared.dataset)
            .field("views", &self.shared.views.len())
            .field("cfg", &self.shared.cfg)
            .finish()
    }
}

impl Loader {
    /// Checks the view pipelines against the dataset's image shape and builds the worker pool.
    pub fn new(dataset: ImageDataset, views: Vec<Pipeline>, cfg: LoaderConfig) -> Result<Self> {
        Self::with_host_alloc(dataset, views, cfg, None)
    }

    /// [`Loader::new`], with the views' host tensors allocated by `alloc` (see [`HostAlloc`])
    /// rather than in ordinary CPU memory; `None` is [`Loader::new`].
    pub fn with_host_alloc(
        dataset: ImageDataset,
        views: Vec<Pipeline>,
        cfg: LoaderConfig,
        alloc: Option<HostAlloc>,
    ) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(DataError::config("loader batch_size must be positive"));
        }
        if views.is_empty() {
            return Err(DataError::config("loader needs at least one view pipeline"));
        }
        if dataset.is_empty() {
            return Err(DataError::config(format!("dataset {} is empty", dataset.name())));
        }
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            return Err(DataError::config(format!(
                "loader rank {} of world_size {}: the rank must be below the world size",
                cfg.rank, cfg.world_size
            )));
        }
        if cfg.world_size > 1 && (!cfg.drop_last || !cfg.batch_size.is_multiple_of(cfg.world_size))
        {
            return Err(DataError::config(format!(
                "a batch of {} images cannot be split into {} equal shards{}",
                cfg.batch_size,
                cfg.world_size,
                if cfg.drop_last { "" } else { " (sharding needs drop_last)" }
            )));
        }
        if cfg.drop_last && dataset.len() < cfg.batch_size {
            return Err(DataError::config(format!(
                "dataset {} has {} images, fewer than one batch of {} with drop_last",
                dataset.name(),
                dataset.len(),
                cfg.batch_size
            )));
        }
        let (c, h, w) = (dataset.channels(), dataset.height(), dataset.width());
        let shapes = views
            .iter()
            .enumerate()
            .map(|(v, p)| p.check(c, h, w).map_err(|e| DataError::config(format!("view {v}: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .thread_name(|i| format!("selfsup-data-{i}"))
            .build()
            .map_err(|e| DataError::config(format!("loader thread pool: {e}")))?;
        Ok(Loader { shared: Arc::new(Shared { dataset, views, shapes, cfg, pool, alloc }) })
    }

    /// The dataset.
    pub fn dataset(&self) -> &ImageDataset {
        &self.shared.dataset
    }

    /// The settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.shared.cfg
    }

    /// `(C, H, W)` of each view.
    pub fn view_shapes(&self) -> &[(usize, usize, usize)] {
        &self.shared.shapes
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.shared.batches_per_epoch()
    }

    /// The dataset indices of epoch `epoch`, in the order they are served.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        self.shared.order(epoch)
    }

    /// Builds batch `b` of epoch `epoch` on the caller's thread (with the worker pool).
    pub fn batch(&self, epoch: u64, b: usize) -> Result<Batch> {
        let order = self.shared.order(epoch);
        self.shared.make_batch(&order, epoch, b)
    }

    /// All batches of epoch `epoch`.
    pub fn epoch(&self, epoch: u64) -> impl Iterator<Item = Result<Batch>> + '_ {
        self.epoch_from(epoch, 0)
    }

    /// The batches of epoch `epoch` from batch `first_batch` on (to resume mid-epoch): the
    /// same batches, bit for bit, that [`Loader::epoch`] yields at those positions.
    pub fn epoch_from(
        &self,
        epoch: u64,
        first_batch: usize,
    ) -> impl Iterator<Item = Result<Batch>> + '_ {
        let shared = self.shared.clone();
        let order = Arc::new(shared.order(epoch));
        let end = shared.batches_per_epoch();
        if shared.cfg.prefetch == 0 {
            return EpochIter::Sync { shared, order, epoch, next: first_batch, end };
        }
        let (tx, rx) = sync_channel(shared.cfg.prefetch);
        let producer = {
            let shared = shared.clone();
            std::thread::Builder::new().name("selfsup-data-prefetch".into()).spawn(move || {
                for b in first_batch..end {
                    let batch = shared.make_batch_caught(&order, epoch, b);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                }
            })
        };
        match producer {
            Ok(handle) => EpochIter::Prefetch {
                rx: Some(rx),
                handle: Some(handle),
                next: first_batch,
                end,
                epoch,
            },
            Err(e) => EpochIter::Failed(Some(DataError::config(format!(
                "cannot start the prefetch thread: {e}"
            )))),
        }
    }
}

impl Shared {
    fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.cfg.batch_size);
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.cfg.shuffle {
            order.shuffle(&mut epoch_rng(self.cfg.seed, epoch));
        }
        order
    }

    /// [`Self::make_batch`] with a panic (a bug in an augmentation or a reader) turned into an
    /// error naming the batch and its images, so an epoch never ends early in silence.
    fn make_batch_caught(&self, order: &[usize], epoch: u64, b: usize) -> Result<Batch> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.make_batch(order, epoch, b)))
            .unwrap_or_else(|payload| {
                let msg = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                let bs = self.cfg.batch_size;
                let images = &order[(b * bs).min(order.len())..((b + 1) * bs).min(order.len())];
                Err(DataError::config(format!(
                    "the loader panicked on batch {b} of epoch {epoch} (images {}{}): {msg}",
                    images.iter().take(8).map(|i| i.to_string()).collect::<Vec<_>>().join(", "),
                    if images.len() > 8 { ", ..." } else { "" }
                )))
            })
    }

    fn make_batch(&self, order: &[usize], epoch: u64, b: usize) -> Result<Batch> {
        let bs = self.cfg.batch_size;
        let lo = b * bs;
        let hi = ((b + 1) * bs).min(order.len());
        if lo >= hi {
            return Err(DataError::config(format!(
                "batch {b} out of range ({} batches per epoch)",
                self.batches_per_epoch()
            )));
        }
        let idx = &order[lo..hi];
        // This rank's shard of the global batch (all of it in a single process).
        let shard = idx.len() / self.cfg.world_size;
        let idx = &idx[self.cfg.rank * shard..(self.cfg.rank + 1) * shard];
        let _span = tracing::trace_span!("batch", epoch, batch = b, size = idx.len()).entered();
        let ds = &self.dataset;
        let (c, h, w) = (ds.channels(), ds.height(), ds.width());
        let mut views = Vec::with_capacity(self.views.len());
        for (v, (pipe, &(oc, oh, ow))) in self.views.iter().zip(&self.shapes).enumerate() {
            let per = oc * oh * ow;
            let shape = [idx.len() as i64, oc as i64, oh as i64, ow as i64];
            // Written in place: `Tensor::from_slice` would zero-fill a new tensor through
            // libtorch's OpenMP pool (whose spinning threads then compete with ours) and copy.
            let t = match &self.alloc {
                None => Tensor::f_empty(shape, (Kind::Float, Device::Cpu))?,
                Some(alloc) => {
                    let t = alloc(&shape).map_err(|e| {
                        DataError::config(format!("allocating view {v} of batch {b}: {e}"))
                    })?;
                    let want = (Kind::Float, Device::Cpu);
                    if t.size() != shape || (t.kind(), t.device()) != want || !t.is_contiguous() {
                        return Err(DataError::config(format!(
                            "the host allocator gave view {v} of batch {b} a {:?} {:?} tensor \
                             of shape {:?} (contiguous: {}), not a contiguous float CPU \
                             tensor of shape {shape:?}",
                            t.kind(),
                            t.device(),
                            t.size(),
                            t.is_contiguous()
                        )));
                    }
                    t
                }
            };
            let len = idx.len() * per;
            // SAFETY: `t` is a new contiguous CPU float tensor of exactly `len` elements (checked
            // above where an allocator made it, whose contract is that nothing else holds its
            // memory) that nothing else references until this function returns it; the slice
            // does not outlive this block.
            let buf = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, len) };
            self.pool.install(|| {
                buf.par_chunks_mut(per).zip(idx.par_iter()).for_each(|(out, &i)| {
                    let mut rng = sample_rng(self.cfg.seed, epoch, i as u64, v as u64);
                    pipe.apply(ds.image(i), c, h, w, &mut rng, out);
                });
            });
            views.push(t);
        }
        let labels: Vec<i64> = idx.iter().map(|&i| ds.label(i).unwrap_or(-1)).collect();
        let indices: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        Ok(Batch {
            views,
            labels: Tensor::f_from_slice(&labels)?,
            indices: Tensor::f_from_slice(&indices)?,
        })
    }
}

/// Iterator over one epoch's batches.
enum EpochIter {
    Sync {
        shared: Arc<Shared>,
        order: Arc<Vec<usize>>,
        epoch: u64,
        next: usize,
        end: usize,
    },
    Prefetch {
        rx: Option<Receiver<Result<Batch>>>,
        handle: Option<JoinHandle<()>>,
        /// The next batch expected, and the epoch's end: a queue closed before `end` is an
        /// error, not the end of the epoch.
        next: usize,
        end: usize,
        epoch: u64,
    },
    Failed(Option<DataError>),
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            EpochIter::Sync { shared, order, epoch, next, end } => {
                if *next >= *end {
                    return None;
                }
                let b = shared.make_batch_caught(order, *epoch, *next);
                *next += 1;
                if b.is_err() {
                    *next = *end;
                }
                Some(b)
            }
            EpochIter::Prefetch { rx, next, end, epoch, .. } => {
                if *next >= *end {
                    return None;
                }
                match rx.as_ref()?.recv() {
                    Ok(b) => {
                        // After an error the producer stops: so does the epoch.
                        *next = if b.is_err() { *end } else { *next + 1 };
                        Some(b)
                    }
                    Err(_) => {
                        let at = *next;
                        *next = *end;
                        Some(Err(DataError::config(format!(
                            "the prefetch thread stopped at batch {at} of {end} of epoch {epoch} \
                             without an error"
                        ))))
                    }
                }
            }
            EpochIter::Failed(e) => e.take().map(Err),
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        if let EpochIter::Prefetch { rx, handle, .. } = self {
            // Closing the queue makes the producer's next `send` fail, so it stops.
            drop(rx.take());
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_making_a_batch_is_an_error_naming_its_images() {
        let ds =
            crate::open_dataset("synthetic:10:8", crate::Split::Train, std::path::Path::new("."))
                .unwrap();
        let cfg = LoaderConfig { batch_size: 3, threads: 2, ..Default::default() };
        let loader = Loader::new(ds, vec![Pipeline { ops: Vec::new() }], cfg).unwrap();
        // An order naming an image the dataset lacks: the reader's slice indexing panics inside
        // the augmentation workers (a bug of this kind would otherwise end the epoch in
        // silence, or take the process down).
        let order = vec![0, 1, 999];
        let err = loader.shared.make_batch_caught(&order, 4, 0).unwrap_err().to_string();
        assert!(err.contains("panicked on batch 0 of epoch 4 (images 0, 1, 999)"), "{err}");
        assert!(loader.shared.make_batch_caught(&[0, 1, 2], 4, 0).is_ok());
    }
}
