//! Expectation tests: one scenario each, built from the fixtures.

use super::fixtures::{self, alloc, job, node};
use super::*;
use caravan_schemas::alloc::{ClientStatus, DesiredStatus};
use caravan_schemas::job::{Job, JobType};
use caravan_schemas::node::NodeStatus;
use std::collections::{BTreeMap, BTreeSet};

fn opts(seed: u64) -> SelectOptions {
    SelectOptions {
        seed,
        ..Default::default()
    }
}

#[allow(clippy::result_large_err)]
fn place(s: &mut Scheduler, job: &Job, seed: u64) -> Result<Placement, AllocMetric> {
    s.select(job, &job.task_groups[0], &opts(seed))
}

#[allow(clippy::result_large_err)]
fn place_group(
    s: &mut Scheduler,
    job: &Job,
    group: &str,
    seed: u64,
) -> Result<Placement, AllocMetric> {
    let g = job.group(group).expect("group");
    s.select(job, g, &opts(seed))
}

/// Places `n` allocations (each of its own job when `distinct_jobs`), returning node IDs.
fn place_n(s: &mut Scheduler, base: &Job, n: usize, distinct_jobs: bool) -> Vec<String> {
    (0..n)
        .map(|i| {
            let mut j = base.clone();
            if distinct_jobs {
                j.id = format!("{}-{i}", base.id).into();
            }
            place(s, &j, i as u64 * 7919)
                .unwrap_or_else(|m| panic!("placement {i} failed: {m:?}"))
                .node_id
                .0
        })
        .collect()
}

fn tally(ids: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id.clone()).or_default() += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Constraints.
// ---------------------------------------------------------------------------------------------

#[test]
fn every_constraint_operator_accepts_and_rejects() {
    // (node attribute value, operand, RTarget, feasible)
    let cases: &[(Option<&str>, &str, &str, bool)] = &[
        (Some("linux"), "=", "linux", true),
        (Some("linux"), "=", "windows", false),
        (Some("linux"), "==", "linux", true),
        (Some("linux"), "is", "linux", true),
        (Some("linux"), "", "linux", true),
        (None, "=", "linux", false),
        (Some("linux"), "!=", "windows", true),
        (Some("linux"), "!=", "linux", false),
        (Some("linux"), "not", "windows", true),
        (Some("linux"), "not", "linux", false),
        (None, "!=", "linux", true),
        (Some("10"), ">", "9", true),
        (Some("9"), ">", "10", false),
        (Some("1.5"), "<", "10", true),
        (Some("2.5"), ">=", "2.5", true),
        (Some("3"), "<=", "2", false),
        (Some("abc"), "<", "abd", true),
        (Some("b"), ">", "a", true),
        (Some("a"), ">=", "b", false),
        (None, "<", "5", false),
        (Some("linux-5.10"), "regexp", r"^linux-5\.", true),
        (Some("darwin"), "regexp", "^linux", false),
        (Some("x"), "regexp", "[", false),
        (None, "regexp", ".*", false),
        (Some("1.2.3"), "version", ">= 1.2, < 2.0", true),
        (Some("2.1.0"), "version", ">= 1.2, < 2.0", false),
        (Some("1.2.9"), "version", "~> 1.2.3", true),
        (Some("1.3.0"), "version", "~> 1.2.3", false),
        (Some("1.3.0"), "version", "!= 1.3", false),
        (Some("1.0.0-beta1"), "version", ">= 0.9", false),
        (Some("garbage"), "version", ">= 1.0", false),
        (Some("1.0.0"), "version", "not a constraint", false),
        (Some("1.0.0-beta.1"), "semver", ">= 0.9.0", true),
        (Some("0.8.0"), "semver", ">= 0.9.0", false),
        (Some("1.2.3"), "semver", "~> 1.2", false),
        (Some("a,b,c"), "set_contains", "a,c", true),
        (Some("a, b"), "set_contains", "b", true),
        (Some("a,b"), "set_contains", "a,d", false),
        (Some("a,b,c"), "set_contains_all", "c,b", true),
        (Some("a,b"), "set_contains_all", "d", false),
        (Some("a,b"), "set_contains_any", "d,b", true),
        (Some("a,b"), "set_contains_any", "d,e", false),
        (None, "set_contains_any", "a", false),
        (Some("x"), "is_set", "", true),
        (None, "is_set", "", false),
        (None, "is_not_set", "", true),
        (Some("x"), "is_not_set", "", false),
        (Some("x"), "bogus", "x", false),
    ];
    for level in ["job", "group", "task"] {
        for &(value, op, r, feasible) in cases {
            let mut n = node().id("n1");
            if let Some(v) = value {
                n = n.attr("x", v);
            }
            let nodes = [n.build()];
            let b = job();
            let j = match level {
                "job" => b.constraint("${attr.x}", op, r),
                "group" => b.group_constraint("${attr.x}", op, r),
                _ => b.task_constraint("${attr.x}", op, r),
            }
            .build();
            let mut s = Scheduler::new(&nodes, []);
            let got = place(&mut s, &j, 1);
            assert_eq!(got.is_ok(), feasible, "{level}: {value:?} {op} {r:?}");
            if let Err(m) = got {
                let key = format!("${{attr.x}} {op} {r}");
                assert_eq!(m.nodes_evaluated, 1, "{key}");
                assert_eq!(m.nodes_filtered, 1, "{key}");
                assert_eq!(m.constraint_filtered.get(&key), Some(&1), "{key}: {m:?}");
            }
        }
    }
}

#[test]
fn targets_interpolate_node_fields() {
    let n = node()
        .id("node-a")
        .name("alpha")
        .dc("dc1")
        .class("gpu")
        .pool("default")
        .meta("rack", "r7")
        .attr("x", "r7")
        .build();
    let nodes = [n];
    let cases = [
        ("${node.unique.id}", "node-a", true),
        ("${node.unique.name}", "alpha", true),
        ("${node.datacenter}", "dc1", true),
        ("${node.class}", "gpu", true),
        ("${node.pool}", "default", true),
        ("${meta.rack}", "r7", true),
        ("${meta.rack}", "${attr.x}", true),
        ("${meta.rack}", "r8", false),
        ("${attr.x}", "${attr.missing}", false),
        ("${meta.missing}", "r7", false),
        ("${what.ever}", "r7", false),
    ];
    for (l, r, feasible) in cases {
        let j = job().constraint(l, "=", r).build();
        let mut s = Scheduler::new(&nodes, []);
        assert_eq!(place(&mut s, &j, 0).is_ok(), feasible, "{l} = {r}");
    }
}

#[test]
fn regexes_and_versions_are_compiled_once_per_text() {
    let nodes: Vec<Node> = (0..50)
        .map(|i| node().attr("v", &format!("1.{i}.0")).build())
        .collect();
    let j = job()
        .count(100)
        .constraint("${attr.v}", "version", ">= 1.25")
        .constraint("${attr.v}", "regexp", r"^1\.\d+\.0$")
        .build();
    let mut s = Scheduler::new(&nodes, []);
    for i in 0..30 {
        let p = place(&mut s, &j, i).expect("placed");
        let v = s
            .node(&p.node_id)
            .and_then(|n| n.attribute("v"))
            .expect("attr");
        let minor: u32 = v
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .expect("minor");
        assert!(minor >= 25, "{v}");
    }
}

// ---------------------------------------------------------------------------------------------
// Which nodes are candidates at all.
// ---------------------------------------------------------------------------------------------

#[test]
fn datacenter_globs_select_nodes() {
    let nodes = [
        node().id("a").dc("dc1").build(),
        node().id("b").dc("dc2").build(),
        node().id("c").dc("eu-west-1").build(),
    ];
    let cases: [(&[&str], &[&str]); 5] = [
        (&["dc*"], &["dc1", "dc2"]),
        (&["*"], &["dc1", "dc2", "eu-west-1"]),
        (&["eu-*"], &["eu-west-1"]),
        (&["dc2", "eu-west-1"], &["dc2", "eu-west-1"]),
        (&[], &["dc1", "dc2", "eu-west-1"]),
    ];
    for (dcs, want) in cases {
        let j = job().datacenters(dcs).cpu(10).memory(10).count(30).build();
        let mut s = Scheduler::new(&nodes, []);
        let mut seen = BTreeSet::new();
        for i in 0..30 {
            let p = place(&mut s, &j, i).expect("placed");
            assert_eq!(p.metric.nodes_in_pool as usize, want.len());
            let avail: Vec<&str> = p
                .metric
                .nodes_available
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(avail, want, "{dcs:?}");
            seen.insert(s.node(&p.node_id).expect("node").datacenter.clone());
        }
        let seen: Vec<&str> = seen.iter().map(String::as_str).collect();
        assert_eq!(seen, want, "{dcs:?}");
    }
}

#[test]
fn node_pools_select_nodes() {
    let nodes = [
        node().id("a").pool("default").build(),
        node().id("b").pool("").build(),
        node().id("c").pool("gpu").build(),
    ];
    for (pool, want) in [("default", 2), ("", 2), ("all", 3), ("gpu", 1), ("none", 0)] {
        let j = job().pool(pool).build();
        let mut s = Scheduler::new(&nodes, []);
        let m = match place(&mut s, &j, 3) {
            Ok(p) => p.metric,
            Err(m) => m,
        };
        assert_eq!(m.nodes_in_pool, want, "{pool}");
        let expected_pool = if pool.is_empty() { "default" } else { pool };
        assert_eq!(m.node_pool, expected_pool);
    }
}

#[test]
fn ineligible_draining_and_down_nodes_are_never_candidates() {
    let mut nodes = vec![
        node().id("ineligible").ineligible().build(),
        node().id("draining").draining().build(),
        node().id("down").status(NodeStatus::Down).build(),
        node().id("init").status(NodeStatus::Initializing).build(),
        node()
            .id("disconnected")
            .status(NodeStatus::Disconnected)
            .build(),
    ];
    let j = job().count(10).build();
    let mut s = Scheduler::new(&nodes, []);
    let m = place(&mut s, &j, 0).expect_err("no ready node");
    assert_eq!((m.nodes_evaluated, m.nodes_in_pool), (0, 0));
    assert!(m.nodes_available.is_empty());

    nodes.push(node().id("ready").build());
    let mut s = Scheduler::new(&nodes, []);
    for i in 0..5 {
        let p = place(&mut s, &j, i).expect("placed");
        assert_eq!(p.node_id.as_str(), "ready");
        assert_eq!(p.metric.nodes_in_pool, 1);
        assert_eq!(p.metric.nodes_evaluated, 1);
    }
}

#[test]
fn missing_or_unhealthy_drivers_filter_nodes() {
    let nodes = [
        node().id("no-docker").without_driver("docker").build(),
        node().id("unhealthy").driver("docker", true, false).build(),
        node()
            .id("attr-only")
            .without_driver("docker")
            .attr("driver.docker", "1")
            .build(),
        node()
            .id("attr-false")
            .without_driver("docker")
            .attr("driver.docker", "false")
            .build(),
    ];
    let j = job().driver("docker").count(4).build();
    let mut s = Scheduler::new(&nodes, []);
    let p = place(&mut s, &j, 0).expect("placed");
    assert_eq!(p.node_id.as_str(), "attr-only");
    assert_eq!(p.metric.nodes_evaluated, 4);
    assert_eq!(p.metric.nodes_filtered, 3);
    assert_eq!(p.metric.constraint_filtered["missing drivers"], 3);

    let nodes = [node().without_driver("java").build()];
    let j = job().driver("java").build();
    let mut s = Scheduler::new(&nodes, []);
    let m = place(&mut s, &j, 0).expect_err("no java");
    assert_eq!(m.constraint_filtered["missing drivers"], 1);
}

#[test]
fn class_counts_follow_filters_and_exhaustion() {
    let nodes = [
        node().class("small").cpu(100).build(),
        node()
            .class("windows")
            .attr("kernel.name", "windows")
            .build(),
    ];
    let j = job()
        .constraint("${attr.kernel.name}", "=", "linux")
        .build();
    let mut s = Scheduler::new(&nodes, []);
    let m = place(&mut s, &j, 0).expect_err("nothing fits");
    assert_eq!(m.class_filtered["windows"], 1);
    assert_eq!(m.class_exhausted["small"], 1);
    assert_eq!(m.constraint_filtered["${attr.kernel.name} = linux"], 1);
    assert_eq!(m.dimension_exhausted["cpu"], 1);
}

#[test]
fn host_volumes_devices_and_host_networks_are_checked() {
    let nodes = [
        node().id("vol").host_volume("data", false).build(),
        node().id("ro").host_volume("data", true).build(),
        node().id("none").build(),
    ];
    let j = job().volume("data", "data", false).count(3).build();
    let mut s = Scheduler::new(&nodes, []);
    let p = place(&mut s, &j, 0).expect("placed");
    assert_eq!(p.node_id.as_str(), "vol");
    assert_eq!(
        p.metric.constraint_filtered["missing compatible host volumes"],
        2
    );
    // A read-only request is fine on a read-only volume.
    let j = job()
        .volume("data", "data", true)
        .cpu(10)
        .memory(10)
        .count(3)
        .build();
    let mut s = Scheduler::new(&nodes, []);
    let used: BTreeSet<String> = (0..20)
        .map(|i| place(&mut s, &j, i).expect("placed").node_id.0)
        .collect();
    assert_eq!(used, BTreeSet::from(["ro".to_owned(), "vol".to_owned()]));

    let mut j = job().build();
    j.task_groups[0].tasks[0]
        .resources
        .devices
        .push(caravan_schemas::resources::RequestedDevice {
            name: "nvidia/gpu".into(),
            count: 1,
            ..Default::default()
        });
    let mut s = Scheduler::new(&nodes, []);
    let m = place(&mut s, &j, 0).expect_err("no devices");
    assert_eq!(m.constraint_filtered["missing devices"], 3);

    let nodes = [
        node().id("pub").host_network("public").build(),
        node().build(),
    ];
    let j = job().host_network_port("http", "public").count(2).build();
    let mut s = Scheduler::new(&nodes, []);
    let p = place(&mut s, &j, 0).expect("placed");
    assert_eq!(p.node_id.as_str(), "pub");
    assert_eq!(
        p.metric.constraint_filtered["missing host network \"public\" for port \"http\""],
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Resources and ports.
// ---------------------------------------------------------------------------------------------

#[test]
fn exhaustion_names_the_dimension() {
    let nodes = [node().cpu(1000).memory(1000).disk(1000).build()];
    let cases = [
        (job().cpu(2000).build(), "cpu"),
        (job().memory(2000).build(), "memory"),
        (job().disk(2000).build(), "disk"),
        (job().cpu(2000).memory(2000).build(), "cpu"),
    ];
    for (j, dim) in cases {
        let mut s = Scheduler::new(&nodes, []);
        let m = place(&mut s, &j, 0).expect_err(dim);
        assert_eq!(m.nodes_exhausted, 1, "{dim}");
        assert_eq!(m.nodes_filtered, 0, "{dim}");
        assert_eq!(
            m.dimension_exhausted,
            BTreeMap::from([(dim.to_owned(), 1)]),
            "{dim}"
        );
        let r = &m.resources_exhausted["web"];
        let task = &j.task_groups[0].tasks[0].resources;
        assert_eq!(r.cpu, if dim == "cpu" { task.cpu } else { 0 });
        assert_eq!(
            r.memory_mb,
            if dim == "memory" { task.memory_mb } else { 0 }
        );
    }
    // Reserved resources are not offered.
    let nodes = [node().cpu(1000).reserve(600, 0, 0).build()];
    let mut s = Scheduler::new(&nodes, []);
    let m = place(&mut s, &job().cpu(500).build(), 0).expect_err("reserved");
    assert_eq!(m.dimension_exhausted["cpu"], 1);
    // Existing allocations use room.
    let nodes = [node().id("n").cpu(1000).build()];
    let existing = alloc()
        .node(&nodes[0])
        .job_id("other")
        .resources(600, 10, 0)
        .build();
    let mut s = Scheduler::new(&nodes, [&existing]);
    let m = place(&mut s, &job().cpu(500).build(), 0).expect_err("used");
    assert_eq!(m.dimension_exhausted["cpu"], 1);
}

#[test]
fn task_lifecycles_do_not_add_up() {
    let nodes = [node().cpu(1000).build()];
    // main 600 + prestart 800 (not a sidecar) => max(600, 800) = 800.
    let j = job()
        .cpu(600)
        .with_task("init")
        .lifecycle("prestart", false)
        .build();
    let mut j = j;
    j.task_groups[0].tasks[1].resources.cpu = 800;
    let mut s = Scheduler::new(&nodes, []);
    let p = place(&mut s, &j, 0).expect("fits");
    assert_eq!(p.resources.comparable().cpu_shares, 800);
    assert_eq!(
        p.resources.task_lifecycles["init"]
            .as_ref()
            .map(|l| l.hook.as_str()),
        Some("prestart")
    );
    assert_eq!(p.resources.task_lifecycles["web"], None);
    // A prestart sidecar runs alongside: 600 + 500 > 1000.
    let mut j = job()
        .cpu(600)
        .with_task("proxy")
        .lifecycle("prestart", true)
        .build();
    j.task_groups[0].tasks[1].resources.cpu = 500;
    let mut s = Scheduler::new(&nodes, []);
    let m = place(&mut s, &j, 0).expect_err("sidecar adds up");
    assert_eq!(m.dimension_exhausted["cpu"], 1);
}

#[test]
fn static_port_collisions_exhaust_the_node() {
    let nodes = [node().id("busy").build(), node().id("free").build()];
    let holder = alloc()
        .node(&nodes[0])
        .job_id("other")
        .port("http", 8080)
        .build();
    let j = job().static_port("http", 8080).count(3).build();
    let mut s = Scheduler::new(&nodes, [&holder]);
    let p = place(&mut s, &j, 0).expect("the free node");
    assert_eq!(p.node_id.as_str(), "free");
    let mapping = p.resources.shared.port("http").expect("mapping");
    assert_eq!(mapping.value, 8080);
    // Now both hold 8080.
    let m = place(&mut s, &j, 1).expect_err("both taken");
    assert_eq!(m.nodes_exhausted, 2);
    assert_eq!(
        m.dimension_exhausted["network: reserved port collision http=8080"],
        2
    );

    // Ports the node reserves collide too.
    let nodes = [node().reserved_ports("22,8000-8100").build()];
    let mut s = Scheduler::new(&nodes, []);
    let m = place(&mut s, &job().static_port("admin", 8050).build(), 0).expect_err("reserved");
    assert_eq!(
        m.dimension_exhausted["network: reserved port collision admin=8050"],
        1
    );
    // And task-level (legacy) static ports.
    let mut s = Scheduler::new(&nodes, []);
    let m = place(&mut s, &job().task_port("ssh", 22).build(), 0).expect_err("reserved");
    assert_eq!(
        m.dimension_exhausted["network: reserved port collision ssh=22"],
        1
    );
}

#[test]
fn existing_port_collisions_make_a_node_unusable() {
    let nodes = [node().build()];
    let a = alloc().node(&nodes[0]).port("http", 9000).build();
    let b = alloc().node(&nodes[0]).port("http", 9000).build();
    let mut s = Scheduler::new(&nodes, [&a, &b]);
    let m = place(&mut s, &job().build(), 0).expect_err("collision");
    assert_eq!(m.dimension_exhausted["network: port collision"], 1);
    s.remove(&b);
    assert!(place(&mut s, &job().build(), 0).is_ok());
}

#[test]
fn dynamic_ports_are_assigned_in_range_and_unique_per_node() {
    let nodes = [node()
        .id("n")
        .attr("unique.network.ip-address", "192.168.1.5")
        .dynamic_ports(20000, 20009)
        .build()];
    let j = job()
        .cpu(10)
        .memory(10)
        .dynamic_port("http", -1)
        .dynamic_port("db", 6379)
        .count(10)
        .build();
    let mut s = Scheduler::new(&nodes, []);
    let mut seen = BTreeSet::new();
    for i in 0..5 {
        let p = place(&mut s, &j, i).expect("ports left");
        let shared = &p.resources.shared;
        assert_eq!(shared.ports.len(), 2);
        for m in &shared.ports {
            assert!((20000..=20009).contains(&m.value), "{m:?}");
            assert!(seen.insert(m.value), "port {} reused", m.value);
            assert_eq!(m.host_ip, "192.168.1.5");
        }
        let http = shared.port("http").expect("http");
        assert_eq!(http.to, http.value, "to = -1 maps to the host port");
        assert_eq!(shared.port("db").expect("db").to, 6379);
        let net = &shared.networks[0];
        assert_eq!(net.ip, "192.168.1.5");
        assert_eq!(net.port("http").map(|p| p.value), Some(http.value));
    }
    let m = place(&mut s, &j, 99).expect_err("range exhausted");
    assert_eq!(
        m.dimension_exhausted["network: dynamic port selection failed"],
        1
    );
}

#[test]
fn task_network_ports_are_assigned() {
    let nodes = [node().build()];
    let j = job().task_port("http", 0).task_port("admin", 9999).build();
    let mut s = Scheduler::new(&nodes, []);
    let p = place(&mut s, &j, 5).expect("placed");
    let net = &p.resources.tasks["web"].networks[0];
    let http = net.port("http").expect("http").value;
    assert!((20000..=32000).contains(&http));
    assert_eq!(net.port("admin").expect("admin").value, 9999);
    let usage = s.usage(&p.node_id).expect("usage");
    let held: Vec<u16> = usage.ports.iter().map(|(p, _)| *p).collect();
    assert!(held.contains(&9999) && held.contains(&(http as u16)));
}

#[test]
fn bandwidth_is_checked_when_the_node_declares_it() {
    let nodes = [node().bandwidth(100).build()];
    let j = job().mbits(60).count(3).build();
    let mut s = Scheduler::new(&nodes, []);
    assert!(place(&mut s, &j, 0).is_ok());
    let m = place(&mut s, &j, 1).expect_err("bandwidth");
    assert_eq!(m.dimension_exhausted["bandwidth exceeded"], 1);
}

// ---------------------------------------------------------------------------------------------
// Ranking.
// ---------------------------------------------------------------------------------------------

#[test]
fn bin_packing_fills_one_node_before_the_next() {
    // Two nodes with room for 4 allocations each; eight that cannot fit anything (exhausted
    // nodes do not count against the sample, so every select sees both big nodes).
    let mut nodes: Vec<Node> = (0..8).map(|_| node().cpu(100).build()).collect();
    nodes.push(node().id("big-1").cpu(2000).memory(2048).build());
    nodes.push(node().id("big-2").cpu(2000).memory(2048).build());
    let j = job().cpu(500).memory(256).build();
    let mut s = Scheduler::new(&nodes, []);
    let placed = place_n(&mut s, &j, 8, true);
    let first = &placed[0];
    assert!(placed[..4].iter().all(|n| n == first), "{placed:?}");
    assert!(placed[4..].iter().all(|n| n != first), "{placed:?}");
    assert_eq!(tally(&placed).len(), 2);
    for id in ["big-1", "big-2"] {
        let u = s.usage(&NodeId::new(id)).expect("usage");
        assert_eq!(u.used.cpu_shares, 2000);
    }
}

#[test]
fn bin_packing_prefers_the_fuller_node() {
    let nodes = [node().id("empty").build(), node().id("half").build()];
    let other = alloc()
        .node(&nodes[1])
        .job_id("other")
        .resources(2000, 4096, 0)
        .build();
    let mut s = Scheduler::new(&nodes, [&other]);
    for i in 0..3 {
        let j = job().id(&format!("j{i}")).build();
        let p = place(&mut s, &j, i).expect("placed");
        assert_eq!(p.node_id.as_str(), "half");
        let best = p.metric.max_norm_score().expect("scores");
        assert_eq!(best.node_id.as_str(), "half");
        assert!(best.scores.contains_key(scorers::BINPACK));
    }
}

#[test]
fn job_anti_affinity_spreads_a_group_over_equal_nodes() {
    let nodes: Vec<Node> = (0..3).map(|_| node().build()).collect();
    let j = job().count(3).build();
    let mut s = Scheduler::new(&nodes, []);
    let placed = place_n(&mut s, &j, 3, false);
    assert_eq!(tally(&placed).len(), 3, "{placed:?}");
    // A fourth lands on a node already used, scored down by the anti-affinity.
    let p = place(&mut s, &j, 42).expect("placed");
    let used = &p.metric.score_meta_data;
    assert!(
        used.iter()
            .all(|m| m.scores[scorers::JOB_ANTI_AFFINITY] < 0.0)
    );
    assert!(
        used.iter()
            .all(|m| (m.scores[scorers::JOB_ANTI_AFFINITY] + 2.0 / 3.0).abs() < 1e-9)
    );
}

#[test]
fn distinct_hosts_at_job_and_group_level() {
    let nodes: Vec<Node> = (0..3).map(|_| node().build()).collect();
    let j = job().constraint("", DISTINCT_HOSTS, "").count(5).build();
    let mut s = Scheduler::new(&nodes, []);
    let placed = place_n(&mut s, &j, 3, false);
    assert_eq!(tally(&placed).len(), 3);
    let m = place(&mut s, &j, 9).expect_err("every host used");
    assert_eq!(m.constraint_filtered["distinct_hosts"], 3);
    assert_eq!(m.nodes_filtered, 3);

    // Group level: each group may use each node once.
    let nodes: Vec<Node> = (0..2).map(|_| node().build()).collect();
    let j = job()
        .group_constraint("", DISTINCT_HOSTS, "true")
        .count(3)
        .with_group("api")
        .group_constraint("", DISTINCT_HOSTS, "")
        .count(3)
        .build();
    let mut s = Scheduler::new(&nodes, []);
    for g in ["web", "api"] {
        let a = place_group(&mut s, &j, g, 1).expect("first").node_id;
        let b = place_group(&mut s, &j, g, 2).expect("second").node_id;
        assert_ne!(a, b, "{g}");
        let m = place_group(&mut s, &j, g, 3).expect_err("third");
        assert_eq!(m.constraint_filtered["distinct_hosts"], 2, "{g}");
    }
    // distinct_hosts = false turns it off.
    let j = job()
        .constraint("", DISTINCT_HOSTS, "false")
        .count(5)
        .build();
    let nodes = [node().build()];
    let mut s = Scheduler::new(&nodes, []);
    place_n(&mut s, &j, 3, false);

    // Job level counts every group of the job.
    let nodes: Vec<Node> = (0..2).map(|_| node().build()).collect();
    let j = job()
        .constraint("", DISTINCT_HOSTS, "")
        .count(2)
        .with_group("api")
        .build();
    let mut s = Scheduler::new(&nodes, []);
    place_group(&mut s, &j, "web", 1).expect("web 1");
    place_group(&mut s, &j, "web", 2).expect("web 2");
    let m = place_group(&mut s, &j, "api", 3).expect_err("job already on both");
    assert_eq!(m.constraint_filtered["distinct_hosts"], 2);
}

#[test]
fn distinct_property_limits_allocations_per_value() {
    let nodes = [
        node().meta("rack", "r1").build(),
        node().meta("rack", "r1").build(),
        node().meta("rack", "r2").build(),
        node().meta("rack", "r2").build(),
    ];
    let j = job()
        .group_constraint("${meta.rack}", DISTINCT_PROPERTY, "")
        .count(4)
        .build();
    let mut s = Scheduler::new(&nodes, []);
    let placed = place_n(&mut s, &j, 2, false);
    let racks: BTreeSet<String> = placed
        .iter()
        .map(|id| s.node(&NodeId::new(id.as_str())).expect("node").meta["rack"].clone())
        .collect();
    assert_eq!(racks.len(), 2);
    let m = place(&mut s, &j, 7).expect_err("racks used");
    assert_eq!(m.nodes_filtered, 4);
    assert_eq!(
        m.constraint_filtered["distinct_property: ${meta.rack}=r1 used by 1 allocs"],
        2
    );
    assert_eq!(
        m.constraint_filtered["distinct_property: ${meta.rack}=r2 used by 1 allocs"],
        2
    );

    // RTarget 2 allows two per rack; existing allocations count.
    let j = job()
        .group_constraint("${meta.rack}", DISTINCT_PROPERTY, "2")
        .count(5)
        .build();
    let existing = alloc().node(&nodes[0]).job(&j).build();
    let mut s = Scheduler::new(&nodes, [&existing]);
    place_n(&mut s, &j, 3, false);
    let m = place(&mut s, &j, 11).expect_err("two per rack");
    assert_eq!(m.nodes_filtered, 4);
    // Stopping one frees its rack.
    assert!(s.remove(&existing));
    let p = place(&mut s, &j, 12).expect("freed");
    assert_eq!(s.node(&p.node_id).expect("node").meta["rack"], "r1");

    // Job level counts every group; a node without the property is filtered.
    let nodes = [node().meta("rack", "r1").build(), node().build()];
    let j = job()
        .constraint("${meta.rack}", DISTINCT_PROPERTY, "")
        .with_group("api")
        .build();
    let mut s = Scheduler::new(&nodes, []);
    place_group(&mut s, &j, "web", 1).expect("web");
    let m = place_group(&mut s, &j, "api", 1).expect_err("rack used by the job");
    assert_eq!(
        m.constraint_filtered["missing property \"${meta.rack}\""],
        1
    );
    assert_eq!(
        m.constraint_filtered["distinct_property: ${meta.rack}=r1 used by 1 allocs"],
        1
    );

    // A bad RTarget filters every node.
    let j = job()
        .group_constraint("${meta.rack}", DISTINCT_PROPERTY, "x")
        .build();
    let mut s = Scheduler::new(&nodes, []);
    let m = place(&mut s, &j, 0).expect_err("bad rtarget");
    assert_eq!(m.nodes_filtered, 2);
    assert!(
        m.constraint_filtered
            .keys()
            .all(|k| k.starts_with("failed to convert RTarget \"x\""))
    );
}

#[test]
fn affinities_prefer_or_avoid_matching_nodes() {
    let nodes: Vec<Node> = (0..6)
        .map(|i| {
            node()
                .meta("ssd", if i % 2 == 0 { "true" } else { "false" })
                .build()
        })
        .collect();
    for (weight, want) in [(50, "true"), (-50, "false")] {
        let j = job().affinity("${meta.ssd}", "=", "true", weight).build();
        let mut s = Scheduler::new(&nodes, []);
        for i in 0..6 {
            let mut j = j.clone();
            j.id = format!("j{i}").into();
            let p = place(&mut s, &j, i).expect("placed");
            assert_eq!(
                s.node(&p.node_id).expect("node").meta["ssd"],
                want,
                "{weight}"
            );
            let best = p.metric.max_norm_score().expect("score");
            let affinity = best.scores.get(scorers::NODE_AFFINITY).copied();
            if weight > 0 {
                assert_eq!(affinity, Some(1.0));
            } else {
                // Non-matching nodes have no affinity score recorded.
                assert_eq!(affinity, None);
            }
        }
    }
    // Group and task affinities combine with the job's: weights normalize by their sum.
    let mut j = job()
        .affinity("${meta.ssd}", "=", "true", 20)
        .group_affinity("${meta.ssd}", "=", "true", 20)
        .build();
    j.task_groups[0].tasks[0]
        .affinities
        .push(caravan_schemas::job::Affinity {
            l_target: "${meta.ssd}".into(),
            operand: "=".into(),
            r_target: "false".into(),
            weight: 60,
        });
    let mut s = Scheduler::new(&nodes, []);
    let p = place(&mut s, &j, 0).expect("placed");
    assert_eq!(s.node(&p.node_id).expect("node").meta["ssd"], "false");
}

#[test]
fn spread_targets_are_honoured() {
    let nodes: Vec<Node> = (0..20)
        .map(|i| node().dc(if i % 2 == 0 { "dc1" } else { "dc2" }).build())
        .collect();
    for (targets, want1) in [
        (vec![("dc1", 50), ("dc2", 50)], 10usize),
        (vec![("dc1", 80), ("dc2", 20)], 16),
        (vec![("dc1", 70)], 14),
        (vec![], 10),
    ] {
        let j = job()
            .datacenters(&["dc1", "dc2"])
            .count(20)
            .spread("${node.datacenter}", 100, &targets)
            .build();
        let mut s = Scheduler::new(&nodes, []);
        let placed = place_n(&mut s, &j, 20, false);
        let in_dc1 = placed
            .iter()
            .filter(|id| s.node(&NodeId::new(id.as_str())).expect("node").datacenter == "dc1")
            .count();
        assert!(
            in_dc1.abs_diff(want1) <= 1,
            "{targets:?}: {in_dc1} in dc1, wanted {want1}"
        );
    }
}

#[test]
fn penalty_nodes_are_avoided_and_preferred_nodes_tried_first() {
    let nodes = [node().id("a").build(), node().id("b").cpu(8000).build()];
    let mut s = Scheduler::new(&nodes, []);
    for i in 0..4 {
        let j = job().id(&format!("j{i}")).build();
        let o = SelectOptions {
            seed: i,
            penalty_nodes: vec![NodeId::new("a")],
            ..Default::default()
        };
        let p = s.select(&j, &j.task_groups[0], &o).expect("placed");
        assert_eq!(p.node_id.as_str(), "b");
    }
    // The preferred node wins even though the other is fuller.
    let j = job().id("sticky").build();
    let o = SelectOptions {
        preferred_node: Some(NodeId::new("a")),
        ..Default::default()
    };
    let p = s.select(&j, &j.task_groups[0], &o).expect("placed");
    assert_eq!(p.node_id.as_str(), "a");
    assert_eq!(p.metric.nodes_evaluated, 1);
    // Unless it has no room: then any node.
    let big = job().id("big").cpu(3800).build();
    let o = SelectOptions {
        preferred_node: Some(NodeId::new("a")),
        ..Default::default()
    };
    let p = s.select(&big, &big.task_groups[0], &o).expect("fallback");
    assert_eq!(p.node_id.as_str(), "b");
}

// ---------------------------------------------------------------------------------------------
// Sampling and metrics.
// ---------------------------------------------------------------------------------------------

#[test]
fn sampling_scores_log2_nodes_for_services_and_two_for_batch() {
    let nodes: Vec<Node> = (0..1000).map(|_| node().build()).collect();
    let mut s = Scheduler::new(&nodes, []);
    let cases = [
        (job().id("svc").count(1000).build(), 10),
        (job().id("batch").batch().count(1000).build(), 2),
        (
            job()
                .id("spread")
                .count(20)
                .spread("${node.datacenter}", 50, &[])
                .build(),
            100,
        ),
        (
            job()
                .id("aff")
                .count(500)
                .affinity("${node.class}", "=", "x", 50)
                .build(),
            500,
        ),
    ];
    for (j, want) in cases {
        // Later placements of spread and affinity jobs may set aside (up to three) nodes
        // scored at or below zero, so only their first placement is exact.
        let exact = if j.spreads.is_empty() && j.affinities.is_empty() {
            5
        } else {
            1
        };
        for i in 0..5 {
            let p = place(&mut s, &j, i).expect("placed");
            if i < exact {
                assert_eq!(p.metric.nodes_evaluated, want, "{}", j.id);
            } else {
                assert!(
                    (want..=want + 3).contains(&p.metric.nodes_evaluated),
                    "{}",
                    j.id
                );
            }
            assert_eq!(p.metric.nodes_in_pool, 1000);
            assert_eq!(p.metric.nodes_available["dc1"], 1000);
            assert!(p.metric.score_meta_data.len() <= 5);
            let scores: Vec<f64> = p
                .metric
                .score_meta_data
                .iter()
                .map(|m| m.norm_score)
                .collect();
            assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
            assert_eq!(scores.first().copied(), Some(p.score));
        }
    }
}

#[test]
fn success_metrics_record_the_scores() {
    let nodes: Vec<Node> = (0..4).map(|_| node().build()).collect();
    let j = job().count(2).build();
    let mut s = Scheduler::new(&nodes, []);
    let p = place(&mut s, &j, 0).expect("placed");
    let m = &p.metric;
    // max(2, ceil(log2(4))) = 2 nodes are scored.
    assert_eq!(m.nodes_evaluated, 2);
    assert_eq!((m.nodes_filtered, m.nodes_exhausted), (0, 0));
    assert_eq!(m.score_meta_data.len(), 2);
    for meta in &m.score_meta_data {
        let keys: Vec<&str> = meta.scores.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                scorers::BINPACK,
                scorers::JOB_ANTI_AFFINITY,
                scorers::NODE_AFFINITY,
                scorers::NODE_RESCHEDULE_PENALTY
            ]
        );
    }
}

#[test]
fn placements_are_deterministic_for_a_seed() {
    let nodes: Vec<Node> = (0..200)
        .map(|i| node().id(&format!("n{i}")).build())
        .collect();
    let j = job().count(50).dynamic_port("http", 0).build();
    let run = || {
        let mut s = Scheduler::new(&nodes, []);
        (0..50)
            .map(|i| {
                let p = place(&mut s, &j, 1000 + i).expect("placed");
                (p.node_id.0, p.resources.shared.ports[0].value)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
    // Node order in the input does not matter.
    let mut reversed = nodes.clone();
    reversed.reverse();
    let mut a = Scheduler::new(&nodes, []);
    let mut b = Scheduler::new(&reversed, []);
    for i in 0..20 {
        assert_eq!(
            place(&mut a, &j, i).expect("a").node_id,
            place(&mut b, &j, i).expect("b").node_id
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Plan bookkeeping.
// ---------------------------------------------------------------------------------------------

#[test]
fn remove_frees_room_for_a_destructive_update() {
    let nodes = [node().id("n").cpu(1000).build()];
    let v1 = job().cpu(600).version(1).build();
    let old = alloc()
        .node(&nodes[0])
        .job(&v1)
        .resources(600, 256, 300)
        .build();
    let mut s = Scheduler::new(&nodes, [&old]);
    let v2 = job().cpu(700).version(2).build();
    let m = place(&mut s, &v2, 0).expect_err("no room next to v1");
    assert_eq!(m.dimension_exhausted["cpu"], 1);
    assert!(s.remove(&old));
    assert!(!s.remove(&old), "removed once");
    let p = place(&mut s, &v2, 0).expect("room freed");
    assert_eq!(p.node_id.as_str(), "n");
    assert_eq!(s.usage(&p.node_id).expect("usage").used.cpu_shares, 700);
    // The plan's own placement counts for the next select.
    let m = place(&mut s, &v2, 1).expect_err("full again");
    assert_eq!(m.dimension_exhausted["cpu"], 1);
}

#[test]
fn terminal_allocations_are_ignored() {
    let nodes = [node().cpu(1000).build()];
    let done = alloc()
        .node(&nodes[0])
        .resources(1000, 10, 0)
        .client_status(ClientStatus::Complete)
        .build();
    let stopped = alloc()
        .node(&nodes[0])
        .resources(1000, 10, 0)
        .desired_status(DesiredStatus::Stop)
        .build();
    let mut s = Scheduler::new(&nodes, [&done, &stopped]);
    assert!(place(&mut s, &job().cpu(1000).build(), 0).is_ok());
}

#[test]
fn placements_are_keyed_by_alloc_id() {
    let nodes = [node().id("n").cpu(1000).build()];
    let j = job().cpu(400).build();
    let mut s = Scheduler::new(&nodes, []);
    let o = SelectOptions {
        alloc_id: Some(AllocId::new("a1")),
        ..Default::default()
    };
    let p = s.select(&j, &j.task_groups[0], &o).expect("placed");
    assert!(s.contains(&AllocId::new("a1")));
    // The store later reports the same allocation: not counted twice.
    let mut a = fixtures::alloc_from(&j, "web", &p);
    a.id = AllocId::new("a1");
    s.add(&a);
    assert_eq!(s.usage(&p.node_id).expect("usage").used.cpu_shares, 400);
    assert_eq!(s.usage(&p.node_id).expect("usage").allocs, 1);
    // It completes: freed.
    a.client_status = ClientStatus::Complete;
    s.add(&a);
    assert_eq!(s.usage(&p.node_id).expect("usage").used.cpu_shares, 0);
    assert!(!s.contains(&AllocId::new("a1")));
}

#[test]
fn nodes_can_change_under_a_long_lived_scheduler() {
    let mut s = Scheduler::new([&node().id("a").build()], []);
    let j = job().count(10).build();
    assert_eq!(place(&mut s, &j, 0).expect("a").node_id.as_str(), "a");
    // "a" drains, "b" joins.
    s.upsert_node(node().id("a").draining().build());
    s.upsert_node(node().id("b").build());
    for i in 0..3 {
        assert_eq!(place(&mut s, &j, i).expect("b").node_id.as_str(), "b");
    }
    s.remove_node(&NodeId::new("b"));
    let m = place(&mut s, &j, 0).expect_err("no node");
    assert_eq!(m.nodes_in_pool, 0);
    // An allocation on an unknown node counts once the node appears.
    let c = node().id("c").cpu(1000).build();
    let early = alloc()
        .node(&c)
        .job_id("other")
        .resources(1000, 10, 0)
        .build();
    s.add(&early);
    s.upsert_node(c);
    assert_eq!(
        s.usage(&NodeId::new("c")).expect("usage").used.cpu_shares,
        1000
    );
    let m = place(&mut s, &j, 0).expect_err("c is full");
    assert_eq!(m.dimension_exhausted["cpu"], 1);
    assert_eq!(s.node_count(), 2);
}

#[test]
fn attribute_changes_refresh_cached_feasibility() {
    let mut s = Scheduler::new([&node().id("a").attr("kernel.name", "windows").build()], []);
    let j = job()
        .constraint("${attr.kernel.name}", "=", "linux")
        .build();
    assert!(place(&mut s, &j, 0).is_err());
    s.upsert_node(node().id("a").build());
    assert!(place(&mut s, &j, 0).is_ok());
}

#[test]
fn namespaces_keep_jobs_apart() {
    let nodes = [node().build()];
    let a = job().constraint("", DISTINCT_HOSTS, "").build();
    let b = job()
        .namespace("other")
        .constraint("", DISTINCT_HOSTS, "")
        .build();
    let mut s = Scheduler::new(&nodes, []);
    assert!(place(&mut s, &a, 0).is_ok());
    assert!(place(&mut s, &b, 0).is_ok());
    assert!(place(&mut s, &a, 1).is_err());
}

#[test]
fn select_node_places_system_jobs_on_one_node() {
    let nodes = [
        node().id("linux").build(),
        node().id("win").attr("kernel.name", "windows").build(),
        node().id("small").cpu(100).build(),
        node().id("down").status(NodeStatus::Down).build(),
    ];
    let j = job()
        .system()
        .constraint("${attr.kernel.name}", "=", "linux")
        .build();
    let g = &j.task_groups[0];
    let mut s = Scheduler::new(&nodes, []);
    let eligible: BTreeSet<String> = s.eligible_nodes(&j).into_iter().map(|n| n.0).collect();
    assert_eq!(eligible.len(), 3);
    let p = s
        .select_node(&j, g, &NodeId::new("linux"), &opts(0))
        .expect("placed");
    assert_eq!(p.metric.nodes_evaluated, 1);
    assert_eq!(
        p.metric.score_meta_data[0]
            .scores
            .keys()
            .collect::<Vec<_>>(),
        [scorers::BINPACK]
    );
    let m = s
        .select_node(&j, g, &NodeId::new("win"), &opts(0))
        .expect_err("filtered");
    assert_eq!(m.constraint_filtered["${attr.kernel.name} = linux"], 1);
    let m = s
        .select_node(&j, g, &NodeId::new("small"), &opts(0))
        .expect_err("exhausted");
    assert_eq!(m.dimension_exhausted["cpu"], 1);
    let m = s
        .select_node(&j, g, &NodeId::new("down"), &opts(0))
        .expect_err("not ready");
    assert_eq!(m.nodes_filtered, 1);
    let m = s
        .select_node(&j, g, &NodeId::new("nope"), &opts(0))
        .expect_err("unknown");
    assert_eq!(m.constraint_filtered["node not found"], 1);
    // System placements on the same node twice collide only on resources.
    assert!(
        s.select_node(&j, g, &NodeId::new("linux"), &opts(1))
            .is_ok()
    );
}

#[test]
fn job_type_batch_samples_two() {
    let nodes: Vec<Node> = (0..64).map(|_| node().build()).collect();
    let j = job().kind(JobType::Batch).build();
    let mut s = Scheduler::new(&nodes, []);
    assert_eq!(
        place(&mut s, &j, 0).expect("placed").metric.nodes_evaluated,
        2
    );
}

// ---------------------------------------------------------------------------------------------
// The plan applier's re-check.
// ---------------------------------------------------------------------------------------------

#[test]
fn fits_detects_overcommit_and_port_collisions() {
    let n = node()
        .cpu(1000)
        .memory(1000)
        .disk(1000)
        .reserved_ports("22")
        .build();
    let a = alloc()
        .node(&n)
        .resources(600, 100, 100)
        .port("http", 8080)
        .build();
    let b = alloc()
        .node(&n)
        .resources(300, 100, 100)
        .port("http", 8081)
        .build();
    assert_eq!(fits(&n, &[&a, &b]), Ok(()));
    let c = alloc().node(&n).resources(200, 10, 10).build();
    assert_eq!(fits(&n, &[&a, &b, &c]), Err("cpu".to_owned()));
    let d = alloc().node(&n).resources(10, 950, 10).build();
    assert_eq!(fits(&n, &[&a, &d]), Err("memory".to_owned()));
    let e = alloc().node(&n).resources(10, 10, 950).build();
    assert_eq!(fits(&n, &[&a, &e]), Err("disk".to_owned()));
    let f = alloc()
        .node(&n)
        .resources(10, 10, 10)
        .port("api", 8080)
        .build();
    let err = fits(&n, &[&a, &f]).expect_err("collision");
    assert!(
        err.contains("port 8080") && err.contains(f.id.as_str()),
        "{err}"
    );
    let g = alloc()
        .node(&n)
        .resources(10, 10, 10)
        .port("ssh", 22)
        .build();
    let err = fits(&n, &[&g]).expect_err("reserved");
    assert!(err.contains("port 22 is reserved"), "{err}");
    // Terminal allocations do not count.
    let stopped = alloc()
        .node(&n)
        .resources(900, 10, 10)
        .port("api", 8080)
        .desired_status(DesiredStatus::Stop)
        .build();
    assert_eq!(fits(&n, &[&a, &stopped]), Ok(()));
    // Bandwidth, when the node declares it.
    let bw = node().bandwidth(100).build();
    let mut h = alloc().node(&bw).build();
    if let Some(r) = h.allocated_resources.as_mut() {
        r.shared
            .networks
            .push(caravan_schemas::resources::NetworkResource {
                mbits: 150,
                ..Default::default()
            });
    }
    assert_eq!(fits(&bw, &[&h]), Err("bandwidth exceeded".to_owned()));
}

#[test]
fn placements_pass_the_plan_re_check() {
    let nodes: Vec<Node> = (0..5)
        .map(|_| node().cpu(2000).memory(2000).build())
        .collect();
    let j = job()
        .cpu(300)
        .memory(300)
        .static_port("admin", 7000)
        .dynamic_port("http", 0)
        .count(40)
        .build();
    let mut s = Scheduler::new(&nodes, []);
    let mut allocs = Vec::new();
    while let Ok(p) = place(&mut s, &j, allocs.len() as u64) {
        allocs.push(fixtures::alloc_from(&j, "web", &p));
    }
    // The static port allows one per node.
    assert_eq!(allocs.len(), 5);
    for n in &nodes {
        let on: Vec<&Allocation> = allocs.iter().filter(|a| a.node_id == n.id).collect();
        assert_eq!(fits(n, &on), Ok(()));
    }
}

#[test]
fn remove_frees_ports() {
    let nodes = [node().build()];
    let holder = alloc()
        .node(&nodes[0])
        .job_id("old")
        .port("http", 8080)
        .build();
    let j = job().static_port("http", 8080).build();
    let mut s = Scheduler::new(&nodes, [&holder]);
    let m = place(&mut s, &j, 0).expect_err("port held");
    assert_eq!(
        m.dimension_exhausted["network: reserved port collision http=8080"],
        1
    );
    s.remove(&holder);
    let p = place(&mut s, &j, 0).expect("port freed");
    assert_eq!(p.resources.shared.port("http").map(|p| p.value), Some(8080));
}

#[test]
fn the_scheduler_can_move_between_threads() {
    fn send<T: Send + Sync>() {}
    send::<Scheduler>();
    send::<Placement>();
}
