//! Request and response bodies of the endpoints that have no type in `caravan-schemas`.

use caravan_schemas::job::Job;
use caravan_schemas::node::DrainSpec;
use caravan_schemas::plan::JobDiff;
use caravan_schemas::resources::null_as_default;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /v1/jobs`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobRegisterRequest<'a> {
    pub job: &'a Job,
    pub enforce_index: bool,
    pub job_modify_index: i64,
    pub policy_override: bool,
    pub preserve_counts: bool,
}

/// What register, deregister and scale return.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobRegisterResponse {
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub eval_create_index: i64,
    pub job_modify_index: i64,
    pub warnings: String,
    pub index: i64,
}

/// `GET /v1/job/:id/versions`: newest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobVersionsResponse {
    #[serde(deserialize_with = "null_as_default")]
    pub versions: Vec<Job>,
    /// `Diffs[i]` is the change from `Versions[i+1]` to `Versions[i]` (with `?diffs=true`).
    #[serde(deserialize_with = "null_as_default")]
    pub diffs: Vec<JobDiff>,
}

/// `POST /v1/job/:id/scale`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScalingRequest {
    pub count: Option<i64>,
    /// `{"Job": id, "Group": name}`.
    pub target: BTreeMap<String, String>,
    pub message: String,
    pub error: bool,
    pub policy_override: bool,
}

/// `POST /v1/node/:id/drain`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeDrainRequest {
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub drain_spec: Option<DrainSpec>,
    pub mark_eligible: bool,
}

/// `POST /v1/node/:id/eligibility`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeEligibilityRequest {
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// `eligible` or `ineligible`.
    pub eligibility: String,
}

/// What node drain and eligibility updates return.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeUpdateResponse {
    #[serde(rename = "EvalIDs", deserialize_with = "null_as_default")]
    pub eval_ids: Vec<String>,
    pub eval_create_index: i64,
    pub node_modify_index: i64,
    pub index: i64,
}

/// `POST /v1/deployment/promote/:id`: every group (`All`), or the named ones.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeploymentPromoteRequest {
    #[serde(rename = "DeploymentID")]
    pub deployment_id: String,
    pub all: bool,
    /// Empty with `All`.
    pub groups: Vec<String>,
}

/// `POST /v1/deployment/fail/:id`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeploymentFailRequest {
    #[serde(rename = "DeploymentID")]
    pub deployment_id: String,
}

/// `POST /v1/deployment/pause/:id`: pause (`true`) or resume (`false`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeploymentPauseRequest {
    #[serde(rename = "DeploymentID")]
    pub deployment_id: String,
    pub pause: bool,
}

/// `POST /v1/deployment/allocation-health/:id`: health decided by hand.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeploymentAllocHealthRequest {
    #[serde(rename = "DeploymentID")]
    pub deployment_id: String,
    #[serde(rename = "HealthyAllocationIDs")]
    pub healthy_allocation_ids: Vec<String>,
    #[serde(rename = "UnhealthyAllocationIDs")]
    pub unhealthy_allocation_ids: Vec<String>,
}

/// What the deployment writes (promote, fail, pause, allocation-health) return.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeploymentUpdateResponse {
    /// The evaluation the change created; empty when there is none.
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub eval_create_index: i64,
    pub deployment_modify_index: i64,
    /// Set when failing the deployment rolled the job back to this version.
    pub reverted_job_version: Option<u64>,
    pub index: i64,
}

/// `POST /v1/job/:id/revert`: register an earlier version again (answered as a register).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobRevertRequest {
    #[serde(rename = "JobID")]
    pub job_id: String,
    pub job_version: u64,
    /// Revert only if the current version is still this one.
    pub enforce_prior_version: Option<u64>,
}

/// `POST /v1/job/:id/stable`: mark a version stable or not.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobStabilityRequest {
    #[serde(rename = "JobID")]
    pub job_id: String,
    pub job_version: u64,
    pub stable: bool,
}

/// What `POST /v1/job/:id/stable` returns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobStabilityResponse {
    pub index: i64,
}

/// `GET /v1/agent/members`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentMembers {
    pub server_name: String,
    pub server_region: String,
    #[serde(rename = "ServerDC")]
    pub server_dc: String,
    #[serde(deserialize_with = "null_as_default")]
    pub members: Vec<AgentMember>,
}

/// One server in `GET /v1/agent/members`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentMember {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub status: String,
    /// `region`, `dc`, `build`, and in Nomad `raft_vsn`, `role`, …
    #[serde(deserialize_with = "null_as_default")]
    pub tags: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_read_nomad_json_with_nulls() {
        let r: JobRegisterResponse = serde_json::from_str(
            r#"{"EvalID":"e1","EvalCreateIndex":5,"JobModifyIndex":5,"Warnings":"","Index":5,"LastContact":0,"KnownLeader":true}"#,
        )
        .unwrap();
        assert_eq!((r.eval_id.as_str(), r.job_modify_index), ("e1", 5));
        let v: JobVersionsResponse =
            serde_json::from_str(r#"{"Versions":[{"ID":"x","Version":1}],"Diffs":null}"#).unwrap();
        assert_eq!(v.versions[0].version, 1);
        assert!(v.diffs.is_empty());
        let m: AgentMembers = serde_json::from_str(
            r#"{"ServerName":"a","ServerRegion":"global","ServerDC":"dc1","Members":[{"Name":"a.global","Addr":"127.0.0.1","Port":4646,"Status":"alive","Tags":{"dc":"dc1"}}]}"#,
        )
        .unwrap();
        assert_eq!(m.members[0].port, 4646);
        let n: NodeUpdateResponse =
            serde_json::from_str(r#"{"EvalIDs":null,"NodeModifyIndex":3}"#).unwrap();
        assert!(n.eval_ids.is_empty());
    }

    #[test]
    fn deployment_and_revert_requests_have_nomads_shapes() {
        use serde_json::json;
        assert_eq!(
            serde_json::to_value(DeploymentPromoteRequest {
                deployment_id: "d1".into(),
                all: false,
                groups: vec!["web".into()],
            })
            .unwrap(),
            json!({"DeploymentID": "d1", "All": false, "Groups": ["web"]})
        );
        assert_eq!(
            serde_json::to_value(DeploymentFailRequest {
                deployment_id: "d1".into()
            })
            .unwrap(),
            json!({"DeploymentID": "d1"})
        );
        assert_eq!(
            serde_json::to_value(DeploymentPauseRequest {
                deployment_id: "d1".into(),
                pause: true,
            })
            .unwrap(),
            json!({"DeploymentID": "d1", "Pause": true})
        );
        assert_eq!(
            serde_json::to_value(DeploymentAllocHealthRequest {
                deployment_id: "d1".into(),
                healthy_allocation_ids: vec!["a1".into()],
                unhealthy_allocation_ids: vec![],
            })
            .unwrap(),
            json!({"DeploymentID": "d1", "HealthyAllocationIDs": ["a1"], "UnhealthyAllocationIDs": []})
        );
        assert_eq!(
            serde_json::to_value(JobRevertRequest {
                job_id: "web".into(),
                job_version: 2,
                enforce_prior_version: None,
            })
            .unwrap(),
            json!({"JobID": "web", "JobVersion": 2, "EnforcePriorVersion": null})
        );
        assert_eq!(
            serde_json::to_value(JobStabilityRequest {
                job_id: "web".into(),
                job_version: 2,
                stable: true,
            })
            .unwrap(),
            json!({"JobID": "web", "JobVersion": 2, "Stable": true})
        );
    }

    #[test]
    fn deployment_update_responses_read_nomad_json() {
        let r: DeploymentUpdateResponse = serde_json::from_str(
            r#"{"EvalID":"e1","EvalCreateIndex":7,"DeploymentModifyIndex":8,"RevertedJobVersion":null,"Index":8}"#,
        )
        .unwrap();
        assert_eq!(r.eval_id, "e1");
        assert_eq!(r.reverted_job_version, None);
        let r: DeploymentUpdateResponse =
            serde_json::from_str(r#"{"EvalID":"","RevertedJobVersion":3,"Index":9}"#).unwrap();
        assert_eq!(r.reverted_job_version, Some(3));
        let s: JobStabilityResponse = serde_json::from_str(r#"{"Index":12}"#).unwrap();
        assert_eq!(s.index, 12);
    }
}
