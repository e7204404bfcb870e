//! Nomad's HTTP conventions over a real server: case-insensitive request keys, errors and their
//! statuses, body limits, metrics, and the agent/status endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::server::{TestServer, fixtures};

#[tokio::test]
async fn lowercase_and_pascal_case_bodies_register_the_same_job() {
    let ts = TestServer::start().await;
    let c = ts.client();
    // As a client with Go-style lax keys sends it: every key lowercased, except data.
    let lower = json!({
        "job": {
            "id": "lower",
            "name": "lower",
            "type": "service",
            "datacenters": ["dc1"],
            "meta": {"Owner": "team-a"},
            "taskgroups": [{
                "name": "web",
                "count": 2,
                "tasks": [{
                    "name": "server",
                    "driver": "raw_exec",
                    "config": {"command": "/bin/sleep", "args": ["60"]},
                    "env": {"Mixed_Case": "1"},
                    "resources": {"cpu": 200, "memorymb": 128}
                }]
            }]
        },
        "enforceindex": false
    });
    let r = c.post("/v1/jobs", &lower).await.expect(200).json();
    assert!(r["EvalID"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    let job = c.get("/v1/job/lower").await.expect(200).json();
    assert_eq!(job["ID"], "lower");
    assert_eq!(job["TaskGroups"][0]["Count"], 2);
    let task = &job["TaskGroups"][0]["Tasks"][0];
    assert_eq!(task["Driver"], "raw_exec");
    assert_eq!(
        task["Config"],
        json!({"command": "/bin/sleep", "args": ["60"]}),
        "driver config keys are data"
    );
    assert_eq!(task["Env"], json!({"Mixed_Case": "1"}));
    assert_eq!(task["Resources"]["CPU"], 200);
    assert_eq!(task["Resources"]["MemoryMB"], 128);
    assert_eq!(job["Meta"], json!({"Owner": "team-a"}));

    // python-nomad sends PascalCase.
    let r = c
        .post(
            "/v1/job/pascal",
            &json!({"Job": fixtures::job_json("pascal")}),
        )
        .await
        .expect(200)
        .json();
    assert!(r["JobModifyIndex"].as_i64().unwrap() > 0);
    assert_eq!(
        c.get("/v1/job/pascal").await.expect(200).json()["TaskGroups"][0]["Name"],
        "web"
    );

    // Mixed casing on other endpoints too.
    ts.put(&fixtures::node("case-node")).await;
    c.post(
        "/v1/node/case-node/eligibility",
        &json!({"nodeid": "case-node", "ELIGIBILITY": "ineligible"}),
    )
    .await
    .expect(200);
    assert_eq!(
        c.get("/v1/node/case-node").await.expect(200).json()["SchedulingEligibility"],
        "ineligible"
    );
}

#[tokio::test]
async fn errors_have_nomads_statuses() {
    let ts = TestServer::start().await;
    let c = ts.client();
    let empty = c.request("POST", "/v1/jobs", None).await.expect(400);
    assert!(
        empty.body.contains("Request body is empty"),
        "{}",
        empty.body
    );
    assert!(empty.content_type.starts_with("text/plain"));
    c.request("POST", "/v1/jobs", Some(b"   ".to_vec()))
        .await
        .expect(400);
    let bad = c
        .request("POST", "/v1/jobs", Some(b"{not json".to_vec()))
        .await
        .expect(400);
    assert!(
        bad.body.starts_with("Failed to decode request body"),
        "{}",
        bad.body
    );
    let wrong_type = c
        .post("/v1/jobs", &json!({"Job": {"ID": 5}}))
        .await
        .expect(400);
    assert!(
        wrong_type.body.contains("Job.ID"),
        "the path of the bad value: {}",
        wrong_type.body
    );
    c.get("/v1/job/none").await.expect(404);
    c.get("/v1/nonsense").await.expect(404);
    c.get("/nonsense").await.expect(404);
    c.request("PATCH", "/v1/jobs", None).await.expect(405);
    c.request("DELETE", "/v1/status/leader", None)
        .await
        .expect(405);
    c.get("/v1/jobs?index=-x").await.expect(400);

    // Larger than 16 MiB.
    let big = vec![b' '; (16 << 20) + 1024];
    let too_large = c.request("POST", "/v1/jobs", Some(big)).await;
    assert_eq!(too_large.status, 413, "{}", too_large.body);
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let ts = TestServer::start().await;
    let c = ts.client();
    c.get("/v1/job/secret-id-123").await.expect(404);
    c.get("/v1/jobs").await.expect(200);
    c.get("/v1/jobs").await.expect(200);

    let text = c.get("/metrics").await.expect(200);
    assert!(
        text.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        text.content_type
    );
    assert!(
        text.body.contains(
            r#"caravan_http_requests_total{method="GET",route="/v1/jobs",status="200"} 2"#
        ),
        "{}",
        text.body
    );
    assert!(text.body.contains(r#"route="/v1/job/:id",status="404""#));
    assert!(
        !text.body.contains("secret-id-123"),
        "raw ids never become labels"
    );
    assert!(
        text.body
            .contains("caravan_http_request_duration_seconds_bucket")
    );
    let same = c.get("/v1/metrics?format=prometheus").await.expect(200);
    assert!(same.body.contains("caravan_http_requests_total"));

    let json = c.get("/v1/metrics").await.expect(200).json();
    assert!(json["Timestamp"].as_str().unwrap().ends_with("+0000 UTC"));
    assert!(json["Gauges"].is_array());
    let counters = json["Counters"].as_array().unwrap();
    let jobs = counters
        .iter()
        .find(|c| c["Name"] == "caravan_http_requests" && c["Labels"]["route"] == "/v1/jobs")
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(jobs["Count"], 2);
    assert_eq!(jobs["Labels"]["method"], "GET");
    let samples = json["Samples"].as_array().unwrap();
    assert!(
        samples
            .iter()
            .any(|s| s["Name"] == "caravan_http_request_duration_seconds")
    );
    c.post("/v1/metrics", &json!({})).await.expect(405);
}

#[tokio::test]
async fn agent_and_status_endpoints() {
    let ts = TestServer::start().await;
    let c = ts.client();

    assert_eq!(
        c.get("/v1/status/leader").await.expect(200).json(),
        Value::String(ts.addr.clone())
    );
    assert_eq!(
        c.get("/v1/status/peers").await.expect(200).json(),
        json!([ts.addr])
    );
    assert_eq!(
        c.get("/v1/regions").await.expect(200).json(),
        json!(["global"])
    );

    let members = c.get("/v1/agent/members").await.expect(200).json();
    assert_eq!(members["ServerName"], "test.global");
    assert_eq!(members["ServerRegion"], "global");
    assert_eq!(members["ServerDC"], "dc1");
    let list = members["Members"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["Name"], "test.global");
    assert_eq!(list[0]["Status"], "alive");
    assert_eq!(
        format!("{}:{}", list[0]["Addr"].as_str().unwrap(), list[0]["Port"]),
        ts.addr
    );
    assert_eq!(list[0]["Tags"]["region"], "global");

    let me = c.get("/v1/agent/self").await.expect(200).json();
    assert_eq!(me["config"]["Region"], "global");
    assert_eq!(me["config"]["Server"]["Enabled"], true);
    assert_eq!(me["config"]["Store"]["Kind"], "embedded");
    assert_eq!(me["member"]["Name"], "test.global");
    assert_eq!(me["stats"]["nomad"]["leader"], "true");
    assert_eq!(me["stats"]["nomad"]["server"], "true");

    let health = c.get("/v1/agent/health").await.expect(200).json();
    assert_eq!(health, json!({"server": {"ok": true, "message": "ok"}}));
}
