//! Nomad's defaults, and [`Job::canonicalize`] which applies them.
//!
//! A jobspec fills in what the user wrote; everything left out gets the value Nomad would give
//! it, so `caravan job inspect -local` prints what the servers will store.

use crate::duration::Duration;
use crate::ids::{Namespace, Region};
use crate::job::{
    EphemeralDisk, Job, JobType, LogConfig, MigrateStrategy, ReschedulePolicy, RestartPolicy, Task,
    TaskGroup, UpdateStrategy,
};

pub const DEFAULT_PRIORITY: i32 = 50;
pub const DEFAULT_CPU_MHZ: i32 = 100;
pub const DEFAULT_MEMORY_MB: i32 = 300;
pub const DEFAULT_DISK_MB: i32 = 300;
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The `update` block's defaults.
pub fn update_strategy() -> UpdateStrategy {
    UpdateStrategy {
        stagger: Duration::from_secs(30),
        max_parallel: 1,
        health_check: "checks".into(),
        min_healthy_time: Duration::from_secs(10),
        healthy_deadline: Duration::from_mins(5),
        progress_deadline: Duration::from_mins(10),
        canary: 0,
        auto_revert: false,
        auto_promote: false,
    }
}

/// The `migrate` block's defaults.
pub fn migrate_strategy() -> MigrateStrategy {
    MigrateStrategy {
        max_parallel: 1,
        health_check: "checks".into(),
        min_healthy_time: Duration::from_secs(10),
        healthy_deadline: Duration::from_mins(5),
    }
}

/// The `restart` block's defaults for a job type.
pub fn restart_policy(job_type: JobType) -> RestartPolicy {
    match job_type {
        JobType::Batch | JobType::Sysbatch => RestartPolicy {
            interval: Duration::from_hours(24),
            attempts: 3,
            delay: Duration::from_secs(15),
            mode: "fail".into(),
            render_templates: false,
        },
        JobType::Service | JobType::System => RestartPolicy {
            interval: Duration::from_mins(30),
            attempts: 2,
            delay: Duration::from_secs(15),
            mode: "fail".into(),
            render_templates: false,
        },
    }
}

/// The `reschedule` block's defaults for a job type; system jobs are never rescheduled.
pub fn reschedule_policy(job_type: JobType) -> Option<ReschedulePolicy> {
    match job_type {
        JobType::Service => Some(ReschedulePolicy {
            attempts: 0,
            interval: Duration::ZERO,
            delay: Duration::from_secs(30),
            delay_function: "exponential".into(),
            max_delay: Duration::from_hours(1),
            unlimited: true,
        }),
        JobType::Batch => Some(ReschedulePolicy {
            attempts: 1,
            interval: Duration::from_hours(24),
            delay: Duration::from_secs(5),
            delay_function: "constant".into(),
            max_delay: Duration::ZERO,
            unlimited: false,
        }),
        JobType::System | JobType::Sysbatch => None,
    }
}

/// The `ephemeral_disk` block's defaults.
pub fn ephemeral_disk() -> EphemeralDisk {
    EphemeralDisk {
        sticky: false,
        migrate: false,
        size_mb: DEFAULT_DISK_MB,
    }
}

/// The `logs` block's defaults.
pub fn log_config() -> LogConfig {
    LogConfig {
        max_files: 10,
        max_file_size_mb: 10,
        disabled: false,
    }
}

/// Whether a job type rolls out through deployments (`update` applies).
pub fn has_update(job_type: JobType) -> bool {
    matches!(job_type, JobType::Service | JobType::System)
}

impl Job {
    /// Fills every unset field with Nomad's default. Idempotent.
    pub fn canonicalize(&mut self) {
        if self.region.is_empty() {
            self.region = Region::global();
        }
        if self.namespace.is_empty() {
            self.namespace = Namespace::default_ns();
        }
        if self.name.is_empty() {
            self.name = self.id.to_string();
        }
        if self.priority == 0 {
            self.priority = DEFAULT_PRIORITY;
        }
        if self.datacenters.is_empty() {
            self.datacenters = vec!["*".into()];
        }
        if self.node_pool.is_empty() {
            self.node_pool = "default".into();
        }
        for c in &mut self.constraints {
            if c.operand.is_empty() {
                c.operand = "=".into();
            }
        }
        if let Some(p) = &mut self.periodic
            && p.spec_type.is_empty()
        {
            p.spec_type = "cron".into();
        }
        if let Some(p) = &mut self.parameterized_job
            && p.payload.is_empty()
        {
            p.payload = "optional".into();
        }
        let job_type = self.r#type;
        if self.update.is_none() && has_update(job_type) {
            self.update = Some(update_strategy());
        }
        if !has_update(job_type) {
            self.update = None;
        }
        let job_update = self.update.clone();
        let job_reschedule = self
            .reschedule
            .clone()
            .or_else(|| reschedule_policy(job_type));
        let job_migrate = self.migrate.clone();
        for group in &mut self.task_groups {
            canonicalize_group(group, job_type, &job_update, &job_reschedule, &job_migrate);
        }
    }
}

fn canonicalize_group(
    group: &mut TaskGroup,
    job_type: JobType,
    job_update: &Option<UpdateStrategy>,
    job_reschedule: &Option<ReschedulePolicy>,
    job_migrate: &Option<MigrateStrategy>,
) {
    if group.restart_policy.is_none() {
        group.restart_policy = Some(restart_policy(job_type));
    }
    if group.reschedule_policy.is_none() {
        group.reschedule_policy = job_reschedule.clone();
    }
    if group.ephemeral_disk.is_none() {
        group.ephemeral_disk = Some(ephemeral_disk());
    }
    if has_update(job_type) {
        if group.update.is_none() {
            group.update = job_update.clone();
        }
    } else {
        group.update = None;
    }
    if job_type == JobType::Service && group.migrate.is_none() {
        group.migrate = Some(job_migrate.clone().unwrap_or_else(migrate_strategy));
    }
    for c in &mut group.constraints {
        if c.operand.is_empty() {
            c.operand = "=".into();
        }
    }
    for net in &mut group.networks {
        if net.mode.is_empty() {
            net.mode = "host".into();
        }
    }
    for service in &mut group.services {
        canonicalize_service(service);
    }
    if let Some(s) = &mut group.scaling
        && s.min.is_none()
    {
        s.min = Some(i64::from(group.count));
    }
    let restart = group.restart_policy.clone();
    for task in &mut group.tasks {
        canonicalize_task(task, &restart);
    }
}

fn canonicalize_task(task: &mut Task, group_restart: &Option<RestartPolicy>) {
    if task.restart_policy.is_none() {
        task.restart_policy = group_restart.clone();
    }
    if task.kill_timeout.is_none() {
        task.kill_timeout = Some(DEFAULT_KILL_TIMEOUT);
    }
    if task.log_config.is_none() {
        task.log_config = Some(log_config());
    }
    if task.resources.cpu == 0 && task.resources.cores == 0 {
        task.resources.cpu = DEFAULT_CPU_MHZ;
    }
    if task.resources.memory_mb == 0 {
        task.resources.memory_mb = DEFAULT_MEMORY_MB;
    }
    for c in &mut task.constraints {
        if c.operand.is_empty() {
            c.operand = "=".into();
        }
    }
    for service in &mut task.services {
        canonicalize_service(service);
    }
    for artifact in &mut task.artifacts {
        if artifact.getter_mode.is_empty() {
            artifact.getter_mode = "any".into();
        }
        if artifact.relative_dest.is_empty() {
            artifact.relative_dest = "local/".into();
        }
    }
    for t in &mut task.templates {
        if t.change_mode.is_empty() {
            t.change_mode = "restart".into();
        }
        if t.splay == Duration::ZERO {
            t.splay = Duration::from_secs(5);
        }
        if t.perms.is_empty() {
            t.perms = "0644".into();
        }
        if t.left_delim.is_empty() {
            t.left_delim = "{{".into();
        }
        if t.right_delim.is_empty() {
            t.right_delim = "}}".into();
        }
    }
}

fn canonicalize_service(service: &mut crate::job::Service) {
    if service.address_mode.is_empty() {
        service.address_mode = "auto".into();
    }
    if service.provider.is_empty() {
        service.provider = "nomad".into();
    }
    if service.on_update.is_empty() {
        service.on_update = "require_healthy".into();
    }
    for check in &mut service.checks {
        if check.on_update.is_empty() {
            check.on_update = "require_healthy".into();
        }
        if check.r#type == "http" && check.method.is_empty() {
            check.method = "GET".into();
        }
        if check.r#type == "http" && check.protocol.is_empty() {
            check.protocol = "http".into();
        }
    }
}
