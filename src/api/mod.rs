//! Nomad's HTTP API (v1), served with warp.
//!
//! One warp filter takes every request apart — method, path, query, headers, a size-limited
//! body — and a plain `match` routes it ([`route`]); each resource has its module. Handlers
//! return `Result<Reply, ApiError>`, and [`ApiError`] is the one place errors become statuses.
//! Every request is counted and timed by its route template ([`route_template`]).

pub mod agent;
pub mod allocations;
pub mod casefold;
pub mod client;
pub mod deployments;
pub mod evaluations;
pub mod jobs;
pub mod lb;
pub mod logs;
pub mod metrics;
pub mod nodes;
pub mod services;

use crate::metrics::Metrics;
use crate::server::Server;
use crate::server::cache::{Informer, Snapshot};
use crate::server::objects::Object;
use bytes::Bytes;
use serde::Serialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tracing::Instrument;
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
/// Blocking queries wait at most this long (Nomad's cap).
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// …and this long when `wait` is not given.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// A request, taken apart.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// Path segments after `/v1/`, percent-decoded.
    pub segments: Vec<String>,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// A boolean query parameter (`?purge=true`).
    pub fn flag(&self, name: &str) -> bool {
        // As Go's strconv.ParseBool: 1, t, T, TRUE, true, True (python's requests sends "True");
        // a bare `?purge` counts too.
        matches!(
            self.param(name),
            Some("" | "1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }

    /// The namespace asked for, `default` when none.
    pub fn namespace(&self) -> &str {
        self.param("namespace")
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
    }

    /// Whether the request asks for every namespace (`?namespace=*`).
    pub fn all_namespaces(&self) -> bool {
        self.param("namespace") == Some("*")
    }

    /// Whether an object in `namespace` belongs in a list answer.
    pub fn in_namespace(&self, namespace: &str) -> bool {
        self.all_namespaces() || namespace == self.namespace()
    }

    /// `?prefix=`, empty when not given.
    pub fn prefix(&self) -> &str {
        self.param("prefix").unwrap_or("")
    }

    /// Whether the request has a body at all (some writes take an optional one).
    pub fn has_body(&self) -> bool {
        !self.body.iter().all(u8::is_ascii_whitespace)
    }

    /// The JSON body, decoded; an empty body is a 400 as in Nomad. Keys match the request
    /// type's field names case-insensitively, as Go's decoder matches them ([`casefold`]).
    pub fn json<T: serde::de::DeserializeOwned + schemars::JsonSchema + 'static>(
        &self,
    ) -> Result<T, ApiError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::BadRequest("Request body is empty".into()));
        }
        let mut value: serde_json::Value = serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::BadRequest(format!("Failed to decode request body: {e}")))?;
        caravan_schemas::jobspec::strip_nulls(&mut value);
        casefold::folder_for::<T>().canonicalize(&mut value);
        serde_path_to_error::deserialize(value).map_err(|e| {
            ApiError::BadRequest(format!(
                "Failed to decode request body: {}: {}",
                e.path(),
                e.inner()
            ))
        })
    }

    /// `?index=N&wait=D`: the index to wait past and for how long, when this is a blocking query.
    pub fn blocking(&self) -> Result<Option<(i64, Duration)>, ApiError> {
        let Some(index) = self.param("index") else {
            return Ok(None);
        };
        let index: i64 = index.parse().map_err(|_| {
            ApiError::BadRequest(format!("Invalid index {index:?}: expected an integer"))
        })?;
        let wait = match self.param("wait") {
            None | Some("") => DEFAULT_WAIT,
            Some(w) => parse_wait(w)?,
        };
        Ok(Some((index, wait.min(MAX_WAIT))))
    }
}

/// `wait` is a Go duration, or a bare number of seconds.
fn parse_wait(w: &str) -> Result<Duration, ApiError> {
    if let Ok(secs) = w.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    caravan_schemas::duration::parse(w)
        .map(|d| d.to_std())
        .map_err(|e| ApiError::BadRequest(format!("Invalid wait time: {e}")))
}

/// A successful answer: a body and the index it reflects.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: &'static str,
    pub index: Option<i64>,
}

impl Reply {
    /// JSON with `X-Nomad-Index`.
    pub fn json<T: Serialize + ?Sized>(value: &T, index: i64) -> Result<Reply, ApiError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| ApiError::Internal(format!("encoding the reply: {e}")))?;
        Ok(Reply {
            status: StatusCode::OK,
            body: body.into(),
            content_type: "application/json",
            index: Some(index),
        })
    }

    /// Plain text.
    pub fn text(status: StatusCode, text: impl Into<String>) -> Reply {
        Reply {
            status,
            body: Bytes::from(text.into()),
            content_type: "text/plain; charset=utf-8",
            index: None,
        }
    }
}

/// Why a request failed; each becomes a status and a plain-text body, as in Nomad.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Permission denied")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("Invalid method")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("Request body too large")]
    PayloadTooLarge,
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Internal(format!("store: {e}"))
    }
}

/// What every handler can reach: the server, the metrics, and state the API keeps itself.
#[derive(Debug)]
pub struct Api {
    pub server: Arc<Server>,
    pub metrics: Arc<Metrics>,
    /// Per-node allocation change index for the client long-poll, started on first use.
    node_allocs: OnceLock<Arc<client::NodeAllocIndex>>,
}

impl Api {
    pub fn new(server: Arc<Server>, metrics: Arc<Metrics>) -> Arc<Api> {
        Arc::new(Api {
            server,
            metrics,
            node_allocs: OnceLock::new(),
        })
    }

    /// The node → allocation-change index, started (once) on first use.
    pub fn node_allocs(&self) -> Arc<client::NodeAllocIndex> {
        Arc::clone(
            self.node_allocs
                .get_or_init(|| client::NodeAllocIndex::start(&self.server)),
        )
    }
}

/// Routes a request to its handler.
pub async fn route(api: &Api, req: Request) -> Result<Reply, ApiError> {
    let server = &api.server;
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    match segs.first().copied() {
        Some("jobs" | "job" | "validate") => jobs::route(server, &req, &segs).await,
        Some("allocations" | "allocation") => allocations::route(server, &req, &segs).await,
        Some("evaluations" | "evaluation") => evaluations::route(server, &req, &segs).await,
        Some("nodes" | "node") => nodes::route(server, &req, &segs).await,
        Some("deployments" | "deployment") => deployments::route(server, &req, &segs).await,
        Some("services" | "service") => services::route(server, &req, &segs).await,
        Some("traffic-splits" | "traffic-split" | "lb") => lb::route(server, &req, &segs).await,
        Some("agent" | "status" | "regions") => agent::route(server, &req, &segs).await,
        Some("client") => client::route(api, &req, &segs).await,
        Some("metrics") => metrics::route(api, &req, &segs),
        _ => Err(not_found(&segs)),
    }
}

/// The 404 for a path nothing serves.
pub fn not_found(segs: &[&str]) -> ApiError {
    ApiError::NotFound(format!("Invalid URL path /v1/{}", segs.join("/")))
}

/// Route templates, for metrics: a path is labelled with the first template it matches, so a
/// label never holds an id. `:x` matches one segment, `*x` the rest of the path.
pub const ROUTES: &[&str] = &[
    "/v1/jobs",
    "/v1/jobs/parse",
    "/v1/validate/job",
    "/v1/job/:id",
    "/v1/job/:id/versions",
    "/v1/job/:id/allocations",
    "/v1/job/:id/evaluations",
    "/v1/job/:id/deployments",
    "/v1/job/:id/deployment",
    "/v1/job/:id/summary",
    "/v1/job/:id/evaluate",
    "/v1/job/:id/plan",
    "/v1/job/:id/revert",
    "/v1/job/:id/stable",
    "/v1/job/:id/scale",
    "/v1/job/:id/dispatch",
    "/v1/job/:id/periodic/force",
    "/v1/allocations",
    "/v1/allocation/:id",
    "/v1/allocation/:id/stop",
    "/v1/evaluations",
    "/v1/evaluation/:id",
    "/v1/evaluation/:id/allocations",
    "/v1/nodes",
    "/v1/node/:id",
    "/v1/node/:id/allocations",
    "/v1/node/:id/eligibility",
    "/v1/node/:id/drain",
    "/v1/node/:id/purge",
    "/v1/deployments",
    "/v1/deployment/allocations/:id",
    "/v1/deployment/promote/:id",
    "/v1/deployment/fail/:id",
    "/v1/deployment/pause/:id",
    "/v1/deployment/allocation-health/:id",
    "/v1/deployment/:id",
    "/v1/agent/self",
    "/v1/agent/members",
    "/v1/agent/health",
    "/v1/status/leader",
    "/v1/status/peers",
    "/v1/regions",
    "/v1/metrics",
    "/v1/client/node/register",
    "/v1/client/node/:id/heartbeat",
    "/v1/client/node/:id/allocations",
    "/v1/client/allocations/update",
    "/v1/client/fs/logs/:id",
    "/v1/client/allocation/:id/restart",
    "/v1/client/allocation/:id/signal",
    "/v1/client/allocation/:id/checks",
    "/v1/services",
    "/v1/service/:name",
    "/v1/service/:name/:id",
    "/v1/traffic-splits",
    "/v1/traffic-split/:name",
    "/v1/lb/routes",
    "/v1/namespaces",
    "/v1/namespace/:name",
    "/v1/vars",
    "/v1/var/*path",
    "/v1/acl/bootstrap",
    "/v1/acl/tokens",
    "/v1/acl/token/self",
    "/v1/acl/token/:id",
    "/v1/acl/policies",
    "/v1/acl/policy/:name",
    "/v1/event/stream",
    "/metrics",
];

/// The template of `path` from [`ROUTES`], or `"unmatched"`.
pub fn route_template(path: &str) -> &'static str {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    ROUTES
        .iter()
        .copied()
        .find(|template| {
            let pattern: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
            let mut i = 0;
            for p in &pattern {
                if p.starts_with('*') {
                    return i < segs.len();
                }
                match segs.get(i) {
                    Some(s) if p.starts_with(':') || p == s => i += 1,
                    _ => return false,
                }
            }
            i == segs.len()
        })
        .unwrap_or("unmatched")
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

/// Answers a blocking query on one informer over a view of it: `index_of` gives the view's
/// index in a snapshot; with `?index=N` the answer waits (up to `wait`) until that index passes
/// N. Unlike waiting on the whole kind, a view (one object, one node's allocations) that did not
/// change keeps waiting when other objects of the kind change.
pub async fn block_on<T: Object>(
    informer: &Informer<T>,
    req: &Request,
    index_of: impl Fn(&Snapshot<T>) -> i64,
) -> Result<(Arc<Snapshot<T>>, i64), ApiError> {
    let blocking = req.blocking()?;
    let deadline = blocking.map(|(_, wait)| tokio::time::Instant::now() + wait);
    loop {
        let mut changes = informer.subscribe();
        let snap = informer.snapshot();
        let index = index_of(&snap);
        let (Some((min, _)), Some(deadline)) = (blocking, deadline) else {
            return Ok((snap, index));
        };
        if index > min {
            return Ok((snap, index));
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            // Timed out, or the informer is gone: answer with what there is.
            Ok(Err(_)) | Err(_) => return Ok((snap, index)),
        }
    }
}

/// Finds one object by ID or unique ID prefix among `candidates` (an exact ID wins). Nomad's
/// messages: 404 `"<what> not found"`, 400 `"Prefix matched multiple <plural>"`.
pub fn find_by_prefix<'a, T: 'a>(
    candidates: impl Iterator<Item = &'a Arc<T>>,
    id_of: impl Fn(&T) -> &str,
    id: &str,
    what: &str,
    plural: &str,
) -> Result<Arc<T>, ApiError> {
    if id.is_empty() {
        return Err(ApiError::BadRequest(format!("missing {what} ID")));
    }
    let mut matches: Vec<&Arc<T>> = Vec::new();
    for c in candidates {
        let cid = id_of(c);
        if cid == id {
            return Ok(Arc::clone(c));
        }
        if cid.starts_with(id) {
            matches.push(c);
        }
    }
    match matches.as_slice() {
        [] => Err(ApiError::NotFound(format!("{what} not found"))),
        [one] => Ok(Arc::clone(one)),
        many => {
            let mut ids: Vec<&str> = many.iter().map(|m| id_of(m)).collect();
            ids.sort_unstable();
            Err(ApiError::BadRequest(format!(
                "Prefix matched multiple {plural}\n\n{}",
                ids.join("\n")
            )))
        }
    }
}

pub(crate) fn respond(result: Result<Reply, ApiError>) -> warp::reply::Response {
    let reply = result.unwrap_or_else(|e| Reply::text(e.status(), e.to_string()));
    let mut resp = warp::reply::Response::new(reply.body.into());
    *resp.status_mut() = reply.status;
    let headers = resp.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(reply.content_type));
    if let Some(index) = reply.index {
        headers.insert("x-nomad-index", HeaderValue::from(index.max(1)));
        headers.insert("x-nomad-knownleader", HeaderValue::from_static("true"));
        headers.insert("x-nomad-lastcontact", HeaderValue::from_static("0"));
    }
    resp
}

pub(crate) fn split_path(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix("/v1/")?;
    Some(
        rest.split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect(),
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn parse_query(raw: &str) -> HashMap<String, String> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

/// Reads a request body, refusing more than [`MAX_BODY_BYTES`] however it is sent.
async fn read_body<S, B>(stream: S) -> Result<Bytes, ApiError>
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: warp::Buf,
{
    use futures::StreamExt;
    let mut stream = stream;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
        if out.len() as u64 + chunk.remaining() as u64 > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(out.into())
}

/// Handles one request, start to end: take it apart, route it, answer, and record it.
async fn handle<S, B>(
    api: Arc<Api>,
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    body: S,
) -> warp::reply::Response
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: warp::Buf,
{
    let started = Instant::now();
    let template = route_template(&path);
    let method_name = method_label(&method);
    let resp = match read_body(body).await {
        Err(e) => respond(Err(e)),
        Ok(_) if path == "/metrics" => respond(metrics::prometheus(&api, &method)),
        Ok(body) => match split_path(&path) {
            Some(segments) => {
                let req = Request {
                    method,
                    segments,
                    query: parse_query(&query),
                    headers,
                    body,
                };
                // Logs are streamed: their handler builds the response itself.
                if logs::handles(&req) {
                    logs::respond(&api, &req).await
                } else {
                    respond(route(&api, req).await)
                }
            }
            None => respond(Err(ApiError::NotFound(format!("Invalid URL path {path}")))),
        },
    };
    api.metrics.api.observe(
        method_name,
        template,
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// The warp filter serving the whole API.
pub fn filter(
    api: Arc<Api>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(raw_query)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            move |method: Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: HeaderMap,
                  body| {
                let api = Arc::clone(&api);
                let path = path.as_str().to_owned();
                let span =
                    tracing::debug_span!("http", method = %method, route = route_template(&path));
                handle(api, method, path, query, headers, body).instrument(span)
            },
        )
        .recover(|rejection: warp::Rejection| async move {
            let (status, text) = if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
                (StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
            } else {
                (StatusCode::BAD_REQUEST, "Bad request")
            };
            let mut resp = warp::reply::Response::new(text.into());
            *resp.status_mut() = status;
            Ok::<_, Infallible>(resp)
        })
        .unify()
}

/// Serves the API on `listener` until `shutdown` resolves, with a registry of its own.
pub async fn serve(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    serve_api(
        Api::new(Arc::clone(&server), Arc::clone(&server.metrics)),
        listener,
        shutdown,
    )
    .await;
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve_api(
    api: Arc<Api>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    warp::serve(filter(api))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

/// The address a listener is bound to, for logs.
pub fn local_addr(listener: &tokio::net::TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_templates() {
        assert_eq!(route_template("/v1/jobs"), "/v1/jobs");
        assert_eq!(route_template("/v1/job/example"), "/v1/job/:id");
        assert_eq!(
            route_template("/v1/job/example/allocations"),
            "/v1/job/:id/allocations"
        );
        assert_eq!(
            route_template("/v1/deployment/allocations/abc"),
            "/v1/deployment/allocations/:id"
        );
        assert_eq!(route_template("/v1/deployment/abc"), "/v1/deployment/:id");
        assert_eq!(
            route_template("/v1/client/node/n1/heartbeat"),
            "/v1/client/node/:id/heartbeat"
        );
        assert_eq!(route_template("/v1/var/a/b/c"), "/v1/var/*path");
        assert_eq!(route_template("/v1/service/web"), "/v1/service/:name");
        assert_eq!(
            route_template("/v1/service/web/_nomad-task-x"),
            "/v1/service/:name/:id"
        );
        assert_eq!(
            route_template("/v1/traffic-split/demo"),
            "/v1/traffic-split/:name"
        );
        assert_eq!(route_template("/v1/lb/routes"), "/v1/lb/routes");
        assert_eq!(route_template("/v1/var"), "unmatched");
        assert_eq!(route_template("/v1/nope/x"), "unmatched");
        assert_eq!(route_template("/metrics"), "/metrics");
    }

    #[test]
    fn prefixes_resolve_uniquely() {
        let items: Vec<Arc<String>> = ["abc1", "abc2", "abd"]
            .iter()
            .map(|s| Arc::new((*s).to_owned()))
            .collect();
        let find = |id: &str| {
            find_by_prefix(
                items.iter(),
                |s: &String| s.as_str(),
                id,
                "alloc",
                "allocations",
            )
        };
        assert_eq!(find("abd").unwrap().as_str(), "abd");
        assert_eq!(find("abc1").unwrap().as_str(), "abc1");
        let err = find("abc").unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(
            err.to_string()
                .starts_with("Prefix matched multiple allocations"),
            "{err}"
        );
        assert_eq!(find("x").unwrap_err().to_string(), "alloc not found");
    }
}
