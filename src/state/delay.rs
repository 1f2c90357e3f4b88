//! The CPU time a container's threads waited on a run queue, as one cumulative counter.
//!
//! The kernel keeps no such counter per cgroup: PSI `some` is wall time with at least one
//! waiter (two threads each waiting a whole second count 1 s, not 2), and v1's `wait_sum` needs
//! `kernel.sched_schedstats`. Each thread's own `run_delay` (`/proc/<tid>/schedstat`) is exact
//! but vanishes with the thread, so the sampler folds the threads' advances into a counter of
//! its own every second, and a read estimates the counter between two samples from the last
//! rate: a `top` refreshing every second then sees a smooth steal, not 0 and 2 s alternately.

use std::collections::HashMap;

/// How far past the last sample a read extrapolates at most.
const MAX_EXTRAPOLATE_NS: u64 = 2_000_000_000;

/// The folded run delay of one container.
#[derive(Debug, Clone, Default)]
pub struct DelayTracker {
    /// Each sampled thread's run delay at the last sample.
    threads: HashMap<u32, u64>,
    /// `(at_ns, cumulative ns)` of the last two samples, newest last.
    samples: Vec<(u64, u64)>,
}

impl DelayTracker {
    /// Folds in one sample taken at `now_ns`: `(tid, run_delay)` of up to all of the
    /// container's `total` threads. The counter starts at `base` (the value last shown, so a
    /// restarted worker continues from it). A thread not seen before adds its run delay up to
    /// the time since the previous sample (it was born, or moved in, since); a thread whose
    /// delay went down is a reused thread id and counts as new. With fewer threads sampled
    /// than the container has, the advance is scaled to all of them.
    pub fn fold(&mut self, now_ns: u64, sampled: &[(u32, u64)], total: u64, base: u64) {
        let Some(&(at, w)) = self.samples.last() else {
            self.threads = sampled.iter().copied().collect();
            self.samples.push((now_ns, base));
            return;
        };
        if now_ns <= at {
            return;
        }
        let dt = now_ns - at;
        let mut advance: u128 = 0;
        for &(tid, d) in sampled {
            advance += match self.threads.get(&tid) {
                Some(&prev) if d >= prev => d - prev,
                _ => d.min(dt),
            } as u128;
        }
        let seen = sampled.len() as u128;
        if seen > 0 && (total as u128) > seen {
            advance = advance * total as u128 / seen;
        }
        self.threads = sampled.iter().copied().collect();
        let w = w.saturating_add(advance.min(u64::MAX as u128) as u64);
        self.samples.push((now_ns, w));
        if self.samples.len() > 2 {
            self.samples.remove(0);
        }
    }

    /// The counter at `now_ns`: the last sample plus the last interval's rate since then
    /// (at most [`MAX_EXTRAPOLATE_NS`]). `None` before the first sample.
    pub fn estimate(&self, now_ns: u64) -> Option<u64> {
        let &(t2, w2) = self.samples.last()?;
        let [(t1, w1), _] = self.samples[..] else { return Some(w2) };
        let since = now_ns.saturating_sub(t2).min(MAX_EXTRAPOLATE_NS) as u128;
        let rate_num = (w2 - w1) as u128;
        let rate_den = t2.saturating_sub(t1).max(1) as u128;
        Some(w2.saturating_add((rate_num * since / rate_den).min(u64::MAX as u128) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn starts_at_the_base_and_adds_each_threads_advance() {
        let mut t = DelayTracker::default();
        assert_eq!(t.estimate(S), None);
        t.fold(S, &[(10, 5 * S), (11, 7 * S)], 2, 100 * S);
        assert_eq!(t.estimate(S), Some(100 * S), "history before the first sample is not counted");
        t.fold(2 * S, &[(10, 5 * S + S / 2), (11, 7 * S + S / 2)], 2, 0);
        assert_eq!(t.estimate(2 * S), Some(101 * S));
        // Thread 11 exited and 12 was born: 12's whole delay counts, bounded by the interval.
        t.fold(3 * S, &[(10, 6 * S), (12, 9 * S)], 2, 0);
        assert_eq!(t.estimate(3 * S), Some(101 * S + S / 2 + S));
        // A reused id (its delay lower than the old thread's) counts as a new thread.
        t.fold(4 * S, &[(10, 6 * S), (12, S / 4)], 2, 0);
        assert_eq!(t.estimate(4 * S), Some(102 * S + S / 2 + S / 4));
    }

    #[test]
    fn between_samples_the_last_rate_is_extrapolated_and_bounded() {
        let mut t = DelayTracker::default();
        t.fold(10 * S, &[(1, 0), (2, 0)], 2, 0);
        t.fold(11 * S, &[(1, S / 2), (2, S / 2)], 2, 0);
        assert_eq!(t.estimate(11 * S + S / 2), Some(S + S / 2));
        assert_eq!(t.estimate(20 * S), Some(3 * S), "at most 2 s past the sample");
        // Estimates never decrease with time.
        let mut prev = 0;
        for ms in 0..3000 {
            let e = t.estimate(11 * S + ms * 1_000_000).unwrap();
            assert!(e >= prev);
            prev = e;
        }
    }

    #[test]
    fn a_partial_sample_is_scaled_to_every_thread() {
        let mut t = DelayTracker::default();
        t.fold(S, &[(1, 0), (2, 0)], 10, 0);
        t.fold(2 * S, &[(1, S / 10), (2, S / 10)], 10, 0);
        assert_eq!(t.estimate(2 * S), Some(S));
        assert_eq!(t.threads.len(), 2);
    }
}
