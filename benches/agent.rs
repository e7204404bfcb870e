//! The node agent's cost: a real `caravan agent -dev` (the release binary) runs a raw_exec job of
//! N allocations for N in 1, 10, 100; for each N it measures
//!
//! - `all_running_s`: seconds from the register request to every allocation of the job
//!   reported `running` through the HTTP API (followed with blocking queries);
//! - `rss_per_alloc_kb`: (the agent's RSS plus the RSS of every process the agent spawned that
//!   is not a task — one logmon per task; Nomad has an executor and a logmon — once all run,
//!   minus the agent's RSS just before the register) / N. RSS is `VmRSS` from `/proc`.
//!
//! Between runs the job is stopped and the run waits until all its allocations are complete.
//!
//! `cargo bench --bench agent -- [--counts 1,10,100] [--dir DIR]` (hack/bench-agent.sh runs it).
//! One line per N on stdout, the last being `allocs=100 all_running_s=<s> rss_per_alloc_kb=<k>`;
//! details go to stderr.
//!
//! A task is `/bin/sh -c 'while :; do sleep 3600; done' <marker>`: one shell and one sleep in a
//! session of their own (the drivers `setsid()` every task). Every process in a session whose
//! leader carries the marker is a task, and is left out of the bookkeeping sum.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long one run may take before the benchmark gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one blocking query waits for the allocations to change.
const BLOCKING_WAIT: &str = "30s";

/// The published figure a Nomad user compares with.
const NOMAD_REFERENCE: &str = "Nomad reference: per raw_exec/exec task a Nomad client runs an \
executor and a logmon process of ~10-25 MB RSS each since 0.9.6, ~30 MB before \
(hashicorp/nomad#6543, a maintainer's figures; RSS counts the shared binary in each); \
time to all allocations running: no published reference";

struct Args {
    counts: Vec<usize>,
    dir: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut a = Args {
        counts: vec![1, 10, 100],
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.trim_start_matches('-') {
            "counts" => {
                a.counts = value()
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .unwrap_or_else(|_| panic!("--counts: {n:?} is not a whole number"))
                    })
                    .collect();
            }
            "dir" => a.dir = Some(value().into()),
            "bench" => {}
            other => panic!("unknown flag --{other} (known: --counts 1,10,100 --dir DIR)"),
        }
    }
    assert!(!a.counts.is_empty(), "--counts needs at least one number");
    a
}

/// One process as `/proc` shows it.
#[derive(Debug, Clone)]
struct Proc {
    pid: u32,
    ppid: u32,
    sid: u32,
    rss_kb: u64,
    /// Proportional set size: shared pages (the caravan binary every logmon maps) divided
    /// among the processes that share them.
    pss_kb: u64,
    cmdline: String,
}

fn read_proc(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces and parentheses.
    let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, session field 6.
    let ppid = rest.get(1)?.parse().ok()?;
    let sid = rest.get(3)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    // Zombies and kernel threads have no VmRSS line: they hold no resident memory.
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let pss_kb = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    Some(Proc {
        pid,
        ppid,
        sid,
        rss_kb,
        pss_kb,
        cmdline,
    })
}

fn all_procs() -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .expect("/proc is readable")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_proc)
        .collect()
}

/// What the agent costs in memory now: its own RSS, and the processes it spawned that are not
/// tasks (with their RSS).
struct Memory {
    agent_kb: u64,
    agent_pss_kb: u64,
    bookkeeping: Vec<Proc>,
    tasks: usize,
}

impl Memory {
    fn total_kb(&self) -> u64 {
        self.agent_kb + self.bookkeeping.iter().map(|p| p.rss_kb).sum::<u64>()
    }

    fn total_pss_kb(&self) -> u64 {
        self.agent_pss_kb + self.bookkeeping.iter().map(|p| p.pss_kb).sum::<u64>()
    }
}

fn measure(agent: u32, marker: &str) -> Memory {
    let procs = all_procs();
    let (agent_kb, agent_pss_kb) = procs
        .iter()
        .find(|p| p.pid == agent)
        .map(|p| (p.rss_kb, p.pss_kb))
        .expect("the agent process is alive");
    let mut children: HashMap<u32, Vec<&Proc>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut descendants: Vec<&Proc> = Vec::new();
    let mut queue = vec![agent];
    while let Some(pid) = queue.pop() {
        for c in children.get(&pid).into_iter().flatten() {
            descendants.push(c);
            queue.push(c.pid);
        }
    }
    let task_sessions: HashSet<u32> = descendants
        .iter()
        .filter(|p| p.pid == p.sid && p.cmdline.contains(marker))
        .map(|p| p.sid)
        .collect();
    let (tasks, bookkeeping): (Vec<&Proc>, Vec<&Proc>) = descendants
        .into_iter()
        .partition(|p| task_sessions.contains(&p.sid));
    Memory {
        agent_kb,
        agent_pss_kb,
        bookkeeping: bookkeeping.into_iter().cloned().collect(),
        tasks: tasks.len(),
    }
}

/// The dev agent; on drop it is killed, and so is any task of this run still alive (tasks
/// outlive their agent by design), each by its pid.
struct Agent {
    child: Child,
    base: String,
    marker: String,
    log: PathBuf,
}

impl Agent {
    fn start(data_dir: &Path, marker: &str) -> Agent {
        let log = data_dir.join("agent.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_caravan"))
            .args(["agent", "-dev", "-http-port", "0", "-data-dir"])
            .arg(data_dir.join("data"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create the agent log"))
            .spawn()
            .expect("start caravan agent -dev");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.expect("agent output");
            if line.contains("Advertise Addrs: HTTP:") {
                addr = line.rsplit(' ').next().map(|a| a.trim().to_owned());
            }
            if line.contains("agent started") {
                break;
            }
        }
        // Keep draining stdout so the agent never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let addr = addr.unwrap_or_else(|| {
            panic!(
                "the agent exited before printing its address; see {}",
                log.display()
            )
        });
        Agent {
            child,
            base: format!("http://{addr}"),
            marker: marker.to_owned(),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in all_procs() {
            if p.cmdline.contains(&self.marker) {
                let pid = nix::unistd::Pid::from_raw(i32::try_from(p.pid).unwrap_or(0));
                let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

fn job(id: &str, count: usize, marker: &str) -> Value {
    json!({"Job": {
        "ID": id,
        "Type": "service",
        "TaskGroups": [{
            "Name": "g",
            "Count": count,
            "EphemeralDisk": {"SizeMB": 10},
            "Tasks": [{
                "Name": "t",
                "Driver": "raw_exec",
                "Config": {
                    "command": "/bin/sh",
                    "args": ["-c", "while :; do sleep 3600; done", marker],
                },
                "Resources": {"CPU": 10, "MemoryMB": 10},
                "KillTimeout": 1_000_000_000,
            }],
        }],
    }})
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// The job's allocations once their index passes `index` (or the wait runs out), with the
    /// index to wait past next.
    async fn allocs(&self, job: &str, index: i64) -> (Vec<Value>, i64) {
        let resp = self
            .http
            .get(format!(
                "{}/v1/job/{job}/allocations?index={index}&wait={BLOCKING_WAIT}",
                self.base
            ))
            .send()
            .await
            .expect("list the job's allocations");
        assert!(
            resp.status().is_success(),
            "listing allocations of {job}: {}",
            resp.status()
        );
        let next = resp
            .headers()
            .get("x-nomad-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(index);
        let allocs: Vec<Value> = resp.json().await.expect("allocations as JSON");
        (allocs, next)
    }

    /// Follows the job's allocations until `done` holds for them; panics after `RUN_TIMEOUT`.
    async fn wait_allocs(&self, job: &str, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let mut index = 0;
        loop {
            let (allocs, next) = self.allocs(job, index).await;
            if done(&allocs) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{job}: timed out after {RUN_TIMEOUT:?} waiting for {what}; {} allocations: {:?}",
                allocs.len(),
                allocs
                    .iter()
                    .map(|a| a["ClientStatus"].as_str().unwrap_or("?"))
                    .collect::<Vec<_>>()
            );
            index = next;
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("send the request");
        let status = resp.status();
        assert!(
            status.is_success(),
            "{path}: {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
}

fn running(n: usize) -> impl Fn(&[Value]) -> bool {
    move |allocs| {
        allocs
            .iter()
            .filter(|a| a["DesiredStatus"] == "run" && a["ClientStatus"] == "running")
            .count()
            == n
    }
}

fn all_complete(allocs: &[Value]) -> bool {
    allocs.iter().all(|a| {
        matches!(
            a["ClientStatus"].as_str(),
            Some("complete" | "failed" | "lost")
        )
    })
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let dir = tempfile::tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))
        .expect("a temporary directory");
    let marker = format!("caravan-bench-agent-{}", std::process::id());
    let agent = Agent::start(dir.path(), &marker);
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .expect("an HTTP client"),
        base: agent.base.clone(),
    };
    eprintln!(
        "==> caravan agent -dev (pid {}) at {}, log {}",
        agent.pid(),
        agent.base,
        agent.log.display()
    );
    // The node is ready when the server lists it so.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut index = 0i64;
    loop {
        let resp = api
            .http
            .get(format!(
                "{}/v1/nodes?index={index}&wait={BLOCKING_WAIT}",
                api.base
            ))
            .send()
            .await
            .expect("list nodes");
        index = resp
            .headers()
            .get("x-nomad-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(index);
        let nodes: Vec<Value> = resp.json().await.unwrap_or_default();
        if nodes.iter().any(|n| n["Status"] == "ready") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dev agent's node never became ready"
        );
    }
    println!("{NOMAD_REFERENCE}");

    for &n in &args.counts {
        let id = format!("bench-{n}");
        let before = measure(agent.pid(), &marker);
        assert_eq!(
            before.tasks, 0,
            "task processes are still running before the next run"
        );
        let started = Instant::now();
        api.send(
            reqwest::Method::POST,
            "/v1/jobs",
            Some(&job(&id, n, &marker)),
        )
        .await;
        api.wait_allocs(&id, &format!("{n} allocations running"), running(n))
            .await;
        let seconds = started.elapsed().as_secs_f64();
        let after = measure(agent.pid(), &marker);
        // Every allocation's task is one shell and one sleep.
        assert!(
            after.tasks >= n,
            "{n} allocations reported running but only {} task processes exist",
            after.tasks
        );
        let grown = after.total_kb().saturating_sub(before.agent_kb);
        let per_alloc = grown / u64::try_from(n).unwrap_or(1);
        eprintln!(
            "    N={n}: agent RSS {} kB before, {} kB after; {} bookkeeping processes ({} kB); \
             {} task processes (not counted)",
            before.agent_kb,
            after.agent_kb,
            after.bookkeeping.len(),
            after.bookkeeping.iter().map(|p| p.rss_kb).sum::<u64>(),
            after.tasks
        );
        let pss_per_alloc = after.total_pss_kb().saturating_sub(before.agent_pss_kb)
            / u64::try_from(n).unwrap_or(1);
        eprintln!(
            "    N={n}: pss_per_alloc_kb={pss_per_alloc} (shared pages of the binary divided \
             among the processes mapping it; VmRSS counts them in every logmon)"
        );
        for p in after.bookkeeping.iter().take(3) {
            eprintln!(
                "      bookkeeping pid {} {} kB: {}",
                p.pid, p.rss_kb, p.cmdline
            );
        }
        println!("allocs={n} all_running_s={seconds:.2} rss_per_alloc_kb={per_alloc}");

        api.send(reqwest::Method::DELETE, &format!("/v1/job/{id}"), None)
            .await;
        api.wait_allocs(&id, "every allocation complete", all_complete)
            .await;
        // The stopped tasks' processes are reaped by then; make sure before the next run.
        let deadline = Instant::now() + Duration::from_secs(30);
        while measure(agent.pid(), &marker).tasks > 0 {
            assert!(
                Instant::now() < deadline,
                "tasks of {id} still run 30 s after their allocations completed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(agent);
}
