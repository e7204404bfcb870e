//! Three real server processes on one etcd: one leads, all serve; killing the leader moves the
//! controllers to another server within seconds, and no job or allocation is lost.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::client::Client;
use support::eventually;

/// A `caravan agent -server` process, killed on drop.
struct ServerProcess {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    fn start(name: &str, region: &str, etcd: &str) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_caravan"))
            .args([
                "agent",
                "-server",
                "-http-port",
                "0",
                "-bind",
                "127.0.0.1",
                "-node",
                name,
                "-region",
                region,
            ])
            .args(["-store", &format!("etcd://{etcd}"), "-data-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start caravan agent");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            assert!(
                Instant::now() < deadline,
                "{name} did not print its address"
            );
            match lines.next() {
                Some(Ok(line)) if line.contains("Advertise Addrs: HTTP:") => {
                    break line.rsplit(' ').next().unwrap().trim().to_owned();
                }
                Some(Ok(_)) => {}
                _ => panic!("{name} exited before printing its address"),
            }
        };
        // Keep draining stdout so the agent never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ServerProcess {
            child,
            addr,
            _dir: dir,
        }
    }

    fn client(&self) -> Client {
        Client::new(&format!("http://{}", self.addr))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn leader_of(c: &Client) -> Option<String> {
    let resp = c.get("/v1/status/leader").await;
    (resp.status == 200)
        .then(|| resp.json().as_str().unwrap_or_default().to_owned())
        .filter(|s| !s.is_empty())
}

fn node(id: &str) -> Value {
    json!({
        "ID": id, "Name": format!("node-{id}"), "Datacenter": "dc1", "NodePool": "default", "Status": "ready",
        "Attributes": {"kernel.name": "linux", "unique.network.ip-address": "127.0.0.1"},
        "NodeResources": {"Cpu": {"CpuShares": 8000}, "Memory": {"MemoryMB": 8192}, "Disk": {"DiskMB": 100000}},
        "Drivers": {"raw_exec": {"Detected": true, "Healthy": true}}
    })
}

fn job(id: &str, count: i64) -> Value {
    json!({"Job": {
        "ID": id, "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": "g", "Count": count, "Tasks": [{
            "Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"},
            "Resources": {"CPU": 100, "MemoryMB": 64}}]}]
    }})
}

async fn running_allocs(c: &Client, job: &str) -> usize {
    let resp = c.get(&format!("/v1/job/{job}/allocations")).await;
    if resp.status != 200 {
        return 0;
    }
    resp.json().as_array().map_or(0, |a| {
        a.iter().filter(|x| x["DesiredStatus"] == "run").count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_moves_the_controllers_and_loses_nothing() {
    let etcd = support::etcd::TestEtcd::start();
    let region = format!("r{}", support::random_suffix());
    let mut servers: Vec<ServerProcess> = (1..=3)
        .map(|i| ServerProcess::start(&format!("s{i}"), &region, &etcd.endpoint()))
        .collect();
    let clients: Vec<Client> = servers.iter().map(ServerProcess::client).collect();

    // All three agree on one leader, and list each other.
    eventually(Duration::from_secs(20), "one agreed leader", || async {
        let mut seen = Vec::new();
        for c in &clients {
            seen.push(leader_of(c).await);
        }
        seen[0].is_some() && seen.iter().all(|l| *l == seen[0])
    })
    .await;
    let leader = leader_of(&clients[0]).await.unwrap();
    // Each server registers itself on its own schedule: wait until all three are listed.
    eventually(Duration::from_secs(20), "three members listed", || async {
        let members = clients[1].get("/v1/agent/members").await.json();
        members["Members"].as_array().is_some_and(|m| m.len() == 3)
    })
    .await;

    // A node (heartbeating through any live server) and a job, written through a follower.
    let follower = servers.iter().position(|s| s.addr != leader).unwrap();
    clients[follower]
        .post("/v1/client/node/register", &json!({ "Node": node("n1") }))
        .await
        .expect(200);
    let beat = {
        let clients = clients.clone();
        tokio::spawn(async move {
            loop {
                for c in &clients {
                    c.put("/v1/client/node/n1/heartbeat", &json!({})).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    clients[follower]
        .post("/v1/jobs", &job("before", 3))
        .await
        .expect(200);
    eventually(
        Duration::from_secs(20),
        "3 allocations placed by the leader",
        || async { running_allocs(&clients[follower], "before").await == 3 },
    )
    .await;

    // Kill the leader.
    let leader_index = servers.iter().position(|s| s.addr == leader).unwrap();
    servers[leader_index].kill();
    let survivors: Vec<Client> = clients
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader_index)
        .map(|(_, c)| c.clone())
        .collect();
    let killed_at = Instant::now();
    eventually(
        Duration::from_secs(15),
        "a new leader among the survivors",
        || async {
            match leader_of(&survivors[0]).await {
                Some(l) => {
                    l != leader && leader_of(&survivors[1]).await.as_deref() == Some(l.as_str())
                }
                None => false,
            }
        },
    )
    .await;
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );

    // Nothing was lost, and the new leader's controllers place new work.
    assert_eq!(
        survivors[0].get("/v1/job/before").await.json()["ID"],
        "before"
    );
    assert_eq!(running_allocs(&survivors[1], "before").await, 3);
    survivors[1]
        .post("/v1/jobs", &job("after", 2))
        .await
        .expect(200);
    eventually(
        Duration::from_secs(20),
        "the new leader places the new job",
        || async { running_allocs(&survivors[0], "after").await == 2 },
    )
    .await;
    beat.abort();
}
