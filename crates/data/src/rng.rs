//! Seeding: every random stream in the crate is a ChaCha8 generator whose seed is a SplitMix64
//! mix of a tuple such as (seed, epoch, index, view), so results never depend on thread count
//! or scheduling.
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// SplitMix64 finalizer (Steele, Lea & Flood 2014).
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Mixes a tuple of words into one 64-bit seed (order matters).
pub fn mix(words: &[u64]) -> u64 {
    words.iter().fold(0x6a09_e667_f3bc_c908, |acc, &w| splitmix(acc ^ splitmix(w)))
}

/// The augmentation RNG of sample `index`, view `view`, in epoch `epoch` of a run seeded `seed`.
pub fn sample_rng(seed: u64, epoch: u64, index: u64, view: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(&[seed, epoch, index, view]))
}

/// The RNG that shuffles epoch `epoch`.
pub fn epoch_rng(seed: u64, epoch: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(&[seed, epoch, u64::MAX]))
}
