//! The registry's operations: register, show, export, verify, gc, du.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::writer::{
    Committed, Draft, MemoryTensor, NewFile, NewTensor, RowInfo, TensorData, check_memory_tensors,
};
use super::{Progress, Registry, decode_error};
use crate::catalog::{CheckpointKind, CheckpointRow, NewTraining, ObjectRow};
use crate::checkpoint::export::{index_json, plan_shards, shard_header};
use crate::checkpoint::{Manifest, ManifestFile, ManifestTensor, read_model};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::store::codec::{self, Decoder, ObjectKind, StreamError};

/// What to register a checkpoint as.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RegisterOptions {
    pub name: String,
    pub kind: CheckpointKind,
    /// The base checkpoint: fine-tuned tensors are stored as XOR-deltas against it.
    pub base: Option<String>,
    pub language: Option<String>,
    pub task: Option<String>,
    pub tags: Vec<(String, String)>,
}

impl RegisterOptions {
    pub fn new(name: impl Into<String>, kind: CheckpointKind) -> Self {
        Self {
            name: name.into(),
            kind,
            base: None,
            language: None,
            task: None,
            tags: Vec::new(),
        }
    }

    #[must_use]
    pub fn base(mut self, base: impl Into<String>) -> Self {
        self.base = Some(base.into());
        self
    }

    #[must_use]
    pub fn language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    #[must_use]
    pub fn task(mut self, task: impl Into<String>) -> Self {
        self.task = Some(task.into());
        self
    }

    #[must_use]
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.push((key.into(), value.into()));
        self
    }

    fn validate(&self) -> Result<()> {
        super::check_name("checkpoint", &self.name)?;
        if let Some(l) = &self.language {
            let mut parts = l.split('-');
            let first_ok = parts.next().is_some_and(|p| {
                (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphabetic())
            });
            if !first_ok
                || !parts.all(|p| {
                    (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric())
                })
            {
                return Err(Error::invalid(
                    format!("`{l}` is not a BCP-47 language code"),
                    "use codes such as `en`, `es`, `zh-Hans`, `hi`",
                ));
            }
        }
        if let Some(t) = &self.task
            && (t.is_empty()
                || t.len() > 64
                || !t
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c)))
        {
            return Err(Error::invalid(
                format!("`{t}` is not a valid task name"),
                "use lowercase names such as `ner`, `pos`, `nli`, `dp`, `mlm`",
            ));
        }
        match self.kind {
            CheckpointKind::Language if self.language.is_none() => {
                return Err(Error::invalid(
                    "a language checkpoint needs `--language`",
                    "add e.g. `--language es`",
                ));
            }
            CheckpointKind::Task if self.task.is_none() => {
                return Err(Error::invalid(
                    "a task checkpoint needs `--task`",
                    "add e.g. `--task pos`",
                ));
            }
            _ => {}
        }
        for (k, _) in &self.tags {
            if k.is_empty()
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(Error::invalid(
                    format!("tag key `{k}` is not valid"),
                    "write tags as `--tag key=value` with a key of letters, digits, `.`, `_`, `-`",
                ));
            }
        }
        Ok(())
    }
}

/// What `register` did.
#[derive(Clone, Debug, Serialize)]
pub struct Registered {
    pub checkpoint: CheckpointRow,
    /// False when the latest version of the name already was this exact content.
    pub created: bool,
    pub objects_written: usize,
    pub objects_reused: usize,
    pub delta_objects: usize,
    /// Bytes written to the store.
    pub bytes_written: u64,
}

impl Registry {
    /// Registers a Hugging Face model folder or safetensors file. The input is validated
    /// completely before anything is written; identical content stores no new bytes.
    pub fn register(
        &mut self,
        path: &Path,
        opts: &RegisterOptions,
        progress: &dyn Progress,
    ) -> Result<Registered> {
        opts.validate()?;
        let input = read_model(path)?;
        let tensors = input
            .tensors
            .iter()
            .map(|t| NewTensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                data: TensorData::Bytes {
                    source: t,
                    len: t.len,
                    origin: t.file.path.clone(),
                },
            })
            .collect();
        let files = input
            .files
            .iter()
            .map(|f| NewFile::Bytes {
                path: f.path.clone(),
                bytes: f.bytes.clone(),
            })
            .collect();
        let source = fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string();
        self.write_registration(
            opts,
            tensors,
            files,
            input.metadata.clone(),
            input.architecture(),
            Some(source),
            None,
            progress,
        )
    }

    /// Registers tensors held in memory (a model just trained), with its config and
    /// tokenizer files, through the same writer as [`Registry::register`]: validated as
    /// strictly as a safetensors file (names, duplicates, sizes), stored as deltas against
    /// `opts.base`.
    pub fn register_tensors(
        &mut self,
        tensors: &[MemoryTensor],
        files: &[(String, Vec<u8>)],
        metadata: BTreeMap<String, String>,
        opts: &RegisterOptions,
        progress: &dyn Progress,
    ) -> Result<Registered> {
        self.register_trained(tensors, files, metadata, opts, None, progress)
    }

    /// [`Registry::register_tensors`] with the training run that made the tensors, recorded
    /// in the same catalog transaction as the checkpoint's row.
    pub fn register_trained(
        &mut self,
        tensors: &[MemoryTensor],
        files: &[(String, Vec<u8>)],
        metadata: BTreeMap<String, String>,
        opts: &RegisterOptions,
        training: Option<NewTraining>,
        progress: &dyn Progress,
    ) -> Result<Registered> {
        opts.validate()?;
        check_memory_tensors(tensors)?;
        for (path, _) in files {
            crate::checkpoint::manifest::check_file_path(path).map_err(|why| {
                Error::bad_input(
                    "<memory>",
                    format!("file path `{}`: {why}", path.escape_debug()),
                    "give file paths relative to the model folder, e.g. `config.json`",
                )
            })?;
        }
        let mut sorted: Vec<&MemoryTensor> = tensors.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut files: Vec<(String, Vec<u8>)> = files.to_vec();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let architecture = crate::checkpoint::architecture_of(
            files
                .iter()
                .find(|f| f.0 == "config.json")
                .map(|f| f.1.as_slice()),
        );
        let tensors = sorted
            .iter()
            .map(|t| NewTensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                data: TensorData::Bytes {
                    source: &t.data,
                    len: t.data.len() as u64,
                    origin: PathBuf::from("<memory>"),
                },
            })
            .collect();
        let files = files
            .into_iter()
            .map(|(path, bytes)| NewFile::Bytes { path, bytes })
            .collect();
        self.write_registration(
            opts,
            tensors,
            files,
            metadata,
            architecture,
            None,
            training,
            progress,
        )
    }

    /// What every registration does once its input is read and checked: the base resolved,
    /// then the one checkpoint writer, fine-tuned tensors stored as deltas against the base.
    #[allow(clippy::too_many_arguments)]
    fn write_registration(
        &mut self,
        opts: &RegisterOptions,
        tensors: Vec<NewTensor<'_>>,
        files: Vec<NewFile>,
        metadata: BTreeMap<String, String>,
        architecture: Option<String>,
        source_path: Option<String>,
        training: Option<NewTraining>,
        progress: &dyn Progress,
    ) -> Result<Registered> {
        let base = opts.base.as_deref().map(|b| self.resolve(b)).transpose()?;
        let delta_against = base.as_ref().map(|b| self.manifest(b)).transpose()?;
        let draft = Draft {
            tensors,
            files,
            metadata,
            delta_against,
            row: RowInfo {
                name: opts.name.clone(),
                kind: opts.kind,
                architecture,
                base: base.as_ref().map(|b| b.rowid),
                language: opts.language.clone(),
                task: opts.task.clone(),
                source_path,
                tags: opts.tags.clone(),
            },
            merge: None,
            training,
        };
        Ok(Registered::from(self.write_checkpoint(draft, progress)?))
    }
}

impl From<Committed> for Registered {
    fn from(w: Committed) -> Self {
        Registered {
            checkpoint: w.checkpoint,
            created: w.created,
            objects_written: w.objects_written,
            objects_reused: w.objects_reused,
            delta_objects: w.delta_objects,
            bytes_written: w.bytes_written,
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// A checkpoint with its manifest and per-tensor storage details.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointDetails {
    pub checkpoint: CheckpointRow,
    pub files: Vec<ManifestFile>,
    pub metadata: BTreeMap<String, String>,
    pub stored_size: u64,
    pub tensors: Vec<TensorDetails>,
    /// How a merged checkpoint was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge: Option<crate::catalog::MergeRow>,
    /// How a trained checkpoint was made (the latest run that registered it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<crate::catalog::TrainingRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TensorDetails {
    pub name: String,
    pub dtype: crate::tensor::Dtype,
    pub shape: Vec<u64>,
    pub id: ObjectId,
    pub raw_size: u64,
    pub stored_size: Option<u64>,
    /// `plain` or `delta` (XOR against the base tensor).
    pub encoding: &'static str,
}

impl Registry {
    /// How a checkpoint was made: its merge, or the latest training run that registered it.
    pub fn provenance(
        &self,
        row: &CheckpointRow,
    ) -> Result<(
        Option<crate::catalog::MergeRow>,
        Option<crate::catalog::TrainingRow>,
    )> {
        Ok((
            self.catalog.merge_of(row.rowid)?,
            self.catalog.trainings(Some(row.rowid))?.pop(),
        ))
    }

    /// A checkpoint and what it holds.
    pub fn show(&self, reference: &str) -> Result<CheckpointDetails> {
        let checkpoint = self.resolve(reference)?;
        let manifest = self.manifest(&checkpoint)?;
        let ids: Vec<ObjectId> = manifest
            .tensors
            .iter()
            .map(ManifestTensor::object)
            .collect();
        let rows = self.catalog.objects(&ids)?;
        let tensors: Vec<TensorDetails> = manifest
            .tensors
            .iter()
            .map(|t| {
                let row = rows.get(&t.object());
                TensorDetails {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    id: t.object(),
                    raw_size: t.byte_len(),
                    stored_size: row.and_then(|r| r.stored_size),
                    encoding: if row.is_some_and(|r| r.delta_base.is_some()) {
                        "delta"
                    } else {
                        "plain"
                    },
                }
            })
            .collect();
        let stored_size = self.stored_size_of(&checkpoint)?;
        let (merge, training) = self.provenance(&checkpoint)?;
        Ok(CheckpointDetails {
            merge,
            training,
            checkpoint,
            files: manifest.files,
            metadata: manifest.metadata,
            stored_size,
            tensors,
        })
    }

    /// Bytes on disk of the distinct objects a checkpoint references (not its delta bases).
    /// (The catalog's sizes: no object is read.)
    pub fn stored_size_of(&self, row: &CheckpointRow) -> Result<u64> {
        self.catalog.stored_size(&row.manifest_id)
    }
}

// ---------------------------------------------------------------------------------------------

/// How to export.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ExportOptions {
    /// Split weights into shards of at most this many bytes (`None`: one file).
    pub max_shard_size: Option<u64>,
}

impl ExportOptions {
    #[must_use]
    pub fn max_shard_size(mut self, bytes: Option<u64>) -> Self {
        self.max_shard_size = bytes;
        self
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub checkpoint: String,
    pub out: PathBuf,
    pub files: Vec<String>,
    pub tensor_bytes: u64,
    /// Partial exports to the same place left by interrupted runs, removed first.
    pub cleaned: Vec<PathBuf>,
}

/// Where an export may go: absent, or an empty real folder (not a symbolic link, not a file).
pub(crate) fn check_export_target(out: &Path) -> Result<()> {
    let refuse = |what: &str| {
        Err(Error::invalid(
            format!("`{}` {what}", out.display()),
            "export into a new or empty folder",
        ))
    };
    match fs::symlink_metadata(out) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("reading", out, e)),
        Ok(m) if m.file_type().is_symlink() => refuse("is a symbolic link"),
        Ok(m) if !m.is_dir() => refuse("exists and is not a folder"),
        Ok(_) => match fs::read_dir(out).map(|mut entries| entries.next().is_none()) {
            Ok(true) => Ok(()),
            Ok(false) => refuse("exists and is not empty"),
            Err(e) => Err(Error::io("reading", out, e)),
        },
    }
}

/// Removes `<parent>/<stem><pid>` folders whose process is gone (a killed export's partial
/// copy); returns what it removed.
fn clean_stale_exports(parent: &Path, stem: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.filter_map(std::result::Result::ok) {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(stem)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
        if !alive && fs::remove_dir_all(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

impl Registry {
    /// Writes a checkpoint as a Hugging Face folder at `out` (absent or empty). Every byte is
    /// verified against its id before the folder appears: the export is built in a temporary
    /// sibling folder and renamed into place, so a damaged object never yields a folder.
    pub fn export(
        &self,
        reference: &str,
        out: &Path,
        opts: &ExportOptions,
        progress: &dyn Progress,
    ) -> Result<ExportReport> {
        let checkpoint = self.resolve(reference)?;
        let manifest = self.manifest(&checkpoint)?;
        check_export_target(out)?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| Error::io("creating", &parent, e))?;
        let stem = format!(
            ".{}.crossmerge-export-",
            out.file_name().and_then(|n| n.to_str()).unwrap_or("export")
        );
        let cleaned = clean_stale_exports(&parent, &stem);
        let tmp = parent.join(format!("{stem}{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
        let _lock = self.lock_shared()?;
        let result = self.export_into(&checkpoint, &manifest, &tmp, opts, progress);
        let files = match result {
            Ok(files) => files,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        if out.exists() {
            fs::remove_dir(out).map_err(|e| Error::io("replacing", out, e))?;
        }
        crate::atomic::sync_dir(&tmp)
            .and_then(|()| crate::atomic::rename_durably(&tmp, out))
            .map_err(|e| Error::io("renaming into", out, e))?;
        Ok(ExportReport {
            checkpoint: checkpoint.reference(),
            out: out.to_path_buf(),
            files,
            tensor_bytes: manifest.tensor_bytes(),
            cleaned,
        })
    }

    fn export_into(
        &self,
        checkpoint: &CheckpointRow,
        manifest: &Manifest,
        dir: &Path,
        opts: &ExportOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<String>> {
        let _ = checkpoint;
        let mut written = Vec::new();
        for f in &manifest.files {
            let bytes = self.read_object(&f.object(), Some(&f.path))?;
            let path = dir.join(&f.path);
            crate::atomic::write_synced(&path, &bytes)
                .map_err(|e| Error::io("writing", &path, e))?;
            written.push(f.path.clone());
        }
        let shards = plan_shards(manifest, opts.max_shard_size);
        progress.start("exporting", manifest.tensor_bytes());
        for shard in &shards {
            let path = dir.join(&shard.file_name);
            let file = fs::File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
            let mut behind = crate::write_behind::WriteBehind::new(&file)
                .map_err(|e| Error::io("opening", &path, e))?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            w.write_all(&shard_header(manifest, shard))
                .map_err(|e| Error::io("writing", &path, e))?;
            for &i in &shard.tensors {
                let t = &manifest.tensors[i];
                let id = t.object();
                let dec = Decoder::open(self.backend.as_ref(), &id)
                    .map_err(|e| decode_error(&id, Some(&t.name), e))?;
                dec.stream(&id, &mut |bytes| {
                    progress.advance(bytes.len() as u64);
                    w.write_all(bytes)?;
                    behind.wrote(bytes.len())
                })
                .map_err(|e| match e {
                    StreamError::Decode(d) => decode_error(&id, Some(&t.name), d),
                    StreamError::Sink(io) => Error::io("writing", &path, io),
                })?;
            }
            let file = w
                .into_inner()
                .map_err(|e| Error::io("writing", &path, e.into_error()))?;
            behind
                .finish()
                .map_err(|e| Error::io("syncing", &path, e))?;
            file.sync_all()
                .map_err(|e| Error::io("syncing", &path, e))?;
            written.push(shard.file_name.clone());
        }
        if let Some((name, bytes)) = index_json(manifest, &shards) {
            let path = dir.join(&name);
            crate::atomic::write_synced(&path, &bytes)
                .map_err(|e| Error::io("writing", &path, e))?;
            written.push(name);
        }
        progress.finish();
        written.sort();
        Ok(written)
    }
}

// ---------------------------------------------------------------------------------------------

/// One problem `verify` found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `missing`, `truncated`, `corrupted`, `unreadable`, `unrecorded`, `orphan` or
    /// `damaged-row` (a catalog row this build cannot read).
    pub class: &'static str,
    pub object: Option<ObjectId>,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub objects_checked: usize,
    pub bytes_checked: u64,
    pub checkpoints: usize,
    /// Objects recorded as pending whose write never finished: reclaimable, not damage.
    pub interrupted_writes: usize,
    /// Temporary files from interrupted writes: reclaimable, not damage.
    pub temporary_files: usize,
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

impl Registry {
    /// Re-hashes every object and checks that every catalog row points at a complete object
    /// and every object file is known to the catalog. Findings are data, not errors.
    pub fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let _lock = self.lock_shared()?;
        // Rows this build cannot read come first: the checks below read them.
        let damaged = self.catalog.damaged_rows()?;
        if !damaged.is_empty() {
            return Ok(VerifyReport {
                objects_checked: 0,
                bytes_checked: 0,
                checkpoints: 0,
                interrupted_writes: 0,
                temporary_files: 0,
                findings: damaged
                    .into_iter()
                    .map(|message| Finding {
                        class: "damaged-row",
                        object: None,
                        message: format!(
                            "{message} (fix the row, or `crossmerge rebuild-catalog --force` rebuilds the catalog from the objects)"
                        ),
                    })
                    .collect(),
            });
        }
        let rows = self.catalog.all_objects()?;
        let names = self.catalog.names_of_objects()?;
        let files: HashSet<ObjectId> = self
            .backend
            .list()
            .map_err(|e| Error::io("listing", self.root.join("objects"), e))?
            .into_iter()
            .collect();
        let known: HashSet<ObjectId> = rows.iter().map(|r| r.id).collect();
        let label = |id: &ObjectId| match names.get(id) {
            Some(n) if n.starts_with("file:") => format!(" (file `{}`)", &n[5..]),
            Some(n) => format!(" (tensor `{n}`)"),
            None => String::new(),
        };
        let to_check: Vec<&ObjectRow> = rows
            .iter()
            .filter(|r| r.stored || files.contains(&r.id))
            .collect();
        progress.start("verifying", to_check.iter().map(|r| r.raw_size).sum());
        let backend = self.backend.as_ref();
        let mut findings: Vec<Finding> = to_check
            .par_iter()
            .filter_map(|row| {
                let result = Decoder::open(backend, &row.id).and_then(|d| {
                    if d.header.kind != row.kind {
                        return Err(codec::DecodeError::Corrupted(format!(
                            "holds a {} but the catalog says {}",
                            d.header.kind.name(),
                            row.kind.name()
                        )));
                    }
                    d.stream(&row.id, &mut |_| Ok(())).map_err(|e| match e {
                        StreamError::Decode(d) => d,
                        StreamError::Sink(io) => codec::DecodeError::Io(io),
                    })
                });
                progress.advance(row.raw_size);
                let e = result.err()?;
                let message = match &e {
                    codec::DecodeError::Missing => format!(
                        "missing: object `{}`{} is in the catalog but not in the store",
                        row.id,
                        label(&row.id)
                    ),
                    other => format!(
                        "{}: object `{}`{}: {}",
                        other.class(),
                        row.id,
                        label(&row.id),
                        detail(other)
                    ),
                };
                Some(Finding {
                    class: e.class(),
                    object: Some(row.id),
                    message,
                })
            })
            .collect();
        progress.finish();
        for id in files.difference(&known) {
            findings.push(Finding {
                class: "orphan",
                object: Some(*id),
                message: format!("orphan: object `{id}` is in the store but not in the catalog (`crossmerge gc` removes it)"),
            });
        }
        for (reference, id) in self.catalog.checkpoints_without_manifest()? {
            findings.push(Finding {
                class: "missing",
                object: Some(id),
                message: format!(
                    "missing: checkpoint `{reference}` names manifest `{id}`, which is not stored"
                ),
            });
        }
        for (name, id) in self.catalog.dangling_refs()? {
            findings.push(Finding {
                class: "missing",
                object: Some(id),
                message: format!("missing: `{name}` refers to object `{id}`, which is not stored"),
            });
        }
        let damaged: HashSet<ObjectId> = findings.iter().filter_map(|f| f.object).collect();
        for row in rows
            .iter()
            .filter(|r| r.stored && r.kind == ObjectKind::Manifest && !damaged.contains(&r.id))
        {
            findings.extend(self.check_manifest(&row.id)?);
        }
        findings.sort_by(|a, b| (a.class, &a.message).cmp(&(b.class, &b.message)));
        Ok(VerifyReport {
            objects_checked: to_check.len(),
            bytes_checked: to_check.iter().map(|r| r.raw_size).sum(),
            checkpoints: self
                .catalog
                .checkpoints(&crate::catalog::CheckpointFilter::default())?
                .len(),
            interrupted_writes: rows
                .iter()
                .filter(|r| !r.stored && !files.contains(&r.id))
                .count(),
            temporary_files: self.backend.count_tmp().unwrap_or(0),
            findings,
        })
    }
}

impl Registry {
    /// A stored manifest must parse (file paths inside the folder, names that cannot collide)
    /// and the catalog must record exactly its references, or `gc` would delete what it needs.
    fn check_manifest(&self, id: &ObjectId) -> Result<Vec<Finding>> {
        let bytes = match self.read_object(id, Some("manifest")) {
            Ok(b) => b,
            Err(e) => {
                return Ok(vec![Finding {
                    class: "corrupted",
                    object: Some(*id),
                    message: format!("corrupted: manifest `{id}`: {e}"),
                }]);
            }
        };
        let manifest = match Manifest::parse(&bytes) {
            Ok(m) => m,
            Err(problem) => {
                return Ok(vec![Finding {
                    class: "corrupted",
                    object: Some(*id),
                    message: format!("corrupted: manifest `{id}`: {problem}"),
                }]);
            }
        };
        let recorded: BTreeMap<String, ObjectId> =
            self.catalog.manifest_refs(id)?.into_iter().collect();
        let mut out = Vec::new();
        for (name, object) in manifest.refs() {
            if recorded.get(&name) != Some(&object) {
                out.push(Finding {
                    class: "unrecorded",
                    object: Some(object),
                    message: format!(
                        "unrecorded: manifest `{id}` needs object `{object}` as `{}`, but the catalog does not record it (`gc` would delete it; `crossmerge rebuild-catalog` repairs the catalog)",
                        name.escape_debug()
                    ),
                });
            }
        }
        Ok(out)
    }
}

fn detail(e: &codec::DecodeError) -> String {
    match e {
        codec::DecodeError::Truncated(s) | codec::DecodeError::Corrupted(s) => s.clone(),
        codec::DecodeError::Io(io) => io.to_string(),
        codec::DecodeError::Missing => "missing".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------

/// What `gc` would remove.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcPlan {
    /// Catalogued objects no checkpoint needs.
    pub unreferenced: Vec<ObjectId>,
    /// Object files the catalog does not know.
    pub orphans: Vec<ObjectId>,
    pub temporary_files: usize,
    /// Bytes on disk the objects take.
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct GcReport {
    pub objects_removed: usize,
    pub temporary_files_removed: usize,
    pub bytes_freed: u64,
}

impl Registry {
    /// What `gc` would remove now.
    pub fn gc_plan(&self) -> Result<GcPlan> {
        let live = self.catalog.reachable()?;
        let rows = self.catalog.all_objects()?;
        let known: HashSet<ObjectId> = rows.iter().map(|r| r.id).collect();
        let mut plan = GcPlan::default();
        for r in &rows {
            if !live.contains(&r.id) {
                plan.unreferenced.push(r.id);
                // A pending row has no stored size; its file, if the write got that far, does.
                plan.bytes += match r.stored_size {
                    Some(size) => size,
                    None => self.backend.open(&r.id).map_or(0, |f| f.len()),
                };
            }
        }
        for id in self
            .backend
            .list()
            .map_err(|e| Error::io("listing", self.root.join("objects"), e))?
        {
            if !known.contains(&id) {
                plan.bytes += self.backend.open(&id).map_or(0, |r| r.len());
                plan.orphans.push(id);
            }
        }
        plan.temporary_files = self
            .backend
            .count_tmp()
            .map_err(|e| Error::io("listing", self.root.join("tmp"), e))?;
        Ok(plan)
    }

    /// Removes unreferenced objects, orphan files and temporary files, holding the registry
    /// exclusively. The plan is recomputed under the lock, so it is never stale.
    ///
    /// A catalog that lists no checkpoint while the store holds objects it does not know (or
    /// knows as stored) looks lost rather than empty: gc refuses unless `force`, since it
    /// would delete everything.
    pub fn gc(&mut self, force: bool) -> Result<GcReport> {
        let _lock = self.lock_exclusive()?;
        let plan = self.gc_plan()?;
        if !force {
            let checkpoints = self
                .catalog
                .checkpoints(&crate::catalog::CheckpointFilter::default())?
                .len();
            let stored = self
                .catalog
                .all_objects()?
                .iter()
                .filter(|r| r.stored)
                .count();
            if checkpoints == 0 && (!plan.orphans.is_empty() || stored > 0) {
                return Err(Error::invalid(
                    format!(
                        "the catalog lists no checkpoint but the store holds {} objects: gc would delete them all",
                        plan.orphans.len() + stored
                    ),
                    "if the catalog was lost, run `crossmerge rebuild-catalog`; to delete every object anyway, add `--force`",
                ));
            }
        }
        let objects = self.root.join("objects");
        self.catalog.mark_pending(&plan.unreferenced)?;
        for id in plan.unreferenced.iter().chain(&plan.orphans) {
            self.backend
                .remove(id)
                .map_err(|e| Error::io("removing an object from", &objects, e))?;
        }
        let tmp = self
            .backend
            .clean_tmp()
            .map_err(|e| Error::io("cleaning", self.root.join("tmp"), e))?;
        self.catalog.delete_objects(&plan.unreferenced)?;
        Ok(GcReport {
            objects_removed: plan.unreferenced.len() + plan.orphans.len(),
            temporary_files_removed: tmp,
            bytes_freed: plan.bytes,
        })
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize)]
pub struct DuRow {
    pub checkpoint: String,
    pub kind: CheckpointKind,
    /// Bytes as exported (tensors and kept files).
    pub logical: u64,
    /// Bytes on disk of the objects it references (shared objects count for each user).
    pub stored: u64,
    pub ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DuReport {
    pub checkpoints: Vec<DuRow>,
    pub total_logical: u64,
    /// Bytes on disk of all distinct objects.
    pub total_stored: u64,
    pub total_ratio: f64,
}

fn ratio(stored: u64, logical: u64) -> f64 {
    if logical == 0 {
        0.0
    } else {
        stored as f64 / logical as f64
    }
}

impl Registry {
    /// Logical versus stored bytes, per checkpoint and in total.
    pub fn du(&self) -> Result<DuReport> {
        let rows = self
            .catalog
            .checkpoints(&crate::catalog::CheckpointFilter::default())?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let stored = self.stored_size_of(r)?;
            out.push(DuRow {
                checkpoint: r.reference(),
                kind: r.kind,
                logical: r.logical_size,
                stored,
                ratio: ratio(stored, r.logical_size),
            });
        }
        let total_logical = rows.iter().map(|r| r.logical_size).sum();
        let total_stored = self
            .catalog
            .all_objects()?
            .iter()
            .filter_map(|o| o.stored_size)
            .sum();
        Ok(DuReport {
            checkpoints: out,
            total_logical,
            total_stored,
            total_ratio: ratio(total_stored, total_logical),
        })
    }
}
