//! Paper-table reproductions, run as `selfsup reproduce <method> [--profile smoke|cpu|paper]`
//! (and by `cargo xtask reproduce <method>`, which installs libtorch and builds the binary first).
//!
//! The code lives here rather than in xtask because it links libtorch, which xtask installs.
//! Each reproduction builds a registry of just the methods it trains; `rotnet` writes
//! `results/rotnet/<profile>/`, the contrastive ones `results/<method>/<profile>/`.

pub mod common;
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
