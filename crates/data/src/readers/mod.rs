//! Readers of the on-disk dataset layouts. Each reader has a pure `parse_*` function over bytes
//! (fuzzed by the tests: any input yields `Ok` or a one-line error, never a panic) and a `read_*`
//! function that opens the files.
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod stl10;

pub mod synthetic;

use std::path::Path;

use crate::error::{DataError, Result};

/// Reads a whole file, or reports it missing with `hint` saying where it should come from.
pub(crate) fn read_file(path: &Path, what: &str, hint: &str) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DataError::Missing {
            what: what.to_string(),
            path: path.to_path_buf(),
            hint: hint.to_string(),
        }),
        Err(e) => Err(DataError::io(path, e)),
    }
}
