//! The FUSE transport: a small protocol loop over `/dev/fuse`. It mounts with `mount(2)`
//! (the daemon runs as root, so no fusermount), answers FUSE_INIT, and runs worker threads,
//! each reading requests from its own cloned fd and writing replies. `docs/architecture.md`
//! says why this and not fuser.

use super::abi::{self, InHeader, Out};
use super::request::Request;
use super::spin::{Spin, Tuner};
use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use super::reply::Reply;

/// The filesystem side of the transport.
pub trait Handler: Send + Sync + 'static {
    /// Answers one decoded request; must not block for long and must never panic.
    fn handle(&self, header: &InHeader, req: Request<'_>) -> Reply;

    /// Decodes the request body of `header`'s operation and answers it (`EINVAL` for a body
    /// too short for its operation).
    fn dispatch(&self, header: &InHeader, body: &[u8]) -> Reply {
        match Request::parse(header.opcode, body) {
            Ok(req) => self.handle(header, req),
            Err(e) => Reply::Err(e),
        }
    }
}

/// Parameters agreed with the kernel at FUSE_INIT; a server taking over a live connection
/// needs them instead of a second INIT, which the kernel never sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitParams {
    /// Protocol minor version in use.
    pub minor: u32,
    /// Flags accepted.
    pub flags: u32,
}

/// The file system type of every cgprocfs mount (FUSE with subtype `cgprocfs`).
pub const FSTYPE: &str = "fuse.cgprocfs";

/// Opens `/dev/fuse`, mounts it read-only at `mountpoint` for all users, and answers the
/// kernel's FUSE_INIT. Returns the session fd and the negotiated parameters.
///
/// Read-only is the superblock's flag, and it is what keeps reads cheap: on a writable FUSE
/// superblock every READ marks the inode's atime stale (`fuse_invalidate_atime`,
/// fs/fuse/file.c), so the reader's next `fstat` costs a GETATTR round trip.
pub fn mount(mountpoint: &Path, fsname: &str) -> io::Result<(OwnedFd, InitParams)> {
    mount_with(mountpoint, fsname, false, true)
}

/// [`mount`] on a writable superblock: the trigger connection (fuse/psi.rs), whose pressure
/// files take writes. Its handler refuses every other change with `EROFS`.
pub fn mount_writable(mountpoint: &Path, fsname: &str) -> io::Result<(OwnedFd, InitParams)> {
    mount_with(mountpoint, fsname, false, false)
}

/// [`mount`], accepting FUSE over io_uring when the kernel offers it: only the `uring_floor`
/// benchmark's prototype transport asks for it (feature `uring-bench`); the daemon does not.
#[cfg(feature = "uring-bench")]
pub fn mount_with_uring(mountpoint: &Path, fsname: &str) -> io::Result<(OwnedFd, InitParams)> {
    mount_with(mountpoint, fsname, true, true)
}

fn mount_with(mountpoint: &Path, fsname: &str, uring: bool, rdonly: bool) -> io::Result<(OwnedFd, InitParams)> {
    let dev = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open("/dev/fuse")?;
    let dev = OwnedFd::from(dev);
    let opts = format!(
        "fd={},rootmode=40000,user_id={},group_id={},allow_other,default_permissions",
        dev.as_raw_fd(),
        // SAFETY: getuid/getgid cannot fail.
        unsafe { libc::getuid() },
        unsafe { libc::getgid() },
    );
    let c = |s: &[u8]| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (src, target, fstype, data) =
        (c(fsname.as_bytes())?, c(mountpoint.as_os_str().as_bytes())?, c(FSTYPE.as_bytes())?, c(opts.as_bytes())?);
    let ro = if rdonly { libc::MS_RDONLY } else { 0 };
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | ro;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let r = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    match init(dev.as_raw_fd(), uring) {
        Ok(params) => Ok((dev, params)),
        Err(e) => {
            let _ = unmount(mountpoint);
            Err(e)
        }
    }
}

/// Where the companion tree named by `source_name` (cached tree, trigger connection) of the
/// daemon serving `mountpoint` is mounted, as this process sees it (the latest such mount).
pub fn find_companion(mountpoint: &Path, source_name: fn(&Path) -> String) -> Option<std::path::PathBuf> {
    let source = source_name(&mountpoint.canonicalize().unwrap_or_else(|_| mountpoint.to_path_buf()));
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    crate::mountinfo::entries(&text)
        .filter(|e| e.fstype == FSTYPE && e.source == source && e.root == "/")
        .last()
        .map(|e| std::path::PathBuf::from(e.mount_point))
}

/// A new `/dev/fuse` fd attached to the session of `master` (`FUSE_DEV_IOC_CLONE`): the
/// kernel hands requests to whichever fd's reader is free, and each fd keeps its own list of
/// requests read but not yet answered.
pub fn clone_fd(master: &OwnedFd) -> io::Result<OwnedFd> {
    let f = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open("/dev/fuse")?;
    let m: u32 = master.as_raw_fd() as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the session fd) from the pointer.
    if unsafe { libc::ioctl(f.as_raw_fd(), abi::FUSE_DEV_IOC_CLONE as _, &m as *const u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(f))
}

/// Asks the kernel to queue again every request that was read from this connection but not
/// answered (`FUSE_NOTIFY_RESEND`, Linux 6.9+). A server that takes over from a dead one calls
/// it so the dead one's in-flight requests are answered instead of hanging. All requests this
/// tree serves are idempotent, so a duplicate is harmless. Fails with `EINVAL` on kernels
/// without it.
pub fn notify_resend(fd: &OwnedFd) -> io::Result<()> {
    let mut o = Out::default();
    o.u32(abi::OUT_HEADER_LEN as u32).u32(abi::FUSE_NOTIFY_RESEND).u64(0);
    // SAFETY: the buffer is valid for reads of its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), o.0.as_ptr().cast(), o.0.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Wakes the pollers of poll handle `kh` (`FUSE_NOTIFY_POLL`).
pub fn notify_poll(fd: &OwnedFd, kh: u64) -> io::Result<()> {
    let mut o = Out::default();
    o.u32(abi::OUT_HEADER_LEN as u32 + 8).u32(abi::FUSE_NOTIFY_POLL).u64(0).u64(kh);
    // SAFETY: the buffer is valid for reads of its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), o.0.as_ptr().cast(), o.0.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Set once the process stops serving: threads take no further request.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// Serving threads that stopped (each after answering what it had read).
static PARKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// The serving threads, to interrupt their blocking read when stopping.
static THREADS: parking_lot::Mutex<Vec<libc::pthread_t>> = parking_lot::Mutex::new(Vec::new());

extern "C" fn interrupt(_: libc::c_int) {}

/// Stops serving without losing a request: every thread answers what it has read, then takes
/// nothing more (threads blocked in `read` are interrupted with SIGUSR2); waits for all of
/// them, at most `timeout`. A request read by no one stays queued for the next server. Without
/// this, a request read just before the process exits is lost on kernels without
/// `FUSE_NOTIFY_RESEND` (before 6.9): its reader would wait forever.
pub fn quiesce(timeout: std::time::Duration) {
    STOPPING.store(true, Ordering::SeqCst);
    let t = std::time::Instant::now();
    loop {
        let threads = THREADS.lock();
        if PARKED.load(Ordering::SeqCst) >= threads.len() || t.elapsed() > timeout {
            return;
        }
        for &th in threads.iter() {
            // SAFETY: each id is of a live serving thread (removed under this lock before it
            // exits); the handler does nothing, it only makes a blocking read return EINTR.
            unsafe { libc::pthread_kill(th, libc::SIGUSR2) };
        }
        drop(threads);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Starts one worker thread per fd, each reading requests from its fd and answering them with
/// `handler`. The fds are shared, not consumed: the keeper process holds them too, so the
/// connection survives this process.
pub fn spawn_workers<H: Handler>(
    fds: &[Arc<OwnedFd>],
    handler: Arc<H>,
    spin: std::time::Duration,
) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
    // No SA_RESTART: the interrupted read returns EINTR and the thread sees it must stop.
    // SAFETY: installing a handler that does nothing, with a zeroed sigaction.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = interrupt as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut());
    }
    let mut out = Vec::new();
    // One measurement of whether polling pays per connection (fuse/spin.rs).
    let tuner = Arc::new(Tuner::default());
    for (i, fd) in fds.iter().enumerate() {
        let (fd, h, tuner) = (fd.clone(), handler.clone(), tuner.clone());
        out.push(std::thread::Builder::new().name(format!("fuse-{i}")).spawn(move || worker(&fd, &*h, spin, &tuner))?);
    }
    Ok(out)
}

/// Detaches the mount at `mountpoint`. Bind mounts made from it elsewhere keep the
/// connection until they go too.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let target =
        CString::new(mountpoint.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads one request into `buf`; `Ok(None)` when the connection is gone.
fn read_request(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) if STOPPING.load(Ordering::SeqCst) => return Err(e),
            // ENOENT: the request was interrupted before we read it.
            Some(libc::EINTR) | Some(libc::ENOENT) => continue,
            Some(libc::ENODEV) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Writes a reply; a vanished request (the reader was interrupted) is not an error.
fn write_reply(fd: RawFd, unique: u64, reply: Reply) {
    let (err, body) = match reply {
        Reply::None => return,
        Reply::Data(d) => (0i32, d),
        Reply::Err(e) => (-e.0, Vec::new()),
    };
    let mut o = Out(Vec::with_capacity(abi::OUT_HEADER_LEN + body.len()));
    o.u32((abi::OUT_HEADER_LEN + body.len()) as u32).u32(err as u32).u64(unique);
    o.0.extend_from_slice(&body);
    // SAFETY: the buffer is valid for reads of its length.
    let n = unsafe { libc::write(fd, o.0.as_ptr().cast(), o.0.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            tracing::debug!(error = %e, unique, "reply not delivered");
        }
    }
}

/// Waits for FUSE_INIT on a freshly mounted fd and answers it.
fn init(fd: RawFd, uring: bool) -> io::Result<InitParams> {
    let mut buf = vec![0u8; abi::READ_BUFFER];
    loop {
        let Some(n) = read_request(fd, &mut buf)? else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "connection closed before FUSE_INIT"));
        };
        let Some(h) = InHeader::parse(&buf[..n]) else {
            continue;
        };
        let body = abi::Body(&buf[abi::IN_HEADER_LEN.min(n)..n]);
        if h.opcode != abi::op::INIT {
            write_reply(fd, h.unique, Reply::err(libc::EIO));
            continue;
        }
        let (major, minor, readahead, flags) =
            (body.u32(0).unwrap_or(0), body.u32(4).unwrap_or(0), body.u32(8).unwrap_or(0), body.u32(12).unwrap_or(0));
        if major != abi::KERNEL_VERSION {
            write_reply(fd, h.unique, Reply::err(libc::EPROTO));
            return Err(io::Error::new(io::ErrorKind::Unsupported, format!("FUSE protocol {major}.{minor}")));
        }
        let flags2 = body.u32(16).unwrap_or(0);
        // io_uring (flags2 bit 9) needs the extended flags (FUSE_INIT_EXT) and protocol 7.42.
        let uring = cfg!(feature = "uring-bench")
            && uring
            && flags & abi::FUSE_INIT_EXT != 0
            && flags2 & abi::FUSE_OVER_IO_URING_2 != 0;
        let (minor, mut accepted) = match uring {
            true => (minor.min(42), abi::FUSE_INIT_EXT),
            false => (minor.min(abi::KERNEL_MINOR_VERSION), 0),
        };
        // AUTO_INVAL_DATA serves the cached tree (fuse/cached.rs); the shared tree's files are
        // direct I/O and never in the page cache, so it changes nothing there.
        accepted |= flags & (abi::FUSE_PARALLEL_DIROPS | abi::FUSE_AUTO_INVAL_DATA);
        let params = InitParams { minor, flags: accepted };
        let mut o = Out::default();
        o.u32(abi::KERNEL_VERSION).u32(params.minor).u32(readahead).u32(params.flags);
        o.u16(16).u16(12).u32(abi::MAX_WRITE).u32(1); // max_background, congestion, max_write, time_gran
        o.u16(0).u16(0).u32(if uring { abi::FUSE_OVER_IO_URING_2 } else { 0 }); // max_pages, map_alignment, flags2
        o.u32(0).u16(0).zeros(22); // max stack depth, request timeout, unused
        write_reply(fd, h.unique, Reply::Data(o.0));
        return Ok(params);
    }
}

fn worker(fd: &OwnedFd, handler: &dyn Handler, spin: std::time::Duration, tuner: &Tuner) {
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    THREADS.lock().push(me);
    serve(fd, handler, spin, tuner);
    THREADS.lock().retain(|t| *t != me);
}

fn serve(fd: &OwnedFd, handler: &dyn Handler, spin: std::time::Duration, tuner: &Tuner) {
    let fd = fd.as_raw_fd();
    let mut buf = vec![0u8; abi::READ_BUFFER];
    // Polling reads are non-blocking; a thread that stops polling blocks in read(2), where
    // the kernel wakes one waiter per request (poll(2) would wake every idle thread).
    let mut spin = Spin::new(fd, spin, tuner);
    loop {
        if STOPPING.load(Ordering::SeqCst) {
            // Everything this thread read is answered: take nothing more.
            PARKED.fetch_add(1, Ordering::SeqCst);
            loop {
                std::thread::park();
            }
        }
        let n = match read_request(fd, &mut buf) {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                // Nothing queued: the same reader's next request usually follows within
                // microseconds; poll a little more or sleep (fuse/spin.rs).
                spin.idle();
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading /dev/fuse failed; worker stops");
                return;
            }
        };
        spin.arrived();
        let Some(h) = InHeader::parse(&buf[..n]) else {
            continue;
        };
        let end = (h.len as usize).min(n);
        let body = &buf[abi::IN_HEADER_LEN.min(end)..end];
        let reply = handler.dispatch(&h, body);
        write_reply(fd, h.unique, reply);
        spin.replied();
    }
}

/// State of a mount point before serving on it.
#[derive(Debug, PartialEq, Eq)]
pub enum MountpointState {
    /// Nothing mounted, empty or missing directory: ready.
    Free,
    /// A FUSE mount whose daemon is gone (`ENOTCONN`); it can be detached.
    Stale,
    /// A live cgprocfs (or other FUSE) mount.
    Served,
    /// A directory with content that is not ours to hide.
    NotEmpty,
}

/// Classifies `mountpoint` from `mountinfo` text and the directory itself.
pub fn mountpoint_state(mountpoint: &Path, mountinfo: &str) -> MountpointState {
    let at = mountpoint.to_string_lossy();
    let mounted_fuse =
        crate::mountinfo::entries(mountinfo).any(|e| e.mount_point == at && e.fstype.starts_with("fuse"));
    if mounted_fuse {
        // statfs always reaches the daemon, where stat may be answered from cached attributes.
        return match nix::sys::statfs::statfs(mountpoint) {
            Err(nix::errno::Errno::ENOTCONN) => MountpointState::Stale,
            _ => MountpointState::Served,
        };
    }
    match std::fs::read_dir(mountpoint) {
        Ok(mut d) => match d.next() {
            Some(_) => MountpointState::NotEmpty,
            None => MountpointState::Free,
        },
        Err(_) => MountpointState::Free,
    }
}
