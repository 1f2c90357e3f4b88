//! One pure renderer per served file. Each takes typed snapshots (host files, the container's
//! cgroup stats) and returns the bytes the container reads; none does I/O. Which renderer
//! serves which path, and where its inputs come from, is the table in [`crate::catalog`].

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
