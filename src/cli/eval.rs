//! `eval` and `report evals`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::commands::Context;
use super::output;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// The checkpoint (name, name@version or id prefix).
    reference: String,
    /// pos | ner | nli | mlm | dp
    #[arg(long)]
    task: String,
    /// CoNLL-U (pos, dp), IOB2 (ner), TSV/JSONL (nli) or text, a paragraph a line (mlm).
    #[arg(long)]
    data: PathBuf,
    /// Language of the data (BCP-47), stored with the row.
    #[arg(long)]
    language: Option<String>,
    /// Split name (default: from the file name: test, dev, train).
    #[arg(long)]
    split: Option<String>,
    /// cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Sentences (or texts, pairs) per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Subwords per sequence; longer sentences are cut and the cut words counted.
    #[arg(long, default_value_t = 512)]
    max_length: usize,
    /// Seed of the MLM masking.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// mlm: pseudo-perplexity (Salazar et al. 2020; every token masked in turn, one pass
    /// per token) instead of seeded 15% masking.
    #[arg(long)]
    pseudo_perplexity: bool,
    /// Gold label → model label: a JSON object or `GOLD MODEL` lines (relations: the full
    /// relation or its universal part). Unmapped gold labels must be the model's.
    #[arg(long, value_name = "FILE")]
    label_map: Option<PathBuf>,
    /// ner: seqeval's `default` mode (conlleval's rules) or `strict` (IOB2: only B-X I-X…
    /// runs are entities).
    #[arg(long, default_value = "default", value_parser = ["default", "strict"])]
    ner_mode: String,
    /// Only these sentences (texts, pairs) of the data, 0-based, end excluded: `0:500`,
    /// `:500`, `500:` (as a Python slice).
    #[arg(long, value_name = "START:END")]
    range: Option<String>,
    /// Print the stored result when this same evaluation (same id: checkpoint, data, range,
    /// settings) was run before, instead of running it again.
    #[arg(long)]
    reuse: bool,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "eval")]
pub fn eval(ctx: &Context, a: &EvalArgs) -> anyhow::Result<ExitCode> {
    use std::io::{self, Write};

    use crossmerge::eval::run::Task;
    use crossmerge::evaluate::{EvalOptions, Evaluate};

    use super::progress::Bar;
    let task = Task::parse(&a.task).ok_or_else(|| {
        crossmerge::Error::invalid(
            format!("unknown task `{}`", a.task),
            "tasks are pos, ner, nli, mlm and dp",
        )
    })?;
    let mut reg = ctx.open()?;
    let mut opts = EvalOptions::new(task, a.data.clone());
    opts.language.clone_from(&a.language);
    opts.split.clone_from(&a.split);
    opts.device.clone_from(&a.device);
    opts.batch_size = a.batch_size;
    opts.max_length = a.max_length;
    opts.seed = a.seed;
    opts.pseudo_perplexity = a.pseudo_perplexity;
    opts.label_map.clone_from(&a.label_map);
    opts.ner_mode =
        crossmerge::eval::metrics::NerMode::parse(&a.ner_mode).expect("clap checked it");
    opts.range = a
        .range
        .as_deref()
        .map(crossmerge::evaluate::Range::parse)
        .transpose()?;
    opts.reuse = a.reuse;
    let r = reg.evaluate(&a.reference, &opts, &Bar::new(ctx.quiet))?;
    if a.json {
        output::json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = io::stdout().lock();
    for (k, v) in &r.outcome.metrics {
        writeln!(out, "{k}\t{v:.6}")?;
    }
    // What happens to what did not fit, said as it is for each task.
    let (cut, scored) = match task {
        Task::Pos | Task::Dp => ("words", "scored as wrong"),
        Task::Ner => ("words", "tagged `O`: wrong where gold names an entity"),
        Task::Nli => ("pairs", "scored on what fits"),
        Task::Mlm => ("texts", "scored on what fits"),
    };
    let mut notes = String::new();
    if r.outcome.truncated_words > 0 {
        let _ = write!(
            notes,
            "; {} {cut} cut by --max-length {} ({scored})",
            r.outcome.truncated_words, a.max_length
        );
    }
    if r.outcome.unaligned_words > 0 {
        let _ = write!(
            notes,
            "; {} words are empty or whitespace and have no subword ({scored})",
            r.outcome.unaligned_words
        );
    }
    let range = opts.range.map(|r| r.to_string()).unwrap_or_default();
    let when = if r.reused { " (stored result)" } else { "" };
    eprintln!(
        "{} on {}{range} ({} examples, {}): {:.1} s on {}{when}{notes}; evaluation {}",
        r.checkpoint,
        a.data.display(),
        r.outcome.examples,
        r.split.as_deref().unwrap_or("no split"),
        r.duration_s,
        r.device,
        &r.id[..12],
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "eval"))]
pub fn eval(_: &Context, _: &EvalArgs) -> anyhow::Result<ExitCode> {
    Err(crossmerge::Error::invalid(
        "this crossmerge was built without the `eval` feature",
        "build with default features",
    )
    .into())
}

#[derive(Subcommand, Debug)]
pub enum ReportCommand {
    /// The stored evaluations.
    Evals(ReportEvalsArgs),
}

#[derive(Args, Debug)]
pub struct ReportEvalsArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// Only evaluations of this checkpoint (name, name@version or id prefix).
    #[arg(long)]
    checkpoint: Option<String>,
    /// Only evaluations of this task (pos, ner, nli, mlm, dp).
    #[arg(long)]
    task: Option<String>,
    /// Only evaluations in this language.
    #[arg(long)]
    language: Option<String>,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the table as CSV here.
    #[arg(long)]
    csv: Option<PathBuf>,
}

pub fn report(ctx: &Context, c: &ReportCommand) -> anyhow::Result<ExitCode> {
    let ReportCommand::Evals(a) = c;
    let reg = ctx.open()?;
    let rows = reg.evaluations(
        a.checkpoint.as_deref(),
        a.task.as_deref(),
        a.language.as_deref(),
    )?;
    if let Some(path) = &a.csv {
        std::fs::write(path, crossmerge::report::evaluations_csv(&rows))?;
    }
    if a.json {
        output::json(&rows)?;
    } else {
        std::io::Write::write_all(
            &mut std::io::stdout().lock(),
            crossmerge::report::evaluations_table(&rows).as_bytes(),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
