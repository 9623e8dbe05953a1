//! Collectives across the ranks of a job, and DDP's gradient averaging on top of them.
//!
//! [`Collectives`] is what the trainer needs from a process group: sum in place, gather,
//! broadcast, barrier. [`StoreGroup`] implements it over the job's c10d `TCPStore`: every rank
//! puts its tensor under a key of the collective's sequence number and reads the others', and
//! each rank sums them in rank order, so every rank ends with the same bits. It moves every
//! tensor through rank 0's store, which is fine for the CPU jobs and tests it serves (a
//! gradient of a few MB a step) and no substitute for NCCL on GPUs: it is the test backend
//! the distributed issue allows where Gloo cannot be reached (the shipped libtorch exports
//! `ProcessGroupGloo` but not the Gloo headers its declaration needs).
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::{DistError, Result, TcpStore, World};

/// A process group: collectives over the `world_size` ranks of a job. Every rank must call the
/// same collectives in the same order with tensors of the same shape and kind.
pub trait Collectives: Send + Sync + std::fmt::Debug {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// Ranks in the job.
    fn world_size(&self) -> usize;
    /// The backend's name (`store`, `nccl`), recorded in run logs.
    fn backend(&self) -> &'static str;
    /// Replaces `t` (any shape, kind and device) with its sum over the ranks; every rank ends
    /// with the same values.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<()>;
    /// Every rank's `t` concatenated along dim 0 in rank order (`(world_size · N, ...)` for
    /// `(N, ...)` on each rank), on `t`'s device.
    fn all_gather(&self, t: &Tensor) -> Result<Tensor>;
    /// Replaces `t` with rank `root`'s `t`.
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Ends a phase of collectives (a training run): returns on rank 0 only once every other
    /// rank has finished its part of the last collective, so that rank 0, which serves the
    /// store, can exit without cutting the others off; the other ranks return at once.
    fn finish(&self) -> Result<()>;
}

/// Averages the gradients of `params` over the ranks, in place, as DDP does after backward:
/// with each rank's loss the mean over its `B / N` samples, the result is the gradient of the
/// mean over all `B`. The defined gradients travel as one flat bucket; every rank must have
/// gradients for the same parameters (same shapes, same order). `flags` ride in the same
/// message and come back summed over the ranks (the trainer's stop requests: a stop asked of
/// any rank is seen by all at the same step). A no-op at world size 1.
pub fn average_gradients(
    group: &dyn Collectives,
    params: &[(String, Tensor)],
    flags: &mut [f32],
) -> Result<()> {
    let world = group.world_size();
    if world == 1 {
        return Ok(());
    }
    let _no_grad = tch::no_grad_guard();
    let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).filter(Tensor::defined).collect();
    let kind = grads.first().map_or(Kind::Float, Tensor::kind);
    let device = grads.first().map_or(Device::Cpu, Tensor::device);
    let mut flat: Vec<Tensor> =
        grads.iter().map(|g| g.f_reshape([-1])).collect::<Result<_, _>>()?;
    flat.push(Tensor::f_from_slice(flags)?.f_to(device)?.f_to_kind(kind)?);
    let bucket = Tensor::f_cat(&flat, 0)?;
    group.all_reduce_sum(&bucket)?;
    let mut offset = 0i64;
    for g in &grads {
        let n = g.numel() as i64;
        let part = bucket.f_narrow(0, offset, n)?.f_view(g.size().as_slice())?;
        g.shallow_clone().f_copy_(&part.f_div_scalar(world as f64)?)?;
        offset += n;
    }
    let summed = bucket.f_narrow(0, offset, flags.len() as i64)?.f_to_kind(Kind::Float)?;
    flags.copy_from_slice(&Vec::<f32>::try_from(&summed.f_to(Device::Cpu)?)?);
    Ok(())
}

/// Connects this process to its job: rank 0 starts the store at `MASTER_ADDR:MASTER_PORT`,
/// every rank connects, and the call returns once all `world_size` have (or fails after
/// `timeout`, naming the address).
pub fn init(world: &World, timeout: Duration) -> Result<StoreGroup> {
    let store = TcpStore::connect(
        &world.master_addr,
        world.master_port,
        world.rank == 0,
        world.world_size,
        timeout,
    )?;
    Ok(StoreGroup::new(store, world.rank, world.world_size))
}

/// [`Collectives`] over a c10d `TCPStore` (see the module docs).
#[derive(Debug)]
pub struct StoreGroup {
    store: TcpStore,
    rank: usize,
    world: usize,
    seq: AtomicU64,
}

/// Kinds a tensor may have on the wire, by code.
const KINDS: [Kind; 8] = [
    Kind::Float,
    Kind::Double,
    Kind::Half,
    Kind::BFloat16,
    Kind::Int64,
    Kind::Int,
    Kind::Uint8,
    Kind::Bool,
];

impl StoreGroup {
    /// A group of `world` ranks meeting in `store`, this process being `rank`.
    pub fn new(store: TcpStore, rank: usize, world: usize) -> Self {
        StoreGroup { store, rank, world, seq: AtomicU64::new(0) }
    }

    fn err(&self, op: &'static str, msg: String) -> DistError {
        DistError::Collective { op, rank: self.rank, world: self.world, msg }
    }

    /// Puts `payload` under this collective's key and returns every rank's payload in rank
    /// order; the last rank to read deletes the keys.
    fn exchange(&self, payload: &[u8]) -> Result<Vec<Vec<u8>>> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let key = |r: usize| format!("selfsup/{seq}/{r}");
        self.store.set(&key(self.rank), payload)?;
        let mut out = Vec::with_capacity(self.world);
        for r in 0..self.world {
            out.push(if r == self.rank { payload.to_vec() } else { self.store.get(&key(r))? });
        }
        let read = format!("selfsup/{seq}/read");
        if self.store.add(&read, 1)? == self.world as i64 {
            for r in 0..self.world {
                self.store.delete(&key(r))?;
            }
            self.store.delete(&read)?;
        }
        Ok(out)
    }

    /// `t` on the wire: kind code, dimension count, dimensions (little-endian i64), the
    /// elements in row-major order.
    fn encode(&self, op: &'static str, t: &Tensor) -> Result<Vec<u8>> {
        let kind = t.kind();
        let code = KINDS
            .iter()
            .position(|k| *k == kind)
            .ok_or_else(|| self.err(op, format!("tensors of kind {kind:?} are not supported")))?;
        let cpu = t.f_to_device(Device::Cpu)?.f_contiguous()?;
        let dims = cpu.size();
        let n = cpu.numel();
        let bytes = n * kind.elt_size_in_bytes();
        let mut out = Vec::with_capacity(2 + 8 * dims.len() + bytes);
        out.push(code as u8);
        out.push(dims.len() as u8);
        for d in &dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        let start = out.len();
        out.resize(start + bytes, 0);
        cpu.f_copy_data_u8(&mut out[start..], n)?;
        Ok(out)
    }

    fn decode(&self, op: &'static str, rank: usize, b: &[u8]) -> Result<Tensor> {
        let bad = || self.err(op, format!("rank {rank} sent a malformed tensor"));
        let (&code, rest) = b.split_first().ok_or_else(bad)?;
        let (&ndim, mut rest) = rest.split_first().ok_or_else(bad)?;
        let kind = *KINDS.get(code as usize).ok_or_else(bad)?;
        let mut dims = Vec::with_capacity(ndim as usize);
        for _ in 0..ndim {
            let (d, r) = rest.split_at_checked(8).ok_or_else(bad)?;
            dims.push(i64::from_le_bytes(d.try_into().expect("8 bytes")));
            rest = r;
        }
        let n: i64 = dims.iter().product();
        if dims.iter().any(|d| *d < 0) || rest.len() != n as usize * kind.elt_size_in_bytes() {
            return Err(bad());
        }
        Ok(Tensor::f_from_data_size(rest, &dims, kind)?)
    }

    /// Every rank's `t`, decoded, checked to share `t`'s kind and (unless `any_first_dim`) shape.
    fn gather_all(&self, op: &'static str, t: &Tensor, any_first_dim: bool) -> Result<Vec<Tensor>> {
        let parts = self.exchange(&self.encode(op, t)?)?;
        let mine = t.size();
        parts
            .iter()
            .enumerate()
            .map(|(r, b)| {
                let x = self.decode(op, r, b)?;
                let theirs = x.size();
                let same = if any_first_dim {
                    theirs.len() == mine.len() && theirs[1..] == mine[1..]
                } else {
                    theirs == mine
                };
                if !same || x.kind() != t.kind() {
                    return Err(self.err(
                        op,
                        format!(
                            "rank {r} sent {:?} {theirs:?}, this rank has {:?} {mine:?}",
                            x.kind(),
                            t.kind()
                        ),
                    ));
                }
                Ok(x)
            })
            .collect()
    }
}

impl Collectives for StoreGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn backend(&self) -> &'static str {
        "store"
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        let _no_grad = tch::no_grad_guard();
        let parts = self.gather_all("all_reduce", t, false)?;
        let mut sum = parts[0].shallow_clone();
        for p in &parts[1..] {
            sum = sum.f_add(p)?;
        }
        t.shallow_clone().f_copy_(&sum)?;
        Ok(())
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        if t.dim() == 0 {
            return Err(self.err("all_gather", "a 0-d tensor has no dim 0 to gather along".into()));
        }
        let parts = self.gather_all("all_gather", t, true)?;
        Ok(Tensor::f_cat(&parts, 0)?.f_to_device(t.device())?)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        if root >= self.world {
            return Err(self.err("broadcast", format!("root {root} is not a rank")));
        }
        let payload = if self.rank == root { self.encode("broadcast", t)? } else { Vec::new() };
        let parts = self.exchange(&payload)?;
        if self.rank != root {
            let x = self.decode("broadcast", root, &parts[root])?;
            if x.size() != t.size() || x.kind() != t.kind() {
                return Err(self.err(
                    "broadcast",
                    format!(
                        "rank {root} sent {:?} {:?}, this rank has {:?} {:?}",
                        x.kind(),
                        x.size(),
                        t.kind(),
                        t.size()
                    ),
                ));
            }
            let _no_grad = tch::no_grad_guard();
            t.shallow_clone().f_copy_(&x)?;
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.exchange(&[]).map(|_| ())
    }

    fn finish(&self) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let (count, all) = (format!("selfsup/{seq}/finished"), format!("selfsup/{seq}/all"));
        if self.store.add(&count, 1)? == self.world as i64 {
            self.store.set(&all, &[1])?;
        }
        if self.rank == 0 {
            self.store.get(&all)?;
            self.store.delete(&count)?;
            self.store.delete(&all)?;
        }
        Ok(())
    }
}
