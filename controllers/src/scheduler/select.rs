//! Placement: the per-group compiled checks, the scan over candidate nodes (feasibility,
//! bin-packing, scoring, sampling) and the assembly of the result.

use super::constraint::{DISTINCT_HOSTS, DISTINCT_PROPERTY, OperatorCache, distinct_hosts_enabled};
use super::hash::FxHasher;
use super::ports::{self, host_port};
use super::rng::{self, SplitMix64};
use super::{
    GroupState, JobState, NodeSlot, Placed, Placement, PropCounts, Record, Scheduler,
    SelectOptions, reasons, resolve_target, scorers,
};
use caravan_schemas::alloc::{AllocMetric, NodeScoreMeta};
use caravan_schemas::ids::{AllocId, NodeId};
use caravan_schemas::job::{Affinity, Constraint, Job, JobType, Spread, TaskGroup};
use caravan_schemas::node::Node;
use caravan_schemas::resources::{
    AllocatedCpuResources, AllocatedMemoryResources, AllocatedPortMapping, AllocatedResources,
    AllocatedSharedResources, AllocatedTaskResources, ComparableResources, TaskLifecycleConfig,
};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Nomad's default ephemeral disk (MB) when a group has none.
const DEFAULT_EPHEMERAL_DISK_MB: i64 = 300;
/// Nomad's `binPackingMaxFitScore`.
const BINPACK_MAX_FIT_SCORE: f64 = 18.0;
/// Nomad's `skipScoreThreshold` and `maxSkip` (limit iterator).
const SKIP_SCORE_THRESHOLD: f64 = 0.0;
const MAX_SKIP: usize = 3;
/// Nomad's default `node_limit_for_feasibility_checks`: how many nodes are scored when the
/// group has affinities or spreads.
const NODE_LIMIT_FOR_SCORED_PREFERENCES: usize = 100;
/// Random probes for a dynamic port before scanning the whole range (Nomad's
/// `maxRandPortAttempts`).
const MAX_RAND_PORT_ATTEMPTS: usize = 20;

/// Nodes that are ready and in a job's datacenters and node pool, in visiting order.
#[derive(Debug)]
pub(crate) struct CandidateSet {
    datacenters: Vec<String>,
    pool: String,
    pub(crate) nodes: Vec<u32>,
    member: Vec<u64>,
    by_dc: BTreeMap<String, i32>,
}

impl CandidateSet {
    fn contains(&self, idx: u32) -> bool {
        self.member
            .get(idx as usize / 64)
            .is_some_and(|w| w & (1 << (idx % 64)) != 0)
    }
}

/// Nomad's datacenter glob (`*` matches any run of characters).
pub(crate) fn glob_match(pattern: &str, s: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == s;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// The job's node pool as Nomad canonicalizes it (empty → `default`).
pub(crate) fn canonical_pool(pool: &str) -> &str {
    if pool.is_empty() { "default" } else { pool }
}

fn in_pool(job_pool: &str, node_pool: &str) -> bool {
    job_pool == "all" || job_pool == canonical_pool(node_pool)
}

fn in_datacenters(datacenters: &[String], dc: &str) -> bool {
    datacenters.is_empty() || datacenters.iter().any(|p| glob_match(p, dc))
}

/// A `distinct_property` constraint.
#[derive(Debug)]
struct PropSpec {
    attr: String,
    /// Allocations allowed per value, or why `RTarget` is unusable.
    allowed: Result<u64, String>,
}

/// A spread block with its desired counts.
#[derive(Debug)]
struct SpreadSpec {
    attr: String,
    weight: f64,
    targets: Vec<String>,
    desired: Vec<f64>,
    /// Desired count of the values not targeted (when the targets leave some room).
    implicit: Option<f64>,
}

/// What a group needs checked on every node, built once per job version and cached with the
/// per-node static feasibility verdicts.
#[derive(Debug)]
pub(crate) struct Compiled {
    fingerprint: u64,
    generation: u64,
    candidates: Arc<CandidateSet>,
    /// Per node position: 0 unknown, 1 feasible, `2 + i` infeasible because of `reasons[i]`.
    status: Vec<u16>,
    reasons: Vec<String>,
    job_constraints: Vec<(Constraint, u16)>,
    /// Driver name and its `driver.<name>` attribute.
    drivers: Vec<(String, String)>,
    drivers_reason: u16,
    tg_constraints: Vec<(Constraint, u16)>,
    devices_reason: Option<u16>,
    volumes: Vec<(String, bool)>,
    volumes_reason: u16,
    /// `(host_network, port label)` of the group network's ports.
    host_networks: Vec<(String, String)>,
    job_distinct_hosts: bool,
    group_distinct_hosts: bool,
    job_props: Vec<PropSpec>,
    group_props: Vec<PropSpec>,
    affinities: Vec<Affinity>,
    affinity_weight: f64,
    /// Per node position, NaN until computed.
    affinity_cache: Vec<f64>,
    spreads: Vec<SpreadSpec>,
    spread_weight: f64,
    lowest_spread_boost: f64,
    limit: usize,
    desired_count: f64,
}

fn hash_affinities(affinities: &[Affinity], h: &mut FxHasher) {
    for a in affinities {
        (&a.l_target, &a.operand, &a.r_target, a.weight).hash(h);
    }
    affinities.len().hash(h);
}

fn hash_spreads(spreads: &[Spread], h: &mut FxHasher) {
    for s in spreads {
        (&s.attribute, s.weight).hash(h);
        for t in &s.spread_target {
            (&t.value, t.percent).hash(h);
        }
        s.spread_target.len().hash(h);
    }
    spreads.len().hash(h);
}

/// A hash of everything [`Compiled`] is built from.
fn fingerprint(job: &Job, group: &TaskGroup) -> u64 {
    let mut h = FxHasher::default();
    job.r#type.as_str().hash(&mut h);
    job.datacenters.hash(&mut h);
    job.node_pool.hash(&mut h);
    job.constraints.hash(&mut h);
    hash_affinities(&job.affinities, &mut h);
    hash_spreads(&job.spreads, &mut h);
    group.count.hash(&mut h);
    group.constraints.hash(&mut h);
    hash_affinities(&group.affinities, &mut h);
    hash_spreads(&group.spreads, &mut h);
    for t in &group.tasks {
        t.driver.hash(&mut h);
        t.constraints.hash(&mut h);
        hash_affinities(&t.affinities, &mut h);
        t.resources.devices.len().hash(&mut h);
    }
    group.tasks.len().hash(&mut h);
    for (name, v) in &group.volumes {
        (name, &v.r#type, &v.source, v.read_only).hash(&mut h);
    }
    for n in group.networks.iter().take(1) {
        for p in n.ports() {
            (&p.label, &p.host_network).hash(&mut h);
        }
    }
    h.finish()
}

fn intern(reasons: &mut Vec<String>, reason: String) -> u16 {
    let i = match reasons.iter().position(|r| *r == reason) {
        Some(i) => i,
        None => {
            reasons.push(reason);
            reasons.len() - 1
        }
    };
    u16::try_from(i).unwrap_or(u16::MAX - 2)
}

fn driver_ok(node: &Node, name: &str, attr: &str) -> bool {
    if let Some(info) = node.drivers.get(name) {
        return info.detected && info.healthy;
    }
    node.attribute(attr)
        .and_then(super::constraint::parse_go_bool)
        .unwrap_or(false)
}

fn node_has_host_network(node: &Node, name: &str) -> bool {
    name == "default"
        || node.host_networks.contains_key(name)
        || node.node_resources.as_ref().is_some_and(|r| {
            r.node_networks
                .iter()
                .any(|n| n.addresses.iter().any(|a| a.alias == name))
        })
}

impl Compiled {
    fn build(
        job: &Job,
        group: &TaskGroup,
        fingerprint: u64,
        generation: u64,
        candidates: Arc<CandidateSet>,
        node_count: usize,
    ) -> Compiled {
        let mut reasons = Vec::new();
        let placement =
            |c: &&Constraint| c.operand != DISTINCT_HOSTS && c.operand != DISTINCT_PROPERTY;
        let job_constraints = job
            .constraints
            .iter()
            .filter(placement)
            .map(|c| (c.clone(), intern(&mut reasons, c.to_string())))
            .collect();
        let mut drivers: Vec<(String, String)> = Vec::new();
        for t in &group.tasks {
            if !t.driver.is_empty() && !drivers.iter().any(|(d, _)| *d == t.driver) {
                drivers.push((t.driver.clone(), format!("driver.{}", t.driver)));
            }
        }
        let drivers_reason = intern(&mut reasons, reasons::MISSING_DRIVERS.to_owned());
        let tg_constraints = group
            .constraints
            .iter()
            .chain(group.tasks.iter().flat_map(|t| t.constraints.iter()))
            .filter(placement)
            .map(|c| (c.clone(), intern(&mut reasons, c.to_string())))
            .collect();
        let devices_reason = group
            .tasks
            .iter()
            .any(|t| !t.resources.devices.is_empty())
            .then(|| intern(&mut reasons, reasons::MISSING_DEVICES.to_owned()));
        let volumes = group
            .volumes
            .values()
            .filter(|v| v.r#type.is_empty() || v.r#type == "host")
            .map(|v| (v.source.clone(), v.read_only))
            .collect();
        let volumes_reason = intern(&mut reasons, reasons::MISSING_HOST_VOLUMES.to_owned());
        let host_networks = group
            .networks
            .iter()
            .take(1)
            .flat_map(|n| n.ports())
            .filter(|p| !p.host_network.is_empty())
            .map(|p| (p.host_network.clone(), p.label.clone()))
            .collect();

        let prop_spec = |c: &Constraint| PropSpec {
            attr: c.l_target.clone(),
            allowed: if c.r_target.is_empty() {
                Ok(1)
            } else {
                c.r_target.parse::<u64>().map_err(|_| {
                    format!(
                        "failed to convert RTarget {:?} to uint64: strconv.ParseUint: parsing {:?}: invalid syntax",
                        c.r_target, c.r_target
                    )
                })
            },
        };
        let job_props = job
            .constraints
            .iter()
            .filter(|c| c.operand == DISTINCT_PROPERTY)
            .map(prop_spec)
            .collect();
        let group_props = group
            .constraints
            .iter()
            .filter(|c| c.operand == DISTINCT_PROPERTY)
            .map(prop_spec)
            .collect();

        let affinities: Vec<Affinity> = job
            .affinities
            .iter()
            .chain(&group.affinities)
            .chain(group.tasks.iter().flat_map(|t| t.affinities.iter()))
            .cloned()
            .collect();
        let affinity_weight = affinities.iter().map(|a| f64::from(a.weight).abs()).sum();

        let count = f64::from(group.count.max(0));
        let spreads: Vec<SpreadSpec> = group
            .spreads
            .iter()
            .chain(&job.spreads)
            .map(|s| {
                let desired: Vec<f64> = s
                    .spread_target
                    .iter()
                    .map(|t| f64::from(t.percent) / 100.0 * count)
                    .collect();
                let sum: f64 = desired.iter().sum();
                SpreadSpec {
                    attr: s.attribute.clone(),
                    weight: f64::from(s.weight),
                    targets: s.spread_target.iter().map(|t| t.value.clone()).collect(),
                    implicit: (sum > 0.0 && sum < count).then_some(count - sum),
                    desired,
                }
            })
            .collect();
        let spread_weight = spreads.iter().map(|s| s.weight).sum();

        let n = candidates.nodes.len();
        let mut limit = if job.r#type == JobType::Batch {
            2
        } else {
            let log = if n <= 1 {
                0
            } else {
                (usize::BITS - (n - 1).leading_zeros()) as usize
            };
            log.max(2)
        };
        if !affinities.is_empty() || !spreads.is_empty() {
            limit = NODE_LIMIT_FOR_SCORED_PREFERENCES.max(group.count.max(0) as usize);
        }

        Compiled {
            fingerprint,
            generation,
            candidates,
            status: vec![0; node_count],
            reasons,
            job_constraints,
            drivers,
            drivers_reason,
            tg_constraints,
            devices_reason,
            volumes,
            volumes_reason,
            host_networks,
            job_distinct_hosts: distinct_hosts_enabled(&job.constraints),
            group_distinct_hosts: distinct_hosts_enabled(&group.constraints),
            job_props,
            group_props,
            affinity_cache: if affinities.is_empty() {
                Vec::new()
            } else {
                vec![f64::NAN; node_count]
            },
            affinities,
            affinity_weight,
            spreads,
            spread_weight,
            lowest_spread_boost: -1.0,
            limit,
            desired_count: count.max(1.0),
        }
    }

    /// The static verdict for a node, computed on first use.
    fn static_status(&mut self, idx: u32, node: &Node, ops: &mut OperatorCache) -> u16 {
        if let Some(&st) = self.status.get(idx as usize)
            && st != 0
        {
            return st;
        }
        let st = self.compute_static(node, ops);
        if let Some(slot) = self.status.get_mut(idx as usize) {
            *slot = st;
        }
        st
    }

    fn compute_static(&mut self, node: &Node, ops: &mut OperatorCache) -> u16 {
        for (c, r) in &self.job_constraints {
            if !ops.constraint_holds(c, node) {
                return r + 2;
            }
        }
        if !self.drivers.iter().all(|(d, a)| driver_ok(node, d, a)) {
            return self.drivers_reason + 2;
        }
        for (c, r) in &self.tg_constraints {
            if !ops.constraint_holds(c, node) {
                return r + 2;
            }
        }
        if let Some(r) = self.devices_reason {
            // Caravan nodes fingerprint no devices.
            return r + 2;
        }
        for (source, read_only) in &self.volumes {
            match node.host_volumes.get(source) {
                Some(v) if *read_only || !v.read_only => {}
                _ => return self.volumes_reason + 2,
            }
        }
        for i in 0..self.host_networks.len() {
            let (network, label) = &self.host_networks[i];
            let reason = match resolve_target(network, node) {
                None => format!("invalid host network {network:?} template for port {label:?}"),
                Some(name) if !node_has_host_network(node, name) => {
                    format!("missing host network {name:?} for port {label:?}")
                }
                Some(_) => continue,
            };
            return intern(&mut self.reasons, reason) + 2;
        }
        1
    }

    fn affinity_score(&mut self, idx: u32, node: &Node, ops: &mut OperatorCache) -> f64 {
        if let Some(&s) = self.affinity_cache.get(idx as usize)
            && !s.is_nan()
        {
            return s;
        }
        let total: f64 = self
            .affinities
            .iter()
            .filter(|a| {
                let l = resolve_target(&a.l_target, node);
                let r = resolve_target(&a.r_target, node);
                ops.check(&a.operand, l, r)
            })
            .map(|a| f64::from(a.weight))
            .sum();
        let score = if self.affinity_weight > 0.0 {
            total / self.affinity_weight
        } else {
            0.0
        };
        if let Some(slot) = self.affinity_cache.get_mut(idx as usize) {
            *slot = score;
        }
        score
    }
}

/// One static port of the ask.
#[derive(Debug)]
struct StaticPort {
    label: String,
    value: i32,
    ignore_collision: bool,
}

/// What a group asks for: the allocated-resources template (ports unassigned), its
/// footprint, and its port needs.
#[derive(Debug)]
pub(crate) struct Ask {
    resources: AllocatedResources,
    comparable: ComparableResources,
    mbits: i64,
    statics: Vec<StaticPort>,
    dynamic: u32,
}

impl Ask {
    pub(crate) fn new(group: &TaskGroup) -> Ask {
        let mut resources = AllocatedResources::default();
        let mut statics = Vec::new();
        let mut dynamic = 0u32;
        let mut mbits = 0i64;
        let mut note = |net: &caravan_schemas::resources::NetworkResource| {
            mbits += i64::from(net.mbits.max(0));
            dynamic += net.dynamic_ports.len() as u32;
            statics.extend(net.reserved_ports.iter().map(|p| StaticPort {
                label: p.label.clone(),
                value: p.value,
                ignore_collision: p.ignore_collision,
            }));
        };
        for net in &group.networks {
            note(net);
        }
        for t in &group.tasks {
            let r = &t.resources;
            for net in &r.networks {
                note(net);
            }
            let secrets = i64::from(r.secrets_mb.max(0));
            resources.tasks.insert(
                t.name.clone(),
                AllocatedTaskResources {
                    cpu: AllocatedCpuResources {
                        cpu_shares: i64::from(r.cpu.max(0)),
                        reserved_cores: Vec::new(),
                    },
                    memory: AllocatedMemoryResources {
                        memory_mb: i64::from(r.memory_mb.max(0)) + secrets,
                        memory_max_mb: if r.memory_max_mb > 0 {
                            i64::from(r.memory_max_mb) + secrets
                        } else {
                            0
                        },
                    },
                    networks: r.networks.clone(),
                    devices: Vec::new(),
                },
            );
            resources.task_lifecycles.insert(
                t.name.clone(),
                t.lifecycle.as_ref().map(|l| TaskLifecycleConfig {
                    hook: l.hook.clone(),
                    sidecar: l.sidecar,
                }),
            );
        }
        resources.shared = AllocatedSharedResources {
            networks: group.networks.clone(),
            disk_mb: group
                .ephemeral_disk
                .as_ref()
                .map_or(DEFAULT_EPHEMERAL_DISK_MB, |d| i64::from(d.size_mb.max(0))),
            ports: Vec::new(),
        };
        Ask {
            comparable: resources.comparable(),
            resources,
            mbits,
            statics,
            dynamic,
        }
    }
}

/// Why a feasible node has no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exhaust {
    PortCollision,
    Static(usize),
    InvalidPort(usize),
    DynamicPorts,
    Bandwidth,
    Dim(&'static str),
}

/// Why a node was filtered.
#[derive(Debug)]
enum Filter {
    Static(u16),
    DistinctHosts,
    Text(String),
}

fn check_ports(slot: &NodeSlot, ask: &Ask) -> Result<(), Exhaust> {
    if slot.ports.collisions() > 0 {
        return Err(Exhaust::PortCollision);
    }
    if ask.statics.is_empty() && ask.dynamic == 0 {
        return Ok(());
    }
    let mut pending_in_range = 0u32;
    for (i, sp) in ask.statics.iter().enumerate() {
        if !(0..=65535).contains(&sp.value) {
            return Err(Exhaust::InvalidPort(i));
        }
        let Some(p) = host_port(sp.value) else {
            continue;
        };
        if sp.ignore_collision {
            continue;
        }
        let repeated = ask.statics[..i]
            .iter()
            .any(|o| !o.ignore_collision && o.value == sp.value);
        if repeated || slot.ports.in_use(p) {
            return Err(Exhaust::Static(i));
        }
        if (slot.dyn_lo..=slot.dyn_hi).contains(&p) {
            pending_in_range += 1;
        }
    }
    if ask.dynamic > 0 {
        let free = slot
            .ports
            .free_in_range(slot.dyn_lo, slot.dyn_hi)
            .saturating_sub(pending_in_range);
        if free < ask.dynamic {
            return Err(Exhaust::DynamicPorts);
        }
    }
    Ok(())
}

/// Nomad's `ScoreFitBinPack`, normalized to 0..=1: fuller nodes score higher.
pub(crate) fn binpack_score(capacity: &ComparableResources, util: &ComparableResources) -> f64 {
    let free = |used: i64, total: i64| {
        if total > 0 {
            1.0 - used as f64 / total as f64
        } else {
            0.0
        }
    };
    let total = 10f64.powf(free(util.cpu_shares, capacity.cpu_shares))
        + 10f64.powf(free(util.memory_mb, capacity.memory_mb));
    (20.0 - total).clamp(0.0, BINPACK_MAX_FIT_SCORE) / BINPACK_MAX_FIT_SCORE
}

/// A scored candidate.
#[derive(Clone, Copy, Debug)]
struct Cand {
    idx: u32,
    norm: f64,
    binpack: f64,
    /// `None` for system placements, which only bin-pack.
    anti: Option<f64>,
    penalty: Option<f64>,
    affinity: Option<f64>,
    spread: Option<f64>,
}

/// Metric counts gathered during a scan (cheap to bump; turned into an [`AllocMetric`] once).
#[derive(Debug, Default)]
struct Acc<'n> {
    evaluated: i32,
    filtered: i32,
    filtered_static: Vec<(u16, i32)>,
    filtered_distinct_hosts: i32,
    filtered_text: Vec<(String, i32)>,
    class_filtered: Vec<(&'n str, i32)>,
    exhausted: i32,
    exhausted_why: Vec<(Exhaust, i32)>,
    class_exhausted: Vec<(&'n str, i32)>,
    top: Vec<Cand>,
}

fn count<K: PartialEq>(list: &mut Vec<(K, i32)>, key: K) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => list.push((key, 1)),
    }
}

impl<'n> Acc<'n> {
    fn filter(&mut self, node: &'n Node, why: Filter) {
        self.filtered += 1;
        if !node.node_class.is_empty() {
            count(&mut self.class_filtered, node.node_class.as_str());
        }
        match why {
            Filter::Static(r) => count(&mut self.filtered_static, r),
            Filter::DistinctHosts => self.filtered_distinct_hosts += 1,
            Filter::Text(t) => count(&mut self.filtered_text, t),
        }
    }

    fn exhaust(&mut self, node: &'n Node, why: Exhaust) {
        self.exhausted += 1;
        if !node.node_class.is_empty() {
            count(&mut self.class_exhausted, node.node_class.as_str());
        }
        count(&mut self.exhausted_why, why);
    }

    /// Keeps the best [`MAX_RETAINED_NODE_SCORES`] by normalized score, best first, earlier
    /// first among equals (as `AllocMetric::score_node`).
    fn score(&mut self, c: Cand) {
        let at = self.top.partition_point(|m| m.norm >= c.norm);
        if at < caravan_schemas::alloc::MAX_RETAINED_NODE_SCORES {
            self.top.insert(at, c);
            self.top
                .truncate(caravan_schemas::alloc::MAX_RETAINED_NODE_SCORES);
        }
    }

    fn into_metric(
        self,
        compiled: &Compiled,
        ask: &Ask,
        nodes: &[NodeSlot],
        pool: &str,
    ) -> AllocMetric {
        let mut m = AllocMetric {
            nodes_evaluated: self.evaluated,
            nodes_filtered: self.filtered,
            nodes_in_pool: compiled.candidates.nodes.len() as i32,
            node_pool: pool.to_owned(),
            nodes_available: compiled.candidates.by_dc.clone(),
            nodes_exhausted: self.exhausted,
            ..AllocMetric::default()
        };
        for (r, n) in self.filtered_static {
            if let Some(text) = compiled.reasons.get(r as usize) {
                *m.constraint_filtered.entry(text.clone()).or_default() += n;
            }
        }
        if self.filtered_distinct_hosts > 0 {
            m.constraint_filtered.insert(
                reasons::DISTINCT_HOSTS.to_owned(),
                self.filtered_distinct_hosts,
            );
        }
        for (text, n) in self.filtered_text {
            *m.constraint_filtered.entry(text).or_default() += n;
        }
        for (class, n) in self.class_filtered {
            m.class_filtered.insert(class.to_owned(), n);
        }
        for (class, n) in self.class_exhausted {
            m.class_exhausted.insert(class.to_owned(), n);
        }
        for (why, n) in self.exhausted_why {
            let key = match why {
                Exhaust::PortCollision => reasons::PORT_COLLISION.to_owned(),
                Exhaust::Static(i) => ask.statics.get(i).map_or_else(
                    || reasons::RESERVED_PORT_COLLISION.to_owned(),
                    |p| {
                        format!(
                            "{} {}={}",
                            reasons::RESERVED_PORT_COLLISION,
                            p.label,
                            p.value
                        )
                    },
                ),
                Exhaust::InvalidPort(i) => format!(
                    "network: invalid port {} (out of range)",
                    ask.statics.get(i).map_or(0, |p| p.value)
                ),
                Exhaust::DynamicPorts => reasons::DYNAMIC_PORTS.to_owned(),
                Exhaust::Bandwidth => reasons::BANDWIDTH.to_owned(),
                Exhaust::Dim(d) => d.to_owned(),
            };
            *m.dimension_exhausted.entry(key).or_default() += n;
        }
        for c in &self.top {
            let Some(slot) = nodes.get(c.idx as usize) else {
                continue;
            };
            let mut scores = BTreeMap::new();
            scores.insert(scorers::BINPACK.to_owned(), c.binpack);
            if let Some(a) = c.anti {
                scores.insert(scorers::JOB_ANTI_AFFINITY.to_owned(), a);
            }
            if let Some(p) = c.penalty {
                scores.insert(scorers::NODE_RESCHEDULE_PENALTY.to_owned(), p);
            }
            if let Some(a) = c.affinity {
                scores.insert(scorers::NODE_AFFINITY.to_owned(), a);
            }
            if let Some(s) = c.spread {
                scores.insert(scorers::ALLOCATION_SPREAD.to_owned(), s);
            }
            m.score_meta_data.push(NodeScoreMeta {
                node_id: slot.node.id.clone(),
                scores,
                norm_score: c.norm,
            });
        }
        m
    }
}

/// Everything one scan reads, borrowed from the scheduler.
struct Scan<'n, 's> {
    nodes: &'n [NodeSlot],
    job: &'s JobState,
    group: &'s GroupState,
    ops: &'s mut OperatorCache,
    compiled: &'s mut Compiled,
    ask: &'s Ask,
    job_props: &'s [usize],
    group_props: &'s [usize],
    spread_props: &'s [usize],
    penalty: &'s [u32],
    /// System placement: no distinct_hosts, anti-affinity, penalty, affinity or spread.
    system: bool,
}

fn check_props(
    specs: &[PropSpec],
    props: &[PropCounts],
    idxs: &[usize],
    node: &Node,
) -> Result<(), String> {
    for (spec, &pi) in specs.iter().zip(idxs) {
        let allowed = spec.allowed.as_ref().map_err(Clone::clone)?;
        let Some(value) = resolve_target(&spec.attr, node) else {
            return Err(format!("missing property {:?}", spec.attr));
        };
        let used = props.get(pi).map_or(0, |p| p.get(value));
        if u64::from(used) >= *allowed {
            return Err(format!(
                "{DISTINCT_PROPERTY}: {}={value} used by {used} allocs",
                spec.attr
            ));
        }
    }
    Ok(())
}

impl<'n, 's> Scan<'n, 's> {
    /// Runs one node through feasibility, fit and scoring.
    fn evaluate(&mut self, idx: u32, acc: &mut Acc<'n>) -> Option<Cand> {
        let nodes = self.nodes;
        let slot = nodes.get(idx as usize)?;
        let node: &'n Node = &slot.node;
        acc.evaluated += 1;

        let st = self.compiled.static_status(idx, node, self.ops);
        if st >= 2 {
            acc.filter(node, Filter::Static(st - 2));
            return None;
        }
        if !self.system {
            let job_here = self.job.per_node.get(&idx).copied().unwrap_or(0);
            let group_here = self.group.per_node.get(&idx).copied().unwrap_or(0);
            if (self.compiled.job_distinct_hosts && job_here > 0)
                || (self.compiled.group_distinct_hosts && group_here > 0)
            {
                acc.filter(node, Filter::DistinctHosts);
                return None;
            }
        }
        if !self.compiled.job_props.is_empty() || !self.compiled.group_props.is_empty() {
            let checked = check_props(
                &self.compiled.job_props,
                &self.job.props,
                self.job_props,
                node,
            )
            .and_then(|()| {
                check_props(
                    &self.compiled.group_props,
                    &self.group.props,
                    self.group_props,
                    node,
                )
            });
            if let Err(reason) = checked {
                acc.filter(node, Filter::Text(reason));
                return None;
            }
        }

        // Bin-packing: ports first (as Nomad assigns networks before checking the fit).
        if let Err(why) = check_ports(slot, self.ask) {
            acc.exhaust(node, why);
            return None;
        }
        let mut util = slot.used;
        util.add(&self.ask.comparable);
        if let Err(dim) = util.fits_in(&slot.capacity) {
            acc.exhaust(node, Exhaust::Dim(dim));
            return None;
        }
        if slot.bandwidth > 0 && slot.mbits_used + self.ask.mbits > slot.bandwidth {
            acc.exhaust(node, Exhaust::Bandwidth);
            return None;
        }
        let binpack = binpack_score(&slot.capacity, &util);

        let mut sum = binpack;
        let mut n = 1.0;
        let mut cand = Cand {
            idx,
            norm: 0.0,
            binpack,
            anti: None,
            penalty: None,
            affinity: None,
            spread: None,
        };
        if !self.system {
            let collisions = self.group.per_node.get(&idx).copied().unwrap_or(0);
            let anti = if collisions > 0 {
                let a = -f64::from(collisions + 1) / self.compiled.desired_count;
                sum += a;
                n += 1.0;
                a
            } else {
                0.0
            };
            cand.anti = Some(anti);
            let penalty = if self.penalty.contains(&idx) {
                sum -= 1.0;
                n += 1.0;
                -1.0
            } else {
                0.0
            };
            cand.penalty = Some(penalty);
            if !self.compiled.affinities.is_empty() {
                let a = self.compiled.affinity_score(idx, node, self.ops);
                if a != 0.0 {
                    sum += a;
                    n += 1.0;
                    cand.affinity = Some(a);
                }
            } else {
                cand.affinity = Some(0.0);
            }
            if !self.compiled.spreads.is_empty() {
                let s = self.spread_score(node);
                if s != 0.0 {
                    sum += s;
                    n += 1.0;
                    cand.spread = Some(s);
                }
            }
        }
        cand.norm = sum / n;
        acc.score(cand);
        Some(cand)
    }

    /// Nomad's `SpreadIterator` score for a node.
    fn spread_score(&mut self, node: &Node) -> f64 {
        let mut total = 0.0;
        let compiled = &mut *self.compiled;
        for (spec, &pi) in compiled.spreads.iter().zip(self.spread_props) {
            let Some(value) = resolve_target(&spec.attr, node) else {
                total -= 1.0;
                continue;
            };
            let Some(props) = self.group.props.get(pi) else {
                continue;
            };
            if spec.targets.is_empty() {
                total += even_spread_boost(props, value);
                continue;
            }
            let target = spec.targets.iter().position(|t| t == value);
            let used = match target {
                Some(_) => props.get(value),
                None => {
                    let targeted: u32 = spec.targets.iter().map(|t| props.get(t)).sum();
                    props.c.total.saturating_sub(targeted)
                }
            } + 1;
            let desired = match target {
                Some(i) => spec.desired.get(i).copied().unwrap_or(0.0),
                None => match spec.implicit {
                    Some(d) => d,
                    None => {
                        total -= 1.0;
                        continue;
                    }
                },
            };
            if desired == 0.0 {
                total += compiled.lowest_spread_boost;
                continue;
            }
            let weight = if compiled.spread_weight != 0.0 {
                spec.weight / compiled.spread_weight
            } else {
                0.0
            };
            let boost = (desired - f64::from(used)) / desired * weight;
            total += boost;
            if boost < compiled.lowest_spread_boost {
                compiled.lowest_spread_boost = boost;
            }
        }
        total
    }

    /// Visits candidates from `start`, as Nomad's limit and max-score iterators do: stop after
    /// `limit` scored nodes, setting aside up to three with a score at or below zero unless
    /// nothing better turns up.
    fn run(&mut self, order: &[u32], start: usize, acc: &mut Acc<'n>) -> Option<Cand> {
        let n = order.len();
        let limit = self.compiled.limit;
        let mut returned = 0usize;
        let mut skipped: Vec<Cand> = Vec::new();
        let mut best: Option<Cand> = None;
        let consider = |best: &mut Option<Cand>, c: Cand| {
            if best.is_none_or(|b| c.norm > b.norm) {
                *best = Some(c);
            }
        };
        for k in 0..n {
            if returned >= limit {
                break;
            }
            let idx = order[(start + k) % n];
            let Some(c) = self.evaluate(idx, acc) else {
                continue;
            };
            if c.norm <= SKIP_SCORE_THRESHOLD && skipped.len() < MAX_SKIP {
                skipped.push(c);
                continue;
            }
            returned += 1;
            consider(&mut best, c);
        }
        for c in skipped {
            if returned >= limit {
                break;
            }
            returned += 1;
            consider(&mut best, c);
        }
        best
    }
}

/// Nomad's `evenSpreadScoreBoost`: favour values with the fewest allocations.
fn even_spread_boost(props: &PropCounts, value: &str) -> f64 {
    let Some((min, max)) = props.c.min_max() else {
        // Nothing placed yet.
        return 0.0;
    };
    let current = props.get(value);
    if current != min {
        // min >= 1: only values with allocations are counted.
        return (f64::from(min) - f64::from(current)) / f64::from(min);
    }
    if min == max {
        return -1.0;
    }
    f64::from(max - min) / f64::from(min)
}

/// Picks a free dynamic port: random probes, then a scan of the whole range.
fn pick_port(slot: &NodeSlot, taken: &mut Vec<u16>, rng: &mut SplitMix64) -> Option<u16> {
    let (lo, hi) = (slot.dyn_lo, slot.dyn_hi);
    let span = u64::from(hi - lo) + 1;
    let free = |p: u16, taken: &[u16]| !slot.ports.in_use(p) && !taken.contains(&p);
    for _ in 0..MAX_RAND_PORT_ATTEMPTS {
        let p = lo + rng.below(span) as u16;
        if free(p, taken) {
            taken.push(p);
            return Some(p);
        }
    }
    let all: Vec<u16> = (lo..=hi).filter(|&p| free(p, taken)).collect();
    if all.is_empty() {
        return None;
    }
    let p = all[rng.below(all.len() as u64) as usize];
    taken.push(p);
    Some(p)
}

/// Fills in the host ports and addresses of the ask's networks on the chosen node.
fn assign_ports(slot: &NodeSlot, ask: &Ask, rng: &mut SplitMix64) -> Option<AllocatedResources> {
    let mut res = ask.resources.clone();
    let mut taken: Vec<u16> = ask
        .statics
        .iter()
        .filter(|p| !p.ignore_collision)
        .filter_map(|p| host_port(p.value))
        .collect();
    let ip = &slot.host_ip;
    let mut mappings = Vec::new();
    for net in &mut res.shared.networks {
        net.ip.clone_from(ip);
        for p in &net.reserved_ports {
            mappings.push(AllocatedPortMapping {
                label: p.label.clone(),
                value: p.value,
                to: p.to,
                host_ip: ip.clone(),
                ignore_collision: p.ignore_collision,
            });
        }
        for p in &mut net.dynamic_ports {
            let v = pick_port(slot, &mut taken, rng)?;
            p.value = i32::from(v);
            if p.to == -1 {
                p.to = p.value;
            }
            mappings.push(AllocatedPortMapping {
                label: p.label.clone(),
                value: p.value,
                to: p.to,
                host_ip: ip.clone(),
                ignore_collision: p.ignore_collision,
            });
        }
    }
    res.shared.ports = mappings;
    for task in res.tasks.values_mut() {
        for net in &mut task.networks {
            net.ip.clone_from(ip);
            for p in &mut net.dynamic_ports {
                let v = pick_port(slot, &mut taken, rng)?;
                p.value = i32::from(v);
                if p.to == -1 {
                    p.to = p.value;
                }
            }
        }
    }
    Some(res)
}

/// Where a scan looks.
enum Visit {
    /// The candidates, sampled from a random start.
    Sample,
    /// One node (preferred or system).
    One(u32),
}

impl Scheduler {
    /// Places one allocation of `group`: visits the feasible candidates from a seed-chosen
    /// start, scores a sample of them (2 for batch jobs, `max(2, ceil(log2(nodes)))`
    /// otherwise, up to `max(100, count)` with affinities or spreads) and takes the best. The
    /// placement is accounted at once. On failure the metric explains why.
    #[allow(
        clippy::result_large_err,
        reason = "the metric is the failure's explanation; Placement (the Ok side) is larger still"
    )]
    pub fn select(
        &mut self,
        job: &Job,
        group: &TaskGroup,
        opts: &SelectOptions,
    ) -> Result<Placement, AllocMetric> {
        let mut rng = self.rng(opts.seed);
        let preferred = opts
            .preferred_node
            .as_ref()
            .and_then(|id| self.node_index.get(id.as_str()).copied());
        if let Some(idx) = preferred
            && let Ok(p) = self.place(job, group, opts, Visit::One(idx), false, &mut rng)
        {
            return Ok(p);
        }
        self.place(job, group, opts, Visit::Sample, false, &mut rng)
    }

    /// Places one allocation of a system job's `group` on `node_id`: feasibility,
    /// `distinct_property`, resources and ports on that node only, scored by bin-packing.
    #[allow(
        clippy::result_large_err,
        reason = "the metric is the failure's explanation; Placement (the Ok side) is larger still"
    )]
    pub fn select_node(
        &mut self,
        job: &Job,
        group: &TaskGroup,
        node_id: &NodeId,
        opts: &SelectOptions,
    ) -> Result<Placement, AllocMetric> {
        let mut rng = self.rng(opts.seed);
        match self.node_index.get(node_id.as_str()).copied() {
            Some(idx) => self.place(job, group, opts, Visit::One(idx), true, &mut rng),
            None => {
                let mut m = AllocMetric {
                    nodes_evaluated: 1,
                    ..AllocMetric::default()
                };
                m.filter_node(None, "node not found");
                Err(m)
            }
        }
    }

    /// The ready nodes in the job's datacenters and node pool (those a system job targets).
    pub fn eligible_nodes(&mut self, job: &Job) -> Vec<NodeId> {
        let set = self.candidate_set(job);
        set.nodes
            .iter()
            .filter_map(|&i| self.nodes.get(i as usize))
            .map(|s| s.node.id.clone())
            .collect()
    }

    fn rng(&mut self, seed: u64) -> SplitMix64 {
        self.selects = self.selects.wrapping_add(1);
        SplitMix64::new(seed ^ rng::mix(self.selects))
    }

    fn candidate_set(&mut self, job: &Job) -> Arc<CandidateSet> {
        let pool = canonical_pool(&job.node_pool);
        let mut h = FxHasher::default();
        job.datacenters.hash(&mut h);
        pool.hash(&mut h);
        let key = h.finish();
        if let Some(c) = self.candidate_sets.get(&key)
            && c.datacenters == job.datacenters
            && c.pool == pool
        {
            return Arc::clone(c);
        }
        let mut set = CandidateSet {
            datacenters: job.datacenters.clone(),
            pool: pool.to_owned(),
            nodes: Vec::new(),
            member: vec![0; self.nodes.len().div_ceil(64)],
            by_dc: BTreeMap::new(),
        };
        for &i in &self.order {
            let Some(slot) = self.nodes.get(i as usize) else {
                continue;
            };
            let node = &*slot.node;
            if slot.present
                && node.is_ready()
                && in_pool(pool, &node.node_pool)
                && in_datacenters(&job.datacenters, &node.datacenter)
            {
                set.nodes.push(i);
                if let Some(w) = set.member.get_mut(i as usize / 64) {
                    *w |= 1 << (i % 64);
                }
                *set.by_dc.entry(node.datacenter.clone()).or_default() += 1;
            }
        }
        let set = Arc::new(set);
        self.candidate_sets.insert(key, Arc::clone(&set));
        set
    }

    /// The group's compiled checks, rebuilt when the job or the nodes changed.
    fn compiled(&mut self, gid: u32, job: &Job, group: &TaskGroup) -> Box<Compiled> {
        let fp = fingerprint(job, group);
        let existing = self
            .groups
            .get_mut(gid as usize)
            .and_then(|g| g.compiled.take());
        if let Some(c) = existing
            && c.fingerprint == fp
            && c.generation == self.generation
        {
            return c;
        }
        let candidates = self.candidate_set(job);
        Box::new(Compiled::build(
            job,
            group,
            fp,
            self.generation,
            candidates,
            self.nodes.len(),
        ))
    }

    fn job_prop(&mut self, job: u32, attr: &str) -> usize {
        let Scheduler { nodes, jobs, .. } = self;
        let Some(j) = jobs.get_mut(job as usize) else {
            return usize::MAX;
        };
        prop_index(&mut j.props, &j.per_node, nodes, attr)
    }

    fn group_prop(&mut self, gid: u32, attr: &str) -> usize {
        let Scheduler { nodes, groups, .. } = self;
        let Some(g) = groups.get_mut(gid as usize) else {
            return usize::MAX;
        };
        prop_index(&mut g.props, &g.per_node, nodes, attr)
    }

    #[allow(
        clippy::result_large_err,
        reason = "the metric is the failure's explanation; Placement (the Ok side) is larger still"
    )]
    fn place(
        &mut self,
        job: &Job,
        group: &TaskGroup,
        opts: &SelectOptions,
        visit: Visit,
        system: bool,
        rng: &mut SplitMix64,
    ) -> Result<Placement, AllocMetric> {
        let gid = self.intern_group(job.namespace.as_str(), job.id.as_str(), &group.name);
        let mut compiled = self.compiled(gid, job, group);
        let job_idx = self.groups.get(gid as usize).map_or(0, |g| g.job);
        let job_props: Vec<usize> = compiled
            .job_props
            .iter()
            .map(|s| self.job_prop(job_idx, &s.attr))
            .collect();
        let group_props: Vec<usize> = compiled
            .group_props
            .iter()
            .map(|s| self.group_prop(gid, &s.attr))
            .collect();
        let spread_props: Vec<usize> = if system {
            Vec::new()
        } else {
            compiled
                .spreads
                .iter()
                .map(|s| self.group_prop(gid, &s.attr))
                .collect()
        };
        let penalty: Vec<u32> = opts
            .penalty_nodes
            .iter()
            .filter_map(|id| self.node_index.get(id.as_str()).copied())
            .collect();
        let ask = Ask::new(group);
        let pool = canonical_pool(&job.node_pool);

        let candidates = Arc::clone(&compiled.candidates);
        let (winner, metric) = {
            let Scheduler {
                nodes,
                jobs,
                groups,
                ops,
                ..
            } = &mut *self;
            let (Some(job_state), Some(group_state)) =
                (jobs.get(job_idx as usize), groups.get(gid as usize))
            else {
                return Err(AllocMetric::default());
            };
            let mut acc = Acc::default();
            let mut scan = Scan {
                nodes,
                job: job_state,
                group: group_state,
                ops,
                compiled: &mut compiled,
                ask: &ask,
                job_props: &job_props,
                group_props: &group_props,
                spread_props: &spread_props,
                penalty: &penalty,
                system,
            };
            let winner = match visit {
                Visit::Sample => {
                    let start = rng.below(candidates.nodes.len() as u64) as usize;
                    scan.run(&candidates.nodes, start, &mut acc)
                }
                Visit::One(idx) => {
                    if candidates.contains(idx) {
                        scan.evaluate(idx, &mut acc)
                    } else {
                        acc.evaluated += 1;
                        if let Some(slot) = nodes.get(idx as usize) {
                            let why = not_candidate_reason(&slot.node, slot.present, job, pool);
                            acc.filter(&slot.node, Filter::Text(why));
                        }
                        None
                    }
                }
            };
            let winner = winner.and_then(|c| {
                let slot = nodes.get(c.idx as usize)?;
                let resources = assign_ports(slot, &ask, rng)?;
                Some((c, resources))
            });
            (winner, acc.into_metric(&compiled, &ask, nodes, pool))
        };
        if let Some(g) = self.groups.get_mut(gid as usize) {
            g.compiled = Some(compiled);
        }
        let Some((cand, resources)) = winner else {
            return Err(exhaust_resources(metric, group));
        };
        self.record(gid, cand.idx, &resources, opts.alloc_id.as_ref());
        let Some(slot) = self.nodes.get(cand.idx as usize) else {
            return Err(metric);
        };
        Ok(Placement {
            node_id: slot.node.id.clone(),
            node_name: slot.node.name.clone(),
            resources,
            metric,
            score: cand.norm,
        })
    }

    /// Accounts a placement this scheduler made.
    fn record(&mut self, gid: u32, idx: u32, resources: &AllocatedResources, id: Option<&AllocId>) {
        let id = match id {
            Some(id) => {
                self.remove_id(id);
                id.clone()
            }
            None => AllocId::new(format!("~placement-{}", self.selects)),
        };
        self.scratch_ports.clear();
        ports::alloc_ports(resources, &mut self.scratch_ports);
        let rec = Record {
            at: Placed::Node(idx),
            group: gid,
            res: resources.comparable(),
            ports: self.scratch_ports.as_slice().into(),
            mbits: ports::alloc_mbits(resources),
        };
        self.account(idx, gid, &rec.res, &rec.ports, rec.mbits, true);
        self.records.insert(id, rec);
    }
}

/// Nomad's `ExhaustResources`: per task, the cpu and memory asked in the dimensions that
/// ran out.
fn exhaust_resources(mut metric: AllocMetric, group: &TaskGroup) -> AllocMetric {
    if metric.dimension_exhausted.is_empty() {
        return metric;
    }
    let cpu = metric.dimension_exhausted.contains_key("cpu");
    let memory = metric.dimension_exhausted.contains_key("memory");
    for t in &group.tasks {
        let e = metric
            .resources_exhausted
            .entry(t.name.clone())
            .or_default();
        if cpu {
            e.cpu += t.resources.cpu;
        }
        if memory {
            e.memory_mb += t.resources.memory_mb;
        }
    }
    metric
}

fn prop_index(
    props: &mut Vec<PropCounts>,
    per_node: &super::hash::FxHashMap<u32, u32>,
    nodes: &[NodeSlot],
    attr: &str,
) -> usize {
    if let Some(i) = props.iter().position(|p| p.attr == attr) {
        return i;
    }
    let mut p = PropCounts::new(attr);
    for (&n, &c) in per_node {
        if let Some(slot) = nodes.get(n as usize)
            && let Some(v) = resolve_target(attr, &slot.node)
        {
            p.c.adjust(v, true, c);
        }
    }
    props.push(p);
    props.len() - 1
}

fn not_candidate_reason(node: &Node, present: bool, job: &Job, pool: &str) -> String {
    if !present {
        "node not found".to_owned()
    } else if !node.is_ready() {
        "node is not ready for placements".to_owned()
    } else if !in_pool(pool, &node.node_pool) {
        format!("node is not in node pool {pool:?}")
    } else if !in_datacenters(&job.datacenters, &node.datacenter) {
        format!(
            "node datacenter {:?} is not one of the job's",
            node.datacenter
        )
    } else {
        "node is not eligible".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, s, want) in [
            ("dc1", "dc1", true),
            ("dc1", "dc2", false),
            ("*", "anything", true),
            ("dc*", "dc1", true),
            ("dc*", "us-dc1", false),
            ("*-west", "us-west", true),
            ("us-*-1", "us-east-1", true),
            ("us-*-1", "us-east-2", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("ab*ba", "aba", false),
        ] {
            assert_eq!(glob_match(p, s), want, "{p} {s}");
        }
    }

    #[test]
    fn binpack_prefers_fuller_nodes() {
        let cap = ComparableResources {
            cpu_shares: 1000,
            memory_mb: 1000,
            disk_mb: 0,
        };
        let full = binpack_score(&cap, &cap);
        assert!((full - 1.0).abs() < 1e-9);
        let empty = binpack_score(&cap, &ComparableResources::default());
        assert!(empty.abs() < 1e-9);
        let half = binpack_score(
            &cap,
            &ComparableResources {
                cpu_shares: 500,
                memory_mb: 500,
                disk_mb: 0,
            },
        );
        assert!(half > empty && half < full);
        // 20 - 2*10^0.5 = 13.675..., / 18
        assert!((half - (20.0 - 2.0 * 10f64.sqrt()) / 18.0).abs() < 1e-9);
    }
}
