//! Process structure of `cgprocfs serve`: a small **keeper** that owns the FUSE connection and
//! a **worker** that serves it.
//!
//! The keeper mounts, answers FUSE_INIT, clones one `/dev/fuse` fd per worker thread and keeps
//! all of them open for its whole life. The worker inherits those fds and does all the work
//! that touches outside input (parsing cgroup and /proc files, rendering). When the worker dies
//! — SIGKILL, panic, OOM kill — nothing on the connection is released: the kernel keeps
//! queueing requests, the keeper starts a new worker within milliseconds, and that worker asks
//! the kernel to resend what its predecessor had read but not answered (`FUSE_NOTIFY_RESEND`).
//! Containers' bind mounts never see `ENOTCONN`. An upgrade (SIGHUP, or `cgprocfs upgrade`)
//! re-executes the keeper from the binary on disk with the fds and INIT parameters passed
//! along, and starts a new worker from the new binary. Another keeper — a new `serve`, from any
//! mount namespace and another build — takes the connection over through the control socket
//! ([`handover`]).

pub mod handover;
pub mod systemd;

use crate::fd::cloexec;
use crate::files;
use crate::fs::session::{self, clone_fd, notify_resend, spawn_workers, InitParams};
use crate::fs::ProcFs;
use crate::seccomp::{self, agent::Agent};
use crate::service::{Options, Service};
use crate::Root;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the keeper needs to start, restart and upgrade workers.
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    /// The mount point, canonical.
    pub mountpoint: PathBuf,
    /// The binary to run workers and upgrades from (its path on disk, so an upgrade that
    /// replaced the file runs the new one).
    pub binary: PathBuf,
    /// Arguments passed on to workers and to the upgraded keeper (`--cpu-count ...`).
    pub view_args: Vec<String>,
    /// Worker threads, one cloned fd each.
    pub threads: usize,
    /// Where the keeper writes its pid for `cgprocfs upgrade`; the workers' state file is
    /// beside it ([`files::companion`] `state`).
    pub pidfile: PathBuf,
    /// The socket runtimes hand seccomp notification fds to; `None` disables it.
    pub seccomp_socket: Option<PathBuf>,
    /// Repair containers left with a dead predecessor's binds once a fresh mount serves.
    pub reattach: bool,
    /// After a handover, wait for SIGTERM/SIGINT instead of exiting (a DaemonSet pod).
    pub linger: bool,
    /// Where the cached tree's connection is mounted (fs/cached.rs); `None` serves none.
    pub cache: Option<PathBuf>,
}

/// A live connection handed over by a previous keeper through `exec`.
#[derive(Debug, Clone)]
pub struct Adopted {
    /// The inherited `/dev/fuse` fds; the first is the session fd.
    pub fds: Vec<RawFd>,
    /// The cached tree's connection, if the previous keeper had one.
    pub cache: Vec<RawFd>,
    /// The parameters negotiated at the original FUSE_INIT.
    pub params: InitParams,
    /// The seccomp listener socket and the notification fds held, if any.
    pub seccomp: Option<(RawFd, Vec<RawFd>)>,
    /// The previous keeper's control listener (a handover), used when this keeper's own
    /// control socket path is the one it still holds.
    pub control: Option<RawFd>,
}

impl Adopted {
    /// What a handover received, as a keeper adopts it.
    pub fn from_handover(r: handover::Received) -> Adopted {
        use std::os::fd::IntoRawFd;
        Adopted {
            fds: r.fuse.into_iter().map(IntoRawFd::into_raw_fd).collect(),
            cache: r.cache.into_iter().map(IntoRawFd::into_raw_fd).collect(),
            params: InitParams { minor: r.offer.minor, flags: r.offer.flags },
            seccomp: r.listener.map(|l| (l.into_raw_fd(), r.notify.into_iter().map(IntoRawFd::into_raw_fd).collect())),
            control: r.control.map(IntoRawFd::into_raw_fd),
        }
    }
}

/// What a worker gets for answering seccomp notifications.
#[derive(Debug, Clone)]
pub struct WorkerSeccomp {
    /// Its end of the socket pair the keeper sends new notification fds over.
    pub chan: RawFd,
    /// The notification fds of running containers.
    pub fds: Vec<RawFd>,
    /// Also answer `sched_getaffinity`.
    pub affinity: bool,
}

/// Where the keeper with pid file `pidfile` mounts the cached tree (fs/cached.rs).
pub fn cache_dir(pidfile: &Path) -> PathBuf {
    files::companion(pidfile, "cache")
}

/// The pid file of the keeper serving `mountpoint`.
pub fn default_pidfile(mountpoint: &Path) -> PathBuf {
    let name: String = mountpoint
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '-' })
        .collect();
    PathBuf::from("/run/cgprocfs").join(format!("{name}.pid"))
}

/// Checks that `fd` is an open `/dev/fuse` (char device 10:229), so a bad `--adopt` argument
/// cannot make the daemon serve on some other file.
fn check_fuse_fd(fd: RawFd) -> io::Result<()> {
    let st = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
    let is_chr = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
    if !is_chr || libc::major(st.st_rdev) != 10 || libc::minor(st.st_rdev) != 229 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("fd {fd} is not /dev/fuse")));
    }
    Ok(())
}

/// Takes ownership of inherited `/dev/fuse` fds (checked, close-on-exec again).
fn own_fuse_fds(raw: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
    let mut fds = Vec::new();
    for &fd in raw {
        check_fuse_fd(fd)?;
        cloexec(fd);
        // SAFETY: the fd was inherited for this process to own.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(fds)
}

/// Mounts the cached tree's connection at `cfg.cache` (one fd per thread). It is optional:
/// without it hooks bind the shared files, so a failure is logged and serving goes on.
fn mount_cache(cfg: &KeeperConfig) -> Vec<OwnedFd> {
    let Some(dir) = &cfg.cache else { return Vec::new() };
    let mounted = (|| -> io::Result<Vec<OwnedFd>> {
        // Cleared first: a dead keeper's mount (ENOTCONN), or a live one whose main mount was
        // detached (its containers' binds keep it).
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        if session::mountpoint_state(dir, &mountinfo) != session::MountpointState::Free {
            let _ = session::unmount(dir);
        }
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::DirBuilder::new().mode(0o700).create(dir)?;
        }
        let (master, _) = session::mount(dir, &crate::fs::cached::source_name(&cfg.mountpoint))?;
        let mut fds = vec![master];
        for _ in 1..cfg.threads.max(1) {
            fds.push(clone_fd(&fds[0])?);
        }
        Ok(fds)
    })();
    match mounted {
        Ok(fds) => {
            tracing::info!(mountpoint = %dir.display(), "cached tree mounted");
            fds
        }
        Err(e) => {
            tracing::warn!(mountpoint = %dir.display(), error = %e, "no cached tree: hooks bind the shared files");
            Vec::new()
        }
    }
}

fn signal_set(sigs: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Waits for one signal of `set` (blocked by the caller), at most `timeout`. An interruption
/// (a stop and continue, a tracer attaching) is not a signal of the set: the wait goes on.
fn wait_signal(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<libc::c_int> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ts = deadline.map(|d| {
            let t = d.saturating_duration_since(Instant::now());
            libc::timespec { tv_sec: t.as_secs() as _, tv_nsec: t.subsec_nanos() as _ }
        });
        // SAFETY: set and ts are valid for the call; info may be null.
        let r = unsafe {
            libc::sigtimedwait(set, std::ptr::null_mut(), ts.as_ref().map_or(std::ptr::null(), |t| t as *const _))
        };
        if r > 0 {
            return Some(r);
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}

/// Runs the keeper until SIGTERM/SIGINT or until another keeper took the connection over.
/// `adopted` is set when the connection already exists: this process was exec-ed by an
/// upgrade, or took it over from another keeper, which `taken` then confirms to once a worker
/// serves.
pub fn keeper(cfg: KeeperConfig, adopted: Option<Adopted>, taken: Option<handover::Taken>) -> io::Result<()> {
    let set = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD, libc::SIGUSR1]);
    // SAFETY: blocking signals in this (single) thread so sigtimedwait receives them.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    raise_nofile_limit();
    if let Some(dir) = cfg.pidfile.parent() {
        // Root writes its pid, state and records here: refuse a directory others can change
        // (before mounting, so a refusal leaves nothing behind).
        files::private_dir(dir, 0o755)?;
    }
    // A connection that already existed (upgrade, handover, fd store): nothing to repair.
    let fresh = adopted.is_none();
    let adopted_seccomp = adopted.as_ref().and_then(|a| a.seccomp.clone());
    let adopted_seccomp_held = adopted_seccomp.is_some();
    let adopted_control = adopted.as_ref().and_then(|a| a.control);
    let (fds, params, cache) = match adopted {
        Some(a) => {
            let fds = own_fuse_fds(&a.fds)?;
            let cache = own_fuse_fds(&a.cache)?;
            tracing::info!(fds = fds.len(), cache = cache.len(), "adopted the live FUSE connection");
            (fds, a.params, cache)
        }
        None => {
            let (master, params) = session::mount(&cfg.mountpoint, &crate::reattach::source_name(&cfg.mountpoint))?;
            let mut fds = vec![master];
            for _ in 1..cfg.threads.max(1) {
                fds.push(clone_fd(&fds[0])?);
            }
            (fds, params, Vec::new())
        }
    };
    // A previous keeper without a cached tree (or one whose cache mount failed): mount one now.
    let cache = if cache.is_empty() { mount_cache(&cfg) } else { cache };
    if let Err(e) = files::write_atomic(&cfg.pidfile, format!("{}\n", std::process::id()).as_bytes()) {
        tracing::warn!(pidfile = %cfg.pidfile.display(), error = %e, "cannot write the pid file");
    }
    tracing::info!(mountpoint = %cfg.mountpoint.display(), threads = fds.len(), minor = params.minor, "serving");
    let agent = start_agent(&cfg, adopted_seccomp)?;
    let agent = agent.as_deref();
    let control = start_control(&cfg, adopted_control);
    if let Some(a) = agent {
        a.on_new(systemd::store_notify);
    }
    if systemd::managed() {
        let sec = agent.map(|a| a.with_fds(|l, n| (l, n.to_vec())));
        systemd::store_connection(
            &raw_fds(&fds),
            &raw_fds(&cache),
            params,
            sec.as_ref().map(|(l, n)| (*l, n.as_slice())),
            control.as_ref().map(|c| c.listener.as_raw_fd()),
        );
    }
    if adopted_seccomp_held {
        // A drain a stopping keeper left would answer "run the real call" to the containers
        // this keeper answers now.
        stop_drain(&cfg);
    }

    let mut worker = Some(spawn_worker(&cfg, &fds, &cache, agent)?);
    start_ready(&cfg, fresh && cfg.reattach);
    if let Some(t) = taken {
        // The old keeper exits once told; until then it could still resume.
        match t.confirm() {
            Ok(()) => tracing::info!("took the connection over from the previous keeper"),
            Err(e) => tracing::warn!(error = %e, "cannot confirm the handover (the previous keeper is gone?)"),
        }
    }
    let mut started = Instant::now();
    let mut backoff = Duration::ZERO;
    let mut respawn_at: Option<Instant> = None;
    // The device of this connection's mount, to notice an `umount -l` under the keeper.
    let source = crate::reattach::source_name(&cfg.mountpoint);
    let my_dev = mount_dev(&cfg.mountpoint, &source);
    let mut detached = false;
    let mut next_check = Instant::now() + CHECK_EVERY;
    loop {
        let until_check = next_check.saturating_duration_since(Instant::now());
        let timeout = respawn_at.map_or(until_check, |t| t.saturating_duration_since(Instant::now()).min(until_check));
        match wait_signal(&set, Some(timeout)) {
            Some(libc::SIGCHLD) => {
                let Some(w) = worker.as_mut() else { continue };
                if let Ok(Some(status)) = w.try_wait() {
                    worker = None;
                    // A worker that keeps dying at once is restarted more slowly, up to 1 s.
                    backoff = if started.elapsed() < Duration::from_secs(1) {
                        (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
                    } else {
                        Duration::ZERO
                    };
                    tracing::error!(%status, restart_in = ?backoff, "worker died; the connection is kept");
                    respawn_at = Some(Instant::now() + backoff);
                }
            }
            Some(libc::SIGTERM) | Some(libc::SIGINT) => {
                // Under a service manager the connection is in its fd store: left mounted, it
                // is the next keeper's after a restart (a plain stop releases the store, and
                // the next start clears the stale mount). Otherwise unmount while the worker
                // still answers, then stop it.
                let keep = systemd::managed();
                if keep {
                    systemd::notify_stopping();
                }
                let r = if detached || keep { Ok(()) } else { session::unmount(&cfg.mountpoint) };
                if let Some(c) = cfg.cache.as_ref().filter(|_| !(detached || keep || cache.is_empty())) {
                    // Containers' binds of it keep the connection until they go.
                    let _ = session::unmount(c);
                }
                if let Some(w) = worker.take() {
                    stop_child(w, libc::SIGTERM);
                }
                if let Some(a) = agent {
                    start_drain(&cfg, a.close());
                }
                remove_own_pidfile(&cfg.pidfile);
                r?;
                tracing::info!("stopped");
                return Ok(());
            }
            Some(libc::SIGUSR1) => {
                let Some((conn, req)) = control.as_ref().and_then(|c| c.pending.lock().take()) else { continue };
                tracing::info!(binary = %req.binary, "handing the connection over to another keeper");
                if let Some(a) = agent {
                    a.pause(true);
                }
                if let Some(w) = worker.take() {
                    stop_child(w, libc::SIGTERM);
                }
                match give(&fds, &cache, params, agent, control.as_deref(), &conn) {
                    Ok(true) => {
                        // Nothing is unmounted and no drain started: the new keeper serves the
                        // mount and holds the containers' notification fds; the pid file is its.
                        if cfg.linger {
                            tracing::info!("connection handed over; waiting to be stopped");
                            let stop = signal_set(&[libc::SIGTERM, libc::SIGINT]);
                            let _ = wait_signal(&stop, None);
                        }
                        tracing::info!("connection handed over; exiting");
                        return Ok(());
                    }
                    Ok(false) => tracing::warn!("the other keeper did not take the connection; serving on"),
                    Err(e) => tracing::warn!(error = %e, "handover failed; serving on"),
                }
                if let Some(a) = agent {
                    a.pause(false);
                }
                respawn_at = Some(Instant::now());
            }
            Some(libc::SIGHUP) => {
                tracing::info!(binary = %cfg.binary.display(), "upgrading");
                systemd::notify_reloading();
                // The old worker goes first; whatever FUSE request it had read is resent to the
                // next one (SIGTERM: it finishes a seccomp answer it is writing, which the kernel
                // would not resend).
                if let Some(w) = worker.take() {
                    stop_child(w, libc::SIGTERM);
                }
                let ctl = control.as_ref().map(|c| c.listener.as_raw_fd());
                let err = match agent {
                    Some(a) => a.with_fds(|l, n| exec_upgrade(&cfg, &fds, &cache, params, Some((l, n)), ctl)),
                    None => exec_upgrade(&cfg, &fds, &cache, params, None, ctl),
                };
                tracing::error!(error = %err, "upgrade failed; continuing with this binary");
                respawn_at = Some(Instant::now());
            }
            _ => {}
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + CHECK_EVERY;
            if connection_ended(&fds[0]) {
                // No mount uses the connection any more (its last bind went): nothing to serve.
                tracing::info!("the connection ended: no mount uses it any more; exiting");
                if let Some(w) = worker.take() {
                    stop_child(w, libc::SIGTERM);
                }
                if let Some(a) = agent {
                    start_drain(&cfg, a.close());
                }
                remove_own_pidfile(&cfg.pidfile);
                return Ok(());
            }
            if !detached && my_dev.is_some() && mount_dev(&cfg.mountpoint, &source) != my_dev {
                // `umount -l` under us: containers' binds may still use the connection, so it
                // is served until it ends, but the sockets go to whoever serves the mount point
                // next.
                detached = true;
                tracing::warn!(mountpoint = %cfg.mountpoint.display(), "the mount was detached; serving the binds that remain, releasing the seccomp and control sockets");
                if let Some(a) = agent {
                    a.release_listener();
                }
                if control.is_some() {
                    let _ = std::fs::remove_file(handover::control_path(&cfg.pidfile));
                }
                remove_own_pidfile(&cfg.pidfile);
            }
        }
        if respawn_at.is_some_and(|t| t <= Instant::now()) && worker.is_none() {
            respawn_at = None;
            match spawn_worker(&cfg, &fds, &cache, agent) {
                Ok(w) => {
                    worker = Some(w);
                    started = Instant::now();
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a worker; retrying");
                    respawn_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
    }
}

/// `bind` retried for up to 3 s while another daemon answers on the socket: a keeper whose
/// mount was detached releases its sockets within [`CHECK_EVERY`].
fn retry_busy<T>(mut bind: impl FnMut() -> io::Result<T>) -> io::Result<T> {
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

/// How often the keeper checks that its mount is attached and its connection alive.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The device of this keeper's mount at `mountpoint` (source `source`) as this process's
/// mount namespace shows it now; `None` once it is detached.
fn mount_dev(mountpoint: &Path, source: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    crate::reattach::live_dev(&info, mountpoint, source).map(str::to_string)
}

/// Whether the kernel ended the FUSE connection of `fd` (`POLLERR` on `/dev/fuse`: no mount
/// uses it any more, or it was aborted).
fn connection_ended(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: 0, revents: 0 };
    // SAFETY: one valid pollfd, no waiting.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Removes the pid file if it still names this process (another keeper may own it now).
fn remove_own_pidfile(pidfile: &Path) {
    let mine = std::fs::read_to_string(pidfile).is_ok_and(|s| s.trim() == std::process::id().to_string());
    if mine {
        let _ = std::fs::remove_file(pidfile);
    }
}

/// Once the mount answers: tells the service manager (`READY=1`) and, with `reattach`,
/// repairs the containers a dead predecessor left with dead binds (`cgprocfs reattach`, a
/// single-threaded helper: it enters their mount namespaces).
fn start_ready(cfg: &KeeperConfig, reattach: bool) {
    let (binary, mnt) = (cfg.binary.clone(), cfg.mountpoint.clone());
    let spawned = std::thread::Builder::new().name("ready".into()).spawn(move || {
        let t = Instant::now();
        while std::fs::metadata(mnt.join("proc/meminfo")).is_err() {
            if t.elapsed() > Duration::from_secs(30) {
                tracing::warn!("the mount does not answer");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        systemd::notify_ready();
        if !reattach {
            return;
        }
        match Command::new(&binary).arg("reattach").arg(&mnt).stdin(std::process::Stdio::null()).output() {
            Ok(o) => {
                for line in String::from_utf8_lossy(&o.stdout).lines().filter(|l| *l != "nothing to reattach") {
                    tracing::info!("{line}");
                }
                if !o.status.success() {
                    tracing::warn!(status = %o.status, stderr = %String::from_utf8_lossy(&o.stderr).trim(), "reattach failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot run reattach"),
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no readiness thread");
    }
}

/// The keeper's control socket: a thread accepts handover requests and hands a valid one to
/// the keeper's signal loop (SIGUSR1), which does the handover.
struct Control {
    pending: parking_lot::Mutex<Option<(OwnedFd, handover::Request)>>,
    listener: OwnedFd,
}

/// Binds the control socket beside the pid file (or uses the previous keeper's listener,
/// still bound there during a handover). Without one the keeper serves on, only not handing
/// over.
fn start_control(cfg: &KeeperConfig, adopted: Option<RawFd>) -> Option<Arc<Control>> {
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

/// Offers the connection (FUSE fds, INIT parameters, seccomp listener and notification fds,
/// the control listener) on `conn`; true once the other keeper took it.
fn give(
    fds: &[OwnedFd],
    cache: &[OwnedFd],
    params: InitParams,
    agent: Option<&Agent>,
    control: Option<&Control>,
    conn: &OwnedFd,
) -> io::Result<bool> {
    let offer_with = |sec: Option<(RawFd, &[RawFd])>| {
        let mut all = raw_fds(fds);
        if let Some((l, n)) = sec {
            all.push(l);
            all.extend_from_slice(n);
        }
        if let Some(c) = control {
            all.push(c.listener.as_raw_fd());
        }
        all.extend(raw_fds(cache));
        let offer = handover::Offer {
            handover: handover::VERSION,
            binary: env!("CARGO_PKG_VERSION").to_string(),
            minor: params.minor,
            flags: params.flags,
            fuse: fds.len(),
            listener: sec.is_some(),
            notify: sec.map_or(0, |(_, n)| n.len()),
            control: control.is_some(),
            cache: cache.len(),
        };
        handover::give(conn, &offer, &all)
    };
    match agent {
        // Under the agent's lock: no notification fd is closed (container exited) meanwhile.
        Some(a) => a.with_fds(|l, n| offer_with(Some((l, n)))),
        None => offer_with(None),
    }
}

/// Raises the soft open-file limit to the hard one: the keeper and its worker hold one fd per
/// container with the seccomp profile, and the default soft limit (1024) would end that at
/// about a thousand containers. Workers inherit it.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "open-file limit raised"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// Signals a child and reaps it, escalating to SIGKILL after 5 s.
fn stop_child(mut c: Child, sig: libc::c_int) {
    // SAFETY: signal to our own child, not yet reaped.
    unsafe { libc::kill(c.id() as i32, sig) };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// The fd numbers of `fds`, for a command line.
fn fd_list(fds: &[RawFd]) -> String {
    fds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(",")
}

fn raw_fds(fds: &[OwnedFd]) -> Vec<RawFd> {
    fds.iter().map(|f| f.as_raw_fd()).collect()
}

/// A command that keeps `raw` open across exec.
fn command_with_fds(cfg: &KeeperConfig, raw: &[RawFd]) -> Command {
    let mut cmd = Command::new(&cfg.binary);
    let raw = raw.to_vec();
    // SAFETY: only fcntl, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &raw {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

/// The seccomp listener: adopted from the previous keeper, or bound now. A socket another
/// daemon listens on only disables the feature for this one.
fn start_agent(cfg: &KeeperConfig, adopted: Option<(RawFd, Vec<RawFd>)>) -> io::Result<Option<Arc<Agent>>> {
    let Some(path) = &cfg.seccomp_socket else { return Ok(None) };
    let agent = match adopted {
        Some((l, n)) => Agent::adopt(path, l, &n)?,
        None => match retry_busy(|| Agent::bind(path)) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "seccomp listener disabled");
                return Ok(None);
            }
        },
    };
    let agent = Arc::new(agent);
    agent.start()?;
    tracing::info!(socket = %path.display(), "seccomp listener ready");
    Ok(Some(agent))
}

fn spawn_worker(cfg: &KeeperConfig, fds: &[OwnedFd], cache: &[OwnedFd], agent: Option<&Agent>) -> io::Result<Child> {
    let fuse = raw_fds(fds);
    let cache = raw_fds(cache);
    let spawn = |sec: Option<(RawFd, &[RawFd])>| {
        let mut inherit = fuse.clone();
        inherit.extend_from_slice(&cache);
        if let Some((chan, notify)) = sec {
            inherit.push(chan);
            inherit.extend_from_slice(notify);
        }
        let mut cmd = command_with_fds(cfg, &inherit);
        cmd.arg("worker").arg("--fds").arg(fd_list(&fuse));
        if !cache.is_empty() {
            cmd.arg("--cache-fds").arg(fd_list(&cache));
        }
        cmd.arg("--state").arg(files::companion(&cfg.pidfile, "state"));
        if let Some((chan, notify)) = sec {
            cmd.arg("--seccomp-chan").arg(chan.to_string());
            if !notify.is_empty() {
                cmd.arg("--seccomp-fds").arg(fd_list(notify));
            }
        }
        cmd.args(&cfg.view_args);
        cmd.spawn()
    };
    let child = match agent {
        Some(a) => a.with_worker(|chan, notify| spawn(Some((chan, notify))))?,
        None => spawn(None)?,
    };
    tracing::info!(pid = child.id(), "worker started");
    Ok(child)
}

/// Leaves a process answering "run the real call" to the notifications of containers still
/// running, so that their sysinfo returns the host's values rather than `ENOSYS`.
fn start_drain(cfg: &KeeperConfig, left: Vec<OwnedFd>) {
    if left.is_empty() {
        return;
    }
    let raw = raw_fds(&left);
    let mut cmd = command_with_fds(cfg, &raw);
    cmd.arg("seccomp-drain").arg("--fds").arg(fd_list(&raw));
    cmd.stdin(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe; the drain must outlive this process group.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(c) => {
            tracing::info!(pid = c.id(), containers = left.len(), "seccomp: drain started");
            let _ = files::write_atomic(&files::companion(&cfg.pidfile, "drain"), format!("{}\n", c.id()).as_bytes());
        }
        Err(e) => tracing::error!(error = %e, "seccomp: cannot start the drain; those containers' sysinfo fails"),
    }
}

/// Ends the seccomp drain a previous keeper of this pid file left, if it still runs.
fn stop_drain(cfg: &KeeperConfig) {
    let file = files::companion(&cfg.pidfile, "drain");
    let Some(pid) = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse::<i32>().ok()) else { return };
    let _ = std::fs::remove_file(&file);
    // Only that process: the pid may have been reused since.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if pid > 1 && cmdline.split(|b| *b == 0).any(|a| a == b"seccomp-drain") {
        // SAFETY: a signal to the drain a keeper of this pid file started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        tracing::info!(pid, "stopped the previous keeper's seccomp drain");
    }
}

/// Replaces this process with the binary on disk, handing over the connection. Returns only
/// on failure.
fn exec_upgrade(
    cfg: &KeeperConfig,
    fds: &[OwnedFd],
    cache: &[OwnedFd],
    params: InitParams,
    seccomp: Option<(RawFd, &[RawFd])>,
    control: Option<RawFd>,
) -> io::Error {
    let mut inherit = raw_fds(fds);
    if let Some((l, n)) = seccomp {
        inherit.push(l);
        inherit.extend_from_slice(n);
    }
    inherit.extend(control);
    inherit.extend(raw_fds(cache));
    let mut cmd = command_with_fds(cfg, &inherit);
    cmd.arg("serve")
        .arg(&cfg.mountpoint)
        .arg("--threads")
        .arg(fds.len().to_string())
        .arg("--pidfile")
        .arg(&cfg.pidfile)
        .args(&cfg.view_args)
        .arg("--adopt")
        .arg(fd_list(&raw_fds(fds)))
        .arg("--init-minor")
        .arg(params.minor.to_string())
        .arg("--init-flags")
        .arg(params.flags.to_string());
    if cfg.linger {
        cmd.arg("--linger");
    }
    match &cfg.cache {
        Some(_) if !cache.is_empty() => {
            cmd.arg("--adopt-cache").arg(fd_list(&raw_fds(cache)));
        }
        Some(_) => {}
        None => {
            cmd.arg("--no-cache");
        }
    }
    if let Some(c) = control {
        cmd.arg("--control-adopt").arg(c.to_string());
    }
    match (&cfg.seccomp_socket, seccomp) {
        (Some(path), Some((l, n))) => {
            let mut all = vec![l];
            all.extend_from_slice(n);
            cmd.arg("--seccomp-socket").arg(path).arg("--seccomp-adopt").arg(fd_list(&all));
        }
        (Some(path), None) => {
            cmd.arg("--seccomp-socket").arg(path);
        }
        (None, _) => {
            cmd.arg("--no-seccomp");
        }
    }
    // The signals stay blocked across exec, as the new keeper expects.
    cmd.exec()
}

/// What a worker serves and how, from its command line.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    /// The shared tree's `/dev/fuse` fds.
    pub fds: Vec<RawFd>,
    /// The cached tree's fds (none: no cached tree).
    pub cache: Vec<RawFd>,
    /// How views are computed.
    pub opts: Options,
    /// File keeping per-container counters across worker restarts.
    pub state_file: Option<PathBuf>,
    /// How long a thread polls for the next request before sleeping.
    pub spin: Duration,
    /// Also serve the benchmark's constant file.
    pub floor: bool,
    /// Handles one container may hold open.
    pub handles: usize,
    /// The cached tree's freshness bound.
    pub fresh: Duration,
    /// Seccomp notifications to answer.
    pub sec: Option<WorkerSeccomp>,
}

/// Runs a worker on inherited fds until SIGTERM/SIGINT or the keeper's death.
pub fn worker(args: WorkerArgs) -> io::Result<()> {
    let WorkerArgs { fds, cache, opts, state_file, spin, floor, handles, fresh, sec } = args;
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
    let first = owned.first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no fds"))?;
    let snapshots = state_file.as_ref().map(|s| s.with_extension("snapshots"));
    let svc = Arc::new(Service::with_state(Root::new("/"), opts, state_file).map_err(io::Error::other)?);
    tracing::info!(layout = ?svc.hierarchies().layout(), "cgroup hierarchies found");
    svc.start_sampler()?;
    if let Some(sec) = sec {
        cloexec(sec.chan);
        // SAFETY: inherited for this process to own.
        let chan = unsafe { OwnedFd::from_raw_fd(sec.chan) };
        let policy = seccomp::Policy::Serve { svc: svc.clone(), affinity: sec.affinity };
        seccomp::spawn(policy, seccomp::adopt_fds(&sec.fds), Some(chan))?;
    }
    let fs = Arc::new(ProcFs::with_floor(svc.clone(), floor).with_handles_per_container(handles));
    spawn_workers(&owned, fs, spin)?;
    if !cache.is_empty() {
        spawn_workers(&cache, Arc::new(crate::fs::cached::CachedFs::new(svc.clone(), fresh, snapshots)), spin)?;
    }
    // Only now, with readers in place: requests a dead predecessor read are queued again.
    for fd in std::iter::once(first).chain(cache.first()) {
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
