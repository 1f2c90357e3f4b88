//! The host's `/proc/stat`: the lines a container view keeps from it (`intr`, `ctxt`, `btime`,
//! `processes`, `softirq`); the `cpu*` and `procs_*` lines are the container's own.

use crate::error::{read_file, Error, Result};
use crate::Root;

/// The host's `/proc/stat` without its per-CPU and running/blocked lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStat {
    /// Lines kept verbatim, in order, without newlines.
    pub other: Vec<String>,
}

impl HostStat {
    /// Parses the text of `/proc/stat`.
    pub fn parse(text: &str) -> Result<Self> {
        if !text.starts_with("cpu ") {
            return Err(Error::malformed("/proc/stat", "does not start with the cpu line"));
        }
        let other = text
            .lines()
            .filter(|l| !l.starts_with("cpu") && !l.starts_with("procs_running") && !l.starts_with("procs_blocked"))
            .map(str::to_string)
            .collect();
        Ok(HostStat { other })
    }

    /// Reads `<root>/proc/stat`.
    pub fn read(root: &Root) -> Result<Self> {
        Self::parse(&read_file(&root.proc().join("stat"))?)
    }
}
