//! A study's results and the files made from them: `results.json` (every number with the
//! id of the evaluation, checkpoint or vector it came from), `results.csv`, `README.md` with
//! the tables, and plots (SVG and PNG): validation score against λ per task, the languages ×
//! layers cosine heatmap, and the test gain against cosine-to-reference with its rank
//! correlation.
//!
//! The study runner (in the `crossmerge` crate) assembles [`Results`]; this module is what the
//! CLI's files and the web page's study pages are both made from.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::catalog::{CheckpointRow, VectorRow};
use crate::error::{Error, Result};
use crate::report::{self, Heatmap, XyChart, XyPoint};
use crate::vector::compare::CompareReport;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    /// `name@version`.
    pub checkpoint: String,
    pub manifest_id: String,
}

impl ModelRef {
    pub fn of(row: &CheckpointRow) -> Self {
        Self {
            checkpoint: row.reference(),
            manifest_id: row.manifest_id.to_hex(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VectorRef {
    /// `name@version`.
    pub vector: String,
    /// The definition id (what `derive` hashed: its inputs' manifests and filters).
    pub definition: String,
}

impl VectorRef {
    pub fn of(v: &VectorRow) -> Self {
        Self {
            vector: v.reference(),
            definition: v.definition.to_hex(),
        }
    }
}

/// A number and the evaluation that measured it (`crossmerge trace EVALUATION`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub value: f64,
    pub evaluation: String,
    pub examples: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    pub lambda: f64,
    pub checkpoint: Option<ModelRef>,
    pub validation: Score,
}

/// One task in one language.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    pub language: String,
    pub language_vector: Option<VectorRef>,
    pub validation_data: String,
    pub test_data: String,
    /// The task model alone on the test data (zero-shot transfer).
    pub zero_shot: Score,
    pub sweep: Vec<SweepPoint>,
    pub best_lambda: f64,
    /// The merge at the best λ on the test data.
    pub test: Score,
    /// `test − zero_shot`.
    pub gain: f64,
    /// A model trained in the language, on the same test data.
    pub trained_baseline: Option<(ModelRef, Score)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResults {
    pub task: String,
    pub metric: String,
    pub model: Option<ModelRef>,
    pub vector: Option<VectorRef>,
    pub transfers: Vec<Transfer>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerplexityPair {
    pub model: ModelRef,
    pub perplexity: Score,
    pub pseudo_perplexity: Option<Score>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Perplexity {
    pub language: String,
    pub text: String,
    pub before: PerplexityPair,
    pub after: PerplexityPair,
}

/// Cosine similarity of each language vector with the reference language's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cosine {
    pub reference: String,
    pub vectors: Vec<(String, VectorRefName)>,
    /// (language, cosine over the whole model), the reference left out.
    pub overall: Vec<(String, Option<f64>)>,
    pub layers: Vec<String>,
    /// (language, cosine per layer).
    pub by_layer: Vec<(String, Vec<Option<f64>>)>,
}

/// A vector's `name@version`, as `compare` reported it.
pub type VectorRefName = String;

impl Cosine {
    pub fn of(
        reference: &str,
        langs: &[&String],
        by_model: &CompareReport,
        by_layer: &CompareReport,
    ) -> Self {
        let r = langs
            .iter()
            .position(|l| *l == reference)
            .expect("the reference is a language");
        let others = || (0..langs.len()).filter(move |&i| i != r);
        Self {
            reference: reference.to_owned(),
            vectors: langs
                .iter()
                .zip(&by_model.vectors)
                .map(|(l, v)| ((*l).clone(), v.clone()))
                .collect(),
            overall: others()
                .map(|i| (langs[i].clone(), by_model.groups[0].cosine[i][r]))
                .collect(),
            layers: by_layer.groups.iter().map(|g| g.group.clone()).collect(),
            by_layer: others()
                .map(|i| {
                    (
                        langs[i].clone(),
                        by_layer.groups.iter().map(|g| g.cosine[i][r]).collect(),
                    )
                })
                .collect(),
        }
    }
}

/// Spearman's rank correlation of test gain with cosine-to-reference, per task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Correlation {
    pub task: String,
    /// (language, cosine, gain).
    pub points: Vec<(String, f64, f64)>,
    /// `None` with fewer than 3 languages or a constant side.
    pub spearman: Option<f64>,
}

/// Everything a study measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub format: String,
    pub study: String,
    pub description: Option<String>,
    /// The command that made these results, and by which crossmerge.
    pub command: String,
    pub crossmerge_version: String,
    /// blake3 of the study file.
    pub study_file: String,
    pub base: ModelRef,
    /// The merge's recipe keys (method and parameters).
    pub merge: serde_json::Value,
    pub lambdas: Vec<f64>,
    pub selection: String,
    pub tasks: Vec<TaskResults>,
    pub perplexity: Vec<Perplexity>,
    pub cosine: Option<Cosine>,
    pub correlations: Vec<Correlation>,
}

/// How λ is chosen, as written into every output.
pub const SELECTION: &str = "the λ with the highest validation score; on ties, the smaller λ";

/// Average ranks (ties share the mean of their positions), 1-based.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]].total_cmp(&v[idx[i]]).is_eq() {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's ρ: Pearson's correlation of the average ranks.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() < 3 || a.len() != b.len() {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    (saa > 0.0 && sbb > 0.0).then(|| sab / (saa * sbb).sqrt())
}

fn num(v: f64) -> String {
    format!("{v:.4}")
}

/// A number as the study's tables print it: four decimals, `-` for none (the web page's
/// tables too).
pub fn number(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), num)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming", path, e))
}

/// A plot of a study's results, drawn to a file or to an SVG string by the same code.
#[derive(Clone, Debug)]
pub enum Plot {
    Xy(XyChart),
    Heatmap(Heatmap),
}

impl Plot {
    /// Writes the plot as PNG or SVG (by `path`'s extension).
    pub fn write(&self, path: &Path) -> Result<()> {
        match self {
            Self::Xy(c) => report::plot_xy(path, c),
            Self::Heatmap(h) => report::plot_heatmap(path, h),
        }
    }

    /// The plot as an SVG document (for inline use in HTML).
    pub fn svg(&self) -> Result<String> {
        match self {
            Self::Xy(c) => report::xy_svg(c),
            Self::Heatmap(h) => report::heatmap_svg(h),
        }
    }
}

/// The plots of `r`, as (file stem, plot): validation score against λ per task, then (with
/// cosines) the languages × layers heatmap and the test gain against cosine.
pub fn plots(r: &Results) -> Vec<(String, Plot)> {
    let mut out = Vec::new();
    for t in &r.tasks {
        let chart = XyChart {
            title: format!("{}: validation {} against λ", t.task, t.metric),
            x_label: "λ (weight of the language vector)".to_owned(),
            y_label: format!("validation {}", t.metric),
            series: t
                .transfers
                .iter()
                .map(|x| {
                    (
                        x.language.clone(),
                        x.sweep
                            .iter()
                            .map(|p| XyPoint {
                                x: p.lambda,
                                y: p.validation.value,
                                label: None,
                            })
                            .collect(),
                    )
                })
                .collect(),
            lines: true,
        };
        out.push((format!("lambda-{}", t.task), Plot::Xy(chart)));
    }
    if let Some(c) = &r.cosine {
        let heatmap = Heatmap {
            title: format!("cosine similarity with {}'s language vector", c.reference),
            x_label: "layer".to_owned(),
            y_label: "language".to_owned(),
            rows: c.by_layer.iter().map(|(l, _)| l.clone()).collect(),
            cols: c.layers.clone(),
            values: c.by_layer.iter().map(|(_, v)| v.clone()).collect(),
            self_similarity: false,
        };
        out.push(("cosine-layers".to_owned(), Plot::Heatmap(heatmap)));
        let chart = XyChart {
            title: "test gain against cosine with the reference".to_owned(),
            x_label: format!("cosine with {}'s language vector", c.reference),
            y_label: "test gain at the best λ".to_owned(),
            series: r
                .correlations
                .iter()
                .map(|k| {
                    (
                        format!("{} (Spearman ρ = {})", k.task, number(k.spearman)),
                        k.points
                            .iter()
                            .map(|(l, x, y)| XyPoint {
                                x: *x,
                                y: *y,
                                label: Some(l.clone()),
                            })
                            .collect(),
                    )
                })
                .collect(),
            lines: false,
        };
        out.push(("gain-vs-cosine".to_owned(), Plot::Xy(chart)));
    }
    out
}

/// Writes results.json, results.csv, README.md and the plots (SVG and PNG) into `dir`.
pub fn write_all(dir: &Path, r: &Results) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    let json = serde_json::to_string_pretty(r).expect("results serialise") + "\n";
    write(&dir.join("results.json"), json.as_bytes())?;
    write(&dir.join("results.csv"), csv(r).as_bytes())?;
    for (stem, plot) in plots(r) {
        plot_both(dir, &stem, |p| plot.write(p))?;
    }
    write(&dir.join("README.md"), readme(r).as_bytes())
}

fn plot_both(dir: &Path, stem: &str, draw: impl Fn(&Path) -> Result<()>) -> Result<()> {
    for ext in ["svg", "png"] {
        let path = dir.join(format!("{stem}.{ext}"));
        let tmp = dir.join(format!("{stem}.tmp.{ext}"));
        draw(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("renaming", &path, e))?;
    }
    Ok(())
}

/// Every number, one a row, with what it came from.
pub fn csv(r: &Results) -> String {
    let mut rows = vec![
        vec![
            "kind",
            "task",
            "language",
            "lambda",
            "split",
            "metric",
            "value",
            "evaluation",
            "checkpoint",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>(),
    ];
    let mut row = |cells: [&str; 9]| rows.push(cells.iter().map(|c| (*c).to_owned()).collect());
    for t in &r.tasks {
        let model = t.model.as_ref().map_or("", |m| m.checkpoint.as_str());
        for x in &t.transfers {
            for p in &x.sweep {
                let ck = p.checkpoint.as_ref().map_or("", |m| m.checkpoint.as_str());
                row([
                    "sweep",
                    &t.task,
                    &x.language,
                    &p.lambda.to_string(),
                    "validation",
                    &t.metric,
                    &p.validation.value.to_string(),
                    &p.validation.evaluation,
                    ck,
                ]);
            }
            row([
                "zero_shot",
                &t.task,
                &x.language,
                "",
                "test",
                &t.metric,
                &x.zero_shot.value.to_string(),
                &x.zero_shot.evaluation,
                model,
            ]);
            let best = x
                .sweep
                .iter()
                .find(|p| p.lambda.total_cmp(&x.best_lambda).is_eq())
                .and_then(|p| p.checkpoint.as_ref())
                .map_or("", |m| m.checkpoint.as_str());
            row([
                "best",
                &t.task,
                &x.language,
                &x.best_lambda.to_string(),
                "test",
                &t.metric,
                &x.test.value.to_string(),
                &x.test.evaluation,
                best,
            ]);
            row([
                "gain",
                &t.task,
                &x.language,
                &x.best_lambda.to_string(),
                "test",
                &t.metric,
                &x.gain.to_string(),
                "",
                "",
            ]);
            if let Some((m, s)) = &x.trained_baseline {
                row([
                    "trained_baseline",
                    &t.task,
                    &x.language,
                    "",
                    "test",
                    &t.metric,
                    &s.value.to_string(),
                    &s.evaluation,
                    &m.checkpoint,
                ]);
            }
        }
    }
    for p in &r.perplexity {
        for (kind, pair) in [("before", &p.before), ("after", &p.after)] {
            row([
                &format!("perplexity_{kind}"),
                "mlm",
                &p.language,
                "",
                "text",
                "perplexity",
                &pair.perplexity.value.to_string(),
                &pair.perplexity.evaluation,
                &pair.model.checkpoint,
            ]);
            if let Some(s) = &pair.pseudo_perplexity {
                row([
                    &format!("perplexity_{kind}"),
                    "mlm",
                    &p.language,
                    "",
                    "text",
                    "pseudo_perplexity",
                    &s.value.to_string(),
                    &s.evaluation,
                    &pair.model.checkpoint,
                ]);
            }
        }
    }
    if let Some(c) = &r.cosine {
        for (l, v) in &c.overall {
            row([
                "cosine",
                "",
                l,
                "",
                "",
                &format!("cosine_with_{}", c.reference),
                &v.map(|v| v.to_string()).unwrap_or_default(),
                "",
                "",
            ]);
        }
        for (l, values) in &c.by_layer {
            for (layer, v) in c.layers.iter().zip(values) {
                row([
                    "cosine_layer",
                    layer,
                    l,
                    "",
                    "",
                    &format!("cosine_with_{}", c.reference),
                    &v.map(|v| v.to_string()).unwrap_or_default(),
                    "",
                    "",
                ]);
            }
        }
    }
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| report::csv_field(c)).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// The README of an output folder: every table, the plots, and how they were made.
pub fn readme(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Study `{}`\n", r.study);
    if let Some(d) = &r.description {
        let _ = writeln!(md, "{d}\n");
    }
    let _ = writeln!(
        md,
        "Made by `{}` (crossmerge {}). Base: `{}`. Merge: `{}`. λ grid: {}. Selection: {}. \
         Every number is in `results.json` with the id of the evaluation that measured it \
         (`crossmerge trace ID` shows the checkpoints, recipe, vectors, training runs and data \
         hashes behind it).\n",
        r.command,
        r.crossmerge_version,
        r.base.checkpoint,
        r.merge,
        r.lambdas
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        r.selection,
    );
    for t in &r.tasks {
        let _ = writeln!(md, "## {} ({})\n", t.task, t.metric);
        if let Some(m) = &t.model {
            let _ = writeln!(md, "Task model: `{}`.\n", m.checkpoint);
        }
        let with_trained = t.transfers.iter().any(|x| x.trained_baseline.is_some());
        let mut header = vec![
            "language",
            "λ = 0 test (task model alone)",
            "best λ",
            "test at best λ",
            "gain",
        ];
        if with_trained {
            header.push("trained in the language");
        }
        let rows: Vec<Vec<String>> = t
            .transfers
            .iter()
            .map(|x| {
                let mut v = vec![
                    x.language.clone(),
                    num(x.zero_shot.value),
                    x.best_lambda.to_string(),
                    num(x.test.value),
                    format!("{:+.4}", x.gain),
                ];
                if with_trained {
                    v.push(
                        x.trained_baseline
                            .as_ref()
                            .map_or_else(|| "-".to_owned(), |(_, s)| num(s.value)),
                    );
                }
                v
            })
            .collect();
        md.push_str(&markdown_table(&header, &rows));
        let _ = writeln!(
            md,
            "\n![validation {} against λ](lambda-{}.svg)\n",
            t.metric, t.task
        );
    }
    if !r.perplexity.is_empty() {
        md.push_str("## Masked-LM perplexity before and after language fine-tuning\n\n");
        let pseudo = r
            .perplexity
            .iter()
            .any(|p| p.after.pseudo_perplexity.is_some());
        let mut header = vec!["language", "text", "before", "after"];
        if pseudo {
            header.extend(["pseudo before", "pseudo after"]);
        }
        let rows: Vec<Vec<String>> = r
            .perplexity
            .iter()
            .map(|p| {
                let mut v = vec![
                    p.language.clone(),
                    p.text.clone(),
                    num(p.before.perplexity.value),
                    num(p.after.perplexity.value),
                ];
                if pseudo {
                    for pair in [&p.before, &p.after] {
                        v.push(
                            pair.pseudo_perplexity
                                .as_ref()
                                .map_or_else(|| "-".to_owned(), |s| num(s.value)),
                        );
                    }
                }
                v
            })
            .collect();
        md.push_str(&markdown_table(&header, &rows));
        md.push('\n');
    }
    if let Some(c) = &r.cosine {
        let _ = writeln!(
            md,
            "## Cosine similarity with {}'s language vector\n",
            c.reference
        );
        let mut header: Vec<&str> = vec!["language", "model"];
        header.extend(c.layers.iter().map(String::as_str));
        let rows: Vec<Vec<String>> = c
            .by_layer
            .iter()
            .map(|(l, values)| {
                let overall = c.overall.iter().find(|(o, _)| o == l).and_then(|(_, v)| *v);
                let mut v = vec![l.clone(), number(overall)];
                v.extend(values.iter().map(|x| number(*x)));
                v
            })
            .collect();
        md.push_str(&markdown_table(&header, &rows));
        md.push_str("\n![cosine by layer](cosine-layers.svg)\n\n");
        md.push_str("## Test gain against cosine with the reference\n\n");
        for k in &r.correlations {
            let _ = writeln!(
                md,
                "- {}: Spearman ρ = {} over {} languages",
                k.task,
                number(k.spearman),
                k.points.len()
            );
        }
        md.push_str("\n![gain against cosine](gain-vs-cosine.svg)\n");
    }
    md
}

fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n", header.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(header.len()));
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::spearman;

    #[test]
    fn spearman_matches_known_values() {
        // Perfect monotone, reversed, and scipy.stats.spearmanr([1,2,3,4,5],[5,6,7,8,7]) = 0.8207826816681233.
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 40.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        let r = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]).unwrap();
        assert!((r - 0.820_782_681_668_123_3).abs() < 1e-12, "{r}");
        assert_eq!(spearman(&[1.0, 2.0], &[1.0, 2.0]), None);
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
    }
}
