//! Fetching and verifying against local files (`file://` URLs; no network).
use std::path::Path;

use selfsup_data::fetch::{self, Archive, Entry, FetchError, Fetched};

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn entry(url: String, file: &str, digest: String, extract: &str, files: &[&str]) -> Entry {
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
            size: 0,
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
    let err = fetch::fetch_entry(&e, &tmp.path().join("data")).unwrap_err();
    assert!(matches!(err, FetchError::Checksum { .. }));
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
