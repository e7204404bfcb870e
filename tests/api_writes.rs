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
