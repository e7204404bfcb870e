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
}
