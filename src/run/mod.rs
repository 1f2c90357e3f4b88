//! `cgprocfs run`: run a command in a transient cgroup with limits, in its own mount namespace
//! with the views bound over `/proc` and `/sys`, and remove what was created afterwards.
//!
//! The library's side of it: [`transient`] (the cgroup) and [`enter`] (what the child does
//! before exec); the process lifecycle around them is the binary's (`src/cli/run.rs`).

pub mod enter;
pub mod transient;

pub use enter::{bind_pairs, enter, NotifyFilter, Source};
pub use transient::{parse_size, RunLimits, Transient};
