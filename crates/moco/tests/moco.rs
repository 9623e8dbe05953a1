//! MoCo with the tiny encoder: key network isolation and momentum update, queue handling,
//! checkpoint state, and the loss falling on a fixed batch.
use selfsup_core::encoders::EncoderConfig;
use selfsup_core::{BuildContext, PretextMethod, Registry};
use selfsup_data::Batch;
use selfsup_moco::{HeadChoice, Moco, MocoConfig, MocoVersion};
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
        seed: 3,
        num_train_images: 64,
        image_channels: 3,
        image_size: 16,
        encoder: EncoderConfig::Tiny { width: 4 },
    }
}

fn small(symmetric: bool) -> MocoConfig {
    MocoConfig { queue_size: 20, bn_splits: 2, symmetric, momentum: 0.9, ..MocoConfig::default() }
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
fn registers_and_keeps_the_key_network_out_of_the_trainers_store() {
    let _serial = serial();
    let mut r = Registry::new();
    selfsup_moco::register(&mut r);
    let cfg = (r.get("moco").unwrap().default_config)();
    assert_eq!(cfg["queue_size"], 4096);
    assert_eq!(cfg["momentum"], 0.999);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = r.build("moco", &vs.root(), &cfg, &ctx()).unwrap();
    assert_eq!(m.views().len(), 2);
    let names: Vec<String> = vs.variables().into_keys().collect();
    assert!(names.iter().all(|n| n.starts_with("encoder.") || n.starts_with("head.")), "{names:?}");
    assert!(names.contains(&"head.fc1.weight".to_string()), "v2 has the MLP head");
    let state = m.state_tensors();
    assert!(state.iter().any(|(n, _)| n == "key.encoder.conv1.weight"));
    assert!(state.iter().any(|(n, t)| n == "queue" && t.size() == [4096, 128]));

    let v1 = serde_json::json!({"version": "v1", "head": "default"});
    let vs1 = nn::VarStore::new(Device::Cpu);
    r.build("moco", &vs1.root(), &v1, &ctx()).unwrap();
    assert!(vs1.variables().contains_key("head.fc.weight"), "v1 has a linear head");
    assert_eq!(MocoConfig { version: MocoVersion::V1, ..MocoConfig::default() }.tau(), 0.07);
    assert_eq!(MocoConfig::default().tau(), 0.2);
    assert_eq!(MocoConfig::cifar_demo().head, HeadChoice::Linear);
}

#[test]
fn momentum_update_is_exact_and_key_network_gets_no_gradient() {
    let _serial = serial();
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = Moco::new(&vs.root(), small(false), &ctx()).unwrap();
    let key_vars = m.key_network().var_store().variables();
    let q_vars = vs.variables();
    // The key network starts as a copy of the query network.
    for (name, k) in &key_vars {
        assert!(k.equal(&q_vars[name]), "{name} not copied");
        assert!(!k.requires_grad(), "{name} is trainable");
    }

    let out = m.step(&batch(8), true).unwrap();
    out.loss.backward();
    for (name, k) in &key_vars {
        assert!(!k.grad().defined(), "key variable {name} received a gradient");
    }
    assert!(q_vars["encoder.conv1.weight"].grad().defined());

    // Move the query weights, then check θ_k ← m θ_k + (1 − m) θ_q by hand on one entry.
    let qw = &q_vars["encoder.conv1.weight"];
    let kw = &key_vars["encoder.conv1.weight"];
    let k_before = kw.double_value(&[0, 0, 0, 0]);
    tch::no_grad(|| {
        let mut q = qw.shallow_clone();
        let _ = q.fill_(0.25);
    });
    let running_before = key_vars["encoder.bn1.running_mean"].copy();
    let params: Vec<String> = m.key_network().param_names().iter().map(|s| s.to_string()).collect();
    let before: Vec<(Tensor, Tensor)> =
        params.iter().map(|n| (key_vars[n].copy(), q_vars[n].copy())).collect();
    m.after_optimizer_step(0).unwrap();
    let want = 0.9 * k_before + 0.1 * 0.25;
    let got = kw.double_value(&[0, 0, 0, 0]);
    assert!((got - want).abs() < 1e-7, "{got} vs {want}");
    // Every parameter moved exactly like that; BN running statistics are the key network's own.
    for (name, (k0, q)) in params.iter().zip(before.iter()) {
        let expect = k0 * 0.9 + q * 0.1;
        let diff = (&key_vars[name] - expect).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{name} off by {diff}");
    }
    assert!(key_vars["encoder.bn1.running_mean"].equal(&running_before));
    let names = m.key_network().param_names();
    assert!(names.contains(&"encoder.conv1.weight"));
    assert!(!names.iter().any(|n| n.contains("running")));
}

#[test]
fn keys_are_enqueued_after_the_optimizer_step_only_in_training() {
    let _serial = serial();
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = Moco::new(&vs.root(), small(true), &ctx()).unwrap();
    let before = m.queue().keys().copy();
    tch::no_grad(|| m.step(&batch(6), false)).unwrap();
    m.after_optimizer_step(0).unwrap();
    assert_eq!(m.queue().ptr(), 0, "a validation step must not enqueue");
    assert!(m.queue().keys().equal(&before));

    let out = m.step(&batch(6), true).unwrap();
    assert_eq!(out.inputs, 24, "symmetric: two query and two key passes");
    assert_eq!(m.queue().ptr(), 0, "keys wait for the optimizer step");
    m.after_optimizer_step(1).unwrap();
    assert_eq!(m.queue().ptr(), 12, "both key sets enqueued");
    let m2 = m.step(&batch(6), true).unwrap();
    drop(m2);
    m.after_optimizer_step(2).unwrap();
    assert_eq!(m.queue().ptr(), 4, "24 keys into a queue of 20 wrap to 4");
    // Enqueued keys are unit vectors.
    let norms = m.queue().keys().norm_scalaropt_dim(2, [1i64].as_slice(), false);
    assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
}

#[test]
fn state_round_trip_restores_key_network_and_queue() {
    let _serial = serial();
    tch::manual_seed(6);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut a = Moco::new(&vs.root(), small(false), &ctx()).unwrap();
    a.step(&batch(4), true).unwrap();
    a.after_optimizer_step(0).unwrap();
    let state = a.state_tensors();

    let vs_b = nn::VarStore::new(Device::Cpu);
    let mut b = Moco::new(&vs_b.root(), small(false), &ctx()).unwrap();
    b.load_state_tensors(&state).unwrap();
    assert_eq!(b.queue().ptr(), a.queue().ptr());
    assert!(b.queue().keys().equal(a.queue().keys()));
    let (ka, kb) =
        (a.key_network().var_store().variables(), b.key_network().var_store().variables());
    for (name, t) in &ka {
        assert!(t.equal(&kb[name]), "{name} not restored");
    }
    let partial: Vec<(String, Tensor)> = state.into_iter().filter(|(n, _)| n != "queue").collect();
    assert!(b.load_state_tensors(&partial).is_err());
}

/// Six epochs over a fixed pool of 48 images in batches of 8 with a queue of 16 keys (so the
/// queue never holds keys of the batch's own images, unlike a single repeated batch): the mean
/// loss of the last two epochs is below that of epochs 2–3 (the first starts with the random
/// queue).
#[test]
fn loss_falls_on_a_fixed_pool() {
    let _serial = serial();
    for symmetric in [false, true] {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = MocoConfig { queue_size: 16, ..small(symmetric) };
        let mut m = Moco::new(&vs.root(), cfg, &ctx()).unwrap();
        let mut opt = nn::Sgd { momentum: 0.9, ..Default::default() }.build(&vs, 0.1).unwrap();
        // Distinguishable images (a colour each plus noise) and a noisy second view.
        let colours = Tensor::randn([48, 3, 1, 1], (Kind::Float, Device::Cpu)) * 2.0;
        let images = colours + Tensor::randn([48, 3, 16, 16], (Kind::Float, Device::Cpu)) * 0.3;
        let other = &images + Tensor::randn([48, 3, 16, 16], (Kind::Float, Device::Cpu)) * 0.3;
        let mut epochs = Vec::new();
        let mut step = 0;
        for _ in 0..6 {
            let mut total = 0.0;
            for b in 0..6 {
                let b = Batch {
                    views: vec![images.narrow(0, 8 * b, 8), other.narrow(0, 8 * b, 8)],
                    labels: Tensor::full([8], -1, (Kind::Int64, Device::Cpu)),
                    indices: Tensor::arange_start(8 * b, 8 * b + 8, (Kind::Int64, Device::Cpu)),
                };
                opt.zero_grad();
                let out = m.step(&b, true).unwrap();
                total += out.loss.double_value(&[]);
                out.loss.backward();
                opt.step();
                m.after_optimizer_step(step).unwrap();
                step += 1;
            }
            epochs.push(total / 6.0);
        }
        let (early, late) = ((epochs[1] + epochs[2]) / 2.0, (epochs[4] + epochs[5]) / 2.0);
        assert!(late < early - 0.05, "symmetric={symmetric}: loss did not fall: {epochs:?}");
    }
}
