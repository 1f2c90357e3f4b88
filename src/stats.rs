//! What the daemon counts about itself, for `cgprocfs status` and the metrics file: requests
//! and their latency per served file, answers with the host's file by file and reason, the
//! slowest recent requests, seccomp answers. Counting is a few relaxed atomic additions per
//! request; nothing here allocates on the read path unless a request is among the slowest.

use crate::catalog::Served;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Upper bounds of the latency buckets, µs (the last bucket is everything above).
pub const BUCKETS_US: [u64; 10] = [10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

/// Why a request was answered with the host's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The caller's container could not be found (vanished process, pid 0).
    Caller,
    /// A cgroup or host file could not be read.
    Io,
    /// A file's content was not what the kernel writes there.
    Malformed,
    /// No hierarchy of a needed controller is mounted.
    NoMount,
    /// The container's cgroup vanished while it was read.
    Gone,
}

impl Reason {
    /// Every reason, in the order of the counters.
    pub const ALL: [Reason; 5] = [Reason::Caller, Reason::Io, Reason::Malformed, Reason::NoMount, Reason::Gone];

    /// Its name in the metrics and the status.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Caller => "caller",
            Reason::Io => "io",
            Reason::Malformed => "malformed",
            Reason::NoMount => "no_mount",
            Reason::Gone => "gone",
        }
    }

    /// The reason of a request whose container was resolved (`resolved`) or not, failing with `e`.
    pub fn of(e: &crate::Error, resolved: bool) -> Reason {
        match e {
            _ if !resolved => Reason::Caller,
            crate::Error::Io { .. } => Reason::Io,
            crate::Error::Malformed { .. } => Reason::Malformed,
            crate::Error::Caller { .. } => Reason::Caller,
            crate::Error::NoMount(_) => Reason::NoMount,
            crate::Error::Gone(_) => Reason::Gone,
        }
    }
}

/// Rows of the per-file counters: every served file and the bench floor.
const FILES: usize = Served::ALL.len() + 1;

/// A file's row: the catalog declares `Served::ALL` in the order of the variants, the bench floor
/// last (its test checks it), so the variant's number is the row — no search per request.
fn row(v: Served) -> usize {
    (v as usize).min(FILES - 1)
}

/// One slow request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slow {
    /// How long it took, µs.
    pub us: u64,
    /// The file.
    pub file: String,
    /// The container (its first cgroup path), or why it had none.
    pub container: String,
    /// When, seconds since the epoch.
    pub at: u64,
}

/// How many slow requests are kept, and for how long.
const SLOW_KEPT: usize = 10;
const SLOW_FOR: Duration = Duration::from_secs(300);

/// The counters of one worker.
pub struct Stats {
    requests: [AtomicU64; FILES],
    latency: [[AtomicU64; BUCKETS_US.len() + 1]; FILES],
    latency_sum_us: [AtomicU64; FILES],
    fallbacks: [[AtomicU64; Reason::ALL.len()]; FILES],
    slow: Mutex<Vec<Slow>>,
    /// The smallest latency of a full slow list: requests faster than it take no lock.
    slow_floor_us: AtomicU64,
    /// Seccomp notifications answered with the container's numbers.
    pub seccomp_answered: AtomicU64,
    /// Seccomp notifications passed on to the kernel (the real call runs).
    pub seccomp_continued: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency_sum_us: std::array::from_fn(|_| AtomicU64::new(0)),
            fallbacks: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            slow: Mutex::new(Vec::new()),
            slow_floor_us: AtomicU64::new(0),
            seccomp_answered: AtomicU64::new(0),
            seccomp_continued: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Counts one request of `view` that took `took`; `container` names it for the slow list
    /// (called only when the request is among the slowest).
    pub fn request(&self, view: Served, took: Duration, container: impl FnOnce() -> String) {
        let r = row(view);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.requests[r].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us[r].fetch_add(us, Ordering::Relaxed);
        let b = BUCKETS_US.iter().position(|&up| us <= up).unwrap_or(BUCKETS_US.len());
        self.latency[r][b].fetch_add(1, Ordering::Relaxed);
        if us > self.slow_floor_us.load(Ordering::Relaxed) {
            self.slow(Slow { us, file: view.path().to_string(), container: container(), at: now_secs() });
        }
    }

    fn slow(&self, s: Slow) {
        let mut list = self.slow.lock();
        let oldest = now_secs().saturating_sub(SLOW_FOR.as_secs());
        list.retain(|x| x.at >= oldest);
        list.push(s);
        list.sort_by_key(|x| std::cmp::Reverse(x.us));
        list.truncate(SLOW_KEPT);
        let floor = if list.len() == SLOW_KEPT { list.last().map_or(0, |x| x.us) } else { 0 };
        self.slow_floor_us.store(floor, Ordering::Relaxed);
    }

    /// Counts one answer of `view` with the host's file, for `reason`.
    pub fn fallback(&self, view: Served, reason: Reason) {
        let k = Reason::ALL.iter().position(|x| *x == reason).unwrap_or(0);
        self.fallbacks[row(view)][k].fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the counters now.
    pub fn snapshot(&self) -> Snapshot {
        let rows = Served::ALL.iter().copied().chain([Served::Floor]);
        let files = rows
            .enumerate()
            // The bench floor only where it is served.
            .filter(|(r, v)| *v != Served::Floor || self.requests[*r].load(Ordering::Relaxed) > 0)
            .map(|(r, v)| FileStats {
                file: v.path().to_string(),
                requests: self.requests[r].load(Ordering::Relaxed),
                latency_buckets: self.latency[r].iter().map(|b| b.load(Ordering::Relaxed)).collect(),
                latency_sum_us: self.latency_sum_us[r].load(Ordering::Relaxed),
                fallbacks: Reason::ALL
                    .iter()
                    .zip(&self.fallbacks[r])
                    .map(|(why, n)| (why.name().to_string(), n.load(Ordering::Relaxed)))
                    .filter(|(_, n)| *n > 0)
                    .collect(),
            })
            .collect();
        Snapshot {
            files,
            slowest: self.slow.lock().clone(),
            seccomp_answered: self.seccomp_answered.load(Ordering::Relaxed),
            seccomp_continued: self.seccomp_continued.load(Ordering::Relaxed),
            ..Snapshot::default()
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The counters of one served file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStats {
    /// Its path under the mount point.
    pub file: String,
    /// Requests rendered.
    pub requests: u64,
    /// Requests per latency bucket ([`BUCKETS_US`], then everything above).
    pub latency_buckets: Vec<u64>,
    /// Sum of the latencies, µs.
    pub latency_sum_us: u64,
    /// Answers with the host's file, by reason.
    pub fallbacks: Vec<(String, u64)>,
}

impl FileStats {
    /// The bucket bound (µs) under which fraction `q` of the requests finished; `None` without
    /// requests, `u64::MAX` when it is in the open last bucket.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.latency_buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(BUCKETS_US.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

/// Open handles of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleUse {
    /// The container (its first cgroup path).
    pub container: String,
    /// Handles it holds open.
    pub handles: usize,
    /// Rendered bytes kept for them.
    pub bytes: usize,
}

/// Everything the worker reports, written beside the pid file every few seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was taken, seconds since the epoch.
    pub at: u64,
    /// The worker's pid.
    pub pid: u32,
    /// When the worker started, seconds since the epoch.
    pub started: u64,
    /// Per served file.
    pub files: Vec<FileStats>,
    /// The slowest requests of the last five minutes.
    pub slowest: Vec<Slow>,
    /// Open handles by container, most first.
    pub handles: Vec<HandleUse>,
    /// Containers whose seccomp notifications the worker answers.
    pub seccomp_containers: usize,
    /// Seccomp notifications answered with the container's numbers.
    pub seccomp_answered: u64,
    /// Seccomp notifications passed on to the kernel.
    pub seccomp_continued: u64,
}

/// What the keeper knows of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keeper {
    /// This build's version.
    pub version: String,
    /// The mount point served.
    pub mountpoint: String,
    /// The keeper's pid.
    pub pid: u32,
    /// When it started (or adopted the connection), seconds since the epoch.
    pub started: u64,
    /// Worker threads, one `/dev/fuse` fd each.
    pub threads: usize,
    /// The cached tree's mount point, when it serves one.
    pub cache: Option<String>,
    /// The trigger connection's mount point (PSI triggers), when it serves one.
    #[serde(default)]
    pub psi: Option<String>,
    /// The seccomp listener socket, when it listens.
    pub seccomp_socket: Option<String>,
    /// Workers started after the first (crashes, upgrades' new workers, handovers resumed).
    pub restarts: u64,
    /// Times the connection was handed on (upgrade, handover, service manager) since mounted.
    pub handovers: u64,
    /// The worker's pid, when one runs.
    pub worker: Option<u32>,
}

/// `cgprocfs status`: the keeper's facts and its worker's latest counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The keeper.
    pub keeper: Keeper,
    /// The worker's counters, as written last (none yet right after a start).
    pub worker: Option<Snapshot>,
}

/// The counters in the Prometheus text exposition format (version 0.0.4).
pub fn prometheus(snap: &Snapshot, keeper: &Keeper) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP cgprocfs_{name} {help}\n# TYPE cgprocfs_{name} {kind}");
    };
    family(&mut o, "requests_total", "counter", "Requests rendered, per served file.");
    for f in &snap.files {
        let _ = writeln!(o, "cgprocfs_requests_total{{file=\"{}\"}} {}", f.file, f.requests);
    }
    family(&mut o, "request_duration_seconds", "histogram", "Time to render a served file for a reader.");
    for f in &snap.files {
        let mut cumulative = 0;
        for (i, n) in f.latency_buckets.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS_US.get(i).map_or("+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
            let _ =
                writeln!(o, "cgprocfs_request_duration_seconds_bucket{{file=\"{}\",le=\"{le}\"}} {cumulative}", f.file);
        }
        let _ = writeln!(
            o,
            "cgprocfs_request_duration_seconds_sum{{file=\"{}\"}} {}",
            f.file,
            f.latency_sum_us as f64 / 1e6
        );
        let _ = writeln!(o, "cgprocfs_request_duration_seconds_count{{file=\"{}\"}} {cumulative}", f.file);
    }
    family(&mut o, "fallbacks_total", "counter", "Requests answered with the host's file, by file and reason.");
    for f in &snap.files {
        for (why, n) in &f.fallbacks {
            let _ = writeln!(o, "cgprocfs_fallbacks_total{{file=\"{}\",reason=\"{why}\"}} {n}", f.file);
        }
    }
    family(&mut o, "open_handles", "gauge", "Open handles of all containers.");
    let _ = writeln!(o, "cgprocfs_open_handles {}", snap.handles.iter().map(|h| h.handles).sum::<usize>());
    family(&mut o, "seccomp_containers", "gauge", "Containers whose seccomp notifications are answered.");
    let _ = writeln!(o, "cgprocfs_seccomp_containers {}", snap.seccomp_containers);
    family(&mut o, "seccomp_answers_total", "counter", "Seccomp notifications, answered or run for real.");
    let _ = writeln!(o, "cgprocfs_seccomp_answers_total{{answer=\"answered\"}} {}", snap.seccomp_answered);
    let _ = writeln!(o, "cgprocfs_seccomp_answers_total{{answer=\"continued\"}} {}", snap.seccomp_continued);
    family(&mut o, "worker_restarts_total", "counter", "Workers started after the first.");
    let _ = writeln!(o, "cgprocfs_worker_restarts_total {}", keeper.restarts);
    family(&mut o, "handovers_total", "counter", "Times the connection was handed on since it was mounted.");
    let _ = writeln!(o, "cgprocfs_handovers_total {}", keeper.handovers);
    family(&mut o, "keeper_start_time_seconds", "gauge", "When the keeper started, seconds since the epoch.");
    let _ = writeln!(o, "cgprocfs_keeper_start_time_seconds {}", keeper.started);
    family(&mut o, "worker_start_time_seconds", "gauge", "When the worker started, seconds since the epoch.");
    let _ = writeln!(o, "cgprocfs_worker_start_time_seconds {}", snap.started);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_buckets_and_the_slowest_are_kept() {
        let s = Stats::default();
        s.request(Served::Meminfo, Duration::from_micros(7), || "a".into());
        s.request(Served::Meminfo, Duration::from_micros(300), || "b".into());
        s.request(Served::Stat, Duration::from_millis(20), || "c".into());
        s.fallback(Served::Stat, Reason::Io);
        let snap = s.snapshot();
        let mem = snap.files.iter().find(|f| f.file == "proc/meminfo").unwrap();
        assert_eq!(mem.requests, 2);
        assert_eq!(mem.latency_buckets[0], 1);
        assert_eq!(mem.latency_buckets[5], 1, "300 µs is in the 500 µs bucket");
        assert_eq!(mem.quantile_us(0.5), Some(10));
        assert_eq!(mem.quantile_us(0.99), Some(500));
        let stat = snap.files.iter().find(|f| f.file == "proc/stat").unwrap();
        assert_eq!(stat.quantile_us(0.5), Some(u64::MAX), "20 ms is above the last bound");
        assert_eq!(stat.fallbacks, vec![("io".to_string(), 1)]);
        assert_eq!(snap.slowest.first().map(|x| x.container.as_str()), Some("c"));
        for i in 0..30 {
            s.request(Served::Uptime, Duration::from_micros(1000 + i), || format!("u{i}"));
        }
        let snap = s.snapshot();
        assert_eq!(snap.slowest.len(), SLOW_KEPT);
        assert!(snap.slowest.windows(2).all(|w| w[0].us >= w[1].us));
    }
}
