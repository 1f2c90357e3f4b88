//! Live tests: a real `cgprocfs serve` on this machine's kernel, real cgroups with limits and
//! readers inside them reading through the FUSE mount; attacks on it by hostile containers and
//! local users, each with a bystander's latency measured. They need root, `/dev/fuse` and
//! cgroups: under `CI=true` a missing prerequisite fails, elsewhere the test shows as ignored.
//! The VM tier runs most of these modules again on pure cgroup v2 and pure v1 kernels.

#[path = "../common/mod.rs"]
mod common;

mod abuse;
mod cached;
mod cpu_views;
mod identity;
mod mount;
mod oom;
mod programs;
mod psi;
mod psi_abuse;
mod readers;
mod run;
mod seccomp_abuse;
mod security_files;
mod status;

fn main() {
    common::harness::main(&[
        ("mount", mount::TESTS),
        ("cpu_views", cpu_views::TESTS),
        ("cached", cached::TESTS),
        ("readers", readers::TESTS),
        ("programs", programs::TESTS),
        ("run", run::TESTS),
        ("oom", oom::TESTS),
        ("status", status::TESTS),
        ("psi", psi::TESTS),
        ("identity", identity::TESTS),
        ("security_files", security_files::TESTS),
        ("abuse", abuse::TESTS),
        ("psi_abuse", psi_abuse::TESTS),
        ("seccomp_abuse", seccomp_abuse::TESTS),
    ])
}
