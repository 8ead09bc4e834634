//! The one way crossmerge makes a file or folder appear durably: content written to a
//! temporary sibling and synced, renamed into place, then the directory synced so the rename
//! itself survives a crash. A reader sees the old state or the new one, never a torn file.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` and syncs it (for files inside a folder that is itself renamed into
/// place later, and for the temporary side of [`write_file`]).
pub fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Syncs a directory, making the renames and creations inside it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames `from` to `to` (a file or a folder) and syncs `to`'s directory.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// Writes `bytes` to `path` atomically: `tmp` (a sibling on the same file system), synced,
/// renamed over `path`, directory synced.
pub fn write_file(path: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let written = write_synced(tmp, bytes).and_then(|()| rename_durably(tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_appears_whole_and_no_temporary_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("FORMAT");
        let tmp = dir.path().join(".FORMAT.tmp");
        write_file(&path, &tmp, b"one\n").unwrap();
        write_file(&path, &tmp, b"two\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two\n");
        assert!(!tmp.exists());
        // A failed rename (into a missing folder) leaves no temporary file behind.
        let missing = dir.path().join("absent/FORMAT");
        assert!(write_file(&missing, &tmp, b"x").is_err());
        assert!(!tmp.exists());
    }
}
