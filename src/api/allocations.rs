//! `/v1/allocations`, `/v1/allocation/:id`, `/v1/allocation/:id/stop`.

use super::jobs::watch;
use super::{ApiError, Reply, Request, block_on, find_by_prefix, not_found};
use crate::server::Server;
use crate::server::cache::Snapshot;
use crate::server::objects::Kind;
use caravan_schemas::alloc::{AllocStubFields, Allocation};
use caravan_schemas::ids::{AllocId, Namespace};
use serde::Serialize;
use std::sync::Arc;
use warp::http::Method;

pub async fn route(server: &Server, req: &Request, segs: &[&str]) -> Result<Reply, ApiError> {
    match (&req.method, segs) {
        (&Method::GET, ["allocations"]) => list(server, req).await,
        (&Method::GET, ["allocation", id]) => read(server, req, id).await,
        (&Method::POST | &Method::PUT, ["allocation", id, "stop"]) => stop(server, req, id).await,
        (_, ["allocations"] | ["allocation", _] | ["allocation", _, "stop"]) => {
            Err(ApiError::MethodNotAllowed)
        }
        _ => Err(not_found(segs)),
    }
}

/// `?resources=true` adds `AllocatedResources`; `?task_states=false` drops `TaskStates`.
pub fn stub_fields(req: &Request) -> AllocStubFields {
    AllocStubFields {
        resources: req.flag("resources"),
        task_states: req.param("task_states") != Some("false"),
    }
}

/// One allocation by ID or unique prefix, in any namespace (allocation IDs are unique).
pub fn find(
    server: &Server,
    snap: &Snapshot<Allocation>,
    req: &Request,
    id: &str,
) -> Result<Arc<Allocation>, ApiError> {
    if let Some(a) = snap
        .objects
        .get(&server.keys.key(Kind::Alloc, req.namespace(), id))
    {
        return Ok(Arc::clone(a));
    }
    find_by_prefix(
        snap.objects.values(),
        |a: &Allocation| a.id.as_str(),
        id,
        "alloc",
        "allocations",
    )
}

async fn list(server: &Server, req: &Request) -> Result<Reply, ApiError> {
    let allocs = watch(&server.cache.allocs, req).await?;
    let fields = stub_fields(req);
    let prefix = req.prefix();
    let stubs: Vec<_> = allocs
        .objects
        .values()
        .filter(|a| req.in_namespace(a.namespace.as_str()) && a.id.as_str().starts_with(prefix))
        .map(|a| a.stub_with(fields))
        .collect();
    Reply::json(&stubs, allocs.index)
}

async fn read(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let (snap, _) = block_on(&server.cache.allocs, req, |snap| {
        match find(server, snap, req, id) {
            Ok(a) => a.modify_index,
            Err(_) => snap.index,
        }
    })
    .await?;
    let alloc = find(server, &snap, req, id)?;
    Reply::json(alloc.as_ref(), alloc.modify_index)
}

/// Nomad's `AllocStopResponse`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct StopResponse {
    #[serde(rename = "EvalID")]
    eval_id: String,
    index: i64,
}

async fn stop(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let snap = server.cache.allocs.snapshot();
    // An ID the cache does not know (yet) goes to the store as given, which has the last word.
    let (namespace, id) = match find(server, &snap, req, id) {
        Ok(alloc) => (alloc.namespace.clone(), alloc.id.clone()),
        Err(ApiError::NotFound(_)) => (Namespace::new(req.namespace()), AllocId::new(id)),
        Err(e) => return Err(e),
    };
    let stopped = server
        .stop_alloc(&namespace, &id, req.flag("no_shutdown_delay"))
        .await?;
    Reply::json(
        &StopResponse {
            eval_id: stopped.eval_id.to_string(),
            index: stopped.index,
        },
        stopped.index,
    )
}
