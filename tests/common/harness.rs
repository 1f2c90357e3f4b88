//! The runner of the group test binaries (`harness = false` in Cargo.toml): libtest's command
//! line and output, plus what libtest cannot do, a test that finds a prerequisite missing at
//! run time ends as *ignored*, with the reason, in the summary (`cargo test` of a machine
//! without root, FUSE, cgroups or a program says `N ignored`, not `N passed`). Under
//! `CI=true` a missing prerequisite fails the test instead ([`skip`]).
//!
//! Each module of a group ends with `crate::cgprocfs_tests!(test_a, test_b, ...)`, its list of
//! tests; the group's `main.rs` hands every module's list to [`main`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The panic payload of a test that could not run here.
pub struct Skip(pub String);

/// Ends the running test: as ignored with `why`, or under `CI=true` (where `.ci/run` installs
/// everything) as failed.
pub fn skip(why: impl Into<String>) -> ! {
    let why = why.into();
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why} (CI=true: failing instead of skipping)");
    }
    std::panic::panic_any(Skip(why))
}

/// Ends the running test as ignored with `why`, also under `CI=true`: for a test that cannot
/// run on any such host by design (the VM tier runs it).
pub fn ignore(why: impl Into<String>) -> ! {
    std::panic::panic_any(Skip(why.into()))
}

/// One test: its name and function.
pub struct Test {
    /// The function's name.
    pub name: &'static str,
    /// The test.
    pub run: fn(),
}

/// What became of one test.
enum Outcome {
    Passed,
    Failed,
    Ignored(String),
}

/// The command line libtest accepts, as far as these binaries need it.
struct Args {
    filters: Vec<String>,
    exact: bool,
    threads: usize,
    list: bool,
}

fn args() -> Args {
    let mut a = Args {
        filters: Vec::new(),
        exact: false,
        threads: std::env::var("RUST_TEST_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        list: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--exact" => a.exact = true,
            "--list" => a.list = true,
            "--test-threads" => a.threads = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.threads),
            // Taking values that change nothing here.
            "--color" | "--format" | "-Z" | "--logfile" | "--skip" => {
                it.next();
            }
            s if s.starts_with("--test-threads=") => a.threads = s[15..].parse().unwrap_or(a.threads),
            // --include-ignored, --ignored, --nocapture, --show-output, -q, --quiet, --bench:
            // nothing is ignored statically and output is never captured.
            s if s.starts_with('-') => {}
            s => a.filters.push(s.to_string()),
        }
    }
    a.threads = a.threads.max(1);
    a
}

/// One module of a group binary: its name and its tests.
pub type Module = (&'static str, &'static [Test]);

/// Runs the modules' tests libtest-style and exits: 0 if none failed, 101 otherwise. Tests are
/// named `module::function`; a module's tests run in parallel (`--test-threads`), modules one
/// after another, so tests of two modules (two daemons' lifecycles, two engines) never overlap.
pub fn main(modules: &[Module]) -> ! {
    let args = args();
    let total: usize = modules.iter().map(|(_, tests)| tests.len()).sum();
    let chosen: Vec<(&str, String, fn())> = modules
        .iter()
        .flat_map(|(m, tests)| tests.iter().map(move |t| (*m, format!("{m}::{}", t.name), t.run)))
        .filter(|(_, name, _)| {
            args.filters.is_empty()
                || args.filters.iter().any(|f| if args.exact { name == f } else { name.contains(f.as_str()) })
        })
        .collect();
    if args.list {
        for (_, name, _) in &chosen {
            println!("{name}: test");
        }
        std::process::exit(0);
    }
    // A skipped test's panic is no error: say nothing for it.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<Skip>().is_none() {
            report(info);
        }
    }));
    println!("\nrunning {} tests", chosen.len());
    let start = Instant::now();
    let results: Mutex<Vec<(&str, Outcome)>> = Mutex::new(Vec::new());
    for (m, _) in modules {
        let these: Vec<&(&str, String, fn())> = chosen.iter().filter(|(cm, _, _)| cm == m).collect();
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..args.threads.min(these.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((_, name, run)) = these.get(i) else { return };
                    let outcome = match catch_unwind(AssertUnwindSafe(*run)) {
                        Ok(()) => Outcome::Passed,
                        Err(p) => match p.downcast::<Skip>() {
                            Ok(skip) => Outcome::Ignored(skip.0),
                            Err(_) => Outcome::Failed,
                        },
                    };
                    match &outcome {
                        Outcome::Passed => println!("test {name} ... ok"),
                        Outcome::Failed => println!("test {name} ... FAILED"),
                        Outcome::Ignored(why) => println!("test {name} ... ignored, {why}"),
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner()).push((name.as_str(), outcome));
                });
            }
        });
    }
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|(_, o)| f(o)).count();
    let (passed, failed, ignored) = (
        count(|o| matches!(o, Outcome::Passed)),
        count(|o| matches!(o, Outcome::Failed)),
        count(|o| matches!(o, Outcome::Ignored(_))),
    );
    if failed > 0 {
        println!("\nfailures:");
        for (name, _) in results.iter().filter(|(_, o)| matches!(o, Outcome::Failed)) {
            println!("    {name}");
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; {ignored} ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed == 0 { "ok" } else { "FAILED" },
        total - chosen.len(),
        start.elapsed().as_secs_f64()
    );
    std::process::exit(if failed == 0 { 0 } else { 101 })
}

/// A module's list of tests, `TESTS`, for its group's `main` ([`main`]).
#[macro_export]
macro_rules! cgprocfs_tests {
    ($($f:ident),* $(,)?) => {
        /// This module's tests, in the order they are listed.
        pub const TESTS: &[$crate::common::harness::Test] = &[$($crate::common::harness::Test { name: stringify!($f), run: $f }),*];
    };
}
