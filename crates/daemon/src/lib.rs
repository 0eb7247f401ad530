//! The Hangar daemon: serves the Fly Machines API over a unix socket (and optionally TCP),
//! drives each machine's state machine and keeps everything in the store.

mod backhaul;
mod capacity;
mod clock;
mod cluster_tls;
mod console;
mod container_plan;
mod convert;
mod counters;
mod error;
mod extract;
mod forward;
mod host_network;
mod hosts;
mod images;
mod log_archive;
mod logs;
mod machine_views;
mod metrics;
pub mod openapi;
mod peers;
mod routes;
pub mod runtime;
pub mod sandbox_runtime;
mod server;
pub mod service;
mod services;
mod uid_slots;
mod upgrade;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use hangar_store::SqliteStore;
use tokio::net::{TcpListener, UnixListener};

pub use capacity::{DEFAULT_CPU_OVERCOMMIT, DEFAULT_MEMORY_OVERCOMMIT};
pub use sandbox_runtime::DEFAULT_WARM_SANDBOXES;
pub use server::router;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/hangar";
pub const DEFAULT_SOCKET: &str = "/run/hangar/api.sock";
/// Name of the admin token file inside the data dir (mode 0600).
pub const TOKEN_FILE: &str = "token";
/// Region reported for machines created without one; one host is one region.
pub const DEFAULT_REGION: &str = "local";

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub data_dir: PathBuf,
    /// Where the state lives: `None` for the embedded SQLite in the data dir, or a
    /// `postgres://…` URL for a store shared by the hosts of a cluster.
    pub store_url: Option<String>,
    /// This host's name in the store (`None`: the host name).
    pub host_id: Option<String>,
    /// This host's region (`None`: [`DEFAULT_REGION`]).
    pub region: Option<String>,
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    /// Registries (`host[:port]`) to pull from over plain HTTP; loopback ones always are.
    pub insecure_registries: Vec<String>,
    /// Pull images that are not in the store (`--pull missing`, the default); off, machines
    /// run only images already imported or pulled (`--pull never`).
    pub pull: bool,
    /// How long a destroyed machine's logs stay readable (zero: not kept).
    pub log_retention: std::time::Duration,
    /// Admission: CPUs and memory the machines may reserve, as multiples of the host's
    /// (crate::capacity).
    pub cpu_overcommit: f64,
    pub memory_overcommit: f64,
    /// Machine networking (bridges, veths, firewall, the `.internal` resolver); off leaves
    /// machines with loopback only.
    pub network: bool,
    /// Let machines open connections beyond the host (masqueraded); off by default.
    pub egress: bool,
    /// Where the resolver sends names outside `.internal`; `None`: the host's resolv.conf.
    pub dns_upstreams: Option<Vec<SocketAddr>>,
    /// Addresses the proxy opens every service's edge ports on (needs networking).
    pub proxy_binds: Vec<std::net::IpAddr>,
    /// Host addresses the proxy may dedicate to one app each (IP assignments).
    pub proxy_ip_pool: Vec<std::net::IpAddr>,
    /// HTTP services are also routed by `Host: <app>.<domain>`.
    pub proxy_domain: String,
    /// How long a machine with `autostop` must be idle before the proxy stops it.
    pub autostop_after: std::time::Duration,
    /// PEM certificate chain and key the proxy's `tls` handler serves (else self-signed per app).
    pub proxy_tls: Option<(PathBuf, PathBuf)>,
    /// Where `/metrics` is served (opt-in).
    pub metrics_listen: Option<SocketAddr>,
    /// Remount the host's cgroup2 tree with `favordynmods` (faster machine starts on pure v2; see
    /// hangar_sandbox::cgroup::favor_dynmods for the trade-off).
    pub favor_dynmods: bool,
    /// Sandboxes kept made ahead for the next starts (crate::sandbox_runtime::warm); 0: none.
    pub warm_sandboxes: usize,
    /// The proxy's client-side limits.
    pub proxy_idle_timeout: std::time::Duration,
    pub proxy_max_header_bytes: usize,
    pub proxy_max_connections: usize,
    /// Threads serving proxied connections; 0: one per CPU.
    pub proxy_workers: usize,
    /// The key app secrets are sealed with; `None`: `secrets.key` in the data dir, created at
    /// first start.
    pub secrets_key_file: Option<PathBuf>,
    /// Let `show_secrets=true` return values to the admin token (off: write-only, as on Fly).
    pub secrets_readable: bool,
    /// The group whose members may use the API socket and read the token (`None`: `hangar`
    /// when that group exists, else root's only).
    pub socket_group: Option<String>,
}

/// How often volumes' snapshots and destroyed volumes are swept.
const VOLUME_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs `pass` every `period` in the background, the first a period from now; a failed pass is
/// logged and the next runs as planned.
fn every<F, Fut>(period: std::time::Duration, what: &'static str, pass: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), service::ServiceError>> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tick.tick().await;
            if let Err(e) = pass().await {
                tracing::warn!(error = %e, "{what} failed");
            }
        }
    });
}

/// The cluster overlay, in cluster mode with a `--listen` address other hosts can reach: its
/// address is where this host's overlay packets come from.
fn overlay(cluster: bool, listen: Option<std::net::SocketAddr>) -> Option<host_network::Overlay> {
    let local = listen?.ip();
    if !cluster || local.is_loopback() || local.is_unspecified() {
        return None;
    }
    Some(host_network::Overlay { local })
}

/// Points the overlay at the cluster's other hosts (their API addresses).
async fn update_overlay_peers(
    hosts: Vec<String>,
    net: Arc<host_network::HostNetwork>,
) -> Result<(), service::ServiceError> {
    let peers: Vec<std::net::IpAddr> = hosts
        .into_iter()
        .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip())
        .collect();
    tokio::task::spawn_blocking(move || net.set_peers(peers))
        .await
        .map_err(|e| service::ServiceError::internal(e.to_string()))?
        .map_err(|e| service::ServiceError::internal(format!("updating the overlay: {e:#}")))
}

/// The store's record of which key sealed its secrets.
const SECRETS_KEY_SETTING: &str = "secrets_key_id";

/// The secrets key: the file given, or the data dir's (created at first start). A daemon never
/// starts with a key other than the one the store's secrets were sealed with, and never makes
/// a new key for a store that had one: either would lose every secret without a word.
fn load_secrets_key(
    opts: &DaemonOptions,
    store: &dyn hangar_store::Store,
) -> anyhow::Result<hangar_secrets::SecretsKey> {
    let path = opts
        .secrets_key_file
        .clone()
        .unwrap_or_else(|| hangar_secrets::default_key_path(&opts.data_dir));
    let recorded = store
        .setting(SECRETS_KEY_SETTING)
        .context("reading the secrets key id from the store")?;
    let key = if path.exists() {
        hangar_secrets::SecretsKey::load(&path)?
    } else if let Some(id) = &recorded {
        anyhow::bail!(
            "secrets key file {} is missing, but the store's secrets are sealed with key {id}: \
             restore that file (or name it with --secrets-key-file); starting without it would \
             lose every app secret",
            path.display()
        );
    } else if opts.secrets_key_file.is_some() {
        anyhow::bail!(
            "secrets key file {} does not exist (leave --secrets-key-file out to have one \
             created in the data dir)",
            path.display()
        );
    } else {
        let key = hangar_secrets::SecretsKey::create(&path)?;
        eprintln!(
            "hangar: generated the secrets key in {} (keep a copy: secrets cannot be read without it)",
            path.display()
        );
        key
    };
    let id = store
        .setting_or_init(SECRETS_KEY_SETTING, key.id())
        .context("recording the secrets key id")?;
    if id != key.id() {
        anyhow::bail!(
            "secrets key file {} holds key {}, but the store's secrets are sealed with key {id}: \
             start with the key file this store was made with",
            path.display(),
            key.id()
        );
    }
    Ok(key)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(mut opts: DaemonOptions) -> anyhow::Result<()> {
    // Every path the daemon derives from it is then absolute: a sandbox helper resolves
    // machines' paths after entering their mount namespace, where the daemon's working
    // directory means nothing (`--data-dir ./data`).
    opts.data_dir = std::path::absolute(&opts.data_dir)
        .with_context(|| format!("resolving the data dir {}", opts.data_dir.display()))?;
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("failed to create data dir {}", opts.data_dir.display()))?;
    // The lock comes first: a second daemon that is refused must not touch anything here
    // (its chmod once made the running daemon's machines unreachable).
    let _lock = server::lock_data_dir(&opts.data_dir)?;
    std::fs::set_permissions(&opts.data_dir, std::fs::Permissions::from_mode(0o700))?;

    let token_path = opts.data_dir.join(TOKEN_FILE);
    let (token, created) = server::load_or_create_token(&token_path)?;
    if created {
        eprintln!(
            "hangar: generated the admin API token in {}",
            token_path.display()
        );
    } else {
        eprintln!("hangar: admin API token is in {}", token_path.display());
    }

    let cluster = opts.store_url.as_deref().is_some_and(is_postgres_url);
    if cluster {
        // Other hosts forward requests to this one at the address it registers.
        match opts.listen {
            None => eprintln!(
                "hangar: warning: cluster mode without --listen: other hosts cannot forward \
                 requests for this host's machines to it"
            ),
            Some(a) if a.ip().is_unspecified() => anyhow::bail!(
                "--listen {a}: in cluster mode other hosts dial this address, so give the \
                 host's own address (not {})",
                a.ip()
            ),
            Some(_) => {}
        }
    }
    let store = open_store(&opts).await?;
    // Store calls block (PostgreSQL's client drives its own runtime): off the async workers.
    let secrets_key = {
        let (opts, store) = (opts.clone(), store.clone());
        tokio::task::spawn_blocking(move || load_secrets_key(&opts, store.as_ref())).await??
    };
    let host_id = opts.host_id.clone().unwrap_or_else(host_id);
    let region = opts
        .region
        .clone()
        .unwrap_or_else(|| DEFAULT_REGION.to_string());
    let volumes = hangar_volumes::VolumeDir::open(opts.data_dir.join("volumes"))
        .context("failed to open the volumes dir")?;
    let disk_gb = volumes.capacity().map_or(0, |b| (b >> 30) as i64);
    let (exits_tx, mut exits_rx) = tokio::sync::mpsc::unbounded_channel();
    let images_dir = opts.data_dir.join("images");
    let image_store =
        tokio::task::spawn_blocking(move || hangar_image::ImageStore::open(images_dir))
            .await?
            .context("failed to open the image store")?;
    let image_store = Arc::new(image_store);
    let metrics = Arc::new(counters::DaemonMetrics::default());
    let mut pull = hangar_image::PullOptions {
        allowed: opts.pull,
        progress: Some(counters::counting_pull_bytes(
            metrics.image_pull_bytes.clone(),
        )),
        ..Default::default()
    };
    for registry in &opts.insecure_registries {
        pull.registry.registries.insert(
            registry.clone(),
            hangar_image::RegistryConfig {
                insecure: Some(true),
                ..Default::default()
            },
        );
    }
    // Machine networking, when this daemon runs machines with it (the overlay's peers are
    // kept current below).
    let mut host_net: Option<Arc<host_network::HostNetwork>> = None;
    let runtime: Arc<dyn runtime::Runtime> = if std::env::var("HANGAR_RUNTIME").as_deref()
        == Ok("none")
    {
        eprintln!("hangar: HANGAR_RUNTIME=none: machines are stored but never started");
        Arc::new(runtime::NoRuntime)
    } else {
        // Pilots are grandchildren of the daemon; as a subreaper it inherits (and reaps) them.
        // SAFETY: prctl with constant arguments.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            anyhow::bail!(
                "prctl(PR_SET_CHILD_SUBREAPER): {}",
                std::io::Error::last_os_error()
            );
        }
        sandbox_runtime::watch_spawner();
        if opts.favor_dynmods {
            match hangar_sandbox::cgroup::favor_dynmods() {
                Ok(changed) if !changed.is_empty() => eprintln!(
                    "hangar: cgroup2 mounts now favor dynamic changes (favordynmods): {}",
                    changed
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not turn on favordynmods"),
            }
        }
        let net = if opts.network {
            let net = Arc::new(host_network::HostNetwork::set_up(
                opts.egress,
                overlay(cluster, opts.listen),
            )?);
            host_net = Some(net.clone());
            Some(net)
        } else {
            eprintln!("hangar: machine networking is off: machines have loopback only");
            None
        };
        sandbox_runtime::SandboxRuntime::new(&opts.data_dir, image_store.clone(), pull.clone(), exits_tx, sandbox_runtime::RuntimeSettings {
            log_retention: opts.log_retention,
            net,
            volumes: volumes.clone(),
            warm_sandboxes: opts.warm_sandboxes,
        })
            .context("the machine sandbox is not usable on this host (set HANGAR_RUNTIME=none to run without it)")?
    };
    let hangar = tokio::task::block_in_place(|| {
        service::Hangar::new(
            store,
            runtime,
            region.clone(),
            Some(service::Images {
                store: image_store,
                pull,
            }),
            capacity::Ledger::new(capacity::HostCapacity::detect(
                opts.cpu_overcommit,
                opts.memory_overcommit,
            )),
            host_id,
            service::SecretsConfig {
                key: Arc::new(secrets_key),
                readable: opts.secrets_readable,
            },
            Some(volumes),
            metrics,
            cluster,
        )
    })
    .context("failed to read this host's network settings from the store")?;

    {
        let hangar = hangar.clone();
        tokio::spawn(async move {
            while let Some(event) = exits_rx.recv().await {
                match event {
                    runtime::RuntimeEvent::Exited(exit) => {
                        let hangar = hangar.clone();
                        tokio::spawn(async move { hangar.on_exit(exit).await });
                    }
                    // In order, on this task: container events are quick appends.
                    runtime::RuntimeEvent::Container(ev) => hangar.on_container_event(ev).await,
                }
            }
        });
    }
    if cluster {
        // Hosts call each other over TLS under a CA derived from the shared key (a host with
        // no --listen still calls the others).
        let ip = opts
            .listen
            .map_or(std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST), |a| {
                a.ip()
            });
        hangar
            .enable_cluster_tls(ip)
            .context("setting up TLS between the cluster's hosts")?;
    }
    // This host in the store, with what it offers; then a heartbeat, so that other hosts
    // (and `hangar hosts list`) see it alive.
    {
        let capacity = capacity::HostCapacity::detect(1.0, 1.0);
        hangar
            .register_host(service::HostOffer {
                cpus: i64::from(capacity.cpus),
                memory_mb: i64::try_from(capacity.memory_mb).unwrap_or(i64::MAX),
                disk_gb,
                api_addr: opts.listen.map(|a| a.to_string()).unwrap_or_default(),
                instance: host_instance(&opts.data_dir)?,
            })
            .await
            .context("failed to register this host in the store")?;
        let h = hangar.clone();
        every(service::HEARTBEAT_INTERVAL, "heartbeat", move || {
            let h = h.clone();
            async move {
                h.heartbeat().await?;
                h.start_standbys().await
            }
        });
        if cluster {
            // What other hosts run, for this host's resolver and overlay.
            let h = hangar.clone();
            let net = host_net.clone();
            every(
                service::OTHER_HOSTS_REFRESH,
                "reading the other hosts",
                move || {
                    let (h, net) = (h.clone(), net.clone());
                    async move {
                        let hosts = h.refresh_from_other_hosts().await?;
                        match net {
                            Some(net) => update_overlay_peers(hosts, net).await,
                            None => Ok(()),
                        }
                    }
                },
            );
        }
    }
    // Background chores, each a pass every period (the first a period after start-up, so
    // that start-up reconciliation runs first).
    {
        let h = hangar.clone();
        every(
            service::AUTO_EXTEND_INTERVAL,
            "volume auto-extend pass",
            move || {
                let h = h.clone();
                async move { h.auto_extend_volumes().await }
            },
        );
        // Schedules fire (service::scheduler).
        let h = hangar.clone();
        every(service::SCHEDULER_TICK, "scheduler pass", move || {
            let h = h.clone();
            async move { h.run_schedules(clock::now_ms()).await }
        });
        // Snapshot retention, daily snapshots, purging destroyed volumes.
        let h = hangar.clone();
        every(VOLUME_SWEEP_INTERVAL, "volume sweep", move || {
            let h = h.clone();
            async move { h.sweep_volumes().await }
        });
    }
    {
        // Destroyed machines' logs expire (crate::log_archive).
        let archive = log_archive::archive_dir(&opts.data_dir.join("machines"));
        let retention = opts.log_retention;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(log_archive::SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                let archive = archive.clone();
                let _ =
                    tokio::task::spawn_blocking(move || log_archive::prune(&archive, retention))
                        .await;
            }
        });
    }
    let networked = opts.network && std::env::var("HANGAR_RUNTIME").as_deref() != Ok("none");
    hangar.attach_proxy(hangar_proxy::ProxyConfig {
        // Without networking the proxy cannot reach machines: it keeps its table (edge port
        // claims are checked the same way) and opens nothing.
        binds: if networked {
            opts.proxy_binds.clone()
        } else {
            Vec::new()
        },
        domain: opts.proxy_domain.clone(),
        ip_pool: if networked {
            opts.proxy_ip_pool.clone()
        } else {
            Vec::new()
        },
        region: region.clone(),
        autostop_after: opts.autostop_after,
        queue_timeout: std::time::Duration::from_secs(5),
        connect_timeout: std::time::Duration::from_secs(10),
        idle_timeout: opts.proxy_idle_timeout,
        max_header_bytes: opts.proxy_max_header_bytes,
        max_connections: opts.proxy_max_connections,
        workers: opts.proxy_workers,
        tls_cert: match &opts.proxy_tls {
            Some((cert, key)) => Some(
                hangar_proxy::tls::CertKey::from_pem_files(cert, key)
                    .context("the proxy's TLS certificate")?,
            ),
            None => None,
        },
    });
    hangar
        .load_ip_assignments()
        .await
        .map_err(|e| anyhow::anyhow!("loading the apps' IP assignments failed: {e}"))?;
    hangar
        .load_certificates()
        .await
        .map_err(|e| anyhow::anyhow!("loading the apps' certificates failed: {e}"))?;
    hangar
        .reconcile()
        .await
        .map_err(|e| anyhow::anyhow!("reconciling machines failed: {e}"))?;
    if networked {
        let upstreams = match &opts.dns_upstreams {
            Some(u) => u.clone(),
            None => hangar_dns::host_upstreams(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
        };
        let addr = SocketAddr::new(hangar_net::RESOLVER.into(), 53);
        hangar_dns::Resolver::new(hangar.directory(), upstreams)
            .serve(addr)
            .await
            .with_context(|| format!("failed to serve the machines' resolver on {addr}"))?;
    }
    let runtime = hangar.runtime();
    if let Some(addr) = opts.metrics_listen {
        metrics::serve(addr, hangar.clone()).await?;
    }
    let cluster_tls = hangar.cluster_tls().cloned();
    let app = router(hangar, Arc::from(token.as_str()));

    // The handlers are in place before anyone can reach the API: a SIGTERM that arrives as
    // soon as the socket answers is a clean shutdown, not the default kill.
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let unix = bind_unix(&opts.socket).await?;
    share_with_group(opts.socket_group.as_deref(), &opts.socket, &token_path)?;
    eprintln!(
        "hangar: serving the Machines API on unix://{}",
        opts.socket.display()
    );
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    {
        let app = app.clone();
        let mut rx = shutdown_rx.clone();
        servers.spawn(async move {
            axum::serve(unix, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        });
    }
    if let Some(addr) = opts.listen {
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to listen on {addr}"))?;
        eprintln!(
            "hangar: serving the Machines API on http://{}{}",
            tcp.local_addr()?,
            if cluster_tls.is_some() {
                " (and TLS for the cluster's hosts)"
            } else {
                ""
            }
        );
        let listener = cluster_tls::ApiListener::new(tcp, cluster_tls.clone())?;
        let mut rx = shutdown_rx.clone();
        servers.spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<cluster_tls::Peer>(),
            )
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        });
    }

    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
        Some(res) = servers.join_next() => {
            res.context("server task failed")?.context("server failed")?;
        }
    }
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    while let Some(res) = servers.join_next().await {
        if let Err(e) = res {
            tracing::warn!(error = %e, "server task ended badly");
        }
    }
    runtime.shut_down().await;
    let _ = std::fs::remove_file(&opts.socket);
    eprintln!("hangar: stopped");
    Ok(())
}

/// This installation's instance id, made at its first start and kept in the data dir: what
/// tells two daemons given the same host id apart.
fn host_instance(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("host-instance");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
    let id = format!("{:016x}", rand::random::<u64>());
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The store `opts` names: the embedded SQLite in the data dir, or PostgreSQL.
async fn open_store(opts: &DaemonOptions) -> anyhow::Result<Arc<dyn hangar_store::Store>> {
    match opts.store_url.as_deref() {
        None | Some("") | Some("sqlite") => {
            let db_path = opts.data_dir.join("state.db");
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&db_path))
                .await?
                .context("failed to open the state store")?;
            Ok(Arc::new(store))
        }
        Some(url) if is_postgres_url(url) => {
            let url = url.to_string();
            let store =
                tokio::task::spawn_blocking(move || hangar_store_postgres::PgStore::connect(&url))
                    .await?
                    .context("failed to open the PostgreSQL store")?;
            eprintln!("hangar: state is in PostgreSQL (shared with the cluster's hosts)");
            Ok(Arc::new(store))
        }
        // The value is not echoed: a mistyped URL may still carry a password.
        Some(_) => anyhow::bail!(
            "unsupported --store: give a postgres:// (or postgresql://) URL, or leave --store \
             out for the embedded SQLite"
        ),
    }
}

/// This host's id in machine rows when `--host-id` is not given: its host name.
fn host_id() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_string())
}

/// Gives the API socket (0660) and the token (0640) to `group` (or to `hangar` when it exists
/// and no group is named), so its members can use the CLI without root.
fn share_with_group(
    group: Option<&str>,
    socket: &std::path::Path,
    token: &std::path::Path,
) -> anyhow::Result<()> {
    let found = match group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .context("looking up the socket group")?
                .with_context(|| format!("--socket-group {name}: no such group"))?,
        ),
        None => nix::unistd::Group::from_name("hangar").ok().flatten(),
    };
    let Some(g) = found else {
        return Ok(());
    };
    for (path, mode) in [(socket, 0o660), (token, 0o640)] {
        std::os::unix::fs::lchown(path, None, Some(g.gid.as_raw()))
            .with_context(|| format!("giving {} to group {}", path.display(), g.name))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    eprintln!(
        "hangar: members of group {} may use {}",
        g.name,
        socket.display()
    );
    Ok(())
}

async fn bind_unix(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    if path.exists() {
        // A live socket belongs to another daemon (with another data dir); a dead one is stale.
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another hangar daemon is already serving {}; stop it or use --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("failed to remove stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("failed to bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}
