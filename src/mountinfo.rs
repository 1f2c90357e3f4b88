//! `/proc/<pid>/mountinfo` lines, parsed once for everyone who reads them: the cgroup
//! hierarchies, the mount point's state at start, the keeper's check that its mount is still
//! attached, and the repair's search for dead binds.
//!
//! A line is `id parent major:minor root mount_point options [optional fields...] - fstype
//! source super_options` (`proc(5)`); paths escape space, tab, newline and backslash in octal.

/// One mount of a mountinfo text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The superblock's device, `major:minor`.
    pub dev: &'a str,
    /// The path inside the file system that is mounted (unescaped).
    pub root: String,
    /// Where it is mounted, relative to the reading process's root (unescaped).
    pub mount_point: String,
    /// The file system type (`fuse.cgprocfs`, `cgroup2`, ...).
    pub fstype: &'a str,
    /// The mount source (for a FUSE mount, its `fsname`).
    pub source: &'a str,
    /// The per-superblock options.
    pub super_options: &'a str,
}

/// The mounts of a mountinfo text, in order; malformed lines are skipped.
pub fn entries(text: &str) -> impl Iterator<Item = Entry<'_>> {
    text.lines().filter_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut pre = pre.split(' ');
        let mut post = post.split(' ');
        let (dev, root, mount_point) = (pre.nth(2)?, pre.next()?, pre.next()?);
        let (fstype, source, super_options) = (post.next()?, post.next()?, post.next()?);
        Some(Entry { dev, root: unescape(root), mount_point: unescape(mount_point), fstype, source, super_options })
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
pub fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/a\\04"), "/a\\04");
    }

    #[test]
    fn entries_with_optional_fields_and_escapes() {
        let text = "40 22 0:45 /proc/meminfo /var/lib/with\\040space ro,nosuid shared:5 master:1 - fuse.cgprocfs cgprocfs:00ff rw,user_id=0\n\
                    garbage\n\
                    31 23 0:28 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let e: Vec<Entry> = entries(text).collect();
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].dev, e[0].root.as_str(), e[0].mount_point.as_str()),
            ("0:45", "/proc/meminfo", "/var/lib/with space")
        );
        assert_eq!((e[0].fstype, e[0].source, e[0].super_options), ("fuse.cgprocfs", "cgprocfs:00ff", "rw,user_id=0"));
        assert_eq!((e[1].fstype, e[1].mount_point.as_str()), ("cgroup2", "/sys/fs/cgroup"));
    }
}
