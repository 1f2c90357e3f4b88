//! cgprocfs: serves each container the `/proc` and `/sys` files that describe its own cgroup
//! limits (memory, CPUs) over FUSE, so unmodified programs see their real allotment.
//!
//! Data flow of one read: caller tid -> container cgroups ([`caller`]) -> typed snapshots
//! ([`cgroup`], [`host`]) -> pure renderer ([`view`]) -> bytes kept in the FUSE handle ([`fuse`]).
//! [`catalog`] lists the served files and how each is made; [`service::Service`] ties caller,
//! inputs and renderer together and is shared by `serve` and `show`.

#![warn(missing_docs)]

pub mod caller;
pub mod catalog;
pub mod cgroup;
pub mod daemon;
pub mod error;
pub mod explain;
pub mod files;
pub mod fuse;
pub mod host;
pub mod mount;
pub mod mountinfo;
pub mod oci_hook;
pub mod procfs;
pub mod reattach;
pub mod run;

pub mod runc_wrapper;
pub mod sampler;
pub mod seccomp;
pub mod service;
pub mod state;
pub mod stats;
pub mod sys;
pub mod view;

pub use error::{Error, Result};

use std::path::{Path, PathBuf};

/// The filesystem root every reader works under: `/` for the live daemon, a fixture tree in
/// unit tests. Host paths (`/proc/meminfo`, `/sys/fs/cgroup/...`) are joined onto it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    path: PathBuf,
}

impl Root {
    /// A root at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Root { path: path.into() }
    }

    /// The root directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `abs` (an absolute host path) under this root.
    pub fn join(&self, abs: &str) -> PathBuf {
        self.path.join(abs.trim_start_matches('/'))
    }

    /// `<root>/proc`.
    pub fn proc(&self) -> PathBuf {
        self.path.join("proc")
    }

    /// `<root>/sys`.
    pub fn sys(&self) -> PathBuf {
        self.path.join("sys")
    }

    /// `<root>/proc/<pid>`.
    pub fn proc_pid(&self, pid: u32) -> PathBuf {
        use std::fmt::Write;
        // Built in one allocation with room for a file name after it (`/stat`, `/schedstat`):
        // it is made for every caller and every sampled thread.
        let root = self.path.as_os_str();
        let mut s = std::ffi::OsString::with_capacity(root.len() + 32);
        s.push(root);
        if !root.as_encoded_bytes().ends_with(b"/") {
            s.push("/");
        }
        let _ = write!(s, "proc/{pid}");
        PathBuf::from(s)
    }
}

/// FNV-1a of `s`: stable names and inode numbers from paths (the same across processes and
/// versions, which a worker restart or an upgrade relies on).
pub fn fnv(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    #[test]
    fn proc_pid_is_under_the_root() {
        use std::path::Path;
        assert_eq!(super::Root::new("/").proc_pid(7), Path::new("/proc/7"));
        assert_eq!(super::Root::new("/srv/host").proc_pid(42), Path::new("/srv/host/proc/42"));
        assert_eq!(super::Root::new("/srv/host/").proc_pid(42), Path::new("/srv/host/proc/42"));
        assert_eq!(super::Root::new("/srv/host").proc_pid(42), super::Root::new("/srv/host").proc().join("42"));
    }

    /// docs/architecture.md's module map names every source file, and only files that exist.
    #[test]
    fn the_module_map_matches_the_tree() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("docs/architecture.md");
        let map = doc.split("## The modules").nth(1).and_then(|m| m.split("\n## ").next()).expect("a module map");
        let named: std::collections::BTreeSet<String> = map
            .lines()
            .filter(|l| l.starts_with("- `src/"))
            .flat_map(|l| {
                l.split(" — ").next().unwrap_or("").split(", ").map(|p| p.trim_matches(['-', ' ', '`']).to_string())
            })
            .collect();
        let mut files = std::collections::BTreeSet::new();
        let mut dirs = vec![root.join("src")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("src").flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.insert(p.strip_prefix(root).expect("under root").display().to_string());
                }
            }
        }
        let missing: Vec<_> = files.difference(&named).collect();
        let stale: Vec<_> = named.difference(&files).collect();
        assert!(missing.is_empty() && stale.is_empty(), "not in the map: {missing:?}; no such file: {stale:?}");
    }

    /// One column: the service above the catalog, the catalog above the sampler. Nothing below
    /// the service names it or the request counters, and the sampler names no served file.
    #[test]
    fn the_read_path_is_one_column() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let below = |file: &str, forbidden: &[&str]| {
            let source = std::fs::read_to_string(root.join(file)).expect("source file");
            // Code only: doc comments may say where a layer sits.
            let text: String = source.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
            for f in forbidden {
                assert!(!text.contains(f), "{file} imports {f}: a lower layer reaching up");
            }
        };
        below("catalog.rs", &["crate::service", "crate::stats", "crate::fuse"]);
        for f in ["sampler/mod.rs", "sampler/cache.rs"] {
            below(f, &["crate::service", "crate::stats", "crate::catalog", "crate::fuse"]);
        }
        for f in ["stats.rs", "service/fallback.rs"] {
            below(f, &["crate::service::Service", "crate::sampler"]);
        }
    }
}
