//! The client loop against a real server: drivers whose health changes after registration are
//! reported again (periodic re-fingerprint), and the agent config's `reserved` block reaches the
//! node the servers schedule on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use caravan::agent::client::{ClientConfig, start};
use caravan::agent::fingerprint::FingerprintConfig;
use caravan::drivers::mock::MockDriver;
use caravan::drivers::{Driver, Fingerprint};
use caravan_schemas::ids::NodeId;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use support::agent::DevAgent;
use support::eventually;
use support::server::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_whose_health_changes_is_reported_again() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mock = Arc::new(MockDriver::new());
    let node_id = "3c3c0a36-64b2-4f43-a7fb-7b0e1c1d2e3f";
    let fingerprint = FingerprintConfig {
        node_id: NodeId::new(node_id),
        name: "refingerprint".into(),
        datacenter: "dc1".into(),
        node_pool: "default".into(),
        data_dir: dir.path().to_path_buf(),
        http_addr: server.addr.clone(),
        ..FingerprintConfig::default()
    };
    start(
        ClientConfig {
            servers: vec![server.addr.clone()],
            data_dir: dir.path().to_path_buf(),
            fingerprint,
            refingerprint_interval: Duration::from_millis(100),
        },
        vec![Arc::clone(&mock) as Arc<dyn Driver>],
    )
    .await
    .unwrap();
    let client = server.client();
    let driver_health = || async {
        let node = client.get(&format!("/v1/node/{node_id}")).await.json();
        (
            node["Drivers"]["mock"]["Healthy"].as_bool(),
            node["Attributes"]["driver.mock"]
                .as_str()
                .map(str::to_owned),
        )
    };
    eventually(
        Duration::from_secs(10),
        "the healthy mock driver",
        || async { driver_health().await == (Some(true), Some("1".to_owned())) },
    )
    .await;

    mock.set_fingerprint(Fingerprint::unhealthy(true, "the socket is gone"));
    eventually(
        Duration::from_secs(10),
        "the driver reported unhealthy",
        || async { driver_health().await == (Some(false), None) },
    )
    .await;
    let node = client.get(&format!("/v1/node/{node_id}")).await.json();
    assert_eq!(
        node["Drivers"]["mock"]["HealthDescription"],
        "the socket is gone"
    );
    assert_eq!(node["Status"], "ready", "{node}");

    mock.set_fingerprint(Fingerprint::healthy(BTreeMap::from([(
        "driver.mock".to_owned(),
        "1".to_owned(),
    )])));
    eventually(
        Duration::from_secs(10),
        "the driver healthy again",
        || async { driver_health().await == (Some(true), Some("1".to_owned())) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_reserved_block_reaches_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.hcl");
    std::fs::write(
        &config,
        r#"client {
  reserved {
    cpu            = 300
    memory         = 128
    disk           = 512
    reserved_ports = "22,8000-8010"
  }
}
"#,
    )
    .unwrap();
    let agent = DevAgent::start_with(&["-config", config.to_str().unwrap()]);
    agent.wait_ready().await;
    let nodes = agent.client.get("/v1/nodes").await.json();
    let id = nodes[0]["ID"].as_str().unwrap();
    let node = agent.client.get(&format!("/v1/node/{id}")).await.json();
    let reserved = &node["ReservedResources"];
    assert_eq!(reserved["Cpu"]["CpuShares"], 300, "{reserved}");
    assert_eq!(reserved["Memory"]["MemoryMB"], 128, "{reserved}");
    assert_eq!(reserved["Disk"]["DiskMB"], 512, "{reserved}");
    assert_eq!(
        reserved["Networks"]["ReservedHostPorts"], "22,8000-8010",
        "{reserved}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_options_enable_and_choose_drivers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.hcl");
    std::fs::write(
        &config,
        r#"client {
  options = {
    "driver.raw_exec.enable" = "1"
    "driver.denylist"        = "java, docker"
  }
}
"#,
    )
    .unwrap();
    // Not -dev: raw_exec is on only because the options say so.
    let data = dir.path().join("data");
    let (mut child, addr) = support::agent::spawn_agent(&[
        "agent",
        "-server",
        "-client",
        "-http-port",
        "0",
        "-data-dir",
        data.to_str().unwrap(),
        "-config",
        config.to_str().unwrap(),
    ]);
    let client = support::client::Client::new(&format!("http://{}", addr.unwrap()));
    eventually(Duration::from_secs(30), "the node registers", || async {
        client
            .get("/v1/nodes")
            .await
            .json()
            .as_array()
            .is_some_and(|n| n.len() == 1)
    })
    .await;
    let id = client.get("/v1/nodes").await.json()[0]["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    let node = client.get(&format!("/v1/node/{id}")).await.json();
    let _ = child.kill();
    let _ = child.wait();
    let drivers = node["Drivers"].as_object().unwrap();
    assert!(drivers.contains_key("raw_exec"), "{node}");
    assert_eq!(node["Drivers"]["raw_exec"]["Healthy"], true, "{node}");
    assert!(!drivers.contains_key("java"), "{node}");
    assert!(!drivers.contains_key("docker"), "{node}");
    assert!(drivers.contains_key("exec"), "{node}");
}
