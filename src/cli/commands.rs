//! One function per registry command: build options, call the library, print.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use crossmerge::checkpoint::export::parse_size;
use crossmerge::{CheckpointFilter, CheckpointKind, ExportOptions, RegisterOptions, Registry};

pub use super::context::Context;
use super::output::{self, bytes, opt};
use super::progress::Bar;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KindArg {
    Base,
    Language,
    Task,
    Merged,
}

impl From<KindArg> for CheckpointKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Base => CheckpointKind::Base,
            KindArg::Language => CheckpointKind::Language,
            KindArg::Task => CheckpointKind::Task,
            KindArg::Merged => CheckpointKind::Merged,
        }
    }
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// A Hugging Face model folder or a .safetensors file.
    path: PathBuf,
    /// Name to register it under; the same name with other content becomes the next version.
    #[arg(long)]
    name: String,
    /// What the checkpoint is: a base model, a language or task fine-tune, or a merge.
    #[arg(long, value_enum)]
    kind: KindArg,
    /// The base checkpoint (name, name@version or id prefix); tensors are stored against it.
    #[arg(long)]
    base: Option<String>,
    /// BCP-47 language code (required for `--kind language`).
    #[arg(long)]
    language: Option<String>,
    /// Task name such as ner, pos, nli, dp (required for `--kind task`).
    #[arg(long)]
    task: Option<String>,
    /// Free tags, `key=value`; repeatable.
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not `key=value`"))
}

pub fn init(ctx: &Context) -> anyhow::Result<ExitCode> {
    let reg = Registry::create(&ctx.registry)?;
    eprintln!("registry at {}", reg.root().display());
    Ok(ExitCode::SUCCESS)
}

pub fn register(ctx: &Context, a: &RegisterArgs) -> anyhow::Result<ExitCode> {
    let mut reg = ctx.open_for_write()?;
    let mut opts = RegisterOptions::new(a.name.clone(), a.kind.into());
    opts.base.clone_from(&a.base);
    opts.language.clone_from(&a.language);
    opts.task.clone_from(&a.task);
    opts.tags.clone_from(&a.tags);
    let done = reg.register(&a.path, &opts, &Bar::new(ctx.quiet))?;
    if a.json {
        output::json(&done)?;
    } else {
        writeln!(
            io::stdout(),
            "{} {}",
            done.checkpoint.reference(),
            done.checkpoint.manifest_id
        )?;
        let what = if done.created {
            "registered"
        } else {
            "already registered, unchanged"
        };
        eprintln!(
            "{what}: {} objects written ({}, {} as deltas), {} reused; {} logical",
            done.objects_written,
            bytes(done.bytes_written),
            done.delta_objects,
            done.objects_reused,
            bytes(done.checkpoint.logical_size)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// Only checkpoints of this kind.
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
    /// Only checkpoints of this language (BCP-47, e.g. `es`).
    #[arg(long)]
    language: Option<String>,
    /// Only checkpoints of this task (e.g. `pos`).
    #[arg(long)]
    task: Option<String>,
    /// List vectors instead of checkpoints.
    #[arg(long)]
    vectors: bool,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn list(ctx: &Context, a: &ListArgs) -> anyhow::Result<ExitCode> {
    if a.vectors {
        return super::vectors::list_vectors(ctx, a.json);
    }
    let reg = ctx.open()?;
    let mut filter = CheckpointFilter::default();
    filter.kind = a.kind.map(Into::into);
    filter.language.clone_from(&a.language);
    filter.task.clone_from(&a.task);
    let rows = reg.list(&filter)?;
    if a.json {
        output::json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.reference(),
                r.kind.as_str().to_owned(),
                opt(r.language.as_ref()),
                opt(r.task.as_ref()),
                opt(r.base.as_ref()),
                opt(r.architecture.as_ref()),
                format!("{:.1}M", r.parameters as f64 / 1e6),
                r.manifest_id.to_string(),
                r.created_at.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "CHECKPOINT",
            "KIND",
            "LANG",
            "TASK",
            "BASE",
            "ARCHITECTURE",
            "PARAMS",
            "ID",
            "CREATED",
        ],
        &cells,
    )?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// name, name@version, or an id prefix of at least 6 hex characters.
    reference: String,
    /// List every tensor.
    #[arg(long)]
    tensors: bool,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn show(ctx: &Context, a: &ShowArgs) -> anyhow::Result<ExitCode> {
    let reg = ctx.open()?;
    let vector = reg.show_vector(&a.reference);
    let checkpoint = reg.show(&a.reference);
    let mut d = match (checkpoint, vector) {
        (Ok(_), Ok(_)) => {
            return Err(crossmerge::Error::invalid(
                format!("`{}` names both a checkpoint and a vector", a.reference),
                "add `@version` or use an id prefix for the checkpoint",
            )
            .into());
        }
        (Err(_), Ok(v)) => {
            super::vectors::print_vector(&v, a.tensors, a.json)?;
            return Ok(ExitCode::SUCCESS);
        }
        (c, Err(_)) => c?,
    };
    if a.json {
        if !a.tensors {
            d.tensors.clear();
        }
        output::json(&d)?;
        return Ok(ExitCode::SUCCESS);
    }
    let c = &d.checkpoint;
    let mut out = io::stdout().lock();
    writeln!(out, "checkpoint:   {}", c.reference())?;
    writeln!(out, "id:           {:#}", c.manifest_id)?;
    writeln!(out, "kind:         {}", c.kind.as_str())?;
    writeln!(out, "architecture: {}", opt(c.architecture.as_ref()))?;
    writeln!(out, "base:         {}", opt(c.base.as_ref()))?;
    writeln!(out, "language:     {}", opt(c.language.as_ref()))?;
    writeln!(out, "task:         {}", opt(c.task.as_ref()))?;
    for (k, v) in &c.tags {
        writeln!(out, "tag:          {k}={v}")?;
    }
    writeln!(out, "source:       {}", opt(c.source_path.as_ref()))?;
    if let Some(m) = &d.merge {
        writeln!(
            out,
            "recipe:       {} ({}, {}, crossmerge {})",
            m.recipe_hash,
            m.method,
            opt(m.recipe_path.as_ref()),
            m.crossmerge_version
        )?;
        writeln!(out, "inputs:       {}", m.inputs.join(", "))?;
    }
    if let Some(t) = &d.training {
        let last = t.run.losses.as_array().and_then(|l| l.last()).cloned();
        writeln!(
            out,
            "trained:      from {} on {} ({} steps, kept step {} by {}, {:.1} s on {}, seed {}, crossmerge {})",
            t.source,
            t.run.task,
            t.run.steps,
            t.run.kept_step,
            t.run.kept,
            t.run.duration_s,
            t.run.device,
            t.run.seed,
            t.crossmerge_version
        )?;
        if let Some(l) = last {
            writeln!(out, "final loss:   {} at step {}", l[1], l[0])?;
        }
        for d in t.run.data.as_array().into_iter().flatten() {
            writeln!(
                out,
                "data:         {} {} ({})",
                d["role"].as_str().unwrap_or("?"),
                d["path"].as_str().unwrap_or("?"),
                d["hash"].as_str().unwrap_or("?")
            )?;
        }
    }
    writeln!(out, "created:      {}", c.created_at)?;
    writeln!(
        out,
        "tensors:      {} ({} parameters)",
        c.tensor_count, c.parameters
    )?;
    writeln!(
        out,
        "files:        {}",
        d.files
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        out,
        "size:         {} logical, {} stored ({:.1}%)",
        bytes(c.logical_size),
        bytes(d.stored_size),
        100.0 * d.stored_size as f64 / c.logical_size.max(1) as f64
    )?;
    drop(out);
    if a.tensors {
        println!();
        let rows: Vec<Vec<String>> = d
            .tensors
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    t.dtype.to_string(),
                    format!("{:?}", t.shape),
                    t.encoding.to_owned(),
                    t.stored_size.map_or_else(
                        || "-".to_owned(),
                        |s| format!("{:.1}%", 100.0 * s as f64 / t.raw_size.max(1) as f64),
                    ),
                    t.id.to_string(),
                ]
            })
            .collect();
        output::table(
            &["TENSOR", "DTYPE", "SHAPE", "ENCODING", "STORED", "ID"],
            &rows,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// The checkpoint: name, name@version, or an id prefix of at least 6 hex characters.
    reference: String,
    /// The folder to write (must be absent or empty).
    #[arg(long)]
    out: PathBuf,
    /// Split weights into shards of at most this size, e.g. `5GB`, `500MB`, `2GiB`.
    #[arg(long)]
    max_shard_size: Option<String>,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn export(ctx: &Context, a: &ExportArgs) -> anyhow::Result<ExitCode> {
    let reg = ctx.open()?;
    let max = match &a.max_shard_size {
        None => None,
        Some(s) => Some(parse_size(s).ok_or_else(|| {
            crossmerge::Error::invalid(
                format!("`{s}` is not a size"),
                "write sizes as `5GB`, `500MB`, `2GiB` or a number of bytes",
            )
        })?),
    };
    let report = reg
        .export(
            &a.reference,
            &a.out,
            &ExportOptions::default().max_shard_size(max),
            &Bar::new(ctx.quiet),
        )
        .with_context(|| format!("exporting `{}`", a.reference))?;
    for p in &report.cleaned {
        eprintln!(
            "removed `{}`, a partial export left by an interrupted run",
            p.display()
        );
    }
    if a.json {
        output::json(&report)?;
    } else {
        writeln!(io::stdout(), "{}", report.out.display())?;
        eprintln!(
            "exported {} ({} of tensors) as {}",
            report.checkpoint,
            bytes(report.tensor_bytes),
            report.files.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct JsonArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn verify(ctx: &Context, a: &JsonArgs) -> anyhow::Result<ExitCode> {
    let reg = ctx.open()?;
    let report = reg.verify(&Bar::new(ctx.quiet))?;
    if a.json {
        output::json(&report)?;
    } else {
        let mut out = io::stdout().lock();
        for f in &report.findings {
            writeln!(out, "{}", f.message)?;
        }
        drop(out);
        eprintln!(
            "checked {} objects ({}) of {} checkpoints: {} findings{}{}",
            report.objects_checked,
            bytes(report.bytes_checked),
            report.checkpoints,
            report.findings.len(),
            if report.interrupted_writes > 0 {
                format!(
                    "; {} interrupted writes (reclaimable by gc)",
                    report.interrupted_writes
                )
            } else {
                String::new()
            },
            if report.temporary_files > 0 {
                format!(
                    "; {} temporary files (reclaimable by gc)",
                    report.temporary_files
                )
            } else {
                String::new()
            },
        );
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// Print what would be removed and remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run even when the catalog lists no checkpoint while objects exist (a lost catalog:
    /// `rebuild-catalog` first).
    #[arg(long)]
    force: bool,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn gc(ctx: &Context, a: &GcArgs) -> anyhow::Result<ExitCode> {
    let mut reg = ctx.open()?;
    if a.dry_run {
        let plan = reg.gc_plan()?;
        if a.json {
            output::json(&plan)?;
        } else {
            let mut out = io::stdout().lock();
            for id in &plan.unreferenced {
                writeln!(out, "unreferenced {id:#}")?;
            }
            for id in &plan.orphans {
                writeln!(out, "orphan {id:#}")?;
            }
            drop(out);
            eprintln!(
                "would remove {} objects ({}) and {} temporary files",
                plan.unreferenced.len() + plan.orphans.len(),
                bytes(plan.bytes),
                plan.temporary_files
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = reg.gc(a.force)?;
    if a.json {
        output::json(&report)?;
    } else {
        eprintln!(
            "removed {} objects ({}) and {} temporary files",
            report.objects_removed,
            bytes(report.bytes_freed),
            report.temporary_files_removed
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn du(ctx: &Context, a: &JsonArgs) -> anyhow::Result<ExitCode> {
    let reg = ctx.open()?;
    let report = reg.du()?;
    if a.json {
        output::json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows: Vec<Vec<String>> = report
        .checkpoints
        .iter()
        .map(|r| {
            vec![
                r.checkpoint.clone(),
                r.kind.as_str().to_owned(),
                bytes(r.logical),
                bytes(r.stored),
                format!("{:.1}%", 100.0 * r.ratio),
            ]
        })
        .collect();
    rows.push(vec![
        "total (distinct objects)".to_owned(),
        String::new(),
        bytes(report.total_logical),
        bytes(report.total_stored),
        format!("{:.1}%", 100.0 * report.total_ratio),
    ]);
    output::table(&["CHECKPOINT", "KIND", "LOGICAL", "STORED", "RATIO"], &rows)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// Rebuild even though the catalog is readable and lists checkpoints (it is moved aside).
    #[arg(long)]
    force: bool,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn rebuild_catalog(ctx: &Context, a: &RebuildArgs) -> anyhow::Result<ExitCode> {
    let bar = Bar::new(ctx.quiet);
    let report = crossmerge::registry::rebuild_catalog(&ctx.registry, a.force, &bar)?;
    if a.json {
        output::json(&report)?;
    } else {
        let mut out = io::stdout().lock();
        for c in &report.checkpoints {
            writeln!(out, "recovered {c}")?;
        }
        for c in &report.unnamed {
            writeln!(
                out,
                "recovered {c} (no record: registered before records existed, or an interrupted write)"
            )?;
        }
        for r in &report.renumbered {
            writeln!(out, "renumbered {r}")?;
        }
        for d in &report.damaged {
            writeln!(out, "left out {d}")?;
        }
        drop(out);
        for p in &report.moved_aside {
            eprintln!("moved the old catalog aside to {}", p.display());
        }
        eprintln!(
            "rebuilt the catalog from {} objects: {} checkpoints ({} without a record); vectors and evaluations are not stored in objects and must be derived and run again",
            report.objects,
            report.checkpoints.len() + report.unnamed.len(),
            report.unnamed.len()
        );
    }
    Ok(if report.damaged.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
