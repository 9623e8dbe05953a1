//! Integration tests of selfsup-data, built as one binary (ripgrep's layout).
mod augment;
mod common;
mod fetch;
mod formats;
mod fuzz;
mod loader;
mod pretext;
mod readers;
