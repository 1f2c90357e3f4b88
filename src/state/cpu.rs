//! Per-container CPU accounting for `/proc/stat` and `/proc/uptime`: the container's
//! cumulative user, system and wait time are spread over N virtual CPUs that each advance by
//! exactly the elapsed wall time, as a VM's would. Time a vCPU could not use for work is steal
//! when the container's tasks were waiting for a CPU (throttling, host contention), else idle.
//!
//! Monotonic by construction: every counter only ever receives non-negative increments; a
//! vCPU that disappears (the container's N shrank) keeps its counters frozen and stays in the
//! aggregate, like an offline CPU in the kernel's `cpu` line.

use crate::cgroup::cpuacct::CpuUsage;

/// One virtual CPU's cumulative times, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VCpu {
    /// Time running user code.
    pub user: u64,
    /// Time running kernel code.
    pub system: u64,
    /// Time with nothing to run.
    pub idle: u64,
    /// Time the container wanted to run but was not allowed to.
    pub steal: u64,
}

impl VCpu {
    fn add(&mut self, o: &VCpu) {
        self.user += o.user;
        self.system += o.system;
        self.idle += o.idle;
        self.steal += o.steal;
    }
}

/// The container's CPU account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuAccount {
    /// CLOCK_BOOTTIME of the last sample, ns.
    pub at_ns: u64,
    /// The kernel's cumulative counters at the last sample.
    pub last: CpuUsage,
    /// Every virtual CPU the container has had, in order; the first N are visible.
    pub vcpus: Vec<VCpu>,
}

impl CpuAccount {
    /// An account for a container born `age_ns` before `now_ns` whose counters are `usage`:
    /// its whole history is spread over `n` vCPUs, so a daemon that lost its state rebuilds
    /// nearly the same figures from the kernel's cumulative values.
    pub fn new(now_ns: u64, age_ns: u64, usage: CpuUsage, n: usize) -> Self {
        let mut a = CpuAccount { at_ns: now_ns.saturating_sub(age_ns), last: CpuUsage::default(), vcpus: Vec::new() };
        a.advance(now_ns, usage, n);
        a
    }

    /// Folds in a new sample taken at `now_ns` while the container sees `n` vCPUs.
    pub fn advance(&mut self, now_ns: u64, usage: CpuUsage, n: usize) {
        let n = n.max(1);
        if self.vcpus.len() < n {
            self.vcpus.resize(n, VCpu::default());
        }
        let dt = now_ns.saturating_sub(self.at_ns);
        // Counters that went backwards (a recreated cgroup under the same name) add nothing.
        let du = usage.user_ns.saturating_sub(self.last.user_ns);
        let ds = usage.system_ns.saturating_sub(self.last.system_ns);
        let dw = usage.wait_since(&self.last);
        let l = &self.last;
        self.last = CpuUsage {
            user_ns: usage.user_ns.max(l.user_ns),
            system_ns: usage.system_ns.max(l.system_ns),
            throttled_ns: usage.throttled_ns.max(l.throttled_ns),
            psi_ns: usage.psi_ns.max(l.psi_ns),
            delay_ns: usage.delay_ns.max(l.delay_ns),
        };
        if dt == 0 {
            return;
        }
        self.at_ns = now_ns;
        for (i, v) in split(dt, du, ds, dw, n).iter().enumerate() {
            self.vcpus[i].add(v);
        }
    }

    /// Sum over every vCPU the container has had (the `cpu` line).
    pub fn total(&self) -> VCpu {
        let mut t = VCpu::default();
        for v in &self.vcpus {
            t.add(v);
        }
        t
    }
}

/// Spreads one interval over `n` vCPUs of `dt` ns each: user and system first (scaled down if
/// they exceed the capacity, e.g. bursts above the quota), then wait as steal within what is
/// left, the rest idle. Each vCPU receives exactly `dt`.
pub fn split(dt: u64, du: u64, ds: u64, dw: u64, n: usize) -> Vec<VCpu> {
    let n64 = n as u64;
    let cap = dt as u128 * n as u128;
    let (mut du, mut ds) = (du as u128, ds as u128);
    if du + ds > cap {
        let busy = du + ds;
        du = du * cap / busy;
        ds = cap - du;
    }
    let steal = (dw as u128).min(cap - du - ds);
    let share = |total: u128, i: u64| -> u64 {
        // Even shares; the first `total % n` vCPUs take one ns more.
        let base = (total / n as u128) as u64;
        base + u64::from((i as u128) < total % n as u128)
    };
    (0..n64)
        .map(|i| {
            let user = share(du, i).min(dt);
            let system = share(ds, i).min(dt - user);
            let steal = share(steal, i).min(dt - user - system);
            VCpu { user, system, steal, idle: dt - user - system - steal }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    fn usage(u: u64, s: u64, w: u64) -> CpuUsage {
        CpuUsage { user_ns: u, system_ns: s, throttled_ns: w, ..Default::default() }
    }

    #[test]
    fn wait_is_the_largest_advance_of_its_sources() {
        // 2 threads on a shared 2-CPU host for 4 s: PSI `some` grew 2 s (wall time with any
        // waiter), the run delays 4 s, nothing throttled: 4 s of the 8 s are steal, none idle.
        let start = CpuUsage { psi_ns: 50 * S, delay_ns: 70 * S, throttled_ns: 9 * S, ..Default::default() };
        let mut a = CpuAccount::new(100 * S, 0, start, 2);
        a.advance(104 * S, CpuUsage { user_ns: 4 * S, psi_ns: 52 * S, delay_ns: 74 * S, ..start }, 2);
        let t = a.total();
        assert_eq!((t.user, t.steal, t.idle), (4 * S, 4 * S, 0));
        // A throttled spinner: its run delay holds the throttled time too; the larger counts.
        let later = CpuUsage {
            user_ns: 5 * S,
            throttled_ns: 10 * S,
            psi_ns: 52 * S + S / 2,
            delay_ns: 74 * S + S / 2,
            ..start
        };
        a.advance(106 * S, later, 2);
        let t2 = a.total();
        assert_eq!(t2.steal - t.steal, S);
    }

    #[test]
    fn a_throttled_spinner_is_busy_and_steal() {
        // One vCPU, 10 s: 2 s used, 7.8 s throttled (the 20 % quota experiment).
        let mut a = CpuAccount::new(100 * S, 0, usage(0, 0, 0), 1);
        a.advance(110 * S, usage(2 * S, 0, 7_800_000_000), 1);
        let v = a.vcpus[0];
        assert_eq!(v.user, 2 * S);
        assert_eq!(v.steal, 7_800_000_000);
        assert_eq!(v.idle, 200_000_000);
        assert_eq!(v.user + v.system + v.idle + v.steal, 10 * S);
    }

    #[test]
    fn spread_over_vcpus_each_advancing_by_wall_time() {
        let mut a = CpuAccount::new(0, 0, usage(0, 0, 0), 3);
        a.advance(S, usage(S, S / 2, 10 * S), 3);
        for v in &a.vcpus {
            assert_eq!(v.user + v.system + v.idle + v.steal, S);
        }
        let t = a.total();
        assert_eq!((t.user, t.system), (S, S / 2));
        // Rounding of the even shares may turn a few ns of steal into idle, never more.
        assert!(t.steal <= 3 * S / 2 && t.steal + 3 >= 3 * S / 2 && t.idle <= 3, "{t:?}");
    }

    #[test]
    fn history_is_rebuilt_from_cumulative_values() {
        let a = CpuAccount::new(500 * S, 100 * S, usage(30 * S, 10 * S, 5 * S), 2);
        let t = a.total();
        assert_eq!((t.user, t.system, t.steal, t.idle), (30 * S, 10 * S, 5 * S, 155 * S));
    }

    proptest! {
        /// Monotonic under random samples: counters jumping in steps, going backwards
        /// (recreated cgroups), N changing, time standing still.
        #[test]
        fn never_goes_backwards(steps in proptest::collection::vec((0u64..5 * S, 0u64..20 * S, 0u64..5 * S, 0u64..30 * S, 1usize..6, any::<bool>()), 1..40)) {
            let mut a = CpuAccount::new(10 * S, 10 * S, usage(0, 0, 0), 2);
            let (mut now, mut u, mut s, mut w) = (10 * S, 0u64, 0u64, 0u64);
            let mut prev_total = a.total();
            let mut prev: Vec<VCpu> = a.vcpus.clone();
            for (dt, du, ds, dw, n, reset) in steps {
                now += dt;
                if reset { u = 0; s = 0; w = 0; } else { u += du; s += ds; w += dw; }
                a.advance(now, usage(u, s, w), n);
                let t = a.total();
                prop_assert!(t.user >= prev_total.user && t.system >= prev_total.system);
                prop_assert!(t.idle >= prev_total.idle && t.steal >= prev_total.steal);
                for (i, p) in prev.iter().enumerate() {
                    let v = a.vcpus[i];
                    prop_assert!(v.user >= p.user && v.system >= p.system && v.idle >= p.idle && v.steal >= p.steal);
                }
                // Each visible vCPU's fields add up to exactly the time it has existed for.
                let sum = |v: &VCpu| v.user + v.system + v.idle + v.steal;
                prop_assert!(a.vcpus.iter().all(|v| sum(v) <= now));
                prev_total = t;
                prev = a.vcpus.clone();
            }
        }
    }
}
