//! The worker's OOM standing: the keeper runs at oom_score_adj -1000 (the unit's
//! OOMScoreAdjust), the worker resets itself to 0. Lowering a score needs CAP_SYS_RESOURCE,
//! which a sandboxed host may not grant root: the test then ends as ignored, saying so in the
//! summary (also under CI), and the VM tier (tests/vm/main.rs) runs it in guests that have it, so
//! under CI it always runs there.

use crate::common;

use common::*;
use std::time::{Duration, Instant};

/// The keeper runs at oom_score_adj -1000 (the unit's OOMScoreAdjust); its worker must not
/// inherit that: it is what grows under abuse, and it is replaced at once.
fn the_worker_is_not_the_oom_killers_last_choice() {
    live_ready("the_worker_is_not_the_oom_killers_last_choice");
    // Probed on this process: lowering its own score needs the capability too (raising it
    // back does not).
    let own = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
    if std::fs::write("/proc/self/oom_score_adj", "-1").is_err() {
        common::harness::ignore("needs CAP_SYS_RESOURCE (lowering an oom_score_adj); the VM tier runs it");
    }
    let _ = std::fs::write("/proc/self/oom_score_adj", own.trim());
    let d = Daemon::start("oom");
    std::fs::write(format!("/proc/{}/oom_score_adj", d.pid()), "-1000")
        .expect("lowering the keeper's oom_score_adj needs CAP_SYS_RESOURCE");
    let w = d.worker_pid();
    // SAFETY: the worker of the daemon this test started.
    unsafe { libc::kill(w, libc::SIGKILL) };
    let t = Instant::now();
    while d.worker_pid() == w {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    let adj =
        |p: i32| std::fs::read_to_string(format!("/proc/{p}/oom_score_adj")).unwrap().trim().parse::<i32>().unwrap();
    // The new worker resets itself as it starts (slow in an emulated guest): wait for it.
    let t = Instant::now();
    while adj(d.worker_pid()) < 0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(adj(d.pid()), -1000);
    assert!(adj(d.worker_pid()) >= 0, "the worker inherited the keeper's -1000");
}

crate::cgprocfs_tests!(the_worker_is_not_the_oom_killers_last_choice,);
