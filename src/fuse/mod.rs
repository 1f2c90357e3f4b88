//! The FUSE adapter: a static inode tree built from [`Served::ALL`], per-open handles holding
//! the rendered bytes, and the mapping of FUSE operations onto [`Service`]. Kept thin: all
//! content comes from the service; all protocol mechanics live in [`session`].

pub mod abi;
pub mod cached;
pub mod cpudir;
pub mod handles;
pub mod ino;
pub mod journal;
pub mod psi;
pub mod reply;
pub mod request;
pub mod session;
pub mod spin;
pub mod tree;
pub mod trigger;

use crate::catalog::Served;
use crate::error::Errno;
use crate::service::{Container, Service};
use abi::InHeader;
use cpudir::{cpu_index, CpuDir, Entry as HostEntry, Kind as HostKind};
use handles::{Handle, Handles};
use ino::Ino;
use parking_lot::Mutex;
use reply::{Attr, Dirent, Reply};
use request::Request;
use session::Handler;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
pub use tree::Tree;

/// Inode number of the mount's root directory (fixed by the kernel).
const ROOT: u64 = 1;
pub use handles::HANDLES_PER_CONTAINER;
/// Added to a file's length for its reported size: content that grew by a few digits since
/// the size was taken is still within it.
const SIZE_MARGIN: u64 = 1024;
/// How long the kernel may cache names and attributes; the tree never changes.
const TTL: Duration = Duration::from_secs(1);

/// What an open file reads.
#[derive(Clone)]
pub(crate) enum Source {
    Served(Served),
    Host(HostEntry),
}

/// The FUSE filesystem: tree + handles + service.
pub struct ProcFs {
    tree: Tree,
    /// The host-backed part of `sys/devices/system/cpu`, and that directory's inode.
    cpu: CpuDir,
    cpu_dir: Option<u64>,
    service: Arc<Service>,
    /// Shared with the trigger connection's filesystem ([`ProcFs::sharing_handles`]): one
    /// quota per container across both.
    handles: Arc<Mutex<Handles>>,
    per_container: usize,
    next_fh: Arc<AtomicU64>,
    start: u64,
    /// The root is mode 0500: set for the trigger connection ([`trigger::TriggerFs`]), which is
    /// reached through binds only.
    private_root: bool,
}

impl ProcFs {
    /// A filesystem serving every view of `service`.
    pub fn new(service: Arc<Service>) -> Self {
        Self::with_floor(service, false)
    }

    /// Like [`ProcFs::new`], adding the constant `.bench/floor` file when `floor` is set.
    pub fn with_floor(service: Arc<Service>, floor: bool) -> Self {
        let mut views = Served::ALL.to_vec();
        if floor {
            views.push(Served::Floor);
        }
        let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let tree = Tree::new(&views);
        let cpu_dir = crate::catalog::CPU_DIR.split('/').try_fold(ROOT, |dir, part| tree.lookup(dir, part));
        ProcFs {
            cpu: CpuDir::new(cpudir::host_dir(service.root().path())),
            cpu_dir,
            tree,
            service,
            handles: Arc::new(Mutex::new(Handles::default())),
            per_container: HANDLES_PER_CONTAINER,
            // Handle numbers must not repeat a predecessor's still open in some reader (its
            // pid may be ours again): a random high half per process.
            next_fh: Arc::new(AtomicU64::new((u64::from(random_u32().max(1)) << 32) | 1)),
            start,
            private_root: false,
        }
    }

    /// Keeps its handles in `other`'s table, numbered from its counter: the trigger
    /// connection's opens count against the same per-container quota and global limit as the
    /// main connection's, and `cgprocfs status` sees them all.
    pub fn sharing_handles(mut self, other: &ProcFs) -> Self {
        self.handles = Arc::clone(&other.handles);
        self.next_fh = Arc::clone(&other.next_fh);
        self
    }

    /// RELEASE: the handle leaves the table (and is returned, for the trigger connection's
    /// trigger).
    fn release(&self, fh: u64) -> Option<Handle> {
        self.handles.lock().remove(fh)
    }

    /// Open handles by container, most first.
    pub fn handles_by_container(&self) -> Vec<crate::stats::HandleUse> {
        let h = self.handles.lock();
        let mut v: Vec<crate::stats::HandleUse> = h
            .usage
            .iter()
            .map(|(c, u)| crate::stats::HandleUse { container: c.to_string(), handles: u.handles, bytes: u.bytes })
            .collect();
        drop(h);
        v.sort_by(|a, b| b.handles.cmp(&a.handles).then_with(|| a.container.cmp(&b.container)));
        v
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
    fn attr(&self, ino: u64, caller: impl FnOnce() -> crate::Result<Container>) -> Result<Attr, Errno> {
        let node = match Ino::of(ino) {
            Ino::Host(h) => {
                let e = self.cpu.entry(h).ok_or(Errno(libc::ENOENT))?;
                return self.cpu.attr(h, &e, self.start).map_err(Errno::from);
            }
            Ino::Tree(t) | Ino::Own(t) => t,
        };
        let mut a = self.tree.attr(node, ino, self.start).ok_or(Errno(libc::ENOENT))?;
        if node == ROOT && self.private_root {
            // The trigger connection is reached through binds only: no local user walks it
            // (the kernel checks modes: `default_permissions`).
            a.mode = libc::S_IFDIR | 0o500;
        }
        if let Some(v) = self.tree.view(node) {
            let len = self.service.render_with(v, caller()).map_or(0, |d| d.len() as u64);
            a.size = len + SIZE_MARGIN;
        }
        Ok(a)
    }

    /// The inode of tree file `ino` for container `c` (the tree's own when the caller's
    /// container cannot be found).
    fn container_ino(ino: u64, c: Option<&Container>) -> u64 {
        match c {
            Some(c) => Ino::own(ino, &c.cgroups.name()),
            None => ino,
        }
    }

    /// An entry reply; `caller` as for [`ProcFs::attr`]. `entry_ttl` 0 for names whose inode
    /// depends on the caller.
    fn entry(&self, ino: u64, entry_ttl: Duration, caller: impl FnOnce() -> crate::Result<Container>) -> Reply {
        match self.attr(ino, caller) {
            Ok(a) => Reply::entry(ino, entry_ttl, TTL, &a),
            Err(e) => Reply::Err(e),
        }
    }

    fn lookup(&self, h: &InHeader, name: &[u8]) -> Reply {
        let Ok(name) = std::str::from_utf8(name) else {
            return Reply::err(libc::ENOENT);
        };
        let caller = || self.service.container_of(h.pid);
        let dir = match Ino::of(h.nodeid) {
            Ino::Host(d) => {
                let found = self.cpu.entry(d).and_then(|dir| self.cpu.lookup(&dir, name));
                return found.map_or(Reply::err(libc::ENOENT), |ino| self.entry(ino, TTL, caller));
            }
            Ino::Tree(d) | Ino::Own(d) => d,
        };
        if let Some(ino) = self.tree.lookup(dir, name) {
            if self.tree.view(ino).is_some() {
                // Resolved once for both the container's inode and the file's size.
                let c = self.service.container_of(h.pid);
                let ino = Self::container_ino(ino, c.as_ref().ok());
                return self.entry(ino, TTL, || c);
            }
            return self.entry(ino, TTL, caller);
        }
        if Some(dir) != self.cpu_dir {
            return Reply::err(libc::ENOENT);
        }
        // cpuK: the K-th CPU the caller sees, a different directory for each container.
        let found = match cpu_index(name) {
            Some(k) => {
                let cpus = self.service.visible_cpus_for(h.pid);
                return cpus
                    .get(k as usize)
                    .and_then(|&c| self.cpu.cpu(c))
                    .map_or(Reply::err(libc::ENOENT), |ino| self.entry(ino, Duration::ZERO, caller));
            }
            None => self.cpu.lookup_top(name),
        };
        found.map_or(Reply::err(libc::ENOENT), |ino| self.entry(ino, TTL, caller))
    }

    fn getattr(&self, h: &InHeader) -> Reply {
        match self.attr(h.nodeid, || self.service.container_of(h.pid)) {
            Ok(a) => Reply::attr(TTL, &a),
            Err(e) => Reply::Err(e),
        }
    }

    /// What inode `ino` reads, if it is a file.
    fn source(&self, ino: u64) -> Option<Source> {
        match Ino::of(ino) {
            Ino::Host(h) => {
                let e = self.cpu.entry(h)?;
                (self.cpu.kind(&e).ok()? == HostKind::File).then_some(Source::Host(e))
            }
            Ino::Tree(t) | Ino::Own(t) => self.tree.view(t).map(Source::Served),
        }
    }

    /// OPEN, read-only; with `triggers` (the trigger connection) a pressure file also opens
    /// for writing.
    fn open(&self, h: &InHeader, flags: u32, triggers: bool) -> Reply {
        let Some(source) = self.source(h.nodeid) else {
            return Reply::err(libc::EISDIR);
        };
        let flags = flags as i32;
        // Only a pressure file takes writes (a PSI trigger); O_TRUNC is harmless there, as on
        // the host (`echo ... > /proc/pressure/memory`).
        // Only on the trigger connection (the main one is a read-only superblock).
        let writable = triggers && matches!(source, Source::Served(v) if v.pressure_file().is_some());
        if !writable && (flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0) {
            return Reply::err(libc::EROFS);
        }
        let (owner, container) = match source {
            // The benchmark's constant file: the FUSE floor, no caller lookup at all.
            Source::Served(Served::Floor) => ("<floor>".into(), None),
            _ => self.owner(h.pid),
        };
        let opener = container.map(|c| (h.pid, std::time::Instant::now(), c));
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Handle { ino: h.nodeid, source, owner, opener, data: None, trigger: None };
        match self.handles.lock().admit(fh, handle, self.per_container) {
            Ok(()) => Reply::open(fh, abi::FOPEN_DIRECT_IO | abi::FOPEN_NOFLUSH),
            Err(e) => Reply::Err(e),
        }
    }

    fn read(&self, h: &InHeader, fh: u64, offset: u64, size: u32, read_flags: Option<u32>) -> Reply {
        // A READ that would fill the page cache (splice, sendfile, copy_file_range on Linux
        // 6.5 to 6.18, mmap): pages kept by the kernel could be handed to a later reader
        // without asking the daemon, whoever it is. Refused: sendfile then fails with EINVAL,
        // and BusyBox, Python's shutil and coreutils fall back to read(2), answered per reader
        // (docs/architecture.md, "Read paths").
        if read_flags.is_some_and(|f| f & abi::FUSE_READ_LOCKOWNER == 0) {
            return Reply::err(libc::EINVAL);
        }
        let (source, cached, opener, adopted) = match self.handles.lock().map.get(&fh) {
            // A handle answers only for the inode it was opened on.
            Some(hd) if hd.ino != h.nodeid => return Reply::err(libc::EBADF),
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
                None => return Reply::err(libc::EBADF),
            },
        };
        // A read at offset 0 renders afresh (top and free lseek to 0 and re-read the same fd);
        // later offsets continue the same rendering so a file is never torn between samples.
        let data = match cached {
            Some(d) if offset > 0 => d,
            _ => {
                let bytes = match &source {
                    Source::Served(v) => match opener {
                        Some(c) => self.service.render_with(*v, Ok(c)),
                        None => self.service.render_for(*v, h.pid),
                    },
                    Source::Host(e) => self.cpu.read(e).map_err(Errno::from),
                };
                let d = match bytes {
                    Ok(d) => Arc::new(d),
                    Err(errno) => return Reply::Err(errno),
                };
                // Adopt the predecessor's handle, within the same bounds as opens.
                let owner = adopted.then(|| self.owner(h.pid).0);
                let mut handles = self.handles.lock();
                if let Some(owner) = owner {
                    if !handles.map.contains_key(&fh) {
                        // Past the bounds the read is still answered, from bytes not kept.
                        let handle = Handle { ino: h.nodeid, source, owner, opener: None, data: None, trigger: None };
                        let _ = handles.admit(fh, handle, self.per_container);
                    }
                }
                handles.keep(fh, &d);
                d
            }
        };
        Reply::slice(&data, offset, size)
    }

    fn readdir(&self, h: &InHeader, offset: u64, size: u32) -> Reply {
        let dt = |k: HostKind| match k {
            HostKind::Dir => libc::DT_DIR,
            HostKind::File => libc::DT_REG,
            HostKind::Link => libc::DT_LNK,
        } as u32;
        let mut entries: Vec<Dirent> = Vec::new();
        let dir = match Ino::of(h.nodeid) {
            Ino::Host(d) => {
                let Some(dir) = self.cpu.entry(d) else { return Reply::err(libc::ENOENT) };
                if self.cpu.kind(&dir).ok() != Some(HostKind::Dir) {
                    return Reply::err(libc::ENOTDIR);
                }
                entries.push((h.nodeid, ".".into(), libc::DT_DIR as u32));
                entries.push((self.cpu_dir.unwrap_or(ROOT), "..".into(), libc::DT_DIR as u32));
                entries.extend(self.cpu.list(&dir).into_iter().map(|(i, n, k)| (i, n, dt(k))));
                return Reply::dirents(&entries, offset, size);
            }
            Ino::Tree(d) | Ino::Own(d) => d,
        };
        let Some((parent, children)) = self.tree.list(dir) else {
            return Reply::err(libc::ENOTDIR);
        };
        entries.push((h.nodeid, ".".into(), libc::DT_DIR as u32));
        entries.push((parent, "..".into(), libc::DT_DIR as u32));
        let mut views = Vec::new();
        for (c, name, is_dir) in children {
            entries.push((c, name.to_string(), if is_dir { libc::DT_DIR } else { libc::DT_REG } as u32));
            views.push(name);
        }
        if Some(dir) == self.cpu_dir {
            // The caller's CPUs as cpu0..cpuN-1, then the rest of the host's directory.
            let cpus = self.service.visible_cpus_for(h.pid);
            for (k, &c) in cpus.iter().enumerate() {
                if let Some(ino) = self.cpu.cpu(c) {
                    entries.push((ino, format!("cpu{k}"), libc::DT_DIR as u32));
                }
            }
            entries.extend(self.cpu.list_top(&views).into_iter().map(|(i, n, k)| (i, n, dt(k))));
        }
        Reply::dirents(&entries, offset, size)
    }

    fn opendir(&self, ino: u64) -> Reply {
        let is_dir = match Ino::of(ino) {
            Ino::Host(h) => self.cpu.entry(h).and_then(|e| self.cpu.kind(&e).ok()) == Some(HostKind::Dir),
            Ino::Tree(t) | Ino::Own(t) => self.tree.list(t).is_some(),
        };
        if is_dir {
            Reply::open(0, 0)
        } else {
            Reply::err(libc::ENOTDIR)
        }
    }

    fn readlink(&self, ino: u64) -> Reply {
        let Ino::Host(h) = Ino::of(ino) else { return Reply::err(libc::EINVAL) };
        match self.cpu.entry(h).map(|e| self.cpu.readlink(&e)) {
            Some(Ok(t)) => Reply::Data(t.into_os_string().into_encoded_bytes()),
            Some(Err(e)) => Reply::err(e.raw_os_error().unwrap_or(libc::EINVAL)),
            None => Reply::err(libc::EINVAL),
        }
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
    fn handle(&self, h: &InHeader, req: Request<'_>) -> Reply {
        match req {
            Request::Lookup { name } => self.lookup(h, name),
            Request::Getattr => self.getattr(h),
            Request::Open { flags } => self.open(h, flags, false),
            Request::Read { fh, offset, size, read_flags } => self.read(h, fh, offset, size, read_flags),
            Request::Release { fh } => {
                if let Some(fh) = fh {
                    self.release(fh);
                }
                Reply::empty()
            }
            // A read-only superblock: the kernel refuses writes and changes before asking.
            Request::Write { .. } | Request::Setattr { .. } => Reply::err(libc::EROFS),
            // No triggers here: ENOSYS makes the kernel stop sending POLL for the connection's
            // life and answer every poll itself, at once (`fuse_file_poll`: `fc->no_poll`), so
            // no poll ever waits on this daemon.
            Request::Poll { .. } => Reply::err(libc::ENOSYS),
            Request::Opendir => self.opendir(h.nodeid),
            Request::Readlink => self.readlink(h.nodeid),
            Request::Readdir { offset, size } => self.readdir(h, offset, size),
            Request::Releasedir | Request::Flush | Request::Destroy => Reply::empty(),
            Request::Statfs => Reply::statfs(self.tree.len() as u64),
            Request::Access { mask } => Reply::access(mask),
            Request::Change => Reply::err(libc::EROFS),
            Request::Forget { .. } | Request::Interrupt => Reply::None,
            // ENOSYS makes the kernel stop asking for the rest of the connection's life.
            Request::Other(_) => Reply::err(libc::ENOSYS),
        }
    }
}
