//! Data-parallel training through `selfsup launch` (c10d's TCPStore and the store-backed
//! collectives, two ranks on this machine) against one process at the same global batch.
use crate::util::{err, ok, selfsup};

/// `selfsup train` arguments: `method` on 64 synthetic images, global batch 16, 2 epochs,
/// into `out`, with the extra `--set`s.
fn train_args(method: &str, out: &str, sets: &[&str]) -> Vec<String> {
    let mut a: Vec<String> =
        ["train", "--method", method, "--data", "synthetic:64:16", "--device", "cpu"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    a.extend(["--out".into(), out.into(), "--no-progress".into()]);
    for set in ["train.batch_size=16", "train.epochs=2", "train.threads=1", "train.log_every=1"]
        .iter()
        .chain(sets)
    {
        a.extend(["--set".to_string(), set.to_string()]);
    }
    a
}

const TINY_NO_BN: &str = r#"encoder={"kind":"tiny","width":4,"batch_norm":false}"#;
const TINY: &str = r#"encoder={"kind":"tiny","width":4}"#;

/// RotNet on a batch-norm-free tiny trunk.
fn rotnet_no_bn(out: &str) -> Vec<String> {
    train_args("rotnet", out, &[TINY_NO_BN])
}

fn tensors(run: &std::path::Path, file: &str) -> Vec<(String, tch::Tensor)> {
    let mut w = tch::Tensor::read_safetensors(run.join("checkpoint").join(file)).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// The largest |single − job| over the tensors of `file` whose names start with `prefix`,
/// after checking that both runs hold the same names.
fn max_diff(dir: &std::path::Path, file: &str, prefix: &str) -> (f64, String) {
    let pick = |run: &str| -> Vec<(String, tch::Tensor)> {
        tensors(&dir.join(run), file).into_iter().filter(|(n, _)| n.starts_with(prefix)).collect()
    };
    let (a, b) = (pick("single"), pick("job"));
    assert!(!a.is_empty(), "no tensor under `{prefix}` in {file}");
    assert_eq!(
        a.iter().map(|t| &t.0).collect::<Vec<_>>(),
        b.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    let mut worst = (0.0, String::new());
    for ((name, ta), (_, tb)) in a.iter().zip(&b) {
        let d = (ta.to_kind(tch::Kind::Double) - tb.to_kind(tch::Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        if d >= worst.0 {
            worst = (d, name.clone());
        }
    }
    worst
}

/// The step lines' losses of a run.
fn step_losses(run: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// Trains `method` with `sets` once in one process (`single`) and once as a 2-rank job (`job`)
/// in a new folder, checks that rank 0 alone printed, that the weights end within `tol` and
/// that every step logged the same loss (the job's being the mean of the ranks' losses).
fn single_and_job(method: &str, sets: &[&str], tol: f64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let single = train_args(method, "single", sets);
    let single: Vec<&str> = single.iter().map(String::as_str).collect();
    ok(&selfsup(&single, dir.path()));
    let mut job = vec!["launch".to_string(), "--nproc".into(), "2".into()];
    job.extend(train_args(method, "job", sets));
    let job: Vec<&str> = job.iter().map(String::as_str).collect();
    let out = ok(&selfsup(&job, dir.path()));
    assert_eq!(out.matches("trained 8 steps (2 epochs)").count(), 1, "{out}");
    let (diff, name) = max_diff(dir.path(), "model.safetensors", "");
    assert!(diff < tol, "{method}: {name}: max |single - job| = {diff}");
    let (a, b) = (step_losses(&dir.path().join("single")), step_losses(&dir.path().join("job")));
    assert_eq!(a.len(), 8, "{method}: a step line per step");
    assert_eq!(a.len(), b.len());
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + x.abs()), "{method} step {step}: loss {x} vs {y}");
    }
    dir
}

#[test]
fn two_ranks_at_half_the_batch_train_like_one_process_at_the_whole_batch() {
    let dir = single_and_job("rotnet", &[TINY_NO_BN], 1e-4);
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("job/checkpoint/trainer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["world_size"], 2, "{state}");
    // A checkpoint of a 2-process job does not resume in one process.
    let mut resume: Vec<String> = rotnet_no_bn("job");
    resume.extend(["--resume".into(), "--set".into(), "train.epochs=3".into()]);
    let args: Vec<&str> = resume.iter().map(String::as_str).collect();
    let e = err(&selfsup(&args, dir.path()));
    assert!(e.contains("written by a job of 2 processes, this one has 1"), "{e}");
    assert!(e.contains("train.allow_world_size_change=true"), "{e}");
    // Unless the resume says so: one process goes on at the same global batch.
    resume.extend(["--set".into(), "train.allow_world_size_change=true".into()]);
    let args: Vec<&str> = resume.iter().map(String::as_str).collect();
    ok(&selfsup(&args, dir.path()));
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("job/checkpoint/trainer.json")).unwrap(),
    )
    .unwrap();
    // A single process's checkpoint leaves `world_size` out (it is 1).
    assert_eq!(state["world_size"], serde_json::Value::Null, "{state}");
    assert_eq!(state["global_step"], 12, "{state}");
}

#[test]
fn gradients_sent_in_buckets_during_backward_train_as_one_message_after_it() {
    // Synchronised batch norm: its backward's collectives run between the buckets' (started
    // from gradient hooks on the same thread), so the order of the job's collectives is put to
    // the test too. Buckets of about 100 bytes: a bucket or so a tensor.
    let dir = tempfile::tempdir().unwrap();
    for (out, bucket_mb) in [("after", "0"), ("during", "0.0001")] {
        let set = format!("train.bucket_mb={bucket_mb}");
        let mut job = vec!["launch".to_string(), "--nproc".into(), "2".into()];
        job.extend(train_args("rotnet", out, &[TINY, "train.sync_batch_norm=true", &set]));
        let job: Vec<&str> = job.iter().map(String::as_str).collect();
        ok(&selfsup(&job, dir.path()));
    }
    let a = tensors(&dir.path().join("after"), "model.safetensors");
    let b = tensors(&dir.path().join("during"), "model.safetensors");
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name} differs");
    }
    assert_eq!(step_losses(&dir.path().join("after")), step_losses(&dir.path().join("during")));
}

#[test]
fn with_synchronised_batch_norm_a_job_trains_like_one_process() {
    // Batch norm in the trunk: the running statistics are among the compared tensors.
    single_and_job("rotnet", &[TINY, "train.sync_batch_norm=true"], 1e-4);
}

#[test]
fn simclr_with_gathered_negatives_matches_one_process_loss_for_loss() {
    // Every anchor against the 2 × 16 views of the global batch; BN synchronised in the trunk
    // and the projection head, as the paper's global BN.
    single_and_job("simclr", &[TINY, "train.sync_batch_norm=true"], 1e-4);
}

#[test]
fn moco_queues_hold_the_same_keys_as_one_process() {
    // Shuffling BN over 2 sub-batches of the global batch: one per rank in the job.
    let dir = single_and_job(
        "moco",
        &[TINY, r#"method_config={"version":"v2","queue_size":64,"bn_splits":2}"#],
        1e-4,
    );
    let (diff, name) = max_diff(dir.path(), "trainer.safetensors", "method.");
    assert!(diff < 1e-4, "moco: {name}: max |single - job| = {diff}");
    let names: Vec<String> =
        tensors(&dir.path().join("job"), "trainer.safetensors").into_iter().map(|t| t.0).collect();
    assert!(names.iter().any(|n| n == "method.queue"), "{names:?}");
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

#[test]
fn memory_banks_stay_the_same_on_every_rank_and_as_in_one_process() {
    // The full softmax over the bank (NCE's noise would be drawn per rank): every rank writes
    // every rank's features, so rank 0's bank is the single process's.
    let dir = single_and_job(
        "instance-discrimination",
        &[TINY_NO_BN, r#"method_config={"objective":"softmax"}"#],
        1e-3,
    );
    let (diff, name) = max_diff(dir.path(), "trainer.safetensors", "method.memory_bank");
    assert!(diff < 1e-4, "{name}: max |single - job| = {diff}");
}

#[test]
fn cpc_scores_against_the_patches_of_the_global_batch() {
    // Without per-patch augmentation (drawn per rank), the job is the single process.
    single_and_job("cpc", &[TINY_NO_BN, r#"method_config={"patch_augment":false}"#], 1e-3);
}

#[test]
fn colorization_priors_count_every_ranks_pixels() {
    // The class-rebalancing prior counts the global batch's pixels on every rank (without that,
    // each rank's loss weights came from its own shard).
    let dir = single_and_job("colorization", &[TINY_NO_BN, "train.sync_batch_norm=true"], 1e-3);
    let (diff, name) = max_diff(dir.path(), "trainer.safetensors", "method.colorization.prior");
    assert_eq!(diff, 0.0, "{name}");
}
