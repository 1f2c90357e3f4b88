//! Live: /proc/stat, /proc/uptime and /proc/loadavg of real containers (cgroups with limits and
//! busy or idle processes), read through the mount; procps `top` and `uptime` reading them
//! through bind mounts.

use crate::common;

use common::*;
use std::time::Duration;

/// The 10 fields of a `cpu` line, in ticks.
fn cpu_line(stat: &str, name: &str) -> Vec<u64> {
    let l = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name}:\n{stat}"));
    let v: Vec<u64> = l.split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
    assert_eq!(v.len(), 10, "{l}");
    v
}

fn cpus_in_stat(stat: &str) -> usize {
    stat.lines().filter(|l| l.strip_prefix("cpu").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))).count()
}

const SPIN: &str = "sh -c 'while :; do :; done'";

fn throttled_spinner_shows_busy_and_steal_idle_container_shows_idle() {
    live_ready("throttled_spinner_shows_busy_and_steal_idle_container_shows_idle");
    let d = Daemon::start("steal");
    let stat = d.path("proc/stat");
    let busy = TestCgroup::new("busy", &Limits { cpu: Some((20_000, 100_000)), ..Default::default() });
    let idle = TestCgroup::new("idle", &Limits { cpu: Some((100_000, 100_000)), ..Default::default() });
    let mut spinner = busy.command(SPIN).spawn().unwrap();
    let mut sleeper = idle.command("sleep 30").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let read = |cg: &TestCgroup| cg.run(&format!("cat {} {}", stat.display(), d.path("proc/cpuinfo").display()));
    // The busy container's two reads happen somewhere inside these windows (a read spawns a
    // shell: slow on an emulated CPU), so its vCPU's advance is bounded by them.
    let t0 = std::time::Instant::now();
    let b0 = read(&busy);
    let t1 = std::time::Instant::now();
    let i0 = read(&idle);
    std::thread::sleep(Duration::from_secs(3));
    let t2 = std::time::Instant::now();
    let b1 = read(&busy);
    let t3 = std::time::Instant::now();
    let i1 = read(&idle);
    let (least, most) = ((t2 - t1).as_secs_f64(), (t3 - t0).as_secs_f64());
    let _ = spinner.kill();
    let _ = sleeper.kill();
    let _ = spinner.wait();
    let _ = sleeper.wait();

    for (a, b) in [(&b0, &b1), (&i0, &i1)] {
        // One visible CPU (quota <= 1), the same count as cpuinfo's.
        assert_eq!(cpus_in_stat(b), 1, "{b}");
        assert_eq!(cpus_in_stat(b), b.matches("processor\t:").count());
        // Never backwards, field by field, aggregate and per CPU.
        for name in ["cpu", "cpu0"] {
            let (x, y) = (cpu_line(a, name), cpu_line(b, name));
            assert!(x.iter().zip(&y).all(|(p, q)| q >= p), "{name} went backwards: {x:?} -> {y:?}");
        }
    }
    let delta = |a: &str, b: &str| -> Vec<i64> {
        cpu_line(b, "cpu").iter().zip(cpu_line(a, "cpu")).map(|(q, p)| *q as i64 - p as i64).collect()
    };
    let db = delta(&b0, &b1);
    let total: i64 = db[..8].iter().sum();
    let (busy_share, steal_share) = ((db[0] + db[2]) as f64 / total as f64, db[7] as f64 / total as f64);
    eprintln!("throttled spinner: {db:?}: busy {busy_share:.2}, steal {steal_share:.2}");
    // USER_HZ per second on the one vCPU, over the time between the two samples.
    let (lo, hi) = ((least * 95.0) as i64 - 5, (most * 105.0) as i64 + 5);
    assert!((lo..=hi).contains(&total), "vCPU advanced {total} ticks in {least:.2} - {most:.2} s");
    // At most its 20 % quota; less when the host's other work keeps it off the CPU (which
    // is steal too).
    assert!((0.03..=0.30).contains(&busy_share), "busy {busy_share}");
    assert!(steal_share > 0.5, "steal {steal_share}");
    let di = delta(&i0, &i1);
    let total: i64 = di[..8].iter().sum();
    assert!(di[3] as f64 / total as f64 > 0.9, "idle container: {di:?}");
}

/// The incident behind steal: no quota, an oversubscribed host. Two containers each spin as
/// many threads as the host has CPUs, so every thread waits about half the time for a CPU. The
/// container's CPUs are never idle: half of their time is its work, the rest steal (PSI `some`
/// alone would count one waiter's wall time and leave a quarter of it idle).
fn threads_waiting_behind_a_neighbour_are_steal_not_idle() {
    live_ready("threads_waiting_behind_a_neighbour_are_steal_not_idle");
    let d = Daemon::start("contention");
    let stat = d.path("proc/stat");
    let n = host_cpus();
    let mine = TestCgroup::new("contended", &Limits::default());
    let other = TestCgroup::new("neighbour", &Limits::default());
    let mut spinners: Vec<_> =
        (0..n).flat_map(|_| [mine.command(SPIN).spawn().unwrap(), other.command(SPIN).spawn().unwrap()]).collect();
    let read = || mine.run(&format!("cat {}", stat.display()));
    // The first read registers the container with the run-delay sampler (1 s ticks).
    read();
    std::thread::sleep(Duration::from_millis(2500));
    let s0 = read();
    std::thread::sleep(Duration::from_secs(4));
    let s1 = read();
    for s in spinners.iter_mut() {
        let _ = s.kill();
        let _ = s.wait();
    }
    assert_eq!(cpus_in_stat(&s1), n, "no quota: every host CPU\n{s1}");
    let (a, b) = (cpu_line(&s0, "cpu"), cpu_line(&s1, "cpu"));
    assert!(a.iter().zip(&b).all(|(p, q)| q >= p), "went backwards: {a:?} -> {b:?}");
    let db: Vec<f64> = b.iter().zip(&a).map(|(q, p)| (q - p) as f64).collect();
    let total: f64 = db[..8].iter().sum();
    let (busy, idle, steal) = ((db[0] + db[2]) / total, db[3] / total, db[7] / total);
    eprintln!("contended: {db:?}: busy {busy:.2}, idle {idle:.2}, steal {steal:.2}");
    // Each thread got about half a CPU: busy ~0.5 (less when other work shares the host),
    // the rest waiting.
    assert!(idle < 0.12, "the spinners' CPUs shown {:.0} % idle: {db:?}", idle * 100.0);
    assert!(steal > 0.3, "steal {:.0} %: {db:?}", steal * 100.0);
    assert!((0.1..0.75).contains(&busy), "busy {:.0} %: {db:?}", busy * 100.0);
}

fn fresh_container_uptime_is_its_age_and_counters_survive_a_worker_kill() {
    live_ready("fresh_container_uptime_is_its_age_and_counters_survive_a_worker_kill");
    let d = Daemon::start("uptime");
    let cg = TestCgroup::new("uptime", &Limits { cpu: Some((150_000, 100_000)), ..Default::default() });
    // A container with its own pid namespace: its init is the first process.
    let mut init = cg.command("unshare -p -f --mount-proc sleep 30").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let host_uptime: f64 =
        std::fs::read_to_string("/proc/uptime").unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let up = cg.run(&format!("cat {}", d.path("proc/uptime").display()));
    let f: Vec<f64> = up.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(f[0] >= 1.0 && f[0] < 10.0 && f[0] < host_uptime, "container uptime {up}");
    // Idle of the uptime file is the stat file's aggregate idle, <= N x uptime.
    let n = host_cpus().min(2) as f64;
    assert!(f[1] <= n * f[0] + 0.02, "{up}");

    let stat0 = cg.run(&format!("cat {}", d.path("proc/stat").display()));
    // SAFETY: the worker is a child of the daemon this test started.
    unsafe { libc::kill(d.worker_pid(), libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    let stat1 = cg.run(&format!("cat {}", d.path("proc/stat").display()));
    let (a, b) = (cpu_line(&stat0, "cpu"), cpu_line(&stat1, "cpu"));
    assert!(a.iter().zip(&b).all(|(p, q)| q >= p), "counters went backwards across a worker restart: {a:?} -> {b:?}");
    let up2 = cg.run(&format!("cat {}", d.path("proc/uptime").display()));
    let g: Vec<f64> = up2.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(g[0] >= f[0] && g[1] >= f[1], "{up} -> {up2}");
    let _ = init.kill();
    let _ = init.wait();
}

fn spinning_threads_drive_their_load_not_the_neighbours() {
    live_ready("spinning_threads_drive_their_load_not_the_neighbours");
    let d = Daemon::start("load");
    let loadavg = d.path("proc/loadavg");
    let hot = TestCgroup::new("hot", &Limits::default());
    let calm = TestCgroup::new("calm", &Limits::default());
    let mut spinners: Vec<_> = (0..2).map(|_| hot.command(SPIN).spawn().unwrap()).collect();
    let mut sleeper = calm.command("sleep 60").spawn().unwrap();
    // Register both with the sampler, then let three 5-second periods pass.
    hot.run(&format!("cat {}", loadavg.display()));
    calm.run(&format!("cat {}", loadavg.display()));
    std::thread::sleep(Duration::from_secs(16));
    let h = hot.run(&format!("cat {}", loadavg.display()));
    let c = calm.run(&format!("cat {}", loadavg.display()));
    for s in spinners.iter_mut() {
        let _ = s.kill();
        let _ = s.wait();
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    eprintln!("loadavg hot: {} calm: {}", h.trim(), c.trim());
    let one = |s: &str| s.split_whitespace().next().unwrap().parse::<f64>().unwrap();
    // Two runnable threads for 15 s: 2 * (1 - e^(-15/60)) = 0.44.
    assert!(one(&h) >= 0.25, "hot container's load {h}");
    assert!(one(&c) <= 0.10, "calm container's load {c}");
    // running/total: the two spinners (and the reader) among the container's threads.
    let rt = h.split_whitespace().nth(3).unwrap();
    let (r, t) = rt.split_once('/').unwrap();
    assert!(r.parse::<u64>().unwrap() <= t.parse::<u64>().unwrap(), "{h}");
}

/// procps reading the views through bind mounts in the container's mount namespace.
fn top_and_uptime_see_the_container() {
    live_ready("top_and_uptime_see_the_container");
    programs_ready("top_and_uptime_see_the_container", &["top", "uptime"]);
    let d = Daemon::start("top");
    let cg =
        TestCgroup::new("top", &Limits { memory: Some(256 << 20), cpu: Some((20_000, 100_000)), ..Default::default() });
    let binds =
        ["proc/meminfo", "proc/cpuinfo", "proc/stat", "proc/uptime", "proc/loadavg", "sys/devices/system/cpu/online"]
            .iter()
            .map(|f| format!("mount --bind {} /{f}", d.path(f).display()))
            .collect::<Vec<_>>()
            .join(" && ");
    let out = cg.run(&format!(
        "unshare -m sh -c '{binds} && (while :; do :; done & sleep 1; top -bn2 -d1 | grep -E \"^(%Cpu|MiB Mem)\"; uptime; kill $!)'"
    ));
    eprintln!("{out}");
    // The second %Cpu line reflects the last second: the spinner at ~20 %, most of the rest steal.
    let cpu = out.lines().rfind(|l| l.starts_with("%Cpu")).expect("top printed a %Cpu line");
    let field = |name: &str| -> f64 {
        let i = cpu.find(&format!(" {name}")).unwrap_or_else(|| panic!("no {name} in {cpu}"));
        cpu[..i].rsplit([',', ':']).next().unwrap().trim().parse().unwrap()
    };
    assert!(field("st") > 40.0, "{cpu}");
    assert!(field("us") + field("sy") < 40.0, "{cpu}");
    let mem = out.lines().find(|l| l.starts_with("MiB Mem")).unwrap();
    assert!(mem.contains(" 256.0 total"), "{mem}");
    let up = out.lines().find(|l| l.contains("load average")).unwrap();
    assert!(up.contains("up 0 min") || up.contains(" up  0 min") || up.contains("up 0:0"), "{up}");
}

crate::cgprocfs_tests!(
    throttled_spinner_shows_busy_and_steal_idle_container_shows_idle,
    threads_waiting_behind_a_neighbour_are_steal_not_idle,
    fresh_container_uptime_is_its_age_and_counters_survive_a_worker_kill,
    spinning_threads_drive_their_load_not_the_neighbours,
    top_and_uptime_see_the_container,
);
