//! Live: the DaemonSet's image (packaging/Containerfile, built offline by
//! packaging/build-image.sh) run with podman the way the pod spec runs it — privileged, the
//! host's pid namespace and cgroups, the mount directory shared back to the host, the shared
//! /run/cgprocfs, /dev/fuse. A process on the host reads its own limit through the mount the
//! pod serves; then a second image (a rebuilt tag) starts alongside, as a `maxSurge: 1`
//! rollout does, takes the connection over, and the old pod is deleted: readers in a tight
//! loop see no failed read.

use crate::common;

use common::loops::{collect, kill_cgroups, reader_of};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

/// Removes what the test made, even when it fails: pods, images, the mounts, the directory.
struct Cleanup {
    pods: Vec<String>,
    images: Vec<String>,
    dir: PathBuf,
    mnt: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.pods {
            let _ = Command::new("podman").args(["rm", "-f", "-t", "2", p]).output();
        }
        for i in &self.images {
            let _ = Command::new("podman").args(["rmi", "-f", i]).output();
        }
        // The FUSE mount propagated back, then the shared bind under it.
        while is_mounted(&self.mnt) {
            let c = std::ffi::CString::new(self.mnt.to_string_lossy().as_bytes()).unwrap();
            // SAFETY: valid path string; mounts this test made.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                break;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `podman run -d` of `image` as the DaemonSet's pod spec runs it.
fn run_pod(name: &str, image: &str, run: &Path, mnt: &Path) {
    // The rlimits podman would set by default may exceed what this host allows.
    let (nofile, nproc) = (hard_limit(libc::RLIMIT_NOFILE), hard_limit(libc::RLIMIT_NPROC).min(4096));
    sh(Command::new("podman")
        .args(["run", "-d", "--name", name, "--privileged", "--pid=host", "--cgroupns=host", "--network=none"])
        .args(["--ulimit", &format!("nofile={nofile}:{nofile}"), "--ulimit", &format!("nproc={nproc}:{nproc}")])
        .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup", "--device", "/dev/fuse"])
        .arg("-v")
        .arg(format!("{}:/run/cgprocfs", run.display()))
        .arg("-v")
        .arg(format!("{}:/var/lib/cgprocfs:rshared", mnt.display()))
        .args([image, "serve", "/var/lib/cgprocfs", "--linger"]));
}

fn hard_limit(res: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit into a local struct.
    unsafe { libc::getrlimit(res, &mut r) };
    r.rlim_max.min(1 << 20)
}

fn logs(name: &str) -> String {
    let o = Command::new("podman").args(["logs", name]).output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn the_daemonset_image_serves_the_host_and_a_rollout_hands_over_without_a_failed_read() {
    let test = "the_daemonset_image_serves_the_host_and_a_rollout_hands_over_without_a_failed_read";
    live_ready(test);
    programs_ready(test, &["podman", "ldd", "unshare", "head"]);
    let dir = std::env::temp_dir().join(unique("image"));
    let (mnt, run) = (dir.join("mnt"), dir.join("run"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    let tag = |n: u32| format!("localhost/{}:{n}", unique("cgprocfs-image"));
    let (image1, image2) = (tag(1), tag(2));
    let (pod1, pod2) = (unique("pod-old"), unique("pod-new"));
    let _clean = Cleanup {
        pods: vec![pod1.clone(), pod2.clone()],
        images: vec![image1.clone(), image2.clone()],
        dir: dir.clone(),
        mnt: mnt.clone(),
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/build-image.sh");
    for (image, label) in [(&image1, "1"), (&image2, "2")] {
        sh(Command::new("sh").arg(&script).arg(image).env("CGPROCFS_BIN", bin()).env("CGPROCFS_IMAGE_LABEL", label));
    }
    // The DaemonSet's init container: the image installs the binary, the runc wrapper and the
    // hooks.d file onto a host path; the wrapper runs from there on the host.
    let node = dir.join("node");
    std::fs::create_dir_all(&node).unwrap();
    let vol = format!("{}:/host/opt/cgprocfs", node.display());
    let (nofile, nproc) = (hard_limit(libc::RLIMIT_NOFILE), hard_limit(libc::RLIMIT_NPROC).min(4096));
    sh(Command::new("podman")
        .args(["run", "--rm", "--network", "none", "-v", &vol])
        .args(["--ulimit", &format!("nofile={nofile}:{nofile}"), "--ulimit", &format!("nproc={nproc}:{nproc}")])
        .arg(&image1)
        .args(["install-node", "--dest", "/host/opt/cgprocfs", "--host-path", &node.to_string_lossy()]));
    let passed = Command::new(node.join("cgprocfs-runc"))
        .args(["--cgprocfs-runc=/bin/echo", "--cgprocfs-log=/dev/null", "state", "x"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&passed.stdout).trim(), "state x", "the installed wrapper runs on the host");
    // The hostPath with shared propagation (Bidirectional): a shared mount of its own.
    sh(Command::new("mount").arg("--bind").arg(&mnt).arg(&mnt));
    sh(Command::new("mount").arg("--make-shared").arg(&mnt));

    run_pod(&pod1, &image1, &run, &mnt);
    wait_for(
        "the pod's mount reaches the host",
        Duration::from_secs(60),
        || std::fs::read(mnt.join("proc/meminfo")).is_ok(),
        || logs(&pod1),
    );
    let host_proc = TestCgroup::new("image-host", &Limits { memory: Some(160 * MIB), ..Default::default() });
    let seen = host_proc.run(&format!("head -n1 {}", mnt.join("proc/meminfo").display()));
    assert_eq!(seen.split_whitespace().nth(1), Some("163840"), "a host process reads its own limit: {seen}");

    let small = TestCgroup::new("image-small", &Limits { memory: Some(128 * MIB), ..Default::default() });
    let big = TestCgroup::new("image-big", &Limits { memory: Some(384 * MIB), ..Default::default() });
    let readers = vec![collect(reader_of(&small, &mnt), 128 * 1024), collect(reader_of(&big, &mnt), 384 * 1024)];
    std::thread::sleep(Duration::from_millis(500));

    // The rollout: the new pod starts beside the old one and takes the connection over; then
    // the old pod is deleted (its lingering keeper exits without unmounting).
    run_pod(&pod2, &image2, &run, &mnt);
    wait_for(
        "the new pod takes over",
        Duration::from_secs(60),
        || logs(&pod1).contains("connection handed over"),
        || format!("old:\n{}\nnew:\n{}", logs(&pod1), logs(&pod2)),
    );
    std::thread::sleep(Duration::from_millis(500));
    sh(Command::new("podman").args(["rm", "-f", "-t", "5", &pod1]));
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::fs::read_to_string(mnt.join("proc/meminfo")).unwrap().starts_with("MemTotal:"), "{}", logs(&pod2));
    kill_cgroups(&[&small, &big]);
    for h in readers {
        let (mut child, s) = h.join().unwrap();
        let _ = child.wait();
        eprintln!("reader: {s:?}");
        assert_eq!(s.failed, 0, "failed reads during the rollout: {s:?}");
        assert!(s.wrong.is_empty(), "wrong contents: {:?}", &s.wrong[..s.wrong.len().min(5)]);
        assert!(s.backwards.is_empty(), "counters went backwards: {:?}", s.backwards);
        assert!(s.lines > 100, "the reader hardly read: {s:?}");
    }
    assert!(logs(&pod2).contains("took the connection over"), "{}", logs(&pod2));
}

crate::cgprocfs_tests!(the_daemonset_image_serves_the_host_and_a_rollout_hands_over_without_a_failed_read,);
