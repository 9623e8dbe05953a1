//! Learning-rate schedules: constant, step decay at epoch milestones (RotNet's ×0.2 at 60, 120,
//! 160), and cosine decay with linear warm-up (SimCLR, MoCo v2). The schedule is evaluated at a
//! fractional epoch so warm-up and cosine move every step.
use serde::{Deserialize, Serialize};

/// Schedule settings as they appear in run configs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleConfig {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Multiply by `gamma` at each milestone epoch (the rate is constant within an epoch).
    Steps {
        /// Epochs at which the rate drops, ascending.
        milestones: Vec<u64>,
        /// Factor applied at each milestone. Default 0.1.
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// Linear warm-up from 0 over `warmup_epochs`, then cosine from the base rate to
    /// `base * final_fraction` at the last epoch.
    Cosine {
        /// Warm-up length in epochs (fractional allowed). Default 0.
        #[serde(default)]
        warmup_epochs: f64,
        /// Final rate as a fraction of the base rate. Default 0.
        #[serde(default)]
        final_fraction: f64,
    },
}

fn default_gamma() -> f64 {
    0.1
}

impl ScheduleConfig {
    /// Learning rate at fractional epoch `epoch` (0-based: `epoch + step / steps_per_epoch`)
    /// of a run of `total_epochs`, for base rate `base`.
    pub fn lr_at(&self, base: f64, epoch: f64, total_epochs: f64) -> f64 {
        match self {
            ScheduleConfig::Constant => base,
            ScheduleConfig::Steps { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| epoch.floor() >= m as f64).count();
                base * gamma.powi(passed as i32)
            }
            ScheduleConfig::Cosine { warmup_epochs, final_fraction } => {
                if *warmup_epochs > 0.0 && epoch < *warmup_epochs {
                    return base * epoch / warmup_epochs;
                }
                let span = (total_epochs - warmup_epochs).max(1e-12);
                let t = ((epoch - warmup_epochs) / span).clamp(0.0, 1.0);
                let end = base * final_fraction;
                end + (base - end) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotnet_steps() {
        let s = ScheduleConfig::Steps { milestones: vec![60, 120, 160], gamma: 0.2 };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(s.lr_at(0.1, 0.0, 200.0), 0.1));
        assert!(close(s.lr_at(0.1, 59.99, 200.0), 0.1));
        assert!(close(s.lr_at(0.1, 60.0, 200.0), 0.02));
        assert!(close(s.lr_at(0.1, 130.5, 200.0), 0.004));
        assert!(close(s.lr_at(0.1, 199.0, 200.0), 0.0008));
    }

    #[test]
    fn cosine_with_warmup() {
        let s = ScheduleConfig::Cosine { warmup_epochs: 10.0, final_fraction: 0.0 };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(s.lr_at(1.0, 0.0, 110.0), 0.0));
        assert!(close(s.lr_at(1.0, 5.0, 110.0), 0.5));
        assert!(close(s.lr_at(1.0, 10.0, 110.0), 1.0));
        assert!(close(s.lr_at(1.0, 60.0, 110.0), 0.5));
        assert!(close(s.lr_at(1.0, 110.0, 110.0), 0.0));
    }
}
