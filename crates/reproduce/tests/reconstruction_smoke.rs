//! End to end: the reconstruction plans' smoke profiles (denoising autoencoder, context
//! encoder, colorization, split-brain) on synthetic data train every variant the paper compares
//! and the supervised trunk, probe each encoder layer by layer (split-brain's halves alone
//! too) at both smoke probe seeds and write the results folder with the seed's rows beside
//! ours and the sample grids; a second invocation skips every stage (asserts the pipeline, not
//! the accuracy).
use serde_json::Value;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn read_json(p: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn reconstruction_plans_probe_every_layer_of_every_variant() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    // (method, encoders probed, findings, sample grids)
    for (m, encoders, findings, samples) in [
        ("autoencoder", vec!["pretrain", "random", "supervised"], 6, vec!["pretrain"]),
        (
            "context-encoder",
            vec!["pretrain", "rec_only", "central", "random", "supervised"],
            8,
            vec!["pretrain", "rec_only", "central"],
        ),
        ("colorization", vec!["pretrain", "random", "supervised"], 6, vec!["pretrain"]),
        (
            "split-brain",
            vec!["pretrain", "regression", "l_to_ab", "ab_to_l", "random", "supervised"],
            9,
            vec!["pretrain", "regression"],
        ),
    ] {
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
        for (row, _) in rows.iter().zip(&encoders) {
            for tap in ["conv1", "conv2", "conv3", "conv4", "conv5", "knn"] {
                let cell = &row[tap];
                let t = cell["mean"].as_f64().unwrap();
                assert!((0.0..=100.0).contains(&t), "{m} {tap}: {cell}");
                assert_eq!(cell["values"].as_array().unwrap().len(), 2, "{cell}");
            }
        }
        // Every variant's pretext figure is read from its log.
        for (row, enc) in rows.iter().zip(&encoders) {
            if !["random", "supervised", "l_to_ab", "ab_to_l"].contains(enc) {
                assert!(row["pretext"].as_f64().unwrap().is_finite(), "{m}: {row}");
            }
        }
        assert!(rows[encoders.len()]["encoder"].as_str().unwrap().contains("pretrain − random"));
        // The probes of each split-brain half read half of the concatenation's channels.
        if m == "split-brain" {
            let channels = |enc: &str| -> Vec<i64> {
                let path = base
                    .join("runs/split-brain/smoke/probes")
                    .join(enc)
                    .join("linear/eval/linear.json");
                let r = read_json(&path);
                r["rows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x["map_shape"][0].as_i64().unwrap())
                    .collect()
            };
            let (both, l, ab) = (channels("pretrain"), channels("l_to_ab"), channels("ab_to_l"));
            assert_eq!(both.len(), 5);
            for i in 0..5 {
                assert_eq!(l[i] + ab[i], both[i], "{both:?} {l:?} {ab:?}");
            }
        }
        assert_eq!(read_json(&res.join("configs/supervised.json"))["method"], "supervised");
        for enc in &encoders {
            if !["random", "supervised", "l_to_ab", "ab_to_l"].contains(enc) {
                let c = read_json(&res.join("configs").join(format!("{enc}.json")));
                assert_eq!(c["method"], m);
            }
        }
        assert_eq!(v["findings"].as_array().unwrap().len(), findings, "{m}");
        for enc in samples {
            assert!(res.join("samples").join(format!("{enc}.png")).exists(), "{m}: {enc}");
        }
        for f in ["table.md", "commands.md", "plan.json", "layers.png", "run.log"] {
            assert!(res.join(f).exists(), "{m}: {f} missing");
        }
        // A second run skips every stage.
        selfsup_reproduce::run(&args, &registry).unwrap();
        let v = read_json(&res.join("results.json"));
        assert!(v["stages"].as_array().unwrap().iter().all(|s| s["skipped"] == true));
    }
}
