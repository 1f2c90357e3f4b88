//! The worker's OOM standing: the keeper runs at oom_score_adj -1000 (the unit's
//! OOMScoreAdjust), the worker resets itself to 0. Lowering a score needs CAP_SYS_RESOURCE,
//! which a sandboxed host may not grant root; the VM tier (tests/vm.rs, `CGPROCFS_IN_VM`) runs
//! this binary in a guest that has it, so under CI it always runs there.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn can_lower_oom_score() -> bool {
    std::fs::write("/proc/self/oom_score_adj", "-1").is_ok() && std::fs::write("/proc/self/oom_score_adj", "0").is_ok()
}

/// The keeper runs at oom_score_adj -1000 (the unit's OOMScoreAdjust); its worker must not
/// inherit that: it is what grows under abuse, and it is replaced at once.
#[test]
fn the_worker_is_not_the_oom_killers_last_choice() {
    if !live_ready("the_worker_is_not_the_oom_killers_last_choice") {
        return;
    }
    if !can_lower_oom_score() {
        assert!(std::env::var_os("CGPROCFS_IN_VM").is_none(), "the VM guest must grant CAP_SYS_RESOURCE");
        eprintln!("SKIPPED: needs CAP_SYS_RESOURCE (run in the VM tier)");
        return;
    }
    let d = Daemon::start("oom");
    std::fs::write(format!("/proc/{}/oom_score_adj", d.pid()), "-1000").unwrap();
    let w = d.worker_pid();
    // SAFETY: the worker of the daemon this test started.
    unsafe { libc::kill(w, libc::SIGKILL) };
    let t = Instant::now();
    while d.worker_pid() == w {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let adj =
        |p: i32| std::fs::read_to_string(format!("/proc/{p}/oom_score_adj")).unwrap().trim().parse::<i32>().unwrap();
    assert_eq!(adj(d.pid()), -1000);
    assert!(adj(d.worker_pid()) >= 0, "the worker inherited the keeper's -1000");
}
