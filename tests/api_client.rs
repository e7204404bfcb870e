//! The node agents' endpoints over HTTP: register → heartbeat → long-poll allocations, and
//! batched allocation status updates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use async_trait::async_trait;
use caravan::server::writes_nodes::HeartbeatRecord;
use caravan::store::{
    LeaseId, Range, Revision, Store, StoreError, StoreKind, Txn, TxnResponse, WatchStream,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::eventually;
use support::server::{TestServer, fixtures};

fn node_body(id: &str) -> Value {
    json!({"Node": {
        "ID": id,
        "SecretID": format!("secret-{id}"),
        "Name": format!("client-{id}"),
        "Datacenter": "dc1",
        "HTTPAddr": "127.0.0.1:4646",
        "Attributes": {"kernel.name": "linux", "unique.hostname": "h1"},
        "Drivers": {"raw_exec": {"Detected": true, "Healthy": true}}
    }})
}

async fn heartbeat_record(
    ts: &TestServer,
    node: &str,
) -> Option<(HeartbeatRecord, Option<LeaseId>)> {
    let kv = ts
        .store
        .get(&ts.server.heartbeat_key(node))
        .await
        .unwrap()?;
    Some((serde_json::from_slice(&kv.value).unwrap(), kv.lease))
}

#[tokio::test]
async fn register_heartbeat_and_long_poll_allocations() {
    let ts = TestServer::start().await;
    let c = ts.client();

    // Register: ready, with a heartbeat key on a lease of TTL + grace.
    let reg = c
        .post("/v1/client/node/register", &node_body("n1"))
        .await
        .expect(200);
    let body = reg.json();
    assert_eq!(body["HeartbeatTTL"], 10_000_000_000_i64);
    assert_eq!(body["LeaderAddr"], ts.addr.as_str());
    assert_eq!(reg.index, body["Index"].as_i64());
    let node = c.get("/v1/node/n1").await.expect(200).json();
    assert_eq!(node["Status"], "ready");
    assert_eq!(node["SchedulingEligibility"], "eligible");
    assert_eq!(node["NodePool"], "default");
    assert_eq!(node["Events"][0]["Message"], "Node registered");
    let (record, lease) = heartbeat_record(&ts, "n1").await.expect("a heartbeat key");
    assert_eq!(lease, Some(LeaseId(record.lease_id)));
    assert_eq!(record.ttl, 20_000_000_000);

    // Operators' settings survive a re-registration.
    c.post(
        "/v1/node/n1/eligibility",
        &json!({"Eligibility": "ineligible"}),
    )
    .await
    .expect(200);
    c.post("/v1/client/node/register", &node_body("n1"))
        .await
        .expect(200);
    assert_eq!(
        c.get("/v1/node/n1").await.expect(200).json()["SchedulingEligibility"],
        "ineligible"
    );
    let mut wrong = node_body("n1");
    wrong["Node"]["SecretID"] = json!("another");
    c.post("/v1/client/node/register", &wrong).await.expect(400);

    // Heartbeats keep the same lease alive.
    let hb = c
        .put("/v1/client/node/n1/heartbeat", &json!({}))
        .await
        .expect(200)
        .json();
    assert_eq!(hb["HeartbeatTTL"], 10_000_000_000_i64);
    assert_eq!(
        heartbeat_record(&ts, "n1").await.unwrap().0.lease_id,
        record.lease_id
    );
    assert_eq!(
        c.put("/v1/client/node/ghost/heartbeat", &json!({}))
            .await
            .expect(404)
            .body,
        "node not found"
    );

    // A lost lease (and key) is re-created by the next heartbeat; a down node is ready again.
    ts.store
        .revoke_lease(LeaseId(record.lease_id))
        .await
        .unwrap();
    assert!(heartbeat_record(&ts, "n1").await.is_none());
    let mut down = fixtures::node("n1");
    down.status = caravan_schemas::node::NodeStatus::Down;
    ts.put(&down).await;
    let hb = c
        .request("PUT", "/v1/client/node/n1/heartbeat", None)
        .await
        .expect(200);
    let (again, lease) = heartbeat_record(&ts, "n1").await.expect("re-created");
    assert_ne!(again.lease_id, record.lease_id);
    assert_eq!(lease, Some(LeaseId(again.lease_id)));
    let node = c.get("/v1/node/n1").await.expect(200).json();
    assert_eq!(node["Status"], "ready");
    assert_eq!(Some(node["ModifyIndex"].as_i64().unwrap()), hb.index);

    // The node's allocations: none yet.
    let first = c.get("/v1/client/node/n1/allocations").await.expect(200);
    assert_eq!(first.json(), json!([]));
    let index = first.index.unwrap();

    // A long poll is not woken by another node's allocation...
    let poll = {
        let c = c.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (
                c.get(&format!(
                    "/v1/client/node/n1/allocations?index={index}&wait=20s"
                ))
                .await,
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    ts.put(&fixtures::alloc("other-node-alloc", "n2", "web"))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "another node's allocation must not end the poll"
    );
    // ...but is by one placed on this node (written to the store directly, as the scheduler would).
    let rev = ts.put(&fixtures::alloc("mine-1", "n1", "web")).await;
    let (resp, took) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap();
    let resp = resp.expect(200);
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(resp.index.unwrap() >= rev);
    let allocs = resp.json();
    assert_eq!(allocs.as_array().unwrap().len(), 1);
    assert_eq!(allocs[0]["ID"], "mine-1");
    assert_eq!(
        allocs[0]["Job"]["ID"], "web",
        "full allocations, with their job"
    );

    // Deleting the node's allocation wakes its poll too.
    let index = resp.index.unwrap();
    let poll = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get(&format!(
                "/v1/client/node/n1/allocations?index={index}&wait=20s"
            ))
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let key = ts
        .server
        .keys
        .key(caravan::server::objects::Kind::Alloc, "default", "mine-1");
    ts.store.delete(&key).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap()
        .expect(200);
    assert_eq!(resp.json(), json!([]));
    assert!(resp.index.unwrap() > index);

    // Timeout without change: same index back.
    let started = Instant::now();
    let idle = c
        .get(&format!(
            "/v1/client/node/n1/allocations?index={}&wait=200ms",
            resp.index.unwrap()
        ))
        .await;
    assert_eq!(idle.expect(200).index, resp.index);
    assert!(started.elapsed() >= Duration::from_millis(150));

    c.get("/v1/client/node/ghost/allocations").await.expect(404);
    c.request("DELETE", "/v1/client/node/n1/heartbeat", None)
        .await
        .expect(405);
    c.get("/v1/client/node/register").await.expect(405);
    c.request("POST", "/v1/client/node/register", None)
        .await
        .expect(400);
    c.post("/v1/client/node/register", &json!({"Node": {"ID": "x"}}))
        .await
        .expect(400);
}

#[tokio::test]
async fn heartbeat_lease_lives_for_ttl_plus_grace() {
    let ts = TestServer::start().await;
    let c = ts.client();
    c.post("/v1/client/node/register", &node_body("n-exp"))
        .await
        .expect(200);
    let (record, _) = heartbeat_record(&ts, "n-exp").await.unwrap();
    // The lease really is TTL + grace: still there well inside it.
    assert!(
        ts.store.keep_alive(LeaseId(record.lease_id)).await.unwrap() >= Duration::from_secs(19)
    );
}

/// A store whose transactions may hold only a few operations, to exercise batching.
#[derive(Debug)]
struct SmallTxns {
    inner: Arc<dyn Store>,
    max: usize,
    txns: AtomicUsize,
    fail_next: AtomicUsize,
}

#[async_trait]
impl Store for SmallTxns {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }
    fn max_txn_ops(&self) -> usize {
        self.max
    }
    async fn get(&self, key: &str) -> Result<Option<caravan::store::KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str, at: Option<Revision>) -> Result<Range, StoreError> {
        self.inner.range(prefix, at).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        if txn.op_count() > self.max {
            return Err(StoreError::TooManyOps {
                ops: txn.op_count(),
                max: self.max,
            });
        }
        if txn.success.iter().any(|op| op.is_write()) {
            self.txns.fetch_add(1, Ordering::SeqCst);
        }
        // Simulate a lost race: bump one compared key just before the transaction runs.
        if !txn.compares.is_empty() && self.fail_next.load(Ordering::SeqCst) > 0 {
            self.fail_next.fetch_sub(1, Ordering::SeqCst);
            let key = txn.compares[0].key.clone();
            if let Some(kv) = self.inner.get(&key).await? {
                let mut alloc: Value = serde_json::from_slice(&kv.value).unwrap();
                alloc["DesiredDescription"] = json!("changed by someone else");
                self.inner
                    .put(&key, serde_json::to_vec(&alloc).unwrap())
                    .await?;
            }
        }
        self.inner.txn(txn).await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, from).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke_lease(lease).await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }
}

#[tokio::test]
async fn allocation_updates_merge_client_fields_in_small_guarded_batches() {
    let small: Arc<std::sync::Mutex<Option<Arc<SmallTxns>>>> = Arc::default();
    let keep = Arc::clone(&small);
    let ts = TestServer::start_with(move |inner| {
        let s = Arc::new(SmallTxns {
            inner,
            max: 4,
            txns: AtomicUsize::new(0),
            fail_next: AtomicUsize::new(0),
        });
        *keep.lock().unwrap() = Some(Arc::clone(&s));
        s
    })
    .await;
    let small = small.lock().unwrap().clone().unwrap();
    let c = ts.client();
    ts.put(&fixtures::job("web")).await;
    for i in 0..10 {
        let mut a = fixtures::alloc(&format!("batch-{i:02}"), "n1", "web");
        a.client_status = caravan_schemas::alloc::ClientStatus::Pending;
        a.desired_description = "placed".into();
        ts.put(&a).await;
    }

    // Ten updates, four ops per transaction (2 allocations each), the first batch losing a race.
    small.fail_next.store(1, Ordering::SeqCst);
    small.txns.store(0, Ordering::SeqCst);
    let mut updates: Vec<Value> = (0..10)
        .map(|i| {
            json!({
                "ID": format!("batch-{i:02}"),
                "ClientStatus": "running",
                "ClientDescription": "Tasks are running",
                "TaskStates": {"server": {"State": "running", "Events": [{"Type": "Started", "Time": 1}]}},
                // Desired fields from a client are ignored.
                "DesiredStatus": "stop",
                "DesiredDescription": "client says",
                "DeploymentStatus": {"Healthy": true, "Canary": true}
            })
        })
        .collect();
    // One fails: an evaluation for its job, triggered by alloc-failure.
    updates[3]["ClientStatus"] = json!("failed");
    // And one unknown allocation is skipped.
    updates.push(json!({"ID": "no-such-alloc", "ClientStatus": "running"}));
    let r = c
        .post("/v1/client/allocations/update", &json!({"Allocs": updates}))
        .await
        .expect(200);
    let body = r.json();
    assert_eq!(body["Updated"], 10, "{body}");
    assert_eq!(body["UnknownAllocIDs"], json!(["no-such-alloc"]));
    assert!(
        small.txns.load(Ordering::SeqCst) >= 5,
        "batched in small transactions"
    );
    let evals: Vec<String> = body["EvalIDs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(evals.len(), 1);
    let eval = c
        .get(&format!("/v1/evaluation/{}", evals[0]))
        .await
        .expect(200)
        .json();
    assert_eq!(eval["TriggeredBy"], "alloc-failure");
    assert_eq!(eval["JobID"], "web");

    for i in 0..10 {
        let a = c
            .get(&format!("/v1/allocation/batch-{i:02}"))
            .await
            .expect(200)
            .json();
        let want = if i == 3 { "failed" } else { "running" };
        assert_eq!(a["ClientStatus"], want);
        assert_eq!(a["ClientDescription"], "Tasks are running");
        assert_eq!(a["TaskStates"]["server"]["State"], "running");
        assert_eq!(a["DesiredStatus"], "run", "desired fields are the servers'");
        assert_ne!(a["DesiredDescription"], "client says");
        assert_eq!(a["DeploymentStatus"]["Healthy"], true);
        assert_eq!(
            a["DeploymentStatus"]["Canary"], false,
            "a client cannot make itself a canary"
        );
    }
    // The allocation changed by "someone else" mid-update kept that change (recomputed, not
    // overwritten).
    let raced = c.get("/v1/allocation/batch-00").await.expect(200).json();
    assert_eq!(raced["DesiredDescription"], "changed by someone else");

    // A failed allocation reported failed again does not create another evaluation.
    let again = c
        .post(
            "/v1/client/allocations/update",
            &json!({"Allocs": [{"ID": "batch-03", "ClientStatus": "failed"}]}),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(again["EvalIDs"], json!([]));

    c.request("POST", "/v1/client/allocations/update", None)
        .await
        .expect(400);
    c.post(
        "/v1/client/allocations/update",
        &json!({"Allocs": [{"ID": "batch-01", "ClientStatus": "sleeping"}]}),
    )
    .await
    .expect(400);
    c.post("/v1/client/allocations/update", &json!({"Allocs": "nope"}))
        .await
        .expect(400);
    c.get("/v1/client/allocations/update").await.expect(405);
    eventually(Duration::from_secs(5), "metrics recorded", || {
        let c = c.clone();
        async move {
            c.get("/metrics")
                .await
                .body
                .contains("/v1/client/allocations/update")
        }
    })
    .await;
}
