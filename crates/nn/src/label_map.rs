//! `--label-map FILE`: an explicit renaming of the dataset's gold labels into the model's
//! label set, for data whose tag names differ from the head's (`PERSON` vs `PER`, XNLI's
//! `contradictory` vs `contradiction`) or whose extra types should be scored as `O`.
//!
//! The file is a JSON object `{"gold": "model", …}` or text with one `GOLD MODEL` pair a line
//! (tab or spaces between; blank lines and `#` comments skipped). Whole labels are mapped
//! (`B-PERSON` → `B-PER`), or, for dependency relations, the universal part when the full
//! relation has no entry. Every target must be one of the model's labels; gold labels the map
//! does not name pass unchanged and must still be in the model's label map.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

const HINT: &str = "a label map is a JSON object {\"gold\": \"model\"} or lines of `GOLD MODEL`";

/// Gold label → model label.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct LabelMap(BTreeMap<String, String>);

impl LabelMap {
    /// Reads a JSON object (the text starts with `{`) or `GOLD MODEL` lines.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = crate::read_data(path)?;
        let text =
            String::from_utf8(bytes).map_err(|_| Error::bad_input(path, "is not UTF-8", HINT))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let map = if text.trim_start().starts_with('{') {
            let value: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
                .map_err(|e| Error::bad_input(path, format!("is not a JSON object: {e}"), HINT))?;
            let mut map = BTreeMap::new();
            for (gold, model) in value {
                let serde_json::Value::String(model) = model else {
                    return Err(Error::bad_input(
                        path,
                        format!("the value of `{gold}` is not a string"),
                        HINT,
                    ));
                };
                map.insert(gold, model);
            }
            map
        } else {
            let mut map = BTreeMap::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let cols: Vec<&str> = line.split_whitespace().collect();
                let [gold, model] = cols[..] else {
                    return Err(Error::bad_input(
                        path,
                        format!("line {}: {} columns, expected 2", n + 1, cols.len()),
                        HINT,
                    ));
                };
                if map.insert(gold.to_owned(), model.to_owned()).is_some() {
                    return Err(Error::bad_input(
                        path,
                        format!("line {}: `{gold}` is mapped twice", n + 1),
                        "map each gold label once",
                    ));
                }
            }
            map
        };
        if map.is_empty() {
            return Err(Error::bad_input(path, "maps no label", HINT));
        }
        if let Some((gold, _)) = map.iter().find(|(g, m)| g.is_empty() || m.is_empty()) {
            return Err(Error::bad_input(
                path,
                format!("maps `{gold}` to or from an empty label"),
                HINT,
            ));
        }
        Ok(Self(map))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The model label for gold label `gold` (itself when the map does not name it).
    pub fn apply(&self, gold: &str) -> String {
        self.0.get(gold).cloned().unwrap_or_else(|| gold.to_owned())
    }

    /// For a dependency relation: the full relation's entry, else its universal part's.
    pub fn apply_relation(&self, gold: &str) -> String {
        if let Some(m) = self.0.get(gold) {
            return m.clone();
        }
        let universal = super::conllu::universal(gold);
        match self.0.get(universal) {
            Some(m) => m.clone(),
            None => gold.to_owned(),
        }
    }

    /// Every target must be a model label (`labels`, compared by `key`): a map into labels
    /// the head cannot predict is a mistake, not a mapping.
    pub fn check_targets<'a>(
        &self,
        labels: impl IntoIterator<Item = &'a str>,
        key: impl Fn(&str) -> &str,
    ) -> Result<()> {
        let known: std::collections::BTreeSet<&str> = labels.into_iter().map(&key).collect();
        let mut missing: Vec<&str> = self
            .0
            .values()
            .map(String::as_str)
            .filter(|m| !known.contains(key(m)))
            .collect();
        // Several gold labels may map to one missing target: name it once.
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(
                format!(
                    "--label-map maps to {} which the model's label map ({} labels) does not have",
                    missing.join(", "),
                    known.len()
                ),
                "map gold labels onto labels of the model's config.json id2label",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LabelMap> {
        LabelMap::parse(Path::new("map"), text)
    }

    #[test]
    fn reads_json_and_pairs() {
        let a = parse(r#"{"B-PERSON": "B-PER", "I-PERSON": "I-PER"}"#).unwrap();
        let b = parse("# UNER → CoNLL\nB-PERSON\tB-PER\n\nI-PERSON  I-PER\n").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.apply("B-PERSON"), "B-PER");
        assert_eq!(a.apply("B-LOC"), "B-LOC");
    }

    #[test]
    fn relations_fall_back_to_the_universal_part() {
        let m = parse("flat compound\nnmod:poss nmod\n").unwrap();
        assert_eq!(m.apply_relation("flat:name"), "compound");
        assert_eq!(m.apply_relation("nmod:poss"), "nmod");
        assert_eq!(m.apply_relation("nmod:tmod"), "nmod:tmod");
    }

    #[test]
    fn hostile_maps_are_one_line_errors() {
        for (text, needle) in [
            ("", "maps no label"),
            ("# only a comment\n", "maps no label"),
            ("a b c\n", "line 1: 3 columns"),
            ("a\n", "line 1: 1 columns"),
            ("a b\na c\n", "line 2: `a` is mapped twice"),
            ("{\"a\": 1}", "the value of `a` is not a string"),
            ("{\"a\": \"b\"", "is not a JSON object"),
            ("{\"a\": \"\"}", "empty label"),
        ] {
            let err = parse(text).unwrap_err();
            let e = err.to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(
                !e.contains('\n') && err.hint().is_some_and(|h| !h.is_empty()),
                "{e}"
            );
        }
    }

    #[test]
    fn targets_must_be_model_labels() {
        let m = parse("B-PERSON B-PER\nB-EVENT B-MISC\nB-LAW B-LEX\nB-OTHER B-MISC\n").unwrap();
        let labels = ["O", "B-PER", "I-PER"];
        let e = m.check_targets(labels, |l| l).unwrap_err().to_string();
        assert!(e.contains("B-MISC") && !e.contains("B-PER,"), "{e}");
        assert_eq!(e.matches("B-MISC").count(), 1, "{e}");
        assert!(
            m.check_targets(["O", "B-PER", "B-MISC", "B-LEX"], |l| l)
                .is_ok()
        );
    }
}
