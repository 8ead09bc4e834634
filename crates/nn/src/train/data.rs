//! Training examples: a data file read and checked by the same readers `eval` uses, then
//! tokenized once into compact examples (token ids and targets; the text is dropped), aligned
//! exactly as `eval` aligns: a word is labelled at its first subword, the other subwords are
//! ignored by the loss (transformers' −100), words cut by `max_length` are not trained on.

use std::ops::Range;

use rayon::prelude::*;
use tokenizers::Tokenizer;

use super::heads::label_set;
use crate::align::align;
use crate::error::{Error, Result};
use crate::{conllu, ner, nli};

/// What the loss compares an example's outputs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// POS, NER: a label id per position (`None`: ignored).
    Tokens(Vec<Option<u32>>),
    /// NLI: the pair's label id.
    Sequence(u32),
    /// Masked LM: which positions are special tokens (never masked), and each position's
    /// word (whole-word masking). The masks are drawn per epoch ([`super::masking`]).
    Text {
        special: Vec<bool>,
        words: Vec<Option<u32>>,
    },
    /// Dependency parsing, over the words that have a subword in the sequence: each word's
    /// subword range, its gold head as an index into `[ROOT] + words` (`None` when the head
    /// word was cut by `max_length`: not trained on), and its relation id.
    Tree {
        ranges: Vec<Range<usize>>,
        heads: Vec<Option<usize>>,
        relations: Vec<u32>,
    },
}

/// One training example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub target: Target,
}

/// A tokenized training set.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub examples: Vec<Example>,
    /// Label names by id (empty for the masked LM).
    pub labels: Vec<String>,
    /// Words (texts, pairs) cut by `max_length`.
    pub truncated: u64,
}

fn index_of(labels: &[String], l: &str) -> Option<u32> {
    labels
        .binary_search_by(|x| x.as_str().cmp(l))
        .ok()
        .map(|i| i as u32)
}

/// Labels: `given` (a label file, sorted) or the set the data has.
fn labels_for<'a>(given: Option<&[String]>, found: impl Iterator<Item = &'a str>) -> Vec<String> {
    given.map_or_else(
        || label_set(found),
        |g| label_set(g.iter().map(String::as_str)),
    )
}

fn unknown(labels: &[String], found: &mut dyn Iterator<Item = &str>) -> Result<()> {
    let mut missing: Vec<&str> = found.filter(|l| index_of(labels, l).is_none()).collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(
        format!(
            "label(s) {} are not in the label file's {} labels",
            missing.join(", "),
            labels.len()
        ),
        "add them to the label file, or leave --labels out to take the training data's labels",
    ))
}

/// Token classification (POS: UPOS, NER: IOB2 tags) on sentences of words.
pub fn tokens(
    sentences: &[(Vec<String>, Vec<String>)],
    tokenizer: &Tokenizer,
    max_length: usize,
    given: Option<&[String]>,
) -> Result<Dataset> {
    let labels = labels_for(
        given,
        sentences
            .iter()
            .flat_map(|(_, t)| t.iter().map(String::as_str)),
    );
    unknown(
        &labels,
        &mut sentences
            .iter()
            .flat_map(|(_, t)| t.iter().map(String::as_str)),
    )?;
    let aligned = sentences
        .par_iter()
        .map(|(words, _)| align(tokenizer, words, max_length))
        .collect::<Result<Vec<_>>>()?;
    let mut truncated = 0;
    let examples = aligned
        .into_iter()
        .zip(sentences)
        .map(|(a, (_, tags))| {
            truncated += a.truncated_words() as u64;
            let mut target = vec![None; a.ids.len()];
            for (first, tag) in a.first.iter().zip(tags) {
                if let Some(p) = first {
                    target[*p] = index_of(&labels, tag);
                }
            }
            Example {
                ids: a.ids,
                target: Target::Tokens(target),
            }
        })
        .collect();
    Ok(Dataset {
        examples,
        labels,
        truncated,
    })
}

/// UPOS tagging on CoNLL-U sentences.
pub fn pos(
    data: &[conllu::Sentence],
    tokenizer: &Tokenizer,
    max_length: usize,
    given: Option<&[String]>,
) -> Result<Dataset> {
    let sentences: Vec<(Vec<String>, Vec<String>)> = data
        .iter()
        .map(|s| {
            (
                s.words.iter().map(|w| w.form.clone()).collect(),
                s.words.iter().map(|w| w.upos.clone()).collect(),
            )
        })
        .collect();
    tokens(&sentences, tokenizer, max_length, given)
}

/// NER on IOB2 sentences.
pub fn ner(
    data: &[ner::NerSentence],
    tokenizer: &Tokenizer,
    max_length: usize,
    given: Option<&[String]>,
) -> Result<Dataset> {
    let sentences: Vec<(Vec<String>, Vec<String>)> = data
        .iter()
        .map(|s| (s.tokens.clone(), s.tags.clone()))
        .collect();
    tokens(&sentences, tokenizer, max_length, given)
}

fn encode_err(e: &dyn std::fmt::Display) -> Error {
    Error::invalid(format!("tokenizing: {e}"), "check the tokenizer.json")
}

/// Cuts an encoding's ids (and a per-position vector) to `max_length`, keeping the closing
/// special token, as `eval` does; says whether it cut.
fn cut<T: Clone>(ids: &mut Vec<u32>, other: &mut Vec<T>, max_length: usize) -> bool {
    if ids.len() <= max_length || max_length < 2 {
        return false;
    }
    let (last, last_other) = (ids[ids.len() - 1], other[other.len() - 1].clone());
    ids.truncate(max_length - 1);
    other.truncate(max_length - 1);
    ids.push(last);
    other.push(last_other);
    true
}

/// NLI: premise and hypothesis encoded as a pair.
pub fn nli(
    data: &[nli::Example],
    tokenizer: &Tokenizer,
    max_length: usize,
    given: Option<&[String]>,
) -> Result<Dataset> {
    let labels = labels_for(given, data.iter().map(|e| e.label.as_str()));
    unknown(&labels, &mut data.iter().map(|e| e.label.as_str()))?;
    let encoded = data
        .par_iter()
        .map(|e| {
            let enc = tokenizer
                .encode((e.premise.as_str(), e.hypothesis.as_str()), true)
                .map_err(|err| encode_err(&err))?;
            let mut ids = enc.get_ids().to_vec();
            let mut none: Vec<()> = vec![(); ids.len()];
            let cut = cut(&mut ids, &mut none, max_length);
            Ok((ids, cut))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut truncated = 0;
    let examples = encoded
        .into_iter()
        .zip(data)
        .map(|((ids, was_cut), e)| {
            truncated += u64::from(was_cut);
            Example {
                ids,
                target: Target::Sequence(index_of(&labels, &e.label).expect("checked above")),
            }
        })
        .collect();
    Ok(Dataset {
        examples,
        labels,
        truncated,
    })
}

/// Masked LM on texts, one a line; texts with nothing to mask are left out.
pub fn mlm(texts: &[String], tokenizer: &Tokenizer, max_length: usize) -> Result<Dataset> {
    let encoded = texts
        .par_iter()
        .map(|t| {
            let enc = tokenizer
                .encode(t.as_str(), true)
                .map_err(|err| encode_err(&err))?;
            let mut ids = enc.get_ids().to_vec();
            let mut marks: Vec<(bool, Option<u32>)> = enc
                .get_special_tokens_mask()
                .iter()
                .zip(enc.get_word_ids())
                .map(|(&s, &w)| (s != 0, w))
                .collect();
            let was_cut = cut(&mut ids, &mut marks, max_length);
            Ok((ids, marks, was_cut))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut truncated = 0;
    let examples = encoded
        .into_iter()
        .filter_map(|(ids, marks, was_cut)| {
            truncated += u64::from(was_cut);
            marks.iter().any(|m| !m.0).then(|| Example {
                ids,
                target: Target::Text {
                    special: marks.iter().map(|m| m.0).collect(),
                    words: marks.iter().map(|m| m.1).collect(),
                },
            })
        })
        .collect();
    Ok(Dataset {
        examples,
        labels: Vec::new(),
        truncated,
    })
}

/// Dependency parsing on CoNLL-U sentences: heads and universal relations (the part before
/// `:`, what `eval` scores).
pub fn dp(
    data: &[conllu::Sentence],
    tokenizer: &Tokenizer,
    max_length: usize,
    given: Option<&[String]>,
) -> Result<Dataset> {
    if let Some((k, s)) = data.iter().enumerate().find(|(_, s)| {
        s.words
            .iter()
            .any(|w| w.head == usize::MAX || w.deprel == "_")
    }) {
        return Err(Error::invalid(
            format!(
                "sentence {} has words without a head or relation",
                s.sent_id
                    .as_deref()
                    .map_or_else(|| format!("{}", k + 1), |id| format!("`{id}`"))
            ),
            "--task dp trains on CoNLL-U with HEAD and DEPREL filled in (a treebank's train split)",
        ));
    }
    let rels = |s: &conllu::Sentence| -> Vec<String> {
        s.words
            .iter()
            .map(|w| conllu::universal(&w.deprel).to_owned())
            .collect()
    };
    let all: Vec<Vec<String>> = data.iter().map(rels).collect();
    let labels = labels_for(given, all.iter().flatten().map(String::as_str));
    unknown(&labels, &mut all.iter().flatten().map(String::as_str))?;
    let aligned = data
        .par_iter()
        .map(|s| {
            let forms: Vec<&str> = s.words.iter().map(|w| w.form.as_str()).collect();
            align(tokenizer, &forms, max_length)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut truncated = 0;
    let mut examples = Vec::with_capacity(data.len());
    for ((a, s), rel) in aligned.into_iter().zip(data).zip(&all) {
        truncated += a.truncated_words() as u64;
        // The words that have a subword, as eval parses them; heads renumbered onto them.
        let kept: Vec<usize> = (0..a.first.len())
            .filter(|&w| a.first[w].is_some())
            .collect();
        let mut slot = vec![None; a.first.len()];
        for (k, &w) in kept.iter().enumerate() {
            slot[w] = Some(k + 1);
        }
        let close = a.ids.len() - 1;
        let mut ranges = Vec::with_capacity(kept.len());
        let mut heads = Vec::with_capacity(kept.len());
        let mut relations = Vec::with_capacity(kept.len());
        for (k, &w) in kept.iter().enumerate() {
            let start = a.first[w].expect("kept");
            let end = kept
                .get(k + 1)
                .and_then(|&next| a.first[next])
                .unwrap_or(close);
            ranges.push(start..end.max(start + 1));
            let head = s.words[w].head;
            heads.push(if head == 0 { Some(0) } else { slot[head - 1] });
            relations.push(index_of(&labels, &rel[w]).expect("checked above"));
        }
        if kept.is_empty() {
            continue;
        }
        examples.push(Example {
            ids: a.ids,
            target: Target::Tree {
                ranges,
                heads,
                relations,
            },
        });
    }
    Ok(Dataset {
        examples,
        labels,
        truncated,
    })
}
