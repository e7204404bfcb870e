//! The Job and everything nested in it, in Nomad's API form.
//!
//! These are the canonical types: a jobspec in any format is decoded into its own shape
//! (`jobspec::spec`) and then converted into these, and [`Job::canonicalize`] fills in Nomad's
//! defaults. Every map is a `BTreeMap` so output is deterministic.

use crate::duration::Duration;
use crate::ids::{JobId, Namespace, Region};
use crate::resources::{NetworkResource, Resources};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A string-to-string map (`meta`, `env`).
pub type StringMap = BTreeMap<String, String>;

/// The kind of scheduling a job gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    /// Long-running; replaced when it stops.
    #[default]
    Service,
    /// Runs to completion.
    Batch,
    /// One allocation on every eligible node.
    System,
    /// Runs to completion once on every eligible node.
    Sysbatch,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Service => "service",
            JobType::Batch => "batch",
            JobType::System => "system",
            JobType::Sysbatch => "sysbatch",
        }
    }
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job: the desired state the user submits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Job {
    pub region: Region,
    pub namespace: Namespace,
    #[serde(rename = "ID")]
    pub id: JobId,
    pub name: String,
    pub r#type: JobType,
    pub priority: i32,
    pub all_at_once: bool,
    pub datacenters: Vec<String>,
    pub node_pool: String,
    pub constraints: Vec<Constraint>,
    pub affinities: Vec<Affinity>,
    pub spreads: Vec<Spread>,
    pub task_groups: Vec<TaskGroup>,
    pub update: Option<UpdateStrategy>,
    pub periodic: Option<PeriodicConfig>,
    pub parameterized_job: Option<ParameterizedJobConfig>,
    pub dispatched: bool,
    /// Base64 payload of a dispatched job.
    pub payload: Option<String>,
    pub reschedule: Option<ReschedulePolicy>,
    pub migrate: Option<MigrateStrategy>,
    pub meta: StringMap,
    #[serde(rename = "ParentID")]
    pub parent_id: String,
    pub stop: bool,
    pub status: String,
    pub status_description: String,
    pub stable: bool,
    pub version: u64,
    /// Unix nanoseconds.
    pub submit_time: i64,
    pub create_index: i64,
    pub modify_index: i64,
    pub job_modify_index: i64,
}

impl Default for Job {
    fn default() -> Self {
        Job {
            region: Region::default(),
            namespace: Namespace::default(),
            id: JobId::default(),
            name: String::new(),
            r#type: JobType::Service,
            priority: 0,
            all_at_once: false,
            datacenters: Vec::new(),
            node_pool: String::new(),
            constraints: Vec::new(),
            affinities: Vec::new(),
            spreads: Vec::new(),
            task_groups: Vec::new(),
            update: None,
            periodic: None,
            parameterized_job: None,
            dispatched: false,
            payload: None,
            reschedule: None,
            migrate: None,
            meta: StringMap::new(),
            parent_id: String::new(),
            stop: false,
            status: String::new(),
            status_description: String::new(),
            stable: false,
            version: 0,
            submit_time: 0,
            create_index: 0,
            modify_index: 0,
            job_modify_index: 0,
        }
    }
}

impl Job {
    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&TaskGroup> {
        self.task_groups.iter().find(|g| g.name == name)
    }

    /// True for periodic and parameterized jobs: they are templates that launch children.
    pub fn is_parent(&self) -> bool {
        self.periodic.as_ref().is_some_and(|p| p.enabled) || self.parameterized_job.is_some()
    }
}

fn one() -> i32 {
    1
}

/// A set of tasks placed together on one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskGroup {
    pub name: String,
    #[serde(default = "one")]
    pub count: i32,
    pub constraints: Vec<Constraint>,
    pub affinities: Vec<Affinity>,
    pub spreads: Vec<Spread>,
    pub tasks: Vec<Task>,
    pub restart_policy: Option<RestartPolicy>,
    pub reschedule_policy: Option<ReschedulePolicy>,
    pub ephemeral_disk: Option<EphemeralDisk>,
    pub update: Option<UpdateStrategy>,
    pub migrate: Option<MigrateStrategy>,
    pub networks: Vec<NetworkResource>,
    pub services: Vec<Service>,
    pub volumes: BTreeMap<String, VolumeRequest>,
    pub scaling: Option<ScalingPolicy>,
    pub meta: StringMap,
    pub shutdown_delay: Option<Duration>,
    pub stop_after_client_disconnect: Option<Duration>,
    pub max_client_disconnect: Option<Duration>,
}

impl Default for TaskGroup {
    fn default() -> Self {
        TaskGroup {
            name: String::new(),
            count: 1,
            constraints: Vec::new(),
            affinities: Vec::new(),
            spreads: Vec::new(),
            tasks: Vec::new(),
            restart_policy: None,
            reschedule_policy: None,
            ephemeral_disk: None,
            update: None,
            migrate: None,
            networks: Vec::new(),
            services: Vec::new(),
            volumes: BTreeMap::new(),
            scaling: None,
            meta: StringMap::new(),
            shutdown_delay: None,
            stop_after_client_disconnect: None,
            max_client_disconnect: None,
        }
    }
}

impl TaskGroup {
    /// The task called `name`.
    pub fn task(&self, name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.name == name)
    }
}

/// One unit of work, run by a driver.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Task {
    pub name: String,
    pub driver: String,
    pub user: String,
    pub lifecycle: Option<TaskLifecycle>,
    /// Driver-specific configuration, passed through as written.
    pub config: BTreeMap<String, serde_json::Value>,
    pub env: StringMap,
    pub services: Vec<Service>,
    pub resources: Resources,
    pub restart_policy: Option<RestartPolicy>,
    pub constraints: Vec<Constraint>,
    pub affinities: Vec<Affinity>,
    pub meta: StringMap,
    pub kill_timeout: Option<Duration>,
    pub kill_signal: String,
    pub log_config: Option<LogConfig>,
    pub artifacts: Vec<TaskArtifact>,
    pub templates: Vec<Template>,
    pub dispatch_payload: Option<DispatchPayloadConfig>,
    pub volume_mounts: Vec<VolumeMount>,
    pub leader: bool,
    pub shutdown_delay: Duration,
    pub kind: String,
}

/// When a task runs relative to the group's main tasks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskLifecycle {
    /// `prestart`, `poststart` or `poststop`.
    pub hook: String,
    pub sidecar: bool,
}

/// A placement rule: `LTarget Operand RTarget`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Constraint {
    #[serde(rename = "LTarget")]
    pub l_target: String,
    #[serde(rename = "RTarget")]
    pub r_target: String,
    #[serde(rename = "Operand")]
    pub operand: String,
}

impl fmt::Display for Constraint {
    /// As Nomad prints it in placement failures: `${attr.kernel.name} = linux`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.l_target, self.operand, self.r_target)
    }
}

/// A placement preference, weighted from -100 to 100.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Affinity {
    #[serde(rename = "LTarget")]
    pub l_target: String,
    #[serde(rename = "RTarget")]
    pub r_target: String,
    #[serde(rename = "Operand")]
    pub operand: String,
    #[serde(rename = "Weight")]
    pub weight: i32,
}

/// Spreads allocations over the values of an attribute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Spread {
    pub attribute: String,
    pub weight: i32,
    pub spread_target: Vec<SpreadTarget>,
}

/// The share of a spread that one attribute value should get.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct SpreadTarget {
    pub value: String,
    pub percent: u32,
}

/// How a new version rolls out (`update` block).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpdateStrategy {
    pub stagger: Duration,
    pub max_parallel: i32,
    /// `checks`, `task_states` or `manual`.
    pub health_check: String,
    pub min_healthy_time: Duration,
    pub healthy_deadline: Duration,
    pub progress_deadline: Duration,
    pub canary: i32,
    pub auto_revert: bool,
    pub auto_promote: bool,
}

/// How allocations move off a draining node (`migrate` block).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct MigrateStrategy {
    pub max_parallel: i32,
    pub health_check: String,
    pub min_healthy_time: Duration,
    pub healthy_deadline: Duration,
}

/// Local restarts of a failed task (`restart` block).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    pub interval: Duration,
    pub attempts: i32,
    pub delay: Duration,
    /// `fail` or `delay`.
    pub mode: String,
    pub render_templates: bool,
}

/// Placing a failed allocation again, possibly elsewhere (`reschedule` block).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct ReschedulePolicy {
    pub attempts: i32,
    pub interval: Duration,
    pub delay: Duration,
    /// `constant`, `exponential` or `fibonacci`.
    pub delay_function: String,
    pub max_delay: Duration,
    pub unlimited: bool,
}

/// Scratch disk for a group (`ephemeral_disk` block).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct EphemeralDisk {
    pub sticky: bool,
    pub migrate: bool,
    #[serde(rename = "SizeMB")]
    pub size_mb: i32,
}

/// A service the group or task offers (`service` block).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Service {
    pub name: String,
    pub tags: Vec<String>,
    pub canary_tags: Vec<String>,
    pub enable_tag_override: bool,
    pub port_label: String,
    pub address_mode: String,
    pub address: String,
    pub checks: Vec<ServiceCheck>,
    pub check_restart: Option<CheckRestart>,
    pub meta: StringMap,
    pub canary_meta: StringMap,
    pub tagged_addresses: StringMap,
    pub task_name: String,
    pub on_update: String,
    /// `nomad` or `consul`; Caravan serves both itself.
    pub provider: String,
}

/// A health check of a service (`check` block).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceCheck {
    pub name: String,
    /// `http`, `tcp`, `script` or `grpc`.
    pub r#type: String,
    pub command: String,
    pub args: Vec<String>,
    pub path: String,
    pub protocol: String,
    pub port_label: String,
    pub expose: bool,
    pub address_mode: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub initial_status: String,
    #[serde(rename = "TLSSkipVerify")]
    pub tls_skip_verify: bool,
    pub header: BTreeMap<String, Vec<String>>,
    pub method: String,
    pub body: String,
    pub check_restart: Option<CheckRestart>,
    #[serde(rename = "GRPCService")]
    pub grpc_service: String,
    #[serde(rename = "GRPCUseTLS")]
    pub grpc_use_tls: bool,
    pub task_name: String,
    pub success_before_passing: i32,
    pub failures_before_critical: i32,
    pub on_update: String,
}

/// Restart a task whose checks keep failing (`check_restart` block).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct CheckRestart {
    pub limit: i32,
    pub grace: Duration,
    pub ignore_warnings: bool,
}

/// Log rotation for a task (`logs` block).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct LogConfig {
    pub max_files: i32,
    #[serde(rename = "MaxFileSizeMB")]
    pub max_file_size_mb: i32,
    pub disabled: bool,
}

/// A file fetched into the task directory before it starts (`artifact` block).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskArtifact {
    pub getter_source: String,
    pub getter_options: StringMap,
    pub getter_headers: StringMap,
    /// `any`, `file` or `dir`.
    pub getter_mode: String,
    pub relative_dest: String,
}

/// A file rendered into the task directory (`template` block).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Template {
    pub source_path: String,
    pub dest_path: String,
    pub embedded_tmpl: String,
    /// `restart`, `signal`, `noop` or `script`.
    pub change_mode: String,
    pub change_signal: String,
    pub splay: Duration,
    pub perms: String,
    pub uid: Option<i32>,
    pub gid: Option<i32>,
    pub left_delim: String,
    pub right_delim: String,
    pub envvars: bool,
    pub err_missing_key: bool,
}

/// Where a dispatched job's payload is written (`dispatch_payload` block).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct DispatchPayloadConfig {
    pub file: String,
}

/// A cron schedule for a batch job (`periodic` block).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct PeriodicConfig {
    pub enabled: bool,
    pub spec: String,
    pub specs: Vec<String>,
    pub spec_type: String,
    pub prohibit_overlap: bool,
    pub time_zone: String,
}

/// A job that runs only when dispatched (`parameterized` block).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct ParameterizedJobConfig {
    /// `optional`, `required` or `forbidden`.
    pub payload: String,
    pub meta_required: Vec<String>,
    pub meta_optional: Vec<String>,
}

/// A volume the group asks for (`volume "name"` block).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct VolumeRequest {
    pub name: String,
    /// `host` or `csi`.
    pub r#type: String,
    pub source: String,
    pub read_only: bool,
}

/// Where a group volume appears inside a task (`volume_mount` block).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct VolumeMount {
    pub volume: String,
    pub destination: String,
    pub read_only: bool,
}

/// Bounds for scaling a group (`scaling` block).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct ScalingPolicy {
    pub min: Option<i64>,
    pub max: i64,
    pub enabled: bool,
    pub policy: BTreeMap<String, serde_json::Value>,
}

/// A job as `GET /v1/jobs` lists it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobListStub {
    #[serde(rename = "ID")]
    pub id: JobId,
    #[serde(rename = "ParentID")]
    pub parent_id: String,
    pub name: String,
    pub namespace: Namespace,
    pub datacenters: Vec<String>,
    pub node_pool: String,
    pub r#type: JobType,
    pub priority: i32,
    pub periodic: bool,
    pub parameterized_job: bool,
    pub stop: bool,
    pub status: String,
    pub status_description: String,
    pub job_summary: Option<JobSummary>,
    pub create_index: i64,
    pub modify_index: i64,
    pub job_modify_index: i64,
    pub submit_time: i64,
}

impl Job {
    /// The list form, with the summary when one is given.
    pub fn stub(&self, summary: Option<JobSummary>) -> JobListStub {
        JobListStub {
            id: self.id.clone(),
            parent_id: self.parent_id.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            datacenters: self.datacenters.clone(),
            node_pool: self.node_pool.clone(),
            r#type: self.r#type,
            priority: self.priority,
            periodic: self.periodic.is_some(),
            parameterized_job: self.parameterized_job.is_some(),
            stop: self.stop,
            status: self.status.clone(),
            status_description: self.status_description.clone(),
            job_summary: summary,
            create_index: self.create_index,
            modify_index: self.modify_index,
            job_modify_index: self.job_modify_index,
            submit_time: self.submit_time,
        }
    }
}

/// Allocation counts per group, as `GET /v1/job/:id/summary` returns them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobSummary {
    #[serde(rename = "JobID")]
    pub job_id: JobId,
    pub namespace: Namespace,
    pub summary: BTreeMap<String, TaskGroupSummary>,
    pub children: JobChildrenSummary,
    pub create_index: i64,
    pub modify_index: i64,
}

/// One group's allocation counts by client status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskGroupSummary {
    pub queued: i64,
    pub complete: i64,
    pub failed: i64,
    pub running: i64,
    pub starting: i64,
    pub lost: i64,
    pub unknown: i64,
}

/// Children of a periodic or parameterized job, by status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobChildrenSummary {
    pub pending: i64,
    pub running: i64,
    pub dead: i64,
}

impl JobSummary {
    /// Counts a job's allocations by group and client status; `queued` are the placements the
    /// latest evaluation could not make.
    pub fn compute<'a>(
        job: &Job,
        allocs: impl IntoIterator<Item = &'a crate::alloc::Allocation>,
        queued: &BTreeMap<String, i32>,
    ) -> JobSummary {
        use crate::alloc::ClientStatus;
        let mut summary: BTreeMap<String, TaskGroupSummary> = job
            .task_groups
            .iter()
            .map(|g| (g.name.clone(), TaskGroupSummary::default()))
            .collect();
        for alloc in allocs {
            let entry = summary.entry(alloc.task_group.clone()).or_default();
            match alloc.client_status {
                ClientStatus::Pending => entry.starting += 1,
                ClientStatus::Running => entry.running += 1,
                ClientStatus::Complete => entry.complete += 1,
                ClientStatus::Failed => entry.failed += 1,
                ClientStatus::Lost => entry.lost += 1,
                ClientStatus::Unknown => entry.unknown += 1,
            }
        }
        for (group, n) in queued {
            summary.entry(group.clone()).or_default().queued = i64::from(*n);
        }
        JobSummary {
            job_id: job.id.clone(),
            namespace: job.namespace.clone(),
            summary,
            children: JobChildrenSummary::default(),
            create_index: job.create_index,
            modify_index: job.modify_index,
        }
    }
}
