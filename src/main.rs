//! The `cgprocfs` command: `serve` mounts the views, `show` prints one as a container reads it.

use anyhow::{bail, Context, Result};
use cgprocfs::catalog::View;
use cgprocfs::daemon::args::{ServeLine, ServeOptions, WorkerLine, DEFAULT_MOUNTPOINT, DEFAULT_SECCOMP_SOCKET};
use cgprocfs::daemon::{default_pidfile, handover, keeper, Adopted, KeeperConfig};
use cgprocfs::fs::session::{mountpoint_state, unmount, MountpointState};
use cgprocfs::launch::{bind_pairs, enter, NotifyFilter, RunLimits, Transient};
use cgprocfs::service::Service;
use cgprocfs::Root;
use clap::{Parser, Subcommand};
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
        #[command(flatten)]
        view: ServeOptions,
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
        #[arg(long, value_parser = cgprocfs::launch::parse_size)]
        memory: Option<u64>,
        /// Swap allowed on top of the memory limit (bytes, or with K/M/G suffix).
        #[arg(long, value_parser = cgprocfs::launch::parse_size)]
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
                if let Err(e) = enter_host_cgroupns() {
                    eprintln!("cgprocfs: {e:#}");
                    std::process::exit(1);
                }
            }
            serve(line)
        }
        Cmd::Show { pid, file, view } => show(pid, &file, view),
        Cmd::Upgrade { mountpoint, pid } => upgrade(&mountpoint, pid),
        Cmd::Reattach { mountpoint } => reattach(&mountpoint),
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
        Cmd::OciHook { mountpoint, log, cache } => {
            let cache = match cache {
                Some(c) if c == Path::new("none") => None,
                Some(c) => Some(c),
                None => cgprocfs::fs::cached::find(&mountpoint),
            };
            let line = match cgprocfs::hook::run(std::io::stdin(), &mountpoint, cache.as_deref()) {
                Ok(o) => {
                    let tree = if o.cached { "own cached files" } else { "shared files" };
                    format!("{}: bound {:?} ({tree}); skipped {:?}", o.id, o.bound, o.skipped)
                }
                Err(e) => e,
            };
            eprintln!("cgprocfs oci-hook: {line}");
            let dir_ok = log.parent().is_none_or(|d| cgprocfs::files::private_dir(d, 0o755).is_ok());
            if let Some(mut f) = dir_ok.then(|| cgprocfs::files::open_append(&log).ok()).flatten() {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let _ = writeln!(f, "{now} {line}");
            }
            // Never fail a container.
            Ok(())
        }
        Cmd::Run { memory, swap, cpus, cpuset, pids, mountpoint, no_seccomp, seccomp_affinity, cmd } => {
            let sec = (!no_seccomp).then_some(seccomp_affinity);
            match run(RunLimits { memory, swap, cpus, cpuset, pids }, &mountpoint, sec, &cmd) {
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

fn service(opts: ServeOptions) -> Result<Service> {
    Service::new(Root::new("/"), opts.service()).context("cannot read the host's cgroup mounts")
}

fn show(pid: Option<u32>, file: &str, view: ServeOptions) -> Result<()> {
    let Some(v) = View::from_path(file) else {
        let names: Vec<_> = View::ALL.iter().map(|v| v.path()).collect();
        bail!("unknown file {file:?}; served files: {}", names.join(", "));
    };
    let svc = service(view)?;
    let pid = pid.unwrap_or_else(std::process::id);
    let c = svc.container_of(pid).with_context(|| format!("cannot find the container of pid {pid}"))?;
    let text = svc.render(v, &c).with_context(|| format!("cannot render {file} for pid {pid}"))?;
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

/// `serve`: mounts (or adopts the live connection: an upgrade's, the service manager's fd
/// store, another keeper's by handover) and runs the keeper.
fn serve(line: ServeLine) -> Result<()> {
    let ServeLine { ref mountpoint, threads, ref pidfile, opts, .. } = line;
    let adopted = line.adopt.adopted();
    // A restart under systemd: the previous keeper's connection is in the fd store.
    let adopted = match adopted {
        None if cgprocfs::daemon::systemd::managed() => {
            let a = cgprocfs::daemon::systemd::adopt_from_store();
            if a.is_some() {
                tracing::info!("adopting the connection kept in the service manager's fd store");
            }
            a
        }
        a => a,
    };
    // An adopting keeper must not touch the mount point: no worker serves it until this
    // process starts one, so even a stat would wait forever. The path it gets is canonical
    // (an upgrade's) or the unit's.
    let mountpoint = match adopted {
        Some(_) => std::path::absolute(mountpoint).with_context(|| format!("bad path {}", mountpoint.display()))?,
        None => {
            // A dead daemon's mount answers ENOTCONN to stat (Linux 6.1 even for its root), so
            // mkdir -p and realpath fail there: recognise it by its path first.
            let abs = std::path::absolute(mountpoint).with_context(|| format!("bad path {}", mountpoint.display()))?;
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("cannot read mountinfo")?;
            if mountpoint_state(&abs, &mountinfo) == MountpointState::Stale {
                abs
            } else {
                std::fs::create_dir_all(mountpoint)
                    .with_context(|| format!("cannot create {}", mountpoint.display()))?;
                mountpoint.canonicalize().with_context(|| format!("cannot resolve {}", mountpoint.display()))?
            }
        }
    };
    let pidfile = pidfile.clone().unwrap_or_else(|| default_pidfile(&mountpoint));
    let mut adopted = adopted;
    let mut taken = None;
    if adopted.is_none() {
        // Fail here, not in a worker restart loop, when the host's cgroups cannot be read.
        service(opts)?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("cannot read mountinfo")?;
        match mountpoint_state(&mountpoint, &mountinfo) {
            MountpointState::Free => {}
            MountpointState::Stale => {
                tracing::warn!(mountpoint = %mountpoint.display(), "clearing a stale mount left by a dead daemon");
                unmount(&mountpoint).context("cannot clear the stale mount")?;
            }
            MountpointState::Served => {
                // A live keeper serves it: take its connection over (docs/operations.md).
                let ctl = handover::control_path(&pidfile);
                let (t, received) = handover::take(&ctl).with_context(|| {
                    format!(
                        "{} is already served by a running FUSE daemon, and no keeper hands it over on {}",
                        mountpoint.display(),
                        ctl.display()
                    )
                })?;
                tracing::info!(from = %received.offer.binary, fds = received.fuse.len(), notify = received.notify.len(), "taking the connection over");
                adopted = Some(Adopted::from_handover(received));
                taken = Some(t);
            }
            MountpointState::NotEmpty => {
                bail!("{} is a non-empty directory; refusing to mount over it", mountpoint.display())
            }
        }
    }
    // The path on disk, so that an upgrade which replaced the file runs the new binary.
    let binary = std::env::current_exe().context("cannot find this binary")?;
    let binary = PathBuf::from(binary.to_string_lossy().trim_end_matches(" (deleted)"));
    let seccomp_socket = match (line.no_seccomp, line.seccomp_socket.clone()) {
        (true, _) => None,
        (false, Some(s)) => Some(s),
        _ if mountpoint == Path::new(DEFAULT_MOUNTPOINT) => Some(PathBuf::from(DEFAULT_SECCOMP_SOCKET)),
        _ => Some(cgprocfs::files::companion(&pidfile, "sock")),
    };
    let cfg = KeeperConfig {
        cache: (!line.no_cache).then(|| cgprocfs::daemon::cache_dir(&pidfile)),
        mountpoint: mountpoint.clone(),
        binary,
        opts,
        threads,
        pidfile,
        seccomp_socket,
        reattach: !line.no_reattach,
        linger: line.linger,
    };
    keeper(cfg, adopted, taken).with_context(|| format!("serving {} failed", mountpoint.display()))
}

fn reattach(mountpoint: &Path) -> Result<()> {
    let done = cgprocfs::reattach::reattach(mountpoint).context("cannot reattach")?;
    for r in &done {
        let left: Vec<String> = r.left.iter().map(|(p, why)| format!("{p} ({why})")).collect();
        println!(
            "pid {} {}: reattached {} [{}]{}",
            r.pid,
            r.ns,
            r.files.len(),
            r.files.join(" "),
            if left.is_empty() { String::new() } else { format!("; left alone: {}", left.join(", ")) }
        );
    }
    if done.is_empty() {
        println!("nothing to reattach");
    }
    Ok(())
}

fn upgrade(mountpoint: &Path, pid: Option<i32>) -> Result<()> {
    let pid = match pid {
        Some(p) => p,
        None => {
            let mnt = mountpoint.canonicalize().with_context(|| format!("cannot resolve {}", mountpoint.display()))?;
            let file = default_pidfile(&mnt);
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("no daemon pid file {}", file.display()))?;
            text.trim().parse().with_context(|| format!("bad pid file {}", file.display()))?
        }
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP)
        .with_context(|| format!("cannot signal the daemon (pid {pid})"))?;
    println!("upgrade requested from pid {pid}");
    Ok(())
}

/// A daemon `run` started for its own duration; stopped on drop.
struct OwnDaemon {
    child: std::process::Child,
    dir: PathBuf,
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        // The daemon has unmounted; its pid, state and record files are in `dir` too.
        let mnt = self.dir.join("mnt");
        if std::fs::read_dir(&mnt).is_ok_and(|mut d| d.next().is_none()) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `cmd` in a transient cgroup with the views bound; with `seccomp` (`Some(affinity)`),
/// its sysinfo (and sched_getaffinity) answered by the daemon, as for a container with the
/// packaged profile.
fn run(limits: RunLimits, mountpoint: &Path, seccomp: Option<bool>, cmd: &[String]) -> Result<i32> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("cannot read mountinfo")?;
    let canonical = mountpoint.canonicalize().unwrap_or_else(|_| mountpoint.to_path_buf());
    let mut own = None;
    let (mnt, socket) = if mountpoint_state(&canonical, &mountinfo) == MountpointState::Served {
        let socket = if canonical == Path::new(DEFAULT_MOUNTPOINT) {
            PathBuf::from(DEFAULT_SECCOMP_SOCKET)
        } else {
            cgprocfs::files::companion(&default_pidfile(&canonical), "sock")
        };
        (canonical, socket)
    } else {
        // No daemon there: start one on a private mount point for the duration.
        // A fresh directory nobody else can have prepared (mode 0700, random name).
        let dir = cgprocfs::files::fresh_private_dir("cgprocfs-run-").context("cannot create a private directory")?;
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt)?;
        let mut serve = std::process::Command::new(std::env::current_exe()?);
        serve.arg("serve").arg(&mnt).arg("--pidfile").arg(dir.join("keeper.pid"));
        if seccomp == Some(true) {
            serve.arg("--seccomp-affinity");
        }
        let child = serve
            .env("CGPROCFS_LOG", std::env::var("CGPROCFS_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("cannot start a daemon")?;
        let socket = cgprocfs::files::companion(&dir.join("keeper.pid"), "sock");
        own = Some(OwnDaemon { child, dir });
        let t = std::time::Instant::now();
        while std::fs::read(mnt.join("proc/meminfo")).map(|b| b.is_empty()).unwrap_or(true) {
            if t.elapsed() > std::time::Duration::from_secs(10) {
                bail!("the daemon started for this run did not come up");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (mnt, socket)
    };
    // The cached tree if it answers (this process's own files: it is in no container, and
    // the check only asks whether the tree is served).
    let me = cgprocfs::fs::cached::key_name(std::process::id())?;
    let cache =
        cgprocfs::fs::cached::find(&mnt).filter(|c| std::fs::metadata(c.join(&me).join("proc/meminfo")).is_ok());
    let cg = Transient::create(&format!("cgprocfs-run-{}", std::process::id()), &limits)
        .context("cannot create the transient cgroup")?;
    let (procs, binds) = (cg.procs_files(), bind_pairs(&mnt, cache.as_deref()));
    let mut command = std::process::Command::new(&cmd[0]);
    command.args(&cmd[1..]);
    // The command's seccomp listener comes back over this pair; the parent hands it on.
    let pair = match seccomp {
        Some(_) => {
            use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
            Some(socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?)
        }
        None => None,
    };
    let filter = pair
        .as_ref()
        .zip(seccomp)
        .map(|((_, theirs), affinity)| NotifyFilter::new(affinity, std::os::fd::AsRawFd::as_raw_fd(theirs)));
    // SAFETY: `enter` and `install` make only async-signal-safe system calls on memory built
    // before fork.
    unsafe {
        command.pre_exec(move || {
            enter(&procs, &binds)?;
            if let Some(f) = &filter {
                f.install();
            }
            Ok(())
        })
    };
    let mut child = command.spawn().with_context(|| format!("cannot run {:?}", cmd[0]))?;
    if let Some((mine, theirs)) = pair {
        drop(theirs);
        hand_listener(&mine, child.id(), &socket);
    }
    let status = child.wait().with_context(|| format!("cannot wait for {:?}", cmd[0]))?;
    drop(cg);
    drop(own);
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Receives the command's seccomp listener and hands it to the daemon at `socket` the way runc
/// does. When that fails the listener is answered "run the real call" here until the command
/// exits, so its sysinfo returns the host's values rather than failing.
fn hand_listener(chan: &std::os::fd::OwnedFd, pid: u32, socket: &Path) {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 8];
    let fd = match cgprocfs::seccomp::recv_fds(chan.as_raw_fd(), &mut b) {
        Ok((_, mut fds)) if !fds.is_empty() => fds.swap_remove(0),
        _ => {
            tracing::warn!("the command runs without the sysinfo answer (no seccomp listener)");
            return;
        }
    };
    let msg = serde_json::json!({
        "ociVersion": "1.0.2",
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": "",
        "state": {"ociVersion": "1.0.2", "id": format!("cgprocfs-run-{pid}"), "status": "creating", "pid": pid, "bundle": "/"},
    });
    let sent = std::os::unix::net::UnixStream::connect(socket)
        .and_then(|s| cgprocfs::seccomp::send_fds(s.as_raw_fd(), msg.to_string().as_bytes(), &[fd.as_raw_fd()]));
    if let Err(e) = sent {
        tracing::warn!(socket = %socket.display(), error = %e, "no daemon takes the command's sysinfo; it sees the host's");
        std::thread::spawn(move || cgprocfs::seccomp::serve(cgprocfs::seccomp::Policy::Continue, vec![fd], None, true));
    }
}

/// Joins the cgroup namespace of the host's init (needs hostPID and CAP_SYS_ADMIN).
fn enter_host_cgroupns() -> Result<()> {
    let f = std::fs::File::open("/proc/1/ns/cgroup").context("cannot open /proc/1/ns/cgroup (is hostPID set?)")?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .context("cannot enter the host's cgroup namespace")?;
    Ok(())
}

/// Prints `base` (or an allow-all profile) with the calls the daemon answers set to
/// `SCMP_ACT_NOTIFY` and `listenerPath` pointing at it. Those calls are removed from every other
/// rule first: a profile cannot give one call two actions.
fn seccomp_profile(base: Option<&Path>, listener: &Path, affinity: bool) -> Result<()> {
    use serde_json::{json, Value};
    let mut p: Value = match base {
        Some(b) => {
            serde_json::from_str(&std::fs::read_to_string(b).with_context(|| format!("cannot read {}", b.display()))?)
                .with_context(|| format!("{} is not a JSON seccomp profile", b.display()))?
        }
        None => json!({"defaultAction": "SCMP_ACT_ALLOW"}),
    };
    let mut names = vec!["sysinfo"];
    if affinity {
        names.push("sched_getaffinity");
    }
    let obj = p.as_object_mut().context("the profile is not a JSON object")?;
    let mut rules: Vec<Value> = obj.get("syscalls").and_then(Value::as_array).cloned().unwrap_or_default();
    for r in &mut rules {
        if let Some(list) = r.get_mut("names").and_then(Value::as_array_mut) {
            list.retain(|n| !n.as_str().is_some_and(|n| names.contains(&n)));
        }
    }
    rules.retain(|r| r.get("names").and_then(Value::as_array).is_none_or(|l| !l.is_empty()));
    rules.push(json!({"names": names, "action": "SCMP_ACT_NOTIFY"}));
    obj.insert("syscalls".into(), Value::Array(rules));
    obj.insert("listenerPath".into(), json!(listener));
    println!("{}", serde_json::to_string_pretty(&p)?);
    Ok(())
}
