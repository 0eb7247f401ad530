//! Listeners: every edge port of the table, on every bind address; opened and closed as
//! machines are created, updated and destroyed.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::Proxy;

/// An open edge port; dropping it closes the port.
pub struct Listener {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr.ip() {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

pub(crate) type Listeners = Mutex<HashMap<(IpAddr, u16), Listener>>;

/// Closes the listeners of `listeners` that are not `wanted` and opens (with `open`, which
/// serves the port until its task is aborted) the wanted ones that are not open yet.
fn sync(
    listeners: &Listeners,
    wanted: BTreeSet<(IpAddr, u16)>,
    protocol: &str,
    open: impl Fn(SocketAddr) -> std::io::Result<tokio::task::JoinHandle<()>>,
) {
    let mut listeners = listeners.lock().unwrap_or_else(|e| e.into_inner());
    listeners.retain(|key, _| wanted.contains(key));
    for (ip, port) in wanted {
        if listeners.contains_key(&(ip, port)) {
            continue;
        }
        let addr = SocketAddr::new(ip, port);
        match open(addr) {
            Ok(task) => {
                tracing::info!(%addr, protocol, "proxy: listening");
                listeners.insert((ip, port), Listener { task });
            }
            Err(e) => tracing::warn!(%addr, protocol, error = %e, "proxy: cannot listen"),
        }
    }
}

/// The addresses open in `listeners`, sorted.
fn addresses(listeners: &Listeners) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = listeners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .map(|(ip, port)| SocketAddr::new(*ip, *port))
        .collect();
    out.sort();
    out
}

impl Proxy {
    /// Opens the edge ports the table has and closes those it no longer has.
    pub(crate) fn sync_listeners(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let table = self.table();
        // What should be open: every edge port on the shared addresses, and each app's on its
        // dedicated ones.
        let mut wanted: BTreeSet<(IpAddr, u16)> = self
            .config
            .binds
            .iter()
            .flat_map(|ip| table.edge_ports().into_iter().map(move |p| (*ip, p)))
            .collect();
        let dedicated = self
            .dedicated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (ip, app) in &dedicated {
            for port in table.edge_ports() {
                if table.apps_on(port, |_| true).contains(&app.as_str()) {
                    wanted.insert((*ip, port));
                }
            }
        }
        // UDP ports: one app each on the shared addresses (unless it has its own address),
        // and an app's on its dedicated ones.
        let udp = table.udp_ports();
        let mut udp_wanted: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
        for (port, apps) in &udp {
            if apps.iter().any(|a| !self.has_dedicated(a)) {
                udp_wanted.extend(self.config.binds.iter().map(|ip| (*ip, *port)));
            }
            for (ip, app) in &dedicated {
                if apps.contains(app.as_str()) {
                    udp_wanted.insert((*ip, *port));
                }
            }
        }
        let this = self.clone();
        sync(&self.udp_listeners, udp_wanted, "udp", |addr| {
            let socket = crate::udp::bind(addr)?;
            let this = this.clone();
            Ok(tokio::spawn(async move { this.udp_loop(socket).await }))
        });
        let this = self.clone();
        sync(&self.listeners, wanted, "tcp", |addr| {
            let l = bind(addr)?;
            let this = this.clone();
            Ok(tokio::spawn(async move { this.accept_loop(l).await }))
        });
    }

    /// The UDP edge addresses open now.
    pub fn udp_listening(&self) -> Vec<SocketAddr> {
        addresses(&self.udp_listeners)
    }

    /// The edge addresses open now.
    pub fn listening(&self) -> Vec<SocketAddr> {
        addresses(&self.listeners)
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            // At the connection limit, wait for one to close before taking another.
            let Ok(permit) = self.connections.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "proxy: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(local) = stream.local_addr() else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            // The connection lives on one worker from here on (see workers.rs); without
            // workers, on this runtime.
            match self.workers.pick() {
                Some((worker, seat)) => match stream.into_std() {
                    Ok(stream) => {
                        worker.spawn(async move {
                            let _seat = seat;
                            match TcpStream::from_std(stream) {
                                Ok(stream) => this.serve_connection(stream, local, peer).await,
                                Err(e) => {
                                    tracing::warn!(error = %e, "proxy: cannot hand a connection over")
                                }
                            }
                            drop(permit);
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "proxy: cannot hand a connection over"),
                },
                None => {
                    tokio::spawn(async move {
                        this.serve_connection(stream, local, peer).await;
                        drop(permit);
                    });
                }
            }
        }
    }

    /// Serves one client connection by the handler its edge port has.
    async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        local: SocketAddr,
        peer: SocketAddr,
    ) {
        // Counted while the connection lasts (the handlers take the proxy by value).
        let connections = self.metrics.connections.clone();
        connections.inc();
        // On a dedicated address only its app is served; on a shared one, every app
        // but the raw TCP ports of apps that have their own address.
        let owner = self.dedicated_to(local.ip());
        let edges: Vec<_> = self
            .table()
            .candidates(local.port())
            .into_iter()
            .filter(|(app, c)| match &owner {
                Some(o) => o == app,
                None => !self.off_shared(app, c.iter().map(|c| c.edge())),
            })
            .flat_map(|(_, c)| c)
            .map(|c| c.edge().clone())
            .collect();
        let http_or_tls = edges.iter().any(|e| e.tls || e.http);
        // `peek` waits for a first byte (or the client's close) without taking it;
        // `readable` may wake spuriously.
        if http_or_tls
            && tokio::time::timeout(self.config.idle_timeout, stream.peek(&mut [0u8; 1]))
                .await
                .is_err()
        {
            // Connected and said nothing: the idle timeout applies before the first
            // request as it does between requests.
            connections.dec();
            return;
        }
        if edges.iter().any(|e| e.pg_tls) {
            self.serve_pg_tls(stream, local, peer, owner).await;
        } else if edges.iter().any(|e| e.tls) {
            self.serve_tls(stream, local, peer, owner).await;
        } else if edges.iter().any(|e| e.http) {
            self.serve_http(stream, local, peer, owner).await;
        } else {
            self.serve_tcp(stream, local, peer, owner).await;
        }
        connections.dec();
    }
}
