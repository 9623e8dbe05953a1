//! End-to-end tests of the `selfsup` binary (one test binary, ripgrep style: each file is a
//! module).
mod cli;
mod distributed;
mod util;
