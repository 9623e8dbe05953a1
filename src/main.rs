//! The `selfsup` command-line tool: pretrain an encoder with a pretext method, inspect
//! checkpoints, evaluate frozen features, export weights and reproduce paper tables.
//!
//! Every error ends the process with a non-zero exit code and one line on stderr, panics from
//! libtorch included (a shape that does not fit an encoder, say).
mod cli;
mod launch;

// jemalloc as the C allocator, freed pages kept (crates/alloc).
selfsup_alloc::install!();

/// The first line of a panic's message.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    // libtorch's messages come Debug-formatted inside `unwrap` panics, their C++ stack trace
    // after an escaped newline: keep the text before it.
    let first = msg.split("\\n").next().unwrap_or(msg);
    let first = first.lines().find(|l| !l.trim().is_empty()).unwrap_or("unknown panic").trim();
    first.chars().take(400).collect()
}

fn main() {
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        // Keep stderr to one line; RUST_BACKTRACE=1 restores the default report.
        std::panic::set_hook(Box::new(|_| {}));
    }
    let code = match std::panic::catch_unwind(cli::main) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            // One line: the chain of contexts joined by ": ".
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            1
        }
        Err(payload) => {
            eprintln!("error: internal error: {}", panic_message(payload.as_ref()));
            2
        }
    };
    std::process::exit(code);
}
