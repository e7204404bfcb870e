//! The service-registration reconciler, pure: which [`ServiceRegistration`]s one allocation
//! should have, and what to write to get there from the ones it has.
//!
//! Nomad's clients register their allocations' services themselves (`provider = "nomad"`, or in
//! Consul); in Caravan the servers do it for them from what the clients report, so that nodes
//! never write to the store: one registration per `service` block of the allocation's group and
//! of its tasks, whatever the `provider` says, while the allocation runs and is desired to run.
//!
//! - **Address and port** follow Nomad's `address_mode`: `auto` (the default) and `host` give
//!   the host IP and host port the allocation got for the service's port label (or the
//!   service's own `address`, under `auto`); a numeric `port` is used as it is, on the node's
//!   address; `alloc` gives the allocation's network address and the port inside it. A service
//!   whose port cannot be resolved gets no registration, and the reason is returned
//!   ([`Skipped`]) for the caller to log.
//! - **Tags and meta** are `canary_tags` and `canary_meta` while the allocation is an unpromoted
//!   canary (`DeploymentStatus.Canary`), falling back to `tags` and `meta` when those are empty,
//!   as Nomad does.
//! - **Health** comes from the results of the service's own checks, as the client reported them
//!   ([`service_health`]).
//!
//! [`reconcile`] compares that with the registrations the allocation already has and returns
//! the writes: upserts (only of registrations that changed, indexes aside) and deletes.

#[cfg(test)]
mod tests;

use caravan_schemas::alloc::{
    Allocation, CheckQueryResult, CheckStatus, ClientStatus, DesiredStatus, TaskStatus,
};
use caravan_schemas::ids::CheckId;
use caravan_schemas::job::{Service, TaskGroup};
use caravan_schemas::node::Node;
use caravan_schemas::resources::NetworkResource;
use caravan_schemas::service::ServiceRegistration;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Where a service block sits: in the group, or in one of its tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Group(String),
    Task(String),
}

impl Owner {
    /// The name Nomad puts in a registration's id: the group's or the task's.
    pub fn name(&self) -> &str {
        match self {
            Owner::Group(n) | Owner::Task(n) => n,
        }
    }

    fn task(&self) -> Option<&str> {
        match self {
            Owner::Group(_) => None,
            Owner::Task(t) => Some(t),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Group(g) => write!(f, "group {g:?}"),
            Owner::Task(t) => write!(f, "task {t:?}"),
        }
    }
}

/// Why a service block of a running allocation got no registration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("port {label:?} is not one of the allocation's ports ({known})")]
    UnknownPort { label: String, known: String },
    #[error("port {0:?} is not a valid port number")]
    InvalidPort(String),
    #[error(
        "address_mode \"alloc\" needs the allocation's network address, and this allocation \
         has none (it is not in bridge networking)"
    )]
    NoAllocAddress,
    #[error("address_mode \"alloc\" cannot be combined with a custom address")]
    AllocModeWithAddress,
    #[error(
        "address_mode \"driver\" is not supported: the servers do not know the driver's \
         network; use \"host\" or \"auto\""
    )]
    DriverAddressMode,
    #[error("unknown address_mode {0:?} (expected auto, host, alloc or driver)")]
    UnknownAddressMode(String),
    #[error("its task is {0}, not running")]
    TaskNotRunning(String),
    #[error("another service block of the allocation already registers id {0}")]
    DuplicateId(String),
}

/// A service block that got no registration, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub owner: Owner,
    pub service: String,
    pub reason: SkipReason,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {:?} of {}: {}",
            self.service, self.owner, self.reason
        )
    }
}

/// The registrations an allocation should have.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// Sorted by id; indexes are zero.
    pub registrations: Vec<ServiceRegistration>,
    pub skipped: Vec<Skipped>,
}

/// Whether the allocation's services should be registered at all: it runs, and the servers
/// want it to.
pub fn should_register(alloc: &Allocation) -> bool {
    alloc.client_status == ClientStatus::Running && alloc.desired_status == DesiredStatus::Run
}

/// The registrations `alloc` should have, on `node` (its datacenter and, for a numeric port or
/// a port without a host IP, its address). None unless the allocation runs and is desired to.
pub fn desired(alloc: &Allocation, node: Option<&Node>) -> Desired {
    let mut out = Desired::default();
    if !should_register(alloc) {
        return out;
    }
    let Some(job) = alloc.job.as_deref() else {
        return out;
    };
    let Some(group) = job.group(&alloc.task_group) else {
        return out;
    };
    let ctx = Context {
        alloc,
        group,
        node,
        canary: alloc.is_canary(),
    };
    let mut blocks: Vec<(Owner, &Service)> = group
        .services
        .iter()
        .map(|s| (Owner::Group(group.name.clone()), s))
        .collect();
    for task in &group.tasks {
        blocks.extend(
            task.services
                .iter()
                .map(|s| (Owner::Task(task.name.clone()), s)),
        );
    }
    let mut seen = BTreeSet::new();
    for (owner, service) in blocks {
        match ctx.registration(&owner, service) {
            Ok(reg) if !seen.insert(reg.id.clone()) => out.skipped.push(Skipped {
                reason: SkipReason::DuplicateId(reg.id.to_string()),
                owner,
                service: reg.service_name,
            }),
            Ok(reg) => out.registrations.push(reg),
            Err(reason) => out.skipped.push(Skipped {
                service: ctx.interpolate(&service_name(&ctx, &owner, service), owner.task()),
                owner,
                reason,
            }),
        }
    }
    out.registrations.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// What a reconcile asks the caller to write.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Registrations to write.
    pub upserts: Vec<Upsert>,
    /// Registrations to delete, as they were read (their `ModifyIndex` guards the delete).
    pub deletes: Vec<ServiceRegistration>,
    /// Service blocks left out, to be logged.
    pub skipped: Vec<Skipped>,
}

impl Plan {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

/// One registration to write: new (`previous` is `None`: its key must be absent) or replacing
/// the one read at `previous` (its `ModifyIndex`).
#[derive(Clone, Debug, PartialEq)]
pub struct Upsert {
    pub registration: ServiceRegistration,
    pub previous: Option<i64>,
}

/// The writes that bring `existing` (the registrations the store holds for one allocation) to
/// what `alloc` — `None` when it is gone — should have on `node`.
pub fn reconcile(
    alloc: Option<&Allocation>,
    node: Option<&Node>,
    existing: &[ServiceRegistration],
) -> Plan {
    let want = alloc.map(|a| desired(a, node)).unwrap_or_default();
    let (upserts, deletes) = diff(&want.registrations, existing);
    Plan {
        upserts,
        deletes,
        skipped: want.skipped,
    }
}

/// Desired against existing registrations (matched by namespace and id): an upsert for each
/// desired one that is missing or differs in anything but its indexes, a delete for each
/// existing one that is not desired.
pub fn diff(
    desired: &[ServiceRegistration],
    existing: &[ServiceRegistration],
) -> (Vec<Upsert>, Vec<ServiceRegistration>) {
    let have: BTreeMap<(&str, &str), &ServiceRegistration> = existing
        .iter()
        .map(|r| ((r.namespace.as_str(), r.id.as_str()), r))
        .collect();
    let want: BTreeSet<(&str, &str)> = desired
        .iter()
        .map(|r| (r.namespace.as_str(), r.id.as_str()))
        .collect();
    let mut upserts = Vec::new();
    for reg in desired {
        match have.get(&(reg.namespace.as_str(), reg.id.as_str())) {
            Some(old) if same_content(old, reg) => {}
            old => upserts.push(Upsert {
                registration: ServiceRegistration {
                    create_index: 0,
                    modify_index: 0,
                    ..reg.clone()
                },
                previous: old.map(|o| o.modify_index),
            }),
        }
    }
    let deletes = existing
        .iter()
        .filter(|r| !want.contains(&(r.namespace.as_str(), r.id.as_str())))
        .cloned()
        .collect();
    (upserts, deletes)
}

/// Equal but for `CreateIndex` and `ModifyIndex`.
pub fn same_content(a: &ServiceRegistration, b: &ServiceRegistration) -> bool {
    let strip = |r: &ServiceRegistration| ServiceRegistration {
        create_index: 0,
        modify_index: 0,
        ..r.clone()
    };
    strip(a) == strip(b)
}

/// The health of one service from its checks' latest results: `Some(true)` when it has no
/// checks (as in Nomad, a service without checks is healthy) or every check passes,
/// `Some(false)` as soon as one fails, `None` while some are not decided yet (no result, or
/// pending). Unlike a deployment's health, readiness checks (`on_update = "ignore"`) count
/// too: they say whether the instance should get traffic.
pub fn service_health(
    results: &BTreeMap<CheckId, CheckQueryResult>,
    group: &str,
    task: Option<&str>,
    service: &Service,
) -> Option<bool> {
    if service.checks.is_empty() {
        return Some(true);
    }
    let task = task.unwrap_or_default();
    let mut undecided = false;
    for check in &service.checks {
        let name = if check.name.is_empty() {
            default_check_name(&service.name)
        } else {
            check.name.clone()
        };
        let status = results
            .values()
            .find(|r| {
                r.group == group && r.task == task && r.service == service.name && r.check == name
            })
            .map(|r| r.status);
        match status {
            Some(CheckStatus::Failure) => return Some(false),
            Some(CheckStatus::Success) => {}
            Some(CheckStatus::Pending) | None => undecided = true,
        }
    }
    (!undecided).then_some(true)
}

/// Nomad's name for a check that has none (the client reports its results under it).
pub fn default_check_name(service: &str) -> String {
    format!("service: {service:?} check")
}

/// A service's name before interpolation: its own, or Nomad's default
/// (`<job>-<group>` for a group service, `<job>-<group>-<task>` for a task's).
fn service_name(ctx: &Context<'_>, owner: &Owner, service: &Service) -> String {
    if !service.name.is_empty() {
        return service.name.clone();
    }
    let job = ctx.alloc.job_id.as_str();
    match owner {
        Owner::Group(g) => format!("{job}-{g}"),
        Owner::Task(t) => format!("{job}-{}-{t}", ctx.group.name),
    }
}

struct Context<'a> {
    alloc: &'a Allocation,
    group: &'a TaskGroup,
    node: Option<&'a Node>,
    canary: bool,
}

impl Context<'_> {
    fn registration(
        &self,
        owner: &Owner,
        service: &Service,
    ) -> Result<ServiceRegistration, SkipReason> {
        if let Some(task) = owner.task()
            && let Some(state) = self.alloc.task_states.get(task)
            && state.state != TaskStatus::Running
        {
            return Err(SkipReason::TaskNotRunning(state.state.to_string()));
        }
        let task = owner.task();
        let name = self.interpolate(&service_name(self, owner, service), task);
        let (address, port) = self.address(service, task)?;
        let (tags, meta) = if self.canary {
            (
                if service.canary_tags.is_empty() {
                    &service.tags
                } else {
                    &service.canary_tags
                },
                if service.canary_meta.is_empty() {
                    &service.meta
                } else {
                    &service.canary_meta
                },
            )
        } else {
            (&service.tags, &service.meta)
        };
        let alloc = self.alloc;
        Ok(ServiceRegistration {
            id: ServiceRegistration::make_id(&alloc.id, owner.name(), &name, &service.port_label),
            service_name: name,
            namespace: alloc.namespace.clone(),
            node_id: alloc.node_id.clone(),
            datacenter: self.node.map(|n| n.datacenter.clone()).unwrap_or_default(),
            job_id: alloc.job_id.clone(),
            alloc_id: alloc.id.clone(),
            tags: tags.iter().map(|t| self.interpolate(t, task)).collect(),
            address,
            port,
            create_index: 0,
            modify_index: 0,
            meta: meta
                .iter()
                .map(|(k, v)| (k.clone(), self.interpolate(v, task)))
                .collect(),
            canary: self.canary,
            job_version: alloc.job.as_ref().map_or(0, |j| j.version),
            healthy: service_health(&alloc.check_results, &self.group.name, task, service),
        })
    }

    /// The node's address: `unique.network.ip-address`, else loopback (a dev agent).
    fn node_ip(&self) -> String {
        self.node
            .and_then(|n| n.attributes.get("unique.network.ip-address"))
            .filter(|ip| !ip.is_empty())
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".to_owned())
    }

    /// The networks a service can find its port in: the group's, then its task's.
    fn networks(&self, task: Option<&str>) -> Vec<&NetworkResource> {
        let Some(res) = self.alloc.allocated_resources.as_ref() else {
            return Vec::new();
        };
        let mut nets: Vec<&NetworkResource> = res.shared.networks.iter().collect();
        if let Some(t) = task.and_then(|t| res.tasks.get(t)) {
            nets.extend(t.networks.iter());
        }
        nets
    }

    /// Nomad's `GetAddress` for a service.
    fn address(&self, service: &Service, task: Option<&str>) -> Result<(String, i32), SkipReason> {
        let label = service.port_label.as_str();
        let ports = self
            .alloc
            .allocated_resources
            .as_ref()
            .map(|r| r.shared.ports.as_slice())
            .unwrap_or_default();
        let mapping = ports.iter().find(|p| p.label == label);
        let networks = self.networks(task);
        let numeric = || -> Result<i32, SkipReason> {
            match label.parse::<i64>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(i32::try_from(n).unwrap_or_default()),
                Ok(_) => Err(SkipReason::InvalidPort(label.to_owned())),
                Err(_) => Err(SkipReason::UnknownPort {
                    label: label.to_owned(),
                    known: known_ports(
                        ports.iter().map(|p| p.label.as_str()).chain(
                            networks
                                .iter()
                                .flat_map(|n| n.ports().map(|p| p.label.as_str())),
                        ),
                    ),
                }),
            }
        };
        match service.address_mode.as_str() {
            "" | "auto" if !service.address.is_empty() => {
                let port = match (label, mapping) {
                    ("", _) => 0,
                    (_, Some(m)) => m.value,
                    (_, None) => numeric()?,
                };
                Ok((service.address.clone(), port))
            }
            "" | "auto" | "host" => {
                if label.is_empty() {
                    let ip = networks
                        .first()
                        .map(|n| n.ip.clone())
                        .filter(|ip| !ip.is_empty())
                        .unwrap_or_else(|| self.node_ip());
                    return Ok((ip, 0));
                }
                if let Some(m) = mapping {
                    let ip = Some(m.host_ip.clone())
                        .filter(|ip| !ip.is_empty())
                        .unwrap_or_else(|| self.node_ip());
                    return Ok((ip, m.value));
                }
                if let Some((net, port)) = networks
                    .iter()
                    .find_map(|n| n.port(label).filter(|p| p.value > 0).map(|p| (n, p)))
                {
                    let ip = Some(net.ip.clone())
                        .filter(|ip| !ip.is_empty())
                        .unwrap_or_else(|| self.node_ip());
                    return Ok((ip, port.value));
                }
                Ok((self.node_ip(), numeric()?))
            }
            "alloc" => {
                if !service.address.is_empty() {
                    return Err(SkipReason::AllocModeWithAddress);
                }
                let ip = self
                    .alloc
                    .network_status
                    .as_ref()
                    .map(|n| n.address.clone())
                    .filter(|a| !a.is_empty())
                    .ok_or(SkipReason::NoAllocAddress)?;
                let port = match (label, mapping) {
                    ("", _) => 0,
                    (_, Some(m)) if m.to > 0 => m.to,
                    (_, Some(m)) => m.value,
                    (_, None) => numeric()?,
                };
                Ok((ip, port))
            }
            "driver" => Err(SkipReason::DriverAddressMode),
            other => Err(SkipReason::UnknownAddressMode(other.to_owned())),
        }
    }

    /// Replaces the runtime variables a service name, tag or meta value may hold
    /// (`${NOMAD_JOB_NAME}`, `${NOMAD_ALLOC_INDEX}`, Nomad's older `${JOB}`, `${TASKGROUP}`,
    /// `${TASK}`, `${BASE}`, …); anything else is left as written.
    fn interpolate(&self, s: &str, task: Option<&str>) -> String {
        if !s.contains("${") {
            return s.to_owned();
        }
        let alloc = self.alloc;
        let job = alloc.job.as_deref();
        let job_name = job.map_or(alloc.job_id.as_str(), |j| j.name.as_str());
        let group = self.group.name.as_str();
        let task = task.unwrap_or_default();
        let base = format!("{job_name}-{group}-{task}");
        let index = alloc.index().map(|i| i.to_string()).unwrap_or_default();
        let dc = self.node.map(|n| n.datacenter.as_str()).unwrap_or_default();
        let region = job.map(|j| j.region.as_str()).unwrap_or_default();
        let vars: [(&str, &str); 14] = [
            ("NOMAD_JOB_NAME", job_name),
            ("NOMAD_JOB_ID", alloc.job_id.as_str()),
            ("NOMAD_GROUP_NAME", group),
            ("NOMAD_TASK_NAME", task),
            ("NOMAD_NAMESPACE", alloc.namespace.as_str()),
            ("NOMAD_ALLOC_ID", alloc.id.as_str()),
            ("NOMAD_SHORT_ALLOC_ID", alloc.id.short()),
            ("NOMAD_ALLOC_NAME", alloc.name.as_str()),
            ("NOMAD_ALLOC_INDEX", &index),
            ("NOMAD_DC", dc),
            ("NOMAD_REGION", region),
            ("JOB", job_name),
            ("TASKGROUP", group),
            ("TASK", task),
        ];
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                return out;
            };
            let var = &after[..end];
            match vars.iter().find(|(k, _)| *k == var) {
                Some((_, v)) => out.push_str(v),
                None if var == "BASE" => out.push_str(&base),
                None => out.push_str(&rest[start..start + 2 + end + 1]),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

fn known_ports<'a>(labels: impl Iterator<Item = &'a str>) -> String {
    let labels: BTreeSet<&str> = labels.collect();
    if labels.is_empty() {
        "it has none".to_owned()
    } else {
        labels.into_iter().collect::<Vec<_>>().join(", ")
    }
}
