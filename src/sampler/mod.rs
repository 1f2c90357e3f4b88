//! The inputs a served file is made from, read from the host and the container's cgroups and
//! kept briefly so that every file that asks within a bound shares one reading: the host's
//! files, a container's limits, memory counters, CPU account, I/O, age and load. The rows of
//! [`crate::catalog`] take a [`Sampler`] and a container; nothing here knows about requests,
//! callers or files served (that is [`crate::service`], above the catalog).
//!
//! How old each input may be (docs/formulas.md, "Freshness"):
//! - per container, one **pass**: the memory counters, the CPU account (what `stat` and
//!   `uptime` show), the I/O counters and the task counts are read at most once per [`PASS`]
//!   and shared by every file read meanwhile (an agent reading five files in a row reads the
//!   cgroup once);
//! - **limits** (cpuset, CPU quota, memory limit, the visible CPUs and a container's state
//!   key), per cgroup directory and per container, until a limit file of their chains is
//!   written ([`crate::cgroup::watch`]: the write is seen before the next read), the online
//!   CPUs change, or [`watch::BACKSTOP`] passes; directories that cannot be watched, at most
//!   [`LIMITS_TTL`]. A chain's ancestors (a pod's cgroup, `kubepods`) are read once for all the
//!   containers below them;
//! - the **host's** files: meminfo, stat and diskstats 100 ms, the online CPUs 1 s, cpuinfo
//!   10 s;
//! - a container's **start**: 60 s for a pid namespace's init (its start never changes), 1 s
//!   for the oldest process of a container sharing the host's pid namespace.

pub(crate) mod cache;

use crate::cgroup::cpu::{tightest, Quota};
use crate::cgroup::cpuset::effective_cpus;
use crate::cgroup::io::IoStats;
use crate::cgroup::memory::{limit_at, limit_file, lowest, MemoryStats};
use crate::cgroup::tasks::TaskCounts;
use crate::cgroup::watch;
use crate::cgroup::{cpuacct, CgroupDir, Cgroups, Container, Hierarchies};
use crate::error::{Error, Result};
use crate::host::{self, HostCpuinfo, HostMeminfo, HostStat};
use crate::state::cpu::VCpu;
use crate::state::load::LoadAvg;
use crate::state::{self, Store};
use crate::view::cpus::{visible_cpus, CpuCount};
use crate::Root;
use cache::{LimitMap, Ttl, TtlMap, Watched};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long one reading of a container's counters serves every file that asks: an agent's
/// files read back to back share it, and a file read in a loop is never older than this (the
/// kernel's own `/proc/stat` moves in 10 ms steps).
pub const PASS: Duration = Duration::from_millis(5);
/// How long a cgroup directory's limits (cpuset, quota, memory limit) are reused when the
/// directory cannot be watched: a changed limit (`docker update`) shows within this. (A
/// watched one's show at once, [`crate::cgroup::watch`].)
pub const LIMITS_TTL: Duration = Duration::from_millis(50);
/// How long a container's start time is reused when it is its pid namespace's init, whose start
/// never changes.
const INIT_START_TTL: Duration = Duration::from_secs(60);
/// How long the start of a container sharing the host's pid namespace (its oldest process,
/// which may exit) is reused.
const OLDEST_START_TTL: Duration = Duration::from_secs(1);
/// How often the threads' run delays are sampled (the steal source; see `state::delay`).
const DELAY_EVERY_NS: u64 = 1_000_000_000;

/// Daemon-wide settings that change what is rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// How the visible CPU count is derived.
    pub cpu_count: CpuCount,
}

/// A container's CPU account at one instant: what `/proc/stat` and `/proc/uptime` show.
#[derive(Debug)]
pub struct CpuSample {
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

/// What the visible CPUs come from: the host's online CPUs, the effective cpuset and the
/// tightest quota of the chain with the directory that sets it.
pub struct CpuLimits {
    /// The host's online CPUs.
    pub online: Arc<Vec<u32>>,
    /// The effective cpuset, when the container has a cpuset cgroup.
    pub cpuset: Option<Vec<u32>>,
    /// The tightest quota of the chain and the directory that sets it.
    pub quota: Option<(Quota, PathBuf)>,
}

/// The host's diskstats lines by device (major, minor).
pub type HostDiskstats = Vec<((u32, u32), String)>;

/// A container's identity for its pass: its init and its first cgroup directory.
type PassKey = (Option<u32>, PathBuf);

/// The inputs, read through short-lived caches (module doc).
pub struct Sampler {
    root: Root,
    hierarchies: Hierarchies,
    opts: Options,
    meminfo: Ttl<HostMeminfo>,
    cpuinfo: Ttl<HostCpuinfo>,
    online: Ttl<Vec<u32>>,
    stat: Ttl<HostStat>,
    diskstats: Ttl<HostDiskstats>,
    last_pid: Ttl<u64>,
    /// Per directory: the cpuset, quota and memory limit it sets itself.
    cpusets: LimitMap<PathBuf, Option<Vec<u32>>>,
    quotas: LimitMap<PathBuf, Option<Option<Quota>>>,
    mem_limits: LimitMap<PathBuf, Option<Option<u64>>>,
    /// Per container: what its limits make of it, read again when they are.
    visible: LimitMap<PassKey, Arc<Vec<u32>>>,
    memory_limits: LimitMap<PathBuf, Option<(u64, PathBuf)>>,
    keys: LimitMap<PathBuf, String>,
    /// Per container, one pass.
    mem_stats: TtlMap<PathBuf, Arc<MemoryStats>>,
    accounts: TtlMap<PassKey, Option<Arc<CpuSample>>>,
    io: TtlMap<PathBuf, Arc<IoStats>>,
    init_starts: TtlMap<(u32, PathBuf), u64>,
    oldest_starts: TtlMap<PathBuf, u64>,
    /// Per-container CPU accounts and load averages.
    pub store: Store,
}

/// When the load pass after time `ns` (CLOCK_BOOTTIME) runs: the 5-second boundaries of the
/// boot clock, as the kernel's `calc_global_load` ticks.
pub fn next_pass_ns(ns: u64) -> u64 {
    (ns / state::load::LOAD_FREQ_NS + 1) * state::load::LOAD_FREQ_NS
}

impl Sampler {
    /// Discovers the cgroup hierarchies under `root`, keeping per-container state in
    /// `state_file` across restarts when one is given.
    pub fn new(root: Root, opts: Options, state_file: Option<PathBuf>) -> Result<Self> {
        let hierarchies = Hierarchies::discover(&root)?;
        let host = Duration::from_millis(100);
        Ok(Sampler {
            root,
            hierarchies,
            opts,
            // Host meminfo values that pass through (CommitLimit, hugepages) may lag a little.
            meminfo: Ttl::new(host),
            cpuinfo: Ttl::new(Duration::from_secs(10)),
            online: Ttl::new(Duration::from_secs(1)),
            stat: Ttl::new(host),
            diskstats: Ttl::new(host),
            last_pid: Ttl::new(host),
            cpusets: LimitMap::new(LIMITS_TTL),
            quotas: LimitMap::new(LIMITS_TTL),
            mem_limits: LimitMap::new(LIMITS_TTL),
            visible: LimitMap::new(PASS),
            memory_limits: LimitMap::new(LIMITS_TTL),
            keys: LimitMap::new(PASS),
            mem_stats: TtlMap::new(PASS),
            accounts: TtlMap::new(PASS),
            io: TtlMap::new(PASS),
            init_starts: TtlMap::new(INIT_START_TTL),
            oldest_starts: TtlMap::new(OLDEST_START_TTL),
            store: Store::new(state_file),
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

    /// Starts the thread that samples run delays every second, load averages every 5 s, and
    /// saves the state; it also closes the cgroup files no read has wanted for a while.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let me = Arc::clone(self);
        // Fault injection for the crash tests: a thread that panics must take the worker down.
        let fail = std::env::var_os("CGPROCFS_TEST_PANIC").is_some_and(|v| v == "sampler");
        std::thread::Builder::new().name("sampler".into()).spawn(move || loop {
            if fail {
                panic!("CGPROCFS_TEST_PANIC=sampler");
            }
            // Run delays every second (steal must follow a 1 s `top`), load every 5 s.
            let now = host::boottime_ns();
            let next_load = next_pass_ns(now);
            let next = next_load.min(now + DELAY_EVERY_NS);
            std::thread::sleep(Duration::from_nanos(next - now));
            let now = host::boottime_ns();
            me.store.sample_delays(&me.root, now);
            crate::cgroup::held::close_idle();
            crate::cgroup::thread_files::close_idle();
            if now >= next_load {
                me.store.sample_all(&me.root, now);
            }
        })?;
        Ok(())
    }

    fn pass_key(c: &Container) -> PassKey {
        let first = [&c.cgroups.cpuacct, &c.cgroups.unified, &c.cgroups.memory, &c.cgroups.cpu, &c.cgroups.cpuset];
        (c.init, first.into_iter().flatten().next().map(|d| d.path.clone()).unwrap_or_default())
    }

    /// The generation of the limits ([`crate::cgroup::watch`]): cached limits read at another
    /// are read again.
    pub(crate) fn generation(&self) -> u64 {
        watch::watch().map_or(0, watch::Watch::generation)
    }

    /// The generation of the limits as last counted, without a system call
    /// ([`watch::Watch::known`]).
    pub(crate) fn known_generation(&self) -> u64 {
        watch::watch().map_or(0, watch::Watch::known)
    }

    /// Watches `dirs` (before they are read); whether all of them are.
    fn watch<'a>(dirs: impl IntoIterator<Item = &'a std::path::Path>) -> bool {
        watch::watch().is_some_and(|w| w.watch(dirs))
    }

    /// The host CPUs the container sees (read again when its limits or the online CPUs change).
    pub fn visible_cpus(&self, c: &Container) -> Result<Arc<Vec<u32>>> {
        // The online CPUs first: a change (hotplug) moves the generation.
        self.host_online()?;
        let g = self.generation();
        let w = self.visible.get(Self::pass_key(c), g, || {
            let (l, watched) = self.cpu_limits_at(&c.cgroups, g)?;
            let cpus = visible_cpus(&l.online, l.cpuset.as_deref(), l.quota.map(|(q, _)| q), self.opts.cpu_count);
            Ok(Watched { value: Arc::new(cpus), watched })
        })?;
        Ok(w.value)
    }

    /// What the visible CPUs are computed from.
    pub fn cpu_limits(&self, cg: &Cgroups) -> Result<CpuLimits> {
        self.cpu_limits_at(cg, self.generation()).map(|(l, _)| l)
    }

    /// [`Sampler::cpu_limits`] at generation `g`, with whether every directory they come from
    /// is watched.
    fn cpu_limits_at(&self, cg: &Cgroups, g: u64) -> Result<(CpuLimits, bool)> {
        let online = self.host_online()?;
        let mut watched = true;
        let cpuset = match &cg.cpuset {
            Some(d) => {
                // An effective cpuset follows its ancestors': the whole chain is watched.
                let w = self.cpusets.get(d.path.clone(), g, || {
                    let watched = Self::watch(d.chain());
                    Ok(Watched { value: effective_cpus(d)?, watched })
                })?;
                watched &= w.watched;
                w.value
            }
            None => None,
        };
        let quota = match &cg.cpu {
            Some(d) => tightest(d, |p| {
                let w = self.quotas.get(p.to_path_buf(), g, || {
                    let watched = Self::watch([p]);
                    Ok(Watched { value: crate::cgroup::cpu::quota_at(d.version, p)?, watched })
                })?;
                watched &= w.watched;
                Ok(w.value)
            })?,
            None => None,
        };
        Ok((CpuLimits { online, cpuset, quota }, watched))
    }

    /// The visible CPUs and what they come from, in words (`show --explain`).
    pub fn cpu_inputs(&self, cg: &Cgroups) -> Result<String> {
        let l = self.cpu_limits(cg)?;
        let cpus = visible_cpus(&l.online, l.cpuset.as_deref(), l.quota.as_ref().map(|(q, _)| *q), self.opts.cpu_count);
        let file = cg.cpu.as_ref().map_or("", |d| crate::cgroup::cpu::quota_file(d.version));
        Ok(format!(
            "visible CPUs {:?} (N = {}): host online {:?}, effective cpuset {}, quota {} ({:?} mode)",
            cpus,
            cpus.len(),
            l.online,
            l.cpuset.map_or("none (all online)".into(), |c| format!("{c:?}")),
            l.quota.map_or("none".into(), |(q, at)| format!(
                "{}/{} µs = {} CPUs rounded up, set by {}/{file}",
                q.quota,
                q.period,
                q.cpus_ceil(),
                at.display()
            )),
            self.opts.cpu_count,
        ))
    }

    /// The memory limit of the chain ending at `d` and the directory that sets it, from the
    /// small limit files only (ancestors shared with every container below them); read again
    /// when a limit of the chain is written or the directory goes.
    pub fn memory_limit(&self, d: &CgroupDir) -> Result<Option<(u64, PathBuf)>> {
        let g = self.generation();
        let w = self.memory_limits.get(d.path.clone(), g, || {
            let mut watched = Self::watch(d.chain());
            if !crate::cgroup::held::exists(&d.path) {
                return Err(Error::Gone(d.path.clone()));
            }
            let name = limit_file(d.version);
            let value = lowest(d, |p| {
                let w = self.mem_limits.get(p.to_path_buf(), g, || {
                    let watched = Self::watch([p]);
                    Ok(Watched { value: limit_at(p, name)?, watched })
                })?;
                watched &= w.watched;
                Ok(w.value)
            })?;
            Ok(Watched { value, watched })
        })?;
        Ok(w.value)
    }

    /// The container's memory snapshot (once per pass); for an unlimited container (the
    /// common case for host processes) an empty one, without the cost of memory.stat, which
    /// renders as the host's.
    pub fn memory(&self, c: &Container) -> Result<Arc<MemoryStats>> {
        match &c.cgroups.memory {
            Some(d) if self.memory_limit(d)?.is_some() => {
                self.mem_stats.get(d.path.clone(), || MemoryStats::read(d).map(Arc::new))
            }
            _ => Ok(Arc::default()),
        }
    }

    /// The container's I/O counters (once per pass).
    pub fn io(&self, d: &CgroupDir) -> Result<Arc<IoStats>> {
        self.io.get(d.path.clone(), || crate::cgroup::io::read(d).map(Arc::new))
    }

    /// The host's own file, read fresh.
    pub fn host_file(&self, path: &str) -> Result<Vec<u8>> {
        let p = self.root.join(path);
        std::fs::read(&p).map_err(|e| Error::io(p, e))
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

    /// The host's diskstats, at most 100 ms old.
    pub fn host_diskstats(&self) -> Result<Arc<HostDiskstats>> {
        self.diskstats.get(|| host::diskstats::read(&self.root))
    }

    /// The host's online CPUs, at most 1 s old.
    pub fn host_online(&self) -> Result<Arc<Vec<u32>>> {
        self.online.get(|| {
            let online = host::online_cpus(&self.root)?;
            if let Some(w) = watch::watch() {
                w.note(&online);
            }
            Ok(online)
        })
    }

    /// The last pid allocated in the host's pid namespace (field 5 of the host's loadavg), at
    /// most 100 ms old.
    pub fn host_last_pid(&self) -> u64 {
        let read = || {
            Ok(crate::sys::read_text(&self.root.proc().join("loadavg"))
                .ok()
                .and_then(|t| t.split_ascii_whitespace().nth(4)?.parse().ok())
                .unwrap_or(0))
        };
        self.last_pid.get(read).map_or(0, |p| *p)
    }

    /// Age of the container: since its init started, or for a container sharing the host's
    /// pid namespace, since the oldest process of its cgroup started.
    pub fn age_ns(&self, c: &Container, now: u64) -> Result<u64> {
        let dir = c.cgroups.cpu_accounting().ok_or(Error::NoMount("cpu accounting"))?;
        let start = match c.init {
            Some(pid) => self.init_starts.get((pid, dir.path.clone()), || crate::procfs::start_ns(&self.root, pid))?,
            None => self.oldest_starts.get(dir.path.clone(), || {
                let procs = crate::error::read_file(&dir.file("cgroup.procs"))?;
                Ok(procs
                    .lines()
                    .take(1024)
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                    .filter_map(|p| crate::procfs::start_ns(&self.root, p).ok())
                    .min()
                    .unwrap_or(now))
            })?,
        };
        Ok(now.saturating_sub(start))
    }

    /// The container's key in the [`Store`]; `None` when it has no CPU cgroup of its own.
    fn account_key(&self, cg: &Cgroups) -> Result<Option<String>> {
        match cg.cpu_accounting() {
            None => Ok(None),
            // Its inode changes only with the directory, which a watch sees go.
            Some(d) => {
                let w = self.keys.get(d.path.clone(), self.generation(), || {
                    let watched = Self::watch([d.path.as_path()]);
                    // The directory could not be stat'ed: the cgroup is being removed.
                    let key = state::key(cg).ok_or_else(|| Error::Gone(d.path.clone()))?;
                    Ok(Watched { value: key, watched })
                })?;
                Ok(Some(w.value))
            }
        }
    }

    /// The container's CPU account (once per pass); `None` when it has no CPU cgroup of its
    /// own (its files are then the host's).
    pub fn cpu_account(&self, c: &Container) -> Result<Option<Arc<CpuSample>>> {
        self.accounts.get(Self::pass_key(c), || {
            let Some(key) = self.account_key(&c.cgroups)? else { return Ok(None) };
            let now = host::boottime_ns();
            let age_ns = self.age_ns(c, now)?;
            let n = self.visible_cpus(c)?.len();
            let usage = cpuacct::read(&c.cgroups)?.ok_or(Error::NoMount("cpu accounting"))?;
            let (vcpus, total) = self.store.cpu(&key, c, now, age_ns, usage, n);
            Ok(Some(Arc::new(CpuSample { key, now, age_ns, vcpus, total })))
        })
    }

    /// The task counts of the container whose account is `acct`.
    pub fn tasks(&self, acct: &CpuSample, c: &Container) -> TaskCounts {
        self.store.load(&self.root, &acct.key, c.clone(), acct.now).1
    }

    /// The container's load averages and task counts, and when they were sampled
    /// (CLOCK_BOOTTIME ns: they change only at the next pass, [`next_pass_ns`]); `None` when it
    /// has no CPU cgroup of its own.
    pub fn load(&self, c: &Container, now: u64) -> Result<Option<(LoadAvg, TaskCounts, u64)>> {
        let Some(key) = self.account_key(&c.cgroups)? else { return Ok(None) };
        Ok(Some(self.store.load(&self.root, &key, c.clone(), now)))
    }
}
