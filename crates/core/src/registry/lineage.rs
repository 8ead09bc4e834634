//! The whole registry as one graph: base → language and task models → vectors → merged models
//! → evaluations, for the web page's lineage drawing and its `/api/lineage`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::Registry;
use crate::catalog::{CheckpointFilter, CheckpointKind};
use crate::error::Result;

/// Nodes and edges of the registry's lineage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Lineage {
    pub nodes: Vec<LineageNode>,
    /// (from, to) as indices into `nodes`, the input first.
    pub edges: Vec<(usize, usize)>,
}

/// One node: a checkpoint, a vector, or the evaluations of one checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct LineageNode {
    /// `checkpoint`, `vector` or `evaluations`.
    pub kind: &'static str,
    /// `name@version` of the checkpoint or vector (of the evaluated checkpoint for
    /// `evaluations`).
    pub reference: String,
    /// The checkpoint's kind (`base`, `language`, `task`, `merged`) or the vector's
    /// (`task`, `language`); for `evaluations`, how many.
    pub detail: String,
    /// Left-to-right column: 0 bases, 1 fine-tuned models, 2 vectors, 3 merged models,
    /// 4 evaluations.
    pub column: u8,
}

impl Registry {
    /// The lineage of everything in the catalog (reads the catalog only).
    pub fn lineage(&self) -> Result<Lineage> {
        let mut g = Lineage::default();
        let rows = self.catalog.checkpoints(&CheckpointFilter::default())?;
        let mut by_ref: HashMap<String, usize> = HashMap::new();
        let mut by_manifest: HashMap<String, usize> = HashMap::new();
        let mut by_rowid: HashMap<i64, usize> = HashMap::new();
        for r in &rows {
            let column = match r.kind {
                CheckpointKind::Base => 0,
                CheckpointKind::Language | CheckpointKind::Task => 1,
                CheckpointKind::Merged => 3,
            };
            let i = g.nodes.len();
            g.nodes.push(LineageNode {
                kind: "checkpoint",
                reference: r.reference(),
                detail: r.kind.as_str().to_owned(),
                column,
            });
            by_ref.insert(r.reference(), i);
            by_manifest.entry(r.manifest_id.to_hex()).or_insert(i);
            by_rowid.insert(r.rowid, i);
        }
        let mut by_definition: HashMap<String, usize> = HashMap::new();
        for v in self.catalog.vectors()? {
            let i = g.nodes.len();
            g.nodes.push(LineageNode {
                kind: "vector",
                reference: v.reference(),
                detail: v.kind.as_str().to_owned(),
                column: 2,
            });
            by_definition.insert(v.definition.to_hex(), i);
            for side in [v.from_rowid, v.minus_rowid] {
                if let Some(&c) = by_rowid.get(&side) {
                    g.edges.push((c, i));
                }
            }
        }
        for r in &rows {
            let to = by_ref[&r.reference()];
            let merge = self.catalog.merge_of(r.rowid)?;
            let training = match &merge {
                Some(_) => None,
                None => self.catalog.trainings(Some(r.rowid))?.pop(),
            };
            if let Some(m) = merge {
                for input in &m.inputs {
                    let from = by_definition
                        .get(input)
                        .or_else(|| by_manifest.get(input))
                        .copied();
                    if let Some(from) = from {
                        g.edges.push((from, to));
                    }
                }
            } else if let Some(t) = training {
                if let Some(&from) = by_ref.get(&t.source) {
                    g.edges.push((from, to));
                }
            } else if let Some(&from) = r.base.as_ref().and_then(|b| by_ref.get(b)) {
                g.edges.push((from, to));
            }
        }
        let mut evaluated: BTreeMap<String, usize> = BTreeMap::new();
        for e in self.catalog.evaluations(None, None)? {
            *evaluated.entry(e.checkpoint).or_default() += 1;
        }
        for (reference, n) in evaluated {
            let Some(&from) = by_ref.get(&reference) else {
                continue;
            };
            let i = g.nodes.len();
            g.nodes.push(LineageNode {
                kind: "evaluations",
                reference,
                detail: n.to_string(),
                column: 4,
            });
            g.edges.push((from, i));
        }
        g.edges.sort_unstable();
        g.edges.dedup();
        Ok(g)
    }
}
