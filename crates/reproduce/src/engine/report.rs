//! The report of a plan, declared as data: text, tables whose cells cite probe scores,
//! published figures and differences, and findings decided by the margin rule
//! ([`super::scores::MARGIN`]). Rendered as `table.md` and as the `tables` and `findings` of
//! `results.json`.
use super::scores::{ScoreRef, Scores, Stat, Verdict};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// `table.md`: a title, then sections separated by blank lines.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The first line (`# ` is added).
    pub title: String,
    /// The sections, in order.
    pub sections: Vec<Section>,
}

/// One block of the report.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", content = "content", rename_all = "snake_case")]
pub enum Section {
    /// A paragraph or heading, as markdown.
    Text(String),
    /// A table.
    Table(Table),
    /// A list of findings, each decided by the margin rule.
    Findings(Vec<Finding>),
    /// `Command: \`<the command line of this invocation>\``.
    Command,
}

/// A markdown table.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// Its key in `results.json`'s `tables`.
    pub key: String,
    /// The columns.
    pub columns: Vec<Column>,
    /// The rows, one cell per column.
    pub rows: Vec<Vec<Cell>>,
}

/// A column: its heading, its key in each `results.json` row, its alignment.
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    /// Markdown heading.
    pub heading: String,
    /// Key of its cells in `results.json`.
    pub key: String,
    /// Right-aligned (numbers).
    pub right: bool,
}

/// A left-aligned column.
pub fn text_col(heading: &str, key: &str) -> Column {
    Column { heading: heading.into(), key: key.into(), right: false }
}

/// A right-aligned column.
pub fn num_col(heading: &str, key: &str) -> Column {
    Column { heading: heading.into(), key: key.into(), right: true }
}

/// A table cell.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", content = "of", rename_all = "snake_case")]
pub enum Cell {
    /// Text as is.
    Text(String),
    /// Text as code: `` `name` `` in markdown, the name alone in `results.json`.
    Code(String),
    /// A whole number (a label budget, say).
    Count(u64),
    /// A fixed figure (a paper's), `12.34`; `–` when `None`.
    Figure(Option<f64>),
    /// The mean of scores over their seeds, pooled over the references (one per pretraining
    /// seed, say), `12.34`.
    Mean(Vec<ScoreRef>),
    /// Their mean ± standard deviation over every seed of every reference (the mean alone for
    /// one value).
    Spread(Vec<ScoreRef>),
    /// The best test epoch's top-1, mean ± standard deviation, pooled likewise.
    Best(Vec<ScoreRef>),
    /// The difference of two cells' means, `+1.23`.
    Delta(Box<Cell>, Box<Cell>),
    /// A paired difference over seeds (and pooled over the pairs), `+1.23 ± 0.45`.
    PairedDiff(Vec<(ScoreRef, ScoreRef)>),
    /// The difference of two pooled scores' means with their spreads combined as
    /// independent, `+1.23 ± √(s_a² + s_b²)`.
    Gain(Vec<ScoreRef>, Vec<ScoreRef>),
    /// The labeled images behind a score.
    LabeledImages(ScoreRef),
    /// A training's last-epoch metric `key` times `scale` (`rotation_acc` × 100).
    RunMetric {
        /// The training.
        run: String,
        /// The metric.
        key: String,
        /// Factor.
        scale: f64,
    },
    /// A value of a training's `done.json` at a JSON pointer (`/seconds`), times `scale`.
    RunField {
        /// The training.
        run: String,
        /// The JSON pointer.
        pointer: String,
        /// Factor.
        scale: f64,
    },
    /// A training's row label: `text`, or `text (cannot use this trunk: reason)` when the
    /// engine found that its method cannot be built on the plan's trunk
    /// ([`super::plan::Training::optional`]).
    RunName {
        /// The training.
        run: String,
        /// The label.
        text: String,
    },
    /// The largest value among the cells (`–` when none has one), `12.34`.
    Max(Vec<Cell>),
    /// Spearman's rank correlation between the cells' values and the figures paired with them
    /// (over the pairs where the cell has a value; ties take their mean rank), `+0.80 (n = 6)`;
    /// `–` below three pairs.
    Spearman(Vec<(Cell, f64)>),
}

/// Ranks of `xs` from 1 (smallest), ties sharing their mean rank.
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && xs[order[j + 1]] == xs[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[order[k]] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's ρ of paired values (Pearson's correlation of their ranks); `None` below three
/// pairs or when either side is constant.
pub fn spearman(pairs: &[(f64, f64)]) -> Option<f64> {
    if pairs.len() < 3 {
        return None;
    }
    let a = ranks(&pairs.iter().map(|p| p.0).collect::<Vec<_>>());
    let b = ranks(&pairs.iter().map(|p| p.1).collect::<Vec<_>>());
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(&b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        return None;
    }
    Some(cov / (va * vb).sqrt())
}

/// What cells and findings are evaluated against.
pub struct Context<'a> {
    /// Every probe score.
    pub scores: &'a Scores,
    /// Each training's `done.json`.
    pub trainings: &'a BTreeMap<String, Value>,
    /// The command line of this invocation.
    pub command: &'a str,
}

fn f2(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2}"))
}

fn signed(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:+.2}"))
}

/// `mean ± std` (the mean alone for one value).
pub fn spread(v: Option<&Stat>) -> String {
    match v {
        Some(Stat { mean, std: Some(sd), .. }) => format!("{mean:.2} ± {sd:.2}"),
        Some(Stat { mean, .. }) => format!("{mean:.2}"),
        None => "–".into(),
    }
}

/// `+mean ± std` (the signed mean alone for one value).
pub fn signed_spread(v: Option<&Stat>) -> String {
    match v {
        Some(Stat { mean, std: Some(sd), .. }) => format!("{mean:+.2} ± {sd:.2}"),
        Some(Stat { mean, .. }) => format!("{mean:+.2}"),
        None => "–".into(),
    }
}

fn stat_json(s: Option<Stat>) -> Value {
    s.map_or(Value::Null, |s| json!(s))
}

impl Cell {
    /// The `(difference, spread)` of a [`Cell::Gain`].
    fn gain(ctx: &Context, a: &[ScoreRef], b: &[ScoreRef]) -> Option<(f64, f64)> {
        let (x, y) = (ctx.scores.pooled(a)?, ctx.scores.pooled(b)?);
        let var = x.std.unwrap_or(0.0).powi(2) + y.std.unwrap_or(0.0).powi(2);
        Some((x.mean - y.mean, var.sqrt()))
    }

    /// The cell's number: a mean, a figure or a difference.
    pub fn value(&self, ctx: &Context) -> Option<f64> {
        match self {
            Cell::Text(_) | Cell::Code(_) | Cell::RunName { .. } => None,
            Cell::Count(n) => Some(*n as f64),
            Cell::Figure(v) => *v,
            Cell::Mean(r) | Cell::Spread(r) => ctx.scores.pooled(r).map(|s| s.mean),
            Cell::Best(r) => ctx.scores.best_pooled(r).map(|s| s.mean),
            Cell::Delta(a, b) => Some(a.value(ctx)? - b.value(ctx)?),
            Cell::PairedDiff(pairs) => ctx.scores.paired_diff(pairs).map(|s| s.mean),
            Cell::Gain(a, b) => Self::gain(ctx, a, b).map(|g| g.0),
            Cell::LabeledImages(r) => ctx.scores.train_images(r).map(|n| n as f64),
            Cell::RunMetric { run, key, scale } => ctx
                .trainings
                .get(run)
                .and_then(|d| d["last_epoch"][key].as_f64())
                .map(|v| v * scale),
            Cell::RunField { run, pointer, scale } => ctx
                .trainings
                .get(run)
                .and_then(|d| d.pointer(pointer))
                .and_then(Value::as_f64)
                .map(|v| v * scale),
            Cell::Max(cells) => cells
                .iter()
                .filter_map(|c| c.value(ctx))
                .fold(None, |m, v| Some(m.map_or(v, |m: f64| m.max(v)))),
            Cell::Spearman(pairs) => spearman(&Self::pairs(ctx, pairs)),
        }
    }

    /// The `(value, figure)` pairs of a [`Cell::Spearman`] whose cell has a value.
    fn pairs(ctx: &Context, pairs: &[(Cell, f64)]) -> Vec<(f64, f64)> {
        pairs.iter().filter_map(|(c, f)| c.value(ctx).map(|v| (v, *f))).collect()
    }

    /// A [`Cell::RunName`]'s label, with the reason its training could not run, on one line.
    fn label(&self, ctx: &Context) -> String {
        let Cell::RunName { run, text } = self else { return String::new() };
        match ctx.trainings.get(run).and_then(|d| d["unusable"].as_str()) {
            Some(why) => {
                let why = why.split_whitespace().collect::<Vec<_>>().join(" ");
                format!("{text} (cannot use this trunk: {why})")
            }
            None => text.clone(),
        }
    }

    /// The cell as markdown.
    pub fn text(&self, ctx: &Context) -> String {
        match self {
            Cell::Text(t) => t.clone(),
            Cell::RunName { .. } => self.label(ctx).replace('|', "/"),
            Cell::Code(t) => format!("`{t}`"),
            Cell::Count(n) => n.to_string(),
            Cell::Figure(_)
            | Cell::Mean(_)
            | Cell::RunMetric { .. }
            | Cell::RunField { .. }
            | Cell::Max(_) => f2(self.value(ctx)),
            Cell::Spearman(pairs) => match self.value(ctx) {
                Some(rho) => format!("{rho:+.2} (n = {})", Self::pairs(ctx, pairs).len()),
                None => "–".into(),
            },
            Cell::Spread(r) => spread(ctx.scores.pooled(r).as_ref()),
            Cell::Best(r) => spread(ctx.scores.best_pooled(r).as_ref()),
            Cell::Delta(..) => signed(self.value(ctx)),
            Cell::PairedDiff(pairs) => signed_spread(ctx.scores.paired_diff(pairs).as_ref()),
            Cell::Gain(a, b) => match Self::gain(ctx, a, b) {
                Some((d, sd)) if sd > 0.0 => format!("{d:+.2} ± {sd:.2}"),
                Some((d, _)) => format!("{d:+.2}"),
                None => "–".into(),
            },
            Cell::LabeledImages(r) => {
                ctx.scores.train_images(r).map_or("–".into(), |n| n.to_string())
            }
        }
    }

    /// The cell in `results.json`: text, a number, or `{mean, std, n, values}`.
    pub fn json(&self, ctx: &Context) -> Value {
        match self {
            Cell::Text(t) | Cell::Code(t) => json!(t),
            Cell::RunName { .. } => json!(self.label(ctx)),
            Cell::Count(n) => json!(n),
            Cell::LabeledImages(r) => json!(ctx.scores.train_images(r)),
            Cell::Spread(r) => stat_json(ctx.scores.pooled(r)),
            Cell::Best(r) => stat_json(ctx.scores.best_pooled(r)),
            Cell::PairedDiff(pairs) => stat_json(ctx.scores.paired_diff(pairs)),
            Cell::Gain(a, b) => match Self::gain(ctx, a, b) {
                Some((d, sd)) => json!({"mean": d, "std": sd}),
                None => Value::Null,
            },
            _ => json!(self.value(ctx)),
        }
    }

    /// Checks the probes and trainings the cell cites.
    pub fn check_refs(
        &self,
        known: &dyn Fn(&ScoreRef) -> bool,
        runs: &dyn Fn(&str) -> bool,
    ) -> Result<(), String> {
        let check = |r: &ScoreRef| {
            if known(r) {
                Ok(())
            } else {
                Err(format!(
                    "a cell cites probe `{}` of `{}`, which the plan lacks",
                    r.probe, r.encoder
                ))
            }
        };
        match self {
            Cell::Text(_) | Cell::Code(_) | Cell::Count(_) | Cell::Figure(_) => Ok(()),
            Cell::Mean(r) | Cell::Spread(r) | Cell::Best(r) => r.iter().try_for_each(check),
            Cell::LabeledImages(r) => check(r),
            Cell::Delta(a, b) => a.check_refs(known, runs).and(b.check_refs(known, runs)),
            Cell::PairedDiff(pairs) => pairs.iter().try_for_each(|(a, b)| check(a).and(check(b))),
            Cell::Gain(a, b) => a.iter().chain(b).try_for_each(check),
            Cell::RunMetric { run, .. }
            | Cell::RunField { run, .. }
            | Cell::RunName { run, .. }
                if runs(run) =>
            {
                Ok(())
            }
            Cell::RunMetric { run, .. }
            | Cell::RunField { run, .. }
            | Cell::RunName { run, .. } => {
                Err(format!("a cell cites training `{run}`, which the plan lacks"))
            }
            Cell::Max(cells) => cells.iter().try_for_each(|c| c.check_refs(known, runs)),
            Cell::Spearman(pairs) => pairs.iter().try_for_each(|(c, _)| c.check_refs(known, runs)),
        }
    }
}

/// A qualitative result of the paper that the run must show, decided by the margin rule: a
/// difference counts only when it exceeds twice its standard deviation over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What is claimed (`RotNet ahead of random init at every block`).
    pub claim: String,
    /// What the paper found, as text (`yes`, `block2`, `+1.60`).
    pub paper: String,
    /// How the run decides it.
    pub test: Test,
}

/// A list of labelled paired differences (each pooled over its pairs).
pub type Diffs = Vec<(String, Vec<(ScoreRef, ScoreRef)>)>;

/// How a finding is decided.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// Holds when every difference is ahead beyond the margin; fails when one is behind
    /// beyond it.
    AllAhead(Diffs),
    /// The candidate with the highest mean, decided when it leads every other beyond the
    /// margin (paired differences, the candidates' references zipped: one per pretraining
    /// seed, say).
    Best(Vec<(String, Vec<ScoreRef>)>),
    /// A crossing: holds when the first difference is ahead and the last behind beyond the
    /// margin (the few-label table: pretraining ahead with few labels, training from scratch
    /// with many).
    Crossing(Diffs),
    /// At the candidate whose first side has the highest mean (a method's best layer), its
    /// difference: holds when ahead beyond the margin, fails when behind beyond it. The
    /// verdict names the candidate; every candidate's difference is listed.
    AtBest(Diffs),
}

/// The outcome of a finding.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The claim.
    pub claim: String,
    /// `yes`, `no`, `not resolved at this budget`, ... or, for [`Test::Best`], the winner.
    pub verdict: String,
    /// Whether the margin rule decided it.
    pub resolved: bool,
    /// The paper's result.
    pub paper: String,
    /// The differences behind it.
    pub differences: Vec<(String, Option<Stat>)>,
}

/// Why a set of verdicts cannot be decided by the margin rule: `Some("one seed")` when a
/// difference has a single value (no spread).
fn undecided(vs: &[Verdict]) -> Option<&'static str> {
    vs.iter().any(|v| matches!(v, Verdict::SignOnly(_))).then_some("one seed")
}

const NOT_MEASURED: &str = "not measured";

impl Finding {
    /// Decides the finding on `scores`.
    pub fn decide(&self, scores: &Scores) -> Outcome {
        let diffs = |d: &Diffs| -> Vec<(String, Option<Stat>)> {
            d.iter().map(|(l, pairs)| (l.clone(), scores.paired_diff(pairs))).collect()
        };
        let (verdict, resolved, differences) = match &self.test {
            Test::AllAhead(d) => {
                let ds = diffs(d);
                let vs: Vec<Verdict> = ds.iter().map(|(_, s)| Verdict::of(s.as_ref())).collect();
                let (v, ok) = if vs.contains(&Verdict::Missing) {
                    (NOT_MEASURED.to_string(), false)
                } else if vs.iter().all(|v| *v == Verdict::Ahead) {
                    ("yes".to_string(), true)
                } else if vs.contains(&Verdict::Behind) {
                    ("no".to_string(), true)
                } else if let Some(why) = undecided(&vs) {
                    let sign =
                        vs.iter().all(|v| matches!(v, Verdict::SignOnly(true) | Verdict::Ahead));
                    (
                        format!("{} by sign ({why}: no margin)", if sign { "yes" } else { "no" }),
                        false,
                    )
                } else {
                    ("not resolved at this budget".to_string(), false)
                };
                (v, ok, ds)
            }
            Test::Best(cands) => {
                let means: Vec<Option<f64>> =
                    cands.iter().map(|(_, refs)| scores.pooled(refs).map(|s| s.mean)).collect();
                let best = means
                    .iter()
                    .enumerate()
                    .filter_map(|(i, m)| m.map(|m| (i, m)))
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|b| b.0);
                match best {
                    None => (NOT_MEASURED.to_string(), false, Vec::new()),
                    Some(b) => {
                        let (name, refs) = &cands[b];
                        let ds: Vec<(String, Option<Stat>)> = cands
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| *i != b)
                            .map(|(_, (other, orefs))| {
                                let pairs: Vec<(ScoreRef, ScoreRef)> =
                                    refs.iter().cloned().zip(orefs.iter().cloned()).collect();
                                (format!("{name} − {other}"), scores.paired_diff(&pairs))
                            })
                            .collect();
                        let vs: Vec<Verdict> =
                            ds.iter().map(|(_, s)| Verdict::of(s.as_ref())).collect();
                        if vs.contains(&Verdict::Missing) {
                            (NOT_MEASURED.to_string(), false, ds)
                        } else if vs.iter().all(|v| *v == Verdict::Ahead) {
                            (name.clone(), true, ds)
                        } else if let Some(why) = undecided(&vs) {
                            (format!("{name} by mean ({why}: no margin)"), false, ds)
                        } else {
                            (format!("not resolved at this budget ({name} by mean)"), false, ds)
                        }
                    }
                }
            }
            Test::AtBest(d) => {
                let ds = diffs(d);
                let best = d
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (_, pairs))| {
                        let firsts: Vec<ScoreRef> = pairs.iter().map(|p| p.0.clone()).collect();
                        scores.pooled(&firsts).map(|s| (i, s.mean))
                    })
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|b| b.0);
                let (v, ok) = match best {
                    None => (NOT_MEASURED.to_string(), false),
                    Some(b) => {
                        let at = &d[b].0;
                        match Verdict::of(ds[b].1.as_ref()) {
                            Verdict::Missing => (NOT_MEASURED.to_string(), false),
                            Verdict::Ahead => (format!("yes (at {at})"), true),
                            Verdict::Behind => (format!("no (at {at})"), true),
                            Verdict::SignOnly(up) => (
                                format!(
                                    "{} by sign at {at} (one seed: no margin)",
                                    if up { "yes" } else { "no" }
                                ),
                                false,
                            ),
                            Verdict::Unresolved => {
                                (format!("not resolved at this budget (at {at})"), false)
                            }
                        }
                    }
                };
                (v, ok, ds)
            }
            Test::Crossing(d) => {
                let ds = diffs(d);
                let first = ds.first().map_or(Verdict::Missing, |x| Verdict::of(x.1.as_ref()));
                let last = ds.last().map_or(Verdict::Missing, |x| Verdict::of(x.1.as_ref()));
                let (v, ok) = match (first, last) {
                    (Verdict::Missing, _) | (_, Verdict::Missing) => {
                        (NOT_MEASURED.to_string(), false)
                    }
                    (Verdict::Ahead, Verdict::Behind) => ("yes".to_string(), true),
                    (Verdict::Behind, _) | (_, Verdict::Ahead) => ("no".to_string(), true),
                    (a, b) => match undecided(&[a, b]) {
                        Some(why) => {
                            let yes = matches!(a, Verdict::SignOnly(true) | Verdict::Ahead)
                                && matches!(b, Verdict::SignOnly(false) | Verdict::Behind);
                            (
                                format!(
                                    "{} by sign ({why}: no margin)",
                                    if yes { "yes" } else { "no" }
                                ),
                                false,
                            )
                        }
                        None => ("not resolved at this budget".to_string(), false),
                    },
                };
                (v, ok, ds)
            }
        };
        Outcome {
            claim: self.claim.clone(),
            verdict,
            resolved,
            paper: self.paper.clone(),
            differences,
        }
    }

    fn check_refs(&self, known: &dyn Fn(&ScoreRef) -> bool) -> Result<(), String> {
        let refs: Vec<&ScoreRef> = match &self.test {
            Test::AllAhead(d) | Test::Crossing(d) | Test::AtBest(d) => {
                d.iter().flat_map(|(_, p)| p.iter().flat_map(|(a, b)| [a, b])).collect()
            }
            Test::Best(c) => c.iter().flat_map(|(_, r)| r).collect(),
        };
        match refs.into_iter().find(|r| !known(r)) {
            Some(r) => Err(format!(
                "finding `{}` cites probe `{}` of `{}`, which the plan lacks",
                self.claim, r.probe, r.encoder
            )),
            None => Ok(()),
        }
    }
}

impl Outcome {
    /// The finding as a markdown list item.
    pub fn markdown(&self) -> String {
        let diffs: Vec<String> = self
            .differences
            .iter()
            .map(|(l, s)| format!("{l} {}", signed_spread(s.as_ref())))
            .collect();
        format!(
            "- {}: **{}** ({}; paper: {}).",
            self.claim,
            self.verdict,
            if diffs.is_empty() { "–".to_string() } else { diffs.join(", ") },
            self.paper
        )
    }
}

impl Table {
    fn markdown(&self, ctx: &Context) -> String {
        let mut s = String::from("|");
        for c in &self.columns {
            s += &format!(" {} |", c.heading);
        }
        s += "\n|";
        for c in &self.columns {
            s += if c.right { "---:|" } else { "---|" };
        }
        s.push('\n');
        for row in &self.rows {
            s.push('|');
            for cell in row {
                s += &format!(" {} |", cell.text(ctx));
            }
            s.push('\n');
        }
        s
    }

    fn json(&self, ctx: &Context) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|row| {
                    let mut o = serde_json::Map::new();
                    for (c, cell) in self.columns.iter().zip(row) {
                        o.insert(c.key.clone(), cell.json(ctx));
                    }
                    Value::Object(o)
                })
                .collect(),
        )
    }
}

impl Report {
    /// `table.md`.
    pub fn markdown(&self, ctx: &Context) -> String {
        let mut blocks = vec![format!("# {}\n", self.title)];
        for s in &self.sections {
            blocks.push(match s {
                Section::Text(t) => format!("{t}\n"),
                Section::Table(t) => t.markdown(ctx),
                Section::Findings(f) => {
                    f.iter().map(|f| f.decide(ctx.scores).markdown() + "\n").collect::<String>()
                }
                Section::Command => format!("Command: `{}`\n", ctx.command),
            });
        }
        blocks.join("\n")
    }

    /// `results.json`'s `tables` (by key, one object per row, keyed by column) and
    /// `findings`.
    pub fn json(&self, ctx: &Context) -> (Value, Value) {
        let mut tables = serde_json::Map::new();
        let mut findings = Vec::new();
        for s in &self.sections {
            match s {
                Section::Table(t) => {
                    tables.insert(t.key.clone(), t.json(ctx));
                }
                Section::Findings(f) => {
                    findings.extend(f.iter().map(|f| json!(f.decide(ctx.scores))));
                }
                _ => {}
            }
        }
        (Value::Object(tables), Value::Array(findings))
    }

    /// Checks every reference of the report.
    pub fn check_refs(
        &self,
        known: &dyn Fn(&ScoreRef) -> bool,
        runs: &dyn Fn(&str) -> bool,
    ) -> Result<(), String> {
        for s in &self.sections {
            match s {
                Section::Table(t) => {
                    for row in &t.rows {
                        if row.len() != t.columns.len() {
                            return Err(format!(
                                "table `{}` has a row of {} cells for {} columns",
                                t.key,
                                row.len(),
                                t.columns.len()
                            ));
                        }
                        for c in row {
                            c.check_refs(known, runs)
                                .map_err(|e| format!("table `{}`: {e}", t.key))?;
                        }
                    }
                }
                Section::Findings(f) => {
                    for x in f {
                        x.check_refs(known)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::scores::{at, Scores};
    use super::*;

    fn scores(values: &[(&str, &str, u64, f64)]) -> Scores {
        let mut s = Scores::default();
        let ds =
            selfsup_data::ImageDataset::from_raw("t", 1, 1, 1, vec![0], Some(vec![0]), Some(1))
                .unwrap();
        for (enc, tap, seed, top1) in values {
            let mut r = selfsup_eval::EvalReport::new(
                "nonlinear",
                *seed,
                tch::Device::Cpu,
                &ds,
                &ds,
                json!({}),
            );
            r.rows.push(selfsup_eval::ResultRow {
                tap: tap.to_string(),
                variant: "mlp".into(),
                map_shape: vec![],
                dim: 1,
                train_images: 1,
                top1: *top1,
                top5: 100.0,
                train_top1: None,
                best_epoch: None,
            });
            s.add(enc, "mlp", *seed, &r);
        }
        s
    }

    #[test]
    fn max_run_fields_and_rank_correlations() {
        let s =
            scores(&[("a", "conv1", 0, 30.0), ("a", "conv2", 0, 40.0), ("b", "conv1", 0, 20.0)]);
        let mut trainings = BTreeMap::new();
        trainings.insert("a".to_string(), json!({"seconds": 120.5, "summary": {"images": 7}}));
        let ctx = Context { scores: &s, trainings: &trainings, command: "" };
        let max = Cell::Max(vec![
            Cell::Mean(vec![at("a", "mlp", "conv1")]),
            Cell::Mean(vec![at("a", "mlp", "conv2")]),
            Cell::Mean(vec![at("a", "mlp", "conv3")]),
        ]);
        assert_eq!(max.value(&ctx), Some(40.0));
        assert_eq!(Cell::Max(vec![Cell::Figure(None)]).text(&ctx), "–");
        let secs = Cell::RunField { run: "a".into(), pointer: "/seconds".into(), scale: 1.0 };
        assert_eq!(secs.text(&ctx), "120.50");
        let imgs =
            Cell::RunField { run: "a".into(), pointer: "/summary/images".into(), scale: 2.0 };
        assert_eq!(imgs.value(&ctx), Some(14.0));
        let runs = |r: &str| r == "a";
        let known = |_: &ScoreRef| true;
        let other = Cell::RunField { run: "z".into(), pointer: "/seconds".into(), scale: 1.0 };
        assert!(other.check_refs(&known, &runs).unwrap_err().contains("training `z`"));
        // Same order: +1; reversed: −1; ties share their mean rank; a missing value drops
        // its pair, and fewer than three pairs give none.
        assert_eq!(spearman(&[(1.0, 10.0), (2.0, 20.0), (3.0, 35.0)]), Some(1.0));
        assert_eq!(spearman(&[(1.0, 30.0), (2.0, 20.0), (3.0, 10.0)]), Some(-1.0));
        let rho = spearman(&[(1.0, 1.0), (1.0, 2.0), (3.0, 3.0), (4.0, 4.0)]).unwrap();
        assert!((rho - 0.9486832980505138).abs() < 1e-12, "{rho}");
        assert_eq!(spearman(&[(1.0, 1.0), (2.0, 2.0)]), None);
        let rank = Cell::Spearman(vec![
            (Cell::Figure(Some(1.0)), 5.0),
            (Cell::Figure(Some(2.0)), 6.0),
            (Cell::Figure(None), 0.0),
            (Cell::Figure(Some(3.0)), 7.0),
        ]);
        assert_eq!(rank.text(&ctx), "+1.00 (n = 3)");
    }

    fn finding(test: Test) -> Finding {
        Finding { claim: "claim".into(), paper: "yes".into(), test }
    }

    #[test]
    fn findings_follow_the_margin_rule() {
        // Block 2 leads block 1 by 1.0 ± 0.1 at three seeds: decided.
        let s = scores(&[
            ("r", "block1", 0, 50.0),
            ("r", "block1", 1, 50.1),
            ("r", "block1", 2, 50.2),
            ("r", "block2", 0, 51.0),
            ("r", "block2", 1, 51.0),
            ("r", "block2", 2, 51.3),
        ]);
        let best = finding(Test::Best(vec![
            ("block1".into(), vec![at("r", "mlp", "block1")]),
            ("block2".into(), vec![at("r", "mlp", "block2")]),
        ]));
        let o = best.decide(&s);
        assert_eq!((o.verdict.as_str(), o.resolved), ("block2", true), "{o:?}");
        assert!(o.markdown().contains("block2 − block1 +1.00 ± 0.10"), "{}", o.markdown());
        // A lead within twice its spread is not resolved, and says which leads by mean.
        let s = scores(&[
            ("r", "block1", 0, 50.0),
            ("r", "block1", 1, 51.0),
            ("r", "block2", 0, 51.0),
            ("r", "block2", 1, 51.2),
        ]);
        let o = best.decide(&s);
        assert!(
            !o.resolved && o.verdict.starts_with("not resolved at this budget (block2"),
            "{o:?}"
        );
        let ahead = finding(Test::AllAhead(vec![(
            "block2".into(),
            vec![(at("r", "mlp", "block2"), at("r", "mlp", "block1"))],
        )]));
        assert_eq!(ahead.decide(&s).verdict, "not resolved at this budget");
        // One seed: the sign only, said so.
        let s = scores(&[("r", "block1", 0, 50.0), ("r", "block2", 0, 49.0)]);
        let o = ahead.decide(&s);
        assert!(!o.resolved && o.verdict == "no by sign (one seed: no margin)", "{o:?}");
        // Missing scores are said to be missing.
        assert_eq!(ahead.decide(&Scores::default()).verdict, "not measured");
        let cross = finding(Test::Crossing(vec![
            ("few".into(), vec![(at("r", "mlp", "block2"), at("r", "mlp", "block1"))]),
            ("many".into(), vec![(at("r", "mlp", "block1"), at("r", "mlp", "block2"))]),
        ]));
        let s = scores(&[
            ("r", "block1", 0, 50.0),
            ("r", "block1", 1, 50.1),
            ("r", "block2", 0, 53.0),
            ("r", "block2", 1, 53.0),
        ]);
        // Ahead at "few", and then the reverse difference is behind: a crossing.
        assert_eq!(cross.decide(&s).verdict, "yes");
    }

    #[test]
    fn at_best_decides_the_difference_where_the_first_side_peaks() {
        // Trained `t` peaks at block2 (60 against 55 at block1); random `r` at block1.
        let s = scores(&[
            ("t", "block1", 0, 55.0),
            ("t", "block1", 1, 55.0),
            ("t", "block2", 0, 60.0),
            ("t", "block2", 1, 60.4),
            ("r", "block1", 0, 57.0),
            ("r", "block1", 1, 57.0),
            ("r", "block2", 0, 50.0),
            ("r", "block2", 1, 50.2),
        ]);
        let f = finding(Test::AtBest(vec![
            ("block1".into(), vec![(at("t", "mlp", "block1"), at("r", "mlp", "block1"))]),
            ("block2".into(), vec![(at("t", "mlp", "block2"), at("r", "mlp", "block2"))]),
        ]));
        let o = f.decide(&s);
        // Behind at block 1 does not matter: block 2 is the trained encoder's best.
        assert_eq!((o.verdict.as_str(), o.resolved), ("yes (at block2)", true), "{o:?}");
        assert_eq!(o.differences.len(), 2);
        // Reversed, the best layer of `r` (block1) is behind `t` there beyond the margin.
        let g = finding(Test::AtBest(vec![
            ("block1".into(), vec![(at("r", "mlp", "block1"), at("t", "mlp", "block1"))]),
            ("block2".into(), vec![(at("r", "mlp", "block2"), at("t", "mlp", "block2"))]),
        ]));
        assert_eq!(g.decide(&s).verdict, "yes (at block1)");
        let s = scores(&[("t", "block1", 0, 55.0), ("r", "block1", 0, 56.0)]);
        let one = finding(Test::AtBest(vec![(
            "block1".into(),
            vec![(at("t", "mlp", "block1"), at("r", "mlp", "block1"))],
        )]));
        assert_eq!(one.decide(&s).verdict, "no by sign at block1 (one seed: no margin)");
        assert_eq!(one.decide(&Scores::default()).verdict, "not measured");
    }

    #[test]
    fn tables_render_cells_and_json() {
        let s =
            scores(&[("r", "block1", 0, 50.0), ("r", "block1", 1, 52.0), ("q", "block1", 0, 40.0)]);
        let trainings = BTreeMap::from([("run".to_string(), json!({"last_epoch": {"acc": 0.5}}))]);
        let ctx = Context { scores: &s, trainings: &trainings, command: "selfsup x" };
        let t = Table {
            key: "t".into(),
            columns: vec![
                text_col("Row", "row"),
                num_col("Ours", "ours"),
                num_col("Paper", "paper"),
                num_col("Δ", "diff"),
                num_col("Gain", "gain"),
                num_col("Acc", "acc"),
            ],
            rows: vec![vec![
                Cell::Text("a".into()),
                Cell::Spread(vec![at("r", "mlp", "block1")]),
                Cell::Figure(Some(60.0)),
                Cell::Delta(
                    Box::new(Cell::Mean(vec![at("r", "mlp", "block1")])),
                    Box::new(Cell::Figure(Some(60.0))),
                ),
                Cell::Gain(vec![at("r", "mlp", "block1")], vec![at("q", "mlp", "block1")]),
                Cell::RunMetric { run: "run".into(), key: "acc".into(), scale: 100.0 },
            ]],
        };
        let r = Report {
            title: "T".into(),
            sections: vec![Section::Text("## 1".into()), Section::Table(t), Section::Command],
        };
        let md = r.markdown(&ctx);
        assert_eq!(
            md,
            "# T\n\n## 1\n\n| Row | Ours | Paper | Δ | Gain | Acc |\n|---|---:|---:|---:|---:|---:|\n\
             | a | 51.00 ± 1.41 | 60.00 | -9.00 | +11.00 ± 1.41 | 50.00 |\n\nCommand: `selfsup x`\n"
        );
        let (tables, _) = r.json(&ctx);
        assert_eq!(tables["t"][0]["ours"]["n"], 2);
        assert_eq!(tables["t"][0]["diff"], -9.0);
        let known = |r: &ScoreRef| r.encoder == "r";
        let runs = |_: &str| true;
        let err = r.check_refs(&known, &runs).unwrap_err();
        assert!(err.contains("`mlp` of `q`"), "{err}");
    }
}
