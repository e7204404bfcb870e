//! The reverse proxy: one request in, the route it selects, an instance chosen by the route's
//! balancer, the request forwarded over a pooled HTTP/1.1 connection with both bodies streamed,
//! and the answer passed back.
//!
//! A request whose connection attempt is refused goes to another instance of the route (at most
//! once per instance): nothing of it has reached an upstream yet, so any method is safe to
//! resend. The request body is handed to the client through a slot it takes the body from when
//! it starts sending; a failure that leaves the slot full left the body unread. The client
//! reporting the request as not sent (a pooled connection closed under it) is retried on the
//! same terms. Idempotent requests without a body are also retried when a pooled keep-alive
//! connection turns out closed or reset before any response byte came back — the race every
//! proxy with upstream keep-alive meets (an upstream that closed or died while the connection
//! sat idle), which nginx retries as well. The upstream may have received such a request,
//! hence the restriction to requests that are safe to repeat; other methods get a 502.

use super::route::{redirect_location, strip_path};
use super::table::{Action, CompiledRoute, TableSlot};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What the proxy answers: an upstream's streamed body, or a short one of its own.
pub type ResponseBody = Either<Incoming, Full<Bytes>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long connecting to an instance may take before another is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle upstream connection is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A request body on its way upstream.
#[derive(Debug)]
pub struct UpstreamBody(BodyState);

#[derive(Debug)]
enum BodyState {
    Empty,
    /// Not read yet: the client takes it from the slot when it starts sending.
    Waiting {
        slot: Arc<Mutex<Option<Incoming>>>,
        end: bool,
        hint: SizeHint,
    },
    Reading(Incoming),
}

impl UpstreamBody {
    fn empty() -> Self {
        UpstreamBody(BodyState::Empty)
    }

    fn waiting(slot: Arc<Mutex<Option<Incoming>>>, end: bool, hint: SizeHint) -> Self {
        UpstreamBody(BodyState::Waiting { slot, end, hint })
    }
}

/// The body was taken by an earlier attempt: resending it would send a truncated copy.
#[derive(Debug, thiserror::Error)]
#[error("the request body was already sent upstream")]
struct BodyGone;

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.0 {
                BodyState::Empty => return Poll::Ready(None),
                BodyState::Waiting { slot, .. } => {
                    let taken = slot
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take();
                    match taken {
                        Some(body) => this.0 = BodyState::Reading(body),
                        None => return Poll::Ready(Some(Err(Box::new(BodyGone)))),
                    }
                }
                BodyState::Reading(body) => {
                    return Pin::new(body).poll_frame(cx).map_err(Into::into);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            BodyState::Empty => true,
            BodyState::Waiting { end, .. } => *end,
            BodyState::Reading(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyState::Empty => SizeHint::with_exact(0),
            BodyState::Waiting { hint, .. } => *hint,
            BodyState::Reading(body) => body.size_hint(),
        }
    }
}

/// The request body, kept so that a retry can send it when the first attempt did not.
enum HeldBody {
    Empty,
    Slot {
        slot: Arc<Mutex<Option<Incoming>>>,
        end: bool,
        hint: SizeHint,
    },
}

impl HeldBody {
    fn new(body: Incoming) -> HeldBody {
        if body.is_end_stream() {
            return HeldBody::Empty;
        }
        HeldBody::Slot {
            end: false,
            hint: body.size_hint(),
            slot: Arc::new(Mutex::new(Some(body))),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, HeldBody::Empty)
    }

    /// A body for one attempt; `None` once an earlier attempt started reading it.
    fn attempt(&self) -> Option<UpstreamBody> {
        match self {
            HeldBody::Empty => Some(UpstreamBody::empty()),
            HeldBody::Slot { slot, end, hint } => {
                let unread = slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .is_some();
                unread.then(|| UpstreamBody::waiting(Arc::clone(slot), *end, *hint))
            }
        }
    }
}

/// The proxy: the table it routes by and its pool of upstream connections.
#[derive(Debug)]
pub struct Proxy {
    slot: Arc<TableSlot>,
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
}

/// Why an attempt failed, and whether another instance may be tried.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// Nothing reached the upstream: any request may be resent.
    NotSent,
    /// The connection closed as the request went out: resend only what is safe to repeat.
    ClosedEarly,
    /// Anything else.
    Other,
}

fn classify(e: &hyper_util::client::legacy::Error) -> Failure {
    if e.is_connect() {
        return Failure::NotSent;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_canceled() {
                return Failure::NotSent;
            }
            if h.is_incomplete_message() {
                return Failure::ClosedEarly;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            )
        {
            // Reset before any response byte arrived (a response would have been returned).
            return Failure::ClosedEarly;
        }
        source = s.source();
    }
    Failure::Other
}

/// The innermost cause of an error, for answers and logs.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}

/// A short plain-text answer of the proxy's own.
fn local(status: StatusCode, text: String) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Removes the headers that describe one connection rather than the message: `Connection`
/// and those it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`
/// (hyper frames the body itself), `Upgrade`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        headers.remove(header::CONNECTION);
        for n in named {
            headers.remove(n);
        }
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// Adds the `X-Forwarded-*` headers: the client's address appended to `X-Forwarded-For`, the
/// scheme it used, and the `Host` it asked for.
pub fn add_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    let prior: Vec<&[u8]> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let xff = if prior.is_empty() {
        client_ip.clone()
    } else {
        let mut v = prior.join(&b", "[..]);
        v.extend_from_slice(b", ");
        v.extend_from_slice(client_ip.as_bytes());
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| client_ip.clone())
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

/// Whether resending `method` cannot change anything the first attempt did (RFC 9110 9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl Proxy {
    /// A proxy routing by `slot`, with its own connection pool; `tls` is how it speaks to the
    /// upstreams of `proto=https` routes.
    pub fn new(slot: Arc<TableSlot>, tls: rustls::ClientConfig) -> Proxy {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Proxy { slot, client }
    }

    /// Answers one request from a client at `client_ip`.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client_ip: &HeaderValue,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        let Some(table) = self.slot.load() else {
            self.slot.metrics().unrouted(502, "no_table");
            return local(
                StatusCode::BAD_GATEWAY,
                format!("caravan lb: no route table yet: {}\n", self.slot.waiting()),
            );
        };
        let (parts, body) = req.into_parts();
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.host())
            .unwrap_or("");
        let path = parts.uri.path();
        let Some(route) = table.lookup(host, path) else {
            self.slot.metrics().unrouted(404, "no_route");
            return local(
                StatusCode::NOT_FOUND,
                format!(
                    "no route for {} {path}\n",
                    super::route::normalize_host(host)
                ),
            );
        };
        let resp = match &route.action {
            Action::Proxy => self.forward(route, parts, body, client_ip).await,
            Action::Redirect(code, url) => {
                let pq = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
                let location = redirect_location(url, pq);
                let mut resp = local(*code, format!("redirecting to {location}\n"));
                match HeaderValue::try_from(location) {
                    Ok(v) => {
                        resp.headers_mut().insert(header::LOCATION, v);
                        resp
                    }
                    Err(_) => {
                        route.metrics.error("redirect");
                        local(
                            StatusCode::BAD_GATEWAY,
                            format!(
                                "caravan lb: route {}: the redirect URL is not a valid header\n",
                                route.label
                            ),
                        )
                    }
                }
            }
        };
        route
            .metrics
            .answered(resp.status().as_u16(), start.elapsed());
        resp
    }

    async fn forward(
        &self,
        route: &CompiledRoute,
        parts: http::request::Parts,
        body: Incoming,
        client_ip: &HeaderValue,
    ) -> Response<ResponseBody> {
        let Some(first) = route.balancer.pick() else {
            route.metrics.error("no_instance");
            return local(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "caravan lb: route {}: no healthy instance of service {}\n",
                    route.label, route.route.service
                ),
            );
        };
        let http::request::Parts {
            method,
            uri,
            mut headers,
            ..
        } = parts;
        let path_and_query = if route.route.strip.is_empty() {
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        } else {
            let stripped = strip_path(uri.path(), &route.route.strip);
            let joined = match uri.query() {
                Some(q) => format!("{stripped}?{q}"),
                None => stripped.into_owned(),
            };
            match PathAndQuery::try_from(joined) {
                Ok(pq) => pq,
                Err(e) => {
                    return local(
                        StatusCode::BAD_REQUEST,
                        format!("caravan lb: the path after strip is invalid: {e}\n"),
                    );
                }
            }
        };
        remove_hop_by_hop(&mut headers);
        add_forwarded(&mut headers, client_ip);
        let held = HeldBody::new(body);
        // Headers are copied only when a second attempt is possible.
        let spare = (route.balancer.targets() > 1).then(|| headers.clone());
        let mut headers = Some(headers);
        let mut fallbacks = route.balancer.fallbacks(first);
        let mut target = first;
        loop {
            let Some(upstream) = route.upstream(target) else {
                return local(
                    StatusCode::BAD_GATEWAY,
                    format!("caravan lb: route {}: lost its instance\n", route.label),
                );
            };
            let mut uri_parts = http::uri::Parts::default();
            uri_parts.scheme = Some(route.scheme.clone());
            uri_parts.authority = Some(upstream.authority.clone());
            uri_parts.path_and_query = Some(path_and_query.clone());
            let (Ok(upstream_uri), Some(body)) = (Uri::from_parts(uri_parts), held.attempt())
            else {
                return local(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "caravan lb: route {}: cannot address {}\n",
                        route.label, upstream.authority
                    ),
                );
            };
            let mut req = Request::new(body);
            *req.method_mut() = method.clone();
            *req.uri_mut() = upstream_uri;
            *req.version_mut() = Version::HTTP_11;
            *req.headers_mut() = match headers.take() {
                Some(h) => h,
                None => spare.clone().unwrap_or_default(),
            };
            match self.client.request(req).await {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    remove_hop_by_hop(&mut parts.headers);
                    return Response::from_parts(parts, Either::Left(body));
                }
                Err(e) => {
                    let failure = classify(&e);
                    let retry = match failure {
                        Failure::NotSent => true,
                        Failure::ClosedEarly => held.is_empty() && idempotent(&method),
                        Failure::Other => false,
                    };
                    route.metrics.error(if failure == Failure::NotSent {
                        "connect"
                    } else {
                        "upstream"
                    });
                    let cause = root_cause(&e);
                    let next = if retry { fallbacks.next() } else { None };
                    match next {
                        Some(next) => {
                            tracing::debug!(route = %route.label, upstream = %upstream.authority,
                                error = %cause, "retrying with another instance");
                            target = next;
                        }
                        None => {
                            tracing::warn!(route = %route.label, upstream = %upstream.authority,
                                error = %cause, "proxying failed");
                            return local(
                                StatusCode::BAD_GATEWAY,
                                format!(
                                    "caravan lb: route {}: upstream {}: {cause}\n",
                                    route.label, upstream.authority
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_the_ones_connection_names_too() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert(header::HOST, HeaderValue::from_static("a.com"));
        remove_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "host"]);
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let ip = HeaderValue::from_static("10.0.0.9");
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("Shop.example.com:9999"),
        );
        add_forwarded(&mut h, &ip);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "Shop.example.com:9999");
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        add_forwarded(&mut h, &ip);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert!(h.get("x-forwarded-host").is_none());
    }
}
