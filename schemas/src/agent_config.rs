//! The agent's configuration file, in Nomad's HCL shape (`data_dir`, `bind_addr`, `ports`,
//! `server { … }`, `client { … }`, `plugin "docker" { config { … } }`). Decoded with the same
//! machinery as jobspecs, so errors carry the line and column.

use crate::duration::SpecDuration;
use crate::jobspec::wrappers::{HasLabel, Labelled, Single, Text};
use crate::jobspec::{Seg, SpecError, Tree, decode_at};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfigSpec {
    pub name: Option<String>,
    pub region: Option<String>,
    pub datacenter: Option<String>,
    pub data_dir: Option<String>,
    pub bind_addr: Option<String>,
    pub log_level: Option<String>,
    pub ports: Option<Single<PortsSpec>>,
    pub addresses: Option<Single<AddressesSpec>>,
    pub advertise: Option<Single<AddressesSpec>>,
    pub server: Option<Single<ServerSpec>>,
    pub client: Option<Single<ClientSpec>>,
    pub dns: Option<Single<DnsSpec>>,
    pub plugin: Labelled<PluginSpec>,
}

/// `dns { enabled = true  port = 8600  bind = "127.0.0.1" }`: the agent answers
/// `<service>.service.<dc>.caravan` (A and SRV, healthy instances) over UDP and TCP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSpec {
    pub enabled: Option<bool>,
    /// 8600 unless set; 0 picks a free port.
    pub port: Option<u16>,
    /// The address to listen on (the agent's `bind_addr` unless set).
    pub bind: Option<String>,
    /// The domain answered for (`caravan`).
    pub domain: Option<String>,
    /// The TTL of answers (`0s`: resolvers ask again every time).
    pub ttl: Option<SpecDuration>,
    /// How long a client-only agent keeps an answer from the servers (`1s`).
    pub cache: Option<SpecDuration>,
}

/// `ports { http = 4646 }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PortsSpec {
    pub http: Option<u16>,
    /// Accepted for compatibility with Nomad files; Caravan servers talk through the store.
    pub rpc: Option<u16>,
    pub serf: Option<u16>,
}

/// `addresses { http = "0.0.0.0" }` / `advertise { http = "10.0.0.5:4646" }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AddressesSpec {
    pub http: Option<String>,
    pub rpc: Option<String>,
    pub serf: Option<String>,
}

/// `server { enabled = true store = "etcd://…" }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSpec {
    pub enabled: Option<bool>,
    /// `embedded` (default) or `etcd://host:port,host:port`.
    pub store: Option<String>,
    pub heartbeat_grace: Option<SpecDuration>,
    pub min_heartbeat_ttl: Option<SpecDuration>,
    /// Accepted for compatibility; the store decides quorum.
    pub bootstrap_expect: Option<i64>,
    pub job_gc_threshold: Option<SpecDuration>,
    pub eval_gc_threshold: Option<SpecDuration>,
}

/// `client { enabled = true servers = ["10.0.0.1:4646"] … }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSpec {
    pub enabled: Option<bool>,
    pub servers: Option<Vec<String>>,
    pub node_class: Option<String>,
    pub node_pool: Option<String>,
    pub network_interface: Option<String>,
    pub meta: Option<Single<BTreeMap<String, Text>>>,
    pub options: Option<Single<BTreeMap<String, Text>>>,
    pub reserved: Option<Single<ReservedSpec>>,
    pub host_network: Labelled<HostNetworkSpec>,
    pub cpu_total_compute: Option<i64>,
    pub memory_total_mb: Option<i64>,
}

/// `reserved { cpu = 500 memory = 512 disk = 1024 reserved_ports = "22,80" }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ReservedSpec {
    pub cpu: Option<i64>,
    pub cores: Option<String>,
    pub memory: Option<i64>,
    pub disk: Option<i64>,
    pub reserved_ports: Option<String>,
}

/// `host_network "public" { cidr = "10.0.0.0/8" interface = "eth0" }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HostNetworkSpec {
    pub name: Option<String>,
    pub cidr: Option<String>,
    pub interface: Option<String>,
    pub reserved_ports: Option<String>,
}

/// `plugin "docker" { config { allow_privileged = true } }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PluginSpec {
    pub name: Option<String>,
    pub config: Option<Single<BTreeMap<String, serde_json::Value>>>,
    pub args: Option<Vec<String>>,
}

impl HasLabel for HostNetworkSpec {
    fn label(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn set_label(&mut self, label: String) {
        self.name = Some(label);
    }
}

impl HasLabel for PluginSpec {
    fn label(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn set_label(&mut self, label: String) {
        self.name = Some(label);
    }
}

/// Reads an agent configuration file (HCL, or JSON in HCL's JSON shape).
pub fn parse(name: &str, text: &str) -> Result<AgentConfigSpec, SpecError> {
    let tree: Tree = if text.trim_start().starts_with('{') {
        let mut docs = crate::jobspec::yaml::parse_documents(text).map_err(|e| e.in_file(name))?;
        docs.pop().unwrap_or_default()
    } else {
        crate::jobspec::hcl::parse_config(text).map_err(|e| e.in_file(name))?
    };
    let root: &[Seg] = &[];
    decode_at(&tree, root).map_err(|e| e.in_file(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nomad_style_agent_file_decodes() {
        let text = r#"
data_dir  = "/opt/caravan"
bind_addr = "0.0.0.0"
datacenter = "dc2"
ports { http = 5646 }
server {
  enabled = true
  store = "etcd://127.0.0.1:2379"
  heartbeat_grace = "15s"
}
client {
  enabled = true
  servers = ["127.0.0.1:5646"]
  node_class = "edge"
  meta { rack = "r1" }
  reserved {
    cpu    = 500
    memory = 256
  }
}
plugin "raw_exec" {
  config {
    enabled = true
  }
}
plugin "docker" {
  config {
    allow_privileged = false
  }
}
dns {
  enabled = true
  port    = 8600
  bind    = "127.0.0.1"
  ttl     = "5s"
}
"#;
        let c = parse("agent.hcl", text).unwrap();
        assert_eq!(c.datacenter.as_deref(), Some("dc2"));
        assert_eq!(c.ports.unwrap().0.http, Some(5646));
        let server = c.server.unwrap().0;
        assert_eq!(server.store.as_deref(), Some("etcd://127.0.0.1:2379"));
        assert_eq!(
            server.heartbeat_grace.unwrap().0,
            crate::Duration::from_secs(15)
        );
        let client = c.client.unwrap().0;
        assert_eq!(client.meta.unwrap().0["rack"], Text("r1".into()));
        assert_eq!(c.plugin.0.len(), 2);
        let dns = c.dns.unwrap().0;
        assert_eq!(
            (dns.enabled, dns.port, dns.bind.as_deref()),
            (Some(true), Some(8600), Some("127.0.0.1"))
        );
        assert_eq!(dns.ttl.unwrap().0, crate::Duration::from_secs(5));
    }

    #[test]
    fn mistakes_are_located() {
        let err = parse(
            "agent.hcl",
            "server {\n  enabled = true\n  heartbeat_grace = \"soon\"\n}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("agent.hcl:3:"), "{err}");
        let err = parse("agent.hcl", "client {\n  enabeld = true\n}\n").unwrap_err();
        assert!(
            err.to_string().contains("agent.hcl:2:") && err.to_string().contains("enabeld"),
            "{err}"
        );
    }
}
