//! CPU time a cgroup used and waited for: v2 `cpu.stat` (usage/user/system µs, throttled µs),
//! v1 `cpuacct.usage` + `cpuacct.stat` and `cpu.stat` (throttled ns), and the PSI `cpu.pressure`
//! `some` total wherever the unified tree carries it (v2, and hybrid hosts). The third source
//! of wait, the threads' own run delay, is sampled per thread (`tasks::run_delays`).

use super::parse::{flat_keyed, u64_value};
use super::read_file;
use super::{CgroupDir, Cgroups, Version};
use crate::error::{Error, Result};

/// Cumulative CPU counters of a cgroup, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuUsage {
    /// CPU time spent in user mode.
    pub user_ns: u64,
    /// CPU time spent in the kernel.
    pub system_ns: u64,
    /// CFS throttled time (`throttled_usec`/`throttled_time`).
    pub throttled_ns: u64,
    /// The PSI `cpu.pressure` `some` total: wall time with at least one task waiting.
    pub psi_ns: u64,
    /// CPU time the container's threads waited on a run queue (the sum of their
    /// `/proc/<tid>/schedstat` run delays, tracked by the state store; 0 as read here).
    pub delay_ns: u64,
}

impl CpuUsage {
    /// Time waited between `last` and `self`: the largest advance of the three sources. They
    /// measure overlapping things (a throttled thread's wait is in its run delay too; PSI
    /// counts wall time with any waiter) and are never added.
    pub fn wait_since(&self, last: &CpuUsage) -> u64 {
        self.throttled_ns
            .saturating_sub(last.throttled_ns)
            .max(self.psi_ns.saturating_sub(last.psi_ns))
            .max(self.delay_ns.saturating_sub(last.delay_ns))
    }
}

/// Reads the CPU counters of a container. `None` when no hierarchy accounts its CPU time.
pub fn read(cg: &Cgroups) -> Result<Option<CpuUsage>> {
    let Some(acct) = cg.cpu_accounting() else { return Ok(None) };
    // v2 keeps usage and throttling in one `cpu.stat`: read once when both come from it.
    let mut v2_stat = None;
    let (user_ns, system_ns) = match acct.version {
        Version::V1 => v1_usage(acct)?,
        Version::V2 => {
            let p = acct.file("cpu.stat");
            let t = read_file(&p)?;
            let usage = v2_usage(&p, &t)?;
            v2_stat = Some((acct.path.clone(), t));
            usage
        }
    };
    let throttled = match &cg.cpu {
        Some(d) => throttled_ns(d, v2_stat.as_ref().filter(|(p, _)| *p == d.path).map(|(_, t)| t.as_str()))?,
        None => 0,
    };
    // PSI of the unified tree: on a hybrid host only when the container has its own v2 cgroup
    // (runc creates one), never the root's, which is the whole host's.
    let psi = match &cg.unified {
        Some(d) if d.path != d.top => psi_some_ns(d).unwrap_or(0),
        _ => 0,
    };
    Ok(Some(CpuUsage { user_ns, system_ns, throttled_ns: throttled, psi_ns: psi, delay_ns: 0 }))
}

fn v2_usage(p: &std::path::Path, t: &str) -> Result<(u64, u64)> {
    let key = |k: &str| flat_keyed(t).find(|(x, _)| *x == k).map(|(_, v)| v.saturating_mul(1000));
    match (key("user_usec"), key("system_usec")) {
        (Some(u), Some(s)) => Ok((u, s)),
        _ => Err(Error::malformed(p, "no user_usec/system_usec")),
    }
}

fn v1_usage(d: &CgroupDir) -> Result<(u64, u64)> {
    let usage = u64_value(&d.file("cpuacct.usage"), &read_file(&d.file("cpuacct.usage"))?)?;
    let p = d.file("cpuacct.stat");
    let t = read_file(&p)?;
    let key = |k: &str| flat_keyed(&t).find(|(x, _)| *x == k).map(|(_, v)| v);
    let (Some(u), Some(s)) = (key("user"), key("system")) else {
        return Err(Error::malformed(p, "no user/system"));
    };
    // cpuacct.usage is precise, cpuacct.stat tick-sampled: split the precise total by the
    // sampled ratio, as the kernel's cputime_adjust() does for v2.
    let total = u as u128 + s as u128;
    let user = (usage as u128 * u as u128).checked_div(total).map_or(usage, |v| v as u64);
    Ok((user, usage - user))
}

/// Throttled time of the cgroup, including throttling by ancestors where the kernel reports
/// it (v2's `cpu.stat.local`, 6.6+; v1 has no such file), in ns. `stat` is the cgroup's
/// `cpu.stat` when already read.
fn throttled_ns(d: &CgroupDir, stat: Option<&str>) -> Result<u64> {
    let (key, scale, names): (_, _, &[&str]) = match d.version {
        Version::V2 => ("throttled_usec", 1000, &["cpu.stat.local", "cpu.stat"]),
        Version::V1 => ("throttled_time", 1, &["cpu.stat"]),
    };
    let value = |t: &str| flat_keyed(t).find(|(k, _)| *k == key).map_or(0, |(_, v)| v.saturating_mul(scale));
    let mut best = 0u64;
    for name in names {
        best = best.max(match (*name, stat) {
            ("cpu.stat", Some(t)) => value(t),
            _ => super::held::read(d.file(name)).map_or(0, |t| value(&t)),
        });
    }
    Ok(best)
}

/// The `some total=` of `cpu.pressure`, in ns.
fn psi_some_ns(d: &CgroupDir) -> Option<u64> {
    let t = super::held::read(d.file("cpu.pressure")).ok()?;
    let line = t.lines().find(|l| l.starts_with("some "))?;
    let total = line.split_ascii_whitespace().find_map(|f| f.strip_prefix("total="))?;
    total.parse::<u64>().ok().map(|us| us.saturating_mul(1000))
}
