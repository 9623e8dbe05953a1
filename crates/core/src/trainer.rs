//! The trainer: owns the loop, the optimizers, schedules, precision, checkpoints and logging;
//! the [`PretextMethod`] owns only its loss.
//!
//! Per step: re-seed libtorch from `(seed, global step)`, let the method check the batch on the
//! host, move it to the device, run the method's `step` under autocast, back-propagate, clip,
//! update with the schedule's rate, call the method's post-step hook, then its extra optimizers
//! (a GAN's discriminator: each on its own loss, variables and buffers). The step's loss and
//! metrics stay on the device, summed there over the epoch: the host reads them back (through
//! [`crate::host::read`], counted) only for the line that goes to `metrics.jsonl` every
//! `log_every` steps, at the epoch's end and before a checkpoint, where the loss sums are also
//! checked for NaN and infinity. Every `checkpoint_every` epochs (and at the end, and at
//! `max_steps`) a checkpoint is written atomically, and after each epoch the method may write
//! its own files into the run folder. `resume` continues from the checkpoint as if the run had
//! never stopped: same weights, optimizer buffers, data order, augmentations and RNG streams.
use crate::checkpoint::{self, TrainerState, FORMAT_VERSION};
use crate::config::RunConfig;
use crate::device::{device_name, parse_device};
use crate::encoders::Encoder;
use crate::method::{BuildContext, InputNormalization, PretextMethod};
use crate::optim::{clip_grad_norm, Optimizer};
use crate::precision::{autocast, set_channels_last};
use crate::registry::Registry;
use crate::seed::{derive_seed, name_hash};
use crate::stage::ToDevice;
use crate::{CoreError, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use selfsup_data::{Batch, ImageDataset, Loader, LoaderConfig};
use selfsup_dist::{average_gradients, Collectives, GradReducer};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Tensor};

/// A function called after each epoch (1-based epoch count) with the encoder and the pixel
/// normalisation it is trained with, returning extra metrics to log (the kNN monitor).
pub type EpochHook<'a> = Box<
    dyn FnMut(u64, &dyn Encoder, Option<&InputNormalization>) -> Result<Vec<(String, f64)>> + 'a,
>;

/// How to run [`train`], beside the config.
pub struct TrainOptions<'a> {
    /// Continue from the run folder's checkpoint. Without it, a run folder that already holds a
    /// checkpoint is an error (nothing is overwritten).
    pub resume: bool,
    /// Show a progress bar on a terminal.
    pub progress: bool,
    /// Train on this dataset instead of opening `config.data`.
    pub dataset: Option<ImageDataset>,
    /// Called every `hook_every` epochs.
    pub epoch_hook: Option<EpochHook<'a>>,
    /// Epoch interval of `epoch_hook`.
    pub hook_every: u64,
    /// Stop cleanly on SIGINT or SIGTERM ([`crate::signals`]): finish the step, write a
    /// checkpoint, return [`CoreError::Interrupted`]. The binary's commands set it; a library
    /// caller may keep its own handlers (default false).
    pub handle_signals: bool,
    /// The data-parallel job this process is a rank of (`None`: a single process). Each rank
    /// trains on its shard of every global batch of `train.batch_size` images and the
    /// gradients are averaged across ranks after backward; rank 0 alone writes the run folder
    /// (config, metrics, checkpoints, the method's files) and runs the epoch hook.
    pub group: Option<Arc<dyn Collectives>>,
}

impl Default for TrainOptions<'_> {
    fn default() -> Self {
        TrainOptions {
            resume: false,
            progress: true,
            dataset: None,
            epoch_hook: None,
            hook_every: 1,
            handle_signals: false,
            group: None,
        }
    }
}

impl std::fmt::Debug for TrainOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOptions").field("resume", &self.resume).finish()
    }
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Optimizer steps done in total.
    pub global_step: u64,
    /// Completed epochs.
    pub epochs_done: u64,
    /// Mean loss of the last (partial) epoch run in this call.
    pub last_epoch_loss: f64,
    /// Wall time of this call's training loop in seconds.
    pub seconds: f64,
    /// Encoder inputs per second in this call.
    pub inputs_per_second: f64,
    /// Source images per second in this call.
    pub images_per_second: f64,
}

/// A seeded subset of `n` images of `ds` (all of it when `n` is `None` or not smaller), drawn
/// from the random stream `stream` of `seed` and kept in dataset order.
pub fn seeded_subset(ds: &ImageDataset, n: Option<usize>, seed: u64, stream: &str) -> ImageDataset {
    match n {
        Some(n) if n < ds.len() => {
            let mut idx: Vec<usize> = (0..ds.len()).collect();
            let mut rng =
                rand_chacha::ChaCha8Rng::seed_from_u64(derive_seed(seed, &[name_hash(stream)]));
            idx.shuffle(&mut rng);
            idx.truncate(n);
            idx.sort_unstable();
            ds.subset(&idx)
        }
        _ => ds.clone(),
    }
}

/// Opens the training set of `cfg` (the seeded subset when `data.max_images` is set).
pub fn open_train_set(cfg: &RunConfig) -> Result<ImageDataset> {
    let dir = selfsup_data::resolve_data_dir(cfg.data.data_dir.as_deref());
    let ds = selfsup_data::open_dataset(&cfg.data.dataset, cfg.data.split, &dir)?;
    Ok(seeded_subset(&ds, cfg.data.max_images, cfg.seed, "max_images"))
}

/// The method of `cfg` as the trainer builds it for `dataset` on `device`: libtorch seeded
/// with `cfg.seed`, then the method built on a fresh var store (so the same config gives the
/// same initial weights, which is also what the random-init baselines rely on). Returns the var
/// store, the method and the build context.
pub fn build_method(
    cfg: &RunConfig,
    registry: &Registry,
    dataset: &ImageDataset,
    device: tch::Device,
) -> Result<(nn::VarStore, Box<dyn PretextMethod>, BuildContext)> {
    build_method_in_job(cfg, registry, dataset, device, None)
}

/// [`build_method`] for a rank of a data-parallel job (`group`): the method sees the group in
/// its [`BuildContext`], and its batch norms are synchronised over it when the config's
/// `train.sync_batch_norm` is set.
pub fn build_method_in_job(
    cfg: &RunConfig,
    registry: &Registry,
    dataset: &ImageDataset,
    device: tch::Device,
    group: Option<Arc<dyn Collectives>>,
) -> Result<(nn::VarStore, Box<dyn PretextMethod>, BuildContext)> {
    crate::seed::seed_torch(cfg.seed);
    let vs = nn::VarStore::new(device);
    let _sync_bn = match &group {
        Some(g) if cfg.train.sync_batch_norm => Some(crate::encoders::sync_batch_norm(g.clone())),
        _ => None,
    };
    let ctx = BuildContext {
        device,
        seed: cfg.seed,
        num_train_images: dataset.len(),
        image_channels: dataset.channels() as i64,
        image_size: dataset.height() as i64,
        encoder: cfg.encoder.clone(),
        group,
    };
    let method = registry.build(&cfg.method, &vs.root(), &cfg.method_config, &ctx)?;
    Ok((vs, method, ctx))
}

/// Named parameters, sorted by name.
type Params = Vec<(String, Tensor)>;

/// The trainable variables, sorted by name, split into the main group and each extra
/// optimizer's prefix group.
fn param_groups(vs: &nn::VarStore, prefixes: &[String]) -> (Params, Vec<Params>) {
    let trainable: Vec<(String, Tensor)> =
        checkpoint::sorted_variables(vs).into_iter().filter(|(_, t)| t.requires_grad()).collect();
    let mut extra: Vec<Vec<(String, Tensor)>> = prefixes.iter().map(|_| Vec::new()).collect();
    let mut main = Vec::new();
    for (n, t) in trainable {
        match prefixes.iter().position(|p| n.starts_with(p.as_str())) {
            Some(i) => extra[i].push((n, t)),
            None => main.push((n, t)),
        }
    }
    (main, extra)
}

/// Each extra optimizer needs its own name (its checkpoint entries are `extra.<name>.*`) and at
/// least one trainable variable under its prefix.
fn check_extra_optimizers(
    method: &str,
    extras: &[crate::method::ExtraOptimizer],
    groups: &[Params],
) -> Result<()> {
    for (i, (e, group)) in extras.iter().zip(groups).enumerate() {
        if extras[..i].iter().any(|o| o.name == e.name) {
            return Err(CoreError::Config(format!(
                "method `{method}` asks for two extra optimizers named `{}`",
                e.name
            )));
        }
        if group.is_empty() {
            return Err(CoreError::Config(format!(
                "method `{method}`: extra optimizer `{}` has no trainable variable under `{}`",
                e.name, e.prefix
            )));
        }
    }
    Ok(())
}

/// The first global step whose operators `SELFSUP_OP_COUNTS` counts: the steps before pick
/// kernels and fill caches (`cargo xtask bench train`'s warm-up steps, and PyTorch's).
const OP_COUNTS_FROM: u64 = 2;

/// Writes the operators counted over `steps` steps to `path` ([`crate::op_counts`]): JSON
/// `{"steps": n, "ops": {name: calls, ...}, "self_us": {name: microseconds, ...}}`, written
/// whole or not at all.
fn write_op_counts(path: &Path, steps: u64) -> Result<()> {
    let counts = crate::op_counts::take().map_err(CoreError::Training)?;
    let ops: serde_json::Map<String, serde_json::Value> =
        counts.iter().map(|c| (c.name.clone(), c.calls.into())).collect();
    let self_us: serde_json::Map<String, serde_json::Value> =
        counts.iter().map(|c| (c.name.clone(), (c.self_ns as f64 / 1e3).into())).collect();
    let text = serde_json::json!({ "steps": steps, "ops": ops, "self_us": self_us }).to_string();
    checkpoint::write_atomic(path, text.as_bytes())
}

/// Drops the gradients of `params` before a backward pass ([`crate::optim::drop_grads`]).
fn drop_grads(params: &[(String, Tensor)]) -> Result<()> {
    crate::optim::drop_grads(params.iter().map(|(_, t)| t))
}

/// Appends JSON lines to `metrics.jsonl`. A step line (`"kind": "step"`) holds `epoch`, `step`,
/// `lr`, `loss`, `inputs_per_s` (over the epoch so far), `elapsed_s` (wall seconds since this
/// process's loop started: `cargo xtask bench train` times steady-state steps by it),
/// `grad_norm` when clipping, and the method's metrics.
struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    /// Opens the log; on resume, drops lines past the checkpoint's step (they will be redone).
    fn open(run_dir: &Path, keep_up_to_step: Option<u64>) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        if let Some(step) = keep_up_to_step {
            if let Ok(text) = std::fs::read_to_string(&path) {
                let kept: String = text
                    .lines()
                    .filter(|l| {
                        serde_json::from_str::<serde_json::Value>(l)
                            .ok()
                            .and_then(|v| v["step"].as_u64())
                            .is_some_and(|s| s <= step)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                checkpoint::write_atomic(&path, kept.as_bytes())?;
            }
        } else if path.exists() {
            std::fs::remove_file(&path).map_err(|e| CoreError::io(&path, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| CoreError::io(&path, e))?;
        Ok(MetricsLog { file, path })
    }

    fn write(&mut self, v: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(|e| CoreError::io(&self.path, e))
    }
}

/// Running sums of the step metrics over an epoch (the loss first), kept on the device in f64
/// and read back only when a log line, a finiteness check or a checkpoint needs them.
#[derive(Default)]
struct Means {
    sums: Vec<(String, Tensor)>,
    n: u64,
}

impl Means {
    /// Adds one step's loss and metrics (the metric names of the epoch's first step).
    fn add(&mut self, loss: &Tensor, metrics: &[(String, Tensor)]) -> Result<()> {
        let zero = || loss.f_zeros_like()?.f_to_kind(tch::Kind::Double)?.f_reshape([] as [i64; 0]);
        if self.sums.is_empty() {
            self.sums.push(("loss".into(), zero()?));
            for (k, _) in metrics {
                self.sums.push((k.clone(), zero()?));
            }
        }
        let add = |sum: &mut Tensor, v: &Tensor| -> Result<()> {
            let v = v.f_to_kind(tch::Kind::Double)?.f_reshape([] as [i64; 0])?;
            let _ = sum.f_add_(&v)?;
            Ok(())
        };
        add(&mut self.sums[0].1, loss)?;
        for (k, v) in metrics {
            if let Some(slot) = self.sums.iter_mut().find(|(n, _)| n == k) {
                add(&mut slot.1, v)?;
            }
        }
        self.n += 1;
        Ok(())
    }

    /// The sums read back to the host.
    fn sums(&self) -> Result<Vec<(String, f64)>> {
        self.sums.iter().map(|(k, t)| Ok((k.clone(), crate::host::read(t)?))).collect()
    }

    fn saved(&self) -> Result<checkpoint::EpochMeans> {
        Ok(checkpoint::EpochMeans { sums: self.sums()?, n: self.n })
    }

    fn restored(m: &checkpoint::EpochMeans, device: tch::Device) -> Self {
        let sums =
            m.sums.iter().map(|(k, v)| (k.clone(), Tensor::from(*v).to_device(device))).collect();
        Means { sums, n: m.n }
    }

    fn means(&self) -> Result<Vec<(String, f64)>> {
        let n = self.n.max(1) as f64;
        Ok(self.sums()?.into_iter().map(|(k, v)| (k, v / n)).collect())
    }
}

fn progress_bar(show: bool, total: u64, done: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_position(done);
    pb
}

/// Trains `cfg.method` into `run_dir` (created if needed): writes `config.json`,
/// `metrics.jsonl` and `checkpoint/`.
///
/// The phases are the methods of the private `Trainer`: set-up and resume (`set_up`,
/// `checkpoint_to_resume`, `restore`), the epoch loop (`run`), the step (`step`), end-of-epoch
/// work (`end_of_epoch`) and checkpointing (`save`).
pub fn train(
    cfg: &RunConfig,
    registry: &Registry,
    run_dir: &Path,
    opts: &mut TrainOptions<'_>,
) -> Result<TrainSummary> {
    if opts.handle_signals {
        crate::signals::install();
    }
    let result = Trainer::set_up(cfg, registry, run_dir, opts)?.run(opts);
    // In a job, rank 0 serves the store: it returns only once the others are done with it.
    if let (Some(g), Ok(_) | Err(CoreError::Interrupted { .. })) = (&opts.group, &result) {
        g.finish()?;
    }
    result
}

/// Where a run stands: the epoch the next step belongs to, batches of it done, steps in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Position {
    epoch: u64,
    batch_in_epoch: u64,
    global_step: u64,
}

/// What one optimizer step reports to the epoch loop: values still on the device, read back
/// only when a step line is logged.
struct StepReport {
    loss: Tensor,
    metrics: Vec<(String, Tensor)>,
    inputs: i64,
    lr: f64,
    grad_norm: Option<Tensor>,
}

/// A run being trained: everything [`train`] sets up, and the position in the run.
struct Trainer<'a> {
    cfg: &'a RunConfig,
    run_dir: &'a Path,
    device: tch::Device,
    vs: nn::VarStore,
    method: Box<dyn PretextMethod>,
    /// The method's input normalisation, recorded in checkpoints and given to epoch hooks.
    normalization: Option<InputNormalization>,
    extras: Vec<crate::method::ExtraOptimizer>,
    params: Params,
    extra_params: Vec<Params>,
    optimizer: Box<dyn Optimizer>,
    extra_opts: Vec<Box<dyn Optimizer>>,
    /// The batches; taken by `run` (its epochs borrow it while steps borrow the trainer).
    loader: Option<Loader>,
    steps_per_epoch: u64,
    image_channels: i64,
    images: usize,
    pos: Position,
    /// The running means of the epoch a mid-epoch checkpoint was taken in, until the resumed
    /// epoch loop takes them.
    resumed_means: Option<Means>,
    /// The metrics log; rank 0's alone in a data-parallel job.
    log: Option<MetricsLog>,
    /// The data-parallel job, when there is one.
    group: Option<Arc<dyn Collectives>>,
    /// In a job with `train.bucket_mb > 0`: the main parameters' gradients averaged in
    /// buckets started during backward.
    reducer: Option<GradReducer>,
    /// Whether this run stops on SIGINT/SIGTERM ([`TrainOptions::handle_signals`]).
    handle_signals: bool,
    /// In a job: whether some rank was asked to stop by the last step's exchange.
    stop_agreed: bool,
}

impl<'a> Trainer<'a> {
    /// Set-up and resume: checks the config and any checkpoint in `run_dir` against it, builds
    /// the method, optimizers and loader, and only then creates the folder, restores the
    /// checkpoint (with `opts.resume`), writes `config.json` and opens the metrics log. Bad
    /// input fails here, before anything is written.
    fn set_up(
        cfg: &'a RunConfig,
        registry: &Registry,
        run_dir: &'a Path,
        opts: &mut TrainOptions<'_>,
    ) -> Result<Self> {
        cfg.validate()?;
        let device = parse_device(&cfg.device)?;
        cfg.train.precision.check(device)?;
        if cfg.train.threads > 0 {
            tch::set_num_threads(cfg.train.threads as i32);
        }
        let switches = crate::determinism::apply(cfg.train.deterministic, cfg.train.tf32, device)?;
        let group = opts.group.clone();
        let (rank, world_size) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.world_size()));
        if !cfg.train.batch_size.is_multiple_of(world_size) {
            return Err(CoreError::Config(format!(
                "train.batch_size = {} is not divisible by the job's {world_size} processes",
                cfg.train.batch_size
            )));
        }
        let resume_from = Self::checkpoint_to_resume(cfg, run_dir, opts.resume, world_size)?;

        let dataset = match opts.dataset.take() {
            Some(d) => d,
            None => open_train_set(cfg)?,
        };
        let (vs, method, ctx) =
            build_method_in_job(cfg, registry, &dataset, device, group.clone())?;
        let normalization = method.input_normalization();
        if cfg.train.channels_last {
            set_channels_last(&vs)?;
        }
        let extras = method.extra_optimizers();
        let prefixes: Vec<String> = extras.iter().map(|e| e.prefix.clone()).collect();
        let (params, extra_params) = param_groups(&vs, &prefixes);
        check_extra_optimizers(&cfg.method, &extras, &extra_params)?;
        if params.is_empty() {
            return Err(CoreError::Config(format!(
                "method `{}` has no trainable variables",
                cfg.method
            )));
        }
        let optimizer: Box<dyn Optimizer> = cfg.train.optimizer.build(&params)?;
        let extra_opts: Vec<Box<dyn Optimizer>> = extras
            .iter()
            .zip(&extra_params)
            .map(|(e, p)| e.optimizer.build(p))
            .collect::<Result<_>>()?;

        let loader = Loader::with_host_alloc(
            dataset.clone(),
            method.views(),
            LoaderConfig {
                batch_size: cfg.train.batch_size,
                shuffle: true,
                drop_last: true,
                seed: cfg.seed,
                prefetch: cfg.train.prefetch,
                threads: cfg.train.threads,
                world_size,
                rank,
            },
            crate::stage::host_alloc(device),
        )?;
        let steps_per_epoch = loader.batches_per_epoch() as u64;
        if steps_per_epoch == 0 {
            return Err(CoreError::Config(format!(
                "train.batch_size = {} exceeds the {} training images (drop_last leaves no batch)",
                cfg.train.batch_size,
                dataset.len()
            )));
        }

        // Everything that can fail on bad input has been checked: only now is the folder
        // created (by rank 0 alone in a data-parallel job).
        let writer = rank == 0;
        let log = if writer {
            std::fs::create_dir_all(run_dir).map_err(|e| CoreError::io(run_dir, e))?;
            Some(MetricsLog::open(run_dir, resume_from.as_ref().map(|c| c.state.global_step))?)
        } else {
            None
        };
        let reducer = match &group {
            Some(g) if g.world_size() > 1 && cfg.train.bucket_mb > 0.0 => {
                let bytes = (cfg.train.bucket_mb * (1u64 << 20) as f64) as usize;
                Some(GradReducer::new(g.clone(), &params, bytes)?)
            }
            _ => None,
        };
        let mut t = Trainer {
            cfg,
            run_dir,
            device,
            vs,
            method,
            normalization,
            extras,
            params,
            extra_params,
            optimizer,
            extra_opts,
            loader: Some(loader),
            steps_per_epoch,
            image_channels: ctx.image_channels,
            images: dataset.len(),
            pos: Position::default(),
            resumed_means: None,
            log,
            reducer,
            group,
            handle_signals: opts.handle_signals,
            stop_agreed: false,
        };
        if let Some(ck) = &resume_from {
            t.restore(ck)?;
        }
        if let Some(g) = &t.group {
            // Every rank builds the same weights from the seed; rank 0's are sent anyway, as
            // DDP does, so that no device's initialiser can make the ranks start apart.
            for (_, v) in checkpoint::sorted_variables(&t.vs) {
                g.broadcast(&v, 0)?;
            }
            tracing::info!(
                rank,
                world_size,
                backend = g.backend(),
                "data-parallel: {} images a step per rank",
                cfg.train.batch_size / world_size
            );
        }
        if !writer {
            return Ok(t);
        }
        let config_json = serde_json::to_vec_pretty(cfg).expect("config serializes");
        checkpoint::write_atomic(&run_dir.join("config.json"), &config_json)?;
        let switches_json = serde_json::to_vec_pretty(&switches).expect("switches serialize");
        checkpoint::write_atomic(&run_dir.join("determinism.json"), &switches_json)?;
        Ok(t)
    }

    /// The checkpoint in `run_dir` to continue from: `None` when there is none; an error when
    /// there is one and `resume` is false (nothing is overwritten), or when its config differs
    /// from `cfg` in anything but the run's length (`train.epochs`, `train.max_steps`).
    fn checkpoint_to_resume(
        cfg: &RunConfig,
        run_dir: &Path,
        resume: bool,
        world_size: usize,
    ) -> Result<Option<checkpoint::Checkpoint>> {
        if !checkpoint::exists(run_dir) {
            return Ok(None);
        }
        if !resume {
            return Err(CoreError::Config(format!(
                "{} already holds a checkpoint: pass --resume to continue it, or choose another --out",
                run_dir.display()
            )));
        }
        let (ck, fallback) = checkpoint::load_for_resume(run_dir)?;
        if let Some(note) = fallback {
            tracing::warn!("--resume: {note}");
        }
        if ck.state.world_size != world_size as u64 {
            if !cfg.train.allow_world_size_change {
                return Err(CoreError::Config(format!(
                    "--resume: {}/checkpoint was written by a job of {} processes, this one has \
                     {world_size}; resume at the same world size (each rank's share of the \
                     batch and its random stream depend on it), or set \
                     train.allow_world_size_change=true to go on at the same global batch",
                    run_dir.display(),
                    ck.state.world_size
                )));
            }
            tracing::warn!(
                "--resume: the checkpoint was written by a job of {} processes, this one has \
                 {world_size}; going on at the same global batch of {}",
                ck.state.world_size,
                cfg.train.batch_size
            );
        }
        let (mut a, mut b) = (ck.state.config.clone(), cfg.clone());
        // Allowing a change of world size is a choice of this resume, not of the recipe.
        a.train.allow_world_size_change = b.train.allow_world_size_change;
        // A resumed run may extend its length (unless its schedule is cosine, whose shape
        // depends on it), move to another device (`cuda:0` to `cuda:1`,
        // a GPU to the CPU) or name its data folder another way, not change what is learned.
        if crate::config::same_data_folder(a.data.data_dir.as_deref(), b.data.data_dir.as_deref()) {
            a.data.data_dir = b.data.data_dir.clone();
        }
        if a.train.epochs != b.train.epochs {
            if let crate::schedule::ScheduleConfig::Cosine { .. } = a.train.schedule {
                return Err(CoreError::Config(format!(
                    "--resume with train.epochs {} → {}: the cosine schedule decays over \
                     train.epochs, so the rate would jump back up mid-run; keep train.epochs = \
                     {} (train.max_steps may stop earlier), or start a new run",
                    a.train.epochs, b.train.epochs, a.train.epochs
                )));
            }
        }
        a.train.epochs = 0;
        b.train.epochs = 0;
        a.train.max_steps = None;
        b.train.max_steps = None;
        a.train.checkpoint_minutes = 0.0;
        b.train.checkpoint_minutes = 0.0;
        a.device.clear();
        b.device.clear();
        if a != b {
            return Err(CoreError::Config(format!(
                "--resume: the config differs from the one in {}/checkpoint (only train.epochs (not under a cosine schedule), train.max_steps and device may change)",
                run_dir.display()
            )));
        }
        Ok(Some(ck))
    }

    /// Whether this process writes the run folder: a single process, or rank 0 of a job.
    fn writer(&self) -> bool {
        self.group.as_ref().is_none_or(|g| g.rank() == 0)
    }

    /// Loads the checkpoint's variables, optimizer buffers, extra optimizers' buffers and method
    /// state, and its position.
    fn restore(&mut self, ck: &checkpoint::Checkpoint) -> Result<()> {
        let device = self.device;
        let model_path = checkpoint::checkpoint_dir(self.run_dir).join("model.safetensors");
        checkpoint::load_into(&self.vs, &ck.model, "", &model_path)?;
        let with_prefix = |prefix: &str| -> Vec<(String, Tensor)> {
            ck.trainer
                .iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .map(|(n, t)| (n[prefix.len()..].to_string(), t.to_device(device)))
                .collect()
        };
        self.optimizer.load_state(&with_prefix("optim."))?;
        for (e, opt) in self.extras.iter().zip(self.extra_opts.iter_mut()) {
            opt.load_state(&with_prefix(&format!("extra.{}.", e.name)))?;
        }
        self.method.load_state_tensors(&with_prefix("method."))?;
        self.pos = Position {
            epoch: ck.state.epoch,
            batch_in_epoch: ck.state.batch_in_epoch,
            global_step: ck.state.global_step,
        };
        self.resumed_means = ck.state.epoch_means.as_ref().map(|m| Means::restored(m, self.device));
        tracing::info!(
            epoch = self.pos.epoch,
            global_step = self.pos.global_step,
            "resumed from {}",
            self.run_dir.display()
        );
        Ok(())
    }

    /// Checkpointing: writes the variables, the optimizers' buffers, the method's state and
    /// the position atomically (see [`checkpoint::save`]).
    fn save(&self, epoch_means: Option<&Means>) -> Result<()> {
        if !self.writer() {
            return Ok(());
        }
        let epoch_means = match epoch_means.filter(|_| self.pos.batch_in_epoch > 0) {
            Some(m) => Some(m.saved()?),
            None => None,
        };
        let mut trainer: Vec<(String, Tensor)> =
            self.optimizer.state().into_iter().map(|(n, t)| (format!("optim.{n}"), t)).collect();
        for (e, opt) in self.extras.iter().zip(self.extra_opts.iter()) {
            trainer
                .extend(opt.state().into_iter().map(|(n, t)| (format!("extra.{}.{n}", e.name), t)));
        }
        trainer.extend(
            self.method.state_tensors().into_iter().map(|(n, t)| (format!("method.{n}"), t)),
        );
        let state = TrainerState {
            version: FORMAT_VERSION,
            epoch: self.pos.epoch,
            batch_in_epoch: self.pos.batch_in_epoch,
            global_step: self.pos.global_step,
            config: self.cfg.clone(),
            image_channels: self.image_channels,
            normalization: self.normalization.clone(),
            epoch_means,
            world_size: self.group.as_ref().map_or(1, |g| g.world_size() as u64),
            model_sha256: String::new(),
            trainer_sha256: String::new(),
        };
        checkpoint::save(self.run_dir, &state, &checkpoint::sorted_variables(&self.vs), &trainer)
    }

    /// One optimizer step on `batch` (already on the device): re-seed libtorch from `(seed,
    /// global step)`, the method's loss under autocast, backward, clipping, the main optimizer
    /// at the schedule's rate, the method's post-step hook, then each extra optimizer on its
    /// loss. Advances the position by one step.
    fn step(&mut self, batch: &Batch) -> Result<StepReport> {
        let cfg = self.cfg;
        let Position { epoch, batch_in_epoch, global_step } = self.pos;
        // Rank 0 (and a single process) draws the stream of `(seed, step)`; other ranks their
        // own, so that their shards' random ops (masks, noise) are not copies of rank 0's.
        let mut step_seed = derive_seed(cfg.seed, &[name_hash("step"), global_step]);
        if let Some(rank) = self.group.as_ref().map(|g| g.rank()).filter(|r| *r > 0) {
            step_seed = derive_seed(step_seed, &[name_hash("rank"), rank as u64]);
        }
        tch::manual_seed((step_seed >> 1) as i64);
        let frac = epoch as f64 + batch_in_epoch as f64 / self.steps_per_epoch as f64;
        let lr = cfg.train.schedule.lr_at(cfg.train.optimizer.lr(), frac, cfg.train.epochs as f64);

        drop_grads(&self.params)?;
        let method = &mut self.method;
        let out = autocast(self.device, cfg.train.precision, || method.step(batch, true))?;
        // Not read back here: the loss sums are checked for NaN and infinity by
        // `check_finite` at every log line and before every checkpoint.
        // Fallible: a backward through a collective (gathered negatives, synchronised batch
        // norm) fails when another rank of the job has gone.
        if let Some(r) = &self.reducer {
            r.arm();
        }
        out.loss.f_backward()?;
        let loss = out.loss.detach();
        if let Some(g) = &self.group {
            // The loss and metrics are averaged over the ranks with the gradients (the global
            // batch's values, for means over equal shards), and a stop request (SIGINT/SIGTERM)
            // rides along, so that every rank stops after the same step.
            let mut stop =
                [f32::from(u8::from(self.handle_signals && crate::signals::requested()))];
            let means: Vec<Tensor> = std::iter::once(loss.shallow_clone())
                .chain(out.metrics.iter().map(|(_, m)| m.shallow_clone()))
                .collect();
            match &self.reducer {
                Some(r) => {
                    r.finish(&means, &mut stop)?;
                }
                None => average_gradients(g.as_ref(), &self.params, &means, &mut stop)?,
            }
            self.stop_agreed = stop[0] > 0.0;
        }
        let grad_norm = match cfg.train.grad_clip {
            Some(c) => Some(clip_grad_norm(&self.params, c)?),
            None => None,
        };
        self.optimizer.step(&self.params, lr)?;
        self.method.after_optimizer_step(global_step)?;
        let mut metrics = out.metrics;
        if !self.extras.is_empty() {
            let method = &mut self.method;
            let losses = autocast(self.device, cfg.train.precision, || method.extra_losses(batch))?;
            for (i, e) in self.extras.iter().enumerate() {
                if let Some((_, l)) = losses.iter().find(|(n, _)| n == &e.name) {
                    drop_grads(&self.extra_params[i])?;
                    l.f_backward()?;
                    let value = l.detach();
                    if let Some(g) = &self.group {
                        let means = [value.shallow_clone()];
                        average_gradients(g.as_ref(), &self.extra_params[i], &means, &mut [])?;
                    }
                    let elr =
                        cfg.train.schedule.lr_at(e.optimizer.lr(), frac, cfg.train.epochs as f64);
                    self.extra_opts[i].step(&self.extra_params[i], elr)?;
                    metrics.push((format!("{}_loss", e.name), value));
                }
            }
        }
        self.pos.global_step += 1;
        self.pos.batch_in_epoch += 1;
        Ok(StepReport { loss, metrics, inputs: out.inputs, lr, grad_norm })
    }

    /// Fails when a loss summed over the epoch so far (the method's, or an extra optimizer's) is
    /// NaN or infinite. The sums are read back here, at every step line and before every
    /// checkpoint, not at every step (which would make the host wait for the device): a loss
    /// that turns non-finite is caught within `log_every` steps, and never checkpointed.
    /// `since` is the global step after the last check.
    fn check_finite(&self, means: &Means, since: u64, lr: f64) -> Result<()> {
        for (k, sum) in &means.sums {
            let extra = self.extras.iter().find(|e| k.strip_suffix("_loss") == Some(&e.name));
            if k != "loss" && extra.is_none() {
                continue;
            }
            let v = crate::host::read(sum)?;
            if !v.is_finite() {
                let what = match extra {
                    Some(e) => format!("loss of extra optimizer `{}`", e.name),
                    None => "loss".to_string(),
                };
                let Position { epoch, global_step, .. } = self.pos;
                let at = if since + 1 >= global_step {
                    format!("step {global_step}")
                } else {
                    format!("one of steps {}..={global_step}", since + 1)
                };
                return Err(CoreError::Training(format!(
                    "{what} is {v} at epoch {epoch}, {at} (lr {lr:.3e}); last checkpoint kept"
                )));
            }
        }
        Ok(())
    }

    /// End-of-epoch work, after the epoch's last step and its checkpoint (so that a failing
    /// hook loses nothing): the method writes its epoch artifacts, the epoch hook runs when
    /// due, and the epoch line (its mean metrics) is logged.
    fn end_of_epoch(
        &mut self,
        means: &[(String, f64)],
        seconds: f64,
        opts: &mut TrainOptions<'_>,
    ) -> Result<()> {
        let epoch = self.pos.epoch;
        let mut line = serde_json::json!({
            "kind": "epoch", "epoch": epoch, "step": self.pos.global_step, "seconds": seconds,
        });
        for (k, v) in means {
            line[k.as_str()] = (*v).into();
        }
        let Some(log) = self.log.as_mut() else {
            // Not rank 0: nothing to write, no hook to run.
            return Ok(());
        };
        let last = epoch == self.cfg.train.epochs;
        self.method.write_epoch_artifacts(epoch, last, self.run_dir)?;
        if let Some(hook) = opts.epoch_hook.as_mut() {
            if epoch.is_multiple_of(opts.hook_every.max(1)) || epoch == self.cfg.train.epochs {
                for (k, v) in hook(epoch, self.method.encoder(), self.normalization.as_ref())? {
                    line[k] = v.into();
                }
            }
        }
        tracing::info!("epoch {epoch}: {line}");
        log.write(&line)
    }

    /// The epoch loop: runs epochs (from the restored position) until `train.epochs` or
    /// `train.max_steps`, logging steps every `log_every`, and checkpoints every
    /// `checkpoint_every` epochs and at the end.
    fn run(mut self, opts: &mut TrainOptions<'_>) -> Result<TrainSummary> {
        let cfg = self.cfg;
        let loader = self.loader.take().expect("the loader is set up once and taken once");
        let total_steps = cfg.train.epochs * self.steps_per_epoch;
        let stop_at = cfg.train.max_steps.map_or(total_steps, |m| m.min(total_steps));
        let pb = progress_bar(opts.progress, stop_at, self.pos.global_step);
        let started = Instant::now();
        let (mut inputs_done, mut images_done) = (0i64, 0u64);
        let mut last_epoch_loss = f64::NAN;
        tracing::info!(
            method = %cfg.method,
            device = %device_name(self.device),
            images = self.images,
            steps_per_epoch = self.steps_per_epoch,
            "training {} epochs into {}",
            cfg.train.epochs,
            self.run_dir.display()
        );

        let op_counts = crate::op_counts::from_env();
        let op_key = crate::op_counts::Key::from_env();
        let mut counted_steps = 0u64;
        let mut last_save = Instant::now();
        // The global step after the last finiteness check, and the last step's rate.
        let (mut checked, mut last_lr) = (self.pos.global_step, f64::NAN);
        // In a job, the ranks agree at each step (see `step`); alone, the flag is read here.
        let stop_requested = |t: &Trainer<'_>| {
            t.handle_signals
                && if t.group.is_some() { t.stop_agreed } else { crate::signals::requested() }
        };
        while self.pos.epoch < cfg.train.epochs && self.pos.global_step < stop_at {
            let _span = tracing::info_span!("epoch", epoch = self.pos.epoch).entered();
            // Resumed mid-epoch: the epoch's means so far, as the checkpoint kept them.
            let mut means = match self.resumed_means.take() {
                Some(m) if self.pos.batch_in_epoch > 0 => m,
                _ => Means::default(),
            };
            let epoch_start = Instant::now();
            let mut epoch_inputs = 0i64;
            let batches = loader.epoch_from(self.pos.epoch, self.pos.batch_in_epoch as usize);
            // On CUDA the next batch's copies run on a side stream during the step.
            let mut batches = ToDevice::new(batches, self.device, cfg.train.channels_last)?;
            while let Some(batch) = batches.next_with(|b| self.method.check_batch(b)) {
                let batch: Batch = batch?;
                // `SELFSUP_OP_COUNTS`: the operators of the steps after the first two (which
                // pick kernels), log lines and checkpoints left out.
                let counting = op_counts.is_some() && self.pos.global_step >= OP_COUNTS_FROM;
                if counting {
                    crate::op_counts::enable_keyed(true, op_key).map_err(CoreError::Training)?;
                    counted_steps += 1;
                }
                let r = self.step(&batch)?;
                batches.prefetch(|b| self.method.check_batch(b));
                epoch_inputs += r.inputs;
                inputs_done += r.inputs;
                images_done += cfg.train.batch_size as u64;
                means.add(&r.loss, &r.metrics)?;
                if counting {
                    crate::op_counts::enable_keyed(false, op_key).map_err(CoreError::Training)?;
                }
                last_lr = r.lr;

                // The host reads values back only here, every `log_every` steps.
                let Position { epoch, batch_in_epoch, global_step } = self.pos;
                if global_step % cfg.train.log_every == 0 || batch_in_epoch == self.steps_per_epoch
                {
                    self.check_finite(&means, checked, r.lr)?;
                    checked = global_step;
                    let loss = crate::host::read(&r.loss)?;
                    let secs = epoch_start.elapsed().as_secs_f64().max(1e-9);
                    let mut line = serde_json::json!({
                        "kind": "step", "epoch": epoch, "step": global_step, "lr": r.lr,
                        "loss": loss, "inputs_per_s": epoch_inputs as f64 / secs,
                        "elapsed_s": started.elapsed().as_secs_f64(),
                    });
                    if let Some(g) = &r.grad_norm {
                        line["grad_norm"] = crate::host::read(g)?.into();
                    }
                    for (k, v) in &r.metrics {
                        line[k] = crate::host::read(v)?.into();
                    }
                    if let Some(log) = self.log.as_mut() {
                        log.write(&line)?;
                    }
                    pb.set_message(format!(
                        "epoch {}/{} loss {:.4} {:.0} img/s",
                        epoch + 1,
                        cfg.train.epochs,
                        loss,
                        images_done as f64 / started.elapsed().as_secs_f64().max(1e-9)
                    ));
                }
                pb.set_position(global_step);
                if global_step >= stop_at {
                    break;
                }
                // Mid-epoch checkpoints: on a stop request, and every `checkpoint_minutes`.
                let mid_epoch = self.pos.batch_in_epoch < self.steps_per_epoch;
                let minutes = cfg.train.checkpoint_minutes;
                let timed = minutes > 0.0 && last_save.elapsed().as_secs_f64() >= minutes * 60.0;
                if mid_epoch && (timed || stop_requested(&self)) {
                    self.check_finite(&means, checked, last_lr)?;
                    checked = self.pos.global_step;
                    self.save(Some(&means))?;
                    last_save = Instant::now();
                    if stop_requested(&self) {
                        pb.finish_and_clear();
                        return Err(CoreError::Interrupted {
                            run_dir: self.run_dir.to_path_buf(),
                            step: self.pos.global_step,
                        });
                    }
                }
            }
            let finished_epoch = self.pos.batch_in_epoch == self.steps_per_epoch;
            self.check_finite(&means, checked, last_lr)?;
            checked = self.pos.global_step;
            let epoch_means = means.means()?;
            last_epoch_loss = epoch_means.first().map_or(f64::NAN, |m| m.1);
            if finished_epoch {
                self.pos.epoch += 1;
                self.pos.batch_in_epoch = 0;
            }
            let at_end = self.pos.epoch == cfg.train.epochs || self.pos.global_step >= stop_at;
            let due = finished_epoch && self.pos.epoch.is_multiple_of(cfg.train.checkpoint_every);
            let interrupted = stop_requested(&self) && !at_end;
            if at_end || due || interrupted {
                self.save(Some(&means))?;
                last_save = Instant::now();
                if finished_epoch && self.writer() {
                    checkpoint::snapshot(self.run_dir, self.pos.epoch, cfg.train.keep_checkpoints)?;
                }
            }
            if finished_epoch {
                self.end_of_epoch(&epoch_means, epoch_start.elapsed().as_secs_f64(), opts)?;
            }
            if interrupted {
                pb.finish_and_clear();
                return Err(CoreError::Interrupted {
                    run_dir: self.run_dir.to_path_buf(),
                    step: self.pos.global_step,
                });
            }
        }
        pb.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        // In a job, rank 0's counts (every rank would write the same file).
        if let Some(path) = op_counts.filter(|_| self.writer()) {
            write_op_counts(&path, counted_steps)?;
        }
        Ok(TrainSummary {
            run_dir: self.run_dir.to_path_buf(),
            global_step: self.pos.global_step,
            epochs_done: self.pos.epoch,
            last_epoch_loss,
            seconds,
            inputs_per_second: inputs_done as f64 / seconds.max(1e-9),
            images_per_second: images_done as f64 / seconds.max(1e-9),
        })
    }
}
