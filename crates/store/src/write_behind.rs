//! Early write-back for large files. Dirty pages of a file being written are not sent to disk
//! until the kernel's thresholds or the final `fsync`, which then waits for all of them while
//! the CPU sits idle. A helper thread that calls `fdatasync` every [`STEP`] bytes overlaps
//! the disk with the work that produces the next bytes; the final sync is then short.

use std::fs::File;
use std::io;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

/// Bytes written between early syncs.
pub const STEP: u64 = 64 << 20;

pub struct WriteBehind {
    file: File,
    since: u64,
    worker: Option<(SyncSender<()>, JoinHandle<io::Result<()>>)>,
}

impl WriteBehind {
    /// Watches `file` (through a duplicated handle).
    pub fn new(file: &File) -> io::Result<Self> {
        Ok(Self {
            file: file.try_clone()?,
            since: 0,
            worker: None,
        })
    }

    /// Records `n` more bytes written; past [`STEP`], asks the helper for a sync (skipped if
    /// one is still running: the next will cover these bytes too).
    pub fn wrote(&mut self, n: usize) -> io::Result<()> {
        self.since += n as u64;
        if self.since < STEP {
            return Ok(());
        }
        self.since = 0;
        if self.worker.is_none() {
            let (tx, rx) = sync_channel::<()>(1);
            let file = self.file.try_clone()?;
            let handle = std::thread::Builder::new()
                .name("write-behind".into())
                .spawn(move || {
                    for () in rx {
                        file.sync_data()?;
                    }
                    Ok(())
                })?;
            self.worker = Some((tx, handle));
        }
        if let Some((tx, _)) = &self.worker {
            match tx.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => return self.finish_inner(),
            }
        }
        Ok(())
    }

    /// Stops the helper and reports any error it met. The caller still syncs the file.
    pub fn finish(mut self) -> io::Result<()> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> io::Result<()> {
        match self.worker.take() {
            None => Ok(()),
            Some((tx, handle)) => {
                drop(tx);
                handle
                    .join()
                    .map_err(|_| io::Error::other("write-behind thread panicked"))?
            }
        }
    }
}
