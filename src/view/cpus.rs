//! Which CPUs a container sees: its effective cpuset, cut down to the CFS quota rounded up.
//! stat, cpuinfo and the sysfs `online` file all take their count from here, so they agree.

use crate::cgroup::cpu::Quota;

/// How the visible CPU count is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuCount {
    /// min(cpuset size, ceil(quota / period)) — what the container can actually use.
    #[default]
    Quota,
    /// The cpuset size only, ignoring the quota (lxcfs without `--enable-cpuview`).
    Cpuset,
}

/// The host CPUs a container sees, in ascending order, never empty.
///
/// `cpuset` is the container's effective cpuset (`None`: no cpuset controller, all online
/// CPUs); an empty or foreign cpuset falls back to the host's online CPUs.
pub fn visible_cpus(host_online: &[u32], cpuset: Option<&[u32]>, quota: Option<Quota>, mode: CpuCount) -> Vec<u32> {
    let mut cpus: Vec<u32> = match cpuset {
        Some(set) => set.iter().copied().filter(|c| host_online.contains(c)).collect(),
        None => host_online.to_vec(),
    };
    if cpus.is_empty() {
        cpus = host_online.to_vec();
    }
    if cpus.is_empty() {
        cpus.push(0);
    }
    if let (CpuCount::Quota, Some(q)) = (mode, quota) {
        cpus.truncate(q.cpus_ceil());
    }
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q15: Quota = Quota { quota: 150_000, period: 100_000 };

    #[test]
    fn quota_and_cpuset() {
        let host: Vec<u32> = (0..48).collect();
        assert_eq!(visible_cpus(&host, None, Some(Q15), CpuCount::Quota), vec![0, 1]);
        assert_eq!(visible_cpus(&host, None, Some(Q15), CpuCount::Cpuset).len(), 48);
        assert_eq!(visible_cpus(&host, Some(&[5, 9, 11]), None, CpuCount::Quota), vec![5, 9, 11]);
        assert_eq!(visible_cpus(&host, Some(&[5, 9, 11]), Some(Q15), CpuCount::Quota), vec![5, 9]);
        // A cpuset naming only CPUs the host does not have is absurd: fall back to the host.
        assert_eq!(visible_cpus(&[0, 1], Some(&[7]), None, CpuCount::Quota), vec![0, 1]);
        assert_eq!(visible_cpus(&[], None, None, CpuCount::Quota), vec![0]);
    }
}
