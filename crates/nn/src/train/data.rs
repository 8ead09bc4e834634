//! Training examples: a data file read and checked by the same readers `eval` uses, then
//! tokenized once into compact examples (token ids and targets; the text is dropped), aligned
//! exactly as `eval` aligns: a word is labelled at its first subword, the other subwords are
//! ignored by the loss (transformers' −100), words cut by `max_length` are not trained on.

use std::ops::Range;
use std::path::{Path, PathBuf};

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

/// A dataset's examples: tokenized in memory (treebanks, NER and NLI files), or masked-LM
/// text read and tokenized from its file when a batch needs it ([`Lines`]: only the lines'
/// byte offsets stay in memory).
#[derive(Debug)]
pub enum Examples {
    Memory(Vec<Example>),
    Lines(Box<Lines>),
}

impl Examples {
    pub fn len(&self) -> usize {
        match self {
            Examples::Memory(v) => v.len(),
            Examples::Lines(l) => l.spans.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Example `i`.
    pub fn get(&self, i: usize) -> Result<std::borrow::Cow<'_, Example>> {
        match self {
            Examples::Memory(v) => Ok(std::borrow::Cow::Borrowed(&v[i])),
            Examples::Lines(l) => l.get(i).map(std::borrow::Cow::Owned),
        }
    }
}

impl From<Vec<Example>> for Examples {
    fn from(v: Vec<Example>) -> Self {
        Examples::Memory(v)
    }
}

/// A tokenized training set.
#[derive(Debug)]
pub struct Dataset {
    pub examples: Examples,
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
    let examples: Vec<Example> = aligned
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
        examples: examples.into(),
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
    let examples: Vec<Example> = encoded
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
        examples: examples.into(),
        labels,
        truncated,
    })
}

/// One text encoded for the masked LM: its example, whether `max_length` cut it, and whether
/// it has a token to mask.
fn encode_text(
    tokenizer: &Tokenizer,
    text: &str,
    max_length: usize,
) -> Result<(Example, bool, bool)> {
    let enc = tokenizer
        .encode(text, true)
        .map_err(|err| encode_err(&err))?;
    let mut ids = enc.get_ids().to_vec();
    let mut marks: Vec<(bool, Option<u32>)> = enc
        .get_special_tokens_mask()
        .iter()
        .zip(enc.get_word_ids())
        .map(|(&s, &w)| (s != 0, w))
        .collect();
    let was_cut = cut(&mut ids, &mut marks, max_length);
    let maskable = marks.iter().any(|m| !m.0);
    let example = Example {
        ids,
        target: Target::Text {
            special: marks.iter().map(|m| m.0).collect(),
            words: marks.iter().map(|m| m.1).collect(),
        },
    };
    Ok((example, was_cut, maskable))
}

/// Masked-LM text streamed from its file: each paragraph's byte span; a batch's paragraphs
/// are read (`pread`) and tokenized when the batch is built.
#[derive(Debug)]
pub struct Lines {
    path: PathBuf,
    file: std::fs::File,
    /// (offset, length) of each paragraph, trimmed.
    spans: Vec<(u64, u32)>,
    tokenizer: Tokenizer,
    max_length: usize,
}

impl Lines {
    fn get(&self, i: usize) -> Result<Example> {
        use std::os::unix::fs::FileExt;
        let (offset, len) = self.spans[i];
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| Error::io("reading", &self.path, e))?;
        let text = String::from_utf8(buf).map_err(|_| {
            Error::bad_input(
                &self.path,
                "changed while training",
                "leave the training data as it is while a run uses it",
            )
        })?;
        Ok(encode_text(&self.tokenizer, &text, self.max_length)?.0)
    }
}

/// Paragraphs tokenized per pass of the index, in parallel (memory: one chunk's encodings).
const CHUNK: usize = 4096;

/// Masked LM on text, one paragraph a line, streamed from `path` ([`Lines`]): one pass
/// records each non-empty line's span, checks it is UTF-8, counts the paragraphs `max_length`
/// cuts and leaves out those with nothing to mask, holding one chunk of lines at a time.
/// `lines` keeps only the non-empty lines `START..END` (0-based, as `eval --range` counts).
pub fn mlm(
    path: &Path,
    tokenizer: &Tokenizer,
    max_length: usize,
    lines: Option<(usize, Option<usize>)>,
) -> Result<Dataset> {
    use std::io::BufRead;
    let meta = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?;
    if !meta.is_file() {
        return Err(Error::bad_input(
            path,
            "is not a regular file",
            "give a text file, a paragraph a line",
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let mut reader = std::io::BufReader::new(
        file.try_clone()
            .map_err(|e| Error::io("reading", path, e))?,
    );
    let mut spans = Vec::new();
    let mut pending: Vec<((u64, u32), String)> = Vec::with_capacity(CHUNK);
    let mut truncated = 0u64;
    let mut flush =
        |pending: &mut Vec<((u64, u32), String)>, spans: &mut Vec<(u64, u32)>| -> Result<()> {
            let done = pending
                .par_iter()
                .map(|(_, t)| {
                    encode_text(tokenizer, t, max_length).map(|(_, cut, maskable)| (cut, maskable))
                })
                .collect::<Result<Vec<_>>>()?;
            for ((span, _), (was_cut, maskable)) in pending.drain(..).zip(done) {
                truncated += u64::from(was_cut);
                if maskable {
                    spans.push(span);
                }
            }
            Ok(())
        };
    let (mut offset, mut line_no, mut paragraph) = (0u64, 0usize, 0usize);
    let (first, end) = lines.unwrap_or((0, None));
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let n = reader
            .read_until(b'\n', &mut raw)
            .map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let text = std::str::from_utf8(&raw).map_err(|_| {
            Error::bad_input(
                path,
                format!("line {line_no} is not UTF-8"),
                "give UTF-8 text, a paragraph a line",
            )
        })?;
        let trimmed = text.trim();
        let wanted = !trimmed.is_empty() && paragraph >= first && end.is_none_or(|e| paragraph < e);
        paragraph += usize::from(!trimmed.is_empty());
        if wanted {
            let start = offset + (trimmed.as_ptr() as usize - text.as_ptr() as usize) as u64;
            let len = u32::try_from(trimmed.len()).map_err(|_| {
                Error::bad_input(
                    path,
                    format!("line {line_no} is over 4 GiB"),
                    "split the text into paragraphs, one a line",
                )
            })?;
            pending.push(((start, len), trimmed.to_owned()));
            if pending.len() == CHUNK {
                flush(&mut pending, &mut spans)?;
            }
        }
        offset += n as u64;
    }
    flush(&mut pending, &mut spans)?;
    if first > 0 && first >= paragraph {
        return Err(Error::bad_input(
            path,
            format!("the range starts past its {paragraph} non-empty lines"),
            "give a range within the file (0-based, end excluded)",
        ));
    }
    if spans.is_empty() {
        return Err(Error::bad_input(
            path,
            "has no text",
            "give UTF-8 text, a paragraph a line",
        ));
    }
    Ok(Dataset {
        examples: Examples::Lines(Box::new(Lines {
            path: path.to_path_buf(),
            file,
            spans,
            tokenizer: tokenizer.clone(),
            max_length,
        })),
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
        examples: examples.into(),
        labels,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::{Target, encode_text, mlm};

    fn tokenizer() -> tokenizers::Tokenizer {
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [
                {"id": 0, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [0], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [1], "tokens": ["[SEP]"]}}},
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"[CLS]": 0, "[SEP]": 1, "[UNK]": 2, "a": 3, "b": 4, "c": 5}, "unk_token": "[UNK]"}
        });
        tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).unwrap()
    }

    /// Streamed text: blank lines skipped, each paragraph read back from its span exactly as
    /// the in-memory encoding makes it, paragraphs cut by `max_length` counted.
    #[test]
    fn streamed_text_reads_back_each_paragraph_from_its_span() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        std::fs::write(&path, "  a b \n\n\tc a b c a\r\nb\n   \n").unwrap();
        let tok = tokenizer();
        let d = mlm(&path, &tok, 6, None).unwrap();
        assert_eq!(d.examples.len(), 3);
        assert_eq!(
            d.truncated, 1,
            "`c a b c a` is 7 tokens with [CLS] and [SEP]"
        );
        for (i, text) in ["a b", "c a b c a", "b"].iter().enumerate() {
            let got = d.examples.get(i).unwrap().into_owned();
            assert_eq!(got, encode_text(&tok, text, 6).unwrap().0, "{text}");
            assert!(matches!(got.target, Target::Text { .. }));
        }
        // A range counts non-empty lines, as `eval --range` does.
        let d = mlm(&path, &tok, 6, Some((1, Some(3)))).unwrap();
        assert_eq!(d.examples.len(), 2);
        assert_eq!(
            d.examples.get(0).unwrap().into_owned(),
            encode_text(&tok, "c a b c a", 6).unwrap().0
        );
        let err = mlm(&path, &tok, 6, Some((3, None)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("starts past its 3 non-empty lines"), "{err}");
        std::fs::write(&path, "\n \n").unwrap();
        let err = mlm(&path, &tok, 6, None).unwrap_err().to_string();
        assert!(err.contains("has no text"), "{err}");
        std::fs::write(&path, b"a\n\xff\n").unwrap();
        let err = mlm(&path, &tok, 6, None).unwrap_err().to_string();
        assert!(err.contains("line 2 is not UTF-8"), "{err}");
    }
}
