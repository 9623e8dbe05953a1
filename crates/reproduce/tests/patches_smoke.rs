//! End to end: the patch-grid plans' smoke profiles (relative patch, jigsaw, CPC) on synthetic
//! data train the method, its ablation and the supervised trunk, probe four encoders layer by
//! layer at both smoke probe seeds and write the results folder with the seed's ImageNet rows
//! beside ours; a second invocation skips every stage (asserts the pipeline, not the
//! accuracy).
use serde_json::Value;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn read_json(p: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn patch_plans_probe_every_layer_of_four_encoders() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    for m in ["relative-patch", "jigsaw", "cpc"] {
        let args = s(&[
            m,
            "--profile",
            "smoke",
            "--dataset",
            "synthetic:96:32",
            "--device",
            "cpu",
            "--set",
            "train_images=64",
            "--set",
            "probe_train_images=64",
            "--set",
            "test_images=32",
            "--runs-dir",
            base.join("runs").to_str().unwrap(),
            "--results-dir",
            base.join("results").to_str().unwrap(),
        ]);
        let registry = selfsup_methods::registry();
        selfsup_reproduce::run(&args, &registry).unwrap();
        let res = base.join("results").join(m).join("smoke");
        let v = read_json(&res.join("results.json"));
        let rows = v["tables"]["layers"].as_array().unwrap();
        // Four encoders, then three rows of paired differences.
        assert_eq!(rows.len(), 7, "{m}");
        for row in &rows[..4] {
            for tap in ["conv1", "conv2", "conv3", "conv4", "conv5", "knn"] {
                let cell = &row[tap];
                let t = cell["mean"].as_f64().unwrap();
                assert!((0.0..=100.0).contains(&t), "{m} {tap}: {cell}");
                assert_eq!(cell["values"].as_array().unwrap().len(), 2, "{cell}");
            }
        }
        // The pretext accuracy of the run and of its ablation, read from their logs.
        for row in &rows[..2] {
            let acc = row["pretext_acc"].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&acc), "{m}: {row}");
        }
        assert!(rows[4]["encoder"].as_str().unwrap().contains("trained − random"));
        // The ablation trains the same method with the countermeasure off.
        let run = read_json(&res.join("configs/pretrain.json"));
        let abl = read_json(&res.join("configs/ablation.json"));
        assert_eq!(run["method"], m);
        assert_eq!(abl["method"], m);
        assert_ne!(run["method_config"], abl["method_config"]);
        assert_eq!(run["train"], abl["train"]);
        assert_eq!(read_json(&res.join("configs/supervised.json"))["method"], "supervised");
        // The seed's ImageNet rows, marked as another dataset.
        let refs = v["tables"]["references"].as_array().unwrap();
        assert!(refs.iter().all(|r| r["dataset"] == "ImageNet"), "{refs:?}");
        assert_eq!(refs.last().unwrap()["conv1"], 11.6);
        let findings = v["findings"].as_array().unwrap();
        assert_eq!(findings.len(), 3, "{findings:?}");
        for f in ["table.md", "commands.md", "plan.json", "layers.png", "run.log"] {
            assert!(res.join(f).exists(), "{m}: {f} missing");
        }
        // A second run skips every stage.
        selfsup_reproduce::run(&args, &registry).unwrap();
        let v = read_json(&res.join("results.json"));
        assert!(v["stages"].as_array().unwrap().iter().all(|s| s["skipped"] == true));
        if m == "jigsaw" {
            // A run folder deleted by hand is trained anew, and the probes of its encoder with
            // it (their old reports read the old weights); the other encoders' are kept.
            std::fs::remove_dir_all(base.join("runs").join(m).join("smoke").join("ablation"))
                .unwrap();
            selfsup_reproduce::run(&args, &registry).unwrap();
            let v = read_json(&res.join("results.json"));
            for s in v["stages"].as_array().unwrap() {
                let stage = s["stage"].as_str().unwrap();
                let redone = stage == "train ablation" || stage.contains(" ablation seed ");
                assert_eq!(s["skipped"], !redone, "{stage}");
            }
            let log = std::fs::read_to_string(res.join("run.log")).unwrap();
            assert!(log.contains("[stale] removed"), "{log}");
        }
    }
}
