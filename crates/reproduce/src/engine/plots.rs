//! PNG charts of a reproduction (plotters, bitmap backend): the training curves of every
//! training from its `metrics.jsonl`, and the plan's charts of probe scores (per block, say).
//! The text is drawn in DejaVu Sans, embedded in the binary (`assets/`, its licence beside it),
//! so that charts draw on machines without fonts or fontconfig (GPU servers, containers).
use super::plan::{Chart, Scatter};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

/// DejaVu Sans, the one face of every chart.
static SANS: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Registers [`SANS`] as plotters' `sans-serif` (once per process).
fn fonts() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, SANS).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("plotting: the embedded DejaVu Sans is not a font plotters can read"))
    }
}

/// `(step, loss, accuracy)` of the `"kind": "step"` lines of a metrics file; the accuracy is
/// `rotation_acc` or, for the supervised run, any `*acc*` metric.
/// `(step, loss, accuracy)` points of one run.
type Curve = Vec<(f64, f64, Option<f64>)>;

fn read_curve(path: &Path) -> Result<Curve> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "step")
        .filter_map(|v| {
            let acc = v.as_object().and_then(|o| {
                o.iter().find(|(k, _)| k.contains("acc")).and_then(|(_, a)| a.as_f64())
            });
            Some((v["step"].as_f64()?, v["loss"].as_f64()?, acc))
        })
        .collect())
}

/// Loss (left) and accuracy (right) against the optimizer step, one line per run.
pub fn training_curves(runs: &[(String, PathBuf)], out: &Path) -> Result<()> {
    fonts()?;
    let curves: Vec<(String, Curve)> =
        runs.iter().map(|(n, p)| Ok((n.clone(), read_curve(p)?))).collect::<Result<_>>()?;
    let root = BitMapBackend::new(out, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(600);
    let max_step = curves.iter().flat_map(|c| c.1.iter().map(|p| p.0)).fold(1.0, f64::max);
    let max_loss = curves.iter().flat_map(|c| c.1.iter().map(|p| p.1)).fold(0.1, f64::max);
    for (area, title, accuracy) in
        [(left, "training loss", false), (right, "training accuracy (%)", true)]
    {
        let y_max = if accuracy { 100.0 } else { max_loss * 1.05 };
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..max_step, 0.0..y_max)
            .map_err(err)?;
        chart.configure_mesh().x_desc("step").draw().map_err(err)?;
        for (i, (name, pts)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let series: Vec<(f64, f64)> = pts
                .iter()
                .filter_map(
                    |&(s, l, a)| if accuracy { a.map(|a| (s, 100.0 * a)) } else { Some((s, l)) },
                )
                .collect();
            chart
                .draw_series(LineSeries::new(series, color.stroke_width(2)))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(if accuracy {
                SeriesLabelPosition::LowerRight
            } else {
                SeriesLabelPosition::UpperRight
            })
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// `chart` with its series' values (`None` where a score is missing; a series with none is
/// left out), one point per x position, on a 0–100 % axis.
pub fn chart(chart: &Chart, values: &[(String, Vec<Option<f64>>)], out: &Path) -> Result<()> {
    fonts()?;
    let n = chart.x_labels.len().max(1);
    let root = BitMapBackend::new(out, (800, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut plot = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.5..(n as f64 + 0.5), 0.0..100.0)
        .map_err(err)?;
    let labels = chart.x_labels.clone();
    let label = move |x: &f64| {
        let i = x.round() as usize;
        labels.get(i.wrapping_sub(1)).cloned().unwrap_or_default()
    };
    plot.configure_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        .y_desc("top-1 (%)")
        .draw()
        .map_err(err)?;
    for (i, (name, ys)) in values.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> =
            ys.iter().enumerate().filter_map(|(j, y)| y.map(|v| (j as f64 + 1.0, v))).collect();
        if pts.is_empty() {
            continue;
        }
        plot.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
        plot.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    plot.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// `scatter`'s labelled points `(label, x, y)`, each a dot with its label beside it, on axes
/// fitted to the points.
pub fn scatter(scatter: &Scatter, points: &[(String, f64, f64)], out: &Path) -> Result<()> {
    fonts()?;
    let root = BitMapBackend::new(out, (800, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let fit = |vals: Vec<f64>| {
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            return (0.0, 1.0);
        }
        let pad = ((hi - lo) * 0.1).max(1e-3 * hi.abs().max(1.0));
        (lo - pad, hi + pad)
    };
    let (x0, x1) = fit(points.iter().map(|p| p.1).collect());
    let (y0, y1) = fit(points.iter().map(|p| p.2).collect());
    let mut plot = ChartBuilder::on(&root)
        .caption(&scatter.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    plot.configure_mesh()
        .x_desc(scatter.x_desc.as_str())
        .y_desc(scatter.y_desc.as_str())
        .draw()
        .map_err(err)?;
    for (i, (label, x, y)) in points.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        plot.draw_series(std::iter::once(Circle::new((*x, *y), 5, color.filled()))).map_err(err)?;
        plot.draw_series(std::iter::once(Text::new(
            label.clone(),
            (*x, *y),
            ("sans-serif", 14).into_font(),
        )))
        .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The captions are drawn (dark pixels in the band above the left chart) with no system
    /// font at hand: the face is the embedded one.
    #[test]
    fn charts_draw_their_text_with_the_embedded_font() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        std::fs::write(
            &metrics,
            "{\"kind\":\"step\",\"step\":1,\"loss\":2.0,\"rotation_acc\":0.3}\n\
             {\"kind\":\"step\",\"step\":2,\"loss\":1.5,\"rotation_acc\":0.5}\n",
        )
        .unwrap();
        let png = dir.path().join("curves.png");
        training_curves(&[("run".into(), metrics)], &png).unwrap();
        let img = image::open(&png).unwrap().to_luma8();
        assert_eq!(img.dimensions(), (1200, 480));
        let dark = (0..600).flat_map(|x| (0..30).map(move |y| (x, y)));
        let dark = dark.filter(|&(x, y)| img.get_pixel(x, y).0[0] < 128).count();
        assert!(dark > 100, "{dark} dark pixels where the caption goes");
    }
}
