//! A connection to a machine: straight to its private IPv4 when it runs on this host, or
//! through the host that runs it (cluster mode: the backhaul, an upgraded connection to that
//! host's API, which connects to the machine there).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::table::MachineView;
use crate::Proxy;

/// Any byte stream a connection to a machine can be.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection to a machine: straight (left) or through its host (right).
pub type Upstream = Either<TcpStream, Box<dyn Io>>;

/// Why a connection to a machine is opened: the machine's host counts traffic as load (what
/// autostop watches); a service check is not traffic. With `autostart`, the machine's host
/// starts it for the traffic if it finds it stopped or suspended (this host's view of another
/// host's machine may be a moment old).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Traffic { autostart: bool },
    Check,
}

/// A port of a machine another host runs, to connect to through that host.
#[derive(Debug, Clone, Copy)]
pub struct Backhaul<'a> {
    pub app: &'a str,
    pub id: &'a str,
    pub port: u16,
    /// How long a woken machine gets to listen (zero: it should already).
    pub patience: Duration,
    pub purpose: Purpose,
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
                .map(Either::Left),
            Some(host) => {
                let patience = if woken { patience } else { Duration::ZERO };
                let target = Backhaul {
                    app: &m.app,
                    id: &m.id,
                    port,
                    patience,
                    purpose,
                };
                self.controller
                    .backhaul(host, &target)
                    .await
                    .map(Either::Right)
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
    // A refused connection to a machine on this host costs microseconds: retry soon at
    // first (a woken program often listens within a few milliseconds), then every 10 ms.
    let mut pause = Duration::from_millis(1);
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if woken && Instant::now() < deadline => {
                tracing::debug!(%addr, error = %e, "proxy: waiting for a woken machine to listen");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}
