//! Issue 6's "Done when", end to end with real parts: a `caravan agent -dev`, the seed's demo
//! web service (three `demo-web` containers with an http check), and `caravan lb` run as the
//! seed runs Fabio — `manifests/lb.nomad.hcl`, a raw_exec system job on static ports 9999 and
//! 9998 — following the route table the servers build from the service registrations.
//!
//! One scenario, in the seed's order: traffic spread over three instances; an instance whose
//! check fails drops out within two check intervals with no failed request; a canary gets about
//! one request in four; a 90/10 TrafficSplit holds its weights; changing the split while
//! requests flow fails none.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli_support;

use cli_support::support::images;
use cli_support::{Agent, eventually, ok};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const LB: &str = "http://127.0.0.1:9999";
const UI: &str = "http://127.0.0.1:9998";
/// The demo's check interval in this test.
const INTERVAL: Duration = Duration::from_secs(1);

fn demo(version: &str) -> String {
    let spec = std::fs::read_to_string(cli_support::manifests().join("demo.nomad.hcl")).unwrap();
    let spec = spec
        .replace(r#"min_healthy_time = "10s""#, r#"min_healthy_time = "2s""#)
        .replace(r#"interval = "2s""#, r#"interval = "1s""#)
        // The image serves /health beside its page: the test can fail one instance's check.
        .replace(r#"path     = "/""#, r#"path     = "/health""#);
    assert!(
        spec.contains(r#"interval = "1s""#) && spec.contains("/health"),
        "demo.nomad.hcl changed"
    );
    spec.replace("v1", version)
}

/// `manifests/lb.nomad.hcl` with this build's binary and this agent's address.
fn lb_job(agent: &Agent) -> String {
    let spec = std::fs::read_to_string(cli_support::manifests().join("lb.nomad.hcl")).unwrap();
    let spec = spec
        .replace("/usr/local/bin/caravan", env!("CARGO_BIN_EXE_caravan"))
        .replace(
            "http://${attr.unique.network.ip-address}:4646",
            &agent.address,
        );
    assert!(spec.contains(&agent.address), "lb.nomad.hcl changed");
    spec
}

fn write(dir: &Path, name: &str, spec: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, spec).unwrap();
    path.to_str().unwrap().to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn get_json(url: &str) -> Option<Value> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// The instances (address:port → canary) the proxy currently routes `/` to, per backend.
fn routed(url: &str) -> Vec<Vec<(String, bool)>> {
    let Some(table) = get_json(url) else {
        return Vec::new();
    };
    let Some(route) = table["Routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["Prefix"] == "/" && r["Service"] == "demo-webapp")
    else {
        return Vec::new();
    };
    route["Backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            b["Instances"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    (
                        format!("{}:{}", i["Address"].as_str().unwrap(), i["Port"]),
                        i["Canary"] == true,
                    )
                })
                .collect()
        })
        .collect()
}

/// What a burst of requests through the proxy got.
#[derive(Debug, Default)]
struct Tally {
    /// Response body ("demo-web v1 on <host>") → count.
    bodies: BTreeMap<String, usize>,
    failures: Vec<String>,
}

impl Tally {
    fn total(&self) -> usize {
        self.bodies.values().sum::<usize>() + self.failures.len()
    }
    fn share(&self, pred: impl Fn(&str) -> bool) -> f64 {
        let n: usize = self
            .bodies
            .iter()
            .filter(|(b, _)| pred(b))
            .map(|(_, c)| c)
            .sum();
        n as f64 / self.total() as f64
    }
}

/// `n` GETs of `/` through the proxy, `concurrency` at a time on keep-alive connections.
async fn burst(n: usize, concurrency: usize) -> Tally {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next) = (client.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                let mut t = Tally::default();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    match client.get(format!("{LB}/")).send().await {
                        Ok(r) if r.status().is_success() => {
                            let body = r.text().await.unwrap_or_default();
                            *t.bodies.entry(body.trim().to_owned()).or_default() += 1;
                        }
                        Ok(r) => t.failures.push(format!("status {}", r.status())),
                        Err(e) => t.failures.push(e.to_string()),
                    }
                }
                t
            })
        })
        .collect();
    let mut all = Tally::default();
    for w in workers {
        let t = w.await.unwrap();
        for (b, c) in t.bodies {
            *all.bodies.entry(b).or_default() += c;
        }
        all.failures.extend(t.failures);
    }
    all
}

/// The container of the allocation serving at `addr` (host port), by the driver's label.
fn container_at(addr: &str) -> String {
    let port = addr.rsplit(':').next().unwrap();
    let out = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            "label=com.caravan.alloc_id",
            "--filter",
            &format!("publish={port}"),
        ])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!id.is_empty(), "no container publishes {port}");
    id
}

fn hostname_of(container: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "--format", "{{.Config.Hostname}}", container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn docker_exec(container: &str, script: &str) {
    let out = Command::new("docker")
        .args(["exec", container, "/bin/sh", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker exec {script}: {out:?}");
}

#[test]
fn the_seed_load_balancer_walkthrough() {
    images::ensure();
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rt = runtime();
    let routes = format!("{}/v1/lb/routes", agent.address);

    ok(&agent.cli(d, &["job", "run", &write(d, "demo.hcl", &demo("v1"))]));
    ok(&agent.cli(
        d,
        &[
            "job",
            "run",
            "-detach",
            &write(d, "lb.hcl", &lb_job(&agent)),
        ],
    ));
    eventually(
        Duration::from_secs(60),
        "the lb to route three instances",
        || {
            let via_lb = routed(&format!("{UI}/routes"));
            via_lb.len() == 1 && via_lb[0].len() == 3
        },
    );

    // 1. Three instances share the traffic.
    let t = rt.block_on(burst(300, 4));
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    assert_eq!(t.bodies.len(), 3, "{:?}", t.bodies);
    for (body, n) in &t.bodies {
        let share = *n as f64 / 300.0;
        assert!((0.25..=0.42).contains(&share), "{body}: {share:.3} of 300");
    }

    // 2. An instance whose check fails gets no more traffic within two check intervals, and
    //    no request fails meanwhile.
    let victim_addr = routed(&routes)[0][0].0.clone();
    let victim = container_at(&victim_addr);
    let host = hostname_of(&victim);
    let stop = Arc::new(AtomicBool::new(false));
    let last_seen = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let broken_at = Instant::now();
    let flow = {
        let (stop, last_seen, host) = (Arc::clone(&stop), Arc::clone(&last_seen), host.clone());
        rt.spawn(async move {
            let mut t = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let one = burst(20, 2).await;
                if one.bodies.keys().any(|b| b.ends_with(&host)) {
                    *last_seen.lock().unwrap() = Some(Instant::now());
                }
                t.failures.extend(one.failures);
                for (b, c) in one.bodies {
                    *t.bodies.entry(b).or_default() += c;
                }
            }
            t
        })
    };
    docker_exec(&victim, "rm /tmp/www/health");
    eventually(
        Duration::from_secs(30),
        "the failing instance to leave the lb",
        || {
            routed(&format!("{UI}/routes"))
                .first()
                .is_some_and(|b| b.len() == 2 && b.iter().all(|(a, _)| *a != victim_addr))
        },
    );
    // Keep the traffic flowing a little longer: nothing more may reach it.
    std::thread::sleep(INTERVAL);
    stop.store(true, Ordering::Relaxed);
    let t = rt.block_on(flow).unwrap();
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    let gone_after = last_seen
        .lock()
        .unwrap()
        .map_or(Duration::ZERO, |at| at.saturating_duration_since(broken_at));
    eprintln!("failing instance's last request {gone_after:?} after its check started failing");
    assert!(
        gone_after <= 2 * INTERVAL,
        "the failing instance got traffic {gone_after:?} after its check started failing"
    );
    docker_exec(&victim, "echo ok > /tmp/www/health");
    eventually(Duration::from_secs(30), "the instance to come back", || {
        routed(&routes).first().is_some_and(|b| b.len() == 3)
    });

    // 3. The canary release: about one request in four reaches the canary.
    let out = ok(&agent.cli(d, &["job", "run", &write(d, "demo2.hcl", &demo("v2"))]));
    assert!(out.contains("requires manual promotion"), "{out}");
    eventually(
        Duration::from_secs(30),
        "the lb to route the canary",
        || {
            routed(&format!("{UI}/routes"))
                .first()
                .is_some_and(|b| b.len() == 4 && b.iter().filter(|(_, c)| *c).count() == 1)
        },
    );
    let t = rt.block_on(burst(1000, 4));
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    let canary = t.share(|b| b.starts_with("demo-web v2"));
    eprintln!("canary share of 1,000: {canary:.3}");
    assert!((0.20..=0.30).contains(&canary), "canary share {canary:.3}");

    // 4. A 90/10 TrafficSplit between the old version and the canary.
    let split = cli_support::manifests().join("demo-split.yaml");
    ok(&agent.cli(d, &["apply", "-f", split.to_str().unwrap()]));
    eventually(Duration::from_secs(30), "the lb to split 90/10", || {
        let b = routed(&format!("{UI}/routes"));
        b.len() == 2 && b[0].len() + b[1].len() == 4
    });
    let t = rt.block_on(burst(10_000, 8));
    assert!(
        t.failures.is_empty(),
        "{:?}",
        &t.failures[..t.failures.len().min(5)]
    );
    let canary = t.share(|b| b.starts_with("demo-web v2"));
    eprintln!("canary share of 10,000 under 90/10: {canary:.4}");
    assert!(
        (0.08..=0.12).contains(&canary),
        "canary share {canary:.4} of 10,000, expected 0.10 ± 0.02"
    );

    // 5. Changing the split while 1,000 requests flow fails none.
    let flow = rt.spawn(burst(1000, 4));
    let fifty = std::fs::read_to_string(&split)
        .unwrap()
        .replace("weight: 90", "weight: 50")
        .replace("weight: 10", "weight: 50");
    assert!(
        fifty.matches("weight: 50").count() == 2,
        "demo-split.yaml changed"
    );
    ok(&agent.cli(d, &["apply", "-f", &write(d, "fifty.yaml", &fifty)]));
    let t = rt.block_on(flow).unwrap();
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    assert_eq!(t.total(), 1000);

    ok(&agent.cli(d, &["job", "stop", "caravan-lb"]));
    ok(&agent.cli(d, &["job", "stop", "demo"]));
}
