//! Vectors through the registry: derive, show, compare, diff.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{Progress, Registry};
use crate::catalog::{CheckpointRow, NewVector, VectorRow};
use crate::checkpoint::Manifest;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::vector::compare::{self, CompareReport};
use crate::vector::group::GroupBy;
use crate::vector::stream::{self, Job, Operand};
use crate::vector::{Filter, Plan, VectorKind, definition_id, plan};

/// What to derive.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeriveOptions {
    pub kind: VectorKind,
    pub name: String,
    /// The fine-tuned checkpoint.
    pub from: String,
    /// What to subtract; `None` means the registered base of `from`.
    pub minus: Option<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl DeriveOptions {
    pub fn new(kind: VectorKind, name: impl Into<String>, from: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            from: from.into(),
            minus: None,
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }

    #[must_use]
    pub fn minus(mut self, minus: impl Into<String>) -> Self {
        self.minus = Some(minus.into());
        self
    }

    #[must_use]
    pub fn include(mut self, glob: impl Into<String>) -> Self {
        self.include.push(glob.into());
        self
    }

    #[must_use]
    pub fn exclude(mut self, glob: impl Into<String>) -> Self {
        self.exclude.push(glob.into());
        self
    }
}

/// A vector and what its definition left out.
#[derive(Clone, Debug, Serialize)]
pub struct VectorDetails {
    pub vector: VectorRow,
    /// False when deriving found the same definition already registered under the name.
    pub created: bool,
    /// Tensors only in `from` (task heads): not part of the vector.
    pub heads: Vec<String>,
    pub skipped_integer: Vec<String>,
    pub only_in_minus: Vec<String>,
    pub filtered_out: usize,
    /// (name, parameters, L2 norm) per tensor.
    pub tensors: Vec<TensorNorm>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TensorNorm {
    pub name: String,
    pub parameters: u64,
    pub l2_norm: f64,
}

/// How to compare.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct CompareOptions {
    /// Compare every vector against this one only (it is added if not in the list).
    pub reference: Option<String>,
    pub by: GroupBy,
    /// Count a tensor stored once under two names (tied embeddings) twice.
    pub count_tied: bool,
}

impl CompareOptions {
    #[must_use]
    pub fn by(mut self, by: GroupBy) -> Self {
        self.by = by;
        self
    }

    #[must_use]
    pub fn reference(mut self, reference: impl Into<String>) -> Self {
        self.reference = Some(reference.into());
        self
    }

    #[must_use]
    pub fn count_tied(mut self, yes: bool) -> Self {
        self.count_tied = yes;
        self
    }
}

/// What changed between two checkpoints.
#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    pub a: String,
    pub b: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same name, other shape or dtype: (name, in a, in b).
    pub retyped: Vec<(String, String, String)>,
    /// Same name, shape and dtype, other values.
    pub changed: Vec<ChangedTensor>,
    pub unchanged: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChangedTensor {
    pub name: String,
    /// ‖b − a‖ / ‖a‖ (`null` when a is all zeros).
    pub relative_l2: Option<f64>,
    pub l2: f64,
}

impl DiffReport {
    pub fn summary(&self) -> String {
        let mut rel: Vec<f64> = self.changed.iter().filter_map(|c| c.relative_l2).collect();
        rel.sort_by(f64::total_cmp);
        let median = rel
            .get(rel.len() / 2)
            .map_or(String::new(), |m| format!(" (median relative L2 {m:.3e})"));
        format!(
            "{} → {}: {} unchanged, {} changed{median}, {} added, {} removed, {} changed shape or dtype",
            self.a,
            self.b,
            self.unchanged,
            self.changed.len(),
            self.added.len(),
            self.removed.len(),
            self.retyped.len()
        )
    }
}

/// Vectors lined up tensor by tensor, ready to stream.
struct LinedUp {
    names: Vec<String>,
    reference: Option<usize>,
    jobs: Vec<Job>,
    tied: Vec<String>,
    not_shared: Vec<String>,
}

impl Registry {
    /// Derives (or finds) the vector `from − minus` under `opts.name`.
    pub fn derive(
        &mut self,
        opts: &DeriveOptions,
        progress: &dyn Progress,
    ) -> Result<VectorDetails> {
        super::check_name("vector", &opts.name)?;
        let from = self.resolve(&opts.from)?;
        let minus = if let Some(m) = &opts.minus {
            self.resolve(m)?
        } else {
            let base = from.base.clone().ok_or_else(|| {
                Error::invalid(
                    format!("`{}` has no registered base to subtract", from.reference()),
                    "name the checkpoint to subtract with `--minus`",
                )
            })?;
            self.resolve(&base)?
        };
        let filter = Filter::new(opts.include.clone(), opts.exclude.clone());
        let (from_m, minus_m) = (self.manifest(&from)?, self.manifest(&minus)?);
        let plan = plan(
            (&from.reference(), &from_m),
            (&minus.reference(), &minus_m),
            &filter,
        )?;
        let definition = definition_id(opts.kind, &from.manifest_id, &minus.manifest_id, &filter);
        if let Some(latest) = self.catalog.vector_by_name(&opts.name, None)?
            && latest.definition == definition
        {
            return self.vector_details(latest, false, &plan);
        }
        let jobs: Vec<Job> = plan
            .tensors
            .iter()
            .map(|t| Job {
                name: t.name.clone(),
                elements: t.elements(),
                operands: vec![Operand {
                    plus: (t.from, t.dtype),
                    minus: Some((t.minus, t.minus_dtype)),
                }],
            })
            .collect();
        let stats = stream::run(self.backend.as_ref(), &jobs, progress)?;
        let tensors: Vec<(String, u64, f64)> = jobs
            .iter()
            .zip(&stats)
            .map(|(j, s)| (j.name.clone(), j.elements, s.norm(0)))
            .collect();
        let total: f64 = stats.iter().map(|s| s.dot[0]).sum::<f64>().sqrt();
        let (row, created) = self.catalog.insert_vector(&NewVector {
            name: opts.name.clone(),
            kind: opts.kind,
            from: from.rowid,
            minus: minus.rowid,
            include: filter.include.clone(),
            exclude: filter.exclude.clone(),
            definition,
            l2_norm: total,
            tensors,
        })?;
        self.vector_details(row, created, &plan)
    }

    fn vector_details(
        &self,
        vector: VectorRow,
        created: bool,
        plan: &Plan,
    ) -> Result<VectorDetails> {
        let tensors = self
            .catalog
            .vector_tensors(vector.rowid)?
            .into_iter()
            .map(|(name, parameters, l2_norm)| TensorNorm {
                name,
                parameters,
                l2_norm,
            })
            .collect();
        Ok(VectorDetails {
            vector,
            created,
            heads: plan.heads.clone(),
            skipped_integer: plan.skipped_integer.clone(),
            only_in_minus: plan.only_in_minus.clone(),
            filtered_out: plan.filtered_out,
            tensors,
        })
    }

    /// Resolves `name` or `name@version` to a vector.
    pub fn resolve_vector(&self, reference: &str) -> Result<VectorRow> {
        let (name, version) = match reference.rsplit_once('@') {
            Some((n, v)) => (
                n,
                Some(v.parse::<u32>().map_err(|_| {
                    Error::invalid(
                        format!("`{reference}` has a bad version"),
                        "write `name@N`, e.g. `lang-es@2`",
                    )
                })?),
            ),
            None => (reference, None),
        };
        self.catalog.vector_by_name(name, version)?.ok_or_else(|| Error::NotFound {
            what: "vector",
            reference: reference.to_owned(),
            hint: "run `crossmerge list --vectors` to see the vectors there are, or `crossmerge derive` one".to_owned(),
        })
    }

    /// Every vector, by name then version.
    pub fn vectors(&self) -> Result<Vec<VectorRow>> {
        self.catalog.vectors()
    }

    fn checkpoints_of(&self, v: &VectorRow) -> Result<(CheckpointRow, CheckpointRow)> {
        Ok((
            self.catalog.checkpoint_by_rowid(v.from_rowid)?,
            self.catalog.checkpoint_by_rowid(v.minus_rowid)?,
        ))
    }

    fn plan_of(&self, v: &VectorRow, manifests: &mut HashMap<ObjectId, Manifest>) -> Result<Plan> {
        let (from, minus) = self.checkpoints_of(v)?;
        for c in [&from, &minus] {
            if let std::collections::hash_map::Entry::Vacant(e) = manifests.entry(c.manifest_id) {
                e.insert(self.manifest(c)?);
            }
        }
        plan(
            (&from.reference(), &manifests[&from.manifest_id]),
            (&minus.reference(), &manifests[&minus.manifest_id]),
            &Filter::new(v.include.clone(), v.exclude.clone()),
        )
    }

    /// A vector with its lineage and norms.
    pub fn show_vector(&self, reference: &str) -> Result<VectorDetails> {
        let v = self.resolve_vector(reference)?;
        let plan = self.plan_of(&v, &mut HashMap::new())?;
        self.vector_details(v, false, &plan)
    }

    /// Cosine similarity, norms and sign agreement of every pair of vectors (or each against
    /// the reference), grouped as asked, in one streaming pass.
    pub fn compare(
        &self,
        references: &[String],
        opts: &CompareOptions,
        progress: &dyn Progress,
    ) -> Result<CompareReport> {
        let lined = self.line_up(references, opts)?;
        let stats = stream::run(self.backend.as_ref(), &lined.jobs, progress)?;
        Ok(CompareReport {
            vectors: lined.names,
            by: opts.by,
            reference: lined.reference,
            groups: compare::summarize(&lined.jobs, &stats, opts.by),
            tied: lined.tied,
            not_shared: lined.not_shared,
        })
    }

    /// Reads (decodes and verifies) everything `compare` would read for these vectors and
    /// computes nothing: the bound `compare` is benchmarked against. Returns the elements read
    /// per vector.
    pub fn read_vectors(
        &self,
        references: &[String],
        opts: &CompareOptions,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let lined = self.line_up(references, opts)?;
        stream::read_only(self.backend.as_ref(), &lined.jobs, progress)?;
        Ok(lined.jobs.iter().map(|j| j.elements).sum())
    }

    fn line_up(&self, references: &[String], opts: &CompareOptions) -> Result<LinedUp> {
        let mut refs: Vec<String> = references.to_vec();
        let mut reference = None;
        if let Some(r) = &opts.reference {
            let row = self.resolve_vector(r)?;
            let pos = refs
                .iter()
                .map(|x| self.resolve_vector(x).map(|v| v.rowid))
                .collect::<Result<Vec<_>>>()?
                .iter()
                .position(|&id| id == row.rowid);
            reference = Some(pos.unwrap_or_else(|| {
                refs.push(r.clone());
                refs.len() - 1
            }));
        }
        if refs.len() < 2 {
            return Err(Error::invalid(
                "`compare` needs at least two vectors",
                "name two or more vectors, or one and `--reference`",
            ));
        }
        let mut manifests = HashMap::new();
        let mut vectors = Vec::with_capacity(refs.len());
        for r in &refs {
            let v = self.resolve_vector(r)?;
            let plan = self.plan_of(&v, &mut manifests)?;
            vectors.push((v.reference(), plan.tensors));
        }
        let (jobs, tied, not_shared) = compare::jobs(&vectors, opts.count_tied)?;
        Ok(LinedUp {
            names: vectors.into_iter().map(|(n, _)| n).collect(),
            reference,
            jobs,
            tied,
            not_shared,
        })
    }

    /// Tensors added, removed, retyped and changed between two checkpoints.
    pub fn diff(&self, a: &str, b: &str, progress: &dyn Progress) -> Result<DiffReport> {
        let (ca, cb) = (self.resolve(a)?, self.resolve(b)?);
        let (ma, mb) = (self.manifest(&ca)?, self.manifest(&cb)?);
        let in_b: BTreeMap<&str, _> = mb.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let in_a: BTreeMap<&str, _> = ma.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut report = DiffReport {
            a: ca.reference(),
            b: cb.reference(),
            added: mb
                .tensors
                .iter()
                .filter(|t| !in_a.contains_key(t.name.as_str()))
                .map(|t| t.name.clone())
                .collect(),
            removed: ma
                .tensors
                .iter()
                .filter(|t| !in_b.contains_key(t.name.as_str()))
                .map(|t| t.name.clone())
                .collect(),
            retyped: Vec::new(),
            changed: Vec::new(),
            unchanged: 0,
        };
        let mut jobs = Vec::new();
        for (name, ta) in &in_a {
            let Some(tb) = in_b.get(name) else { continue };
            if ta.shape != tb.shape || ta.dtype != tb.dtype {
                report.retyped.push((
                    (*name).to_owned(),
                    format!("{} {:?}", ta.dtype, ta.shape),
                    format!("{} {:?}", tb.dtype, tb.shape),
                ));
            } else if ta.id == tb.id {
                report.unchanged += 1;
            } else if ta.dtype.is_float() {
                jobs.push(compare::diff_job(
                    name,
                    ta.parameters(),
                    (ta.object(), ta.dtype),
                    (tb.object(), tb.dtype),
                ));
            } else {
                report.changed.push(ChangedTensor {
                    name: (*name).to_owned(),
                    relative_l2: None,
                    l2: f64::NAN,
                });
            }
        }
        let stats = stream::run(self.backend.as_ref(), &jobs, progress)?;
        for (job, s) in jobs.iter().zip(&stats) {
            let (na, nd) = (s.norm(0), s.norm(1));
            report.changed.push(ChangedTensor {
                name: job.name.clone(),
                relative_l2: (na > 0.0).then(|| nd / na),
                l2: nd,
            });
        }
        report.changed.sort_by(|x, y| x.name.cmp(&y.name));
        // NaN cannot be JSON: integer tensors that changed report no L2.
        for c in &mut report.changed {
            if c.l2.is_nan() {
                c.l2 = 0.0;
            }
        }
        Ok(report)
    }
}
