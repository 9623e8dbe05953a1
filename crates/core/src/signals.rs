//! SIGINT and SIGTERM (what a terminal's Ctrl-C and a cluster's pre-emption send) for the
//! trainer: the first signal asks the run to stop after its current step, write a checkpoint
//! and exit saying how to resume; a second one exits at once (the default action).
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if REQUESTED.swap(true, Ordering::SeqCst) {
        // The second signal: the default action, now. Both calls are async-signal-safe.
        // SAFETY: restoring the default disposition and re-raising the signal.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

/// Installs the handler for SIGINT and SIGTERM (idempotent).
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only touches an atomic and calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Forgets an earlier request (a process that trains again after an interrupted run).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}
