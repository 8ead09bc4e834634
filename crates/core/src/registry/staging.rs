//! Backends and sinks for objects on their way into the store: staged by a pull or a unit of
//! work, read through the stage first and the registry's store then.

use std::io;
use std::sync::Arc;

use crate::id::ObjectId;
use crate::store::{Backend, FsBackend, ObjectReader, ObjectWriter};

/// Reads objects from the staging folder, then from the registry (a staged delta's base may
/// be either); writes into the staging folder only.
pub(crate) struct StagedBackend {
    pub(crate) stage: FsBackend,
    pub(crate) main: Arc<dyn Backend>,
}

impl Backend for StagedBackend {
    fn open(&self, id: &ObjectId) -> io::Result<Box<dyn ObjectReader>> {
        match self.stage.open(id) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.main.open(id),
            other => other,
        }
    }
    fn exists(&self, id: &ObjectId) -> io::Result<bool> {
        Ok(self.stage.exists(id)? || self.main.exists(id)?)
    }
    fn create(&self) -> io::Result<Box<dyn ObjectWriter>> {
        self.stage.create()
    }
    fn remove(&self, id: &ObjectId) -> io::Result<()> {
        self.stage.remove(id)
    }
    fn list(&self) -> io::Result<Vec<ObjectId>> {
        self.stage.list()
    }
    fn count_tmp(&self) -> io::Result<usize> {
        self.stage.count_tmp()
    }
    fn clean_tmp(&self) -> io::Result<usize> {
        self.stage.clean_tmp()
    }
}

/// An object writer as `io::Write` (what a download streams into).
pub(crate) struct WriterSink<'a>(pub(crate) &'a mut dyn ObjectWriter);

impl io::Write for WriterSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
