//! What the "Done when" asks of tasks run through a real dev agent (raw_exec): a
//! service listening on its NOMAD_PORT is reachable at the address the API reports; a task
//! failing past its restart policy fails its allocation, which the servers reschedule; and a
//! task ignoring its kill signal is killed only after its kill_timeout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::time::Duration;
use support::agent::{DevAgent, event_types};
use support::eventually;

const SECOND: i64 = 1_000_000_000;

fn group(name: &str, tasks: Value, extra: Value) -> Value {
    let mut g = json!({
        "Name": name, "Count": 1,
        "RestartPolicy": {"Attempts": 0, "Interval": 60 * SECOND, "Delay": SECOND / 10, "Mode": "fail"},
        "ReschedulePolicy": {"Attempts": 0, "Interval": 0, "Unlimited": false, "Delay": 5 * SECOND, "DelayFunction": "constant"},
        "Tasks": tasks,
    });
    for (k, v) in extra.as_object().unwrap() {
        g[k] = v.clone();
    }
    g
}

fn sh(name: &str, script: &str) -> Value {
    json!({"Name": name, "Driver": "raw_exec",
           "Config": {"command": "/bin/sh", "args": ["-c", script]},
           "Resources": {"CPU": 50, "MemoryMB": 32}})
}

/// An HTTP GET over a plain socket: the status line and body.
fn http_get(addr: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_answers_on_the_address_the_api_reports() {
    let agent = DevAgent::start();
    agent.wait_ready().await;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox-static is installed (hack/setup-test.sh)");
    let script = format!(
        "mkdir -p $NOMAD_TASK_DIR/www && echo served by $NOMAD_ALLOC_ID on $NOMAD_ADDR_http > $NOMAD_TASK_DIR/www/index.html && \
         exec {busybox} httpd -f -p $NOMAD_PORT_http -h $NOMAD_TASK_DIR/www"
    );
    let job = json!({"Job": {"ID": "web", "Type": "service", "TaskGroups": [group(
        "web",
        json!([sh("httpd", &script)]),
        json!({"Networks": [{"DynamicPorts": [{"Label": "http"}]}]}),
    )]}});
    agent.client.post("/v1/jobs", &job).await.expect(200);
    agent.wait_for_status("web", "running").await;
    let id = agent.allocs("web").await[0]["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    let alloc = agent.alloc(&id).await;
    let port = &alloc["AllocatedResources"]["Shared"]["Ports"][0];
    assert_eq!(port["Label"], "http", "{alloc}");
    let addr = format!("{}:{}", port["HostIP"].as_str().unwrap(), port["Value"]);
    eventually(Duration::from_secs(10), "httpd answers", || async {
        http_get(&addr).is_some_and(|a| a.contains("200 OK"))
    })
    .await;
    let answer = http_get(&addr).unwrap();
    assert!(
        answer.contains(&format!("served by {id} on {addr}")),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_allocation_is_rescheduled() {
    let agent = DevAgent::start();
    agent.wait_ready().await;
    let job = json!({"Job": {"ID": "crashy", "Type": "service", "TaskGroups": [group(
        "g",
        json!([sh("t", "echo starting; exit 2")]),
        json!({
            "RestartPolicy": {"Attempts": 1, "Interval": 60 * SECOND, "Delay": SECOND / 10, "Mode": "fail"},
            "ReschedulePolicy": {"Attempts": 1, "Interval": 3600 * SECOND, "Unlimited": false, "Delay": SECOND, "DelayFunction": "constant"},
        }),
    )]}});
    agent.client.post("/v1/jobs", &job).await.expect(200);
    eventually(
        Duration::from_secs(40),
        "the failed allocation and its failed replacement",
        || async {
            let allocs = agent.allocs("crashy").await;
            allocs.len() == 2 && allocs.iter().all(|a| a["ClientStatus"] == "failed")
        },
    )
    .await;
    let allocs = agent.allocs("crashy").await;
    let (first, second) = {
        let mut sorted = allocs.clone();
        sorted.sort_by_key(|a| a["CreateIndex"].as_i64());
        (sorted[0].clone(), sorted[1].clone())
    };
    let first = agent.alloc(first["ID"].as_str().unwrap()).await;
    let second = agent.alloc(second["ID"].as_str().unwrap()).await;
    // Each was restarted once by its policy before failing.
    for a in [&first, &second] {
        let t = &a["TaskStates"]["t"];
        assert_eq!(t["Restarts"], 1, "{t}");
        assert_eq!(event_types(t).last().unwrap(), "Not Restarting", "{t}");
    }
    assert_eq!(second["PreviousAllocation"], first["ID"], "{second}");
    assert_eq!(
        second["RescheduleTracker"]["Events"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{second}"
    );
    // One reschedule attempt was allowed: no third allocation follows.
    let summary = agent.client.get("/v1/job/crashy/summary").await.json();
    assert_eq!(summary["Summary"]["g"]["Failed"], 2, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_waits_the_kill_timeout_for_a_task_that_ignores_its_signal() {
    let agent = DevAgent::start();
    agent.wait_ready().await;
    let mut task = sh(
        "stubborn",
        "trap 'echo got INT' INT; echo ready; while true; do sleep 0.1; done",
    );
    task["KillTimeout"] = json!(2 * SECOND);
    let job = json!({"Job": {"ID": "stubborn", "Type": "service",
                             "TaskGroups": [group("g", json!([task]), json!({}))]}});
    agent.client.post("/v1/jobs", &job).await.expect(200);
    agent.wait_for_status("stubborn", "running").await;
    let id = agent.allocs("stubborn").await[0]["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    let log = agent.alloc_dir(&id).join("alloc/logs/stubborn.stdout.0");
    eventually(Duration::from_secs(10), "the trap is set", || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ready"))
    })
    .await;
    agent.client.delete("/v1/job/stubborn").await.expect(200);
    eventually(
        Duration::from_secs(30),
        "the allocation completes",
        || async { agent.alloc(&id).await["ClientStatus"] == "complete" },
    )
    .await;
    let state = &agent.alloc(&id).await["TaskStates"]["stubborn"];
    let time_of = |kind: &str| {
        state["Events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["Type"] == kind)
            .and_then(|e| e["Time"].as_i64())
            .unwrap_or_else(|| panic!("no {kind} event in {state}"))
    };
    let waited = time_of("Killed") - time_of("Killing");
    assert!(
        waited >= 2 * SECOND,
        "killed after {waited} ns, before the 2 s kill_timeout: {state}"
    );
    assert!(
        std::fs::read_to_string(&log).unwrap().contains("got INT"),
        "the kill signal reached the task first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_proceeds_as_new_allocations_turn_healthy() {
    let agent = DevAgent::start();
    agent.wait_ready().await;
    let job = |version: &str| {
        let mut task = sh("t", "echo $VERSION; exec sleep 3600");
        task["Env"] = json!({ "VERSION": version });
        json!({"Job": {"ID": "rolling", "Type": "service", "TaskGroups": [group(
            "g",
            json!([task]),
            json!({
                "Count": 3,
                "Update": {"MaxParallel": 1, "HealthCheck": "task_states",
                           "MinHealthyTime": SECOND / 5, "HealthyDeadline": 30 * SECOND,
                           "ProgressDeadline": 60 * SECOND},
            }),
        )]}})
    };
    agent.client.post("/v1/jobs", &job("v1")).await.expect(200);
    eventually(
        Duration::from_secs(30),
        "three healthy allocations",
        || async {
            let allocs = agent.allocs("rolling").await;
            allocs.len() == 3
                && allocs.iter().all(|a| {
                    a["DeploymentStatus"]["Healthy"] == true && a["ClientStatus"] == "running"
                })
        },
    )
    .await;

    // A destructive change: replaced one at a time, each after the previous one turned healthy.
    agent.client.post("/v1/jobs", &job("v2")).await.expect(200);
    eventually(
        Duration::from_secs(60),
        "three healthy allocations of version 1, the old three stopped",
        || async {
            let allocs = agent.allocs("rolling").await;
            let new: Vec<&Value> = allocs.iter().filter(|a| a["JobVersion"] == 1).collect();
            let old_stopped = allocs
                .iter()
                .filter(|a| a["JobVersion"] == 0)
                .all(|a| a["DesiredStatus"] == "stop");
            new.len() == 3
                && old_stopped
                && new.iter().all(|a| a["DeploymentStatus"]["Healthy"] == true)
        },
    )
    .await;
}
