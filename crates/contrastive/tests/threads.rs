//! The contrastive losses' gradients in a deterministic CPU run: the same bits at 1, 2 and 3
//! threads. MoCo's `q · queueᵀ` was libtorch's `matmul`, whose gradient to `q` (a sum over the
//! 4,096 queue rows) took other bits at 2 threads than at 1 on a Xeon with AMX (family 6, model
//! 167); it now takes `encoders::product`'s fixed blocks, as SimCLR's similarities do.
//! Its own process: libtorch's thread count and oneDNN's switch are process-wide.
use selfsup_contrastive::loss::{info_nce, nt_xent};
use selfsup_core::determinism::{same_bits, set_mkldnn_enabled};
use tch::{Device, Kind, Tensor};

/// The loss and its gradients to the inputs, at `threads` threads.
fn grads(inputs: &[Tensor], loss: impl Fn(&[Tensor]) -> Tensor, threads: i32) -> Vec<Tensor> {
    tch::set_num_threads(threads);
    let xs: Vec<Tensor> = inputs.iter().map(|x| x.detach().set_requires_grad(true)).collect();
    let l = loss(&xs);
    let mut out = Tensor::run_backward(&[&l], &xs.iter().collect::<Vec<_>>(), false, false);
    out.push(l.detach());
    out
}

#[test]
fn info_nce_and_nt_xent_gradients_give_the_same_bits_at_any_thread_count() {
    set_mkldnn_enabled(false);
    tch::manual_seed(7);
    let f = (Kind::Float, Device::Cpu);
    // MoCo's cpu profile: batch 128, 128-d, a queue of 4,096.
    let (q, k) = (Tensor::randn([128, 128], f), Tensor::randn([128, 128], f));
    let queue = Tensor::randn([4096, 128], f);
    let moco = |xs: &[Tensor]| info_nce(&xs[0], &xs[1], &queue, 0.2).unwrap();
    let simclr = |xs: &[Tensor]| nt_xent(&xs[0], &xs[1], 0.5).unwrap();
    for (name, loss) in [("info_nce", &moco as &dyn Fn(&[Tensor]) -> Tensor), ("nt_xent", &simclr)]
    {
        let runs: Vec<Vec<Tensor>> =
            (1..=3).map(|t| grads(&[q.copy(), k.copy()], loss, t)).collect();
        for (t, run) in runs.iter().enumerate().skip(1) {
            for (i, (a, b)) in run.iter().zip(&runs[0]).enumerate() {
                assert!(same_bits(a, b), "{name}: output {i} at {} threads", t + 1);
            }
        }
        assert!(runs[0][0].abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name}: a gradient");
    }
}
