//! `/v1/nodes`, `/v1/node/:id`, `/v1/node/:id/allocations`, and the operators' node writes:
//! `/v1/node/:id/eligibility`, `/v1/node/:id/drain`, `/v1/node/:id/purge`.

use super::jobs::watch;
use super::{ApiError, Reply, Request, block_on, find_by_prefix, not_found};
use crate::server::Server;
use crate::server::cache::Snapshot;
use crate::server::objects::Index;
use crate::server::writes_nodes::{DrainRequest, NodeWrite};
use caravan_schemas::alloc::Allocation;
use caravan_schemas::ids::NodeId;
use caravan_schemas::node::{DrainSpec, Node, NodeStubFields, SchedulingEligibility};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use warp::http::Method;

pub async fn route(server: &Server, req: &Request, segs: &[&str]) -> Result<Reply, ApiError> {
    match (&req.method, segs) {
        (&Method::GET, ["nodes"]) => list(server, req).await,
        (&Method::GET, ["node", id]) => read(server, req, id).await,
        (&Method::GET, ["node", id, "allocations"]) => allocations(server, req, id).await,
        (&Method::POST | &Method::PUT, ["node", id, "eligibility"]) => {
            eligibility(server, req, id).await
        }
        (&Method::POST | &Method::PUT, ["node", id, "drain"]) => drain(server, req, id).await,
        (&Method::POST | &Method::PUT, ["node", id, "purge"]) => purge(server, id).await,
        (
            _,
            ["nodes"]
            | ["node", _]
            | ["node", _, "allocations" | "eligibility" | "drain" | "purge"],
        ) => Err(ApiError::MethodNotAllowed),
        _ => Err(not_found(segs)),
    }
}

/// One node by ID or unique ID prefix.
pub fn find(server: &Server, snap: &Snapshot<Node>, id: &str) -> Result<Arc<Node>, ApiError> {
    let prefix = server.keys.node(id);
    if let Some(n) = snap.objects.get(&prefix) {
        return Ok(Arc::clone(n));
    }
    let candidates = snap
        .objects
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v);
    find_by_prefix(candidates, |n: &Node| n.id.as_str(), id, "node", "nodes")
}

async fn list(server: &Server, req: &Request) -> Result<Reply, ApiError> {
    let nodes = watch(&server.cache.nodes, req).await?;
    let fields = NodeStubFields {
        resources: req.flag("resources"),
        os: req.flag("os"),
    };
    let prefix = req.prefix();
    let stubs: Vec<_> = nodes
        .objects
        .values()
        .filter(|n| n.id.as_str().starts_with(prefix))
        .map(|n| n.stub_with(fields))
        .collect();
    Reply::json(&stubs, nodes.index)
}

async fn read(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let (snap, _) = block_on(&server.cache.nodes, req, |snap| {
        match find(server, snap, id) {
            Ok(n) => n.modify_index,
            Err(_) => snap.index,
        }
    })
    .await?;
    let node = find(server, &snap, id)?;
    Reply::json(&node.sanitized(), node.modify_index)
}

/// Full allocations, as Nomad returns them here.
async fn allocations(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let node = find(server, &server.cache.nodes.snapshot(), id)?;
    let allocs = watch(&server.cache.allocs, req).await?;
    let list: Vec<&Allocation> = allocs
        .by(Index::ByNode, node.id.as_str())
        .map(AsRef::as_ref)
        .collect();
    Reply::json(&list, allocs.index)
}

/// The ID a write names: a unique prefix is resolved from the cache; an ID the cache does not
/// know (yet) goes to the store as given, which has the last word.
fn resolve_id(server: &Server, id: &str) -> Result<NodeId, ApiError> {
    match find(server, &server.cache.nodes.snapshot(), id) {
        Ok(node) => Ok(node.id.clone()),
        Err(ApiError::NotFound(_)) => Ok(NodeId::new(id)),
        Err(e) => Err(e),
    }
}

/// Nomad's `NodeUpdateResponse` subset the node writes return.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeWriteResponse {
    #[serde(rename = "EvalIDs")]
    eval_ids: Vec<String>,
    eval_create_index: i64,
    node_modify_index: i64,
    index: i64,
    last_contact: i64,
    known_leader: bool,
}

fn write_reply(done: NodeWrite) -> Result<Reply, ApiError> {
    let index = done.index;
    Reply::json(
        &NodeWriteResponse {
            eval_ids: done.eval_ids.iter().map(ToString::to_string).collect(),
            eval_create_index: done.eval_create_index,
            node_modify_index: done.node_modify_index,
            index,
            last_contact: 0,
            known_leader: true,
        },
        index,
    )
}

/// `{"NodeID": …, "Eligibility": "eligible" | "ineligible"}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase")]
struct EligibilityRequest {
    #[serde(rename = "NodeID", default)]
    #[allow(dead_code)]
    node_id: String,
    #[serde(default)]
    eligibility: String,
}

async fn eligibility(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let body: EligibilityRequest = req.json()?;
    let eligibility: SchedulingEligibility = body.eligibility.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid scheduling eligibility {:?}",
            body.eligibility
        ))
    })?;
    write_reply(
        server
            .update_eligibility(&resolve_id(server, id)?, eligibility)
            .await?,
    )
}

/// `{"NodeID": …, "DrainSpec": {"Deadline": ns, "IgnoreSystemJobs": bool} | null,
/// "MarkEligible": bool, "Meta": {…}}`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
struct DrainBody {
    #[serde(rename = "NodeID")]
    #[allow(dead_code)]
    node_id: String,
    drain_spec: Option<DrainSpec>,
    mark_eligible: bool,
    meta: BTreeMap<String, String>,
}

async fn drain(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let body: DrainBody = req.json()?;
    let request = DrainRequest {
        spec: body.drain_spec,
        mark_eligible: body.mark_eligible,
        meta: body.meta,
    };
    write_reply(
        server
            .update_drain(&resolve_id(server, id)?, request)
            .await?,
    )
}

async fn purge(server: &Server, id: &str) -> Result<Reply, ApiError> {
    write_reply(server.purge_node(&resolve_id(server, id)?).await?)
}
