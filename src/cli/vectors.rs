//! `derive`, `compare`, `diff`, and the vector side of `show` and `list`.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use crossmerge::registry::VectorDetails;
use crossmerge::vector::compare::CompareReport;
use crossmerge::{CompareOptions, DeriveOptions, GroupBy, VectorKind};

use super::context::Context;
use super::output;
use super::progress::Bar;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum VectorKindArg {
    Task,
    Language,
}

#[derive(Args, Debug)]
pub struct DeriveArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// A task vector (task model − base) or a language vector (language model − base).
    #[arg(value_enum)]
    kind: VectorKindArg,
    /// The fine-tuned checkpoint.
    #[arg(long)]
    from: String,
    /// The checkpoint to subtract (default: the registered base of `--from`).
    #[arg(long)]
    minus: Option<String>,
    /// Name of the vector; the same name with another definition becomes the next version.
    #[arg(long)]
    name: String,
    /// Keep only tensors matching a glob; repeatable.
    #[arg(long)]
    include: Vec<String>,
    /// Drop tensors matching a glob; repeatable.
    #[arg(long)]
    exclude: Vec<String>,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn derive(ctx: &Context, a: &DeriveArgs) -> anyhow::Result<ExitCode> {
    let mut reg = ctx.open()?;
    let kind = match a.kind {
        VectorKindArg::Task => VectorKind::Task,
        VectorKindArg::Language => VectorKind::Language,
    };
    let mut opts = DeriveOptions::new(kind, a.name.clone(), a.from.clone());
    opts.minus.clone_from(&a.minus);
    opts.include.clone_from(&a.include);
    opts.exclude.clone_from(&a.exclude);
    let d = reg.derive(&opts, &Bar::new(ctx.quiet))?;
    if a.json {
        output::json(&d)?;
    } else {
        writeln!(
            io::stdout(),
            "{} {}",
            d.vector.reference(),
            d.vector.definition
        )?;
        eprintln!(
            "{}: {} − {}, {} tensors, {} parameters, L2 norm {:.6}{}",
            if d.created {
                "derived"
            } else {
                "already derived, unchanged"
            },
            d.vector.from,
            d.vector.minus,
            d.vector.tensor_count,
            d.vector.parameters,
            d.vector.l2_norm,
            if d.heads.is_empty() {
                String::new()
            } else {
                format!("; {} head tensors left out", d.heads.len())
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn print_vector(d: &VectorDetails, tensors: bool, json: bool) -> anyhow::Result<()> {
    if json {
        let mut d = d.clone();
        if !tensors {
            d.tensors.clear();
        }
        return output::json(&d);
    }
    let v = &d.vector;
    let mut out = io::stdout().lock();
    writeln!(out, "vector:       {}", v.reference())?;
    writeln!(out, "definition:   {:#}", v.definition)?;
    writeln!(out, "kind:         {}", v.kind.as_str())?;
    writeln!(out, "lineage:      {} − {}", v.from, v.minus)?;
    if !v.include.is_empty() || !v.exclude.is_empty() {
        writeln!(
            out,
            "filter:       include {:?}, exclude {:?}",
            v.include, v.exclude
        )?;
    }
    writeln!(
        out,
        "tensors:      {} ({} parameters)",
        v.tensor_count, v.parameters
    )?;
    writeln!(out, "L2 norm:      {:.6}", v.l2_norm)?;
    writeln!(out, "created:      {}", v.created_at)?;
    if !d.heads.is_empty() {
        writeln!(
            out,
            "heads (only in {}, not part of the vector): {}",
            v.from,
            d.heads.join(", ")
        )?;
    }
    if !d.skipped_integer.is_empty() {
        writeln!(
            out,
            "integer tensors skipped: {}",
            d.skipped_integer.join(", ")
        )?;
    }
    if !d.only_in_minus.is_empty() {
        writeln!(out, "only in {}: {}", v.minus, d.only_in_minus.join(", "))?;
    }
    drop(out);
    if tensors {
        println!();
        let rows: Vec<Vec<String>> = d
            .tensors
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    t.parameters.to_string(),
                    format!("{:.6}", t.l2_norm),
                ]
            })
            .collect();
        output::table(&["TENSOR", "PARAMETERS", "L2 NORM"], &rows)?;
    }
    Ok(())
}

pub fn list_vectors(ctx: &Context, json: bool) -> anyhow::Result<ExitCode> {
    let reg = ctx.open()?;
    let rows = reg.vectors()?;
    if json {
        output::json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|v| {
            vec![
                v.reference(),
                v.kind.as_str().to_owned(),
                format!("{} − {}", v.from, v.minus),
                format!("{:.1}M", v.parameters as f64 / 1e6),
                format!("{:.4}", v.l2_norm),
                v.definition.to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "VECTOR",
            "KIND",
            "LINEAGE",
            "PARAMS",
            "L2 NORM",
            "DEFINITION",
        ],
        &cells,
    )?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ByArg {
    Model,
    Layer,
    Module,
    Tensor,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// Vectors (name or name@version).
    vectors: Vec<String>,
    /// Compare every vector against this one only.
    #[arg(long)]
    reference: Option<String>,
    /// Group tensors by whole model, layer, module or tensor.
    #[arg(long, value_enum, default_value = "model")]
    by: ByArg,
    /// Count a tensor stored once under two names (tied embeddings and decoder) twice.
    #[arg(long)]
    count_tied: bool,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the statistics as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Heatmap (.png or .svg): vectors × vectors for `--by model`, else vectors × groups
    /// against the reference.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Line chart (.png or .svg) of each vector's cosine with the reference, per group.
    #[arg(long)]
    plot_lines: Option<PathBuf>,
}

pub fn compare(ctx: &Context, a: &CompareArgs) -> anyhow::Result<ExitCode> {
    let reg = ctx.open()?;
    let by = match a.by {
        ByArg::Model => GroupBy::Model,
        ByArg::Layer => GroupBy::Layer,
        ByArg::Module => GroupBy::Module,
        ByArg::Tensor => GroupBy::Tensor,
    };
    let mut opts = CompareOptions::default().by(by).count_tied(a.count_tied);
    opts.reference.clone_from(&a.reference);
    let report = reg.compare(&a.vectors, &opts, &Bar::new(ctx.quiet))?;
    if let Some(path) = &a.csv {
        std::fs::write(path, crossmerge::report::compare_csv(&report))
            .map_err(|e| anyhow::anyhow!("writing `{}`: {e}", path.display()))?;
    }
    if let Some(path) = &a.plot {
        crossmerge::report::plot_heatmap(path, &crossmerge::report::heatmap_for(&report))?;
    }
    if let Some(path) = &a.plot_lines {
        crossmerge::report::plot_lines(path, &report)?;
    }
    if a.json {
        output::json(&report)?;
    } else {
        print_compare(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_compare(r: &CompareReport) -> io::Result<()> {
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.4}"));
    if let Some(k) = r.reference {
        // One row per group, one column per vector: cosine with the reference.
        let mut header = vec!["GROUP".to_owned()];
        header.extend(
            r.vectors
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != k)
                .map(|(_, v)| v.clone()),
        );
        header.push(format!("‖{}‖", r.vectors[k]));
        let rows: Vec<Vec<String>> = r
            .groups
            .iter()
            .map(|g| {
                let mut row = vec![g.group.clone()];
                row.extend(
                    (0..r.vectors.len())
                        .filter(|&i| i != k)
                        .map(|i| f(g.cosine[i][k])),
                );
                row.push(format!("{:.4}", g.norms[k]));
                row
            })
            .collect();
        let h: Vec<&str> = header.iter().map(String::as_str).collect();
        println!("cosine similarity with {}", r.vectors[k]);
        output::table(&h, &rows)?;
    } else {
        for g in &r.groups {
            println!(
                "{} ({} tensors, {} parameters): cosine similarity",
                g.group, g.tensors, g.parameters
            );
            let mut header = vec![String::new()];
            header.extend(r.vectors.iter().cloned());
            header.push("L2 NORM".to_owned());
            let rows: Vec<Vec<String>> = r
                .vectors
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let mut row = vec![v.clone()];
                    row.extend((0..r.vectors.len()).map(|j| f(g.cosine[i][j])));
                    row.push(format!("{:.4}", g.norms[i]));
                    row
                })
                .collect();
            let h: Vec<&str> = header.iter().map(String::as_str).collect();
            output::table(&h, &rows)?;
            println!();
        }
    }
    if !r.tied.is_empty() {
        eprintln!("counted once (tied): {}", r.tied.join(", "));
    }
    if !r.not_shared.is_empty() {
        eprintln!("left out, not in every vector: {}", r.not_shared.join(", "));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// The first checkpoint (name, name@version or id prefix).
    a: String,
    /// The second checkpoint, compared against the first.
    b: String,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn diff(ctx: &Context, a: &DiffArgs) -> anyhow::Result<ExitCode> {
    let reg = ctx.open()?;
    let d = reg.diff(&a.a, &a.b, &Bar::new(ctx.quiet))?;
    if a.json {
        output::json(&d)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = io::stdout().lock();
    for n in &d.added {
        writeln!(out, "added    {n}")?;
    }
    for n in &d.removed {
        writeln!(out, "removed  {n}")?;
    }
    for (n, x, y) in &d.retyped {
        writeln!(out, "retyped  {n}: {x} → {y}")?;
    }
    for c in &d.changed {
        let rel = c
            .relative_l2
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.3e}"));
        writeln!(out, "changed  {}  relative L2 {rel}", c.name)?;
    }
    writeln!(out, "{}", d.summary())?;
    Ok(ExitCode::SUCCESS)
}
