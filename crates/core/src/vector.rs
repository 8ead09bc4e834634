//! Task and language vectors: `θ_from − θ_minus`, tensor by tensor, in f32.
//!
//! A vector is *defined*, not stored: its definition is the pair of checkpoints (by manifest
//! id), its kind and its include/exclude globs, hashed into a definition id (blake3
//! `derive_key` context `crossmerge 2026-11 vector v1` over canonical JSON, see
//! `schemas/FORMAT.md` §7). Its values are computed from the stored checkpoints whenever they
//! are needed, so a vector costs no object bytes; the catalog keeps its lineage and norms.
//!
//! Which tensors a vector has: every name present in both checkpoints with a float dtype that
//! passes the filter. Names only in `from` (task heads) are listed as heads, integer tensors
//! (position ids) are skipped, and a shape or dtype that differs between the two checkpoints
//! is an error naming the tensor.

pub mod compare;
pub mod group;
pub mod stream;

pub use crate::catalog::VectorKind;
use std::collections::BTreeMap;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::checkpoint::Manifest;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::tensor::Dtype;

pub const VECTOR_CONTEXT: &str = "crossmerge 2026-11 vector v1";

/// Include/exclude globs over tensor names (`*` crosses dots, as in mergekit filters).
/// A name is kept when it matches some include (or there are none) and no exclude.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Filter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl Filter {
    /// A filter in canonical form: globs sorted and deduplicated.
    pub fn new(mut include: Vec<String>, mut exclude: Vec<String>) -> Self {
        include.sort();
        include.dedup();
        exclude.sort();
        exclude.dedup();
        Self { include, exclude }
    }

    fn compile(&self) -> Result<(Option<GlobSet>, GlobSet)> {
        let build = |globs: &[String]| -> Result<GlobSet> {
            let mut b = GlobSetBuilder::new();
            for g in globs {
                b.add(Glob::new(g).map_err(|e| {
                    Error::invalid(
                        format!("`{g}` is not a valid glob: {e}"),
                        "globs use `*`, `?`, `[abc]` and `{a,b}`, e.g. `*.attention.*`",
                    )
                })?);
            }
            b.build()
                .map_err(|e| Error::invalid(e.to_string(), "check the globs"))
        };
        let include = if self.include.is_empty() {
            None
        } else {
            Some(build(&self.include)?)
        };
        Ok((include, build(&self.exclude)?))
    }
}

/// One tensor of a vector: `from − minus`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorTensor {
    pub name: String,
    pub shape: Vec<u64>,
    /// `from`'s dtype.
    pub dtype: Dtype,
    pub from: ObjectId,
    pub minus: ObjectId,
    /// `minus`'s dtype: another float type when, say, an F32 fine-tune is taken against
    /// its F16 base (every float type widens exactly to the F32 the difference is taken in).
    pub minus_dtype: Dtype,
}

impl VectorTensor {
    pub fn elements(&self) -> u64 {
        crate::tensor::element_count(&self.shape).expect("checked on ingest")
    }
}

/// The tensors a definition yields, and what it left out.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub tensors: Vec<VectorTensor>,
    /// Names only in `from` (task heads): not part of the vector.
    pub heads: Vec<String>,
    /// Names only in `minus`.
    pub only_in_minus: Vec<String>,
    /// Integer tensors present in both (position ids), skipped.
    pub skipped_integer: Vec<String>,
    /// Float tensors present in both that the filter removed.
    pub filtered_out: usize,
}

impl Plan {
    pub fn parameters(&self) -> u64 {
        self.tensors.iter().map(VectorTensor::elements).sum()
    }
}

/// Works out the tensors of `from − minus` under `filter`, from manifests alone.
pub fn plan(from: (&str, &Manifest), minus: (&str, &Manifest), filter: &Filter) -> Result<Plan> {
    let (include, exclude) = filter.compile()?;
    let minus_by_name: BTreeMap<&str, _> = minus
        .1
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut out = Plan::default();
    for t in &from.1.tensors {
        let Some(m) = minus_by_name.get(t.name.as_str()) else {
            out.heads.push(t.name.clone());
            continue;
        };
        if t.shape != m.shape || t.dtype.is_float() != m.dtype.is_float() {
            return Err(Error::invalid(
                format!(
                    "tensor `{}` is {} {:?} in `{}` but {} {:?} in `{}`",
                    t.name, t.dtype, t.shape, from.0, m.dtype, m.shape, minus.0
                ),
                "a vector needs two checkpoints of the same architecture (float tensors of any float type); check `--minus`",
            ));
        }
        if !t.dtype.is_float() {
            out.skipped_integer.push(t.name.clone());
            continue;
        }
        let kept =
            include.as_ref().is_none_or(|g| g.is_match(&t.name)) && !exclude.is_match(&t.name);
        if !kept {
            out.filtered_out += 1;
            continue;
        }
        out.tensors.push(VectorTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            dtype: t.dtype,
            from: t.object(),
            minus: m.object(),
            minus_dtype: m.dtype,
        });
    }
    let from_names: std::collections::HashSet<&str> =
        from.1.tensors.iter().map(|t| t.name.as_str()).collect();
    out.only_in_minus = minus
        .1
        .tensors
        .iter()
        .filter(|t| !from_names.contains(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect();
    if out.tensors.is_empty() {
        return Err(Error::invalid(
            format!("`{}` − `{}` has no tensors left", from.0, minus.0),
            if out.filtered_out > 0 {
                "the include/exclude globs removed every tensor; loosen them"
            } else {
                "the two checkpoints share no float tensor; check `--minus`"
            },
        ));
    }
    Ok(out)
}

/// The definition id of a vector: what makes two derivations "the same vector".
pub fn definition_id(
    kind: VectorKind,
    from: &ObjectId,
    minus: &ObjectId,
    filter: &Filter,
) -> ObjectId {
    let canonical = serde_json::json!({
        "kind": kind.as_str(),
        "from": from.to_hex(),
        "minus": minus.to_hex(),
        "include": filter.include,
        "exclude": filter.exclude,
    });
    let bytes = serde_json::to_vec(&canonical).expect("serializes");
    let mut h = blake3::Hasher::new_derive_key(VECTOR_CONTEXT);
    h.update(&bytes);
    ObjectId::from_bytes(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ManifestTensor;

    fn manifest(tensors: &[(&str, Dtype, &[u64], u8)]) -> Manifest {
        Manifest::new(
            tensors
                .iter()
                .map(|(n, d, s, id)| ManifestTensor {
                    name: (*n).to_owned(),
                    dtype: *d,
                    shape: s.to_vec(),
                    id: ObjectId::from_bytes([*id; 32]),
                })
                .collect(),
            Vec::new(),
            BTreeMap::new(),
        )
    }

    #[test]
    fn heads_integers_and_filters_are_sorted_out() {
        let from = manifest(&[
            ("enc.layer.0.w", Dtype::F32, &[2, 2], 1),
            ("enc.layer.0.b", Dtype::F32, &[2], 2),
            ("emb.position_ids", Dtype::I64, &[4], 3),
            ("classifier.weight", Dtype::F32, &[3, 2], 4),
        ]);
        let minus = manifest(&[
            ("enc.layer.0.w", Dtype::F32, &[2, 2], 5),
            ("enc.layer.0.b", Dtype::F32, &[2], 6),
            ("emb.position_ids", Dtype::I64, &[4], 3),
            ("pooler.w", Dtype::F32, &[2, 2], 7),
        ]);
        let p = plan(("ft", &from), ("base", &minus), &Filter::default()).unwrap();
        assert_eq!(
            p.tensors
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            ["enc.layer.0.b", "enc.layer.0.w"]
        );
        assert_eq!(p.heads, ["classifier.weight"]);
        assert_eq!(p.skipped_integer, ["emb.position_ids"]);
        assert_eq!(p.only_in_minus, ["pooler.w"]);
        let f = Filter::new(vec!["*.w".into()], vec![]);
        let p = plan(("ft", &from), ("base", &minus), &f).unwrap();
        assert_eq!(p.tensors.len(), 1);
        assert_eq!(p.filtered_out, 1);
        let none = Filter::new(vec![], vec!["*".into()]);
        let err = plan(("ft", &from), ("base", &minus), &none).unwrap_err();
        assert!(err.to_string().contains("no tensors left"));
    }

    #[test]
    fn mismatches_name_the_tensor() {
        let from = manifest(&[("w", Dtype::F32, &[2, 2], 1)]);
        let minus = manifest(&[("w", Dtype::F32, &[4], 2)]);
        let err = plan(("a", &from), ("b", &minus), &Filter::default()).unwrap_err();
        assert!(err.to_string().contains("tensor `w`"), "{err}");
    }

    #[test]
    fn definitions_depend_on_every_input() {
        let (a, b) = (ObjectId::from_bytes([1; 32]), ObjectId::from_bytes([2; 32]));
        let f = Filter::default();
        let base = definition_id(VectorKind::Task, &a, &b, &f);
        assert_eq!(
            base,
            definition_id(VectorKind::Task, &a, &b, &Filter::new(vec![], vec![]))
        );
        assert_ne!(base, definition_id(VectorKind::Language, &a, &b, &f));
        assert_ne!(base, definition_id(VectorKind::Task, &b, &a, &f));
        assert_ne!(
            base,
            definition_id(
                VectorKind::Task,
                &a,
                &b,
                &Filter::new(vec!["*".into()], vec![])
            )
        );
    }
}
