//! The host's `/proc/cpuinfo`, split into one block per CPU keyed by its `processor` number.

use crate::error::{read_file, Error, Result};
use crate::Root;

/// One `processor` block, lines without the trailing blank line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The CPU number of the block.
    pub cpu: u32,
    /// The block's lines, as the kernel wrote them.
    pub lines: Vec<String>,
}

/// The host's cpuinfo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCpuinfo {
    /// Processor blocks in kernel order.
    pub blocks: Vec<Block>,
    /// Text after the processor blocks that belongs to no CPU (arm's `Hardware`, s390's
    /// header ...), kept verbatim.
    pub trailer: String,
}

/// The key of a cpuinfo line (`model name` in `model name\t: AMD EPYC`).
pub fn key(line: &str) -> &str {
    line.split(':').next().unwrap_or("").trim_end()
}

impl HostCpuinfo {
    /// Parses cpuinfo text.
    pub fn parse(text: &str) -> Result<Self> {
        let mut out = HostCpuinfo::default();
        for chunk in text.split("\n\n").filter(|c| !c.trim().is_empty()) {
            let lines: Vec<String> = chunk.lines().map(str::to_string).collect();
            let cpu = lines
                .iter()
                .find(|l| key(l) == "processor")
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<u32>().ok());
            match cpu {
                Some(cpu) => out.blocks.push(Block { cpu, lines }),
                None => {
                    out.trailer.push_str(chunk.trim_matches('\n'));
                    out.trailer.push_str("\n\n");
                }
            }
        }
        if out.blocks.is_empty() {
            return Err(Error::malformed("/proc/cpuinfo", "no processor blocks"));
        }
        Ok(out)
    }

    /// Reads `<root>/proc/cpuinfo`.
    pub fn read(root: &Root) -> Result<Self> {
        Self::parse(&read_file(&root.proc().join("cpuinfo"))?)
    }

    /// The block of host CPU `cpu`.
    pub fn block(&self, cpu: u32) -> Option<&Block> {
        self.blocks.iter().find(|b| b.cpu == cpu)
    }
}
