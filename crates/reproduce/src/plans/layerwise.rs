//! What the plans that read a trunk layer by layer share (the seed's table: the patch-grid
//! plans, the reconstruction plans, the zoo): the taps, the probes' settings, one linear and
//! one kNN probe of every encoder, per-layer differences, the per-layer chart and the seed's
//! reference rows.
use super::patches::ReferenceRow;
use crate::engine::report::{num_col, text_col, Diffs};
use crate::engine::scores::at;
use crate::engine::{Cell, Chart, Labeled, ProbeSpec, Protocol, Section, Table};
use selfsup_eval::{KnnConfig, LinearProbeConfig};

/// The taps probed, as the seed's table.
pub const TAPS: [&str; 5] = ["conv1", "conv2", "conv3", "conv4", "conv5"];

/// The layer-wise linear probe: every tap average-pooled to about 9,000 dimensions and
/// standardised (Zhang et al.'s protocol behind the seed's table), cosine schedule.
pub fn linear(epochs: usize, batch_size: usize) -> LinearProbeConfig {
    LinearProbeConfig {
        taps: vec!["all".into()],
        epochs,
        batch_size,
        schedule: super::cosine(),
        ..LinearProbeConfig::default()
    }
}

/// Weighted kNN (k = 200, T = 0.1) on `taps` (`last` or `all`), globally pooled.
pub fn knn(taps: &str) -> KnnConfig {
    KnnConfig { taps: vec![taps.into()], ..KnnConfig::default() }
}

/// A `linear` and a `knn` probe of each encoder at every probe seed, each seed drawing its own
/// `images` labeled images.
pub fn probes(
    encoders: &[String],
    linear: &LinearProbeConfig,
    knn: &KnnConfig,
    seeds: &[u64],
    images: Option<usize>,
) -> Vec<ProbeSpec> {
    let mut probes = Vec::new();
    for enc in encoders {
        for (name, protocol) in
            [("linear", Protocol::Linear(linear.clone())), ("knn", Protocol::Knn(knn.clone()))]
        {
            probes.push(ProbeSpec {
                encoder: enc.clone(),
                name: name.into(),
                protocol,
                seeds: seeds.to_vec(),
                labeled: Labeled::Subset { images },
            });
        }
    }
    probes
}

/// Paired differences `a − b` of the linear probe at each tap.
pub fn per_tap(a: &str, b: &str) -> Diffs {
    TAPS.iter().map(|t| (t.to_string(), vec![(at(a, "linear", t), at(b, "linear", t))])).collect()
}

/// `layers.png`: the linear probe per layer, one line per encoder.
pub fn layer_chart(encoders: &[String]) -> Chart {
    Chart {
        file: "layers.png".into(),
        title: "CIFAR-10 linear probe per layer".into(),
        x_labels: TAPS.iter().map(|t| t.to_string()).collect(),
        series: encoders
            .iter()
            .map(|e| {
                let cells = TAPS.iter().map(|t| Cell::Mean(vec![at(e, "linear", t)])).collect();
                (e.clone(), cells)
            })
            .collect(),
    }
}

/// The seed's reference rows as a note and a `references` table marked with their dataset;
/// nothing without rows.
pub fn reference_sections(rows: &[ReferenceRow]) -> Vec<Section> {
    if rows.is_empty() {
        return Vec::new();
    }
    let mut columns = vec![text_col("Row", "row"), text_col("Dataset", "dataset")];
    columns.extend(TAPS.iter().map(|t| num_col(t, t)));
    vec![
        Section::Text(
            "Reference: the seed's ImageNet table (Zhang et al. 2017 layout; linear probes on \
             frozen AlexNet conv1..conv5 trained on ImageNet, top-1 %). Another dataset, \
             another resolution and a full-width AlexNet: compare the shape across layers, \
             not the figures."
                .into(),
        ),
        Section::Table(Table {
            key: "references".into(),
            columns,
            rows: rows
                .iter()
                .map(|r| {
                    let mut cells =
                        vec![Cell::Text(r.label.clone()), Cell::Text(r.dataset.clone())];
                    cells.extend(r.top1.iter().map(|&x| Cell::Figure(Some(x))));
                    cells
                })
                .collect(),
        }),
    ]
}
