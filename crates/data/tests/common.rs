//! Shared test helpers: locating the CIFAR-10 folder.
use std::path::PathBuf;

/// The data folder holding `cifar-10-batches-bin/`: `$SELFSUP_DATA`, else `../shared/datasets`
/// next to the workspace. `None` (with a printed note) when absent.
pub fn cifar_data_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SELFSUP_DATA").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.join("cifar-10-batches-bin/test_batch.bin").is_file() {
            return Some(c);
        }
    }
    eprintln!("note: CIFAR-10 not found (set SELFSUP_DATA); skipping this test");
    None
}
