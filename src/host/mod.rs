//! Readers of the host's own `/proc` and `/sys` files, parsed once into typed values that the
//! renderers copy lines from.

pub mod cpuinfo;
pub mod meminfo;

pub use cpuinfo::HostCpuinfo;
pub use meminfo::HostMeminfo;

use crate::cgroup::cpuset::parse_list;
use crate::error::{read_file, Result};
use crate::Root;

/// The host's online CPUs, from `/sys/devices/system/cpu/online`.
pub fn online_cpus(root: &Root) -> Result<Vec<u32>> {
    let p = root.sys().join("devices/system/cpu/online");
    parse_list(&p, &read_file(&p)?)
}
