//! `caravan agent -dev` as a user runs it: the client half registers a node and runs raw_exec
//! tasks for real — a batch job completes and is not restarted, a failing task is restarted per
//! its policy and then fails, and stopping a job kills its processes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::agent::{DevAgent, spawn_agent};
use support::client::Client;
use support::eventually;

fn job(id: &str, kind: &str, script: &str, restart_attempts: i64) -> Value {
    json!({"Job": {
        "ID": id, "Type": kind,
        "TaskGroups": [{
            "Name": "g", "Count": 1,
            "RestartPolicy": {"Attempts": restart_attempts, "Interval": 60_000_000_000i64, "Delay": 100_000_000, "Mode": "fail"},
            "ReschedulePolicy": {"Attempts": 0, "Interval": 0, "Unlimited": false, "Delay": 5_000_000_000i64, "DelayFunction": "constant"},
            "Tasks": [{"Name": "t", "Driver": "raw_exec",
                       "Config": {"command": "/bin/sh", "args": ["-c", script]},
                       "KillTimeout": 2_000_000_000,
                       "Resources": {"CPU": 100, "MemoryMB": 64}}]
        }]
    }})
}

fn pids_of(marker: &str) -> usize {
    let out = Command::new("pgrep").args(["-f", marker]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_agent_runs_raw_exec_tasks() {
    let agent = DevAgent::start();
    eventually(Duration::from_secs(20), "one ready node", || async {
        let nodes = agent.client.get("/v1/nodes").await;
        nodes.status == 200
            && nodes
                .json()
                .as_array()
                .is_some_and(|n| n.len() == 1 && n[0]["Status"] == "ready")
    })
    .await;

    // A batch job completes and is not restarted; its output is in the task's log file.
    agent
        .client
        .post(
            "/v1/jobs",
            &job(
                "once",
                "batch",
                "echo ran ${NOMAD_JOB_ID} ${NOMAD_ALLOC_INDEX}",
                3,
            ),
        )
        .await
        .expect(200);
    agent.wait_for_status("once", "complete").await;
    let alloc = &agent.allocs("once").await[0];
    let state = &alloc["TaskStates"]["t"];
    assert_eq!(state["Restarts"], 0, "{state}");
    assert_eq!(state["Failed"], false);
    let events: Vec<&str> = state["Events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Type"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["Received", "Task Setup", "Started", "Terminated"],
        "{state}"
    );
    let log = agent
        .dir
        .path()
        .join("client/allocs")
        .join(alloc["ID"].as_str().unwrap())
        .join("alloc/logs/t.stdout.0");
    assert_eq!(std::fs::read_to_string(log).unwrap(), "ran once 0\n");

    // A failing task is restarted per its policy (2 attempts), then fails.
    agent
        .client
        .post("/v1/jobs", &job("flaky", "batch", "exit 3", 2))
        .await
        .expect(200);
    agent.wait_for_status("flaky", "failed").await;
    let state = agent.allocs("flaky").await[0]["TaskStates"]["t"].clone();
    assert_eq!(state["Restarts"], 2, "{state}");
    assert_eq!(state["Failed"], true);
    let last = state["Events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["Type"], "Not Restarting", "{state}");

    // A service runs until stopped; stopping kills its processes.
    let marker = format!("caravan-dev-test-{}", support::random_suffix());
    agent
        .client
        .post(
            "/v1/jobs",
            &job("svc", "service", &format!("sleep 300; echo {marker}"), 0),
        )
        .await
        .expect(200);
    agent.wait_for_status("svc", "running").await;
    eventually(Duration::from_secs(5), "its process exists", || async {
        pids_of(&marker) >= 1
    })
    .await;
    agent.client.delete("/v1/job/svc").await.expect(200);
    eventually(
        Duration::from_secs(20),
        "the service's process is gone",
        || async { pids_of(&marker) == 0 },
    )
    .await;
    agent.wait_for_status("svc", "complete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_that_dies_has_its_allocations_replaced_on_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.hcl");
    std::fs::write(
        &config,
        "server {\n  min_heartbeat_ttl = \"1s\"\n  heartbeat_grace   = \"1s\"\n}\n",
    )
    .unwrap();
    let (mut first, addr) = spawn_agent(&[
        "agent",
        "-dev",
        "-http-port",
        "0",
        "-node",
        "first",
        "-config",
        config.to_str().unwrap(),
        "-data-dir",
        dir.path().join("first").to_str().unwrap(),
    ]);
    let addr = addr.unwrap();
    let client = Client::new(&format!("http://{addr}"));
    let client_config = dir.path().join("client.hcl");
    std::fs::write(
        &client_config,
        "plugin \"raw_exec\" {\n  config {\n    enabled = true\n  }\n}\n",
    )
    .unwrap();
    let (mut second, _) = spawn_agent(&[
        "agent",
        "-client",
        "-servers",
        &addr,
        "-node",
        "second",
        "-config",
        client_config.to_str().unwrap(),
        "-data-dir",
        dir.path().join("second").to_str().unwrap(),
    ]);
    let ready = |n: &Value| n["Status"] == "ready";
    eventually(Duration::from_secs(20), "two ready nodes", || async {
        client
            .get("/v1/nodes")
            .await
            .json()
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(ready))
    })
    .await;
    let nodes = client.get("/v1/nodes").await.json();
    let second_id = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["Name"] == "second")
        .unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_owned();

    let marker = format!("caravan-two-clients-{}", support::random_suffix());
    let mut spec = job("spread", "service", &format!("sleep 300; echo {marker}"), 0);
    spec["Job"]["TaskGroups"][0]["Count"] = json!(2);
    client.post("/v1/jobs", &spec).await.expect(200);
    let running_on = |allocs: &Vec<Value>, node: &str| {
        allocs
            .iter()
            .filter(|a| {
                a["DesiredStatus"] == "run" && a["ClientStatus"] == "running" && a["NodeID"] == node
            })
            .count()
    };
    let allocs_of = || async {
        client
            .get("/v1/job/spread/allocations")
            .await
            .json()
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    eventually(
        Duration::from_secs(20),
        "one allocation running on each node",
        || async {
            let allocs = allocs_of().await;
            running_on(&allocs, &second_id) == 1
                && allocs
                    .iter()
                    .filter(|a| a["ClientStatus"] == "running")
                    .count()
                    == 2
        },
    )
    .await;

    // The second agent dies; its node misses its heartbeats and its allocation moves.
    let _ = second.kill();
    let _ = second.wait();
    eventually(
        Duration::from_secs(30),
        "the second node is down and its work runs on the first",
        || async {
            let node = client.get(&format!("/v1/node/{second_id}")).await.json();
            let allocs = allocs_of().await;
            let live: Vec<&Value> = allocs
                .iter()
                .filter(|a| a["DesiredStatus"] == "run")
                .collect();
            node["Status"] == "down"
                && live.len() == 2
                && live
                    .iter()
                    .all(|a| a["NodeID"] != second_id.as_str() && a["ClientStatus"] == "running")
        },
    )
    .await;

    client.delete("/v1/job/spread").await.expect(200);
    let _ = first.kill();
    let _ = first.wait();
    // The dead client's task outlived it (tasks survive their agent); clean it up.
    let _ = Command::new("pkill").args(["-f", &marker]).status();
}

fn caravan_cli(addr: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(args)
        .env("CARAVAN_ADDR", addr)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alloc_logs_prints_and_follows_a_tasks_output() {
    let agent = DevAgent::start();
    let addr = agent.client.base().to_owned();
    eventually(Duration::from_secs(20), "a ready node", || async {
        agent
            .client
            .get("/v1/nodes")
            .await
            .json()
            .as_array()
            .is_some_and(|n| n.len() == 1)
    })
    .await;
    let script = "i=0; while true; do echo line $i; echo err $i >&2; i=$((i+1)); sleep 0.2; done";
    agent
        .client
        .post("/v1/jobs", &job("talker", "service", script, 0))
        .await
        .expect(200);
    agent.wait_for_status("talker", "running").await;
    let alloc = agent.allocs("talker").await[0]["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    let short = &alloc[..8];
    eventually(Duration::from_secs(10), "a few lines logged", || async {
        String::from_utf8_lossy(&caravan_cli(&addr, &["alloc", "logs", short, "t"]).stdout)
            .lines()
            .count()
            >= 3
    })
    .await;
    let out = caravan_cli(&addr, &["alloc", "logs", short]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("line 0\nline 1\n"), "{text}");
    let err =
        String::from_utf8_lossy(&caravan_cli(&addr, &["alloc", "logs", "-stderr", short]).stdout)
            .into_owned();
    assert!(err.starts_with("err 0\n"), "{err}");
    let tail = String::from_utf8_lossy(
        &caravan_cli(&addr, &["alloc", "logs", "-tail", "-n", "2", short]).stdout,
    )
    .into_owned();
    assert_eq!(tail.lines().count(), 2, "{tail}");

    // -f keeps printing what comes after.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(["alloc", "logs", "-f", short])
        .env("CARAVAN_ADDR", &addr)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let already = text.lines().count();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = 0;
    while seen < already + 5 {
        assert!(Instant::now() < deadline, "-f printed only {seen} lines");
        lines.next().expect("more output").unwrap();
        seen += 1;
    }
    let _ = follow.kill();
    let _ = follow.wait();
    agent.client.delete("/v1/job/talker").await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_keep_running_across_an_agent_restart_and_are_re_attached() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (mut first, addr) = spawn_agent(&["agent", "-dev", "-http-port", "0", "-data-dir", data]);
    let client = Client::new(&format!("http://{}", addr.unwrap()));
    eventually(Duration::from_secs(20), "a ready node", || async {
        client
            .get("/v1/nodes")
            .await
            .json()
            .as_array()
            .is_some_and(|n| n.len() == 1)
    })
    .await;
    let marker = format!("caravan-restart-{}", support::random_suffix());
    client
        .post(
            "/v1/jobs",
            &job(
                "durable",
                "service",
                &format!("sleep 300; echo {marker}"),
                2,
            ),
        )
        .await
        .expect(200);
    eventually(Duration::from_secs(20), "the task runs", || async {
        pids_of(&marker) == 1
    })
    .await;
    let pid_before = String::from_utf8_lossy(
        &Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_owned();

    // The agent dies; its task does not.
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(pids_of(&marker), 1, "the task outlives its agent");

    let (mut second, addr) = spawn_agent(&["agent", "-dev", "-http-port", "0", "-data-dir", data]);
    let client = Client::new(&format!("http://{}", addr.unwrap()));
    eventually(
        Duration::from_secs(20),
        "the allocation is running again under the new agent",
        || async {
            let allocs = client.get("/v1/job/durable/allocations").await;
            allocs.status == 200
                && allocs
                    .json()
                    .as_array()
                    .is_some_and(|a| a.len() == 1 && a[0]["ClientStatus"] == "running")
        },
    )
    .await;
    let pid_after = String::from_utf8_lossy(
        &Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_owned();
    assert_eq!(pid_before, pid_after, "the same process, not a restart");
    let alloc = client.get("/v1/job/durable/allocations").await.json()[0].clone();
    assert_eq!(alloc["TaskStates"]["t"]["Restarts"], 0, "{alloc}");

    // And the new agent can still stop it.
    client.delete("/v1/job/durable").await.expect(200);
    eventually(
        Duration::from_secs(20),
        "the task is stopped by the new agent",
        || async { pids_of(&marker) == 0 },
    )
    .await;
    let _ = second.kill();
    let _ = second.wait();
    let _ = Command::new("pkill").args(["-f", &marker]).status();
}
