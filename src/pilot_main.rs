//! `hangar-pilot pilot --machine-dir DIR [--spec-stdin]`: Pilot, PID 1 of a machine, as its own
//! small executable (the daemon's spawn helper executes it for every start). The arguments are
//! those of `hangar pilot`, so a machine looks the same in `ps` whichever binary runs it.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    hangar_pilot::run_from_args(&args).unwrap_or_else(|| {
        eprintln!("usage: hangar-pilot pilot --machine-dir DIR [--spec-stdin] (the hangar daemon runs it)");
        ExitCode::from(2)
    })
}
