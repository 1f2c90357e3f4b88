//! What a notified call is answered: `sysinfo` with the container's numbers, and
//! `sched_getaffinity` with a mask of its visible CPUs; everything else runs for real.

use super::abi::*;
use crate::service::Service;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

/// How a listener answers.
#[derive(Clone)]
pub enum Policy {
    /// Every call runs for real: the daemon is stopping and only keeps containers' calls
    /// from failing with `ENOSYS` (what the kernel answers once no listener holds the fd).
    Continue,
    /// Answer for the caller's container.
    Serve {
        /// The read path shared with the FUSE views.
        svc: Arc<Service>,
        /// Also answer `sched_getaffinity(0, ...)` with the visible CPUs.
        affinity: bool,
    },
}

/// Where an answer of `len` bytes at `addr` would land, from the caller's `/proc/<tid>/maps`.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// Private, writable, anonymous memory (stack, heap, anonymous mappings): written by us.
    Private,
    /// Unmapped or not writable: the kernel's `copy_to_user` would fail with `EFAULT`.
    Fault,
    /// Writable but backed by a file or shared: the page may have to be read from a file
    /// (FUSE, NFS) first, which can block; the kernel runs the real call instead.
    Backed,
}

/// Classifies `[addr, addr + len)` against a `maps` text: every byte must be covered.
pub fn classify(maps: &str, addr: u64, len: u64) -> Target {
    let end = addr.saturating_add(len);
    let mut at = addr;
    let mut backed = false;
    for line in maps.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(_off), Some(_dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some((lo, hi)) = range.split_once('-') else { continue };
        let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) else { continue };
        if hi <= at || lo >= end {
            continue;
        }
        if lo > at {
            return Target::Fault; // a hole before this mapping
        }
        let p = perms.as_bytes();
        if p.get(1) != Some(&b'w') {
            return Target::Fault;
        }
        if p.get(3) != Some(&b'p') || inode != "0" {
            backed = true;
        }
        at = hi;
        if at >= end {
            break;
        }
    }
    match (at >= end, backed) {
        (false, _) => Target::Fault,
        (true, true) => Target::Backed,
        (true, false) => Target::Private,
    }
}

/// Writes `bytes` at `addr` in `pid`'s memory, checking first that the notification is still
/// the one `pid` is blocked in: the pid cannot then have been reused by another process,
/// because the mem file opened before the check pins the process it was opened for. Only
/// where the kernel itself would write without blocking on a file ([`classify`]): the mem
/// file ignores page protection, and a fault on a FUSE- or NFS-backed page would hold this
/// thread for as long as that server likes.
fn write_answer(fd: RawFd, n: &Notif, addr: u64, bytes: &[u8]) -> Result<(), Error> {
    use std::os::unix::fs::FileExt;
    let err = |source| Error::Write { pid: n.pid, source };
    let mem = std::fs::OpenOptions::new().write(true).open(format!("/proc/{}/mem", n.pid)).map_err(err)?;
    if !id_valid(fd, n.id) {
        return Err(Error::Stale(n.id));
    }
    // The notification is still pending, so the tid is still the caller's.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", n.pid)).map_err(err)?;
    match classify(&maps, addr, bytes.len() as u64) {
        Target::Private => {}
        Target::Fault => return Err(Error::Errno(libc::EFAULT)),
        Target::Backed => return Err(Error::Unsafe(addr)),
    }
    let wrote = mem.write_at(bytes, addr).map_err(err)?;
    if wrote != bytes.len() {
        return Err(err(io::Error::from(io::ErrorKind::WriteZero)));
    }
    Ok(())
}

/// The return value for `n`, having written its answer into the caller, or why the real call
/// should run instead.
fn answer(policy: &Policy, fd: RawFd, n: &Notif) -> Result<i64, Error> {
    let Policy::Serve { svc, affinity } = policy else { return Err(Error::NotOurs(n.data.nr)) };
    if n.data.arch != AUDIT_ARCH_NATIVE {
        return Err(Error::NotOurs(n.data.nr));
    }
    match i64::from(n.data.nr) {
        libc::SYS_sysinfo => {
            let c = svc.container_of(n.pid)?;
            let info = svc.sysinfo(&c)?;
            write_answer(fd, n, n.data.args[0], &info.encode())?;
            Ok(0)
        }
        libc::SYS_sched_getaffinity if *affinity => {
            // Another thread's mask (pid != 0) is the kernel's business.
            let (pid, len, addr) = (n.data.args[0] as i32, n.data.args[1], n.data.args[2]);
            if pid != 0 {
                return Err(Error::NotOurs(n.data.nr));
            }
            let c = svc.container_of(n.pid)?;
            let cpus = svc.sampler().visible_cpus(&c)?;
            let mask = affinity_answer(len, nr_cpu_ids(), kernel_mask_size(), &cpus).map_err(Error::Errno)?;
            write_answer(fd, n, addr, &mask)?;
            Ok(mask.len() as i64)
        }
        nr => Err(Error::NotOurs(nr as i32)),
    }
}

/// What `sched_getaffinity(0, len, buf)` copies out for a caller seeing `cpus`, exactly as
/// the kernel decides it (`kernel/sched/core.c`): `EINVAL` when `len * 8 < nr_cpu_ids` or `len`
/// is not a multiple of `sizeof(long)`; else `min(len, cpumask_size)` bytes, which is also the
/// return value. Never more than `len` bytes: the caller's buffer is that long.
pub fn affinity_answer(len: u64, nr_cpu_ids: usize, mask_size: usize, cpus: &[u32]) -> Result<Vec<u8>, i32> {
    let long = std::mem::size_of::<libc::c_ulong>() as u64;
    if len.saturating_mul(8) < nr_cpu_ids as u64 || len % long != 0 {
        return Err(libc::EINVAL);
    }
    Ok(cpu_mask(cpus, len.min(mask_size as u64) as usize))
}

/// The kernel's `nr_cpu_ids`: one more than the highest possible CPU.
fn nr_cpu_ids() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .ok()
            .and_then(|t| crate::cgroup::cpuset::parse_list(std::path::Path::new("possible"), &t).ok())
            .and_then(|l| l.iter().max().map(|&m| m as usize + 1))
            .unwrap_or(1)
    })
}

/// The bytes `sched_getaffinity` copies out (`cpumask_size()`), learnt by asking for our own.
fn kernel_mask_size() -> usize {
    static SIZE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        let mut buf = [0u8; 8192];
        // SAFETY: the buffer is as long as the length passed.
        let r = unsafe { libc::syscall(libc::SYS_sched_getaffinity, 0, buf.len(), buf.as_mut_ptr()) };
        if r > 0 {
            r as usize
        } else {
            buf.len()
        }
    })
}

/// A CPU mask of `size` bytes with the bits of `cpus` set.
pub fn cpu_mask(cpus: &[u32], size: usize) -> Vec<u8> {
    let mut m = vec![0u8; size];
    for &c in cpus {
        if let Some(b) = m.get_mut(c as usize / 8) {
            *b |= 1 << (c % 8);
        }
    }
    m
}

/// Answers notification `n`, received from `fd`. Errors of the caller's side (it died, it was
/// interrupted) are normal and only logged at debug level.
pub fn answer_one(policy: &Policy, fd: RawFd, n: &Notif) {
    let answered = answer(policy, fd, n);
    if let Policy::Serve { svc, .. } = policy {
        let counter = match answered {
            Ok(_) | Err(Error::Errno(_)) => &svc.stats.seccomp_answered,
            Err(_) => &svc.stats.seccomp_continued,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let resp = match answered {
        Ok(val) => Resp { id: n.id, val, error: 0, flags: 0 },
        Err(Error::Errno(e)) => Resp { id: n.id, val: 0, error: -e, flags: 0 },
        Err(e) => {
            // A drain passes everything through: nothing worth a line.
            if matches!(policy, Policy::Serve { .. }) {
                tracing::debug!(pid = n.pid, nr = n.data.nr, error = %e, "seccomp: running the real call");
            }
            Resp::continue_(n.id)
        }
    };
    if let Err(e) = send(fd, resp) {
        tracing::debug!(pid = n.pid, error = %e, "seccomp: answer not delivered (caller gone)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn abi_sizes_match_the_ioctl_numbers() {
        // _IOC size field (bits 16..30) of each request is the struct it carries.
        assert_eq!((IOCTL_NOTIF_RECV >> 16) & 0x3fff, std::mem::size_of::<Notif>() as u64);
        assert_eq!((IOCTL_NOTIF_SEND >> 16) & 0x3fff, std::mem::size_of::<Resp>() as u64);
        assert_eq!(std::mem::size_of::<Notif>(), 80);
        assert_eq!(std::mem::size_of::<Resp>(), 24);
    }

    #[test]
    fn cpu_mask_sets_the_visible_bits() {
        assert_eq!(cpu_mask(&[0, 1, 9], 8), vec![0b11, 0b10, 0, 0, 0, 0, 0, 0]);
        // CPUs beyond the mask are dropped rather than panicking.
        assert_eq!(cpu_mask(&[70], 8), vec![0; 8]);
    }

    #[test]
    fn affinity_answer_never_exceeds_the_buffer() {
        let cpus = [0, 1, 70];
        // A kernel whose cpumask_size is 1024 bytes (NR_CPUS 8192, no CPUMASK_OFFSTACK).
        for (len, nr, size) in [(8u64, 2usize, 1024usize), (16, 2, 1024), (128, 2, 1024), (128, 96, 16)] {
            let m = affinity_answer(len, nr, size, &cpus).unwrap();
            assert_eq!(m.len() as u64, len.min(size as u64), "len {len} nr_cpu_ids {nr} mask {size}");
            assert_eq!(m[0], 0b11);
        }
        // Simulated 96-CPU host: 8 bytes cannot hold nr_cpu_ids bits.
        assert_eq!(affinity_answer(8, 96, 16, &cpus), Err(libc::EINVAL));
        assert_eq!(affinity_answer(16, 96, 16, &cpus).unwrap()[8], 0b100_0000);
        // Not a multiple of sizeof(long).
        assert_eq!(affinity_answer(12, 2, 8, &cpus), Err(libc::EINVAL));
        assert_eq!(affinity_answer(0, 2, 8, &cpus), Err(libc::EINVAL));
    }

    #[test]
    fn answers_land_only_in_private_writable_anonymous_memory() {
        let maps = "1000-3000 rw-p 00000000 00:00 0 \n\
                    3000-4000 r--p 00000000 00:00 0 \n\
                    5000-6000 rw-p 00000000 00:2a 1234 /mnt/fuse/file\n\
                    6000-7000 rw-s 00000000 00:01 99 /dev/zero (deleted)\n\
                    7ffd000-7fff000 rw-p 00000000 00:00 0 [stack]\n";
        assert_eq!(classify(maps, 0x1000, 112), Target::Private);
        assert_eq!(classify(maps, 0x2fa0, 0x60), Target::Private);
        assert_eq!(classify(maps, 0x7ffe000, 112), Target::Private);
        assert_eq!(classify(maps, 0x2fa0, 0x100), Target::Fault, "runs into a read-only page");
        assert_eq!(classify(maps, 0x3000, 8), Target::Fault);
        assert_eq!(classify(maps, 0x4800, 8), Target::Fault, "unmapped");
        assert_eq!(classify(maps, 0x4ff0, 0x20), Target::Fault, "starts in a hole");
        assert_eq!(classify(maps, 0x5000, 112), Target::Backed);
        assert_eq!(classify(maps, 0x6000, 112), Target::Backed);
        assert_eq!(classify(maps, 0x6ff0, 0x20), Target::Fault, "ends past the mapping");
        assert_eq!(classify("garbage\n", 0x1000, 8), Target::Fault);
    }

    #[test]
    fn other_fds_are_not_notify_fds() {
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(!is_notify_fd(f.as_raw_fd()));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!is_notify_fd(a.as_raw_fd()));
    }

    #[test]
    fn continue_policy_never_answers() {
        let n = Notif {
            id: 7,
            data: SeccompData { nr: libc::SYS_sysinfo as i32, ..Default::default() },
            ..Default::default()
        };
        assert!(matches!(answer(&Policy::Continue, -1, &n), Err(Error::NotOurs(_))));
        assert_eq!(Resp::continue_(7), Resp { id: 7, val: 0, error: 0, flags: FLAG_CONTINUE });
    }
}
