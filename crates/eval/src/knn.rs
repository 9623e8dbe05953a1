//! Weighted k-nearest-neighbour classifier on L2-normalised, globally average-pooled frozen
//! features: the protocol of InstDisc (Wu et al. CVPR 2018) as implemented by solo-learn and
//! lightly. For each test image, the `k` most cosine-similar training images vote for their
//! class with weight `exp(sim / T)`; classes are ranked by total vote (top-1 and top-5).
//! Defaults `k = 200`, `T = 0.1`. The test set is processed in chunks, so memory holds one
//! `(chunk, N_train)` similarity matrix at a time.
use crate::features::{self, Extraction, Normalization, Pooling};
use crate::probe::topk_correct;
use crate::report::{open_report, EvalReport, ResultRow};
use crate::{EvalError, Result};
use selfsup_core::Encoder;
use selfsup_data::ImageDataset;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Settings of the kNN protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnnConfig {
    /// Taps whose pooled features are used; default `["last"]` (the encoder output). `"all"`
    /// evaluates every tap.
    #[serde(default = "last_tap")]
    pub taps: Vec<String>,
    /// Number of neighbours. Default 200.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Temperature of the vote weights `exp(sim / T)`. Default 0.1.
    #[serde(default = "default_t")]
    pub temperature: f64,
    /// Test images per similarity chunk. Default 256.
    #[serde(default = "default_chunk")]
    pub chunk_size: usize,
    /// Use at most this many training images (evenly spaced); `null` (default) uses all.
    #[serde(default)]
    pub max_train: Option<usize>,
    /// Pixel normalisation; `null` (default) uses the training images' statistics.
    #[serde(default)]
    pub normalization: Option<Normalization>,
    /// Images per forward pass when extracting features. Default 256.
    #[serde(default = "default_chunk")]
    pub extract_batch_size: usize,
}

fn last_tap() -> Vec<String> {
    vec!["last".into()]
}
fn default_k() -> usize {
    200
}
fn default_t() -> f64 {
    0.1
}
fn default_chunk() -> usize {
    256
}

impl Default for KnnConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}

/// Weighted kNN top-1 and top-5 accuracy (percent). Rows are L2-normalised here.
///
/// # Shapes
/// `train_x`: `(N, D)`, `train_y`: `(N,)` i64 in `0..num_classes`, `test_x`: `(M, D)`,
/// `test_y`: `(M,)`; one device. `k` is clamped to `N`.
#[allow(clippy::too_many_arguments)]
pub fn knn_classify(
    train_x: &Tensor,
    train_y: &Tensor,
    test_x: &Tensor,
    test_y: &Tensor,
    num_classes: i64,
    k: usize,
    temperature: f64,
    chunk_size: usize,
) -> Result<(f64, f64)> {
    let (n, d) = train_x.size2()?;
    let (m, d2) = test_x.size2()?;
    if d != d2 || train_y.size() != [n] || test_y.size() != [m] || n == 0 || m == 0 {
        return Err(EvalError::Config(format!(
            "kNN features/labels disagree: train {:?} / {:?}, test {:?} / {:?}",
            train_x.size(),
            train_y.size(),
            test_x.size(),
            test_y.size()
        )));
    }
    if k == 0 || temperature.is_nan() || temperature <= 0.0 {
        return Err(EvalError::Config(format!(
            "kNN needs k > 0 and T > 0, got k {k}, T {temperature}"
        )));
    }
    if chunk_size == 0 {
        return Err(EvalError::Config("kNN chunk_size must be at least 1, got 0".into()));
    }
    let k = (k as i64).min(n);
    // Counted on the device and read back once.
    let zero = || Tensor::zeros([], (Kind::Int64, train_x.device()));
    let (mut c1, mut c5) = (zero(), zero());
    tch::no_grad(|| {
        let train = normalize_rows(train_x);
        let train_t = train.tr();
        for start in (0..m).step_by(chunk_size.max(1)) {
            let len = (chunk_size as i64).min(m - start);
            let q = normalize_rows(&test_x.narrow(0, start, len));
            // (B, N); in a deterministic CPU run on fixed blocks, as the probes' products.
            let sim = selfsup_core::encoders::product(&q, &train_t);
            let (top_sim, top_idx) = sim.topk(k, 1, true, true); // (B, k)
            let neigh_y = train_y.index_select(0, &top_idx.flatten(0, -1)).reshape([len, k]);
            let w = (top_sim / temperature).exp();
            let votes = Tensor::zeros([len, num_classes], (Kind::Float, train_x.device()))
                .scatter_add(1, &neigh_y, &w);
            let y = test_y.narrow(0, start, len);
            c1 += topk_correct(&votes, &y, 1);
            c5 += topk_correct(&votes, &y, 5);
        }
    });
    let (c1, c5) = (selfsup_core::host::read(&c1)?, selfsup_core::host::read(&c5)?);
    Ok((100.0 * c1 / m as f64, 100.0 * c5 / m as f64))
}

/// `x / ||x||` per row, `(N, D)` → `(N, D)` (rows of zeros stay zero).
fn normalize_rows(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    let norm = x.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12);
    x / norm
}

/// `count` indices evenly spaced over `0..n` (all when `count >= n`).
fn evenly_spaced(n: usize, count: Option<usize>) -> Vec<i64> {
    match count {
        Some(c) if c < n && c > 0 => (0..c).map(|i| (i * n / c) as i64).collect(),
        _ => (0..n as i64).collect(),
    }
}

/// The kNN protocol: pooled features of each tap of `cfg.taps` for `train` and `test`,
/// weighted kNN vote, top-1/top-5 per tap. `device` is where the encoder's variables live.
/// `seed` is recorded (the protocol draws no random numbers).
pub fn knn_probe(
    encoder: &dyn Encoder,
    device: Device,
    train: &ImageDataset,
    test: &ImageDataset,
    cfg: &KnnConfig,
    seed: u64,
) -> Result<EvalReport> {
    let start = std::time::Instant::now();
    let (mut report, norm, classes) =
        open_report("knn", cfg, cfg.normalization.as_ref(), device, train, test, seed)?;
    let train_idx = evenly_spaced(train.len(), cfg.max_train);
    let taps = features::resolve_taps(encoder, &cfg.taps)?;
    let ex = Extraction {
        device,
        norm: &norm,
        pooling: Some(Pooling::Global),
        batch_size: cfg.extract_batch_size,
        augment: None,
    };
    let ftr = features::extract(encoder, train, Some(&train_idx), &taps, &ex)?;
    let fte = features::extract(encoder, test, None, &taps, &ex)?;
    let ytr = features::labels_tensor(train, device)?
        .index_select(0, &Tensor::from_slice(&train_idx).to_device(device));
    let yte = features::labels_tensor(test, device)?;
    for (a, b) in ftr.iter().zip(&fte) {
        let (top1, top5) = knn_classify(
            &a.features,
            &ytr,
            &b.features,
            &yte,
            classes,
            cfg.k,
            cfg.temperature,
            cfg.chunk_size,
        )?;
        tracing::info!(tap = a.tap.as_str(), top1, top5, k = cfg.k, t = cfg.temperature, "kNN");
        report.rows.push(ResultRow {
            tap: a.tap.clone(),
            variant: format!("knn k={} T={}", cfg.k, cfg.temperature),
            map_shape: a.map_shape.to_vec(),
            dim: a.dim(),
            train_images: train_idx.len(),
            top1,
            top5,
            train_top1: None,
            best_epoch: None,
        });
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The kNN protocol on an embedding given as a function rather than an encoder tap (a
/// method's L2-normalised head output, say: [`selfsup_core::PretextMethod::embedding_t`]).
/// `embed` maps normalised images `(B, C, H, W)` on `device` to `(B, D)`; it is called under
/// `no_grad`. One report row, tap `tap`. `cfg.taps` is ignored.
pub fn knn_probe_embedding(
    embed: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    tap: &str,
    device: Device,
    train: &ImageDataset,
    test: &ImageDataset,
    cfg: &KnnConfig,
    seed: u64,
) -> Result<EvalReport> {
    let start = std::time::Instant::now();
    let (mut report, norm, classes) =
        open_report("knn", cfg, cfg.normalization.as_ref(), device, train, test, seed)?;
    report.settings["taps"] = serde_json::json!([tap]);
    let train_idx = evenly_spaced(train.len(), cfg.max_train);
    let test_idx: Vec<i64> = (0..test.len() as i64).collect();
    let mut features = |ds: &ImageDataset, idx: &[i64]| -> Result<Tensor> {
        let parts = tch::no_grad(|| -> Result<Vec<Tensor>> {
            idx.chunks(cfg.extract_batch_size.max(1))
                .map(|b| embed(&features::images_on(ds, b, &norm, None, device)?))
                .collect()
        })?;
        Ok(Tensor::cat(&parts, 0))
    };
    let ftr = features(train, &train_idx)?;
    let fte = features(test, &test_idx)?;
    let ytr = features::labels_tensor(train, device)?
        .index_select(0, &Tensor::from_slice(&train_idx).to_device(device));
    let yte = features::labels_tensor(test, device)?;
    let (top1, top5) =
        knn_classify(&ftr, &ytr, &fte, &yte, classes, cfg.k, cfg.temperature, cfg.chunk_size)?;
    tracing::info!(tap, top1, top5, k = cfg.k, t = cfg.temperature, "kNN (embedding)");
    report.rows.push(ResultRow {
        tap: tap.to_string(),
        variant: format!("knn k={} T={}", cfg.k, cfg.temperature),
        map_shape: vec![ftr.size()[1], 1, 1],
        dim: ftr.size()[1],
        train_images: train_idx.len(),
        top1,
        top5,
        train_top1: None,
        best_epoch: None,
    });
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// A cheap kNN monitor for use during pretraining: top-1 (percent) of a weighted kNN
/// (`k`, `t`) on the encoder's pooled output, with at most `max_train` evenly spaced training
/// images as the memory and the whole `test` split as queries. Pixels are normalised with
/// `norm`, the normalisation the encoder is trained with (the trainer passes the method's to
/// its epoch hooks), else with the per-channel statistics of (up to 10,000 of) the training
/// images; the encoder runs in eval
/// mode under `no_grad` on `device` (where its variables live), so training state is
/// untouched (batch-norm running statistics are only read).
#[allow(clippy::too_many_arguments)]
pub fn knn_monitor(
    encoder: &dyn Encoder,
    device: Device,
    train: &ImageDataset,
    test: &ImageDataset,
    max_train: usize,
    k: usize,
    t: f64,
    norm: Option<&Normalization>,
) -> Result<f64> {
    let cfg = KnnConfig {
        k,
        temperature: t,
        max_train: Some(max_train),
        normalization: norm.cloned(),
        ..KnnConfig::default()
    };
    let report = knn_probe(encoder, device, train, test, &cfg, 0)?;
    Ok(report.rows[0].top1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::seeded_normal;

    /// The same vote written as plain loops in f64. Top-5 is `None` when some query leaves a
    /// class without votes (ties at zero make the top-5 order arbitrary).
    fn brute(
        train: &[Vec<f64>],
        ty: &[i64],
        test: &[Vec<f64>],
        sy: &[i64],
        c: usize,
        k: usize,
        t: f64,
    ) -> (f64, Option<f64>) {
        let unit = |v: &Vec<f64>| {
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter().map(|x| x / n).collect::<Vec<f64>>()
        };
        let train: Vec<Vec<f64>> = train.iter().map(unit).collect();
        let (mut c1, mut c5, mut ties) = (0, 0, false);
        for (q, &y) in test.iter().map(unit).zip(sy) {
            let mut sims: Vec<(f64, usize)> = train
                .iter()
                .enumerate()
                .map(|(i, r)| (r.iter().zip(&q).map(|(a, b)| a * b).sum(), i))
                .collect();
            sims.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
            let mut votes = vec![0.0; c];
            for &(s, i) in sims.iter().take(k) {
                votes[ty[i] as usize] += (s / t).exp();
            }
            ties |= votes.contains(&0.0);
            let mut order: Vec<usize> = (0..c).collect();
            order.sort_by(|&a, &b| votes[b].partial_cmp(&votes[a]).unwrap());
            c1 += (order[0] == y as usize) as i32;
            c5 += order[..5.min(c)].contains(&(y as usize)) as i32;
        }
        let top5 = (!ties).then(|| 100.0 * c5 as f64 / sy.len() as f64);
        (100.0 * c1 as f64 / sy.len() as f64, top5)
    }

    #[test]
    fn zero_chunk_size_is_refused_by_name() {
        let x = Tensor::ones([4, 3], (tch::Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 0, 1]);
        let e = knn_classify(&x, &y, &x, &y, 2, 2, 0.1, 0).unwrap_err().to_string();
        assert!(e.contains("chunk_size"), "{e}");
    }

    #[test]
    fn equals_brute_force() {
        let (n, m, d, c) = (60i64, 37i64, 5i64, 7i64);
        let x = seeded_normal(&[n, d], 1.0, 1, "x", Device::Cpu);
        let q = seeded_normal(&[m, d], 1.0, 2, "x", Device::Cpu);
        let ty: Vec<i64> = (0..n).map(|i| (i * 5 + i / 3) % c).collect();
        let sy: Vec<i64> = (0..m).map(|i| (i * 3) % c).collect();
        let rows = |t: &Tensor| -> Vec<Vec<f64>> {
            let v: Vec<f32> = t.flatten(0, -1).try_into().unwrap();
            v.chunks(d as usize).map(|r| r.iter().map(|&f| f as f64).collect()).collect()
        };
        let mut top5_checked = 0;
        for (k, t, chunk) in [(30usize, 0.1, 8usize), (1, 0.5, 100), (5, 0.2, 3), (200, 0.07, 5)] {
            let got = knn_classify(
                &x,
                &Tensor::from_slice(&ty),
                &q,
                &Tensor::from_slice(&sy),
                c,
                k,
                t,
                chunk,
            )
            .unwrap();
            let want = brute(&rows(&x), &ty, &rows(&q), &sy, c as usize, k.min(n as usize), t);
            assert!((got.0 - want.0).abs() < 1e-9, "k {k}: {got:?} vs {want:?}");
            if let Some(w5) = want.1 {
                assert!((got.1 - w5).abs() < 1e-9, "k {k}: {got:?} vs {want:?}");
                top5_checked += 1;
            }
        }
        assert!(top5_checked >= 2, "top-5 compared in {top5_checked} cases");
    }

    #[test]
    fn rejects_bad_settings() {
        let x = Tensor::ones([3, 2], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 0]);
        assert!(knn_classify(&x, &y, &x, &y, 2, 0, 0.1, 4).is_err());
        assert!(knn_classify(&x, &y, &x, &y, 2, 3, 0.0, 4).is_err());
        assert_eq!(evenly_spaced(10, Some(4)), vec![0, 2, 5, 7]);
    }
}
