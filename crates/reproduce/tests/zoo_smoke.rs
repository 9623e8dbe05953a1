//! End to end: the zoo's smoke profile on synthetic data trains the listed methods on one trunk
//! and budget, probes them beside random init and the supervised trunk, writes the seed-layout
//! table, the rank correlations and both charts; a method added to the list later is trained
//! and probed alone while every finished stage is skipped (asserts the pipeline, not the
//! accuracy).
use serde_json::Value;

fn read_json(p: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn args(base: &std::path::Path, methods: &str) -> Vec<String> {
    [
        "zoo",
        "--profile",
        "smoke",
        "--methods",
        methods,
        "--dataset",
        "synthetic:96:32",
        "--device",
        "cpu",
        "--runs-dir",
        base.join("runs").to_str().unwrap(),
        "--results-dir",
        base.join("results").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn the_zoo_tables_every_listed_method_and_adds_a_new_one_alone() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let registry = selfsup_methods::registry();
    selfsup_reproduce::run(&args(base, "rotnet,colorization"), &registry).unwrap();
    let res = base.join("results/zoo/smoke");
    let v = read_json(&res.join("results.json"));
    let rows = v["tables"]["layers"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names[0].starts_with("random") && names[1].starts_with("supervised"));
    assert_eq!(&names[2..], ["rotnet", "colorization"]);
    for r in rows {
        for tap in ["conv1", "conv2", "conv3", "conv4", "conv5"] {
            let t = r[tap]["mean"].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&t), "{r}");
        }
        assert!((0.0..=100.0).contains(&r["knn_best"].as_f64().unwrap()), "{r}");
    }
    for r in &rows[1..] {
        assert!(r["seconds"].as_f64().unwrap() > 0.0, "{r}");
        // 64 images, one epoch, batch 32.
        assert!(r["images_seen"].as_f64().unwrap() >= 64.0, "{r}");
        assert!(r["pretext"].as_f64().is_some(), "{r}");
    }
    // The same trunk, images and seed for every method.
    let cfg = |m: &str| read_json(&res.join("configs").join(format!("{m}.json")));
    assert_eq!(cfg("rotnet")["encoder"], cfg("colorization")["encoder"]);
    assert_eq!(cfg("rotnet")["data"], cfg("colorization")["data"]);
    // The seed's rows the zoo has (colorization, labels, random) and one ρ per layer.
    let seed = v["tables"]["seed"].as_array().unwrap();
    assert_eq!(seed.len(), 4, "{seed:?}");
    assert!(seed[3]["row"].as_str().unwrap().starts_with("ρ"));
    assert_eq!(v["findings"].as_array().unwrap().len(), 2);
    for f in ["table.md", "layers.png", "time.png", "plan.json", "commands.md"] {
        assert!(res.join(f).exists(), "{f} missing");
    }

    // A method added later: trained and probed alone, its row added.
    selfsup_reproduce::run(&args(base, "rotnet,colorization,jigsaw"), &registry).unwrap();
    let v = read_json(&res.join("results.json"));
    for s in v["stages"].as_array().unwrap() {
        let stage = s["stage"].as_str().unwrap();
        assert_eq!(s["skipped"], !stage.contains("jigsaw"), "{stage}");
    }
    let rows = v["tables"]["layers"].as_array().unwrap();
    assert_eq!(rows.last().unwrap()["method"], "jigsaw");
    // An unregistered method is refused by name.
    let err = selfsup_reproduce::run(&args(base, "no-such-method"), &registry).unwrap_err();
    assert!(format!("{err:#}").contains("no-such-method"), "{err:#}");
}

#[test]
fn a_method_that_cannot_use_the_trunk_says_why_in_its_row() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let registry = selfsup_methods::registry();
    // Split-brain halves every layer, so an odd width is a trunk it cannot use.
    let mut a = args(base, "rotnet,split-brain");
    a.push("--set".into());
    a.push(r#"encoder={"kind":"alexnet","variant":"cifar","width":5}"#.into());
    selfsup_reproduce::run(&a, &registry).unwrap();
    let res = base.join("results/zoo/smoke");
    let v = read_json(&res.join("results.json"));
    let rows = v["tables"]["layers"].as_array().unwrap();
    let split = rows.iter().find(|r| r["method"].as_str().unwrap().starts_with("split-brain"));
    let split = split.unwrap();
    let label = split["method"].as_str().unwrap();
    assert!(label.contains("cannot use this trunk") && label.contains("even"), "{label}");
    assert!(split["conv1"].is_null() && split["seconds"].is_null(), "{split}");
    let rotnet = rows.iter().find(|r| r["method"] == "rotnet").unwrap();
    assert!(rotnet["conv5"]["mean"].as_f64().is_some(), "{rotnet}");
    assert!(v["trainings"]["split-brain"]["unusable"].is_string());
    let table = std::fs::read_to_string(res.join("table.md")).unwrap();
    assert!(table.contains("split-brain (cannot use this trunk: "), "{table}");
    let log = std::fs::read_to_string(res.join("run.log")).unwrap();
    assert!(log.contains("[unusable] train split-brain"), "{log}");
    assert!(!base.join("runs/zoo/smoke/probes/split-brain").exists());
}
