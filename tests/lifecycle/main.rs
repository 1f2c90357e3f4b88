//! Lifecycle tests: what containers see while the daemon is killed, upgraded, taken over by a
//! second `serve`, detached, or dies and is repaired; and the packages that install it. Readers
//! keep reading throughout and no read may fail.

#[path = "../common/mod.rs"]
mod common;

mod crash;
mod detached;
mod handover;
mod packages;
mod repair;

fn main() {
    common::harness::main(&[
        ("crash", crash::TESTS),
        ("handover", handover::TESTS),
        ("repair", repair::TESTS),
        ("detached", detached::TESTS),
        ("packages", packages::TESTS),
    ])
}
