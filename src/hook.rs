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

use crate::view::{bind_targets, CPU_DIR};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read;
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
}

/// Runs the hook: reads the state from `input`, binds the views of the daemon at `mountpoint`.
/// Returns an error only for the log; the caller exits 0 regardless.
pub fn run(mut input: impl Read, mountpoint: &Path) -> Result<Outcome, String> {
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
    let mut out = Outcome { id: state.id.clone(), ..Default::default() };
    for path in bind_targets() {
        let src = mountpoint.join(path);
        let dst = rootfs.join(path);
        // The cpu directory is bound whole (its cpuN entries are per container); the rest
        // are files.
        let want_dir = path == CPU_DIR;
        match std::fs::symlink_metadata(&dst) {
            Ok(m) if m.file_type().is_dir() == want_dir && !m.file_type().is_symlink() => {}
            Ok(_) => {
                let what = if want_dir { "a directory" } else { "a regular file" };
                out.skipped.push((path.into(), format!("target is not {what}")));
                continue;
            }
            Err(e) => {
                out.skipped.push((path.into(), format!("target missing: {e}")));
                continue;
            }
        }
        match bind_ro(&src, &dst) {
            Ok(()) => out.bound.push(path.into()),
            Err(e) => out.skipped.push((path.into(), e)),
        }
    }
    Ok(out)
}

/// A live FUSE mount of ours at `mountpoint` (statfs reaches the daemon; a dead one answers
/// ENOTCONN).
fn serving(mountpoint: &Path) -> Result<(), String> {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let s = nix::sys::statfs::statfs(mountpoint).map_err(|e| format!("statfs: {e}"))?;
    if s.filesystem_type().0 as i64 != FUSE_SUPER_MAGIC {
        return Err(format!("not a FUSE mount (type {:#x})", s.filesystem_type().0));
    }
    std::fs::metadata(mountpoint.join("proc/meminfo")).map(|_| ()).map_err(|e| format!("proc/meminfo: {e}"))
}

fn bind_ro(src: &Path, dst: &Path) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| format!("bind: {e}"))?;
    // A bind mount keeps the source's flags; remount to make this one read-only too.
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(None::<&str>, dst, None::<&str>, ro, None::<&str>).map_err(|e| format!("read-only remount: {e}"))
}
