//! Fully connected layers, and the plain products of the layers outside the encoders, with
//! the deterministic path of a CPU run.
//!
//! [`linear`] builds `nn.Linear` as PyTorch initializes it. [`Linear`] is tch's `nn::Linear`
//! (the same fields and variable names, `weight` `(out, in)` and `bias` `(out)`) with one
//! difference: in a deterministic CPU run its product takes [`conv::mm_det`]'s fixed blocks of
//! output columns, each one single-threaded product (MKL's in float, oneDNN's in bf16), instead
//! of libtorch's, whose bits depend on the thread count in both:
//! - in float, MKL's product: a supervised cpu-profile run (AlexNet-24, channels-last, batch 16)
//!   ended two steps with another `head.weight` at 2 threads than at 1 (the loss's gradient,
//!   and `head.bias`, the same);
//! - in bf16, a deterministic run turns oneDNN off (see `determinism`), and libtorch then
//!   multiplies with its reference loop: in a relative-patch step at the cpu profile's batch,
//!   `dX = dY W` of the 1,024 → 512 layer (`BFloat16[128, 512] × [512, 1024]`) took 142.7 ms of
//!   214 (2 cores of an AMD EPYC, Zen 4, 2026-12-07).
//!
//! [`affine`] is [`Linear`]'s forward pass for a weight and bias kept outside a layer (the
//! evaluation's linear probes and fine-tuning heads), [`product`] the same choice for a plain
//! `a b` (CPC scoring its predictions against the candidates, the kNN evaluation's
//! similarities), and [`batched_product`] for a batched one (the context encoder's channel-wise
//! layer, one product a channel: [`conv::bmm_det`]). Outside deterministic CPU runs they are
//! libtorch's `linear`, `matmul` and `bmm`, bit for bit; `SELFSUP_CONV_DET=off` (which turns the
//! deterministic convolutions off) turns this path off too. The bias is added after the product,
//! rounded once more (libtorch's `addmm` adds it inside the product).
use crate::encoders::conv;
use tch::{nn, Device, Tensor};

/// Bias of a [`linear`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearBias {
    /// No bias (a batch norm follows and would cancel it).
    None,
    /// PyTorch's default: uniform in `±1/√fan_in`.
    Default,
    /// All zeros (the official RotNet code zeroes every `nn.Linear` bias).
    Zero,
}

/// `nn.Linear(in_dim, out_dim)` as PyTorch builds it ([`Linear`]): weight uniform in `±1/√fan_in`
/// (`kaiming_uniform_(a=√5)`), bias as `bias` says. tch's default weight bound is
/// `√6/√fan_in`, 2.45× PyTorch's, which changes the start of training wherever a PyTorch
/// reference is the comparison. Values come from libtorch's generator (seeded by the trainer).
///
/// # Shapes
/// `(N, in_dim)` → `(N, out_dim)`.
pub fn linear(p: nn::Path, in_dim: i64, out_dim: i64, bias: LinearBias) -> Linear {
    let bound = 1.0 / (in_dim.max(1) as f64).sqrt();
    let uniform = nn::Init::Uniform { lo: -bound, up: bound };
    let cfg = nn::LinearConfig {
        ws_init: uniform,
        bs_init: match bias {
            LinearBias::None => None,
            LinearBias::Default => Some(uniform),
            LinearBias::Zero => Some(nn::Init::Const(0.0)),
        },
        bias: bias != LinearBias::None,
    };
    let nn::Linear { ws, bs } = nn::linear(p, in_dim, out_dim, cfg);
    Linear { ws, bs }
}

/// A fully connected layer: `y = x Wᵀ + b` (see the module docs for the deterministic path).
///
/// # Shapes
/// `ws`: `(out, in)`; `bs`: `(out)`; input `(…, in)` → `(…, out)`.
#[derive(Debug)]
pub struct Linear {
    /// The weight, `(out, in)`.
    pub ws: Tensor,
    /// The bias, `(out)`, if the layer has one.
    pub bs: Option<Tensor>,
}

impl nn::Module for Linear {
    fn forward(&self, xs: &Tensor) -> Tensor {
        affine(xs, &self.ws, self.bs.as_ref())
    }
}

/// `xs Wᵀ + b`: [`Linear`]'s forward pass for a weight and bias held outside a layer (the
/// evaluation's probes), with the same choice of path.
///
/// # Shapes
/// `xs`: `(…, in)`; `ws`: `(out, in)`; `bs`: `(out)`; returns `(…, out)`.
pub fn affine(xs: &Tensor, ws: &Tensor, bs: Option<&Tensor>) -> Tensor {
    let size = xs.size();
    if let (Some((&last, lead)), true) = (size.split_last(), det_cpu(xs, ws)) {
        if let Some(y) = det_mm(&xs.reshape([-1, last]), &ws.tr()) {
            let y = match bs {
                Some(b) => {
                    let b = b.to_kind(y.kind());
                    y + b
                }
                None => y,
            };
            return y.reshape([lead, &[ws.size()[0]]].concat());
        }
    }
    xs.linear(ws, bs)
}

/// The product `a b` of a layer outside the encoders: libtorch's `matmul`, or in a
/// deterministic CPU run [`conv::mm_det`]'s blocks (see the module docs).
///
/// # Shapes
/// `a`: `(N, A)`; `b`: `(A, B)`; returns `(N, B)`. Other ranks take `matmul` always.
pub fn product(a: &Tensor, b: &Tensor) -> Tensor {
    if a.dim() == 2 && b.dim() == 2 && det_cpu(a, b) {
        if let Some(y) = det_mm(a, b) {
            return y;
        }
    }
    a.matmul(b)
}

/// The batched product `a b` of a layer outside the encoders: libtorch's `bmm`, or in a
/// deterministic CPU run [`conv::bmm_det`]'s one product an entry (see the module docs).
///
/// # Shapes
/// `a`: `(G, N, A)`; `b`: `(G, A, B)`; returns `(G, N, B)`.
pub fn batched_product(a: &Tensor, b: &Tensor) -> Tensor {
    if a.dim() == 3 && b.dim() == 3 && det_cpu(a, b) {
        match conv::bmm_det(a, b) {
            Ok(Some(y)) => return y,
            Ok(None) => {}
            Err(e) => panic!("{e}"),
        }
    }
    a.bmm(b)
}

/// Whether a product of `a` and `b` takes the deterministic path: CPU operands in a
/// deterministic run (oneDNN off) with `SELFSUP_CONV_DET` not `off` ([`conv::mm_det`] and
/// [`conv::bmm_det`] then take float and bf16 operands and leave others to libtorch).
fn det_cpu(a: &Tensor, b: &Tensor) -> bool {
    a.device() == Device::Cpu && b.device() == Device::Cpu && conv::det_paths_on()
}

/// [`conv::mm_det`], `None` where it declines; libtorch's message (mismatched sizes) as a
/// panic, as libtorch's own product gives it (the module interface has no error path).
fn det_mm(a: &Tensor, b: &Tensor) -> Option<Tensor> {
    match conv::mm_det(a, b) {
        Ok(y) => y,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn linear_has_pytorch_init() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let a = linear(vs.root() / "a", 400, 300, LinearBias::Default);
        let b = linear(vs.root() / "b", 400, 10, LinearBias::Zero);
        let c = linear(vs.root() / "c", 400, 10, LinearBias::None);
        let bound = 1.0 / 20.0; // 1/sqrt(400)
        let max = a.ws.abs().max().double_value(&[]);
        // 120,000 draws from U(-0.05, 0.05) come within 1e-3 of the bound; tch's default
        // (sqrt(6/400) = 0.122) does not stay under it.
        assert!(max <= bound && max > 0.99 * bound, "weight bound {max}");
        let bmax = a.bs.as_ref().unwrap().abs().max().double_value(&[]);
        assert!(bmax <= bound && bmax > 0.5 * bound, "bias bound {bmax}");
        assert_eq!(b.bs.as_ref().unwrap().abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert!(c.bs.is_none());
    }
}
