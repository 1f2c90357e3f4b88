//! Renderers and parsers against fixture trees captured from real kernels with
//! `tests/fixtures/capture.sh`: this hybrid host (`hybrid-*`), and the VM tier's pure v2 and
//! pure v1 guests (`v2-*`, `v1-*`, `CGPROCFS_VM_CAPTURE=tests/fixtures cargo test --test vm`), through the same `Service` the daemon uses; plus every kind of
//! bad input, which must yield the host's file and a counted fallback, never a panic.

use cgprocfs::catalog::Served;
use cgprocfs::service::{Options, Service};
use cgprocfs::view::cpus::CpuCount;
use cgprocfs::Root;
use std::path::{Path, PathBuf};

/// The fixture tree `name` under `tests/fixtures`.
pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The pid the fixture was captured for (the numeric directory under proc/).
pub(crate) fn captured_pid(root: &Path) -> u32 {
    std::fs::read_dir(root.join("proc"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .next()
        .expect("fixture has a proc/<pid>")
}

fn field(text: &str, label: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {label} in\n{text}"))
}

fn stat_key(path: &Path, key: &str) -> u64 {
    let t = std::fs::read_to_string(path).unwrap();
    t.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {}", path.display()))
}

fn read_num(path: &Path) -> u64 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

fn service(root: &Path) -> Service {
    Service::new(Root::new(root), Options { cpu_count: CpuCount::Quota }).unwrap()
}

fn render(svc: &Service, view: Served, pid: u32) -> String {
    String::from_utf8(svc.render_for(view, pid).unwrap()).unwrap()
}

/// Copies a fixture tree (files, dirs, symlinks) so a test can corrupt it.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if ft.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

struct TempTree(PathBuf);

impl TempTree {
    fn of(name: &str, tag: &str) -> TempTree {
        let p = std::env::temp_dir().join(format!("cgprocfs-fixture-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        copy_tree(&fixture(name), &p);
        TempTree(p)
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const LEAF: &str = "sys/fs/cgroup/memory/cgp-fix/leaf";

#[test]
fn meminfo_hybrid_limited_takes_every_field_from_the_cgroup() {
    let root = fixture("hybrid-limited");
    let pid = captured_pid(&root);
    let svc = service(&root);
    let out = render(&svc, Served::Meminfo, pid);
    let leaf = root.join(LEAF);
    let stat = leaf.join("memory.stat");

    // The parent's 256 MiB is lower than the leaf's 1 GiB: the chain's minimum wins.
    assert_eq!(field(&out, "MemTotal"), 256 * 1024);
    let usage = read_num(&leaf.join("memory.usage_in_bytes"));
    assert_eq!(field(&out, "MemFree"), (256 * 1024 * 1024 - usage) / 1024);
    // Keys lxcfs gets wrong by prefix matching: Mapped, AnonHugePages.
    assert_eq!(field(&out, "Mapped"), stat_key(&stat, "total_mapped_file") / 1024);
    assert_eq!(field(&out, "AnonHugePages"), stat_key(&stat, "total_rss_huge") / 1024);
    assert_eq!(field(&out, "AnonPages"), stat_key(&stat, "total_rss") / 1024);
    assert_eq!(field(&out, "Shmem"), stat_key(&stat, "total_shmem") / 1024);
    assert_eq!(
        field(&out, "Cached"),
        (stat_key(&stat, "total_cache") / 1024).saturating_sub(stat_key(&stat, "total_swapcached") / 1024)
    );
    assert_eq!(
        field(&out, "Active(file)") + field(&out, "Inactive(file)"),
        stat_key(&stat, "total_active_file") / 1024 + stat_key(&stat, "total_inactive_file") / 1024
    );
    // The workload had ~30 MB of page cache and ~20 MB of anon memory: both must show.
    assert!(field(&out, "Cached") > 20 * 1024, "{out}");
    assert!(field(&out, "AnonPages") > 15 * 1024, "{out}");

    let (free, avail, total) = (field(&out, "MemFree"), field(&out, "MemAvailable"), field(&out, "MemTotal"));
    assert!(free <= avail && avail <= total, "{free} {avail} {total}");
    assert!(field(&out, "SwapFree") <= field(&out, "SwapTotal"));

    // Same labels in the same order as the host, each substituted line in the kernel's format.
    let host = std::fs::read_to_string(root.join("proc/meminfo")).unwrap();
    let labels = |t: &str| t.lines().map(|l| l.split(':').next().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(labels(&out), labels(&host));
    for l in out.lines().filter(|l| l.ends_with(" kB")) {
        assert!(l.len() >= 27, "short line {l:?}");
        let value = &l[16..l.len() - 3];
        assert!(value.len() >= 8 && value.trim_start().chars().all(|c| c.is_ascii_digit()), "{l:?}");
    }
}

#[test]
fn cpu_views_follow_quota_and_cpuset() {
    let root = fixture("hybrid-limited");
    let svc = service(&root);
    let pid = captured_pid(&root);
    // Quota 0.5 CPU on the parent -> 1 visible CPU.
    let cpuinfo = render(&svc, Served::Cpuinfo, pid);
    assert_eq!(cpuinfo.matches("processor\t:").count(), 1, "{cpuinfo}");
    assert!(
        cpuinfo.contains("processor\t: 0\n")
            && cpuinfo.contains("siblings\t: 1\n")
            && cpuinfo.contains("cpu cores\t: 1\n")
    );
    assert!(cpuinfo.ends_with("\n\n"));
    assert_eq!(render(&svc, Served::CpuOnline, pid), "0\n");

    // --cpu-count=cpuset ignores the quota: the host's two CPUs.
    let svc = Service::new(Root::new(&root), Options { cpu_count: CpuCount::Cpuset }).unwrap();
    assert_eq!(render(&svc, Served::CpuOnline, pid), "0-1\n");
    assert_eq!(render(&svc, Served::Cpuinfo, pid).matches("processor\t:").count(), 2);

    // Cpuset {1}, no quota: one CPU, host CPU 1 renumbered 0.
    let root = fixture("hybrid-cpuset");
    let svc = service(&root);
    let pid = captured_pid(&root);
    let cpuinfo = render(&svc, Served::Cpuinfo, pid);
    assert_eq!(cpuinfo.matches("processor\t:").count(), 1);
    assert!(cpuinfo.contains("processor\t: 0\n") && cpuinfo.contains("apicid\t\t: 0\n"), "{cpuinfo}");
    assert_eq!(render(&svc, Served::CpuOnline, pid), "0\n");
    // No memory limit anywhere: the host's meminfo, byte for byte.
    let host = std::fs::read_to_string(root.join("proc/meminfo")).unwrap();
    assert_eq!(render(&svc, Served::Meminfo, pid), host);
    assert_eq!(svc.fallbacks.count(), 0);
}

#[test]
fn pure_v1_without_unified_tree_resolves_the_same() {
    let t = TempTree::of("hybrid-limited", "v1");
    let mi = t.0.join("proc/self/mountinfo");
    let text = std::fs::read_to_string(&mi).unwrap();
    std::fs::write(
        &mi,
        text.lines().filter(|l| !l.contains(" - cgroup2 ")).map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let svc = service(&t.0);
    assert_eq!(svc.sampler().hierarchies().layout(), cgprocfs::cgroup::mounts::Layout::V1);
    let pid = captured_pid(&t.0);
    assert_eq!(field(&render(&svc, Served::Meminfo, pid), "MemTotal"), 256 * 1024);
    assert_eq!(render(&svc, Served::CpuOnline, pid), "0\n");
}

/// Each corruption must make the container's file unrenderable: the reader gets the host's
/// file, the fallback is counted, nothing panics.
#[test]
fn bad_cgroup_files_fall_back_to_the_host_file() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("memstat-garbage", "memory/cgp-fix/leaf/memory.stat", Some("garbage\n\0\u{1}")),
        ("usage-negative", "memory/cgp-fix/leaf/memory.usage_in_bytes", Some("-1\n")),
        ("usage-empty", "memory/cgp-fix/leaf/memory.usage_in_bytes", Some("")),
        ("usage-huge", "memory/cgp-fix/leaf/memory.usage_in_bytes", Some("99999999999999999999999\n")),
        ("usage-missing", "memory/cgp-fix/leaf/memory.usage_in_bytes", None),
        ("quota-garbage", "cpu/cgp-fix/cpu.cfs_quota_us", Some("lots\n")),
        ("period-zero", "cpu/cgp-fix/cpu.cfs_period_us", Some("0\n")),
        ("cpuset-reversed", "cpuset/cgp-fix/leaf/cpuset.effective_cpus", Some("3-1\n")),
    ];
    for (tag, file, content) in cases {
        let t = TempTree::of("hybrid-limited", tag);
        let p = t.0.join("sys/fs/cgroup").join(file);
        match content {
            Some(c) => std::fs::write(&p, c).unwrap(),
            None => std::fs::remove_file(&p).unwrap(),
        }
        let svc = service(&t.0);
        let pid = captured_pid(&t.0);
        let view = if file.starts_with("memory") { Served::Meminfo } else { Served::CpuOnline };
        let host = std::fs::read(t.0.join(view.path())).unwrap();
        assert_eq!(svc.render_for(view, pid), Ok(host), "case {tag}");
        assert_eq!(svc.fallbacks.count(), 1, "case {tag}");
    }
}

/// `proc/slabinfo`: the memory cgroup's `memory.kmem.slabinfo` where the kernel fills it
/// (v1 before 5.9), else the host's. The text is this format as a 6.18 kernel wrote it
/// (`fixtures/slabinfo-linux-6.18`, the head of its /proc/slabinfo).
#[test]
fn slabinfo_is_the_cgroups_where_the_kernel_fills_it_else_the_hosts() {
    let t = TempTree::of("hybrid-limited", "slabinfo");
    let host = std::fs::read_to_string(fixture("slabinfo-linux-6.18")).unwrap();
    // The cgroup's: the header and every other cache of the host's.
    let own: String =
        host.lines().enumerate().filter(|(i, _)| *i < 2 || i % 2 == 0).map(|(_, l)| format!("{l}\n")).collect();
    std::fs::write(t.0.join("proc/slabinfo"), &host).unwrap();
    let memcg = t.0.join(LEAF).join("memory.kmem.slabinfo");
    std::fs::write(&memcg, &own).unwrap();
    let svc = service(&t.0);
    let pid = captured_pid(&t.0);
    assert_eq!(render(&svc, Served::Slabinfo, pid), own);
    // 5.9+ kernels leave the file empty: the host's, served as the container's (no fallback).
    std::fs::write(&memcg, "").unwrap();
    assert_eq!(render(&svc, Served::Slabinfo, pid), host);
    assert_eq!(svc.fallbacks.count(), 0);
    // Garbage is not served: the host's file, counted as a fallback.
    std::fs::write(&memcg, "not slabinfo\n").unwrap();
    assert_eq!(render(&svc, Served::Slabinfo, pid), host);
    assert_eq!(svc.fallbacks.count(), 1);
    assert_eq!(Served::Slabinfo.mode(), 0o400, "root only, like the host's");
}

#[test]
fn deleted_cgroup_and_vanished_caller_fall_back() {
    let t = TempTree::of("hybrid-limited", "deleted");
    let svc = service(&t.0);
    let pid = captured_pid(&t.0);
    std::fs::remove_dir_all(t.0.join(LEAF)).unwrap();
    let host = std::fs::read(t.0.join("proc/meminfo")).unwrap();
    assert_eq!(svc.render_for(Served::Meminfo, pid), Ok(host));
    // A caller that exited before its request was served.
    std::fs::remove_dir_all(t.0.join(format!("proc/{pid}"))).unwrap();
    assert_eq!(svc.render_for(Served::Cpuinfo, pid), Ok(std::fs::read(t.0.join("proc/cpuinfo")).unwrap()));
    assert_eq!(svc.render_for(Served::CpuOnline, 0), Ok(std::fs::read(t.0.join(Served::CpuOnline.path())).unwrap()));
    // A file the host cannot give either answers with the host's errno (no PSI: EOPNOTSUPP
    // in the kernel; here the fixture simply has no pressure files: ENOENT).
    assert_eq!(svc.render_for(Served::PressureIo, 0), Err(cgprocfs::error::Errno(libc::ENOENT)));
    assert_eq!(svc.fallbacks.count(), 4);
}

/// The trees the VM tier captured on a pure v2 and a pure v1 kernel (`CGPROCFS_VM_CAPTURE`):
/// parent 256 MiB and 0.5 CPU, leaf 1 GiB, ~30 MB of page cache and ~20 MB of anon memory.
#[test]
fn pure_v2_and_pure_v1_kernels_limited() {
    use cgprocfs::cgroup::mounts::Layout;
    for (name, layout, stat_of) in [
        ("v2-limited", Layout::V2, "sys/fs/cgroup/cgp-fix/leaf/memory.stat"),
        ("v1-limited", Layout::V1, "sys/fs/cgroup/memory/cgp-fix/leaf/memory.stat"),
    ] {
        let root = fixture(name);
        let pid = captured_pid(&root);
        let svc = service(&root);
        assert_eq!(svc.sampler().hierarchies().layout(), layout, "{name}");
        let out = render(&svc, Served::Meminfo, pid);
        let stat = root.join(stat_of);
        // The parent's limit wins over the leaf's.
        assert_eq!(field(&out, "MemTotal"), 256 * 1024, "{name}");
        let (file, anon, mapped, shmem) = match layout {
            Layout::V2 => ("file", "anon", "file_mapped", "shmem"),
            _ => ("total_cache", "total_rss", "total_mapped_file", "total_shmem"),
        };
        assert_eq!(field(&out, "AnonPages"), stat_key(&stat, anon) / 1024, "{name}");
        assert_eq!(field(&out, "Mapped"), stat_key(&stat, mapped) / 1024, "{name}");
        assert_eq!(field(&out, "Shmem"), stat_key(&stat, shmem) / 1024, "{name}");
        assert!(field(&out, "Cached") > 20 * 1024 && field(&out, "Cached") <= stat_key(&stat, file) / 1024, "{out}");
        assert!(field(&out, "AnonPages") > 15 * 1024, "{name}: {out}");
        let (free, avail, total) = (field(&out, "MemFree"), field(&out, "MemAvailable"), field(&out, "MemTotal"));
        assert!(free <= avail && avail <= total, "{name}: {free} {avail} {total}");
        // 0.5 CPU of quota: one CPU everywhere.
        assert_eq!(render(&svc, Served::CpuOnline, pid), "0\n", "{name}");
        assert_eq!(render(&svc, Served::Cpuinfo, pid).matches("processor\t:").count(), 1, "{name}");
        // v2: the cgroup's own pressure file, in the kernel's format.
        if layout == Layout::V2 {
            let p = render(&svc, Served::PressureMemory, pid);
            assert!(p.starts_with("some avg10=") && p.contains("\nfull avg10="), "{p}");
        }
        assert_eq!(svc.fallbacks.count(), 0, "{name}");
    }
}

/// Cpuset {1}, no memory limit, captured on pure v2 and pure v1.
#[test]
fn pure_v2_and_pure_v1_kernels_cpuset() {
    for name in ["v2-cpuset", "v1-cpuset"] {
        let root = fixture(name);
        let pid = captured_pid(&root);
        let svc = service(&root);
        let cpuinfo = render(&svc, Served::Cpuinfo, pid);
        assert_eq!(cpuinfo.matches("processor\t:").count(), 1, "{name}: {cpuinfo}");
        assert!(cpuinfo.contains("processor\t: 0\n"), "{name}");
        assert_eq!(render(&svc, Served::CpuOnline, pid), "0\n", "{name}");
        let host = std::fs::read_to_string(root.join("proc/meminfo")).unwrap();
        assert_eq!(render(&svc, Served::Meminfo, pid), host, "{name}: no memory limit, the host's file");
        assert_eq!(svc.fallbacks.count(), 0, "{name}");
    }
}
