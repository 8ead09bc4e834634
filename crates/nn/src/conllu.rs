//! CoNLL-U (Universal Dependencies) reading, as <https://universaldependencies.org/format.html>
//! specifies it: ten tab-separated columns, `#` comments, sentences separated by a blank line,
//! multiword-token lines (`3-4`) that give the surface token of the syntactic words they
//! cover, and empty nodes (`5.1`) that belong to enhanced dependencies only and are skipped
//! here. Every problem is reported with its line and a hint; nothing is guessed.

use std::path::Path;

use crate::error::{Error, Result};

/// One syntactic word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Word {
    pub form: String,
    pub upos: String,
    /// 0 is the root; otherwise the 1-based index of the head word.
    pub head: usize,
    pub deprel: String,
}

/// A surface token: one word, or a multiword token covering several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub form: String,
    /// Indexes (0-based) of the words it covers.
    pub words: std::ops::Range<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sentence {
    pub sent_id: Option<String>,
    pub text: Option<String>,
    pub words: Vec<Word>,
    pub tokens: Vec<Token>,
}

fn bad(path: &Path, line: usize, problem: impl std::fmt::Display) -> Error {
    Error::bad_input(
        path,
        format!("line {line}: {problem}"),
        "CoNLL-U has 10 tab-separated columns (ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC); see universaldependencies.org/format.html",
    )
}

/// Reads a CoNLL-U file.
pub fn read(path: &Path) -> Result<Vec<Sentence>> {
    let text = crate::read_data(path)?;
    let text = String::from_utf8(text).map_err(|e| {
        Error::bad_input(
            path,
            format!("is not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
            "CoNLL-U files are UTF-8 text",
        )
    })?;
    parse(path, &text)
}

/// Parses CoNLL-U text (`path` names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<Vec<Sentence>> {
    let mut out = Vec::new();
    let mut cur = Sentence::default();
    // Multiword tokens waiting for their words: (first, last, form, line).
    let mut pending_mwt: Option<(usize, usize, String, usize)> = None;
    let mut start_line = 1;
    let finish = |cur: &mut Sentence,
                  pending: &mut Option<(usize, usize, String, usize)>,
                  out: &mut Vec<Sentence>,
                  line: usize|
     -> Result<()> {
        if let Some((_, _, _, at)) = pending.take() {
            return Err(bad(
                path,
                at,
                "the multiword token's range runs past the sentence's words",
            ));
        }
        if cur.words.is_empty() {
            *cur = Sentence::default();
            return Ok(());
        }
        let n = cur.words.len();
        if let Some((i, w)) = cur.words.iter().enumerate().find(|(_, w)| w.head > n) {
            return Err(bad(
                path,
                line,
                format!(
                    "word {} (`{}`) has head {}, but the sentence has {n} words",
                    i + 1,
                    w.form,
                    w.head
                ),
            ));
        }
        out.push(std::mem::take(cur));
        Ok(())
    };
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let text_line = raw.strip_suffix('\r').unwrap_or(raw);
        if text_line.trim().is_empty() {
            finish(&mut cur, &mut pending_mwt, &mut out, start_line)?;
            start_line = line + 1;
            continue;
        }
        if let Some(comment) = text_line.strip_prefix('#') {
            let c = comment.trim();
            if let Some(v) = c.strip_prefix("sent_id =") {
                cur.sent_id = Some(v.trim().to_owned());
            } else if let Some(v) = c.strip_prefix("text =") {
                cur.text = Some(v.trim().to_owned());
            }
            continue;
        }
        let cols: Vec<&str> = text_line.split('\t').collect();
        if cols.len() != 10 {
            return Err(bad(
                path,
                line,
                format!("{} columns, expected 10", cols.len()),
            ));
        }
        let id = cols[0];
        if id.contains('.') {
            // An empty node (enhanced dependencies only): check its form, then skip it.
            let ok = id
                .split_once('.')
                .is_some_and(|(a, b)| a.parse::<usize>().is_ok() && b.parse::<usize>().is_ok());
            if !ok {
                return Err(bad(
                    path,
                    line,
                    format!("`{id}` is not a word, range or empty-node ID"),
                ));
            }
            continue;
        }
        if let Some((a, b)) = id.split_once('-') {
            let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) else {
                return Err(bad(
                    path,
                    line,
                    format!("`{id}` is not a valid multiword-token range"),
                ));
            };
            if a != cur.words.len() + 1 || b <= a || pending_mwt.is_some() {
                return Err(bad(
                    path,
                    line,
                    format!(
                        "multiword token `{id}` does not start at the next word ({})",
                        cur.words.len() + 1
                    ),
                ));
            }
            pending_mwt = Some((a, b, cols[1].to_owned(), line));
            continue;
        }
        let Ok(n) = id.parse::<usize>() else {
            return Err(bad(
                path,
                line,
                format!("`{id}` is not a word ID (a positive integer)"),
            ));
        };
        if n != cur.words.len() + 1 {
            return Err(bad(
                path,
                line,
                format!("word ID {n} out of order, expected {}", cur.words.len() + 1),
            ));
        }
        let head = cols[6].parse::<usize>().map_err(|_| {
            bad(
                path,
                line,
                format!(
                    "HEAD `{}` of word {n} is not a non-negative integer",
                    cols[6]
                ),
            )
        })?;
        if head == n {
            return Err(bad(path, line, format!("word {n} is its own head")));
        }
        cur.words.push(Word {
            form: cols[1].to_owned(),
            upos: cols[3].to_owned(),
            head,
            deprel: cols[7].to_owned(),
        });
        let w = cur.words.len() - 1;
        match &pending_mwt {
            Some((a, b, form, _)) if (*a..=*b).contains(&n) => {
                if n == *b {
                    cur.tokens.push(Token {
                        form: form.clone(),
                        words: a - 1..*b,
                    });
                    pending_mwt = None;
                }
            }
            _ => cur.tokens.push(Token {
                form: cols[1].to_owned(),
                words: w..w + 1,
            }),
        }
    }
    finish(&mut cur, &mut pending_mwt, &mut out, start_line)?;
    if out.is_empty() {
        return Err(Error::bad_input(
            path,
            "has no sentences",
            "give a CoNLL-U file with at least one sentence",
        ));
    }
    Ok(out)
}

/// The universal part of a dependency relation (`nsubj:pass` → `nsubj`), as the CoNLL 2018
/// evaluation compares them.
pub fn universal(deprel: &str) -> &str {
    deprel.split(':').next().unwrap_or(deprel)
}
