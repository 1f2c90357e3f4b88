//! The command lines of `serve` and of the processes the daemon starts itself — a worker from
//! its keeper, a new keeper from an upgrading one — as typed values. Each is parsed by its
//! clap definition here and built back into arguments by `to_args` beside it; a round-trip
//! test keeps the two in step, so a keeper never starts a worker with a flag it does not know.

use super::Adopted;
use crate::fuse::session::InitParams;
use crate::service::Options;
use crate::view::cpus::CpuCount;
use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

pub use crate::files::DEFAULT_MOUNTPOINT;
/// Default seccomp listener socket of the daemon on the default mount point.
pub const DEFAULT_SECCOMP_SOCKET: &str = "/run/cgprocfs/seccomp.sock";

/// How the visible CPU count is derived (the command-line spelling of [`CpuCount`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CpuCountArg {
    /// min(cpuset size, ceil(quota / period)) — what the container can actually use.
    #[default]
    Quota,
    /// The cpuset size only, ignoring the quota (lxcfs without `--enable-cpuview`).
    Cpuset,
}

impl From<CpuCountArg> for CpuCount {
    fn from(a: CpuCountArg) -> CpuCount {
        match a {
            CpuCountArg::Quota => CpuCount::Quota,
            CpuCountArg::Cpuset => CpuCount::Cpuset,
        }
    }
}

/// What is served and how: the options `serve` passes on to its workers and to the keeper an
/// upgrade starts.
#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// After answering a request, a worker may keep polling for the next one up to this many
    /// microseconds before it sleeps, where waking a sleeping thread costs more than the
    /// request; each connection measures whether it does (docs/architecture.md). 0 (the
    /// default) never polls: on hosts whose wake-ups are cheap polling only costs a CPU.
    #[arg(long, default_value_t = 0)]
    pub spin_us: u64,
    /// Also serve `.bench/floor`, a constant file, for the benchmarks' FUSE-floor figures (and,
    /// in each key directory of the cached tree, five copies told changed at every GETATTR).
    #[arg(long, hide = true)]
    pub bench_floor: bool,
    /// How many CPUs a container sees: `quota` = min(cpuset, ceil(quota/period)); `cpuset`
    /// ignores the CFS quota.
    #[arg(long, value_enum, default_value_t = CpuCountArg::Quota)]
    pub cpu_count: CpuCountArg,
    /// Also answer sched_getaffinity(2) for containers whose seccomp profile notifies it: a
    /// mask of their visible CPUs, so programs that size thread pools from the affinity mask
    /// (JVMs without container support, Go, .NET, nproc) follow the quota. Off by default:
    /// the mask then no longer says where a thread may run (docs/operations.md).
    #[arg(long)]
    pub seccomp_affinity: bool,
    /// Open handles one container (cgroup) may hold at once; its further opens fail with
    /// EMFILE, so no container can exhaust the table the others share.
    #[arg(long, default_value_t = crate::fuse::HANDLES_PER_CONTAINER)]
    pub handles_per_container: usize,
    /// PSI triggers one container (cgroup) may hold at once on the trigger connection; its
    /// further trigger writes fail with EMFILE. All containers together hold at most half of
    /// the worker's open-file limit (docs/security.md).
    #[arg(long, default_value_t = crate::fuse::psi::TRIGGERS_PER_CONTAINER)]
    pub triggers_per_container: usize,
    /// Freshness bound of the cached tree (the files the OCI hook and `run` bind), in
    /// milliseconds: a read returns content rendered at most this long before; reads within
    /// it are served from the page cache without asking the daemon (docs/performance.md).
    #[arg(long, default_value_t = 100)]
    pub fresh_ms: u64,
}

impl ServeOptions {
    /// The service's rendering options.
    pub fn service(&self) -> Options {
        Options { cpu_count: self.cpu_count.into() }
    }

    /// The arguments that parse back into `self`.
    pub fn to_args(&self) -> Vec<OsString> {
        let cpu = match self.cpu_count {
            CpuCountArg::Quota => "quota",
            CpuCountArg::Cpuset => "cpuset",
        };
        let mut a = args(&[
            ("--cpu-count", cpu.to_string()),
            ("--spin-us", self.spin_us.to_string()),
            ("--handles-per-container", self.handles_per_container.to_string()),
            ("--triggers-per-container", self.triggers_per_container.to_string()),
            ("--fresh-ms", self.fresh_ms.to_string()),
        ]);
        flag(&mut a, self.bench_floor, "--bench-floor");
        flag(&mut a, self.seccomp_affinity, "--seccomp-affinity");
        a
    }
}

/// The hidden `worker` subcommand: the serving process a keeper starts on inherited fds.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct WorkerLine {
    /// The shared tree's inherited `/dev/fuse` fds.
    #[arg(long, value_delimiter = ',', required = true)]
    pub fds: Vec<RawFd>,
    /// File keeping per-container counters across worker restarts.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// The keeper's socket for new seccomp notification fds.
    #[arg(long)]
    pub seccomp_chan: Option<RawFd>,
    /// Inherited seccomp notification fds.
    #[arg(long, value_delimiter = ',')]
    pub seccomp_fds: Vec<RawFd>,
    /// The cached tree's /dev/fuse fds.
    #[arg(long, value_delimiter = ',')]
    pub cache_fds: Vec<RawFd>,
    /// The trigger connection's /dev/fuse fds (fuse/psi.rs).
    #[arg(long, value_delimiter = ',')]
    pub psi_fds: Vec<RawFd>,
    /// What is served and how.
    #[command(flatten)]
    pub opts: ServeOptions,
    /// What the worker reports, and the keeper's facts it reports with.
    #[command(flatten)]
    pub report: ReportLine,
}

/// Where a worker writes its counters, and what it knows of its keeper.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportLine {
    /// Where the worker writes its counters (JSON, root only) every few seconds.
    #[arg(long)]
    pub stats: Option<PathBuf>,
    /// Where it writes them in the Prometheus text format (readable by node agents).
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Workers the keeper started before this one.
    #[arg(long, default_value_t = 0)]
    pub restarts: u64,
    /// Times the connection was handed on (upgrade, handover, service manager) since it was
    /// mounted.
    #[arg(long, default_value_t = 0)]
    pub handovers: u64,
    /// When the keeper started, seconds since the epoch.
    #[arg(long, default_value_t = 0)]
    pub keeper_started: u64,
}

impl ReportLine {
    /// The arguments that parse back into `self`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = Vec::new();
        opt(&mut a, "--stats", self.stats.clone());
        opt(&mut a, "--metrics", self.metrics.clone());
        a.extend(args(&[
            ("--restarts", self.restarts.to_string()),
            ("--handovers", self.handovers.to_string()),
            ("--keeper-started", self.keeper_started.to_string()),
        ]));
        a
    }
}

impl WorkerLine {
    /// The arguments after `worker` that parse back into `self`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = args(&[("--fds", fd_list(&self.fds))]);
        opt(&mut a, "--cache-fds", (!self.cache_fds.is_empty()).then(|| fd_list(&self.cache_fds)));
        opt(&mut a, "--psi-fds", (!self.psi_fds.is_empty()).then(|| fd_list(&self.psi_fds)));
        opt(&mut a, "--state", self.state.clone());
        opt(&mut a, "--seccomp-chan", self.seccomp_chan.map(|c| c.to_string()));
        opt(&mut a, "--seccomp-fds", (!self.seccomp_fds.is_empty()).then(|| fd_list(&self.seccomp_fds)));
        a.extend(self.opts.to_args());
        a.extend(self.report.to_args());
        a
    }
}

/// The live connection a keeper takes over from the one that exec-ed it (an upgrade): hidden
/// flags of `serve`.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct AdoptLine {
    /// Internal, set by an upgrade: the inherited /dev/fuse fds of the live connection.
    #[arg(long, hide = true, value_delimiter = ',', requires_all = ["init_minor", "init_flags"])]
    pub adopt: Vec<RawFd>,
    /// Internal, set by an upgrade: the protocol minor negotiated at FUSE_INIT.
    #[arg(long, hide = true)]
    pub init_minor: Option<u32>,
    /// Internal, set by an upgrade: the flags negotiated at FUSE_INIT.
    #[arg(long, hide = true)]
    pub init_flags: Option<u32>,
    /// Internal, set by an upgrade: the seccomp listener fd, then the notification fds.
    #[arg(long, hide = true, value_delimiter = ',')]
    pub seccomp_adopt: Vec<RawFd>,
    /// Internal, set by an upgrade: the control socket's listening fd.
    #[arg(long, hide = true)]
    pub control_adopt: Option<RawFd>,
    /// Internal, set by an upgrade: the cached tree's /dev/fuse fds.
    #[arg(long, hide = true, value_delimiter = ',')]
    pub adopt_cache: Vec<RawFd>,
    /// Internal, set by an upgrade: the trigger connection's /dev/fuse fds.
    #[arg(long, hide = true, value_delimiter = ',')]
    pub adopt_psi: Vec<RawFd>,
    /// Internal, set by an upgrade: times the connection was handed on before.
    #[arg(long, hide = true, default_value_t = 0)]
    pub handovers: u64,
}

impl AdoptLine {
    /// The connection these flags hand on, if they name one.
    pub fn adopted(&self) -> Option<Adopted> {
        match (self.adopt.is_empty(), self.init_minor, self.init_flags) {
            (false, Some(minor), Some(flags)) => Some(Adopted {
                fds: self.adopt.clone(),
                cache: self.adopt_cache.clone(),
                psi: self.adopt_psi.clone(),
                params: InitParams { minor, flags },
                seccomp: self.seccomp_adopt.split_first().map(|(l, n)| (*l, n.to_vec())),
                control: self.control_adopt,
                handovers: self.handovers,
            }),
            _ => None,
        }
    }

    /// The arguments that parse back into `self`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = Vec::new();
        opt(&mut a, "--adopt", (!self.adopt.is_empty()).then(|| fd_list(&self.adopt)));
        opt(&mut a, "--init-minor", self.init_minor.map(|m| m.to_string()));
        opt(&mut a, "--init-flags", self.init_flags.map(|f| f.to_string()));
        opt(&mut a, "--seccomp-adopt", (!self.seccomp_adopt.is_empty()).then(|| fd_list(&self.seccomp_adopt)));
        opt(&mut a, "--control-adopt", self.control_adopt.map(|c| c.to_string()));
        opt(&mut a, "--adopt-cache", (!self.adopt_cache.is_empty()).then(|| fd_list(&self.adopt_cache)));
        opt(&mut a, "--adopt-psi", (!self.adopt_psi.is_empty()).then(|| fd_list(&self.adopt_psi)));
        if self.handovers > 0 {
            a.extend(args(&[("--handovers", self.handovers.to_string())]));
        }
        a
    }
}

/// The `serve` subcommand.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ServeLine {
    /// Where to mount (created if missing).
    #[arg(default_value = DEFAULT_MOUNTPOINT)]
    pub mountpoint: PathBuf,
    /// Worker threads reading /dev/fuse, each on its own cloned fd.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Pid file for `cgprocfs upgrade` (default: under /run/cgprocfs, named after MOUNTPOINT).
    #[arg(long)]
    pub pidfile: Option<PathBuf>,
    /// Enter the cgroup namespace of pid 1 first: for a daemon in a container (a Kubernetes
    /// DaemonSet with hostPID) whose own cgroup namespace hides the other containers.
    #[arg(long)]
    pub host_cgroupns: bool,
    /// The unix socket container runtimes hand seccomp notification fds to (OCI
    /// `linux.seccomp.listenerPath`). Default: /run/cgprocfs/seccomp.sock for the default
    /// mount point, else beside the pid file.
    #[arg(long)]
    pub seccomp_socket: Option<PathBuf>,
    /// Do not listen for seccomp notification fds.
    #[arg(long, conflicts_with = "seccomp_socket")]
    pub no_seccomp: bool,
    /// Do not repair, on start, containers left with binds of a dead daemon's connection
    /// (`cgprocfs reattach` does it by hand).
    #[arg(long)]
    pub no_reattach: bool,
    /// After handing the connection over to another keeper, wait for a stop signal instead
    /// of exiting: a DaemonSet pod's container, which its controller would restart (and
    /// which would then take the connection back), until the rollout deletes the pod.
    #[arg(long)]
    pub linger: bool,
    /// Do not serve the cached tree (mounted beside the pid file, `<name>.cache`): hooks
    /// and `run` then bind the shared files, each read answered by the daemon.
    #[arg(long)]
    pub no_cache: bool,
    /// Do not serve the trigger connection (mounted beside the pid file, `<name>.psi`):
    /// hooks and `run` then bind the shared, read-only pressure files, which take no PSI
    /// triggers.
    #[arg(long)]
    pub no_psi: bool,
    /// What is served and how.
    #[command(flatten)]
    pub opts: ServeOptions,
    /// The connection an upgrade hands on.
    #[command(flatten)]
    pub adopt: AdoptLine,
}

impl ServeLine {
    /// The arguments after `serve` that parse back into `self`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = vec![self.mountpoint.clone().into_os_string()];
        a.extend(args(&[("--threads", self.threads.to_string())]));
        opt(&mut a, "--pidfile", self.pidfile.clone());
        flag(&mut a, self.host_cgroupns, "--host-cgroupns");
        opt(&mut a, "--seccomp-socket", self.seccomp_socket.clone());
        flag(&mut a, self.no_seccomp, "--no-seccomp");
        flag(&mut a, self.no_reattach, "--no-reattach");
        flag(&mut a, self.linger, "--linger");
        flag(&mut a, self.no_cache, "--no-cache");
        flag(&mut a, self.no_psi, "--no-psi");
        a.extend(self.opts.to_args());
        a.extend(self.adopt.to_args());
        a
    }
}

/// `1,2,3`: how lists of fds are passed.
fn fd_list(fds: &[RawFd]) -> String {
    fds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(",")
}

fn args(pairs: &[(&str, String)]) -> Vec<OsString> {
    pairs.iter().flat_map(|(k, v)| [OsString::from(k), OsString::from(v)]).collect()
}

fn opt(a: &mut Vec<OsString>, name: &str, value: Option<impl Into<OsString>>) {
    if let Some(v) = value {
        a.push(name.into());
        a.push(v.into());
    }
}

fn flag(a: &mut Vec<OsString>, on: bool, name: &str) {
    if on {
        a.push(name.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    enum Line {
        Serve(ServeLine),
        Worker(WorkerLine),
    }

    fn parse(sub: &str, a: Vec<OsString>) -> Line {
        let argv = ["cgprocfs".into(), OsString::from(sub)].into_iter().chain(a);
        Line::try_parse_from(argv).expect("parses")
    }

    fn opts() -> ServeOptions {
        ServeOptions {
            spin_us: 7,
            bench_floor: true,
            cpu_count: CpuCountArg::Cpuset,
            seccomp_affinity: true,
            handles_per_container: 9,
            triggers_per_container: 3,
            fresh_ms: 250,
        }
    }

    #[test]
    fn worker_line_round_trips() {
        let w = WorkerLine {
            fds: vec![3, 4],
            state: Some("/run/x y/state".into()),
            seccomp_chan: Some(5),
            seccomp_fds: vec![6, 7],
            cache_fds: vec![8],
            psi_fds: vec![11],
            opts: opts(),
            report: ReportLine {
                stats: Some("/run/a.stats".into()),
                metrics: Some("/run/a.prom".into()),
                restarts: 3,
                handovers: 2,
                keeper_started: 1_700_000_000,
            },
        };
        let Line::Worker(back) = parse("worker", w.to_args()) else { panic!("not a worker line") };
        assert_eq!(back, w);
        let bare = WorkerLine {
            fds: vec![3],
            state: None,
            seccomp_chan: None,
            seccomp_fds: vec![],
            cache_fds: vec![],
            psi_fds: vec![],
            opts: ServeOptions { bench_floor: false, seccomp_affinity: false, cpu_count: CpuCountArg::Quota, ..opts() },
            report: ReportLine::default(),
        };
        let Line::Worker(back) = parse("worker", bare.to_args()) else { panic!("not a worker line") };
        assert_eq!(back, bare);
    }

    #[test]
    fn upgrade_line_round_trips() {
        let s = ServeLine {
            mountpoint: "/var/lib/cgprocfs".into(),
            threads: 3,
            pidfile: Some("/run/cgprocfs/a.pid".into()),
            host_cgroupns: true,
            seccomp_socket: Some("/run/cgprocfs/s.sock".into()),
            no_seccomp: false,
            no_reattach: true,
            linger: true,
            no_cache: true,
            no_psi: true,
            opts: opts(),
            adopt: AdoptLine {
                adopt: vec![3, 4, 5],
                init_minor: Some(41),
                init_flags: Some(0x1234),
                seccomp_adopt: vec![6, 7],
                control_adopt: Some(8),
                adopt_cache: vec![9, 10],
                adopt_psi: vec![11],
                handovers: 4,
            },
        };
        let Line::Serve(back) = parse("serve", s.to_args()) else { panic!("not a serve line") };
        assert_eq!(back, s);
        // The defaults, as a user types `serve` alone.
        let Line::Serve(d) = parse("serve", vec![]) else { panic!("not a serve line") };
        let Line::Serve(back) = parse("serve", d.to_args()) else { panic!("not a serve line") };
        assert_eq!(back, d);
        assert_eq!(d.adopt, AdoptLine::default());
    }
}
