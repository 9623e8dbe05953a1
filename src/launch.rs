//! `selfsup launch --nproc N <command ...>`: starts N local ranks of a data-parallel job, for
//! people without `torchrun`. Each child is this binary running `<command ...>` with the
//! variables torchrun sets (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT`); rank 0 serves the job's store on a free port of 127.0.0.1
//! unless `--master-port` names one.
//!
//! SIGINT and SIGTERM are passed on to every rank (which stop together after the same step,
//! rank 0 writing the checkpoint). When a rank fails, the others are sent SIGTERM, then
//! SIGKILL after a grace period (a rank waiting in a collective for the failed one cannot see
//! the first signal), and the launcher fails naming the rank and its exit status.
use anyhow::{bail, Context, Result};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long ranks get to stop after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(15);

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on a child we started and have not yet reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Starts the ranks and waits for them all; fails naming the first rank that failed.
pub fn run(nproc: usize, master_port: Option<u16>, args: &[String]) -> Result<()> {
    if nproc == 0 {
        bail!("--nproc 0: a job needs at least one process");
    }
    if args.is_empty() {
        bail!("selfsup launch: name the command each rank runs, e.g. `selfsup launch --nproc 2 train --config run.json --out runs/a`");
    }
    let port = match master_port {
        Some(p) => p,
        None => selfsup_dist::free_port().context("finding a free port for the job's store")?,
    };
    let exe = std::env::current_exe().context("locating the selfsup binary")?;
    selfsup_core::signals::install();
    let mut children = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let world = selfsup_dist::World {
            rank,
            world_size: nproc,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
        };
        let mut cmd = Command::new(&exe);
        cmd.args(args).envs(world.vars());
        match cmd.spawn() {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                for c in children.iter().flatten() {
                    signal(c, libc::SIGKILL);
                }
                return Err(e).with_context(|| format!("starting rank {rank}: {}", exe.display()));
            }
        }
    }
    let mut failed: Option<(usize, ExitStatus)> = None;
    let mut forwarded = false;
    let mut kill_at: Option<Instant> = None;
    while children.iter().any(Option::is_some) {
        if selfsup_core::signals::requested() && !forwarded {
            forwarded = true;
            for c in children.iter().flatten() {
                signal(c, libc::SIGTERM);
            }
        }
        let mut first_failure = None;
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            let Some(status) = child.try_wait().context("waiting for a rank")? else { continue };
            *slot = None;
            if !status.success() && failed.is_none() && first_failure.is_none() {
                first_failure = Some((rank, status));
            }
        }
        if let Some((rank, status)) = first_failure {
            failed = Some((rank, status));
            if children.iter().any(Option::is_some) {
                eprintln!("selfsup launch: rank {rank} exited with {status}; stopping the others");
                kill_at = Some(Instant::now() + GRACE);
                for c in children.iter().flatten() {
                    signal(c, libc::SIGTERM);
                }
            }
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            for c in children.iter().flatten() {
                signal(c, libc::SIGKILL);
            }
            kill_at = None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failed {
        Some((rank, status)) => bail!("rank {rank} of {nproc} exited with {status}"),
        None => Ok(()),
    }
}
