//! Writes to cgroup limit files, seen through inotify, so a limit read once stays valid until
//! it is written instead of being read again every few milliseconds.
//!
//! Every `write(2)` to any file, kernfs's included, ends in `fsnotify_modify`
//! (`fs/read_write.c: vfs_write`; io_uring's writes too, `io_uring/rw.c`), which a watch on
//! the file's directory receives as `IN_MODIFY` with the file's name. So a watch on each
//! directory of a container's chains (its own, its pod's, `kubepods`...) sees every change of
//! a limit a runtime or an operator makes (`docker update`, systemd, the kubelet). The queue is
//! read by whoever asks for the [`Watch::generation`], before the answer: a write whose
//! `write(2)` has returned is counted by then, so nothing read after it can be older.
//!
//! What is not a write is caught otherwise: a removed or renamed directory reports itself
//! (`IN_DELETE_SELF`, `IN_MOVE_SELF`), a full queue reports `IN_Q_OVERFLOW`, the online CPUs
//! (hotplug moves effective cpusets without a write) are compared whenever they are re-read
//! ([`Watch::note`]), and the callers re-read everything at least every [`BACKSTOP`]. A
//! directory that cannot be watched (the watch budget is spent, a plain directory of a
//! fixture tree) keeps the short time-to-live it had.
//!
//! One generation for all: any limit write anywhere drops every cached limit. Writes to limit
//! files are rare (a container's start or update), and the worst a flood of them can do is
//! bring back the read-every-pass cost there was before, for everyone alike.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Limits from watched directories are still re-read at least this often (a change that is
/// neither a write nor hotplug).
pub const BACKSTOP: Duration = Duration::from_secs(10);

/// The files whose writes change a limit, a cpuset or where they come from (a controller
/// enabled or disabled below a directory: `cgroup.subtree_control`). Writes to anything else
/// (`cgroup.procs` when a process joins, weights, `memory.high`) keep the cached limits.
const LIMIT_FILES: &[&[u8]] = &[
    b"cgroup.subtree_control",
    b"cpu.max",
    b"cpu.cfs_quota_us",
    b"cpu.cfs_period_us",
    b"cpuset.cpus",
    b"cpuset.cpus.partition",
    b"cpuset.cpus.exclusive",
    b"memory.max",
    b"memory.limit_in_bytes",
    b"memory.swap.max",
    b"memory.memsw.limit_in_bytes",
];

/// A watch no cached limit was loaded from for this long is removed.
const IDLE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Watched {
    wd_of: HashMap<PathBuf, (i32, Instant)>,
    path_of: HashMap<i32, PathBuf>,
    swept: Option<Instant>,
}

/// The inotify instance and the generation its events advance.
pub struct Watch {
    fd: OwnedFd,
    generation: AtomicU64,
    watched: Mutex<Watched>,
    /// How many directories may be watched at once.
    budget: usize,
    /// A hash of the online CPUs last noted.
    online: AtomicU64,
}

/// The daemon's one watch; `None` when inotify is unavailable (limits then keep their
/// time-to-live).
pub fn watch() -> Option<&'static Watch> {
    static WATCH: OnceLock<Option<Watch>> = OnceLock::new();
    WATCH.get_or_init(Watch::new).as_ref()
}

impl Watch {
    fn new() -> Option<Watch> {
        // SAFETY: inotify_init1 takes flags only; the fd returned is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "no inotify: cgroup limits are re-read every pass");
            return None;
        }
        // A quarter of the user's watches (systemd and other root daemons share them).
        let max = crate::sys::read_text(Path::new("/proc/sys/fs/inotify/max_user_watches"))
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok())
            .unwrap_or(8192);
        Some(Watch {
            // SAFETY: a new fd nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            generation: AtomicU64::new(1),
            watched: Mutex::default(),
            budget: (max / 4).clamp(64, 65_536),
            online: AtomicU64::new(0),
        })
    }

    /// The generation now: it moves whenever a limit file of a watched directory was written
    /// (or a directory went, or events were lost) since it was last read. Events queued by now
    /// are counted before it is returned.
    pub fn generation(&self) -> u64 {
        let mut p = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one pollfd of an fd this struct owns, without waiting.
        if unsafe { libc::poll(&mut p, 1, 0) } > 0 {
            self.drain();
        }
        self.generation.load(Ordering::Acquire)
    }

    /// The generation as last counted, without asking for new events (no system call): never
    /// newer than [`Watch::generation`], so a value stored with it is at worst read again.
    pub fn known(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes every later [`Watch::generation`] differ from the ones before.
    pub fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Notes the host's online CPUs: a change (hotplug moves every effective cpuset without a
    /// write) moves the generation.
    pub fn note(&self, online: &[u32]) {
        let h =
            online.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, c| (h ^ u64::from(*c)).wrapping_mul(0x100_0000_01b3)) | 1;
        let before = self.online.swap(h, Ordering::AcqRel);
        if before != 0 && before != h {
            self.bump();
        }
    }

    /// Watches every directory of `dirs`; false when one cannot be watched (not on a cgroup
    /// filesystem, the budget spent, a directory gone), so limits read from them keep their
    /// short time-to-live.
    pub fn watch<'a>(&self, dirs: impl IntoIterator<Item = &'a Path>) -> bool {
        let now = Instant::now();
        let mut w = self.watched.lock();
        let mut all = true;
        for dir in dirs {
            if let Some((_, used)) = w.wd_of.get_mut(dir) {
                *used = now;
                continue;
            }
            if w.wd_of.len() >= self.budget && !self.sweep(&mut w, now) {
                all = false;
                continue;
            }
            match self.add(dir) {
                Some(wd) => {
                    // A wd the kernel hands out again names this directory now.
                    if let Some(old) = w.path_of.insert(wd, dir.to_path_buf()) {
                        w.wd_of.remove(&old);
                    }
                    w.wd_of.insert(dir.to_path_buf(), (wd, now));
                }
                None => all = false,
            }
        }
        all
    }

    fn add(&self, dir: &Path) -> Option<i32> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // Only cgroup directories: a plain directory's files are replaced by rename, which is
        // not a write (fixture trees keep the time-to-live).
        if !crate::sys::fs_type_at(dir).is_some_and(crate::cgroup::held::is_cgroupfs) {
            return None;
        }
        let mask =
            libc::IN_MODIFY | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_ONLYDIR | libc::IN_DONT_FOLLOW;
        // SAFETY: inotify_add_watch on the owned fd with a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
        (wd >= 0).then_some(wd)
    }

    /// Removes watches no limit was loaded from for [`IDLE`], at most every [`BACKSTOP`];
    /// whether there is room now.
    fn sweep(&self, w: &mut Watched, now: Instant) -> bool {
        if w.swept.is_some_and(|s| now.duration_since(s) < BACKSTOP) {
            return w.wd_of.len() < self.budget;
        }
        w.swept = Some(now);
        let idle: Vec<(PathBuf, i32)> = w
            .wd_of
            .iter()
            .filter(|(_, (_, used))| now.duration_since(*used) >= IDLE)
            .map(|(p, (wd, _))| (p.clone(), *wd))
            .collect();
        for (p, wd) in idle {
            w.wd_of.remove(&p);
            w.path_of.remove(&wd);
            // Its IN_IGNORED names a wd no longer known: not a change.
            // SAFETY: inotify_rm_watch on the owned fd.
            unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
        }
        w.wd_of.len() < self.budget
    }

    /// Reads every queued event, moving the generation for the ones that change a limit.
    fn drain(&self) {
        let mut w = self.watched.lock();
        let mut buf = [0u8; 16 * 1024];
        let mut changed = false;
        loop {
            // SAFETY: read into a local buffer of its length from the owned, non-blocking fd.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let n = n as usize;
            let mut at = 0;
            let head = std::mem::size_of::<libc::inotify_event>();
            while at + head <= n {
                // SAFETY: the kernel wrote whole events; read_unaligned copies the header.
                let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let name_end = (at + head + ev.len as usize).min(n);
                let name = &buf[at + head..name_end];
                let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
                at = name_end;
                if ev.mask & libc::IN_Q_OVERFLOW != 0 || ev.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                    changed = true;
                }
                if ev.mask & libc::IN_IGNORED != 0 {
                    // Its directory went (a change, reported by DELETE_SELF), or this process
                    // removed the watch (an unknown wd by now).
                    if let Some(p) = w.path_of.remove(&ev.wd) {
                        w.wd_of.remove(&p);
                        changed = true;
                    }
                }
                if ev.mask & libc::IN_MODIFY != 0 && LIMIT_FILES.contains(&name) {
                    changed = true;
                }
            }
        }
        if changed {
            self.bump();
        }
    }

    /// How many directories are watched now.
    pub fn len(&self) -> usize {
        self.watched.lock().wd_of.len()
    }

    /// Whether no directory is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_directories_are_not_watched_and_hotplug_moves_the_generation() {
        let w = watch().expect("inotify");
        assert!(!w.watch([Path::new("/tmp")]), "a plain directory keeps the time-to-live");
        let g = w.generation();
        w.note(&[0, 1, 2]);
        w.note(&[0, 1, 2]);
        let same = w.generation();
        w.note(&[0, 1]);
        assert!(w.generation() > same, "a change of the online CPUs is a change");
        assert!(same >= g);
    }
}
