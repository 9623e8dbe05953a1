//! Full sums and means of a tensor, the same bits at any thread count in a deterministic CPU run.
//!
//! libtorch sums a tensor of more than 32,768 values into one number in per-thread parts (ATen's
//! `two_pass_reduction`: one partial sum a thread, then the partials), so the bits of a loss such
//! as `x.square().mean()` depend on the thread count. The gradient does not (a sum's gradient is
//! all ones), but the loss a run logs does: the denoising autoencoder's reconstruction loss, a
//! mean over `(128, 3, 32, 32)`, read 0.2302303314 at 1 thread and 0.2302303463 at 2 after 8
//! deterministic steps whose weights were the same bits (2 cores of a Xeon with AMX, family 6,
//! model 167, 2026-12-07).
//!
//! [`sum_all`] sums such a tensor in rows of [`ROW`] values instead: a sum over the last dimension
//! of `(n / ROW, ROW)`, which ATen splits among threads by rows, each row summed whole by one
//! thread; then the row sums (by `sum_all` again where they are more than 32,768) and the
//! `n % ROW` values left over (fewer than 32,768, summed on one thread). The order is a function
//! of the size alone. Outside deterministic CPU
//! runs (and with `SELFSUP_CONV_DET=off`, as for the products) it is libtorch's `sum`, bit for
//! bit; so is a tensor of at most 32,768 values, which libtorch sums on one thread.
use crate::encoders::conv;
use tch::{Device, Kind, Tensor};

/// The number of values ATen sums on one thread (`at::internal::GRAIN_SIZE`): a tensor this
/// large or smaller is summed serially at any thread count.
const GRAIN: i64 = 32_768;

/// The values summed a row on the deterministic path.
pub const ROW: i64 = 4_096;

/// The sum of every value of `x`, in f32 (as `x.sum(Kind::Float)`), with a thread-count-free
/// order in a deterministic CPU run (module docs).
///
/// # Shapes
/// Any shape; returns a scalar (f32).
pub fn sum_all(x: &Tensor) -> Tensor {
    if !in_rows(x) {
        return x.sum(Kind::Float);
    }
    let n = x.numel() as i64;
    let flat = x.reshape([-1]);
    let rows = n / ROW;
    let row_sums = flat.narrow(0, 0, rows * ROW).view([rows, ROW]).sum_dim_intlist(
        [1i64].as_slice(),
        false,
        Kind::Float,
    );
    let mut total = sum_all(&row_sums);
    if n > rows * ROW {
        total += flat.narrow(0, rows * ROW, n - rows * ROW).sum(Kind::Float);
    }
    total
}

/// The mean of every value of `x`, in f32 (as `x.mean(Kind::Float)`): [`sum_all`] divided by
/// the number of values.
///
/// # Shapes
/// Any shape; returns a scalar (f32).
pub fn mean_all(x: &Tensor) -> Tensor {
    if !in_rows(x) {
        return x.mean(Kind::Float);
    }
    sum_all(x) / x.numel() as f64
}

/// Whether [`sum_all`] sums `x` in rows: more than [`GRAIN`] values on the CPU in a
/// deterministic run with the deterministic paths on.
fn in_rows(x: &Tensor) -> bool {
    x.numel() as i64 > GRAIN && x.device() == Device::Cpu && conv::det_paths_on()
}
