//! Checkpoints: a run folder's `checkpoint/` holds
//! - `model.safetensors`: every variable of the var store by name (`encoder.block1...`),
//! - `trainer.safetensors`: optimizer buffers and method state (MoCo queue, memory bank),
//! - `trainer.json`: epoch and step position, the resolved config, and the SHA-256 of both
//!   tensor files.
//!
//! Each file is written to a temporary name and renamed into place, `trainer.json` last, so a
//! crash never leaves a half-written checkpoint: a checkpoint is valid exactly when both tensor
//! files match the hashes in `trainer.json`. Random number generators need no saved state:
//! libtorch's generator is re-seeded from `(seed, global step)` before every step and the data
//! pipeline derives its streams from `(seed, epoch, index)`, so a resumed run continues exactly.
use crate::config::RunConfig;
use crate::encoders::{build_encoder, Encoder};
use crate::{CoreError, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

/// Format version written into `trainer.json`.
pub const FORMAT_VERSION: u32 = 1;

/// The position and bookkeeping of a checkpoint (`trainer.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    /// Checkpoint format version.
    pub version: u32,
    /// Epoch the next step belongs to (0-based).
    pub epoch: u64,
    /// Batches of `epoch` already done.
    pub batch_in_epoch: u64,
    /// Optimizer steps done in total.
    pub global_step: u64,
    /// The run's resolved config.
    pub config: RunConfig,
    /// Channels of the training images (the encoder's input channels).
    pub image_channels: i64,
    /// The pixel normalisation the encoder was trained with (the method's
    /// [`PretextMethod::input_normalization`](crate::PretextMethod::input_normalization));
    /// absent in checkpoints written before it was recorded, and for methods without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<crate::InputNormalization>,
    /// The running means of the epoch's step metrics (sums and count) when the checkpoint was
    /// taken mid-epoch, so that the resumed epoch's line is the uninterrupted one; absent at
    /// epoch ends and in older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_means: Option<EpochMeans>,
    /// Processes of the data-parallel job that wrote it (1, and absent, for a single process):
    /// a resume must run at the same world size, since the per-rank batch and the random
    /// streams depend on it.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub world_size: u64,
    /// SHA-256 of `model.safetensors`.
    pub model_sha256: String,
    /// SHA-256 of `trainer.safetensors`.
    pub trainer_sha256: String,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

/// Running sums of an epoch's step metrics and their count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMeans {
    /// `(metric, sum)`, the loss first.
    pub sums: Vec<(String, f64)>,
    /// Steps summed.
    pub n: u64,
}

/// The `checkpoint/` folder of a run folder.
pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoint")
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_name(path);
    std::fs::write(&tmp, bytes).map_err(|e| CoreError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| CoreError::io(path, e))
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes named tensors as safetensors, atomically. Tensors are moved to the CPU first.
pub fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let tmp = tmp_name(path);
    let cpu: Vec<(String, Tensor)> =
        tensors.iter().map(|(n, t)| (n.clone(), t.to(Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&cpu, &tmp)
        .map_err(|e| CoreError::checkpoint(&tmp, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| CoreError::io(path, e))
}

/// Reads named tensors from a safetensors file, sorted by name.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.exists() {
        return Err(CoreError::checkpoint(path, "file not found"));
    }
    let mut v = Tensor::read_safetensors(path)
        .map_err(|e| CoreError::checkpoint(path, format!("unreadable: {e}")))?;
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// All variables of a var store, sorted by name (the stable order optimizers see).
pub fn sorted_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Copies `tensors` into the var store's variables of the same names. Every variable must be
/// present with the same shape; `prefix` (e.g. `"encoder."`) restricts both sides to the
/// variables under it.
pub fn load_into(
    vs: &nn::VarStore,
    tensors: &[(String, Tensor)],
    prefix: &str,
    path: &Path,
) -> Result<()> {
    let by_name: std::collections::HashMap<&str, &Tensor> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in sorted_variables(vs) {
            if !name.starts_with(prefix) {
                continue;
            }
            let src = by_name
                .get(name.as_str())
                .ok_or_else(|| CoreError::checkpoint(path, format!("missing tensor `{name}`")))?;
            if src.size() != var.size() {
                return Err(CoreError::checkpoint(
                    path,
                    format!(
                        "tensor `{name}` has shape {:?}, expected {:?}",
                        src.size(),
                        var.size()
                    ),
                ));
            }
            var.f_copy_(src)?;
        }
        Ok(())
    })
}

/// Everything a checkpoint holds, in memory.
#[derive(Debug)]
pub struct Checkpoint {
    /// Position and config.
    pub state: TrainerState,
    /// Model variables by name.
    pub model: Vec<(String, Tensor)>,
    /// Optimizer and method state by name.
    pub trainer: Vec<(String, Tensor)>,
}

/// Writes a checkpoint into `run_dir/checkpoint/`: the tensor files first, `trainer.json`
/// (which names their hashes) last.
pub fn save(
    run_dir: &Path,
    state: &TrainerState,
    model: &[(String, Tensor)],
    trainer: &[(String, Tensor)],
) -> Result<()> {
    let (dir, new, prev) = (checkpoint_dir(run_dir), sibling(run_dir, NEW), sibling(run_dir, PREV));
    // A `checkpoint.new/` left by a crash mid-write is incomplete or superseded: start afresh.
    if new.exists() {
        std::fs::remove_dir_all(&new).map_err(|e| CoreError::io(&new, e))?;
    }
    std::fs::create_dir_all(&new).map_err(|e| CoreError::io(&new, e))?;
    let model_path = new.join("model.safetensors");
    let trainer_path = new.join("trainer.safetensors");
    write_tensors(&model_path, model)?;
    write_tensors(&trainer_path, trainer)?;
    let mut state = state.clone();
    state.model_sha256 = sha256_file(&model_path)?;
    state.trainer_sha256 = sha256_file(&trainer_path)?;
    let json = serde_json::to_vec_pretty(&state).expect("state serializes");
    // trainer.json last: its presence marks the folder complete.
    write_atomic(&new.join("trainer.json"), &json)?;
    for p in [&model_path, &trainer_path, &new.join("trainer.json"), &new] {
        fsync(p)?;
    }
    // The switch: the current checkpoint becomes the previous one (the last good one until
    // the new one is in place), then the new one becomes current.
    if dir.exists() {
        if prev.exists() {
            std::fs::remove_dir_all(&prev).map_err(|e| CoreError::io(&prev, e))?;
        }
        std::fs::rename(&dir, &prev).map_err(|e| CoreError::io(&dir, e))?;
    }
    std::fs::rename(&new, &dir).map_err(|e| CoreError::io(&new, e))?;
    fsync(run_dir)
}

/// `epochs/`: a run's epoch-end snapshots (see [`snapshot`]).
pub const SNAPSHOTS: &str = "epochs";

/// Keeps the current checkpoint of `run_dir`, taken at the end of its `epoch`-th epoch, as
/// `run_dir/epochs/epoch-NNNN/` (`train.keep_checkpoints`), then removes the oldest snapshots
/// beyond `keep`; `keep = 0` does nothing. The files are hard links (copies where the file
/// system refuses a link): [`save`] writes every checkpoint into a fresh folder and never
/// rewrites a file in place, so a snapshot stays valid while the run moves on. A snapshot is
/// assembled under a temporary name and renamed into place, so a crash leaves none half-made.
pub fn snapshot(run_dir: &Path, epoch: u64, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let root = run_dir.join(SNAPSHOTS);
    let dest = root.join(format!("epoch-{epoch:04}"));
    let tmp = root.join(format!(".epoch-{epoch:04}.tmp"));
    for d in [&dest, &tmp] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(|e| CoreError::io(d, e))?;
        }
    }
    std::fs::create_dir_all(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
    let src = checkpoint_dir(run_dir);
    for name in ["model.safetensors", "trainer.safetensors", "trainer.json"] {
        let (from, to) = (src.join(name), tmp.join(name));
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| CoreError::io(&from, e))?;
        }
    }
    fsync(&tmp)?;
    std::fs::rename(&tmp, &dest).map_err(|e| CoreError::io(&tmp, e))?;
    let mut kept: Vec<(u64, PathBuf)> = std::fs::read_dir(&root)
        .map_err(|e| CoreError::io(&root, e))?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let n = path.file_name()?.to_str()?.strip_prefix("epoch-")?.parse().ok()?;
            Some((n, path))
        })
        .collect();
    kept.sort();
    let excess = kept.len().saturating_sub(keep);
    for (_, old) in kept.into_iter().take(excess) {
        std::fs::remove_dir_all(&old).map_err(|e| CoreError::io(&old, e))?;
    }
    fsync(&root)
}

/// `checkpoint.new/`: a checkpoint being written.
const NEW: &str = "checkpoint.new";
/// `checkpoint.prev/`: the checkpoint before the current one, kept as a fallback.
const PREV: &str = "checkpoint.prev";
/// `checkpoint.torn/`: a current checkpoint that failed to load on resume, set aside.
const TORN: &str = "checkpoint.torn";

fn sibling(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(name)
}

/// Flushes a file or folder to the disk.
fn fsync(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| CoreError::io(path, e))
}

/// Whether `run_dir` holds a checkpoint to resume: its `checkpoint/`, or the complete new or
/// previous one a crash between the switch's two renames leaves (see [`load_for_resume`]).
pub fn exists(run_dir: &Path) -> bool {
    [checkpoint_dir(run_dir), sibling(run_dir, NEW), sibling(run_dir, PREV)]
        .iter()
        .any(|d| d.join("trainer.json").exists())
}

/// The checkpoint to resume `run_dir` from: `checkpoint/` when it reads and its hashes match;
/// else the complete `checkpoint.new/` a crash between the switch's renames left; else
/// `checkpoint.prev/`, the last good one. Returns it with a note saying which fallback was
/// taken and why (`None` for `checkpoint/` itself); the error of `checkpoint/` when none reads.
///
/// When it falls back to `checkpoint.prev/`, the unreadable `checkpoint/` is set aside as
/// `checkpoint.torn/` (replacing an older one), so that the next [`save`] keeps the last good
/// checkpoint as its fallback instead of the torn one.
pub fn load_for_resume(run_dir: &Path) -> Result<(Checkpoint, Option<String>)> {
    let current = checkpoint_dir(run_dir);
    let first = match load(&current) {
        Ok(ck) => return Ok((ck, None)),
        Err(e) => e,
    };
    for name in [NEW, PREV] {
        let dir = sibling(run_dir, name);
        if let Ok(ck) = load(&dir) {
            let mut note = format!(
                "{first}; resuming from {} (step {}) instead",
                dir.display(),
                ck.state.global_step
            );
            if name == PREV && current.exists() {
                let torn = sibling(run_dir, TORN);
                if torn.exists() {
                    std::fs::remove_dir_all(&torn).map_err(|e| CoreError::io(&torn, e))?;
                }
                std::fs::rename(&current, &torn).map_err(|e| CoreError::io(&current, e))?;
                note.push_str(&format!(" (the unreadable one is kept as {})", torn.display()));
            }
            return Ok((ck, Some(note)));
        }
    }
    Err(first)
}

/// Reads the `trainer.json` of a run folder or of a `checkpoint/` folder.
pub fn read_state(path: &Path) -> Result<TrainerState> {
    let dir = resolve_dir(path);
    let p = dir.join("trainer.json");
    if !p.exists() {
        return Err(CoreError::checkpoint(
            path,
            "is not a run folder or checkpoint (no trainer.json in it or in its checkpoint/)",
        ));
    }
    let text = std::fs::read_to_string(&p).map_err(|e| CoreError::io(&p, e))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| CoreError::checkpoint(&p, format!("invalid trainer.json: {e}")))?;
    if state.version != FORMAT_VERSION {
        return Err(CoreError::checkpoint(
            &p,
            format!("format version {} (this build reads {FORMAT_VERSION})", state.version),
        ));
    }
    Ok(state)
}

/// A run folder or its `checkpoint/` folder → the `checkpoint/` folder.
pub fn resolve_dir(path: &Path) -> PathBuf {
    if path.join("trainer.json").exists() {
        path.to_path_buf()
    } else {
        checkpoint_dir(path)
    }
}

/// Loads a checkpoint, verifying the tensor files against the hashes in `trainer.json`.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let dir = resolve_dir(path);
    let state = read_state(path)?;
    let model_path = dir.join("model.safetensors");
    let trainer_path = dir.join("trainer.safetensors");
    for (p, want) in [(&model_path, &state.model_sha256), (&trainer_path, &state.trainer_sha256)] {
        let got = sha256_file(p)?;
        if &got != want {
            return Err(CoreError::checkpoint(
                p,
                format!("SHA-256 {got} does not match trainer.json ({want}): file changed or torn"),
            ));
        }
    }
    Ok(Checkpoint {
        model: read_tensors(&model_path)?,
        trainer: read_tensors(&trainer_path)?,
        state,
    })
}

/// An encoder restored from a run folder.
pub struct LoadedEncoder {
    /// The var store holding the encoder's variables (under `encoder.`).
    pub vs: nn::VarStore,
    /// The encoder.
    pub encoder: Box<dyn Encoder>,
    /// The run's config.
    pub config: RunConfig,
    /// Training position of the checkpoint.
    pub state: TrainerState,
}

impl std::fmt::Debug for LoadedEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedEncoder").field("config", &self.config).finish()
    }
}

/// Rebuilds the encoder of a run (or checkpoint) folder on `device` and loads its weights.
pub fn load_encoder(path: &Path, device: Device) -> Result<LoadedEncoder> {
    let ckpt = load(path)?;
    let vs = nn::VarStore::new(device);
    let in_channels = ckpt.state.image_channels;
    let encoder = build_encoder(&(vs.root() / "encoder"), &ckpt.state.config.encoder, in_channels);
    load_into(&vs, &ckpt.model, "encoder.", &resolve_dir(path).join("model.safetensors"))?;
    Ok(LoadedEncoder { vs, encoder, config: ckpt.state.config.clone(), state: ckpt.state })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_tamper_detection() {
        let dir = tempfile::tempdir().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let _enc = build_encoder(&(vs.root() / "encoder"), &Default::default(), 3);
        let model = sorted_variables(&vs);
        let trainer = vec![("sgd.momentum.x".to_string(), Tensor::from_slice(&[1.0f32, 2.0]))];
        let state = TrainerState {
            version: FORMAT_VERSION,
            epoch: 3,
            batch_in_epoch: 2,
            global_step: 17,
            config: RunConfig::default(),
            image_channels: 3,
            normalization: None,
            epoch_means: None,
            world_size: 1,
            model_sha256: String::new(),
            trainer_sha256: String::new(),
        };
        save(dir.path(), &state, &model, &trainer).unwrap();
        let ck = load(dir.path()).unwrap();
        assert_eq!(ck.state.global_step, 17);
        assert_eq!(ck.model.len(), model.len());
        for ((n1, t1), (n2, t2)) in model.iter().zip(ck.model.iter()) {
            assert_eq!(n1, n2);
            assert!(t1.equal(t2), "{n1}");
        }
        assert!(ck.trainer[0].1.equal(&trainer[0].1));
        let vs2 = nn::VarStore::new(Device::Cpu);
        let _enc2 = build_encoder(&(vs2.root() / "encoder"), &Default::default(), 3);
        tch::no_grad(|| {
            for (_, mut t) in vs2.variables() {
                let _ = t.fill_(0.5);
            }
        });
        load_into(&vs2, &ck.model, "", Path::new("x")).unwrap();
        for ((_, a), (_, b)) in sorted_variables(&vs).iter().zip(sorted_variables(&vs2).iter()) {
            assert!(a.equal(b));
        }
        // A changed tensor file is detected and named.
        let p = checkpoint_dir(dir.path()).join("trainer.safetensors");
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&p, bytes).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("trainer.safetensors") && err.contains("SHA-256"), "{err}");
        // No temporary files are left behind.
        let names: Vec<String> = std::fs::read_dir(checkpoint_dir(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    }

    #[test]
    fn resume_falls_back_from_a_torn_or_half_switched_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let model = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0]))];
        let state = |step| TrainerState {
            version: FORMAT_VERSION,
            epoch: 0,
            batch_in_epoch: step,
            global_step: step,
            config: RunConfig::default(),
            image_channels: 3,
            normalization: None,
            epoch_means: None,
            world_size: 1,
            model_sha256: String::new(),
            trainer_sha256: String::new(),
        };
        for step in [1, 2] {
            save(run, &state(step), &model, &model).unwrap();
        }
        // The current one and the previous one; nothing half-written left behind.
        assert_eq!(read_state(run).unwrap().global_step, 2);
        assert_eq!(read_state(&run.join(PREV)).unwrap().global_step, 1);
        assert!(!run.join(NEW).exists());
        let (ck, note) = load_for_resume(run).unwrap();
        assert_eq!((ck.state.global_step, note), (2, None));
        // A kill between the switch's renames: no `checkpoint/`, the complete new one beside
        // the previous one. The new one is taken, saying so.
        std::fs::rename(run.join("checkpoint"), run.join(NEW)).unwrap();
        assert!(exists(run));
        let (ck, note) = load_for_resume(run).unwrap();
        assert_eq!(ck.state.global_step, 2);
        assert!(note.unwrap().contains("checkpoint.new"));
        std::fs::rename(run.join(NEW), run.join("checkpoint")).unwrap();
        // A torn current checkpoint: its hash no longer matches; the previous one is taken.
        std::fs::write(run.join("checkpoint/model.safetensors"), b"torn").unwrap();
        assert!(load(run).is_err(), "plain loads stay strict");
        let (ck, note) = load_for_resume(run).unwrap();
        assert_eq!(ck.state.global_step, 1);
        let note = note.unwrap();
        assert!(note.contains("does not match") && note.contains("checkpoint.prev"), "{note}");
        assert!(note.contains("checkpoint.torn"), "{note}");
        assert!(!run.join("checkpoint").exists() && run.join(TORN).exists());
        // The next save becomes current and keeps the last good one (step 1), not the torn
        // one, as its fallback.
        save(run, &state(3), &model, &model).unwrap();
        assert_eq!(load_for_resume(run).unwrap().0.state.global_step, 3);
        assert_eq!(load(&run.join(PREV)).unwrap().state.global_step, 1);
        // Nothing readable at all: the current one's error.
        std::fs::remove_dir_all(run.join(PREV)).unwrap();
        std::fs::write(run.join("checkpoint/trainer.json"), b"{").unwrap();
        assert!(load_for_resume(run).unwrap_err().to_string().contains("invalid trainer.json"));
    }

    #[test]
    fn missing_checkpoint_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("trainer.json"), "{err}");
        // Named once, as given: not `.../checkpoint/checkpoint/trainer.json`.
        let want =
            format!("checkpoint {}: is not a run folder or checkpoint", dir.path().display());
        assert!(err.starts_with(&want), "{err}");
        assert!(!err.contains("checkpoint/checkpoint"), "{err}");
        let err = read_state(dir.path()).unwrap_err().to_string();
        assert!(err.starts_with(&want), "{err}");
    }
}
