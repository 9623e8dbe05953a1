//! Property tests of selfsup's pools ([`max_pool2d`], [`avg_pool2d`], `csrc/max_pool.cpp` and
//! `csrc/avg_pool.cpp`) against libtorch's: for drawn geometries (batch, channels across the
//! kernels' blocks of 8 lanes, sides from 1, kernels 1 to 7, strides 1 to 4, every padding
//! the pools allow), both kinds and both layouts, the values and the gradients of `Σ g ⊙ y`
//! hold libtorch's bits (NaN where libtorch has NaN in bfloat16 channels-last, whose payload
//! there depends on libtorch's lane). The inputs are drawn with the geometry (no global
//! generator), with ties, infinities and NaNs, so a failure shrinks to a small case and
//! replays. Each test prints how many geometries it ran (300, or `PROPTEST_CASES`:
//! `PROPTEST_CASES=20000 cargo test -p selfsup-core --test pool_props -- --nocapture`).
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use selfsup_core::determinism::same_bits;
use selfsup_core::ops::{avg_pool2d, max_pool2d};
use selfsup_core::precision::{is_channels_last, to_channels_last};
use tch::{Device, Kind, Tensor};

/// A pool's geometry and its input's pattern: `(N, C, H, W)`, kernel, stride, padding, and
/// the input's seed and kind of values.
#[derive(Clone, Debug)]
struct Case {
    size: [i64; 4],
    k: i64,
    s: i64,
    p: i64,
    seed: i64,
    /// 0: spread values; 1: whole numbers from -2 to 2 (ties in most windows); 2: as 1 with
    /// NaN, +inf and -inf at drawn places.
    values: u8,
}

/// Geometries where the window fits: `2p <= k`, `H + 2p >= k`, `W + 2p >= k`.
fn geometries() -> impl Strategy<Value = Case> {
    (1i64..=7, 1i64..=4)
        .prop_flat_map(|(k, s)| (Just(k), Just(s), 0..=k / 2))
        .prop_flat_map(|(k, s, p)| {
            let min_side = (k - 2 * p).max(1);
            (
                (1i64..=3, 1i64..=41, min_side..=min_side + 19, min_side..=min_side + 19),
                Just(k),
                Just(s),
                Just(p),
                any::<i32>(),
                0u8..3,
            )
        })
        .prop_map(|((n, c, h, w), k, s, p, seed, values)| Case {
            size: [n, c, h, w],
            k,
            s,
            p,
            seed: i64::from(seed),
            values,
        })
}

/// The float input of `case`: a function of the position and the seed (Weyl's sequence on
/// the golden ratio), spread over about ±5 or rounded to whole numbers from -2 to 2, with the
/// drawn special values.
fn input(case: &Case) -> Tensor {
    let n: i64 = case.size.iter().product();
    let i = Tensor::arange(n, (Kind::Double, Device::Cpu));
    let phase = case.seed.rem_euclid(1000) as f64 / 1000.0;
    let x = ((i * 0.618_033_988_749_894_9 + phase).frac() * 10.0 - 5.0).to_kind(Kind::Float);
    let x = if case.values == 0 { x } else { (x / 2.0).round().clamp(-2.0, 2.0) };
    if case.values == 2 {
        let flat = x.view([-1]);
        let at = |j: i64| (case.seed.unsigned_abs() as i64 / (j + 1)).rem_euclid(n);
        for (j, v) in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY].into_iter().enumerate() {
            let _ = flat.narrow(0, at(j as i64), 1).fill_(v);
        }
    }
    x.view(case.size)
}

/// The pooled values of `x` and the gradient of `Σ g ⊙ y`, `g` a fixed irregular pattern.
fn pooled_by(x: &Tensor, pool: impl Fn(&Tensor) -> Tensor) -> (Tensor, Tensor) {
    let x = x.detach().set_requires_grad(true);
    let y = pool(&x);
    let n = y.numel() as i64;
    let g =
        (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.7311).sin().view(y.size().as_slice())
            * 3.0;
    (&y * &g).sum(Kind::Float).backward();
    (y.detach(), x.grad())
}

/// Whether `a` and `b` have NaN at the same places and the same bits elsewhere.
fn same_bits_but_nan(a: &Tensor, b: &Tensor) -> bool {
    let nan = a.isnan();
    nan.equal(&b.isnan()) && same_bits(&a.masked_fill(&nan, 0.0), &b.masked_fill(&nan, 0.0))
}

/// How many geometries a test draws: `PROPTEST_CASES`, or 300.
fn case_count() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
}

/// Runs `cases` drawn geometries through `check` (which returns an error naming what
/// differed), panicking on the first failure after shrinking; returns how many ran.
fn run(name: &str, cases: u32, check: impl Fn(&Case) -> Result<(), String>) -> u32 {
    let ran = std::cell::Cell::new(0u32);
    let mut runner =
        TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner
        .run(&geometries(), |case| {
            check(&case).map_err(TestCaseError::fail)?;
            ran.set(ran.get() + 1);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("{name}: {} geometries", ran.get());
    ran.get()
}

/// Compares ours and libtorch's pool on `case`'s input in both kinds and layouts.
fn compare(
    case: &Case,
    ours: impl Fn(&Tensor) -> Tensor,
    theirs: impl Fn(&Tensor) -> Tensor,
) -> Result<(), String> {
    let x = input(case);
    for kind in [Kind::Float, Kind::BFloat16] {
        for cl in [false, true] {
            let x = x.to_kind(kind);
            let x = if cl { to_channels_last(&x).map_err(|e| e.to_string())? } else { x };
            let what = format!("{case:?}, {kind:?}, channels-last {cl}");
            let (y0, g0) = pooled_by(&x, &theirs);
            let (y1, g1) = pooled_by(&x, &ours);
            let exact = kind == Kind::Float || !cl;
            let same = |a: &Tensor, b: &Tensor| {
                if exact {
                    same_bits(a, b)
                } else {
                    same_bits_but_nan(a, b)
                }
            };
            if !same(&y0, &y1) {
                return Err(format!("values differ: {what}"));
            }
            if !same(&g0, &g1) {
                return Err(format!("gradients differ: {what}"));
            }
            if is_channels_last(&y0) != is_channels_last(&y1)
                || is_channels_last(&g0) != is_channels_last(&g1)
            {
                return Err(format!("layouts differ: {what}"));
            }
        }
    }
    Ok(())
}

#[test]
fn max_pool_matches_libtorch_on_drawn_geometries() {
    let ran = run("max pool", case_count(), |c| {
        let (k, s, p) = (c.k, c.s, c.p);
        compare(
            c,
            |x| max_pool2d(x, k, s, p),
            |x| x.max_pool2d([k, k], [s, s], [p, p], [1, 1], false),
        )
    });
    assert_eq!(ran, case_count());
}

#[test]
fn avg_pool_matches_libtorch_on_drawn_geometries() {
    let ran = run("average pool", case_count(), |c| {
        let (k, s, p) = (c.k, c.s, c.p);
        for pad in [true, false] {
            compare(
                c,
                |x| avg_pool2d(x, k, s, p, pad),
                |x| x.avg_pool2d([k, k], [s, s], [p, p], false, pad, None::<i64>),
            )
            .map_err(|e| format!("{e}, count_include_pad {pad}"))?;
        }
        Ok(())
    });
    assert_eq!(ran, case_count());
}
