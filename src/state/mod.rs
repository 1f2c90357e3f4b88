//! What must persist between reads: each container's CPU account (for `/proc/stat` and
//! `/proc/uptime`) and load averages (`/proc/loadavg`). Kept in memory, written to a state file
//! every sampling period and read back when a worker starts, so neither a worker restart nor an
//! upgrade moves a counter backwards. Without a state file (`cgprocfs show`, or a lost file),
//! the CPU account is rebuilt from the kernel's cumulative counters.

pub mod cpu;
pub mod delay;
pub mod load;

use crate::cgroup::cpuacct::CpuUsage;
use crate::cgroup::tasks::{self, TaskCounts};
use crate::cgroup::{Cgroups, Container};
use crate::Root;
use cpu::{CpuAccount, VCpu};
use delay::DelayTracker;
use load::LoadAvg;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Containers not read for this long are forgotten (their cgroup is usually gone).
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Containers tracked at most; the least recently read are dropped beyond it.
const MAX_CONTAINERS: usize = 100_000;
/// CPU records a starting worker loads at most (the newest); older ones are deleted.
const MAX_LOADED: usize = 20_000;
/// Run delays are sampled for containers whose CPU files were read this recently.
const DELAY_ACTIVE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Entry {
    cpu: Option<CpuAccount>,
    load: LoadAvg,
    tasks: Option<TaskCounts>,
    /// When `tasks` was sampled (CLOCK_BOOTTIME ns): the load averages and task counts change
    /// only at a sampling pass.
    tasks_at_ns: u64,
    tracked: Option<Container>,
    last_read: Instant,
    /// The threads' folded run delay; sampled while the CPU files are read.
    delay: DelayTracker,
    /// When `/proc/stat` or `/proc/uptime` was last read.
    cpu_read: Option<Instant>,
    /// Bytes of the last CPU record written (a shorter one is padded over it).
    record_len: usize,
}

impl Entry {
    fn new() -> Self {
        Entry {
            cpu: None,
            load: LoadAvg::default(),
            tasks: None,
            tasks_at_ns: 0,
            tracked: None,
            last_read: Instant::now(),
            delay: DelayTracker::default(),
            cpu_read: None,
            record_len: 0,
        }
    }
}

type Shared = Arc<Mutex<Entry>>;

/// Per-container state, keyed by [`key`]. The map's lock is held only to find an entry; each
/// container's own lock covers its account and the record written before a read is answered,
/// so containers never wait for each other's records.
pub struct Store {
    map: Mutex<HashMap<String, Shared>>,
    file: Option<PathBuf>,
    /// The directory of CPU records beside `file` ([`accounts_dir`]).
    records: Option<PathBuf>,
}

/// The state key of a container: the cgroup directory its CPU time is accounted in, with that
/// directory's inode, so a cgroup recreated under the same name starts afresh.
pub fn key(cg: &Cgroups) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let d = cg.cpu_accounting()?;
    let ino = crate::cgroup::held::metadata(&d.path).ok()?.ino();
    let path: String = d.path.to_string_lossy().chars().map(|c| if c.is_whitespace() { '_' } else { c }).collect();
    Some(format!("{ino}:{path}"))
}

/// Whether the cgroup of key `k` is gone: its directory missing or another one (inode).
fn gone(k: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((ino, path)) = k.split_once(':') else { return true };
    match crate::cgroup::held::metadata(std::path::Path::new(path)) {
        Ok(m) => ino.parse::<u64>().ok() != Some(m.ino()),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

impl Store {
    /// A store persisted to `file` (read now if it exists). Records of cgroups that are gone
    /// are deleted, and at most [`MAX_LOADED`] of the newest records are loaded.
    pub fn new(file: Option<PathBuf>) -> Self {
        let mut map: HashMap<String, Entry> = HashMap::new();
        if let Some(f) = &file {
            if let Ok(text) = std::fs::read_to_string(f) {
                map = parse(&text);
                map.retain(|k, _| !gone(k));
            }
            // The per-container records written at every read are newer than the periodic file.
            let dir = accounts_dir(f);
            let mut records: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&dir)
                .map(|rd| rd.flatten().filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path()))).collect())
                .unwrap_or_default();
            records.sort_by_key(|r| std::cmp::Reverse(r.0));
            for (n, (_, path)) in records.into_iter().enumerate() {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let parsed = parse(&format!("{HEADER}{text}"));
                let live: Vec<_> = parsed.into_iter().filter(|(k, _)| !gone(k)).collect();
                if live.is_empty() || n >= MAX_LOADED {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                for (k, v) in live {
                    if let Some(cpu) = v.cpu {
                        map.entry(k).or_insert_with(Entry::new).cpu = Some(cpu);
                    }
                }
            }
            tracing::info!(containers = map.len(), file = %f.display(), "state loaded");
            if let Err(e) = crate::files::private_dir(&dir, 0o700) {
                tracing::warn!(error = %e, "CPU records are not kept");
            }
        }
        let map = map.into_iter().map(|(k, e)| (k, Arc::new(Mutex::new(e)))).collect();
        let records = file.as_deref().map(accounts_dir);
        Store { map: Mutex::new(map), file, records }
    }

    /// The entry of `k`, created if new (the least recently read is dropped beyond
    /// [`MAX_CONTAINERS`]).
    fn entry(&self, k: &str) -> Shared {
        let mut map = self.map.lock();
        if let Some(e) = map.get(k) {
            return e.clone();
        }
        if map.len() >= MAX_CONTAINERS {
            if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.lock().last_read).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.entry(k.to_string()).or_insert_with(|| Arc::new(Mutex::new(Entry::new()))).clone()
    }

    /// Advances the CPU account of container `t` (key `k`) with the kernel's counters `usage`
    /// and its threads' run delay, and returns its visible vCPUs (the first `n`) and the
    /// aggregate over all it has had. Registers the container with the run-delay sampler.
    pub fn cpu(
        &self,
        k: &str,
        t: &Container,
        now_ns: u64,
        age_ns: u64,
        usage: CpuUsage,
        n: usize,
    ) -> (Vec<VCpu>, VCpu) {
        let shared = self.entry(k);
        let mut guard = shared.lock();
        let e = &mut *guard;
        e.last_read = Instant::now();
        e.cpu_read = Some(e.last_read);
        if e.tracked.is_none() {
            e.tracked = Some(t.clone());
        }
        let last_delay = e.cpu.as_ref().map_or(0, |a| a.last.delay_ns);
        let usage = CpuUsage { delay_ns: e.delay.estimate(now_ns).unwrap_or(last_delay), ..usage };
        let acc = match &mut e.cpu {
            Some(a) => {
                a.advance(now_ns, usage, n);
                a
            }
            None => e.cpu.insert(CpuAccount::new(now_ns, age_ns, usage, n)),
        };
        let out = (acc.vcpus[..n.max(1).min(acc.vcpus.len())].to_vec(), acc.total());
        // Record what is about to be shown before showing it (under this container's lock, so
        // its records are written in order): a worker that dies after this read restarts
        // from exactly these counters and can only move them forward.
        if let Some(dir) = &self.records {
            let line = cpu_line(k, acc);
            match write_record(&dir.join(record_name(k)), &line, e.record_len) {
                Ok(len) => e.record_len = len,
                Err(err) => {
                    // The directory may be missing (first use, or removed): create it once more.
                    let _ = crate::files::private_dir(dir, 0o700);
                    tracing::debug!(error = %err, "cannot record the CPU account");
                }
            }
        }
        out
    }

    /// The load average and task counts of container `k`, and when they were sampled
    /// (CLOCK_BOOTTIME ns), registering it with the sampler. A container never sampled is
    /// sampled now.
    pub fn load(&self, root: &Root, k: &str, t: Container, now_ns: u64) -> (LoadAvg, TaskCounts, u64) {
        let shared = self.entry(k);
        {
            let mut e = shared.lock();
            e.last_read = Instant::now();
            e.tracked = Some(t.clone());
            if let Some(c) = e.tasks {
                return (e.load, c, e.tasks_at_ns);
            }
        }
        let c = count(root, &t);
        let mut e = shared.lock();
        e.load.sample(now_ns, c.running + c.blocked);
        e.tasks = Some(c);
        e.tasks_at_ns = now_ns;
        (e.load, c, now_ns)
    }

    /// Samples the run delay of every container whose CPU files were read in the last
    /// [`DELAY_ACTIVE`] (the sampler's 1-second tick): at most [`tasks::MAX_SAMPLED`] threads
    /// each, so the pass costs at most that many small reads per container.
    pub fn sample_delays(&self, root: &Root, now_ns: u64) {
        let all: Vec<Shared> = self.map.lock().values().cloned().collect();
        for shared in all {
            let tracked = {
                let e = shared.lock();
                match (e.cpu_read, &e.tracked) {
                    (Some(r), Some(t)) if r.elapsed() < DELAY_ACTIVE => t.clone(),
                    _ => continue,
                }
            };
            let Some(dir) = thread_dir(&tracked) else { continue };
            let (sampled, total) = tasks::run_delays(root, dir, tasks::MAX_SAMPLED);
            let mut e = shared.lock();
            let base = e.cpu.as_ref().map_or(0, |a| a.last.delay_ns);
            e.delay.fold(now_ns, &sampled, total, base);
        }
    }

    /// One sampling pass over every registered container (the kernel's 5-second tick), then
    /// forgets containers that are gone or idle (and their records) and saves the state file.
    pub fn sample_all(&self, root: &Root, now_ns: u64) {
        let mut changed = false;
        let all: Vec<(String, Shared)> = self.map.lock().iter().map(|(k, e)| (k.clone(), e.clone())).collect();
        // The cgroup checks and thread walks happen without the map's lock.
        for (k, shared) in all {
            let (idle, tracked) = {
                let e = shared.lock();
                (e.last_read.elapsed() >= FORGET_AFTER, e.tracked.clone())
            };
            if idle || gone(&k) {
                self.map.lock().remove(&k);
                if let Some(dir) = &self.records {
                    let _ = std::fs::remove_file(dir.join(record_name(&k)));
                }
                changed = true;
                continue;
            }
            let Some(t) = tracked else { continue };
            let c = count(root, &t);
            let mut e = shared.lock();
            let before = e.load.avenrun;
            e.load.sample(now_ns, c.running + c.blocked);
            e.tasks = Some(c);
            e.tasks_at_ns = now_ns;
            changed |= e.load.avenrun != before;
        }
        // Idle containers' averages stay at 0: no need to rewrite the file for them (a
        // restart folds the missed periods at once, with the same result).
        if changed {
            self.save();
        }
    }

    /// Writes the state file (atomically: a temporary file renamed over it).
    pub fn save(&self) {
        let Some(f) = &self.file else { return };
        let all: Vec<(String, Shared)> = self.map.lock().iter().map(|(k, e)| (k.clone(), e.clone())).collect();
        let snapshot: HashMap<String, Entry> = all.into_iter().map(|(k, e)| (k, e.lock().clone())).collect();
        if let Err(e) = crate::files::write_atomic(f, serialize(&snapshot).as_bytes()) {
            tracing::warn!(file = %f.display(), error = %e, "cannot save state");
        }
    }
}

/// Writes a CPU record in place: one `pwrite` at offset 0 (a record within a page is written
/// whole or not at all, even if the worker is killed meanwhile), padded with spaces over a
/// longer previous one. Never through a symlink. Returns the bytes now in the file.
fn write_record(path: &std::path::Path, line: &str, prev: usize) -> std::io::Result<usize> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let mut text = line.trim_end_matches('\n').to_string();
    while text.len() + 1 < prev {
        text.push(' ');
    }
    text.push('\n');
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.write_all_at(text.as_bytes(), 0)?;
    Ok(text.len())
}

/// The cgroup whose threads (and its descendants') are the container's: the first
/// hierarchy in which it has a cgroup of its own.
fn thread_dir(t: &Container) -> Option<&crate::cgroup::CgroupDir> {
    let cg = &t.cgroups;
    [&cg.unified, &cg.cpu, &cg.cpuacct, &cg.memory].into_iter().flatten().find(|d| d.path != d.top)
}

fn count(root: &Root, t: &Container) -> TaskCounts {
    match thread_dir(t) {
        Some(d) => tasks::count(root, d, t.init.is_some()),
        None => TaskCounts::default(),
    }
}

const HEADER: &str = "cgprocfs-state 1\n";

/// The directory of per-container CPU records beside the state file: `keeper.state` ->
/// `keeper.accounts` (the name earlier versions used, so an upgrade finds their records), any
/// other name gets `.accounts` appended.
fn accounts_dir(state_file: &std::path::Path) -> PathBuf {
    let name = state_file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.strip_suffix(".state").filter(|s| !s.is_empty()) {
        Some(stem) => state_file.with_file_name(format!("{stem}.accounts")),
        None => state_file.with_file_name(format!("{name}.accounts")),
    }
}

/// A file name for container key `k` (keys hold paths): FNV-1a of the key.
fn record_name(k: &str) -> String {
    format!("{:016x}", crate::fnv(k.as_bytes()))
}

/// A container's CPU record: its `cpu` line and its `wait` line.
fn cpu_line(k: &str, a: &CpuAccount) -> String {
    let l = &a.last;
    // WAIT is what versions without the `wait` line compare the kernel's wait with.
    let wait = l.throttled_ns.max(l.psi_ns);
    let mut s = format!("cpu {k} {} {} {} {wait} {}", a.at_ns, l.user_ns, l.system_ns, a.vcpus.len());
    for v in &a.vcpus {
        s.push_str(&format!(" {} {} {} {}", v.user, v.system, v.idle, v.steal));
    }
    s.push_str(&format!("\nwait {k} {} {} {}\n", l.throttled_ns, l.psi_ns, l.delay_ns));
    s
}

/// State file format, one line per record, whitespace-separated:
/// `cpu KEY AT USER SYSTEM WAIT N (U S I ST){N}`, then `wait KEY THROTTLED PSI DELAY` (the
/// last value of each wait source; without it each is WAIT and the delay 0), and
/// `load KEY AT A1 A5 A15`.
fn serialize(map: &HashMap<String, Entry>) -> String {
    let mut s = String::from(HEADER);
    for (k, e) in map {
        if let Some(a) = &e.cpu {
            s.push_str(&cpu_line(k, a));
        }
        if e.load.at_ns != 0 {
            let l = &e.load;
            s.push_str(&format!("load {k} {} {} {} {}\n", l.at_ns, l.avenrun[0], l.avenrun[1], l.avenrun[2]));
        }
    }
    s
}

/// Reads a state file; malformed lines are skipped (a partial state only loses history).
fn parse(text: &str) -> HashMap<String, Entry> {
    let mut map: HashMap<String, Entry> = HashMap::new();
    let mut lines = text.lines();
    if lines.next() != Some(HEADER.trim_end()) {
        return map;
    }
    for line in lines {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let nums: Option<Vec<u64>> = f.iter().skip(2).map(|x| x.parse().ok()).collect();
        let (Some(kind), Some(k), Some(n)) = (f.first(), f.get(1), nums) else { continue };
        match (*kind, n.as_slice()) {
            ("cpu", [at, u, s, w, count, rest @ ..]) if rest.len() as u64 == count * 4 && *count <= 4096 => {
                let vcpus =
                    rest.chunks(4).map(|c| VCpu { user: c[0], system: c[1], idle: c[2], steal: c[3] }).collect();
                let last = CpuUsage { user_ns: *u, system_ns: *s, throttled_ns: *w, psi_ns: *w, delay_ns: 0 };
                map.entry(k.to_string()).or_insert_with(Entry::new).cpu = Some(CpuAccount { at_ns: *at, last, vcpus });
            }
            ("wait", [t, p, d]) => {
                if let Some(a) = map.get_mut(*k).and_then(|e| e.cpu.as_mut()) {
                    (a.last.throttled_ns, a.last.psi_ns, a.last.delay_ns) = (*t, *p, *d);
                }
            }
            ("load", [at, a, b, c]) => {
                // A load average above 2^20 runnable threads is not one the kernel can have.
                let cap = |v: u64| v.min((1 << 20) * load::FIXED_1);
                map.entry(k.to_string()).or_insert_with(Entry::new).load =
                    LoadAvg { avenrun: [cap(*a), cap(*b), cap(*c)], at_ns: *at };
            }
            _ => {}
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container no sampler can find threads of.
    fn nobody() -> Container {
        Container::nobody()
    }

    /// A key for a directory that exists (as a cgroup's would).
    fn live_key(dir: &std::path::Path) -> String {
        use std::os::unix::fs::MetadataExt;
        format!("{}:{}", std::fs::metadata(dir).unwrap().ino(), dir.display())
    }

    #[test]
    fn a_new_store_resumes_from_what_was_last_shown() {
        let dir = crate::files::TestDir::new("cgprocfs-state-test-");
        let file = dir.join("x.state");
        let k = live_key(&dir);
        let s = 1_000_000_000u64;
        let a = Store::new(Some(file.clone()));
        let u = |w: u64| CpuUsage { user_ns: s, psi_ns: w, ..Default::default() };
        let t = nobody();
        a.cpu(&k, &t, 10 * s, 5 * s, u(0), 1);
        // Wait outruns the headroom: this read shows steal clamped to what was left.
        let (_, shown) = a.cpu(&k, &t, 11 * s, 0, u(5 * s), 1);
        // The threads' run delay is folded in while the files are read.
        a.entry(&k).lock().delay.fold(11 * s, &[(1, 0)], 1, 0);
        a.entry(&k).lock().delay.fold(12 * s, &[(1, s / 2)], 1, 0);
        let (_, shown) = {
            let (v, t2) = a.cpu(&k, &t, 12 * s, 0, u(5 * s), 1);
            assert_eq!(t2.steal - shown.steal, s / 2, "{shown:?} -> {t2:?}");
            (v, t2)
        };
        drop(a); // "crash": no periodic save ever happened
        let b = Store::new(Some(file));
        let (_, resumed) = b.cpu(&k, &t, 12 * s, 0, u(5 * s), 1);
        assert_eq!(resumed, shown);
        assert_eq!(b.entry(&k).lock().cpu.as_ref().unwrap().last.delay_ns, s / 2, "the delay resumes where it was");
        let (_, later) = b.cpu(&k, &t, 13 * s, 0, u(6 * s), 1);
        assert!(later.idle >= shown.idle && later.steal >= shown.steal && later.user >= shown.user);
    }

    #[test]
    fn records_of_gone_cgroups_are_deleted_and_not_loaded() {
        let dir = crate::files::TestDir::new("cgprocfs-state-test-");
        let file = dir.join("x.state");
        let cg: Vec<PathBuf> = (0..4).map(|i| dir.join(format!("cg{i}"))).collect();
        let a = Store::new(Some(file.clone()));
        let u = CpuUsage { user_ns: 1, ..Default::default() };
        for c in &cg {
            std::fs::create_dir(c).unwrap();
            a.cpu(&live_key(c), &nobody(), 10, 5, u, 1);
        }
        let records = || std::fs::read_dir(accounts_dir(&file)).unwrap().count();
        assert_eq!(records(), 4);
        // Two cgroups removed. (A cgroup recreated under its name has another inode on
        // cgroupfs; a tmpfs may hand the same inode out again, so that is not tested here.)
        std::fs::remove_dir(&cg[0]).unwrap();
        std::fs::remove_dir(&cg[1]).unwrap();
        let b = Store::new(Some(file.clone()));
        assert_eq!(b.map.lock().len(), 2);
        assert_eq!(records(), 2, "records of gone cgroups were left behind");
        // And a sampling pass forgets one that goes while the worker runs.
        std::fs::remove_dir(&cg[2]).unwrap();
        b.sample_all(&Root::new("/"), 20);
        assert_eq!(records(), 1);
        assert_eq!(b.map.lock().len(), 1);
    }

    #[test]
    fn records_keep_the_directory_name_of_earlier_versions() {
        use std::path::Path;
        assert_eq!(accounts_dir(Path::new("/r/keeper.state")), Path::new("/r/keeper.accounts"));
        assert_eq!(accounts_dir(Path::new("/r/tmp.AbC123.state")), Path::new("/r/tmp.AbC123.accounts"));
        assert_eq!(accounts_dir(Path::new("/r/odd")), Path::new("/r/odd.accounts"));
    }

    #[test]
    fn a_shorter_record_replaces_a_longer_one_whole() {
        let dir = crate::files::TestDir::new("cgprocfs-state-test-");
        let p = dir.join("r");
        let n = write_record(&p, "cpu k 1 2 3 4 1 100000 200000 300000 400000\n", 0).unwrap();
        write_record(&p, "cpu k 1 2 3 4 1 5 6 7 8\n", n).unwrap();
        let back = parse(&format!("{HEADER}{}", std::fs::read_to_string(&p).unwrap()));
        assert_eq!(back["k"].cpu.as_ref().unwrap().vcpus[0], VCpu { user: 5, system: 6, idle: 7, steal: 8 });
    }

    #[test]
    fn state_file_round_trips_and_tolerates_garbage() {
        let store = Store::new(None);
        let u = CpuUsage { user_ns: 5, system_ns: 6, throttled_ns: 7, psi_ns: 8, delay_ns: 9 };
        store.cpu("1:/a", &nobody(), 1_000_000_000, 500_000_000, u, 2);
        store.entry("1:/a").lock().load = LoadAvg { avenrun: [1, 2, 3], at_ns: 9 };
        let snap: HashMap<String, Entry> =
            store.map.lock().iter().map(|(k, e)| (k.clone(), e.lock().clone())).collect();
        let text = serialize(&snap);
        let back = parse(&format!("{text}cpu broken 1 2\nload x y\n\u{0}\n"));
        let e = &back["1:/a"];
        assert_eq!(e.cpu.as_ref(), snap["1:/a"].cpu.as_ref());
        assert_eq!(e.load.avenrun, [1, 2, 3]);
        assert_eq!(back.len(), 1);
        assert!(parse("other format\ncpu a 1").is_empty());
    }

    #[test]
    fn a_state_without_wait_lines_takes_wait_for_each_kernel_source() {
        let back = parse(&format!("{HEADER}cpu k 1 2 3 40 1 5 6 7 8\n"));
        let l = back["k"].cpu.as_ref().unwrap().last;
        assert_eq!((l.throttled_ns, l.psi_ns, l.delay_ns), (40, 40, 0));
    }
}
