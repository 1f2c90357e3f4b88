//! `cgprocfs show --explain`: a served file as a container reads it, each line with where its
//! value came from. The content is the very rendering the mount serves ([`Service::render_with`]
//! through the file's catalog row); the per-line sources come from the renderer's own module
//! (meminfo's from the same `compute` that makes its values), the inputs from the same service
//! calls the row makes.

use crate::catalog::Served;
use crate::cgroup::{CgroupDir, Container};
use crate::service::Service;
use crate::view::meminfo;

/// A file explained: notes on its inputs, then each line with its source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Explained {
    /// What the file was computed from (cgroup directories, limits, CPUs), or why it is the
    /// host's.
    pub notes: Vec<String>,
    /// Each line of the content, with where it comes from.
    pub lines: Vec<(String, &'static str)>,
}

impl Explained {
    /// As text: notes as `#` comments, then each line padded to a column and its source.
    pub fn text(&self) -> String {
        let mut o = String::new();
        for n in &self.notes {
            o.push_str("# ");
            o.push_str(n);
            o.push('\n');
        }
        let width = self.lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0).min(60);
        for (l, why) in &self.lines {
            o.push_str(&format!("{l:<width$}  <- {why}\n"));
        }
        o
    }
}

fn dir(name: &str, d: &Option<CgroupDir>) -> Option<String> {
    d.as_ref().map(|d| format!("{name} {} ({:?})", d.path.display(), d.version))
}

/// `view` as container `c` reads it, explained.
pub fn explain(svc: &Service, view: Served, c: &Container) -> Explained {
    let mut notes = Vec::new();
    let cg = &c.cgroups;
    let dirs: Vec<String> = [
        dir("memory", &cg.memory),
        dir("cpu", &cg.cpu),
        dir("cpuacct", &cg.cpuacct),
        dir("cpuset", &cg.cpuset),
        dir("blkio", &cg.blkio),
        dir("unified", &cg.unified),
    ]
    .into_iter()
    .flatten()
    .collect();
    notes.push(format!("{} for the container of cgroups: {}", view.path(), dirs.join(", ")));
    notes.push(match c.init {
        Some(p) => format!("its pid namespace's init is host pid {p}"),
        None => "it shares the host's pid namespace".into(),
    });
    notes.push(format!("source: {}", view.about()));
    notes.extend(inputs(svc, view, c));
    let sampler = svc.sampler();
    let (content, hosts, fallback) = match view.make(sampler, c) {
        Ok(s) => (s.text, s.origin == crate::catalog::Origin::Host, None),
        Err(e) => (crate::catalog::host_text(sampler, view).map(|h| h.text).unwrap_or_default(), true, Some(e)),
    };
    if let Some(e) = &fallback {
        notes.push(format!("the host's file, because the container's cannot be computed: {e}"));
    }
    let whys: Vec<&'static str> = match (view, &fallback) {
        (_, Some(_)) => vec!["the host's (fallback)"; content.lines().count()],
        (_, None) if hosts => vec!["the host's line: no cgroup of its own for this file"; content.lines().count()],
        (Served::Meminfo, None) => match (sampler.host_meminfo(), sampler.memory(c)) {
            (Ok(h), Ok(m)) => meminfo::explain(&h, &m, &content),
            _ => vec!["computed by the renderer"; content.lines().count()],
        },
        (v, None) => content.lines().map(|l| line_source(v, l)).collect(),
    };
    Explained { notes, lines: content.lines().map(str::to_string).zip(whys).collect() }
}

/// The inputs the row of `view` reads, as the service computes them.
fn inputs(svc: &Service, view: Served, c: &Container) -> Vec<String> {
    let mut n = Vec::new();
    let sampler = svc.sampler();
    match view {
        Served::Meminfo | Served::Swaps => match sampler.memory(c) {
            Ok(m) => n.push(format!(
                "memory limit of the chain {}, usage {} B, swap limit {}, swap usage {}",
                limit_source(svc, c, m.limit),
                m.usage,
                m.swap_limit.map_or("none".into(), |l| format!("{l} B")),
                m.swap_usage.map_or("none".into(), |u| format!("{u} B")),
            )),
            Err(e) => n.push(format!("memory counters unreadable: {e}")),
        },
        Served::Cpuinfo | Served::CpuOnline | Served::CpuPossible | Served::CpuPresent | Served::Stat => {
            match sampler.cpu_inputs(&c.cgroups) {
                Ok(i) => n.push(i),
                Err(e) => n.push(format!("CPU limits unreadable: {e}")),
            }
        }
        _ => {}
    }
    if matches!(view, Served::Stat | Served::Uptime | Served::Loadavg) {
        n.push(match c.cgroups.cpu_accounting() {
            Some(d) => format!("CPU time and threads from {}", d.path.display()),
            None => "no CPU cgroup of its own: the host's file".into(),
        });
    }
    n
}

/// The memory limit the container's meminfo shows and which cgroup of the chain sets it, from
/// which file: with Kubernetes pod-level resources it is the pod's cgroup, an ancestor.
fn limit_source(svc: &Service, c: &Container, limit: Option<u64>) -> String {
    let Some(l) = limit else { return "none (the host's file)".into() };
    let Some(d) = &c.cgroups.memory else { return format!("{l} B") };
    match svc.sampler().memory_limit(d) {
        Ok(Some((v, at))) if v == l => {
            format!("{l} B, set by {}/{}", at.display(), crate::cgroup::memory::limit_file(d.version))
        }
        // v1 takes the limit from memory.stat's hierarchical_memory_limit, which also folds in
        // what the limit files do not show (a parent's lower memsw or soft settings).
        _ => format!("{l} B (memory.stat hierarchical_memory_limit of {})", d.path.display()),
    }
}

/// Where a line of a file other than meminfo comes from.
fn line_source(view: Served, line: &str) -> &'static str {
    let first = line.split([' ', '\t', ':']).next().unwrap_or("");
    match view {
        Served::Stat => match first {
            "cpu" => "sum over every vCPU the container had: user/system split of its CPU time, idle = age - used, steal = throttled + run-queue wait",
            c if c.starts_with("cpu") => "one visible vCPU: the container's CPU time spread over its N CPUs",
            "procs_running" | "procs_blocked" => "the container's threads in R / D state",
            _ => "the host's line",
        },
        Served::Cpuinfo => match first {
            "processor" => "renumbered 0..N-1 over the visible CPUs",
            "siblings" | "cpu cores" => "the visible CPU count",
            "" => "",
            _ => "the host's block of that CPU",
        },
        Served::Uptime => "the container's age (its init's start, or its oldest process's) and its vCPUs' idle time",
        Served::Loadavg => "the container's runnable + blocked threads, sampled every 5 s with the kernel's arithmetic; running/total threads; last pid of its namespace",
        Served::CpuOnline | Served::CpuPossible | Served::CpuPresent => "0..N-1, N the visible CPUs",
        Served::Swaps => "the same SwapTotal/SwapFree as the container's meminfo",
        Served::Diskstats => "the container's io.stat / blkio counters per device",
        Served::PressureCpu | Served::PressureMemory | Served::PressureIo => "the container's cgroup pressure file (the host's without a unified cgroup of its own)",
        Served::Slabinfo => "the container's memory.kmem.slabinfo",
        // Meminfo's lines come from its own explain; a file added later says this much.
        _ => "computed by the file's renderer",
    }
}
