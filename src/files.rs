//! Files the daemon writes as root — pid file, state file, CPU records, sockets, the hook's
//! log — created so that no other user can redirect them: in a directory only root can write,
//! never through a symlink (`O_NOFOLLOW`), new files with `O_EXCL`, replaced by `rename`.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Default mount point, lxcfs-compatible layout under it.
pub const DEFAULT_MOUNTPOINT: &str = "/var/lib/cgprocfs";

/// A file beside `pidfile` named after it: `keeper.pid` -> `keeper.<what>`, any other name
/// gets `.<what>` appended (`/tmp/tmp.AbC123` -> `/tmp/tmp.AbC123.state`). Never
/// `Path::with_extension`, which maps every `tmp.*` pid file of a directory onto one name.
pub fn companion(pidfile: &Path, what: &str) -> PathBuf {
    let name = pidfile.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".pid").filter(|s| !s.is_empty()).unwrap_or(&name);
    pidfile.with_file_name(format!("{stem}.{what}"))
}

/// Makes sure `dir` exists (created with `mode`) and is safe to write in as root: a real
/// directory (not a symlink), owned by this user, writable by nobody else.
pub fn private_dir(dir: &Path, mode: u32) -> io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if std::fs::symlink_metadata(parent).is_err() {
            std::fs::create_dir_all(parent)?;
        }
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))),
    }
    check_private(dir)
}

/// `dir` is a directory, not a symlink, owned by this user and not writable by others.
pub fn check_private(dir: &Path) -> io::Result<()> {
    let m = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let bad = if !m.file_type().is_dir() {
        Some("is not a directory (or is a symlink)".to_string())
    } else if m.uid() != me {
        Some(format!("is owned by uid {}, not {me}", m.uid()))
    } else if m.mode() & 0o022 != 0 {
        Some(format!("is writable by other users (mode {:o})", m.mode() & 0o7777))
    } else {
        None
    };
    match bad {
        Some(why) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing to keep daemon files in {}: it {why}", dir.display()),
        )),
        None => Ok(()),
    }
}

/// Creates `path` anew (`O_EXCL | O_NOFOLLOW`, mode 0600): fails if anything is there.
pub fn create_new(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Replaces `path` with `bytes` atomically: a new temporary file beside it (never through a
/// symlink), renamed over it (`rename` replaces a symlink, it does not follow it).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

/// [`write_atomic`] with file mode `mode` (e.g. 0644 for a file other users' agents read).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = companion(path, &format!("tmp{}", std::process::id()));
    // A temporary file of a dead process of the same pid.
    let _ = std::fs::remove_file(&tmp);
    let r = create_new(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))
        })
        .and_then(|_| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Opens `path` for appending, creating it (mode 0600) if missing, never through a symlink.
pub fn open_append(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Appends `<unix time> line` to the log file `file` (created 0600, never through a symlink,
/// in a directory `private_dir` accepts); a log that cannot be written is skipped, since the
/// hook and the runc wrapper must never fail a container over it.
pub fn append_log(file: &Path, line: &str) {
    let dir_ok = file.parent().is_none_or(|d| private_dir(d, 0o755).is_ok());
    if let Some(mut f) = dir_ok.then(|| open_append(file).ok()).flatten() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let _ = writeln!(f, "{now} {line}");
    }
}

/// A new directory `<base>/<prefix>XXXXXX` (mkdtemp: random name, mode 0700, never an
/// existing one) under `/run` where it exists, else the temporary directory.
pub fn fresh_private_dir(prefix: &str) -> io::Result<PathBuf> {
    let base = if Path::new("/run").is_dir() { PathBuf::from("/run") } else { std::env::temp_dir() };
    let template = base.join(format!("{prefix}XXXXXX"));
    let c = CString::new(template.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = c.into_bytes_with_nul();
    // SAFETY: a NUL-terminated, writable template ending in XXXXXX.
    let r = unsafe { libc::mkdtemp(buf.as_mut_ptr() as *mut libc::c_char) };
    if r.is_null() {
        return Err(io::Error::last_os_error());
    }
    buf.pop();
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&buf)))
}

/// A fresh private directory for a unit test, removed on drop even when the test fails.
#[cfg(test)]
pub(crate) struct TestDir(PathBuf);

#[cfg(test)]
impl TestDir {
    pub(crate) fn new(prefix: &str) -> TestDir {
        TestDir(fresh_private_dir(prefix).expect("a private directory"))
    }
}

#[cfg(test)]
impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companions_of_mktemp_names_are_distinct() {
        assert_eq!(companion(Path::new("/r/keeper.pid"), "state"), Path::new("/r/keeper.state"));
        assert_eq!(companion(Path::new("/tmp/tmp.AbC123"), "state"), Path::new("/tmp/tmp.AbC123.state"));
        assert_ne!(companion(Path::new("/tmp/tmp.AbC123"), "sock"), companion(Path::new("/tmp/tmp.XyZ789"), "sock"));
        assert_eq!(companion(Path::new("/r/.pid"), "sock"), Path::new("/r/.pid.sock"));
    }

    #[test]
    fn writes_never_follow_a_symlink() {
        let dir = crate::files::TestDir::new("cgprocfs-files-test-");
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let link = dir.join("state");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new");
        let log = dir.join("log");
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        assert!(open_append(&log).is_err());
        assert!(create_new(&victim).is_err());
        let ldir = dir.join("linkdir");
        std::os::unix::fs::symlink(&*dir, &ldir).unwrap();
        assert!(check_private(&ldir).is_err());
        assert!(check_private(&dir).is_ok());
    }
}
