//! The `cgprocfs` command: the command line and each subcommand's edge (errors as `anyhow`,
//! printed once). `serve` mounts the views ([`serve`]), `run` starts a command with them
//! ([`run`]), `show` prints one as a container reads it.

mod run;
mod serve;
mod status;

use anyhow::{bail, Context, Result};
use cgprocfs::catalog::Served;
use cgprocfs::daemon::args::{ServeLine, ServeOptions, WorkerLine, DEFAULT_MOUNTPOINT, DEFAULT_SECCOMP_SOCKET};
use cgprocfs::run::RunLimits;
use cgprocfs::service::Service;
use cgprocfs::Root;
use clap::{Parser, Subcommand};

/// The daemon answers from many threads with short-lived buffers: mimalloc's per-thread free
/// lists cost less per request than glibc's arenas (measured in `benches/scale.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "cgprocfs", version, about = "Container-correct /proc and /sys files over FUSE")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the views at MOUNTPOINT and serve them until SIGTERM or SIGINT. SIGHUP upgrades to
    /// the binary now on disk without dropping the connection.
    Serve(ServeLine),
    /// Print FILE (e.g. proc/meminfo) exactly as PID's container reads it through the mount.
    Show {
        /// The process whose container to render for (default: this one).
        #[arg(long)]
        pid: Option<u32>,
        /// Path of the served file, relative to the mount point.
        file: String,
        /// Annotate each line with where its value comes from (cgroup files, formula, the
        /// host's line), after notes on the inputs; the host's file, and why, where the mount
        /// would serve it.
        #[arg(long)]
        explain: bool,
        #[command(flatten)]
        view: ServeOptions,
    },
    /// Show how a running daemon is doing: versions, uptime, restarts, handovers, requests and
    /// fallbacks per file, open handles by container, the slowest recent requests. Asked of the
    /// keeper over its control socket (root only).
    Status {
        /// The mount point the daemon serves.
        #[arg(default_value = DEFAULT_MOUNTPOINT)]
        mountpoint: PathBuf,
        /// The keeper's pid file, when `serve` was given one.
        #[arg(long)]
        pidfile: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Containers and slow requests listed.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Repair running containers after a daemon died hard: mount the live files of MOUNTPOINT
    /// over every bind of a dead connection in other mount namespaces, and print what was
    /// repaired (`serve` does this by itself when it starts).
    Reattach {
        /// The mount point a daemon serves.
        #[arg(default_value = DEFAULT_MOUNTPOINT)]
        mountpoint: PathBuf,
    },
    /// Hand the live connection of a running `serve` to the binary now on disk. Running
    /// containers keep reading throughout.
    Upgrade {
        /// The mount point the daemon serves.
        #[arg(default_value = DEFAULT_MOUNTPOINT)]
        mountpoint: PathBuf,
        /// The keeper's pid, instead of reading it from the pid file.
        #[arg(long)]
        pid: Option<i32>,
    },
    /// Run CMD in a transient cgroup with these limits, with the views bound over its /proc
    /// and /sys; uses the daemon serving MOUNTPOINT or starts one for the duration. Exits
    /// with CMD's status.
    Run {
        /// Memory limit (bytes, or with K/M/G suffix).
        #[arg(long, value_parser = cgprocfs::run::parse_size)]
        memory: Option<u64>,
        /// Swap allowed on top of the memory limit (bytes, or with K/M/G suffix).
        #[arg(long, value_parser = cgprocfs::run::parse_size)]
        swap: Option<u64>,
        /// CPU quota in CPUs, e.g. 1.5.
        #[arg(long)]
        cpus: Option<f64>,
        /// CPUs the command may run on, e.g. 0-1.
        #[arg(long)]
        cpuset: Option<String>,
        /// Maximum number of tasks.
        #[arg(long)]
        pids: Option<u64>,
        /// Mount point of the daemon to use.
        #[arg(long, default_value = DEFAULT_MOUNTPOINT)]
        mountpoint: PathBuf,
        /// Do not have the daemon answer the command's sysinfo(2) (seccomp notification).
        #[arg(long)]
        no_seccomp: bool,
        /// Also answer sched_getaffinity(2) with the visible CPUs (as `serve
        /// --seccomp-affinity`; the daemon started for the run gets the flag).
        #[arg(long, conflicts_with = "no_seccomp")]
        seccomp_affinity: bool,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// OCI runtime hook (stage createContainer): bind the served files over the container's
    /// own. Reads the runtime state JSON on stdin. Never fails a container: exits 0 and logs
    /// why when it cannot bind.
    OciHook {
        /// Mount point of the daemon.
        #[arg(long, default_value = DEFAULT_MOUNTPOINT)]
        mountpoint: PathBuf,
        /// File the hook appends its one-line report to (runtimes discard a successful hook's
        /// output); also written to stderr.
        #[arg(long, default_value = "/run/cgprocfs/oci-hook.log")]
        log: PathBuf,
        /// The daemon's cached tree (default: found in the mount table by its source, which
        /// names MOUNTPOINT); `none` binds the shared files.
        #[arg(long)]
        cache: Option<PathBuf>,
        /// The daemon's trigger connection, where the pressure files take PSI triggers
        /// (default: found in the mount table like the cached tree); `none` binds the shared,
        /// read-only pressure files.
        #[arg(long)]
        psi: Option<PathBuf>,
    },
    /// Install this binary, the runc wrapper script (`cgprocfs-runc`) and a hooks.d file into
    /// DEST, a host directory the host sees as HOST_PATH (a DaemonSet's init container): what
    /// a node's Docker, containerd or CRI-O configuration then names (docs/operations.md).
    InstallNode {
        /// Where to write, as this process sees it.
        #[arg(long)]
        dest: PathBuf,
        /// The same directory as the host sees it (written into the script and the hook).
        #[arg(long)]
        host_path: PathBuf,
    },
    /// Print the `docker run` options that bind every served file over the container's own.
    DockerArgs {
        /// Mount point of the daemon.
        #[arg(long, default_value = DEFAULT_MOUNTPOINT)]
        mountpoint: PathBuf,
    },
    /// Internal: the serving process started by `serve` on inherited /dev/fuse fds.
    #[command(hide = true)]
    Worker(WorkerLine),
    /// Internal: started by a stopping daemon; lets containers' notified calls run for real
    /// until those containers exit.
    #[command(hide = true)]
    SeccompDrain {
        #[arg(long, value_delimiter = ',', required = true)]
        fds: Vec<i32>,
    },
    /// Print a seccomp profile for runc/podman/CRI-O: BASE (the runtime's default profile,
    /// JSON) with sysinfo (and with --affinity sched_getaffinity) notified to the daemon's
    /// socket. Without BASE: allow everything else.
    SeccompProfile {
        /// The profile to extend (e.g. /usr/share/containers/seccomp.json).
        #[arg(long)]
        base: Option<PathBuf>,
        /// The daemon's socket.
        #[arg(long, default_value = DEFAULT_SECCOMP_SOCKET)]
        listener: PathBuf,
        /// Also notify sched_getaffinity (the daemon answers it with `--seccomp-affinity`).
        #[arg(long)]
        affinity: bool,
    },
}

fn main() {
    // Called as `cgprocfs-runc` (the runc wrapper, a second name of this binary) or as
    // `cgprocfs runc-wrapper` (the packaged /usr/bin/cgprocfs-runc script): runc's command
    // line, not ours.
    let mut argv = std::env::args_os().peekable();
    let argv0 = argv.next().unwrap_or_default();
    let by_name = Path::new(&argv0).file_name().is_some_and(|n| n == cgprocfs::runc_wrapper::NAME);
    let by_subcommand = !by_name && argv.peek().is_some_and(|a| a == "runc-wrapper");
    if by_subcommand {
        argv.next();
    }
    if by_name || by_subcommand {
        let e = cgprocfs::runc_wrapper::main(argv.collect());
        eprintln!("{}: {e}", cgprocfs::runc_wrapper::NAME);
        std::process::exit(127);
    }
    // A panic in any thread ends the whole process (what `panic = "abort"` would do, for every
    // build): a worker that lost its FUSE, seccomp or sampler thread would otherwise look alive
    // to its keeper while serving nothing; dead, it is replaced at once.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CGPROCFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Serve(line) => {
            if line.host_cgroupns {
                if let Err(e) = serve::enter_host_cgroupns() {
                    eprintln!("cgprocfs: {e:#}");
                    std::process::exit(1);
                }
            }
            serve::serve(line)
        }
        Cmd::Show { pid, file, explain, view } => show(pid, &file, explain, view),
        Cmd::Status { mountpoint, pidfile, json, top } => status::status(&mountpoint, pidfile.as_deref(), json, top),
        Cmd::Upgrade { mountpoint, pid } => serve::upgrade(&mountpoint, pid),
        Cmd::Reattach { mountpoint } => serve::reattach(&mountpoint),
        Cmd::DockerArgs { mountpoint } => {
            // runc refuses spec mounts under /proc other than a fixed list, which excludes
            // /proc/pressure: those only the OCI hook can bind.
            let args: Vec<String> = cgprocfs::catalog::bind_targets()
                .into_iter()
                .filter(|p| !p.starts_with("proc/pressure/"))
                .map(|p| format!("-v {}:/{p}:ro", mountpoint.join(p).display()))
                .collect();
            println!("{}", args.join(" "));
            Ok(())
        }
        Cmd::InstallNode { dest, host_path } => install_node(&dest, &host_path),
        Cmd::OciHook { mountpoint, log, cache, psi } => {
            let pick = |given: Option<PathBuf>, find: fn(&Path) -> Option<PathBuf>| match given {
                Some(c) if c == Path::new("none") => None,
                Some(c) => Some(c),
                None => find(&mountpoint),
            };
            let cache = pick(cache, cgprocfs::fuse::cached::find);
            let psi = pick(psi, cgprocfs::fuse::psi::find);
            let line = match cgprocfs::oci_hook::run(std::io::stdin(), &mountpoint, cache.as_deref(), psi.as_deref()) {
                Ok(o) => {
                    let tree = match &o.uncached {
                        None => "own cached files".to_string(),
                        Some(why) => format!("shared files: {why}"),
                    };
                    format!("{}: bound {:?} ({tree}); skipped {:?}", o.id, o.bound, o.skipped)
                }
                Err(e) => e.to_string(),
            };
            eprintln!("cgprocfs oci-hook: {line}");
            cgprocfs::files::append_log(&log, &line);
            // Never fail a container.
            Ok(())
        }
        Cmd::Run { memory, swap, cpus, cpuset, pids, mountpoint, no_seccomp, seccomp_affinity, cmd } => {
            let sec = (!no_seccomp).then_some(seccomp_affinity);
            match run::run(RunLimits { memory, swap, cpus, cpuset, pids }, &mountpoint, sec, &cmd) {
                Ok(code) => std::process::exit(code),
                Err(e) => Err(e),
            }
        }
        Cmd::Worker(line) => cgprocfs::daemon::worker(line).context("worker failed"),
        Cmd::SeccompDrain { fds } => {
            cgprocfs::seccomp::agent::drain(cgprocfs::seccomp::adopt_fds(&fds));
            Ok(())
        }
        Cmd::SeccompProfile { base, listener, affinity } => seccomp_profile(base.as_deref(), &listener, affinity),
    };
    if let Err(e) = r {
        eprintln!("cgprocfs: {e:#}");
        std::process::exit(1);
    }
}

pub(crate) fn service(opts: ServeOptions) -> Result<Service> {
    Service::new(Root::new("/"), opts.service()).context("cannot read the host's cgroup mounts")
}

fn show(pid: Option<u32>, file: &str, explain: bool, view: ServeOptions) -> Result<()> {
    let Some(v) = Served::from_path(file) else {
        let names: Vec<_> = Served::ALL.iter().map(|v| v.path()).collect();
        bail!("unknown file {file:?}; served files: {}", names.join(", "));
    };
    let svc = service(view)?;
    let pid = pid.unwrap_or_else(std::process::id);
    let c = svc.container_of(pid).with_context(|| format!("cannot find the container of pid {pid}"))?;
    if explain {
        print!("{}", cgprocfs::explain::explain(&svc, v, &c).text());
        return Ok(());
    }
    let text = svc.render(v, &c).with_context(|| format!("cannot render {file} for pid {pid}"))?;
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

/// Installs the node's runtime files (`runc_wrapper::install`) and lists them.
fn install_node(dest: &Path, host_path: &Path) -> Result<()> {
    let me = std::env::current_exe().context("cannot find this binary")?;
    let files = cgprocfs::runc_wrapper::install(&me, dest, host_path)
        .with_context(|| format!("cannot install into {}", dest.display()))?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

/// Prints `base` (or an allow-all profile) extended for the daemon (`seccomp::profile`).
fn seccomp_profile(base: Option<&Path>, listener: &Path, affinity: bool) -> Result<()> {
    let base = match base {
        Some(b) => Some(
            serde_json::from_str(&std::fs::read_to_string(b).with_context(|| format!("cannot read {}", b.display()))?)
                .with_context(|| format!("{} is not a JSON seccomp profile", b.display()))?,
        ),
        None => None,
    };
    let p = cgprocfs::seccomp::profile::extend(base, listener, affinity)?;
    println!("{}", serde_json::to_string_pretty(&p)?);
    Ok(())
}
