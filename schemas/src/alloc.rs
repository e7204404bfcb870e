//! Allocations in Nomad's API form: [`Allocation`] (`GET /v1/allocation/:id`), its list form
//! [`AllocationListStub`] (`GET /v1/allocations`), task states and events, and the placement
//! metrics ([`AllocMetric`]) the scheduler records.

use crate::duration::{self, Duration};
use crate::ids::{AllocId, CheckId, DeploymentId, EvalId, JobId, Namespace, NodeId};
use crate::node::Node;
use crate::resources::{AllocatedResources, DnsConfig, Resources, null_as_default, wire_enum};
use crate::time::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

wire_enum! {
    /// What the servers want of an allocation.
    pub enum DesiredStatus {
        Run = "run",
        Stop = "stop",
        /// Stopped to make room (preemption).
        Evict = "evict",
    }
    default = Run;
}

wire_enum! {
    /// What the client reports about an allocation.
    pub enum ClientStatus {
        Pending = "pending",
        Running = "running",
        Complete = "complete",
        Failed = "failed",
        /// Its node went down.
        Lost = "lost",
        /// Its node is disconnected; it may come back.
        Unknown = "unknown",
    }
    default = Pending;
}

impl ClientStatus {
    /// Complete, failed or lost: the client will not move it any further.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ClientStatus::Complete | ClientStatus::Failed | ClientStatus::Lost
        )
    }
}

impl DesiredStatus {
    /// Stop or evict.
    pub fn is_terminal(self) -> bool {
        matches!(self, DesiredStatus::Stop | DesiredStatus::Evict)
    }
}

wire_enum! {
    /// A task's state within its allocation.
    pub enum TaskStatus {
        Pending = "pending",
        Running = "running",
        Dead = "dead",
    }
    default = Pending;
}

/// Task event types (`TaskEvent.Type`) as Nomad's client writes them.
pub mod event_types {
    pub const SETUP_FAILURE: &str = "Setup Failure";
    pub const DRIVER_FAILURE: &str = "Driver Failure";
    pub const RECEIVED: &str = "Received";
    pub const FAILED_VALIDATION: &str = "Failed Validation";
    pub const STARTED: &str = "Started";
    pub const TERMINATED: &str = "Terminated";
    pub const KILLING: &str = "Killing";
    pub const KILLED: &str = "Killed";
    pub const RESTARTING: &str = "Restarting";
    pub const NOT_RESTARTING: &str = "Not Restarting";
    pub const RESTART_SIGNALED: &str = "Restart Signaled";
    pub const SIGNALING: &str = "Signaling";
    pub const DOWNLOADING_ARTIFACTS: &str = "Downloading Artifacts";
    pub const ARTIFACT_DOWNLOAD_FAILED: &str = "Failed Artifact Download";
    pub const BUILDING_TASK_DIR: &str = "Building Task Directory";
    pub const TASK_SETUP: &str = "Task Setup";
    pub const DISK_EXCEEDED: &str = "Disk Resources Exceeded";
    pub const SIBLING_FAILED: &str = "Sibling Task Failed";
    pub const DRIVER_MESSAGE: &str = "Driver";
    pub const LEADER_DEAD: &str = "Leader Task Dead";
    pub const MAIN_DEAD: &str = "Main Tasks Dead";
    pub const HOOK_FAILED: &str = "Task hook failed";
    pub const HOOK_MESSAGE: &str = "Task hook message";
    pub const RESTORE_FAILED: &str = "Failed Restoring Task";
    pub const PLUGIN_UNHEALTHY: &str = "Plugin became unhealthy";
    pub const PLUGIN_HEALTHY: &str = "Plugin became healthy";
    pub const CLIENT_RECONNECTED: &str = "Reconnected";
    pub const WAITING_SHUTDOWN_DELAY: &str = "Waiting for shutdown delay";
    pub const SKIPPING_SHUTDOWN_DELAY: &str = "Skipping shutdown delay";
    pub const RUNNING: &str = "Running";
    /// Health tracking marked the allocation unhealthy (a generic-source event).
    pub const ALLOC_UNHEALTHY: &str = "Alloc Unhealthy";
    /// From the template runner (a generic-source event).
    pub const TEMPLATE: &str = "Template";
}

/// `RestartReason` strings of Nomad's restart tracker.
pub mod restart_reasons {
    pub const NO_RESTARTS_ALLOWED: &str = "Policy allows no restarts";
    pub const UNRECOVERABLE_ERROR: &str = "Error was unrecoverable";
    /// Not shown in a "Restarting" event's message.
    pub const WITHIN_POLICY: &str = "Restart within policy";
    pub const DELAY: &str = "Exceeded allowed attempts, applying a delay";
}

/// An allocation: one placement of a task group on a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Allocation {
    #[serde(rename = "ID")]
    pub id: AllocId,
    pub namespace: Namespace,
    /// The evaluation that placed it.
    #[serde(rename = "EvalID")]
    pub eval_id: EvalId,
    /// `<job>.<group>[<index>]`.
    pub name: String,
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    pub node_name: String,
    #[serde(rename = "JobID")]
    pub job_id: JobId,
    /// The job at the version this allocation runs.
    pub job: Option<std::sync::Arc<crate::job::Job>>,
    pub task_group: String,
    pub allocated_resources: Option<AllocatedResources>,
    /// How the scheduler placed it.
    pub metrics: Option<AllocMetric>,
    pub desired_status: DesiredStatus,
    pub desired_description: String,
    /// Server-side hints to the reconciler (migrate, reschedule, …).
    pub desired_transition: DesiredTransition,
    pub client_status: ClientStatus,
    pub client_description: String,
    /// Task name → state.
    #[serde(deserialize_with = "null_as_default")]
    pub task_states: BTreeMap<String, TaskState>,
    /// History of client status changes that matter for disconnects.
    #[serde(deserialize_with = "null_as_default")]
    pub alloc_states: Vec<AllocState>,
    /// The allocation this one replaces; empty if none.
    pub previous_allocation: AllocId,
    /// The allocation that replaced this one; empty if none.
    pub next_allocation: AllocId,
    #[serde(rename = "DeploymentID")]
    pub deployment_id: DeploymentId,
    pub deployment_status: Option<AllocDeploymentStatus>,
    pub reschedule_tracker: Option<RescheduleTracker>,
    pub network_status: Option<AllocNetworkStatus>,
    /// The evaluation that will reschedule it after a delay.
    #[serde(rename = "FollowupEvalID")]
    pub followup_eval_id: EvalId,
    /// Allocations evicted to make room for this one.
    #[serde(deserialize_with = "null_as_default")]
    pub preempted_allocations: Vec<AllocId>,
    /// The allocation that evicted this one.
    pub preempted_by_allocation: AllocId,
    pub create_index: i64,
    pub modify_index: i64,
    /// Index of the last change made by the servers (not by the client).
    pub alloc_modify_index: i64,
    /// Unix nanoseconds.
    pub create_time: i64,
    /// Unix nanoseconds.
    pub modify_time: i64,
    /// **Caravan extension**: the latest result of each of the allocation's service checks, by
    /// check id, as its client last reported them (Nomad keeps these on the client only and
    /// serves them from `/v1/client/allocation/:id/checks`). Omitted when empty.
    #[serde(
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub check_results: BTreeMap<CheckId, CheckQueryResult>,
}

wire_enum! {
    /// The outcome of a service check (Nomad's `CheckStatus`).
    pub enum CheckStatus {
        Success = "success",
        Failure = "failure",
        /// Not run yet (or not enough results to decide).
        Pending = "pending",
    }
    default = Pending;
}

wire_enum! {
    /// Whether a failing check holds up deployments (Nomad's `CheckMode`): `on_update =
    /// "ignore"` makes a check a readiness check, anything else a healthiness check.
    pub enum CheckMode {
        Healthiness = "healthiness",
        Readiness = "readiness",
    }
    default = Healthiness;
}

/// The latest result of one service check, in Nomad's `CheckQueryResult` shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct CheckQueryResult {
    #[serde(rename = "ID")]
    pub id: CheckId,
    pub mode: CheckMode,
    pub status: CheckStatus,
    /// The HTTP status code of an http check; omitted otherwise.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub status_code: i32,
    /// What the check said: `nomad: tcp ok`, an HTTP body, a script's output, an error.
    pub output: String,
    /// When the check ran, Unix seconds.
    pub timestamp: i64,
    pub group: String,
    /// The task of a task-level service; empty (and omitted) for a group-level service.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub task: String,
    pub service: String,
    pub check: String,
}

fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}

impl Allocation {
    /// What the allocation's checks say about its health: `None` when it has no check results
    /// (no checks, or none reported yet), `Some(true)` when every healthiness check succeeds,
    /// `Some(false)` when any healthiness check fails or is still pending. Readiness checks
    /// (`on_update = "ignore"`) do not count, as in Nomad's deployments.
    pub fn checks_healthy(&self) -> Option<bool> {
        checks_healthy(&self.check_results)
    }
}

/// Whether every healthiness check in `results` passes; `None` when there are none.
pub fn checks_healthy(results: &BTreeMap<CheckId, CheckQueryResult>) -> Option<bool> {
    {
        let mut health = results
            .values()
            .filter(|r| r.mode == CheckMode::Healthiness)
            .map(|r| r.status == CheckStatus::Success)
            .peekable();
        health.peek()?;
        Some(health.all(|ok| ok))
    }
}

/// Which optional fields an [`AllocationListStub`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocStubFields {
    /// `AllocatedResources` (`?resources=true`).
    pub resources: bool,
    /// `TaskStates` (on unless `?task_states=false`).
    pub task_states: bool,
}

impl Default for AllocStubFields {
    fn default() -> Self {
        AllocStubFields {
            resources: false,
            task_states: true,
        }
    }
}

impl Allocation {
    /// The index in `job.group[index]`, from the allocation's name.
    pub fn index(&self) -> Option<u32> {
        alloc_index_from_name(&self.name)
    }

    /// Stopped or evicted by the servers, or complete, failed or lost on the client (Nomad's
    /// `TerminalStatus`).
    pub fn is_terminal(&self) -> bool {
        self.server_terminal_status() || self.client_terminal_status()
    }

    /// Desired status stop or evict.
    pub fn server_terminal_status(&self) -> bool {
        self.desired_status.is_terminal()
    }

    /// Client status complete, failed or lost.
    pub fn client_terminal_status(&self) -> bool {
        self.client_status.is_terminal()
    }

    /// Every task finished successfully (dead and not failed); false before any task ran.
    pub fn ran_successfully(&self) -> bool {
        !self.task_states.is_empty() && self.task_states.values().all(TaskState::successful)
    }

    /// Marked healthy by its deployment.
    pub fn is_healthy(&self) -> bool {
        self.deployment_status
            .as_ref()
            .is_some_and(AllocDeploymentStatus::is_healthy)
    }

    /// Marked unhealthy by its deployment.
    pub fn is_unhealthy(&self) -> bool {
        self.deployment_status
            .as_ref()
            .is_some_and(AllocDeploymentStatus::is_unhealthy)
    }

    /// A canary of its deployment (not yet promoted).
    pub fn is_canary(&self) -> bool {
        self.deployment_status.as_ref().is_some_and(|d| d.canary)
    }

    /// The `/v1/allocations` entry as Nomad returns it by default (task states, no resources).
    pub fn stub(&self) -> AllocationListStub {
        self.stub_with(AllocStubFields::default())
    }

    /// The `/v1/allocations` entry with the chosen optional fields.
    pub fn stub_with(&self, fields: AllocStubFields) -> AllocationListStub {
        let job = self.job.as_deref();
        AllocationListStub {
            id: self.id.clone(),
            eval_id: self.eval_id.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            node_id: self.node_id.clone(),
            node_name: self.node_name.clone(),
            job_id: self.job_id.clone(),
            job_type: job
                .map(|j| j.r#type.as_str().to_owned())
                .unwrap_or_default(),
            job_version: job.map(|j| j.version).unwrap_or_default(),
            task_group: self.task_group.clone(),
            allocated_resources: if fields.resources {
                self.allocated_resources.clone()
            } else {
                None
            },
            desired_status: self.desired_status,
            desired_description: self.desired_description.clone(),
            client_status: self.client_status,
            client_description: self.client_description.clone(),
            desired_transition: self.desired_transition.clone(),
            task_states: if fields.task_states {
                self.task_states.clone()
            } else {
                BTreeMap::new()
            },
            deployment_status: self.deployment_status.clone(),
            followup_eval_id: self.followup_eval_id.clone(),
            next_allocation: self.next_allocation.clone(),
            reschedule_tracker: self.reschedule_tracker.clone(),
            preempted_allocations: self.preempted_allocations.clone(),
            preempted_by_allocation: self.preempted_by_allocation.clone(),
            create_index: self.create_index,
            modify_index: self.modify_index,
            create_time: self.create_time,
            modify_time: self.modify_time,
        }
    }
}

/// The index in an allocation name `job.group[index]`.
pub fn alloc_index_from_name(name: &str) -> Option<u32> {
    let inner = name.strip_suffix(']')?;
    let (_, idx) = inner.rsplit_once('[')?;
    idx.parse().ok()
}

/// An allocation name: `job.group[index]`.
pub fn alloc_name(job: &str, group: &str, index: u32) -> String {
    format!("{job}.{group}[{index}]")
}

/// An allocation as `GET /v1/allocations` and `GET /v1/job/:id/allocations` list it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocationListStub {
    #[serde(rename = "ID")]
    pub id: AllocId,
    #[serde(rename = "EvalID")]
    pub eval_id: EvalId,
    pub name: String,
    pub namespace: Namespace,
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    pub node_name: String,
    #[serde(rename = "JobID")]
    pub job_id: JobId,
    pub job_type: String,
    pub job_version: u64,
    pub task_group: String,
    /// Only with `?resources=true` (omitted otherwise, as Nomad does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated_resources: Option<AllocatedResources>,
    pub desired_status: DesiredStatus,
    pub desired_description: String,
    pub client_status: ClientStatus,
    pub client_description: String,
    pub desired_transition: DesiredTransition,
    #[serde(deserialize_with = "null_as_default")]
    pub task_states: BTreeMap<String, TaskState>,
    pub deployment_status: Option<AllocDeploymentStatus>,
    #[serde(rename = "FollowupEvalID")]
    pub followup_eval_id: EvalId,
    pub next_allocation: AllocId,
    pub reschedule_tracker: Option<RescheduleTracker>,
    #[serde(deserialize_with = "null_as_default")]
    pub preempted_allocations: Vec<AllocId>,
    pub preempted_by_allocation: AllocId,
    pub create_index: i64,
    pub modify_index: i64,
    pub create_time: i64,
    pub modify_time: i64,
}

/// Server-side hints about what to do with an allocation next; each is unset, true or false.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct DesiredTransition {
    /// Move it off its (draining) node.
    pub migrate: Option<bool>,
    /// Replace it (it failed and may be rescheduled).
    pub reschedule: Option<bool>,
    /// Replace it even though its policy would not.
    pub force_reschedule: Option<bool>,
    /// Skip the group's shutdown delay when stopping it.
    pub no_shutdown_delay: Option<bool>,
    /// Migrate without placing a replacement.
    pub migrate_disable_placement: Option<bool>,
}

/// One recorded change of an allocation's client status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocState {
    /// Which field changed; 0 is `ClientStatus` (the only one Nomad records).
    pub field: u8,
    pub value: String,
    pub time: Timestamp,
}

/// Where a task is and what happened to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskState {
    pub state: TaskStatus,
    /// Dead because of a failure (not a successful exit).
    pub failed: bool,
    pub restarts: u64,
    pub last_restart: Timestamp,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    /// Oldest first; Nomad keeps the last 10.
    #[serde(deserialize_with = "null_as_default")]
    pub events: Vec<TaskEvent>,
}

impl TaskState {
    /// Dead and not failed.
    pub fn successful(&self) -> bool {
        self.state == TaskStatus::Dead && !self.failed
    }

    /// Appends an event (filling its display message), keeping the newest `max`.
    pub fn push_event(&mut self, mut event: TaskEvent, max: usize) {
        event.populate_display_message();
        self.events.push(event);
        if self.events.len() > max {
            let excess = self.events.len() - max;
            self.events.drain(..excess);
        }
    }
}

/// Something that happened to a task. The typed fields are deprecated in Nomad in favour of
/// `Details` but still on the wire; the `with_*` builders set both, as Nomad's setters do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskEvent {
    /// One of [`event_types`] (drivers may add their own).
    #[serde(rename = "Type")]
    pub kind: String,
    /// Unix nanoseconds.
    pub time: i64,
    pub message: String,
    /// What `alloc status` shows; see [`TaskEvent::describe`].
    pub display_message: String,
    #[serde(deserialize_with = "null_as_default")]
    pub details: BTreeMap<String, String>,
    pub fails_task: bool,
    pub restart_reason: String,
    pub setup_error: String,
    pub driver_error: String,
    pub exit_code: i32,
    pub signal: i32,
    pub kill_timeout: Duration,
    pub kill_error: String,
    pub kill_reason: String,
    /// Delay before the restart (nanoseconds).
    pub start_delay: Duration,
    pub download_error: String,
    pub validation_error: String,
    pub disk_limit: i64,
    pub failed_sibling: String,
    pub vault_error: String,
    pub task_signal_reason: String,
    pub task_signal: String,
    pub driver_message: String,
    pub generic_source: String,
}

impl TaskEvent {
    /// An event of `kind` (see [`event_types`]) at `time_nanos`, its display message filled as
    /// Nomad's `PopulateEventDisplayMessage` would. The `with_*` builders keep it up to date;
    /// call [`TaskEvent::with_display_message`] last to override it.
    pub fn new(kind: impl Into<String>, time_nanos: i64) -> Self {
        let mut e = TaskEvent {
            kind: kind.into(),
            time: time_nanos,
            ..TaskEvent::default()
        };
        e.display_message = e.describe();
        e
    }

    fn detail(mut self, key: &str, value: String) -> Self {
        self.details.insert(key.to_owned(), value);
        self.display_message = self.describe();
        self
    }

    /// Free-form message.
    pub fn with_message(mut self, msg: impl Into<String>) -> Self {
        self.message = msg.into();
        let m = self.message.clone();
        self.detail("message", m)
    }

    /// The exit message of a terminated task.
    pub fn with_exit_message(mut self, msg: impl Into<String>) -> Self {
        self.message = msg.into();
        let m = self.message.clone();
        self.detail("exit_message", m)
    }

    pub fn with_exit_code(mut self, code: i32) -> Self {
        self.exit_code = code;
        self.detail("exit_code", code.to_string())
    }

    pub fn with_signal(mut self, signal: i32) -> Self {
        self.signal = signal;
        self.detail("signal", signal.to_string())
    }

    /// Whether the task was killed for running out of memory.
    pub fn with_oom_killed(self, oom: bool) -> Self {
        self.detail("oom_killed", oom.to_string())
    }

    pub fn with_fails_task(mut self) -> Self {
        self.fails_task = true;
        self.detail("fails_task", "true".to_owned())
    }

    pub fn with_setup_error(mut self, err: impl Into<String>) -> Self {
        self.setup_error = err.into();
        let v = self.setup_error.clone();
        self.detail("setup_error", v)
    }

    pub fn with_driver_error(mut self, err: impl Into<String>) -> Self {
        self.driver_error = err.into();
        let v = self.driver_error.clone();
        self.detail("driver_error", v)
    }

    pub fn with_driver_message(mut self, msg: impl Into<String>) -> Self {
        self.driver_message = msg.into();
        let v = self.driver_message.clone();
        self.detail("driver_message", v)
    }

    pub fn with_kill_error(mut self, err: impl Into<String>) -> Self {
        self.kill_error = err.into();
        let v = self.kill_error.clone();
        self.detail("kill_error", v)
    }

    pub fn with_kill_reason(mut self, reason: impl Into<String>) -> Self {
        self.kill_reason = reason.into();
        let v = self.kill_reason.clone();
        self.detail("kill_reason", v)
    }

    /// The grace period before a force kill (Details holds it as a Go duration string).
    pub fn with_kill_timeout(mut self, timeout: Duration) -> Self {
        self.kill_timeout = timeout;
        self.detail("kill_timeout", duration::format(timeout))
    }

    /// The delay before a restart (Details holds it as integer nanoseconds).
    pub fn with_restart_delay(mut self, delay: Duration) -> Self {
        self.start_delay = delay;
        self.detail("start_delay", delay.nanos().to_string())
    }

    /// See [`restart_reasons`].
    pub fn with_restart_reason(mut self, reason: impl Into<String>) -> Self {
        self.restart_reason = reason.into();
        let v = self.restart_reason.clone();
        self.detail("restart_reason", v)
    }

    pub fn with_failed_sibling(mut self, task: impl Into<String>) -> Self {
        self.failed_sibling = task.into();
        let v = self.failed_sibling.clone();
        self.detail("failed_sibling", v)
    }

    pub fn with_download_error(mut self, err: impl Into<String>) -> Self {
        self.download_error = err.into();
        let v = self.download_error.clone();
        self.detail("download_error", v)
    }

    pub fn with_validation_error(mut self, err: impl Into<String>) -> Self {
        self.validation_error = err.into();
        let v = self.validation_error.clone();
        self.detail("validation_error", v)
    }

    pub fn with_disk_limit(mut self, limit_mb: i64) -> Self {
        self.disk_limit = limit_mb;
        self.detail("disk_limit", limit_mb.to_string())
    }

    /// The signal sent (`SIGHUP`).
    pub fn with_task_signal(mut self, signal: impl Into<String>) -> Self {
        self.task_signal = signal.into();
        let v = self.task_signal.clone();
        self.detail("task_signal", v)
    }

    pub fn with_task_signal_reason(mut self, reason: impl Into<String>) -> Self {
        self.task_signal_reason = reason.into();
        let v = self.task_signal_reason.clone();
        self.detail("task_signal_reason", v)
    }

    /// Overrides the computed display message; call it last.
    pub fn with_display_message(mut self, msg: impl Into<String>) -> Self {
        self.display_message = msg.into();
        self
    }

    /// Fills `DisplayMessage` when empty (Nomad's `PopulateEventDisplayMessage`).
    pub fn populate_display_message(&mut self) {
        if self.display_message.is_empty() {
            self.display_message = self.describe();
        }
    }

    /// The display message Nomad derives from the event's type and fields.
    pub fn describe(&self) -> String {
        use event_types as t;
        let or = |s: &str, fallback: &str| {
            if s.is_empty() {
                fallback.to_owned()
            } else {
                s.to_owned()
            }
        };
        match self.kind.as_str() {
            t::TASK_SETUP => self.message.clone(),
            t::STARTED => "Task started by client".to_owned(),
            t::RECEIVED => "Task received by client".to_owned(),
            t::FAILED_VALIDATION => or(&self.validation_error, "Validation of task failed"),
            t::SETUP_FAILURE => or(&self.setup_error, "Task setup failed"),
            t::DRIVER_FAILURE => or(&self.driver_error, "Failed to start task"),
            t::DOWNLOADING_ARTIFACTS => "Client is downloading artifacts".to_owned(),
            t::ARTIFACT_DOWNLOAD_FAILED => or(&self.download_error, "Failed to download artifacts"),
            t::KILLING if !self.kill_reason.is_empty() => self.kill_reason.clone(),
            t::KILLING if self.kill_timeout.nanos() != 0 => format!(
                "Sent interrupt. Waiting {} before force killing",
                duration::format(self.kill_timeout)
            ),
            t::KILLING => "Sent interrupt".to_owned(),
            t::KILLED => or(&self.kill_error, "Task successfully killed"),
            t::TERMINATED => {
                let mut s = format!("Exit Code: {}", self.exit_code);
                if self.signal != 0 {
                    let _ = write!(s, ", Signal: {}", self.signal);
                }
                if !self.message.is_empty() {
                    let _ = write!(s, ", Exit Message: {}", go_quote(&self.message));
                }
                s
            }
            t::RESTARTING => {
                let delay = format!("Task restarting in {}", duration::format(self.start_delay));
                if self.restart_reason.is_empty()
                    || self.restart_reason == restart_reasons::WITHIN_POLICY
                {
                    delay
                } else {
                    format!("{} - {delay}", self.restart_reason)
                }
            }
            t::NOT_RESTARTING => or(&self.restart_reason, "Task exceeded restart policy"),
            t::SIBLING_FAILED if self.failed_sibling.is_empty() => {
                "Task's sibling failed".to_owned()
            }
            t::SIBLING_FAILED => {
                format!("Task's sibling {} failed", go_quote(&self.failed_sibling))
            }
            t::SIGNALING => match (self.task_signal.as_str(), self.task_signal_reason.as_str()) {
                ("", "") => "Task being sent a signal".to_owned(),
                ("", reason) => reason.to_owned(),
                (sig, "") => format!("Task being sent signal {sig}"),
                (sig, reason) => format!("Task being sent signal {sig}: {reason}"),
            },
            t::RESTART_SIGNALED => or(&self.restart_reason, "Task signaled to restart"),
            t::DRIVER_MESSAGE => self.driver_message.clone(),
            t::LEADER_DEAD => "Leader Task in Group dead".to_owned(),
            t::MAIN_DEAD => "Main tasks in the group died".to_owned(),
            t::CLIENT_RECONNECTED => "Client reconnected".to_owned(),
            _ => self.message.clone(),
        }
    }
}

/// A string quoted as Go's `%q` does (double quotes, Go escapes).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An allocation's standing in its deployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocDeploymentStatus {
    /// `null` until health is decided.
    pub healthy: Option<bool>,
    /// When health was decided.
    pub timestamp: Timestamp,
    /// A canary; cleared on promotion.
    pub canary: bool,
    pub modify_index: i64,
}

impl AllocDeploymentStatus {
    /// Health decided, either way.
    pub fn has_health(&self) -> bool {
        self.healthy.is_some()
    }
    pub fn is_healthy(&self) -> bool {
        self.healthy == Some(true)
    }
    pub fn is_unhealthy(&self) -> bool {
        self.healthy == Some(false)
    }
}

/// The reschedules that led to an allocation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct RescheduleTracker {
    /// Oldest first.
    #[serde(deserialize_with = "null_as_default")]
    pub events: Vec<RescheduleEvent>,
    /// Outcome of the last attempt: `""`, `"ok"` or `"no placement"`.
    pub last_reschedule: String,
}

/// One reschedule: which allocation was replaced, from where, after what delay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct RescheduleEvent {
    /// Unix nanoseconds.
    pub reschedule_time: i64,
    #[serde(rename = "PrevAllocID")]
    pub prev_alloc_id: AllocId,
    #[serde(rename = "PrevNodeID")]
    pub prev_node_id: NodeId,
    pub delay: Duration,
}

/// An allocation's network namespace as the client set it up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocNetworkStatus {
    pub interface_name: String,
    pub address: String,
    #[serde(rename = "AddressIPv6")]
    pub address_ipv6: String,
    #[serde(rename = "DNS")]
    pub dns: Option<DnsConfig>,
}

/// Nomad keeps this many top-scoring nodes in [`AllocMetric::score_meta_data`].
pub const MAX_RETAINED_NODE_SCORES: usize = 5;

/// The scorer name of the final, normalized score.
pub const NORM_SCORER_NAME: &str = "normalized-score";

/// How a placement went: nodes looked at, filtered, exhausted, and the best scores. On an
/// evaluation's `FailedTGAllocs` it explains why a group could not be placed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocMetric {
    pub nodes_evaluated: i32,
    pub nodes_filtered: i32,
    /// Nodes in the job's node pool.
    pub nodes_in_pool: i32,
    pub node_pool: String,
    /// Datacenter → ready nodes.
    #[serde(deserialize_with = "null_as_default")]
    pub nodes_available: BTreeMap<String, i32>,
    /// Node class → nodes filtered.
    #[serde(deserialize_with = "null_as_default")]
    pub class_filtered: BTreeMap<String, i32>,
    /// Constraint (`${attr.kernel.name} = linux`) → nodes it filtered.
    #[serde(deserialize_with = "null_as_default")]
    pub constraint_filtered: BTreeMap<String, i32>,
    pub nodes_exhausted: i32,
    /// Node class → nodes exhausted.
    #[serde(deserialize_with = "null_as_default")]
    pub class_exhausted: BTreeMap<String, i32>,
    /// Dimension (`cpu`, `memory`, `disk`, `network: …`) → nodes it exhausted.
    #[serde(deserialize_with = "null_as_default")]
    pub dimension_exhausted: BTreeMap<String, i32>,
    #[serde(deserialize_with = "null_as_default")]
    pub quota_exhausted: Vec<String>,
    /// Task → resources that did not fit.
    #[serde(deserialize_with = "null_as_default")]
    pub resources_exhausted: BTreeMap<String, Resources>,
    /// Deprecated in Nomad: `<node>.<scorer>` → score.
    #[serde(deserialize_with = "null_as_default")]
    pub scores: BTreeMap<String, f64>,
    /// The best nodes, best first (at most [`MAX_RETAINED_NODE_SCORES`]).
    #[serde(deserialize_with = "null_as_default")]
    pub score_meta_data: Vec<NodeScoreMeta>,
    /// Time spent placing.
    pub allocation_time: Duration,
    /// Further identical failures folded into this one.
    pub coalesced_failures: i32,
}

impl AllocMetric {
    /// Counts a node looked at.
    pub fn evaluate_node(&mut self) {
        self.nodes_evaluated += 1;
    }

    /// Counts a node ruled out by `constraint` (by its class too, when it has one).
    pub fn filter_node(&mut self, node: Option<&Node>, constraint: &str) {
        self.nodes_filtered += 1;
        if let Some(class) = node
            .map(|n| n.node_class.as_str())
            .filter(|c| !c.is_empty())
        {
            *self.class_filtered.entry(class.to_owned()).or_default() += 1;
        }
        if !constraint.is_empty() {
            *self
                .constraint_filtered
                .entry(constraint.to_owned())
                .or_default() += 1;
        }
    }

    /// Counts a feasible node without room in `dimension` (`cpu`, `memory`, `disk`, …).
    pub fn exhausted_node(&mut self, node: Option<&Node>, dimension: &str) {
        self.nodes_exhausted += 1;
        if let Some(class) = node
            .map(|n| n.node_class.as_str())
            .filter(|c| !c.is_empty())
        {
            *self.class_exhausted.entry(class.to_owned()).or_default() += 1;
        }
        if !dimension.is_empty() {
            *self
                .dimension_exhausted
                .entry(dimension.to_owned())
                .or_default() += 1;
        }
    }

    /// Records a node's scores, keeping the [`MAX_RETAINED_NODE_SCORES`] best by `NormScore`,
    /// best first.
    pub fn score_node(&mut self, meta: NodeScoreMeta) {
        let at = self
            .score_meta_data
            .partition_point(|m| m.norm_score >= meta.norm_score);
        if at < MAX_RETAINED_NODE_SCORES {
            self.score_meta_data.insert(at, meta);
            self.score_meta_data.truncate(MAX_RETAINED_NODE_SCORES);
        }
    }

    /// The best-scoring node.
    pub fn max_norm_score(&self) -> Option<&NodeScoreMeta> {
        self.score_meta_data.first()
    }
}

/// A node's scores from each scorer and the normalized result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeScoreMeta {
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    /// Scorer (`binpack`, `job-anti-affinity`, …) → score.
    #[serde(deserialize_with = "null_as_default")]
    pub scores: BTreeMap<String, f64>,
    pub norm_score: f64,
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

    fn nomad_alloc() -> serde_json::Value {
        serde_json::from_str(
            r#"{
            "ID": "5456bd7a-9fc0-c0dd-6131-cbee77f57577",
            "Namespace": "default",
            "EvalID": "7bb5bf4d-5b7b-2a8b-7d0e-1b4d2c2e3f3a",
            "Name": "example.cache[0]",
            "NodeID": "fb2170a8-257d-3c64-b14d-bc06cc94e34c",
            "NodeName": "client-1",
            "JobID": "example",
            "Job": {"ID": "example", "Type": "service", "Version": 3},
            "TaskGroup": "cache",
            "AllocatedResources": {
                "Tasks": {"redis": {"Cpu": {"CpuShares": 500, "ReservedCores": null},
                    "Memory": {"MemoryMB": 256, "MemoryMaxMB": 0}, "Networks": null, "Devices": null}},
                "TaskLifecycles": {"redis": null},
                "Shared": {"Networks": null, "DiskMB": 300, "Ports": null}
            },
            "Metrics": {
                "NodesEvaluated": 2, "NodesFiltered": 0, "NodesInPool": 2, "NodePool": "default",
                "NodesAvailable": {"dc1": 2}, "ClassFiltered": null, "ConstraintFiltered": null,
                "NodesExhausted": 0, "ClassExhausted": null, "DimensionExhausted": null,
                "QuotaExhausted": null, "ResourcesExhausted": null, "Scores": null,
                "ScoreMetaData": [{"NodeID": "fb2170a8-257d-3c64-b14d-bc06cc94e34c",
                    "Scores": {"binpack": 0.33, "job-anti-affinity": 0.0}, "NormScore": 0.33}],
                "AllocationTime": 61000, "CoalescedFailures": 0
            },
            "DesiredStatus": "run",
            "DesiredDescription": "",
            "DesiredTransition": {"Migrate": null, "Reschedule": null, "ForceReschedule": null,
                "NoShutdownDelay": null, "MigrateDisablePlacement": null},
            "ClientStatus": "running",
            "ClientDescription": "Tasks are running",
            "TaskStates": {"redis": {
                "State": "running", "Failed": false, "Restarts": 1,
                "LastRestart": "2024-05-01T12:00:30Z",
                "StartedAt": "2024-05-01T12:00:45.123456789Z",
                "FinishedAt": "0001-01-01T00:00:00Z",
                "Events": [{
                    "Type": "Received", "Time": 1714564800000000000, "Message": "",
                    "DisplayMessage": "Task received by client", "Details": {},
                    "FailsTask": false, "RestartReason": "", "SetupError": "", "DriverError": "",
                    "ExitCode": 0, "Signal": 0, "KillTimeout": 0, "KillError": "", "KillReason": "",
                    "StartDelay": 0, "DownloadError": "", "ValidationError": "", "DiskLimit": 0,
                    "FailedSibling": "", "VaultError": "", "TaskSignalReason": "", "TaskSignal": "",
                    "DriverMessage": "", "GenericSource": ""
                }]
            }},
            "AllocStates": null,
            "PreviousAllocation": "",
            "NextAllocation": "",
            "DeploymentID": "6c3e0a0d-9e0a-4f7d-8b1a-2d4c5e6f7a8b",
            "DeploymentStatus": {"Healthy": true, "Timestamp": "2024-05-01T12:01:00Z", "Canary": false, "ModifyIndex": 40},
            "RescheduleTracker": {"Events": [{"RescheduleTime": 1714564700000000000,
                "PrevAllocID": "11111111-2222-3333-4444-555555555555",
                "PrevNodeID": "66666666-7777-8888-9999-000000000000", "Delay": 30000000000}],
                "LastReschedule": "ok"},
            "NetworkStatus": null,
            "FollowupEvalID": "",
            "PreemptedAllocations": null,
            "PreemptedByAllocation": "",
            "CreateIndex": 30,
            "ModifyIndex": 40,
            "AllocModifyIndex": 30,
            "CreateTime": 1714564800000000000,
            "ModifyTime": 1714564860000000000
        }"#,
        )
        .unwrap()
    }

    #[test]
    fn allocation_round_trips_nomad_json() {
        let nomad = nomad_alloc();
        let alloc: Allocation = serde_json::from_value(nomad.clone()).unwrap();
        assert_eq!(alloc.client_status, ClientStatus::Running);
        assert_eq!(alloc.desired_status, DesiredStatus::Run);
        let redis = &alloc.task_states["redis"];
        assert_eq!(redis.state, TaskStatus::Running);
        assert!(redis.finished_at.is_zero());
        assert_eq!(redis.events[0].kind, event_types::RECEIVED);
        assert!(alloc.is_healthy());
        assert_eq!(
            alloc.reschedule_tracker.as_ref().unwrap().events[0].delay,
            Duration::from_secs(30)
        );
        assert_eq!(alloc.metrics.as_ref().unwrap().nodes_available["dc1"], 2);

        let back = serde_json::to_value(&alloc).unwrap();
        assert_eq!(keys(&back), keys(&nomad));
        assert_eq!(back["TaskStates"], nomad["TaskStates"]);
        assert_eq!(back["DeploymentStatus"], nomad["DeploymentStatus"]);
        assert_eq!(back["RescheduleTracker"], nomad["RescheduleTracker"]);
        assert_eq!(back["DesiredTransition"], nomad["DesiredTransition"]);
        assert_eq!(keys(&back["Metrics"]), keys(&nomad["Metrics"]));
        assert_eq!(
            back["Metrics"]["ScoreMetaData"],
            nomad["Metrics"]["ScoreMetaData"]
        );
        assert_eq!(back["CreateTime"], nomad["CreateTime"]);
    }

    #[test]
    fn minimal_allocation_decodes() {
        let a: Allocation =
            serde_json::from_value(json!({"ID": "a", "ClientStatus": "lost"})).unwrap();
        assert_eq!(a.client_status, ClientStatus::Lost);
        assert!(a.job.is_none());
        assert!(a.is_terminal());
    }

    #[test]
    fn status_enums_round_trip() {
        assert_eq!(
            ClientStatus::WIRE,
            [
                "pending", "running", "complete", "failed", "lost", "unknown"
            ]
        );
        assert_eq!(DesiredStatus::WIRE, ["run", "stop", "evict"]);
        assert_eq!(TaskStatus::WIRE, ["pending", "running", "dead"]);
        for s in ClientStatus::ALL {
            let v = serde_json::to_value(s).unwrap();
            assert_eq!(serde_json::from_value::<ClientStatus>(v).unwrap(), *s);
        }
        for s in DesiredStatus::ALL {
            assert_eq!(s.as_str().parse::<DesiredStatus>().unwrap(), *s);
        }
        assert_eq!(TaskStatus::Dead.to_string(), "dead");
        let err = "zombie".parse::<TaskStatus>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown TaskStatus \"zombie\"; expected one of: pending, running, dead"
        );
    }

    #[test]
    fn index_parses_the_bracket() {
        let mut a = Allocation {
            name: "example.cache[12]".into(),
            ..Default::default()
        };
        assert_eq!(a.index(), Some(12));
        a.name = "my.job.with.dots.web[0]".into();
        assert_eq!(a.index(), Some(0));
        a.name = "odd[name].group[3]".into();
        assert_eq!(a.index(), Some(3));
        a.name = "broken".into();
        assert_eq!(a.index(), None);
        a.name = "x.y[]".into();
        assert_eq!(a.index(), None);
        assert_eq!(alloc_name("example", "cache", 2), "example.cache[2]");
        assert_eq!(alloc_index_from_name(&alloc_name("j", "g", 7)), Some(7));
    }

    #[test]
    fn terminal_and_success_follow_nomad() {
        let mut a = Allocation::default();
        assert!(!a.is_terminal());
        for (client, terminal) in [
            (ClientStatus::Pending, false),
            (ClientStatus::Running, false),
            (ClientStatus::Unknown, false),
            (ClientStatus::Complete, true),
            (ClientStatus::Failed, true),
            (ClientStatus::Lost, true),
        ] {
            a.client_status = client;
            assert_eq!(a.is_terminal(), terminal, "{client}");
        }
        a.client_status = ClientStatus::Running;
        a.desired_status = DesiredStatus::Stop;
        assert!(a.is_terminal() && a.server_terminal_status() && !a.client_terminal_status());
        a.desired_status = DesiredStatus::Evict;
        assert!(a.is_terminal());

        assert!(!a.ran_successfully(), "no task states yet");
        let dead = |failed| TaskState {
            state: TaskStatus::Dead,
            failed,
            ..Default::default()
        };
        a.task_states.insert("a".into(), dead(false));
        a.task_states.insert("b".into(), dead(false));
        assert!(a.ran_successfully());
        a.task_states.insert("c".into(), dead(true));
        assert!(!a.ran_successfully());
        a.task_states.insert(
            "c".into(),
            TaskState {
                state: TaskStatus::Running,
                ..Default::default()
            },
        );
        assert!(!a.ran_successfully());
    }

    #[test]
    fn stub_carries_the_list_fields() {
        let alloc: Allocation = serde_json::from_value(nomad_alloc()).unwrap();
        let stub = serde_json::to_value(alloc.stub()).unwrap();
        let expected = [
            "ClientDescription",
            "ClientStatus",
            "CreateIndex",
            "CreateTime",
            "DeploymentStatus",
            "DesiredDescription",
            "DesiredStatus",
            "DesiredTransition",
            "EvalID",
            "FollowupEvalID",
            "ID",
            "JobID",
            "JobType",
            "JobVersion",
            "ModifyIndex",
            "ModifyTime",
            "Name",
            "Namespace",
            "NextAllocation",
            "NodeID",
            "NodeName",
            "PreemptedAllocations",
            "PreemptedByAllocation",
            "RescheduleTracker",
            "TaskGroup",
            "TaskStates",
        ];
        assert_eq!(keys(&stub), expected);
        assert_eq!(stub["JobType"], "service");
        assert_eq!(stub["JobVersion"], 3);
        assert_eq!(stub["TaskStates"]["redis"]["State"], "running");

        let with = alloc.stub_with(AllocStubFields {
            resources: true,
            task_states: false,
        });
        assert!(with.task_states.is_empty());
        assert_eq!(with.allocated_resources, alloc.allocated_resources);
        let v = serde_json::to_value(&with).unwrap();
        assert_eq!(v["AllocatedResources"]["Shared"]["DiskMB"], 300);
        assert_eq!(
            serde_json::from_value::<AllocationListStub>(v).unwrap(),
            with
        );
    }

    #[test]
    fn task_event_display_messages_match_nomad() {
        use event_types as t;
        let at = 1_714_564_800_000_000_000;
        let cases: Vec<(TaskEvent, &str)> = vec![
            (TaskEvent::new(t::RECEIVED, at), "Task received by client"),
            (TaskEvent::new(t::STARTED, at), "Task started by client"),
            (
                TaskEvent::new(t::TASK_SETUP, at).with_message("Building Task Directory"),
                "Building Task Directory",
            ),
            (
                TaskEvent::new(t::DRIVER_FAILURE, at),
                "Failed to start task",
            ),
            (
                TaskEvent::new(t::DRIVER_FAILURE, at).with_driver_error("image not found"),
                "image not found",
            ),
            (
                TaskEvent::new(t::TERMINATED, at).with_exit_code(0),
                "Exit Code: 0",
            ),
            (
                TaskEvent::new(t::TERMINATED, at)
                    .with_exit_code(137)
                    .with_signal(9)
                    .with_exit_message("OOM \"killed\""),
                "Exit Code: 137, Signal: 9, Exit Message: \"OOM \\\"killed\\\"\"",
            ),
            (TaskEvent::new(t::KILLING, at), "Sent interrupt"),
            (
                TaskEvent::new(t::KILLING, at).with_kill_timeout(Duration::from_secs(5)),
                "Sent interrupt. Waiting 5s before force killing",
            ),
            (
                TaskEvent::new(t::KILLING, at)
                    .with_kill_timeout(Duration::from_secs(5))
                    .with_kill_reason("Job stopped"),
                "Job stopped",
            ),
            (TaskEvent::new(t::KILLED, at), "Task successfully killed"),
            (
                TaskEvent::new(t::RESTARTING, at)
                    .with_restart_delay(Duration::from_millis(15_500))
                    .with_restart_reason(restart_reasons::WITHIN_POLICY),
                "Task restarting in 15.5s",
            ),
            (
                TaskEvent::new(t::RESTARTING, at)
                    .with_restart_delay(Duration::from_secs(30))
                    .with_restart_reason(restart_reasons::DELAY),
                "Exceeded allowed attempts, applying a delay - Task restarting in 30s",
            ),
            (
                TaskEvent::new(t::NOT_RESTARTING, at),
                "Task exceeded restart policy",
            ),
            (
                TaskEvent::new(t::NOT_RESTARTING, at)
                    .with_restart_reason(restart_reasons::NO_RESTARTS_ALLOWED),
                "Policy allows no restarts",
            ),
            (
                TaskEvent::new(t::SIBLING_FAILED, at),
                "Task's sibling failed",
            ),
            (
                TaskEvent::new(t::SIBLING_FAILED, at).with_failed_sibling("web"),
                "Task's sibling \"web\" failed",
            ),
            (TaskEvent::new(t::SIGNALING, at), "Task being sent a signal"),
            (
                TaskEvent::new(t::SIGNALING, at).with_task_signal("SIGHUP"),
                "Task being sent signal SIGHUP",
            ),
            (
                TaskEvent::new(t::SIGNALING, at)
                    .with_task_signal("SIGHUP")
                    .with_task_signal_reason("template changed"),
                "Task being sent signal SIGHUP: template changed",
            ),
            (
                TaskEvent::new(t::RESTART_SIGNALED, at),
                "Task signaled to restart",
            ),
            (
                TaskEvent::new(t::DRIVER_MESSAGE, at).with_driver_message("Downloading image"),
                "Downloading image",
            ),
            (
                TaskEvent::new(t::LEADER_DEAD, at),
                "Leader Task in Group dead",
            ),
            (
                TaskEvent::new(t::DOWNLOADING_ARTIFACTS, at),
                "Client is downloading artifacts",
            ),
            (
                TaskEvent::new(t::SETUP_FAILURE, at).with_setup_error("no such user"),
                "no such user",
            ),
            (
                TaskEvent::new(t::ALLOC_UNHEALTHY, at)
                    .with_message("Task not running for min_healthy_time"),
                "Task not running for min_healthy_time",
            ),
            (
                TaskEvent::new(t::KILLED, at).with_display_message("custom"),
                "custom",
            ),
        ];
        for (event, want) in cases {
            assert_eq!(event.display_message, want, "{}", event.kind);
            assert_eq!(event.time, at);
        }
    }

    #[test]
    fn task_event_builders_fill_details_like_nomad() {
        let e = TaskEvent::new(event_types::TERMINATED, 1)
            .with_exit_code(1)
            .with_signal(15)
            .with_kill_timeout(Duration::from_secs(90))
            .with_restart_delay(Duration::from_secs(15))
            .with_fails_task();
        assert_eq!(e.details["exit_code"], "1");
        assert_eq!(e.details["signal"], "15");
        assert_eq!(e.details["kill_timeout"], "1m30s");
        assert_eq!(e.details["start_delay"], "15000000000");
        assert_eq!(e.details["fails_task"], "true");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["Type"], "Terminated");
        assert_eq!(v["KillTimeout"], 90_000_000_000_i64);
        assert_eq!(v["StartDelay"], 15_000_000_000_i64);
    }

    #[test]
    fn task_state_keeps_the_newest_events_and_fills_display() {
        let mut ts = TaskState::default();
        for i in 0..12 {
            let mut e = TaskEvent::new(event_types::STARTED, i);
            e.display_message.clear();
            ts.push_event(e, 10);
        }
        assert_eq!(ts.events.len(), 10);
        assert_eq!(ts.events[0].time, 2);
        assert_eq!(ts.events[9].display_message, "Task started by client");
    }

    #[test]
    fn go_quote_escapes_like_go() {
        assert_eq!(go_quote("plain"), "\"plain\"");
        assert_eq!(
            go_quote("a\"b\\c\n\t\u{7}\u{1}"),
            "\"a\\\"b\\\\c\\n\\t\\a\\x01\""
        );
        assert_eq!(go_quote("héllo"), "\"héllo\"");
    }

    #[test]
    fn check_results_are_nomads_shape_and_decide_health() {
        let mut a = Allocation::default();
        assert!(
            serde_json::to_value(&a)
                .unwrap()
                .get("CheckResults")
                .is_none(),
            "omitted when empty"
        );
        assert_eq!(a.checks_healthy(), None);
        let nomad = json!({
            "ID": "5f8d8e7b0e6b4c3f8a1d2e3f4a5b6c7d", "Mode": "healthiness", "Status": "success",
            "StatusCode": 200, "Output": "nomad: http ok", "Timestamp": 1714564800,
            "Group": "web", "Task": "server", "Service": "web", "Check": "alive"
        });
        let r: CheckQueryResult = serde_json::from_value(nomad.clone()).unwrap();
        assert_eq!(r.status, CheckStatus::Success);
        assert_eq!(serde_json::to_value(&r).unwrap(), nomad);
        // A tcp check of a group service: no status code, no task (as Nomad omits them).
        let group = CheckQueryResult {
            id: CheckId::new("c2"),
            status: CheckStatus::Pending,
            group: "web".into(),
            service: "web".into(),
            check: "port".into(),
            ..CheckQueryResult::default()
        };
        assert_eq!(
            keys(&serde_json::to_value(&group).unwrap()),
            [
                "Check",
                "Group",
                "ID",
                "Mode",
                "Output",
                "Service",
                "Status",
                "Timestamp"
            ]
        );
        a.check_results.insert(r.id.clone(), r.clone());
        assert_eq!(a.checks_healthy(), Some(true));
        a.check_results.insert(group.id.clone(), group.clone());
        assert_eq!(
            a.checks_healthy(),
            Some(false),
            "pending is not healthy yet"
        );
        // Readiness checks (on_update = "ignore") do not count.
        a.check_results.get_mut(&group.id).unwrap().mode = CheckMode::Readiness;
        assert_eq!(a.checks_healthy(), Some(true));
        a.check_results.remove(&r.id);
        assert_eq!(
            a.checks_healthy(),
            None,
            "only readiness checks: no verdict"
        );
        let back: Allocation = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
        assert_eq!(back.check_results, a.check_results);
    }

    #[test]
    fn metric_helpers_count_like_nomad() {
        let node = Node {
            node_class: "gpu".into(),
            ..Default::default()
        };
        let mut m = AllocMetric::default();
        m.evaluate_node();
        m.evaluate_node();
        m.filter_node(Some(&node), "${attr.kernel.name} = linux");
        m.filter_node(None, "${attr.kernel.name} = linux");
        m.filter_node(Some(&Node::default()), "");
        m.exhausted_node(Some(&node), "memory");
        m.exhausted_node(None, "memory");
        assert_eq!(m.nodes_evaluated, 2);
        assert_eq!(m.nodes_filtered, 3);
        assert_eq!(m.constraint_filtered["${attr.kernel.name} = linux"], 2);
        assert_eq!(m.class_filtered["gpu"], 1);
        assert_eq!(m.nodes_exhausted, 2);
        assert_eq!(m.dimension_exhausted["memory"], 2);
        assert_eq!(m.class_exhausted["gpu"], 1);

        for (i, score) in [0.2, 0.9, 0.5, 0.1, 0.7, 0.3, 0.95].into_iter().enumerate() {
            m.score_node(NodeScoreMeta {
                node_id: NodeId::new(format!("n{i}")),
                norm_score: score,
                ..Default::default()
            });
        }
        let kept: Vec<f64> = m.score_meta_data.iter().map(|s| s.norm_score).collect();
        assert_eq!(kept, [0.95, 0.9, 0.7, 0.5, 0.3]);
        assert_eq!(m.max_norm_score().unwrap().node_id.as_str(), "n6");

        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["DimensionExhausted"], json!({"memory": 2}));
        assert_eq!(v["AllocationTime"], 0);
    }
}
