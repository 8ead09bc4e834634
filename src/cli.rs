//! Command-line front end: clap arguments, one file per command, printers. Only this layer
//! writes to stdout (data) and stderr (people); the library returns values.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod commands;
mod context;
mod eval;
mod merge;
mod output;
mod progress;
mod remote;
mod serve;
mod study;
mod train;
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
    /// The registry folder, for every command that uses one (also accepted after the command)
    /// [default: ./registry, which `register` creates on first use].
    #[arg(long, env = "CROSSMERGE_REGISTRY")]
    registry: Option<PathBuf>,

    /// Never draw progress bars.
    #[arg(long, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

/// `--registry DIR` after a command that uses a registry (before the command works too).
#[derive(clap::Args, Debug, Clone, Default)]
#[allow(clippy::doc_markdown)] // help text, shown as written
pub struct RegistryArg {
    /// The registry folder [default: $CROSSMERGE_REGISTRY, else ./registry].
    #[arg(long = "registry", value_name = "DIR")]
    pub registry: Option<PathBuf>,
}

/// `init`'s arguments.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub reg: RegistryArg,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create an empty registry (any command creates one on first use).
    Init(InitArgs),
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
    /// Evaluate a checkpoint on a task (pos, ner, nli, mlm, dp) and store the result.
    Eval(eval::EvalArgs),
    /// Fine-tune a checkpoint on a language (mlm) or a task (pos, ner, nli, dp) and register it.
    Train(Box<train::TrainArgs>),
    /// Run a cross-lingual transfer study end to end: train, derive, merge, evaluate,
    /// compare, and write its tables and plots.
    Study(Box<study::StudyArgs>),
    /// Walk from an evaluation id to the checkpoints, recipe, vectors, training runs and
    /// data hashes behind it.
    Trace(study::TraceArgs),
    /// Tables of stored results.
    #[command(subcommand)]
    Report(eval::ReportCommand),
    /// Remote registries (S3, or a shared file system): add, list, remove.
    #[command(subcommand)]
    Remote(remote::RemoteCommand),
    /// Send checkpoints (and the bases they need) to a remote; only what it lacks moves.
    Push(remote::TransferArgs),
    /// Fetch checkpoints (and their bases) from a remote; every object is re-hashed on arrival.
    Pull(remote::TransferArgs),
    /// List the checkpoints a remote holds.
    LsRemote(remote::LsRemoteArgs),
    /// Serve a read-only web page and JSON API over the registry: checkpoints, lineage,
    /// vectors, evaluations with their traces, and studies.
    Serve(serve::ServeArgs),
}

/// Parses, runs, prints; maps errors to exit codes 0 (ok), 1 (user-visible failure), 2
/// (unexpected). A closed stdout (`| head`) is not an error.
pub fn main() -> ExitCode {
    // Usage errors are the user's to fix: exit 1, as every other such error (clap's own
    // choice is 2, which crossmerge keeps for the unexpected).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
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
    let (top, quiet) = (cli.registry, cli.quiet);
    // The folder named after the command wins over the one before it (or the environment's),
    // else the default `./registry`.
    let ctx = |r: &RegistryArg| {
        let named = r.registry.clone().or_else(|| top.clone());
        commands::Context {
            default_location: named.is_none(),
            registry: named.unwrap_or_else(|| PathBuf::from("registry")),
            quiet,
        }
    };
    match cli.command {
        Command::Init(a) => commands::init(&ctx(&a.reg)),
        Command::Register(a) => commands::register(&ctx(&a.reg), &a),
        Command::List(a) => commands::list(&ctx(&a.reg), &a),
        Command::Show(a) => commands::show(&ctx(&a.reg), &a),
        Command::Export(a) => commands::export(&ctx(&a.reg), &a),
        Command::Verify(a) => commands::verify(&ctx(&a.reg), &a),
        Command::Gc(a) => commands::gc(&ctx(&a.reg), &a),
        Command::RebuildCatalog(a) => commands::rebuild_catalog(&ctx(&a.reg), &a),
        Command::Du(a) => commands::du(&ctx(&a.reg), &a),
        Command::Derive(a) => vectors::derive(&ctx(&a.reg), &a),
        Command::Compare(a) => vectors::compare(&ctx(&a.reg), &a),
        Command::Diff(a) => vectors::diff(&ctx(&a.reg), &a),
        Command::Merge(a) => merge::merge(&ctx(&a.reg), &a),
        Command::Eval(a) => eval::eval(&ctx(&a.reg), &a),
        Command::Train(a) => train::train(&ctx(&a.reg), &a),
        Command::Study(a) => study::study(&ctx(a.reg()), &a),
        Command::Trace(a) => study::trace(&ctx(&a.reg), &a),
        Command::Remote(c) => remote::remote(&ctx(c.reg()), &c),
        Command::Push(a) => remote::push(&ctx(&a.reg), &a),
        Command::Pull(a) => remote::pull(&ctx(&a.reg), &a),
        Command::LsRemote(a) => remote::ls_remote(&ctx(&a.reg), &a),
        Command::Serve(a) => serve::serve(&ctx(&a.reg), &a),
        Command::Report(c) => {
            let eval::ReportCommand::Evals(a) = &c;
            eval::report(&ctx(&a.reg), &c)
        }
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every argument of every command says what it is (`--help` is the first thing a new
    /// user reads), and `--registry` appears only where a registry is used.
    #[test]
    fn every_argument_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let cmd = Cli::command();
        let mut missing = Vec::new();
        walk(&cmd, "crossmerge", &mut missing);
        assert!(
            missing.is_empty(),
            "arguments without a description: {missing:?}"
        );
        for name in ["synth", "bench"] {
            assert!(
                cmd.find_subcommand(name).is_none(),
                "`{name}` belongs to `cargo xtask`, not the shipped binary"
            );
        }
    }
}
