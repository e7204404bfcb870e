//! Builders of nodes, jobs and allocations for tests: `fixtures::node()`, `fixtures::job()`,
//! `fixtures::alloc()`, each with builder methods and `build()`.
//!
//! Defaults follow Nomad's `mock` package in spirit: a ready, eligible node in `dc1` with
//! 4000 MHz, 8192 MB memory, 100 GB disk and the exec, raw_exec, docker and mock drivers; a
//! service job `job` in `dc1` with one group `web` (count 1) running one `exec` task `web`
//! (500 MHz, 256 MB) with a 300 MB ephemeral disk. IDs not given are unique per process.

use super::Placement;
use caravan_schemas::alloc::{Allocation, ClientStatus, DesiredStatus, alloc_name};
use caravan_schemas::ids::{AllocId, JobId, Namespace, NodeId};
use caravan_schemas::job::{
    Affinity, Constraint, EphemeralDisk, Job, JobType, Spread, SpreadTarget, Task, TaskGroup,
    TaskLifecycle, VolumeRequest,
};
use caravan_schemas::node::{
    ClientHostVolumeConfig, DrainStrategy, DriverInfo, Node, NodeStatus, SchedulingEligibility,
};
use caravan_schemas::resources::{
    AllocatedCpuResources, AllocatedMemoryResources, AllocatedPortMapping, AllocatedResources,
    AllocatedTaskResources, NetworkResource, NodeCpuResources, NodeDiskResources,
    NodeMemoryResources, NodeReservedResources, NodeResources, Port, Resources,
};
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(1);

fn next() -> u64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A ready node; see the module docs for the defaults.
pub fn node() -> NodeBuilder {
    let n = next();
    let id = format!("node-{n:06}");
    let mut node = Node {
        id: NodeId::new(id.clone()),
        name: id.clone(),
        datacenter: "dc1".into(),
        node_pool: "default".into(),
        status: NodeStatus::Ready,
        scheduling_eligibility: SchedulingEligibility::Eligible,
        node_resources: Some(NodeResources {
            cpu: NodeCpuResources {
                cpu_shares: 4000,
                total_cpu_cores: 4,
                reservable_cpu_cores: vec![0, 1, 2, 3],
            },
            memory: NodeMemoryResources { memory_mb: 8192 },
            disk: NodeDiskResources { disk_mb: 100_000 },
            min_dynamic_port: 20000,
            max_dynamic_port: 32000,
            ..Default::default()
        }),
        reserved_resources: Some(NodeReservedResources::default()),
        ..Default::default()
    };
    for (k, v) in [
        ("kernel.name", "linux".to_owned()),
        ("os.name", "debian".to_owned()),
        ("cpu.arch", "amd64".to_owned()),
        ("nomad.version", "1.9.3".to_owned()),
        ("unique.hostname", id.clone()),
        (
            "unique.network.ip-address",
            format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255),
        ),
    ] {
        node.attributes.insert(k.to_owned(), v);
    }
    let mut b = NodeBuilder(node);
    for d in ["exec", "raw_exec", "docker", "mock"] {
        b = b.driver(d, true, true);
    }
    b
}

/// Builds a [`Node`].
#[derive(Clone, Debug)]
pub struct NodeBuilder(Node);

impl NodeBuilder {
    fn resources(&mut self) -> &mut NodeResources {
        self.0.node_resources.get_or_insert_with(Default::default)
    }

    fn reserved(&mut self) -> &mut NodeReservedResources {
        self.0
            .reserved_resources
            .get_or_insert_with(Default::default)
    }

    pub fn id(mut self, id: &str) -> Self {
        self.0.id = NodeId::new(id);
        self.0.name = id.to_owned();
        self.0
            .attributes
            .insert("unique.hostname".into(), id.to_owned());
        self
    }
    pub fn name(mut self, name: &str) -> Self {
        self.0.name = name.to_owned();
        self
    }
    pub fn dc(mut self, dc: &str) -> Self {
        self.0.datacenter = dc.to_owned();
        self
    }
    pub fn pool(mut self, pool: &str) -> Self {
        self.0.node_pool = pool.to_owned();
        self
    }
    pub fn class(mut self, class: &str) -> Self {
        self.0.node_class = class.to_owned();
        self
    }
    pub fn attr(mut self, key: &str, value: &str) -> Self {
        self.0.attributes.insert(key.to_owned(), value.to_owned());
        self
    }
    pub fn without_attr(mut self, key: &str) -> Self {
        self.0.attributes.remove(key);
        self
    }
    pub fn meta(mut self, key: &str, value: &str) -> Self {
        self.0.meta.insert(key.to_owned(), value.to_owned());
        self
    }
    /// CPU in MHz.
    pub fn cpu(mut self, mhz: i64) -> Self {
        self.resources().cpu.cpu_shares = mhz;
        self
    }
    pub fn memory(mut self, mb: i64) -> Self {
        self.resources().memory.memory_mb = mb;
        self
    }
    pub fn disk(mut self, mb: i64) -> Self {
        self.resources().disk.disk_mb = mb;
        self
    }
    /// Resources kept back from the scheduler.
    pub fn reserve(mut self, cpu: i64, memory_mb: i64, disk_mb: i64) -> Self {
        let r = self.reserved();
        r.cpu.cpu_shares = cpu;
        r.memory.memory_mb = memory_mb;
        r.disk.disk_mb = disk_mb;
        self
    }
    /// Reserved host ports (`"22,8000-8100"`).
    pub fn reserved_ports(mut self, spec: &str) -> Self {
        self.reserved().networks.reserved_host_ports = spec.to_owned();
        self
    }
    pub fn dynamic_ports(mut self, min: i32, max: i32) -> Self {
        let r = self.resources();
        r.min_dynamic_port = min;
        r.max_dynamic_port = max;
        self
    }
    /// Declares a host network with this bandwidth (Mbit/s).
    pub fn bandwidth(mut self, mbits: i32) -> Self {
        self.resources().networks = vec![NetworkResource {
            mode: "host".into(),
            device: "eth0".into(),
            mbits,
            ..Default::default()
        }];
        self
    }
    pub fn driver(mut self, name: &str, detected: bool, healthy: bool) -> Self {
        self.0.drivers.insert(
            name.to_owned(),
            DriverInfo {
                detected,
                healthy,
                ..Default::default()
            },
        );
        self
    }
    pub fn without_driver(mut self, name: &str) -> Self {
        self.0.drivers.remove(name);
        self.0.attributes.remove(&format!("driver.{name}"));
        self
    }
    pub fn host_volume(mut self, name: &str, read_only: bool) -> Self {
        self.0.host_volumes.insert(
            name.to_owned(),
            ClientHostVolumeConfig {
                name: name.to_owned(),
                path: format!("/srv/{name}"),
                read_only,
                id: String::new(),
            },
        );
        self
    }
    pub fn host_network(mut self, name: &str) -> Self {
        self.0.host_networks.insert(
            name.to_owned(),
            caravan_schemas::node::ClientHostNetworkConfig {
                name: name.to_owned(),
                ..Default::default()
            },
        );
        self
    }
    pub fn status(mut self, status: NodeStatus) -> Self {
        self.0.status = status;
        self
    }
    pub fn ineligible(mut self) -> Self {
        self.0.scheduling_eligibility = SchedulingEligibility::Ineligible;
        self
    }
    pub fn draining(mut self) -> Self {
        self.0.drain_strategy = Some(DrainStrategy::default());
        self.0.drain = true;
        self.0.scheduling_eligibility = SchedulingEligibility::Ineligible;
        self
    }
    pub fn build(self) -> Node {
        self.0
    }
}

impl From<NodeBuilder> for Node {
    fn from(b: NodeBuilder) -> Node {
        b.0
    }
}

/// A task: `exec` driver, 500 MHz, 256 MB.
pub fn task(name: &str) -> Task {
    Task {
        name: name.to_owned(),
        driver: "exec".into(),
        resources: Resources {
            cpu: 500,
            memory_mb: 256,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A group with one task named like it.
pub fn group(name: &str) -> TaskGroup {
    TaskGroup {
        name: name.to_owned(),
        count: 1,
        tasks: vec![task(name)],
        ephemeral_disk: Some(EphemeralDisk {
            size_mb: 300,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A service job `job` with one group `web`.
pub fn job() -> JobBuilder {
    JobBuilder(Job {
        id: JobId::new("job"),
        name: "job".into(),
        namespace: Namespace::default_ns(),
        region: caravan_schemas::ids::Region::global(),
        r#type: JobType::Service,
        priority: 50,
        datacenters: vec!["dc1".into()],
        node_pool: "default".into(),
        task_groups: vec![group("web")],
        ..Default::default()
    })
}

fn constraint(l: &str, op: &str, r: &str) -> Constraint {
    Constraint {
        l_target: l.to_owned(),
        r_target: r.to_owned(),
        operand: op.to_owned(),
    }
}

fn affinity(l: &str, op: &str, r: &str, weight: i32) -> Affinity {
    Affinity {
        l_target: l.to_owned(),
        r_target: r.to_owned(),
        operand: op.to_owned(),
        weight,
    }
}

fn spread(attr: &str, weight: i32, targets: &[(&str, u32)]) -> Spread {
    Spread {
        attribute: attr.to_owned(),
        weight,
        spread_target: targets
            .iter()
            .map(|(v, p)| SpreadTarget {
                value: (*v).to_owned(),
                percent: *p,
            })
            .collect(),
    }
}

/// Builds a [`Job`]. Group and task methods apply to the last group and its tasks.
#[derive(Clone, Debug)]
pub struct JobBuilder(Job);

impl JobBuilder {
    fn group_mut(&mut self) -> &mut TaskGroup {
        if self.0.task_groups.is_empty() {
            self.0.task_groups.push(group("web"));
        }
        let last = self.0.task_groups.len() - 1;
        &mut self.0.task_groups[last]
    }

    fn tasks(&mut self) -> impl Iterator<Item = &mut Task> {
        self.group_mut().tasks.iter_mut()
    }

    pub fn id(mut self, id: &str) -> Self {
        self.0.id = JobId::new(id);
        self.0.name = id.to_owned();
        self
    }
    pub fn namespace(mut self, ns: &str) -> Self {
        self.0.namespace = Namespace::new(ns);
        self
    }
    pub fn kind(mut self, kind: JobType) -> Self {
        self.0.r#type = kind;
        self
    }
    pub fn batch(self) -> Self {
        self.kind(JobType::Batch)
    }
    pub fn system(self) -> Self {
        self.kind(JobType::System)
    }
    pub fn version(mut self, version: u64) -> Self {
        self.0.version = version;
        self
    }
    pub fn datacenters(mut self, dcs: &[&str]) -> Self {
        self.0.datacenters = dcs.iter().map(|d| (*d).to_owned()).collect();
        self
    }
    pub fn pool(mut self, pool: &str) -> Self {
        self.0.node_pool = pool.to_owned();
        self
    }
    /// A job-level constraint.
    pub fn constraint(mut self, l: &str, op: &str, r: &str) -> Self {
        self.0.constraints.push(constraint(l, op, r));
        self
    }
    pub fn affinity(mut self, l: &str, op: &str, r: &str, weight: i32) -> Self {
        self.0.affinities.push(affinity(l, op, r, weight));
        self
    }
    /// A job-level spread; `targets` are `(value, percent)`.
    pub fn spread(mut self, attr: &str, weight: i32, targets: &[(&str, u32)]) -> Self {
        self.0.spreads.push(spread(attr, weight, targets));
        self
    }
    /// Adds a group (a copy of [`group`]) that later group methods apply to.
    pub fn with_group(mut self, name: &str) -> Self {
        self.0.task_groups.push(group(name));
        self
    }
    pub fn count(mut self, count: i32) -> Self {
        self.group_mut().count = count;
        self
    }
    pub fn group_constraint(mut self, l: &str, op: &str, r: &str) -> Self {
        self.group_mut().constraints.push(constraint(l, op, r));
        self
    }
    pub fn group_affinity(mut self, l: &str, op: &str, r: &str, weight: i32) -> Self {
        self.group_mut().affinities.push(affinity(l, op, r, weight));
        self
    }
    pub fn group_spread(mut self, attr: &str, weight: i32, targets: &[(&str, u32)]) -> Self {
        self.group_mut().spreads.push(spread(attr, weight, targets));
        self
    }
    /// A constraint on the group's first task.
    pub fn task_constraint(mut self, l: &str, op: &str, r: &str) -> Self {
        if let Some(t) = self.tasks().next() {
            t.constraints.push(constraint(l, op, r));
        }
        self
    }
    /// Adds a task (a copy of [`task`]) to the last group.
    pub fn with_task(mut self, name: &str) -> Self {
        self.group_mut().tasks.push(task(name));
        self
    }
    /// Sets the last task's lifecycle hook (`prestart`, `poststart`, `poststop`).
    pub fn lifecycle(mut self, hook: &str, sidecar: bool) -> Self {
        if let Some(t) = self.group_mut().tasks.last_mut() {
            t.lifecycle = Some(TaskLifecycle {
                hook: hook.to_owned(),
                sidecar,
            });
        }
        self
    }
    /// The driver of every task of the last group.
    pub fn driver(mut self, driver: &str) -> Self {
        for t in self.tasks() {
            t.driver = driver.to_owned();
        }
        self
    }
    /// CPU (MHz) of every task of the last group.
    pub fn cpu(mut self, mhz: i32) -> Self {
        for t in self.tasks() {
            t.resources.cpu = mhz;
        }
        self
    }
    /// Memory (MB) of every task of the last group.
    pub fn memory(mut self, mb: i32) -> Self {
        for t in self.tasks() {
            t.resources.memory_mb = mb;
        }
        self
    }
    /// The group's ephemeral disk (MB).
    pub fn disk(mut self, mb: i32) -> Self {
        self.group_mut().ephemeral_disk = Some(EphemeralDisk {
            size_mb: mb,
            ..Default::default()
        });
        self
    }
    fn group_network(&mut self) -> &mut NetworkResource {
        let g = self.group_mut();
        if g.networks.is_empty() {
            g.networks.push(NetworkResource {
                mode: "host".into(),
                ..Default::default()
            });
        }
        &mut g.networks[0]
    }
    /// A group `port "label" { static = value }`.
    pub fn static_port(mut self, label: &str, value: i32) -> Self {
        self.group_network().reserved_ports.push(Port {
            label: label.to_owned(),
            value,
            ..Default::default()
        });
        self
    }
    /// A group `port "label" { to = to }` (dynamic).
    pub fn dynamic_port(mut self, label: &str, to: i32) -> Self {
        self.group_network().dynamic_ports.push(Port {
            label: label.to_owned(),
            to,
            ..Default::default()
        });
        self
    }
    /// A dynamic group port bound to a host network.
    pub fn host_network_port(mut self, label: &str, host_network: &str) -> Self {
        self.group_network().dynamic_ports.push(Port {
            label: label.to_owned(),
            host_network: host_network.to_owned(),
            ..Default::default()
        });
        self
    }
    /// Group network bandwidth (Mbit/s).
    pub fn mbits(mut self, mbits: i32) -> Self {
        self.group_network().mbits = mbits;
        self
    }
    fn task_network(&mut self) -> Option<&mut NetworkResource> {
        let t = self.group_mut().tasks.first_mut()?;
        if t.resources.networks.is_empty() {
            t.resources.networks.push(NetworkResource::default());
        }
        t.resources.networks.first_mut()
    }
    /// A port in the first task's (legacy) network: static when `value > 0`, else dynamic.
    pub fn task_port(mut self, label: &str, value: i32) -> Self {
        if let Some(n) = self.task_network() {
            let port = Port {
                label: label.to_owned(),
                value,
                ..Default::default()
            };
            if value > 0 {
                n.reserved_ports.push(port);
            } else {
                n.dynamic_ports.push(port);
            }
        }
        self
    }
    /// A host volume request.
    pub fn volume(mut self, name: &str, source: &str, read_only: bool) -> Self {
        self.group_mut().volumes.insert(
            name.to_owned(),
            VolumeRequest {
                name: name.to_owned(),
                r#type: "host".into(),
                source: source.to_owned(),
                read_only,
            },
        );
        self
    }
    pub fn build(self) -> Job {
        self.0
    }
}

impl From<JobBuilder> for Job {
    fn from(b: JobBuilder) -> Job {
        b.0
    }
}

/// A running allocation of job `job`, group `web`, with 500 MHz / 256 MB / 300 MB disk; place
/// it with `.node(..)`.
pub fn alloc() -> AllocBuilder {
    let n = next();
    let mut res = AllocatedResources::default();
    res.tasks.insert(
        "web".into(),
        AllocatedTaskResources {
            cpu: AllocatedCpuResources {
                cpu_shares: 500,
                reserved_cores: Vec::new(),
            },
            memory: AllocatedMemoryResources {
                memory_mb: 256,
                memory_max_mb: 0,
            },
            ..Default::default()
        },
    );
    res.task_lifecycles.insert("web".into(), None);
    res.shared.disk_mb = 300;
    AllocBuilder(Allocation {
        id: AllocId::new(format!("alloc-{n:08}")),
        namespace: Namespace::default_ns(),
        name: alloc_name("job", "web", 0),
        job_id: JobId::new("job"),
        task_group: "web".into(),
        allocated_resources: Some(res),
        desired_status: DesiredStatus::Run,
        client_status: ClientStatus::Running,
        ..Default::default()
    })
}

/// The allocation a placement describes.
pub fn alloc_from(job: &Job, group: &str, placement: &Placement) -> Allocation {
    let n = next();
    Allocation {
        id: AllocId::new(format!("alloc-{n:08}")),
        namespace: job.namespace.clone(),
        name: alloc_name(job.id.as_str(), group, 0),
        node_id: placement.node_id.clone(),
        node_name: placement.node_name.clone(),
        job_id: job.id.clone(),
        task_group: group.to_owned(),
        allocated_resources: Some(placement.resources.clone()),
        metrics: Some(placement.metric.clone()),
        desired_status: DesiredStatus::Run,
        client_status: ClientStatus::Pending,
        ..Default::default()
    }
}

/// Builds an [`Allocation`].
#[derive(Clone, Debug)]
pub struct AllocBuilder(Allocation);

impl AllocBuilder {
    fn res(&mut self) -> &mut AllocatedResources {
        self.0
            .allocated_resources
            .get_or_insert_with(Default::default)
    }

    pub fn id(mut self, id: &str) -> Self {
        self.0.id = AllocId::new(id);
        self
    }
    pub fn node(mut self, node: &Node) -> Self {
        self.0.node_id = node.id.clone();
        self.0.node_name = node.name.clone();
        self
    }
    pub fn node_id(mut self, id: &str) -> Self {
        self.0.node_id = NodeId::new(id);
        self
    }
    /// Belongs to `job` (ID and namespace; the job is embedded).
    pub fn job(mut self, job: &Job) -> Self {
        self.0.job_id = job.id.clone();
        self.0.namespace = job.namespace.clone();
        self.0.job = Some(std::sync::Arc::new(job.clone()));
        self.0.name = alloc_name(job.id.as_str(), &self.0.task_group, 0);
        self
    }
    pub fn job_id(mut self, id: &str) -> Self {
        self.0.job_id = JobId::new(id);
        self
    }
    pub fn group(mut self, group: &str) -> Self {
        self.0.task_group = group.to_owned();
        self
    }
    /// One task `web` with this cpu and memory, and this disk.
    pub fn resources(mut self, cpu: i64, memory_mb: i64, disk_mb: i64) -> Self {
        let r = self.res();
        r.tasks.clear();
        r.task_lifecycles.clear();
        r.tasks.insert(
            "web".into(),
            AllocatedTaskResources {
                cpu: AllocatedCpuResources {
                    cpu_shares: cpu,
                    reserved_cores: Vec::new(),
                },
                memory: AllocatedMemoryResources {
                    memory_mb,
                    memory_max_mb: 0,
                },
                ..Default::default()
            },
        );
        r.task_lifecycles.insert("web".into(), None);
        r.shared.disk_mb = disk_mb;
        self
    }
    /// A group port mapping holding host port `value`.
    pub fn port(mut self, label: &str, value: i32) -> Self {
        self.res().shared.ports.push(AllocatedPortMapping {
            label: label.to_owned(),
            value,
            to: 0,
            host_ip: String::new(),
            ignore_collision: false,
        });
        self
    }
    pub fn client_status(mut self, status: ClientStatus) -> Self {
        self.0.client_status = status;
        self
    }
    pub fn desired_status(mut self, status: DesiredStatus) -> Self {
        self.0.desired_status = status;
        self
    }
    pub fn build(self) -> Allocation {
        self.0
    }
}

impl From<AllocBuilder> for Allocation {
    fn from(b: AllocBuilder) -> Allocation {
        b.0
    }
}
