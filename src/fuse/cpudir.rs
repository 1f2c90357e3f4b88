//! `sys/devices/system/cpu` as a container sees it: `online`, `possible` and `present` (views),
//! only the `cpuN` directories of its N visible CPUs — `cpuK` is the host's directory of the
//! K-th visible CPU, read-only, with an `online` file saying 1 — and everything else of the
//! host's directory (`kernel_max`, `vulnerabilities/`, `cpufreq/`, ...) passed through
//! read-only. htop, sysstat, lscpu, psutil and glibc's `_SC_NPROCESSORS_CONF` count the
//! directories; with them the count agrees with cpuinfo and `online`.
//!
//! Host entries get inode numbers derived from their path (a hash with the top bit set), so a
//! restarted worker answers for inodes the kernel learnt from its predecessor. `cpuK` names
//! depend on the caller: their entries are never cached by the kernel (TTL 0), and the same
//! name leads different containers to different inodes.

use super::reply::Attr;
use crate::fnv;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Inodes of host entries have this bit set; the static tree's are small.
pub const DYN_BIT: u64 = 1 << 63;
/// The size a file of the directory reports: sysfs's own for its attributes.
const FILE_SIZE: u64 = 4096;
/// Entries remembered at most (a 1024-CPU host has ~100 000 under this directory).
const MAX_ENTRIES: usize = 1 << 20;

/// What a host-backed inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A host file or directory, by its path relative to the host's cpu directory.
    Host(PathBuf),
    /// The `online` file of a `cpuN` directory (the boot CPU's has none on the host).
    Online(PathBuf),
}

impl Entry {
    fn rel(&self) -> PathBuf {
        match self {
            Entry::Host(p) => p.clone(),
            Entry::Online(dir) => dir.join("online"),
        }
    }
}

/// The kind of a host entry, for attributes and directory listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link (sysfs links point outside this directory; the container resolves them
    /// in its own /sys).
    Link,
}

/// The host's cpu directory and the inodes handed out for it.
pub struct CpuDir {
    host: PathBuf,
    table: Mutex<HashMap<u64, Entry>>,
}

/// Whether `name` is `cpu` followed by digits.
pub fn cpu_index(name: &str) -> Option<u32> {
    let d = name.strip_prefix("cpu")?;
    if d.is_empty() || !d.bytes().all(|b| b.is_ascii_digit()) || (d.len() > 1 && d.starts_with('0')) {
        return None;
    }
    d.parse().ok()
}

impl CpuDir {
    /// The tree of host directory `host` (`/sys/devices/system/cpu` under the root).
    pub fn new(host: PathBuf) -> Self {
        CpuDir { host, table: Mutex::new(HashMap::new()) }
    }

    /// The inode of `e`, remembered for later requests. `None` when the table is full.
    pub fn ino(&self, e: Entry) -> Option<u64> {
        let mut ino = fnv(e.rel().as_os_str().as_encoded_bytes()) | DYN_BIT;
        let mut t = self.table.lock();
        // Open addressing on the (unlikely) collision of two paths.
        loop {
            match t.get(&ino) {
                Some(x) if *x == e => return Some(ino),
                Some(_) => ino = (ino.wrapping_add(1)) | DYN_BIT,
                None if t.len() >= MAX_ENTRIES => return None,
                None => {
                    t.insert(ino, e);
                    return Some(ino);
                }
            }
        }
    }

    /// What inode `ino` is. An inode the kernel learnt from a predecessor worker is found by
    /// walking the host directory once more.
    pub fn entry(&self, ino: u64) -> Option<Entry> {
        if let Some(e) = self.table.lock().get(&ino) {
            return Some(e.clone());
        }
        self.walk();
        self.table.lock().get(&ino).cloned()
    }

    /// Registers every entry of the host directory (bounded by [`MAX_ENTRIES`]).
    fn walk(&self) {
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for (_, name, kind) in self.listing(&rel, |_| true) {
                if kind == Kind::Dir {
                    stack.push(rel.join(name));
                }
            }
        }
    }

    /// The host path of `e`.
    pub fn host_path(&self, e: &Entry) -> PathBuf {
        self.host.join(e.rel())
    }

    /// The kind of `e` on the host.
    pub fn kind(&self, e: &Entry) -> std::io::Result<Kind> {
        match e {
            Entry::Online(_) => Ok(Kind::File),
            Entry::Host(_) => Ok(kind_of(std::fs::symlink_metadata(self.host_path(e))?.file_type())),
        }
    }

    /// Attributes of inode `ino` for entry `e`: the host's mode without write bits; files
    /// report sysfs's own size, never 0 (docs/architecture.md, "Read paths").
    pub fn attr(&self, ino: u64, e: &Entry, time: u64) -> std::io::Result<Attr> {
        use std::os::unix::fs::MetadataExt;
        if let Entry::Online(_) = e {
            return Ok(Attr { ino, size: FILE_SIZE, mode: libc::S_IFREG | 0o444, nlink: 1, time, nsec: 0 });
        }
        let m = std::fs::symlink_metadata(self.host_path(e))?;
        let mode = m.mode() & !0o222;
        let nlink = if m.is_dir() { 2 } else { 1 };
        let size = if m.is_file() { FILE_SIZE } else { 0 };
        Ok(Attr { ino, size, mode, nlink, time, nsec: 0 })
    }

    /// The inode of host entry `rel`, if it exists.
    fn existing(&self, rel: PathBuf) -> Option<u64> {
        std::fs::symlink_metadata(self.host.join(&rel)).ok()?;
        self.ino(Entry::Host(rel))
    }

    /// Looks `name` up in host directory entry `dir`.
    pub fn lookup(&self, dir: &Entry, name: &str) -> Option<u64> {
        let Entry::Host(rel) = dir else { return None };
        if !plain(name) {
            return None;
        }
        if name == "online" && is_cpu_dir(rel) {
            return self.ino(Entry::Online(rel.clone()));
        }
        self.existing(rel.join(name))
    }

    /// The inode of the top-level host entry `name` that is not a `cpuN` directory.
    pub fn lookup_top(&self, name: &str) -> Option<u64> {
        if cpu_index(name).is_some() {
            return None;
        }
        self.lookup(&Entry::Host(PathBuf::new()), name)
    }

    /// The inode of the directory standing for host CPU `cpu`.
    pub fn cpu(&self, cpu: u32) -> Option<u64> {
        self.existing(PathBuf::from(format!("cpu{cpu}")))
    }

    /// Entries of host directory `rel` whose names `keep` accepts, sorted, with inodes and
    /// kinds (from the listing itself: no stat per entry); a `cpuN` directory always has an
    /// `online` file.
    fn listing(&self, rel: &Path, keep: impl Fn(&str) -> bool) -> Vec<(u64, String, Kind)> {
        let mut out: Vec<(u64, String, Kind)> = std::fs::read_dir(self.host.join(rel))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if !keep(&name) {
                            return None;
                        }
                        let kind = kind_of(e.file_type().ok()?);
                        let ino = match name.as_str() {
                            "online" if is_cpu_dir(rel) => self.ino(Entry::Online(rel.to_path_buf()))?,
                            _ => self.ino(Entry::Host(rel.join(&name)))?,
                        };
                        Some((ino, name, kind))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if is_cpu_dir(rel) && !out.iter().any(|(_, n, _)| n == "online") {
            if let Some(ino) = self.ino(Entry::Online(rel.to_path_buf())) {
                out.push((ino, "online".into(), Kind::File));
            }
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// Entries of the host directory `dir` (sorted), with inodes and kinds.
    pub fn list(&self, dir: &Entry) -> Vec<(u64, String, Kind)> {
        match dir {
            Entry::Host(rel) => self.listing(rel, |_| true),
            Entry::Online(_) => Vec::new(),
        }
    }

    /// Top-level host entries other than `cpuN` directories and the `skip` names (the views).
    pub fn list_top(&self, skip: &[&str]) -> Vec<(u64, String, Kind)> {
        self.listing(Path::new(""), |n| cpu_index(n).is_none() && !skip.contains(&n))
    }

    /// The bytes of file `e`: `1\n` for a CPU's `online`, else the host file now.
    pub fn read(&self, e: &Entry) -> std::io::Result<Vec<u8>> {
        match e {
            Entry::Online(_) => Ok(b"1\n".to_vec()),
            Entry::Host(_) => std::fs::read(self.host_path(e)),
        }
    }

    /// The target of symlink `e`, as on the host.
    pub fn readlink(&self, e: &Entry) -> std::io::Result<PathBuf> {
        std::fs::read_link(self.host_path(e))
    }
}

/// Whether `rel` (relative to the cpu directory) is a `cpuN` directory.
fn is_cpu_dir(rel: &Path) -> bool {
    rel.components().count() == 1 && rel.to_str().and_then(cpu_index).is_some()
}

fn kind_of(t: std::fs::FileType) -> Kind {
    if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Link
    } else {
        Kind::File
    }
}

/// Whether `name` can only name an entry inside the directory it is looked up in.
fn plain(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// The host's cpu directory under `root`.
pub fn host_dir(root: &Path) -> PathBuf {
    root.join(crate::catalog::CPU_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (tempdir::Dir, CpuDir) {
        let d = tempdir::Dir::new();
        for c in ["cpu0/topology", "cpu1/topology", "cpu2/topology", "cpufreq", "vulnerabilities"] {
            std::fs::create_dir_all(d.0.join(c)).unwrap();
        }
        for c in 0..3 {
            std::fs::write(d.0.join(format!("cpu{c}/topology/core_id")), format!("{c}\n")).unwrap();
        }
        std::fs::write(d.0.join("cpu1/online"), "1\n").unwrap();
        std::fs::write(d.0.join("kernel_max"), "8191\n").unwrap();
        std::fs::write(d.0.join("online"), "0-2\n").unwrap();
        std::os::unix::fs::symlink("../../../bus/cpu", d.0.join("cpu0/subsystem")).unwrap();
        let t = CpuDir::new(d.0.clone());
        (d, t)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir().join(format!("cgprocfs-cpudir-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn cpu_names() {
        assert_eq!(cpu_index("cpu0"), Some(0));
        assert_eq!(cpu_index("cpu17"), Some(17));
        for n in ["cpu", "cpufreq", "cpu01", "cpu-1", "cpuidle", "xcpu1"] {
            assert_eq!(cpu_index(n), None, "{n}");
        }
    }

    #[test]
    fn top_level_hides_cpus_and_views() {
        let (_d, t) = fixture();
        let names: Vec<String> = t.list_top(&["online"]).into_iter().map(|(_, n, _)| n).collect();
        assert_eq!(names, ["cpufreq", "kernel_max", "vulnerabilities"]);
        assert_eq!(t.lookup_top("cpu1"), None);
        assert_eq!(t.lookup_top(".."), None);
    }

    #[test]
    fn a_cpu_dir_is_the_hosts_with_online() {
        let (_d, t) = fixture();
        let ino = t.cpu(2).unwrap();
        let dir = t.entry(ino).unwrap();
        let list = t.list(&dir);
        let names: Vec<&str> = list.iter().map(|(_, n, _)| n.as_str()).collect();
        assert_eq!(names, ["online", "topology"]);
        let online = t.entry(list[0].0).unwrap();
        assert_eq!(t.read(&online).unwrap(), b"1\n");
        let topo = t.entry(t.lookup(&dir, "topology").unwrap()).unwrap();
        let core = t.entry(t.lookup(&topo, "core_id").unwrap()).unwrap();
        assert_eq!(t.read(&core).unwrap(), b"2\n");
        assert_eq!(t.attr(1, &core, 0).unwrap().mode & 0o222, 0, "read-only");
        assert!(t.lookup(&dir, "missing").is_none());
        let c0 = t.entry(t.cpu(0).unwrap()).unwrap();
        let link = t.entry(t.lookup(&c0, "subsystem").unwrap()).unwrap();
        assert_eq!(t.kind(&link).unwrap(), Kind::Link);
        assert_eq!(t.readlink(&link).unwrap(), PathBuf::from("../../../bus/cpu"));
        assert!(t.cpu(9).is_none());
    }

    #[test]
    fn inodes_are_stable_across_instances() {
        let (d, t) = fixture();
        let a = t.entry(t.lookup(&t.entry(t.cpu(1).unwrap()).unwrap(), "topology").unwrap()).unwrap();
        let ino = t.ino(a.clone()).unwrap();
        // A new worker knows nothing yet: it finds the inode by walking the host directory.
        let fresh = CpuDir::new(d.0.clone());
        assert_eq!(fresh.entry(ino), Some(a));
        assert_eq!(fresh.entry(DYN_BIT | 12345), None);
    }
}
