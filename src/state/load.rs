//! The kernel's load-average arithmetic (`kernel/sched/loadavg.c`,
//! `include/linux/sched/loadavg.h`), applied per container to the count of its runnable and
//! uninterruptible threads, sampled every 5 s.

/// Bits of fraction in the fixed-point load.
pub const FSHIFT: u32 = 11;
/// 1.0 in fixed point.
pub const FIXED_1: u64 = 1 << FSHIFT;
/// 1/exp(5s/1min) in fixed point.
pub const EXP_1: u64 = 1884;
/// 1/exp(5s/5min).
pub const EXP_5: u64 = 2014;
/// 1/exp(5s/15min).
pub const EXP_15: u64 = 2037;
/// Sampling period, ns (the kernel's LOAD_FREQ is 5 s + 1 tick; the tick is immaterial).
pub const LOAD_FREQ_NS: u64 = 5_000_000_000;

/// `calc_load` as in Linux 4.6+: round up while rising, truncate while falling.
pub fn calc_load(load: u64, exp: u64, active: u64) -> u64 {
    let mut newload = load * exp + active * (FIXED_1 - exp);
    if active >= load {
        newload += FIXED_1 - 1;
    }
    newload / FIXED_1
}

/// `fixed_power_int`: x^n in fixed point with `frac_bits`, rounding at each step.
pub fn fixed_power_int(mut x: u64, frac_bits: u32, mut n: u64) -> u64 {
    let mut result = 1u64 << frac_bits;
    while n > 0 {
        if n & 1 == 1 {
            result = (result * x + (1 << (frac_bits - 1))) >> frac_bits;
        }
        n >>= 1;
        if n == 0 {
            break;
        }
        x = (x * x + (1 << (frac_bits - 1))) >> frac_bits;
    }
    result
}

/// `calc_load_n`: `n` missed periods at once with the same active count.
pub fn calc_load_n(load: u64, exp: u64, active: u64, n: u64) -> u64 {
    calc_load(load, fixed_power_int(exp, FSHIFT, n), active)
}

/// A container's 1/5/15-minute load averages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadAvg {
    /// avenrun[0..3] in fixed point.
    pub avenrun: [u64; 3],
    /// CLOCK_BOOTTIME of the last period folded in, ns.
    pub at_ns: u64,
}

impl LoadAvg {
    /// Folds in the periods elapsed up to `now_ns` with `active` runnable + uninterruptible
    /// threads; returns whether a period was folded.
    pub fn sample(&mut self, now_ns: u64, active: u64) -> bool {
        if self.at_ns == 0 {
            self.at_ns = now_ns;
        }
        let periods = now_ns.saturating_sub(self.at_ns) / LOAD_FREQ_NS;
        if periods == 0 {
            return false;
        }
        // A very long gap decays to the current count; cap the exponent's work.
        let n = periods.min(100_000);
        let active = active.min(1 << 20) * FIXED_1;
        for (i, exp) in [EXP_1, EXP_5, EXP_15].into_iter().enumerate() {
            self.avenrun[i] = calc_load_n(self.avenrun[i], exp, active, n);
        }
        self.at_ns += periods * LOAD_FREQ_NS;
        true
    }

    /// `"%lu.%02lu"` of each average, as `/proc/loadavg` prints them (`fs/proc/loadavg.c`).
    pub fn formatted(&self) -> [String; 3] {
        self.avenrun.map(|a| {
            let a = a + FIXED_1 / 200;
            format!("{}.{:02}", a >> FSHIFT, ((a & (FIXED_1 - 1)) * 100) >> FSHIFT)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_sequences() {
        // One always-runnable task from 0: the kernel's 1-minute load after 12 periods (60 s).
        let mut l = 0;
        let mut seq = Vec::new();
        for _ in 0..12 {
            l = calc_load(l, EXP_1, FIXED_1);
            seq.push(l);
        }
        assert_eq!(&seq[..4], &[164, 315, 454, 582]);
        // exp(-1) of the way: 1 - 1/e = 0.632 -> 1294/2048 within rounding.
        assert!((1290..=1300).contains(&seq[11]), "{}", seq[11]);
        // Falling truncates: from 1.00 with no load.
        assert_eq!(calc_load(FIXED_1, EXP_1, 0), 1884);
        // n periods at once equal n single steps to within the kernel's rounding.
        let mut a = 1000;
        for _ in 0..5 {
            a = calc_load(a, EXP_5, 3 * FIXED_1);
        }
        let b = calc_load_n(1000, EXP_5, 3 * FIXED_1, 5);
        assert!(a.abs_diff(b) <= 4, "{a} {b}");
        assert_eq!(fixed_power_int(EXP_1, FSHIFT, 0), FIXED_1);
        assert_eq!(fixed_power_int(EXP_1, FSHIFT, 1), EXP_1);
    }

    #[test]
    fn display_rounds_like_the_kernel() {
        let l = LoadAvg { avenrun: [0, FIXED_1, 2 * FIXED_1 + 1023], at_ns: 0 };
        assert_eq!(l.formatted(), ["0.00".to_string(), "1.00".to_string(), "2.50".to_string()]);
    }

    #[test]
    fn periods_fold_on_five_second_boundaries() {
        let mut l = LoadAvg::default();
        assert!(!l.sample(1, 2));
        assert!(!l.sample(4_000_000_000, 2));
        assert!(l.sample(5_000_000_001, 2));
        assert_eq!(l.avenrun[0], calc_load(0, EXP_1, 2 * FIXED_1));
        assert!(l.sample(20_000_000_001, 2)); // three periods at once
        assert_eq!(l.at_ns, 20_000_000_001);
    }
}
