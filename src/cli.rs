//! Command-line parsing (clap) and the subcommands.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use selfsup_core::config::{read_json, RunConfig};
use selfsup_core::encoders::{AlexnetVariant, ResnetStem};
use selfsup_core::trainer::{train, TrainOptions};
use selfsup_core::{EncoderConfig, Registry};
use std::path::PathBuf;

/// Self-supervised visual representation learning on libtorch.
#[derive(Debug, Parser)]
#[command(name = "selfsup", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pretrain an encoder with a pretext method.
    Train(TrainArgs),
    /// List the registered methods with their descriptions and default configs.
    Methods {
        /// Print the default configs pretty-printed (one compact line each otherwise).
        #[arg(long)]
        pretty: bool,
    },
    /// Describe a checkpoint (run folder or its checkpoint/ folder).
    Info {
        /// Run folder or checkpoint folder.
        checkpoint: PathBuf,
    },
    /// Evaluate a run's frozen (or fine-tuned) encoder; writes `<out>/eval/<protocol>.json` and `.md`.
    Eval(EvalArgs),
    /// Export a run's encoder weights (ResNets with torchvision's tensor names).
    Export(ExportArgs),
    /// Start N local ranks of a data-parallel job, each running the command that follows
    /// (`selfsup launch --nproc 2 train --config run.json --out runs/a`), as torchrun would.
    Launch {
        /// Ranks to start on this machine.
        #[arg(long)]
        nproc: usize,
        /// Port of the job's store on 127.0.0.1 (default: a free one).
        #[arg(long)]
        master_port: Option<u16>,
        /// The command each rank runs (a `selfsup` subcommand and its arguments).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Reproduce a paper's tables (see `selfsup reproduce --help`).
    Reproduce {
        /// Method and options: `rotnet [--profile smoke|cpu|paper] [--dataset cifar10] [--force]`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// Multinomial logistic regression on (pooled, ~9k-d) tap features.
    Linear,
    /// RotNet's non-linear probe (conv block or MLP) on frozen tap features.
    Nonlinear,
    /// Weighted kNN (k=200, T=0.1) on L2-normalised pooled features.
    Knn,
    /// Few labels per class: frozen probes and fine-tuning.
    Fewshot,
}

#[derive(Debug, clap::Args)]
struct EvalArgs {
    /// Run folder (or checkpoint folder) whose encoder is evaluated.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Evaluation protocol.
    #[arg(long, value_enum)]
    protocol: Protocol,
    /// Comma-separated tap names, or `all` (few-shot uses the first).
    #[arg(long, default_value = "all")]
    taps: String,
    /// Labeled dataset spec (its train and test splits are used).
    #[arg(long, default_value = "cifar10")]
    data: String,
    /// Data folder (else $SELFSUP_DATA, else datasets/).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Protocol config as JSON (fields of the protocol's config; defaults documented there).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one protocol setting, e.g. `--set epochs=30`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Device: auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Seed of the protocol's random choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Labeled training images: a seeded subset of this many (the stream the reproductions
    /// use for their probes, so `--seed 0 --train-images 10000` is the cpu profiles' set).
    #[arg(long, value_name = "N")]
    train_images: Option<usize>,
    /// Test images scored: a seeded subset of this many (default: the whole test split).
    #[arg(long, value_name = "N")]
    test_images: Option<usize>,
    /// Evaluate a randomly initialised encoder of the same config instead (the baseline).
    #[arg(long)]
    random_init: bool,
    /// Deterministic evaluation, as `train.deterministic` (default true): on the CPU oneDNN off,
    /// so the seed gives the same bits at any thread count (the probes' and fine-tuning's
    /// convolution gradients otherwise depend on it); on CUDA cuDNN's deterministic algorithms.
    /// `false`: oneDNN's kernels and cuDNN's autotuner, the same bits only at the same thread
    /// count. The report records it.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    deterministic: bool,
    /// Folder that receives eval/ (default: the run folder).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExportFormat {
    /// safetensors with torchvision tensor names for ResNets (loads with strict=True).
    Safetensors,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// Run folder (or checkpoint folder).
    run: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Safetensors)]
    format: ExportFormat,
    /// Output file (default: `<run>/encoder.safetensors`).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct TrainArgs {
    /// Registry name of the method (`selfsup methods` lists them).
    #[arg(long)]
    method: Option<String>,
    /// A JSON run config (e.g. an earlier run's config.json); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one config key, e.g. `--set train.epochs=30 --set method_config.rotations=eight`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Dataset spec: cifar10, cifar100, stl10, mnist, fashion-mnist, folder:PATH, synthetic:N:SIZE.
    #[arg(long)]
    data: Option<String>,
    /// Data folder (else $SELFSUP_DATA, else datasets/).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Device: auto, cpu or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Run folder (config.json, metrics.jsonl, checkpoint/).
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    resume: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Run a cheap kNN monitor (k=200, T=0.1, 10,000 training images as memory, the test split
    /// as queries) every N epochs; its top-1 goes into metrics.jsonl as `knn_top1`.
    #[arg(long, value_name = "N")]
    knn_every: Option<u64>,
    /// Labeled dataset for the kNN monitor (default: the training dataset's spec).
    #[arg(long, value_name = "SPEC")]
    knn_data: Option<String>,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.with_target(false).init(),
        LogFormat::Json => b.json().init(),
    }
}

/// Parses the command line and runs the subcommand.
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let registry = selfsup_methods::registry();
    match cli.command {
        Command::Train(a) => cmd_train(&registry, a),
        Command::Methods { pretty } => cmd_methods(&registry, pretty),
        Command::Info { checkpoint } => cmd_info(&checkpoint),
        Command::Eval(a) => cmd_eval(a),
        Command::Export(a) => cmd_export(a),
        Command::Launch { nproc, master_port, args } => {
            crate::launch::run(nproc, master_port, &args)
        }
        Command::Reproduce { args } => selfsup_reproduce::run(&args, &registry),
    }
}

fn cmd_train(registry: &Registry, a: TrainArgs) -> Result<()> {
    let file = match &a.config {
        Some(p) => Some(read_json(p)?),
        None => None,
    };
    let mut sets = a.sets.clone();
    if let Some(d) = &a.data {
        sets.push(format!("data.dataset={}", serde_json::Value::String(d.clone())));
    }
    if let Some(d) = &a.data_dir {
        sets.push(format!("data.data_dir={}", serde_json::Value::String(d.display().to_string())));
    }
    if let Some(d) = &a.device {
        sets.push(format!("device={}", serde_json::Value::String(d.clone())));
    }
    let mut cfg = RunConfig::resolve(registry, file.as_ref(), &sets, a.method.as_deref())?;
    // A rank of a data-parallel job when a launcher set WORLD_SIZE (torchrun, `selfsup launch`).
    let world = selfsup_dist::World::from_env()?;
    if let Some(w) = &world {
        if cfg.device.starts_with("cuda") || (cfg.device == "auto" && tch::Cuda::is_available()) {
            // One GPU a rank: the local rank picks it.
            cfg.device = format!("cuda:{}", w.local_rank);
        }
    }
    let group: Option<std::sync::Arc<dyn selfsup_dist::Collectives>> = match &world {
        Some(w) => {
            let device = selfsup_core::device::parse_device(&cfg.device)?;
            Some(selfsup_dist::init_for(w, dist_timeout()?, device).with_context(|| {
                format!("joining the job as rank {} of {}", w.rank, w.world_size)
            })?)
        }
        None => None,
    };
    let rank0 = world.as_ref().is_none_or(|w| w.rank == 0);
    let mut opts = TrainOptions {
        resume: a.resume,
        progress: !a.no_progress && rank0,
        handle_signals: true,
        group,
        ..Default::default()
    };
    if let Some(every) = a.knn_every {
        let spec = a.knn_data.clone().unwrap_or_else(|| cfg.data.dataset.clone());
        let dir = selfsup_data::resolve_data_dir(cfg.data.data_dir.as_deref());
        let train_set = selfsup_data::open_dataset(&spec, selfsup_data::Split::Train, &dir)?;
        let test_set = selfsup_data::open_dataset(&spec, selfsup_data::Split::Test, &dir)?;
        let device = selfsup_core::device::parse_device(&cfg.device)?;
        opts.hook_every = every.max(1);
        opts.epoch_hook = Some(Box::new(move |_epoch, encoder, norm| {
            // The encoder sees the pixel statistics it is trained with.
            let norm = norm.cloned().map(selfsup_eval::Normalization::from);
            let top1 = selfsup_eval::knn_monitor(
                encoder,
                device,
                &train_set,
                &test_set,
                10_000,
                200,
                0.1,
                norm.as_ref(),
            )
            .map_err(|e| selfsup_core::CoreError::Training(format!("kNN monitor: {e}")))?;
            Ok(vec![("knn_top1".to_string(), top1)])
        }));
    }
    let s = train(&cfg, registry, &a.out, &mut opts)?;
    if !rank0 {
        return Ok(());
    }
    println!(
        "trained {} steps ({} epochs) in {:.1}s, {:.1} images/s; last epoch loss {:.4}; run folder {}",
        s.global_step,
        s.epochs_done,
        s.seconds,
        s.images_per_second,
        s.last_epoch_loss,
        s.run_dir.display()
    );
    Ok(())
}

/// How long a rank waits for the others (to join, or in a collective) before failing:
/// `SELFSUP_DIST_TIMEOUT` seconds, default 1800 (PyTorch's default for CPU process groups).
fn dist_timeout() -> Result<std::time::Duration> {
    match std::env::var("SELFSUP_DIST_TIMEOUT") {
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0 && s.is_finite())
            .map(std::time::Duration::from_secs_f64)
            .with_context(|| {
                format!("SELFSUP_DIST_TIMEOUT = `{v}` is not a positive number of seconds")
            }),
        Err(_) => Ok(std::time::Duration::from_secs(1800)),
    }
}

fn cmd_methods(registry: &Registry, pretty: bool) -> Result<()> {
    for e in registry.entries() {
        println!("{:<26} {}", e.name, e.description);
        let cfg = (e.default_config)();
        let text =
            if pretty { serde_json::to_string_pretty(&cfg)? } else { serde_json::to_string(&cfg)? };
        for line in text.lines() {
            println!("{:<26} {line}", "");
        }
    }
    Ok(())
}

fn cmd_info(path: &std::path::Path) -> Result<()> {
    let loaded = selfsup_core::checkpoint::load_encoder(path, tch::Device::Cpu)
        .with_context(|| format!("loading the encoder of {}", path.display()))?;
    let state = &loaded.state;
    let params: i64 = loaded.vs.variables().values().map(|t| t.numel() as i64).sum();
    // The ImageNet-sized encoders need ImageNet-sized input to reach their last tap.
    let side = match &state.config.encoder {
        EncoderConfig::Alexnet { variant: AlexnetVariant::Imagenet, .. }
        | EncoderConfig::Resnet18 { stem: ResnetStem::Imagenet }
        | EncoderConfig::Resnet50 { stem: ResnetStem::Imagenet } => 224,
        _ => 32,
    };
    let x = tch::Tensor::zeros(
        [1, state.image_channels, side, side],
        (tch::Kind::Float, tch::Device::Cpu),
    );
    println!("method:      {}", state.config.method);
    println!(
        "position:    epoch {} (+{} batches), step {}",
        state.epoch, state.batch_in_epoch, state.global_step
    );
    println!("encoder:     {}", serde_json::to_string(&state.config.encoder)?);
    println!("parameters:  {params} (encoder)");
    let feats = tch::no_grad(|| loaded.encoder.features_t(&x, false));
    for (name, t) in feats {
        println!("tap {name:<8} {:?} (at {side}x{side} input)", t.size());
    }
    println!("config:      {}", serde_json::to_string(&state.config)?);
    Ok(())
}

/// The protocol config as JSON: `--config`, then each `--set`; the protocol fills in its
/// defaults and rejects unknown keys by name.
fn protocol_config(a: &EvalArgs) -> Result<serde_json::Value> {
    let mut v = serde_json::json!({});
    if let Some(p) = &a.config {
        selfsup_core::config::merge(&mut v, &read_json(p)?);
    }
    for s in &a.sets {
        selfsup_core::config::apply_override(&mut v, s)?;
    }
    Ok(v)
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    for (flag, n) in [("--train-images", a.train_images), ("--test-images", a.test_images)] {
        if n == Some(0) {
            anyhow::bail!("{flag} must be at least 1");
        }
    }
    let device = selfsup_core::device::parse_device(&a.device)?;
    let tf32 = selfsup_core::determinism::Tf32::default();
    selfsup_core::determinism::apply(a.deterministic, tf32, device)?;
    let loaded = selfsup_core::checkpoint::load_encoder(&a.checkpoint, device)?;
    let random;
    let (encoder, vs): (&dyn selfsup_core::Encoder, &tch::nn::VarStore) = if a.random_init {
        random = selfsup_eval::baselines::random_encoder(
            &loaded.config.encoder,
            loaded.state.image_channels,
            a.seed,
            device,
        );
        (random.encoder.as_ref(), &random.vs)
    } else {
        (loaded.encoder.as_ref(), &loaded.vs)
    };
    let dir = selfsup_data::resolve_data_dir(a.data_dir.as_deref());
    let train_set = selfsup_data::open_dataset(&a.data, selfsup_data::Split::Train, &dir)?;
    let test_set = selfsup_data::open_dataset(&a.data, selfsup_data::Split::Test, &dir)?;
    let subset = selfsup_core::trainer::seeded_subset;
    let train_set = subset(&train_set, a.train_images, a.seed, "max_images");
    let test_set = subset(&test_set, a.test_images, a.seed, "test_images");
    let taps: Vec<String> = a.taps.split(',').map(|t| t.trim().to_string()).collect();
    let protocol = match a.protocol {
        Protocol::Linear => selfsup_eval::Protocol::Linear,
        Protocol::Nonlinear => selfsup_eval::Protocol::Nonlinear,
        Protocol::Knn => selfsup_eval::Protocol::Knn,
        Protocol::Fewshot => selfsup_eval::Protocol::Fewshot,
    };
    let taps = (a.taps != "all").then_some(taps);
    let mut config = protocol_config(&a)?;
    // Evaluate with the pixel normalisation the run was trained with (recorded in its
    // checkpoint), unless the protocol config sets one.
    if config.get("normalization").is_none_or(serde_json::Value::is_null) {
        match &loaded.state.normalization {
            Some(n) => config["normalization"] = serde_json::to_value(n)?,
            None => tracing::warn!(
                "{} records no input normalization (an older checkpoint, or a method without                  one): pixels are normalised with the evaluation images' statistics",
                a.checkpoint.display()
            ),
        }
    }
    let mut report = selfsup_eval::run_protocol(
        protocol,
        encoder,
        vs,
        &train_set,
        &test_set,
        &config,
        taps.as_deref(),
        a.seed,
    )?;
    report.checkpoint = Some(a.checkpoint.display().to_string());
    let out = a.out.clone().unwrap_or_else(|| a.checkpoint.clone());
    let (json, md) = report.write(&out)?;
    print!("{}", report.markdown());
    println!("wrote {} and {}", json.display(), md.display());
    Ok(())
}

fn cmd_export(a: ExportArgs) -> Result<()> {
    let loaded = selfsup_core::checkpoint::load_encoder(&a.run, tch::Device::Cpu)?;
    let state = selfsup_core::export::torchvision_state_dict(&loaded.vs, "encoder");
    let mut meta = selfsup_core::export::torchvision_metadata(&state);
    meta.insert("selfsup.method".into(), loaded.config.method.clone());
    meta.insert("selfsup.encoder".into(), serde_json::to_string(&loaded.config.encoder)?);
    meta.insert("selfsup.global_step".into(), loaded.state.global_step.to_string());
    let out = a.out.clone().unwrap_or_else(|| a.run.join("encoder.safetensors"));
    match a.format {
        ExportFormat::Safetensors => {
            selfsup_core::export::write_safetensors(&out, &state, &meta)?;
        }
    }
    println!("wrote {} ({} tensors)", out.display(), state.len());
    Ok(())
}
