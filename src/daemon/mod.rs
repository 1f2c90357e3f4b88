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

pub mod args;
mod control;
pub mod handover;
mod keeper;
pub mod systemd;
mod worker;

pub use keeper::keeper;
pub use worker::worker;

use crate::files;
use crate::fuse::session::InitParams;
use crate::sys::cloexec;
use args::ServeOptions;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// What the keeper needs to start, restart and upgrade workers.
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    /// The mount point, canonical.
    pub mountpoint: PathBuf,
    /// The binary to run workers and upgrades from (its path on disk, so an upgrade that
    /// replaced the file runs the new one).
    pub binary: PathBuf,
    /// What is served and how, passed on to workers and to the upgraded keeper.
    pub opts: ServeOptions,
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
    /// Where the cached tree's connection is mounted (fuse/cached.rs); `None` serves none.
    pub cache: Option<PathBuf>,
    /// Where the trigger connection is mounted (fuse/psi.rs); `None` serves none.
    pub psi: Option<PathBuf>,
}

/// A live connection handed over by a previous keeper through `exec`.
#[derive(Debug, Clone)]
pub struct Adopted {
    /// The inherited `/dev/fuse` fds; the first is the session fd.
    pub fds: Vec<RawFd>,
    /// The cached tree's connection, if the previous keeper had one.
    pub cache: Vec<RawFd>,
    /// The trigger connection, if the previous keeper had one.
    pub psi: Vec<RawFd>,
    /// The parameters negotiated at the original FUSE_INIT.
    pub params: InitParams,
    /// The seccomp listener socket and the notification fds held, if any.
    pub seccomp: Option<(RawFd, Vec<RawFd>)>,
    /// The previous keeper's control listener (a handover), used when this keeper's own
    /// control socket path is the one it still holds.
    pub control: Option<RawFd>,
    /// Times the connection was handed on before this adoption.
    pub handovers: u64,
}

impl Adopted {
    /// What a handover received, as a keeper adopts it.
    pub fn from_handover(r: handover::Received) -> Adopted {
        use std::os::fd::IntoRawFd;
        Adopted {
            fds: r.fuse.into_iter().map(IntoRawFd::into_raw_fd).collect(),
            cache: r.cache.into_iter().map(IntoRawFd::into_raw_fd).collect(),
            psi: r.psi.into_iter().map(IntoRawFd::into_raw_fd).collect(),
            params: InitParams { minor: r.offer.minor, flags: r.offer.flags },
            seccomp: r.listener.map(|l| (l.into_raw_fd(), r.notify.into_iter().map(IntoRawFd::into_raw_fd).collect())),
            control: r.control.map(IntoRawFd::into_raw_fd),
            handovers: r.offer.handovers,
        }
    }
}

/// Where the keeper with pid file `pidfile` mounts the cached tree (fuse/cached.rs).
pub fn cache_dir(pidfile: &Path) -> PathBuf {
    files::companion(pidfile, "cache")
}

/// Where the keeper with pid file `pidfile` mounts the trigger connection (fuse/psi.rs).
pub fn psi_dir(pidfile: &Path) -> PathBuf {
    files::companion(pidfile, "psi")
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
pub(crate) fn own_fuse_fds(raw: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
    let mut fds = Vec::new();
    for &fd in raw {
        check_fuse_fd(fd)?;
        cloexec(fd);
        // SAFETY: the fd was inherited for this process to own.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(fds)
}
