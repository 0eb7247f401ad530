//! `hangar machine run` and `hangar machine create` (flyctl `fly machine run|create`).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use hangar_api::{CreateAppRequest, CreateMachineRequest, Machine};
use hangar_client::{Client, StatusCode};

use super::config_builder::{build_config, BuildOptions, ConfigFlags};
use super::wait::wait_for;
use super::{no_runtime, Ctx};
use crate::app_name::AppArgs;

/// Flags common to `run` and `create`.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateArgs {
    /// Image to run; `.` (or a directory) builds the Dockerfile there with buildah
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
    /// Command (and arguments) to run instead of the image's CMD; put it after `--` when it
    /// has arguments starting with `-`
    #[arg(value_name = "COMMAND", num_args = 1..)]
    pub command: Vec<String>,
    /// Organization to create the app in, when it has to be created
    #[arg(short = 'o', long, value_name = "SLUG", default_value = "personal")]
    pub org: String,
    /// Machine name (default: generated)
    #[arg(short = 'n', long, value_name = "NAME")]
    pub name: Option<String>,
    /// Region to create the machine in
    #[arg(short = 'r', long, value_name = "REGION")]
    pub region: Option<String>,
    /// Not supported: use `hangar machine update` to change an existing machine
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Destroy the machine when it exits (implies --restart no)
    #[arg(long)]
    pub rm: bool,
    #[command(flatten)]
    pub build: crate::build::BuildFlags,
    /// Build with Depot (not supported yet)
    #[arg(long, hide = true)]
    pub build_depot: bool,
    /// Build with Nixpacks (not supported yet)
    #[arg(long, hide = true)]
    pub build_nixpacks: bool,
    #[command(flatten)]
    pub config: ConfigFlags,
}

#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Return once the machine has started, without watching its health checks (or following
    /// a --rm machine to its end)
    #[arg(long)]
    pub detach: bool,
    /// Open a shell on a throwaway machine (image default: ubuntu)
    #[arg(long)]
    pub shell: bool,
    /// With --shell: the user to log in as
    #[arg(long, value_name = "USER", default_value = "root", requires = "shell")]
    pub user: String,
    /// With --shell: the shell to run
    #[arg(
        long = "command",
        value_name = "COMMAND",
        default_value = super::console::DEFAULT_SHELL,
        requires = "shell"
    )]
    pub shell_command: String,
}

/// How long `run` waits for `started`, as flyctl.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// The image and build checks shared by run and create, before anything is sent.
fn check_unsupported(a: &CreateArgs) -> Result<()> {
    if a.id.is_some() {
        bail!("--id is not supported by run/create: use `hangar machine update` to change an existing machine");
    }
    if a.build_depot || a.build_nixpacks {
        bail!("--build-depot and --build-nixpacks are not supported: Hangar builds Dockerfiles with buildah");
    }
    Ok(())
}

/// The MachineConfig for a run/create command line (pure apart from local files).
pub fn config_for(a: &CreateArgs, shell: bool) -> Result<hangar_api::MachineConfig> {
    check_unsupported(a)?;
    let image = match (&a.image, shell) {
        (Some(i), _) => i.clone(),
        (None, true) => "ubuntu".to_string(),
        (None, false) => bail!("an image is required: hangar machine run <IMAGE> [COMMAND...]"),
    };
    build_config(
        &a.config,
        &BuildOptions {
            base: None,
            updating: false,
            rm: a.rm || shell,
            image: Some(image),
            command: (!a.command.is_empty()).then(|| a.command.clone()),
            shell,
        },
    )
}

/// Builds the image when the command line asks for it (`.`, a directory, `--dockerfile`) and
/// puts the built image's reference in its place.
async fn build_if_asked(client: &Client, app: &str, a: &mut CreateArgs) -> Result<()> {
    if let Some(source) = crate::build::build_source(a.image.as_deref(), &a.build)? {
        a.image = Some(crate::build::build_image(client, app, &source, &a.build).await?);
    }
    Ok(())
}

pub async fn run(client: &Client, app_args: &AppArgs, mut args: RunArgs) -> Result<()> {
    if args.shell {
        super::console::require_terminal()?;
    }
    // Flags are checked before anything is built or created; `--dockerfile` alone builds the
    // working directory (flyctl).
    if args.create.image.is_none() && args.create.build.dockerfile.is_some() {
        args.create.image = Some(".".into());
    }
    config_for(&args.create, args.shell)?;
    let app = resolve_or_create_app(client, app_args, &args.create.org).await?;
    build_if_asked(client, &app, &mut args.create).await?;
    let config = config_for(&args.create, args.shell)?;
    let ctx = Ctx { client, app: &app };
    let skip_launch = config.standbys.as_ref().is_some_and(|s| !s.is_empty());
    let machine = create(&ctx, &args.create, config, skip_launch).await?;
    println!("Success! A machine has been successfully launched in app {app}");
    print_summary(&machine);
    if skip_launch {
        println!("\nMachine created as a standby; it starts when a watched machine's host fails.");
        return Ok(());
    }
    if args.shell {
        return shell(&ctx, &machine, &args).await;
    }
    // Like flyctl, --detach still waits for the start; it skips the health checks (and, here,
    // following a --rm machine to its end).
    let state = match wait_started(&ctx, &machine).await {
        Ok(state) => state,
        Err(e) if args.create.rm => {
            // A throw-away machine that could not start is not left behind.
            let _ = client.delete_machine(&app, &machine.id, true, None).await;
            return Err(e.context(format!(
                "machine {} failed to start and was destroyed (--rm)",
                machine.id
            )));
        }
        Err(e) => return Err(e),
    };
    if !args.detach {
        watch_checks(&ctx, &machine.id).await?;
    }
    println!("\nMachine {state}, you can connect via the following private ip");
    println!("  {}", machine.private_ip);
    if args.create.rm && !args.detach {
        let code = follow_until_destroyed(&ctx, &machine).await?;
        if code != 0 {
            // The machine's own exit code, as `docker run --rm` gives it.
            std::process::exit(code.clamp(1, 255));
        }
    }
    Ok(())
}

/// How long `run` watches health checks before reporting them as they are.
const CHECKS_TIMEOUT: Duration = Duration::from_secs(60);

/// Like flyctl: after the start, wait for the machine's checks to pass and show them.
pub(crate) async fn watch_checks(ctx: &Ctx<'_>, id: &str) -> Result<()> {
    let has_checks = |m: &Machine| {
        let config = m.config.as_ref();
        config.is_some_and(|c| c.checks.as_ref().is_some_and(|k| !k.is_empty()))
            || config.is_some_and(|c| {
                c.containers
                    .iter()
                    .flatten()
                    .any(|c| c.healthchecks.as_ref().is_some_and(|h| !h.is_empty()))
            })
    };
    let mut m = ctx.get(id).await?;
    if !has_checks(&m) {
        return Ok(());
    }
    println!("\nChecking health of machine {id}...");
    let deadline = std::time::Instant::now() + CHECKS_TIMEOUT;
    loop {
        let checks = m.checks.clone().unwrap_or_default();
        let all_passing = !checks.is_empty() && checks.iter().all(|c| c.status == "passing");
        if all_passing
            || std::time::Instant::now() > deadline
            || m.state != hangar_api::MachineState::Started
        {
            let mut table = crate::output::Table::new(["NAME", "STATUS", "OUTPUT"]);
            for c in &checks {
                table.row([c.name.clone(), c.status.clone(), c.output.clone()]);
            }
            print!("{}", table.render());
            if all_passing {
                println!("Machine {id} is healthy");
            } else {
                eprintln!("Warning: not every check of machine {id} passes yet");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        m = ctx.get(id).await?;
    }
}

/// `run --rm` in the foreground: shows the machine's output until it exits and is destroyed,
/// then returns its exit code.
async fn follow_until_destroyed(ctx: &Ctx<'_>, m: &Machine) -> Result<i32> {
    let client = ctx.client.clone();
    let path = format!(
        "/hangar/v1/apps/{}/logs?follow=true&tail=1000&instance={}",
        hangar_client::encode(ctx.app),
        hangar_client::encode(&m.id)
    );
    let logs = tokio::spawn(async move {
        let mut pending = Vec::new();
        let _ = client
            .get_streaming(&path, |chunk| {
                pending.extend_from_slice(chunk);
                while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) {
                        let msg = v["message"].as_str().unwrap_or_default();
                        if v["stream"] == "stderr" {
                            eprintln!("{msg}");
                        } else {
                            println!("{msg}");
                        }
                    }
                }
                true
            })
            .await;
    });
    // No deadline: the machine runs as long as its command does.
    let waited = wait_for(
        ctx,
        &m.id,
        &m.instance_id,
        "destroyed",
        Duration::from_secs(u64::MAX / 4),
    )
    .await;
    // Let the last lines arrive before the follower stops.
    tokio::time::sleep(Duration::from_millis(400)).await;
    logs.abort();
    waited?;
    let events = ctx.client.machine_events(ctx.app, &m.id, Some(50)).await?;
    let code = events
        .iter()
        .find(|e| e.kind == "exit")
        .and_then(|e| e.request.as_ref()?["exit_event"]["exit_code"].as_i64())
        .unwrap_or(0);
    Ok(code as i32)
}

/// The shell of `run --shell`: attach once started, then destroy the throwaway machine
/// whatever happened, and exit with the shell's code.
async fn shell(ctx: &Ctx<'_>, machine: &Machine, args: &RunArgs) -> Result<()> {
    let id = machine.id.as_str();
    let attached = async {
        wait_started(ctx, machine).await?;
        super::console::session(
            ctx.client,
            ctx.app,
            id,
            hangar_client::ConsoleOptions {
                command: Some(args.shell_command.clone()),
                user: Some(args.user.clone()),
                ..Default::default()
            },
        )
        .await
    }
    .await;
    if let Err(e) = ctx.client.delete_machine(ctx.app, id, true, None).await {
        eprintln!("Warning: failed to destroy the shell machine {id}: {e}");
    }
    super::console::exit_with(attached?)
}

pub async fn create_cmd(client: &Client, app_args: &AppArgs, mut args: CreateArgs) -> Result<()> {
    if args.image.is_none() && args.build.dockerfile.is_some() {
        args.image = Some(".".into());
    }
    config_for(&args, false)?;
    let app = resolve_or_create_app(client, app_args, &args.org).await?;
    build_if_asked(client, &app, &mut args).await?;
    let config = config_for(&args, false)?;
    let ctx = Ctx { client, app: &app };
    let machine = create(&ctx, &args, config, true).await?;
    println!("Success! A machine has been successfully created in app {app}");
    print_summary(&machine);
    println!("\nMachine created, you can connect via the following private ip");
    println!("  {}", machine.private_ip);
    Ok(())
}

async fn create(
    ctx: &Ctx<'_>,
    a: &CreateArgs,
    mut config: hangar_api::MachineConfig,
    skip_launch: bool,
) -> Result<Machine> {
    crate::volumes::resolve_volume_names(ctx.client, ctx.app, &mut config, None).await?;
    let req = CreateMachineRequest {
        config,
        name: a.name.clone(),
        region: a.region.clone(),
        skip_launch,
        ..Default::default()
    };
    ctx.client.create_machine(ctx.app, &req).await.map_err(|e| {
        no_runtime(e, || {
            format!("could not create a machine in app {}", ctx.app)
        })
    })
}

fn print_summary(m: &Machine) {
    println!(" Machine ID: {}", m.id);
    println!(" Name: {}", m.name);
    println!(" Instance ID: {}", m.instance_id);
    println!(" State: {}", m.state);
    println!(" Private IP: {}", m.private_ip);
}

/// Waits for `started` with a spinner on a terminal.
pub(crate) async fn wait_started(ctx: &Ctx<'_>, m: &Machine) -> Result<hangar_api::MachineState> {
    let spinner = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_message(format!("Waiting for machine {} to start...", m.id));
        pb.enable_steady_tick(Duration::from_millis(100));
        pb
    });
    if spinner.is_none() {
        println!("\nWaiting for machine {} to start...", m.id);
    }
    let result = wait_for(ctx, &m.id, &m.instance_id, "started", START_TIMEOUT).await;
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    result
}

/// `--app`/fly.toml, else (on a terminal) a new app; an app that does not exist is offered for
/// creation on a terminal.
pub async fn resolve_or_create_app(client: &Client, args: &AppArgs, org: &str) -> Result<String> {
    let interactive = std::io::stdin().is_terminal();
    let app = match args.resolve() {
        Ok(app) => app,
        Err(e) if !interactive || args.config.is_some() => return Err(e),
        Err(_) => {
            let name = crate::apps::ask(
                "No app given. Name of the app to create (blank for a generated name): ",
            )?;
            let name = if name.is_empty() {
                generated_app_name()
            } else {
                name
            };
            create_app(client, &name, org).await?;
            return Ok(name);
        }
    };
    match client.get_app(&app).await {
        Ok(_) => Ok(app),
        Err(e) if e.is_status(StatusCode::NOT_FOUND) => {
            if !interactive {
                bail!("app {app} does not exist: create it with `hangar apps create {app}` or pass an existing app with --app");
            }
            if !crate::apps::confirm(&format!(
                "App {app} does not exist. Create it in organization {org}?"
            ))? {
                bail!("app {app} does not exist; pass an existing app with --app");
            }
            create_app(client, &app, org).await?;
            Ok(app)
        }
        Err(e) => Err(e).with_context(|| format!("failed to look up app {app}")),
    }
}

pub(crate) async fn create_app(client: &Client, name: &str, org: &str) -> Result<()> {
    let req = CreateAppRequest {
        name: Some(name.to_string()),
        org_slug: Some(org.to_string()),
        ..Default::default()
    };
    client
        .create_app(&req)
        .await
        .with_context(|| format!("failed to create app {name}"))?;
    println!("New app created: {name}");
    Ok(())
}

fn generated_app_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    format!("app-{:06x}", nanos & 0xff_ffff)
}
