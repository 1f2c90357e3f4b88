//! The keeper: owns the FUSE connection (and the cached tree's, the seccomp listener, the
//! control socket) for its whole life, starts and restarts the worker, upgrades by exec and
//! hands the connection over to another keeper.

use super::args::{AdoptLine, ReportLine, ServeLine, WorkerLine};
use super::control::{now_secs, retry_busy, start_control, Control, Facts};
use super::{handover, own_fuse_fds, systemd, Adopted, KeeperConfig};
use crate::files;
use crate::fuse::session::{self, clone_fd, InitParams};
use crate::seccomp::agent::Agent;
use crate::sys::{signal_set, wait_signal};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The connections beside the main one, each empty when not served: the cached tree's
/// (fuse/cached.rs) and the trigger connection (fuse/psi.rs).
struct Companions {
    cache: Vec<OwnedFd>,
    psi: Vec<OwnedFd>,
}

impl Companions {
    /// Every fd, cached tree's first: the order of an offer and of an upgrade's inheritance.
    fn raw(&self) -> Vec<RawFd> {
        raw_fds(&self.cache).into_iter().chain(raw_fds(&self.psi)).collect()
    }
}

/// Mounts a companion connection at `dir` (the cached tree, or the trigger connection on a
/// writable superblock) with `threads` fds. Both are optional: without them hooks bind the
/// shared files, so a failure is logged and serving goes on.
fn mount_companion(dir: Option<&Path>, source: &str, writable: bool, threads: usize) -> Vec<OwnedFd> {
    let Some(dir) = dir else { return Vec::new() };
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
        let (master, _) = if writable { session::mount_writable(dir, source)? } else { session::mount(dir, source)? };
        let mut fds = vec![master];
        for _ in 1..threads.max(1) {
            fds.push(clone_fd(&fds[0])?);
        }
        Ok(fds)
    })();
    match mounted {
        Ok(fds) => {
            tracing::info!(mountpoint = %dir.display(), source, "companion tree mounted");
            fds
        }
        Err(e) => {
            tracing::warn!(mountpoint = %dir.display(), source, error = %e, "companion tree not served: hooks bind the shared files");
            Vec::new()
        }
    }
}

/// Runs the keeper until SIGTERM/SIGINT or until another keeper took the connection over.
/// `adopted` is set when the connection already exists: this process was exec-ed by an
/// upgrade, or took it over from another keeper, which `taken` then confirms to once a worker
/// serves.
pub fn keeper(cfg: KeeperConfig, adopted: Option<Adopted>, taken: Option<handover::Taken>) -> io::Result<()> {
    Keeper::start(cfg, adopted, taken)?.run()
}

/// The connection this keeper serves: the adopted one (an upgrade, a handover, the fd store),
/// or a new mount with one fd per worker thread; and its companions, mounted when missing.
fn connection(cfg: &KeeperConfig, adopted: Option<&Adopted>) -> io::Result<(Vec<OwnedFd>, InitParams, Companions)> {
    let (fds, params, cache, psi) = match adopted {
        Some(a) => {
            let fds = own_fuse_fds(&a.fds)?;
            let cache = own_fuse_fds(&a.cache)?;
            let psi = own_fuse_fds(&a.psi)?;
            tracing::info!(fds = fds.len(), cache = cache.len(), psi = psi.len(), "adopted the live FUSE connection");
            (fds, a.params, cache, psi)
        }
        None => {
            let (master, params) = session::mount(&cfg.mountpoint, &crate::reattach::source_name(&cfg.mountpoint))?;
            let mut fds = vec![master];
            for _ in 1..cfg.threads.max(1) {
                fds.push(clone_fd(&fds[0])?);
            }
            (fds, params, Vec::new(), Vec::new())
        }
    };
    // A previous keeper without a companion (or one whose mount failed): mount it now. Two
    // threads serve the trigger connection: triggers are written and polled rarely, but one
    // slow request (a trigger's cgroup file) must not queue every pressure read behind it.
    let cache = if cache.is_empty() {
        mount_companion(cfg.cache.as_deref(), &crate::fuse::cached::source_name(&cfg.mountpoint), false, cfg.threads)
    } else {
        cache
    };
    let psi = if psi.is_empty() {
        mount_companion(cfg.psi.as_deref(), &crate::fuse::psi::source_name(&cfg.mountpoint), true, 2)
    } else {
        psi
    };
    Ok((fds, params, Companions { cache, psi }))
}

/// What the keeper's loop does after an event.
enum Next {
    Serve,
    Exit,
}

/// A keeper serving its connection: what it holds, and its worker's state.
struct Keeper {
    cfg: KeeperConfig,
    /// The signals the loop waits for (blocked in this thread).
    signals: libc::sigset_t,
    fds: Vec<OwnedFd>,
    params: InitParams,
    comp: Companions,
    agent: Option<Arc<Agent>>,
    facts: Arc<Facts>,
    control: Option<Arc<Control>>,
    handovers: u64,
    worker: Option<Child>,
    /// When the running worker started, and how long to wait before the next one.
    started: Instant,
    backoff: Duration,
    respawn_at: Option<Instant>,
    /// The device of this connection's mount, to notice an `umount -l` under the keeper.
    source: String,
    my_dev: Option<String>,
    detached: bool,
    next_check: Instant,
}

impl Keeper {
    /// Takes or mounts the connection and its companions, writes the pid file, starts the
    /// seccomp agent, the control socket and the first worker.
    fn start(cfg: KeeperConfig, adopted: Option<Adopted>, taken: Option<handover::Taken>) -> io::Result<Keeper> {
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
        let handovers = adopted.as_ref().map_or(0, |a| a.handovers + 1);
        let adopted_seccomp = adopted.as_ref().and_then(|a| a.seccomp.clone());
        let adopted_seccomp_held = adopted_seccomp.is_some();
        let adopted_control = adopted.as_ref().and_then(|a| a.control);
        let (fds, params, comp) = connection(&cfg, adopted.as_ref())?;
        if let Err(e) = files::write_atomic(&cfg.pidfile, format!("{}\n", std::process::id()).as_bytes()) {
            tracing::warn!(pidfile = %cfg.pidfile.display(), error = %e, "cannot write the pid file");
        }
        tracing::info!(mountpoint = %cfg.mountpoint.display(), threads = fds.len(), minor = params.minor, "serving");
        let agent = start_agent(&cfg, adopted_seccomp)?;
        let facts = Arc::new(Facts {
            started: now_secs(),
            handovers,
            spawned: AtomicU64::new(0),
            worker: AtomicU32::new(0),
            cache: !comp.cache.is_empty(),
            psi: !comp.psi.is_empty(),
        });
        let control = start_control(&cfg, adopted_control, Arc::clone(&facts));
        if let Some(a) = &agent {
            a.on_new(systemd::store_notify);
        }
        if systemd::managed() {
            let sec = agent.as_ref().map(|a| a.with_fds(|l, n| (l, n.to_vec())));
            systemd::store_connection(
                &raw_fds(&fds),
                &raw_fds(&comp.cache),
                &raw_fds(&comp.psi),
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

        let worker = Some(spawn_worker(&cfg, &facts, &fds, &comp, agent.as_deref())?);
        start_ready(&cfg, fresh && cfg.reattach);
        if let Some(t) = taken {
            // The old keeper exits once told; until then it could still resume.
            match t.confirm() {
                Ok(()) => tracing::info!("took the connection over from the previous keeper"),
                Err(e) => tracing::warn!(error = %e, "cannot confirm the handover (the previous keeper is gone?)"),
            }
        }
        let source = crate::reattach::source_name(&cfg.mountpoint);
        let my_dev = mount_dev(&cfg.mountpoint, &source);
        Ok(Keeper {
            cfg,
            signals: set,
            fds,
            params,
            comp,
            agent,
            facts,
            control,
            handovers,
            worker,
            started: Instant::now(),
            backoff: Duration::ZERO,
            respawn_at: None,
            source,
            my_dev,
            detached: false,
            next_check: Instant::now() + CHECK_EVERY,
        })
    }

    /// Waits for events until one ends the keeper.
    fn run(mut self) -> io::Result<()> {
        loop {
            let until_check = self.next_check.saturating_duration_since(Instant::now());
            let timeout =
                self.respawn_at.map_or(until_check, |t| t.saturating_duration_since(Instant::now()).min(until_check));
            let next = match wait_signal(&self.signals, Some(timeout)) {
                Some(libc::SIGCHLD) => self.child_exited(),
                Some(libc::SIGTERM) | Some(libc::SIGINT) => return self.stop(),
                Some(libc::SIGUSR1) => self.hand_over(),
                Some(libc::SIGHUP) => self.upgrade(),
                _ => Next::Serve,
            };
            if let Next::Exit = next {
                return Ok(());
            }
            if Instant::now() >= self.next_check {
                if let Next::Exit = self.tick() {
                    return Ok(());
                }
            }
            self.respawn();
        }
    }

    fn agent(&self) -> Option<&Agent> {
        self.agent.as_deref()
    }

    /// SIGCHLD: a dead worker is restarted, more slowly (up to 1 s) when it keeps dying at once.
    fn child_exited(&mut self) -> Next {
        let Some(w) = self.worker.as_mut() else { return Next::Serve };
        if let Ok(Some(status)) = w.try_wait() {
            self.worker = None;
            self.facts.worker.store(0, Ordering::Relaxed);
            self.backoff = if self.started.elapsed() < Duration::from_secs(1) {
                (self.backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
            } else {
                Duration::ZERO
            };
            tracing::error!(%status, restart_in = ?self.backoff, "worker died; the connection is kept");
            self.respawn_at = Some(Instant::now() + self.backoff);
        }
        Next::Serve
    }

    /// SIGTERM/SIGINT. Under a service manager the connection is in its fd store: left
    /// mounted, it is the next keeper's after a restart (a plain stop releases the store, and
    /// the next start clears the stale mount). Otherwise the mounts go.
    fn stop(mut self) -> io::Result<()> {
        let keep = systemd::managed();
        if keep {
            systemd::notify_stopping();
        }
        let unmount = !(self.detached || keep);
        self.shutdown(unmount)?;
        tracing::info!("stopped");
        Ok(())
    }

    /// The one way out but a handover: unmount (when `unmount`) while the worker still answers,
    /// stop it, give the containers' notification fds to a drain, clear what only this
    /// connection used, and remove the pid file.
    fn shutdown(&mut self, unmount: bool) -> io::Result<()> {
        let r = if unmount { session::unmount(&self.cfg.mountpoint) } else { Ok(()) };
        for (dir, held) in [(&self.cfg.cache, &self.comp.cache), (&self.cfg.psi, &self.comp.psi)] {
            if let Some(c) = dir.as_ref().filter(|_| unmount && !held.is_empty()) {
                // Containers' binds of it keep the connection until they go.
                let _ = session::unmount(c);
            }
        }
        self.stop_worker();
        if let Some(a) = self.agent() {
            start_drain(&self.cfg, a.close());
        }
        if unmount && r.is_ok() {
            tidy(&self.cfg);
        }
        remove_own_pidfile(&self.cfg.pidfile);
        r
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            stop_child(w, libc::SIGTERM);
        }
    }

    /// SIGUSR1: another keeper asked for the connection on the control socket.
    fn hand_over(&mut self) -> Next {
        let Some((conn, req)) = self.control.as_ref().and_then(|c| c.pending.lock().take()) else {
            return Next::Serve;
        };
        tracing::info!(binary = %handover::shown(&req.binary), "handing the connection over to another keeper");
        if let Some(a) = self.agent() {
            a.pause(true);
        }
        self.stop_worker();
        match give(&self.fds, &self.comp, self.params, self.agent(), self.control.as_deref(), &conn, self.handovers) {
            Ok(true) => {
                // Nothing is unmounted and no drain started: the new keeper serves the mount
                // and holds the containers' notification fds; the pid file is its.
                if self.cfg.linger {
                    tracing::info!("connection handed over; waiting to be stopped");
                    let stop = signal_set(&[libc::SIGTERM, libc::SIGINT]);
                    let _ = wait_signal(&stop, None);
                }
                tracing::info!("connection handed over; exiting");
                return Next::Exit;
            }
            Ok(false) => tracing::warn!("the other keeper did not take the connection; serving on"),
            Err(e) => tracing::warn!(error = %e, "handover failed; serving on"),
        }
        if let Some(a) = self.agent() {
            a.pause(false);
        }
        self.respawn_at = Some(Instant::now());
        Next::Serve
    }

    /// SIGHUP: exec the binary on disk with the connection; returns only if that failed.
    fn upgrade(&mut self) -> Next {
        tracing::info!(binary = %self.cfg.binary.display(), "upgrading");
        systemd::notify_reloading();
        // The old worker goes first; whatever FUSE request it had read is resent to the next
        // one (SIGTERM: it finishes a seccomp answer it is writing, which the kernel would not
        // resend).
        self.stop_worker();
        let ctl = self.control.as_ref().map(|c| c.listener.as_raw_fd());
        let (cfg, fds, comp, params, handovers) = (&self.cfg, &self.fds, &self.comp, self.params, self.handovers);
        let err = match self.agent() {
            Some(a) => a.with_fds(|l, n| exec_upgrade(cfg, fds, comp, params, Some((l, n)), ctl, handovers)),
            None => exec_upgrade(cfg, fds, comp, params, None, ctl, handovers),
        };
        tracing::error!(error = %err, "upgrade failed; continuing with this binary");
        self.respawn_at = Some(Instant::now());
        Next::Serve
    }

    /// Every [`CHECK_EVERY`]: is the connection still used, is the mount still attached?
    fn tick(&mut self) -> Next {
        self.next_check = Instant::now() + CHECK_EVERY;
        if connection_ended(&self.fds[0]) {
            // No mount uses the connection any more (its last bind went): nothing to serve.
            tracing::info!("the connection ended: no mount uses it any more; exiting");
            let _ = self.shutdown(false);
            return Next::Exit;
        }
        if !self.detached && self.my_dev.is_some() && mount_dev(&self.cfg.mountpoint, &self.source) != self.my_dev {
            // `umount -l` under us: containers' binds may still use the connection, so it is
            // served until it ends, but the sockets go to whoever serves the mount point next.
            self.detached = true;
            tracing::warn!(mountpoint = %self.cfg.mountpoint.display(), "the mount was detached; serving the binds that remain, releasing the seccomp and control sockets");
            if let Some(a) = self.agent() {
                a.release_listener();
            }
            if self.control.is_some() {
                let _ = std::fs::remove_file(handover::control_path(&self.cfg.pidfile));
            }
            remove_own_pidfile(&self.cfg.pidfile);
        }
        Next::Serve
    }

    /// Starts a worker when one is due.
    fn respawn(&mut self) {
        if !(self.respawn_at.is_some_and(|t| t <= Instant::now()) && self.worker.is_none()) {
            return;
        }
        self.respawn_at = None;
        match spawn_worker(&self.cfg, &self.facts, &self.fds, &self.comp, self.agent()) {
            Ok(w) => {
                self.worker = Some(w);
                self.started = Instant::now();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a worker; retrying");
                self.respawn_at = Some(Instant::now() + Duration::from_secs(1));
            }
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

/// After a clean stop that unmounted everything: removes what served the connection and means
/// nothing without it (the control socket, the worker's counters and metrics, the pollers list,
/// the cached tree's journal, the companion mount points, empty once unmounted). The
/// containers' CPU accounts stay: the next daemon resumes them. Under a service manager, or
/// detached, nothing is removed: the connection lives on.
fn tidy(cfg: &KeeperConfig) {
    for what in ["ctl", "stats", "prom", "pollers"] {
        let file = files::companion(&cfg.pidfile, what);
        // With the temporary files of workers killed mid-write (`<file>.tmp<pid>`): only this
        // keeper's workers write these, and they are stopped.
        if let (Some(dir), Some(name)) = (file.parent(), file.file_name().and_then(|n| n.to_str())) {
            let tmp = format!("{name}.tmp");
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let n = e.file_name();
                let rest = n.to_str().and_then(|n| n.strip_prefix(&tmp));
                if rest.is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit())) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_file(file);
    }
    let _ = std::fs::remove_dir_all(files::companion(&cfg.pidfile, "snapshots"));
    for dir in [&cfg.cache, &cfg.psi].into_iter().flatten() {
        // Only an empty directory goes (a mount still there, or anything else, stays).
        let _ = std::fs::remove_dir(dir);
    }
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

/// Offers the connection (FUSE fds, INIT parameters, seccomp listener and notification fds,
/// the control listener) on `conn`; true once the other keeper took it.
fn give(
    fds: &[OwnedFd],
    comp: &Companions,
    params: InitParams,
    agent: Option<&Agent>,
    control: Option<&Control>,
    conn: &OwnedFd,
    handovers: u64,
) -> Result<bool, handover::HandoverError> {
    let offer_with = |sec: Option<(RawFd, &[RawFd])>| {
        let mut all = raw_fds(fds);
        if let Some((l, n)) = sec {
            all.push(l);
            all.extend_from_slice(n);
        }
        if let Some(c) = control {
            all.push(c.listener.as_raw_fd());
        }
        all.extend(comp.raw());
        let offer = handover::Offer {
            handover: handover::VERSION,
            binary: env!("CARGO_PKG_VERSION").to_string(),
            minor: params.minor,
            flags: params.flags,
            fuse: fds.len(),
            listener: sec.is_some(),
            notify: sec.map_or(0, |(_, n)| n.len()),
            control: control.is_some(),
            cache: comp.cache.len(),
            psi: comp.psi.len(),
            handovers,
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

fn spawn_worker(
    cfg: &KeeperConfig,
    facts: &Facts,
    fds: &[OwnedFd],
    comp: &Companions,
    agent: Option<&Agent>,
) -> io::Result<Child> {
    let report = ReportLine {
        stats: Some(files::companion(&cfg.pidfile, "stats")),
        metrics: Some(files::companion(&cfg.pidfile, "prom")),
        restarts: facts.spawned.load(Ordering::Relaxed),
        handovers: facts.handovers,
        keeper_started: facts.started,
    };
    let fuse = raw_fds(fds);
    let (cache, psi) = (raw_fds(&comp.cache), raw_fds(&comp.psi));
    let spawn = |sec: Option<(RawFd, &[RawFd])>| {
        let mut inherit = fuse.clone();
        inherit.extend(cache.iter().chain(&psi));
        if let Some((chan, notify)) = sec {
            inherit.push(chan);
            inherit.extend_from_slice(notify);
        }
        let line = WorkerLine {
            fds: fuse.clone(),
            state: Some(files::companion(&cfg.pidfile, "state")),
            seccomp_chan: sec.map(|(chan, _)| chan),
            seccomp_fds: sec.map_or(Vec::new(), |(_, notify)| notify.to_vec()),
            cache_fds: cache.clone(),
            psi_fds: psi.clone(),
            opts: cfg.opts,
            report: report.clone(),
        };
        let mut cmd = command_with_fds(cfg, &inherit);
        cmd.arg("worker").args(line.to_args());
        cmd.spawn()
    };
    let child = match agent {
        Some(a) => a.with_worker(|chan, notify| spawn(Some((chan, notify))))?,
        None => spawn(None)?,
    };
    tracing::info!(pid = child.id(), "worker started");
    facts.spawned.fetch_add(1, Ordering::Relaxed);
    facts.worker.store(child.id(), Ordering::Relaxed);
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
    cmd.arg("seccomp-drain").arg("--fds").arg(raw.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(","));
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
    comp: &Companions,
    params: InitParams,
    seccomp: Option<(RawFd, &[RawFd])>,
    control: Option<RawFd>,
    handovers: u64,
) -> io::Error {
    let mut inherit = raw_fds(fds);
    if let Some((l, n)) = seccomp {
        inherit.push(l);
        inherit.extend_from_slice(n);
    }
    inherit.extend(control);
    inherit.extend(comp.raw());
    let (seccomp_socket, seccomp_adopt) = match (&cfg.seccomp_socket, seccomp) {
        (Some(path), Some((l, n))) => (Some(path.clone()), std::iter::once(l).chain(n.iter().copied()).collect()),
        (path, _) => (path.clone(), Vec::new()),
    };
    let line = ServeLine {
        mountpoint: cfg.mountpoint.clone(),
        threads: fds.len(),
        pidfile: Some(cfg.pidfile.clone()),
        host_cgroupns: false,
        no_seccomp: seccomp_socket.is_none(),
        seccomp_socket,
        // An adopted connection has nothing to repair.
        no_reattach: false,
        linger: cfg.linger,
        no_cache: cfg.cache.is_none(),
        no_psi: cfg.psi.is_none(),
        opts: cfg.opts,
        adopt: AdoptLine {
            adopt: raw_fds(fds),
            init_minor: Some(params.minor),
            init_flags: Some(params.flags),
            seccomp_adopt,
            control_adopt: control,
            adopt_cache: raw_fds(&comp.cache),
            adopt_psi: raw_fds(&comp.psi),
            handovers,
        },
    };
    let mut cmd = command_with_fds(cfg, &inherit);
    cmd.arg("serve").args(line.to_args());
    // The signals stay blocked across exec, as the new keeper expects.
    cmd.exec()
}
