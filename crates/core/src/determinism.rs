//! Bit-for-bit reproducibility on the CPU whatever the thread count.
//!
//! libtorch's forward passes on the CPU give the same bits at any thread count, but oneDNN's
//! convolution backward splits the weight-gradient sum across threads. With
//! `train.deterministic = true` (the default) the trainer turns oneDNN off, so a seed
//! reproduces a run bit for bit at 1, 2 or 16 threads; measured here on 2 cores (3 conv layers
//! of 96 channels at 32×32, batch 128, forward + backward) that costs about 4× in speed
//! (36 → 8 images/s), and bf16 autocast loses its AMX kernels. With `deterministic = false` a
//! run is still bit-for-bit reproducible at the same thread count (which the saved config
//! records). On CUDA the switch does nothing.
use std::os::raw::c_int;

extern "C" {
    fn selfsup_set_mkldnn_enabled(enabled: c_int) -> c_int;
}

/// Enables or disables oneDNN (mkldnn) kernels process-wide; returns the previous setting.
pub fn set_mkldnn_enabled(enabled: bool) -> bool {
    // SAFETY: a plain call into the shim, which catches every C++ exception.
    let prev = unsafe { selfsup_set_mkldnn_enabled(c_int::from(enabled)) };
    prev == 1
}
