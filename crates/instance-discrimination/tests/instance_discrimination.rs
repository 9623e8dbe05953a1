//! Instance discrimination with the tiny encoder: the memory bank (only the batch's rows
//! change, by the momentum rule), Z estimation, checkpoint state, and the loss falling.
use selfsup_core::encoders::EncoderConfig;
use selfsup_core::{BuildContext, PretextMethod, Registry};
use selfsup_data::Batch;
use selfsup_instance_discrimination::{
    InstDiscConfig, InstanceDiscrimination, MemoryBank, Objective,
};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// libtorch's random generator is process-wide and these tests seed it: they run one at a time
/// so that a test running beside them on another thread cannot draw from the stream.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ctx(n: usize) -> BuildContext {
    BuildContext {
        device: Device::Cpu,
        seed: 9,
        num_train_images: n,
        image_channels: 3,
        image_size: 16,
        encoder: EncoderConfig::Tiny { width: 4, batch_norm: true },
        group: None,
    }
}

fn batch(indices: &[i64]) -> Batch {
    let n = indices.len() as i64;
    Batch {
        views: vec![Tensor::randn([n, 3, 16, 16], (Kind::Float, Device::Cpu))],
        labels: Tensor::full([n], -1, (Kind::Int64, Device::Cpu)),
        indices: Tensor::from_slice(indices),
    }
}

#[test]
fn registers_with_the_paper_defaults() {
    let _serial = serial();
    let mut r = Registry::new();
    selfsup_instance_discrimination::register(&mut r);
    let cfg = (r.get("instance-discrimination").unwrap().default_config)();
    assert_eq!(cfg["nce_k"], 4096);
    assert_eq!(cfg["temperature"], 0.07);
    assert_eq!(cfg["bank_momentum"], 0.5);
    assert_eq!(cfg["dim"], 128);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = r.build("instance-discrimination", &vs.root(), &cfg, &ctx(50)).unwrap();
    assert_eq!(m.views().len(), 1);
    let state = m.state_tensors();
    assert!(state.iter().any(|(n, t)| n == "memory_bank" && t.size() == [50, 128]));
}

#[test]
fn bank_update_follows_the_momentum_rule_by_hand() {
    let _serial = serial();
    tch::manual_seed(1);
    let mut bank = MemoryBank::new(4, 2, 0.5, Device::Cpu).unwrap();
    let before = bank.vectors().copy();
    let v = Tensor::from_slice(&[0.0f32, 1.0]).view([1, 2]);
    bank.update(&Tensor::from_slice(&[2i64]), &v).unwrap();
    let (a, b) = (before.double_value(&[2, 0]), before.double_value(&[2, 1]));
    let (x, y) = (0.5 * a, 0.5 * b + 0.5);
    let norm = (x * x + y * y).sqrt();
    assert!((bank.vectors().double_value(&[2, 0]) - x / norm).abs() < 1e-6);
    assert!((bank.vectors().double_value(&[2, 1]) - y / norm).abs() < 1e-6);
    for row in [0, 1, 3] {
        assert!(bank.vectors().get(row).equal(&before.get(row)), "row {row} changed");
    }
}

#[test]
fn only_the_batch_rows_change_after_the_optimizer_step() {
    let _serial = serial();
    tch::manual_seed(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = InstDiscConfig { nce_k: 8, ..InstDiscConfig::default() };
    let mut m = InstanceDiscrimination::new(&vs.root(), cfg, &ctx(20)).unwrap();
    let before = m.bank().vectors().copy();
    let rows = [2i64, 5, 11, 19];
    let out = m.step(&batch(&rows), true).unwrap();
    assert!(m.bank().vectors().equal(&before), "the bank must wait for the optimizer step");
    out.loss.backward();
    m.after_optimizer_step(0).unwrap();
    let after = m.bank().vectors();
    for i in 0..20 {
        let same = after.get(i).equal(&before.get(i));
        assert_eq!(same, !rows.contains(&i), "row {i}");
    }
    let norms = after.norm_scalaropt_dim(2, [1i64].as_slice(), false);
    assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
    assert!(m.step(&batch(&[20]), true).is_err(), "index outside the bank");
}

#[test]
fn z_is_estimated_once_and_saved() {
    let _serial = serial();
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = InstDiscConfig { nce_k: 16, ..InstDiscConfig::default() };
    let mut m = InstanceDiscrimination::new(&vs.root(), cfg.clone(), &ctx(30)).unwrap();
    assert!(m.nce_z() < 0.0);
    m.step(&batch(&[0, 1, 2]), true).unwrap();
    let z = m.nce_z();
    assert!(z > 0.0);
    m.after_optimizer_step(0).unwrap();
    m.step(&batch(&[3, 4, 5]), true).unwrap();
    assert_eq!(m.nce_z(), z, "Z is fixed after the first batch");

    let vs2 = nn::VarStore::new(Device::Cpu);
    let mut m2 = InstanceDiscrimination::new(&vs2.root(), cfg, &ctx(30)).unwrap();
    m2.load_state_tensors(&m.state_tensors()).unwrap();
    assert_eq!(m2.nce_z(), z);
    assert!(m2.bank().vectors().equal(m.bank().vectors()));
}

/// The loss falls over a few steps on a fixed batch, for NCE and for the full softmax. The
/// bank is held fixed here (`bank_momentum: 1`, so the objective is stationary; its update is
/// checked above): with a 64-image bank, moving bank rows make NCE's loss non-stationary
/// (Z is fixed from the first batch and the noise weight K/N is large).
#[test]
fn loss_falls_on_a_fixed_batch() {
    let _serial = serial();
    for objective in [Objective::Nce, Objective::Softmax] {
        tch::manual_seed(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = InstDiscConfig {
            nce_k: 32,
            objective,
            bank_momentum: 1.0,
            ..InstDiscConfig::default()
        };
        let mut m = InstanceDiscrimination::new(&vs.root(), cfg, &ctx(64)).unwrap();
        let mut opt = nn::Sgd { momentum: 0.9, ..Default::default() }.build(&vs, 0.01).unwrap();
        let b = batch(&[0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60]);
        let mut losses = Vec::new();
        for step in 0..30 {
            tch::manual_seed(100 + step as i64);
            opt.zero_grad();
            let out = m.step(&b, true).unwrap();
            losses.push(out.loss.double_value(&[]));
            out.loss.backward();
            opt.step();
            m.after_optimizer_step(step).unwrap();
        }
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!(last < 0.9 * first, "{objective:?}: loss did not fall: {losses:?}");
    }
}

/// `head_bn` puts batch norm between the linear head and the L2 normalisation: its variables
/// exist, and in training mode the features of a batch are centred (each of the `dim`
/// coordinates has zero batch mean before normalisation, so the normalised features' batch mean
/// is small), whatever common direction the encoder's pooled features share.
#[test]
fn head_bn_centres_the_batch_features() {
    let _serial = serial();
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = InstDiscConfig { head_bn: true, dim: 16, ..InstDiscConfig::default() };
    let m = InstanceDiscrimination::new(&vs.root(), cfg, &ctx(64)).unwrap();
    let names: Vec<String> = vs.variables().into_keys().collect();
    assert!(names.iter().any(|n| n == "head_bn.weight"), "{names:?}");
    // Images sharing one large positive offset: their pooled features share a direction.
    let x = Tensor::rand([64, 3, 16, 16], (Kind::Float, Device::Cpu)) + 3.0;
    let v = m.features_t(&x, true);
    let norms = v.norm_scalaropt_dim(2, [1i64].as_slice(), false);
    assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
    let centred = v.mean_dim([0i64].as_slice(), false, Kind::Float).norm().double_value(&[]);
    assert!(centred < 0.2, "batch mean of the features has norm {centred}");
}
