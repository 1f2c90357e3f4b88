//! Live: the runc wrapper (`cgprocfs-runc`) under a real Docker engine (Debian's `docker.io`
//! dockerd, started here with its own data root, no bridge, no iptables; an image imported
//! from a BusyBox rootfs, no pull). Registered with one `daemon.json` entry, it gives
//! `docker run --runtime=cgprocfs` containers what hooks.d gives podman: their own cached
//! files, sysinfo(2) answers, the cpu directory and PSI triggers.

use crate::common;

use common::bundle::busybox_rootfs;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A dockerd of this test's own, stopped (by its pid) and its mounts and files removed on
/// drop.
struct Dockerd {
    child: Child,
    dir: PathBuf,
}

impl Dockerd {
    /// Starts dockerd with `daemon_json` and imports a BusyBox image as `bb:test`.
    fn start(dir: &Path, daemon_json: &str) -> Dockerd {
        std::fs::write(dir.join("daemon.json"), daemon_json).unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none", "--config-file"])
            .arg(dir.join("daemon.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd");
        let d = Dockerd { child, dir: dir.to_path_buf() };
        let t = Instant::now();
        while !d.docker(&["version"]).status.success() {
            assert!(t.elapsed() < Duration::from_secs(60), "dockerd did not start:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        let root = image_rootfs(dir);
        let tar = dir.join("rootfs.tar");
        assert!(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status().unwrap().success());
        let out = d.docker(&["import", &tar.to_string_lossy(), "bb:test"]);
        assert!(out.status.success(), "docker import: {}", String::from_utf8_lossy(&out.stderr));
        d
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", self.dir.join("docker.sock").display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `docker ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?}: {}\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn log(&self) -> String {
        let l = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        l.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        stop_child(&mut self.child, Duration::from_secs(30));
        // Whatever dockerd left mounted under its roots.
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut left: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&*self.dir.to_string_lossy()))
            .collect();
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in left {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
    }
}

/// A BusyBox image's root under `dir` (`rootfs/`), with the directories a runtime mounts on.
fn image_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    busybox_rootfs(&root, &["sh", "free", "cat", "grep", "head", "nproc", "sleep", "echo", "mv"]);
    for sub in ["proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    root
}

/// The wrapper's own options for the test's daemon at `mnt` (`listener`: its seccomp socket,
/// or none), logging to `log`.
fn wrapper_args(mnt: &Path, listener: Option<&Path>, log: &Path, affinity: bool) -> Vec<String> {
    let mut a = vec![format!("--cgprocfs-mountpoint={}", mnt.display()), format!("--cgprocfs-log={}", log.display())];
    a.extend(listener.map(|l| format!("--cgprocfs-listener={}", l.display())));
    a.extend(affinity.then(|| "--cgprocfs-affinity".to_string()));
    a
}

/// The one `daemon.json` entry: runtime `cgprocfs` is `wrapper` with `args`.
fn daemon_json(wrapper: &Path, args: &[String]) -> String {
    serde_json::json!({"runtimes": {"cgprocfs": {"path": wrapper, "runtimeArgs": args}}}).to_string()
}

/// `dir/cgprocfs-runc`: the binary under test by its wrapper name.
fn linked_wrapper(dir: &Path) -> PathBuf {
    let wrapper = dir.join("cgprocfs-runc");
    std::os::unix::fs::symlink(bin(), &wrapper).unwrap();
    wrapper
}

/// What a container runs to show every feature, one line each: BusyBox `free`'s Mem line
/// (sysinfo), meminfo's first line, `nproc` (sched_getaffinity), the online CPUs, how many
/// cached-tree binds it has, and whether a PSI trigger was taken.
const FEATURES: &str = "free -m | grep Mem:; head -1 /proc/meminfo; nproc; cat /sys/devices/system/cpu/online; \
                        grep -c cgprocfs-cache /proc/self/mountinfo; \
                        echo 'some 150000 2000000' > /proc/pressure/memory && echo trigger-taken";

/// Checks [`FEATURES`]' output `out` of a container limited to 256 MiB and one CPU, and that
/// the wrapper's log `said` merged the rule into the engine's profile.
fn assert_features(out: &str, said: &str) {
    eprintln!("{out}\nwrapper: {said}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(mem_total_mib(lines[0]), 256, "BusyBox free (sysinfo): {out}\n{said}");
    assert_eq!(field(lines[1], "MemTotal"), 256 * 1024, "{out}");
    assert_eq!(lines[2], "1", "nproc (sched_getaffinity answered): {out}");
    assert_eq!(lines[3], "0", "one CPU online: {out}");
    assert!(lines[4].parse::<u32>().unwrap() >= 8, "the container's own cached files are bound: {out}");
    assert_eq!(lines[5], "trigger-taken", "{out}");
    assert!(said.contains("hook added, seccomp added to the engine's profile"), "{said}");
}

/// One `daemon.json` entry registers the wrapper (as `cgprocfs install-node` puts it on a
/// node); a container started with
/// `--runtime=cgprocfs` gets its own cached files, sysinfo answers (BusyBox `free`), its CPUs,
/// and takes a PSI trigger; `docker exec` and `docker restart` keep working; a container
/// without the runtime sees the host.
fn docker_containers_started_through_the_wrapper_get_every_feature() {
    let test = "docker_containers_started_through_the_wrapper_get_every_feature";
    live_ready(test);
    programs_ready(test, &["dockerd", "docker", "runc", "busybox", "tar"]);
    let d = Daemon::start_with("docker", &["--seccomp-affinity"]);
    let dir = Scratch::new("docker");
    // The wrapper as the DaemonSet's init container installs it onto a node's host path.
    let node = dir.0.join("node");
    let inst =
        Command::new(bin()).args(["install-node", "--dest"]).arg(&node).arg("--host-path").arg(&node).output().unwrap();
    assert!(inst.status.success(), "install-node: {}", String::from_utf8_lossy(&inst.stderr));
    let wrapper = node.join("cgprocfs-runc");
    let hook: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.join("cgprocfs-hook.json")).unwrap()).unwrap();
    assert_eq!(hook["hook"]["path"], serde_json::json!(node.join("cgprocfs")), "the hooks.d file names the copy");
    let wlog = dir.0.join("wrapper.log");
    let args = wrapper_args(&d.mnt, Some(&d.seccomp_socket()), &wlog, true);
    let docker = Dockerd::start(&dir.0, &daemon_json(&wrapper, &args));
    let out = docker.ok(&[
        "run",
        "--rm",
        "--runtime=cgprocfs",
        "--network",
        "none",
        "--memory",
        "256m",
        "--cpus",
        "1",
        "bb:test",
        "sh",
        "-c",
        FEATURES,
    ]);
    assert_features(&out, &std::fs::read_to_string(&wlog).unwrap_or_default());

    // docker exec, restart, stop/start on a container of the runtime.
    let id = docker.ok(&[
        "run",
        "-d",
        "--runtime=cgprocfs",
        "--network",
        "none",
        "--memory",
        "128m",
        "bb:test",
        "sleep",
        "600",
    ]);
    let id = id.trim();
    let meminfo = |docker: &Dockerd| field(&docker.ok(&["exec", id, "head", "-1", "/proc/meminfo"]), "MemTotal");
    assert_eq!(meminfo(&docker), 128 * 1024, "docker exec");
    docker.ok(&["restart", "-t", "0", id]);
    assert_eq!(meminfo(&docker), 128 * 1024, "after docker restart");
    docker.ok(&["stop", "-t", "0", id]);
    docker.ok(&["start", id]);
    assert_eq!(meminfo(&docker), 128 * 1024, "after docker stop/start");

    // Without the runtime: the host's.
    let host = field(&std::fs::read_to_string("/proc/meminfo").unwrap(), "MemTotal");
    let plain =
        docker.ok(&["run", "--rm", "--network", "none", "--memory", "128m", "bb:test", "head", "-1", "/proc/meminfo"]);
    assert_eq!(field(&plain, "MemTotal"), host, "runc without the wrapper: the host's");
}

/// `reads failed` in the counts file a reading container keeps.
fn counts(file: &Path) -> (u64, u64) {
    let t = std::fs::read_to_string(file).unwrap_or_default();
    let v: Vec<u64> = t.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    (v.first().copied().unwrap_or(0), v.get(1).copied().unwrap_or(0))
}

/// A Docker container started through the wrapper reads its meminfo in a loop while a second
/// `serve` takes the daemon over (not one read fails), then while the serving keeper is
/// SIGKILLed and a new `serve` repairs the container's binds in place (reads fail only
/// between the kill and the repair, then go on right).
fn a_docker_container_reads_through_a_takeover_and_a_repair() {
    let test = "a_docker_container_reads_through_a_takeover_and_a_repair";
    live_ready(test);
    programs_ready(test, &["dockerd", "docker", "runc", "busybox", "tar", "unshare"]);
    let mut d = Daemon::start("docker-ho");
    let dir = Scratch::new("docker-ho");
    let args = wrapper_args(&d.mnt, Some(&d.seccomp_socket()), &dir.0.join("wrapper.log"), false);
    let docker = Dockerd::start(&dir.0, &daemon_json(&linked_wrapper(&dir.0), &args));
    let out = dir.0.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let script = "n=0; f=0; while :; do if head -1 /proc/meminfo | grep -q ' 131072 kB'; then n=$((n+1)); \
                  else f=$((f+1)); fi; echo \"$n $f\" > /out/c.tmp; mv /out/c.tmp /out/c; done";
    let vol = format!("{}:/out", out.display());
    docker.ok(&[
        "run",
        "-d",
        "--runtime=cgprocfs",
        "--network",
        "none",
        "--memory",
        "128m",
        "-v",
        &vol,
        "bb:test",
        "sh",
        "-c",
        script,
    ]);
    let c = out.join("c");
    wait_for(
        "the container's first reads",
        Duration::from_secs(20),
        || counts(&c).0 > 20,
        || format!("{:?}", counts(&c)),
    );
    assert_eq!(counts(&c).1, 0, "reads before anything happened");

    // A takeover: a new serve in a mount namespace of its own takes the connection.
    let old = d.pid();
    let mut taker = take_over(&d, old, 0);
    let st = d.signal_and_wait(0);
    assert!(st.success(), "the old keeper {old} handed over and exited: {st}");
    let before = counts(&c).0;
    std::thread::sleep(Duration::from_secs(1));
    let (n, f) = counts(&c);
    assert_eq!(f, 0, "a takeover under a Docker container loses no read");
    assert!(n > before + 20, "it read on after the takeover: {before} -> {n}");

    // The keeper is SIGKILLed (its worker follows); a new serve repairs the binds.
    // SAFETY: unshare exec'd the serve this test started.
    unsafe { libc::kill(taker.id() as i32, libc::SIGKILL) };
    let _ = taker.wait();
    std::thread::sleep(Duration::from_millis(500));
    d.spawn(&[]);
    wait_for("the repair", Duration::from_secs(15), || d.log().contains("reattached"), || d.log());
    let (n1, f1) = counts(&c);
    std::thread::sleep(Duration::from_secs(2));
    let (n2, f2) = counts(&c);
    eprintln!("after the repair: {n1} right, {f1} failed while no daemon served; 2 s later {n2} right, {f2} failed");
    // The daemon's log says which binds the repair found and fixed in which namespace.
    let repaired =
        || d.log().lines().filter(|l| l.contains("reattach") || l.contains("companion")).collect::<Vec<_>>().join("\n");
    assert!(n2 > n1 + 20, "the container reads its own figures again after the repair: {n1} -> {n2}\n{}", repaired());
    assert_eq!(f2, f1, "no read fails once repaired");
}

/// A daemon that is not serving: the wrapper leaves the bundle as it was and the container
/// starts with its own files (a reboot where containers start before the daemon).
fn without_a_daemon_the_wrapper_starts_containers_unchanged() {
    let test = "without_a_daemon_the_wrapper_starts_containers_unchanged";
    live_ready(test);
    programs_ready(test, &["dockerd", "docker", "runc", "busybox", "tar"]);
    let dir = Scratch::new("docker-nodaemon");
    let mnt = dir.0.join("not-served");
    std::fs::create_dir_all(&mnt).unwrap();
    let wlog = dir.0.join("wrapper.log");
    let docker = Dockerd::start(&dir.0, &daemon_json(&linked_wrapper(&dir.0), &wrapper_args(&mnt, None, &wlog, false)));
    let out = docker.ok(&[
        "run",
        "--rm",
        "--runtime=cgprocfs",
        "--network",
        "none",
        "--memory",
        "128m",
        "bb:test",
        "head",
        "-1",
        "/proc/meminfo",
    ]);
    let host = field(&std::fs::read_to_string("/proc/meminfo").unwrap(), "MemTotal");
    assert_eq!(field(&out, "MemTotal"), host, "started, with its own /proc");
    let said = std::fs::read_to_string(&wlog).unwrap_or_default();
    assert!(said.contains("unchanged") && said.contains("is not served"), "one line says why: {said}");
}

/// A containerd of this test's own (no CRI plugin), stopped by its pid on drop.
struct Containerd {
    child: Child,
    sock: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        let sock = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{0}/c-root\"\nstate = \"{0}/c-state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{1}\"\n",
            dir.display(),
            sock.display()
        );
        std::fs::write(dir.join("containerd.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("containerd.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd");
        let c = Containerd { child, sock };
        let t = Instant::now();
        while !c.ctr(&["version"]).status.success() {
            assert!(t.elapsed() < Duration::from_secs(30), "containerd did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr").arg("--address").arg(&self.sock).args(args).stdin(Stdio::null()).output().unwrap()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(20));
    }
}

/// containerd's runc v2 shim with the wrapper as its runc binary (`ctr run --runc-binary`,
/// the setting the CRI plugin's `BinaryName` is for Kubernetes), with containerd's default
/// seccomp profile: the container gets its own cached files, sysinfo answers, its CPUs and a
/// trigger, as under Docker.
fn containerd_shim_containers_started_through_the_wrapper_get_every_feature() {
    let test = "containerd_shim_containers_started_through_the_wrapper_get_every_feature";
    live_ready(test);
    programs_ready(test, &["containerd", "ctr", "containerd-shim-runc-v2", "runc", "busybox"]);
    let d = Daemon::start_with("containerd", &["--seccomp-affinity"]);
    let dir = Scratch::new("containerd");
    // The shim runs its runc binary with no arguments of ours: a script names the test's
    // daemon (the packaged defaults need none).
    let wrapper = dir.0.join("runc-for-the-shim");
    let wlog = dir.0.join("wrapper.log");
    let args: Vec<String> =
        wrapper_args(&d.mnt, Some(&d.seccomp_socket()), &wlog, true).iter().map(|a| format!("'{a}'")).collect();
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec '{}' runc-wrapper {} \"$@\"\n", bin(), args.join(" "))).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let root = image_rootfs(&dir.0);
    let c = Containerd::start(&dir.0);
    let id = unique("ctr");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--seccomp",
        "--env",
        "PATH=/bin",
        "--rootfs",
        "--runc-binary",
        &wrapper.to_string_lossy(),
        "--memory-limit",
        &(256u64 << 20).to_string(),
        "--cpus",
        "1",
        &root.to_string_lossy(),
        &id,
        "/bin/sh",
        "-c",
        FEATURES,
    ]);
    let said = std::fs::read_to_string(&wlog).unwrap_or_default();
    assert!(out.status.success(), "ctr run: {}\n{said}", String::from_utf8_lossy(&out.stderr));
    assert_features(&String::from_utf8_lossy(&out.stdout), &said);
}

crate::cgprocfs_tests!(
    docker_containers_started_through_the_wrapper_get_every_feature,
    containerd_shim_containers_started_through_the_wrapper_get_every_feature,
    a_docker_container_reads_through_a_takeover_and_a_repair,
    without_a_daemon_the_wrapper_starts_containers_unchanged
);
