//! Image files of an image folder (`folder::decode`: JPEG or PNG, guessed from the bytes,
//! resized to 32 pixels when the length is even), written to a temporary file as the reader takes a path.
#![no_main]
use libfuzzer_sys::fuzz_target;
use selfsup_data::readers::folder::decode;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image");
    std::fs::write(&path, data).unwrap();
    let size = if data.len() % 2 == 0 { Some(32) } else { None };
    if let Ok((h, w, bytes)) = decode(&path, size) {
        assert_eq!(bytes.len(), h * w * 3);
    }
});
