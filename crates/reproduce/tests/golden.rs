//! The engine gives the same tables as the hand-written reproductions it replaced: the smoke
//! run folders those wrote (`tests/golden/runs`, checkpoints stripped) are replayed through
//! the plans, every stage is skipped after its saved settings are checked, and `table.md` must
//! match theirs (`tests/golden/expected`) line for line. The exceptions are the command line,
//! which names this invocation, and the RotNet findings, which the engine decides by the
//! margin rule (checked here too). See `tests/golden/README.md`.
use serde_json::Value;
use std::path::Path;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Replays plan `plan` on the golden run folders; returns `(table.md, results.json)`.
fn replay(plan: &str, extra: &[&str]) -> (String, Value) {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&golden.join("runs").join(plan), &dir.path().join("runs").join(plan));
    let mut args: Vec<String> = [plan, "--profile", "smoke", "--device", "cpu"]
        .iter()
        .chain(["--data-dir", "golden-data"].iter())
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    args.extend([
        "--runs-dir".into(),
        dir.path().join("runs").display().to_string(),
        "--results-dir".into(),
        dir.path().join("results").display().to_string(),
    ]);
    selfsup_reproduce::run(&args, &selfsup_methods::registry()).unwrap();
    let res = dir.path().join("results").join(plan).join("smoke");
    let md = std::fs::read_to_string(res.join("table.md")).unwrap();
    let results: Value =
        serde_json::from_slice(&std::fs::read(res.join("results.json")).unwrap()).unwrap();
    let stages = results["stages"].as_array().unwrap();
    assert!(!stages.is_empty());
    let ran: Vec<&Value> = stages.iter().filter(|s| s["skipped"] != true).collect();
    assert!(ran.is_empty(), "{plan}: the replay ran stages instead of reusing them: {ran:?}");
    (md, results)
}

fn expected(plan: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/expected").join(plan);
    std::fs::read_to_string(p.join("table.md")).unwrap()
}

/// The lines of a table without the command line.
fn lines(md: &str) -> Vec<&str> {
    md.lines().filter(|l| !l.starts_with("Command: `")).collect()
}

#[test]
fn contrastive_plans_give_the_tables_of_the_old_reproductions() {
    let sets = [
        "--dataset",
        "synthetic:96:32",
        "--set",
        "train_images=64",
        "--set",
        "probe_train_images=64",
        "--set",
        "test_images=32",
    ];
    for plan in ["simclr", "moco", "instance-discrimination"] {
        let (md, results) = replay(plan, &sets);
        assert_eq!(lines(&md), lines(&expected(plan)), "{plan}");
        assert!(md.contains("Command: `"), "{md}");
        // The tables are in results.json too, every cell with its spread.
        let top1 = &results["tables"]["top1"];
        assert_eq!(top1[0]["encoder"], "trained");
        assert_eq!(top1[0]["knn"]["n"], 2, "{top1}");
        assert_eq!(top1[2]["encoder"], "trained − random");
    }
}

#[test]
fn rotnet_plan_gives_the_tables_of_the_old_reproduction() {
    let (md, results) = replay("rotnet", &["--dataset", "synthetic:320:32"]);
    let old = expected("rotnet");
    let split = |s: &str| s.split_once("## Findings").map(|(a, b)| (a.to_string(), b.to_string()));
    let ((tables, findings), (old_tables, _)) = (split(&md).unwrap(), split(&old).unwrap());
    assert_eq!(tables, old_tables);
    // The findings, decided by the margin rule over the two smoke probe seeds.
    let items: Vec<&str> = findings.lines().filter(|l| l.starts_with("- ")).collect();
    assert_eq!(items.len(), 4, "{findings}");
    assert!(items[0].starts_with("- RotNet ahead of random init at every block (non-linear probe): **yes** (block1 +10.55 ± 3.87"), "{}", items[0]);
    assert!(items[1].contains("**not resolved at this budget (block3 by mean)**"), "{}", items[1]);
    assert!(items[2].contains("**not resolved at this budget** (four − two_0_180 +2.73 ± 3.87, four − two_90_270 -0.78 ± 5.52"), "{}", items[2]);
    assert!(
        items[3].contains("**no by sign (one seed: no margin)** (2/class -14.84"),
        "{}",
        items[3]
    );
    let f = results["findings"].as_array().unwrap();
    assert_eq!(f.len(), 4);
    assert_eq!(f[0]["resolved"], true);
    assert_eq!(f[1]["resolved"], false);
    let t = &results["tables"];
    assert_eq!(t["rotations"][0]["run"], "sets_four");
    assert_eq!(t["few_labels"][0]["per_class"], 2);
    assert_eq!(t["few_labels"][0]["train_images"], 20);
    assert_eq!(t["baselines"][0]["ours"]["n"], 1);
}
