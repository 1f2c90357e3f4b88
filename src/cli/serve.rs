//! `cgprocfs serve` and the commands that act on a running daemon (`upgrade`, `reattach`).

use anyhow::{bail, Context, Result};
use cgprocfs::daemon::args::{ServeLine, DEFAULT_MOUNTPOINT, DEFAULT_SECCOMP_SOCKET};
use cgprocfs::daemon::{default_pidfile, handover, keeper, Adopted, KeeperConfig};
use cgprocfs::fuse::session::{mountpoint_state, unmount, MountpointState};
use std::path::{Path, PathBuf};

/// `serve`: mounts (or adopts the live connection: an upgrade's, the service manager's fd
/// store, another keeper's by handover) and runs the keeper.
pub fn serve(line: ServeLine) -> Result<()> {
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
        crate::service(opts)?;
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
        psi: (!line.no_psi).then(|| cgprocfs::daemon::psi_dir(&pidfile)),
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

pub fn reattach(mountpoint: &Path) -> Result<()> {
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

pub fn upgrade(mountpoint: &Path, pid: Option<i32>) -> Result<()> {
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

/// Joins the cgroup namespace of the host's init (needs hostPID and CAP_SYS_ADMIN).
pub fn enter_host_cgroupns() -> Result<()> {
    let f = std::fs::File::open("/proc/1/ns/cgroup").context("cannot open /proc/1/ns/cgroup (is hostPID set?)")?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .context("cannot enter the host's cgroup namespace")?;
    Ok(())
}
