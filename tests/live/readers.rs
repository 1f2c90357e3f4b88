//! Live: every served file read by every kind of reader — read(2) (GNU cat, dd, awk, head),
//! sendfile(2) (BusyBox cat and cp, Python's shutil), copy_file_range (GNU cp), tail's seek
//! from the size — from a limited cgroup; and two containers reading the same file with
//! several readers each, none ever getting the other's or a torn content.

use crate::common;

use common::*;

const MIB: u64 = 1024 * 1024;

/// Each program's view of FILE: its output's shape (per line, the number of fields and the
/// first field when it is a label), one line per program.
const PROGRAMS: &str = r##"
f="$1"; d="$2"
shape() { awk '{ w = $1; if (w !~ /[A-Za-z]/) w = "#"; printf "%s:%d|", w, NF } END { print "" }'; }
printf 'cat '; cat "$f" | shape
printf 'busybox-cat '; busybox cat "$f" | shape
printf 'busybox-head '; busybox head -n 100000 "$f" | shape
printf 'busybox-tail '; busybox tail -n 100000 "$f" | shape
printf 'tail '; tail -n 100000 "$f" | shape
printf 'dd '; dd if="$f" bs=4k status=none | shape
printf 'awk '; busybox awk '{ print }' "$f" | shape
cp "$f" "$d/cp" && printf 'cp ' && shape < "$d/cp"
busybox cp "$f" "$d/bbcp" && printf 'busybox-cp ' && shape < "$d/bbcp"
python3 -c 'import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2])' "$f" "$d/py" && printf 'shutil ' && shape < "$d/py"
python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
out = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
try:
    n = os.sendfile(out, fd, 0, 1 << 22)
    print("sendfile-bytes", n)
except OSError as e:
    print("sendfile-errno", e.errno)
' "$f" "$d/sf"
printf 'sendfile '; shape < "$d/sf"
"##;

/// Linux 6.5 and later route splice from FUSE direct-I/O files through the page cache.
fn splice_through_page_cache() -> bool {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = r.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|x| x.parse::<u32>().ok());
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 5)
}

fn every_reader_reads_every_file() {
    let test = "every_reader_reads_every_file";
    live_ready(test);
    programs_ready(test, &["busybox", "python3", "dd", "awk", "tail", "cp"]);
    let d = Daemon::start("readers");
    let cg = TestCgroup::new(
        "readers",
        &Limits { memory: Some(256 * MIB), cpu: Some((100_000, 100_000)), ..Default::default() },
    );
    let scratch = Scratch::new("readers-out");
    let scratch = &scratch.0;
    let script = scratch.join("programs.sh");
    std::fs::write(&script, PROGRAMS).unwrap();
    let mut files: Vec<String> = cgprocfs::catalog::Served::ALL.iter().map(|v| v.path().to_string()).collect();
    files.push("sys/devices/system/cpu/cpu0/topology/core_id".into());
    let mut checked = 0;
    for f in files {
        let path = d.path(&f);
        if std::fs::read(std::path::Path::new("/").join(&f)).is_err() {
            continue; // the host has no such file: no PSI in this kernel, no topology directory
        }
        let out = cg.run(&format!("sh {} {} {}", script.display(), path.display(), scratch.display()));
        let mut lines = out.lines();
        let reference = lines.next().and_then(|l| l.strip_prefix("cat ")).unwrap_or_else(|| panic!("{f}: {out}"));
        // diskstats lists only the devices the container did I/O on: possibly none.
        assert!(reference.len() > 1 || f == "proc/diskstats", "{f}: cat read nothing");
        let mut sendfile = None;
        for l in lines {
            let (prog, shape) = l.split_once(' ').unwrap_or((l, ""));
            match prog {
                "sendfile-bytes" | "sendfile-errno" => sendfile = Some((prog.to_string(), shape.to_string())),
                "sendfile" => match sendfile.as_ref().map(|(p, v)| (p.as_str(), v.as_str())) {
                    Some(("sendfile-bytes", _)) => assert_eq!(shape, reference, "{f}: sendfile copied\n{out}"),
                    // Refused rather than served from a page cache all containers share.
                    Some(("sendfile-errno", e)) => {
                        assert!(splice_through_page_cache(), "{f}: sendfile failed on a kernel that reads: {out}");
                        assert_eq!(e, libc::EINVAL.to_string(), "{f}: {out}");
                    }
                    _ => panic!("{f}: no sendfile result\n{out}"),
                },
                _ => assert_eq!(shape, reference, "{f}: {prog} differs from cat\n{out}"),
            }
        }
        if f == "proc/meminfo" {
            let mem = cg.run(&format!("busybox cat {}", path.display()));
            assert_eq!(field(&mem, "MemTotal"), 256 * 1024, "{mem}");
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} files were checked");
}

/// Reads meminfo for SECONDS with read(2), shutil.copyfile, sendfile (falling back to read as
/// BusyBox does) and BusyBox cat in turn; prints "good bad" where good is a whole content with
/// MemTotal WANT kB.
const LOOP: &str = r#"
import os, shutil, subprocess, sys, time
path, want, secs, tmp = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
def by_read():
    with open(path) as f: return f.read()
def by_shutil():
    shutil.copyfile(path, tmp)
    with open(tmp) as f: return f.read()
def by_sendfile():
    fd = os.open(path, os.O_RDONLY)
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.sendfile(out, fd, 0, 1 << 20)
    except OSError:
        os.lseek(fd, 0, 0); os.write(out, os.read(fd, 1 << 20))
    os.close(fd); os.close(out)
    with open(tmp) as f: return f.read()
def by_busybox():
    return subprocess.run(["busybox", "cat", path], capture_output=True, text=True).stdout
ways = [by_read, by_shutil, by_sendfile, by_busybox]
good = bad = 0
end = time.monotonic() + secs
i = 0
while time.monotonic() < end:
    t = ways[i % len(ways)](); i += 1
    lines = t.splitlines()
    total = next((int(l.split()[1]) for l in lines if l.startswith("MemTotal:")), None)
    whole = len(lines) > 20 and t.endswith("kB\n") and lines[0].startswith("MemTotal:")
    if total == want and whole: good += 1
    else:
        bad += 1
        sys.stderr.write(repr(t[:200]) + "\n")
print(good, bad)
"#;

fn two_containers_reading_at_once_never_get_each_others_content() {
    let test = "two_containers_reading_at_once_never_get_each_others_content";
    live_ready(test);
    programs_ready(test, &["busybox", "python3"]);
    let d = Daemon::start("two-readers");
    let meminfo = d.path("proc/meminfo");
    let scratch = Scratch::new("two-readers");
    let scratch = &scratch.0;
    let cgs: Vec<(TestCgroup, u64)> = [100u64, 200]
        .iter()
        .map(|&m| (TestCgroup::new("two-readers", &Limits { memory: Some(m * MIB), ..Default::default() }), m))
        .collect();
    let mut children = Vec::new();
    for (cg, m) in &cgs {
        for k in 0..3 {
            let tmp = scratch.join(format!("{m}-{k}"));
            let c = cg
                .command(&format!("python3 -c '{LOOP}' {} {} 3 {}", meminfo.display(), m * 1024, tmp.display()))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            children.push((*m, c));
        }
    }
    for (m, c) in children {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<u64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        assert_eq!(v.len(), 2, "{text} {}", String::from_utf8_lossy(&out.stderr));
        assert!(v[0] >= 20, "{m} MiB reader made little progress: {text}");
        assert_eq!(
            v[1],
            0,
            "{m} MiB reader got foreign, torn or empty contents:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

crate::cgprocfs_tests!(every_reader_reads_every_file, two_containers_reading_at_once_never_get_each_others_content,);
