//! Live: a second `serve`, started in another mount namespace, takes a running keeper's
//! connection over while containers read in a tight loop — three times in a row — and no read
//! fails, none shows another container's content, no counter goes backwards. An incompatible
//! handover request is refused and the keeper goes on serving.

use crate::common;

use common::loops::{collect, kill_cgroups, reader};
use common::*;
use std::process::{Child, Command};
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

fn a_new_serve_takes_the_connection_over_three_times_without_a_failed_read() {
    let test = "a_new_serve_takes_the_connection_over_three_times_without_a_failed_read";
    live_ready(test);
    programs_ready(test, &["unshare", "head"]);
    let mut d = Daemon::start("handover");
    let small = TestCgroup::new("ho-small", &Limits { memory: Some(128 * MIB), ..Default::default() });
    let big = TestCgroup::new("ho-big", &Limits { memory: Some(384 * MIB), ..Default::default() });
    let readers = vec![collect(reader(&small, &d), 128 * 1024), collect(reader(&big, &d), 384 * 1024)];
    std::thread::sleep(Duration::from_millis(500));

    // The first keeper is the test's child; the next ones are unshare's children.
    let mut old = d.pid();
    let mut keepers: Vec<Child> = Vec::new();
    for n in 0..3 {
        let k = take_over(&d, old, n);
        old = k.id() as i32;
        keepers.push(k);
        if n == 0 {
            // The first keeper exited by itself: reap it.
            let st = d.signal_and_wait(0);
            assert!(st.success(), "the old keeper exits cleanly after a handover: {st}");
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    // The last keeper serves: a host read works and the pid file is its.
    let pid = std::fs::read_to_string(d.own_file("keeper.pid")).unwrap();
    assert_eq!(pid.trim(), old.to_string(), "the pid file names the serving keeper");
    assert!(std::fs::read_to_string(d.path("proc/meminfo")).unwrap().starts_with("MemTotal:"));

    // Stop the readers (every process of their cgroups), then the last keeper.
    kill_cgroups(&[&small, &big]);
    let mut total = 0;
    for h in readers {
        let (mut child, s) = h.join().unwrap();
        let _ = child.wait();
        eprintln!("reader: {s:?}");
        total += s.lines;
        assert_eq!(s.failed, 0, "failed reads: {s:?}");
        assert!(s.wrong.is_empty(), "wrong contents: {:?}", &s.wrong[..s.wrong.len().min(5)]);
        assert!(s.backwards.is_empty(), "counters went backwards: {:?}", s.backwards);
        assert!(s.lines > 100, "the reader hardly read: {s:?}");
    }
    eprintln!("{total} lines read across three handovers");
    for mut k in keepers {
        // SAFETY: a pid this test started (unshare execs serve).
        unsafe { libc::kill(k.id() as i32, libc::SIGTERM) };
        let _ = k.wait();
    }
}

fn an_incompatible_handover_is_refused_and_the_keeper_serves_on() {
    let test = "an_incompatible_handover_is_refused_and_the_keeper_serves_on";
    live_ready(test);
    programs_ready(test, &["python3"]);
    let d = Daemon::start("handover-refused");
    let ctl = d.own_file("keeper.ctl");
    // A client speaking a future protocol, over the same SOCK_SEQPACKET socket.
    let out = Command::new("python3")
        .args([
            "-c",
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
             s.connect(sys.argv[1])\n\
             s.send(b'{\"handover\": 99, \"binary\": \"future\"}')\n\
             print(s.recv(65536).decode())",
        ])
        .arg(&ctl)
        .output()
        .unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(reply.contains("refused") && reply.contains("99"), "{reply}");
    // Still serving, with its worker.
    assert!(std::fs::read_to_string(d.path("proc/meminfo")).unwrap().starts_with("MemTotal:"));
    assert!(d.worker_pid() > 0);
    assert!(d.log().contains("refused a handover"), "{}", d.log());
}

crate::cgprocfs_tests!(
    a_new_serve_takes_the_connection_over_three_times_without_a_failed_read,
    an_incompatible_handover_is_refused_and_the_keeper_serves_on,
);
