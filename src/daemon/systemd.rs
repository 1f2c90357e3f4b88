//! The service manager holds the connection: under systemd (`Type=notify`) the keeper puts its
//! FUSE fds, the seccomp listener, every container's notification fd and its control socket
//! into the unit's fd store (`FDSTORE=1`), and a keeper started with them (`LISTEN_FDS`) adopts
//! them instead of mounting. So `systemctl restart` (the store outlives the stop while the
//! restart job is queued), `systemctl kill -s KILL` and an OOM kill (`Restart=on-failure`)
//! leave the mount and every container's binds in place; requests wait in the kernel until
//! the next keeper's worker answers them. The notify protocol is the `sd-notify` crate's.
//!
//! Store names: `fuse-<i>-<minor>-<flags>` (the INIT parameters travel with the connection),
//! `cache` (the cached tree's connection, fuse/cached.rs), `psi` (the trigger connection,
//! fuse/psi.rs), `seccomp-listener`, `seccomp-notify`, `control`. systemd drops a stored fd by
//! itself when it reports `POLLHUP`/`POLLERR`: a container's notification fd once it exited,
//! the FUSE fds once no mount uses the connection.

use super::Adopted;
use crate::fuse::session::InitParams;
use sd_notify::NotifyState;
use std::os::fd::{BorrowedFd, RawFd};

/// Whether a service manager listens for notifications.
pub fn managed() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn store(name: &str, fds: &[RawFd]) {
    if !managed() || fds.is_empty() {
        return;
    }
    // SAFETY: the fds stay open for the duration of the call (the caller holds them).
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) }).collect();
    // One FDNAME names every fd of its message; SCM_RIGHTS carries at most 253 fds.
    for fd in borrowed.chunks(250) {
        if let Err(e) = sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], fd) {
            tracing::warn!(name, error = %e, "cannot store an fd with the service manager");
        }
    }
}

/// Stores the connection's fds: the FUSE fds (with the INIT parameters in their names), the
/// seccomp listener and notification fds, the control listener. Storing an fd the store
/// already holds is a no-op for systemd.
pub fn store_connection(
    fuse: &[RawFd],
    cache: &[RawFd],
    psi: &[RawFd],
    params: InitParams,
    seccomp: Option<(RawFd, &[RawFd])>,
    control: Option<RawFd>,
) {
    if !managed() {
        return;
    }
    for (i, fd) in fuse.iter().enumerate() {
        store(&format!("fuse-{i}-{}-{}", params.minor, params.flags), &[*fd]);
    }
    // Their order does not matter: every cloned fd serves the same connection.
    store("cache", cache);
    store("psi", psi);
    if let Some((l, n)) = seccomp {
        store("seccomp-listener", &[l]);
        store("seccomp-notify", n);
    }
    if let Some(c) = control {
        store("control", &[c]);
    }
    tracing::info!(fuse = fuse.len(), "connection stored with the service manager");
}

/// Stores one more container's notification fd.
pub fn store_notify(fd: RawFd) {
    store("seccomp-notify", &[fd]);
}

/// Tells the service manager the mount answers (`READY=1`), or that a reload (an upgrade by
/// `exec`) begins.
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("serving")]) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// `RELOADING=1` before an upgrade; the upgraded keeper says `READY=1` again.
pub fn notify_reloading() {
    let _ = sd_notify::notify(&[NotifyState::Reloading]);
}

/// `STOPPING=1`.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// The connection a previous keeper of this unit left in the fd store, if any: adopted like an
/// upgrade's.
pub fn adopt_from_store() -> Option<Adopted> {
    let fds: Vec<(RawFd, String)> = match sd_notify::listen_fds_with_names() {
        Ok(it) => it.collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the fds the service manager passed");
            return None;
        }
    };
    parse_store(&fds)
}

/// Sorts stored fds by name into a connection to adopt; `None` without FUSE fds.
pub fn parse_store(fds: &[(RawFd, String)]) -> Option<Adopted> {
    let mut fuse: Vec<(usize, RawFd, InitParams)> = Vec::new();
    let (mut listener, mut notify, mut control) = (None, Vec::new(), None);
    let (mut cache, mut psi) = (Vec::new(), Vec::new());
    for (fd, name) in fds {
        let parts: Vec<&str> = name.split('-').collect();
        match parts.as_slice() {
            ["fuse", i, minor, flags] => {
                if let (Ok(i), Ok(minor), Ok(flags)) = (i.parse(), minor.parse(), flags.parse()) {
                    fuse.push((i, *fd, InitParams { minor, flags }));
                }
            }
            ["seccomp", "listener"] => listener = Some(*fd),
            ["seccomp", "notify"] => notify.push(*fd),
            ["control"] => control = Some(*fd),
            ["cache"] => cache.push(*fd),
            ["psi"] => psi.push(*fd),
            _ => tracing::warn!(fd, name, "an unknown fd in the store; ignored"),
        }
    }
    fuse.sort_by_key(|f| f.0);
    let params = fuse.first()?.2;
    Some(Adopted {
        fds: fuse.iter().map(|f| f.1).collect(),
        cache,
        psi,
        params,
        seccomp: listener.map(|l| (l, notify)),
        control,
        // The store does not count them: this adoption is the first it knows of.
        handovers: 0,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_fds_are_sorted_back_into_a_connection() {
        let names = [
            (7, "seccomp-notify"),
            (4, "fuse-1-41-99"),
            (3, "fuse-0-41-99"),
            (5, "seccomp-listener"),
            (8, "seccomp-notify"),
            (6, "control"),
            (10, "cache"),
            (11, "psi"),
            (9, "something-else"),
        ];
        let fds: Vec<(i32, String)> = names.iter().map(|(f, n)| (*f, n.to_string())).collect();
        let a = super::parse_store(&fds).unwrap();
        assert_eq!(a.fds, vec![3, 4]);
        assert_eq!((a.params.minor, a.params.flags), (41, 99));
        assert_eq!(a.seccomp, Some((5, vec![7, 8])));
        assert_eq!(a.control, Some(6));
        assert_eq!(a.cache, vec![10]);
        assert_eq!(a.psi, vec![11]);
        assert!(super::parse_store(&fds[4..]).is_none(), "no FUSE fd: nothing to adopt");
    }
}
