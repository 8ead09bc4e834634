//! `SQLite` metadata: rows, not files. Schema migrations live in `schemas/sql/NNNN_*.sql` and
//! are applied in order, tracked by `PRAGMA user_version`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::Serialize;

use crate::error::{Error, Result, is_busy};
use crate::id::ObjectId;
use crate::store::codec::ObjectKind;

/// Migrations, oldest first. Never edit a released one: add the next.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../schemas/sql/0001_init.sql"),
    include_str!("../../../schemas/sql/0002_vectors.sql"),
    include_str!("../../../schemas/sql/0003_merges.sql"),
    include_str!("../../../schemas/sql/0004_evaluations.sql"),
    include_str!("../../../schemas/sql/0005_evaluation_settings.sql"),
    include_str!("../../../schemas/sql/0006_records_and_gc_index.sql"),
    include_str!("../../../schemas/sql/0007_trainings.sql"),
    include_str!("../../../schemas/sql/0008_evaluation_ids.sql"),
];

/// Rows per transaction when gc marks and deletes objects.
pub const GC_BATCH: usize = 10_000;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub struct Catalog {
    conn: Connection,
}

/// An object as the catalog knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRow {
    pub id: ObjectId,
    pub kind: ObjectKind,
    pub stored: bool,
    pub raw_size: u64,
    pub stored_size: Option<u64>,
    pub delta_base: Option<ObjectId>,
}

/// Kind of a registered checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    Base,
    Language,
    Task,
    Merged,
}

impl CheckpointKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Base => "base",
            CheckpointKind::Language => "language",
            CheckpointKind::Task => "task",
            CheckpointKind::Merged => "merged",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Base, Self::Language, Self::Task, Self::Merged]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A checkpoint row, with its base's `name@version` resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointRow {
    #[serde(skip)]
    pub rowid: i64,
    pub name: String,
    pub version: u32,
    pub kind: CheckpointKind,
    pub manifest_id: ObjectId,
    pub architecture: Option<String>,
    pub base: Option<String>,
    pub language: Option<String>,
    pub task: Option<String>,
    pub source_path: Option<String>,
    pub tensor_count: u64,
    pub parameters: u64,
    pub logical_size: u64,
    pub created_at: String,
    pub tags: Vec<(String, String)>,
}

impl CheckpointRow {
    /// `name@version`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// What a new checkpoint row holds (the version is assigned by the catalog).
#[derive(Clone, Debug)]
pub struct NewCheckpoint {
    pub name: String,
    pub kind: CheckpointKind,
    pub manifest_id: ObjectId,
    pub architecture: Option<String>,
    pub base: Option<i64>,
    pub language: Option<String>,
    pub task: Option<String>,
    pub source_path: Option<String>,
    pub tensor_count: u64,
    pub parameters: u64,
    pub logical_size: u64,
    pub tags: Vec<(String, String)>,
}

/// A checkpoint's record object: written for one version, at one time.
#[derive(Clone, Debug)]
pub struct RecordRef {
    pub id: ObjectId,
    pub version: u32,
    pub created_at: String,
}

/// What [`Catalog::commit_checkpoint`] did.
#[derive(Debug)]
pub enum Commit {
    /// The row, and whether it is new (false: the latest version already was this content).
    Done(Box<CheckpointRow>, bool),
    /// Another writer took the record's version first; nothing was committed.
    VersionTaken,
}

/// Filters for [`Catalog::checkpoints`]; `None` matches everything.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct CheckpointFilter {
    pub kind: Option<CheckpointKind>,
    pub language: Option<String>,
    pub task: Option<String>,
}

const CHECKPOINT_COLUMNS: &str = "c.id, c.name, c.version, c.kind, c.manifest_id, c.architecture, \
     (SELECT b.name || '@' || b.version FROM checkpoints b WHERE b.id = c.base_id), \
     c.language, c.task, c.source_path, c.tensor_count, c.parameters, c.logical_size, c.created_at";

/// A catalog value this build cannot read: an error naming the table, row and column, never a
/// default standing in for it.
fn damaged(table: &str, row: &str, column: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!(
            "damaged catalog row: {table} {row} has {column} `{}`",
            value.escape_debug()
        )
        .into(),
    )
}

fn parse_id(s: &str) -> rusqlite::Result<ObjectId> {
    ObjectId::parse_hex(s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("bad object id `{s}`").into(),
        )
    })
}

/// The version the next row named `name` in `table` (checkpoints or vectors) gets: one past the
/// highest, 1 for a new name. Call inside the immediate transaction that inserts it.
fn next_version(
    tx: &rusqlite::Transaction<'_>,
    table: &'static str,
    name: &str,
) -> rusqlite::Result<u32> {
    tx.query_row(
        &format!("SELECT COALESCE(MAX(version), 0) + 1 FROM {table} WHERE name = ?1"),
        [name],
        |r| r.get(0),
    )
}

fn checkpoint_from_row(row: &Row<'_>) -> rusqlite::Result<CheckpointRow> {
    let kind: String = row.get(3)?;
    let manifest: String = row.get(4)?;
    Ok(CheckpointRow {
        rowid: row.get(0)?,
        name: row.get(1)?,
        version: row.get(2)?,
        kind: CheckpointKind::parse(&kind).ok_or_else(|| {
            damaged(
                "checkpoints",
                &format!("id {}", row.get::<_, i64>(0).unwrap_or(-1)),
                "kind",
                &kind,
            )
        })?,
        manifest_id: parse_id(&manifest)?,
        architecture: row.get(5)?,
        base: row.get(6)?,
        language: row.get(7)?,
        task: row.get(8)?,
        source_path: row.get(9)?,
        tensor_count: row.get(10)?,
        parameters: row.get(11)?,
        logical_size: row.get(12)?,
        created_at: row.get(13)?,
        tags: Vec::new(),
    })
}

fn object_from_row(row: &Row<'_>) -> rusqlite::Result<ObjectRow> {
    let id: String = row.get(0)?;
    let kind: String = row.get(1)?;
    let state: String = row.get(2)?;
    let base: Option<String> = row.get(5)?;
    Ok(ObjectRow {
        id: parse_id(&id)?,
        kind: ObjectKind::from_name(&kind)
            .ok_or_else(|| damaged("objects", &format!("`{id}`"), "kind", &kind))?,
        stored: state == "stored",
        raw_size: row.get(3)?,
        stored_size: row.get(4)?,
        delta_base: base.as_deref().map(parse_id).transpose()?,
    })
}

const OBJECT_COLUMNS: &str = "id, kind, state, raw_size, stored_size, delta_base";

/// An existing registry's catalog that cannot be used.
fn catalog_lost(path: &Path, problem: String) -> Error {
    Error::CatalogLost {
        path: path.to_path_buf(),
        problem,
    }
}

/// An existing registry's catalog file must be there and not empty: never silently a new one.
fn check_catalog_file(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => Err(catalog_lost(path, "it is empty (0 bytes)".to_owned())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(catalog_lost(path, "it is missing".to_owned()))
        }
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

/// How long a connection waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(120);

impl Catalog {
    /// Opens (creating and migrating as needed) the catalog at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_inner(path, true)
    }

    /// Opens the catalog of an existing registry (migrating it as needed): a missing, empty or
    /// unreadable file is an error, never silently a new empty catalog.
    pub fn open_existing(path: &Path) -> Result<Self> {
        check_catalog_file(path)?;
        Self::open_inner(path, false).map_err(|e| match e {
            Error::Catalog(e) if !is_busy(&e) => {
                catalog_lost(path, crate::error::sqlite_message(&e))
            }
            other => other,
        })
    }

    /// Opens an existing registry's catalog for reading only: nothing is created, migrated or
    /// written (every write is refused by `SQLite`). It must already be this build's schema.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        check_catalog_file(path)?;
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != SCHEMA_VERSION {
            return Err(Error::NotARegistry {
                path: path.to_path_buf(),
                problem: format!(
                    "its catalog is schema {version}; a read-only open needs schema {SCHEMA_VERSION} (open it once for writing, e.g. `crossmerge verify`, to migrate it)"
                ),
            });
        }
        Ok(Self { conn })
    }

    /// [`Self::open_once`], again while `SQLite` answers busy, for as long as the busy timeout.
    /// Opening can be refused at once, without the busy handler: a new file starts in
    /// rollback-journal mode, and of two connections that both read it and then ask for the
    /// exclusive lock that switching it to WAL needs, `SQLite` fails one immediately rather
    /// than let the two wait for each other (four processes creating one registry at once
    /// met this).
    fn open_inner(path: &Path, create: bool) -> Result<Self> {
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(2);
        loop {
            match Self::open_once(path, create) {
                Err(Error::Catalog(e)) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path, create: bool) -> Result<Self> {
        let flags = if create {
            rusqlite::OpenFlags::default()
        } else {
            rusqlite::OpenFlags::default() - rusqlite::OpenFlags::SQLITE_OPEN_CREATE
        };
        let mut conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(Error::NotARegistry {
                path: path.to_path_buf(),
                problem: format!(
                    "its catalog is schema version {version}, this crossmerge knows up to {SCHEMA_VERSION}"
                ),
            });
        }
        if version == 0 && !create {
            // A file SQLite can open but that holds no crossmerge schema.
            let tables: i64 =
                tx.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
            if tables == 0 {
                return Err(Error::CatalogLost {
                    path: path.to_path_buf(),
                    problem: "it holds no tables".to_owned(),
                });
            }
        }
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(version).unwrap_or(0))
        {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
        }
        tx.commit()?;
        Ok(Self { conn })
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// The rows of those of `ids` the catalog knows.
    pub fn objects(&self, ids: &[ObjectId]) -> Result<HashMap<ObjectId, ObjectRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {OBJECT_COLUMNS} FROM objects WHERE id = ?1"
        ))?;
        let mut out = HashMap::new();
        for id in ids {
            if let Some(row) = stmt.query_row([id.to_hex()], object_from_row).optional()? {
                out.insert(*id, row);
            }
        }
        Ok(out)
    }

    pub fn all_objects(&self) -> Result<Vec<ObjectRow>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {OBJECT_COLUMNS} FROM objects ORDER BY id"))?;
        let rows = stmt.query_map([], object_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records, durably and before any file is written, the objects about to be written.
    pub fn insert_pending(&mut self, rows: &[ObjectRow]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO objects (id, kind, state, raw_size, delta_base) VALUES (?1, ?2, 'pending', ?3, ?4) \
                 ON CONFLICT (id) DO NOTHING",
            )?;
            for r in rows {
                stmt.execute(params![
                    r.id.to_hex(),
                    r.kind.name(),
                    r.raw_size,
                    r.delta_base.map(|b| b.to_hex())
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// In one transaction: marks written objects stored, records the manifest's references and
    /// inserts the checkpoint, unless the latest version of `name` already is this exact
    /// checkpoint. Returns the row and whether it is new.
    ///
    /// `record` is the checkpoint's record object (already stored), written for the version
    /// the row gets: if another writer took that version meanwhile, nothing is committed and
    /// the answer is [`Commit::VersionTaken`] (the caller writes a record for the next version
    /// and retries). `None` only commits when the latest row already is this content; no new
    /// row is ever inserted without its record.
    /// Merge provenance, when given, goes in the same transaction, so a merged checkpoint never
    /// exists without it.
    pub fn commit_checkpoint(
        &mut self,
        stored: &[(ObjectId, u64)],
        refs: &[(String, ObjectId)],
        new: &NewCheckpoint,
        merge: Option<&NewMerge>,
        training: Option<&NewTraining>,
        record: Option<&RecordRef>,
    ) -> Result<Commit> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut mark = tx.prepare_cached(
                "UPDATE objects SET state = 'stored', stored_size = ?2 WHERE id = ?1",
            )?;
            for (id, size) in stored {
                mark.execute(params![id.to_hex(), size])?;
            }
            let manifest = new.manifest_id.to_hex();
            let mut add_ref = tx.prepare_cached(
                "INSERT INTO manifest_refs (manifest_id, name, object_id) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
            )?;
            let mut recorded = tx.prepare_cached(
                "SELECT object_id FROM manifest_refs WHERE manifest_id = ?1 AND name = ?2",
            )?;
            for (name, id) in refs {
                // A row already there must be this very reference (the manifest registered
                // before); another object under the same name would leave one unrecorded.
                if add_ref.execute(params![manifest, name, id.to_hex()])? == 0 {
                    let have: String = recorded.query_row(params![manifest, name], |r| r.get(0))?;
                    if have != id.to_hex() {
                        return Err(Error::invalid(
                            format!("manifest `{manifest}` names `{name}` for two objects"),
                            "tensor names and `file:` paths must be distinct; rename the tensor",
                        ));
                    }
                }
            }
        }
        let latest = tx
            .query_row(
                &format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints c WHERE c.name = ?1 ORDER BY c.version DESC LIMIT 1"
                ),
                [&new.name],
                checkpoint_from_row,
            )
            .optional()?;
        let latest_base: Option<i64> = match &latest {
            Some(l) => tx.query_row(
                "SELECT base_id FROM checkpoints WHERE id = ?1",
                [l.rowid],
                |r| r.get(0),
            )?,
            None => None,
        };
        if let Some(l) = latest {
            let same = l.manifest_id == new.manifest_id
                && l.kind == new.kind
                && latest_base == new.base
                && l.language == new.language
                && l.task == new.task;
            if same {
                if let Some(m) = merge {
                    insert_merge(&tx, l.rowid, m)?;
                }
                if let Some(t) = training {
                    insert_training(&tx, l.rowid, t)?;
                }
                tx.commit()?;
                let row = self.checkpoint_by_rowid(l.rowid)?;
                return Ok(Commit::Done(Box::new(row), false));
            }
        }
        let version = next_version(&tx, "checkpoints", &new.name)?;
        // Every new row has its record, written for exactly this version: without one (the
        // caller expected the latest row to be this content, and another writer changed that)
        // or with one for another version, nothing is committed.
        if record.is_none_or(|r| r.version != version) {
            return Ok(Commit::VersionTaken);
        }
        let rowid = insert_checkpoint(&tx, new, version, record, merge)?;
        if let Some(t) = training {
            insert_training(&tx, rowid, t)?;
        }
        tx.commit()?;
        Ok(Commit::Done(
            Box::new(self.checkpoint_by_rowid(rowid)?),
            true,
        ))
    }

    /// The latest version of `new.name` when it already is exactly `new` (registering it again
    /// changes nothing).
    pub fn latest_if_same(&self, new: &NewCheckpoint) -> Result<Option<CheckpointRow>> {
        let latest = self
            .conn
            .query_row(
                "SELECT id, manifest_id, kind, base_id, language, task FROM checkpoints \
                 WHERE name = ?1 ORDER BY version DESC LIMIT 1",
                [&new.name],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                },
            )
            .optional()?;
        match latest {
            Some((rowid, manifest, kind, base, language, task))
                if manifest == new.manifest_id.to_hex()
                    && kind == new.kind.as_str()
                    && base == new.base
                    && language == new.language
                    && task == new.task =>
            {
                Ok(Some(self.checkpoint_by_rowid(rowid)?))
            }
            _ => Ok(None),
        }
    }

    /// The version a new checkpoint named `name` would get now.
    pub fn next_checkpoint_version(&self, name: &str) -> Result<u32> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM checkpoints WHERE name = ?1",
            [name],
            |r| r.get(0),
        )?)
    }

    /// The catalog's clock, as every `created_at` is written.
    pub fn now(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')", [], |r| {
                r.get(0)
            })?)
    }

    /// Rebuilding: object rows (all stored), in one transaction, delta bases in any order.
    pub fn insert_recovered_objects(&mut self, rows: &[ObjectRow]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.pragma_update(None, "defer_foreign_keys", true)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO objects (id, kind, state, raw_size, stored_size, delta_base) \
                 VALUES (?1, ?2, 'stored', ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
            )?;
            for r in rows {
                stmt.execute(params![
                    r.id.to_hex(),
                    r.kind.name(),
                    r.raw_size,
                    r.stored_size,
                    r.delta_base.map(|b| b.to_hex())
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Rebuilding: one manifest's references.
    pub fn insert_recovered_refs(
        &mut self,
        manifest: &ObjectId,
        refs: &[(String, ObjectId)],
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO manifest_refs (manifest_id, name, object_id) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
            )?;
            for (name, id) in refs {
                stmt.execute(params![manifest.to_hex(), name, id.to_hex()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Rebuilding: a checkpoint row at a given version and time, with its tags and merge row.
    pub fn insert_recovered_checkpoint(
        &mut self,
        new: &NewCheckpoint,
        version: u32,
        record: Option<&RecordRef>,
        merge: Option<&NewMerge>,
    ) -> Result<CheckpointRow> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rowid = insert_checkpoint(&tx, new, version, record, merge)?;
        tx.commit()?;
        self.checkpoint_by_rowid(rowid)
    }

    /// Checkpoints an identical recipe produced (newest first).
    pub fn merges_by_hash(&self, recipe_hash: &str) -> Result<Vec<(MergeRow, CheckpointRow)>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MERGE_COLUMNS} FROM merges m WHERE m.recipe_hash = ?1 ORDER BY m.id DESC"
        ))?;
        let rows: Vec<MergeRow> = stmt
            .query_map([recipe_hash], merge_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|m| {
                let c = self.checkpoint_by_rowid(m.checkpoint_rowid)?;
                Ok((m, c))
            })
            .collect()
    }

    /// The provenance of a merged checkpoint, if it has one.
    pub fn merge_of(&self, checkpoint_rowid: i64) -> Result<Option<MergeRow>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {MERGE_COLUMNS} FROM merges m WHERE m.checkpoint_id = ?1 ORDER BY m.id DESC LIMIT 1"
                ),
                [checkpoint_rowid],
                merge_from_row,
            )
            .optional()?)
    }

    fn with_tags(&self, mut row: CheckpointRow) -> Result<CheckpointRow> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, value FROM tags WHERE checkpoint_id = ?1 ORDER BY key")?;
        row.tags = stmt
            .query_map([row.rowid], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(row)
    }

    pub fn checkpoint_by_rowid(&self, rowid: i64) -> Result<CheckpointRow> {
        let row = self.conn.query_row(
            &format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints c WHERE c.id = ?1"),
            [rowid],
            checkpoint_from_row,
        )?;
        self.with_tags(row)
    }

    /// Checkpoints matching `filter`, by name then version.
    pub fn checkpoints(&self, filter: &CheckpointFilter) -> Result<Vec<CheckpointRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints c \
             WHERE (?1 IS NULL OR c.kind = ?1) AND (?2 IS NULL OR c.language = ?2) AND (?3 IS NULL OR c.task = ?3) \
             ORDER BY c.name, c.version"
        ))?;
        let rows = stmt
            .query_map(
                params![
                    filter.kind.map(CheckpointKind::as_str),
                    filter.language,
                    filter.task
                ],
                checkpoint_from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(|r| self.with_tags(r)).collect()
    }

    /// `name` at `version`, or its latest version.
    pub fn checkpoint_by_name(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<CheckpointRow>> {
        let row = self
            .conn
            .query_row(
                &format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints c WHERE c.name = ?1 AND (?2 IS NULL OR c.version = ?2) \
                     ORDER BY c.version DESC LIMIT 1"
                ),
                params![name, version],
                checkpoint_from_row,
            )
            .optional()?;
        row.map(|r| self.with_tags(r)).transpose()
    }

    /// Checkpoints whose manifest id starts with `prefix` (lowercase hex).
    pub fn checkpoints_by_prefix(&self, prefix: &str) -> Result<Vec<CheckpointRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints c WHERE substr(c.manifest_id, 1, ?2) = ?1 ORDER BY c.name, c.version"
        ))?;
        let rows = stmt
            .query_map(params![prefix, prefix.len()], checkpoint_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(|r| self.with_tags(r)).collect()
    }

    /// What `manifest` references: (name, object id), by name.
    pub fn manifest_refs(&self, manifest: &ObjectId) -> Result<Vec<(String, ObjectId)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, object_id FROM manifest_refs WHERE manifest_id = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([manifest.to_hex()], |r| {
            let id: String = r.get(1)?;
            Ok((r.get(0)?, parse_id(&id)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Bytes on disk of a manifest and the distinct objects it references (one query).
    pub fn stored_size(&self, manifest: &ObjectId) -> Result<u64> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT COALESCE(SUM(stored_size), 0) FROM objects WHERE id IN \
             (SELECT object_id FROM manifest_refs WHERE manifest_id = ?1 UNION SELECT ?1)",
        )?;
        let n: i64 = stmt.query_row([manifest.to_hex()], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// For error messages: one tensor or file name under which each object is referenced.
    pub fn names_of_objects(&self) -> Result<HashMap<ObjectId, String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT object_id, MIN(name) FROM manifest_refs GROUP BY object_id")?;
        let rows = stmt.query_map([], |r| {
            let id: String = r.get(0)?;
            Ok((parse_id(&id)?, r.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every object some checkpoint needs: manifests, what they reference, and delta bases.
    pub fn reachable(&self) -> Result<HashSet<ObjectId>> {
        let mut stmt = self.conn.prepare(
            "WITH RECURSIVE live(id) AS ( \
               SELECT manifest_id FROM checkpoints \
               UNION SELECT record_id FROM checkpoints WHERE record_id IS NOT NULL \
               UNION SELECT r.object_id FROM manifest_refs r JOIN live l ON r.manifest_id = l.id \
               UNION SELECT o.delta_base FROM objects o JOIN live l ON o.id = l.id WHERE o.delta_base IS NOT NULL \
             ) SELECT id FROM live",
        )?;
        let rows = stmt.query_map([], |r| {
            let id: String = r.get(0)?;
            parse_id(&id)
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every row this build cannot read, as one message each (`verify` reports them): it reads
    /// every checkpoint, object, vector, merge and evaluation row the way the commands do.
    pub fn damaged_rows(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut scan = |sql: &str, read: &dyn Fn(&Row<'_>) -> rusqlite::Result<()>| -> Result<()> {
            let mut stmt = self.conn.prepare(sql)?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                if let Err(e) = read(row) {
                    out.push(match e {
                        rusqlite::Error::FromSqlConversionFailure(_, _, why) => why.to_string(),
                        other => crate::error::sqlite_message(&other),
                    });
                }
            }
            Ok(())
        };
        scan(
            &format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints c"),
            &|r| checkpoint_from_row(r).map(drop),
        )?;
        scan(&format!("SELECT {OBJECT_COLUMNS} FROM objects"), &|r| {
            object_from_row(r).map(drop)
        })?;
        scan(&format!("SELECT {VECTOR_COLUMNS} FROM vectors v"), &|r| {
            vector_from_row(r).map(drop)
        })?;
        scan(&format!("SELECT {MERGE_COLUMNS} FROM merges m"), &|r| {
            merge_from_row(r).map(drop)
        })?;
        if let Err(Error::Catalog(e)) = self.evaluations(None, None) {
            out.push(match e {
                rusqlite::Error::FromSqlConversionFailure(_, _, why) => why.to_string(),
                other => crate::error::sqlite_message(&other),
            });
        }
        Ok(out)
    }

    /// Checkpoints whose manifest row is absent or not stored: (reference, manifest id).
    pub fn checkpoints_without_manifest(&self) -> Result<Vec<(String, ObjectId)>> {
        let mut stmt = self.conn.prepare(
            "SELECT c.name || '@' || c.version, c.manifest_id FROM checkpoints c \
             LEFT JOIN objects o ON o.id = c.manifest_id WHERE o.id IS NULL OR o.state != 'stored'",
        )?;
        let rows = stmt.query_map([], |r| {
            let id: String = r.get(1)?;
            Ok((r.get(0)?, parse_id(&id)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// References from stored manifests to objects that are absent or not stored.
    pub fn dangling_refs(&self) -> Result<Vec<(String, ObjectId)>> {
        let mut stmt = self.conn.prepare(
            "SELECT r.name, r.object_id FROM manifest_refs r \
             JOIN objects m ON m.id = r.manifest_id AND m.state = 'stored' \
             LEFT JOIN objects o ON o.id = r.object_id WHERE o.id IS NULL OR o.state != 'stored'",
        )?;
        let rows = stmt.query_map([], |r| {
            let id: String = r.get(1)?;
            Ok((r.get(0)?, parse_id(&id)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Step one of removing objects: they turn `pending`, so a crash while their files are
    /// being deleted leaves rows that do not claim a file.
    pub fn mark_pending(&mut self, ids: &[ObjectId]) -> Result<()> {
        for batch in ids.chunks(GC_BATCH) {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut stmt =
                    tx.prepare_cached("UPDATE objects SET state = 'pending' WHERE id = ?1")?;
                for id in batch {
                    stmt.execute([id.to_hex()])?;
                }
            }
            tx.commit()?;
        }
        Ok(())
    }

    /// Step two: the rows (and their manifests' references) go.
    ///
    /// Deleted in batches of [`GC_BATCH`] rows, each its own transaction, so other writers are
    /// not locked out for the whole of a large gc. An object is deleted in the batch after
    /// every object that names it as delta base, so each batch commits with its foreign keys
    /// satisfied: the caller passes `ids` closed under "is the delta base of".
    /// Deletes the rows of `ids` that are still pending (a failed write's intent); stored
    /// rows are left alone.
    pub fn delete_pending(&mut self, ids: &[ObjectId]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt =
                tx.prepare_cached("DELETE FROM objects WHERE id = ?1 AND state = 'pending'")?;
            for id in ids {
                stmt.execute([id.to_hex()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn delete_objects(&mut self, ids: &[ObjectId]) -> Result<()> {
        // Deltas first, then what they are deltas of.
        let rows = self.objects(ids)?;
        let mut ordered: Vec<ObjectId> = ids.to_vec();
        ordered.sort_by_key(|id| rows.get(id).is_none_or(|r| r.delta_base.is_none()));
        for batch in ordered.chunks(GC_BATCH) {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut refs =
                    tx.prepare_cached("DELETE FROM manifest_refs WHERE manifest_id = ?1")?;
                let mut objs = tx.prepare_cached("DELETE FROM objects WHERE id = ?1")?;
                for id in batch {
                    refs.execute([id.to_hex()])?;
                    objs.execute([id.to_hex()])?;
                }
            }
            tx.commit()?;
        }
        Ok(())
    }
}

/// A vector row, with its checkpoints' `name@version` resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VectorRow {
    #[serde(skip)]
    pub rowid: i64,
    pub name: String,
    pub version: u32,
    pub kind: VectorKind,
    pub from: String,
    pub minus: String,
    #[serde(skip)]
    pub from_rowid: i64,
    #[serde(skip)]
    pub minus_rowid: i64,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub definition: ObjectId,
    pub tensor_count: u64,
    pub parameters: u64,
    pub l2_norm: f64,
    pub created_at: String,
}

impl VectorRow {
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// What a new vector row holds.
#[derive(Clone, Debug)]
pub struct NewVector {
    pub name: String,
    pub kind: VectorKind,
    pub from: i64,
    pub minus: i64,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub definition: ObjectId,
    pub l2_norm: f64,
    /// (tensor name, parameters, L2 norm), one per tensor.
    pub tensors: Vec<(String, u64, f64)>,
}

const VECTOR_COLUMNS: &str = "v.id, v.name, v.version, v.kind, \
     (SELECT c.name || '@' || c.version FROM checkpoints c WHERE c.id = v.from_id), \
     (SELECT c.name || '@' || c.version FROM checkpoints c WHERE c.id = v.minus_id), \
     v.from_id, v.minus_id, v.include, v.exclude, v.definition, v.tensor_count, v.parameters, v.l2_norm, v.created_at";

fn vector_from_row(row: &Row<'_>) -> rusqlite::Result<VectorRow> {
    let kind: String = row.get(3)?;
    let json = |i: usize| -> rusqlite::Result<Vec<String>> {
        let s: String = row.get(i)?;
        serde_json::from_str(&s).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    };
    let def: String = row.get(10)?;
    Ok(VectorRow {
        rowid: row.get(0)?,
        name: row.get(1)?,
        version: row.get(2)?,
        kind: VectorKind::parse(&kind).ok_or_else(|| {
            damaged(
                "vectors",
                &format!("id {}", row.get::<_, i64>(0).unwrap_or(-1)),
                "kind",
                &kind,
            )
        })?,
        from: row.get(4)?,
        minus: row.get(5)?,
        from_rowid: row.get(6)?,
        minus_rowid: row.get(7)?,
        include: json(8)?,
        exclude: json(9)?,
        definition: parse_id(&def)?,
        tensor_count: row.get(11)?,
        parameters: row.get(12)?,
        l2_norm: row.get(13)?,
        created_at: row.get(14)?,
    })
}

impl Catalog {
    /// Inserts a vector unless the latest version of its name has the same definition.
    /// Returns the row and whether it is new.
    pub fn insert_vector(&mut self, new: &NewVector) -> Result<(VectorRow, bool)> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let latest = tx
            .query_row(
                &format!("SELECT {VECTOR_COLUMNS} FROM vectors v WHERE v.name = ?1 ORDER BY v.version DESC LIMIT 1"),
                [&new.name],
                vector_from_row,
            )
            .optional()?;
        if let Some(l) = latest
            && l.definition == new.definition
        {
            tx.commit()?;
            return Ok((l, false));
        }
        let version = next_version(&tx, "vectors", &new.name)?;
        tx.execute(
            "INSERT INTO vectors (name, version, kind, from_id, minus_id, include, exclude, definition, \
             tensor_count, parameters, l2_norm) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                new.name,
                version,
                new.kind.as_str(),
                new.from,
                new.minus,
                serde_json::to_string(&new.include).expect("serializes"),
                serde_json::to_string(&new.exclude).expect("serializes"),
                new.definition.to_hex(),
                new.tensors.len() as u64,
                new.tensors.iter().map(|t| t.1).sum::<u64>(),
                new.l2_norm
            ],
        )?;
        let rowid = tx.last_insert_rowid();
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO vector_tensors (vector_id, name, parameters, l2_norm) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (name, params, norm) in &new.tensors {
                stmt.execute(params![rowid, name, params, norm])?;
            }
        }
        let row = tx.query_row(
            &format!("SELECT {VECTOR_COLUMNS} FROM vectors v WHERE v.id = ?1"),
            [rowid],
            vector_from_row,
        )?;
        tx.commit()?;
        Ok((row, true))
    }

    /// `name` at `version`, or its latest version.
    pub fn vector_by_name(&self, name: &str, version: Option<u32>) -> Result<Option<VectorRow>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {VECTOR_COLUMNS} FROM vectors v WHERE v.name = ?1 AND (?2 IS NULL OR v.version = ?2) \
                     ORDER BY v.version DESC LIMIT 1"
                ),
                params![name, version],
                vector_from_row,
            )
            .optional()?)
    }

    /// The first vector (by name and version) whose definition id is `definition`.
    pub fn vector_by_definition(&self, definition: &str) -> Result<Option<VectorRow>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {VECTOR_COLUMNS} FROM vectors v WHERE v.definition = ?1 ORDER BY v.name, v.version LIMIT 1"
                ),
                [definition],
                vector_from_row,
            )
            .optional()?)
    }

    pub fn vectors(&self) -> Result<Vec<VectorRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {VECTOR_COLUMNS} FROM vectors v ORDER BY v.name, v.version"
        ))?;
        let rows = stmt.query_map([], vector_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Per-tensor (name, parameters, L2 norm) of a vector, by name.
    pub fn vector_tensors(&self, vector: i64) -> Result<Vec<(String, u64, f64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, parameters, l2_norm FROM vector_tensors WHERE vector_id = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([vector], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

// ---------------------------------------------------------------------------------------------
// Merges.

/// The provenance of a merged checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MergeRow {
    #[serde(skip)]
    pub checkpoint_rowid: i64,
    pub recipe_hash: String,
    pub method: String,
    pub recipe_canonical: String,
    pub recipe_source: String,
    pub recipe_path: Option<String>,
    pub inputs: Vec<String>,
    pub crossmerge_version: String,
    pub created_at: String,
}

/// What a new merge row holds.
#[derive(Clone, Debug)]
pub struct NewMerge {
    pub recipe_hash: String,
    pub method: String,
    pub recipe_canonical: String,
    pub recipe_source: String,
    pub recipe_path: Option<String>,
    pub inputs: Vec<String>,
}

const MERGE_COLUMNS: &str = "m.checkpoint_id, m.recipe_hash, m.method, m.recipe_canonical, \
     m.recipe_source, m.recipe_path, m.inputs, m.crossmerge_version, m.created_at";

fn merge_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MergeRow> {
    let inputs: String = r.get(6)?;
    Ok(MergeRow {
        checkpoint_rowid: r.get(0)?,
        recipe_hash: r.get(1)?,
        method: r.get(2)?,
        recipe_canonical: r.get(3)?,
        recipe_source: r.get(4)?,
        recipe_path: r.get(5)?,
        inputs: serde_json::from_str(&inputs).map_err(|_| {
            damaged(
                "merges",
                &format!("of checkpoint id {}", r.get::<_, i64>(0).unwrap_or(-1)),
                "inputs",
                &inputs,
            )
        })?,
        crossmerge_version: r.get(7)?,
        created_at: r.get(8)?,
    })
}

/// The one insert of a checkpoint row, its tags and its merge provenance, inside `tx`: for a
/// commit and for a rebuild alike. Returns the row id.
fn insert_checkpoint(
    tx: &rusqlite::Transaction<'_>,
    new: &NewCheckpoint,
    version: u32,
    record: Option<&RecordRef>,
    merge: Option<&NewMerge>,
) -> Result<i64> {
    tx.execute(
        "INSERT INTO checkpoints (name, version, kind, manifest_id, architecture, base_id, language, task, \
         source_path, tensor_count, parameters, logical_size, record_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
         COALESCE(?14, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
        params![
            new.name,
            version,
            new.kind.as_str(),
            new.manifest_id.to_hex(),
            new.architecture,
            new.base,
            new.language,
            new.task,
            new.source_path,
            new.tensor_count,
            new.parameters,
            new.logical_size,
            record.map(|r| r.id.to_hex()),
            record.map(|r| r.created_at.as_str()),
        ],
    )?;
    let rowid = tx.last_insert_rowid();
    for (k, v) in &new.tags {
        tx.execute(
            "INSERT INTO tags (checkpoint_id, key, value) VALUES (?1, ?2, ?3) \
             ON CONFLICT (checkpoint_id, key) DO UPDATE SET value = excluded.value",
            params![rowid, k, v],
        )?;
    }
    if let Some(m) = merge {
        insert_merge(tx, rowid, m)?;
    }
    Ok(rowid)
}

fn insert_merge(tx: &rusqlite::Transaction<'_>, checkpoint: i64, m: &NewMerge) -> Result<()> {
    tx.execute(
        "INSERT INTO merges (recipe_hash, checkpoint_id, method, recipe_canonical, recipe_source, \
         recipe_path, inputs, crossmerge_version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (recipe_hash, checkpoint_id) DO NOTHING",
        params![
            m.recipe_hash,
            checkpoint,
            m.method,
            m.recipe_canonical,
            m.recipe_source,
            m.recipe_path,
            serde_json::to_string(&m.inputs).expect("strings serialise"),
            env!("CARGO_PKG_VERSION"),
        ],
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Trainings.

/// A training run, as `crossmerge train` records it with the checkpoint it registered.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct NewTraining {
    /// The checkpoint trained from (rowid).
    #[serde(skip)]
    pub source: i64,
    pub task: String,
    pub language: Option<String>,
    /// `[{role, path, hash}]`: the training and dev files with their blake3.
    pub data: serde_json::Value,
    /// Every setting of the run.
    pub settings: serde_json::Value,
    pub seed: u64,
    pub device: String,
    pub duration_s: f64,
    pub steps: u64,
    pub kept_step: u64,
    /// `best_dev` or `last`.
    pub kept: String,
    /// `[[step, loss], …]`.
    pub losses: serde_json::Value,
    /// `[{step, metrics}]`.
    pub dev: serde_json::Value,
}

/// A stored training run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainingRow {
    pub id: i64,
    /// The trained checkpoint, `name@version`.
    pub checkpoint: String,
    /// The checkpoint trained from, `name@version`.
    pub source: String,
    pub source_manifest: ObjectId,
    pub crossmerge_version: String,
    pub created_at: String,
    #[serde(flatten)]
    pub run: NewTraining,
}

fn insert_training(tx: &rusqlite::Transaction<'_>, checkpoint: i64, t: &NewTraining) -> Result<()> {
    let json = |v: &serde_json::Value| v.to_string();
    tx.execute(
        "INSERT INTO trainings (checkpoint_id, source_id, task, language, data, settings, seed, device, \
         crossmerge_version, duration_s, steps, kept_step, kept, losses, dev) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        params![
            checkpoint,
            t.source,
            t.task,
            t.language,
            json(&t.data),
            json(&t.settings),
            t.seed.cast_signed(),
            t.device,
            env!("CARGO_PKG_VERSION"),
            t.duration_s,
            t.steps,
            t.kept_step,
            t.kept,
            json(&t.losses),
            json(&t.dev),
        ],
    )?;
    Ok(())
}

impl Catalog {
    /// Training runs, oldest first; only those that registered `checkpoint` (rowid) when given.
    pub fn trainings(&self, checkpoint: Option<i64>) -> Result<Vec<TrainingRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT t.id, c.name || '@' || c.version, s.name || '@' || s.version, s.manifest_id, \
             t.crossmerge_version, t.created_at, t.source_id, t.task, t.language, t.data, t.settings, \
             t.seed, t.device, t.duration_s, t.steps, t.kept_step, t.kept, t.losses, t.dev \
             FROM trainings t JOIN checkpoints c ON c.id = t.checkpoint_id \
             JOIN checkpoints s ON s.id = t.source_id \
             WHERE (?1 IS NULL OR t.checkpoint_id = ?1) ORDER BY t.id",
        )?;
        let json = |s: String| serde_json::from_str(&s).unwrap_or(serde_json::Value::Null);
        let rows = stmt
            .query_map([checkpoint], |r| {
                let manifest: String = r.get(3)?;
                let seed: i64 = r.get(11)?;
                Ok(TrainingRow {
                    id: r.get(0)?,
                    checkpoint: r.get(1)?,
                    source: r.get(2)?,
                    source_manifest: parse_id(&manifest)?,
                    crossmerge_version: r.get(4)?,
                    created_at: r.get(5)?,
                    run: NewTraining {
                        source: r.get(6)?,
                        task: r.get(7)?,
                        language: r.get(8)?,
                        data: json(r.get(9)?),
                        settings: json(r.get(10)?),
                        seed: seed.cast_unsigned(),
                        device: r.get(12)?,
                        duration_s: r.get(13)?,
                        steps: r.get(14)?,
                        kept_step: r.get(15)?,
                        kept: r.get(16)?,
                        losses: json(r.get(17)?),
                        dev: json(r.get(18)?),
                    },
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluations.

/// One stored evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvaluationRow {
    /// The evaluation's id (64 hex; `None` for rows older than ids): the same for every run
    /// of the same evaluation.
    pub id: Option<String>,
    pub checkpoint: String,
    pub manifest_id: ObjectId,
    pub task: String,
    pub language: Option<String>,
    pub dataset_hash: String,
    pub dataset_path: String,
    pub split: Option<String>,
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub examples: u64,
    pub truncated: u64,
    pub device: String,
    pub crossmerge_version: String,
    pub duration_s: f64,
    pub created_at: String,
    /// The options that changed the numbers (`max_length`, `label_map`, MLM `scoring`).
    pub settings: serde_json::Value,
}

/// What a new evaluation row holds.
#[derive(Clone, Debug)]
pub struct NewEvaluation {
    /// The evaluation's id ([`EvaluationRow::id`]).
    pub key: String,
    pub checkpoint: i64,
    pub task: String,
    pub language: Option<String>,
    pub dataset_hash: String,
    pub dataset_path: String,
    pub split: Option<String>,
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub examples: u64,
    pub truncated: u64,
    pub device: String,
    pub duration_s: f64,
    pub settings: serde_json::Value,
}

impl Catalog {
    pub fn insert_evaluation(&mut self, e: &NewEvaluation) -> Result<()> {
        self.conn.execute(
            "INSERT INTO evaluations (checkpoint_id, task, language, dataset_hash, dataset_path, split, \
             metrics, examples, truncated, device, crossmerge_version, duration_s, settings, key) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                e.checkpoint,
                e.task,
                e.language,
                e.dataset_hash,
                e.dataset_path,
                e.split,
                serde_json::to_string(&e.metrics).expect("numbers serialise"),
                e.examples,
                e.truncated,
                e.device,
                env!("CARGO_PKG_VERSION"),
                e.duration_s,
                e.settings.to_string(),
                e.key,
            ],
        )?;
        Ok(())
    }

    /// Evaluations, oldest first, optionally of one task or language.
    pub fn evaluations(
        &self,
        task: Option<&str>,
        language: Option<&str>,
    ) -> Result<Vec<EvaluationRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations e JOIN checkpoints c ON c.id = e.checkpoint_id \
             WHERE (?1 IS NULL OR e.task = ?1) AND (?2 IS NULL OR e.language = ?2) ORDER BY e.id"
        ))?;
        let rows = stmt.query_map(params![task, language], evaluation_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The latest evaluation whose id starts with `prefix` (lowercase hex), with the rowid of
    /// its checkpoint; an error when the prefix names more than one evaluation.
    pub fn evaluation_by_id(&self, prefix: &str) -> Result<Option<(EvaluationRow, i64)>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {EVALUATION_COLUMNS}, e.checkpoint_id FROM evaluations e JOIN checkpoints c ON c.id = e.checkpoint_id \
             WHERE e.key >= ?1 AND e.key < ?1 || 'g' ORDER BY e.id DESC"
        ))?;
        let rows: Vec<(EvaluationRow, i64)> = stmt
            .query_map([prefix], |r| Ok((evaluation_from_row(r)?, r.get(16)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut ids: Vec<&str> = rows.iter().filter_map(|(e, _)| e.id.as_deref()).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > 1 {
            return Err(Error::invalid(
                format!(
                    "evaluation id `{prefix}` is ambiguous: it starts {} evaluations",
                    ids.len()
                ),
                "give more hex characters of the id",
            ));
        }
        Ok(rows.into_iter().next())
    }
}

const EVALUATION_COLUMNS: &str = "c.name || '@' || c.version, c.manifest_id, e.task, e.language, \
     e.dataset_hash, e.dataset_path, e.split, e.metrics, e.examples, e.truncated, e.device, \
     e.crossmerge_version, e.duration_s, e.created_at, e.settings, e.key";

fn evaluation_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EvaluationRow> {
    let metrics: String = r.get(7)?;
    let manifest: String = r.get(1)?;
    let settings: String = r.get(14)?;
    let of = || format!("of `{}`", r.get::<_, String>(0).unwrap_or_default());
    Ok(EvaluationRow {
        id: r.get(15)?,
        checkpoint: r.get(0)?,
        manifest_id: parse_id(&manifest)?,
        task: r.get(2)?,
        language: r.get(3)?,
        dataset_hash: r.get(4)?,
        dataset_path: r.get(5)?,
        split: r.get(6)?,
        metrics: serde_json::from_str(&metrics)
            .map_err(|_| damaged("evaluations", &of(), "metrics", &metrics))?,
        examples: r.get(8)?,
        truncated: r.get(9)?,
        device: r.get(10)?,
        crossmerge_version: r.get(11)?,
        duration_s: r.get(12)?,
        created_at: r.get(13)?,
        settings: serde_json::from_str(&settings)
            .map_err(|_| damaged("evaluations", &of(), "settings", &settings))?,
    })
}

/// Names of checkpoints and vectors: letters, digits, `.`, `_`, `-`, `/`, starting with a
/// letter or digit, no `..`, at most 200 bytes (so `@version` and id prefixes stay unambiguous).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/+=".contains(c))
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("`{name}` is not a valid {what} name"),
            "use letters, digits and `.`, `_`, `-`, `/`, `+`, `=`, starting with a letter or digit (no `@`)",
        ))
    }
}

/// Kind of a vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorKind {
    Task,
    Language,
}

impl VectorKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            VectorKind::Task => "task",
            VectorKind::Language => "language",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "task" => Some(Self::Task),
            "language" => Some(Self::Language),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Work done on a copy of the catalog (a Slurm worker's unit), found again by row id.

/// The highest row id of each table a unit of work adds to: what a copy of the catalog held
/// before the unit ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Marks {
    pub objects: i64,
    pub checkpoints: i64,
    pub vectors: i64,
    pub evaluations: i64,
}

impl Catalog {
    pub fn marks(&self) -> Result<Marks> {
        let max = |table: &str| -> Result<i64> {
            Ok(self.conn.query_row(
                &format!("SELECT coalesce(max(rowid), 0) FROM {table}"),
                [],
                |r| r.get(0),
            )?)
        };
        Ok(Marks {
            objects: max("objects")?,
            checkpoints: max("checkpoints")?,
            vectors: max("vectors")?,
            evaluations: max("evaluations")?,
        })
    }

    /// Stored objects added after `mark`, in the order they were added.
    pub fn objects_after(&self, mark: i64) -> Result<Vec<ObjectRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {OBJECT_COLUMNS} FROM objects WHERE rowid > ?1 AND state = 'stored' ORDER BY rowid"
        ))?;
        let rows = stmt.query_map([mark], object_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Checkpoints added after `mark`, oldest first, each with its record object's id.
    pub fn checkpoints_after(&self, mark: i64) -> Result<Vec<(CheckpointRow, Option<ObjectId>)>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {CHECKPOINT_COLUMNS}, c.record_id FROM checkpoints c WHERE c.id > ?1 ORDER BY c.id"
        ))?;
        let rows = stmt
            .query_map([mark], |r| {
                let record: Option<String> = r.get(14)?;
                Ok((checkpoint_from_row(r)?, record))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(row, record)| {
                let record = record.as_deref().map(parse_id).transpose()?;
                Ok((self.with_tags(row)?, record))
            })
            .collect()
    }

    /// Vectors added after `mark`, oldest first.
    pub fn vectors_after(&self, mark: i64) -> Result<Vec<VectorRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {VECTOR_COLUMNS} FROM vectors v WHERE v.id > ?1 ORDER BY v.id"
        ))?;
        let rows = stmt.query_map([mark], vector_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Evaluations added after `mark`, oldest first.
    pub fn evaluations_after(&self, mark: i64) -> Result<Vec<EvaluationRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations e JOIN checkpoints c ON c.id = e.checkpoint_id \
             WHERE e.id > ?1 ORDER BY e.id"
        ))?;
        let rows = stmt.query_map([mark], evaluation_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Writes a consistent copy of the catalog to `to` (which must not exist): what workers
    /// that may not open this file (it lives on a shared filesystem) start from.
    pub fn snapshot(&self, to: &Path) -> Result<()> {
        let to = to.to_str().ok_or_else(|| {
            Error::invalid(
                format!("`{}` is not UTF-8", to.display()),
                "use a registry path that is valid UTF-8",
            )
        })?;
        self.conn.execute("VACUUM INTO ?1", [to])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections that create one new catalog at the same moment all get it: none is refused
    /// as busy while another switches the new file to WAL.
    #[test]
    fn connections_creating_one_catalog_at_once_all_open_it() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..40 {
            let path = dir.path().join(format!("catalog-{round}.sqlite3"));
            let start = std::sync::Barrier::new(6);
            std::thread::scope(|s| {
                let opened: Vec<_> = (0..6)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            Catalog::open(&path).map(|c| c.schema_version().unwrap())
                        })
                    })
                    .collect();
                for o in opened {
                    assert_eq!(o.join().unwrap().unwrap(), SCHEMA_VERSION, "round {round}");
                }
            });
        }
    }

    fn new_checkpoint(manifest: ObjectId) -> NewCheckpoint {
        NewCheckpoint {
            name: "m".to_owned(),
            kind: CheckpointKind::Base,
            manifest_id: manifest,
            architecture: None,
            base: None,
            language: None,
            task: None,
            source_path: None,
            tensor_count: 0,
            parameters: 0,
            logical_size: 0,
            tags: Vec::new(),
        }
    }

    /// No checkpoint row without its record: a commit that carries none (the caller believed
    /// the latest row already was this content) inserts nothing, and so does one whose record
    /// was written for a version another writer has taken.
    #[test]
    fn no_row_is_inserted_without_a_record_for_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&dir.path().join("catalog.sqlite3")).unwrap();
        let manifest = ObjectId::from_bytes([1; 32]);
        let record = ObjectId::from_bytes([2; 32]);
        let row = |id| ObjectRow {
            id,
            kind: ObjectKind::Manifest,
            stored: false,
            raw_size: 1,
            stored_size: None,
            delta_base: None,
        };
        c.insert_pending(&[row(manifest), row(record)]).unwrap();
        let new = new_checkpoint(manifest);
        let stored = [(manifest, 1), (record, 1)];
        let none = c
            .commit_checkpoint(&stored, &[], &new, None, None, None)
            .unwrap();
        assert!(matches!(none, Commit::VersionTaken));
        let stale = RecordRef {
            id: record,
            version: 2,
            created_at: "2026-11-30T00:00:00.000Z".to_owned(),
        };
        let taken = c
            .commit_checkpoint(&stored, &[], &new, None, None, Some(&stale))
            .unwrap();
        assert!(matches!(taken, Commit::VersionTaken));
        assert!(
            c.checkpoints(&CheckpointFilter::default())
                .unwrap()
                .is_empty()
        );
        let fresh = RecordRef {
            version: 1,
            ..stale
        };
        let done = c
            .commit_checkpoint(&stored, &[], &new, None, None, Some(&fresh))
            .unwrap();
        assert!(matches!(done, Commit::Done(_, true)));
        // The same content again needs no record.
        let again = c
            .commit_checkpoint(&stored, &[], &new, None, None, None)
            .unwrap();
        assert!(matches!(again, Commit::Done(_, false)));
    }
}
