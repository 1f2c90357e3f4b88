//! The read path shared by `serve` (through FUSE) and `show` (without it): caller ->
//! container -> snapshots -> renderer, with the host's file as the answer whenever the
//! container's cannot be computed.

use crate::caller::Resolver;
use crate::cgroup::cpu::effective_quota;
use crate::cgroup::cpuacct;
use crate::cgroup::cpuset::effective_cpus;
use crate::cgroup::memory::MemoryStats;
pub use crate::cgroup::Container;
use crate::cgroup::{CgroupDir, Cgroups, Hierarchies, ProcCgroup};
use crate::error::Result;
use crate::host::{self, HostCpuinfo, HostMeminfo, HostStat};
use crate::state::{self, Store};
use crate::view::cpus::{visible_cpus, CpuCount};
use crate::view::sysinfo::Sysinfo;
use crate::view::{cpu_online, cpuinfo, diskstats, loadavg, meminfo, stat, swaps, uptime, View};
use crate::Root;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a caller's container is remembered.
pub const CALLER_TTL: Duration = Duration::from_secs(1);
/// How long a container's visible CPUs (cpuset and quota chain) are reused: a changed limit
/// (`docker update`) shows within this.
pub const LIMITS_TTL: Duration = Duration::from_millis(50);

/// How old the memory counters of a read may be (the issue allows "a few ms").
pub const COUNTERS_TTL: Duration = Duration::from_millis(5);

/// How often the threads' run delays are sampled (the steal source; see `state::delay`).
const DELAY_EVERY_NS: u64 = 1_000_000_000;

type LimitsKey = (Option<PathBuf>, Option<PathBuf>);

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

/// Values computed per key (a caller, a cgroup) and reused for `ttl`; bounded, so no
/// container can grow it without limit.
struct TtlMap<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlMap<K, V> {
    const MAX: usize = 65_536;

    fn new(ttl: Duration) -> Self {
        TtlMap { ttl, map: Mutex::new(HashMap::new()) }
    }

    fn get(&self, key: K, load: impl FnOnce() -> Result<V>) -> Result<V> {
        if let Some((at, v)) = self.map.lock().get(&key) {
            if at.elapsed() < self.ttl {
                return Ok(v.clone());
            }
        }
        let v = load()?;
        let mut map = self.map.lock();
        if map.len() >= Self::MAX {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        map.insert(key, (Instant::now(), v.clone()));
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
    stat: Ttl<HostStat>,
    callers: TtlMap<(u32, u64, u64), Container>,
    cpu_limits: TtlMap<LimitsKey, Vec<u32>>,
    mem_limits: TtlMap<PathBuf, Option<u64>>,
    mem_stats: TtlMap<PathBuf, MemoryStats>,
    starts: TtlMap<(Option<u32>, PathBuf), u64>,
    /// Per-container CPU accounts and load averages.
    pub store: Store,
    /// Requests answered with the host's file.
    pub fallbacks: Fallbacks,
}

impl Service {
    /// Discovers the cgroup hierarchies under `root` and prepares the caches.
    pub fn new(root: Root, opts: Options) -> Result<Self> {
        Self::with_state(root, opts, None)
    }

    /// Like [`Service::new`], keeping per-container state in `state_file` across restarts.
    pub fn with_state(root: Root, opts: Options, state_file: Option<PathBuf>) -> Result<Self> {
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
            stat: Ttl::new(Duration::from_millis(100)),
            callers: TtlMap::new(CALLER_TTL),
            cpu_limits: TtlMap::new(LIMITS_TTL),
            mem_limits: TtlMap::new(LIMITS_TTL),
            mem_stats: TtlMap::new(COUNTERS_TTL),
            starts: TtlMap::new(CALLER_TTL),
            store: Store::new(state_file),
            fallbacks: Fallbacks::default(),
        })
    }

    /// The discovered hierarchies.
    pub fn hierarchies(&self) -> &Hierarchies {
        &self.hierarchies
    }

    /// The root host files are read under.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The host CPUs caller `tid` sees (its container's visible CPUs); the host's online CPUs
    /// when its container cannot be found, as its `online` file falls back to the host's.
    pub fn visible_cpus_for(&self, tid: u32) -> Vec<u32> {
        let cpus = self.container_of(tid).and_then(|c| self.visible_cpus(&c.cgroups));
        match cpus {
            Ok(c) => c,
            Err(e) => {
                self.fallbacks.record("<caller>", View::CpuOnline, &e);
                self.online.get(|| host::online_cpus(&self.root)).map(|c| c.to_vec()).unwrap_or_default()
            }
        }
    }

    /// The container of caller `tid`. Cached for [`CALLER_TTL`] per (thread, pid namespace,
    /// inode of `/proc/<tid>`): a thread's container changes rarely, and a thread id reused by
    /// another process — of another container, or of the host — is another key (procfs gives a
    /// new process's directory a new inode; a stat costs a third of reading the start time).
    pub fn container_of(&self, tid: u32) -> Result<Container> {
        use std::os::unix::fs::MetadataExt;
        let ns = self.resolver.pidns(tid)?;
        // A thread whose directory cannot be read is keyed without it (it is vanishing, and
        // the resolution below fails for it anyway).
        let start = std::fs::metadata(self.root.proc_pid(tid)).map_or(0, |m| m.ino());
        self.callers.get((tid, ns, start), || {
            let (pc, init): (ProcCgroup, Option<u32>) = self.resolver.container_of(tid, ns)?;
            Ok(Container { cgroups: self.hierarchies.resolve(&pc), init })
        })
    }

    /// The bytes `tid` reads from `view`. When the container's file cannot be computed the
    /// host's file is returned, the fallback counted and logged (rate-limited); only when the
    /// host's file cannot be read either (no PSI in the kernel: `EOPNOTSUPP`) is it the errno
    /// the kernel gave for it.
    pub fn render_for(&self, view: View, tid: u32) -> std::result::Result<Vec<u8>, i32> {
        if view == View::Floor {
            return Ok(View::floor_content().into_bytes());
        }
        self.render_with(view, self.container_of(tid))
    }

    /// Like [`Service::render_for`] for a container already resolved (or the error of its
    /// resolution).
    pub fn render_with(&self, view: View, c: Result<Container>) -> std::result::Result<Vec<u8>, i32> {
        if view == View::Floor {
            return Ok(View::floor_content().into_bytes());
        }
        let c = match c {
            Ok(cg) => cg,
            Err(e) => {
                self.fallbacks.record("<caller>", view, &e);
                return self.host_file(view).map_err(|e| e.errno());
            }
        };
        match self.render(view, &c) {
            Ok(s) => Ok(s.into_bytes()),
            Err(e) => {
                self.fallbacks.record(&c.cgroups.name(), view, &e);
                self.host_file(view).map_err(|e| e.errno())
            }
        }
    }

    /// Renders `view` for container `c`.
    pub fn render(&self, view: View, c: &Container) -> Result<String> {
        let cg = &c.cgroups;
        match view {
            View::Meminfo => {
                let host = self.meminfo.get(|| HostMeminfo::read(&self.root))?;
                Ok(meminfo::render(&host, &self.container_memory(cg)?))
            }
            View::Cpuinfo => {
                let cpus = self.visible_cpus(cg)?;
                let host = self.cpuinfo.get(|| HostCpuinfo::read(&self.root))?;
                Ok(cpuinfo::render(&host, &cpus))
            }
            // online, possible and present are the same list for a container: its N CPUs.
            View::CpuOnline | View::CpuPossible | View::CpuPresent => {
                Ok(cpu_online::render(self.visible_cpus(cg)?.len()))
            }
            View::Floor => Ok(View::floor_content()),
            View::Diskstats => match &cg.blkio {
                Some(d) if d.path != d.top => {
                    let io = crate::cgroup::io::read(d)?;
                    Ok(diskstats::render(&io, &host::diskstats::read(&self.root)?))
                }
                // Not in an I/O cgroup of its own: the host's devices are its devices.
                _ => self.host_text(view),
            },
            View::Swaps => {
                let host = self.meminfo.get(|| HostMeminfo::read(&self.root))?;
                // The same SwapTotal/SwapFree as the container's meminfo.
                match meminfo::compute(&host, &self.container_memory(cg)?) {
                    Some(v) => Ok(swaps::render(v.get("SwapTotal").unwrap_or(0), v.get("SwapFree").unwrap_or(0))),
                    None => self.host_text(view),
                }
            }
            View::PressureCpu | View::PressureMemory | View::PressureIo => {
                let file = match view {
                    View::PressureCpu => "cpu.pressure",
                    View::PressureMemory => "memory.pressure",
                    _ => "io.pressure",
                };
                match &cg.unified {
                    // The cgroup file has the kernel's /proc/pressure format.
                    Some(d) if d.path != d.top => crate::error::read_file(&d.file(file)),
                    // No cgroup of its own in the unified tree: the host's pressure.
                    _ => self.host_text(view),
                }
            }
            View::Stat | View::Uptime | View::Loadavg if cg.cpu_accounting().is_none() => {
                // Not in a CPU cgroup of its own: the host's file.
                self.host_text(view)
            }
            View::Stat | View::Uptime => {
                let now = host::boottime_ns();
                let age = self.age_ns(c, now)?;
                let n = self.visible_cpus(cg)?.len();
                let (Some(usage), Some(k)) = (cpuacct::read(cg)?, state::key(cg)) else {
                    return Err(crate::Error::NoMount("cpuacct"));
                };
                let (vcpus, total) = self.store.cpu(&k, c, now, age, usage, n);
                if view == View::Uptime {
                    return Ok(uptime::render(age, total.idle));
                }
                let (_, tasks) = self.store.load(&self.root, &k, c.clone(), now);
                let host = self.stat.get(|| HostStat::read(&self.root))?;
                Ok(stat::render(&host, &vcpus, &total, &tasks))
            }
            View::Loadavg => {
                let k = state::key(cg).ok_or(crate::Error::NoMount("cpu"))?;
                let (load, tasks) = self.store.load(&self.root, &k, c.clone(), host::boottime_ns());
                let last_pid = match (c.init, tasks.last_pid) {
                    (Some(_), Some(p)) => p,
                    // Same pid namespace as the host: the host's last pid is the container's.
                    _ => host_last_pid(&self.root),
                };
                Ok(loadavg::render(&load, &tasks, last_pid))
            }
        }
    }

    /// `struct sysinfo` for container `c`: the host's values (this process's own sysinfo)
    /// with every field the container has a source for replaced by the number its meminfo,
    /// uptime and loadavg show.
    pub fn sysinfo(&self, c: &Container) -> Result<Sysinfo> {
        let mut s = Sysinfo::host().map_err(|e| crate::Error::io("sysinfo(2)", e))?;
        let cg = &c.cgroups;
        let host = self.meminfo.get(|| HostMeminfo::read(&self.root))?;
        if let Some(v) = meminfo::compute(&host, &self.container_memory(cg)?) {
            let b = |l: &str, or: u64| v.get(l).map_or(or, |k| k * 1024);
            s.totalram = b("MemTotal", s.totalram);
            s.freeram = b("MemFree", s.freeram);
            s.sharedram = b("Shmem", s.sharedram);
            s.bufferram = b("Buffers", s.bufferram);
            s.totalswap = b("SwapTotal", s.totalswap);
            s.freeswap = b("SwapFree", s.freeswap);
        }
        if let (Some(_), Some(k)) = (cg.cpu_accounting(), state::key(cg)) {
            let now = host::boottime_ns();
            s.set_uptime_ns(self.age_ns(c, now)?);
            let (load, tasks) = self.store.load(&self.root, &k, c.clone(), now);
            s.set_loads(load.avenrun);
            s.procs = tasks.total.min(u64::from(u16::MAX)) as u16;
        }
        Ok(s)
    }

    /// Age of the container: since its init started, or for a container sharing the host's
    /// pid namespace, since the oldest process of its cgroup started.
    /// Cached like the caller: finding it may take a file per process of the container.
    fn age_ns(&self, c: &Container, now: u64) -> Result<u64> {
        let dir = c.cgroups.cpu_accounting().ok_or(crate::Error::NoMount("cpuacct"))?;
        let start = self.starts.get((c.init, dir.path.clone()), || match c.init {
            Some(pid) => host::start_ns(&self.root, pid),
            None => {
                let procs = crate::error::read_file(&dir.file("cgroup.procs"))?;
                Ok(procs
                    .lines()
                    .take(1024)
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                    .filter_map(|p| host::start_ns(&self.root, p).ok())
                    .min()
                    .unwrap_or(now))
            }
        })?;
        Ok(now.saturating_sub(start))
    }

    /// Starts the thread that samples run delays every second, load averages every 5 s, and
    /// saves the state.
    pub fn start_sampler(self: &Arc<Self>) -> std::io::Result<()> {
        let svc = Arc::clone(self);
        // Fault injection for the crash tests: a thread that panics must take the worker down.
        let fail = std::env::var_os("CGPROCFS_TEST_PANIC").is_some_and(|v| v == "sampler");
        std::thread::Builder::new().name("sampler".into()).spawn(move || loop {
            if fail {
                panic!("CGPROCFS_TEST_PANIC=sampler");
            }
            // Run delays every second (steal must follow a 1 s `top`), load every 5 s.
            let now = host::boottime_ns();
            let next_load = (now / state::load::LOAD_FREQ_NS + 1) * state::load::LOAD_FREQ_NS;
            let next = next_load.min(now + DELAY_EVERY_NS);
            std::thread::sleep(Duration::from_nanos(next - now));
            let now = host::boottime_ns();
            svc.store.sample_delays(&svc.root, now);
            if now >= next_load {
                svc.store.sample_all(&svc.root, now);
            }
        })?;
        Ok(())
    }

    /// The host CPUs the container sees.
    pub fn visible_cpus(&self, cg: &Cgroups) -> Result<Vec<u32>> {
        let key = (cg.cpuset.as_ref().map(|d| d.path.clone()), cg.cpu.as_ref().map(|d| d.path.clone()));
        self.cpu_limits.get(key, || self.read_visible_cpus(cg))
    }

    /// The container's memory snapshot; for an unlimited container (the common case for host
    /// processes) an empty one, without the cost of memory.stat, which renders as the host's.
    fn container_memory(&self, cg: &Cgroups) -> Result<MemoryStats> {
        match &cg.memory {
            Some(d) if self.memory_limit(d)?.is_some() => self.memory_stats(d),
            _ => Ok(MemoryStats::default()),
        }
    }

    /// The memory counters of `d`, at most [`COUNTERS_TTL`] old: memory.stat is the most
    /// expensive file the kernel generates for us, and readers polling in a loop need not
    /// make it generate it more often than that.
    fn memory_stats(&self, d: &CgroupDir) -> Result<MemoryStats> {
        self.mem_stats.get(d.path.clone(), || MemoryStats::read(d))
    }

    /// The memory limit of the chain ending at `d`, cached like the CPU limits.
    fn memory_limit(&self, d: &CgroupDir) -> Result<Option<u64>> {
        self.mem_limits.get(d.path.clone(), || crate::cgroup::memory::limit_of(d))
    }

    fn read_visible_cpus(&self, cg: &Cgroups) -> Result<Vec<u32>> {
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

    /// The host's own file, read fresh.
    pub fn host_file(&self, view: View) -> Result<Vec<u8>> {
        let p = self.root.join(view.path());
        std::fs::read(&p).map_err(|e| crate::Error::io(p, e))
    }

    /// The host's own file as the answer for a container that has no cgroup of its own for it.
    fn host_text(&self, view: View) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.host_file(view)?).into_owned())
    }
}

/// The last pid allocated in the host's pid namespace (field 5 of the host's loadavg).
fn host_last_pid(root: &Root) -> u64 {
    std::fs::read_to_string(root.proc().join("loadavg"))
        .ok()
        .and_then(|t| t.split_ascii_whitespace().nth(4)?.parse().ok())
        .unwrap_or(0)
}
