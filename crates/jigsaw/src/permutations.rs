//! The permutation set of the puzzles: Noroozi & Favaro's Algorithm 1 (greedy maximal Hamming
//! distance), as the official `select_permutations.py` (JigsawPuzzlePytorch) runs it: start
//! from a random permutation of the 9! in lexicographic order, then repeatedly add the
//! remaining permutation with the largest mean Hamming distance to those chosen (the first one
//! on ties, as `numpy.argmax`).
use rand::{Rng, SeedableRng};

/// Tiles of a 3×3 puzzle.
pub const TILES: usize = 9;

/// A permutation of the nine tiles: slot `t` of a puzzle holds tile `perm[t]`.
pub type Perm = [u8; TILES];

/// Every permutation of `0..9` in lexicographic order (`itertools.permutations`).
pub fn all_permutations() -> Vec<Perm> {
    let mut p: Perm = [0, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut out = Vec::with_capacity(362_880);
    loop {
        out.push(p);
        // Next permutation in lexicographic order.
        let Some(i) = (0..TILES - 1).rev().find(|&i| p[i] < p[i + 1]) else {
            return out;
        };
        let j = (i + 1..TILES).rev().find(|&j| p[j] > p[i]).expect("p[i+1] > p[i]");
        p.swap(i, j);
        p[i + 1..].reverse();
    }
}

/// Positions at which two permutations differ.
pub fn hamming(a: &Perm, b: &Perm) -> u32 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as u32
}

/// What the greedy selection maximises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The mean Hamming distance to the permutations chosen so far: the paper's Algorithm 1
    /// and the official `select_permutations.py` (default). Its sets have a high mean distance
    /// (8.08 for 100 permutations) but their closest pair can differ in only two slots.
    #[default]
    MaxMean,
    /// The smallest Hamming distance to those chosen (max-min): sets whose closest pair is as
    /// far apart as the greedy search finds, at a similar mean.
    MaxMin,
}

/// `count` permutations chosen greedily by `selection` from seed `seed`; the same seed gives
/// the same set. `count` must be in `1..=9!`.
pub fn maximal_hamming(count: usize, seed: u64, selection: Selection) -> Vec<Perm> {
    let mut rest = all_permutations();
    assert!((1..=rest.len()).contains(&count), "permutation count {count} not in 1..=9!");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // Per remaining candidate: the sum (MaxMean) or the minimum (MaxMin) of its distances to
    // the chosen permutations.
    let mut score = vec![if selection == Selection::MaxMin { u32::MAX } else { 0 }; rest.len()];
    let mut j = rng.random_range(0..rest.len());
    let mut chosen = Vec::with_capacity(count);
    for _ in 0..count {
        let p = rest.remove(j);
        score.remove(j);
        for (s, q) in score.iter_mut().zip(&rest) {
            let d = hamming(&p, q);
            *s = match selection {
                Selection::MaxMean => *s + d,
                Selection::MaxMin => (*s).min(d),
            };
        }
        chosen.push(p);
        // The first maximum, as numpy's argmax (the mean over the chosen set orders as the sum).
        j = score
            .iter()
            .enumerate()
            .fold(0, |best, (i, &s)| if s > score[best] { i } else { best });
    }
    chosen
}

/// The smallest and the mean Hamming distance between two members of `set`.
pub fn distance_stats(set: &[Perm]) -> (u32, f64) {
    let (mut min, mut sum, mut n) = (u32::MAX, 0u64, 0u64);
    for (i, a) in set.iter().enumerate() {
        for b in &set[i + 1..] {
            let d = hamming(a, b);
            min = min.min(d);
            sum += u64::from(d);
            n += 1;
        }
    }
    (min, sum as f64 / n.max(1) as f64)
}

/// The permutation that undoes `p`: placing slot `t` at position `p[t]` restores the order.
pub fn inverse(p: &Perm) -> Perm {
    let mut inv = [0u8; TILES];
    for (t, &tile) in p.iter().enumerate() {
        inv[tile as usize] = t as u8;
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn all_permutations_are_the_nine_factorial_in_order() {
        let all = all_permutations();
        assert_eq!(all.len(), 362_880);
        assert_eq!(all[0], [0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(all[1], [0, 1, 2, 3, 4, 5, 6, 8, 7]);
        assert_eq!(*all.last().unwrap(), [8, 7, 6, 5, 4, 3, 2, 1, 0]);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
    }

    /// `n` random permutations (a seeded draw with replacement, as a naive set would be).
    fn random_set(n: usize, seed: u64) -> Vec<Perm> {
        let all = all_permutations();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| all[rng.random_range(0..all.len())]).collect()
    }

    #[test]
    fn maximal_hamming_sets_are_distinct_seeded_and_farther_apart_than_random_ones() {
        for selection in [Selection::MaxMean, Selection::MaxMin] {
            let set = maximal_hamming(100, 7, selection);
            assert_eq!(set.len(), 100);
            assert_eq!(set.iter().collect::<HashSet<_>>().len(), 100, "all distinct");
            assert_eq!(set, maximal_hamming(100, 7, selection), "the same seed, the same set");
            assert_ne!(set, maximal_hamming(100, 8, selection));
        }
        // Ten random sets of 100: minimum 0 to 4, mean 7.97 to 8.03 (8 expected: two random
        // permutations share one slot on average).
        let random: Vec<(u32, f64)> =
            (0..10).map(|s| distance_stats(&random_set(100, s))).collect();
        let best_random_mean = random.iter().map(|r| r.1).fold(0.0, f64::max);
        let average_random_mean = random.iter().map(|r| r.1).sum::<f64>() / 10.0;
        let best_random_min = random.iter().map(|r| r.0).max().unwrap();
        // The paper's selection: a mean above every random set's (8.08); its closest pair may
        // still differ in two slots only, as close as random sets' closest pairs.
        let (min, mean) = distance_stats(&maximal_hamming(100, 7, Selection::MaxMean));
        assert!(mean > best_random_mean + 0.04, "mean {mean} vs random {random:?}");
        assert!(min >= 2, "min {min}");
        // Max-min: a higher minimum than every random set, and a mean above theirs.
        let (min, mean) = distance_stats(&maximal_hamming(100, 7, Selection::MaxMin));
        assert!(min > best_random_min, "min {min} vs random {random:?}");
        assert!(mean > average_random_mean, "mean {mean} vs random {random:?}");
    }

    #[test]
    fn the_inverse_restores_the_order() {
        let p: Perm = [3, 0, 8, 1, 7, 2, 6, 5, 4];
        let shuffled: Vec<u8> = p.to_vec(); // slot t holds tile p[t]
        let inv = inverse(&p);
        let restored: Vec<u8> = (0..TILES).map(|tile| shuffled[inv[tile] as usize]).collect();
        assert_eq!(restored, (0..9).collect::<Vec<u8>>());
    }
}
