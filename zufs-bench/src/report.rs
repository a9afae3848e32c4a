//! Tables (markdown) and plots (PNG) of the results.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::configs::Config;
use crate::fio::{Dir, Shape};
use crate::{BenchError, Cell, Outcome};

fn cells(cells: &[Cell], shape: Shape, rw: Dir) -> impl Iterator<Item = &Cell> {
    cells.iter().filter(move |c| c.shape == shape && c.rw == rw)
}

fn find(cells: &[Cell], shape: Shape, rw: Dir, cfg: Config, threads: usize) -> Option<&Cell> {
    cells.iter().find(|c| c.shape == shape && c.rw == rw && c.config == cfg && c.threads == threads)
}

fn fmt_iops(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}K", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// The markdown report: per shape and direction, threads x configuration with IOPS (or MB/s),
/// mean and p99 latency, and ratios to the FUSE row and to tmpfs.
#[must_use]
pub fn markdown(all: &[Cell], configs: &[Config], threads: &[usize]) -> String {
    let mut s = String::new();
    let shapes = [Shape::Rand4k, Shape::Seq1m, Shape::Vec32x4k];
    for shape in shapes {
        for rw in [Dir::Write, Dir::Read] {
            if cells(all, shape, rw).next().is_none() {
                continue;
            }
            let unit = if shape == Shape::Rand4k { "IOPS" } else { "MB/s" };
            let _ =
                writeln!(s, "\n### {} {} ({unit}; mean / p99 latency µs; x FUSE, x tmpfs)\n", shape.name(), rw.name());
            let _ = write!(s, "| threads |");
            for c in configs {
                let _ = write!(s, " {} |", c.name());
            }
            let _ = write!(s, "\n|---|");
            for _ in configs {
                let _ = write!(s, "---|");
            }
            s.push('\n');
            for &t in threads {
                let _ = write!(s, "| {t} |");
                let base = |cfg| find(all, shape, rw, cfg, t).and_then(|c| c.outcome.measured()).map(|m| m.rate(shape));
                let (fuse, tmpfs) = (base(Config::Fuse), base(Config::Tmpfs));
                for &cfg in configs {
                    match find(all, shape, rw, cfg, t).map(|c| &c.outcome) {
                        Some(Outcome::Measured(m)) => {
                            let r = m.rate(shape);
                            let v = if shape == Shape::Rand4k { fmt_iops(r) } else { format!("{r:.0}") };
                            let rf = fuse.filter(|f| *f > 0.0).map_or("-".into(), |f| format!("{:.1}x", r / f));
                            let rt = tmpfs.filter(|f| *f > 0.0).map_or("-".into(), |f| format!("{:.2}x", r / f));
                            let _ = write!(s, " {v} ({:.1} / {:.1}; {rf}, {rt}) |", m.mean_us, m.p99_us);
                        }
                        Some(Outcome::Failed(e)) => {
                            let _ = write!(s, " failed: {} |", e.replace('|', "/"));
                        }
                        Some(Outcome::Missing(e)) => {
                            let _ = write!(s, " missing: {} |", e.replace('|', "/"));
                        }
                        None => {
                            let _ = write!(s, " - |");
                        }
                    }
                }
                s.push('\n');
            }
        }
    }
    s
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}K", v / 1e3)
    } else {
        format!("{v}")
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0, 0, 0),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

fn register_font() -> Result<(), BenchError> {
    static ONCE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ];
        let bytes = candidates
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| "no TrueType font found (apt-get install fonts-dejavu-core)".to_owned())?;
        let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, leaked)
            .map_err(|_| "font did not load".to_owned())
    })
    .clone()
    .map_err(BenchError::Plot)
}

/// Draws `<shape>-<rw>-rate.png` and `<shape>-<rw>-latency.png` in `dir`; returns the files.
///
/// # Errors
/// [`BenchError::Plot`].
pub fn plots(dir: &Path, all: &[Cell], configs: &[Config], threads: &[usize]) -> Result<Vec<String>, BenchError> {
    register_font()?;
    let mut files = Vec::new();
    for shape in [Shape::Rand4k, Shape::Seq1m, Shape::Vec32x4k] {
        for rw in [Dir::Write, Dir::Read] {
            if cells(all, shape, rw).next().is_none() {
                continue;
            }
            for latency in [false, true] {
                let name = format!("{}-{}-{}.png", shape.name(), rw.name(), if latency { "latency" } else { "rate" });
                plot_one(&dir.join(&name), all, configs, threads, shape, rw, latency)?;
                files.push(name);
            }
        }
    }
    Ok(files)
}

#[allow(clippy::too_many_arguments)] // one plot's full description; a struct would only rename them
fn plot_one(
    path: &Path,
    all: &[Cell],
    configs: &[Config],
    threads: &[usize],
    shape: Shape,
    rw: Dir,
    latency: bool,
) -> Result<(), BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError::Plot(format!("{}: {e}", path.display()));
    let series: Vec<(Config, Vec<(f64, f64)>)> = configs
        .iter()
        .map(|&cfg| {
            let pts = threads
                .iter()
                .filter_map(|&t| {
                    let m = find(all, shape, rw, cfg, t)?.outcome.measured()?;
                    let y = if latency { m.mean_us } else { m.rate(shape) };
                    (y > 0.0).then_some((t as f64, y))
                })
                .collect();
            (cfg, pts)
        })
        .filter(|(_, p): &(Config, Vec<(f64, f64)>)| !p.is_empty())
        .collect();
    let ymax = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.1)).fold(1.0f64, f64::max);
    let ymin = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.1)).fold(ymax, f64::min).max(1e-3);
    let xmax = threads.iter().copied().max().unwrap_or(1) as f64;
    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let what = if latency {
        "mean latency (µs, log scale)"
    } else if shape == Shape::Rand4k {
        "IOPS (log scale)"
    } else {
        "MB/s (log scale)"
    };
    let title = format!("fio {} {}: {what} vs threads", shape.name(), rw.name());
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.8f64..xmax * 1.1, (ymin / 8.0..ymax * 2.0).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("threads (fio numjobs)")
        .y_desc(what)
        // One tick per integer thread count (up to 16), so 1 is labelled too.
        .x_labels(threads.iter().copied().max().unwrap_or(1).clamp(2, 16) + 1)
        .x_label_formatter(&|x| if (x - x.round()).abs() < 1e-6 { format!("{x:.0}") } else { String::new() })
        .y_label_formatter(&|y| si(*y))
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| err(&e))?;
    for (cfg, pts) in &series {
        let idx = Config::ALL.iter().position(|c| c == cfg).unwrap_or(0);
        let color = COLORS[idx % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(3)))
            .map_err(|e| err(&e))?
            .label(cfg.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        // The y range leaves a decade of space under the lowest line for the legend.
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
