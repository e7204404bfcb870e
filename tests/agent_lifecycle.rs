//! Task lifecycle hooks on a real dev agent with raw_exec tasks: prestart tasks run to
//! completion before the main tasks start, prestart sidecars start first and keep running,
//! poststart tasks start once the main tasks run, sidecars are stopped when the main tasks are
//! done, a leader's end stops its siblings, a failing prestart task fails the allocation
//! without starting the main tasks, and poststop tasks run last, however the group ended.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::agent::{DevAgent, event_types};
use support::eventually;

/// A raw_exec task running `script` under /bin/sh, with an optional lifecycle hook.
fn task(name: &str, hook: Option<(&str, bool)>, script: &str) -> Value {
    let mut t = json!({
        "Name": name, "Driver": "raw_exec",
        "Config": {"command": "/bin/sh", "args": ["-c", script]},
        "KillTimeout": 2_000_000_000,
        "Resources": {"CPU": 50, "MemoryMB": 32},
    });
    if let Some((hook, sidecar)) = hook {
        t["Lifecycle"] = json!({"Hook": hook, "Sidecar": sidecar});
    }
    t
}

fn job(id: &str, kind: &str, tasks: Vec<Value>) -> Value {
    json!({"Job": {
        "ID": id, "Type": kind,
        "TaskGroups": [{
            "Name": "g", "Count": 1,
            "RestartPolicy": {"Attempts": 0, "Interval": 60_000_000_000i64, "Delay": 100_000_000, "Mode": "fail"},
            "ReschedulePolicy": {"Attempts": 0, "Interval": 0, "Unlimited": false, "Delay": 5_000_000_000i64, "DelayFunction": "constant"},
            "Tasks": tasks,
        }]
    }})
}

async fn only_alloc(agent: &DevAgent, job: &str, status: &str) -> Value {
    let id = agent.wait_for_status(job, status).await["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    agent.alloc(&id).await
}

fn nanos(state: &Value, field: &str) -> i64 {
    let text = state[field].as_str().unwrap_or_default();
    caravan_schemas::time::Timestamp::parse(text)
        .ok()
        .and_then(|t| t.unix_nanos())
        .unwrap_or_else(|| panic!("{field} of {state} is not a time"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_order_and_poststop_runs_when_the_job_stops() {
    let agent = DevAgent::start();
    agent.wait_ready().await;
    let tasks = vec![
        task(
            "main",
            None,
            "test -f $NOMAD_ALLOC_DIR/init.done || exit 3; \
             test -f $NOMAD_ALLOC_DIR/side.started || exit 4; \
             touch $NOMAD_ALLOC_DIR/main.started; exec sleep 3600",
        ),
        task(
            "init",
            Some(("prestart", false)),
            "sleep 0.3; touch $NOMAD_ALLOC_DIR/init.done",
        ),
        task(
            "side",
            Some(("prestart", true)),
            "touch $NOMAD_ALLOC_DIR/side.started; exec sleep 3600",
        ),
        task(
            "post",
            Some(("poststart", false)),
            "until test -f $NOMAD_ALLOC_DIR/main.started; do sleep 0.05; done; echo post-ok",
        ),
        task(
            "cleanup",
            Some(("poststop", false)),
            "touch $NOMAD_ALLOC_DIR/cleanup.done",
        ),
    ];
    agent
        .client
        .post("/v1/jobs", &job("hooks", "service", tasks))
        .await
        .expect(200);
    let alloc = only_alloc(&agent, "hooks", "running").await;
    let id = alloc["ID"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(20),
        "the poststart task to complete",
        || async { agent.alloc(&id).await["TaskStates"]["post"]["State"] == "dead" },
    )
    .await;
    let alloc = agent.alloc(&id).await;
    let states = &alloc["TaskStates"];
    for (name, state, failed) in [
        ("init", "dead", false),
        ("side", "running", false),
        ("main", "running", false),
        ("post", "dead", false),
        ("cleanup", "pending", false),
    ] {
        assert_eq!(states[name]["State"], state, "{name}: {}", states[name]);
        assert_eq!(states[name]["Failed"], failed, "{name}: {}", states[name]);
    }
    assert_eq!(states["main"]["Restarts"], 0, "{}", states["main"]);
    assert!(nanos(&states["init"], "FinishedAt") <= nanos(&states["main"], "StartedAt"));
    assert!(nanos(&states["side"], "StartedAt") <= nanos(&states["main"], "StartedAt"));
    assert!(nanos(&states["post"], "StartedAt") >= nanos(&states["main"], "StartedAt"));
    let cleanup_marker = agent.alloc_dir(&id).join("alloc/cleanup.done");
    assert!(
        !cleanup_marker.exists(),
        "poststop ran before the job stopped"
    );

    // Stopping the job stops main and the sidecar, then runs the poststop task.
    agent.client.delete("/v1/job/hooks").await.expect(200);
    let alloc = only_alloc(&agent, "hooks", "complete").await;
    let states = &alloc["TaskStates"];
    for name in ["init", "side", "main", "post", "cleanup"] {
        assert_eq!(states[name]["State"], "dead", "{name}: {}", states[name]);
        assert_eq!(states[name]["Failed"], false, "{name}: {}", states[name]);
    }
    assert!(cleanup_marker.exists(), "the poststop task did not run");
    assert!(nanos(&states["cleanup"], "StartedAt") >= nanos(&states["main"], "FinishedAt"));
    assert!(event_types(&states["side"]).contains(&"Killed".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_and_siblings_stop_with_the_main_tasks_and_failures_stop_the_group() {
    let agent = DevAgent::start();
    agent.wait_ready().await;

    // A batch job whose main task completes: its sidecar is stopped, the allocation completes.
    agent
        .client
        .post(
            "/v1/jobs",
            &job(
                "batch",
                "batch",
                vec![
                    task("main", None, "sleep 0.2; echo done"),
                    task("side", Some(("prestart", true)), "exec sleep 3600"),
                ],
            ),
        )
        .await
        .expect(200);
    // A leader whose end stops its sibling.
    agent
        .client
        .post(
            "/v1/jobs",
            &job(
                "leader",
                "batch",
                vec![
                    {
                        let mut t = task("leader", None, "sleep 0.2");
                        t["Leader"] = json!(true);
                        t
                    },
                    task("follower", None, "exec sleep 3600"),
                ],
            ),
        )
        .await
        .expect(200);
    // A prestart task that fails: the main task never starts, the poststop task still runs.
    agent
        .client
        .post(
            "/v1/jobs",
            &job(
                "badinit",
                "service",
                vec![
                    task(
                        "main",
                        None,
                        "touch $NOMAD_ALLOC_DIR/main.ran; exec sleep 3600",
                    ),
                    task("init", Some(("prestart", false)), "exit 7"),
                    task(
                        "cleanup",
                        Some(("poststop", false)),
                        "touch $NOMAD_ALLOC_DIR/cleanup.done",
                    ),
                ],
            ),
        )
        .await
        .expect(200);

    let alloc = only_alloc(&agent, "batch", "complete").await;
    let side = &alloc["TaskStates"]["side"];
    assert_eq!(side["State"], "dead", "{side}");
    assert_eq!(side["Failed"], false, "{side}");
    assert!(
        event_types(side).contains(&"Main Tasks Dead".to_owned()),
        "{side}"
    );

    let alloc = only_alloc(&agent, "leader", "complete").await;
    let follower = &alloc["TaskStates"]["follower"];
    assert_eq!(follower["State"], "dead", "{follower}");
    assert!(
        event_types(follower).contains(&"Leader Task Dead".to_owned()),
        "{follower}"
    );

    let alloc = only_alloc(&agent, "badinit", "failed").await;
    let states = &alloc["TaskStates"];
    let id = alloc["ID"].as_str().unwrap();
    assert_eq!(states["init"]["Failed"], true, "{}", states["init"]);
    assert_eq!(states["main"]["State"], "dead", "{}", states["main"]);
    assert!(
        !event_types(&states["main"]).contains(&"Started".to_owned()),
        "{}",
        states["main"]
    );
    assert!(!agent.alloc_dir(id).join("alloc/main.ran").exists());
    eventually(
        Duration::from_secs(10),
        "the poststop task to run after the failure",
        || async { agent.alloc_dir(id).join("alloc/cleanup.done").exists() },
    )
    .await;
}
