//! The `cgprocfs` command: `serve` mounts the views, `show` prints one as a container reads it.

use anyhow::{bail, Context, Result};
use cgprocfs::fs::session::{mountpoint_state, unmount, MountpointState, Session};
use cgprocfs::fs::ProcFs;
use cgprocfs::service::{Options, Service};
use cgprocfs::view::cpus::CpuCount;
use cgprocfs::view::View;
use cgprocfs::Root;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default mount point, lxcfs-compatible layout under it.
const DEFAULT_MOUNTPOINT: &str = "/var/lib/cgprocfs";

#[derive(Parser)]
#[command(
    name = "cgprocfs",
    version,
    about = "Container-correct /proc and /sys files over FUSE"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone, Copy)]
struct ViewOpts {
    /// How many CPUs a container sees: `quota` = min(cpuset, ceil(quota/period)); `cpuset`
    /// ignores the CFS quota.
    #[arg(long, value_enum, default_value_t = CpuCount::Quota)]
    cpu_count: CpuCount,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the views at MOUNTPOINT and serve them until SIGTERM or SIGINT.
    Serve {
        /// Where to mount (created if missing).
        #[arg(default_value = DEFAULT_MOUNTPOINT)]
        mountpoint: PathBuf,
        /// Worker threads reading /dev/fuse, each on its own cloned fd.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[command(flatten)]
        view: ViewOpts,
    },
    /// Print FILE (e.g. proc/meminfo) exactly as PID's container reads it through the mount.
    Show {
        /// The process whose container to render for (default: this one).
        #[arg(long)]
        pid: Option<u32>,
        /// Path of the served file, relative to the mount point.
        file: String,
        #[command(flatten)]
        view: ViewOpts,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CGPROCFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Serve {
            mountpoint,
            threads,
            view,
        } => serve(&mountpoint, threads, view),
        Cmd::Show { pid, file, view } => show(pid, &file, view),
    };
    if let Err(e) = r {
        eprintln!("cgprocfs: {e:#}");
        std::process::exit(1);
    }
}

fn service(view: ViewOpts) -> Result<Service> {
    Service::new(
        Root::new("/"),
        Options {
            cpu_count: view.cpu_count,
        },
    )
    .context("cannot read the host's cgroup mounts")
}

fn show(pid: Option<u32>, file: &str, view: ViewOpts) -> Result<()> {
    let Some(v) = View::from_path(file) else {
        let names: Vec<_> = View::ALL.iter().map(|v| v.path()).collect();
        bail!("unknown file {file:?}; served files: {}", names.join(", "));
    };
    let svc = service(view)?;
    let pid = pid.unwrap_or_else(std::process::id);
    let cg = svc
        .container_of(pid)
        .with_context(|| format!("cannot find the container of pid {pid}"))?;
    let text = svc
        .render(v, &cg)
        .with_context(|| format!("cannot render {file} for pid {pid}"))?;
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn serve(mountpoint: &Path, threads: usize, view: ViewOpts) -> Result<()> {
    std::fs::create_dir_all(mountpoint)
        .with_context(|| format!("cannot create {}", mountpoint.display()))?;
    let mountpoint = mountpoint
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", mountpoint.display()))?;
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("cannot read mountinfo")?;
    match mountpoint_state(&mountpoint, &mountinfo) {
        MountpointState::Free => {}
        MountpointState::Stale => {
            tracing::warn!(mountpoint = %mountpoint.display(), "clearing a stale mount left by a dead daemon");
            unmount(&mountpoint).context("cannot clear the stale mount")?;
        }
        MountpointState::Served => bail!(
            "{} is already served by a running FUSE daemon",
            mountpoint.display()
        ),
        MountpointState::NotEmpty => bail!(
            "{} is a non-empty directory; refusing to mount over it",
            mountpoint.display()
        ),
    }

    // Block the stop signals before any thread starts so only sigwait below receives them.
    let mut stop = nix::sys::signal::SigSet::empty();
    stop.add(nix::sys::signal::Signal::SIGTERM);
    stop.add(nix::sys::signal::Signal::SIGINT);
    stop.thread_block().context("cannot block signals")?;

    let svc = Arc::new(service(view)?);
    tracing::info!(layout = ?svc.hierarchies().layout(), "cgroup hierarchies found");
    let session = Session::mount(&mountpoint, "cgprocfs")
        .with_context(|| format!("cannot mount at {}", mountpoint.display()))?;
    let fs = Arc::new(ProcFs::new(svc.clone()));
    session.spawn(fs, threads).context("cannot start workers")?;
    tracing::info!(mountpoint = %mountpoint.display(), threads, minor = session.params.minor, "serving");

    let sig = stop.wait().context("waiting for a signal")?;
    tracing::info!(signal = ?sig, fallbacks = svc.fallbacks.count(), "stopping");
    unmount(session.mountpoint()).context("cannot unmount")?;
    Ok(())
}
