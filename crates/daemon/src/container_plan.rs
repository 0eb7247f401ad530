//! From a machine's config to what Pilot runs: one [`PlannedContainer`] per container (the
//! implicit `app` of an `image` config, or each of `containers`), their health checks, restart
//! policies, `temp_dir` volumes, and the resolved command, environment, user and files of each
//! process (reference 2.2, 2.9 and 4.1).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use hangar_api::{MachineConfig, Signal};
use hangar_image::RootfsSpec;
use hangar_pilot::spec::{CheckKind, Condition, Dependency, HealthcheckSpec, Probe, RestartSpec};
use hangar_sandbox::container::{ContainerFile, ContainerProcess};
use hangar_sandbox::user::User;
use hangar_store::MachineRecord;

use crate::runtime::failed;
use crate::runtime::{RuntimeError, SecretValues};
use crate::uid_slots::UID_RANGE;
use hangar_sandbox::plan::{system_tool, VolumeMountPlan};

/// One container to run: the implicit `app` of an `image` config, or each of `containers`.
pub(crate) struct PlannedContainer {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) exec: Option<Vec<String>>,
    pub(crate) entrypoint: Option<Vec<String>>,
    pub(crate) cmd: Option<Vec<String>>,
    pub(crate) user: Option<String>,
    pub(crate) env: Vec<(String, String)>,
    /// (variable, machine field) projections, reference 4.1.
    pub(crate) env_from: Vec<(String, String)>,
    pub(crate) files: Vec<hangar_api::File>,
    pub(crate) stop_signal: Option<Signal>,
    pub(crate) stop_timeout: Duration,
    pub(crate) depends_on: Vec<Dependency>,
    pub(crate) healthchecks: Vec<HealthcheckSpec>,
    pub(crate) restart: RestartSpec,
    /// (volume name, path in the container).
    pub(crate) mounts: Vec<(String, String)>,
    /// A further process of an `image` machine runs in the root filesystem of this container
    /// (the first process) instead of one of its own.
    pub(crate) rootfs_of: Option<String>,
    /// `processes` semantics: when this one ends for good, the machine stops.
    pub(crate) stops_machine: bool,
    /// The container's or process's own `secrets` (env var, secret name): when given, these
    /// and no other app secrets are its env.
    pub(crate) secrets: Vec<(String, String)>,
    /// `ignore_app_secrets` of a process: no app secrets in its env.
    pub(crate) ignore_app_secrets: bool,
}

fn secret_pairs(list: Option<&Vec<hangar_api::MachineSecret>>) -> Vec<(String, String)> {
    list.into_iter()
        .flatten()
        .map(|s| (s.env_var.clone(), s.secret_name().to_string()))
        .collect()
}

fn env_from(list: Option<&Vec<hangar_api::EnvFrom>>) -> Vec<(String, String)> {
    list.into_iter()
        .flatten()
        .map(|e| (e.env_var.clone(), e.field_ref.clone()))
        .collect()
}

pub(crate) fn container_configs(config: &MachineConfig) -> Vec<PlannedContainer> {
    let machine_env: Vec<(String, String)> = config
        .env
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let stop = config.stop_config.as_ref();
    let stop_signal = stop.and_then(|s| s.signal);
    let stop_timeout = stop
        .and_then(|s| s.timeout)
        .map(|d| d.as_duration())
        .unwrap_or(hangar_api::lifecycle::DEFAULT_STOP_TIMEOUT);
    let machine_checks: Vec<HealthcheckSpec> = config
        .checks
        .iter()
        .flatten()
        .filter_map(|(name, c)| machine_check_spec(name, c))
        .collect();
    match config.containers.as_ref().filter(|c| !c.is_empty()) {
        Some(containers) => containers
            .iter()
            .enumerate()
            .map(|(index, c)| PlannedContainer {
                name: c.name.clone(),
                image: c.image.clone(),
                exec: c.exec.clone(),
                entrypoint: c.entrypoint.clone(),
                cmd: c.cmd.clone(),
                user: c.user.clone(),
                env: machine_env
                    .iter()
                    .cloned()
                    .chain(c.env.iter().flatten().map(|(k, v)| (k.clone(), v.clone())))
                    .collect(),
                env_from: env_from(c.env_from.as_ref()),
                files: c.files.clone().unwrap_or_default(),
                stop_signal: c.stop.as_ref().and_then(|s| s.signal).or(stop_signal),
                stop_timeout: c
                    .stop
                    .as_ref()
                    .and_then(|s| s.timeout)
                    .map(|d| d.as_duration())
                    .unwrap_or(stop_timeout),
                depends_on: c
                    .depends_on
                    .iter()
                    .flatten()
                    .map(|d| Dependency {
                        name: d.name.clone(),
                        condition: match d.condition.as_str() {
                            "healthy" => Condition::Healthy,
                            "exited_successfully" => Condition::ExitedSuccessfully,
                            _ => Condition::Started,
                        },
                    })
                    .collect(),
                healthchecks: c
                    .healthchecks
                    .iter()
                    .flatten()
                    .enumerate()
                    .filter_map(|(i, h)| healthcheck_spec(i, h))
                    // Top-level checks probe the machine's shared network; the first container
                    // runs them (they are reported by name and never gate anything).
                    .chain(if index == 0 {
                        machine_checks.clone()
                    } else {
                        Vec::new()
                    })
                    .collect(),
                restart: hangar_api::spec::restart_spec(c.restart.as_ref()),
                mounts: c
                    .mounts
                    .iter()
                    .flatten()
                    .map(|m| (m.name.clone(), m.path.clone()))
                    .collect(),
                rootfs_of: None,
                stops_machine: false,
                secrets: secret_pairs(c.secrets.as_ref()),
                ignore_app_secrets: false,
            })
            .collect(),
        None => image_processes(
            config,
            machine_env,
            machine_checks,
            stop_signal,
            stop_timeout,
        ),
    }
}

/// The containers of an `image` machine: the implicit `app`, or one per entry of `processes`
/// (reference 2.8), all from the machine's image and in the first one's root filesystem; the
/// first is named `app`, the others `app-2`, `app-3`…
fn image_processes(
    config: &MachineConfig,
    machine_env: Vec<(String, String)>,
    machine_checks: Vec<HealthcheckSpec>,
    stop_signal: Option<Signal>,
    stop_timeout: Duration,
) -> Vec<PlannedContainer> {
    let main = PlannedContainer {
        name: "app".into(),
        image: config.image.clone().unwrap_or_default(),
        exec: config.init.exec.clone(),
        entrypoint: config.init.entrypoint.clone(),
        cmd: config.init.cmd.clone(),
        user: None,
        env: machine_env,
        files: config.files.clone().unwrap_or_default(),
        stop_signal,
        stop_timeout,
        depends_on: Vec::new(),
        // Top-level `checks` (tcp/http) run in Pilot against the machine's network: they
        // report status and gate nothing (readiness only matters to the proxy).
        healthchecks: machine_checks,
        // The daemon applies the machine's restart policy by rebooting the machine.
        restart: RestartSpec::default(),
        mounts: Vec::new(),
        env_from: Vec::new(),
        rootfs_of: None,
        stops_machine: false,
        secrets: Vec::new(),
        ignore_app_secrets: false,
    };
    let processes = config.processes.as_deref().unwrap_or_default();
    if processes.is_empty() {
        return vec![main];
    }
    let multiple = processes.len() > 1;
    processes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let name = if i == 0 {
                "app".to_string()
            } else {
                format!("app-{}", i + 1)
            };
            PlannedContainer {
                name,
                image: main.image.clone(),
                // A process's command replaces init's the way init's replaces the image's.
                exec: p.exec.clone().or_else(|| main.exec.clone()),
                entrypoint: p.entrypoint.clone().or_else(|| main.entrypoint.clone()),
                cmd: p.cmd.clone().or_else(|| main.cmd.clone()),
                user: p.user.clone(),
                env: main
                    .env
                    .iter()
                    .cloned()
                    .chain(p.env.iter().flatten().map(|(k, v)| (k.clone(), v.clone())))
                    .collect(),
                env_from: env_from(p.env_from.as_ref()),
                files: main.files.clone(),
                stop_signal: main.stop_signal,
                stop_timeout: main.stop_timeout,
                depends_on: Vec::new(),
                // Machine checks run once, with the first process.
                healthchecks: if i == 0 {
                    main.healthchecks.clone()
                } else {
                    Vec::new()
                },
                restart: RestartSpec::default(),
                mounts: Vec::new(),
                rootfs_of: (i > 0).then(|| "app".to_string()),
                stops_machine: multiple,
                secrets: secret_pairs(p.secrets.as_ref()),
                ignore_app_secrets: p.ignore_app_secrets,
            }
        })
        .collect()
}

pub(crate) struct Volumes {
    pub(crate) dirs: HashMap<String, PathBuf>,
    /// Volumes that need a mount of their own (a sized tmpfs or disk image).
    pub(crate) mounts: Vec<VolumeMountPlan>,
}

/// Creates the machine's `temp_dir` volumes (`config.volumes`), shared by the containers
/// that mount them; `memory` ones become a tmpfs of `size_mb`, sized `disk` ones an ext4 image,
/// mounted when the sandbox is built.
pub(crate) fn prepare_volumes(
    config: &MachineConfig,
    dir: &Path,
    uid: u32,
) -> Result<Volumes, RuntimeError> {
    let mut out = Volumes {
        dirs: HashMap::new(),
        mounts: Vec::new(),
    };
    for v in config.volumes.iter().flatten() {
        let Some(t) = &v.temp_dir else { continue };
        // Validation admits only plain names; never let one reach outside the machine dir.
        if !hangar_api::validate::is_dir_safe_name(&v.name) {
            return Err(RuntimeError::Image(format!(
                "invalid volume name {:?}",
                v.name
            )));
        }
        let path = dir.join("volumes").join(&v.name);
        std::fs::create_dir_all(&path).map_err(failed)?;
        std::os::unix::fs::chown(&path, Some(uid), Some(uid)).map_err(failed)?;
        if t.storage_type.as_deref() == Some("memory") {
            out.mounts.push(VolumeMountPlan {
                target: path.clone(),
                size_mb: t.size_mb.filter(|s| *s > 0).unwrap_or(64) as u64,
                uid,
                disk_image: None,
                persistent_image: None,
            });
        } else if let Some(size_mb) = t.size_mb.filter(|s| *s > 0) {
            // A sized disk volume is a filesystem of its own, so it cannot fill the host's.
            let image = dir.join("volumes").join(format!(".{}.ext4", v.name));
            make_disk_image(&image, size_mb as u64, uid)?;
            out.mounts.push(VolumeMountPlan {
                target: path.clone(),
                size_mb: size_mb as u64,
                uid,
                disk_image: Some(image),
                persistent_image: None,
            });
        }
        out.dirs.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// A disk image of at least `size_mb` for a sized writable layer: made when missing; one
/// kept from an earlier boot (a persisted rootfs) is grown offline when the size went up.
/// Shrinking is not done: the data might not fit.
pub(crate) fn ensure_disk_image(image: &Path, size_mb: u64, uid: u32) -> Result<(), RuntimeError> {
    let want = size_mb.saturating_mul(1 << 20);
    let have = match std::fs::metadata(image) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return make_disk_image(image, size_mb, uid)
        }
        Err(e) => return Err(failed(e)),
    };
    if have >= want {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .and_then(|f| f.set_len(want))
        .map_err(failed)?;
    // resize2fs wants a freshly checked filesystem.
    for (tool, args) in [("e2fsck", &["-f", "-p"][..]), ("resize2fs", &[][..])] {
        let out = std::process::Command::new(system_tool(tool))
            .args(args)
            .arg(image)
            .output()
            .map_err(|e| failed(format!("{tool}: {e}")))?;
        // e2fsck exits 1 when it fixed something, which is fine here.
        let ok = out.status.success() || (tool == "e2fsck" && out.status.code() == Some(1));
        if !ok {
            return Err(failed(format!(
                "{tool} {}: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// A sparse file of `size_mb` formatted as ext4 whose root belongs to the machine's root.
fn make_disk_image(image: &Path, size_mb: u64, uid: u32) -> Result<(), RuntimeError> {
    let file = std::fs::File::create(image).map_err(failed)?;
    file.set_len(size_mb.saturating_mul(1 << 20))
        .map_err(failed)?;
    drop(file);
    let out = std::process::Command::new(system_tool("mkfs.ext4"))
        .args(["-q", "-F", "-m", "0", "-E"])
        .arg(format!("root_owner={uid}:{uid},nodiscard"))
        .arg(image)
        .output()
        .map_err(|e| failed(format!("mkfs.ext4: {e}")))?;
    if !out.status.success() {
        return Err(failed(format!(
            "mkfs.ext4 {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A machine-level check (`config.checks`, durations as Go durations) in Pilot's terms.
pub(crate) fn machine_check_spec(
    name: &str,
    c: &hangar_api::MachineCheck,
) -> Option<HealthcheckSpec> {
    let port = u16::try_from(c.port?).ok()?;
    let ms = |d: Option<hangar_api::GoDuration>, default: u64| {
        d.map_or(default, |d| d.as_duration().as_millis() as u64)
    };
    let probe = match c.kind_type.as_deref() {
        Some("http") => Probe::Http {
            port,
            method: c
                .method
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "GET".into()),
            path: c
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
            scheme: c
                .protocol
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "http".into()),
            headers: c
                .headers
                .iter()
                .flatten()
                .flat_map(|h| h.values.iter().map(|v| (h.name.clone(), v.clone())))
                .collect(),
            tls_skip_verify: c.tls_skip_verify.unwrap_or(false),
            tls_server_name: c.tls_server_name.clone().filter(|n| !n.is_empty()),
        },
        _ => Probe::Tcp { port },
    };
    Some(HealthcheckSpec {
        name: name.to_string(),
        kind: CheckKind::Readiness,
        stop_when_unhealthy: false,
        interval_ms: ms(c.interval, 15_000),
        timeout_ms: ms(c.timeout, 10_000),
        grace_period_ms: ms(c.grace_period, 0),
        success_threshold: 1,
        failure_threshold: 1,
        probe,
        machine_level: true,
    })
}

/// A container health check in Pilot's terms (times in ms; defaults for what is unset).
pub(crate) fn healthcheck_spec(
    i: usize,
    h: &hangar_api::ContainerHealthcheck,
) -> Option<HealthcheckSpec> {
    let secs =
        |v: Option<i64>, default: u64| v.map_or(default, |v| v.max(0) as u64).saturating_mul(1000);
    let probe = if let Some(t) = &h.tcp {
        Probe::Tcp {
            port: t.port as u16,
        }
    } else if let Some(http) = &h.http {
        Probe::Http {
            port: http.port as u16,
            method: http
                .method
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "GET".into()),
            path: http
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
            scheme: http
                .scheme
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "http".into()),
            headers: http
                .headers
                .iter()
                .flatten()
                .flat_map(|hd| hd.values.iter().map(|v| (hd.name.clone(), v.clone())))
                .collect(),
            tls_skip_verify: http.tls_skip_verify.unwrap_or(false),
            tls_server_name: http.tls_server_name.clone().filter(|n| !n.is_empty()),
        }
    } else {
        Probe::Exec {
            command: h.exec.as_ref()?.command.clone(),
        }
    };
    Some(HealthcheckSpec {
        name: h.name.clone().unwrap_or_else(|| format!("check-{i}")),
        kind: match h.kind.as_deref() {
            Some("liveness") => CheckKind::Liveness,
            _ => CheckKind::Readiness,
        },
        stop_when_unhealthy: h.unhealthy.as_deref() == Some("stop"),
        interval_ms: secs(h.interval, 10),
        timeout_ms: secs(h.timeout, 5),
        grace_period_ms: secs(h.grace_period, 0),
        success_threshold: h.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: h.failure_threshold.unwrap_or(3).max(1) as u32,
        probe,
        machine_level: false,
    })
}

/// Resolves command, environment, user and files of one container (reference 2.2 and 4.1).
pub(crate) fn container_process(
    m: &MachineRecord,
    c: &PlannedContainer,
    image: &hangar_image::ImageConfig,
    rootfs: &RootfsSpec,
    target: &Path,
    secrets: &SecretValues,
) -> Result<ContainerProcess, RuntimeError> {
    let argv = match &c.exec {
        Some(exec) if !exec.is_empty() => exec.clone(),
        _ => {
            let entrypoint = c
                .entrypoint
                .clone()
                .unwrap_or_else(|| image.entrypoint.clone());
            // An explicitly empty cmd means "use the image's".
            let cmd = match &c.cmd {
                Some(cmd) if !cmd.is_empty() => cmd.clone(),
                _ => image.cmd.clone(),
            };
            entrypoint.into_iter().chain(cmd).collect()
        }
    };
    if argv.is_empty() {
        return Err(RuntimeError::Image(format!(
            "container {}: the image has no entrypoint or cmd; set init.cmd or init.exec",
            c.name
        )));
    }
    let mut env: Vec<(String, String)> = image
        .env
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    fn set(env: &mut Vec<(String, String)>, k: &str, v: String) {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v));
    }
    for (k, v) in &c.env {
        set(&mut env, k, v.clone());
    }
    // App secrets override `env` of the same name; the platform's FLY_* below override both.
    for (k, v) in secret_env(m, c, secrets)? {
        set(&mut env, &k, v);
    }
    let guest = m.config.guest.clone().unwrap_or_default();
    set(&mut env, "FLY_APP_NAME", m.app.clone());
    set(&mut env, "FLY_MACHINE_ID", m.id.clone());
    set(&mut env, "FLY_ALLOC_ID", m.id.clone());
    set(&mut env, "FLY_REGION", m.region.clone());
    set(&mut env, "PRIMARY_REGION", m.region.clone());
    set(&mut env, "FLY_IMAGE_REF", c.image.clone());
    set(&mut env, "FLY_MACHINE_VERSION", m.instance_id.clone());
    set(&mut env, "FLY_PRIVATE_IP", m.private_ip.clone());
    set(&mut env, "FLY_VM_MEMORY_MB", guest.memory_mb.to_string());
    for (var, field) in &c.env_from {
        let value = match field.as_str() {
            "id" => m.id.clone(),
            "version" => m.instance_id.clone(),
            "app_name" => m.app.clone(),
            "private_ip" => m.private_ip.clone(),
            "region" => m.region.clone(),
            "image" => c.image.clone(),
            // Validation admits only the fields above.
            _ => continue,
        };
        set(&mut env, var, value);
    }
    if let Some(group) = m
        .config
        .metadata
        .as_ref()
        .and_then(|md| md.get("fly_process_group"))
    {
        set(&mut env, "FLY_PROCESS_GROUP", group.clone());
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        set(
            &mut env,
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    let user_spec = c
        .user
        .clone()
        .or_else(|| image.user.clone())
        .unwrap_or_default();
    let user = resolve_user(&user_spec, &rootfs.lowerdirs)?;
    // Docker's rule: HOME from the user's passwd entry unless the image or config set one.
    if !env.iter().any(|(k, _)| k == "HOME") {
        set(&mut env, "HOME", user.home.clone());
    }
    let hostname = hostname(&m.config, &m.id);
    let names = match m
        .config
        .dns
        .as_ref()
        .and_then(|d| d.hostname_fqdn.as_deref())
        .filter(|f| !f.is_empty() && *f != hostname)
    {
        Some(fqdn) => format!("{fqdn} {hostname}"),
        None => hostname.clone(),
    };
    let mut files = vec![
        ContainerFile {
            path: "/etc/hostname".into(),
            content: format!("{hostname}\n").into_bytes(),
            mode: 0o644,
        },
        ContainerFile {
            path: "/etc/hosts".into(),
            content: format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\tfly-local-6pn\n{}127.0.1.1\t{names}\n",
                m.private_ip,
                // Where UDP services' datagrams arrive (the proxy relays them to this address).
                if m.private_ipv4.is_empty() {
                    String::new()
                } else {
                    format!("{}\tfly-global-services\n", m.private_ipv4)
                }
            )
            .into_bytes(),
            mode: 0o644,
        },
        ContainerFile {
            path: "/etc/resolv.conf".into(),
            content: resolv_conf(m.config.dns.as_ref()).into_bytes(),
            mode: 0o644,
        },
    ];
    for f in &c.files {
        let content = match (&f.raw_value, &f.secret_name, &f.image_config) {
            (Some(raw), _, _) => hangar_api::BASE64
                .decode(raw)
                .map_err(|e| RuntimeError::Image(format!("file {}: {e}", f.guest_path)))?,
            (_, Some(secret), _) => {
                let value = secrets.get(secret).ok_or_else(|| {
                    RuntimeError::Unsupported(format!(
                        "file {}: app secret {secret} does not exist (it was unset after the machine was configured)",
                        f.guest_path
                    ))
                })?;
                hangar_api::BASE64.decode(value.trim()).map_err(|_| {
                    RuntimeError::Unsupported(format!(
                        "file {}: app secret {secret} is not valid base64",
                        f.guest_path
                    ))
                })?
            }
            (_, _, Some(_)) => serde_json::to_vec_pretty(image).map_err(failed)?,
            _ => continue,
        };
        files.push(ContainerFile {
            path: f.guest_path.clone(),
            content,
            mode: f.mode.unwrap_or(0o644),
        });
    }
    Ok(ContainerProcess {
        rootfs: target.to_path_buf(),
        argv,
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd: image
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        uid: user.uid,
        gid: user.gid,
        additional_gids: user.groups,
        files,
        binds: Vec::new(),
    })
}

/// The app secrets that become environment variables of container `c`: its own `secrets` list
/// when it has one; otherwise, unless the process ignores app secrets or the machine was made
/// with `skip_secrets`, every app secret except those the machine writes as files (a file
/// secret is in its file, not also in the env).
fn secret_env(
    m: &MachineRecord,
    c: &PlannedContainer,
    secrets: &SecretValues,
) -> Result<Vec<(String, String)>, RuntimeError> {
    if !c.secrets.is_empty() {
        return c
            .secrets
            .iter()
            .map(|(var, name)| {
                secrets
                    .get(name)
                    .map(|v| (var.clone(), v.to_string()))
                    .ok_or_else(|| {
                        RuntimeError::Unsupported(format!(
                            "container {}: app secret {name} (for {var}) does not exist",
                            c.name
                        ))
                    })
            })
            .collect();
    }
    if c.ignore_app_secrets || m.skip_secrets {
        return Ok(Vec::new());
    }
    let as_files: std::collections::HashSet<String> = secret_references(&m.config)
        .files
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    Ok(secrets
        .iter()
        .filter(|(name, _)| !as_files.contains(*name))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect())
}

/// The machine's host name: `dns.hostname`, else its id.
pub(crate) fn hostname(config: &MachineConfig, id: &str) -> String {
    config
        .dns
        .as_ref()
        .and_then(|d| d.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| id.to_string())
}

/// `/etc/resolv.conf` from `dns`: its nameservers (default Fly's `fdaa::3`), search domains and
/// options.
fn resolv_conf(dns: Option<&hangar_api::DnsConfig>) -> String {
    let mut out = String::new();
    let servers: Vec<&str> = dns
        .and_then(|d| d.nameservers.as_ref())
        .map(|n| n.iter().map(String::as_str).collect())
        .filter(|n: &Vec<&str>| !n.is_empty())
        .unwrap_or_else(|| vec!["fdaa::3"]);
    for ns in servers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if let Some(searches) = dns
        .and_then(|d| d.searches.as_ref())
        .filter(|s| !s.is_empty())
    {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    let options: Vec<String> = dns
        .and_then(|d| d.options.as_ref())
        .into_iter()
        .flatten()
        .map(|o| match &o.value {
            Some(v) if !v.is_empty() => format!("{}:{v}", o.name),
            _ => o.name.clone(),
        })
        .collect();
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// `user`, `uid`, `user:group` or `uid:gid`, names looked up in the image's /etc/passwd and
/// /etc/group (the topmost layer that has the file wins).
pub(crate) fn resolve_user(spec: &str, layers: &[PathBuf]) -> Result<User, RuntimeError> {
    let spec = if spec.is_empty() { "0" } else { spec };
    // Each layer is read as a root of its own: a symlinked /etc/passwd resolves inside the
    // layer, never against the host's files.
    let read = |file: &str| {
        layers
            .iter()
            .find_map(|l| {
                hangar_sandbox::in_root::InRoot::open(l)
                    .ok()?
                    .read_file(&format!("etc/{file}"), hangar_sandbox::user::MAX_DB_BYTES)
                    .ok()
                    .flatten()
            })
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let user = hangar_sandbox::user::lookup(spec, &read("passwd"), &read("group"))
        .map_err(|e| RuntimeError::Image(format!("in the image: {e}")))?;
    if user.uid >= UID_RANGE || user.gid >= UID_RANGE || user.groups.iter().any(|&g| g >= UID_RANGE)
    {
        return Err(RuntimeError::Image(format!(
            "user {spec:?} is outside the machine's id range"
        )));
    }
    Ok(user)
}

/// The secrets a config names: `(guest path, secret)` of its files and `(field, secret)` of its
/// containers' and processes' `secrets`.
#[derive(Default)]
pub(crate) struct SecretReferences {
    pub(crate) files: Vec<(String, String)>,
    pub(crate) env: Vec<(String, String)>,
}

pub(crate) fn secret_references(config: &MachineConfig) -> SecretReferences {
    let mut refs = SecretReferences::default();
    let mut files = |list: Option<&Vec<hangar_api::File>>| {
        for f in list.into_iter().flatten() {
            if let Some(name) = &f.secret_name {
                refs.files.push((f.guest_path.clone(), name.clone()));
            }
        }
    };
    files(config.files.as_ref());
    for c in config.containers.iter().flatten() {
        files(c.files.as_ref());
    }
    for (i, c) in config.containers.iter().flatten().enumerate() {
        for (j, s) in c.secrets.iter().flatten().enumerate() {
            refs.env.push((
                format!("containers[{i}].secrets[{j}]"),
                s.secret_name().to_string(),
            ));
        }
    }
    for (i, p) in config.processes.iter().flatten().enumerate() {
        for (j, s) in p.secrets.iter().flatten().enumerate() {
            refs.env.push((
                format!("processes[{i}].secrets[{j}]"),
                s.secret_name().to_string(),
            ));
        }
    }
    refs
}
