//! Caller -> container: the FUSE request's thread id is mapped to the cgroups of the init
//! process of its pid namespace (trailing `/init.scope` stripped), or to the caller's own
//! cgroups when it shares the daemon's pid namespace — or when it is another container that
//! shares the init's pid namespace (Kubernetes `shareProcessNamespace`, `--pid=container:X`):
//! a caller outside the init's cgroups with a mount namespace of its own (neither the init's
//! nor the host's). Processes in the init's sub-cgroups (systemd inside a container) and
//! tools entering from the host (`nsenter`) keep the init's container.

use crate::cgroup::ProcCgroup;
use crate::error::{Error, Result};
use crate::procfs::innermost_nspid;
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
    /// Ask the kernel for a namespace's init (Linux 6.11+); off only to test the fallback
    /// (`CGPROCFS_NO_PIDNS_IOCTL`).
    use_ioctl: bool,
    /// When `/proc` was last scanned for a namespace's init.
    last_scan: Mutex<Option<std::time::Instant>>,
}

impl Resolver {
    /// A resolver for a daemon running in the pid namespace of `<root>/proc/self`.
    pub fn new(root: Root) -> Result<Self> {
        let own_pidns = pidns_of(&root, "self")?;
        let use_ioctl = std::env::var_os("CGPROCFS_NO_PIDNS_IOCTL").is_none();
        Ok(Resolver { root, own_pidns, inits: Mutex::new(HashMap::new()), use_ioctl, last_scan: Mutex::new(None) })
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
        match self.init_of(tid, ns) {
            Ok(init) => {
                let theirs = ProcCgroup::of_pid(&self.root, init)?.without_init_scope();
                if tid == init {
                    return Ok((theirs, Some(init)));
                }
                // Two readlinks first: a process of the container itself shares the init's
                // mounts, and its cgroup file is then never read.
                if self.own_mounts(tid, init) {
                    let own = ProcCgroup::of_pid(&self.root, tid)?.without_init_scope();
                    if !own.is_within(&theirs) {
                        // Another container in the init's pid namespace: its own limits and age.
                        return Ok((own, None));
                    }
                }
                Ok((theirs, Some(init)))
            }
            // A process that joined the namespace from outside (runc exec) whose init is not
            // among its ancestors: its own cgroup is its container's.
            Err(Error::Caller { .. }) => Ok((ProcCgroup::of_pid(&self.root, tid)?.without_init_scope(), None)),
            Err(e) => Err(e),
        }
    }

    /// Whether `tid` has a mount namespace of its own: neither `init`'s nor the host's (the
    /// daemon's own, or that of pid 1 of its pid namespace where readable). An unreadable link
    /// is not one of its own.
    fn own_mounts(&self, tid: u32, init: u32) -> bool {
        let mnt = |who: &str| std::fs::read_link(self.root.proc().join(who).join("ns/mnt")).ok();
        let (Some(m), Some(i)) = (mnt(&tid.to_string()), mnt(&init.to_string())) else { return false };
        m != i && ["self", "1"].iter().all(|host| mnt(host).is_none_or(|h| h != m))
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
        if self.use_ioctl {
            let nsfile = self.root.proc_pid(tid).join("ns/pid");
            if let Ok(f) = std::fs::File::open(&nsfile) {
                // SAFETY: ioctl on a valid fd with an integer argument; no memory is passed.
                let r = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_PID_FROM_PIDNS as _, 1 as libc::c_ulong) };
                if r > 0 {
                    return Ok(r as u32);
                }
            }
        }
        // Older kernels: walk up the caller's ancestors while they are in that namespace; the
        // one whose innermost NSpid is 1 is its init. A cost in the depth of the process tree,
        // never in the number of processes on the host (a container looping `unshare -p`
        // would make every request pay a scan of /proc).
        let mut pid = tid;
        for _ in 0..MAX_WALK {
            let status = crate::sys::read_text(&self.root.proc_pid(pid).join("status"))
                .map_err(|e| Error::io(self.root.proc_pid(pid).join("status"), e))?;
            if innermost_nspid(&status) == Some("1") {
                return Ok(pid);
            }
            let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|p| p.trim().parse::<u32>().ok());
            match ppid {
                Some(p) if p > 0 && pidns_of(&self.root, &p.to_string()).ok() == Some(ns) => pid = p,
                _ => break,
            }
        }
        // The caller joined the namespace from outside (nsenter, runc exec): its init is no
        // ancestor. Only a scan finds it; at most one per SCAN_EVERY for the whole daemon, so
        // a container creating such namespaces in a loop cannot make every request pay one.
        {
            let mut last = self.last_scan.lock();
            if last.is_some_and(|t| t.elapsed() < SCAN_EVERY) {
                return Err(Error::Caller {
                    pid: tid,
                    why: format!("no init among the ancestors in pid namespace {ns}"),
                });
            }
            *last = Some(std::time::Instant::now());
        }
        self.scan_for_init(tid, ns)
    }

    /// The process of namespace `ns` whose innermost NSpid is 1, by a scan of `/proc`.
    fn scan_for_init(&self, tid: u32, ns: u64) -> Result<u32> {
        let dir = std::fs::read_dir(self.root.proc()).map_err(|e| Error::io(self.root.proc(), e))?;
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pidns_of(&self.root, &pid.to_string()).ok() != Some(ns) {
                continue;
            }
            let status = crate::sys::read_text(&self.root.proc_pid(pid).join("status")).unwrap_or_default();
            if innermost_nspid(&status) == Some("1") {
                return Ok(pid);
            }
        }
        Err(Error::Caller { pid: tid, why: format!("no init found for pid namespace {ns}") })
    }
}

/// At most one scan of `/proc` per this long (callers that joined a namespace from outside).
const SCAN_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Ancestors visited at most when looking for a namespace's init.
const MAX_WALK: usize = 4096;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A /proc of symlinks and status files: the daemon in namespace 100, a container in 200.
    fn fake_proc(dir: &std::path::Path, procs: &[(u32, u64, u32, &str)]) {
        let link = |p: &str, ns: u64| {
            let d = dir.join("proc").join(p).join("ns");
            std::fs::create_dir_all(&d).unwrap();
            std::os::unix::fs::symlink(format!("pid:[{ns}]"), d.join("pid")).unwrap();
        };
        link("self", 100);
        for &(pid, ns, ppid, nspid) in procs {
            link(&pid.to_string(), ns);
            let d = dir.join("proc").join(pid.to_string());
            std::fs::write(d.join("status"), format!("Name:\tx\nPPid:\t{ppid}\nNSpid:\t{nspid}\n")).unwrap();
            std::fs::write(d.join("cgroup"), format!("0::/c{pid}\n")).unwrap();
        }
    }

    #[test]
    fn the_init_is_found_among_the_ancestors_without_a_scan() {
        let dir = crate::files::TestDir::new("cgprocfs-caller-test-");
        let mut procs =
            vec![(1, 100, 0, "1"), (300, 200, 1, "300 1"), (400, 200, 300, "400 2"), (500, 200, 400, "500 3")];
        // Processes claiming to be that namespace's init that are no ancestor of the caller: a
        // scan of /proc would meet them; the walk never does.
        let decoys: Vec<(u32, u64, u32, String)> = (1000..1200).map(|p| (p, 200, 1, format!("{p} 1"))).collect();
        procs.extend(decoys.iter().map(|(a, b, c, d)| (*a, *b, *c, d.as_str())));
        fake_proc(&dir, &procs);
        let r = Resolver::new(Root::new(&*dir)).unwrap();
        assert_eq!(r.find_init(500, 200).unwrap(), 300);
        assert_eq!(r.find_init(300, 200).unwrap(), 300);
        let (cg, init) = r.container_of(500, 200).unwrap();
        assert_eq!((cg.v2.as_deref(), init), (Some("/c300"), Some(300)));
        assert!(r.last_scan.lock().is_none(), "/proc was scanned");
    }

    #[test]
    fn containers_sharing_a_pid_namespace_see_their_own_cgroup() {
        let dir = crate::files::TestDir::new("cgprocfs-caller-test-");
        // A pod: 300 is its pause process (the namespace's init). 400 is the app container
        // (joined from outside, its own mount namespace and cgroup), 500 a service in a
        // sub-cgroup of the init's (systemd inside a container), 600 an admin's nsenter (the
        // host's mount namespace, its own cgroup), 700 an nsenter into the init's mounts too.
        let procs = [
            (1, 100, 0, "1"),
            (300, 200, 1, "300 1"),
            (400, 200, 1, "400 2"),
            (500, 200, 300, "500 3"),
            (600, 200, 1, "600 4"),
            (700, 200, 1, "700 5"),
        ];
        fake_proc(&dir, &procs);
        for (pid, cg, mnt) in [
            (300, "/pod/pause", 30),
            (400, "/pod/app", 40),
            (500, "/pod/pause/sub", 50),
            (600, "/user/admin", 1),
            (700, "/user/admin", 30),
        ] {
            let d = dir.join("proc").join(pid.to_string());
            std::fs::write(d.join("cgroup"), format!("0::{cg}\n")).unwrap();
            std::os::unix::fs::symlink(format!("mnt:[{mnt}]"), d.join("ns/mnt")).unwrap();
        }
        // The daemon's (the host's) mount namespace; pid 1's is unreadable, as in some sandboxes.
        std::os::unix::fs::symlink("mnt:[1]", dir.join("proc/self/ns/mnt")).unwrap();
        let r = Resolver::new(Root::new(&*dir)).unwrap();
        let seen = |tid| {
            let (cg, init) = r.container_of(tid, 200).unwrap();
            (cg.v2.unwrap(), init)
        };
        assert_eq!(seen(400), ("/pod/app".to_string(), None), "the app container");
        assert_eq!(seen(500), ("/pod/pause".to_string(), Some(300)), "a sub-cgroup");
        assert_eq!(seen(600), ("/pod/pause".to_string(), Some(300)), "nsenter from the host");
        assert_eq!(seen(700), ("/pod/pause".to_string(), Some(300)), "nsenter into the init's mounts");
        assert_eq!(seen(300), ("/pod/pause".to_string(), Some(300)));
    }

    #[test]
    fn callers_that_joined_from_outside_cost_at_most_one_scan_per_period() {
        let dir = crate::files::TestDir::new("cgprocfs-caller-test-");
        // 600 and 800 joined namespaces 200 and 201 from outside (nsenter, runc exec): their
        // parent is in the daemon's namespace.
        let procs = [
            (1, 100, 0, "1"),
            (300, 200, 1, "300 1"),
            (600, 200, 1, "600 7"),
            (700, 201, 1, "700 1"),
            (800, 201, 1, "800 4"),
        ];
        fake_proc(&dir, &procs);
        let r = Resolver::new(Root::new(&*dir)).unwrap();
        let (cg, init) = r.container_of(600, 200).unwrap();
        assert_eq!((cg.v2.as_deref(), init), (Some("/c300"), Some(300)), "found by a scan");
        // Right after it, another such namespace: no second scan; its own cgroup.
        let (cg, init) = r.container_of(800, 201).unwrap();
        assert_eq!((cg.v2.as_deref(), init), (Some("/c800"), None));
        std::thread::sleep(SCAN_EVERY);
        let (_, init) = r.container_of(800, 201).unwrap();
        assert_eq!(init, Some(700));
    }
}
