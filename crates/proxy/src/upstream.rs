//! A connection to a machine: straight to its private IPv4 when it runs on this host, or
//! through the host that runs it (cluster mode: the backhaul, an upgraded connection to that
//! host's API, which connects to the machine there).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::table::MachineView;
use crate::Proxy;

/// Any byte stream a connection to a machine can be.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection to a machine.
pub enum Upstream {
    Direct(TcpStream),
    Backhaul(Box<dyn Io>),
}

/// Why a connection to a machine is opened: the machine's host counts traffic as load (what
/// autostop watches); a service check is not traffic. With `autostart`, the machine's host
/// starts it for the traffic if it finds it stopped or suspended (this host's view of another
/// host's machine may be a moment old).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Traffic { autostart: bool },
    Check,
}

impl Proxy {
    /// Connects to `port` of machine `m`. A machine just woken (`woken`) gets until `patience`
    /// to start listening.
    pub(crate) async fn dial(
        &self,
        m: &MachineView,
        port: u16,
        woken: bool,
        patience: Duration,
        purpose: Purpose,
    ) -> io::Result<Upstream> {
        let ip = m.ipv4.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "the machine has no private address",
            )
        })?;
        match &m.via {
            None => connect((ip, port).into(), woken, patience)
                .await
                .map(Upstream::Direct),
            Some(host) => {
                let patience = if woken { patience } else { Duration::ZERO };
                self.controller
                    .backhaul(host, &m.app, &m.id, port, patience, purpose)
                    .await
                    .map(Upstream::Backhaul)
            }
        }
    }
}

/// Connects to the machine; a machine just woken gets until `timeout` to start listening.
pub async fn connect(
    addr: SocketAddr,
    woken: bool,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if woken && Instant::now() < deadline => {
                tracing::debug!(%addr, error = %e, "proxy: waiting for a woken machine to listen");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Backhaul(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Backhaul(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Upstream::Backhaul(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Direct(s) => s.is_write_vectored(),
            Upstream::Backhaul(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_flush(cx),
            Upstream::Backhaul(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Backhaul(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
