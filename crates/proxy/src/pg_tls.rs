//! The `pg_tls` handler. A PostgreSQL client asks for TLS inside its own protocol first (an
//! SSLRequest, answered with one byte) before its TLS handshake, so plain TLS termination
//! cannot serve it. The proxy answers the request, terminates TLS with the app's certificate,
//! and passes the plaintext protocol to the machine, which sees a client that did not ask for
//! TLS. PostgreSQL 17's direct TLS (a handshake straight away, ALPN `postgresql`) is
//! terminated as well. A client that speaks plaintext (a cancel request from an older libpq,
//! or `sslmode=disable`) is passed on as it is: the machine's own rules decide.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Proxy;

/// The request codes of PostgreSQL's 8-byte negotiation messages (length 8, then the code).
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

#[derive(Debug, PartialEq, Eq)]
enum Opening {
    SslRequest,
    GssEncRequest,
    DirectTls,
    Plaintext,
}

fn classify(head: &[u8]) -> Option<Opening> {
    if head.first() == Some(&TLS_HANDSHAKE) {
        return Some(Opening::DirectTls);
    }
    if head.len() < 8 {
        return None;
    }
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    Some(match (len, code) {
        (8, SSL_REQUEST) => Opening::SslRequest,
        (8, GSSENC_REQUEST) => Opening::GssEncRequest,
        _ => Opening::Plaintext,
    })
}

/// Looks at what the client opens with, without taking it; `None` if it closes or says
/// nothing for `idle`.
async fn opening(stream: &TcpStream, idle: Duration) -> Option<Opening> {
    let look = async {
        let mut head = [0u8; 8];
        loop {
            let n = stream.peek(&mut head).await.ok()?;
            if n == 0 {
                return None;
            }
            if let Some(o) = classify(&head[..n]) {
                return Some(o);
            }
            // Fewer than 8 bytes so far: wait for more without spinning on the same ones.
            stream.readable().await.ok()?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(idle, look).await.ok().flatten()
}

impl Proxy {
    pub(crate) async fn serve_pg_tls(
        self: Arc<Self>,
        mut stream: TcpStream,
        local: SocketAddr,
        peer: SocketAddr,
        owner: Option<String>,
    ) {
        loop {
            match opening(&stream, self.config.idle_timeout).await {
                Some(Opening::SslRequest) => {
                    let mut request = [0u8; 8];
                    if stream.read_exact(&mut request).await.is_err()
                        || stream.write_all(b"S").await.is_err()
                    {
                        return;
                    }
                    break;
                }
                // GSSAPI encryption is not offered; the client goes on to ask for TLS.
                Some(Opening::GssEncRequest) => {
                    let mut request = [0u8; 8];
                    if stream.read_exact(&mut request).await.is_err()
                        || stream.write_all(b"N").await.is_err()
                    {
                        return;
                    }
                }
                Some(Opening::DirectTls) => break,
                Some(Opening::Plaintext) => {
                    return self.serve_tcp(stream, local, peer, owner).await;
                }
                None => return,
            }
        }
        self.terminate_tls(stream, local, peer, owner, |e| e.pg_tls)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_openings_are_told_apart() {
        let msg = |len: u32, code: u32| {
            let mut m = len.to_be_bytes().to_vec();
            m.extend_from_slice(&code.to_be_bytes());
            m
        };
        assert_eq!(classify(&msg(8, SSL_REQUEST)), Some(Opening::SslRequest));
        assert_eq!(
            classify(&msg(8, GSSENC_REQUEST)),
            Some(Opening::GssEncRequest)
        );
        // A StartupMessage (protocol 3.0) and a CancelRequest go through as they are.
        assert_eq!(classify(&msg(41, 196_608)), Some(Opening::Plaintext));
        assert_eq!(classify(&msg(16, 80_877_102)), Some(Opening::Plaintext));
        assert_eq!(classify(&[0x16, 3, 1]), Some(Opening::DirectTls));
        assert_eq!(classify(&[0, 0, 0]), None);
    }
}
