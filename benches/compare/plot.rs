//! PNG plots of throughput against p99 latency, one per durability mode: for each system and
//! record size, the closed-loop cases on one hot log at 1, 16 and 256 appends in flight.
//! Text needs a font: Debian's `fonts-dejavu-core` TTF, registered at run time (plotters'
//! `ab_glyph` backend, no fontconfig).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::prelude::*;
use plotters::style::FontStyle;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One line: a system at one record size; points are (MB/s, p99 ms) in order of load.
#[derive(Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// True for Tally (solid), false for JetStream (dashed look: hollow points).
    pub tally: bool,
    /// Colour index (record size).
    pub colour: usize,
    /// (MB/s, p99 ms).
    pub points: Vec<(f64, f64)>,
}

/// Registers the font once.
pub fn register_font() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("read {FONT} (Debian fonts-dejavu-core: bash ops/setup.sh)"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    Ok(())
}

/// Draws `series` to `<dir>/<file>` with `title`; returns the path.
pub fn draw(dir: &Path, file: &str, title: &str, series: &[Series]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(file);
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.clone()).collect();
    anyhow::ensure!(!all.is_empty(), "nothing to plot for {title}");
    let x_min = all.iter().map(|p| p.0).fold(f64::MAX, f64::min).max(0.001) / 1.5;
    let x_max = all.iter().map(|p| p.0).fold(0.0, f64::max) * 1.5 + 1e-3;
    let y_min = all.iter().map(|p| p.1).fold(f64::MAX, f64::min).max(0.01) / 1.5;
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max) * 1.5 + 1e-3;
    draw_to(&path, title, series, (x_min, x_max), (y_min, y_max))?;
    Ok(path)
}

fn draw_to(
    path: &Path,
    title: &str,
    series: &[Series],
    (x_min, x_max): (f64, f64),
    (y_min, y_max): (f64, f64),
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((x_min..x_max).log_scale(), (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("acknowledged payload, MB/s (log)")
        .y_desc("ack latency p99, ms (log)")
        .label_style(("sans-serif", 14))
        .draw()?;
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for s in series {
        let colour = palette[s.colour % palette.len()];
        let style = if s.tally {
            colour.stroke_width(3)
        } else {
            colour.mix(0.6).stroke_width(1)
        };
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        let tally = s.tally;
        chart.draw_series(s.points.iter().map(move |&p| {
            if tally {
                Circle::new(p, 5, colour.filled())
            } else {
                Circle::new(p, 5, colour.stroke_width(2))
            }
        }))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
