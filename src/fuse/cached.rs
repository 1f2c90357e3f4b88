//! The cached tree: each container's own copy of the served files, on a second FUSE
//! connection, read from the kernel's page cache.
//!
//! The shared tree (`fuse/mod.rs`) answers every read itself, because one file there shows each
//! caller its own container. Here a file belongs to one container, named when the OCI hook or
//! `cgprocfs run` binds it: `<key>/proc/meminfo`, where `<key>` is `<pid>-<start>`, the pid of
//! the container's init in the daemon's pid namespace and its start time in clock ticks
//! (`/proc/<pid>/stat` field 22). (Not a `self` name resolved per caller, like procfs's: one
//! name whose inode changes with the caller races between two containers starting at once.)
//! So its pages can be kept by the kernel and a repeated read costs no round trip:
//!
//! - OPEN and FLUSH answer `ENOSYS`: the kernel stops sending them on this connection
//!   (`fc->no_open`, `fc->no_flush`, `fs/fuse/file.c`) and opens every file with
//!   `FOPEN_KEEP_CACHE`. That is why this is a connection of its own.
//! - `FUSE_AUTO_INVAL_DATA` and an attribute timeout within the freshness bound ([`attr_timeout`]:
//!   the bound less the age a rendering's inputs may have; for the load file, whose figures
//!   change only at a load pass, until the next pass, [`attr_ttl`]): on a read whose attributes are
//!   older than that the kernel sends GETATTR
//!   (`fuse_cache_read_iter` -> `fuse_update_attributes`); the reply gives the size of a new
//!   rendering and, as mtime, the time its content last changed; a changed mtime or size makes
//!   the kernel drop the cached pages (`fuse_change_attributes`) and the next READ fetches that
//!   rendering. Within the bound, reads never reach the daemon.
//! - The rendering the last GETATTR described is kept (a snapshot) and every READ is answered
//!   from it, so the pages the kernel caches are one rendering of exactly the size it was told.
//!   It is also appended to a root-only journal before the reply goes out (fuse/journal.rs),
//!   so a worker that replaces a killed one answers a READ with the same bytes (a newer
//!   rendering, longer than the size the kernel holds, would be cut: a torn file).
//!
//! Node ids carry everything needed to answer them, so a restarted worker or a keeper that
//! took the connection over answers the kernel's existing inodes without any state: the key's
//! pid (bits 40..61), the low 24 bits of its start time (bits 16..39) and the shared tree's
//! number of the file or directory (bits 0..15). A process that is gone, or a pid that now
//! names another process, gets `ENOENT`.
//!
//! A file is its container's whoever reads it: GETATTR and READ answer the key's container,
//! never the caller's. The inode is one for all and its pages are handed by the kernel to
//! whoever opens it, so anything else would be a lie half the time, and an empty size told
//! to another caller would cut the pages the container reads (an empty or short file for
//! it). Who can open it is what keeps it the container's: the tree's root is mode 0500
//! (`default_permissions`) and lists no key, so only the container (through its binds) and
//! whoever may already look into its processes (`/proc/<pid>/root`: root, or the processes'
//! own host user) reach it (docs/security.md).

use super::abi::InHeader;
use super::ino::{Key, START_MASK};
use super::journal::{Journal, Recorded};
use super::reply::{Attr, Dirent, Reply};
use super::request::{forgotten, Request};
use super::session::Handler;
use super::Tree;
use crate::catalog::Served;
use crate::cgroup::Container;
use crate::error::Errno;
use crate::sampler::cache::TtlMap;
use crate::sampler::LIMITS_TTL;
use crate::service::{Service, CALLER_TTL};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Node id of the mount's root.
const ROOT: u64 = 1;
/// The shared tree's root: a key directory's own number in the low bits.
const TREE_ROOT: u64 = 1;
/// Two GETATTRs this close together (two readers whose attributes expired together) get the
/// same snapshot, so both leave the kernel with the same size and version.
const REUSE: Duration = Duration::from_millis(5);
/// How long directories' names and attributes are cached: they never change.
const DIR_TTL: Duration = Duration::from_secs(3600);
/// The kernel keeps an attribute timeout in jiffies, rounded up: up to one more jiffy (10 ms
/// at the coarsest HZ, 100) than it was told.
const JIFFY_MAX: Duration = Duration::from_millis(10);

/// The attribute timeout that keeps a file within `fresh` of the kernel's files: the bound,
/// less the oldest input a rendering may use (a limit, [`LIMITS_TTL`]), a reused rendering's
/// age (a pass, `service::texts`), a reused snapshot's age and the kernel's rounding.
pub fn attr_timeout(fresh: Duration) -> Duration {
    fresh.saturating_sub(LIMITS_TTL + crate::sampler::PASS + REUSE + JIFFY_MAX)
}
/// How long the kernel may keep a file's attributes: within the freshness bound
/// ([`attr_timeout`]), or, for content that cannot change before a known time (the load file,
/// until the next load pass), until that time: a reader once a second then asks once a pass
/// instead of once a read. Capped at a pass, should a clock disagree.
fn attr_ttl(fresh: Duration, until_ns: Option<u64>) -> Duration {
    let bound = attr_timeout(fresh);
    let Some(until) = until_ns else { return bound };
    let left = Duration::from_nanos(until.saturating_sub(crate::host::boottime_ns()));
    left.min(PASS).max(bound)
}

/// The longest time content can be known not to change: a load pass.
const PASS: Duration = Duration::from_nanos(crate::state::load::LOAD_FREQ_NS);

/// Snapshots are dropped when the kernel forgets their inode, or when this old (a read after
/// that is preceded by a GETATTR anyway: the attributes expired long before).
const SNAPSHOT_AGE: Duration = Duration::from_secs(60);

/// The mount source of the cached tree of the daemon serving `mountpoint` (the shared tree's
/// is [`crate::reattach::source_name`]): how hooks and `run` find it, whatever pid file the
/// daemon was given.
pub fn source_name(mountpoint: &Path) -> String {
    format!("cgprocfs-cache:{:016x}", crate::fnv(mountpoint.as_os_str().as_encoded_bytes()))
}

/// Where the cached tree of the daemon serving `mountpoint` is mounted, as this process sees
/// it (the latest such mount).
pub fn find(mountpoint: &Path) -> Option<PathBuf> {
    super::session::find_companion(mountpoint, source_name)
}

/// The directory name of the container whose init is `pid`, as the OCI hook looks it up.
pub fn key_name(pid: u32) -> std::io::Result<String> {
    let ticks = crate::procfs::start_ticks(&crate::Root::new("/"), pid).map_err(std::io::Error::other)?;
    Ok(format!("{pid}-{ticks}"))
}

/// When a file's content last changed (seconds, nanoseconds since the epoch): its mtime, which
/// the kernel compares to drop stale pages.
type Version = (u64, u32);

/// Now, as a [`Version`].
fn now_version() -> Version {
    let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

/// One rendering of a file, as the kernel was last told about it.
struct Snapshot {
    told: Told,
    taken: Instant,
    /// The journal generation it is recorded in (0: none).
    generation: u64,
}

/// What a snapshot tells the kernel.
#[derive(Clone)]
struct Told {
    bytes: Arc<Vec<u8>>,
    /// When its content last changed.
    changed: Version,
    /// Until when (CLOCK_BOOTTIME ns) its content cannot change, if known.
    until_ns: Option<u64>,
}

/// The FUSE filesystem of the cached tree.
pub struct CachedFs {
    tree: Tree,
    service: Arc<Service>,
    fresh: Duration,
    /// Where every snapshot the kernel was told about is also recorded (in a root-only tmpfs
    /// directory beside the state file), so that the next worker answers a READ with the bytes
    /// whose size the kernel holds, not a newer rendering of another length (which the page
    /// cache would cut at the old size).
    journal: Option<Journal>,
    /// The directory of the journal, where versions before it wrote one file per snapshot.
    dir: Option<PathBuf>,
    /// What the predecessors recorded, taken by the first READ of each node.
    recorded: Mutex<Recorded>,
    snapshots: Mutex<HashMap<u64, Snapshot>>,
    /// A key's container, reused like a caller's: the key's process was checked when it was
    /// found, and a container's files are its own whoever reads them.
    keys: TtlMap<Key, Container>,
    /// When old snapshots were last dropped.
    pruned: Mutex<Instant>,
    start: u64,
}

/// The bench floor's files in each key directory (`serve --bench-floor`).
pub const FLOORS: [&str; 5] = [".bench/floor", ".bench/floor-1", ".bench/floor-2", ".bench/floor-3", ".bench/floor-4"];

/// Whether `view` is the bench floor, which the cached tree tells the kernel has changed at
/// every GETATTR: each read then costs what a read of a file whose content changed costs (a
/// GETATTR and a READ), with no rendering.
fn always_changed(view: Served) -> bool {
    view == Served::Floor
}

impl CachedFs {
    /// Like [`CachedFs::new`], adding to each key, when `floor` is set (`serve
    /// --bench-floor`), [`FLOORS`] copies of the bench floor: their bytes are constant and their
    /// version new at every GETATTR, so that a bench reading them measures the round trips of
    /// reads of changed files alone (several files, as an agent reads several: the kernel
    /// keeps one file's attributes for the attribute timeout). They are numbered after every
    /// served file, whose numbers they leave as they are.
    pub fn with_floor(service: Arc<Service>, fresh: Duration, dir: Option<PathBuf>, floor: bool) -> Self {
        let mut fs = Self::new(service, fresh, dir);
        if floor {
            for path in FLOORS {
                fs.tree.add(path, Served::Floor);
            }
        }
        fs
    }

    /// Serves every view of `service`, each file fresh within `fresh`, keeping snapshots in
    /// `dir` across workers.
    pub fn new(service: Arc<Service>, fresh: Duration, dir: Option<PathBuf>) -> Self {
        let start = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let dir = dir.filter(|d| match crate::files::private_dir(d, 0o700) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e, "cached tree: snapshots not kept across workers");
                false
            }
        });
        if let Some(d) = &dir {
            // A predecessor's snapshots older than any attribute timeout: no READ needs them
            // (one file each, as versions before the journal wrote them).
            let age = SNAPSHOT_AGE.max(fresh * 2);
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                if e.file_name().as_encoded_bytes().first() == Some(&b'j') {
                    continue;
                }
                if e.metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|a| a > age)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // The kernel may hold a size for as long as the longest attribute timeout (a load
        // file's: up to a pass).
        let (journal, recorded) = match &dir {
            Some(d) => {
                let (j, r) = Journal::open(d, fresh * 2 + PASS + Duration::from_secs(1));
                (Some(j), r)
            }
            None => (None, Recorded::new()),
        };
        CachedFs {
            tree: Tree::new(Served::ALL),
            service,
            fresh,
            journal,
            dir,
            recorded: Mutex::new(recorded),
            snapshots: Mutex::new(HashMap::new()),
            keys: TtlMap::new(CALLER_TTL),
            pruned: Mutex::new(Instant::now()),
            start,
        }
    }

    /// The container of `key`, if its process still runs with that start time.
    fn container(&self, key: Key) -> Result<Container, Errno> {
        let found = || {
            match crate::procfs::start_ticks(self.service.root(), key.pid).ok() {
                Some(t) if t & START_MASK == key.start & START_MASK => {}
                _ => return Err(crate::Error::Gone(PathBuf::from(format!("/proc/{}", key.pid)))),
            }
            self.service.container_of(key.pid)
        };
        self.keys.get(key, found).map_err(|_| Errno(libc::ENOENT))
    }

    /// Where a version before the journal wrote node `node`'s snapshot.
    fn file(&self, node: u64) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{node:016x}")))
    }

    /// The snapshot of file `node` (`view` of container `c`): the kept one if taken within
    /// [`REUSE`] (or, for a READ, `reuse_any`: the kept one, or the one a previous worker
    /// recorded), else a new rendering, recorded before the kernel hears of it.
    fn snapshot(&self, node: u64, view: Served, c: &Container, reuse_any: bool) -> Result<Told, Errno> {
        if let Some(s) = self.snapshots.lock().get(&node) {
            if reuse_any || (s.taken.elapsed() < REUSE && !always_changed(view)) {
                return Ok(s.told.clone());
            }
        }
        if reuse_any {
            if let Some(bytes) = self.predecessors(node) {
                let told = Told { bytes: Arc::new(bytes), changed: (0, 0), until_ns: None };
                let s = Snapshot { told: told.clone(), taken: Instant::now(), generation: 0 };
                self.snapshots.lock().insert(node, s);
                return Ok(told);
            }
        }
        let (bytes, until_ns) = self.service.render_until(view, Ok(c.clone()))?;
        let bytes = Arc::new(bytes);
        let mut map = self.snapshots.lock();
        let old = map.get(&node).filter(|old| old.told.bytes == bytes && !always_changed(view));
        let changed = old.map_or_else(now_version, |old| old.told.changed);
        // Recorded again when new, or when its record is in a generation the journal may drop.
        let current = self.journal.as_ref().map_or(0, Journal::generation);
        let recorded = match (old, &self.journal) {
            (Some(old), _) if old.generation == current => old.generation,
            (_, Some(j)) => j.record(node, &bytes).unwrap_or_else(|e| {
                tracing::debug!(node, error = %e, "cached tree: snapshot not recorded");
                0
            }),
            (_, None) => 0,
        };
        // Bounded without a scan per insert: at most one sweep per SNAPSHOT_AGE / 6. Past its
        // age a snapshot's attributes expired long ago, so no READ comes before a GETATTR.
        let mut pruned = self.pruned.lock();
        let age = SNAPSHOT_AGE.max(self.fresh * 2);
        if map.len() >= 4096 && pruned.elapsed() > SNAPSHOT_AGE / 6 {
            map.retain(|_, s| s.taken.elapsed() < age);
            *pruned = Instant::now();
        }
        if pruned.elapsed() > age {
            // Whatever predecessors recorded is older than any attribute the kernel holds.
            std::mem::take(&mut *self.recorded.lock());
        }
        drop(pruned);
        let told = Told { bytes, changed, until_ns };
        map.insert(node, Snapshot { told: told.clone(), taken: Instant::now(), generation: recorded });
        Ok(told)
    }

    /// The bytes a previous worker last described for `node`: its journal's, or (a version
    /// before the journal) its file's.
    fn predecessors(&self, node: u64) -> Option<Vec<u8>> {
        self.recorded.lock().remove(&node).or_else(|| self.file(node).and_then(|f| std::fs::read(f).ok()))
    }

    /// Attributes of `node`, with how long the kernel may keep them.
    fn attr(&self, node: u64) -> Result<(Attr, Duration), Errno> {
        let dir = |ino, nlink| Attr { ino, size: 0, mode: libc::S_IFDIR | 0o555, nlink, time: self.start, nsec: 0 };
        if node == ROOT {
            // Only root walks the root: containers reach their files through bind mounts.
            let mut a = dir(ROOT, 2);
            a.mode = libc::S_IFDIR | 0o500;
            return Ok((a, DIR_TTL));
        }
        let (key, idx) = Key::of_node(node).ok_or(Errno(libc::ENOENT))?;
        let c = self.container(key)?;
        let Some(view) = self.tree.view(idx) else {
            let (_, children) = self.tree.list(idx).ok_or(Errno(libc::ENOENT))?;
            return Ok((dir(node, 2 + children.len() as u32), DIR_TTL));
        };
        let empty = Attr { ino: node, size: 0, mode: libc::S_IFREG | view.mode(), nlink: 1, time: self.start, nsec: 0 };
        // Whoever asks (the container, or host root through /proc/<pid>/root) is told the
        // container's attributes: the inode is one for all, and any other size would make the
        // kernel cut the pages the container reads (an empty or short file for it).
        let Told { bytes, changed: (time, nsec), until_ns } = self.snapshot(node, view, &c, false)?;
        Ok((Attr { size: bytes.len() as u64, time, nsec, ..empty }, attr_ttl(self.fresh, until_ns)))
    }

    fn lookup(&self, h: &InHeader, name: &[u8]) -> Reply {
        let Ok(name) = std::str::from_utf8(name) else { return Reply::err(libc::ENOENT) };
        let (node, entry_ttl) = if h.nodeid == ROOT {
            let parsed = name.split_once('-').and_then(|(p, s)| Some((p.parse::<u32>().ok()?, s.parse::<u64>().ok()?)));
            let key = match parsed {
                // The full start time must match, not only the bits a node id keeps.
                Some((pid, start))
                    if pid != 0 && crate::procfs::start_ticks(self.service.root(), pid).ok() == Some(start) =>
                {
                    (Key { pid, start }, DIR_TTL)
                }
                _ => return Reply::err(libc::ENOENT),
            };
            (key.0.node(TREE_ROOT), key.1)
        } else {
            let Some((key, idx)) = Key::of_node(h.nodeid) else { return Reply::err(libc::ENOENT) };
            match self.tree.lookup(idx, name) {
                Some(child) => (key.node(child), DIR_TTL),
                None => return Reply::err(libc::ENOENT),
            }
        };
        match self.attr(node) {
            Ok((attr, attr_ttl)) => Reply::entry(node, entry_ttl, attr_ttl, &attr),
            Err(e) => Reply::Err(e),
        }
    }

    fn getattr(&self, h: &InHeader) -> Reply {
        match self.attr(h.nodeid) {
            Ok((attr, ttl)) => Reply::attr(ttl, &attr),
            Err(e) => Reply::Err(e),
        }
    }

    fn read(&self, h: &InHeader, offset: u64, size: u32) -> Reply {
        // The snapshot the last GETATTR described: the bytes whose size the kernel holds, with
        // nothing to resolve (that GETATTR checked the key).
        if let Some(s) = self.snapshots.lock().get(&h.nodeid) {
            return Reply::slice(&s.told.bytes, offset, size);
        }
        let Some((key, idx)) = Key::of_node(h.nodeid) else { return Reply::err(libc::EISDIR) };
        let Some(view) = self.tree.view(idx) else { return Reply::err(libc::EISDIR) };
        let c = match self.container(key) {
            Ok(c) => c,
            Err(e) => return Reply::Err(e),
        };
        match self.snapshot(h.nodeid, view, &c, true) {
            Ok(told) => Reply::slice(&told.bytes, offset, size),
            Err(e) => Reply::Err(e),
        }
    }

    fn readdir(&self, h: &InHeader, offset: u64, size: u32) -> Reply {
        let mut entries: Vec<Dirent> = vec![(h.nodeid, ".".into(), libc::DT_DIR as u32)];
        if h.nodeid == ROOT {
            // Key directories are not listed: each is found by its name.
            entries.push((ROOT, "..".into(), libc::DT_DIR as u32));
        } else {
            let Some((key, idx)) = Key::of_node(h.nodeid) else { return Reply::err(libc::ENOENT) };
            let Some((parent, children)) = self.tree.list(idx) else { return Reply::err(libc::ENOTDIR) };
            let parent = if idx == TREE_ROOT { ROOT } else { key.node(parent) };
            entries.push((parent, "..".into(), libc::DT_DIR as u32));
            for (i, name, is_dir) in children {
                entries.push((key.node(i), name.to_string(), if is_dir { libc::DT_DIR } else { libc::DT_REG } as u32));
            }
        }
        Reply::dirents(&entries, offset, size)
    }

    fn forget(&self, nodes: impl Iterator<Item = u64>) {
        let mut map = self.snapshots.lock();
        for node in nodes {
            map.remove(&node);
        }
    }
}

impl Handler for CachedFs {
    fn handle(&self, h: &InHeader, req: Request<'_>) -> Reply {
        match req {
            Request::Lookup { name } => self.lookup(h, name),
            Request::Getattr => self.getattr(h),
            Request::Read { offset, size, .. } => self.read(h, offset, size),
            Request::Readdir { offset, size } => self.readdir(h, offset, size),
            Request::Opendir => Reply::open(0, 0),
            // ENOSYS to OPEN and FLUSH: the kernel stops asking for the connection's life and
            // keeps every file's pages (the point of this tree).
            Request::Open { .. } | Request::Flush => Reply::err(libc::ENOSYS),
            Request::Release { .. } | Request::Releasedir | Request::Destroy => Reply::empty(),
            Request::Statfs => Reply::statfs(0),
            Request::Access { mask } => Reply::access(mask),
            Request::Forget { batch } => {
                self.forget(forgotten(h.nodeid, batch));
                Reply::None
            }
            Request::Interrupt => Reply::None,
            Request::Change | Request::Write { .. } | Request::Setattr { .. } => Reply::err(libc::EROFS),
            // Pressure files are bound from the shared tree (their triggers need handles).
            Request::Poll { .. } => Reply::err(libc::ENOSYS),
            Request::Readlink | Request::Other(_) => Reply::err(libc::ENOSYS),
        }
    }
}
