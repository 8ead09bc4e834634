//! A recipe point checked against the inputs' manifests: what every output tensor is made of.
//! Manifests only: no tensor byte is read here, so every mistake a recipe can make about names,
//! shapes, dtypes and heads fails before the merge reads a weight.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{Errors, InputSource, Method, Point, Recipe};
use crate::checkpoint::{Manifest, ManifestFile};
use crate::error::Result;
use crate::id::ObjectId;
use crate::tensor::{Dtype, element_count};
use crate::vector::VectorTensor;

/// An input resolved against the registry.
#[derive(Clone, Debug)]
pub enum Resolved<'a> {
    /// A vector's tensors (`from − minus`, filtered) and the heads of its `from`.
    Vector {
        reference: String,
        tensors: &'a [VectorTensor],
        heads: &'a [String],
    },
    Checkpoint {
        reference: String,
        manifest: &'a Manifest,
    },
}

/// The stored objects of `plus − minus` (or `plus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Operand {
    pub plus: ObjectId,
    pub plus_dtype: Dtype,
    pub minus: Option<ObjectId>,
    pub minus_dtype: Dtype,
    /// The operand is a model θ (linear, slerp on checkpoints) rather than a task vector τ.
    pub model: bool,
}

/// How one output tensor is made.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// An existing object, reused as is (no bytes read or written).
    Copy { object: ObjectId, from: String },
    /// Computed by the method from the base and the operands.
    Merge {
        base: Option<ObjectId>,
        base_dtype: Dtype,
        /// Per input; `None` where the input has nothing for this tensor (a vector's filter).
        operands: Vec<Option<Operand>>,
        /// Scale of the change (`[[parameters]] weight`), 1 unless overridden.
        scale: f64,
        /// Per input.
        densities: Vec<Option<f64>>,
        gamma: Option<f64>,
        t: Option<f64>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannedTensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub dtype: Dtype,
    #[serde(flatten)]
    pub action: Action,
}

impl PlannedTensor {
    pub fn elements(&self) -> u64 {
        element_count(&self.shape).expect("checked on ingest")
    }
}

/// Everything one point of a recipe produces.
#[derive(Clone, Debug, Serialize)]
pub struct MergePlan {
    pub point: Point,
    pub method: Method,
    pub tensors: Vec<PlannedTensor>,
    /// config.json and tokenizer files of the merged model (from the heads checkpoint, else
    /// the base).
    pub files: Vec<ManifestFile>,
    pub files_from: String,
    pub metadata: BTreeMap<String, String>,
    /// Tensors of inputs absent from the base and from the heads checkpoint: not in the output.
    pub left_out: Vec<String>,
    /// Integer tensors (position ids) copied from the base unmerged.
    pub integer_copied: Vec<String>,
}

impl MergePlan {
    /// Bytes the engine reads and writes (before compression), for progress and benchmarks.
    pub fn merged_elements(&self) -> u64 {
        self.tensors
            .iter()
            .filter(|t| matches!(t.action, Action::Merge { .. }))
            .map(PlannedTensor::elements)
            .sum()
    }
}

#[allow(clippy::float_cmp)] // exactly 0 and exactly 1: only then is the copy exact
/// For task arithmetic: the one operand whose effective weight (λ · scale · wᵢ) is exactly 1
/// while every other is exactly 0 or absent, when it is a difference from this very base
/// tensor in the output's dtype: its input and its `from` tensor, which the merge equals.
fn sole_unit_operand(
    recipe: &Recipe,
    point: &Point,
    scale: f64,
    operands: &[Option<Operand>],
    base: ObjectId,
    dtype: Dtype,
) -> Option<(usize, ObjectId)> {
    if !recipe.method.get().is_weighted_sum(recipe.normalize) {
        return None;
    }
    let mut found = None;
    for (i, op) in operands.iter().enumerate() {
        let Some(op) = op else { continue };
        let w = point.lambda * scale * point.weights[i];
        if w == 0.0 {
            continue;
        }
        if w != 1.0
            || found.is_some()
            || op.model
            || op.minus != Some(base)
            || op.plus_dtype != dtype
        {
            return None;
        }
        found = Some((i, op.plus));
    }
    found
}

/// Checks `point` of `recipe` against the resolved manifests.
pub fn plan(
    recipe: &Recipe,
    point: &Point,
    base: Option<(&str, &Manifest)>,
    inputs: &[Resolved<'_>],
    heads: Option<(&str, &Manifest)>,
) -> Result<MergePlan> {
    let errors = Errors { path: &recipe.path };
    let line_of_input = |i: usize| recipe.inputs[i].source.reference().line;
    // The structure the output follows: the base, or (linear without a base) the first input.
    let (reference_name, reference) = match (base, inputs.first()) {
        (Some(b), _) => (b.0.to_owned(), b.1),
        (
            None,
            Some(Resolved::Checkpoint {
                reference,
                manifest,
            }),
        ) => (reference.clone(), *manifest),
        _ => unreachable!("Recipe::check requires a base unless every input is a checkpoint"),
    };
    let vector_maps: Vec<Option<HashMap<&str, &VectorTensor>>> = inputs
        .iter()
        .map(|r| match r {
            Resolved::Vector { tensors, .. } => {
                Some(tensors.iter().map(|t| (t.name.as_str(), t)).collect())
            }
            Resolved::Checkpoint { .. } => None,
        })
        .collect();
    let model_method = !recipe.method.uses_lambda();
    let densities_default: Vec<Option<f64>> = recipe
        .inputs
        .iter()
        .map(|i| i.density.or(point.density))
        .collect();

    let mut tensors = Vec::new();
    let mut integer_copied = Vec::new();
    let mut in_reference: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for bt in &reference.tensors {
        in_reference.insert(bt.name.as_str());
        let name = bt.name.as_str();
        if !bt.dtype.is_float() {
            integer_copied.push(bt.name.clone());
            tensors.push(PlannedTensor {
                name: bt.name.clone(),
                shape: bt.shape.clone(),
                dtype: bt.dtype,
                action: Action::Copy {
                    object: bt.object(),
                    from: reference_name.clone(),
                },
            });
            continue;
        }
        let mut operands = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let operand = match input {
                Resolved::Checkpoint {
                    reference,
                    manifest,
                } => {
                    let t = manifest.tensor(name).ok_or_else(|| {
                        errors.at(
                            line_of_input(i),
                            format!("checkpoint `{reference}` has no tensor `{name}`, which `{reference_name}` has"),
                            "merge checkpoints of one architecture; `crossmerge diff BASE INPUT` lists the differences",
                        )
                    })?;
                    if t.shape != bt.shape || !t.dtype.is_float() {
                        return Err(errors.at(
                            line_of_input(i),
                            format!(
                                "tensor `{name}` is {} {:?} in `{reference}` but {} {:?} in `{reference_name}`",
                                t.dtype, t.shape, bt.dtype, bt.shape
                            ),
                            "merge checkpoints of one architecture; `crossmerge diff BASE INPUT` lists the differences",
                        ));
                    }
                    let model = model_method || base.is_none();
                    Some(Operand {
                        plus: t.object(),
                        plus_dtype: t.dtype,
                        minus: (!model).then(|| bt.object()),
                        minus_dtype: bt.dtype,
                        model,
                    })
                }
                Resolved::Vector { reference, .. } => {
                    match vector_maps[i].as_ref().and_then(|m| m.get(name)) {
                        None => None,
                        Some(vt) if vt.shape != bt.shape => {
                            return Err(errors.at(
                                line_of_input(i),
                                format!(
                                    "tensor `{name}` of vector `{reference}` is {:?}, but {:?} in `{reference_name}`",
                                    vt.shape, bt.shape
                                ),
                                "a vector can only be added to a base of its own architecture",
                            ));
                        }
                        Some(vt) => Some(Operand {
                            plus: vt.from,
                            plus_dtype: vt.dtype,
                            minus: Some(vt.minus),
                            minus_dtype: vt.minus_dtype,
                            model: false,
                        }),
                    }
                }
            };
            operands.push(operand);
        }
        let scale = recipe.override_for(name, |o| o.weight).unwrap_or(1.0);
        // f8 bases merge into f32 (the engine writes f32, f64, f16 and bf16).
        let natural = match bt.dtype {
            Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::Bf16 => bt.dtype,
            _ => Dtype::F32,
        };
        let dtype = recipe.output.dtype.unwrap_or(natural);
        let untouched = scale == 0.0 || operands.iter().all(Option::is_none);
        let action = if untouched && dtype == bt.dtype && base.is_some() {
            Action::Copy {
                object: bt.object(),
                from: reference_name.clone(),
            }
        } else if let Some((i, object)) =
            sole_unit_operand(recipe, point, scale, &operands, bt.object(), dtype)
        {
            // θ_base + 1·(θ_i − θ_base) is θ_i: copy its tensor rather than round the
            // difference through f32 (the λ = 0 point of a study is the task model, bit for
            // bit).
            Action::Copy {
                object,
                from: match &inputs[i] {
                    Resolved::Checkpoint { reference, .. } | Resolved::Vector { reference, .. } => {
                        reference.clone()
                    }
                },
            }
        } else {
            let density_override = recipe.override_for(name, |o| o.density);
            Action::Merge {
                base: base.map(|_| bt.object()),
                base_dtype: bt.dtype,
                operands,
                scale,
                densities: densities_default
                    .iter()
                    .map(|d| density_override.or(*d))
                    .collect(),
                gamma: recipe.override_for(name, |o| o.gamma).or(point.gamma),
                t: recipe.override_for(name, |o| o.t).or(point.t),
            }
        };
        tensors.push(PlannedTensor {
            name: bt.name.clone(),
            shape: bt.shape.clone(),
            dtype,
            action,
        });
    }

    // Tensors the inputs have and the reference lacks: task heads.
    let heads_manifest = heads.map(|h| h.1);
    let mut left_out = Vec::new();
    let mut extra: Vec<(usize, String)> = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        match input {
            Resolved::Checkpoint { manifest, .. } => extra.extend(
                manifest
                    .tensors
                    .iter()
                    .filter(|t| !in_reference.contains(t.name.as_str()))
                    .map(|t| (i, t.name.clone())),
            ),
            Resolved::Vector { heads, .. } => extra.extend(
                heads
                    .iter()
                    .filter(|h| !in_reference.contains(h.as_str()))
                    .map(|h| (i, h.clone())),
            ),
        }
    }
    if let Some((heads_name, hm)) = heads {
        for t in &hm.tensors {
            if !in_reference.contains(t.name.as_str()) {
                tensors.push(PlannedTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    dtype: t.dtype,
                    action: Action::Copy {
                        object: t.object(),
                        from: heads_name.to_owned(),
                    },
                });
            }
        }
    }
    for (i, name) in extra {
        let covered = heads_manifest.is_some_and(|h| h.tensor(&name).is_some());
        if covered {
            continue;
        }
        if heads.is_some() {
            if !left_out.contains(&name) {
                left_out.push(name);
            }
            continue;
        }
        let reference = match &inputs[i] {
            Resolved::Vector { reference, .. } | Resolved::Checkpoint { reference, .. } => {
                reference
            }
        };
        let kind = match recipe.inputs[i].source {
            InputSource::Vector(_) => "the checkpoint behind vector",
            InputSource::Checkpoint(_) => "checkpoint",
        };
        return Err(errors.at(
            line_of_input(i),
            format!("{kind} `{reference}` has tensor `{name}`, which the base `{reference_name}` lacks (a task head?)"),
            format!("add `[heads]` with `from = \"{reference}\"` to copy the heads from it"),
        ));
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let (files_from, files_manifest) = match heads {
        Some((n, m)) => (n.to_owned(), m),
        None => (reference_name.clone(), reference),
    };
    Ok(MergePlan {
        point: point.clone(),
        method: recipe.method,
        tensors,
        files: files_manifest.files.clone(),
        files_from,
        metadata: files_manifest.metadata.clone(),
        left_out,
        integer_copied,
    })
}
