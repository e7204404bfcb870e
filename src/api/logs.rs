//! `GET /v1/client/fs/logs/:alloc?task=&type=stdout|stderr&origin=start|end&offset=&plain=&follow=`:
//! a task's log, streamed from the allocation directory of the agent that runs it (see
//! [`crate::agent::logs::stream`] for what is read and how a followed log ends). A server whose
//! own client runs the allocation (`-dev`) reads it directly; otherwise it forwards the request
//! to the node's agent (its registered `HTTPAddr`) and streams the answer through as it comes.

use super::{Api, ApiError, Request};
use crate::agent::logs::LogError;
use crate::agent::logs::stream::{LogQuery, LogReader};
use bytes::Bytes;
use std::path::Path;
use std::time::Duration;
use warp::Reply as _;
use warp::http::{HeaderValue, StatusCode};

/// A header marking a forwarded request, so two agents never forward to each other in a loop.
pub const FORWARDED: &str = "x-caravan-forwarded";
/// How long connecting to a node's agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a request is for this module (its answer is streamed, so it bypasses [`super::route`]).
pub fn handles(req: &Request) -> bool {
    req.method == warp::http::Method::GET
        && req.segments.len() == 4
        && req.segments[..3] == ["client", "fs", "logs"]
}

/// Answers a logs request.
pub async fn respond(api: &Api, req: &Request) -> warp::reply::Response {
    let alloc_id = req.segments.get(3).map_or("", String::as_str);
    match logs(api, req, alloc_id).await {
        Ok(resp) => resp,
        Err(e) => super::respond(Err(e)),
    }
}

async fn logs(api: &Api, req: &Request, alloc_id: &str) -> Result<warp::reply::Response, ApiError> {
    let server = &api.server;
    let alloc = super::allocations::find(server, &server.cache.allocs.snapshot(), req, alloc_id)?;
    let tasks: Vec<String> = alloc
        .job
        .as_ref()
        .and_then(|j| j.group(&alloc.task_group))
        .map(|g| g.tasks.iter().map(|t| t.name.clone()).collect())
        .unwrap_or_default();
    let query = LogQuery::parse(&req.query, &tasks).map_err(api_error)?;
    let local = server
        .options
        .local_alloc_root
        .as_ref()
        .map(|root| root.join(alloc.id.as_str()))
        .filter(|dir| dir.is_dir());
    match local {
        Some(dir) => serve_local(&dir, &query),
        None => forward(api, req, alloc.node_id.as_str(), alloc.id.as_str(), &query).await,
    }
}

/// Streams the log `query` names from the allocation directory `alloc_dir`.
pub fn serve_local(alloc_dir: &Path, query: &LogQuery) -> Result<warp::reply::Response, ApiError> {
    let reader = LogReader::open(alloc_dir, query).map_err(api_error)?;
    Ok(streamed(reader.into_stream(), query.plain))
}

/// A 200 whose body is `body`, sent as it comes.
fn streamed<S>(body: S, plain: bool) -> warp::reply::Response
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let mut resp =
        warp::reply::stream(SyncStream(std::sync::Mutex::new(Box::pin(body)))).into_response();
    let content_type = if plain {
        "text/plain; charset=utf-8"
    } else {
        "application/json"
    };
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    resp
}

/// A stream that is `Sync` (as warp wants a body stream to be) because it is only reached
/// through `&mut` ([`std::sync::Mutex::get_mut`] takes no lock).
struct SyncStream<S>(std::sync::Mutex<std::pin::Pin<Box<S>>>);

impl<S: futures::Stream> futures::Stream for SyncStream<S> {
    type Item = S::Item;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        let inner = match self.get_mut().0.get_mut() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        };
        inner.as_mut().poll_next(cx)
    }
}

/// How a log error is answered.
pub fn api_error(e: LogError) -> ApiError {
    match e {
        LogError::Invalid(m) => ApiError::BadRequest(m),
        LogError::NotFound(m) => ApiError::NotFound(m),
        e @ LogError::Escapes(_) => ApiError::BadRequest(e.to_string()),
        e => ApiError::Internal(e.to_string()),
    }
}

/// Asks the agent running the allocation, and streams its answer through.
async fn forward(
    api: &Api,
    req: &Request,
    node_id: &str,
    alloc_id: &str,
    query: &LogQuery,
) -> Result<warp::reply::Response, ApiError> {
    let node = api
        .server
        .cache
        .nodes
        .get(&api.server.keys.node(node_id))
        .ok_or_else(|| {
            ApiError::NotFound(format!("the allocation's node {node_id} is not registered"))
        })?;
    if node.http_addr.is_empty()
        || req.headers.contains_key(FORWARDED)
        || node.http_addr == api.server.identity.advertise
    {
        return Err(ApiError::Unavailable(format!(
            "the logs of allocation {alloc_id} are on node {} ({node_id}), whose agent serves no HTTP API",
            node.name
        )));
    }
    let mut url = reqwest::Url::parse(&format!(
        "http://{}/v1/client/fs/logs/{alloc_id}",
        node.http_addr
    ))
    .map_err(|e| {
        ApiError::Unavailable(format!("node {} has an unusable address: {e}", node.name))
    })?;
    url.query_pairs_mut().extend_pairs(req.query.iter());
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| ApiError::Internal(format!("building an HTTP client: {e}")))?;
    let resp = client
        .get(url)
        .header(FORWARDED, "1")
        .send()
        .await
        .map_err(|e| {
            ApiError::Unavailable(format!("asking node {} for the logs: {e}", node.name))
        })?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let mut answer = super::Reply::text(
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            text,
        );
        answer.index = None;
        return Ok(super::respond(Ok(answer)));
    }
    let name = node.name.clone();
    let body = futures::stream::unfold(Some(resp), move |resp| {
        let name = name.clone();
        async move {
            let mut resp = resp?;
            match resp.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(resp))),
                Ok(None) => None,
                Err(e) => Some((
                    Err(std::io::Error::other(format!(
                        "reading node {name}'s answer: {e}"
                    ))),
                    None,
                )),
            }
        }
    });
    Ok(streamed(body, query.plain))
}
