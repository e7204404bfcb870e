//! Service checks run by a real `caravan agent -dev`: a raw_exec web server (busybox httpd)
//! whose http, tcp and script checks pass while others fail, shown by the API and by
//! `caravan alloc status`; `check_restart` restarting a task whose check keeps failing until
//! its restart policy fails it; a script check of a docker task running inside its container.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::agent::DevAgent;
use support::eventually;

const MS: i64 = 1_000_000;

fn check(name: &str, kind: &str, extra: Value) -> Value {
    let mut c = json!({
        "Name": name, "Type": kind, "Interval": 300 * MS, "Timeout": 2000 * MS,
    });
    c.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    c
}

/// A port nothing listens on now. Dev agents started by parallel tests all hand out the same
/// first dynamic port, so these jobs reserve a port picked here instead.
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Removes the containers of an allocation when dropped, even when the test failed.
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        let filter = format!("label=com.caravan.alloc_id={}", self.0);
        let Ok(out) = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", id])
                .output();
        }
    }
}

/// A service job: one task with one service on the group's port `http`, reserved on a free port.
fn job(id: &str, task: Value, checks: Vec<Value>, restart_attempts: i64) -> Value {
    let mut task = task;
    task["Services"] = json!([{"Name": "web", "PortLabel": "http", "Checks": checks}]);
    task["Resources"] = json!({"CPU": 100, "MemoryMB": 64});
    task["KillTimeout"] = json!(2000 * MS);
    json!({"Job": {
        "ID": id, "Type": "service",
        "TaskGroups": [{
            "Name": "g", "Count": 1,
            "Networks": [{"ReservedPorts": [{"Label": "http", "Value": free_port()}]}],
            "RestartPolicy": {"Attempts": restart_attempts, "Interval": 600_000 * MS, "Delay": 100 * MS, "Mode": "fail"},
            "ReschedulePolicy": {"Attempts": 0, "Interval": 0, "Unlimited": false, "Delay": 5_000 * MS, "DelayFunction": "constant"},
            "Tasks": [task]
        }]
    }})
}

async fn ready(agent: &DevAgent) {
    eventually(Duration::from_secs(20), "a ready node", || async {
        agent
            .client
            .get("/v1/nodes")
            .await
            .json()
            .as_array()
            .is_some_and(|n| n.len() == 1 && n[0]["Status"] == "ready")
    })
    .await;
}

/// The allocation's check results by check name, from `/v1/client/allocation/:id/checks`.
async fn checks_by_name(agent: &DevAgent, alloc: &str) -> serde_json::Map<String, Value> {
    let resp = agent
        .client
        .get(&format!("/v1/client/allocation/{alloc}/checks"))
        .await;
    if resp.status != 200 {
        return serde_json::Map::new();
    }
    resp.json()
        .as_object()
        .unwrap()
        .values()
        .map(|r| (r["Check"].as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

async fn first_alloc_id(agent: &DevAgent, job: &str) -> String {
    eventually(
        Duration::from_secs(20),
        "the allocation is placed",
        || async { !agent.allocs(job).await.is_empty() },
    )
    .await;
    agent.allocs(job).await[0]["ID"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_exec_service_checks_pass_and_fail_and_the_api_shows_them() {
    let agent = DevAgent::start();
    ready(&agent).await;
    // busybox httpd serves local/www on the allocated port; /health exists, /missing does not.
    let script = "mkdir -p local/www && echo healthy > local/www/health && \
                  exec busybox httpd -f -p ${NOMAD_PORT_http} -h local/www";
    let task = json!({"Name": "t", "Driver": "raw_exec",
                      "Config": {"command": "/bin/sh", "args": ["-c", script]}});
    let checks = vec![
        check("http-ok", "http", json!({"Path": "/health"})),
        check("http-missing", "http", json!({"Path": "/missing"})),
        check("tcp", "tcp", json!({})),
        // Runs in the task's directory, with its environment.
        check(
            "script-ok",
            "script",
            json!({"Command": "/bin/sh", "Args": ["-c", "test -f local/www/health && echo port $NOMAD_PORT_http"]}),
        ),
        check(
            "script-fails",
            "script",
            json!({"Command": "/bin/sh", "Args": ["-c", "echo broken; exit 2"]}),
        ),
        check("grpc", "grpc", json!({})),
    ];
    agent
        .client
        .post("/v1/jobs", &job("web", task, checks, 0))
        .await
        .expect(200);
    let alloc = first_alloc_id(&agent, "web").await;
    let want = [
        ("http-ok", "success"),
        ("http-missing", "failure"),
        ("tcp", "success"),
        ("script-ok", "success"),
        ("script-fails", "failure"),
        ("grpc", "failure"),
    ];
    eventually(
        Duration::from_secs(30),
        "every check reaches its status",
        || async {
            let got = checks_by_name(&agent, &alloc).await;
            want.iter()
                .all(|(name, status)| got.get(*name).is_some_and(|r| r["Status"] == *status))
        },
    )
    .await;
    let got = checks_by_name(&agent, &alloc).await;
    let port = agent.allocs("web").await[0]["AllocatedResources"]["Shared"]["Ports"][0]["Value"]
        .as_i64()
        .unwrap_or_default();
    let ok = &got["http-ok"];
    assert_eq!(ok["Output"], "nomad: http ok", "{ok}");
    assert_eq!(ok["StatusCode"], 200);
    assert_eq!(ok["Mode"], "healthiness");
    assert_eq!(
        (&ok["Group"], &ok["Task"], &ok["Service"]),
        (&json!("g"), &json!("t"), &json!("web"))
    );
    let id = ok["ID"].as_str().unwrap();
    assert_eq!(id.len(), 32, "an md5 hex id: {id}");
    assert_eq!(
        got["http-missing"]["StatusCode"], 404,
        "{}",
        got["http-missing"]
    );
    assert_eq!(got["tcp"]["Output"], "nomad: tcp ok");
    let script_ok = got["script-ok"]["Output"].as_str().unwrap();
    if port > 0 {
        assert_eq!(script_ok.trim(), format!("port {port}"));
    }
    assert_eq!(
        got["script-fails"]["Output"].as_str().unwrap().trim(),
        "broken"
    );
    assert!(
        got["grpc"]["Output"]
            .as_str()
            .unwrap()
            .contains("grpc checks are not supported"),
        "{}",
        got["grpc"]
    );
    // The stored allocation carries them too, and `alloc status` lists them.
    let stored = agent
        .client
        .get(&format!("/v1/allocation/{alloc}"))
        .await
        .json();
    assert_eq!(stored["CheckResults"].as_object().unwrap().len(), 6);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(["alloc", "status", &alloc[..8]])
        .env("CARAVAN_ADDR", agent.client.base())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Nomad Service Checks:"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "web",
                    "t",
                    "script-fails",
                    "healthiness",
                    "failure",
                    "broken"
                ]),
        "{text}"
    );
    agent.client.delete("/v1/job/web").await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_restart_restarts_the_task_until_its_policy_fails_it() {
    let agent = DevAgent::start();
    ready(&agent).await;
    // Nothing listens on the port: the check fails every time.
    let task = json!({"Name": "t", "Driver": "raw_exec",
                      "Config": {"command": "/bin/sh", "args": ["-c", "exec sleep 300"]}});
    let checks = vec![check(
        "down",
        "tcp",
        json!({"Interval": 200 * MS, "Timeout": 200 * MS,
               "CheckRestart": {"Limit": 2, "Grace": 0, "IgnoreWarnings": false}}),
    )];
    agent
        .client
        .post("/v1/jobs", &job("flappy", task, checks, 1))
        .await
        .expect(200);
    agent.wait_for_status("flappy", "failed").await;
    let state = agent.allocs("flappy").await[0]["TaskStates"]["t"].clone();
    assert_eq!(state["Restarts"], 1, "{state}");
    assert_eq!(state["Failed"], true);
    let events = state["Events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["Type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "Restart Signaled").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"Not Restarting"), "{kinds:?}");
    assert!(kinds.contains(&"Restarting"), "{kinds:?}");
    let signaled = events
        .iter()
        .find(|e| e["Type"] == "Restart Signaled")
        .unwrap();
    assert_eq!(
        signaled["DisplayMessage"], "healthcheck: check \"down\" unhealthy",
        "{signaled}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_script_check_runs_inside_the_container() {
    support::images::ensure();
    let agent = DevAgent::start();
    ready(&agent).await;
    // The file exists only in the container's filesystem.
    let marker = format!("/inside-{}", support::random_suffix());
    let task = json!({"Name": "t", "Driver": "docker",
                      "Config": {"image": support::images::BUSYBOX, "command": "sh",
                                 "args": ["-c", format!("echo from-the-container > {marker}; exec sleep 300")]}});
    let checks = vec![
        check(
            "inside",
            "script",
            json!({"Command": "cat", "Args": [&marker]}),
        ),
        check(
            "warns",
            "script",
            json!({"Command": "sh", "Args": ["-c", "echo careful; exit 1"]}),
        ),
    ];
    agent
        .client
        .post("/v1/jobs", &job("boxed", task, checks, 0))
        .await
        .expect(200);
    let alloc = first_alloc_id(&agent, "boxed").await;
    let _containers = Containers(alloc.clone());
    eventually(
        Duration::from_secs(60),
        "the script checks ran in the container",
        || async {
            let got = checks_by_name(&agent, &alloc).await;
            got.get("inside").is_some_and(|r| r["Status"] == "success")
                && got.get("warns").is_some_and(|r| r["Status"] == "failure")
        },
    )
    .await;
    assert!(!std::path::Path::new(&marker).exists());
    let got = checks_by_name(&agent, &alloc).await;
    assert_eq!(got["inside"]["Output"], "from-the-container\n");
    assert_eq!(
        got["warns"]["Output"], "careful\n",
        "a warning counts as a failure"
    );
    agent.client.delete("/v1/job/boxed").await.expect(200);
    agent.wait_for_status("boxed", "complete").await;
}
