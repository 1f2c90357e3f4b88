//! Formats of the per-process files under `/proc/<pid>/` the daemon reads: the fields of
//! `stat`, the innermost `NSpid` of `status`, start times.

use crate::error::{read_file, Error, Result};
use crate::Root;

/// Nanoseconds per USER_HZ tick (100 Hz on every Linux ABI): the unit of `/proc/stat` and of
/// process start times.
pub const NS_PER_TICK: u64 = 10_000_000;

/// The fields of a `/proc/<pid>/stat` text from field 3 (the state letter) on: they follow the
/// last `)`, since the command name before it may hold spaces and parentheses.
pub fn stat_fields(stat: &str) -> impl Iterator<Item = &str> {
    stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_ascii_whitespace()
}

/// When process `pid` started, in USER_HZ ticks after boot (`/proc/<pid>/stat` field 22).
pub fn start_ticks(root: &Root, pid: u32) -> Result<u64> {
    let p = root.proc_pid(pid).join("stat");
    let t = read_file(&p)?;
    let ticks = stat_fields(&t).nth(19).and_then(|v| v.parse::<u64>().ok());
    ticks.ok_or_else(|| Error::malformed(&p, "no start time"))
}

/// When process `pid` started, ns after boot: the clock `/proc/uptime` is on.
pub fn start_ns(root: &Root, pid: u32) -> Result<u64> {
    Ok(start_ticks(root, pid)?.saturating_mul(NS_PER_TICK))
}

/// The innermost pid of a `/proc/<pid>/status` text (last field of `NSpid:`): the process's
/// pid in its own pid namespace, 1 for that namespace's init.
pub fn innermost_nspid(status: &str) -> Option<&str> {
    status.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_ascii_whitespace().last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_after_the_last_paren() {
        assert_eq!(stat_fields("12 (a) b) c) R 1 2").collect::<Vec<_>>(), ["R", "1", "2"]);
        assert_eq!(stat_fields("garbage").next(), None);
        assert_eq!(innermost_nspid("Name:\tx\nNSpid:\t4711\t1\n"), Some("1"));
        assert_eq!(innermost_nspid("Name:\tx\n"), None);
    }
}
