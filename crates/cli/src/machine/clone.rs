//! `hangar machine clone` (flyctl `fly machine clone`): a new machine with the source's config,
//! its image pinned to the exact image the source runs.

use anyhow::{bail, Context, Result};
use clap::Args;
use hangar_api::{CreateMachineRequest, Machine, MachineConfig};

use super::config_builder::{apply_vm_flags, set_standbys, split_list, split_words, VmFlags};
use super::run::wait_started;
use super::{no_runtime, Ctx};

#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct CloneArgs {
    /// Machine id or name to clone (default: the app's only machine)
    #[arg(value_name = "ID")]
    pub id: Option<String>,
    /// Region for the new machine (default: the source's)
    #[arg(short = 'r', long, value_name = "REGION")]
    pub region: Option<String>,
    /// Name of the new machine (default: generated)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Set init.cmd to [] so the image's CMD runs
    #[arg(long)]
    pub clear_cmd: bool,
    /// Replace init.cmd (shell words)
    #[arg(long, value_name = "COMMAND", allow_hyphen_values = true)]
    pub override_cmd: Option<String>,
    /// Do not destroy the clone when it exits
    #[arg(long)]
    pub clear_auto_destroy: bool,
    /// Make the clone a standby for these machine ids (comma-separated; `source` is the source machine)
    #[arg(long, value_name = "IDS")]
    pub standby_for: Option<String>,
    /// Attach an existing volume instead of creating one: vol_id[:/path]
    #[arg(long, value_name = "VOLUME[:PATH]")]
    pub attach_volume: Option<String>,
    /// The clone's new volume restores this snapshot of the source's volume (`last`: its newest); default: an empty volume
    #[arg(long, value_name = "SNAPSHOT_ID|last")]
    pub from_snapshot: Option<String>,
    /// Create the clone without starting it (a hangar addition)
    #[arg(long)]
    pub skip_start: bool,
    /// Do not wait for the clone to start
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub vm: VmFlags,
}

/// The source's full image reference, `registry/repository:tag@digest`, when it has one.
pub fn pinned_image(m: &Machine) -> Option<String> {
    let r = m.image_ref.as_ref()?;
    if r.repository.is_empty() {
        return None;
    }
    let mut s = if r.registry.is_empty() {
        r.repository.clone()
    } else {
        format!("{}/{}", r.registry, r.repository)
    };
    if !r.tag.is_empty() {
        s.push(':');
        s.push_str(&r.tag);
    }
    if !r.digest.is_empty() {
        s.push('@');
        s.push_str(&r.digest);
    }
    Some(s)
}

/// The clone's config (pure).
pub fn clone_config(source: &Machine, args: &CloneArgs) -> Result<MachineConfig> {
    let mut config = source.config.clone().unwrap_or_default();
    if let Some(image) = pinned_image(source) {
        config.image = Some(image);
    }
    config.guest = Some(apply_vm_flags(config.guest.take(), &args.vm)?);
    // As flyctl: --clear-cmd wins over --override-cmd, and an empty override does nothing.
    if args.clear_cmd {
        config.init.cmd = Some(Vec::new());
    } else if let Some(cmd) = args.override_cmd.as_deref().filter(|c| !c.is_empty()) {
        config.init.cmd = Some(split_words("--override-cmd", cmd)?);
    }
    if args.clear_auto_destroy {
        config.auto_destroy = false;
    }
    if let Some(list) = &args.standby_for {
        let ids = split_list(list)
            .into_iter()
            .map(|s| if s == "source" { source.id.clone() } else { s })
            .collect();
        set_standbys(&mut config, ids);
    }
    let mounts = config.mounts.take().unwrap_or_default();
    config.mounts = match (&args.attach_volume, mounts.as_slice()) {
        (None, []) => None,
        // As flyctl: the clone gets a new volume like the source's (made in `run`, empty or
        // from --from-snapshot); until then the mount names the source's volume.
        (None, existing) => Some(existing.to_vec()),
        (Some(spec), existing) => {
            let (vol, path) = match spec.split_once(':') {
                Some((v, p)) => (v, Some(p)),
                None => (spec.as_str(), None),
            };
            if !vol.starts_with("vol_") {
                bail!("invalid --attach-volume {spec:?}: expected vol_id[:/path]");
            }
            let mut mount = existing.first().cloned().unwrap_or_default();
            mount.volume = vol.to_string();
            mount.name = None;
            if let Some(p) = path {
                mount.path = p.to_string();
            }
            if mount.path.is_empty() {
                bail!("invalid --attach-volume {spec:?}: the source has no mount, so give the path: vol_id:/path");
            }
            Some(vec![mount])
        }
    };
    Ok(config)
}

pub(crate) async fn run(ctx: &Ctx<'_>, args: CloneArgs) -> Result<()> {
    let id = ctx.resolve_opt(args.id.as_deref()).await?;
    let source = ctx.get(&id).await?;
    let mut config = clone_config(&source, &args)?;
    let new_volume = match (
        &args.attach_volume,
        config.mounts.as_mut().and_then(|m| m.first_mut()),
    ) {
        (None, Some(mount)) => {
            let v = new_volume_for(ctx, &mount.volume, args.from_snapshot.as_deref()).await?;
            println!(
                "Created volume {} ({}, {} GB) for the clone",
                v.id, v.name, v.size_gb
            );
            mount.volume = v.id.clone();
            mount.name = Some(v.name.clone());
            Some(v.id)
        }
        _ => None,
    };
    let standby = config.standbys.as_ref().is_some_and(|s| !s.is_empty());
    let skip_launch = args.skip_start || standby;
    println!(
        "Cloning machine {} into region {}",
        source.id,
        args.region.as_deref().unwrap_or(&source.region)
    );
    let req = CreateMachineRequest {
        config,
        name: args.name.clone(),
        region: Some(args.region.clone().unwrap_or_else(|| source.region.clone())),
        skip_launch,
        ..Default::default()
    };
    let machine = match ctx.client.create_machine(ctx.app, &req).await {
        Ok(m) => m,
        Err(e) => {
            // The volume made for the clone goes with the failed clone.
            if let Some(v) = &new_volume {
                let _ = ctx.client.destroy_volume(ctx.app, v).await;
            }
            return Err(no_runtime(e, || format!("could not clone machine {id}")));
        }
    };
    println!("Provisioned machine {} ({})", machine.id, machine.name);
    let mut state = machine.state;
    if !skip_launch && !args.detach {
        state = wait_started(ctx, &machine).await?;
        println!("Machine {} has been started", machine.id);
    }
    println!(
        "Machine {} has been cloned to {} (state {state})",
        source.id, machine.id
    );
    Ok(())
}

/// A new volume for a clone, like the source machine's volume `source`: same name and size,
/// empty, or restored from `from_snapshot` (`last`: the source volume's newest snapshot).
async fn new_volume_for(
    ctx: &Ctx<'_>,
    source: &str,
    from_snapshot: Option<&str>,
) -> Result<hangar_api::Volume> {
    let src = ctx
        .client
        .get_volume(ctx.app, source)
        .await
        .with_context(|| format!("failed to get the source's volume {source}"))?;
    let snapshot_id = match from_snapshot {
        None => None,
        Some("last") => Some(
            ctx.client
                .list_snapshots(ctx.app, source)
                .await
                .with_context(|| format!("failed to list the snapshots of volume {source}"))?
                .into_iter()
                .max_by(|a, b| a.created_at.cmp(&b.created_at))
                .map(|s| s.id)
                .ok_or_else(|| {
                    anyhow::anyhow!("--from-snapshot last: volume {source} has no snapshots")
                })?,
        ),
        Some(id) => Some(id.to_string()),
    };
    let req = hangar_api::CreateVolumeRequest {
        name: src.name.clone(),
        region: Some(src.region.clone()),
        size_gb: Some(src.size_gb),
        snapshot_id,
        snapshot_retention: Some(src.snapshot_retention),
        ..Default::default()
    };
    ctx.client
        .create_volume(ctx.app, &req)
        .await
        .with_context(|| format!("failed to create a volume for the clone (like {source})"))
}
