//! The host's `/proc/diskstats`: which device name belongs to which major:minor.

use crate::error::{read_file, Result};
use crate::Root;

/// Device numbers and names, in the host's order.
pub fn parse(text: &str) -> Vec<((u32, u32), String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_ascii_whitespace();
            let maj = f.next()?.parse().ok()?;
            let min = f.next()?.parse().ok()?;
            Some(((maj, min), f.next()?.to_string()))
        })
        .collect()
}

/// Reads `<root>/proc/diskstats`.
pub fn read(root: &Root) -> Result<Vec<((u32, u32), String)>> {
    Ok(parse(&read_file(&root.proc().join("diskstats"))?))
}
