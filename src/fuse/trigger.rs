//! The trigger connection: the shared tree on a writable superblock, where a container's
//! process can write a PSI trigger to its `/proc/pressure/*` file and poll it, as on the host
//! (docs/architecture.md, "PSI triggers"). [`TriggerFs`] wraps the shared tree's [`ProcFs`]
//! (sharing its handle table, so opens on both count against one quota) and answers what
//! only this connection takes: writable opens of pressure files, WRITE, POLL, SETATTR and the
//! release of a handle holding a trigger. Everything else is the shared tree's answer.

use super::abi::{self, InHeader};
use super::reply::Reply;
use super::request::Request;
use super::session::Handler;
use super::{psi, ProcFs, Source, TTL};
use crate::error::Errno;
use std::sync::Arc;

/// The trigger connection's filesystem.
pub struct TriggerFs {
    fs: ProcFs,
    pollers: Arc<psi::Pollers>,
    closer: psi::Closer,
    per_container: usize,
    global: usize,
}

impl TriggerFs {
    /// The shared tree `fs` (built with [`ProcFs::sharing_handles`], so the triggers count in
    /// the main connection's table) taking PSI triggers: at most `per_container` per container,
    /// pollers woken through `pollers`, released triggers closed off the request threads.
    pub fn new(mut fs: ProcFs, pollers: Arc<psi::Pollers>, per_container: usize) -> std::io::Result<Self> {
        let handles = Arc::clone(&fs.handles);
        let closer = psi::Closer::start(Arc::new(move |owner: &str| handles.lock().trigger_gone(owner)))?;
        fs.private_root = true;
        Ok(TriggerFs { fs, pollers, closer, per_container: per_container.max(1), global: psi::global_trigger_limit() })
    }

    /// RELEASE: the handle leaves the table; its trigger, if any, leaves the pollers and is
    /// closed in the background (closing one waits for an RCU grace period).
    fn release(&self, fh: u64) {
        let Some(h) = self.fs.release(fh) else { return };
        self.pollers.forget(fh, h.trigger.as_deref());
        if let Some(fd) = h.trigger {
            self.closer.close(h.owner, fd);
        }
    }

    /// WRITE: a PSI trigger on a pressure file's handle, registered on the container's own
    /// cgroup pressure file; every other write is refused.
    fn write(&self, h: &InHeader, fh: u64, data: &[u8]) -> Reply {
        let (source, opener, owner) = match self.fs.handles.lock().map.get(&fh) {
            Some(hd) if hd.ino == h.nodeid => {
                if hd.trigger.is_some() {
                    // The kernel's answer to a second trigger on one open file.
                    return Reply::err(libc::EBUSY);
                }
                (hd.source.clone(), hd.opener.as_ref().map(|(_, _, c)| c.clone()), hd.owner.clone())
            }
            _ => return Reply::err(libc::EBADF),
        };
        let Source::Served(view) = source else { return Reply::err(libc::EROFS) };
        let Some(file) = view.pressure_file() else { return Reply::err(libc::EROFS) };
        let trigger = match psi::parse_trigger(data, psi::caller_caps(h.pid)) {
            Ok(t) => t,
            Err(e) => return Reply::Err(e),
        };
        let c = match opener.map_or_else(|| self.fs.service.container_of(h.pid), Ok) {
            Ok(c) => c,
            Err(e) => return Reply::Err(e.errno()),
        };
        // Without a unified cgroup of its own the container has no pressure of its own to
        // watch: the kernel's answer without PSI (a trigger on the host's would watch the host).
        let Some(dir) = crate::catalog::own_unified(&c) else { return Reply::err(libc::EOPNOTSUPP) };
        // Each trigger is an fd of the worker: a few per container, a bounded number in all.
        if !self.fs.handles.lock().reserve_trigger(&owner, self.per_container, self.global) {
            return Reply::err(libc::EMFILE);
        }
        let taken = (|| {
            use std::io::Write;
            let mut f = dir.open_file(file, libc::O_RDWR | libc::O_NONBLOCK).map_err(Errno::from)?;
            // The normalised line, never the caller's bytes.
            f.write_all(trigger.line().as_bytes()).map_err(Errno::from)?;
            Ok::<_, Errno>(Arc::new(std::os::fd::OwnedFd::from(f)))
        })();
        let fd = match taken {
            Ok(fd) => fd,
            Err(e) => {
                self.fs.handles.lock().trigger_gone(&owner);
                return Reply::Err(e);
            }
        };
        let stored = match self.fs.handles.lock().map.get_mut(&fh) {
            Some(hd) if hd.trigger.is_none() => {
                hd.trigger = Some(Arc::clone(&fd));
                true
            }
            _ => false,
        };
        if !stored {
            // Released meanwhile, or a second trigger won the race.
            self.closer.close(owner, fd);
            return Reply::err(libc::EBUSY);
        }
        Reply::written(data.len())
    }

    /// POLL: the trigger's events now; when there are none and the kernel asks to be told, the
    /// poll handle waits with the watcher.
    fn poll(&self, h: &InHeader, fh: u64, kh: u64, flags: u32) -> Reply {
        if !matches!(self.fs.source(h.nodeid), Some(Source::Served(v)) if v.pressure_file().is_some()) {
            // A plain file: always ready, as the kernel's default for files without poll.
            return Reply::poll(psi::DEFAULT_POLLMASK);
        }
        let trigger = match self.fs.handles.lock().map.get(&fh) {
            Some(hd) if hd.ino == h.nodeid => hd.trigger.clone(),
            // A predecessor's handle, or none: no trigger (it went with the old worker).
            _ => None,
        };
        let Some(fd) = trigger else { return Reply::poll(psi::NO_TRIGGER) };
        use std::os::fd::AsRawFd;
        let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLPRI, revents: 0 };
        // SAFETY: one valid pollfd, no waiting.
        unsafe { libc::poll(&mut p, 1, 0) };
        let revents = p.revents as u32 | self.pollers.take_fired(fh);
        if revents == 0 && flags & abi::FUSE_POLL_SCHEDULE_NOTIFY != 0 {
            self.pollers.wait(fh, kh, &fd);
        }
        Reply::poll(revents)
    }

    /// SETATTR: the truncation an `O_TRUNC` open of a pressure file brings is answered like
    /// procfs (nothing changes); any other change is refused.
    fn setattr(&self, h: &InHeader) -> Reply {
        let pressure = matches!(self.fs.source(h.nodeid), Some(Source::Served(v)) if v.pressure_file().is_some());
        if !pressure {
            return Reply::err(libc::EROFS);
        }
        match self.fs.attr(h.nodeid, || self.fs.service.container_of(h.pid)) {
            Ok(a) => Reply::attr(TTL, &a),
            Err(e) => Reply::Err(e),
        }
    }
}

impl Handler for TriggerFs {
    fn handle(&self, h: &InHeader, req: Request<'_>) -> Reply {
        match req {
            Request::Open { flags } => self.fs.open(h, flags, true),
            Request::Release { fh } => {
                if let Some(fh) = fh {
                    self.release(fh);
                }
                Reply::empty()
            }
            Request::Write { fh, data } => self.write(h, fh, data),
            Request::Poll { fh, kh, flags } => self.poll(h, fh, kh, flags),
            Request::Setattr { .. } => self.setattr(h),
            other => self.fs.handle(h, other),
        }
    }
}
