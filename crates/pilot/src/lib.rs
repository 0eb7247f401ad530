//! Pilot: PID 1 of every machine. It runs the machine's containers, each in its own mount and
//! pid namespace on its own root filesystem, in dependency order; runs their health checks and
//! restart policies; captures their output; reaps zombies; runs `exec` and `ps` inside them;
//! streams their events; turns SIGTERM into an orderly stop and reports how each container ended.

mod attach;
mod checks;
mod control;
mod exec;
pub mod graph;
pub mod health;
pub mod http;
mod launch;
pub mod logs;
pub mod protocol;
mod ps;

pub mod spec;
mod state;
mod supervisor;
mod tls;

pub use supervisor::main;
