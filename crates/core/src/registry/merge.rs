//! Merges through the registry: resolve a recipe's references, plan every sweep point from
//! manifests alone, stream the merge, register the result with its provenance.
//!
//! Write order is the registry's (see the parent module): the engine writes each merged tensor
//! to a temporary object; once every tensor is written, their rows are recorded `pending`,
//! the objects are renamed into place, and one transaction marks them stored and inserts the
//! checkpoint and its merge row. A merge that fails or is killed at any point leaves no
//! checkpoint and no merge row (at worst pending rows and temporary files, which `gc` removes).

use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;

use super::writer::{Draft, NewFile, NewTensor, RowInfo, TensorData};
use super::{NoProgress, Progress, Registry};
use crate::catalog::{CheckpointKind, CheckpointRow, NewMerge};
use crate::checkpoint::{Manifest, ManifestFile};
use crate::engine::{self, Settings};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::recipe::plan::{self, Action, MergePlan, Resolved};
use crate::recipe::{Errors, InputSource, Located, Recipe};
use crate::vector::{Filter, VectorTensor};

/// Key of the merge hash (FORMAT.md §8).
pub const MERGE_CONTEXT: &str = "crossmerge 2026-11 merge v1";

/// The largest sweep grid `merge` runs unless told otherwise (`--max-points`): each point is
/// one merged checkpoint, and every point is planned before the first merge.
pub const DEFAULT_MAX_POINTS: u64 = 1000;

/// How to run a recipe.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct MergeOptions {
    /// Replaces the recipe's `name` (sweep points keep their `/axis=value` suffixes).
    pub name: Option<String>,
    /// Plan only: validate against the registry, read no weight, write nothing.
    pub dry_run: bool,
    /// Export each merged checkpoint as a Hugging Face folder here (one subfolder per sweep
    /// point when there are several).
    pub out: Option<PathBuf>,
    /// Refuse sweep grids of more points than this (default [`DEFAULT_MAX_POINTS`]).
    pub max_points: Option<u64>,
    /// Largest window of the engine, in elements (for tests; the bits do not depend on it).
    #[doc(hidden)]
    pub max_window: Option<usize>,
}

impl MergeOptions {
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    #[must_use]
    pub fn dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }

    #[must_use]
    pub fn out(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out = Some(dir.into());
        self
    }
}

/// What happened to one sweep point.
#[derive(Clone, Debug, Serialize)]
pub struct MergedPoint {
    pub name: String,
    pub axes: Vec<(String, f64)>,
    pub recipe_hash: String,
    /// `None` in a dry run.
    pub checkpoint: Option<CheckpointRow>,
    /// True when an identical recipe on identical inputs had already produced it.
    pub reused: bool,
    pub tensors_merged: usize,
    pub tensors_copied: usize,
    pub objects_written: usize,
    pub bytes_written: u64,
    pub exported: Option<PathBuf>,
    /// The plan (dry runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<MergePlan>,
}

/// Owned resolutions of a recipe's references.
struct Inputs {
    base: Option<(CheckpointRow, Manifest)>,
    heads: Option<(CheckpointRow, Manifest)>,
    list: Vec<ResolvedInput>,
}

enum ResolvedInput {
    Vector {
        reference: String,
        definition: String,
        tensors: Vec<VectorTensor>,
        heads: Vec<String>,
    },
    Checkpoint {
        row: Box<CheckpointRow>,
        manifest: Box<Manifest>,
    },
}

impl Registry {
    fn resolve_located(&self, errors: &Errors<'_>, r: &Located<String>) -> Result<CheckpointRow> {
        self.resolve(&r.value)
            .map_err(|e| relocate(errors, r.line, e))
    }

    fn resolve_recipe(&self, recipe: &Recipe) -> Result<Inputs> {
        let errors = Errors { path: &recipe.path };
        let with_manifest = |r: &Located<String>| -> Result<(CheckpointRow, Manifest)> {
            let row = self.resolve_located(&errors, r)?;
            let m = self.manifest(&row)?;
            Ok((row, m))
        };
        let base = recipe.base.as_ref().map(with_manifest).transpose()?;
        let heads = recipe.heads.as_ref().map(with_manifest).transpose()?;
        let mut inputs = Vec::new();
        for input in &recipe.inputs {
            inputs.push(match &input.source {
                InputSource::Checkpoint(r) => {
                    let (row, manifest) = with_manifest(r)?;
                    ResolvedInput::Checkpoint {
                        row: Box::new(row),
                        manifest: Box::new(manifest),
                    }
                }
                InputSource::Vector(r) => {
                    let v = self
                        .resolve_vector(&r.value)
                        .map_err(|e| relocate(&errors, r.line, e))?;
                    let from = self.catalog.checkpoint_by_rowid(v.from_rowid)?;
                    let minus = self.catalog.checkpoint_by_rowid(v.minus_rowid)?;
                    let (fm, mm) = (self.manifest(&from)?, self.manifest(&minus)?);
                    let filter = Filter::new(v.include.clone(), v.exclude.clone());
                    let p = crate::vector::plan(
                        (&from.reference(), &fm),
                        (&minus.reference(), &mm),
                        &filter,
                    )
                    .map_err(|e| relocate(&errors, r.line, e))?;
                    ResolvedInput::Vector {
                        reference: v.reference(),
                        definition: v.definition.to_hex(),
                        tensors: p.tensors,
                        heads: p.heads,
                    }
                }
            });
        }
        Ok(Inputs {
            base,
            heads,
            list: inputs,
        })
    }

    /// Runs a recipe: every sweep point is planned (and so validated) before any weight is
    /// read; then each is merged, or found already merged, and registered as kind `merged`.
    pub fn merge(
        &mut self,
        recipe: &Recipe,
        source_text: &str,
        opts: &MergeOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<MergedPoint>> {
        let mut recipe = recipe.clone();
        if let Some(name) = &opts.name {
            super::check_name("checkpoint", name)?;
            recipe.name.value.clone_from(name);
        }
        // The grid's size first: never build a grid before knowing it is bounded.
        let limit = opts.max_points.unwrap_or(DEFAULT_MAX_POINTS);
        match recipe.point_count() {
            Some(n) if n <= limit => {}
            count => {
                return Err(Error::Recipe {
                    path: recipe.path.clone(),
                    line: None,
                    problem: format!(
                        "the sweep grid has {} points, over the limit of {limit}",
                        count.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string())
                    ),
                    hint: "sweep fewer values (each point is one merged checkpoint), or raise the limit with `--max-points N`".to_owned(),
                });
            }
        }
        if let (Some(out), false) = (&opts.out, opts.dry_run) {
            super::ops::check_export_target(out)?;
        }
        let resolved = self.resolve_recipe(&recipe)?;
        let views: Vec<Resolved<'_>> = resolved
            .list
            .iter()
            .map(|i| match i {
                ResolvedInput::Vector {
                    reference,
                    tensors,
                    heads,
                    ..
                } => Resolved::Vector {
                    reference: reference.clone(),
                    tensors,
                    heads,
                },
                ResolvedInput::Checkpoint { row, manifest } => Resolved::Checkpoint {
                    reference: row.reference(),
                    manifest,
                },
            })
            .collect();
        let base_ref = resolved.base.as_ref().map(|(r, m)| (r.reference(), m));
        let heads_ref = resolved.heads.as_ref().map(|(r, m)| (r.reference(), m));
        let points = recipe.points();
        for p in &points {
            super::check_name("checkpoint", &p.name).map_err(|e| Error::Recipe {
                path: recipe.path.clone(),
                line: None,
                problem: format!("sweep point `{}` is not a valid checkpoint name ({e})", p.name.escape_debug()),
                hint: "shorten the recipe's name or the inputs' labels (names are at most 200 bytes of letters, digits, `.`, `_`, `-`, `/`, `+`, `=`)".to_owned(),
            })?;
        }
        let plans: Vec<MergePlan> = points
            .iter()
            .map(|p| {
                plan::plan(
                    &recipe,
                    p,
                    base_ref.as_ref().map(|(r, m)| (r.as_str(), *m)),
                    &views,
                    heads_ref.as_ref().map(|(r, m)| (r.as_str(), *m)),
                )
            })
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(plans.len());
        for plan in plans {
            let (canonical, inputs) = canonical(&recipe, &plan, &resolved);
            let hash = blake3::derive_key(MERGE_CONTEXT, canonical.as_bytes());
            let recipe_hash = ObjectId::from_bytes(hash).to_hex();
            let counts = (
                plan.tensors
                    .iter()
                    .filter(|t| matches!(t.action, Action::Merge { .. }))
                    .count(),
                plan.tensors
                    .iter()
                    .filter(|t| matches!(t.action, Action::Copy { .. }))
                    .count(),
            );
            let mut point = MergedPoint {
                name: plan.point.name.clone(),
                axes: plan.point.axes.clone(),
                recipe_hash: recipe_hash.clone(),
                checkpoint: None,
                reused: false,
                tensors_merged: counts.0,
                tensors_copied: counts.1,
                objects_written: 0,
                bytes_written: 0,
                exported: None,
                plan: None,
            };
            if opts.dry_run {
                point.plan = Some(plan);
                out.push(point);
                continue;
            }
            let new_merge = NewMerge {
                recipe_hash: recipe_hash.clone(),
                method: recipe.method.name().to_owned(),
                recipe_canonical: canonical,
                recipe_source: source_text.to_owned(),
                recipe_path: Some(recipe.path.display().to_string()),
                inputs,
            };
            let existing = self.catalog.merges_by_hash(&recipe_hash)?;
            if let Some((_, row)) = existing.iter().find(|(_, c)| c.name == plan.point.name) {
                point.checkpoint = Some(row.clone());
                point.reused = true;
            } else if let Some((_, row)) = existing.first() {
                // The same merge under another name: register its manifest, merge nothing.
                let manifest = self.manifest(row)?;
                let tensors = manifest
                    .tensors
                    .iter()
                    .map(|t| NewTensor {
                        name: t.name.clone(),
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        data: TensorData::Stored(t.object()),
                    })
                    .collect();
                let draft = self.merged_draft(
                    &recipe,
                    &plan,
                    &resolved,
                    &new_merge,
                    tensors,
                    &manifest.files,
                    &manifest.metadata,
                );
                point.checkpoint = Some(self.write_checkpoint(draft, &NoProgress)?.checkpoint);
                point.reused = true;
            } else {
                let (row, written, bytes) =
                    self.run_point(&recipe, &plan, &resolved, &new_merge, opts, progress)?;
                point.checkpoint = Some(row);
                point.objects_written = written;
                point.bytes_written = bytes;
            }
            if let (Some(dir), Some(row)) = (&opts.out, &point.checkpoint) {
                let target = if points.len() > 1 {
                    dir.join(plan.point.name.replace('/', "__"))
                } else {
                    dir.clone()
                };
                self.export(
                    &row.reference(),
                    &target,
                    &super::ExportOptions::default(),
                    progress,
                )?;
                point.exported = Some(target);
            }
            out.push(point);
        }
        Ok(out)
    }

    fn run_point(
        &mut self,
        recipe: &Recipe,
        plan: &MergePlan,
        resolved: &Inputs,
        merge: &NewMerge,
        opts: &MergeOptions,
        progress: &dyn Progress,
    ) -> Result<(CheckpointRow, usize, u64)> {
        let _lock = self.lock_shared()?;
        // Objects that may serve as delta bases: stored and not deltas themselves.
        let bases: Vec<ObjectId> = plan
            .tensors
            .iter()
            .filter_map(|t| match &t.action {
                Action::Merge { base, .. } => *base,
                Action::Copy { .. } => None,
            })
            .collect();
        let known = self.catalog.objects(&bases)?;
        let delta_ok = |id: &ObjectId| {
            known
                .get(id)
                .is_some_and(|r| r.stored && r.delta_base.is_none())
        };
        let settings = Settings {
            method: recipe.method,
            lambda: plan.point.lambda,
            normalize: recipe.normalize,
            rescale: recipe.rescale,
            rescale_l1: recipe.rescale_norm == crate::recipe::RescaleNorm::L1,
            seed: recipe.output.seed.unwrap_or(0),
            weights: plan.point.weights.clone(),
            max_window: opts.max_window,
        };
        let outputs = engine::run(self.backend.as_ref(), plan, &settings, &delta_ok, progress)?;

        let mut encoded: Vec<Option<crate::engine::Output>> =
            (0..plan.tensors.len()).map(|_| None).collect();
        for o in outputs {
            let i = o.tensor;
            encoded[i] = Some(o);
        }
        let tensors: Vec<NewTensor<'_>> = plan
            .tensors
            .iter()
            .zip(encoded)
            .map(|(t, out)| NewTensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                data: match (&t.action, out) {
                    (Action::Copy { object, .. }, _) => TensorData::Stored(*object),
                    (Action::Merge { .. }, Some(o)) => TensorData::Encoded {
                        finished: o.finished,
                        delta_base: o.delta_base,
                    },
                    (Action::Merge { .. }, None) => unreachable!("the engine merges every Merge"),
                },
            })
            .collect();
        let draft = self.merged_draft(
            recipe,
            plan,
            resolved,
            merge,
            tensors,
            &plan.files,
            &plan.metadata,
        );
        let written = self.write_checkpoint(draft, &NoProgress)?;
        Ok((
            written.checkpoint,
            written.objects_written,
            written.bytes_written,
        ))
    }

    /// A merged checkpoint to write: its row, tags and provenance from the recipe's point.
    #[allow(clippy::too_many_arguments)]
    fn merged_draft<'a>(
        &self,
        recipe: &Recipe,
        plan: &MergePlan,
        resolved: &Inputs,
        merge: &NewMerge,
        tensors: Vec<NewTensor<'a>>,
        files: &[ManifestFile],
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Draft<'a> {
        let task = recipe
            .output
            .task
            .clone()
            .or_else(|| resolved.heads.as_ref().and_then(|(h, _)| h.task.clone()));
        Draft {
            tensors,
            files: files.iter().cloned().map(NewFile::Stored).collect(),
            metadata: metadata.clone(),
            delta_against: None,
            row: RowInfo {
                name: plan.point.name.clone(),
                kind: CheckpointKind::Merged,
                architecture: config_architecture(self, files),
                base: resolved.base.as_ref().map(|(b, _)| b.rowid),
                language: recipe.output.language.clone(),
                task,
                source_path: Some(recipe.path.display().to_string()),
                tags: plan
                    .point
                    .axes
                    .iter()
                    .map(|(k, v)| (format!("sweep.{k}"), v.to_string()))
                    .collect(),
            },
            merge: Some(merge.clone()),
            training: None,
        }
    }

    /// The provenance of a merged checkpoint.
    pub fn merge_of(&self, row: &CheckpointRow) -> Result<Option<crate::catalog::MergeRow>> {
        self.catalog.merge_of(row.rowid)
    }
}

/// The architecture named by a manifest's config.json, if it has one.
fn config_architecture(reg: &Registry, files: &[ManifestFile]) -> Option<String> {
    let f = files.iter().find(|f| f.path == "config.json")?;
    let bytes = reg.read_object(&f.object(), Some("config.json")).ok()?;
    crate::checkpoint::architecture_of(Some(&bytes))
}

/// A resolution error re-addressed to the recipe line that named the reference.
fn relocate(errors: &Errors<'_>, line: Option<usize>, e: Error) -> Error {
    match e {
        Error::NotFound {
            what,
            reference,
            hint,
        } => errors.at(line, format!("no {what} matches `{reference}`"), hint),
        Error::Ambiguous { prefix, candidates } => errors.at(
            line,
            format!(
                "`{prefix}` is ambiguous: it matches {}",
                candidates.join(", ")
            ),
            "give more hex characters, or use `name@version`",
        ),
        Error::Invalid { message, hint } => errors.at(line, message, hint),
        other => other,
    }
}

/// The canonical JSON of a point (FORMAT.md §8) and its resolved input ids.
fn canonical(recipe: &Recipe, plan: &MergePlan, resolved: &Inputs) -> (String, Vec<String>) {
    let p = &plan.point;
    let mut ids = Vec::new();
    let inputs: Vec<serde_json::Value> = resolved
        .list
        .iter()
        .zip(&recipe.inputs)
        .zip(&p.weights)
        .map(|((r, i), w)| {
            let (kind, id) = match r {
                ResolvedInput::Vector { definition, .. } => ("vector", definition.clone()),
                ResolvedInput::Checkpoint { row, .. } => ("checkpoint", row.manifest_id.to_hex()),
            };
            ids.push(id.clone());
            json!({ "kind": kind, "id": id, "weight": w, "density": i.density })
        })
        .collect();
    let overrides: Vec<serde_json::Value> = recipe
        .overrides
        .iter()
        .map(|o| json!({ "match": o.patterns, "weight": o.weight, "density": o.density, "gamma": o.gamma, "t": o.t }))
        .collect();
    let manifest_hex =
        |m: &Option<(CheckpointRow, Manifest)>| m.as_ref().map(|(r, _)| r.manifest_id.to_hex());
    let v = json!({
        "format": "crossmerge.merge.v1",
        "method": recipe.method.name(),
        "base": manifest_hex(&resolved.base),
        "heads": manifest_hex(&resolved.heads),
        "inputs": inputs,
        "lambda": p.lambda,
        "density": p.density,
        "gamma": p.gamma,
        "t": p.t,
        "normalize": recipe.normalize,
        "rescale": recipe.rescale,
        "seed": recipe.output.seed,
        "dtype": recipe.output.dtype.map(crate::tensor::Dtype::name),
        "parameters": overrides,
    });
    let mut v = v;
    recipe
        .method
        .get()
        .canonical(&recipe.method_options(), &mut v);
    // serde_json's map is ordered by key: this is canonical (sorted keys, no spaces).
    (serde_json::to_string(&v).expect("json"), ids)
}
