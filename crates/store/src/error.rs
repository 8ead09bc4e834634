//! The library's error type. Every variant carries what a person needs to act: the path, the
//! tensor or object, and (through [`Error::hint`]) one remedy line.

use std::path::PathBuf;

use crate::codec::DecodeError;
use crate::id::ObjectId;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file handed to crossmerge is not what it claims to be (bad header, offsets, names).
    #[error("`{}`: {problem}", path.display())]
    BadInput {
        path: PathBuf,
        problem: String,
        hint: String,
    },

    /// A name, version or id prefix matched nothing.
    #[error("no {what} matches `{reference}`")]
    NotFound {
        what: &'static str,
        reference: String,
        hint: String,
    },

    /// An id prefix matched several artifacts.
    #[error("`{prefix}` is ambiguous: it matches {}", candidates.join(", "))]
    Ambiguous {
        prefix: String,
        candidates: Vec<String>,
    },

    /// A recipe that cannot be carried out: its file, the line when known, what and why.
    #[error("`{}{}`: {problem}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Recipe {
        path: PathBuf,
        line: Option<usize>,
        problem: String,
        hint: String,
    },

    /// A request that cannot be carried out as given (bad option value, conflicting flags).
    #[error("{message}")]
    Invalid { message: String, hint: String },

    /// A stored object failed its check on read: it never yields wrong bytes.
    #[error("object `{object}`{} is {problem}", tensor.as_ref().map(|t| format!(" (tensor `{t}`)")).unwrap_or_default())]
    Corrupt {
        object: ObjectId,
        tensor: Option<String>,
        problem: String,
    },

    /// A stored object the catalog names is absent.
    #[error("object `{object}`{} is missing from the store", tensor.as_ref().map(|t| format!(" (tensor `{t}`)")).unwrap_or_default())]
    MissingObject {
        object: ObjectId,
        tensor: Option<String>,
    },

    /// The directory is not a crossmerge registry, or one of a newer format.
    #[error("`{}` is not a crossmerge registry: {problem}", path.display())]
    NotARegistry { path: PathBuf, problem: String },

    /// An existing registry whose catalog is missing, empty or unreadable.
    #[error("the registry's catalog `{}` cannot be used: {problem}", path.display())]
    CatalogLost { path: PathBuf, problem: String },

    #[error("{action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A remote registry that cannot be reached, read or written (never names a credential).
    #[error("remote `{remote}`: {message}")]
    Remote {
        remote: String,
        message: String,
        hint: String,
    },

    #[error("catalog: {}", sqlite_message(.0))]
    Catalog(#[from] rusqlite::Error),
}

impl Error {
    /// One line a person can act on, printed after the error as `hint: …`.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::BadInput { hint, .. }
            | Error::NotFound { hint, .. }
            | Error::Recipe { hint, .. }
            | Error::Invalid { hint, .. }
            | Error::Remote { hint, .. } => Some(hint.clone()),
            Error::Ambiguous { .. } => {
                Some("give more hex characters, or use `name@version`".to_owned())
            }
            Error::Corrupt { .. } | Error::MissingObject { .. } => Some(
                "run `crossmerge verify` to list every damaged object; re-register the checkpoint from its source to repair it"
                    .to_owned(),
            ),
            Error::NotARegistry { .. } => Some(
                "point `--registry` (or CROSSMERGE_REGISTRY) at a registry, or create one there with `crossmerge init --registry DIR`"
                    .to_owned(),
            ),
            Error::CatalogLost { .. } => Some(
                "nothing was changed; run `crossmerge rebuild-catalog` to recover the catalog from the objects"
                    .to_owned(),
            ),
            Error::Io { source, .. } => Some(
                match source.kind() {
                    std::io::ErrorKind::NotFound => "check the path",
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                        "the disk is full: free space, then run the command again (`crossmerge gc` removes what a failed write left)"
                    }
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                        "check the permissions of the path (and that its file system is writable)"
                    }
                    std::io::ErrorKind::IsADirectory | std::io::ErrorKind::NotADirectory => {
                        "something else stands where crossmerge expects a file or folder; move it away"
                    }
                    _ => "check the path and the disk; `crossmerge verify` checks the registry",
                }
                .to_owned(),
            ),
            Error::Catalog(e) if is_read_only(e) => Some(
                "the registry was opened read-only, or its catalog file is not writable: write through a read-write open (check the file's permissions)"
                    .to_owned(),
            ),
            Error::Catalog(e) if is_busy(e) => Some(
                "another crossmerge process held the registry's catalog for longer than the 2 minutes a command waits: run the command again once it has finished"
                    .to_owned(),
            ),
            Error::Catalog(_) => Some(
                "the catalog may be damaged: run `crossmerge verify`; if it cannot be opened, `crossmerge rebuild-catalog` recovers it from the objects"
                    .to_owned(),
            ),
        }
    }

    /// Whether the error is the user's to fix (exit code 1) rather than unexpected (exit 2).
    pub fn is_user_error(&self) -> bool {
        use std::io::ErrorKind as K;
        !matches!(self, Error::Catalog(e) if !is_read_only(e) && !is_busy(e))
            && !matches!(self, Error::Io { source, .. } if !matches!(
                source.kind(),
                K::NotFound | K::StorageFull | K::QuotaExceeded | K::PermissionDenied | K::ReadOnlyFilesystem
            ))
    }

    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub fn bad_input(
        path: impl Into<PathBuf>,
        problem: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Error::BadInput {
            path: path.into(),
            problem: problem.into(),
            hint: hint.into(),
        }
    }

    pub fn invalid(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Invalid {
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// The library error for a failed read of object `id` (`what` names it: a tensor, a file).
pub fn decode_error(id: &ObjectId, what: Option<&str>, e: DecodeError) -> Error {
    match e {
        DecodeError::Missing => Error::MissingObject {
            object: *id,
            tensor: what.map(str::to_owned),
        },
        other => Error::Corrupt {
            object: *id,
            tensor: what.map(str::to_owned),
            problem: other.to_string(),
        },
    }
}

/// Whether `SQLite` refused a write to a read-only database.
fn is_read_only(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ReadOnly)
}

/// Whether `SQLite` refused for a lock another connection holds.
pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// `SQLite`'s message once (rusqlite's `Display` can repeat it in its code and its text).
pub fn sqlite_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(code, Some(msg)) => {
            if msg.is_empty() {
                code.to_string()
            } else {
                msg.clone()
            }
        }
        rusqlite::Error::SqliteFailure(code, None) => code.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error as IoError, ErrorKind};

    use super::Error;

    #[test]
    fn io_failures_say_what_to_do() {
        let full = Error::io(
            "writing",
            "/r/objects",
            IoError::from(ErrorKind::StorageFull),
        );
        assert!(full.hint().unwrap().contains("disk is full"));
        assert!(
            full.is_user_error(),
            "a full disk is the user's to fix (exit 1)"
        );
        let denied = Error::io("writing", "/r", IoError::from(ErrorKind::PermissionDenied));
        assert!(denied.hint().unwrap().contains("permissions"));
        let dir = Error::io("cleaning", "/r/tmp", IoError::from(ErrorKind::IsADirectory));
        assert!(dir.hint().is_some());
        let other = Error::io("reading", "/r", IoError::other("weird"));
        assert!(other.hint().is_some() && !other.is_user_error());
        let sqlite = Error::Catalog(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(11),
            Some("database disk image is malformed".into()),
        ));
        assert_eq!(
            sqlite.to_string().matches("malformed").count(),
            1,
            "{sqlite}"
        );
        assert!(sqlite.hint().unwrap().contains("rebuild-catalog"));
        // A lock held past the busy timeout is no damage: no repair is suggested.
        let busy = Error::Catalog(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(5),
            Some("database is locked".into()),
        ));
        let hint = busy.hint().unwrap();
        assert!(hint.contains("another crossmerge process") && !hint.contains("damaged"));
        assert!(busy.is_user_error());
    }
}
