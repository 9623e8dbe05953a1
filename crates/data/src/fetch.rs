//! Downloading and verifying the datasets listed in `datasets/manifest.json` (embedded at build
//! time). Downloads go through the `curl` program and archives are unpacked with `tar`, so the
//! module needs only std, `serde_json` and `sha2`: `xtask` (which must build without libtorch)
//! compiles this same file for `cargo xtask fetch`.
//!
//! Offline, a fetch fails with one line naming the file, its SHA-256 and the path where to put
//! it by hand.
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The manifest text, `datasets/manifest.json`.
pub const MANIFEST: &str = include_str!("../../../datasets/manifest.json");

/// What can go wrong while fetching.
#[derive(Debug)]
pub enum FetchError {
    /// The manifest is malformed or does not list the dataset.
    Manifest(String),
    /// No source could be downloaded (offline, or every URL failed).
    Unavailable(Box<Unavailable>),
    /// A file whose digest is not the manifest's.
    Checksum {
        /// The file.
        path: PathBuf,
        /// The manifest's digest (and size, after a download).
        expected: String,
        /// The file's digest (and size, after a download).
        actual: String,
    },
    /// An I/O error on a named file.
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `tar` failed or the archive did not contain the expected files.
    Extract {
        /// The archive.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// Details of [`FetchError::Unavailable`].
#[derive(Debug)]
pub struct Unavailable {
    /// The dataset.
    pub dataset: String,
    /// The file that could not be downloaded.
    pub file: String,
    /// Its expected digest.
    pub sha256: String,
    /// Where it should be put.
    pub target: PathBuf,
    /// Where the unpacked dataset belongs.
    pub folder: PathBuf,
    /// The last download error.
    pub detail: String,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Manifest(m) => write!(f, "datasets/manifest.json: {m}"),
            FetchError::Unavailable(u) => write!(
                f,
                "{}: cannot download {} ({}); offline? put {} (sha256 {}) at {} or the unpacked dataset in {}",
                u.dataset,
                u.file,
                u.detail,
                u.file,
                u.sha256,
                u.target.display(),
                u.folder.display()
            ),
            FetchError::Checksum { path, expected, actual } => write!(
                f,
                "{}: sha256 mismatch (expected {expected}, got {actual})",
                path.display()
            ),
            FetchError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            FetchError::Extract { path, detail } => write!(f, "{}: {detail}", path.display()),
        }
    }
}

/// No variant reports a `source`: the I/O error is part of the message already, and an error
/// chain (anyhow's `{:#}`) would print it twice.
impl std::error::Error for FetchError {}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.to_path_buf(), source }
}

/// One downloadable file of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// File name.
    pub file: String,
    /// Canonical URL.
    pub url: String,
    /// Other URLs serving the same bytes, tried in order.
    pub mirrors: Vec<String>,
    /// Size in bytes.
    pub size: u64,
    /// Hex SHA-256.
    pub sha256: String,
    /// Digests of known repackagings of the same data (e.g. a Debian package).
    pub alternate_sha256: Vec<String>,
    /// `tar.gz` to unpack into the data folder, `none` to keep the file in the dataset folder.
    pub extract: String,
}

/// One dataset of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Name (the `open_dataset` spec).
    pub name: String,
    /// One-line description.
    pub description: String,
    /// Folder under the data folder.
    pub folder: String,
    /// File layout, in words.
    pub layout: String,
    /// Files expected in the folder once fetched.
    pub files: Vec<String>,
    /// What to download.
    pub archives: Vec<Archive>,
}

fn field<'a>(
    v: &'a serde_json::Value,
    key: &str,
    ctx: &str,
) -> Result<&'a serde_json::Value, FetchError> {
    v.get(key).ok_or_else(|| FetchError::Manifest(format!("{ctx}: missing field `{key}`")))
}

fn string(v: &serde_json::Value, key: &str, ctx: &str) -> Result<String, FetchError> {
    field(v, key, ctx)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| FetchError::Manifest(format!("{ctx}: field `{key}` is not a string")))
}

fn strings(v: &serde_json::Value, key: &str, ctx: &str) -> Result<Vec<String>, FetchError> {
    match v.get(key) {
        None => Ok(Vec::new()),
        Some(a) => a
            .as_array()
            .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect())
            .ok_or_else(|| {
                FetchError::Manifest(format!("{ctx}: field `{key}` is not a list of strings"))
            }),
    }
}

/// Parses a manifest.
pub fn parse_manifest(text: &str) -> Result<Vec<Entry>, FetchError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| FetchError::Manifest(e.to_string()))?;
    let list = field(&v, "datasets", "manifest")?
        .as_array()
        .ok_or_else(|| FetchError::Manifest("`datasets` is not a list".into()))?;
    list.iter()
        .enumerate()
        .map(|(i, d)| {
            let ctx = format!("datasets[{i}]");
            let archives = field(d, "archives", &ctx)?
                .as_array()
                .ok_or_else(|| FetchError::Manifest(format!("{ctx}: `archives` is not a list")))?
                .iter()
                .enumerate()
                .map(|(j, a)| {
                    let ctx = format!("{ctx}.archives[{j}]");
                    Ok(Archive {
                        file: string(a, "file", &ctx)?,
                        url: string(a, "url", &ctx)?,
                        mirrors: strings(a, "mirrors", &ctx)?,
                        size: field(a, "size", &ctx)?.as_u64().ok_or_else(|| {
                            FetchError::Manifest(format!("{ctx}: `size` is not an integer"))
                        })?,
                        sha256: string(a, "sha256", &ctx)?,
                        alternate_sha256: strings(a, "alternate_sha256", &ctx)?,
                        extract: string(a, "extract", &ctx)?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Entry {
                name: string(d, "name", &ctx)?,
                description: string(d, "description", &ctx)?,
                folder: string(d, "folder", &ctx)?,
                layout: string(d, "layout", &ctx)?,
                files: strings(d, "files", &ctx)?,
                archives,
            })
        })
        .collect()
}

/// The embedded manifest.
pub fn manifest() -> Result<Vec<Entry>, FetchError> {
    parse_manifest(MANIFEST)
}

/// The manifest entry called `name`.
pub fn entry(name: &str) -> Result<Entry, FetchError> {
    let all = manifest()?;
    let known: Vec<String> = all.iter().map(|e| e.name.clone()).collect();
    all.into_iter().find(|e| e.name == name).ok_or_else(|| {
        FetchError::Manifest(format!("no dataset `{name}` (known: {})", known.join(", ")))
    })
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks `path` against `archive`'s digest (or one of its alternates).
pub fn verify_file(path: &Path, archive: &Archive) -> Result<(), FetchError> {
    let actual = sha256_file(path)?;
    if actual == archive.sha256 || archive.alternate_sha256.contains(&actual) {
        Ok(())
    } else {
        Err(FetchError::Checksum {
            path: path.to_path_buf(),
            expected: archive.sha256.clone(),
            actual,
        })
    }
}

/// Where `archive` of `entry` lives once downloaded under `data_dir`.
pub fn archive_path(entry: &Entry, archive: &Archive, data_dir: &Path) -> PathBuf {
    if archive.extract == "none" {
        data_dir.join(&entry.folder).join(&archive.file)
    } else {
        data_dir.join(".downloads").join(&archive.file)
    }
}

/// Outcome of [`fetch_entry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Every expected file was already in place (nothing downloaded).
    AlreadyPresent(PathBuf),
    /// Downloaded (or found), verified and unpacked into this folder.
    Ready(PathBuf),
}

/// Why [`download`] failed.
enum DownloadFailure {
    /// No URL could be read (offline, or every source failed): the last one's error.
    Unreachable(String),
    /// A source served bytes that are not the manifest's.
    Corrupt(FetchError),
}

/// Checks a downloaded `part` against `archive`: the manifest's SHA-256 and size, or one of
/// its alternate digests (a repackaging, whose size may differ). Reports the file as `target`,
/// where it would have gone.
fn verify_part(part: &Path, target: &Path, archive: &Archive) -> Result<(), FetchError> {
    let actual = sha256_file(part)?;
    let size = std::fs::metadata(part).map_err(io(part))?.len();
    let known = actual == archive.sha256 || archive.alternate_sha256.contains(&actual);
    if known && (actual != archive.sha256 || size == archive.size) {
        return Ok(());
    }
    Err(FetchError::Checksum {
        path: target.to_path_buf(),
        expected: format!("{}, {} bytes", archive.sha256, archive.size),
        actual: format!("{actual}, {size} bytes"),
    })
}

/// Downloads `archive` to `target`: into `target.part` first, resuming a part that an
/// interrupted download left (`curl -C -`), then checked against the manifest's size and
/// SHA-256 and renamed into place only when it matches. A part that fails the check is
/// deleted, so the next source (or the next run) starts afresh; the part of a transfer that
/// failed midway is kept for the next attempt to resume.
fn download(archive: &Archive, target: &Path) -> Result<(), DownloadFailure> {
    let mut part = target.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let urls =
        std::iter::once(archive.url.as_str()).chain(archive.mirrors.iter().map(String::as_str));
    let put_in_place = || {
        std::fs::rename(&part, target)
            .map_err(|e| DownloadFailure::Corrupt(FetchError::Io { path: part.clone(), source: e }))
    };
    let mut last = DownloadFailure::Unreachable("no URL".into());
    for url in urls {
        // A part at least as long as the file cannot be resumed into it.
        if std::fs::metadata(&part).is_ok_and(|m| archive.size > 0 && m.len() >= archive.size) {
            if verify_part(&part, target, archive).is_ok() {
                return put_in_place();
            }
            let _ = std::fs::remove_file(&part);
        }
        let out = Command::new("curl")
            .args(["-fsSL", "--retry", "2", "--connect-timeout", "20", "-C", "-", "-o"])
            .arg(&part)
            .arg(url)
            .output();
        match out {
            Ok(o) if o.status.success() => match verify_part(&part, target, archive) {
                Ok(()) => return put_in_place(),
                Err(e) => {
                    let _ = std::fs::remove_file(&part);
                    last = DownloadFailure::Corrupt(e);
                }
            },
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let err = err.lines().last().unwrap_or("curl failed").trim().to_string();
                last = DownloadFailure::Unreachable(format!("{url}: {err}"));
            }
            Err(e) => last = DownloadFailure::Unreachable(format!("cannot run curl: {e}")),
        }
    }
    Err(last)
}

/// Downloads (unless present), verifies and unpacks `entry` into `data_dir`; returns the
/// dataset folder. Files already in place are verified and not downloaded again unless they
/// fail the check (then they are moved aside as `<file>.corrupt`); see `download` for how a
/// download is checked before it is put in place and resumed after an interruption.
pub fn fetch_entry(entry: &Entry, data_dir: &Path) -> Result<Fetched, FetchError> {
    let folder = data_dir.join(&entry.folder);
    if !entry.files.is_empty()
        && entry.files.iter().all(|f| folder.join(f).is_file())
        && entry
            .archives
            .iter()
            .filter(|a| a.extract == "none")
            .all(|a| verify_file(&archive_path(entry, a, data_dir), a).is_ok())
    {
        return Ok(Fetched::AlreadyPresent(folder));
    }
    for a in &entry.archives {
        let target = archive_path(entry, a, data_dir);
        // A file in place (downloaded earlier, or put there by hand) that fails the check is
        // moved aside as `<file>.corrupt` and downloaded again.
        if target.is_file() {
            if let Err(e) = verify_file(&target, a) {
                let mut aside = target.as_os_str().to_owned();
                aside.push(".corrupt");
                std::fs::rename(&target, &aside).map_err(io(&target))?;
                let aside = Path::new(&aside).display();
                eprintln!("warning: {e}; moved it to {aside} and downloading it again");
            }
        }
        if !target.is_file() {
            let dir = target.parent().unwrap_or(data_dir);
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            download(a, &target).map_err(|failure| match failure {
                DownloadFailure::Corrupt(e) => e,
                DownloadFailure::Unreachable(detail) => {
                    FetchError::Unavailable(Box::new(Unavailable {
                        dataset: entry.name.clone(),
                        file: a.file.clone(),
                        sha256: a.sha256.clone(),
                        target: target.clone(),
                        folder: folder.clone(),
                        detail,
                    }))
                }
            })?;
        }
        match a.extract.as_str() {
            "none" => {}
            "tar.gz" => {
                let out = Command::new("tar")
                    .arg("-xzf")
                    .arg(&target)
                    .arg("-C")
                    .arg(data_dir)
                    .output()
                    .map_err(|e| FetchError::Extract {
                        path: target.clone(),
                        detail: format!("cannot run tar: {e}"),
                    })?;
                if !out.status.success() {
                    let err = String::from_utf8_lossy(&out.stderr);
                    return Err(FetchError::Extract {
                        path: target.clone(),
                        detail: format!("tar failed: {}", err.lines().next().unwrap_or("").trim()),
                    });
                }
            }
            other => {
                return Err(FetchError::Manifest(format!(
                    "{}: unknown extract `{other}` (tar.gz, none)",
                    a.file
                )))
            }
        }
    }
    if let Some(missing) = entry.files.iter().find(|f| !folder.join(f).is_file()) {
        return Err(FetchError::Extract {
            path: folder.join(missing),
            detail: "missing after unpacking".into(),
        });
    }
    Ok(Fetched::Ready(folder))
}

/// [`fetch_entry`] for the manifest's dataset `name`.
pub fn fetch(name: &str, data_dir: &Path) -> Result<Fetched, FetchError> {
    fetch_entry(&entry(name)?, data_dir)
}
