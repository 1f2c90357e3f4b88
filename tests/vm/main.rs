//! The VM tier: the live suite run inside a qemu guest booting Debian's kernel
//! (`linux-image-amd64`), once on pure cgroup v2 and once on pure cgroup v1, so every view is
//! proven on both real kernels and not only on this hybrid host.
//!
//! The guest's initramfs holds busybox-static, the kernel modules (virtio, 9p, ext4, fuse) and
//! `tests/vm/init`; the root it runs the tests in is this host's own root, read-only over 9p,
//! so the guest has exactly the release binary, the test binaries and the programs (procps,
//! sysstat, python3) the host suite uses, with tmpfs /tmp and /run and an ext4 scratch disk
//! for the I/O test. Results come back over the serial console.

#[path = "../common/mod.rs"]
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The modules of the live group (`tests/live/`) run in the guest: everything that reads through
/// the mount from limited cgroups. (Runtime tests need image storage on a writable root; the
/// lifecycle and attack tests do not depend on the cgroup version.)
const SUITE: &[&str] = &["mount", "cpu_views", "run", "oom", "readers", "programs", "cached", "status", "psi"];

/// Modules the guest loads, with their dependencies (resolved by modprobe for its kernel).
const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "ext4", "fuse"];

/// Per boot.
const TIMEOUT: Duration = Duration::from_secs(900);

/// One guest at a time: two emulated guests on a 2-CPU host would starve each other's timing
/// (steal, load and programs' CPU shares are asserted in them).
static ONE_GUEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_guest() -> std::sync::MutexGuard<'static, ()> {
    ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner())
}

struct Kernel {
    image: PathBuf,
    version: String,
}

/// The newest `/boot/vmlinuz-*` whose modules are installed.
fn guest_kernel() -> Option<Kernel> {
    let mut found: Vec<Kernel> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            Path::new("/lib/modules")
                .join(&version)
                .join("modules.dep")
                .exists()
                .then(|| Kernel { image: e.path(), version })
        })
        .collect();
    found.sort_by(|a, b| a.version.cmp(&b.version));
    found.pop()
}

fn ready(test: &str) -> Kernel {
    live_ready(test);
    programs_ready(test, &["qemu-system-x86_64", "cpio", "mkfs.ext4", "modprobe", "busybox"]);
    guest_kernel().unwrap_or_else(|| {
        common::harness::skip(format!("{test}: no /boot/vmlinuz-* with modules (apt-get install linux-image-amd64)"))
    })
}

/// The newest built binary of test target `name` beside this one (`target/release/deps`).
fn test_binary(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let prefix = format!("{name}-");
    let mut c: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&deps)
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix(&prefix).is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    c.sort();
    c.pop().unwrap_or_else(|| panic!("test binary {name} not built in {}", deps.display())).1
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the initramfs in `dir` with `tests/vm/init` and the suite's script.
fn initramfs(dir: &Path, k: &Kernel, tests_sh: &str) -> PathBuf {
    initramfs_with(dir, k, "init", &[("tests.sh", tests_sh.to_string())], MODULES)
}

/// Builds an initramfs in `dir` whose `/init` is `tests/vm/<init>`, with `files` at its root
/// and `modules` (and their dependencies) in `/modules`; returns its path.
fn initramfs_with(dir: &Path, k: &Kernel, init: &str, files: &[(&str, String)], modules: &[&str]) -> PathBuf {
    let root = dir.join(format!("initramfs-{init}"));
    for d in ["bin", "proc", "sys", "dev", "modules"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = sh("command -v busybox");
    std::fs::copy(busybox.trim(), root.join("bin/busybox")).unwrap();
    let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm").join(init);
    std::fs::copy(init, root.join("init")).unwrap();
    for (name, text) in files {
        std::fs::write(root.join(name), text).unwrap();
    }
    let mut order: Vec<String> = Vec::new();
    for m in modules {
        for line in sh(&format!("modprobe -S {} --show-depends {m}", k.version)).lines() {
            let Some(path) = line.strip_prefix("insmod ").map(str::trim) else { continue };
            let name = Path::new(path).file_name().unwrap().to_string_lossy().into_owned();
            if !order.contains(&name) {
                std::fs::copy(path, root.join("modules").join(&name)).unwrap();
                order.push(name);
            }
        }
    }
    std::fs::write(root.join("modules.order"), order.join("\n")).unwrap();
    let img = dir.join(format!("initramfs-{}.cpio", root.file_name().unwrap().to_string_lossy()));
    sh(&format!("cd {} && find . | cpio -o -H newc --quiet > {}", root.display(), img.display()));
    img
}

/// Where `CGPROCFS_VM_CAPTURE` asks the guests to capture fixture trees instead of running the
/// suite (`tests/vm/capture.sh`; e.g. `CGPROCFS_VM_CAPTURE=tests/fixtures`).
fn capture_dir() -> Option<PathBuf> {
    std::env::var_os("CGPROCFS_VM_CAPTURE").map(|d| Path::new(env!("CARGO_MANIFEST_DIR")).join(d))
}

/// The script the guest runs in the host's root: each suite binary, two test threads; or the
/// fixture capture, written as a tar to the second disk.
fn tests_sh() -> String {
    let ci = std::env::var("CI").unwrap_or_default();
    let mut s = format!(
        "cd {}\nexport PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CI={ci} \
         CGPROCFS_TEST_IO_DIR=/tmp/io RUST_BACKTRACE=1\nrc=0\n",
        env!("CARGO_MANIFEST_DIR")
    );
    if capture_dir().is_some() {
        s.push_str(
            "mode=$(sed -n 's/.*cgprocfs.mode=\\([a-z0-9]*\\).*/\\1/p' /proc/cmdline)\n\
             sh tests/vm/capture.sh $mode /tmp/io/fixtures && tar -cf /dev/vdb -C /tmp/io/fixtures . || rc=1\n\
             exit $rc\n",
        );
        return s;
    }
    // CGPROCFS_VM_ONLY=<filter> narrows the guest run to the live tests whose names contain it
    // (`cached::`, or one test's name), to iterate on one guest failure; CI never sets it.
    let filters = std::env::var("CGPROCFS_VM_ONLY")
        .unwrap_or_else(|_| SUITE.iter().map(|m| format!("{m}::")).collect::<Vec<_>>().join(" "));
    s.push_str(&format!(
        "echo \"VM-TEST live\"\n{} {filters} --test-threads 2 --include-ignored --color never || rc=1\n",
        test_binary("live").display()
    ));
    s.push_str("exit $rc\n");
    s
}

/// Boots the guest with cgroup layout `mode` and returns (passed, serial output).
fn boot(dir: &Path, k: &Kernel, initrd: &Path, mode: &str) -> (bool, String) {
    // The checkout and the target directory, which the guest keeps visible even under its
    // tmpfs /tmp and /run (a clone in /tmp is a common first try).
    let target =
        std::env::current_exe().unwrap().parent().and_then(Path::parent).and_then(Path::parent).unwrap().to_path_buf();
    let keep = [Path::new(env!("CARGO_MANIFEST_DIR")), target.as_path()]
        .iter()
        .map(|p| p.display().to_string())
        .filter(|p| !p.contains([' ', ',']))
        .collect::<Vec<_>>()
        .join(",");
    let mut append = format!("console=ttyS0 panic=-1 cgprocfs.mode={mode} cgprocfs.keep={keep}");
    if mode == "v2" {
        append.push_str(" cgroup_no_v1=all");
    }
    boot_with(dir, k, initrd, mode, &append)
}

/// A guest kernel reporting itself stuck: what the emulator does to a guest when the host
/// starves its vCPU threads (seen once in CI: RCU's kthread starved from second 25, before the
/// first test ended, then soft lockups in page allocation for the rest of the timeout).
const STALLED: &str = "BUG: soft lockup - CPU#";

/// How many soft-lockup reports end a boot early: each is ~25 s more of a stuck CPU.
const STALL_REPORTS: usize = 3;

/// Boots a guest named `mode` with kernel command line `append`; (passed, serial output). A
/// guest whose own kernel reports a stuck CPU ([`STALLED`], [`STALL_REPORTS`] times) is an
/// emulation failure, not a test's: it is stopped and booted once more, and the output says so.
fn boot_with(dir: &Path, k: &Kernel, initrd: &Path, mode: &str, append: &str) -> (bool, String) {
    let (passed, out) = boot_once(dir, k, initrd, mode, append);
    if passed || out.matches(STALLED).count() < STALL_REPORTS {
        return (passed, out);
    }
    eprintln!(
        "guest {mode}: its kernel reported a stuck CPU {STALL_REPORTS} times (emulation starved); booting it once more"
    );
    boot_once(dir, k, initrd, mode, append)
}

fn boot_once(dir: &Path, k: &Kernel, initrd: &Path, mode: &str, append: &str) -> (bool, String) {
    let disk = dir.join(format!("scratch-{mode}.img"));
    sh(&format!("truncate -s 640M {0} && mkfs.ext4 -q -F {0}", disk.display()));
    sh(&format!("truncate -s 16M {}", dir.join(format!("capture-{mode}.tar")).display()));
    let log = dir.join(format!("serial-{mode}.log"));
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "pc", "-cpu", "max", "-accel", "tcg,thread=multi", "-smp", "2", "-m", "2048"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(&k.image)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", append])
        .args(["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        // The capture's tar, read back by the host.
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", dir.join(format!("capture-{mode}.tar")).display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start qemu");
    let t = Instant::now();
    let timed_out = loop {
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        let stalled =
            || std::fs::read(&log).is_ok_and(|b| String::from_utf8_lossy(&b).matches(STALLED).count() >= STALL_REPORTS);
        if t.elapsed() > TIMEOUT || (t.elapsed().as_secs() % 10 == 0 && stalled()) {
            // The qemu this test started, by pid.
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
    let passed = !timed_out && out.contains("VM-EXIT 0") && !out.contains("VM-RESULT fail");
    eprintln!("guest {mode}: {} in {:.0} s", if passed { "passed" } else { "FAILED" }, t.elapsed().as_secs_f64());
    (passed, out)
}

/// The lines worth showing from a guest's console: per-binary results and failures.
/// Indented, so that `.ci/run`'s closing count (lines starting `test result:`) counts the
/// host's binaries only.
fn summary(out: &str) -> String {
    out.lines()
        .filter(|l| {
            l.starts_with("VM") || l.starts_with("test result") || l.contains("FAILED") || l.contains("panicked")
        })
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn live_suite_passes_on_pure_cgroup_v2_and_pure_cgroup_v1() {
    let test = "live_suite_passes_on_pure_cgroup_v2_and_pure_cgroup_v1";
    let k = ready(test);
    let _turn = one_guest();
    let scratch = Scratch::new("vm");
    let dir = scratch.0.clone();
    let initrd = initramfs(&dir, &k, &tests_sh());
    let mut failed = Vec::new();
    for mode in ["v2", "v1"] {
        let (ok, out) = boot(&dir, &k, &initrd, mode);
        if let Some(to) = capture_dir() {
            let tar = dir.join(format!("capture-{mode}.tar"));
            sh(&format!("tar -xf {} -C {}", tar.display(), to.display()));
            assert!(ok && to.join(format!("{mode}-limited")).is_dir(), "capture on {mode} failed:\n{out}");
            eprintln!("captured {mode} fixtures into {}", to.display());
            continue;
        }
        let s = summary(&out);
        eprintln!("--- guest {mode} (Linux {}) ---\n{s}", k.version);
        // The live binary must have reported ok, having run some tests.
        let results = out.lines().filter(|l| l.starts_with("test result: ok")).count();
        let ran = out.lines().any(|l| l.starts_with("running ") && !l.starts_with("running 0 "));
        if !ok || results != 1 || !ran {
            // The whole console of a failed guest, for the CI log.
            eprintln!("--- full console of guest {mode} ---\n{out}");
            failed.push(mode);
        }
    }
    assert!(failed.is_empty(), "the live suite failed in the guest(s) {failed:?}");
}

/// The newest `.deb` `cargo deb` built (`target/debian`).
fn built_deb() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let mut debs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".deb"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    debs.sort();
    debs.pop().map(|d| d.1)
}

/// Debian's systemd as PID 1 in a guest (pure cgroup v2), the `.deb` installed as an operator
/// would: readers in two limited scopes read the bound meminfo in a loop while the service is
/// restarted, SIGKILLed (Restart=on-failure), reloaded and reinstalled. The connection lives
/// in the unit's fd store throughout: not one read fails (tests/vm/systemd.sh).
fn systemd_keeps_every_read_working_across_restart_kill_reload_and_reinstall() {
    let test = "systemd_keeps_every_read_working_across_restart_kill_reload_and_reinstall";
    let k = ready(test);
    if !Path::new("/lib/systemd/systemd").exists() {
        common::harness::skip(format!("{test}: no systemd (apt-get install systemd)"));
    }
    let Some(deb) = built_deb() else {
        common::harness::skip(format!("{test}: no target/debian/*.deb (cargo deb --no-build; .ci/run builds it)"));
    };
    let _turn = one_guest();
    let scratch = Scratch::new("vm-systemd");
    let dir = scratch.0.clone();
    let script = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/systemd.sh")).unwrap();
    let files = [("systemd.sh", script), ("deb-path", deb.display().to_string())];
    let modules: Vec<&str> = MODULES.iter().copied().chain(["overlay"]).collect();
    let initrd = initramfs_with(&dir, &k, "init-systemd", &files, &modules);
    let append = "console=ttyS0 panic=-1 systemd.unit=cgprocfs-vmtest.service systemd.show_status=0 cgroup_no_v1=all";
    let (_, out) = boot_with(&dir, &k, &initrd, "systemd", append);
    let summary: Vec<&str> = out.lines().filter(|l| l.starts_with("VM")).collect();
    eprintln!("--- systemd guest (Linux {}) ---\n{}", k.version, summary.join("\n"));
    let ok = out.contains("VM-RESULT ok") && out.contains("VM-EXIT 0");
    if !ok {
        eprintln!("--- full console of the systemd guest ---\n{out}");
    }
    assert!(ok, "the systemd guest failed");
}

crate::cgprocfs_tests!(
    live_suite_passes_on_pure_cgroup_v2_and_pure_cgroup_v1,
    systemd_keeps_every_read_working_across_restart_kill_reload_and_reinstall,
);

fn main() {
    common::harness::main(&[("vm", TESTS)])
}
