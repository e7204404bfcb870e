//! Nomad's first walkthrough, replayed with the `caravan` binary against a real
//! `caravan agent -dev` and real containers: `job init` writes the redis example; with no
//! registry here its image is swapped for the local `caravan/demo-web:v1` (a web service on
//! 8080, so the port's `to` follows); `job run` shows the evaluation monitor; `job status` and
//! `alloc status` show the allocation running and its address; the service answers on the
//! address and port the API reports; count 1 → 3 is planned (diff, `Job Modify Index`, the
//! `-check-index` hint) and run with `-check-index`, placing 2 more; a stale index is refused
//! with Nomad's message; `job stop` removes the containers.
//!
//! Skips (saying so) only when Docker is not installed or its daemon does not answer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli_support;

use cli_support::{Agent, both, eventually, ok, stderr, stdout};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const IMAGE: &str = "caravan/demo-web:v1";

/// Whether a Docker daemon answers here; the reason when not.
fn docker_answers() -> Result<(), String> {
    match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Err(e) => Err(format!("docker is not installed ({e})")),
        Ok(o) if !o.status.success() => Err(format!(
            "the Docker daemon does not answer: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => Ok(()),
    }
}

/// Builds the local test images (idempotent, quick when they are up to date).
fn build_test_images() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/build-test-image.sh");
    let out = Command::new(script).output().unwrap();
    assert!(
        out.status.success(),
        "hack/build-test-image.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Containers of the allocations this test saw (by the driver's `com.caravan.alloc_id` label).
fn containers_of(alloc: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.caravan.alloc_id={alloc}"),
        ])
        .output();
    let Ok(out) = out.map_err(|e| eprintln!("docker ps: {e}")) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// If the test ends early: stops the job through the agent (so nothing restarts a task
/// meanwhile), waits a bounded time for its containers to go, and removes what is left of the
/// containers of every allocation it was told about (containers outlive their agent by design).
/// Declared after the agent, so it runs while the agent is still alive.
struct Cleanup {
    address: String,
    allocs: Mutex<BTreeSet<String>>,
}

impl Cleanup {
    fn new(agent: &Agent) -> Cleanup {
        Cleanup {
            address: agent.address.clone(),
            allocs: Mutex::default(),
        }
    }

    fn track(&self, allocs: &[Value]) {
        let mut seen = self.allocs.lock().unwrap();
        for a in allocs {
            if let Some(id) = a["ID"].as_str() {
                seen.insert(id.to_owned());
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let allocs = self.allocs.lock().map(|a| a.clone()).unwrap_or_default();
        let left = || {
            allocs
                .iter()
                .flat_map(|a| containers_of(a))
                .collect::<Vec<_>>()
        };
        if left().is_empty() {
            return;
        }
        let _ = runtime().block_on(
            reqwest::Client::new()
                .delete(format!("{}/v1/job/example", self.address))
                .send(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !left().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        for c in left() {
            let _ = Command::new("docker").args(["rm", "-f", &c]).output();
        }
    }
}

/// `caravan <args>` in `dir`, talking to `address` through `CARAVAN_ADDR` (and nothing else
/// from the environment pointing elsewhere).
fn caravan(address: &str, dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_caravan"));
    cmd.args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .env("CARAVAN_ADDR", address);
    for var in [
        "NOMAD_ADDR",
        "CARAVAN_TOKEN",
        "NOMAD_TOKEN",
        "CARAVAN_NAMESPACE",
        "NOMAD_NAMESPACE",
        "CARAVAN_REGION",
        "NOMAD_REGION",
    ] {
        cmd.env_remove(var);
    }
    cmd.output().expect("run caravan")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `GET base+path` as JSON, from the API.
fn api(agent: &Agent, path: &str) -> Value {
    runtime().block_on(async {
        let resp = reqwest::get(format!("{}{path}", agent.address))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    })
}

/// The body of `GET url`, or None when nothing answers (yet).
fn http_body(url: &str) -> Option<String> {
    runtime().block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let resp = client.get(url).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok()
    })
}

fn allocs(agent: &Agent) -> Vec<Value> {
    api(agent, "/v1/job/example/allocations")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn running(allocs: &[Value]) -> Vec<&Value> {
    allocs
        .iter()
        .filter(|a| a["DesiredStatus"] == "run" && a["ClientStatus"] == "running")
        .collect()
}

/// Waits until `n` allocations of the job run; on timeout, shows the others' task events.
fn wait_running(agent: &Agent, cleanup: &Cleanup, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = allocs(agent);
        cleanup.track(&a);
        if running(&a).len() == n {
            return;
        }
        if Instant::now() > deadline {
            let states: Vec<String> = a
                .iter()
                .map(|x| {
                    let alloc = api(
                        agent,
                        &format!("/v1/allocation/{}", x["ID"].as_str().unwrap()),
                    );
                    format!("{} {}: {}", x["ID"], x["ClientStatus"], alloc["TaskStates"])
                })
                .collect();
            panic!(
                "timed out waiting for {n} allocations running:\n{}\nagent log:\n{}",
                states.join("\n"),
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replaces `from` with `to` in the job file, asserting it was there.
fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        text.contains(from),
        "{from:?} not in {}:\n{text}",
        file.display()
    );
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

/// The `http://ip:port/` the API gives an allocation's port `label`: the node's address and the
/// host port in `AllocatedResources.Shared.Ports`.
fn service_url(agent: &Agent, alloc_id: &str, label: &str, node_ip: &str) -> String {
    let alloc = api(agent, &format!("/v1/allocation/{alloc_id}"));
    let ports = alloc["AllocatedResources"]["Shared"]["Ports"]
        .as_array()
        .unwrap_or_else(|| panic!("no Shared.Ports in {alloc}"));
    let port = ports
        .iter()
        .find(|p| p["Label"] == label)
        .unwrap_or_else(|| panic!("no port {label:?} in {ports:?}"));
    assert_eq!(port["To"], 8080, "{port}");
    let value = port["Value"].as_u64().unwrap();
    assert!((20000..=32000).contains(&value), "a dynamic port: {port}");
    let host_ip = port["HostIP"].as_str().unwrap();
    assert_eq!(host_ip, node_ip, "the port is on the node's address");
    format!("http://{host_ip}:{value}/")
}

#[test]
fn nomads_first_walkthrough_with_docker() {
    if let Err(reason) = docker_answers() {
        eprintln!("SKIPPED nomads_first_walkthrough_with_docker: {reason}");
        return;
    }
    build_test_images();
    let agent = Agent::start();
    let cleanup = Cleanup::new(&agent);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Commands as a user types them, with CARAVAN_ADDR pointing at the agent.
    let cli = |args: &[&str]| caravan(&agent.address, d, args);

    // One ready node whose docker driver is healthy (the daemon answered above).
    eventually(Duration::from_secs(30), "a ready node", || {
        stdout(&cli(&["node", "status"])).contains("ready")
    });
    let nodes = api(&agent, "/v1/nodes");
    let node_id = nodes[0]["ID"].as_str().unwrap().to_owned();
    let node = api(&agent, &format!("/v1/node/{node_id}"));
    assert_eq!(
        node["Drivers"]["docker"]["Healthy"], true,
        "docker driver: {}",
        node["Drivers"]["docker"]
    );
    let node_ip = node["Attributes"]["unique.network.ip-address"]
        .as_str()
        .unwrap()
        .to_owned();

    // caravan job init
    let init = ok(&cli(&["job", "init"]));
    assert_eq!(init.trim(), "Example job file written to example.nomad.hcl");
    let file = d.join("example.nomad.hcl");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        include_str!("../manifests/example.nomad.hcl")
    );
    // No registry here: the local web image instead of redis, listening on 8080.
    edit(
        &file,
        "image          = \"redis:7\"",
        &format!("image          = \"{IMAGE}\""),
    );
    edit(&file, "to = 6379", "to = 8080");

    // caravan job run example.nomad.hcl: the evaluation monitor, exit 0.
    let run = ok(&cli(&["job", "run", "example.nomad.hcl"]));
    for needle in [
        "==> ",
        "Monitoring evaluation \"",
        "Evaluation triggered by job \"example\"",
        "Allocation \"",
        "\" created: node \"",
        "group \"cache\"",
        "finished with status \"complete\"",
    ] {
        assert!(run.contains(needle), "{needle:?} missing from:\n{run}");
    }
    assert_eq!(run.matches("\" created: node \"").count(), 1, "{run}");

    wait_running(&agent, &cleanup, 1);
    let first = running(&allocs(&agent))[0]["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    let short = &first[..8];

    // caravan job status example
    let status = ok(&cli(&["job", "status", "example"]));
    for needle in [
        "ID            = example",
        "Type          = service",
        "Status        = running",
        "Summary\nTask Group  Queued  Starting  Running  Failed  Complete  Lost  Unknown\ncache       0       0         1        0       0         0     0",
        "Allocations\nID        Node ID   Task Group  Version  Desired  Status   Created",
    ] {
        assert!(
            status.contains(needle),
            "{needle:?} missing from:\n{status}"
        );
    }
    let row = status
        .lines()
        .find(|l| l.starts_with(short))
        .unwrap_or_else(|| panic!("no row for {short}:\n{status}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols[..6],
        [short, &node_id[..8], "cache", "0", "run", "running"],
        "{row}"
    );

    // caravan alloc status <id>: the task's events and the allocation's address.
    let url = service_url(&agent, &first, "db", &node_ip);
    let host_port = url.trim_start_matches("http://").trim_end_matches('/');
    let alloc_status = ok(&cli(&["alloc", "status", short]));
    for needle in [
        format!("ID                  = {first}"),
        "Client Status       = running".to_owned(),
        "Task \"redis\" is \"running\"".to_owned(),
        "Recent Events:\nTime".to_owned(),
        "Task started by client".to_owned(),
        "Building Task Directory".to_owned(),
        "Task received by client".to_owned(),
        format!("*db    yes      {host_port} -> 8080"),
    ] {
        assert!(
            alloc_status.contains(&needle),
            "{needle:?} missing from:\n{alloc_status}"
        );
    }

    // The service answers there.
    eventually(Duration::from_secs(30), &format!("{url} to answer"), || {
        http_body(&url).is_some_and(|b| b.starts_with("demo-web v1 on "))
    });

    // count = 3: plan shows the diff, the index and the hint; exit 1 (allocations change).
    edit(&file, "count = 1", "count = 3");
    let plan = cli(&["job", "plan", "example.nomad.hcl"]);
    assert_eq!(plan.status.code(), Some(1), "{}", both(&plan));
    let plan = stdout(&plan);
    let index = api(&agent, "/v1/job/example")["JobModifyIndex"]
        .as_i64()
        .unwrap();
    for needle in [
        "+/- Job: \"example\"".to_owned(),
        "+/- Task Group: \"cache\" (2 create, 1 in-place update)".to_owned(),
        "  +/- Count: \"1\" => \"3\" (forces create)".to_owned(),
        "      Task: \"redis\"".to_owned(),
        "Scheduler dry-run:\n- All tasks successfully allocated.".to_owned(),
        format!("Job Modify Index: {index}\nTo submit the job with version verification run:"),
        format!("caravan job run -check-index {index} example.nomad.hcl"),
    ] {
        assert!(plan.contains(&needle), "{needle:?} missing from:\n{plan}");
    }

    // caravan job run -check-index N places 2 more; the first allocation stays.
    let index_arg = index.to_string();
    let rerun = ok(&cli(&[
        "job",
        "run",
        "-check-index",
        &index_arg,
        "example.nomad.hcl",
    ]));
    assert_eq!(
        rerun.matches("\" created: node \"").count(),
        2,
        "two new allocations:\n{rerun}"
    );
    wait_running(&agent, &cleanup, 3);
    let all = allocs(&agent);
    let ids: Vec<String> = running(&all)
        .iter()
        .map(|a| a["ID"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&first), "the first allocation kept running");
    let mut urls = BTreeSet::new();
    for id in &ids {
        let url = service_url(&agent, id, "db", &node_ip);
        eventually(Duration::from_secs(30), &format!("{url} to answer"), || {
            http_body(&url).is_some_and(|b| b.starts_with("demo-web v1 on "))
        });
        urls.insert(url);
    }
    assert_eq!(urls.len(), 3, "each allocation has its own port: {urls:?}");
    let status = ok(&cli(&["job", "status", "example"]));
    assert_eq!(
        status
            .lines()
            .filter(|l| l.contains(" run ") && l.contains(" running "))
            .count(),
        3,
        "{status}"
    );

    // The same index again is stale now: refused with Nomad's message, nothing changes.
    let current = api(&agent, "/v1/job/example")["JobModifyIndex"]
        .as_i64()
        .unwrap();
    assert_ne!(current, index);
    let stale = cli(&[
        "job",
        "run",
        "-check-index",
        &index_arg,
        "example.nomad.hcl",
    ]);
    assert_eq!(stale.status.code(), Some(1), "{}", both(&stale));
    assert_eq!(
        stderr(&stale).trim(),
        format!(
            "Enforcing job modify index {index}: job exists with conflicting job modify index: {current}\nJob not updated"
        )
    );
    assert_eq!(
        api(&agent, "/v1/job/example")["JobModifyIndex"],
        current,
        "the refused run changed nothing"
    );

    // caravan job stop example: the allocations complete and the containers are gone.
    let stop = ok(&cli(&["job", "stop", "example"]));
    assert!(stop.contains("Monitoring evaluation"), "{stop}");
    eventually(Duration::from_secs(60), "every container removed", || {
        ids.iter().all(|id| containers_of(id).is_empty())
    });
    eventually(Duration::from_secs(30), "every allocation complete", || {
        allocs(&agent)
            .iter()
            .all(|a| a["DesiredStatus"] == "stop" && a["ClientStatus"] == "complete")
    });
    let status = ok(&cli(&["job", "status", "example"]));
    assert!(
        status.contains("Status        = dead (stopped)"),
        "{status}"
    );
    drop(cleanup);
    drop(agent);
}
