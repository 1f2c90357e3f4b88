//! Cgroup discovery and readers: where the hierarchies are mounted, which cgroup a process is
//! in, and typed snapshots of the controller files the views need.
//!
//! Every reader takes paths under a filesystem root (see [`crate::Root`]) so fixture trees
//! captured from real kernels drive the unit tests through the same code as the live daemon.

pub mod cpu;
pub mod cpuacct;
pub mod cpuset;
pub mod held;
pub mod io;
pub mod memory;
pub mod mounts;
pub mod parse;
pub mod tasks;
pub mod thread_files;
pub mod watch;

pub use mounts::{Hierarchies, ProcCgroup};

use std::path::{Path, PathBuf};

/// Reads a whole cgroup file (kept open between reads, [`held`]), mapping the error to
/// [`crate::Error::Io`].
pub(crate) fn read_file(path: &Path) -> crate::Result<String> {
    held::read(path).map_err(|e| crate::Error::io(path, e))
}

/// Cgroup version of one hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// Legacy per-controller hierarchies.
    V1,
    /// The unified hierarchy.
    V2,
}

/// One cgroup directory of a container, in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CgroupDir {
    /// Version of the hierarchy the directory belongs to.
    pub version: Version,
    /// Absolute path of the cgroup directory.
    pub path: PathBuf,
    /// Top of the hierarchy as mounted; ancestors are walked up to and including it.
    pub top: PathBuf,
}

impl CgroupDir {
    /// The directory and its ancestors up to the top of the hierarchy, innermost first.
    pub fn chain(&self) -> impl Iterator<Item = &Path> {
        let top = self.top.as_path();
        self.path.ancestors().take_while(move |p| p.starts_with(top))
    }

    /// The best limit the chain sets and the directory that sets it: each directory's own
    /// limit read through `at` (`None`: no such file there, `Some(None)`: unlimited), `better`
    /// choosing between two.
    pub fn chain_best<T>(
        &self,
        mut at: impl FnMut(&Path) -> crate::Result<Option<Option<T>>>,
        better: impl Fn(&T, &T) -> bool,
    ) -> crate::Result<Option<(T, PathBuf)>> {
        let mut best: Option<(T, PathBuf)> = None;
        for d in self.chain() {
            if let Some(Some(v)) = at(d)? {
                if best.as_ref().is_none_or(|(b, _)| better(&v, b)) {
                    best = Some((v, d.to_path_buf()));
                }
            }
        }
        Ok(best)
    }

    /// Path of a control file in this cgroup.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens a control file of this cgroup with `flags` to write to it: resolved from the top
    /// of the hierarchy, never above it, across no mount and through no symlink, as every path
    /// the daemon writes is (the directory names come from processes it does not trust).
    pub fn open_file(&self, name: &str, flags: i32) -> std::io::Result<std::fs::File> {
        use crate::sys::{RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_NO_XDEV};
        let rel = self.path.strip_prefix(&self.top).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is outside its hierarchy", self.path.display()),
            )
        })?;
        let top = std::fs::File::open(&self.top)?;
        let fd = crate::sys::openat2(
            &top.into(),
            &rel.join(name),
            flags | libc::O_NOFOLLOW,
            RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
        )?;
        Ok(fd.into())
    }
}

/// The cgroup directories that describe one container, per controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Cgroups {
    /// Memory controller (v1 `memory` hierarchy or the v2 directory).
    pub memory: Option<CgroupDir>,
    /// CPU bandwidth controller (v1 `cpu` hierarchy or the v2 directory).
    pub cpu: Option<CgroupDir>,
    /// CPU accounting (v1 `cpuacct` hierarchy; on v2 the accounting is in `unified`).
    pub cpuacct: Option<CgroupDir>,
    /// Cpuset controller (v1 `cpuset` hierarchy or the v2 directory).
    pub cpuset: Option<CgroupDir>,
    /// Block I/O controller (v1 `blkio` hierarchy or the v2 directory with `io`).
    pub blkio: Option<CgroupDir>,
    /// The v2 directory, on pure v2 and on hybrid hosts (cpu.stat, PSI live there).
    pub unified: Option<CgroupDir>,
}

/// A container as the daemon sees it: its cgroups, and the host pid of the init of its pid
/// namespace when it has its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Its cgroup directories (shared: a container is cloned into every cache and request
    /// that resolves to it).
    pub cgroups: std::sync::Arc<Cgroups>,
    /// Host pid of the init of its pid namespace, when it has its own.
    pub init: Option<u32>,
}

impl Container {
    /// No container: no cgroups, no pid namespace of its own (its files are the host's).
    pub fn nobody() -> Container {
        Container { cgroups: Default::default(), init: None }
    }
}

impl Cgroups {
    /// The directory the container's CPU time is accounted in (v1 `cpuacct`, else the unified
    /// tree), if it is not the top of its hierarchy: a process in a top-level cgroup is not in
    /// a container as far as CPU time goes, and sees the host's CPU files.
    pub fn cpu_accounting(&self) -> Option<&CgroupDir> {
        self.cpuacct.as_ref().or(self.unified.as_ref()).filter(|d| d.path != d.top)
    }

    /// A short name for logs and rate limiting: the first cgroup path known.
    pub fn name(&self) -> String {
        [&self.memory, &self.cpu, &self.cpuset, &self.unified]
            .into_iter()
            .flatten()
            .next()
            .map(|d| d.path.display().to_string())
            .unwrap_or_else(|| "<no cgroup>".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_file_is_opened_through_no_symlink_and_never_above_the_top() {
        let top = crate::files::TestDir::new("cgprocfs-cgroup-test-");
        let real = top.join("a/b");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("memory.pressure"), "").unwrap();
        let outside = crate::files::TestDir::new("cgprocfs-cgroup-outside-");
        std::fs::write(outside.join("memory.pressure"), "keep").unwrap();
        std::os::unix::fs::symlink(&real, top.join("a/link")).unwrap();
        std::os::unix::fs::symlink(&*outside, top.join("away")).unwrap();
        let dir = |p: PathBuf| CgroupDir { version: Version::V2, path: p, top: top.to_path_buf() };

        let mut f = dir(real.clone()).open_file("memory.pressure", libc::O_RDWR).unwrap();
        std::io::Write::write_all(&mut f, b"some 1 2").unwrap();
        assert_eq!(std::fs::read_to_string(real.join("memory.pressure")).unwrap(), "some 1 2");
        for p in [top.join("a/link"), top.join("away"), top.join("a/b/../../away")] {
            let e = dir(p.clone()).open_file("memory.pressure", libc::O_RDWR).unwrap_err();
            assert!(matches!(e.raw_os_error(), Some(libc::ELOOP | libc::EXDEV)), "{}: {e}", p.display());
        }
        // A file that is itself a symlink, and a directory outside the hierarchy.
        std::os::unix::fs::symlink(outside.join("memory.pressure"), real.join("io.pressure")).unwrap();
        assert!(dir(real.clone()).open_file("io.pressure", libc::O_RDWR).is_err());
        assert!(dir(outside.to_path_buf()).open_file("memory.pressure", libc::O_RDWR).is_err());
        assert_eq!(std::fs::read_to_string(outside.join("memory.pressure")).unwrap(), "keep");
    }
}
