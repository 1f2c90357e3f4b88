//! Readers in a tight loop inside containers, for the tests of events a running container must
//! not notice (handover) or must recover from (repair).

use super::{Daemon, TestCgroup};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A reader in its own mount namespace with the mount's files bound over /proc, printing the
/// first line of meminfo and of stat in a loop (`FAIL` for a failed read).
pub fn reader(cg: &TestCgroup, d: &Daemon) -> Child {
    reader_of(cg, &d.mnt)
}

/// [`reader`] of the mount at `mnt`.
pub fn reader_of(cg: &TestCgroup, mnt: &std::path::Path) -> Child {
    let binds: String = ["proc/meminfo", "proc/stat"]
        .iter()
        .map(|f| format!("mount --bind {} /{f} && ", mnt.join(f).display()))
        .collect();
    cg.command(&format!(
        "unshare -m sh -c '{binds} while :; do head -n1 /proc/meminfo || echo FAIL; head -n1 /proc/stat || echo FAIL; done'"
    ))
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap()
}

/// What a reader saw: lines read, failures, wrong MemTotal lines, stat lines that went back.
#[derive(Debug, Default)]
pub struct Seen {
    pub lines: u64,
    pub failed: u64,
    pub wrong: Vec<String>,
    pub backwards: Vec<String>,
    /// The longest time between two lines (a handover's pause, as a reader feels it).
    pub longest_gap: Duration,
    /// When the first and the last failed read came.
    pub first_fail: Option<Instant>,
    pub last_fail: Option<Instant>,
}

pub fn collect(mut child: Child, mem_kib: u64) -> std::thread::JoinHandle<(Child, Seen)> {
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut s = Seen::default();
        let want = format!("MemTotal: {mem_kib} kB");
        let mut last: Option<Vec<u64>> = None;
        let mut at = Instant::now();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            s.lines += 1;
            s.longest_gap = s.longest_gap.max(at.elapsed());
            at = Instant::now();
            if line.contains("FAIL") {
                s.failed += 1;
                s.first_fail.get_or_insert_with(Instant::now);
                s.last_fail = Some(Instant::now());
            } else if line.starts_with("MemTotal") {
                if line.split_whitespace().collect::<Vec<_>>().join(" ") != want {
                    s.wrong.push(line);
                }
            } else if let Some(rest) = line.strip_prefix("cpu ") {
                let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
                if let Some(p) = &last {
                    if p.iter().zip(&v).any(|(a, b)| b < a) {
                        s.backwards.push(format!("{p:?} -> {v:?}"));
                    }
                }
                last = Some(v);
            } else {
                s.wrong.push(line);
            }
        }
        (child, s)
    })
}

/// Ends every process of these cgroups (all started by the test).
pub fn kill_cgroups(cgs: &[&TestCgroup]) {
    for cg in cgs {
        for (_, dir) in &cg.dirs {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: processes of a cgroup this test created and filled.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
}
