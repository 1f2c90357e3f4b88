//! What must persist between reads: each container's CPU account (for `/proc/stat` and
//! `/proc/uptime`) and load averages (`/proc/loadavg`). Kept in memory, written to a state file
//! every sampling period and read back when a worker starts, so neither a worker restart nor an
//! upgrade moves a counter backwards. Without a state file (`cgprocfs show`, or a lost file),
//! the CPU account is rebuilt from the kernel's cumulative counters.

pub mod cpu;
pub mod load;

use crate::cgroup::cpuacct::CpuUsage;
use crate::cgroup::tasks::{self, TaskCounts};
use crate::cgroup::{Cgroups, Container};
use crate::Root;
use cpu::{CpuAccount, VCpu};
use load::LoadAvg;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Containers not read for this long are forgotten (their cgroup is usually gone).
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Containers tracked at most; the least recently read are dropped beyond it.
const MAX_CONTAINERS: usize = 100_000;

#[derive(Debug, Clone)]
struct Entry {
    cpu: Option<CpuAccount>,
    load: LoadAvg,
    tasks: Option<TaskCounts>,
    tracked: Option<Container>,
    last_read: Instant,
}

impl Entry {
    fn new() -> Self {
        Entry { cpu: None, load: LoadAvg::default(), tasks: None, tracked: None, last_read: Instant::now() }
    }
}

/// Per-container state, keyed by [`key`].
pub struct Store {
    map: Mutex<HashMap<String, Entry>>,
    file: Option<PathBuf>,
}

/// The state key of a container: the cgroup directory its CPU time is accounted in, with that
/// directory's inode, so a cgroup recreated under the same name starts afresh.
pub fn key(cg: &Cgroups) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let d = cg.cpu_accounting()?;
    let ino = std::fs::metadata(&d.path).ok()?.ino();
    let path: String = d.path.to_string_lossy().chars().map(|c| if c.is_whitespace() { '_' } else { c }).collect();
    Some(format!("{ino}:{path}"))
}

impl Store {
    /// A store persisted to `file` (read now if it exists).
    pub fn new(file: Option<PathBuf>) -> Self {
        let mut map = HashMap::new();
        if let Some(f) = &file {
            if let Ok(text) = std::fs::read_to_string(f) {
                map = parse(&text);
            }
            // The per-container records written at every read are newer than the periodic file.
            if let Ok(rd) = std::fs::read_dir(accounts_dir(f)) {
                for e in rd.flatten() {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    for (k, v) in parse(&format!("{HEADER}{text}")) {
                        if let Some(cpu) = v.cpu {
                            map.entry(k).or_insert_with(Entry::new).cpu = Some(cpu);
                        }
                    }
                }
            }
            tracing::info!(containers = map.len(), file = %f.display(), "state loaded");
            if let Err(e) = crate::files::private_dir(&accounts_dir(f), 0o700) {
                tracing::warn!(error = %e, "CPU records are not kept");
            }
        }
        Store { map: Mutex::new(map), file }
    }

    /// Advances the CPU account of container `k` and returns its visible vCPUs (the first
    /// `n`) and the aggregate over all it has had.
    pub fn cpu(&self, k: &str, now_ns: u64, age_ns: u64, usage: CpuUsage, n: usize) -> (Vec<VCpu>, VCpu) {
        let mut map = self.map.lock();
        let e = entry(&mut map, k);
        let acc = match &mut e.cpu {
            Some(a) => {
                a.advance(now_ns, usage, n);
                a
            }
            None => e.cpu.insert(CpuAccount::new(now_ns, age_ns, usage, n)),
        };
        let out = (acc.vcpus[..n.max(1).min(acc.vcpus.len())].to_vec(), acc.total());
        // Record what is about to be shown before showing it (under the lock, so records of
        // one container are written in order): a worker that dies after this read restarts
        // from exactly these counters and can only move them forward.
        if let Some(f) = &self.file {
            let text = cpu_line(k, acc);
            let path = accounts_dir(f).join(record_name(k));
            if let Err(e) = crate::files::write_atomic(&path, text.as_bytes()) {
                // The directory may be missing (first use, or removed): create it once more.
                let _ = crate::files::private_dir(&accounts_dir(f), 0o700);
                tracing::debug!(error = %e, "cannot record the CPU account");
            }
        }
        out
    }

    /// The load average and task counts of container `k`, registering it with the sampler.
    /// A container never sampled is sampled now.
    pub fn load(&self, root: &Root, k: &str, t: Container, now_ns: u64) -> (LoadAvg, TaskCounts) {
        {
            let mut map = self.map.lock();
            let e = entry(&mut map, k);
            e.tracked = Some(t.clone());
            if let Some(c) = e.tasks {
                return (e.load, c);
            }
        }
        let c = count(root, &t);
        let mut map = self.map.lock();
        let e = entry(&mut map, k);
        e.load.sample(now_ns, c.running + c.blocked);
        e.tasks = Some(c);
        (e.load, c)
    }

    /// One sampling pass over every registered container (the kernel's 5-second tick), then
    /// forgets idle containers and saves the state file.
    pub fn sample_all(&self, root: &Root, now_ns: u64) {
        let mut changed = false;
        let todo: Vec<(String, Container)> = {
            let mut map = self.map.lock();
            let file = self.file.clone();
            map.retain(|k, e| {
                let keep = e.last_read.elapsed() < FORGET_AFTER;
                if !keep {
                    changed = true;
                    if let Some(f) = &file {
                        let _ = std::fs::remove_file(accounts_dir(f).join(record_name(k)));
                    }
                }
                keep
            });
            map.iter().filter_map(|(k, e)| Some((k.clone(), e.tracked.clone()?))).collect()
        };
        // The thread walk happens without the lock: reads are never held up by sampling.
        for (k, t) in todo {
            let c = count(root, &t);
            if let Some(e) = self.map.lock().get_mut(&k) {
                let before = e.load.avenrun;
                e.load.sample(now_ns, c.running + c.blocked);
                e.tasks = Some(c);
                changed |= e.load.avenrun != before;
            }
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
        let text = serialize(&self.map.lock());
        if let Err(e) = crate::files::write_atomic(f, text.as_bytes()) {
            tracing::warn!(file = %f.display(), error = %e, "cannot save state");
        }
    }
}

fn entry<'a>(map: &'a mut HashMap<String, Entry>, k: &str) -> &'a mut Entry {
    if !map.contains_key(k) && map.len() >= MAX_CONTAINERS {
        if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.last_read).map(|(k, _)| k.clone()) {
            map.remove(&oldest);
        }
    }
    let e = map.entry(k.to_string()).or_insert_with(Entry::new);
    e.last_read = Instant::now();
    e
}

fn count(root: &Root, t: &Container) -> TaskCounts {
    let cg = &t.cgroups;
    match [&cg.unified, &cg.cpu, &cg.cpuacct, &cg.memory].into_iter().flatten().find(|d| d.path != d.top) {
        Some(d) => tasks::count(root, d, t.init.is_some()),
        None => TaskCounts::default(),
    }
}

const HEADER: &str = "cgprocfs-state 1\n";

/// The directory of per-container CPU records beside the state file.
fn accounts_dir(state_file: &std::path::Path) -> PathBuf {
    crate::files::companion(state_file, "accounts")
}

/// A file name for container key `k` (keys hold paths): FNV-1a of the key.
fn record_name(k: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in k.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn cpu_line(k: &str, a: &CpuAccount) -> String {
    let mut s =
        format!("cpu {k} {} {} {} {} {}", a.at_ns, a.last.user_ns, a.last.system_ns, a.last.wait_ns, a.vcpus.len());
    for v in &a.vcpus {
        s.push_str(&format!(" {} {} {} {}", v.user, v.system, v.idle, v.steal));
    }
    s.push('\n');
    s
}

/// State file format, one line per record, whitespace-separated:
/// `cpu KEY AT USER SYSTEM WAIT N (U S I ST){N}` and `load KEY AT A1 A5 A15`.
fn serialize(map: &HashMap<String, Entry>) -> String {
    let mut s = String::from("cgprocfs-state 1\n");
    for (k, e) in map {
        if let Some(a) = &e.cpu {
            s.push_str(&format!(
                "cpu {k} {} {} {} {} {}",
                a.at_ns,
                a.last.user_ns,
                a.last.system_ns,
                a.last.wait_ns,
                a.vcpus.len()
            ));
            for v in &a.vcpus {
                s.push_str(&format!(" {} {} {} {}", v.user, v.system, v.idle, v.steal));
            }
            s.push('\n');
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
                let last = CpuUsage { user_ns: *u, system_ns: *s, wait_ns: *w };
                map.entry(k.to_string()).or_insert_with(Entry::new).cpu = Some(CpuAccount { at_ns: *at, last, vcpus });
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

    #[test]
    fn a_new_store_resumes_from_what_was_last_shown() {
        let dir = std::env::temp_dir().join(format!("cgprocfs-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("x.state");
        let s = 1_000_000_000u64;
        let a = Store::new(Some(file.clone()));
        let u = |w: u64| CpuUsage { user_ns: s, system_ns: 0, wait_ns: w };
        a.cpu("1:/c", 10 * s, 5 * s, u(0), 1);
        // Wait outruns the headroom: this read shows steal clamped to what was left.
        let (_, shown) = a.cpu("1:/c", 11 * s, 0, u(5 * s), 1);
        drop(a); // "crash": no periodic save ever happened
        let b = Store::new(Some(file));
        let (_, resumed) = b.cpu("1:/c", 11 * s, 0, u(5 * s), 1);
        assert_eq!(resumed, shown);
        let (_, later) = b.cpu("1:/c", 12 * s, 0, u(6 * s), 1);
        assert!(later.idle >= shown.idle && later.steal >= shown.steal && later.user >= shown.user);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn state_file_round_trips_and_tolerates_garbage() {
        let store = Store::new(None);
        let u = CpuUsage { user_ns: 5, system_ns: 6, wait_ns: 7 };
        store.cpu("1:/a", 1_000_000_000, 500_000_000, u, 2);
        store.map.lock().get_mut("1:/a").unwrap().load = LoadAvg { avenrun: [1, 2, 3], at_ns: 9 };
        let text = serialize(&store.map.lock());
        let back = parse(&format!("{text}cpu broken 1 2\nload x y\n\u{0}\n"));
        let e = &back["1:/a"];
        assert_eq!(e.cpu.as_ref(), store.map.lock()["1:/a"].cpu.as_ref());
        assert_eq!(e.load.avenrun, [1, 2, 3]);
        assert_eq!(back.len(), 1);
        assert!(parse("other format\ncpu a 1").is_empty());
    }
}
