//! `GET /v1/client/fs/logs/:alloc?task=&type=stdout|stderr&origin=start|end&offset=&plain=`:
//! a task's log, read from the allocation directory of the agent that runs it. A server whose
//! own client runs the allocation (`-dev`) reads it directly; otherwise it forwards the request
//! to the node's agent.
//!
//! Paths never leave the allocation's log directory: the task must be one of the allocation's,
//! and the file names are built, never taken from the request.

use super::{Api, ApiError, Reply, Request};
use base64::Engine;
use std::path::{Path, PathBuf};
use warp::http::StatusCode;

/// A header marking a forwarded request, so two agents never forward to each other in a loop.
const FORWARDED: &str = "x-caravan-forwarded";

pub async fn logs(api: &Api, req: &Request, alloc_id: &str) -> Result<Reply, ApiError> {
    let server = &api.server;
    let alloc = super::allocations::find(server, &server.cache.allocs.snapshot(), req, alloc_id)?;
    let group_tasks: Vec<String> = alloc
        .job
        .as_ref()
        .and_then(|j| j.group(&alloc.task_group))
        .map(|g| g.tasks.iter().map(|t| t.name.clone()).collect())
        .unwrap_or_default();
    let task = match (req.param("task"), group_tasks.as_slice()) {
        (Some(t), _) if group_tasks.iter().any(|g| g == t) => t.to_owned(),
        (Some(t), _) => {
            return Err(ApiError::BadRequest(format!(
                "task {t:?} is not in allocation {}",
                alloc.id.short()
            )));
        }
        (None, [only]) => only.clone(),
        (None, _) => {
            return Err(ApiError::BadRequest(
                "must include a task name (?task=)".into(),
            ));
        }
    };
    let kind = match req.param("type").unwrap_or("stdout") {
        k @ ("stdout" | "stderr") => k,
        other => {
            return Err(ApiError::BadRequest(format!(
                "log type must be stdout or stderr, got {other:?}"
            )));
        }
    };
    let offset: u64 = req
        .param("offset")
        .filter(|o| !o.is_empty())
        .map(|o| {
            o.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid offset {o:?}")))
        })
        .transpose()?
        .unwrap_or(0);
    let from_end = match req.param("origin").unwrap_or("start") {
        "start" => false,
        "end" => true,
        other => {
            return Err(ApiError::BadRequest(format!(
                "origin must be start or end, got {other:?}"
            )));
        }
    };

    let local = server
        .options
        .local_alloc_root
        .as_ref()
        .map(|root| root.join(alloc.id.as_str()));
    let data = match local.filter(|dir| dir.is_dir()) {
        Some(dir) => read_log(
            &dir.join("alloc").join("logs"),
            &task,
            kind,
            offset,
            from_end,
        )?,
        None => return forward(api, req, alloc.node_id.as_str(), alloc.id.as_str()).await,
    };
    if req.flag("plain") {
        return Ok(Reply {
            status: StatusCode::OK,
            body: data.into(),
            content_type: "text/plain; charset=utf-8",
            index: None,
        });
    }
    let frame = serde_json::json!({
        "Offset": offset + data.len() as u64,
        "Data": base64::engine::general_purpose::STANDARD.encode(&data),
        "File": format!("alloc/logs/{task}.{kind}.0"),
    });
    Reply::json(&frame, server.cache.allocs.index())
}

/// The log's bytes: its rotated files (`<task>.<type>.0`, `.1`, …) in order, from `offset`
/// bytes after the start, or the last `offset` bytes when reading from the end.
fn read_log(
    dir: &Path,
    task: &str,
    kind: &str,
    offset: u64,
    from_end: bool,
) -> Result<Vec<u8>, ApiError> {
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| ApiError::Internal(format!("reading {}: {e}", dir.display())))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n: u32 = name
                .strip_prefix(&format!("{task}.{kind}."))?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    files.sort();
    let mut all = Vec::new();
    for (_, path) in files {
        let mut bytes = std::fs::read(&path)
            .map_err(|e| ApiError::Internal(format!("reading {}: {e}", path.display())))?;
        all.append(&mut bytes);
    }
    let len = all.len();
    let offset = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
    Ok(if from_end {
        all.split_off(len - offset)
    } else {
        all.split_off(offset)
    })
}

/// Asks the agent running the allocation.
async fn forward(
    api: &Api,
    req: &Request,
    node_id: &str,
    alloc_id: &str,
) -> Result<Reply, ApiError> {
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
            "the logs of allocation {alloc_id} are on node {} ({}), whose agent serves no HTTP API; read them from its data dir",
            node.name, node_id
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
    let resp = reqwest::Client::new()
        .get(url)
        .header(FORWARDED, "1")
        .send()
        .await
        .map_err(|e| {
            ApiError::Unavailable(format!("asking node {} for the logs: {e}", node.name))
        })?;
    let status = resp.status();
    let content_type = if req.flag("plain") {
        "text/plain; charset=utf-8"
    } else {
        "application/json"
    };
    let body = resp
        .bytes()
        .await
        .map_err(|e| ApiError::Unavailable(format!("reading node {}'s answer: {e}", node.name)))?;
    Ok(Reply {
        status: StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
        body,
        content_type,
        index: None,
    })
}
