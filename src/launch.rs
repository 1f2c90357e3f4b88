//! `cgprocfs run`: run a command in a transient cgroup with limits, in its own mount namespace
//! with the views bound over `/proc` and `/sys`, and remove what was created afterwards.
//!
//! Cgroups are created with plain file writes rather than cgroups-rs, which assumes the unified
//! tree at `/sys/fs/cgroup` (wrong on hybrid hosts) and swallows write errors.

use crate::cgroup::Hierarchies;
use crate::view::View;
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

/// A transient cgroup in every hierarchy the views read; removed on drop.
pub struct Transient {
    /// Directories created, innermost first is not needed: they are siblings of the tops.
    pub dirs: Vec<PathBuf>,
}

fn write(p: &Path, v: &str) -> io::Result<()> {
    std::fs::write(p, v).map_err(|e| io::Error::new(e.kind(), format!("cannot write {v:?} to {}: {e}", p.display())))
}

impl Transient {
    /// Creates `name` under the top of each hierarchy and applies `l`.
    pub fn create(name: &str, l: &RunLimits) -> io::Result<Transient> {
        let h = Hierarchies::discover(&Root::new("/")).map_err(io::Error::other)?;
        let mut t = Transient { dirs: Vec::new() };
        let v1: Vec<(&str, &Path)> = ["memory", "cpu", "cpuacct", "cpuset", "pids"]
            .into_iter()
            .filter_map(|c| h.v1_mount(c).map(|m| (c, m)))
            .collect();
        for (c, m) in &v1 {
            let d = m.join(name);
            if t.dirs.contains(&d) {
                continue; // co-mounted controllers share one directory
            }
            std::fs::create_dir(&d)?;
            t.dirs.push(d.clone());
            match *c {
                "memory" => {
                    if let Some(b) = l.memory {
                        write(&d.join("memory.limit_in_bytes"), &b.to_string())?;
                    }
                }
                "cpu" => {
                    if let Some(c) = l.cpus {
                        write(&d.join("cpu.cfs_period_us"), "100000")?;
                        write(&d.join("cpu.cfs_quota_us"), &((c * 100_000.0).round().max(1000.0) as u64).to_string())?;
                    }
                }
                "cpuset" => {
                    // v1 cpusets refuse tasks until cpus and mems are set.
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let v = std::fs::read_to_string(m.join(f))?;
                        write(&d.join(f), v.trim())?;
                    }
                    if let Some(s) = &l.cpuset {
                        write(&d.join("cpuset.cpus"), s)?;
                    }
                }
                "pids" => {
                    if let Some(p) = l.pids {
                        write(&d.join("pids.max"), &p.to_string())?;
                    }
                }
                _ => {}
            }
        }
        if let Some(top) = h.v2_mount() {
            let d = top.join(name);
            if v1.is_empty() {
                // Pure v2: enable the controllers for children of the top, then set limits.
                let _ = std::fs::write(top.join("cgroup.subtree_control"), "+memory +cpu +cpuset +pids");
            }
            std::fs::create_dir(&d)?;
            t.dirs.push(d.clone());
            if v1.is_empty() {
                if let Some(b) = l.memory {
                    write(&d.join("memory.max"), &b.to_string())?;
                }
                if let Some(c) = l.cpus {
                    write(&d.join("cpu.max"), &format!("{} 100000", (c * 100_000.0).round().max(1000.0) as u64))?;
                }
                if let Some(s) = &l.cpuset {
                    write(&d.join("cpuset.cpus"), s)?;
                }
                if let Some(p) = l.pids {
                    write(&d.join("pids.max"), &p.to_string())?;
                }
            }
        }
        Ok(t)
    }

    /// `cgroup.procs` of every directory, for a child to join before exec.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs.iter().filter_map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok()).collect()
    }
}

impl Drop for Transient {
    fn drop(&mut self) {
        // Processes the command left behind are its own descendants: end them so the cgroup
        // can be removed.
        for d in &self.dirs {
            for pid in std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: plain kill(2) of a process inside the cgroup this run created.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for d in &self.dirs {
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

/// Pairs of (served file, host path it is bound over), as NUL-terminated strings prepared
/// before fork.
pub fn bind_pairs(mountpoint: &Path) -> Vec<(CString, CString)> {
    View::ALL
        .iter()
        .filter(|v| Path::new("/").join(v.path()).exists())
        .filter_map(|v| {
            let src = CString::new(mountpoint.join(v.path()).as_os_str().as_bytes()).ok()?;
            let dst = CString::new(format!("/{}", v.path())).ok()?;
            Some((src, dst))
        })
        .collect()
}

/// Runs in the child between fork and exec: joins the cgroups, enters a private mount
/// namespace and binds the views. Only async-signal-safe calls on pre-built strings.
pub fn enter(procs: &[CString], binds: &[(CString, CString)]) -> io::Result<()> {
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
        for (src, dst) in binds {
            if libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("256M"), Ok(256 << 20));
        assert_eq!(super::parse_size("1g"), Ok(1 << 30));
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert!(super::parse_size("x").is_err());
        assert!(super::parse_size("99999999999T").is_err());
    }
}
