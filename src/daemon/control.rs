//! The keeper's control socket and what it tells: a thread answers `cgprocfs status` from
//! the keeper's [`Facts`] and the worker's last counters, and passes a valid handover request
//! on to the keeper's loop.

use super::{handover, KeeperConfig};
use crate::files;
use crate::sys::cloexec;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the keeper tells `cgprocfs status` and its workers about itself.
pub(super) struct Facts {
    /// When this keeper started, seconds since the epoch.
    pub(super) started: u64,
    /// Times the connection was handed on before this keeper had it, plus this adoption.
    pub(super) handovers: u64,
    /// Workers started so far.
    pub(super) spawned: AtomicU64,
    /// The running worker's pid, 0 without one.
    pub(super) worker: AtomicU32,
    /// Whether the cached tree is served.
    pub(super) cache: bool,
    /// Whether the trigger connection is served.
    pub(super) psi: bool,
}

impl Facts {
    fn keeper(&self, cfg: &KeeperConfig) -> crate::stats::Keeper {
        crate::stats::Keeper {
            version: env!("CARGO_PKG_VERSION").to_string(),
            mountpoint: cfg.mountpoint.display().to_string(),
            pid: std::process::id(),
            started: self.started,
            threads: cfg.threads.max(1),
            cache: cfg.cache.as_ref().filter(|_| self.cache).map(|c| c.display().to_string()),
            psi: cfg.psi.as_ref().filter(|_| self.psi).map(|c| c.display().to_string()),
            seccomp_socket: cfg.seccomp_socket.as_ref().map(|s| s.display().to_string()),
            restarts: self.spawned.load(Ordering::Relaxed).saturating_sub(1),
            handovers: self.handovers,
            worker: Some(self.worker.load(Ordering::Relaxed)).filter(|p| *p != 0),
        }
    }

    /// The status answer: these facts and the worker's last counters.
    fn status(&self, cfg: &KeeperConfig) -> crate::stats::Status {
        let worker = std::fs::read(files::companion(&cfg.pidfile, "stats"))
            .ok()
            .and_then(|b| serde_json::from_slice::<crate::stats::Snapshot>(&b).ok());
        crate::stats::Status { keeper: self.keeper(cfg), worker }
    }
}

pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The keeper's control socket: a thread accepts handover requests and hands a valid one to
/// the keeper's signal loop (SIGUSR1), which does the handover.
pub(super) struct Control {
    pub(super) pending: parking_lot::Mutex<Option<(OwnedFd, handover::Request)>>,
    pub(super) listener: OwnedFd,
}

/// Binds the control socket beside the pid file (or uses the previous keeper's listener,
/// still bound there during a handover). Without one the keeper serves on, only not handing
/// over.
pub(super) fn start_control(cfg: &KeeperConfig, adopted: Option<RawFd>, facts: Arc<Facts>) -> Option<Arc<Control>> {
    let path = handover::control_path(&cfg.pidfile);
    let listener = match adopted {
        // An upgrade's, the fd store's or the previous keeper's (a handover): still bound.
        // SAFETY: inherited for this process to own.
        Some(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        None => match retry_busy(|| handover::bind(&path)) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "no control socket: this keeper cannot hand over");
                return None;
            }
        },
    };
    cloexec(listener.as_raw_fd());
    let c = Arc::new(Control { pending: parking_lot::Mutex::new(None), listener });
    let me = Arc::clone(&c);
    let cfg = cfg.clone();
    let spawned = std::thread::Builder::new().name("control".into()).spawn(move || loop {
        let (conn, req) = match handover::accept(&me.listener) {
            Ok(Some(x)) => x,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "control: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if req.status {
            if let Err(e) = handover::answer_status(&conn, &facts.status(&cfg)) {
                tracing::debug!(error = %e, "control: status not delivered");
            }
            continue;
        }
        if handover::refuse_if_incompatible(&conn, &req) {
            continue;
        }
        let mut p = me.pending.lock();
        if p.is_some() {
            continue; // one handover at a time: this connection is closed, the asker fails
        }
        *p = Some((conn, req));
        drop(p);
        // SAFETY: a signal to this very process, which the keeper's loop waits for.
        unsafe { libc::kill(std::process::id() as i32, libc::SIGUSR1) };
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no control thread: this keeper cannot hand over");
        return None;
    }
    tracing::info!(socket = %path.display(), "control socket ready");
    Some(c)
}

/// `bind` retried for up to 3 s while another daemon answers on the socket: a keeper whose
/// mount was detached releases its sockets within a second (the keeper's mount check).
pub(super) fn retry_busy<T>(mut bind: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let t = Instant::now();
    loop {
        match bind() {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && t.elapsed() < Duration::from_secs(3) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}
