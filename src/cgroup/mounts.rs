//! Where the cgroup hierarchies are mounted (from mountinfo) and which cgroup a process is in
//! (from `/proc/<pid>/cgroup`).

use super::{CgroupDir, Cgroups, Version};
use crate::error::{read_file, Error, Result};
use crate::Root;
use std::path::{Path, PathBuf};

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// Mount point, under the filesystem root.
    point: PathBuf,
    /// The cgroup path shown at the mount point (mountinfo field 4; `/` unless bind-mounted or
    /// mounted inside a cgroup namespace).
    root: String,
    /// v1 controllers (and `name=...`) of the hierarchy; empty for v2.
    controllers: Vec<String>,
}

/// The cgroup hierarchies of the host: pure v1, pure v2 or hybrid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchies {
    v2: Option<Mount>,
    v1: Vec<Mount>,
}

/// Layout of the host's cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Only cgroup2.
    V2,
    /// Only v1 controllers.
    V1,
    /// v1 controllers plus a cgroup2 tree.
    Hybrid,
    /// No cgroup mounted at all.
    None,
}

/// The cgroup membership of one process, as `/proc/<pid>/cgroup` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ProcCgroup {
    /// The `0::` line's path.
    pub v2: Option<String>,
    /// `(controllers, path)` of each v1 line.
    pub v1: Vec<(String, String)>,
}

impl ProcCgroup {
    /// Parses the text of `/proc/<pid>/cgroup`.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let mut out = ProcCgroup::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let mut it = line.splitn(3, ':');
            let (Some(id), Some(ctrls), Some(p)) = (it.next(), it.next(), it.next()) else {
                return Err(Error::malformed(path, format!("bad line {line:?}")));
            };
            if id == "0" && ctrls.is_empty() {
                out.v2 = Some(p.to_string());
            } else {
                out.v1.push((ctrls.to_string(), p.to_string()));
            }
        }
        if out.v2.is_none() && out.v1.is_empty() {
            return Err(Error::malformed(path, "no cgroup lines"));
        }
        Ok(out)
    }

    /// Reads and parses `/proc/<pid>/cgroup` under `root`.
    pub fn of_pid(root: &Root, pid: u32) -> Result<Self> {
        let p = root.proc_pid(pid).join("cgroup");
        Self::parse(&p, &read_file(&p)?)
    }

    /// The same membership with a trailing `/init.scope` removed from every path: systemd in
    /// a container moves its PID 1 there, and the container is the parent.
    pub fn without_init_scope(mut self) -> Self {
        let strip = |p: &mut String| {
            if let Some(s) = p.strip_suffix("/init.scope") {
                *p = if s.is_empty() { "/".to_string() } else { s.to_string() };
            }
        };
        if let Some(p) = self.v2.as_mut() {
            strip(p);
        }
        for (_, p) in self.v1.iter_mut() {
            strip(p);
        }
        self
    }

    /// Whether this membership lies inside `outer`'s cgroups (the same cgroup or a
    /// descendant) in some hierarchy where `outer` is not at the top; true as well when
    /// `outer` is at the top of every hierarchy (nothing to be outside of).
    pub fn is_within(&self, outer: &ProcCgroup) -> bool {
        let below =
            |inner: &str, outer: &str| inner == outer || inner.strip_prefix(outer).is_some_and(|r| r.starts_with('/'));
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if let (Some(i), Some(o)) = (&self.v2, &outer.v2) {
            pairs.push((i, o));
        }
        for (ctrls, o) in &outer.v1 {
            if let Some((_, i)) = self.v1.iter().find(|(c, _)| c == ctrls) {
                pairs.push((i, o));
            }
        }
        let mut nested = pairs.iter().filter(|(_, o)| *o != "/").peekable();
        nested.peek().is_none() || nested.any(|(i, o)| below(i, o))
    }

    fn v1_path(&self, controller: &str) -> Option<&str> {
        self.v1.iter().find(|(c, _)| c.split(',').any(|x| x == controller)).map(|(_, p)| p.as_str())
    }
}

impl Hierarchies {
    /// Discovers the hierarchies from `<root>/proc/self/mountinfo`.
    pub fn discover(root: &Root) -> Result<Self> {
        let p = root.proc().join("self/mountinfo");
        Ok(Self::parse(root, &read_file(&p)?))
    }

    /// Parses mountinfo text; mount points are taken relative to `root`.
    pub fn parse(root: &Root, mountinfo: &str) -> Self {
        let mut h = Hierarchies::default();
        for e in crate::mountinfo::entries(mountinfo) {
            let m = Mount { point: root.join(&e.mount_point), root: e.root, controllers: Vec::new() };
            match e.fstype {
                "cgroup2" if h.v2.is_none() => h.v2 = Some(m),
                "cgroup" => {
                    let ctrls = e
                        .super_options
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                        .map(str::to_string)
                        .collect::<Vec<_>>();
                    if !ctrls.is_empty() && !h.v1.iter().any(|x| x.controllers == ctrls) {
                        h.v1.push(Mount { controllers: ctrls, ..m });
                    }
                }
                _ => {}
            }
        }
        h
    }

    /// Which layout the host has.
    pub fn layout(&self) -> Layout {
        match (self.v2.is_some(), !self.v1.is_empty()) {
            (true, false) => Layout::V2,
            (false, true) => Layout::V1,
            (true, true) => Layout::Hybrid,
            (false, false) => Layout::None,
        }
    }

    /// Mount point of the v1 hierarchy that carries `controller`.
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        self.v1_entry(controller).map(|m| m.point.as_path())
    }

    /// Mount point of the unified hierarchy.
    pub fn v2_mount(&self) -> Option<&Path> {
        self.v2.as_ref().map(|m| m.point.as_path())
    }

    fn v1_entry(&self, controller: &str) -> Option<&Mount> {
        self.v1.iter().find(|m| m.controllers.iter().any(|c| c == controller))
    }

    /// The controllers the unified hierarchy has enabled at its top (read once per resolve:
    /// `docker update` can enable one at any time; kept open, [`super::held`]).
    fn v2_controllers(&self) -> String {
        let Some(m) = &self.v2 else { return String::new() };
        super::held::read(m.point.join("cgroup.controllers")).unwrap_or_default()
    }

    /// The cgroup directories of a process's membership, per controller. A controller comes
    /// from its v1 hierarchy when one is mounted, else from the unified tree when it has the
    /// controller.
    pub fn resolve(&self, pc: &ProcCgroup) -> Cgroups {
        let unified = match (&self.v2, &pc.v2) {
            (Some(m), Some(p)) => dir(m, p, Version::V2),
            _ => None,
        };
        let v2 = self.v2_controllers();
        let v2_has = |ctrl: &str| v2.split_ascii_whitespace().any(|c| c == ctrl);
        let pick = |ctrl: &str| -> Option<CgroupDir> {
            if let Some(m) = self.v1_entry(ctrl) {
                return pc.v1_path(ctrl).and_then(|p| dir(m, p, Version::V1));
            }
            if v2_has(ctrl) {
                return unified.clone();
            }
            None
        };
        Cgroups {
            memory: pick("memory"),
            cpu: pick("cpu"),
            cpuacct: self.v1_entry("cpuacct").and_then(|m| pc.v1_path("cpuacct").and_then(|p| dir(m, p, Version::V1))),
            cpuset: pick("cpuset"),
            blkio: match self.v1_entry("blkio") {
                Some(m) => pc.v1_path("blkio").and_then(|p| dir(m, p, Version::V1)),
                None if v2_has("io") => unified.clone(),
                None => None,
            },
            unified,
        }
    }
}

/// Maps a cgroup path from `/proc/<pid>/cgroup` to its directory under the mount.
fn dir(m: &Mount, cg_path: &str, version: Version) -> Option<CgroupDir> {
    let rel = if m.root == "/" {
        cg_path
    } else {
        // A path outside the mounted subtree is not reachable through this mount.
        let r = cg_path.strip_prefix(m.root.as_str())?;
        if !(r.is_empty() || r.starts_with('/')) {
            return None;
        }
        r
    };
    let rel = rel.trim_start_matches('/');
    // `..` would escape the hierarchy; the kernel never writes it, so refuse it.
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    let path = if rel.is_empty() { m.point.clone() } else { m.point.join(rel) };
    Some(CgroupDir { version, path, top: m.point.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_means_the_same_cgroup_or_below_where_the_outer_one_is_not_the_top() {
        let pc = |t: &str| ProcCgroup::parse(Path::new("x"), t).unwrap();
        let pause = pc("0::/pod/pause\n");
        assert!(pc("0::/pod/pause\n").is_within(&pause));
        assert!(pc("0::/pod/pause/sub\n").is_within(&pause));
        assert!(!pc("0::/pod/pause2\n").is_within(&pause), "a sibling sharing a prefix");
        assert!(!pc("0::/pod/app\n").is_within(&pause));
        assert!(!pc("0::/\n").is_within(&pause));
        // v1: any hierarchy where the outer one has a cgroup of its own decides.
        let v1 = pc("4:memory:/c\n3:cpu,cpuacct:/c\n1:name=systemd:/\n");
        assert!(pc("4:memory:/c/x\n3:cpu,cpuacct:/c\n1:name=systemd:/user\n").is_within(&v1));
        assert!(!pc("4:memory:/d\n3:cpu,cpuacct:/d\n1:name=systemd:/\n").is_within(&v1));
        // Nothing to be outside of.
        assert!(pc("0::/a\n").is_within(&pc("0::/\n")));
    }

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_layout_and_resolution() {
        let root = Root::new("/");
        let h = Hierarchies::parse(&root, HYBRID);
        assert_eq!(h.layout(), Layout::Hybrid);
        assert_eq!(h.v1_mount("memory"), Some(Path::new("/sys/fs/cgroup/memory")));
        let pc = ProcCgroup::parse(
            Path::new("c"),
            "9:name=systemd:/\n4:memory:/a/b/init.scope\n2:cpuset:/\n1:cpu:/a\n0::/a/b\n",
        )
        .unwrap()
        .without_init_scope();
        let cg = h.resolve(&pc);
        let mem = cg.memory.unwrap();
        assert_eq!(mem.path, Path::new("/sys/fs/cgroup/memory/a/b"));
        assert_eq!(mem.version, Version::V1);
        let chain: Vec<_> = mem.chain().collect();
        assert_eq!(chain.len(), 3);
        assert_eq!(cg.cpu.unwrap().path, Path::new("/sys/fs/cgroup/cpu/a"));
        assert_eq!(cg.cpuset.unwrap().path, Path::new("/sys/fs/cgroup/cpuset"));
        assert_eq!(cg.unified.unwrap().path, Path::new("/sys/fs/cgroup/unified/a/b"));
    }

    #[test]
    fn bad_proc_cgroup_is_an_error() {
        assert!(ProcCgroup::parse(Path::new("c"), "").is_err());
        assert!(ProcCgroup::parse(Path::new("c"), "garbage\n").is_err());
    }

    #[test]
    fn dotdot_and_foreign_paths_are_refused() {
        let m = Mount { point: "/cg".into(), root: "/sub".into(), controllers: vec![] };
        assert!(dir(&m, "/other/x", Version::V2).is_none());
        assert!(dir(&m, "/subx", Version::V2).is_none());
        assert_eq!(dir(&m, "/sub/x", Version::V2).unwrap().path, Path::new("/cg/x"));
        let m = Mount { point: "/cg".into(), root: "/".into(), controllers: vec![] };
        assert!(dir(&m, "/a/../..", Version::V2).is_none());
    }
}
