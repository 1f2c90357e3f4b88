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

use crate::catalog::{bind_from, bind_targets, BindFrom, CPU_DIR};
use crate::mount::{bind_into, FUSE_SUPER_MAGIC};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Why the hook bound nothing (the container then starts with its own files).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runtime's state could not be read.
    #[error("cannot read the state on stdin: {0}")]
    Stdin(io::Error),
    /// The runtime's state is not runtime-spec JSON.
    #[error("bad state JSON: {0}")]
    State(serde_json::Error),
    /// The bundle's config.json could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadConfig {
        /// config.json.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The bundle's config.json is not JSON.
    #[error("bad {}: {source}", path.display())]
    Config {
        /// config.json.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The container carries the opt-out annotation.
    #[error("container {0} opted out ({OPT_OUT})")]
    OptedOut(String),
    /// The container's mount namespace could not be entered.
    #[error("cannot {what} the mount namespace of pid {pid}: {source}")]
    Namespace {
        /// "open" or "enter".
        what: &'static str,
        /// The container's init.
        pid: i32,
        /// Why.
        source: io::Error,
    },
    /// No daemon answers at the mount point.
    #[error("{id}: no cgprocfs daemon is serving {} ({why}); the container starts with its own files", mountpoint.display())]
    NotServed {
        /// The container.
        id: String,
        /// The daemon's mount point.
        mountpoint: PathBuf,
        /// What the check met.
        why: io::Error,
    },
    /// The container's root could not be opened.
    #[error("{id}: cannot open the root {}: {source}", path.display())]
    Root {
        /// The container.
        id: String,
        /// Its root.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

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
    /// Why the files are the shared ones, not the container's own cached ones (`None`: its
    /// own).
    pub uncached: Option<String>,
}

/// Runs the hook: reads the state from `input`, binds the views of the daemon at `mountpoint`
/// (the container's own cached files from `cache` where that tree is served, fuse/cached.rs;
/// the pressure files from the trigger connection `psi`, fuse/psi.rs). Returns an error only
/// for the log; the caller exits 0 regardless.
pub fn run(
    mut input: impl Read,
    mountpoint: &Path,
    cache: Option<&Path>,
    psi: Option<&Path>,
) -> Result<Outcome, Error> {
    let mut text = String::new();
    input.read_to_string(&mut text).map_err(Error::Stdin)?;
    let state: State = serde_json::from_str(&text).map_err(Error::State)?;
    let path = state.bundle.join("config.json");
    let config = std::fs::read_to_string(&path).map_err(|source| Error::ReadConfig { path: path.clone(), source })?;
    let config: Config = serde_json::from_str(&config).map_err(|source| Error::Config { path, source })?;
    let opted_out = |a: &HashMap<String, String>| a.get(OPT_OUT).is_some_and(|v| v == "true");
    if opted_out(&state.annotations) || opted_out(&config.annotations) {
        return Err(Error::OptedOut(state.id));
    }
    let root = config.root.map(|r| r.path).unwrap_or_else(|| PathBuf::from("rootfs"));
    let rootfs = if root.is_absolute() { root } else { state.bundle.join(root) };

    // Outside the container's mount namespace (createRuntime, prestart): enter it.
    if let Some(pid) = state.pid {
        let own = std::fs::read_link("/proc/self/ns/mnt").ok();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        if theirs.is_some() && own != theirs {
            let f = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).map_err(|source| Error::Namespace {
                what: "open",
                pid,
                source,
            })?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| Error::Namespace {
                what: "enter",
                pid,
                source: e.into(),
            })?;
        }
    }
    if let Err(why) = serving(mountpoint) {
        return Err(Error::NotServed { id: state.id, mountpoint: mountpoint.into(), why });
    }
    // The container's own directory of the cached tree, named by its init's pid and start
    // time; the shared files where there is none (an older daemon, `--no-cache`, no pid).
    let own = match (cache, state.pid.map(host_pid)) {
        (None, _) => Err("no cached tree".to_string()),
        (_, None) => Err("no pid in the state".to_string()),
        (Some(c), Some(pid)) => u32::try_from(pid)
            .map_err(|_| format!("pid {pid}"))
            .and_then(|pid| crate::fuse::cached::key_name(pid).map_err(|e| format!("pid {pid}: {e}")))
            .map(|key| c.join(key))
            .and_then(|dir| serving_at(c, &dir.join("proc/meminfo")).map(|()| dir).map_err(|e| e.to_string())),
    };
    let mut out = Outcome { id: state.id.clone(), uncached: own.as_ref().err().cloned(), ..Default::default() };
    let own = own.ok();
    // The root itself is the runtime's (the bundle is trusted); everything below it is the
    // image's and is resolved by bind_into without following a symlink.
    let root = std::fs::File::open(&rootfs).map(OwnedFd::from).map_err(|source| Error::Root {
        id: state.id.clone(),
        path: rootfs.clone(),
        source,
    })?;
    for path in bind_targets() {
        // The cpu directory is bound whole (its cpuN entries are per container); the rest
        // are files.
        let (src, writable) = match (bind_from(path), &own, psi) {
            (BindFrom::Cached, Some(dir), _) => (dir.join(path), false),
            (BindFrom::Trigger, _, Some(p)) => (p.join(path), true),
            _ => (mountpoint.join(path), false),
        };
        match bind_into(&root, &src, path, path == CPU_DIR, writable) {
            Ok(()) => out.bound.push(path.into()),
            Err(e) => out.skipped.push((path.into(), e.to_string())),
        }
    }
    Ok(out)
}

/// The container init's pid in the pid namespace of `/proc` (the host's), from the state's
/// `pid`. runc runs createContainer hooks from the container's init, inside its pid
/// namespace, and gives `pid` as that namespace sees it (1): read as a host pid that is the
/// host's init. The hook's parent is then the container's init: its pid in `/proc` (the
/// `PPid` procfs shows us) is the one, when its innermost pid is the state's.
fn host_pid(pid: i32) -> i32 {
    let status = |p: &str| std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
    let me = status("self");
    let Some(ppid) = me.lines().find_map(|l| l.strip_prefix("PPid:")).map(str::trim) else { return pid };
    let parent = status(ppid);
    let nested =
        parent.lines().find_map(|l| l.strip_prefix("NSpid:")).is_some_and(|l| l.split_whitespace().count() > 1);
    match (nested, crate::procfs::innermost_nspid(&parent), ppid.parse::<i32>()) {
        (true, Some(inner), Ok(host)) if inner == pid.to_string() => host,
        _ => pid,
    }
}

/// A live FUSE mount of ours at `mountpoint` (statfs reaches the daemon; a dead one answers
/// ENOTCONN).
pub fn serving(mountpoint: &Path) -> io::Result<()> {
    serving_at(mountpoint, &mountpoint.join("proc/meminfo"))
}

/// `mount` is a live FUSE mount and `file` (under it) answers.
fn serving_at(mount: &Path, file: &Path) -> io::Result<()> {
    let s = nix::sys::statfs::statfs(mount)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("statfs: {e}")))?;
    if s.filesystem_type().0 as i64 != FUSE_SUPER_MAGIC {
        return Err(io::Error::other(format!("not a FUSE mount (type {:#x})", s.filesystem_type().0)));
    }
    std::fs::metadata(file).map(|_| ()).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))
}
