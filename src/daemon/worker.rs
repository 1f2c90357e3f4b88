//! The worker: serves the connection its keeper holds, on inherited fds, and does all the work
//! that touches outside input. It dies with its keeper and is replaced when it dies.

use super::args::{ReportLine, WorkerLine};
use super::own_fuse_fds;
use crate::fuse::session::{self, notify_resend, spawn_workers};
use crate::fuse::ProcFs;
use crate::seccomp;
use crate::service::Service;
use crate::sys::{cloexec, signal_set, wait_signal};
use crate::Root;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

/// Runs a worker on inherited fds until SIGTERM/SIGINT or the keeper's death.
pub fn worker(line: WorkerLine) -> io::Result<()> {
    let WorkerLine { fds, state: state_file, seccomp_chan, seccomp_fds, cache_fds: cache, psi_fds, opts, report } =
        line;
    let started = now_secs();
    // Die with the keeper: the pair is one service from the outside.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // The keeper runs at -1000 (the unit): it must never be chosen. The worker is what grows
    // under abuse, and the keeper replaces it at once: it must not be the last choice.
    let adj = std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse::<i32>().ok());
    if adj.is_some_and(|a| a < 0) {
        if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "0") {
            tracing::warn!(error = %e, "cannot reset the worker's oom_score_adj");
        }
    }
    let set = signal_set(&[libc::SIGTERM, libc::SIGINT]);
    // SAFETY: block before any thread starts so only the wait below takes them.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let owned: Vec<Arc<OwnedFd>> = own_fuse_fds(&fds)?.into_iter().map(Arc::new).collect();
    let cache: Vec<Arc<OwnedFd>> = own_fuse_fds(&cache)?.into_iter().map(Arc::new).collect();
    let psi: Vec<Arc<OwnedFd>> = own_fuse_fds(&psi_fds)?.into_iter().map(Arc::new).collect();
    let first = owned.first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no fds"))?;
    let snapshots = state_file.as_ref().map(|s| s.with_extension("snapshots"));
    let svc = Arc::new(Service::with_state(Root::new("/"), opts.service(), state_file).map_err(io::Error::other)?);
    tracing::info!(layout = ?svc.sampler().hierarchies().layout(), "cgroup hierarchies found");
    svc.start_sampler()?;
    if let Some(chan) = seccomp_chan {
        cloexec(chan);
        // SAFETY: inherited for this process to own.
        let chan = unsafe { OwnedFd::from_raw_fd(chan) };
        let policy = seccomp::Policy::Serve { svc: svc.clone(), affinity: opts.seccomp_affinity };
        seccomp::spawn(policy, seccomp::adopt_fds(&seccomp_fds), Some(chan))?;
    }
    let spin = Duration::from_micros(opts.spin_us);
    let procfs =
        || ProcFs::with_floor(svc.clone(), opts.bench_floor).with_handles_per_container(opts.handles_per_container);
    let fs = Arc::new(procfs());
    spawn_workers(&owned, fs.clone(), spin)?;
    if let Some(dev) = psi.first() {
        // The trigger connection: the same tree with pollers. The poll handles waiting on
        // triggers are written beside the state file for the next worker, which wakes them.
        let pollers_file = snapshots.as_ref().map(|s| s.with_extension("pollers"));
        let left = pollers_file.as_deref().map(crate::fuse::psi::Pollers::left).unwrap_or_default();
        let pollers = crate::fuse::psi::Pollers::start(Arc::clone(dev), pollers_file)?;
        // Its reads cost a GETATTR more (a writable superblock): the same spin as the main
        // connection's keeps them from also paying a wakeup each.
        let triggers =
            crate::fuse::trigger::TriggerFs::new(procfs().sharing_handles(&fs), pollers, opts.triggers_per_container)?;
        spawn_workers(&psi, Arc::new(triggers), spin)?;
        // A predecessor's pollers: woken, they ask again and find their trigger gone.
        crate::fuse::psi::Pollers::wake_left(dev, &left);
    }
    start_report(report, svc.clone(), fs, started);
    if !cache.is_empty() {
        let fresh = Duration::from_millis(opts.fresh_ms);
        spawn_workers(
            &cache,
            Arc::new(crate::fuse::cached::CachedFs::with_floor(svc.clone(), fresh, snapshots, opts.bench_floor)),
            spin,
        )?;
    }
    // Only now, with readers in place: requests a dead predecessor read are queued again.
    for fd in std::iter::once(first).chain(cache.first()).chain(psi.first()) {
        if let Err(e) = notify_resend(fd) {
            tracing::warn!(error = %e, "kernel cannot resend requests (needs Linux 6.9); a predecessor's in-flight requests are lost");
        }
    }
    let sig = wait_signal(&set, None);
    tracing::info!(signal = ?sig, fallbacks = svc.fallbacks.count(), "worker stopping");
    // Answer every FUSE request already read, take no more (they wait for the next worker).
    session::quiesce(Duration::from_secs(2));
    // Seccomp answers being written are finished first (bounded: one may be held by a
    // hostile container).
    seccomp::wait_answered(Duration::from_secs(2));
    // Exit without unwinding the reader threads, which are blocked in read(2).
    std::process::exit(0);
}

/// How often the counters are written.
const REPORT_EVERY: Duration = Duration::from_secs(2);

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Writes the counters every [`REPORT_EVERY`]: JSON for `cgprocfs status` (root only) and the
/// Prometheus text for node agents (0644). A failed write is logged once and retried.
fn start_report(report: ReportLine, svc: Arc<Service>, fs: Arc<ProcFs>, started: u64) {
    if report.stats.is_none() && report.metrics.is_none() {
        return;
    }
    let keeper = crate::stats::Keeper {
        // SAFETY: getppid cannot fail.
        pid: unsafe { libc::getppid() } as u32,
        started: report.keeper_started,
        restarts: report.restarts,
        handovers: report.handovers,
        ..Default::default()
    };
    let spawned = std::thread::Builder::new().name("report".into()).spawn(move || {
        let mut warned = false;
        loop {
            let mut snap = svc.stats.snapshot();
            snap.at = now_secs();
            snap.pid = std::process::id();
            snap.started = started;
            snap.handles = fs.handles_by_container();
            snap.seccomp_containers = seccomp::WATCHED.load(std::sync::atomic::Ordering::Relaxed);
            let mut written = Ok(());
            if let Some(p) = &report.stats {
                let json = serde_json::to_vec(&snap).unwrap_or_default();
                written = written.and(crate::files::write_atomic(p, &json));
            }
            if let Some(p) = &report.metrics {
                let text = crate::stats::prometheus(&snap, &keeper);
                written = written.and(crate::files::write_atomic_mode(p, text.as_bytes(), 0o644));
            }
            if let Err(e) = written {
                if !warned {
                    tracing::warn!(error = %e, "cannot write the counters");
                    warned = true;
                }
            }
            std::thread::sleep(REPORT_EVERY);
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no report thread: status and metrics show nothing");
    }
}
