//! The command line: listing methods, training a tiny run end to end, resuming, inspecting a
//! checkpoint, and one-line errors for bad input.
use crate::util::{err, ok, selfsup};

#[test]
fn methods_lists_every_registered_method() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&selfsup(&["methods"], dir.path()));
    for name in ["rotnet", "simclr", "moco", "instance-discrimination", "supervised"] {
        assert!(out.lines().any(|l| l.starts_with(name)), "{name} missing from:\n{out}");
    }
}

#[test]
fn unknown_method_names_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let e = err(&selfsup(
        &["train", "--method", "rotnot", "--data", "synthetic:32:16", "--out", "r"],
        dir.path(),
    ));
    assert!(e.contains("rotnot") && e.contains("rotnet"), "{e}");
    assert!(!dir.path().join("r").exists(), "a failed start must not create the run folder");
}

#[test]
fn bad_config_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let base = ["train", "--method", "rotnet", "--data", "synthetic:32:16", "--out", "r"];
    let with = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        selfsup(&a, dir.path())
    };
    let e = err(&with(&["--set", "train.epocs=3"]));
    assert!(e.contains("epocs"), "{e}");
    let e = err(&with(&["--set", "method_config.rotations=seven"]));
    assert!(e.contains("seven") || e.contains("rotations"), "{e}");
    let e = err(&with(&["--set", "device=gpu"]));
    assert!(e.contains("gpu"), "{e}");
    let e = err(&with(&["--config", "missing.json"]));
    assert!(e.contains("missing.json"), "{e}");
    // The OS error once, not once per link of the error chain.
    assert_eq!(e.matches("os error 2").count(), 1, "{e}");
    std::fs::write(dir.path().join("broken.json"), "{\"seed\": ").unwrap();
    let e = err(&with(&["--config", "broken.json"]));
    assert!(e.contains("broken.json"), "{e}");
    let e = err(&selfsup(
        &["train", "--method", "rotnet", "--data", "cifar11", "--out", "r2"],
        dir.path(),
    ));
    assert!(e.contains("cifar11"), "{e}");
}

#[test]
fn train_resume_and_info_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "train",
        "--method",
        "rotnet",
        "--data",
        "synthetic:64:16",
        "--device",
        "cpu",
        "--out",
        "run",
        "--no-progress",
        "--set",
        "encoder={\"kind\":\"tiny\",\"width\":4}",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.epochs=2",
        "--set",
        "train.max_steps=3",
    ];
    let out = ok(&selfsup(&args, dir.path()));
    assert!(out.contains("trained 3 steps"), "{out}");
    let run = dir.path().join("run");
    for f in
        ["config.json", "metrics.jsonl", "checkpoint/model.safetensors", "checkpoint/trainer.json"]
    {
        assert!(run.join(f).exists(), "{f} missing");
    }
    // Same folder again without --resume: refused, one line.
    let e = err(&selfsup(&args, dir.path()));
    assert!(e.contains("--resume"), "{e}");
    // Resume from the saved config to the end of epoch 2 (4 steps per epoch).
    let out = ok(&selfsup(
        &[
            "train",
            "--config",
            "run/config.json",
            "--set",
            "train.max_steps=null",
            "--out",
            "run",
            "--resume",
            "--no-progress",
        ],
        dir.path(),
    ));
    assert!(out.contains("trained 8 steps (2 epochs)"), "{out}");
    let info = ok(&selfsup(&["info", "run"], dir.path()));
    assert!(info.contains("method:      rotnet"), "{info}");
    assert!(info.contains("step 8"), "{info}");
    assert!(info.contains("tap block2"), "{info}");
    // A damaged checkpoint is named, not a panic.
    std::fs::write(run.join("checkpoint/model.safetensors"), b"garbage").unwrap();
    let e = err(&selfsup(&["info", "run"], dir.path()));
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn knn_monitor_eval_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&selfsup(
        &[
            "train",
            "--method",
            "rotnet",
            "--data",
            "synthetic:64:16",
            "--device",
            "cpu",
            "--out",
            "run",
            "--no-progress",
            "--knn-every",
            "1",
            "--set",
            "encoder={\"kind\":\"tiny\",\"width\":4}",
            "--set",
            "train.batch_size=16",
        ],
        dir.path(),
    ));
    assert!(out.contains("trained 4 steps"), "{out}");
    let metrics = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    let epoch: serde_json::Value =
        serde_json::from_str(metrics.lines().find(|l| l.contains("\"epoch\",")).unwrap_or_else(
            || metrics.lines().rfind(|l| l.contains("knn_top1")).expect("a kNN line"),
        ))
        .unwrap();
    let knn = epoch["knn_top1"].as_f64().expect("knn_top1 logged");
    assert!((0.0..=100.0).contains(&knn), "{knn}");

    // kNN eval of the run, with `extra` flags; its report is read back from `out`.
    let knn_eval = |extra: &[&str]| {
        let mut args =
            vec!["eval", "--checkpoint", "run", "--protocol", "knn", "--data", "synthetic:64:16"];
        args.extend_from_slice(&["--device", "cpu"]);
        args.extend_from_slice(extra);
        selfsup(&args, dir.path())
    };
    let report = |out: &str| -> serde_json::Value {
        let path = dir.path().join(out).join("eval/knn.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let e = ok(&knn_eval(&[]));
    assert!(e.contains("block2"), "{e}");
    let r = report("run");
    assert_eq!(r["protocol"], "knn");
    assert_eq!(r["train"]["len"], 64);
    // Evaluated with the normalisation the run was trained with (RotNet's CIFAR-10 mean and
    // std, recorded in the checkpoint), not the evaluation images' own statistics.
    let norm = &r["settings"]["normalization"];
    let (mean, std) = (norm["mean"][0].as_f64().unwrap(), norm["std"][2].as_f64().unwrap());
    assert!((mean - 125.3 / 255.0).abs() < 1e-6 && (std - 66.7 / 255.0).abs() < 1e-6, "{norm}");
    let state = std::fs::read_to_string(dir.path().join("run/checkpoint/trainer.json")).unwrap();
    assert!(state.contains("\"normalization\""), "{state}");
    assert!(dir.path().join("run/eval/knn.md").exists());
    // Deterministic by default (oneDNN off), recorded beside the thread count.
    assert_eq!(r["deterministic"], true, "{r}");
    assert!(r["threads"].as_i64().is_some_and(|t| t >= 1), "{r}");
    // Seeded subsets of the labeled splits, recorded in the report; zero is refused by name.
    // (`--deterministic false` as well: recorded.)
    let sub = ["--train-images", "40", "--test-images", "24", "--out", "sub"];
    ok(&knn_eval(&[&sub[..], &["--deterministic", "false"]].concat()));
    let r = report("sub");
    assert_eq!((r["train"]["len"].as_u64(), r["test"]["len"].as_u64()), (Some(40), Some(24)));
    assert_eq!(r["deterministic"], false, "{r}");
    let e = err(&knn_eval(&["--train-images", "0", "--out", "sub0"]));
    assert!(e.contains("--train-images"), "{e}");
    assert!(!dir.path().join("sub0").exists(), "a refused eval must not write");
    let e = err(&selfsup(
        &[
            "eval",
            "--checkpoint",
            "run",
            "--protocol",
            "linear",
            "--data",
            "synthetic:64:16",
            "--set",
            "epoks=1",
        ],
        dir.path(),
    ));
    assert!(e.contains("epoks"), "{e}");

    let x = ok(&selfsup(&["export", "run", "--out", "enc.safetensors"], dir.path()));
    assert!(x.contains("enc.safetensors"), "{x}");
    let bytes = std::fs::read(dir.path().join("enc.safetensors")).unwrap();
    assert!(bytes.len() > 100);
}

#[test]
fn an_encoder_too_big_for_the_images_is_one_line() {
    // ImageNet AlexNet on 16-pixel images: libtorch rejects the shapes inside the forward pass.
    let dir = tempfile::tempdir().unwrap();
    let out = selfsup(
        &[
            "train",
            "--method",
            "rotnet",
            "--data",
            "synthetic:32:16",
            "--device",
            "cpu",
            "--out",
            "r",
            "--no-progress",
            "--set",
            "encoder={\"kind\":\"alexnet\",\"variant\":\"imagenet\"}",
            "--set",
            "train.batch_size=8",
        ],
        dir.path(),
    );
    let e = err(&out);
    assert!(!dir.path().join("r/checkpoint").exists(), "{e}");
}

/// `model_sha256` of a run's checkpoint: its weights, bit for bit.
fn model_hash(run: &std::path::Path) -> String {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoint/trainer.json")).unwrap(),
    )
    .unwrap();
    v["model_sha256"].as_str().unwrap().to_string()
}

/// `selfsup train` arguments for a RotNet run of a width-8 tiny trunk, batch 8, on `data`,
/// into `out`, with `sets` as further `--set`s.
fn tiny_rotnet(out: &str, data: &str, sets: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--method", "rotnet", "--data", data, "--device", "cpu"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(["--out".into(), out.into(), "--no-progress".into()]);
    for set in [r#"encoder={"kind":"tiny","width":8}"#, "train.batch_size=8"].iter().chain(sets) {
        a.extend(["--set".to_string(), set.to_string()]);
    }
    a
}

#[test]
fn sigterm_writes_a_checkpoint_that_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let args =
        |out: &str| tiny_rotnet(out, "synthetic:256:16", &["train.epochs=3", "train.log_every=1"]);
    fn a(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    ok(&selfsup(&a(&args("full")), dir.path()));
    // The same run, stopped by SIGTERM once it has taken a few steps.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_selfsup"))
        .args(args("part"))
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("part/metrics.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 5 {
        assert!(started.elapsed().as_secs() < 120, "the run never logged 5 steps");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run finished before the signal: {stderr}");
    assert!(stderr.contains("interrupted at step") && stderr.contains("--resume"), "{stderr}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("part/checkpoint/trainer.json")).unwrap(),
    )
    .unwrap();
    assert!(state["global_step"].as_u64().unwrap() < 96, "{state}");
    // Resumed as the message says, it ends where the uninterrupted run ended.
    let mut resume = args("part");
    resume.push("--resume".into());
    ok(&selfsup(&a(&resume), dir.path()));
    assert_eq!(model_hash(&dir.path().join("full")), model_hash(&dir.path().join("part")));
}

#[test]
fn sigkill_at_random_moments_then_resume_ends_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    // A checkpoint after every step (a microscopic `checkpoint_minutes`), so that many kills
    // land while one is being written.
    let args = |out: &str| {
        let mut a = tiny_rotnet(
            out,
            "synthetic:1024:16",
            &["train.epochs=2", "train.checkpoint_minutes=1e-9"],
        );
        a.push("--resume".into());
        a
    };
    let run = |out: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_selfsup"))
            .args(args(out))
            .current_dir(dir.path())
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    assert!(run("full").wait().unwrap().success());
    let part = dir.path().join("part");
    let step = || -> Option<u64> {
        let t = std::fs::read_to_string(part.join("checkpoint/trainer.json")).ok()?;
        serde_json::from_str::<serde_json::Value>(&t).ok()?["global_step"].as_u64()
    };
    // Kills, each followed by a resume: the first ten the moment a checkpoint's write is seen
    // to begin (`checkpoint.new/` appears), the others after pseudo-random delays (a fixed
    // xorshift sequence).
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let (mut kills, mut mid_write, mut finished) = (0, 0, false);
    for attempt in 0..36 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut child = run("part");
        if attempt < 10 {
            let t = std::time::Instant::now();
            while !part.join("checkpoint.new").exists() && t.elapsed().as_secs() < 5 {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        } else {
            std::thread::sleep(std::time::Duration::from_millis(300 + rng % 900));
        }
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            finished = true;
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        if part.join("checkpoint.new").exists() || !part.join("checkpoint").exists() {
            mid_write += 1;
        }
    }
    eprintln!(
        "{kills} SIGKILLs, {mid_write} of them during a checkpoint's write or switch; last \
         checkpoint at step {:?}",
        step()
    );
    assert!(kills >= 5, "the run finished before enough kills: {kills}");
    if !finished {
        let out = run("part").wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(step(), Some(256));
    assert_eq!(model_hash(&dir.path().join("full")), model_hash(&part));
}

#[test]
fn reproduce_configs_only_writes_the_plan_s_run_configs_and_trains_nothing() {
    // The paper profile on a machine without CUDA: refused for a run, fine for its configs.
    let dir = tempfile::tempdir().unwrap();
    let args = ["reproduce", "rotnet", "--profile", "paper", "--dataset", "synthetic:64:32"];
    let e = err(&selfsup(&args, dir.path()));
    assert!(e.contains("--device cpu"), "{e}");
    let mut with = args.to_vec();
    with.extend(["--configs-only", "--results-dir", "res"]);
    let out = ok(&selfsup(&with, dir.path()));
    let paths: Vec<&str> = out.lines().collect();
    assert!(paths.len() >= 2, "{out}");
    let configs = dir.path().join("res/rotnet/paper/configs");
    for p in &paths {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(p)).unwrap()).unwrap();
        assert!(v["train"]["epochs"].as_u64().unwrap() > 0, "{p}");
        assert!(dir.path().join(p).starts_with(&configs), "{p}");
    }
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(paths[0])).unwrap()).unwrap();
    assert_eq!(first["method"], "rotnet");
    assert!(dir.path().join("res/rotnet/paper/plan.json").is_file());
    assert!(!dir.path().join("runs").exists(), "nothing trained");
    assert!(!dir.path().join("res/rotnet/paper/run.log").exists());
}

/// The binary's C allocator is jemalloc, keeping freed pages (`crates/alloc`): its statistics,
/// printed at exit on request through `MALLOC_CONF`, show the options in force.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_c_allocator_is_jemalloc_keeping_freed_pages() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_selfsup"))
        .arg("methods")
        .current_dir(dir.path())
        .env("MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(stats.contains("Begin jemalloc statistics"), "{stats}");
    for opt in ["opt.dirty_decay_ms: -1", "opt.muzzy_decay_ms: -1"] {
        assert!(stats.contains(opt), "{opt} missing from:\n{stats}");
    }
}
