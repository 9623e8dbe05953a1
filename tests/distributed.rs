//! Data-parallel training through `selfsup launch` (c10d's TCPStore and the store-backed
//! collectives, two ranks on this machine) against one process at the same global batch.
use crate::util::{err, ok, selfsup};

/// `selfsup train` arguments: RotNet on a batch-norm-free tiny trunk, global batch 16, 2
/// epochs of 64 synthetic images, into `out`.
fn rotnet_no_bn(out: &str) -> Vec<String> {
    let mut a: Vec<String> =
        ["train", "--method", "rotnet", "--data", "synthetic:64:16", "--device", "cpu"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    a.extend(["--out".into(), out.into(), "--no-progress".into()]);
    for set in [
        r#"encoder={"kind":"tiny","width":4,"batch_norm":false}"#,
        "train.batch_size=16",
        "train.epochs=2",
        "train.threads=1",
        "train.log_every=1",
    ] {
        a.extend(["--set".to_string(), set.to_string()]);
    }
    a
}

fn weights(run: &std::path::Path) -> Vec<(String, tch::Tensor)> {
    let mut w = tch::Tensor::read_safetensors(run.join("checkpoint/model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

#[test]
fn two_ranks_at_half_the_batch_train_like_one_process_at_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let single = rotnet_no_bn("single");
    let single: Vec<&str> = single.iter().map(String::as_str).collect();
    ok(&selfsup(&single, dir.path()));
    let mut job = vec!["launch".to_string(), "--nproc".into(), "2".into()];
    job.extend(rotnet_no_bn("job"));
    let job: Vec<&str> = job.iter().map(String::as_str).collect();
    let out = ok(&selfsup(&job, dir.path()));
    // Rank 0 alone prints and writes.
    assert_eq!(out.matches("trained 8 steps (2 epochs)").count(), 1, "{out}");
    let (a, b) = (weights(&dir.path().join("single")), weights(&dir.path().join("job")));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let diff = (ta - tb).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{na}: max |single - job| = {diff}");
    }
    // The same steps, logged once, with the global batch's rate.
    let lines = |run: &str| {
        std::fs::read_to_string(dir.path().join(run).join("metrics.jsonl")).unwrap().lines().count()
    };
    assert_eq!(lines("single"), lines("job"));
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("job/checkpoint/trainer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["world_size"], 2, "{state}");
    // A checkpoint of a 2-process job does not resume in one process.
    let mut resume: Vec<String> = rotnet_no_bn("job");
    resume.extend(["--resume".into(), "--set".into(), "train.epochs=3".into()]);
    let resume: Vec<&str> = resume.iter().map(String::as_str).collect();
    let e = err(&selfsup(&resume, dir.path()));
    assert!(e.contains("written by a job of 2 processes, this one has 1"), "{e}");
}

#[test]
fn a_failing_rank_stops_the_job_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // 15 images a step cannot be split between 2 ranks: both refuse, the launcher names one.
    let mut job = vec!["launch".to_string(), "--nproc".into(), "2".into()];
    job.extend(rotnet_no_bn("job"));
    job.extend(["--set".into(), "train.batch_size=15".into()]);
    let job: Vec<&str> = job.iter().map(String::as_str).collect();
    let out = selfsup(&job, dir.path());
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("train.batch_size = 15 is not divisible by the job's 2 processes"), "{e}");
    assert!(e.contains("error: rank ") && e.contains(" of 2 exited with exit status: 1"), "{e}");
    assert!(!dir.path().join("job/checkpoint").exists());
}

#[test]
fn bad_launcher_variables_are_one_line_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let args = rotnet_no_bn("r");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_selfsup"))
        .args(&args)
        .current_dir(dir.path())
        .env("WORLD_SIZE", "2")
        .env("RANK", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", "29500")
        .output()
        .unwrap();
    let e = err(&out);
    assert!(e.contains("RANK = 2 is not below WORLD_SIZE = 2"), "{e}");
    assert!(!dir.path().join("r").exists());
}
