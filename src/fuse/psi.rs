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
/// The kernel's bounds of a trigger's window (`kernel/sched/psi.c`: `WINDOW_MIN_US`,
/// `WINDOW_MAX_US`).
const WINDOW_MIN_US: u32 = 500_000;
const WINDOW_MAX_US: u32 = 10_000_000;
/// Without `CAP_SYS_RESOURCE` a window must be a multiple of this (the kernel's guard against
/// cheap real-time polling: such triggers are served by the slow averaging work, not psimon).
const UNPRIVILEGED_WINDOW_US: u32 = 2_000_000;

/// PSI triggers one container may hold at once by default (`--triggers-per-container`);
/// further trigger writes fail with `EMFILE`. Pressure monitors use a handful.
pub const TRIGGERS_PER_CONTAINER: usize = 32;

/// A trigger as the kernel reads it: `some|full THRESHOLD_US WINDOW_US`, both `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    /// `full` rather than `some`.
    pub full: bool,
    /// Stall time within the window that fires it, in µs.
    pub threshold_us: u32,
    /// The window, in µs.
    pub window_us: u32,
}

impl Trigger {
    /// The line written to the cgroup's pressure file: the normalised trigger, never the
    /// caller's bytes (which the kernel might read otherwise than this check did).
    pub fn line(&self) -> String {
        format!("{} {} {}", if self.full { "full" } else { "some" }, self.threshold_us, self.window_us)
    }
}

/// Parses a trigger written by caller with capabilities `caller_caps` as the kernel would
/// (`psi_trigger_create`: two `u32`s, window within 500 ms–10 s, threshold within 1..=window),
/// then applies the kernel's rule for callers without `CAP_SYS_RESOURCE` (a window that is a
/// multiple of 2 s) — the daemon writes as root, so it must apply that rule itself. A number
/// that does not fit 32 bits is refused, not wrapped: the kernel's `%u` would wrap it into a
/// window the rule never saw.
pub fn parse_trigger(data: &[u8], caller_caps: Option<u64>) -> Result<Trigger, Errno> {
    let inval = Errno(libc::EINVAL);
    let text = std::str::from_utf8(data).map_err(|_| inval)?;
    let text = text.trim_end_matches(['\0', '\n']);
    let mut f = text.split_ascii_whitespace();
    let (Some(kind), Some(threshold), Some(window), None) = (f.next(), f.next(), f.next(), f.next()) else {
        return Err(inval);
    };
    let full = match kind {
        "some" => false,
        "full" => true,
        _ => return Err(inval),
    };
    let num = |s: &str| -> Result<u32, Errno> {
        // Digits only: no sign, no radix prefix (`u32::from_str` takes a leading '+').
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(inval);
        }
        s.parse::<u32>().map_err(|_| inval)
    };
    let (threshold_us, window_us) = (num(threshold)?, num(window)?);
    if !(WINDOW_MIN_US..=WINDOW_MAX_US).contains(&window_us) || threshold_us == 0 || threshold_us > window_us {
        return Err(inval);
    }
    let privileged = caller_caps.is_some_and(|c| c & (1 << CAP_SYS_RESOURCE) != 0);
    if !privileged && window_us % UNPRIVILEGED_WINDOW_US != 0 {
        return Err(inval);
    }
    Ok(Trigger { full, threshold_us, window_us })
}

/// The effective capabilities of thread `tid` (`CapEff` of its status), if readable.
pub fn caller_caps(tid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// How many triggers all containers together may hold: half of the open-file limit left after
/// a reserve for everything else the worker opens (FUSE and seccomp fds, cgroup files).
pub fn global_trigger_limit() -> usize {
    (crate::sys::spare_fds() / 2).max(16)
}

/// Threads closing released triggers. Closing a trigger's fd waits for an RCU grace period
/// in the kernel (`psi_trigger_destroy` -> `synchronize_rcu`, milliseconds each): done on a
/// FUSE thread, a process that drops thousands of triggers at once stalled every reader of
/// the connection behind it. Several closers share grace periods.
const CLOSERS: usize = 4;

/// A trigger to close, and the container to credit once it is closed.
type Closing = (Arc<str>, Arc<OwnedFd>);

/// Closes released triggers off the FUSE threads; the trigger counts against its container
/// until it is really closed, so releasing faster than the kernel destroys cannot grow the
/// backlog past the quota.
pub struct Closer {
    tx: std::sync::mpsc::Sender<Closing>,
}

impl Closer {
    /// Starts the closing threads; `closed(owner)` runs after each close.
    pub fn start(closed: Arc<dyn Fn(&str) + Send + Sync>) -> std::io::Result<Closer> {
        let (tx, rx) = std::sync::mpsc::channel::<Closing>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..CLOSERS {
            let (rx, closed) = (Arc::clone(&rx), Arc::clone(&closed));
            std::thread::Builder::new().name(format!("psi-close-{i}")).spawn(move || loop {
                let next = rx.lock().recv();
                let Ok((owner, fd)) = next else { return };
                drop(fd);
                closed(&owner);
            })?;
        }
        Ok(Closer { tx })
    }

    /// Closes `fd` (a trigger of `owner`) in the background.
    pub fn close(&self, owner: Arc<str>, fd: Arc<OwnedFd>) {
        if let Err(std::sync::mpsc::SendError((owner, fd))) = self.tx.send((owner, fd)) {
            // No closer left (cannot happen while the process runs): close here.
            drop(fd);
            tracing::debug!(%owner, "psi: trigger closed on the request's thread");
        }
    }
}

/// The poll handles waiting for a trigger, and the thread that wakes them. Each trigger fd is
/// registered once in an epoll set keyed by its handle (`EPOLLONESHOT`, re-armed by the next
/// wait), so a wait, a wakeup and a release each cost the same whatever the number of triggers.
pub struct Pollers {
    /// fh -> the poll handle waiting on its trigger (registered in the epoll set).
    waiting: Mutex<HashMap<u64, u64>>,
    /// fh -> the events the watcher saw: polling the trigger consumed them (the kernel resets
    /// a trigger's event when it reports it), so the handle's next POLL reports them.
    fired: Mutex<HashMap<u64, u32>>,
    epoll: OwnedFd,
    /// Where the waiting poll handles are written down for the next worker: appended to (one
    /// line per wait), rewritten with only the live ones when it has grown twice past them.
    /// Waking a handle that no longer waits is harmless (the kernel ignores it).
    file: Option<PathBuf>,
    log: Mutex<Option<(std::fs::File, usize)>>,
}

impl Pollers {
    /// The poll handles a previous worker left waiting, written down in `file` (read before
    /// [`Pollers::start`] begins a new list there).
    pub fn left(file: &std::path::Path) -> Vec<u64> {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let mut khs: Vec<u64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        khs.sort_unstable();
        khs.dedup();
        khs
    }

    /// Wakes poll handles `khs` a previous worker left waiting (once this worker answers
    /// requests: their next POLL finds no trigger).
    pub fn wake_left(dev: &OwnedFd, khs: &[u64]) {
        for &kh in khs {
            let _ = notify_poll(dev, kh);
        }
    }

    /// Starts the watcher, which notifies over `dev` (a fd of the connection) and writes the
    /// waiting poll handles to `file`.
    pub fn start(dev: Arc<OwnedFd>, file: Option<PathBuf>) -> std::io::Result<Arc<Pollers>> {
        // SAFETY: epoll_create1 with a flag; the fd is ours.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd this process owns.
        let epoll = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ep) };
        let log = match &file {
            Some(f) => {
                // A predecessor's list is read by `wake_left` before the first wait here.
                crate::files::write_atomic(f, b"")?;
                Some((crate::files::open_append(f)?, 0))
            }
            None => None,
        };
        let p = Arc::new(Pollers {
            waiting: Mutex::new(HashMap::new()),
            fired: Mutex::new(HashMap::new()),
            epoll,
            file,
            log: Mutex::new(log),
        });
        let me = Arc::clone(&p);
        std::thread::Builder::new().name("psi-poll".into()).spawn(move || me.watch(&dev))?;
        Ok(p)
    }

    /// Waits for `fd`'s trigger on behalf of poll handle `kh` of handle `fh`.
    pub fn wait(&self, fh: u64, kh: u64, fd: &OwnedFd) {
        let raw = fd.as_raw_fd();
        let again = self.waiting.lock().insert(fh, kh) == Some(kh);
        let mut ev = libc::epoll_event { events: (libc::EPOLLPRI | libc::EPOLLONESHOT) as u32, u64: fh };
        // Re-armed if the epoll set has it (a spent one-shot), added if not: the kernel's set
        // says which, no second record of it here.
        let ctl = |op, ev: &mut libc::epoll_event| {
            // SAFETY: a valid epoll fd, a valid fd, a valid event.
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, raw, ev) }
        };
        let added = ctl(libc::EPOLL_CTL_MOD, &mut ev) == 0 || ctl(libc::EPOLL_CTL_ADD, &mut ev) == 0;
        if !added {
            tracing::debug!(error = %std::io::Error::last_os_error(), fh, "psi: trigger not watched");
        }
        if !again {
            self.write_down(kh);
        }
    }

    /// The events the watcher saw for handle `fh` since its last POLL (taken).
    pub fn take_fired(&self, fh: u64) -> u32 {
        self.fired.lock().remove(&fh).unwrap_or(0)
    }

    /// Handle `fh` is released: nothing waits on it any more, and its trigger (`fd`, about to
    /// be closed) leaves the epoll set.
    pub fn forget(&self, fh: u64, fd: Option<&OwnedFd>) {
        self.fired.lock().remove(&fh);
        self.waiting.lock().remove(&fh);
        if let Some(fd) = fd {
            // A trigger never waited on is not in the set: ENOENT, nothing to undo.
            // SAFETY: valid fds; a null event is allowed for EPOLL_CTL_DEL.
            unsafe {
                libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd.as_raw_fd(), std::ptr::null_mut())
            };
        }
    }

    /// Appends `kh` to the list the next worker wakes, compacting it when it has grown.
    fn write_down(&self, kh: u64) {
        let Some(path) = &self.file else { return };
        use std::io::Write;
        let mut log = self.log.lock();
        let Some((f, lines)) = log.as_mut() else { return };
        let _ = writeln!(f, "{kh}");
        *lines += 1;
        let live: Vec<u64> = {
            let w = self.waiting.lock();
            if *lines <= 2 * w.len() + 64 {
                return;
            }
            w.values().copied().collect()
        };
        let list: String = live.iter().map(|kh| format!("{kh}\n")).collect();
        if crate::files::write_atomic(path, list.as_bytes()).is_ok() {
            if let Ok(nf) = crate::files::open_append(path) {
                *log = Some((nf, live.len()));
            }
        }
    }

    fn watch(&self, dev: &OwnedFd) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            // SAFETY: a valid epoll fd and a buffer of events of its length.
            let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, -1) };
            if n <= 0 {
                continue;
            }
            for ev in &events[..n as usize] {
                let (fh, revents) = (ev.u64, ev.events);
                // One-shot, as the kernel's poll: it asks again and waits anew.
                let Some(kh) = self.waiting.lock().remove(&fh) else { continue };
                *self.fired.lock().entry(fh).or_insert(0) |= revents;
                if let Err(e) = notify_poll(dev, kh) {
                    tracing::debug!(error = %e, kh, "psi: poll wakeup not delivered");
                }
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
        let ok = |full, threshold_us, window_us| Ok(Trigger { full, threshold_us, window_us });
        let inval = Err(Errno(libc::EINVAL));
        assert_eq!(parse_trigger(b"some 150000 1000000", all), ok(false, 150_000, 1_000_000));
        assert_eq!(parse_trigger(b"full 150000 1000000\n\0", all), ok(true, 150_000, 1_000_000));
        assert_eq!(parse_trigger(b"some 150000 1000000", none), inval, "unprivileged: 2 s windows");
        assert_eq!(parse_trigger(b"some 500000 2000000", none), ok(false, 500_000, 2_000_000));
        assert_eq!(parse_trigger(b"avg 1 2", all), inval);
        assert_eq!(parse_trigger(b"some 1", all), inval);
        assert_eq!(parse_trigger(b"some 1 2 3", all), inval);
        assert_eq!(parse_trigger(b"some x y", all), inval);
        assert_eq!(parse_trigger(&[0xff, 0xfe], all), inval);
    }

    #[test]
    fn numbers_are_u32_and_within_the_kernels_bounds_before_the_window_rule() {
        let (all, none) = (Some(u64::MAX), Some(0));
        let inval = Err(Errno(libc::EINVAL));
        // 19108310000000 is a multiple of 2 s, and wraps (%u) to a 500 096 µs window.
        assert_eq!(19_108_310_000_000u64 % (1 << 32), 500_096);
        assert_eq!(parse_trigger(b"some 100000 19108310000000", none), inval);
        assert_eq!(parse_trigger(b"some 100000 19108310000000", all), inval);
        assert_eq!(parse_trigger(b"some 100000 4294967296", all), inval);
        assert_eq!(parse_trigger(b"some +100000 2000000", none), inval);
        assert_eq!(parse_trigger(b"some 0 2000000", none), inval, "a threshold of 0");
        assert_eq!(parse_trigger(b"some 2000001 2000000", none), inval, "a threshold past the window");
        assert_eq!(parse_trigger(b"some 1000 400000", all), inval, "a window under 500 ms");
        assert_eq!(parse_trigger(b"some 1000 12000000", none), inval, "a window over 10 s");
        assert_eq!(parse_trigger(b"some 1000 10000000", none).map(|t| t.line()), Ok("some 1000 10000000".into()));
        assert_eq!(
            parse_trigger(b"full  0010000   02000000 ", none).map(|t| t.line()),
            Ok("full 10000 2000000".into())
        );
    }
}
