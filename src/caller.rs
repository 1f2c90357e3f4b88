//! Caller -> container: the FUSE request's thread id is mapped to the cgroups of the init
//! process of its pid namespace (trailing `/init.scope` stripped), or to the caller's own
//! cgroups when it shares the daemon's pid namespace.

use crate::cgroup::ProcCgroup;
use crate::error::{Error, Result};
use crate::Root;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::fd::AsRawFd;

/// `NS_GET_PID_FROM_PIDNS` = `_IOR(0xb7, 0x6, int)` (Linux 6.11+): the pid, in the caller's
/// namespace, of a pid given in the target pid namespace.
const NS_GET_PID_FROM_PIDNS: libc::c_ulong = 0x8004_b706;

/// Maps callers to their container's cgroup membership.
#[derive(Debug)]
pub struct Resolver {
    root: Root,
    own_pidns: u64,
    /// pid-namespace inode -> host pid of its init, re-validated on every use.
    inits: Mutex<HashMap<u64, u32>>,
}

impl Resolver {
    /// A resolver for a daemon running in the pid namespace of `<root>/proc/self`.
    pub fn new(root: Root) -> Result<Self> {
        let own_pidns = pidns_of(&root, "self")?;
        Ok(Resolver { root, own_pidns, inits: Mutex::new(HashMap::new()) })
    }

    /// The inode of `tid`'s pid namespace.
    pub fn pidns(&self, tid: u32) -> Result<u64> {
        if tid == 0 {
            // The kernel sends 0 for callers not visible in the daemon's pid namespace.
            return Err(Error::Caller { pid: 0, why: "not visible in the daemon's pid namespace".into() });
        }
        pidns_of(&self.root, &tid.to_string())
    }

    /// The cgroup membership that defines the container of `tid`, whose pid namespace is `ns`
    /// ([`Resolver::pidns`]), and the host pid of that namespace's init when it is not the
    /// daemon's namespace.
    pub fn container_of(&self, tid: u32, ns: u64) -> Result<(ProcCgroup, Option<u32>)> {
        if ns == self.own_pidns {
            return Ok((ProcCgroup::of_pid(&self.root, tid)?, None));
        }
        let init = self.init_of(tid, ns)?;
        Ok((ProcCgroup::of_pid(&self.root, init)?.without_init_scope(), Some(init)))
    }

    /// Host pid of the init of pid namespace `ns`, which `tid` belongs to.
    fn init_of(&self, tid: u32, ns: u64) -> Result<u32> {
        if let Some(&pid) = self.inits.lock().get(&ns) {
            // The pid may have been reused since: it must still be in that namespace.
            if pidns_of(&self.root, &pid.to_string()).ok() == Some(ns) {
                return Ok(pid);
            }
        }
        let pid = self.find_init(tid, ns)?;
        let mut inits = self.inits.lock();
        if inits.len() > 65_536 {
            inits.clear(); // bounded: namespaces come and go
        }
        inits.insert(ns, pid);
        Ok(pid)
    }

    fn find_init(&self, tid: u32, ns: u64) -> Result<u32> {
        let nsfile = self.root.proc_pid(tid).join("ns/pid");
        if let Ok(f) = std::fs::File::open(&nsfile) {
            // SAFETY: ioctl on a valid fd with an integer argument; no memory is passed.
            let r = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_PID_FROM_PIDNS as _, 1 as libc::c_ulong) };
            if r > 0 {
                return Ok(r as u32);
            }
        }
        // Older kernels: the init is the process whose innermost NSpid is 1 in that namespace.
        let dir = std::fs::read_dir(self.root.proc()).map_err(|e| Error::io(self.root.proc(), e))?;
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pidns_of(&self.root, &pid.to_string()).ok() != Some(ns) {
                continue;
            }
            let status = std::fs::read_to_string(self.root.proc_pid(pid).join("status")).unwrap_or_default();
            let innermost =
                status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|l| l.split_ascii_whitespace().last());
            if innermost == Some("1") {
                return Ok(pid);
            }
        }
        Err(Error::Caller { pid: tid, why: format!("no init found for pid namespace {ns}") })
    }
}

/// Inode of the pid namespace of `/proc/<who>`, from the `pid:[N]` link.
fn pidns_of(root: &Root, who: &str) -> Result<u64> {
    let p = root.proc().join(who).join("ns/pid");
    let link = std::fs::read_link(&p).map_err(|e| Error::io(&p, e))?;
    let s = link.to_string_lossy();
    s.strip_prefix("pid:[")
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::malformed(&p, format!("unexpected link {s:?}")))
}
