//! `study` (the cross-lingual transfer experiment, end to end) and `trace` (a number back to
//! what made it).
#![allow(clippy::doc_markdown)] // clap help text, shown as written (URLs, variable names)

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use super::commands::Context;
use super::output;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct StudyArgs {
    #[command(subcommand)]
    command: Option<StudyCommand>,
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// The study file (TOML, schemas/study.schema.json).
    #[arg(required = true)]
    file: Option<PathBuf>,
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
    /// Where units run: `local` (this machine) or `slurm` (one `sbatch --array` per wave and
    /// kind of unit; workers write objects and one result per unit, which this process, the
    /// only writer of the catalog, ingests).
    #[arg(long, value_enum, default_value_t = Executor::Local)]
    executor: Executor,
    /// With slurm: an `#SBATCH` option for every array (repeat it), e.g.
    /// `--sbatch-arg=--partition=gpu` or `--sbatch-arg=--time=04:00:00`.
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
    sbatch_arg: Vec<String>,
    /// With slurm: an `#SBATCH` option for the arrays of units that use the device (train
    /// and eval), e.g. `--gpu-sbatch-arg=--gres=gpu:1`; derivations and merges run on CPUs.
    #[arg(
        long = "gpu-sbatch-arg",
        value_name = "ARG",
        allow_hyphen_values = true
    )]
    gpu_sbatch_arg: Vec<String>,
    /// With slurm: tasks of one array running at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_parallel: Option<u32>,
    /// With slurm: times a failed or cancelled unit is submitted again before the study stops.
    #[arg(long, default_value_t = 2, value_name = "N")]
    retries: u32,
    /// With slurm: seconds between the driver's questions to squeue.
    #[arg(long, default_value_t = 15, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    poll: u64,
    /// With slurm: a remote of the registry (`remote add`, S3) through which the workers read
    /// objects and hand back what they made, for nodes that do not mount the registry.
    #[arg(long, value_name = "NAME")]
    remote: Option<String>,
    /// With slurm: the crossmerge binary the compute nodes run [default: this one].
    #[arg(long, value_name = "PATH")]
    worker: Option<PathBuf>,
    /// With slurm and --dry-run: write the first wave's folder (catalog snapshot, unit lists,
    /// sbatch scripts) to DIR, as the driver would submit it.
    #[arg(long, value_name = "DIR", requires = "dry_run")]
    emit: Option<PathBuf>,
    /// With slurm and --dry-run: price the units by the evaluations and trainings stored in
    /// this registry (a pilot run's on the cluster) [default: the study's registry].
    #[arg(long, value_name = "REGISTRY", requires = "dry_run")]
    costs: Option<PathBuf>,
}

impl StudyArgs {
    pub fn reg(&self) -> &super::RegistryArg {
        match &self.command {
            Some(StudyCommand::RunUnit(u)) => &u.reg,
            None => &self.reg,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Executor {
    Local,
    Slurm,
}

#[derive(Subcommand, Debug)]
enum StudyCommand {
    /// Run one unit of a study on a compute node, as the Slurm executor's array tasks do:
    /// objects into the unit's folder, one result file; never the catalog.
    RunUnit(RunUnitArgs),
}

#[derive(Args, Debug)]
struct RunUnitArgs {
    #[command(flatten)]
    reg: super::RegistryArg,
    /// The study file.
    file: PathBuf,
    /// The wave folder the driver wrote (REGISTRY/slurm/STUDY/wave-NNN), or its key on the
    /// remote (slurm/STUDY/wave-NNN) with --remote-url.
    #[arg(long, value_name = "DIR")]
    wave: PathBuf,
    /// Read objects from, and hand the unit's back to, this remote (s3://BUCKET/PREFIX or
    /// file:///PATH) instead of the registry's folder; credentials from the environment.
    #[arg(long, value_name = "URL")]
    remote_url: Option<String>,
    /// The remote's S3 endpoint, when not AWS's.
    #[arg(long, value_name = "URL", requires = "remote_url")]
    endpoint: Option<String>,
    /// Allow plain HTTP to the endpoint.
    #[arg(long, requires = "remote_url")]
    allow_http: bool,
    /// The unit list in the wave folder (e.g. eval.units).
    #[arg(long, value_name = "NAME")]
    list: String,
    /// The unit's line in the list, from 0 (the array task id).
    #[arg(long, value_name = "N")]
    index: usize,
    /// cpu, cuda or cuda:N (replaces the study file's).
    #[arg(long)]
    device: Option<String>,
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

    if let Some(StudyCommand::RunUnit(u)) = &a.command {
        return run_unit(ctx, u);
    }
    let file = a.file.as_ref().expect("clap requires the file");
    if a.executor == Executor::Local {
        let slurm_only = [
            ("--sbatch-arg", !a.sbatch_arg.is_empty()),
            ("--gpu-sbatch-arg", !a.gpu_sbatch_arg.is_empty()),
            ("--max-parallel", a.max_parallel.is_some()),
            ("--worker", a.worker.is_some()),
            ("--emit", a.emit.is_some()),
            ("--costs", a.costs.is_some()),
            ("--remote", a.remote.is_some()),
        ];
        if let Some((flag, _)) = slurm_only.iter().find(|(_, given)| *given) {
            return Err(crossmerge::Error::invalid(
                format!("{flag} is for the Slurm executor"),
                "add --executor slurm, or leave the option out",
            )
            .into());
        }
    }
    let s = Study::read(file)?;
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
    opts.sizes = a.dry_run && a.executor == Executor::Slurm;
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
    if a.dry_run && a.executor == Executor::Slurm {
        let slurm = slurm_options(a, file)?;
        return slurm_dry_run(&mut reg, &s, &opts, &slurm, plan, &summary, a);
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
    if a.executor == Executor::Slurm {
        let slurm = slurm_options(a, file)?;
        opts.dry_run = false;
        let quiet = ctx.quiet;
        let r = study::slurm::drive(&mut reg, &s, &opts, &slurm, &|line| {
            if !quiet {
                eprintln!("{line}");
            }
        })?;
        eprintln!(
            "slurm: {} wave(s), {} task(s) in {} array(s), {} retried; ingested {} checkpoint(s), {} vector(s), {} evaluation(s)",
            r.waves,
            r.tasks,
            r.arrays.len(),
            r.retried,
            r.ingested.checkpoints.len(),
            r.ingested.vectors.len(),
            r.ingested.evaluations
        );
        // Everything is stored now: the local walk below compares and writes the output.
        opts.jobs = 1;
    }
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
    // With slurm the units ran before the local walk (which finds them done).
    let ran = if a.executor == Executor::Slurm {
        &planned.plan
    } else {
        &outcome.plan
    }
    .units
    .iter()
    .filter(|u| !u.done)
    .count();
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

#[cfg(feature = "eval")]
fn slurm_options(
    a: &StudyArgs,
    file: &std::path::Path,
) -> anyhow::Result<crossmerge::study::slurm::SlurmOptions> {
    let worker = match &a.worker {
        Some(w) => w.clone(),
        None => std::env::current_exe()?,
    };
    let mut o = crossmerge::study::slurm::SlurmOptions::new(worker, file.to_path_buf());
    o.sbatch_args.clone_from(&a.sbatch_arg);
    o.gpu_sbatch_args.clone_from(&a.gpu_sbatch_arg);
    o.max_parallel = a.max_parallel;
    o.retries = a.retries;
    o.poll = std::time::Duration::from_secs(a.poll);
    o.remote.clone_from(&a.remote);
    Ok(o)
}

/// `--dry-run --executor slurm`: the waves, their arrays and what they would cost.
#[cfg(feature = "eval")]
fn slurm_dry_run(
    reg: &mut crossmerge::Registry,
    s: &crossmerge::study::Study,
    opts: &crossmerge::study::StudyOptions,
    slurm: &crossmerge::study::slurm::SlurmOptions,
    plan: &crossmerge::study::Plan,
    summary: &str,
    a: &StudyArgs,
) -> anyhow::Result<ExitCode> {
    use crossmerge::study::{self, slurm as sl};

    let (ready, _) = study::ready(reg, s, opts)?;
    let waves = sl::projected_waves(plan, &ready);
    let costs = a
        .costs
        .as_deref()
        .map(crossmerge::Registry::open_read_only)
        .transpose()?;
    let estimate = sl::estimate(costs.as_ref().unwrap_or(reg), s, opts, plan)?;
    if a.json {
        output::json(&serde_json::json!({
            "plan": plan,
            "waves": waves.iter().map(|(k, n, what)| serde_json::json!({"kind": k, "units": n, "what": what})).collect::<Vec<_>>(),
            "estimate": estimate,
        }))?;
    } else {
        let mut out = io::stdout().lock();
        writeln!(out, "{summary}")?;
        writeln!(
            out,
            "waves (one sbatch --array per kind; a wave starts when the one before is ingested):"
        )?;
        for (i, (kind, n, what)) in waves.iter().enumerate() {
            let place = if *kind == study::UnitKind::Compare {
                "driver".to_owned()
            } else {
                format!("array of {n}")
            };
            writeln!(out, "  {:>2}. {:<8}{place:<14}{what}", i + 1, kind.name())?;
        }
        out.write_all(estimate.text().as_bytes())?;
    }
    if let Some(dir) = &a.emit {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let scripts = sl::emit(reg, s, opts, slurm, &dir, &ready)?;
        let mut out = io::stderr().lock();
        writeln!(out, "wrote the first wave's folder to {}:", dir.display())?;
        for (path, text) in scripts {
            writeln!(out, "==> {} <==\n{text}", path.display())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `study run-unit`: one unit on a compute node.
#[cfg(feature = "eval")]
fn run_unit(ctx: &Context, u: &RunUnitArgs) -> anyhow::Result<ExitCode> {
    use crossmerge::study::{Study, StudyOptions, slurm};

    let s = Study::read(&u.file)?;
    let mut opts = StudyOptions::default();
    opts.device.clone_from(&u.device);
    let started = std::time::Instant::now();
    let key = match &u.remote_url {
        Some(url) => {
            let remote = crossmerge::store::remote::RemoteConfig {
                name: "staging".to_owned(),
                url: url.clone(),
                endpoint: u.endpoint.clone(),
                allow_http: u.allow_http,
            };
            slurm::work_remote(
                &remote,
                &s,
                &u.wave.to_string_lossy(),
                &u.list,
                u.index,
                &opts,
            )?
        }
        None => slurm::work(&ctx.registry, &s, &u.wave, &u.list, u.index, &opts)?,
    };
    if !ctx.quiet {
        eprintln!(
            "unit {key}: done in {:.1} s",
            started.elapsed().as_secs_f64()
        );
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
