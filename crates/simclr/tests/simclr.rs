//! SimCLR with the tiny encoder: registration, the loss falling on a fixed batch, and
//! gradient-cached micro-batches against one graph over the same micro-batches.
use selfsup_core::encoders::EncoderConfig;
use selfsup_core::{BuildContext, PretextMethod, Registry};
use selfsup_data::Batch;
use selfsup_simclr::{recommended_train_config, SimClr, SimClrConfig};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// libtorch's random generator is process-wide and these tests seed it: they run one at a time
/// so that a test running beside them on another thread cannot draw from the stream.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ctx() -> BuildContext {
    BuildContext {
        device: Device::Cpu,
        seed: 7,
        num_train_images: 16,
        image_channels: 3,
        image_size: 16,
        encoder: EncoderConfig::Tiny { width: 4, batch_norm: true },
        group: None,
    }
}

fn batch(n: i64) -> Batch {
    let x = Tensor::randn([n, 3, 16, 16], (Kind::Float, Device::Cpu));
    let noise = Tensor::randn([n, 3, 16, 16], (Kind::Float, Device::Cpu)) * 0.3;
    Batch {
        views: vec![x.shallow_clone(), &x + noise],
        labels: Tensor::full([n], -1, (Kind::Int64, Device::Cpu)),
        indices: Tensor::arange(n, (Kind::Int64, Device::Cpu)),
    }
}

#[test]
fn registers_with_a_default_config_that_builds() {
    let _serial = serial();
    let mut r = Registry::new();
    selfsup_simclr::register(&mut r);
    assert_eq!(r.names(), vec!["simclr"]);
    let entry = r.get("simclr").unwrap();
    let cfg = (entry.default_config)();
    assert_eq!(cfg["temperature"], 0.5);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = r.build("simclr", &vs.root(), &cfg, &ctx()).unwrap();
    assert_eq!(m.views().len(), 2);
    assert!(vs.variables().contains_key("encoder.conv1.weight"));
    assert!(vs.variables().contains_key("head.fc2.weight"));
    let bad = serde_json::json!({"temperature": 0.5, "tau": 1.0});
    assert!(r.build("simclr", &vs.root(), &bad, &ctx()).is_err());
    let t = recommended_train_config(512, 200);
    assert!((t.optimizer.lr() - 0.6).abs() < 1e-12);
}

#[test]
fn wrong_number_of_views_is_an_error() {
    let _serial = serial();
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = SimClr::new(&vs.root(), SimClrConfig::default(), &ctx()).unwrap();
    let mut b = batch(4);
    b.views.pop();
    let err = m.step(&b, true).unwrap_err().to_string();
    assert!(err.contains("1 views"), "{err}");
}

#[test]
fn loss_falls_on_a_fixed_batch() {
    let _serial = serial();
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = SimClr::new(&vs.root(), SimClrConfig::default(), &ctx()).unwrap();
    let mut opt = nn::Sgd { momentum: 0.9, ..Default::default() }.build(&vs, 0.05).unwrap();
    let b = batch(8);
    let mut losses = Vec::new();
    for _ in 0..15 {
        opt.zero_grad();
        let out = m.step(&b, true).unwrap();
        assert_eq!(out.inputs, 16);
        losses.push(out.loss.double_value(&[]));
        out.loss.backward();
        opt.step();
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < first - 0.1, "loss did not fall: {losses:?}");
}

fn grads(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(n, t)| (n, t.grad().copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The same micro-batches (BN statistics per micro-batch in both) give the same loss and the
/// same gradients with gradient caching (eager backward inside `step`) as in one graph.
#[test]
fn gradient_cache_matches_one_graph_over_the_micro_batches() {
    let _serial = serial();
    tch::manual_seed(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let cached_cfg = SimClrConfig { micro_batch_size: Some(3), ..SimClrConfig::default() };
    let mut cached = SimClr::new(&vs.root(), cached_cfg, &ctx()).unwrap();
    let b = batch(8);
    let zero = |vs: &nn::VarStore| {
        for t in vs.trainable_variables() {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    };

    // One graph: build a second method on a copy of the weights.
    let vs2 = nn::VarStore::new(Device::Cpu);
    let plain_cfg =
        SimClrConfig { micro_batch_size: Some(3), grad_cache: false, ..SimClrConfig::default() };
    let mut plain = SimClr::new(&vs2.root(), plain_cfg, &ctx()).unwrap();
    let mut vs2 = vs2;
    vs2.copy(&vs).unwrap();

    zero(&vs);
    let out = cached.step(&b, true).unwrap();
    out.loss.backward();
    let got = grads(&vs);
    let got_loss = out.loss.double_value(&[]);

    zero(&vs2);
    let out2 = plain.step(&b, true).unwrap();
    out2.loss.backward();
    let want = grads(&vs2);
    let want_loss = out2.loss.double_value(&[]);

    assert!((got_loss - want_loss).abs() < 1e-6, "{got_loss} vs {want_loss}");
    assert_eq!(got.len(), want.len());
    for ((name, g), (_, w)) in got.iter().zip(want.iter()) {
        let diff = (g - w).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "gradient of {name} differs by {diff}");
    }
}
