//! The scheduler: feasibility, ranking and placement of allocations on nodes, with Nomad's
//! semantics (scheduler/feasible in Nomad's source).
//!
//! A [`Scheduler`] holds a cluster snapshot — the nodes and the live allocations on them — and
//! places allocations one at a time with [`Scheduler::select`] (service and batch jobs: a
//! seed-driven sample of feasible nodes, the best score wins) or [`Scheduler::select_node`]
//! (system jobs: one given node). Every placement it makes is accounted at once, so the next
//! select of the same plan sees it; [`Scheduler::remove`] frees what a stop in the plan
//! releases, so a destructive update can reuse the room.
//!
//! It is pure: no I/O, no clock, randomness only from [`SelectOptions::seed`]. It can live
//! across evaluations too: allocations are keyed by ID, so [`Scheduler::add`] of an allocation
//! the scheduler placed itself (with [`SelectOptions::alloc_id`]) replaces that placement instead
//! of counting it twice, and [`Scheduler::upsert_node`]/[`Scheduler::remove_node`] follow node
//! changes.
//!
//! Failures are explained in an [`AllocMetric`] exactly as Nomad fills one: nodes evaluated,
//! filtered (per constraint text, `missing drivers`, `distinct_hosts`, …), exhausted (per
//! dimension: `cpu`, `memory`, `disk`, `network: reserved port collision http=8080`, …).
//!
//! [`fits`] is the plan applier's re-check that a set of allocations fits on a node.

mod constraint;
mod fit;
pub mod fixtures;
mod hash;
mod ports;
mod rng;
mod select;
mod version;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use constraint::{DISTINCT_HOSTS, DISTINCT_PROPERTY, resolve_target};
pub use fit::fits;
pub use ports::{DEFAULT_MAX_DYNAMIC_PORT, DEFAULT_MIN_DYNAMIC_PORT};

use caravan_schemas::alloc::{AllocMetric, Allocation};
use caravan_schemas::ids::{AllocId, NodeId};
use caravan_schemas::node::Node;
use caravan_schemas::resources::{AllocatedResources, ComparableResources};
use constraint::OperatorCache;
use hash::{FxHashMap, FxHasher};
use ports::PortUsage;
use select::{CandidateSet, Compiled};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Scorer names as Nomad records them in `NodeScoreMeta.Scores`.
pub mod scorers {
    pub const BINPACK: &str = "binpack";
    pub const JOB_ANTI_AFFINITY: &str = "job-anti-affinity";
    pub const NODE_RESCHEDULE_PENALTY: &str = "node-reschedule-penalty";
    pub const NODE_AFFINITY: &str = "node-affinity";
    pub const ALLOCATION_SPREAD: &str = "allocation-spread";
}

/// Filter reasons as Nomad names them in `AllocMetric.ConstraintFiltered`.
pub mod reasons {
    pub const MISSING_DRIVERS: &str = "missing drivers";
    pub const MISSING_DEVICES: &str = "missing devices";
    pub const MISSING_HOST_VOLUMES: &str = "missing compatible host volumes";
    pub const DISTINCT_HOSTS: &str = "distinct_hosts";
    /// `DimensionExhausted` key when the node's existing allocations already collide.
    pub const PORT_COLLISION: &str = "network: port collision";
    /// `DimensionExhausted` key when no dynamic port is left in the node's range.
    pub const DYNAMIC_PORTS: &str = "network: dynamic port selection failed";
    /// Prefix of the `DimensionExhausted` key of a static port already in use
    /// (`network: reserved port collision http=8080`).
    pub const RESERVED_PORT_COLLISION: &str = "network: reserved port collision";
    pub const BANDWIDTH: &str = "bandwidth exceeded";
}

/// Per-placement inputs.
#[derive(Clone, Debug, Default)]
pub struct SelectOptions {
    /// Drives the visiting order and the dynamic port picks.
    pub seed: u64,
    /// Nodes to score down by 1 (e.g. the node a rescheduled allocation failed on).
    pub penalty_nodes: Vec<NodeId>,
    /// Try this node first (sticky ephemeral disk, in-place); fall back to any node.
    pub preferred_node: Option<NodeId>,
    /// The ID the new allocation will have. The placement is recorded under it, so a later
    /// [`Scheduler::add`] or [`Scheduler::remove`] of that allocation updates it instead of
    /// counting it twice. Without one, the placement is recorded under an internal ID.
    pub alloc_id: Option<AllocId>,
}

/// Where an allocation goes and what it gets there.
#[derive(Clone, Debug)]
pub struct Placement {
    pub node_id: NodeId,
    pub node_name: String,
    /// Per-task cpu/memory (and task networks), the group's disk, networks and ports with the
    /// host port values assigned.
    pub resources: AllocatedResources,
    /// How the placement was made: nodes evaluated, filtered, exhausted and the best scores.
    pub metric: AllocMetric,
    /// The winning node's normalized score.
    pub score: f64,
}

/// Resource usage of one node, as the scheduler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeUsage {
    /// Node resources minus reserved.
    pub capacity: ComparableResources,
    /// Sum of the live allocations on it (including this plan's placements, without its stops).
    pub used: ComparableResources,
    /// Allocations on it.
    pub allocs: u32,
    /// Host ports held (sorted, with how many allocations hold each).
    pub ports: Vec<(u16, u32)>,
}

/// A cluster snapshot that places allocations. See the [module documentation](self).
#[derive(Debug)]
pub struct Scheduler {
    nodes: Vec<NodeSlot>,
    node_index: FxHashMap<String, u32>,
    /// Node positions in a fixed pseudo-random order (by a hash of the node ID).
    order: Vec<u32>,
    /// Bumped whenever a node's scheduling-relevant fields change: cached feasibility is
    /// recomputed.
    generation: u64,
    candidate_sets: FxHashMap<u64, Arc<CandidateSet>>,
    job_index: FxHashMap<String, FxHashMap<String, u32>>,
    jobs: Vec<JobState>,
    groups: Vec<GroupState>,
    records: FxHashMap<AllocId, Record>,
    /// Allocations on nodes the scheduler does not know (yet), by node ID.
    orphans: FxHashMap<String, Vec<AllocId>>,
    ops: OperatorCache,
    selects: u64,
    scratch_ports: Vec<u16>,
}

#[derive(Debug)]
struct NodeSlot {
    node: Arc<Node>,
    present: bool,
    order_key: u64,
    static_fp: u64,
    capacity: ComparableResources,
    used: ComparableResources,
    ports: PortUsage,
    dyn_lo: u16,
    dyn_hi: u16,
    host_ip: String,
    bandwidth: i64,
    mbits_used: i64,
    allocs: u32,
}

impl NodeSlot {
    fn new(node: Arc<Node>) -> Self {
        let mut slot = NodeSlot {
            order_key: order_key(node.id.as_str()),
            static_fp: static_fingerprint(&node),
            node,
            present: true,
            capacity: ComparableResources::default(),
            used: ComparableResources::default(),
            ports: PortUsage::default(),
            dyn_lo: DEFAULT_MIN_DYNAMIC_PORT,
            dyn_hi: DEFAULT_MAX_DYNAMIC_PORT,
            host_ip: String::new(),
            bandwidth: 0,
            mbits_used: 0,
            allocs: 0,
        };
        slot.refresh();
        slot
    }

    /// Recomputes what is derived from the node object.
    fn refresh(&mut self) {
        let node = &*self.node;
        self.capacity = node.comparable_resources();
        self.ports.set_reserved(ports::node_reserved_ports(node));
        (self.dyn_lo, self.dyn_hi) = ports::dynamic_range(node);
        self.host_ip = ports::node_host_ip(node);
        self.bandwidth = ports::node_bandwidth(node);
        self.static_fp = static_fingerprint(node);
    }
}

fn order_key(id: &str) -> u64 {
    let mut h = FxHasher::default();
    id.hash(&mut h);
    rng::mix(h.finish())
}

/// A hash of everything feasibility depends on (not resources, which are read live).
fn static_fingerprint(node: &Node) -> u64 {
    let mut h = FxHasher::default();
    node.id.as_str().hash(&mut h);
    node.name.hash(&mut h);
    node.datacenter.hash(&mut h);
    node.node_class.hash(&mut h);
    node.node_pool.hash(&mut h);
    node.is_ready().hash(&mut h);
    node.attributes.hash(&mut h);
    node.meta.hash(&mut h);
    for (name, d) in &node.drivers {
        name.hash(&mut h);
        d.detected.hash(&mut h);
        d.healthy.hash(&mut h);
    }
    for (name, v) in &node.host_volumes {
        name.hash(&mut h);
        v.read_only.hash(&mut h);
    }
    node.host_networks.keys().for_each(|k| k.hash(&mut h));
    if let Some(r) = &node.node_resources {
        for net in &r.node_networks {
            net.addresses.iter().for_each(|a| a.alias.hash(&mut h));
        }
    }
    h.finish()
}

#[derive(Debug)]
struct JobState {
    groups: FxHashMap<String, u32>,
    /// Node position → live allocations of the job there.
    per_node: FxHashMap<u32, u32>,
    /// Property value counts for job-level `distinct_property`.
    props: Vec<PropCounts>,
}

#[derive(Debug)]
struct GroupState {
    job: u32,
    /// Node position → live allocations of the group there.
    per_node: FxHashMap<u32, u32>,
    /// Property value counts for spreads and group-level `distinct_property`.
    props: Vec<PropCounts>,
    compiled: Option<Box<Compiled>>,
}

/// How many live allocations of a job or group sit on nodes with each value of a property.
#[derive(Debug)]
struct PropCounts {
    attr: String,
    c: ValueCounts,
}

impl PropCounts {
    fn new(attr: &str) -> Self {
        PropCounts {
            attr: attr.to_owned(),
            c: ValueCounts::default(),
        }
    }

    fn get(&self, value: &str) -> u32 {
        self.c.counts.get(value).copied().unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct ValueCounts {
    /// Value → allocations (only values with some).
    counts: FxHashMap<String, u32>,
    /// Count → how many values have that count (for the min and max of even spreads).
    hist: BTreeMap<u32, u32>,
    /// Allocations on nodes that have the property.
    total: u32,
}

impl ValueCounts {
    fn min_max(&self) -> Option<(u32, u32)> {
        Some((
            *self.hist.first_key_value()?.0,
            *self.hist.last_key_value()?.0,
        ))
    }

    fn adjust(&mut self, value: &str, add: bool, by: u32) {
        if by == 0 {
            return;
        }
        let (old, new) = match self.counts.get_mut(value) {
            Some(c) => {
                let old = *c;
                *c = if add {
                    old + by
                } else {
                    old.saturating_sub(by)
                };
                (old, *c)
            }
            None if add => {
                self.counts.insert(value.to_owned(), by);
                (0, by)
            }
            None => return,
        };
        if new == 0 {
            self.counts.remove(value);
        }
        if add {
            self.total += new - old;
        } else {
            self.total = self.total.saturating_sub(old - new);
        }
        if old > 0
            && let Some(n) = self.hist.get_mut(&old)
        {
            *n -= 1;
            if *n == 0 {
                self.hist.remove(&old);
            }
        }
        if new > 0 {
            *self.hist.entry(new).or_default() += 1;
        }
    }
}

#[derive(Debug)]
enum Placed {
    Node(u32),
    /// On a node the scheduler does not know; not accounted until it appears.
    Orphan(String),
}

#[derive(Debug)]
struct Record {
    at: Placed,
    group: u32,
    res: ComparableResources,
    ports: Box<[u16]>,
    mbits: i64,
}

fn bump(map: &mut FxHashMap<u32, u32>, key: u32, add: bool) {
    if add {
        *map.entry(key).or_default() += 1;
    } else if let Some(c) = map.get_mut(&key) {
        *c -= 1;
        if *c == 0 {
            map.remove(&key);
        }
    }
}

impl Scheduler {
    /// A scheduler over `nodes` with the live allocations among `allocs` (terminal ones are
    /// ignored). The nodes are copied once; see [`Scheduler::from_shared`] to share them.
    pub fn new<'n, 'a>(
        nodes: impl IntoIterator<Item = &'n Node>,
        allocs: impl IntoIterator<Item = &'a Allocation>,
    ) -> Self {
        Self::from_shared(nodes.into_iter().map(|n| Arc::new(n.clone())), allocs)
    }

    /// Like [`Scheduler::new`], with nodes the caller already shares.
    pub fn from_shared<'a>(
        nodes: impl IntoIterator<Item = Arc<Node>>,
        allocs: impl IntoIterator<Item = &'a Allocation>,
    ) -> Self {
        let mut s = Scheduler {
            nodes: Vec::new(),
            node_index: FxHashMap::default(),
            order: Vec::new(),
            generation: 0,
            candidate_sets: FxHashMap::default(),
            job_index: FxHashMap::default(),
            jobs: Vec::new(),
            groups: Vec::new(),
            records: FxHashMap::default(),
            orphans: FxHashMap::default(),
            ops: OperatorCache::default(),
            selects: 0,
            scratch_ports: Vec::new(),
        };
        for node in nodes {
            match s.node_index.get(node.id.as_str()) {
                Some(&i) => {
                    let slot = &mut s.nodes[i as usize];
                    slot.node = node;
                    slot.refresh();
                }
                None => {
                    let i = s.nodes.len() as u32;
                    s.node_index.insert(node.id.as_str().to_owned(), i);
                    s.nodes.push(NodeSlot::new(node));
                }
            }
        }
        s.order = (0..s.nodes.len() as u32).collect();
        let nodes = &s.nodes;
        s.order
            .sort_unstable_by_key(|&i| (nodes[i as usize].order_key, i));
        let allocs = allocs.into_iter();
        s.records.reserve(allocs.size_hint().0);
        for alloc in allocs {
            s.add(alloc);
        }
        s
    }

    /// Number of nodes known (present ones).
    pub fn node_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.present).count()
    }

    /// A node by ID.
    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        let &i = self.node_index.get(id.as_str())?;
        let slot = &self.nodes[i as usize];
        slot.present.then_some(&*slot.node)
    }

    /// What a node offers and what its allocations use.
    pub fn usage(&self, id: &NodeId) -> Option<NodeUsage> {
        let &i = self.node_index.get(id.as_str())?;
        let slot = &self.nodes[i as usize];
        Some(NodeUsage {
            capacity: slot.capacity,
            used: slot.used,
            allocs: slot.allocs,
            ports: slot.ports.held().to_vec(),
        })
    }

    /// Whether the scheduler counts this allocation (live, or placed by this scheduler).
    pub fn contains(&self, id: &AllocId) -> bool {
        self.records.contains_key(id)
    }

    /// Adds or updates a node (a new node, a status or attribute change, a drain).
    pub fn upsert_node(&mut self, node: impl Into<Arc<Node>>) {
        let node = node.into();
        match self.node_index.get(node.id.as_str()) {
            Some(&i) => {
                let slot = &mut self.nodes[i as usize];
                let before = (slot.static_fp, slot.present);
                slot.node = node;
                slot.present = true;
                slot.refresh();
                if before != (slot.static_fp, true) {
                    self.invalidate();
                }
            }
            None => {
                let i = self.nodes.len() as u32;
                let id = node.id.as_str().to_owned();
                let slot = NodeSlot::new(node);
                let key = (slot.order_key, i);
                self.nodes.push(slot);
                let nodes = &self.nodes;
                let at = self
                    .order
                    .partition_point(|&j| (nodes[j as usize].order_key, j) < key);
                self.order.insert(at, i);
                self.invalidate();
                if let Some(waiting) = self.orphans.remove(&id) {
                    self.node_index.insert(id, i);
                    for alloc_id in waiting {
                        self.attach_orphan(&alloc_id, i);
                    }
                } else {
                    self.node_index.insert(id, i);
                }
            }
        }
    }

    /// Removes a node: nothing is placed there any more. Its allocations stay accounted (they
    /// are still live until the node's allocations are marked lost).
    pub fn remove_node(&mut self, id: &NodeId) {
        if let Some(&i) = self.node_index.get(id.as_str()) {
            let slot = &mut self.nodes[i as usize];
            if slot.present {
                slot.present = false;
                self.invalidate();
            }
        }
    }

    fn invalidate(&mut self) {
        self.generation += 1;
        self.candidate_sets.clear();
        for j in &mut self.jobs {
            j.props.clear();
        }
        for g in &mut self.groups {
            g.props.clear();
        }
    }

    /// Counts an allocation (a live one from the store, or one this plan places elsewhere);
    /// replaces an earlier record with the same ID. A terminal allocation is removed instead.
    pub fn add(&mut self, alloc: &Allocation) {
        self.remove_id(&alloc.id);
        if alloc.is_terminal() {
            return;
        }
        let group = self.intern_group(
            alloc.namespace.as_str(),
            alloc.job_id.as_str(),
            &alloc.task_group,
        );
        let (res, ports, mbits) = match &alloc.allocated_resources {
            Some(r) => {
                self.scratch_ports.clear();
                ports::alloc_ports(r, &mut self.scratch_ports);
                (
                    r.comparable(),
                    self.scratch_ports.as_slice().into(),
                    ports::alloc_mbits(r),
                )
            }
            None => (ComparableResources::default(), Box::default(), 0),
        };
        let at = match self.node_index.get(alloc.node_id.as_str()) {
            Some(&i) => {
                self.account(i, group, &res, &ports, mbits, true);
                Placed::Node(i)
            }
            None => {
                self.orphans
                    .entry(alloc.node_id.as_str().to_owned())
                    .or_default()
                    .push(alloc.id.clone());
                Placed::Orphan(alloc.node_id.as_str().to_owned())
            }
        };
        self.records.insert(
            alloc.id.clone(),
            Record {
                at,
                group,
                res,
                ports,
                mbits,
            },
        );
    }

    /// Frees what an allocation holds (a stop or eviction in this plan, or an allocation that
    /// went away). Returns whether it was counted.
    pub fn remove(&mut self, alloc: &Allocation) -> bool {
        self.remove_id(&alloc.id)
    }

    /// [`Scheduler::remove`] by ID.
    pub fn remove_id(&mut self, id: &AllocId) -> bool {
        let Some(rec) = self.records.remove(id) else {
            return false;
        };
        match &rec.at {
            Placed::Node(i) => self.account(*i, rec.group, &rec.res, &rec.ports, rec.mbits, false),
            Placed::Orphan(node) => {
                if let Some(list) = self.orphans.get_mut(node) {
                    list.retain(|a| a != id);
                    if list.is_empty() {
                        self.orphans.remove(node);
                    }
                }
            }
        }
        true
    }

    fn attach_orphan(&mut self, id: &AllocId, node: u32) {
        let Some(rec) = self.records.get_mut(id) else {
            return;
        };
        rec.at = Placed::Node(node);
        let (group, res, ports, mbits) = (rec.group, rec.res, rec.ports.clone(), rec.mbits);
        self.account(node, group, &res, &ports, mbits, true);
    }

    fn intern_group(&mut self, namespace: &str, job: &str, group: &str) -> u32 {
        let job_idx = match self.job_index.get(namespace).and_then(|m| m.get(job)) {
            Some(&j) => j,
            None => {
                let j = self.jobs.len() as u32;
                self.jobs.push(JobState {
                    groups: FxHashMap::default(),
                    per_node: FxHashMap::default(),
                    props: Vec::new(),
                });
                self.job_index
                    .entry(namespace.to_owned())
                    .or_default()
                    .insert(job.to_owned(), j);
                j
            }
        };
        if let Some(&g) = self.jobs[job_idx as usize].groups.get(group) {
            return g;
        }
        let g = self.groups.len() as u32;
        self.groups.push(GroupState {
            job: job_idx,
            per_node: FxHashMap::default(),
            props: Vec::new(),
            compiled: None,
        });
        self.jobs[job_idx as usize]
            .groups
            .insert(group.to_owned(), g);
        g
    }

    /// Adds (or removes) one allocation's footprint on a node.
    fn account(
        &mut self,
        idx: u32,
        group: u32,
        res: &ComparableResources,
        ports: &[u16],
        mbits: i64,
        add: bool,
    ) {
        let Scheduler {
            nodes,
            groups,
            jobs,
            ..
        } = self;
        let Some(slot) = nodes.get_mut(idx as usize) else {
            return;
        };
        if add {
            slot.used.add(res);
            for &p in ports {
                slot.ports.add(p);
            }
            slot.mbits_used += mbits;
            slot.allocs += 1;
        } else {
            slot.used.subtract(res);
            for &p in ports {
                slot.ports.remove(p);
            }
            slot.mbits_used -= mbits;
            slot.allocs = slot.allocs.saturating_sub(1);
        }
        let node = &*slot.node;
        let Some(g) = groups.get_mut(group as usize) else {
            return;
        };
        bump(&mut g.per_node, idx, add);
        for p in &mut g.props {
            if let Some(v) = resolve_target(&p.attr, node) {
                p.c.adjust(v, add, 1);
            }
        }
        let Some(j) = jobs.get_mut(g.job as usize) else {
            return;
        };
        bump(&mut j.per_node, idx, add);
        for p in &mut j.props {
            if let Some(v) = resolve_target(&p.attr, node) {
                p.c.adjust(v, add, 1);
            }
        }
    }
}
