//! End-to-end trainer tests with the tiny encoder and a dummy method (predict whether an image
//! was flipped upside down): an interrupted and resumed run equals an uninterrupted one bit for
//! bit, the thread count does not change the result, and bad runs fail cleanly.
use selfsup_core::config::{RunConfig, TrainConfig};
use selfsup_core::encoders::{build_encoder, Encoder, EncoderConfig};
use selfsup_core::method::{BuildContext, PretextMethod, StepOutput};
use selfsup_core::optim::OptimizerConfig;
use selfsup_core::registry::{MethodEntry, Registry};
use selfsup_core::schedule::ScheduleConfig;
use selfsup_core::trainer::{train, TrainOptions};
use selfsup_core::{checkpoint, Result};
use selfsup_data::{Batch, ImageDataset, Pipeline};
use std::path::Path;
use tch::{nn, nn::Module, Kind, Tensor};

/// Classifies whether each image was flipped vertically (odd dataset indices are).
struct FlipMethod {
    encoder: Box<dyn Encoder>,
    head: nn::Linear,
}

impl PretextMethod for FlipMethod {
    fn name(&self) -> &str {
        "flip"
    }
    fn views(&self) -> Vec<Pipeline> {
        vec![Pipeline::identity()]
    }
    fn encoder(&self) -> &dyn Encoder {
        self.encoder.as_ref()
    }
    fn step(&mut self, batch: &Batch, train: bool) -> Result<StepOutput> {
        let x = &batch.views[0];
        let flip = batch.indices.remainder(2).to_kind(Kind::Int64);
        let mask = flip.to_kind(Kind::Float).view([-1, 1, 1, 1]);
        let x = x * (1.0 - &mask) + x.flip([2]) * &mask;
        let feats =
            self.encoder.forward_t(&x, train).mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        let logits = self.head.forward(&feats);
        let loss = logits.cross_entropy_for_logits(&flip);
        let acc = logits.argmax(-1, false).eq_tensor(&flip).to_kind(Kind::Float).mean(Kind::Float);
        Ok(StepOutput { loss, metrics: vec![("acc".into(), acc)], inputs: x.size()[0] })
    }
}

fn build_flip(
    root: &nn::Path,
    cfg: &serde_json::Value,
    ctx: &BuildContext,
) -> Result<Box<dyn PretextMethod>> {
    if let Some(obj) = cfg.as_object() {
        if let Some(k) = obj.keys().next() {
            return Err(selfsup_core::CoreError::Config(format!(
                "method_config: unknown key `{k}`"
            )));
        }
    }
    let encoder = build_encoder(&(root / "encoder"), &ctx.encoder, ctx.image_channels);
    let head = nn::linear(root / "head", encoder.out_channels(), 2, Default::default());
    Ok(Box::new(FlipMethod { encoder, head }))
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(MethodEntry {
        name: "flip",
        description: "test method: was the image flipped upside down",
        default_config: || serde_json::json!({}),
        build: build_flip,
    });
    r
}

fn dataset() -> ImageDataset {
    // 48 random 16×16 RGB images from a fixed linear congruential stream.
    let mut state = 12345u32;
    let pixels: Vec<u8> = (0..48 * 16 * 16 * 3)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect();
    ImageDataset::from_raw("test48", 3, 16, 16, pixels, None, None).unwrap()
}

fn config(epochs: u64, threads: usize) -> RunConfig {
    RunConfig {
        method: "flip".into(),
        seed: 7,
        device: "cpu".into(),
        encoder: EncoderConfig::Tiny { width: 4, batch_norm: true },
        train: TrainConfig {
            epochs,
            batch_size: 8,
            optimizer: OptimizerConfig::Sgd {
                lr: 0.05,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 5e-4,
                exclude_bias_and_norm: false,
            },
            schedule: ScheduleConfig::Steps { milestones: vec![1, 2], gamma: 0.2 },
            log_every: 1,
            threads,
            ..TrainConfig::default()
        },
        ..RunConfig::default()
    }
}

/// One epoch at a learning rate of 1e38: the loss turns NaN within the first steps.
fn diverging() -> RunConfig {
    let mut cfg = config(1, 1);
    cfg.train.optimizer = OptimizerConfig::Sgd {
        lr: 1e38,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
        exclude_bias_and_norm: false,
    };
    cfg
}

/// libtorch's generator and thread count are process-wide: the tests of this file train one
/// at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(cfg: &RunConfig, dir: &Path, resume: bool) -> Result<selfsup_core::trainer::TrainSummary> {
    let mut opts =
        TrainOptions { resume, progress: false, dataset: Some(dataset()), ..Default::default() };
    train(cfg, &registry(), dir, &mut opts)
}

fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    checkpoint::load(dir).unwrap().model
}

fn assert_same(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((n1, t1), (n2, t2)) in a.iter().zip(b) {
        assert_eq!(n1, n2);
        assert!(t1.equal(t2), "{n1} differs");
    }
}

#[test]
fn resume_equals_uninterrupted_run() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let full = tempfile::tempdir().unwrap();
    run(&config(3, 1), full.path(), false).unwrap();

    // Stop in the middle of epoch 2 (6 steps per epoch), then resume to the end.
    let part = tempfile::tempdir().unwrap();
    let mut stopped = config(3, 1);
    stopped.train.max_steps = Some(9);
    let s = run(&stopped, part.path(), false).unwrap();
    assert_eq!(s.global_step, 9);
    let st = checkpoint::read_state(part.path()).unwrap();
    assert_eq!((st.epoch, st.batch_in_epoch, st.global_step), (1, 3, 9));
    // The resumed run may name its device differently (a GPU run moving to another GPU or to
    // the CPU): the device is left out of the comparison with the checkpoint's config.
    // (`auto` is the CPU where no GPU is; with one, ` cpu` names the CPU another way.)
    let mut resumed = config(3, 1);
    resumed.device = if tch::Cuda::is_available() { " cpu" } else { "auto" }.into();
    let s = run(&resumed, part.path(), true).unwrap();
    assert_eq!(s.global_step, 18);

    assert_same(&weights(full.path()), &weights(part.path()));
    let a = checkpoint::load(full.path()).unwrap().trainer;
    let b = checkpoint::load(part.path()).unwrap().trainer;
    assert_same(&a, &b);
    // The metrics log of the resumed run has each step once.
    let steps: Vec<u64> = std::fs::read_to_string(part.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=18).collect::<Vec<_>>());
    // Each step line carries the wall seconds since its process's loop started, never going
    // back within one process (the uninterrupted run's log).
    let elapsed: Vec<f64> = std::fs::read_to_string(full.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| v["elapsed_s"].as_f64().expect("elapsed_s in every step line"))
        .collect();
    assert_eq!(elapsed.len(), 18);
    assert!(elapsed.windows(2).all(|w| w[0] <= w[1]) && elapsed[0] >= 0.0, "{elapsed:?}");
    // The resolved config is saved beside the run and reads back.
    let saved: RunConfig =
        serde_json::from_str(&std::fs::read_to_string(part.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(saved, resumed);
}

#[test]
fn a_failing_epoch_hook_loses_no_epoch() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut opts = TrainOptions {
        progress: false,
        dataset: Some(dataset()),
        epoch_hook: Some(Box::new(|epoch, _, _| {
            Err(selfsup_core::CoreError::Training(format!("hook failed after epoch {epoch}")))
        })),
        ..Default::default()
    };
    let e = train(&config(3, 1), &registry(), dir.path(), &mut opts).unwrap_err().to_string();
    assert!(e.contains("hook failed after epoch 1"), "{e}");
    // The epoch was checkpointed before the hook ran: a resume starts at epoch 2.
    let st = checkpoint::read_state(dir.path()).unwrap();
    assert_eq!((st.epoch, st.batch_in_epoch, st.global_step), (1, 0, 6));
}

/// Trains `cfg(1)` and `cfg(2)` (configs that differ in `train.threads` only) and checks that
/// they end with the same weights, bit for bit.
fn same_weights_at_one_and_two_threads(cfg: impl Fn(usize) -> RunConfig) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    run(&cfg(1), one.path(), false).unwrap();
    run(&cfg(2), two.path(), false).unwrap();
    // Thread counts are process-wide in libtorch; restore the default for other tests.
    tch::set_num_threads(1);
    let mut a = weights(one.path());
    let mut b = weights(two.path());
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    assert_same(&a, &b);
}

#[test]
fn thread_count_does_not_change_the_result() {
    same_weights_at_one_and_two_threads(|threads| config(1, threads));
}

/// The same with an encoder whose convolutions take the deterministic runs' pieces
/// (`encoders::conv::conv_det`): a NIN, batch 32.
#[test]
fn thread_count_does_not_change_a_nin_run() {
    same_weights_at_one_and_two_threads(|threads| {
        let mut cfg = config(1, threads);
        cfg.encoder = EncoderConfig::Nin { blocks: 3, width: 8 };
        cfg.train.batch_size = 32;
        assert!(cfg.train.deterministic);
        cfg
    });
}

/// The same in channels-last, fp32 and (where the CPU has bf16) bf16 autocast. The first
/// layer's input, the batch of images, is NCHW; its pieces' output is channels-last (as
/// libtorch's oneDNN convolution makes it), so the batch norms, pools and later layers run
/// channels-last.
#[test]
fn thread_count_does_not_change_a_channels_last_nin_run() {
    use selfsup_core::precision::{cpu_supports_bf16, Precision};
    let mut precisions = vec![Precision::Fp32];
    if cpu_supports_bf16() {
        precisions.push(Precision::Bf16);
    }
    for precision in precisions {
        same_weights_at_one_and_two_threads(|threads| {
            let mut cfg = config(1, threads);
            cfg.encoder = EncoderConfig::Nin { blocks: 3, width: 8 };
            cfg.train.batch_size = 32;
            cfg.train.channels_last = true;
            cfg.train.precision = precision;
            cfg
        });
    }
}

#[test]
fn loss_falls_and_bad_runs_fail_cleanly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let s = run(&config(3, 1), dir.path(), false).unwrap();
    let epochs: Vec<f64> = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "epoch")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(epochs.len(), 3);
    assert!(epochs[2] < epochs[0], "loss did not fall: {epochs:?}");
    assert!(s.last_epoch_loss.is_finite());

    // Running again into the same folder without --resume is refused, nothing overwritten.
    let before =
        std::fs::read(checkpoint::checkpoint_dir(dir.path()).join("model.safetensors")).unwrap();
    let err = run(&config(3, 1), dir.path(), false).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
    let after =
        std::fs::read(checkpoint::checkpoint_dir(dir.path()).join("model.safetensors")).unwrap();
    assert_eq!(before, after);

    // Resuming with a different learning rate is refused.
    let mut other = config(3, 1);
    other.train.optimizer = OptimizerConfig::Sgd {
        lr: 1.0,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
        exclude_bias_and_norm: false,
    };
    assert!(run(&other, dir.path(), true).unwrap_err().to_string().contains("config differs"));

    // A diverging run stops with a one-line error and keeps no checkpoint.
    let nan = tempfile::tempdir().unwrap();
    let bad = diverging();
    let err = run(&bad, nan.path(), false).unwrap_err().to_string();
    assert!(err.contains("loss is"), "{err}");
    assert!(!err.contains('\n'));
    assert!(!checkpoint::exists(nan.path()));

    // Unknown method keys are rejected with the key's name.
    let mut cfg = config(1, 1);
    cfg.method_config = serde_json::json!({"rotatons": 4});
    let err = run(&cfg, tempfile::tempdir().unwrap().path(), false).unwrap_err().to_string();
    assert!(err.contains("rotatons"), "{err}");
}

/// The flip classifier with a critic under `critic.` that its own optimizer trains, in the
/// shape of a GAN: the main loss also depends on the critic (so the main backward reaches the
/// critic's variables), the critic's loss is computed on the features the step kept, detached.
/// After each epoch it writes `epoch-<n>.txt` holding whether the epoch was the last.
struct CriticMethod {
    flip: FlipMethod,
    critic: nn::Linear,
    kept: Option<Tensor>,
    extras: Vec<selfsup_core::method::ExtraOptimizer>,
}

impl PretextMethod for CriticMethod {
    fn name(&self) -> &str {
        "critic"
    }
    fn views(&self) -> Vec<Pipeline> {
        self.flip.views()
    }
    fn encoder(&self) -> &dyn Encoder {
        self.flip.encoder()
    }
    fn step(&mut self, batch: &Batch, train: bool) -> Result<StepOutput> {
        let mut out = self.flip.step(batch, train)?;
        let feats = self.flip.encoder.forward_t(&batch.views[0], train).mean_dim(
            [2i64, 3].as_slice(),
            false,
            Kind::Float,
        );
        out.loss += self.critic.forward(&feats).mean(Kind::Float) * 0.01;
        self.kept = Some(feats.detach());
        Ok(out)
    }
    fn extra_optimizers(&self) -> Vec<selfsup_core::method::ExtraOptimizer> {
        self.extras.clone()
    }
    fn extra_losses(&mut self, _batch: &Batch) -> Result<Vec<(String, Tensor)>> {
        let feats = self.kept.take().expect("step keeps the features");
        let loss = (self.critic.forward(&feats) - 1.0).square().mean(Kind::Float);
        Ok(vec![("critic".into(), loss)])
    }
    fn write_epoch_artifacts(&mut self, epoch: u64, last: bool, run_dir: &Path) -> Result<()> {
        let path = run_dir.join(format!("epoch-{epoch}.txt"));
        std::fs::write(&path, last.to_string()).map_err(|e| selfsup_core::CoreError::io(&path, e))
    }
}

/// `method_config`: `lr` of the critic's optimizer, `prefix` of its variables, `twice` to ask
/// for two optimizers of the same name.
fn build_critic(
    root: &nn::Path,
    cfg: &serde_json::Value,
    ctx: &BuildContext,
) -> Result<Box<dyn PretextMethod>> {
    let encoder = build_encoder(&(root / "encoder"), &ctx.encoder, ctx.image_channels);
    let head = nn::linear(root / "head", encoder.out_channels(), 2, Default::default());
    let critic = nn::linear(root / "critic", encoder.out_channels(), 1, Default::default());
    let extra = selfsup_core::method::ExtraOptimizer {
        name: "critic".into(),
        prefix: cfg["prefix"].as_str().unwrap_or("critic.").into(),
        optimizer: OptimizerConfig::Sgd {
            lr: cfg["lr"].as_f64().unwrap_or(0.05),
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            exclude_bias_and_norm: false,
        },
    };
    let extras = if cfg["twice"] == true { vec![extra.clone(), extra] } else { vec![extra] };
    Ok(Box::new(CriticMethod { flip: FlipMethod { encoder, head }, critic, kept: None, extras }))
}

fn critic_registry() -> Registry {
    let mut r = Registry::new();
    r.register(MethodEntry {
        name: "critic",
        description: "test method: the flip classifier with a critic of its own optimizer",
        default_config: || serde_json::json!({}),
        build: build_critic,
    });
    r
}

fn critic_config(epochs: u64, method_config: serde_json::Value) -> RunConfig {
    RunConfig { method: "critic".into(), method_config, ..config(epochs, 1) }
}

fn run_critic(cfg: &RunConfig, dir: &Path, resume: bool) -> Result<()> {
    let mut opts =
        TrainOptions { resume, progress: false, dataset: Some(dataset()), ..Default::default() };
    train(cfg, &critic_registry(), dir, &mut opts).map(|_| ())
}

/// The variables whose names start with `prefix` (all of them for `""`), sorted.
fn under(vars: &[(String, Tensor)], prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vars
        .iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(n, t)| (n.clone(), t.copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn an_extra_optimizer_alone_updates_its_variables() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The initial weights, as the trainer builds them.
    let cfg = critic_config(1, serde_json::json!({"lr": 0.0}));
    let (vs, _, _) =
        selfsup_core::trainer::build_method(&cfg, &critic_registry(), &dataset(), tch::Device::Cpu)
            .unwrap();
    let init = checkpoint::sorted_variables(&vs);
    let mut one_step = cfg.clone();
    one_step.train.max_steps = Some(1);
    // With the critic's rate at 0 the critic stays put although the main loss reaches it: the
    // main optimizer does not own its variables.
    let frozen = tempfile::tempdir().unwrap();
    run_critic(&one_step, frozen.path(), false).unwrap();
    let after = weights(frozen.path());
    assert_same(&under(&init, "critic."), &under(&after, "critic."));
    assert!(!under(&init, "encoder.conv1")[0].1.equal(&under(&after, "encoder.conv1")[0].1));
    // At a positive rate its own optimizer moves it.
    let mut moving = one_step.clone();
    moving.method_config = serde_json::json!({"lr": 0.05});
    let dir = tempfile::tempdir().unwrap();
    run_critic(&moving, dir.path(), false).unwrap();
    let moved = under(&weights(dir.path()), "critic.");
    assert!(!moved[1].1.equal(&under(&init, "critic.")[1].1), "critic.weight moved");
}

#[test]
fn extra_optimizers_resume_bit_for_bit_and_epoch_artifacts_are_written() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let full = tempfile::tempdir().unwrap();
    run_critic(&critic_config(2, serde_json::json!({})), full.path(), false).unwrap();
    let part = tempfile::tempdir().unwrap();
    let mut stopped = critic_config(2, serde_json::json!({}));
    stopped.train.max_steps = Some(9);
    run_critic(&stopped, part.path(), false).unwrap();
    run_critic(&critic_config(2, serde_json::json!({})), part.path(), true).unwrap();
    assert_same(&weights(full.path()), &weights(part.path()));
    let a = checkpoint::load(full.path()).unwrap().trainer;
    let b = checkpoint::load(part.path()).unwrap().trainer;
    assert_same(&a, &b);
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"extra.critic.sgd.momentum.critic.weight"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("optim.") && n.contains("critic")), "{names:?}");
    // The critic's loss is logged with every step line and averaged in every epoch line.
    let log = std::fs::read_to_string(full.path().join("metrics.jsonl")).unwrap();
    assert!(log.lines().all(|l| l.contains("\"critic_loss\"")), "{log}");
    for (epoch, last) in [(1, "false"), (2, "true")] {
        let p = full.path().join(format!("epoch-{epoch}.txt"));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), last, "{}", p.display());
    }
}

#[test]
fn extra_optimizers_need_variables_and_distinct_names() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let cfg = critic_config(1, serde_json::json!({"prefix": "discriminator."}));
    let e = run_critic(&cfg, dir.path(), false).unwrap_err().to_string();
    assert!(
        e.contains("extra optimizer `critic` has no trainable variable under `discriminator.`"),
        "{e}"
    );
    let cfg = critic_config(1, serde_json::json!({"twice": true}));
    let e = run_critic(&cfg, dir.path(), false).unwrap_err().to_string();
    assert!(e.contains("two extra optimizers named `critic`"), "{e}");
    assert!(!checkpoint::exists(dir.path()));
}

#[test]
fn resume_refuses_a_longer_cosine_schedule_but_not_a_longer_step_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut cosine = config(1, 1);
    cosine.train.schedule = ScheduleConfig::Cosine { warmup_epochs: 0.0, final_fraction: 0.0 };
    run(&cosine, dir.path(), false).unwrap();
    let mut longer = cosine.clone();
    longer.train.epochs = 2;
    let err = run(&longer, dir.path(), true).unwrap_err().to_string();
    assert!(err.contains("train.epochs 1 → 2") && err.contains("cosine"), "{err}");
    // Nothing was written: the run still resumes as it was.
    assert_eq!(checkpoint::read_state(dir.path()).unwrap().global_step, 6);
    // Step decay does not depend on the run's length: extending it is fine.
    let steps = tempfile::tempdir().unwrap();
    run(&config(1, 1), steps.path(), false).unwrap();
    let s = run(&config(2, 1), steps.path(), true).unwrap();
    assert_eq!(s.global_step, 12);
}

/// The `"kind": "epoch"` lines of a run's metrics log, without their wall-clock seconds.
fn epoch_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "epoch")
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

#[test]
fn mid_epoch_checkpoints_resume_the_epoch_and_its_running_means_exactly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let full = tempfile::tempdir().unwrap();
    run(&config(2, 1), full.path(), false).unwrap();
    // A checkpoint after every step (timed, at a microscopic interval), the run stopped in the
    // middle of epoch 1 (6 steps an epoch), then resumed.
    let part = tempfile::tempdir().unwrap();
    let mut stopped = config(2, 1);
    stopped.train.checkpoint_minutes = 1e-9;
    stopped.train.max_steps = Some(4);
    run(&stopped, part.path(), false).unwrap();
    let st = checkpoint::read_state(part.path()).unwrap();
    assert_eq!((st.epoch, st.batch_in_epoch), (0, 4));
    let means = st.epoch_means.expect("a mid-epoch checkpoint keeps the epoch's running means");
    assert_eq!(means.n, 4);
    assert_eq!(means.sums[0].0, "loss");
    // The interval is not part of what is learned: resuming with another one is fine.
    let mut resumed = config(2, 1);
    resumed.train.checkpoint_minutes = 0.0;
    run(&resumed, part.path(), true).unwrap();
    assert_same(&weights(full.path()), &weights(part.path()));
    // Each epoch's line is the uninterrupted run's, bit for bit: epoch 1's means count the
    // four steps before the stop.
    assert_eq!(epoch_lines(full.path()), epoch_lines(part.path()));
    // Epoch-end checkpoints keep no running means.
    assert!(checkpoint::read_state(part.path()).unwrap().epoch_means.is_none());
    let mut bad = config(1, 1);
    bad.train.checkpoint_minutes = -1.0;
    let e = run(&bad, tempfile::tempdir().unwrap().path(), false).unwrap_err().to_string();
    assert!(e.contains("train.checkpoint_minutes = -1"), "{e}");
}

#[test]
fn epoch_snapshots_keep_the_newest_and_stay_loadable() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(3, 1);
    cfg.train.keep_checkpoints = 2;
    run(&cfg, dir.path(), false).unwrap();
    let snaps = dir.path().join(checkpoint::SNAPSHOTS);
    let mut names: Vec<String> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["epoch-0002", "epoch-0003"], "the two newest, nothing half-made");
    for (epoch, name) in [(2, "epoch-0002"), (3, "epoch-0003")] {
        let snap = snaps.join(name);
        let st = checkpoint::read_state(&snap).unwrap();
        assert_eq!((st.epoch, st.batch_in_epoch), (epoch, 0));
        // Later checkpoints did not disturb its files: the hashes still match.
        checkpoint::load(&snap).unwrap();
    }
    assert_same(&weights(&snaps.join("epoch-0003")), &weights(dir.path()));
    let second = weights(&snaps.join("epoch-0002"));
    assert!(second.iter().zip(weights(dir.path())).any(|((_, a), (_, b))| !a.equal(&b)));
    // 0 keeps none; the default keeps the last.
    let none = tempfile::tempdir().unwrap();
    cfg.train.keep_checkpoints = 0;
    run(&cfg, none.path(), false).unwrap();
    assert!(!none.path().join(checkpoint::SNAPSHOTS).exists());
    assert_eq!(TrainConfig::default().keep_checkpoints, 1);
}

/// The trainer reads values back from the device (loss, metrics, their sums) at step lines and
/// epoch ends only, so the reads do not grow with the steps; a loss that turns NaN between two
/// reads is still caught before any checkpoint, naming the steps it lies in.
#[test]
fn the_host_reads_values_back_per_log_line_not_per_step() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let reads_of = |batch_size: usize, log_every: u64| {
        let mut cfg = config(2, 1);
        cfg.train.batch_size = batch_size;
        cfg.train.log_every = log_every;
        let dir = tempfile::tempdir().unwrap();
        let before = selfsup_core::host::reads();
        let s = run(&cfg, dir.path(), false).unwrap();
        (selfsup_core::host::reads() - before, s.global_step)
    };
    // 12 and 24 steps, a step line only at each epoch's end: the same reads, per epoch the
    // step line (its loss check, loss and accuracy) and the epoch line (check, 2 means).
    let (few, steps_few) = reads_of(8, 1000);
    let (many, steps_many) = reads_of(4, 1000);
    assert_eq!((steps_few, steps_many), (12, 24));
    assert_eq!(few, many, "reads grow with the steps");
    assert_eq!(few, 2 * (3 + 3));
    // A step line every step reads its three values every step.
    let (every, _) = reads_of(4, 1);
    assert_eq!(every, 24 * 3 + 2 * 3);

    let nan = tempfile::tempdir().unwrap();
    let mut bad = diverging();
    bad.train.log_every = 1000;
    let err = run(&bad, nan.path(), false).unwrap_err().to_string();
    assert!(err.contains("loss is NaN at epoch 0, one of steps 1..=6"), "{err}");
    assert!(!checkpoint::exists(nan.path()));
}
