//! Checkpoints as they arrive and leave: Hugging Face model folders and safetensors files on
//! one side, manifests on the other.
//!
//! Every input is hostile. [`read_model`] checks a folder or file completely (header size
//! limit, offsets inside the file and not overlapping, shape × dtype equal to the byte span,
//! tensor names that cannot act as paths, shards that exist and agree with their index)
//! before the registry writes a single byte, so a bad input leaves the registry untouched.

pub mod export;
pub mod manifest;
pub mod safetensors;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub use self::manifest::{Manifest, ManifestFile, ManifestTensor};
use crate::error::{Error, Result};
use crate::store::codec::Source;
use crate::tensor::Dtype;

/// Files kept beside the weights, restored on export byte for byte.
pub const KEPT_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "preprocessor_config.json",
];

/// Largest kept file accepted (the XLM-R tokenizer.json is 17 MB).
pub const MAX_KEPT_FILE: u64 = 256 << 20;
/// Largest `model.safetensors.index.json` accepted.
pub const MAX_INDEX_FILE: u64 = 64 << 20;

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";

/// An open input file that tensors are read from.
#[derive(Debug)]
pub struct InputFile {
    pub path: PathBuf,
    file: File,
}

/// A tensor of an input, located but not yet read.
#[derive(Debug, Clone)]
pub struct InputTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub file: Arc<InputFile>,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    pub len: u64,
}

impl Source for InputTensor {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset + buf.len() as u64 > self.len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.file.file.read_exact_at(buf, self.offset + offset)
    }
}

/// A kept file of an input (config, tokenizer), read into memory.
#[derive(Debug, Clone)]
pub struct InputBlob {
    pub path: String,
    pub bytes: Vec<u8>,
}

/// A model input, fully validated.
#[derive(Debug)]
pub struct ModelInput {
    pub root: PathBuf,
    /// Sorted by name; names are unique.
    pub tensors: Vec<InputTensor>,
    /// Sorted by path.
    pub files: Vec<InputBlob>,
    /// The safetensors `__metadata__` of the input files, merged.
    pub metadata: BTreeMap<String, String>,
}

impl ModelInput {
    /// `architectures[0]` of config.json, else its `model_type`.
    pub fn architecture(&self) -> Option<String> {
        architecture_of(
            self.files
                .iter()
                .find(|f| f.path == "config.json")
                .map(|f| f.bytes.as_slice()),
        )
    }

    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.len).sum()
    }
}

/// `architectures[0]` of a config.json, else its `model_type`.
pub fn architecture_of(config: Option<&[u8]>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(config?).ok()?;
    v.get("architectures")
        .and_then(|a| a.get(0))
        .or_else(|| v.get("model_type"))
        .and_then(|s| s.as_str())
        .map(str::to_owned)
}

/// Reads and validates a Hugging Face model folder or a single `.safetensors` file.
pub fn read_model(path: &Path) -> Result<ModelInput> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::bad_input(path, "does not exist", "check the path")
        } else {
            Error::io("reading", path, e)
        }
    })?;
    if meta.is_file() {
        let (tensors, metadata) = read_shards(&[path.to_path_buf()])?;
        return Ok(ModelInput {
            root: path.to_path_buf(),
            tensors,
            files: Vec::new(),
            metadata,
        });
    }
    if !meta.is_dir() {
        return Err(Error::bad_input(
            path,
            "is neither a file nor a folder",
            "give a Hugging Face model folder or a .safetensors file",
        ));
    }
    let index = path.join(INDEX_FILE);
    let single = path.join(SINGLE_FILE);
    let (tensors, metadata) = if index.is_file() {
        read_sharded(path, &index)?
    } else if single.is_file() {
        read_shards(&[single])?
    } else {
        let hint = if path.join("pytorch_model.bin").exists() {
            "convert pytorch_model.bin to safetensors first, e.g. `model.save_pretrained(dir, safe_serialization=True)`"
        } else {
            "register a Hugging Face model folder saved with safetensors, or a single .safetensors file"
        };
        return Err(Error::bad_input(
            path,
            format!("not a model folder: it has no `{SINGLE_FILE}` and no `{INDEX_FILE}`"),
            hint,
        ));
    };
    let mut files = Vec::new();
    for name in KEPT_FILES {
        let p = path.join(name);
        if !p.is_file() {
            continue;
        }
        let size = std::fs::metadata(&p)
            .map_err(|e| Error::io("reading", &p, e))?
            .len();
        if size > MAX_KEPT_FILE {
            return Err(Error::bad_input(
                &p,
                format!("is {size} bytes, over the {MAX_KEPT_FILE}-byte limit for kept files"),
                "remove or shrink the file; crossmerge keeps config and tokenizer files only",
            ));
        }
        let bytes = std::fs::read(&p).map_err(|e| Error::io("reading", &p, e))?;
        if Path::new(name)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
            && serde_json::from_slice::<serde_json::Value>(&bytes).is_err()
        {
            return Err(Error::bad_input(
                &p,
                "is not valid JSON",
                "fix or remove the file before registering",
            ));
        }
        files.push(InputBlob {
            path: (*name).to_owned(),
            bytes,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(ModelInput {
        root: path.to_path_buf(),
        tensors,
        files,
        metadata,
    })
}

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

fn read_sharded(dir: &Path, index: &Path) -> Result<(Vec<InputTensor>, BTreeMap<String, String>)> {
    let size = std::fs::metadata(index)
        .map_err(|e| Error::io("reading", index, e))?
        .len();
    if size > MAX_INDEX_FILE {
        return Err(Error::bad_input(
            index,
            format!("is {size} bytes, over the {MAX_INDEX_FILE}-byte limit"),
            "this is not a Hugging Face index file",
        ));
    }
    let bytes = std::fs::read(index).map_err(|e| Error::io("reading", index, e))?;
    let parsed: Index = serde_json::from_slice(&bytes).map_err(|e| {
        Error::bad_input(
            index,
            format!("is not a valid index: {e}"),
            "an index is JSON with a `weight_map` from tensor names to shard files",
        )
    })?;
    let mut shards: Vec<&String> = parsed.weight_map.values().collect();
    shards.sort();
    shards.dedup();
    let mut paths = Vec::new();
    for shard in &shards {
        if !is_plain_file_name(shard) {
            return Err(Error::bad_input(
                index,
                format!(
                    "names shard `{}`, which is not a plain file name",
                    shard.escape_debug()
                ),
                "shards must sit in the model folder itself; fix the index",
            ));
        }
        let p = dir.join(shard);
        if !p.is_file() {
            return Err(Error::bad_input(
                index,
                format!(
                    "names shard `{}`, which does not exist",
                    shard.escape_debug()
                ),
                "the folder is incomplete: copy or download the missing shard",
            ));
        }
        paths.push(p);
    }
    let (tensors, metadata) = read_shards(&paths)?;
    for t in &tensors {
        let file_name = t
            .file
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        match parsed.weight_map.get(&t.name) {
            Some(shard) if shard == file_name => {}
            Some(shard) => {
                return Err(Error::bad_input(
                    index,
                    format!(
                        "puts tensor `{}` in `{shard}` but it is in `{file_name}`",
                        t.name
                    ),
                    "the index and its shards disagree; regenerate the index",
                ));
            }
            None => {
                return Err(Error::bad_input(
                    index,
                    format!("does not list tensor `{}` of shard `{file_name}`", t.name),
                    "the index and its shards disagree; regenerate the index",
                ));
            }
        }
    }
    if tensors.len() != parsed.weight_map.len() {
        let have: std::collections::HashSet<&str> =
            tensors.iter().map(|t| t.name.as_str()).collect();
        let missing = parsed
            .weight_map
            .keys()
            .find(|k| !have.contains(k.as_str()))
            .cloned()
            .unwrap_or_default();
        return Err(Error::bad_input(
            index,
            format!("lists tensor `{missing}`, which no shard holds"),
            "the index and its shards disagree; regenerate the index",
        ));
    }
    Ok((tensors, metadata))
}

fn is_plain_file_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains(['/', '\\', '\0'])
        && Path::new(s).file_name().and_then(|n| n.to_str()) == Some(s)
}

/// Parses every shard and merges them, refusing a tensor name that appears twice.
fn read_shards(paths: &[PathBuf]) -> Result<(Vec<InputTensor>, BTreeMap<String, String>)> {
    let mut tensors = Vec::new();
    let mut metadata = BTreeMap::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for path in paths {
        let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("reading", path, e))?
            .len();
        let header = safetensors::read_header(&file, len)
            .map_err(|problem| Error::bad_input(path, problem.to_string(), problem.hint()))?;
        let input = Arc::new(InputFile {
            path: path.clone(),
            file,
        });
        for (k, v) in header.metadata {
            metadata.entry(k).or_insert(v);
        }
        for t in header.tensors {
            if let Some(other) = seen.insert(t.name.clone(), path.clone()) {
                return Err(Error::bad_input(
                    path,
                    format!("tensor `{}` is also in `{}`", t.name, other.display()),
                    "a tensor name may appear in one shard only; the shards are from different saves",
                ));
            }
            tensors.push(InputTensor {
                name: t.name,
                dtype: t.dtype,
                shape: t.shape,
                file: Arc::clone(&input),
                offset: header.data_start + t.begin,
                len: t.end - t.begin,
            });
        }
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((tensors, metadata))
}
