//! Content-addressed object storage behind a narrow I/O trait.
//!
//! The store knows bytes and ids, not tensors or catalogs. [`Backend`] is the only way objects
//! reach a disk: [`FsBackend`] is the real one, [`MemBackend`] keeps everything in memory for
//! tests, and [`FaultBackend`] wraps either and fails the N-th I/O step so tests can prove a
//! crash at any step leaves the registry consistent.
//!
//! Writes are atomic: an object is written to a temporary file under `tmp/`, synced, then
//! renamed to `objects/ab/<hex>`. A reader therefore sees a whole object or none; a crash
//! leaves at worst a stray temporary file that `gc` removes.

//! # Place in the workspace
//!
//! The bottom layer: it depends on no other crossmerge crate. `crossmerge-core` (catalog,
//! registry) and `crossmerge-nn` (models) build on it; it holds the one error type they share,
//! so that an error keeps its path, object and hint across layers.
//!
//! Modules: [`id`] (blake3 content ids), [`codec`] (the object format: header, zstd chunks,
//! XOR deltas), [`atomic`] (temp → fsync → rename → fsync the directory), [`error`], [`pool`]
//! (reused buffers), [`write_behind`] (a bounded writer thread), and the backends here.

pub mod atomic;
pub mod codec;
pub mod error;
pub mod id;
pub mod pool;
pub mod remote;
pub mod write_behind;

pub use error::{Error, Result};

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::id::ObjectId;

/// Random access to one stored object.
pub trait ObjectReader: Send + Sync {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// A new object being written. Dropping it without [`ObjectWriter::commit`] discards it.
pub trait ObjectWriter: Send {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes the object durable and visible under `id`, atomically.
    fn commit(self: Box<Self>, id: &ObjectId) -> io::Result<()>;
}

/// Where objects live. Every method is one I/O step (what [`FaultBackend`] counts).
pub trait Backend: Send + Sync {
    /// Opens an object; `ErrorKind::NotFound` if absent.
    fn open(&self, id: &ObjectId) -> io::Result<Box<dyn ObjectReader>>;
    fn exists(&self, id: &ObjectId) -> io::Result<bool>;
    fn create(&self) -> io::Result<Box<dyn ObjectWriter>>;
    /// Removes an object; removing an absent object is not an error.
    fn remove(&self, id: &ObjectId) -> io::Result<()>;
    fn list(&self) -> io::Result<Vec<ObjectId>>;
    /// Temporary files left by interrupted writes: how many there are.
    fn count_tmp(&self) -> io::Result<usize>;
    /// Removes temporary files left by interrupted writes. Only safe while no writer runs.
    fn clean_tmp(&self) -> io::Result<usize>;
}

// ---------------------------------------------------------------------------------------------

/// Objects as files under `root/objects/ab/<hex>`, temporaries under `root/tmp/`.
#[derive(Debug)]
pub struct FsBackend {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FsBackend {
    /// Uses (and creates if needed) `objects/` and `tmp/` under `root`.
    pub fn new(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root.join("objects"))?;
        fs::create_dir_all(root.join("tmp"))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Uses `objects/` under `root` as it is, creating nothing (a read-only registry).
    pub fn existing(root: &Path) -> io::Result<Self> {
        if !root.join("objects").is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the registry has no objects/ folder",
            ));
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn object_path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join("objects").join(&hex[..2]).join(&hex)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

struct FsReader {
    file: File,
    len: u64,
}

impl ObjectReader for FsReader {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

struct FsWriter {
    file: Option<File>,
    tmp: PathBuf,
    objects: PathBuf,
    behind: Option<crate::write_behind::WriteBehind>,
}

impl ObjectWriter for FsWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let file = self.file.as_mut().expect("open until commit");
        file.write_all(buf)?;
        if self.behind.is_none() {
            self.behind = Some(crate::write_behind::WriteBehind::new(file)?);
        }
        self.behind.as_mut().expect("just set").wrote(buf.len())
    }

    fn commit(mut self: Box<Self>, id: &ObjectId) -> io::Result<()> {
        let file = self.file.take().expect("open until commit");
        if let Some(b) = self.behind.take() {
            b.finish()?;
        }
        file.sync_all()?;
        drop(file);
        let hex = id.to_hex();
        let dir = self.objects.join(&hex[..2]);
        fs::create_dir_all(&dir)?;
        // The rename is durable once the directory entry is.
        crate::atomic::rename_durably(&self.tmp, &dir.join(&hex))
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Backend for FsBackend {
    fn open(&self, id: &ObjectId) -> io::Result<Box<dyn ObjectReader>> {
        let file = File::open(self.object_path(id))?;
        let len = file.metadata()?.len();
        Ok(Box::new(FsReader { file, len }))
    }

    fn exists(&self, id: &ObjectId) -> io::Result<bool> {
        self.object_path(id).try_exists()
    }

    fn create(&self) -> io::Result<Box<dyn ObjectWriter>> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = self
            .tmp_dir()
            .join(format!("{}-{n}-{nanos}.partial", std::process::id()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        Ok(Box::new(FsWriter {
            file: Some(file),
            tmp,
            objects: self.root.join("objects"),
            behind: None,
        }))
    }

    fn remove(&self, id: &ObjectId) -> io::Result<()> {
        match fs::remove_file(self.object_path(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn list(&self) -> io::Result<Vec<ObjectId>> {
        let mut out = Vec::new();
        for shard in fs::read_dir(self.root.join("objects"))? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                if let Some(id) = entry.file_name().to_str().and_then(ObjectId::parse_hex) {
                    out.push(id);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn count_tmp(&self) -> io::Result<usize> {
        Ok(fs::read_dir(self.tmp_dir())?.count())
    }

    fn clean_tmp(&self) -> io::Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(self.tmp_dir())? {
            let entry = entry?;
            // tmp/ is crossmerge's own scratch: whatever stands there (a folder too) goes.
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
            n += 1;
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------

/// Objects in memory; for tests and for tools that need a throwaway store.
#[derive(Default, Clone)]
pub struct MemBackend {
    objects: Arc<Mutex<HashMap<ObjectId, Arc<Vec<u8>>>>>,
}

impl MemBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces an object's bytes (tests use this to simulate damage).
    pub fn put_raw(&self, id: ObjectId, bytes: Vec<u8>) {
        self.objects
            .lock()
            .expect("not poisoned")
            .insert(id, Arc::new(bytes));
    }

    pub fn get_raw(&self, id: &ObjectId) -> Option<Vec<u8>> {
        self.objects
            .lock()
            .expect("not poisoned")
            .get(id)
            .map(|b| b.as_ref().clone())
    }
}

impl ObjectReader for Arc<Vec<u8>> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

struct MemWriter {
    buf: Vec<u8>,
    objects: Arc<Mutex<HashMap<ObjectId, Arc<Vec<u8>>>>>,
}

impl ObjectWriter for MemWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(buf);
        Ok(())
    }
    fn commit(self: Box<Self>, id: &ObjectId) -> io::Result<()> {
        let me = *self;
        me.objects
            .lock()
            .expect("not poisoned")
            .insert(*id, Arc::new(me.buf));
        Ok(())
    }
}

impl Backend for MemBackend {
    fn open(&self, id: &ObjectId) -> io::Result<Box<dyn ObjectReader>> {
        let map = self.objects.lock().expect("not poisoned");
        let bytes = map.get(id).ok_or(io::ErrorKind::NotFound)?;
        Ok(Box::new(Arc::clone(bytes)))
    }
    fn exists(&self, id: &ObjectId) -> io::Result<bool> {
        Ok(self.objects.lock().expect("not poisoned").contains_key(id))
    }
    fn create(&self) -> io::Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(MemWriter {
            buf: Vec::new(),
            objects: Arc::clone(&self.objects),
        }))
    }
    fn remove(&self, id: &ObjectId) -> io::Result<()> {
        self.objects.lock().expect("not poisoned").remove(id);
        Ok(())
    }
    fn list(&self) -> io::Result<Vec<ObjectId>> {
        let mut ids: Vec<_> = self
            .objects
            .lock()
            .expect("not poisoned")
            .keys()
            .copied()
            .collect();
        ids.sort();
        Ok(ids)
    }
    fn count_tmp(&self) -> io::Result<usize> {
        Ok(0)
    }
    fn clean_tmp(&self) -> io::Result<usize> {
        Ok(0)
    }
}

// ---------------------------------------------------------------------------------------------

/// Wraps a backend and fails its `fail_at`-th I/O step (counting from 0) with an injected
/// error, and every step after it, as a crashed process would. Reads, writes, commits,
/// listings and removals all count as steps.
pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    state: Arc<FaultState>,
}

struct FaultState {
    fail_at: usize,
    /// Only the `fail_at`-th step fails (a transient error), not every one after it.
    once: bool,
    steps: AtomicUsize,
}

impl FaultState {
    fn step(&self) -> io::Result<()> {
        let n = self.steps.fetch_add(1, Ordering::SeqCst);
        if n == self.fail_at || (n > self.fail_at && !self.once) {
            Err(io::Error::other(format!("injected fault at I/O step {n}")))
        } else {
            Ok(())
        }
    }
}

impl FaultBackend {
    pub fn new(inner: Arc<dyn Backend>, fail_at: usize) -> Self {
        Self {
            inner,
            state: Arc::new(FaultState {
                fail_at,
                once: false,
                steps: AtomicUsize::new(0),
            }),
        }
    }

    /// Fails only the `fail_at`-th step (a transient error: a full disk that frees up, a
    /// dropped connection); the steps after it succeed, so the caller can clean up.
    pub fn once(inner: Arc<dyn Backend>, fail_at: usize) -> Self {
        Self {
            inner,
            state: Arc::new(FaultState {
                fail_at,
                once: true,
                steps: AtomicUsize::new(0),
            }),
        }
    }

    /// How many I/O steps have been attempted so far.
    pub fn steps(&self) -> usize {
        self.state.steps.load(Ordering::SeqCst)
    }
}

struct FaultReader {
    inner: Box<dyn ObjectReader>,
    state: Arc<FaultState>,
}

impl ObjectReader for FaultReader {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.state.step()?;
        self.inner.read_exact_at(buf, offset)
    }
}

struct FaultWriter {
    inner: Box<dyn ObjectWriter>,
    state: Arc<FaultState>,
}

impl ObjectWriter for FaultWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.state.step()?;
        self.inner.write_all(buf)
    }
    fn commit(self: Box<Self>, id: &ObjectId) -> io::Result<()> {
        self.state.step()?;
        self.inner.commit(id)
    }
}

impl Backend for FaultBackend {
    fn open(&self, id: &ObjectId) -> io::Result<Box<dyn ObjectReader>> {
        self.state.step()?;
        Ok(Box::new(FaultReader {
            inner: self.inner.open(id)?,
            state: Arc::clone(&self.state),
        }))
    }
    fn exists(&self, id: &ObjectId) -> io::Result<bool> {
        self.state.step()?;
        self.inner.exists(id)
    }
    fn create(&self) -> io::Result<Box<dyn ObjectWriter>> {
        self.state.step()?;
        Ok(Box::new(FaultWriter {
            inner: self.inner.create()?,
            state: Arc::clone(&self.state),
        }))
    }
    fn remove(&self, id: &ObjectId) -> io::Result<()> {
        self.state.step()?;
        self.inner.remove(id)
    }
    fn list(&self) -> io::Result<Vec<ObjectId>> {
        self.state.step()?;
        self.inner.list()
    }
    fn count_tmp(&self) -> io::Result<usize> {
        self.state.step()?;
        self.inner.count_tmp()
    }
    fn clean_tmp(&self) -> io::Result<usize> {
        self.state.step()?;
        self.inner.clean_tmp()
    }
}
