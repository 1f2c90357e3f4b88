//! System plumbing shared by the keeper, the worker, the seccomp agent and the handover: fd
//! flags, signal waits, fd passing over unix sockets (SCM_RIGHTS), and openat2(2).

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Marks an inherited fd close-on-exec again: an upgrade clears the flag to pass it on, and
/// the new keeper must not leak it into every process it starts (a drain holding the FUSE fd
/// would keep the connection alive with nobody answering).
pub fn cloexec(fd: RawFd) {
    // SAFETY: fcntl on an fd number; a bad one only returns EBADF.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
/// openat2(2): no crossing of a mount point.
pub const RESOLVE_NO_XDEV: u64 = 0x01;
/// openat2(2): no /proc magic link.
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
/// openat2(2): no symlink in any component.
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
/// openat2(2): never above the starting directory (`..` and absolute paths refused).
pub const RESOLVE_BENEATH: u64 = 0x08;
/// openat2(2): the starting directory is `/` for the lookup.
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// openat2(2) of `path` under `dir` with open `flags` (`O_CLOEXEC` always added) and `resolve`
/// restrictions.
pub fn openat2(dir: &OwnedFd, path: &Path, flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
    let how = OpenHow { flags: (flags | libc::O_CLOEXEC) as u64, mode: 0, resolve };
    // SAFETY: valid fd, NUL-terminated path and a struct of the size passed.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, dir.as_raw_fd(), p.as_ptr(), &how as *const OpenHow, size_of::<OpenHow>())
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A signal set of `sigs`.
pub fn signal_set(sigs: &[libc::c_int]) -> libc::sigset_t {
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
pub fn wait_signal(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<libc::c_int> {
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

/// Receives fds sent over `sock` with SCM_RIGHTS (with up to `buf.len()` bytes of data).
pub fn recv_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 16]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(v) = c {
            // SAFETY: the kernel installed these fds in this process for us.
            fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok((msg.bytes, fds))
}

/// Sends `fds` over `sock` with `data` (at least one byte: a message without data is not
/// delivered on a stream socket).
pub fn send_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [io::IoSlice::new(data)];
    sendmsg::<()>(sock, &iov, &[ControlMessage::ScmRights(fds)], MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Open files the soft limit leaves after a reserve of 1 024 for everything a worker opens
/// itself (FUSE and seccomp fds, files it reads): the share PSI triggers and kept cgroup
/// directories are sized from.
pub fn spare_fds() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(s, _)| s);
    usize::try_from(soft).unwrap_or(usize::MAX).saturating_sub(1024)
}

/// The filesystem type (`f_type`: a `*_SUPER_MAGIC`) of open file `f`.
pub fn fs_type(f: &std::fs::File) -> Option<i64> {
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes one statfs into `st` for an fd this function borrows.
    let ok = unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } == 0;
    #[allow(clippy::unnecessary_cast)] // c_long: i64 here, i32 on 32-bit targets
    ok.then_some(st.f_type as i64)
}

/// The filesystem type of the file at `path` (not opened: a directory the caller may not read).
pub fn fs_type_at(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs of a NUL-terminated path into a local struct.
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0;
    #[allow(clippy::unnecessary_cast)] // c_long: i64 here, i32 on 32-bit targets
    ok.then_some(st.f_type as i64)
}

/// The whole text of seq_file `f` from offset 0, in `pread`s: a seq_file generates its text
/// afresh for a read at offset 0, so a file kept open reads what a new open would. With
/// `one_record`, a short read is the end ([`read_all`]).
pub fn pread_all(f: &std::fs::File, one_record: bool) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    read_all(|buf, at| f.read_at(buf, at), one_record)
}

/// The whole text of the file at `path`, like `std::fs::read_to_string` without the `fstat`
/// it makes for a size hint: procfs and cgroupfs files say 0 or 4096 whatever they hold, and
/// at thousands of reads a second the extra system call shows.
pub fn read_text(path: &Path) -> io::Result<String> {
    read_text_of(std::fs::File::open(path)?)
}

/// Reads `f` to its end in page-sized steps, as [`read_text`]. Invalid UTF-8 is
/// `InvalidData`, as from `read_to_string`.
pub fn read_text_of(mut f: std::fs::File) -> io::Result<String> {
    use std::io::Read;
    read_all(|buf, _| f.read(buf), false)
}

/// The text `read(buf, offset)` gives until it returns 0, read in page-sized steps at growing
/// offsets (a `read` or a `pread`). Invalid UTF-8 is `InvalidData`.
///
/// With `one_record`, a read shorter than asked is the end: so it is for a seq_file of one
/// record (a cgroup file other than the process lists, a `/proc/<pid>` file), for which the
/// kernel generates the whole record and copies as much of it as fits. That saves the read
/// that would return 0, a system call per read at thousands of reads a second.
pub fn read_all(mut read: impl FnMut(&mut [u8], u64) -> io::Result<usize>, one_record: bool) -> io::Result<String> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let asked = buf.len() - len;
        match read(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) if one_record && n < asked => {
                len += n;
                break;
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
