//! Answers system calls no FUSE file can change — `sysinfo(2)`, and optionally
//! `sched_getaffinity(2)` — for containers whose seccomp profile marks them
//! `SCMP_ACT_NOTIFY` (kernel seccomp user notification, `kernel/seccomp.c`).
//!
//! The runtime hands each container's notification fd to [`agent`] (OCI
//! `linux.seccomp.listenerPath`); the keeper holds those fds for as long as the container lives,
//! like the FUSE fds, and passes them to each worker, whose [`serve`] loop receives the
//! notifications and answers them from the same numbers as the container's meminfo, uptime and
//! loadavg. Whatever cannot be answered — another syscall, an unknown caller, a pointer that
//! does not take the write — is answered with `SECCOMP_USER_NOTIF_FLAG_CONTINUE`: the kernel
//! then runs the real system call, so a container never sees an error or a hang of ours.

pub mod abi;
pub mod agent;
mod answer;
pub mod profile;

pub use crate::sys::{recv_fds, send_fds};
use abi::*;
pub use abi::{is_notify_fd, Error};
use answer::answer_one;
pub use answer::Policy;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Notifications received and not yet answered. A worker asked to stop waits for them (a
/// notification received and never answered leaves its caller blocked until it gets a
/// signal), for a bounded time: one may be held by a hostile container.
pub static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Waits up to `limit` for [`IN_FLIGHT`] to reach 0.
pub fn wait_answered(limit: std::time::Duration) {
    let t = std::time::Instant::now();
    while IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst) > 0 && t.elapsed() < limit {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Answering threads at most. Each container has at most one notification being answered
/// (its next ones wait in the kernel), so a container that makes an answer block — its buffer
/// on a hung FUSE or NFS file slipping past the checks, a stopped reader of its /proc — holds
/// one thread, never the others' answers. Threads are started as needed and stay.
const MAX_ANSWERING: usize = 64;

struct Job {
    fd: Arc<OwnedFd>,
    n: Notif,
}

/// The answering threads: a shared queue, grown by one thread whenever none is idle.
struct Pool {
    policy: Policy,
    tx: std::sync::mpsc::Sender<Job>,
    rx: Arc<parking_lot::Mutex<std::sync::mpsc::Receiver<Job>>>,
    idle: Arc<std::sync::atomic::AtomicUsize>,
    threads: std::sync::atomic::AtomicUsize,
    /// Written the fd number of each answered notification, to wake the poll loop.
    done: Arc<OwnedFd>,
}

impl Pool {
    fn new(policy: Policy, done: OwnedFd) -> Pool {
        let (tx, rx) = std::sync::mpsc::channel();
        Pool {
            policy,
            tx,
            rx: Arc::new(parking_lot::Mutex::new(rx)),
            idle: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            threads: std::sync::atomic::AtomicUsize::new(0),
            done: Arc::new(done),
        }
    }

    fn submit(&self, job: Job) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.idle.load(SeqCst) == 0 && self.threads.load(SeqCst) < MAX_ANSWERING {
            let n = self.threads.fetch_add(1, SeqCst);
            let (rx, idle, done, policy) = (self.rx.clone(), self.idle.clone(), self.done.clone(), self.policy.clone());
            let spawned = std::thread::Builder::new().name(format!("seccomp-{n}")).spawn(move || loop {
                idle.fetch_add(1, SeqCst);
                let job = rx.lock().recv();
                idle.fetch_sub(1, SeqCst);
                let Ok(job) = job else { return };
                answer_one(&policy, job.fd.as_raw_fd(), &job.n);
                IN_FLIGHT.fetch_sub(1, SeqCst);
                let b = job.fd.as_raw_fd().to_ne_bytes();
                // SAFETY: writes 4 bytes from a local buffer to our pipe.
                unsafe { libc::write(done.as_raw_fd(), b.as_ptr() as *const libc::c_void, b.len()) };
            });
            if let Err(e) = spawned {
                self.threads.fetch_sub(1, SeqCst);
                tracing::warn!(error = %e, "seccomp: cannot start an answering thread");
            }
        }
        let _ = self.tx.send(job);
    }
}

/// Containers whose notifications this process answers now.
pub static WATCHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Serves notifications on `fds`, and on fds arriving over `chan` (from the keeper), until
/// `chan` is gone and — when `until_empty` — every container has exited. This thread only
/// polls and receives; answers are written by the [`Pool`], one per container at a time.
pub fn serve(policy: Policy, fds: Vec<OwnedFd>, mut chan: Option<OwnedFd>, until_empty: bool) {
    use std::collections::HashSet;
    let mut fds: Vec<Arc<OwnedFd>> = fds.into_iter().map(Arc::new).collect();
    for f in &fds {
        sync_wake_up(f.as_raw_fd());
    }
    let (done_r, done_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "seccomp: cannot create a pipe; not answering");
            return;
        }
    };
    let pool = Pool::new(policy, done_w);
    let mut busy: HashSet<RawFd> = HashSet::new();
    loop {
        WATCHED.store(fds.len(), std::sync::atomic::Ordering::Relaxed);
        if until_empty && fds.is_empty() && chan.is_none() && busy.is_empty() {
            return;
        }
        // A container with an answer in progress is watched only for its exit (events 0).
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|f| {
                let fd = f.as_raw_fd();
                libc::pollfd { fd, events: if busy.contains(&fd) { 0 } else { libc::POLLIN }, revents: 0 }
            })
            .collect();
        pfds.push(libc::pollfd { fd: done_r.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        if let Some(c) = &chan {
            pfds.push(libc::pollfd { fd: c.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        // SAFETY: pfds is a valid array of its length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as _, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "seccomp: poll failed");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            continue;
        }
        if pfds[fds.len()].revents & libc::POLLIN != 0 {
            let mut b = [0u8; 4 * 64];
            // SAFETY: reads into a local buffer of the length passed (non-blocking pipe).
            let n = unsafe { libc::read(done_r.as_raw_fd(), b.as_mut_ptr() as *mut libc::c_void, b.len()) };
            for c in b[..n.max(0) as usize].chunks_exact(4) {
                busy.remove(&i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
            }
        }
        if let Some(c) = &chan {
            let re = pfds[fds.len() + 1].revents;
            if re & libc::POLLIN != 0 {
                let mut b = [0u8; 16];
                match recv_fds(c.as_raw_fd(), &mut b) {
                    Ok((0, _)) => chan = None,
                    Ok((_, new)) => {
                        for f in new.into_iter().filter(|f| is_notify_fd(f.as_raw_fd())) {
                            sync_wake_up(f.as_raw_fd());
                            fds.push(Arc::new(f));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "seccomp: cannot receive from the keeper"),
                }
            } else if re & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                chan = None;
            }
        }
        let mut gone = Vec::new();
        for (i, p) in pfds.iter().take(fds.len()).enumerate() {
            if p.revents & libc::POLLIN != 0 {
                match recv(p.fd) {
                    Ok(n) => {
                        busy.insert(p.fd);
                        IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        pool.submit(Job { fd: fds[i].clone(), n });
                    }
                    Err(e) => tracing::debug!(error = %e, "seccomp: no notification to receive"),
                }
            } else if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                // Every task of that filter has exited.
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            // An answering thread still holding it keeps the fd open until it is done; its
            // number may then be reused, so it no longer counts as busy here.
            busy.remove(&fds[i].as_raw_fd());
            fds.swap_remove(i);
        }
    }
}

/// Starts the worker's notification thread.
pub fn spawn(policy: Policy, fds: Vec<OwnedFd>, chan: Option<OwnedFd>) -> io::Result<()> {
    std::thread::Builder::new().name("seccomp".into()).spawn(move || serve(policy, fds, chan, false))?;
    Ok(())
}

/// Takes ownership of inherited fd numbers that are seccomp notification fds; others are
/// reported and skipped.
pub fn adopt_fds(raw: &[RawFd]) -> Vec<OwnedFd> {
    raw.iter()
        .filter_map(|&fd| {
            if is_notify_fd(fd) {
                crate::sys::cloexec(fd);
                // SAFETY: inherited across exec for this process to own.
                Some(unsafe { OwnedFd::from_raw_fd(fd) })
            } else {
                tracing::warn!(fd, "not a seccomp notification fd; ignored");
                None
            }
        })
        .collect()
}
