//! Live: files root writes are never redirected by another user — a directory prepared under
//! the name `cgprocfs run` would use, and pid files whose names differ only after a dot.

use crate::common;

use common::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

/// A world-writable, sticky directory like /tmp, private to this test.
fn sticky_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

/// `cmd` as user nobody (65534).
fn as_nobody(cmd: &str) {
    let st = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", cmd])
        .status()
        .unwrap();
    assert!(st.success(), "as nobody: {cmd}");
}

/// A local user learns the pid `cgprocfs run` will have (it is its parent's until exec) and
/// prepares the directory it would use, with its pid file a symlink to a root-owned file.
fn run_never_writes_through_a_prepared_directory() {
    let test = "run_never_writes_through_a_prepared_directory";
    live_ready(test);
    programs_ready(test, &["setpriv"]);
    let tmp = sticky_dir("run-tmp");
    let secret = std::env::temp_dir().join(unique("victim"));
    std::fs::create_dir_all(&secret).unwrap();
    let victim = secret.join("victim");
    std::fs::write(&victim, "root's data\n").unwrap();
    // The shell execs cgprocfs run (same pid) once told to.
    let mut sh = Command::new("sh")
        .args(["-c", &format!("read go; exec {} run --mountpoint /nonexistent -- true", bin())])
        .env("TMPDIR", &tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let prepared = tmp.join(format!("cgprocfs-run-{}", sh.id()));
    as_nobody(&format!(
        "mkdir -p {p}/mnt && chmod 777 {p} && for f in keeper.pid keeper.state keeper.sock keeper.accounts; do ln -s {v} {p}/$f; done",
        p = prepared.display(),
        v = victim.display()
    ));
    sh.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = sh.wait_with_output().unwrap();
    let after = std::fs::read_to_string(&victim).unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&secret);
    assert_eq!(after, "root's data\n", "root wrote through a symlink a local user planted");
    assert!(out.status.success(), "run failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Pid files as `mktemp` names them (`tmp.XXXXXX`) in one directory: each daemon's state,
/// records and socket are its own.
fn daemons_with_dotted_pid_files_share_nothing() {
    let test = "daemons_with_dotted_pid_files_share_nothing";
    live_ready(test);
    let dir = std::env::temp_dir().join(unique("dotted"));
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _c = Cleanup(dir.clone());
    let pidfiles = [dir.join("tmp.AbC123"), dir.join("tmp.XyZ789")];
    let daemons: Vec<Daemon> =
        pidfiles.iter().map(|p| Daemon::start_with("dotted", &["--pidfile", p.to_str().unwrap()])).collect();
    let cg = TestCgroup::new("dotted", &Limits { cpu: Some((50_000, 100_000)), ..Default::default() });
    for d in &daemons {
        assert!(cg.run(&format!("cat {}", d.path("proc/stat").display())).starts_with("cpu "));
        assert!(!d.log().contains("seccomp listener disabled"), "{}", d.log());
    }
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    for n in &names {
        assert!(
            n.starts_with("tmp.AbC123") || n.starts_with("tmp.XyZ789"),
            "{n} belongs to no single daemon: {names:?}"
        );
    }
    assert!(names.iter().filter(|n| n.ends_with(".sock")).count() == 2, "{names:?}");
}

/// The keeper refuses a pid file directory another user can write (it would write its pid,
/// state and records there as root).
fn keeper_refuses_a_pid_file_directory_others_can_write() {
    let test = "keeper_refuses_a_pid_file_directory_others_can_write";
    live_ready(test);
    let dir = sticky_dir("open-dir");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut child = Command::new(bin())
        .arg("serve")
        .arg(&mnt)
        .arg("--pidfile")
        .arg(dir.join("keeper.pid"))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if t.elapsed() > std::time::Duration::from_secs(5) {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    if status.is_none() {
        // SAFETY: the daemon this test started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let out = child.wait_with_output().unwrap();
    let mounted = is_mounted(&mnt);
    if mounted {
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.is_some_and(|s| !s.success()) && !mounted, "served with its pid file in a world-writable directory");
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable by other users"), "{out:?}");
}

crate::cgprocfs_tests!(
    run_never_writes_through_a_prepared_directory,
    daemons_with_dotted_pid_files_share_nothing,
    keeper_refuses_a_pid_file_directory_others_can_write,
);
