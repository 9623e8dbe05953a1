//! The NCE scores' gradient in a deterministic CPU run: the same bits at 1, 2 and 3 threads.
//! [`MemoryBank::candidate_similarities`] was libtorch's `bmm`, whose gradient to the features
//! (a sum over the 4,097 candidates) took other bits at 2 threads than at 1 on a Xeon with AMX
//! (family 6, model 167); it now takes `encoders::batched_product`'s one product an image, and
//! the softmax objective's similarities `encoders::product`'s blocks. This test alone passed on
//! the old `bmm` too (the gradients here, unlike the trainer's, came out the same): the run that
//! caught it is the cpu-profile step of `every_method_precisions` in the `reproduce` crate.
//! Its own process: libtorch's thread count and oneDNN's switch are process-wide.
use selfsup_core::determinism::{same_bits, set_mkldnn_enabled};
use selfsup_instance_discrimination::MemoryBank;
use tch::{Device, Kind, Tensor};

#[test]
fn similarities_gradients_give_the_same_bits_at_any_thread_count() {
    set_mkldnn_enabled(false);
    tch::manual_seed(13);
    // The cpu profile's NCE: batch 128, 128-d, 4,096 noise rows of a bank of 8,000.
    let bank = MemoryBank::new(8000, 128, 0.5, Device::Cpu).unwrap();
    let v = Tensor::randn([128, 128], (Kind::Float, Device::Cpu));
    let candidates = Tensor::randint(8000, [128, 4097], (Kind::Int64, Device::Cpu));
    let g = Tensor::randn([128, 4097], (Kind::Float, Device::Cpu));
    let g_all = Tensor::randn([128, 8000], (Kind::Float, Device::Cpu));
    let mut runs = Vec::new();
    for threads in 1..=3 {
        tch::set_num_threads(threads);
        // As in training: the features a transposed view (the head's batch norm runs on
        // `(1, C, N)` in a deterministic run).
        let leaf = v.tr().contiguous().detach().set_requires_grad(true);
        let x = leaf.tr();
        let nce = (bank.candidate_similarities(&x, &candidates) * &g).sum(Kind::Float);
        let softmax = (bank.similarities(&x) * &g_all).sum(Kind::Float);
        let d_nce = Tensor::run_backward(&[&nce], &[&leaf], false, false).remove(0);
        let d_softmax = Tensor::run_backward(&[&softmax], &[&leaf], false, false).remove(0);
        runs.push([d_nce, d_softmax, bank.candidate_similarities(&v, &candidates)]);
    }
    for (t, run) in runs.iter().enumerate().skip(1) {
        for (i, name) in ["NCE gradient", "softmax gradient", "NCE scores"].iter().enumerate() {
            assert!(same_bits(&run[i], &runs[0][i]), "{name} at {} threads", t + 1);
        }
    }
    // Still the product: the scores are the rows' dot products with the features.
    let rows = bank.vectors().index_select(0, &candidates.view([-1])).view([128, 4097, 128]);
    let want = (rows * v.unsqueeze(1)).sum_dim_intlist([2i64].as_slice(), false, Kind::Float);
    let err = (&runs[0][2] - want).abs().max().double_value(&[]);
    assert!(err < 1e-4, "scores off by {err}");
}
