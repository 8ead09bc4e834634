//! Comparing vectors: cosine similarity, L2 norms and sign agreement of every pair, for the
//! whole model or per layer, module or tensor, in one streaming pass.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::VectorTensor;
use super::group::{GroupBy, GroupKey, key};
use super::stream::{Job, Operand, PairStats};
use crate::error::{Error, Result};
use crate::tensor::Dtype;

/// Statistics of one group of tensors.
#[derive(Clone, Debug, Serialize)]
pub struct GroupStats {
    pub group: String,
    pub tensors: usize,
    pub parameters: u64,
    /// L2 norm of each vector over the group.
    pub norms: Vec<f64>,
    /// `cosine[i][j]`; `null` where a vector is all zeros in the group.
    pub cosine: Vec<Vec<Option<f64>>>,
    /// Fraction of parameters, among those non-zero in both, whose signs agree.
    pub sign_agreement: Vec<Vec<Option<f64>>>,
}

/// What `compare` found.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// Vectors as `name@version`, in the order given.
    pub vectors: Vec<String>,
    pub by: GroupBy,
    /// Index into `vectors` of the reference, if one was named.
    pub reference: Option<usize>,
    pub groups: Vec<GroupStats>,
    /// Tensors counted once because they are the same tensor under another name in every
    /// vector (tied word embeddings and MLM decoder), unless `count_tied`.
    pub tied: Vec<String>,
    /// Tensors some vectors have and others lack; left out of every statistic.
    pub not_shared: Vec<String>,
}

/// Lines up the vectors' tensors, refusing different architectures, and builds the jobs.
/// Returns (jobs, tied names left out, names not shared).
pub fn jobs(
    vectors: &[(String, Vec<VectorTensor>)],
    count_tied: bool,
) -> Result<(Vec<Job>, Vec<String>, Vec<String>)> {
    let by_name: Vec<HashMap<&str, &VectorTensor>> = vectors
        .iter()
        .map(|(_, ts)| ts.iter().map(|t| (t.name.as_str(), t)).collect())
        .collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &by_name {
        for n in m.keys() {
            *counts.entry(n).or_default() += 1;
        }
    }
    // Of tied names, the embedding is the one kept (the decoder is tied to it, as in HF).
    let mut all: Vec<(&str, usize)> = counts.into_iter().collect();
    all.sort_by_key(|(n, _)| (!n.contains("embed"), *n));
    let mut not_shared = Vec::new();
    let mut jobs = Vec::new();
    let mut tied = Vec::new();
    let mut seen: HashMap<Vec<Operand>, String> = HashMap::new();
    for (name, count) in all {
        if count < vectors.len() {
            not_shared.push(name.to_owned());
            continue;
        }
        let first = by_name[0][name];
        let mut operands = Vec::with_capacity(vectors.len());
        for (i, m) in by_name.iter().enumerate() {
            let t = m[name];
            if t.shape != first.shape {
                return Err(Error::invalid(
                    format!(
                        "tensor `{name}` has shape {:?} in `{}` but {:?} in `{}`",
                        first.shape, vectors[0].0, t.shape, vectors[i].0
                    ),
                    "vectors need the same architecture; compare vectors derived from one base",
                ));
            }
            operands.push(Operand {
                plus: (t.from, t.dtype),
                minus: Some((t.minus, t.minus_dtype)),
            });
        }
        if !count_tied {
            if let Some(other) = seen.get(&operands) {
                tied.push(format!("{name} (= {other})"));
                continue;
            }
            seen.insert(operands.clone(), name.to_owned());
        }
        jobs.push(Job {
            name: name.to_owned(),
            elements: first.elements(),
            operands,
        });
    }
    if jobs.is_empty() {
        return Err(Error::invalid(
            "the vectors share no tensor",
            "compare vectors derived from the same base with compatible filters",
        ));
    }
    Ok((jobs, tied, not_shared))
}

/// Sums per-tensor statistics into groups and turns them into cosines and rates.
pub fn summarize(jobs: &[Job], stats: &[PairStats], by: GroupBy) -> Vec<GroupStats> {
    let k = stats.first().map_or(0, |s| s.k);
    let mut groups: BTreeMap<GroupKey, (usize, PairStats)> = BTreeMap::new();
    for (job, s) in jobs.iter().zip(stats) {
        let entry = groups
            .entry(key(by, &job.name))
            .or_insert_with(|| (0, PairStats::new(k)));
        entry.0 += 1;
        entry.1.add(s);
    }
    groups
        .into_iter()
        .map(|(key, (tensors, s))| GroupStats {
            group: key.label(),
            tensors,
            parameters: s.elements,
            norms: (0..k).map(|i| s.norm(i)).collect(),
            cosine: (0..k)
                .map(|i| (0..k).map(|j| s.cosine(i, j)).collect())
                .collect(),
            sign_agreement: (0..k)
                .map(|i| (0..k).map(|j| s.sign_agreement(i, j)).collect())
                .collect(),
        })
        .collect()
}

/// Builds jobs comparing raw tensors `a` and `b` (for `diff`): operands `a` and `a − b`.
pub fn diff_job(
    name: &str,
    elements: u64,
    a: (crate::id::ObjectId, Dtype),
    b: (crate::id::ObjectId, Dtype),
) -> Job {
    Job {
        name: name.to_owned(),
        elements,
        operands: vec![
            Operand {
                plus: a,
                minus: None,
            },
            Operand {
                plus: a,
                minus: Some(b),
            },
        ],
    }
}
