//! Small plumbing shared by the keeper, the worker and the seccomp agent: file descriptors,
//! and the stable hash that names records and inodes.

use std::os::fd::RawFd;

/// FNV-1a of `s`: stable names and inode numbers from paths (the same across processes and
/// versions, which a worker restart or an upgrade relies on).
pub fn fnv(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Marks an inherited fd close-on-exec again: an upgrade clears the flag to pass it on, and
/// the new keeper must not leak it into every process it starts (a drain holding the FUSE fd
/// would keep the connection alive with nobody answering).
pub fn cloexec(fd: RawFd) {
    // SAFETY: fcntl on an fd number; a bad one only returns EBADF.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}
