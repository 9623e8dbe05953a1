//! Colorization through the trainer on synthetic images: the loss is finite, the ab accuracy
//! is logged, sample pictures are written after each epoch, a run interrupted in its second
//! epoch and resumed ends bit for bit where an uninterrupted run does (the prior's counts travel
//! with the checkpoint), and the checkpoint records pixels in `[0, 1]` as the encoder's input
//! (it converts them to L itself).
use selfsup_core::config::{DataConfig, RunConfig, TrainConfig};
use selfsup_core::encoders::AlexnetVariant;
use selfsup_core::trainer::{train, TrainOptions};
use selfsup_core::{checkpoint, EncoderConfig, Registry};
use selfsup_data::Split;

fn config(epochs: u64) -> RunConfig {
    RunConfig {
        method: "colorization".into(),
        data: DataConfig {
            dataset: "synthetic:24:32".into(),
            split: Split::Train,
            data_dir: None,
            max_images: None,
        },
        encoder: EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 4 },
        train: TrainConfig { epochs, batch_size: 8, ..TrainConfig::default() },
        method_config: serde_json::json!({"head_width": 16, "samples": 3, "prior_images": 12}),
        ..RunConfig::default()
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    selfsup_colorization::register(&mut r);
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
    vars.extend(ck.trainer.into_iter().filter(|(n, _)| n.starts_with("method.")));
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[test]
fn trains_writes_samples_and_resumes_bit_for_bit() {
    let straight = tempfile::tempdir().unwrap();
    let a = run(straight.path(), None, false);
    let metrics = std::fs::read_to_string(straight.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"ab_acc\""), "{metrics}");
    for e in [1, 2] {
        let p = straight.path().join(format!("samples/epoch_{e:04}.png"));
        assert!(p.exists(), "{} missing", p.display());
    }
    assert!(a.iter().any(|(n, _)| n == "method.colorization.prior.counts"));
    let split = tempfile::tempdir().unwrap();
    // 3 steps an epoch: stop in the middle of the second, then resume to the end.
    run(split.path(), Some(4), false);
    let b = run(split.path(), None, true);
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name} differs after resuming");
    }
    let ck = checkpoint::load(straight.path()).unwrap();
    assert_eq!(ck.state.normalization.unwrap().mean, vec![0.0; 3]);
}
