//! CPU bandwidth controller, v1 (`cpu.cfs_quota_us`/`cpu.cfs_period_us`) and v2 (`cpu.max`).

use super::parse::u64_value;
use super::{CgroupDir, Version};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A CFS bandwidth limit: `quota` µs of CPU time per `period` µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Runtime allowed per period, µs.
    pub quota: u64,
    /// Period length, µs.
    pub period: u64,
}

impl Quota {
    /// The limit in whole CPUs, rounded up (1.5 CPUs -> 2), at least 1.
    pub fn cpus_ceil(&self) -> usize {
        (self.quota.div_ceil(self.period.max(1)) as usize).max(1)
    }

    /// `self` is tighter than `other` (compared as quota/period without rounding).
    fn tighter_than(&self, other: &Quota) -> bool {
        (self.quota as u128) * (other.period as u128) < (other.quota as u128) * (self.period as u128)
    }
}

/// Parses v2 `cpu.max`: `max 100000` or `150000 100000`.
pub fn parse_cpu_max(path: &Path, text: &str) -> Result<Option<Quota>> {
    let mut it = text.split_ascii_whitespace();
    let (Some(q), Some(p)) = (it.next(), it.next()) else {
        return Err(Error::malformed(path, format!("expected \"QUOTA PERIOD\", got {text:?}")));
    };
    if q == "max" {
        return Ok(None);
    }
    let quota = u64_value(path, q)?;
    let period = u64_value(path, p)?;
    if period == 0 {
        return Err(Error::malformed(path, "period 0"));
    }
    Ok(Some(Quota { quota, period }))
}

/// Parses v1 `cpu.cfs_quota_us` (`-1` = unlimited) with its `cpu.cfs_period_us`.
pub fn parse_v1(path: &Path, quota: &str, period: &str) -> Result<Option<Quota>> {
    let q = quota.trim();
    if q == "-1" {
        return Ok(None);
    }
    let quota = u64_value(path, q)?;
    let period = u64_value(path, period)?;
    if period == 0 {
        return Err(Error::malformed(path, "period 0"));
    }
    Ok(Some(Quota { quota, period }))
}

/// The quota set in directory `d` itself (of a `version` hierarchy): `None` when `d` has no
/// quota file (the top of the hierarchy), `Some(None)` when it sets no limit.
pub fn quota_at(version: Version, d: &Path) -> Result<Option<Option<Quota>>> {
    match version {
        Version::V2 => {
            let p = d.join("cpu.max");
            match super::held::read(&p) {
                Ok(t) => parse_cpu_max(&p, &t).map(Some),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(p, e)),
            }
        }
        Version::V1 => {
            let qp = d.join("cpu.cfs_quota_us");
            let pp = d.join("cpu.cfs_period_us");
            match (super::held::read(&qp), super::held::read(&pp)) {
                (Ok(q), Ok(p)) => parse_v1(&qp, &q, &p).map(Some),
                (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                (Err(e), _) | (_, Err(e)) => Err(Error::io(qp, e)),
            }
        }
    }
}

/// The file a quota is set in, in a `version` hierarchy (`show --explain`).
pub fn quota_file(version: Version) -> &'static str {
    match version {
        Version::V2 => "cpu.max",
        Version::V1 => "cpu.cfs_quota_us",
    }
}

/// The tightest quota of the cgroup and its ancestors, and the directory that sets it; each
/// directory's own quota read through `at` (the sampler caches ancestors shared by many
/// containers).
pub fn tightest(
    dir: &CgroupDir,
    at: impl FnMut(&Path) -> Result<Option<Option<Quota>>>,
) -> Result<Option<(Quota, PathBuf)>> {
    if !super::held::exists(&dir.path) {
        return Err(Error::io(&dir.path, std::io::ErrorKind::NotFound.into()));
    }
    dir.chain_best(at, Quota::tighter_than)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max() {
        let p = Path::new("cpu.max");
        assert_eq!(parse_cpu_max(p, "max 100000\n").unwrap(), None);
        let q = parse_cpu_max(p, "150000 100000\n").unwrap().unwrap();
        assert_eq!(q.cpus_ceil(), 2);
        assert_eq!(Quota { quota: 1000, period: 100000 }.cpus_ceil(), 1);
        assert_eq!(Quota { quota: 200000, period: 100000 }.cpus_ceil(), 2);
        assert!(parse_cpu_max(p, "").is_err());
        assert!(parse_cpu_max(p, "-5 100000").is_err());
        assert!(parse_cpu_max(p, "5 0").is_err());
    }

    #[test]
    fn v1_quota() {
        let p = Path::new("q");
        assert_eq!(parse_v1(p, "-1\n", "100000\n").unwrap(), None);
        assert_eq!(parse_v1(p, "50000\n", "100000\n").unwrap().unwrap().cpus_ceil(), 1);
        assert!(parse_v1(p, "-2\n", "100000\n").is_err());
    }
}
