//! Live: the trigger connection and the cached tree under attack by a container's
//! unprivileged processes (user nobody, no capabilities, a cgroup of their own) and by local
//! users of the host. Each test performs the attack for real and, where the attack was a
//! stall, measures a bystander in another cgroup: its p99 read latency during the attack must
//! stay within a few ms of its own baseline in the same run (common/bystander.rs).

use crate::common;

use common::attacker::{taken, Attacker, ATTACKER};
use common::bystander::{assert_unharmed, now, Bystander};
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn has_v2() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines().any(|l| l.contains(" - cgroup2 "))
}

/// Ready for a trigger test: root, FUSE, cgroups, python3, and a unified cgroup tree (where
/// the kernel takes per-cgroup triggers; pure v1 has none to attack).
fn ready(test: &str) {
    live_ready(test);
    programs_ready(test, &["python3"]);
    if !has_v2() {
        harness::ignore(format!("{test}: no unified cgroup here (pure v1): no trigger to take"));
    }
}

/// CPU time (user + system, clock ticks) of process `pid`.
fn cpu_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s.rsplit_once(')').unwrap().1.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A stall test's setting: daemon `d` (started with `extra`), the attacker's script, and a
/// bystander in a cgroup of its own reading the main mount's meminfo and the trigger
/// connection's pressure/memory, its 3 s baseline taken.
struct Stall {
    // Dropped first: the bystander leaves its cgroup before the cgroup is removed.
    b: Bystander,
    _cg: TestCgroup,
    d: Daemon,
    script: std::path::PathBuf,
    _dir: Scratch,
    base: (f64, f64),
}

impl Stall {
    fn start(tag: &str, extra: &[&str]) -> Stall {
        let d = Daemon::start_with(tag, extra);
        let dir = Scratch::new(tag);
        let script = dir.0.join("attacker.py");
        std::fs::write(&script, ATTACKER).unwrap();
        let cg =
            TestCgroup::new(&format!("{tag}-bystander"), &Limits { memory: Some(256 << 20), ..Default::default() });
        let pressure = d.psi().join("proc/pressure/memory");
        let b = Bystander::start(&cg, &dir.0, &[&d.path("proc/meminfo"), &pressure]);
        std::thread::sleep(Duration::from_millis(500));
        let from = now();
        std::thread::sleep(Duration::from_secs(3));
        Stall { b, _cg: cg, d, script, _dir: dir, base: (from, now()) }
    }

    /// Stops the bystander and holds both files' reads from the baseline's end to `until`
    /// to the baseline ([`assert_unharmed`]).
    fn assert_unharmed_until(&mut self, until: f64) {
        let samples = self.b.stop();
        let attack = (self.base.1, until);
        assert_unharmed(&samples, 0, "main mount meminfo", self.base, attack);
        assert_unharmed(&samples, 1, "trigger connection pressure/memory", self.base, attack);
    }
}

/// A container takes as many triggers as it can and exits; the kernel then releases them all.
/// Closing a trigger waits for an RCU grace period: done under the handle table's lock on the
/// connection's thread, 4 000 of them stalled every container's reads for half a minute. Now
/// a container holds at most its quota of triggers (EMFILE past it), and releases close them
/// in the background: a bystander's reads of the main mount and of the trigger connection
/// keep their latency.
fn dropping_many_triggers_stalls_no_bystander() {
    let test = "dropping_many_triggers_stalls_no_bystander";
    ready(test);
    let mut s = Stall::start("psi-drop", &[]);
    let mut a = Attacker::start(&s.d, &s.script, &["take", "4000"]);
    let (n, what, errno) = taken(&a.line());
    a.finish();
    // The releases (and, before, a stall) come after its exit.
    std::thread::sleep(Duration::from_secs(6));
    s.assert_unharmed_until(now());
    assert_eq!(
        (n, what.as_str(), errno),
        (cgprocfs::fuse::psi::TRIGGERS_PER_CONTAINER, "write", libc::EMFILE),
        "a container holds at most its quota of triggers, then EMFILE"
    );
    // Released and closed: the container's quota and the table are empty again.
    let mut again = Attacker::start(&s.d, &s.script, &["take", "100"]);
    let quota = cgprocfs::fuse::psi::TRIGGERS_PER_CONTAINER;
    assert_eq!(taken(&again.line()).0, quota, "a new container takes its own full quota");
}

/// Triggers are fds of the worker: bounded only by the handle cap, five cgroups used up a
/// 20 000 open-file limit and every container's trigger writes failed. All containers
/// together now hold at most half the worker's open-file limit left after a reserve of 1 024:
/// under a limit of 1 100 that is 38, so a second container gets 6 past the first one's 32.
fn all_containers_together_hold_triggers_within_the_open_file_limit() {
    let test = "all_containers_together_hold_triggers_within_the_open_file_limit";
    ready(test);
    let d = Daemon::start_with_nofile("psi-global", &[], 1100);
    let dir = Scratch::new("psi-global");
    let script = dir.0.join("attacker.py");
    std::fs::write(&script, ATTACKER).unwrap();
    let quota = cgprocfs::fuse::psi::TRIGGERS_PER_CONTAINER;
    let mut first = Attacker::start(&d, &script, &["take", "100"]);
    assert_eq!(taken(&first.line()), (quota, "write".to_string(), libc::EMFILE), "the first container's quota");
    let mut second = Attacker::start(&d, &script, &["take", "100"]);
    assert_eq!(taken(&second.line()), ((1100 - 1024) / 2 - quota, "write".to_string(), libc::EMFILE), "what is left");
    // The daemon still serves everyone: its own fds are not used up.
    assert!(std::fs::read(d.path("proc/meminfo")).is_ok_and(|b| !b.is_empty()));
}

/// A container polls as many triggers as the daemon lets it hold. Every wait used to rewrite
/// the whole list of waiting pollers and the watcher to re-poll the full set (1 000
/// triggers, 3 polls: 1.2 s of the worker's CPU, other containers' pressure reads stalled).
/// Now each wait, wakeup and release costs the same whatever the number of triggers: 1 000
/// triggers polled 5 times cost the worker little, and a bystander nothing.
fn polling_many_triggers_costs_the_worker_little_and_a_bystander_nothing() {
    let test = "polling_many_triggers_costs_the_worker_little_and_a_bystander_nothing";
    ready(test);
    // A quota far above the default, to poll many triggers from one container.
    let mut s = Stall::start("psi-poll", &["--triggers-per-container", "1000"]);
    let worker = s.d.worker_pid();
    let mut a = Attacker::start(&s.d, &s.script, &["take", "1000", "5"]);
    let (n, what, errno) = taken(&a.line());
    assert_eq!(n, 1000, "all taken ({what} {errno})");
    let (cpu0, t0) = (cpu_ticks(worker), now());
    assert_eq!(a.line(), "polled");
    let (cpu, attack_to) = (cpu_ticks(worker) - cpu0, now());
    a.finish();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    eprintln!("5 polls of 1000 triggers: {:.3} s of the worker's CPU in {:.2} s", cpu as f64 / hz, attack_to - t0);
    assert!(cpu as f64 / hz < 0.5, "5 polls of 1000 triggers cost the worker {:.2} s of CPU", cpu as f64 / hz);
    s.assert_unharmed_until(attack_to);
}

/// `python3 -c CODE` as user nobody on the host (no container): what it prints.
fn as_nobody(code: &str) -> String {
    let full = format!("import os\nos.setgroups([]); os.setgid(65534); os.setuid(65534)\n{code}");
    let out = Command::new("python3").args(["-c", &full]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The trigger connection is mounted beside the pid file, whose directory any user can
/// traverse, and its pressure files are 0666: a host user wrote a trigger that root then
/// registered. Its root is now 0500 (the kernel checks modes), like the cached tree's: only
/// root walks either; containers reach their files through their binds.
fn no_host_user_reaches_the_trigger_connection_or_the_cached_tree() {
    let test = "no_host_user_reaches_the_trigger_connection_or_the_cached_tree";
    live_ready(test);
    programs_ready(test, &["python3"]);
    let d = Daemon::start("psi-host-user");
    let pressure = d.psi().join("proc/pressure/memory");
    assert!(std::fs::metadata(&pressure).is_ok(), "root reaches the trigger connection");
    let code = |p: &std::path::Path, flags: &str| {
        format!(
            "try:\n    fd = os.open('{}', {flags})\n    print('opened')\nexcept OSError as e:\n    print(e.errno)",
            p.display()
        )
    };
    assert_eq!(as_nobody(&code(&pressure, "os.O_RDWR")), libc::EACCES.to_string(), "nobody opens a pressure file");
    assert_eq!(as_nobody(&code(&d.psi(), "os.O_RDONLY")), libc::EACCES.to_string(), "nobody lists the connection");
    assert_eq!(as_nobody(&code(&d.cache(), "os.O_RDONLY")), libc::EACCES.to_string(), "nobody lists the cached tree");
}

/// cgprocfs run's container reads its cached `/proc/meminfo` in a loop while host root reads
/// the same file through `/proc/<pid>/root` in a loop. Root's GETATTRs were answered with an
/// empty size, which made the kernel cut the container's cached pages: the container read
/// empty files. Now whoever reaches the file is told its container's attributes, and reads
/// its container's bytes: the container never sees an empty or short file.
fn no_outsider_empties_a_containers_cached_file() {
    let test = "no_outsider_empties_a_containers_cached_file";
    live_ready(test);
    programs_ready(test, &["python3"]);
    let d = Daemon::start("cached-outsider");
    let dir = Scratch::new("cached-outsider");
    let pidfile = dir.0.join("pid");
    // The container: waits for its pid to be read, then reads for 5 s, counting reads that
    // are empty or lack MemTotal.
    let reader = format!(
        "import os, time\nopen('{}', 'w').write('%d\\n' % os.getpid())\ntime.sleep(0.5)\n\
         n = bad = 0\nt = time.monotonic()\nwhile time.monotonic() - t < 5:\n    \
         s = open('/proc/meminfo').read()\n    n += 1\n    bad += not s.startswith('MemTotal:') or len(s) < 500\n\
         print(n, bad, flush=True)\n",
        pidfile.display()
    );
    let mut c = contained_python(&d, "64M", &["-c".as_ref(), reader.as_ref()]).stdout(Stdio::piped()).spawn().unwrap();
    let pid = wait_pid(&pidfile);
    let through = format!("/proc/{pid}/root/proc/meminfo");
    // Host root: three threads stat and read it as fast as they can.
    let outsider = format!(
        "import os, threading, time\nres = []\ndef go():\n    n = other = 0\n    t = time.monotonic()\n    \
         while time.monotonic() - t < 4:\n        try:\n            os.stat('{through}')\n            \
         s = open('{through}').read()\n        except OSError:\n            other += 1; continue\n        \
         n += 1\n        other += not (s.startswith('MemTotal:') and s.split()[1] == '65536')\n    res.append((n, other))\n\
         ts = [threading.Thread(target=go) for _ in range(3)]\n[x.start() for x in ts]\n[x.join() for x in ts]\n\
         print(sum(r[0] for r in res), sum(r[1] for r in res))\n"
    );
    let o = Command::new("python3").args(["-c", &outsider]).output().unwrap();
    let root_said = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let mut out = String::new();
    BufReader::new(c.stdout.take().unwrap()).read_line(&mut out).unwrap();
    let _ = c.wait();
    let nums = |s: &str| -> Vec<u64> { s.split_whitespace().filter_map(|x| x.parse().ok()).collect() };
    let (mine, roots) = (nums(&out), nums(&root_said));
    eprintln!("container reads, bad: {mine:?}; root's reads, not the container's: {roots:?}");
    assert!(mine.len() == 2 && mine[0] > 1000, "the container read: {out:?}");
    assert_eq!(mine[1], 0, "the container read {} empty or short files of {}", mine[1], mine[0]);
    assert!(roots.len() == 2 && roots[0] > 100, "root read: {root_said:?} {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(roots[1], 0, "root read the container's file and got something else {} times", roots[1]);
}

/// POLL on the main connection: a file there has no poll of its own, and the kernel asked the
/// daemon anyway, so a poll() waited on a busy or stopped worker (lxcfs's POLL for every file
/// left processes in D state and host suspend failing). The daemon now answers ENOSYS, after
/// which the kernel never asks again on that connection: with the worker stopped, a poll()
/// returns at once.
fn a_poll_on_the_main_mount_never_waits_on_the_daemon() {
    let test = "a_poll_on_the_main_mount_never_waits_on_the_daemon";
    live_ready(test);
    programs_ready(test, &["python3"]);
    let d = Daemon::start("poll-main");
    let code = format!(
        "import os, select, sys\nfd = os.open('{}', os.O_RDONLY)\np = select.poll(); p.register(fd, select.POLLIN)\n\
         print('first', p.poll(-1)[0][1], flush=True)\nsys.stdin.readline()\nprint('second', p.poll(-1)[0][1], flush=True)\n",
        d.path("proc/meminfo").display()
    );
    let mut c =
        Command::new("python3").args(["-c", &code]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("first"), "{first:?}");
    let _stopped = Stopped::new(d.worker_pid());
    writeln!(c.stdin.as_mut().unwrap()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut second = String::new();
        let _ = out.read_line(&mut second);
        let _ = tx.send(second);
    });
    let second = rx.recv_timeout(Duration::from_secs(3));
    let _ = c.kill();
    let _ = c.wait();
    let second = second.expect("poll() waited on a stopped worker");
    let ev: i32 = second.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(ev & libc::POLLIN as i32 != 0, "readable, as the kernel's default: {second:?}");
}

/// A process waiting in poll() on a trigger must not hold its cgroup's freezer (nor a host
/// suspend, which freezes every task the same way): the daemon answers every POLL at once
/// and the process sleeps in the kernel's poll, which freezes.
fn a_process_polling_a_trigger_freezes() {
    let test = "a_process_polling_a_trigger_freezes";
    ready(test);
    let d = Daemon::start("psi-freeze");
    let dir = Scratch::new("psi-freeze");
    let pidfile = dir.0.join("pid");
    let code = format!(
        "import os, select\nfd = os.open('/proc/pressure/memory', os.O_RDWR | os.O_NONBLOCK)\n\
         os.write(fd, b'some 100000 2000000')\np = select.poll(); p.register(fd, select.POLLPRI)\n\
         open('{}', 'w').write('%d\\n' % os.getpid())\np.poll(-1)\n",
        pidfile.display()
    );
    let mut c = contained_python(&d, "64M", &["-c".as_ref(), code.as_ref()]).spawn().unwrap();
    let pid = wait_pid(&pidfile);
    std::thread::sleep(Duration::from_millis(300));
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = info.lines().find(|l| l.contains(" - cgroup2 ")).unwrap().split(' ').nth(4).unwrap().to_string();
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim_start_matches('/').to_string();
    let cgdir = std::path::Path::new(&root).join(rel);
    std::fs::write(cgdir.join("cgroup.freeze"), "1").unwrap();
    let t = Instant::now();
    let frozen = loop {
        let ev = std::fs::read_to_string(cgdir.join("cgroup.events")).unwrap_or_default();
        if ev.lines().any(|l| l == "frozen 1") {
            break true;
        }
        if t.elapsed() > Duration::from_secs(5) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::write(cgdir.join("cgroup.freeze"), "0");
    // SAFETY: the poller this test's run started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = c.wait();
    assert!(frozen, "the cgroup of a process polling a trigger froze within 5 s");
}

crate::cgprocfs_tests!(
    dropping_many_triggers_stalls_no_bystander,
    polling_many_triggers_costs_the_worker_little_and_a_bystander_nothing,
    all_containers_together_hold_triggers_within_the_open_file_limit,
    no_host_user_reaches_the_trigger_connection_or_the_cached_tree,
    no_outsider_empties_a_containers_cached_file,
    a_poll_on_the_main_mount_never_waits_on_the_daemon,
    a_process_polling_a_trigger_freezes
);
