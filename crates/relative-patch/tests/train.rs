//! Relative patch position through the trainer on synthetic images: the loss is finite, the position accuracy is
//! reported, and a run interrupted in its second epoch and resumed ends bit for bit where an
//! uninterrupted run does (the step count that seeds the pairs travels
//! with the checkpoint).
use selfsup_core::config::{DataConfig, RunConfig, TrainConfig};
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

fn run(dir: &std::path::Path, max_steps: Option<u64>, resume: bool) -> Vec<(String, tch::Tensor)> {
    let mut opts = TrainOptions { resume, progress: false, ..TrainOptions::default() };
    let mut cfg = config(2);
    cfg.train.max_steps = max_steps;
    let summary = train(&cfg, &registry(), dir, &mut opts).unwrap();
    assert!(summary.last_epoch_loss.is_finite());
    let ck = checkpoint::load(dir).unwrap();
    let mut vars = ck.model;
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[test]
fn trains_and_resumes_bit_for_bit() {
    let straight = tempfile::tempdir().unwrap();
    let a = run(straight.path(), None, false);
    let metrics = std::fs::read_to_string(straight.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"position_acc\""), "{metrics}");
    let split = tempfile::tempdir().unwrap();
    // 3 steps an epoch: stop in the middle of the second, then resume to the end.
    run(split.path(), Some(4), false);
    let b = run(split.path(), None, true);
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name} differs after resuming");
    }
}
