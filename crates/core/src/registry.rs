//! The facade: the only module that coordinates the object store and the catalog.
//!
//! Write order (the invariant every crash test checks): objects about to be written are first
//! recorded `pending` in a committed catalog transaction; then each object file is written to
//! `tmp/`, synced and renamed into place; then one transaction marks them `stored` and inserts
//! the checkpoint row. A crash at any point leaves pending rows (whose files may or may not
//! exist, both fine) and at worst stray temporary files; never a stored row without its file,
//! never an object file the catalog does not know. `gc` takes an exclusive lock on
//! `registry/lock`; writers and readers take it shared, so gc never races a register.

mod lineage;
mod merge;
mod ops;
mod records;
mod remote;
mod staging;
mod trace;
mod units;
mod vectors;
mod writer;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use self::lineage::{Lineage, LineageNode};
pub use self::merge::{DEFAULT_MAX_POINTS, MERGE_CONTEXT, MergeOptions, MergedPoint};
pub use self::ops::{
    CheckpointDetails, DuReport, DuRow, ExportOptions, ExportReport, Finding, GcPlan, GcReport,
    RegisterOptions, Registered, TensorDetails, VerifyReport,
};
pub use self::records::{RebuildReport, rebuild_catalog};
pub use self::remote::{PullReport, PushReport, RemoteCheckpoint};
pub use self::trace::{Input as TraceInput, MergeNode, Node as TraceNode, Trace, TrainingNode};
pub use self::units::{
    IngestReport, StagedObject, UNIT_RESULT_FORMAT, UnitCheckpoint, UnitEvaluation, UnitResult,
    UnitTraining, UnitVector, download_unit, staged_objects, upload_unit,
};
pub use self::vectors::{
    ChangedTensor, CompareOptions, DeriveOptions, DiffReport, TensorNorm, VectorDetails,
};
pub use self::writer::MemoryTensor;
pub(crate) use crate::catalog::check_name;
use crate::catalog::{Catalog, CheckpointFilter, CheckpointRow};
use crate::checkpoint::Manifest;
pub(crate) use crate::error::decode_error;
use crate::error::{Error, Result};
use crate::id::{MIN_PREFIX, ObjectId, is_hex_prefix};
pub use crate::progress::{NoProgress, Progress};
use crate::store::codec::Decoder;
use crate::store::{Backend, FsBackend};

/// First line of `registry/FORMAT`.
pub const FORMAT_LINE: &str = "crossmerge registry v1";

pub struct Registry {
    root: PathBuf,
    backend: Arc<dyn Backend>,
    catalog: Catalog,
    lock: File,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Opens the existing registry at `root`; a folder without a registry is an error (a
    /// mistyped path never becomes a new, empty registry). [`Registry::create`] makes one.
    pub fn open(root: &Path) -> Result<Self> {
        Self::check_format(root)?;
        let backend = FsBackend::new(root).map_err(|e| Error::io("opening", root, e))?;
        Self::open_with_backend(root, Arc::new(backend))
    }

    /// Opens the existing registry at `root` for reading only (a viewer, a registry on
    /// read-only storage): nothing is created or migrated, and any write is refused by the
    /// catalog before an object is written. The catalog must be this build's schema.
    pub fn open_read_only(root: &Path) -> Result<Self> {
        Self::check_format(root)?;
        let backend = FsBackend::existing(root).map_err(|e| Error::io("opening", root, e))?;
        let catalog = Catalog::open_read_only(&root.join("catalog.sqlite3"))?;
        // The shared lock keeps gc out while this reads; a registry never written to since
        // this build has no lock file yet, and FORMAT serves.
        let lock_path = [root.join("lock"), root.join("FORMAT")]
            .into_iter()
            .find(|p| p.is_file())
            .unwrap_or_else(|| root.join("FORMAT"));
        let lock = File::open(&lock_path).map_err(|e| Error::io("opening", &lock_path, e))?;
        Ok(Self {
            root: root.to_path_buf(),
            backend: Arc::new(backend),
            catalog,
            lock,
        })
    }

    /// Opens the registry at `root`, creating it first if the folder is absent or empty.
    pub fn create(root: &Path) -> Result<Self> {
        Self::prepare(root)?;
        Self::open(root)
    }

    /// Whether `root` holds a registry this build reads.
    fn check_format(root: &Path) -> Result<()> {
        let format = root.join("FORMAT");
        match fs::read_to_string(&format) {
            Ok(text) if text.lines().next() == Some(FORMAT_LINE) => Ok(()),
            Ok(text) => Err(Error::NotARegistry {
                path: root.to_path_buf(),
                problem: format!(
                    "its FORMAT says `{}`, this crossmerge reads `{FORMAT_LINE}`",
                    text.lines().next().unwrap_or("")
                ),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotARegistry {
                path: root.to_path_buf(),
                problem: if root.exists() {
                    "the folder has no FORMAT file".to_owned()
                } else {
                    "the folder does not exist".to_owned()
                },
            }),
            Err(e) => Err(Error::io("reading", &format, e)),
        }
    }

    /// Opens (creating if needed, like [`Registry::create`]) the registry at `root` with
    /// objects going through `backend` (tests use a fault-injecting one). The catalog stays at
    /// `root/catalog.sqlite3`.
    pub fn open_with_backend(root: &Path, backend: Arc<dyn Backend>) -> Result<Self> {
        Self::prepare(root)?;
        // FORMAT is written only after a new registry's catalog exists: from here on a
        // missing or empty catalog is a loss to report, not a registry to start afresh.
        let catalog = Catalog::open_existing(&root.join("catalog.sqlite3"))?;
        Ok(Self {
            root: root.to_path_buf(),
            backend,
            catalog,
            lock: open_lock(&root.join("lock"))?,
        })
    }

    /// Creates the folder and its FORMAT file if needed; refuses folders that are something else.
    fn prepare(root: &Path) -> Result<()> {
        let format = root.join("FORMAT");
        match fs::read_to_string(&format) {
            Ok(text) if text.lines().next() == Some(FORMAT_LINE) => return Ok(()),
            Ok(text) => {
                return Err(Error::NotARegistry {
                    path: root.to_path_buf(),
                    problem: format!(
                        "its FORMAT says `{}`, this crossmerge reads `{FORMAT_LINE}`",
                        text.lines().next().unwrap_or("")
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("reading", &format, e)),
        }
        // Only what a registry (or one being created concurrently) holds may be there.
        let ours = |name: &str| {
            matches!(name, "objects" | "tmp" | "lock" | "FORMAT" | "training")
                || name.starts_with("catalog.sqlite3")
                || name.starts_with(".FORMAT.")
        };
        let foreign = match fs::read_dir(root) {
            Ok(entries) => entries
                .filter_map(std::result::Result::ok)
                .any(|e| !e.file_name().to_str().is_some_and(ours)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io("reading", root, e)),
        };
        if foreign {
            return Err(Error::NotARegistry {
                path: root.to_path_buf(),
                problem: "the folder has other files and no FORMAT file".to_owned(),
            });
        }
        fs::create_dir_all(root.join("tmp")).map_err(|e| Error::io("creating", root, e))?;
        fs::create_dir_all(root.join("objects")).map_err(|e| Error::io("creating", root, e))?;
        drop(Catalog::open(&root.join("catalog.sqlite3"))?);
        let tmp = root.join(format!(".FORMAT.{}", std::process::id()));
        crate::atomic::write_file(&format, &tmp, format!("{FORMAT_LINE}\n").as_bytes())
            .map_err(|e| Error::io("writing", &format, e))?;
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn lock_shared(&self) -> Result<LockGuard> {
        let err = |e| Error::io("locking", self.root.join("lock"), e);
        let file = self.lock.try_clone().map_err(err)?;
        file.lock_shared().map_err(err)?;
        Ok(LockGuard(file))
    }

    fn lock_exclusive(&self) -> Result<LockGuard> {
        let err = |e| Error::io("locking", self.root.join("lock"), e);
        let file = self.lock.try_clone().map_err(err)?;
        file.lock().map_err(err)?;
        Ok(LockGuard(file))
    }

    /// Stores an evaluation's row (the evaluation itself runs above this crate).
    pub fn record_evaluation(&mut self, evaluation: &crate::catalog::NewEvaluation) -> Result<()> {
        self.catalog.insert_evaluation(evaluation)
    }

    /// Checkpoints matching `filter`.
    pub fn list(&self, filter: &CheckpointFilter) -> Result<Vec<CheckpointRow>> {
        self.catalog.checkpoints(filter)
    }

    /// Resolves `name`, `name@version` or a manifest id prefix (at least 6 hex characters).
    pub fn resolve(&self, reference: &str) -> Result<CheckpointRow> {
        let not_found = |hint: &str| Error::NotFound {
            what: "checkpoint",
            reference: reference.to_owned(),
            hint: hint.to_owned(),
        };
        if let Some((name, version)) = reference.rsplit_once('@') {
            let version: u32 = version.parse().map_err(|_| {
                Error::invalid(
                    format!("`{reference}` has a bad version"),
                    "write `name@N` with N a whole number, e.g. `xlmr-base@2`",
                )
            })?;
            return self
                .catalog
                .checkpoint_by_name(name, Some(version))?
                .ok_or_else(|| not_found("run `crossmerge list` to see the versions there are"));
        }
        if let Some(row) = self.catalog.checkpoint_by_name(reference, None)? {
            return Ok(row);
        }
        if is_hex_prefix(reference) {
            let mut rows = self
                .catalog
                .checkpoints_by_prefix(&reference.to_ascii_lowercase())?;
            // One manifest registered under several names is still one content.
            match rows.len() {
                0 => {}
                1 => return Ok(rows.remove(0)),
                _ => {
                    return Err(Error::Ambiguous {
                        prefix: reference.to_owned(),
                        candidates: rows
                            .iter()
                            .map(|r| format!("{} ({})", r.reference(), r.manifest_id))
                            .collect(),
                    });
                }
            }
        }
        Err(not_found(&format!(
            "run `crossmerge list` to see what is registered; ids need at least {MIN_PREFIX} hex characters"
        )))
    }

    /// The manifest of a checkpoint, read and verified.
    pub fn manifest(&self, row: &CheckpointRow) -> Result<Manifest> {
        let bytes = self.read_object(&row.manifest_id, Some("manifest"))?;
        Manifest::parse(&bytes).map_err(|problem| Error::Corrupt {
            object: row.manifest_id,
            tensor: None,
            problem,
        })
    }

    /// The verified payload of one object. `what` names it in errors (a tensor name).
    pub fn read_object(&self, id: &ObjectId, what: Option<&str>) -> Result<Vec<u8>> {
        let decoded = Decoder::open(self.backend.as_ref(), id).and_then(|d| d.read_all(id));
        decoded.map_err(|e| decode_error(id, what, e))
    }

    /// Stored evaluations, optionally of one checkpoint, task or language.
    pub fn evaluations(
        &self,
        checkpoint: Option<&str>,
        task: Option<&str>,
        language: Option<&str>,
    ) -> Result<Vec<crate::catalog::EvaluationRow>> {
        let rows = self.catalog.evaluations(task, language)?;
        Ok(match checkpoint {
            None => rows,
            Some(c) => {
                let row = self.resolve(c)?;
                rows.into_iter()
                    .filter(|r| r.checkpoint == row.reference())
                    .collect()
            }
        })
    }

    /// The raw little-endian bytes of tensor `name` of a checkpoint, verified.
    pub fn read_tensor(&self, manifest: &Manifest, name: &str) -> Result<Vec<u8>> {
        let t = manifest.tensor(name).ok_or_else(|| Error::NotFound {
            what: "tensor",
            reference: name.to_owned(),
            hint: "run `crossmerge show REF --tensors` to list the tensors".to_owned(),
        })?;
        self.read_object(&t.object(), Some(name))
    }
}

/// Opens (creating it if needed) the lock file writers and readers take shared, gc exclusive.
fn open_lock(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("opening", path, e))
}

/// Releases the registry lock when dropped.
struct LockGuard(File);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}
