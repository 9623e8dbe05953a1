//! Every registered method trains two steps of its cpu-profile run (its own backbone, heads and
//! batch recipe, on a smaller batch of synthetic images) channels-last and in bf16 autocast
//! where the CPU has bf16 (fp32 where it does not), once free and once deterministic: the loss
//! is finite and both steps are done. `cargo xtask bench train` runs these configurations;
//! nothing else trains the method-specific layers (context encoder's discriminator, CPC's
//! context network, the colorization heads) under autocast, and a layer that does not take
//! autocast's bf16 input stops the run at its first step.
use selfsup_core::config::{read_json, RunConfig};
use selfsup_core::precision::{cpu_supports_bf16, Precision};
use selfsup_core::trainer::{train, TrainOptions};
use serde_json::Value;

/// The first training of each method over every plan's cpu profile, in plan order, one per
/// method: each method's headline run, and the supervised baseline from the first plan that
/// has one.
fn cpu_profile_runs(dir: &std::path::Path) -> Vec<(String, Value)> {
    let registry = selfsup_methods::registry();
    let mut runs: Vec<(String, Value)> = Vec::new();
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
        selfsup_reproduce::run(&args, &registry).unwrap();
        let plan_json = read_json(&dir.join(plan).join("cpu/plan.json")).unwrap();
        for t in plan_json["trainings"].as_array().unwrap() {
            let method = t["config"]["method"].as_str().unwrap().to_string();
            if !runs.iter().any(|(m, _)| *m == method) {
                runs.push((method, t["config"].clone()));
            }
        }
    }
    runs
}

#[test]
fn every_method_trains_channels_last_in_bf16_free_and_deterministic() {
    let base = tempfile::tempdir().unwrap();
    let runs = cpu_profile_runs(&base.path().join("results"));
    let registry = selfsup_methods::registry();
    let mut methods: Vec<&str> = runs.iter().map(|(m, _)| m.as_str()).collect();
    methods.sort_unstable();
    let mut registered = registry.names();
    registered.sort_unstable();
    assert_eq!(methods, registered, "a registered method has no plan that trains it");
    let precision = if cpu_supports_bf16() { "bf16" } else { "fp32" };
    for (method, config) in &runs {
        for deterministic in [false, true] {
            let sets = [
                "data.max_images=48".to_string(),
                "train.batch_size=16".to_string(),
                "train.max_steps=2".to_string(),
                "train.channels_last=true".to_string(),
                format!("train.precision=\"{precision}\""),
                format!("train.deterministic={deterministic}"),
            ];
            let cfg = RunConfig::resolve(&registry, Some(config), &sets, None).unwrap();
            assert_eq!(cfg.train.precision == Precision::Bf16, precision == "bf16");
            let dir = base.path().join(format!("runs/{method}-{deterministic}"));
            let mut opts = TrainOptions { progress: false, ..TrainOptions::default() };
            let what =
                format!("{method}, {precision}, channels-last, deterministic {deterministic}");
            let summary =
                train(&cfg, &registry, &dir, &mut opts).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(summary.global_step, 2, "{what}");
            assert!(summary.last_epoch_loss.is_finite(), "{what}: {}", summary.last_epoch_loss);
        }
    }
}
