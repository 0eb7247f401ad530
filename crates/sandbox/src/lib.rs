//! The host side of a machine sandbox: cgroups, user and other namespaces, and the
//! in-container setup (mounts, capabilities, seccomp) that Pilot applies to each container.

pub mod cgroup;
pub mod container;
pub mod in_root;
pub mod init;
pub mod net;
pub mod plan;
pub mod seccomp;
pub mod spawn;
pub mod spawner;
pub mod user;
pub mod warm;

pub use cgroup::{Hierarchy, Limits, MachineCgroup};
pub use spawn::{spawn_machine, SandboxSpec};
