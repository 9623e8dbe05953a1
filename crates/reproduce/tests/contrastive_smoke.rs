//! End to end: the contrastive plans' smoke profiles on synthetic data train, probe the
//! trained and the random-init method at both smoke probe seeds, write the results folder; a
//! second invocation skips every stage; stale trainings and probes are refused by name, and
//! `--force` redoes everything (asserts the pipeline, not the accuracy).
use serde_json::Value;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn run(method: &str, args: &[String]) -> anyhow::Result<()> {
    let mut all = vec![method.to_string()];
    all.extend(args.iter().cloned());
    selfsup_reproduce::run(&all, &selfsup_methods::registry())
}

fn read_json(p: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn smoke_profiles_run_then_skip_then_refuse_stale_stages() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    for m in ["simclr", "moco", "instance-discrimination"] {
        let args = s(&[
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
        run(m, &args).unwrap();
        let res = base.join("results").join(m).join("smoke");
        let v = read_json(&res.join("results.json"));
        let rows = v["tables"]["top1"].as_array().unwrap();
        for (row, enc) in rows.iter().zip(["trained", "random"]) {
            assert_eq!(row["encoder"], enc);
            for probe in ["knn", "knn_embedding", "linear", "linear_map"] {
                let cell = &row[probe];
                let t = cell["mean"].as_f64().unwrap();
                assert!((0.0..=100.0).contains(&t), "{m} {enc} {probe}: {t}");
                assert_eq!(cell["values"].as_array().unwrap().len(), 2, "{cell}");
                assert!(cell["std"].as_f64().is_some(), "{cell}");
            }
        }
        assert!(v["machine"]["cpu"].as_str().is_some(), "{}", v["machine"]);
        for f in ["table.md", "commands.md", "plan.json", "configs/pretrain.json", "curves.png"] {
            assert!(res.join(f).exists(), "{m}: {f} missing");
        }
        // A second run skips every stage.
        run(m, &args).unwrap();
        let v = read_json(&res.join("results.json"));
        assert!(v["stages"].as_array().unwrap().iter().all(|s| s["skipped"] == true));
        assert!(std::fs::read_to_string(res.join("table.md"))
            .unwrap()
            .contains("| trained − random |"));
        // A finished pretraining under another config is refused, not reused.
        let mut changed = args.clone();
        changed.extend(s(&["--set", "epochs=2"]));
        let err = run(m, &changed).unwrap_err().to_string();
        assert!(err.contains("another config") && err.contains("--force"), "{err}");
        // So is a finished probe under other probe settings.
        let mut changed = args.clone();
        changed.extend(s(&["--set", "linear.epochs=2"]));
        let err = run(m, &changed).unwrap_err().to_string();
        assert!(err.contains("linear.json") && err.contains("--force"), "{err}");
        // `--force` redoes everything and starts the run log afresh.
        let log = std::fs::read_to_string(res.join("run.log")).unwrap();
        assert!(log.matches(&format!("== selfsup reproduce {m}")).count() >= 2, "{log}");
        let mut forced = changed.clone();
        forced.push("--force".into());
        run(m, &forced).unwrap();
        let log = std::fs::read_to_string(res.join("run.log")).unwrap();
        assert_eq!(log.matches(&format!("== selfsup reproduce {m}")).count(), 1, "{log}");
    }
}
