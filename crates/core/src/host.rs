//! Traffic between the host and the device inside training and evaluation loops, kept off the
//! per-step path. On CUDA, reading a value back waits for every kernel queued before it, and a
//! copy from pageable host memory to the device waits for the stream too, so one read or one
//! small upload per step makes the host wait for the GPU at every step. Here:
//! - [`read`] reads a scalar back and counts the reads of the calling thread ([`reads`]), so
//!   tests can check that a loop reads once per log line or epoch, not once per step (the
//!   trainer and the probes read through it);
//! - [`upload`] copies a small host tensor (indices, a permutation, a matrix) to the device
//!   from pinned memory without blocking on CUDA; on the CPU it is the tensor itself.
use std::cell::Cell;
use tch::Tensor;

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// The value of the one-element tensor `t` as `f64`, read back to the host (on CUDA this
/// waits for the kernels queued before it). Counted in [`reads`].
pub fn read(t: &Tensor) -> Result<f64, tch::TchError> {
    READS.with(|r| r.set(r.get() + 1));
    t.f_double_value(&[])
}

/// How many values [`read`] has read back on this thread so far.
pub fn reads() -> u64 {
    READS.with(Cell::get)
}

/// `t` (a host tensor) on `device`: on CUDA copied from pinned memory with a non-blocking
/// copy, so the host does not wait for the kernels already queued; on the CPU, `t` itself.
/// The loader's batches take the same path ([`selfsup_data::loader::upload`]).
pub use selfsup_data::loader::upload;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_counted_per_thread_and_uploads_to_the_cpu_are_the_tensor() {
        let before = reads();
        let t = Tensor::from_slice(&[2.5f32]);
        assert_eq!(read(&t).unwrap(), 2.5);
        assert_eq!(read(&t.sum(tch::Kind::Double)).unwrap(), 2.5);
        assert_eq!(reads(), before + 2);
        // Another thread's reads are its own.
        std::thread::spawn(|| {
            assert_eq!(reads(), 0);
            read(&Tensor::from_slice(&[1i64])).unwrap();
            assert_eq!(reads(), 1);
        })
        .join()
        .unwrap();
        assert_eq!(reads(), before + 2);
        // A tensor of two values is refused, not read.
        assert!(read(&Tensor::from_slice(&[1.0f32, 2.0])).is_err());

        let idx = Tensor::from_slice(&[3i64, 1, 2]);
        let up = upload(&idx, tch::Device::Cpu);
        assert!(up.equal(&idx));
        assert_eq!(up.data_ptr(), idx.data_ptr(), "no copy on the CPU");
    }
}
