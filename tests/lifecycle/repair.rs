//! Live: a keeper killed outside any service manager takes its connection with it, and every
//! container's bind mount answers ENOTCONN. The next `serve` repairs them inside their mount
//! namespaces, without restarting them; `cgprocfs reattach` does the same by hand.

use crate::common;

use common::loops::{collect, kill_cgroups, reader};
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

fn containers_read_again_after_the_keeper_is_killed_and_a_new_serve_starts() {
    let test = "containers_read_again_after_the_keeper_is_killed_and_a_new_serve_starts";
    live_ready(test);
    programs_ready(test, &["unshare", "head"]);
    let mut d = Daemon::start("repair");
    let small = TestCgroup::new("rp-small", &Limits { memory: Some(128 * MIB), ..Default::default() });
    let big = TestCgroup::new("rp-big", &Limits { memory: Some(384 * MIB), ..Default::default() });
    let readers = vec![collect(reader(&small, &d), 128 * 1024), collect(reader(&big, &d), 384 * 1024)];
    std::thread::sleep(Duration::from_millis(500));

    // The whole daemon dies at once (the worker follows its keeper: PDEATHSIG).
    let killed = Instant::now();
    d.signal_and_wait(libc::SIGKILL);
    std::thread::sleep(Duration::from_secs(1));
    let restarted = Instant::now();
    d.spawn(&[]);
    // Readers recover within a few seconds: wait until the daemon logged its repair.
    let t = Instant::now();
    let repaired = |log: String| {
        log.lines()
            .filter(|l| l.contains("reattached") && l.contains(" /proc/meminfo") && l.contains(" /proc/stat"))
            .count()
    };
    while repaired(d.log()) < 2 {
        assert!(t.elapsed() < Duration::from_secs(10), "no repair logged:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    // By hand, nothing is left to do.
    let out = Command::new(bin()).arg("reattach").arg(&d.mnt).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nothing to reattach");
    kill_cgroups(&[&small, &big]);
    for h in readers {
        let (mut child, s) = h.join().unwrap();
        let _ = child.wait();
        let last_fail = s.last_fail.expect("the readers saw the dead connection");
        let outage = last_fail.duration_since(killed);
        let after_restart = last_fail.saturating_duration_since(restarted);
        eprintln!("reader: {s:?}; failed for {outage:?}, of which {after_restart:?} after the new serve started");
        assert!(after_restart < Duration::from_secs(5), "recovered {after_restart:?} after the new serve");
        assert!(s.wrong.is_empty(), "wrong contents: {:?}", &s.wrong[..s.wrong.len().min(5)]);
        assert!(s.lines > s.failed + 50, "the reader read nothing after the repair: {s:?}");
    }
}

fn reattach_by_hand_repairs_a_container_and_says_so() {
    let test = "reattach_by_hand_repairs_a_container_and_says_so";
    live_ready(test);
    programs_ready(test, &["unshare", "sleep", "cat"]);
    let mut d = Daemon::start_with("reattach", &["--no-reattach"]);
    let cg = TestCgroup::new("rp-hand", &Limits { memory: Some(192 * MIB), ..Default::default() });
    let meminfo = d.path("proc/meminfo");
    // A container that binds meminfo and then waits, reading it when told (a file appears).
    let go = d.own_file("go");
    let c = cg
        .command(&format!(
            "unshare -m sh -c 'mount --bind {} /proc/meminfo && while [ ! -e {} ]; do sleep 0.05; done; head -n1 /proc/meminfo'",
            meminfo.display(),
            go.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    d.signal_and_wait(libc::SIGKILL);
    // A daemon that does not repair by itself leaves it broken until reattach runs.
    d.spawn(&["--no-reattach"]);
    let out = Command::new(bin()).arg("reattach").arg(&d.mnt).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    // Named among the repaired files ("reattached N [...]"), not among those left alone.
    let repaired = said.lines().any(|l| l.split("; left alone").next().is_some_and(|r| r.contains("/proc/meminfo")));
    assert!(repaired, "reattach did not repair the container's meminfo: {said}");
    std::fs::write(&go, "").unwrap();
    let o = c.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1), Some("196608"), "{o:?}");
}

fn a_run_commands_cached_files_are_repaired_after_the_keeper_is_killed() {
    let test = "a_run_commands_cached_files_are_repaired_after_the_keeper_is_killed";
    live_ready(test);
    programs_ready(test, &["findmnt", "head", "sleep"]);
    let mut d = Daemon::start("repair-cached");
    let go = Flag(d.own_file("go-cached"));
    // A command of `cgprocfs run` (its own cached files bound, the pressure files from the
    // trigger connection) that waits, then reads and writes a PSI trigger.
    let c = Command::new(bin())
        .args(["run", "--memory", "160M", "--no-seccomp", "--mountpoint"])
        .arg(&d.mnt)
        .args(["--", "sh", "-c"])
        .arg(format!(
            "findmnt -n -o SOURCE /proc/meminfo; findmnt -n -o SOURCE /proc/pressure/memory; \
             while [ ! -e {} ]; do sleep 0.05; done; head -n1 /proc/meminfo; \
             echo 'some 150000 2000000' > /proc/pressure/memory && echo psi-armed",
            go.0.display()
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    d.signal_and_wait(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    d.spawn(&[]);
    let t = Instant::now();
    while !(d.log().contains("/proc/meminfo") && d.log().contains("/proc/pressure/memory")) {
        assert!(t.elapsed() < Duration::from_secs(10), "no repair logged:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    go.raise();
    let o = c.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("cgprocfs-cache:"), "the command had its cached files: {out}");
    assert_eq!(field(&out, "MemTotal"), 160 * 1024, "{out} {}\n{}", String::from_utf8_lossy(&o.stderr), d.log());
    assert!(
        out.lines().nth(1).is_some_and(|l| l.starts_with("cgprocfs-psi:")),
        "pressure from the trigger connection: {out}"
    );
    // Repaired writable: a trigger is taken by the new daemon.
    assert!(out.contains("psi-armed"), "{out} {}\n{}", String::from_utf8_lossy(&o.stderr), d.log());
}

crate::cgprocfs_tests!(
    containers_read_again_after_the_keeper_is_killed_and_a_new_serve_starts,
    reattach_by_hand_repairs_a_container_and_says_so,
    a_run_commands_cached_files_are_repaired_after_the_keeper_is_killed,
);
