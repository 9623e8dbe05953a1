//! Fetching and verifying against local files (`file://` URLs; no network).
use std::path::Path;

use selfsup_data::fetch::{self, Archive, Entry, FetchError, Fetched};

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A one-archive entry of `size` bytes.
fn entry(url: String, file: &str, digest: String, extract: &str, files: &[&str]) -> Entry {
    let size =
        url.strip_prefix("file://").and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
    Entry {
        name: "toy".into(),
        description: "a test dataset".into(),
        folder: "toy-folder".into(),
        layout: "one file".into(),
        files: files.iter().map(|s| s.to_string()).collect(),
        archives: vec![Archive {
            file: file.into(),
            url,
            mirrors: vec![],
            size,
            sha256: digest,
            alternate_sha256: vec![],
            extract: extract.into(),
        }],
    }
}

#[test]
fn embedded_manifest_lists_the_five_datasets() {
    let m = fetch::manifest().unwrap();
    let names: Vec<&str> = m.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["cifar10", "cifar100", "stl10", "mnist", "fashion-mnist"]);
    for e in &m {
        for a in &e.archives {
            assert_eq!(a.sha256.len(), 64, "{}", a.file);
            assert!(a.url.starts_with("http"), "{}", a.url);
        }
    }
    let e = fetch::entry("imagenet").unwrap_err().to_string();
    assert!(e.contains("no dataset `imagenet`") && e.contains("cifar10"), "{e}");
}

#[test]
fn fashion_mnist_debian_files_verify_against_the_manifest() {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    if !dir.is_dir() {
        eprintln!("note: {} absent; skipping", dir.display());
        return;
    }
    let e = fetch::entry("fashion-mnist").unwrap();
    for a in &e.archives {
        fetch::verify_file(&dir.join(&a.file), a).unwrap();
    }
}

#[test]
fn fetch_plain_file_from_a_local_url_then_reuse_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.bin");
    std::fs::write(&src, b"hello dataset").unwrap();
    let data = tmp.path().join("data");
    let e = entry(
        format!("file://{}", src.display()),
        "payload.bin",
        sha(b"hello dataset"),
        "none",
        &["payload.bin"],
    );
    let got = fetch::fetch_entry(&e, &data).unwrap();
    assert_eq!(got, Fetched::Ready(data.join("toy-folder")));
    assert_eq!(std::fs::read(data.join("toy-folder/payload.bin")).unwrap(), b"hello dataset");
    assert_eq!(
        fetch::fetch_entry(&e, &data).unwrap(),
        Fetched::AlreadyPresent(data.join("toy-folder"))
    );
}

#[test]
fn checksum_mismatch_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.bin");
    std::fs::write(&src, b"tampered").unwrap();
    let e = entry(
        format!("file://{}", src.display()),
        "payload.bin",
        sha(b"original"),
        "none",
        &["payload.bin"],
    );
    let data = tmp.path().join("data");
    let err = fetch::fetch_entry(&e, &data).unwrap_err();
    assert!(matches!(err, FetchError::Checksum { .. }));
    // Checked before the rename: nothing bad is left in place, not even the part.
    assert!(!data.join("toy-folder/payload.bin").exists());
    assert!(!data.join("toy-folder/payload.bin.part").exists());
    let msg = err.to_string();
    assert!(msg.contains("toy-folder/payload.bin: sha256 mismatch (expected "), "{msg}");
    assert!(msg.contains(&sha(b"tampered")), "{msg}");
    // As a DataError it keeps the message.
    let d: selfsup_data::DataError = err.into();
    assert_eq!(d.to_string(), msg);
}

#[test]
fn offline_fetch_says_where_to_put_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let e = entry(
        "file:///nonexistent/selfsup/x.tar.gz".into(),
        "x.tar.gz",
        sha(b"x"),
        "tar.gz",
        &["a.bin"],
    );
    let msg = fetch::fetch_entry(&e, &data).unwrap_err().to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(msg.starts_with("toy: cannot download x.tar.gz ("), "{msg}");
    assert!(
        msg.contains(&format!(
            "put x.tar.gz (sha256 {}) at {}",
            sha(b"x"),
            data.join(".downloads/x.tar.gz").display()
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("or the unpacked dataset in {}", data.join("toy-folder").display())),
        "{msg}"
    );
}

#[test]
fn tar_gz_archives_are_unpacked_into_the_data_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let stage = tmp.path().join("stage");
    std::fs::create_dir_all(stage.join("toy-folder")).unwrap();
    std::fs::write(stage.join("toy-folder/a.bin"), b"aaa").unwrap();
    let archive = tmp.path().join("toy.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&stage)
        .arg("toy-folder")
        .status()
        .unwrap();
    assert!(st.success());
    let digest = fetch::sha256_file(&archive).unwrap();
    let data = tmp.path().join("data");
    let e =
        entry(format!("file://{}", archive.display()), "toy.tar.gz", digest, "tar.gz", &["a.bin"]);
    assert_eq!(fetch::fetch_entry(&e, &data).unwrap(), Fetched::Ready(data.join("toy-folder")));
    assert_eq!(std::fs::read(data.join("toy-folder/a.bin")).unwrap(), b"aaa");
    // An archive without the promised file is an error naming it.
    let bad = entry(
        format!("file://{}", archive.display()),
        "toy.tar.gz",
        fetch::sha256_file(&archive).unwrap(),
        "tar.gz",
        &["b.bin"],
    );
    let msg = fetch::fetch_entry(&bad, &tmp.path().join("data2")).unwrap_err().to_string();
    assert!(msg.ends_with("toy-folder/b.bin: missing after unpacking"), "{msg}");
}

#[test]
fn an_interrupted_download_resumes_from_its_part_and_a_bad_part_starts_afresh() {
    let tmp = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let src = tmp.path().join("src.bin");
    std::fs::write(&src, &body).unwrap();
    let data = tmp.path().join("data");
    let e = entry(format!("file://{}", src.display()), "p.bin", sha(&body), "none", &["p.bin"]);
    let target = data.join("toy-folder/p.bin");
    let part = data.join("toy-folder/p.bin.part");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    // The first 40,000 bytes of an interrupted transfer: resumed, checked, put in place.
    std::fs::write(&part, &body[..40_000]).unwrap();
    fetch::fetch_entry(&e, &data).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), body);
    assert!(!part.exists());
    // A part whose bytes are wrong: the resumed file fails the check and the part is deleted,
    // so that the next attempt starts afresh (and succeeds).
    std::fs::remove_file(&target).unwrap();
    std::fs::write(&part, vec![7u8; 40_000]).unwrap();
    let msg = fetch::fetch_entry(&e, &data).unwrap_err().to_string();
    assert!(msg.contains("p.bin: sha256 mismatch") && msg.contains("100000 bytes"), "{msg}");
    assert!(!part.exists() && !target.exists());
    fetch::fetch_entry(&e, &data).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), body);
}

#[test]
fn the_manifest_size_is_checked_and_a_corrupt_file_in_place_is_fetched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.bin");
    std::fs::write(&src, b"payload").unwrap();
    let data = tmp.path().join("data");
    let mut e =
        entry(format!("file://{}", src.display()), "p.bin", sha(b"payload"), "none", &["p.bin"]);
    e.archives[0].size = 8;
    let msg = fetch::fetch_entry(&e, &data).unwrap_err().to_string();
    assert!(msg.contains("8 bytes") && msg.contains("got ") && msg.contains("7 bytes"), "{msg}");
    assert!(!data.join("toy-folder/p.bin").exists());
    // A file in place that fails the check is moved aside and downloaded again.
    e.archives[0].size = 7;
    let target = data.join("toy-folder/p.bin");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, b"garbage").unwrap();
    assert_eq!(fetch::fetch_entry(&e, &data).unwrap(), Fetched::Ready(data.join("toy-folder")));
    assert_eq!(std::fs::read(&target).unwrap(), b"payload");
    assert_eq!(std::fs::read(data.join("toy-folder/p.bin.corrupt")).unwrap(), b"garbage");
}
