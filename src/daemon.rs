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
//! along, and starts a new worker from the new binary.

use crate::fs::session::{self, clone_fd, notify_resend, spawn_workers, InitParams};
use crate::fs::ProcFs;
use crate::service::{Options, Service};
use crate::Root;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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
    /// beside it (`.state`).
    pub pidfile: PathBuf,
}

/// A live connection handed over by a previous keeper through `exec`.
#[derive(Debug, Clone)]
pub struct Adopted {
    /// The inherited `/dev/fuse` fds; the first is the session fd.
    pub fds: Vec<RawFd>,
    /// The parameters negotiated at the original FUSE_INIT.
    pub params: InitParams,
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

/// Waits for one signal of `set` (blocked by the caller), at most `timeout`.
fn wait_signal(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<libc::c_int> {
    let ts = timeout.map(|t| libc::timespec { tv_sec: t.as_secs() as _, tv_nsec: t.subsec_nanos() as _ });
    // SAFETY: set and ts are valid for the call; info may be null.
    let r = unsafe {
        libc::sigtimedwait(set, std::ptr::null_mut(), ts.as_ref().map_or(std::ptr::null(), |t| t as *const _))
    };
    (r > 0).then_some(r)
}

/// Runs the keeper until SIGTERM/SIGINT. `adopted` is set when this process was exec-ed by
/// an upgrade and the connection already exists.
pub fn keeper(cfg: KeeperConfig, adopted: Option<Adopted>) -> io::Result<()> {
    let set = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
    // SAFETY: blocking signals in this (single) thread so sigtimedwait receives them.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let (fds, params) = match adopted {
        Some(a) => {
            let mut fds = Vec::new();
            for fd in &a.fds {
                check_fuse_fd(*fd)?;
                // SAFETY: the fd was inherited across exec for us to own.
                fds.push(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
            tracing::info!(fds = fds.len(), "adopted the live FUSE connection after an upgrade");
            (fds, a.params)
        }
        None => {
            let (master, params) = session::mount(&cfg.mountpoint, "cgprocfs")?;
            let mut fds = vec![master];
            for _ in 1..cfg.threads.max(1) {
                fds.push(clone_fd(&fds[0])?);
            }
            (fds, params)
        }
    };
    if let Some(dir) = cfg.pidfile.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&cfg.pidfile, format!("{}\n", std::process::id())) {
        tracing::warn!(pidfile = %cfg.pidfile.display(), error = %e, "cannot write the pid file");
    }
    tracing::info!(mountpoint = %cfg.mountpoint.display(), threads = fds.len(), minor = params.minor, "serving");

    let mut worker = Some(spawn_worker(&cfg, &fds)?);
    let mut started = Instant::now();
    let mut backoff = Duration::ZERO;
    let mut respawn_at: Option<Instant> = None;
    loop {
        let timeout = respawn_at.map(|t| t.saturating_duration_since(Instant::now()));
        match wait_signal(&set, timeout) {
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
                // Unmount while the worker still answers, then stop it.
                let r = session::unmount(&cfg.mountpoint);
                if let Some(w) = worker.take() {
                    stop_child(w, libc::SIGTERM);
                }
                let _ = std::fs::remove_file(&cfg.pidfile);
                r?;
                tracing::info!("stopped");
                return Ok(());
            }
            Some(libc::SIGHUP) => {
                tracing::info!(binary = %cfg.binary.display(), "upgrading");
                // The old worker goes first; whatever it had read is resent to the next one.
                if let Some(w) = worker.take() {
                    stop_child(w, libc::SIGKILL);
                }
                let err = exec_upgrade(&cfg, &fds, params);
                tracing::error!(error = %err, "upgrade failed; continuing with this binary");
                respawn_at = Some(Instant::now());
            }
            _ => {}
        }
        if respawn_at.is_some_and(|t| t <= Instant::now()) && worker.is_none() {
            respawn_at = None;
            match spawn_worker(&cfg, &fds) {
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

fn fd_list(fds: &[OwnedFd]) -> String {
    fds.iter().map(|f| f.as_raw_fd().to_string()).collect::<Vec<_>>().join(",")
}

/// A command that keeps `fds` open across exec.
fn command_with_fds(cfg: &KeeperConfig, fds: &[OwnedFd]) -> Command {
    let mut cmd = Command::new(&cfg.binary);
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
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

fn spawn_worker(cfg: &KeeperConfig, fds: &[OwnedFd]) -> io::Result<Child> {
    let mut cmd = command_with_fds(cfg, fds);
    cmd.arg("worker").arg("--fds").arg(fd_list(fds)).arg("--state").arg(cfg.pidfile.with_extension("state"));
    cmd.args(&cfg.view_args);
    let child = cmd.spawn()?;
    tracing::info!(pid = child.id(), "worker started");
    Ok(child)
}

/// Replaces this process with the binary on disk, handing over the connection. Returns only
/// on failure.
fn exec_upgrade(cfg: &KeeperConfig, fds: &[OwnedFd], params: InitParams) -> io::Error {
    let mut cmd = command_with_fds(cfg, fds);
    cmd.arg("serve")
        .arg(&cfg.mountpoint)
        .arg("--threads")
        .arg(fds.len().to_string())
        .arg("--pidfile")
        .arg(&cfg.pidfile)
        .args(&cfg.view_args)
        .arg("--adopt")
        .arg(fd_list(fds))
        .arg("--init-minor")
        .arg(params.minor.to_string())
        .arg("--init-flags")
        .arg(params.flags.to_string());
    // The signals stay blocked across exec, as the new keeper expects.
    cmd.exec()
}

/// Runs a worker on inherited fds until SIGTERM/SIGINT or the keeper's death.
pub fn worker(
    fds: &[RawFd],
    opts: Options,
    state_file: Option<PathBuf>,
    spin: Duration,
    floor: bool,
) -> io::Result<()> {
    // Die with the keeper: the pair is one service from the outside.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let set = signal_set(&[libc::SIGTERM, libc::SIGINT]);
    // SAFETY: block before any thread starts so only the wait below takes them.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let mut owned = Vec::new();
    for &fd in fds {
        check_fuse_fd(fd)?;
        // SAFETY: inherited for this process to own.
        owned.push(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    let first = owned.first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no fds"))?;
    let svc = Arc::new(Service::with_state(Root::new("/"), opts, state_file).map_err(io::Error::other)?);
    tracing::info!(layout = ?svc.hierarchies().layout(), "cgroup hierarchies found");
    svc.start_sampler()?;
    let fs = Arc::new(ProcFs::with_floor(svc.clone(), floor));
    spawn_workers(&owned, fs, spin)?;
    // Only now, with readers in place: requests a dead predecessor read are queued again.
    if let Err(e) = notify_resend(first) {
        tracing::warn!(error = %e, "kernel cannot resend requests (needs Linux 6.9); a predecessor's in-flight requests are lost");
    }
    let sig = wait_signal(&set, None);
    tracing::info!(signal = ?sig, fallbacks = svc.fallbacks.count(), "worker stopping");
    // Exit without unwinding the reader threads, which are blocked in read(2).
    std::process::exit(0);
}
