//! The real binary: `caravan agent -dev -http-port 0 -data-dir <tmp>` as a child process,
//! its address read from its banner, then the status and members endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::client::Client;
use support::eventually;

/// The agent process, killed on drop.
struct Agent {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(["agent", "-dev", "-http-port", "0", "-data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start caravan agent");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("Advertise Addrs: HTTP: ").nth(1) {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let mut agent = Agent {
        child,
        addr: String::new(),
        _dir: dir,
    };
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => agent.addr = addr,
        Err(_) => {
            let status = agent.child.try_wait().ok().flatten();
            panic!("the agent printed no address within 60s (exit status: {status:?})");
        }
    }
    agent
}

#[tokio::test]
async fn dev_agent_serves_status_and_members() {
    let agent = start_agent();
    let c = Client::new(&format!("http://{}", agent.addr));
    let addr = agent.addr.clone();
    eventually(
        Duration::from_secs(30),
        "the agent names itself leader",
        || {
            let c = c.clone();
            let addr = addr.clone();
            async move {
                let r = c.get("/v1/status/leader").await;
                r.status == 200 && r.json() == serde_json::Value::String(addr)
            }
        },
    )
    .await;
    let members = c.get("/v1/agent/members").await.expect(200).json();
    let list = members["Members"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{members}");
    assert_eq!(list[0]["Status"], "alive");
    assert_eq!(
        format!("{}:{}", list[0]["Addr"].as_str().unwrap(), list[0]["Port"]),
        agent.addr
    );
    c.get("/v1/agent/health").await.expect(200);
    assert!(
        c.get("/metrics")
            .await
            .expect(200)
            .body
            .contains("caravan_http_requests_total")
    );
}
