//! File descriptor plumbing shared by the keeper, the worker and the seccomp agent.

use std::os::fd::RawFd;

/// Marks an inherited fd close-on-exec again: an upgrade clears the flag to pass it on, and
/// the new keeper must not leak it into every process it starts (a drain holding the FUSE fd
/// would keep the connection alive with nobody answering).
pub fn cloexec(fd: RawFd) {
    // SAFETY: fcntl on an fd number; a bad one only returns EBADF.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}
