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
use crate::error::{read_file, Result};
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

/// The kernel's `struct sysinfo` for this process (the host's values: the daemon runs in the
/// host's namespaces).
pub fn sysinfo() -> std::io::Result<libc::sysinfo> {
    // SAFETY: sysinfo fills the zeroed struct it is given.
    let mut s: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a struct of the right type.
    if unsafe { libc::sysinfo(&mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s)
}
