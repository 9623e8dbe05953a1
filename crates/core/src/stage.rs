//! Batches on their way to the training device.
//!
//! On CUDA the next batch is prefetched to the device: right after a step's kernels are
//! queued, the trainer asks for the following batch, whose copies (from pinned host memory,
//! non-blocking) run on a side stream from libtorch's pool while the compute stream works on
//! the step; when the batch is handed over, the compute stream waits on the device (not the
//! host) for the copies' event, and the caching allocator is told that the compute stream now
//! uses the batch's memory (`record_stream`). This is what NVIDIA Apex's `data_prefetcher`
//! does in Python (`torch.cuda.Stream`, `wait_stream`, `record_stream`); the C side is
//! `csrc/stream.cpp`, over c10's device-generic stream and event interfaces. The loader writes
//! the batches bound for CUDA straight into pinned host memory on its own thread
//! ([`host_alloc`]), as PyTorch's `DataLoader(pin_memory=True)` pins on a thread of its own, so
//! the training thread only queues the copies. On the CPU a batch is used where it is (made
//! channels-last when asked), with nothing ahead.
use std::ffi::{c_char, c_int, c_void};

use selfsup_data::{Batch, HostAlloc};
use tch::{Device, Tensor};

use crate::error::{CoreError, Result};

extern "C" {
    fn selfsup_side_stream_new(
        device_index: c_int,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_side_stream_free(stream: *mut c_void);
    fn selfsup_stage(
        stream: *mut c_void,
        src: *const *const c_void,
        n: usize,
        channels_last: c_int,
        out: *mut *mut c_void,
        event: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_hand_over(
        event: *mut c_void,
        ts: *const *const c_void,
        n: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_event_free(event: *mut c_void);
    fn selfsup_empty_pinned(
        sizes: *const i64,
        n: usize,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// A new uninitialised float tensor of `shape` in page-locked host memory (libtorch's caching
/// host allocator), which [`ToDevice`] copies to the GPU as it is. Needs a GPU.
pub fn empty_pinned(shape: &[i64]) -> Result<Tensor> {
    let what = format!("a pinned host tensor of shape {shape:?}");
    // SAFETY: `shape` is readable for its length; `out` and `err` are `shim_tensor`'s, valid for
    // the call.
    let made = crate::ops::shim_tensor(|out, err, len| unsafe {
        selfsup_empty_pinned(shape.as_ptr(), shape.len(), out, err, len)
    });
    match made {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(CoreError::Device(format!("{what}: the shim made no tensor"))),
        Err(e) => Err(CoreError::Device(format!("{what}: {e}"))),
    }
}

/// The loader's allocator for batches bound for `device`: on CUDA the views are written straight
/// into pinned memory ([`empty_pinned`]) on the loader's thread, so that the training thread
/// only queues their copies (before, it copied each view into pinned memory itself, through
/// libtorch's OpenMP pool: SimCLR's two 512-image views at 32 px are 12.6 MB a step). `None` on
/// the CPU, or when `SELFSUP_PINNED_BATCHES=0` (for measuring the old path).
pub fn host_alloc(device: Device) -> Option<HostAlloc> {
    let off = std::env::var("SELFSUP_PINNED_BATCHES").is_ok_and(|v| v == "0");
    match device {
        Device::Cuda(_) if !off => Some(std::sync::Arc::new(|shape: &[i64]| {
            empty_pinned(shape).map_err(|e| e.to_string())
        })),
        _ => None,
    }
}

/// The shim's error as a [`CoreError::Device`] naming what failed.
fn shim_error(what: &str, err: &[u8]) -> CoreError {
    CoreError::Device(format!("{what}: {}", selfsup_dist::shim_message(err)))
}

/// The tensor handles of `batch` in the shim's order: the views, the labels, the indices.
fn handles(batch: &Batch) -> Vec<*const c_void> {
    let all = batch.views.iter().chain([&batch.labels, &batch.indices]);
    all.map(|t| t.as_ptr().cast()).collect()
}

/// A CUDA stream from libtorch's pool, for the copies.
#[derive(Debug)]
struct SideStream(*mut c_void);

impl SideStream {
    fn new(device_index: usize) -> Result<SideStream> {
        let mut out = std::ptr::null_mut();
        let mut err = [0u8; 1024];
        // SAFETY: `out` receives a new handle on success; `err` is writable for its length.
        let rc = unsafe {
            selfsup_side_stream_new(
                device_index as c_int,
                &mut out,
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        if rc != 0 {
            return Err(shim_error(&format!("a copy stream on cuda:{device_index}"), &err));
        }
        Ok(SideStream(out))
    }

    /// Queues the copies of `batch` to the stream's device; the host goes on at once.
    fn stage(&self, batch: &Batch, channels_last: bool) -> Result<Staged> {
        let ptrs = handles(batch);
        let mut out = vec![std::ptr::null_mut::<c_void>(); ptrs.len()];
        let mut event = std::ptr::null_mut();
        let mut err = [0u8; 1024];
        // SAFETY: `ptrs` are live tensor handles (tch's `C_tensor` is an `at::Tensor`), `out`
        // has room for one new handle per input, which we then own, as we own `event`.
        let rc = unsafe {
            selfsup_stage(
                self.0,
                ptrs.as_ptr(),
                ptrs.len(),
                c_int::from(channels_last),
                out.as_mut_ptr(),
                &mut event,
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        if rc != 0 {
            return Err(shim_error("copying a batch to the device", &err));
        }
        // SAFETY: each `out[i]` is a new `at::Tensor` handle that we now own.
        let mut ts = out.into_iter().map(|p| unsafe { Tensor::from_ptr(p.cast()) });
        let views = batch.views.iter().map(|_| ts.next().expect("one per view")).collect();
        let (labels, indices) = (ts.next().expect("labels"), ts.next().expect("indices"));
        Ok(Staged { batch: Some(Batch { views, labels, indices }), event })
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        // SAFETY: the handle came from `selfsup_side_stream_new` and is freed once.
        unsafe { selfsup_side_stream_free(self.0) }
    }
}

/// A batch whose copies are queued on the side stream, and the event recorded after them.
#[derive(Debug)]
struct Staged {
    batch: Option<Batch>,
    event: *mut c_void,
}

impl Staged {
    /// The batch, for the compute stream: see the module docs.
    fn hand_over(mut self) -> Result<Batch> {
        let batch = self.batch.take().expect("handed over once");
        let ts = handles(&batch);
        let mut err = [0u8; 1024];
        let event = std::mem::replace(&mut self.event, std::ptr::null_mut());
        // SAFETY: `event` came from `selfsup_stage` and is freed by this call (whatever its
        // outcome); `ts` are live tensor handles.
        let rc = unsafe {
            selfsup_hand_over(event, ts.as_ptr(), ts.len(), err.as_mut_ptr().cast(), err.len())
        };
        if rc != 0 {
            return Err(shim_error("handing a batch to the compute stream", &err));
        }
        Ok(batch)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.event.is_null() {
            // SAFETY: an event of `selfsup_stage` never handed over, freed once.
            unsafe { selfsup_event_free(self.event) }
        }
    }
}

/// The batches of an epoch on their way to `device`: see the module docs. Each batch is
/// checked on the host by the caller's `check` before it is copied.
pub struct ToDevice<I> {
    batches: I,
    device: Device,
    channels_last: bool,
    side: Option<SideStream>,
    /// The next batch, staged ahead (CUDA only).
    ahead: Option<Result<Staged>>,
}

impl<I, E> ToDevice<I>
where
    I: Iterator<Item = std::result::Result<Batch, E>>,
    CoreError: From<E>,
{
    /// The batches of `batches` for `device`, their views made channels-last when
    /// `channels_last`. On CUDA this takes a side stream of the device.
    pub fn new(batches: I, device: Device, channels_last: bool) -> Result<Self> {
        let side = match device {
            Device::Cuda(i) => Some(SideStream::new(i)?),
            _ => None,
        };
        Ok(ToDevice { batches, device, channels_last, side, ahead: None })
    }

    /// The next batch on the device (`None` at the end of the batches): the one prefetched by
    /// [`ToDevice::prefetch`] if any, else the next one, checked by `check` on the host, then
    /// copied.
    pub fn next_with(&mut self, check: impl FnMut(&Batch) -> Result<()>) -> Option<Result<Batch>> {
        if self.side.is_none() {
            return self.next_host(check).map(|b| b.and_then(|b| self.on_device(&b)));
        }
        if self.ahead.is_none() {
            self.prefetch(check);
        }
        self.ahead.take().map(|s| s.and_then(Staged::hand_over))
    }

    /// Starts the copies of the next batch (checked by `check` first) on the side stream, to be
    /// handed over by the next [`ToDevice::next_with`]; call it once the current step's kernels
    /// are queued. Nothing on the CPU (or when a batch is already ahead). An error (of the
    /// loader, the check or the copy) comes out of the next `next_with`.
    pub fn prefetch(&mut self, check: impl FnMut(&Batch) -> Result<()>) {
        if self.ahead.is_some() || self.side.is_none() {
            return;
        }
        let Some(checked) = self.next_host(check) else { return };
        let side = self.side.as_ref().expect("checked above");
        self.ahead = Some(checked.and_then(|b| side.stage(&b, self.channels_last)));
    }

    /// The next batch of the loader, on the host, checked by `check`.
    fn next_host(&mut self, mut check: impl FnMut(&Batch) -> Result<()>) -> Option<Result<Batch>> {
        let batch = self.batches.next()?;
        Some(batch.map_err(CoreError::from).and_then(|b| {
            check(&b)?;
            Ok(b)
        }))
    }

    /// `batch` on a device without a side stream (the CPU), views channels-last when asked.
    fn on_device(&self, batch: &Batch) -> Result<Batch> {
        let batch = batch.to_device(self.device);
        if !self.channels_last {
            return Ok(batch);
        }
        Ok(Batch {
            views: batch
                .views
                .iter()
                .map(crate::precision::to_channels_last)
                .collect::<Result<_>>()?,
            labels: batch.labels,
            indices: batch.indices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfsup_data::DataError;
    use tch::Kind;

    fn batch(first: i64) -> Batch {
        let x = Tensor::arange(2 * 3 * 4 * 4, (Kind::Float, Device::Cpu)).view([2, 3, 4, 4]);
        Batch {
            views: vec![x + first as f64],
            labels: Tensor::from_slice(&[first, first + 1]),
            indices: Tensor::from_slice(&[first, first + 1]),
        }
    }

    #[test]
    fn on_the_cpu_batches_come_checked_in_order_and_channels_last_when_asked() {
        let items: Vec<std::result::Result<Batch, DataError>> = vec![
            Ok(batch(0)),
            Ok(batch(10)),
            Err(DataError::Config("a broken batch".into())),
            Ok(batch(20)),
        ];
        let mut staged = ToDevice::new(items.into_iter(), Device::Cpu, true).unwrap();
        let mut seen = Vec::new();
        let mut check = |b: &Batch| {
            seen.push(b.indices.int64_value(&[0]));
            match b.indices.int64_value(&[0]) {
                20 => Err(CoreError::Training("label out of range".into())),
                _ => Ok(()),
            }
        };
        let first = staged.next_with(&mut check).unwrap().unwrap();
        assert!(first.views[0].equal(&batch(0).views[0]));
        assert!(crate::precision::is_channels_last(&first.views[0]));
        staged.prefetch(&mut check); // nothing ahead on the CPU
        let second = staged.next_with(&mut check).unwrap().unwrap();
        assert_eq!(second.labels.int64_value(&[1]), 11);
        let broken = staged.next_with(&mut check).unwrap().unwrap_err();
        assert!(broken.to_string().contains("a broken batch"), "{broken}");
        let refused = staged.next_with(&mut check).unwrap().unwrap_err();
        assert!(refused.to_string().contains("label out of range"), "{refused}");
        assert!(staged.next_with(&mut check).is_none());
        assert_eq!(seen, [0, 10, 20], "every batch checked once, on the host, in order");
    }

    /// On a GPU (`cargo test -p selfsup-core --lib -- --ignored stage`): prefetched batches
    /// reach the device equal to the host's, channels-last when asked, in order, with a step's
    /// kernels queued between the prefetch and the hand-over.
    #[test]
    #[ignore = "needs a CUDA device"]
    fn prefetched_batches_reach_cuda_unchanged() {
        let device = Device::Cuda(0);
        let items: Vec<std::result::Result<Batch, DataError>> =
            (0..4).map(|i| Ok(batch(i * 10))).collect();
        let mut staged = ToDevice::new(items.into_iter(), device, true).unwrap();
        let mut got = Vec::new();
        while let Some(b) = staged.next_with(|_| Ok(())) {
            let b = b.unwrap();
            staged.prefetch(|_| Ok(()));
            // A step's worth of work on the compute stream while the next copy runs.
            let w = Tensor::randn([2048, 2048], (Kind::Float, device));
            let _ = w.matmul(&w).sum(Kind::Float);
            assert!(crate::precision::is_channels_last(&b.views[0]));
            got.push(b.views[0].to_device(Device::Cpu));
        }
        assert_eq!(got.len(), 4);
        for (i, v) in got.iter().enumerate() {
            assert!(v.equal(&batch(i as i64 * 10).views[0]), "batch {i}");
        }
    }

    fn loader(alloc: Option<HostAlloc>) -> selfsup_data::Loader {
        let spec = "synthetic:24:16";
        let ds = selfsup_data::open_dataset(spec, selfsup_data::Split::Train, ".".as_ref());
        let views = vec![selfsup_data::Pipeline::simclr(16, &[0.5; 3], &[0.25; 3]); 2];
        let cfg = selfsup_data::LoaderConfig { batch_size: 8, threads: 2, ..Default::default() };
        selfsup_data::Loader::with_host_alloc(ds.unwrap(), views, cfg, alloc).unwrap()
    }

    /// Batches are written into pinned memory by the loader only on CUDA.
    #[test]
    fn only_cuda_batches_are_allocated_pinned() {
        assert!(host_alloc(Device::Cpu).is_none());
        if std::env::var_os("SELFSUP_PINNED_BATCHES").is_none() {
            assert!(host_alloc(Device::Cuda(0)).is_some());
        }
    }

    /// Without a GPU, asking for pinned memory fails with a message naming the tensor (no
    /// crash); with one, the tensor is pinned, of the shape asked.
    #[test]
    fn pinned_memory_without_a_gpu_is_an_error_naming_the_tensor() {
        match empty_pinned(&[2, 3]) {
            Ok(t) => {
                assert!(tch::Cuda::is_available(), "pinned memory without a GPU");
                assert_eq!(t.size(), [2, 3]);
                assert!(t.is_pinned(Device::Cuda(0)));
            }
            Err(e) => {
                assert!(!tch::Cuda::is_available(), "{e}");
                let e = e.to_string();
                assert!(e.contains("a pinned host tensor of shape [2, 3]"), "{e}");
            }
        }
    }

    /// On a GPU: the loader writes each view straight into pinned memory (`host_alloc`), and
    /// those batches reach the device with the values of the plain loader's.
    #[test]
    #[ignore = "needs a CUDA device"]
    fn batches_written_pinned_reach_cuda_unchanged() {
        let device = Device::Cuda(0);
        let plain: Vec<Batch> = loader(None).epoch(0).map(|b| b.unwrap()).collect();
        let pinned = loader(host_alloc(device));
        let mut staged = ToDevice::new(pinned.epoch(0), device, false).unwrap();
        let mut n = 0;
        while let Some(b) = staged.next_with(|b| {
            assert!(b.views.iter().all(|v| v.is_pinned(device)), "pinned on the host");
            Ok(())
        }) {
            let b = b.unwrap();
            staged.prefetch(|_| Ok(()));
            for (v, w) in b.views.iter().zip(&plain[n].views) {
                assert!(v.to_device(Device::Cpu).equal(w), "batch {n}");
            }
            n += 1;
        }
        assert_eq!(n, plain.len());
    }
}
