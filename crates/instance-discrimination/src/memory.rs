//! The memory bank of instance discrimination and its NCE loss (official
//! `lib/NCEAverage.py` and `lib/NCECriterion.py`).
//!
//! The bank stays fp32, and the similarities with it ([`MemoryBank::similarities`],
//! [`MemoryBank::candidate_similarities`]) and [`nce_loss`] are computed in fp32 under
//! [`without_autocast`], also when the method step runs inside bf16 autocast (the official code
//! is fp32 throughout; a bf16 `v·m` would have an error of ~1e-2 before the division by τ).
use selfsup_contrastive::loss::l2_normalize;
use selfsup_contrastive::ContrastiveError;
use selfsup_core::encoders::{batched_product, product};
use selfsup_core::precision::without_autocast;
use tch::{Device, Kind, Tensor};

/// One L2-normalised vector per training image.
#[derive(Debug)]
pub struct MemoryBank {
    bank: Tensor,
    momentum: f64,
}

impl MemoryBank {
    /// `n` vectors of dimension `dim`, drawn as the official code (uniform in `±1/√(dim/3)`,
    /// unit norm in expectation) from libtorch's seeded generator, then L2-normalised.
    pub fn new(
        n: usize,
        dim: i64,
        momentum: f64,
        device: Device,
    ) -> Result<Self, ContrastiveError> {
        if n == 0 || dim <= 0 {
            return Err(ContrastiveError::Config(format!(
                "memory bank needs at least one image and dim >= 1, got {n} images and dim {dim}"
            )));
        }
        if !(0.0..=1.0).contains(&momentum) {
            return Err(ContrastiveError::Config(format!(
                "bank_momentum must be in [0, 1], got {momentum}"
            )));
        }
        let stdv = 1.0 / (dim as f64 / 3.0).sqrt();
        let raw = Tensor::rand([n as i64, dim], (Kind::Float, device)) * (2.0 * stdv) - stdv;
        Ok(MemoryBank { bank: l2_normalize(&raw), momentum })
    }

    /// The bank.
    ///
    /// # Shapes
    /// `(N, dim)`.
    pub fn vectors(&self) -> &Tensor {
        &self.bank
    }

    /// Number of images N.
    pub fn len(&self) -> i64 {
        self.bank.size()[0]
    }

    /// Always false (a bank has at least one row).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The similarities `v·m_j` of features `v` with every bank row (the non-parametric
    /// softmax's logits before the division by τ), in fp32 outside autocast; in a deterministic
    /// CPU run on fixed blocks (`encoders::product`), the same bits at any thread count.
    ///
    /// # Shapes
    /// `v`: `(B, dim)`; returns `(B, N)` (f32).
    pub fn similarities(&self, v: &Tensor) -> Tensor {
        without_autocast(v.device(), || {
            product(&v.to_kind(Kind::Float), &self.bank.to_kind(Kind::Float).tr())
        })
    }

    /// The similarities `v_b·m_{c_bj}` of each feature with its own candidate rows (NCE's data
    /// sample and noise samples), in fp32 outside autocast. In a deterministic CPU run one
    /// single-threaded product an image (`encoders::batched_product`): libtorch's `bmm` gave the
    /// gradient of `v` (a sum over the 4,097 candidates) other bits at 2 threads than at 1 on a
    /// Xeon with AMX (family 6, model 167; 2026-12-07).
    ///
    /// # Shapes
    /// `v`: `(B, dim)`; `candidates`: `(B, C)` i64 bank rows; returns `(B, C)` (f32).
    pub fn candidate_similarities(&self, v: &Tensor, candidates: &Tensor) -> Tensor {
        let (b, c) = (candidates.size()[0], candidates.size()[1]);
        without_autocast(v.device(), || {
            let rows = self.bank.to_kind(Kind::Float).index_select(0, &candidates.view([-1]));
            batched_product(&rows.view([b, c, -1]), &v.to_kind(Kind::Float).unsqueeze(2))
                .squeeze_dim(2)
        })
    }

    /// Checks that every index is a row of the bank. The range is read only from host tensors:
    /// on a GPU the trainer checks the batch on the host before uploading it
    /// (`PretextMethod::check_batch`), as reading device values here would make the host wait
    /// for the device at every step.
    ///
    /// # Shapes
    /// `indices`: `(B,)` i64.
    pub fn check_indices(&self, indices: &Tensor) -> Result<(), ContrastiveError> {
        if indices.dim() != 1 || indices.kind() != Kind::Int64 {
            return Err(ContrastiveError::Shape(format!(
                "batch indices must be (B,) i64, got {:?} {:?}",
                indices.size(),
                indices.kind()
            )));
        }
        if indices.numel() == 0 || indices.device() != tch::Device::Cpu {
            return Ok(());
        }
        let (lo, hi) = (indices.min().int64_value(&[]), indices.max().int64_value(&[]));
        if lo < 0 || hi >= self.len() {
            return Err(ContrastiveError::Shape(format!(
                "batch index range {lo}..={hi} outside the memory bank of {} images \
                 (num_train_images)",
                self.len()
            )));
        }
        Ok(())
    }

    /// `m_i ← normalise(λ m_i + (1 − λ) v_i)` for the batch rows `i` only (official
    /// `NCEFunction.backward`), without autograd.
    ///
    /// # Shapes
    /// `indices`: `(B,)` i64 (distinct); `features`: `(B, dim)`.
    pub fn update(&mut self, indices: &Tensor, features: &Tensor) -> Result<(), ContrastiveError> {
        self.check_indices(indices)?;
        if features.size() != [indices.size()[0], self.bank.size()[1]] {
            return Err(ContrastiveError::Shape(format!(
                "features must be ({}, {}), got {:?}",
                indices.size()[0],
                self.bank.size()[1],
                features.size()
            )));
        }
        let idx = indices.to_device(self.bank.device());
        let v = features.detach().to_kind(Kind::Float).to_device(self.bank.device());
        tch::no_grad(|| {
            let old = self.bank.index_select(0, &idx);
            let new = l2_normalize(&(old * self.momentum + v * (1.0 - self.momentum)));
            let _ = self.bank.index_copy_(0, &idx, &new);
        });
        Ok(())
    }

    /// State for checkpoints: `memory_bank` `(N, dim)`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        vec![("memory_bank".to_string(), self.bank.copy())]
    }

    /// Restores [`MemoryBank::state`]; the shape must match.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)]) -> Result<(), ContrastiveError> {
        let t = tensors
            .iter()
            .find(|(n, _)| n == "memory_bank")
            .map(|(_, t)| t)
            .ok_or_else(|| ContrastiveError::State("`memory_bank` missing".into()))?;
        if t.size() != self.bank.size() {
            return Err(ContrastiveError::State(format!(
                "`memory_bank` has shape {:?}, expected {:?} (num_train_images, dim)",
                t.size(),
                self.bank.size()
            )));
        }
        tch::no_grad(|| self.bank.copy_(&t.to_kind(Kind::Float).to_device(self.bank.device())));
        Ok(())
    }
}

/// The NCE loss of the official `NCECriterion` for normalised scores `P(i|v) = exp(m_i·v/τ)/Z`,
/// the data sample in column 0 and K noise samples after it, noise distribution uniform
/// `P_n = 1/n_data`:
/// `L = −(1/B) Σ_b [log h(pos_b) + Σ_k log(1 − h(noise_bk))]`, `h(x) = x / (x + K P_n)`.
///
/// Computed in fp32 outside autocast.
///
/// # Shapes
/// `scores`: `(B, 1 + K)`; returns a scalar.
pub fn nce_loss(scores: &Tensor, n_data: i64) -> Result<Tensor, ContrastiveError> {
    let size = scores.size();
    if size.len() != 2 || size[1] < 2 || size[0] < 1 || n_data < 1 {
        return Err(ContrastiveError::Shape(format!(
            "NCE scores must be (B, 1 + K) with B, K >= 1 and n_data >= 1, got {size:?}, n_data {n_data}"
        )));
    }
    let eps = 1e-7;
    let (b, k) = (size[0], size[1] - 1);
    let kpn = k as f64 / n_data as f64;
    Ok(without_autocast(scores.device(), || {
        let scores = scores.to_kind(Kind::Float);
        let pos = scores.select(1, 0);
        let ln_pmt = (&pos / (&pos + kpn + eps)).log();
        let neg = scores.narrow(1, 1, k);
        let ln_pon = (neg.ones_like() * kpn / (neg + kpn + eps)).log();
        -(ln_pmt.sum(Kind::Float) + ln_pon.sum(Kind::Float)) / b as f64
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nce_loss_by_hand() {
        // B = 1, K = 2, n_data = 4: K·Pn = 0.5.
        let s = Tensor::from_slice(&[1.5f32, 0.5, 0.25]).view([1, 3]);
        let got = nce_loss(&s, 4).unwrap().double_value(&[]);
        let h = |x: f64| x / (x + 0.5 + 1e-7);
        let want = -(h(1.5).ln()
            + (0.5 / (0.5 + 0.5 + 1e-7f64)).ln()
            + (0.5 / (0.25 + 0.5 + 1e-7f64)).ln());
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        assert!(nce_loss(&Tensor::ones([2, 1], (Kind::Float, Device::Cpu)), 4).is_err());
    }

    /// Under bf16 autocast (the method step runs inside it) the bank similarities and the NCE
    /// loss are the fp32 values, not bf16 ones.
    #[test]
    fn similarities_and_nce_loss_are_fp32_inside_bf16_autocast() {
        use selfsup_core::precision::{autocast, Precision};
        tch::manual_seed(4);
        let bank = MemoryBank::new(50, 16, 0.5, Device::Cpu).unwrap();
        let v = l2_normalize(&Tensor::randn([6, 16], (Kind::Float, Device::Cpu)));
        let candidates = Tensor::randint_low(0, 50, [6, 5], (Kind::Int64, Device::Cpu));
        let compute = || {
            let all = bank.similarities(&v);
            let some = bank.candidate_similarities(&v, &candidates);
            let loss = nce_loss(&(&some / 0.07).exp(), 50).unwrap();
            (all, some, loss)
        };
        let (all32, some32, loss32) = compute();
        let (all, some, loss) = autocast(Device::Cpu, Precision::Bf16, compute);
        assert_eq!((all.kind(), some.kind(), loss.kind()), (Kind::Float, Kind::Float, Kind::Float));
        assert_eq!((all.size(), some.size()), (vec![6, 50], vec![6, 5]));
        assert!(all.allclose(&all32, 1e-6, 1e-6, false));
        assert!(some.allclose(&some32, 1e-6, 1e-6, false));
        assert!(loss.allclose(&loss32, 1e-6, 1e-6, false));
        // The candidate similarities are the matching columns of the full ones.
        assert!(some.allclose(&all.gather(1, &candidates, false), 1e-6, 1e-6, false));
        // bf16 features are cast to fp32.
        let bf = autocast(Device::Cpu, Precision::Bf16, || {
            bank.similarities(&v.to_kind(Kind::BFloat16)).kind()
        });
        assert_eq!(bf, Kind::Float);
    }

    #[test]
    fn bank_rows_are_unit_vectors_and_indices_are_checked() {
        let bank = MemoryBank::new(10, 8, 0.5, Device::Cpu).unwrap();
        let norms = bank.vectors().norm_scalaropt_dim(2, [1i64].as_slice(), false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
        assert!(bank.check_indices(&Tensor::from_slice(&[0i64, 9])).is_ok());
        assert!(bank.check_indices(&Tensor::from_slice(&[10i64])).is_err());
        assert!(bank.check_indices(&Tensor::from_slice(&[-1i64])).is_err());
    }
}
