//! The plain (unfused) batch norm of a deterministic CPU run on channels-last activations and on
//! inputs without a map ([`BatchNorm`]'s forward and [`deterministic_layout`]): the same bits at
//! 1, 2 and 3 threads in the output, the running statistics and the gradients, the output
//! channels-last where the input is. Its own
//! process: libtorch's thread count and oneDNN's switch are process-wide.
use selfsup_core::determinism::set_mkldnn_enabled;
use selfsup_core::encoders::batch_norm::deterministic_layout;
use selfsup_core::encoders::{batch_norm1d, batch_norm2d, BatchNorm};
use selfsup_core::precision::{is_channels_last, to_channels_last};
use tch::nn::ModuleT;
use tch::{nn, Device, Kind, Tensor};

/// Output, gradient to the input, to the weight and bias, and the running mean and variance
/// after one training-mode pass of a fresh norm over `x` at `threads` threads.
fn pass(x: &Tensor, threads: i32, kind: Kind) -> Vec<Tensor> {
    tch::set_num_threads(threads);
    let vs = nn::VarStore::new(Device::Cpu);
    let bn: BatchNorm = batch_norm2d(vs.root() / "bn", x.size()[1]);
    let x = x.to_kind(kind).detach().set_requires_grad(true);
    let y = bn.forward_t(&x, true);
    assert!(is_channels_last(&y) && !y.is_contiguous(), "channels-last out");
    let g = Tensor::ones(y.size(), (Kind::Float, Device::Cpu)).cumsum(1, Kind::Float).sin();
    let loss = (&y * g.to_kind(y.kind())).sum(Kind::Float);
    let vars = vs.variables();
    let (w, b) = (&vars["bn.weight"], &vars["bn.bias"]);
    let grads = Tensor::run_backward(&[loss], &[&x, w, b], false, false);
    let mut out = vec![y.detach()];
    out.extend(grads);
    out.push(vars["bn.running_mean"].copy());
    out.push(vars["bn.running_var"].copy());
    out
}

/// [`pass`]'s outputs for a norm over `nd`-d maps (1: `(N, C)`, 2: `(N, C, 1, 1)`).
fn no_map(x: &Tensor, nd: usize, threads: i32) -> Vec<Tensor> {
    tch::set_num_threads(threads);
    let vs = nn::VarStore::new(Device::Cpu);
    let c = x.size()[1];
    let bn: BatchNorm =
        if nd == 1 { batch_norm1d(vs.root() / "bn", c) } else { batch_norm2d(vs.root() / "bn", c) };
    let x = x.detach().set_requires_grad(true);
    let y = bn.forward_t(&x, true);
    let g = Tensor::ones(y.size(), (Kind::Float, Device::Cpu)).cumsum(1, Kind::Float).sin();
    let vars = vs.variables();
    let (w, b) = (&vars["bn.weight"], &vars["bn.bias"]);
    let grads = Tensor::run_backward(&[(&y * g).sum(Kind::Float)], &[&x, w, b], false, false);
    let mut out = vec![y.detach()];
    out.extend(grads);
    out.push(vars["bn.running_mean"].copy());
    out.push(vars["bn.running_var"].copy());
    out
}

#[test]
fn channels_last_batch_norm_gives_the_same_bits_at_any_thread_count() {
    set_mkldnn_enabled(false);
    tch::manual_seed(5);
    // Many rows, few channels: libtorch's channels-last kernels split the rows over threads.
    let x = to_channels_last(&(Tensor::randn([64, 12, 9, 9], (Kind::Float, Device::Cpu)) * 3.0))
        .unwrap();
    for kind in [Kind::Float, Kind::BFloat16] {
        let one = pass(&x, 1, kind);
        for threads in [2, 3] {
            for (i, (a, b)) in one.iter().zip(pass(&x, threads, kind)).enumerate() {
                assert!(a.equal(&b), "{kind:?}: output {i} differs at {threads} threads");
            }
        }
    }
    // Inputs without a map, which libtorch also takes as channels-last: a 1-d norm's `(N, C)`
    // (the projection heads') and a 2-d norm's `(N, C, 1, 1)`.
    for (x, nd) in [
        (Tensor::randn([64, 12], (Kind::Float, Device::Cpu)), 1),
        (x.mean_dim([2i64, 3].as_slice(), true, Kind::Float), 2),
    ] {
        let one = no_map(&x, nd, 1);
        for threads in [2, 3] {
            for (i, (a, b)) in one.iter().zip(no_map(&x, nd, threads)).enumerate() {
                assert!(a.equal(&b), "{:?}: output {i} differs at {threads} threads", x.size());
            }
        }
        assert_eq!(one[0].size(), x.size());
    }
    // The norm sees an NCHW copy; its output comes back channels-last.
    let y = deterministic_layout(&x, true, |t| {
        assert!(t.is_contiguous(), "an NCHW copy");
        t.shallow_clone()
    });
    assert!(is_channels_last(&y) && !y.is_contiguous() && y.equal(&x));
    // Outside training, or with oneDNN on (a free run), `x` as it is.
    let same = |t: &Tensor| t.data_ptr() == x.data_ptr();
    assert!(same(&deterministic_layout(&x, false, |t| t.shallow_clone())), "evaluation");
    set_mkldnn_enabled(true);
    assert!(same(&deterministic_layout(&x, true, |t| t.shallow_clone())), "free run");
    tch::set_num_threads(1);
}
