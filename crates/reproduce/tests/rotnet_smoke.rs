//! End to end: `selfsup reproduce rotnet --profile smoke` on synthetic data trains every stage,
//! runs every probe, writes the whole results folder, and a second invocation skips every
//! stage (asserts the pipeline, not the accuracy).
use serde_json::Value;
use std::path::Path;

fn args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "rotnet".into(),
        "--profile".into(),
        "smoke".into(),
        "--dataset".into(),
        "synthetic:320:32".into(),
        "--device".into(),
        "cpu".into(),
        "--runs-dir".into(),
        dir.join("runs").display().to_string(),
        "--results-dir".into(),
        dir.join("results").display().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn smoke_profile_runs_every_stage_then_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    selfsup_reproduce::run(&args(dir.path(), &[]), &selfsup_methods::registry()).unwrap();
    let res = dir.path().join("results/rotnet/smoke");
    for f in [
        "table.md",
        "results.json",
        "commands.md",
        "curves.png",
        "blocks.png",
        "run.log",
        "plan.json",
    ] {
        let p = res.join(f);
        assert!(p.metadata().map(|m| m.len() > 0).unwrap_or(false), "{} missing", p.display());
    }
    // The smoke profile, as the cpu one, gives Table 2's rotation sets their own runs.
    let runs = ["rotnet_four", "sets_four", "sets_eight", "sets_two_0_180", "sets_two_90_270"];
    for c in runs.iter().chain(&["supervised"]) {
        assert!(res.join("configs").join(format!("{c}.json")).exists(), "config {c}");
    }
    let r: Value =
        serde_json::from_slice(&std::fs::read(res.join("results.json")).unwrap()).unwrap();
    let t = &r["tables"];
    assert_eq!(t["blockwise"].as_array().unwrap().len(), 4);
    for b in t["blockwise"].as_array().unwrap() {
        for k in ["rotnet_linear", "random_linear"] {
            let v = b[k].as_f64().unwrap_or(-1.0);
            assert!((0.0..=100.0).contains(&v), "{k} = {v}");
        }
        // The headline probes ran at both smoke probe seeds: mean ± std, and the best epoch.
        for k in ["rotnet_nonlinear", "random_nonlinear", "rotnet_nonlinear_best"] {
            assert_eq!(b[k]["n"], 2, "{k}: {b}");
            assert!(b[k]["std"].as_f64().is_some(), "{k}: {b}");
            let v = b[k]["mean"].as_f64().unwrap_or(-1.0);
            assert!((0.0..=100.0).contains(&v), "{k} = {v}");
        }
        let (last, best) =
            (b["rotnet_nonlinear"]["mean"].as_f64(), b["rotnet_nonlinear_best"]["mean"].as_f64());
        assert!(best.unwrap() >= last.unwrap() - 1e-9, "best epoch below the last: {b}");
    }
    // The supervised NIN has 3 blocks (official `CIFAR10_supervised_NIN`), the RotNet 4.
    let sup: Value = serde_json::from_slice(
        &std::fs::read(res.join("configs").join("supervised.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sup["encoder"]["blocks"], 3, "{sup}");
    // Table 3 has both random-init rows, each beside the paper's 72.50.
    let baselines = t["baselines"].as_array().unwrap();
    let legacy = baselines
        .iter()
        .find(|b| b["row"].as_str().unwrap().contains("PyTorch 0.3"))
        .expect("the PyTorch-0.3-init random row");
    assert_eq!(legacy["paper"], 72.5);
    assert_eq!(legacy["ours"]["n"], 2);
    // The supervised NIN's own accuracy, one seed.
    let end_to_end = baselines[0]["ours"]["mean"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&end_to_end));
    // The findings, each decided (or not) by the margin rule, with its differences.
    let findings = r["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 4, "{findings:?}");
    let best = findings.iter().find(|f| f["claim"].as_str().unwrap().starts_with("Best")).unwrap();
    assert_eq!(best["differences"].as_array().unwrap().len(), 3, "{best}");
    assert!(r["machine"]["cpu"].as_str().is_some());
    let rotations = t["rotations"].as_array().unwrap();
    let probed: Vec<&str> = rotations.iter().map(|x| x["run"].as_str().unwrap()).collect();
    assert_eq!(probed, runs[1..]);
    for x in rotations {
        assert!(x["ours"]["mean"].as_f64().is_some(), "{x}");
        assert!(x["pretext_acc"].as_f64().is_some(), "{x}");
    }
    let few = t["few_labels"].as_array().unwrap();
    assert_eq!(few.len(), 1, "{few:?}");
    assert_eq!(few[0]["per_class"], 2);
    assert_eq!(few[0]["train_images"], 20);
    for k in ["rotnet_conv", "scratch"] {
        let v = few[0][k]["mean"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=100.0).contains(&v), "few labels {k} = {v}");
    }
    let stages = r["stages"].as_array().unwrap();
    // 6 trainings; probes: RotNet and random init mlp_all and conv_block2 at 2 seeds and
    // linear at 1 (5 each), PyTorch-0.3 random init conv at 2, supervised mlp at 1, the 4
    // rotation-set runs at 2; the 2 few-label sides; the supervised test accuracy.
    assert_eq!(stages.len(), 30);
    assert!(stages.iter().all(|s| s["skipped"] == false));
    let md = std::fs::read_to_string(res.join("table.md")).unwrap();
    assert!(md.contains("| block2 |") && md.contains("89.06") && md.contains("72.50"), "{md}");
    assert!(md.contains("## 4. Few labels") && md.contains("| 2 | 20 |"), "{md}");
    assert!(md.contains("| four | 0°, 90°, 180°, 270° | `sets_four` |"), "{md}");

    // Re-running skips every finished stage.
    selfsup_reproduce::run(&args(dir.path(), &[]), &selfsup_methods::registry()).unwrap();
    let r: Value =
        serde_json::from_slice(&std::fs::read(res.join("results.json")).unwrap()).unwrap();
    let stages = r["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 30);
    assert!(stages.iter().all(|s| s["skipped"] == true), "{stages:?}");
    let log = std::fs::read_to_string(res.join("run.log")).unwrap();
    assert_eq!(log.matches("== selfsup reproduce rotnet").count(), 2);

    // A finished probe made under other settings is refused by name, not reused.
    let err = selfsup_reproduce::run(
        &args(dir.path(), &["--set", "mlp.epochs=2"]),
        &selfsup_methods::registry(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("nonlinear.json") && err.contains("--force"), "{err}");

    // `--force` redoes everything: a fresh log, and no config of a run the profile lacks.
    let stale = res.join("configs").join("rotnet_eight.json");
    std::fs::write(&stale, "{}").unwrap();
    selfsup_reproduce::run(&args(dir.path(), &["--force"]), &selfsup_methods::registry()).unwrap();
    assert!(!stale.exists(), "{} left behind", stale.display());
    assert!(res.join("configs").join("sets_eight.json").exists());
    let log = std::fs::read_to_string(res.join("run.log")).unwrap();
    assert_eq!(log.matches("== selfsup reproduce rotnet").count(), 1);

    // Two pretraining seeds: Table 1's RotNet and Table 2's four and two-rotation sets train
    // at both, the eight-rotation set at the first; the RotNet figures pool both seeds and the
    // findings pair their differences per pretraining and probe seed.
    let two = &["--set", "pretrain_seeds=[0,1]", "--set", "few_label_seeds=[0,1]", "--force"];
    selfsup_reproduce::run(&args(dir.path(), two), &selfsup_methods::registry()).unwrap();
    for c in ["rotnet_four_seed1", "sets_four_seed1", "sets_two_0_180_seed1"] {
        assert!(res.join("configs").join(format!("{c}.json")).exists(), "config {c}");
    }
    assert!(!res.join("configs").join("sets_eight_seed1.json").exists());
    let r: Value =
        serde_json::from_slice(&std::fs::read(res.join("results.json")).unwrap()).unwrap();
    let t = &r["tables"];
    // 2 pretraining seeds × 2 probe seeds.
    assert_eq!(t["blockwise"][1]["rotnet_nonlinear"]["n"], 4, "{}", t["blockwise"][1]);
    assert_eq!(t["rotations"][0]["ours"]["n"], 4);
    assert_eq!(t["rotations"][1]["ours"]["n"], 2, "eight: the first pretraining seed only");
    assert_eq!(t["few_labels"][0]["rotnet_conv"]["n"], 4);
    assert_eq!(t["few_labels"][0]["diff"]["n"], 4);
    let best = &r["findings"][1];
    assert_eq!(best["differences"][0][1]["n"], 4, "{best}");
    let md = std::fs::read_to_string(res.join("table.md")).unwrap();
    assert!(md.contains("Pretraining seeds [0, 1]"), "{md}");
    assert!(md.contains("| four | 0°, 90°, 180°, 270° | `sets_four`, `sets_four_seed1` |"), "{md}");
}
