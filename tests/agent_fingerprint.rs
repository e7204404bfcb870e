//! Fingerprinting the real machine this test runs on.
#![allow(clippy::unwrap_used)]

use caravan::agent::fingerprint::{FingerprintConfig, Reserved, fingerprint, node_id};
use caravan::drivers::{
    Driver, DriverError, ExitResult, Fingerprint, TaskConfig, TaskHandle, TaskStatus,
};
use caravan_schemas::ids::NodeId;
use caravan_schemas::node::{NodeStatus, SchedulingEligibility};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
struct FakeDriver {
    name: &'static str,
    fingerprint: Fingerprint,
}

#[async_trait::async_trait]
impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        self.name
    }
    async fn fingerprint(&self) -> Fingerprint {
        self.fingerprint.clone()
    }
    async fn start(&self, _: &TaskConfig) -> Result<TaskHandle, DriverError> {
        Err(DriverError::NotSupported("start"))
    }
    async fn wait(&self, _: &TaskHandle) -> Result<ExitResult, DriverError> {
        Err(DriverError::NotSupported("wait"))
    }
    async fn stop(&self, _: &TaskHandle, _: Duration, _: &str) -> Result<(), DriverError> {
        Ok(())
    }
    async fn destroy(&self, _: &TaskHandle) -> Result<(), DriverError> {
        Ok(())
    }
    async fn inspect(&self, _: &TaskHandle) -> Result<TaskStatus, DriverError> {
        Ok(TaskStatus::Unknown)
    }
    async fn recover(&self, _: &TaskHandle) -> Result<(), DriverError> {
        Err(DriverError::NotSupported("recover"))
    }
    async fn signal(&self, _: &TaskHandle, _: &str) -> Result<(), DriverError> {
        Ok(())
    }
}

fn config(data_dir: &std::path::Path) -> FingerprintConfig {
    FingerprintConfig {
        node_id: NodeId::new("f7476465-4d6e-c0de-26d0-e383c49be941"),
        name: "client-1".into(),
        datacenter: "dc1".into(),
        node_class: "batch".into(),
        node_pool: "default".into(),
        meta: BTreeMap::from([("rack".to_owned(), "r1".to_owned())]),
        data_dir: data_dir.join("not-yet-created"),
        http_addr: "10.0.0.5:4646".into(),
        network_interface: None,
        reserved: Reserved {
            cpu_mhz: 500,
            memory_mb: 256,
            disk_mb: 1024,
            ports: "22,80,8000-8100".into(),
        },
        cpu_total_compute: None,
        memory_total_mb: None,
    }
}

/// The CPU count from `/proc/self/status` (`Cpus_allowed_list: 0-3,6`).
fn cpus_allowed() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    list.split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

#[tokio::test]
async fn host_attributes_are_present_and_plausible() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let node = fingerprint(&cfg, &[]).await;
    let attr = |k: &str| {
        node.attribute(k)
            .unwrap_or_else(|| panic!("missing attribute {k}: {:?}", node.attributes))
            .to_owned()
    };

    assert_eq!(attr("kernel.name"), "linux");
    assert!(!attr("kernel.version").is_empty());
    assert!(!attr("cpu.arch").is_empty());
    if cfg!(target_arch = "x86_64") {
        assert_eq!(attr("cpu.arch"), "amd64");
        assert_eq!(attr("kernel.arch"), "x86_64");
    }

    let cores: usize = attr("cpu.numcores").parse().unwrap();
    assert!(cores >= 1);
    assert_eq!(cores, cpus_allowed());
    assert!(cores >= std::thread::available_parallelism().unwrap().get());
    let mhz: i64 = attr("cpu.frequency").parse().unwrap();
    assert!(mhz > 0);
    let total: i64 = attr("cpu.totalcompute").parse().unwrap();
    assert_eq!(total, mhz * cores as i64);

    let mem: u64 = attr("memory.totalbytes").parse().unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(mem > 0);
    assert!(mem.abs_diff(kb * 1024) <= 1024 * 1024, "{mem} vs {kb} kB");

    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    if let Some(id) = os_release.lines().find_map(|l| l.strip_prefix("ID=")) {
        assert_eq!(attr("os.name"), id.trim_matches('"'));
    }
    assert!(attr("os.signals").split(',').any(|s| s == "SIGTERM"));
    assert!(!attr("unique.hostname").is_empty());
    let ip: Ipv4Addr = attr("unique.network.ip-address").parse().unwrap();

    let free: u64 = attr("unique.storage.bytesfree").parse().unwrap();
    assert!(attr("unique.storage.bytestotal").parse::<u64>().unwrap() >= free);
    assert!(!attr("unique.storage.volume").is_empty());
    assert_eq!(attr("nomad.version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(attr("caravan.version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(attr("nomad.advertise.address"), "10.0.0.5:4646");

    let res = node.node_resources.as_ref().unwrap();
    assert_eq!(res.cpu.cpu_shares, total);
    assert_eq!(usize::from(res.cpu.total_cpu_cores), cores);
    assert_eq!(res.cpu.reservable_cpu_cores.len(), cores);
    assert_eq!(res.memory.memory_mb, (mem / (1024 * 1024)) as i64);
    assert_eq!(res.disk.disk_mb, (free / (1024 * 1024)) as i64);
    assert_eq!(res.networks.len(), 1);
    assert_eq!(res.networks[0].ip, ip.to_string());
    assert_eq!(res.networks[0].cidr, format!("{ip}/32"));
    assert!(res.networks[0].mbits > 0);
    assert_eq!(res.node_networks[0].addresses[0].address, ip.to_string());
    assert_eq!((res.min_dynamic_port, res.max_dynamic_port), (20000, 32000));

    assert_eq!(node.id, cfg.node_id);
    assert_eq!(node.name, "client-1");
    assert_eq!(node.datacenter, "dc1");
    assert_eq!(node.node_class, "batch");
    assert_eq!(node.node_pool, "default");
    assert_eq!(node.meta_value("rack"), Some("r1"));
    assert_eq!(node.http_addr, "10.0.0.5:4646");
    assert_eq!(node.scheduling_eligibility, SchedulingEligibility::Eligible);
    assert_eq!(node.status, NodeStatus::default());
}

#[tokio::test]
async fn reserved_resources_and_overrides_apply() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cpu_total_compute = Some(12345);
    cfg.memory_total_mb = Some(2048);
    let node = fingerprint(&cfg, &[]).await;
    let r = node.reserved_resources.as_ref().unwrap();
    assert_eq!(r.cpu.cpu_shares, 500);
    assert_eq!(r.memory.memory_mb, 256);
    assert_eq!(r.disk.disk_mb, 1024);
    assert_eq!(r.networks.reserved_host_ports, "22,80,8000-8100");
    let res = node.node_resources.as_ref().unwrap();
    assert_eq!(res.cpu.cpu_shares, 12345);
    assert_eq!(res.memory.memory_mb, 2048);
    assert_eq!(node.attribute("cpu.totalcompute"), Some("12345"));
    assert_eq!(node.attribute("memory.totalbytes"), Some("2147483648"));
    let c = node.comparable_resources();
    assert_eq!((c.cpu_shares, c.memory_mb), (12345 - 500, 2048 - 256));
}

#[tokio::test]
async fn drivers_show_up_in_drivers_and_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let healthy: Arc<dyn Driver> = Arc::new(FakeDriver {
        name: "fake",
        fingerprint: Fingerprint::healthy(BTreeMap::from([(
            "driver.fake.version".to_owned(),
            "1.2.3".to_owned(),
        )])),
    });
    let sick: Arc<dyn Driver> = Arc::new(FakeDriver {
        name: "sick",
        fingerprint: Fingerprint {
            attributes: BTreeMap::from([("driver.sick".to_owned(), "1".to_owned())]),
            ..Fingerprint::unhealthy(true, "daemon not reachable")
        },
    });
    let absent: Arc<dyn Driver> = Arc::new(FakeDriver {
        name: "absent",
        fingerprint: Fingerprint::unhealthy(false, "binary not found"),
    });
    let node = fingerprint(&config(dir.path()), &[healthy, sick, absent]).await;

    assert_eq!(node.attribute("driver.fake"), Some("1"));
    assert_eq!(node.attribute("driver.fake.version"), Some("1.2.3"));
    assert_eq!(node.attribute("driver.sick"), None);
    assert_eq!(node.attribute("driver.absent"), None);

    let fake = &node.drivers["fake"];
    assert!(fake.detected && fake.healthy);
    assert_eq!(fake.health_description, "Healthy");
    assert_eq!(fake.attributes["driver.fake.version"], "1.2.3");
    assert!(!fake.update_time.is_zero());
    let sick = &node.drivers["sick"];
    assert!(sick.detected && !sick.healthy);
    assert_eq!(sick.health_description, "daemon not reachable");
    assert!(!node.drivers["absent"].detected);
}

#[test]
fn node_id_is_stable_per_data_dir() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = node_id(a.path()).unwrap();
    assert_eq!(first.as_str().len(), 36);
    assert_eq!(node_id(a.path()).unwrap(), first);
    let stored = std::fs::read_to_string(a.path().join("client/node-id")).unwrap();
    assert_eq!(stored.trim(), first.as_str());
    assert_ne!(node_id(b.path()).unwrap(), first);

    std::fs::write(a.path().join("client/node-id"), "garbage").unwrap();
    let err = node_id(a.path()).unwrap_err().to_string();
    assert!(err.contains("garbage"), "{err}");
}
