//! Nomad's native service discovery: `GET /v1/services`, `GET /v1/service/:name`,
//! `DELETE /v1/service/:name/:id`. The registrations are written by the service controller
//! (`server::service_controller`); this module only reads them, and deletes one on request.

use super::jobs::watch;
use super::{ApiError, Reply, Request, not_found};
use crate::server::Server;
use crate::server::objects::Kind;
use crate::store::{Compare, Op, Txn};
use caravan_schemas::service::{ServiceRegistration, list_stubs};
use std::time::Duration;
use warp::http::Method;

pub async fn route(server: &Server, req: &Request, segs: &[&str]) -> Result<Reply, ApiError> {
    match (&req.method, segs) {
        (&Method::GET, ["services"]) => list(server, req).await,
        (&Method::GET, ["service", name]) => read(server, req, name).await,
        (&Method::DELETE, ["service", name, id]) => delete(server, req, name, id).await,
        (_, ["services"] | ["service", _] | ["service", _, _]) => Err(ApiError::MethodNotAllowed),
        _ => Err(not_found(segs)),
    }
}

/// `GET /v1/services`: per namespace, each service name with the union of its tags.
async fn list(server: &Server, req: &Request) -> Result<Reply, ApiError> {
    let snap = watch(&server.cache.services, req).await?;
    let stubs = list_stubs(
        snap.objects
            .values()
            .filter(|r| req.in_namespace(r.namespace.as_str()))
            .map(AsRef::as_ref),
    );
    Reply::json(&stubs, snap.index)
}

/// The registrations of service `name` in the request's namespace (`?tag=` keeps those with
/// that tag), sorted by allocation then id.
pub fn instances<'a>(
    regs: impl Iterator<Item = &'a ServiceRegistration>,
    req: &Request,
    name: &str,
) -> Vec<&'a ServiceRegistration> {
    let tag = req.param("tag").filter(|t| !t.is_empty());
    let mut list: Vec<&ServiceRegistration> = regs
        .filter(|r| r.service_name == name && req.in_namespace(r.namespace.as_str()))
        .filter(|r| tag.is_none_or(|t| r.tags.iter().any(|have| have == t)))
        .collect();
    list.sort_by(|a, b| (&a.alloc_id, &a.id).cmp(&(&b.alloc_id, &b.id)));
    list
}

/// `GET /v1/service/:name`: every instance, healthy or not (as Nomad; the health is in the
/// `Healthy` extension field). An unknown name is an empty list, not a 404. A blocking query
/// returns when any registration changes, as Nomad's index for this read is the table's.
async fn read(server: &Server, req: &Request, name: &str) -> Result<Reply, ApiError> {
    let snap = watch(&server.cache.services, req).await?;
    let list = instances(snap.objects.values().map(AsRef::as_ref), req, name);
    Reply::json(&list, snap.index)
}

/// `DELETE /v1/service/:name/:id`: removes one registration. The controller owns them: if the
/// allocation still runs and still has that service, it writes it again when the allocation
/// next changes or at its periodic resync.
async fn delete(server: &Server, req: &Request, name: &str, id: &str) -> Result<Reply, ApiError> {
    let key = server.keys.key(Kind::Service, req.namespace(), id);
    let Some(reg) = server.cache.services.get(&key) else {
        return Err(ApiError::NotFound("service registration not found".into()));
    };
    if reg.service_name != name {
        return Err(ApiError::BadRequest(format!(
            "service registration {id} is of service {:?}, not {name:?}",
            reg.service_name
        )));
    }
    let resp = server
        .store
        .txn(
            Txn::new()
                .when([Compare::unchanged(key.clone(), reg.modify_index)])
                .and_then([Op::delete(key)]),
        )
        .await?;
    if !resp.succeeded {
        return Err(ApiError::Conflict(
            "the service registration changed meanwhile; try again".into(),
        ));
    }
    server
        .cache
        .wait_for(resp.revision, Duration::from_secs(5))
        .await;
    Reply::json(&serde_json::Value::Null, resp.revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use caravan_schemas::ids::{AllocId, Namespace, ServiceId};
    use std::collections::HashMap;

    fn req(query: &[(&str, &str)]) -> Request {
        Request {
            method: Method::GET,
            segments: Vec::new(),
            query: query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
            headers: Default::default(),
            body: Bytes::new(),
        }
    }

    fn reg(ns: &str, name: &str, alloc: &str, id: &str, tags: &[&str]) -> ServiceRegistration {
        ServiceRegistration {
            id: ServiceId::new(id),
            service_name: name.into(),
            namespace: Namespace::new(ns),
            alloc_id: AllocId::new(alloc),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            address: "10.0.0.5".into(),
            port: 23456,
            ..ServiceRegistration::default()
        }
    }

    #[test]
    fn instances_filter_by_name_namespace_and_tag_and_sort_by_alloc_then_id() {
        let regs = [
            reg("default", "web", "b", "2", &["v1"]),
            reg("default", "web", "a", "9", &["v2"]),
            reg("default", "web", "b", "1", &["v1"]),
            reg("default", "db", "a", "3", &[]),
            reg("ops", "web", "c", "4", &["v1"]),
        ];
        let ids = |list: Vec<&ServiceRegistration>| -> Vec<String> {
            list.iter().map(|r| r.id.to_string()).collect()
        };
        assert_eq!(
            ids(instances(regs.iter(), &req(&[]), "web")),
            ["9", "1", "2"]
        );
        assert_eq!(
            ids(instances(regs.iter(), &req(&[("tag", "v1")]), "web")),
            ["1", "2"]
        );
        assert_eq!(
            ids(instances(regs.iter(), &req(&[("namespace", "ops")]), "web")),
            ["4"]
        );
        assert_eq!(
            ids(instances(regs.iter(), &req(&[("namespace", "*")]), "web")),
            ["9", "1", "2", "4"]
        );
        assert!(instances(regs.iter(), &req(&[]), "nope").is_empty());
    }

    #[test]
    fn a_registration_serializes_in_nomads_shape() {
        let r = reg("default", "web", "a", "_nomad-task-a-web-web-http", &["v1"]);
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "ID",
            "ServiceName",
            "Namespace",
            "NodeID",
            "Datacenter",
            "JobID",
            "AllocID",
            "Tags",
            "Address",
            "Port",
            "CreateIndex",
            "ModifyIndex",
        ] {
            assert!(v.get(k).is_some(), "{k} in {v}");
        }
        assert_eq!(v["Port"], 23456);
    }
}
