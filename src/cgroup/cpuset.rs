//! Cpuset controller and the kernel's CPU list format (`0-3,5,7-8`).

use super::{CgroupDir, Version};
use crate::error::{Error, Result};
use std::path::Path;

/// Highest CPU number accepted from a list; guards against absurd input allocating memory.
const MAX_CPU: u32 = 1 << 16;

/// Parses a CPU list (`cpuset.cpus.effective`, `/sys/devices/system/cpu/online`) into sorted,
/// unique CPU numbers. An empty list is valid (an empty cpuset).
pub fn parse_list(path: &Path, text: &str) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let bad = |what: &str| Error::malformed(path, format!("bad cpu list {text:?}: {what}"));
    for part in text.trim().split(',').filter(|s| !s.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: u32 = a.trim().parse().map_err(|_| bad(part))?;
        let b: u32 = b.trim().parse().map_err(|_| bad(part))?;
        if a > b || b > MAX_CPU {
            return Err(bad(part));
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Formats CPU numbers the way the kernel prints a cpumask list (`%*pbl`), with a newline.
///
/// ```
/// assert_eq!(cgprocfs::cgroup::cpuset::format_list(&[0, 1, 2, 5]), "0-2,5\n");
/// ```
pub fn format_list(cpus: &[u32]) -> String {
    let mut s = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        if !s.is_empty() {
            s.push(',');
        }
        if start == end {
            s.push_str(&start.to_string());
        } else {
            s.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    s.push('\n');
    s
}

/// The effective cpuset of `dir`: v1 `cpuset.effective_cpus`; v2 `cpuset.cpus.effective` of
/// the cgroup or its nearest ancestor that has the controller. `None` when no level has it.
pub fn effective_cpus(dir: &CgroupDir) -> Result<Option<Vec<u32>>> {
    if !super::held::exists(&dir.path) {
        return Err(Error::io(&dir.path, std::io::ErrorKind::NotFound.into()));
    }
    let name = match dir.version {
        Version::V1 => "cpuset.effective_cpus",
        Version::V2 => "cpuset.cpus.effective",
    };
    for d in dir.chain() {
        let p = d.join(name);
        match super::held::read(&p) {
            Ok(t) => return parse_list(&p, &t).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(p, e)),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lists() {
        let p = Path::new("l");
        assert_eq!(parse_list(p, "0-3,5,7-8\n").unwrap(), vec![0, 1, 2, 3, 5, 7, 8]);
        assert_eq!(parse_list(p, "\n").unwrap(), Vec::<u32>::new());
        assert!(parse_list(p, "3-1").is_err());
        assert!(parse_list(p, "x").is_err());
        assert!(parse_list(p, "0-4294967295").is_err());
        assert_eq!(format_list(&[0, 1, 2, 3, 5, 7, 8]), "0-3,5,7-8\n");
        assert_eq!(format_list(&[0]), "0\n");
    }

    proptest! {
        #[test]
        fn format_parse_roundtrip(mut v in proptest::collection::vec(0u32..512, 0..64)) {
            v.sort_unstable();
            v.dedup();
            let s = format_list(&v);
            prop_assert_eq!(parse_list(Path::new("l"), &s).unwrap(), v);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse_list(Path::new("l"), &s);
        }
    }
}
