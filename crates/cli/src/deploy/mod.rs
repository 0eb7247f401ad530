//! `hangar deploy`: flyctl's `fly deploy` over the Machines API (milestone 2 §5.3). Reads
//! fly.toml, builds the image (or takes `--image`), then per process group creates machines
//! the first time and updates them on later deploys, `rolling` (one, then pools of
//! `max_unavailable`, each waited on until healthy) or `immediate` (all at once), under their
//! leases; a new version that does not become healthy stops the deploy with its logs.

pub mod fly_toml;
pub mod status;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use hangar_api::{CreateMachineRequest, CreateVolumeRequest, Machine, MachineState};
use hangar_client::Client;
use serde_json::{json, Value};

use crate::app_name::AppArgs;
use crate::build::{BuildFlags, BuildSource};
use crate::machine::{wait_for, Ctx};

#[derive(Args, Debug, Clone, PartialEq)]
#[command(after_help = "Examples:\n  \
    hangar deploy                       # ./fly.toml, building ./Dockerfile\n  \
    hangar deploy --image nginx:latest  # no build\n  \
    hangar deploy -c other/fly.toml --strategy immediate")]
pub struct DeployArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// Deploy this image instead of building one
    #[arg(short = 'i', long, value_name = "IMAGE")]
    pub image: Option<String>,
    #[command(flatten)]
    pub build: BuildFlags,
    /// How machines are updated: rolling (default) or immediate
    #[arg(long, value_name = "STRATEGY")]
    pub strategy: Option<String>,
    /// Return once the machines are updated, without waiting for them to become healthy
    #[arg(long)]
    pub detach: bool,
    /// How long each machine may take to start and pass its checks (Go duration)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub wait_timeout: Duration,
    /// Two machines for a process group with services (when it has no volume), as flyctl
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub ha: bool,
    /// Set an environment variable (repeatable): NAME=VALUE
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Organization for the app when it has to be created
    #[arg(short = 'o', long, value_name = "SLUG", default_value = "personal")]
    pub org: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    hangar_api::duration::parse_go_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

fn metadata<'a>(m: &'a Machine, key: &str) -> Option<&'a str> {
    m.config
        .as_ref()
        .and_then(|c| c.metadata.as_ref())
        .and_then(|md| md.get(key))
        .map(String::as_str)
}

/// Machines `deploy` manages: flyctl's Fly Launch machines (`fly_platform_version=v2`).
fn launch_machines(all: &[Machine]) -> Vec<&Machine> {
    all.iter()
        .filter(|m| metadata(m, "fly_platform_version") == Some("v2"))
        .filter(|m| metadata(m, "fly_process_group") != Some("fly_app_release_command"))
        .collect()
}

pub async fn run(client: &Client, args: DeployArgs) -> Result<()> {
    let path = args
        .app
        .config
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("fly.toml"));
    if !path.is_file() {
        bail!(
            "no fly.toml at {} (pass -c PATH to the app's fly.toml)",
            path.display()
        );
    }
    let cfg = fly_toml::load(&path)?;
    let strategy = args
        .strategy
        .clone()
        .or(cfg.toml.deploy.strategy.clone())
        .unwrap_or_else(|| "rolling".into());
    if !["rolling", "immediate"].contains(&strategy.as_str()) {
        bail!("--strategy {strategy:?}: rolling or immediate");
    }
    let mut extra_env = BTreeMap::new();
    for pair in &args.env {
        let (k, v) = pair
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| anyhow!("invalid --env {pair:?}: expected NAME=VALUE"))?;
        extra_env.insert(k.to_string(), v.to_string());
    }
    let app = args
        .app
        .app
        .clone()
        .or(std::env::var("FLY_APP").ok().filter(|a| !a.is_empty()))
        .or(cfg.toml.app.clone())
        .ok_or_else(|| anyhow!("no app name: set app in {} or pass --app", path.display()))?;
    // A deploy of an app that does not exist yet makes it (what `fly launch` would have).
    match client.get_app(&app).await {
        Ok(_) => {}
        Err(e) if e.is_status(hangar_client::StatusCode::NOT_FOUND) => {
            crate::machine::run::create_app(client, &app, &args.org).await?;
            println!("Created app {app} in organization {}", args.org);
        }
        Err(e) => return Err(e).with_context(|| format!("failed to look up app {app}")),
    }

    // The image: --image, [build] image, or a build of the Dockerfile beside fly.toml.
    let image = match args.image.clone().or(cfg.toml.build.image.clone()) {
        Some(i) => i,
        None => {
            let mut flags = args.build.clone();
            let mut build_args: Vec<String> = cfg
                .toml
                .build
                .args
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            build_args.extend(flags.build_args.iter().cloned());
            flags.build_args = build_args;
            if flags.build_target.is_none() {
                flags.build_target = cfg.toml.build.build_target.clone();
            }
            let dockerfile = flags
                .dockerfile
                .clone()
                .map(std::path::PathBuf::from)
                .or_else(|| cfg.toml.build.dockerfile.as_ref().map(|d| cfg.dir.join(d)))
                .unwrap_or_else(|| cfg.dir.join("Dockerfile"));
            if !dockerfile.is_file() {
                bail!(
                    "no Dockerfile at {} (set [build] image or dockerfile in {}, or pass --image)",
                    dockerfile.display(),
                    path.display()
                );
            }
            let source = BuildSource {
                context: cfg.dir.clone(),
                dockerfile,
            };
            crate::build::build_image(client, &app, &source, &flags).await?
        }
    };

    let ctx = Ctx { client, app: &app };
    let all = client
        .list_machines(&app, &Default::default())
        .await
        .with_context(|| format!("failed to list the machines of app {app}"))?;
    let managed = launch_machines(&all);
    let release_version = managed
        .iter()
        .filter_map(|m| metadata(m, "fly_release_version")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    let release_id = hangar_api::ids::new_ulid();
    println!("==> Deploying {app} v{release_version} ({image}, {strategy})");

    let groups = cfg.groups();
    for group in &groups {
        let mut config = cfg.group_config(group, &image)?;
        for (k, v) in &extra_env {
            config["env"][k] = json!(v);
        }
        config["metadata"]["fly_release_id"] = json!(release_id);
        config["metadata"]["fly_release_version"] = json!(release_version.to_string());
        let existing: Vec<&Machine> = managed
            .iter()
            .copied()
            .filter(|m| metadata(m, "fly_process_group") == Some(group.as_str()))
            .collect();
        if existing.is_empty() {
            create_group(&ctx, &cfg, group, config, &args).await?;
        } else {
            update_group(&ctx, group, &config, &existing, &strategy, &cfg, &args).await?;
        }
    }
    // Machines of process groups fly.toml no longer has go.
    for m in &managed {
        let g = metadata(m, "fly_process_group").unwrap_or("app");
        if !groups.iter().any(|x| x == g) {
            println!("Destroying machine {} of removed process group {g}", m.id);
            client
                .delete_machine(&app, &m.id, true, None)
                .await
                .with_context(|| format!("failed to destroy machine {}", m.id))?;
        }
    }
    println!("==> {app} v{release_version} deployed");
    Ok(())
}

/// First deploy of a group: one machine (two with services and --ha, unless it has a volume).
async fn create_group(
    ctx: &Ctx<'_>,
    cfg: &fly_toml::AppConfig,
    group: &str,
    mut config: Value,
    args: &DeployArgs,
) -> Result<()> {
    let mount = cfg.mount_of(group);
    let has_services = config
        .get("services")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    let count = if args.ha && has_services && mount.is_none() {
        2
    } else {
        1
    };
    for i in 0..count {
        if let Some(m) = &mount {
            let volume = volume_for(ctx, cfg, m).await?;
            config["mounts"] = json!([cfg.mount_json(m, &volume)?]);
        }
        let req = CreateMachineRequest {
            config: serde_json::from_value(config.clone()).context("the machine config")?,
            ..Default::default()
        };
        let machine = ctx
            .client
            .create_machine(ctx.app, &req)
            .await
            .with_context(|| format!("could not create a machine for process group {group}"))?;
        println!(
            "Created machine {} for process group {group} [{}/{count}]",
            machine.id,
            i + 1
        );
        if !args.detach {
            wait_healthy(ctx, &machine.id, &machine.instance_id, args.wait_timeout).await?;
        }
    }
    Ok(())
}

/// An unattached volume named as the mount's `source`, created (at `initial_size`) if none.
async fn volume_for(
    ctx: &Ctx<'_>,
    cfg: &fly_toml::AppConfig,
    m: &fly_toml::Mount,
) -> Result<String> {
    let volumes = ctx
        .client
        .list_volumes(ctx.app)
        .await
        .with_context(|| format!("failed to list the volumes of app {}", ctx.app))?;
    if let Some(v) = volumes.iter().find(|v| {
        v.name == m.source
            && v.attached_machine_id.is_none()
            && !hangar_api::DESTROYED_VOLUME_STATES.contains(&v.state.as_str())
    }) {
        return Ok(v.id.clone());
    }
    let req = CreateVolumeRequest {
        name: m.source.clone(),
        size_gb: Some(cfg.mount_size_gb(m)?),
        ..Default::default()
    };
    let v = ctx
        .client
        .create_volume(ctx.app, &req)
        .await
        .with_context(|| format!("failed to create volume {}", m.source))?;
    println!("Created volume {} ({}, {} GB)", v.id, v.name, v.size_gb);
    Ok(v.id)
}

/// Later deploys: every machine of the group gets the new config (keeping its size when
/// fly.toml has no [[vm]], and its volume), rolling or all at once.
async fn update_group(
    ctx: &Ctx<'_>,
    group: &str,
    config: &Value,
    machines: &[&Machine],
    strategy: &str,
    cfg: &fly_toml::AppConfig,
    args: &DeployArgs,
) -> Result<()> {
    let mut sorted: Vec<&Machine> = machines.to_vec();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let pool = if strategy == "immediate" {
        sorted.len()
    } else {
        let x = cfg.toml.deploy.max_unavailable.unwrap_or(0.33);
        if x >= 1.0 {
            x as usize
        } else {
            ((sorted.len() as f64) * x).ceil().max(1.0) as usize
        }
    };
    let wait = strategy != "immediate" && !args.detach;
    // The first machine goes alone (a spearhead), then pools.
    let mut batches: Vec<Vec<&Machine>> = Vec::new();
    if let Some((first, rest)) = sorted.split_first() {
        batches.push(vec![*first]);
        for chunk in rest.chunks(pool.max(1)) {
            batches.push(chunk.to_vec());
        }
    }
    let total = sorted.len();
    let mut done = 0;
    for batch in batches {
        let updates = batch
            .iter()
            .map(|m| update_one(ctx, m, config, cfg, group, wait, args));
        for r in futures_util::future::join_all(updates).await {
            r?;
            done += 1;
        }
        println!("Process group {group}: {done}/{total} machines updated");
    }
    Ok(())
}

async fn update_one(
    ctx: &Ctx<'_>,
    m: &Machine,
    config: &Value,
    cfg: &fly_toml::AppConfig,
    group: &str,
    wait: bool,
    args: &DeployArgs,
) -> Result<()> {
    let current = m.config.clone().unwrap_or_default();
    let mut new: hangar_api::MachineConfig =
        serde_json::from_value(config.clone()).context("the machine config")?;
    if new.guest.is_none() {
        new.guest = current.guest.clone();
    }
    // The machine keeps its volume; fly.toml may move where it is mounted.
    if let Some(mounts) = current.mounts.clone().filter(|m| !m.is_empty()) {
        let mut mounts = mounts;
        if let Some(m) = cfg.mount_of(group) {
            mounts[0].path = m.destination.clone();
        }
        new.mounts = Some(mounts);
    }
    // flyctl's rule: started (or starting, failed) machines are relaunched, others stay down.
    let relaunch = matches!(
        m.state,
        MachineState::Started | MachineState::Starting | MachineState::Failed
    );
    let req = CreateMachineRequest {
        config: new,
        skip_launch: !relaunch,
        current_version: Some(m.instance_id.clone()),
        ..Default::default()
    };
    let updated = ctx
        .with_lease(&m.id, "deploy", |nonce| {
            let req = &req;
            async move {
                ctx.client
                    .update_machine(ctx.app, &m.id, req, Some(&nonce))
                    .await
                    .with_context(|| format!("could not update machine {}", m.id))
            }
        })
        .await?;
    println!(
        "Updated machine {} ({})",
        m.id,
        if relaunch {
            "restarting"
        } else {
            "left stopped"
        }
    );
    if wait && relaunch {
        wait_healthy(ctx, &m.id, &updated.instance_id, args.wait_timeout).await?;
    }
    Ok(())
}

/// Waits for the machine's new version to start and for all its checks to pass; on failure,
/// the error carries its recent logs.
async fn wait_healthy(ctx: &Ctx<'_>, id: &str, version: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let state = wait_for(ctx, id, version, "started", timeout).await;
    if let Err(e) = state {
        return Err(with_logs(ctx, id, e.context(format!("machine {id} did not start"))).await);
    }
    loop {
        let m = ctx
            .client
            .get_machine(ctx.app, id)
            .await
            .with_context(|| format!("failed to get machine {id}"))?;
        let checks = m.checks.clone().unwrap_or_default();
        if m.state == MachineState::Failed || m.state == MachineState::Stopped {
            let e = anyhow!(
                "machine {id} stopped ({}) instead of running its new version",
                m.state
            );
            return Err(with_logs(ctx, id, e).await);
        }
        if checks.iter().all(|c| c.status == "passing") {
            if !checks.is_empty() {
                println!("Machine {id} is healthy ({} checks passing)", checks.len());
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            let failing: Vec<String> = checks
                .iter()
                .filter(|c| c.status != "passing")
                .map(|c| format!("{} is {}: {}", c.name, c.status, c.output.trim()))
                .collect();
            let e = anyhow!(
                "machine {id} did not become healthy within {}: {}",
                hangar_api::duration::format_go_duration(timeout),
                failing.join("; ")
            );
            return Err(with_logs(ctx, id, e).await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `e` with the machine's last log lines printed before it (flyctl shows them on a failed
/// deploy).
async fn with_logs(ctx: &Ctx<'_>, id: &str, e: anyhow::Error) -> anyhow::Error {
    let path = format!(
        "/hangar/v1/apps/{}/logs?follow=false&tail=20&instance={}",
        hangar_client::encode(ctx.app),
        hangar_client::encode(id)
    );
    let mut text = Vec::new();
    let _ = ctx
        .client
        .get_streaming(&path, |chunk| {
            text.extend_from_slice(chunk);
            true
        })
        .await;
    let lines: Vec<String> = String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            format!(
                "  [{}] {}",
                v["container"].as_str().unwrap_or_default(),
                v["message"].as_str().unwrap_or_default()
            )
        })
        .collect();
    if !lines.is_empty() {
        eprintln!("Recent logs of machine {id}:\n{}", lines.join("\n"));
    }
    e.context("the deploy stopped")
}
