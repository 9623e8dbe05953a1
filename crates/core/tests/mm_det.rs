//! The matrix products of deterministic runs ([`mm_det`], `csrc/conv_det.cpp`'s `DetProduct`), the
//! dense form of the smallest maps' convolutions on them ([`conv_dense`] with oneDNN off, as in a
//! deterministic run), the batched product ([`bmm_det`]) and the fully connected layers of a
//! deterministic run ([`Linear`], [`product`], [`batched_product`]): the same bits at 1, 2 and
//! 3 threads in every pass, within float (or bfloat16) rounding of float64, and what they leave to
//! the caller. Its own process: libtorch's thread count and oneDNN's switch are process-wide.
use selfsup_core::determinism::set_mkldnn_enabled;
use selfsup_core::encoders::conv::{bmm_det, conv_dense, mm_det};
use selfsup_core::encoders::{batched_product, linear, product, LinearBias};
use selfsup_core::precision::{
    autocast, cpu_supports_bf16, is_channels_last, to_channels_last, Precision,
};
use std::sync::Mutex;
use tch::nn::Module;
use tch::{nn, Device, Kind, Tensor};

/// The tests set the process's thread count and oneDNN's switch: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

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
    // Made in float (a bf16 count stops at 256), then in `y`'s kind.
    let g = Tensor::ones(y.size(), (Kind::Float, y.device())).cumsum(1, Kind::Float);
    let g = g.sin().to_kind(y.kind());
    let grads = Tensor::run_backward(&[(&y * &g).sum(y.kind())], &[&x, &w], false, false);
    std::iter::once(y.detach()).chain(grads).collect()
}

/// `passes` of `f` at 1 thread, checked to give the same bits at 2 and 3, and to stay within
/// `tol` of the largest value of the same passes of `reference` in float64.
fn same_bits_and_values(
    what: &str,
    x: &Tensor,
    w: &Tensor,
    f: impl Fn(&Tensor, &Tensor) -> Tensor,
    reference: impl Fn(&Tensor, &Tensor) -> Tensor,
    tol: f64,
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
        assert!(e < tol, "{what}: pass {i} off by {e:e} of the largest value");
    }
    one
}

#[test]
fn same_bits_at_any_thread_count_and_float64s_values() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let opts = (Kind::Float, Device::Cpu);
    // Relative patch's conv3 and conv2 as products (256 patches), sizes off the blocks of 64
    // columns, one row, fewer columns than a block.
    for (n, a, b) in [(256, 256, 384), (40, 384, 1024), (37, 100, 130), (1, 9, 5)] {
        tch::manual_seed(n + a);
        let x = Tensor::randn([n, a], opts);
        let w = Tensor::randn([a, b], opts) * 0.1;
        let det = |x: &Tensor, w: &Tensor| mm_det(x, w).unwrap().expect("taken");
        let what = format!("{n}x{a} by {a}x{b}");
        let got = same_bits_and_values(&what, &x, &w, det, |x, w| x.mm(w), 1e-5);
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
        let got = same_bits_and_values(&what, &x, &w, dense, direct, 1e-5);
        // The output keeps the input's layout (the input's gradient is channels-last either
        // way: the backward pass of NCHW's copy into that order).
        assert_eq!(is_channels_last(&got[0]) && side > 1, channels_last && side > 1, "{what}");
    }
    set_mkldnn_enabled(true);
    tch::set_num_threads(1);
}

/// Bfloat16: [`mm_det`] on bf16 operands (oneDNN's products in the blocks), and on float ones
/// under the CPU's bf16 autocast (cast first, as autocast's `mm` casts), gives the same bits at
/// 1, 2 and 3 threads in every pass, within bf16 rounding of float64.
#[test]
fn bf16_products_take_fixed_blocks_on_onednn() {
    if !cpu_supports_bf16() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let opts = (Kind::Float, Device::Cpu);
    let bf16 = |f: &dyn Fn() -> Tensor| autocast(Device::Cpu, Precision::Bf16, f);
    set_mkldnn_enabled(false);
    // Relative patch's `dX = dY W` of fc7 (the reference loop took 142.7 ms of its step), a
    // last block of 8 columns, a product under 16³ (libtorch's reference loop in the block).
    for (n, a, b) in [(128, 512, 1024), (96, 128, 200), (5, 7, 9)] {
        tch::manual_seed(n + a);
        let x = Tensor::randn([n, a], opts);
        let w = Tensor::randn([a, b], opts) * 0.1;
        let det = |x: &Tensor, w: &Tensor| mm_det(x, w).unwrap().expect("taken");
        let what = format!("bf16 {n}x{a} by {a}x{b}");
        let (xb, wb) = (x.to_kind(Kind::BFloat16), w.to_kind(Kind::BFloat16));
        let got = same_bits_and_values(&what, &xb, &wb, det, |x, w| x.mm(w), 1e-2);
        assert!(got.iter().all(|t| t.kind() == Kind::BFloat16), "{what}");
        let cast = |x: &Tensor, w: &Tensor| bf16(&|| det(x, w));
        let what = format!("autocast {n}x{a} by {a}x{b}");
        let got = same_bits_and_values(&what, &x, &w, cast, |x, w| x.mm(w), 1e-2);
        let kinds: Vec<Kind> = got.iter().map(Tensor::kind).collect();
        assert_eq!(kinds, [Kind::BFloat16, Kind::Float, Kind::Float], "{what}");
    }
    set_mkldnn_enabled(true);
    tch::set_num_threads(1);
}

/// In a deterministic run (oneDNN off), [`Linear`](selfsup_core::encoders::Linear),
/// [`product`] and [`batched_product`] give [`mm_det`]'s (and `bmm_det`'s) bits, in float and,
/// where the CPU has bf16, under bf16 autocast; with oneDNN on (a free run), libtorch's
/// `linear`, `matmul` and `bmm` bits.
#[test]
fn layers_take_the_deterministic_products_in_deterministic_runs_only() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let opts = (Kind::Float, Device::Cpu);
    tch::set_num_threads(2);
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let fc = linear(vs.root() / "fc", 300, 70, LinearBias::Default);
    let bias = fc.bs.as_ref().unwrap();
    let x = Tensor::randn([40, 300], opts);
    let c = Tensor::randn([300, 50], opts);
    let (xs, ws) = (Tensor::randn([4, 40, 30], opts), Tensor::randn([4, 30, 20], opts));
    let mut precisions = vec![Precision::Fp32];
    if cpu_supports_bf16() {
        precisions.push(Precision::Bf16);
    }
    for precision in precisions {
        let run = |f: &dyn Fn() -> Tensor| autocast(Device::Cpu, precision, f);
        set_mkldnn_enabled(false);
        let y = run(&|| fc.forward(&x));
        let want = run(&|| mm_det(&x, &fc.ws.tr()).unwrap().unwrap());
        let want = &want + bias.to_kind(want.kind());
        assert!(y.equal(&want), "Linear in a deterministic run ({precision:?})");
        let y3 = run(&|| fc.forward(&x.view([4, 10, 300])));
        assert_eq!(y3.size(), [4, 10, 70]);
        assert!(y3.view([40, 70]).equal(&y), "Linear on (4, 10, 300) ({precision:?})");
        let p = run(&|| product(&x, &c));
        assert!(p.equal(&run(&|| mm_det(&x, &c).unwrap().unwrap())), "product ({precision:?})");
        let got = run(&|| batched_product(&xs, &ws));
        let want = run(&|| bmm_det(&xs, &ws).unwrap().unwrap());
        assert!(got.equal(&want), "batched_product ({precision:?})");
        set_mkldnn_enabled(true);
        let y = run(&|| fc.forward(&x));
        let want = run(&|| x.linear(&fc.ws, Some(bias)));
        assert!(y.equal(&want), "Linear, oneDNN on ({precision:?})");
        let p = run(&|| product(&x, &c));
        assert!(p.equal(&run(&|| x.matmul(&c))), "product, oneDNN on ({precision:?})");
        let got = run(&|| batched_product(&xs, &ws));
        assert!(got.equal(&run(&|| xs.bmm(&ws))), "batched_product, oneDNN on ({precision:?})");
    }
    tch::set_num_threads(1);
}

/// [`bmm_det`], one single-threaded product an entry of the batch: the same bits at 1, 2 and
/// 3 threads in every pass, float and (where the CPU has it) bf16, on the context encoder's
/// channel-wise layer (64 channels of 4×4 maps, 128 images, its input a transposed view);
/// mismatched sizes are named.
#[test]
fn batched_products_one_entry_a_task() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let opts = (Kind::Float, Device::Cpu);
    set_mkldnn_enabled(false);
    tch::manual_seed(3);
    let x = Tensor::randn([128, 64, 16], opts).transpose(0, 1);
    let w = Tensor::randn([64, 16, 16], opts) * 0.25;
    let det = |x: &Tensor, w: &Tensor| bmm_det(x, w).unwrap().expect("taken");
    let kinds: &[Kind] =
        if cpu_supports_bf16() { &[Kind::Float, Kind::BFloat16] } else { &[Kind::Float] };
    for &kind in kinds {
        let (xk, wk) = (x.to_kind(kind), w.to_kind(kind));
        let tol = if kind == Kind::Float { 1e-5 } else { 1e-2 };
        let got = same_bits_and_values("bmm", &xk, &wk, det, |x, w| x.bmm(w), tol);
        assert_eq!(got[0].size(), [64, 128, 16]);
    }
    let e = bmm_det(&x, &w.narrow(1, 0, 8)).unwrap_err();
    assert!(e.contains("deterministic batched product"), "{e}");
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
    let half = x.to_kind(Kind::BFloat16);
    assert!(mm_det(&half, &w).unwrap().is_none(), "bf16 by float, no autocast");
    assert!(mm_det(&x.narrow(0, 0, 0), &w).unwrap().is_none(), "no rows");
    assert!(mm_det(&x.unsqueeze(0), &w).unwrap().is_none(), "3-d");
    let e = mm_det(&x, &w.narrow(0, 0, 2)).unwrap_err();
    assert!(e.contains("deterministic product") && e.contains("[4, 3]"), "{e}");
}
