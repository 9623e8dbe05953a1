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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights() {
        let cfg = EncoderConfig::Tiny { width: 4 };
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
