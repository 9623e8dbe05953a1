//! `results/bench/README.md`: the latest training-step figures of every kind of machine, as
//! tables, rendered from `results/bench/train.json` (the record `cargo xtask bench train`
//! keeps per machine, backbone and method). `cargo xtask bench train` rewrites it after each
//! method it measures and `cargo xtask tables` regenerates it; a test checks that the committed
//! file is what the committed record gives, so the page never drifts from the figures.
use crate::bench_train::MODES;
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

/// The record, relative to the workspace root.
pub const RECORD: &str = "results/bench/train.json";
/// The page rendered from it, relative to the workspace root.
pub const PAGE: &str = "results/bench/README.md";

/// Whether a PyTorch variant of the record is the compiled step (`--compiled`: "compiled +
/// jemalloc", or "compiled" where jemalloc is missing).
fn is_compiled(variant: &str) -> bool {
    variant.starts_with("compiled")
}

/// A whole-number field of the record (batch size, steps, runs, threads), `?` where missing.
fn count(v: &Value) -> String {
    v.as_u64().map_or("?".into(), |n| n.to_string())
}

/// A number of images per second as the tables show it: whole above 100, one decimal below.
fn rate(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// The cell of one mode: `selfsup / PyTorch's best variant` (medians), `(compiled)` when
/// PyTorch's best was its compiled step; `skipped` where the record has no such mode.
fn mode_cell(entry: &Value, mode: &str) -> String {
    let Some(m) = entry["modes"].as_array().into_iter().flatten().find(|m| m["mode"] == mode)
    else {
        return "skipped".into();
    };
    let ours = m["selfsup"]["images_per_s"].as_f64();
    let best = m["pytorch"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["images_per_s"].as_f64()?, v["variant"].as_str().unwrap_or("?"))))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match (ours, best) {
        (Some(o), Some((t, variant))) => format!(
            "{} / {}{}",
            rate(o),
            rate(t),
            if is_compiled(variant) { " (compiled)" } else { "" }
        ),
        _ => "–".into(),
    }
}

/// The timed steps a run: the count of each mode, in the modes' order and joined by `/` where
/// they differ (`--seconds` chose them), else the entry's `steps` (`--steps N`).
fn steps(entry: &Value) -> String {
    let mut per_mode: Vec<String> = entry["modes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["steps"].as_u64().map(|n| n.to_string()))
        .collect();
    per_mode.dedup();
    if per_mode.is_empty() {
        count(&entry["steps"])
    } else {
        per_mode.join("/")
    }
}

/// Whether PyTorch's compiled step ran: `yes`, `no` (not asked for), or `failed` where a
/// mode's compilation failed.
fn compiled(entry: &Value) -> &'static str {
    let variants: Vec<&Value> = entry["modes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| m["pytorch"].as_array().into_iter().flatten())
        .filter(|v| v["variant"].as_str().is_some_and(is_compiled))
        .collect();
    if variants.iter().any(|v| v.get("failed").is_some()) {
        "failed"
    } else if variants.is_empty() {
        "no"
    } else {
        "yes"
    }
}

/// A record's best-against-best ratio, from the two rates it compares where the record holds
/// them: the stored `ratio` is rounded to 3 digits, and rounding that again to the tables' 2
/// (2.3352 → 2.335 → 2.33) would disagree with the 2.34 the bench printed.
fn best_ratio(b: &Value) -> Option<f64> {
    match (b["selfsup_images_per_s"].as_f64(), b["pytorch_images_per_s"].as_f64()) {
        (Some(s), Some(p)) if p > 0.0 => Some(s / p),
        _ => b["ratio"].as_f64(),
    }
}

/// The table row of one method.
fn row(method: &str, e: &Value) -> String {
    let enc = &e["encoder"];
    let encoder = format!(
        "{} {}",
        enc["kind"].as_str().unwrap_or("?"),
        enc["width"].as_u64().map_or(String::new(), |w| w.to_string())
    );
    let b = &e["best"];
    let num = |k: &str| b[k].as_f64().map_or("–".into(), rate);
    let ratio = best_ratio(b).map_or("–".into(), |r| format!("**{r:.2}×**"));
    let target = match (b["target"].as_f64(), b["met"].as_bool()) {
        (Some(t), Some(met)) => format!("{t:.1}× {}", if met { "met" } else { "**not met**" }),
        _ => "–".into(),
    };
    let cells: Vec<String> = MODES.iter().map(|m| mode_cell(e, m.name)).collect();
    format!(
        "| {method} | {}, {} | {} | {} ({}) | {} ({}) | {ratio} | {target} | {} | {} × {} | {} |\n",
        encoder.trim(),
        count(&e["batch_size"]),
        cells.join(" | "),
        num("selfsup_images_per_s"),
        b["selfsup"].as_str().unwrap_or("?"),
        num("pytorch_images_per_s"),
        b["pytorch"].as_str().unwrap_or("?"),
        compiled(e),
        steps(e),
        count(&e["repeats"]),
        measured(e),
    )
}

/// When and on which commit a record was measured (`measured` in the record: the date, and
/// the commit's first 7 digits with `+changes` kept; `added <date> in <commit>` for the
/// records stamped from git history, `from` set), `–` for records without it.
fn measured(e: &Value) -> String {
    let m = &e["measured"];
    match (m["date"].as_str(), m["commit"].as_str()) {
        (Some(d), Some(c)) => {
            let (hash, rest) = c.split_at(c.find('+').unwrap_or(c.len()));
            let short = if hash.len() > 7 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                &hash[..7]
            } else {
                hash
            };
            if m["from"].is_null() {
                format!("{d}, `{short}{rest}`")
            } else {
                // Stamped afterwards from git history: the commit that added the row.
                format!("added {d} in `{short}{rest}`")
            }
        }
        _ => "–".into(),
    }
}

/// The page for the record `all` (`{cpu: {backbone: {method: entry}}}`).
pub fn render(all: &Value) -> String {
    let mut s = String::from(
        "# Training step against PyTorch: the latest figures\n\n\
         Generated from [`train.json`](train.json) by `cargo xtask bench train` (after each method\n\
         it measures) and `cargo xtask tables`; do not edit by hand. How the bench measures, the\n\
         profiles behind these figures and the passes before them:\n\
         [`bench/README.md`](../../bench/README.md). One section a kind of machine and backbone;\n\
         each method's row is its latest pass on that kind (the row's command in `train.json`).\n\
         Cells: selfsup's median / the median of PyTorch's best variant in that mode, images per\n\
         second, `(compiled)` where that was PyTorch's `torch.compile` step; ratio: selfsup's best\n\
         mode against PyTorch's best variant and mode; `torch.compile`: whether PyTorch's compiled\n\
         variant ran (`--compiled`); runs: timed steps × interleaved runs a side (steps a mode, as\n\
         `--seconds` chose them, where they differ); measured: the date and the commit of the code\n\
         measured (`+changes`: with uncommitted changes), or, for the rows measured before the\n\
         bench kept them, \"added\" with the date and commit that added the row to the\n\
         record. Absolute speeds do not carry from one machine to another, nor between sessions\n\
         on one kind; ratios do.\n",
    );
    for (cpu, backbones) in all.as_object().into_iter().flatten() {
        for (backbone, methods) in backbones.as_object().into_iter().flatten() {
            let Some(methods) = methods.as_object().filter(|m| !m.is_empty()) else { continue };
            let first = methods.values().next().unwrap_or(&Value::Null);
            s += &format!("\n## {cpu}, backbone `{backbone}`\n\n");
            s += &format!(
                "{} threads; bf16: {}; {}.\n\n",
                count(&first["threads"]),
                first["bf16"].as_str().unwrap_or("?"),
                first["jemalloc"].as_str().unwrap_or("?"),
            );
            let modes: Vec<&str> = MODES.iter().map(|m| m.name).collect();
            s += &format!(
                "| method | encoder, batch | {} | selfsup best | PyTorch best | ratio | target \
                 | `torch.compile` | runs | measured |\n|---|---|{}---:|---:|---:|---|---|---|---|\n",
                modes.join(" | "),
                "---:|".repeat(modes.len())
            );
            for (method, e) in methods {
                s += &row(method, e);
            }
            let lowest = methods
                .iter()
                .filter_map(|(m, e)| Some((best_ratio(&e["best"])?, m)))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            let met = methods.values().filter(|e| e["best"]["met"] == true).count();
            if let Some((low, m)) = lowest {
                let n = methods.len();
                s += &format!(
                    "\nTarget met by {met} of {n} method{}; lowest ratio {low:.2}× ({m}).\n",
                    if n == 1 { "" } else { "s" }
                );
            }
        }
    }
    s
}

/// The page the record at `root` gives.
pub fn generate(root: &Path) -> Result<String> {
    let path = root.join(RECORD);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let all: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(render(&all))
}

/// Writes the page for the record at `root` (only when it changes); returns whether it did.
pub fn write(root: &Path) -> Result<bool> {
    crate::tables::write_if_changed(&root.join(PAGE), &generate(root)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_committed_page_is_what_the_record_gives() {
        let root = crate::project_root();
        let committed = std::fs::read_to_string(root.join(PAGE)).unwrap_or_default();
        assert!(committed == generate(&root).unwrap(), "{PAGE} is stale: run `cargo xtask tables`");
    }

    #[test]
    fn rows_show_each_modes_best_variant_and_the_verdict() {
        let measured = |x: f64, v: &str| json!({"images_per_s": x, "variant": v});
        let entry = json!({
            "encoder": {"kind": "nin", "width": 16}, "batch_size": 64, "steps": 10,
            "repeats": 3, "threads": 2, "bf16": "skipped", "jemalloc": "no jemalloc",
            "modes": [
                {"mode": "fp32", "selfsup": {"images_per_s": 90.0},
                 "pytorch": [measured(80.0, "default"), measured(95.5, "compiled")]},
                {"mode": "channels-last", "selfsup": {"images_per_s": 120.0},
                 "pytorch": [measured(100.0, "fused"),
                             json!({"failed": "inductor", "variant": "compiled + jemalloc"})]},
            ],
            "best": {"selfsup": "channels-last", "selfsup_images_per_s": 120.0,
                     "pytorch": "channels-last, fused", "pytorch_images_per_s": 100.0,
                     "ratio": 1.2, "target": 1.2, "met": true},
        });
        assert_eq!(mode_cell(&entry, "fp32"), "90.0 / 95.5 (compiled)");
        assert_eq!(mode_cell(&entry, "channels-last"), "120 / 100");
        assert_eq!(mode_cell(&entry, "channels-last + bf16"), "skipped");
        assert_eq!(compiled(&entry), "failed");
        assert_eq!(
            row("rotnet", &entry),
            "| rotnet | nin 16, 64 | 90.0 / 95.5 (compiled) | 120 / 100 | skipped | 120 \
             (channels-last) | 100 (channels-last, fused) | **1.20×** | 1.2× met | failed | 10 × 3 \
             | – |\n"
        );
        let mut dated = entry.clone();
        dated["measured"] = json!({"date": "2026-12-05", "commit": "6f2010d4f3a1+changes"});
        assert!(row("rotnet", &dated).ends_with("| 10 × 3 | 2026-12-05, `6f2010d+changes` |\n"));
        dated["measured"]["commit"] = json!("unknown");
        assert!(row("rotnet", &dated).ends_with("| 2026-12-05, `unknown` |\n"));
        dated["measured"] = json!({"date": "2026-12-02", "commit": "9dea24e50b0b", "from": "git"});
        assert!(row("rotnet", &dated).ends_with("| added 2026-12-02 in `9dea24e` |\n"));
        let mut slow = entry.clone();
        slow["best"]["ratio"] = json!(0.89);
        slow["best"]["selfsup_images_per_s"] = json!(89.0);
        slow["best"]["met"] = json!(false);
        let page = render(&json!({"Some CPU": {"cpu": {"rotnet": entry, "cpc": slow}}}));
        assert!(page.contains("\n## Some CPU, backbone `cpu`\n"), "{page}");
        assert!(page.contains("| **0.89×** | 1.2× **not met** |"), "{page}");
        assert!(page.contains("Target met by 1 of 2 methods; lowest ratio 0.89× (cpc)."), "{page}");
    }

    #[test]
    fn the_ratio_is_rounded_once_from_the_two_rates() {
        // 2427.42 / 1039.50 = 2.3352: the bench printed 2.34x, its record holds 2.335.
        let best = json!({"selfsup_images_per_s": 2427.42, "pytorch_images_per_s": 1039.5,
                          "ratio": 2.335});
        assert_eq!(format!("{:.2}", best_ratio(&best).unwrap()), "2.34");
        assert_eq!(best_ratio(&json!({"ratio": 0.89})), Some(0.89));
    }

    #[test]
    fn steps_chosen_per_mode_are_shown_per_mode() {
        let mut e = json!({"steps": "about 5 s a run", "modes": [{"steps": 84}, {"steps": 97}]});
        assert_eq!(steps(&e), "84/97");
        e["modes"][1]["steps"] = json!(84);
        assert_eq!(steps(&e), "84");
        assert_eq!(steps(&json!({"steps": 10, "modes": [{"mode": "fp32"}]})), "10");
    }
}
