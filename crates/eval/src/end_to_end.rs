//! End-to-end test accuracy of a model that classifies by itself (the supervised baseline's
//! encoder and linear head, RotNet Table 3's "supervised NIN" row): no probe is trained, the
//! model's own class scores are counted.
use crate::features;
use crate::report::open_report;
use crate::{EvalError, EvalReport, Normalization, Result, ResultRow};
use selfsup_data::ImageDataset;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Settings of [`end_to_end`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndToEndConfig {
    /// Pixel normalisation of the model's input; `None` (default) computes one from `train`
    /// (callers pass the model's own, [`selfsup_core::PretextMethod::input_normalization`]).
    pub normalization: Option<Normalization>,
    /// Test images per forward pass (default 256).
    pub batch_size: usize,
}

impl Default for EndToEndConfig {
    fn default() -> Self {
        EndToEndConfig { normalization: None, batch_size: 256 }
    }
}

/// Scores `logits` on `test`: one report row (tap `logits`), top-1 and top-5 in percent.
/// `logits` maps normalised images `(B, C, H, W)` on `device` to class scores `(B, K)`; it is
/// called under `no_grad`. `train` is only recorded (the images the model was trained on).
pub fn end_to_end(
    logits: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    device: Device,
    train: &ImageDataset,
    test: &ImageDataset,
    cfg: &EndToEndConfig,
    seed: u64,
) -> Result<EvalReport> {
    let start = std::time::Instant::now();
    if cfg.batch_size == 0 {
        return Err(EvalError::Config("end_to_end.batch_size must be at least 1".into()));
    }
    let (mut report, norm, classes) =
        open_report("end_to_end", cfg, cfg.normalization.as_ref(), device, train, test, seed)?;
    let n = test.len() as i64;
    let labels = features::labels_tensor(test, Device::Cpu)?;
    let (mut top1, mut top5) = (0i64, 0i64);
    let k = classes.min(5);
    for lo in (0..n).step_by(cfg.batch_size) {
        let idx: Vec<i64> = (lo..(lo + cfg.batch_size as i64).min(n)).collect();
        let x = features::images_on(test, &idx, &norm, None, device)?;
        let scores = tch::no_grad(|| logits(&x))?.to_device(Device::Cpu);
        if scores.size() != [idx.len() as i64, classes] {
            return Err(EvalError::Config(format!(
                "end_to_end: the model gave class scores of shape {:?} for {} images of {} classes",
                scores.size(),
                idx.len(),
                classes
            )));
        }
        let y = labels.narrow(0, lo, idx.len() as i64);
        top1 += scores.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
        let (_, best) = scores.topk(k, -1, true, true);
        top5 += best.eq_tensor(&y.unsqueeze(-1)).sum(Kind::Int64).int64_value(&[]);
    }
    report.rows.push(ResultRow {
        tap: "logits".into(),
        variant: "end to end".into(),
        map_shape: vec![classes],
        dim: classes,
        train_images: train.len(),
        top1: 100.0 * top1 as f64 / n.max(1) as f64,
        top5: 100.0 * top5 as f64 / n.max(1) as f64,
        train_top1: None,
        best_epoch: None,
    });
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_model_s_own_predictions() {
        // Four 1×1 grey images of classes 0, 1, 2, 0; the "model" predicts class 0 always.
        let ds = ImageDataset::from_raw(
            "tiny",
            1,
            1,
            1,
            vec![0, 50, 100, 150],
            Some(vec![0, 1, 2, 0]),
            Some(3),
        )
        .unwrap();
        let cfg = EndToEndConfig { batch_size: 3, ..EndToEndConfig::default() };
        let mut always0 = |x: &Tensor| -> Result<Tensor> {
            let n = x.size()[0];
            Ok(Tensor::from_slice(&[1.0f32, 0.5, 0.0]).repeat([n, 1]))
        };
        let r = end_to_end(&mut always0, Device::Cpu, &ds, &ds, &cfg, 0).unwrap();
        assert_eq!(r.protocol, "end_to_end");
        assert_eq!(r.rows.len(), 1);
        assert!((r.rows[0].top1 - 50.0).abs() < 1e-9, "{:?}", r.rows[0]);
        // Top-K with K = 3 classes covers everything.
        assert!((r.rows[0].top5 - 100.0).abs() < 1e-9);
        let mut wrong_shape = |_: &Tensor| -> Result<Tensor> {
            Ok(Tensor::zeros([1, 3], (Kind::Float, Device::Cpu)))
        };
        let e =
            end_to_end(&mut wrong_shape, Device::Cpu, &ds, &ds, &cfg, 0).unwrap_err().to_string();
        assert!(e.contains("shape"), "{e}");
        let zero = EndToEndConfig { batch_size: 0, ..cfg };
        assert!(end_to_end(&mut always0, Device::Cpu, &ds, &ds, &zero, 0).is_err());
    }
}
