//! `hangar volumes`: flyctl's `fly volumes create|list|show|update|extend|destroy|fork|snapshots`,
//! and the volume-name resolution `machine run --volume NAME:/path` uses.

use std::io::IsTerminal;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use hangar_api::{CreateVolumeRequest, MachineConfig, UpdateVolumeRequest, Volume};
use hangar_client::Client;

use crate::app_name::AppArgs;
use crate::output::{key_values, print_json, Table};

/// `fly volumes create`'s default size (the API's is 3).
const CLI_DEFAULT_SIZE_GB: i64 = 1;

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum VolumesCommand {
    /// Create a volume (a filesystem that outlives machines, on this host)
    #[command(after_help = "Examples:\n  \
        hangar volumes create data -a my-app --size 10\n  \
        hangar volumes create data -a my-app --snapshot-id vs_xxxxxxxxxxxxxxxx")]
    Create {
        #[command(flatten)]
        app: AppArgs,
        /// Volume name (letters, digits and underscores)
        name: String,
        /// Size in GB (1–500)
        #[arg(short = 's', long = "size", default_value_t = CLI_DEFAULT_SIZE_GB)]
        size_gb: i64,
        /// Region (this host's; the only one)
        #[arg(short = 'r', long)]
        region: Option<String>,
        /// Days snapshots are kept (1–60)
        #[arg(long)]
        snapshot_retention: Option<i64>,
        /// Do not encrypt the volume (Hangar never does yet; accepted for flyctl's sake)
        #[arg(long)]
        no_encryption: bool,
        /// Restore this snapshot into the new volume
        #[arg(long)]
        snapshot_id: Option<String>,
        /// Take daily snapshots
        #[arg(long)]
        scheduled_snapshots: Option<bool>,
        /// Skip the confirmation
        #[arg(short = 'y', long)]
        yes: bool,
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// List the app's volumes (destroyed ones with --all)
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  hangar volumes list -a my-app"
    )]
    List {
        #[command(flatten)]
        app: AppArgs,
        /// Show destroyed volumes too
        #[arg(long)]
        all: bool,
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Show a volume
    #[command(after_help = "Examples:\n  hangar volumes show vol_xxxxxxxxxxxxxxxx -a my-app")]
    Show {
        #[command(flatten)]
        app: AppArgs,
        id: String,
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Change a volume's snapshot settings
    #[command(
        after_help = "Examples:\n  hangar volumes update vol_xxxxxxxxxxxxxxxx --snapshot-retention 14"
    )]
    Update {
        #[command(flatten)]
        app: AppArgs,
        id: String,
        #[arg(long)]
        snapshot_retention: Option<i64>,
        #[arg(long)]
        scheduled_snapshots: Option<bool>,
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Grow a volume (online while its machine runs); +N adds N GB
    #[command(after_help = "Examples:\n  \
        hangar volumes extend vol_xxxxxxxxxxxxxxxx --size 20\n  \
        hangar volumes extend vol_xxxxxxxxxxxxxxxx --size +5")]
    Extend {
        #[command(flatten)]
        app: AppArgs,
        id: String,
        /// New size in GB, or +N to add N
        #[arg(short = 's', long = "size", allow_hyphen_values = true)]
        size: String,
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Destroy volumes (their data is gone; a volume bound to a machine is refused)
    #[command(visible_aliases = ["delete", "rm"], after_help = "Examples:\n  hangar volumes destroy vol_xxxxxxxxxxxxxxxx -y")]
    Destroy {
        #[command(flatten)]
        app: AppArgs,
        #[arg(required = true)]
        ids: Vec<String>,
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Make an independent copy of a volume (its data now)
    #[command(
        after_help = "Examples:\n  hangar volumes fork vol_xxxxxxxxxxxxxxxx --name data_copy"
    )]
    Fork {
        #[command(flatten)]
        app: AppArgs,
        id: String,
        /// Name of the new volume (default: the source's)
        #[arg(long)]
        name: Option<String>,
        #[arg(short = 'r', long)]
        region: Option<String>,
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// List or take snapshots of a volume
    #[command(
        subcommand,
        visible_alias = "snapshot",
        after_help = "Examples:\n  \
        hangar volumes snapshots create vol_xxxxxxxxxxxxxxxx\n  \
        hangar volumes snapshots list vol_xxxxxxxxxxxxxxxx"
    )]
    Snapshots(SnapshotsCommand),
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum SnapshotsCommand {
    /// List a volume's snapshots
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  hangar volumes snapshots list vol_xxxxxxxxxxxxxxxx"
    )]
    List {
        #[command(flatten)]
        app: AppArgs,
        id: String,
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Take a snapshot of a volume now
    #[command(after_help = "Examples:\n  hangar volumes snapshots create vol_xxxxxxxxxxxxxxxx")]
    Create {
        #[command(flatten)]
        app: AppArgs,
        id: String,
        #[arg(short = 'j', long)]
        json: bool,
    },
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<()> {
    print_json(&serde_json::to_value(v).context("formatting JSON")?)
}

fn destroyed(v: &Volume) -> bool {
    hangar_api::DESTROYED_VOLUME_STATES.contains(&v.state.as_str())
}

fn print_volume(v: &Volume, json: bool) -> Result<()> {
    if json {
        return to_json(v);
    }
    let mut pairs = vec![
        ("ID", v.id.clone()),
        ("Name", v.name.clone()),
        ("State", v.state.clone()),
        ("Region", v.region.clone()),
        ("Zone", v.zone.clone()),
        ("Size GB", v.size_gb.to_string()),
        ("Encrypted", v.encrypted.to_string()),
        (
            "Attached VM",
            v.attached_machine_id.clone().unwrap_or_default(),
        ),
        ("Created at", v.created_at.clone()),
        ("Snapshot retention", v.snapshot_retention.to_string()),
        ("Scheduled snapshots", v.auto_backup_enabled.to_string()),
    ];
    if let (Some(total), Some(used)) = (v.bytes_total, v.bytes_used) {
        pairs.push(("Used", format!("{} of {} MiB", used >> 20, total >> 20)));
    }
    print!("{}", key_values(&pairs));
    Ok(())
}

pub async fn run(client: &Client, cmd: VolumesCommand) -> Result<()> {
    match cmd {
        VolumesCommand::Create {
            app,
            name,
            size_gb,
            region,
            snapshot_retention,
            no_encryption,
            snapshot_id,
            scheduled_snapshots,
            yes,
            json,
        } => {
            let app = app.resolve()?;
            hangar_api::check_volume_name(&name).map_err(|e| anyhow!("{e}"))?;
            hangar_api::check_volume_size(size_gb).map_err(|e| anyhow!("--size: {e}"))?;
            let existing = client.list_volumes(&app).await.unwrap_or_default();
            if !yes && !existing.iter().any(|v| v.name == name && !destroyed(v)) {
                eprintln!(
                    "Warning! Every volume is pinned to a specific host. Create two or more volumes per app to avoid downtime; \
                     machines can only mount volumes on their own host."
                );
                if std::io::stdin().is_terminal()
                    && !crate::apps::confirm("Do you still want to use the volumes feature?")?
                {
                    bail!("volume not created");
                }
            }
            let req = CreateVolumeRequest {
                name,
                region,
                size_gb: Some(size_gb),
                encrypted: Some(!no_encryption),
                snapshot_retention,
                snapshot_id,
                auto_backup_enabled: scheduled_snapshots,
                ..Default::default()
            };
            let v = client
                .create_volume(&app, &req)
                .await
                .with_context(|| format!("failed to create a volume in app {app}"))?;
            print_volume(&v, json)
        }
        VolumesCommand::List { app, all, json } => {
            let app = app.resolve()?;
            let volumes: Vec<Volume> = client
                .list_volumes(&app)
                .await
                .with_context(|| format!("failed to list the volumes of app {app}"))?
                .into_iter()
                .filter(|v| all || !destroyed(v))
                .collect();
            if json {
                return to_json(&volumes);
            }
            let mut table = Table::new([
                "ID",
                "STATE",
                "NAME",
                "SIZE",
                "REGION",
                "ZONE",
                "ENCRYPTED",
                "ATTACHED VM",
                "CREATED AT",
            ]);
            for v in volumes {
                table.row([
                    v.id,
                    v.state,
                    v.name,
                    format!("{}GB", v.size_gb),
                    v.region,
                    v.zone,
                    v.encrypted.to_string(),
                    v.attached_machine_id.unwrap_or_default(),
                    v.created_at,
                ]);
            }
            print!("{}", table.render());
            Ok(())
        }
        VolumesCommand::Show { app, id, json } => {
            let app = app.resolve()?;
            let v = client
                .get_volume(&app, &id)
                .await
                .with_context(|| format!("failed to get volume {id}"))?;
            print_volume(&v, json)
        }
        VolumesCommand::Update {
            app,
            id,
            snapshot_retention,
            scheduled_snapshots,
            json,
        } => {
            let app = app.resolve()?;
            if snapshot_retention.is_none() && scheduled_snapshots.is_none() {
                bail!("nothing to update: give --snapshot-retention or --scheduled-snapshots");
            }
            let req = UpdateVolumeRequest {
                snapshot_retention,
                auto_backup_enabled: scheduled_snapshots,
            };
            let v = client
                .update_volume(&app, &id, &req)
                .await
                .with_context(|| format!("failed to update volume {id}"))?;
            print_volume(&v, json)
        }
        VolumesCommand::Extend {
            app,
            id,
            size,
            json,
        } => {
            let app = app.resolve()?;
            let current = client
                .get_volume(&app, &id)
                .await
                .with_context(|| format!("failed to get volume {id}"))?;
            let size_gb = target_size(&size, current.size_gb)?;
            let resp = client
                .extend_volume(&app, &id, size_gb)
                .await
                .with_context(|| format!("failed to extend volume {id}"))?;
            if json {
                return to_json(&resp);
            }
            print_volume(&resp.volume, false)?;
            if resp.needs_restart {
                println!("You will need to stop and start your machine to increase the size of the filesystem");
            } else {
                println!("Volume {id} is now {size_gb} GB");
            }
            Ok(())
        }
        VolumesCommand::Destroy { app, ids, yes } => {
            let app = app.resolve()?;
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!("confirmation required but stdin is not a terminal; pass --yes/-y to destroy");
                }
                if !crate::apps::confirm(&format!(
                    "Destroying {} deletes its data. Continue?",
                    ids.join(", ")
                ))? {
                    bail!("nothing destroyed");
                }
            }
            for id in ids {
                client
                    .destroy_volume(&app, &id)
                    .await
                    .with_context(|| format!("failed to destroy volume {id}"))?;
                println!("Destroyed volume ID: {id}");
            }
            Ok(())
        }
        VolumesCommand::Fork {
            app,
            id,
            name,
            region,
            json,
        } => {
            let app = app.resolve()?;
            let source = client
                .get_volume(&app, &id)
                .await
                .with_context(|| format!("failed to get volume {id}"))?;
            let req = CreateVolumeRequest {
                name: name.unwrap_or(source.name),
                region: region.or(Some(source.region)),
                source_volume_id: Some(id.clone()),
                ..Default::default()
            };
            let v = client
                .create_volume(&app, &req)
                .await
                .with_context(|| format!("failed to fork volume {id}"))?;
            print_volume(&v, json)
        }
        VolumesCommand::Snapshots(SnapshotsCommand::List { app, id, json }) => {
            let app = app.resolve()?;
            let snaps = client
                .list_snapshots(&app, &id)
                .await
                .with_context(|| format!("failed to list the snapshots of volume {id}"))?;
            if json {
                return to_json(&snaps);
            }
            let mut table = Table::new(["ID", "STATUS", "SIZE", "CREATED AT", "RETENTION DAYS"]);
            for s in snaps {
                table.row([
                    s.id,
                    s.status,
                    s.size.to_string(),
                    s.created_at,
                    s.retention_days.to_string(),
                ]);
            }
            print!("{}", table.render());
            Ok(())
        }
        VolumesCommand::Snapshots(SnapshotsCommand::Create { app, id, json }) => {
            let app = app.resolve()?;
            let s = client
                .create_snapshot(&app, &id)
                .await
                .with_context(|| format!("failed to snapshot volume {id}"))?;
            if json {
                return to_json(&s);
            }
            println!("Snapshot {} of volume {id} created", s.id);
            Ok(())
        }
    }
}

/// `--size N` or `--size +N` (relative to `current`).
fn target_size(arg: &str, current: i64) -> Result<i64> {
    let (relative, digits) = match arg.strip_prefix('+') {
        Some(d) => (true, d),
        None => (false, arg),
    };
    let n: i64 = digits
        .parse()
        .map_err(|_| anyhow!("invalid --size {arg:?}: give a number of GB or +N"))?;
    Ok(if relative { current + n } else { n })
}

/// Replaces volume *names* in `config.mounts` with the id of the first unattached volume of that
/// name (flyctl's rule for `--volume name:/path`); `machine` is the machine being updated, whose
/// own volume counts as free.
pub(crate) async fn resolve_volume_names(
    client: &Client,
    app: &str,
    config: &mut MachineConfig,
    machine: Option<&str>,
) -> Result<()> {
    let named: Vec<usize> = config
        .mounts
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, m)| !m.volume.starts_with("vol_"))
        .map(|(i, _)| i)
        .collect();
    if named.is_empty() {
        return Ok(());
    }
    let volumes = client
        .list_volumes(app)
        .await
        .with_context(|| format!("failed to list the volumes of app {app}"))?;
    let mut taken: Vec<String> = Vec::new();
    for i in named {
        let Some(mount) = config.mounts.as_mut().and_then(|m| m.get_mut(i)) else {
            continue;
        };
        let name = mount.volume.clone();
        let free = volumes.iter().find(|v| {
            v.name == name
                && !destroyed(v)
                && !taken.contains(&v.id)
                && match v.attached_machine_id.as_deref() {
                    None => true,
                    Some(holder) => Some(holder) == machine,
                }
        });
        let Some(v) = free else {
            bail!("not enough unattached volumes for '{name}' in app {app} (create one with `hangar volumes create {name}`)");
        };
        taken.push(v.id.clone());
        mount.volume = v.id.clone();
        mount.name = Some(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::target_size("10", 3).unwrap(), 10);
        assert_eq!(super::target_size("+5", 3).unwrap(), 8);
        assert!(super::target_size("ten", 3).is_err());
    }
}
