//! The child side of `cgprocfs run`, between fork and exec: join the cgroups, enter a private
//! mount namespace, bind the views, install the seccomp filter. Everything here is prepared
//! before fork and runs with async-signal-safe calls only.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What a bind mount of `run` shows: a fixed served path, or one of the command's own cached
/// files, whose directory is named after the command's pid and start time, known only in the
/// child (`<dir>/<pid>-<start><rest>`, fuse/cached.rs).
pub enum Source {
    /// A path of the shared tree.
    Fixed(CString),
    /// A file of the cached tree: the path before and after the key.
    Keyed {
        /// `<cache>/`.
        dir: Vec<u8>,
        /// `/proc/meminfo`.
        rest: Vec<u8>,
    },
}

/// Pairs of (what is bound, host path it is bound over), prepared before fork. With `cache` (a
/// live cached tree), the files are the command's own cached ones; with `psi` (a live trigger
/// connection) the pressure files come from it; the cpu directory is always the shared one.
pub fn bind_pairs(mountpoint: &Path, cache: Option<&Path>, psi: Option<&Path>) -> Vec<(Source, CString)> {
    use crate::catalog::{bind_from, BindFrom};
    let fixed = |dir: &Path, p: &str| CString::new(dir.join(p).as_os_str().as_bytes()).ok().map(Source::Fixed);
    crate::catalog::bind_targets()
        .into_iter()
        .filter(|p| Path::new("/").join(p).exists())
        .filter_map(|p| {
            let src = match (bind_from(p), cache, psi) {
                (BindFrom::Cached, Some(c), _) => {
                    let mut dir = c.as_os_str().as_bytes().to_vec();
                    dir.push(b'/');
                    Source::Keyed { dir, rest: format!("/{p}").into_bytes() }
                }
                (BindFrom::Trigger, _, Some(t)) => fixed(t, p)?,
                _ => fixed(mountpoint, p)?,
            };
            let dst = CString::new(format!("/{p}")).ok()?;
            Some((src, dst))
        })
        .collect()
}

/// This process's start time in clock ticks (`/proc/self/stat` field 22), read without
/// allocating (it runs between fork and exec).
fn own_start_ticks() -> Option<u64> {
    let mut buf = [0u8; 1024];
    // SAFETY: raw syscalls on a stack buffer.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/stat".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let text = buf.get(..usize::try_from(n).ok()?)?;
    let after = &text[text.iter().rposition(|&b| b == b')')? + 1..];
    let field = after.split(|&b| b == b' ').filter(|f| !f.is_empty()).nth(19)?;
    field.iter().try_fold(0u64, |v, &d| d.is_ascii_digit().then(|| v * 10 + u64::from(d - b'0')))
}

/// Appends the decimal digits of `v` to `out` at `at`; the new end, or `None` if it does not fit.
fn put_decimal(out: &mut [u8], at: usize, v: u64) -> Option<usize> {
    let mut digits = [0u8; 20];
    let (mut v, mut k) = (v, 0);
    loop {
        digits[k] = b'0' + (v % 10) as u8;
        k += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let end = at.checked_add(k)?;
    let slot = out.get_mut(at..end)?;
    for (i, d) in digits[..k].iter().rev().enumerate() {
        slot[i] = *d;
    }
    Some(end)
}

/// `<dir><pid>-<start><rest>\0` into `out`, without allocating.
fn keyed_path<'a>(out: &'a mut [u8], dir: &[u8], rest: &[u8], pid: u64, start: u64) -> Option<&'a std::ffi::CStr> {
    let mut at = dir.len();
    out.get_mut(..at)?.copy_from_slice(dir);
    at = put_decimal(out, at, pid)?;
    *out.get_mut(at)? = b'-';
    at = put_decimal(out, at + 1, start)?;
    out.get_mut(at..at + rest.len())?.copy_from_slice(rest);
    *out.get_mut(at + rest.len())? = 0;
    std::ffi::CStr::from_bytes_with_nul(&out[..=at + rest.len()]).ok()
}

/// Runs in the child between fork and exec: joins the cgroups, enters a private mount
/// namespace and binds the views. Only async-signal-safe calls on pre-built strings and
/// stack buffers.
pub fn enter(procs: &[CString], binds: &[(Source, CString)]) -> io::Result<()> {
    // SAFETY: raw syscalls on valid NUL-terminated strings; no allocation.
    unsafe {
        for p in procs {
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let r = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if r != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(io::Error::last_os_error());
        }
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let start = own_start_ticks();
        let mut buf = [0u8; 4096];
        for (src, dst) in binds {
            let path = match src {
                Source::Fixed(p) => p.as_c_str(),
                Source::Keyed { dir, rest } => {
                    let start = start.ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
                    keyed_path(&mut buf, dir, rest, u64::from(libc::getpid() as u32), start)
                        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?
                }
            };
            if libc::mount(path.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// A seccomp filter that notifies `sysinfo` (and, with `affinity`, `sched_getaffinity`) of
/// the native architecture and allows everything else: what the packaged profile does for a
/// container, for the command `cgprocfs run` starts. Built before fork.
pub struct NotifyFilter {
    prog: Vec<libc::sock_filter>,
    /// The child's end of the socket pair its listener fd goes back to the parent over.
    pub chan: std::os::fd::RawFd,
}

impl NotifyFilter {
    /// The filter, sending its listener over `chan`.
    pub fn new(affinity: bool, chan: std::os::fd::RawFd) -> NotifyFilter {
        const LD_W_ABS: u16 = 0x20;
        const JEQ_K: u16 = 0x15;
        const RET_K: u16 = 0x06;
        const RET_ALLOW: u32 = 0x7fff_0000;
        const RET_USER_NOTIF: u32 = 0x7fc0_0000;
        let st = |code, k| libc::sock_filter { code, jt: 0, jf: 0, k };
        let mut calls = vec![libc::SYS_sysinfo as u32];
        if affinity {
            calls.push(libc::SYS_sched_getaffinity as u32);
        }
        let n = calls.len() as u8;
        // 0: arch; 1: native? else allow; 2: nr; 3..3+n: notify?; then allow, notify.
        let mut prog = vec![
            st(LD_W_ABS, 4),
            libc::sock_filter { code: JEQ_K, jt: 0, jf: n + 1, k: crate::seccomp::abi::AUDIT_ARCH_NATIVE },
            st(LD_W_ABS, 0),
        ];
        for (i, nr) in calls.iter().enumerate() {
            prog.push(libc::sock_filter { code: JEQ_K, jt: n - i as u8, jf: 0, k: *nr });
        }
        prog.push(st(RET_K, RET_ALLOW));
        prog.push(st(RET_K, RET_USER_NOTIF));
        NotifyFilter { prog, chan }
    }

    /// In the child between fork and exec, last: installs the filter with a new listener and
    /// sends the listener fd over `chan`. Only raw system calls on memory built before fork.
    /// A failure leaves the command without the filter (its calls run for real).
    pub fn install(&self) {
        let fprog = libc::sock_fprog { len: self.prog.len() as u16, filter: self.prog.as_ptr() as *mut _ };
        // SAFETY: raw syscalls on stack memory and the program built before fork.
        unsafe {
            let fd = libc::syscall(libc::SYS_seccomp, 1, 8, &fprog as *const libc::sock_fprog);
            if fd < 0 {
                libc::close(self.chan);
                return;
            }
            let fd = fd as libc::c_int;
            let mut byte = [b'f'];
            let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
            let mut cbuf = [0u64; 4];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd);
            libc::sendmsg(self.chan, &msg, libc::MSG_NOSIGNAL);
            libc::close(fd);
            libc::close(self.chan);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_keyed_path_is_built_in_place_and_never_overflows() {
        let mut buf = [0u8; 64];
        let p = super::keyed_path(&mut buf, b"/run/x.cache/", b"/proc/meminfo", 4321, 1_234_567).unwrap();
        assert_eq!(p.to_str().unwrap(), "/run/x.cache/4321-1234567/proc/meminfo");
        let mut small = [0u8; 20];
        assert!(super::keyed_path(&mut small, b"/run/x.cache/", b"/proc/meminfo", 4321, 1).is_none());
        assert!(super::own_start_ticks().is_some_and(|t| t > 0));
    }
}
