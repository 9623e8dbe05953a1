//! Command-line parsing (clap) and the subcommands.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use selfsup_core::config::{read_json, RunConfig};
use selfsup_core::trainer::{train, TrainOptions};
use selfsup_core::Registry;
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
        /// Print the default configs as JSON too.
        #[arg(long)]
        json: bool,
    },
    /// Describe a checkpoint (run folder or its checkpoint/ folder).
    Info {
        /// Run folder or checkpoint folder.
        checkpoint: PathBuf,
    },
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
}

/// Every method this build knows, in table order.
pub fn registry() -> Registry {
    let r = Registry::new();
    r
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
    let registry = registry();
    match cli.command {
        Command::Train(a) => cmd_train(&registry, a),
        Command::Methods { json } => cmd_methods(&registry, json),
        Command::Info { checkpoint } => cmd_info(&checkpoint),
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
        sets.push(format!(
            "data.data_dir={}",
            serde_json::Value::String(d.display().to_string())
        ));
    }
    if let Some(d) = &a.device {
        sets.push(format!("device={}", serde_json::Value::String(d.clone())));
    }
    let cfg = RunConfig::resolve(registry, file.as_ref(), &sets, a.method.as_deref())?;
    let mut opts = TrainOptions { resume: a.resume, progress: !a.no_progress, ..Default::default() };
    let s = train(&cfg, registry, &a.out, &mut opts)?;
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

fn cmd_methods(registry: &Registry, json: bool) -> Result<()> {
    for e in registry.entries() {
        println!("{:<26} {}", e.name, e.description);
        if json {
            println!("{}", serde_json::to_string_pretty(&(e.default_config)())?);
        }
    }
    Ok(())
}

fn cmd_info(path: &std::path::Path) -> Result<()> {
    let state = selfsup_core::checkpoint::read_state(path)?;
    let loaded = selfsup_core::checkpoint::load_encoder(path, tch::Device::Cpu)
        .with_context(|| format!("loading the encoder of {}", path.display()))?;
    let params: i64 = loaded.vs.variables().values().map(|t| t.numel() as i64).sum();
    let x = tch::Tensor::zeros(
        [1, state.image_channels, 32, 32],
        (tch::Kind::Float, tch::Device::Cpu),
    );
    println!("method:      {}", state.config.method);
    println!("position:    epoch {} (+{} batches), step {}", state.epoch, state.batch_in_epoch, state.global_step);
    println!("encoder:     {}", serde_json::to_string(&state.config.encoder)?);
    println!("parameters:  {params} (encoder)");
    let feats = tch::no_grad(|| loaded.encoder.features_t(&x, false));
    for (name, t) in feats {
        println!("tap {name:<8} {:?} (at 32x32 input)", t.size());
    }
    println!("config:      {}", serde_json::to_string(&state.config)?);
    Ok(())
}
