//! Manifests: the canonical description of a checkpoint's content.
//!
//! The canonical form is compact JSON of [`Manifest`] with fields in declaration order,
//! tensors sorted by name, files sorted by path, metadata keys sorted (a `BTreeMap`), and
//! no floats anywhere; its id is blake3 (context `crossmerge 2026-11 manifest v1`) over those
//! bytes. Registering the same content twice therefore yields the same manifest id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::ObjectId;
use crate::tensor::Dtype;

pub const MANIFEST_FORMAT: &str = "crossmerge.manifest.v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub tensors: Vec<ManifestTensor>,
    pub files: Vec<ManifestFile>,
    /// The safetensors `__metadata__` of the input, restored on export.
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Tensor id (64 lowercase hex in the JSON).
    pub id: ObjectId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    /// Blob id (64 lowercase hex in the JSON).
    pub id: ObjectId,
}

impl ManifestTensor {
    pub fn object(&self) -> ObjectId {
        self.id
    }

    pub fn byte_len(&self) -> u64 {
        crate::tensor::byte_len(self.dtype, &self.shape).expect("checked on ingest")
    }

    pub fn parameters(&self) -> u64 {
        crate::tensor::element_count(&self.shape).expect("checked on ingest")
    }
}

impl ManifestFile {
    pub fn object(&self) -> ObjectId {
        self.id
    }
}

/// Whether a manifest's file path stays inside the folder it is exported to: relative, no
/// `..`, `.` or empty component, no backslash, NUL or control character, at most 255 bytes.
pub fn check_file_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() || path.len() > 255 {
        return Err("it is empty or longer than 255 bytes");
    }
    if path.chars().any(char::is_control) || path.contains('\\') {
        return Err("it contains a control character or a backslash");
    }
    if path.starts_with('/') {
        return Err("it is an absolute path");
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("it has an empty, `.` or `..` component");
    }
    Ok(())
}

impl Manifest {
    /// Builds a manifest in canonical order.
    pub fn new(
        mut tensors: Vec<ManifestTensor>,
        mut files: Vec<ManifestFile>,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Self {
            format: MANIFEST_FORMAT.to_owned(),
            tensors,
            files,
            metadata,
        }
    }

    /// What the catalog's `manifest_refs` records for this manifest: each tensor by name and
    /// each file as `file:<path>`, with its object. Names never collide: tensor names starting
    /// with `file:` are refused on ingest and by [`Manifest::parse`].
    pub fn refs(&self) -> Vec<(String, ObjectId)> {
        self.tensors
            .iter()
            .map(|t| (t.name.clone(), t.object()))
            .chain(
                self.files
                    .iter()
                    .map(|f| (format!("file:{}", f.path), f.object())),
            )
            .collect()
    }

    /// The canonical bytes that the manifest id hashes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    /// Parses canonical bytes, checking what the type cannot: format, ids, order.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.format != MANIFEST_FORMAT {
            return Err(format!("unknown manifest format `{}`", m.format));
        }
        let sizes_ok = m
            .tensors
            .iter()
            .all(|t| crate::tensor::byte_len(t.dtype, &t.shape).is_some());
        let sorted = m.tensors.windows(2).all(|w| w[0].name < w[1].name)
            && m.files.windows(2).all(|w| w[0].path < w[1].path);
        if !(sizes_ok && sorted) {
            return Err("manifest is not canonical".to_owned());
        }
        for t in &m.tensors {
            crate::checkpoint::safetensors::check_name(&t.name).map_err(|why| {
                format!("manifest names tensor `{}`: {why}", t.name.escape_debug())
            })?;
        }
        for f in &m.files {
            check_file_path(&f.path)
                .map_err(|why| format!("manifest names file `{}`: {why}", f.path.escape_debug()))?;
        }
        Ok(m)
    }

    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(ManifestTensor::byte_len).sum()
    }

    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn parameters(&self) -> u64 {
        self.tensors.iter().map(ManifestTensor::parameters).sum()
    }

    pub fn tensor(&self, name: &str) -> Option<&ManifestTensor> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.tensors[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_with(tensor: &str, file: &str) -> Vec<u8> {
        let id = ObjectId::from_bytes([0xab; 32]);
        Manifest::new(
            vec![ManifestTensor {
                name: tensor.to_owned(),
                dtype: Dtype::F32,
                shape: vec![1],
                id,
            }],
            vec![ManifestFile {
                path: file.to_owned(),
                size: 1,
                id,
            }],
            BTreeMap::new(),
        )
        .canonical_bytes()
    }

    #[test]
    fn ids_are_read_only_in_their_canonical_spelling() {
        let good = manifest_with("a", "config.json");
        assert!(Manifest::parse(&good).is_ok());
        let text = String::from_utf8(good).unwrap();
        let upper = text.replace(&"ab".repeat(32), &"AB".repeat(32));
        assert!(Manifest::parse(upper.as_bytes()).is_err());
        let short = text.replace(&"ab".repeat(32), &"ab".repeat(31));
        assert!(Manifest::parse(short.as_bytes()).is_err());
    }

    #[test]
    fn file_paths_that_leave_the_folder_are_refused() {
        assert!(Manifest::parse(&manifest_with("a", "config.json")).is_ok());
        assert!(Manifest::parse(&manifest_with("a", "sub/tokenizer.json")).is_ok());
        for bad in [
            "/abs/path",
            "../x",
            "a/../../x",
            "",
            "a//b",
            "./x",
            "a\0b",
            "c:\\x",
        ] {
            let err = Manifest::parse(&manifest_with("a", bad)).unwrap_err();
            assert!(err.contains("manifest names file"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn tensor_names_that_collide_with_file_refs_are_refused() {
        let err = Manifest::parse(&manifest_with("file:config.json", "config.json")).unwrap_err();
        assert!(err.contains("`file:`"), "{err}");
    }
}
