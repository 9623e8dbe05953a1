//! The `selfsup` command-line tool: pretrain an encoder with a pretext method, inspect
//! checkpoints, evaluate frozen features, export weights and reproduce paper tables.
//!
//! Every error ends the process with a non-zero exit code and one line on stderr.
mod cli;

fn main() {
    let code = match cli::main() {
        Ok(()) => 0,
        Err(e) => {
            // One line: the chain of contexts joined by ": ".
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            1
        }
    };
    std::process::exit(code);
}
