//! The runner of the live test binaries (`harness = false` in Cargo.toml): libtest's command
//! line and output, plus what libtest cannot do, a test that finds a prerequisite missing at
//! run time ends as *ignored*, with the reason, in the summary (`cargo test` of a machine
//! without root, FUSE, cgroups or a program says `N ignored`, not `N passed`). Under
//! `CI=true` a missing prerequisite fails the test instead ([`skip`]).
//!
//! Each binary ends with `cgprocfs_tests!(test_a, test_b, ...)`, which is its `main`.

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

/// Runs the tests libtest-style and exits: 0 if none failed, 101 otherwise.
pub fn main(tests: &[Test]) -> ! {
    let args = args();
    let chosen: Vec<&Test> = tests
        .iter()
        .filter(|t| {
            args.filters.is_empty()
                || args.filters.iter().any(|f| if args.exact { t.name == f } else { t.name.contains(f.as_str()) })
        })
        .collect();
    if args.list {
        for t in &chosen {
            println!("{}: test", t.name);
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
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(&'static str, Outcome)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..args.threads.min(chosen.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(t) = chosen.get(i) else { return };
                let outcome = match catch_unwind(AssertUnwindSafe(t.run)) {
                    Ok(()) => Outcome::Passed,
                    Err(p) => match p.downcast::<Skip>() {
                        Ok(skip) => Outcome::Ignored(skip.0),
                        Err(_) => Outcome::Failed,
                    },
                };
                match &outcome {
                    Outcome::Passed => println!("test {} ... ok", t.name),
                    Outcome::Failed => println!("test {} ... FAILED", t.name),
                    Outcome::Ignored(why) => println!("test {} ... ignored, {why}", t.name),
                }
                results.lock().unwrap_or_else(|e| e.into_inner()).push((t.name, outcome));
            });
        }
    });
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
        tests.len() - chosen.len(),
        start.elapsed().as_secs_f64()
    );
    std::process::exit(if failed == 0 { 0 } else { 101 })
}

/// The `main` of a live test binary: runs the named test functions with [`main`].
#[macro_export]
macro_rules! cgprocfs_tests {
    ($($f:ident),* $(,)?) => {
        fn main() {
            common::harness::main(&[$(common::harness::Test { name: stringify!($f), run: $f }),*])
        }
    };
}
