//! Small, allocation-light parsers for the text formats of cgroup files.

use crate::error::{Error, Result};
use std::path::Path;

/// v1 reports "no limit" as `PAGE_COUNTER_MAX * PAGE_SIZE` (9223372036854771712 on x86-64) and
/// other huge values; anything at or above 2^62 is treated as unlimited.
pub const V1_UNLIMITED: u64 = 1 << 62;

/// Parses a limit file's content: `max` (v2) or a huge v1 value means `None`.
pub fn limit(path: &Path, text: &str) -> Result<Option<u64>> {
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    let v = u64_value(path, t)?;
    Ok(if v >= V1_UNLIMITED { None } else { Some(v) })
}

/// Parses one unsigned decimal, rejecting negatives, garbage and values above `u64::MAX`.
pub fn u64_value(path: &Path, t: &str) -> Result<u64> {
    t.trim().parse::<u64>().map_err(|e| Error::malformed(path, format!("{t:?} is not an unsigned integer ({e})")))
}

/// Iterates `key value` pairs of a flat-keyed file (`memory.stat`, `cpu.stat`). Lines that do
/// not have exactly a key and an unsigned value are reported as errors by the caller's
/// choice: here they are skipped, since kernels add keys with other shapes over time.
pub fn flat_keyed(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let mut it = l.split_ascii_whitespace();
        let k = it.next()?;
        let v = it.next()?.parse::<u64>().ok()?;
        if it.next().is_some() {
            return None;
        }
        Some((k, v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        let p = Path::new("x");
        assert_eq!(limit(p, "max\n").unwrap(), None);
        assert_eq!(limit(p, "268435456\n").unwrap(), Some(268435456));
        assert_eq!(limit(p, "9223372036854771712\n").unwrap(), None);
        assert!(limit(p, "-1").is_err());
        assert!(limit(p, "").is_err());
        assert!(limit(p, "garbage").is_err());
        assert!(limit(p, "99999999999999999999999").is_err());
    }

    #[test]
    fn flat_keyed_is_exact_and_skips_odd_lines() {
        let t = "file 10\nfile_mapped 20\nweird\nneg -3\nthree 1 2\n";
        let v: Vec<_> = flat_keyed(t).collect();
        assert_eq!(v, vec![("file", 10), ("file_mapped", 20)]);
    }
}
