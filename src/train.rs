//! Training through the registry (`crossmerge train`): a registered checkpoint's weights,
//! config and tokenizer are loaded (every byte verified), fine-tuned by
//! `crossmerge-nn`'s [`Trainer`], and the result registered through the registry's one write
//! path with its lineage (`--base`: the source's base, or the source when it is a base) and
//! its training run (the `trainings` table), in one catalog transaction.
//!
//! Training state (weights, optimizer moments, step, losses and dev scores; every random
//! draw is a function of the seed and the step) is saved atomically under
//! `REGISTRY/training/KEY/` every `save_every` steps, KEY naming the source, data and
//! settings, so `--resume` after a kill continues with exactly the bits of an uninterrupted
//! run; the folder goes once the checkpoint is registered. A killed run registers nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::catalog::{CheckpointKind, CheckpointRow, NewTraining};
use crate::checkpoint::Manifest;
use crate::error::{Error, Result};
use crate::eval::model::{Config, HeadKind};
use crate::eval::parser::ParserConfig;
use crate::eval::run::{self, Scoring, Task};
use crate::eval::train::data::{self, Dataset};
use crate::eval::train::heads::{config_for, new_head, new_parser};
use crate::eval::train::masking::Masking;
use crate::eval::train::state;
use crate::eval::train::trainer::Trained;
use crate::eval::train::{Freeze, Objective, Options, Step, Trainer};
use crate::eval::{align, conllu, ner, nli, text};
use crate::evaluate::{Range, device, file_of};
use crate::registry::MemoryTensor;
use crate::tensor::Dtype;
use crate::{NoProgress, RegisterOptions, Registry};

/// `crossmerge train`'s settings, as a TOML file names them (`schemas/train.schema.json`);
/// every key is optional there and a command-line flag given overrides it. Relative paths
/// are relative to the file's folder.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// mlm | pos | ner | nli | dp
    pub task: Option<String>,
    /// Training data: text a paragraph a line (mlm), CoNLL-U (pos, dp), IOB2 (ner), TSV or
    /// JSONL (nli).
    pub data: Option<PathBuf>,
    /// Development data in the same format: evaluated every `eval_every` steps (default:
    /// every epoch); the best step's weights are the ones registered.
    pub dev: Option<PathBuf>,
    /// Only these examples (sentences, pairs, non-empty lines) of `data`: `START:END`,
    /// 0-based, end excluded, as a Python slice (e.g. `:21000` to hold out the rest).
    pub data_range: Option<String>,
    /// Only these examples of `dev` (`START:END`).
    pub dev_range: Option<String>,
    /// Name of the trained checkpoint.
    pub name: Option<String>,
    /// Language (BCP-47): the trained language of an mlm run, the data's of a task run.
    pub language: Option<String>,
    /// A label file (one label a line) instead of the training data's label set.
    pub labels: Option<PathBuf>,
    /// Passes over the data (default 3).
    pub epochs: Option<u64>,
    /// Optimizer steps (overrides epochs).
    pub max_steps: Option<u64>,
    /// Peak learning rate (default 5e-5).
    pub lr: Option<f64>,
    /// Share of the steps spent warming up linearly from 0 (default 0).
    pub warmup_ratio: Option<f64>,
    /// `AdamW`'s decoupled weight decay, not on biases and LayerNorm (default 0).
    pub weight_decay: Option<f64>,
    /// Examples per micro-batch (default 8).
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step (default 1).
    pub grad_accum: Option<usize>,
    /// Subwords per training sequence (default 128); longer ones are cut.
    pub max_length: Option<usize>,
    /// Seed of the shuffling, masking, dropout and new heads (default 42).
    pub seed: Option<u64>,
    /// none | embeddings | encoder (only the head trains).
    pub freeze: Option<String>,
    /// cpu | cuda | cuda:N
    pub device: Option<String>,
    /// Evaluate on `dev` every this many steps.
    pub eval_every: Option<u64>,
    /// Save the training state every this many steps (default 200; 0: never).
    pub save_every: Option<u64>,
    /// mlm: mask whole words (default false).
    pub whole_word: Option<bool>,
    /// Dropout at config.json's rates (default true).
    pub dropout: Option<bool>,
    /// Gradient clipping norm (default 1.0).
    pub max_grad_norm: Option<f64>,
}

/// The JSON Schema of [`TrainSettings`], as committed in `schemas/train.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(TrainSettings);
    serde_json::to_string_pretty(&schema).expect("a schema serialises") + "\n"
}

impl TrainSettings {
    /// Reads a TOML settings file; relative paths in it become relative to its folder.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        let mut s: TrainSettings = toml::from_str(&text).map_err(|e| {
            Error::bad_input(
                path,
                e.message().to_owned(),
                "a train settings file has the keys of schemas/train.schema.json (task, data, dev, name, lr, …)",
            )
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for p in [&mut s.data, &mut s.dev, &mut s.labels]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        Ok(s)
    }

    /// `self`, with every key `over` sets replaced.
    #[must_use]
    pub fn overlay(self, over: TrainSettings) -> TrainSettings {
        macro_rules! pick {
            ($($f:ident),*) => { TrainSettings { $($f: over.$f.or(self.$f)),* } };
        }
        pick!(
            task,
            data,
            dev,
            data_range,
            dev_range,
            name,
            language,
            labels,
            epochs,
            max_steps,
            lr,
            warmup_ratio,
            weight_decay,
            batch_size,
            grad_accum,
            max_length,
            seed,
            freeze,
            device,
            eval_every,
            save_every,
            whole_word,
            dropout,
            max_grad_norm
        )
    }
}

/// A run's settings, resolved: defaults filled in, everything checked.
#[derive(Clone, Debug, Serialize)]
pub struct TrainPlan {
    pub task: Task,
    pub data: PathBuf,
    pub dev: Option<PathBuf>,
    pub data_range: Option<Range>,
    pub dev_range: Option<Range>,
    pub name: String,
    pub language: Option<String>,
    pub labels: Option<PathBuf>,
    pub options: Options,
    pub max_length: usize,
    pub device: String,
    pub eval_every: Option<u64>,
    pub save_every: u64,
    pub whole_word: bool,
}

impl TryFrom<&TrainSettings> for TrainPlan {
    type Error = Error;

    fn try_from(s: &TrainSettings) -> Result<Self> {
        let need = |what: &str| {
            Error::invalid(
                format!("training needs --{what}"),
                "give it on the command line or in the settings file (--settings FILE)",
            )
        };
        let task_name = s.task.as_deref().ok_or_else(|| need("task"))?;
        let task = Task::parse(task_name).ok_or_else(|| {
            Error::invalid(
                format!("unknown task `{task_name}`"),
                "tasks are mlm, pos, ner, nli and dp",
            )
        })?;
        let name = s.name.clone().ok_or_else(|| need("name"))?;
        crate::catalog::check_name("checkpoint name", &name)?;
        let freeze = match s.freeze.as_deref().unwrap_or("none") {
            "none" => Freeze::None,
            "embeddings" => Freeze::Embeddings,
            "encoder" => Freeze::Encoder,
            other => {
                return Err(Error::invalid(
                    format!("--freeze {other} is not a part of the model"),
                    "freeze none, embeddings or encoder",
                ));
            }
        };
        let max_length = s.max_length.unwrap_or(128);
        if max_length < crate::evaluate::MIN_MAX_LENGTH {
            return Err(Error::invalid(
                format!("--max-length {max_length} is too short"),
                "give --max-length of at least 8 (default 128)",
            ));
        }
        if s.eval_every == Some(0) {
            return Err(Error::invalid(
                "--eval-every 0 would never evaluate",
                "give a number of steps, or leave it out to evaluate every epoch",
            ));
        }
        if task == Task::Mlm && s.language.is_none() {
            return Err(Error::invalid(
                "a masked-LM run makes a language model, which needs --language",
                "name the language of the text, e.g. --language es",
            ));
        }
        if task == Task::Mlm && s.labels.is_some() {
            return Err(Error::invalid(
                "--labels has no use with --task mlm",
                "label files are for pos, ner, nli and dp",
            ));
        }
        let d = Options::default();
        Ok(TrainPlan {
            task,
            data: s.data.clone().ok_or_else(|| need("data"))?,
            dev: s.dev.clone(),
            data_range: s.data_range.as_deref().map(Range::parse).transpose()?,
            dev_range: s.dev_range.as_deref().map(Range::parse).transpose()?,
            name,
            language: s.language.clone(),
            labels: s.labels.clone(),
            options: Options {
                epochs: s.epochs.unwrap_or(d.epochs),
                max_steps: s.max_steps,
                lr: s.lr.unwrap_or(d.lr),
                warmup_ratio: s.warmup_ratio.unwrap_or(d.warmup_ratio),
                weight_decay: s.weight_decay.unwrap_or(d.weight_decay),
                batch_size: s.batch_size.unwrap_or(d.batch_size),
                grad_accum: s.grad_accum.unwrap_or(d.grad_accum),
                max_grad_norm: s.max_grad_norm.unwrap_or(d.max_grad_norm),
                seed: s.seed.unwrap_or(d.seed),
                freeze,
                dropout: s.dropout.unwrap_or(d.dropout),
            },
            max_length,
            device: s.device.clone().unwrap_or_else(|| "cpu".to_owned()),
            eval_every: s.eval_every,
            save_every: s.save_every.unwrap_or(200),
            whole_word: s.whole_word.unwrap_or(false),
        })
    }
}

/// What a training run reports as it goes.
pub trait TrainProgress {
    /// The run starts (or resumes) at `done` of `total` steps.
    fn started(&self, total: u64, done: u64);
    fn step(&self, step: &Step);
    /// A dev evaluation: the selection metric's value.
    fn evaluated(&self, step: u64, metric: &str, value: f64);
    fn finished(&self);
}

/// No progress output.
pub struct Quiet;

impl TrainProgress for Quiet {
    fn started(&self, _: u64, _: u64) {}
    fn step(&self, _: &Step) {}
    fn evaluated(&self, _: u64, _: &str, _: f64) {}
    fn finished(&self) {}
}

/// What `train` did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub checkpoint: String,
    pub manifest_id: String,
    pub created: bool,
    pub kind: CheckpointKind,
    pub base: Option<String>,
    pub source: String,
    pub task: Task,
    pub steps: u64,
    /// The step whose weights were registered, and why (`best_dev`, `last`).
    pub kept_step: u64,
    pub kept: String,
    pub final_loss: Option<f64>,
    /// The kept step's dev metrics.
    pub dev_metrics: Option<BTreeMap<String, f64>>,
    pub examples: usize,
    pub labels: Vec<String>,
    /// Words (texts, pairs) cut by `max_length` in the training data.
    pub truncated: u64,
    /// The step the run resumed from (0: from the start).
    pub resumed_from: u64,
    /// Training time (resumed parts included), dev evaluations included.
    pub duration_s: f64,
    /// Training tokens (padding excluded) per second of training, dev evaluations excluded.
    pub tokens_per_s: f64,
    /// The same over the steps after this run's first (`None` after one step): the first
    /// pays the warm-up (the optimizer's moments and the allocator's pools touched for the
    /// first time), which a throughput comparison leaves out on both sides.
    pub steady_tokens_per_s: Option<f64>,
}

/// The metric that picks the kept step, and whether higher is better.
pub(crate) fn selection(task: Task) -> (&'static str, bool) {
    match task {
        Task::Pos => ("upos_accuracy", true),
        Task::Ner => ("entity_f1", true),
        Task::Nli => ("accuracy", true),
        Task::Dp => ("las", true),
        Task::Mlm => ("perplexity", false),
    }
}

/// Dev data, read once.
enum Dev {
    Pos(Vec<conllu::Sentence>),
    Ner(Vec<ner::NerSentence>),
    Nli(Vec<nli::Example>),
    Mlm(Vec<String>),
    Dp(Vec<conllu::Sentence>),
}

impl Dev {
    fn labels(&self) -> Vec<String> {
        match self {
            Dev::Pos(d) => d
                .iter()
                .flat_map(|s| s.words.iter().map(|w| w.upos.clone()))
                .collect(),
            Dev::Ner(d) => d.iter().flat_map(|s| s.tags.iter().cloned()).collect(),
            Dev::Nli(d) => d.iter().map(|e| e.label.clone()).collect(),
            Dev::Dp(d) => d
                .iter()
                .flat_map(|s| {
                    s.words
                        .iter()
                        .map(|w| conllu::universal(&w.deprel).to_owned())
                })
                .collect(),
            Dev::Mlm(_) => Vec::new(),
        }
    }

    fn evaluate(&self, model: &run::Model, seed: u64) -> Result<BTreeMap<String, f64>> {
        let none = |_: u64| {};
        let (b, m) = (32, 512);
        let outcome = match self {
            Dev::Pos(d) => run::pos(model, d, b, m, &none)?,
            Dev::Ner(d) => run::ner(
                model,
                d,
                crate::eval::metrics::NerMode::Default,
                b,
                m,
                &none,
            )?,
            Dev::Nli(d) => run::nli(model, d, b, m, &none)?,
            Dev::Mlm(d) => run::mlm(model, d, Scoring::Masked { seed }, b, m, &none)?,
            Dev::Dp(d) => run::dp(model, d, b, m, &none)?,
        };
        Ok(outcome.metrics)
    }
}

/// Whether a tensor name is the encoder's (embeddings and layers, with or without the
/// `bert.`/`roberta.` prefix).
fn bare(name: &str) -> &str {
    name.strip_prefix("bert.")
        .or_else(|| name.strip_prefix("roberta."))
        .unwrap_or(name)
}

fn is_encoder(name: &str) -> bool {
    let b = bare(name);
    b.starts_with("embeddings.") || b.starts_with("encoder.")
}

fn is_pooler(name: &str) -> bool {
    bare(name).starts_with("pooler.")
}

/// The head tensors of `kind` (and whether the name belongs to it).
fn is_head(name: &str, objective: &Objective, roberta: bool) -> bool {
    match objective {
        Objective::Head(HeadKind::MaskedLm) => {
            name.starts_with("cls.predictions.") || name.starts_with("lm_head.")
        }
        Objective::Head(HeadKind::Token) => name.starts_with("classifier."),
        Objective::Head(HeadKind::Sequence) => {
            name.starts_with("classifier.") || (!roberta && is_pooler(name))
        }
        Objective::Parser(_) => name.starts_with("parser."),
    }
}

/// Training data: the dataset, its raw dev counterpart and the files' hashes.
struct Inputs {
    dataset: Dataset,
    dev: Option<Dev>,
    hashes: Vec<Value>,
}

fn hash_of(path: &Path) -> Result<String> {
    let bytes = crate::eval::read_data(path)?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    let labels: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if labels.is_empty() {
        return Err(Error::bad_input(
            path,
            "names no label",
            "a label file has one label a line",
        ));
    }
    Ok(labels)
}

fn read_inputs(plan: &TrainPlan, tokenizer: &align::Tokenizer) -> Result<Inputs> {
    let given = plan.labels.as_deref().map(read_labels).transpose()?;
    let given = given.as_deref();
    let m = plan.max_length;
    let (train, dev_part, data) = (plan.data_range, plan.dev_range, plan.data.as_path());
    let dataset = match plan.task {
        Task::Pos => data::pos(
            &Range::keep(train, conllu::read(data)?, data)?,
            tokenizer,
            m,
            given,
        )?,
        Task::Ner => data::ner(
            &Range::keep(train, ner::read(data)?, data)?,
            tokenizer,
            m,
            given,
        )?,
        Task::Nli => data::nli(
            &Range::keep(train, nli::read(data)?, data)?,
            tokenizer,
            m,
            given,
        )?,
        Task::Mlm => data::mlm(&plan.data, tokenizer, m, train.map(|r| (r.start, r.end)))?,
        Task::Dp => data::dp(
            &Range::keep(train, conllu::read(data)?, data)?,
            tokenizer,
            m,
            given,
        )?,
    };
    if dataset.examples.is_empty() {
        return Err(Error::bad_input(
            &plan.data,
            "has nothing to train on",
            "give a training file with at least one sentence (text, pair) the tokenizer turns into tokens",
        ));
    }
    let dev = plan
        .dev
        .as_deref()
        .map(|p| -> Result<Dev> {
            Ok(match plan.task {
                Task::Pos => Dev::Pos(Range::keep(dev_part, conllu::read(p)?, p)?),
                Task::Ner => Dev::Ner(Range::keep(dev_part, ner::read(p)?, p)?),
                Task::Nli => Dev::Nli(Range::keep(dev_part, nli::read(p)?, p)?),
                Task::Mlm => Dev::Mlm(Range::keep(dev_part, text::read(p)?, p)?),
                Task::Dp => Dev::Dp(Range::keep(dev_part, conllu::read(p)?, p)?),
            })
        })
        .transpose()?;
    if let Some(dev) = &dev {
        let mut unseen: Vec<String> = dev
            .labels()
            .into_iter()
            .filter(|l| dataset.labels.binary_search(l).is_err())
            .collect();
        unseen.sort();
        unseen.dedup();
        if !unseen.is_empty() {
            return Err(Error::invalid(
                format!(
                    "the dev data has label(s) {} that the training data lacks",
                    unseen.join(", ")
                ),
                "train on data that has every dev label, or give the full label set with --labels FILE",
            ));
        }
    }
    let mut hashes = vec![json!({
        "role": "train",
        "path": std::fs::canonicalize(&plan.data).unwrap_or_else(|_| plan.data.clone()),
        "hash": hash_of(&plan.data)?,
    })];
    if let Some(p) = &plan.dev {
        hashes.push(json!({
            "role": "dev",
            "path": std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()),
            "hash": hash_of(p)?,
        }));
    }
    if let Some(p) = &plan.labels {
        hashes.push(json!({
            "role": "labels",
            "path": std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()),
            "hash": hash_of(p)?,
        }));
    }
    Ok(Inputs {
        dataset,
        dev,
        hashes,
    })
}

/// The source's weights and the new or reused head, as the trained model has them.
struct Model {
    tensors: Vec<(String, Tensor)>,
    config_json: Value,
    config: Config,
    objective: Objective,
    head_reused: bool,
}

#[allow(clippy::too_many_lines)] // one decision per head kind, in order
fn build_model(
    reg: &Registry,
    row: &CheckpointRow,
    manifest: &Manifest,
    source_config: &Value,
    task: Task,
    labels: &[String],
    seed: u64,
    device: &Device,
) -> Result<Model> {
    let source = Config::parse(source_config.to_string().as_bytes())?;
    let roberta = source.is_roberta();
    let kind = run::head_kind(task);
    let objective = match kind {
        Some(k) => Objective::Head(k),
        None => Objective::Parser(ParserConfig {
            word: "first".to_owned(),
            activation: "leaky_relu".to_owned(),
        }),
    };
    // Does the source's head fit? Its labels must be these labels, in order.
    let source_labels = source.labels();
    let has = |n: &str| manifest.tensor(n).is_some();
    let fits = match &objective {
        Objective::Head(HeadKind::MaskedLm) => {
            has("cls.predictions.transform.dense.weight") || has("lm_head.dense.weight")
        }
        Objective::Head(HeadKind::Token) => has("classifier.weight") && source_labels == labels,
        Objective::Head(HeadKind::Sequence) => {
            (has("classifier.weight") || has("classifier.out_proj.weight"))
                && source_labels == labels
        }
        Objective::Parser(_) => {
            has("parser.root")
                && source_labels == labels
                && ParserConfig::of(&source).ok().flatten().is_some()
        }
    };
    let tied = source_config["tie_word_embeddings"].as_bool() != Some(false);
    let mut tensors = Vec::new();
    for t in manifest.tensors.iter().filter(|t| t.dtype.is_float()) {
        let keep = is_encoder(&t.name)
            || (fits && is_head(&t.name, &objective, roberta))
            || (!roberta && kind == Some(HeadKind::Sequence) && is_pooler(&t.name));
        // A tied decoder is the word embeddings: transformers ties it on load.
        let tied_copy = tied && t.name.ends_with("decoder.weight");
        if !keep || tied_copy {
            continue;
        }
        let bytes = reg.read_tensor(manifest, &t.name)?;
        let dtype = match t.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::Bf16 => DType::BF16,
            _ => DType::F64,
        };
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let tensor = Tensor::from_raw_buffer(&bytes, dtype, &shape, device)
            .and_then(|x| x.to_dtype(DType::F32))
            .map_err(|e| {
                Error::invalid(format!("tensor `{}`: {e}", t.name), "check the checkpoint")
            })?;
        // The MLM decoder's bias under the name transformers saves it by.
        let name = match t.name.as_str() {
            "cls.predictions.decoder.bias" if !has("cls.predictions.bias") => {
                "cls.predictions.bias".to_owned()
            }
            "lm_head.decoder.bias" if !has("lm_head.bias") => "lm_head.bias".to_owned(),
            n if n.ends_with("decoder.bias") => continue,
            n => n.to_owned(),
        };
        tensors.push((name, tensor));
    }
    if !tensors.iter().any(|(n, _)| is_encoder(n)) {
        return Err(Error::invalid(
            format!("`{}` has no encoder tensors", row.reference()),
            "train from a BERT or XLM-R checkpoint (embeddings.* and encoder.layer.*)",
        ));
    }
    let mut config_json = match kind {
        Some(k) => config_for(source_config, k, labels),
        None => config_for(source_config, HeadKind::Token, labels),
    };
    config_json["torch_dtype"] = json!("float32");
    if !fits {
        let new = match kind {
            Some(k) => new_head(source_config, k, labels.len(), seed),
            None => new_parser(source_config, labels.len(), seed),
        };
        // A new BERT pooler is named as the encoder's tensors are (with or without `bert.`),
        // so transformers finds every tensor under one prefix.
        let prefixed = tensors.iter().any(|(n, _)| n.starts_with("bert."));
        let have_pooler = tensors.iter().any(|(n, _)| is_pooler(n));
        for h in new {
            let name = if h.name.starts_with("bert.pooler.") && !prefixed {
                h.name["bert.".len()..].to_owned()
            } else {
                h.name
            };
            if is_pooler(&name) && have_pooler {
                continue;
            }
            let t = Tensor::from_vec(h.values, h.shape, device)
                .map_err(|e| Error::invalid(format!("new head: {e}"), "report this"))?;
            tensors.push((name, t));
        }
    }
    if let Objective::Parser(pc) = &objective {
        config_json["crossmerge_parser"] = json!({"word": pc.word, "activation": pc.activation});
        config_json["architectures"] = json!([if roberta {
            "XLMRobertaModel"
        } else {
            "BertModel"
        }]);
    }
    let config = Config::parse(config_json.to_string().as_bytes())?;
    Ok(Model {
        tensors,
        config_json,
        config,
        objective,
        head_reused: fits,
    })
}

/// The run's state folder and its files.
struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    fn state(&self) -> PathBuf {
        self.dir.join("state.safetensors")
    }

    fn best(&self, step: u64) -> PathBuf {
        self.dir.join(format!("best-{step}.safetensors"))
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("creating", &self.dir, e))?;
        let tmp = self.dir.join(format!(".tmp.{}", std::process::id()));
        crate::store::atomic::write_file(path, &tmp, bytes)
            .map_err(|e| Error::io("writing", path, e))
    }

    /// Removes best-weight files other than `keep`'s.
    fn prune(&self, keep: Option<u64>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(s) = name.to_str() else { continue };
            let step = s
                .strip_prefix("best-")
                .and_then(|r| r.strip_suffix(".safetensors"))
                .and_then(|r| r.parse::<u64>().ok());
            if step.is_some() && step != keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The bookkeeping saved with the state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Log {
    losses: Vec<(u64, f64)>,
    dev: Vec<Value>,
    best: Option<(u64, f64)>,
    tokens: u64,
    seconds: f64,
    /// Of `seconds`, the time spent evaluating on the dev data.
    #[serde(default)]
    eval_seconds: f64,
}

/// Training through the registry.
pub trait Train {
    /// Trains from checkpoint `reference` as `plan` says and registers the result.
    fn train(
        &mut self,
        reference: &str,
        plan: &TrainPlan,
        resume: bool,
        progress: &dyn TrainProgress,
    ) -> Result<TrainReport>;
}

impl Train for Registry {
    #[allow(clippy::too_many_lines)] // the run, in order: load, train, keep, register
    fn train(
        &mut self,
        reference: &str,
        plan: &TrainPlan,
        resume: bool,
        progress: &dyn TrainProgress,
    ) -> Result<TrainReport> {
        let dev_device = device(&plan.device)?;
        crossmerge_nn::train::retain_freed_memory();
        let row = self.resolve(reference)?;
        let manifest = self.manifest(&row)?;
        let config_bytes = file_of(self, &manifest, &row, "config.json")?;
        let source_config: Value = serde_json::from_slice(&config_bytes).map_err(|e| {
            Error::invalid(
                format!("config.json: {e}"),
                "check the checkpoint's config.json",
            )
        })?;
        let source = Config::parse(&config_bytes)?;
        let tokenizer = align::load(&file_of(self, &manifest, &row, "tokenizer.json")?)?;
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > source.vocab_size {
            return Err(Error::invalid(
                format!(
                    "`{}`'s tokenizer has {vocab} pieces but its embeddings only {}",
                    row.reference(),
                    source.vocab_size
                ),
                "register the checkpoint with the tokenizer.json it was trained with",
            ));
        }
        let inputs = read_inputs(plan, &tokenizer)?;
        let model = build_model(
            self,
            &row,
            &manifest,
            &source_config,
            plan.task,
            &inputs.dataset.labels,
            plan.options.seed,
            &dev_device,
        )?;
        let masking = if plan.task == Task::Mlm {
            let mask_id = ["<mask>", "[MASK]"]
                .iter()
                .find_map(|t| tokenizer.token_to_id(t))
                .ok_or_else(|| {
                    Error::invalid(
                        "the tokenizer has no mask token",
                        "masked-LM training needs <mask> or [MASK] in tokenizer.json",
                    )
                })?;
            Some(Masking {
                whole_word: plan.whole_word,
                ..Masking::new(mask_id, vocab as u32)
            })
        } else {
            None
        };
        // The state folder's key: everything that decides the bits.
        let key_json = json!({
            "source": row.manifest_id.to_hex(),
            "data": inputs.hashes,
            "plan": plan,
            "head_reused": model.head_reused,
        });
        let key = blake3::hash(key_json.to_string().as_bytes()).to_hex()[..24].to_owned();
        let state = StateDir {
            dir: self.root().join("training").join(key),
        };
        let examples = inputs.dataset.examples.len();
        let labels = inputs.dataset.labels.clone();
        let truncated = inputs.dataset.truncated;
        let mut trainer = Trainer::new(
            model.tensors,
            model.config.clone(),
            model.objective.clone(),
            inputs.dataset,
            plan.options.clone(),
            masking,
            dev_device.clone(),
        )?;
        let total = trainer.total_steps();
        let mut log = Log::default();
        let mut best_weights: Option<Vec<Trained>> = None;
        if resume && state.state().exists() {
            let bytes =
                std::fs::read(state.state()).map_err(|e| Error::io("reading", state.state(), e))?;
            let extra = trainer.restore(&bytes)?;
            log = serde_json::from_value(extra).map_err(|e| {
                Error::invalid(
                    format!("the saved training log is damaged: {e}"),
                    "start the run again without --resume",
                )
            })?;
            if let Some((step, _)) = log.best {
                let path = state.best(step);
                let bytes = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
                best_weights = Some(state::decode_weights(&bytes)?.0);
            }
        } else if state.dir.exists() {
            // A fresh start: an earlier run's state of the same key is stale.
            let _ = std::fs::remove_dir_all(&state.dir);
        }
        let resumed_from = trainer.steps_done();
        let (metric, higher) = selection(plan.task);
        let eval_every = plan.eval_every.unwrap_or(trainer.steps_per_epoch());
        let prior_seconds = log.seconds;
        let run_started = Instant::now();
        progress.started(total, resumed_from);
        // When this run's first step ended: (instant, tokens, evaluation seconds) then.
        let mut first: Option<(Instant, u64, f64)> = None;
        while trainer.steps_done() < total {
            let step = trainer.step()?;
            log.losses.push((step.step, step.loss));
            log.tokens += step.tokens;
            progress.step(&step);
            let k = step.step;
            if first.is_none() {
                first = Some((Instant::now(), log.tokens, log.eval_seconds));
            }
            if let Some(dev) = &inputs.dev
                && (k % eval_every == 0 || k == total)
            {
                let eval_started = Instant::now();
                let metrics =
                    dev.evaluate(&trainer.model(tokenizer.clone())?, plan.options.seed)?;
                log.eval_seconds += eval_started.elapsed().as_secs_f64();
                let value = metrics.get(metric).copied().unwrap_or(f64::NAN);
                progress.evaluated(k, metric, value);
                log.dev.push(json!({"step": k, "metrics": metrics}));
                let better = log
                    .best
                    .is_none_or(|(_, b)| if higher { value > b } else { value < b });
                if better && value.is_finite() {
                    let weights = trainer.tensors()?;
                    if plan.save_every > 0 {
                        state.write(
                            &state.best(k),
                            &state::encode_weights(&weights, &json!({ "step": k })),
                        )?;
                    }
                    best_weights = Some(weights);
                    log.best = Some((k, value));
                }
            }
            if plan.save_every > 0 && (k % plan.save_every == 0) && k < total {
                log.seconds = prior_seconds + run_started.elapsed().as_secs_f64();
                let bytes = trainer.state(&serde_json::to_value(&log).expect("serialises"))?;
                state.write(&state.state(), &bytes)?;
                state.prune(log.best.map(|b| b.0));
            }
        }
        progress.finished();
        let seconds = prior_seconds + run_started.elapsed().as_secs_f64();
        let steady =
            first
                .filter(|(_, tokens, _)| log.tokens > *tokens)
                .map(|(at, tokens, eval)| {
                    let secs = at.elapsed().as_secs_f64() - (log.eval_seconds - eval);
                    (log.tokens - tokens) as f64 / secs.max(1e-9)
                });
        let (kept_step, kept, weights) = match (best_weights, log.best) {
            (Some(w), Some((step, _))) => (step, "best_dev", w),
            _ => (trainer.steps_done(), "last", trainer.tensors()?),
        };
        let dev_metrics = log
            .dev
            .iter()
            .find(|d| d["step"] == kept_step)
            .and_then(|d| serde_json::from_value(d["metrics"].clone()).ok());
        // Register: the weights, config.json rewritten, every other file of the source.
        let tensors: Vec<MemoryTensor> = weights
            .iter()
            .map(|(name, shape, values)| MemoryTensor {
                name: name.clone(),
                dtype: Dtype::F32,
                shape: shape.iter().map(|&d| d as u64).collect(),
                data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            })
            .collect();
        let mut files = vec![(
            "config.json".to_owned(),
            serde_json::to_vec_pretty(&model.config_json).expect("serialises"),
        )];
        for f in manifest.files.iter().filter(|f| f.path != "config.json") {
            files.push((
                f.path.clone(),
                self.read_object(&f.object(), Some(&f.path))?,
            ));
        }
        let base = match row.kind {
            CheckpointKind::Base => Some(row.reference()),
            _ => row.base.clone(),
        };
        let kind = if plan.task == Task::Mlm {
            CheckpointKind::Language
        } else {
            CheckpointKind::Task
        };
        let mut opts = RegisterOptions::new(plan.name.clone(), kind);
        opts.base.clone_from(&base);
        opts.language.clone_from(&plan.language);
        if plan.task != Task::Mlm {
            opts.task = Some(plan.task.name().to_owned());
        }
        let settings = json!({
            "options": plan.options,
            "data_range": plan.data_range,
            "dev_range": plan.dev_range,
            "max_length": plan.max_length,
            "whole_word": plan.whole_word,
            "eval_every": plan.eval_every,
            "save_every": plan.save_every,
            "labels": labels,
            "head_reused": model.head_reused,
            "threads": candle_core::utils::get_num_threads(),
        });
        let training = NewTraining {
            source: row.rowid,
            task: plan.task.name().to_owned(),
            language: plan.language.clone(),
            data: Value::Array(inputs.hashes.clone()),
            settings,
            seed: plan.options.seed,
            device: plan.device.clone(),
            duration_s: seconds,
            steps: trainer.steps_done(),
            kept_step,
            kept: kept.to_owned(),
            losses: serde_json::to_value(&log.losses).expect("serialises"),
            dev: Value::Array(log.dev.clone()),
        };
        let mut metadata = BTreeMap::new();
        metadata.insert("format".to_owned(), "pt".to_owned());
        let registered = self.register_trained(
            &tensors,
            &files,
            metadata,
            &opts,
            Some(training),
            &NoProgress,
        )?;
        let _ = std::fs::remove_dir_all(&state.dir);
        Ok(TrainReport {
            checkpoint: registered.checkpoint.reference(),
            manifest_id: registered.checkpoint.manifest_id.to_hex(),
            created: registered.created,
            kind,
            base,
            source: row.reference(),
            task: plan.task,
            steps: trainer.steps_done(),
            kept_step,
            kept: kept.to_owned(),
            final_loss: log.losses.last().map(|l| l.1),
            dev_metrics,
            examples,
            labels,
            truncated,
            resumed_from,
            duration_s: seconds,
            tokens_per_s: log.tokens as f64 / (seconds - log.eval_seconds).max(1e-9),
            steady_tokens_per_s: steady,
        })
    }
}
