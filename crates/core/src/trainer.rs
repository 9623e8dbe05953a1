//! The trainer: owns the loop, the optimizers, schedules, precision, checkpoints and logging;
//! the [`PretextMethod`] owns only its loss.
//!
//! Per step: re-seed libtorch from `(seed, global step)`, move the batch to the device, run the
//! method's `step` under autocast, back-propagate, clip, update with the schedule's rate, call the
//! method's post-step hook, then its extra optimizers. Every `log_every` steps a line goes to
//! `metrics.jsonl`; every `checkpoint_every` epochs (and at the end, and at `max_steps`) a
//! checkpoint is written atomically. `resume` continues from the checkpoint as if the run had
//! never stopped: same weights, optimizer buffers, data order, augmentations and RNG streams.
use crate::checkpoint::{self, TrainerState, FORMAT_VERSION};
use crate::config::RunConfig;
use crate::device::{device_name, parse_device};
use crate::encoders::Encoder;
use crate::method::{BuildContext, PretextMethod};
use crate::optim::{clip_grad_norm, Optimizer};
use crate::precision::{autocast, set_channels_last, to_channels_last};
use crate::registry::Registry;
use crate::seed::{derive_seed, name_hash};
use crate::{CoreError, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use selfsup_data::{Batch, ImageDataset, Loader, LoaderConfig};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Tensor};

/// A function called after each epoch (1-based epoch count) with the encoder, returning extra
/// metrics to log (the kNN monitor).
pub type EpochHook<'a> = Box<dyn FnMut(u64, &dyn Encoder) -> Result<Vec<(String, f64)>> + 'a>;

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
}

impl Default for TrainOptions<'_> {
    fn default() -> Self {
        TrainOptions {
            resume: false,
            progress: true,
            dataset: None,
            epoch_hook: None,
            hook_every: 1,
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

fn zero_grads(params: &[(String, Tensor)]) {
    for (_, t) in params {
        let mut t = t.shallow_clone();
        t.zero_grad();
    }
}

/// Appends JSON lines to `metrics.jsonl`.
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

/// Running means of the step metrics over an epoch.
#[derive(Default)]
struct Means {
    sums: Vec<(String, f64)>,
    n: u64,
}

impl Means {
    fn add(&mut self, loss: f64, metrics: &[(String, f64)]) {
        if self.sums.is_empty() {
            self.sums.push(("loss".into(), 0.0));
            self.sums.extend(metrics.iter().map(|(k, _)| (k.clone(), 0.0)));
        }
        self.sums[0].1 += loss;
        for (k, v) in metrics {
            if let Some(slot) = self.sums.iter_mut().find(|(n, _)| n == k) {
                slot.1 += v;
            }
        }
        self.n += 1;
    }

    fn means(&self) -> Vec<(String, f64)> {
        let n = self.n.max(1) as f64;
        self.sums.iter().map(|(k, v)| (k.clone(), v / n)).collect()
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
pub fn train(
    cfg: &RunConfig,
    registry: &Registry,
    run_dir: &Path,
    opts: &mut TrainOptions<'_>,
) -> Result<TrainSummary> {
    cfg.validate()?;
    let device = parse_device(&cfg.device)?;
    cfg.train.precision.check(device)?;
    if cfg.train.threads > 0 {
        tch::set_num_threads(cfg.train.threads as i32);
    }
    crate::determinism::set_mkldnn_enabled(!cfg.train.deterministic);
    let resume_from = if checkpoint::exists(run_dir) {
        if !opts.resume {
            return Err(CoreError::Config(format!(
                "{} already holds a checkpoint: pass --resume to continue it, or choose another --out",
                run_dir.display()
            )));
        }
        let ck = checkpoint::load(run_dir)?;
        let (mut a, mut b) = (ck.state.config.clone(), cfg.clone());
        // A resumed run may extend its length or change what is logged, not what is learned.
        a.train.epochs = 0;
        b.train.epochs = 0;
        a.train.max_steps = None;
        b.train.max_steps = None;
        if a != b {
            return Err(CoreError::Config(format!(
                "--resume: the config differs from the one in {}/checkpoint (only train.epochs and train.max_steps may change)",
                run_dir.display()
            )));
        }
        Some(ck)
    } else {
        None
    };

    let dataset = match opts.dataset.take() {
        Some(d) => d,
        None => open_train_set(cfg)?,
    };
    crate::seed::seed_torch(cfg.seed);
    let vs = nn::VarStore::new(device);
    let ctx = BuildContext {
        device,
        seed: cfg.seed,
        num_train_images: dataset.len(),
        image_channels: dataset.channels() as i64,
        image_size: dataset.height() as i64,
        encoder: cfg.encoder.clone(),
    };
    let mut method = registry.build(&cfg.method, &vs.root(), &cfg.method_config, &ctx)?;
    if cfg.train.channels_last {
        set_channels_last(&vs)?;
    }
    let extras = method.extra_optimizers();
    let prefixes: Vec<String> = extras.iter().map(|e| e.prefix.clone()).collect();
    let (params, extra_params) = param_groups(&vs, &prefixes);
    if params.is_empty() {
        return Err(CoreError::Config(format!(
            "method `{}` has no trainable variables",
            cfg.method
        )));
    }
    let mut optimizer: Box<dyn Optimizer> = cfg.train.optimizer.build(&params)?;
    let mut extra_opts: Vec<Box<dyn Optimizer>> = extras
        .iter()
        .zip(&extra_params)
        .map(|(e, p)| e.optimizer.build(p))
        .collect::<Result<_>>()?;

    let loader = Loader::new(
        dataset.clone(),
        method.views(),
        LoaderConfig {
            batch_size: cfg.train.batch_size,
            shuffle: true,
            drop_last: true,
            seed: cfg.seed,
            prefetch: cfg.train.prefetch,
            threads: cfg.train.threads,
        },
    )?;
    let steps_per_epoch = loader.batches_per_epoch() as u64;
    if steps_per_epoch == 0 {
        return Err(CoreError::Config(format!(
            "train.batch_size = {} exceeds the {} training images (drop_last leaves no batch)",
            cfg.train.batch_size,
            dataset.len()
        )));
    }

    // Everything that can fail on bad input has been checked: only now is the folder created.
    std::fs::create_dir_all(run_dir).map_err(|e| CoreError::io(run_dir, e))?;
    let (mut epoch, mut batch_in_epoch, mut global_step) = (0u64, 0u64, 0u64);
    if let Some(ck) = &resume_from {
        let model_path = checkpoint::checkpoint_dir(run_dir).join("model.safetensors");
        checkpoint::load_into(&vs, &ck.model, "", &model_path)?;
        let opt_state: Vec<(String, Tensor)> = ck
            .trainer
            .iter()
            .filter(|(n, _)| n.starts_with("optim."))
            .map(|(n, t)| (n["optim.".len()..].to_string(), t.to_device(device)))
            .collect();
        optimizer.load_state(&opt_state)?;
        for (e, opt) in extras.iter().zip(extra_opts.iter_mut()) {
            let key = format!("extra.{}.", e.name);
            let st: Vec<(String, Tensor)> = ck
                .trainer
                .iter()
                .filter(|(n, _)| n.starts_with(&key))
                .map(|(n, t)| (n[key.len()..].to_string(), t.to_device(device)))
                .collect();
            opt.load_state(&st)?;
        }
        let method_state: Vec<(String, Tensor)> = ck
            .trainer
            .iter()
            .filter(|(n, _)| n.starts_with("method."))
            .map(|(n, t)| (n["method.".len()..].to_string(), t.to_device(device)))
            .collect();
        method.load_state_tensors(&method_state)?;
        epoch = ck.state.epoch;
        batch_in_epoch = ck.state.batch_in_epoch;
        global_step = ck.state.global_step;
        tracing::info!(epoch, global_step, "resumed from {}", run_dir.display());
    }
    let config_json = serde_json::to_vec_pretty(cfg).expect("config serializes");
    checkpoint::write_atomic(&run_dir.join("config.json"), &config_json)?;
    let mut log = MetricsLog::open(run_dir, resume_from.as_ref().map(|c| c.state.global_step))?;

    let save = |method: &dyn PretextMethod,
                optimizer: &dyn Optimizer,
                extra_opts: &[Box<dyn Optimizer>],
                epoch: u64,
                batch_in_epoch: u64,
                global_step: u64|
     -> Result<()> {
        let mut trainer: Vec<(String, Tensor)> =
            optimizer.state().into_iter().map(|(n, t)| (format!("optim.{n}"), t)).collect();
        for (e, opt) in extras.iter().zip(extra_opts.iter()) {
            trainer
                .extend(opt.state().into_iter().map(|(n, t)| (format!("extra.{}.{n}", e.name), t)));
        }
        trainer.extend(method.state_tensors().into_iter().map(|(n, t)| (format!("method.{n}"), t)));
        let state = TrainerState {
            version: FORMAT_VERSION,
            epoch,
            batch_in_epoch,
            global_step,
            config: cfg.clone(),
            image_channels: ctx.image_channels,
            model_sha256: String::new(),
            trainer_sha256: String::new(),
        };
        checkpoint::save(run_dir, &state, &checkpoint::sorted_variables(&vs), &trainer)
    };

    let total_steps = cfg.train.epochs * steps_per_epoch;
    let stop_at = cfg.train.max_steps.map_or(total_steps, |m| m.min(total_steps));
    let pb = progress_bar(opts.progress, stop_at, global_step);
    let base_lr = cfg.train.optimizer.lr();
    let started = Instant::now();
    let (mut inputs_done, mut images_done) = (0i64, 0u64);
    let mut last_epoch_loss = f64::NAN;
    tracing::info!(
        method = %cfg.method,
        device = %device_name(device),
        images = dataset.len(),
        steps_per_epoch,
        "training {} epochs into {}",
        cfg.train.epochs,
        run_dir.display()
    );

    while epoch < cfg.train.epochs && global_step < stop_at {
        let _span = tracing::info_span!("epoch", epoch).entered();
        let mut means = Means::default();
        let epoch_start = Instant::now();
        let mut epoch_inputs = 0i64;
        for batch in loader.epoch_from(epoch, batch_in_epoch as usize) {
            let batch: Batch = batch?.to_device(device);
            let batch = if cfg.train.channels_last {
                Batch {
                    views: batch.views.iter().map(to_channels_last).collect::<Result<_>>()?,
                    labels: batch.labels,
                    indices: batch.indices,
                }
            } else {
                batch
            };
            tch::manual_seed(
                (derive_seed(cfg.seed, &[name_hash("step"), global_step]) >> 1) as i64,
            );
            let frac = epoch as f64 + batch_in_epoch as f64 / steps_per_epoch as f64;
            let lr = cfg.train.schedule.lr_at(base_lr, frac, cfg.train.epochs as f64);

            zero_grads(&params);
            let out = autocast(device, cfg.train.precision, || method.step(&batch, true))?;
            let loss_value = out.loss.f_double_value(&[])?;
            if !loss_value.is_finite() {
                return Err(CoreError::Training(format!(
                    "loss is {loss_value} at epoch {epoch}, step {global_step} (lr {lr:.3e}); last checkpoint kept"
                )));
            }
            out.loss.backward();
            let grad_norm = match cfg.train.grad_clip {
                Some(c) => Some(clip_grad_norm(&params, c)?),
                None => None,
            };
            optimizer.step(&params, lr)?;
            method.after_optimizer_step(global_step)?;
            if !extras.is_empty() {
                let losses = method.extra_losses(&batch)?;
                for (i, e) in extras.iter().enumerate() {
                    if let Some((_, l)) = losses.iter().find(|(n, _)| n == &e.name) {
                        zero_grads(&extra_params[i]);
                        l.backward();
                        let elr = cfg.train.schedule.lr_at(
                            e.optimizer.lr(),
                            frac,
                            cfg.train.epochs as f64,
                        );
                        extra_opts[i].step(&extra_params[i], elr)?;
                    }
                }
            }
            global_step += 1;
            batch_in_epoch += 1;
            epoch_inputs += out.inputs;
            inputs_done += out.inputs;
            images_done += cfg.train.batch_size as u64;
            means.add(loss_value, &out.metrics);

            if global_step % cfg.train.log_every == 0 || batch_in_epoch == steps_per_epoch {
                let secs = epoch_start.elapsed().as_secs_f64().max(1e-9);
                let mut line = serde_json::json!({
                    "kind": "step", "epoch": epoch, "step": global_step, "lr": lr,
                    "loss": loss_value, "inputs_per_s": epoch_inputs as f64 / secs,
                });
                if let Some(g) = grad_norm {
                    line["grad_norm"] = g.into();
                }
                for (k, v) in &out.metrics {
                    line[k] = (*v).into();
                }
                log.write(&line)?;
            }
            pb.set_position(global_step);
            pb.set_message(format!(
                "epoch {}/{} loss {loss_value:.4} {:.0} img/s",
                epoch + 1,
                cfg.train.epochs,
                images_done as f64 / started.elapsed().as_secs_f64().max(1e-9)
            ));
            if global_step >= stop_at {
                break;
            }
        }
        let finished_epoch = batch_in_epoch == steps_per_epoch;
        let epoch_means = means.means();
        last_epoch_loss = epoch_means.first().map_or(f64::NAN, |m| m.1);
        if finished_epoch {
            epoch += 1;
            batch_in_epoch = 0;
            let mut line = serde_json::json!({
                "kind": "epoch", "epoch": epoch, "step": global_step,
                "seconds": epoch_start.elapsed().as_secs_f64(),
            });
            for (k, v) in &epoch_means {
                line[k.as_str()] = (*v).into();
            }
            if let Some(hook) = opts.epoch_hook.as_mut() {
                if epoch % opts.hook_every.max(1) == 0 || epoch == cfg.train.epochs {
                    for (k, v) in hook(epoch, method.encoder())? {
                        line[k] = v.into();
                    }
                }
            }
            tracing::info!("epoch {epoch}: {line}");
            log.write(&line)?;
        }
        let at_end = epoch == cfg.train.epochs || global_step >= stop_at;
        if at_end || (finished_epoch && epoch % cfg.train.checkpoint_every == 0) {
            save(
                method.as_ref(),
                optimizer.as_ref(),
                &extra_opts,
                epoch,
                batch_in_epoch,
                global_step,
            )?;
        }
    }
    pb.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    Ok(TrainSummary {
        run_dir: run_dir.to_path_buf(),
        global_step,
        epochs_done: epoch,
        last_epoch_loss,
        seconds,
        inputs_per_second: inputs_done as f64 / seconds.max(1e-9),
        images_per_second: images_done as f64 / seconds.max(1e-9),
    })
}
