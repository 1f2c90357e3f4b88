//! `cgprocfs run`: the lifecycle around the command — the daemon it uses (or starts for its
//! duration), the transient cgroup, the child's entry, the seccomp listener handed on.

use anyhow::{bail, Context, Result};
use cgprocfs::daemon::args::{DEFAULT_MOUNTPOINT, DEFAULT_SECCOMP_SOCKET};
use cgprocfs::daemon::default_pidfile;
use cgprocfs::fuse::session::{mountpoint_state, MountpointState};
use cgprocfs::run::{bind_pairs, enter, NotifyFilter, RunLimits, Transient};
use std::path::{Path, PathBuf};

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
pub fn run(limits: RunLimits, mountpoint: &Path, seccomp: Option<bool>, cmd: &[String]) -> Result<i32> {
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
    let me = cgprocfs::fuse::cached::key_name(std::process::id())?;
    let cache =
        cgprocfs::fuse::cached::find(&mnt).filter(|c| std::fs::metadata(c.join(&me).join("proc/meminfo")).is_ok());
    let cg = Transient::create(&format!("cgprocfs-run-{}", std::process::id()), &limits)
        .context("cannot create the transient cgroup")?;
    let (procs, binds) =
        (cg.procs_files(), bind_pairs(&mnt, cache.as_deref(), cgprocfs::fuse::psi::find(&mnt).as_deref()));
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
