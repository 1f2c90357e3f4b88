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

pub mod agent;

use crate::service::Service;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// `SECCOMP_IOCTL_NOTIF_RECV` = `_IOWR('!', 0, struct seccomp_notif)`.
pub const IOCTL_NOTIF_RECV: u64 = 0xC050_2100;
/// `SECCOMP_IOCTL_NOTIF_SEND` = `_IOWR('!', 1, struct seccomp_notif_resp)`.
pub const IOCTL_NOTIF_SEND: u64 = 0xC018_2101;
/// `SECCOMP_IOCTL_NOTIF_ID_VALID` = `_IOW('!', 2, __u64)`.
pub const IOCTL_NOTIF_ID_VALID: u64 = 0x4008_2102;
/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS` = `_IOW('!', 4, __u64)` (Linux 6.6+).
pub const IOCTL_NOTIF_SET_FLAGS: u64 = 0x4008_2104;
/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`: the caller hands its CPU to the listener and back
/// instead of waking a thread elsewhere.
pub const FD_SYNC_WAKE_UP: u64 = 1;
/// Run the real system call (Linux 5.5+).
pub const FLAG_CONTINUE: u32 = 1;

/// The audit architecture of native system calls; notifications from another (a 32-bit
/// process: different numbers and struct layouts) are passed through.
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH_NATIVE: u32 = 0xC000_003E;
/// The audit architecture of native system calls.
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH_NATIVE: u32 = 0xC000_00B7;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("seccomp notification answers are written for x86_64 and aarch64");

/// `struct seccomp_data`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SeccompData {
    /// System call number.
    pub nr: i32,
    /// `AUDIT_ARCH_*` of the call.
    pub arch: u32,
    /// Instruction pointer.
    pub instruction_pointer: u64,
    /// Arguments.
    pub args: [u64; 6],
}

/// `struct seccomp_notif`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Notif {
    /// Cookie of this notification.
    pub id: u64,
    /// The calling thread, in the listener's pid namespace.
    pub pid: u32,
    /// Unused.
    pub flags: u32,
    /// The call.
    pub data: SeccompData,
}

/// `struct seccomp_notif_resp`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resp {
    /// The notification answered.
    pub id: u64,
    /// Return value of the call.
    pub val: i64,
    /// Negative errno, or 0.
    pub error: i32,
    /// [`FLAG_CONTINUE`] or 0.
    pub flags: u32,
}

impl Resp {
    /// Run the real system call.
    pub fn continue_(id: u64) -> Resp {
        Resp { id, val: 0, error: 0, flags: FLAG_CONTINUE }
    }
}

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

/// Why a call was passed through instead of answered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a call this listener answers.
    #[error("system call {0} is not answered")]
    NotOurs(i32),
    /// The caller's container or numbers could not be found.
    #[error(transparent)]
    Service(#[from] crate::Error),
    /// The answer could not be written into the caller.
    #[error("cannot write the answer into pid {pid}: {source}")]
    Write {
        /// The caller.
        pid: u32,
        /// The cause.
        source: io::Error,
    },
    /// The answer would land in file-backed or shared memory: the real call runs instead.
    #[error("the buffer at {0:#x} is not private anonymous memory")]
    Unsafe(u64),
    /// The kernel would fail the call with this errno; answered so.
    #[error("the kernel answers errno {0}")]
    Errno(i32),
    /// The caller is gone or the notification was already answered.
    #[error("notification {0} is no longer valid")]
    Stale(u64),
}

fn ioctl(fd: RawFd, req: u64, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: every request passes a pointer to the struct its number encodes.
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives one pending notification from `fd`.
pub fn recv(fd: RawFd) -> io::Result<Notif> {
    // The kernel rejects a buffer that is not zeroed.
    let mut n = Notif::default();
    ioctl(fd, IOCTL_NOTIF_RECV, &mut n as *mut Notif as *mut _)?;
    Ok(n)
}

/// Sends the answer to a notification.
pub fn send(fd: RawFd, resp: Resp) -> io::Result<()> {
    let mut r = resp;
    ioctl(fd, IOCTL_NOTIF_SEND, &mut r as *mut Resp as *mut _)
}

/// Asks for synchronous wake-ups on `fd` (Linux 6.6+; older kernels refuse, and the call
/// then just costs a cross-CPU wake-up more).
pub fn sync_wake_up(fd: RawFd) {
    let mut flags = FD_SYNC_WAKE_UP;
    if let Err(e) = ioctl(fd, IOCTL_NOTIF_SET_FLAGS, &mut flags as *mut u64 as *mut _) {
        tracing::debug!(error = %e, "seccomp: no synchronous wake-up");
    }
}

/// Whether notification `id` still waits for an answer (its caller is alive and blocked).
pub fn id_valid(fd: RawFd, id: u64) -> bool {
    let mut id = id;
    ioctl(fd, IOCTL_NOTIF_ID_VALID, &mut id as *mut u64 as *mut _).is_ok()
}

/// Whether `fd` is a seccomp notification fd (so a client of the agent socket cannot make us
/// poll and ioctl some other file).
pub fn is_notify_fd(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok_and(|p| p.as_os_str() == "anon_inode:seccomp notify")
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
            let cpus = svc.visible_cpus(&c.cgroups)?;
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
    let resp = match answer(policy, fd, n) {
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
                crate::fd::cloexec(fd);
                // SAFETY: inherited across exec for this process to own.
                Some(unsafe { OwnedFd::from_raw_fd(fd) })
            } else {
                tracing::warn!(fd, "not a seccomp notification fd; ignored");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
