//! Raw TCP services (no handlers, or `proxy_proto`): one app per edge port.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::Proxy;

/// The PROXY protocol header announcing the client (`v1` text or `v2` binary).
pub fn proxy_header(version: u8, client: SocketAddr, edge: SocketAddr) -> Vec<u8> {
    let (client, edge) = match (client, edge) {
        (SocketAddr::V4(c), SocketAddr::V6(e)) => match e.ip().to_ipv4_mapped() {
            Some(ip) => (SocketAddr::V4(c), SocketAddr::new(ip.into(), e.port())),
            None => (
                SocketAddr::new(c.ip().to_ipv6_mapped().into(), c.port()),
                SocketAddr::V6(e),
            ),
        },
        (SocketAddr::V6(c), SocketAddr::V4(e)) => match c.ip().to_ipv4_mapped() {
            Some(ip) => (SocketAddr::new(ip.into(), c.port()), SocketAddr::V4(e)),
            None => (
                SocketAddr::V6(c),
                SocketAddr::new(e.ip().to_ipv6_mapped().into(), e.port()),
            ),
        },
        pair => pair,
    };
    if version == 1 {
        let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
        return format!(
            "PROXY {family} {} {} {} {}\r\n",
            client.ip(),
            edge.ip(),
            client.port(),
            edge.port()
        )
        .into_bytes();
    }
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    let mut addrs = Vec::new();
    match (client, edge) {
        (SocketAddr::V4(c), SocketAddr::V4(e)) => {
            h.push(0x11); // TCP over IPv4
            addrs.extend_from_slice(&c.ip().octets());
            addrs.extend_from_slice(&e.ip().octets());
            addrs.extend_from_slice(&c.port().to_be_bytes());
            addrs.extend_from_slice(&e.port().to_be_bytes());
        }
        (SocketAddr::V6(c), SocketAddr::V6(e)) => {
            h.push(0x21); // TCP over IPv6
            addrs.extend_from_slice(&c.ip().octets());
            addrs.extend_from_slice(&e.ip().octets());
            addrs.extend_from_slice(&c.port().to_be_bytes());
            addrs.extend_from_slice(&e.port().to_be_bytes());
        }
        _ => h.push(0x00),
    }
    h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    h.extend_from_slice(&addrs);
    h
}

impl Proxy {
    /// Passes a client connection (plain, or TLS already terminated) to a machine of `app`
    /// (the port's only app when `None`).
    pub(crate) async fn serve_tcp<S>(
        self: Arc<Self>,
        mut client: S,
        local: SocketAddr,
        peer: SocketAddr,
        app: Option<String>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let port = local.port();
        // A raw TCP port has one app on the shared addresses (create and update refuse a
        // second); apps with a dedicated address serve theirs there.
        let Some(app) = app.or_else(|| {
            self.table()
                .candidates(port)
                .into_iter()
                .find(|(a, c)| !self.off_shared(a, c.iter().map(|c| c.edge())))
                .map(|(a, _)| a)
        }) else {
            return;
        };
        let chosen = match self.choose(&app, port).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(%app, port, error = %e, "proxy: connection refused");
                return;
            }
        };
        let mut upstream = match self
            .dial(
                &chosen.candidate.machine,
                chosen.candidate.service().internal_port,
                chosen.woken,
                self.config.connect_timeout,
                crate::upstream::Purpose::Traffic {
                    autostart: chosen.candidate.service().autostart,
                },
            )
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(%app, machine = %chosen.candidate.machine.id, error = %e, "proxy: machine refused the connection (PC01)");
                return;
            }
        };
        if let Some(v) = chosen.candidate.edge().proxy_proto {
            if upstream
                .write_all(&proxy_header(v, peer, local))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        drop(chosen.guard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_proxy_headers() {
        let c: SocketAddr = "192.0.2.1:5555".parse().unwrap();
        let e: SocketAddr = "127.0.0.1:443".parse().unwrap();
        assert_eq!(
            proxy_header(1, c, e),
            b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 443\r\n".to_vec()
        );
        let v2 = proxy_header(2, c, e);
        assert_eq!(&v2[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(&v2[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&v2[16..20], &[192, 0, 2, 1]);
        assert_eq!(&v2[24..26], &5555u16.to_be_bytes());
    }
}
