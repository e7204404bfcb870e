//! The lb-config controller, TrafficSplits and the route table end to end.
//!
//! - In process, on the embedded store, with the controller running: registrations (written as
//!   the service controller writes them) and a TrafficSplit (through the API) become routes
//!   with weighted backends at `GET /v1/lb/routes`; an unhealthy instance leaves them; deleting
//!   the split returns to one backend; a blocking query wakes on a change of the table and
//!   not on other changes; the TrafficSplit API validates what it is given.
//! - With a real dev agent: `caravan apply -f manifests/demo-split.yaml`, `caravan split
//!   list|status|delete`, and the agent's own controller writing the table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli_support;

use caravan_schemas::ids::{AllocId, Namespace, ServiceId};
use caravan_schemas::service::ServiceRegistration;
use cli_support::support::eventually;
use cli_support::support::server::TestServer;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// In process.
// ---------------------------------------------------------------------------------------------

/// A server that leads, with the lb-config controller running.
async fn server() -> (TestServer, tokio::sync::watch::Sender<bool>) {
    let ts = TestServer::start().await;
    let (leading, rx) = tokio::sync::watch::channel(true);
    caravan::server::lb_controller::start(Arc::clone(&ts.server), rx);
    (ts, leading)
}

/// A healthy registration of `demo-webapp` for allocation `alloc`, as the service controller
/// writes them.
fn reg(alloc: &str, port: i32, canary: bool) -> ServiceRegistration {
    let mut tags = vec!["urlprefix-/".to_owned()];
    if canary {
        tags.push("canary".into());
    }
    ServiceRegistration {
        id: ServiceId::new(format!("_nomad-task-{alloc}-demo-demo-webapp-http")),
        service_name: "demo-webapp".into(),
        namespace: Namespace::default_ns(),
        job_id: caravan_schemas::ids::JobId::new("demo"),
        alloc_id: AllocId::new(alloc),
        tags,
        address: "127.0.0.1".into(),
        port,
        canary,
        job_version: u64::from(canary),
        healthy: Some(true),
        ..ServiceRegistration::default()
    }
}

fn split_body() -> Value {
    json!({
        "Service": "demo-webapp",
        "Splits": [
            {"Weight": 90, "Subset": {"Canary": false}},
            {"Weight": 10, "Subset": {"Canary": true}},
        ]
    })
}

async fn routes(ts: &TestServer) -> Value {
    ts.client().get("/v1/lb/routes").await.expect(200).json()
}

/// `(weight, subset, [ports])` per backend of the first route.
fn backends(table: &Value) -> Vec<(u64, String, Vec<i64>)> {
    table["Routes"][0]["Backends"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| {
                    (
                        b["Weight"].as_u64().unwrap(),
                        b["Subset"].as_str().unwrap().to_owned(),
                        b["Instances"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|i| i["Port"].as_i64().unwrap())
                            .collect(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_for_backends(ts: &TestServer, want: &[(u64, &str, &[i64])], what: &str) {
    let want: Vec<(u64, String, Vec<i64>)> = want
        .iter()
        .map(|(w, s, p)| (*w, (*s).to_owned(), p.to_vec()))
        .collect();
    eventually(WAIT, what, || {
        let want = want.clone();
        async move { backends(&routes(ts).await) == want }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_and_splits_become_weighted_backends() {
    let (ts, _leading) = server().await;
    let c = ts.client();

    // Before anything is registered: an empty table (the controller writes one).
    eventually(WAIT, "an empty route table written", || async {
        let r = c.get("/v1/lb/routes").await.expect(200);
        r.json()["ModifyIndex"].as_i64().unwrap() > 0 && r.json()["Routes"] == json!([])
    })
    .await;

    // Three instances and a canary, one of them not yet healthy.
    ts.put(&reg("a1", 21001, false)).await;
    ts.put(&reg("a2", 21002, false)).await;
    let mut undecided = reg("a3", 21003, false);
    undecided.healthy = None;
    ts.put(&undecided).await;
    ts.put(&reg("c1", 21004, true)).await;
    wait_for_backends(
        &ts,
        &[(100, "", &[21001, 21002, 21004])],
        "one backend with the healthy instances",
    )
    .await;
    let table = routes(&ts).await;
    let route = &table["Routes"][0];
    assert_eq!(route["Host"], "");
    assert_eq!(route["Prefix"], "/");
    assert_eq!(route["Service"], "demo-webapp");
    assert_eq!(route["Namespace"], "default");
    assert_eq!(route["Proto"], "http");
    let canary = &route["Backends"][0]["Instances"][2];
    assert_eq!(canary["AllocID"], "c1");
    assert_eq!(canary["Address"], "127.0.0.1");
    assert_eq!(canary["Canary"], true);
    assert_eq!(canary["JobVersion"], 1);

    // A 90/10 split by canary.
    let put = c
        .put("/v1/traffic-split/demo", &split_body())
        .await
        .expect(200);
    let index = put.json()["Index"].as_i64().unwrap();
    assert!(index > 0, "{}", put.body);
    wait_for_backends(
        &ts,
        &[
            (90, "canary=false", &[21001, 21002]),
            (10, "canary=true", &[21004]),
        ],
        "a backend per share",
    )
    .await;

    // The undecided instance turns healthy, then one turns unhealthy.
    let mut healthy = undecided.clone();
    healthy.healthy = Some(true);
    ts.put(&healthy).await;
    let mut sick = reg("a1", 21001, false);
    sick.healthy = Some(false);
    ts.put(&sick).await;
    wait_for_backends(
        &ts,
        &[
            (90, "canary=false", &[21002, 21003]),
            (10, "canary=true", &[21004]),
        ],
        "the unhealthy instance gone, the healthy one in",
    )
    .await;

    // Deleting the split: one backend again.
    let del = c.delete("/v1/traffic-split/demo").await.expect(200);
    assert!(del.json()["Index"].as_i64().unwrap() > index);
    wait_for_backends(
        &ts,
        &[(100, "", &[21002, 21003, 21004])],
        "one backend after the split is deleted",
    )
    .await;

    // The last instance going away removes the route.
    for id in ["a1", "a2", "a3", "c1"] {
        let key = ts.server.keys.key(
            caravan::server::objects::Kind::Service,
            "default",
            &format!("_nomad-task-{id}-demo-demo-webapp-http"),
        );
        ts.store.delete(&key).await.unwrap();
    }
    eventually(WAIT, "no route once no instance is left", || async {
        routes(&ts).await["Routes"] == json!([])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_on_the_routes_wakes_on_a_change_only() {
    let (ts, _leading) = server().await;
    let c = ts.client();
    ts.put(&reg("a1", 21001, false)).await;
    wait_for_backends(&ts, &[(100, "", &[21001])], "the first route").await;
    let first = c.get("/v1/lb/routes").await.expect(200);
    let index = first.index.unwrap();
    assert_eq!(first.json()["ModifyIndex"].as_i64().unwrap(), index);

    // Something that changes no route does not answer the query: it waits out its `wait`.
    let started = Instant::now();
    let waiting = tokio::spawn({
        let c = c.clone();
        async move { c.get(&format!("/v1/lb/routes?index={index}&wait=1s")).await }
    });
    let mut other = reg("x1", 30001, false);
    other.service_name = "internal".into();
    other.tags = vec!["no-route".into()];
    other.id = ServiceId::new("_nomad-task-x1-internal");
    ts.put(&other).await;
    let resp = waiting.await.unwrap().expect(200);
    assert_eq!(
        resp.index,
        Some(index),
        "woke without a change: {}",
        resp.body
    );
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A change of the table does, well before its `wait`.
    let started = Instant::now();
    let waiting = tokio::spawn({
        let c = c.clone();
        async move {
            c.get(&format!("/v1/lb/routes?index={index}&wait=60s"))
                .await
        }
    });
    let put_at = Instant::now();
    ts.put(&reg("a2", 21002, false)).await;
    let resp = waiting.await.unwrap().expect(200);
    eprintln!(
        "the blocking query answered {:?} after the registration was written",
        put_at.elapsed()
    );
    assert!(resp.index.unwrap() > index);
    assert_eq!(
        backends(&resp.json()),
        [(100, String::new(), vec![21001, 21002])]
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traffic_split_api_validates_and_reads_back() {
    let (ts, _leading) = server().await;
    let c = ts.client();

    let bad = |body: Value, path: &'static str| {
        let c = c.clone();
        async move {
            let r = c.put(path, &body).await;
            assert_eq!(r.status, 400, "{path} {body}: {}", r.body);
            r.body
        }
    };
    let msg = bad(
        json!({"Service": "web", "Splits": []}),
        "/v1/traffic-split/s",
    )
    .await;
    assert!(msg.contains("splits"), "{msg}");
    let msg = bad(
        json!({"Service": "web", "Splits": [{"Weight": 0}, {"Weight": 0}]}),
        "/v1/traffic-split/s",
    )
    .await;
    assert!(msg.contains("add up to 0"), "{msg}");
    let msg = bad(json!({"Splits": [{"Weight": 1}]}), "/v1/traffic-split/s").await;
    assert!(msg.contains("service"), "{msg}");
    let msg = bad(
        json!({"Service": "web", "Splits": [{"Weight": -1}]}),
        "/v1/traffic-split/s",
    )
    .await;
    assert!(msg.contains("Weight"), "{msg}");
    let msg = bad(
        json!({"Name": "other", "Service": "web", "Splits": [{"Weight": 1}]}),
        "/v1/traffic-split/s",
    )
    .await;
    assert!(msg.contains("does not match"), "{msg}");
    c.put("/v1/traffic-split/s", &Value::Null).await.expect(400);

    // Created, read back, listed; the same body again changes nothing.
    let first = c
        .put("/v1/traffic-split/demo", &split_body())
        .await
        .expect(200);
    let again = c
        .post("/v1/traffic-split/demo", &split_body())
        .await
        .expect(200);
    assert_eq!(first.json()["Index"], again.json()["Index"]);
    let got = c.get("/v1/traffic-split/demo").await.expect(200).json();
    assert_eq!(got["Name"], "demo");
    assert_eq!(got["Namespace"], "default");
    assert_eq!(got["Service"], "demo-webapp");
    assert_eq!(got["Splits"][1]["Subset"]["Canary"], true);
    assert_eq!(got["ModifyIndex"], first.json()["Index"]);

    let ops = json!({"Service": "api", "Splits": [{"Weight": 1, "Subset": {"Tags": ["blue"]}}]});
    c.put("/v1/traffic-split/blue?namespace=ops", &ops)
        .await
        .expect(200);
    let names = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{}/{}",
                    s["Namespace"].as_str().unwrap(),
                    s["Name"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        names(c.get("/v1/traffic-splits").await.expect(200).json()),
        ["default/demo"]
    );
    assert_eq!(
        names(
            c.get("/v1/traffic-splits?namespace=*")
                .await
                .expect(200)
                .json()
        ),
        ["default/demo", "ops/blue"]
    );
    c.get("/v1/traffic-split/blue").await.expect(404);
    c.get("/v1/traffic-split/blue?namespace=ops")
        .await
        .expect(200);

    // A change answers a blocking read of the split.
    let index = got["ModifyIndex"].as_i64().unwrap();
    let waiting = tokio::spawn({
        let c = c.clone();
        async move {
            c.get(&format!("/v1/traffic-split/demo?index={index}&wait=60s"))
                .await
        }
    });
    let mut changed = split_body();
    changed["Splits"][0]["Weight"] = json!(50);
    c.put("/v1/traffic-split/demo", &changed).await.expect(200);
    let resp = waiting.await.unwrap().expect(200);
    assert_eq!(resp.json()["Splits"][0]["Weight"], 50);

    c.delete("/v1/traffic-split/demo").await.expect(200);
    c.delete("/v1/traffic-split/demo").await.expect(404);
    c.get("/v1/traffic-split/demo").await.expect(404);
    c.request("PATCH", "/v1/traffic-split/demo", None)
        .await
        .expect(405);
}

// ---------------------------------------------------------------------------------------------
// With a real dev agent and the CLI.
// ---------------------------------------------------------------------------------------------

#[test]
fn apply_list_status_and_delete_a_split_with_the_cli() {
    use cli_support::{Agent, both, manifests, ok};
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let file = manifests().join("demo-split.yaml");
    let file = file.to_str().unwrap();

    let out = ok(&agent.cli(dir.path(), &["apply", "-f", file]));
    assert_eq!(out.trim(), "trafficsplit.caravan.io/demo-webapp created");
    let out = ok(&agent.cli(dir.path(), &["apply", "-f", file]));
    assert_eq!(out.trim(), "trafficsplit.caravan.io/demo-webapp unchanged");
    let changed = dir.path().join("changed.yaml");
    std::fs::write(
        &changed,
        std::fs::read_to_string(file)
            .unwrap()
            .replace("weight: 90", "weight: 80"),
    )
    .unwrap();
    let out = ok(&agent.cli(dir.path(), &["apply", "-f", changed.to_str().unwrap()]));
    assert_eq!(out.trim(), "trafficsplit.caravan.io/demo-webapp configured");
    let out = ok(&agent.cli(dir.path(), &["apply", "-f", file]));
    assert_eq!(out.trim(), "trafficsplit.caravan.io/demo-webapp configured");

    // A split in another namespace, named by its manifest.
    let ops = dir.path().join("ops.yaml");
    std::fs::write(
        &ops,
        "apiVersion: caravan.io/v1\nkind: TrafficSplit\nmetadata: {name: blue, namespace: ops}\n\
         spec: {service: api, splits: [{weight: 1, subset: {tags: [blue]}}, {weight: 3}]}\n",
    )
    .unwrap();
    let ops = ops.to_str().unwrap();
    let out = ok(&agent.cli(dir.path(), &["apply", "-f", ops]));
    assert_eq!(out.trim(), "trafficsplit.caravan.io/blue created");
    let out = ok(&agent.cli(dir.path(), &["apply", "-f", ops]));
    assert_eq!(out.trim(), "trafficsplit.caravan.io/blue unchanged");
    let out = ok(&agent.cli(dir.path(), &["split", "list", "-namespace", "*"]));
    assert!(
        out.contains("blue         ops        api          25% tags=blue, 75% all"),
        "{out}"
    );

    let out = ok(&agent.cli(dir.path(), &["split", "list"]));
    assert_eq!(
        out.trim(),
        "Name         Namespace  Service      Splits\n\
         demo-webapp  default    demo-webapp  90% canary=false, 10% canary=true"
    );

    // No instance runs: the status says so.
    let out = ok(&agent.cli(dir.path(), &["split", "status", "demo-webapp"]));
    assert!(out.contains("Service   = demo-webapp"), "{out}");
    assert!(out.contains("90      90%    canary=false  0"), "{out}");
    assert!(
        out.contains("No route for service \"demo-webapp\""),
        "{out}"
    );

    // A broken manifest fails with its line and applies nothing.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(file)
            .unwrap()
            .replace("weight: 90", "weight: -1"),
    )
    .unwrap();
    let o = agent.cli(dir.path(), &["apply", "-f", broken.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", both(&o));
    let err = cli_support::stderr(&o);
    assert!(
        err.contains("broken.yaml:15:") && err.contains("spec.splits[0].weight"),
        "{err}"
    );

    let out = ok(&agent.cli(dir.path(), &["split", "delete", "demo-webapp"]));
    assert!(out.contains("Successfully deleted"), "{out}");
    let out = ok(&agent.cli(dir.path(), &["split", "list"]));
    assert_eq!(out.trim(), "No traffic splits found");
    let o = agent.cli(dir.path(), &["split", "status", "demo-webapp"]);
    assert!(!o.status.success(), "{}", both(&o));
    assert!(
        cli_support::stderr(&o).contains("traffic split not found"),
        "{}",
        both(&o)
    );

    // The agent's own lb-config controller has written the (empty) table.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = cli_support::support::client::Client::new(&agent.address);
        eventually(WAIT, "the agent's route table", || async {
            let t = c.get("/v1/lb/routes").await.expect(200).json();
            t["ModifyIndex"].as_i64().unwrap_or(0) > 0
        })
        .await;
    });
}

/// 2,000 instances of 100 services, written in batches as the service controller would:
/// the table follows, and how long it takes is printed (debug build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_table_follows_its_registrations() {
    use caravan::server::objects::Object;
    use caravan::store::{Op, Txn};
    let (ts, _leading) = server().await;
    let started = Instant::now();
    for batch in 0..20 {
        let ops: Vec<Op> = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                let mut r = reg(&format!("alloc-{n:04}"), 20000 + n, n % 10 == 0);
                r.service_name = format!("svc-{:03}", n % 100);
                r.id = ServiceId::new(format!("_nomad-task-alloc-{n:04}-{}", r.service_name));
                r.tags = vec![format!("urlprefix-/{}", r.service_name)];
                Op::put(r.key(&ts.server.keys), serde_json::to_vec(&r).unwrap())
            })
            .collect();
        ts.store.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    let written = started.elapsed();
    eventually(
        Duration::from_secs(60),
        "100 routes of 20 instances",
        || async {
            let t = routes(&ts).await;
            let routes = t["Routes"].as_array().unwrap();
            routes.len() == 100
                && routes
                    .iter()
                    .all(|r| r["Backends"][0]["Instances"].as_array().unwrap().len() == 20)
        },
    )
    .await;
    eprintln!(
        "2000 registrations written in {written:?}; table complete {:?} after the first write",
        started.elapsed()
    );
}

/// Everything real: a raw_exec web server (busybox httpd) run by a dev agent, registered by the
/// service controller once its http check passes, routed by the agent's lb-config controller;
/// the split status shows the instances; stopping the job empties the table.
#[test]
fn a_running_service_is_routed_once_healthy() {
    use cli_support::{Agent, ok};
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("web.nomad.hcl");
    std::fs::write(
        &job,
        r#"job "web" {
  datacenters = ["dc1"]
  group "web" {
    count = 2
    network {
      port "http" {}
    }
    service {
      name = "web"
      port = "http"
      tags = ["urlprefix-/web strip=/web", "blue"]
      check {
        type     = "http"
        path     = "/health"
        interval = "1s"
        timeout  = "1s"
      }
    }
    task "httpd" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "mkdir -p local/www && echo ok > local/www/health && exec busybox httpd -f -p ${NOMAD_PORT_http} -h local/www"]
      }
      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
"#,
    )
    .unwrap();
    let split = dir.path().join("split.yaml");
    std::fs::write(
        &split,
        "apiVersion: caravan.io/v1\nkind: TrafficSplit\nmetadata: {name: web}\n\
         spec: {service: web, splits: [{weight: 3, subset: {tags: [blue]}}, {weight: 1, subset: {canary: true}}]}\n",
    )
    .unwrap();
    ok(&agent.cli(
        dir.path(),
        &["job", "run", "-detach", job.to_str().unwrap()],
    ));
    ok(&agent.cli(dir.path(), &["apply", "-f", split.to_str().unwrap()]));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = cli_support::support::client::Client::new(&agent.address);
    let instances = |t: &Value| {
        t["Routes"][0]["Backends"][0]["Instances"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let table = rt.block_on(async {
        eventually(Duration::from_secs(60), "two routed instances", || async {
            instances(&c.get("/v1/lb/routes").await.expect(200).json()) == 2
        })
        .await;
        c.get("/v1/lb/routes").await.expect(200).json()
    });
    let route = &table["Routes"][0];
    assert_eq!(route["Prefix"], "/web");
    assert_eq!(route["Strip"], "/web");
    assert_eq!(route["Service"], "web");
    let backends = route["Backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    assert_eq!(
        (&backends[0]["Weight"], &backends[0]["Subset"]),
        (&json!(3), &json!("tags=blue"))
    );
    assert_eq!(backends[1]["Instances"], json!([]));
    // Each routed instance answers where the table says.
    for inst in backends[0]["Instances"].as_array().unwrap() {
        let url = format!(
            "http://{}:{}/health",
            inst["Address"].as_str().unwrap(),
            inst["Port"]
        );
        let body = rt.block_on(async { reqwest::get(&url).await.unwrap().text().await.unwrap() });
        assert_eq!(body.trim(), "ok", "{url}");
    }
    let status = ok(&agent.cli(dir.path(), &["split", "status", "web"]));
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert!(
        status
            .lines()
            .any(|l| words(l) == ["3", "75%", "tags=blue", "2"]),
        "{status}"
    );
    assert_eq!(
        status
            .lines()
            .filter(|l| l.starts_with("tags=blue  "))
            .count(),
        2,
        "{status}"
    );

    ok(&agent.cli(dir.path(), &["job", "stop", "-detach", "web"]));
    rt.block_on(async {
        eventually(
            Duration::from_secs(60),
            "no route once the job is stopped",
            || async { c.get("/v1/lb/routes").await.expect(200).json()["Routes"] == json!([]) },
        )
        .await;
    });
}
