//! Repair after a hard stop: when a keeper died outside a service manager (SIGKILL, OOM) its
//! FUSE connection died with it, and every container's bind mount of it answers `ENOTCONN`.
//! A new `serve` (or `cgprocfs reattach`) finds those mounts in the other mount namespaces
//! (`/proc/<pid>/mountinfo`: type `fuse.cgprocfs`, another device than the live mount) and
//! mounts the same file or directory of the live mount over each, inside that namespace,
//! without touching the container's processes or creating anything in it.
//!
//! The live file is cloned here (`open_tree(OPEN_TREE_CLONE)`, in the daemon's namespace),
//! then this process enters the container's mount namespace (`setns`, hence a single-threaded
//! process: `cgprocfs reattach`), resolves the mount point from its root without following a
//! symlink (`openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)`), checks that what is mounted
//! there is a dead FUSE connection (`fstatfs` gives `ENOTCONN`; a live one — another daemon's —
//! is left alone), and attaches the clone onto it read-only (`move_mount`), as the OCI hook does.

use crate::mount::{attach, clone_tree, openat2, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS};
use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What was done in one mount namespace.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// A process of that namespace (the first found).
    pub pid: u32,
    /// The namespace (`mnt:[N]`).
    pub ns: String,
    /// Mount points (in that namespace) now served by the live mount.
    pub files: Vec<String>,
    /// Mount points left alone, and why.
    pub left: Vec<(String, String)>,
}

/// A dead mount found in a namespace's mountinfo: its mount point and the path inside the
/// file system it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadMount {
    /// Where it is mounted, in that namespace.
    pub mount_point: String,
    /// What of the tree it shows (`/proc/meminfo`, or `/` for the whole tree).
    pub root: String,
}

/// The mount source (`fsname`) of the daemon serving `mountpoint`: `cgprocfs:` and a hash of
/// the mount point, so a repair only ever replaces binds of a connection that served the same
/// mount point (not those of another daemon, such as `cgprocfs run`'s own).
pub fn source_name(mountpoint: &Path) -> String {
    format!("cgprocfs:{:016x}", crate::fnv(mountpoint.as_os_str().as_encoded_bytes()))
}

/// The cgprocfs mounts of a mountinfo text whose device is not `live` (`major:minor`) and whose
/// source is `source`. With `legacy`, also those of source plain `cgprocfs` (versions before
/// the source named the mount point), which say nothing of the mount point they served: only
/// the daemon at the default mount point, where every such version was installed, takes them.
pub fn dead_mounts(mountinfo: &str, live: &str, source: &str, legacy: bool) -> Vec<DeadMount> {
    crate::mountinfo::entries(mountinfo)
        .filter(|e| {
            e.fstype == crate::fuse::session::FSTYPE
                && e.dev != live
                && (e.source == source || (legacy && e.source == "cgprocfs"))
        })
        .map(|e| DeadMount { mount_point: e.mount_point, root: e.root })
        .collect()
}

/// The device (`major:minor`) of the cgprocfs mount of `source` at `mountpoint` in a mountinfo
/// text: the last one, the top of any stack.
pub fn live_dev<'a>(mountinfo: &'a str, mountpoint: &Path, source: &str) -> Option<&'a str> {
    let at = mountpoint.to_string_lossy();
    crate::mountinfo::entries(mountinfo)
        .filter(|e| e.fstype == crate::fuse::session::FSTYPE && e.source == source && e.mount_point == at)
        .last()
        .map(|e| e.dev)
}

/// Repairs every other mount namespace's dead cgprocfs mounts from the live mount at
/// `mountpoint`. Must run in a single-threaded process (it enters namespaces).
pub fn reattach(mountpoint: &Path) -> io::Result<Vec<Repaired>> {
    let live = std::fs::metadata(mountpoint.join("proc/meminfo"))
        .map_err(|e| io::Error::new(e.kind(), format!("{} is not served: {e}", mountpoint.display())))?;
    let live_dev = format!("{}:{}", libc::major(live.dev()), libc::minor(live.dev()));
    let canonical = mountpoint.canonicalize()?;
    let source = source_name(&canonical);
    let legacy = canonical == Path::new(crate::files::DEFAULT_MOUNTPOINT);
    // The companion trees' binds are repaired from the live companions: the cached tree's
    // (hook- and run-bound containers: their key directories name the same containers to the
    // new daemon) and the trigger connection's (pressure files, bound writable again).
    let companion = |dir: Option<PathBuf>, source: fn(&Path) -> String, writable: bool| {
        let c = dir?;
        let m = std::fs::metadata(&c).ok()?;
        Some((source(&canonical), format!("{}:{}", libc::major(m.dev()), libc::minor(m.dev())), c, writable))
    };
    let companions: Vec<(String, String, PathBuf, bool)> = [
        companion(crate::fuse::cached::find(mountpoint), crate::fuse::cached::source_name, false),
        companion(crate::fuse::psi::find(mountpoint), crate::fuse::psi::source_name, true),
    ]
    .into_iter()
    .flatten()
    .collect();
    let own_ns = std::fs::read_link("/proc/self/ns/mnt")?;
    let own = std::fs::File::open("/proc/self/ns/mnt")?;
    let mut seen: HashSet<PathBuf> = HashSet::from([own_ns]);
    let mut out = Vec::new();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/mnt")) else { continue };
        if !seen.insert(ns.clone()) {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else { continue };
        let mut dead: Vec<(DeadMount, &Path, bool)> =
            dead_mounts(&info, &live_dev, &source, legacy).into_iter().map(|d| (d, mountpoint, false)).collect();
        for (src, dev, dir, writable) in &companions {
            dead.extend(
                crate::mountinfo::entries(&info)
                    .filter(|e| e.fstype == crate::fuse::session::FSTYPE && e.dev != dev && e.source == src)
                    .map(|e| (DeadMount { mount_point: e.mount_point, root: e.root }, dir.as_path(), *writable)),
            );
        }
        if dead.is_empty() {
            continue;
        }
        let mut r = Repaired { pid, ns: ns.to_string_lossy().into_owned(), ..Default::default() };
        repair_ns(pid, &dead, &own, &mut r);
        if !r.files.is_empty() || !r.left.is_empty() {
            out.push(r);
        }
    }
    Ok(out)
}

/// Repairs the `dead` mounts of `pid`'s namespace, each from the same path under its live
/// mount.
fn repair_ns(pid: u32, dead: &[(DeadMount, &Path, bool)], own: &std::fs::File, r: &mut Repaired) {
    // Clones of the live files, made here before entering the container's namespace.
    let mut work: Vec<(&DeadMount, OwnedFd, bool)> = Vec::new();
    for (d, live, writable) in dead {
        match clone_tree(&live.join(d.root.trim_start_matches('/'))) {
            Ok(t) => work.push((d, t, *writable)),
            Err(e) => r.left.push((d.mount_point.clone(), format!("no such served file: {e}"))),
        }
    }
    let theirs = match std::fs::File::open(format!("/proc/{pid}/ns/mnt")) {
        Ok(f) => f,
        Err(e) => {
            r.left.extend(work.iter().map(|(d, _, _)| (d.mount_point.clone(), format!("namespace gone: {e}"))));
            return;
        }
    };
    if let Err(e) = nix::sched::setns(&theirs, nix::sched::CloneFlags::CLONE_NEWNS) {
        r.left.extend(work.iter().map(|(d, _, _)| (d.mount_point.clone(), format!("cannot enter the namespace: {e}"))));
        return;
    }
    match std::fs::File::open("/").map(OwnedFd::from) {
        Ok(root) => {
            for (d, tree, writable) in &work {
                match repair_one(&root, d, tree, *writable) {
                    Ok(true) => r.files.push(d.mount_point.clone()),
                    // Repaired before: the dead mount is under a live one.
                    Ok(false) => {}
                    Err(why) => r.left.push((d.mount_point.clone(), why.to_string())),
                }
            }
        }
        Err(e) => r.left.extend(work.iter().map(|(d, _, _)| (d.mount_point.clone(), format!("no root: {e}")))),
    }
    if let Err(e) = nix::sched::setns(own, nix::sched::CloneFlags::CLONE_NEWNS) {
        // Nothing else can be done from a foreign namespace.
        tracing::error!(error = %e, "cannot return to the daemon's mount namespace");
        std::process::exit(1);
    }
}

/// Mounts `tree` over `d` (writable: a trigger connection's pressure file) if a dead
/// connection is what `d` shows now; false if a live mount already covers it.
fn repair_one(root: &OwnedFd, d: &DeadMount, tree: &OwnedFd, writable: bool) -> crate::mount::Result<bool> {
    let rel = d.mount_point.trim_start_matches('/');
    if rel.is_empty() {
        // The namespace's root is not a bind of ours to replace.
        return Err(crate::mount::Error::BadPath(d.mount_point.clone()));
    }
    let target = openat2(root, rel, libc::O_NOFOLLOW, RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)?;
    match nix::sys::statfs::fstatfs(&target) {
        Err(nix::errno::Errno::ENOTCONN) => {}
        Ok(_) => return Ok(false),
        Err(e) => return Err(crate::mount::Error::Sys { what: "statfs".into(), source: e.into() }),
    }
    attach(tree, &target, writable).map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_mounts_are_cgprocfs_mounts_of_another_device() {
        let info = "\
22 1 0:21 / / rw - ext4 /dev/vda rw
40 22 0:45 /proc/meminfo /proc/meminfo ro,nosuid - fuse.cgprocfs cgprocfs:00ff rw,user_id=0
41 22 0:45 /sys/devices/system/cpu /sys/devices/system/cpu ro - fuse.cgprocfs cgprocfs rw
42 22 0:52 /proc/stat /proc/stat ro - fuse.cgprocfs cgprocfs:00ff rw
43 22 0:45 / /var/lib/with\\040space ro - fuse.cgprocfs cgprocfs:00ff rw
44 22 0:46 / /other - fuse.sshfs host:/ rw
45 22 0:47 /proc/meminfo /run/x - fuse.cgprocfs cgprocfs:0aaa rw
";
        let d = dead_mounts(info, "0:52", "cgprocfs:00ff", true);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0], DeadMount { mount_point: "/proc/meminfo".into(), root: "/proc/meminfo".into() });
        assert_eq!(d[1].root, "/sys/devices/system/cpu");
        assert_eq!(d[2], DeadMount { mount_point: "/var/lib/with space".into(), root: "/".into() });
        // Another daemon's (another mount point's) dead mount is not ours to replace.
        assert!(d.iter().all(|m| m.mount_point != "/run/x"));
        // Without `legacy` (a daemon at any other mount point), a plain `cgprocfs` source is
        // not known to be ours.
        let d = dead_mounts(info, "0:52", "cgprocfs:00ff", false);
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|m| m.root != "/sys/devices/system/cpu"));
    }
}
