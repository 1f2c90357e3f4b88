//! The read path shared by `serve` (through FUSE) and `show` (without it): caller ->
//! container -> the inputs a served file needs (cached here) -> its row in
//! [`crate::catalog`], with the host's file as the answer whenever the container's cannot be
//! computed.

mod cache;
mod fallback;

pub use fallback::Fallbacks;

use crate::caller::Resolver;
use crate::catalog::{Content, View};
use crate::cgroup::cpu::{effective_quota, Quota};
use crate::cgroup::cpuacct;
use crate::cgroup::cpuset::effective_cpus;
use crate::cgroup::memory::MemoryStats;
use crate::cgroup::tasks::TaskCounts;
pub use crate::cgroup::Container;
use crate::cgroup::{CgroupDir, Cgroups, Hierarchies, ProcCgroup};
use crate::error::{Errno, Error, Result};
use crate::host::{self, HostCpuinfo, HostMeminfo, HostStat};
use crate::state::cpu::VCpu;
use crate::state::load::LoadAvg;
use crate::state::{self, Store};
use crate::stats::{Reason, Stats};
use crate::view::cpus::{visible_cpus, CpuCount};
use crate::view::meminfo;
use crate::view::sysinfo::Sysinfo;
use crate::Root;
use cache::{Ttl, TtlMap};
use std::path::PathBuf;
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

/// What the visible CPUs come from: the host's online CPUs, the effective cpuset, the quota.
type CpuLimits = (Arc<Vec<u32>>, Option<Vec<u32>>, Option<Quota>);

/// Daemon-wide settings that change what is rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// How the visible CPU count is derived.
    pub cpu_count: CpuCount,
}

/// A container's CPU account at one instant: what `/proc/stat` and `/proc/uptime` show.
pub struct CpuAccount {
    /// The container's key in the [`Store`].
    key: String,
    /// CLOCK_BOOTTIME of the sample, ns.
    pub now: u64,
    /// The container's age, ns.
    pub age_ns: u64,
    /// Per visible CPU.
    pub vcpus: Vec<VCpu>,
    /// Their sum.
    pub total: VCpu,
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
            stats: Stats::default(),
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
    pub fn render_for(&self, view: View, tid: u32) -> std::result::Result<Vec<u8>, Errno> {
        // The bench floor measures FUSE alone: no caller resolution.
        let c = if view == View::Floor { Ok(Container::nobody()) } else { self.container_of(tid) };
        self.render_with(view, c)
    }

    /// Like [`Service::render_for`] for a container already resolved (or the error of its
    /// resolution).
    pub fn render_with(&self, view: View, c: Result<Container>) -> std::result::Result<Vec<u8>, Errno> {
        let t = Instant::now();
        let (key, err, resolved) = match c.map(|c| (view.make(self, &c), c)) {
            Ok((Ok(s), c)) => {
                self.stats.request(view, t.elapsed(), || c.cgroups.name());
                return Ok(s.text.into_bytes());
            }
            Ok((Err(e), c)) => (c.cgroups.name(), e, true),
            Err(e) => ("<caller>".to_string(), e, false),
        };
        self.fallbacks.record(&key, view, &err);
        self.stats.fallback(view, Reason::of(&err, resolved));
        let host = self.host_file(view).map_err(|e| e.errno());
        self.stats.request(view, t.elapsed(), || key);
        host
    }

    /// Renders `view` for container `c`.
    pub fn render(&self, view: View, c: &Container) -> Result<String> {
        view.make(self, c).map(|content| content.text)
    }

    /// `struct sysinfo` for container `c`: the host's values (this process's own sysinfo)
    /// with every field the container has a source for replaced by the number its meminfo,
    /// uptime and loadavg show.
    pub fn sysinfo(&self, c: &Container) -> Result<Sysinfo> {
        let raw = host::sysinfo().map_err(|e| Error::io("sysinfo(2)", e))?;
        let mut s = Sysinfo::from_kernel(&raw);
        let cg = &c.cgroups;
        if let Some(v) = meminfo::compute(&*self.host_meminfo()?, &self.memory(c)?) {
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
        let dir = c.cgroups.cpu_accounting().ok_or(Error::NoMount("cpu accounting"))?;
        let start = self.starts.get((c.init, dir.path.clone()), || match c.init {
            Some(pid) => crate::procfs::start_ns(&self.root, pid),
            None => {
                let procs = crate::error::read_file(&dir.file("cgroup.procs"))?;
                Ok(procs
                    .lines()
                    .take(1024)
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                    .filter_map(|p| crate::procfs::start_ns(&self.root, p).ok())
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
    pub fn memory(&self, c: &Container) -> Result<MemoryStats> {
        match &c.cgroups.memory {
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
        let (online, cpuset, quota) = self.cpu_limits(cg)?;
        Ok(visible_cpus(&online, cpuset.as_deref(), quota, self.opts.cpu_count))
    }

    /// What the visible CPUs are computed from: the host's online CPUs, the effective cpuset
    /// and the tightest quota of the chain.
    fn cpu_limits(&self, cg: &Cgroups) -> Result<CpuLimits> {
        let online = self.online.get(|| host::online_cpus(&self.root))?;
        let cpuset = match &cg.cpuset {
            Some(d) => effective_cpus(d)?,
            None => None,
        };
        let quota = match &cg.cpu {
            Some(d) => effective_quota(d)?,
            None => None,
        };
        Ok((online, cpuset, quota))
    }

    /// The visible CPUs and what they come from, in words (`show --explain`).
    pub fn cpu_inputs(&self, cg: &Cgroups) -> Result<String> {
        let (online, cpuset, quota) = self.cpu_limits(cg)?;
        let cpus = visible_cpus(&online, cpuset.as_deref(), quota, self.opts.cpu_count);
        Ok(format!(
            "visible CPUs {:?} (N = {}): host online {:?}, effective cpuset {}, quota {} ({:?} mode)",
            cpus,
            cpus.len(),
            online,
            cpuset.map_or("none (all online)".into(), |c| format!("{c:?}")),
            quota.map_or("none".into(), |q| format!("{}/{} µs = {} CPUs rounded up", q.quota, q.period, q.cpus_ceil())),
            self.opts.cpu_count,
        ))
    }

    /// The host's own file, read fresh.
    pub fn host_file(&self, view: View) -> Result<Vec<u8>> {
        let p = self.root.join(view.path());
        std::fs::read(&p).map_err(|e| crate::Error::io(p, e))
    }

    /// The host's own file as the answer for a container that has no cgroup of its own for it.
    pub fn host_text(&self, view: View) -> Result<Content> {
        Ok(Content { text: String::from_utf8_lossy(&self.host_file(view)?).into_owned(), hosts: true })
    }

    /// The host's meminfo, at most 100 ms old (the values that pass through, CommitLimit and
    /// hugepages, may lag a little).
    pub fn host_meminfo(&self) -> Result<Arc<HostMeminfo>> {
        self.meminfo.get(|| HostMeminfo::read(&self.root))
    }

    /// The host's cpuinfo, at most 10 s old.
    pub fn host_cpuinfo(&self) -> Result<Arc<HostCpuinfo>> {
        self.cpuinfo.get(|| HostCpuinfo::read(&self.root))
    }

    /// The host's stat, at most 100 ms old.
    pub fn host_stat(&self) -> Result<Arc<HostStat>> {
        self.stat.get(|| HostStat::read(&self.root))
    }

    /// The container's key in the [`Store`]; `None` when it has no CPU cgroup of its own.
    fn account_key(&self, cg: &Cgroups) -> Result<Option<String>> {
        match cg.cpu_accounting() {
            None => Ok(None),
            // The directory could not be stat'ed: the cgroup is being removed.
            Some(d) => state::key(cg).map(Some).ok_or_else(|| Error::Gone(d.path.clone())),
        }
    }

    /// The container's CPU account now; `None` when it has no CPU cgroup of its own (its
    /// files are then the host's).
    pub fn cpu_account(&self, c: &Container) -> Result<Option<CpuAccount>> {
        let Some(key) = self.account_key(&c.cgroups)? else { return Ok(None) };
        let now = host::boottime_ns();
        let age_ns = self.age_ns(c, now)?;
        let n = self.visible_cpus(&c.cgroups)?.len();
        let usage = cpuacct::read(&c.cgroups)?.ok_or(Error::NoMount("cpu accounting"))?;
        let (vcpus, total) = self.store.cpu(&key, c, now, age_ns, usage, n);
        Ok(Some(CpuAccount { key, now, age_ns, vcpus, total }))
    }

    /// The task counts of the container whose account is `acct`.
    pub fn tasks(&self, acct: &CpuAccount, c: &Container) -> TaskCounts {
        self.store.load(&self.root, &acct.key, c.clone(), acct.now).1
    }

    /// The container's load averages and task counts; `None` when it has no CPU cgroup of its
    /// own.
    pub fn load(&self, c: &Container, now: u64) -> Result<Option<(LoadAvg, TaskCounts)>> {
        let Some(key) = self.account_key(&c.cgroups)? else { return Ok(None) };
        Ok(Some(self.store.load(&self.root, &key, c.clone(), now)))
    }

    /// The last pid allocated in the host's pid namespace (field 5 of the host's loadavg).
    pub fn host_last_pid(&self) -> u64 {
        std::fs::read_to_string(self.root.proc().join("loadavg"))
            .ok()
            .and_then(|t| t.split_ascii_whitespace().nth(4)?.parse().ok())
            .unwrap_or(0)
    }
}
