//! The protocols that train something in a deterministic CPU run (oneDNN off, as `selfsup
//! eval` runs by default): the same bits at 1, 2 and 3 threads. The non-linear head's
//! convolutions, fine-tuning's encoder and the probes' products have weight gradients summed
//! over the batch, which oneDNN and MKL split across threads; deterministic runs take
//! `selfsup_core`'s fixed pieces and blocks instead.
//! Fine-tuning runs on all three encoder families (NIN, AlexNet, ResNet-18 with CIFAR stems):
//! their batch norms, max-pools, strided convolutions and residual sums each have a backward
//! pass of their own.
//! Its own process: libtorch's thread count and oneDNN's switch are process-wide.
use selfsup_core::determinism::{same_bits, set_mkldnn_enabled};
use selfsup_core::EncoderConfig;
use selfsup_data::{open_dataset, ImageDataset, Split};
use selfsup_eval::baselines::random_encoder;
use selfsup_eval::fewshot::{finetune, FineTuneConfig};
use selfsup_eval::linear::{train_linear, ProbeScore};
use selfsup_eval::nonlinear::train_nonlinear;
use selfsup_eval::*;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Everything a probe's training leaves that its seed should fix.
fn fingerprint(s: &ProbeScore) -> [u64; 4] {
    [s.final_loss.to_bits(), s.top1.to_bits(), s.top5.to_bits(), s.train_top1.to_bits()]
}

/// What each protocol gave at one thread count: the probes' fingerprints, then fine-tuning's
/// and the fine-tuned encoder's variables (sorted by name).
struct Run {
    scores: Vec<(&'static str, [u64; 4])>,
    finetuned: Vec<(String, Tensor)>,
}

fn run(train: &ImageDataset, test: &ImageDataset, threads: i32) -> Run {
    tch::set_num_threads(threads);
    // RotNet's cpu-profile trunk (NIN, 4 blocks of 64) at 32 pixels, batch 64.
    let nin = EncoderConfig::Nin { blocks: 4, width: 64 };
    let enc = random_encoder(&nin, 3, 5, Device::Cpu);
    let norm = Normalization::from_dataset(train, 1000);
    let idx: Vec<i64> = (0..train.len() as i64).collect();
    let mut scores = Vec::new();
    for (name, head) in [("conv_block3", "conv_block3"), ("mlp", "mlp")] {
        let cfg: NonLinearProbeConfig = serde_json::from_value(serde_json::json!({
            "head": head, "width": 64, "hidden": 128, "epochs": 2, "batch_size": 64,
            "augment": head == "conv_block3"
        }))
        .unwrap();
        let (s, _) = train_nonlinear(
            enc.encoder.as_ref(),
            Device::Cpu,
            train,
            &idx,
            test,
            "block2",
            10,
            &norm,
            &cfg,
            9,
        )
        .unwrap();
        scores.push((name, fingerprint(&s)));
    }
    // The linear probe's logistic regression on 4,096-dimensional inputs.
    let lin: LinearProbeConfig =
        serde_json::from_value(serde_json::json!({"epochs": 2, "batch_size": 64})).unwrap();
    let f = |ds: &ImageDataset| {
        let g = tch::Tensor::randn([ds.len() as i64, 4096], (Kind::Float, Device::Cpu));
        let y = features::labels_tensor(ds, Device::Cpu).unwrap();
        (g, y)
    };
    tch::manual_seed(3);
    let ((xtr, ytr), (xte, yte)) = (f(train), f(test));
    let s = train_linear(&xtr, &ytr, &xte, &yte, 10, &lin, 9).unwrap();
    scores.push(("linear", fingerprint(&s)));
    let (score, finetuned) = finetune_run(&nin, train, test, threads, 64);
    scores.push(("finetune", score));
    Run { scores, finetuned }
}

/// Fine-tunes a fresh `cfg` encoder (seed 5) for one epoch at `threads` threads; the score's
/// fingerprint, and the variables after, sorted by name.
fn finetune_run(
    cfg: &EncoderConfig,
    train: &ImageDataset,
    test: &ImageDataset,
    threads: i32,
    batch_size: usize,
) -> ([u64; 4], Vec<(String, Tensor)>) {
    tch::set_num_threads(threads);
    let enc = random_encoder(cfg, 3, 5, Device::Cpu);
    let norm = Normalization::from_dataset(train, 1000);
    let idx: Vec<i64> = (0..train.len() as i64).collect();
    let ft = FineTuneConfig { epochs: 1, batch_size, ..Default::default() };
    let s = finetune(enc.encoder.as_ref(), &enc.vs, train, &idx, test, 10, &norm, &ft, 9).unwrap();
    let mut vars: Vec<_> =
        enc.vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    (fingerprint(&s), vars)
}

/// The variables fine-tuning left at each thread count (1, 2, 3, ...) are the same bits, and
/// not those of the fresh `cfg` encoder.
fn assert_finetuned_alike(family: &str, cfg: &EncoderConfig, runs: &[&[(String, Tensor)]]) {
    let fresh = random_encoder(cfg, 3, 5, Device::Cpu).vs.variables();
    assert!(runs[0].iter().any(|(n, t)| !t.equal(&fresh[n])), "{family}: nothing moved");
    for (t, vars) in runs.iter().enumerate().skip(1) {
        assert_eq!(vars.len(), runs[0].len());
        for ((name, a), (_, b)) in vars.iter().zip(runs[0]) {
            assert!(same_bits(a, b), "{family}: fine-tuned {name} at {} threads", t + 1);
        }
    }
}

#[test]
fn probes_and_finetuning_give_the_same_bits_at_any_thread_count() {
    set_mkldnn_enabled(false);
    let dir = Path::new("/nonexistent");
    let train = open_dataset("synthetic:192:32", Split::Train, dir).unwrap();
    let test = open_dataset("synthetic:64:32", Split::Test, dir).unwrap();
    let runs: Vec<Run> = (1..=3).map(|t| run(&train, &test, t)).collect();
    for (t, r) in runs.iter().enumerate().skip(1) {
        for ((name, a), (_, b)) in r.scores.iter().zip(&runs[0].scores) {
            assert_eq!(a, b, "{name} at {} threads", t + 1);
        }
    }
    // Fine-tuning moved the encoder the same way at every thread count, and the probes trained.
    let nin = EncoderConfig::Nin { blocks: 4, width: 64 };
    let finetuned: Vec<&[_]> = runs.iter().map(|r| r.finetuned.as_slice()).collect();
    assert_finetuned_alike("nin", &nin, &finetuned);
    for (name, s) in &runs[0].scores {
        assert!(f64::from_bits(s[0]).is_finite(), "{name}: loss");
    }
    // Fine-tuning AlexNet (the reconstruction methods' trunk, a quarter wide) and ResNet-18
    // (SimCLR's paper trunk), both at 32 pixels.
    let small_train = open_dataset("synthetic:64:32", Split::Train, dir).unwrap();
    let small_test = open_dataset("synthetic:32:32", Split::Test, dir).unwrap();
    let families: [(&str, EncoderConfig); 2] = [
        (
            "alexnet",
            serde_json::from_value(
                serde_json::json!({"kind": "alexnet", "variant": "cifar", "width": 24}),
            )
            .unwrap(),
        ),
        (
            "resnet18",
            serde_json::from_value(serde_json::json!({"kind": "resnet18", "stem": "cifar"}))
                .unwrap(),
        ),
    ];
    for (family, cfg) in &families {
        let runs: Vec<_> =
            (1..=3).map(|t| finetune_run(cfg, &small_train, &small_test, t, 32)).collect();
        assert!(f64::from_bits(runs[0].0[0]).is_finite(), "{family}: loss");
        for (t, (score, _)) in runs.iter().enumerate().skip(1) {
            assert_eq!(score, &runs[0].0, "{family} fine-tuning's score at {} threads", t + 1);
        }
        let finetuned: Vec<&[_]> = runs.iter().map(|r| r.1.as_slice()).collect();
        assert_finetuned_alike(family, cfg, &finetuned);
    }
}
