//! The FUSE adapter: a static inode tree built from [`View::ALL`], per-open handles holding
//! the rendered bytes, and the mapping of FUSE operations onto [`Service`]. Kept thin: all
//! content comes from the service; all protocol mechanics live in [`session`].

pub mod abi;
pub mod cached;
pub mod cpudir;
pub mod session;

use crate::catalog::View;
use crate::service::{Container, Service};
use abi::{op, Attr, Body, InHeader, Out};
use cpudir::{cpu_index, CpuDir, Entry as HostEntry, Kind as HostKind, DYN_BIT};
use parking_lot::Mutex;
use session::{Handler, Reply};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Inode number of the mount's root directory (fixed by the kernel).
const ROOT: u64 = 1;
/// Open handles allowed at once; beyond it opens fail with ENFILE rather than grow the daemon.
const MAX_HANDLES: usize = 100_000;
/// Open handles one container may hold by default; beyond it its opens fail with EMFILE.
pub const HANDLES_PER_CONTAINER: usize = 4096;
/// Rendered bytes kept for one container's open handles (so that a read at a later offset
/// continues the same rendering); past it, later offsets are rendered afresh.
const BYTES_PER_CONTAINER: usize = 16 << 20;
/// Inodes of a served file as one container sees it have this bit, a hash of the container in
/// the middle bits and the tree's inode in the low 16: each container's file is its own inode,
/// with its own attributes (the size of its content), so no container's size is cached for
/// another.
const CT_BIT: u64 = 1 << 62;
const STATIC_MASK: u64 = 0xffff;
/// Added to a file's length for its reported size: content that grew by a few digits since
/// the size was taken is still within it.
const SIZE_MARGIN: u64 = 1024;
/// How long the kernel may cache names and attributes; the tree never changes.
const TTL_SECS: u64 = 1;

#[derive(Debug)]
enum Kind {
    Dir(Vec<u64>),
    File(View),
}

#[derive(Debug)]
struct Node {
    name: String,
    parent: u64,
    kind: Kind,
}

/// A child in [`Tree::list`]: its number, name and whether it is a directory.
pub(crate) type TreeEntry<'a> = (u64, &'a str, bool);

/// The static tree of served files: inode `i` is `nodes[i - 1]`.
#[derive(Debug)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// Builds the directories and files for `views`.
    pub fn new(views: &[View]) -> Self {
        let mut t = Tree { nodes: vec![Node { name: String::new(), parent: ROOT, kind: Kind::Dir(vec![]) }] };
        for &v in views {
            let mut dir = ROOT;
            let parts: Vec<&str> = v.path().split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                dir = match t.child(dir, part) {
                    Some(ino) => ino,
                    None => {
                        let kind = if last { Kind::File(v) } else { Kind::Dir(vec![]) };
                        t.nodes.push(Node { name: part.to_string(), parent: dir, kind });
                        let ino = t.nodes.len() as u64;
                        if let Some(Node { kind: Kind::Dir(c), .. }) = t.nodes.get_mut(dir as usize - 1) {
                            c.push(ino);
                        }
                        ino
                    }
                };
            }
        }
        t
    }

    fn node(&self, ino: u64) -> Option<&Node> {
        // A container's own inode of a file names the tree's inode in its low bits.
        let ino = if ino & CT_BIT != 0 && ino & DYN_BIT == 0 { ino & STATIC_MASK } else { ino };
        self.nodes.get((ino as usize).wrapping_sub(1))
    }

    fn child(&self, dir: u64, name: &str) -> Option<u64> {
        match &self.node(dir)?.kind {
            Kind::Dir(c) => c.iter().copied().find(|&i| self.node(i).is_some_and(|n| n.name == name)),
            Kind::File(_) => None,
        }
    }

    /// The view file `ino` is, if it is one (`ino` is the tree's own number).
    pub(crate) fn view(&self, ino: u64) -> Option<View> {
        match self.nodes.get((ino as usize).wrapping_sub(1))?.kind {
            Kind::File(v) => Some(v),
            Kind::Dir(_) => None,
        }
    }

    /// Child `name` of directory `dir` (tree numbers), and whether it is a directory.
    pub(crate) fn lookup(&self, dir: u64, name: &str) -> Option<u64> {
        let Kind::Dir(c) = &self.nodes.get((dir as usize).wrapping_sub(1))?.kind else { return None };
        c.iter().copied().find(|&i| self.nodes.get(i as usize - 1).is_some_and(|n| n.name == name))
    }

    /// The entries of directory `dir` (tree numbers): its parent, then (number, name, is a
    /// directory) per child; `None` if `dir` is not a directory.
    pub(crate) fn list(&self, dir: u64) -> Option<(u64, Vec<TreeEntry<'_>>)> {
        let n = self.nodes.get((dir as usize).wrapping_sub(1))?;
        let Kind::Dir(c) = &n.kind else { return None };
        let children = c
            .iter()
            .filter_map(|&i| {
                self.nodes.get(i as usize - 1).map(|k| (i, k.name.as_str(), matches!(k.kind, Kind::Dir(_))))
            })
            .collect();
        Some((n.parent, children))
    }

    fn attr(&self, ino: u64, time: u64) -> Option<Attr> {
        let n = self.node(ino)?;
        Some(match &n.kind {
            Kind::Dir(c) => {
                Attr { ino, size: 0, mode: libc::S_IFDIR | 0o555, nlink: 2 + c.len() as u32, time, nsec: 0 }
            }
            Kind::File(_) => Attr { ino, size: 0, mode: libc::S_IFREG | 0o444, nlink: 1, time, nsec: 0 },
        })
    }
}

/// What an open file reads.
#[derive(Clone)]
enum Source {
    View(View),
    Host(HostEntry),
}

/// One open file: its inode, source, the container charged for it and the bytes read at its
/// last read at offset 0.
struct Handle {
    ino: u64,
    source: Source,
    owner: Arc<str>,
    /// The opener's thread and container, reused when that thread reads within
    /// [`crate::service::CALLER_TTL`] of the open (a read after an open resolves nothing again).
    opener: Option<(u32, std::time::Instant, crate::service::Container)>,
    data: Option<Arc<Vec<u8>>>,
}

/// What one container holds in the handle table.
#[derive(Default)]
struct Usage {
    handles: usize,
    bytes: usize,
}

/// Open handles and what each container holds of them.
#[derive(Default)]
struct Handles {
    map: HashMap<u64, Handle>,
    usage: HashMap<Arc<str>, Usage>,
}

impl Handles {
    fn insert(&mut self, fh: u64, h: Handle) {
        let u = self.usage.entry(h.owner.clone()).or_default();
        u.handles += 1;
        u.bytes += h.data.as_ref().map_or(0, |d| d.len());
        if let Some(old) = self.map.insert(fh, h) {
            self.forget(&old);
        }
    }

    fn remove(&mut self, fh: u64) {
        if let Some(h) = self.map.remove(&fh) {
            self.forget(&h);
        }
    }

    fn forget(&mut self, h: &Handle) {
        if let Some(u) = self.usage.get_mut(&h.owner) {
            u.handles = u.handles.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(h.data.as_ref().map_or(0, |d| d.len()));
            if u.handles == 0 {
                self.usage.remove(&h.owner);
            }
        }
    }

    /// Keeps `d` as handle `fh`'s bytes if its owner's budget allows.
    fn keep(&mut self, fh: u64, d: &Arc<Vec<u8>>) {
        let Some(h) = self.map.get_mut(&fh) else { return };
        let u = self.usage.entry(h.owner.clone()).or_default();
        let old = h.data.as_ref().map_or(0, |x| x.len());
        let bytes = u.bytes.saturating_sub(old);
        if bytes + d.len() <= BYTES_PER_CONTAINER {
            h.data = Some(d.clone());
            u.bytes = bytes + d.len();
        } else {
            h.data = None;
            u.bytes = bytes;
        }
    }
}

/// The FUSE filesystem: tree + handles + service.
pub struct ProcFs {
    tree: Tree,
    /// The host-backed part of `sys/devices/system/cpu`, and that directory's inode.
    cpu: CpuDir,
    cpu_dir: Option<u64>,
    service: Arc<Service>,
    handles: Mutex<Handles>,
    per_container: usize,
    next_fh: AtomicU64,
    start: u64,
}

impl ProcFs {
    /// A filesystem serving every view of `service`.
    pub fn new(service: Arc<Service>) -> Self {
        Self::with_floor(service, false)
    }

    /// Like [`ProcFs::new`], adding the constant `.bench/floor` file when `floor` is set.
    pub fn with_floor(service: Arc<Service>, floor: bool) -> Self {
        let mut views = View::ALL.to_vec();
        if floor {
            views.push(View::Floor);
        }
        let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let tree = Tree::new(&views);
        let cpu_dir = crate::catalog::CPU_DIR.split('/').try_fold(ROOT, |dir, part| tree.child(dir, part));
        ProcFs {
            cpu: CpuDir::new(cpudir::host_dir(service.root().path())),
            cpu_dir,
            tree,
            service,
            handles: Mutex::new(Handles::default()),
            per_container: HANDLES_PER_CONTAINER,
            // Handle numbers must not repeat a predecessor's still open in some reader (its
            // pid may be ours again): a random high half per process.
            next_fh: AtomicU64::new((u64::from(random_u32().max(1)) << 32) | 1),
            start,
        }
    }

    /// Sets how many handles one container may hold open.
    pub fn with_handles_per_container(mut self, n: usize) -> Self {
        self.per_container = n.max(1);
        self
    }

    /// The container charged for `tid`'s handles: its cgroup, or one shared account for
    /// callers whose container cannot be found; with the container itself.
    fn owner(&self, tid: u32) -> (Arc<str>, Option<crate::service::Container>) {
        match self.service.container_of(tid) {
            Ok(c) => (c.cgroups.name().into(), Some(c)),
            Err(_) => ("<unknown>".into(), None),
        }
    }

    /// Attributes of any inode, as caller `tid` sees them: the static tree's or a host
    /// entry's. A file's size is its content's (for the caller) plus a margin, never 0: the
    /// kernel's splice path (sendfile, copy_file_range, Linux 6.5+) reads nothing of a file of
    /// size 0, and takes the size for the end of the file; `tail` seeks from it.
    /// `caller` resolves the caller's container, only for a served file (whose size is its
    /// content's).
    fn attr(&self, ino: u64, caller: impl FnOnce() -> crate::Result<Container>) -> Result<Attr, i32> {
        if ino & DYN_BIT != 0 {
            let e = self.cpu.entry(ino).ok_or(libc::ENOENT)?;
            return self.cpu.attr(ino, &e, self.start).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
        }
        let mut a = self.tree.attr(ino, self.start).ok_or(libc::ENOENT)?;
        if let Some(Node { kind: Kind::File(v), .. }) = self.tree.node(ino) {
            let len = self.service.render_with(*v, caller()).map_or(0, |d| d.len() as u64);
            a.size = len + SIZE_MARGIN;
        }
        Ok(a)
    }

    /// The inode of tree file `ino` for container `c` (the tree's own when the caller's
    /// container cannot be found).
    fn container_ino(ino: u64, c: Option<&Container>) -> u64 {
        match c {
            Some(c) => {
                let h = crate::fnv(c.cgroups.name().as_bytes());
                CT_BIT | ((h << 16) & !(CT_BIT | DYN_BIT) & !STATIC_MASK) | ino
            }
            None => ino,
        }
    }

    /// An entry reply; `caller` as for [`ProcFs::attr`]. `entry_ttl` 0 for names whose inode
    /// depends on the caller.
    fn entry(&self, ino: u64, entry_ttl: u64, caller: impl FnOnce() -> crate::Result<Container>) -> Reply {
        let attr = match self.attr(ino, caller) {
            Ok(a) => a,
            Err(e) => return Reply::Err(e),
        };
        let mut o = Out::default();
        o.u64(ino).u64(0).u64(entry_ttl).u64(TTL_SECS).u32(0).u32(0);
        attr.encode(&mut o);
        Reply::Data(o.0)
    }

    fn lookup(&self, h: &InHeader, body: &[u8]) -> Reply {
        let name = body.split(|&b| b == 0).next().unwrap_or(&[]);
        let Ok(name) = std::str::from_utf8(name) else {
            return Reply::Err(libc::ENOENT);
        };
        let caller = || self.service.container_of(h.pid);
        if h.nodeid & DYN_BIT != 0 {
            let found = self.cpu.entry(h.nodeid).and_then(|dir| self.cpu.lookup(&dir, name));
            return found.map_or(Reply::Err(libc::ENOENT), |ino| self.entry(ino, TTL_SECS, caller));
        }
        if let Some(ino) = self.tree.child(h.nodeid, name) {
            if let Some(Node { kind: Kind::File(_), .. }) = self.tree.node(ino) {
                // Resolved once for both the container's inode and the file's size.
                let c = self.service.container_of(h.pid);
                let ino = Self::container_ino(ino, c.as_ref().ok());
                return self.entry(ino, TTL_SECS, || c);
            }
            return self.entry(ino, TTL_SECS, caller);
        }
        if Some(h.nodeid) != self.cpu_dir {
            return Reply::Err(libc::ENOENT);
        }
        // cpuK: the K-th CPU the caller sees, a different directory for each container.
        let found = match cpu_index(name) {
            Some(k) => {
                let cpus = self.service.visible_cpus_for(h.pid);
                return cpus
                    .get(k as usize)
                    .and_then(|&c| self.cpu.cpu(c))
                    .map_or(Reply::Err(libc::ENOENT), |ino| self.entry(ino, 0, caller));
            }
            None => self.cpu.lookup_top(name),
        };
        found.map_or(Reply::Err(libc::ENOENT), |ino| self.entry(ino, TTL_SECS, caller))
    }

    fn getattr(&self, h: &InHeader) -> Reply {
        let attr = match self.attr(h.nodeid, || self.service.container_of(h.pid)) {
            Ok(a) => a,
            Err(e) => return Reply::Err(e),
        };
        let mut o = Out::default();
        o.u64(TTL_SECS).u32(0).u32(0);
        attr.encode(&mut o);
        Reply::Data(o.0)
    }

    /// What inode `ino` reads, if it is a file.
    fn source(&self, ino: u64) -> Option<Source> {
        if ino & DYN_BIT != 0 {
            let e = self.cpu.entry(ino)?;
            return (self.cpu.kind(&e).ok()? == HostKind::File).then_some(Source::Host(e));
        }
        match self.tree.node(ino) {
            Some(Node { kind: Kind::File(v), .. }) => Some(Source::View(*v)),
            _ => None,
        }
    }

    fn open(&self, h: &InHeader, body: &[u8]) -> Reply {
        let Some(source) = self.source(h.nodeid) else {
            return Reply::Err(libc::EISDIR);
        };
        let flags = Body(body).u32(0).unwrap_or(0) as i32;
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Reply::Err(libc::EROFS);
        }
        let (owner, container) = match source {
            // The benchmark's constant file: the FUSE floor, no caller lookup at all.
            Source::View(View::Floor) => ("<floor>".into(), None),
            _ => self.owner(h.pid),
        };
        let opener = container.map(|c| (h.pid, std::time::Instant::now(), c));
        let mut handles = self.handles.lock();
        if handles.map.len() >= MAX_HANDLES {
            return Reply::Err(libc::ENFILE);
        }
        // One container's handles never crowd out another's opens.
        if handles.usage.get(&owner).is_some_and(|u| u.handles >= self.per_container) {
            return Reply::Err(libc::EMFILE);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        handles.insert(fh, Handle { ino: h.nodeid, source, owner, opener, data: None });
        let mut o = Out::default();
        o.u64(fh).u32(abi::FOPEN_DIRECT_IO | abi::FOPEN_NOFLUSH).u32(0);
        Reply::Data(o.0)
    }

    fn read(&self, h: &InHeader, body: &[u8]) -> Reply {
        let b = Body(body);
        let (Some(fh), Some(offset), Some(size)) = (b.u64(0), b.u64(8), b.u32(16)) else {
            return Reply::Err(libc::EINVAL);
        };
        // A READ that would fill the page cache (splice, sendfile, copy_file_range on Linux
        // 6.5 to 6.18, mmap): pages kept by the kernel could be handed to a later reader
        // without asking the daemon, whoever it is. Refused: sendfile then fails with EINVAL,
        // and BusyBox, Python's shutil and coreutils fall back to read(2), answered per reader
        // (docs/architecture.md, "Read paths").
        if b.u32(20).is_some_and(|f| f & abi::FUSE_READ_LOCKOWNER == 0) {
            return Reply::Err(libc::EINVAL);
        }
        let (source, cached, opener, adopted) = match self.handles.lock().map.get(&fh) {
            // A handle answers only for the inode it was opened on.
            Some(hd) if hd.ino != h.nodeid => return Reply::Err(libc::EBADF),
            Some(hd) => {
                let opener = hd
                    .opener
                    .as_ref()
                    .filter(|(tid, at, _)| *tid == h.pid && at.elapsed() < crate::service::CALLER_TTL);
                (hd.source.clone(), hd.data.clone(), opener.map(|(_, _, c)| c.clone()), false)
            }
            // A handle opened before this process took over the connection: the inode says
            // which file it is; its earlier bytes are gone, so it is rendered afresh.
            None => match self.source(h.nodeid) {
                Some(s) => (s, None, None, true),
                None => return Reply::Err(libc::EBADF),
            },
        };
        // A read at offset 0 renders afresh (top and free lseek to 0 and re-read the same fd);
        // later offsets continue the same rendering so a file is never torn between samples.
        let data = match cached {
            Some(d) if offset > 0 => d,
            _ => {
                let bytes = match &source {
                    Source::View(v) => match opener {
                        Some(c) => self.service.render_with(*v, Ok(c)),
                        None => self.service.render_for(*v, h.pid),
                    },
                    Source::Host(e) => self.cpu.read(e).map_err(crate::error::Errno::from),
                };
                let d = match bytes {
                    Ok(d) => Arc::new(d),
                    Err(errno) => return Reply::Err(errno.0),
                };
                // Adopt the predecessor's handle, within the same bounds as opens.
                let owner = adopted.then(|| self.owner(h.pid).0);
                let mut handles = self.handles.lock();
                if let Some(owner) = owner {
                    let room = handles.map.len() < MAX_HANDLES
                        && handles.usage.get(&owner).is_none_or(|u| u.handles < self.per_container);
                    if room && !handles.map.contains_key(&fh) {
                        handles.insert(fh, Handle { ino: h.nodeid, source, owner, opener: None, data: None });
                    }
                }
                handles.keep(fh, &d);
                d
            }
        };
        let start = (offset.min(data.len() as u64)) as usize;
        let end = start.saturating_add(size as usize).min(data.len());
        Reply::Data(data[start..end].to_vec())
    }

    fn readdir(&self, h: &InHeader, body: &[u8]) -> Reply {
        let b = Body(body);
        let (Some(offset), Some(size)) = (b.u64(8), b.u32(16)) else {
            return Reply::Err(libc::EINVAL);
        };
        let dt = |k: HostKind| match k {
            HostKind::Dir => libc::DT_DIR,
            HostKind::File => libc::DT_REG,
            HostKind::Link => libc::DT_LNK,
        } as u32;
        let mut entries: Vec<(u64, String, u32)> = Vec::new();
        if h.nodeid & DYN_BIT != 0 {
            let Some(dir) = self.cpu.entry(h.nodeid) else { return Reply::Err(libc::ENOENT) };
            if self.cpu.kind(&dir).ok() != Some(HostKind::Dir) {
                return Reply::Err(libc::ENOTDIR);
            }
            entries.push((h.nodeid, ".".into(), libc::DT_DIR as u32));
            entries.push((self.cpu_dir.unwrap_or(ROOT), "..".into(), libc::DT_DIR as u32));
            entries.extend(self.cpu.list(&dir).into_iter().map(|(i, n, k)| (i, n, dt(k))));
        } else {
            let Some(Node { kind: Kind::Dir(children), parent, .. }) = self.tree.node(h.nodeid) else {
                return Reply::Err(libc::ENOTDIR);
            };
            entries.push((h.nodeid, ".".into(), libc::DT_DIR as u32));
            entries.push((*parent, "..".into(), libc::DT_DIR as u32));
            let mut views = Vec::new();
            for &c in children {
                if let Some(n) = self.tree.node(c) {
                    let t = match n.kind {
                        Kind::Dir(_) => libc::DT_DIR,
                        Kind::File(_) => libc::DT_REG,
                    };
                    entries.push((c, n.name.clone(), t as u32));
                    views.push(n.name.as_str());
                }
            }
            if Some(h.nodeid) == self.cpu_dir {
                // The caller's CPUs as cpu0..cpuN-1, then the rest of the host's directory.
                let cpus = self.service.visible_cpus_for(h.pid);
                for (k, &c) in cpus.iter().enumerate() {
                    if let Some(ino) = self.cpu.cpu(c) {
                        entries.push((ino, format!("cpu{k}"), libc::DT_DIR as u32));
                    }
                }
                entries.extend(self.cpu.list_top(&views).into_iter().map(|(i, n, k)| (i, n, dt(k))));
            }
        }
        Reply::Data(abi::dirents(&entries, offset, size))
    }

    fn statfs(&self) -> Reply {
        Reply::Data(abi::statfs(self.tree.nodes.len() as u64))
    }
}

/// ACCESS on a read-only tree: `default_permissions` makes the kernel check modes; a write
/// is refused outright.
fn access(body: &[u8]) -> Reply {
    let mask = Body(body).u32(0).unwrap_or(0) as i32;
    if mask & libc::W_OK != 0 {
        Reply::Err(libc::EROFS)
    } else {
        Reply::Data(vec![])
    }
}

/// 32 random bits from the kernel (`getrandom`), or the time's when it has none to give.
fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: writes at most 4 bytes into a local buffer.
    let r = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, b.len(), libc::GRND_NONBLOCK) };
    if r == 4 {
        u32::from_ne_bytes(b)
    } else {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
    }
}

impl Handler for ProcFs {
    fn dispatch(&self, h: &InHeader, body: &[u8]) -> Reply {
        match h.opcode {
            op::LOOKUP => self.lookup(h, body),
            op::GETATTR => self.getattr(h),
            op::OPEN => self.open(h, body),
            op::READ => self.read(h, body),
            op::RELEASE => {
                if let Some(fh) = Body(body).u64(0) {
                    self.handles.lock().remove(fh);
                }
                Reply::Data(vec![])
            }
            op::OPENDIR => {
                let is_dir = if h.nodeid & DYN_BIT != 0 {
                    self.cpu.entry(h.nodeid).and_then(|e| self.cpu.kind(&e).ok()) == Some(HostKind::Dir)
                } else {
                    matches!(self.tree.node(h.nodeid), Some(Node { kind: Kind::Dir(_), .. }))
                };
                if is_dir {
                    let mut o = Out::default();
                    o.u64(0).u32(0).u32(0);
                    Reply::Data(o.0)
                } else {
                    Reply::Err(libc::ENOTDIR)
                }
            }
            op::READLINK => match self.cpu.entry(h.nodeid) {
                Some(e) if h.nodeid & DYN_BIT != 0 => match self.cpu.readlink(&e) {
                    Ok(t) => Reply::Data(t.into_os_string().into_encoded_bytes()),
                    Err(e) => Reply::Err(e.raw_os_error().unwrap_or(libc::EINVAL)),
                },
                _ => Reply::Err(libc::EINVAL),
            },
            op::READDIR => self.readdir(h, body),
            op::RELEASEDIR | op::FLUSH => Reply::Data(vec![]),
            op::STATFS => self.statfs(),
            op::ACCESS => access(body),
            op::SETATTR | op::WRITE | op::CREATE => Reply::Err(libc::EROFS),
            op::FORGET | op::BATCH_FORGET | op::INTERRUPT => Reply::None,
            op::DESTROY => Reply::Data(vec![]),
            // ENOSYS makes the kernel stop asking for the rest of the connection's life.
            _ => Reply::Err(libc::ENOSYS),
        }
    }
}
