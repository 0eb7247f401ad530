//! `hangar machine …` (alias `m`), following flyctl's `fly machine`.

pub mod clone;
pub mod config_builder;
pub mod console;
mod destroy;
mod leases;
mod lifecycle;
mod list;
pub mod process;
pub mod run;
mod status;
pub mod update;
mod wait;

use std::future::Future;
use std::io::IsTerminal;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use hangar_api::{Machine, MachineState};
use hangar_client::{Client, ClientError, ListMachinesOptions, StatusCode};

use crate::app_name::AppArgs;

pub use clone::CloneArgs;
pub use console::ConsoleArgs;
pub use destroy::DestroyArgs;
pub use leases::LeasesCommand;
pub use lifecycle::{IdsArgs, StopArgs};
pub use list::ListArgs;
pub use process::{ExecArgs, KillArgs, RestartArgs, SuspendArgs};
pub use run::{CreateArgs, RunArgs};
pub use status::StatusArgs;
pub use update::UpdateArgs;
pub(crate) use wait::wait_for;
pub use wait::WaitArgs;

/// Lease ttl flyctl uses for its mutations (reference 1.3).
const LEASE_TTL_SECS: u64 = 120;

#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(after_help = "Examples:\n  \
    hangar machine list -a my-app\n  \
    hangar m status 1857156b526dd8 -a my-app")]
pub struct MachineArgs {
    #[command(flatten)]
    pub app: AppArgs,
    #[command(subcommand)]
    pub command: MachineCommand,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum MachineCommand {
    /// Create and start a machine
    #[command(after_help = "Examples:\n  \
        hangar machine run nginx -a my-app -p 80/tcp:http -p 443:80/tcp:http:tls\n  \
        hangar m run debian sleep inf --rm --vm-memory 512\n  \
        hangar m run debian -- sh -c 'echo hello; sleep inf'\n  \
        hangar m run busybox --env MODE=prod --file-literal /etc/motd='hello' --restart on-failure\n  \
        hangar m run nginx --machine-config machine.json --autostop=suspend --autostart\n\n\
        Without a reachable daemon on the default socket (and no HANGAR_API_URL), `hangar daemon`\n\
        is started in the background first.")]
    Run(Box<RunArgs>),
    /// Create a machine without starting it
    #[command(after_help = "Examples:\n  \
        hangar machine create nginx -a my-app --name web-1\n  \
        hangar m create alpine sleep 3600 --schedule daily\n  \
        hangar m create nginx --standby-for 1857156b526dd8")]
    Create(Box<CreateArgs>),
    /// Update a machine's configuration
    #[command(after_help = "Examples:\n  \
        hangar machine update 1857156b526dd8 --env LOG_LEVEL=debug --yes\n  \
        hangar m update 1857156b526dd8 --vm-size shared-cpu-2x --skip-start\n  \
        hangar m update 1857156b526dd8 -C 'nginx -g \"daemon off;\"' -y\n  \
        hangar m update 1857156b526dd8 --port 8080/tcp:-  # remove the service on 8080")]
    Update(Box<UpdateArgs>),
    /// Create a copy of a machine
    #[command(after_help = "Examples:\n  \
        hangar machine clone 1857156b526dd8\n  \
        hangar m clone 1857156b526dd8 --name web-2 --clear-cmd\n  \
        hangar m clone 1857156b526dd8 --standby-for source")]
    Clone(Box<CloneArgs>),
    /// Restart machines
    #[command(after_help = "Examples:\n  \
        hangar machine restart 1857156b526dd8\n  \
        hangar m restart 1857156b526dd8 --signal SIGTERM --time 10 --force")]
    Restart(RestartArgs),
    /// Suspend machines
    #[command(after_help = "Examples:\n  \
        hangar machine suspend 1857156b526dd8\n  \
        hangar m suspend 1857156b526dd8 --wait-timeout 30s")]
    Suspend(SuspendArgs),
    /// Kill a machine (SIGKILL to its main process)
    #[command(after_help = "Examples:\n  \
        hangar machine kill 1857156b526dd8")]
    Kill(KillArgs),
    /// Run a command on a machine
    #[command(after_help = "Examples:\n  \
        hangar machine exec 1857156b526dd8 'ls -la /'\n  \
        hangar m exec 'cat /etc/os-release' --timeout 10\n  \
        hangar m exec 1857156b526dd8 env --container app")]
    Exec(ExecArgs),
    /// Open an interactive shell (or command) on a machine's terminal (flyctl `ssh console`)
    #[command(after_help = "Examples:\n  \
        hangar machine console 1857156b526dd8\n  \
        hangar m console --container sidecar --user nobody\n  \
        hangar m console 1857156b526dd8 -C 'top -d 1'")]
    Console(ConsoleArgs),
    /// List the app's machines
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  \
        hangar machine list -a my-app\n  \
        hangar m ls -q --state started,stopped\n  \
        hangar m ls --json --include-deleted"
    )]
    List(ListArgs),
    /// Show a machine's details and recent events
    #[command(after_help = "Examples:\n  \
        hangar machine status 1857156b526dd8\n  \
        hangar m status aged-thunder-7371 --display-config")]
    Status(StatusArgs),
    /// Show what a started machine uses: CPU share, memory, processes
    #[command(after_help = "Examples:\n  \
        hangar machine stats 1857156b526dd8\n  \
        hangar m stats web --interval 5")]
    Stats(status::StatsArgs),
    /// Destroy machines
    #[command(visible_aliases = ["rm", "remove"], after_help = "Examples:\n  \
        hangar machine destroy 1857156b526dd8\n  \
        hangar m rm --force 1857156b526dd8 aged-thunder-7371")]
    Destroy(DestroyArgs),
    /// View or clear machine leases
    #[command(
        subcommand,
        visible_alias = "lease",
        after_help = "Examples:\n  \
        hangar machine leases view\n  \
        hangar m leases clear 1857156b526dd8"
    )]
    Leases(LeasesCommand),
    /// Take machines out of proxy routing
    #[command(after_help = "Examples:\n  \
        hangar machine cordon 1857156b526dd8")]
    Cordon(IdsArgs),
    /// Put cordoned machines back into routing
    #[command(after_help = "Examples:\n  \
        hangar machine uncordon 1857156b526dd8")]
    Uncordon(IdsArgs),
    /// Wait for a machine to reach a state
    #[command(after_help = "Examples:\n  \
        hangar machine wait 1857156b526dd8\n  \
        hangar m wait 1857156b526dd8 --state started -w 2m")]
    Wait(WaitArgs),
    /// Start stopped or suspended machines
    #[command(after_help = "Examples:\n  \
        hangar machine start 1857156b526dd8\n  \
        hangar m start aged-thunder-7371 bold-river-1234")]
    Start(IdsArgs),
    /// Stop running machines
    #[command(after_help = "Examples:\n  \
        hangar machine stop 1857156b526dd8\n  \
        hangar m stop 1857156b526dd8 --signal SIGTERM --timeout 30")]
    Stop(StopArgs),
}

pub async fn run(client: &Client, args: MachineArgs) -> Result<()> {
    // run/create may create the app; everything else needs an existing one.
    match args.command {
        MachineCommand::Run(a) => return run::run(client, &args.app, *a).await,
        MachineCommand::Create(a) => return run::create_cmd(client, &args.app, *a).await,
        _ => {}
    }
    let app = match args.app.resolve() {
        Ok(app) => app,
        // As flyctl: without an app, a machine id names it.
        Err(e) => match args
            .command
            .first_machine_arg()
            .filter(|a| hangar_api::ids::is_machine_id(a))
        {
            Some(id) => app_of_machine(client, id)
                .await?
                .ok_or_else(|| anyhow!("no app has a machine {id}; pass --app/-a APP"))?,
            None => return Err(e),
        },
    };
    let ctx = Ctx { client, app: &app };
    match args.command {
        MachineCommand::Run(_) | MachineCommand::Create(_) => unreachable!("handled above"),
        MachineCommand::Update(a) => update::run(&ctx, *a).await,
        MachineCommand::Clone(a) => clone::run(&ctx, *a).await,
        MachineCommand::Restart(a) => process::restart(&ctx, a).await,
        MachineCommand::Suspend(a) => process::suspend(&ctx, a).await,
        MachineCommand::Kill(a) => process::kill(&ctx, a).await,
        MachineCommand::Exec(a) => process::exec(&ctx, a).await,
        MachineCommand::Console(a) => console::run(&ctx, a).await,
        MachineCommand::List(a) => list::run(&ctx, a).await,
        MachineCommand::Status(a) => status::run(&ctx, a).await,
        MachineCommand::Stats(a) => status::stats(&ctx, a).await,
        MachineCommand::Destroy(a) => destroy::run(&ctx, a).await,
        MachineCommand::Leases(c) => leases::run(&ctx, c).await,
        MachineCommand::Cordon(a) => lifecycle::cordon(&ctx, a, true).await,
        MachineCommand::Uncordon(a) => lifecycle::cordon(&ctx, a, false).await,
        MachineCommand::Wait(a) => wait::run(&ctx, a).await,
        MachineCommand::Start(a) => lifecycle::start(&ctx, a).await,
        MachineCommand::Stop(a) => lifecycle::stop(&ctx, a).await,
    }
}

impl MachineCommand {
    /// The first machine id or name on the command line, if the command takes one.
    fn first_machine_arg(&self) -> Option<&str> {
        fn first(v: &[String]) -> Option<&str> {
            v.first().map(String::as_str)
        }
        match self {
            MachineCommand::Run(_) | MachineCommand::Create(_) | MachineCommand::List(_) => None,
            MachineCommand::Update(a) => a.id.as_deref(),
            MachineCommand::Clone(a) => a.id.as_deref(),
            MachineCommand::Restart(a) => first(&a.ids),
            MachineCommand::Suspend(a) => first(&a.ids),
            MachineCommand::Kill(a) => a.id.as_deref(),
            // With one argument it is the command, not a machine.
            MachineCommand::Exec(a) => (a.args.len() == 2).then(|| a.args[0].as_str()),
            MachineCommand::Console(a) => a.id.as_deref(),
            MachineCommand::Status(a) => a.id.as_deref(),
            MachineCommand::Stats(a) => a.id.as_deref(),
            MachineCommand::Destroy(a) => first(&a.ids),
            MachineCommand::Leases(LeasesCommand::View { ids, .. })
            | MachineCommand::Leases(LeasesCommand::Clear { ids }) => first(ids),
            MachineCommand::Cordon(a) | MachineCommand::Uncordon(a) | MachineCommand::Start(a) => {
                first(&a.ids)
            }
            MachineCommand::Wait(a) => a.id.as_deref(),
            MachineCommand::Stop(a) => first(&a.ids),
        }
    }
}

/// The app a machine id belongs to, looked up across the daemon's apps.
pub(crate) async fn app_of_machine(client: &Client, id: &str) -> Result<Option<String>> {
    let apps = client
        .list_apps("")
        .await
        .context("failed to list apps to find the machine's app")?;
    for app in apps.apps {
        match client.get_machine(&app.name, id).await {
            Ok(_) => return Ok(Some(app.name)),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e).context(format!("failed to look for machine {id}")),
        }
    }
    Ok(None)
}

/// What every machine subcommand works with.
pub(crate) struct Ctx<'a> {
    pub client: &'a Client,
    pub app: &'a str,
}

impl Ctx<'_> {
    async fn list(&self) -> Result<Vec<Machine>> {
        self.client
            .list_machines(self.app, &ListMachinesOptions::default())
            .await
            .with_context(|| format!("failed to list machines of app {}", self.app))
    }

    /// Turns a machine id or name into an id. Ids are used as given (a wrong one gets the
    /// server's `machine not found`); names are looked up among the app's machines.
    async fn resolve(&self, arg: &str) -> Result<String> {
        if hangar_api::ids::is_machine_id(arg) {
            return Ok(arg.to_string());
        }
        let machines = self.list().await?;
        pick_by_id_or_name(&machines, arg, self.app)
    }

    /// Like [`resolve`](Self::resolve) for an optional argument: without one, the app's only
    /// machine is meant (flyctl would prompt; a script cannot answer a prompt).
    async fn resolve_opt(&self, arg: Option<&str>) -> Result<String> {
        match arg {
            Some(arg) => self.resolve(arg).await,
            None => only_machine(&self.list().await?, self.app),
        }
    }

    /// Resolves many arguments with at most one listing; none means the app's only machine
    /// (or, on a terminal, those the user picks).
    async fn resolve_many(&self, args: &[String]) -> Result<Vec<String>> {
        if args.is_empty() {
            return choose_machines(&self.list().await?, self.app, true);
        }
        let mut listed: Option<Vec<Machine>> = None;
        let mut ids = Vec::with_capacity(args.len());
        for arg in args {
            if hangar_api::ids::is_machine_id(arg) {
                ids.push(arg.clone());
                continue;
            }
            if listed.is_none() {
                listed = Some(self.list().await?);
            }
            let machines = listed.as_deref().unwrap_or_default();
            ids.push(pick_by_id_or_name(machines, arg, self.app)?);
        }
        Ok(ids)
    }

    async fn get(&self, id: &str) -> Result<Machine> {
        self.client
            .get_machine(self.app, id)
            .await
            .with_context(|| format!("failed to get machine {id}"))
    }

    /// Runs `action` holding the machine's lease, like flyctl: acquire with ttl 120, send the
    /// nonce with the mutation, release afterwards whether or not the action succeeded.
    pub(crate) async fn with_lease<T, F, Fut>(
        &self,
        id: &str,
        purpose: &str,
        action: F,
    ) -> Result<T>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let description = format!("hangar machine {purpose}");
        let lease = self
            .client
            .acquire_lease(self.app, id, LEASE_TTL_SECS, Some(&description), None)
            .await
            .map_err(|e| lease_error(e, id))?;
        let nonce = lease.data.nonce;
        let result = action(nonce.clone()).await;
        if let Err(e) = self.client.release_lease(self.app, id, &nonce).await {
            // A destroyed machine takes its lease with it; anything else is worth a warning but
            // must not mask the action's own outcome.
            if !e.is_not_found() {
                eprintln!("Warning: failed to release the lease on machine {id}: {e}");
            }
        }
        result
    }
}

/// The daemon's "no machine runtime" refusal (412) as its own one-line error; anything else
/// gets `context`.
pub(crate) fn no_runtime(e: ClientError, context: impl FnOnce() -> String) -> anyhow::Error {
    if e.is_status(StatusCode::PRECONDITION_FAILED) {
        if let Some(msg) = e.api_message().filter(|m| m.contains("no machine runtime")) {
            // Fly-style bodies prefix the code (`failed_precondition: …`); the line is the point.
            let msg = msg.strip_prefix("failed_precondition: ").unwrap_or(msg);
            return anyhow!("{msg}");
        }
    }
    anyhow::Error::new(e).context(context())
}

fn lease_error(e: ClientError, id: &str) -> anyhow::Error {
    if e.is_status(StatusCode::CONFLICT) {
        anyhow!(
            "machine {id} is leased by someone else ({}); retry later or clear it with `hangar machine leases clear {id}`",
            e.api_message().unwrap_or("lease conflict")
        )
    } else {
        anyhow::Error::new(e).context(format!("failed to acquire a lease on machine {id}"))
    }
}

fn pick_by_id_or_name(machines: &[Machine], arg: &str, app: &str) -> Result<String> {
    let matches: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.id == arg || m.name == arg)
        .collect();
    match matches.as_slice() {
        [m] => Ok(m.id.clone()),
        [] => bail!("no machine with id or name {arg:?} in app {app}"),
        _ => bail!("more than one machine in app {app} is named {arg:?}; use its id"),
    }
}

/// The machine meant when none is named: the app's only one; with several, the user picks on
/// a terminal (as flyctl prompts), otherwise it is an error naming them.
fn only_machine(machines: &[Machine], app: &str) -> Result<String> {
    Ok(choose_machines(machines, app, false)?.remove(0))
}

/// The machines meant when none is named (`many`: several may be picked).
fn choose_machines(machines: &[Machine], app: &str, many: bool) -> Result<Vec<String>> {
    let live: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.state != MachineState::Destroyed)
        .collect();
    match live.as_slice() {
        [m] => return Ok(vec![m.id.clone()]),
        [] => bail!("app {app} has no machines"),
        _ => {}
    }
    let names: Vec<String> = live
        .iter()
        .map(|m| format!("{} ({}, {})", m.id, m.name, m.state))
        .collect();
    if !std::io::stdin().is_terminal() {
        bail!(
            "app {app} has {} machines ({}); pass a machine id or name",
            live.len(),
            live.iter()
                .map(|m| m.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let picked = prompt_select(&names, many)?;
    Ok(picked.into_iter().map(|i| live[i].id.clone()).collect())
}

/// A numbered menu on stderr; the answer is one number, or with `many` a comma list.
fn prompt_select(options: &[String], many: bool) -> Result<Vec<usize>> {
    use std::io::{BufRead, Write};
    let mut err = std::io::stderr();
    writeln!(
        err,
        "Select {}:",
        if many { "machines" } else { "a machine" }
    )?;
    for (i, o) in options.iter().enumerate() {
        writeln!(err, "  {}) {o}", i + 1)?;
    }
    loop {
        write!(
            err,
            "{}: ",
            if many {
                "Numbers, comma-separated"
            } else {
                "Number"
            }
        )?;
        err.flush()?;
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line)? == 0 {
            bail!("no machine selected");
        }
        let picked: Option<Vec<usize>> = line
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=options.len()).contains(n))
            })
            .map(|n| n.map(|n| n - 1))
            .collect();
        match picked.map(|mut p| {
            p.sort_unstable();
            p.dedup();
            p
        }) {
            Some(p) if !p.is_empty() && (many || p.len() == 1) => return Ok(p),
            _ => writeln!(
                err,
                "Enter {} between 1 and {}",
                if many { "numbers" } else { "a number" },
                options.len()
            )?,
        }
    }
}

/// The image a machine runs, as flyctl shows it: `repository:tag` from the resolved image
/// reference, else the configured image.
fn image_of(m: &Machine) -> String {
    if let Some(r) = &m.image_ref {
        if !r.repository.is_empty() {
            let repo = if r.registry.is_empty() || r.registry == "docker.io" {
                r.repository.clone()
            } else {
                format!("{}/{}", r.registry, r.repository)
            };
            return if r.tag.is_empty() {
                repo
            } else {
                format!("{repo}:{}", r.tag)
            };
        }
    }
    m.config
        .as_ref()
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// The first mounted volume's id, for the VOLUME column.
fn volume_of(m: &Machine) -> String {
    m.config
        .as_ref()
        .and_then(|c| c.mounts.as_ref())
        .and_then(|mounts| mounts.first())
        .map(|mount| mount.volume.clone())
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn machine(id: &str, name: &str, state: MachineState) -> Machine {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "name": name,
            "state": state,
            "region": "local",
            "instance_id": "01HEPA330HZ37A78TK080NAK1M",
            "private_ip": "fdaa:0:18:a7b:196:e274:9ce1:2",
            "created_at": "2023-11-08T01:52:30Z",
            "updated_at": "2023-11-08T01:53:00Z",
            "config": {"image": "nginx:latest", "mounts": [{"volume": "vol_9vw681egy1jj5xm4", "path": "/data"}]},
            "host_status": "ok",
            "cordoned": false
        }))
        .expect("test machine JSON matches the Machine type")
    }

    #[test]
    fn picks_machines() {
        let ms = vec![
            machine("1857156b526dd8", "aged-thunder-7371", MachineState::Started),
            machine("2857156b526dd8", "bold-river-1234", MachineState::Destroyed),
        ];
        assert_eq!(
            pick_by_id_or_name(&ms, "aged-thunder-7371", "a").unwrap(),
            "1857156b526dd8"
        );
        assert!(pick_by_id_or_name(&ms, "nope", "a").is_err());
        assert_eq!(only_machine(&ms, "a").unwrap(), "1857156b526dd8");
        assert!(only_machine(&ms[1..], "a").is_err());
    }

    #[test]
    fn image_and_volume_columns() {
        let m = machine("1857156b526dd8", "x", MachineState::Started);
        assert_eq!(image_of(&m), "nginx:latest");
        assert_eq!(volume_of(&m), "vol_9vw681egy1jj5xm4");
    }
}
