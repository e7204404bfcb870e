//! Deployments in Nomad's API form: the progress of rolling a job version out, per task group.

use crate::duration::Duration;
use crate::ids::{AllocId, DeploymentId, JobId, Namespace};
use crate::resources::{null_as_default, wire_enum};
use crate::time::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

wire_enum! {
    /// Where a deployment stands.
    pub enum DeploymentStatus {
        Running = "running",
        Paused = "paused",
        Failed = "failed",
        Successful = "successful",
        Cancelled = "cancelled",
        /// Multiregion: waiting for a peer region.
        Pending = "pending",
        /// Multiregion: done here, waiting for peer regions.
        Blocked = "blocked",
        /// Multiregion: unblocking the remaining regions.
        Unblocking = "unblocking",
        /// Created but not yet started.
        Initializing = "initializing",
    }
    default = Running;
}

impl DeploymentStatus {
    /// Not finished: running, paused, pending, blocked, unblocking or initializing.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Running
                | DeploymentStatus::Paused
                | DeploymentStatus::Pending
                | DeploymentStatus::Blocked
                | DeploymentStatus::Unblocking
                | DeploymentStatus::Initializing
        )
    }
}

/// Nomad's `StatusDescription` strings. Some are matched on (e.g. "requires manual promotion"),
/// so they must be exact.
pub mod descriptions {
    pub const RUNNING: &str = "Deployment is running";
    pub const RUNNING_NEEDS_PROMOTION: &str = "Deployment is running but requires manual promotion";
    pub const RUNNING_AUTO_PROMOTION: &str = "Deployment is running pending automatic promotion";
    pub const PAUSED: &str = "Deployment is paused";
    pub const SUCCESSFUL: &str = "Deployment completed successfully";
    pub const STOPPED_JOB: &str = "Cancelled because job is stopped";
    pub const NEWER_JOB: &str = "Cancelled due to newer version of job";
    pub const FAILED_ALLOCATIONS: &str = "Failed due to unhealthy allocations";
    pub const PROGRESS_DEADLINE: &str = "Failed due to progress deadline";
    pub const FAILED_BY_USER: &str = "Deployment marked as failed";
    pub const FAILED_BY_PEER: &str = "Failed because of an error in peer region";
    pub const BLOCKED: &str = "Deployment is complete but waiting for peer region";
    pub const UNBLOCKING: &str = "Deployment is unblocking remaining regions";
    pub const PENDING_FOR_PEER: &str = "Deployment is pending, waiting for peer region";

    /// `"<base> - rolling back to job version N"`.
    pub fn rollback(base: &str, job_version: u64) -> String {
        format!("{base} - rolling back to job version {job_version}")
    }

    /// `"<base> - not rolling back to stable job version N as current job has same specification"`.
    pub fn rollback_noop(base: &str, job_version: u64) -> String {
        format!(
            "{base} - not rolling back to stable job version {job_version} as current job has same specification"
        )
    }

    /// `"<base> - no stable job version to auto revert to"`.
    pub fn no_rollback_target(base: &str) -> String {
        format!("{base} - no stable job version to auto revert to")
    }
}

/// The rollout of one job version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Deployment {
    #[serde(rename = "ID")]
    pub id: DeploymentId,
    pub namespace: Namespace,
    #[serde(rename = "JobID")]
    pub job_id: JobId,
    /// The job version being deployed.
    pub job_version: u64,
    pub job_modify_index: i64,
    /// The job's `JobModifyIndex` (spec changes only) for that version.
    pub job_spec_modify_index: i64,
    /// The job's create index, to tell a re-created job apart.
    pub job_create_index: i64,
    pub is_multiregion: bool,
    /// Task group → its rollout state.
    #[serde(deserialize_with = "null_as_default")]
    pub task_groups: BTreeMap<String, DeploymentState>,
    pub status: DeploymentStatus,
    /// See [`descriptions`].
    pub status_description: String,
    /// Priority of the evaluations the deployment creates.
    pub eval_priority: i32,
    pub create_index: i64,
    pub modify_index: i64,
    /// Unix nanoseconds.
    pub create_time: i64,
    /// Unix nanoseconds.
    pub modify_time: i64,
}

impl Deployment {
    /// Not finished (running, paused, pending, blocked, unblocking or initializing).
    pub fn active(&self) -> bool {
        self.status.is_active()
    }

    /// Running with a group that has canaries and is not yet promoted.
    pub fn requires_promotion(&self) -> bool {
        self.status == DeploymentStatus::Running
            && self
                .task_groups
                .values()
                .any(|g| g.desired_canaries > 0 && !g.promoted)
    }

    /// Running, and every group with canaries promotes automatically.
    pub fn has_auto_promote(&self) -> bool {
        self.status == DeploymentStatus::Running
            && !self.task_groups.is_empty()
            && self
                .task_groups
                .values()
                .all(|g| g.desired_canaries == 0 || g.auto_promote)
    }

    /// Some group has placed canaries.
    pub fn has_placed_canaries(&self) -> bool {
        self.task_groups
            .values()
            .any(|g| !g.placed_canaries.is_empty())
    }
}

/// One task group's rollout state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeploymentState {
    /// Roll back to the last stable version on failure.
    pub auto_revert: bool,
    /// Promote canaries once they are all healthy.
    pub auto_promote: bool,
    /// How long the group may go without a newly healthy allocation (nanoseconds).
    pub progress_deadline: Duration,
    /// When the deployment fails unless an allocation turns healthy first; zero until set.
    pub require_progress_by: Timestamp,
    /// Canaries promoted (or none needed).
    pub promoted: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub placed_canaries: Vec<AllocId>,
    pub desired_canaries: i32,
    /// Allocations wanted at the new version.
    pub desired_total: i32,
    pub placed_allocs: i32,
    pub healthy_allocs: i32,
    pub unhealthy_allocs: i32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nomad_deployment() -> serde_json::Value {
        json!({
            "ID": "6c3e0a0d-9e0a-4f7d-8b1a-2d4c5e6f7a8b",
            "Namespace": "default",
            "JobID": "example",
            "JobVersion": 2,
            "JobModifyIndex": 70,
            "JobSpecModifyIndex": 70,
            "JobCreateIndex": 10,
            "IsMultiregion": false,
            "TaskGroups": {"cache": {
                "AutoRevert": true,
                "AutoPromote": false,
                "ProgressDeadline": 600000000000_i64,
                "RequireProgressBy": "2024-05-01T12:10:00Z",
                "Promoted": false,
                "PlacedCanaries": ["5456bd7a-9fc0-c0dd-6131-cbee77f57577"],
                "DesiredCanaries": 1,
                "DesiredTotal": 3,
                "PlacedAllocs": 1,
                "HealthyAllocs": 1,
                "UnhealthyAllocs": 0
            }},
            "Status": "running",
            "StatusDescription": "Deployment is running but requires manual promotion",
            "EvalPriority": 50,
            "CreateIndex": 71,
            "ModifyIndex": 75,
            "CreateTime": 1714564800000000000_i64,
            "ModifyTime": 1714564860000000000_i64
        })
    }

    #[test]
    fn deployment_round_trips_nomad_json() {
        let nomad = nomad_deployment();
        let d: Deployment = serde_json::from_value(nomad.clone()).unwrap();
        let g = &d.task_groups["cache"];
        assert_eq!(g.progress_deadline, Duration::from_mins(10));
        assert_eq!(g.require_progress_by.to_rfc3339(), "2024-05-01T12:10:00Z");
        assert_eq!(d.status_description, descriptions::RUNNING_NEEDS_PROMOTION);
        let back = serde_json::to_value(&d).unwrap();
        assert_eq!(back, nomad, "exactly Nomad's document");
        assert!(
            back["TaskGroups"]["cache"]["ProgressDeadline"].is_i64(),
            "integer nanoseconds"
        );
    }

    #[test]
    fn status_round_trips_and_active_set() {
        assert_eq!(
            DeploymentStatus::WIRE,
            [
                "running",
                "paused",
                "failed",
                "successful",
                "cancelled",
                "pending",
                "blocked",
                "unblocking",
                "initializing"
            ]
        );
        for s in DeploymentStatus::ALL {
            let v = serde_json::to_value(s).unwrap();
            assert_eq!(serde_json::from_value::<DeploymentStatus>(v).unwrap(), *s);
            let active = !matches!(
                s,
                DeploymentStatus::Failed
                    | DeploymentStatus::Successful
                    | DeploymentStatus::Cancelled
            );
            let d = Deployment {
                status: *s,
                ..Default::default()
            };
            assert_eq!(d.active(), active, "{s}");
        }
    }

    #[test]
    fn promotion_helpers() {
        let mut d: Deployment = serde_json::from_value(nomad_deployment()).unwrap();
        assert!(d.requires_promotion());
        assert!(!d.has_auto_promote());
        assert!(d.has_placed_canaries());
        d.task_groups.get_mut("cache").unwrap().auto_promote = true;
        assert!(d.has_auto_promote());
        d.task_groups.get_mut("cache").unwrap().promoted = true;
        assert!(!d.requires_promotion());
        d.task_groups.get_mut("cache").unwrap().promoted = false;
        d.status = DeploymentStatus::Paused;
        assert!(
            !d.requires_promotion(),
            "only a running deployment awaits promotion"
        );
        assert!(!Deployment::default().requires_promotion());
        assert!(!Deployment::default().has_auto_promote());
    }

    #[test]
    fn description_helpers_match_nomad() {
        assert_eq!(
            descriptions::rollback(descriptions::FAILED_ALLOCATIONS, 3),
            "Failed due to unhealthy allocations - rolling back to job version 3"
        );
        assert_eq!(
            descriptions::no_rollback_target(descriptions::PROGRESS_DEADLINE),
            "Failed due to progress deadline - no stable job version to auto revert to"
        );
        assert!(
            descriptions::rollback_noop("x", 1).ends_with("as current job has same specification")
        );
    }
}
