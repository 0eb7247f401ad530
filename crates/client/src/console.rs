//! Interactive consoles: `POST /hangar/v1/apps/{app}/machines/{id}/console` upgraded to a raw
//! stream of frames (1-byte type, 4-byte big-endian length, payload), as Pilot speaks them
//! (`hangar_pilot::protocol::frame`; keep the two in sync).

use std::io;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::upgrade::Upgraded;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::client::{encode, Auth, Client};
use crate::endpoint::Endpoint;
use crate::error::ClientError;

/// The `Upgrade` protocol name.
pub const CONSOLE_PROTOCOL: &str = "hangar-console";

const HEADER: usize = 5;
const MAX_PAYLOAD: usize = 1 << 20;
const DATA: u8 = 0;
const RESIZE: u8 = 1;
const EXIT: u8 = 2;
const EOF: u8 = 3;

/// What to run on the console; `None`s leave the daemon's defaults (first container,
/// `/bin/sh`, the container's user, 24×80, `xterm`).
#[derive(Debug, Clone, Default)]
pub struct ConsoleOptions {
    pub container: Option<String>,
    /// Shell words.
    pub command: Option<String>,
    pub user: Option<String>,
    pub rows: Option<u16>,
    pub cols: Option<u16>,
    pub term: Option<String>,
    /// Run the command on a pty (the default); without one, its input and output are plain
    /// pipes and [`ConsoleFrame::Eof`] ends its input, as `fly ssh console` does when stdin is
    /// not a terminal.
    pub no_tty: bool,
}

/// One frame of a console connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleFrame {
    /// Terminal bytes, both ways.
    Data(Vec<u8>),
    /// Client → machine: new window size.
    Resize { rows: u16, cols: u16 },
    /// Machine → client, last: the command's exit code (128+signal when killed).
    Exit(i32),
    /// Client → machine, without a pty: the input has ended (the command reads EOF).
    Eof,
}

impl ConsoleFrame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, Vec<u8>) = match self {
            ConsoleFrame::Data(d) => (DATA, d.clone()),
            ConsoleFrame::Resize { rows, cols } => {
                let mut p = rows.to_be_bytes().to_vec();
                p.extend_from_slice(&cols.to_be_bytes());
                (RESIZE, p)
            }
            ConsoleFrame::Exit(code) => (EXIT, code.to_be_bytes().to_vec()),
            ConsoleFrame::Eof => (EOF, Vec::new()),
        };
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Reads the next frame; `None` at a clean end of stream. Unknown frame types are skipped.
    /// Not cancel-safe: read from one task.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<ConsoleFrame>> {
        loop {
            let mut head = [0u8; HEADER];
            match r.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > MAX_PAYLOAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("console frame of {len} bytes"),
                ));
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).await?;
            let be16 = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
            return Ok(Some(match head[0] {
                DATA => ConsoleFrame::Data(body),
                RESIZE if len >= 4 => ConsoleFrame::Resize {
                    rows: be16(0),
                    cols: be16(2),
                },
                EXIT if len >= 4 => {
                    ConsoleFrame::Exit(i32::from_be_bytes([body[0], body[1], body[2], body[3]]))
                }
                EOF => ConsoleFrame::Eof,
                _ => continue,
            }));
        }
    }

    pub async fn write<W: AsyncWrite + Unpin>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(&self.encode()).await?;
        w.flush().await
    }
}

/// The upgraded connection: read and write [`ConsoleFrame`]s on it (`tokio::io::split` it
/// to do both at once).
pub type ConsoleStream = TokioIo<Upgraded>;

impl Client {
    /// Starts `opts` on a pty in machine `id` and returns the raw framed stream.
    pub async fn console(
        &self,
        app: &str,
        id: &str,
        opts: &ConsoleOptions,
    ) -> Result<ConsoleStream, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        let opt = |q: &mut Vec<(&str, String)>, k, v: Option<String>| {
            if let Some(v) = v {
                q.push((k, v));
            }
        };
        opt(&mut query, "container", opts.container.clone());
        opt(&mut query, "command", opts.command.clone());
        opt(&mut query, "user", opts.user.clone());
        opt(&mut query, "rows", opts.rows.map(|r| r.to_string()));
        opt(&mut query, "cols", opts.cols.map(|c| c.to_string()));
        opt(&mut query, "term", opts.term.clone());
        opt(&mut query, "tty", opts.no_tty.then(|| "false".to_string()));
        let mut path = format!(
            "/hangar/v1/apps/{}/machines/{}/console",
            encode(app),
            encode(id)
        );
        for (i, (k, v)) in query.iter().enumerate() {
            path.push(if i == 0 { '?' } else { '&' });
            path.push_str(k);
            path.push('=');
            path.push_str(&encode(v));
        }
        let transport = |cause| ClientError::Transport {
            method: "POST".into(),
            path: path.clone(),
            endpoint: self.endpoint().to_string(),
            cause,
        };
        let mut sender = self.connect_upgradable().await?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(&path)
            .header(header::HOST, self.endpoint().host_header())
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, CONSOLE_PROTOCOL);
        if let Some(auth) = self.authorization_for(&Auth::Default)? {
            req = req.header(header::AUTHORIZATION, auth);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let res = sender.send_request(req).await.map_err(transport)?;
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = res.status();
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(transport)?
                .to_bytes();
            return Err(ClientError::from_response(status, &body));
        }
        let upgraded = hyper::upgrade::on(res).await.map_err(transport)?;
        Ok(TokioIo::new(upgraded))
    }

    async fn connect_upgradable(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, ClientError> {
        let connect_error = |cause| ClientError::Connect {
            endpoint: self.endpoint().to_string(),
            cause,
        };
        let handshake_error = |e: hyper::Error| ClientError::Connect {
            endpoint: self.endpoint().to_string(),
            cause: io::Error::other(e),
        };
        match self.endpoint() {
            Endpoint::Unix(path) => {
                let s = UnixStream::connect(path).await.map_err(connect_error)?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                    .await
                    .map_err(handshake_error)?;
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                });
                Ok(sender)
            }
            Endpoint::Tcp { host, port } => {
                let s = tokio::time::timeout(
                    crate::client::CONNECT_TIMEOUT,
                    TcpStream::connect((host.as_str(), *port)),
                )
                .await
                .map_err(|_| {
                    connect_error(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection timed out",
                    ))
                })?
                .map_err(connect_error)?;
                // Keystrokes are tiny and latency-bound.
                let _ = s.set_nodelay(true);
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                    .await
                    .map_err(handshake_error)?;
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                });
                Ok(sender)
            }
        }
    }
}
