//! The job controller end to end, on a real server and store, with simulated nodes written
//! straight to the store: placement, bin packing, blocked jobs placed when capacity appears,
//! and system jobs following nodes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use caravan::server::writes_nodes::HeartbeatConfig;
use caravan::server::{
    Identity, Options, Server, deployment_controller, job_controller, node_controller,
};
use caravan::store::{self, StoreSpec};
use caravan_schemas::alloc::Allocation;
use caravan_schemas::eval::EvalStatus;
use caravan_schemas::ids::NodeId;
use caravan_schemas::node::{DriverInfo, Node, NodeStatus};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::client::Client;
use support::eventually;

struct Cluster {
    server: Arc<Server>,
    client: Client,
    /// Nodes that heartbeat, as a simulated agent would.
    beating: Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreSpec::embedded(dir.path())).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let identity = Identity {
        name: "s1".into(),
        region: "global".into(),
        datacenter: "dc1".into(),
        advertise: addr.clone(),
    };
    // Short heartbeats, so a silent node goes down within seconds.
    let heartbeat = HeartbeatConfig {
        ttl: Duration::from_millis(700),
        grace: Duration::from_millis(700),
    };
    let server = Server::start_with(
        Arc::clone(&store),
        identity,
        Options {
            heartbeat,
            ..Options::default()
        },
    )
    .await;
    let leadership = server.start_membership();
    job_controller::start(Arc::clone(&server), leadership.is_leader.clone());
    node_controller::start(Arc::clone(&server), leadership.is_leader.clone());
    deployment_controller::start(Arc::clone(&server), leadership.is_leader.clone());
    tokio::spawn(caravan::api::serve(
        Arc::clone(&server),
        listener,
        std::future::pending(),
    ));
    let mut leading = leadership.is_leader;
    tokio::time::timeout(Duration::from_secs(10), leading.wait_for(|l| *l))
        .await
        .unwrap()
        .unwrap();
    let client = Client::new(&format!("http://{addr}"));
    let beating: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    {
        let (client, beating) = (client.clone(), Arc::clone(&beating));
        tokio::spawn(async move {
            loop {
                let ids = beating.lock().unwrap().clone();
                for id in ids {
                    client
                        .put(&format!("/v1/client/node/{id}/heartbeat"), &json!({}))
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        });
    }
    Cluster {
        server,
        client,
        beating,
        _dir: dir,
    }
}

fn node(id: &str, cpu: i64, memory_mb: i64) -> Node {
    let mut n = Node {
        id: NodeId::new(id),
        name: format!("node-{id}"),
        datacenter: "dc1".into(),
        node_pool: "default".into(),
        status: NodeStatus::Ready,
        ..Node::default()
    };
    let mut res = caravan_schemas::resources::NodeResources::default();
    res.cpu.cpu_shares = cpu;
    res.memory.memory_mb = memory_mb;
    res.disk.disk_mb = 100_000;
    n.node_resources = Some(res);
    n.attributes.insert("kernel.name".into(), "linux".into());
    n.attributes
        .insert("unique.network.ip-address".into(), "127.0.0.1".into());
    n.drivers.insert(
        "raw_exec".into(),
        DriverInfo {
            detected: true,
            healthy: true,
            ..DriverInfo::default()
        },
    );
    n
}

impl Cluster {
    /// Registers a node through the agents' endpoint and keeps it heartbeating.
    async fn add_node(&self, n: &Node) {
        self.client
            .post("/v1/client/node/register", &json!({ "Node": n }))
            .await
            .expect(200);
        self.beating.lock().unwrap().push(n.id.to_string());
    }

    /// The node stops heartbeating, as if its agent died.
    fn silence(&self, id: &str) {
        self.beating.lock().unwrap().retain(|n| n != id);
    }

    async fn run(&self, job: Value) -> Value {
        self.client
            .post("/v1/jobs", &json!({ "Job": job }))
            .await
            .expect(200)
            .json()
    }

    fn allocs(&self, job: &str) -> Vec<Arc<Allocation>> {
        self.server
            .cache
            .allocs
            .snapshot()
            .objects
            .values()
            .filter(|a| a.job_id.as_str() == job && a.desired_status.to_string() == "run")
            .cloned()
            .collect()
    }

    async fn wait_allocs(&self, job: &str, n: usize) -> Vec<Arc<Allocation>> {
        eventually(
            Duration::from_secs(10),
            &format!("{n} allocations of {job}"),
            || async { self.allocs(job).len() == n },
        )
        .await;
        self.allocs(job)
    }
}

fn job(id: &str, kind: &str, count: i64, cpu: i64, memory: i64) -> Value {
    json!({
        "ID": id, "Type": kind, "Datacenters": ["dc1"],
        "TaskGroups": [{
            "Name": "g", "Count": count,
            "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"},
                       "Resources": {"CPU": cpu, "MemoryMB": memory}}]
        }]
    })
}

#[tokio::test]
async fn a_registered_job_is_placed_and_its_evaluation_completes() {
    let c = cluster().await;
    c.add_node(&node("n1", 4000, 4096)).await;
    let resp = c.run(job("web", "service", 3, 100, 128)).await;
    let allocs = c.wait_allocs("web", 3).await;
    let mut names: Vec<_> = allocs.iter().map(|a| a.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["web.g[0]", "web.g[1]", "web.g[2]"]);
    assert!(allocs.iter().all(|a| a.node_id.as_str() == "n1"));
    let eval_id = resp["EvalID"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(5),
        "the evaluation completes",
        || async {
            c.client
                .get(&format!("/v1/evaluation/{eval_id}"))
                .await
                .json()["Status"]
                == "complete"
        },
    )
    .await;
    // Scaling down stops the highest indexes.
    c.run(job("web", "service", 1, 100, 128)).await;
    let left = c.wait_allocs("web", 1).await;
    assert_eq!(left[0].name, "web.g[0]");
}

#[tokio::test]
async fn bin_packing_fills_a_node_before_using_the_next() {
    let c = cluster().await;
    for id in ["a", "b"] {
        c.add_node(&node(id, 4000, 4096)).await;
    }
    // Different jobs (no anti-affinity between them): each lands on the fuller node.
    let mut nodes = Vec::new();
    for i in 0..4 {
        let id = format!("j{i}");
        c.run(job(&id, "service", 1, 900, 900)).await;
        nodes.push(c.wait_allocs(&id, 1).await[0].node_id.clone());
    }
    assert!(
        nodes.iter().all(|n| *n == nodes[0]),
        "expected one node filled first, got {nodes:?}"
    );
    // The fifth does not fit there any more and goes to the other node.
    c.run(job("j4", "service", 1, 900, 900)).await;
    let fifth = c.wait_allocs("j4", 1).await[0].node_id.clone();
    assert_ne!(fifth, nodes[0]);
}

#[tokio::test]
async fn a_job_that_does_not_fit_is_blocked_with_a_reason_and_placed_when_a_node_joins() {
    let c = cluster().await;
    c.add_node(&node("small", 1000, 256)).await;
    c.run(job("big", "service", 1, 500, 2048)).await;
    eventually(Duration::from_secs(10), "a blocked evaluation", || async {
        let evals = c.client.get("/v1/job/big/evaluations").await.json();
        evals
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["Status"] == "blocked")
    })
    .await;
    let evals = c.client.get("/v1/job/big/evaluations").await.json();
    let completed = evals
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Status"] == "complete")
        .unwrap();
    let metric = &completed["FailedTGAllocs"]["g"];
    assert_eq!(metric["DimensionExhausted"]["memory"], 1, "{metric}");
    assert_eq!(completed["QueuedAllocations"]["g"], 1);
    assert!(c.allocs("big").is_empty());

    c.add_node(&node("large", 4000, 8192)).await;
    let placed = c.wait_allocs("big", 1).await;
    assert_eq!(placed[0].node_id.as_str(), "large");
    eventually(
        Duration::from_secs(5),
        "the blocked evaluation completes",
        || async {
            let evals = c.server.cache.evals.snapshot();
            evals
                .objects
                .values()
                .filter(|e| e.job_id.as_str() == "big")
                .all(|e| e.status == EvalStatus::Complete)
        },
    )
    .await;
}

#[tokio::test]
async fn a_system_job_lands_on_every_node_including_one_that_joins() {
    let c = cluster().await;
    c.add_node(&node("n1", 2000, 2048)).await;
    c.add_node(&node("n2", 2000, 2048)).await;
    c.run(job("agent", "system", 1, 100, 64)).await;
    c.wait_allocs("agent", 2).await;
    c.add_node(&node("n3", 2000, 2048)).await;
    let allocs = c.wait_allocs("agent", 3).await;
    let mut on: Vec<_> = allocs.iter().map(|a| a.node_id.to_string()).collect();
    on.sort();
    assert_eq!(on, ["n1", "n2", "n3"]);
}

#[tokio::test]
async fn stopping_a_job_stops_its_allocations() {
    let c = cluster().await;
    c.add_node(&node("n1", 4000, 4096)).await;
    c.run(job("gone", "service", 2, 100, 64)).await;
    c.wait_allocs("gone", 2).await;
    c.client.delete("/v1/job/gone").await.expect(200);
    c.wait_allocs("gone", 0).await;
    eventually(Duration::from_secs(5), "the job is dead", || async {
        c.client.get("/v1/job/gone").await.json()["Status"] == "dead"
    })
    .await;
}

#[tokio::test]
async fn a_node_that_stops_heartbeating_loses_its_allocations_and_they_come_back_elsewhere() {
    let c = cluster().await;
    for id in ["a", "b"] {
        c.add_node(&node(id, 4000, 4096)).await;
    }
    c.run(job("web", "service", 4, 500, 256)).await;
    let placed = c.wait_allocs("web", 4).await;
    let on_a: Vec<String> = placed
        .iter()
        .filter(|a| a.node_id.as_str() == "a")
        .map(|a| a.id.to_string())
        .collect();
    assert!(
        !on_a.is_empty(),
        "anti-affinity spreads the group over both nodes"
    );

    c.silence("a");
    eventually(Duration::from_secs(15), "node a is down", || async {
        c.client.get("/v1/node/a").await.json()["Status"] == "down"
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "a's allocations are lost and replaced on b",
        || async {
            let snap = c.server.cache.allocs.snapshot();
            let lost = on_a.iter().all(|id| {
                snap.objects
                    .values()
                    .any(|a| a.id.as_str() == id && a.client_status.to_string() == "lost")
            });
            let live: Vec<_> = c.allocs("web");
            lost && live.len() == 4 && live.iter().all(|a| a.node_id.as_str() == "b")
        },
    )
    .await;
}

/// A node with attributes and meta for constraint tests.
fn labelled(id: &str, attrs: &[(&str, &str)], meta: &[(&str, &str)]) -> Node {
    let mut n = node(id, 4000, 4096);
    for (k, v) in attrs {
        n.attributes.insert((*k).into(), (*v).into());
    }
    for (k, v) in meta {
        n.meta.insert((*k).into(), (*v).into());
    }
    n
}

fn constrained(id: &str, count: i64, constraint: Value) -> Value {
    let mut j = job(id, "service", count, 100, 64);
    j["Constraints"] = json!([constraint]);
    j
}

#[tokio::test]
async fn placement_honours_every_constraint_operator() {
    let c = cluster().await;
    c.add_node(&labelled(
        "n1",
        &[
            ("os.name", "ubuntu"),
            ("os.version", "22.04"),
            ("driver.docker.version", "24.0.5"),
            ("cpu.numcores", "8"),
            ("unique.features", "avx,sse4,aes"),
        ],
        &[("rack", "r1"), ("tier", "gold")],
    ))
    .await;
    c.add_node(&labelled(
        "n2",
        &[
            ("os.name", "debian"),
            ("os.version", "12"),
            ("driver.docker.version", "20.10.2"),
            ("cpu.numcores", "2"),
            ("unique.features", "sse4"),
        ],
        &[("rack", "r2")],
    ))
    .await;
    c.add_node(&labelled(
        "n3",
        &[
            ("os.name", "debian"),
            ("os.version", "11"),
            ("driver.docker.version", "1.13.1"),
            ("cpu.numcores", "4"),
            ("unique.features", "aes,sse4"),
        ],
        &[("rack", "r2")],
    ))
    .await;

    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "eq",
            json!({"LTarget": "${attr.os.name}", "Operand": "=", "RTarget": "ubuntu"}),
            &["n1"],
        ),
        (
            "ne",
            json!({"LTarget": "${attr.os.name}", "Operand": "!=", "RTarget": "ubuntu"}),
            &["n2", "n3"],
        ),
        (
            "gt",
            json!({"LTarget": "${attr.cpu.numcores}", "Operand": ">", "RTarget": "2"}),
            &["n1", "n3"],
        ),
        (
            "ge",
            json!({"LTarget": "${attr.cpu.numcores}", "Operand": ">=", "RTarget": "4"}),
            &["n1", "n3"],
        ),
        (
            "lt",
            json!({"LTarget": "${attr.cpu.numcores}", "Operand": "<", "RTarget": "4"}),
            &["n2"],
        ),
        (
            "le",
            json!({"LTarget": "${attr.cpu.numcores}", "Operand": "<=", "RTarget": "4"}),
            &["n2", "n3"],
        ),
        (
            "regexp",
            json!({"LTarget": "${attr.os.name}", "Operand": "regexp", "RTarget": "^deb"}),
            &["n2", "n3"],
        ),
        (
            "version",
            json!({"LTarget": "${attr.driver.docker.version}", "Operand": "version", "RTarget": ">= 20.0, < 25.0"}),
            &["n1", "n2"],
        ),
        (
            "semver",
            json!({"LTarget": "${attr.driver.docker.version}", "Operand": "semver", "RTarget": "< 2.0.0"}),
            &["n3"],
        ),
        (
            "set_contains",
            json!({"LTarget": "${attr.unique.features}", "Operand": "set_contains", "RTarget": "aes"}),
            &["n1", "n3"],
        ),
        (
            "set_contains_all",
            json!({"LTarget": "${attr.unique.features}", "Operand": "set_contains_all", "RTarget": "aes,avx"}),
            &["n1"],
        ),
        (
            "set_contains_any",
            json!({"LTarget": "${attr.unique.features}", "Operand": "set_contains_any", "RTarget": "avx,sse4"}),
            &["n1", "n2", "n3"],
        ),
        (
            "is_set",
            json!({"LTarget": "${meta.tier}", "Operand": "is_set"}),
            &["n1"],
        ),
        (
            "is_not_set",
            json!({"LTarget": "${meta.tier}", "Operand": "is_not_set"}),
            &["n2", "n3"],
        ),
    ];
    for (name, constraint, allowed) in &cases {
        c.run(constrained(name, 4, constraint.clone())).await;
        let allocs = c.wait_allocs(name, 4).await;
        for a in &allocs {
            assert!(
                allowed.contains(&a.node_id.as_str()),
                "{name}: placed on {} (allowed {allowed:?})",
                a.node_id
            );
        }
    }

    // distinct_hosts: one per node, the fourth cannot be placed.
    c.run(constrained(
        "hosts",
        4,
        json!({"Operand": "distinct_hosts"}),
    ))
    .await;
    let allocs = c.wait_allocs("hosts", 3).await;
    let mut on: Vec<_> = allocs.iter().map(|a| a.node_id.to_string()).collect();
    on.sort();
    assert_eq!(on, ["n1", "n2", "n3"]);
    eventually(
        Duration::from_secs(5),
        "the fourth is blocked by distinct_hosts",
        || async {
            let evals = c.client.get("/v1/job/hosts/evaluations").await.json();
            evals
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["Status"] == "blocked")
        },
    )
    .await;

    // distinct_property: at most one per rack value.
    c.run(constrained(
        "racks",
        3,
        json!({"LTarget": "${meta.rack}", "Operand": "distinct_property"}),
    ))
    .await;
    let allocs = c.wait_allocs("racks", 2).await;
    let racks: std::collections::BTreeSet<_> = allocs
        .iter()
        .map(|a| {
            if a.node_id.as_str() == "n1" {
                "r1"
            } else {
                "r2"
            }
        })
        .collect();
    assert_eq!(racks.len(), 2, "one allocation per rack");
    assert_eq!(c.allocs("racks").len(), 2);
}

#[tokio::test]
async fn draining_a_node_moves_its_allocations_away() {
    let c = cluster().await;
    c.add_node(&node("a", 4000, 4096)).await;
    c.run(job("web", "service", 2, 100, 64)).await;
    c.wait_allocs("web", 2).await;
    c.add_node(&node("b", 4000, 4096)).await;
    // Mark the allocations running and healthy, as an agent would, so migrations proceed.
    for a in c.allocs("web") {
        let update = json!({"Allocs": [{"ID": a.id, "ClientStatus": "running", "DeploymentStatus": {"Healthy": true}}]});
        c.client
            .post("/v1/client/allocations/update", &update)
            .await
            .expect(200);
    }
    c.client
        .post("/v1/node/a/drain", &json!({"NodeID": "a", "DrainSpec": {"Deadline": 60_000_000_000i64, "IgnoreSystemJobs": false}}))
        .await
        .expect(200);
    eventually(Duration::from_secs(20), "both allocations moved to b", || async {
        let live = c.allocs("web");
        // Replacements come up pending; report them healthy so the next one may move.
        for a in &live {
            if a.node_id.as_str() == "b" && a.client_status.to_string() == "pending" {
                let update = json!({"Allocs": [{"ID": a.id, "ClientStatus": "running", "DeploymentStatus": {"Healthy": true}}]});
                c.client.post("/v1/client/allocations/update", &update).await;
            }
        }
        live.len() == 2 && live.iter().all(|a| a.node_id.as_str() == "b")
    })
    .await;
    eventually(Duration::from_secs(15), "the drain completes", || async {
        c.client.get("/v1/node/a").await.json()["DrainStrategy"].is_null()
    })
    .await;
}

#[tokio::test]
async fn versions_come_with_diffs_when_asked() {
    let c = cluster().await;
    c.run(job("v", "service", 1, 100, 64)).await;
    c.run(job("v", "service", 3, 100, 64)).await;
    let plain = c.client.get("/v1/job/v/versions").await.json();
    assert_eq!(plain["Versions"].as_array().unwrap().len(), 2);
    assert!(plain["Diffs"].is_null());
    let with = c.client.get("/v1/job/v/versions?diffs=true").await.json();
    let diffs = with["Diffs"].as_array().unwrap();
    assert_eq!(diffs.len(), 1);
    let count = &diffs[0]["TaskGroups"][0]["Fields"];
    assert!(
        count
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["Name"] == "Count" && f["Old"] == "1" && f["New"] == "3"),
        "{}",
        diffs[0]
    );
}
