//! `cargo run -p selfsup-reproduce --example reproduce -- <method> [options]`: the same as
//! `selfsup reproduce <method> [options]` without building the whole CLI.

// The C allocator the `selfsup` binary runs on (jemalloc, freed pages kept): crates/alloc.
selfsup_alloc::install!();

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    selfsup_reproduce::run(&args, &selfsup_methods::registry())
}
