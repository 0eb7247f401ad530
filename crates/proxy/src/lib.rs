//! The edge proxy: what turns a machine's `services` into something reachable.
//!
//! It runs inside the daemon (see docs/decisions.md, "The proxy"): the daemon tells it every
//! machine's state and services as they change ([`Proxy::put`], [`Proxy::remove`]), and it
//! asks the daemon to start, stop or suspend machines ([`Controller`]).
//!
//! - [`table`]: services by edge port, from the machines' configs.
//! - [`listen`]: the listeners on every `--proxy-bind` address, following the table.
//! - [`route`]: choosing a machine (load bands, autostart).
//! - [`http`], [`tls`], `pg_tls` and [`tcp`]: the handlers; `udp`: UDP services.
//! - [`autostop`]: stopping or suspending idle machines.
//! - [`metrics`]: the Prometheus metrics; `sharded`: those counted per request, per worker.
//! - [`upstream`]: connections to machines, on this host or (cluster mode) through the host
//!   that runs them.

pub mod autostop;
pub mod checks;
pub mod http;
pub mod listen;
pub mod metrics;
mod pg_tls;
pub mod route;
mod sharded;
pub mod status;
pub mod table;
pub mod tcp;
pub mod tls;
mod udp;
pub mod upstream;
mod workers;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use table::{MachineView, Table};

/// What the proxy asks of the daemon.
#[async_trait::async_trait]
pub trait Controller: Send + Sync + 'static {
    /// Starts a stopped machine or resumes a suspended one; returns once it is `started`.
    async fn start(&self, app: &str, id: &str) -> Result<(), String>;
    /// Stops (or, with `suspend`, suspends) an idle machine.
    async fn stop(&self, app: &str, id: &str, suspend: bool) -> Result<(), String>;
    /// Connects to `target`, a port of a machine another host runs, through that host (`via`:
    /// the machine's [`MachineView::via`]).
    async fn backhaul(
        &self,
        via: &str,
        target: &upstream::Backhaul<'_>,
    ) -> std::io::Result<Box<dyn upstream::Io>>;
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Addresses every edge port is opened on.
    pub binds: Vec<IpAddr>,
    /// Host addresses that can be dedicated to one app each (IP assignments).
    pub ip_pool: Vec<IpAddr>,
    /// `<app>.<domain>` routes HTTP by `Host` when several apps share a port.
    pub domain: String,
    /// The region reported in `Fly-Region` and `Fly-Request-Id`.
    pub region: String,
    /// How long a machine must be idle before autostop stops it.
    pub autostop_after: Duration,
    /// How long a request waits for a machine below its hard limit before a 503.
    pub queue_timeout: Duration,
    /// How long a freshly started machine has to start listening.
    pub connect_timeout: Duration,
    /// The certificate the `tls` handler serves; `None`: a self-signed one per app.
    pub tls_cert: Option<tls::CertKey>,
    /// A client connection that sends no request head for this long is closed.
    pub idle_timeout: Duration,
    /// The largest request head (line and headers) accepted; bigger ones get a 431.
    pub max_header_bytes: usize,
    /// Client connections open at once, across every edge port; past it, new ones wait.
    pub max_connections: usize,
    /// Threads serving client connections (see [`workers`]); 0: one per CPU.
    pub workers: usize,
}

impl ProxyConfig {
    /// The defaults: 60 s idle, 64 KiB heads, 10,000 connections.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
}

/// The proxy: its table, its listeners and the load of every machine.
pub struct Proxy {
    pub config: ProxyConfig,
    /// Replaced as a whole on each change; requests take a snapshot (an `Arc` clone, or a
    /// worker thread's copy: [`Proxy::with_table`]).
    table: RwLock<Arc<Table>>,
    /// Counts the table's changes (bumped under its write lock).
    table_version: AtomicU64,
    /// Tells this proxy's tables from another's in a thread's copy.
    id: u64,
    controller: Arc<dyn Controller>,
    load: route::Load,
    listeners: listen::Listeners,
    udp_listeners: listen::Listeners,
    /// Addresses dedicated to one app (its IP assignments): its edge ports open there too, and
    /// its raw TCP ports only there.
    dedicated: Mutex<std::collections::BTreeMap<IpAddr, String>>,
    /// Wakes the listener sync and request queues when the table changes.
    changed: tokio::sync::Notify,
    pub(crate) certificates: tls::Certificates,
    health: checks::Health,
    pub metrics: metrics::Metrics,
    connections: Arc<tokio::sync::Semaphore>,
    workers: workers::Workers,
    /// `Fly-Region`, made once.
    region_value: Option<hyper::header::HeaderValue>,
    /// The daemon's runtime, where the daemon's own work runs when a request asks for it.
    main: Option<tokio::runtime::Handle>,
}

impl Proxy {
    pub fn new(config: ProxyConfig, controller: Arc<dyn Controller>) -> Arc<Proxy> {
        Arc::new(Proxy {
            table: RwLock::new(Arc::new(Table::default())),
            table_version: AtomicU64::new(0),
            id: {
                static PROXIES: AtomicU64 = AtomicU64::new(0);
                PROXIES.fetch_add(1, Ordering::Relaxed)
            },
            controller,
            load: route::Load::default(),
            listeners: Mutex::new(HashMap::new()),
            udp_listeners: Mutex::new(HashMap::new()),
            dedicated: Mutex::new(std::collections::BTreeMap::new()),
            changed: tokio::sync::Notify::new(),
            certificates: tls::Certificates::new(config.tls_cert.clone()),
            health: checks::Health::default(),
            metrics: metrics::Metrics::default(),
            connections: Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1))),
            workers: workers::Workers::start(match config.workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            }),
            main: tokio::runtime::Handle::try_current().ok(),
            region_value: hyper::header::HeaderValue::from_str(&config.region).ok(),
            config,
        })
    }

    /// Adds or replaces a machine (after every write of it) and opens or closes listeners.
    pub fn put(self: &Arc<Self>, m: MachineView) {
        let id = m.id.clone();
        let started = m.started;
        {
            let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
            Arc::make_mut(&mut table).put(m);
            self.table_version.fetch_add(1, Ordering::Release);
        }
        self.load.state_changed(&id, started);
        self.changed.notify_waiters();
        self.sync_listeners();
    }

    pub fn remove(self: &Arc<Self>, id: &str) {
        {
            let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
            Arc::make_mut(&mut table).remove(id);
            self.table_version.fetch_add(1, Ordering::Release);
        }
        self.load.forget(id);
        self.health.forget(id);
        self.changed.notify_waiters();
        self.sync_listeners();
    }

    /// Serves `cert` for the app's custom `hostname` (which then routes to the app).
    pub fn set_custom_certificate(&self, hostname: &str, app: &str, cert: tls::CertKey) {
        self.certificates.set_custom(hostname, app, cert);
    }

    pub fn remove_custom_certificate(&self, hostname: &str) {
        self.certificates.remove_custom(hostname);
    }

    /// Dedicates `ip` to `app` (an IP assignment) and opens its ports there.
    pub fn set_dedicated(self: &Arc<Self>, ip: IpAddr, app: &str) {
        self.dedicated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip, app.to_string());
        self.sync_listeners();
    }

    pub fn remove_dedicated(self: &Arc<Self>, ip: IpAddr) {
        self.dedicated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
        self.sync_listeners();
    }

    /// The app `ip` is dedicated to, if any.
    pub fn dedicated_to(&self, ip: IpAddr) -> Option<String> {
        self.dedicated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
            .cloned()
    }

    pub(crate) fn has_dedicated(&self, app: &str) -> bool {
        self.dedicated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|a| a == app)
    }

    /// Whether `app` keeps raw TCP `edges` off the shared addresses: it has a dedicated one,
    /// and none of the edges is HTTP (those stay shared, routed by `Host`).
    pub(crate) fn off_shared<'a>(
        &self,
        app: &str,
        mut edges: impl Iterator<Item = &'a table::EdgePort>,
    ) -> bool {
        self.has_dedicated(app) && edges.all(|e| !e.http)
    }

    /// Another app holding `port` on the shared addresses in a way `app` cannot share (see
    /// [`Table::conflict`]); raw TCP ports of apps with a dedicated address are not there.
    /// `without_dedicated` asks as if `app` had none.
    pub fn port_conflict(
        &self,
        app: &str,
        port: u16,
        http: bool,
        without_dedicated: bool,
    ) -> Option<String> {
        if !http && !without_dedicated && self.has_dedicated(app) {
            return None;
        }
        self.table()
            .conflict(app, port, http, |other| self.has_dedicated(other))
    }

    /// Starts (or resumes) a machine through the daemon, on the daemon's runtime: requests run
    /// on the proxy's workers, and what the daemon does (and spawns) for a start is its own.
    pub(crate) async fn start_machine(&self, app: &str, id: &str) -> Result<(), String> {
        let (controller, app, id) = (self.controller.clone(), app.to_string(), id.to_string());
        let start = async move { controller.start(&app, &id).await };
        match &self.main {
            Some(main) => main
                .spawn(start)
                .await
                .map_err(|e| format!("the start was cut short: {e}"))?,
            None => start.await,
        }
    }

    /// Another app holding UDP `port` on the shared addresses (apps with a dedicated address
    /// keep their UDP ports there).
    pub fn udp_port_conflict(&self, app: &str, port: u16) -> Option<String> {
        if self.has_dedicated(app) {
            return None;
        }
        self.table()
            .udp_conflict(app, port, |other| self.has_dedicated(other))
    }

    /// The table as it is now.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `f` with the table as it is now, from this thread's copy while the table has not
    /// changed: taking the shared snapshot (a lock and a reference count, written by every
    /// worker thread on every request) cost the proxy a few per cent of its throughput. The
    /// price: a worker's copy is still held when the table next changes, so each change
    /// copies the table (`Arc::make_mut`), as it did before whenever a request was in flight.
    pub(crate) fn with_table<T>(&self, f: impl FnOnce(&Table) -> T) -> T {
        thread_local! {
            static COPY: RefCell<Option<TableCopy>> = const { RefCell::new(None) };
        }
        COPY.with(|copy| {
            // Asked again from inside `f`: the shared snapshot.
            let Ok(mut copy) = copy.try_borrow_mut() else {
                return f(&self.table());
            };
            let version = self.table_version.load(Ordering::Acquire);
            let current = match copy.take() {
                Some(c) if c.proxy == self.id && c.version == version => c,
                _ => {
                    let table = self.table.read().unwrap_or_else(|e| e.into_inner());
                    TableCopy {
                        proxy: self.id,
                        version: self.table_version.load(Ordering::Acquire),
                        table: table.clone(),
                    }
                }
            };
            let out = f(&current.table);
            *copy = Some(current);
            out
        })
    }

    /// The table's version (see [`Proxy::with_table`]).
    pub(crate) fn table_version(&self) -> u64 {
        self.table_version.load(Ordering::Acquire)
    }
}

/// A thread's copy of a proxy's table.
struct TableCopy {
    proxy: u64,
    version: u64,
    table: Arc<Table>,
}
