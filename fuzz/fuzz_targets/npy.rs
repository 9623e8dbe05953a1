//! `.npy` files of ab bin centres (`AbBins::from_npy`, NumPy format 1.0-3.0).
#![no_main]
use libfuzzer_sys::fuzz_target;
use selfsup_lab::AbBins;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pts_in_hull.npy");
    std::fs::write(&path, data).unwrap();
    let _ = AbBins::from_npy(&path, 10);
});
