//! An OCI bundle for real runc: a busybox-static rootfs built by the test and a config.json
//! from `runc spec` with a 256 MiB memory limit and 1.5 CPUs of quota; removed on drop.

use super::{bin, live_ready, programs_ready, unique};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether runc tests can run here: the live prerequisites, runc and busybox (failing under
/// `CI=true`, skipping visibly elsewhere).
pub fn runc_ready(test: &str) {
    live_ready(test);
    programs_ready(test, &["runc", "busybox"]);
}

/// `rootfs/bin` with the host's busybox-static and a link per applet.
pub fn busybox_rootfs(rootfs: &Path, applets: &[&str]) {
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let busybox =
        String::from_utf8(Command::new("sh").args(["-c", "command -v busybox"]).output().unwrap().stdout).unwrap();
    std::fs::copy(busybox.trim(), rootfs.join("bin/busybox")).unwrap();
    for a in applets {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
}

pub struct Bundle {
    pub dir: PathBuf,
    pub id: String,
    pub config: Value,
}

impl Bundle {
    /// A bundle running `sh -c script`; change `config` before [`Bundle::write`].
    pub fn new(tag: &str, script: &str) -> Bundle {
        let id = unique(tag);
        let dir = std::env::temp_dir().join(&id);
        let rootfs = dir.join("rootfs");
        for d in ["proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        busybox_rootfs(&rootfs, &["sh", "cat", "head", "grep", "free", "uptime", "sleep", "wc", "nproc", "test", "["]);
        let st = Command::new("runc").args(["spec", "--bundle"]).arg(&dir).status().unwrap();
        assert!(st.success(), "runc spec failed");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(["sh", "-c", script]);
        config["root"]["readonly"] = json!(false);
        config["linux"]["resources"] =
            json!({"memory": {"limit": 256u64 << 20}, "cpu": {"quota": 150000, "period": 100000}});
        Bundle { dir, id, config }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// `cgprocfs oci-hook` at createContainer, binding the files of the daemon on `mountpoint`.
    pub fn with_hook(mut self, mountpoint: &Path) -> Bundle {
        self.config["hooks"] = json!({"createContainer": [{
            "path": bin(),
            "args": ["cgprocfs", "oci-hook", "--mountpoint", mountpoint.to_string_lossy(),
                     "--log", self.dir.join("hook.log").to_string_lossy()]
        }]});
        self
    }

    pub fn annotate(mut self, annotations: Value) -> Bundle {
        self.config["annotations"] = annotations;
        self
    }

    /// Writes config.json.
    pub fn write(self) -> Bundle {
        std::fs::write(self.dir.join("config.json"), serde_json::to_string_pretty(&self.config).unwrap()).unwrap();
        self
    }

    /// What the hook logged for this container.
    pub fn hook_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("hook.log")).unwrap_or_default()
    }

    /// `runc run` to completion: (success, stdout, stderr).
    pub fn run(&self) -> (bool, String, String) {
        let out = Command::new("runc").args(["run", "--bundle"]).arg(&self.dir).arg(&self.id).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `runc run` in the background, stdout and stderr to files in the bundle.
    pub fn spawn(&self) -> std::process::Child {
        Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&self.dir)
            .arg(&self.id)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(self.dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(self.dir.join("stderr")).unwrap())
            .spawn()
            .unwrap()
    }

    pub fn output_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["delete", "-f", &self.id]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
