//! Metrics as the reference tools compute them.
//!
//! - Entity-level precision, recall and F1 for NER as `seqeval` computes them in its default
//!   (conlleval-compatible) mode: chunks start at `B-`, `S-`, or an `I-`/`E-` whose type
//!   differs from the previous tag's or that follows `O`/`E-`/`S-`; they end on the
//!   conlleval rules; sentences are joined with `O` between them; micro-averaged. Or in its
//!   strict IOB2 mode ([`NerMode::Strict`]): only `B-X I-X*` runs are entities.
//! - UAS and LAS at word level as the CoNLL 2018 shared-task script computes them when the
//!   system's words are the gold words: a word counts when its head is right (and, for LAS, its
//!   relation's universal part, before `:`). Every syntactic word counts, punctuation
//!   included; multiword tokens count as the words they cover.
//! - Accuracy (UPOS, NLI, the first-subword token accuracy the seed reported): correct ÷ total,
//!   `None` when there is nothing to count, never NaN.

use std::collections::BTreeMap;

use serde::Serialize;

use super::conllu::{Sentence, Word, universal};

/// Correct ÷ total, or `None` for an empty set.
pub fn accuracy(correct: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| correct as f64 / total as f64)
}

/// An entity: (type, first token, last token), token indexes over the joined sequence.
pub type Chunk = (String, usize, usize);

fn split(tag: &str) -> (char, &str) {
    let mut chars = tag.chars();
    let first = chars.next().unwrap_or('O');
    let rest = chars.as_str();
    let ty = rest.split_once('-').map_or(rest, |(_, t)| t);
    (first, if ty.is_empty() { "_" } else { ty })
}

fn end_of_chunk(prev: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!((prev, tag), ('E' | 'S', _) | ('B' | 'I', 'B' | 'S' | 'O'))
        || (prev != 'O' && prev != '.' && prev_type != ty)
}

fn start_of_chunk(prev: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!((prev, tag), (_, 'B' | 'S') | ('E' | 'S' | 'O', 'E' | 'I'))
        || (tag != 'O' && tag != '.' && prev_type != ty)
}

/// The entities of tag sequences (one per sentence), as seqeval's `get_entities` finds them.
pub fn entities<S: AsRef<str>>(sentences: &[Vec<S>]) -> Vec<Chunk> {
    let mut seq: Vec<&str> = Vec::new();
    for s in sentences {
        seq.extend(s.iter().map(AsRef::as_ref));
        seq.push("O");
    }
    let mut chunks = Vec::new();
    let (mut prev, mut prev_type) = ('O', "");
    let mut begin = 0;
    for (i, t) in seq.iter().chain(std::iter::once(&"O")).enumerate() {
        let (tag, ty) = split(t);
        if end_of_chunk(prev, tag, prev_type, ty) {
            chunks.push((prev_type.to_owned(), begin, i - 1));
        }
        if start_of_chunk(prev, tag, prev_type, ty) {
            begin = i;
        }
        prev = tag;
        prev_type = ty;
    }
    chunks
}

/// How entities are read from tags: seqeval's default (conlleval) rules, or its strict IOB2
/// mode (`mode="strict", scheme=IOB2`), where an entity is a `B-X` followed by `I-X`s and an
/// `I-X` that does not continue one is no entity at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NerMode {
    #[default]
    Default,
    Strict,
}

impl NerMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "default" => Some(Self::Default),
            "strict" => Some(Self::Strict),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Strict => "strict",
        }
    }
}

/// The entities of IOB2 tag sequences in seqeval's strict mode; `Err` names a tag that is not
/// `O`, `B-TYPE` or `I-TYPE` (seqeval refuses those too). Indexes as in [`entities`].
pub fn entities_strict<S: AsRef<str>>(sentences: &[Vec<S>]) -> Result<Vec<Chunk>, String> {
    let mut chunks = Vec::new();
    let mut offset = 0;
    for s in sentences {
        let mut open: Option<(String, usize)> = None;
        for (i, t) in s.iter().map(AsRef::as_ref).enumerate() {
            let parsed = match t {
                "O" => None,
                _ => match t.split_once('-') {
                    Some(("B", ty)) if !ty.is_empty() => Some((true, ty)),
                    Some(("I", ty)) if !ty.is_empty() => Some((false, ty)),
                    _ => return Err(format!("`{t}` is not an IOB2 tag (O, B-TYPE, I-TYPE)")),
                },
            };
            let continues =
                matches!((&open, parsed), (Some((oty, _)), Some((false, ty))) if oty == ty);
            if continues {
                continue;
            }
            if let Some((ty, begin)) = open.take() {
                chunks.push((ty, offset + begin, offset + i - 1));
            }
            if let Some((true, ty)) = parsed {
                open = Some((ty.to_owned(), i));
            }
        }
        if let Some((ty, begin)) = open {
            chunks.push((ty, offset + begin, offset + s.len() - 1));
        }
        offset += s.len() + 1;
    }
    Ok(chunks)
}

/// Precision, recall, F1 and support.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Gold entities.
    pub support: u64,
    pub predicted: u64,
    pub correct: u64,
}

impl Prf {
    fn new(correct: u64, predicted: u64, gold: u64) -> Self {
        // seqeval's zero_division default: 0 where a denominator is 0.
        let p = if predicted > 0 {
            correct as f64 / predicted as f64
        } else {
            0.0
        };
        let r = if gold > 0 {
            correct as f64 / gold as f64
        } else {
            0.0
        };
        let f = if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        };
        Self {
            precision: p,
            recall: r,
            f1: f,
            support: gold,
            predicted,
            correct,
        }
    }
}

/// Entity-level scores, micro-averaged and per type.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EntityScores {
    pub micro: Prf,
    pub per_type: BTreeMap<String, Prf>,
}

/// seqeval's `classification_report` numbers (default mode) for gold and predicted tags.
pub fn entity_scores<S: AsRef<str>>(gold: &[Vec<S>], pred: &[Vec<S>]) -> EntityScores {
    entity_scores_in(NerMode::Default, gold, pred).expect("the default mode reads any tags")
}

/// [`entity_scores`] in either mode; strict mode refuses tags that are not IOB2.
pub fn entity_scores_in<S: AsRef<str>>(
    mode: NerMode,
    gold: &[Vec<S>],
    pred: &[Vec<S>],
) -> Result<EntityScores, String> {
    let read = |x: &[Vec<S>]| match mode {
        NerMode::Default => Ok(entities(x)),
        NerMode::Strict => entities_strict(x),
    };
    let g: std::collections::HashSet<Chunk> = read(gold)?.into_iter().collect();
    let p: std::collections::HashSet<Chunk> = read(pred)?.into_iter().collect();
    let mut types: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for c in &g {
        types.entry(c.0.clone()).or_default().2 += 1;
    }
    for c in &p {
        let e = types.entry(c.0.clone()).or_default();
        e.1 += 1;
        if g.contains(c) {
            e.0 += 1;
        }
    }
    let correct = g.intersection(&p).count() as u64;
    Ok(EntityScores {
        micro: Prf::new(correct, p.len() as u64, g.len() as u64),
        per_type: types
            .into_iter()
            .map(|(t, (c, pr, go))| (t, Prf::new(c, pr, go)))
            .collect(),
    })
}

/// UAS and LAS.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Attachment {
    pub words: u64,
    pub uas: Option<f64>,
    pub las: Option<f64>,
}

/// Why two parses cannot be scored against each other.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("sentence {sentence}: the system has {system} words, gold {gold}")]
pub struct WordMismatch {
    pub sentence: usize,
    pub system: usize,
    pub gold: usize,
}

/// The word pairs of two parses of the same sentences, or where their words first differ.
fn word_pairs<'a>(
    gold: &'a [Sentence],
    system: &'a [Sentence],
) -> Result<Vec<(&'a Word, &'a Word)>, WordMismatch> {
    let words = |s: Option<&Sentence>| s.map_or(0, |s| s.words.len());
    for i in 0..gold.len().max(system.len()) {
        let (g, s) = (words(gold.get(i)), words(system.get(i)));
        if g != s || i >= gold.len() || i >= system.len() {
            return Err(WordMismatch {
                sentence: i + 1,
                system: s,
                gold: g,
            });
        }
    }
    Ok(gold
        .iter()
        .zip(system)
        .flat_map(|(g, s)| g.words.iter().zip(&s.words))
        .collect())
}

/// UAS and LAS of `system` against `gold` (the same words; see the module docs).
pub fn attachment(gold: &[Sentence], system: &[Sentence]) -> Result<Attachment, WordMismatch> {
    let pairs = word_pairs(gold, system)?;
    let n = pairs.len() as u64;
    let uas = pairs.iter().filter(|(g, s)| g.head == s.head).count() as u64;
    let las = pairs
        .iter()
        .filter(|(g, s)| g.head == s.head && universal(&g.deprel) == universal(&s.deprel))
        .count() as u64;
    Ok(Attachment {
        words: n,
        uas: accuracy(uas, n),
        las: accuracy(las, n),
    })
}

/// UPOS accuracy of `system` against `gold` (the same words).
pub fn upos_accuracy(gold: &[Sentence], system: &[Sentence]) -> Result<Option<f64>, WordMismatch> {
    let pairs = word_pairs(gold, system)?;
    let ok = pairs.iter().filter(|(g, s)| g.upos == s.upos).count() as u64;
    Ok(accuracy(ok, pairs.len() as u64))
}
