//! Scheduler micro benchmark: placements per second on 5,000 nodes.
//!
//! `cargo run --release -p caravan-controllers --example bench_scheduler [selects]`

use caravan_controllers::scheduler::fixtures::{self, job, node};
use caravan_controllers::scheduler::{Scheduler, SelectOptions};
use caravan_schemas::alloc::Allocation;
use caravan_schemas::job::Job;
use caravan_schemas::node::Node;
use std::time::Instant;

const NODES: usize = 5_000;
const PER_JOB: usize = 1_000;

fn cluster() -> Vec<Node> {
    (0..NODES)
        .map(|i| {
            node()
                .id(&format!("node-{i:05}"))
                .dc(if i % 2 == 0 { "dc1" } else { "dc2" })
                .meta("rack", &format!("r{}", i % 40))
                .cpu(64_000)
                .memory(262_144)
                .disk(1_000_000)
                .build()
        })
        .collect()
}

/// Places `total` allocations, `PER_JOB` per job, and reports the rate.
fn run(
    name: &str,
    nodes: &[Node],
    existing: &[Allocation],
    total: usize,
    make: impl Fn(usize) -> Job,
) {
    let built = Instant::now();
    let mut s = Scheduler::new(nodes, existing);
    let build_time = built.elapsed();
    let start = Instant::now();
    let mut placed = 0usize;
    let mut failed = 0usize;
    let mut evaluated = 0i64;
    let jobs = total.div_ceil(PER_JOB);
    for j in 0..jobs {
        let job = make(j);
        let group = &job.task_groups[0];
        for k in 0..PER_JOB.min(total - j * PER_JOB) {
            let opts = SelectOptions {
                seed: (j * PER_JOB + k) as u64,
                ..Default::default()
            };
            match s.select(&job, group, &opts) {
                Ok(p) => {
                    placed += 1;
                    evaluated += i64::from(p.metric.nodes_evaluated);
                }
                Err(_) => failed += 1,
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name:<34} {:>9.0} selects/s  ({placed} placed, {failed} failed, {:.1} nodes evaluated/select, {:.2}s; scheduler built in {:.1} ms)",
        (placed + failed) as f64 / secs,
        evaluated as f64 / placed.max(1) as f64,
        secs,
        build_time.as_secs_f64() * 1e3,
    );
}

fn main() {
    let total: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let nodes = cluster();
    println!("{NODES} nodes, {total} placements per scenario, {PER_JOB} per job");

    let simple = |j: usize| {
        job()
            .id(&format!("job-{j}"))
            .datacenters(&["dc1", "dc2"])
            .count(PER_JOB as i32)
            .cpu(100)
            .memory(64)
            .disk(10)
            .build()
    };
    run("simple service job", &nodes, &[], total, simple);
    run("batch job", &nodes, &[], total, |j| {
        let mut b = simple(j);
        b.r#type = caravan_schemas::job::JobType::Batch;
        b
    });
    run("dynamic port", &nodes, &[], total, |j| {
        job()
            .id(&format!("job-{j}"))
            .datacenters(&["dc*"])
            .count(PER_JOB as i32)
            .cpu(100)
            .memory(64)
            .disk(10)
            .dynamic_port("http", 8080)
            .build()
    });
    run("constraint (1 node in 20)", &nodes, &[], total / 4, |j| {
        job()
            .id(&format!("job-{j}"))
            .datacenters(&["dc1", "dc2"])
            .count(PER_JOB as i32)
            .cpu(100)
            .memory(64)
            .disk(10)
            .constraint("${meta.rack}", "regexp", "^r(0|1)$")
            .build()
    });
    run(
        "spread over dc (100 scored)",
        &nodes,
        &[],
        total / 10,
        |j| {
            job()
                .id(&format!("job-{j}"))
                .datacenters(&["dc1", "dc2"])
                .count(PER_JOB as i32)
                .cpu(100)
                .memory(64)
                .disk(10)
                .spread("${node.datacenter}", 50, &[("dc1", 50), ("dc2", 50)])
                .build()
        },
    );

    // A cluster that already runs 200 allocations per node.
    let existing: Vec<Allocation> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| {
            (0..200).map(move |k| {
                fixtures::alloc()
                    .node(n)
                    .job_id(&format!("old-{}", (i * 200 + k) % 1000))
                    .resources(100, 64, 10)
                    .build()
            })
        })
        .collect();
    let start = Instant::now();
    let s = Scheduler::new(&nodes, &existing);
    println!(
        "building from {} existing allocations: {:.0} ms ({} nodes)",
        existing.len(),
        start.elapsed().as_secs_f64() * 1e3,
        s.node_count()
    );
    run(
        "simple job, 1M allocations running",
        &nodes,
        &existing,
        total,
        simple,
    );
}
