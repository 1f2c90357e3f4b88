//! Live: what a running daemon says of itself — `cgprocfs status` (text and JSON, over the
//! keeper's control socket) and the Prometheus metrics file, parsed by the reference Python
//! parser — follows the reads containers make and a worker's restart; `show --explain` names
//! the source of every line.

use crate::common;

use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

fn status(d: &Daemon, json: bool) -> String {
    let mut c = Command::new(bin());
    c.arg("status").arg(&d.mnt).arg("--pidfile").arg(d.own_file("keeper.pid"));
    if json {
        c.arg("--json");
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The JSON status once `ok` holds for it (the worker writes its counters every 2 s).
fn status_when(d: &Daemon, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let s: Value = serde_json::from_str(&status(d, true)).unwrap();
        if ok(&s) {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{what} never showed: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn requests(s: &Value, file: &str) -> u64 {
    let files = s["worker"]["files"].as_array().cloned().unwrap_or_default();
    files.iter().find(|f| f["file"] == file).and_then(|f| f["requests"].as_u64()).unwrap_or(0)
}

/// The samples of the metrics file as the `prometheus_client` parser reads them:
/// `[[name, {labels}, value, family type], ...]`.
fn parse_metrics(text: &str) -> Vec<(String, Value, f64, String)> {
    let script = "import sys, json\n\
        from prometheus_client.parser import text_string_to_metric_families as families\n\
        out = [[s.name, s.labels, s.value, f.type] for f in families(sys.stdin.read()) for s in f.samples]\n\
        print(json.dumps(out))";
    let mut c = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(c.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "the parser rejects the metrics: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    let v: Vec<(String, Value, f64, String)> = serde_json::from_slice(&out.stdout).unwrap();
    v
}

fn sample(m: &[(String, Value, f64, String)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m.iter().find(|(n, l, _, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v)).map(|s| s.2)
}

fn status_and_metrics_follow_the_reads_and_a_worker_restart() {
    let test = "status_and_metrics_follow_the_reads_and_a_worker_restart";
    live_ready(test);
    programs_ready(test, &["python3"]);
    let has_parser =
        Command::new("python3").args(["-c", "import prometheus_client"]).status().is_ok_and(|s| s.success());
    if !has_parser {
        harness::skip(format!("{test} needs the prometheus-client Python package, which .ci/run installs"));
    }
    let d = Daemon::start("status");
    let cg = TestCgroup::new("status", &Limits { memory: Some(256 << 20), ..Default::default() });
    let meminfo = d.path("proc/meminfo");
    cg.run(&format!("sh -c 'for i in $(seq 25); do cat {} > /dev/null; done'", meminfo.display()));

    let s = status_when(&d, "25 meminfo reads", |s| requests(s, "proc/meminfo") >= 25);
    let worker = d.worker_pid();
    assert_eq!(s["keeper"]["pid"], d.pid(), "{s:#}");
    assert_eq!(s["keeper"]["worker"], worker, "{s:#}");
    assert_eq!(s["worker"]["pid"], worker, "{s:#}");
    assert_eq!(s["keeper"]["restarts"], 0, "{s:#}");
    assert_eq!(s["keeper"]["mountpoint"], d.mnt.display().to_string());
    let text = status(&d, false);
    for want in ["proc/meminfo", "0 worker restart(s)", "slowest requests", &format!("worker pid {worker}")] {
        assert!(text.contains(want), "{want:?} not in the status:\n{text}");
    }

    // The metrics file, as a node agent's textfile collector reads it.
    let prom = d.own_file("keeper.prom");
    let t = Instant::now();
    let m = loop {
        let m = parse_metrics(&std::fs::read_to_string(&prom).unwrap_or_default());
        if sample(&m, "cgprocfs_requests_total", &[("file", "proc/meminfo")]).is_some_and(|v| v >= 25.0) {
            break m;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the metrics never counted the reads: {m:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let reqs = sample(&m, "cgprocfs_requests_total", &[("file", "proc/meminfo")]).unwrap();
    let count = sample(&m, "cgprocfs_request_duration_seconds_count", &[("file", "proc/meminfo")]);
    assert_eq!(count, Some(reqs), "the histogram counts every request");
    let inf = sample(&m, "cgprocfs_request_duration_seconds_bucket", &[("file", "proc/meminfo"), ("le", "+Inf")]);
    assert_eq!(inf, Some(reqs));
    assert!(m.iter().any(|s| s.0 == "cgprocfs_request_duration_seconds_bucket" && s.3 == "histogram"));
    assert_eq!(sample(&m, "cgprocfs_worker_restarts_total", &[]), Some(0.0));
    assert!(sample(&m, "cgprocfs_keeper_start_time_seconds", &[]).is_some_and(|v| v > 1.6e9));
    assert!(std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777 == 0o644, "node agents read it");

    // A worker killed: the keeper's next one, and one restart counted.
    // SAFETY: the worker of the daemon this test started.
    unsafe { libc::kill(worker, libc::SIGKILL) };
    let s = status_when(&d, "the restart", |s| {
        s["keeper"]["restarts"] == 1 && s["worker"]["pid"].as_i64().is_some_and(|p| p != i64::from(worker))
    });
    assert_ne!(s["keeper"]["worker"], worker, "{s:#}");
    assert!(status(&d, false).contains("1 worker restart(s)"));
}

use std::os::unix::fs::PermissionsExt;

/// `show --explain`: the same content as `show`, each line with its source, the inputs named.
fn show_explain_annotates_every_line_with_its_source() {
    let test = "show_explain_annotates_every_line_with_its_source";
    live_ready(test);
    let cg = TestCgroup::new(
        "explain",
        &Limits { memory: Some(256 << 20), cpu: Some((100_000, 100_000)), ..Default::default() },
    );
    let mut sleeper = cg.command("sleep 30").spawn().unwrap();
    let pid = sleeper.id().to_string();
    // In the cgroup once the shell has exec-ed sleep (it joins first).
    let t = Instant::now();
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim() != "sleep" {
        assert!(t.elapsed() < Duration::from_secs(10), "the sleeper never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let show = |file: &str, explain: bool| {
        let mut c = Command::new(bin());
        c.args(["show", "--pid", &pid, file]);
        if explain {
            c.arg("--explain");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "show {file}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let plain = show("proc/meminfo", false);
    let explained = show("proc/meminfo", true);
    let (notes, lines): (Vec<&str>, Vec<&str>) = explained.lines().partition(|l| l.starts_with("# "));
    assert!(notes.iter().any(|n| n.contains("memory limit of the chain 268435456 B")), "{explained}");
    assert!(notes.iter().any(|n| n.contains("source: `proc/meminfo`")), "{explained}");
    assert_eq!(lines.len(), plain.lines().count(), "one annotated line per line of the file");
    for (e, p) in lines.iter().zip(plain.lines()) {
        let (content, why) = e.split_once("  <- ").unwrap_or_else(|| panic!("no source on {e:?}"));
        // Same lines in the same order (values move between the two runs: the host's
        // Committed_AS, the container's usage).
        assert_eq!(content.split(':').next(), p.split(':').next(), "the explained content is the served content");
        assert!(!why.is_empty());
    }
    let total = lines.iter().find(|l| l.starts_with("MemTotal:")).unwrap();
    assert!(plain.lines().any(|l| total.starts_with(l)), "MemTotal as served: {total}");
    assert!(
        total.contains("262144 kB") && total.contains("min(memory limit of the cgroup chain, host MemTotal)"),
        "{total}"
    );
    assert!(lines.iter().any(|l| l.starts_with("Shmem:") && l.contains("memory.stat shmem")), "{explained}");

    let online = show("sys/devices/system/cpu/online", true);
    assert!(online.contains("visible CPUs [") && online.contains("100000/100000 µs"), "{online}");
    assert!(online.lines().any(|l| l.starts_with("0 ") && l.contains("<- 0..N-1")), "{online}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

crate::cgprocfs_tests!(
    status_and_metrics_follow_the_reads_and_a_worker_restart,
    show_explain_annotates_every_line_with_its_source
);
