//! Live: an administrator detaches the mount under a running keeper (`umount -l`). The keeper
//! goes on serving the containers' binds that still use its connection, gives its seccomp and
//! control sockets up at once, so a new `serve` on the mount point gets them, and exits by
//! itself once the last bind is gone. (A file of its own: other tests' `unshare -m` would copy
//! the detached mount and keep the connection in use.)

use crate::common;

use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn a_detached_keeper_gives_its_sockets_up_and_exits_once_unused() {
    let test = "a_detached_keeper_gives_its_sockets_up_and_exits_once_unused";
    live_ready(test);
    programs_ready(test, &["unshare", "head"]);
    let mut d = Daemon::start("detached");
    let cg = TestCgroup::new("detached", &Limits { memory: Some(160 << 20), ..Default::default() });
    let go = d.own_file("go");
    let container = cg
        .command(&format!(
            "unshare -m sh -c 'mount --bind {} /proc/meminfo && while [ ! -e {} ]; do sleep 0.05; done; head -n1 /proc/meminfo'",
            d.path("proc/meminfo").display(),
            go.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let c = std::ffi::CString::new(d.mnt.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: valid path string; the mount this test's daemon made.
    assert_eq!(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }, 0);
    let mut old = d.child.take().unwrap();
    d.spawn(&[]);
    let log = d.log();
    assert!(log.contains("seccomp listener ready"), "the new serve has no seccomp listener:\n{log}");
    assert!(!log.contains("listener disabled") && !log.contains("cannot hand over"), "{log}");
    assert!(old.try_wait().unwrap().is_none(), "the old keeper serves the container's bind until it goes");

    // The container still reads through the old connection, then exits.
    std::fs::write(&go, "").unwrap();
    let out = container.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1), Some("163840"), "{out:?}");
    let t = Instant::now();
    let st = loop {
        if let Some(st) = old.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the old keeper lingers with no mount using its connection");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success(), "{st}");
    assert!(d.log().contains("the connection ended"), "{}", d.log());
    // The new daemon serves on, and owns the pid file.
    let pid = std::fs::read_to_string(d.own_file("keeper.pid")).unwrap();
    assert_eq!(pid.trim(), d.pid().to_string());
    assert!(std::fs::read_to_string(d.path("proc/meminfo")).unwrap().starts_with("MemTotal:"));
}

crate::cgprocfs_tests!(a_detached_keeper_gives_its_sockets_up_and_exits_once_unused,);
