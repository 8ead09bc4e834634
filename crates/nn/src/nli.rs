//! NLI data: premise, hypothesis and label per example, as TSV (a header row naming
//! `premise`, `hypothesis` and `label` columns, in any order; XNLI's `sentence1`/`sentence2`/
//! `gold_label` are accepted too) or JSONL (one object per line with those keys).

use std::path::Path;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub premise: String,
    pub hypothesis: String,
    pub label: String,
}

const PREMISE: [&str; 2] = ["premise", "sentence1"];
const HYPOTHESIS: [&str; 2] = ["hypothesis", "sentence2"];
const LABEL: [&str; 2] = ["label", "gold_label"];

fn bad(path: &Path, line: usize, problem: impl std::fmt::Display) -> Error {
    Error::bad_input(
        path,
        format!("line {line}: {problem}"),
        "NLI data is TSV with a `premise  hypothesis  label` header, or JSONL objects with those keys",
    )
}

/// Reads TSV or JSONL (by extension: `.jsonl`/`.json` is JSONL, anything else TSV).
pub fn read(path: &Path) -> Result<Vec<Example>> {
    let bytes = crate::read_data(path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::bad_input(path, "is not UTF-8", "NLI files are UTF-8 text"))?;
    let jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    let out = if jsonl {
        parse_jsonl(path, &text)?
    } else {
        parse_tsv(path, &text)?
    };
    if out.is_empty() {
        return Err(Error::bad_input(
            path,
            "has no examples",
            "give at least one premise, hypothesis and label",
        ));
    }
    Ok(out)
}

pub fn parse_tsv(path: &Path, text: &str) -> Result<Vec<Example>> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let cols: Vec<&str> = header.split('\t').map(str::trim).collect();
    let find = |names: &[&str]| cols.iter().position(|c| names.contains(c));
    let (Some(p), Some(h), Some(l)) = (find(&PREMISE), find(&HYPOTHESIS), find(&LABEL)) else {
        return Err(bad(
            path,
            1,
            format!("the header `{header}` lacks premise, hypothesis or label"),
        ));
    };
    let mut out = Vec::new();
    for (i, line) in lines {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != cols.len() {
            return Err(bad(
                path,
                i + 1,
                format!("{} fields, the header has {}", f.len(), cols.len()),
            ));
        }
        out.push(Example {
            premise: f[p].to_owned(),
            hypothesis: f[h].to_owned(),
            label: f[l].trim().to_owned(),
        });
    }
    Ok(out)
}

pub fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(path, i + 1, format!("not JSON: {e}")))?;
        let get = |names: &[&str]| -> Option<String> {
            names.iter().find_map(|n| match v.get(n)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        let (Some(premise), Some(hypothesis), Some(label)) =
            (get(&PREMISE), get(&HYPOTHESIS), get(&LABEL))
        else {
            return Err(bad(
                path,
                i + 1,
                "needs string `premise`, `hypothesis` and `label`",
            ));
        };
        out.push(Example {
            premise,
            hypothesis,
            label,
        });
    }
    Ok(out)
}
