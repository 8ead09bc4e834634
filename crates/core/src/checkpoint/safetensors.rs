//! A strict safetensors header parser: bytes in, validated tensor locations out.
//!
//! Format: `u64 LE n`, then `n` bytes of JSON (`{"__metadata__": {str: str}, name: {"dtype",
//! "shape", "data_offsets": [begin, end]}}`), then the data; offsets are relative to the data.
//! Hostile input is expected: the header length is capped at [`MAX_HEADER_SIZE`], arithmetic
//! is checked, every tensor's span must lie inside the data, match shape × dtype, and not
//! overlap another's, and names that could act as paths are refused.
//!
//! Why not the `safetensors` crate: measured on the same inputs (the test module
//! `against_the_safetensors_crate` at the end of this file), the crate reads valid files
//! exactly as this parser does, but accepts five of the hostile corpus's files this refuses
//! (control-character, `file:` and path-like names, rank 17, unknown fields), and its
//! `read_metadata` needs the whole file in memory or mapped (`memmap2`, which needs `unsafe`,
//! forbidden in this workspace, and turns a file shrinking underneath into SIGBUS), where this
//! reads the header alone with `pread`. The crate stays in the tests as the oracle: files it
//! writes parse here identically, and every hostile file it refuses is refused here.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;

use serde::Deserialize;

use crate::tensor::{Dtype, byte_len};

/// Largest header accepted, as the safetensors reference implementation caps it.
pub const MAX_HEADER_SIZE: u64 = 100_000_000;
/// Highest rank accepted.
pub const MAX_RANK: usize = 16;
/// Longest tensor name accepted, in bytes.
pub const MAX_NAME: usize = 1024;
/// How the catalog names a manifest's files beside its tensors; no tensor name may start so.
pub const FILE_REF_PREFIX: &str = "file:";

#[derive(Debug)]
pub struct HeaderTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub begin: u64,
    pub end: u64,
}

#[derive(Debug)]
pub struct Header {
    /// File offset where the data section starts (8 + header length).
    pub data_start: u64,
    pub tensors: Vec<HeaderTensor>,
    pub metadata: BTreeMap<String, String>,
}

/// Why a safetensors file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    TooShort {
        len: u64,
    },
    HeaderTooLarge {
        n: u64,
    },
    HeaderPastEnd {
        n: u64,
        len: u64,
    },
    NotJson(String),
    BadEntry {
        name: String,
        why: String,
    },
    BadName {
        name: String,
        why: &'static str,
    },
    UnknownDtype {
        name: String,
        dtype: String,
    },
    RankTooHigh {
        name: String,
        rank: usize,
    },
    SizeMismatch {
        name: String,
        need: Option<u64>,
        span: u64,
    },
    PastEnd {
        name: String,
        begin: u64,
        end: u64,
        data: u64,
    },
    Overlap {
        first: String,
        second: String,
        at: u64,
    },
    Unreadable(String),
    /// The same key twice in the header (a tensor name, or `__metadata__`).
    Duplicate {
        name: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::TooShort { len } => write!(
                f,
                "truncated: {len} bytes, too short for a safetensors header"
            ),
            Problem::HeaderTooLarge { n } => write!(
                f,
                "header length {n} exceeds the limit of {MAX_HEADER_SIZE} bytes"
            ),
            Problem::HeaderPastEnd { n, len } => write!(
                f,
                "truncated: the header claims {n} bytes but the file has {len}"
            ),
            Problem::NotJson(e) => write!(f, "the header is not valid safetensors JSON: {e}"),
            Problem::BadEntry { name, why } => write!(f, "tensor `{name}`: {why}"),
            Problem::BadName { name, why } => {
                write!(f, "tensor name `{}` is refused: {why}", name.escape_debug())
            }
            Problem::UnknownDtype { name, dtype } => {
                write!(f, "tensor `{name}` has unknown dtype `{dtype}`")
            }
            Problem::RankTooHigh { name, rank } => write!(
                f,
                "tensor `{name}` has rank {rank}, over the limit of {MAX_RANK}"
            ),
            Problem::SizeMismatch {
                name,
                need: Some(need),
                span,
            } => write!(
                f,
                "tensor `{name}`: its shape and dtype need {need} bytes but its offsets span {span}"
            ),
            Problem::SizeMismatch {
                name,
                need: None,
                span,
            } => write!(
                f,
                "tensor `{name}`: its shape overflows (offsets span {span} bytes)"
            ),
            Problem::PastEnd {
                name,
                begin,
                end,
                data,
            } => write!(
                f,
                "tensor `{name}`: data offsets [{begin}, {end}] run past the end of the data ({data} bytes)"
            ),
            Problem::Overlap { first, second, at } => write!(
                f,
                "tensors `{first}` and `{second}` overlap at data byte {at}"
            ),
            Problem::Unreadable(e) => write!(f, "cannot be read: {e}"),
            Problem::Duplicate { name } => {
                write!(f, "the header names `{}` twice", name.escape_debug())
            }
        }
    }
}

impl Problem {
    pub fn hint(&self) -> &'static str {
        match self {
            Problem::TooShort { .. } | Problem::HeaderPastEnd { .. } | Problem::PastEnd { .. } => {
                "the file is incomplete or damaged; copy or download it again"
            }
            Problem::HeaderTooLarge { .. } | Problem::NotJson(_) => {
                "this is not a safetensors file (or a damaged one)"
            }
            Problem::BadName { .. } => {
                "tensor names must not contain `..`, a leading `/`, backslashes or control characters, nor start with `file:`; rename the tensor and save again"
            }
            Problem::Duplicate { .. } => {
                "a safetensors header names each tensor once (the reference implementation refuses this file); re-save the checkpoint"
            }
            Problem::UnknownDtype { .. } => {
                "supported dtypes: BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2"
            }
            Problem::BadEntry { .. }
            | Problem::RankTooHigh { .. }
            | Problem::SizeMismatch { .. }
            | Problem::Overlap { .. } => {
                "the header is inconsistent with its data; re-save the checkpoint"
            }
            Problem::Unreadable(_) => "check the file's permissions and the disk",
        }
    }
}

impl std::error::Error for Problem {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// Whether a tensor name is acceptable; `Err` says why not.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MAX_NAME {
        return Err("it is longer than 1024 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("it contains a control character");
    }
    if name.starts_with('/') || name.contains('\\') {
        return Err("it looks like a path");
    }
    // The catalog records a manifest's files as `file:<path>` beside its tensor names.
    if name.starts_with(FILE_REF_PREFIX) {
        return Err("`file:` starts the registry's names for a checkpoint's files");
    }
    if name.split(['/', '.']).any(|seg| seg == "..") || name.contains("/..") || name.contains("..")
    {
        return Err("it contains `..`");
    }
    Ok(())
}

/// Reads and validates the header of a safetensors file of `len` bytes.
pub fn read_header(file: &File, len: u64) -> Result<Header, Problem> {
    if len < 8 {
        return Err(Problem::TooShort { len });
    }
    let mut n = [0u8; 8];
    file.read_exact_at(&mut n, 0)
        .map_err(|e| Problem::Unreadable(e.to_string()))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_SIZE {
        return Err(Problem::HeaderTooLarge { n });
    }
    if n.checked_add(8).is_none_or(|end| end > len) {
        return Err(Problem::HeaderPastEnd { n, len });
    }
    let mut raw = vec![0u8; usize::try_from(n).expect("capped above")];
    file.read_exact_at(&mut raw, 8)
        .map_err(|e| Problem::Unreadable(e.to_string()))?;
    parse_header(&raw, len - 8 - n).map(|(tensors, metadata)| Header {
        data_start: 8 + n,
        tensors,
        metadata,
    })
}

/// Parses a whole safetensors file held in memory (what the fuzz target drives).
pub fn parse_bytes(bytes: &[u8]) -> Result<Header, Problem> {
    let len = bytes.len() as u64;
    let n = header_len(bytes.get(..8).unwrap_or(&[]), len)?;
    let raw = &bytes[8..8 + usize::try_from(n).expect("capped")];
    parse_header(raw, len - 8 - n).map(|(tensors, metadata)| Header {
        data_start: 8 + n,
        tensors,
        metadata,
    })
}

/// Checks the 8-byte length prefix of a file of `len` bytes; returns the header length.
fn header_len(prefix: &[u8], len: u64) -> Result<u64, Problem> {
    let Ok(n) = <[u8; 8]>::try_from(prefix) else {
        return Err(Problem::TooShort { len });
    };
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_SIZE {
        return Err(Problem::HeaderTooLarge { n });
    }
    if n.checked_add(8).is_none_or(|end| end > len) {
        return Err(Problem::HeaderPastEnd { n, len });
    }
    Ok(n)
}

/// A JSON object's entries in order, duplicates kept (a `Map` would keep the last silently).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Parses header JSON for a data section of `data_len` bytes. Tensors come back sorted by name.
pub fn parse_header(
    raw: &[u8],
    data_len: u64,
) -> Result<(Vec<HeaderTensor>, BTreeMap<String, String>), Problem> {
    let text = std::str::from_utf8(raw).map_err(|e| Problem::NotJson(e.to_string()))?;
    let Entries(entries) = serde_json::from_str(text.trim_end_matches(' '))
        .map_err(|e| Problem::NotJson(e.to_string()))?;
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    if let Some((name, _)) = entries.iter().find(|(k, _)| !seen.insert(k.as_str())) {
        return Err(Problem::Duplicate { name: name.clone() });
    }
    let mut tensors = Vec::with_capacity(entries.len());
    let mut metadata = BTreeMap::new();
    for (name, value) in entries {
        if name == "__metadata__" {
            metadata = serde_json::from_value(value).map_err(|e| {
                Problem::NotJson(format!("`__metadata__` must map strings to strings: {e}"))
            })?;
            continue;
        }
        check_name(&name).map_err(|why| Problem::BadName {
            name: name.clone(),
            why,
        })?;
        let entry: Entry = serde_json::from_value(value).map_err(|e| Problem::BadEntry {
            name: name.clone(),
            why: e.to_string(),
        })?;
        let dtype = Dtype::from_name(&entry.dtype).ok_or_else(|| Problem::UnknownDtype {
            name: name.clone(),
            dtype: entry.dtype.clone(),
        })?;
        if entry.shape.len() > MAX_RANK {
            return Err(Problem::RankTooHigh {
                name,
                rank: entry.shape.len(),
            });
        }
        let (begin, end) = entry.data_offsets;
        if begin > end || end > data_len {
            return Err(Problem::PastEnd {
                name,
                begin,
                end,
                data: data_len,
            });
        }
        let need = byte_len(dtype, &entry.shape);
        if need != Some(end - begin) {
            return Err(Problem::SizeMismatch {
                name,
                need,
                span: end - begin,
            });
        }
        tensors.push(HeaderTensor {
            name,
            dtype,
            shape: entry.shape,
            begin,
            end,
        });
    }
    let mut by_offset: Vec<&HeaderTensor> = tensors.iter().filter(|t| t.end > t.begin).collect();
    by_offset.sort_by_key(|t| (t.begin, t.end));
    for pair in by_offset.windows(2) {
        if pair[1].begin < pair[0].end {
            return Err(Problem::Overlap {
                first: pair[0].name.clone(),
                second: pair[1].name.clone(),
                at: pair[1].begin,
            });
        }
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str, data: u64) -> Result<Vec<HeaderTensor>, Problem> {
        parse_header(json.as_bytes(), data).map(|(t, _)| t)
    }

    #[test]
    fn accepts_a_valid_header() {
        let t = parse(
            r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"BF16","shape":[],"data_offsets":[8,10]}}"#,
            10,
        )
        .unwrap();
        assert_eq!(
            t.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn refuses_each_kind_of_damage() {
        let cases = [
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                "overlap",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                "past the end",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                "need 12 bytes",
            ),
            (
                r#"{"a":{"dtype":"Q4","shape":[3],"data_offsets":[0,8]}}"#,
                "unknown dtype",
            ),
            (
                r#"{"x/../y":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                "`..`",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,8]}}"#,
                "overflows",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}"#,
                "unknown field",
            ),
            ("[1,2]", "not valid"),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                "names `a` twice",
            ),
            (
                r#"{"__metadata__":{"x":"1"},"__metadata__":{"x":"2"}}"#,
                "names `__metadata__` twice",
            ),
            (
                r#"{"file:config.json":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                "`file:`",
            ),
        ];
        for (json, expect) in cases {
            let err = parse(json, 12).unwrap_err().to_string();
            assert!(err.contains(expect), "{json}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse_bytes(&bytes);
        }

        #[test]
        fn arbitrary_headers_never_panic(json in "\\{(\"[a-z./]{0,6}\":\\{\"dtype\":\"(F32|BF16|U8)\",\"shape\":\\[[0-9]{0,3}(,[0-9]{1,2})?\\],\"data_offsets\":\\[[0-9]{1,3},[0-9]{1,3}\\]\\},?){0,3}\\}") {
            let _ = parse_header(json.as_bytes(), 64);
        }
    }

    #[test]
    fn names_that_act_as_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "a\\b",
            "a\nb",
            "..",
            "a/..",
            "file:config.json",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in [
            "roberta.encoder.layer.0.attention.self.query.weight",
            "lm_head.bias",
            "a/b",
        ] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }
}

/// The measurement behind keeping this parser rather than the `safetensors` crate's: the crate
/// (0.8, the version candle resolves) and this parser read the same files. On valid files they
/// agree exactly; on the hostile corpus every file the crate refuses is refused here too, and
/// the crate accepts the five pinned below: tensor names with control characters, `file:` or
/// path syntax (which the registry's manifests and exports must never carry), a rank of 17,
/// and a tensor entry with a field safetensors does not define. The crate
/// also needs the whole file in memory (or mapped, which needs `unsafe` and dies with SIGBUS
/// when the file shrinks underneath), where this reads only the header.
#[cfg(test)]
mod against_the_safetensors_crate {
    use std::path::{Path, PathBuf};

    use super::parse_bytes;

    fn corpus() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hostile/safetensors")
    }

    /// Hostile files the crate accepts and crossmerge refuses.
    const CRATE_ACCEPTS: &[&str] = &[
        "control-char-name.safetensors",
        "file-ref-name.safetensors",
        "path-name.safetensors",
        "rank-17.safetensors",
        "unknown-field.safetensors",
    ];

    #[test]
    fn every_hostile_file_the_crate_refuses_is_refused_here_and_the_rest_are_pinned() {
        let mut crate_accepts = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(corpus())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(files.len() >= 15, "the hostile corpus is missing");
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            let name = f.file_name().unwrap().to_str().unwrap().to_owned();
            assert!(parse_bytes(&bytes).is_err(), "crossmerge accepts {name}");
            if safetensors::SafeTensors::read_metadata(&bytes).is_ok() {
                crate_accepts.push(name);
            }
        }
        assert_eq!(crate_accepts, CRATE_ACCEPTS);
    }

    #[test]
    fn on_valid_files_both_read_the_same_tensors() {
        use crate::tensor::Dtype;
        let cases: Vec<Vec<(&str, Dtype, Vec<u64>)>> = vec![
            vec![],
            vec![
                ("a", Dtype::F32, vec![2, 3]),
                ("b.weight", Dtype::F16, vec![5]),
            ],
            vec![
                ("scalar", Dtype::F64, vec![]),
                ("empty", Dtype::Bf16, vec![0, 4]),
                ("ids", Dtype::I64, vec![1, 7]),
                ("mask", Dtype::Bool, vec![3]),
            ],
        ];
        for tensors in cases {
            // Written by the crate itself, with metadata.
            let views: Vec<(String, safetensors::tensor::TensorView<'static>)> = tensors
                .iter()
                .map(|(n, d, s)| {
                    let dtype = match d {
                        Dtype::F32 => safetensors::Dtype::F32,
                        Dtype::F16 => safetensors::Dtype::F16,
                        Dtype::F64 => safetensors::Dtype::F64,
                        Dtype::Bf16 => safetensors::Dtype::BF16,
                        Dtype::I64 => safetensors::Dtype::I64,
                        Dtype::Bool => safetensors::Dtype::BOOL,
                        other => unreachable!("{other}"),
                    };
                    let shape: Vec<usize> = s.iter().map(|x| *x as usize).collect();
                    let len = shape.iter().product::<usize>() * d.size();
                    let data: &'static [u8] = Box::leak(vec![7u8; len].into_boxed_slice());
                    let view = safetensors::tensor::TensorView::new(dtype, shape, data).unwrap();
                    ((*n).to_owned(), view)
                })
                .collect();
            let meta = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
            let bytes = safetensors::serialize(views, Some(meta)).unwrap();
            let ours = parse_bytes(&bytes).unwrap();
            let (_, theirs) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            assert_eq!(ours.metadata.get("format").map(String::as_str), Some("pt"));
            assert_eq!(ours.tensors.len(), theirs.tensors().len());
            for t in &ours.tensors {
                let info = theirs.info(&t.name).unwrap();
                assert_eq!(t.dtype.name(), format!("{:?}", info.dtype), "{}", t.name);
                assert_eq!(
                    t.shape,
                    info.shape.iter().map(|x| *x as u64).collect::<Vec<_>>()
                );
                assert_eq!(
                    (t.begin, t.end),
                    (info.data_offsets.0 as u64, info.data_offsets.1 as u64)
                );
            }
        }
    }
}
