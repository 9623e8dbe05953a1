//! The convolution of deterministic runs ([`conv_det`], `csrc/conv_det.cpp`): the same bits at
//! 1, 2 and 3 threads in every pass, of convolutions and transposed ones, within float rounding
//! of libtorch's float64 convolution, at 7, 16 and 40 images, and what it leaves to libtorch.
//! Its own process: libtorch's thread count is process-wide.
use selfsup_core::encoders::conv::{conv_det, Geometry};
use selfsup_core::precision::{
    autocast, cpu_supports_bf16, is_channels_last, to_channels_last, Precision,
};
use tch::{Device, Kind, Tensor};

/// A layer: filter side, stride, padding, dilation, groups, channels in and out, input side,
/// with a bias, and the output padding of a transposed one.
type Layer = (i64, i64, i64, i64, i64, i64, i64, i64, bool, Option<i64>);

const LAYERS: [Layer; 11] = [
    (1, 1, 0, 1, 1, 13, 8, 8, false, None),
    (3, 1, 1, 1, 1, 8, 12, 8, false, None),
    (5, 1, 2, 1, 1, 3, 16, 12, false, None),
    (3, 2, 1, 1, 1, 8, 16, 9, false, None),
    (3, 1, 1, 1, 1, 6, 10, 7, true, None),
    (3, 1, 2, 2, 1, 8, 8, 8, false, None),
    (3, 1, 1, 1, 2, 8, 12, 6, true, None),
    // Transposed: DCGAN's up-convolution (4×4, stride 2, padding 1), one with an output
    // padding and a bias, one of two groups with a dilation, and one whose output padding
    // oneDNN refuses (not below the stride: libtorch's reference kernel on each piece, its
    // products held to one MKL thread).
    (4, 2, 1, 1, 1, 8, 12, 6, false, Some(0)),
    (3, 2, 1, 1, 1, 6, 8, 5, true, Some(1)),
    (3, 1, 2, 2, 2, 8, 12, 6, true, Some(0)),
    (3, 1, 1, 2, 1, 6, 8, 6, false, Some(1)),
];

fn geometry(l: Layer) -> Geometry {
    let (_, stride, padding, dilation, groups, .., transposed) = l;
    Geometry { stride, padding, dilation, groups, transposed }
}

/// Output, and gradients to the input, weights and bias (undefined without one) of `y · g`,
/// by `conv_det` on copies of the operands in `kind`.
fn passes(x: &Tensor, w: &Tensor, b: Option<&Tensor>, l: Layer, kind: Kind) -> Vec<Tensor> {
    let x = x.to_kind(kind).detach().set_requires_grad(true);
    let w = w.to_kind(kind).detach().set_requires_grad(true);
    let b = b.map(|b| b.to_kind(kind).detach().set_requires_grad(true));
    let y = conv_det(&x, &w, b.as_ref(), geometry(l)).unwrap().expect("taken");
    let g = Tensor::ones_like(&y).cumsum(1, Kind::Float).to_kind(kind).sin();
    let mut sources = vec![&x, &w];
    sources.extend(b.as_ref());
    let grads = Tensor::run_backward(&[(&y * &g).sum(Kind::Float)], &sources, false, false);
    std::iter::once(y.detach()).chain(grads).collect()
}

/// The same passes by libtorch's convolution in float64.
fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>, l: Layer) -> Vec<Tensor> {
    let Geometry { stride: s, padding: p, dilation: d, groups, transposed } = geometry(l);
    let x = x.to_kind(Kind::Double).detach().set_requires_grad(true);
    let w = w.to_kind(Kind::Double).detach().set_requires_grad(true);
    let b = b.map(|b| b.to_kind(Kind::Double).detach().set_requires_grad(true));
    let (up, op) = (transposed.is_some(), transposed.unwrap_or(0));
    let y = x.convolution(&w, b.as_ref(), [s, s], [p, p], [d, d], up, [op, op], groups);
    let g = Tensor::ones_like(&y).cumsum(1, Kind::Double).sin();
    let mut sources = vec![&x, &w];
    sources.extend(b.as_ref());
    let grads = Tensor::run_backward(&[(&y * &g).sum(Kind::Double)], &sources, false, false);
    std::iter::once(y.detach()).chain(grads).collect()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double);
    (&a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-30)
}

#[test]
fn same_bits_at_any_thread_count_and_libtorchs_values() {
    let mut kinds = vec![(Kind::Float, 2e-5)];
    if cpu_supports_bf16() {
        kinds.push((Kind::BFloat16, 3e-2));
    }
    for l in LAYERS {
        let (r, _, _, _, groups, c, k, side, bias, transposed) = l;
        // 7 and 16 images: two halves; 40: pieces of 16 and 24 (the remainder joins the last).
        for n in [7, 16, 40] {
            tch::manual_seed(n + r);
            let opts = (Kind::Float, Device::Cpu);
            // NCHW, channels-last, and an NCHW input (a batch of images) with channels-last
            // weights.
            for (channels_last, x_channels_last) in [(false, false), (true, true), (true, false)] {
                let mut x = Tensor::randn([n, c, side, side], opts);
                let shape = match transposed {
                    None => [k, c / groups, r, r],
                    Some(_) => [c, k / groups, r, r],
                };
                let mut w = Tensor::randn(shape, opts) * 0.3;
                if channels_last {
                    w = to_channels_last(&w).unwrap();
                }
                if x_channels_last {
                    x = to_channels_last(&x).unwrap();
                }
                let b = bias.then(|| Tensor::randn([k], opts));
                let want = reference(&x, &w, b.as_ref(), l);
                for (kind, tol) in &kinds {
                    let at = |threads| {
                        tch::set_num_threads(threads);
                        passes(&x, &w, b.as_ref(), l, *kind)
                    };
                    let one = at(1);
                    let what = format!(
                        "{l:?} n {n} channels-last {channels_last} (input {x_channels_last}) \
                         {kind:?}"
                    );
                    assert_eq!(one.len(), 3 + usize::from(bias), "{what}");
                    for threads in [2, 3] {
                        for (i, (a, t)) in one.iter().zip(at(threads)).enumerate() {
                            assert!(a.equal(&t), "{what}: pass {i} differs at {threads} threads");
                        }
                    }
                    for (i, (a, r)) in one.iter().zip(&want).enumerate() {
                        // The bias gradient sums a whole output channel (40 × 11 × 11 values of
                        // one sign at the transposed stride-2 layer): libtorch's own fp32 one is
                        // 5.0e-5 off there (PyTorch 2.11, 1 and 2 threads), this one 2.8e-5.
                        let tol = if i == 3 { f64::max(*tol, 1e-4) } else { *tol };
                        let e = max_rel(a, r);
                        assert!(e < tol, "{what}: pass {i} off by {e:e} of the largest value");
                    }
                    if channels_last {
                        // The output and the gradient to the input channels-last when the input
                        // or the weights are, as libtorch's oneDNN convolution makes them.
                        for t in [&one[0], &one[1]] {
                            assert!(is_channels_last(t), "{what}: {:?}", t.stride());
                        }
                    } else {
                        assert!(one[0].is_contiguous() && one[1].is_contiguous(), "{what}");
                    }
                }
            }
        }
    }
    if cpu_supports_bf16() {
        under_autocast();
    }
    tch::set_num_threads(1);
}

/// Under the CPU's bf16 autocast: fp32 leaves, a bf16 output, fp32 gradients, the same bits at
/// 1 and 2 threads, and libtorch's autocast convolution's values.
fn under_autocast() {
    let opts = (Kind::Float, Device::Cpu);
    tch::manual_seed(3);
    let x = to_channels_last(&Tensor::randn([40, 8, 8, 8], opts)).unwrap();
    let w = to_channels_last(&(Tensor::randn([16, 8, 3, 3], opts) * 0.3)).unwrap();
    let run = |det: bool| {
        let (x, w) = (x.copy().set_requires_grad(true), w.copy().set_requires_grad(true));
        let y = autocast(Device::Cpu, Precision::Bf16, || {
            if det {
                conv_det(&x, &w, None, Geometry::conv(1, 1)).unwrap().expect("taken")
            } else {
                x.conv2d(&w, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1)
            }
        });
        assert_eq!(y.kind(), Kind::BFloat16);
        let g = Tensor::ones_like(&y).cumsum(1, Kind::Float).sin();
        let grads = Tensor::run_backward(&[(&y * &g).sum(Kind::Float)], &[&x, &w], false, false);
        for t in &grads {
            assert_eq!(t.kind(), Kind::Float);
        }
        std::iter::once(y.detach()).chain(grads).collect::<Vec<_>>()
    };
    tch::set_num_threads(1);
    let one = run(true);
    tch::set_num_threads(2);
    for (i, (a, b)) in one.iter().zip(run(true)).enumerate() {
        assert!(a.equal(&b), "autocast: pass {i} differs at 2 threads");
    }
    for (i, (a, b)) in one.iter().zip(run(false)).enumerate() {
        let e = max_rel(a, &b.to_kind(Kind::Double));
        assert!(e < 1.0 / 64.0, "autocast: pass {i} off by {e:e} of libtorch's largest value");
    }
}

#[test]
fn leaves_other_kinds_and_empty_batches_to_libtorch() {
    let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
    let double = Tensor::randn([16, 3, 8, 8], (Kind::Double, Device::Cpu));
    let wd = w.to_kind(Kind::Double);
    assert!(conv_det(&double, &wd, None, Geometry::conv(1, 1)).unwrap().is_none());
    let empty = Tensor::zeros([0, 3, 8, 8], (Kind::Float, Device::Cpu));
    assert!(conv_det(&empty, &w, None, Geometry::conv(1, 1)).unwrap().is_none());
    // Shapes libtorch refuses: its message, no panic.
    let x = Tensor::randn([16, 3, 2, 2], (Kind::Float, Device::Cpu));
    let e = conv_det(&x, &w, None, Geometry::conv(1, 0)).unwrap_err();
    assert!(e.contains("empty"), "{e}");
    let e = conv_det(&double.to_kind(Kind::Float), &w.narrow(1, 0, 2), None, Geometry::conv(1, 1));
    assert!(e.is_err(), "{e:?}");
    // A negative output padding is named, not read as "not transposed" or as 0.
    let up = Geometry { transposed: Some(-1), ..Geometry::conv(2, 1) };
    let e = conv_det(&double.to_kind(Kind::Float), &w, None, up).unwrap_err();
    assert!(e.contains("output padding -1"), "{e}");
}
