//! Property-based fuzzing of the binary readers and of pipelines: arbitrary or mutated bytes
//! give `Ok` or a one-line error naming the file, never a panic. Each test counts and prints
//! the inputs it ran (`cargo test -p selfsup-data fuzz -- --nocapture`).
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::SeedableRng;
use selfsup_data::readers::cifar::{self, Variant};
use selfsup_data::readers::{idx, stl10};
use selfsup_data::{Op, Pipeline};

const CASES: u32 = 4000;

fn one_line_naming(e: &selfsup_data::DataError, file: &str) -> Result<(), TestCaseError> {
    let s = e.to_string();
    prop_assert!(!s.contains('\n'), "{}", s);
    prop_assert!(s.contains(file), "{}", s);
    Ok(())
}

/// Runs `cases` inputs of `strategy` through `test`, panicking on the first failure (after
/// shrinking), and returns how many inputs ran.
fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<usize, TestCaseError>,
) -> usize {
    let ran = std::cell::Cell::new(0usize);
    let mut runner =
        TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner
        .run(&strategy, |v| {
            ran.set(ran.get() + test(v)?);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("fuzz {name}: {} inputs", ran.get());
    ran.get()
}

/// A valid CIFAR-10 file of `n` records, then `edits` (position, value) and a truncation.
fn mutated_cifar(n: usize, edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..n * 3073)
        .map(|i| if i % 3073 == 0 { (i / 3073 % 10) as u8 } else { i as u8 })
        .collect();
    for &(p, b) in edits {
        if !v.is_empty() {
            let l = v.len();
            v[p % l] = b;
        }
    }
    let keep = v.len().saturating_sub(cut);
    v.truncate(keep);
    v
}

fn mutated_idx(dims: &[u32], edits: &[(usize, u8)], cut: usize, magic: u32) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    let n: usize = dims.iter().map(|&d| d as usize).product();
    v.extend((0..n).map(|i| (i % 10) as u8));
    for &(p, b) in edits {
        let l = v.len();
        v[p % l] = b;
    }
    let keep = v.len().saturating_sub(cut);
    v.truncate(keep);
    v
}

#[test]
fn cifar_parse_never_panics() {
    let strategy = (
        proptest::collection::vec(any::<u8>(), 0..7000),
        0usize..3,
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        prop_oneof![Just(0usize), 0usize..4000],
        any::<bool>(),
    );
    let ran = fuzz("cifar", CASES, strategy, |(random, n, edits, cut, hundred)| {
        let variant = if hundred { Variant::Cifar100 } else { Variant::Cifar10 };
        let p = Path::new("fuzz.bin");
        for bytes in [&random, &mutated_cifar(n, &edits, cut)] {
            let (mut px, mut lb) = (Vec::new(), Vec::new());
            match cifar::parse(bytes, variant, p, &mut px, &mut lb) {
                Ok(()) => prop_assert_eq!(px.len(), lb.len() * 3072),
                Err(e) => one_line_naming(&e, "fuzz.bin")?,
            }
        }
        Ok(2)
    });
    assert_eq!(ran, 2 * CASES as usize);
}

#[test]
fn idx_parse_never_panics() {
    let strategy = (
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(0u32..6, 3),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        prop_oneof![Just(0usize), 0usize..40],
        any::<bool>(),
    );
    let ran = fuzz("idx", CASES, strategy, |(random, dims, edits, cut, gz)| {
        let ip = Path::new("img.idx");
        let lp = Path::new("lab.idx");
        let images = mutated_idx(&dims, &edits, cut, idx::IMAGES_MAGIC);
        let labels = mutated_idx(&dims[..1], &[], 0, idx::LABELS_MAGIC);
        let cases =
            [(random.clone(), labels.clone()), (images.clone(), random.clone()), (images, labels)];
        for (i, l) in cases {
            let i = if gz {
                let mut g = vec![0x1f, 0x8b];
                g.extend_from_slice(&i);
                g
            } else {
                i
            };
            let parsed = idx::maybe_gunzip(i, ip).and_then(|i| idx::parse(&i, ip, &l, lp));
            if let Err(e) = parsed {
                let s = e.to_string();
                prop_assert!(!s.contains('\n'));
                prop_assert!(s.contains("img.idx") || s.contains("lab.idx"), "{}", s);
            }
        }
        Ok(3)
    });
    assert_eq!(ran, 3 * CASES as usize);
}

#[test]
fn stl10_parse_never_panics() {
    let strategy = (
        prop_oneof![0usize..100, Just(27648usize), 27640usize..27700],
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..4),
    );
    let ran = fuzz("stl10", CASES / 4, strategy, |(len, fill, labels)| {
        let p = Path::new("x.bin");
        match stl10::parse_images(&vec![fill; len], p) {
            Ok(px) => prop_assert_eq!(px.len(), len),
            Err(e) => one_line_naming(&e, "x.bin")?,
        }
        if let Err(e) = stl10::parse_labels(&labels, 2, p) {
            one_line_naming(&e, "x.bin")?;
        }
        Ok(2)
    });
    assert_eq!(ran, 2 * (CASES / 4) as usize);
}

#[test]
fn random_pipelines_give_finite_views_of_the_stated_shape() {
    let strategy = (
        (1usize..20, 1usize..20, any::<bool>(), 1usize..24, 0usize..4, 0usize..3),
        (any::<u64>(), 0.0f64..=1.0, 0.01f64..1.0, 0.0f64..1.0),
    );
    let ran = fuzz(
        "pipeline",
        CASES / 4,
        strategy,
        |((h, w, gray, size, pad, k), (seed, p, s0, strength))| {
            let c = if gray { 1 } else { 3 };
            let ops = vec![
                Op::RandomResizedCrop { size, scale: [s0, 1.0], ratio: [0.5, 2.0] },
                Op::HorizontalFlip { p },
                Op::ColorJitter {
                    brightness: strength,
                    contrast: strength,
                    saturation: strength,
                    hue: strength / 2.0,
                    p,
                },
                Op::Grayscale { p, keep_channels: true },
                Op::GaussianBlur { kernel_size: 2 * k + 1, sigma: [0.1, 2.0], p },
                Op::Solarize { threshold: 0.5, p },
                Op::RandomCrop { size: size.min(size + 2 * pad), padding: pad },
                Op::CenterCrop { size: (size / 2).max(1) },
                Op::Resize { size: 5 },
            ];
            let pipe = Pipeline { ops };
            let img: Vec<u8> = (0..c * h * w).map(|i| (i * 31 % 256) as u8).collect();
            let (oc, oh, ow) =
                pipe.check(c, h, w).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let out = pipe.apply_to_vec(&img, c, h, w, &mut rng);
            prop_assert_eq!(out.len(), oc * oh * ow);
            prop_assert!(out.iter().all(|v| v.is_finite() && (-1e-6..=1.0 + 1e-6).contains(v)));
            Ok(1)
        },
    );
    assert_eq!(ran, (CASES / 4) as usize);
}
