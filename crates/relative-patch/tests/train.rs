//! Relative patch position through the trainer on synthetic images: the loss is finite, the position accuracy is
//! reported, and a run interrupted in its second epoch and resumed ends bit for bit where an
//! uninterrupted run does (the step count that seeds the pairs travels
//! with the checkpoint).
use selfsup_core::config::{DataConfig, RunConfig, TrainConfig};
use selfsup_core::encoders::AlexnetVariant;
use selfsup_core::precision::{cpu_supports_bf16, Precision};
use selfsup_core::trainer::{train, TrainOptions};
use selfsup_core::{checkpoint, EncoderConfig, Registry};
use selfsup_data::Split;

fn config(epochs: u64) -> RunConfig {
    RunConfig {
        method: "relative-patch".into(),
        data: DataConfig {
            dataset: "synthetic:48:32".into(),
            split: Split::Train,
            data_dir: None,
            max_images: None,
        },
        encoder: EncoderConfig::Tiny { width: 8, batch_norm: true },
        train: TrainConfig { epochs, batch_size: 16, ..TrainConfig::default() },
        method_config: serde_json::json!({
            "crop": 40, "patch": 8, "gap": 4, "jitter": 1, "fc6": 16, "fc7": 32, "dropout": 0.5
        }),
        ..RunConfig::default()
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    selfsup_relative_patch::register(&mut r);
    r
}

/// libtorch's thread count is process-wide: the tests of this file train one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(dir: &std::path::Path, max_steps: Option<u64>, resume: bool) -> Vec<(String, tch::Tensor)> {
    let mut cfg = config(2);
    cfg.train.max_steps = max_steps;
    run_config(&cfg, dir, resume)
}

fn run_config(cfg: &RunConfig, dir: &std::path::Path, resume: bool) -> Vec<(String, tch::Tensor)> {
    let mut opts = TrainOptions { resume, progress: false, ..TrainOptions::default() };
    let summary = train(cfg, &registry(), dir, &mut opts).unwrap();
    assert!(summary.last_epoch_loss.is_finite());
    let ck = checkpoint::load(dir).unwrap();
    let mut vars = ck.model;
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn assert_same(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)], what: &str) {
    assert_eq!(a.len(), b.len());
    for ((name, x), (other, y)) in a.iter().zip(b) {
        assert_eq!(name, other);
        assert!(x.equal(y), "{name} differs {what}");
    }
}

#[test]
fn trains_and_resumes_bit_for_bit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let straight = tempfile::tempdir().unwrap();
    let a = run(straight.path(), None, false);
    let metrics = std::fs::read_to_string(straight.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"position_acc\""), "{metrics}");
    let split = tempfile::tempdir().unwrap();
    // 3 steps an epoch: stop in the middle of the second, then resume to the end.
    run(split.path(), Some(4), false);
    let b = run(split.path(), None, true);
    assert_same(&a, &b, "after resuming");
}

/// A deterministic run (the default) of the cpu profile's network, the AlexNet on 8-px patches,
/// ends with the same bits at 1 and 2 threads: conv2 (5×5 at 4×4) to conv5 (3×3 at 2×2) run as
/// dense products (`selfsup_core::encoders::conv::conv_dense`) on `mm_det`'s blocks, conv1 on
/// `conv_det`'s pieces, the fc layers on libtorch's products. NCHW and channels-last; and in
/// channels-last bf16 where the CPU has bf16, where the convolutions are `conv_det`'s pieces
/// and the fc layers `mm_det`'s blocks on oneDNN (`selfsup_core::encoders::Linear`).
#[test]
fn thread_count_does_not_change_a_deterministic_run_of_the_alexnet() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cases = vec![(false, Precision::Fp32), (true, Precision::Fp32)];
    if cpu_supports_bf16() {
        cases.push((true, Precision::Bf16));
    }
    for (channels_last, precision) in cases {
        let at = |threads: usize| {
            let mut cfg = config(1);
            cfg.data.dataset = "synthetic:64:32".into();
            cfg.encoder = EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 12 };
            cfg.method_config["crop"] = 32.into();
            cfg.method_config["gap"] = 3.into();
            cfg.train.batch_size = 32;
            cfg.train.threads = threads;
            cfg.train.channels_last = channels_last;
            cfg.train.precision = precision;
            assert!(cfg.train.deterministic);
            let dir = tempfile::tempdir().unwrap();
            run_config(&cfg, dir.path(), false)
        };
        let (one, two) = (at(1), at(2));
        assert!(one.iter().any(|(n, _)| n.contains("conv5")), "the AlexNet's variables");
        let what = format!("at 2 threads (channels-last {channels_last}, {precision:?})");
        assert_same(&one, &two, &what);
    }
}
