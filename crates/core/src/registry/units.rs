//! Units of work done away from the catalog, and ingested into it afterwards.
//!
//! `SQLite` on a shared filesystem (NFS, Lustre) is unsafe to write from several machines, so
//! a worker on a cluster never opens the registry's catalog. It works on a *staged* registry
//! ([`Registry::open_staged`]): a private copy of the catalog (a snapshot the driver wrote),
//! objects read from the registry's store and written into a staging folder of its own. When
//! its unit is done it writes what the unit added as one [`UnitResult`] (JSON, renamed into
//! place); the driver, the only process writing the catalog, ingests it
//! ([`Registry::ingest_unit`]) through the registry's usual write order: pending rows, files
//! moved into the store, one commit per checkpoint. Ingesting the same result twice changes
//! nothing, and an ingest killed at any point is finished by the next.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Registry;
use super::records::CheckpointRecord;
use super::staging::{StagedBackend, WriterSink};
use crate::catalog::{
    Catalog, CheckpointKind, CheckpointRow, Marks, NewEvaluation, NewTraining, NewVector,
    ObjectRow, VectorKind,
};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::store::codec::Decoder;
use crate::store::remote::{RemoteConfig, RemoteStore};
use crate::store::{Backend, FsBackend, ObjectReader, ObjectWriter};

pub const UNIT_RESULT_FORMAT: &str = "crossmerge.unit-result.v1";

/// What one unit of work added to its staged registry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitResult {
    pub format: String,
    /// The unit's key (what the driver asked for).
    pub unit: String,
    /// Objects written into the staging folder, in the order they were written.
    pub objects: Vec<StagedObject>,
    pub checkpoints: Vec<UnitCheckpoint>,
    pub vectors: Vec<UnitVector>,
    pub evaluations: Vec<UnitEvaluation>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagedObject {
    pub id: ObjectId,
    pub kind: String,
    pub raw_size: u64,
    pub delta_base: Option<ObjectId>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitCheckpoint {
    /// `name@version` in the staged catalog.
    pub reference: String,
    /// The checkpoint's record (§10), staged with the objects.
    pub(crate) record: CheckpointRecord,
    pub training: Option<UnitTraining>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitTraining {
    /// The checkpoint trained from, `name@version`.
    pub source: String,
    pub run: NewTraining,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitVector {
    pub name: String,
    pub kind: String,
    pub from: String,
    pub minus: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub definition: ObjectId,
    pub l2_norm: f64,
    pub tensors: Vec<(String, u64, f64)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitEvaluation {
    pub key: String,
    pub checkpoint: String,
    pub task: String,
    pub language: Option<String>,
    pub dataset_hash: String,
    pub dataset_path: String,
    pub split: Option<String>,
    pub metrics: BTreeMap<String, f64>,
    pub examples: u64,
    pub truncated: u64,
    pub device: String,
    pub duration_s: f64,
    pub settings: serde_json::Value,
}

/// What one ingest added (zero everywhere when the result was ingested before).
#[derive(Clone, Debug, Default, Serialize)]
pub struct IngestReport {
    pub objects: usize,
    pub bytes: u64,
    pub checkpoints: Vec<String>,
    pub vectors: Vec<String>,
    pub evaluations: usize,
}

/// Objects of a remote, fetched into a local cache the first time they are opened (a worker
/// that reaches the registry's objects only through S3).
struct FetchBackend {
    cache: FsBackend,
    remote: RemoteStore,
}

impl FetchBackend {
    fn fetch(&self, id: &ObjectId) -> io::Result<()> {
        let mut w = self.cache.create()?;
        let mut sink = WriterSink(w.as_mut());
        match self
            .remote
            .get_into(&super::remote::object_key(id), &mut sink)
        {
            Ok(Some(_)) => w.commit(id),
            Ok(None) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("object {id} is not on remote `{}`", self.remote.name()),
            )),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }
}

impl Backend for FetchBackend {
    fn open(&self, id: &ObjectId) -> io::Result<Box<dyn ObjectReader>> {
        match self.cache.open(id) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.fetch(id)?;
                self.cache.open(id)
            }
            other => other,
        }
    }
    fn exists(&self, id: &ObjectId) -> io::Result<bool> {
        if self.cache.exists(id)? {
            return Ok(true);
        }
        match self.fetch(id) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
    fn create(&self) -> io::Result<Box<dyn ObjectWriter>> {
        Err(io::Error::other("a remote's objects are read-only here"))
    }
    fn remove(&self, _: &ObjectId) -> io::Result<()> {
        Err(io::Error::other("a remote's objects are read-only here"))
    }
    fn list(&self) -> io::Result<Vec<ObjectId>> {
        self.cache.list()
    }
    fn count_tmp(&self) -> io::Result<usize> {
        self.cache.count_tmp()
    }
    fn clean_tmp(&self) -> io::Result<usize> {
        self.cache.clean_tmp()
    }
}

impl Registry {
    /// Opens a staged registry whose objects come from `remote` (fetched into `scratch/cache`
    /// as they are read): for workers that reach the registry only through S3. Writes go into
    /// `scratch/stage`; the catalog is `catalog`.
    pub fn open_staged_remote(
        remote: &RemoteConfig,
        scratch: &Path,
        catalog: &Path,
    ) -> Result<Self> {
        let cache_dir = scratch.join("cache");
        let cache = FsBackend::new(&cache_dir).map_err(|e| Error::io("creating", &cache_dir, e))?;
        let main = FetchBackend {
            cache,
            remote: RemoteStore::open(remote)?,
        };
        Self::staged(
            &scratch.join("stage"),
            Arc::new(main),
            catalog,
            &scratch.join("lock"),
        )
    }

    /// Opens the registry at `main` staged: the catalog is `catalog` (a copy of the
    /// registry's, from [`Registry::snapshot_catalog`], on a disk of this machine), objects
    /// are read from `stage` and then the registry, and written into `stage` only. Training
    /// state goes under `stage/training/`, so a unit retried on the same stage resumes.
    pub fn open_staged(main: &Path, stage: &Path, catalog: &Path) -> Result<Self> {
        Self::check_format(main)?;
        let main_backend = FsBackend::existing(main).map_err(|e| Error::io("opening", main, e))?;
        // The registry's shared lock keeps its gc from removing what this unit reads.
        Self::staged(stage, Arc::new(main_backend), catalog, &main.join("lock"))
    }

    /// A registry writing objects into `stage`, reading them from there and then `main`,
    /// with the catalog at `catalog` and its lock at `lock`.
    fn staged(stage: &Path, main: Arc<dyn Backend>, catalog: &Path, lock: &Path) -> Result<Self> {
        let stage_backend = FsBackend::new(stage).map_err(|e| Error::io("creating", stage, e))?;
        Ok(Self {
            root: stage.to_path_buf(),
            backend: Arc::new(StagedBackend {
                stage: stage_backend,
                main,
            }),
            catalog: Catalog::open_existing(catalog)?,
            lock: super::open_lock(lock)?,
        })
    }

    /// Writes a consistent copy of the catalog to `to` (absent), for staged registries.
    pub fn snapshot_catalog(&self, to: &Path) -> Result<()> {
        let _lock = self.lock_shared()?;
        self.catalog.snapshot(to)
    }

    /// Where each table of the catalog ends now.
    pub fn marks(&self) -> Result<Marks> {
        self.catalog.marks()
    }

    /// What was added to this (staged) registry since `marks`.
    pub fn unit_result(&self, unit: &str, marks: &Marks) -> Result<UnitResult> {
        let checkpoints = self.catalog.checkpoints_after(marks.checkpoints)?;
        let records: HashSet<ObjectId> = checkpoints.iter().filter_map(|(_, r)| *r).collect();
        let objects = self
            .catalog
            .objects_after(marks.objects)?
            .into_iter()
            // A record is written again, for the version the checkpoint gets, when ingested.
            .filter(|o| !records.contains(&o.id))
            .map(|o| StagedObject {
                id: o.id,
                kind: o.kind.name().to_owned(),
                raw_size: o.raw_size,
                delta_base: o.delta_base,
            })
            .collect();
        let mut units = Vec::new();
        for (row, record) in checkpoints {
            let record = record.ok_or_else(|| {
                Error::invalid(
                    format!("`{}` has no record", row.reference()),
                    "staged registries record every checkpoint; run the unit again",
                )
            })?;
            let bytes = self.read_object(&record, Some("checkpoint record"))?;
            let record: CheckpointRecord = serde_json::from_slice(&bytes).map_err(|e| {
                Error::invalid(
                    format!("the record of `{}` does not parse: {e}", row.reference()),
                    "run the unit again",
                )
            })?;
            let training = self
                .catalog
                .trainings(Some(row.rowid))?
                .into_iter()
                .next()
                .map(|t| UnitTraining {
                    source: t.source,
                    run: t.run,
                });
            units.push(UnitCheckpoint {
                reference: row.reference(),
                record,
                training,
            });
        }
        let vectors = self
            .catalog
            .vectors_after(marks.vectors)?
            .into_iter()
            .map(|v| {
                Ok(UnitVector {
                    tensors: self.catalog.vector_tensors(v.rowid)?,
                    name: v.name,
                    kind: v.kind.as_str().to_owned(),
                    from: v.from,
                    minus: v.minus,
                    include: v.include,
                    exclude: v.exclude,
                    definition: v.definition,
                    l2_norm: v.l2_norm,
                })
            })
            .collect::<Result<_>>()?;
        let evaluations = self
            .catalog
            .evaluations_after(marks.evaluations)?
            .into_iter()
            .map(|e| UnitEvaluation {
                key: e.id.unwrap_or_default(),
                checkpoint: e.checkpoint,
                task: e.task,
                language: e.language,
                dataset_hash: e.dataset_hash,
                dataset_path: e.dataset_path,
                split: e.split,
                metrics: e.metrics,
                examples: e.examples,
                truncated: e.truncated,
                device: e.device,
                duration_s: e.duration_s,
                settings: e.settings,
            })
            .collect();
        Ok(UnitResult {
            format: UNIT_RESULT_FORMAT.to_owned(),
            unit: unit.to_owned(),
            objects,
            checkpoints: units,
            vectors,
            evaluations,
        })
    }

    /// Adds what a unit made (its result, its objects staged under `stage`) to this registry.
    /// Objects already here are left staged; the rest are checked against their rows, decoded
    /// and re-hashed, and moved in (pending rows first); checkpoints already here, vectors of the same definition
    /// and evaluations of the same id are not added again.
    pub fn ingest_unit(&mut self, result: &UnitResult, stage: &Path) -> Result<IngestReport> {
        if result.format != UNIT_RESULT_FORMAT {
            return Err(bad_result(
                stage,
                &format!("its format is `{}`", result.format),
            ));
        }
        let _lock = self.lock_shared()?;
        let mut report = IngestReport::default();
        let staged = StagedFiles::new(stage);
        // Objects: the rows first (pending), then the files, bases before deltas.
        let ids: Vec<ObjectId> = result.objects.iter().map(|o| o.id).collect();
        let here = self.catalog.objects(&ids)?;
        let mut rows = Vec::new();
        for o in &result.objects {
            if here.get(&o.id).is_some_and(|r| r.stored) {
                continue;
            }
            let row = ObjectRow {
                id: o.id,
                kind: crate::store::codec::ObjectKind::from_name(&o.kind).ok_or_else(|| {
                    bad_result(stage, &format!("object {} has kind `{}`", o.id, o.kind))
                })?,
                stored: false,
                raw_size: o.raw_size,
                stored_size: None,
                delta_base: o.delta_base,
            };
            rows.push(row);
        }
        // Every object decodes to the bytes its id names (deltas against staged objects or
        // the registry's) before any of it enters the store.
        staged.verify(self, &rows)?;
        self.catalog.insert_pending(&rows)?;
        rows.sort_by_key(|r| r.delta_base.is_some());
        let mut sizes: HashMap<ObjectId, u64> = HashMap::new();
        for r in &rows {
            let size = staged.move_into(&self.root, &r.id)?;
            sizes.insert(r.id, size);
            report.objects += 1;
            report.bytes += size;
        }
        // Checkpoints, through the one write path (each gets its record here).
        let mut made: HashMap<String, CheckpointRow> = HashMap::new();
        let mut unclaimed: HashSet<ObjectId> = sizes.keys().copied().collect();
        for c in &result.checkpoints {
            let rec = &c.record;
            let kind = CheckpointKind::parse(&rec.kind)
                .ok_or_else(|| bad_result(stage, &format!("kind `{}`", rec.kind)))?;
            let manifest_id = ObjectId::parse_hex(&rec.manifest)
                .ok_or_else(|| bad_result(stage, &format!("manifest `{}`", rec.manifest)))?;
            let base = match &rec.base {
                None => None,
                Some(b) => {
                    let row = self.row_of(&format!("{}@{}", b.name, b.version), &made)?;
                    if row.manifest_id.to_hex() != b.manifest {
                        return Err(bad_result(
                            stage,
                            &format!(
                                "`{}` is based on `{}@{}` with manifest {}, which here has {}",
                                c.reference, b.name, b.version, b.manifest, row.manifest_id
                            ),
                        ));
                    }
                    Some(row.rowid)
                }
            };
            let manifest = self.manifest_by_id(&manifest_id)?;
            let new = rec.new_checkpoint(kind, manifest_id, &manifest, base);
            if let Some(row) = self.catalog.latest_if_same(&new)? {
                made.insert(c.reference.clone(), row);
                continue;
            }
            let training = match &c.training {
                Some(t) => {
                    let mut run = t.run.clone();
                    run.source = self.row_of(&t.source, &made)?.rowid;
                    Some(run)
                }
                None => None,
            };
            let refs = manifest.refs();
            let mut mine: Vec<ObjectId> = refs.iter().map(|(_, id)| *id).collect();
            mine.push(manifest_id);
            // Objects no manifest names (a delta base new with this unit) go with the first.
            if report.checkpoints.is_empty() {
                mine.extend(unclaimed.iter().copied());
            }
            let stored: Vec<(ObjectId, u64)> = mine
                .iter()
                .filter_map(|id| sizes.get(id).map(|s| (*id, *s)))
                .collect();
            for id in &mine {
                unclaimed.remove(id);
            }
            let mut created = Vec::new();
            let (row, _) = self.commit_checkpoint(
                &stored,
                &refs,
                &new,
                rec.new_merge().as_ref(),
                training.as_ref(),
                &mut created,
            )?;
            report.checkpoints.push(row.reference());
            made.insert(c.reference.clone(), row);
        }
        for v in &result.vectors {
            let kind = VectorKind::parse(&v.kind)
                .ok_or_else(|| bad_result(stage, &format!("vector kind `{}`", v.kind)))?;
            let new = NewVector {
                name: v.name.clone(),
                kind,
                from: self.row_of(&v.from, &made)?.rowid,
                minus: self.row_of(&v.minus, &made)?.rowid,
                include: v.include.clone(),
                exclude: v.exclude.clone(),
                definition: v.definition,
                l2_norm: v.l2_norm,
                tensors: v.tensors.clone(),
            };
            let (row, new) = self.catalog.insert_vector(&new)?;
            if new {
                report.vectors.push(row.reference());
            }
        }
        for e in &result.evaluations {
            if self.catalog.evaluation_by_id(&e.key)?.is_some() {
                continue;
            }
            self.catalog.insert_evaluation(&NewEvaluation {
                key: e.key.clone(),
                checkpoint: self.row_of(&e.checkpoint, &made)?.rowid,
                task: e.task.clone(),
                language: e.language.clone(),
                dataset_hash: e.dataset_hash.clone(),
                dataset_path: e.dataset_path.clone(),
                split: e.split.clone(),
                metrics: e.metrics.clone(),
                examples: e.examples,
                truncated: e.truncated,
                device: e.device.clone(),
                duration_s: e.duration_s,
                settings: e.settings.clone(),
            })?;
            report.evaluations += 1;
        }
        Ok(report)
    }

    /// A checkpoint a unit names: one it made (by its staged `name@version`), else this
    /// registry's.
    fn row_of(
        &self,
        reference: &str,
        made: &HashMap<String, CheckpointRow>,
    ) -> Result<CheckpointRow> {
        match made.get(reference) {
            Some(r) => Ok(r.clone()),
            None => self.resolve(reference),
        }
    }

    fn manifest_by_id(&self, id: &ObjectId) -> Result<crate::checkpoint::Manifest> {
        let bytes = self.read_object(id, Some("manifest"))?;
        crate::checkpoint::Manifest::parse(&bytes).map_err(|problem| Error::Corrupt {
            object: *id,
            tensor: None,
            problem,
        })
    }
}

/// Uploads what a unit staged under `stage` (the objects `result` names) to `remote`'s store,
/// then the result itself at `result_key`: a result on the remote means its objects are there.
pub fn upload_unit(
    remote: &RemoteStore,
    stage: &Path,
    result: &UnitResult,
    result_key: &str,
) -> Result<()> {
    let backend = FsBackend::existing(stage).map_err(|e| Error::io("opening", stage, e))?;
    for o in &result.objects {
        let reader = backend
            .open(&o.id)
            .map_err(|e| Error::io("reading", stage, e))?;
        remote.put_reader(&super::remote::object_key(&o.id), reader.as_ref())?;
    }
    let bytes = serde_json::to_vec_pretty(result).expect("a unit result serializes");
    remote.put(result_key, bytes)
}

/// Downloads a unit's result from `remote` into the unit folder `stage` (its objects the
/// registry `reg` lacks under `stage/objects/`, then `stage/result.json`), for the driver to
/// ingest as a result a worker wrote there. Nothing is done when the folder has a result.
pub fn download_unit(
    reg: &Registry,
    remote: &RemoteStore,
    result_key: &str,
    stage: &Path,
) -> Result<bool> {
    let local = stage.join("result.json");
    if local.is_file() {
        return Ok(false);
    }
    let Some(bytes) = remote.get(result_key)? else {
        return Ok(false);
    };
    let result: UnitResult = serde_json::from_slice(&bytes).map_err(|e| {
        bad_result(
            stage,
            &format!("the remote's {result_key} does not parse: {e}"),
        )
    })?;
    let backend = FsBackend::new(stage).map_err(|e| Error::io("creating", stage, e))?;
    let ids: Vec<ObjectId> = result.objects.iter().map(|o| o.id).collect();
    let here = reg.catalog.objects(&ids)?;
    for id in ids {
        if here.get(&id).is_some_and(|r| r.stored) || backend.exists(&id).unwrap_or(false) {
            continue;
        }
        let mut w = backend
            .create()
            .map_err(|e| Error::io("writing into", stage, e))?;
        let got = remote.get_into(&super::remote::object_key(&id), &mut WriterSink(w.as_mut()))?;
        if got.is_none() {
            return Err(bad_result(
                stage,
                &format!(
                    "object {id} the result names is not on remote `{}`",
                    remote.name()
                ),
            ));
        }
        w.commit(&id)
            .map_err(|e| Error::io("writing into", stage, e))?;
    }
    let tmp = stage.join("result.json.partial");
    crate::atomic::write_file(&local, &tmp, &bytes).map_err(|e| Error::io("writing", &local, e))?;
    Ok(true)
}

/// The objects in a staging folder (none when it has no store).
pub fn staged_objects(stage: &Path) -> Vec<ObjectId> {
    FsBackend::existing(stage)
        .and_then(|b| b.list())
        .unwrap_or_default()
}

fn bad_result(stage: &Path, problem: &str) -> Error {
    Error::invalid(
        format!(
            "the unit result in `{}` is damaged: {problem}",
            stage.display()
        ),
        "remove that unit's folder and run the study again (the unit runs again)",
    )
}

/// The files of a staging folder (`objects/ab/<hex>`, as the store lays them out).
struct StagedFiles {
    dir: PathBuf,
}

impl StagedFiles {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    fn path(root: &Path, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        root.join("objects").join(&hex[..2]).join(hex)
    }

    /// Checks that each of `rows`' objects (in the stage, or the store where an earlier ingest
    /// moved it) has the header its row says, and decodes and re-hashes it; in parallel.
    fn verify(&self, reg: &Registry, rows: &[ObjectRow]) -> Result<()> {
        use rayon::prelude::*;

        let backend = StagedBackend {
            stage: FsBackend::existing(&self.dir)
                .map_err(|e| Error::io("opening", &self.dir, e))?,
            main: reg.backend.clone(),
        };
        rows.par_iter().try_for_each(|r| {
            let dec = Decoder::open(&backend, &r.id)
                .map_err(|e| bad_result(&self.dir, &format!("object {}: {e}", r.id)))?;
            let h = &dec.header;
            if h.kind != r.kind || h.raw_len != r.raw_size || h.delta_base != r.delta_base {
                return Err(bad_result(
                    &self.dir,
                    &format!("object {} does not have the header its row says", r.id),
                ));
            }
            dec.stream(&r.id, &mut |_| Ok(()))
                .map_err(|e| bad_result(&self.dir, &format!("object {}: {e}", r.id)))
        })
    }

    /// Renames a staged object into the store at `root` (a no-op when an earlier ingest did):
    /// its stored size.
    fn move_into(&self, root: &Path, id: &ObjectId) -> Result<u64> {
        let from = Self::path(&self.dir, id);
        let to = Self::path(root, id);
        if !from.is_file() && to.is_file() {
            return fs::metadata(&to)
                .map(|m| m.len())
                .map_err(|e| Error::io("reading", &to, e));
        }
        let parent = to.parent().expect("objects/ab/hex has a parent");
        fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
        if let Err(e) = fs::rename(&from, &to) {
            // Another filesystem: copy, sync, rename.
            if e.raw_os_error() != Some(18) {
                return Err(Error::io("moving", &from, e));
            }
            let tmp = root.join("tmp").join(format!("ingest-{}", id.to_hex()));
            fs::copy(&from, &tmp).map_err(|e| Error::io("copying", &from, e))?;
            fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io("syncing", &tmp, e))?;
            fs::rename(&tmp, &to).map_err(|e| Error::io("moving", &tmp, e))?;
        }
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
        fs::metadata(&to)
            .map(|m| m.len())
            .map_err(|e| Error::io("reading", &to, e))
    }
}
