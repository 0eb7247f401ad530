//! The `hangar` command line: a flyctl-like client of the Hangar daemon, and the daemon itself.

pub mod app_name;
pub mod apps;
pub mod auth;
pub mod build;
pub mod daemon;
pub mod deploy;
mod doctor;
pub mod embedded;
pub mod go_flags;
pub mod hosts;
pub mod image;
pub mod logs;
pub mod machine;
pub mod output;
pub mod secrets;
pub mod services;
pub mod volumes;

use anyhow::{anyhow, Context, Result};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

#[derive(Parser, Debug)]
#[command(
    name = "hangar",
    version,
    // pflag (flyctl) lets a repeated single-value flag's last value win; so do we.
    args_override_self = true,
    about = "Fly-style Machines on your own Linux hosts",
    after_help = "Examples:\n  \
        sudo hangar daemon\n  \
        hangar apps create my-app\n  \
        hangar machine list -a my-app\n\n\
        The client finds the daemon through HANGAR_API_URL (unix:///run/hangar/api.sock by default)\n\
        and authenticates with HANGAR_API_TOKEN or the daemon's token file."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the Hangar daemon (the Machines API server) in the foreground
    Daemon(Box<daemon::DaemonArgs>),
    /// Check what this host has and lacks for running machines
    Doctor(doctor::DoctorArgs),
    /// Manage API authentication
    #[command(subcommand, after_help = "Examples:\n  hangar auth token")]
    Auth(auth::AuthCommand),
    /// Manage apps
    #[command(
        subcommand,
        visible_alias = "app",
        after_help = "Examples:\n  \
        hangar apps create my-app\n  \
        hangar apps list"
    )]
    Apps(apps::AppsCommand),
    /// Manage machines
    #[command(visible_aliases = ["machines", "m"])]
    Machine(machine::MachineArgs),
    /// Manage the image store (pull, import, list, inspect, remove, prune)
    #[command(
        subcommand,
        visible_alias = "images",
        after_help = "Examples:\n  \
        hangar image pull 127.0.0.1:5000/hangar/busybox:latest\n  \
        hangar image ls"
    )]
    Image(image::ImageCommand),
    /// Show an app's services: edge ports, where the proxy listens, the machines behind them
    #[command(
        subcommand,
        visible_alias = "service",
        after_help = "Examples:\n  hangar services list -a my-app"
    )]
    Services(services::ServicesCommand),
    /// Manage an app's secrets (encrypted at rest; machines get them as env or files)
    #[command(
        subcommand,
        visible_alias = "secret",
        after_help = "Examples:\n  \
        hangar secrets set -a my-app DATABASE_URL=postgres://db.internal/app\n  \
        hangar secrets list -a my-app"
    )]
    Secrets(secrets::SecretsCommand),
    /// Manage volumes: persistent storage that outlives machines
    #[command(
        subcommand,
        visible_aliases = ["volume", "vol"],
        after_help = "Examples:\n  \
        hangar volumes create data -a my-app --size 10\n  \
        hangar machine run my-image -a my-app --volume data:/data"
    )]
    Volumes(volumes::VolumesCommand),
    /// Show the hosts sharing the daemon's store (cluster mode; one host otherwise)
    #[command(
        subcommand,
        visible_alias = "host",
        after_help = "Examples:\n  hangar hosts list"
    )]
    Hosts(hosts::HostsCommand),
    /// Deploy an app from its fly.toml: build (or --image), then create or update its machines
    Deploy(Box<deploy::DeployArgs>),
    /// Show an app's machines by process group, with versions and checks
    Status(deploy::status::StatusArgs),
    /// Show the logs of an app's machines (follows new lines unless --no-tail)
    Logs(logs::LogsArgs),
    /// Print a shell completion script
    #[command(after_help = "Examples:\n  \
        hangar completion bash > /etc/bash_completion.d/hangar\n  \
        hangar completion zsh > \"${fpath[1]}/_hangar\"\n  \
        hangar completion fish > ~/.config/fish/completions/hangar.fish")]
    Completion {
        /// Shell to generate the script for
        #[arg(value_enum, value_name = "SHELL")]
        shell: Shell,
    },
}

/// Parses the process arguments and runs the command. Help and version output exit the process
/// directly (status 0); every other failure is returned for `main` to print as one line.
pub fn run() -> Result<()> {
    let args = go_flags::go_bool_flags(&Cli::command(), std::env::args_os().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return Err(clap_error(e)),
    };
    execute(cli)
}

/// Help/version requests exit here; real usage errors become one-line errors.
fn clap_error(e: clap::Error) -> anyhow::Error {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => anyhow!("{} (see --help)", one_line_clap_error(&e)),
    }
}

/// Clap renders `error: <what>` plus indented detail lines, a blank line, then usage. Keep the
/// first paragraph, joined into one line, so `Error: …` stays on one line and still names the
/// offending flag or missing argument.
pub fn one_line_clap_error(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first_paragraph: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = first_paragraph.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

pub fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Daemon(args) => daemon::run(*args),
        Command::Doctor(args) => doctor::run(args),
        Command::Auth(cmd) => auth::run(cmd),
        Command::Completion { shell } => {
            // Generated into memory first: clap_complete panics on a write error, and a reader
            // that stops early (`| head`) is not an error.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "hangar", &mut script);
            use std::io::Write;
            match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(anyhow::Error::new(e).context("writing the completion script"))
                }
                _ => {}
            }
            Ok(())
        }
        Command::Apps(cmd) => with_client(|client| async move { apps::run(&client, cmd).await }),
        Command::Image(cmd) => with_client(|client| async move { image::run(&client, cmd).await }),
        Command::Logs(args) => with_client(|client| async move { logs::run(&client, args).await }),
        Command::Hosts(cmd) => with_client(|client| async move { hosts::run(&client, cmd).await }),
        Command::Services(cmd) => {
            with_client(|client| async move { services::run(&client, cmd).await })
        }
        Command::Deploy(args) => {
            embedded::ensure_daemon()?;
            with_client(|client| async move { deploy::run(&client, *args).await })
        }
        Command::Status(args) => {
            with_client(|client| async move { deploy::status::run(&client, args).await })
        }
        Command::Volumes(cmd) => {
            with_client(|client| async move { volumes::run(&client, cmd).await })
        }
        Command::Secrets(cmd) => {
            with_client(|client| async move { secrets::run(&client, cmd).await })
        }
        Command::Machine(args) => {
            if matches!(
                args.command,
                machine::MachineCommand::Run(_) | machine::MachineCommand::Create(_)
            ) {
                embedded::ensure_daemon()?;
            }
            with_client(|client| async move { machine::run(&client, args).await })
        }
    }
}

/// Runs a client command on a single-threaded runtime: a CLI makes one request at a time.
fn with_client<F, Fut>(f: F) -> Result<()>
where
    F: FnOnce(hangar_client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let client = hangar_client::Client::from_env()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(f(client))
}

#[cfg(test)]
mod tests;
