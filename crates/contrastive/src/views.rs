//! Default augmentation views of the contrastive methods, built from the data crate's ops.
//!
//! - [`simclr_view`]: SimCLR's augmentation (Chen et al. 2020, appendix A; the data crate's
//!   `Pipeline::simclr` preset): random resized crop (0.08–1), flip, colour jitter
//!   (0.4, 0.4, 0.4, 0.1; p = 0.8), grayscale (p = 0.2), blur at 64 px and above. MoCo v2 and
//!   the official MoCo CIFAR demo use the same recipe.
//! - [`mocov1_view`]: MoCo v1's and instance discrimination's (Wu et al. 2018, lemniscate
//!   `cifar.py`): random resized crop (0.2–1), colour jitter (0.4, 0.4, 0.4, 0.4; always),
//!   grayscale (p = 0.2), flip; no blur.
//!
//! Colour images are normalised with CIFAR-10 statistics at 32 px and below and ImageNet
//! statistics above; one-channel images with mean 0.5 and std 0.5, and colour-only ops
//! (saturation, hue, grayscale) are dropped for them.
use selfsup_data::pipeline::{CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD};
use selfsup_data::{Op, Pipeline};

fn stats(channels: i64, size: i64) -> (Vec<f32>, Vec<f32>) {
    match (channels, size) {
        (3, s) if s <= 32 => (CIFAR10_MEAN.to_vec(), CIFAR10_STD.to_vec()),
        (3, _) => (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec()),
        (c, _) => (vec![0.5; c.max(1) as usize], vec![0.5; c.max(1) as usize]),
    }
}

/// Drops what only makes sense for colour images when `channels != 3`.
fn adapt_to_channels(p: Pipeline, channels: i64) -> Pipeline {
    if channels == 3 {
        return p;
    }
    let ops = p
        .ops
        .into_iter()
        .filter_map(|op| match op {
            Op::Grayscale { .. } => None,
            Op::ColorJitter { brightness, contrast, p, .. } => {
                Some(Op::ColorJitter { brightness, contrast, saturation: 0.0, hue: 0.0, p })
            }
            other => Some(other),
        })
        .collect();
    Pipeline { ops }
}

/// SimCLR's view for `channels`-channel images of side `size` (see the module docs).
pub fn simclr_view(channels: i64, size: i64) -> Pipeline {
    let (mean, std) = stats(channels, size);
    adapt_to_channels(Pipeline::simclr(size.max(1) as usize, &mean, &std), channels)
}

/// MoCo v1's and instance discrimination's view (see the module docs).
pub fn mocov1_view(channels: i64, size: i64) -> Pipeline {
    let (mean, std) = stats(channels, size);
    let ops = vec![
        Op::RandomResizedCrop {
            size: size.max(1) as usize,
            scale: [0.2, 1.0],
            ratio: [0.75, 4.0 / 3.0],
        },
        Op::ColorJitter { brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.4, p: 1.0 },
        Op::Grayscale { p: 0.2, keep_channels: true },
        Op::HorizontalFlip { p: 0.5 },
        Op::Normalize { mean, std },
    ];
    adapt_to_channels(Pipeline { ops }, channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_keep_the_image_shape() {
        for (c, s) in [(3, 32), (3, 96), (1, 28)] {
            for p in [simclr_view(c, s), mocov1_view(c, s)] {
                assert_eq!(
                    p.output_shape(c as usize, s as usize, s as usize),
                    (c as usize, s as usize, s as usize)
                );
            }
        }
        assert!(simclr_view(3, 96).ops.iter().any(|o| matches!(o, Op::GaussianBlur { .. })));
        assert!(!simclr_view(3, 32).ops.iter().any(|o| matches!(o, Op::GaussianBlur { .. })));
        assert!(!mocov1_view(1, 28).ops.iter().any(|o| matches!(o, Op::Grayscale { .. })));
    }
}
