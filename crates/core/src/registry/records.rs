//! Checkpoint records, and rebuilding a lost catalog from the objects.
//!
//! Every checkpoint row is also written as a small blob object, its *record* (canonical JSON:
//! name, version, kind, manifest, base as `name@version` + manifest id, language, task, tags,
//! creation time and, for merges, the recipe provenance; `schemas/FORMAT.md` §10). The record
//! is stored before the catalog commits the row, like every object, and the row points at it
//! (`checkpoints.record_id`), so `gc` keeps it. A record is written for one version: when a
//! concurrent writer takes that version first, the commit is refused and a record for the
//! next version is written (the first stays unreferenced, and `gc` removes it).
//!
//! [`rebuild_catalog`] re-reads every object (re-hashing it), recreates the object rows and
//! manifest references, and the checkpoints from their records. Vectors, evaluations and rows
//! registered before records existed live only in the catalog: FORMAT.md says what is lost.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{FORMAT_LINE, Progress, Registry};
use crate::catalog::{
    Catalog, CheckpointKind, CheckpointRow, Commit, NewCheckpoint, NewMerge, NewTraining,
    ObjectRow, RecordRef,
};
use crate::checkpoint::Manifest;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::store::codec::{self, Decoder, Header, ObjectKind, StreamError};
use crate::store::{Backend, FsBackend};

pub const RECORD_FORMAT: &str = "crossmerge.checkpoint-record.v1";

/// A checkpoint row as an object.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointRecord {
    pub(crate) format: String,
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) kind: String,
    pub(crate) manifest: String,
    pub(crate) base: Option<BaseRef>,
    pub(crate) architecture: Option<String>,
    pub(crate) language: Option<String>,
    pub(crate) task: Option<String>,
    pub(crate) source_path: Option<String>,
    pub(crate) tags: Vec<(String, String)>,
    pub(crate) created_at: String,
    pub(crate) merge: Option<MergeRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BaseRef {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) manifest: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MergeRecord {
    pub(crate) recipe_hash: String,
    pub(crate) method: String,
    pub(crate) recipe_canonical: String,
    pub(crate) recipe_source: String,
    pub(crate) recipe_path: Option<String>,
    pub(crate) inputs: Vec<String>,
}

impl CheckpointRecord {
    /// The row this record describes, for `manifest` (stored as `manifest_id`) on `base` (a
    /// row of the catalog it goes into).
    pub(crate) fn new_checkpoint(
        &self,
        kind: CheckpointKind,
        manifest_id: ObjectId,
        manifest: &Manifest,
        base: Option<i64>,
    ) -> NewCheckpoint {
        NewCheckpoint {
            name: self.name.clone(),
            kind,
            manifest_id,
            architecture: self.architecture.clone(),
            base,
            language: self.language.clone(),
            task: self.task.clone(),
            source_path: self.source_path.clone(),
            tensor_count: manifest.tensors.len() as u64,
            parameters: manifest.parameters(),
            logical_size: manifest.tensor_bytes() + manifest.file_bytes(),
            tags: self.tags.clone(),
        }
    }

    /// The merge provenance this record carries.
    pub(crate) fn new_merge(&self) -> Option<NewMerge> {
        self.merge.as_ref().map(|m| NewMerge {
            recipe_hash: m.recipe_hash.clone(),
            method: m.method.clone(),
            recipe_canonical: m.recipe_canonical.clone(),
            recipe_source: m.recipe_source.clone(),
            recipe_path: m.recipe_path.clone(),
            inputs: m.inputs.clone(),
        })
    }
}

impl Registry {
    /// The last step of every checkpoint write: its record object, then one catalog
    /// transaction (objects stored, references, the row, merge provenance).
    pub(crate) fn commit_checkpoint(
        &mut self,
        stored: &[(ObjectId, u64)],
        refs: &[(String, ObjectId)],
        new: &NewCheckpoint,
        merge: Option<&NewMerge>,
        training: Option<&NewTraining>,
        created: &mut Vec<ObjectId>,
    ) -> Result<(CheckpointRow, bool)> {
        if self.catalog.latest_if_same(new)?.is_some() {
            // Registering the same thing again: no record, the row is there. (If another
            // writer added a version meanwhile, this commits nothing and a record follows.)
            if let Commit::Done(row, created) = self
                .catalog
                .commit_checkpoint(stored, refs, new, merge, training, None)?
            {
                return Ok((*row, created));
            }
        }
        let base = new
            .base
            .map(|rowid| self.catalog.checkpoint_by_rowid(rowid))
            .transpose()?;
        for _ in 0..64 {
            let version = self.catalog.next_checkpoint_version(&new.name)?;
            let created_at = self.catalog.now()?;
            let record = CheckpointRecord {
                format: RECORD_FORMAT.to_owned(),
                name: new.name.clone(),
                version,
                kind: new.kind.as_str().to_owned(),
                manifest: new.manifest_id.to_hex(),
                base: base.as_ref().map(|b| BaseRef {
                    name: b.name.clone(),
                    version: b.version,
                    manifest: b.manifest_id.to_hex(),
                }),
                architecture: new.architecture.clone(),
                language: new.language.clone(),
                task: new.task.clone(),
                source_path: new.source_path.clone(),
                tags: new.tags.clone(),
                created_at: created_at.clone(),
                merge: merge.map(|m| MergeRecord {
                    recipe_hash: m.recipe_hash.clone(),
                    method: m.method.clone(),
                    recipe_canonical: m.recipe_canonical.clone(),
                    recipe_source: m.recipe_source.clone(),
                    recipe_path: m.recipe_path.clone(),
                    inputs: m.inputs.clone(),
                }),
            };
            let bytes = serde_json::to_vec(&record).expect("a record serializes");
            let (id, size) = self.store_blob(&bytes, created)?;
            let mut all = stored.to_vec();
            all.push((id, size));
            let rec = RecordRef {
                id,
                version,
                created_at,
            };
            match self
                .catalog
                .commit_checkpoint(&all, refs, new, merge, training, Some(&rec))?
            {
                Commit::Done(row, created) => return Ok((*row, created)),
                Commit::VersionTaken => {}
            }
        }
        Err(Error::invalid(
            format!(
                "`{}` kept getting new versions from other writers",
                new.name
            ),
            "run the command again",
        ))
    }

    /// Stores a small blob (pending row, file, not yet marked stored): its id and stored size.
    /// Its id goes into `created` once its pending row exists.
    fn store_blob(&mut self, bytes: &[u8], created: &mut Vec<ObjectId>) -> Result<(ObjectId, u64)> {
        let id = codec::content_id(ObjectKind::Blob, &[], bytes);
        let header = Header::new(ObjectKind::Blob, 1, bytes.len() as u64, Vec::new());
        self.catalog.insert_pending(&[ObjectRow {
            id,
            kind: ObjectKind::Blob,
            stored: false,
            raw_size: bytes.len() as u64,
            stored_size: None,
            delta_base: None,
        }])?;
        created.push(id);
        let objects = self.root.join("objects");
        let size = codec::write_object(self.backend.as_ref(), &id, &header, &bytes.to_vec(), None)
            .map_err(|e| {
                Error::io(
                    "writing an object into",
                    &objects,
                    io::Error::other(e.to_string()),
                )
            })?;
        Ok((id, size))
    }
}

/// What `rebuild-catalog` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RebuildReport {
    pub objects: usize,
    /// Objects that failed their check and were left out (their files stay, as orphans).
    pub damaged: Vec<String>,
    /// Checkpoints recovered from their records, as `name@version`.
    pub checkpoints: Vec<String>,
    /// Manifests no record names (registered before records existed, or an interrupted
    /// write): recovered as base checkpoints named `recovered/<id prefix>`.
    pub unnamed: Vec<String>,
    /// Records whose `name@version` was taken by an earlier record: given the next version.
    pub renumbered: Vec<String>,
    /// Where the unreadable catalog was moved, if there was one.
    pub moved_aside: Vec<PathBuf>,
}

/// Recreates the catalog of the registry at `root` from its objects. Refuses while a readable
/// catalog lists checkpoints, unless `force` (which moves it aside first, as it does with an
/// unreadable one). The new catalog is built under a temporary name and renamed into place.
pub fn rebuild_catalog(root: &Path, force: bool, progress: &dyn Progress) -> Result<RebuildReport> {
    let format = root.join("FORMAT");
    match fs::read_to_string(&format) {
        Ok(t) if t.lines().next() == Some(FORMAT_LINE) => {}
        _ => {
            return Err(Error::NotARegistry {
                path: root.to_path_buf(),
                problem: "it has no FORMAT file".to_owned(),
            });
        }
    }
    let lock_path = root.join("lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io("opening", &lock_path, e))?;
    lock.lock()
        .map_err(|e| Error::io("locking", &lock_path, e))?;

    let catalog_path = root.join("catalog.sqlite3");
    let mut report = RebuildReport::default();
    if catalog_path.exists() {
        let readable = fs::metadata(&catalog_path).is_ok_and(|m| m.len() > 0)
            && Catalog::open_existing(&catalog_path)
                .and_then(|c| c.checkpoints(&crate::catalog::CheckpointFilter::default()))
                .is_ok_and(|rows| !rows.is_empty());
        if readable && !force {
            return Err(Error::invalid(
                format!(
                    "`{}` is readable and lists checkpoints",
                    catalog_path.display()
                ),
                "rebuild-catalog is for a lost or damaged catalog; add `--force` to move this one aside and rebuild anyway",
            ));
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for suffix in ["", "-wal", "-shm"] {
            let from = root.join(format!("catalog.sqlite3{suffix}"));
            if from.exists() {
                let to = root.join(format!("catalog.sqlite3.broken-{stamp}{suffix}"));
                fs::rename(&from, &to).map_err(|e| Error::io("moving aside", &from, e))?;
                report.moved_aside.push(to);
            }
        }
    }
    let building = root.join("catalog.sqlite3.rebuilding");
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(root.join(format!("catalog.sqlite3.rebuilding{suffix}")));
    }
    let backend = FsBackend::new(root).map_err(|e| Error::io("opening", root, e))?;
    let mut catalog = Catalog::open(&building)?;
    recover_into(&mut catalog, &backend, root, &mut report, progress)?;
    drop(catalog);
    crate::atomic::rename_durably(&building, &catalog_path)
        .map_err(|e| Error::io("renaming into", &catalog_path, e))?;
    drop(lock);
    Ok(report)
}

struct Scanned {
    row: ObjectRow,
    manifest: Option<Manifest>,
    record: Option<CheckpointRecord>,
}

fn recover_into(
    catalog: &mut Catalog,
    backend: &dyn Backend,
    root: &Path,
    report: &mut RebuildReport,
    progress: &dyn Progress,
) -> Result<()> {
    let ids = backend
        .list()
        .map_err(|e| Error::io("listing", root.join("objects"), e))?;
    progress.start("re-reading objects", ids.len() as u64);
    let scanned: Vec<std::result::Result<Scanned, String>> = ids
        .par_iter()
        .map(|id| {
            let r = scan(backend, id).map_err(|e| format!("{id}: {e}"));
            progress.advance(1);
            r
        })
        .collect();
    progress.finish();
    let mut objects = Vec::new();
    let mut manifests: HashMap<ObjectId, Manifest> = HashMap::new();
    let mut records = Vec::new();
    for s in scanned {
        match s {
            Ok(s) => {
                if let Some(m) = s.manifest {
                    manifests.insert(s.row.id, m);
                }
                if let Some(r) = s.record {
                    records.push((s.row.id, r));
                }
                objects.push(s.row);
            }
            Err(e) => report.damaged.push(e),
        }
    }
    report.damaged.sort();
    report.objects = objects.len();
    // A delta whose base is gone cannot be read: leave it out like a damaged object.
    let present: std::collections::HashSet<ObjectId> = objects.iter().map(|o| o.id).collect();
    objects.retain(|o| {
        let ok = o.delta_base.is_none_or(|b| present.contains(&b));
        if !ok {
            report
                .damaged
                .push(format!("{}: its delta base is missing", o.id));
        }
        ok
    });
    catalog.insert_recovered_objects(&objects)?;
    let kept: std::collections::HashSet<ObjectId> = objects.iter().map(|o| o.id).collect();
    for (id, m) in &manifests {
        if kept.contains(id) {
            catalog.insert_recovered_refs(id, &m.refs())?;
        }
    }

    // Checkpoints, oldest record first so bases exist before what was made from them.
    records.retain(|(_, r)| {
        ObjectId::parse_hex(&r.manifest)
            .is_some_and(|m| manifests.contains_key(&m) && kept.contains(&m))
    });
    records.sort_by(|a, b| {
        (&a.1.created_at, &a.1.name, a.1.version).cmp(&(&b.1.created_at, &b.1.name, b.1.version))
    });
    let mut by_ref: BTreeMap<(String, u32), i64> = BTreeMap::new();
    let mut highest: HashMap<String, u32> = HashMap::new();
    let mut named: std::collections::HashSet<ObjectId> = std::collections::HashSet::new();
    for (record_id, r) in &records {
        let manifest_id = ObjectId::parse_hex(&r.manifest).expect("checked above");
        let manifest = &manifests[&manifest_id];
        named.insert(manifest_id);
        let Some(kind) = CheckpointKind::parse(&r.kind) else {
            report.damaged.push(format!(
                "{record_id}: record of `{}` has unknown kind `{}`",
                r.name, r.kind
            ));
            continue;
        };
        let mut version = r.version;
        if by_ref.contains_key(&(r.name.clone(), version)) {
            version = highest.get(&r.name).copied().unwrap_or(0) + 1;
            report
                .renumbered
                .push(format!("{}@{} → {}@{version}", r.name, r.version, r.name));
        }
        let base = r
            .base
            .as_ref()
            .and_then(|b| by_ref.get(&(b.name.clone(), b.version)).copied());
        let new = r.new_checkpoint(kind, manifest_id, manifest, base);
        let merge = r.new_merge();
        let rec = RecordRef {
            id: *record_id,
            version,
            created_at: r.created_at.clone(),
        };
        let row = catalog.insert_recovered_checkpoint(&new, version, Some(&rec), merge.as_ref())?;
        by_ref.insert((r.name.clone(), version), row.rowid);
        let h = highest.entry(r.name.clone()).or_insert(0);
        *h = (*h).max(version);
        report.checkpoints.push(row.reference());
    }
    let mut unnamed: Vec<&ObjectId> = manifests
        .keys()
        .filter(|id| kept.contains(id) && !named.contains(id))
        .collect();
    unnamed.sort();
    for id in unnamed {
        let manifest = &manifests[id];
        let new = NewCheckpoint {
            name: format!("recovered/{}", &id.to_hex()[..12]),
            kind: CheckpointKind::Base,
            manifest_id: *id,
            architecture: None,
            base: None,
            language: None,
            task: None,
            source_path: None,
            tensor_count: manifest.tensors.len() as u64,
            parameters: manifest.parameters(),
            logical_size: manifest.tensor_bytes() + manifest.file_bytes(),
            tags: Vec::new(),
        };
        let row = catalog.insert_recovered_checkpoint(&new, 1, None, None)?;
        report.unnamed.push(row.reference());
    }
    Ok(())
}

/// Re-reads one object completely (re-hashing it) and parses manifests and records.
fn scan(backend: &dyn Backend, id: &ObjectId) -> std::result::Result<Scanned, String> {
    let dec = Decoder::open(backend, id).map_err(|e| e.to_string())?;
    let kind = dec.header.kind;
    // Manifests and small blobs are parsed; everything is streamed through the hash check.
    let keep = kind == ObjectKind::Manifest
        || (kind == ObjectKind::Blob && dec.header.raw_len < (1 << 20));
    let mut bytes = Vec::new();
    dec.stream(id, &mut |b| {
        if keep {
            bytes.extend_from_slice(b);
        }
        Ok(())
    })
    .map_err(|e| match e {
        StreamError::Decode(d) => d.to_string(),
        StreamError::Sink(io) => io.to_string(),
    })?;
    let manifest = if kind == ObjectKind::Manifest {
        Some(Manifest::parse(&bytes).map_err(|p| format!("manifest: {p}"))?)
    } else {
        None
    };
    let record = if kind == ObjectKind::Blob
        && bytes.starts_with(b"{\"format\":\"crossmerge.checkpoint-record.v1\"")
    {
        serde_json::from_slice::<CheckpointRecord>(&bytes).ok()
    } else {
        None
    };
    Ok(Scanned {
        row: ObjectRow {
            id: *id,
            kind,
            stored: true,
            raw_size: dec.header.raw_len,
            stored_size: Some(dec.stored_len()),
            delta_base: dec.header.delta_base,
        },
        manifest,
        record,
    })
}
