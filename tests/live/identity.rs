//! Identity of callers: a host pid recycled by another container's process is not taken for
//! its previous owner. (The identity of handles needs no kernel: `tests/offline/adapter.rs`.)

use crate::common;

use common::*;

const MIB: u64 = 1024 * 1024;

/// Runs `cat meminfo` in `cg` and returns (its pid, MemTotal).
fn read_in(cg: &TestCgroup, d: &Daemon) -> (u32, u64) {
    let c = cg
        .command(&format!("cat {}", d.path("proc/meminfo").display()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = c.id();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    (pid, field(&String::from_utf8_lossy(&out.stdout), "MemTotal"))
}

fn a_recycled_pid_is_not_taken_for_its_previous_owner() {
    live_ready("a_recycled_pid_is_not_taken_for_its_previous_owner");
    let d = Daemon::start("recycle");
    let a = TestCgroup::new("recycle-a", &Limits { memory: Some(128 * MIB), ..Default::default() });
    let b = TestCgroup::new("recycle-b", &Limits { memory: Some(256 * MIB), ..Default::default() });
    for _ in 0..50 {
        let (pa, ma) = read_in(&a, &d);
        assert_eq!(ma, 128 * 1024);
        // Another tick of start time, well inside the caller cache's lifetime.
        std::thread::sleep(std::time::Duration::from_millis(30));
        // The next process the host forks gets the same pid.
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pa - 1).to_string()).unwrap();
        let (pb, mb) = read_in(&b, &d);
        if pb != pa {
            continue; // another process took it first; try again
        }
        assert_eq!(mb, 256 * 1024, "pid {pb} of the 256 MiB cgroup was served the 128 MiB cgroup's meminfo");
        return;
    }
    panic!("could not get a pid recycled in 50 tries");
}

crate::cgprocfs_tests!(a_recycled_pid_is_not_taken_for_its_previous_owner,);
