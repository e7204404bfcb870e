//! `caravan lb`: the built-in HTTP load balancer. It follows the route table the lb-config
//! controller builds (or a file), proxies on `-addr` (9999) by longest matching host and path
//! prefix to the healthy instances of the route's service — weighted across backends,
//! round-robin within one — and serves its status page, route table and metrics on `-ui-addr`
//! (9998).
//!
//! - [`route`]: pure lookup, strip and redirect rules;
//! - [`balance`]: pure weighted choice and retry order;
//! - [`table`]: the compiled table, swapped whole when it changes;
//! - [`watch`]: where tables come from (servers, file);
//! - [`proxy`]: forwarding, retries, headers;
//! - [`ui`], [`metrics`].

pub mod balance;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod table;
pub mod tls;
pub mod ui;
pub mod watch;

use crate::client::Config as ClientConfig;
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::Instrument;

/// How long in-flight requests get to finish once a shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the route table comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// The servers' `GET /v1/lb/routes` (any of them), with this token, namespace, region.
    Servers(Vec<String>, ClientConfig),
    /// A `RouteTable` JSON file, re-read when it changes.
    File(PathBuf),
}

impl Source {
    /// How the status page and messages name it.
    pub fn describe(&self) -> String {
        match self {
            Source::Servers(s, _) => format!("servers {}", s.join(", ")),
            Source::File(p) => format!("file {}", p.display()),
        }
    }
}

/// `caravan lb`'s settings.
#[derive(Clone, Debug)]
pub struct LbConfig {
    pub addr: String,
    pub ui_addr: String,
    pub source: Source,
    /// Extra CAs trusted for `proto=https` upstreams.
    pub upstream_ca: Option<PathBuf>,
}

/// Why the load balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("listening on {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("starting the proxy workers: {source}")]
    Workers { source: std::io::Error },
}

/// Binds both listeners, prints where they are, serves until `shutdown` resolves, then lets
/// in-flight requests finish (up to 10 s).
pub async fn run(config: LbConfig, shutdown: impl Future<Output = ()>) -> Result<(), LbError> {
    let bind = |what: &'static str, addr: String| async move {
        TcpListener::bind(&addr)
            .await
            .map_err(|source| LbError::Bind { what, addr, source })
    };
    // Checked now, so that a bad CA file fails at start; each worker builds its own.
    tls::client_config(config.upstream_ca.as_deref())?;
    let source_text = config.source.describe();
    let metrics = Arc::new(metrics::LbMetrics::new());
    let slot = Arc::new(table::TableSlot::new(metrics, &source_text));
    // A file is read once before serving, so that a wrong path fails at once.
    let span = tracing::info_span!("lb_table_watch", source = %source_text);
    let watcher = match &config.source {
        Source::File(path) => {
            let (bytes, first) = watch::read_file(path)?;
            slot.store(first);
            tokio::spawn(
                watch::follow_file(path.clone(), Arc::clone(&slot), bytes).instrument(span),
            )
        }
        Source::Servers(servers, base) => {
            let clients = watch::clients(servers, base)?;
            tokio::spawn(watch::follow_servers(clients, Arc::clone(&slot)).instrument(span))
        }
    };

    let proxy_listener = bind("proxy", config.addr.clone()).await?;
    let ui_listener = bind("UI", config.ui_addr.clone()).await?;
    let proxy_addr = local_addr(&proxy_listener, &config.addr);
    let ui_addr = local_addr(&ui_listener, &config.ui_addr);
    println!("==> Caravan load balancer configuration:\n");
    println!("           Proxy Addr: {proxy_addr}");
    println!("              UI Addr: {ui_addr}");
    println!("          Route Table: {source_text}");
    println!("\n==> Caravan load balancer started!");

    let ui = tokio::spawn(
        serve_ui(ui_listener, Arc::clone(&slot), source_text)
            .instrument(tracing::info_span!("lb_ui", addr = %ui_addr)),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let listener = proxy_listener.into_std().map_err(|source| LbError::Bind {
        what: "proxy",
        addr: config.addr.clone(),
        source,
    })?;
    let workers = spawn_workers(
        &listener,
        &slot,
        config.upstream_ca.as_deref(),
        &stopped,
        &proxy_addr,
    )
    .map_err(|source| LbError::Workers { source })?;
    shutdown.await;
    tracing::info!("draining in-flight requests");
    stop.send_replace(true);
    let _ = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    })
    .await;
    ui.abort();
    watcher.abort();
    Ok(())
}

/// The proxy's workers: one thread per core, each with its own single-threaded runtime and
/// upstream connection pool, all accepting on the one listening socket — as nginx's worker
/// processes do. A request stays on one thread from accept to answer, with no cross-thread
/// wake-ups (a multi-threaded runtime costed ~20% more CPU per request in `hack/bench-lb.sh`).
fn spawn_workers(
    listener: &std::net::TcpListener,
    slot: &Arc<table::TableSlot>,
    upstream_ca: Option<&std::path::Path>,
    stop: &tokio::sync::watch::Receiver<bool>,
    addr: &str,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let n = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    listener.set_nonblocking(true)?;
    (0..n)
        .map(|i| {
            let (listener, slot, mut stop) =
                (listener.try_clone()?, Arc::clone(slot), stop.clone());
            let ca = upstream_ca.map(std::path::Path::to_owned);
            let span = tracing::info_span!("lb_proxy", addr = %addr, worker = i);
            std::thread::Builder::new()
                .name(format!("lb-worker-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => return tracing::error!(error = %e, "starting a proxy worker"),
                    };
                    runtime.block_on(
                        async move {
                            let listener = match TcpListener::from_std(listener) {
                                Ok(l) => l,
                                Err(e) => return tracing::error!(error = %e, "proxy listener"),
                            };
                            let tls = match tls::client_config(ca.as_deref()) {
                                Ok(t) => t,
                                Err(e) => return tracing::error!(error = %e, "TLS settings"),
                            };
                            let proxy = Arc::new(proxy::Proxy::new(slot, tls));
                            let graceful = GracefulShutdown::new();
                            let shutdown = async move {
                                let _ = stop.wait_for(|s| *s).await;
                            };
                            serve_proxy(listener, proxy, &graceful, shutdown).await;
                            if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
                                .await
                                .is_err()
                            {
                                tracing::warn!(
                                    "requests still in flight after {DRAIN_TIMEOUT:?}; closing them"
                                );
                            }
                        }
                        .instrument(span),
                    );
                })
        })
        .collect()
}

fn local_addr(listener: &TcpListener, asked: &str) -> String {
    listener
        .local_addr()
        .map_or_else(|_| asked.to_owned(), |a| a.to_string())
}

/// A pause after a failed accept (out of descriptors, …), so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

async fn serve_proxy(
    listener: TcpListener,
    proxy: Arc<proxy::Proxy>,
    graceful: &GracefulShutdown,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let client_ip = client_ip(remote);
        let proxy = Arc::clone(&proxy);
        let service = service_fn(move |req| {
            let proxy = Arc::clone(&proxy);
            let client_ip = client_ip.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, &client_ip).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(
            async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
            }
            .instrument(tracing::debug_span!("lb_conn", %remote)),
        );
    }
}

/// The client's address as an `X-Forwarded-For` entry.
fn client_ip(remote: SocketAddr) -> HeaderValue {
    let ip = match remote.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

async fn serve_ui(listener: TcpListener, slot: Arc<table::TableSlot>, source: String) {
    let source: Arc<str> = source.into();
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let slot = Arc::clone(&slot);
        let source = Arc::clone(&source);
        let service = service_fn(move |req| {
            let resp = ui::handle(&req, &slot, &source);
            async move { Ok::<_, Infallible>(resp) }
        });
        tokio::spawn(
            async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "status connection ended with an error");
                }
            }
            .instrument(tracing::debug_span!("lb_ui_conn", %remote)),
        );
    }
}
