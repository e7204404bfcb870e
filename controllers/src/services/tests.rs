use super::*;
use caravan_schemas::alloc::{AllocDeploymentStatus, AllocNetworkStatus, CheckMode, TaskState};
use caravan_schemas::ids::{AllocId, JobId, Namespace, NodeId};
use caravan_schemas::job::{Job, ServiceCheck, Task};
use caravan_schemas::resources::{
    AllocatedPortMapping, AllocatedResources, AllocatedTaskResources, Port,
};
use std::sync::Arc;

const ALLOC: &str = "5456bd7a-9fc0-c0dd-6131-cbee77f57577";

fn service(name: &str, port: &str) -> Service {
    Service {
        name: name.into(),
        port_label: port.into(),
        tags: vec!["urlprefix-/".into(), "v1".into()],
        canary_tags: vec!["canary".into()],
        meta: BTreeMap::from([("version".into(), "1".into())]),
        canary_meta: BTreeMap::from([("version".into(), "canary".into())]),
        address_mode: "auto".into(),
        provider: "nomad".into(),
        ..Service::default()
    }
}

fn check(name: &str) -> ServiceCheck {
    ServiceCheck {
        name: name.into(),
        r#type: "http".into(),
        path: "/".into(),
        ..ServiceCheck::default()
    }
}

/// Job `demo` version 3, group `web` with a group service `web` on port `http`, task `server`.
fn job() -> Job {
    Job {
        id: JobId::new("demo"),
        name: "demo".into(),
        namespace: Namespace::default_ns(),
        version: 3,
        task_groups: vec![TaskGroup {
            name: "web".into(),
            services: vec![service("web", "http")],
            tasks: vec![Task {
                name: "server".into(),
                ..Task::default()
            }],
            ..TaskGroup::default()
        }],
        ..Job::default()
    }
}

fn alloc_of(job: Job) -> Allocation {
    let mut res = AllocatedResources::default();
    res.shared.ports = vec![
        AllocatedPortMapping {
            label: "http".into(),
            value: 23456,
            to: 8080,
            host_ip: "10.0.0.5".into(),
            ignore_collision: false,
        },
        AllocatedPortMapping {
            label: "admin".into(),
            value: 23457,
            to: 0,
            host_ip: String::new(),
            ignore_collision: false,
        },
    ];
    Allocation {
        id: AllocId::new(ALLOC),
        namespace: Namespace::default_ns(),
        name: "demo.web[2]".into(),
        node_id: NodeId::new("node-1"),
        job_id: JobId::new("demo"),
        job: Some(Arc::new(job)),
        task_group: "web".into(),
        allocated_resources: Some(res),
        desired_status: DesiredStatus::Run,
        client_status: ClientStatus::Running,
        task_states: BTreeMap::from([(
            "server".to_owned(),
            TaskState {
                state: TaskStatus::Running,
                ..TaskState::default()
            },
        )]),
        ..Allocation::default()
    }
}

fn alloc() -> Allocation {
    alloc_of(job())
}

fn with_group_services(services: Vec<Service>) -> Allocation {
    let mut j = job();
    j.task_groups[0].services = services;
    alloc_of(j)
}

fn node() -> Node {
    let mut n = Node {
        id: NodeId::new("node-1"),
        datacenter: "dc2".into(),
        ..Node::default()
    };
    n.attributes
        .insert("unique.network.ip-address".into(), "192.0.2.1".into());
    n
}

fn result(
    group: &str,
    task: &str,
    service: &str,
    check: &str,
    status: CheckStatus,
) -> CheckQueryResult {
    CheckQueryResult {
        id: CheckId::new(format!("{group}-{task}-{service}-{check}")),
        mode: CheckMode::Healthiness,
        status,
        group: group.into(),
        task: task.into(),
        service: service.into(),
        check: check.into(),
        ..CheckQueryResult::default()
    }
}

fn add_result(a: &mut Allocation, r: CheckQueryResult) {
    a.check_results.insert(r.id.clone(), r);
}

#[test]
fn a_running_allocation_registers_its_group_service_on_its_host_port() {
    let d = desired(&alloc(), Some(&node()));
    assert_eq!(d.skipped, []);
    assert_eq!(
        d.registrations,
        [ServiceRegistration {
            id: ServiceRegistration::make_id(&AllocId::new(ALLOC), "web", "web", "http"),
            service_name: "web".into(),
            namespace: Namespace::default_ns(),
            node_id: NodeId::new("node-1"),
            datacenter: "dc2".into(),
            job_id: JobId::new("demo"),
            alloc_id: AllocId::new(ALLOC),
            tags: vec!["urlprefix-/".into(), "v1".into()],
            address: "10.0.0.5".into(),
            port: 23456,
            create_index: 0,
            modify_index: 0,
            meta: BTreeMap::from([("version".into(), "1".into())]),
            canary: false,
            job_version: 3,
            healthy: Some(true),
        }]
    );
    assert_eq!(
        d.registrations[0].id.as_str(),
        format!("_nomad-task-{ALLOC}-web-web-http")
    );
}

#[test]
fn only_running_allocations_desired_to_run_register() {
    let n = node();
    for (client, desired_status, want) in [
        (ClientStatus::Running, DesiredStatus::Run, 1),
        (ClientStatus::Pending, DesiredStatus::Run, 0),
        (ClientStatus::Complete, DesiredStatus::Run, 0),
        (ClientStatus::Failed, DesiredStatus::Run, 0),
        (ClientStatus::Lost, DesiredStatus::Run, 0),
        (ClientStatus::Unknown, DesiredStatus::Run, 0),
        (ClientStatus::Running, DesiredStatus::Stop, 0),
        (ClientStatus::Running, DesiredStatus::Evict, 0),
    ] {
        let mut a = alloc();
        a.client_status = client;
        a.desired_status = desired_status;
        assert_eq!(
            desired(&a, Some(&n)).registrations.len(),
            want,
            "{client} / {desired_status}"
        );
    }
    let mut no_job = alloc();
    no_job.job = None;
    assert_eq!(desired(&no_job, Some(&n)), Desired::default());
}

#[test]
fn group_and_task_services_of_every_provider_register() {
    let mut j = job();
    let mut consul = service("api", "admin");
    consul.provider = "consul".into();
    let mut unset = service("metrics", "9102");
    unset.provider = String::new();
    j.task_groups[0].services.push(consul);
    j.task_groups[0].tasks[0].services = vec![unset];
    let d = desired(&alloc_of(j), Some(&node()));
    assert_eq!(d.skipped, []);
    let got: Vec<(&str, &str, i32)> = d
        .registrations
        .iter()
        .map(|r| (r.service_name.as_str(), r.address.as_str(), r.port))
        .collect();
    // Sorted by id; `admin` has no host IP (the node's), a numeric port is taken as it is.
    assert_eq!(
        got,
        [
            ("metrics", "192.0.2.1", 9102),
            ("api", "192.0.2.1", 23457),
            ("web", "10.0.0.5", 23456),
        ]
    );
    assert_eq!(
        d.registrations[0].id.as_str(),
        format!("_nomad-task-{ALLOC}-server-metrics-9102")
    );
}

#[test]
fn canaries_use_canary_tags_and_meta_until_promoted() {
    let n = node();
    let mut a = alloc();
    a.deployment_status = Some(AllocDeploymentStatus {
        canary: true,
        ..AllocDeploymentStatus::default()
    });
    let reg = &desired(&a, Some(&n)).registrations[0];
    assert!(reg.canary);
    assert_eq!(reg.tags, ["canary"]);
    assert_eq!(reg.meta["version"], "canary");

    // Without canary_tags/canary_meta a canary advertises the normal ones, as in Nomad.
    let mut plain = service("web", "http");
    plain.canary_tags.clear();
    plain.canary_meta.clear();
    let mut b = with_group_services(vec![plain]);
    b.deployment_status = a.deployment_status.clone();
    let reg = &desired(&b, Some(&n)).registrations[0];
    assert!(reg.canary);
    assert_eq!(reg.tags, ["urlprefix-/", "v1"]);
    assert_eq!(reg.meta["version"], "1");

    // Promotion clears the flag: the normal tags come back.
    a.deployment_status.as_mut().unwrap().canary = false;
    let reg = &desired(&a, Some(&n)).registrations[0];
    assert!(!reg.canary);
    assert_eq!(reg.tags, ["urlprefix-/", "v1"]);
    assert_eq!(reg.meta["version"], "1");
}

#[test]
fn unresolvable_ports_are_skipped_with_a_reason() {
    let mut bad_mode = service("driver", "http");
    bad_mode.address_mode = "driver".into();
    let mut weird = service("weird", "http");
    weird.address_mode = "nope".into();
    let a = with_group_services(vec![
        service("web", "http"),
        service("lost", "grpc"),
        service("zero", "0"),
        bad_mode,
        weird,
    ]);
    let d = desired(&a, Some(&node()));
    assert_eq!(d.registrations.len(), 1);
    let texts: Vec<String> = d.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        [
            "service \"lost\" of group \"web\": port \"grpc\" is not one of the allocation's \
             ports (admin, http)",
            "service \"zero\" of group \"web\": port \"0\" is not a valid port number",
            "service \"driver\" of group \"web\": address_mode \"driver\" is not supported: the \
             servers do not know the driver's network; use \"host\" or \"auto\"",
            "service \"weird\" of group \"web\": unknown address_mode \"nope\" (expected auto, \
             host, alloc or driver)",
        ]
    );
}

#[test]
fn address_modes_follow_nomads_get_address() {
    let n = node();
    let mut custom = service("custom", "http");
    custom.address = "198.51.100.7".into();
    let mut in_alloc = service("inside", "http");
    in_alloc.address_mode = "alloc".into();
    let mut host = service("host", "admin");
    host.address_mode = "host".into();
    let no_port = service("noport", "");
    let a = with_group_services(vec![custom, in_alloc.clone(), host, no_port]);
    let d = desired(&a, Some(&n));
    let got: BTreeMap<&str, (&str, i32)> = d
        .registrations
        .iter()
        .map(|r| (r.service_name.as_str(), (r.address.as_str(), r.port)))
        .collect();
    assert_eq!(got["custom"], ("198.51.100.7", 23456));
    assert_eq!(got["host"], ("192.0.2.1", 23457));
    assert_eq!(got["noport"], ("192.0.2.1", 0));
    assert!(!got.contains_key("inside"));
    assert_eq!(d.skipped[0].reason, SkipReason::NoAllocAddress);

    // In bridge networking, "alloc" is the allocation's address and the port inside it.
    let mut bridged = with_group_services(vec![in_alloc]);
    bridged.network_status = Some(AllocNetworkStatus {
        address: "172.26.64.2".into(),
        ..AllocNetworkStatus::default()
    });
    let reg = &desired(&bridged, Some(&n)).registrations[0];
    assert_eq!((reg.address.as_str(), reg.port), ("172.26.64.2", 8080));

    // No node known: no datacenter, and loopback for what needs the node's address.
    let d = desired(&with_group_services(vec![service("m", "9000")]), None);
    assert_eq!(d.registrations[0].datacenter, "");
    assert_eq!(d.registrations[0].address, "127.0.0.1");
}

#[test]
fn task_network_ports_are_found_too() {
    let mut j = job();
    j.task_groups[0].services.clear();
    j.task_groups[0].tasks[0].services = vec![service("legacy", "rpc")];
    let mut a = alloc_of(j);
    let res = a.allocated_resources.as_mut().unwrap();
    res.tasks.insert(
        "server".into(),
        AllocatedTaskResources {
            networks: vec![NetworkResource {
                ip: "10.0.0.9".into(),
                dynamic_ports: vec![Port {
                    label: "rpc".into(),
                    value: 24000,
                    ..Port::default()
                }],
                ..NetworkResource::default()
            }],
            ..AllocatedTaskResources::default()
        },
    );
    let reg = &desired(&a, Some(&node())).registrations[0];
    assert_eq!((reg.address.as_str(), reg.port), ("10.0.0.9", 24000));
}

#[test]
fn a_task_service_waits_for_its_task_to_run() {
    let mut j = job();
    j.task_groups[0].tasks[0].services = vec![service("api", "admin")];
    let mut a = alloc_of(j);
    a.task_states.get_mut("server").unwrap().state = TaskStatus::Dead;
    let d = desired(&a, Some(&node()));
    let names: Vec<&str> = d
        .registrations
        .iter()
        .map(|r| r.service_name.as_str())
        .collect();
    assert_eq!(names, ["web"]);
    assert_eq!(
        d.skipped[0].to_string(),
        "service \"api\" of task \"server\": its task is dead, not running"
    );
}

#[test]
fn health_comes_from_the_services_own_checks() {
    let n = node();
    let mut svc = service("web", "http");
    svc.checks = vec![check("alive"), ServiceCheck::default()];
    let mut other = service("other", "admin");
    other.checks = vec![check("alive")];
    let base = with_group_services(vec![svc.clone(), other]);
    let health = |a: &Allocation| -> Vec<(String, Option<bool>)> {
        desired(a, Some(&n))
            .registrations
            .iter()
            .map(|r| (r.service_name.clone(), r.healthy))
            .collect()
    };
    // No results yet: undecided.
    assert_eq!(
        health(&base),
        [("other".to_owned(), None), ("web".to_owned(), None)]
    );
    let unnamed = default_check_name("web");
    assert_eq!(unnamed, "service: \"web\" check");
    let mut a = base.clone();
    add_result(
        &mut a,
        result("web", "", "web", "alive", CheckStatus::Success),
    );
    assert_eq!(health(&a)[1].1, None, "one of two checks reported");
    add_result(
        &mut a,
        result("web", "", "web", &unnamed, CheckStatus::Pending),
    );
    assert_eq!(health(&a)[1].1, None, "pending is undecided");
    add_result(
        &mut a,
        result("web", "", "web", &unnamed, CheckStatus::Success),
    );
    assert_eq!(health(&a)[1].1, Some(true));
    assert_eq!(
        health(&a)[0].1,
        None,
        "another service's checks do not count"
    );
    // A failing check (readiness ones too) makes it unhealthy, whatever the others say.
    let mut failing = result("web", "", "web", "alive", CheckStatus::Failure);
    failing.mode = CheckMode::Readiness;
    add_result(&mut a, failing);
    assert_eq!(health(&a)[1].1, Some(false));
    // A result for the same names in a task does not belong to the group service.
    let mut b = base;
    add_result(
        &mut b,
        result("web", "server", "web", "alive", CheckStatus::Success),
    );
    add_result(
        &mut b,
        result("web", "server", "web", &unnamed, CheckStatus::Success),
    );
    assert_eq!(health(&b)[1].1, None);
    // No checks: healthy, as Nomad treats a service without checks.
    assert_eq!(
        service_health(&BTreeMap::new(), "web", None, &service("x", "http")),
        Some(true)
    );
}

#[test]
fn names_tags_and_meta_interpolate_runtime_variables() {
    let mut named = service("${NOMAD_JOB_NAME}-${NOMAD_GROUP_NAME}", "http");
    named.tags = vec![
        "alloc-${NOMAD_ALLOC_INDEX}".into(),
        "dc-${NOMAD_DC}".into(),
        "${UNKNOWN}".into(),
        "open-${".into(),
    ];
    named.meta = BTreeMap::from([("base".into(), "${BASE}".into())]);
    let unnamed = service("", "admin");
    let mut j = job();
    j.task_groups[0].services = vec![named];
    j.task_groups[0].tasks[0].services = vec![unnamed];
    let d = desired(&alloc_of(j), Some(&node()));
    let regs: BTreeMap<&str, &ServiceRegistration> = d
        .registrations
        .iter()
        .map(|r| (r.service_name.as_str(), r))
        .collect();
    let web = regs["demo-web"];
    assert_eq!(web.tags, ["alloc-2", "dc-dc2", "${UNKNOWN}", "open-${"]);
    assert_eq!(web.meta["base"], "demo-web-");
    assert_eq!(
        web.id.as_str(),
        format!("_nomad-task-{ALLOC}-web-demo-web-http")
    );
    // Nomad's default name for a task service: job-group-task.
    assert!(regs.contains_key("demo-web-server"), "{regs:?}");
}

#[test]
fn duplicate_ids_register_once() {
    let a = with_group_services(vec![service("web", "http"), service("web", "http")]);
    let d = desired(&a, Some(&node()));
    assert_eq!(d.registrations.len(), 1);
    assert!(matches!(d.skipped[0].reason, SkipReason::DuplicateId(_)));
}

#[test]
fn diff_writes_only_what_changed_and_deletes_the_rest() {
    let n = node();
    let want = desired(&alloc(), Some(&n)).registrations;
    let stored = |r: &ServiceRegistration, index: i64| ServiceRegistration {
        create_index: 5,
        modify_index: index,
        ..r.clone()
    };
    // Nothing stored: a create, guarded by absence.
    let (up, del) = diff(&want, &[]);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].previous, None);
    assert_eq!(up[0].registration, want[0]);
    assert!(del.is_empty());
    // Stored and equal but for the indexes: nothing.
    let same = stored(&want[0], 9);
    let (up, del) = diff(&want, std::slice::from_ref(&same));
    assert!(up.is_empty() && del.is_empty());
    assert!(same_content(&same, &want[0]));
    // Stored with other tags: an update guarded by what was read.
    let mut old = stored(&want[0], 9);
    old.tags = vec!["canary".into()];
    let (up, _) = diff(&want, &[old]);
    assert_eq!(up[0].previous, Some(9));
    assert_eq!(up[0].registration.modify_index, 0);
    // A stored registration nobody wants: deleted as read.
    let mut stale = stored(&want[0], 11);
    stale.id = ServiceRegistration::make_id(&AllocId::new(ALLOC), "web", "old", "http");
    let (up, del) = diff(&want, &[same.clone(), stale.clone()]);
    assert!(up.is_empty());
    assert_eq!(del, [stale]);
    // The same id in another namespace is another registration.
    let mut elsewhere = same.clone();
    elsewhere.namespace = Namespace::new("ops");
    let (up, del) = diff(&want, std::slice::from_ref(&elsewhere));
    assert_eq!((up.len(), del.len()), (1, 1));
}

#[test]
fn reconcile_removes_the_registrations_of_stopped_and_vanished_allocations() {
    let n = node();
    let mut a = alloc();
    let existing: Vec<ServiceRegistration> = desired(&a, Some(&n))
        .registrations
        .into_iter()
        .map(|r| ServiceRegistration {
            modify_index: 7,
            ..r
        })
        .collect();
    assert!(reconcile(Some(&a), Some(&n), &existing).is_empty());
    a.desired_status = DesiredStatus::Stop;
    let plan = reconcile(Some(&a), Some(&n), &existing);
    assert_eq!((plan.upserts.len(), plan.deletes.len()), (0, 1));
    let plan = reconcile(None, None, &existing);
    assert_eq!(plan.deletes, existing);
    // Check results arriving change only health: one update.
    let mut b = alloc();
    let mut svc = service("web", "http");
    svc.checks = vec![check("alive")];
    b.job = Some(Arc::new({
        let mut j = job();
        j.task_groups[0].services = vec![svc];
        j
    }));
    let before: Vec<ServiceRegistration> = desired(&b, Some(&n))
        .registrations
        .into_iter()
        .map(|r| ServiceRegistration {
            modify_index: 8,
            ..r
        })
        .collect();
    assert_eq!(before[0].healthy, None);
    add_result(
        &mut b,
        result("web", "", "web", "alive", CheckStatus::Success),
    );
    let plan = reconcile(Some(&b), Some(&n), &before);
    assert_eq!(plan.upserts.len(), 1);
    assert_eq!(plan.upserts[0].registration.healthy, Some(true));
    assert_eq!(plan.upserts[0].previous, Some(8));
}
