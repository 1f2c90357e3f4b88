//! The kernel's seccomp user-notification ABI (`include/uapi/linux/seccomp.h`): the ioctls,
//! the structs they carry, and why a call was passed through instead of answered.

use std::io;
use std::os::fd::RawFd;

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
