//! Which checks an allocation has, and where each one points — pure, no I/O.
//!
//! Every `check` of the group's services and of its tasks' services becomes a [`CheckSpec`]
//! with Nomad's stable id (an MD5 over the allocation, group, task and the check's fields, as
//! `NomadCheckID`), its target resolved once: a host `ip:port` from the allocation's ports for
//! tcp and http checks, a task and command for script checks. A check that cannot run (an
//! unknown port label, `address_mode = "driver"`, a grpc check, a group script check with no
//! task) still gets a spec, whose target is the error: it is reported as failing with that
//! error as its output, so the user sees what is wrong and where.

use super::CheckError;
use caravan_schemas::alloc::{Allocation, CheckMode, CheckStatus};
use caravan_schemas::ids::CheckId;
use caravan_schemas::job::{CheckRestart, Service, ServiceCheck, TaskGroup};
use caravan_schemas::node::Node;
use md5::{Digest, Md5};
use std::collections::BTreeMap;
use std::time::Duration;

/// What a check does each time it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Connect to `addr` (`ip:port`).
    Tcp {
        addr: String,
    },
    Http(HttpProbe),
    /// Run `command args…` in `task`'s context (driver exec).
    Script {
        task: String,
        command: String,
        args: Vec<String>,
    },
}

/// An http check's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    /// `http://ip:port/path` or `https://…`.
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
    pub tls_skip_verify: bool,
}

/// `check_restart`, with the task it restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartRule {
    pub task: String,
    /// Consecutive unhealthy results that restart the task (≥ 1).
    pub limit: u32,
    /// How long after the task (re)starts results are not counted.
    pub grace: Duration,
    /// A warning (a script check's exit code 1) counts as healthy.
    pub ignore_warnings: bool,
}

/// One check of one service of an allocation, ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    pub id: CheckId,
    pub group: String,
    /// The task of a task-level service; `None` for a group-level service.
    pub task: Option<String>,
    pub service: String,
    pub name: String,
    pub mode: CheckMode,
    /// The task whose running gates the check (and whose restart resets it): the service's
    /// task, else the check's `task`; `None`: the check runs while any task runs.
    pub runs_with: Option<String>,
    pub probe: Result<Probe, CheckError>,
    pub interval: Duration,
    pub timeout: Duration,
    /// The status reported before the first result (`initial_status`).
    pub initial_status: CheckStatus,
    pub success_before_passing: u32,
    pub failures_before_critical: u32,
    pub restart: Option<RestartRule>,
}

/// The checks of `alloc` (its job's group), in service order; empty when it has none.
pub fn build(alloc: &Allocation, group: &TaskGroup, node: &Node) -> Vec<CheckSpec> {
    let mut out = Vec::new();
    for service in &group.services {
        for check in &service.checks {
            out.push(spec(alloc, group, None, service, check, node));
        }
    }
    for task in &group.tasks {
        for service in &task.services {
            for check in &service.checks {
                out.push(spec(alloc, group, Some(&task.name), service, check, node));
            }
        }
    }
    out
}

/// Nomad's default name for a check that has none.
pub fn default_check_name(service: &str) -> String {
    format!("service: {service:?} check")
}

fn spec(
    alloc: &Allocation,
    group: &TaskGroup,
    task: Option<&str>,
    service: &Service,
    check: &ServiceCheck,
    node: &Node,
) -> CheckSpec {
    let name = if check.name.is_empty() {
        default_check_name(&service.name)
    } else {
        check.name.clone()
    };
    // A task service's checks belong to its task; a group service's check may name one.
    let check_task = task
        .map(str::to_owned)
        .or_else(|| (!check.task_name.is_empty()).then(|| check.task_name.clone()));
    let where_ = || Where {
        service: service.name.clone(),
        check: name.clone(),
    };
    let probe = probe(alloc, group, check_task.as_deref(), service, check, node).map_err(|kind| {
        CheckError::Unrunnable {
            at: where_().to_string(),
            kind,
        }
    });
    let restart = check
        .check_restart
        .as_ref()
        .or(service.check_restart.as_ref())
        .and_then(|r| restart_rule(r, check_task.as_deref()));
    CheckSpec {
        id: check_id(
            alloc.id.as_str(),
            &group.name,
            check_task.as_deref(),
            &name,
            check,
        ),
        group: group.name.clone(),
        task: task.map(str::to_owned),
        service: service.name.clone(),
        name,
        mode: if check.on_update == "ignore" {
            CheckMode::Readiness
        } else {
            CheckMode::Healthiness
        },
        runs_with: check_task,
        probe,
        interval: positive(check.interval.to_std(), Duration::from_secs(10)),
        timeout: positive(check.timeout.to_std(), Duration::from_secs(2)),
        initial_status: initial_status(&check.initial_status),
        success_before_passing: u32::try_from(check.success_before_passing).unwrap_or(0),
        failures_before_critical: u32::try_from(check.failures_before_critical).unwrap_or(0),
        restart,
    }
}

/// `service "web" check "alive"`, for messages.
struct Where {
    service: String,
    check: String,
}

impl std::fmt::Display for Where {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "service {:?} check {:?}", self.service, self.check)
    }
}

fn positive(d: Duration, default: Duration) -> Duration {
    if d.is_zero() { default } else { d }
}

/// `initial_status`: Consul's words (`passing`, `warning`, `critical`) or Nomad's.
fn initial_status(s: &str) -> CheckStatus {
    match s {
        "passing" | "success" => CheckStatus::Success,
        "warning" | "critical" | "failure" => CheckStatus::Failure,
        _ => CheckStatus::Pending,
    }
}

fn restart_rule(r: &CheckRestart, task: Option<&str>) -> Option<RestartRule> {
    let limit = u32::try_from(r.limit).ok().filter(|l| *l > 0)?;
    Some(RestartRule {
        task: task?.to_owned(),
        limit,
        grace: r.grace.to_std(),
        ignore_warnings: r.ignore_warnings,
    })
}

/// Nomad's `NomadCheckID`: MD5 (hex) over the allocation, group, task, the check's name, type,
/// port label, on_update, address mode, interval and timeout (little-endian nanoseconds),
/// protocol, path and method.
pub fn check_id(
    alloc_id: &str,
    group: &str,
    task: Option<&str>,
    name: &str,
    check: &ServiceCheck,
) -> CheckId {
    let mut sum = Md5::new();
    for s in [
        alloc_id,
        group,
        task.unwrap_or_default(),
        name,
        &check.r#type,
        &check.port_label,
        &check.on_update,
        &check.address_mode,
    ] {
        sum.update(s.as_bytes());
    }
    sum.update(check.interval.nanos().to_le_bytes());
    sum.update(check.timeout.nanos().to_le_bytes());
    for s in [&check.protocol, &check.path, &check.method] {
        sum.update(s.as_bytes());
    }
    let hex: String = sum.finalize().iter().map(|b| format!("{b:02x}")).collect();
    CheckId::new(hex)
}

/// Why a check's target could not be resolved (wrapped with where it is by the caller).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("grpc checks are not supported by Caravan; use an http or tcp check")]
    GrpcUnsupported,
    #[error("unknown check type {0:?} (expected http, tcp, script or grpc)")]
    UnknownType(String),
    #[error(
        "address_mode \"driver\" is not supported for checks: they run on the node and reach \
         the task through its host port; use address_mode \"host\" (the default)"
    )]
    DriverAddressMode,
    #[error("unknown address_mode {0:?} (expected host, alloc or auto)")]
    UnknownAddressMode(String),
    #[error(
        "address_mode \"alloc\" needs the allocation's network address, and this allocation \
         has none (it is not in bridge networking)"
    )]
    NoAllocAddress,
    #[error("the check has no port: set port on the check or on its service")]
    NoPort,
    #[error("port {label:?} is not one of the allocation's ports ({known})")]
    UnknownPort { label: String, known: String },
    #[error(
        "a script check of a group-level service needs task = \"…\" to say which task it runs in"
    )]
    ScriptNeedsTask,
    #[error("task {0:?} is not in the group")]
    UnknownTask(String),
}

fn probe(
    alloc: &Allocation,
    group: &TaskGroup,
    task: Option<&str>,
    service: &Service,
    check: &ServiceCheck,
    node: &Node,
) -> Result<Probe, TargetError> {
    match check.r#type.as_str() {
        "tcp" => Ok(Probe::Tcp {
            addr: address(alloc, service, check, node)?,
        }),
        "http" => {
            let addr = address(alloc, service, check, node)?;
            let protocol = if check.protocol.is_empty() {
                "http"
            } else {
                check.protocol.as_str()
            };
            let path = if check.path.starts_with('/') {
                check.path.clone()
            } else {
                format!("/{}", check.path)
            };
            Ok(Probe::Http(HttpProbe {
                url: format!("{protocol}://{addr}{path}"),
                method: if check.method.is_empty() {
                    "GET".to_owned()
                } else {
                    check.method.to_ascii_uppercase()
                },
                headers: check.header.clone(),
                body: check.body.clone(),
                tls_skip_verify: check.tls_skip_verify,
            }))
        }
        "script" => {
            let task = task.ok_or(TargetError::ScriptNeedsTask)?;
            if group.task(task).is_none() {
                return Err(TargetError::UnknownTask(task.to_owned()));
            }
            Ok(Probe::Script {
                task: task.to_owned(),
                command: check.command.clone(),
                args: check.args.clone(),
            })
        }
        "grpc" => Err(TargetError::GrpcUnsupported),
        other => Err(TargetError::UnknownType(other.to_owned())),
    }
}

/// Where a tcp or http check connects, as Nomad's `GetAddress` resolves it for checks: the
/// check's port label (else its service's) names one of the allocation's ports, reached on its
/// host IP and host port (`address_mode = "host"`, the default), or on the allocation's own
/// network address and the port's `to` (`"alloc"`). A number instead of a label is used as
/// the port itself. A service with a custom `address` lends it to its checks.
pub fn address(
    alloc: &Allocation,
    service: &Service,
    check: &ServiceCheck,
    node: &Node,
) -> Result<String, TargetError> {
    let label = if check.port_label.is_empty() {
        service.port_label.as_str()
    } else {
        check.port_label.as_str()
    };
    let mode = match check.address_mode.as_str() {
        "" if !service.address.is_empty() => "auto",
        "" => "host",
        m => m,
    };
    let ports = alloc
        .allocated_resources
        .as_ref()
        .map(|r| r.shared.ports.as_slice())
        .unwrap_or_default();
    let node_ip = || {
        node.attributes
            .get("unique.network.ip-address")
            .cloned()
            .filter(|ip| !ip.is_empty())
            .unwrap_or_else(|| "127.0.0.1".to_owned())
    };
    if label.is_empty() {
        return Err(TargetError::NoPort);
    }
    let port = ports.iter().find(|p| p.label == label);
    let numeric = label.parse::<u16>().ok();
    let unknown = || TargetError::UnknownPort {
        label: label.to_owned(),
        known: if ports.is_empty() {
            "it has none".to_owned()
        } else {
            ports
                .iter()
                .map(|p| p.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
    };
    match mode {
        "driver" => Err(TargetError::DriverAddressMode),
        "host" | "auto" => {
            let host = if mode == "auto" && !service.address.is_empty() {
                service.address.clone()
            } else {
                port.map(|p| p.host_ip.clone())
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(node_ip)
            };
            let number = match (port, numeric) {
                (Some(p), _) => p.value,
                (None, Some(n)) => i32::from(n),
                (None, None) => return Err(unknown()),
            };
            Ok(join_host_port(&host, number))
        }
        "alloc" => {
            let ip = alloc
                .network_status
                .as_ref()
                .map(|n| n.address.clone())
                .filter(|a| !a.is_empty())
                .ok_or(TargetError::NoAllocAddress)?;
            let number = match (port, numeric) {
                (Some(p), _) if p.to > 0 => p.to,
                (Some(p), _) => p.value,
                (None, Some(n)) => i32::from(n),
                (None, None) => return Err(unknown()),
            };
            Ok(join_host_port(&ip, number))
        }
        other => Err(TargetError::UnknownAddressMode(other.to_owned())),
    }
}

/// `ip:port`, IPv6 bracketed (Go's `net.JoinHostPort`).
fn join_host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::alloc::AllocNetworkStatus;
    use caravan_schemas::duration::Duration as NomadDuration;
    use caravan_schemas::job::Task;
    use caravan_schemas::resources::{AllocatedPortMapping, AllocatedResources};

    fn alloc(ports: &[(&str, i32, i32)]) -> Allocation {
        let mut res = AllocatedResources::default();
        res.shared.ports = ports
            .iter()
            .map(|(label, value, to)| AllocatedPortMapping {
                label: (*label).to_owned(),
                value: *value,
                to: *to,
                host_ip: "10.0.0.5".to_owned(),
                ignore_collision: false,
            })
            .collect();
        Allocation {
            id: "a1b2c3d4-0000-0000-0000-000000000000".into(),
            allocated_resources: Some(res),
            ..Allocation::default()
        }
    }

    fn check(kind: &str) -> ServiceCheck {
        ServiceCheck {
            name: "alive".into(),
            r#type: kind.into(),
            path: "/health".into(),
            interval: NomadDuration::from_secs(5),
            timeout: NomadDuration::from_secs(1),
            ..ServiceCheck::default()
        }
    }

    fn service(port: &str, checks: Vec<ServiceCheck>) -> Service {
        Service {
            name: "web".into(),
            port_label: port.into(),
            checks,
            ..Service::default()
        }
    }

    fn node() -> Node {
        let mut n = Node::default();
        n.attributes
            .insert("unique.network.ip-address".into(), "192.0.2.1".into());
        n
    }

    #[test]
    fn ids_are_stable_hex_md5_and_differ_by_coordinates() {
        let c = check("http");
        let a = check_id("alloc", "g", Some("t"), "alive", &c);
        assert_eq!(a, check_id("alloc", "g", Some("t"), "alive", &c));
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().chars().all(|ch| ch.is_ascii_hexdigit()));
        assert_ne!(a, check_id("other", "g", Some("t"), "alive", &c));
        assert_ne!(a, check_id("alloc", "g", None, "alive", &c));
        let mut slower = c.clone();
        slower.interval = NomadDuration::from_secs(6);
        assert_ne!(a, check_id("alloc", "g", Some("t"), "alive", &slower));
        // Nomad's hash: nothing but the fields, concatenated, durations as 8 LE bytes.
        let mut sum = Md5::new();
        sum.update(b"allocgtalivehttp");
        sum.update(5_000_000_000i64.to_le_bytes());
        sum.update(1_000_000_000i64.to_le_bytes());
        sum.update(b"/health");
        let want: String = sum.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(a.as_str(), want);
    }

    #[test]
    fn addresses_resolve_port_labels_to_host_ports() {
        let a = alloc(&[("http", 23456, 8080), ("db", 23457, 0)]);
        let n = node();
        let s = service("http", vec![]);
        assert_eq!(
            address(&a, &s, &check("tcp"), &n).unwrap(),
            "10.0.0.5:23456"
        );
        let mut on_db = check("tcp");
        on_db.port_label = "db".into();
        assert_eq!(address(&a, &s, &on_db, &n).unwrap(), "10.0.0.5:23457");
        // A number is a port.
        let mut numeric = check("tcp");
        numeric.port_label = "9000".into();
        assert_eq!(address(&a, &s, &numeric, &n).unwrap(), "192.0.2.1:9000");
        // A service's custom address is lent to its checks.
        let custom = Service {
            address: "198.51.100.7".into(),
            ..service("http", vec![])
        };
        assert_eq!(
            address(&a, &custom, &check("tcp"), &n).unwrap(),
            "198.51.100.7:23456"
        );
    }

    #[test]
    fn address_errors_say_what_is_wrong() {
        let a = alloc(&[("http", 23456, 8080)]);
        let n = node();
        let err = address(&a, &service("nope", vec![]), &check("tcp"), &n).unwrap_err();
        assert_eq!(
            err.to_string(),
            "port \"nope\" is not one of the allocation's ports (http)"
        );
        assert_eq!(
            address(&a, &service("", vec![]), &check("tcp"), &n).unwrap_err(),
            TargetError::NoPort
        );
        let mut driver = check("tcp");
        driver.address_mode = "driver".into();
        assert_eq!(
            address(&a, &service("http", vec![]), &driver, &n).unwrap_err(),
            TargetError::DriverAddressMode
        );
        let mut in_alloc = check("tcp");
        in_alloc.address_mode = "alloc".into();
        assert_eq!(
            address(&a, &service("http", vec![]), &in_alloc, &n).unwrap_err(),
            TargetError::NoAllocAddress
        );
        let mut bridged = a.clone();
        bridged.network_status = Some(AllocNetworkStatus {
            address: "172.26.64.2".into(),
            ..AllocNetworkStatus::default()
        });
        assert_eq!(
            address(&bridged, &service("http", vec![]), &in_alloc, &n).unwrap(),
            "172.26.64.2:8080"
        );
    }

    #[test]
    fn specs_cover_group_and_task_services_with_their_targets() {
        let a = alloc(&[("http", 23456, 0)]);
        let mut script = check("script");
        script.name = "script".into();
        script.command = "/bin/true".into();
        let mut grpc = check("grpc");
        grpc.name = "rpc".into();
        let mut http = check("http");
        http.header
            .insert("X-Probe".into(), vec!["1".into(), "2".into()]);
        http.check_restart = Some(CheckRestart {
            limit: 3,
            grace: NomadDuration::from_secs(1),
            ignore_warnings: true,
        });
        let mut group_script = script.clone();
        group_script.name = "group-script".into();
        let group = TaskGroup {
            name: "g".into(),
            services: vec![service("http", vec![grpc, group_script])],
            tasks: vec![Task {
                name: "t".into(),
                services: vec![Service {
                    check_restart: Some(CheckRestart {
                        limit: 2,
                        ..CheckRestart::default()
                    }),
                    ..service("http", vec![http, script])
                }],
                ..Task::default()
            }],
            ..TaskGroup::default()
        };
        let specs = build(&a, &group, &node());
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["rpc", "group-script", "alive", "script"]);
        let err = specs[0].probe.as_ref().unwrap_err().to_string();
        assert_eq!(
            err,
            "service \"web\" check \"rpc\": grpc checks are not supported by Caravan; use an \
             http or tcp check"
        );
        assert!(
            specs[1]
                .probe
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("needs task = ")
        );
        assert_eq!(specs[1].task, None);
        let http = &specs[2];
        assert_eq!(http.task.as_deref(), Some("t"));
        assert_eq!(http.runs_with.as_deref(), Some("t"));
        let Ok(Probe::Http(p)) = &http.probe else {
            panic!("{:?}", http.probe)
        };
        assert_eq!(p.url, "http://10.0.0.5:23456/health");
        assert_eq!(p.method, "GET");
        assert_eq!(p.headers["X-Probe"], ["1", "2"]);
        // The check's own check_restart wins over its service's; the service's is inherited.
        let rule = http.restart.as_ref().unwrap();
        assert_eq!((rule.task.as_str(), rule.limit), ("t", 3));
        assert!(rule.ignore_warnings);
        assert_eq!(specs[3].restart.as_ref().unwrap().limit, 2);
        assert_eq!(
            specs[3].probe,
            Ok(Probe::Script {
                task: "t".into(),
                command: "/bin/true".into(),
                args: vec![],
            })
        );
        assert_eq!(http.initial_status, CheckStatus::Pending);
        assert_eq!(http.mode, CheckMode::Healthiness);
    }

    #[test]
    fn names_modes_and_initial_status_default_like_nomad() {
        let a = alloc(&[("http", 23456, 0)]);
        let mut c = check("tcp");
        c.name = String::new();
        c.on_update = "ignore".into();
        c.initial_status = "passing".into();
        let group = TaskGroup {
            name: "g".into(),
            services: vec![service("http", vec![c])],
            ..TaskGroup::default()
        };
        let spec = &build(&a, &group, &node())[0];
        assert_eq!(spec.name, "service: \"web\" check");
        assert_eq!(spec.mode, CheckMode::Readiness);
        assert_eq!(spec.initial_status, CheckStatus::Success);
        assert_eq!(spec.runs_with, None);
        assert_eq!(spec.restart, None);
        assert_eq!(initial_status("critical"), CheckStatus::Failure);
        assert_eq!(initial_status(""), CheckStatus::Pending);
    }
}
