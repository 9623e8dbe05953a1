//! Optimizer tests: parity with PyTorch trajectories (`tests/fixtures/optim.json`, written by
//! `tests/fixtures/gen_optim.py`), state round trips, load errors, gradient clipping.
use std::collections::BTreeMap;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::{clip_grad_norm, OptimizerConfig};

#[derive(Deserialize)]
struct Fixture {
    shapes: BTreeMap<String, Vec<i64>>,
    init: BTreeMap<String, Vec<f32>>,
    grads: Vec<BTreeMap<String, Vec<f32>>>,
    lrs: Vec<f64>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    config: OptimizerConfig,
    after: Vec<BTreeMap<String, Vec<f32>>>,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/optim.json");
    let text = std::fs::read_to_string(path).expect("read optim.json");
    serde_json::from_str(&text).expect("parse optim.json")
}

/// Fresh leaf parameters from the fixture's initial values, sorted by name.
fn params(fx: &Fixture) -> Vec<(String, Tensor)> {
    fx.init
        .iter()
        .map(|(name, data)| {
            let t = Tensor::from_slice(data).reshape(&fx.shapes[name]).set_requires_grad(true);
            (name.clone(), t)
        })
        .collect()
}

/// Sets each parameter's gradient to exactly `grads[name]` (the gradient of `sum(p * g)`).
fn set_grads(params: &[(String, Tensor)], grads: &BTreeMap<String, Vec<f32>>) {
    for (name, p) in params {
        let mut p = p.shallow_clone();
        p.zero_grad();
        let g = Tensor::from_slice(&grads[name]).reshape(p.size());
        (&p * g).sum(Kind::Float).backward();
    }
}

fn max_abs_diff(t: &Tensor, expected: &[f32]) -> f64 {
    let e = Tensor::from_slice(expected).reshape(t.size());
    (t - e).abs().max().double_value(&[])
}

#[test]
fn trajectories_match_pytorch() {
    let fx = fixture();
    assert_eq!(fx.cases.len(), 5);
    for case in &fx.cases {
        let ps = params(&fx);
        let mut opt = case.config.build(&ps).unwrap();
        for (step, after) in case.after.iter().enumerate() {
            set_grads(&ps, &fx.grads[step]);
            opt.step(&ps, fx.lrs[step]).unwrap();
            for (name, p) in &ps {
                let diff = max_abs_diff(p, &after[name]);
                assert!(diff < 1e-6, "{} step {step} {name}: max |diff| {diff:e}", case.name);
            }
        }
        // The parameters moved, so the comparison above is not vacuous.
        for (name, p) in &ps {
            let moved = max_abs_diff(p, &fx.init[name]);
            assert!(moved > 1e-4, "{} {name} moved only {moved:e}", case.name);
        }
    }
}

#[test]
fn state_names_follow_the_optimizer() {
    let fx = fixture();
    let names = |cfg: &OptimizerConfig| -> Vec<String> {
        cfg.build(&params(&fx)).unwrap().state().into_iter().map(|(k, _)| k).collect()
    };
    let by_name: BTreeMap<&str, &OptimizerConfig> =
        fx.cases.iter().map(|c| (c.name.as_str(), &c.config)).collect();
    assert!(names(by_name["sgd_plain"]).is_empty(), "no buffers without momentum");
    assert_eq!(
        names(by_name["sgd_nesterov_wd"]),
        ["sgd.momentum.layer.bias", "sgd.momentum.layer.weight"]
    );
    assert_eq!(names(by_name["lars"]), ["lars.momentum.layer.bias", "lars.momentum.layer.weight"]);
    assert_eq!(
        names(by_name["adamw"]),
        [
            "adamw.exp_avg.layer.bias",
            "adamw.exp_avg.layer.weight",
            "adamw.exp_avg_sq.layer.bias",
            "adamw.exp_avg_sq.layer.weight",
            "adamw.step.layer.bias",
            "adamw.step.layer.weight",
        ]
    );
}

#[test]
fn state_round_trip_gives_the_identical_next_step() {
    let fx = fixture();
    for case in &fx.cases {
        let ps = params(&fx);
        let mut opt = case.config.build(&ps).unwrap();
        for step in 0..2 {
            set_grads(&ps, &fx.grads[step]);
            opt.step(&ps, fx.lrs[step]).unwrap();
        }
        // A fresh optimizer over copies of the parameters, restored from saved state (deep
        // copies, as a checkpoint would hold).
        let copies: Vec<(String, Tensor)> = ps
            .iter()
            .map(|(n, p)| (n.clone(), p.detach().copy().set_requires_grad(true)))
            .collect();
        let saved: Vec<(String, Tensor)> =
            opt.state().into_iter().map(|(k, t)| (k, t.copy())).collect();
        let mut fresh = case.config.build(&copies).unwrap();
        fresh.load_state(&saved).unwrap();
        for ((k1, t1), (k2, t2)) in opt.state().iter().zip(fresh.state().iter()) {
            assert_eq!(k1, k2);
            assert!(t1.equal(t2), "{} {k1}", case.name);
        }
        set_grads(&ps, &fx.grads[2]);
        set_grads(&copies, &fx.grads[2]);
        opt.step(&ps, fx.lrs[2]).unwrap();
        fresh.step(&copies, fx.lrs[2]).unwrap();
        for ((name, a), (_, b)) in ps.iter().zip(&copies) {
            assert!(a.equal(b), "{} {name} differs after resuming", case.name);
        }
    }
}

#[test]
fn load_state_names_the_bad_entry_and_changes_nothing() {
    let fx = fixture();
    let adamw = &fx.cases.iter().find(|c| c.name == "adamw").unwrap().config;
    let ps = params(&fx);
    let mut opt = adamw.build(&ps).unwrap();
    set_grads(&ps, &fx.grads[0]);
    opt.step(&ps, 0.1).unwrap();
    let good: Vec<(String, Tensor)> = opt.state().into_iter().map(|(k, t)| (k, t.copy())).collect();

    let mut fresh = adamw.build(&params(&fx)).unwrap();
    let missing: Vec<_> = good
        .iter()
        .filter(|(k, _)| k != "adamw.exp_avg_sq.layer.weight")
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    let msg = fresh.load_state(&missing).unwrap_err().to_string();
    assert_eq!(msg, "optimizer: state entry `adamw.exp_avg_sq.layer.weight` is missing");

    let misshaped: Vec<_> = good
        .iter()
        .map(|(k, t)| {
            let t = if k == "adamw.exp_avg.layer.weight" { t.reshape([3, 4]) } else { t.copy() };
            (k.clone(), t)
        })
        .collect();
    let msg = fresh.load_state(&misshaped).unwrap_err().to_string();
    assert_eq!(
        msg,
        "optimizer: state entry `adamw.exp_avg.layer.weight` has shape [3, 4], expected [4, 3]"
    );

    let mut extra: Vec<_> = good.iter().map(|(k, t)| (k.clone(), t.copy())).collect();
    extra.push(("sgd.momentum.layer.bias".to_owned(), Tensor::zeros([4], tch::kind::FLOAT_CPU)));
    let msg = fresh.load_state(&extra).unwrap_err().to_string();
    assert_eq!(
        msg,
        "optimizer: state entry `sgd.momentum.layer.bias` is not a buffer of this adamw optimizer"
    );

    // None of the failed loads touched the fresh optimizer's zero state.
    for (k, t) in fresh.state() {
        assert_eq!(t.abs().sum(Kind::Float).double_value(&[]), 0.0, "{k}");
    }
    fresh.load_state(&good).unwrap();
}

#[test]
fn parameters_without_gradient_are_left_alone() {
    for cfg in [
        OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.1,
            exclude_bias_and_norm: false,
        },
        OptimizerConfig::Lars { lr: 0.1, momentum: 0.9, weight_decay: 0.1, eta: 0.02 },
        OptimizerConfig::Adamw { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 },
    ] {
        let a = Tensor::ones([3, 2], tch::kind::FLOAT_CPU).set_requires_grad(true);
        let b = Tensor::ones([3, 2], tch::kind::FLOAT_CPU).set_requires_grad(true);
        let ps = vec![("a".to_owned(), a.shallow_clone()), ("b".to_owned(), b.shallow_clone())];
        let mut opt = cfg.build(&ps).unwrap();
        (&a * 2.0).sum(Kind::Float).backward();
        assert!(!b.grad().defined());
        opt.step(&ps, 0.1).unwrap();
        assert!(a.ne(1.0).all().int64_value(&[]) == 1, "{cfg:?}: a was updated");
        assert!(b.eq(1.0).all().int64_value(&[]) == 1, "{cfg:?}: b untouched");
        for (k, t) in opt.state() {
            if k.ends_with(".b") {
                assert_eq!(t.abs().sum(Kind::Float).double_value(&[]), 0.0, "{k}");
            }
        }
    }
}

#[test]
fn unknown_parameter_in_step_is_an_error() {
    let cfg = OptimizerConfig::Sgd {
        lr: 0.1,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
        exclude_bias_and_norm: false,
    };
    let a = Tensor::ones([2], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let mut opt = cfg.build(&[("a".to_owned(), a.shallow_clone())]).unwrap();
    let c = Tensor::ones([2], tch::kind::FLOAT_CPU).set_requires_grad(true);
    c.sum(Kind::Float).backward();
    let msg = opt.step(&[("c".to_owned(), c)], 0.1).unwrap_err().to_string();
    assert_eq!(msg, "optimizer: parameter `c` was not given when the sgd optimizer was built");
}

#[test]
fn lars_leaves_zero_weights_unscaled() {
    // solo-learn applies neither decay nor the trust ratio when ||p|| = 0: plain momentum SGD.
    let cfg = OptimizerConfig::Lars { lr: 0.5, momentum: 0.9, weight_decay: 0.1, eta: 0.001 };
    let w = Tensor::zeros([2, 2], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let ps = vec![("w".to_owned(), w.shallow_clone())];
    let mut opt = cfg.build(&ps).unwrap();
    let g = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5]).reshape([2, 2]);
    (&w * &g).sum(Kind::Float).backward();
    opt.step(&ps, 0.5).unwrap();
    assert!(w.allclose(&(&g * -0.5), 1e-7, 1e-7, false));
}

#[test]
fn bad_settings_are_named() {
    let err = |cfg: OptimizerConfig| cfg.build(&[]).unwrap_err().to_string();
    assert_eq!(
        err(OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.0,
            nesterov: true,
            weight_decay: 0.0,
            exclude_bias_and_norm: false
        }),
        "config: optimizer.nesterov = true needs optimizer.momentum > 0"
    );
    assert_eq!(
        err(OptimizerConfig::Lars { lr: -1.0, momentum: 0.9, weight_decay: 0.0, eta: 0.001 }),
        "config: optimizer.lr = -1 must be finite and >= 0"
    );
    assert_eq!(
        err(OptimizerConfig::Adamw {
            lr: 0.1,
            beta1: 0.9,
            beta2: 1.0,
            eps: 1e-8,
            weight_decay: 0.0
        }),
        "config: optimizer.beta2 = 1 must be in [0, 1)"
    );
    let t = Tensor::zeros([1], tch::kind::FLOAT_CPU);
    let twice = [("a".to_owned(), t.shallow_clone()), ("a".to_owned(), t)];
    let cfg = OptimizerConfig::Lars { lr: 0.1, momentum: 0.9, weight_decay: 0.0, eta: 0.001 };
    assert_eq!(
        cfg.build(&twice).unwrap_err().to_string(),
        "optimizer: parameter `a` is given twice"
    );
}

#[test]
fn config_defaults_and_unknown_keys() {
    let cfg: OptimizerConfig = serde_json::from_str(r#"{"kind": "lars", "lr": 0.3}"#).unwrap();
    assert_eq!(
        cfg,
        OptimizerConfig::Lars { lr: 0.3, momentum: 0.9, weight_decay: 1e-6, eta: 1e-3 }
    );
    let err =
        serde_json::from_str::<OptimizerConfig>(r#"{"kind": "sgd", "lr": 0.1, "moment": 0.9}"#)
            .unwrap_err()
            .to_string();
    assert!(err.contains("moment"), "{err}");
}

#[test]
fn clip_grad_norm_matches_pytorch_formula() {
    let a = Tensor::zeros([2], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let b = Tensor::zeros([1, 1], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let c = Tensor::zeros([3], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let ga = Tensor::from_slice(&[3.0f32, 4.0]);
    let gb = Tensor::from_slice(&[12.0f32]).reshape([1, 1]);
    ((&a * &ga).sum(Kind::Float) + (&b * &gb).sum(Kind::Float)).backward();
    let ps = vec![
        ("a".to_owned(), a.shallow_clone()),
        ("b".to_owned(), b.shallow_clone()),
        ("c".to_owned(), c),
    ];

    // Below the limit: the coefficient clamps to 1 and nothing changes.
    let norm = clip_grad_norm(&ps, 100.0).unwrap().double_value(&[]);
    assert!((norm - 13.0).abs() < 1e-6, "{norm}");
    assert!(a.grad().equal(&ga));

    // Above: every gradient scales by max_norm / (norm + 1e-6).
    let norm = clip_grad_norm(&ps, 6.5).unwrap().double_value(&[]);
    assert!((norm - 13.0).abs() < 1e-6, "{norm}");
    let coef = 6.5 / (13.0 + 1e-6);
    assert!(a.grad().allclose(&(&ga * coef), 1e-6, 0.0, false));
    assert!(b.grad().allclose(&(&gb * coef), 1e-6, 0.0, false));
    let after = clip_grad_norm(&ps, 1e9).unwrap().double_value(&[]);
    assert!((after - 6.5).abs() < 1e-5, "{after}");

    // No gradients at all.
    let none = vec![("d".to_owned(), Tensor::zeros([2], (Kind::Float, Device::Cpu)))];
    assert_eq!(clip_grad_norm(&none, 1.0).unwrap().double_value(&[]), 0.0);
}

#[test]
fn dropped_gradients_are_the_next_pass_alone_and_an_unreached_parameter_is_skipped() {
    let a = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).set_requires_grad(true);
    let b = Tensor::from_slice(&[0.5f32, 0.5]).set_requires_grad(true);
    let params = vec![("a".to_string(), a.shallow_clone()), ("b".to_string(), b.shallow_clone())];
    // A first pass reaches both; dropped, a second pass reaching `a` alone leaves `a` with that
    // pass's gradient (not the sum of both) and `b` without one.
    ((&a * 2.0).sum(Kind::Float) + (&b * 3.0).sum(Kind::Float)).backward();
    super::drop_grads(params.iter().map(|(_, t)| t)).unwrap();
    assert!(!a.grad().defined() && !b.grad().defined());
    (&a * &a).sum(Kind::Float).backward();
    assert_eq!(Vec::<f32>::try_from(&a.grad()).unwrap(), [2.0, -4.0, 6.0]);
    assert!(!b.grad().defined());
    // SGD with momentum and weight decay moves `a` and leaves `b`, whose gradient is undefined,
    // as it was (a zeroed gradient would have decayed it).
    let mut opt = OptimizerConfig::Sgd {
        lr: 0.1,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.5,
        exclude_bias_and_norm: false,
    }
    .build(&params)
    .unwrap();
    opt.step(&params, 0.1).unwrap();
    assert_eq!(Vec::<f32>::try_from(&b).unwrap(), [0.5, 0.5]);
    // a - 0.1 · (g + 0.5 a) = a - 0.1 · (2a + 0.5a) = 0.75 a
    assert!(max_abs_diff(&a, &[0.75, -1.5, 2.25]) < 1e-6);
}
