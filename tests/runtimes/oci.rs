//! Live: real runc (Debian's) running a busybox-static rootfs built by the test, with
//! `cgprocfs oci-hook` as its createContainer hook and limits in `linux.resources`.

use crate::common;

use common::bundle::{busybox_rootfs, runc_ready, Bundle};
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

// `head` and `grep` read(2); BusyBox `cat`'s sendfile path is covered by tests/live/readers.rs.
const SCRIPT: &str =
    "head -n 1 /proc/meminfo; grep -c ^processor /proc/cpuinfo; head -n 1 /sys/devices/system/cpu/online; \
                      head -n 1 /proc/uptime; grep -c ^cpu[0-9] /proc/stat; head -n 1 /proc/loadavg";

fn runc_container_sees_its_limits_through_the_hook() {
    runc_ready("runc_container_sees_its_limits_through_the_hook");
    let d = Daemon::start("runc");
    let b = Bundle::new("runc", SCRIPT).with_hook(&d.mnt).write();
    let (ok, out, err) = b.run();
    assert!(ok, "runc failed: {err}");
    eprintln!("{out}{err}");
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(field(l[0], "MemTotal"), 262_144, "{out}");
    let n = host_cpus().min(2);
    assert_eq!(l[1], n.to_string(), "{out}");
    assert_eq!(l[2], if n == 1 { "0".to_string() } else { format!("0-{}", n - 1) });
    let uptime: f64 = l[3].split_whitespace().next().unwrap().parse().unwrap();
    assert!(uptime < 10.0, "container uptime {}", l[3]);
    assert_eq!(l[4], n.to_string(), "cpuN lines of /proc/stat: {out}");
    let load: Vec<&str> = l[5].split_whitespace().collect();
    assert_eq!(load.len(), 5, "{}", l[5]);
    // The container's pid namespace is small: its last pid is too.
    assert!(load[4].parse::<u64>().unwrap() < 100, "{}", l[5]);
    assert!(b.hook_log().contains("bound [\"proc/meminfo\""), "{}", b.hook_log());
    // runc runs the hook inside the container's pid namespace and says pid 1: the hook still
    // finds the container's own cached files (it used to key them by the host's pid 1).
    assert!(b.hook_log().contains("(own cached files)"), "{}", b.hook_log());
}

fn container_starts_without_a_daemon_and_can_opt_out() {
    runc_ready("container_starts_without_a_daemon_and_can_opt_out");
    let host_total = field(&std::fs::read_to_string("/proc/meminfo").unwrap(), "MemTotal");
    // Nothing serves this mount point: the hook logs why and the container runs unchanged.
    let nowhere = std::env::temp_dir().join(unique("nodaemon"));
    std::fs::create_dir_all(&nowhere).unwrap();
    let b = Bundle::new("nodaemon", SCRIPT).with_hook(&nowhere).write();
    let (ok, out, err) = b.run();
    let _ = std::fs::remove_dir(&nowhere);
    assert!(ok, "the container must start without the daemon: {err}");
    assert_eq!(field(out.lines().next().unwrap(), "MemTotal"), host_total);
    assert!(b.hook_log().contains("no cgprocfs daemon is serving"), "the hook says why: {}", b.hook_log());
    assert!(!nowhere.join("proc").exists(), "the hook must not create anything");

    // Opted out by annotation: the daemon serves, the container keeps its own files.
    let d = Daemon::start("optout");
    let b = Bundle::new("optout", SCRIPT).with_hook(&d.mnt).annotate(json!({"io.cgprocfs.disable": "true"})).write();
    let (ok, out, err) = b.run();
    assert!(ok, "{err}");
    assert_eq!(field(out.lines().next().unwrap(), "MemTotal"), host_total);
    assert!(b.hook_log().contains("opted out"), "{}", b.hook_log());
}

/// Real podman (`--runtime runc`) with `--hooks-dir` holding the packaged hooks.d file (its
/// binary path and mount point pointed at this build and this test's daemon).
fn podman_with_the_packaged_hook() {
    runc_ready("podman_with_the_packaged_hook");
    programs_ready("podman_with_the_packaged_hook", &["podman"]);
    let d = Daemon::start("podman");
    let dir = std::env::temp_dir().join(unique("podman"));
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs, &["sh", "head", "grep"]);
    let image = format!("localhost/{}:1", unique("img"));
    struct Cleanup(PathBuf, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("podman").args(["rmi", "-f", &self.1]).output();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone(), image.clone());
    let tar = dir.join("rootfs.tar");
    assert!(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").status().unwrap().success());
    let imp = Command::new("podman").arg("import").arg(&tar).arg(&image).output().unwrap();
    assert!(imp.status.success(), "{}", String::from_utf8_lossy(&imp.stderr));

    let packaged = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/oci-hooks.d/cgprocfs.json");
    let mut hook: Value = serde_json::from_str(&std::fs::read_to_string(packaged).unwrap()).unwrap();
    assert_eq!(hook["stages"], json!(["createContainer"]));
    hook["hook"]["path"] = json!(bin());
    hook["hook"]["args"] = json!([
        "cgprocfs",
        "oci-hook",
        "--mountpoint",
        d.mnt.to_string_lossy(),
        "--log",
        dir.join("hook.log").to_string_lossy()
    ]);
    let hooks = dir.join("hooks.d");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::write(hooks.join("cgprocfs.json"), serde_json::to_string(&hook).unwrap()).unwrap();

    let run_script = |extra: &[&str], script: &str| {
        let out = Command::new("podman")
            .args(["--runtime", "runc", "--hooks-dir"])
            .arg(&hooks)
            .args(["run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"])
            .args(["--memory", "256m", "--cpus", "1.5"])
            .args(extra)
            .args([&image, "sh", "-c", script])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run = |extra: &[&str]| run_script(extra, SCRIPT);
    let (ok, out, err) = run(&[]);
    assert!(ok, "podman failed: {err}");
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(field(l[0], "MemTotal"), 262_144, "{out}");
    assert_eq!(l[1], host_cpus().min(2).to_string(), "{out}");
    assert!(l[3].split_whitespace().next().unwrap().parse::<f64>().unwrap() < 10.0, "{out}");

    // The pressure files come from the daemon's trigger connection, writable (the rest stay
    // read-only): a PSI trigger written inside the container is taken.
    let script = "echo 'some 150000 2000000' > /proc/pressure/memory && echo psi-armed; \
                  grep ' /proc/pressure/memory ' /proc/self/mountinfo; grep ' /proc/meminfo ' /proc/self/mountinfo";
    let (ok, out, err) = run_script(&[], script);
    assert!(ok && out.contains("psi-armed"), "a trigger inside the container: {out}{err}");
    let opts = |l: &str| l.split_whitespace().nth(5).unwrap_or_default().to_string();
    let mounts: Vec<&str> = out.lines().filter(|l| l.contains("fuse.cgprocfs")).collect();
    assert_eq!(mounts.len(), 2, "{out}");
    assert!(opts(mounts[0]).starts_with("rw,"), "pressure bound writable: {out}");
    assert!(opts(mounts[1]).starts_with("ro,"), "meminfo bound read-only: {out}");

    // The packaged seccomp profile (podman's default with sysinfo notified), pointed at this
    // daemon's socket: BusyBox free and uptime, which take sysinfo(2), see the container.
    let packaged = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/seccomp/cgprocfs-seccomp.json");
    let mut profile: Value = serde_json::from_str(&std::fs::read_to_string(packaged).unwrap()).unwrap();
    profile["listenerPath"] = json!(d.seccomp_socket());
    let profile_path = dir.join("seccomp.json");
    std::fs::write(&profile_path, serde_json::to_string(&profile).unwrap()).unwrap();
    let opt = format!("seccomp={}", profile_path.display());
    let (ok, out, err) = run_script(&["--security-opt", &opt], "free -m; uptime");
    assert!(ok, "podman with the seccomp profile failed: {err}");
    assert_eq!(mem_total_mib(&out), 256, "{out}");
    assert!(out.contains("up 0 min"), "{out}");

    // With the daemon stopped the container still starts, with its own files.
    drop(d);
    let (ok, out, err) = run(&[]);
    assert!(ok, "podman must start the container without the daemon: {err}");
    let host_total = field(&std::fs::read_to_string("/proc/meminfo").unwrap(), "MemTotal");
    assert_eq!(field(out.lines().next().unwrap(), "MemTotal"), host_total);
}

/// An image whose `/sys/devices` is a symlink to a host directory (and a config without a
/// sysfs mount, so nothing covers it): the hook must not bind the cpu directory through it.
/// The host directory is a shared mount and the container's root propagation shared, so a
/// mount that escaped would show up in the host's mount table.
fn hook_never_mounts_through_an_image_symlink() {
    let test = "hook_never_mounts_through_an_image_symlink";
    runc_ready(test);
    let d = Daemon::start("escape");
    let host = std::env::temp_dir().join(unique("escape-host"));
    let target = host.join("system/cpu");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("precious"), "host data").unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            for p in [self.0.join("system/cpu"), self.0.clone()] {
                let _ = Command::new("umount").arg("-l").arg(&p).output();
            }
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _host = Unmount(host.clone());
    let st = Command::new("mount").arg("--bind").arg(&host).arg(&host).status().unwrap();
    assert!(st.success());
    let st = Command::new("mount").arg("--make-shared").arg(&host).status().unwrap();
    assert!(st.success());
    let mut b = Bundle::new("escape", "ls /sys/devices/system/cpu; head -n 1 /proc/meminfo");
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    mounts.retain(|m| m["destination"] != "/sys");
    b.config["linux"]["rootfsPropagation"] = json!("shared");
    std::fs::create_dir_all(b.rootfs().join("sys")).unwrap();
    std::os::unix::fs::symlink(&host, b.rootfs().join("sys/devices")).unwrap();
    let b = b.with_hook(&d.mnt).write();
    let (ok, out, err) = b.run();
    eprintln!("{out}{err}\n{}", b.hook_log());
    let escaped = is_mounted(&target);
    assert!(!escaped, "the hook mounted onto the host's {}", target.display());
    assert!(ok, "the container must still start: {err}");
    assert!(std::fs::read_to_string(target.join("precious")).is_ok_and(|t| t == "host data"));
    let log = b.hook_log();
    assert!(log.contains("\"sys/devices/system/cpu\", \"cannot resolve"), "skipped with the reason: {log}");
    // The files under the container's real procfs are still bound.
    assert_eq!(field(out.lines().last().unwrap_or_default(), "MemTotal"), 262_144, "{out}");
}

/// Targets that are not the container's procfs (a tmpfs where /proc should be) are skipped;
/// the read-only bind carries noexec, nosuid and nodev.
fn hook_binds_only_onto_procfs_and_keeps_noexec() {
    let test = "hook_binds_only_onto_procfs_and_keeps_noexec";
    runc_ready(test);
    let d = Daemon::start("procfs-only");
    let b =
        Bundle::new("procfs-only", "grep -E ' /proc/(meminfo|stat) ' /proc/self/mountinfo").with_hook(&d.mnt).write();
    let (ok, out, err) = b.run();
    assert!(ok, "{err}");
    for line in out.lines() {
        let opts = line.split(' ').nth(5).unwrap_or_default();
        for o in ["ro", "nosuid", "nodev", "noexec"] {
            assert!(opts.split(',').any(|x| x == o), "{o} missing: {line}");
        }
    }
    assert_eq!(out.lines().count(), 2, "{out}");

    // /proc a tmpfs: nothing is bound under it.
    let mut b = Bundle::new("not-procfs", "head -n 1 /proc/meminfo");
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    for m in mounts.iter_mut().filter(|m| m["destination"] == "/proc") {
        *m = json!({"destination": "/proc", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]});
    }
    std::fs::write(b.rootfs().join("placeholder"), "").unwrap();
    let b = b.with_hook(&d.mnt).write();
    // (runc may refuse a /proc that is not procfs; either way the hook binds nothing there.)
    let _ = b.run();
    let log = b.hook_log();
    assert!(log.contains("is not the container's procfs"), "{log}");
    assert!(!log.contains("bound [\"proc/meminfo\""), "{log}");
}

crate::cgprocfs_tests!(
    runc_container_sees_its_limits_through_the_hook,
    container_starts_without_a_daemon_and_can_opt_out,
    podman_with_the_packaged_hook,
    hook_never_mounts_through_an_image_symlink,
    hook_binds_only_onto_procfs_and_keeps_noexec,
);
