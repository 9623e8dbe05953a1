//! STL-10 binary files (`stl10::parse_images`, `stl10::parse_labels`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use selfsup_data::readers::stl10::{parse_images, parse_labels};

fuzz_target!(|data: &[u8]| {
    let path = "train_X.bin".as_ref();
    if let Ok(pixels) = parse_images(data, path) {
        assert_eq!(pixels.len() % (96 * 96 * 3), 0);
    }
    let n = data.first().map_or(0, |&b| b as usize);
    let _ = parse_labels(data, n, "train_y.bin".as_ref());
});
