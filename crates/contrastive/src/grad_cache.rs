//! Exact large-batch contrastive losses from micro-batches by gradient caching (Gao et al.
//! 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", GradCache).
//!
//! A contrastive loss couples every sample of the batch with every other, so plain gradient
//! accumulation (summing per-micro-batch losses) changes the loss: each micro-batch would see
//! only its own negatives. Gradient caching keeps the full-batch loss:
//!
//! 1. embed every micro-batch without autograd and concatenate the embeddings `z`;
//! 2. compute the full-batch loss `L(z)` and its gradient `g = ∂L/∂z` (a small tensor);
//! 3. re-run each micro-batch with autograd and backpropagate `g_i` through it: the gradient of
//!    `⟨e_i, g_i⟩ = (e_i * g_i).sum()` with respect to the parameters is exactly
//!    `(∂e_i/∂θ)ᵀ g_i`, micro-batch `i`'s share of `∂L/∂θ`.
//!
//! The trainer calls `PretextMethod::step()` and then `loss.backward()`, so the function
//! returns a *surrogate* loss
//! `L.detach() + Σ_i (⟨e_i, g_i⟩ − ⟨e_i, g_i⟩.detach())`, whose value is exactly `L` and whose
//! gradient is exactly `∂L/∂θ`.
//!
//! With `eager = true` (the memory-saving mode) the micro-batches `0..M−1` are backpropagated
//! inside this function, one at a time, each graph freed before the next is built; only the
//! last micro-batch's graph is left in the surrogate. Parameter gradients then accumulate in
//! `.grad()` before the trainer's `backward()`, which is correct when the trainer clears
//! gradients (zeroes or drops them) before `step()` and backpropagates the returned loss
//! unscaled. With `eager = false` every micro-batch stays in the surrogate (exact whatever the trainer does
//! with the loss, e.g. fp16 loss scaling, but the memory of the whole batch).
//!
//! # What is exact and what is not
//! Exact: the loss and its gradient *for the embeddings the micro-batches produce*; every
//! anchor sees all negatives of the full batch.
//!
//! Not exact with batch norm in train mode: BN inside `embed` normalises each micro-batch with
//! that micro-batch's own mean and variance, like several GPUs without synchronised BN (SyncBN),
//! so the embeddings, the loss and the gradients differ from those of one big batch whose BN
//! statistics cover all of it. Smaller micro-batches give noisier statistics. With BN in eval
//! mode, or without BN, the result equals one big batch.
//!
//! Running statistics: each micro-batch goes through `embed` twice, but the BN running
//! statistics are updated once per micro-batch, as one train-mode forward of each micro-batch
//! would: the caller passes the running-mean and running-variance tensors, and they are
//! restored after the no-grad pass (see [`grad_cached_loss`]). Anything else random or stateful
//! in `embed` (dropout) must repeat identically in both passes.
use crate::{ContrastiveError, Result};
use tch::{Kind, Tensor};

/// The result of [`grad_cached_loss`].
#[derive(Debug)]
pub struct CachedLoss {
    /// The surrogate loss: value = the full-batch loss, gradient = its parameter gradient
    /// (minus the micro-batches already backpropagated in eager mode). Scalar.
    pub loss: Tensor,
    /// The embeddings of all micro-batches, concatenated and detached, `(M, D)`.
    pub embeddings: Tensor,
}

/// Splits `x` along dimension 0 into pieces of at most `size` rows (all of `x` when `size` is
/// 0 or at least its length).
///
/// # Shapes
/// `(B, ...)` → pieces `(b_i, ...)` with `Σ b_i = B`.
pub fn micro_batches(x: &Tensor, size: usize) -> Vec<Tensor> {
    let b = x.size()[0];
    if size == 0 || size as i64 >= b {
        return vec![x.shallow_clone()];
    }
    x.split(size as i64, 0)
}

/// Full-batch loss over micro-batch embeddings by gradient caching (see the module docs).
///
/// `embed` maps one input chunk to its embeddings `(b_i, D)`; it is called twice per chunk
/// (without and with autograd) and must be deterministic. `loss_fn` maps the concatenated
/// embeddings `(Σ b_i, D)` to a scalar loss. Without autograd (inside `tch::no_grad`) the loss
/// is simply computed on the no-grad embeddings, in one pass.
///
/// `running_stats` are the batch-norm running statistics that `embed` updates in train mode
/// (the `running_mean` and `running_var` tensors of every BN layer, shallow clones of the
/// var store's): they are copied before the no-grad pass and written back after it, so that
/// only the grad pass updates them, once per micro-batch. Pass `&[]` when `embed` has no BN in
/// train mode.
pub fn grad_cached_loss<E, L>(
    chunks: &[Tensor],
    mut embed: E,
    loss_fn: L,
    eager: bool,
    running_stats: &[Tensor],
) -> Result<CachedLoss>
where
    E: FnMut(&Tensor) -> Tensor,
    L: FnOnce(&Tensor) -> Result<Tensor>,
{
    if chunks.is_empty() {
        return Err(ContrastiveError::Shape("grad_cached_loss needs at least one chunk".into()));
    }
    let two_passes = crate::grad_enabled();
    let saved: Vec<Tensor> = if two_passes {
        tch::no_grad(|| running_stats.iter().map(Tensor::copy).collect())
    } else {
        Vec::new()
    };
    let embs: Vec<Tensor> = tch::no_grad(|| chunks.iter().map(&mut embed).collect());
    if two_passes {
        tch::no_grad(|| -> Result<()> {
            for (stat, before) in running_stats.iter().zip(&saved) {
                stat.shallow_clone().f_copy_(before)?;
            }
            Ok(())
        })?;
    }
    drop(saved);
    let sizes: Vec<i64> = embs.iter().map(|e| e.size()[0]).collect();
    let embeddings = Tensor::cat(&embs, 0).detach();
    drop(embs);
    if !two_passes {
        let loss = loss_fn(&embeddings)?;
        return Ok(CachedLoss { loss, embeddings });
    }
    let z = embeddings.copy().set_requires_grad(true);
    let loss = loss_fn(&z)?;
    let mut grads = Tensor::f_run_backward(&[&loss], &[&z], false, false)?;
    let g = grads.pop().ok_or_else(|| ContrastiveError::Shape("no gradient for z".into()))?;
    let gs = g.split_with_sizes(sizes.as_slice(), 0);
    let last = chunks.len() - 1;
    let mut carried = Vec::new();
    for (i, (chunk, gi)) in chunks.iter().zip(gs.iter()).enumerate() {
        let e = embed(chunk);
        if e.size() != gi.size() {
            return Err(ContrastiveError::Shape(format!(
                "embed gave {:?} on the second pass, {:?} on the first",
                e.size(),
                gi.size()
            )));
        }
        let dot = (&e * gi.to_kind(e.kind())).sum(Kind::Float);
        if !dot.requires_grad() {
            continue;
        }
        if eager && i < last {
            dot.f_backward()?;
        } else {
            carried.push(&dot - dot.detach());
        }
    }
    let surrogate = carried.iter().fold(loss.detach(), |acc, t| acc + t);
    Ok(CachedLoss { loss: surrogate, embeddings })
}
