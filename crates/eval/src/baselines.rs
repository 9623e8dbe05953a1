//! Baselines under the same protocols, for every table: a randomly initialised encoder of the
//! same config and seed (the "random" rows of Zhang et al. and RotNet), and the supervised
//! upper bound, which is the `supervised` method of the `selfsup-supervised` crate trained by
//! the core trainer and then evaluated like any other run.
use selfsup_core::{build_encoder, Encoder, EncoderConfig};
use std::sync::Mutex;
use tch::{nn, Device};

/// Serialises the code of this crate that seeds or draws from libtorch's global generator
/// (random-init encoders, head construction), so that concurrent callers in one process (tests
/// run in threads) cannot interleave draws.
pub(crate) static TORCH_RNG: Mutex<()> = Mutex::new(());

/// A randomly initialised encoder and the var store holding its variables (under `encoder.`,
/// as in checkpoints).
#[derive(Debug)]
pub struct RandomEncoder {
    /// The variables.
    pub vs: nn::VarStore,
    /// The encoder.
    pub encoder: Box<dyn Encoder>,
}

/// Builds `cfg` for `in_channels`-channel images on `device` after seeding libtorch's generator
/// with `seed` (via [`selfsup_core::seed::seed_torch`]); the same arguments give bit-identical
/// weights.
pub fn random_encoder(
    cfg: &EncoderConfig,
    in_channels: i64,
    seed: u64,
    device: Device,
) -> RandomEncoder {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    selfsup_core::seed::seed_torch(seed);
    let vs = nn::VarStore::new(device);
    let encoder = build_encoder(&(vs.root() / "encoder"), cfg, in_channels);
    RandomEncoder { vs, encoder }
}

/// [`random_encoder`] re-initialised as PyTorch initialised layers when RotNet was published
/// (PyTorch 0.3, the source of the paper's "random init + conv" 72.50): every convolution
/// weight uniform in `±1/√fan_in` (`fan_in = C_in·k·k`) and conv bias likewise, every batch-norm
/// weight uniform in `[0, 1)`, batch-norm biases 0, running statistics 0 and 1. Only that
/// initialisation differs from [`random_encoder`]'s (this project's, He-normal convs and BN
/// weight 1). Draws come from a ChaCha stream of `seed`, in variable-name order.
pub fn random_encoder_pytorch_legacy(
    cfg: &EncoderConfig,
    in_channels: i64,
    seed: u64,
    device: Device,
) -> RandomEncoder {
    use rand::Rng;
    let enc = random_encoder(cfg, in_channels, seed, device);
    let mut vars: Vec<(String, tch::Tensor)> = enc.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    // Convolution layers by name prefix (`encoder.block1.conv1.` ...), with their fan-in.
    let conv_fan_in: Vec<(String, f64)> = vars
        .iter()
        .filter(|(_, t)| t.dim() == 4)
        .map(|(n, t)| {
            let s = t.size();
            (n.trim_end_matches("weight").to_string(), (s[1] * s[2] * s[3]) as f64)
        })
        .collect();
    let mut r = crate::probe::rng(seed, "pytorch-legacy-init", &[]);
    tch::no_grad(|| {
        for (name, t) in &vars {
            let n = t.numel();
            let fill = match conv_fan_in.iter().find(|(p, _)| name.starts_with(p.as_str())) {
                // Conv weight or bias: U(±1/√fan_in).
                Some((_, fan_in)) => {
                    let b = 1.0 / fan_in.sqrt();
                    Some((0..n).map(|_| r.random_range(-b..b) as f32).collect::<Vec<f32>>())
                }
                // Batch-norm weight: U(0, 1).
                None if t.dim() == 1 && name.ends_with(".weight") => {
                    Some((0..n).map(|_| r.random::<f64>() as f32).collect())
                }
                _ => None,
            };
            if let Some(v) = fill {
                let src = tch::Tensor::from_slice(&v).reshape(t.size()).to_device(device);
                t.shallow_clone().copy_(&src);
            }
        }
    });
    enc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytorch_legacy_init_bounds() {
        let cfg = EncoderConfig::Nin { blocks: 3, width: 16 };
        let a = random_encoder_pytorch_legacy(&cfg, 3, 5, Device::Cpu);
        let b = random_encoder_pytorch_legacy(&cfg, 3, 5, Device::Cpu);
        let fresh = random_encoder(&cfg, 3, 5, Device::Cpu);
        let (va, vb) = (a.vs.variables(), b.vs.variables());
        let mut convs = 0;
        for (name, t) in &va {
            assert!(t.equal(&vb[name]), "{name} must repeat under a seed");
            let s = t.size();
            if s.len() == 4 {
                convs += 1;
                let bound = 1.0 / ((s[1] * s[2] * s[3]) as f64).sqrt();
                let max = t.abs().max().double_value(&[]);
                assert!(max <= bound && max > 0.8 * bound, "{name}: {max} vs {bound}");
                assert!(!t.equal(&fresh.vs.variables()[name]), "{name} re-initialised");
            } else if name.ends_with("bn.weight") {
                let (lo, hi) = (t.min().double_value(&[]), t.max().double_value(&[]));
                assert!(lo >= 0.0 && hi < 1.0 && hi - lo > 0.5, "{name}: [{lo}, {hi}]");
            } else if name.ends_with("running_var") {
                assert_eq!(t.eq(1.0).all().int64_value(&[]), 1, "{name}");
            }
        }
        assert!(convs >= 9, "{convs} conv layers");
    }

    #[test]
    fn same_seed_same_weights() {
        let cfg = EncoderConfig::Tiny { width: 4, batch_norm: true };
        let a = random_encoder(&cfg, 3, 5, Device::Cpu);
        let b = random_encoder(&cfg, 3, 5, Device::Cpu);
        let c = random_encoder(&cfg, 3, 6, Device::Cpu);
        let (va, vb, vc) = (a.vs.variables(), b.vs.variables(), c.vs.variables());
        assert!(va.contains_key("encoder.conv1.weight"));
        for (name, t) in &va {
            assert!(t.equal(&vb[name]), "{name}");
        }
        assert!(!va["encoder.conv1.weight"].equal(&vc["encoder.conv1.weight"]));
    }
}
