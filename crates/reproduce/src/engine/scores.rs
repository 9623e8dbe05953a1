//! Probe scores as the engine collects them, and the statistics the tables print: mean and
//! sample standard deviation over probe seeds, paired differences, and the margin rule that
//! decides a finding.
use selfsup_eval::EvalReport;
use serde::{Deserialize, Serialize};

/// Which row of a probe report a reference means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Row {
    /// The row of this tap (`block2`).
    Tap(String),
    /// The row at this index (the few-label protocol has one row per label budget).
    Index(usize),
    /// The last row.
    Last,
}

/// A probe's score: `encoder`'s probe `probe`, row `row`, over every probe seed it ran at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRef {
    /// The encoder's name in the plan.
    pub encoder: String,
    /// The probe's name.
    pub probe: String,
    /// The row of its report.
    pub row: Row,
}

/// `encoder`'s probe `probe` at tap `tap`.
pub fn at(encoder: &str, probe: &str, tap: &str) -> ScoreRef {
    ScoreRef { encoder: encoder.into(), probe: probe.into(), row: Row::Tap(tap.into()) }
}

/// `encoder`'s probe `probe`, row `row`.
pub fn row(encoder: &str, probe: &str, row: Row) -> ScoreRef {
    ScoreRef { encoder: encoder.into(), probe: probe.into(), row }
}

/// One report row's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RowScore {
    /// Tap.
    pub tap: String,
    /// What was measured.
    pub variant: String,
    /// Labeled images used.
    pub train_images: usize,
    /// Test top-1, last epoch.
    pub top1: f64,
    /// Best test epoch's top-1, where scored every epoch.
    pub best: Option<f64>,
}

/// The rows of one probe at one seed.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeScore {
    /// Encoder.
    pub encoder: String,
    /// Probe.
    pub probe: String,
    /// Probe seed.
    pub seed: u64,
    /// Rows, as in the report.
    pub rows: Vec<RowScore>,
}

/// Every probe score of a run, in the order the probes ran.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    /// The scores.
    pub probes: Vec<ProbeScore>,
}

impl Scores {
    /// Records `report` as `encoder`'s probe `probe` at `seed`.
    pub fn add(&mut self, encoder: &str, probe: &str, seed: u64, report: &EvalReport) {
        self.probes.push(ProbeScore {
            encoder: encoder.into(),
            probe: probe.into(),
            seed,
            rows: report
                .rows
                .iter()
                .map(|r| RowScore {
                    tap: r.tap.clone(),
                    variant: r.variant.clone(),
                    train_images: r.train_images,
                    top1: r.top1,
                    best: r.best_epoch.map(|b| b.top1),
                })
                .collect(),
        });
    }

    /// `(seed, row)` of `r` at every seed, in run order.
    pub fn rows<'a>(&'a self, r: &'a ScoreRef) -> impl Iterator<Item = (u64, &'a RowScore)> + 'a {
        self.probes.iter().filter(|p| p.encoder == r.encoder && p.probe == r.probe).filter_map(
            |p| {
                let row = match &r.row {
                    Row::Tap(t) => p.rows.iter().find(|x| &x.tap == t),
                    Row::Index(i) => p.rows.get(*i),
                    Row::Last => p.rows.last(),
                };
                row.map(|x| (p.seed, x))
            },
        )
    }

    /// Top-1 over every seed of every reference in `refs` (pretraining seeds × probe seeds).
    pub fn pooled(&self, refs: &[ScoreRef]) -> Option<Stat> {
        Stat::of(&refs.iter().flat_map(|r| self.rows(r).map(|(_, x)| x.top1)).collect::<Vec<_>>())
    }

    /// The best-epoch top-1 pooled likewise.
    pub fn best_pooled(&self, refs: &[ScoreRef]) -> Option<Stat> {
        Stat::of(
            &refs.iter().flat_map(|r| self.rows(r).filter_map(|(_, x)| x.best)).collect::<Vec<_>>(),
        )
    }

    /// The labeled images behind `r` (at its first seed).
    pub fn train_images(&self, r: &ScoreRef) -> Option<usize> {
        self.rows(r).next().map(|(_, x)| x.train_images)
    }

    /// `a − b` per probe seed both ran at, pooled over `pairs` (a paired difference: the
    /// pairs are, say, one per pretraining seed).
    pub fn paired_diff(&self, pairs: &[(ScoreRef, ScoreRef)]) -> Option<Stat> {
        let mut diffs = Vec::new();
        for (a, b) in pairs {
            for (seed, x) in self.rows(a) {
                if let Some((_, y)) = self.rows(b).find(|(s, _)| *s == seed) {
                    diffs.push(x.top1 - y.top1);
                }
            }
        }
        Stat::of(&diffs)
    }
}

/// Mean and sample standard deviation of some values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation; `None` for one value.
    pub std: Option<f64>,
    /// Number of values.
    pub n: usize,
    /// The values.
    pub values: Vec<f64>,
}

impl Stat {
    /// The stat of `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        });
        Some(Stat { mean, std, n, values: values.to_vec() })
    }

    /// The sign of the mean when it exceeds `margin` standard deviations (the findings use 2):
    /// `Some(true)` above, `Some(false)` below minus, `None` within; `None` too without a
    /// spread (one value) — see [`Verdict::of`].
    pub fn beyond(&self, margin: f64) -> Option<bool> {
        let sd = self.std?;
        if self.mean > margin * sd {
            Some(true)
        } else if self.mean < -margin * sd {
            Some(false)
        } else {
            None
        }
    }
}

/// How a difference decides a finding under the margin rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Positive beyond twice its standard deviation.
    Ahead,
    /// Negative beyond twice its standard deviation.
    Behind,
    /// Within twice its standard deviation: not resolved at this budget.
    Unresolved,
    /// One value, no spread: only its sign is known (the paper profile's single seed).
    SignOnly(bool),
    /// Not measured.
    Missing,
}

/// The margin of the findings: a difference decides one when it exceeds this many of its
/// standard deviations.
pub const MARGIN: f64 = 2.0;

impl Verdict {
    /// The verdict of a difference `d` under [`MARGIN`].
    pub fn of(d: Option<&Stat>) -> Verdict {
        match d {
            None => Verdict::Missing,
            Some(s) if s.std.is_none() => Verdict::SignOnly(s.mean > 0.0),
            Some(s) => match s.beyond(MARGIN) {
                Some(true) => Verdict::Ahead,
                Some(false) => Verdict::Behind,
                None => Verdict::Unresolved,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_margin_rule() {
        let s = Stat::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.mean, s.std, s.n), (2.0, Some(1.0), 3));
        assert_eq!(Verdict::of(Some(&s)), Verdict::Unresolved, "2.0 is not beyond 2 × 1.0");
        let s = Stat::of(&[2.0, 2.2, 2.4]).unwrap();
        assert_eq!(Verdict::of(Some(&s)), Verdict::Ahead);
        let s = Stat::of(&[-2.0, -2.2, -2.4]).unwrap();
        assert_eq!(Verdict::of(Some(&s)), Verdict::Behind);
        assert_eq!(Verdict::of(Stat::of(&[-0.5]).as_ref()), Verdict::SignOnly(false));
        assert_eq!(Verdict::of(None), Verdict::Missing);
        assert!(Stat::of(&[]).is_none());
    }

    fn report(rows: &[(&str, f64)]) -> EvalReport {
        let ds =
            selfsup_data::ImageDataset::from_raw("t", 1, 1, 1, vec![0], Some(vec![0]), Some(1))
                .unwrap();
        let mut r = EvalReport::new("linear", 0, tch::Device::Cpu, &ds, &ds, serde_json::json!({}));
        for (tap, top1) in rows {
            r.rows.push(selfsup_eval::ResultRow {
                tap: tap.to_string(),
                variant: "linear".into(),
                map_shape: vec![],
                dim: 1,
                train_images: 10,
                top1: *top1,
                top5: 100.0,
                train_top1: None,
                best_epoch: None,
            });
        }
        r
    }

    #[test]
    fn paired_differences_match_seeds_and_pool_pairs() {
        let mut s = Scores::default();
        s.add("a", "p", 0, &report(&[("block1", 50.0), ("block2", 52.0)]));
        s.add("a", "p", 1, &report(&[("block1", 51.0), ("block2", 52.5)]));
        s.add("b", "p", 1, &report(&[("block1", 40.0), ("block2", 41.0)]));
        let d = s.paired_diff(&[(at("a", "p", "block2"), at("a", "p", "block1"))]).unwrap();
        assert_eq!(d.values, vec![2.0, 1.5]);
        // Only seed 1 is shared by a and b.
        let d = s.paired_diff(&[(at("a", "p", "block1"), at("b", "p", "block1"))]).unwrap();
        assert_eq!(d.values, vec![11.0]);
        // Pairs pool.
        let d = s
            .paired_diff(&[
                (at("a", "p", "block2"), at("a", "p", "block1")),
                (at("b", "p", "block2"), at("b", "p", "block1")),
            ])
            .unwrap();
        assert_eq!(d.values, vec![2.0, 1.5, 1.0]);
        assert_eq!(s.pooled(&[row("a", "p", Row::Last)]).unwrap().mean, 52.25);
        assert_eq!(s.pooled(&[row("a", "p", Row::Index(0))]).unwrap().mean, 50.5);
        assert!(s.pooled(&[at("a", "p", "block9")]).is_none());
        assert_eq!(s.train_images(&at("b", "p", "block1")), Some(10));
    }
}
