//! Live: PSI triggers on the served `/proc/pressure/memory`, as on the host — a trigger written
//! inside a container fires under that container's memory pressure and not under a
//! neighbour's; the kernel's errors come back; a worker killed under a waiting poller does not
//! leave it hung.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Opens PATH read-write, writes TRIGGER, prints `armed` (or `error ERRNO`), then polls for
/// POLLPRI up to SECONDS and prints `fired REVENTS` or `timeout`.
const POLLER: &str = r#"
import os, select, sys
path, trig, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
try:
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    os.write(fd, trig.encode())
except OSError as e:
    print("error", e.errno, flush=True); sys.exit(0)
if len(sys.argv) > 4:
    try:
        os.write(fd, trig.encode())
    except OSError as e:
        print("again", e.errno, flush=True)
p = select.poll(); p.register(fd, select.POLLPRI)
print("armed", flush=True)
ev = p.poll(secs * 1000)
print("fired", ev[0][1] if ev else 0, flush=True) if ev else print("timeout", flush=True)
"#;

/// A unprivileged-valid trigger: 10 ms of stall in a 2 s window (callers without
/// CAP_SYS_RESOURCE may only use multiples of 2 s).
const TRIGGER: &str = "some 10000 2000000";

struct Poller {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Poller {
    fn start(
        cg: &TestCgroup,
        script: &std::path::Path,
        file: &std::path::Path,
        trigger: &str,
        secs: u32,
        again: bool,
    ) -> Poller {
        let cmd = format!(
            "python3 {} {} '{trigger}' {secs}{}",
            script.display(),
            file.display(),
            if again { " again" } else { "" }
        );
        let mut child = cg.command(&cmd).stdout(Stdio::piped()).spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Poller { child, out }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim().to_string()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Memory pressure inside `cg`: with a v2 memory controller, `memory.high` far below what a
/// program touches (the kernel throttles it, a stall PSI counts); on v1, a file read through a
/// small limit several times (direct reclaim of its page cache), then an allocation past it.
fn pressure(cg: &TestCgroup, scratch: &std::path::Path) {
    let high = cg.dirs.iter().map(|(_, d)| d.join("memory.high")).find(|p| p.exists());
    match high {
        Some(h) => {
            std::fs::write(&h, "8M").unwrap();
            let _ = cg.command("python3 -c 'a = bytearray(48 << 20); print(len(a))'").output();
        }
        None => {
            // Written and read inside the cgroup: its page cache is charged there.
            let big = scratch.join("big");
            let _ = cg
                .command(&format!(
                    "sh -c 'dd if=/dev/zero of={0} bs=1M count=256 status=none; \
                     for i in 1 2 3; do cat {0} > /dev/null; done; python3 -c \"a = bytearray(56 << 20)\"'",
                    big.display()
                ))
                .output();
        }
    }
}

/// Whether a cgroup v2 tree is mounted (the daemon takes per-cgroup pressure from it).
fn has_v2() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines().any(|l| l.contains(" - cgroup2 "))
}

fn a_trigger_fires_on_its_containers_pressure_only() {
    let test = "a_trigger_fires_on_its_containers_pressure_only";
    live_ready(test);
    programs_ready(test, &["python3", "dd"]);
    let d = Daemon::start("psi");
    let scratch = Scratch::new("psi");
    let script = scratch.0.join("poller.py");
    std::fs::write(&script, POLLER).unwrap();
    let file = d.path("proc/pressure/memory");
    let limits = Limits { memory: Some(32 << 20), ..Default::default() };
    let (busy, quiet) = (TestCgroup::new("psi-busy", &limits), TestCgroup::new("psi-quiet", &limits));

    // No unified cgroup of its own (a pure v1 host): no pressure of its own to watch, the
    // kernel's answer without PSI.
    if !has_v2() {
        let mut p = Poller::start(&busy, &script, &file, TRIGGER, 1, false);
        assert_eq!(p.line(), format!("error {}", libc::EOPNOTSUPP));
        return;
    }
    // The kernel's errors come back: a malformed trigger, a second one on the same file.
    let mut bad = Poller::start(&quiet, &script, &file, "avg 1 2", 1, false);
    assert_eq!(bad.line(), format!("error {}", libc::EINVAL));
    let mut twice = Poller::start(&quiet, &script, &file, TRIGGER, 1, true);
    assert_eq!(twice.line(), format!("again {}", libc::EBUSY));

    let mut a = Poller::start(&busy, &script, &file, TRIGGER, 20, false);
    let mut b = Poller::start(&quiet, &script, &file, TRIGGER, 6, false);
    assert_eq!(a.line(), "armed");
    assert_eq!(b.line(), "armed");
    let t = Instant::now();
    pressure(&busy, &scratch.0);
    let fired = a.line();
    assert!(fired.starts_with("fired"), "the busy container's trigger: {fired}");
    let ev: i32 = fired.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(ev & libc::POLLPRI as i32 != 0, "POLLPRI: {fired}");
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(b.line(), "timeout", "the quiet neighbour's trigger stays silent");
}

/// A poller waiting when its worker is killed is woken by the next worker and told its
/// trigger is gone (POLLERR), instead of waiting forever.
fn a_killed_worker_leaves_no_poller_hung() {
    let test = "a_killed_worker_leaves_no_poller_hung";
    live_ready(test);
    programs_ready(test, &["python3"]);
    let d = Daemon::start("psi-kill");
    let scratch = Scratch::new("psi-kill");
    let script = scratch.0.join("poller.py");
    std::fs::write(&script, POLLER).unwrap();
    let quiet = TestCgroup::new("psi-kill", &Limits { memory: Some(256 << 20), ..Default::default() });
    if !has_v2() {
        harness::ignore(format!("{test}: no unified cgroup here (pure v1), so no trigger to wait on"));
    }
    let mut p = Poller::start(&quiet, &script, &d.path("proc/pressure/memory"), TRIGGER, 60, false);
    assert_eq!(p.line(), "armed");
    // The poll handle is registered once the kernel asked POLL: give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    // SAFETY: the worker of the daemon this test started.
    unsafe { libc::kill(d.worker_pid(), libc::SIGKILL) };
    let woke = p.line();
    assert!(woke.starts_with("fired"), "woken, not timed out: {woke}");
    let ev: i32 = woke.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(ev & libc::POLLERR as i32 != 0, "told its trigger is gone: {woke}");
    assert!(t.elapsed() < Duration::from_secs(30), "woken within {:?}", t.elapsed());
}

cgprocfs_tests!(a_trigger_fires_on_its_containers_pressure_only, a_killed_worker_leaves_no_poller_hung);
