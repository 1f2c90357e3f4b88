//! The read path shared by `serve` (through FUSE) and `show` (without it): caller ->
//! container -> its row in [`crate::catalog`] (which takes its inputs from the
//! [`Sampler`]), with the host's file as the answer whenever the container's cannot be
//! computed, counted in [`Stats`].

mod fallback;
mod texts;

pub use fallback::Fallbacks;

use crate::caller::Resolver;
use crate::catalog::Served;
pub use crate::cgroup::Container;
use crate::cgroup::ProcCgroup;
use crate::error::{Errno, Error, Result};
use crate::host;
use crate::sampler::cache::TtlMap;
use crate::sampler::Sampler;
pub use crate::sampler::{CpuSample, Options};
use crate::stats::{Reason, Stats};
use crate::view::meminfo;
use crate::view::sysinfo::Sysinfo;
use crate::Root;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a caller's container is remembered, per (thread, pid namespace, inode of
/// `/proc/<tid>`): a process moved to another cgroup sees its new container's files within
/// this. Longer than the period of a once-a-second agent, which then resolves nothing.
pub const CALLER_TTL: Duration = Duration::from_secs(5);

/// Everything a request needs: how to find a caller's container, the inputs of its files,
/// and what was served.
pub struct Service {
    sampler: Arc<Sampler>,
    resolver: Resolver,
    callers: TtlMap<(u32, u64), Container>,
    /// This pass's renderings, per container and file.
    texts: texts::Texts,
    /// Requests answered with the host's file.
    pub fallbacks: Fallbacks,
    /// Requests, latencies and fallbacks per file (`cgprocfs status`, the metrics file).
    pub stats: Stats,
}

impl Service {
    /// Discovers the cgroup hierarchies under `root` and prepares the caches.
    pub fn new(root: Root, opts: Options) -> Result<Self> {
        Self::with_state(root, opts, None)
    }

    /// Like [`Service::new`], keeping per-container state in `state_file` across restarts.
    pub fn with_state(root: Root, opts: Options, state_file: Option<PathBuf>) -> Result<Self> {
        let resolver = Resolver::new(root.clone())?;
        Ok(Service {
            sampler: Arc::new(Sampler::new(root, opts, state_file)?),
            resolver,
            callers: TtlMap::new(CALLER_TTL),
            texts: texts::Texts::default(),
            fallbacks: Fallbacks::default(),
            stats: Stats::default(),
        })
    }

    /// Where the files' inputs come from.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The root host files are read under.
    pub fn root(&self) -> &Root {
        self.sampler.root()
    }

    /// Starts the sampler's background thread (run delays, load averages, the state file).
    pub fn start_sampler(&self) -> std::io::Result<()> {
        self.sampler.start()
    }

    /// The host CPUs caller `tid` sees (its container's visible CPUs); the host's online CPUs
    /// when its container cannot be found, as its `online` file falls back to the host's.
    pub fn visible_cpus_for(&self, tid: u32) -> Vec<u32> {
        let cpus = self.container_of(tid).and_then(|c| self.sampler.visible_cpus(&c));
        match cpus {
            Ok(c) => c.to_vec(),
            Err(e) => {
                self.fallbacks.record("<caller>", Served::CpuOnline, &e);
                self.sampler.host_online().map(|c| c.to_vec()).unwrap_or_default()
            }
        }
    }

    /// The container of caller `tid`. Cached for [`CALLER_TTL`] per (thread, inode of
    /// `/proc/<tid>`): a thread's container changes rarely, and a thread id reused by another
    /// process — of another container, or of the host — is another key (procfs gives a new
    /// process's directory a new inode; a stat costs a third of reading the start time). A
    /// process never changes its own pid namespace (`setns` moves only its future children),
    /// so the namespace is looked up on a miss only.
    pub fn container_of(&self, tid: u32) -> Result<Container> {
        use std::os::unix::fs::MetadataExt;
        let resolve = || {
            let ns = self.resolver.pidns(tid)?;
            let (pc, init): (ProcCgroup, Option<u32>) = self.resolver.container_of(tid, ns)?;
            Ok(Container { cgroups: Arc::new(self.sampler.hierarchies().resolve(&pc)), init })
        };
        match std::fs::metadata(self.root().proc_pid(tid)) {
            Ok(m) => self.callers.get((tid, m.ino()), resolve),
            // Vanishing (or not visible): resolved without a key, and it fails anyway.
            Err(_) => resolve(),
        }
    }

    /// The bytes `tid` reads from `view`. When the container's file cannot be computed the
    /// host's file is returned, the fallback counted and logged (rate-limited); only when the
    /// host's file cannot be read either (no PSI in the kernel: `EOPNOTSUPP`) is it the errno
    /// the kernel gave for it.
    pub fn render_for(&self, view: Served, tid: u32) -> std::result::Result<Vec<u8>, Errno> {
        // The bench floor measures FUSE alone: no caller resolution.
        let c = if view == Served::Floor { Ok(Container::nobody()) } else { self.container_of(tid) };
        self.render_with(view, c)
    }

    /// Like [`Service::render_for`] for a container already resolved (or the error of its
    /// resolution).
    pub fn render_with(&self, view: Served, c: Result<Container>) -> std::result::Result<Vec<u8>, Errno> {
        self.render_until(view, c).map(|(bytes, _)| bytes)
    }

    /// Like [`Service::render_with`], with the time until which the content cannot change
    /// ([`crate::catalog::Content::until_ns`]; `None` for the host's file).
    pub fn render_until(
        &self,
        view: Served,
        c: Result<Container>,
    ) -> std::result::Result<(Vec<u8>, Option<u64>), Errno> {
        let t = Instant::now();
        let made = |c: &Container| {
            let make = || view.make(&self.sampler, c).map(|s| (s.text.into_bytes(), s.until_ns));
            if view.reusable() {
                self.texts.get(view, c, self.sampler.known_generation(), || self.sampler.generation(), make)
            } else {
                make()
            }
        };
        let (key, err, resolved) = match c.map(|c| (made(&c), c)) {
            Ok((Ok(r), c)) => {
                self.stats.request(view, t.elapsed(), || c.cgroups.name());
                return Ok(r);
            }
            Ok((Err(e), c)) => (c.cgroups.name(), e, true),
            Err(e) => ("<caller>".to_string(), e, false),
        };
        self.fallbacks.record(&key, view, &err);
        self.stats.fallback(view, Reason::of(&err, resolved));
        let host = self.sampler.host_file(view.path()).map_err(|e| e.errno());
        self.stats.request(view, t.elapsed(), || key);
        host.map(|bytes| (bytes, None))
    }

    /// Renders `view` for container `c`.
    pub fn render(&self, view: Served, c: &Container) -> Result<String> {
        view.make(&self.sampler, c).map(|content| content.text)
    }

    /// `struct sysinfo` for container `c`: the host's values (this process's own sysinfo)
    /// with every field the container has a source for replaced by the number its meminfo,
    /// uptime and loadavg show.
    pub fn sysinfo(&self, c: &Container) -> Result<Sysinfo> {
        let raw = host::sysinfo().map_err(|e| Error::io("sysinfo(2)", e))?;
        let mut s = Sysinfo::from_kernel(&raw);
        let sampler = &self.sampler;
        if let Some(v) = meminfo::compute(&*sampler.host_meminfo()?, &*sampler.memory(c)?) {
            use meminfo::Field;
            let b = |f: Field, or: u64| v.get(f).map_or(or, |k| k * 1024);
            s.totalram = b(Field::MemTotal, s.totalram);
            s.freeram = b(Field::MemFree, s.freeram);
            s.sharedram = b(Field::Shmem, s.sharedram);
            s.bufferram = b(Field::Buffers, s.bufferram);
            s.totalswap = b(Field::SwapTotal, s.totalswap);
            s.freeswap = b(Field::SwapFree, s.freeswap);
        }
        let now = host::boottime_ns();
        // None without a CPU cgroup of its own; an error for one being removed: the host's.
        if let Ok(Some((load, tasks, _))) = sampler.load(c, now) {
            s.set_uptime_ns(sampler.age_ns(c, now)?);
            s.set_loads(load.avenrun);
            s.procs = tasks.total.min(u64::from(u16::MAX)) as u16;
        }
        Ok(s)
    }
}
