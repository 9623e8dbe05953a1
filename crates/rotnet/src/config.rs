//! RotNet's method config (`method_config` of a run), with the official code's defaults
//! (gidariss/FeatureLearningRotNet, `config/CIFAR10_RotNet_NIN4blocks.py` and `dataloader.py`).
use crate::rotate::CornerFill;
use serde::{Deserialize, Serialize};

/// Which rotations the network has to tell apart; the label of a rotation is its index here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RotationSet {
    /// 0°, 90°, 180°, 270° (the paper's default). Labels 0..4.
    #[default]
    #[serde(rename = "four")]
    Four,
    /// The multiples of 45°, 0° to 315°. Labels 0..8.
    #[serde(rename = "eight")]
    Eight,
    /// 0° and 180°.
    #[serde(rename = "two_0_180")]
    Two0And180,
    /// 90° and 270°.
    #[serde(rename = "two_90_270")]
    Two90And270,
}

impl RotationSet {
    /// All sets in the order of the paper's table on the number of rotations.
    pub const ALL: [RotationSet; 4] =
        [RotationSet::Four, RotationSet::Eight, RotationSet::Two0And180, RotationSet::Two90And270];

    /// The angles in degrees (counterclockwise), in label order.
    pub fn angles(self) -> &'static [u32] {
        match self {
            RotationSet::Four => &[0, 90, 180, 270],
            RotationSet::Eight => &[0, 45, 90, 135, 180, 225, 270, 315],
            RotationSet::Two0And180 => &[0, 180],
            RotationSet::Two90And270 => &[90, 270],
        }
    }

    /// The config name (`four`, `eight`, `two_0_180`, `two_90_270`).
    pub fn name(self) -> &'static str {
        match self {
            RotationSet::Four => "four",
            RotationSet::Eight => "eight",
            RotationSet::Two0And180 => "two_0_180",
            RotationSet::Two90And270 => "two_90_270",
        }
    }
}

/// CIFAR-10 per-channel mean of the official code: `[125.3, 123.0, 113.9] / 255`.
pub const CIFAR10_MEAN: [f32; 3] = [125.3 / 255.0, 123.0 / 255.0, 113.9 / 255.0];
/// CIFAR-10 per-channel standard deviation of the official code: `[63.0, 62.1, 66.7] / 255`.
pub const CIFAR10_STD: [f32; 3] = [63.0 / 255.0, 62.1 / 255.0, 66.7 / 255.0];

/// RotNet settings. Every field has a default; unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotNetConfig {
    /// The rotation set: `four` (default), `eight`, `two_0_180` or `two_90_270`.
    #[serde(default)]
    pub rotations: RotationSet,
    /// Corner filling of the non-right-angle rotations of `eight`: `zeros` (default, the mean
    /// colour of the normalised image) or `reflection`.
    #[serde(default)]
    pub corner_fill: CornerFill,
    /// Zero padding of the random crop to the image size before rotating (official CIFAR-10
    /// training transform: `RandomCrop(32, padding=4)`). 0 disables the crop. Default 4.
    #[serde(default = "default_crop_padding")]
    pub crop_padding: usize,
    /// Random horizontal flip before rotating (official: `RandomHorizontalFlip()`). Default true.
    #[serde(default = "default_true")]
    pub horizontal_flip: bool,
    /// Per-channel normalisation mean, one entry per image channel. Default: CIFAR-10's of the
    /// official code, [`CIFAR10_MEAN`].
    #[serde(default = "default_mean")]
    pub mean: Vec<f32>,
    /// Per-channel normalisation standard deviation. Default: [`CIFAR10_STD`].
    #[serde(default = "default_std")]
    pub std: Vec<f32>,
}

fn default_crop_padding() -> usize {
    4
}

fn default_true() -> bool {
    true
}

fn default_mean() -> Vec<f32> {
    CIFAR10_MEAN.to_vec()
}

fn default_std() -> Vec<f32> {
    CIFAR10_STD.to_vec()
}

impl Default for RotNetConfig {
    fn default() -> Self {
        RotNetConfig {
            rotations: RotationSet::default(),
            corner_fill: CornerFill::default(),
            crop_padding: default_crop_padding(),
            horizontal_flip: default_true(),
            mean: default_mean(),
            std: default_std(),
        }
    }
}

impl RotNetConfig {
    /// The defaults with another rotation set.
    pub fn with_rotations(rotations: RotationSet) -> Self {
        RotNetConfig { rotations, ..Self::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in_and_unknown_fields_are_rejected() {
        let c: RotNetConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, RotNetConfig::default());
        assert_eq!(c.rotations.angles(), &[0, 90, 180, 270]);
        let c: RotNetConfig = serde_json::from_str(r#"{"rotations": "two_90_270"}"#).unwrap();
        assert_eq!(c.rotations, RotationSet::Two90And270);
        let err = serde_json::from_str::<RotNetConfig>(r#"{"rotation": "four"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `rotation`"), "{err}");
        let err = serde_json::from_str::<RotNetConfig>(r#"{"rotations": "six"}"#).unwrap_err();
        assert!(err.to_string().contains("six"), "{err}");
    }

    #[test]
    fn names_round_trip() {
        for set in RotationSet::ALL {
            let v = serde_json::to_value(set).unwrap();
            assert_eq!(v, serde_json::json!(set.name()));
            assert_eq!(serde_json::from_value::<RotationSet>(v).unwrap(), set);
        }
        let c = serde_json::to_value(RotNetConfig::default()).unwrap();
        assert_eq!(serde_json::from_value::<RotNetConfig>(c).unwrap(), RotNetConfig::default());
    }
}
