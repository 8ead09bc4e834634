//! `study` (the cross-lingual transfer experiment, end to end) and `trace` (a number back to
//! what made it).

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::commands::Context;
use super::output;

#[derive(Args, Debug)]
pub struct StudyArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// The study file (TOML, schemas/study.schema.json).
    file: PathBuf,
    /// Print the plan (every unit, and which are already in the registry); run nothing and
    /// read no tensor.
    #[arg(long)]
    dry_run: bool,
    /// Evaluations to run at once, each on its own handle of the registry; training and merges
    /// run one at a time (each uses every core already). The results do not depend on it.
    #[arg(long, short = 'j', default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: u16,
    /// cpu, cuda or cuda:N for training and evaluation (replaces the study file's).
    #[arg(long)]
    device: Option<String>,
    /// The output folder [default: output/NAME].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the plan and results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// An evaluation id (or its first 6+ hex digits), as `eval` prints it and a study's
    /// results.json holds it.
    id: String,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "eval")]
struct Units {
    bar: Option<indicatif::ProgressBar>,
    /// `--quiet`: no bar and no lines.
    quiet: bool,
}

#[cfg(feature = "eval")]
impl crossmerge::study::StudyProgress for Units {
    fn unit(&self, kind: crossmerge::study::UnitKind, label: &str) {
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(label.to_owned());
            }
            None if self.quiet => {}
            None => eprintln!("{:>7} {label}", kind.name()),
        }
    }
}

#[cfg(feature = "eval")]
pub fn study(ctx: &Context, a: &StudyArgs) -> anyhow::Result<ExitCode> {
    use std::fmt::Write as _;

    use crossmerge::study::{self, Silent, Study, StudyOptions, UnitKind};

    let s = Study::read(&a.file)?;
    let mut reg = ctx.open()?;
    let command = std::iter::once("crossmerge".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let mut opts = StudyOptions::default();
    opts.device.clone_from(&a.device);
    opts.command = command;
    opts.jobs = usize::from(a.jobs);
    opts.dry_run = true;
    // The plan first (a dry run: manifests and data files only), then the run.
    let planned = study::run(&mut reg, &s, &opts, &Silent)?;
    let plan = &planned.plan;
    let total = plan.units.len();
    let done = plan.units.iter().filter(|u| u.done).count();
    let mut summary = format!("study {}: {total} units, {done} already done", s.name);
    for kind in UnitKind::ALL {
        let (n, d) = plan.count(kind);
        if n > 0 {
            let _ = write!(summary, "\n  {:<8}{n:>5} ({d} done)", kind.name());
        }
    }
    if plan.count(UnitKind::Compare).0 > 0 {
        summary.push_str(" (recomputed each run: it reads the vectors, stores nothing)");
    }
    if a.dry_run {
        if a.json {
            output::json(&plan)?;
        } else {
            let mut out = io::stdout().lock();
            writeln!(out, "{summary}")?;
            for u in &plan.units {
                writeln!(
                    out,
                    "{} {:<8}{}",
                    if u.done { "done" } else { "    " },
                    u.kind.name(),
                    u.label
                )?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{summary}");
    let bar = (!ctx.quiet && std::io::IsTerminal::is_terminal(&io::stderr())).then(|| {
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} units {elapsed_precise} {wide_msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_position(done as u64);
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    });
    let units = Units {
        bar,
        quiet: ctx.quiet,
    };
    opts.dry_run = false;
    let outcome = study::run(&mut reg, &s, &opts, &units);
    if let Some(bar) = &units.bar {
        bar.finish_and_clear();
    }
    let outcome = outcome?;
    let results = outcome.results.expect("a run has results");
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("output").join(&s.name));
    study::output::write_all(&dir, &results)?;
    let ran = outcome.plan.units.iter().filter(|u| !u.done).count();
    eprintln!(
        "ran {ran} of {} units; wrote {} (README.md, results.json, results.csv, plots)",
        outcome.plan.units.len(),
        dir.display()
    );
    if a.json {
        output::json(&serde_json::json!({ "plan": outcome.plan, "results": results }))?;
    } else {
        io::stdout()
            .lock()
            .write_all(study::output::readme(&results).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "eval"))]
pub fn study(_: &Context, _: &StudyArgs) -> anyhow::Result<ExitCode> {
    Err(crossmerge::Error::invalid(
        "this crossmerge was built without the `eval` feature",
        "build with default features",
    )
    .into())
}

pub fn trace(ctx: &Context, a: &TraceArgs) -> anyhow::Result<ExitCode> {
    let reg = ctx.open()?;
    let t = reg.trace(&a.id)?;
    if a.json {
        output::json(&t)?;
    } else {
        io::stdout().lock().write_all(t.text().as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}
