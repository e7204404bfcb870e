//! A C1M-style benchmark through the real server and store: N simulated nodes, J jobs of C
//! allocations each submitted over the HTTP API, the leader's job controller placing them.
//!
//! `cargo bench --bench scheduler -- --jobs J --count C --nodes N --store embedded|etcd
//!  [--etcd host:port] [--dir DIR] [--concurrency K]`
//!
//! Nodes are written straight to the store (they do not heartbeat; the node controller is not
//! started). A job counts as placed when the cache holds C running-desired allocations of it.
//! The last line reads `placed=… nodes=… store=… seconds=… placements_per_s=… p99_job_placed_ms=…`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use caravan::server::cache::Notice;
use caravan::server::objects::{Keys, Object};
use caravan::server::{Identity, Server, job_controller};
use caravan::store::{self, Op, StoreSpec, Txn};
use caravan_schemas::ids::NodeId;
use caravan_schemas::node::{DriverInfo, Node, NodeStatus};
use caravan_schemas::resources::NodeResources;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per job: allocations placed so far, and when the last one was.
type Progress = HashMap<String, (usize, Option<Instant>)>;

struct Args {
    jobs: usize,
    count: usize,
    nodes: usize,
    store: String,
    etcd: Option<String>,
    dir: Option<std::path::PathBuf>,
    concurrency: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        jobs: 200,
        count: 1000,
        nodes: 5000,
        store: "embedded".into(),
        etcd: None,
        dir: None,
        concurrency: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.trim_start_matches('-') {
            "jobs" => a.jobs = value().parse().expect("--jobs N"),
            "count" => a.count = value().parse().expect("--count N"),
            "nodes" => a.nodes = value().parse().expect("--nodes N"),
            "store" => a.store = value(),
            "etcd" => a.etcd = Some(value()),
            "dir" => a.dir = Some(value().into()),
            "concurrency" => a.concurrency = value().parse().expect("--concurrency N"),
            "bench" => {}
            other => panic!("unknown flag --{other}"),
        }
    }
    a
}

fn node(i: usize) -> Node {
    let mut n = Node {
        id: NodeId::new(format!("{i:08x}-0000-4000-8000-000000000000")),
        name: format!("sim-{i}"),
        datacenter: format!("dc{}", i % 3 + 1),
        node_pool: "default".into(),
        status: NodeStatus::Ready,
        ..Node::default()
    };
    let mut res = NodeResources::default();
    res.cpu.cpu_shares = 8_000;
    res.memory.memory_mb = 16_384;
    res.disk.disk_mb = 1_000_000;
    n.node_resources = Some(res);
    n.attributes.insert("kernel.name".into(), "linux".into());
    n.attributes
        .insert("unique.network.ip-address".into(), "127.0.0.1".into());
    n.drivers.insert(
        "raw_exec".into(),
        DriverInfo {
            detected: true,
            healthy: true,
            ..DriverInfo::default()
        },
    );
    n
}

fn job(i: usize, count: usize) -> serde_json::Value {
    serde_json::json!({"Job": {
        "ID": format!("c1m-{i}"), "Datacenters": ["dc1", "dc2", "dc3"],
        "TaskGroups": [{"Name": "g", "Count": count,
            "EphemeralDisk": {"SizeMB": 10},
            "Tasks": [{"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"},
                       "Resources": {"CPU": 10, "MemoryMB": 10}}]}]
    }})
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let dir = tempfile::tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir)).unwrap();
    let spec = match args.store.as_str() {
        "embedded" => StoreSpec::embedded(dir.path().join("store")),
        "etcd" => StoreSpec::etcd([args
            .etcd
            .clone()
            .expect("--store etcd needs --etcd host:port")]),
        other => panic!("unknown store {other}"),
    };
    let store = store::open(&spec).await.unwrap();
    let region = format!("bench{}", std::process::id());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let identity = Identity {
        name: "bench".into(),
        region: region.clone(),
        datacenter: "dc1".into(),
        advertise: addr.clone(),
    };
    let server = Server::start(Arc::clone(&store), identity).await;
    let leadership = server.start_membership();
    let mut leading = leadership.is_leader.clone();
    leading.wait_for(|l| *l).await.unwrap();

    eprintln!("==> registering {} simulated nodes", args.nodes);
    let keys = Keys::new(&region);
    let batch = store.max_txn_ops().min(128);
    for chunk in (0..args.nodes).collect::<Vec<_>>().chunks(batch) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|&i| {
                let n = node(i);
                Op::put(n.key(&keys), serde_json::to_vec(&n).unwrap())
            })
            .collect();
        let rev = store.txn(Txn::new().and_then(ops)).await.unwrap().revision;
        server.cache.wait_for(rev, Duration::from_secs(30)).await;
    }
    job_controller::start(Arc::clone(&server), leadership.is_leader.clone());
    tokio::spawn(caravan::api::serve(
        Arc::clone(&server),
        listener,
        std::future::pending(),
    ));

    // Count placements per job from the cache's change notices.
    let total = args.jobs * args.count;
    let placed_at: Arc<Mutex<Progress>> = Arc::default();
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(0usize);
    {
        let mut rx = server.cache.allocs.changes();
        let placed_at = Arc::clone(&placed_at);
        let count = args.count;
        tokio::spawn(async move {
            let mut placed = 0usize;
            while let Ok(notice) = rx.recv().await {
                if let Notice::Changed(changes) = notice.as_ref() {
                    let mut map = placed_at.lock().unwrap();
                    for ch in changes {
                        if let (Some(new), None) = (&ch.new, &ch.old) {
                            let entry = map.entry(new.job_id.to_string()).or_insert((0, None));
                            entry.0 += 1;
                            placed += 1;
                            if entry.0 == count {
                                entry.1 = Some(Instant::now());
                            }
                        }
                    }
                    done_tx.send_replace(placed);
                }
            }
        });
    }

    eprintln!(
        "==> submitting {} jobs x {} allocations over HTTP ({} at a time)",
        args.jobs, args.count, args.concurrency
    );
    let http = reqwest::Client::new();
    let submitted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..args.concurrency {
        let (http, next, submitted, addr) = (
            http.clone(),
            Arc::clone(&next),
            Arc::clone(&submitted),
            addr.clone(),
        );
        let (jobs, count) = (args.jobs, args.count);
        senders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= jobs {
                    return;
                }
                submitted
                    .lock()
                    .unwrap()
                    .insert(format!("c1m-{i}"), Instant::now());
                let resp = http
                    .post(format!("http://{addr}/v1/jobs"))
                    .json(&job(i, count))
                    .send()
                    .await
                    .unwrap();
                assert!(
                    resp.status().is_success(),
                    "register failed: {}",
                    resp.text().await.unwrap_or_default()
                );
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    eprintln!(
        "==> all jobs submitted after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let mut last_report = Instant::now();
    loop {
        let placed = *done_rx.borrow_and_update();
        if placed >= total {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "    {placed}/{total} placed after {:.0}s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        if tokio::time::timeout(Duration::from_secs(120), done_rx.changed())
            .await
            .is_err()
        {
            panic!("no progress for 120 s at {placed}/{total}");
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let submitted = submitted.lock().unwrap();
    let placed_at = placed_at.lock().unwrap();
    let mut latencies: Vec<f64> = placed_at
        .iter()
        .filter_map(|(job, (_, at))| {
            Some(
                at.as_ref()?
                    .duration_since(*submitted.get(job)?)
                    .as_secs_f64()
                    * 1000.0,
            )
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies
        .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or(0.0);
    let rss_kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .unwrap_or_default();
    eprintln!("==> peak RSS {rss_kb} kB");
    println!(
        "placed={total} nodes={} store={} seconds={seconds:.1} placements_per_s={:.0} p99_job_placed_ms={p99:.0}",
        args.nodes,
        args.store,
        total as f64 / seconds
    );
}
