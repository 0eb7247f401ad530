//! UDP services. Fly delivers a UDP service's datagrams to `fly-global-services:<port>` in the
//! machine; here the edge socket relays each client's datagrams to a machine's private IPv4
//! (which `fly-global-services` names in its /etc/hosts) and the answers back from the edge
//! address. A client (address and port) is a flow: it stays on one machine until it has been
//! quiet for the idle timeout, and counts as one unit of that machine's load while it lasts
//! (so autostop leaves a machine with live flows alone). Only started machines are chosen:
//! a datagram carries no promise that anyone waits for an answer, so UDP does not autostart.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::Proxy;

/// Datagrams waiting for a flow's machine; past this, new ones are dropped (as a full socket
/// buffer would).
const FLOW_QUEUE: usize = 256;
const MAX_DATAGRAM: usize = 65_535;

type Flows = Arc<Mutex<HashMap<SocketAddr, (u64, mpsc::Sender<Vec<u8>>)>>>;

pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

impl Proxy {
    /// Serves one UDP edge socket until its listener is dropped.
    pub(crate) async fn udp_loop(self: Arc<Self>, socket: UdpSocket) {
        let socket = Arc::new(socket);
        let Ok(local) = socket.local_addr() else {
            return;
        };
        let flows: Flows = Arc::default();
        // The flows end with this loop (the listener dropped): a JoinSet aborts its tasks when
        // dropped, and the edge port is free again at once.
        let mut running = tokio::task::JoinSet::new();
        let mut next_id = 0u64;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, client) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                // An ICMP error for an earlier answer, and the like: not fatal.
                Err(e) => {
                    tracing::debug!(%local, error = %e, "proxy: udp receive failed");
                    continue;
                }
            };
            while running.try_join_next().is_some() {}
            let datagram = buf[..n].to_vec();
            let existing = flows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&client)
                .map(|(_, tx)| tx.clone());
            let datagram = match existing {
                Some(tx) => match tx.try_send(datagram) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => continue,
                    // The flow just ended: this datagram starts a new one.
                    Err(mpsc::error::TrySendError::Closed(d)) => d,
                },
                None => datagram,
            };
            let (tx, rx) = mpsc::channel(FLOW_QUEUE);
            let _ = tx.try_send(datagram);
            next_id += 1;
            flows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(client, (next_id, tx));
            let this = self.clone();
            let (socket, flows, id) = (socket.clone(), flows.clone(), next_id);
            running.spawn(async move {
                this.udp_flow(&socket, local, client, rx).await;
                let mut flows = flows.lock().unwrap_or_else(|e| e.into_inner());
                if flows.get(&client).is_some_and(|(i, _)| *i == id) {
                    flows.remove(&client);
                }
            });
        }
    }

    /// Relays one client's datagrams to a machine and its answers back, until the client has
    /// been quiet for the idle timeout.
    async fn udp_flow(
        &self,
        edge: &UdpSocket,
        local: SocketAddr,
        client: SocketAddr,
        mut datagrams: mpsc::Receiver<Vec<u8>>,
    ) {
        let port = local.port();
        let app = self.dedicated_to(local.ip()).or_else(|| {
            self.table()
                .udp_ports()
                .get(&port)?
                .iter()
                .find(|a| !self.has_dedicated(a))
                .map(|a| a.to_string())
        });
        let Some(app) = app else {
            return;
        };
        // The least loaded started machine (ties: the lowest id).
        let chosen = self
            .table()
            .udp_candidates_of(port, &app)
            .into_iter()
            .filter(|(m, _)| m.started && !m.cordoned && m.ipv4.is_some())
            .filter(|(m, _)| self.health.routable(&m.id))
            .min_by_key(|(m, _)| self.load.inflight(&m.id));
        let Some((machine, internal_port)) = chosen else {
            tracing::info!(%app, port, %client, "proxy: no started machine for a UDP flow");
            return;
        };
        let _load = self.load.take(&machine.id);
        let Some(ip) = machine.ipv4 else {
            return;
        };
        let upstream =
            match UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "proxy: cannot open a UDP socket");
                    return;
                }
            };
        if let Err(e) = upstream.connect((ip, internal_port)).await {
            tracing::info!(%app, machine = %machine.id, error = %e, "proxy: UDP flow not opened");
            return;
        }
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            tokio::select! {
                d = datagrams.recv() => match d {
                    Some(d) => { let _ = upstream.send(&d).await; }
                    None => return,
                },
                r = upstream.recv(&mut buf) => match r {
                    Ok(n) => { let _ = edge.send_to(&buf[..n], client).await; }
                    // Nothing listens yet (ICMP port unreachable): later datagrams may find it.
                    Err(e) => tracing::debug!(machine = %machine.id, error = %e, "proxy: udp"),
                },
                () = tokio::time::sleep(self.config.idle_timeout) => return,
            }
        }
    }
}
