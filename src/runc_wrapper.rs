//! `cgprocfs-runc`: a runc-compatible wrapper for engines that only know "a runc binary"
//! (Docker's `runtimes`, containerd's runc shim `BinaryName`, the Kubernetes CRI plugin). On
//! `create` and `run` it adds to the bundle's `config.json` what hooks.d gives podman and
//! CRI-O: the `createContainer` hook (`cgprocfs oci-hook`, which binds the container's own
//! cached files, the trigger connection's pressure files and the cpu directory) and the
//! seccomp notify rule for `sysinfo` (merged into the container's own profile, the engine's
//! default one included, with the daemon's listener path). Then it executes the real runc with
//! the same arguments. Every other command, and every argument it does not know, passes
//! through untouched (exec: stdio, signals and exit status are runc's own).
//!
//! It never prevents a container from starting: a bundle it cannot read or parse, a daemon
//! that is not serving, a missing listener socket or the opt-out annotation leave the bundle
//! as it was, with one log line. It writes only the bundle's `config.json` (a new file beside
//! it, renamed over it).
//!
//! Its own options come first and all start with `--cgprocfs-` (Docker passes them as
//! `runtimeArgs`; containerd's shim passes none, so the defaults serve the packaged daemon):
//! `--cgprocfs-mountpoint=DIR`, `--cgprocfs-listener=SOCKET|none`, `--cgprocfs-runc=PATH`,
//! `--cgprocfs-log=FILE`, `--cgprocfs-affinity`. `CGPROCFS_RUNC` names the real runc too.

use crate::daemon::args::{DEFAULT_MOUNTPOINT, DEFAULT_SECCOMP_SOCKET};
use serde_json::{json, Value};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The name under which the binary acts as the wrapper (a second name of `cgprocfs`).
pub const NAME: &str = "cgprocfs-runc";

/// Where the wrapper reports what it did by default (runtimes discard runc's stderr).
pub const DEFAULT_LOG: &str = "/run/cgprocfs/runc-wrapper.log";

/// Why a bundle is left as it was (each is one log line; the container starts unchanged).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bundle's config cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The bundle's config is not a JSON object.
    #[error("{path} is not an OCI config: {why}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The config cannot be written back.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The config file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The container carries the opt-out annotation.
    #[error("opted out ({})", crate::oci_hook::OPT_OUT)]
    OptedOut,
    /// No daemon serves the mount point.
    #[error("{mountpoint} is not served: {why}")]
    NotServed {
        /// The mount point.
        mountpoint: PathBuf,
        /// Why.
        why: String,
    },
}

/// The wrapper's own options, taken from the front of its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The daemon's mount point.
    pub mountpoint: PathBuf,
    /// The daemon's seccomp listener; `None` adds no seccomp rule.
    pub listener: Option<PathBuf>,
    /// The real runc, if named.
    pub runc: Option<PathBuf>,
    /// The log file.
    pub log: PathBuf,
    /// Also notify `sched_getaffinity` (the daemon's `--seccomp-affinity`).
    pub affinity: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mountpoint: DEFAULT_MOUNTPOINT.into(),
            listener: Some(DEFAULT_SECCOMP_SOCKET.into()),
            runc: None,
            log: DEFAULT_LOG.into(),
            affinity: false,
        }
    }
}

/// Splits the wrapper's own `--cgprocfs-*` options (leading) from runc's arguments (the rest,
/// untouched).
pub fn split_args(args: Vec<OsString>) -> (Options, Vec<OsString>) {
    let mut o = Options::default();
    let mut rest = args.into_iter().peekable();
    while let Some(a) = rest.peek() {
        let Some(s) = a.to_str().and_then(|s| s.strip_prefix("--cgprocfs-")) else { break };
        let (k, v) = s.split_once('=').map_or((s, None), |(k, v)| (k, Some(v)));
        match (k, v) {
            ("mountpoint", Some(v)) => o.mountpoint = v.into(),
            ("listener", Some("none")) => o.listener = None,
            ("listener", Some(v)) => o.listener = Some(v.into()),
            ("runc", Some(v)) => o.runc = Some(v.into()),
            ("log", Some(v)) => o.log = v.into(),
            ("affinity", None) => o.affinity = true,
            // Not ours after all: runc's from here on.
            _ => break,
        }
        rest.next();
    }
    (o, rest.collect())
}

/// runc's global options that take a value as the next argument (`runc --help`).
const GLOBAL_WITH_VALUE: &[&str] = &["--root", "--log", "--log-format", "--criu", "--rootless"];

/// The runc command (`create`, `run`, `exec`, ...) and, for `create` and `run`, the bundle
/// directory (`--bundle`/`-b`, default the working directory).
pub fn command_and_bundle(args: &[OsString]) -> Option<(String, Option<PathBuf>)> {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_str()?;
        if a == "--" {
            return None;
        }
        if a.starts_with('-') {
            if GLOBAL_WITH_VALUE.contains(&a) {
                i += 1;
            }
            i += 1;
            continue;
        }
        let cmd = a.to_string();
        if cmd != "create" && cmd != "run" {
            return Some((cmd, None));
        }
        let mut bundle = None;
        let mut j = i + 1;
        while j < args.len() {
            let b = args[j].as_bytes();
            if b == b"--bundle" || b == b"-b" {
                bundle = args.get(j + 1).map(PathBuf::from);
                j += 1;
            } else if let Some(v) = b.strip_prefix(b"--bundle=").or_else(|| b.strip_prefix(b"-b=")) {
                bundle = Some(PathBuf::from(OsStr::from_bytes(v)));
            }
            j += 1;
        }
        let bundle = bundle.or_else(|| std::env::current_dir().ok());
        return Some((cmd, bundle));
    }
    None
}

/// Why [`edit`] left a config as it was.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The container carries the opt-out annotation.
    OptedOut,
    /// The config is not shaped as the OCI spec says (what is wrong).
    Malformed(String),
}

/// What [`edit`] did to a config.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Edited {
    /// The createContainer hook was added (not already there).
    pub hook: bool,
    /// The seccomp notify rule was added, and to which profile (`engine's` or `none`).
    pub seccomp: Option<&'static str>,
    /// Why no seccomp rule was added, when none was.
    pub seccomp_skipped: Option<String>,
}

/// Adds the hook (running `binary`) and, with a listener, the seccomp notify rule to `config`.
pub fn edit(config: &mut Value, binary: &Path, o: &Options) -> Result<Edited, Refused> {
    let malformed = |why: &str| Refused::Malformed(why.into());
    let obj = config.as_object_mut().ok_or_else(|| malformed("not a JSON object"))?;
    let opted_out = obj
        .get("annotations")
        .and_then(|a| a.get(crate::oci_hook::OPT_OUT))
        .and_then(Value::as_str)
        .is_some_and(|v| v == "true");
    if opted_out {
        return Err(Refused::OptedOut);
    }
    let mut out = Edited::default();
    let hooks = obj.entry("hooks").or_insert_with(|| json!({}));
    let hooks = hooks.as_object_mut().ok_or_else(|| malformed("hooks is not an object"))?;
    let stage = hooks.entry("createContainer").or_insert_with(|| json!([]));
    let stage = stage.as_array_mut().ok_or_else(|| malformed("hooks.createContainer is not a list"))?;
    // Ours already (hooks.d, a base spec, a second create of one bundle): not twice.
    let ours = |h: &Value| h.get("args").and_then(Value::as_array).is_some_and(|a| a.iter().any(|x| x == "oci-hook"));
    if !stage.iter().any(ours) {
        stage.push(json!({
            "path": binary,
            "args": ["cgprocfs", "oci-hook", "--mountpoint", o.mountpoint],
        }));
        out.hook = true;
    }
    match &o.listener {
        None => out.seccomp_skipped = Some("no listener".into()),
        Some(l) => {
            let linux = obj.entry("linux").or_insert_with(|| json!({}));
            let linux = linux.as_object_mut().ok_or_else(|| malformed("linux is not an object"))?;
            let base = linux.get("seccomp").cloned();
            match base.as_ref().and_then(|b| b.get("listenerPath")).and_then(Value::as_str) {
                // Another agent's: not ours to take over.
                Some(other) if Path::new(other) != l => {
                    out.seccomp_skipped = Some(format!("the profile already notifies {other}"));
                }
                _ => {
                    let which = if base.is_some() { "engine's" } else { "none" };
                    let p = crate::seccomp::profile::extend(base, l, o.affinity)
                        .map_err(|e| Refused::Malformed(e.to_string()))?;
                    linux.insert("seccomp".into(), p);
                    out.seccomp = Some(which);
                }
            }
        }
    }
    Ok(out)
}

/// Edits the bundle's `config.json` in place (a new file beside it, renamed over it).
pub fn prepare(bundle: &Path, binary: &Path, o: &Options) -> Result<Edited, Error> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|source| Error::Read { path: path.clone(), source })?;
    let mut config: Value =
        serde_json::from_slice(&text).map_err(|e| Error::Parse { path: path.clone(), why: e.to_string() })?;
    if let Err(e) = crate::oci_hook::serving(&o.mountpoint) {
        return Err(Error::NotServed { mountpoint: o.mountpoint.clone(), why: e.to_string() });
    }
    let mut o = o.clone();
    if let Some(l) = &o.listener {
        use std::os::unix::fs::FileTypeExt;
        // runc fails the container when it cannot reach the listener: add the rule only
        // where one is there.
        if !std::fs::metadata(l).is_ok_and(|m| m.file_type().is_socket()) {
            o.listener = None;
        }
    }
    let edited = match edit(&mut config, binary, &o) {
        Ok(e) => e,
        Err(Refused::OptedOut) => return Err(Error::OptedOut),
        Err(Refused::Malformed(why)) => return Err(Error::Parse { path, why }),
    };
    let bytes = serde_json::to_vec(&config).map_err(|e| Error::Parse { path: path.clone(), why: e.to_string() })?;
    let mode = std::fs::metadata(&path).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    crate::files::write_atomic_mode(&path, &bytes, mode.unwrap_or(0o644))
        .map_err(|source| Error::Write { path, source })?;
    Ok(edited)
}

/// The real runc: `--cgprocfs-runc`, `CGPROCFS_RUNC`, else the first `runc` on the PATH (and
/// in `/usr/sbin`, `/usr/bin`) that is not this binary.
pub fn find_runc(o: &Options) -> Option<PathBuf> {
    if let Some(r) = o.runc.clone().or_else(|| std::env::var_os("CGPROCFS_RUNC").map(PathBuf::from)) {
        return Some(r);
    }
    let me = std::fs::canonicalize("/proc/self/exe").ok();
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join("runc"))
        .find(|c| {
            use std::os::unix::fs::PermissionsExt;
            let exec = std::fs::metadata(c).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            exec && std::fs::canonicalize(c).ok() != me
        })
}

/// Runs the wrapper with `args` (without argv[0]): prepares the bundle on `create`/`run`,
/// then executes the real runc. Returns only if that cannot be executed.
pub fn main(args: Vec<OsString>) -> std::io::Error {
    let (o, runc_args) = split_args(args);
    if let Some((cmd, Some(bundle))) = command_and_bundle(&runc_args) {
        let binary = std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| PathBuf::from("/usr/bin/cgprocfs"));
        let line = match prepare(&bundle, &binary, &o) {
            Ok(e) => format!(
                "{cmd} {}: hook {}, seccomp {}",
                bundle.display(),
                if e.hook { "added" } else { "already there" },
                e.seccomp.map_or_else(
                    || format!("not added ({})", e.seccomp_skipped.unwrap_or_default()),
                    |w| format!("added to the {} profile", if w == "none" { "allow-all" } else { w })
                ),
            ),
            Err(e) => format!("{cmd} {}: unchanged: {e}", bundle.display()),
        };
        log(&o.log, &line);
    }
    let Some(runc) = find_runc(&o) else {
        let e = std::io::Error::new(std::io::ErrorKind::NotFound, "no runc found (set CGPROCFS_RUNC)");
        log(&o.log, &e.to_string());
        return e;
    };
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new(&runc).arg0("runc").args(&runc_args).exec();
    log(&o.log, &format!("cannot execute {}: {e}", runc.display()));
    e
}

/// Installs the node's runtime files into `dest`, a host directory seen from here (a
/// DaemonSet's hostPath), which the host sees as `host_path`: a copy of `binary`
/// (`cgprocfs`), the wrapper script `cgprocfs-runc` running it, and the hooks.d file
/// `cgprocfs-hook.json` naming it. Each is written as a new file renamed over the old one
/// (a running runc keeps its old binary). Returns the files written.
pub fn install(binary: &Path, dest: &Path, host_path: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dest)?;
    let exe = std::fs::read(binary)?;
    let bin = host_path.join("cgprocfs");
    let script = format!(
        "#!/bin/sh\n# The runc wrapper (cgprocfs docs/operations.md), installed by the DaemonSet.\nexec '{}' runc-wrapper \"$@\"\n",
        bin.display()
    );
    let hook = json!({
        "version": "1.0.0",
        "hook": {"path": bin, "args": ["cgprocfs", "oci-hook", "--mountpoint", DEFAULT_MOUNTPOINT]},
        "when": {"always": true},
        "stages": ["createContainer"],
    });
    let hook = serde_json::to_vec_pretty(&hook).map_err(std::io::Error::other)?;
    let files: [(&str, &[u8], u32); 3] =
        [("cgprocfs", &exe, 0o755), (NAME, script.as_bytes(), 0o755), ("cgprocfs-hook.json", &hook, 0o644)];
    let mut out = Vec::new();
    for (name, bytes, mode) in files {
        let p = dest.join(name);
        crate::files::write_atomic_mode(&p, bytes, mode)?;
        out.push(p);
    }
    Ok(out)
}

/// Writes `line` to stderr and appends it to the log.
fn log(file: &Path, line: &str) {
    eprintln!("{NAME}: {line}");
    crate::files::append_log(file, line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn own_options_come_first_and_the_rest_is_runcs_untouched() {
        let (o, rest) =
            split_args(os(&["--cgprocfs-mountpoint=/m", "--cgprocfs-listener=none", "--root", "/r", "create"]));
        assert_eq!(o.mountpoint, Path::new("/m"));
        assert_eq!(o.listener, None);
        assert_eq!(rest, os(&["--root", "/r", "create"]));
        let (o, rest) = split_args(os(&["--cgprocfs-bogus", "--cgprocfs-affinity", "state", "x"]));
        assert_eq!(o, Options::default());
        assert_eq!(rest, os(&["--cgprocfs-bogus", "--cgprocfs-affinity", "state", "x"]), "stops at the first unknown");
    }

    #[test]
    fn the_command_and_bundle_are_found_as_runc_reads_them() {
        let docker = os(&[
            "--root",
            "/var/run/docker/runtime-runc/moby",
            "--log",
            "/x/log.json",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b/1",
            "--pid-file",
            "/b/1/init.pid",
            "id1",
        ]);
        assert_eq!(command_and_bundle(&docker), Some(("create".into(), Some("/b/1".into()))));
        let shim = os(&[
            "--root",
            "/run/containerd/runc/k8s.io",
            "--log",
            "/l",
            "--systemd-cgroup",
            "create",
            "-b",
            "/b/2",
            "id",
        ]);
        assert_eq!(command_and_bundle(&shim), Some(("create".into(), Some("/b/2".into()))));
        assert_eq!(command_and_bundle(&os(&["run", "--bundle=/b/3", "x"])), Some(("run".into(), Some("/b/3".into()))));
        assert_eq!(command_and_bundle(&os(&["--root", "create", "start", "x"])), Some(("start".into(), None)));
        assert_eq!(command_and_bundle(&os(&["exec", "-b", "/no", "x"])), Some(("exec".into(), None)));
        assert_eq!(command_and_bundle(&os(&["--version"])), None);
    }

    #[test]
    fn the_hook_and_the_rule_join_the_engines_profile_once() {
        let mut c = json!({
            "ociVersion": "1.0.2",
            "hooks": {"createContainer": [{"path": "/other"}]},
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read", "sysinfo"], "action": "SCMP_ACT_ALLOW"}]}}
        });
        let o = Options { listener: Some("/run/s.sock".into()), ..Options::default() };
        let e = edit(&mut c, Path::new("/usr/bin/cgprocfs"), &o).unwrap();
        assert_eq!(e, Edited { hook: true, seccomp: Some("engine's"), seccomp_skipped: None });
        let hooks = c["hooks"]["createContainer"].as_array().unwrap();
        assert_eq!(hooks.len(), 2, "the engine's hook stays");
        assert_eq!(hooks[1]["args"], json!(["cgprocfs", "oci-hook", "--mountpoint", "/var/lib/cgprocfs"]));
        assert_eq!(c["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO", "the engine's profile is kept");
        assert_eq!(c["linux"]["seccomp"]["listenerPath"], "/run/s.sock");
        let again = edit(&mut c, Path::new("/usr/bin/cgprocfs"), &o).unwrap();
        assert!(!again.hook, "not twice");
        assert_eq!(c["hooks"]["createContainer"].as_array().unwrap().len(), 2);
        // Another agent's listener is left alone; an opt-out changes nothing.
        let mut other = json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x"}}});
        let e = edit(&mut other, Path::new("/b"), &o).unwrap();
        assert_eq!(e.seccomp, None);
        assert_eq!(other["linux"]["seccomp"]["listenerPath"], "/x");
        let mut out = json!({"annotations": {"io.cgprocfs.disable": "true"}});
        assert_eq!(edit(&mut out, Path::new("/b"), &o), Err(Refused::OptedOut));
        assert_eq!(out, json!({"annotations": {"io.cgprocfs.disable": "true"}}));
        assert!(edit(&mut json!([1]), Path::new("/b"), &o).is_err());
    }
}
