//! The agent's DNS interface: `<service>.service.<dc>.caravan` answered with the healthy
//! instances of a service (A, AAAA, SRV), over UDP and TCP, with hickory-server. Names and
//! records are worked out in [`answer`] (pure); registrations come from a [`Directory`].
//! See docs/dns.md.

pub mod answer;
pub mod directory;

pub use answer::{Answer, Lookup, Zone};
pub use directory::{CacheDirectory, Directory, DirectoryError, RemoteDirectory};

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tracing::Instrument;

/// A TCP connection that sends no query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How many times a random port is tried before giving up (UDP and TCP must both get it).
const PORT_TRIES: usize = 20;

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding DNS {protocol} on {addr}: {source}")]
    Bind {
        protocol: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Zone(#[from] answer::ZoneError),
}

/// How to run the DNS server.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub bind: IpAddr,
    /// 0 picks a free port (the same for UDP and TCP).
    pub port: u16,
    pub domain: String,
    /// The agent's datacenter, for names that give none.
    pub datacenter: String,
    pub ttl: Duration,
}

/// Default DNS port, as Consul's.
pub const DEFAULT_PORT: u16 = 8600;

/// A running DNS server; stopped by [`DnsServer::shutdown`] (or when dropped, with the
/// runtime).
pub struct DnsServer {
    /// The address it answers on, UDP and TCP.
    pub addr: SocketAddr,
    server: hickory_server::Server<Handler>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl DnsServer {
    /// Stops accepting queries and waits for the listeners to end.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::warn!(error = %e, "stopping the DNS server");
        }
    }
}

/// Binds UDP and TCP on `config.bind:config.port` and starts answering from `directory`.
pub async fn start(
    config: &DnsConfig,
    directory: Arc<dyn Directory>,
) -> Result<DnsServer, DnsError> {
    let zone = Zone::new(
        &config.domain,
        &config.datacenter,
        u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX),
    )?;
    let (udp, tcp) = bind(config.bind, config.port).await?;
    let addr = udp.local_addr().map_err(|source| DnsError::Bind {
        protocol: "udp",
        addr: SocketAddr::new(config.bind, config.port),
        source,
    })?;
    let handler = Handler {
        zone: Arc::new(zone),
        directory,
        turn: Arc::new(AtomicUsize::new(0)),
    };
    let mut server = hickory_server::Server::new(handler);
    // hickory spawns the listener tasks itself (so they carry no span of ours); each query is
    // handled in a `dns_query` span (see `Handler::handle_request`).
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, 64);
    tracing::info!(%addr, "answering DNS queries");
    Ok(DnsServer { addr, server })
}

/// A UDP socket and a TCP listener on the same port (a free one when `port` is 0).
async fn bind(
    ip: IpAddr,
    port: u16,
) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener), DnsError> {
    let tries = if port == 0 { PORT_TRIES } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let want = SocketAddr::new(ip, port);
        let udp = tokio::net::UdpSocket::bind(want)
            .await
            .map_err(|source| DnsError::Bind {
                protocol: "udp",
                addr: want,
                source,
            })?;
        let got = udp.local_addr().map_err(|source| DnsError::Bind {
            protocol: "udp",
            addr: want,
            source,
        })?;
        match tokio::net::TcpListener::bind(got).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last = Some(DnsError::Bind {
                    protocol: "tcp",
                    addr: got,
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or(DnsError::Bind {
        protocol: "tcp",
        addr: SocketAddr::new(ip, port),
        source: std::io::Error::other("no attempt made"),
    }))
}

/// Answers each query from the zone and the directory.
#[derive(Debug, Clone)]
struct Handler {
    zone: Arc<Zone>,
    directory: Arc<dyn Directory>,
    /// Turns answer order query by query, so clients that take the first record spread out.
    turn: Arc<AtomicUsize>,
}

impl Handler {
    async fn resolve(&self, request: &Request) -> Result<Answer, ResponseCode> {
        if request.metadata.message_type != MessageType::Query {
            return Err(ResponseCode::FormErr);
        }
        if request.metadata.op_code != OpCode::Query {
            return Err(ResponseCode::NotImp);
        }
        let [query] = request.queries.queries() else {
            return Err(ResponseCode::FormErr);
        };
        let qname = query.original().name().clone();
        let qtype = query.query_type();
        let lookup = self.zone.parse(&qname);
        if let Some(answer) = answer::answer_static(&self.zone, &lookup, &qname, qtype) {
            return Ok(answer);
        }
        let Lookup::Service {
            name,
            namespace,
            datacenter,
        } = &lookup
        else {
            return Err(ResponseCode::ServFail);
        };
        let regs = self
            .directory
            .instances(namespace, name)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "DNS lookup failed");
                ResponseCode::ServFail
            })?;
        Ok(answer::answer_service(
            &self.zone,
            datacenter,
            &qname,
            qtype,
            &regs,
            self.turn.fetch_add(1, Ordering::Relaxed),
        ))
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let span = match request.queries.queries() {
            [q] => {
                tracing::debug_span!("dns_query", name = %q.name(), qtype = %q.query_type(), src = %request.src())
            }
            _ => tracing::debug_span!("dns_query", src = %request.src()),
        };
        async move {
            let answer = self.resolve(request).await;
            let mut metadata = Metadata::response_from_request(&request.metadata);
            let mut edns = None;
            if let Some(theirs) = request.edns.as_ref() {
                let mut ours = Edns::new();
                ours.set_max_payload(theirs.max_payload().max(512));
                ours.set_version(0);
                edns = Some(ours);
            }
            let mut builder = MessageResponseBuilder::from_message_request(request);
            if let Some(e) = edns.as_ref() {
                builder.edns(e);
            }
            let sent = match &answer {
                Ok(a) => {
                    metadata.response_code = a.code;
                    metadata.authoritative = a.authoritative;
                    tracing::debug!(code = %a.code, answers = a.answers.len(), "answered");
                    let response = builder.build(
                        metadata,
                        a.answers.iter(),
                        std::iter::empty(),
                        a.soa.iter(),
                        a.additionals.iter(),
                    );
                    response_handle.send_response(response).await
                }
                Err(code) => {
                    tracing::debug!(code = %code, "refused");
                    let response = builder.error_msg(&request.metadata, *code);
                    response_handle.send_response(response).await
                }
            };
            match sent {
                Ok(info) => info,
                Err(e) => {
                    tracing::debug!(error = %e, "sending the DNS response");
                    let mut metadata = Metadata::response_from_request(&request.metadata);
                    metadata.response_code = ResponseCode::ServFail;
                    ResponseInfo::from(Header {
                        metadata,
                        counts: HeaderCounts::default(),
                    })
                }
            }
        }
        .instrument(span)
        .await
    }
}
