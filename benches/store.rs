//! Store throughput: embedded vs etcd, side by side.
//!
//! `cargo bench --bench store -- [--etcd HOST:PORT] [--backends embedded,etcd] [--seconds N]
//! [--rounds N] [--dir DIR]` (hack/bench-store.sh starts an etcd and runs this). Measures, per
//! backend: sequential single puts, 64 concurrent puts, and sequential 100-operation
//! transactions, each durable when acknowledged (embedded: redb fsync with group commit; etcd: its
//! WAL fsync). The backends alternate, round by round, and the medians are reported: fsync
//! latency on a shared machine varies a lot from one second to the next.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use caravan::store::{self, Op, Store, StoreKind, StoreSpec, Txn};

const CONCURRENCY: usize = 64;
const TXN_OPS: usize = 100;
/// Distinct keys per measurement: writes overwrite them, as status updates do.
const KEYS: usize = 1000;

struct Args {
    etcd: Option<String>,
    backends: Vec<String>,
    seconds: f64,
    rounds: usize,
    dir: Option<std::path::PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: store [--etcd HOST:PORT] [--backends embedded,etcd] [--seconds N] [--rounds N] [--dir DIR]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        etcd: std::env::var("CARAVAN_TEST_ETCD").ok(),
        backends: vec!["embedded".into(), "etcd".into()],
        seconds: 2.0,
        rounds: 3,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // Passed by `cargo bench`.
            "--bench" => {}
            "--etcd" => args.etcd = Some(it.next().unwrap_or_else(|| usage())),
            "--backends" => {
                args.backends = it
                    .next()
                    .unwrap_or_else(|| usage())
                    .split(',')
                    .map(str::to_owned)
                    .collect();
            }
            "--seconds" => {
                args.seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage());
            }
            "--rounds" => {
                args.rounds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| usage());
            }
            "--dir" => args.dir = Some(it.next().unwrap_or_else(|| usage()).into()),
            _ => usage(),
        }
    }
    args
}

fn value(i: usize) -> Vec<u8> {
    // About the size of a small status object.
    format!(
        r#"{{"ID":"bench-{i:08}","Status":"running","Index":{i},"Payload":"{}"}}"#,
        "x".repeat(64)
    )
    .into_bytes()
}

/// Medians over the rounds, per second.
#[derive(Default, Clone, Copy)]
struct Results {
    put_ops: f64,
    put64_ops: f64,
    txn100_txns: f64,
    txn100_ops: f64,
}

#[derive(Clone, Copy)]
enum Measure {
    Put,
    Put64,
    Txn100,
}

impl Measure {
    fn name(self) -> &'static str {
        match self {
            Measure::Put => "put",
            Measure::Put64 => "put64",
            Measure::Txn100 => "txn100",
        }
    }
}

async fn sequential_puts(store: &dyn Store, prefix: &str, duration: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < duration {
        store
            .put(&format!("{prefix}put/{:04}", n % KEYS), value(n))
            .await
            .unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn concurrent_puts(store: Arc<dyn Store>, prefix: &str, duration: Duration) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|t| {
            let store = store.clone();
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                let mut n = 0usize;
                while start.elapsed() < duration {
                    let i = t + n * CONCURRENCY;
                    store
                        .put(&format!("{prefix}put64/{:04}", i % KEYS), value(i))
                        .await
                        .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

async fn transactions(store: &dyn Store, prefix: &str, duration: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < duration {
        let ops = (0..TXN_OPS).map(|i| {
            let k = (n * TXN_OPS + i) % KEYS;
            Op::put(format!("{prefix}txn/{k:04}"), value(k))
        });
        let resp = store.txn(Txn::new().and_then(ops)).await.unwrap();
        assert!(resp.succeeded);
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// One measurement on one store: operations (puts, or transactions) per second.
async fn measure(store: &Arc<dyn Store>, what: Measure, round: usize, duration: Duration) -> f64 {
    let prefix = format!("/bench/{}/{round}/", std::process::id());
    let rate = match what {
        Measure::Put => sequential_puts(&**store, &prefix, duration).await,
        Measure::Put64 => concurrent_puts(store.clone(), &prefix, duration).await,
        Measure::Txn100 => transactions(&**store, &prefix, duration).await,
    };
    eprintln!(
        "  round {round} {:<8} {:<6} {rate:>10.0}/s",
        store.kind(),
        what.name()
    );
    store.delete_prefix(&prefix).await.unwrap();
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs every measurement on every store, alternating the stores round by round so that both
/// see the same machine conditions (the disk is shared), and keeps the medians.
async fn run_all(stores: &[Arc<dyn Store>], rounds: usize, duration: Duration) -> Vec<Results> {
    // Warm up connections, caches and the files.
    for store in stores {
        for i in 0..50 {
            store
                .put(&format!("/bench/warm/{i}"), value(i))
                .await
                .unwrap();
        }
        store.delete_prefix("/bench/warm/").await.unwrap();
    }
    let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; stores.len()];
    for round in 1..=rounds {
        for (m, what) in [Measure::Put, Measure::Put64, Measure::Txn100]
            .into_iter()
            .enumerate()
        {
            for (s, store) in stores.iter().enumerate() {
                samples[s][m].push(measure(store, what, round, duration).await);
            }
        }
    }
    samples
        .into_iter()
        .map(|[put, put64, txn]| {
            let txn100_txns = median(txn);
            Results {
                put_ops: median(put),
                put64_ops: median(put64),
                txn100_txns,
                txn100_ops: txn100_txns * TXN_OPS as f64,
            }
        })
        .collect()
}

/// Reads one number out of the results.
type Column = fn(&Results) -> f64;

fn cell(r: Option<Results>, f: Column) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{:.0}", f(&r)))
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let duration = Duration::from_secs_f64(args.seconds);
    let tmp = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };

    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for backend in &args.backends {
        match backend.as_str() {
            "embedded" => {
                eprintln!("embedded store in {}", tmp.path().display());
                stores.push(store::open(&StoreSpec::embedded(tmp.path())).await.unwrap());
            }
            "etcd" => {
                let Some(endpoint) = &args.etcd else {
                    eprintln!("etcd: no endpoint (--etcd HOST:PORT or CARAVAN_TEST_ETCD); skipped");
                    continue;
                };
                eprintln!("etcd at {endpoint}");
                let spec: StoreSpec = format!("etcd://{endpoint}").parse().unwrap();
                stores.push(store::open(&spec).await.unwrap());
            }
            other => {
                eprintln!("unknown backend {other:?}");
                usage();
            }
        }
    }
    let results = run_all(&stores, args.rounds, duration).await;
    let mut embedded = None;
    let mut etcd = None;
    for (store, r) in stores.iter().zip(results) {
        match store.kind() {
            StoreKind::Embedded => embedded = Some(r),
            StoreKind::Etcd => etcd = Some(r),
        }
        store.close().await.unwrap();
    }

    println!();
    println!(
        "{:<24} {:>14} {:>14}",
        format!("median of {} x {}s", args.rounds, args.seconds),
        "embedded",
        "etcd"
    );
    let rows: [(&str, Column); 4] = [
        ("put (ops/s)", |r| r.put_ops),
        ("put x64 (ops/s)", |r| r.put64_ops),
        ("txn100 (txns/s)", |r| r.txn100_txns),
        ("txn100 (ops/s)", |r| r.txn100_ops),
    ];
    for (name, f) in rows {
        println!("{name:<24} {:>14} {:>14}", cell(embedded, f), cell(etcd, f));
    }
    println!(
        "embedded_put_ops={} etcd_put_ops={} embedded_put64_ops={} etcd_put64_ops={} embedded_txn100_ops={} etcd_txn100_ops={}",
        cell(embedded, |r| r.put_ops),
        cell(etcd, |r| r.put_ops),
        cell(embedded, |r| r.put64_ops),
        cell(etcd, |r| r.put64_ops),
        cell(embedded, |r| r.txn100_ops),
        cell(etcd, |r| r.txn100_ops),
    );
}
