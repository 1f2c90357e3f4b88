//! `/proc/stat` for a container (`fs/proc/stat.c` format): the aggregate `cpu` line and one
//! `cpuN` line per visible vCPU from the container's CPU account, in USER_HZ ticks; the host's
//! `intr`, `ctxt`, `btime`, `processes` and `softirq` lines; `procs_running`/`procs_blocked`
//! counted in the container.

use crate::cgroup::tasks::TaskCounts;
use crate::host::HostStat;
use crate::procfs::NS_PER_TICK;
use crate::state::cpu::VCpu;
use std::fmt::Write;

fn line(out: &mut String, name: &str, v: &VCpu) {
    let t = |ns: u64| ns / NS_PER_TICK;
    // user nice system idle iowait irq softirq steal guest guest_nice
    let _ = writeln!(out, "{name} {} 0 {} {} 0 0 0 {} 0 0", t(v.user), t(v.system), t(v.idle), t(v.steal));
}

/// Renders the file from the visible vCPUs, the aggregate over all vCPUs the container has
/// had, the host's other lines and the container's task counts.
pub fn render(host: &HostStat, vcpus: &[VCpu], total: &VCpu, tasks: &TaskCounts) -> String {
    let mut out = String::with_capacity(256 + 64 * vcpus.len() + host.other.iter().map(|l| l.len() + 1).sum::<usize>());
    // The kernel writes "cpu" followed by two spaces.
    line(&mut out, "cpu ", total);
    for (i, v) in vcpus.iter().enumerate() {
        line(&mut out, &format!("cpu{i}"), v);
    }
    for l in &host.other {
        if l.starts_with("softirq") {
            // The kernel prints procs_* before softirq; keep its order.
            let _ = writeln!(out, "procs_running {}", tasks.running.max(1));
            let _ = writeln!(out, "procs_blocked {}", tasks.blocked);
        }
        out.push_str(l);
        out.push('\n');
    }
    if !host.other.iter().any(|l| l.starts_with("softirq")) {
        let _ = writeln!(out, "procs_running {}", tasks.running.max(1));
        let _ = writeln!(out, "procs_blocked {}", tasks.blocked);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_layout() {
        let host = HostStat::parse("cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 5 0\nctxt 9\nbtime 100\nprocesses 7\nprocs_running 3\nprocs_blocked 1\nsoftirq 1 2\n").unwrap();
        let v = VCpu { user: 150_000_000, system: 20_000_000, idle: 1_000_000_000, steal: 35_000_000 };
        let out = render(
            &host,
            &[v, v],
            &VCpu { user: 300_000_000, system: 40_000_000, idle: 2_000_000_000, steal: 70_000_000 },
            &TaskCounts { running: 2, blocked: 0, total: 5, last_pid: None },
        );
        assert_eq!(
            out,
            "cpu  30 0 4 200 0 0 0 7 0 0\ncpu0 15 0 2 100 0 0 0 3 0 0\ncpu1 15 0 2 100 0 0 0 3 0 0\nintr 5 0\nctxt 9\nbtime 100\nprocesses 7\nprocs_running 2\nprocs_blocked 0\nsoftirq 1 2\n"
        );
        assert!(HostStat::parse("garbage").is_err());
    }
}
