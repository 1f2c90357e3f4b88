//! The read path shared by `serve` (through FUSE) and `show` (without it): caller ->
//! container -> snapshots -> renderer, with the host's file as the answer whenever the
//! container's cannot be computed.

use crate::caller::Resolver;
use crate::cgroup::cpu::effective_quota;
use crate::cgroup::cpuset::effective_cpus;
use crate::cgroup::memory::MemoryStats;
use crate::cgroup::{Cgroups, Hierarchies, ProcCgroup};
use crate::error::Result;
use crate::host::{self, HostCpuinfo, HostMeminfo};
use crate::view::cpus::{visible_cpus, CpuCount};
use crate::view::{cpu_online, cpuinfo, meminfo, View};
use crate::Root;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Daemon-wide settings that change what is rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// How the visible CPU count is derived.
    pub cpu_count: CpuCount,
}

/// A value loaded from the host and reused for `ttl`. Host files that change slowly or never
/// (cpuinfo, the online mask) need not be re-read per request.
struct Ttl<T> {
    ttl: Duration,
    slot: Mutex<Option<(Instant, Arc<T>)>>,
}

impl<T> Ttl<T> {
    fn new(ttl: Duration) -> Self {
        Ttl { ttl, slot: Mutex::new(None) }
    }

    fn get(&self, load: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        if let Some((at, v)) = &*self.slot.lock() {
            if at.elapsed() < self.ttl {
                return Ok(v.clone());
            }
        }
        let v = Arc::new(load()?);
        *self.slot.lock() = Some((Instant::now(), v.clone()));
        Ok(v)
    }
}

/// Counts requests answered with the host's file and rate-limits the warnings about them.
#[derive(Default)]
pub struct Fallbacks {
    count: AtomicU64,
    last_warned: Mutex<HashMap<String, Instant>>,
}

impl Fallbacks {
    const WARN_EVERY: Duration = Duration::from_secs(60);

    fn record(&self, key: &str, view: View, err: &crate::Error) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_warned.lock();
        let now = Instant::now();
        if last.get(key).is_some_and(|t| now.duration_since(*t) < Self::WARN_EVERY) {
            return;
        }
        if last.len() > 10_000 {
            last.retain(|_, t| now.duration_since(*t) < Self::WARN_EVERY);
        }
        last.insert(key.to_string(), now);
        tracing::warn!(cgroup = key, file = view.path(), error = %err, "serving the host's file");
    }

    /// Number of requests answered with the host's file since start.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Everything a request needs: where cgroups are, how to find a caller's container, and the
/// host files cached briefly.
pub struct Service {
    root: Root,
    hierarchies: Hierarchies,
    resolver: Resolver,
    opts: Options,
    meminfo: Ttl<HostMeminfo>,
    cpuinfo: Ttl<HostCpuinfo>,
    online: Ttl<Vec<u32>>,
    /// Requests answered with the host's file.
    pub fallbacks: Fallbacks,
}

impl Service {
    /// Discovers the cgroup hierarchies under `root` and prepares the caches.
    pub fn new(root: Root, opts: Options) -> Result<Self> {
        let hierarchies = Hierarchies::discover(&root)?;
        let resolver = Resolver::new(root.clone())?;
        Ok(Service {
            root,
            hierarchies,
            resolver,
            opts,
            // Host meminfo values that pass through (CommitLimit, hugepages) may lag a little.
            meminfo: Ttl::new(Duration::from_millis(100)),
            cpuinfo: Ttl::new(Duration::from_secs(10)),
            online: Ttl::new(Duration::from_secs(1)),
            fallbacks: Fallbacks::default(),
        })
    }

    /// The discovered hierarchies.
    pub fn hierarchies(&self) -> &Hierarchies {
        &self.hierarchies
    }

    /// The container cgroups of caller `tid`.
    pub fn container_of(&self, tid: u32) -> Result<Cgroups> {
        let pc: ProcCgroup = self.resolver.container_of(tid)?;
        Ok(self.hierarchies.resolve(&pc))
    }

    /// The bytes `tid` reads from `view`. Never fails: when the container's file cannot be
    /// computed the host's file is returned, the fallback counted and logged (rate-limited).
    pub fn render_for(&self, view: View, tid: u32) -> Vec<u8> {
        let cg = match self.container_of(tid) {
            Ok(cg) => cg,
            Err(e) => {
                self.fallbacks.record("<caller>", view, &e);
                return self.host_file(view);
            }
        };
        match self.render(view, &cg) {
            Ok(s) => s.into_bytes(),
            Err(e) => {
                self.fallbacks.record(&cg.name(), view, &e);
                self.host_file(view)
            }
        }
    }

    /// Renders `view` for the container with cgroups `cg`.
    pub fn render(&self, view: View, cg: &Cgroups) -> Result<String> {
        match view {
            View::Meminfo => {
                let host = self.meminfo.get(|| HostMeminfo::read(&self.root))?;
                let mem = match &cg.memory {
                    Some(d) => MemoryStats::read(d)?,
                    None => MemoryStats::default(),
                };
                Ok(meminfo::render(&host, &mem))
            }
            View::Cpuinfo => {
                let cpus = self.visible_cpus(cg)?;
                let host = self.cpuinfo.get(|| HostCpuinfo::read(&self.root))?;
                Ok(cpuinfo::render(&host, &cpus))
            }
            View::CpuOnline => Ok(cpu_online::render(self.visible_cpus(cg)?.len())),
        }
    }

    /// The host CPUs the container sees.
    pub fn visible_cpus(&self, cg: &Cgroups) -> Result<Vec<u32>> {
        let online = self.online.get(|| host::online_cpus(&self.root))?;
        let cpuset = match &cg.cpuset {
            Some(d) => effective_cpus(d)?,
            None => None,
        };
        let quota = match &cg.cpu {
            Some(d) => effective_quota(d)?,
            None => None,
        };
        Ok(visible_cpus(&online, cpuset.as_deref(), quota, self.opts.cpu_count))
    }

    /// The host's own file, read fresh; empty if even that fails (the reader then sees an
    /// empty file rather than an error, and the failure has been logged by the caller).
    pub fn host_file(&self, view: View) -> Vec<u8> {
        std::fs::read(self.root.join(view.path())).unwrap_or_default()
    }
}
