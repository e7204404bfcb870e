//! Property tests: for random clusters and jobs, placements are feasible (re-checked by an
//! independent oracle), never exceed a node's capacity, and never hold a host port twice.

use super::fixtures::{self, alloc, job, node};
use super::*;
use caravan_schemas::job::Job;
use caravan_schemas::node::NodeStatus;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug)]
struct NodeSpec {
    cpu: i64,
    memory: i64,
    reserved_cpu: i64,
    dc: u8,
    windows: bool,
    rack: Option<u8>,
    status: u8,
    reserved_port: Option<u16>,
    /// A tiny dynamic port range, to exercise exhaustion.
    small_range: bool,
    /// Existing allocations: (cpu, memory, static port).
    existing: Vec<(i64, i64, Option<u16>)>,
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    (
        (500i64..4000, 256i64..4096, 0i64..300, 0u8..3, any::<bool>()),
        (
            proptest::option::of(0u8..3),
            0u8..8,
            proptest::option::of(7000u16..7004),
            prop::bool::weighted(0.2),
            prop::collection::vec(
                (
                    100i64..1500,
                    64i64..1500,
                    proptest::option::of(7000u16..7004),
                ),
                0..3,
            ),
        ),
    )
        .prop_map(
            |(
                (cpu, memory, reserved_cpu, dc, windows),
                (rack, status, reserved_port, small_range, existing),
            )| {
                NodeSpec {
                    cpu,
                    memory,
                    reserved_cpu,
                    dc,
                    windows,
                    rack,
                    status,
                    reserved_port,
                    small_range,
                    existing,
                }
            },
        )
}

#[derive(Clone, Debug)]
enum Rule {
    KernelIs(&'static str),
    KernelIsNot(&'static str),
    RackSet,
    RackRegexp(&'static str),
    CpuAtLeast(i64),
    DcIn(&'static str),
}

fn rule() -> impl Strategy<Value = Rule> {
    prop_oneof![
        Just(Rule::KernelIs("linux")),
        Just(Rule::KernelIsNot("windows")),
        Just(Rule::RackSet),
        Just(Rule::RackRegexp("^r[01]$")),
        (1000i64..3000).prop_map(Rule::CpuAtLeast),
        Just(Rule::DcIn("dc1,dc2")),
    ]
}

#[derive(Clone, Debug)]
struct JobSpec {
    count: u8,
    cpu: i32,
    memory: i32,
    rules: Vec<Rule>,
    static_port: Option<u16>,
    dynamic_ports: u8,
    distinct_hosts: bool,
    distinct_rack: Option<u8>,
    batch: bool,
    dcs: u8,
    spread: bool,
    affinity: bool,
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (
        (
            1u8..8,
            50i32..1200,
            32i32..1200,
            prop::collection::vec(rule(), 0..3),
        ),
        (
            proptest::option::of(7000u16..7004),
            0u8..3,
            any::<bool>(),
            proptest::option::of(1u8..3),
        ),
        (
            any::<bool>(),
            0u8..3,
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.2),
        ),
    )
        .prop_map(
            |(
                (count, cpu, memory, rules),
                (static_port, dynamic_ports, distinct_hosts, distinct_rack),
                (batch, dcs, spread, affinity),
            )| JobSpec {
                count,
                cpu,
                memory,
                rules,
                static_port,
                dynamic_ports,
                distinct_hosts,
                distinct_rack,
                batch,
                dcs,
                spread,
                affinity,
            },
        )
}

const DCS: [&str; 3] = ["dc1", "dc2", "eu-1"];

fn build_nodes(specs: &[NodeSpec]) -> (Vec<Node>, Vec<Allocation>) {
    let mut nodes = Vec::new();
    let mut allocs = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let mut b = node()
            .id(&format!("n{i}"))
            .cpu(spec.cpu)
            .memory(spec.memory)
            .disk(10_000)
            .reserve(spec.reserved_cpu, 0, 0)
            .dc(DCS[spec.dc as usize])
            .attr(
                "kernel.name",
                if spec.windows { "windows" } else { "linux" },
            )
            .attr("cpu.mhz", &spec.cpu.to_string());
        if let Some(r) = spec.rack {
            b = b.meta("rack", &format!("r{r}"));
        }
        b = match spec.status {
            0 => b.status(NodeStatus::Down),
            1 => b.ineligible(),
            2 => b.draining(),
            _ => b,
        };
        if let Some(p) = spec.reserved_port {
            b = b.reserved_ports(&p.to_string());
        }
        if spec.small_range {
            b = b.dynamic_ports(20000, 20003);
        }
        let n = b.build();
        // Existing allocations that fit together, without colliding ports.
        let mut used_cpu = 0;
        let mut used_mem = 0;
        let mut ports = BTreeSet::new();
        if let Some(p) = spec.reserved_port {
            ports.insert(p);
        }
        for (j, &(cpu, mem, port)) in spec.existing.iter().enumerate() {
            if used_cpu + cpu > spec.cpu - spec.reserved_cpu || used_mem + mem > spec.memory {
                continue;
            }
            let mut a = alloc()
                .node(&n)
                .job_id(&format!("existing-{i}-{j}"))
                .resources(cpu, mem, 300);
            if let Some(p) = port
                && ports.insert(p)
            {
                a = a.port("admin", i32::from(p));
            }
            used_cpu += cpu;
            used_mem += mem;
            allocs.push(a.build());
        }
        nodes.push(n);
    }
    (nodes, allocs)
}

fn build_job(i: usize, spec: &JobSpec) -> Job {
    let mut b = job()
        .id(&format!("job-{i}"))
        .count(i32::from(spec.count))
        .cpu(spec.cpu)
        .memory(spec.memory)
        .disk(100)
        .datacenters(match spec.dcs {
            0 => &["dc1"],
            1 => &["dc*"],
            _ => &["*"],
        });
    if spec.batch {
        b = b.batch();
    }
    for r in &spec.rules {
        b = match r {
            Rule::KernelIs(v) => b.constraint("${attr.kernel.name}", "=", v),
            Rule::KernelIsNot(v) => b.group_constraint("${attr.kernel.name}", "!=", v),
            Rule::RackSet => b.task_constraint("${meta.rack}", "is_set", ""),
            Rule::RackRegexp(re) => b.constraint("${meta.rack}", "regexp", re),
            Rule::CpuAtLeast(n) => b.constraint("${attr.cpu.mhz}", ">=", &n.to_string()),
            Rule::DcIn(set) => b.constraint(set, "set_contains", "${node.datacenter}"),
        };
    }
    if let Some(p) = spec.static_port {
        b = b.static_port("admin", i32::from(p));
    }
    for k in 0..spec.dynamic_ports {
        b = b.dynamic_port(&format!("p{k}"), 0);
    }
    if spec.distinct_hosts {
        b = b.constraint("", DISTINCT_HOSTS, "");
    }
    if let Some(n) = spec.distinct_rack {
        b = b.group_constraint("${meta.rack}", DISTINCT_PROPERTY, &n.to_string());
    }
    if spec.spread {
        b = b.spread("${meta.rack}", 50, &[]);
    }
    if spec.affinity {
        b = b.affinity("${meta.rack}", "=", "r1", 50);
    }
    b.build()
}

/// The oracle: an independent re-implementation of the constraints the generator uses.
fn feasible(node: &Node, job: &Job, spec: &JobSpec) -> Result<(), String> {
    if !node.is_ready() {
        return Err("not ready".into());
    }
    let dc_ok = match spec.dcs {
        0 => node.datacenter == "dc1",
        1 => node.datacenter.starts_with("dc"),
        _ => true,
    };
    if !dc_ok {
        return Err("datacenter".into());
    }
    let kernel = node.attributes.get("kernel.name").map(String::as_str);
    let rack = node.meta.get("rack").map(String::as_str);
    for r in &spec.rules {
        let ok = match r {
            Rule::KernelIs(v) => kernel == Some(*v),
            Rule::KernelIsNot(v) => kernel != Some(*v),
            Rule::RackSet => rack.is_some(),
            Rule::RackRegexp(_) => matches!(rack, Some("r0" | "r1")),
            Rule::CpuAtLeast(n) => node.attributes["cpu.mhz"]
                .parse::<i64>()
                .is_ok_and(|c| c >= *n),
            Rule::DcIn(_) => node.datacenter == "dc1" || node.datacenter == "dc2",
        };
        if !ok {
            return Err(format!("{r:?} on {}", node.id));
        }
    }
    if spec.distinct_rack.is_some() && rack.is_none() {
        return Err("no rack".into());
    }
    let _ = job;
    Ok(())
}

/// Host ports an allocation holds (group port mappings and task networks).
fn ports_of(a: &Allocation) -> Vec<i32> {
    let Some(r) = &a.allocated_resources else {
        return Vec::new();
    };
    let mut out: Vec<i32> = r.shared.ports.iter().map(|p| p.value).collect();
    for t in r.tasks.values() {
        for n in &t.networks {
            out.extend(n.ports().map(|p| p.value));
        }
    }
    out.retain(|v| *v > 0);
    out
}

/// cpu, memory, disk summed by hand (no lifecycles in generated jobs).
fn footprint(a: &Allocation) -> (i64, i64, i64) {
    let Some(r) = &a.allocated_resources else {
        return (0, 0, 0);
    };
    let cpu = r.tasks.values().map(|t| t.cpu.cpu_shares).sum();
    let mem = r.tasks.values().map(|t| t.memory.memory_mb).sum();
    (cpu, mem, r.shared.disk_mb)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn placements_are_feasible_fit_and_never_share_a_port(
        node_specs in prop::collection::vec(node_spec(), 1..14),
        job_specs in prop::collection::vec(job_spec(), 1..5),
        removals in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        seed in any::<u64>(),
    ) {
        let (nodes, existing) = build_nodes(&node_specs);
        let mut s = Scheduler::new(&nodes, &existing);
        let mut live: Vec<Allocation> = existing.clone();
        // Stop some existing allocations in the plan.
        for r in &removals {
            if live.is_empty() {
                break;
            }
            let gone = live.remove(r.index(live.len()));
            prop_assert!(s.remove(&gone));
        }
        let by_id: BTreeMap<&str, &Node> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let jobs: Vec<Job> = job_specs.iter().enumerate().map(|(i, sp)| build_job(i, sp)).collect();
        let mut placed_for: Vec<Vec<String>> = vec![Vec::new(); jobs.len()];
        for (ji, (j, spec)) in jobs.iter().zip(&job_specs).enumerate() {
            for k in 0..spec.count {
                let o = SelectOptions { seed: seed ^ ((ji as u64) << 32 | u64::from(k)), ..Default::default() };
                match s.select(j, &j.task_groups[0], &o) {
                    Ok(p) => {
                        let n = by_id[p.node_id.as_str()];
                        // (1) never a placement on an infeasible node.
                        if let Err(why) = feasible(n, j, spec) {
                            prop_assert!(false, "placed {} on infeasible node: {why}", j.id);
                        }
                        let m = &p.metric;
                        prop_assert!(m.nodes_evaluated > m.nodes_filtered + m.nodes_exhausted);
                        placed_for[ji].push(p.node_id.0.clone());
                        live.push(fixtures::alloc_from(j, "web", &p));
                    }
                    Err(m) => {
                        prop_assert_eq!(m.nodes_evaluated, m.nodes_filtered + m.nodes_exhausted);
                        prop_assert!(m.score_meta_data.is_empty());
                    }
                }
            }
        }
        for (ji, spec) in job_specs.iter().enumerate() {
            let on = &placed_for[ji];
            if spec.distinct_hosts {
                let unique: BTreeSet<&String> = on.iter().collect();
                prop_assert_eq!(unique.len(), on.len(), "distinct_hosts");
            }
            if let Some(limit) = spec.distinct_rack {
                let mut per_rack: BTreeMap<&str, u8> = BTreeMap::new();
                for id in on {
                    *per_rack.entry(by_id[id.as_str()].meta["rack"].as_str()).or_default() += 1;
                }
                prop_assert!(per_rack.values().all(|c| *c <= limit), "{per_rack:?}");
            }
        }
        for n in &nodes {
            let on: Vec<&Allocation> = live.iter().filter(|a| a.node_id == n.id).collect();
            // (2) never over a node's capacity.
            let (cpu, mem, disk) = on.iter().map(|a| footprint(a)).fold((0, 0, 0), |acc, f| {
                (acc.0 + f.0, acc.1 + f.1, acc.2 + f.2)
            });
            let cap = n.node_resources.as_ref().map(|r| r.comparable()).unwrap_or_default();
            let reserved = n.reserved_resources.as_ref().map(|r| r.comparable()).unwrap_or_default();
            prop_assert!(cpu <= cap.cpu_shares - reserved.cpu_shares, "cpu on {}", n.id);
            prop_assert!(mem <= cap.memory_mb - reserved.memory_mb, "memory on {}", n.id);
            prop_assert!(disk <= cap.disk_mb - reserved.disk_mb, "disk on {}", n.id);
            // (3) no host port used twice on a node, nor one the node reserves.
            let mut seen = BTreeSet::new();
            let reserved_port = n
                .reserved_resources
                .as_ref()
                .and_then(|r| r.networks.reserved_host_ports.parse::<i32>().ok());
            for a in &on {
                for p in ports_of(a) {
                    prop_assert!(seen.insert(p), "port {p} twice on {}", n.id);
                    prop_assert!(Some(p) != reserved_port, "reserved port {p} on {}", n.id);
                }
            }
            // The plan applier agrees.
            prop_assert_eq!(fits(n, &on), Ok(()));
            // And the scheduler's own accounting matches.
            let u = s.usage(&n.id).expect("usage");
            prop_assert_eq!(u.used.cpu_shares, cpu);
            prop_assert_eq!(u.used.memory_mb, mem);
            prop_assert_eq!(u.allocs as usize, on.len());
        }
    }
}
