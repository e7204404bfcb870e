//! Semantic checks on a canonical [`Job`]: what a schema cannot say — names that must be unique,
//! ports that must exist, values that must parse, combinations that make no sense.
//!
//! Each problem carries the path of the offending value in the jobspec's shape
//! (`group.cache.task.redis.service[0].port`), so a decoder can turn it into a line number.

use crate::job::{Constraint, Job, JobType, Service, Task, TaskGroup};
use crate::jobspec::tree::Seg;

/// A problem and the jobspec path it is about.
pub type PathProblem = (Vec<Seg>, String);

const CONSTRAINT_OPERATORS: &[&str] = &[
    "=",
    "==",
    "is",
    "!=",
    "not",
    ">",
    ">=",
    "<",
    "<=",
    "regexp",
    "version",
    "semver",
    "set_contains",
    "set_contains_all",
    "set_contains_any",
    "is_set",
    "is_not_set",
    "distinct_hosts",
    "distinct_property",
];

struct Checker {
    path: Vec<Seg>,
    problems: Vec<PathProblem>,
}

impl Checker {
    fn at(&mut self, segs: &[Seg], f: impl FnOnce(&mut Checker)) {
        let depth = self.path.len();
        self.path.extend_from_slice(segs);
        f(self);
        self.path.truncate(depth);
    }

    fn fail(&mut self, field: &str, message: impl Into<String>) {
        let mut path = self.path.clone();
        if !field.is_empty() {
            path.push(Seg::Key(field.to_owned()));
        }
        self.problems.push((path, message.into()));
    }
}

fn key(s: &str) -> Seg {
    Seg::Key(s.to_owned())
}

/// Checks a canonical job; an empty result means it is valid.
pub fn job(job: &Job) -> Vec<PathProblem> {
    let mut c = Checker {
        path: Vec::new(),
        problems: Vec::new(),
    };
    let id = job.id.as_str();
    if id.is_empty() {
        c.fail("id", "the job has no ID");
    } else if id.chars().any(|ch| ch.is_whitespace() || ch == '\0') || id.len() > 128 {
        c.fail(
            "id",
            format!("job ID {id:?} must be at most 128 characters, without spaces"),
        );
    }
    if job.task_groups.is_empty() {
        c.fail(
            "",
            "the job has no groups: add a `group \"name\" { task \"name\" { ... } }` block",
        );
    }
    constraints(&mut c, &job.constraints);
    if let Some(p) = &job.periodic {
        c.at(&[key("periodic")], |c| {
            if !matches!(job.r#type, JobType::Batch | JobType::Sysbatch) {
                c.fail("", "periodic can only be used with batch or sysbatch jobs");
            }
            let specs: Vec<&String> = std::iter::once(&p.spec)
                .chain(&p.specs)
                .filter(|s| !s.is_empty())
                .collect();
            if specs.is_empty() {
                c.fail("cron", "a periodic job needs a `cron` schedule");
            }
            for spec in specs {
                if let Err(e) = cron_schedule(spec) {
                    c.fail("cron", e);
                }
            }
        });
    }
    if let Some(p) = &job.parameterized_job
        && !matches!(p.payload.as_str(), "optional" | "required" | "forbidden")
    {
        c.fail(
            "parameterized",
            format!(
                "payload must be optional, required or forbidden, got {:?}",
                p.payload
            ),
        );
    }
    let mut seen = Vec::new();
    for group in &job.task_groups {
        if seen.contains(&&group.name) {
            c.fail("group", format!("duplicate group {:?}", group.name));
        }
        seen.push(&group.name);
        c.at(&[key("group"), key(&group.name)], |c| {
            self::group(c, job, group)
        });
    }
    c.problems
}

/// A cron expression as Nomad accepts it: five fields (minute precision), six or seven (with
/// seconds and years), or a macro like `@daily`.
pub fn cron_schedule(spec: &str) -> Result<cron::Schedule, String> {
    let fields = spec.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {spec}")
    } else {
        spec.to_owned()
    };
    full.parse::<cron::Schedule>().map_err(|e| {
        let reason = e.to_string();
        let reason = reason.lines().last().unwrap_or_default().trim().to_owned();
        format!("invalid cron expression {spec:?}: {reason} (expected five fields, minute hour day month weekday, like \"*/15 * * * *\", or @hourly, @daily, ...)")
    })
}

fn group(c: &mut Checker, job: &Job, g: &TaskGroup) {
    if g.name.is_empty() {
        c.fail("", "a group needs a name");
    }
    if g.count < 0 {
        c.fail(
            "count",
            format!("count must not be negative, got {}", g.count),
        );
    }
    if g.tasks.is_empty() {
        c.fail("", format!("group {:?} has no tasks", g.name));
    }
    constraints(c, &g.constraints);
    if let Some(u) = &g.update {
        c.at(&[key("update")], |c| {
            if !matches!(u.health_check.as_str(), "checks" | "task_states" | "manual") {
                c.fail(
                    "health_check",
                    format!(
                        "health_check must be checks, task_states or manual, got {:?}",
                        u.health_check
                    ),
                );
            }
            if job.r#type == JobType::System && u.canary > 0 {
                c.fail("canary", "system jobs cannot use canaries");
            }
            if u.max_parallel > 0 && u.healthy_deadline <= u.min_healthy_time {
                c.fail(
                    "healthy_deadline",
                    "healthy_deadline must be longer than min_healthy_time",
                );
            }
            if u.max_parallel > 0
                && u.progress_deadline.nanos() != 0
                && u.progress_deadline < u.healthy_deadline
            {
                c.fail(
                    "progress_deadline",
                    "progress_deadline must be at least healthy_deadline",
                );
            }
        });
    }
    if let Some(r) = &g.restart_policy
        && !matches!(r.mode.as_str(), "fail" | "delay")
    {
        c.fail(
            "restart",
            format!("restart mode must be fail or delay, got {:?}", r.mode),
        );
    }
    if let Some(r) = &g.reschedule_policy
        && !matches!(
            r.delay_function.as_str(),
            "constant" | "exponential" | "fibonacci"
        )
    {
        c.fail(
            "reschedule",
            format!(
                "delay_function must be constant, exponential or fibonacci, got {:?}",
                r.delay_function
            ),
        );
    }
    let group_ports: Vec<&str> = g
        .networks
        .iter()
        .flat_map(|n| n.reserved_ports.iter().chain(&n.dynamic_ports))
        .map(|p| p.label.as_str())
        .collect();
    let mut labels: Vec<&str> = Vec::new();
    for label in &group_ports {
        if labels.contains(label) {
            c.fail("network", format!("port label {label:?} is defined twice"));
        }
        labels.push(label);
    }
    for (i, s) in g.services.iter().enumerate() {
        c.at(&[key("service"), Seg::Index(i)], |c| {
            service(c, s, &group_ports)
        });
    }
    let mut names = Vec::new();
    for task in &g.tasks {
        if names.contains(&&task.name) {
            c.fail("task", format!("duplicate task {:?}", task.name));
        }
        names.push(&task.name);
        c.at(&[key("task"), key(&task.name)], |c| {
            self::task(c, task, &group_ports)
        });
    }
}

fn task(c: &mut Checker, t: &Task, group_ports: &[&str]) {
    if t.driver.is_empty() {
        c.fail(
            "driver",
            "a task needs a driver (docker, exec, raw_exec or java)",
        );
    }
    let has = |k: &str| {
        t.config
            .get(k)
            .is_some_and(|v| !v.is_null() && v.as_str() != Some(""))
    };
    let required: &[&str] = match t.driver.as_str() {
        "docker" => &["image"],
        "exec" | "raw_exec" => &["command"],
        _ => &[],
    };
    for k in required {
        if !has(k) {
            c.fail(
                "config",
                format!("the {} driver needs config {{ {k} = ... }}", t.driver),
            );
        }
    }
    if t.driver == "java" && !has("jar_path") && !has("class") {
        c.fail(
            "config",
            "the java driver needs config { jar_path = ... } or { class = ... }",
        );
    }
    if let Some(l) = &t.lifecycle
        && !matches!(l.hook.as_str(), "prestart" | "poststart" | "poststop")
    {
        c.fail(
            "lifecycle",
            format!(
                "lifecycle hook must be prestart, poststart or poststop, got {:?}",
                l.hook
            ),
        );
    }
    if t.resources.cpu > 0
        && t.resources.cores > 0
        && t.resources.cpu != crate::canonical::DEFAULT_CPU_MHZ
    {
        c.fail("resources", "set either cpu or cores, not both");
    }
    if t.resources.memory_max_mb != 0 && t.resources.memory_max_mb < t.resources.memory_mb {
        c.fail("resources", "memory_max must be at least memory");
    }
    constraints(c, &t.constraints);
    let task_ports: Vec<&str> = t
        .resources
        .networks
        .iter()
        .flat_map(|n| n.reserved_ports.iter().chain(&n.dynamic_ports))
        .map(|p| p.label.as_str())
        .chain(group_ports.iter().copied())
        .collect();
    for (i, s) in t.services.iter().enumerate() {
        c.at(&[key("service"), Seg::Index(i)], |c| {
            service(c, s, &task_ports)
        });
    }
    for (i, tpl) in t.templates.iter().enumerate() {
        c.at(&[key("template"), Seg::Index(i)], |c| {
            if tpl.embedded_tmpl.is_empty() && tpl.source_path.is_empty() {
                c.fail("", "a template needs `data` or `source`");
            }
            if tpl.dest_path.is_empty() {
                c.fail("destination", "a template needs a `destination`");
            }
            if !matches!(
                tpl.change_mode.as_str(),
                "restart" | "signal" | "noop" | "script"
            ) {
                c.fail(
                    "change_mode",
                    format!(
                        "change_mode must be restart, signal, noop or script, got {:?}",
                        tpl.change_mode
                    ),
                );
            }
            if tpl.change_mode == "signal" && tpl.change_signal.is_empty() {
                c.fail(
                    "change_signal",
                    "change_mode = \"signal\" needs a change_signal",
                );
            }
        });
    }
    for (i, a) in t.artifacts.iter().enumerate() {
        if a.getter_source.is_empty() {
            c.at(&[key("artifact"), Seg::Index(i)], |c| {
                c.fail("source", "an artifact needs a `source`")
            });
        }
    }
}

fn service(c: &mut Checker, s: &Service, ports: &[&str]) {
    let port_ok = |p: &str| p.is_empty() || p.parse::<u16>().is_ok() || ports.contains(&p);
    if !port_ok(&s.port_label) {
        c.fail(
            "port",
            format!(
                "service {:?} uses port {:?}, which no network block defines",
                s.name, s.port_label
            ),
        );
    }
    for (i, check) in s.checks.iter().enumerate() {
        c.at(&[key("check"), Seg::Index(i)], |c| {
            if !matches!(check.r#type.as_str(), "http" | "tcp" | "script" | "grpc") {
                c.fail(
                    "type",
                    format!(
                        "check type must be http, tcp, script or grpc, got {:?}",
                        check.r#type
                    ),
                );
            }
            if check.r#type == "http" && check.path.is_empty() {
                c.fail("path", "an http check needs a path");
            }
            if check.r#type == "script" && check.command.is_empty() {
                c.fail("command", "a script check needs a command");
            }
            if check.interval.nanos() <= 0 {
                c.fail("interval", "a check needs an interval greater than zero");
            }
            if check.timeout.nanos() <= 0 {
                c.fail("timeout", "a check needs a timeout greater than zero");
            }
            if !port_ok(&check.port_label) {
                c.fail(
                    "port",
                    format!(
                        "check uses port {:?}, which no network block defines",
                        check.port_label
                    ),
                );
            }
            if matches!(check.r#type.as_str(), "http" | "tcp")
                && check.port_label.is_empty()
                && s.port_label.is_empty()
            {
                c.fail(
                    "port",
                    "an http or tcp check needs a port (on the check or its service)",
                );
            }
        });
    }
}

fn constraints(c: &mut Checker, cs: &[Constraint]) {
    for (i, con) in cs.iter().enumerate() {
        c.at(&[key("constraint"), Seg::Index(i)], |c| {
            if !CONSTRAINT_OPERATORS.contains(&con.operand.as_str()) {
                c.fail(
                    "operator",
                    format!("unknown constraint operator {:?}", con.operand),
                );
            }
            if con.operand == "regexp"
                && let Err(e) = regex::Regex::new(&con.r_target)
            {
                c.fail("value", format!("invalid regexp {:?}: {e}", con.r_target));
            }
            let needs_attribute = !matches!(con.operand.as_str(), "distinct_hosts");
            if needs_attribute && con.l_target.is_empty() {
                c.fail("attribute", "a constraint needs an attribute");
            }
        });
    }
}
