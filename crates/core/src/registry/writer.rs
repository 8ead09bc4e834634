//! The one way a checkpoint enters the registry: tensors from files, from memory or from the
//! merge engine, then intent (pending object rows) → objects → one catalog commit.
//!
//! `register`, `register_tensors` (a trained model held in memory) and `merge` all end here:
//! 1. every tensor given as bytes is hashed (its id is its content);
//! 2. the manifest is built, and the objects the store lacks are planned, fine-tuned tensors as
//!    XOR-deltas against the base's tensor of the same name, dtype and shape;
//! 3. their rows go into the catalog as *pending* before any file is written (so an
//!    interrupted write is reclaimable, never unknown);
//! 4. the objects are written (tensors in parallel, each compressed on all cores) or, for
//!    tensors the engine already encoded, committed under their id;
//! 5. one transaction marks them stored, records the manifest's references and inserts the
//!    checkpoint row with its record (see `records.rs`).
//!
//! A failure at any step leaves no checkpoint row. When no other writer is running, the objects
//! and pending rows this write created are removed again, so the registry is exactly as
//! before; otherwise they stay pending for `gc` (a concurrent writer may be storing the same
//! content).

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::PathBuf;

use rayon::prelude::*;

use super::{Progress, Registry, decode_error};
use crate::catalog::{CheckpointRow, NewCheckpoint, NewMerge, NewTraining, ObjectRow};
use crate::checkpoint::{Manifest, ManifestFile, ManifestTensor};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::store::codec::{self, Decoder, EncodeError, Finished, Header, ObjectKind, Source};
use crate::tensor::{Dtype, canonical_prefix};

/// One tensor of a checkpoint being written.
pub struct NewTensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub data: TensorData<'a>,
}

/// Where a tensor's content comes from.
pub enum TensorData<'a> {
    /// Bytes to hash and store (`len` of them): a tensor of a file being registered, or one
    /// held in memory. `origin` names it in errors (the file, or "memory").
    Bytes {
        source: &'a dyn Source,
        len: u64,
        origin: PathBuf,
    },
    /// Already encoded by the merge engine under its id, not yet committed.
    Encoded {
        finished: Finished,
        delta_base: Option<ObjectId>,
    },
    /// An object the registry already stores (a tensor copied unchanged).
    Stored(ObjectId),
}

/// One file of a checkpoint (config, tokenizer).
pub enum NewFile {
    Bytes {
        path: String,
        bytes: Vec<u8>,
    },
    /// A file object the registry already stores.
    Stored(ManifestFile),
}

/// A checkpoint to write.
pub struct Draft<'a> {
    pub tensors: Vec<NewTensor<'a>>,
    pub files: Vec<NewFile>,
    pub metadata: BTreeMap<String, String>,
    /// Tensors given as bytes are stored as deltas against this manifest's tensor of the same
    /// name, dtype and shape, where that object is stored plainly.
    pub delta_against: Option<Manifest>,
    /// What the checkpoint row says beyond its content.
    pub row: RowInfo,
    pub merge: Option<NewMerge>,
    /// The training run that made it (`crossmerge train`), committed with the row.
    pub training: Option<NewTraining>,
}

/// Objects written, with their stored sizes.
type StoredObjects = Vec<(ObjectId, u64)>;

/// A checkpoint row's fields that do not follow from its manifest (the writer derives the
/// manifest id, tensor count, parameters and logical size).
pub struct RowInfo {
    pub name: String,
    pub kind: crate::catalog::CheckpointKind,
    pub architecture: Option<String>,
    /// The base checkpoint's rowid.
    pub base: Option<i64>,
    pub language: Option<String>,
    pub task: Option<String>,
    pub source_path: Option<String>,
    pub tags: Vec<(String, String)>,
}

impl RowInfo {
    fn with(self, manifest: &Manifest, manifest_id: ObjectId) -> NewCheckpoint {
        NewCheckpoint {
            name: self.name,
            kind: self.kind,
            manifest_id,
            architecture: self.architecture,
            base: self.base,
            language: self.language,
            task: self.task,
            source_path: self.source_path,
            tensor_count: manifest.tensors.len() as u64,
            parameters: manifest.parameters(),
            logical_size: manifest.tensor_bytes() + manifest.file_bytes(),
            tags: self.tags,
        }
    }
}

/// What a write did.
#[derive(Clone, Debug)]
pub struct Committed {
    pub checkpoint: CheckpointRow,
    /// False when the latest version of the name already was this exact content.
    pub created: bool,
    pub manifest: Manifest,
    pub objects_written: usize,
    pub objects_reused: usize,
    pub delta_objects: usize,
    pub bytes_written: u64,
}

enum Planned<'a> {
    Bytes {
        id: ObjectId,
        header: Header,
        source: &'a dyn Source,
        origin: PathBuf,
        what: String,
    },
    Encoded {
        id: ObjectId,
        finished: Finished,
    },
}

fn hash_source(source: &dyn Source, dtype: Dtype, shape: &[u64], len: u64) -> io::Result<ObjectId> {
    const WINDOW: usize = 8 << 20;
    let mut h = codec::hasher(ObjectKind::Tensor);
    h.update(&canonical_prefix(dtype, shape));
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(WINDOW).min(WINDOW)];
    let mut offset = 0u64;
    while offset < len {
        let n = usize::try_from((len - offset).min(WINDOW as u64)).unwrap_or(WINDOW);
        source.read_at(offset, &mut buf[..n])?;
        if n >= WINDOW {
            h.update_rayon(&buf[..n]);
        } else {
            h.update(&buf[..n]);
        }
        offset += n as u64;
    }
    Ok(ObjectId::from_bytes(*h.finalize().as_bytes()))
}

impl Registry {
    /// Writes `draft` as a new checkpoint (or finds it is the latest version already): the
    /// one write path of register, `register_tensors` and merge (see the module docs).
    pub(crate) fn write_checkpoint(
        &mut self,
        draft: Draft<'_>,
        progress: &dyn Progress,
    ) -> Result<Committed> {
        let _lock = self.lock_shared()?;
        let Draft {
            tensors,
            files,
            metadata,
            delta_against,
            row,
            merge,
            training,
        } = draft;

        // 1. Name every tensor given as bytes by its content.
        let to_hash: u64 = tensors
            .iter()
            .map(|t| match &t.data {
                TensorData::Bytes { len, .. } => *len,
                _ => 0,
            })
            .sum();
        progress.start("hashing", to_hash);
        let hashed: Vec<Option<ObjectId>> = tensors
            .iter()
            .map(|t| match &t.data {
                TensorData::Bytes {
                    source,
                    len,
                    origin,
                } => Some((*source, *len, origin, t.dtype, t.shape.as_slice())),
                _ => None,
            })
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|job| {
                job.map(|(source, len, origin, dtype, shape)| {
                    let id = hash_source(source, dtype, shape, len)
                        .map_err(|e| Error::io("reading", origin, e))?;
                    progress.advance(len);
                    Ok(id)
                })
                .transpose()
            })
            .collect::<Result<_>>()?;
        let ids: Vec<ObjectId> = tensors
            .iter()
            .zip(hashed)
            .map(|(t, h)| match &t.data {
                TensorData::Bytes { .. } => h.expect("hashed above"),
                TensorData::Encoded { finished, .. } => finished.id,
                TensorData::Stored(id) => *id,
            })
            .collect();
        progress.finish();

        // 2. The manifest, and the objects the store lacks.
        let manifest_tensors: Vec<ManifestTensor> = tensors
            .iter()
            .zip(&ids)
            .map(|(t, id)| ManifestTensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                id: *id,
            })
            .collect();
        let mut file_bytes: Vec<(ObjectId, Vec<u8>)> = Vec::new();
        let manifest_files: Vec<ManifestFile> = files
            .into_iter()
            .map(|f| match f {
                NewFile::Bytes { path, bytes } => {
                    let id = codec::content_id(ObjectKind::Blob, &[], &bytes);
                    let mf = ManifestFile {
                        path,
                        size: bytes.len() as u64,
                        id,
                    };
                    file_bytes.push((id, bytes));
                    mf
                }
                NewFile::Stored(mf) => mf,
            })
            .collect();
        let manifest = Manifest::new(manifest_tensors, manifest_files, metadata);
        let manifest_bytes = manifest.canonical_bytes();
        let manifest_id = codec::content_id(ObjectKind::Manifest, &[], &manifest_bytes);

        let mut check: Vec<ObjectId> = ids.clone();
        check.extend(file_bytes.iter().map(|(id, _)| *id));
        check.push(manifest_id);
        if let Some(bm) = &delta_against {
            check.extend(bm.tensors.iter().map(ManifestTensor::object));
        }
        let known = self.catalog.objects(&check)?;
        let is_stored = |id: &ObjectId| known.get(id).is_some_and(|r| r.stored);
        for (t, id) in tensors.iter().zip(&ids) {
            if matches!(t.data, TensorData::Stored(_)) && !is_stored(id) {
                return Err(Error::MissingObject {
                    object: *id,
                    tensor: Some(t.name.clone()),
                });
            }
        }
        let mut planned: HashSet<ObjectId> = HashSet::new();
        let mut plan: Vec<Planned<'_>> = Vec::new();
        let mut rows: Vec<ObjectRow> = Vec::new();
        let mut blobs: Vec<(ObjectId, Header, Vec<u8>)> = Vec::new();
        for (t, id) in tensors.into_iter().zip(ids.iter().copied()) {
            if is_stored(&id) || !planned.insert(id) {
                continue; // stored already, or the same content twice: written once
            }
            let raw = t.shape.iter().product::<u64>() * t.dtype.size() as u64;
            match t.data {
                TensorData::Bytes {
                    source,
                    len,
                    origin,
                } => {
                    let mut header = Header::new(
                        ObjectKind::Tensor,
                        t.dtype.size() as u8,
                        len,
                        canonical_prefix(t.dtype, &t.shape),
                    );
                    header.delta_base = delta_against.as_ref().and_then(|bm| {
                        let b = bm.tensor(&t.name)?;
                        let row = known.get(&b.object())?;
                        let usable = b.dtype == t.dtype
                            && b.shape == t.shape
                            && row.stored
                            && row.delta_base.is_none()
                            && b.object() != id
                            && len > 0;
                        usable.then(|| b.object())
                    });
                    rows.push(pending_row(id, ObjectKind::Tensor, len, header.delta_base));
                    plan.push(Planned::Bytes {
                        id,
                        header,
                        source,
                        origin,
                        what: format!("tensor `{}`", t.name),
                    });
                }
                TensorData::Encoded {
                    finished,
                    delta_base,
                } => {
                    rows.push(pending_row(id, ObjectKind::Tensor, raw, delta_base));
                    plan.push(Planned::Encoded { id, finished });
                }
                TensorData::Stored(_) => unreachable!("stored objects were skipped"),
            }
        }
        for (id, bytes) in file_bytes {
            if !is_stored(&id) && planned.insert(id) {
                let header = Header::new(ObjectKind::Blob, 1, bytes.len() as u64, Vec::new());
                rows.push(pending_row(id, ObjectKind::Blob, bytes.len() as u64, None));
                blobs.push((id, header, bytes));
            }
        }
        if !is_stored(&manifest_id) && planned.insert(manifest_id) {
            let header = Header::new(
                ObjectKind::Manifest,
                1,
                manifest_bytes.len() as u64,
                Vec::new(),
            );
            rows.push(pending_row(
                manifest_id,
                ObjectKind::Manifest,
                manifest_bytes.len() as u64,
                None,
            ));
            blobs.push((manifest_id, header, manifest_bytes));
        }
        let delta_objects = rows.iter().filter(|r| r.delta_base.is_some()).count();

        // 3. Intent: the rows exist (pending) before any file does.
        self.catalog.insert_pending(&rows)?;
        let mut created: Vec<ObjectId> = rows.iter().map(|r| r.id).collect();

        // 4 and 5. The objects, then the commit; on failure, undo what can safely be undone.
        let result = self.store_and_commit(
            plan,
            blobs,
            &manifest,
            manifest_id,
            row,
            merge.as_ref(),
            training.as_ref(),
            &mut created,
            progress,
        );
        match result {
            Ok((checkpoint, created, stored)) => Ok(Committed {
                checkpoint,
                created,
                objects_written: stored.len(),
                objects_reused: (manifest.refs().len() + 1).saturating_sub(stored.len()),
                delta_objects,
                bytes_written: stored.iter().map(|(_, s)| s).sum(),
                manifest,
            }),
            Err(e) => {
                self.abandon(&created);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn store_and_commit(
        &mut self,
        plan: Vec<Planned<'_>>,
        blobs: Vec<(ObjectId, Header, Vec<u8>)>,
        manifest: &Manifest,
        manifest_id: ObjectId,
        row: RowInfo,
        merge: Option<&NewMerge>,
        training: Option<&NewTraining>,
        created: &mut Vec<ObjectId>,
        progress: &dyn Progress,
    ) -> Result<(CheckpointRow, bool, StoredObjects)> {
        let objects_dir = self.root.join("objects");
        let total: u64 = plan
            .iter()
            .map(|p| match p {
                Planned::Bytes { header, .. } => header.raw_len,
                Planned::Encoded { .. } => 0,
            })
            .sum();
        progress.start("storing", total);
        let backend = self.backend.as_ref();
        let mut stored: Vec<(ObjectId, u64)> = plan
            .into_par_iter()
            .map(|p| match p {
                Planned::Bytes {
                    id,
                    header,
                    source,
                    origin,
                    what,
                } => {
                    let base = header
                        .delta_base
                        .map(|b| {
                            Decoder::open(backend, &b)
                                .map_err(|e| decode_error(&b, Some("delta base"), e))
                        })
                        .transpose()?;
                    let size = codec::write_object(backend, &id, &header, source, base.as_ref())
                        .map_err(|e| encode_error(&objects_dir, &origin, &what, &header, id, e))?;
                    progress.advance(header.raw_len);
                    Ok((id, size))
                }
                Planned::Encoded { id, finished } => {
                    let size = finished.stored;
                    finished
                        .writer
                        .commit(&id)
                        .map_err(|e| Error::io("writing an object into", &objects_dir, e))?;
                    Ok((id, size))
                }
            })
            .collect::<Result<_>>()?;
        for (id, header, bytes) in blobs {
            let size = codec::write_object(backend, &id, &header, &bytes, None)
                .map_err(|e| encode_error(&objects_dir, &objects_dir, "a file", &header, id, e))?;
            stored.push((id, size));
        }
        progress.finish();
        let checkpoint = row.with(manifest, manifest_id);
        let refs = manifest.refs();
        let (row, is_new) =
            self.commit_checkpoint(&stored, &refs, &checkpoint, merge, training, created)?;
        Ok((row, is_new, stored))
    }

    /// After a failed write: when no other writer holds the registry, removes the objects
    /// this write created and their rows (still pending: nothing committed them); otherwise
    /// leaves them pending for `gc`. Best effort: a failure here changes nothing the catalog
    /// believes.
    pub(crate) fn abandon(&mut self, created: &[ObjectId]) {
        if created.is_empty() {
            return;
        }
        let Ok(file) = self.lock.try_clone() else {
            return;
        };
        // Our own shared lock is on this open file description: taking it exclusively succeeds
        // only when no other process holds the registry.
        if file.try_lock().is_err() {
            return;
        }
        let Ok(rows) = self.catalog.objects(created) else {
            return;
        };
        let pending: Vec<ObjectId> = created
            .iter()
            .filter(|id| rows.get(id).is_some_and(|r| !r.stored))
            .copied()
            .collect();
        // Files first: a crash between leaves pending rows without files, which gc clears.
        let mut removed = Vec::new();
        for id in pending {
            if self.backend.remove(&id).is_ok() {
                removed.push(id);
            }
        }
        let _ = self.catalog.delete_pending(&removed);
        let _ = self.backend.clean_tmp();
        let _ = file.lock_shared();
    }
}

fn pending_row(
    id: ObjectId,
    kind: ObjectKind,
    raw: u64,
    delta_base: Option<ObjectId>,
) -> ObjectRow {
    ObjectRow {
        id,
        kind,
        stored: false,
        raw_size: raw,
        stored_size: None,
        delta_base,
    }
}

fn encode_error(
    objects_dir: &std::path::Path,
    origin: &std::path::Path,
    what: &str,
    header: &Header,
    id: ObjectId,
    e: EncodeError,
) -> Error {
    match e {
        EncodeError::Source(io) => Error::io("reading", origin, io),
        EncodeError::Store(io) => Error::io("writing an object into", objects_dir, io),
        EncodeError::Base(d) => Error::Corrupt {
            object: header.delta_base.unwrap_or(id),
            tensor: Some(what.to_owned()),
            problem: format!("delta base {d}"),
        },
        EncodeError::Changed => Error::bad_input(
            origin,
            format!("{what} changed while it was being registered"),
            "do not modify a checkpoint while registering it; run the command again",
        ),
    }
}

/// A tensor held in memory (a trained model's weights), for [`Registry::register_tensors`].
#[derive(Clone, Debug)]
pub struct MemoryTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Little-endian, row-major: exactly as safetensors stores it.
    pub data: Vec<u8>,
}

/// Checks tensors given in memory as strictly as a safetensors file is checked on read.
pub(crate) fn check_memory_tensors(tensors: &[MemoryTensor]) -> Result<()> {
    let origin = PathBuf::from("<memory>");
    let mut seen: HashSet<&str> = HashSet::new();
    for t in tensors {
        crate::checkpoint::safetensors::check_name(&t.name).map_err(|why| {
            Error::bad_input(
                &origin,
                format!("tensor name `{}`: {why}", t.name.escape_debug()),
                "name tensors as a model's state dict does (e.g. `encoder.layer.0.output.dense.weight`)",
            )
        })?;
        if !seen.insert(&t.name) {
            return Err(Error::bad_input(
                &origin,
                format!("tensor `{}` is given twice", t.name),
                "give each tensor once",
            ));
        }
        let expected = crate::tensor::byte_len(t.dtype, &t.shape);
        if expected != Some(t.data.len() as u64) {
            return Err(Error::bad_input(
                &origin,
                format!(
                    "tensor `{}` has {} bytes, but {} of shape {:?} needs {}",
                    t.name,
                    t.data.len(),
                    t.dtype,
                    t.shape,
                    expected.map_or_else(|| "more than 2^64".to_owned(), |e| e.to_string())
                ),
                "give the tensor's elements little-endian and row-major, as safetensors stores them",
            ));
        }
    }
    Ok(())
}
