//! Whether a new version of a task group can be applied to a running allocation in place, or
//! its tasks must be replaced (Nomad's `tasksUpdated`, `scheduler/util.go`).
//!
//! Destructive: anything the running tasks were started with — driver, user, config, env,
//! task meta, resources, artifacts, templates, lifecycle, kill signal, disabling logs, group and
//! task networks and ports, the ephemeral disk, volumes and volume mounts. In place: count,
//! update/migrate/reschedule/restart policies, job and group meta, constraints, affinities,
//! spreads, services and checks (they only change registrations), kill timeout, log rotation.

use caravan_schemas::canonical;
use caravan_schemas::job::{RestartPolicy, Task, TaskGroup, VolumeMount};
use caravan_schemas::resources::{NetworkResource, RequestedDevice, Resources};

/// True when moving an allocation of `old` to `new` needs new tasks (a destructive update).
pub fn tasks_updated(old: &TaskGroup, new: &TaskGroup) -> bool {
    destructive_change(old, new).is_some()
}

/// The first difference between `old` and `new` that forces a destructive update, named as
/// Nomad's `tasksUpdated` names it; `None` when the change can be applied in place.
pub fn destructive_change(old: &TaskGroup, new: &TaskGroup) -> Option<&'static str> {
    if old.tasks.len() != new.tasks.len() {
        return Some("number of tasks");
    }
    let disk = |g: &TaskGroup| {
        g.ephemeral_disk
            .clone()
            .unwrap_or_else(canonical::ephemeral_disk)
    };
    if disk(old) != disk(new) {
        return Some("ephemeral disk");
    }
    if let Some(what) = networks_updated(&old.networks, &new.networks) {
        return Some(what);
    }
    if old.volumes != new.volumes {
        return Some("volume request");
    }
    if render_templates(old.restart_policy.as_ref())
        != render_templates(new.restart_policy.as_ref())
    {
        return Some("group restart render_templates");
    }
    for a in &old.tasks {
        let Some(b) = new.task(&a.name) else {
            return Some("task deleted");
        };
        if let Some(what) = task_updated(a, b) {
            return Some(what);
        }
    }
    None
}

fn task_updated(a: &Task, b: &Task) -> Option<&'static str> {
    let checks: [(&'static str, bool); 13] = [
        ("task driver", a.driver != b.driver),
        ("task user", a.user != b.user),
        ("task config", a.config != b.config),
        ("task env", a.env != b.env),
        ("task artifacts", a.artifacts != b.artifacts),
        ("task templates", a.templates != b.templates),
        ("task meta", a.meta != b.meta),
        ("task lifecycle", a.lifecycle != b.lifecycle),
        ("task kill signal", a.kill_signal != b.kill_signal),
        (
            "task dispatch payload",
            a.dispatch_payload != b.dispatch_payload,
        ),
        (
            "task log disabled",
            a.log_config.as_ref().is_some_and(|l| l.disabled)
                != b.log_config.as_ref().is_some_and(|l| l.disabled),
        ),
        (
            "task volume mount",
            !same_multiset(&a.volume_mounts, &b.volume_mounts, VolumeMount::eq),
        ),
        (
            "task restart render_templates",
            render_templates(a.restart_policy.as_ref())
                != render_templates(b.restart_policy.as_ref()),
        ),
    ];
    if let Some((what, _)) = checks.into_iter().find(|(_, changed)| *changed) {
        return Some(what);
    }
    if let Some(what) = networks_updated(&a.resources.networks, &b.resources.networks) {
        return Some(what);
    }
    resources_updated(&a.resources, &b.resources)
}

fn render_templates(policy: Option<&RestartPolicy>) -> bool {
    policy.is_some_and(|p| p.render_templates)
}

/// Nomad's `nonNetworkResourcesUpdated`.
fn resources_updated(a: &Resources, b: &Resources) -> Option<&'static str> {
    if a.cpu != b.cpu {
        Some("task cpu")
    } else if a.cores != b.cores {
        Some("task cores")
    } else if a.memory_mb != b.memory_mb {
        Some("task memory")
    } else if a.memory_max_mb != b.memory_max_mb {
        Some("task memory max")
    } else if !same_multiset(&a.devices, &b.devices, RequestedDevice::eq) {
        Some("task devices")
    } else if a.numa != b.numa {
        Some("numa")
    } else if a.secrets_mb != b.secrets_mb {
        Some("task secrets")
    } else {
        None
    }
}

/// Nomad's `networkUpdated`: same number of networks, and pairwise the same mode, bandwidth,
/// hostname, DNS, CNI args and ports (a dynamic port's assigned value does not count).
fn networks_updated(a: &[NetworkResource], b: &[NetworkResource]) -> Option<&'static str> {
    if a.len() != b.len() {
        return Some("network lengths");
    }
    for (x, y) in a.iter().zip(b) {
        if x.mode != y.mode {
            return Some("network mode");
        }
        if x.mbits != y.mbits {
            return Some("network mbits");
        }
        if x.hostname != y.hostname {
            return Some("network hostname");
        }
        if x.dns != y.dns {
            return Some("network dns");
        }
        if x.cni != y.cni {
            return Some("network cni");
        }
        if port_map(x) != port_map(y) {
            return Some("network port map");
        }
    }
    None
}

/// Label, host port (-1 for dynamic ones), port inside, host network — reserved first.
fn port_map(n: &NetworkResource) -> Vec<(&str, i32, i32, &str)> {
    let reserved = n
        .reserved_ports
        .iter()
        .map(|p| (p.label.as_str(), p.value, p.to, p.host_network.as_str()));
    let dynamic = n
        .dynamic_ports
        .iter()
        .map(|p| (p.label.as_str(), -1, p.to, p.host_network.as_str()));
    reserved.chain(dynamic).collect()
}

/// Same elements, in any order.
fn same_multiset<T>(a: &[T], b: &[T], eq: impl Fn(&T, &T) -> bool) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    a.iter().all(|x| {
        let found = b
            .iter()
            .enumerate()
            .find(|(i, y)| !used[*i] && eq(x, y))
            .map(|(i, _)| i);
        match found {
            Some(i) => {
                used[i] = true;
                true
            }
            None => false,
        }
    })
}
