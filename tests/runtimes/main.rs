//! Runtime tests: real container engines running containers with cgprocfs — runc with the OCI
//! hook, podman with the packaged hook and the DaemonSet's image, sysinfo(2) answered for runc
//! containers (a JVM among them), and the runc wrapper under a real dockerd and containerd.
//! They need what the live tests need and the engines `.ci/run` installs.

#[path = "../common/mod.rs"]
mod common;

mod engines;
mod image;
mod oci;
mod seccomp;

fn main() {
    common::harness::main(&[
        ("oci", oci::TESTS),
        ("seccomp", seccomp::TESTS),
        ("image", image::TESTS),
        ("engines", engines::TESTS),
    ])
}
