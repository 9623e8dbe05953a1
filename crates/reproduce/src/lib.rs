//! Paper-table reproductions, run as `selfsup reproduce <method> [--profile smoke|cpu|paper]`
//! (and by `cargo xtask reproduce <method>`, which installs libtorch and builds the binary first).
//!
//! NOTE (lead, for the RotNet and contrastive helpers): put the reproduction code HERE, not in
//! xtask/ (xtask must build without libtorch). Expose `pub fn run(args: &[String]) ->
//! anyhow::Result<()>` where `args[0]` is the method name; add modules `rotnet.rs`,
//! `contrastive.rs`. Add the crates you need to this Cargo.toml.
