//! The threads of a container and their scheduler states, for load averages and
//! `procs_running`/`procs_blocked`: the cgroup's thread list (v2 `cgroup.threads`, v1 `tasks`)
//! and every descendant's, then `/proc/<tid>/stat` (kept open between passes,
//! [`thread_files`]).

use super::thread_files::{self, Kind};
use super::{CgroupDir, Version};
use crate::Root;

/// Threads sampled per container per pass at most; above it the counts are scaled, so a
/// fork bomb held by pids.max costs the sampler a bounded amount of work.
pub const MAX_SAMPLED: usize = 1024;

/// Counts of a container's threads by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// Threads in state R (running or runnable).
    pub running: u64,
    /// Threads in state D (uninterruptible).
    pub blocked: u64,
    /// All threads.
    pub total: u64,
    /// Highest pid in the container's innermost pid namespace seen, if it has its own.
    pub last_pid: Option<u64>,
}

/// Thread ids of `dir` and its descendants (up to `limit`), and the total count.
fn thread_ids(dir: &CgroupDir, limit: usize) -> (Vec<u32>, u64) {
    let name = match dir.version {
        Version::V2 => "cgroup.threads",
        Version::V1 => "tasks",
    };
    let mut ids = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![dir.path.clone()];
    while let Some(d) = stack.pop() {
        if let Ok(t) = super::held::read(d.join(name)) {
            for tid in t.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                total += 1;
                if ids.len() < limit {
                    ids.push(tid);
                }
            }
        }
        // cgroupfs keeps a directory's link count at 2 + its subdirectories: a leaf (most
        // containers) needs no directory listing.
        if super::held::metadata(&d).is_ok_and(|m| std::os::unix::fs::MetadataExt::nlink(&m) <= 2) {
            continue;
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    (ids, total)
}

/// The state letter of `/proc/<tid>/stat` (field 3, after the last `)`: the command name may
/// contain spaces and parentheses).
pub fn state_of(stat: &str) -> Option<char> {
    crate::procfs::stat_fields(stat).next()?.chars().next()
}

/// Counts the threads of the container whose cgroup is `dir`. With `own_pidns`, also the
/// highest innermost pid among them (what the container's `ns_last_pid` approximates).
pub fn count(root: &Root, dir: &CgroupDir, own_pidns: bool) -> TaskCounts {
    let (ids, total) = thread_ids(dir, MAX_SAMPLED);
    let mut c = TaskCounts { total, ..Default::default() };
    let mut seen = 0u64;
    for tid in &ids {
        let Ok(stat) = thread_files::read(root, *tid, Kind::Stat) else { continue };
        seen += 1;
        match state_of(&stat) {
            Some('R') => c.running += 1,
            Some('D') => c.blocked += 1,
            _ => {}
        }
        if own_pidns && seen <= 256 {
            c.last_pid = c.last_pid.max(thread_files::innermost_nspid(root, *tid));
        }
    }
    if seen > 0 && total > seen {
        // Scale the sample to the whole container.
        c.running = c.running * total / seen;
        c.blocked = c.blocked * total / seen;
    }
    c
}

/// The run delay (ns a thread waited on a run queue: throttled or behind other tasks) of each
/// thread of the container whose cgroup is `dir`, up to `limit` threads, and the number of
/// threads in all. The second field of `/proc/<tid>/schedstat` (`sched_info.run_delay`,
/// `kernel/sched/stats.h`); threads that vanish meanwhile are left out.
pub fn run_delays(root: &Root, dir: &CgroupDir, limit: usize) -> (Vec<(u32, u64)>, u64) {
    let (ids, total) = thread_ids(dir, limit);
    let delays = ids
        .into_iter()
        .filter_map(|tid| {
            let s = thread_files::read(root, tid, Kind::Schedstat).ok()?;
            Some((tid, run_delay(&s)?))
        })
        .collect();
    (delays, total)
}

/// The run delay of a `schedstat` line (`runtime run_delay timeslices`).
fn run_delay(schedstat: &str) -> Option<u64> {
    schedstat.split_ascii_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_delay_is_the_second_field() {
        assert_eq!(super::run_delay("349819683 148967 8\n"), Some(148967));
        assert_eq!(super::run_delay("12"), None);
        assert_eq!(super::run_delay("1 x 3"), None);
    }

    #[test]
    fn state_after_the_last_paren() {
        assert_eq!(super::state_of("12 (a) b) c) R 1 2"), Some('R'));
        assert_eq!(super::state_of("12 (sleep) S 1"), Some('S'));
        assert_eq!(super::state_of("garbage"), None);
    }
}
