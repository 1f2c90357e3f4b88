//! Live: PSI triggers on `/proc/pressure/memory` inside `cgprocfs run` containers, whose
//! pressure files are bound from the daemon's trigger connection — a trigger written inside a
//! container fires under that container's memory pressure and not under a neighbour's; the
//! kernel's errors come back; the main mount stays a read-only superblock; a worker killed
//! under a waiting poller does not leave it hung.

use crate::common;

use common::attacker::{Attacker, ATTACKER};
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Opens PATH read-write, writes TRIGGER, prints `armed PID` (or `error ERRNO`), then reads a
/// line from stdin: `high` allocates past a low memory.high the test set, `churn DIR` pushes
/// page cache through the memory limit, anything else nothing. Then polls for POLLPRI up to
/// SECONDS and prints `fired REVENTS` or `timeout`.
const POLLER: &str = r#"
import os, select, subprocess, sys
path, trig, secs, extra = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
try:
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    os.write(fd, trig.encode())
except OSError as e:
    print("error", e.errno, flush=True); sys.exit(0)
if "again" in extra:
    try:
        os.write(fd, trig.encode())
    except OSError as e:
        print("again", e.errno, flush=True)
p = select.poll(); p.register(fd, select.POLLPRI)
print("armed", os.getpid(), flush=True)
what = sys.stdin.readline().split()
if what[:1] == ["high"]:
    subprocess.Popen([sys.executable, "-c", "a = bytearray(48 << 20)"])
elif what[:1] == ["churn"]:
    big = os.path.join(what[1], "big")
    subprocess.Popen(["sh", "-c", "dd if=/dev/zero of=%s bs=1M count=256 status=none; "
        "for i in 1 2 3; do cat %s > /dev/null; done; %s -c 'a = bytearray(56 << 20)'" % (big, big, sys.executable)])
ev = p.poll(secs * 1000)
print("fired", ev[0][1], flush=True) if ev else print("timeout", flush=True)
"#;

/// A unprivileged-valid trigger: 10 ms of stall in a 2 s window (callers without
/// CAP_SYS_RESOURCE may only use multiples of 2 s).
const TRIGGER: &str = "some 10000 2000000";

/// A poller inside a `cgprocfs run` container with a 32 MiB memory limit.
struct Poller {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    /// The poller's own pid, once armed.
    pid: Option<u32>,
}

impl Poller {
    fn start(d: &Daemon, script: &std::path::Path, trigger: &str, secs: u32, extra: &[&str]) -> Poller {
        let secs = secs.to_string();
        let args: Vec<&std::ffi::OsStr> = [script.as_os_str()]
            .into_iter()
            .chain(
                ["/proc/pressure/memory", trigger, &secs]
                    .into_iter()
                    .chain(extra.iter().copied())
                    .map(std::ffi::OsStr::new),
            )
            .collect();
        let mut child = contained_python(d, "32M", &args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Poller { child, out, pid: None }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    /// Waits for `armed PID`; the poller's pid.
    fn armed(&mut self) -> u32 {
        let l = self.line();
        let pid = l.strip_prefix("armed ").and_then(|p| p.parse().ok());
        self.pid = pid;
        pid.unwrap_or_else(|| panic!("not armed: {l:?}"))
    }

    fn tell(&mut self, what: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{what}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Poller {
    /// Ends the poller (its `run` then removes its cgroup and exits), `run` itself only if it
    /// does not.
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if let Some(pid) = self.pid {
            // SAFETY: a signal to the poller this test started (a child of its `run`).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The unified-tree cgroup directory of `pid`, if a cgroup v2 tree is mounted.
fn unified_dir(pid: u32) -> Option<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let root = info.lines().find(|l| l.contains(" - cgroup2 "))?.split(' ').nth(4)?.to_string();
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?.trim_start_matches('/').to_string();
    Some(std::path::Path::new(&root).join(path))
}

/// Memory pressure inside poller `p`'s container: with a v2 memory controller, `memory.high`
/// far below what a program then touches (the kernel throttles it: a stall PSI counts);
/// otherwise page cache pushed through the limit (direct reclaim), then an allocation past it.
fn pressure(p: &mut Poller, pid: u32, scratch: &std::path::Path) {
    match unified_dir(pid).map(|d| d.join("memory.high")).filter(|h| h.exists()) {
        Some(h) => {
            std::fs::write(&h, "8M").unwrap();
            p.tell("high");
        }
        None => p.tell(&format!("churn {}", scratch.display())),
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

    // The main mount is a read-only superblock (its reads stay cheap): no trigger there.
    let rw = std::fs::OpenOptions::new().read(true).write(true).open(d.path("proc/pressure/memory"));
    assert_eq!(rw.err().and_then(|e| e.raw_os_error()), Some(libc::EROFS), "the main mount takes no writes");
    // The trigger connection takes a pressure file's triggers and no other change.
    let psi = d.psi();
    let meminfo = psi.join("proc/meminfo");
    let errno = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error());
    let write_open = |p: &std::path::Path| errno(std::fs::OpenOptions::new().write(true).open(p).map(drop));
    assert_eq!(write_open(&meminfo), Some(libc::EROFS), "another file of the trigger connection");
    assert_eq!(errno(std::fs::create_dir(psi.join("proc/dir"))), Some(libc::EROFS));
    assert_eq!(errno(std::fs::remove_file(&meminfo)), Some(libc::EROFS));
    assert_eq!(errno(std::fs::rename(&meminfo, psi.join("proc/moved"))), Some(libc::EROFS));
    assert_eq!(errno(std::fs::hard_link(&meminfo, psi.join("proc/link"))), Some(libc::EROFS));
    assert_eq!(errno(std::os::unix::fs::symlink("meminfo", psi.join("proc/sym"))), Some(libc::EROFS));
    use std::os::unix::fs::PermissionsExt;
    let chmod = std::fs::set_permissions(&meminfo, std::fs::Permissions::from_mode(0o666));
    assert!(errno(chmod).is_some_and(|e| e == libc::EROFS || e == libc::EPERM), "chmod refused");
    assert!(std::fs::read_to_string(psi.join("proc/pressure/memory")).is_ok_and(|t| t.starts_with("some ")));

    // No unified cgroup of its own (a pure v1 host): no pressure of its own to watch, the
    // kernel's answer without PSI.
    if !has_v2() {
        let mut p = Poller::start(&d, &script, TRIGGER, 1, &[]);
        assert_eq!(p.line(), format!("error {}", libc::EOPNOTSUPP));
        return;
    }
    // The kernel's errors come back: a malformed trigger, a second one on the same file.
    let mut bad = Poller::start(&d, &script, "avg 1 2", 1, &[]);
    assert_eq!(bad.line(), format!("error {}", libc::EINVAL));
    let mut twice = Poller::start(&d, &script, TRIGGER, 1, &["again"]);
    assert_eq!(twice.line(), format!("again {}", libc::EBUSY));

    let mut a = Poller::start(&d, &script, TRIGGER, 20, &[]);
    let mut b = Poller::start(&d, &script, TRIGGER, 6, &[]);
    let pid_a = a.armed();
    b.armed();
    b.tell("nothing");
    let t = Instant::now();
    pressure(&mut a, pid_a, &scratch.0);
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
    if !has_v2() {
        harness::ignore(format!("{test}: no unified cgroup here (pure v1), so no trigger to wait on"));
    }
    let mut p = Poller::start(&d, &script, TRIGGER, 60, &[]);
    p.armed();
    p.tell("nothing");
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

/// The kernel reads a trigger's numbers with `%u`: 32 bits. A window of 19108310000000 µs is
/// a multiple of 2 s (so the unprivileged rule, checked on 64 bits, passed it) and wraps to a
/// 500 096 µs window, which the daemon then registered as root: a real-time-polled trigger
/// for an unprivileged container. Now numbers are parsed as the kernel's bounds allow and
/// the rule applies to what the kernel would see. (Where the daemon itself lacks
/// CAP_SYS_RESOURCE, as root in some sandboxes, the kernel applies the rule to the daemon's
/// write too and this passes either way; the VM tier runs it as a root that has it.)
fn the_unprivileged_window_rule_is_not_bypassed_by_overflow() {
    let test = "the_unprivileged_window_rule_is_not_bypassed_by_overflow";
    live_ready(test);
    programs_ready(test, &["python3"]);
    if !has_v2() {
        harness::ignore(format!("{test}: no unified cgroup here (pure v1): no trigger to take"));
    }
    let d = Daemon::start("psi-wrap");
    let dir = Scratch::new("psi-wrap");
    let script = dir.0.join("attacker.py");
    std::fs::write(&script, ATTACKER).unwrap();
    let cases = [
        ("some 100000 19108310000000", "error 22"),
        ("some 100000 4295467296", "error 22"),
        ("some 100000 500000", "error 22"),
        ("some 100000 2000000", "ok"),
    ];
    for (line, want) in cases {
        let mut a = Attacker::start(&d, &script, &["write", line]);
        assert_eq!(a.line(), want, "an unprivileged {line:?}");
    }
}

/// The trigger connection's opens count against the same per-container handle quota as the
/// main mount's: a container cannot double its quota by opening through both.
fn both_connections_share_one_handle_quota() {
    let test = "both_connections_share_one_handle_quota";
    live_ready(test);
    programs_ready(test, &["python3"]);
    let d = Daemon::start_with("psi-quota", &["--handles-per-container", "4"]);
    let cg = TestCgroup::new("psi-quota", &Limits { memory: Some(256 << 20), ..Default::default() });
    let (main, trig) = (d.path("proc/meminfo"), d.psi().join("proc/pressure/memory"));
    let script = format!(
        "import os, time\n\
         fds = [os.open('{m}', os.O_RDONLY) for _ in range(4)]\n\
         try:\n    os.open('{t}', os.O_RDONLY); print('opened')\n\
         except OSError as e:\n    print('refused', e.errno)\n\
         os.close(fds.pop())\n\
         # The kernel sends RELEASE after close() returns (fs/fuse/file.c): retry a while.\n\
         for _ in range(100):\n    try:\n        os.open('{t}', os.O_RDONLY); print('after-close ok'); break\n    except OSError as e:\n        if e.errno != 24: raise\n        time.sleep(0.05)",
        m = main.display(),
        t = trig.display()
    );
    let out = cg.run(&format!("python3 -c \"{script}\""));
    assert_eq!(out.lines().next(), Some(format!("refused {}", libc::EMFILE).as_str()), "{out}");
    assert!(out.contains("after-close ok"), "a handle freed on one connection is room on the other: {out}");
}

crate::cgprocfs_tests!(
    a_trigger_fires_on_its_containers_pressure_only,
    a_killed_worker_leaves_no_poller_hung,
    both_connections_share_one_handle_quota,
    the_unprivileged_window_rule_is_not_bypassed_by_overflow
);
