use std::process::ExitCode;

fn main() -> ExitCode {
    match hangar_cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` joins anyhow's context chain on one line: "outer: cause: root cause".
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
