//! Evaluations in Nomad's API form: a request to (re)schedule a job, and what came of it.

use crate::alloc::AllocMetric;
use crate::duration::Duration;
use crate::ids::{DeploymentId, EvalId, JobId, Namespace, NodeId};
use crate::resources::{null_as_default, wire_enum};
use crate::time::Timestamp;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

wire_enum! {
    /// Where an evaluation stands.
    pub enum EvalStatus {
        /// Waiting for resources to free up before it can place more.
        Blocked = "blocked",
        Pending = "pending",
        Complete = "complete",
        Failed = "failed",
        /// Superseded by a newer evaluation (Nomad spells it with one `l`).
        Canceled = "canceled",
    }
    default = Pending;
}

impl EvalStatus {
    /// Complete, failed or canceled.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EvalStatus::Complete | EvalStatus::Failed | EvalStatus::Canceled
        )
    }
}

/// Why an evaluation was created. Nomad's set grows between releases, so a string Caravan does
/// not know is kept as [`TriggeredBy::Other`] rather than rejected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum TriggeredBy {
    #[default]
    JobRegister,
    JobDeregister,
    PeriodicJob,
    NodeDrain,
    NodeUpdate,
    AllocStop,
    Scheduled,
    RollingUpdate,
    DeploymentWatcher,
    FailedFollowUp,
    MaxPlanAttempts,
    AllocFailure,
    QueuedAllocs,
    Preemption,
    JobScaling,
    MaxDisconnectTimeout,
    Reconnect,
    AllocReschedule,
    /// A trigger this version does not know, kept verbatim.
    Other(String),
}

impl TriggeredBy {
    /// Every known trigger with its wire string.
    pub const KNOWN: &'static [(TriggeredBy, &'static str)] = &[
        (TriggeredBy::JobRegister, "job-register"),
        (TriggeredBy::JobDeregister, "job-deregister"),
        (TriggeredBy::PeriodicJob, "periodic-job"),
        (TriggeredBy::NodeDrain, "node-drain"),
        (TriggeredBy::NodeUpdate, "node-update"),
        (TriggeredBy::AllocStop, "alloc-stop"),
        (TriggeredBy::Scheduled, "scheduled"),
        (TriggeredBy::RollingUpdate, "rolling-update"),
        (TriggeredBy::DeploymentWatcher, "deployment-watcher"),
        (TriggeredBy::FailedFollowUp, "failed-follow-up"),
        (TriggeredBy::MaxPlanAttempts, "max-plan-attempts"),
        (TriggeredBy::AllocFailure, "alloc-failure"),
        (TriggeredBy::QueuedAllocs, "queued-allocs"),
        (TriggeredBy::Preemption, "preemption"),
        (TriggeredBy::JobScaling, "job-scaling"),
        (TriggeredBy::MaxDisconnectTimeout, "max-disconnect-timeout"),
        (TriggeredBy::Reconnect, "reconnect"),
        (TriggeredBy::AllocReschedule, "alloc-reschedule"),
    ];

    /// The string Nomad's API uses.
    pub fn as_str(&self) -> &str {
        match self {
            TriggeredBy::Other(s) => s,
            known => Self::KNOWN
                .iter()
                .find(|(t, _)| t == known)
                .map_or("", |(_, s)| s),
        }
    }

    /// The trigger for a wire string; unknown strings become [`TriggeredBy::Other`].
    pub fn from_wire(s: &str) -> TriggeredBy {
        Self::KNOWN
            .iter()
            .find(|(_, w)| *w == s)
            .map_or_else(|| TriggeredBy::Other(s.to_owned()), |(t, _)| t.clone())
    }
}

impl fmt::Display for TriggeredBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for TriggeredBy {
    fn from(s: &str) -> Self {
        TriggeredBy::from_wire(s)
    }
}

impl Serialize for TriggeredBy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TriggeredBy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        Ok(TriggeredBy::from_wire(&s))
    }
}

impl JsonSchema for TriggeredBy {
    fn schema_name() -> Cow<'static, str> {
        "TriggeredBy".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let known: Vec<&str> = Self::KNOWN.iter().map(|(_, s)| *s).collect();
        json_schema!({
            "type": "string",
            "description": format!("Why the evaluation was created; known values: {}", known.join(", ")),
        })
    }
}

/// A request to reconcile a job (or a node's system jobs) and what came of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct Evaluation {
    #[serde(rename = "ID")]
    pub id: EvalId,
    pub namespace: Namespace,
    /// The job's priority, copied for queue ordering.
    pub priority: i32,
    /// The scheduler to run: the job's type (`service`, `batch`, `system`, `sysbatch`), or
    /// `_core` for Nomad's internal garbage collection.
    #[serde(rename = "Type")]
    pub kind: String,
    pub triggered_by: TriggeredBy,
    #[serde(rename = "JobID")]
    pub job_id: JobId,
    /// The job's modify index when the evaluation was created.
    pub job_modify_index: i64,
    /// The node whose change triggered it, for node-update and node-drain.
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    pub node_modify_index: i64,
    #[serde(rename = "DeploymentID")]
    pub deployment_id: DeploymentId,
    pub status: EvalStatus,
    pub status_description: String,
    /// Delay before it is processed (rolling updates' stagger).
    pub wait: Duration,
    /// Do not process before this time (delayed reschedules).
    pub wait_until: Timestamp,
    /// The evaluation created to continue this one (rolling updates).
    pub next_eval: EvalId,
    pub previous_eval: EvalId,
    /// The blocked evaluation created for what could not be placed.
    pub blocked_eval: EvalId,
    /// Evaluations related to this one (only filled by `?related=true`).
    #[serde(deserialize_with = "null_as_default")]
    pub related_evals: Vec<EvaluationStub>,
    /// Task group → why it could not be placed.
    #[serde(rename = "FailedTGAllocs", deserialize_with = "null_as_default")]
    pub failed_tg_allocs: BTreeMap<String, AllocMetric>,
    /// Computed node class → whether it was feasible (for blocked evaluations).
    #[serde(deserialize_with = "null_as_default")]
    pub class_eligibility: BTreeMap<String, bool>,
    /// The quota that stopped placements.
    pub quota_limit_reached: String,
    /// Feasibility depended on something the computed class does not capture.
    pub escaped_computed_class: bool,
    /// Produce plan annotations (`job plan`).
    pub annotate_plan: bool,
    /// Task group → allocations still waiting to be placed.
    #[serde(deserialize_with = "null_as_default")]
    pub queued_allocations: BTreeMap<String, i32>,
    /// The ACL token the scheduler acts with.
    #[serde(rename = "LeaderACL")]
    pub leader_acl: String,
    /// The store index the scheduler worked from.
    pub snapshot_index: i64,
    pub create_index: i64,
    pub modify_index: i64,
    /// Unix nanoseconds.
    pub create_time: i64,
    /// Unix nanoseconds.
    pub modify_time: i64,
}

impl Evaluation {
    /// Complete, failed or canceled.
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// Some task group could not be placed.
    pub fn has_failed_allocs(&self) -> bool {
        !self.failed_tg_allocs.is_empty()
    }

    /// The short form used in `RelatedEvals`.
    pub fn stub(&self) -> EvaluationStub {
        EvaluationStub {
            id: self.id.clone(),
            namespace: self.namespace.clone(),
            priority: self.priority,
            kind: self.kind.clone(),
            triggered_by: self.triggered_by.clone(),
            job_id: self.job_id.clone(),
            node_id: self.node_id.clone(),
            deployment_id: self.deployment_id.clone(),
            status: self.status,
            status_description: self.status_description.clone(),
            wait_until: self.wait_until,
            next_eval: self.next_eval.clone(),
            previous_eval: self.previous_eval.clone(),
            blocked_eval: self.blocked_eval.clone(),
            create_index: self.create_index,
            modify_index: self.modify_index,
            create_time: self.create_time,
            modify_time: self.modify_time,
        }
    }
}

/// An evaluation in short, as listed in another evaluation's `RelatedEvals`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", default)]
pub struct EvaluationStub {
    #[serde(rename = "ID")]
    pub id: EvalId,
    pub namespace: Namespace,
    pub priority: i32,
    #[serde(rename = "Type")]
    pub kind: String,
    pub triggered_by: TriggeredBy,
    #[serde(rename = "JobID")]
    pub job_id: JobId,
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    #[serde(rename = "DeploymentID")]
    pub deployment_id: DeploymentId,
    pub status: EvalStatus,
    pub status_description: String,
    pub wait_until: Timestamp,
    pub next_eval: EvalId,
    pub previous_eval: EvalId,
    pub blocked_eval: EvalId,
    pub create_index: i64,
    pub modify_index: i64,
    pub create_time: i64,
    pub modify_time: i64,
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

    fn nomad_eval() -> serde_json::Value {
        serde_json::from_str(
            r#"{
            "ID": "2bb3c3b4-5d6e-7f80-91a2-b3c4d5e6f708",
            "Namespace": "default",
            "Priority": 50,
            "Type": "service",
            "TriggeredBy": "job-register",
            "JobID": "example",
            "JobModifyIndex": 52,
            "NodeID": "",
            "NodeModifyIndex": 0,
            "DeploymentID": "",
            "Status": "blocked",
            "StatusDescription": "created to place remaining allocations",
            "Wait": 0,
            "WaitUntil": "0001-01-01T00:00:00Z",
            "NextEval": "",
            "PreviousEval": "1aa2b3c4-5d6e-7f80-91a2-b3c4d5e6f708",
            "BlockedEval": "",
            "RelatedEvals": null,
            "FailedTGAllocs": {"cache": {
                "NodesEvaluated": 3, "NodesFiltered": 1, "NodesInPool": 3, "NodePool": "default",
                "NodesAvailable": {"dc1": 3}, "ClassFiltered": null,
                "ConstraintFiltered": {"${attr.kernel.name} = windows": 1},
                "NodesExhausted": 2, "ClassExhausted": null, "DimensionExhausted": {"memory": 2},
                "QuotaExhausted": null,
                "ResourcesExhausted": {"redis": {"CPU": 0, "Cores": 0, "MemoryMB": 4096, "MemoryMaxMB": 0,
                    "DiskMB": 0, "IOPS": 0, "Networks": null, "Devices": null, "NUMA": null, "SecretsMB": 0}},
                "Scores": null, "ScoreMetaData": null, "AllocationTime": 45000, "CoalescedFailures": 2
            }},
            "ClassEligibility": {"v1:123": true},
            "QuotaLimitReached": "",
            "EscapedComputedClass": false,
            "AnnotatePlan": false,
            "QueuedAllocations": {"cache": 3},
            "LeaderACL": "",
            "SnapshotIndex": 53,
            "CreateIndex": 54,
            "ModifyIndex": 54,
            "CreateTime": 1714564800000000000,
            "ModifyTime": 1714564800000000000
        }"#,
        )
        .unwrap()
    }

    #[test]
    fn evaluation_round_trips_nomad_json() {
        let nomad = nomad_eval();
        let eval: Evaluation = serde_json::from_value(nomad.clone()).unwrap();
        assert_eq!(eval.status, EvalStatus::Blocked);
        assert_eq!(eval.triggered_by, TriggeredBy::JobRegister);
        assert!(eval.wait_until.is_zero());
        let failed = &eval.failed_tg_allocs["cache"];
        assert_eq!(failed.dimension_exhausted["memory"], 2);
        assert_eq!(failed.resources_exhausted["redis"].memory_mb, 4096);
        assert_eq!(eval.queued_allocations["cache"], 3);
        assert!(eval.has_failed_allocs() && !eval.is_terminal());

        let back = serde_json::to_value(&eval).unwrap();
        assert_eq!(keys(&back), keys(&nomad));
        assert_eq!(back["WaitUntil"], nomad["WaitUntil"]);
        assert_eq!(back["TriggeredBy"], "job-register");
        assert_eq!(
            keys(&back["FailedTGAllocs"]["cache"]),
            keys(&nomad["FailedTGAllocs"]["cache"])
        );
        let exhausted = &back["FailedTGAllocs"]["cache"]["ResourcesExhausted"]["redis"];
        assert_eq!(
            keys(exhausted),
            keys(&nomad["FailedTGAllocs"]["cache"]["ResourcesExhausted"]["redis"])
        );
        assert_eq!(exhausted["MemoryMB"], 4096);
        // Go's nil slices arrive as null; Caravan writes them as [].
        assert_eq!(exhausted["Networks"], json!([]));
        assert_eq!(back["RelatedEvals"], json!([]));
    }

    #[test]
    fn triggers_round_trip_and_keep_unknown_strings() {
        let wire: Vec<&str> = TriggeredBy::KNOWN.iter().map(|(_, s)| *s).collect();
        for s in [
            "job-register",
            "job-deregister",
            "periodic-job",
            "node-drain",
            "node-update",
            "alloc-stop",
            "scheduled",
            "rolling-update",
            "deployment-watcher",
            "failed-follow-up",
            "max-plan-attempts",
            "alloc-failure",
            "queued-allocs",
            "preemption",
            "job-scaling",
            "max-disconnect-timeout",
            "reconnect",
        ] {
            assert!(wire.contains(&s), "{s}");
        }
        for (t, s) in TriggeredBy::KNOWN {
            assert_eq!(t.as_str(), *s);
            assert_eq!(serde_json::to_value(t).unwrap(), *s);
            assert_eq!(serde_json::from_value::<TriggeredBy>(json!(s)).unwrap(), *t);
            assert_eq!(t.to_string(), *s);
        }
        let new: TriggeredBy = serde_json::from_value(json!("job-teleport")).unwrap();
        assert_eq!(new, TriggeredBy::Other("job-teleport".into()));
        assert_eq!(serde_json::to_value(&new).unwrap(), "job-teleport");
    }

    #[test]
    fn status_round_trips() {
        assert_eq!(
            EvalStatus::WIRE,
            ["blocked", "pending", "complete", "failed", "canceled"]
        );
        for s in EvalStatus::ALL {
            let v = serde_json::to_value(s).unwrap();
            assert_eq!(serde_json::from_value::<EvalStatus>(v).unwrap(), *s);
        }
        assert!(EvalStatus::Canceled.is_terminal() && !EvalStatus::Blocked.is_terminal());
        assert!(serde_json::from_value::<EvalStatus>(json!("cancelled")).is_err());
    }

    #[test]
    fn stub_carries_the_short_fields() {
        let eval: Evaluation = serde_json::from_value(nomad_eval()).unwrap();
        let stub = serde_json::to_value(eval.stub()).unwrap();
        let expected = [
            "BlockedEval",
            "CreateIndex",
            "CreateTime",
            "DeploymentID",
            "ID",
            "JobID",
            "ModifyIndex",
            "ModifyTime",
            "Namespace",
            "NextEval",
            "NodeID",
            "PreviousEval",
            "Priority",
            "Status",
            "StatusDescription",
            "TriggeredBy",
            "Type",
            "WaitUntil",
        ];
        assert_eq!(keys(&stub), expected);
    }
}
