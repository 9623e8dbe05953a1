//! Paper-table reproductions, run as `selfsup reproduce <method> [--profile smoke|cpu|paper]`
//! (and by `cargo xtask reproduce <method>`, which installs libtorch and builds the binary first).
//!
//! NOTE (lead, for the RotNet and contrastive helpers): put the reproduction code HERE, not in
//! xtask/ (xtask must build without libtorch). Add modules `rotnet.rs`, `contrastive.rs` and
//! dispatch to them from [`run`]. Add the crates you need to this Cargo.toml.

pub mod contrastive;
pub mod rotnet;

/// Runs `selfsup reproduce <method> [options]`; `args[0]` is the method.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(method) = args.first() else {
        anyhow::bail!("usage: selfsup reproduce <method> [--profile smoke|cpu|paper] [--force]");
    };
    match method.as_str() {
        "rotnet" => rotnet::run(&args[1..]),
        m if contrastive::METHODS.contains(&m) => contrastive::run(m, &args[1..]),
        _ => anyhow::bail!("no reproduction is registered for `{method}` yet"),
    }
}
