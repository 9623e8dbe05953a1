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
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
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
    /// Starts replacing `t` with its sum over the ranks and returns at once where the backend
    /// can: the sum is in `t` once the returned work has been waited for, and `t` must be left
    /// alone until then. The collective takes its place in the job's order of collectives at
    /// the call, so a collective called later (on any thread) comes after it on every rank.
    /// Default: [`Collectives::all_reduce_sum`], done at the call.
    fn start_all_reduce_sum(&self, t: &Tensor) -> Result<Box<dyn Pending>> {
        self.all_reduce_sum(t)?;
        Ok(Box::new(Done))
    }
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

/// A collective started by [`Collectives::start_all_reduce_sum`].
pub trait Pending: Send {
    /// Returns once the collective is done and its result is in its tensor.
    fn wait(self: Box<Self>) -> Result<()>;
}

/// A collective that was done at the call.
#[derive(Debug)]
pub struct Done;

impl Pending for Done {
    fn wait(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// Averages the gradients of `params` over the ranks, in place, as DDP does after backward:
/// with each rank's loss the mean over its `B / N` samples, the result is the gradient of the
/// mean over all `B`. The defined gradients travel as one flat bucket ([`average_in_place`]);
/// every rank must have gradients for the same parameters (same shapes, same order). `means`
/// (one-element tensors on the gradients' device: the step's loss and metrics) ride in the same
/// message and are replaced by their mean over the ranks, which is the global batch's value for
/// a mean over equal shards; `flags` ride along too and come back summed over the ranks (the
/// trainer's stop requests: a stop asked of any rank is seen by all at the same step). A no-op
/// at world size 1.
pub fn average_gradients(
    group: &dyn Collectives,
    params: &[(String, Tensor)],
    means: &[Tensor],
    flags: &mut [f32],
) -> Result<()> {
    let grads = params.iter().map(|(_, p)| p.grad()).filter(Tensor::defined);
    let tensors: Vec<Tensor> = grads.chain(means.iter().map(Tensor::shallow_clone)).collect();
    average_in_place(group, &tensors, flags)
}

/// Replaces each of `tensors` (any shapes, the same on every rank) by its mean over the ranks,
/// all in one flat bucket in the kind and on the device of the first; `sums` ride along and
/// come back summed over the ranks. Written through `data()`, so that tensors an autograd graph
/// saved (BN running statistics) can be averaged too. A no-op at world size 1 or with nothing
/// to send.
pub fn average_in_place(
    group: &dyn Collectives,
    tensors: &[Tensor],
    sums: &mut [f32],
) -> Result<()> {
    let kind = tensors.first().map_or(Kind::Float, Tensor::kind);
    let device = tensors.first().map_or(Device::Cpu, Tensor::device);
    average_in_place_as(group, tensors, sums, kind, device)
}

/// [`average_in_place`] with the bucket in `kind` on `device`.
pub(crate) fn average_in_place_as(
    group: &dyn Collectives,
    tensors: &[Tensor],
    sums: &mut [f32],
    kind: Kind,
    device: Device,
) -> Result<()> {
    let world = group.world_size();
    if world == 1 || (tensors.is_empty() && sums.is_empty()) {
        return Ok(());
    }
    let _no_grad = tch::no_grad_guard();
    let bucket = flat_bucket(tensors, sums, kind, device)?;
    group.all_reduce_sum(&bucket)?;
    unpack_means(&bucket, tensors, sums, world)
}

/// `tensors` flattened one after the other, then `sums`, as one 1-d tensor of `kind` on
/// `device`: the message of an all-reduce.
pub(crate) fn flat_bucket(
    tensors: &[Tensor],
    sums: &[f32],
    kind: Kind,
    device: Device,
) -> Result<Tensor> {
    let mut flat = Vec::with_capacity(tensors.len() + 1);
    for t in tensors {
        flat.push(t.f_reshape([-1])?.f_to_kind(kind)?.f_to_device(device)?);
    }
    flat.push(Tensor::f_from_slice(sums)?.f_to(device)?.f_to_kind(kind)?);
    Ok(Tensor::f_cat(&flat, 0)?)
}

/// The inverse of [`flat_bucket`] on a summed `bucket`: each of `tensors` (through `data()`)
/// becomes its part divided by `world`, its mean over the ranks; `sums` take the sums that
/// follow.
pub(crate) fn unpack_means(
    bucket: &Tensor,
    tensors: &[Tensor],
    sums: &mut [f32],
    world: usize,
) -> Result<()> {
    let mut offset = 0i64;
    for t in tensors {
        let n = t.numel() as i64;
        let part = bucket.f_narrow(0, offset, n)?.f_view(t.size().as_slice())?;
        t.data().f_copy_(&part.f_div_scalar(world as f64)?)?;
        offset += n;
    }
    let summed = bucket.f_narrow(0, offset, sums.len() as i64)?.f_to_kind(Kind::Float)?;
    sums.copy_from_slice(&Vec::<f32>::try_from(&summed.f_to(Device::Cpu)?)?);
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
    Ok(StoreGroup::with_timeout(store, world.rank, world.world_size, timeout))
}

/// Connects this process to its job ([`init`]) and picks the backend for tensors on `device`:
/// NCCL for CUDA when the crate is built with its `nccl` feature (`NcclGroup`), the
/// store otherwise.
pub fn init_for(world: &World, timeout: Duration, device: Device) -> Result<Arc<dyn Collectives>> {
    let group = init(world, timeout)?;
    #[cfg(feature = "nccl")]
    if device.is_cuda() {
        return Ok(Arc::new(crate::NcclGroup::new(group, timeout)?));
    }
    let _ = device;
    Ok(Arc::new(group))
}

/// [`Collectives`] over a c10d `TCPStore` (see the module docs).
#[derive(Debug)]
pub struct StoreGroup {
    store: TcpStore,
    rank: usize,
    world: usize,
    seq: AtomicU64,
    /// Bounds the store calls of the background lane's own connection.
    timeout: Duration,
    /// The thread that runs started all-reduces ([`Collectives::start_all_reduce_sum`]),
    /// over its own connection to the store; started at the first.
    lane: Mutex<Option<Lane>>,
}

/// A background thread running a [`StoreGroup`]'s started all-reduces in the order they were
/// started, each under the sequence number it took when started, over its own connection to
/// the store (a c10d store client serialises its calls, so a lane blocked waiting for another
/// rank's key on the collectives' connection would hold up the caller's collectives).
#[derive(Debug)]
struct Lane {
    jobs: Sender<LaneJob>,
}

/// One all-reduce for the lane: its sequence number, the tensor to sum in place, and where to
/// say it is done.
struct LaneJob {
    seq: u64,
    t: Tensor,
    done: SyncSender<Result<()>>,
}

/// An all-reduce running on a [`StoreGroup`]'s lane.
struct LanePending {
    done: Receiver<Result<()>>,
    rank: usize,
    world: usize,
}

impl Pending for LanePending {
    fn wait(self: Box<Self>) -> Result<()> {
        self.done.recv().unwrap_or_else(|_| {
            Err(DistError::Collective {
                op: "all_reduce",
                rank: self.rank,
                world: self.world,
                msg: "the store lane stopped before the collective was done".into(),
            })
        })
    }
}

/// The store timeout of a [`StoreGroup`] built without one: c10d's default for process groups.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The largest value [`StoreGroup`] puts under one key: c10d's store server closes the
/// connection of a client that sends a value over 8 MiB.
const PIECE: usize = 4 << 20;

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
        StoreGroup::with_timeout(store, rank, world, DEFAULT_TIMEOUT)
    }

    /// [`StoreGroup::new`], with `timeout` for the store calls of the connection that runs
    /// started all-reduces.
    pub fn with_timeout(store: TcpStore, rank: usize, world: usize, timeout: Duration) -> Self {
        let (seq, lane) = (AtomicU64::new(0), Mutex::new(None));
        StoreGroup { store, rank, world, seq, timeout, lane }
    }

    /// Hands the all-reduce of `t` under `seq` to the lane, started at the first call.
    fn submit(&self, seq: u64, t: Tensor) -> Result<Receiver<Result<()>>> {
        let mut lane = self.lane.lock().unwrap_or_else(|p| p.into_inner());
        if lane.is_none() {
            let addr = self.store.addr().to_string();
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .ok_or_else(|| self.err("all_reduce", format!("store address {addr}")))?;
            let store = TcpStore::connect(&host, port, false, 0, self.timeout)?;
            let own = StoreGroup::with_timeout(store, self.rank, self.world, self.timeout);
            let (jobs, queue) = channel::<LaneJob>();
            std::thread::Builder::new()
                .name(format!("selfsup-store-lane-{}", self.rank))
                .spawn(move || {
                    for job in queue {
                        let _ = job.done.send(own.all_reduce_at(job.seq, &job.t));
                    }
                })
                .map_err(|e| self.err("all_reduce", format!("cannot start the lane: {e}")))?;
            *lane = Some(Lane { jobs });
        }
        let (done, wait) = sync_channel(1);
        let job = LaneJob { seq, t, done };
        lane.as_ref()
            .expect("started above")
            .jobs
            .send(job)
            .map_err(|_| self.err("all_reduce", "the store lane has stopped".into()))?;
        Ok(wait)
    }

    /// `t` summed over the ranks in place, as the collective of sequence number `seq`.
    fn all_reduce_at(&self, seq: u64, t: &Tensor) -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        let parts = self.gather_all_at(seq, "all_reduce", t, false)?;
        let mut sum = parts[0].shallow_clone();
        for p in &parts[1..] {
            sum = sum.f_add(p)?;
        }
        t.shallow_clone().f_copy_(&sum)?;
        Ok(())
    }

    /// The job's store.
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    pub(crate) fn store(&self) -> &TcpStore {
        &self.store
    }

    fn err(&self, op: &'static str, msg: String) -> DistError {
        DistError::Collective { op, rank: self.rank, world: self.world, msg }
    }

    /// Puts `payload` under this collective's key and returns every rank's payload in rank
    /// order; the last rank to read deletes the keys. A payload travels in pieces of at most
    /// [`PIECE`] bytes (the store's server refuses values over 8 MiB), then its piece count.
    fn exchange(&self, payload: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.exchange_at(self.seq.fetch_add(1, Ordering::SeqCst), payload)
    }

    /// [`StoreGroup::exchange`] as the collective of sequence number `seq`.
    fn exchange_at(&self, seq: u64, payload: &[u8]) -> Result<Vec<Vec<u8>>> {
        let key = |r: usize| format!("selfsup/{seq}/{r}");
        let piece = |r: usize, i: usize| format!("selfsup/{seq}/{r}/{i}");
        let pieces: Vec<&[u8]> = payload.chunks(PIECE).collect();
        for (i, p) in pieces.iter().enumerate() {
            self.store.set(&piece(self.rank, i), p)?;
        }
        // Set last: a reader that sees the count finds every piece in place.
        self.store.set(&key(self.rank), &(pieces.len() as u64).to_le_bytes())?;
        let mut out = Vec::with_capacity(self.world);
        let mut counts = Vec::with_capacity(self.world);
        for r in 0..self.world {
            if r == self.rank {
                out.push(payload.to_vec());
                counts.push(pieces.len());
                continue;
            }
            let count = self.store.get(&key(r))?;
            let count: [u8; 8] = count.as_slice().try_into().map_err(|_| {
                self.err("exchange", format!("rank {r} sent a malformed piece count"))
            })?;
            let count = u64::from_le_bytes(count) as usize;
            let mut whole = Vec::new();
            for i in 0..count {
                whole.extend_from_slice(&self.store.get(&piece(r, i))?);
            }
            counts.push(count);
            out.push(whole);
        }
        let read = format!("selfsup/{seq}/read");
        if self.store.add(&read, 1)? == self.world as i64 {
            for (r, n) in counts.iter().enumerate() {
                for i in 0..*n {
                    self.store.delete(&piece(r, i))?;
                }
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
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        self.gather_all_at(seq, op, t, any_first_dim)
    }

    /// [`StoreGroup::gather_all`] as the collective of sequence number `seq`.
    fn gather_all_at(
        &self,
        seq: u64,
        op: &'static str,
        t: &Tensor,
        any_first_dim: bool,
    ) -> Result<Vec<Tensor>> {
        let parts = self.exchange_at(seq, &self.encode(op, t)?)?;
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
                self.check_like(op, r, &x, t, same)?;
                Ok(x)
            })
            .collect()
    }

    /// Fails naming both sides unless `same` (shapes that fit) and the kinds agree: rank `r`
    /// sent `x`, this rank holds `t`.
    fn check_like(
        &self,
        op: &'static str,
        r: usize,
        x: &Tensor,
        t: &Tensor,
        same: bool,
    ) -> Result<()> {
        if same && x.kind() == t.kind() {
            return Ok(());
        }
        Err(self.err(
            op,
            format!(
                "rank {r} sent {:?} {:?}, this rank has {:?} {:?}",
                x.kind(),
                x.size(),
                t.kind(),
                t.size()
            ),
        ))
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
        self.all_reduce_at(self.seq.fetch_add(1, Ordering::SeqCst), t)
    }

    /// On the lane (see [`Lane`]): the caller goes on while the ranks exchange `t`.
    fn start_all_reduce_sum(&self, t: &Tensor) -> Result<Box<dyn Pending>> {
        if self.world == 1 {
            return Ok(Box::new(Done));
        }
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let done = self.submit(seq, t.shallow_clone())?;
        Ok(Box::new(LanePending { done, rank: self.rank, world: self.world }))
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
            self.check_like("broadcast", root, &x, t, x.size() == t.size())?;
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

/// Runs `f` on `n` ranks that are threads of this process, each with its own connection to a
/// c10d `TCPStore` on a free local port served by rank 0 (as separate processes would have),
/// and returns the results in rank order: for testing code that runs collectives (a loss over
/// every rank's embeddings, a layer that synchronises) without launching processes. Rank 0
/// leaves the store last. Setting-up errors are returned; a panicking rank is resumed here.
pub fn on_local_ranks<T: Send + 'static>(
    n: usize,
    timeout: Duration,
    f: impl Fn(&Arc<dyn Collectives>) -> T + Send + Sync + Clone + 'static,
) -> Result<Vec<T>> {
    let port = crate::free_port().map_err(|e| DistError::Store {
        addr: "127.0.0.1:0".into(),
        msg: format!("no free port: {e}"),
    })?;
    let handles: Vec<_> = (0..n)
        .map(|rank| {
            let f = f.clone();
            std::thread::spawn(move || -> Result<T> {
                let world = World {
                    rank,
                    world_size: n,
                    local_rank: rank,
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                };
                let group: Arc<dyn Collectives> = Arc::new(init(&world, timeout)?);
                let out = f(&group);
                group.finish()?;
                Ok(out)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
}
