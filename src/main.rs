use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Machine-internal entry points, not user commands: the sandbox helper the daemon spawns
    // for each machine, and Pilot, PID 1 inside it. Both must stay single-threaded.
    let args: Vec<String> = std::env::args().collect();
    if let Some(code) = hangar_pilot::run_from_args(&args) {
        return code;
    }
    match (args.get(1).map(String::as_str), args.get(2), args.get(3)) {
        (Some("sandbox-spawn"), Some(plan), None) => {
            return report(
                hangar_sandbox::plan::spawn_main(Path::new(plan)).map_err(anyhow::Error::from),
            )
        }
        (Some("reap-cgroups"), _, _) => {
            let dirs: Vec<std::path::PathBuf> = args[2..].iter().map(Into::into).collect();
            hangar_sandbox::cgroup::yield_to_machines();
            hangar_sandbox::cgroup::reap_dead(&dirs);
            return ExitCode::SUCCESS;
        }
        (Some("daemon"), _, _) => {
            // Forked now, while this process has one thread: the spawner forks each
            // machine's sandbox helper, which would otherwise be executed afresh per start.
            if let Err(e) = hangar_sandbox::spawner::start() {
                eprintln!("hangar: no pre-forked spawner ({e}); sandbox helpers will be executed");
            }
        }
        _ => {
            // A user command whose reader goes away (`hangar machine list | head`) ends the way
            // every Unix tool does, by SIGPIPE, instead of panicking in print!. Rust ignores
            // SIGPIPE by default; the daemon keeps it that way (a client hanging up is no reason
            // to die).
            // SAFETY: restoring the default disposition before any thread starts.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        }
    }
    report(hangar_cli::run())
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` joins anyhow's context chain on one line: "outer: cause: root cause".
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
