//! Developer tasks, kept out of the shipped `crossmerge` binary:
//!
//! ```sh
//! cargo xtask bench [--suite registry|compare|merge|eval|train|remote|serve] [--runs N]   # BENCHMARKS.md's figures
//! cargo xtask synth --shape xlmr-base --finetunes 3 --out target/family  # synthetic checkpoints
//! ```
//!
//! `bench` builds the release `crossmerge` first (`--no-build` skips that) and measures it as
//! child processes.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod serve_bench;

use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "xtask",
    about = "crossmerge developer tasks: benchmarks and synthetic families"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Measure crossmerge against bounds taken in the same run (see BENCHMARKS.md).
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
        /// Measure the binary as it is, without `cargo build --release` first.
        #[arg(long)]
        no_build: bool,
    },
    /// Write a synthetic checkpoint family (base + fine-tunes) with real encoder shapes.
    Synth(bench::SynthArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Bench { args, no_build } => build(no_build).and_then(|()| {
            if matches!(args.suite, bench::Suite::Serve) {
                let exe = std::fs::canonicalize(&args.crossmerge)?;
                serve_bench::run(&args, &exe)
            } else {
                bench::bench(&args)
            }
        }),
        Task::Synth(a) => bench::synth(&a),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

/// The release binary the benchmarks measure.
fn build(skip: bool) -> anyhow::Result<()> {
    if skip {
        return Ok(());
    }
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--bin", "crossmerge"])
        .status()?;
    anyhow::ensure!(status.success(), "cargo build --release failed");
    Ok(())
}
