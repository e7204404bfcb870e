//! `/v1/agent/self`, `/v1/agent/members`, `/v1/agent/health`, `/v1/status/leader`,
//! `/v1/status/peers`, `/v1/regions`.

use super::{ApiError, Reply, Request, not_found};
use crate::server::Server;
use crate::server::leader::Member;
use serde::Serialize;
use serde_json::json;
use warp::http::{Method, StatusCode};

pub async fn route(server: &Server, req: &Request, segs: &[&str]) -> Result<Reply, ApiError> {
    match (&req.method, segs) {
        (&Method::GET, ["agent", "self"]) => self_info(server).await,
        (&Method::GET, ["agent", "members"]) => members(server),
        (&Method::GET, ["agent", "health"]) => health(server).await,
        (&Method::GET, ["status", "leader"]) => leader(server).await,
        (&Method::GET, ["status", "peers"]) => peers(server),
        (&Method::GET, ["regions"]) => {
            Reply::json(&[server.identity.region.as_str()], server.cache.index())
        }
        (
            _,
            ["agent", "self" | "members" | "health"] | ["status", "leader" | "peers"] | ["regions"],
        ) => Err(ApiError::MethodNotAllowed),
        _ => Err(not_found(segs)),
    }
}

/// The live servers, sorted by name.
fn live_members(server: &Server) -> Vec<Member> {
    let mut members: Vec<Member> = server
        .cache
        .members
        .snapshot()
        .objects
        .values()
        .map(|m| (**m).clone())
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    members
}

/// The leader's API address, `""` when there is none (as Nomad answers then).
async fn leader_addr(server: &Server) -> Result<String, ApiError> {
    Ok(server.leader().await?.map(|l| l.addr).unwrap_or_default())
}

async fn self_info(server: &Server) -> Result<Reply, ApiError> {
    let id = &server.identity;
    let leader = server.leader().await?;
    let is_leader = leader
        .as_ref()
        .is_some_and(|l| l.name == server.member().name);
    let store = &server.store;
    let body = json!({
        "config": {
            "Region": id.region,
            "Datacenter": id.datacenter,
            "NodeName": id.name,
            "Version": {"Version": env!("CARGO_PKG_VERSION"), "VersionPrerelease": "", "VersionMetadata": ""},
            "Server": {"Enabled": true},
            "Client": {"Enabled": false},
            "AdvertiseAddrs": {"HTTP": id.advertise},
            "Store": {"Kind": store.kind().to_string(), "MaxTxnOps": store.max_txn_ops()},
        },
        "member": server.member(),
        "stats": {
            "nomad": {
                "server": "true",
                "leader": is_leader.to_string(),
                "leader_addr": leader.map(|l| l.addr).unwrap_or_default(),
                "known_regions": "1",
                "bootstrap": "false",
            },
            "store": {
                "kind": store.kind().to_string(),
                "revision": server.cache.index().to_string(),
            },
            "runtime": {
                "arch": std::env::consts::ARCH,
                "os": std::env::consts::OS,
                "cpu_count": std::thread::available_parallelism().map_or(1, usize::from).to_string(),
                "version": env!("CARGO_PKG_VERSION"),
            },
        },
    });
    Reply::json(&body, server.cache.index())
}

/// Nomad's `ServerMembers`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct MembersResponse {
    server_name: String,
    server_region: String,
    #[serde(rename = "ServerDC")]
    server_dc: String,
    members: Vec<Member>,
}

fn members(server: &Server) -> Result<Reply, ApiError> {
    let body = MembersResponse {
        server_name: server.member().name,
        server_region: server.identity.region.clone(),
        server_dc: server.identity.datacenter.clone(),
        members: live_members(server),
    };
    Reply::json(&body, server.cache.members.index())
}

async fn leader(server: &Server) -> Result<Reply, ApiError> {
    Reply::json(&leader_addr(server).await?, server.cache.members.index())
}

fn peers(server: &Server) -> Result<Reply, ApiError> {
    let peers: Vec<String> = live_members(server)
        .iter()
        .map(|m| format!("{}:{}", m.addr, m.port))
        .collect();
    Reply::json(&peers, server.cache.members.index())
}

/// `{"server": {"ok": …, "message": …}}`; 500 when the store does not answer or no leader is
/// known, as Nomad answers when it has no cluster leader.
async fn health(server: &Server) -> Result<Reply, ApiError> {
    let (ok, message) = match server.store.current_revision().await {
        Err(e) => (false, format!("store: {e}")),
        Ok(_) => match leader_addr(server).await {
            Ok(addr) if !addr.is_empty() => (true, "ok".to_owned()),
            Ok(_) => (false, "No cluster leader".to_owned()),
            Err(e) => (false, e.to_string()),
        },
    };
    let mut reply = Reply::json(
        &json!({"server": {"ok": ok, "message": message}}),
        server.cache.index(),
    )?;
    if !ok {
        reply.status = StatusCode::INTERNAL_SERVER_ERROR;
    }
    Ok(reply)
}
