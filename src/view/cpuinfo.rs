//! `/proc/cpuinfo`: the host's blocks of the container's CPUs, renumbered `0..N-1`, with the
//! topology fields rewritten so `siblings`/`cpu cores` agree with N (lxcfs only renumbers
//! `processor`, leaving a topology that contradicts the count).

use crate::host::cpuinfo::{key, HostCpuinfo};

/// Renders cpuinfo for a container whose visible host CPUs are `cpus`.
pub fn render(host: &HostCpuinfo, cpus: &[u32]) -> String {
    let n = cpus.len();
    let mut out = String::with_capacity(host.blocks.first().map_or(0, |b| b.lines.len() * 40) * n);
    for (i, &cpu) in cpus.iter().enumerate() {
        // A CPU missing from the host's file (hot-unplugged since the cpuset was read) borrows
        // the first block, so the count stays right.
        let Some(block) = host.block(cpu).or(host.blocks.first()) else {
            break;
        };
        for line in &block.lines {
            let new = match key(line) {
                "processor" | "core id" | "apicid" | "initial apicid" => Some(i),
                "physical id" => Some(0),
                "siblings" | "cpu cores" => Some(n),
                _ => None,
            };
            match (new, line.find(": ")) {
                (Some(v), Some(pos)) => {
                    out.push_str(&line[..pos + 2]);
                    out.push_str(&v.to_string());
                }
                _ => out.push_str(line),
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str(&host.trailer);
    out
}
