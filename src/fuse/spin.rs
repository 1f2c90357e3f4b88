//! Whether a worker keeps polling for the next request after a reply, and for how long.
//!
//! Polling saves the wake-up of a sleeping worker thread, which costs more than a request on
//! hosts whose idle CPUs sleep deeply (measured 169 µs against 45 µs per read on one virtual
//! machine). On others it costs: the reader, woken from another CPU, pays a cross-CPU wake-up
//! for every reply, and the poller's CPU is no longer free for the reader (measured on another
//! virtual machine: 49 µs polling against 23 µs sleeping). Neither is known in advance, so
//! each connection measures it: the gap between a reply and the next request, while requests
//! come back to back, is the part of a reader's cycle the worker's strategy changes. The
//! connection measures both strategies, keeps the one with the shorter gap, and measures the
//! other again now and then ([`Trial`]).

use parking_lot::Mutex;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Gaps longer than this are a pause between bursts, not a reader waiting: not measured.
const BUSY_GAP: Duration = Duration::from_millis(1);

/// One measuring window: this many back-to-back requests.
const WINDOW: u32 = 256;

/// The better strategy is kept for this many windows before the other is measured again.
const HOLD: u32 = 32;

/// A worker's strategy between a reply and the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Poll for up to the spin budget, then sleep.
    Spin,
    /// Sleep in a blocking read at once.
    Block,
}

/// The choice between the two strategies from measured gaps.
#[derive(Debug)]
pub struct Trial {
    mode: Mode,
    /// Mean gap last measured under each mode, ns: `[Spin, Block]`.
    means: [Option<u64>; 2],
    sum: u64,
    n: u32,
    windows: u32,
}

impl Default for Trial {
    fn default() -> Self {
        Trial { mode: Mode::Spin, means: [None, None], sum: 0, n: 0, windows: 0 }
    }
}

impl Trial {
    /// The mode in use.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Counts one reply-to-request gap; returns the mode to use from now on.
    pub fn gap(&mut self, gap: Duration) -> Mode {
        if gap >= BUSY_GAP {
            return self.mode;
        }
        self.sum += gap.as_nanos() as u64;
        self.n += 1;
        if self.n < WINDOW {
            return self.mode;
        }
        self.means[self.mode as usize] = Some(self.sum / u64::from(self.n));
        (self.sum, self.n) = (0, 0);
        self.windows = self.windows.wrapping_add(1);
        self.mode = match self.means {
            [None, _] => Mode::Spin,
            [_, None] => Mode::Block,
            [Some(spin), Some(block)] => {
                // Spinning costs a CPU while it lasts: it must win clearly (by a tenth).
                let best = if spin * 10 < block * 9 { Mode::Spin } else { Mode::Block };
                match self.windows % (HOLD + 1) == 0 {
                    true => best.other(),
                    false => best,
                }
            }
        };
        self.mode
    }
}

impl Mode {
    fn other(self) -> Mode {
        match self {
            Mode::Spin => Mode::Block,
            Mode::Block => Mode::Spin,
        }
    }
}

/// The measurement one connection's workers share.
#[derive(Default)]
pub struct Tuner {
    trial: Mutex<Trial>,
    blocking: AtomicBool,
    /// When the last reply was written, ns (`now_ns`).
    last_reply: AtomicU64,
}

fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl Tuner {
    fn replied(&self) {
        self.last_reply.store(now_ns(), Ordering::Relaxed);
    }

    /// A request arrived: measure its gap; true when workers should poll after replying.
    fn arrived(&self) -> bool {
        let gap = Duration::from_nanos(now_ns().saturating_sub(self.last_reply.load(Ordering::Relaxed)));
        if gap < BUSY_GAP {
            let mode = self.trial.lock().gap(gap);
            self.blocking.store(mode == Mode::Block, Ordering::Relaxed);
        }
        !self.blocking.load(Ordering::Relaxed)
    }
}

/// Set while a worker is polling, so the others sleep instead of contending for the queue.
static POLLING: AtomicBool = AtomicBool::new(false);

/// One worker thread's side: its fd's blocking mode and its polling budget, twice the recent
/// gap between a reply and the next request within 4 µs..`--spin-us`. A reader that stops
/// after its last request (an agent's burst ends) then costs a few µs of polling, not the
/// whole `--spin-us`.
pub struct Spin<'t> {
    fd: RawFd,
    max: Duration,
    budget: Duration,
    /// Moving average of the short gaps, ns.
    gap_ns: u64,
    nonblocking: bool,
    tuner: &'t Tuner,
    last: Instant,
}

impl<'t> Spin<'t> {
    const MIN: Duration = Duration::from_micros(4);

    /// Polling for at most `max` on `fd` (never when `max` is 0), which starts in the mode
    /// that needs: set either way, as a previous worker may have left the shared description
    /// non-blocking.
    pub fn new(fd: RawFd, max: Duration, tuner: &'t Tuner) -> Spin<'t> {
        let mut s = Spin {
            fd,
            max,
            budget: max,
            gap_ns: max.as_nanos() as u64 / 2,
            nonblocking: max.is_zero(),
            tuner,
            last: Instant::now(),
        };
        s.set_nonblocking(!max.is_zero());
        s
    }

    /// Nothing was queued (`EAGAIN`): polls ~2 µs more while within the budget and no other
    /// thread polls, else makes the next read block.
    pub fn idle(&mut self) {
        if self.last.elapsed() < self.budget && !POLLING.swap(true, Ordering::Acquire) {
            // Re-reading every ~2 µs: each read takes the queue's lock, which the kernel also
            // needs to queue the next request.
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(2) {
                std::hint::spin_loop();
            }
            POLLING.store(false, Ordering::Release);
        } else {
            self.set_nonblocking(false);
        }
    }

    /// A request arrived: decides how the next read waits.
    pub fn arrived(&mut self) {
        if self.max.is_zero() {
            return;
        }
        let gap = self.last.elapsed();
        let poll = self.tuner.arrived();
        self.set_nonblocking(poll);
        if gap >= self.max {
            return;
        }
        self.gap_ns = (self.gap_ns * 7 + gap.as_nanos() as u64) / 8;
        self.budget = Duration::from_nanos(self.gap_ns * 2).clamp(Self::MIN, self.max.max(Self::MIN));
    }

    /// The reply is written.
    pub fn replied(&mut self) {
        // Without polling (the default) nothing reads the time: no clock on the read path.
        if self.max.is_zero() {
            return;
        }
        self.last = Instant::now();
        self.tuner.replied();
    }

    fn set_nonblocking(&mut self, on: bool) {
        if self.nonblocking == on {
            return;
        }
        // SAFETY: fcntl on an fd this thread serves.
        unsafe {
            let fl = libc::fcntl(self.fd, libc::F_GETFL);
            libc::fcntl(self.fd, libc::F_SETFL, if on { fl | libc::O_NONBLOCK } else { fl & !libc::O_NONBLOCK });
        }
        self.nonblocking = on;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` windows on a host whose gap under each mode is `host(mode)` µs; returns how
    /// many windows ran under each mode, `[Spin, Block]`.
    fn run(t: &mut Trial, host: impl Fn(Mode) -> u64, n: u32) -> [u32; 2] {
        let mut under = [0; 2];
        for _ in 0..n {
            under[t.mode() as usize] += 1;
            for _ in 0..WINDOW {
                t.gap(Duration::from_micros(host(t.mode())));
            }
        }
        under
    }

    #[test]
    fn keeps_the_strategy_with_the_shorter_gap_and_measures_the_other_again() {
        let mut t = Trial::default();
        assert_eq!(t.mode(), Mode::Spin);
        // A host where sleeping is faster: after one window of each, it sleeps, and spins
        // again only once per hold to measure.
        let sleep_wins = |m| if m == Mode::Spin { 40 } else { 20 };
        let [spun, slept] = run(&mut t, sleep_wins, 2 + 3 * (HOLD + 1));
        assert_eq!(spun, 1 + 3, "{spun} {slept}");
        assert_eq!(t.mode(), Mode::Block);
        // The host changes (another machine, another load): spinning takes over.
        let spin_wins = |m| if m == Mode::Spin { 10 } else { 20 };
        run(&mut t, spin_wins, HOLD + 1);
        assert_eq!(t.mode(), Mode::Spin);
        let [spun, slept] = run(&mut t, spin_wins, 3 * (HOLD + 1));
        assert_eq!(slept, 3, "{spun} {slept}");
    }

    #[test]
    fn spinning_must_win_clearly_and_pauses_are_not_measured() {
        let mut t = Trial::default();
        // 19 against 20 µs: not by a tenth, so sleeping.
        run(&mut t, |m| if m == Mode::Spin { 19 } else { 20 }, 2);
        assert_eq!(t.mode(), Mode::Block);
        // Pauses between bursts (an agent's second) change nothing.
        for _ in 0..10 * WINDOW {
            assert_eq!(t.gap(Duration::from_millis(900)), Mode::Block);
        }
        assert_eq!(t.n, 0);
    }
}
