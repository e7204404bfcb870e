//! python-nomad 2.1, unchanged, against a real dev agent: the client Nomad users' scripts use.
//! Needs `python3 -m pip install python-nomad==2.1.0` (hack/setup-test.sh does it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::client::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_nomad_works_unchanged() {
    let check = Command::new("python3")
        .args(["-c", "import nomad"])
        .output()
        .expect("python3 is installed");
    assert!(
        check.status.success(),
        "python-nomad is not installed: run hack/setup-test.sh (python3 -m pip install python-nomad==2.1.0)"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(["agent", "-dev", "-http-port", "0", "-data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        assert!(
            Instant::now() < deadline,
            "the agent did not print its address"
        );
        let line = lines.next().expect("agent output").unwrap();
        if line.contains("Advertise Addrs: HTTP:") {
            break line.rsplit(' ').next().unwrap().trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let client = Client::new(&format!("http://{addr}"));
    support::eventually(Duration::from_secs(10), "a leader", || async {
        client
            .get("/v1/status/leader")
            .await
            .json()
            .as_str()
            .is_some_and(|l| !l.is_empty())
    })
    .await;

    // A simulated node, heartbeating, so the job can be placed.
    let node = json!({"Node": {
        "ID": "0b0c1a2e-0000-4000-8000-000000000001", "Name": "py-node", "Datacenter": "dc1", "Status": "ready",
        "Attributes": {"kernel.name": "linux", "unique.network.ip-address": "127.0.0.1"},
        "NodeResources": {"Cpu": {"CpuShares": 4000}, "Memory": {"MemoryMB": 4096}, "Disk": {"DiskMB": 10000}},
        "Drivers": {"raw_exec": {"Detected": true, "Healthy": true}}
    }});
    client
        .post("/v1/client/node/register", &node)
        .await
        .expect(200);
    let beat = {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                client
                    .put(
                        "/v1/client/node/0b0c1a2e-0000-4000-8000-000000000001/heartbeat",
                        &json!({}),
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };

    let (host, port) = addr.rsplit_once(':').unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/nomad_compat.py");
    let out = tokio::process::Command::new("python3")
        .args([script, host, port])
        .output()
        .await
        .unwrap();
    beat.abort();
    let _ = agent.kill();
    let _ = agent.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python-nomad failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all steps passed"), "{stdout}");
}
