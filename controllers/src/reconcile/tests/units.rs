//! The helpers on their own: `tasks_updated`, reschedule arithmetic, node views.

use super::fixtures::*;
use crate::reconcile::reschedule::{
    LAST_RESCHEDULE_OK, next_delay, next_reschedule_time, next_reschedule_tracker,
};
use crate::reconcile::{DrainView, NodeView, destructive_change, fail_time, tasks_updated};
use caravan_schemas::job::{
    EphemeralDisk, Job, LogConfig, RestartPolicy, TaskArtifact, TaskGroup, TaskLifecycle, Template,
    VolumeMount, VolumeRequest,
};
use caravan_schemas::node::{DrainSpec, DrainStrategy, Node, NodeStatus, SchedulingEligibility};
use caravan_schemas::resources::{NetworkResource, Port, RequestedDevice};
use caravan_schemas::time::Timestamp;
use caravan_schemas::{Duration, NodeId};

fn base() -> TaskGroup {
    service(1).task_groups[0].clone()
}

fn edited(edit: impl FnOnce(&mut TaskGroup)) -> TaskGroup {
    let mut g = base();
    edit(&mut g);
    g
}

#[test]
fn task_changes_are_destructive() {
    let port = |label: &str, value: i32| Port {
        label: label.into(),
        value,
        ..Default::default()
    };
    let cases: Vec<(&str, TaskGroup)> = vec![
        (
            "number of tasks",
            edited(|g| g.tasks.push(Default::default())),
        ),
        ("task driver", edited(|g| g.tasks[0].driver = "exec".into())),
        ("task user", edited(|g| g.tasks[0].user = "nobody".into())),
        (
            "task config",
            edited(|g| {
                g.tasks[0].config.insert("image".into(), "redis:8".into());
            }),
        ),
        (
            "task env",
            edited(|g| {
                g.tasks[0].env.insert("A".into(), "1".into());
            }),
        ),
        (
            "task meta",
            edited(|g| {
                g.tasks[0].meta.insert("a".into(), "1".into());
            }),
        ),
        ("task cpu", edited(|g| g.tasks[0].resources.cpu += 100)),
        (
            "task memory",
            edited(|g| g.tasks[0].resources.memory_mb += 100),
        ),
        ("task cores", edited(|g| g.tasks[0].resources.cores = 2)),
        (
            "task devices",
            edited(|g| {
                g.tasks[0].resources.devices.push(RequestedDevice {
                    name: "nvidia/gpu".into(),
                    count: 1,
                    ..Default::default()
                })
            }),
        ),
        (
            "task artifacts",
            edited(|g| {
                g.tasks[0].artifacts.push(TaskArtifact {
                    getter_source: "https://example.com/x.tgz".into(),
                    ..Default::default()
                })
            }),
        ),
        (
            "task templates",
            edited(|g| {
                g.tasks[0].templates.push(Template {
                    embedded_tmpl: "x".into(),
                    ..Default::default()
                })
            }),
        ),
        (
            "task lifecycle",
            edited(|g| {
                g.tasks[0].lifecycle = Some(TaskLifecycle {
                    hook: "prestart".into(),
                    sidecar: false,
                })
            }),
        ),
        (
            "task kill signal",
            edited(|g| g.tasks[0].kill_signal = "SIGINT".into()),
        ),
        (
            "task log disabled",
            edited(|g| {
                g.tasks[0].log_config = Some(LogConfig {
                    disabled: true,
                    ..Default::default()
                })
            }),
        ),
        (
            "task volume mount",
            edited(|g| {
                g.tasks[0].volume_mounts.push(VolumeMount {
                    volume: "data".into(),
                    destination: "/data".into(),
                    read_only: false,
                })
            }),
        ),
        (
            "task restart render_templates",
            edited(|g| {
                g.tasks[0].restart_policy.as_mut().unwrap().render_templates = true;
            }),
        ),
        (
            "group restart render_templates",
            edited(|g| {
                g.restart_policy = Some(RestartPolicy {
                    render_templates: true,
                    ..Default::default()
                })
            }),
        ),
        (
            "ephemeral disk",
            edited(|g| {
                g.ephemeral_disk = Some(EphemeralDisk {
                    sticky: true,
                    migrate: false,
                    size_mb: 300,
                })
            }),
        ),
        (
            "volume request",
            edited(|g| {
                g.volumes.insert(
                    "data".into(),
                    VolumeRequest {
                        name: "data".into(),
                        r#type: "host".into(),
                        source: "data".into(),
                        read_only: false,
                    },
                );
            }),
        ),
        (
            "network lengths",
            edited(|g| g.networks.push(NetworkResource::default())),
        ),
        ("network port map", {
            let mut with_port = base();
            with_port.networks.push(NetworkResource {
                reserved_ports: vec![port("http", 8080)],
                ..Default::default()
            });
            with_port.networks[0].reserved_ports[0].value = 9090;
            with_port
        }),
        (
            "network lengths",
            edited(|g| {
                g.tasks[0]
                    .resources
                    .networks
                    .push(NetworkResource::default())
            }),
        ),
        ("task deleted", edited(|g| g.tasks[0].name = "other".into())),
    ];
    for (what, new) in cases {
        let old = if what == "network port map" {
            let mut g = base();
            g.networks.push(NetworkResource {
                reserved_ports: vec![port("http", 8080)],
                ..Default::default()
            });
            g
        } else {
            base()
        };
        assert_eq!(destructive_change(&old, &new), Some(what), "{what}");
        assert!(tasks_updated(&old, &new));
    }
}

#[test]
fn other_changes_are_in_place() {
    let cases: Vec<TaskGroup> = vec![
        edited(|g| g.count = 7),
        edited(|g| {
            g.meta.insert("tier".into(), "gold".into());
        }),
        edited(|g| g.update = None),
        edited(|g| g.migrate = None),
        edited(|g| g.reschedule_policy = None),
        edited(|g| g.restart_policy.as_mut().unwrap().attempts = 9),
        edited(|g| g.tasks[0].restart_policy.as_mut().unwrap().attempts = 9),
        edited(|g| g.constraints.push(Default::default())),
        edited(|g| g.tasks[0].constraints.push(Default::default())),
        edited(|g| g.services.push(Default::default())),
        edited(|g| g.tasks[0].services.push(Default::default())),
        edited(|g| g.tasks[0].kill_timeout = Some(Duration::from_secs(60))),
        edited(|g| g.tasks[0].log_config.as_mut().unwrap().max_files = 3),
        edited(|g| g.max_client_disconnect = Some(Duration::from_mins(1))),
    ];
    for new in cases {
        assert_eq!(destructive_change(&base(), &new), None, "{new:#?}");
    }
    // A dynamic port's assigned value does not count; volume mounts compare as a set.
    let dynamic = |value| {
        edited(|g| {
            g.networks.push(NetworkResource {
                dynamic_ports: vec![Port {
                    label: "http".into(),
                    value,
                    ..Default::default()
                }],
                ..Default::default()
            })
        })
    };
    assert!(!tasks_updated(&dynamic(0), &dynamic(23456)));
    let mount = |v: &str| VolumeMount {
        volume: v.into(),
        destination: format!("/{v}"),
        read_only: false,
    };
    let a = edited(|g| g.tasks[0].volume_mounts = vec![mount("a"), mount("b")]);
    let b = edited(|g| g.tasks[0].volume_mounts = vec![mount("b"), mount("a")]);
    assert!(!tasks_updated(&a, &b));
}

#[test]
fn in_place_versus_destructive_on_the_node() {
    // A node outside the new datacenters cannot keep the allocation.
    let v1 = service(1);
    let v2 = next_version(&v1, |j| j.datacenters = vec!["dc2".into()]);
    let plan = run(Some(&v2), &allocs(&v1, 1), &nodes(&[]));
    assert_plan(
        &plan,
        Expect {
            destructive: 1,
            ..Default::default()
        },
    );
    let v2 = next_version(&v1, |j| j.datacenters = vec!["dc*".into()]);
    let plan = run(Some(&v2), &allocs(&v1, 1), &nodes(&[]));
    assert_plan(
        &plan,
        Expect {
            inplace: 1,
            ..Default::default()
        },
    );
}

#[test]
fn node_view_of_a_node() {
    let mut node = Node {
        id: NodeId::new("n1"),
        datacenter: "dc1".into(),
        node_pool: "default".into(),
        status: NodeStatus::Ready,
        scheduling_eligibility: SchedulingEligibility::Eligible,
        ..Default::default()
    };
    let view = NodeView::of(&node);
    assert!(view.is_ready() && !view.is_draining());
    assert!(view.in_job(&service(1)));

    node.drain_strategy = Some(DrainStrategy {
        drain_spec: DrainSpec {
            deadline: Duration::from_hours(1),
            ignore_system_jobs: true,
        },
        force_deadline: Timestamp::from_unix_nanos(NOW + HOUR),
        started_at: Timestamp::from_unix_nanos(NOW),
    });
    node.scheduling_eligibility = SchedulingEligibility::Ineligible;
    let view = NodeView::of(&node);
    assert_eq!(
        view.drain,
        Some(DrainView {
            deadline: Some(NOW + HOUR),
            ignore_system_jobs: true
        })
    );
    assert!(!view.is_ready() && !view.drain_deadline_passed(NOW));
    assert!(view.drain_deadline_passed(NOW + HOUR));

    // Deadline 0: no deadline; negative: forced.
    node.drain_strategy.as_mut().unwrap().drain_spec.deadline = Duration::ZERO;
    assert_eq!(NodeView::of(&node).drain.unwrap().deadline, None);
    node.drain_strategy.as_mut().unwrap().drain_spec.deadline = Duration(-1);
    assert!(NodeView::of(&node).drain_deadline_passed(NOW));

    let index = NodeView::index([&node]);
    assert!(index.contains_key(&NodeId::new("n1")));

    // Datacenter globs and node pools.
    let mut job: Job = service(1);
    job.datacenters = vec!["eu-*".into()];
    let mut view = ready();
    view.datacenter = "eu-west".into();
    assert!(view.in_job(&job));
    view.datacenter = "us-east".into();
    assert!(!view.in_job(&job));
    job.datacenters = vec!["*".into()];
    assert!(view.in_job(&job));
    job.node_pool = "gpu".into();
    assert!(!view.in_job(&job));
    job.node_pool = "all".into();
    assert!(view.in_job(&job));
}

#[test]
fn reschedule_arithmetic() {
    let job = service(1);
    let p = policy(3, HOUR, 30 * SEC, "exponential", 10 * MIN, false);
    let failed = alloc(&job, "web", 0).failed_at(NOW - MIN);
    assert_eq!(fail_time(&failed), NOW - MIN);
    // No task states: the modify time.
    let bare = alloc(&job, "web", 0).with(|a| {
        a.client_status = caravan_schemas::alloc::ClientStatus::Failed;
        a.modify_time = NOW - 2 * MIN;
    });
    assert_eq!(fail_time(&bare), NOW - 2 * MIN);

    assert_eq!(next_delay(&failed, &p), Duration(30 * SEC));
    assert_eq!(
        next_reschedule_time(&failed, Some(&p), false),
        Some((NOW - MIN + 30 * SEC, true))
    );
    // Running allocations and missing or disabled policies are not candidates.
    assert_eq!(
        next_reschedule_time(&alloc(&job, "web", 0), Some(&p), false),
        None
    );
    assert_eq!(next_reschedule_time(&failed, None, false), None);
    let disabled = policy(0, HOUR, SEC, "constant", 0, false);
    assert_eq!(next_reschedule_time(&failed, Some(&disabled), false), None);

    // A delay that no longer fits in the interval ends the attempts.
    let tight = policy(5, 2 * MIN, 30 * SEC, "exponential", 0, false);
    let long = failed.clone().rescheduled(&[(NOW - 90 * SEC, 60 * SEC)]);
    assert_eq!(next_delay(&long, &tight), Duration(120 * SEC));
    assert_eq!(
        next_reschedule_time(&long, Some(&tight), false).map(|t| t.1),
        Some(false)
    );

    // The tracker keeps the events inside the interval, then adds this one.
    let prev = failed
        .clone()
        .on("n9")
        .rescheduled(&[(NOW - 2 * HOUR, 30 * SEC), (NOW - 30 * MIN, 30 * SEC)]);
    let tracker = next_reschedule_tracker(&prev, Some(&p), NOW);
    assert_eq!(tracker.last_reschedule, LAST_RESCHEDULE_OK);
    assert_eq!(tracker.events.len(), 2);
    assert_eq!(tracker.events[0].reschedule_time, NOW - 30 * MIN);
    assert_eq!(tracker.events[1].prev_node_id.as_str(), "n9");
    assert_eq!(tracker.events[1].delay, Duration(60 * SEC));
    // Without a policy: just this event.
    let tracker = next_reschedule_tracker(&failed, None, NOW);
    assert_eq!(tracker.events.len(), 1);
    assert_eq!(tracker.events[0].delay, Duration::ZERO);
}
