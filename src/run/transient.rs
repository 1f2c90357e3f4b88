//! The transient cgroup of `cgprocfs run`, with its limits.
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
