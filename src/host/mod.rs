//! Readers of the host's own `/proc` and `/sys` files, parsed once into typed values that the
//! renderers copy lines from.

pub mod cpuinfo;
pub mod diskstats;
pub mod meminfo;
pub mod stat;

pub use cpuinfo::HostCpuinfo;
pub use meminfo::HostMeminfo;
pub use stat::HostStat;

use crate::cgroup::cpuset::parse_list;
use crate::error::{read_file, Error, Result};
use crate::Root;

/// The host's online CPUs, from `/sys/devices/system/cpu/online`.
pub fn online_cpus(root: &Root) -> Result<Vec<u32>> {
    let p = root.sys().join("devices/system/cpu/online");
    parse_list(&p, &read_file(&p)?)
}

/// CLOCK_BOOTTIME now, ns: the clock `/proc/uptime` and process start times are on.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// When process `pid` started, ns after boot (`/proc/<pid>/stat` field 22, in USER_HZ ticks).
pub fn start_ns(root: &Root, pid: u32) -> Result<u64> {
    let p = root.proc_pid(pid).join("stat");
    let t = read_file(&p)?;
    let ticks = t
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_ascii_whitespace().nth(19))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| Error::malformed(&p, "no start time"))?;
    Ok(ticks.saturating_mul(crate::state::cpu::NS_PER_TICK))
}

/// The innermost pid of a `/proc/<pid>/status` text (last field of `NSpid:`): the process's
/// pid in its own pid namespace, 1 for that namespace's init.
pub fn innermost_nspid(status: &str) -> Option<&str> {
    status.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_ascii_whitespace().last()
}
