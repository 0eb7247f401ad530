//! Serving the resolver over UDP and TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{AAAA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::directory::Directory;
use crate::names::{resolve, Answer};

/// Answers are re-read from the directory on every query; a short TTL keeps caching clients
/// (nginx's `resolver`, for one) within a second of a start or stop as well.
const TTL: u32 = 1;
/// How long one upstream resolver gets before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest UDP answer sent to a client that did not offer EDNS.
const UDP_PLAIN_MAX: usize = 512;

pub struct Resolver {
    directory: Arc<Directory>,
    upstreams: Vec<SocketAddr>,
}

/// The nameservers of a `resolv.conf`, on port 53.
pub fn host_upstreams(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<std::net::IpAddr>().ok())
        // Never back to ourselves: a machine-style resolv.conf on the host would loop.
        .filter(|ip| *ip != std::net::IpAddr::V6(hangar_net::RESOLVER))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl Resolver {
    pub fn new(directory: Arc<Directory>, upstreams: Vec<SocketAddr>) -> Arc<Resolver> {
        Arc::new(Resolver {
            directory,
            upstreams,
        })
    }

    /// Binds UDP and TCP on `addr` and serves both in the background.
    pub async fn serve(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<()> {
        let udp = Arc::new(UdpSocket::bind(addr).await?);
        let tcp = TcpListener::bind(addr).await?;
        let this = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (len, src) = match udp.recv_from(&mut buf).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "resolver: udp receive failed");
                        continue;
                    }
                };
                let query = buf[..len].to_vec();
                let (this, udp) = (this.clone(), udp.clone());
                tokio::spawn(async move {
                    if let Some(reply) = this.handle(&query, src, false).await {
                        let _ = udp.send_to(&reply, src).await;
                    }
                });
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, src)) = tcp.accept().await else {
                    continue;
                };
                let this = this.clone();
                tokio::spawn(async move {
                    let _ = this.serve_tcp(stream, src).await;
                });
            }
        });
        Ok(())
    }

    async fn serve_tcp(&self, mut stream: TcpStream, src: SocketAddr) -> std::io::Result<()> {
        loop {
            let query =
                match tokio::time::timeout(Duration::from_secs(10), read_framed(&mut stream)).await
                {
                    Ok(Ok(q)) => q,
                    _ => return Ok(()),
                };
            if let Some(reply) = self.handle(&query, src, true).await {
                write_framed(&mut stream, &reply).await?;
            }
        }
    }

    /// The reply to one query: from the directory for `.internal`, else the upstreams'.
    pub async fn handle(&self, query: &[u8], src: SocketAddr, tcp: bool) -> Option<Vec<u8>> {
        let msg = Message::from_vec(query).ok()?;
        if msg.metadata.message_type != MessageType::Query {
            return None;
        }
        let Some(q) = msg.queries.first().filter(|_| msg.queries.len() == 1) else {
            return error_reply(&msg, ResponseCode::FormErr);
        };
        if msg.metadata.op_code != OpCode::Query {
            return error_reply(&msg, ResponseCode::NotImp);
        }
        let name = q
            .name()
            .to_string()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if name != "internal" && !name.ends_with(".internal") {
            return Some(
                self.forward(query, tcp).await.unwrap_or_else(|| {
                    error_reply(&msg, ResponseCode::ServFail).unwrap_or_default()
                }),
            );
        }
        let scope = self.directory.scope_of(src.ip());
        let answer = resolve(&self.directory, scope, &name);
        let mut reply = Message::response(msg.metadata.id, OpCode::Query);
        reply.metadata.authoritative = true;
        reply.metadata.recursion_desired = msg.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.add_query(q.clone());
        let qtype = q.query_type();
        let owner: Name = q.name().clone();
        match answer {
            Answer::NxDomain => reply.metadata.response_code = ResponseCode::NXDomain,
            Answer::Addresses(ips) => {
                if matches!(qtype, RecordType::AAAA | RecordType::ANY) {
                    for ip in ips {
                        reply.add_answer(Record::from_rdata(
                            owner.clone(),
                            TTL,
                            RData::AAAA(AAAA(ip)),
                        ));
                    }
                }
            }
            Answer::Text(text) => {
                if matches!(qtype, RecordType::TXT | RecordType::ANY) {
                    reply.add_answer(Record::from_rdata(owner, TTL, RData::TXT(txt(&text))));
                }
            }
        }
        let bytes = reply.to_vec().ok()?;
        let max = msg.edns.as_ref().map_or(UDP_PLAIN_MAX, |e| {
            usize::from(e.max_payload()).max(UDP_PLAIN_MAX)
        });
        if !tcp && bytes.len() > max {
            // Too big for this client's UDP: it retries over TCP.
            let mut cut = Message::response(msg.metadata.id, OpCode::Query);
            cut.metadata.truncation = true;
            cut.metadata.authoritative = true;
            cut.add_query(q.clone());
            return cut.to_vec().ok();
        }
        Some(bytes)
    }

    /// Relays the query, unchanged, to each upstream in turn until one answers.
    async fn forward(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        for upstream in &self.upstreams {
            let attempt = async {
                if tcp {
                    let mut s = TcpStream::connect(upstream).await?;
                    write_framed(&mut s, query).await?;
                    read_framed(&mut s).await
                } else {
                    let bind: SocketAddr = if upstream.is_ipv4() {
                        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
                    } else {
                        "[::]:0".parse().map_err(std::io::Error::other)?
                    };
                    let s = UdpSocket::bind(bind).await?;
                    s.connect(upstream).await?;
                    s.send(query).await?;
                    let mut buf = vec![0u8; 65535];
                    let n = s.recv(&mut buf).await?;
                    buf.truncate(n);
                    Ok(buf)
                }
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
                Ok(Ok(reply)) => return Some(reply),
                Ok(Err(e)) => tracing::debug!(%upstream, error = %e, "resolver: upstream failed"),
                Err(_) => tracing::debug!(%upstream, "resolver: upstream timed out"),
            }
        }
        None
    }
}

/// TXT data as character-strings of at most 255 bytes (a long `_instances` spans several;
/// clients concatenate them).
fn txt(text: &str) -> TXT {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return TXT::from_bytes(vec![b"".as_slice()]);
    }
    TXT::from_bytes(bytes.chunks(255).collect())
}

fn error_reply(msg: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut reply = Message::error_msg(msg.metadata.id, msg.metadata.op_code, code);
    reply.add_queries(msg.queries.iter().cloned());
    reply.to_vec().ok()
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_framed(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(data.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(data.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(data);
    stream.write_all(&framed).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_reads_the_host_resolvers() {
        let got = host_upstreams(
            "# x\nnameserver 10.0.0.53\nnameserver fdaa::3\nsearch x\nnameserver ::1\n",
        );
        assert_eq!(
            got,
            vec![
                "10.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
