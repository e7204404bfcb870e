//! The node agents' endpoints. Nomad clients talk to servers over RPC; Caravan's agents use
//! HTTP under `/v1/client/…` (see docs/api-client.md):
//!
//! - `POST /v1/client/node/register` — register or update a node, get a heartbeat TTL;
//! - `PUT /v1/client/node/:id/heartbeat` — keep the node's heartbeat lease alive;
//! - `GET /v1/client/node/:id/allocations?index=&wait=` — the node's allocations, as a blocking
//!   query that returns only when *that node's* allocations change;
//! - `POST /v1/client/allocations/update` — report allocation status in batches;
//! - `GET /v1/client/allocation/:id/checks` — the allocation's service check results, Nomad's
//!   shape (check id → result), as its client last reported them.

use super::{Api, ApiError, Reply, Request, not_found};
use crate::server::Server;
use crate::server::cache::Snapshot;
use crate::server::objects::Index;
use crate::server::writes_nodes::{AllocUpdate, RegisterNode};
use caravan_schemas::alloc::Allocation;
use caravan_schemas::ids::NodeId;
use caravan_schemas::node::Node;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;
use warp::http::Method;

pub async fn route(api: &Api, req: &Request, segs: &[&str]) -> Result<Reply, ApiError> {
    let server = &api.server;
    match (&req.method, segs) {
        (&Method::POST | &Method::PUT, ["client", "node", "register"]) => {
            register(server, req).await
        }
        (&Method::PUT | &Method::POST, ["client", "node", id, "heartbeat"]) => {
            heartbeat(server, id).await
        }
        (&Method::GET, ["client", "node", id, "allocations"]) => allocations(api, req, id).await,
        (&Method::POST | &Method::PUT, ["client", "allocations", "update"]) => {
            update(server, req).await
        }
        (&Method::GET, ["client", "allocation", id, "checks"]) => checks(server, req, id),
        (
            _,
            ["client", "node", "register"]
            | ["client", "node", _, "heartbeat" | "allocations"]
            | ["client", "allocations", "update"]
            | ["client", "allocation", _, "checks"],
        ) => Err(ApiError::MethodNotAllowed),
        _ => Err(not_found(segs)),
    }
}

/// `{"Node": {…}}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase")]
struct RegisterRequest {
    node: Option<Node>,
}

/// Whether the agent said which status its node is in.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase")]
struct StatusProbe {
    node: Option<NodeStatusProbe>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase")]
struct NodeStatusProbe {
    status: Option<serde_json::Value>,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterResponse {
    /// Nanoseconds.
    #[serde(rename = "HeartbeatTTL")]
    heartbeat_ttl: i64,
    #[serde(rename = "EvalIDs")]
    eval_ids: Vec<String>,
    eval_create_index: i64,
    node_modify_index: i64,
    /// The leader's API address (`ip:port`), `""` when none is known.
    leader_addr: String,
    index: i64,
    last_contact: i64,
    known_leader: bool,
}

async fn register(server: &Server, req: &Request) -> Result<Reply, ApiError> {
    let body: RegisterRequest = req.json()?;
    let node = body
        .node
        .ok_or_else(|| ApiError::BadRequest("missing node for client registration".into()))?;
    let probe: StatusProbe = req.json()?;
    let status_given = probe
        .node
        .and_then(|n| n.status)
        .is_some_and(|s| s.as_str().is_some_and(|s| !s.is_empty()));
    let done = server
        .register_node(
            RegisterNode { node, status_given },
            server.options.heartbeat,
        )
        .await?;
    let leader = server.leader().await?.map(|l| l.addr).unwrap_or_default();
    let index = done.index;
    Reply::json(
        &RegisterResponse {
            heartbeat_ttl: nanos(done.heartbeat_ttl),
            eval_ids: done.eval_ids.iter().map(ToString::to_string).collect(),
            eval_create_index: done.eval_create_index,
            node_modify_index: done.node_modify_index,
            known_leader: !leader.is_empty(),
            leader_addr: leader,
            index,
            last_contact: 0,
        },
        index,
    )
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct HeartbeatResponse {
    /// Nanoseconds.
    #[serde(rename = "HeartbeatTTL")]
    heartbeat_ttl: i64,
    #[serde(rename = "EvalIDs")]
    eval_ids: Vec<String>,
    index: i64,
}

async fn heartbeat(server: &Server, id: &str) -> Result<Reply, ApiError> {
    let done = server
        .heartbeat_node(&NodeId::new(id), server.options.heartbeat)
        .await?;
    let index = done.index;
    Reply::json(
        &HeartbeatResponse {
            heartbeat_ttl: nanos(done.heartbeat_ttl),
            eval_ids: done.eval_ids.iter().map(ToString::to_string).collect(),
            index,
        },
        index,
    )
}

/// The allocations placed on a node (full objects, with their `Job`). With `?index=N` the answer
/// waits until the node's own allocations change past N (others' changes do not count).
async fn allocations(api: &Api, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let server = &api.server;
    if server.cache.nodes.get(&server.keys.node(id)).is_none() {
        return Err(ApiError::NotFound("node not found".into()));
    }
    let index = api.node_allocs().wait(id, req.blocking()?).await;
    let allocs = server.cache.allocs.snapshot();
    let list: Vec<&Allocation> = allocs.by(Index::ByNode, id).map(AsRef::as_ref).collect();
    Reply::json(&list, index)
}

/// `{"Allocs": [{"ID", "ClientStatus", "ClientDescription", "TaskStates", "DeploymentStatus",
/// "NetworkStatus"}, …]}`; whole allocations are accepted too (only those fields are read).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase")]
struct UpdateRequest {
    #[serde(default, alias = "Alloc")]
    allocs: Vec<AllocUpdate>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateResponse {
    index: i64,
    /// How many allocations changed.
    updated: usize,
    /// IDs that matched no allocation (they are skipped, as Nomad skips them).
    #[serde(rename = "UnknownAllocIDs")]
    unknown_alloc_ids: Vec<String>,
    #[serde(rename = "EvalIDs")]
    eval_ids: Vec<String>,
}

async fn update(server: &Server, req: &Request) -> Result<Reply, ApiError> {
    let body: UpdateRequest = req.json()?;
    let done = server.update_allocs_from_client(body.allocs).await?;
    let index = done.index;
    Reply::json(
        &UpdateResponse {
            index,
            updated: done.updated,
            unknown_alloc_ids: done.unknown.iter().map(ToString::to_string).collect(),
            eval_ids: done.eval_ids.iter().map(ToString::to_string).collect(),
        },
        index,
    )
}

/// For each node, the index of the latest change to its allocations (a put or a delete of an
/// allocation placed there, or moved away from there). Kept by diffing successive cache
/// snapshots (cheap: the maps are persistent and share structure), so a node's long-poll
/// wakes only for its own changes, deletions included.
#[derive(Debug)]
pub struct NodeAllocIndex {
    by_node: RwLock<HashMap<String, i64>>,
    /// The allocs cache index last applied; bumps on every applied snapshot.
    applied: watch::Sender<i64>,
}

impl NodeAllocIndex {
    /// Builds the index from the current cache and keeps it current in a background task
    /// (which ends with the server or with the last reference to the index).
    pub fn start(server: &Arc<Server>) -> Arc<NodeAllocIndex> {
        let informer = &server.cache.allocs;
        let mut changes = informer.subscribe();
        let first = informer.snapshot();
        let mut by_node: HashMap<String, i64> = HashMap::new();
        for a in first.objects.values() {
            let e = by_node.entry(a.node_id.to_string()).or_insert(0);
            *e = (*e).max(a.modify_index);
        }
        let this = Arc::new(NodeAllocIndex {
            by_node: RwLock::new(by_node),
            applied: watch::channel(first.index).0,
        });
        let weak_self = Arc::downgrade(&this);
        let weak_informer = Arc::downgrade(informer);
        let task = async move {
            let mut prev = first;
            while changes.changed().await.is_ok() {
                let (Some(this), Some(informer)) = (weak_self.upgrade(), weak_informer.upgrade())
                else {
                    break;
                };
                let next = informer.snapshot();
                this.apply(&prev, &next);
                prev = next;
            }
        };
        tokio::spawn(task.instrument(tracing::info_span!("node_alloc_index")));
        this
    }

    fn apply(&self, prev: &Snapshot<Allocation>, next: &Snapshot<Allocation>) {
        use imbl::ordmap::DiffItem;
        let mut touched: Vec<&str> = Vec::new();
        for item in prev.objects.diff(&next.objects) {
            match item {
                DiffItem::Add(_, a) | DiffItem::Remove(_, a) => touched.push(a.node_id.as_str()),
                DiffItem::Update {
                    old: (_, old),
                    new: (_, new),
                } => {
                    touched.push(old.node_id.as_str());
                    touched.push(new.node_id.as_str());
                }
            }
        }
        if !touched.is_empty() {
            let mut map = match self.by_node.write() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            for node in touched {
                map.insert(node.to_owned(), next.index);
            }
        }
        self.applied.send_replace(next.index);
    }

    /// The index of the node's latest allocation change (0: none seen).
    pub fn index(&self, node: &str) -> i64 {
        let map = match self.by_node.read() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.get(node).copied().unwrap_or(0)
    }

    /// The node's index, after waiting (with `Some((index, wait))`) until it passes `index` or
    /// `wait` runs out.
    pub async fn wait(&self, node: &str, blocking: Option<(i64, Duration)>) -> i64 {
        let Some((min, wait)) = blocking else {
            return self.index(node);
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut applied = self.applied.subscribe();
        loop {
            let index = self.index(node);
            if index > min {
                return index;
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return index,
            }
        }
    }
}

/// `GET /v1/client/allocation/:id/checks`: check id → Nomad's `CheckQueryResult`. Nomad asks
/// the client; Caravan serves what the client reported with the allocation's status (sent
/// when a check's status changes).
fn checks(server: &Server, req: &Request, id: &str) -> Result<Reply, ApiError> {
    let snap = server.cache.allocs.snapshot();
    let alloc = super::allocations::find(server, &snap, req, id)?;
    Reply::json(&alloc.check_results, alloc.modify_index)
}
