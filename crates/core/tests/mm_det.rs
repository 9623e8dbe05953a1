//! The matrix products of deterministic runs ([`mm_det`], `csrc/conv_det.cpp`'s `DetMm`) and the
//! dense form of the smallest maps' convolutions on them ([`conv_dense`] with oneDNN off, as in
//! a deterministic run): the same bits at 1, 2 and 3 threads in every pass, within float
//! rounding of float64, and what they leave to the caller. Its own process: libtorch's thread
//! count and oneDNN's switch are process-wide.
use selfsup_core::determinism::set_mkldnn_enabled;
use selfsup_core::encoders::conv::{conv_dense, mm_det};
use selfsup_core::precision::{is_channels_last, to_channels_last};
use tch::{Device, Kind, Tensor};

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-30)
}

/// The output of `f(x, w)` and the gradients to `x` and `w` of `(f(x, w) · g).sum()`, `g` a
/// fixed pattern.
fn passes(x: &Tensor, w: &Tensor, f: impl Fn(&Tensor, &Tensor) -> Tensor) -> Vec<Tensor> {
    let x = x.detach().set_requires_grad(true);
    let w = w.detach().set_requires_grad(true);
    let y = f(&x, &w);
    let g = Tensor::ones_like(&y).cumsum(1, y.kind()).sin();
    let grads = Tensor::run_backward(&[(&y * &g).sum(y.kind())], &[&x, &w], false, false);
    std::iter::once(y.detach()).chain(grads).collect()
}

/// `passes` of `f` at 1 thread, checked to give the same bits at 2 and 3, and to stay within
/// `1e-5` of the largest value of the same passes of `reference` in float64.
fn same_bits_and_values(
    what: &str,
    x: &Tensor,
    w: &Tensor,
    f: impl Fn(&Tensor, &Tensor) -> Tensor,
    reference: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> Vec<Tensor> {
    let at = |threads| {
        tch::set_num_threads(threads);
        passes(x, w, &f)
    };
    let one = at(1);
    for threads in [2, 3] {
        for (i, (a, b)) in one.iter().zip(at(threads)).enumerate() {
            assert!(a.equal(&b), "{what}: pass {i} differs at {threads} threads");
        }
    }
    let want = passes(&x.to_kind(Kind::Double), &w.to_kind(Kind::Double), reference);
    for (i, (a, r)) in one.iter().zip(&want).enumerate() {
        let e = max_rel(a, r);
        assert!(e < 1e-5, "{what}: pass {i} off by {e:e} of the largest value");
    }
    one
}

#[test]
fn same_bits_at_any_thread_count_and_float64s_values() {
    let opts = (Kind::Float, Device::Cpu);
    // Relative patch's conv3 and conv2 as products (256 patches), sizes off the blocks of 64
    // columns, one row, fewer columns than a block.
    for (n, a, b) in [(256, 256, 384), (40, 384, 1024), (37, 100, 130), (1, 9, 5)] {
        tch::manual_seed(n + a);
        let x = Tensor::randn([n, a], opts);
        let w = Tensor::randn([a, b], opts) * 0.1;
        let det = |x: &Tensor, w: &Tensor| mm_det(x, w).unwrap().expect("taken");
        let got = same_bits_and_values(&format!("{n}x{a} by {a}x{b}"), &x, &w, det, |x, w| x.mm(w));
        assert_eq!(got[0].size(), [n, b]);
    }
    // The dense convolutions of a deterministic run: 3×3 at 2×2 and 1×1, 5×5 at 4×4 and 3×3,
    // channels-last and NCHW, with [`mm_det`]'s products.
    set_mkldnn_enabled(false);
    for (r, c, k, side, n, channels_last) in [
        (3, 64, 96, 2, 40, true),
        (3, 96, 64, 2, 40, false),
        (3, 6, 5, 1, 3, false),
        (5, 24, 64, 4, 33, true),
        (5, 5, 7, 3, 7, false),
    ] {
        tch::manual_seed(r * side + n);
        let mut x = Tensor::randn([n, c, side, side], opts);
        let mut w = Tensor::randn([k, c, r, r], opts) * 0.2;
        if channels_last {
            x = to_channels_last(&x).unwrap();
            w = to_channels_last(&w).unwrap();
        }
        let what = format!("{r}x{r} {c}->{k} at {side}x{side}, {n} images, cl {channels_last}");
        let dense = |x: &Tensor, w: &Tensor| conv_dense(x, w).expect("taken");
        let pad = (r - 1) / 2;
        let direct = |x: &Tensor, w: &Tensor| x.conv2d(w, None::<Tensor>, 1, pad, 1, 1);
        let got = same_bits_and_values(&what, &x, &w, dense, direct);
        // The output keeps the input's layout (the input's gradient is channels-last either
        // way: the backward pass of NCHW's copy into that order).
        assert_eq!(is_channels_last(&got[0]) && side > 1, channels_last && side > 1, "{what}");
    }
    set_mkldnn_enabled(true);
    tch::set_num_threads(1);
}

#[test]
fn leaves_other_kinds_and_shapes_to_the_caller_and_names_bad_sizes() {
    let opts = (Kind::Float, Device::Cpu);
    let (x, w) = (Tensor::randn([4, 3], opts), Tensor::randn([3, 2], opts));
    assert!(mm_det(&x, &w).unwrap().is_some());
    let double = (x.to_kind(Kind::Double), w.to_kind(Kind::Double));
    assert!(mm_det(&double.0, &double.1).unwrap().is_none(), "float64");
    assert!(mm_det(&x.narrow(0, 0, 0), &w).unwrap().is_none(), "no rows");
    assert!(mm_det(&x.unsqueeze(0), &w).unwrap().is_none(), "3-d");
    let e = mm_det(&x, &w.narrow(0, 0, 2)).unwrap_err();
    assert!(e.contains("deterministic product") && e.contains("[4, 3]"), "{e}");
}
