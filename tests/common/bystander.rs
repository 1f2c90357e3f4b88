//! A bystander: a process in a cgroup of its own that reads files in a loop and times every
//! read, so an attack test can say what the attack cost someone else (p99 latency during the
//! attack against the same process's baseline in the same run), not only that it failed.

use super::TestCgroup;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

/// Reads each file named on the command line in turn (open, read, close), writing
/// `START_SECONDS FILE_INDEX MICROSECONDS OK` per read (CLOCK_MONOTONIC, as [`now`]), with a
/// short pause between rounds so it measures rather than loads the machine.
const SCRIPT: &str = r#"
import os, signal, sys, time
out, files = sys.argv[1], sys.argv[2:]
f = open(out, "w", buffering=1 << 16)
def stop(*_):
    f.flush(); os._exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    for i, p in enumerate(files):
        t0 = time.monotonic()
        try:
            fd = os.open(p, os.O_RDONLY)
            n = len(os.read(fd, 1 << 16))
            os.close(fd)
            ok = n > 0
        except OSError:
            ok = False
        f.write("%.6f %d %.1f %d\n" % (t0, i, (time.monotonic() - t0) * 1e6, ok))
    time.sleep(0.0005)
"#;

/// One timed read.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it started (seconds, CLOCK_MONOTONIC).
    pub at: f64,
    /// Which file (index into the files given).
    pub file: usize,
    /// How long it took, µs.
    pub us: f64,
    /// Whether it read something.
    pub ok: bool,
}

/// A running bystander; stopped (and its output removed) on drop.
pub struct Bystander {
    child: Option<Child>,
    out: PathBuf,
    script: PathBuf,
}

/// Now on CLOCK_MONOTONIC, in seconds: the bystander's clock.
pub fn now() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

impl Bystander {
    /// Starts reading `files` in cgroup `cg`, writing its samples under `dir`.
    pub fn start(cg: &TestCgroup, dir: &Path, files: &[&Path]) -> Bystander {
        let script = dir.join("bystander.py");
        let out = dir.join("bystander.out");
        std::fs::write(&script, SCRIPT).unwrap();
        let list: Vec<String> = files.iter().map(|f| format!("'{}'", f.display())).collect();
        let child = cg
            .command(&format!("python3 '{}' '{}' {}", script.display(), out.display(), list.join(" ")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Bystander { child: Some(child), out, script }
    }

    /// Stops it and returns every sample.
    pub fn stop(&mut self) -> Vec<Sample> {
        if let Some(mut c) = self.child.take() {
            super::stop_child(&mut c, Duration::from_secs(10));
        }
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                Some(Sample {
                    at: f.next()?.parse().ok()?,
                    file: f.next()?.parse().ok()?,
                    us: f.next()?.parse().ok()?,
                    ok: f.next()? == "1",
                })
            })
            .collect()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.script);
    }
}

/// What the reads of one file within a time span came to.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub reads: usize,
    pub failed: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// The reads of file `file` that started within `[from, to)`.
pub fn span(samples: &[Sample], file: usize, from: f64, to: f64) -> Span {
    let mut us: Vec<f64> =
        samples.iter().filter(|s| s.file == file && s.at >= from && s.at < to).map(|s| s.us).collect();
    let failed = samples.iter().filter(|s| s.file == file && s.at >= from && s.at < to && !s.ok).count();
    us.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| us.get(((us.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    Span { reads: us.len(), failed, p50_us: q(0.5), p99_us: q(0.99), max_us: us.last().copied().unwrap_or(f64::NAN) }
}

/// How much a bystander's p99 may grow during an attack over its baseline in the same run:
/// a few ms, the scheduling noise of a loaded two-core machine, far below the stalls the
/// attacks caused (tens to hundreds of ms).
pub const P99_SLACK_US: f64 = 5000.0;

/// Fails unless file `file`'s reads during `[from, to)` kept their p99 within
/// [`P99_SLACK_US`] of the baseline `[base_from, base_to)`, with enough reads in both and none
/// failed.
pub fn assert_unharmed(samples: &[Sample], file: usize, name: &str, base: (f64, f64), attack: (f64, f64)) {
    let b = span(samples, file, base.0, base.1);
    let a = span(samples, file, attack.0, attack.1);
    eprintln!("bystander {name}: baseline {b:?}, during the attack {a:?}");
    assert!(b.reads >= 100, "bystander {name}: too few baseline reads to measure: {b:?}");
    assert!(
        a.reads as f64 >= 0.25 * b.reads as f64 * (attack.1 - attack.0) / (base.1 - base.0),
        "bystander {name}: it read far less often during the attack: {a:?} (baseline {b:?})"
    );
    assert_eq!(a.failed + b.failed, 0, "bystander {name}: failed reads (baseline {b:?}, attack {a:?})");
    assert!(
        a.p99_us <= b.p99_us + P99_SLACK_US,
        "bystander {name}: p99 {:.0} µs during the attack against {:.0} µs before (max {:.0} µs)",
        a.p99_us,
        b.p99_us,
        a.max_us
    );
}
