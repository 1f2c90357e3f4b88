//! PSI triggers on `/proc/pressure/{cpu,memory,io}`, as on the host: a process writes a
//! trigger (`some 150000 1000000`) to an open handle and `poll()`s it for `POLLPRI`. The
//! trigger is a real one on the container's own cgroup pressure file (cgroup v2): the worker
//! opens that file for the handle, writes the trigger there (the kernel validates it and gives
//! its errno), and answers POLL from it; a watcher thread wakes the kernel's pollers
//! (`FUSE_NOTIFY_POLL`) when the trigger fires. The trigger goes with the handle.
//!
//! The daemon writes as root; the kernel lets callers without `CAP_SYS_RESOURCE` create only
//! triggers whose window is a multiple of 2 s (`kernel/sched/psi.c`, `psi_trigger_create`),
//! so that check is made here against the caller's own capabilities.
//!
//! A worker that dies takes its triggers with it: the poll handles waiting are written down
//! (`<state>.pollers`) and the next worker wakes them at start; their next POLL finds no
//! trigger and answers `POLLERR | POLLPRI`, as the kernel does for a file without one, so no
//! poller waits forever.
//!
//! Triggers are taken on a connection of their own, the **trigger connection**: the shared
//! tree served again on a writable superblock, mounted beside the pid file (`<name>.psi`),
//! from which hooks, `run` and reattach bind only the pressure files. The main mount stays a
//! read-only superblock, because a writable FUSE superblock costs every read a GETATTR
//! (session.rs, [`super::session::mount`]).

use super::session::notify_poll;
use crate::error::Errno;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What POLL answers for a file that has no poll of its own (the kernel's `DEFAULT_POLLMASK`).
pub const DEFAULT_POLLMASK: u32 = (libc::POLLIN | libc::POLLOUT | libc::POLLRDNORM | libc::POLLWRNORM) as u32;

/// What POLL answers for a pressure file without a trigger (`psi_fop_poll`: DEFAULT_POLLMASK
/// with `POLLERR | POLLPRI`).
pub const NO_TRIGGER: u32 = DEFAULT_POLLMASK | (libc::POLLERR | libc::POLLPRI) as u32;

/// The mount source of the trigger connection of the daemon serving `mountpoint` (canonical),
/// by which hooks and reattach find it.
pub fn source_name(mountpoint: &Path) -> String {
    format!("cgprocfs-psi:{:016x}", crate::fnv(mountpoint.as_os_str().as_encoded_bytes()))
}

/// Where the trigger connection of the daemon serving `mountpoint` is mounted, as this process
/// sees it (the latest such mount).
pub fn find(mountpoint: &Path) -> Option<PathBuf> {
    super::session::find_companion(mountpoint, source_name)
}

/// `CAP_SYS_RESOURCE`.
const CAP_SYS_RESOURCE: u32 = 24;

/// Checks a trigger string the way the kernel would for caller `tid` before it is written as
/// root: `some|full THRESHOLD_US WINDOW_US`, and for a caller without `CAP_SYS_RESOURCE`, a
/// window that is a multiple of 2 s. The kernel checks the rest (ranges) and gives its errno.
pub fn check_trigger(data: &[u8], caller_caps: Option<u64>) -> Result<(), Errno> {
    let text = std::str::from_utf8(data).map_err(|_| Errno(libc::EINVAL))?;
    let text = text.trim_end_matches(['\0', '\n']);
    let mut f = text.split_ascii_whitespace();
    let (Some(kind), Some(_), Some(window), None) = (f.next(), f.next(), f.next(), f.next()) else {
        return Err(Errno(libc::EINVAL));
    };
    if kind != "some" && kind != "full" {
        return Err(Errno(libc::EINVAL));
    }
    let window: u64 = window.parse().map_err(|_| Errno(libc::EINVAL))?;
    let privileged = caller_caps.is_some_and(|c| c & (1 << CAP_SYS_RESOURCE) != 0);
    if !privileged && window % 2_000_000 != 0 {
        return Err(Errno(libc::EINVAL));
    }
    Ok(())
}

/// The effective capabilities of thread `tid` (`CapEff` of its status), if readable.
pub fn caller_caps(tid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The poll handles waiting for a trigger, and the thread that wakes them.
pub struct Pollers {
    /// fh -> (kh, the trigger's fd).
    waiting: Mutex<HashMap<u64, (u64, Arc<OwnedFd>)>>,
    /// fh -> the events the watcher saw: polling the trigger consumed them (the kernel resets
    /// a trigger's event when it reports it), so the handle's next POLL reports them.
    fired: Mutex<HashMap<u64, u32>>,
    /// Written to when `waiting` changed: the watcher polls the new set.
    wake: OwnedFd,
    /// Where the waiting poll handles are written down for the next worker.
    file: Option<PathBuf>,
}

impl Pollers {
    /// Wakes the pollers a previous worker left waiting in `file` (once this worker answers
    /// requests: their next POLL finds no trigger).
    pub fn wake_left(dev: &OwnedFd, file: &std::path::Path) {
        if let Ok(text) = std::fs::read_to_string(file) {
            for kh in text.lines().filter_map(|l| l.trim().parse::<u64>().ok()) {
                let _ = notify_poll(dev, kh);
            }
        }
    }

    /// Starts the watcher, which notifies over `dev` (a fd of the connection) and writes the
    /// waiting poll handles to `file`.
    pub fn start(dev: Arc<OwnedFd>, file: Option<PathBuf>) -> std::io::Result<Arc<Pollers>> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        let p =
            Arc::new(Pollers { waiting: Mutex::new(HashMap::new()), fired: Mutex::new(HashMap::new()), wake: w, file });
        let me = Arc::clone(&p);
        std::thread::Builder::new().name("psi-poll".into()).spawn(move || me.watch(&dev, r))?;
        Ok(p)
    }

    /// Waits for `fd`'s trigger on behalf of poll handle `kh` of handle `fh`.
    pub fn wait(&self, fh: u64, kh: u64, fd: Arc<OwnedFd>) {
        self.waiting.lock().insert(fh, (kh, fd));
        self.changed();
    }

    /// The events the watcher saw for handle `fh` since its last POLL (taken).
    pub fn take_fired(&self, fh: u64) -> u32 {
        self.fired.lock().remove(&fh).unwrap_or(0)
    }

    /// Handle `fh` is released: nothing waits on it any more.
    pub fn forget(&self, fh: u64) {
        self.fired.lock().remove(&fh);
        if self.waiting.lock().remove(&fh).is_some() {
            self.changed();
        }
    }

    fn changed(&self) {
        if let Some(f) = &self.file {
            let list: String = self.waiting.lock().values().map(|(kh, _)| format!("{kh}\n")).collect();
            let _ = crate::files::write_atomic(f, list.as_bytes());
        }
        // SAFETY: one byte to our own non-blocking pipe; a full pipe already wakes the watcher.
        unsafe { libc::write(self.wake.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }

    fn watch(&self, dev: &OwnedFd, wake: OwnedFd) {
        loop {
            let set: Vec<(u64, u64, Arc<OwnedFd>)> =
                self.waiting.lock().iter().map(|(fh, (kh, fd))| (*fh, *kh, Arc::clone(fd))).collect();
            let mut pfds: Vec<libc::pollfd> = set
                .iter()
                .map(|(_, _, fd)| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLPRI, revents: 0 })
                .collect();
            pfds.push(libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            // SAFETY: a valid array of pollfds of its length.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
            if n < 0 {
                continue;
            }
            let mut buf = [0u8; 64];
            // SAFETY: reads into a local buffer from our own non-blocking pipe.
            while unsafe { libc::read(wake.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
            let fired: Vec<(u64, u64, u32)> = set
                .iter()
                .zip(&pfds)
                .filter(|(_, p)| p.revents != 0)
                .map(|((fh, kh, _), p)| (*fh, *kh, p.revents as u32))
                .collect();
            if fired.is_empty() {
                continue;
            }
            {
                let mut seen = self.fired.lock();
                for (fh, _, ev) in &fired {
                    *seen.entry(*fh).or_insert(0) |= ev;
                }
            }
            {
                let mut w = self.waiting.lock();
                for (fh, kh, _) in &fired {
                    // One-shot, as the kernel's poll: it asks again and waits anew.
                    if w.get(fh).is_some_and(|(k, _)| k == kh) {
                        w.remove(fh);
                    }
                }
            }
            for (_, kh, _) in fired {
                if let Err(e) = notify_poll(dev, kh) {
                    tracing::debug!(error = %e, kh, "psi: poll wakeup not delivered");
                }
            }
            if let Some(f) = &self.file {
                let list: String = self.waiting.lock().values().map(|(kh, _)| format!("{kh}\n")).collect();
                let _ = crate::files::write_atomic(f, list.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_are_checked_like_the_kernel_for_unprivileged_callers() {
        let all = Some(u64::MAX);
        let none = Some(0);
        assert_eq!(check_trigger(b"some 150000 1000000", all), Ok(()));
        assert_eq!(check_trigger(b"full 150000 1000000\n\0", all), Ok(()));
        assert_eq!(check_trigger(b"some 150000 1000000", none), Err(Errno(libc::EINVAL)), "unprivileged: 2 s windows");
        assert_eq!(check_trigger(b"some 500000 2000000", none), Ok(()));
        assert_eq!(check_trigger(b"avg 1 2", all), Err(Errno(libc::EINVAL)));
        assert_eq!(check_trigger(b"some 1", all), Err(Errno(libc::EINVAL)));
        assert_eq!(check_trigger(b"some 1 2 3", all), Err(Errno(libc::EINVAL)));
        assert_eq!(check_trigger(b"some x y", all), Err(Errno(libc::EINVAL)));
        assert_eq!(check_trigger(&[0xff, 0xfe], all), Err(Errno(libc::EINVAL)));
    }
}
