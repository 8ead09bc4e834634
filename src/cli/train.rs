//! `train`: fine-tune a registered checkpoint on a language (mlm) or a task and register it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::commands::Context;

#[derive(Args, Debug)]
#[allow(clippy::struct_excessive_bools)] // command-line switches
pub struct TrainArgs {
    #[command(flatten)]
    pub reg: super::RegistryArg,
    /// The checkpoint to train from (name, name@version or id prefix).
    reference: String,
    /// A TOML settings file (schemas/train.schema.json); flags given here override it.
    #[arg(long, value_name = "FILE")]
    settings: Option<PathBuf>,
    /// mlm | pos | ner | nli | dp
    #[arg(long)]
    task: Option<String>,
    /// Training data: text a paragraph a line (mlm), CoNLL-U (pos, dp), IOB2 (ner), TSV or
    /// JSONL (nli).
    #[arg(long, value_name = "TRAIN")]
    data: Option<PathBuf>,
    /// Development data (same format): evaluated every --eval-every steps (default: each
    /// epoch); the best step's weights are registered.
    #[arg(long, value_name = "DEV")]
    dev: Option<PathBuf>,
    /// Only these examples (sentences, pairs, non-empty lines) of TRAIN: `START:END`,
    /// 0-based, end excluded (e.g. `:21000`).
    #[arg(long, value_name = "START:END")]
    data_range: Option<String>,
    /// Only these examples of DEV (`START:END`).
    #[arg(long, value_name = "START:END")]
    dev_range: Option<String>,
    /// Name of the trained checkpoint.
    #[arg(long)]
    name: Option<String>,
    /// Language (BCP-47) of the data: the language model's language for mlm.
    #[arg(long)]
    language: Option<String>,
    /// A label file (one a line) instead of the training data's labels.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Passes over the data (default 3).
    #[arg(long)]
    epochs: Option<u64>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Peak learning rate (default 5e-5).
    #[arg(long)]
    lr: Option<f64>,
    /// Share of the steps warming up linearly from 0 (default 0).
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// `AdamW` weight decay, not on biases and LayerNorm (default 0).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Examples per micro-batch (default 8).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step (default 1).
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Subwords per training sequence (default 128).
    #[arg(long)]
    max_length: Option<usize>,
    /// Seed of shuffling, masking, dropout and new heads (default 42).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep part of the model as it is: embeddings, or the whole encoder (only the head trains).
    #[arg(long, value_parser = ["none", "embeddings", "encoder"])]
    freeze: Option<String>,
    /// cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long)]
    device: Option<String>,
    /// Evaluate on --dev every this many steps.
    #[arg(long)]
    eval_every: Option<u64>,
    /// Save the training state every this many steps (default 200; 0: never).
    #[arg(long)]
    save_every: Option<u64>,
    /// mlm: mask whole words.
    #[arg(long)]
    whole_word: bool,
    /// Train without dropout.
    #[arg(long)]
    no_dropout: bool,
    /// Continue the run these settings name from its last saved state.
    #[arg(long)]
    resume: bool,
    /// Print a JSON summary (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "eval")]
pub fn train(ctx: &Context, a: &TrainArgs) -> anyhow::Result<ExitCode> {
    use crossmerge::train::{Train, TrainPlan, TrainSettings};

    let file = a
        .settings
        .as_deref()
        .map(TrainSettings::read)
        .transpose()?
        .unwrap_or_default();
    let flags = TrainSettings {
        task: a.task.clone(),
        data: a.data.clone(),
        dev: a.dev.clone(),
        data_range: a.data_range.clone(),
        dev_range: a.dev_range.clone(),
        name: a.name.clone(),
        language: a.language.clone(),
        labels: a.labels.clone(),
        epochs: a.epochs,
        max_steps: a.max_steps,
        lr: a.lr,
        warmup_ratio: a.warmup_ratio,
        weight_decay: a.weight_decay,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        max_length: a.max_length,
        seed: a.seed,
        freeze: a.freeze.clone(),
        device: a.device.clone(),
        eval_every: a.eval_every,
        save_every: a.save_every,
        whole_word: a.whole_word.then_some(true),
        dropout: a.no_dropout.then_some(false),
        max_grad_norm: None,
    };
    let plan = TrainPlan::try_from(&file.overlay(flags))?;
    let mut reg = ctx.open_for_write()?;
    let bar = Bar::new(ctx.quiet || a.json);
    let r = reg.train(&a.reference, &plan, a.resume, &bar)?;
    if a.json {
        super::output::json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    let dev = r
        .dev_metrics
        .as_ref()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    println!(
        "{} {} ({} from {}, base {})",
        if r.created {
            "registered"
        } else {
            "already registered:"
        },
        r.checkpoint,
        r.kind.as_str(),
        r.source,
        r.base.as_deref().unwrap_or("none"),
    );
    eprintln!(
        "{} steps{} on {} examples, kept step {} ({}){}; final loss {}; {:.1} s, {:.0} tokens/s{}",
        r.steps,
        if r.resumed_from > 0 {
            format!(" (resumed at {})", r.resumed_from)
        } else {
            String::new()
        },
        r.examples,
        r.kept_step,
        r.kept,
        if dev.is_empty() {
            String::new()
        } else {
            format!(": dev {dev}")
        },
        r.final_loss
            .map_or_else(|| "-".to_owned(), |l| format!("{l:.4}")),
        r.duration_s,
        r.tokens_per_s,
        if r.truncated > 0 {
            format!("; {} cut by --max-length", r.truncated)
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "eval"))]
pub fn train(_: &Context, _: &TrainArgs) -> anyhow::Result<ExitCode> {
    Err(crossmerge::Error::invalid(
        "this crossmerge was built without the `eval` feature",
        "build with default features",
    )
    .into())
}

/// The training progress bar: step/total, smoothed loss, learning rate, tokens/s, ETA and
/// the latest dev score; hidden when stderr is not a terminal or with --quiet/--json.
#[cfg(feature = "eval")]
struct Bar {
    shown: std::sync::Mutex<Option<indicatif::ProgressBar>>,
    enabled: bool,
    state: std::sync::Mutex<(f64, f64, String)>,
    started: std::time::Instant,
}

#[cfg(feature = "eval")]
impl Bar {
    fn new(quiet: bool) -> Self {
        Self {
            shown: std::sync::Mutex::new(None),
            enabled: !quiet,
            state: std::sync::Mutex::new((f64::NAN, 0.0, String::new())),
            started: std::time::Instant::now(),
        }
    }
}

#[cfg(feature = "eval")]
impl crossmerge::train::TrainProgress for Bar {
    fn started(&self, total: u64, done: u64) {
        if !self.enabled {
            return;
        }
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "training [{bar:30}] {pos}/{len} {msg} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_position(done);
        *self.shown.lock().expect("not poisoned") = Some(bar);
    }

    fn step(&self, step: &crossmerge::eval::train::Step) {
        let mut s = self.state.lock().expect("not poisoned");
        // Smoothed loss: exponential moving average, as progress bars of trainers show it.
        s.0 = if s.0.is_nan() {
            step.loss
        } else {
            0.9 * s.0 + 0.1 * step.loss
        };
        s.1 += step.tokens as f64;
        if let Some(bar) = self.shown.lock().expect("not poisoned").as_ref() {
            let rate = s.1 / self.started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s{}",
                s.0, step.lr, rate, s.2
            ));
            bar.set_position(step.step);
        }
    }

    fn evaluated(&self, step: u64, metric: &str, value: f64) {
        self.state.lock().expect("not poisoned").2 = format!(" dev {metric} {value:.4}");
        if let Some(bar) = self.shown.lock().expect("not poisoned").as_ref() {
            bar.println(format!("step {step}: dev {metric} {value:.4}"));
        }
    }

    fn finished(&self) {
        if let Some(bar) = self.shown.lock().expect("not poisoned").take() {
            bar.finish_and_clear();
        }
    }
}
