//! Handover between two independent keepers: a new `serve` on a mount point a live keeper
//! serves takes its connection over instead of refusing (a package upgrade that restarts, a
//! DaemonSet rollout, a second `serve` by hand), so no container ever sees the mount go away.
//!
//! The keeper listens on a control socket beside its pid file (`<pidfile>.ctl`, mode 0600,
//! root peers only; `SOCK_SEQPACKET`, so each message keeps its fds). The protocol, versioned:
//!
//! 1. new -> old: [`Request`] (the protocol version the new keeper speaks).
//! 2. old: refuses a version it does not speak ([`Reply::Refused`]) and goes on serving.
//!    Otherwise it stops its worker (the kernel queues requests meanwhile, as for a worker
//!    crash) and sends [`Reply::Offer`] with the FUSE fds, the seccomp listener and
//!    notification fds, its control listener, the cached tree's fds and the trigger
//!    connection's, in chunks of at most [`CHUNK`] fds. (A keeper from before the cached tree
//!    or the trigger connection counts fewer fds than it gets and drops the offer: the old
//!    keeper serves on.)
//! 3. new: checks the fds, starts its worker, then sends `taken`. The old keeper exits
//!    without unmounting and without a seccomp drain. If `taken` does not come (the new one
//!    died or refused the offer), the old keeper starts a worker again and goes on.
//!
//! It works across mount namespaces (the fds are the connection; the socket is found by path
//! under `/run/cgprocfs`, which a DaemonSet shares as a hostPath) and across versions: a
//! version bump of [`VERSION`] is refused by the older side, which keeps serving.

use crate::seccomp::send_fds;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

/// What goes wrong between two keepers on the control socket. The socket's own failures stay
/// `io::Error`s (`bind`'s `AddrInUse` is retried by its caller); the protocol's are typed, so a
/// caller tells a refusal from a broken peer without reading a message.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// Connecting, sending or receiving failed (no keeper, a timeout, a peer that left).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The keeper refused, with its reason (a protocol it does not speak, a bad request).
    #[error("the keeper refused: {0}")]
    Refused(String),
    /// The keeper offers a protocol version this build does not speak.
    #[error("the keeper offers handover protocol {offered}, this build speaks {ours}")]
    Incompatible {
        /// The version offered.
        offered: u32,
        /// This build's [`VERSION`].
        ours: u32,
    },
    /// A message that is not the one the protocol has next (garbage, fds missing).
    #[error("handover protocol: {0}")]
    Protocol(String),
}

impl From<serde_json::Error> for HandoverError {
    fn from(e: serde_json::Error) -> Self {
        HandoverError::Protocol(e.to_string())
    }
}

/// The handover protocol version this build speaks.
pub const VERSION: u32 = 1;

/// Fds per message at most (the kernel's `SCM_MAX_FD` is 253).
const CHUNK: usize = 200;

/// How long the old keeper waits for `taken` before resuming.
const TAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a new keeper (or `cgprocfs status`) asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version ([`VERSION`]); 0 with `status`, which keepers that do not know the
    /// status request refuse as a version they do not speak, serving on.
    pub handover: u32,
    /// The asking binary's version, for the log.
    pub binary: String,
    /// A status request (`cgprocfs status`), not a handover.
    #[serde(default)]
    pub status: bool,
}

/// What the old keeper answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The connection, described; the fds follow in this order: `fuse` FUSE fds (the first is
    /// the session's), the seccomp listener if `listener`, `notify` notification fds, the
    /// control listener if `control`.
    Offer(Offer),
    /// Not handed over, and why; the old keeper goes on serving.
    Refused(String),
    /// The answer to a status request.
    Status(Box<crate::stats::Status>),
}

/// The description of a connection being handed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Protocol version ([`VERSION`]).
    pub handover: u32,
    /// The old binary's version, for the log.
    pub binary: String,
    /// FUSE_INIT's negotiated minor version.
    pub minor: u32,
    /// FUSE_INIT's negotiated flags.
    pub flags: u32,
    /// Number of FUSE fds.
    pub fuse: usize,
    /// Whether the seccomp listener follows.
    pub listener: bool,
    /// Number of seccomp notification fds.
    pub notify: usize,
    /// Whether the control listener follows.
    pub control: bool,
    /// Number of fds of the cached tree's connection, sent last (0 from a keeper without
    /// one: the taker mounts its own).
    #[serde(default)]
    pub cache: usize,
    /// Number of fds of the trigger connection (fuse/psi.rs), after the cached tree's (0 from
    /// a keeper without one: the taker mounts its own).
    #[serde(default)]
    pub psi: usize,
    /// Times the connection was handed on before (0 from a keeper that did not count).
    #[serde(default)]
    pub handovers: u64,
}

impl Offer {
    fn total(&self) -> usize {
        self.fuse + usize::from(self.listener) + self.notify + usize::from(self.control) + self.cache + self.psi
    }
}

/// The fds of an offer, split by kind.
#[derive(Debug)]
pub struct Received {
    /// The offer they came with.
    pub offer: Offer,
    /// FUSE fds, the session's first.
    pub fuse: Vec<OwnedFd>,
    /// The seccomp listener.
    pub listener: Option<OwnedFd>,
    /// Notification fds of running containers.
    pub notify: Vec<OwnedFd>,
    /// The old keeper's control listener.
    pub control: Option<OwnedFd>,
    /// The cached tree's connection.
    pub cache: Vec<OwnedFd>,
    /// The trigger connection.
    pub psi: Vec<OwnedFd>,
}

/// The control socket's path for a keeper with pid file `pidfile`.
pub fn control_path(pidfile: &Path) -> std::path::PathBuf {
    crate::files::companion(pidfile, "ctl")
}

fn seqpacket() -> io::Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    Ok(socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?)
}

/// Binds the control socket at `path` (0600 from its creation). A socket file nobody answers
/// on is replaced; one a live keeper answers on is an error.
pub fn bind(path: &Path) -> io::Result<OwnedFd> {
    use nix::sys::socket::{bind, listen, Backlog, UnixAddr};
    let addr = UnixAddr::new(path)?;
    let fd = seqpacket()?;
    // SAFETY: umask only swaps the process's file mode mask; the keeper binds before it
    // starts any thread that creates files.
    let old = unsafe { libc::umask(0o177) };
    let mut r = bind(fd.as_raw_fd(), &addr);
    if r == Err(nix::errno::Errno::EADDRINUSE) {
        if answers(path) {
            // SAFETY: restoring the mask.
            unsafe { libc::umask(old) };
            return Err(io::Error::new(io::ErrorKind::AddrInUse, format!("a keeper answers on {}", path.display())));
        }
        let _ = std::fs::remove_file(path);
        r = bind(fd.as_raw_fd(), &addr);
    }
    // SAFETY: restoring the mask.
    unsafe { libc::umask(old) };
    r?;
    listen(&fd, Backlog::new(4).map_err(io::Error::from)?)?;
    Ok(fd)
}

fn connect(path: &Path) -> io::Result<OwnedFd> {
    use nix::sys::socket::{connect, UnixAddr};
    let fd = seqpacket()?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}

/// Whether something listens at `path`, without waiting: a listener nobody accepts on (its
/// backlog full) counts as listening.
fn answers(path: &Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let Ok(addr) = UnixAddr::new(path) else { return false };
    let Ok(fd) =
        socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
    else {
        return false;
    };
    matches!(connect(fd.as_raw_fd(), &addr), Ok(()) | Err(nix::errno::Errno::EAGAIN))
}

fn set_timeout(fd: &OwnedFd, t: Duration) {
    let tv = libc::timeval { tv_sec: t.as_secs() as _, tv_usec: t.subsec_micros() as _ };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: setsockopt with a timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
    }
}

/// One message and the fds that came with it.
fn recv(fd: &OwnedFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = vec![0u8; 64 << 10];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; CHUNK]);
    let msg = recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(v) = c {
            // SAFETY: the kernel installed these fds in this process for us.
            fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let n = msg.bytes;
    buf.truncate(n);
    Ok((buf, fds))
}

fn send(fd: &OwnedFd, data: &[u8]) -> io::Result<()> {
    send_fds(fd.as_raw_fd(), data, &[])
}

fn bad(why: impl Into<String>) -> HandoverError {
    HandoverError::Protocol(why.into())
}

/// Accepts one control connection from a root peer and reads its request. `Ok(None)` for a
/// connection that is not one (a non-root peer, garbage), which is closed.
pub fn accept(listener: &OwnedFd) -> Result<Option<(OwnedFd, Request)>, HandoverError> {
    // SAFETY: accept4 on our listening socket; the new fd is owned below.
    let fd =
        unsafe { libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: just returned by accept4.
    let conn = unsafe { OwnedFd::from_raw_fd(fd) };
    match nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(c) if c.uid() == 0 => {}
        Ok(c) => {
            tracing::warn!(uid = c.uid(), pid = c.pid(), "control: refused a peer not running as root");
            return Ok(None);
        }
        Err(e) => {
            tracing::warn!(error = %e, "control: no peer credentials; refused");
            return Ok(None);
        }
    }
    set_timeout(&conn, Duration::from_secs(5));
    let (data, _) = recv(&conn)?;
    if data.is_empty() {
        // A probe (another keeper checking whether this socket is alive) or a peer that left.
        return Ok(None);
    }
    match serde_json::from_slice::<Request>(&data) {
        Ok(r) => Ok(Some((conn, r))),
        Err(e) => {
            tracing::warn!(error = %e, "control: not a handover request");
            let _ = send(&conn, &serde_json::to_vec(&Reply::Refused(format!("bad request: {e}")))?);
            Ok(None)
        }
    }
}

/// How many characters of a peer's `binary` string a log line shows.
const SHOWN: usize = 64;

/// A peer's `binary` string as logged: at most [`SHOWN`] characters, control characters
/// escaped (whoever reaches the socket chose it; a log line is not theirs to fill).
pub fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(SHOWN).flat_map(char::escape_debug).collect();
    if s.chars().nth(SHOWN).is_some() {
        out.push_str(&format!("... ({} bytes)", s.len()));
    }
    out
}

/// Refuses `req` on `conn` if this build cannot hand over to it; true if refused.
pub fn refuse_if_incompatible(conn: &OwnedFd, req: &Request) -> bool {
    if req.handover == VERSION {
        return false;
    }
    let why = format!("handover protocol {} asked, this keeper speaks {VERSION}", req.handover);
    tracing::warn!(asked = req.handover, binary = %shown(&req.binary), "control: refused a handover: {why}");
    if let Ok(m) = serde_json::to_vec(&Reply::Refused(why)) {
        let _ = send(conn, &m);
    }
    true
}

/// The old keeper's side: sends `offer` and `fds` (in the offer's order) and waits for the new
/// keeper's `taken`. True when it was taken: the caller must exit without unmounting.
pub fn give(conn: &OwnedFd, offer: &Offer, fds: &[RawFd]) -> Result<bool, HandoverError> {
    if fds.len() != offer.total() {
        return Err(bad(format!("{} fds for an offer of {}", fds.len(), offer.total())));
    }
    set_timeout(conn, TAKE_TIMEOUT);
    let head = serde_json::to_vec(&Reply::Offer(offer.clone()))?;
    let mut chunks = fds.chunks(CHUNK);
    send_fds(conn.as_raw_fd(), &head, chunks.next().unwrap_or(&[]))?;
    for c in chunks {
        send_fds(conn.as_raw_fd(), b"+", c)?;
    }
    match recv(conn) {
        Ok((d, _)) => Ok(d == b"taken"),
        // EOF or timeout: the new keeper is gone or stuck; resume.
        Err(_) => Ok(false),
    }
}

/// The new keeper's side: asks the keeper answering on `path` for its connection.
pub fn take(path: &Path) -> Result<(Taken, Received), HandoverError> {
    let conn = connect(path)?;
    set_timeout(&conn, TAKE_TIMEOUT);
    let req = Request { handover: VERSION, binary: env!("CARGO_PKG_VERSION").to_string(), status: false };
    send(&conn, &serde_json::to_vec(&req)?)?;
    let (head, mut fds) = recv(&conn)?;
    let offer = match serde_json::from_slice::<Reply>(&head) {
        Ok(Reply::Offer(o)) => o,
        Ok(Reply::Refused(why)) => return Err(HandoverError::Refused(why)),
        Ok(Reply::Status(_)) | Err(_) => return Err(bad("not a handover offer")),
    };
    if offer.handover != VERSION {
        // Dropping the connection makes the old keeper resume.
        return Err(HandoverError::Incompatible { offered: offer.handover, ours: VERSION });
    }
    while fds.len() < offer.total() {
        let (d, more) = recv(&conn)?;
        if d != b"+" || more.is_empty() {
            return Err(bad("a handover message that is not the rest of the fds"));
        }
        fds.extend(more);
    }
    if fds.len() != offer.total() {
        return Err(bad(format!("{} fds for an offer of {}", fds.len(), offer.total())));
    }
    let mut it = fds.into_iter();
    let fuse: Vec<OwnedFd> = it.by_ref().take(offer.fuse).collect();
    let listener = if offer.listener { it.next() } else { None };
    let notify: Vec<OwnedFd> = it.by_ref().take(offer.notify).collect();
    let control = if offer.control { it.next() } else { None };
    let cache: Vec<OwnedFd> = it.by_ref().take(offer.cache).collect();
    let psi: Vec<OwnedFd> = it.by_ref().take(offer.psi).collect();
    Ok((Taken(conn), Received { offer, fuse, listener, notify, control, cache, psi }))
}

/// Asks the keeper answering on `path` how it is doing (`cgprocfs status`).
pub fn status(path: &Path) -> Result<crate::stats::Status, HandoverError> {
    let conn = connect(path)?;
    set_timeout(&conn, Duration::from_secs(5));
    let req = Request { handover: 0, binary: env!("CARGO_PKG_VERSION").to_string(), status: true };
    send(&conn, &serde_json::to_vec(&req)?)?;
    let (reply, _) = recv(&conn)?;
    match serde_json::from_slice::<Reply>(&reply) {
        Ok(Reply::Status(s)) => Ok(*s),
        Ok(Reply::Refused(why)) => Err(HandoverError::Refused(why)),
        _ => Err(bad("not a status answer")),
    }
}

/// Answers a status request on `conn`.
pub fn answer_status(conn: &OwnedFd, status: &crate::stats::Status) -> Result<(), HandoverError> {
    Ok(send(conn, &serde_json::to_vec(&Reply::Status(Box::new(status.clone())))?)?)
}

/// The new keeper's promise to confirm once it serves.
#[derive(Debug)]
pub struct Taken(OwnedFd);

impl Taken {
    /// Tells the old keeper the connection is served here now: it exits.
    pub fn confirm(self) -> Result<(), HandoverError> {
        Ok(send(&self.0, b"taken")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_binary_is_logged_bounded_and_escaped() {
        assert_eq!(shown("0.1.0"), "0.1.0");
        let long = "x".repeat(60_000);
        let s = shown(&long);
        assert!(s.len() < 100 && s.ends_with("... (60000 bytes)"), "{s}");
        assert_eq!(shown("a\nb"), "a\\nb");
    }

    #[test]
    fn an_offer_and_its_fds_go_over_and_come_back_split_by_kind() {
        let dir = crate::files::TestDir::new("cgprocfs-handover-test-");
        let path = dir.join("k.ctl");
        let listener = bind(&path).unwrap();
        assert!(bind(&path).is_err(), "a second keeper cannot bind a live control socket");
        // 250 notification fds: more than one message's worth.
        let files: Vec<std::fs::File> = (0..256).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let offer = Offer {
            handover: VERSION,
            binary: "old".into(),
            minor: 41,
            flags: 7,
            fuse: 2,
            listener: true,
            notify: 250,
            control: true,
            cache: 1,
            psi: 1,
            handovers: 2,
        };
        let old = std::thread::spawn(move || {
            // The second bind's probe came first: not a request, skipped.
            let (conn, req) = std::iter::repeat_with(|| accept(&listener).unwrap()).flatten().next().unwrap();
            assert!(!refuse_if_incompatible(&conn, &req));
            give(&conn, &offer, &raw).unwrap()
        });
        let (taken, got) = take(&path).unwrap();
        assert_eq!((got.offer.minor, got.offer.flags), (41, 7));
        assert_eq!((got.fuse.len(), got.notify.len()), (2, 250));
        assert!(got.listener.is_some() && got.control.is_some());
        assert_eq!(got.cache.len(), 1, "the cached tree's connection comes after the control listener");
        assert_eq!(got.psi.len(), 1, "the trigger connection comes last");
        taken.confirm().unwrap();
        assert!(old.join().unwrap(), "the old side saw the confirmation");
        drop(files);
    }

    #[test]
    fn an_unconfirmed_or_incompatible_handover_leaves_the_old_keeper_serving() {
        let dir = crate::files::TestDir::new("cgprocfs-handover-test-");
        let path = dir.join("k.ctl");
        let listener = bind(&path).unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        let raw = vec![f.as_raw_fd()];
        let offer = Offer {
            handover: VERSION,
            binary: "old".into(),
            minor: 41,
            flags: 0,
            fuse: 1,
            listener: false,
            notify: 0,
            control: false,
            cache: 0,
            psi: 0,
            handovers: 0,
        };
        let old = std::thread::spawn(move || {
            let (conn, req) = accept(&listener).unwrap().unwrap();
            let taken = give(&conn, &offer, &raw).unwrap();
            // A newer protocol is refused, with the reason.
            let (conn2, mut req2) = accept(&listener).unwrap().unwrap();
            req2.handover = req.handover + 1;
            (taken, refuse_if_incompatible(&conn2, &req2))
        });
        // The new side takes the fds and dies before confirming.
        let (taken, _got) = take(&path).unwrap();
        drop(taken);
        let refused = std::thread::spawn(move || take(&path).map(|_| ()));
        let (was_taken, was_refused) = old.join().unwrap();
        assert!(!was_taken, "no confirmation: the old keeper resumes");
        assert!(was_refused);
        let e = refused.join().unwrap().unwrap_err();
        assert!(matches!(e, HandoverError::Refused(ref why) if why.contains("protocol")), "{e}");
    }
}
