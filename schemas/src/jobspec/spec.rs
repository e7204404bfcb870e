//! The jobspec's own shape: the fields a user writes in HCL (and, field for field, in a YAML or
//! JSON manifest's `spec`). Everything is optional here; [`super::convert`] turns a [`JobSpec`]
//! into the canonical [`crate::job::Job`], applying Nomad's defaults.
//!
//! Unknown fields are refused (a typo should not be silently ignored), and the JSON Schema of
//! manifests is generated from these types.

use super::wrappers::{HasLabel, Labelled, OneOrMany, Single, Text};
use crate::duration::SpecDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `meta { k = "v" }`, `env { K = "v" }`: scalar values kept as text.
pub type TextMap = BTreeMap<String, Text>;

macro_rules! labelled {
    ($($t:ty),*) => {$(
        impl HasLabel for $t {
            fn label(&self) -> Option<&str> {
                self.name.as_deref()
            }
            fn set_label(&mut self, label: String) {
                self.name = Some(label);
            }
        }
    )*};
}

/// `job "id" { ... }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct JobSpec {
    /// Display name; defaults to the job's ID.
    pub name: Option<String>,
    pub id: Option<String>,
    pub region: Option<String>,
    pub namespace: Option<String>,
    /// `service` (default), `batch`, `system` or `sysbatch`.
    pub r#type: Option<String>,
    /// 1 to 100; 50 by default.
    pub priority: Option<i64>,
    pub all_at_once: Option<bool>,
    /// Datacenters the job may run in; globs allowed. `["*"]` by default.
    pub datacenters: Option<Vec<String>>,
    pub node_pool: Option<String>,
    pub constraint: OneOrMany<ConstraintSpec>,
    pub affinity: OneOrMany<AffinitySpec>,
    pub spread: OneOrMany<SpreadSpec>,
    pub group: Labelled<GroupSpec>,
    pub update: Option<Single<UpdateSpec>>,
    pub migrate: Option<Single<MigrateSpec>>,
    pub reschedule: Option<Single<RescheduleSpec>>,
    pub periodic: Option<Single<PeriodicSpec>>,
    pub parameterized: Option<Single<ParameterizedSpec>>,
    pub meta: Option<Single<TextMap>>,
}

/// `group "name" { ... }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GroupSpec {
    pub name: Option<String>,
    /// How many allocations of this group to run; 1 by default.
    pub count: Option<i64>,
    pub constraint: OneOrMany<ConstraintSpec>,
    pub affinity: OneOrMany<AffinitySpec>,
    pub spread: OneOrMany<SpreadSpec>,
    pub task: Labelled<TaskSpec>,
    pub restart: Option<Single<RestartSpec>>,
    pub reschedule: Option<Single<RescheduleSpec>>,
    pub ephemeral_disk: Option<Single<EphemeralDiskSpec>>,
    pub update: Option<Single<UpdateSpec>>,
    pub migrate: Option<Single<MigrateSpec>>,
    pub network: OneOrMany<NetworkSpec>,
    pub service: OneOrMany<ServiceSpec>,
    pub volume: Labelled<VolumeSpec>,
    pub scaling: Option<Single<ScalingSpec>>,
    pub meta: Option<Single<TextMap>>,
    pub shutdown_delay: Option<SpecDuration>,
    pub stop_after_client_disconnect: Option<SpecDuration>,
    pub max_client_disconnect: Option<SpecDuration>,
}

/// `task "name" { ... }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSpec {
    pub name: Option<String>,
    /// `docker`, `exec`, `raw_exec` or `java`.
    pub driver: Option<String>,
    pub user: Option<String>,
    pub lifecycle: Option<Single<LifecycleSpec>>,
    /// Driver-specific configuration.
    pub config: Option<Single<BTreeMap<String, serde_json::Value>>>,
    pub env: Option<Single<TextMap>>,
    pub service: OneOrMany<ServiceSpec>,
    pub resources: Option<Single<ResourcesSpec>>,
    pub restart: Option<Single<RestartSpec>>,
    pub constraint: OneOrMany<ConstraintSpec>,
    pub affinity: OneOrMany<AffinitySpec>,
    pub meta: Option<Single<TextMap>>,
    pub kill_timeout: Option<SpecDuration>,
    pub kill_signal: Option<String>,
    pub logs: Option<Single<LogsSpec>>,
    pub artifact: OneOrMany<ArtifactSpec>,
    pub template: OneOrMany<TemplateSpec>,
    pub dispatch_payload: Option<Single<DispatchPayloadSpec>>,
    pub volume_mount: OneOrMany<VolumeMountSpec>,
    pub leader: Option<bool>,
    pub shutdown_delay: Option<SpecDuration>,
    pub kind: Option<String>,
}

labelled!(GroupSpec, TaskSpec, VolumeSpec, PortSpec, SpreadTargetSpec);

/// `lifecycle { hook = "prestart" sidecar = false }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleSpec {
    /// `prestart`, `poststart` or `poststop`.
    pub hook: Option<String>,
    pub sidecar: Option<bool>,
}

/// `constraint { attribute = "${attr.kernel.name}" operator = "=" value = "linux" }`, or one
/// of the shorthands (`distinct_hosts = true`, `version = ">= 1.2"`, …).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ConstraintSpec {
    pub attribute: Option<String>,
    pub operator: Option<String>,
    pub value: Option<Text>,
    pub distinct_hosts: Option<bool>,
    pub distinct_property: Option<String>,
    pub regexp: Option<String>,
    pub version: Option<String>,
    pub semver: Option<String>,
    pub set_contains: Option<String>,
    pub set_contains_all: Option<String>,
    pub set_contains_any: Option<String>,
}

/// `affinity { attribute value operator weight }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AffinitySpec {
    pub attribute: Option<String>,
    pub operator: Option<String>,
    pub value: Option<Text>,
    pub regexp: Option<String>,
    pub version: Option<String>,
    pub semver: Option<String>,
    pub set_contains: Option<String>,
    pub set_contains_all: Option<String>,
    pub set_contains_any: Option<String>,
    /// -100 to 100; 50 by default.
    pub weight: Option<i64>,
}

/// `spread { attribute weight target "value" { percent } }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SpreadSpec {
    pub attribute: Option<String>,
    pub weight: Option<i64>,
    pub target: Labelled<SpreadTargetSpec>,
}

/// `target "us-east" { percent = 50 }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SpreadTargetSpec {
    pub name: Option<String>,
    pub value: Option<String>,
    pub percent: Option<i64>,
}

/// `update { ... }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateSpec {
    pub stagger: Option<SpecDuration>,
    pub max_parallel: Option<i64>,
    /// `checks`, `task_states` or `manual`.
    pub health_check: Option<String>,
    pub min_healthy_time: Option<SpecDuration>,
    pub healthy_deadline: Option<SpecDuration>,
    pub progress_deadline: Option<SpecDuration>,
    pub canary: Option<i64>,
    pub auto_revert: Option<bool>,
    pub auto_promote: Option<bool>,
}

/// `migrate { ... }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MigrateSpec {
    pub max_parallel: Option<i64>,
    pub health_check: Option<String>,
    pub min_healthy_time: Option<SpecDuration>,
    pub healthy_deadline: Option<SpecDuration>,
}

/// `restart { ... }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RestartSpec {
    pub attempts: Option<i64>,
    pub interval: Option<SpecDuration>,
    pub delay: Option<SpecDuration>,
    /// `fail` or `delay`.
    pub mode: Option<String>,
    pub render_templates: Option<bool>,
}

/// `reschedule { ... }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RescheduleSpec {
    pub attempts: Option<i64>,
    pub interval: Option<SpecDuration>,
    pub delay: Option<SpecDuration>,
    /// `constant`, `exponential` or `fibonacci`.
    pub delay_function: Option<String>,
    pub max_delay: Option<SpecDuration>,
    pub unlimited: Option<bool>,
}

/// `ephemeral_disk { size = 300 }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EphemeralDiskSpec {
    pub sticky: Option<bool>,
    pub migrate: Option<bool>,
    /// MB; 300 by default.
    pub size: Option<i64>,
}

/// `network { mode = "bridge" port "http" { to = 8080 } }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSpec {
    /// `host` (default) or `bridge`.
    pub mode: Option<String>,
    pub mbits: Option<i64>,
    pub hostname: Option<String>,
    pub port: Labelled<PortSpec>,
    pub dns: Option<Single<DnsSpec>>,
}

/// `port "http" { static = 8080 to = 80 host_network = "public" }`; without `static` the port is
/// dynamic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PortSpec {
    pub name: Option<String>,
    pub r#static: Option<i64>,
    pub to: Option<i64>,
    pub host_network: Option<String>,
}

/// `dns { servers = [...] }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSpec {
    pub servers: Option<Vec<String>>,
    pub searches: Option<Vec<String>>,
    pub options: Option<Vec<String>>,
}

/// `resources { cpu = 500 memory = 256 }` (and, in the older syntax, `network` inside).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ResourcesSpec {
    /// MHz; 100 by default.
    pub cpu: Option<i64>,
    pub cores: Option<i64>,
    /// MB; 300 by default.
    pub memory: Option<i64>,
    pub memory_max: Option<i64>,
    pub disk: Option<i64>,
    pub iops: Option<i64>,
    /// The older, task-level network syntax.
    pub network: OneOrMany<NetworkSpec>,
    pub device: Labelled<DeviceSpec>,
}

/// `device "nvidia/gpu" { count = 1 }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceSpec {
    pub name: Option<String>,
    pub count: Option<i64>,
    pub constraint: OneOrMany<ConstraintSpec>,
    pub affinity: OneOrMany<AffinitySpec>,
}

labelled!(DeviceSpec);

/// `service { name port tags check { ... } }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: Option<String>,
    /// A port label from the group's network, or a number.
    pub port: Option<Text>,
    pub tags: Option<Vec<String>>,
    pub canary_tags: Option<Vec<String>>,
    pub enable_tag_override: Option<bool>,
    pub address_mode: Option<String>,
    pub address: Option<String>,
    pub check: OneOrMany<CheckSpec>,
    pub check_restart: Option<Single<CheckRestartSpec>>,
    pub meta: Option<Single<TextMap>>,
    pub canary_meta: Option<Single<TextMap>>,
    pub tagged_addresses: Option<Single<TextMap>>,
    pub task: Option<String>,
    pub on_update: Option<String>,
    /// `nomad` or `consul`; Caravan serves both.
    pub provider: Option<String>,
}

/// `check { type = "http" path = "/" interval = "10s" timeout = "2s" }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CheckSpec {
    pub name: Option<String>,
    /// `http`, `tcp`, `script` or `grpc`.
    pub r#type: Option<String>,
    pub command: Option<String>,
    pub args: Option<Vec<String>>,
    pub path: Option<String>,
    pub protocol: Option<String>,
    pub port: Option<Text>,
    pub expose: Option<bool>,
    pub address_mode: Option<String>,
    pub interval: Option<SpecDuration>,
    pub timeout: Option<SpecDuration>,
    pub initial_status: Option<String>,
    pub tls_skip_verify: Option<bool>,
    pub header: Option<Single<BTreeMap<String, Vec<String>>>>,
    pub method: Option<String>,
    pub body: Option<String>,
    pub check_restart: Option<Single<CheckRestartSpec>>,
    pub grpc_service: Option<String>,
    pub grpc_use_tls: Option<bool>,
    pub task: Option<String>,
    pub success_before_passing: Option<i64>,
    pub failures_before_critical: Option<i64>,
    pub on_update: Option<String>,
}

/// `check_restart { limit = 3 grace = "90s" }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CheckRestartSpec {
    pub limit: Option<i64>,
    pub grace: Option<SpecDuration>,
    pub ignore_warnings: Option<bool>,
}

/// `logs { max_files = 10 max_file_size = 10 }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LogsSpec {
    pub max_files: Option<i64>,
    /// MB.
    pub max_file_size: Option<i64>,
    pub disabled: Option<bool>,
    pub enabled: Option<bool>,
}

/// `artifact { source = "https://…/app.tar.gz" destination = "local/" }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ArtifactSpec {
    pub source: Option<String>,
    pub destination: Option<String>,
    /// `any`, `file` or `dir`.
    pub mode: Option<String>,
    pub options: Option<Single<TextMap>>,
    pub headers: Option<Single<TextMap>>,
}

/// `template { data = "..." destination = "local/app.conf" }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TemplateSpec {
    pub source: Option<String>,
    pub destination: Option<String>,
    pub data: Option<String>,
    /// `restart` (default), `signal`, `noop` or `script`.
    pub change_mode: Option<String>,
    pub change_signal: Option<String>,
    pub splay: Option<SpecDuration>,
    pub perms: Option<String>,
    pub uid: Option<i64>,
    pub gid: Option<i64>,
    pub left_delimiter: Option<String>,
    pub right_delimiter: Option<String>,
    pub env: Option<bool>,
    pub error_on_missing_key: Option<bool>,
}

/// `dispatch_payload { file = "input.txt" }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchPayloadSpec {
    pub file: Option<String>,
}

/// `periodic { cron = "*/15 * * * *" prohibit_overlap = true }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PeriodicSpec {
    pub cron: Option<String>,
    pub crons: Option<Vec<String>>,
    pub prohibit_overlap: Option<bool>,
    pub time_zone: Option<String>,
    pub enabled: Option<bool>,
}

/// `parameterized { payload = "required" meta_required = ["x"] }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ParameterizedSpec {
    /// `optional` (default), `required` or `forbidden`.
    pub payload: Option<String>,
    pub meta_required: Option<Vec<String>>,
    pub meta_optional: Option<Vec<String>>,
}

/// `volume "data" { type = "host" source = "data" }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct VolumeSpec {
    pub name: Option<String>,
    pub r#type: Option<String>,
    pub source: Option<String>,
    pub read_only: Option<bool>,
}

/// `volume_mount { volume = "data" destination = "/data" }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct VolumeMountSpec {
    pub volume: Option<String>,
    pub destination: Option<String>,
    pub read_only: Option<bool>,
}

/// `scaling { min = 1 max = 10 }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ScalingSpec {
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub enabled: Option<bool>,
    pub policy: Option<Single<BTreeMap<String, serde_json::Value>>>,
}
