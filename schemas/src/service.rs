//! Service registrations (Nomad's native service discovery, `provider = "nomad"`): one per
//! running allocation and `service` block, as `GET /v1/service/:name` returns them, and the
//! per-namespace summary `GET /v1/services` returns.

use crate::ids::{AllocId, JobId, Namespace, NodeId, ServiceId};
use crate::resources::null_as_default;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One allocation advertising one service at an address and port.
///
/// The first twelve fields are Nomad's. `Meta`, `Canary`, `JobVersion` and `Healthy` are
/// **Caravan extensions** (the load balancer routes on them); they come after Nomad's fields
/// and Nomad clients ignore them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRegistration {
    /// `_nomad-task-<alloc>-<group or task>-<service>-<port label>`, as Nomad builds it.
    #[serde(rename = "ID")]
    pub id: ServiceId,
    pub service_name: String,
    pub namespace: Namespace,
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    pub datacenter: String,
    #[serde(rename = "JobID")]
    pub job_id: JobId,
    #[serde(rename = "AllocID")]
    pub alloc_id: AllocId,
    /// The service's tags, or its canary tags while the allocation is a canary.
    #[serde(deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    pub address: String,
    pub port: i32,
    pub create_index: i64,
    pub modify_index: i64,
    /// Caravan extension: the service's `meta` (or `canary_meta` for a canary).
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    /// Caravan extension: registered by an unpromoted canary.
    pub canary: bool,
    /// Caravan extension: the job version the allocation runs.
    pub job_version: u64,
    /// Caravan extension: the result of the service's checks; `null` when it has none yet.
    pub healthy: Option<bool>,
}

impl ServiceRegistration {
    /// Nomad's registration id: `_nomad-task-<alloc id>-<group or task>-<service>-<port label>`.
    pub fn make_id(alloc: &AllocId, owner: &str, service: &str, port_label: &str) -> ServiceId {
        ServiceId::new(format!(
            "_nomad-task-{alloc}-{owner}-{service}-{port_label}"
        ))
    }

    /// `address:port` (IPv6 addresses bracketed).
    pub fn socket_addr(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }

    /// Carries every tag in `tags`.
    pub fn has_tags(&self, tags: &[&str]) -> bool {
        tags.iter().all(|t| self.tags.iter().any(|have| have == t))
    }
}

/// The services of one namespace, as `GET /v1/services` lists them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRegistrationListStub {
    pub namespace: Namespace,
    #[serde(deserialize_with = "null_as_default")]
    pub services: Vec<ServiceRegistrationStub>,
}

/// A service name and the union of its instances' tags.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRegistrationStub {
    pub service_name: String,
    /// Deduplicated (sorted here; Nomad's order is unspecified).
    #[serde(deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
}

/// Groups registrations into the `/v1/services` form: one entry per namespace, one stub per
/// service name, tags merged. Sorted by namespace then service name.
pub fn list_stubs<'a>(
    registrations: impl IntoIterator<Item = &'a ServiceRegistration>,
) -> Vec<ServiceRegistrationListStub> {
    let mut by_ns: BTreeMap<&Namespace, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for reg in registrations {
        by_ns
            .entry(&reg.namespace)
            .or_default()
            .entry(reg.service_name.as_str())
            .or_default()
            .extend(reg.tags.iter().map(String::as_str));
    }
    by_ns
        .into_iter()
        .map(|(ns, services)| ServiceRegistrationListStub {
            namespace: ns.clone(),
            services: services
                .into_iter()
                .map(|(name, tags)| ServiceRegistrationStub {
                    service_name: name.to_owned(),
                    tags: tags.into_iter().map(str::to_owned).collect(),
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(v: &serde_json::Value) -> Vec<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn registration_round_trips_nomad_json_with_extensions_last() {
        let nomad = json!({
            "ID": "_nomad-task-5456bd7a-9fc0-c0dd-6131-cbee77f57577-cache-redis-cache-db",
            "ServiceName": "redis-cache",
            "Namespace": "default",
            "NodeID": "fb2170a8-257d-3c64-b14d-bc06cc94e34c",
            "Datacenter": "dc1",
            "JobID": "example",
            "AllocID": "5456bd7a-9fc0-c0dd-6131-cbee77f57577",
            "Tags": ["cache", "v1"],
            "Address": "10.0.0.5",
            "Port": 23456,
            "CreateIndex": 80,
            "ModifyIndex": 80
        });
        let reg: ServiceRegistration = serde_json::from_value(nomad.clone()).unwrap();
        assert_eq!(reg.port, 23456);
        assert_eq!(reg.healthy, None);
        assert_eq!(reg.socket_addr(), "10.0.0.5:23456");
        assert!(reg.has_tags(&["v1"]) && !reg.has_tags(&["v2"]));
        assert_eq!(
            reg.id,
            ServiceRegistration::make_id(&reg.alloc_id, "cache", "redis-cache", "db")
        );
        let back = serde_json::to_value(&reg).unwrap();
        let mut want = keys(&nomad);
        want.extend(["Meta", "Canary", "JobVersion", "Healthy"].map(String::from));
        assert_eq!(
            keys(&back),
            want,
            "Nomad's fields first, in Nomad's order, then Caravan's"
        );
        for k in keys(&nomad) {
            assert_eq!(back[&k], nomad[&k], "{k}");
        }
        assert_eq!(back["Healthy"], serde_json::Value::Null);
    }

    #[test]
    fn null_tags_decode_and_ipv6_addresses_bracket() {
        let reg: ServiceRegistration =
            serde_json::from_value(json!({"Tags": null, "Address": "::1", "Port": 80})).unwrap();
        assert!(reg.tags.is_empty());
        assert_eq!(reg.socket_addr(), "[::1]:80");
    }

    #[test]
    fn list_stubs_group_by_namespace_and_merge_tags() {
        let reg = |ns: &str, name: &str, tags: &[&str]| ServiceRegistration {
            namespace: Namespace::new(ns),
            service_name: name.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        };
        let regs = [
            reg("default", "web", &["v2", "http"]),
            reg("default", "web", &["v1", "http"]),
            reg("default", "db", &[]),
            reg("ops", "metrics", &["prom"]),
        ];
        let stubs = list_stubs(&regs);
        let v = serde_json::to_value(&stubs).unwrap();
        assert_eq!(
            v,
            json!([
                {"Namespace": "default", "Services": [
                    {"ServiceName": "db", "Tags": []},
                    {"ServiceName": "web", "Tags": ["http", "v1", "v2"]}
                ]},
                {"Namespace": "ops", "Services": [{"ServiceName": "metrics", "Tags": ["prom"]}]}
            ])
        );
        let decoded: Vec<ServiceRegistrationListStub> = serde_json::from_value(v).unwrap();
        assert_eq!(decoded, stubs);
    }
}
