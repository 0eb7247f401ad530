//! Pilot: PID 1 of every machine. It runs the machine's containers, each in its own mount and
//! pid namespace on its own root filesystem, in dependency order; runs their health checks and
//! restart policies; captures their output; reaps zombies; runs `exec` and `ps` inside them;
//! streams their events; turns SIGTERM into an orderly stop and reports how each container ended.

mod attach;
mod checks;
mod clone_stack;
mod control;
mod exec;
pub mod graph;
pub mod health;
pub mod http;
mod launch;
pub mod logs;
pub mod pooled;
pub mod protocol;
mod ps;

pub mod spec;
mod state;
mod supervisor;
mod tls;

pub use supervisor::main;

/// The command line of Pilot, `pilot --machine-dir DIR [--spec-stdin]` (or `pilot --pooled`,
/// [`pooled`]) after the executable
/// (in `hangar` and in `hangar-pilot` alike): runs Pilot and returns its exit code, or `None`
/// when `args` are not Pilot's.
pub fn run_from_args(args: &[String]) -> Option<std::process::ExitCode> {
    if let [_, verb, flag, ..] = args {
        if verb == "pilot" && flag == pooled::POOLED_FLAG {
            return Some(run_pooled());
        }
    }
    let [_, verb, flag, dir, rest @ ..] = args else {
        return None;
    };
    if verb != "pilot" || flag != "--machine-dir" {
        return None;
    }
    let spec_from_stdin = rest.first().map(String::as_str) == Some("--spec-stdin");
    Some(exit_code(main(std::path::Path::new(dir), spec_from_stdin)))
}

/// Pilot in a pooled sandbox: waits for its machine, then runs it ([`pooled`]).
fn run_pooled() -> std::process::ExitCode {
    // What does not depend on the machine is made while the sandbox waits: the runtime and the
    // seccomp programs every container loads.
    let ready = supervisor::Prepared::new();
    let _ = hangar_sandbox::seccomp::default_filters();
    exit_code(ready.and_then(|ready| {
        pooled::wait_for_claim().and_then(|claimed| match claimed {
            Some(dir) => supervisor::main_prepared(ready, &dir, true),
            None => Ok(0),
        })
    }))
}

/// Pilot's exit code for how its run ended.
fn exit_code(outcome: anyhow::Result<i32>) -> std::process::ExitCode {
    match outcome {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            // `{:#}` joins anyhow's context chain on one line.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
