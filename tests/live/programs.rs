//! Live: the programs operators run in containers, each started by `cgprocfs run` with a
//! 256 MiB memory limit and 1 CPU (the product's main job: bind mounts and the seccomp answers
//! together) and asserting what it shows. `docs/programs.md` holds the table "what each program
//! reads and what it sees"; each test checks that its row there says what it observed.

use crate::common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

const LIMITS: &[&str] = &["--memory", "256M", "--cpus", "1"];
const MIB: u64 = 1024 * 1024;

/// Runs `script` under `cgprocfs run LIMITS EXTRA` (an `--cpus` in EXTRA replaces the one of
/// LIMITS) with a daemon of its own (a mount point nothing serves), returning stdout; fails on
/// a non-zero exit.
fn run(extra: &[&str], script: &str) -> String {
    let mnt = std::env::temp_dir().join(unique("programs"));
    let limits = if extra.contains(&"--cpus") { &LIMITS[..2] } else { LIMITS };
    let out = Command::new(bin())
        .arg("run")
        .args(limits)
        .args(extra)
        .arg("--mountpoint")
        .arg(&mnt)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir(&mnt);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script}: {}\n{stdout}\n{stderr}", out.status);
    stdout.into_owned()
}

/// The line of `out` that starts with `tag ` (the tests label their lines), without the tag.
fn tagged<'a>(out: &'a str, tag: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no line {tag:?} in:\n{out}"))
}

/// Checks that docs/programs.md's row for `program` says `seen` in its column "under cgprocfs".
fn doc_row(program: &str, seen: &str) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/programs.md")).unwrap();
    let row = doc
        .lines()
        .find(|l| l.split('|').nth(1).map(str::trim) == Some(program))
        .unwrap_or_else(|| panic!("docs/programs.md has no row for {program}"));
    let cell = row.split('|').nth(3).map(str::trim).unwrap_or_default();
    assert_eq!(cell, seen, "docs/programs.md, row {program}: the column 'under cgprocfs' differs from what it showed");
}

fn ready(test: &str, programs: &[&str]) {
    live_ready(test);
    programs_ready(test, programs);
}

/// htop, on a terminal (tmux): one CPU meter instead of one per host CPU, the limit as the
/// memory meter's total, the container's uptime.
fn htop_shows_one_cpu_meter_and_the_memory_limit() {
    let test = "htop_shows_one_cpu_meter_and_the_memory_limit";
    ready(test, &["htop", "tmux"]);
    let sock = unique("tmux");
    let out = run(
        &[],
        &format!(
            "export TERM=xterm; tmux -L {sock} new-session -d -x 120 -y 30 htop && sleep 3; \
             tmux -L {sock} capture-pane -p; tmux -L {sock} kill-server"
        ),
    );
    let meters: Vec<&str> = out
        .lines()
        .map(str::trim_start)
        .filter(|l| l.split('[').next().is_some_and(|p| p == "CPU" || p.parse::<u32>().is_ok()))
        .collect();
    let mem = out
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with("Mem["))
        .unwrap_or_else(|| panic!("no Mem meter:\n{out}"));
    let mem = mem.split(']').next().unwrap_or_default();
    let mem_total = mem.rsplit('/').next().unwrap_or_default().trim();
    let up = out.lines().find_map(|l| l.split("Uptime: ").nth(1)).unwrap_or_else(|| panic!("no uptime:\n{out}"));
    assert_eq!(meters.len(), 1, "CPU meters:\n{out}");
    assert_eq!(mem_total, "256M", "{mem}");
    assert!(up.trim().starts_with("00:00:0"), "uptime {up}");
    doc_row("htop", &format!("{} CPU meter, `Mem[…/{mem_total}]`, uptime `00:00:0x`", meters.len()));
}

/// procps `vmstat -s`, sysstat `iostat -c`, util-linux `lscpu`, BusyBox `top`.
fn vmstat_iostat_lscpu_and_busybox_top_see_the_container() {
    let test = "vmstat_iostat_lscpu_and_busybox_top_see_the_container";
    ready(test, &["vmstat", "iostat", "lscpu", "busybox"]);
    let out = run(
        &[],
        "echo vmstat $(vmstat -s | grep 'total memory'); echo iostat $(iostat -c | head -1 | grep -o '([0-9]* CPU)'); \
         echo lscpu $(lscpu | grep '^CPU(s):'); echo bbtop $(busybox top -bn1 | grep '^Mem:')",
    );
    let vmstat = tagged(&out, "vmstat");
    assert_eq!(vmstat, "262144 K total memory", "{out}");
    doc_row("`vmstat -s`", &format!("`{vmstat}`"));
    let iostat = tagged(&out, "iostat");
    assert_eq!(iostat, "(1 CPU)", "{out}");
    doc_row("`iostat -c`", &format!("`{iostat}`"));
    let lscpu = tagged(&out, "lscpu");
    assert_eq!(lscpu.split_whitespace().last(), Some("1"), "{out}");
    doc_row("`lscpu`", "`CPU(s): 1`");
    // BusyBox top: "Mem: 6608K used, 255536K free, ...": used + free is MemTotal.
    let mem = tagged(&out, "bbtop");
    let k = |i: usize| mem.split_whitespace().nth(i).and_then(|v| v.trim_end_matches('K').parse::<u64>().ok()).unwrap();
    assert_eq!(k(1) + k(3), 262_144, "{mem}");
    doc_row("BusyBox `top -bn1`", &format!("used + free = {}K", k(1) + k(3)));
}

/// Node's `os` module: CPUs from /proc/cpuinfo and /proc/stat, memory from /proc/meminfo,
/// uptime from /proc/uptime, load from sysinfo(2).
fn node_os_module_sees_the_container() {
    let test = "node_os_module_sees_the_container";
    ready(test, &["node"]);
    let out = run(
        &[],
        "node -e 'const os = require(\"os\"); console.log(\"node\", os.cpus().length, os.totalmem(), os.freemem(), os.uptime(), os.loadavg().length)'",
    );
    let f: Vec<f64> = tagged(&out, "node").split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!(f[0], 1.0, "os.cpus(): {out}");
    assert_eq!(f[1], (256 * MIB) as f64, "os.totalmem(): {out}");
    assert!(f[2] > 0.0 && f[2] <= f[1], "os.freemem(): {out}");
    assert!(f[3] < 60.0, "os.uptime(): {out}");
    doc_row(
        "Node `os`",
        &format!("`cpus()` {}, `totalmem()` {} MiB, `freemem()` ≤ it, `uptime()` < 60 s", f[0], f[1] as u64 / MIB),
    );
}

/// Python's psutil: memory, CPU count, boot time, and CPU times with steal under a quota.
fn psutil_sees_memory_cpus_and_steal() {
    let test = "psutil_sees_memory_cpus_and_steal";
    ready(test, &["python3"]);
    // Debian's python3 (psutil from python3-psutil), whatever python3 the PATH has first.
    let py = "/usr/bin/python3";
    let ok = Command::new(py).args(["-c", "import psutil"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        common::harness::skip(format!("{test} needs python3-psutil, which .ci/run installs"));
    }
    // Half a CPU and a spinner: the one vCPU is about half busy, half steal.
    let out = run(
        &["--cpus", "0.5"],
        &format!(
            "sh -c 'while :; do :; done' & {py} -c '
import psutil
m = psutil.virtual_memory()
print(\"mem\", m.total, m.available)
print(\"cpus\", psutil.cpu_count())
print(\"boot\", int(psutil.boot_time()))
t = psutil.cpu_times_percent(interval=2)
print(\"times\", t.user + t.system, t.steal, t.idle)
'; kill $!"
        ),
    );
    let mem: Vec<u64> = tagged(&out, "mem").split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!(mem[0], 256 * MIB, "{out}");
    assert!(mem[1] <= mem[0], "{out}");
    assert_eq!(tagged(&out, "cpus"), "1", "{out}");
    // btime stays the host's: ps and psutil compute every process's start time from it.
    let host_btime = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("btime ").map(|v| v.trim().to_string()))
        .unwrap();
    assert_eq!(tagged(&out, "boot"), host_btime, "{out}");
    let t: Vec<f64> = tagged(&out, "times").split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert!(t[0] > 20.0 && t[0] < 70.0, "busy % {out}");
    assert!(t[1] > 25.0, "steal % {out}");
    assert!(t[2] < 25.0, "idle % {out}");
    doc_row("psutil", "`virtual_memory().total` 256 MiB, `cpu_count()` 1, `boot_time()` the host's, `cpu_times_percent()` steal > 25 % under a 0.5 quota");
}

/// The JDK sizes its heap and thread pools from what it sees: with container support (it
/// reads the cgroup itself) and without (sysinfo(2) and sched_getaffinity(2), answered through
/// seccomp; the CPU count only with `--seccomp-affinity`).
fn jdk_sees_one_cpu_and_sizes_its_heap_from_the_limit_both_ways() {
    let test = "jdk_sees_one_cpu_and_sizes_its_heap_from_the_limit_both_ways";
    ready(test, &["java"]);
    let scratch = Scratch::new("jdk");
    let src = &scratch.0;
    std::fs::write(
        src.join("P.java"),
        "public class P { public static void main(String[] a) { Runtime r = Runtime.getRuntime(); \
         System.out.println(a[0] + \" \" + r.availableProcessors() + \" \" + r.maxMemory() / 1048576); } }",
    )
    .unwrap();
    let p = src.join("P.java");
    let p = p.display();
    // The interpreter only: the sizes are the JVM's start-up ergonomics, and the JIT's code
    // has crashed under the VM tier's emulated CPU.
    let script = format!("java -Xint {p} on; java -Xint -XX:-UseContainerSupport {p} off");
    let plain = run(&[], &script);
    let affinity = run(&["--seccomp-affinity"], &script);
    let host_heap = {
        let o = Command::new("java")
            .args(["-Xint", "-XX:-UseContainerSupport"])
            .arg(src.join("P.java"))
            .arg("host")
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        tagged(&s, "host").split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    };
    let seen = |out: &str, tag: &str| -> (u32, u64) {
        let f: Vec<u64> = tagged(out, tag).split_whitespace().map(|v| v.parse().unwrap()).collect();
        (f[0] as u32, f[1])
    };
    let n = host_cpus() as u32;
    // Half the limit at most (JDK 17 takes 50 % below 256 MiB-ish, minus a survivor space).
    let small = |heap: u64| (64..=128).contains(&heap);
    for (out, tag, cpus) in [(&plain, "on", 1), (&plain, "off", n), (&affinity, "on", 1), (&affinity, "off", 1)] {
        let (c, heap) = seen(out, tag);
        assert_eq!(c, cpus, "{tag}: {out}");
        assert!(small(heap), "{tag}: heap {heap} MiB (host: {host_heap} MiB): {out}");
    }
    assert!(host_heap > 128, "the host's heap {host_heap} MiB: the test needs a host with more than 512 MiB");
    let (_, heap) = seen(&plain, "on");
    doc_row("JDK 17", &format!("`availableProcessors()` 1, max heap {heap} MiB"));
    let (_, heap) = seen(&plain, "off");
    doc_row(
        "JDK 17 `-XX:-UseContainerSupport`",
        &format!("max heap {heap} MiB; `availableProcessors()` the host's, 1 with `--seccomp-affinity`"),
    );
}

/// Go's `runtime.NumCPU()` counts the affinity mask: the host's CPUs unless the daemon answers
/// sched_getaffinity (`--seccomp-affinity`).
fn go_numcpu_follows_the_affinity_answer() {
    let test = "go_numcpu_follows_the_affinity_answer";
    ready(test, &["go"]);
    let numcpu = go_numcpu();
    let script = format!("{} ", numcpu.display());
    let plain = run(&[], &script);
    let affinity = run(&["--seccomp-affinity"], &script);
    assert_eq!(tagged(&plain, "go"), format!("{0} {0}", host_cpus()), "NumCPU, GOMAXPROCS: {plain}");
    assert_eq!(tagged(&affinity, "go"), "1 1", "NumCPU, GOMAXPROCS: {affinity}");
    doc_row("Go `runtime.NumCPU()`", "the host's; 1 with `--seccomp-affinity` (also `GOMAXPROCS`)");
}

const GO_SRC: &str = "package main\n\nimport (\n\t\"fmt\"\n\t\"runtime\"\n)\n\nfunc main() { fmt.Println(\"go\", runtime.NumCPU(), runtime.GOMAXPROCS(0)) }\n";

/// The Go program, built once (in the target directory; the VM tier, whose root is read-only,
/// finds it there or builds its own in the temporary directory).
fn go_numcpu() -> PathBuf {
    let name = format!("numcpu-{:016x}", cgprocfs::fnv(GO_SRC.as_bytes()));
    let built = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go").join(&name);
    if built.exists() {
        return built;
    }
    let dir = if std::fs::create_dir_all(built.parent().unwrap()).is_ok() {
        built.parent().unwrap().to_path_buf()
    } else {
        std::env::temp_dir().join(unique("go"))
    };
    let work = dir.join(format!("{name}.src"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("main.go"), GO_SRC).unwrap();
    let out = dir.join(&name);
    let o = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg("main.go")
        .current_dir(&work)
        .env("GOCACHE", work.join("cache"))
        .env("GOPATH", work.join("gopath"))
        .env("GO111MODULE", "off")
        .output()
        .unwrap();
    assert!(o.status.success(), "go build: {}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&work);
    out
}

/// slabtop reads `/proc/slabinfo` through the bind `run` makes: the file the daemon serves
/// (per cgroup where the kernel keeps one, the host's on 5.9+ kernels), root only like the
/// host's.
fn slabtop_reads_the_served_slabinfo() {
    let test = "slabtop_reads_the_served_slabinfo";
    ready(test, &["slabtop", "setpriv"]);
    let out = run(
        &[],
        "echo MOUNT $(grep ' /proc/slabinfo ' /proc/self/mountinfo | sed 's/.* - //' | cut -d' ' -f1); \
         echo OBJECTS $(slabtop -o | grep -c 'Active / Total Objects'); \
         echo CACHES $(slabtop -o | awk 'f && NF {n++} /OBJS ACTIVE/ {f=1} END {print n}'); \
         echo SERVED $(awk 'NR > 2' /proc/slabinfo | wc -l); \
         echo NOBODY $(setpriv --reuid=65534 --regid=65534 --clear-groups cat /proc/slabinfo 2>&1 >/dev/null | grep -c 'Permission denied')",
    );
    assert_eq!(tagged(&out, "MOUNT"), "fuse.cgprocfs", "bound from the mount: {out}");
    assert_eq!(tagged(&out, "OBJECTS"), "1", "slabtop's summary: {out}");
    let caches: u64 = tagged(&out, "CACHES").parse().unwrap();
    let served: u64 = tagged(&out, "SERVED").parse().unwrap();
    assert!(caches > 0 && caches <= served, "slabtop lists the served caches ({caches} of {served}): {out}");
    assert_eq!(tagged(&out, "NOBODY"), "1", "other users are refused: {out}");
    doc_row("`slabtop -o`", "the served caches (per cgroup before Linux 5.9, the host's after); root only");
}

crate::cgprocfs_tests!(
    slabtop_reads_the_served_slabinfo,
    htop_shows_one_cpu_meter_and_the_memory_limit,
    vmstat_iostat_lscpu_and_busybox_top_see_the_container,
    node_os_module_sees_the_container,
    psutil_sees_memory_cpus_and_steal,
    jdk_sees_one_cpu_and_sizes_its_heap_from_the_limit_both_ways,
    go_numcpu_follows_the_affinity_answer,
);
