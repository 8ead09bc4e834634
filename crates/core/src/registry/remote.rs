//! Remote registries: checkpoints and their lineage pushed to and pulled from an object store
//! (`s3://bucket/prefix`, or `file:///path` on a shared file system).
//!
//! A remote holds no catalog (`schemas/FORMAT.md` §13):
//!
//! ```text
//! PREFIX/FORMAT                           "crossmerge remote v1"
//! PREFIX/objects/ab/<hex>                 object files, byte for byte as a registry stores them
//! PREFIX/records/checkpoints/<hex>.json   checkpoint records (§10's JSON); hex = its blob id
//! PREFIX/records/vectors/<hex>.json       vector definitions (kind, from, minus, filters)
//! ```
//!
//! A vector travels as its definition with its two checkpoints: pulled, it is derived again
//! here from them (a vector is defined by its inputs, §7) and must come out with the same
//! definition hash.
//!
//! Push uploads the objects the remote lacks (one listing says which), then the records, so a
//! record on the remote means its objects are there; everything is content-addressed, so
//! several pushers at once write the same bytes to the same keys and lose nothing. A delta
//! object travels as it is stored (the fine-tune's XOR delta, compressed) with its base object
//! beside it, which is why a fine-tune whose base is already remote costs only its deltas.
//!
//! Pull stages what is missing under `tmp/pull-<manifest id>/` (kept if the pull fails or dies,
//! so the next pull fetches only the rest; `gc` removes it), decodes and
//! re-hashes every staged object (deltas against their staged or local bases) before any of it
//! enters the store, and then goes through the registry's one write path: pending rows, the
//! objects, and one commit with the checkpoint's row and record. Bases come before what was
//! made from them; a checkpoint whose content is already here under its name is skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use super::records::{BaseRef, CheckpointRecord, MergeRecord, RECORD_FORMAT};
use super::staging::{StagedBackend, WriterSink};
use super::{DeriveOptions, Progress, Registry};
use crate::catalog::{CheckpointFilter, CheckpointKind, CheckpointRow, ObjectRow, VectorKind};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::store::codec::{self, Decoder, ObjectKind};
use crate::store::remote::{RemoteConfig, RemoteStore};
use crate::store::{Backend, FsBackend};

/// First line of a remote's `FORMAT`.
pub const REMOTE_FORMAT: &str = "crossmerge remote v1";
const RECORDS: &str = "records/checkpoints";
const VECTOR_RECORDS: &str = "records/vectors";
pub const VECTOR_RECORD_FORMAT: &str = "crossmerge.vector-record.v1";
/// Transfers at once.
const TRANSFERS: usize = 8;

/// What `push` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PushReport {
    pub remote: String,
    /// The checkpoints pushed (asked for, and the bases they need), bases first.
    pub checkpoints: Vec<String>,
    pub objects_sent: usize,
    pub bytes_sent: u64,
    /// Objects the remote had already.
    pub objects_present: usize,
    pub records_sent: usize,
    /// Vectors pushed (their definitions; their checkpoints are in `checkpoints`).
    pub vectors: Vec<String>,
}

/// What `pull` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PullReport {
    pub remote: String,
    /// The checkpoints as they are named here now, bases first.
    pub checkpoints: Vec<String>,
    /// Of those, the ones that were here already.
    pub present: Vec<String>,
    pub objects_received: usize,
    pub bytes_received: u64,
    /// Vectors derived here from their pulled checkpoints, as named here.
    pub vectors: Vec<String>,
}

/// A checkpoint on a remote, as `ls-remote` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct RemoteCheckpoint {
    pub name: String,
    pub version: u32,
    pub kind: String,
    pub manifest_id: String,
    pub base: Option<String>,
    pub language: Option<String>,
    pub task: Option<String>,
    pub created_at: String,
    /// The record's key under `records/checkpoints/`.
    pub record: String,
}

/// A vector on a remote, as `ls-remote` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct RemoteVector {
    pub name: String,
    pub version: u32,
    pub kind: String,
    pub from: String,
    pub minus: String,
    pub definition: String,
    pub record: String,
}

/// What a remote holds.
#[derive(Clone, Debug, Serialize)]
pub struct RemoteListing {
    pub checkpoints: Vec<RemoteCheckpoint>,
    pub vectors: Vec<RemoteVector>,
}

/// A vector's definition on a remote.
#[derive(Clone, Debug, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct VectorRecord {
    format: String,
    name: String,
    version: u32,
    kind: String,
    from: BaseRef,
    minus: BaseRef,
    include: Vec<String>,
    exclude: Vec<String>,
    definition: String,
    created_at: String,
}

/// The registry's remotes, kept in `REGISTRY/remotes.toml` (names and URLs; never
/// credentials).
#[derive(Debug, Default, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RemotesFile {
    #[serde(default)]
    remotes: BTreeMap<String, RemoteEntry>,
}

#[derive(Clone, Debug, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RemoteEntry {
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(default)]
    allow_http: bool,
}

impl Registry {
    fn remotes_path(&self) -> PathBuf {
        self.root.join("remotes.toml")
    }

    fn read_remotes(&self) -> Result<RemotesFile> {
        let path = self.remotes_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                Error::bad_input(
                    &path,
                    e.message().to_owned(),
                    "fix or remove the file; `crossmerge remote add` writes it",
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(RemotesFile::default()),
            Err(e) => Err(Error::io("reading", &path, e)),
        }
    }

    fn write_remotes(&self, file: &RemotesFile) -> Result<()> {
        let path = self.remotes_path();
        let text = toml::to_string(file).expect("remotes serialise");
        let tmp = self.root.join("tmp").join("remotes.toml.partial");
        crate::atomic::write_file(&path, &tmp, text.as_bytes())
            .map_err(|e| Error::io("writing", &path, e))
    }

    /// Adds remote `name` at `url` (checked, not contacted).
    pub fn remote_add(&self, config: &RemoteConfig) -> Result<()> {
        crate::catalog::check_name("remote", &config.name)?;
        crate::store::remote::check_url(&config.url).map_err(|(message, hint)| Error::Remote {
            remote: config.name.clone(),
            message,
            hint,
        })?;
        if let Some(e) = &config.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(Error::Remote {
                remote: config.name.clone(),
                message: format!("`{e}` is not an http(s) endpoint"),
                hint: "give --endpoint as http://HOST:PORT or https://HOST".to_owned(),
            });
        }
        let mut file = self.read_remotes()?;
        if let Some(old) = file.remotes.get(&config.name) {
            return Err(Error::invalid(
                format!("remote `{}` exists already ({})", config.name, old.url),
                format!(
                    "remove it first (`crossmerge remote remove {}`) or choose another name",
                    config.name
                ),
            ));
        }
        file.remotes.insert(
            config.name.clone(),
            RemoteEntry {
                url: config.url.clone(),
                endpoint: config.endpoint.clone(),
                allow_http: config.allow_http,
            },
        );
        self.write_remotes(&file)
    }

    /// Forgets remote `name` (nothing on the remote changes).
    pub fn remote_remove(&self, name: &str) -> Result<()> {
        let mut file = self.read_remotes()?;
        if file.remotes.remove(name).is_none() {
            return Err(unknown_remote(name));
        }
        self.write_remotes(&file)
    }

    /// The remotes, by name.
    pub fn remotes(&self) -> Result<Vec<RemoteConfig>> {
        Ok(self
            .read_remotes()?
            .remotes
            .into_iter()
            .map(|(name, e)| RemoteConfig {
                name,
                url: e.url,
                endpoint: e.endpoint,
                allow_http: e.allow_http,
            })
            .collect())
    }

    /// The remote `name` as this registry names it.
    pub fn remote(&self, name: &str) -> Result<RemoteConfig> {
        self.remotes()?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| unknown_remote(name))
    }

    fn open_remote(&self, name: &str) -> Result<RemoteStore> {
        let config = self.remote(name)?;
        RemoteStore::open(&config)
    }

    /// The checkpoints on remote `name`.
    pub fn ls_remote(&self, name: &str) -> Result<RemoteListing> {
        let remote = self.open_remote(name)?;
        expect_registry(&remote)?;
        let mut out: Vec<RemoteCheckpoint> = remote_records::<CheckpointRecord>(&remote, RECORDS)?
            .into_iter()
            .map(|(key, r)| RemoteCheckpoint {
                name: r.name,
                version: r.version,
                kind: r.kind,
                manifest_id: r.manifest,
                base: r.base.map(|b| format!("{}@{}", b.name, b.version)),
                language: r.language,
                task: r.task,
                created_at: r.created_at,
                record: key,
            })
            .collect();
        out.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        let mut vectors: Vec<RemoteVector> =
            remote_records::<VectorRecord>(&remote, VECTOR_RECORDS)?
                .into_iter()
                .map(|(key, v)| RemoteVector {
                    name: v.name,
                    version: v.version,
                    kind: v.kind,
                    from: format!("{}@{}", v.from.name, v.from.version),
                    minus: format!("{}@{}", v.minus.name, v.minus.version),
                    definition: v.definition,
                    record: key,
                })
                .collect();
        vectors.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        Ok(RemoteListing {
            checkpoints: out,
            vectors,
        })
    }

    /// Pushes `references` (and the bases they need) to remote `name`.
    pub fn push(
        &self,
        name: &str,
        references: &[String],
        progress: &dyn Progress,
    ) -> Result<PushReport> {
        let remote = self.open_remote(name)?;
        // Everything is resolved before the remote is contacted.
        let mut order: Vec<CheckpointRow> = Vec::new();
        let mut vectors: Vec<crate::catalog::VectorRow> = Vec::new();
        let mut roots: Vec<String> = Vec::new();
        for r in references {
            match self.resolve(r) {
                Ok(_) => roots.push(r.clone()),
                Err(e @ Error::NotFound { .. }) => {
                    let v = self.resolve_vector(r).map_err(|_| e)?;
                    roots.push(v.from.clone());
                    roots.push(v.minus.clone());
                    vectors.push(v);
                }
                Err(e) => return Err(e),
            }
        }
        for r in &roots {
            let mut chain = vec![self.resolve(r)?];
            while let Some(base) = chain.last().and_then(|c| c.base.clone()) {
                chain.push(self.resolve(&base)?);
            }
            for row in chain.into_iter().rev() {
                if !order.iter().any(|o| o.rowid == row.rowid) {
                    order.push(row);
                }
            }
        }
        match remote.get("FORMAT")? {
            None => remote.put("FORMAT", format!("{REMOTE_FORMAT}\n").into_bytes())?,
            Some(bytes) => check_format(&remote, &bytes)?,
        }
        let present: HashSet<ObjectId> = remote
            .list("objects")?
            .into_iter()
            .filter_map(|(k, _)| k.rsplit('/').next().and_then(ObjectId::parse_hex))
            .collect();
        let records: HashSet<String> = remote.list(RECORDS)?.into_iter().map(|(k, _)| k).collect();
        let vector_records: HashSet<String> = remote
            .list(VECTOR_RECORDS)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let mut report = PushReport {
            remote: name.to_owned(),
            ..PushReport::default()
        };
        // The objects of every checkpoint, with the delta bases they are stored against.
        let mut wanted: Vec<ObjectId> = Vec::new();
        let mut seen: HashSet<ObjectId> = HashSet::new();
        for row in &order {
            let manifest = self.manifest(row)?;
            let mut ids = vec![row.manifest_id];
            ids.extend(manifest.refs().into_iter().map(|(_, id)| id));
            let rows = self.catalog.objects(&ids)?;
            for id in &ids {
                let stored = rows
                    .get(id)
                    .filter(|r| r.stored)
                    .ok_or(Error::MissingObject {
                        object: *id,
                        tensor: None,
                    })?;
                if let Some(b) = stored.delta_base
                    && seen.insert(b)
                {
                    wanted.push(b);
                }
                if seen.insert(*id) {
                    wanted.push(*id);
                }
            }
        }
        let missing: Vec<ObjectId> = wanted
            .iter()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        report.objects_present = wanted.len() - missing.len();
        let sizes: Vec<u64> = missing
            .iter()
            .map(|id| self.backend.open(id).map(|r| r.len()))
            .collect::<io::Result<_>>()
            .map_err(|e| Error::io("reading", self.root.join("objects"), e))?;
        progress.start(
            &format!("push {} objects", missing.len()),
            sizes.iter().sum(),
        );
        let backend = self.backend.as_ref();
        let objects = self.root.join("objects");
        parallel(&missing, |id| {
            let reader = backend
                .open(id)
                .map_err(|e| Error::io("reading", &objects, e))?;
            let n = remote.put_reader(&object_key(id), reader.as_ref())?;
            progress.advance(n);
            Ok(())
        })?;
        progress.finish();
        report.objects_sent = missing.len();
        report.bytes_sent = sizes.iter().sum();
        // Records last: a record on the remote means its objects are there.
        for row in &order {
            let record = self.record_of(row)?;
            let bytes = serde_json::to_vec(&record).expect("a record serialises");
            let key = format!(
                "{}.json",
                codec::content_id(ObjectKind::Blob, &[], &bytes).to_hex()
            );
            if !records.contains(&key) {
                remote.put(&format!("{RECORDS}/{key}"), bytes)?;
                report.records_sent += 1;
            }
            report.checkpoints.push(row.reference());
        }
        for v in &vectors {
            let side = |r: &str| -> Result<BaseRef> {
                let row = self.resolve(r)?;
                Ok(BaseRef {
                    name: row.name,
                    version: row.version,
                    manifest: row.manifest_id.to_hex(),
                })
            };
            let record = VectorRecord {
                format: VECTOR_RECORD_FORMAT.to_owned(),
                name: v.name.clone(),
                version: v.version,
                kind: v.kind.as_str().to_owned(),
                from: side(&v.from)?,
                minus: side(&v.minus)?,
                include: v.include.clone(),
                exclude: v.exclude.clone(),
                definition: v.definition.to_hex(),
                created_at: v.created_at.clone(),
            };
            let bytes = serde_json::to_vec(&record).expect("a record serialises");
            let key = format!(
                "{}.json",
                codec::content_id(ObjectKind::Blob, &[], &bytes).to_hex()
            );
            if !vector_records.contains(&key) {
                remote.put(&format!("{VECTOR_RECORDS}/{key}"), bytes)?;
                report.records_sent += 1;
            }
            report.vectors.push(v.reference());
        }
        Ok(report)
    }

    /// The record of a checkpoint as it stands in this catalog.
    fn record_of(&self, row: &CheckpointRow) -> Result<CheckpointRecord> {
        let base = row.base.as_deref().map(|b| self.resolve(b)).transpose()?;
        let merge = self.catalog.merge_of(row.rowid)?;
        Ok(CheckpointRecord {
            format: RECORD_FORMAT.to_owned(),
            name: row.name.clone(),
            version: row.version,
            kind: row.kind.as_str().to_owned(),
            manifest: row.manifest_id.to_hex(),
            base: base.map(|b| BaseRef {
                name: b.name,
                version: b.version,
                manifest: b.manifest_id.to_hex(),
            }),
            architecture: row.architecture.clone(),
            language: row.language.clone(),
            task: row.task.clone(),
            source_path: row.source_path.clone(),
            tags: row.tags.clone(),
            created_at: row.created_at.clone(),
            merge: merge.map(|m| MergeRecord {
                recipe_hash: m.recipe_hash,
                method: m.method,
                recipe_canonical: m.recipe_canonical,
                recipe_source: m.recipe_source,
                recipe_path: m.recipe_path,
                inputs: m.inputs,
            }),
        })
    }

    /// Pulls `references` (names, `name@version` or manifest id prefixes as the remote knows
    /// them) and the bases they need from remote `name`.
    pub fn pull(
        &mut self,
        name: &str,
        references: &[String],
        progress: &dyn Progress,
    ) -> Result<PullReport> {
        let remote = self.open_remote(name)?;
        expect_registry(&remote)?;
        let records: Vec<CheckpointRecord> = remote_records(&remote, RECORDS)?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        let vector_records: Vec<VectorRecord> = remote_records(&remote, VECTOR_RECORDS)?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        // The record a base (or a vector's side) names: by name, version and manifest, else by
        // manifest alone.
        let by_ref = |b: &BaseRef, what: &str| -> Result<&CheckpointRecord> {
            records
                .iter()
                .find(|x| x.name == b.name && x.version == b.version && x.manifest == b.manifest)
                .or_else(|| records.iter().find(|x| x.manifest == b.manifest))
                .ok_or_else(|| Error::Remote {
                    remote: name.to_owned(),
                    message: format!(
                        "{what} needs `{}@{}`, which the remote does not hold",
                        b.name, b.version
                    ),
                    hint: "push it to the remote from a registry that has it".to_owned(),
                })
        };
        let mut order: Vec<&CheckpointRecord> = Vec::new();
        let mut wanted_vectors: Vec<&VectorRecord> = Vec::new();
        let mut roots: Vec<&CheckpointRecord> = Vec::new();
        for r in references {
            match find_record(&records, r, name) {
                Ok(rec) => roots.push(rec),
                Err(e @ Error::NotFound { .. }) => {
                    let v = find_vector(&vector_records, r).ok_or(e)?;
                    let what = format!("vector `{}@{}`", v.name, v.version);
                    roots.push(by_ref(&v.from, &what)?);
                    roots.push(by_ref(&v.minus, &what)?);
                    wanted_vectors.push(v);
                }
                Err(e) => return Err(e),
            }
        }
        for root in roots {
            let mut chain = vec![root];
            while let Some(b) = chain.last().and_then(|c| c.base.as_ref()) {
                let last = chain[chain.len() - 1];
                let base = by_ref(b, &format!("`{}@{}`", last.name, last.version))?;
                chain.push(base);
            }
            for rec in chain.into_iter().rev() {
                if !order.iter().any(|o| std::ptr::eq(*o, rec)) {
                    order.push(rec);
                }
            }
        }
        let mut report = PullReport {
            remote: name.to_owned(),
            ..PullReport::default()
        };
        // One listing gives every object's size (for the progress bar).
        let sizes: HashMap<ObjectId, u64> = remote
            .list("objects")?
            .into_iter()
            .filter_map(|(k, n)| Some((k.rsplit('/').next().and_then(ObjectId::parse_hex)?, n)))
            .collect();
        let lock = self.lock_shared()?;
        for rec in order {
            let manifest_id = ObjectId::parse_hex(&rec.manifest).ok_or_else(|| {
                damaged_record(
                    name,
                    &format!("`{}` names manifest `{}`", rec.name, rec.manifest),
                )
            })?;
            let local = self.catalog.checkpoints(&CheckpointFilter::default())?;
            if let Some(row) = local
                .iter()
                .rev()
                .find(|c| c.manifest_id == manifest_id && c.name == rec.name)
            {
                report.checkpoints.push(row.reference());
                report.present.push(row.reference());
                // A pull killed between its commit and its clean-up left the staging behind.
                let _ = std::fs::remove_dir_all(staging_dir(&self.root, &manifest_id));
                continue;
            }
            let base = match &rec.base {
                None => None,
                Some(b) => {
                    let m = ObjectId::parse_hex(&b.manifest).ok_or_else(|| {
                        damaged_record(name, &format!("`{}`'s base manifest", rec.name))
                    })?;
                    let row = local
                        .iter()
                        .rev()
                        .find(|c| c.manifest_id == m && c.name == b.name)
                        .or_else(|| local.iter().find(|c| c.manifest_id == m))
                        .ok_or_else(|| {
                            Error::invalid(
                                format!("the base of `{}` is not here", rec.name),
                                "report this: bases are pulled first",
                            )
                        })?;
                    Some(row.rowid)
                }
            };
            let row = self.pull_one(
                &remote,
                rec,
                manifest_id,
                base,
                &sizes,
                &mut report,
                progress,
            )?;
            report.checkpoints.push(row.reference());
        }
        drop(lock);
        for v in wanted_vectors {
            let d = self.derive_pulled(v, name)?;
            report.vectors.push(d);
        }
        Ok(report)
    }

    /// Derives pulled vector `v` from its checkpoints (here now) and checks its definition.
    fn derive_pulled(&mut self, v: &VectorRecord, remote: &str) -> Result<String> {
        let kind = VectorKind::parse(&v.kind)
            .ok_or_else(|| damaged_record(remote, &format!("vector kind `{}`", v.kind)))?;
        let local = self.catalog.checkpoints(&CheckpointFilter::default())?;
        let side = |b: &BaseRef| -> Result<String> {
            let m = ObjectId::parse_hex(&b.manifest)
                .ok_or_else(|| damaged_record(remote, &format!("vector `{}`'s inputs", v.name)))?;
            local
                .iter()
                .rev()
                .find(|c| c.manifest_id == m && c.name == b.name)
                .or_else(|| local.iter().rev().find(|c| c.manifest_id == m))
                .map(CheckpointRow::reference)
                .ok_or_else(|| {
                    Error::invalid(
                        format!("`{}@{}` was not pulled", b.name, b.version),
                        "report this: a vector's checkpoints are pulled first",
                    )
                })
        };
        let mut opts =
            DeriveOptions::new(kind, v.name.clone(), side(&v.from)?).minus(side(&v.minus)?);
        for g in &v.include {
            opts = opts.include(g.clone());
        }
        for g in &v.exclude {
            opts = opts.exclude(g.clone());
        }
        let d = self.derive(&opts, &super::NoProgress)?;
        if d.vector.definition.to_hex() != v.definition {
            return Err(Error::Remote {
                remote: remote.to_owned(),
                message: format!(
                    "vector `{}` derives here as definition {}, the remote's record says {}",
                    v.name,
                    d.vector.definition,
                    &v.definition[..v.definition.len().min(12)]
                ),
                hint: "the record or its checkpoints differ from what was pushed; push the vector again"
                    .to_owned(),
            });
        }
        Ok(d.vector.reference())
    }

    /// Stages, checks and commits one checkpoint's missing objects and its row.
    fn pull_one(
        &mut self,
        remote: &RemoteStore,
        rec: &CheckpointRecord,
        manifest_id: ObjectId,
        base: Option<i64>,
        sizes: &HashMap<ObjectId, u64>,
        report: &mut PullReport,
        progress: &dyn Progress,
    ) -> Result<CheckpointRow> {
        let kind = CheckpointKind::parse(&rec.kind)
            .ok_or_else(|| damaged_record(remote.name(), &format!("kind `{}`", rec.kind)))?;
        // Staged under the manifest's id: a pull that was interrupted left what arrived there
        // (checked again below), and the pull run again fetches only the rest.
        let staging = Staging::new(&self.root, &manifest_id)?;
        let local = self.backend.clone();
        let stored = |reg: &Self, ids: &[ObjectId]| -> Result<HashSet<ObjectId>> {
            Ok(reg
                .catalog
                .objects(ids)?
                .into_iter()
                .filter(|(_, r)| r.stored)
                .map(|(id, _)| id)
                .collect())
        };
        // The manifest first: it names everything else.
        let mut fetched: Vec<(ObjectId, u64)> = Vec::new();
        let mut staged: Vec<ObjectId> = Vec::new();
        if !stored(self, &[manifest_id])?.contains(&manifest_id) {
            fetched.extend(staging.fetch(remote, &[manifest_id], sizes, progress)?);
            staged.push(manifest_id);
        }
        let overlay = StagedBackend {
            stage: FsBackend::existing(&staging.dir)
                .map_err(|e| Error::io("opening", &staging.dir, e))?,
            main: local.clone(),
        };
        let manifest_bytes = Decoder::open(&overlay, &manifest_id)
            .and_then(|d| d.read_all(&manifest_id))
            .map_err(|e| staging.damaged(remote, &manifest_id, &e.to_string()))?;
        let manifest = crate::checkpoint::Manifest::parse(&manifest_bytes)
            .map_err(|e| staging.damaged(remote, &manifest_id, &format!("manifest: {e}")))?;
        let mut ids: Vec<ObjectId> = manifest.refs().into_iter().map(|(_, id)| id).collect();
        ids.sort();
        ids.dedup();
        let here = stored(self, &ids)?;
        let mut want: Vec<ObjectId> = ids
            .iter()
            .filter(|id| !here.contains(id))
            .copied()
            .collect();
        // Delta bases a staged object needs that neither side has yet, until none is missing.
        while !want.is_empty() {
            fetched.extend(staging.fetch(remote, &want, sizes, progress)?);
            staged.extend(&want);
            let mut bases = Vec::new();
            for id in &want {
                let header = Decoder::header(&staging.backend, id)
                    .map_err(|e| staging.damaged(remote, id, &e.to_string()))?;
                if let Some(b) = header.delta_base
                    && !staging.has(&b)
                    && !stored(self, &[b])?.contains(&b)
                    && !bases.contains(&b)
                {
                    bases.push(b);
                }
            }
            want = bases;
        }
        // Every staged object decodes to the bytes its id names (deltas against staged or
        // local bases) before any of it enters the store.
        let checked: Vec<ObjectRow> = {
            let results = Mutex::new(Vec::new());
            parallel(&staged, |id| {
                let dec = Decoder::open(&overlay, id)
                    .map_err(|e| staging.damaged(remote, id, &e.to_string()))?;
                dec.stream(id, &mut |_| Ok(()))
                    .map_err(|e| staging.damaged(remote, id, &e.to_string()))?;
                results
                    .lock()
                    .expect("no panic holding it")
                    .push(ObjectRow {
                        id: *id,
                        kind: dec.header.kind,
                        stored: false,
                        raw_size: dec.header.raw_len,
                        stored_size: None,
                        delta_base: dec.header.delta_base,
                    });
                Ok(())
            })?;
            results.into_inner().expect("no panic holding it")
        };
        // Into the store: intent, objects (bases before deltas), one commit.
        self.catalog.insert_pending(&checked)?;
        let mut created: Vec<ObjectId> = checked.iter().map(|r| r.id).collect();
        let result = (|| -> Result<CheckpointRow> {
            let mut rows = checked.clone();
            rows.sort_by_key(|r| r.delta_base.is_some());
            let mut sizes = Vec::new();
            for r in &rows {
                let size = staging.move_into(local.as_ref(), &r.id, &self.root)?;
                sizes.push((r.id, size));
            }
            let new = rec.new_checkpoint(kind, manifest_id, &manifest, base);
            let merge = rec.new_merge();
            let (row, _) = self.commit_checkpoint(
                &sizes,
                &manifest.refs(),
                &new,
                merge.as_ref(),
                None,
                &mut created,
            )?;
            Ok(row)
        })();
        match result {
            Ok(row) => {
                report.objects_received += fetched.len();
                report.bytes_received += fetched.iter().map(|(_, n)| n).sum::<u64>();
                staging.finish();
                Ok(row)
            }
            Err(e) => {
                self.abandon(&created);
                Err(e)
            }
        }
    }
}

fn unknown_remote(name: &str) -> Error {
    Error::NotFound {
        what: "remote",
        reference: name.to_owned(),
        hint:
            "`crossmerge remote list` shows the remotes; `crossmerge remote add NAME URL` adds one"
                .to_owned(),
    }
}

fn damaged_record(remote: &str, what: &str) -> Error {
    Error::Remote {
        remote: remote.to_owned(),
        message: format!("a checkpoint record is damaged: {what}"),
        hint: "push the checkpoint again from a registry that holds it".to_owned(),
    }
}

fn remote_damage(remote: &RemoteStore, id: &ObjectId, problem: &str) -> Error {
    Error::Remote {
        remote: remote.name().to_owned(),
        message: format!("object `{id}` is damaged on the remote: {problem}"),
        hint: "nothing was added here; push the checkpoint again from a registry that holds it (the remote's copy is replaced)".to_owned(),
    }
}

pub(crate) fn object_key(id: &ObjectId) -> String {
    let hex = id.to_hex();
    format!("objects/{}/{hex}", &hex[..2])
}

fn check_format(remote: &RemoteStore, bytes: &[u8]) -> Result<()> {
    let text = String::from_utf8_lossy(bytes);
    if text.lines().next() == Some(REMOTE_FORMAT) {
        return Ok(());
    }
    Err(Error::Remote {
        remote: remote.name().to_owned(),
        message: format!(
            "its FORMAT says `{}`, this crossmerge reads `{REMOTE_FORMAT}`",
            text.lines().next().unwrap_or("")
        ),
        hint: "point the remote at a prefix of its own (`crossmerge remote add NAME s3://BUCKET/PREFIX`)"
            .to_owned(),
    })
}

/// A remote that holds a registry (push made its FORMAT).
fn expect_registry(remote: &RemoteStore) -> Result<()> {
    match remote.get("FORMAT")? {
        Some(bytes) => check_format(remote, &bytes),
        None => Err(Error::Remote {
            remote: remote.name().to_owned(),
            message: "holds no registry (it has no FORMAT)".to_owned(),
            hint: "check the URL's prefix; a first `crossmerge push` to it makes one".to_owned(),
        }),
    }
}

/// Every record under `dir` on the remote, checked against its key: (key, record).
fn remote_records<T: serde::de::DeserializeOwned + Send>(
    remote: &RemoteStore,
    dir: &str,
) -> Result<Vec<(String, T)>> {
    let keys = remote.list(dir)?;
    let out = Mutex::new(Vec::new());
    let names: Vec<String> = keys.into_iter().map(|(k, _)| k).collect();
    parallel(&names, |key| {
        let Some(bytes) = remote.get(&format!("{dir}/{key}"))? else {
            return Ok(()); // removed since the listing
        };
        let id = codec::content_id(ObjectKind::Blob, &[], &bytes);
        if key.strip_suffix(".json") != Some(id.to_hex().as_str()) {
            return Err(damaged_record(
                remote.name(),
                &format!("`{key}` does not hash to its name"),
            ));
        }
        let rec: T = serde_json::from_slice(&bytes)
            .map_err(|e| damaged_record(remote.name(), &format!("`{key}`: {e}")))?;
        out.lock()
            .expect("no panic holding it")
            .push((key.clone(), rec));
        Ok(())
    })?;
    let mut out = out.into_inner().expect("no panic holding it");
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The vector record `reference` (`name` or `name@version`) names: the latest version.
fn find_vector<'a>(records: &'a [VectorRecord], reference: &str) -> Option<&'a VectorRecord> {
    let (name, version) = match reference.rsplit_once('@') {
        Some((n, v)) => (n, v.parse::<u32>().ok()),
        None => (reference, None),
    };
    records
        .iter()
        .filter(|r| r.name == name && version.is_none_or(|v| r.version == v))
        .max_by_key(|r| (r.version, r.created_at.clone()))
}

/// The record `reference` names: `name` (its latest version), `name@version`, or a prefix (6+
/// hex digits) of a manifest id.
fn find_record<'a>(
    records: &'a [CheckpointRecord],
    reference: &str,
    remote: &str,
) -> Result<&'a CheckpointRecord> {
    let (name, version) = match reference.rsplit_once('@') {
        Some((n, v)) => (n, v.parse::<u32>().ok()),
        None => (reference, None),
    };
    let mut named: Vec<&CheckpointRecord> = records
        .iter()
        .filter(|r| r.name == name && version.is_none_or(|v| r.version == v))
        .collect();
    named.sort_by_key(|r| (r.version, r.created_at.clone()));
    if let Some(r) = named.last() {
        return Ok(r);
    }
    let is_hex = reference.len() >= 6 && reference.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex {
        let mut by_id: Vec<&CheckpointRecord> = records
            .iter()
            .filter(|r| r.manifest.starts_with(&reference.to_ascii_lowercase()))
            .collect();
        by_id.sort_by_key(|r| (r.manifest.clone(), r.version));
        by_id.dedup_by(|a, b| a.manifest == b.manifest);
        match by_id.as_slice() {
            [one] => return Ok(one),
            [] => {}
            many => {
                return Err(Error::Ambiguous {
                    prefix: reference.to_owned(),
                    candidates: many
                        .iter()
                        .map(|r| format!("{}@{}", r.name, r.version))
                        .collect(),
                });
            }
        }
    }
    Err(Error::NotFound {
        what: "checkpoint on the remote",
        reference: reference.to_owned(),
        hint: format!("`crossmerge ls-remote {remote}` lists what the remote holds"),
    })
}

/// Runs `f` on every item, `TRANSFERS` at a time; the first error (in item order) wins and
/// stops the others taking more.
fn parallel<T: Sync>(items: &[T], f: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    let next = AtomicUsize::new(0);
    let errors: Mutex<Vec<(usize, Error)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..TRANSFERS.min(items.len()) {
            s.spawn(|| {
                loop {
                    if !errors.lock().expect("no panic holding it").is_empty() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else { return };
                    if let Err(e) = f(item) {
                        errors.lock().expect("no panic holding it").push((i, e));
                        return;
                    }
                }
            });
        }
    });
    let mut errors = errors.into_inner().expect("no panic holding it");
    errors.sort_by_key(|(i, _)| *i);
    match errors.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// Objects downloaded for one checkpoint's pull, under `REGISTRY/tmp/pull-<manifest id>/`:
/// removed once the checkpoint is committed, kept when the pull fails or dies so that the next
/// pull fetches only the rest (`gc` removes it otherwise).
struct Staging {
    dir: PathBuf,
    backend: FsBackend,
}

/// Where the objects of `manifest`'s pull are staged.
fn staging_dir(root: &Path, manifest: &ObjectId) -> PathBuf {
    root.join("tmp").join(format!("pull-{}", manifest.to_hex()))
}

impl Staging {
    fn new(root: &Path, manifest: &ObjectId) -> Result<Self> {
        let dir = staging_dir(root, manifest);
        let backend = FsBackend::new(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        Ok(Self { dir, backend })
    }

    fn has(&self, id: &ObjectId) -> bool {
        self.backend.exists(id).unwrap_or(false)
    }

    /// Downloads `ids` (those not staged yet): (id, bytes) of each.
    fn fetch(
        &self,
        remote: &RemoteStore,
        ids: &[ObjectId],
        sizes: &HashMap<ObjectId, u64>,
        progress: &dyn Progress,
    ) -> Result<Vec<(ObjectId, u64)>> {
        let todo: Vec<ObjectId> = ids.iter().filter(|id| !self.has(id)).copied().collect();
        let out = Mutex::new(Vec::new());
        let total = todo.iter().filter_map(|id| sizes.get(id)).sum();
        progress.start(&format!("pull {} objects", todo.len()), total);
        parallel(&todo, |id| {
            let mut w = self
                .backend
                .create()
                .map_err(|e| Error::io("writing into", &self.dir, e))?;
            let mut sink = WriterSink(w.as_mut());
            let n = remote
                .get_into(&object_key(id), &mut sink)?
                .ok_or_else(|| remote_damage(remote, id, "it is missing (a record names it)"))?;
            w.commit(id)
                .map_err(|e| Error::io("writing into", &self.dir, e))?;
            progress.advance(n);
            out.lock().expect("no panic holding it").push((*id, n));
            Ok(())
        })?;
        progress.finish();
        Ok(out.into_inner().expect("no panic holding it"))
    }

    /// Copies a checked object into the registry's store: its stored size.
    fn move_into(&self, local: &dyn Backend, id: &ObjectId, root: &Path) -> Result<u64> {
        let objects = root.join("objects");
        let reader = self
            .backend
            .open(id)
            .map_err(|e| Error::io("reading", &self.dir, e))?;
        let mut w = local
            .create()
            .map_err(|e| Error::io("writing an object into", &objects, e))?;
        let len = reader.len();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            reader
                .read_exact_at(&mut buf[..n], at)
                .map_err(|e| Error::io("reading", &self.dir, e))?;
            w.write_all(&buf[..n])
                .map_err(|e| Error::io("writing an object into", &objects, e))?;
            at += n as u64;
        }
        w.commit(id)
            .map_err(|e| Error::io("writing an object into", &objects, e))?;
        Ok(len)
    }
}

impl Staging {
    /// The error for a staged object that failed its check; the object is dropped from the
    /// staging area, so the next pull fetches it again.
    fn damaged(&self, remote: &RemoteStore, id: &ObjectId, problem: &str) -> Error {
        let _ = self.backend.remove(id);
        remote_damage(remote, id, problem)
    }

    /// After the commit: the staging area goes.
    fn finish(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
