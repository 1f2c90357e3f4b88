//! Block I/O a cgroup did, per device: v2 `io.stat`, v1 `blkio.throttle.io_serviced_recursive`
//! and `blkio.throttle.io_service_bytes_recursive` (the CFQ-era files lxcfs still reads are
//! gone since Linux 5.0).

use super::read_file;
use super::{CgroupDir, Version};
use crate::error::Result;

/// Cumulative I/O of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)] // the io.stat keys of the same names
pub struct DevIo {
    pub rbytes: u64,
    pub wbytes: u64,
    pub rios: u64,
    pub wios: u64,
    pub dbytes: u64,
    pub dios: u64,
}

/// Per device (major, minor), in the order the kernel lists them.
pub type IoStats = Vec<((u32, u32), DevIo)>;

fn dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Parses v2 `io.stat`: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..`; a line
/// may carry only the device when all counters are zero, and extra keys (cost.*, ...) are
/// ignored.
pub fn parse_io_stat(text: &str) -> IoStats {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let Some(d) = it.next().and_then(dev) else { continue };
        let mut io = DevIo::default();
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else { continue };
            let Ok(v) = v.parse::<u64>() else { continue };
            match k {
                "rbytes" => io.rbytes = v,
                "wbytes" => io.wbytes = v,
                "rios" => io.rios = v,
                "wios" => io.wios = v,
                "dbytes" => io.dbytes = v,
                "dios" => io.dios = v,
                _ => {}
            }
        }
        out.push((d, io));
    }
    out
}

/// Folds one v1 blkio file (`MAJ:MIN Read N` ... lines) into `out`; `bytes` selects the
/// byte or the operation counters.
pub fn parse_blkio(text: &str, bytes: bool, out: &mut IoStats) {
    for line in text.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let [d, op, v] = f[..] else { continue };
        let (Some(d), Ok(v)) = (dev(d), v.parse::<u64>()) else { continue };
        let i = match out.iter().position(|(x, _)| *x == d) {
            Some(i) => i,
            None => {
                out.push((d, DevIo::default()));
                out.len() - 1
            }
        };
        let io = &mut out[i].1;
        match (op, bytes) {
            ("Read", true) => io.rbytes = v,
            ("Write", true) => io.wbytes = v,
            ("Discard", true) => io.dbytes = v,
            ("Read", false) => io.rios = v,
            ("Write", false) => io.wios = v,
            ("Discard", false) => io.dios = v,
            _ => {}
        }
    }
}

/// Reads the I/O counters of `dir` (v2 `io.stat`, or the v1 blkio throttle files).
pub fn read(dir: &CgroupDir) -> Result<IoStats> {
    match dir.version {
        Version::V2 => Ok(parse_io_stat(&read_file(&dir.file("io.stat"))?)),
        Version::V1 => {
            let mut out = Vec::new();
            parse_blkio(&read_file(&dir.file("blkio.throttle.io_serviced_recursive"))?, false, &mut out);
            parse_blkio(&read_file(&dir.file("blkio.throttle.io_service_bytes_recursive"))?, true, &mut out);
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_stat_with_empty_and_extra_fields() {
        let t = "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0 cost.usage=5\n8:0 \ngarbage\n";
        let s = parse_io_stat(t);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], ((254, 0), DevIo { rbytes: 4096, wbytes: 8192, rios: 1, wios: 2, dbytes: 0, dios: 0 }));
        assert_eq!(s[1], ((8, 0), DevIo::default()));
    }

    #[test]
    fn blkio_v1() {
        let mut s = Vec::new();
        parse_blkio("254:0 Read 3\n254:0 Write 4\n254:0 Sync 7\n254:0 Total 7\nTotal 7\n", false, &mut s);
        parse_blkio("254:0 Read 1024\n254:0 Write 2048\n254:0 Discard 0\n", true, &mut s);
        assert_eq!(s, vec![((254, 0), DevIo { rbytes: 1024, wbytes: 2048, rios: 3, wios: 4, dbytes: 0, dios: 0 })]);
    }
}
