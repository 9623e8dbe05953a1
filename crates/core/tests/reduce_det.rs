//! [`sum_all`] and [`mean_all`] of a deterministic CPU run: the same bits at 1, 2 and 3 threads
//! over sizes whose per-thread parts libtorch's own `sum` would split differently, within float
//! rounding of f64's sum; outside a deterministic run, libtorch's `sum` and `mean` bit for bit.
//! Its own process: libtorch's thread count and oneDNN's switch are process-wide.
use selfsup_core::determinism::set_mkldnn_enabled;
use selfsup_core::reduce::{mean_all, sum_all, ROW};
use tch::{Device, Kind, Tensor};

fn bits(t: &Tensor) -> u32 {
    (t.double_value(&[]) as f32).to_bits()
}

#[test]
fn full_sums_give_the_same_bits_at_any_thread_count() {
    tch::manual_seed(11);
    // The autoencoder's loss size, an odd size with a remainder after the rows, a 4-d tensor,
    // a bf16 one, and one past 32,768 rows of ROW (the row sums summed the same way again).
    let cases = [
        Tensor::randn([128, 3, 32, 32], (Kind::Float, Device::Cpu)).square(),
        Tensor::randn([3, 131_071], (Kind::Float, Device::Cpu)) + 0.25,
        Tensor::randn([7, 33, 17, 19], (Kind::Float, Device::Cpu)).permute([0, 2, 3, 1]),
        Tensor::randn([40_000], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16),
        Tensor::rand([32_769 * ROW + 5], (Kind::Float, Device::Cpu)),
    ];
    set_mkldnn_enabled(false);
    for x in &cases {
        let mut seen = Vec::new();
        for threads in 1..=3 {
            tch::set_num_threads(threads);
            seen.push((bits(&sum_all(x)), bits(&mean_all(x))));
        }
        assert!(seen.iter().all(|s| *s == seen[0]), "{:?}: {seen:?}", x.size());
        assert_eq!(sum_all(x).kind(), Kind::Float);
    }
    for x in &cases[..4] {
        let exact = x.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
        let got = sum_all(x).double_value(&[]);
        let scale = x.to_kind(Kind::Double).abs().sum(Kind::Double).double_value(&[]);
        assert!((got - exact).abs() <= 1e-5 * scale, "{:?}: {got} against {exact}", x.size());
    }
    // The 134M uniform values (no f64 copy of those): about half their count.
    let big = &cases[4];
    let got = sum_all(big).double_value(&[]) / big.numel() as f64;
    assert!((got - 0.5).abs() < 1e-3, "mean of the uniform values: {got}");
    // Outside a deterministic run: libtorch's own.
    set_mkldnn_enabled(true);
    tch::set_num_threads(2);
    for x in &cases[..4] {
        assert_eq!(bits(&sum_all(x)), bits(&x.sum(Kind::Float)), "{:?}", x.size());
        assert_eq!(bits(&mean_all(x)), bits(&x.mean(Kind::Float)), "{:?}", x.size());
    }
}
