//! The operators' writes over HTTP: stop an allocation, node eligibility, drain and purge.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::server::{TestServer, fixtures};

fn eval_ids(v: &Value) -> Vec<String> {
    v["EvalIDs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn stopping_an_allocation_sets_desired_stop_and_evaluates_its_job() {
    let ts = TestServer::start().await;
    let c = ts.client();
    ts.put(&fixtures::alloc("stop-me-1", "n1", "web")).await;

    let resp = c
        .post("/v1/allocation/stop-me/stop", &json!({}))
        .await
        .expect(200);
    let body = resp.json();
    let eval_id = body["EvalID"].as_str().unwrap().to_owned();
    assert_eq!(resp.index, body["Index"].as_i64());

    // Read-your-writes: the cache already shows both.
    let alloc = c.get("/v1/allocation/stop-me-1").await.expect(200).json();
    assert_eq!(alloc["DesiredStatus"], "stop");
    assert_eq!(alloc["DesiredTransition"]["Migrate"], true);
    assert_eq!(
        alloc["ClientStatus"], "running",
        "the client's fields are untouched"
    );
    let eval = c
        .get(&format!("/v1/evaluation/{eval_id}"))
        .await
        .expect(200)
        .json();
    assert_eq!(eval["TriggeredBy"], "alloc-stop");
    assert_eq!(eval["JobID"], "web");
    assert_eq!(eval["Status"], "pending");

    // An empty body is fine (Nomad sends none); unknown ids are 404; GET is 405.
    c.request("POST", "/v1/allocation/stop-me-1/stop", None)
        .await
        .expect(200);
    assert_eq!(
        c.post("/v1/allocation/nope/stop", &json!({}))
            .await
            .expect(404)
            .body,
        "alloc not found"
    );
    c.get("/v1/allocation/stop-me-1/stop").await.expect(405);
}

#[tokio::test]
async fn eligibility_toggles_and_is_refused_while_draining() {
    let ts = TestServer::start().await;
    let c = ts.client();
    ts.put(&fixtures::node("elig-node")).await;

    let r = c
        .post(
            "/v1/node/elig-node/eligibility",
            &json!({"NodeID": "elig-node", "Eligibility": "ineligible"}),
        )
        .await
        .expect(200)
        .json();
    for key in ["EvalIDs", "EvalCreateIndex", "NodeModifyIndex", "Index"] {
        assert!(r.get(key).is_some(), "{key} in {r}");
    }
    let node = c.get("/v1/node/elig-node").await.expect(200).json();
    assert_eq!(node["SchedulingEligibility"], "ineligible");
    assert_eq!(node["ModifyIndex"], r["NodeModifyIndex"]);
    assert_eq!(
        node["Events"].as_array().unwrap().last().unwrap()["Message"],
        "Node marked as ineligible for scheduling"
    );

    // Back to eligible: a system job targeting the node is evaluated.
    let mut system = fixtures::job("sys");
    system.r#type = caravan_schemas::job::JobType::System;
    ts.put(&system).await;
    let r = c
        .put(
            "/v1/node/elig-node/eligibility",
            &json!({"eligibility": "eligible"}),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(eval_ids(&r).len(), 1, "{r}");
    let eval = c
        .get(&format!("/v1/evaluation/{}", eval_ids(&r)[0]))
        .await
        .expect(200)
        .json();
    assert_eq!(eval["JobID"], "sys");
    assert_eq!(eval["TriggeredBy"], "node-update");
    assert_eq!(eval["NodeID"], "elig-node");

    c.post(
        "/v1/node/elig-node/eligibility",
        &json!({"Eligibility": "maybe"}),
    )
    .await
    .expect(400);
    c.request("POST", "/v1/node/elig-node/eligibility", None)
        .await
        .expect(400);
    c.post("/v1/node/elig-node/eligibility", &json!({"Eligibility": 3}))
        .await
        .expect(400);
    c.post(
        "/v1/node/missing/eligibility",
        &json!({"Eligibility": "eligible"}),
    )
    .await
    .expect(404);

    // Draining nodes cannot be made eligible.
    c.post(
        "/v1/node/elig-node/drain",
        &json!({"DrainSpec": {"Deadline": 0}}),
    )
    .await
    .expect(200);
    let refused = c
        .post(
            "/v1/node/elig-node/eligibility",
            &json!({"Eligibility": "eligible"}),
        )
        .await
        .expect(400);
    assert!(
        refused.body.contains("while it is draining"),
        "{}",
        refused.body
    );
}

#[tokio::test]
async fn drain_sets_a_strategy_evaluates_jobs_and_can_be_cancelled() {
    let ts = TestServer::start().await;
    let c = ts.client();
    ts.put(&fixtures::node("drain-node")).await;
    ts.put(&fixtures::job("web")).await;
    ts.put(&fixtures::alloc("drain-alloc-1", "drain-node", "web"))
        .await;
    ts.put(&fixtures::alloc("drain-alloc-2", "drain-node", "web"))
        .await;

    let hour_ns: i64 = 3_600_000_000_000;
    let r = c
        .post(
            "/v1/node/drain-node/drain",
            &json!({"NodeID": "drain-node", "DrainSpec": {"Deadline": hour_ns, "IgnoreSystemJobs": true}, "Meta": {"why": "kernel"}}),
        )
        .await
        .expect(200)
        .json();
    let evals = eval_ids(&r);
    assert_eq!(
        evals.len(),
        1,
        "one evaluation per job with allocations on the node: {r}"
    );
    assert!(r["EvalCreateIndex"].as_i64().unwrap() > 0);
    let eval = c
        .get(&format!("/v1/evaluation/{}", evals[0]))
        .await
        .expect(200)
        .json();
    assert_eq!(
        (eval["JobID"].as_str(), eval["TriggeredBy"].as_str()),
        (Some("web"), Some("node-update"))
    );

    let node = c.get("/v1/node/drain-node").await.expect(200).json();
    assert_eq!(node["Drain"], true);
    assert_eq!(node["SchedulingEligibility"], "ineligible");
    let strategy = &node["DrainStrategy"];
    assert_eq!(strategy["Deadline"], hour_ns);
    assert_eq!(strategy["IgnoreSystemJobs"], true);
    let started =
        caravan_schemas::time::Timestamp::parse(strategy["StartedAt"].as_str().unwrap()).unwrap();
    let force =
        caravan_schemas::time::Timestamp::parse(strategy["ForceDeadline"].as_str().unwrap())
            .unwrap();
    assert_eq!(
        force.since(started).unwrap().nanos(),
        hour_ns,
        "ForceDeadline = start + deadline"
    );
    assert_eq!(node["LastDrain"]["Status"], "draining");
    assert_eq!(node["LastDrain"]["Meta"]["why"], "kernel");
    let stubs = c.get("/v1/nodes").await.expect(200).json();
    assert_eq!(stubs[0]["Drain"], true);

    // A forced drain (negative deadline) has no force deadline time, as in Nomad.
    c.post(
        "/v1/node/drain-node/drain",
        &json!({"DrainSpec": {"Deadline": -1}}),
    )
    .await
    .expect(200);
    let node = c.get("/v1/node/drain-node").await.expect(200).json();
    assert_eq!(
        node["DrainStrategy"]["ForceDeadline"],
        "0001-01-01T00:00:00Z"
    );
    assert_eq!(
        node["DrainStrategy"]["StartedAt"], strategy["StartedAt"],
        "an update keeps the start time"
    );

    // null ends the drain; MarkEligible makes the node eligible again.
    c.post(
        "/v1/node/drain-node/drain",
        &json!({"DrainSpec": null, "MarkEligible": true}),
    )
    .await
    .expect(200);
    let node = c.get("/v1/node/drain-node").await.expect(200).json();
    assert_eq!(node["Drain"], false);
    assert_eq!(node["DrainStrategy"], Value::Null);
    assert_eq!(node["SchedulingEligibility"], "eligible");
    assert_eq!(node["LastDrain"]["Status"], "canceled");
    let messages: Vec<&str> = node["Events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Message"].as_str().unwrap())
        .collect();
    assert!(
        messages.contains(&"Node drain strategy set"),
        "{messages:?}"
    );
    assert!(messages.contains(&"Node drain disabled"), "{messages:?}");

    c.post(
        "/v1/node/drain-node/drain",
        &json!({"DrainSpec": {"Deadline": "soon"}}),
    )
    .await
    .expect(400);
    c.post("/v1/node/nope/drain", &json!({"DrainSpec": null}))
        .await
        .expect(404);
    c.get("/v1/node/drain-node/drain").await.expect(405);
}

#[tokio::test]
async fn purge_deletes_the_node_and_loses_its_allocations() {
    let ts = TestServer::start().await;
    let c = ts.client();
    ts.put(&fixtures::node("purge-node")).await;
    ts.put(&fixtures::alloc("purge-alloc", "purge-node", "web"))
        .await;
    let mut done = fixtures::alloc("purge-done", "purge-node", "web");
    done.client_status = caravan_schemas::alloc::ClientStatus::Complete;
    ts.put(&done).await;

    let r = c
        .post("/v1/node/purge-node/purge", &json!({}))
        .await
        .expect(200)
        .json();
    assert_eq!(eval_ids(&r).len(), 1, "{r}");
    c.get("/v1/node/purge-node").await.expect(404);
    let lost = c.get("/v1/allocation/purge-alloc").await.expect(200).json();
    assert_eq!(lost["ClientStatus"], "lost");
    assert_eq!(
        lost["ClientDescription"],
        "alloc is lost since its node is down"
    );
    assert_eq!(lost["DesiredStatus"], "run");
    let untouched = c.get("/v1/allocation/purge-done").await.expect(200).json();
    assert_eq!(untouched["ClientStatus"], "complete");
    let eval = c
        .get(&format!("/v1/evaluation/{}", eval_ids(&r)[0]))
        .await
        .expect(200)
        .json();
    assert_eq!(eval["JobID"], "web");
    assert_eq!(
        c.post("/v1/node/purge-node/purge", &json!({}))
            .await
            .expect(404)
            .body,
        "node not found"
    );
}

#[tokio::test]
async fn revert_and_stable_mark_and_restore_job_versions() {
    let ts = TestServer::start().await;
    let c = ts.client();
    c.post("/v1/jobs", &json!({ "Job": fixtures::job_json("rev") }))
        .await
        .expect(200);
    let mut v1 = fixtures::job_json("rev");
    v1["TaskGroups"][0]["Tasks"][0]["Config"]["args"] = json!(["120"]);
    c.post("/v1/jobs", &json!({ "Job": v1 })).await.expect(200);

    // Stable: the record and, for the current version, the job.
    let resp = c
        .post(
            "/v1/job/rev/stable",
            &json!({"JobID": "rev", "JobVersion": 1, "Stable": true}),
        )
        .await
        .expect(200);
    assert!(resp.json()["Index"].as_i64().unwrap() > 0);
    assert_eq!(
        c.get("/v1/job/rev").await.expect(200).json()["Stable"],
        true
    );
    let versions = c.get("/v1/job/rev/versions").await.expect(200).json();
    assert_eq!(versions["Versions"][0]["Stable"], true);
    assert_eq!(versions["Versions"][1]["Stable"], false);

    // Refusals say why.
    let c = &c;
    let refused = |body: Value, status: u16| async move {
        c.post("/v1/job/rev/revert", &body)
            .await
            .expect(status)
            .body
    };
    assert_eq!(
        refused(json!({"JobID": "rev", "JobVersion": 1}), 400).await,
        "can't revert to current version 1"
    );
    assert!(
        refused(json!({"JobID": "rev", "JobVersion": 7}), 404)
            .await
            .contains("at version 7 not found")
    );
    assert_eq!(
        refused(
            json!({"JobID": "rev", "JobVersion": 0, "EnforcePriorVersion": 0}),
            409
        )
        .await,
        "current job has version 1; enforcing version 0"
    );

    // A revert is a new version with the old spec, unstable, evaluated.
    let resp = c
        .post(
            "/v1/job/rev/revert",
            &json!({"JobID": "rev", "JobVersion": 0, "EnforcePriorVersion": 1}),
        )
        .await
        .expect(200)
        .json();
    assert!(!resp["EvalID"].as_str().unwrap().is_empty());
    let job = c.get("/v1/job/rev").await.expect(200).json();
    assert_eq!(job["Version"], 2);
    assert_eq!(job["Stable"], false);
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["Config"]["args"],
        json!(["60"])
    );
}

#[tokio::test]
async fn deployment_actions_refuse_what_cannot_be_done() {
    let ts = TestServer::start().await;
    let c = ts.client();
    c.post("/v1/jobs", &json!({ "Job": fixtures::job_json("dep") }))
        .await
        .expect(200);
    let mut done = fixtures::deployment("d-done-0001", "dep", 0);
    done.status = caravan_schemas::deployment::DeploymentStatus::Successful;
    ts.put(&done).await;
    let promote = json!({"DeploymentID": "d-done-0001", "All": true});
    assert_eq!(
        c.post("/v1/deployment/promote/d-done-0001", &promote)
            .await
            .expect(400)
            .body,
        "can't promote terminal deployment"
    );
    assert_eq!(
        c.post("/v1/deployment/fail/d-done", &json!({}))
            .await
            .expect(400)
            .body,
        "can't fail terminal deployment"
    );
    c.post("/v1/deployment/pause/nope", &json!({"Pause": true}))
        .await
        .expect(404);
    assert_eq!(
        c.post(
            "/v1/deployment/promote/d-done-0001",
            &json!({"DeploymentID": "other"})
        )
        .await
        .expect(400)
        .body,
        "Deployment ID does not match"
    );

    // A running one pauses, resumes and fails, each with an evaluation for its job.
    let running = fixtures::deployment("d-run-0002", "dep", 0);
    ts.put(&running).await;
    let paused = c
        .post("/v1/deployment/pause/d-run-0002", &json!({"Pause": true}))
        .await
        .expect(200)
        .json();
    assert!(!paused["EvalID"].as_str().unwrap().is_empty());
    let d = c.get("/v1/deployment/d-run-0002").await.expect(200).json();
    assert_eq!(d["Status"], "paused");
    c.post("/v1/deployment/pause/d-run-0002", &json!({"Pause": false}))
        .await
        .expect(200);
    c.post("/v1/deployment/fail/d-run-0002", &json!({}))
        .await
        .expect(200);
    let d = c.get("/v1/deployment/d-run-0002").await.expect(200).json();
    assert_eq!(d["Status"], "failed");
    assert_eq!(d["StatusDescription"], "Deployment marked as failed");
}
