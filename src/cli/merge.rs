//! `merge`: run a recipe (TOML, or mergekit YAML by extension).

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use crossmerge::registry::MergeOptions;

use super::commands::Context;
use super::output;
use super::progress::Bar;

#[derive(Args, Debug)]
pub struct MergeArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// The recipe: a .toml file, or a mergekit .yml/.yaml file.
    recipe: PathBuf,
    /// Name of the merged checkpoint (replaces the recipe's `name`).
    #[arg(long)]
    name: Option<String>,
    /// Also export the result as a Hugging Face folder here (a subfolder per sweep point).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Validate against the registry and print the plan as JSON; read no weight, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Refuse sweep grids of more points than this (each point is one merged checkpoint).
    #[arg(long, default_value_t = crossmerge::registry::DEFAULT_MAX_POINTS)]
    max_points: u64,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn merge(ctx: &Context, a: &MergeArgs) -> anyhow::Result<ExitCode> {
    let text = crossmerge::recipe::read_text(&a.recipe)?;
    let recipe = crossmerge::recipe::parse_any(&a.recipe, &text)?;
    let mut reg = ctx.open()?;
    let mut opts = MergeOptions::default().dry_run(a.dry_run);
    opts.name.clone_from(&a.name);
    opts.out.clone_from(&a.out);
    opts.max_points = Some(a.max_points);
    let points = reg.merge(&recipe, &text, &opts, &Bar::new(ctx.quiet))?;
    if a.json || a.dry_run {
        output::json(&points)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = io::stdout().lock();
    for p in &points {
        let c = p.checkpoint.as_ref().expect("not a dry run");
        writeln!(out, "{} {}", c.reference(), c.manifest_id)?;
        eprintln!(
            "{}: {} tensors merged, {} reused as they are; {} new objects, {}{}",
            if p.reused { "already merged" } else { "merged" },
            p.tensors_merged,
            p.tensors_copied,
            p.objects_written,
            output::bytes(p.bytes_written),
            p.exported
                .as_ref()
                .map(|d| format!("; exported to {}", d.display()))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
