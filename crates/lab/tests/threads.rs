//! The conversions on the CPU give the same bits at any thread count: libtorch would compute
//! the values at the end of each thread's range with its scalar `pow` rather than its vector one
//! (see `color`'s module docs), and 3 threads end those ranges off the vector boundaries.
//! Its own process: libtorch's thread count is process-wide.
use selfsup_lab::{lab_to_rgb, lightness, rgb_to_lab};
use tch::{Device, Kind, Tensor};

fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.view_dtype(Kind::Int).equal(&b.view_dtype(Kind::Int))
}

#[test]
fn conversions_give_the_same_bits_at_1_2_and_3_threads() {
    tch::manual_seed(3);
    // 35,937 values a batch (over the 32,768 libtorch runs on one thread, ranges of 11,979 at
    // 3 threads), and one image of 36,963 (taken in bands of rows).
    for shape in [[11i64, 3, 33, 33], [1, 3, 111, 111]] {
        let rgb = Tensor::rand(shape, (Kind::Float, Device::Cpu));
        let mut runs = Vec::new();
        for threads in 1..=3 {
            tch::set_num_threads(threads);
            let lab = rgb_to_lab(&rgb).unwrap();
            runs.push([lab.shallow_clone(), lab_to_rgb(&lab).unwrap(), lightness(&rgb).unwrap()]);
        }
        for (i, r) in runs.iter().enumerate().skip(1) {
            for (k, name) in ["rgb_to_lab", "lab_to_rgb", "lightness"].iter().enumerate() {
                assert!(same_bits(&r[k], &runs[0][k]), "{name} {shape:?}: {} threads", i + 1);
            }
        }
        // Still the conversion: the round trip holds.
        let back = &runs[0][1];
        let err = (back - &rgb).abs().max().double_value(&[]);
        assert!(err < 1e-4, "{shape:?}: round trip off by {err}");
    }
}
