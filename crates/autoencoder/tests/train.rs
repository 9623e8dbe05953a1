//! The denoising autoencoder through the trainer on synthetic 32-pixel images with a
//! quarter-width AlexNet: the loss is finite and below the identity's error, a sample grid is
//! written into the run folder, and a run interrupted in its second epoch and resumed ends bit
//! for bit where an uninterrupted run does (the step count that seeds the corruption travels
//! with the checkpoint).
use selfsup_core::config::{DataConfig, RunConfig, TrainConfig};
use selfsup_core::encoders::AlexnetVariant;
use selfsup_core::optim::OptimizerConfig;
use selfsup_core::trainer::{train, TrainOptions};
use selfsup_core::{checkpoint, EncoderConfig, Registry};
use selfsup_data::Split;

fn config() -> RunConfig {
    RunConfig {
        method: "autoencoder".into(),
        device: "cpu".into(),
        data: DataConfig {
            dataset: "synthetic:24:32".into(),
            split: Split::Train,
            data_dir: None,
            max_images: None,
        },
        encoder: EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 4 },
        train: TrainConfig {
            epochs: 2,
            batch_size: 8,
            optimizer: OptimizerConfig::Adamw {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            log_every: 1,
            threads: 1,
            ..TrainConfig::default()
        },
        method_config: serde_json::json!({
            "corruption": {"kind": "salt_and_pepper", "fraction": 0.2},
            "horizontal_flip": true, "sample_every": 1, "samples": 4
        }),
        ..RunConfig::default()
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    selfsup_autoencoder::register(&mut r);
    r
}

fn run(dir: &std::path::Path, max_steps: Option<u64>, resume: bool) -> checkpoint::Checkpoint {
    let mut opts = TrainOptions { resume, progress: false, ..TrainOptions::default() };
    let mut cfg = config();
    cfg.train.max_steps = max_steps;
    let summary = train(&cfg, &registry(), dir, &mut opts).unwrap();
    assert!(summary.last_epoch_loss.is_finite());
    checkpoint::load(dir).unwrap()
}

fn assert_same(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((name, x), (other, y)) in a.iter().zip(b) {
        assert_eq!(name, other);
        assert!(x.equal(y), "{name} differs after resuming");
    }
}

#[test]
fn trains_writes_samples_and_resumes_bit_for_bit() {
    let straight = tempfile::tempdir().unwrap();
    let a = run(straight.path(), None, false);
    let metrics = std::fs::read_to_string(straight.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"identity_mse\""), "{metrics}");
    for epoch in [1, 2] {
        let png = straight.path().join(format!("samples/epoch-{epoch:04}.png"));
        assert!(png.exists(), "{} missing", png.display());
    }
    // The checkpoint records the pixel statistics the encoder was trained with.
    assert_eq!(a.state.normalization.unwrap().mean, selfsup_data::pipeline::CIFAR10_MEAN);
    // 3 steps an epoch: stop in the middle of the second, then resume to the end.
    let split = tempfile::tempdir().unwrap();
    run(split.path(), Some(4), false);
    let b = run(split.path(), None, true);
    assert_same(&a.model, &b.model);
    assert_same(&a.trainer, &b.trainer);
    assert!(a.trainer.iter().any(|(n, _)| n == "method.autoencoder.draws"));
}
