//! Every registered method trains two steps of its cpu-profile run (its own backbone, heads and
//! batch recipe, on a smaller batch of synthetic images) in fp32, NCHW and channels-last, and,
//! where the CPU has bf16, channels-last in bf16 autocast, once free and deterministic at 1 and
//! at 2 threads: the loss is finite, both steps are done, and the two deterministic runs end
//! with the same weights and running statistics. `cargo xtask bench train` runs these
//! configurations. Nothing else trained the method-specific layers (context encoder's
//! discriminator, CPC's context network, the colorization heads) under autocast, where a layer
//! that does not take autocast's bf16 input stops the run at its first step (a662be1's parent);
//! nor compared every method's deterministic runs across thread counts, which found libtorch's
//! channels-last and 1-d batch norms and MKL's fully connected products depending on the thread
//! count (the parent of d5ed797). Tried once at 1 against 3, 4 and 8 threads (channels-last)
//! and 3 (NCHW): the same.
use selfsup_core::checkpoint;
use selfsup_core::config::{read_json, RunConfig};
use selfsup_core::precision::{cpu_supports_bf16, Precision};
use selfsup_core::trainer::{train, TrainOptions};
use serde_json::Value;

/// The first training of each method over the cpu profile of every method's plan, in plan
/// order, one per method: each method's headline run, and the supervised baseline from the first
/// plan that has one; and why a method's plan wrote no configs (a method without a plan).
fn cpu_profile_runs(dir: &std::path::Path) -> (Vec<(String, Value)>, Vec<String>) {
    let registry = selfsup_methods::registry();
    let (mut runs, mut failed): (Vec<(String, Value)>, Vec<String>) = (Vec::new(), Vec::new());
    for plan in registry.names().into_iter().filter(|&m| m != "supervised") {
        let args: Vec<String> = [
            plan,
            "--profile",
            "cpu",
            "--dataset",
            "synthetic:48:32",
            "--device",
            "cpu",
            "--configs-only",
            "--results-dir",
            dir.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Err(e) = selfsup_reproduce::run(&args, &registry) {
            failed.push(format!("{plan}: {e:#}"));
            continue;
        }
        let plan_json = read_json(&dir.join(plan).join("cpu/plan.json")).unwrap();
        for t in plan_json["trainings"].as_array().unwrap() {
            let method = t["config"]["method"].as_str().unwrap().to_string();
            if !runs.iter().any(|(m, _)| *m == method) {
                runs.push((method, t["config"].clone()));
            }
        }
    }
    (runs, failed)
}

/// The model variables a run saved in `dir`, sorted by name.
fn model_vars(dir: &std::path::Path) -> Vec<(String, tch::Tensor)> {
    let mut vars = checkpoint::load(dir).unwrap().model;
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Every run's variables (`runs[t]` at `t + 1` threads) equal to the first run's, name by name.
fn assert_same_vars(runs: &[Vec<(String, tch::Tensor)>], what: &str) {
    for (t, vars) in runs.iter().enumerate().skip(1) {
        assert_eq!(vars.len(), runs[0].len(), "{what}");
        for ((name, a), (_, b)) in runs[0].iter().zip(vars) {
            assert!(a.equal(b), "{what}: {name} differs at {} threads", t + 1);
        }
    }
}

#[test]
fn every_method_trains_free_and_deterministic_at_any_thread_count() {
    let base = tempfile::tempdir().unwrap();
    let (runs, failed) = cpu_profile_runs(&base.path().join("results"));
    let registry = selfsup_methods::registry();
    let mut methods: Vec<&str> = runs.iter().map(|(m, _)| m.as_str()).collect();
    methods.sort_unstable();
    let mut registered = registry.names();
    registered.sort_unstable();
    assert_eq!(methods, registered, "a registered method has no plan that trains it: {failed:?}");
    // (precision, channels-last): NCHW fp32 is every run config's default.
    let mut cases = vec![("fp32", false), ("fp32", true)];
    if cpu_supports_bf16() {
        cases.push(("bf16", true));
    }
    for ((precision, channels_last), (method, config)) in
        cases.iter().flat_map(|c| runs.iter().map(move |r| (*c, r)))
    {
        let mut weights = Vec::new();
        for (deterministic, threads) in [(false, 0), (true, 1), (true, 2)] {
            let sets = [
                "data.max_images=48".to_string(),
                "train.batch_size=16".to_string(),
                "train.max_steps=2".to_string(),
                format!("train.channels_last={channels_last}"),
                format!("train.precision=\"{precision}\""),
                format!("train.deterministic={deterministic}"),
                format!("train.threads={threads}"),
            ];
            let cfg = RunConfig::resolve(&registry, Some(config), &sets, None).unwrap();
            assert_eq!(cfg.train.precision == Precision::Bf16, precision == "bf16");
            let dir = base.path().join(format!(
                "runs/{method}-{precision}-{channels_last}-{deterministic}-{threads}"
            ));
            let mut opts = TrainOptions { progress: false, ..TrainOptions::default() };
            let layout = if channels_last { "channels-last" } else { "NCHW" };
            let what = format!("{method}, {precision}, {layout}, deterministic {deterministic}");
            let summary =
                train(&cfg, &registry, &dir, &mut opts).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(summary.global_step, 2, "{what}");
            assert!(summary.last_epoch_loss.is_finite(), "{what}: {}", summary.last_epoch_loss);
            if deterministic {
                weights.push(model_vars(&dir));
            }
        }
        assert_eq!(weights.len(), 2, "two deterministic runs");
        assert_same_vars(
            &weights,
            &format!("{method} ({precision}, channels-last {channels_last})"),
        );
    }
    // The cpu profile's own batch, one deterministic step as configured (NCHW fp32) at 1, 2
    // and 3 threads, on 4,096 images. Found on a Xeon with AMX (family 6, model 167), each
    // failing here before its fix: instance discrimination's `bmm` with its 4,097 candidates
    // (its features' gradient differed at 2 threads; not on 256 images, whose bank and Z
    // gave other values), colorization's Lab conversion of the batch (its scalar tails at 3
    // threads; split-brain's too). MoCo's `matmul` with the queue fails the batches of 16
    // above.
    for (method, config) in &runs {
        let mut weights = Vec::new();
        for threads in 1..=3 {
            let sets = [
                "data.dataset=\"synthetic:4096:32\"".to_string(),
                "train.max_steps=1".to_string(),
                "train.deterministic=true".to_string(),
                format!("train.threads={threads}"),
            ];
            let cfg = RunConfig::resolve(&registry, Some(config), &sets, None).unwrap();
            let dir = base.path().join(format!("runs/{method}-batch-{threads}"));
            let mut opts = TrainOptions { progress: false, ..TrainOptions::default() };
            train(&cfg, &registry, &dir, &mut opts).unwrap_or_else(|e| panic!("{method}: {e}"));
            weights.push(model_vars(&dir));
        }
        assert_same_vars(&weights, &format!("{method}, batch as configured"));
    }
}
