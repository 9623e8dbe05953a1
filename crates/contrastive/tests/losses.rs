//! Checks of the contrastive losses against hand computations and PyTorch fixtures
//! (`fixtures/make_fixtures.py`), and of gradient caching against one big batch.
use selfsup_contrastive::grad_cache::{grad_cached_loss, micro_batches};
use selfsup_contrastive::loss::{
    info_nce, info_nce_logits, nt_xent, nt_xent_gathered, nt_xent_joint, nt_xent_logits,
    top1_accuracy,
};
use selfsup_core::precision::{autocast, Precision};
use tch::{nn, nn::ModuleT, Device, Kind, Tensor};

fn matrix(rows: &[Vec<f64>]) -> Tensor {
    let n = rows.len() as i64;
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_slice(&flat).view([n, -1])
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let t = t.to_kind(Kind::Double);
    let (n, d) = (t.size()[0], t.size()[1]);
    (0..n).map(|i| (0..d).map(|j| t.double_value(&[i, j])).collect()).collect()
}

/// SimCLR's Algorithm 1 with explicit loops: every one of the 2N views is an anchor once, its
/// positive is the other view of its image, the 2N − 2 other views are its negatives.
fn nt_xent_by_hand(z1: &[Vec<f64>], z2: &[Vec<f64>], tau: f64) -> f64 {
    let n = z1.len();
    let z: Vec<Vec<f64>> = z1.iter().chain(z2.iter()).cloned().collect();
    let cos = |a: &[f64], b: &[f64]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
        dot / (na * nb)
    };
    let mut total = 0.0;
    for i in 0..2 * n {
        let pos = (i + n) % (2 * n);
        let mut denom = 0.0;
        for k in 0..2 * n {
            if k != i {
                denom += (cos(&z[i], &z[k]) / tau).exp();
            }
        }
        total += -((cos(&z[i], &z[pos]) / tau).exp() / denom).ln();
    }
    total / (2 * n) as f64
}

fn fixtures() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/losses.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture file")).expect("json")
}

fn field(v: &serde_json::Value, name: &str) -> Vec<Vec<f64>> {
    serde_json::from_value(v[name].clone()).expect("matrix field")
}

#[test]
fn nt_xent_matches_hand_computation_and_pytorch() {
    let fx = fixtures();
    for case in fx["nt_xent"].as_array().unwrap() {
        let (z1, z2) = (field(case, "z1"), field(case, "z2"));
        let tau = case["tau"].as_f64().unwrap();
        let want_torch = case["loss"].as_f64().unwrap();
        let by_hand = nt_xent_by_hand(&z1, &z2, tau);
        let got = nt_xent(&matrix(&z1), &matrix(&z2), tau).unwrap().double_value(&[]);
        assert!((by_hand - want_torch).abs() < 1e-9, "hand {by_hand} vs torch {want_torch}");
        assert!(
            (got - want_torch).abs() < 1e-4 * want_torch.abs().max(1.0),
            "{got} vs {want_torch}"
        );
    }
}

#[test]
fn info_nce_matches_pytorch() {
    let fx = fixtures();
    for case in fx["info_nce"].as_array().unwrap() {
        let (q, k, queue) = (field(case, "q"), field(case, "k"), field(case, "queue"));
        let tau = case["tau"].as_f64().unwrap();
        let want = case["loss"].as_f64().unwrap();
        let got = info_nce(&matrix(&q), &matrix(&k), &matrix(&queue), tau).unwrap();
        let got = got.double_value(&[]);
        assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{got} vs {want}");
    }
}

#[test]
fn nt_xent_is_symmetric_in_the_views() {
    tch::manual_seed(3);
    let z1 = Tensor::randn([6, 5], (Kind::Float, Device::Cpu));
    let z2 = Tensor::randn([6, 5], (Kind::Float, Device::Cpu));
    let a = nt_xent(&z1, &z2, 0.3).unwrap().double_value(&[]);
    let b = nt_xent(&z2, &z1, 0.3).unwrap().double_value(&[]);
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    // Scaling the embeddings does not matter (cosine similarity).
    let c = nt_xent(&(&z1 * 3.0), &(&z2 * 0.5), 0.3).unwrap().double_value(&[]);
    assert!((a - c).abs() < 1e-5, "{a} vs {c}");
}

#[test]
fn small_temperature_gives_the_hardest_negative_margin() {
    // τ·L(τ) → mean_i max(0, max_{negatives k} s_ik − s_i,pos) as τ → 0 (the softmax becomes
    // a max over the anchor's positive and negatives); the gap is at most τ·ln(2N − 1).
    tch::manual_seed(11);
    let (n, tau) = (4usize, 1e-3);
    let z1 = Tensor::randn([n as i64, 8], (Kind::Float, Device::Cpu));
    let z2 = &z1 + Tensor::randn([n as i64, 8], (Kind::Float, Device::Cpu)) * 2.0;
    let (a, b) = (rows(&z1), rows(&z2));
    let z: Vec<Vec<f64>> = a.iter().chain(b.iter()).cloned().collect();
    let cos = |x: &[f64], y: &[f64]| {
        let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        dot / (x.iter().map(|v| v * v).sum::<f64>().sqrt()
            * y.iter().map(|v| v * v).sum::<f64>().sqrt())
    };
    let mut margin = 0.0;
    for i in 0..2 * n {
        let pos = (i + n) % (2 * n);
        let hardest = (0..2 * n)
            .filter(|&k| k != i && k != pos)
            .map(|k| cos(&z[i], &z[k]))
            .fold(f64::NEG_INFINITY, f64::max);
        margin += (hardest - cos(&z[i], &z[pos])).max(0.0);
    }
    margin /= (2 * n) as f64;
    let scaled = tau * nt_xent(&z1, &z2, tau).unwrap().double_value(&[]);
    let bound = tau * ((2 * n - 1) as f64).ln() + 1e-4;
    assert!((scaled - margin).abs() <= bound, "τL = {scaled}, hardest-negative margin {margin}");
    assert!(margin > 0.0, "the example should have at least one violated margin");
}

#[test]
fn logits_accuracy_is_one_for_identical_views() {
    let z = Tensor::eye(4, (Kind::Float, Device::Cpu));
    let joint = Tensor::cat(&[&z, &z], 0);
    let (logits, targets) = nt_xent_logits(&joint, 0.1).unwrap();
    assert_eq!(top1_accuracy(&logits, &targets).double_value(&[]), 1.0);
    assert_eq!(rows(&targets.view([1, -1]))[0], vec![4.0, 5.0, 6.0, 7.0, 0.0, 1.0, 2.0, 3.0]);
}

/// Under bf16 autocast (the whole method step runs inside it) the similarities, logits and
/// losses are still computed in fp32: the same values as without autocast, not bf16 ones
/// (whose error would be ~1e-2).
#[test]
fn logits_and_losses_are_fp32_inside_bf16_autocast() {
    tch::manual_seed(17);
    let (z, q, k) = (
        Tensor::randn([16, 32], (Kind::Float, Device::Cpu)),
        Tensor::randn([8, 32], (Kind::Float, Device::Cpu)),
        Tensor::randn([8, 32], (Kind::Float, Device::Cpu)),
    );
    let queue = Tensor::randn([64, 32], (Kind::Float, Device::Cpu));
    let tau = 0.1;
    let compute = || {
        let (nt, targets) = nt_xent_logits(&z, tau).unwrap();
        let moco = info_nce_logits(&q, &k, &queue, tau).unwrap();
        let losses = [
            nt_xent_joint(&z, tau).unwrap().double_value(&[]),
            info_nce(&q, &k, &queue, tau).unwrap().double_value(&[]),
        ];
        (nt, targets, moco, losses)
    };
    let (nt32, t32, moco32, losses32) = compute();
    let (nt, targets, moco, losses) = autocast(Device::Cpu, Precision::Bf16, compute);
    assert_eq!((nt.kind(), moco.kind()), (Kind::Float, Kind::Float));
    assert!(targets.equal(&t32));
    assert!(nt.allclose(&nt32, 1e-6, 1e-6, false), "NT-Xent logits differ under autocast");
    assert!(moco.allclose(&moco32, 1e-6, 1e-6, false), "InfoNCE logits differ under autocast");
    for (got, want) in losses.iter().zip(losses32) {
        assert!((got - want).abs() < 1e-6 * want.abs().max(1.0), "{got} vs {want}");
    }
    // Bf16 inputs (a bf16 projection head's output) are cast to fp32 first.
    let bf = autocast(Device::Cpu, Precision::Bf16, || {
        nt_xent_logits(&z.to_kind(Kind::BFloat16), tau).unwrap().0
    });
    assert_eq!(bf.kind(), Kind::Float);
}

fn grads(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(n, t)| (n, t.grad().copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn zero_grads(vs: &nn::VarStore) {
    for t in vs.trainable_variables() {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// One big batch vs. micro-batches of 3 (eager and lazy gradient caching): same loss, same
/// parameter gradients to 1e-5. The network has batch norm in eval mode (micro-batch BN
/// statistics would differ from the full batch's in train mode).
#[test]
fn micro_batches_match_one_big_batch() {
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let net = nn::seq_t()
        .add(nn::linear(&root / "l1", 6, 12, Default::default()))
        .add(nn::batch_norm1d(&root / "bn", 12, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / "l2", 12, 5, Default::default()));
    let x1 = Tensor::randn([8, 6], (Kind::Float, Device::Cpu));
    let x2 = Tensor::randn([8, 6], (Kind::Float, Device::Cpu));
    let tau = 0.2;

    let big = nt_xent(&net.forward_t(&x1, false), &net.forward_t(&x2, false), tau).unwrap();
    big.backward();
    let want = grads(&vs);
    let want_loss = big.double_value(&[]);

    for eager in [true, false] {
        zero_grads(&vs);
        let chunks: Vec<Tensor> =
            micro_batches(&x1, 3).into_iter().chain(micro_batches(&x2, 3)).collect();
        assert_eq!(chunks.len(), 6);
        let out = grad_cached_loss(
            &chunks,
            |c| net.forward_t(c, false),
            |z| nt_xent_joint(z, tau),
            eager,
            &[],
        )
        .unwrap();
        assert_eq!(out.embeddings.size(), [16, 5]);
        let got_loss = out.loss.double_value(&[]);
        assert!((got_loss - want_loss).abs() < 1e-6, "eager={eager}: {got_loss} vs {want_loss}");
        out.loss.backward();
        let got = grads(&vs);
        assert_eq!(got.len(), want.len());
        for ((name, g), (_, w)) in got.iter().zip(want.iter()) {
            let diff = (g - w).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "eager={eager}: gradient of {name} differs by {diff}");
            assert!(w.abs().max().double_value(&[]) > 0.0, "{name} has a zero gradient");
        }
    }

    // Without autograd the loss is simply the full-batch loss.
    let chunks = micro_batches(&x1, 3).into_iter().chain(micro_batches(&x2, 3)).collect::<Vec<_>>();
    let out = tch::no_grad(|| {
        grad_cached_loss(&chunks, |c| net.forward_t(c, false), |z| nt_xent_joint(z, tau), true, &[])
    })
    .unwrap();
    assert!((out.loss.double_value(&[]) - want_loss).abs() < 1e-6);
    assert!(!out.loss.requires_grad());
}

/// A linear layer and a batch norm in train mode, plus the BN's running statistics.
fn bn_net(vs: &nn::VarStore) -> (nn::SequentialT, Vec<Tensor>) {
    let root = vs.root();
    let bn = nn::batch_norm1d(&root / "bn", 5, Default::default());
    let stats = vec![bn.running_mean.shallow_clone(), bn.running_var.shallow_clone()];
    let net = nn::seq_t().add(nn::linear(&root / "l", 6, 5, Default::default())).add(bn);
    (net, stats)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// In train mode the no-grad pass of gradient caching leaves the BN running statistics alone:
/// after the call they are those of one train-mode forward of each micro-batch (updated once
/// per micro-batch, not twice).
#[test]
fn grad_cache_updates_running_statistics_once_per_micro_batch() {
    tch::manual_seed(9);
    let vs = nn::VarStore::new(Device::Cpu);
    let (net, stats) = bn_net(&vs);
    // The reference: the same weights, one train-mode forward per micro-batch.
    let mut vs_once = nn::VarStore::new(Device::Cpu);
    let (net_once, stats_once) = bn_net(&vs_once);
    vs_once.copy(&vs).unwrap();
    let mut vs_twice = nn::VarStore::new(Device::Cpu);
    let (net_twice, stats_twice) = bn_net(&vs_twice);
    vs_twice.copy(&vs).unwrap();

    let x = Tensor::randn([8, 6], (Kind::Float, Device::Cpu)) * 2.0 + 1.0;
    let chunks = micro_batches(&x, 4);
    assert_eq!(chunks.len(), 2);
    tch::no_grad(|| {
        for c in &chunks {
            let _ = net_once.forward_t(c, true);
        }
        // What updating twice per micro-batch (no-grad pass, then grad pass) gives.
        for c in chunks.iter().chain(&chunks) {
            let _ = net_twice.forward_t(c, true);
        }
    });
    let gap = max_diff(&stats_once[0], &stats_twice[0]);
    assert!(gap > 1e-2, "the example must tell one update from two ({gap})");

    for eager in [true, false] {
        let before: Vec<Tensor> = stats.iter().map(Tensor::copy).collect();
        let out = grad_cached_loss(
            &chunks,
            |c| net.forward_t(c, true),
            |z| nt_xent_joint(z, 0.5),
            eager,
            &stats,
        )
        .unwrap();
        out.loss.backward();
        for (name, got, want) in [
            ("running_mean", &stats[0], &stats_once[0]),
            ("running_var", &stats[1], &stats_once[1]),
        ] {
            let d = max_diff(got, want);
            assert!(d < 1e-6, "eager={eager}: {name} differs from one update per chunk by {d}");
        }
        // Reset for the next mode.
        tch::no_grad(|| {
            for (s, b) in stats.iter().zip(&before) {
                s.shallow_clone().copy_(b);
            }
        });
    }

    // Without autograd there is one pass, and it updates the statistics once.
    tch::no_grad(|| {
        grad_cached_loss(
            &chunks,
            |c| net.forward_t(c, true),
            |z| nt_xent_joint(z, 0.5),
            true,
            &stats,
        )
    })
    .unwrap();
    assert!(max_diff(&stats[0], &stats_once[0]) < 1e-6);
    assert!(max_diff(&stats[1], &stats_once[1]) < 1e-6);
}

#[test]
fn gathered_nt_xent_over_two_ranks_is_the_global_batch_loss_and_gradient() {
    // Global batch of 6 images (embeddings of dim 4): rank r holds images 3r..3r+3.
    tch::manual_seed(11);
    let z1 = Tensor::randn([6, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let z2 = Tensor::randn([6, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let tau = 0.5;
    let full = nt_xent(&z1, &z2, tau).unwrap();
    full.backward();
    let (g1, g2) = (rows(&z1.grad()), rows(&z2.grad()));
    let (a, b) = (rows(&z1), rows(&z2));
    let out = selfsup_dist::on_local_ranks(2, std::time::Duration::from_secs(30), move |g| {
        let r = g.rank();
        let z1 = matrix(&a[3 * r..3 * r + 3]).set_requires_grad(true);
        let z2 = matrix(&b[3 * r..3 * r + 3]).set_requires_grad(true);
        let (loss, logits, targets) = nt_xent_gathered(g, &z1, &z2, tau).unwrap();
        loss.backward();
        let acc = top1_accuracy(&logits, &targets).double_value(&[]);
        (loss.double_value(&[]), rows(&z1.grad()), rows(&z2.grad()), logits.size(), acc)
    })
    .unwrap();
    let mean = (out[0].0 + out[1].0) / 2.0;
    let want = full.double_value(&[]);
    assert!((mean - want).abs() < 1e-6, "mean of the ranks' losses {mean} vs {want}");
    for (r, (_, d1, d2, shape, _)) in out.iter().enumerate() {
        assert_eq!(shape, &vec![6, 12], "rank {r}: its 6 anchors against all 12 views");
        // Each rank gets the sum over both ranks' losses; the trainer's average divides by 2.
        for (got, want) in [(d1, &g1), (d2, &g2)] {
            for (i, row) in got.iter().enumerate() {
                for (x, y) in row.iter().zip(&want[3 * r + i]) {
                    assert!((x / 2.0 - y).abs() < 1e-6, "rank {r} row {i}: {} vs {y}", x / 2.0);
                }
            }
        }
    }
    let (l, t) = nt_xent_logits(&Tensor::cat(&[&z1, &z2], 0).detach(), tau).unwrap();
    let acc = top1_accuracy(&l, &t).double_value(&[]);
    assert!(((out[0].4 + out[1].4) / 2.0 - acc).abs() < 1e-6, "accuracy averages to the global");
}
