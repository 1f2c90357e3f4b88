//! One pure renderer per served file. Each takes typed snapshots (host files, the container's
//! cgroup stats) and returns the bytes the container reads; none does I/O.

pub mod cpu_online;
pub mod cpuinfo;
pub mod cpus;
pub mod diskstats;
pub mod loadavg;
pub mod meminfo;
pub mod stat;
pub mod swaps;
pub mod sysinfo;
pub mod uptime;

/// The directory whose `cpuN` entries are per container (`crate::fs::cpudir`); bound whole.
pub const CPU_DIR: &str = "sys/devices/system/cpu";

/// What a container gets bound, under the mount point and at the same path in the
/// container: every view outside [`CPU_DIR`], then [`CPU_DIR`] itself.
pub fn bind_targets() -> Vec<&'static str> {
    let mut t: Vec<&'static str> = View::ALL.iter().map(|v| v.path()).filter(|p| !p.starts_with(CPU_DIR)).collect();
    t.push(CPU_DIR);
    t
}

/// A file the daemon serves, named by its path under the mount point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    /// `proc/meminfo`
    Meminfo,
    /// `proc/cpuinfo`
    Cpuinfo,
    /// `sys/devices/system/cpu/online`
    CpuOnline,
    /// `sys/devices/system/cpu/possible` (glibc's `_SC_NPROCESSORS_CONF`)
    CpuPossible,
    /// `sys/devices/system/cpu/present`
    CpuPresent,
    /// `proc/stat`
    Stat,
    /// `proc/uptime`
    Uptime,
    /// `proc/loadavg`
    Loadavg,
    /// `proc/diskstats`
    Diskstats,
    /// `proc/swaps`
    Swaps,
    /// `proc/pressure/cpu`
    PressureCpu,
    /// `proc/pressure/memory`
    PressureMemory,
    /// `proc/pressure/io`
    PressureIo,
    /// `.bench/floor`: a constant file, served only with `serve --bench-floor`, to measure the
    /// cost of the FUSE round trips alone (the floor every other file is compared with).
    Floor,
}

impl View {
    /// Every served file.
    pub const ALL: &'static [View] = &[
        View::Meminfo,
        View::Cpuinfo,
        View::Stat,
        View::Uptime,
        View::Loadavg,
        View::Diskstats,
        View::Swaps,
        View::PressureCpu,
        View::PressureMemory,
        View::PressureIo,
        View::CpuOnline,
        View::CpuPossible,
        View::CpuPresent,
    ];

    /// Path under the mount point, which is also the host path under `/`.
    pub fn path(self) -> &'static str {
        match self {
            View::Meminfo => "proc/meminfo",
            View::Cpuinfo => "proc/cpuinfo",
            View::CpuOnline => "sys/devices/system/cpu/online",
            View::CpuPossible => "sys/devices/system/cpu/possible",
            View::CpuPresent => "sys/devices/system/cpu/present",
            View::Stat => "proc/stat",
            View::Uptime => "proc/uptime",
            View::Loadavg => "proc/loadavg",
            View::Diskstats => "proc/diskstats",
            View::Swaps => "proc/swaps",
            View::PressureCpu => "proc/pressure/cpu",
            View::PressureMemory => "proc/pressure/memory",
            View::PressureIo => "proc/pressure/io",
            View::Floor => ".bench/floor",
        }
    }

    /// The constant content of [`View::Floor`]: meminfo-sized (1.4 KiB).
    pub fn floor_content() -> String {
        let line = "Floor:          12345678 kB\n";
        line.repeat(1434 / line.len() + 1)
    }

    /// The view served at `path` (leading `/` and a `<mount>/` prefix are not part of it).
    pub fn from_path(path: &str) -> Option<View> {
        let p = path.trim_start_matches('/');
        View::ALL.iter().copied().find(|v| v.path() == p)
    }
}
