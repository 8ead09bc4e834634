//! Every table crossmerge writes: aligned text tables (the CLI's listings), CSV (comparisons,
//! evaluations), and plots (PNG or SVG, by the file's extension) of comparison results. The
//! front ends only print what this module formats.
//!
//! Plots: the vector × vector cosine matrix, vectors × groups (layers or modules) against the
//! reference, and a per-group line chart against the reference. Each has a title, axis
//! labels, its values printed in the cells (heatmaps) and a colour bar or legend. Text is set
//! in a font embedded in the binary (Ubuntu Light, from `epaint_default_fonts`), so plots look
//! the same on every machine and need no system fonts.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::catalog::EvaluationRow;
use crate::error::{Error, Result};
use crate::vector::compare::CompareReport;

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
            .map_err(|_| ())
            .expect("the embedded font parses");
    });
}

/// Rows as left-aligned columns separated by two spaces (the last column unpadded, trailing
/// spaces trimmed), the header first; one line per row, each ending in a newline.
pub fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>());
    for r in rows {
        line(r);
    }
    out
}

/// Stored evaluations as a text table: one row per evaluation, its metrics on one line.
pub fn evaluations_table(rows: &[EvaluationRow]) -> String {
    let dash = |s: Option<&String>| s.cloned().unwrap_or_else(|| "-".to_owned());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.checkpoint.clone(),
                r.task.clone(),
                dash(r.language.as_ref()),
                dash(r.split.as_ref()),
                r.metrics
                    .iter()
                    .map(|(k, v)| format!("{k}={v:.4}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                r.examples.to_string(),
                r.device.clone(),
                r.dataset_hash.chars().take(12).collect(),
                r.created_at.clone(),
            ]
        })
        .collect();
    text_table(
        &[
            "CHECKPOINT",
            "TASK",
            "LANG",
            "SPLIT",
            "METRICS",
            "EXAMPLES",
            "DEVICE",
            "DATA",
            "CREATED",
        ],
        &cells,
    )
}

/// Stored evaluations as CSV, one row per evaluation and metric (long format, as pandas and R
/// read it), values at full precision, settings as their JSON.
pub fn evaluations_csv(rows: &[EvaluationRow]) -> String {
    let mut out = String::from(
        "checkpoint,task,language,split,metric,value,examples,device,dataset_hash,dataset_path,created_at,settings\n",
    );
    for r in rows {
        for (k, v) in &r.metrics {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{v},{},{},{},{},{},{}",
                csv_field(&r.checkpoint),
                csv_field(&r.task),
                csv_field(r.language.as_deref().unwrap_or("")),
                csv_field(r.split.as_deref().unwrap_or("")),
                csv_field(k),
                r.examples,
                csv_field(&r.device),
                r.dataset_hash,
                csv_field(&r.dataset_path),
                csv_field(&r.created_at),
                csv_field(&r.settings.to_string()),
            );
        }
    }
    out
}

/// The comparison as CSV, one row per group and ordered pair.
pub fn compare_csv(r: &CompareReport) -> String {
    let mut out =
        String::from("group,vector_a,vector_b,cosine,sign_agreement,norm_a,norm_b,parameters\n");
    let opt = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.9}"));
    for g in &r.groups {
        for (i, a) in r.vectors.iter().enumerate() {
            for (j, b) in r.vectors.iter().enumerate() {
                if r.reference.is_some_and(|k| k != i) {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{:.9},{:.9},{}",
                    csv_field(&g.group),
                    csv_field(a),
                    csv_field(b),
                    opt(g.cosine[i][j]),
                    opt(g.sign_agreement[i][j]),
                    g.norms[i],
                    g.norms[j],
                    g.parameters
                );
            }
        }
    }
    out
}

/// A CSV field, quoted as RFC 4180 asks when it holds a comma, quote or newline.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// A heatmap: `values[row][col]`, labelled rows and columns.
#[derive(Clone, Debug, Default)]
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub values: Vec<Vec<Option<f64>>>,
    /// A similarity matrix of a set with itself: its diagonal (all 1) is printed but left out
    /// of the colour scale, which then spans the off-diagonal values.
    pub self_similarity: bool,
}

/// The matrix plot for `report`: vectors × vectors when there is one group (`--by model`),
/// else vectors × groups against the reference (the first vector when none was named).
pub fn heatmap_for(report: &CompareReport) -> Heatmap {
    let names = report.vectors.clone();
    if let [g] = report.groups.as_slice() {
        return Heatmap {
            title: format!("cosine similarity ({})", g.group),
            x_label: "vector".to_owned(),
            y_label: "vector".to_owned(),
            rows: names.clone(),
            cols: names,
            values: g.cosine.clone(),
            self_similarity: true,
        };
    }
    let r = report.reference.unwrap_or(0);
    let others: Vec<usize> = (0..names.len()).filter(|&i| i != r).collect();
    Heatmap {
        title: format!("cosine similarity with {}", names[r]),
        x_label: format!("{:?}", report.by).to_lowercase(),
        y_label: "vector".to_owned(),
        rows: others.iter().map(|&i| names[i].clone()).collect(),
        cols: report.groups.iter().map(|g| g.group.clone()).collect(),
        values: others
            .iter()
            .map(|&i| report.groups.iter().map(|g| g.cosine[i][r]).collect())
            .collect(),
        self_similarity: false,
    }
}

/// Pixel layout of a heatmap.
struct HeatmapLayout {
    cell_w: u32,
    cell_h: u32,
    left: u32,
    top: u32,
    width: u32,
    height: u32,
}

impl Heatmap {
    fn layout(&self) -> HeatmapLayout {
        let (cell_w, cell_h, top, bar) = (96, 40, 90, 130);
        let left = 20
            + 8 * self
                .rows
                .iter()
                .map(|r| r.chars().count() as u32)
                .max()
                .unwrap_or(4)
                .min(40);
        HeatmapLayout {
            cell_w,
            cell_h,
            left,
            top,
            width: left + cell_w * self.cols.len() as u32 + bar,
            height: top + cell_h * (self.rows.len().max(3) as u32) + 70,
        }
    }

    /// The image size a plot of this heatmap has, in pixels.
    pub fn size(&self) -> (u32, u32) {
        let l = self.layout();
        (l.width, l.height)
    }
}

/// Bytes in decimal units, as disk tools print them: `1.11 GB`, `87.6 MB`, `512 B` (the CLI's
/// tables and the web page's).
pub fn decimal_bytes(n: u64) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.2} GB", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1} MB", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} kB", x / 1e3)
    } else {
        format!("{n} B")
    }
}

/// Writes a heatmap as PNG or SVG (by extension).
pub fn plot_heatmap(path: &Path, h: &Heatmap) -> Result<()> {
    register_font();
    render(path, h.size(), h)
}

/// A heatmap as an SVG document (what [`plot_heatmap`] writes to a `.svg` file).
pub fn heatmap_svg(h: &Heatmap) -> Result<String> {
    register_font();
    render_svg(h.size(), h)
}

impl Drawer for Heatmap {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let h = self;
        let HeatmapLayout {
            cell_w,
            cell_h,
            left,
            top,
            width,
            ..
        } = self.layout();
        root.fill(&WHITE)?;
        let flat: Vec<f64> = h
            .values
            .iter()
            .enumerate()
            .flat_map(|(r, row)| {
                row.iter()
                    .enumerate()
                    .filter(move |(c, _)| !h.self_similarity || *c != r)
                    .map(|(_, v)| v)
            })
            .filter_map(|v| *v)
            .collect();
        let (mut lo, mut hi) = flat
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if (hi - lo).abs() < 1e-12 {
            (lo, hi) = (lo - 0.5, hi + 0.5);
        }
        let colour = |v: f64| ViridisRGB::get_color_normalized(v.clamp(lo, hi), lo, hi);
        let title = TextStyle::from((FONT, 22)).pos(Pos::new(HPos::Center, VPos::Top));
        root.draw(&Text::new(h.title.clone(), (width as i32 / 2, 12), title))?;
        let label = TextStyle::from((FONT, 15));
        let small = TextStyle::from((FONT, 14));
        // Column labels above the cells, axis label above them.
        let col_axis = label.clone().pos(Pos::new(HPos::Center, VPos::Bottom));
        root.draw(&Text::new(
            h.x_label.clone(),
            (
                (left + cell_w * h.cols.len() as u32 / 2) as i32,
                (top - 30) as i32,
            ),
            col_axis,
        ))?;
        for (c, name) in h.cols.iter().enumerate() {
            let x = (left + cell_w * c as u32 + cell_w / 2) as i32;
            let style = small.clone().pos(Pos::new(HPos::Center, VPos::Bottom));
            root.draw(&Text::new(truncate(name, 13), (x, (top - 6) as i32), style))?;
        }
        for (r, name) in h.rows.iter().enumerate() {
            let y = (top + cell_h * r as u32 + cell_h / 2) as i32;
            let style = label.clone().pos(Pos::new(HPos::Right, VPos::Center));
            root.draw(&Text::new(name.clone(), ((left - 8) as i32, y), style))?;
            for (c, v) in h.values[r].iter().enumerate() {
                let (x0, y0) = (
                    (left + cell_w * c as u32) as i32,
                    (top + cell_h * r as u32) as i32,
                );
                let fill = v.map_or(RGBColor(220, 220, 220), colour);
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell_w as i32, y0 + cell_h as i32)],
                    fill.filled(),
                ))?;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell_w as i32, y0 + cell_h as i32)],
                    WHITE.stroke_width(1),
                ))?;
                let text = v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
                let ink = if v.is_some_and(|v| (v - lo) / (hi - lo) > 0.55) {
                    BLACK
                } else {
                    WHITE
                };
                let style = small
                    .clone()
                    .color(&ink)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                root.draw(&Text::new(
                    text,
                    (x0 + cell_w as i32 / 2, y0 + cell_h as i32 / 2),
                    style,
                ))?;
            }
        }
        // The rows' name with a drawn arrow: the embedded font has no arrow glyph, and a
        // missing glyph renders as a box in the PNG.
        let y_axis = label.clone().pos(Pos::new(HPos::Right, VPos::Bottom));
        root.draw(&Text::new(
            h.y_label.clone(),
            ((left - 20) as i32, (top - 6) as i32),
            y_axis,
        ))?;
        let (ax, ay) = ((left - 12) as i32, (top - 6) as i32);
        root.draw(&PathElement::new(
            vec![(ax, ay - 14), (ax, ay - 4)],
            BLACK.stroke_width(1),
        ))?;
        root.draw(&Polygon::new(
            vec![(ax - 4, ay - 6), (ax + 4, ay - 6), (ax, ay)],
            BLACK.filled(),
        ))?;
        // Colour bar.
        let bx = (left + cell_w * h.cols.len() as u32 + 30) as i32;
        let (by0, by1) = (
            top as i32,
            (top + cell_h * h.rows.len().max(3) as u32) as i32,
        );
        let steps = 64;
        for s in 0..steps {
            let t = f64::from(s) / f64::from(steps);
            let y = by1 - (f64::from(by1 - by0) * (t + 1.0 / f64::from(steps))) as i32;
            let y_next = by1 - (f64::from(by1 - by0) * t) as i32;
            root.draw(&Rectangle::new(
                [(bx, y), (bx + 18, y_next)],
                colour(lo + t * (hi - lo)).filled(),
            ))?;
        }
        for (t, v) in [(0.0, lo), (0.5, f64::midpoint(lo, hi)), (1.0, hi)] {
            let y = by1 - (f64::from(by1 - by0) * t) as i32;
            let style = small.clone().pos(Pos::new(HPos::Left, VPos::Center));
            root.draw(&Text::new(format!("{v:.3}"), (bx + 24, y), style))?;
        }
        Ok(())
    }
}

/// Writes a line chart (one line per vector against the reference, over the groups).
pub fn plot_lines(path: &Path, report: &CompareReport) -> Result<()> {
    register_font();
    render(path, lines_size(report), &Lines(report))
}

/// The line chart of [`plot_lines`] as an SVG document.
pub fn lines_svg(report: &CompareReport) -> Result<String> {
    register_font();
    render_svg(lines_size(report), &Lines(report))
}

fn lines_size(report: &CompareReport) -> (u32, u32) {
    ((140 + 70 * report.groups.len() as u32).max(640), 480)
}

struct Lines<'a>(&'a CompareReport);

impl Drawer for Lines<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let report = self.0;
        let r = report.reference.unwrap_or(0);
        let groups: Vec<String> = report.groups.iter().map(|g| g.group.clone()).collect();
        let series: Vec<(String, Vec<Option<f64>>)> = (0..report.vectors.len())
            .filter(|&i| i != r)
            .map(|i| {
                (
                    report.vectors[i].clone(),
                    report.groups.iter().map(|g| g.cosine[i][r]).collect(),
                )
            })
            .collect();
        let all: Vec<f64> = series
            .iter()
            .flat_map(|(_, v)| v.iter().filter_map(|x| *x))
            .collect();
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
        let hi = all
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .max(lo + 0.1);
        {
            root.fill(&WHITE)?;
            let n = groups.len().max(2);
            let mut chart = ChartBuilder::on(root)
                .caption(
                    format!(
                        "cosine similarity with {} by {:?}",
                        report.vectors[r], report.by
                    )
                    .to_lowercase(),
                    (FONT, 22),
                )
                .margin(16)
                .x_label_area_size(48)
                .y_label_area_size(64)
                .build_cartesian_2d(-0.3f64..(n as f64 - 0.7), lo..hi * 1.05)?;
            let labels = groups.clone();
            chart
                .configure_mesh()
                .x_labels(groups.len())
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 {
                        labels.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .x_desc(format!("{:?}", report.by).to_lowercase())
                .y_desc("cosine similarity")
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 15))
                .draw()?;
            for (k, (name, values)) in series.iter().enumerate() {
                let colour = Palette99::pick(k).to_rgba();
                let points: Vec<(f64, f64)> = values
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.map(|v| (i as f64, v)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                    .label(name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                    });
                chart.draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, colour.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FONT, 14))
                .position(SeriesLabelPosition::LowerRight)
                .draw()?;
            Ok(())
        }
    }
}

/// A chart of numbered series over a numeric x axis: lines through the points, or points
/// alone (a scatter, each labelled).
#[derive(Clone, Debug, Default)]
pub struct XyChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// (name, points) per series.
    pub series: Vec<(String, Vec<XyPoint>)>,
    /// Join each series' points with a line.
    pub lines: bool,
}

/// A point of an [`XyChart`], with an optional label drawn beside it.
#[derive(Clone, Debug, Default)]
pub struct XyPoint {
    pub x: f64,
    pub y: f64,
    pub label: Option<String>,
}

/// Writes an [`XyChart`] as PNG or SVG (by extension).
pub fn plot_xy(path: &Path, chart: &XyChart) -> Result<()> {
    register_font();
    render(path, (960, 500), chart)
}

/// An [`XyChart`] as an SVG document.
pub fn xy_svg(chart: &XyChart) -> Result<String> {
    register_font();
    render_svg((960, 500), chart)
}

/// Width of the legend panel right of an [`XyChart`]'s plot (the legend never hides a point).
const LEGEND_WIDTH: u32 = 230;

/// `lo..hi` widened by 5% each side (and to a unit range when flat).
fn padded(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi - lo < 1e-12 {
        0.5
    } else {
        (hi - lo) * 0.05
    };
    (lo - pad, hi + pad)
}

impl Drawer for XyChart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let (width, _) = root.dim_in_pixel();
        let (root, legend) = root.split_horizontally(width.saturating_sub(LEGEND_WIDTH));
        let root = &root;
        for (k, (name, _)) in self.series.iter().enumerate() {
            let colour = Palette99::pick(k).to_rgba();
            let y = 60 + 26 * k as i32;
            legend.draw(&Circle::new((12, y), 5, colour.filled()))?;
            legend.draw(&Text::new(
                name.clone(),
                (24, y),
                TextStyle::from((FONT, 14)).pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
        let all = || self.series.iter().flat_map(|(_, p)| p.iter());
        let (x0, x1) = padded(all().map(|p| p.x));
        let (y0, y1) = padded(all().map(|p| p.y));
        let mut chart = ChartBuilder::on(root)
            .caption(self.title.clone(), (FONT, 20))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label.clone())
            .y_desc(self.y_label.clone())
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .draw()?;
        for (k, (_, points)) in self.series.iter().enumerate() {
            let colour = Palette99::pick(k).to_rgba();
            let xy: Vec<(f64, f64)> = points.iter().map(|p| (p.x, p.y)).collect();
            if self.lines {
                chart.draw_series(LineSeries::new(xy.clone(), colour.stroke_width(2)))?;
                chart.draw_series(xy.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
            } else {
                chart.draw_series(xy.iter().map(|&p| Circle::new(p, 5, colour.filled())))?;
            }
            for p in points {
                if let Some(label) = &p.label {
                    chart.draw_series(std::iter::once(Text::new(
                        label.clone(),
                        (p.x, p.y),
                        TextStyle::from((FONT, 13)).pos(Pos::new(HPos::Left, VPos::Bottom)),
                    )))?;
                }
            }
        }
        Ok(())
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Something drawable on any plotters backend.
trait Drawer {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

/// Draws on a PNG or SVG backend chosen by `path`'s extension, then writes the file.
fn render(path: &Path, size: (u32, u32), drawer: &impl Drawer) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let failed = |e: Box<dyn std::error::Error>| {
        Error::invalid(
            format!("drawing `{}`: {e}", path.display()),
            "check that the folder exists and is writable",
        )
    };
    match ext.as_deref() {
        Some("png") => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            drawer.draw(&root).map_err(failed)?;
            root.present().map_err(|e| failed(Box::new(e)))
        }
        Some("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            drawer.draw(&root).map_err(failed)?;
            root.present().map_err(|e| failed(Box::new(e)))
        }
        _ => Err(Error::invalid(
            format!("`{}` is neither .png nor .svg", path.display()),
            "name the plot file with a .png or .svg extension",
        )),
    }
}

/// Draws into an SVG document in memory.
fn render_svg(size: (u32, u32), drawer: &impl Drawer) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        let failed = |e: Box<dyn std::error::Error>| {
            Error::invalid(format!("drawing a plot: {e}"), "report this as a bug")
        };
        drawer.draw(&root).map_err(failed)?;
        root.present().map_err(|e| failed(Box::new(e)))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::{evaluations_csv, evaluations_table, text_table};
    use crate::catalog::EvaluationRow;

    fn row(path: &str) -> EvaluationRow {
        EvaluationRow {
            id: None,
            checkpoint: "pos-en+es/es=0.3".into(),
            manifest_id: crate::id::ObjectId::zero(),
            task: "pos".into(),
            language: Some("es".into()),
            dataset_hash: "ab".repeat(32),
            dataset_path: path.into(),
            split: Some("test".into()),
            metrics: [("accuracy".to_owned(), 0.8125)].into(),
            examples: 1000,
            truncated: 0,
            device: "cpu".into(),
            crossmerge_version: "0.1.0".into(),
            duration_s: 1.5,
            created_at: "2026-11-30T04:00:00Z".into(),
            settings: serde_json::json!({"max_length": 512, "label_map": null}),
        }
    }

    /// Every field survives a reader that follows RFC 4180 (quotes doubled inside quotes).
    #[test]
    fn evaluation_csv_quotes_what_needs_quoting() {
        let csv = evaluations_csv(&[row("data/a,b \"c\".conllu"), row("plain.conllu")]);
        let mut lines = csv.lines();
        assert!(lines.next().unwrap().starts_with("checkpoint,task,"));
        let parse = |line: &str| -> Vec<String> {
            let (mut out, mut cur, mut quoted, mut chars) =
                (Vec::new(), String::new(), false, line.chars().peekable());
            while let Some(c) = chars.next() {
                match (c, quoted) {
                    ('"', true) if chars.peek() == Some(&'"') => {
                        cur.push('"');
                        chars.next();
                    }
                    ('"', _) => quoted = !quoted,
                    (',', false) => out.push(std::mem::take(&mut cur)),
                    _ => cur.push(c),
                }
            }
            out.push(cur);
            out
        };
        let first = parse(lines.next().unwrap());
        assert_eq!(first.len(), 12, "{first:?}");
        assert_eq!(first[9], "data/a,b \"c\".conllu");
        assert_eq!(first[5], "0.8125");
        let settings: serde_json::Value = serde_json::from_str(&first[11]).unwrap();
        assert_eq!(settings["max_length"], 512);
        assert_eq!(parse(lines.next().unwrap())[9], "plain.conllu");
    }

    #[test]
    fn text_tables_align_columns_and_trim() {
        let t = text_table(&["A", "LONGER"], &[vec!["wide cell".into(), "x".into()]]);
        assert_eq!(t, "A          LONGER\nwide cell  x\n");
        let e = evaluations_table(&[row("p")]);
        assert!(e.lines().nth(1).unwrap().contains("accuracy=0.8125"), "{e}");
    }

    use ab_glyph::{Font, FontRef};

    /// Every character the plot code writes is in the embedded font: a missing glyph renders
    /// as a box in the PNG (the heatmap's corner arrow once did).
    #[test]
    fn the_embedded_font_has_every_character_the_plots_draw() {
        let font = FontRef::try_from_slice(epaint_default_fonts::UBUNTU_LIGHT).unwrap();
        assert_eq!(font.glyph_id('↓').0, 0, "the font has no arrows: draw them");
        let source = include_str!("report.rs");
        let code = &source[..source.find("#[cfg(test)]").unwrap_or(source.len())];
        let missing: Vec<char> = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .flat_map(str::chars)
            .filter(|c| !c.is_ascii())
            .filter(|c| font.glyph_id(*c).0 == 0)
            .collect();
        assert!(missing.is_empty(), "drawn but not in the font: {missing:?}");
    }
}
