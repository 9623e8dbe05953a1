//! MoCo with the tiny encoder: key network isolation and momentum update, queue handling,
//! checkpoint state, split BN running statistics, the head initialisation, and the loss falling
//! on a fixed batch.
use selfsup_core::encoders::EncoderConfig;
use selfsup_core::{BuildContext, PretextMethod, Registry};
use selfsup_data::Batch;
use selfsup_moco::{HeadChoice, Moco, MocoConfig, MocoVersion};
use std::collections::HashMap;
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
        encoder: EncoderConfig::Tiny { width: 4, batch_norm: true },
        group: None,
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

/// The BN running statistics among `vars`, copied, sorted by name.
fn running_stats(vars: &HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vars
        .iter()
        .filter(|(n, _)| n.ends_with(".running_mean") || n.ends_with(".running_var"))
        .map(|(n, t)| (n.clone(), t.copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Split BN as the CIFAR demo's `SplitBatchNorm`: the outputs are those of separate passes over
/// the sub-batches, and the running statistics move once per batch, to the mean of the updates
/// each sub-batch alone makes from the same start (not once per sub-batch). The expectation
/// comes from a copy of the query network with `bn_splits` 1, run on one sub-batch at a time.
#[test]
fn split_bn_updates_running_statistics_once_per_batch() {
    let _serial = serial();
    tch::manual_seed(8);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = MocoConfig { bn_splits: 4, ..small(false) };
    let mut m = Moco::new(&vs.root(), cfg.clone(), &ctx()).unwrap();
    let key_vars = m.key_network().var_store().variables();
    // Start both networks from running statistics other than BN's zeros and ones.
    for vars in [&vs.variables(), &key_vars] {
        for (name, t) in vars {
            let mut t = t.shallow_clone();
            if name.ends_with(".running_mean") {
                tch::no_grad(|| t.copy_(&Tensor::randn_like(&t)));
            } else if name.ends_with(".running_var") {
                tch::no_grad(|| t.copy_(&(Tensor::rand_like(&t) + 0.5)));
            }
        }
    }
    let mut vs_ref = nn::VarStore::new(Device::Cpu);
    let mut reference =
        Moco::new(&vs_ref.root(), MocoConfig { bn_splits: 1, ..cfg }, &ctx()).unwrap();
    vs_ref.copy(&vs).unwrap();
    let r0 = running_stats(&vs.variables());
    assert_eq!(
        r0.len(),
        4,
        "bn1 and bn2, mean and var: {:?}",
        r0.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    let key_r0 = key_vars["encoder.bn1.running_mean"].copy();
    let key_w = key_vars["encoder.conv1.weight"].copy();

    let b = batch(16);
    // The backward runs through graphs whose saved BN buffers were rewritten after their pass.
    m.step(&b, true).unwrap().loss.backward();

    // Query network: each of the 4 sub-batches of view 1 alone from r0, then the mean.
    let ref_vars = vs_ref.variables();
    let mut sums: Vec<Tensor> = r0.iter().map(|(_, t)| t.zeros_like()).collect();
    let mut ref_parts = Vec::new();
    for chunk in b.views[0].chunk(4, 0) {
        for (name, r) in &r0 {
            tch::no_grad(|| ref_vars[name].shallow_clone().copy_(r));
        }
        ref_parts.push(tch::no_grad(|| reference.queries_t(&chunk, true).unwrap()));
        for ((name, _), sum) in r0.iter().zip(sums.iter_mut()) {
            *sum += &ref_vars[name];
        }
    }
    let after = vs.variables();
    for ((name, r), sum) in r0.iter().zip(&sums) {
        let diff = max_diff(&after[name], &(sum / 4.0));
        assert!(diff < 1e-5, "{name} off by {diff}");
        assert!(max_diff(&after[name], r) > 1e-3, "{name} did not move");
    }
    // Key network (its batch shuffled): BN momentum 0.1 and equal sub-batches, so the first BN's
    // running mean is 0.9·r0 + 0.1·(batch mean of its input) whatever the permutation.
    let conv1 = b.views[1].conv2d(&key_w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
    let want = key_r0 * 0.9 + conv1.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float) * 0.1;
    let diff = max_diff(&key_vars["encoder.bn1.running_mean"], &want);
    assert!(diff < 1e-5, "key encoder.bn1.running_mean off by {diff}");

    // Training outputs: those of the separate passes.
    let q = tch::no_grad(|| m.queries_t(&b.views[0], true).unwrap());
    let diff = max_diff(&q, &Tensor::cat(&ref_parts, 0));
    assert!(diff < 1e-5, "training queries off by {diff}");
    // Evaluation: one pass with the running statistics, which it leaves alone.
    vs_ref.copy(&vs).unwrap();
    reference.load_state_tensors(&m.state_tensors()).unwrap();
    let stats = running_stats(&vs.variables());
    let key_stats = running_stats(&key_vars);
    let x = &b.views[1];
    let (q, q_ref) =
        tch::no_grad(|| (m.queries_t(x, false).unwrap(), reference.queries_t(x, false).unwrap()));
    let (k, k_ref) =
        tch::no_grad(|| (m.keys_t(x, false, 0).unwrap(), reference.keys_t(x, false, 0).unwrap()));
    assert!(max_diff(&q, &q_ref) < 1e-5 && max_diff(&k, &k_ref) < 1e-5);
    for (before, now) in
        [(stats, running_stats(&vs.variables())), (key_stats, running_stats(&key_vars))]
    {
        for ((name, a), (_, b)) in before.iter().zip(&now) {
            assert!(a.equal(b), "evaluation moved {name}");
        }
    }
}

/// The v1 head is `nn.Linear` as PyTorch initialises it: weight and bias in `±1/√in_dim`
/// (tch's default weight bound is 2.45× that).
#[test]
fn v1_head_has_pytorchs_linear_init() {
    let _serial = serial();
    tch::manual_seed(9);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = MocoConfig { version: MocoVersion::V1, ..small(false) };
    Moco::new(&vs.root(), cfg, &ctx()).unwrap();
    let vars = vs.variables();
    let w = &vars["head.fc.weight"];
    assert_eq!(w.size(), [128, 8]);
    let bound = 1.0 / (w.size()[1] as f64).sqrt();
    let max = w.abs().max().double_value(&[]);
    // 1,024 draws from U(-b, b) come within 5% of b (all miss it with probability 0.95^1024).
    assert!(max <= bound && max > 0.95 * bound, "weight bound {max}, expected {bound}");
    let bmax = vars["head.fc.bias"].abs().max().double_value(&[]);
    assert!(bmax <= bound, "bias bound {bmax}, expected {bound}");
}
