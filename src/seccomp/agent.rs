//! The keeper's side of seccomp notification: the unix socket a runtime connects to at
//! container start (OCI `linux.seccomp.listenerPath`), and the notification fds it hands over.
//!
//! runc's protocol (`libcontainer/process_linux.go`, 1.1+): connect, one message with the
//! container process state as JSON (`{"ociVersion", "fds": ["seccompFd"], "pid", "metadata",
//! "state": {...}}`) and the fds named in `fds` as SCM_RIGHTS, then close. crun speaks the same.
//!
//! The keeper, not the worker, holds the received fds: when the last holder closes one, the
//! kernel fails every notified call of that container with `ENOSYS`, so they must outlive a
//! worker crash exactly like the FUSE fds. Each worker gets them all at start and new ones over
//! a socket pair; fds whose container has exited (`POLLHUP`) are closed here.

use super::is_notify_fd;
use crate::sys::{recv_fds, send_fds};
use parking_lot::Mutex;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The runtime's state message is a few KiB; refuse to buffer more than this.
const MAX_STATE: usize = 1 << 20;

struct State {
    notify: Vec<OwnedFd>,
    /// The keeper's end of the current worker's socket pair.
    worker: Option<OwnedFd>,
    closed: bool,
}

/// The listening socket and the notification fds of running containers.
pub struct Agent {
    path: PathBuf,
    listener: OwnedFd,
    state: Mutex<State>,
    /// Connections are left in the backlog (a handover is giving the listener away).
    paused: std::sync::atomic::AtomicBool,
    /// Called with each new container's notification fd (the keeper stores it with the
    /// service manager).
    on_new: std::sync::OnceLock<fn(RawFd)>,
}

impl Agent {
    /// Listens at `path` (mode 0600 from the moment it exists: only root hands us fds). A
    /// socket left by a dead daemon is replaced; one another daemon still answers on is an
    /// error.
    pub fn bind(path: &Path) -> io::Result<Agent> {
        if let Some(dir) = path.parent() {
            crate::files::private_dir(dir, 0o755)?;
        }
        // The socket file is created by bind with the umask applied: no window in which it is
        // connectable by others, no chmod by path afterwards. The keeper has no other thread
        // yet, so the process-wide umask is ours to change.
        // SAFETY: umask only swaps the process's file mode mask.
        let old = unsafe { libc::umask(0o177) };
        let r = Self::bind_listener(path);
        // SAFETY: as above, restoring it.
        unsafe { libc::umask(old) };
        Ok(Agent::new(path, OwnedFd::from(r?), Vec::new()))
    }

    fn bind_listener(path: &Path) -> io::Result<UnixListener> {
        Ok(match UnixListener::bind(path) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("another daemon listens on {}", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
                UnixListener::bind(path)?
            }
            Err(e) => return Err(e),
        })
    }

    /// Takes over the socket and fds a previous keeper passed across exec.
    pub fn adopt(path: &Path, listener: RawFd, notify: &[RawFd]) -> io::Result<Agent> {
        let st = nix::sys::stat::fstat(listener).map_err(io::Error::from)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("fd {listener} is not a socket")));
        }
        crate::sys::cloexec(listener);
        // SAFETY: inherited across exec for this process to own.
        let listener = unsafe { OwnedFd::from_raw_fd(listener) };
        Ok(Agent::new(path, listener, super::adopt_fds(notify)))
    }

    fn new(path: &Path, listener: OwnedFd, notify: Vec<OwnedFd>) -> Agent {
        Agent {
            path: path.to_path_buf(),
            listener,
            state: Mutex::new(State { notify, worker: None, closed: false }),
            paused: std::sync::atomic::AtomicBool::new(false),
            on_new: std::sync::OnceLock::new(),
        }
    }

    /// Sets what is done with each new container's notification fd, besides keeping it.
    pub fn on_new(&self, f: fn(RawFd)) {
        let _ = self.on_new.set(f);
    }

    /// Stops (or resumes) accepting runtimes' connections; while paused they wait in the
    /// socket's backlog, for whoever holds the listener next.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, std::sync::atomic::Ordering::SeqCst);
    }

    /// Starts accepting runtimes' connections and watching for containers that exit.
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        let me = Arc::clone(self);
        std::thread::Builder::new().name("seccomp-agent".into()).spawn(move || me.run())?;
        Ok(())
    }

    fn run(&self) {
        loop {
            let watched: Vec<RawFd> = self.state.lock().notify.iter().map(|f| f.as_raw_fd()).collect();
            let events = if self.paused.load(std::sync::atomic::Ordering::SeqCst) { 0 } else { libc::POLLIN };
            let mut pfds = vec![libc::pollfd { fd: self.listener.as_raw_fd(), events, revents: 0 }];
            // events 0: only POLLHUP, which the kernel reports once the filter has no task left.
            pfds.extend(watched.iter().map(|&fd| libc::pollfd { fd, events: 0, revents: 0 }));
            // SAFETY: pfds is a valid array of its length. The timeout picks up fds added since.
            let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as _, 1000) };
            if r <= 0 {
                continue;
            }
            if pfds[0].revents & libc::POLLIN != 0 {
                self.accept();
            }
            let hung: Vec<RawFd> = pfds[1..].iter().filter(|p| p.revents != 0).map(|p| p.fd).collect();
            if !hung.is_empty() {
                let mut st = self.state.lock();
                st.notify.retain(|f| !hung.contains(&f.as_raw_fd()));
                tracing::debug!(closed = hung.len(), left = st.notify.len(), "seccomp: containers exited");
            }
        }
    }

    fn accept(&self) {
        if self.paused.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // SAFETY: accept4 on our listening socket; the new fd is owned below.
        let fd = unsafe {
            libc::accept4(self.listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if fd < 0 {
            return;
        }
        // SAFETY: just returned by accept4.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        // Only root (the runtime) may hand us fds, whatever the socket's mode became.
        match nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(c) if c.uid() == 0 => {}
            Ok(c) => {
                tracing::warn!(
                    uid = c.uid(),
                    pid = c.pid(),
                    "seccomp: refused a connection from a process not running as root"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "seccomp: no peer credentials; connection refused");
                return;
            }
        }
        warn_if_few_fds_left();
        match receive(&conn) {
            Ok((id, fd)) => {
                let mut st = self.state.lock();
                if st.closed {
                    return;
                }
                if let Some(w) = &st.worker {
                    if let Err(e) = send_fds(w.as_raw_fd(), b"f", &[fd.as_raw_fd()]) {
                        tracing::warn!(error = %e, "seccomp: cannot pass a container to the worker; it gets it at restart");
                    }
                }
                tracing::info!(container = %id, "seccomp: answering sysinfo for a new container");
                if let Some(f) = self.on_new.get() {
                    f(fd.as_raw_fd());
                }
                st.notify.push(fd);
            }
            Err(e) => tracing::warn!(error = %e, "seccomp: bad message on the listener socket"),
        }
    }

    /// Calls `f` with a fresh socket pair end for a worker and the notification fds to pass to
    /// it (under the lock, so nothing received meanwhile is missed); the keeper's end is kept
    /// for fds that arrive later.
    pub fn with_worker<T>(&self, f: impl FnOnce(RawFd, &[RawFd]) -> io::Result<T>) -> io::Result<T> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (mine, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        let mut st = self.state.lock();
        let notify: Vec<RawFd> = st.notify.iter().map(|f| f.as_raw_fd()).collect();
        let r = f(theirs.as_raw_fd(), &notify)?;
        st.worker = Some(mine);
        Ok(r)
    }

    /// Calls `f` with the listener and notification fds under the lock (an upgrade exec-ing
    /// with them).
    pub fn with_fds<T>(&self, f: impl FnOnce(RawFd, &[RawFd]) -> T) -> T {
        let st = self.state.lock();
        let notify: Vec<RawFd> = st.notify.iter().map(|f| f.as_raw_fd()).collect();
        f(self.listener.as_raw_fd(), &notify)
    }

    /// Stops taking new containers and removes the socket file, so another daemon can bind it;
    /// the notification fds held are still answered.
    pub fn release_listener(&self) {
        self.pause(true);
        let _ = std::fs::remove_file(&self.path);
    }

    /// Stops listening (the socket file is removed) and hands out the notification fds of
    /// containers still running.
    pub fn close(&self) -> Vec<OwnedFd> {
        let mut st = self.state.lock();
        st.closed = true;
        st.worker = None;
        let _ = std::fs::remove_file(&self.path);
        std::mem::take(&mut st.notify)
    }
}

/// Reads one runtime message from `conn`: the container id and its notification fd.
fn receive(conn: &OwnedFd) -> io::Result<(String, OwnedFd)> {
    let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
    // SAFETY: setsockopt with a timeval of the right size; a runtime that connects and sends
    // nothing must not stall the keeper.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let mut data = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let (n, got) = recv_fds(conn.as_raw_fd(), &mut buf)?;
        fds.extend(got);
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
        if data.len() > MAX_STATE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "state message too long"));
        }
        // runc sends one message and closes; stop once it parses, in case it does not close.
        if serde_json::from_slice::<serde_json::Value>(&data).is_ok() {
            break;
        }
    }
    let state: serde_json::Value = serde_json::from_slice(&data)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("state JSON: {e}")))?;
    let (index, id) = check_message(&state, fds.len()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let fd = fds.swap_remove(index);
    if !is_notify_fd(fd.as_raw_fd()) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the fd is not a seccomp notification fd"));
    }
    Ok((id, fd))
}

/// Checks a runtime message against runc's `listenerPath` protocol (`ContainerProcessState`):
/// `ociVersion`, `fds` naming each passed fd (one of them `seccompFd`), `pid`, and the
/// container `state` with its `id`. Returns the index of the seccomp fd and the id.
pub fn check_message(m: &serde_json::Value, nfds: usize) -> Result<(usize, String), String> {
    let obj = m.as_object().ok_or("not a JSON object")?;
    obj.get("ociVersion").and_then(|v| v.as_str()).ok_or("no ociVersion")?;
    obj.get("pid").and_then(|v| v.as_i64()).filter(|&p| p > 0).ok_or("no pid")?;
    let names = obj.get("fds").and_then(|v| v.as_array()).ok_or("no fds list")?;
    if names.len() != nfds {
        return Err(format!("{} fds named, {nfds} passed", names.len()));
    }
    let index = names.iter().position(|n| n.as_str() == Some("seccompFd")).ok_or("no seccompFd")?;
    let id = obj.get("state").and_then(|s| s.get("id")).and_then(|v| v.as_str()).ok_or("no state.id")?;
    if id.is_empty() || id.len() > 1024 {
        return Err("bad state.id".into());
    }
    Ok((index, id.to_string()))
}

/// Warns when this process is near its open-file limit: every running container with the
/// seccomp profile holds one fd here.
fn warn_if_few_fds_left() {
    let open = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0) as u64;
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(u64::MAX, |l| l.0);
    if open.saturating_mul(10) >= limit.saturating_mul(9) {
        tracing::warn!(open, limit, "seccomp: near the open-file limit; new containers may get the host's sysinfo");
    }
}

/// Runs the drain: answers every notification of `fds` with "run the real call" until their
/// containers have all exited. Started by a stopping keeper so containers' sysinfo returns the
/// host's values instead of failing with `ENOSYS`.
pub fn drain(fds: Vec<OwnedFd>) {
    tracing::info!(containers = fds.len(), "seccomp: passing calls through until these containers exit");
    super::serve(super::Policy::Continue, fds, None, true);
}
