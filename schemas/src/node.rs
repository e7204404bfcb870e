//! Nodes (Nomad clients) in Nomad's API form: [`Node`] as `GET /v1/node/:id` returns it and
//! [`NodeListStub`] as `GET /v1/nodes` lists it.

use crate::duration::Duration;
use crate::ids::NodeId;
use crate::resources::{
    ComparableResources, NodeReservedResources, NodeResources, null_as_default, wire_enum,
};
use crate::time::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

wire_enum! {
    /// A node's liveness as the servers see it.
    pub enum NodeStatus {
        /// Registered, not yet heartbeating as ready.
        Initializing = "initializing",
        Ready = "ready",
        /// Missed its heartbeat TTL; its allocations are lost.
        Down = "down",
        /// Missed its heartbeat but allocations may reconnect (`max_client_disconnect`).
        Disconnected = "disconnected",
    }
    default = Initializing;
}

wire_enum! {
    /// Whether the scheduler may place new allocations on a node.
    pub enum SchedulingEligibility {
        Eligible = "eligible",
        Ineligible = "ineligible",
    }
    default = Eligible;
}

wire_enum! {
    /// Where a node's latest drain stands.
    pub enum DrainStatus {
        Draining = "draining",
        Complete = "complete",
        Canceled = "canceled",
    }
    default = Draining;
}

/// Nomad's node event subsystems.
pub mod subsystems {
    pub const DRAIN: &str = "Drain";
    pub const DRIVER: &str = "Driver";
    pub const HEARTBEAT: &str = "Heartbeat";
    pub const CLUSTER: &str = "Cluster";
}

/// A client node: identity, fingerprinted attributes and resources, drivers, and its state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: NodeId,
    /// The node's secret; the API returns it empty (see [`Node::sanitized`]).
    #[serde(rename = "SecretID")]
    pub secret_id: String,
    pub datacenter: String,
    pub name: String,
    /// `host:port` of the agent's HTTP API.
    #[serde(rename = "HTTPAddr")]
    pub http_addr: String,
    #[serde(rename = "TLSEnabled")]
    pub tls_enabled: bool,
    /// Fingerprinted attributes: `kernel.name`, `cpu.arch`, `unique.hostname`, `driver.docker`, …
    #[serde(deserialize_with = "null_as_default")]
    pub attributes: BTreeMap<String, String>,
    pub node_resources: Option<NodeResources>,
    pub reserved_resources: Option<NodeReservedResources>,
    /// Links to external systems (`consul`, `aws.ec2`, …).
    #[serde(deserialize_with = "null_as_default")]
    pub links: BTreeMap<String, String>,
    /// Operator metadata (`client { meta { ... } }`).
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    pub node_class: String,
    /// Node pool; `default` unless set.
    pub node_pool: String,
    /// Hash of the fields that decide feasibility, to memoize it across similar nodes.
    pub computed_class: String,
    /// Set while the node drains; implies ineligible.
    pub drain_strategy: Option<DrainStrategy>,
    pub scheduling_eligibility: SchedulingEligibility,
    pub status: NodeStatus,
    pub status_description: String,
    /// When `Status` last changed, in Unix **seconds** (as Nomad records it).
    pub status_updated_at: i64,
    /// Recent noteworthy events (drain, driver health, heartbeats), oldest first.
    #[serde(deserialize_with = "null_as_default")]
    pub events: Vec<NodeEvent>,
    /// Driver name → fingerprint and health.
    #[serde(deserialize_with = "null_as_default")]
    pub drivers: BTreeMap<String, DriverInfo>,
    /// Host volume name → configuration.
    #[serde(deserialize_with = "null_as_default")]
    pub host_volumes: BTreeMap<String, ClientHostVolumeConfig>,
    /// Host network name → configuration.
    #[serde(deserialize_with = "null_as_default")]
    pub host_networks: BTreeMap<String, ClientHostNetworkConfig>,
    /// The latest drain, kept after it ends.
    pub last_drain: Option<DrainMetadata>,
    pub create_index: i64,
    pub modify_index: i64,
    /// Legacy flag, `DrainStrategy != null`; Nomad's encoder appends it (last) to every node.
    pub drain: bool,
}

impl Node {
    /// Ready, not draining and eligible: the scheduler may place work here.
    pub fn is_ready(&self) -> bool {
        self.status == NodeStatus::Ready
            && self.drain_strategy.is_none()
            && self.scheduling_eligibility == SchedulingEligibility::Eligible
    }

    /// A fingerprinted attribute (`kernel.name`, `unique.hostname`, …).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    /// An operator metadata value.
    pub fn meta_value(&self, name: &str) -> Option<&str> {
        self.meta.get(name).map(String::as_str)
    }

    /// What the node offers the scheduler: its resources minus what it reserves.
    pub fn comparable_resources(&self) -> ComparableResources {
        let mut c = self
            .node_resources
            .as_ref()
            .map(NodeResources::comparable)
            .unwrap_or_default();
        if let Some(r) = &self.reserved_resources {
            c.subtract(&r.comparable());
        }
        c
    }

    /// The form the API returns: `SecretID` blanked and `Drain` in step with `DrainStrategy`.
    pub fn sanitized(&self) -> Node {
        Node {
            secret_id: String::new(),
            drain: self.drain_strategy.is_some(),
            ..self.clone()
        }
    }

    /// The `/v1/nodes` entry without the optional fields (what `GET /v1/nodes` returns).
    pub fn stub(&self) -> NodeListStub {
        self.stub_with(NodeStubFields::default())
    }

    /// The `/v1/nodes` entry; `fields` adds resources (`?resources=true`) or `os.name`
    /// (`?os=true`).
    pub fn stub_with(&self, fields: NodeStubFields) -> NodeListStub {
        NodeListStub {
            address: split_host(&self.http_addr).to_owned(),
            id: self.id.clone(),
            attributes: fields.os.then(|| {
                BTreeMap::from([(
                    "os.name".to_owned(),
                    self.attribute("os.name").unwrap_or_default().to_owned(),
                )])
            }),
            datacenter: self.datacenter.clone(),
            name: self.name.clone(),
            node_pool: self.node_pool.clone(),
            node_class: self.node_class.clone(),
            version: self
                .attribute("nomad.version")
                .unwrap_or_default()
                .to_owned(),
            drain: self.drain_strategy.is_some(),
            scheduling_eligibility: self.scheduling_eligibility,
            status: self.status,
            status_description: self.status_description.clone(),
            drivers: self.drivers.clone(),
            host_volumes: self.host_volumes.clone(),
            node_resources: if fields.resources {
                self.node_resources.clone()
            } else {
                None
            },
            reserved_resources: if fields.resources {
                self.reserved_resources.clone()
            } else {
                None
            },
            last_drain: self.last_drain.clone(),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

/// The host part of `host:port` (`[::1]:4646` → `::1`), or `""` when there is no port, as Go's
/// `net.SplitHostPort` fails then.
fn split_host(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, port)) if port.starts_with(':') => host,
            _ => "",
        };
    }
    match addr.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => "",
    }
}

/// Which optional fields a [`NodeListStub`] carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStubFields {
    /// `NodeResources` and `ReservedResources`.
    pub resources: bool,
    /// `Attributes` with only `os.name`.
    pub os: bool,
}

/// A node as `GET /v1/nodes` lists it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeListStub {
    /// Host part of `HTTPAddr`.
    pub address: String,
    #[serde(rename = "ID")]
    pub id: NodeId,
    /// Only with `?os=true`: `{"os.name": …}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<BTreeMap<String, String>>,
    pub datacenter: String,
    pub name: String,
    pub node_pool: String,
    pub node_class: String,
    /// The agent's version (`nomad.version` attribute).
    pub version: String,
    pub drain: bool,
    pub scheduling_eligibility: SchedulingEligibility,
    pub status: NodeStatus,
    pub status_description: String,
    #[serde(deserialize_with = "null_as_default")]
    pub drivers: BTreeMap<String, DriverInfo>,
    #[serde(deserialize_with = "null_as_default")]
    pub host_volumes: BTreeMap<String, ClientHostVolumeConfig>,
    /// Only with `?resources=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_resources: Option<NodeResources>,
    /// Only with `?resources=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_resources: Option<NodeReservedResources>,
    pub last_drain: Option<DrainMetadata>,
    pub create_index: i64,
    pub modify_index: i64,
}

/// How a node drains. On the wire the `DrainSpec` fields sit inline (Go embeds the struct):
/// `{"Deadline": …, "IgnoreSystemJobs": …, "ForceDeadline": …, "StartedAt": …}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct DrainStrategy {
    #[serde(flatten)]
    pub drain_spec: DrainSpec,
    /// When remaining allocations are stopped regardless; zero for no deadline.
    pub force_deadline: Timestamp,
    pub started_at: Timestamp,
}

/// What the operator asked for (`node drain -deadline 1h -ignore-system`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct DrainSpec {
    /// How long allocations may take to migrate; negative forces it now, 0 means no deadline.
    pub deadline: Duration,
    /// Leave system jobs running.
    pub ignore_system_jobs: bool,
}

/// The latest drain of a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct DrainMetadata {
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    pub status: DrainStatus,
    /// The ACL token accessor that started it.
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
}

/// Something that happened to a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeEvent {
    pub message: String,
    /// One of [`subsystems`].
    pub subsystem: String,
    #[serde(deserialize_with = "null_as_default")]
    pub details: BTreeMap<String, String>,
    pub timestamp: Timestamp,
    pub create_index: i64,
}

/// A driver's fingerprint and health on a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct DriverInfo {
    #[serde(deserialize_with = "null_as_default")]
    pub attributes: BTreeMap<String, String>,
    pub detected: bool,
    pub healthy: bool,
    pub health_description: String,
    pub update_time: Timestamp,
}

/// A host volume a node offers (`client { host_volume "data" { path = "/srv" } }`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct ClientHostVolumeConfig {
    pub name: String,
    pub path: String,
    pub read_only: bool,
    /// Set for dynamic host volumes only.
    #[serde(rename = "ID")]
    pub id: String,
}

/// A host network a node offers (`client { host_network "public" { cidr = "…" } }`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct ClientHostNetworkConfig {
    pub name: String,
    #[serde(rename = "CIDR")]
    pub cidr: String,
    pub interface: String,
    pub reserved_ports: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(v: &serde_json::Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    fn nomad_node() -> serde_json::Value {
        serde_json::from_str(
            r#"{
            "ID": "f7476465-4d6e-c0de-26d0-e383c49be941",
            "SecretID": "",
            "Datacenter": "dc1",
            "Name": "client-1",
            "HTTPAddr": "10.0.0.5:4646",
            "TLSEnabled": false,
            "Attributes": {"kernel.name": "linux", "os.name": "debian", "nomad.version": "1.9.3",
                "unique.hostname": "client-1", "driver.docker": "1"},
            "NodeResources": {
                "Cpu": {"CpuShares": 8000, "TotalCpuCores": 4, "ReservableCpuCores": [0, 1, 2, 3]},
                "Memory": {"MemoryMB": 16000}, "Disk": {"DiskMB": 100000},
                "Networks": null, "NodeNetworks": null, "MinDynamicPort": 20000, "MaxDynamicPort": 32000
            },
            "ReservedResources": {
                "Cpu": {"CpuShares": 1000, "ReservedCpuCores": null}, "Memory": {"MemoryMB": 1000},
                "Disk": {"DiskMB": 0}, "Networks": {"ReservedHostPorts": ""}
            },
            "Links": null,
            "Meta": {"rack": "r1"},
            "NodeClass": "",
            "NodePool": "default",
            "ComputedClass": "v1:123456",
            "DrainStrategy": {
                "Deadline": 3600000000000, "IgnoreSystemJobs": true,
                "ForceDeadline": "2024-05-01T13:00:00Z", "StartedAt": "2024-05-01T12:00:00Z"
            },
            "SchedulingEligibility": "ineligible",
            "Status": "ready",
            "StatusDescription": "",
            "StatusUpdatedAt": 1714564800,
            "Events": [{"Message": "Node registered", "Subsystem": "Cluster", "Details": null,
                "Timestamp": "2024-05-01T12:00:00.5Z", "CreateIndex": 0}],
            "Drivers": {"docker": {"Attributes": {"driver.docker.version": "24.0.7"}, "Detected": true,
                "Healthy": true, "HealthDescription": "Healthy", "UpdateTime": "2024-05-01T12:00:00Z"}},
            "HostVolumes": {"data": {"Name": "data", "Path": "/srv/data", "ReadOnly": false, "ID": ""}},
            "HostNetworks": null,
            "LastDrain": {"StartedAt": "2024-05-01T12:00:00Z", "UpdatedAt": "2024-05-01T12:00:00Z",
                "Status": "draining", "AccessorID": "", "Meta": null},
            "CreateIndex": 10,
            "ModifyIndex": 42,
            "Drain": true
        }"#,
        )
        .unwrap()
    }

    #[test]
    fn node_round_trips_nomad_json() {
        let nomad = nomad_node();
        let node: Node = serde_json::from_value(nomad.clone()).unwrap();
        assert_eq!(node.status, NodeStatus::Ready);
        assert_eq!(
            node.scheduling_eligibility,
            SchedulingEligibility::Ineligible
        );
        let drain = node.drain_strategy.as_ref().unwrap();
        assert_eq!(drain.drain_spec.deadline, Duration::from_hours(1));
        assert!(drain.drain_spec.ignore_system_jobs);
        assert_eq!(drain.force_deadline.to_rfc3339(), "2024-05-01T13:00:00Z");
        assert_eq!(
            node.events[0].timestamp.to_rfc3339(),
            "2024-05-01T12:00:00.5Z"
        );
        assert_eq!(
            node.last_drain.as_ref().unwrap().status,
            DrainStatus::Draining
        );
        let back = serde_json::to_value(&node).unwrap();
        assert_eq!(keys(&back), keys(&nomad));
        assert_eq!(back["DrainStrategy"], nomad["DrainStrategy"]);
        assert_eq!(back["Drivers"], nomad["Drivers"]);
        assert_eq!(
            back["Events"][0]["Timestamp"],
            nomad["Events"][0]["Timestamp"]
        );
        assert_eq!(back["Links"], json!({}));
        // Drain comes last, as Nomad's encoder appends it.
        assert_eq!(
            back.as_object().unwrap().keys().next_back().unwrap(),
            "Drain"
        );
    }

    #[test]
    fn enums_round_trip_their_wire_strings() {
        for s in NodeStatus::ALL {
            let json = serde_json::to_value(s).unwrap();
            assert_eq!(json, s.as_str());
            assert_eq!(serde_json::from_value::<NodeStatus>(json).unwrap(), *s);
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(
            NodeStatus::WIRE,
            ["initializing", "ready", "down", "disconnected"]
        );
        assert_eq!(SchedulingEligibility::WIRE, ["eligible", "ineligible"]);
        assert_eq!("ineligible".parse(), Ok(SchedulingEligibility::Ineligible));
        assert!(serde_json::from_value::<NodeStatus>(json!("sleeping")).is_err());
        assert_eq!(
            serde_json::from_value::<NodeStatus>(json!("")).unwrap(),
            NodeStatus::Initializing
        );
        assert_eq!(DrainStatus::Canceled.to_string(), "canceled");
    }

    #[test]
    fn helpers_read_readiness_attributes_and_capacity() {
        let mut node: Node = serde_json::from_value(nomad_node()).unwrap();
        assert!(!node.is_ready(), "draining");
        node.drain_strategy = None;
        node.scheduling_eligibility = SchedulingEligibility::Eligible;
        assert!(node.is_ready());
        node.status = NodeStatus::Down;
        assert!(!node.is_ready());
        assert_eq!(node.attribute("kernel.name"), Some("linux"));
        assert_eq!(node.attribute("missing"), None);
        assert_eq!(node.meta_value("rack"), Some("r1"));
        assert_eq!(
            node.comparable_resources(),
            ComparableResources {
                cpu_shares: 7000,
                memory_mb: 15000,
                disk_mb: 100000
            }
        );
        assert_eq!(
            Node::default().comparable_resources(),
            ComparableResources::default()
        );
    }

    #[test]
    fn sanitized_blanks_the_secret_and_syncs_drain() {
        let mut node: Node = serde_json::from_value(nomad_node()).unwrap();
        node.secret_id = "s3cr3t".into();
        node.drain = false;
        let clean = node.sanitized();
        assert_eq!(clean.secret_id, "");
        assert!(clean.drain);
    }

    #[test]
    fn stub_carries_the_list_fields() {
        let node: Node = serde_json::from_value(nomad_node()).unwrap();
        let stub = serde_json::to_value(node.stub()).unwrap();
        let expected = [
            "Address",
            "CreateIndex",
            "Datacenter",
            "Drain",
            "Drivers",
            "HostVolumes",
            "ID",
            "LastDrain",
            "ModifyIndex",
            "Name",
            "NodeClass",
            "NodePool",
            "SchedulingEligibility",
            "Status",
            "StatusDescription",
            "Version",
        ];
        assert_eq!(keys(&stub), expected);
        assert_eq!(stub["Address"], "10.0.0.5");
        assert_eq!(stub["Version"], "1.9.3");
        assert_eq!(stub["Drain"], true);
        assert_eq!(stub["SchedulingEligibility"], "ineligible");

        let full = serde_json::to_value(node.stub_with(NodeStubFields {
            resources: true,
            os: true,
        }))
        .unwrap();
        assert_eq!(full["Attributes"], json!({"os.name": "debian"}));
        assert_eq!(full["NodeResources"]["Memory"]["MemoryMB"], 16000);
        assert!(full.get("ReservedResources").is_some());
        let decoded: NodeListStub = serde_json::from_value(full).unwrap();
        assert_eq!(decoded.id, node.id);
    }

    #[test]
    fn split_host_behaves_like_go() {
        assert_eq!(split_host("10.0.0.5:4646"), "10.0.0.5");
        assert_eq!(split_host("[::1]:4646"), "::1");
        assert_eq!(split_host("client-1"), "");
        assert_eq!(split_host("::1"), "");
    }
}
