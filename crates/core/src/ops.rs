//! Tensor ops through the C++ shim: ops that tch 0.24 binds only with PyTorch's default
//! arguments (`csrc/ops.cpp`: each one dispatched libtorch op, with its autograd and autocast
//! rules), the fused ReLU + dropout of the patch methods' heads (`csrc/relu_dropout.cpp`) and
//! the encoders' max and average pools on CPU maps (`csrc/max_pool.cpp`, `csrc/avg_pool.cpp`).
use std::os::raw::{c_char, c_int, c_void};

use tch::{Device, Kind, Tensor};

extern "C" {
    fn selfsup_leaky_relu(
        x: *const c_void,
        slope: f64,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_leaky_relu_(x: *mut c_void, slope: f64, err: *mut c_char, err_len: usize) -> c_int;
    fn selfsup_relu_dropout(
        x: *const c_void,
        p: f64,
        draw: c_int,
        key: u64,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_max_pool2d(
        x: *const c_void,
        k: i64,
        s: i64,
        p: i64,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_avg_pool2d(
        x: *const c_void,
        k: i64,
        s: i64,
        p: i64,
        include_pad: c_int,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_native_bf16(enable: c_int) -> c_int;
}

/// Runs `call`, a C++ shim function that puts a new tensor handle in its `out` argument and
/// libtorch's message in its `err` buffer (of the given length): `Err` with the message when it
/// returns a negative code, else the tensor it made, or `None` when it made none (a shim that
/// may leave an op to the caller returns 0 without a handle).
pub(crate) fn shim_tensor(
    call: impl FnOnce(*mut *mut c_void, *mut c_char, usize) -> c_int,
) -> Result<Option<Tensor>, String> {
    let mut out: *mut c_void = std::ptr::null_mut();
    let mut err = [0u8; 1024];
    let rc = call(&mut out, err.as_mut_ptr().cast(), err.len());
    if rc < 0 {
        return Err(selfsup_dist::shim_message(&err));
    }
    if out.is_null() {
        return Ok(None);
    }
    // SAFETY: a non-null `out` is a new `at::Tensor` handle the shim made, which we now own.
    Ok(Some(unsafe { Tensor::from_ptr(out.cast()) }))
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
    // SAFETY: `xs` is a live tensor (tch's `C_tensor` is an `at::Tensor`); `out` and `err` are
    // `shim_tensor`'s, valid for the call.
    shim_tensor(|out, err, len| unsafe {
        selfsup_leaky_relu(xs.as_ptr().cast(), slope, out, err, len)
    })
    .unwrap_or_else(|e| panic!("leaky_relu: {e}"))
    .expect("leaky_relu: the shim made no tensor")
}

/// [`leaky_relu`] in place, as `nn.LeakyReLU(slope, inplace=True)`: no new tensor, and its
/// backward pass reads the result, not the input (libtorch refuses it under autograd where
/// `slope` ≤ 0). `xs` must not be needed as it was by another op's backward pass (autograd's
/// version check makes that an error at the backward pass, not a wrong gradient).
///
/// # Shapes
/// `xs`: any; changed in place.
///
/// # Panics
/// As [`leaky_relu`], and where libtorch refuses the op in place (a leaf that requires grad).
pub fn leaky_relu_(xs: &mut Tensor, slope: f64) {
    let mut err = [0u8; 1024];
    // SAFETY: `xs` is a live tensor, borrowed mutably for the call; `err` outlives it.
    let rc = unsafe {
        selfsup_leaky_relu_(xs.as_mut_ptr().cast(), slope, err.as_mut_ptr().cast(), err.len())
    };
    if rc < 0 {
        panic!("leaky_relu_: {}", selfsup_dist::shim_message(&err));
    }
}

/// `xs.relu().dropout(p, train)` (Srivastava et al. 2014: in training each value kept with
/// probability `1 - p` and scaled by `1 / (1 - p)`, else 0; in evaluation just ReLU).
///
/// In training, on a contiguous CPU tensor of float or bfloat16 with `0 < p < 1`, this is one
/// fused autograd function (`csrc/relu_dropout.cpp`): one pass forward, one backward, and a
/// mask hashed from each value's index and one key drawn from libtorch's default generator,
/// instead of libtorch's serial Bernoulli draws. A seeded run gets the same masks whatever
/// the thread count; they are not `torch.bernoulli`'s. Anything else (CUDA, other kinds,
/// strided views, `p` of 0 or 1) takes tch's ReLU and dropout. No double backward
/// (`create_graph`: an error, not a wrong gradient).
///
/// # Shapes
/// `xs`: any; returns the same shape and kind.
///
/// # Panics
/// When the shim refuses the input, with its message (not expected: the fused path is taken
/// only where it applies); the module interface this serves has no error path.
pub fn relu_dropout(xs: &Tensor, p: f64, train: bool) -> Tensor {
    fused_relu_dropout(xs, p, train, None)
}

/// [`relu_dropout`] with the mask of `key` (tests) or, for `None`, of a key drawn from
/// libtorch's default generator.
fn fused_relu_dropout(xs: &Tensor, p: f64, train: bool, key: Option<u64>) -> Tensor {
    let fusable = train
        && p > 0.0
        && p < 1.0
        && xs.device() == Device::Cpu
        && matches!(xs.kind(), Kind::Float | Kind::BFloat16)
        && xs.is_contiguous();
    if !fusable {
        return xs.relu().dropout(p, train);
    }
    // SAFETY: as in `leaky_relu`.
    shim_tensor(|out, err, len| unsafe {
        let draw = c_int::from(key.is_none());
        selfsup_relu_dropout(xs.as_ptr().cast(), p, draw, key.unwrap_or(0), out, err, len)
    })
    .unwrap_or_else(|e| panic!("fused ReLU + dropout: {e}"))
    .expect("fused ReLU + dropout: the shim made no tensor")
}

/// `xs.max_pool2d([k, k], [s, s], [p, p], [1, 1], false)`: the maximum of each `k × k` window
/// at stride `s`, windows clipped to the map where they reach into the padding `p` (the pools
/// of the NIN, AlexNet and ResNet's stem).
///
/// On a float or bfloat16 CPU tensor in NCHW or channels-last order this is
/// `csrc/max_pool.cpp`'s kernel, forward and backward: each row's maxima over the windows'
/// columns, then down the windows' rows, branch-free, vectorized over the windows of a row
/// (NCHW) or over the channels (channels-last); the backward pass in cache, channels-last as a
/// gather over the windows covering each position. On 2 cores of an AMX Xeon libtorch's NCHW
/// kernel took 7.9 ms for a float `(256, 8, 32, 32)`, and its channels-last one 2.1 ms in
/// bfloat16 (a value at a time below 32 channels). Values, indices and gradients are
/// libtorch's bit for bit (the first maximum in row-major order, the last NaN where there is
/// one; the gradients' sums in libtorch's order and rounding). Anything else (CUDA, other
/// kinds, other strides) is libtorch's `max_pool2d`. No double backward.
///
/// # Shapes
/// `xs`: `(N, C, H, W)`; returns `(N, C, (H + 2p - k) / s + 1, (W + 2p - k) / s + 1)`, in the
/// memory order of `xs`.
///
/// # Panics
/// Where the window does not fit (`2p > k`, a map smaller than the window), with the shim's or
/// libtorch's message; the module interface this serves has no error path.
pub fn max_pool2d(xs: &Tensor, k: i64, s: i64, p: i64) -> Tensor {
    let own = xs.device() == Device::Cpu && matches!(xs.kind(), Kind::Float | Kind::BFloat16);
    if own {
        // SAFETY: as in `leaky_relu`.
        let ours = shim_tensor(|out, err, len| unsafe {
            selfsup_max_pool2d(xs.as_ptr().cast(), k, s, p, out, err, len)
        })
        .unwrap_or_else(|e| panic!("max_pool2d: {e}"));
        // None: strides in neither order, left to libtorch.
        if let Some(y) = ours {
            return y;
        }
    }
    xs.max_pool2d([k, k], [s, s], [p, p], [1, 1], false)
}

/// `xs.avg_pool2d([k, k], [s, s], [p, p], false, count_include_pad, None)`: the mean of each
/// `k × k` window at stride `s`, the divisor counting the padding `p` or not (the NIN's second
/// pool, `nn.AvgPool2d(3, 2, 1)`).
///
/// On a float or bfloat16 channels-last CPU tensor this is `csrc/avg_pool.cpp`'s kernel,
/// forward and backward: output row by output row, tap by tap over all the row's windows,
/// vectorized over the channels, the backward pass input row by input row in cache
/// (libtorch's channels-last kernel goes a value at a time below 32 bfloat16 channels, and
/// its backward pass took 4 ms for a bfloat16 `(256, 16, 16, 16)` on 2 cores of an AMX Xeon).
/// Values and gradients are libtorch's bit for bit (its sums' order, its divisions, its
/// bfloat16 rounding of each addition in the backward pass). Anything else (NCHW, CUDA, other
/// kinds, other strides) is libtorch's `avg_pool2d`. No double backward.
///
/// # Shapes
/// `xs`: `(N, C, H, W)`; returns `(N, C, (H + 2p - k) / s + 1, (W + 2p - k) / s + 1)`, in the
/// memory order of `xs`.
///
/// # Panics
/// Where the window does not fit (`2p > k`, a map smaller than the window), with the shim's or
/// libtorch's message; the module interface this serves has no error path.
pub fn avg_pool2d(xs: &Tensor, k: i64, s: i64, p: i64, count_include_pad: bool) -> Tensor {
    let own = xs.device() == Device::Cpu && matches!(xs.kind(), Kind::Float | Kind::BFloat16);
    if own {
        let pad = c_int::from(count_include_pad);
        // SAFETY: as in `leaky_relu`.
        let ours = shim_tensor(|out, err, len| unsafe {
            selfsup_avg_pool2d(xs.as_ptr().cast(), k, s, p, pad, out, err, len)
        })
        .unwrap_or_else(|e| panic!("avg_pool2d: {e}"));
        // None: strides in neither order, left to libtorch.
        if let Some(y) = ours {
            return y;
        }
    }
    xs.avg_pool2d([k, k], [s, s], [p, p], false, count_include_pad, None::<i64>)
}

/// Whether the fused CPU kernels (batch norm + ReLU, ReLU + dropout) round their bfloat16
/// results with the CPU's own conversion (AVX512-BF16's `vcvtneps2bf16`, on by default where
/// the CPU has it) rather than in integer arithmetic: `Some(on)` switches it for the whole
/// process, `None` asks; returns whether it is in use. Both round to nearest even: the bits
/// differ only where the result is a subnormal bfloat16 (flushed to zero by the CPU) and in a
/// NaN's payload. For tests and measurements that compare the two.
#[doc(hidden)]
pub fn native_bf16_rounding(set: Option<bool>) -> bool {
    let arg = set.map_or(-1, c_int::from);
    // SAFETY: the shim only reads and writes an atomic flag.
    unsafe { selfsup_native_bf16(arg) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn leaky_relu_in_place_gives_the_same_values_and_gradient() {
        let x = Tensor::from_slice(&[-2.0f32, -0.5, 0.5, 3.0]).set_requires_grad(true);
        let mut h = &x * 2.0;
        let before = h.data_ptr();
        leaky_relu_(&mut h, 0.2);
        assert_eq!(h.data_ptr(), before, "in place");
        assert_eq!(Vec::<f32>::try_from(&h).unwrap(), [-0.8, -0.2, 1.0, 6.0]);
        h.sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(&x.grad()).unwrap(), [0.4, 0.4, 2.0, 2.0]);
        // Where the input is needed as it was (`exp`'s backward reads its result, here the
        // tensor changed), the backward pass fails instead of giving a wrong gradient.
        let y = Tensor::from_slice(&[-1.0f32, 1.0]).set_requires_grad(true);
        let mut e = y.exp();
        let keep = e.shallow_clone();
        leaky_relu_(&mut e, 0.2);
        let r = std::panic::catch_unwind(|| (&keep + 0.0).sum(Kind::Float).backward());
        assert!(r.is_err(), "modified in place: autograd refuses");
        // A leaf that requires grad: libtorch's message, not a wrong result.
        let mut leaf = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| leaky_relu_(&mut leaf, 0.2)));
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.starts_with("leaky_relu_: ") && msg.contains("leaf"), "{msg}");
    }

    fn floats(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1).to_kind(Kind::Float)).unwrap()
    }

    /// `dropout(relu(x), p)` with `key` and the gradient of `Σ g ⊙ y`, over values from a
    /// formula (half of them negative), as floats.
    fn keyed(n: i64, kind: Kind, p: f64, key: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let wave = |f: f64| (Tensor::arange(n, (Kind::Float, Device::Cpu)) * f).sin();
        let x = (wave(0.7) * 2.0 + wave(0.013)).to_kind(kind).set_requires_grad(true);
        let g = (wave(1.3) + 1.5).to_kind(kind);
        let y = fused_relu_dropout(&x, p, true, Some(key));
        assert_eq!(y.kind(), kind);
        (&y * &g).sum(Kind::Float).backward();
        (floats(&x.relu()), floats(&y), floats(&g), floats(&x.grad()))
    }

    #[test]
    fn relu_dropout_keeps_one_minus_p_of_the_values_scaled() {
        let n = 200_003;
        for p in [0.5, 0.3] {
            let scale = (1.0 / (1.0 - p)) as f32;
            let (r, y, g, dx) = keyed(n, Kind::Float, p, 0x5eed);
            let kept: Vec<bool> = r.iter().zip(&y).map(|(r, y)| *r > 0.0 && *y != 0.0).collect();
            for i in 0..r.len() {
                // Kept: ReLU's value scaled (exactly); dropped or cut by ReLU: 0.
                assert!(y[i] == r[i] * scale || y[i] == 0.0, "value {i}: {} from {}", y[i], r[i]);
                // The gradient flows where the value went through, scaled the same.
                let want = if y[i] > 0.0 { g[i] * scale } else { 0.0 };
                assert_eq!(dx[i], want, "gradient {i}");
            }
            // Among the positive values, the kept fraction is 1 - p, also for neighbours
            // together (the hash leaves no pattern between adjacent indices): within 5 sigma.
            let positive: Vec<usize> = (0..r.len()).filter(|&i| r[i] > 0.0).collect();
            let frac = positive.iter().filter(|&&i| kept[i]).count() as f64 / positive.len() as f64;
            let sigma = (p * (1.0 - p) / positive.len() as f64).sqrt();
            assert!((frac - (1.0 - p)).abs() < 5.0 * sigma, "p {p}: kept {frac}");
            let pairs: Vec<usize> = positive.iter().copied().filter(|&i| r[i + 1] > 0.0).collect();
            let both = pairs.iter().filter(|&&i| kept[i] && kept[i + 1]).count() as f64;
            let q = (1.0 - p) * (1.0 - p);
            let sigma = (q * (1.0 - q) / pairs.len() as f64).sqrt();
            let joint = both / pairs.len() as f64;
            assert!((joint - q).abs() < 5.0 * sigma, "p {p}: neighbours kept together {joint}");
        }
    }

    #[test]
    fn relu_dropout_masks_follow_the_key_not_the_thread_count() {
        let threads = tch::get_num_threads();
        tch::set_num_threads(1);
        let one = keyed(50_000, Kind::Float, 0.5, 42);
        tch::set_num_threads(3);
        let three = keyed(50_000, Kind::Float, 0.5, 42);
        tch::set_num_threads(threads);
        assert!(one.1 == three.1 && one.3 == three.3, "same key, other thread count");
        let other = keyed(50_000, Kind::Float, 0.5, 43);
        assert!(one.1 != other.1, "another key, another mask");
        // Drawn keys: two calls in a row draw two masks.
        let x = Tensor::ones([4096], (Kind::Float, Device::Cpu));
        assert!(floats(&relu_dropout(&x, 0.5, true)) != floats(&relu_dropout(&x, 0.5, true)));
        // Evaluation, p = 0 and strided input take ReLU (and tch's dropout).
        let x = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([3, 4]) - 5.0;
        assert_eq!(floats(&relu_dropout(&x, 0.5, false)), floats(&x.relu()));
        assert_eq!(floats(&relu_dropout(&x, 0.0, true)), floats(&x.relu()));
        let strided = relu_dropout(&x.tr(), 0.5, true);
        assert_eq!(strided.size(), [4, 3]);
    }

    #[test]
    fn relu_dropout_in_bfloat16_masks_as_float_and_rounds_as_the_cpu_would() {
        let (_, y32, _, _) = keyed(30_001, Kind::Float, 0.5, 7);
        let (r, y, _, dx) = keyed(30_001, Kind::BFloat16, 0.5, 7);
        // The same mask (the index and key decide it, not the values).
        for i in 0..y.len() {
            assert_eq!(y[i] == 0.0, y32[i] == 0.0 || r[i] <= 0.0, "value {i}");
        }
        if native_bf16_rounding(None) {
            native_bf16_rounding(Some(false));
            let (_, ys, _, dxs) = keyed(30_001, Kind::BFloat16, 0.5, 7);
            assert!(native_bf16_rounding(Some(true)));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&y) == bits(&ys) && bits(&dx) == bits(&dxs), "the two roundings differ");
        }
    }

    /// The pooled values of `x` and the gradient of `Σ g ⊙ y` for an irregular float `g` of
    /// magnitude up to 3 (a function of the position, so that tests running beside each other
    /// do not draw from the same generator; it reaches the pool in `x`'s kind), `y = pool(x)`.
    fn pooled_by(x: &Tensor, pool: impl Fn(&Tensor) -> Tensor) -> (Tensor, Tensor) {
        let x = x.detach().set_requires_grad(true);
        let y = pool(&x);
        let n = y.numel() as i64;
        let g = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.7311)
            .sin()
            .view(y.size().as_slice())
            * 3.0;
        (&y * &g).sum(Kind::Float).backward();
        (y.detach(), x.grad())
    }

    /// [`pooled_by`] [`max_pool2d`] (`ours`) or libtorch's `max_pool2d`.
    fn pooled(x: &Tensor, k: i64, s: i64, p: i64, ours: bool) -> (Tensor, Tensor) {
        pooled_by(x, |x| {
            if ours {
                max_pool2d(x, k, s, p)
            } else {
                x.max_pool2d([k, k], [s, s], [p, p], [1, 1], false)
            }
        })
    }

    /// Whether `a` and `b` have NaN at the same places and the same bits elsewhere.
    fn same_bits_but_nan(a: &Tensor, b: &Tensor) -> bool {
        use crate::determinism::same_bits;
        let nan = a.isnan();
        nan.equal(&b.isnan()) && same_bits(&a.masked_fill(&nan, 0.0), &b.masked_fill(&nan, 0.0))
    }

    #[test]
    fn avg_pool_gives_libtorchs_values_and_gradients_bit_for_bit() {
        use crate::determinism::same_bits;
        use crate::precision::{is_channels_last, to_channels_last};
        tch::manual_seed(13);
        // The NIN's pool, odd and even sides, every padding the kernels allow, windows clipped
        // at the map's ends (where the two divisors differ), every block of channels.
        let cases = [
            ([2, 16, 16, 16], 3, 2, 1),
            ([3, 2, 15, 17], 3, 2, 0),
            ([1, 4, 13, 13], 3, 2, 1),
            ([2, 2, 7, 9], 2, 2, 1),
            ([2, 3, 3, 3], 3, 1, 1),
            ([1, 1, 1, 1], 3, 2, 1),
            ([2, 3, 11, 8], 5, 3, 2),
            ([2, 13, 9, 10], 3, 2, 1),
            ([1, 40, 8, 8], 3, 2, 1),
            ([2, 24, 7, 7], 4, 1, 2),
            ([2, 8, 1, 2], 5, 3, 2),
        ];
        for (size, k, s, p) in cases {
            let x = Tensor::randn(size, (Kind::Float, Device::Cpu));
            // A NaN and an infinity: where they reach, the same NaN and infinities.
            let n = x.numel() as i64;
            let flat = x.view([-1]);
            for (i, v) in [(n / 3, f64::NAN), (n / 2, f64::INFINITY)] {
                if n > 8 {
                    let _ = flat.narrow(0, i, 1).fill_(v);
                }
            }
            for (kind, cl, pad) in [
                (Kind::Float, false, true),
                (Kind::Float, true, true),
                (Kind::BFloat16, false, true),
                (Kind::BFloat16, true, true),
                (Kind::Float, false, false),
                (Kind::BFloat16, true, false),
            ] {
                let x = x.to_kind(kind);
                let x = if cl { to_channels_last(&x).unwrap() } else { x };
                let what = format!("{size:?} k {k} s {s} p {p}, {kind:?}, cl {cl}, pad {pad}");
                let theirs =
                    |x: &Tensor| x.avg_pool2d([k, k], [s, s], [p, p], false, pad, None::<i64>);
                let (y0, g0) = pooled_by(&x, theirs);
                let (y1, g1) = pooled_by(&x, |x| avg_pool2d(x, k, s, p, pad));
                // libtorch's NaN bits in bfloat16 channels-last depend on the lane.
                assert!(same_bits_but_nan(&y0, &y1), "values, {what}");
                assert!(same_bits_but_nan(&g0, &g1), "gradient, {what}");
                if kind == Kind::Float {
                    assert!(same_bits(&y0, &y1) && same_bits(&g0, &g1), "NaN bits, {what}");
                }
                assert_eq!(is_channels_last(&y1), is_channels_last(&y0), "{what}");
                assert_eq!(is_channels_last(&g1), is_channels_last(&g0), "{what}");
            }
        }
        // NCHW, other strides and other kinds are libtorch's; a window that does not fit, the
        // shim's message.
        let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let strided = x.transpose(2, 3);
        let theirs = strided.avg_pool2d([3, 3], [2, 2], [1, 1], false, true, None::<i64>);
        assert!(same_bits(&avg_pool2d(&strided, 3, 2, 1, true), &theirs));
        assert_eq!(avg_pool2d(&x.to_kind(Kind::Double), 3, 2, 1, true).kind(), Kind::Double);
        let cl = to_channels_last(&x).unwrap();
        let r = std::panic::catch_unwind(|| avg_pool2d(&cl, 3, 2, 2, true));
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.starts_with("avg_pool2d: ") && msg.contains("padding"), "{msg}");
    }

    #[test]
    fn max_pool_gives_libtorchs_values_and_gradients_bit_for_bit() {
        use crate::determinism::same_bits;
        use crate::precision::{is_channels_last, to_channels_last};
        tch::manual_seed(3);
        // Odd and even sides, every padding the kernels allow, maps the size of the window;
        // channel counts that take every block of the channels-last loops (16, 8, one).
        let cases = [
            ([2, 3, 32, 32], 3, 2, 1),
            ([3, 2, 15, 17], 3, 2, 0),
            ([1, 4, 13, 13], 3, 2, 1),
            ([2, 2, 7, 9], 2, 2, 0),
            ([2, 2, 3, 3], 3, 1, 1),
            ([1, 1, 1, 1], 3, 2, 1),
            ([2, 3, 11, 8], 5, 3, 2),
            ([2, 3, 8, 16], 2, 2, 0),
            ([2, 2, 6, 10], 3, 1, 1),
            ([1, 2, 55, 55], 3, 2, 0),
            ([4, 3, 16, 16], 3, 2, 1),
            ([2, 8, 12, 12], 3, 2, 1),
            ([2, 13, 9, 10], 3, 2, 1),
            ([1, 40, 8, 8], 3, 2, 1),
            ([2, 24, 7, 7], 3, 1, 1),
            ([2, 16, 11, 11], 5, 3, 2),
            // Narrower than the window's taps past the padding: taps beyond the map's end in
            // every window (the channels-last backward pass's column range empty).
            ([2, 8, 1, 2], 5, 3, 2),
            // One pixel: strides of both orders; the output's layout is libtorch's choice
            // (channels-last where the input's strides look it; found by `pool_props`).
            ([1, 2, 1, 1], 4, 1, 2),
            // Rows as one (width Wo · s) narrower than the padding: the first whole window
            // is past the first row (read before the map before; `cargo xtask sanitize`).
            ([2, 3, 3, 1], 5, 1, 2),
            ([2, 3, 4, 2], 7, 2, 3),
        ];
        for (case, (size, k, s, p)) in cases.into_iter().enumerate() {
            let x = Tensor::randn(size, (Kind::Float, Device::Cpu));
            // Every other case in whole numbers from -2 to 2: ties in most windows.
            let x = if case % 2 == 1 { x.round().clamp(-2.0, 2.0) } else { x };
            // Ties, infinities and NaNs: the first maximum, windows of -inf alone, the last NaN.
            let _ = x.narrow(2, 0, 1).fill_(1.0);
            let n = x.numel() as i64;
            let flat = x.view([-1]);
            for (i, v) in [(n / 3, f64::NAN), (n / 3 + 1, f64::NAN), (n / 2, f64::INFINITY)] {
                if i < n {
                    let _ = flat.narrow(0, i, 1).fill_(v);
                }
            }
            if size[3] > 1 {
                let _ = x.narrow(3, size[3] - 1, 1).fill_(f64::NEG_INFINITY);
            }
            for kind in [Kind::Float, Kind::BFloat16] {
                for cl in [false, true] {
                    let x = x.to_kind(kind);
                    let x = if cl { to_channels_last(&x).unwrap() } else { x };
                    let what = format!("{size:?} k {k} s {s} p {p}, {kind:?}, channels-last {cl}");
                    let (y0, g0) = pooled(&x, k, s, p, false);
                    let (y1, g1) = pooled(&x, k, s, p, true);
                    // NaN where libtorch has NaN, the same bits elsewhere: libtorch's NaN
                    // bits in bfloat16 channels-last depend on the lane (0xffff in its
                    // vectors of 32 channels, 0x7fc0 past them), ours are 0x7fc0.
                    assert!(same_bits_but_nan(&y0, &y1), "values, {what}");
                    // A random weight a window: the gradient lands where each window's index
                    // points, summed where windows overlap (rounded each time in bfloat16).
                    assert!(same_bits(&g0, &g1), "gradient, {what}");
                    assert_eq!(is_channels_last(&y1), is_channels_last(&y0), "{what}");
                    assert_eq!(is_channels_last(&g1), is_channels_last(&g0), "{what}");
                }
            }
        }
        // Without gradients (evaluation) and across thread counts: the same values.
        let x = Tensor::randn([8, 16, 32, 32], (Kind::Float, Device::Cpu));
        let threads = tch::get_num_threads();
        let y1 = tch::no_grad(|| max_pool2d(&x, 3, 2, 1));
        tch::set_num_threads(3);
        let y3 = max_pool2d(&x, 3, 2, 1);
        tch::set_num_threads(threads);
        assert!(same_bits(&y1, &y3));
        assert!(same_bits(&y1, &x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)));
        let xb = to_channels_last(&x.to_kind(Kind::BFloat16)).unwrap();
        let (yb1, gb1) = pooled(&xb, 3, 2, 1, true);
        tch::set_num_threads(3);
        let (yb3, gb3) = pooled(&xb, 3, 2, 1, true);
        tch::set_num_threads(threads);
        assert!(same_bits(&yb1, &yb3) && same_bits(&gb1, &gb3));
        // The layout and kind come back as given; other strides and kinds are libtorch's.
        let cl = to_channels_last(&x).unwrap();
        assert!(is_channels_last(&max_pool2d(&cl, 3, 2, 1)));
        assert_eq!(max_pool2d(&x.to_kind(Kind::BFloat16), 3, 2, 1).kind(), Kind::BFloat16);
        let strided = x.transpose(2, 3);
        assert!(same_bits(
            &max_pool2d(&strided, 3, 2, 1),
            &strided.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
        ));
        let double = x.to_kind(Kind::Double);
        assert_eq!(max_pool2d(&double, 3, 2, 1).kind(), Kind::Double);
        // A window that does not fit: libtorch's message, through the shim.
        let r = std::panic::catch_unwind(|| max_pool2d(&x, 3, 2, 2));
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.starts_with("max_pool2d: ") && msg.contains("padding"), "{msg}");
    }
}
