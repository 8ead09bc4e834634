//! Evaluation through the registry: load a checkpoint's weights, config and tokenizer from
//! their objects (every byte verified), run a task over a dataset, store the row.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::catalog::{CheckpointRow, NewEvaluation};
use crate::checkpoint::Manifest;
use crate::error::{Error, Result};
use crate::eval::label_map::LabelMap;
use crate::eval::model::{Config, Encoder, Head, Weights};
use crate::eval::parser::Parser;
use crate::eval::run::{self, Model, Outcome, Scoring, Task};
use crate::eval::{align, conllu, ner, nli, text};
use crate::tensor::Dtype;
use crate::{Progress, Registry};

/// The shortest `max_length` accepted: room for the special tokens and a few subwords.
pub const MIN_MAX_LENGTH: usize = 8;

/// How to evaluate.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EvalOptions {
    pub task: Task,
    pub data: PathBuf,
    pub language: Option<String>,
    /// Default: `test`/`dev`/`train` when the file name says so.
    pub split: Option<String>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub batch_size: usize,
    pub max_length: usize,
    /// Seed of the MLM masking.
    pub seed: u64,
    /// MLM: pseudo-perplexity (every token masked in turn) instead of seeded masking.
    pub pseudo_perplexity: bool,
    /// Gold label → model label (`--label-map FILE`).
    pub label_map: Option<PathBuf>,
    /// NER: seqeval's default or strict IOB2 mode.
    pub ner_mode: crate::eval::metrics::NerMode,
    /// Only these sentences (texts, pairs) of the data file.
    pub range: Option<Range>,
    /// Return the stored result of the same evaluation (same id) instead of running it again.
    pub reuse: bool,
}

/// A half-open range of a data file's sentences (texts, pairs), 0-based: `START:END` as
/// Python slices it (`:500` is the first 500, `500:` the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Range {
    pub start: usize,
    pub end: Option<usize>,
}

impl Range {
    /// Parses `START:END` (either side may be empty), with or without surrounding brackets.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                format!("`{text}` is not a sentence range"),
                "write START:END with 0 <= START < END (e.g. 0:500, :500 or 500:), as a Python slice",
            )
        };
        let inner = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        let (a, b) = inner.split_once(':').ok_or_else(bad)?;
        let num = |s: &str| -> Result<Option<usize>> {
            let s = s.trim();
            if s.is_empty() {
                Ok(None)
            } else if s.bytes().all(|b| b.is_ascii_digit()) && s.len() <= 12 {
                s.parse().map(Some).map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        let (start, end) = (num(a)?.unwrap_or(0), num(b)?);
        if end.is_some_and(|e| e <= start) {
            return Err(bad());
        }
        Ok(Self { start, end })
    }

    /// The indices this range keeps of `len` examples; an error when it starts past their end.
    pub fn bounds(self, len: usize, path: &Path) -> Result<std::ops::Range<usize>> {
        if self.start >= len {
            return Err(Error::invalid(
                format!(
                    "the range {self} starts past the {len} examples of `{}`",
                    path.display()
                ),
                "give a range within the file (0-based, end excluded)",
            ));
        }
        Ok(self.start..self.end.unwrap_or(len).min(len))
    }

    /// `items`, or the part of them `range` keeps (read from `path`, for errors).
    pub fn keep<T>(range: Option<Self>, mut items: Vec<T>, path: &Path) -> Result<Vec<T>> {
        if let Some(r) = range {
            let b = r.bounds(items.len(), path)?;
            items.truncate(b.end);
            items.drain(..b.start);
        }
        Ok(items)
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.end {
            Some(e) => write!(f, "[{}:{e}]", self.start),
            None => write!(f, "[{}:]", self.start),
        }
    }
}

/// Key of evaluation ids (FORMAT.md §12).
pub const EVALUATION_CONTEXT: &str = "crossmerge 2026-11 evaluation v1";

impl EvalOptions {
    pub fn new(task: Task, data: impl Into<PathBuf>) -> Self {
        Self {
            task,
            data: data.into(),
            language: None,
            split: None,
            device: "cpu".to_owned(),
            batch_size: 32,
            max_length: 512,
            seed: 42,
            pseudo_perplexity: false,
            label_map: None,
            ner_mode: crate::eval::metrics::NerMode::Default,
            range: None,
            reuse: false,
        }
    }
}

/// What `eval` measured.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// The evaluation's id: the same for every run of the same evaluation.
    pub id: String,
    /// True when the result was the stored one of an earlier run (`reuse`).
    pub reused: bool,
    pub checkpoint: String,
    pub task: Task,
    pub language: Option<String>,
    pub split: Option<String>,
    pub dataset_hash: String,
    pub device: String,
    pub duration_s: f64,
    /// The options that changed the numbers (stored with the row).
    pub settings: serde_json::Value,
    #[serde(flatten)]
    pub outcome: Outcome,
}

pub(crate) fn device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n: usize = s
                .strip_prefix("cuda:")
                .map_or(Ok(0), str::parse)
                .map_err(|_| {
                    Error::invalid(format!("`{s}` is not a device"), "use cpu, cuda or cuda:N")
                })?;
            if cfg!(feature = "cuda") {
                Device::new_cuda(n).map_err(|e| {
                    Error::invalid(
                        format!("CUDA device {n}: {e}"),
                        "check the GPU and its driver (nvidia-smi)",
                    )
                })
            } else {
                Err(Error::invalid(
                    "this crossmerge was built without CUDA",
                    "build with `cargo build --release --features cuda` (see README) or use --device cpu",
                ))
            }
        }
        other => Err(Error::invalid(
            format!("`{other}` is not a device"),
            "use cpu, cuda or cuda:N",
        )),
    }
}

/// What to do about a missing head, per task.
fn head_hint(task: Task) -> &'static str {
    match task {
        Task::Mlm => {
            "evaluate a masked-LM checkpoint (BertForMaskedLM's `cls.predictions.*` or XLMRobertaForMaskedLM's `lm_head.*`, as transformers saves them)"
        }
        Task::Pos | Task::Ner => {
            "evaluate a token-classification checkpoint (`classifier.*`, as transformers' *ForTokenClassification saves it)"
        }
        Task::Nli => {
            "evaluate a sequence-classification checkpoint (`classifier.*` and BERT's `bert.pooler.dense.*`, as transformers' *ForSequenceClassification saves it)"
        }
        Task::Dp => {
            "evaluate a checkpoint with the biaffine parser head of schemas/parser.md (`parser.*` tensors and `crossmerge_parser` in config.json)"
        }
    }
}

/// A label compared whole (relations are compared by [`conllu::universal`]).
fn whole(l: &str) -> &str {
    l
}

pub(crate) fn split_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    ["test", "dev", "train", "validation"]
        .into_iter()
        .find(|s| {
            name.contains(&format!("-{s}"))
                || name.contains(&format!("_{s}"))
                || name.contains(&format!(".{s}"))
        })
        .map(str::to_owned)
}

pub(crate) fn file_of(
    reg: &Registry,
    manifest: &Manifest,
    row: &CheckpointRow,
    name: &str,
) -> Result<Vec<u8>> {
    let f = manifest
        .files
        .iter()
        .find(|f| f.path == name)
        .ok_or_else(|| {
            Error::invalid(
                format!("`{}` has no {name}", row.reference()),
                "register the model folder with its config.json and tokenizer.json",
            )
        })?;
    reg.read_object(&f.object(), Some(name))
}

/// What an evaluation is, before it runs: its checkpoint, data hash, settings and id.
struct Prepared {
    row: CheckpointRow,
    dataset_hash: String,
    label_map: LabelMap,
    scoring: Scoring,
    split: Option<String>,
    settings: serde_json::Value,
    id: String,
}

/// Checks the options, hashes the data and computes the evaluation's id; reads no weight.
fn prepare(reg: &Registry, reference: &str, opts: &EvalOptions) -> Result<Prepared> {
    if opts.max_length < MIN_MAX_LENGTH {
        return Err(Error::invalid(
            format!(
                "--max-length {} is below {MIN_MAX_LENGTH}, the shortest sequence crossmerge evaluates",
                opts.max_length
            ),
            "give --max-length between 8 and the model's max_position_embeddings (default 512)",
        ));
    }
    let row = reg.resolve(reference)?;
    let bytes = crate::eval::read_data(&opts.data)?;
    let dataset_hash = blake3::hash(&bytes).to_hex().to_string();
    let label_map = opts
        .label_map
        .as_deref()
        .map(LabelMap::read)
        .transpose()?
        .unwrap_or_default();
    if !label_map.is_empty() && opts.task == Task::Mlm {
        return Err(Error::invalid(
            "--label-map has no labels to map in a masked-LM evaluation",
            "give --label-map with pos, ner, nli or dp",
        ));
    }
    if opts.pseudo_perplexity && opts.task != Task::Mlm {
        return Err(Error::invalid(
            "--pseudo-perplexity scores masked-LM text",
            "use it with --task mlm",
        ));
    }
    let scoring = if opts.pseudo_perplexity {
        Scoring::Pseudo
    } else {
        Scoring::Masked { seed: opts.seed }
    };
    let split = opts.split.clone().or_else(|| split_of(&opts.data));
    let mut settings = serde_json::json!({ "max_length": opts.max_length });
    if !label_map.is_empty() {
        settings["label_map"] = serde_json::to_value(&label_map).expect("strings serialise");
    }
    if opts.task == Task::Mlm {
        settings["scoring"] = serde_json::to_value(scoring).expect("serialises");
    }
    if opts.task == Task::Ner {
        settings["ner_mode"] = opts.ner_mode.name().into();
    }
    if let Some(r) = opts.range {
        settings["range"] = serde_json::json!([r.start, r.end]);
    }
    let id = evaluation_id(
        &row,
        opts.task,
        opts.language.as_deref(),
        &dataset_hash,
        split.as_deref(),
        &settings,
        &opts.device,
    );
    Ok(Prepared {
        row,
        dataset_hash,
        label_map,
        scoring,
        split,
        settings,
        id,
    })
}

/// The id of an evaluation: what decides its numbers, canonically (FORMAT.md §12).
fn evaluation_id(
    row: &CheckpointRow,
    task: Task,
    language: Option<&str>,
    dataset_hash: &str,
    split: Option<&str>,
    settings: &serde_json::Value,
    device: &str,
) -> String {
    let kind = if device.starts_with("cuda") {
        "cuda"
    } else {
        "cpu"
    };
    // serde_json's map is ordered by key: sorted keys, no spaces.
    let canonical = serde_json::json!({
        "format": "crossmerge.evaluation.v1",
        "manifest": row.manifest_id.to_hex(),
        "task": task.name(),
        "language": language,
        "dataset": dataset_hash,
        "split": split,
        "settings": settings,
        "device": kind,
    })
    .to_string();
    crate::ObjectId::from_bytes(blake3::derive_key(EVALUATION_CONTEXT, canonical.as_bytes()))
        .to_hex()
}

/// Evaluation of registry checkpoints: the glue between `crossmerge-core`'s registry and
/// `crossmerge-nn`'s models (neither depends on the other).
pub trait Evaluate {
    /// Loads a checkpoint as a model with the head `task` needs.
    fn load_model(&self, row: &CheckpointRow, task: Task, device_spec: &str) -> Result<Model>;

    /// The id `evaluate` would give this evaluation (it reads the data, not the weights).
    fn evaluation_id(&self, reference: &str, opts: &EvalOptions) -> Result<String>;

    /// Evaluates checkpoint `reference` and stores the row.
    fn evaluate(
        &mut self,
        reference: &str,
        opts: &EvalOptions,
        progress: &dyn Progress,
    ) -> Result<EvalReport>;
}

impl Evaluate for Registry {
    fn load_model(&self, row: &CheckpointRow, task: Task, device_spec: &str) -> Result<Model> {
        let device = device(device_spec)?;
        let manifest = self.manifest(row)?;
        let config = Config::parse(&file_of(self, &manifest, row, "config.json")?)?;
        // The head, from the manifest's names, before a weight is read.
        let head_tensors: &[&[&str]] = match task {
            Task::Mlm => &[&[
                "cls.predictions.transform.dense.weight",
                "lm_head.dense.weight",
            ]],
            Task::Pos | Task::Ner => &[&["classifier.weight"]],
            Task::Nli => &[&["classifier.weight", "classifier.out_proj.weight"]],
            Task::Dp => &[&["parser.root"], &["parser.rel_attn.weight"]],
        };
        for any_of in head_tensors {
            let found = any_of.iter().any(|n| {
                manifest.tensor(n).is_some()
                    || ["bert.", "roberta."]
                        .iter()
                        .any(|p| manifest.tensor(&format!("{p}{n}")).is_some())
            });
            if !found {
                return Err(Error::invalid(
                    format!(
                        "`{}` has no {} head (no tensor `{}`)",
                        row.reference(),
                        task.name(),
                        any_of.join("` or `")
                    ),
                    head_hint(task),
                ));
            }
        }
        let labels = if task == Task::Mlm {
            Vec::new()
        } else {
            config.checked_labels()?
        };
        let parser_config = if task == Task::Dp {
            Some(
                crate::eval::parser::ParserConfig::of(&config)?.ok_or_else(|| {
                    Error::invalid(
                        format!(
                            "`{}` has no dp head: config.json has no `crossmerge_parser`",
                            row.reference()
                        ),
                        head_hint(task),
                    )
                })?,
            )
        } else {
            None
        };
        let tokenizer = align::load(&file_of(self, &manifest, row, "tokenizer.json")?)?;
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > config.vocab_size {
            return Err(Error::invalid(
                format!(
                    "the tokenizer's vocabulary ({vocab}) does not fit the model's embeddings ({})",
                    config.vocab_size
                ),
                "register the checkpoint with the tokenizer.json it was trained with",
            ));
        }
        let mut map = HashMap::new();
        for t in manifest.tensors.iter().filter(|t| t.dtype.is_float()) {
            let bytes = self.read_tensor(&manifest, &t.name)?;
            let dtype = match t.dtype {
                Dtype::F32 => DType::F32,
                Dtype::F16 => DType::F16,
                Dtype::Bf16 => DType::BF16,
                Dtype::F64 => DType::F64,
                _ => continue,
            };
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            let tensor = Tensor::from_raw_buffer(&bytes, dtype, &shape, &device)
                .and_then(|x| x.to_dtype(DType::F32))
                .map_err(|e| {
                    Error::invalid(format!("tensor `{}`: {e}", t.name), "check the checkpoint")
                })?;
            map.insert(t.name.clone(), tensor);
        }
        let weights = Weights::new(map, &config);
        let encoder = Encoder::load(&weights, &config)?;
        let no_head = |e: Error| match e {
            Error::Invalid { message, .. } => Error::invalid(
                format!(
                    "`{}` has no {} head: {message}",
                    row.reference(),
                    task.name()
                ),
                head_hint(task),
            ),
            other => other,
        };
        let (head, parser) = if let Some(kind) = run::head_kind(task) {
            (
                Some(Head::load(&weights, &encoder, kind).map_err(no_head)?),
                None,
            )
        } else {
            let pc = parser_config.expect("read above for dp");
            (None, Some(Parser::load(&weights, pc).map_err(no_head)?))
        };
        // The head must score exactly the labels config.json names.
        let outputs = head
            .as_ref()
            .and_then(Head::outputs)
            .or_else(|| parser.as_ref().and_then(Parser::relations));
        if let Some(n) = outputs
            && n != labels.len()
        {
            return Err(Error::invalid(
                format!(
                    "`{}`'s {} head has {n} outputs but config.json's id2label names {} labels",
                    row.reference(),
                    task.name(),
                    labels.len()
                ),
                "id2label must name each output of the head once; fix config.json (or the head)",
            ));
        }
        Ok(Model {
            config,
            encoder,
            head,
            parser,
            tokenizer,
            device,
        })
    }

    fn evaluation_id(&self, reference: &str, opts: &EvalOptions) -> Result<String> {
        Ok(prepare(self, reference, opts)?.id)
    }

    fn evaluate(
        &mut self,
        reference: &str,
        opts: &EvalOptions,
        progress: &dyn Progress,
    ) -> Result<EvalReport> {
        let Prepared {
            row,
            dataset_hash,
            label_map,
            scoring,
            split,
            settings,
            id,
        } = prepare(self, reference, opts)?;
        let m = opts.max_length;
        if opts.reuse
            && let Some((e, _)) = self.catalog().evaluation_by_id(&id)?
        {
            return Ok(EvalReport {
                id,
                reused: true,
                checkpoint: row.reference(),
                task: opts.task,
                language: e.language,
                split: e.split,
                dataset_hash,
                device: e.device,
                duration_s: e.duration_s,
                settings: e.settings,
                outcome: Outcome {
                    metrics: e.metrics,
                    examples: e.examples,
                    truncated_words: e.truncated,
                    unaligned_words: 0,
                },
            });
        }
        let model = self.load_model(&row, opts.task, &opts.device)?;
        if !label_map.is_empty() {
            let labels = model.config.labels();
            let key: fn(&str) -> &str = if opts.task == Task::Dp {
                conllu::universal
            } else {
                whole
            };
            label_map.check_targets(labels.iter().map(String::as_str), key)?;
        }
        let started = Instant::now();
        let advance = |n: u64| progress.advance(n);
        let b = opts.batch_size.max(1);
        let outcome = match opts.task {
            Task::Pos => {
                let mut data = Range::keep(opts.range, conllu::read(&opts.data)?, &opts.data)?;
                for w in data.iter_mut().flat_map(|s| s.words.iter_mut()) {
                    w.upos = label_map.apply(&w.upos);
                }
                progress.start("evaluating", data.len() as u64);
                run::pos(&model, &data, b, m, &advance)?
            }
            Task::Ner => {
                let mut data = Range::keep(opts.range, ner::read(&opts.data)?, &opts.data)?;
                for t in data.iter_mut().flat_map(|s| s.tags.iter_mut()) {
                    *t = label_map.apply(t);
                }
                progress.start("evaluating", data.len() as u64);
                run::ner(&model, &data, opts.ner_mode, b, m, &advance)?
            }
            Task::Nli => {
                let mut data = Range::keep(opts.range, nli::read(&opts.data)?, &opts.data)?;
                for e in &mut data {
                    e.label = label_map.apply(&e.label);
                }
                progress.start("evaluating", data.len() as u64);
                run::nli(&model, &data, b, m, &advance)?
            }
            Task::Dp => {
                let mut data = Range::keep(opts.range, conllu::read(&opts.data)?, &opts.data)?;
                for w in data.iter_mut().flat_map(|s| s.words.iter_mut()) {
                    w.deprel = label_map.apply_relation(&w.deprel);
                }
                progress.start("evaluating", data.len() as u64);
                run::dp(&model, &data, b, m, &advance)?
            }
            Task::Mlm => {
                let data = Range::keep(opts.range, text::read(&opts.data)?, &opts.data)?;
                progress.start("evaluating", data.len() as u64);
                run::mlm(&model, &data, scoring, b, m, &advance)?
            }
        };
        progress.finish();
        let duration_s = started.elapsed().as_secs_f64();
        let path = std::fs::canonicalize(&opts.data).unwrap_or_else(|_| opts.data.clone());
        self.record_evaluation(&NewEvaluation {
            key: id.clone(),
            checkpoint: row.rowid,
            task: opts.task.name().to_owned(),
            language: opts.language.clone(),
            dataset_hash: dataset_hash.clone(),
            dataset_path: path.display().to_string(),
            split: split.clone(),
            metrics: outcome.metrics.clone(),
            examples: outcome.examples,
            truncated: outcome.truncated_words,
            device: opts.device.clone(),
            duration_s,
            settings: settings.clone(),
        })?;
        Ok(EvalReport {
            id,
            reused: false,
            checkpoint: row.reference(),
            task: opts.task,
            language: opts.language.clone(),
            split,
            dataset_hash,
            device: opts.device.clone(),
            duration_s,
            settings,
            outcome,
        })
    }
}
