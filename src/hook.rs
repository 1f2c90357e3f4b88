//! `cgprocfs oci-hook`: an OCI runtime hook that binds every served file over the container's
//! own, for runc, crun, podman, CRI-O and containerd.
//!
//! Stage: `createContainer` (runtime-spec: after the container's mount namespace is set up,
//! before `pivot_root`, in the container's namespace). There the host's filesystem, including
//! the daemon's mount, is still visible, and the container's root is at its bundle path, so a
//! plain bind mount per file does it; and /proc and /sys of the container are already mounted,
//! so the targets exist. The same binary also works as a `createRuntime` or `prestart` hook:
//! it then enters the container's mount namespace itself (`setns`).
//!
//! It never blocks a container: whatever fails is logged to stderr (the runtime's log) and the
//! hook exits 0 with the container's files left as they were. It never creates a file or a
//! directory: a target that does not exist, or is not a regular file, is skipped.
//!
//! The image is hostile: every target is resolved inside the container's root with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)`, must sit in the container's procfs or
//! sysfs, and the mount goes onto the opened fd (new mount API, Linux 5.12+), so no symlink of
//! the image can move a mount outside the container (docs/security.md).

use crate::catalog::{bind_targets, CPU_DIR};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The annotation that turns the hook off for one container (`"true"`).
pub const OPT_OUT: &str = "io.cgprocfs.disable";

/// The runtime state the hook receives on stdin (runtime-spec `state`).
#[derive(Debug, Deserialize)]
pub struct State {
    /// Container id.
    #[serde(default)]
    pub id: String,
    /// Pid of the container's init, in the runtime's pid namespace.
    #[serde(default)]
    pub pid: Option<i32>,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Config {
    root: Option<ConfigRoot>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct ConfigRoot {
    path: PathBuf,
}

/// What the hook did, for its log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The container.
    pub id: String,
    /// Files bound.
    pub bound: Vec<String>,
    /// Files skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Whether the files are the container's own cached ones (else the shared ones).
    pub cached: bool,
}

/// Runs the hook: reads the state from `input`, binds the views of the daemon at `mountpoint`
/// (the container's own cached files from `cache` where that tree is served, fs/cached.rs).
/// Returns an error only for the log; the caller exits 0 regardless.
pub fn run(mut input: impl Read, mountpoint: &Path, cache: Option<&Path>) -> Result<Outcome, String> {
    let mut text = String::new();
    input.read_to_string(&mut text).map_err(|e| format!("cannot read the state on stdin: {e}"))?;
    let state: State = serde_json::from_str(&text).map_err(|e| format!("bad state JSON: {e}"))?;
    let config_path = state.bundle.join("config.json");
    let config: Config = std::fs::read_to_string(&config_path)
        .map_err(|e| format!("cannot read {}: {e}", config_path.display()))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("bad {}: {e}", config_path.display())))?;
    let opted_out = |a: &HashMap<String, String>| a.get(OPT_OUT).is_some_and(|v| v == "true");
    if opted_out(&state.annotations) || opted_out(&config.annotations) {
        return Err(format!("container {} opted out ({OPT_OUT})", state.id));
    }
    let root = config.root.map(|r| r.path).unwrap_or_else(|| PathBuf::from("rootfs"));
    let rootfs = if root.is_absolute() { root } else { state.bundle.join(root) };

    // Outside the container's mount namespace (createRuntime, prestart): enter it.
    if let Some(pid) = state.pid {
        let own = std::fs::read_link("/proc/self/ns/mnt").ok();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        if theirs.is_some() && own != theirs {
            let f = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
                .map_err(|e| format!("cannot open the mount namespace of pid {pid}: {e}"))?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNS)
                .map_err(|e| format!("cannot enter the mount namespace of pid {pid}: {e}"))?;
        }
    }
    if let Err(why) = serving(mountpoint) {
        return Err(format!(
            "{}: no cgprocfs daemon is serving {} ({why}); the container starts with its own files",
            state.id,
            mountpoint.display()
        ));
    }
    // The container's own directory of the cached tree, named by its init's pid and start
    // time; the shared files where there is none (an older daemon, `--no-cache`, no pid).
    let own = cache.zip(state.pid).and_then(|(c, pid)| {
        let dir = c.join(crate::fs::cached::key_name(u32::try_from(pid).ok()?).ok()?);
        serving_at(c, &dir.join("proc/meminfo")).is_ok().then_some(dir)
    });
    let mut out = Outcome { id: state.id.clone(), cached: own.is_some(), ..Default::default() };
    // The root itself is the runtime's (the bundle is trusted); everything below it is the
    // image's and is resolved by bind_into without following a symlink.
    let root = std::fs::File::open(&rootfs)
        .map(OwnedFd::from)
        .map_err(|e| format!("{}: cannot open the root {}: {e}", state.id, rootfs.display()))?;
    for path in bind_targets() {
        // The cpu directory is bound whole (its cpuN entries are per container); the rest
        // are files.
        let src = match &own {
            Some(dir) if path != CPU_DIR => dir.join(path),
            _ => mountpoint.join(path),
        };
        match bind_into(&root, &src, path, path == CPU_DIR) {
            Ok(()) => out.bound.push(path.into()),
            Err(e) => out.skipped.push((path.into(), e)),
        }
    }
    Ok(out)
}

/// A live FUSE mount of ours at `mountpoint` (statfs reaches the daemon; a dead one answers
/// ENOTCONN).
fn serving(mountpoint: &Path) -> Result<(), String> {
    serving_at(mountpoint, &mountpoint.join("proc/meminfo"))
}

/// `mount` is a live FUSE mount and `file` (under it) answers.
fn serving_at(mount: &Path, file: &Path) -> Result<(), String> {
    let s = nix::sys::statfs::statfs(mount).map_err(|e| format!("statfs: {e}"))?;
    if s.filesystem_type().0 as i64 != FUSE_SUPER_MAGIC {
        return Err(format!("not a FUSE mount (type {:#x})", s.filesystem_type().0));
    }
    std::fs::metadata(file).map(|_| ()).map_err(|e| format!("{}: {e}", file.display()))
}

pub(crate) const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const SYSFS_MAGIC: i64 = 0x6265_6572;

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const RESOLVE_NO_XDEV: u64 = 0x01;
pub(crate) const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub(crate) const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;
pub(crate) const RESOLVE_IN_ROOT: u64 = 0x10;

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

fn cstr(s: &str) -> Result<std::ffi::CString, String> {
    std::ffi::CString::new(s).map_err(|_| format!("bad path {s:?}"))
}

fn last_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// openat2(2) of `path` under `dir` with `resolve` restrictions, as an `O_PATH` fd.
pub(crate) fn openat2(dir: &OwnedFd, path: &str, extra: i32, resolve: u64) -> Result<OwnedFd, String> {
    let p = cstr(path)?;
    let how = OpenHow { flags: (libc::O_PATH | libc::O_CLOEXEC | extra) as u64, mode: 0, resolve };
    // SAFETY: valid fd, NUL-terminated path and a struct of the size passed.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, dir.as_raw_fd(), p.as_ptr(), &how as *const OpenHow, size_of::<OpenHow>())
    };
    if fd < 0 {
        return Err(last_err(&format!("cannot resolve {path} without symlinks")));
    }
    // SAFETY: a new fd owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn fs_magic(fd: &OwnedFd) -> Result<i64, String> {
    let s = nix::sys::statfs::fstatfs(fd).map_err(|e| format!("statfs: {e}"))?;
    Ok(s.filesystem_type().0 as i64)
}

/// Binds the served `src` over `path` (relative to the container's root `root`) read-only,
/// never leaving the container's procfs / sysfs: every component is resolved inside the root
/// without following a symlink, the parent must be the container's procfs (or sysfs for the
/// cpu directory), the target must be on that same mount (not already covered by another
/// mount) and of the expected type, and the mount goes onto the opened target itself.
pub fn bind_into(root: &OwnedFd, src: &Path, path: &str, want_dir: bool) -> Result<(), String> {
    let (parent, leaf) = path.rsplit_once('/').ok_or_else(|| format!("bad target {path}"))?;
    let pfd = openat2(root, parent, libc::O_DIRECTORY, RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)?;
    let want = if parent.starts_with("sys") { SYSFS_MAGIC } else { PROC_SUPER_MAGIC };
    let magic = fs_magic(&pfd)?;
    if magic != want {
        let what = if want == SYSFS_MAGIC { "sysfs" } else { "procfs" };
        return Err(format!("/{parent} is not the container's {what} (type {magic:#x})"));
    }
    let tfd = openat2(&pfd, leaf, libc::O_NOFOLLOW, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)
        .map_err(|e| format!("{e} (a symlink, or already a mount point)"))?;
    let st = nix::sys::stat::fstat(tfd.as_raw_fd()).map_err(|e| format!("stat: {e}"))?;
    let fmt = st.st_mode & libc::S_IFMT;
    if (want_dir && fmt != libc::S_IFDIR) || (!want_dir && fmt != libc::S_IFREG) {
        return Err(format!("target is not {}", if want_dir { "a directory" } else { "a regular file" }));
    }
    if fs_magic(&tfd)? != want {
        return Err("target is on another filesystem".into());
    }
    // A detached copy of the served file, made read-only, noexec, nosuid, nodev before it is
    // attached: the container never sees it writable, and nothing is resolved by path twice.
    attach(&clone_tree(src)?, &tfd)
}

/// A detached copy (`open_tree(OPEN_TREE_CLONE)`) of the mount at or the file under `src`.
pub(crate) fn clone_tree(src: &Path) -> Result<OwnedFd, String> {
    let s = cstr(&src.to_string_lossy())?;
    // SAFETY: NUL-terminated path, flags only.
    let tree = unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, s.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as u32)
    };
    if tree < 0 {
        return Err(last_err("open_tree"));
    }
    // SAFETY: a new fd owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(tree as i32) })
}

/// Makes the detached `tree` read-only, noexec, nosuid, nodev and mounts it onto the opened
/// `target` (over whatever is mounted there).
pub(crate) fn attach(tree: &OwnedFd, target: &OwnedFd) -> Result<(), String> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
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
        return Err(last_err("read-only, noexec mount attributes"));
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
        return Err(last_err("move_mount"));
    }
    Ok(())
}
