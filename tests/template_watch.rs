//! Templates that re-render while their task runs, with a real `caravan agent -dev`: a raw_exec
//! task's template lists the instances of service `nomadService "…"`; a second job registers
//! that service (and later stops), the rendered file follows, and the template's `change_mode`
//! decides what happens to the task: `restart` restarts it ("Restarting" with "Template with
//! change_mode restart re-rendered"), `signal` sends it `change_signal`, `noop` leaves it be.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::agent::DevAgent;
use support::eventually;

const MS: i64 = 1_000_000;
const WAIT: Duration = Duration::from_secs(30);
const REASON: &str = "Template with change_mode restart re-rendered";

/// A port nothing listens on now (parallel dev agents hand out the same first dynamic port).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The template text: one `address:port` line per instance of `service`.
fn listing(service: &str) -> String {
    format!(
        "{{{{ range nomadService \"{service}\" }}}}{{{{ .Address }}}}:{{{{ .Port }}}}\n{{{{ end }}}}"
    )
}

/// A raw_exec task running `script`, with one template listing `service` into
/// `local/upstreams.txt`.
fn consumer_task(name: &str, script: &str, service: &str, template: Value) -> Value {
    let mut tmpl = json!({"EmbeddedTmpl": listing(service), "DestPath": "local/upstreams.txt"});
    tmpl.as_object_mut()
        .unwrap()
        .extend(template.as_object().unwrap().clone());
    json!({
        "Name": name, "Driver": "raw_exec",
        "Config": {"command": "/bin/sh", "args": ["-c", script]},
        "Resources": {"CPU": 50, "MemoryMB": 32},
        "KillTimeout": 2000 * MS,
        "Templates": [tmpl],
    })
}

fn consumer_job(id: &str, tasks: Vec<Value>) -> Value {
    json!({"Job": {
        "ID": id, "Type": "service",
        "TaskGroups": [{
            "Name": "g", "Count": 1,
            "RestartPolicy": {"Attempts": 0, "Interval": 600_000 * MS, "Delay": 100 * MS, "Mode": "fail"},
            "Tasks": tasks,
        }]
    }})
}

/// Job `id` offering `service` on reserved port `port` (no check: healthy).
fn provider_job(id: &str, service: &str, port: u16) -> Value {
    json!({"Job": {
        "ID": id, "Type": "service",
        "TaskGroups": [{
            "Name": "g", "Count": 1,
            "Networks": [{"ReservedPorts": [{"Label": "http", "Value": port}]}],
            "Tasks": [{
                "Name": "t", "Driver": "raw_exec",
                "Config": {"command": "/bin/sh", "args": ["-c", "exec sleep 300"]},
                "Resources": {"CPU": 50, "MemoryMB": 32},
                "Services": [{"Name": service, "PortLabel": "http"}],
            }]
        }]
    }})
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The task's state in the job's first allocation.
async fn task_state(agent: &DevAgent, job: &str, task: &str) -> Value {
    let allocs = agent.allocs(job).await;
    let Some(id) = allocs.first().and_then(|a| a["ID"].as_str()) else {
        return Value::Null;
    };
    agent.alloc(id).await["TaskStates"][task].clone()
}

fn events<'a>(state: &'a Value, kind: &str) -> Vec<&'a Value> {
    state["Events"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["Type"] == kind).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_template_restarts_its_task_when_the_service_changes() {
    let agent = DevAgent::start();
    agent.wait_ready().await;
    let service = "tplx-restart";
    // The task records each start, so a restart is seen from inside too.
    let task = consumer_task(
        "t",
        "echo started >> local/starts; exec sleep 300",
        service,
        json!({"ChangeMode": "restart"}),
    );
    agent
        .client
        .post("/v1/jobs", &consumer_job("consumer", vec![task]))
        .await
        .expect(200);
    let alloc = agent.wait_for_status("consumer", "running").await;
    let dir = agent
        .alloc_dir(alloc["ID"].as_str().unwrap())
        .join("t/local");
    let file = dir.join("upstreams.txt");
    eventually(WAIT, "the first start", || async {
        read(&dir.join("starts")) == "started\n"
    })
    .await;
    assert_eq!(read(&file), "", "no instance yet");

    let port = free_port();
    agent
        .client
        .post("/v1/jobs", &provider_job("provider", service, port))
        .await
        .expect(200);
    let want = format!("127.0.0.1:{port}\n");
    eventually(WAIT, "the template lists the new instance", || async {
        read(&file) == want
    })
    .await;
    eventually(WAIT, "the task restarted for its template", || async {
        let state = task_state(&agent, "consumer", "t").await;
        state["Restarts"] == 1 && state["State"] == "running"
    })
    .await;
    let state = task_state(&agent, "consumer", "t").await;
    let restarting = events(&state, "Restarting");
    assert_eq!(restarting.len(), 1, "{state}");
    assert_eq!(restarting[0]["RestartReason"], REASON, "{state}");
    assert!(
        restarting[0]["DisplayMessage"]
            .as_str()
            .unwrap()
            .contains(REASON),
        "{state}"
    );
    let signaled = events(&state, "Restart Signaled");
    assert_eq!(signaled.len(), 1, "{state}");
    assert_eq!(signaled[0]["DisplayMessage"], REASON);
    assert_eq!(state["Failed"], false);
    eventually(WAIT, "the second start", || async {
        read(&dir.join("starts")) == "started\nstarted\n"
    })
    .await;

    // The provider stops: the instance leaves the file and the task restarts again.
    agent.client.delete("/v1/job/provider").await.expect(200);
    eventually(WAIT, "the template lists nothing again", || async {
        read(&file).is_empty()
    })
    .await;
    eventually(WAIT, "a second template restart", || async {
        let state = task_state(&agent, "consumer", "t").await;
        state["Restarts"] == 2 && state["State"] == "running"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_and_noop_templates_rewrite_the_file_without_a_restart() {
    let agent = DevAgent::start();
    agent.wait_ready().await;
    let service = "tplx-quiet";
    // `sig` writes a line for each SIGUSR1 it gets; `noop` just sleeps.
    let sig = consumer_task(
        "sig",
        "trap 'echo usr1 >> local/signals' USR1; echo ready > local/ready; while :; do sleep 0.1; done",
        service,
        json!({"ChangeMode": "signal", "ChangeSignal": "SIGUSR1", "Splay": 200 * MS}),
    );
    let noop = consumer_task(
        "noop",
        "exec sleep 300",
        service,
        json!({"ChangeMode": "noop"}),
    );
    agent
        .client
        .post("/v1/jobs", &consumer_job("quiet", vec![sig, noop]))
        .await
        .expect(200);
    let alloc = agent.wait_for_status("quiet", "running").await;
    let alloc_dir = agent.alloc_dir(alloc["ID"].as_str().unwrap());
    let (sig_dir, noop_dir) = (alloc_dir.join("sig/local"), alloc_dir.join("noop/local"));
    eventually(WAIT, "the signal task's trap is set", || async {
        read(&sig_dir.join("ready")) == "ready\n"
    })
    .await;

    let port = free_port();
    agent
        .client
        .post("/v1/jobs", &provider_job("quiet-provider", service, port))
        .await
        .expect(200);
    let want = format!("127.0.0.1:{port}\n");
    eventually(WAIT, "both templates list the new instance", || async {
        read(&sig_dir.join("upstreams.txt")) == want
            && read(&noop_dir.join("upstreams.txt")) == want
    })
    .await;
    eventually(WAIT, "the signal task got SIGUSR1", || async {
        read(&sig_dir.join("signals")) == "usr1\n"
    })
    .await;
    // Task events reach the servers in the client's next status batch.
    eventually(WAIT, "the Signaling event is reported", || async {
        !events(&task_state(&agent, "quiet", "sig").await, "Signaling").is_empty()
    })
    .await;
    let sig_state = task_state(&agent, "quiet", "sig").await;
    let signaling = events(&sig_state, "Signaling");
    assert_eq!(signaling.len(), 1, "{sig_state}");
    assert_eq!(signaling[0]["TaskSignal"], "SIGUSR1");
    assert_eq!(signaling[0]["DisplayMessage"], "Template re-rendered");
    for (task, state) in [
        ("sig", sig_state),
        ("noop", task_state(&agent, "quiet", "noop").await),
    ] {
        assert_eq!(state["Restarts"], 0, "{task}: {state}");
        assert_eq!(state["State"], "running", "{task}: {state}");
        assert!(events(&state, "Restarting").is_empty(), "{task}: {state}");
    }
    assert!(events(&task_state(&agent, "quiet", "noop").await, "Signaling").is_empty());
}
