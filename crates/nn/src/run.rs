//! Running a task over a dataset with a loaded model: batching by length, first-subword
//! predictions, metrics. The registry facade loads the model and stores the result.

use std::collections::BTreeMap;

use candle_core::{D, Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;
use tokenizers::Tokenizer;

use super::align::{Aligned, align};
use super::model::{Config, Encoder, Head};
use super::{conllu, metrics, ner, nli};
use crate::error::{Error, Result};
use crate::rng::{mix, unit};

/// The tasks `crossmerge eval` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Pos,
    Ner,
    Nli,
    Mlm,
    Dp,
}

impl Task {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pos" => Some(Task::Pos),
            "ner" => Some(Task::Ner),
            "nli" => Some(Task::Nli),
            "mlm" => Some(Task::Mlm),
            "dp" => Some(Task::Dp),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Task::Pos => "pos",
            Task::Ner => "ner",
            Task::Nli => "nli",
            Task::Mlm => "mlm",
            Task::Dp => "dp",
        }
    }
}

/// A loaded model.
pub struct Model {
    pub config: Config,
    pub encoder: Encoder,
    /// The task head (POS, NER, NLI, MLM).
    pub head: Option<Head>,
    /// The dependency parser head (DP).
    pub parser: Option<super::parser::Parser>,
    pub tokenizer: Tokenizer,
    pub device: Device,
}

/// What an evaluation measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    pub metrics: BTreeMap<String, f64>,
    /// Sentences, texts or pairs evaluated.
    pub examples: u64,
    /// Words (or tokens) whose first subword fell past `max_length`: scored as wrong.
    pub truncated_words: u64,
    /// Words the tokenizer gave no subword (empty or whitespace-only forms): scored like
    /// truncated words, counted apart.
    #[serde(default)]
    pub unaligned_words: u64,
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(candle)`
fn candle(e: candle_core::Error) -> Error {
    Error::invalid(
        format!("model computation: {e}"),
        "report this with the checkpoint's config.json",
    )
}

impl Model {
    fn pad_id(&self) -> u32 {
        self.config.pad_token_id.unwrap_or(0)
    }

    /// Runs the encoder and head on sequences of ids (padded here), returning logits.
    fn logits(&self, batch: &[&[u32]]) -> Result<Tensor> {
        let hidden = self.hidden(batch)?;
        self.head
            .as_ref()
            .expect("a task head is loaded")
            .forward(&hidden)
    }

    /// Log-probability of each target `(position, id)` of each sequence under the masked-LM
    /// head, in order. The head runs on the target positions only (the vocabulary projection
    /// of every position would be b·t·V floats).
    fn log_probs(&self, batch: &[&[u32]], targets: &[&[(usize, u32)]]) -> Result<Vec<f64>> {
        let hidden = self.hidden(batch)?;
        let (_, t, h) = hidden.dims3().map_err(candle)?;
        let rows: Vec<u32> = targets
            .iter()
            .enumerate()
            .flat_map(|(s, ts)| ts.iter().map(move |&(p, _)| (s * t + p) as u32))
            .collect();
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<u32> = targets
            .iter()
            .flat_map(|ts| ts.iter().map(|&(_, id)| id))
            .collect();
        let m = rows.len();
        let rows = Tensor::from_vec(rows, m, &self.device).map_err(candle)?;
        let picked = hidden
            .reshape((batch.len() * t, h))
            .and_then(|x| x.index_select(&rows, 0))
            .and_then(|x| x.unsqueeze(0))
            .map_err(candle)?;
        let logits = self
            .head
            .as_ref()
            .expect("a task head is loaded")
            .forward(&picked)?;
        let ids = Tensor::from_vec(ids, (m, 1), &self.device).map_err(candle)?;
        let f = || -> candle_core::Result<Vec<f32>> {
            let logits = logits.squeeze(0)?;
            let max = logits.max_keepdim(D::Minus1)?;
            let shifted = logits.broadcast_sub(&max)?;
            let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
            shifted
                .gather(&ids, 1)?
                .broadcast_sub(&lse)?
                .squeeze(1)?
                .to_vec1()
        };
        Ok(f().map_err(candle)?.into_iter().map(f64::from).collect())
    }

    fn hidden(&self, batch: &[&[u32]]) -> Result<Tensor> {
        let t = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        let pad = self.pad_id();
        let ids: Vec<Vec<u32>> = batch
            .iter()
            .map(|s| {
                let mut v = s.to_vec();
                v.resize(t, pad);
                v
            })
            .collect();
        let mask: Vec<Vec<u32>> = batch
            .iter()
            .map(|s| (0..t).map(|i| u32::from(i < s.len())).collect())
            .collect();
        self.encoder.forward(&ids, &mask, &self.device)
    }
}

/// Gold labels must all be in the model's label map: an unseen label is an error naming it.
fn label_index(
    config: &Config,
    task: Task,
    gold: impl Iterator<Item = String>,
) -> Result<(Vec<String>, BTreeMap<String, usize>)> {
    let labels = config.labels();
    if labels.is_empty() {
        return Err(Error::invalid(
            "the checkpoint's config.json has no id2label",
            "evaluate a checkpoint whose head was trained (or added) for this label set",
        ));
    }
    let index: BTreeMap<String, usize> = labels
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, l)| (l, i))
        .collect();
    let mut unseen: Vec<String> = gold.filter(|g| !index.contains_key(g)).collect();
    unseen.sort();
    unseen.dedup();
    if !unseen.is_empty() {
        return Err(Error::invalid(
            format!(
                "gold label(s) {} are not in the model's label map ({} labels)",
                unseen.join(", "),
                labels.len()
            ),
            match task {
                Task::Ner => {
                    "map them onto the model's entity tags with --label-map FILE, or evaluate a head trained on these tags; tags are never mapped to O silently"
                }
                Task::Pos => {
                    "map them onto the model's UPOS tags with --label-map FILE, or evaluate a tagger trained on this tag set"
                }
                _ => {
                    "map them onto the model's labels with --label-map FILE, or evaluate a head trained on this label set"
                }
            },
        ));
    }
    Ok((labels, index))
}

/// Batches of indexes into `lengths`, sorted by length (longest first) to waste little padding.
fn batches(lengths: &[usize], size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    order.chunks(size.max(1)).map(<[usize]>::to_vec).collect()
}

/// Per sentence, per word, the predicted label index (`None` where the word has no subword in
/// the sequence); then the words cut by truncation and the words with no subword at all.
type Tagged = (Vec<Vec<Option<usize>>>, u64, u64);

/// Predicted label per word (first subword's argmax), `None` for truncated words.
fn tag_words(
    model: &Model,
    sentences: &[Vec<String>],
    batch_size: usize,
    max_length: usize,
    progress: &dyn Fn(u64),
) -> Result<Tagged> {
    // Tokenizing is independent per sentence: spread over the cores.
    let aligned: Vec<Aligned> = sentences
        .par_iter()
        .map(|s| align(&model.tokenizer, s, max_length))
        .collect::<Result<_>>()?;
    let truncated = aligned.iter().map(|a| a.truncated_words() as u64).sum();
    let unaligned = aligned.iter().map(|a| a.unaligned as u64).sum();
    let mut out: Vec<Vec<Option<usize>>> = vec![Vec::new(); sentences.len()];
    let lengths: Vec<usize> = aligned.iter().map(|a| a.ids.len()).collect();
    for batch in batches(&lengths, batch_size) {
        let seqs: Vec<&[u32]> = batch.iter().map(|&i| aligned[i].ids.as_slice()).collect();
        let logits = model.logits(&seqs)?;
        let best: Vec<Vec<u32>> = logits
            .argmax(D::Minus1)
            .and_then(|t| t.to_vec2())
            .map_err(candle)?;
        for (row, &i) in best.iter().zip(&batch) {
            out[i] = aligned[i]
                .first
                .iter()
                .map(|f| f.map(|p| row[p] as usize))
                .collect();
        }
        progress(batch.len() as u64);
    }
    Ok((out, truncated, unaligned))
}

/// UPOS tagging on a CoNLL-U file: UPOS accuracy over words (truncated words count as wrong).
pub fn pos(
    model: &Model,
    data: &[conllu::Sentence],
    batch_size: usize,
    max_length: usize,
    progress: &dyn Fn(u64),
) -> Result<Outcome> {
    let (labels, _) = label_index(
        &model.config,
        Task::Pos,
        data.iter()
            .flat_map(|s| s.words.iter().map(|w| w.upos.clone())),
    )?;
    let words: Vec<Vec<String>> = data
        .iter()
        .map(|s| s.words.iter().map(|w| w.form.clone()).collect())
        .collect();
    let (pred, truncated, unaligned) = tag_words(model, &words, batch_size, max_length, progress)?;
    let (mut ok, mut n) = (0u64, 0u64);
    for (s, p) in data.iter().zip(&pred) {
        for (w, l) in s.words.iter().zip(p) {
            n += 1;
            ok += u64::from(l.is_some_and(|l| labels[l] == w.upos));
        }
    }
    let mut metrics = BTreeMap::new();
    if let Some(a) = metrics::accuracy(ok, n) {
        metrics.insert("upos_accuracy".to_owned(), a);
    }
    Ok(Outcome {
        metrics,
        examples: data.len() as u64,
        truncated_words: truncated,
        unaligned_words: unaligned,
    })
}

/// NER on an IOB2 file: entity-level precision/recall/F1 (seqeval default mode) and the
/// first-subword token accuracy; a truncated token is predicted `O`.
pub fn ner(
    model: &Model,
    data: &[ner::NerSentence],
    mode: metrics::NerMode,
    batch_size: usize,
    max_length: usize,
    progress: &dyn Fn(u64),
) -> Result<Outcome> {
    let (labels, _) = label_index(
        &model.config,
        Task::Ner,
        data.iter().flat_map(|s| s.tags.iter().cloned()),
    )?;
    let words: Vec<Vec<String>> = data.iter().map(|s| s.tokens.clone()).collect();
    let (pred, truncated, unaligned) = tag_words(model, &words, batch_size, max_length, progress)?;
    let pred_tags: Vec<Vec<String>> = pred
        .iter()
        .map(|p| {
            p.iter()
                .map(|l| l.map_or_else(|| "O".to_owned(), |l| labels[l].clone()))
                .collect()
        })
        .collect();
    let gold: Vec<Vec<String>> = data.iter().map(|s| s.tags.clone()).collect();
    let scores = metrics::entity_scores_in(mode, &gold, &pred_tags).map_err(|why| {
        Error::invalid(
            format!("strict NER scoring: {why}"),
            "--ner-mode strict reads IOB2 tags only; use --ner-mode default (conlleval's rules) for other schemes",
        )
    })?;
    let (mut ok, mut n) = (0u64, 0u64);
    for (g, p) in gold.iter().zip(&pred_tags) {
        for (a, b) in g.iter().zip(p) {
            n += 1;
            ok += u64::from(a == b);
        }
    }
    let mut metrics = BTreeMap::from([
        ("entity_precision".to_owned(), scores.micro.precision),
        ("entity_recall".to_owned(), scores.micro.recall),
        ("entity_f1".to_owned(), scores.micro.f1),
    ]);
    if let Some(a) = metrics::accuracy(ok, n) {
        metrics.insert("token_accuracy".to_owned(), a);
    }
    Ok(Outcome {
        metrics,
        examples: data.len() as u64,
        truncated_words: truncated,
        unaligned_words: unaligned,
    })
}

/// NLI: accuracy over premise/hypothesis pairs.
pub fn nli(
    model: &Model,
    data: &[nli::Example],
    batch_size: usize,
    max_length: usize,
    progress: &dyn Fn(u64),
) -> Result<Outcome> {
    let (_, index) = label_index(
        &model.config,
        Task::Nli,
        data.iter().map(|e| e.label.clone()),
    )?;
    let mut truncated = 0u64;
    let mut ids = Vec::with_capacity(data.len());
    for e in data {
        let enc = model
            .tokenizer
            .encode((e.premise.as_str(), e.hypothesis.as_str()), true)
            .map_err(|err| {
                Error::invalid(format!("tokenizing: {err}"), "check the tokenizer.json")
            })?;
        let mut v = enc.get_ids().to_vec();
        if v.len() > max_length && max_length >= 2 {
            truncated += 1;
            let last = *v.last().expect("non-empty");
            v.truncate(max_length - 1);
            v.push(last);
        }
        ids.push(v);
    }
    let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
    let mut ok = 0u64;
    for batch in batches(&lengths, batch_size) {
        let seqs: Vec<&[u32]> = batch.iter().map(|&i| ids[i].as_slice()).collect();
        let best: Vec<u32> = model
            .logits(&seqs)?
            .argmax(D::Minus1)
            .and_then(|t| t.to_vec1())
            .map_err(candle)?;
        for (b, &i) in best.iter().zip(&batch) {
            ok += u64::from(index[&data[i].label] == *b as usize);
        }
        progress(batch.len() as u64);
    }
    let mut metrics = BTreeMap::new();
    if let Some(a) = metrics::accuracy(ok, data.len() as u64) {
        metrics.insert("accuracy".to_owned(), a);
    }
    Ok(Outcome {
        metrics,
        examples: data.len() as u64,
        truncated_words: truncated,
        unaligned_words: 0,
    })
}

/// How `mlm` scores a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scoring {
    /// Seeded 15% masking, one forward pass per text: `perplexity`.
    Masked { seed: u64 },
    /// Every token masked in turn (Salazar et al. 2020), one pass per token:
    /// `pseudo_perplexity`.
    Pseudo,
}

/// A text's ids (cut to `max_length`, its last special token kept) and its maskable (non-
/// special) positions.
struct MlmText {
    /// Index among all texts (skipped ones included): the masking's seed input.
    index: u64,
    ids: Vec<u32>,
    maskable: Vec<usize>,
}

/// Masked-LM scoring of texts, never NaN.
///
/// - [`Scoring::Masked`]: in every text each non-special token is masked with probability 0.15
///   (seeded; at least one per text that has a maskable token) and replaced by the mask token;
///   perplexity = exp(mean negative log-likelihood of the original tokens at the masked
///   positions).
/// - [`Scoring::Pseudo`]: pseudo-perplexity (Salazar, Liang, Nguyen & Kirchhoff 2020, "Masked
///   language model scoring", ACL): each non-special token is masked alone and scored given
///   all the others; PPPL = exp(−Σ PLL / N) over the N scored tokens of the corpus.
///
/// Texts with no maskable token are skipped and counted.
pub fn mlm(
    model: &Model,
    texts: &[String],
    scoring: Scoring,
    batch_size: usize,
    max_length: usize,
    progress: &dyn Fn(u64),
) -> Result<Outcome> {
    let mask_id = ["<mask>", "[MASK]"]
        .iter()
        .find_map(|t| model.tokenizer.token_to_id(t))
        .ok_or_else(|| {
            Error::invalid(
                "the tokenizer has no mask token",
                "use the checkpoint's MLM tokenizer.json",
            )
        })?;
    let mut inputs: Vec<MlmText> = Vec::new();
    let (mut truncated, mut skipped) = (0u64, 0u64);
    for (index, text) in texts.iter().enumerate() {
        let enc = model
            .tokenizer
            .encode(text.as_str(), true)
            .map_err(|e| Error::invalid(format!("tokenizing: {e}"), "check the tokenizer.json"))?;
        let mut ids = enc.get_ids().to_vec();
        let mut special = enc.get_special_tokens_mask().to_vec();
        if ids.len() > max_length && max_length >= 2 {
            truncated += 1;
            let (last, last_special) = (
                *ids.last().expect("non-empty"),
                *special.last().expect("non-empty"),
            );
            ids.truncate(max_length - 1);
            special.truncate(max_length - 1);
            ids.push(last);
            special.push(last_special);
        }
        let maskable: Vec<usize> = (0..ids.len()).filter(|&i| special[i] == 0).collect();
        if maskable.is_empty() {
            skipped += 1;
        } else {
            inputs.push(MlmText {
                index: index as u64,
                ids,
                maskable,
            });
        }
    }
    // The scored items: (text, masked positions).
    let items: Vec<(usize, Vec<usize>)> = match scoring {
        Scoring::Masked { seed } => inputs
            .iter()
            .enumerate()
            .map(|(k, t)| {
                let mut chosen: Vec<usize> = t
                    .maskable
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let r = mix(seed
                            ^ mix(t.index)
                            ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
                        unit(r) < 0.15
                    })
                    .collect();
                if chosen.is_empty() {
                    let n = t.maskable.len() as u64;
                    chosen.push(t.maskable[(mix(seed ^ mix(t.index)) % n) as usize]);
                }
                (k, chosen)
            })
            .collect(),
        Scoring::Pseudo => inputs
            .iter()
            .enumerate()
            .flat_map(|(k, t)| t.maskable.iter().map(move |&p| (k, vec![p])))
            .collect(),
    };
    let lengths: Vec<usize> = items.iter().map(|(k, _)| inputs[*k].ids.len()).collect();
    let (mut nll, mut count) = (0f64, 0u64);
    let mut done = vec![0usize; inputs.len()];
    for batch in batches(&lengths, batch_size) {
        let mut seqs: Vec<Vec<u32>> = Vec::with_capacity(batch.len());
        let mut targets: Vec<Vec<(usize, u32)>> = Vec::with_capacity(batch.len());
        for &i in &batch {
            let (k, positions) = &items[i];
            let mut ids = inputs[*k].ids.clone();
            targets.push(positions.iter().map(|&p| (p, ids[p])).collect());
            for &p in positions {
                ids[p] = mask_id;
            }
            seqs.push(ids);
        }
        let seq_refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let target_refs: Vec<&[(usize, u32)]> = targets.iter().map(Vec::as_slice).collect();
        for lp in model.log_probs(&seq_refs, &target_refs)? {
            nll -= lp;
            count += 1;
        }
        // Progress counts texts: a text is done when its last item is.
        let mut finished = 0;
        for &i in &batch {
            let k = items[i].0;
            done[k] += 1;
            let needed = match scoring {
                Scoring::Masked { .. } => 1,
                Scoring::Pseudo => inputs[k].maskable.len(),
            };
            finished += u64::from(done[k] == needed);
        }
        progress(finished);
    }
    let mut metrics = BTreeMap::new();
    if count > 0 {
        let (name, tokens) = match scoring {
            Scoring::Masked { .. } => ("perplexity", "masked_tokens"),
            Scoring::Pseudo => ("pseudo_perplexity", "scored_tokens"),
        };
        metrics.insert(name.to_owned(), (nll / count as f64).exp());
        metrics.insert(tokens.to_owned(), count as f64);
    }
    metrics.insert("texts_without_maskable_tokens".to_owned(), skipped as f64);
    Ok(Outcome {
        metrics,
        examples: inputs.len() as u64,
        truncated_words: truncated,
        unaligned_words: 0,
    })
}

/// The head each task needs (`None`: the dependency parser).
pub fn head_kind(task: Task) -> Option<super::model::HeadKind> {
    match task {
        Task::Pos | Task::Ner => Some(super::model::HeadKind::Token),
        Task::Nli => Some(super::model::HeadKind::Sequence),
        Task::Mlm => Some(super::model::HeadKind::MaskedLm),
        Task::Dp => None,
    }
}

/// Whether a sentence's gold heads form a tree: every head in 0..=n, exactly one word on the
/// root (head 0), and every word reaches the root (no cycle).
fn check_tree(s: &conllu::Sentence) -> std::result::Result<(), String> {
    let n = s.words.len();
    let roots = s.words.iter().filter(|w| w.head == 0).count();
    if let Some((i, w)) = s.words.iter().enumerate().find(|(_, w)| w.head > n) {
        return Err(format!(
            "word {} has head {}, past the sentence's {n} words",
            i + 1,
            w.head
        ));
    }
    if roots != 1 {
        return Err(format!("{roots} words have head 0 (the root)"));
    }
    for start in 0..n {
        let (mut at, mut steps) = (start + 1, 0);
        while at != 0 {
            at = s.words[at - 1].head;
            steps += 1;
            if steps > n {
                return Err(format!("word {} is on a cycle of heads", start + 1));
            }
        }
    }
    Ok(())
}

/// Dependency parsing on a CoNLL-U file: UAS and LAS over words as the CoNLL 2018 script
/// computes them (relations compared on their universal part); truncated words count as
/// wrong.
pub fn dp(
    model: &Model,
    data: &[conllu::Sentence],
    batch_size: usize,
    max_length: usize,
    progress: &dyn Fn(u64),
) -> Result<Outcome> {
    let parser = model.parser.as_ref().expect("a parser is loaded");
    let labels = model.config.labels();
    let known: std::collections::BTreeSet<&str> =
        labels.iter().map(|l| conllu::universal(l)).collect();
    let mut unseen: Vec<&str> = data
        .iter()
        .flat_map(|s| s.words.iter().map(|w| conllu::universal(&w.deprel)))
        .filter(|r| !known.contains(r))
        .collect();
    unseen.sort_unstable();
    unseen.dedup();
    if labels.is_empty() || !unseen.is_empty() {
        return Err(Error::invalid(
            format!(
                "gold relation(s) {} are not in the parser's label map ({} labels)",
                unseen.join(", "),
                labels.len()
            ),
            "map them onto the parser's relations with --label-map FILE, or evaluate a parser trained on this relation set",
        ));
    }
    for (k, s) in data.iter().enumerate() {
        check_tree(s).map_err(|why| {
            Error::invalid(
                format!(
                    "sentence {} has no valid gold tree: {why}",
                    s.sent_id
                        .as_deref()
                        .map_or_else(|| format!("{}", k + 1), |id| format!("`{id}`"))
                ),
                "UD trees have one word on the root (head 0) and no cycles; the CoNLL 2018 scorer refuses such a file too: fix or drop the sentence",
            )
        })?;
    }
    let aligned: Vec<Aligned> = data
        .par_iter()
        .map(|s| {
            let forms: Vec<&str> = s.words.iter().map(|w| w.form.as_str()).collect();
            align(&model.tokenizer, &forms, max_length)
        })
        .collect::<Result<_>>()?;
    let truncated = aligned.iter().map(|a| a.truncated_words() as u64).sum();
    let unaligned = aligned.iter().map(|a| a.unaligned as u64).sum();
    let mut system: Vec<conllu::Sentence> = data.to_vec();
    let lengths: Vec<usize> = aligned.iter().map(|a| a.ids.len()).collect();
    for batch in batches(&lengths, batch_size) {
        let seqs: Vec<&[u32]> = batch.iter().map(|&i| aligned[i].ids.as_slice()).collect();
        let hidden = model.hidden(&seqs)?;
        // Only the words that have a subword in the (cut) sequence are parsed, so the
        // parser's (words² · relations) scores are bounded by --max-length, not by the
        // sentence; the others keep no head and count as wrong.
        let kept: Vec<Vec<usize>> = batch
            .iter()
            .map(|&i| {
                let a = &aligned[i];
                (0..a.first.len())
                    .filter(|&w| a.first[w].is_some())
                    .collect()
            })
            .collect();
        let ranges: Vec<Vec<Option<std::ops::Range<usize>>>> = batch
            .iter()
            .zip(&kept)
            .map(|(&i, kept)| {
                let a = &aligned[i];
                let close = a.ids.len() - 1;
                kept.iter()
                    .enumerate()
                    .map(|(k, &w)| {
                        let start = a.first[w].expect("kept words have a subword");
                        let end = kept
                            .get(k + 1)
                            .and_then(|&next| a.first[next])
                            .unwrap_or(close);
                        Some(start..end.max(start + 1))
                    })
                    .collect()
            })
            .collect();
        let parses = parser.parse(&hidden, &ranges, &model.device)?;
        for ((&i, parse), kept) in batch.iter().zip(parses).zip(&kept) {
            for w in &mut system[i].words {
                w.head = usize::MAX;
                "_".clone_into(&mut w.deprel);
            }
            for (&w, (head, rel)) in kept.iter().zip(parse) {
                let word = &mut system[i].words[w];
                // Heads index [ROOT] + the kept words: back to the sentence's word numbers.
                word.head = if head == 0 { 0 } else { kept[head - 1] + 1 };
                word.deprel.clone_from(&labels[rel]);
            }
        }
        progress(batch.len() as u64);
    }
    let a = metrics::attachment(data, &system)
        .map_err(|e| Error::invalid(e.to_string(), "report this"))?;
    let mut metrics = BTreeMap::new();
    if let (Some(u), Some(l)) = (a.uas, a.las) {
        metrics.insert("uas".to_owned(), u);
        metrics.insert("las".to_owned(), l);
    }
    Ok(Outcome {
        metrics,
        examples: data.len() as u64,
        truncated_words: truncated,
        unaligned_words: unaligned,
    })
}
