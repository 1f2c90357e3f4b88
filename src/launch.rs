//! `cgprocfs run`: run a command in a transient cgroup with limits, in its own mount namespace
//! with the views bound over `/proc` and `/sys`, and remove what was created afterwards.
//!
//! Cgroups are created with plain file writes rather than cgroups-rs, which assumes the unified
//! tree at `/sys/fs/cgroup` (wrong on hybrid hosts) and swallows write errors.

use crate::cgroup::Hierarchies;
use crate::Root;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Limits of the transient cgroup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunLimits {
    /// Memory limit, bytes.
    pub memory: Option<u64>,
    /// Swap allowed on top of the memory limit, bytes (v2 `memory.swap.max`; v1
    /// `memory.memsw.limit_in_bytes` = memory + swap, so it needs a memory limit).
    pub swap: Option<u64>,
    /// CPU quota in CPUs (1.5 = 150 ms per 100 ms period).
    pub cpus: Option<f64>,
    /// Cpuset, kernel list format.
    pub cpuset: Option<String>,
    /// Maximum number of tasks.
    pub pids: Option<u64>,
}

/// Parses a size with an optional K/M/G/T suffix (binary units), e.g. `256M`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?} (examples: 268435456, 256M, 1G)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

/// A transient cgroup in every hierarchy the views read (v1 memory, cpu, cpuacct, cpuset,
/// pids, blkio and, on a hybrid host, the unified tree; or the v2 tree with the controllers
/// enabled), with limits; nested ones with [`Transient::child`]. Removed on drop: whatever
/// still runs in it is ended first (it was started through it), so drop children first.
pub struct Transient {
    /// (hierarchy, directory): a v1 controller's name, `unified` for the v2 tree of a hybrid
    /// host, or empty on a pure v2 host, where the directory carries every controller.
    pub dirs: Vec<(&'static str, PathBuf)>,
}

fn write(p: &Path, v: &str) -> io::Result<()> {
    std::fs::write(p, v).map_err(|e| io::Error::new(e.kind(), format!("cannot write {v:?} to {}: {e}", p.display())))
}

/// v2 controllers enabled for the children of a cgroup that holds transient ones.
const V2_CONTROLLERS: &str = "+memory +cpu +cpuset +pids +io";

impl Transient {
    /// Creates `name` under the top of each hierarchy and applies `l`.
    pub fn create(name: &str, l: &RunLimits) -> io::Result<Transient> {
        let h = Hierarchies::discover(&Root::new("/")).map_err(io::Error::other)?;
        let mut tops: Vec<(&'static str, PathBuf)> = Vec::new();
        for c in ["memory", "cpu", "cpuacct", "cpuset", "pids", "blkio"] {
            // Co-mounted controllers (cpu,cpuacct) share one directory.
            if let Some(m) = h.v1_mount(c).filter(|m| !tops.iter().any(|(_, t)| t == m)) {
                tops.push((c, m.to_path_buf()));
            }
        }
        if let Some(top) = h.v2_mount() {
            tops.push((if tops.is_empty() { "" } else { "unified" }, top.to_path_buf()));
        }
        Self::make(tops.into_iter().map(|(c, t)| (c, t.join(name))).collect(), l)
    }

    /// A cgroup `name` nested in this one, with its own limits.
    pub fn child(&self, name: &str, l: &RunLimits) -> io::Result<Transient> {
        Self::make(self.dirs.iter().map(|(c, d)| (*c, d.join(name))).collect(), l)
    }

    fn make(dirs: Vec<(&'static str, PathBuf)>, l: &RunLimits) -> io::Result<Transient> {
        let mut t = Transient { dirs: Vec::new() };
        for (c, d) in dirs {
            let parent = d.parent().ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            if c.is_empty() {
                // Pure v2: the parent must hand the controllers down first.
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), V2_CONTROLLERS);
            }
            std::fs::create_dir(&d).map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", d.display())))?;
            t.dirs.push((c, d.clone()));
            if c == "cpuset" {
                // v1 cpusets refuse tasks until cpus and mems are set.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    write(&d.join(f), std::fs::read_to_string(parent.join(f))?.trim())?;
                }
            }
            let v2 = c.is_empty();
            if let (Some(b), true) = (l.memory, v2 || c == "memory") {
                write(&d.join(if v2 { "memory.max" } else { "memory.limit_in_bytes" }), &b.to_string())?;
            }
            if let (Some(sw), true) = (l.swap, v2 || c == "memory") {
                if v2 {
                    write(&d.join("memory.swap.max"), &sw.to_string())?;
                } else {
                    let mem = l.memory.ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidInput, "a swap limit needs a memory limit on cgroup v1")
                    })?;
                    write(&d.join("memory.memsw.limit_in_bytes"), &mem.saturating_add(sw).to_string())?;
                }
            }
            if let (Some(cpus), true) = (l.cpus, v2 || c == "cpu") {
                let quota = (cpus * 100_000.0).round().max(1000.0) as u64;
                if v2 {
                    write(&d.join("cpu.max"), &format!("{quota} 100000"))?;
                } else {
                    write(&d.join("cpu.cfs_period_us"), "100000")?;
                    write(&d.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
            if let (Some(set), true) = (&l.cpuset, v2 || c == "cpuset") {
                write(&d.join("cpuset.cpus"), set)?;
            }
            if let (Some(p), true) = (l.pids, v2 || c == "pids") {
                write(&d.join("pids.max"), &p.to_string())?;
            }
        }
        Ok(t)
    }

    /// `cgroup.procs` of every directory, for a child to join before exec.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs.iter().filter_map(|(_, d)| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok()).collect()
    }
}

impl Drop for Transient {
    fn drop(&mut self) {
        // Processes the command left behind are its own descendants: end them so the cgroup
        // can be removed.
        for (_, d) in &self.dirs {
            for pid in std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: plain kill(2) of a process inside the cgroup this run created.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for (_, d) in &self.dirs {
            // Tasks just exited may keep a cgroup busy for a moment.
            for _ in 0..200 {
                match std::fs::remove_dir(d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    _ => break,
                }
            }
        }
    }
}

/// What a bind mount of `run` shows: a fixed served path, or one of the command's own cached
/// files, whose directory is named after the command's pid and start time, known only in the
/// child (`<dir>/<pid>-<start><rest>`, fs/cached.rs).
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
/// live cached tree), the files are the command's own cached ones; the cpu directory is
/// always the shared one.
pub fn bind_pairs(mountpoint: &Path, cache: Option<&Path>) -> Vec<(Source, CString)> {
    crate::catalog::bind_targets()
        .into_iter()
        .filter(|p| Path::new("/").join(p).exists())
        .filter_map(|p| {
            let src = match cache {
                Some(c) if p != crate::catalog::CPU_DIR => {
                    let mut dir = c.as_os_str().as_bytes().to_vec();
                    dir.push(b'/');
                    Source::Keyed { dir, rest: format!("/{p}").into_bytes() }
                }
                _ => Source::Fixed(CString::new(mountpoint.join(p).as_os_str().as_bytes()).ok()?),
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

    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("256M"), Ok(256 << 20));
        assert_eq!(super::parse_size("1g"), Ok(1 << 30));
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert!(super::parse_size("x").is_err());
        assert!(super::parse_size("99999999999T").is_err());
    }
}
