//! CIFAR-10/100 binary batches (`selfsup_data::readers::cifar::parse`): any bytes give records or
//! an error naming the file, never a panic. The first byte picks the variant.
#![no_main]
use libfuzzer_sys::fuzz_target;
use selfsup_data::readers::cifar::{parse, Variant};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else { return };
    let variant = if pick % 2 == 0 { Variant::Cifar10 } else { Variant::Cifar100 };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    if parse(bytes, variant, "fuzz.bin".as_ref(), &mut pixels, &mut labels).is_ok() {
        assert_eq!(pixels.len(), labels.len() * 32 * 32 * 3);
    }
});
