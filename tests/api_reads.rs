//! The read endpoints over HTTP: allocations, evaluations, nodes, deployments — shapes,
//! prefixes, namespaces, blocking queries and errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use caravan_schemas::ids::Namespace;
use serde_json::Value;
use std::time::{Duration, Instant};
use support::server::{TestServer, fixtures};

fn ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["ID"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn allocations_list_read_prefix_and_namespaces() {
    let ts = TestServer::start().await;
    let c = ts.client();
    ts.put(&fixtures::node("node-1")).await;
    ts.put(&fixtures::alloc("aaaa1111-0000", "node-1", "web"))
        .await;
    ts.put(&fixtures::alloc("aaaa2222-0000", "node-1", "web"))
        .await;
    let mut other = fixtures::alloc("bbbb1111-0000", "node-1", "api");
    other.namespace = Namespace::new("prod");
    let last = ts.put(&other).await;

    let list = c.get("/v1/allocations").await.expect(200);
    assert!(list.index.unwrap() >= last);
    let v = list.json();
    assert_eq!(ids(&v), ["aaaa1111-0000", "aaaa2222-0000"]);
    let stub = &v[0];
    assert_eq!(stub["JobID"], "web");
    assert_eq!(stub["JobType"], "service");
    assert_eq!(stub["ClientStatus"], "running");
    assert!(stub.get("Job").is_none(), "stubs do not carry the job");
    assert!(stub.get("AllocatedResources").is_none());

    let all = c
        .get("/v1/allocations?namespace=*")
        .await
        .expect(200)
        .json();
    assert_eq!(ids(&all).len(), 3);
    let prod = c
        .get("/v1/allocations?namespace=prod")
        .await
        .expect(200)
        .json();
    assert_eq!(ids(&prod), ["bbbb1111-0000"]);
    let prefixed = c
        .get("/v1/allocations?prefix=aaaa2")
        .await
        .expect(200)
        .json();
    assert_eq!(ids(&prefixed), ["aaaa2222-0000"]);

    // Full object, by ID or unique prefix, in any namespace.
    let full = c.get("/v1/allocation/aaaa1111-0000").await.expect(200);
    let a = full.json();
    assert_eq!(a["ID"], "aaaa1111-0000");
    assert_eq!(a["Job"]["ID"], "web");
    assert_eq!(full.index, a["ModifyIndex"].as_i64());
    assert_eq!(
        c.get("/v1/allocation/aaaa2").await.expect(200).json()["ID"],
        "aaaa2222-0000"
    );
    assert_eq!(
        c.get("/v1/allocation/bbbb").await.expect(200).json()["Namespace"],
        "prod"
    );

    let ambiguous = c.get("/v1/allocation/aaaa").await.expect(400);
    assert!(
        ambiguous
            .body
            .starts_with("Prefix matched multiple allocations"),
        "{}",
        ambiguous.body
    );
    assert_eq!(
        c.get("/v1/allocation/ffff").await.expect(404).body,
        "alloc not found"
    );
    c.request("DELETE", "/v1/allocations", None)
        .await
        .expect(405);
    c.request("PUT", "/v1/allocation/aaaa1111-0000", None)
        .await
        .expect(405);
}

#[tokio::test]
async fn evaluations_and_their_allocations() {
    let ts = TestServer::start().await;
    let c = ts.client();
    ts.put(&fixtures::eval("eeee0001", "web")).await;
    let mut failed = fixtures::eval("eeee0002", "api");
    failed.status = caravan_schemas::eval::EvalStatus::Failed;
    ts.put(&failed).await;
    let mut alloc = fixtures::alloc("a0000001", "node-1", "web");
    alloc.eval_id = "eeee0001".into();
    ts.put(&alloc).await;

    let v = c.get("/v1/evaluations").await.expect(200).json();
    assert_eq!(ids(&v), ["eeee0001", "eeee0002"]);
    assert_eq!(v[0]["TriggeredBy"], "job-register");
    assert_eq!(
        ids(&c
            .get("/v1/evaluations?status=failed")
            .await
            .expect(200)
            .json()),
        ["eeee0002"]
    );
    assert_eq!(
        ids(&c.get("/v1/evaluations?job=web").await.expect(200).json()),
        ["eeee0001"]
    );

    let e = c.get("/v1/evaluation/eeee0002").await.expect(200).json();
    assert_eq!(e["JobID"], "api");
    assert_eq!(e["Status"], "failed");
    assert!(
        c.get("/v1/evaluation/eeee")
            .await
            .expect(400)
            .body
            .contains("evaluations")
    );
    assert_eq!(
        c.get("/v1/evaluation/nope").await.expect(404).body,
        "eval not found"
    );

    let allocs = c
        .get("/v1/evaluation/eeee0001/allocations")
        .await
        .expect(200)
        .json();
    assert_eq!(ids(&allocs), ["a0000001"]);
    assert_eq!(
        c.get("/v1/evaluation/eeee0002/allocations")
            .await
            .expect(200)
            .json(),
        serde_json::json!([])
    );
    c.request("POST", "/v1/evaluations", Some(b"{}".to_vec()))
        .await
        .expect(405);
}

#[tokio::test]
async fn nodes_stubs_resources_full_and_allocations() {
    let ts = TestServer::start().await;
    let c = ts.client();
    let mut node = fixtures::node("1234abcd-node");
    node.node_resources = Some(Default::default());
    node.reserved_resources = Some(Default::default());
    ts.put(&node).await;
    ts.put(&fixtures::node("1299abcd-node")).await;
    ts.put(&fixtures::alloc("alloc-on-1", "1234abcd-node", "web"))
        .await;
    ts.put(&fixtures::alloc("alloc-on-2", "1299abcd-node", "web"))
        .await;

    let list = c.get("/v1/nodes").await.expect(200).json();
    assert_eq!(ids(&list), ["1234abcd-node", "1299abcd-node"]);
    assert_eq!(list[0]["Address"], "127.0.0.1");
    assert_eq!(list[0]["Status"], "ready");
    assert!(list[0].get("NodeResources").is_none());
    let with = c.get("/v1/nodes?resources=true").await.expect(200).json();
    assert!(with[0].get("NodeResources").is_some(), "{with}");
    assert!(with[0].get("ReservedResources").is_some());
    assert_eq!(
        ids(&c.get("/v1/nodes?prefix=1234").await.expect(200).json()),
        ["1234abcd-node"]
    );

    let full = c.get("/v1/node/1234").await.expect(200).json();
    assert_eq!(full["ID"], "1234abcd-node");
    assert_eq!(full["SecretID"], "", "the secret is never returned");
    assert!(
        c.get("/v1/node/12")
            .await
            .expect(400)
            .body
            .starts_with("Prefix matched multiple nodes")
    );
    assert_eq!(
        c.get("/v1/node/9999").await.expect(404).body,
        "node not found"
    );

    let allocs = c
        .get("/v1/node/1234abcd-node/allocations")
        .await
        .expect(200)
        .json();
    assert_eq!(ids(&allocs), ["alloc-on-1"]);
    assert_eq!(allocs[0]["Job"]["ID"], "web", "full allocations");
    c.get("/v1/node/nope/allocations").await.expect(404);
    c.request("DELETE", "/v1/node/1234abcd-node", None)
        .await
        .expect(405);
}

#[tokio::test]
async fn deployments_and_a_jobs_latest_deployment() {
    let ts = TestServer::start().await;
    let c = ts.client();
    // No deployment yet: null.
    let none = c.get("/v1/job/web/deployment").await.expect(200);
    assert_eq!(none.json(), Value::Null);

    ts.put(&fixtures::deployment("dddd0001", "web", 0)).await;
    ts.put(&fixtures::deployment("dddd0002", "web", 1)).await;
    ts.put(&fixtures::deployment("eeee0001", "api", 0)).await;
    let mut alloc = fixtures::alloc("alloc-d2", "n1", "web");
    alloc.deployment_id = "dddd0002".into();
    ts.put(&alloc).await;

    assert_eq!(
        ids(&c.get("/v1/deployments").await.expect(200).json()),
        ["dddd0001", "dddd0002", "eeee0001"]
    );
    assert_eq!(
        ids(&c
            .get("/v1/deployments?prefix=dddd")
            .await
            .expect(200)
            .json()),
        ["dddd0001", "dddd0002"]
    );
    let d = c.get("/v1/deployment/eeee").await.expect(200).json();
    assert_eq!(d["JobID"], "api");
    assert_eq!(d["StatusDescription"], "Deployment is running");
    assert!(
        c.get("/v1/deployment/dddd")
            .await
            .expect(400)
            .body
            .contains("multiple deployments")
    );
    assert_eq!(
        c.get("/v1/deployment/zzzz").await.expect(404).body,
        "deployment not found"
    );
    assert_eq!(
        ids(&c
            .get("/v1/deployment/allocations/dddd0002")
            .await
            .expect(200)
            .json()),
        ["alloc-d2"]
    );

    let for_job = c.get("/v1/job/web/deployments").await.expect(200).json();
    assert_eq!(for_job.as_array().unwrap().len(), 2);
    assert_eq!(for_job[0]["ID"], "dddd0002", "newest first");
    assert_eq!(
        c.get("/v1/job/web/deployment").await.expect(200).json()["ID"],
        "dddd0002"
    );
    c.request("POST", "/v1/deployments", Some(b"{}".to_vec()))
        .await
        .expect(405);
}

#[tokio::test]
async fn blocking_queries_return_on_change_and_time_out_otherwise() {
    let ts = TestServer::start().await;
    let c = ts.client();
    ts.put(&fixtures::alloc("block-1", "n1", "web")).await;
    let first = c.get("/v1/allocations").await.expect(200);
    let index = first.index.unwrap();

    // Nothing changes: the query waits for `wait`, then answers with the same index.
    let started = Instant::now();
    let idle = c
        .get(&format!("/v1/allocations?index={index}&wait=300ms"))
        .await
        .expect(200);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(idle.index, Some(index));

    // A write during the wait ends it early.
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = c
                .get(&format!("/v1/allocations?index={index}&wait=30s"))
                .await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await; // let the query start waiting
    let rev = ts.put(&fixtures::alloc("block-2", "n1", "web")).await;
    let (resp, took) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    let resp = resp.expect(200);
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(resp.index.unwrap() >= rev);
    assert_eq!(ids(&resp.json()), ["block-1", "block-2"]);

    // A single object's query ignores changes to other objects of its kind.
    let one = c.get("/v1/allocation/block-1").await.expect(200);
    let one_index = one.index.unwrap();
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get(&format!("/v1/allocation/block-1?index={one_index}&wait=1s"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    ts.put(&fixtures::alloc("block-3", "n1", "web")).await;
    let started = Instant::now();
    let same = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .expect(200);
    assert_eq!(
        same.index,
        Some(one_index),
        "another allocation's change does not end the wait"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // Bad indexes and waits are 400s.
    assert!(
        c.get("/v1/allocations?index=abc")
            .await
            .expect(400)
            .body
            .contains("Invalid index")
    );
    c.get("/v1/nodes?index=1&wait=forever").await.expect(400);
}
