//! From the jobspec's shape ([`JobSpec`]) to the canonical [`Job`].
//!
//! Partial blocks are merged over what they refine, as Nomad does: a group's `update` over the
//! job's, a task's `restart` over the group's, and all of them over Nomad's defaults. Values that
//! do not fit (a count of 10¹², a negative memory size) are reported with their path.

use super::spec::*;
use super::tree::Seg;
use super::wrappers::{OneOrMany, Single, Text};
use crate::canonical;
use crate::duration::{Duration, SpecDuration};
use crate::ids::{JobId, Namespace, Region};
use crate::job::*;
use crate::resources::{DnsConfig, NetworkResource, Port, RequestedDevice, Resources};

/// A problem found while converting, at a path inside the spec.
pub type PathProblem = (Vec<Seg>, String);

struct Ctx {
    path: Vec<Seg>,
    problems: Vec<PathProblem>,
}

impl Ctx {
    fn at<R>(&mut self, segs: &[Seg], f: impl FnOnce(&mut Ctx) -> R) -> R {
        let depth = self.path.len();
        self.path.extend_from_slice(segs);
        let r = f(self);
        self.path.truncate(depth);
        r
    }

    fn problem(&mut self, field: &str, message: String) {
        let mut path = self.path.clone();
        path.push(key(field));
        self.problems.push((path, message));
    }

    /// An integer field that must fit an i32 and lie in `min..=max`.
    fn int(&mut self, field: &str, v: Option<i64>, min: i64, max: i64) -> Option<i32> {
        let v = v?;
        if v < min || v > max {
            self.problem(
                field,
                format!("{field} must be between {min} and {max}, got {v}"),
            );
            return None;
        }
        i32::try_from(v).ok()
    }
}

fn key(s: &str) -> Seg {
    Seg::Key(s.to_owned())
}

fn text_map(m: Option<Single<TextMap>>) -> StringMap {
    m.map(|Single(m)| m.into_iter().map(|(k, Text(v))| (k, v)).collect())
        .unwrap_or_default()
}

fn dur(d: Option<SpecDuration>) -> Option<Duration> {
    d.map(|SpecDuration(d)| d)
}

fn single<T>(s: Option<Single<T>>) -> Option<T> {
    s.map(|Single(t)| t)
}

/// Converts a decoded jobspec into a canonical job. `id` is the job block's label (or the
/// manifest's `metadata.name`); `path` is where the job body sits in the document, so problems
/// can be located.
pub fn job(id: &str, spec: JobSpec, path: Vec<Seg>) -> Result<Job, Vec<PathProblem>> {
    let mut ctx = Ctx {
        path,
        problems: Vec::new(),
    };
    let job = convert_job(&mut ctx, id, spec);
    if ctx.problems.is_empty() {
        Ok(job)
    } else {
        Err(ctx.problems)
    }
}

fn convert_job(ctx: &mut Ctx, id: &str, s: JobSpec) -> Job {
    let job_type = match s.r#type.as_deref() {
        None | Some("service") => JobType::Service,
        Some("batch") => JobType::Batch,
        Some("system") => JobType::System,
        Some("sysbatch") => JobType::Sysbatch,
        Some(other) => {
            ctx.problem(
                "type",
                format!("unknown job type {other:?}: expected service, batch, system or sysbatch"),
            );
            JobType::Service
        }
    };
    let id = s.id.clone().unwrap_or_else(|| id.to_owned());
    let update = s.update.map(|Single(u)| {
        ctx.at(&[key("update")], |c| {
            merge_update(c, canonical::update_strategy(), u)
        })
    });
    let reschedule = single(s.reschedule).map(|r| {
        let base = canonical::reschedule_policy(job_type).unwrap_or_default();
        ctx.at(&[key("reschedule")], |c| merge_reschedule(c, base, r))
    });
    let migrate = single(s.migrate).map(|m| {
        ctx.at(&[key("migrate")], |c| {
            merge_migrate(c, canonical::migrate_strategy(), m)
        })
    });
    let defaults = GroupDefaults {
        job_type,
        update: update
            .clone()
            .or_else(|| canonical::has_update(job_type).then(canonical::update_strategy)),
        reschedule: reschedule
            .clone()
            .or_else(|| canonical::reschedule_policy(job_type)),
        migrate: migrate.clone(),
    };
    let groups = s
        .group
        .0
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let label = g.name.clone().unwrap_or_default();
            let seg = group_seg(&label, i);
            ctx.at(&[key("group"), seg], |c| convert_group(c, g, &defaults))
        })
        .collect();
    let mut job = Job {
        region: Region::new(s.region.unwrap_or_default()),
        namespace: Namespace::new(s.namespace.unwrap_or_default()),
        id: JobId::new(id),
        name: s.name.unwrap_or_default(),
        r#type: job_type,
        priority: ctx.int("priority", s.priority, 1, 100).unwrap_or(0),
        all_at_once: s.all_at_once.unwrap_or(false),
        datacenters: s.datacenters.unwrap_or_default(),
        node_pool: s.node_pool.unwrap_or_default(),
        constraints: constraints(ctx, s.constraint),
        affinities: affinities(ctx, s.affinity),
        spreads: spreads(ctx, s.spread),
        task_groups: groups,
        update,
        periodic: single(s.periodic).map(|p| PeriodicConfig {
            enabled: p.enabled.unwrap_or(true),
            spec: p.cron.unwrap_or_default(),
            specs: p.crons.unwrap_or_default(),
            spec_type: "cron".into(),
            prohibit_overlap: p.prohibit_overlap.unwrap_or(false),
            time_zone: p.time_zone.unwrap_or_default(),
        }),
        parameterized_job: single(s.parameterized).map(|p| ParameterizedJobConfig {
            payload: p.payload.unwrap_or_default(),
            meta_required: p.meta_required.unwrap_or_default(),
            meta_optional: p.meta_optional.unwrap_or_default(),
        }),
        reschedule,
        migrate,
        meta: text_map(s.meta),
        ..Job::default()
    };
    job.canonicalize();
    job
}

/// A group is addressed by label in HCL (`group.web`) and by label in YAML maps too; YAML lists
/// of named groups are addressed by index, which the source map resolves to the nearest ancestor.
fn group_seg(label: &str, index: usize) -> Seg {
    if label.is_empty() {
        Seg::Index(index)
    } else {
        key(label)
    }
}

struct GroupDefaults {
    job_type: JobType,
    update: Option<UpdateStrategy>,
    reschedule: Option<ReschedulePolicy>,
    migrate: Option<MigrateStrategy>,
}

fn convert_group(ctx: &mut Ctx, g: GroupSpec, d: &GroupDefaults) -> TaskGroup {
    let restart = single(g.restart).map(|r| {
        ctx.at(&[key("restart")], |c| {
            merge_restart(c, canonical::restart_policy(d.job_type), r)
        })
    });
    let update = match (single(g.update), &d.update) {
        (Some(u), base) => Some(ctx.at(&[key("update")], |c| {
            merge_update(
                c,
                base.clone().unwrap_or_else(canonical::update_strategy),
                u,
            )
        })),
        (None, base) => base.clone(),
    };
    let reschedule = match (single(g.reschedule), &d.reschedule) {
        (Some(r), base) => Some(ctx.at(&[key("reschedule")], |c| {
            let base = base
                .clone()
                .or_else(|| canonical::reschedule_policy(d.job_type));
            merge_reschedule(c, base.unwrap_or_default(), r)
        })),
        (None, base) => base.clone(),
    };
    let migrate = match (single(g.migrate), &d.migrate) {
        (Some(m), base) => Some(ctx.at(&[key("migrate")], |c| {
            merge_migrate(
                c,
                base.clone().unwrap_or_else(canonical::migrate_strategy),
                m,
            )
        })),
        (None, base) => base.clone(),
    };
    let group_restart = restart
        .clone()
        .unwrap_or_else(|| canonical::restart_policy(d.job_type));
    let count = ctx
        .int("count", g.count, 0, i64::from(i32::MAX))
        .unwrap_or(1);
    let tasks = g
        .task
        .0
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let seg = group_seg(t.name.as_deref().unwrap_or(""), i);
            ctx.at(&[key("task"), seg], |c| convert_task(c, t, &group_restart))
        })
        .collect();
    TaskGroup {
        name: g.name.unwrap_or_default(),
        count,
        constraints: constraints(ctx, g.constraint),
        affinities: affinities(ctx, g.affinity),
        spreads: spreads(ctx, g.spread),
        tasks,
        restart_policy: restart,
        reschedule_policy: reschedule,
        ephemeral_disk: single(g.ephemeral_disk).map(|e| {
            ctx.at(&[key("ephemeral_disk")], |c| EphemeralDisk {
                sticky: e.sticky.unwrap_or(false),
                migrate: e.migrate.unwrap_or(false),
                size_mb: c
                    .int("size", e.size, 0, i64::from(i32::MAX))
                    .unwrap_or(canonical::DEFAULT_DISK_MB),
            })
        }),
        update,
        migrate,
        networks: networks(ctx, g.network),
        services: services(ctx, g.service),
        volumes: g
            .volume
            .0
            .into_iter()
            .map(|v| {
                let name = v.name.unwrap_or_default();
                let req = VolumeRequest {
                    name: name.clone(),
                    r#type: v.r#type.unwrap_or_else(|| "host".into()),
                    source: v.source.unwrap_or_default(),
                    read_only: v.read_only.unwrap_or(false),
                };
                (name, req)
            })
            .collect(),
        scaling: single(g.scaling).map(|s| ScalingPolicy {
            min: s.min,
            max: s.max.unwrap_or(0),
            enabled: s.enabled.unwrap_or(true),
            policy: single(s.policy).unwrap_or_default(),
        }),
        meta: text_map(g.meta),
        shutdown_delay: dur(g.shutdown_delay),
        stop_after_client_disconnect: dur(g.stop_after_client_disconnect),
        max_client_disconnect: dur(g.max_client_disconnect),
    }
}

fn convert_task(ctx: &mut Ctx, t: TaskSpec, group_restart: &RestartPolicy) -> Task {
    let restart = single(t.restart).map(|r| {
        ctx.at(&[key("restart")], |c| {
            merge_restart(c, group_restart.clone(), r)
        })
    });
    let resources = single(t.resources)
        .map(|r| ctx.at(&[key("resources")], |c| convert_resources(c, r)))
        .unwrap_or_default();
    Task {
        name: t.name.unwrap_or_default(),
        driver: t.driver.unwrap_or_default(),
        user: t.user.unwrap_or_default(),
        lifecycle: single(t.lifecycle).map(|l| TaskLifecycle {
            hook: l.hook.unwrap_or_default(),
            sidecar: l.sidecar.unwrap_or(false),
        }),
        config: single(t.config).unwrap_or_default(),
        env: text_map(t.env),
        services: services(ctx, t.service),
        resources,
        restart_policy: restart,
        constraints: constraints(ctx, t.constraint),
        affinities: affinities(ctx, t.affinity),
        meta: text_map(t.meta),
        kill_timeout: dur(t.kill_timeout),
        kill_signal: t.kill_signal.unwrap_or_default(),
        log_config: single(t.logs).map(|l| {
            ctx.at(&[key("logs")], |c| {
                let d = canonical::log_config();
                LogConfig {
                    max_files: c
                        .int("max_files", l.max_files, 1, 1_000)
                        .unwrap_or(d.max_files),
                    max_file_size_mb: c
                        .int("max_file_size", l.max_file_size, 1, 100_000)
                        .unwrap_or(d.max_file_size_mb),
                    disabled: l.disabled.unwrap_or(false) || l.enabled == Some(false),
                }
            })
        }),
        artifacts: t
            .artifact
            .0
            .into_iter()
            .map(|a| TaskArtifact {
                getter_source: a.source.unwrap_or_default(),
                getter_options: text_map(a.options),
                getter_headers: text_map(a.headers),
                getter_mode: a.mode.unwrap_or_default(),
                relative_dest: a.destination.unwrap_or_default(),
            })
            .collect(),
        templates: t
            .template
            .0
            .into_iter()
            .map(|tp| Template {
                source_path: tp.source.unwrap_or_default(),
                dest_path: tp.destination.unwrap_or_default(),
                embedded_tmpl: tp.data.unwrap_or_default(),
                change_mode: tp.change_mode.unwrap_or_default(),
                change_signal: tp.change_signal.unwrap_or_default(),
                splay: dur(tp.splay).unwrap_or_default(),
                perms: tp.perms.unwrap_or_default(),
                uid: tp.uid.and_then(|v| i32::try_from(v).ok()),
                gid: tp.gid.and_then(|v| i32::try_from(v).ok()),
                left_delim: tp.left_delimiter.unwrap_or_default(),
                right_delim: tp.right_delimiter.unwrap_or_default(),
                envvars: tp.env.unwrap_or(false),
                err_missing_key: tp.error_on_missing_key.unwrap_or(false),
            })
            .collect(),
        dispatch_payload: single(t.dispatch_payload).map(|p| DispatchPayloadConfig {
            file: p.file.unwrap_or_default(),
        }),
        volume_mounts: t
            .volume_mount
            .0
            .into_iter()
            .map(|m| VolumeMount {
                volume: m.volume.unwrap_or_default(),
                destination: m.destination.unwrap_or_default(),
                read_only: m.read_only.unwrap_or(false),
            })
            .collect(),
        leader: t.leader.unwrap_or(false),
        shutdown_delay: dur(t.shutdown_delay).unwrap_or_default(),
        kind: t.kind.unwrap_or_default(),
    }
}

fn convert_resources(ctx: &mut Ctx, r: ResourcesSpec) -> Resources {
    let max = i64::from(i32::MAX);
    Resources {
        cpu: ctx.int("cpu", r.cpu, 0, max).unwrap_or(0),
        cores: ctx.int("cores", r.cores, 0, 4096).unwrap_or(0),
        memory_mb: ctx.int("memory", r.memory, 0, max).unwrap_or(0),
        memory_max_mb: ctx.int("memory_max", r.memory_max, 0, max).unwrap_or(0),
        disk_mb: ctx.int("disk", r.disk, 0, max).unwrap_or(0),
        iops: ctx.int("iops", r.iops, 0, max).unwrap_or(0),
        networks: networks(ctx, r.network),
        devices: r
            .device
            .0
            .into_iter()
            .map(|dv| RequestedDevice {
                name: dv.name.unwrap_or_default(),
                count: dv.count.and_then(|c| u64::try_from(c).ok()).unwrap_or(1),
                ..RequestedDevice::default()
            })
            .collect(),
        ..Resources::default()
    }
}

fn networks(ctx: &mut Ctx, nets: OneOrMany<NetworkSpec>) -> Vec<NetworkResource> {
    nets.0
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            ctx.at(&[key("network"), Seg::Index(i)], |c| {
                let mut net = NetworkResource {
                    mode: n.mode.unwrap_or_default(),
                    mbits: c.int("mbits", n.mbits, 0, i64::from(i32::MAX)).unwrap_or(0),
                    hostname: n.hostname.unwrap_or_default(),
                    dns: single(n.dns).map(|d| DnsConfig {
                        servers: d.servers.unwrap_or_default(),
                        searches: d.searches.unwrap_or_default(),
                        options: d.options.unwrap_or_default(),
                    }),
                    ..NetworkResource::default()
                };
                for p in n.port.0 {
                    let label = p.name.clone().unwrap_or_default();
                    c.at(&[key("port"), key(&label)], |c| {
                        let port = Port {
                            label: label.clone(),
                            value: c.int("static", p.r#static, 0, 65535).unwrap_or(0),
                            to: c.int("to", p.to, -1, 65535).unwrap_or(0),
                            host_network: p
                                .host_network
                                .clone()
                                .unwrap_or_else(|| "default".into()),
                            ..Port::default()
                        };
                        if p.r#static.is_some() {
                            net.reserved_ports.push(port);
                        } else {
                            net.dynamic_ports.push(port);
                        }
                    });
                }
                net
            })
        })
        .collect()
}

fn services(ctx: &mut Ctx, services: OneOrMany<ServiceSpec>) -> Vec<Service> {
    services
        .0
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            ctx.at(&[key("service"), Seg::Index(i)], |c| Service {
                name: s.name.unwrap_or_default(),
                tags: s.tags.unwrap_or_default(),
                canary_tags: s.canary_tags.unwrap_or_default(),
                enable_tag_override: s.enable_tag_override.unwrap_or(false),
                port_label: s.port.map(|Text(p)| p).unwrap_or_default(),
                address_mode: s.address_mode.unwrap_or_default(),
                address: s.address.unwrap_or_default(),
                checks: s
                    .check
                    .0
                    .into_iter()
                    .enumerate()
                    .map(|(j, ch)| c.at(&[key("check"), Seg::Index(j)], |c| check(c, ch)))
                    .collect(),
                check_restart: single(s.check_restart).map(|r| check_restart(c, r)),
                meta: text_map(s.meta),
                canary_meta: text_map(s.canary_meta),
                tagged_addresses: text_map(s.tagged_addresses),
                task_name: s.task.unwrap_or_default(),
                on_update: s.on_update.unwrap_or_default(),
                provider: s.provider.unwrap_or_default(),
            })
        })
        .collect()
}

fn check(ctx: &mut Ctx, ch: CheckSpec) -> ServiceCheck {
    ServiceCheck {
        name: ch.name.unwrap_or_default(),
        r#type: ch.r#type.unwrap_or_default(),
        command: ch.command.unwrap_or_default(),
        args: ch.args.unwrap_or_default(),
        path: ch.path.unwrap_or_default(),
        protocol: ch.protocol.unwrap_or_default(),
        port_label: ch.port.map(|Text(p)| p).unwrap_or_default(),
        expose: ch.expose.unwrap_or(false),
        address_mode: ch.address_mode.unwrap_or_default(),
        interval: dur(ch.interval).unwrap_or_default(),
        timeout: dur(ch.timeout).unwrap_or_default(),
        initial_status: ch.initial_status.unwrap_or_default(),
        tls_skip_verify: ch.tls_skip_verify.unwrap_or(false),
        header: single(ch.header).unwrap_or_default(),
        method: ch.method.unwrap_or_default(),
        body: ch.body.unwrap_or_default(),
        check_restart: single(ch.check_restart).map(|r| check_restart(ctx, r)),
        grpc_service: ch.grpc_service.unwrap_or_default(),
        grpc_use_tls: ch.grpc_use_tls.unwrap_or(false),
        task_name: ch.task.unwrap_or_default(),
        success_before_passing: ctx
            .int(
                "success_before_passing",
                ch.success_before_passing,
                0,
                1_000,
            )
            .unwrap_or(0),
        failures_before_critical: ctx
            .int(
                "failures_before_critical",
                ch.failures_before_critical,
                0,
                1_000,
            )
            .unwrap_or(0),
        on_update: ch.on_update.unwrap_or_default(),
    }
}

fn check_restart(ctx: &mut Ctx, r: CheckRestartSpec) -> CheckRestart {
    CheckRestart {
        limit: ctx.int("limit", r.limit, 0, 1_000).unwrap_or(0),
        grace: dur(r.grace).unwrap_or_default(),
        ignore_warnings: r.ignore_warnings.unwrap_or(false),
    }
}

/// The operand a constraint shorthand stands for, and its value.
fn shorthand(c: &ConstraintSpec) -> Option<(&'static str, String)> {
    let pairs: [(&'static str, &Option<String>); 6] = [
        ("regexp", &c.regexp),
        ("version", &c.version),
        ("semver", &c.semver),
        ("set_contains", &c.set_contains),
        ("set_contains_all", &c.set_contains_all),
        ("set_contains_any", &c.set_contains_any),
    ];
    pairs
        .into_iter()
        .find_map(|(op, v)| v.clone().map(|v| (op, v)))
}

fn constraints(ctx: &mut Ctx, cs: OneOrMany<ConstraintSpec>) -> Vec<Constraint> {
    cs.0.into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut out = Constraint {
                l_target: c.attribute.clone().unwrap_or_default(),
                r_target: c.value.clone().map(|Text(v)| v).unwrap_or_default(),
                operand: c.operator.clone().unwrap_or_default(),
            };
            if c.distinct_hosts == Some(true) {
                out.operand = "distinct_hosts".into();
            } else if let Some(p) = &c.distinct_property {
                out.operand = "distinct_property".into();
                out.l_target = p.clone();
            } else if let Some((op, v)) = shorthand(&c) {
                if c.operator.is_some() {
                    ctx.at(&[key("constraint"), Seg::Index(i)], |ctx| {
                        ctx.problem(
                            op,
                            format!("`{op}` already sets the operator; drop `operator`"),
                        )
                    });
                }
                out.operand = op.into();
                out.r_target = v;
            }
            out
        })
        .collect()
}

fn affinities(ctx: &mut Ctx, afs: OneOrMany<AffinitySpec>) -> Vec<Affinity> {
    afs.0
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let as_constraint = ConstraintSpec {
                regexp: a.regexp.clone(),
                version: a.version.clone(),
                semver: a.semver.clone(),
                set_contains: a.set_contains.clone(),
                set_contains_all: a.set_contains_all.clone(),
                set_contains_any: a.set_contains_any.clone(),
                ..ConstraintSpec::default()
            };
            let (operand, r_target) = shorthand(&as_constraint).map_or_else(
                || {
                    (
                        a.operator.clone().unwrap_or_else(|| "=".into()),
                        a.value.clone().map(|Text(v)| v).unwrap_or_default(),
                    )
                },
                |(op, v)| (op.to_owned(), v),
            );
            let weight = ctx
                .at(&[key("affinity"), Seg::Index(i)], |c| {
                    c.int("weight", a.weight, -100, 100)
                })
                .unwrap_or(50);
            Affinity {
                l_target: a.attribute.unwrap_or_default(),
                r_target,
                operand,
                weight,
            }
        })
        .collect()
}

fn spreads(ctx: &mut Ctx, sps: OneOrMany<SpreadSpec>) -> Vec<Spread> {
    sps.0
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            ctx.at(&[key("spread"), Seg::Index(i)], |c| Spread {
                attribute: s.attribute.unwrap_or_default(),
                weight: c.int("weight", s.weight, 0, 100).unwrap_or(50),
                spread_target: s
                    .target
                    .0
                    .into_iter()
                    .map(|t| SpreadTarget {
                        value: t.value.or(t.name).unwrap_or_default(),
                        percent: t.percent.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                    })
                    .collect(),
            })
        })
        .collect()
}

fn merge_update(ctx: &mut Ctx, base: UpdateStrategy, u: UpdateSpec) -> UpdateStrategy {
    UpdateStrategy {
        stagger: dur(u.stagger).unwrap_or(base.stagger),
        max_parallel: ctx
            .int("max_parallel", u.max_parallel, 0, 10_000)
            .unwrap_or(base.max_parallel),
        health_check: u.health_check.unwrap_or(base.health_check),
        min_healthy_time: dur(u.min_healthy_time).unwrap_or(base.min_healthy_time),
        healthy_deadline: dur(u.healthy_deadline).unwrap_or(base.healthy_deadline),
        progress_deadline: dur(u.progress_deadline).unwrap_or(base.progress_deadline),
        canary: ctx
            .int("canary", u.canary, 0, 10_000)
            .unwrap_or(base.canary),
        auto_revert: u.auto_revert.unwrap_or(base.auto_revert),
        auto_promote: u.auto_promote.unwrap_or(base.auto_promote),
    }
}

fn merge_migrate(ctx: &mut Ctx, base: MigrateStrategy, m: MigrateSpec) -> MigrateStrategy {
    MigrateStrategy {
        max_parallel: ctx
            .int("max_parallel", m.max_parallel, 0, 10_000)
            .unwrap_or(base.max_parallel),
        health_check: m.health_check.unwrap_or(base.health_check),
        min_healthy_time: dur(m.min_healthy_time).unwrap_or(base.min_healthy_time),
        healthy_deadline: dur(m.healthy_deadline).unwrap_or(base.healthy_deadline),
    }
}

fn merge_restart(ctx: &mut Ctx, base: RestartPolicy, r: RestartSpec) -> RestartPolicy {
    RestartPolicy {
        interval: dur(r.interval).unwrap_or(base.interval),
        attempts: ctx
            .int("attempts", r.attempts, 0, 1_000_000)
            .unwrap_or(base.attempts),
        delay: dur(r.delay).unwrap_or(base.delay),
        mode: r.mode.unwrap_or(base.mode),
        render_templates: r.render_templates.unwrap_or(base.render_templates),
    }
}

fn merge_reschedule(ctx: &mut Ctx, base: ReschedulePolicy, r: RescheduleSpec) -> ReschedulePolicy {
    ReschedulePolicy {
        attempts: ctx
            .int("attempts", r.attempts, 0, 1_000_000)
            .unwrap_or(base.attempts),
        interval: dur(r.interval).unwrap_or(base.interval),
        delay: dur(r.delay).unwrap_or(base.delay),
        delay_function: r.delay_function.unwrap_or(base.delay_function),
        max_delay: dur(r.max_delay).unwrap_or(base.max_delay),
        unlimited: r.unlimited.unwrap_or(base.unlimited),
    }
}
