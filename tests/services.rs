//! Service registrations end to end.
//!
//! - In process, on the embedded store: the service controller keeps an allocation's
//!   registrations in step with it (address, canary tags, health, stop, orphans), and the API
//!   answers `/v1/services` and `/v1/service/:name` in Nomad's shapes, with blocking queries,
//!   namespaces, and `DELETE /v1/service/:name/:id`.
//! - With a real dev agent and docker: a running allocation's service is registered at the
//!   address and port it got and answers there; a canary is registered with its canary tags
//!   and `Canary: true`, and with the normal tags once promoted; stopping the job removes the
//!   registrations; the CLI shows them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use caravan::server::objects::Object;
use caravan_schemas::alloc::{
    AllocDeploymentStatus, Allocation, CheckQueryResult, CheckStatus, DesiredStatus,
};
use caravan_schemas::ids::{AllocId, CheckId, JobId, Namespace, NodeId, ServiceId};
use caravan_schemas::job::{Job, Service, ServiceCheck};
use caravan_schemas::resources::{AllocatedPortMapping, AllocatedResources};
use caravan_schemas::service::ServiceRegistration;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::agent::DevAgent;
use support::eventually;
use support::server::{TestServer, fixtures};

const SECOND: i64 = 1_000_000_000;
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// In process: the controller and the API.
// ---------------------------------------------------------------------------------------------

/// Job `demo` whose group `web` offers service `demo-web` on port `http`, checked over http.
fn job() -> Job {
    let mut job = fixtures::job("demo");
    job.task_groups[0].services = vec![Service {
        name: "demo-web".into(),
        port_label: "http".into(),
        tags: vec!["urlprefix-/".into(), "v1".into()],
        canary_tags: vec!["canary".into()],
        checks: vec![ServiceCheck {
            name: "alive".into(),
            r#type: "http".into(),
            path: "/".into(),
            ..ServiceCheck::default()
        }],
        ..Service::default()
    }];
    job
}

/// A running allocation of [`job`] on node `n1`, holding host port `port` on 127.0.0.1.
fn alloc(id: &str, port: i32) -> Allocation {
    let mut a = fixtures::alloc(id, "n1", "demo");
    a.job = Some(Arc::new(job()));
    let mut res = AllocatedResources::default();
    res.shared.ports = vec![AllocatedPortMapping {
        label: "http".into(),
        value: port,
        to: 8080,
        host_ip: "127.0.0.1".into(),
        ignore_collision: false,
    }];
    a.allocated_resources = Some(res);
    a
}

fn check_result(status: CheckStatus) -> CheckQueryResult {
    CheckQueryResult {
        id: CheckId::new("c1"),
        status,
        group: "web".into(),
        service: "demo-web".into(),
        check: "alive".into(),
        ..CheckQueryResult::default()
    }
}

/// A server that leads, with the service controller running.
async fn server_with_controller() -> (TestServer, tokio::sync::watch::Sender<bool>) {
    let ts = TestServer::start().await;
    let (leading, rx) = tokio::sync::watch::channel(true);
    caravan::server::service_controller::start(Arc::clone(&ts.server), rx);
    ts.put(&fixtures::node("n1")).await;
    (ts, leading)
}

/// The registrations of `name`, as the API returns them.
async fn instances(ts: &TestServer, name: &str) -> Vec<Value> {
    let resp = ts.client().get(&format!("/v1/service/{name}")).await;
    resp.expect(200).json().as_array().cloned().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_keeps_registrations_in_step_with_allocations() {
    let (ts, _leading) = server_with_controller().await;
    let mut a = alloc("a1", 23456);
    ts.put(&a).await;
    eventually(
        WAIT,
        "a registration for the running allocation",
        || async { instances(&ts, "demo-web").await.len() == 1 },
    )
    .await;
    let reg = &instances(&ts, "demo-web").await[0];
    assert_eq!(reg["ID"], "_nomad-task-a1-web-demo-web-http");
    assert_eq!(reg["ServiceName"], "demo-web");
    assert_eq!(reg["Namespace"], "default");
    assert_eq!(reg["NodeID"], "n1");
    assert_eq!(reg["Datacenter"], "dc1");
    assert_eq!(reg["JobID"], "demo");
    assert_eq!(reg["AllocID"], "a1");
    assert_eq!(reg["Address"], "127.0.0.1");
    assert_eq!(reg["Port"], 23456);
    assert_eq!(reg["Tags"], json!(["urlprefix-/", "v1"]));
    assert_eq!(reg["Canary"], false);
    assert_eq!(reg["Healthy"], Value::Null, "no check result yet");
    assert!(reg["CreateIndex"].as_i64().unwrap() > 0);

    // What templates' `nomadService` reads decodes it (and an unknown service is empty).
    use caravan::agent::template::{ServerServices, TemplateSource};
    let source = ServerServices::new(reqwest::Client::new(), vec![ts.base.clone()]);
    let seen = source.services("default", "demo-web").await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].address.as_str(), seen[0].port),
        ("127.0.0.1", 23456)
    );
    assert_eq!(seen[0].tags, ["urlprefix-/", "v1"]);
    assert!(source.services("default", "nope").await.unwrap().is_empty());

    // The client reports its check passing: the registration turns healthy.
    a = (*ts.server.cache.allocs.get(&a.key(&ts.server.keys)).unwrap()).clone();
    let passing = check_result(CheckStatus::Success);
    a.check_results.insert(passing.id.clone(), passing);
    ts.put(&a).await;
    eventually(WAIT, "the registration to turn healthy", || async {
        instances(&ts, "demo-web").await[0]["Healthy"] == true
    })
    .await;

    // A canary advertises its canary tags until it is promoted.
    a.deployment_status = Some(AllocDeploymentStatus {
        canary: true,
        ..AllocDeploymentStatus::default()
    });
    ts.put(&a).await;
    eventually(WAIT, "the canary tags", || async {
        let r = &instances(&ts, "demo-web").await[0];
        r["Tags"] == json!(["canary"]) && r["Canary"] == true
    })
    .await;
    a.deployment_status.as_mut().unwrap().canary = false;
    ts.put(&a).await;
    eventually(WAIT, "the normal tags after promotion", || async {
        let r = &instances(&ts, "demo-web").await[0];
        r["Tags"] == json!(["urlprefix-/", "v1"]) && r["Canary"] == false
    })
    .await;

    // A registration nobody owns (its allocation is gone) is removed.
    let orphan = ServiceRegistration {
        id: ServiceRegistration::make_id(&AllocId::new("gone"), "web", "demo-web", "http"),
        service_name: "demo-web".into(),
        namespace: Namespace::default_ns(),
        node_id: NodeId::new("n1"),
        job_id: JobId::new("demo"),
        alloc_id: AllocId::new("gone"),
        address: "127.0.0.1".into(),
        port: 1,
        ..ServiceRegistration::default()
    };
    ts.put(&orphan).await;
    eventually(WAIT, "the orphan to be removed", || async {
        let list = instances(&ts, "demo-web").await;
        list.len() == 1 && list[0]["AllocID"] == "a1"
    })
    .await;

    // Stopping the allocation removes its registration.
    a.desired_status = DesiredStatus::Stop;
    ts.put(&a).await;
    eventually(WAIT, "no registration once stopped", || async {
        instances(&ts, "demo-web").await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn becoming_leader_resyncs_registrations() {
    let ts = TestServer::start().await;
    ts.put(&fixtures::node("n1")).await;
    ts.put(&alloc("a1", 23456)).await;
    let stale = ServiceRegistration {
        id: ServiceRegistration::make_id(&AllocId::new("gone"), "web", "demo-web", "http"),
        service_name: "demo-web".into(),
        namespace: Namespace::default_ns(),
        alloc_id: AllocId::new("gone"),
        ..ServiceRegistration::default()
    };
    ts.put(&stale).await;
    // Not leading yet: nothing is written.
    let (leading, rx) = tokio::sync::watch::channel(false);
    caravan::server::service_controller::start(Arc::clone(&ts.server), rx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let list = instances(&ts, "demo-web").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["AllocID"], "gone");
    leading.send(true).unwrap();
    eventually(
        WAIT,
        "the running allocation registered, the orphan gone",
        || async {
            let list = instances(&ts, "demo-web").await;
            list.len() == 1 && list[0]["AllocID"] == "a1"
        },
    )
    .await;
}

fn registration(ns: &str, name: &str, alloc: &str, tags: &[&str]) -> ServiceRegistration {
    ServiceRegistration {
        id: ServiceRegistration::make_id(&AllocId::new(alloc), "web", name, "http"),
        service_name: name.into(),
        namespace: Namespace::new(ns),
        node_id: NodeId::new("n1"),
        datacenter: "dc1".into(),
        job_id: JobId::new("demo"),
        alloc_id: AllocId::new(alloc),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        address: "10.0.0.5".into(),
        port: 23456,
        ..ServiceRegistration::default()
    }
}

#[tokio::test]
async fn the_api_answers_in_nomads_shapes() {
    let ts = TestServer::start().await;
    let c = ts.client();
    // Nothing registered: empty lists, never a 404.
    assert_eq!(c.get("/v1/services").await.expect(200).json(), json!([]));
    assert_eq!(c.get("/v1/service/web").await.expect(200).json(), json!([]));

    ts.put(&registration("default", "web", "b", &["v1", "urlprefix-/"]))
        .await;
    ts.put(&registration("default", "web", "a", &["canary"]))
        .await;
    ts.put(&registration("default", "db", "a", &[])).await;
    ts.put(&registration("ops", "metrics", "c", &["prom"]))
        .await;

    let list = c.get("/v1/services").await.expect(200);
    assert!(list.index.unwrap() > 0);
    assert_eq!(
        list.json(),
        json!([{"Namespace": "default", "Services": [
            {"ServiceName": "db", "Tags": []},
            {"ServiceName": "web", "Tags": ["canary", "urlprefix-/", "v1"]},
        ]}])
    );
    assert_eq!(
        c.get("/v1/services?namespace=*").await.json(),
        json!([
            {"Namespace": "default", "Services": [
                {"ServiceName": "db", "Tags": []},
                {"ServiceName": "web", "Tags": ["canary", "urlprefix-/", "v1"]},
            ]},
            {"Namespace": "ops", "Services": [{"ServiceName": "metrics", "Tags": ["prom"]}]},
        ])
    );
    assert_eq!(
        c.get("/v1/service/metrics?namespace=ops").await.json()[0]["AllocID"],
        "c"
    );
    assert_eq!(c.get("/v1/service/metrics").await.json(), json!([]));

    // Sorted by allocation; Nomad's fields, then Caravan's.
    let web = c.get("/v1/service/web").await.expect(200).json();
    let allocs: Vec<&str> = web
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["AllocID"].as_str().unwrap())
        .collect();
    assert_eq!(allocs, ["a", "b"]);
    let keys: Vec<&String> = web[0].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "ID",
            "ServiceName",
            "Namespace",
            "NodeID",
            "Datacenter",
            "JobID",
            "AllocID",
            "Tags",
            "Address",
            "Port",
            "CreateIndex",
            "ModifyIndex",
            "Meta",
            "Canary",
            "JobVersion",
            "Healthy"
        ]
    );
    assert_eq!(
        c.get("/v1/service/web?tag=v1").await.json()[0]["AllocID"],
        "b"
    );

    // A blocking query returns when a registration changes…
    let index = c.get("/v1/service/web").await.index.unwrap();
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get(&format!("/v1/service/web?index={index}&wait=20s"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "nothing changed yet");
    ts.put(&registration("default", "web", "d", &["v2"])).await;
    let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .expect(200);
    assert!(woke.index.unwrap() > index);
    assert_eq!(woke.json().as_array().unwrap().len(), 3);
    // …and after `wait` when none does.
    let idle = c
        .get(&format!(
            "/v1/services?index={}&wait=200ms",
            woke.index.unwrap()
        ))
        .await
        .expect(200);
    assert_eq!(idle.index, woke.index);

    // DELETE removes one registration; an unknown one is a 404.
    let id = ServiceId::new(web[0]["ID"].as_str().unwrap());
    c.delete(&format!("/v1/service/web/{id}")).await.expect(200);
    let allocs: Vec<String> = c
        .get("/v1/service/web")
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["AllocID"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(allocs, ["b", "d"]);
    let gone = c.delete(&format!("/v1/service/web/{id}")).await.expect(404);
    assert_eq!(gone.body, "service registration not found");
    c.delete("/v1/service/db/nope").await.expect(404);
    c.post("/v1/services", &json!({})).await.expect(405);
}

// ---------------------------------------------------------------------------------------------
// A real dev agent with docker.
// ---------------------------------------------------------------------------------------------

/// The demo job: one `caravan/demo-web` container (`image`) behind service `demo-web`, checked
/// over http, updated with one canary and manual promotion.
fn demo_job(image: &str) -> Value {
    json!({"Job": {
        "ID": "demo", "Type": "service",
        "Update": {
            "MaxParallel": 1, "Canary": 1, "HealthCheck": "checks",
            "MinHealthyTime": SECOND, "HealthyDeadline": 60 * SECOND,
            "ProgressDeadline": 120 * SECOND, "AutoRevert": false, "AutoPromote": false,
        },
        "TaskGroups": [{
            "Name": "web", "Count": 1,
            "Networks": [{"DynamicPorts": [{"Label": "http", "To": 8080}]}],
            "Services": [{
                "Name": "demo-web", "PortLabel": "http", "Provider": "nomad",
                "Tags": ["urlprefix-/", "live"], "CanaryTags": ["canary"],
                "Meta": {"image": image},
                "Checks": [{"Name": "alive", "Type": "http", "Path": "/",
                            "Interval": SECOND, "Timeout": SECOND}],
            }],
            "Tasks": [{
                "Name": "server", "Driver": "docker",
                "Config": {"image": image, "ports": ["http"]},
                "Resources": {"CPU": 50, "MemoryMB": 32},
            }],
        }],
    }})
}

async fn demo_instances(agent: &DevAgent) -> Vec<Value> {
    let resp = agent.client.get("/v1/service/demo-web").await.expect(200);
    resp.json().as_array().cloned().unwrap()
}

/// The body an HTTP GET of `http://addr/` answers with.
fn http_body(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.contains(" 200 ")
        .then(|| out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

fn caravan(agent: &DevAgent, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(args)
        .args(["-address", &format!("http://{}", agent.addr)])
        .output()
        .unwrap();
    assert!(out.status.success(), "caravan {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_registered_with_its_canary_tags_until_promoted() {
    support::images::ensure();
    let agent = DevAgent::start();
    agent.wait_ready().await;

    // v1 runs: its service is registered at the host address and port the allocation got,
    // healthy once its check passes, and answers there.
    agent
        .client
        .post("/v1/jobs", &demo_job(support::images::DEMO_WEB))
        .await
        .expect(200);
    eventually(
        Duration::from_secs(60),
        "a healthy registration",
        || async {
            let list = demo_instances(&agent).await;
            list.len() == 1 && list[0]["Healthy"] == true
        },
    )
    .await;
    let reg = demo_instances(&agent).await.remove(0);
    let alloc = agent.alloc(reg["AllocID"].as_str().unwrap()).await;
    assert_eq!(alloc["ClientStatus"], "running");
    let port = &alloc["AllocatedResources"]["Shared"]["Ports"][0];
    assert_eq!(port["Label"], "http");
    assert_eq!(reg["Address"], port["HostIP"], "{reg}");
    assert_eq!(reg["Port"], port["Value"], "{reg}");
    assert_eq!(reg["Tags"], json!(["urlprefix-/", "live"]));
    assert_eq!(reg["Canary"], false);
    assert_eq!(reg["JobVersion"], 0);
    assert_eq!(reg["NodeID"], alloc["NodeID"]);
    assert_eq!(reg["Datacenter"], "dc1");
    let addr = format!("{}:{}", reg["Address"].as_str().unwrap(), reg["Port"]);
    let body = http_body(&addr).expect("the service answers at its registered address");
    assert!(body.starts_with("demo-web v1 on "), "{body}");

    // The CLI shows it.
    let list = caravan(&agent, &["service", "list"]);
    assert_eq!(
        list.trim_end(),
        "Service Name  Tags\ndemo-web      [live,urlprefix-/]"
    );
    let info = caravan(&agent, &["service", "info", "demo-web"]);
    let alloc_id = reg["AllocID"].as_str().unwrap();
    assert!(
        info.lines().nth(1).is_some_and(|l| l.starts_with("demo")
            && l.contains(&addr)
            && l.contains("[urlprefix-/,live]")
            && l.ends_with(&alloc_id[..8])),
        "{info}"
    );

    // v2 starts one canary beside v1: registered with the canary tags and Canary true.
    let v2 = "caravan/demo-web:v2";
    agent
        .client
        .post("/v1/jobs", &demo_job(v2))
        .await
        .expect(200);
    eventually(
        Duration::from_secs(60),
        "the canary's registration",
        || async {
            let list = demo_instances(&agent).await;
            list.len() == 2
                && list.iter().any(|r| {
                    r["Canary"] == true
                        && r["Tags"] == json!(["canary"])
                        && r["JobVersion"] == 1
                        && r["Healthy"] == true
                })
        },
    )
    .await;
    let list = demo_instances(&agent).await;
    let old = list.iter().find(|r| r["Canary"] == false).unwrap();
    assert_eq!(old["Tags"], json!(["urlprefix-/", "live"]));
    assert_eq!(old["JobVersion"], 0);
    let canary = list.iter().find(|r| r["Canary"] == true).unwrap();
    assert_eq!(canary["Meta"]["image"], v2);
    let canary_addr = format!("{}:{}", canary["Address"].as_str().unwrap(), canary["Port"]);
    let body = http_body(&canary_addr).expect("the canary answers at its registered address");
    assert!(body.starts_with("demo-web v2 on "), "{body}");

    // Promotion: the canary's registration takes the normal tags, and v1's goes away.
    let deployment = agent.client.get("/v1/job/demo/deployment").await.json();
    let id = deployment["ID"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(60),
        "the deployment to accept promotion",
        || async {
            agent
                .client
                .post(
                    &format!("/v1/deployment/promote/{id}"),
                    &json!({"All": true}),
                )
                .await
                .status
                == 200
        },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "only the promoted canary, with the normal tags",
        || async {
            let list = demo_instances(&agent).await;
            list.len() == 1
                && list[0]["Canary"] == false
                && list[0]["Tags"] == json!(["urlprefix-/", "live"])
                && list[0]["JobVersion"] == 1
        },
    )
    .await;
    assert_eq!(
        demo_instances(&agent).await[0]["AllocID"],
        canary["AllocID"],
        "the canary is the instance that stays"
    );

    // Stopping the job removes the registrations.
    agent.client.delete("/v1/job/demo").await.expect(200);
    eventually(Duration::from_secs(60), "no registrations", || async {
        demo_instances(&agent).await.is_empty()
    })
    .await;
    assert_eq!(
        caravan(&agent, &["service", "list"]).trim_end(),
        "No service registrations found"
    );
}
