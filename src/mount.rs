//! Mounting onto paths that hostile images and containers control: every path resolved with
//! `openat2` and no symlink followed, detached copies made with `open_tree`, attached
//! read-only with `mount_setattr` + `move_mount` onto the opened target (new mount API,
//! Linux 5.12+). Used by the OCI hook and by the repair after a hard stop.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Why a bind was not made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The kernel's error.
        source: io::Error,
    },
    /// A path that cannot be passed to the kernel, or names no target.
    #[error("bad path {0:?}")]
    BadPath(String),
    /// The target's directory is not the filesystem it must be.
    #[error("/{parent} is not the container's {want} (type {magic:#x})")]
    NotContainers {
        /// The directory.
        parent: String,
        /// procfs or sysfs.
        want: &'static str,
        /// What it is.
        magic: i64,
    },
    /// The target is not of the type it must be.
    #[error("target is not {0}")]
    WrongType(&'static str),
    /// The target is on another filesystem than its directory.
    #[error("target is on another filesystem")]
    OtherFilesystem,
}

impl Error {
    fn last(what: impl Into<String>) -> Error {
        Error::Sys { what: what.into(), source: io::Error::last_os_error() }
    }

    fn nix(what: &str, e: nix::Error) -> Error {
        Error::Sys { what: what.into(), source: e.into() }
    }
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const SYSFS_MAGIC: i64 = 0x6265_6572;

use crate::sys::{RESOLVE_BENEATH, RESOLVE_NO_XDEV};
pub(crate) use crate::sys::{RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS};

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const OPEN_TREE_CLONE: u32 = 1;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;

fn cstr(s: &str) -> Result<std::ffi::CString> {
    std::ffi::CString::new(s).map_err(|_| Error::BadPath(s.into()))
}

/// openat2(2) of `path` under `dir` with `resolve` restrictions, as an `O_PATH` fd.
pub(crate) fn openat2(dir: &OwnedFd, path: &str, extra: i32, resolve: u64) -> Result<OwnedFd> {
    crate::sys::openat2(dir, Path::new(path), libc::O_PATH | extra, resolve)
        .map_err(|source| Error::Sys { what: format!("cannot resolve {path} without symlinks"), source })
}

fn fs_magic(fd: &OwnedFd) -> Result<i64> {
    let s = nix::sys::statfs::fstatfs(fd).map_err(|e| Error::nix("statfs", e))?;
    Ok(s.filesystem_type().0 as i64)
}

/// Binds the served `src` over `path` (relative to the container's root `root`) read-only,
/// never leaving the container's procfs / sysfs: every component is resolved inside the root
/// without following a symlink, the parent must be the container's procfs (or sysfs for the
/// cpu directory), the target must be on that same mount (not already covered by another
/// mount) and of the expected type, and the mount goes onto the opened target itself.
pub fn bind_into(root: &OwnedFd, src: &Path, path: &str, want_dir: bool, writable: bool) -> Result<()> {
    let (parent, leaf) = path.rsplit_once('/').ok_or_else(|| Error::BadPath(path.into()))?;
    let pfd = openat2(root, parent, libc::O_DIRECTORY, RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)?;
    let want = if parent.starts_with("sys") { SYSFS_MAGIC } else { PROC_SUPER_MAGIC };
    let magic = fs_magic(&pfd)?;
    if magic != want {
        let want = if want == SYSFS_MAGIC { "sysfs" } else { "procfs" };
        return Err(Error::NotContainers { parent: parent.into(), want, magic });
    }
    let tfd = openat2(&pfd, leaf, libc::O_NOFOLLOW, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV).map_err(
        |e| match e {
            Error::Sys { what, source } => {
                Error::Sys { what: format!("{what} (a symlink, or already a mount point)"), source }
            }
            e => e,
        },
    )?;
    let st = nix::sys::stat::fstat(tfd.as_raw_fd()).map_err(|e| Error::nix("stat", e))?;
    let fmt = st.st_mode & libc::S_IFMT;
    if (want_dir && fmt != libc::S_IFDIR) || (!want_dir && fmt != libc::S_IFREG) {
        return Err(Error::WrongType(if want_dir { "a directory" } else { "a regular file" }));
    }
    if fs_magic(&tfd)? != want {
        return Err(Error::OtherFilesystem);
    }
    // A detached copy of the served file, made read-only, noexec, nosuid, nodev before it is
    // attached: the container never sees it writable, and nothing is resolved by path twice.
    attach(&clone_tree(src)?, &tfd, writable)
}

/// A detached copy (`open_tree(OPEN_TREE_CLONE)`) of the mount at or the file under `src`.
pub(crate) fn clone_tree(src: &Path) -> Result<OwnedFd> {
    let s = cstr(&src.to_string_lossy())?;
    // SAFETY: NUL-terminated path, flags only.
    let tree = unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, s.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as u32)
    };
    if tree < 0 {
        return Err(Error::last("open_tree"));
    }
    // SAFETY: a new fd owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(tree as i32) })
}

/// Makes the detached `tree` read-only (unless `writable`: a pressure file, whose writes the
/// daemon's handler takes as PSI triggers), noexec, nosuid, nodev and mounts it onto the
/// opened `target` (over whatever is mounted there).
pub(crate) fn attach(tree: &OwnedFd, target: &OwnedFd, writable: bool) -> Result<()> {
    let ro = if writable { 0 } else { MOUNT_ATTR_RDONLY };
    let attr = MountAttr {
        attr_set: ro | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: valid fd, empty path with AT_EMPTY_PATH, a struct of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(Error::last("read-only, noexec mount attributes"));
    }
    // SAFETY: two valid fds with empty paths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(Error::last("move_mount"));
    }
    Ok(())
}
