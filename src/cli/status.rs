//! `cgprocfs status`: one screen about a running daemon, asked of its keeper over the control
//! socket (root only).

use anyhow::{Context, Result};
use cgprocfs::daemon::{default_pidfile, handover};
use cgprocfs::stats::{Status, BUCKETS_US};
use std::path::Path;

/// Prints the status of the daemon serving `mountpoint` (keeper found by `pidfile` or the
/// mount point's default), as text or JSON.
pub fn status(mountpoint: &Path, pidfile: Option<&Path>, json: bool, top: usize) -> Result<()> {
    let pidfile = match pidfile {
        Some(p) => p.to_path_buf(),
        None => {
            let mnt = std::path::absolute(mountpoint).with_context(|| format!("bad path {}", mountpoint.display()))?;
            default_pidfile(&mnt)
        }
    };
    let ctl = handover::control_path(&pidfile);
    let s = handover::status(&ctl)
        .with_context(|| format!("no keeper answers on {} (is `cgprocfs serve` running?)", ctl.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", text(&s, top, now_secs()));
    }
    Ok(())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn age(now: u64, since: u64) -> String {
    let s = now.saturating_sub(since);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86400, s / 3600 % 24),
    }
}

fn us(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(u64::MAX) => format!(">{}ms", BUCKETS_US[BUCKETS_US.len() - 1] / 1000),
        Some(v) if v >= 1000 => format!("<={}ms", v / 1000),
        Some(v) => format!("<={v}µs"),
    }
}

/// The status as one screen of text.
fn text(s: &Status, top: usize, now: u64) -> String {
    use std::fmt::Write;
    let k = &s.keeper;
    let mut o = String::new();
    let _ = writeln!(o, "cgprocfs {} serving {}", k.version, k.mountpoint);
    let worker = match (k.worker, &s.worker) {
        (Some(p), Some(w)) if w.pid == p => format!("worker pid {p}, up {}", age(now, w.started)),
        (Some(p), _) => format!("worker pid {p}"),
        (None, _) => "no worker running".into(),
    };
    let _ = writeln!(
        o,
        "keeper pid {}, up {}; {worker}; {} worker restart(s), {} handover(s)",
        k.pid,
        age(now, k.started),
        k.restarts,
        k.handovers
    );
    let _ = writeln!(
        o,
        "transport: /dev/fuse, {} thread(s); cached tree: {}; triggers: {}; seccomp: {}",
        k.threads,
        k.cache.as_deref().unwrap_or("none"),
        k.psi.as_deref().unwrap_or("none"),
        k.seccomp_socket.as_deref().unwrap_or("off")
    );
    let Some(w) = &s.worker else {
        let _ = writeln!(o, "\nno counters yet (the worker writes them every few seconds)");
        return o;
    };
    let _ = writeln!(
        o,
        "seccomp: {} container(s), {} answered, {} run for real",
        w.seccomp_containers, w.seccomp_answered, w.seccomp_continued
    );
    let _ = writeln!(
        o,
        "\n{:<34} {:>10} {:>9} {:>9} {:>10}  fallbacks by reason",
        "file", "requests", "p50", "p99", "host file"
    );
    for f in w.files.iter().filter(|f| f.requests > 0) {
        let fb: u64 = f.fallbacks.iter().map(|(_, n)| n).sum();
        let why: Vec<String> = f.fallbacks.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let _ = writeln!(
            o,
            "{:<34} {:>10} {:>9} {:>9} {:>10}  {}",
            f.file,
            f.requests,
            us(f.quantile_us(0.5)),
            us(f.quantile_us(0.99)),
            fb,
            why.join(", ")
        );
    }
    let total: usize = w.handles.iter().map(|h| h.handles).sum();
    let _ = writeln!(o, "\nopen handles: {total} in {} container(s)", w.handles.len());
    for h in w.handles.iter().take(top) {
        let _ = writeln!(o, "  {:>6} handles {:>9} bytes  {}", h.handles, h.bytes, h.container);
    }
    let _ = writeln!(o, "\nslowest requests (last 5 minutes):");
    for r in w.slowest.iter().take(top) {
        let _ = writeln!(o, "  {:>8} µs  {:<30} {} ({} ago)", r.us, r.file, r.container, age(now, r.at));
    }
    let _ = writeln!(o, "\n(counters as of {} ago)", age(now, w.at));
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use cgprocfs::stats::{FileStats, HandleUse, Keeper, Snapshot};

    #[test]
    fn one_screen_names_what_an_operator_looks_for() {
        let s = Status {
            keeper: Keeper {
                version: "9".into(),
                mountpoint: "/m".into(),
                pid: 10,
                started: 0,
                threads: 2,
                restarts: 3,
                handovers: 1,
                worker: Some(11),
                ..Default::default()
            },
            worker: Some(Snapshot {
                pid: 11,
                files: vec![FileStats {
                    file: "proc/meminfo".into(),
                    requests: 4,
                    latency_buckets: vec![3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    fallbacks: vec![("io".into(), 2)],
                    ..Default::default()
                }],
                handles: vec![HandleUse { container: "/sys/fs/cgroup/x".into(), handles: 7, bytes: 100 }],
                ..Default::default()
            }),
        };
        let t = text(&s, 5, 7200);
        for want in [
            "serving /m",
            "3 worker restart(s), 1 handover(s)",
            "proc/meminfo",
            "io 2",
            "<=10µs",
            "<=25µs",
            "7 handles",
            "/sys/fs/cgroup/x",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
    }
}
