//! Paper-table reproductions, run as `selfsup reproduce <method> [--profile smoke|cpu|paper]`
//! (and by `cargo xtask reproduce <method>`, which installs libtorch and builds the binary first).
//!
//! The code lives here rather than in xtask because it links libtorch, which xtask installs.
//! Each reproduction builds a registry of just the methods it trains; `rotnet` writes
//! `results/rotnet/<profile>/`, the contrastive ones `results/<method>/<profile>/`.

pub mod common;
pub mod contrastive;
pub mod rotnet;

/// Runs `selfsup reproduce <method> [options]`; `args[0]` is the method. `registry` holds the
/// methods (`selfsup_methods::registry()`: the binary's, so a method registered there is known
/// here).
pub fn run(args: &[String], registry: &selfsup_core::Registry) -> anyhow::Result<()> {
    let Some(method) = args.first() else {
        anyhow::bail!("usage: selfsup reproduce <method> [--profile smoke|cpu|paper] [--force]");
    };
    match method.as_str() {
        "rotnet" => rotnet::run(&args[1..], registry),
        m if contrastive::METHODS.contains(&m) => contrastive::run(m, &args[1..], registry),
        _ => anyhow::bail!("no reproduction is registered for `{method}` yet"),
    }
}
