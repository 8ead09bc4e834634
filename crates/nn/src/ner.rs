//! IOB2/BIO NER files: a token and its tag per line, sentences separated by blank lines.
//!
//! Two layouts are read: CoNLL-2003 style (`token … tag`: the first column is the token, the
//! last the tag; `-DOCSTART-` lines are skipped) and Universal NER's (`index token tag …`,
//! recognised by an integer first column, `#` comments allowed). Tags must be `O` or
//! `B-`/`I-`/`E-`/`S-` followed by a type; anything else is an error naming the line.

use std::path::Path;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NerSentence {
    pub tokens: Vec<String>,
    pub tags: Vec<String>,
}

fn bad(path: &Path, line: usize, problem: impl std::fmt::Display) -> Error {
    Error::bad_input(
        path,
        format!("line {line}: {problem}"),
        "an IOB2 file has `token TAG` (or Universal NER's `index token TAG …`) per line, tags O, B-TYPE, I-TYPE",
    )
}

fn valid_tag(tag: &str) -> bool {
    tag == "O"
        || tag
            .split_once('-')
            .is_some_and(|(p, t)| matches!(p, "B" | "I" | "E" | "S") && !t.is_empty())
}

/// Reads an IOB2 file.
pub fn read(path: &Path) -> Result<Vec<NerSentence>> {
    let bytes = crate::read_data(path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::bad_input(path, "is not UTF-8", "NER files are UTF-8 text"))?;
    parse(path, &text)
}

/// Parses IOB2 text (`path` names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<Vec<NerSentence>> {
    let mut out = Vec::new();
    let mut cur = NerSentence::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim_end_matches('\r');
        if l.trim().is_empty() {
            if !cur.tokens.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if l.starts_with('#') && cur.tokens.is_empty() {
            continue;
        }
        let cols: Vec<&str> = if l.contains('\t') {
            l.split('\t').collect()
        } else {
            l.split_whitespace().collect()
        };
        if cols[0] == "-DOCSTART-" {
            continue;
        }
        if cols.len() < 2 {
            return Err(bad(path, line, "one column; expected a token and a tag"));
        }
        let (token, tag) = if cols.len() >= 3 && cols[0].parse::<u64>().is_ok() {
            (cols[1], cols[2])
        } else {
            (cols[0], cols[cols.len() - 1])
        };
        if !valid_tag(tag) {
            return Err(bad(path, line, format!("`{tag}` is not an IOB2 tag")));
        }
        cur.tokens.push(token.to_owned());
        cur.tags.push(tag.to_owned());
    }
    if !cur.tokens.is_empty() {
        out.push(cur);
    }
    if out.is_empty() {
        return Err(Error::bad_input(
            path,
            "has no sentences",
            "give an IOB2 file with at least one tagged sentence",
        ));
    }
    Ok(out)
}
