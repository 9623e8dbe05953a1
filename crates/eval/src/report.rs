//! Evaluation reports: every protocol writes `<out>/eval/<protocol>.json` (numbers, settings,
//! seed, dataset checksums, tap names and dimensions) atomically (temporary file + rename) and
//! a markdown table `<out>/eval/<protocol>.md` next to it.
use crate::{EvalError, Result};
use selfsup_data::ImageDataset;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Identity of a dataset split used in an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Dataset name.
    pub name: String,
    /// Number of images.
    pub len: usize,
    /// Hex SHA-256 of pixels and labels ([`ImageDataset::checksum`]).
    pub checksum: String,
    /// Image shape `[C, H, W]`.
    pub shape: [usize; 3],
}

impl DatasetInfo {
    /// The info of `ds`.
    pub fn of(ds: &ImageDataset) -> Self {
        DatasetInfo {
            name: ds.name().to_string(),
            len: ds.len(),
            checksum: ds.checksum(),
            shape: [ds.channels(), ds.height(), ds.width()],
        }
    }
}

/// The start every protocol shares: checks `train` and `test` as a labeled pair, resolves the
/// pixel normalisation (`given`, else the statistics of up to 10,000 training images) and opens
/// the report with `cfg` as its settings, the normalisation filled in. Returns the report, the
/// normalisation and the number of classes.
pub(crate) fn open_report(
    protocol: &str,
    cfg: &impl Serialize,
    given: Option<&crate::features::Normalization>,
    device: tch::Device,
    train: &ImageDataset,
    test: &ImageDataset,
    seed: u64,
) -> Result<(EvalReport, crate::features::Normalization, i64)> {
    let classes = crate::features::check_pair(train, test)?;
    let norm = given
        .cloned()
        .unwrap_or_else(|| crate::features::Normalization::from_dataset(train, 10_000));
    let mut settings = serde_json::to_value(cfg)?;
    settings["normalization"] = serde_json::to_value(&norm)?;
    Ok((EvalReport::new(protocol, seed, device, train, test, settings), norm, classes))
}

/// One line of results: a tap under one protocol variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    /// Tap name (`block2`, `conv3`, ...).
    pub tap: String,
    /// What was measured: `linear`, `conv_block3`, `mlp`, `knn k=200 T=0.1`,
    /// `100/class frozen linear`, ...
    pub variant: String,
    /// Shape of the raw tap map `[C, H, W]`.
    pub map_shape: Vec<i64>,
    /// Input dimension of the classifier (after pooling).
    pub dim: i64,
    /// Number of labeled training images used.
    pub train_images: usize,
    /// Top-1 accuracy on the test split, percent.
    pub top1: f64,
    /// Top-5 accuracy on the test split, percent (top-K when there are K < 5 classes).
    pub top5: f64,
    /// Top-1 accuracy on the training images, percent, where measured.
    pub train_top1: Option<f64>,
    /// The best test top-1 over the training epochs and its 1-based epoch, where the protocol
    /// scored every epoch (the official RotNet code reports this figure; choosing an epoch on
    /// the test set is not a clean protocol, so `top1`, the last epoch, stays the headline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<BestEpoch>,
}

/// The best epoch of a probe scored after every epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    /// Its test top-1, percent.
    pub top1: f64,
    /// Its 1-based epoch.
    pub epoch: usize,
}

/// The result of one protocol run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Protocol name: `linear`, `nonlinear`, `knn`, `fewshot`.
    pub protocol: String,
    /// The seed of every random choice of the protocol.
    pub seed: u64,
    /// Device the evaluation ran on (`cpu`, `cuda:0`).
    pub device: String,
    /// libtorch's thread count when the report was opened (`None` in reports written before
    /// 2026-12-07).
    #[serde(default)]
    pub threads: Option<i64>,
    /// Whether the run was deterministic: oneDNN off, so that on the CPU the seed gives the same
    /// bits at any thread count (`selfsup_core::determinism`; `selfsup eval --deterministic`,
    /// on by default, or the reproduction's plan). `None` in reports written before 2026-12-07.
    #[serde(default)]
    pub deterministic: Option<bool>,
    /// Training split.
    pub train: DatasetInfo,
    /// Test split.
    pub test: DatasetInfo,
    /// The run or checkpoint evaluated (filled in by the caller).
    pub checkpoint: Option<String>,
    /// The encoder config (filled in by the caller).
    pub encoder: Option<serde_json::Value>,
    /// The protocol settings used (the resolved config).
    pub settings: serde_json::Value,
    /// Results, one per tap and variant.
    pub rows: Vec<ResultRow>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Version of selfsup-eval.
    pub version: String,
}

impl EvalReport {
    /// An empty report of `protocol` over `train`/`test`, recording libtorch's thread count and
    /// whether oneDNN is off (a deterministic run) as they are now.
    pub fn new(
        protocol: &str,
        seed: u64,
        device: tch::Device,
        train: &ImageDataset,
        test: &ImageDataset,
        settings: serde_json::Value,
    ) -> Self {
        EvalReport {
            protocol: protocol.to_string(),
            seed,
            device: selfsup_core::device::device_name(device),
            threads: Some(i64::from(tch::get_num_threads())),
            deterministic: Some(!selfsup_core::determinism::mkldnn_enabled()),
            train: DatasetInfo::of(train),
            test: DatasetInfo::of(test),
            checkpoint: None,
            encoder: None,
            settings,
            rows: Vec::new(),
            seconds: 0.0,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The markdown table: a title, the data and seed, then one row per result.
    pub fn markdown(&self) -> String {
        let mut s = format!("# Evaluation: {}\n\n", self.protocol);
        if let Some(c) = &self.checkpoint {
            s += &format!("Checkpoint: `{c}`  \n");
        }
        s += &format!(
            "Train: `{}` ({} images, sha256 {}…)  \nTest: `{}` ({} images, sha256 {}…)  \n",
            self.train.name,
            self.train.len,
            &self.train.checksum.get(..12).unwrap_or(&self.train.checksum),
            self.test.name,
            self.test.len,
            &self.test.checksum.get(..12).unwrap_or(&self.test.checksum),
        );
        let mut how = Vec::new();
        if let Some(t) = self.threads {
            how.push(format!("{t} threads"));
        }
        if let Some(d) = self.deterministic {
            how.push(if d { "deterministic" } else { "not deterministic" }.to_string());
        }
        let how = if how.is_empty() { String::new() } else { format!(" ({})", how.join(", ")) };
        s += &format!(
            "Seed: {}, device: {}{how}, {:.1} s\n\n",
            self.seed, self.device, self.seconds
        );
        s += "| tap | variant | map | dim | train images | top-1 (%) | top-5 (%) |\n";
        s += "|---|---|---|---:|---:|---:|---:|\n";
        for r in &self.rows {
            let map = r.map_shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×");
            s += &format!(
                "| {} | {} | {} | {} | {} | {:.2} | {:.2} |\n",
                r.tap, r.variant, map, r.dim, r.train_images, r.top1, r.top5
            );
        }
        s += &format!("\nSettings: `{}`\n", self.settings);
        s
    }

    /// Writes `<out>/eval/<protocol>.json` and `<out>/eval/<protocol>.md` atomically and returns
    /// their paths.
    pub fn write(&self, out: &Path) -> Result<(PathBuf, PathBuf)> {
        let dir = out.join("eval");
        std::fs::create_dir_all(&dir).map_err(|e| EvalError::Io { path: dir.clone(), error: e })?;
        let json = dir.join(format!("{}.json", self.protocol));
        let md = dir.join(format!("{}.md", self.protocol));
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        selfsup_core::checkpoint::write_atomic(&json, &bytes)?;
        selfsup_core::checkpoint::write_atomic(&md, self.markdown().as_bytes())?;
        Ok((json, md))
    }

    /// Reads a report written by [`EvalReport::write`].
    pub fn read(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).map_err(|e| EvalError::Io { path: path.into(), error: e })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| EvalError::Config(format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_and_markdown() {
        let ds =
            ImageDataset::from_raw("tiny", 1, 1, 2, vec![0, 255], Some(vec![1]), Some(2)).unwrap();
        let mut r =
            EvalReport::new("knn", 7, tch::Device::Cpu, &ds, &ds, serde_json::json!({"k": 200}));
        r.rows.push(ResultRow {
            tap: "block2".into(),
            variant: "knn k=200 T=0.1".into(),
            map_shape: vec![16, 4, 4],
            dim: 16,
            train_images: 1,
            top1: 50.0,
            top5: 100.0,
            train_top1: None,
            best_epoch: None,
        });
        let dir = tempfile::tempdir().unwrap();
        let (json, md) = r.write(dir.path()).unwrap();
        assert_eq!(json, dir.path().join("eval/knn.json"));
        let back = EvalReport::read(&json).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.train.checksum, ds.checksum());
        let text = std::fs::read_to_string(md).unwrap();
        assert!(
            text.contains("| block2 | knn k=200 T=0.1 | 16×4×4 | 16 | 1 | 50.00 | 100.00 |"),
            "{text}"
        );
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path().join("eval")).unwrap().count(), 2);
    }
}
