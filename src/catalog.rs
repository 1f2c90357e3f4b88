//! The served files: one row each, its path under the mount point and how a container's
//! content is made — the inputs gathered through the [`Sampler`] (cached host files, the
//! container's cgroup snapshots, its CPU account) and handed to one pure renderer in
//! [`crate::view`].
//!
//! Adding a served file is a renderer in `src/view/` and a row here (docs/architecture.md,
//! "Adding a served file"); the FUSE tree, `show`, the OCI hook's and `run`'s binds and the
//! cached tree all follow [`Served::ALL`].
//!
//! A row returns an error when the container's content cannot be computed: the caller then
//! answers with the host's file (`Service::render_with`).

use crate::cgroup::Container;
use crate::error::Result;
use crate::sampler::Sampler;
use crate::view::{cpu_online, cpuinfo, diskstats, loadavg, meminfo, stat, swaps, uptime};

/// How a row makes a container's content.
type Make = fn(&Sampler, &Container) -> Result<Content>;

/// Whose figures a file's content is: the row decides, `show --explain` says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Rendered from the container's cgroups.
    Container,
    /// The host's own file, for want of a cgroup of its own for it.
    Host,
}

/// A file's content for one container, and whose figures it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// The bytes the container reads.
    pub text: String,
    /// Whose figures they are.
    pub origin: Origin,
    /// Until when (CLOCK_BOOTTIME ns) the content cannot change, when its inputs are sampled on
    /// a schedule (the load file: at the next load pass); `None` for content that may change
    /// at any time. The cached tree lets the kernel keep such a file's attributes until then.
    pub until_ns: Option<u64>,
}

impl From<String> for Content {
    /// The container's own content.
    fn from(text: String) -> Content {
        Content { text, origin: Origin::Container, until_ns: None }
    }
}

/// Declares [`Served`] and its table from one list of rows.
macro_rules! catalog {
    (
        [ $( $(#[doc = $doc:literal])* $name:ident => $path:literal, $make:expr; )* ]
        $(#[doc = $bdoc:literal])* $bname:ident => $bpath:literal, $bmake:expr;
    ) => {
        /// A file the daemon serves, named by its path under the mount point.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Served {
            $( $(#[doc = $doc])* $name, )*
            $(#[doc = $bdoc])* $bname,
        }

        /// Every row, in the order of the variants: the view, its path, how it is made, and
        /// its doc comment (where its content comes from, for `show --explain`).
        const ROWS: &[(Served, &str, Make, &str)] = &[
            $( (Served::$name, $path, $make, concat!($($doc, "\n"),*)), )*
            (Served::$bname, $bpath, $bmake, concat!($($bdoc, "\n"),*)),
        ];

        impl Served {
            /// Every served file, in the order the tree lists them (the bench floor is not one).
            pub const ALL: &'static [Served] = &[ $( Served::$name, )* ];
        }
    };
}

catalog! {
    [
    /// `proc/meminfo`: the host's lines, with every field that has a cgroup source taken from
    /// the container's memory controller (limit of the chain, usage, memory.stat); the host's
    /// file when no limit applies (view/meminfo.rs).
    Meminfo => "proc/meminfo", |s, c| Ok(meminfo::render(&*s.host_meminfo()?, &*s.memory(c)?).into());
    /// `proc/cpuinfo`: the host's block of each visible CPU (cpuset cut to the quota),
    /// renumbered from 0 (view/cpuinfo.rs).
    Cpuinfo => "proc/cpuinfo", |s, c| Ok(cpuinfo::render(&*s.host_cpuinfo()?, &s.visible_cpus(c)?).into());
    /// `proc/stat`: per-vCPU times from the container's CPU account (its cgroup's CPU time
    /// spread over its visible CPUs, steal from throttling and run-queue wait), the host's
    /// other lines (view/stat.rs, state/cpu.rs).
    Stat => "proc/stat", stat_file;
    /// `proc/uptime`: the container's age and its vCPUs' idle time (view/uptime.rs).
    Uptime => "proc/uptime", uptime_file;
    /// `proc/loadavg`: load averages of the container's own threads, with the kernel's
    /// arithmetic (view/loadavg.rs, state/load.rs).
    Loadavg => "proc/loadavg", loadavg_file;
    /// `proc/diskstats`: the container's I/O per device from io.stat / blkio; the host's
    /// file outside an I/O cgroup of its own (view/diskstats.rs).
    Diskstats => "proc/diskstats", diskstats_file;
    /// `proc/swaps`: the container's swap limit and usage, as its meminfo's SwapTotal and
    /// SwapFree (view/swaps.rs).
    Swaps => "proc/swaps", swaps_file;
    /// `proc/slabinfo`: the container's own slab caches where the kernel gives them per
    /// cgroup (v1 `memory.kmem.slabinfo`, filled before Linux 5.9); the host's file elsewhere,
    /// as lxcfs does. Readable by root only, like the host's.
    Slabinfo => "proc/slabinfo", slabinfo_file;
    /// `proc/pressure/cpu`: the container's cpu.pressure (cgroup v2); the host's file without a
    /// unified cgroup of its own.
    PressureCpu => "proc/pressure/cpu", |s, c| pressure(s, c, Served::PressureCpu);
    /// `proc/pressure/memory`: the container's memory.pressure (cgroup v2); the host's file without a
    /// unified cgroup of its own.
    PressureMemory => "proc/pressure/memory", |s, c| pressure(s, c, Served::PressureMemory);
    /// `proc/pressure/io`: the container's io.pressure (cgroup v2); the host's file without a
    /// unified cgroup of its own.
    PressureIo => "proc/pressure/io", |s, c| pressure(s, c, Served::PressureIo);
    /// `sys/devices/system/cpu/online`: the visible CPUs (cpuset cut to the quota), numbered
    /// from 0 (view/cpu_online.rs).
    CpuOnline => "sys/devices/system/cpu/online", cpu_list;
    /// `sys/devices/system/cpu/possible` (glibc's `_SC_NPROCESSORS_CONF`): as `online`.
    CpuPossible => "sys/devices/system/cpu/possible", cpu_list;
    /// `sys/devices/system/cpu/present`: as `online`.
    CpuPresent => "sys/devices/system/cpu/present", cpu_list;
    ]
    /// `.bench/floor`: a constant meminfo-sized file, served only with `serve --bench-floor`,
    /// to measure the cost of the FUSE round trips alone.
    Floor => ".bench/floor", |_, _| Ok(floor_content().into());
}

/// The directory whose `cpuN` entries are per container (`crate::fuse::cpudir`); bound whole.
pub const CPU_DIR: &str = "sys/devices/system/cpu";

impl Served {
    fn row(self) -> &'static (Served, &'static str, Make, &'static str) {
        // The rows are declared in the order of the variants.
        &ROWS[self as usize]
    }

    /// Path under the mount point, which is also the host path under `/`.
    pub fn path(self) -> &'static str {
        self.row().1
    }

    /// Whether a rendering may be reused for a pass (`service::texts`): every container input
    /// of the file is one the sampler keeps for a pass or longer (memory counters, the CPU
    /// account, I/O counters, the visible CPUs, the load pass). Not slabinfo and the pressure
    /// files, whose cgroup file is read at each rendering, nor the bench floor.
    pub fn reusable(self) -> bool {
        use Served::*;
        matches!(
            self,
            Meminfo | Cpuinfo | Stat | Uptime | Loadavg | Diskstats | Swaps | CpuOnline | CpuPossible | CpuPresent
        )
    }

    /// Where its content comes from: the row's doc comment, on one line.
    pub fn about(self) -> String {
        self.row().3.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The file's permission bits, as the host's: read-only for everyone, except what the host
    /// keeps to root (slabinfo: kernel heap layout is an exploit's map) and the pressure files,
    /// which take PSI triggers (fuse/psi.rs).
    pub fn mode(self) -> u32 {
        match self {
            Served::Slabinfo => 0o400,
            _ if self.pressure_file().is_some() => 0o666,
            _ => 0o444,
        }
    }

    /// The cgroup file of a pressure view (`memory.pressure` for `proc/pressure/memory`).
    pub fn pressure_file(self) -> Option<&'static str> {
        match self {
            Served::PressureCpu => Some("cpu.pressure"),
            Served::PressureMemory => Some("memory.pressure"),
            Served::PressureIo => Some("io.pressure"),
            _ => None,
        }
    }

    /// The container's content, or why it cannot be computed.
    pub fn make(self, sampler: &Sampler, c: &Container) -> Result<Content> {
        (self.row().2)(sampler, c)
    }

    /// The view served at `path` (leading `/` and a `<mount>/` prefix are not part of it).
    pub fn from_path(path: &str) -> Option<Served> {
        let p = path.trim_start_matches('/');
        Served::ALL.iter().copied().find(|v| v.path() == p)
    }
}

/// What a container gets bound, under the mount point and at the same path in the
/// container: every view outside [`CPU_DIR`], then [`CPU_DIR`] itself.
pub fn bind_targets() -> Vec<&'static str> {
    let mut t: Vec<&'static str> = Served::ALL.iter().map(|v| v.path()).filter(|p| !p.starts_with(CPU_DIR)).collect();
    t.push(CPU_DIR);
    t
}

/// The served tree a bind of a [`bind_targets`] path comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindFrom {
    /// The shared tree: the cpu directory, whose `cpuN` entries follow the caller.
    Shared,
    /// The container's own directory of the cached tree (fuse/cached.rs), else the shared tree.
    Cached,
    /// The trigger connection (fuse/psi.rs), bound writable: the pressure files, whose triggers
    /// live in open handles. The shared tree (read-only, no triggers) where it is not served.
    Trigger,
}

/// Where the bind of `path` (a [`bind_targets`] entry) comes from.
pub fn bind_from(path: &str) -> BindFrom {
    if path == CPU_DIR {
        BindFrom::Shared
    } else if Served::from_path(path).is_some_and(|v| v.pressure_file().is_some()) {
        BindFrom::Trigger
    } else {
        BindFrom::Cached
    }
}

/// The constant content of [`Served::Floor`]: meminfo-sized (1.4 KiB).
pub fn floor_content() -> String {
    let line = "Floor:          12345678 kB\n";
    line.repeat(1434 / line.len() + 1)
}

/// online, possible and present are the same list for a container: its N CPUs.
fn cpu_list(s: &Sampler, c: &Container) -> Result<Content> {
    Ok(cpu_online::render(s.visible_cpus(c)?.len()).into())
}

fn diskstats_file(s: &Sampler, c: &Container) -> Result<Content> {
    match &c.cgroups.blkio {
        Some(d) if d.path != d.top => {
            let (io, host) = (s.io(d)?, s.host_diskstats()?);
            Ok(diskstats::render(&io, &host).into())
        }
        // Not in an I/O cgroup of its own: the host's devices are its devices.
        _ => host_text(s, Served::Diskstats),
    }
}

fn swaps_file(s: &Sampler, c: &Container) -> Result<Content> {
    // The same SwapTotal/SwapFree as the container's meminfo.
    match meminfo::compute(&*s.host_meminfo()?, &*s.memory(c)?) {
        Some(v) => Ok(swaps::render(
            v.get(meminfo::Field::SwapTotal).unwrap_or(0),
            v.get(meminfo::Field::SwapFree).unwrap_or(0),
        )
        .into()),
        None => host_text(s, Served::Swaps),
    }
}

fn slabinfo_file(s: &Sampler, c: &Container) -> Result<Content> {
    match &c.cgroups.memory {
        Some(d) if d.path != d.top => match crate::cgroup::memory::slabinfo(d)? {
            Some(t) => Ok(t.into()),
            None => host_text(s, Served::Slabinfo),
        },
        _ => host_text(s, Served::Slabinfo),
    }
}

fn pressure(s: &Sampler, c: &Container, view: Served) -> Result<Content> {
    match (&c.cgroups.unified, view.pressure_file()) {
        // The cgroup file has the kernel's /proc/pressure format.
        (Some(d), Some(file)) if d.path != d.top => crate::error::read_file(&d.file(file)).map(Content::from),
        // No cgroup of its own in the unified tree: the host's pressure.
        _ => host_text(s, view),
    }
}

/// The host's own file as the answer for a container that has no cgroup of its own for it.
pub fn host_text(s: &Sampler, view: Served) -> Result<Content> {
    Ok(Content {
        text: String::from_utf8_lossy(&s.host_file(view.path())?).into_owned(),
        origin: Origin::Host,
        until_ns: None,
    })
}

/// Whether the container has a unified cgroup of its own: where its pressure files (and
/// triggers) come from.
pub fn own_unified(c: &Container) -> Option<&crate::cgroup::CgroupDir> {
    c.cgroups.unified.as_ref().filter(|d| d.path != d.top)
}

fn stat_file(s: &Sampler, c: &Container) -> Result<Content> {
    let Some(cpu) = s.cpu_account(c)? else { return host_text(s, Served::Stat) };
    let tasks = s.tasks(&cpu, c);
    Ok(stat::render(&*s.host_stat()?, &cpu.vcpus, &cpu.total, &tasks).into())
}

fn uptime_file(s: &Sampler, c: &Container) -> Result<Content> {
    let Some(cpu) = s.cpu_account(c)? else { return host_text(s, Served::Uptime) };
    Ok(uptime::render(cpu.age_ns, cpu.total.idle).into())
}

fn loadavg_file(s: &Sampler, c: &Container) -> Result<Content> {
    let Some((load, tasks, sampled)) = s.load(c, crate::host::boottime_ns())? else {
        return host_text(s, Served::Loadavg);
    };
    let (last_pid, until_ns) = match (c.init, tasks.last_pid) {
        // Every figure is from the last load pass: unchanged until the next.
        (Some(_), Some(p)) => (p, Some(crate::sampler::next_pass_ns(sampled))),
        // Same pid namespace as the host: the host's last pid is the container's, at any time.
        _ => (s.host_last_pid(), None),
    };
    Ok(Content { until_ns, ..loadavg::render(&load, &tasks, last_pid).into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_read_afresh_at_each_rendering_are_never_reused() {
        for &v in Served::ALL {
            let afresh = v == Served::Slabinfo || v.pressure_file().is_some();
            assert_eq!(v.reusable(), !afresh, "{}", v.path());
        }
        assert!(!Served::Floor.reusable());
    }

    #[test]
    fn rows_follow_the_variants() {
        for (i, (v, path, _, about)) in ROWS.iter().enumerate() {
            assert!(!about.trim().is_empty(), "{path} says where its content comes from");
            assert_eq!(*v as usize, i, "{path}");
            assert_eq!(v.path(), *path);
        }
        assert_eq!(Served::ALL.len() + 1, ROWS.len(), "every row but the floor is served");
        assert!(Served::ALL.iter().all(|v| *v != Served::Floor));
        assert_eq!(Served::from_path("/proc/meminfo"), Some(Served::Meminfo));
        assert_eq!(Served::from_path(".bench/floor"), None);
    }
}
