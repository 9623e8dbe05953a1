//! End-to-end checks of the protocols on a random-init Tiny encoder and `synthetic:` data:
//! determinism under a seed, reports written, encoder left unchanged by fine-tuning.
use selfsup_core::EncoderConfig;
use selfsup_data::{open_dataset, ImageDataset, Split};
use selfsup_eval::baselines::random_encoder;
use selfsup_eval::fewshot::{FewShotMode, FineTuneConfig};
use selfsup_eval::*;
use std::path::Path;
use tch::Device;

fn data() -> (ImageDataset, ImageDataset) {
    let dir = Path::new("/nonexistent");
    (
        open_dataset("synthetic:120:16", Split::Train, dir).unwrap(),
        open_dataset("synthetic:60:16", Split::Test, dir).unwrap(),
    )
}

fn tiny() -> EncoderConfig {
    EncoderConfig::Tiny { width: 4, batch_norm: true }
}

fn quick_linear() -> LinearProbeConfig {
    serde_json::from_value(serde_json::json!({"epochs": 3, "batch_size": 32})).unwrap()
}

#[test]
fn random_init_linear_probe_is_deterministic() {
    let (train, test) = data();
    // The second run extracts each tap in its own pass (memory budget 0): same numbers.
    let run = |budget: usize| {
        let enc = random_encoder(&tiny(), 3, 11, Device::Cpu);
        let cfg = LinearProbeConfig { feature_memory_mib: budget, ..quick_linear() };
        linear_probe(enc.encoder.as_ref(), Device::Cpu, &train, &test, &cfg, 4).unwrap()
    };
    let (a, b) = (run(4096), run(0));
    assert_eq!(a.rows.len(), 2, "one row per Tiny tap");
    for (x, y) in a.rows.iter().zip(&b.rows) {
        assert_eq!(x.top1.to_bits(), y.top1.to_bits(), "{}", x.tap);
        assert_eq!(x.top5.to_bits(), y.top5.to_bits(), "{}", x.tap);
        assert_eq!(x.train_top1.map(f64::to_bits), y.train_top1.map(f64::to_bits));
    }
    // Tiny taps at 16 px: block1 4×8×8 and block2 8×8×8, small enough to stay unpooled.
    assert_eq!(a.rows[0].map_shape, vec![4, 8, 8]);
    assert_eq!(a.rows[0].dim, 4 * 8 * 8);
    assert_eq!(a.rows[1].dim, 8 * 8 * 8);
    assert_eq!(a.train.checksum, train.checksum());
    // The tinted synthetic classes are learnable from random features: well above 10% chance.
    assert!(a.rows[1].train_top1.unwrap() > 30.0, "{:?}", a.rows[1]);
}

#[test]
fn knn_and_nonlinear_reports_are_written() {
    let (train, test) = data();
    let enc = random_encoder(&tiny(), 3, 1, Device::Cpu);
    let dir = tempfile::tempdir().unwrap();

    let knn_cfg: KnnConfig =
        serde_json::from_value(serde_json::json!({"k": 20, "taps": ["all"]})).unwrap();
    let r = knn_probe(enc.encoder.as_ref(), Device::Cpu, &train, &test, &knn_cfg, 0).unwrap();
    assert_eq!(r.rows.len(), 2);
    assert_eq!(r.rows[1].dim, 8, "pooled to channels");
    assert!(r.rows.iter().all(|row| row.variant == "knn k=20 T=0.1"));
    let (json, md) = r.write(dir.path()).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    assert_eq!(v["settings"]["k"], 20);
    assert_eq!(v["settings"]["temperature"], 0.1);
    assert!(std::fs::read_to_string(md).unwrap().contains("| block2 | knn k=20 T=0.1 |"));

    let monitor =
        knn_monitor(enc.encoder.as_ref(), Device::Cpu, &train, &test, 50, 20, 0.1, None).unwrap();
    assert!((0.0..=100.0).contains(&monitor));

    // The MLP runs on cached maps (no augmentation), the conv block on per-batch augmented ones.
    for (head, augment) in [("conv_block3", true), ("mlp", false)] {
        let cfg: NonLinearProbeConfig = serde_json::from_value(serde_json::json!({
            "head": head, "taps": ["block2"], "width": 8, "hidden": 16, "epochs": 2, "batch_size": 32,
            "augment": augment
        }))
        .unwrap();
        let r = nonlinear_probe(enc.encoder.as_ref(), Device::Cpu, &train, &test, &cfg, 0).unwrap();
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0].variant, head);
        assert!(r.rows[0].top1.is_finite());
        let (json, _) = r.write(dir.path()).unwrap();
        assert!(json.ends_with("eval/nonlinear.json"));
    }
}

#[test]
fn fewshot_restores_the_encoder() {
    let (train, test) = data();
    let enc = random_encoder(&tiny(), 3, 2, Device::Cpu);
    let before: Vec<(String, tch::Tensor)> = {
        let mut v: Vec<_> = enc.vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let cfg = FewShotConfig {
        budgets: vec![LabelBudget::PerClass(3), LabelBudget::Fraction(0.5)],
        modes: vec![FewShotMode::Linear, FewShotMode::Finetune],
        linear: quick_linear(),
        finetune: FineTuneConfig { epochs: 2, batch_size: 16, ..Default::default() },
        ..Default::default()
    };
    let r = fewshot(enc.encoder.as_ref(), &enc.vs, &train, &test, &cfg, 3).unwrap();
    assert_eq!(r.rows.len(), 4);
    assert_eq!(r.rows[0].variant, "3/class frozen linear");
    assert_eq!(r.rows[0].train_images, 30);
    assert_eq!(r.rows[1].variant, "3/class fine-tuned");
    for (name, t) in before {
        assert!(t.equal(&enc.vs.variables()[&name]), "{name} changed");
    }
    let again = fewshot(enc.encoder.as_ref(), &enc.vs, &train, &test, &cfg, 3).unwrap();
    for (x, y) in r.rows.iter().zip(&again.rows) {
        assert_eq!(x.top1.to_bits(), y.top1.to_bits(), "{}", x.variant);
    }
}

#[test]
fn pooled_dims_follow_the_9k_rule_on_nin_and_alexnet() {
    use selfsup_eval::features::{extract, Extraction, Normalization, Pooling};
    let cases: [(EncoderConfig, usize, Vec<i64>); 2] = [
        // RotNet NIN at 32 px: block1 96×16×16 → 10×10 = 9,600; block2 192×8×8 → 7×7 = 9,408,
        // and so are block3 and block4 (192×8×8).
        (
            serde_json::from_value(serde_json::json!({"kind": "nin", "blocks": 4, "width": 192}))
                .unwrap(),
            32,
            vec![9600, 9408, 9408, 9408],
        ),
        // Caffe AlexNet at 224 px: conv1..conv5 → 96·10², 256·6², 384·5², 384·5², 256·6².
        (
            serde_json::from_value(serde_json::json!({"kind": "alexnet", "variant": "imagenet"}))
                .unwrap(),
            224,
            vec![9600, 9216, 9600, 9600, 9216],
        ),
    ];
    for (cfg, size, want) in cases {
        let enc = random_encoder(&cfg, 3, 0, Device::Cpu);
        let ds = ImageDataset::from_raw(
            "one",
            3,
            size,
            size,
            vec![128; size * size * 3],
            Some(vec![0]),
            Some(1),
        )
        .unwrap();
        let norm = Normalization::unit(3);
        let ex = Extraction {
            device: Device::Cpu,
            norm: &norm,
            pooling: Some(Pooling::Target(9000)),
            batch_size: 1,
            augment: None,
        };
        let feats = extract(enc.encoder.as_ref(), &ds, None, &["all".to_string()], &ex).unwrap();
        let dims: Vec<i64> = feats.iter().map(|f| f.dim()).collect();
        assert_eq!(dims, want, "{cfg:?}");
        let want_map: [i64; 3] = if size == 32 { [192, 8, 8] } else { [256, 27, 27] };
        assert_eq!(feats[1].map_shape, want_map);
    }
}

/// A smoke run on real CIFAR-10 (skipped unless `--ignored`; needs
/// `$SELFSUP_DATA/cifar-10-batches-bin` or `./datasets/...`): a random-init RotNet NIN, 2,000
/// training and 1,000 test images, linear probe of every block for 10 epochs and kNN.
#[test]
#[ignore]
fn cifar10_random_nin_smoke() {
    let dir = selfsup_data::resolve_data_dir(None);
    let train = open_dataset("cifar10", Split::Train, &dir).unwrap();
    let test = open_dataset("cifar10", Split::Test, &dir).unwrap();
    let train = train.subset(&(0..2000).collect::<Vec<_>>());
    let test = test.subset(&(0..1000).collect::<Vec<_>>());
    let cfg: EncoderConfig =
        serde_json::from_value(serde_json::json!({"kind": "nin", "blocks": 4})).unwrap();
    let enc = random_encoder(&cfg, 3, 0, Device::Cpu);
    let t = std::time::Instant::now();
    let lin: LinearProbeConfig =
        serde_json::from_value(serde_json::json!({"epochs": 10, "batch_size": 128})).unwrap();
    let r = linear_probe(enc.encoder.as_ref(), Device::Cpu, &train, &test, &lin, 0).unwrap();
    eprintln!("{}linear: {:.1} s", r.markdown(), t.elapsed().as_secs_f64());
    assert!(r.rows.iter().all(|row| row.top1 > 15.0), "{:?}", r.rows);
    let t = std::time::Instant::now();
    let k = knn_probe(enc.encoder.as_ref(), Device::Cpu, &train, &test, &KnnConfig::default(), 0)
        .unwrap();
    eprintln!("{}knn: {:.1} s", k.markdown(), t.elapsed().as_secs_f64());
    assert!(k.rows[0].top1 > 12.0, "{:?}", k.rows);
}

#[test]
fn augmented_linear_probe_on_the_pooled_output() {
    let (train, test) = data();
    let enc = random_encoder(&tiny(), 3, 1, Device::Cpu);
    let cfg = LinearProbeConfig {
        epochs: 2,
        batch_size: 32,
        ..LinearProbeConfig::reference_contrastive()
    };
    let run = || linear_probe(enc.encoder.as_ref(), Device::Cpu, &train, &test, &cfg, 2).unwrap();
    let r = run();
    assert_eq!(r.rows.len(), 1, "the last tap only");
    assert_eq!(r.rows[0].tap, "block2");
    assert_eq!(r.rows[0].dim, 8, "globally pooled to the channels");
    assert_eq!(r.rows[0].variant, "linear, augmented");
    assert_eq!(r.rows[0].top1.to_bits(), run().rows[0].top1.to_bits(), "seeded augmentation");
    // Standardising augmented features is refused by name.
    let bad = LinearProbeConfig { standardize: true, ..cfg.clone() };
    let e = linear_probe(enc.encoder.as_ref(), Device::Cpu, &train, &test, &bad, 2).unwrap_err();
    assert!(e.to_string().contains("standardize"), "{e}");
}

#[test]
fn nonlinear_probe_reports_the_best_epoch_beside_the_last() {
    let (train, test) = data();
    let enc = random_encoder(&tiny(), 3, 1, Device::Cpu);
    let cfg: NonLinearProbeConfig = serde_json::from_value(serde_json::json!({
        "head": "mlp", "taps": ["block2"], "hidden": 16, "epochs": 3, "batch_size": 32,
        "augment": false, "eval_every_epoch": true
    }))
    .unwrap();
    let r = nonlinear_probe(enc.encoder.as_ref(), Device::Cpu, &train, &test, &cfg, 0).unwrap();
    let best = r.rows[0].best_epoch.expect("scored every epoch");
    assert!((1..=3).contains(&best.epoch), "{best:?}");
    assert!(best.top1 >= r.rows[0].top1, "the best epoch is at least the last: {best:?}");
    // The last-epoch headline is the same number as without per-epoch scoring.
    let plain = NonLinearProbeConfig { eval_every_epoch: false, ..cfg };
    let p = nonlinear_probe(enc.encoder.as_ref(), Device::Cpu, &train, &test, &plain, 0).unwrap();
    assert_eq!(p.rows[0].top1.to_bits(), r.rows[0].top1.to_bits());
    assert!(p.rows[0].best_epoch.is_none());
}
