//! Real `caravan` agent processes: a dev agent (server and client in one) and any agent spawned
//! with given arguments, killed when dropped.

use super::client::Client;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `caravan agent -dev` on a free port, its data in a temporary directory.
pub struct DevAgent {
    pub child: Child,
    pub client: Client,
    pub addr: String,
    pub dir: tempfile::TempDir,
    /// The DNS address from the startup banner, when DNS is on.
    pub dns: Option<String>,
}

impl DevAgent {
    pub fn start() -> DevAgent {
        Self::start_with(&[])
    }

    /// A dev agent with extra arguments (`-config FILE`, …).
    pub fn start_with(extra: &[&str]) -> DevAgent {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap().to_owned();
        let mut args = vec!["agent", "-dev", "-http-port", "0", "-data-dir", &data];
        args.extend_from_slice(extra);
        let (child, banner) = spawn_agent_banner(&args);
        let addr = banner.http.expect("the dev agent prints its address");
        let client = Client::new(&format!("http://{addr}"));
        DevAgent {
            child,
            client,
            addr,
            dir,
            dns: banner.dns,
        }
    }

    /// The job's allocations (none when the job is unknown).
    pub async fn allocs(&self, job: &str) -> Vec<Value> {
        let resp = self.client.get(&format!("/v1/job/{job}/allocations")).await;
        if resp.status != 200 {
            return Vec::new();
        }
        resp.json().as_array().cloned().unwrap_or_default()
    }

    /// One allocation, read whole (with its task states).
    pub async fn alloc(&self, id: &str) -> Value {
        self.client
            .get(&format!("/v1/allocation/{id}"))
            .await
            .json()
    }

    /// Waits until the job's first allocation has client status `status`; returns it.
    pub async fn wait_for_status(&self, job: &str, status: &str) -> Value {
        super::eventually(
            Duration::from_secs(30),
            &format!("job {job}'s allocation to be {status}"),
            || async {
                self.allocs(job)
                    .await
                    .first()
                    .is_some_and(|a| a["ClientStatus"] == status)
            },
        )
        .await;
        self.allocs(job).await.swap_remove(0)
    }

    /// Waits until the agent's node is registered and ready.
    pub async fn wait_ready(&self) {
        super::eventually(Duration::from_secs(30), "one ready node", || async {
            let nodes = self.client.get("/v1/nodes").await;
            nodes.status == 200
                && nodes
                    .json()
                    .as_array()
                    .is_some_and(|n| n.len() == 1 && n[0]["Status"] == "ready")
        })
        .await;
    }

    /// Where the agent keeps an allocation's directory.
    pub fn alloc_dir(&self, alloc_id: &str) -> std::path::PathBuf {
        self.dir.path().join("client/allocs").join(alloc_id)
    }
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        reap_tasks(self.dir.path());
    }
}

/// Kills the tasks an agent with data dir `data_dir` left running (tasks outlive their agent by
/// design), so a test that ends — or fails — without stopping its jobs leaks nothing: process
/// groups recorded in task handles (checked against their start time, so a reused pid is never
/// hit) and containers.
pub fn reap_tasks(data_dir: &std::path::Path) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let Ok(allocs) = std::fs::read_dir(data_dir.join("client/allocs")) else {
        return;
    };
    for alloc in allocs.flatten() {
        // Containers by label: one the agent was still creating when it died has no handle.
        let label = format!(
            "label=com.caravan.alloc_id={}",
            alloc.file_name().to_string_lossy()
        );
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let Ok(tasks) = std::fs::read_dir(alloc.path()) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(bytes) = std::fs::read(task.path().join(".caravan-handle.json")) else {
                continue;
            };
            let Ok(handle) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            if handle["driver"] == "docker" {
                if let Some(id) = handle["id"].as_str() {
                    let _ = Command::new("docker")
                        .args(["rm", "-f", id])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
                continue;
            }
            let pid = handle["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
            let ticks = handle["state"]["start_ticks"].as_u64();
            if let (Some(pid), Some(ticks)) = (pid, ticks) {
                let same = caravan::drivers::process::read_stat(pid)
                    .is_some_and(|s| s.start_ticks == ticks);
                if same {
                    let _ = killpg(
                        Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                        Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

/// An agent process with given arguments and its advertised HTTP address (once it printed
/// "agent started"); the caller kills it.
pub fn spawn_agent(args: &[&str]) -> (Child, Option<String>) {
    let (child, banner) = spawn_agent_banner(args);
    (child, banner.http)
}

/// The addresses an agent's startup banner shows.
#[derive(Debug, Default)]
pub struct Banner {
    /// The advertised HTTP address.
    pub http: Option<String>,
    /// The DNS address (`ip:port`), when DNS is on.
    pub dns: Option<String>,
}

/// An agent process with given arguments and what its banner said (once it printed "agent
/// started"); the caller kills it.
pub fn spawn_agent_banner(args: &[&str]) -> (Child, Banner) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_caravan"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut banner = Banner::default();
    loop {
        assert!(Instant::now() < deadline, "the agent did not start");
        let line = lines.next().expect("agent output").unwrap();
        if line.contains("Advertise Addrs: HTTP:") {
            banner.http = Some(line.rsplit(' ').next().unwrap().trim().to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("DNS: ") {
            banner.dns = rest.split_whitespace().next().map(str::to_owned);
        }
        if line.contains("agent started") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, banner)
}

/// The types of a task's events, in order.
pub fn event_types(state: &Value) -> Vec<String> {
    state["Events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["Type"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
