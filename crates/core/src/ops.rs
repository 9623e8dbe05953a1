//! Tensor ops that tch 0.24 binds only with PyTorch's default arguments, through the C++ shim
//! (`csrc/ops.cpp`): each is one dispatched libtorch op, with its autograd and autocast rules.
use std::os::raw::{c_char, c_int, c_void};

use tch::Tensor;

extern "C" {
    fn selfsup_leaky_relu(
        x: *const c_void,
        slope: f64,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// `torch.nn.functional.leaky_relu(xs, slope)`: `xs` where positive, `slope · xs` elsewhere,
/// as one op forward and one backward (the DCGAN discriminator's activation, slope 0.2).
///
/// # Shapes
/// `xs`: any; returns the same shape, kind and device.
///
/// # Panics
/// When libtorch refuses the input (a kind without the op), with its message; the module
/// interface this serves has no error path.
pub fn leaky_relu(xs: &Tensor, slope: f64) -> Tensor {
    let mut out: *mut c_void = std::ptr::null_mut();
    let mut err = [0u8; 1024];
    // SAFETY: `xs` is a live tensor (tch's `C_tensor` is an `at::Tensor`); `out` receives a new
    // handle on success, which we then own; `err` is writable for its length.
    let rc = unsafe {
        selfsup_leaky_relu(xs.as_ptr().cast(), slope, &mut out, err.as_mut_ptr().cast(), err.len())
    };
    if rc != 0 {
        panic!("leaky_relu: {}", selfsup_dist::shim_message(&err));
    }
    // SAFETY: `out` is a new `at::Tensor` handle that we now own.
    unsafe { Tensor::from_ptr(out.cast()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn leaky_relu_scales_the_negative_side_and_its_gradient() {
        let x = Tensor::from_slice(&[-2.0f32, -0.5, 0.5, 3.0]).set_requires_grad(true);
        let y = leaky_relu(&x, 0.2);
        assert_eq!(Vec::<f32>::try_from(&y).unwrap(), [-0.4, -0.1, 0.5, 3.0]);
        y.sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(&x.grad()).unwrap(), [0.2, 0.2, 1.0, 1.0]);
        let b = Tensor::ones([2, 3], (Kind::BFloat16, Device::Cpu)) * -1.0;
        assert_eq!(leaky_relu(&b, 0.2).kind(), Kind::BFloat16);
    }
}
