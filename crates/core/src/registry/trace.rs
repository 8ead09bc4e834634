//! `trace`: from an evaluation id (as a study's results.json gives it) back to everything
//! that made the number: the evaluated checkpoint, and for each checkpoint on the way its
//! merge (recipe hash, method, canonical recipe, the vectors and checkpoints it combined) or
//! its training run (source, data files with their content hashes, settings), down to the
//! registered bases.

use std::collections::HashSet;
use std::fmt::Write as _;

use serde::Serialize;

use super::Registry;
use crate::catalog::{CheckpointRow, EvaluationRow, MergeRow, TrainingRow, VectorRow};
use crate::error::{Error, Result};

/// An evaluation and the lineage of its checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct Trace {
    pub evaluation: EvaluationRow,
    pub checkpoint: Node,
}

/// A checkpoint and how it was made.
#[derive(Clone, Debug, Serialize)]
pub struct Node {
    #[serde(flatten)]
    pub row: CheckpointRow,
    /// Set when it is a merge.
    pub merge: Option<MergeNode>,
    /// Set when `crossmerge train` made it.
    pub training: Option<TrainingNode>,
    /// Its registered base, when neither of the above says more (`--base` lineage).
    pub base: Option<Box<Node>>,
    /// True when this checkpoint was already traced above (its lineage is not repeated).
    pub repeated: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct MergeNode {
    #[serde(flatten)]
    pub row: MergeRow,
    pub inputs: Vec<Input>,
}

/// One input of a merge.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Input {
    Vector {
        vector: Box<VectorRow>,
        from: Box<Node>,
        minus: Box<Node>,
    },
    Checkpoint {
        node: Box<Node>,
    },
    /// An id the catalog no longer knows (its vector or checkpoint was removed).
    Unknown {
        id: String,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct TrainingNode {
    #[serde(flatten)]
    pub row: TrainingRow,
    pub source: Box<Node>,
}

impl Registry {
    /// The trace of evaluation `id` (its full id or a prefix of at least 6 hex digits).
    pub fn trace(&self, id: &str) -> Result<Trace> {
        let bad = || {
            Error::invalid(
                format!("`{id}` is not an evaluation id"),
                "give the id (or its first 6+ hex digits) printed by `eval` or found in a study's results.json",
            )
        };
        if id.len() < 6 || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let prefix = id.to_ascii_lowercase();
        let (evaluation, checkpoint) =
            self.catalog
                .evaluation_by_id(&prefix)?
                .ok_or_else(|| Error::NotFound {
                    what: "evaluation",
                    reference: id.to_owned(),
                    hint: "list evaluations with `crossmerge report evals --json` (their `id`)"
                        .to_owned(),
                })?;
        let row = self.catalog.checkpoint_by_rowid(checkpoint)?;
        let mut seen = HashSet::new();
        Ok(Trace {
            evaluation,
            checkpoint: self.node(row, &mut seen)?,
        })
    }

    fn node(&self, row: CheckpointRow, seen: &mut HashSet<i64>) -> Result<Node> {
        if !seen.insert(row.rowid) {
            return Ok(Node {
                row,
                merge: None,
                training: None,
                base: None,
                repeated: true,
            });
        }
        let merge = match self.catalog.merge_of(row.rowid)? {
            Some(m) => {
                let mut inputs = Vec::new();
                for id in &m.inputs {
                    inputs.push(self.input(id, seen)?);
                }
                Some(MergeNode { row: m, inputs })
            }
            None => None,
        };
        let training = match self.catalog.trainings(Some(row.rowid))?.pop() {
            Some(t) => {
                let source = self.resolve(&t.source)?;
                Some(TrainingNode {
                    source: Box::new(self.node(source, seen)?),
                    row: t,
                })
            }
            None => None,
        };
        let base = match (&merge, &training, &row.base) {
            (None, None, Some(b)) => Some(Box::new(self.node(self.resolve(b)?, seen)?)),
            _ => None,
        };
        Ok(Node {
            row,
            merge,
            training,
            base,
            repeated: false,
        })
    }

    fn input(&self, id: &str, seen: &mut HashSet<i64>) -> Result<Input> {
        if let Some(v) = self.catalog.vector_by_definition(id)? {
            let from = self.catalog.checkpoint_by_rowid(v.from_rowid)?;
            let minus = self.catalog.checkpoint_by_rowid(v.minus_rowid)?;
            return Ok(Input::Vector {
                from: Box::new(self.node(from, seen)?),
                minus: Box::new(self.node(minus, seen)?),
                vector: Box::new(v),
            });
        }
        match self.catalog.checkpoints_by_prefix(id)?.into_iter().next() {
            Some(row) => Ok(Input::Checkpoint {
                node: Box::new(self.node(row, seen)?),
            }),
            None => Ok(Input::Unknown { id: id.to_owned() }),
        }
    }
}

impl Trace {
    /// The trace as an indented tree, for people.
    pub fn text(&self) -> String {
        let e = &self.evaluation;
        let mut s = String::new();
        let metrics: Vec<String> = e.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            s,
            "evaluation {}\n  {} {} on {} (blake3 {}), split {}, {} examples, settings {}\n  {}",
            e.id.as_deref().unwrap_or("-"),
            e.task,
            e.language.as_deref().unwrap_or("-"),
            e.dataset_path,
            e.dataset_hash,
            e.split.as_deref().unwrap_or("-"),
            e.examples,
            e.settings,
            metrics.join(" "),
        );
        node_text(&mut s, &self.checkpoint, 1, "of");
        s
    }
}

fn node_text(s: &mut String, n: &Node, depth: usize, role: &str) {
    let pad = "  ".repeat(depth);
    let r = &n.row;
    let _ = writeln!(
        s,
        "{pad}{role} checkpoint {} ({}) manifest {}{}",
        r.reference(),
        r.kind.as_str(),
        r.manifest_id,
        if n.repeated { " (traced above)" } else { "" }
    );
    if let Some(m) = &n.merge {
        let _ = writeln!(
            s,
            "{pad}  merged by {} recipe {} ({})",
            m.row.method,
            m.row.recipe_hash,
            m.row.recipe_path.as_deref().unwrap_or("-")
        );
        for i in &m.inputs {
            match i {
                Input::Vector {
                    vector,
                    from,
                    minus,
                } => {
                    let _ = writeln!(
                        s,
                        "{pad}    vector {} ({}) definition {}",
                        vector.reference(),
                        vector.kind.as_str(),
                        vector.definition
                    );
                    node_text(s, from, depth + 3, "from");
                    node_text(s, minus, depth + 3, "minus");
                }
                Input::Checkpoint { node } => node_text(s, node, depth + 2, "input"),
                Input::Unknown { id } => {
                    let _ = writeln!(s, "{pad}    input {id} (no longer in the catalog)");
                }
            }
        }
    }
    if let Some(t) = &n.training {
        let data: Vec<String> = t
            .row
            .run
            .data
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                format!(
                    "{} {} (blake3 {})",
                    d["role"].as_str().unwrap_or("?"),
                    d["path"].as_str().unwrap_or("?"),
                    d["hash"].as_str().unwrap_or("?")
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "{pad}  trained ({}, seed {}, {} steps, kept step {}) on {}",
            t.row.run.task,
            t.row.run.seed,
            t.row.run.steps,
            t.row.run.kept_step,
            data.join(", ")
        );
        node_text(s, &t.source, depth + 2, "from");
    }
    if let Some(b) = &n.base {
        node_text(s, b, depth + 1, "base");
    }
}
