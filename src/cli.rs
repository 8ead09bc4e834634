//! Command-line front end: clap arguments, one file per command, printers. Only this layer
//! writes to stdout (data) and stderr (people); the library returns values.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod commands;
mod eval;
mod merge;
mod output;
mod progress;
mod vectors;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "crossmerge",
    version,
    about = "Content-addressed registry for cross-lingual model merging"
)]
pub struct Cli {
    /// The registry folder (created on first use).
    #[arg(
        long,
        global = true,
        env = "CROSSMERGE_REGISTRY",
        default_value = "registry"
    )]
    registry: PathBuf,

    /// Never draw progress bars.
    #[arg(long, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create an empty registry (any command creates one on first use).
    Init,
    /// Register a Hugging Face model folder or a .safetensors file.
    Register(commands::RegisterArgs),
    /// List registered checkpoints (or vectors, with `--vectors`).
    List(commands::ListArgs),
    /// Show one checkpoint or vector: lineage, sizes or norms, optionally every tensor.
    Show(commands::ShowArgs),
    /// Write a checkpoint as a Hugging Face folder that `transformers` loads unchanged.
    Export(commands::ExportArgs),
    /// Re-hash every object and check the catalog against the store (exit 1 on findings).
    Verify(commands::JsonArgs),
    /// Remove objects nothing references.
    Gc(commands::GcArgs),
    /// Recreate a lost or damaged catalog from the objects (checkpoints from their records).
    RebuildCatalog(commands::RebuildArgs),
    /// Logical versus stored bytes, per checkpoint and in total.
    Du(commands::JsonArgs),
    /// Derive a task or language vector: a fine-tuned checkpoint minus its base.
    Derive(vectors::DeriveArgs),
    /// Cosine similarity, norms and sign agreement of vectors, by model, layer, module or tensor.
    Compare(vectors::CompareArgs),
    /// Tensors added, removed, retyped and changed between two checkpoints.
    Diff(vectors::DiffArgs),
    /// Merge checkpoints and vectors by a recipe (TOML, or mergekit YAML) and register the result.
    Merge(merge::MergeArgs),
    /// Evaluate a checkpoint on a task (pos, ner, nli, mlm) and store the result.
    Eval(eval::EvalArgs),
    /// Tables of stored results.
    #[command(subcommand)]
    Report(eval::ReportCommand),
    /// Write a synthetic checkpoint family (base + fine-tunes) with real encoder shapes.
    Synth(bench::SynthArgs),
    /// Measure register and export throughput against plain file I/O.
    Bench(bench::BenchArgs),
}

/// Parses, runs, prints; maps errors to exit codes 0 (ok), 1 (user-visible failure), 2
/// (unexpected). A closed stdout (`| head`) is not an error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli);
    report_peak_memory();
    match result {
        Ok(code) => code,
        Err(err) => {
            if err
                .chain()
                .filter_map(|e| e.downcast_ref::<io::Error>())
                .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            let lib = err
                .chain()
                .find_map(|e| e.downcast_ref::<crossmerge::Error>());
            let mut line = format!("error: {err}");
            for cause in err.chain().skip(1) {
                // Sources often repeat their wrapper's text (SQLite's message, io errors).
                let text = cause.to_string();
                if !line.contains(&text) {
                    line.push_str(": ");
                    line.push_str(&text);
                }
            }
            let mut stderr = io::stderr().lock();
            let _ = writeln!(stderr, "{}", line.replace('\n', " "));
            if let Some(hint) = lib.and_then(crossmerge::Error::hint) {
                let _ = writeln!(stderr, "hint: {hint}");
            }
            if lib.is_none_or(crossmerge::Error::is_user_error) {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = commands::Context {
        registry: cli.registry,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Init => commands::init(&ctx),
        Command::Register(a) => commands::register(&ctx, &a),
        Command::List(a) => commands::list(&ctx, &a),
        Command::Show(a) => commands::show(&ctx, &a),
        Command::Export(a) => commands::export(&ctx, &a),
        Command::Verify(a) => commands::verify(&ctx, &a),
        Command::Gc(a) => commands::gc(&ctx, &a),
        Command::RebuildCatalog(a) => commands::rebuild_catalog(&ctx, &a),
        Command::Du(a) => commands::du(&ctx, &a),
        Command::Derive(a) => vectors::derive(&ctx, &a),
        Command::Compare(a) => vectors::compare(&ctx, &a),
        Command::Diff(a) => vectors::diff(&ctx, &a),
        Command::Merge(a) => merge::merge(&ctx, &a),
        Command::Eval(a) => eval::eval(&ctx, &a),
        Command::Report(c) => eval::report(&ctx, &c),
        Command::Synth(a) => bench::synth(&a),
        Command::Bench(a) => bench::bench(&a),
    }
}

/// With `CROSSMERGE_REPORT_PEAK_RSS=1`, prints the process's peak resident memory to stderr
/// (the benchmark reads it from child processes).
fn report_peak_memory() {
    if std::env::var_os("CROSSMERGE_REPORT_PEAK_RSS").is_none() {
        return;
    }
    if let Some(kib) = progress::peak_rss_kib() {
        eprintln!("peak_rss_kib: {kib}");
    }
}
