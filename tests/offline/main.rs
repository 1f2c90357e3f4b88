//! Offline tests: nothing but the code and the files committed beside it — renderers and
//! parsers on fixture trees captured from real kernels, the FUSE adapter answering requests
//! on such a tree, and fuzzing of every parser. No root, FUSE or cgroups needed.

mod adapter;
mod fixtures;
mod fuzz;
