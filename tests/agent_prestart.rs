//! Artifacts and templates on a real `caravan agent -dev`: a raw_exec task gets a tar.gz with
//! its script from an HTTP server on 127.0.0.1, a template with its port and an `env = true`
//! template with its environment, and its output shows both. A template that cannot render
//! fails the task; an artifact that cannot be fetched is retried per the restart policy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::io::Write as _;
use std::time::Duration;
use support::agent::DevAgent;
use support::eventually;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Serves `files` (path → bytes) over HTTP/1.1 on 127.0.0.1; 404 for anything else.
async fn file_server(files: Vec<(&'static str, Vec<u8>)>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let files = files.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = req.split_whitespace().nth(1).unwrap_or("").to_owned();
                let (status, body) = match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => ("200 OK", body.clone()),
                    None => ("404 Not Found", b"not found".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
            });
        }
    });
    addr
}

fn tar_gz(files: &[(&str, &str, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_cksum();
        b.append_data(&mut h, path, data.as_bytes()).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&b.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn job(id: &str, task: Value, restart_attempts: i64) -> Value {
    json!({"Job": {
        "ID": id, "Type": "batch",
        "TaskGroups": [{
            "Name": "g", "Count": 1,
            "Networks": [{"DynamicPorts": [{"Label": "http"}]}],
            "RestartPolicy": {"Attempts": restart_attempts, "Interval": 60_000_000_000i64, "Delay": 100_000_000, "Mode": "fail"},
            "ReschedulePolicy": {"Attempts": 0, "Interval": 0, "Unlimited": false, "Delay": 5_000_000_000i64, "DelayFunction": "constant"},
            "Tasks": [task]
        }]
    }})
}

fn event_types(alloc: &Value) -> Vec<String> {
    alloc["TaskStates"]["t"]["Events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_exec_task_gets_its_artifact_and_templates() {
    let script = "#!/bin/sh\necho \"greeting=$GREETING\"\ncat \"$NOMAD_TASK_DIR/port.conf\"\n";
    let archive = tar_gz(&[("bin/hello.sh", script, 0o755)]);
    let server = file_server(vec![("/dl/hello.tar.gz", archive.clone())]).await;
    let agent = DevAgent::start();
    eventually(Duration::from_secs(20), "a ready node", || async {
        let nodes = agent.client.get("/v1/nodes").await;
        nodes.status == 200 && nodes.json()[0]["Status"] == "ready"
    })
    .await;

    let task = json!({
        "Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/sh", "args": ["-c", "exec ${NOMAD_TASK_DIR}/app/bin/hello.sh"]},
        "Resources": {"CPU": 100, "MemoryMB": 64},
        "Artifacts": [{
            "GetterSource": format!("http://{server}/dl/hello.tar.gz"),
            "GetterOptions": {"checksum": format!("sha256:{}", sha256(&archive))},
            "RelativeDest": "local/app"
        }],
        "Templates": [
            {"EmbeddedTmpl": "port={{ env \"NOMAD_PORT_http\" }}\n", "DestPath": "local/port.conf"},
            {"EmbeddedTmpl": "# from a template\nGREETING=\"hello {{ env \"NOMAD_JOB_ID\" | toUpper }}\"\n",
             "DestPath": "${NOMAD_SECRETS_DIR}/app.env", "Envvars": true}
        ]
    });
    agent
        .client
        .post("/v1/jobs", &job("prestart", task, 0))
        .await
        .expect(200);
    let alloc = agent.wait_for_status("prestart", "complete").await;
    assert_eq!(
        event_types(&alloc),
        [
            "Received",
            "Task Setup",
            "Downloading Artifacts",
            "Started",
            "Terminated"
        ],
        "{alloc}"
    );
    let id = alloc["ID"].as_str().unwrap();
    let full = agent
        .client
        .get(&format!("/v1/allocation/{id}"))
        .await
        .json();
    let port = full["AllocatedResources"]["Shared"]["Ports"][0]["Value"]
        .as_i64()
        .unwrap_or_else(|| panic!("an allocated port in {full}"));
    let log = agent
        .dir
        .path()
        .join("client/allocs")
        .join(alloc["ID"].as_str().unwrap())
        .join("alloc/logs/t.stdout.0");
    assert_eq!(
        std::fs::read_to_string(log).unwrap(),
        format!("greeting=hello PRESTART\nport={port}\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_template_fails_the_task_and_a_missing_artifact_is_retried() {
    let server = file_server(Vec::new()).await;
    let agent = DevAgent::start();
    eventually(Duration::from_secs(20), "a ready node", || async {
        let nodes = agent.client.get("/v1/nodes").await;
        nodes.status == 200 && nodes.json()[0]["Status"] == "ready"
    })
    .await;

    // A template calling a Consul function fails the task, without a restart.
    let task = json!({
        "Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/true"},
        "Resources": {"CPU": 100, "MemoryMB": 64},
        "Templates": [{"EmbeddedTmpl": "ok\n{{ key \"service/x\" }}", "DestPath": "local/x.conf"}]
    });
    agent
        .client
        .post("/v1/jobs", &job("badtmpl", task, 3))
        .await
        .expect(200);
    let alloc = agent.wait_for_status("badtmpl", "failed").await;
    assert_eq!(
        event_types(&alloc),
        ["Received", "Task Setup", "Killing"],
        "{alloc}"
    );
    let state = &alloc["TaskStates"]["t"];
    assert_eq!(state["Failed"], true);
    assert_eq!(state["Restarts"], 0);
    let killing = &state["Events"][2];
    assert_eq!(killing["FailsTask"], true);
    let msg = killing["DisplayMessage"].as_str().unwrap();
    assert_eq!(
        msg,
        "Template failed: template \"local/x.conf\": 2:4: function \"key\" is not supported: it reads Consul's KV store, which Caravan does not use"
    );

    // An artifact that is not there: "Failed Artifact Download", retried per the policy.
    let source = format!("http://{server}/missing.tar.gz");
    let task = json!({
        "Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/true"},
        "Resources": {"CPU": 100, "MemoryMB": 64},
        "Artifacts": [{"GetterSource": source}]
    });
    agent
        .client
        .post("/v1/jobs", &job("noartifact", task, 1))
        .await
        .expect(200);
    let alloc = agent.wait_for_status("noartifact", "failed").await;
    assert_eq!(
        event_types(&alloc),
        [
            "Received",
            "Task Setup",
            "Downloading Artifacts",
            "Failed Artifact Download",
            "Restarting",
            "Downloading Artifacts",
            "Failed Artifact Download",
            "Not Restarting"
        ],
        "{alloc}"
    );
    let failed = &alloc["TaskStates"]["t"]["Events"][3];
    assert_eq!(
        failed["DisplayMessage"],
        format!(
            "failed to download artifact \"{source}\": GET {source}: bad response code: 404 Not Found"
        )
    );
    assert_eq!(alloc["TaskStates"]["t"]["Restarts"], 1);
}
