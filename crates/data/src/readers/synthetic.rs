//! `synthetic:N:SIZE`: `N` seeded random RGB images of `SIZE×SIZE` in 10 classes, for tests and
//! smoke runs without data on disk. Each class has its own tint (so the labels are learnable)
//! over uniform noise; train and test use different seeds.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dataset::ImageDataset;
use crate::error::{DataError, Result};
use crate::Split;

/// Number of classes of the synthetic dataset.
pub const NUM_CLASSES: usize = 10;

/// Parses `N:SIZE` and generates the images of `split`.
pub fn open(args: &str, split: Split) -> Result<ImageDataset> {
    let bad = || {
        DataError::config(format!(
            "synthetic dataset spec `synthetic:{args}` is not synthetic:N:SIZE"
        ))
    };
    let (n, size) = args.split_once(':').ok_or_else(bad)?;
    let n: usize = n.parse().map_err(|_| bad())?;
    let size: usize = size.parse().map_err(|_| bad())?;
    if size == 0 || size > 4096 {
        return Err(DataError::config(format!("synthetic image size {size} outside 1..=4096")));
    }
    let split_id = match split {
        Split::Train | Split::TrainUnlabeled | Split::Unlabeled => 0u64,
        Split::Test => 1,
    };
    Ok(generate(n, size, split_id))
}

/// `n` images of `size×size×3`, seeded by `stream`.
pub fn generate(n: usize, size: usize, stream: u64) -> ImageDataset {
    let mut rng = ChaCha8Rng::seed_from_u64(crate::rng::mix(&[0x05e1_f5a9, stream]));
    let tints: Vec<[u8; 3]> = (0..NUM_CLASSES)
        .map(|c| [(c * 97 % 256) as u8, (c * 53 % 256) as u8, (c * 181 % 256) as u8])
        .collect();
    let per = size * size * 3;
    let mut pixels = vec![0u8; n * per];
    let mut labels = Vec::with_capacity(n);
    for img in pixels.chunks_exact_mut(per) {
        let y = rng.random_range(0..NUM_CLASSES);
        labels.push(y as i64);
        let t = tints[y];
        for px in img.chunks_exact_mut(3) {
            for (v, &tc) in px.iter_mut().zip(&t) {
                *v = ((tc as u16 + rng.random_range(0..128u16)) / 2 + 32) as u8;
            }
        }
    }
    let name = format!("synthetic:{n}:{size}/{stream}");
    ImageDataset::from_raw(&name, 3, size, size, pixels, Some(labels), Some(NUM_CLASSES))
        .expect("synthetic images are consistent by construction")
}
