//! The HTTP API of a client-only agent (`caravan agent -client`): what servers and users need
//! from the node itself.
//!
//! - `GET /v1/agent/health` → `{"client": {"ok": true, "message": "ok"}}`;
//! - `GET /v1/client/fs/logs/:alloc` → a task's log, as servers serve it (see
//!   [`crate::agent::logs::stream`]); servers forward logs requests here (the node registers
//!   this address as its `HTTPAddr`). The allocation record (its tasks, its node) is asked of
//!   the servers; only allocations placed on this node, whose directory is here, are served.
//!
//! Anything else is a 404.

use super::logs::stream::LogQuery;
use crate::api::logs::{api_error, serve_local};
use crate::api::{ApiError, Reply};
use caravan_schemas::alloc::Allocation;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use warp::Filter;
use warp::http::Method;

/// How long asking a server for an allocation may take.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client agent's API reads.
#[derive(Debug)]
pub struct ClientApi {
    /// `<data_dir>/client/allocs`.
    pub alloc_root: PathBuf,
    pub node_id: String,
    /// The servers' HTTP base URLs (`http://host:port`).
    pub servers: Vec<String>,
    http: reqwest::Client,
}

impl ClientApi {
    pub fn new(alloc_root: PathBuf, node_id: String, servers: &[String]) -> Arc<Self> {
        Arc::new(Self {
            alloc_root,
            node_id,
            servers: servers
                .iter()
                .map(|s| {
                    if s.contains("://") {
                        s.trim_end_matches('/').to_owned()
                    } else {
                        format!("http://{s}")
                    }
                })
                .collect(),
            http: reqwest::Client::builder()
                .timeout(SERVER_TIMEOUT)
                .build()
                .unwrap_or_default(),
        })
    }

    /// The allocation `id` (a full ID or a unique prefix), asked of each server in turn.
    async fn allocation(&self, id: &str) -> Result<Allocation, ApiError> {
        let mut last = ApiError::Unavailable("no servers".into());
        for base in &self.servers {
            let url = format!("{base}/v1/allocation/{id}");
            match self.http.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => {
                    return resp.json().await.map_err(|e| {
                        ApiError::Internal(format!("decoding allocation {id} from {base}: {e}"))
                    });
                }
                Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => {
                    return Err(ApiError::NotFound(format!("Unknown allocation {id:?}")));
                }
                Ok(resp) => {
                    let status = resp.status();
                    last = ApiError::Unavailable(format!(
                        "{base}: {status}: {}",
                        resp.text().await.unwrap_or_default()
                    ));
                }
                Err(e) => last = ApiError::Unavailable(format!("{base}: {e}")),
            }
        }
        Err(last)
    }
}

async fn logs(
    api: &ClientApi,
    alloc_id: &str,
    query: &std::collections::HashMap<String, String>,
) -> Result<warp::reply::Response, ApiError> {
    let alloc = api.allocation(alloc_id).await?;
    if alloc.node_id.as_str() != api.node_id {
        return Err(ApiError::NotFound(format!(
            "allocation {} does not run on this node",
            alloc.id.short()
        )));
    }
    let tasks: Vec<String> = alloc
        .job
        .as_ref()
        .and_then(|j| j.group(&alloc.task_group))
        .map(|g| g.tasks.iter().map(|t| t.name.clone()).collect())
        .unwrap_or_default();
    let query = LogQuery::parse(query, &tasks).map_err(api_error)?;
    let dir = api.alloc_root.join(alloc.id.as_str());
    if !dir.is_dir() {
        return Err(ApiError::NotFound(format!(
            "state for allocation {} not found on this client",
            alloc.id.short()
        )));
    }
    serve_local(&dir, &query)
}

async fn handle(
    api: Arc<ClientApi>,
    method: Method,
    path: String,
    query: String,
) -> warp::reply::Response {
    let segs: Vec<String> = crate::api::split_path(&path).unwrap_or_default();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let result = match (&method, segs.as_slice()) {
        (&Method::GET, ["agent", "health"]) => Reply::json(
            &serde_json::json!({"client": {"ok": true, "message": "ok"}}),
            0,
        )
        .map(|mut r| {
            r.index = None;
            crate::api::respond(Ok(r))
        }),
        (&Method::GET, ["client", "fs", "logs", alloc]) => {
            logs(&api, alloc, &crate::api::parse_query(&query)).await
        }
        (_, ["agent", "health"] | ["client", "fs", "logs", _]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound(format!(
            "Invalid URL path {path}: a client agent serves /v1/agent/health and /v1/client/fs/logs"
        ))),
    };
    result.unwrap_or_else(|e| crate::api::respond(Ok(Reply::text(e.status(), e.to_string()))))
}

/// The warp filter serving the client agent's API.
pub fn filter(
    api: Arc<ClientApi>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method().and(warp::path::full()).and(raw_query).then(
        move |method: Method, path: warp::path::FullPath, query: String| {
            let api = Arc::clone(&api);
            let path = path.as_str().to_owned();
            let span = tracing::debug_span!("client_http", method = %method, path = %path);
            handle(api, method, path, query).instrument(span)
        },
    )
}

/// Serves the client agent's API on `listener` until `shutdown` resolves.
pub async fn serve(
    api: Arc<ClientApi>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    warp::serve(filter(api))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}
