//! The deployment watcher's loop: the I/O around `caravan_controllers::deployment::watch`.
//!
//! For each job with an active deployment it reads the deployment, the job, its allocations
//! and stored versions from the cache, asks the pure watcher what changed — counters, progress
//! deadline, failure, automatic promotion, success — and writes the answer in one transaction
//! fenced by leadership and guarded by what it read: the deployment, the allocations it
//! touches, and the job when a version turns stable or is reverted to. It runs again whenever
//! the deployment or one of the job's allocations changes, and at the nearest deadline.

use super::Server;
use super::cache;
use super::objects::{Index, Kind, job_index};
use super::runtime::{self, Controller, Next, WorkQueue};
use super::writes::now_nanos;
use super::writes_deployments::DeploymentChange;
use caravan_controllers::deployment::{WatchInput, watch};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch as channel;

/// The deployment watcher.
#[derive(Debug)]
pub struct DeploymentController {
    server: Arc<Server>,
    queue: Arc<WorkQueue<String>>,
}

/// Starts the deployment watcher: it works while `leading` is true.
pub fn start(server: Arc<Server>, leading: channel::Receiver<bool>) -> Arc<DeploymentController> {
    let controller = Arc::new(DeploymentController {
        server,
        queue: WorkQueue::new(),
    });
    spawn_feeders(&controller, leading.clone());
    let metrics = Arc::clone(&controller.server.metrics);
    runtime::run(
        Arc::clone(&controller),
        Arc::clone(&controller.queue),
        1,
        leading,
        metrics,
    );
    controller
}

impl DeploymentController {
    /// Queues every job with an active deployment.
    fn enqueue_active(&self) {
        for d in self.server.cache.deployments.snapshot().objects.values() {
            if d.active() {
                self.queue
                    .add(job_index(d.namespace.as_str(), d.job_id.as_str()));
            }
        }
    }
}

/// Deployment changes and allocation changes that matter to a deployment queue its job;
/// becoming leader queues every job with an active deployment.
fn spawn_feeders(c: &Arc<DeploymentController>, leading: channel::Receiver<bool>) {
    let span = |source: &str| tracing::info_span!("deployment-watcher-feed", source);
    let cache = &c.server.cache;
    let ctl = Arc::clone(c);
    cache::follow(&cache.deployments, span("deployments"), move |changes| {
        let Some(changes) = changes else {
            return ctl.enqueue_active();
        };
        for d in changes.iter().filter_map(|ch| ch.new.as_ref()) {
            if d.active() {
                ctl.queue
                    .add(job_index(d.namespace.as_str(), d.job_id.as_str()));
            }
        }
    });
    let ctl = Arc::clone(c);
    cache::follow(&cache.allocs, span("allocs"), move |changes| {
        let Some(changes) = changes else {
            return ctl.enqueue_active();
        };
        for ch in changes {
            let in_deployment = [&ch.new, &ch.old]
                .into_iter()
                .flatten()
                .any(|a| !a.deployment_id.is_empty());
            if let (true, Some(a)) = (in_deployment, ch.new.as_ref().or(ch.old.as_ref())) {
                ctl.queue
                    .add(job_index(a.namespace.as_str(), a.job_id.as_str()));
            }
        }
    });
    let ctl = Arc::clone(c);
    runtime::on_leadership(leading, span("leadership"), move || {
        ctl.enqueue_active();
    });
}

#[async_trait::async_trait]
impl Controller for DeploymentController {
    type Key = String;

    fn name(&self) -> &'static str {
        "deployment"
    }

    async fn reconcile(&self, key: &String) -> Result<Next, String> {
        let Some((namespace, id)) = key.split_once('/') else {
            return Ok(Next::Idle);
        };
        let server = &self.server;
        let Some(deployment) = server.latest_deployment(namespace, id) else {
            return Ok(Next::Idle);
        };
        if !deployment.active() {
            return Ok(Next::Idle);
        }
        // Without its job there is nothing to watch: the job controller cancels the deployment.
        let Some(job) = server
            .cache
            .jobs
            .get(&server.keys.key(Kind::Job, namespace, id))
        else {
            return Ok(Next::Idle);
        };
        let allocs: Vec<_> = server
            .cache
            .allocs
            .snapshot()
            .by(Index::ByJob, key)
            .map(|a| (**a).clone())
            .collect();
        let versions = server.job_versions(namespace, id);
        let now = now_nanos();
        let outcome = watch(&WatchInput {
            deployment: &deployment,
            job: &job,
            allocs: &allocs,
            versions: &versions,
            now,
        });
        let mut touched = Vec::new();
        for a in &allocs {
            let promote = outcome.promoted_canaries.contains(&a.id);
            let reschedule = outcome.allow_reschedule.contains(&a.id);
            if !promote && !reschedule {
                continue;
            }
            let mut a = a.clone();
            if promote && let Some(s) = a.deployment_status.as_mut() {
                s.canary = false;
            }
            if reschedule {
                a.desired_transition.reschedule = Some(true);
            }
            a.modify_time = now;
            touched.push(a);
        }
        let change = DeploymentChange {
            deployment: outcome.deployment,
            allocs: touched,
            stable_version: outcome.stable_version,
            revert_to: outcome.revert_to,
            eval: false,
        };
        let next = Next::at(outcome.wake_at, now);
        let wrote = server
            .write_deployment_change(change, Some(server.leader_fence()))
            .await
            .map_err(|e| e.to_string())?;
        match wrote {
            Some(_) => Ok(next),
            // Something changed meanwhile: the cache has caught up; look again.
            None => Ok(Next::After(Duration::ZERO)),
        }
    }
}
