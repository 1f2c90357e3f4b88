//! The host's `/proc/meminfo`, kept line by line so a view can reproduce its exact order,
//! labels and formatting and substitute only the values it has a container source for.

use crate::error::{read_file, Error, Result};
use crate::Root;

/// One line of meminfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The label without its colon (`MemTotal`, `Active(anon)`).
    pub label: String,
    /// The numeric value (KiB for `kB` lines, a count for `HugePages_*`).
    pub value: u64,
    /// The line as the kernel wrote it, without the newline.
    pub raw: String,
}

/// The host's meminfo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostMeminfo {
    /// Lines in kernel order.
    pub lines: Vec<Line>,
}

impl HostMeminfo {
    /// Parses meminfo text. Lines without `label: number` are kept verbatim with value 0.
    pub fn parse(text: &str) -> Result<Self> {
        let lines: Vec<Line> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (label, rest) = l.split_once(':').unwrap_or((l, ""));
                let value = rest.split_ascii_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
                Line { label: label.to_string(), value, raw: l.to_string() }
            })
            .collect();
        if !lines.iter().any(|l| l.label == "MemTotal") {
            return Err(Error::malformed("/proc/meminfo", "no MemTotal line"));
        }
        Ok(HostMeminfo { lines })
    }

    /// Reads `<root>/proc/meminfo`.
    pub fn read(root: &Root) -> Result<Self> {
        Self::parse(&read_file(&root.proc().join("meminfo"))?)
    }

    /// Value of `label` in KiB, 0 when the kernel does not print it.
    fn get(&self, label: &str) -> u64 {
        self.lines.iter().find(|l| l.label == label).map_or(0, |l| l.value)
    }

    /// `MemTotal`, KiB.
    pub fn mem_total(&self) -> u64 {
        self.get("MemTotal")
    }

    /// `SwapTotal`, KiB (0 without swap).
    pub fn swap_total(&self) -> u64 {
        self.get("SwapTotal")
    }

    /// `SwapFree`, KiB (0 without swap).
    pub fn swap_free(&self) -> u64 {
        self.get("SwapFree")
    }

    /// The file as the host kernel wrote it.
    pub fn raw(&self) -> String {
        let mut s = String::with_capacity(self.lines.len() * 28);
        for l in &self.lines {
            s.push_str(&l.raw);
            s.push('\n');
        }
        s
    }
}
