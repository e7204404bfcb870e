//! The load balancer's API (Caravan extensions): TrafficSplits — `GET /v1/traffic-splits`,
//! `GET|PUT|POST|DELETE /v1/traffic-split/:name` — and the route table the lb-config
//! controller keeps, `GET /v1/lb/routes`, which `caravan lb` long-polls.

use super::jobs::watch;
use super::{ApiError, Reply, Request, block_on, not_found};
use crate::server::Server;
use crate::server::objects::Kind;
use caravan_schemas::ids::Namespace;
use caravan_schemas::lb::{RouteTable, TrafficSplit};
use serde::Serialize;
use warp::http::Method;

pub async fn route(server: &Server, req: &Request, segs: &[&str]) -> Result<Reply, ApiError> {
    match (&req.method, segs) {
        (&Method::GET, ["traffic-splits"]) => list(server, req).await,
        (&Method::GET, ["traffic-split", name]) => read(server, req, name).await,
        (&Method::PUT | &Method::POST, ["traffic-split", name]) => put(server, req, name).await,
        (&Method::DELETE, ["traffic-split", name]) => delete(server, req, name).await,
        (&Method::GET, ["lb", "routes"]) => routes(server, req).await,
        (_, ["traffic-splits"] | ["traffic-split", _] | ["lb", "routes"]) => {
            Err(ApiError::MethodNotAllowed)
        }
        _ => Err(not_found(segs)),
    }
}

/// What a write answers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct WriteReply {
    index: i64,
}

/// `GET /v1/traffic-splits`: the splits of the request's namespace (`?namespace=*`: all),
/// sorted by namespace then name; a blocking query waits for any split to change.
async fn list(server: &Server, req: &Request) -> Result<Reply, ApiError> {
    let snap = watch(&server.cache.traffic_splits, req).await?;
    let mut list: Vec<&TrafficSplit> = snap
        .objects
        .values()
        .map(AsRef::as_ref)
        .filter(|s| req.in_namespace(s.namespace.as_str()))
        .collect();
    list.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Reply::json(&list, snap.index)
}

/// `GET /v1/traffic-split/:name`; a blocking query waits for this split to change.
async fn read(server: &Server, req: &Request, name: &str) -> Result<Reply, ApiError> {
    let key = server.keys.key(Kind::TrafficSplit, req.namespace(), name);
    let (snap, index) = block_on(&server.cache.traffic_splits, req, |snap| {
        snap.objects
            .get(&key)
            .map_or(snap.index, |s| s.modify_index)
    })
    .await?;
    let split = snap
        .objects
        .get(&key)
        .ok_or_else(|| ApiError::NotFound("traffic split not found".into()))?;
    Reply::json(split.as_ref(), index)
}

/// `PUT|POST /v1/traffic-split/:name` with the TrafficSplit as the body (its `Name`, if given,
/// must be the path's; its `Namespace`, if given, the request's). Answers `{"Index": n}`: the
/// split's ModifyIndex, unchanged when the split already was as asked.
async fn put(server: &Server, req: &Request, name: &str) -> Result<Reply, ApiError> {
    let mut split: TrafficSplit = req.json()?;
    if !split.name.is_empty() && split.name != name {
        return Err(ApiError::BadRequest(format!(
            "TrafficSplit name {:?} in the body does not match {name:?} in the path",
            split.name
        )));
    }
    split.name = name.to_owned();
    let asked = req
        .param("namespace")
        .filter(|n| !n.is_empty() && *n != "*");
    let namespace = match (asked, split.namespace.as_str()) {
        (Some(q), "") => q.to_owned(),
        (Some(q), b) if q == b => q.to_owned(),
        (Some(q), b) => {
            return Err(ApiError::BadRequest(format!(
                "TrafficSplit namespace {b:?} in the body does not match {q:?} in the request"
            )));
        }
        (None, "") => "default".to_owned(),
        (None, b) => b.to_owned(),
    };
    split.namespace = Namespace::new(namespace);
    let written = server.put_traffic_split(split).await?;
    Reply::json(
        &WriteReply {
            index: written.index,
        },
        written.index,
    )
}

/// `DELETE /v1/traffic-split/:name`.
async fn delete(server: &Server, req: &Request, name: &str) -> Result<Reply, ApiError> {
    let index = server.delete_traffic_split(req.namespace(), name).await?;
    Reply::json(&WriteReply { index }, index)
}

/// `GET /v1/lb/routes`: the route table (an empty one before the controller first wrote it);
/// a blocking query waits for the table's ModifyIndex to pass `?index`.
async fn routes(server: &Server, req: &Request) -> Result<Reply, ApiError> {
    let key = server.keys.route_table();
    let (snap, index) = block_on(&server.cache.route_tables, req, |snap| {
        snap.objects.get(&key).map_or(0, |t| t.modify_index)
    })
    .await?;
    let table = snap
        .objects
        .get(&key)
        .map_or_else(RouteTable::default, |t| (**t).clone());
    Reply::json(&table, index)
}
