//! Pilot: PID 1 of every machine. It runs the machine's containers, each in its own mount and
//! pid namespace on its own root filesystem, captures their output, reaps zombies, turns
//! SIGTERM into an orderly stop and reports how each container ended.

pub mod logs;
pub mod spec;
mod supervisor;

pub use supervisor::main;
