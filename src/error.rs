//! Error type of the library. The binary wraps these with `anyhow` at the edge.

use std::path::PathBuf;

/// Everything that can go wrong while sampling a cgroup or host file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read (missing, permission, vanished cgroup or pid).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file was read but its content is not what the kernel writes there.
    #[error("malformed {path}: {what}")]
    Malformed {
        /// The file whose content was rejected.
        path: PathBuf,
        /// What was wrong with it.
        what: String,
    },
    /// The caller cannot be mapped to a container (exited, no cgroup, pid 0).
    #[error("cannot resolve caller {pid}: {why}")]
    Caller {
        /// The thread id from the request.
        pid: u32,
        /// Why it failed.
        why: String,
    },
    /// No cgroup hierarchy that a view needs is mounted.
    #[error("no cgroup mount for {0}")]
    NoMount(&'static str),
    /// The container's cgroup directory vanished while it was being read.
    #[error("cgroup {0} is gone")]
    Gone(PathBuf),
}

/// The errno a reader gets, at the FUSE edge and from `show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// The errno a reader gets for this error: the OS error for I/O, else `EIO`.
    pub fn errno(&self) -> Errno {
        match self {
            Error::Io { source, .. } => Errno(source.raw_os_error().unwrap_or(libc::EIO)),
            _ => Errno(libc::EIO),
        }
    }

    /// A content error for `path`.
    pub fn malformed(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Malformed { path: path.into(), what: what.into() }
    }
}

/// Result alias of the library.
pub type Result<T> = std::result::Result<T, Error>;

/// Reads a whole small file into a string, mapping the error to [`Error::Io`].
pub fn read_file(path: &std::path::Path) -> Result<String> {
    crate::sys::read_text(path).map_err(|e| Error::io(path, e))
}
