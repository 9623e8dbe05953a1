//! Split-brain through the trainer on synthetic images: the loss is finite, both halves'
//! accuracies are logged, a run interrupted in its second epoch and resumed ends bit for bit
//! where an uninterrupted run does, and the checkpoint records pixels in `[0, 1]` as the
//! encoder's input (it converts them to Lab itself).
use selfsup_core::config::{DataConfig, RunConfig, TrainConfig};
use selfsup_core::encoders::AlexnetVariant;
use selfsup_core::trainer::{train, TrainOptions};
use selfsup_core::{checkpoint, EncoderConfig, Registry};
use selfsup_data::Split;

fn config(epochs: u64) -> RunConfig {
    RunConfig {
        method: "split-brain".into(),
        data: DataConfig {
            dataset: "synthetic:24:32".into(),
            split: Split::Train,
            data_dir: None,
            max_images: None,
        },
        encoder: EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 6 },
        // One thread: at 2 threads, 3 of 15 identical runs of this config (AlexNet halves,
        // classification loss) ended with other bits in `l_to_ab` (measured 2026-12-01; not
        // with the regression loss, the tiny trunk, or 1 thread; MKL_CBWR=AUTO,STRICT did not
        // remove it). A thread-count-dependent kernel not yet found: this test is about
        // resuming, so it runs where the run itself is reproducible.
        train: TrainConfig { epochs, batch_size: 8, threads: 1, ..TrainConfig::default() },
        method_config: serde_json::json!({"head_width": 16, "l_bins": 20, "rebalance": true,
                                          "prior_images": 12}),
        ..RunConfig::default()
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    selfsup_split_brain::register(&mut r);
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
fn trains_and_resumes_bit_for_bit() {
    let straight = tempfile::tempdir().unwrap();
    let a = run(straight.path(), None, false);
    let metrics = std::fs::read_to_string(straight.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"ab_acc\"") && metrics.contains("\"l_acc\""), "{metrics}");
    assert!(a.iter().any(|(n, _)| n == "encoder.ab_to_l.conv1.weight"));
    assert!(a.iter().any(|(n, _)| n == "method.split_brain.prior.counts"));
    let split = tempfile::tempdir().unwrap();
    // 3 steps an epoch: stop in the middle of the second, then resume to the end.
    run(split.path(), Some(4), false);
    let b = run(split.path(), None, true);
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name} differs after resuming");
    }
    let ck = checkpoint::load(straight.path()).unwrap();
    let norm = ck.state.normalization.unwrap();
    assert_eq!((norm.mean, norm.std), (vec![0.0; 3], vec![1.0; 3]));
}
