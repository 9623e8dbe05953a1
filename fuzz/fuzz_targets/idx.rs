//! MNIST / Fashion-MNIST IDX files, gzipped or not (`idx::maybe_gunzip`, `idx::parse`): after
//! a 4-byte little-endian length, that many bytes are the image file and the rest the label
//! file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use selfsup_data::readers::idx::{maybe_gunzip, parse};

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<4>() else { return };
    let at = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (images, labels) = rest.split_at(at);
    let (ip, lp) = ("images-idx3-ubyte.gz".as_ref(), "labels-idx1-ubyte".as_ref());
    let Ok(images) = maybe_gunzip(images.to_vec(), ip) else { return };
    let Ok(labels) = maybe_gunzip(labels.to_vec(), lp) else { return };
    if let Ok((rows, cols, pixels, labels)) = parse(&images, ip, &labels, lp) {
        assert_eq!(pixels.len(), labels.len() * rows * cols);
    }
});
