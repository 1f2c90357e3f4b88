//! The .deb and .rpm built by `.ci/run` (`cargo deb --no-build`, `cargo generate-rpm`):
//! install the .deb, check what it placed, remove it cleanly; inspect the .rpm.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn built(dir: &str, ext: &str) -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(dir);
    std::fs::read_dir(d).ok()?.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == ext))
}

fn sh(cmd: &str) -> (bool, String) {
    let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn require(what: &str, p: Option<PathBuf>) -> PathBuf {
    p.unwrap_or_else(|| {
        common::harness::skip(format!(
            "no {what} built: run `cargo deb --no-build` / `cargo generate-rpm` first (.ci/run does)"
        ))
    })
}

const FILES: &[&str] = &[
    "/usr/bin/cgprocfs",
    "/usr/bin/cgprocfs-runc",
    "/usr/share/containers/oci/hooks.d/cgprocfs.json",
    "/usr/share/cgprocfs/containerd-hook.json",
    "/usr/share/cgprocfs/seccomp.json",
    "/usr/share/cgprocfs/kubernetes/daemonset.yaml",
];
/// cargo-deb compresses man pages; the rpm keeps it as is.
const MAN_DEB: &str = "/usr/share/man/man8/cgprocfs.8.gz";
const MAN_RPM: &str = "/usr/share/man/man8/cgprocfs.8";

fn deb_installs_what_it_should_and_removes_cleanly() {
    let deb = require(".deb", built("debian", "deb"));
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        common::harness::skip("installing the .deb needs root");
    }
    let (ok, out) = sh(&format!("dpkg -i {}", deb.display()));
    assert!(ok, "dpkg -i: {out}");
    let result = std::panic::catch_unwind(|| {
        for f in FILES.iter().chain(&[MAN_DEB]) {
            assert!(Path::new(f).exists(), "{f} not installed");
        }
        let unit = ["/lib/systemd/system/cgprocfs.service", "/usr/lib/systemd/system/cgprocfs.service"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("systemd unit installed");
        let (ok, out) = sh("/usr/bin/cgprocfs --version");
        assert!(ok && out.starts_with("cgprocfs "), "{out}");
        // The runc wrapper passes a command it does not prepare through untouched.
        let (ok, out) = sh("/usr/bin/cgprocfs-runc --cgprocfs-runc=/bin/echo --cgprocfs-log=/dev/null state x");
        assert!(ok && out.trim() == "state x", "cgprocfs-runc: {out}");
        if Path::new("/usr/bin/systemd-analyze").exists() {
            let (ok, out) = sh(&format!("systemd-analyze verify {unit}"));
            // Units named in Before= need not exist on this host; anything else is an error.
            let errors: Vec<&str> = out.lines().filter(|l| !l.contains("not found") && !l.trim().is_empty()).collect();
            assert!(ok || errors.is_empty(), "systemd-analyze verify: {out}");
        } else {
            eprintln!("systemd-analyze not available: unit not verified");
        }
        let unit_text = std::fs::read_to_string(unit).unwrap();
        for line in ["ExecStart=/usr/bin/cgprocfs serve", "OOMScoreAdjust=-1000", "KillMode=process", "ExecReload="] {
            assert!(unit_text.contains(line), "unit lacks {line}");
        }
        let hook: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string("/usr/share/containers/oci/hooks.d/cgprocfs.json").unwrap())
                .unwrap();
        assert_eq!(hook["hook"]["path"], "/usr/bin/cgprocfs");
        assert_eq!(hook["stages"][0], "createContainer");
    });
    let (ok, out) = sh("dpkg -P cgprocfs");
    assert!(ok, "dpkg -P: {out}");
    for f in FILES.iter().chain(&[MAN_DEB]) {
        assert!(!Path::new(f).exists(), "{f} left after removal");
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn rpm_has_the_same_contents() {
    let rpm = require(".rpm", built("generate-rpm", "rpm"));
    if !Path::new("/usr/bin/rpm").exists() {
        common::harness::skip("rpm is not installed (.ci/run installs it)");
    }
    let (ok, list) = sh(&format!("rpm -qlp {}", rpm.display()));
    assert!(ok, "{list}");
    for f in FILES.iter().chain(&[MAN_RPM, "/usr/lib/systemd/system/cgprocfs.service"]) {
        assert!(list.lines().any(|l| l == *f), "{f} not in the rpm:\n{list}");
    }
    let (ok, info) = sh(&format!("rpm -qip {}", rpm.display()));
    assert!(ok, "{info}");
    assert!(info.contains("Name        : cgprocfs") && info.contains("License     : Apache-2.0"), "{info}");
}

crate::cgprocfs_tests!(deb_installs_what_it_should_and_removes_cleanly, rpm_has_the_same_contents,);
